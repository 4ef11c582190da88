//! Two-phase commit: the participant's side (prepare, decide, in doubt) over the I/O-free
//! [`Participant`] core, and the coordinator's log (decisions, their ends, look-ups).

use super::*;

impl<T: Tables, L: Log> Engine<T, L> {
    /// Whether every credit pending on `account` (the caller's, taken, included) fits on top of
    /// its committed `balance`, whichever of them commit.
    pub(super) fn credit_fits(&self, account: AccountId, balance: Amount) -> bool {
        u128::from(balance) + self.locks.pending(account).credits <= u128::from(Amount::MAX)
    }

    /// Whether the committed `balance` of `account` covers every debit pending on it (the
    /// caller's, taken, included), whichever of them commit. Pending credits do not count: they
    /// may abort.
    pub(super) fn debit_fits(&self, account: AccountId, balance: Amount) -> bool {
        u128::from(balance) >= self.locks.pending(account).debits
    }

    /// Why this prepared transaction cannot commit now, if it cannot (its locks are held).
    fn validate_operations(
        &self,
        operations: &[Operation],
    ) -> Result<Option<AbortReason>, StorageError> {
        for operation in operations {
            let Some(account) = self.tables.account(operation.account)? else {
                return Ok(Some(AbortReason::UnknownAccount));
            };
            let fits = match operation.kind {
                OperationKind::Debit => self.debit_fits(operation.account, account.balance),
                OperationKind::Credit => self.credit_fits(operation.account, account.balance),
            };
            if !fits {
                return Ok(Some(match operation.kind {
                    OperationKind::Debit => short_of_funds(account.balance, operation.amount),
                    OperationKind::Credit => AbortReason::Overflow,
                }));
            }
        }
        Ok(None)
    }

    /// 2PC phase one for a batch: per transaction, take its locks (never waiting), validate, and
    /// log PREPARED; the whole batch costs one group commit. Votes are returned only once every
    /// PREPARED record they depend on is durable. An `Err` means a storage failure: no vote.
    pub fn prepare(&self, batch: &[PrepareRequest]) -> Result<Vec<Vote>, StorageError> {
        let logged = self.prepare_logged(batch)?;
        self.finish(logged)
    }

    /// [`Engine::prepare`] in two halves.
    pub fn prepare_logged(
        &self,
        batch: &[PrepareRequest],
    ) -> Result<Logged<Vec<Vote>>, StorageError> {
        self.check_writable()?;
        let mut votes = Vec::with_capacity(batch.len());
        let mut records = Vec::new();
        let mut begun = Vec::new();
        let mut wait_for: Option<Lsn> = None;
        let mut participant = lock(&self.participant);
        for request in batch {
            // A PREPARE of an id held here is answered from what is held; one begun earlier in
            // this very batch waits for the batch, as every new prepare does.
            let answer = match participant.vote_again(request) {
                Some(answer) => answer,
                None => match self.vote_new(&mut participant, request.clone(), &mut records) {
                    Ok(vote) => {
                        if vote == Vote::Yes {
                            begun.push(request.id);
                        }
                        Answer {
                            answer: vote,
                            wait_for: None,
                        }
                    }
                    Err(error) => {
                        self.forget_prepares(&mut participant, &begun);
                        return Err(error);
                    }
                },
            };
            wait_for = wait_for.max(answer.wait_for);
            votes.push(answer.answer);
        }
        if !records.is_empty() {
            let count = records.len() as Lsn;
            let last = match self.log(records) {
                Ok(last) => last,
                Err(error) => {
                    self.forget_prepares(&mut participant, &begun);
                    return Err(error);
                }
            };
            participant.prepares_logged(&begun, last + 1 - count);
            wait_for = wait_for.max(Some(last));
        }
        Ok(Logged {
            wait_for,
            answer: votes,
        })
    }

    /// The vote on a transaction not held here; a yes has taken its locks, begun its entry and
    /// queued its PREPARED into `records`.
    fn vote_new(
        &self,
        participant: &mut Participant,
        transaction: PreparedTransaction,
        records: &mut Vec<Record>,
    ) -> Result<Vote, StorageError> {
        let id = transaction.id;
        if let Some(record) = self.tables.transfer(id)? {
            // Decided long ago. A committed id is only "yes" to the very same operations: a
            // reused id must never count as prepared without anything being prepared.
            return Ok(match record.outcome {
                Outcome::Aborted(reason) => Vote::No(reason),
                Outcome::Committed
                    if record
                        == transfer_record(id, &transaction.operations, Outcome::Committed) =>
                {
                    Vote::Yes
                }
                Outcome::Committed => Vote::No(AbortReason::InvalidRequest),
            });
        }
        // An id in use by a one-phase request, or recorded as a deposit or withdrawal here, is
        // another request's: refused like any id reused with other content.
        if lock(&self.local_in_flight).contains(&id)
            || !well_formed(&transaction.operations)
            || self.tables.movement(id)?.is_some()
        {
            return Ok(Vote::No(AbortReason::InvalidRequest));
        }
        let locks =
            match self.take_locks(&lock_request(&transaction.operations), LockPolicy::NoWait) {
                Ok(locks) => locks,
                Err(Conflict { .. }) => return Ok(Vote::No(AbortReason::LockConflict)),
            };
        if let Some(reason) = self.validate_operations(&transaction.operations)? {
            return Ok(Vote::No(reason));
        }
        records.push(Record::Prepared {
            id,
            coordinator: transaction.coordinator,
            operations: transaction.operations.clone(),
        });
        participant.begin_prepare(transaction, locks.keep_lock_owner());
        Ok(Vote::Yes)
    }

    /// Undoes prepares begun whose records were not logged: forgotten, their locks freed.
    fn forget_prepares(&self, participant: &mut Participant, begun: &[TransferId]) {
        for owner in participant.forget_prepares(begun) {
            self.locks.release_all(owner);
        }
    }

    /// 2PC phase two, commit: applies each prepared transaction, logs it, releases its locks. A
    /// transaction already committed answers `Ok`; one never prepared here is an error, logged
    /// loudly (it means a coordinator or message bug). The outer `Err` is a storage failure.
    pub fn commit(
        &self,
        ids: &[TransferId],
    ) -> Result<Vec<Result<(), Disagreement>>, StorageError> {
        let at = self.clock_now();
        let decisions = ids.iter().map(|id| (*id, Outcome::Committed, at)).collect();
        let logged = self.decide_logged(decisions, None, Vec::new())?;
        self.finish(logged)
    }

    /// 2PC phase two, abort: discards each prepared transaction and releases its locks. Aborting
    /// an unknown transaction is `Ok`, and is recorded so that a late PREPARE for it is refused.
    pub fn abort(
        &self,
        ids: &[(TransferId, AbortReason)],
    ) -> Result<Vec<Result<(), Disagreement>>, StorageError> {
        let decisions = ids
            .iter()
            .map(|(id, reason)| (*id, Outcome::Aborted(*reason), 0))
            .collect();
        let logged = self.decide_logged(decisions, None, Vec::new())?;
        self.finish(logged)
    }

    /// 2PC phase two for decisions of `coordinator`: like `commit` and `abort`, except that a
    /// decision about a transaction this shard prepared for another coordinator (a different
    /// transaction reusing the id) changes nothing: an abort is acknowledged, a commit refused.
    /// A commit applies at the timestamp it carries.
    pub fn decide_from(
        &self,
        coordinator: NodeId,
        decisions: &[Verdict],
    ) -> Result<Vec<Result<(), Disagreement>>, StorageError> {
        let logged = self.decide_from_logged(coordinator, decisions)?;
        self.finish(logged)
    }

    /// [`Engine::decide_from`] in two halves.
    pub fn decide_from_logged(
        &self,
        coordinator: NodeId,
        decisions: &[Verdict],
    ) -> Result<Logged<Vec<Result<(), Disagreement>>>, StorageError> {
        self.decide_logged(decisions.to_vec(), Some(coordinator), Vec::new())
    }

    /// Coordinator and participant in one step: logs `decisions` and applies this shard's part
    /// of them (`local`, as `commit` and `abort` would, its commits at `commit_ts`) in the same
    /// group commit, so this shard's locks are free by the time the client hears the outcome.
    /// The per-transaction results are those of `local`.
    pub fn log_decisions_and_decide(
        &self,
        coordinator: NodeId,
        decisions: Vec<CoordinatorDecision>,
        local: &[(TransferId, Outcome)],
        commit_ts: Timestamp,
    ) -> Result<Vec<Result<(), Disagreement>>, StorageError> {
        let logged =
            self.log_decisions_and_decide_logged(coordinator, decisions, local, commit_ts)?;
        self.finish(logged)
    }

    /// [`Engine::log_decisions_and_decide`] in two halves.
    pub fn log_decisions_and_decide_logged(
        &self,
        coordinator: NodeId,
        decisions: Vec<CoordinatorDecision>,
        local: &[(TransferId, Outcome)],
        commit_ts: Timestamp,
    ) -> Result<Logged<Vec<Result<(), Disagreement>>>, StorageError> {
        self.decide_logged(
            local
                .iter()
                .map(|(id, outcome)| (*id, *outcome, commit_ts))
                .collect(),
            Some(coordinator),
            decisions.into_iter().map(Record::Decided).collect(),
        )
    }

    /// Logs participant decisions; `extra` records (coordinator decisions) go into the same log
    /// batch, first. Each decision's result is released once its record is applied.
    fn decide_logged(
        &self,
        decisions: Vec<Verdict>,
        coordinator: Option<NodeId>,
        extra: Vec<Record>,
    ) -> Result<Logged<Vec<Result<(), Disagreement>>>, StorageError> {
        self.check_writable()?;
        let mut results = Vec::with_capacity(decisions.len());
        let mut records = extra;
        let mut decided: Vec<TransferId> = Vec::new();
        let mut undos: Vec<Undo> = Vec::new();
        let mut stamps: Vec<(usize, Stamp)> = Vec::new();
        let mut wait_for: Option<Lsn> = None;
        let mut participant = lock(&self.participant);
        for (id, outcome, commit_ts) in decisions {
            let mut step = participant.decide(id, outcome, coordinator);
            if step == Decide::NotHeld {
                let recorded = match self.tables.transfer(id) {
                    Ok(recorded) => recorded.map(|record| record.outcome),
                    Err(error) => {
                        participant.undo(&undos);
                        return Err(error.into());
                    }
                };
                step = participant.decide_unheld(id, outcome, coordinator, recorded);
            }
            match step {
                Decide::Answered(answer) => {
                    wait_for = wait_for.max(answer.wait_for);
                    if let Err(disagreement) = answer.answer {
                        tracing::error!(transaction = %id, requested = ?outcome, %disagreement, "decision refused");
                    }
                    results.push(answer.answer);
                }
                Decide::Log { record, undo } => {
                    if let (Record::Committed { .. }, Some(Status::Decided { operations, .. })) =
                        (&record, participant.status(id))
                    {
                        // Every reading of this clock from now on is later than the commit.
                        self.options.clock.observe(commit_ts);
                        stamps.push((records.len(), commit_stamp(commit_ts, operations)));
                    }
                    records.push(record);
                    undos.push(undo);
                    decided.push(id);
                    results.push(Ok(()));
                }
                Decide::NotHeld => unreachable!("decide_unheld always answers"),
            }
        }
        if !records.is_empty() {
            let last = match self.log_with_stamps(records, stamps) {
                Ok(last) => last,
                Err(error) => {
                    participant.undo(&undos);
                    return Err(error);
                }
            };
            let first_decision = last + 1 - decided.len() as Lsn;
            let logged: Vec<(TransferId, Lsn)> = decided
                .iter()
                .enumerate()
                .map(|(offset, id)| (*id, first_decision + offset as Lsn))
                .collect();
            participant.decisions_logged(&logged);
            wait_for = wait_for.max(Some(last));
        }
        Ok(Logged {
            wait_for,
            answer: results,
        })
    }

    /// Prepared transactions whose decision is not known here.
    pub fn in_doubt(&self) -> Vec<PreparedTransaction> {
        lock(&self.participant).in_doubt()
    }

    /// Coordinator: logs decisions (one group commit for all of them) and returns once they are
    /// durable and applied, so `decision` answers them from then on.
    pub fn log_decisions(&self, decisions: Vec<CoordinatorDecision>) -> Result<(), StorageError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let lsn = self.log(decisions.into_iter().map(Record::Decided).collect())?;
        self.finish(Logged::after(lsn, ()))
    }

    /// Coordinator: marks decisions every participant acknowledged, so they are not resent.
    pub fn end_decisions(&self, ids: &[TransferId]) -> Result<(), StorageError> {
        let logged = self.end_decisions_logged(ids)?;
        self.finish(logged)
    }

    /// [`Engine::end_decisions`] in two halves.
    pub fn end_decisions_logged(&self, ids: &[TransferId]) -> Result<Logged<()>, StorageError> {
        if ids.is_empty() {
            return Ok(Logged::now(()));
        }
        let records = ids
            .chunks(ENDED_IDS_MAX)
            .map(|chunk| Record::Ended {
                ids: chunk.to_vec(),
            })
            .collect();
        let lsn = self.log(records)?;
        Ok(Logged::after(lsn, ()))
    }

    /// Coordinator: the logged decision on `id`, ended or not.
    pub fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, StorageError> {
        Ok(self.tables.decision(id)?)
    }

    /// Coordinator: what the tables know of transfer `id` before it runs (the answer to the
    /// core's `Effect::LookUp`): a logged decision, or a one-phase record. A PREPARE of an
    /// earlier attempt whose decision was never logged counts as nothing: running the transfer
    /// again re-uses it.
    pub fn look_up(&self, id: TransferId) -> Result<Known, StorageError> {
        if let Some(decision) = self.decision(id)? {
            return Ok(Known::Decided(decision));
        }
        Ok(match self.transfer_status(id)? {
            TransferStatus::Decided(record) => Known::Recorded(record),
            TransferStatus::Prepared(_) | TransferStatus::Unknown => Known::Nothing,
        })
    }

    /// Coordinator: decisions some participant has not acknowledged yet (to resend).
    pub fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, StorageError> {
        Ok(self.tables.unended_decisions()?)
    }

    /// Transactions prepared (or being prepared) here whose decision is not applied yet.
    pub fn undecided_count(&self) -> usize {
        lock(&self.participant).undecided_count()
    }
}

/// Why a debit of `amount` does not fit: the balance is short of it, or it would cover it but
/// not together with the debits pending on the account (held funds, a retryable reason).
pub(super) fn short_of_funds(balance: Amount, amount: Amount) -> AbortReason {
    if balance >= amount {
        AbortReason::FundsHeld
    } else {
        AbortReason::InsufficientFunds
    }
}

/// A prepared transaction's changes, committed at `at`.
fn commit_stamp(at: Timestamp, operations: &[Operation]) -> Stamp {
    Stamp {
        at,
        changes: operations
            .iter()
            .map(|operation| Change {
                account: operation.account,
                kind: match operation.kind {
                    OperationKind::Debit => ChangeKind::Debited,
                    OperationKind::Credit => ChangeKind::Credited,
                },
                amount: operation.amount,
            })
            .collect(),
    }
}

/// The locks a transaction's operations take: credits and debits (escrowed) commute with each
/// other (see `LockMode`).
pub(super) fn lock_request(operations: &[Operation]) -> Vec<(AccountId, LockMode)> {
    operations
        .iter()
        .map(|operation| {
            let mode = match operation.kind {
                OperationKind::Debit => LockMode::Debit(operation.amount),
                OperationKind::Credit => LockMode::Credit(operation.amount),
            };
            (operation.account, mode)
        })
        .collect()
}

/// A transaction's operations are usable: some, not too many, positive, each account once.
fn well_formed(operations: &[Operation]) -> bool {
    let mut accounts: Vec<AccountId> = operations
        .iter()
        .map(|operation| operation.account)
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    !operations.is_empty()
        && operations.len() <= TRANSACTION_OPERATIONS_MAX as usize
        && accounts.len() == operations.len()
        && operations.iter().all(|operation| operation.amount > 0)
}
