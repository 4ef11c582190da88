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
            applied_lsn: *applied,
            accounts,
            balance_sum,
            totals,
            in_doubt,
            negative_balance_count,
        })
    }

    /// Takes shared locks on `accounts` for a consistent read, waiting at most `wait` for
    /// writers (a prepared transaction holds its locks until its decision is applied). Returns
    /// the locks to pass to `release_locks` and the committed balances, in request order. Any
    /// number of accounts: they are locked in id order, at most `LOCK_REQUEST_ACCOUNTS_MAX` per
    /// lock owner, so readers keep the same global order as every other locker.
    pub fn lock_and_read(
        &self,
        accounts: &[AccountId],
        wait: Duration,
    ) -> Result<(ReadLocks, Vec<Amount>), ReadError> {
        let mut request: Vec<(AccountId, LockMode)> = accounts
            .iter()
            .map(|account| (*account, LockMode::Shared))
            .collect();
        request.sort_unstable_by_key(|(account, _)| *account);
        request.dedup_by_key(|(account, _)| *account);
        let deadline = Instant::now() + wait;
        let mut locks = ReadLocks(Vec::new());
        for chunk in request.chunks(LOCK_REQUEST_ACCOUNTS_MAX) {
            match self.take_locks(chunk, LockPolicy::BoundedWait { deadline }) {
                Ok(held) => locks.0.push(held.keep_lock_owner()),
                Err(Conflict { account }) => {
                    self.release_locks(locks);
                    return Err(ReadError::LockConflict { account });
                }
            }
        }
        let balances = accounts
            .iter()
            .map(|account| self.balance(*account))
            .collect::<Result<Vec<_>, _>>();
        match balances {
            Ok(balances) => Ok((locks, balances)),
            Err(error) => {
                self.release_locks(locks);
                Err(error)
            }
        }
    }

    /// Releases the locks taken by `lock_and_read`.
    pub fn release_locks(&self, locks: ReadLocks) {
        for owner in locks.0 {
            self.locks.release_all(owner);
        }
    }
}
