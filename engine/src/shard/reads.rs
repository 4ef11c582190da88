//! Reads: balances, history, transfer status, consistent reads under shared locks, the audit.

use super::*;

impl<T: Tables, L: Log> Engine<T, L> {
    fn existing_account(&self, id: AccountId) -> Result<Account, ReadError> {
        self.tables
            .account(id)?
            .ok_or(ReadError::UnknownAccount(id))
    }

    /// The committed balance.
    pub fn balance(&self, id: AccountId) -> Result<Amount, ReadError> {
        Ok(self.existing_account(id)?.balance)
    }

    pub fn account(&self, id: AccountId) -> Result<Account, ReadError> {
        self.existing_account(id)
    }

    /// History of an account, newest first: entries with LSN below `before_lsn` (`None` for
    /// the newest), at most `limit`.
    pub fn history(
        &self,
        id: AccountId,
        before_lsn: Option<Lsn>,
        limit: u32,
    ) -> Result<HistoryPage, ReadError> {
        if limit == 0 || limit > HISTORY_PAGE_MAX_ENTRIES {
            return Err(ReadError::InvalidPageSize);
        }
        self.existing_account(id)?;
        // One entry more than asked tells whether an older page exists, so that a page ending
        // with the oldest entry says so even when it is exactly full.
        let mut entries = self
            .tables
            .history(id, before_lsn.unwrap_or(Lsn::MAX), limit + 1)?;
        let next_cursor = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            Some(entries.last().expect("limit is at least 1").lsn)
        } else {
            None
        };
        Ok(HistoryPage {
            entries,
            next_cursor,
        })
    }

    pub fn transfer_status(&self, id: TransferId) -> Result<TransferStatus, StorageError> {
        match lock(&self.participant).status(id) {
            // Decided, the decision possibly not applied yet: answer with it.
            Some(Status::Decided {
                operations,
                outcome,
            }) => {
                return Ok(TransferStatus::Decided(transfer_record(
                    id, operations, outcome,
                )));
            }
            Some(Status::Prepared(transaction)) => {
                return Ok(TransferStatus::Prepared(transaction.clone()));
            }
            // Being prepared, nothing durable yet: as far as anyone may know, unknown.
            None => {}
        }
        Ok(match self.tables.transfer(id)? {
            Some(record) => TransferStatus::Decided(record),
            None => TransferStatus::Unknown,
        })
    }

    /// A consistent cut of this shard: taken while no batch is being applied.
    pub fn audit(&self) -> Result<ShardAudit, StorageError> {
        let applied = lock(&self.applied);
        self.audit_locked(*applied)
    }

    /// The audit of the tables as applied up to `applied` (whose lock the caller holds).
    fn audit_locked(&self, applied: Lsn) -> Result<ShardAudit, StorageError> {
        let totals = self.tables.totals()?;
        let entered = totals.deposited + totals.credited_by_transactions;
        let mut accounts = 0u64;
        let mut balance_sum = 0u128;
        let mut negative_balance_count = 0u64;
        self.tables.scan_accounts(&mut |account| {
            accounts += 1;
            balance_sum += u128::from(account.balance);
            if u128::from(account.balance) > entered {
                negative_balance_count += 1;
            }
        })?;
        // From the tables, so that the count belongs to the same cut as the balances.
        let in_doubt = self.tables.all_prepared()?.len() as u64;
        Ok(ShardAudit {
            applied_lsn: applied,
            accounts,
            balance_sum,
            totals,
            in_doubt,
            negative_balance_count,
        })
    }

    /// Starts a read: hears of its timestamp `at`, if it has one, and notes which changes hold
    /// locks now. Those (and only those) may still be applied at or below `at`: everything
    /// locked from now on is stamped later (`crate::clock`). Wait until `fence_settled`, then
    /// read with `balances_at`, `audit_at`, or (a read of the latest state) `balance`.
    pub fn read_fence(&self, at: Option<Timestamp>) -> ReadFence {
        if let Some(at) = at {
            self.options.clock.observe(at);
        }
        // After the clock heard of `at` (both sequentially consistent): an owner numbered from
        // here on reads the clock after `at`; one numbered before is waited for.
        let below = LOCK_OWNER_BASE + u128::from(self.next_lock_owner.load(Ordering::SeqCst));
        ReadFence { below }
    }

    /// Whether every change that held a lock on one of `accounts` (`None`: on any account) when
    /// `fence` was taken is applied (or gone). Never blocks.
    pub fn fence_settled(&self, fence: &ReadFence, accounts: Option<&[AccountId]>) -> bool {
        match accounts {
            Some(accounts) => !accounts
                .iter()
                .any(|account| self.locks.changing_below(*account, fence.below)),
            None => !self.locks.any_changing_below(fence.below),
        }
    }

    /// The versions, if they still hold every change stamped after `at`.
    fn versions_at(&self, at: Timestamp) -> Result<MutexGuard<'_, Versions>, ReadError> {
        let versions = lock(&self.versions);
        match versions.floor() {
            floor if at < floor => Err(ReadError::TooOld { at, floor }),
            _ => Ok(versions),
        }
    }

    /// The balances of `accounts` at timestamp `at`, in request order, once a fence taken at
    /// `at` is settled for them: the applied balances without the changes stamped after `at`.
    pub fn balances_at(
        &self,
        accounts: &[AccountId],
        at: Timestamp,
    ) -> Result<Vec<Amount>, ReadError> {
        let _applied = lock(&self.applied);
        let versions = self.versions_at(at)?;
        accounts
            .iter()
            .map(|account| {
                let balance = self.existing_account(*account)?.balance;
                let then = i128::from(balance) - versions.after(*account, at);
                Amount::try_from(then).map_err(|_| {
                    ReadError::Storage(StorageError::Inconsistent(format!(
                        "account {account} would have held {then} at timestamp {at}"
                    )))
                })
            })
            .collect()
    }

    /// This shard's audit at timestamp `at`, once a fence taken at `at` is settled for every
    /// account: balances and totals without the changes stamped after `at`.
    pub fn audit_at(&self, at: Timestamp) -> Result<ShardAudit, ReadError> {
        let applied = lock(&self.applied);
        let versions = self.versions_at(at)?;
        let mut audit = self.audit_locked(*applied)?;
        let later = versions.all_after(at);
        let inconsistent = || {
            ReadError::Storage(StorageError::Inconsistent(format!(
                "the changes after timestamp {at} are more than the shard holds"
            )))
        };
        audit.totals = later.take_back(audit.totals).ok_or_else(inconsistent)?;
        audit.balance_sum = u128::try_from(
            i128::try_from(audit.balance_sum).map_err(|_| inconsistent())? - later.balance_sum,
        )
        .map_err(|_| inconsistent())?;
        Ok(audit)
    }
}

/// What a read waits for before it reads (`Engine::read_fence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadFence {
    /// Lock owners numbered below this held their locks before the read arrived.
    below: u128,
}
