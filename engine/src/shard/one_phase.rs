//! One-phase writes: account creation, deposits and withdrawals, transfers within the shard.

use super::*;

impl<T: Tables, L: Log> Engine<T, L> {
    /// Creates an account with balance 0. Creating it again with the same owner and flags is the
    /// same success; with different ones it is `AccountExists`.
    pub fn create_account(
        &self,
        id: AccountId,
        owner: Option<&str>,
        flags: u32,
        created_at_ms: u64,
    ) -> Result<(), CreateAccountError> {
        let logged =
            self.create_account_with(id, owner, flags, created_at_ms, self.lock_policy())?;
        Ok(self.finish(logged)?)
    }

    /// [`Engine::create_account`] in two halves; a lock conflict is refused at once.
    pub fn create_account_logged(
        &self,
        id: AccountId,
        owner: Option<&str>,
        flags: u32,
        created_at_ms: u64,
    ) -> Result<Logged<()>, CreateAccountError> {
        self.create_account_with(id, owner, flags, created_at_ms, LockPolicy::NoWait)
    }

    fn create_account_with(
        &self,
        id: AccountId,
        owner: Option<&str>,
        flags: u32,
        created_at_ms: u64,
        policy: LockPolicy,
    ) -> Result<Logged<()>, CreateAccountError> {
        self.check_writable()?;
        if owner.is_some_and(|owner| owner.len() > OWNER_NAME_MAX_BYTES as usize) {
            return Err(CreateAccountError::OwnerNameTooLong);
        }
        let owner = owner.filter(|owner| !owner.is_empty()).map(str::to_owned);
        let locks = self
            .take_locks(&[(id, LockMode::Exclusive)], policy)
            .map_err(|Conflict { account }| CreateAccountError::LockConflict { account })?;
        if let Some(existing) = self.tables.account(id)? {
            return if existing.owner == owner && existing.flags == flags {
                Ok(Logged::now(()))
            } else {
                Err(CreateAccountError::AccountExists(id))
            };
        }
        let lsn = self.log(vec![Record::AccountCreated {
            account: id,
            owner,
            flags,
            created_at_ms,
        }])?;
        self.release_when_applied(lsn, [locks.keep()]);
        Ok(Logged::after(lsn, ()))
    }

    /// Adds money to an account from outside, at most once per `id`: see [`Engine::move_money`].
    pub fn deposit(
        &self,
        id: MovementId,
        account: AccountId,
        amount: Amount,
    ) -> Result<MovementOutcome, MovementError> {
        self.move_money(id, account, MovementKind::Deposit, amount)
    }

    /// Takes money out of an account, at most once per `id`: see [`Engine::move_money`].
    pub fn withdraw(
        &self,
        id: MovementId,
        account: AccountId,
        amount: Amount,
    ) -> Result<MovementOutcome, MovementError> {
        self.move_money(id, account, MovementKind::Withdrawal, amount)
    }

    /// A deposit or withdrawal, idempotent by `id`. Its first outcome is logged, applied or
    /// refused (unknown account, insufficient funds, overflow: refusals that depend on state), and
    /// is the answer to every request with this id from then on, across restarts: a retry applies
    /// nothing, and a refused id stays refused even once the state would allow it. The same id with
    /// another account, kind or amount, or an id this shard knows as a transfer, is
    /// `DuplicateWithDifferentContent`. Errors log nothing: a zero amount (malformed), a lock
    /// conflict or `InProgress` (transient: retry with the same id), storage failures.
    pub fn move_money(
        &self,
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
    ) -> Result<MovementOutcome, MovementError> {
        let logged = self.move_money_with(id, account, kind, amount, self.lock_policy())?;
        self.finish(logged)?;
        self.recorded_movement(id)
    }

    /// [`Engine::move_money`] in two halves; a lock conflict is refused at once. Once finished,
    /// the outcome is [`Engine::recorded_movement`]: a deposit's balance after it is only known
    /// once applied, since other credits to the account may be applied first.
    pub fn move_money_logged(
        &self,
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
    ) -> Result<Logged<()>, MovementError> {
        self.move_money_with(id, account, kind, amount, LockPolicy::NoWait)
    }

    /// The outcome recorded for movement `id`, once its record is applied: the answer to every
    /// request of it, the first included.
    pub fn recorded_movement(&self, id: MovementId) -> Result<MovementOutcome, MovementError> {
        let record = self.tables.movement(id)?.ok_or_else(|| {
            StorageError::Inconsistent(format!("movement {id} is not in the tables once applied"))
        })?;
        Ok(record.outcome)
    }

    fn move_money_with(
        &self,
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
        policy: LockPolicy,
    ) -> Result<Logged<()>, MovementError> {
        if amount == 0 {
            return Err(MovementError::ZeroAmount);
        }
        let same_request = |record: &MovementRecord| {
            if (record.account, record.kind, record.amount) == (account, kind, amount) {
                Ok(record.outcome)
            } else {
                Err(MovementError::DuplicateWithDifferentContent(id))
            }
        };
        // A retry of a recorded movement is a read: answered even after a storage failure.
        if let Some(record) = self.tables.movement(id)? {
            return same_request(&record).map(|_| Logged::now(()));
        }
        self.check_writable()?;
        let in_flight = self
            .enter_local_in_flight(id)
            .ok_or(MovementError::InProgress(id))?;
        // Checked again: a request with this id may have finished between the first look and
        // taking the in-flight slot.
        if let Some(record) = self.tables.movement(id)? {
            return same_request(&record).map(|_| Logged::now(()));
        }
        self.refuse_transfer_id(id)?;
        // A deposit is a credit and a withdrawal a debit: both commute with the other credits
        // and debits of the account.
        let mode = match kind {
            MovementKind::Deposit => LockMode::Credit(amount),
            MovementKind::Withdrawal => LockMode::Debit(amount),
        };
        let locks = self
            .take_locks(&[(account, mode)], policy)
            .map_err(|Conflict { account }| MovementError::LockConflict { account })?;
        let refusal = match self.tables.account(account)? {
            None => Some(RefusalReason::UnknownAccount),
            Some(existing) => match kind {
                MovementKind::Deposit => (!self.credit_fits(account, existing.balance))
                    .then_some(RefusalReason::Overflow),
                MovementKind::Withdrawal if self.debit_fits(account, existing.balance) => None,
                // Held, not missing: a transient refusal, recorded nowhere, like a lock conflict.
                MovementKind::Withdrawal if existing.balance >= amount => {
                    return Err(MovementError::FundsHeld { account });
                }
                MovementKind::Withdrawal => Some(RefusalReason::InsufficientFunds),
            },
        };
        let stamp = refusal.is_none().then(|| Stamp {
            at: self.options.clock.now(),
            changes: vec![Change {
                account,
                kind: match kind {
                    MovementKind::Deposit => ChangeKind::Deposited,
                    MovementKind::Withdrawal => ChangeKind::Withdrawn,
                },
                amount,
            }],
        });
        let lsn = self.log_stamped(
            vec![match refusal {
                None => Record::Movement {
                    id,
                    account,
                    kind,
                    amount,
                },
                Some(reason) => Record::MovementRefused {
                    id,
                    account,
                    kind,
                    amount,
                    reason,
                },
            }],
            stamp,
        )?;
        self.release_when_applied(lsn, [locks.keep(), in_flight.keep()]);
        Ok(Logged::after(lsn, ()))
    }

    /// Takes `id`'s slot among the one-phase requests running; `None` while another has it.
    fn enter_local_in_flight(&self, id: u128) -> Option<Held<'_, T, L>> {
        // Not `then_some`: it would build the guard, whose drop frees the slot, on refusal too.
        let entered = lock(&self.local_in_flight).insert(id);
        entered.then(|| Held {
            engine: self,
            release: Release::InFlight(id),
        })
    }

    /// Refuses a deposit or withdrawal whose id this shard knows as a transfer (one-phase, 2PC
    /// participant or coordinator decision): one node, one meaning per id. A transfer being
    /// prepared that is not durable yet may still vanish, so it is `InProgress`, not a duplicate.
    /// Called holding the id's in-flight slot, which a new prepare of the id checks, so no
    /// transfer can take the id between these looks and the movement's record.
    fn refuse_transfer_id(&self, id: MovementId) -> Result<(), MovementError> {
        let durable = self.log.durable_lsn();
        if let Some(durable) = lock(&self.participant).durably_known(id, durable) {
            return Err(if durable {
                MovementError::DuplicateWithDifferentContent(id)
            } else {
                MovementError::InProgress(id)
            });
        }
        // Looked up after the participant map: a decided transaction is in the tables before it
        // leaves the map.
        if self.tables.transfer(id)?.is_some() || self.tables.decision(id)?.is_some() {
            return Err(MovementError::DuplicateWithDifferentContent(id));
        }
        Ok(())
    }

    /// A transfer between two accounts of this shard, in one phase. Refusals that depend on state
    /// (funds, unknown account, overflow, lock conflict) are logged outcomes, so a retry with the
    /// same id gets the same answer; malformed requests are errors and log nothing.
    pub fn local_transfer(
        &self,
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
    ) -> Result<Outcome, LocalTransferError> {
        let logged = self.local_transfer_with(
            id,
            debit,
            credit,
            amount,
            self.lock_policy(),
            OnConflict::Abort,
        )?;
        Ok(self.finish(logged)?)
    }

    /// [`Engine::local_transfer`] in two halves. It never waits for a lock: on a conflict it
    /// either logs the abort (`OnConflict::Abort`) or answers `LockConflict` having logged
    /// nothing, for the caller to try again later (`OnConflict::Retry`).
    pub fn local_transfer_logged(
        &self,
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        on_conflict: OnConflict,
    ) -> Result<Logged<Outcome>, LocalTransferError> {
        self.local_transfer_with(id, debit, credit, amount, LockPolicy::NoWait, on_conflict)
    }

    fn local_transfer_with(
        &self,
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        policy: LockPolicy,
        on_conflict: OnConflict,
    ) -> Result<Logged<Outcome>, LocalTransferError> {
        if amount == 0 {
            return Err(LocalTransferError::ZeroAmount);
        }
        if debit == credit {
            return Err(LocalTransferError::SameAccount(debit));
        }
        let same_request = |record: &TransferRecord| {
            if record.transfer
                == Some(Transfer {
                    debit,
                    credit,
                    amount,
                })
            {
                Ok(record.outcome)
            } else {
                Err(LocalTransferError::DuplicateWithDifferentContent(id))
            }
        };
        // A retry of a recorded transfer is a read: answered even after a storage failure.
        if let Some(record) = self.tables.transfer(id)? {
            return same_request(&record).map(Logged::now);
        }
        self.check_writable()?;
        let in_flight = self
            .enter_local_in_flight(id)
            .ok_or(LocalTransferError::InProgress(id))?;
        if lock(&self.participant).holds(id) {
            return Err(LocalTransferError::InProgress(id));
        }
        // Checked again: a request with this id may have finished between the first look and
        // taking the in-flight slot.
        if let Some(record) = self.tables.transfer(id)? {
            return same_request(&record).map(Logged::now);
        }
        // A deposit's or withdrawal's id is not reused for a transfer (one node, one meaning per
        // id); movements take the same in-flight slot, so none can be logged after this look.
        if self.tables.movement(id)?.is_some() {
            return Err(LocalTransferError::DuplicateWithDifferentContent(id));
        }
        let request = [
            (debit, LockMode::Debit(amount)),
            (credit, LockMode::Credit(amount)),
        ];
        let (outcome, locks) = match self.take_locks(&request, policy) {
            Err(Conflict { account }) => match on_conflict {
                OnConflict::Retry => return Err(LocalTransferError::LockConflict { account }),
                OnConflict::Abort => (Outcome::Aborted(AbortReason::LockConflict), None),
            },
            Ok(locks) => match self.validate_transfer(debit, credit, amount)? {
                Some(reason) => (Outcome::Aborted(reason), Some(locks)),
                None => (Outcome::Committed, Some(locks)),
            },
        };
        let stamp = (outcome == Outcome::Committed).then(|| Stamp {
            at: self.options.clock.now(),
            changes: vec![
                Change {
                    account: debit,
                    kind: ChangeKind::LocalDebit,
                    amount,
                },
                Change {
                    account: credit,
                    kind: ChangeKind::LocalCredit,
                    amount,
                },
            ],
        });
        let lsn = self.log_stamped(
            vec![match outcome {
                Outcome::Committed => Record::LocalTransfer {
                    id,
                    debit,
                    credit,
                    amount,
                },
                Outcome::Aborted(reason) => Record::TransferAborted {
                    id,
                    debit,
                    credit,
                    amount,
                    reason,
                },
            }],
            stamp,
        )?;
        let releases = locks.map(Held::keep).into_iter();
        self.release_when_applied(lsn, releases.chain([in_flight.keep()]));
        Ok(Logged::after(lsn, outcome))
    }

    /// Why a transfer of `amount` from `debit` to `credit`, whose locks are held, cannot happen
    /// now, if it cannot.
    fn validate_transfer(
        &self,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
    ) -> Result<Option<AbortReason>, StorageError> {
        let (Some(from), Some(to)) = (self.tables.account(debit)?, self.tables.account(credit)?)
        else {
            return Ok(Some(AbortReason::UnknownAccount));
        };
        if !self.debit_fits(debit, from.balance) {
            return Ok(Some(two_phase::short_of_funds(from.balance, amount)));
        }
        if !self.credit_fits(credit, to.balance) {
            return Ok(Some(AbortReason::Overflow));
        }
        Ok(None)
    }
}
