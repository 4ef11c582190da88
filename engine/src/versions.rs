//! The changes applied lately, by timestamp, kept in memory so that a read at a timestamp can
//! take back what was applied after it (`crate::clock` has the whole protocol).
//!
//! Changes go into the current of two generations; once the newest timestamp recorded is a
//! window past the current generation's start (or it holds too many changes), the older
//! generation is dropped and the current one becomes the older. Every dropped change was stamped
//! at most the `floor`, and so was everything applied before the store began: a read at a
//! timestamp at or above the floor finds every change stamped after it, and one below is refused.

use std::collections::HashMap;

use crate::model::{AccountId, Timestamp, Totals};

/// What one change did to its account, and so to the shard's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Deposited,
    Withdrawn,
    /// A cross-shard commit's credit.
    Credited,
    /// A cross-shard commit's debit.
    Debited,
    /// A same-shard transfer's credit leg (no total moves).
    LocalCredit,
    /// A same-shard transfer's debit leg.
    LocalDebit,
}

impl ChangeKind {
    fn signed(self, amount: u64) -> i128 {
        match self {
            ChangeKind::Deposited | ChangeKind::Credited | ChangeKind::LocalCredit => {
                i128::from(amount)
            }
            ChangeKind::Withdrawn | ChangeKind::Debited | ChangeKind::LocalDebit => {
                -i128::from(amount)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Change {
    pub account: AccountId,
    pub kind: ChangeKind,
    pub amount: u64,
}

/// The changes of one logged record and the timestamp they apply at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub at: Timestamp,
    pub changes: Vec<Change>,
}

/// What the changes stamped after a timestamp added to the shard (taken back by a read at it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Later {
    pub balance_sum: i128,
    pub deposited: u128,
    pub withdrawn: u128,
    pub credited_by_transactions: u128,
    pub debited_by_transactions: u128,
}

impl Later {
    /// `totals` as they stood at the timestamp.
    pub fn take_back(&self, totals: Totals) -> Option<Totals> {
        Some(Totals {
            deposited: totals.deposited.checked_sub(self.deposited)?,
            withdrawn: totals.withdrawn.checked_sub(self.withdrawn)?,
            credited_by_transactions: totals
                .credited_by_transactions
                .checked_sub(self.credited_by_transactions)?,
            debited_by_transactions: totals
                .debited_by_transactions
                .checked_sub(self.debited_by_transactions)?,
        })
    }
}

#[derive(Default)]
struct Generation {
    /// Every change recorded before this generation began was stamped at most this.
    started: Timestamp,
    changes: usize,
    by_account: HashMap<AccountId, Vec<(Timestamp, ChangeKind, u64)>, foldhash::fast::RandomState>,
}

impl Generation {
    fn starting(started: Timestamp) -> Self {
        Self {
            started,
            ..Self::default()
        }
    }
}

pub(crate) struct Versions {
    window: u64,
    changes_max: usize,
    floor: Timestamp,
    /// The latest timestamp recorded (or the floor).
    latest: Timestamp,
    current: Generation,
    previous: Generation,
}

impl Versions {
    /// An empty store: everything applied so far was stamped at most `floor`. A generation
    /// lasts `window` microseconds of timestamps, or `changes_max` changes.
    pub fn new(floor: Timestamp, window: u64, changes_max: usize) -> Self {
        Self {
            window: window.max(1),
            changes_max: changes_max.max(1),
            floor,
            latest: floor,
            current: Generation::starting(floor),
            previous: Generation::starting(floor),
        }
    }

    /// The lowest timestamp a read may be at.
    pub fn floor(&self) -> Timestamp {
        self.floor
    }

    /// Records one applied record's changes.
    pub fn record(&mut self, stamp: Stamp) {
        if stamp.at >= self.current.started.saturating_add(self.window)
            || self.current.changes >= self.changes_max
        {
            let next = Generation::starting(self.latest);
            // Everything in the generation dropped was recorded before the current one began.
            self.floor = self.floor.max(self.current.started);
            self.previous = std::mem::replace(&mut self.current, next);
        }
        self.latest = self.latest.max(stamp.at);
        self.current.changes += stamp.changes.len();
        for change in stamp.changes {
            self.current
                .by_account
                .entry(change.account)
                .or_default()
                .push((stamp.at, change.kind, change.amount));
        }
    }

    /// What the changes stamped after `at` added to `account`. `at` is at least the floor.
    pub fn after(&self, account: AccountId, at: Timestamp) -> i128 {
        debug_assert!(at >= self.floor);
        [&self.previous, &self.current]
            .into_iter()
            .filter_map(|generation| generation.by_account.get(&account))
            .flatten()
            .filter(|(stamped, _, _)| *stamped > at)
            .map(|(_, kind, amount)| kind.signed(*amount))
            .sum()
    }

    /// What every change stamped after `at` added to the shard.
    pub fn all_after(&self, at: Timestamp) -> Later {
        debug_assert!(at >= self.floor);
        let mut later = Later::default();
        for (stamped, kind, amount) in [&self.previous, &self.current]
            .into_iter()
            .flat_map(|generation| generation.by_account.values())
            .flatten()
        {
            if *stamped <= at {
                continue;
            }
            later.balance_sum += kind.signed(*amount);
            let amount = u128::from(*amount);
            match kind {
                ChangeKind::Deposited => later.deposited += amount,
                ChangeKind::Withdrawn => later.withdrawn += amount,
                ChangeKind::Credited => later.credited_by_transactions += amount,
                ChangeKind::Debited => later.debited_by_transactions += amount,
                ChangeKind::LocalCredit | ChangeKind::LocalDebit => {}
            }
        }
        later
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deposit(account: AccountId, amount: u64, at: Timestamp) -> Stamp {
        Stamp {
            at,
            changes: vec![Change {
                account,
                kind: ChangeKind::Deposited,
                amount,
            }],
        }
    }

    #[test]
    fn a_read_takes_back_exactly_the_changes_stamped_after_it() {
        let mut versions = Versions::new(100, 1_000, 1 << 20);
        versions.record(deposit(1, 5, 150));
        // Applied out of timestamp order, as commutative changes may be.
        versions.record(deposit(1, 7, 130));
        versions.record(Stamp {
            at: 160,
            changes: vec![
                Change {
                    account: 1,
                    kind: ChangeKind::LocalDebit,
                    amount: 2,
                },
                Change {
                    account: 2,
                    kind: ChangeKind::LocalCredit,
                    amount: 2,
                },
            ],
        });
        assert_eq!(versions.after(1, 100), 10);
        assert_eq!(versions.after(1, 130), 3);
        assert_eq!(versions.after(1, 150), -2);
        assert_eq!(versions.after(1, 160), 0);
        assert_eq!(versions.after(2, 150), 2);
        assert_eq!(versions.after(3, 100), 0);
        let later = versions.all_after(130);
        assert_eq!(later.balance_sum, 5);
        assert_eq!(later.deposited, 5);
    }

    #[test]
    fn the_floor_rises_past_every_change_dropped() {
        let mut versions = Versions::new(0, 100, 1 << 20);
        versions.record(deposit(1, 1, 50));
        versions.record(deposit(1, 1, 120)); // starts a generation at 50
        assert_eq!(versions.floor(), 0);
        versions.record(deposit(1, 1, 260)); // drops the first, holding the change at 50
        assert!(versions.floor() >= 50, "floor {}", versions.floor());
        assert!(versions.floor() <= 120);
        assert_eq!(versions.after(1, versions.floor()), 2);
    }

    #[test]
    fn a_full_generation_is_replaced_however_little_time_passed() {
        let mut versions = Versions::new(0, 1_000_000, 2);
        for at in 1..=10 {
            versions.record(deposit(1, 1, at));
        }
        assert!(versions.floor() > 0);
        assert_eq!(
            versions.after(1, versions.floor()),
            10 - versions.floor() as i128
        );
    }
}
