//! The lock manager: striped two-phase locks on accounts, owned by transaction ids, taken in
//! account-id order under a no-wait, bounded-wait or wait-die policy, and never waited on forever.
//!
//! # Shape
//! Accounts hash (a mixing finalizer, so sequential ids spread) onto a power-of-two number of
//! stripes; each stripe is a mutex over the lock states of its accounts plus a condition variable
//! that releases signal. A second striped table remembers, per transaction, which accounts it
//! holds, so `release_all(transaction_id)` needs nothing from the caller: after a restart the
//! participant re-takes the locks of its in-doubt transactions with `acquire` and later releases
//! them by id alone, exactly like live transactions. No code path holds two stripe mutexes at
//! once, so the mutexes themselves cannot deadlock.
//!
//! # Policies
//! A request is sorted by account id and locked one account at a time; what happens at a
//! conflict is the caller's `LockPolicy`:
//! - `NoWait` fails at once. It reads no clock and blocks no thread, so recovery and a seeded
//!   simulation can drive it deterministically.
//! - `BoundedWait` waits for the conflicting holders to leave, until a deadline.
//! - `WaitDie` waits only if the requester is older than every conflicting holder and dies
//!   otherwise, so waits always go from older to younger and cannot form a cycle; the deadline
//!   still bounds the wait, because a holder may be a prepared transaction waiting on a remote
//!   coordinator's decision for as long as that coordinator is down.
//!
//! Every failure is all-or-nothing: the locks that one `acquire` call took (or upgraded) are
//! released (or downgraded) before it returns the error.
//!
//! # Contract with the caller
//! Calls for one transaction id never run concurrently (one task drives a transaction). Calls
//! for different transactions may run on any threads.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Instant;

#[cfg(test)]
mod tests;

/// The most accounts one `acquire` request may name, and also the most one transaction may hold
/// in total: a transfer needs two, and the bound keeps the per-call scratch space on the stack.
pub const LOCK_REQUEST_ACCOUNTS_MAX: usize = 64;
/// The number of stripes a node should use unless it has measured better: enough that two hot
/// accounts rarely share a stripe's mutex, few enough to stay small (each stripe is padded to
/// its own cache lines).
pub const LOCK_STRIPE_COUNT_DEFAULT: usize = 1024;
/// The most stripes a manager may have; the stripe index takes its bits from a part of the hash
/// that the per-stripe hash tables do not use, and this keeps the two apart.
pub const LOCK_STRIPE_COUNT_MAX: usize = 1 << 16;

/// How a transaction holds an account. Modes are checked only through `is_compatible_with`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// For reading a balance: any number of transactions at once. The engine's reads take no
    /// lock (they read at a timestamp: `crate::clock`); the mode stays for a reader that would.
    Shared,
    /// For adding `amount` to a balance: any number of credits and debits at once, since
    /// additions and subtractions commute. Whether all pending credits fit in the balance is the
    /// holder's to check, against [`LockManager::pending`].
    Credit(u64),
    /// For taking `amount` from a balance, reserved (escrow): any number of debits and credits at
    /// once. Whether the balance covers every pending debit is the holder's to check, against
    /// [`LockManager::pending`].
    Debit(u64),
    /// For changing an account any other way (its creation): one transaction alone.
    Exclusive,
}

impl LockMode {
    /// Whether two different transactions may hold one account at once, one in `self` and one
    /// in `other`. The relation is symmetric:
    ///
    /// |               | Shared | Credit | Debit | Exclusive |
    /// |---------------|--------|--------|-------|-----------|
    /// | **Shared**    | yes    | no     | no    | no        |
    /// | **Credit**    | no     | yes    | yes   | no        |
    /// | **Debit**     | no     | yes    | yes   | no        |
    /// | **Exclusive** | no     | no     | no    | no        |
    ///
    /// Why each "yes" is safe: readers change nothing. Credits and debits commute: the account
    /// ends at its balance plus the committed credits minus the committed debits, in whatever
    /// order they apply. Each one's own failure is checked against everything pending at once
    /// (`pending`, counted after the lock is granted, so of two granted together each counts the
    /// other): a credit is admitted only if the balance plus every pending credit fits, a debit
    /// only if the balance covers every pending debit, so the balance can never go negative nor
    /// overflow whichever of them commit. A pending credit never counts towards a debit (it may
    /// abort). Why the rest is "no": a shared holder must see each change applied or not at
    /// every account it reads; and an exclusive holder (an account's creation) changes what the
    /// others validate against.
    pub const fn is_compatible_with(self, other: LockMode) -> bool {
        matches!(
            (self, other),
            (LockMode::Shared, LockMode::Shared)
                | (
                    LockMode::Credit(_) | LockMode::Debit(_),
                    LockMode::Credit(_) | LockMode::Debit(_)
                )
        )
    }

    /// The weakest mode that grants everything `self` and `other` grant: what a transaction
    /// holds when it asks for an account twice. This is a join rather than `max` because with
    /// commutative modes it need not be either operand (a credit joined with a read is
    /// exclusive).
    const fn join(self, other: LockMode) -> LockMode {
        match (self, other) {
            (LockMode::Shared, LockMode::Shared) => LockMode::Shared,
            (LockMode::Credit(one), LockMode::Credit(other)) => match one.checked_add(other) {
                Some(amount) => LockMode::Credit(amount),
                None => LockMode::Exclusive,
            },
            (LockMode::Debit(one), LockMode::Debit(other)) => match one.checked_add(other) {
                Some(amount) => LockMode::Debit(amount),
                None => LockMode::Exclusive,
            },
            _ => LockMode::Exclusive,
        }
    }
}

/// The sums of the credits and debits held on one account (`LockManager::pending`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub credits: u128,
    pub debits: u128,
}

/// What `acquire` does when an account it needs is held in an incompatible mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockPolicy {
    /// Fail with `LockError::Conflict` at once. Needs no clock and no thread.
    NoWait,
    /// Wait for the holders to release, and fail once `deadline` has passed.
    BoundedWait { deadline: Instant },
    /// Wait only while the requester is older than every conflicting holder, else fail at once
    /// ("die"); fail in any case once `deadline` has passed. `timestamp` orders transactions,
    /// smaller is older; a retried transaction keeps its first timestamp so that it ages and
    /// cannot starve. Locks taken under the other policies count as held by the oldest possible
    /// transaction, so a wait-die requester never waits for them.
    WaitDie { timestamp: u64, deadline: Instant },
}

/// Why `acquire` failed; it then holds nothing more than before the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The transfer's abort reason is "lock conflict".
    #[error("lock conflict: account {account} is held by transaction {holder}")]
    Conflict { account: u64, holder: u128 },
    #[error(
        "lock request for {accounts_count} accounts exceeds LOCK_REQUEST_ACCOUNTS_MAX \
         ({LOCK_REQUEST_ACCOUNTS_MAX})"
    )]
    TooManyAccounts { accounts_count: usize },
}

/// Striped account locks, owned by transaction ids. See the module documentation.
pub struct LockManager {
    stripes: Box<[Stripe]>,
    transaction_stripes: Box<[TransactionStripe]>,
    stripe_mask: usize,
}

impl LockManager {
    /// A manager with no locks held. `stripe_count` must be a power of two no larger than
    /// `LOCK_STRIPE_COUNT_MAX`; `LOCK_STRIPE_COUNT_DEFAULT` is a good start.
    pub fn new(stripe_count: usize) -> LockManager {
        assert!(
            stripe_count.is_power_of_two(),
            "stripe count {stripe_count} is not a power of two"
        );
        assert!(
            stripe_count <= LOCK_STRIPE_COUNT_MAX,
            "stripe count {stripe_count} is too large"
        );
        LockManager {
            stripes: (0..stripe_count).map(|_| Stripe::default()).collect(),
            transaction_stripes: (0..stripe_count)
                .map(|_| TransactionStripe::default())
                .collect(),
            stripe_mask: stripe_count - 1,
        }
    }

    /// Lock every account of `request` for `transaction_id` in its mode, in account-id order,
    /// or lock nothing more and fail. An account named twice is locked once in the join of its
    /// modes. An account the transaction already holds is kept, upgraded if the request asks
    /// for more. Empty requests succeed.
    pub fn acquire(
        &self,
        transaction_id: u128,
        request: &[(u64, LockMode)],
        policy: LockPolicy,
    ) -> Result<(), LockError> {
        if request.len() > LOCK_REQUEST_ACCOUNTS_MAX {
            return Err(LockError::TooManyAccounts {
                accounts_count: request.len(),
            });
        }
        let mut sorted_buffer = [(0_u64, LockMode::Shared); LOCK_REQUEST_ACCOUNTS_MAX];
        let sorted = sort_and_merge(request, &mut sorted_buffer);

        // What this call changed, so that a failure can put it back.
        let mut changes = [Change {
            account: 0,
            previous: None,
        }; LOCK_REQUEST_ACCOUNTS_MAX];
        let mut changes_count = 0;
        let mut taken_count = 0;
        for &(account, mode) in sorted {
            match self.lock_account(transaction_id, account, mode, policy) {
                Ok(Grant::AlreadyHeld) => {}
                Ok(Grant::Taken) => {
                    changes[changes_count] = Change {
                        account,
                        previous: None,
                    };
                    changes_count += 1;
                    taken_count += 1;
                }
                Ok(Grant::Upgraded { previous }) => {
                    changes[changes_count] = Change {
                        account,
                        previous: Some(previous),
                    };
                    changes_count += 1;
                }
                Err(error) => {
                    self.undo(transaction_id, &changes[..changes_count]);
                    return Err(error);
                }
            }
        }
        if taken_count == 0 {
            return Ok(());
        }

        let mut transactions = self.transaction_stripe(transaction_id).lock();
        let held = transactions.entry(transaction_id).or_default();
        let held_count = held.len() + taken_count;
        if held_count > LOCK_REQUEST_ACCOUNTS_MAX {
            if held.is_empty() {
                transactions.remove(&transaction_id);
            }
            drop(transactions);
            self.undo(transaction_id, &changes[..changes_count]);
            return Err(LockError::TooManyAccounts {
                accounts_count: held_count,
            });
        }
        for change in changes[..changes_count]
            .iter()
            .filter(|change| change.previous.is_none())
        {
            debug_assert!(!held.contains(&change.account));
            held.push(change.account);
        }
        Ok(())
    }

    /// Release every lock `transaction_id` holds and wake the transactions waiting for them.
    /// Returns how many accounts were released; zero for a transaction that holds nothing (it
    /// never locked anything, or its decision is being applied a second time).
    pub fn release_all(&self, transaction_id: u128) -> usize {
        let held = self
            .transaction_stripe(transaction_id)
            .lock()
            .remove(&transaction_id);
        let Some(held) = held else {
            return 0;
        };
        assert!(
            !held.is_empty(),
            "transaction {transaction_id} is recorded holding no accounts"
        );
        for &account in &held {
            let stripe = self.stripe(account);
            let mut state = stripe.lock();
            state.set_mode(account, transaction_id, None);
            stripe.wake_waiters(&state);
        }
        held.len()
    }

    fn lock_account(
        &self,
        transaction_id: u128,
        account: u64,
        mode: LockMode,
        policy: LockPolicy,
    ) -> Result<Grant, LockError> {
        let timestamp = match policy {
            LockPolicy::WaitDie { timestamp, .. } => timestamp,
            LockPolicy::NoWait | LockPolicy::BoundedWait { .. } => TIMESTAMP_OLDEST,
        };
        let stripe = self.stripe(account);
        let mut state = stripe.lock();
        loop {
            let conflict = match state.try_grant(
                account,
                Holder {
                    transaction_id,
                    mode,
                    timestamp,
                },
            ) {
                Ok(grant) => return Ok(grant),
                Err(conflict) => conflict,
            };
            let error = LockError::Conflict {
                account,
                holder: conflict.holder,
            };
            let deadline = match policy {
                LockPolicy::NoWait => return Err(error),
                LockPolicy::BoundedWait { deadline } => deadline,
                LockPolicy::WaitDie {
                    timestamp,
                    deadline,
                } => {
                    if !wait_die_may_wait(timestamp, conflict.oldest_timestamp) {
                        return Err(error);
                    }
                    deadline
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(error);
            }
            // Whatever woke us (a release, another account's release on this stripe, a spurious
            // wakeup or the timeout), the loop looks at the account again before deciding.
            state.waiters_count += 1;
            state = stripe
                .released
                .wait_timeout(state, deadline - now)
                .expect("a lock stripe is poisoned: a thread panicked while holding it")
                .0;
            state.waiters_count -= 1;
        }
    }

    /// Put back what a failed `acquire` changed, newest first.
    fn undo(&self, transaction_id: u128, changes: &[Change]) {
        for change in changes.iter().rev() {
            let stripe = self.stripe(change.account);
            let mut state = stripe.lock();
            state.set_mode(change.account, transaction_id, change.previous);
            stripe.wake_waiters(&state);
        }
    }

    fn stripe(&self, account: u64) -> &Stripe {
        &self.stripes[stripe_index(mix(account), self.stripe_mask)]
    }

    fn transaction_stripe(&self, transaction_id: u128) -> &TransactionStripe {
        &self.transaction_stripes[stripe_index(mix_transaction(transaction_id), self.stripe_mask)]
    }

    /// The credits and the debits held on `account` (every `Credit` and `Debit` holder's amount,
    /// the caller's included): what the balance may still grow and shrink by, whichever of them
    /// commit.
    pub fn pending(&self, account: u64) -> Pending {
        let state = self.stripe(account).lock();
        let mut pending = Pending::default();
        if let Some(lock) = state.accounts.get(&account) {
            for holder in lock.holders() {
                match holder.mode {
                    LockMode::Credit(amount) => pending.credits += u128::from(amount),
                    LockMode::Debit(amount) => pending.debits += u128::from(amount),
                    LockMode::Shared | LockMode::Exclusive => {}
                }
            }
        }
        pending
    }

    /// Whether a transaction numbered below `bound` holds `account` in a mode that changes it
    /// (credit, debit, exclusive): what a read fenced at `bound` waits for.
    pub fn changing_below(&self, account: u64, bound: u128) -> bool {
        let state = self.stripe(account).lock();
        state
            .accounts
            .get(&account)
            .is_some_and(|lock| lock.holders().any(|holder| holder.changes_below(bound)))
    }

    /// Whether a transaction numbered below `bound` holds any account in a mode that changes it.
    /// Visits every stripe: for the audit, not for the hot path.
    pub fn any_changing_below(&self, bound: u128) -> bool {
        self.stripes.iter().any(|stripe| {
            stripe
                .lock()
                .accounts
                .values()
                .any(|lock| lock.holders().any(|holder| holder.changes_below(bound)))
        })
    }

    /// The mode in which `transaction_id` holds `account`, for tests.
    #[cfg(test)]
    fn mode_held(&self, transaction_id: u128, account: u64) -> Option<LockMode> {
        let state = self.stripe(account).lock();
        let lock = state.accounts.get(&account)?;
        lock.holders()
            .find(|holder| holder.transaction_id == transaction_id)
            .map(|holder| holder.mode)
    }

    /// How many threads wait on the stripe of `account`, for tests.
    #[cfg(test)]
    fn waiters_count(&self, account: u64) -> u32 {
        self.stripe(account).lock().waiters_count
    }
}

/// The timestamp recorded for locks taken without wait-die: the oldest possible.
const TIMESTAMP_OLDEST: u64 = 0;

/// Wait-die: a requester waits only for holders strictly younger than itself. Equal timestamps
/// die too, so two transactions can never wait for each other.
fn wait_die_may_wait(requester_timestamp: u64, holder_timestamp_oldest: u64) -> bool {
    requester_timestamp < holder_timestamp_oldest
}

/// Copy `request` into `buffer` sorted by account id, one entry per account in the join of its
/// modes, and return the used part. The caller has checked the length.
fn sort_and_merge<'buffer>(
    request: &[(u64, LockMode)],
    buffer: &'buffer mut [(u64, LockMode); LOCK_REQUEST_ACCOUNTS_MAX],
) -> &'buffer [(u64, LockMode)] {
    assert!(request.len() <= LOCK_REQUEST_ACCOUNTS_MAX);
    let sorted = &mut buffer[..request.len()];
    sorted.copy_from_slice(request);
    sorted.sort_unstable_by_key(|&(account, _)| account);
    let mut merged_count = 0;
    for index in 0..sorted.len() {
        let (account, mode) = sorted[index];
        if merged_count > 0 && sorted[merged_count - 1].0 == account {
            sorted[merged_count - 1].1 = sorted[merged_count - 1].1.join(mode);
        } else {
            sorted[merged_count] = (account, mode);
            merged_count += 1;
        }
    }
    &buffer[..merged_count]
}

/// One account's change by an `acquire` call: `previous` is the mode held before (an upgrade),
/// or `None` if the account was newly taken.
#[derive(Clone, Copy)]
struct Change {
    account: u64,
    previous: Option<LockMode>,
}

enum Grant {
    Taken,
    Upgraded { previous: LockMode },
    AlreadyHeld,
}

/// Why a lock cannot be granted now: the first conflicting holder (for the error) and the
/// oldest conflicting timestamp (for wait-die).
struct Conflict {
    holder: u128,
    oldest_timestamp: u64,
}

#[derive(Clone, Copy, Debug)]
struct Holder {
    transaction_id: u128,
    mode: LockMode,
    timestamp: u64,
}

impl Holder {
    fn changes_below(&self, bound: u128) -> bool {
        self.transaction_id < bound && self.mode != LockMode::Shared
    }
}

/// The holders of one locked account (never none: an unlocked account has no entry). The first
/// holder is inline because almost every lock has exactly one, and this saves an allocation per
/// lock on the hot path.
struct AccountLock {
    first: Holder,
    others: Vec<Holder>,
}

impl AccountLock {
    fn holders(&self) -> impl Iterator<Item = &Holder> {
        std::iter::once(&self.first).chain(self.others.iter())
    }

    fn holder_mut(&mut self, transaction_id: u128) -> Option<&mut Holder> {
        std::iter::once(&mut self.first)
            .chain(self.others.iter_mut())
            .find(|holder| holder.transaction_id == transaction_id)
    }

    fn try_grant(&mut self, requester: Holder) -> Result<Grant, Conflict> {
        let held = self
            .holder_mut(requester.transaction_id)
            .map(|holder| holder.mode);
        let wanted = held.map_or(requester.mode, |held| held.join(requester.mode));
        if held == Some(wanted) {
            return Ok(Grant::AlreadyHeld);
        }
        let mut conflict: Option<Conflict> = None;
        for holder in self.holders() {
            if holder.transaction_id == requester.transaction_id
                || wanted.is_compatible_with(holder.mode)
            {
                continue;
            }
            match &mut conflict {
                None => {
                    conflict = Some(Conflict {
                        holder: holder.transaction_id,
                        oldest_timestamp: holder.timestamp,
                    });
                }
                Some(conflict) => {
                    conflict.oldest_timestamp = conflict.oldest_timestamp.min(holder.timestamp);
                }
            }
        }
        if let Some(conflict) = conflict {
            return Err(conflict);
        }
        match held {
            Some(previous) => {
                let holder = self
                    .holder_mut(requester.transaction_id)
                    .expect("found above");
                holder.mode = wanted;
                Ok(Grant::Upgraded { previous })
            }
            None => {
                self.others.push(Holder {
                    mode: wanted,
                    ..requester
                });
                Ok(Grant::Taken)
            }
        }
    }

    /// Remove `transaction_id`'s hold; returns whether no holder is left.
    fn remove(&mut self, transaction_id: u128) -> bool {
        if self.first.transaction_id == transaction_id {
            match self.others.pop() {
                None => return true,
                Some(last) => self.first = last,
            }
        } else {
            let index = self
                .others
                .iter()
                .position(|holder| holder.transaction_id == transaction_id)
                .unwrap_or_else(|| {
                    panic!("transaction {transaction_id} releases a lock it does not hold")
                });
            self.others.swap_remove(index);
        }
        false
    }
}

#[derive(Default)]
struct StripeState {
    accounts: HashMap<u64, AccountLock, BuildHasherDefault<IdHasher>>,
    /// Threads blocked on this stripe's condition variable; releases skip the wakeup when zero.
    waiters_count: u32,
}

impl StripeState {
    fn try_grant(&mut self, account: u64, requester: Holder) -> Result<Grant, Conflict> {
        match self.accounts.entry(account) {
            Entry::Vacant(entry) => {
                entry.insert(AccountLock {
                    first: requester,
                    others: Vec::new(),
                });
                Ok(Grant::Taken)
            }
            Entry::Occupied(entry) => entry.into_mut().try_grant(requester),
        }
    }

    /// Set the mode in which `transaction_id` holds `account`, `None` releasing it. The
    /// transaction must hold the account: anything else means the manager's two tables disagree.
    fn set_mode(&mut self, account: u64, transaction_id: u128, mode: Option<LockMode>) {
        let Entry::Occupied(mut entry) = self.accounts.entry(account) else {
            panic!("transaction {transaction_id} releases account {account}, which is not locked");
        };
        match mode {
            None => {
                if entry.get_mut().remove(transaction_id) {
                    entry.remove();
                }
            }
            Some(mode) => {
                let holder = entry.get_mut().holder_mut(transaction_id).unwrap_or_else(|| {
                    panic!("transaction {transaction_id} changes a lock on {account} it does not hold")
                });
                holder.mode = mode;
            }
        }
    }
}

/// One stripe of account locks, on cache lines of its own so that two threads working on
/// different stripes do not slow each other down.
#[derive(Default)]
#[repr(align(128))]
struct Stripe {
    state: Mutex<StripeState>,
    released: Condvar,
}

impl Stripe {
    fn lock(&self) -> MutexGuard<'_, StripeState> {
        self.state
            .lock()
            .expect("a lock stripe is poisoned: a thread panicked while holding it")
    }

    /// Called after any release or downgrade on this stripe. Waiters on other accounts of the
    /// stripe wake too and go back to sleep; stripes are many, so that is rare.
    fn wake_waiters(&self, state: &StripeState) {
        if state.waiters_count > 0 {
            self.released.notify_all();
        }
    }
}

/// Which accounts each transaction holds, for `release_all`.
#[derive(Default)]
#[repr(align(128))]
struct TransactionStripe {
    transactions: Mutex<HashMap<u128, Vec<u64>, BuildHasherDefault<IdHasher>>>,
}

impl TransactionStripe {
    fn lock(&self) -> MutexGuard<'_, HashMap<u128, Vec<u64>, BuildHasherDefault<IdHasher>>> {
        self.transactions
            .lock()
            .expect("a transaction stripe is poisoned: a thread panicked while holding it")
    }
}

/// The splitmix64 finalizer: every input bit flips about half of the output bits, so
/// sequential account ids land on unrelated stripes and hash buckets.
const fn mix(value: u64) -> u64 {
    let mut value = value;
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

const fn mix_transaction(transaction_id: u128) -> u64 {
    mix(transaction_id as u64 ^ mix((transaction_id >> 64) as u64))
}

/// The stripe takes bits 32 and up of the mixed hash, because hashbrown picks buckets with the
/// low bits and tags with the top seven: keys of one stripe then still spread over its table.
const fn stripe_index(hash: u64, stripe_mask: usize) -> usize {
    (hash >> 32) as usize & stripe_mask
}

/// A hasher for ids, replacing SipHash (whose flooding resistance ids do not need, since the
/// stripes already bound what one account can cost) with one `mix` per word.
#[derive(Default)]
struct IdHasher {
    hash: u64,
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.hash
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.hash = mix(self.hash ^ value);
    }

    fn write_u128(&mut self, value: u128) {
        self.hash ^= mix_transaction(value);
    }
}
