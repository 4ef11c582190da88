//! One shard's transactional core: every operation a node performs on its accounts, serialized by
//! the lock manager, made durable through the WAL, then applied to the tables in LSN order.
//!
//! The path of every write: take the accounts' locks, validate against committed state, log one
//! record (or one batch of records), wait for the group commit, apply everything durable in LSN
//! order as one table batch, release the locks, answer. Locks are held until the change is applied,
//! so validation always sees every earlier change to the same account.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::apply::{ApplyError, plan_batch, transfer_record};
use crate::coordinator::Known;
use crate::lock::{
    LOCK_REQUEST_ACCOUNTS_MAX, LOCK_STRIPE_COUNT_DEFAULT, LockError, LockManager, LockMode,
    LockPolicy,
};
use crate::model::{
    AbortReason, Account, AccountId, Amount, CoordinatorDecision, HISTORY_PAGE_MAX_ENTRIES,
    HistoryPage, MovementId, MovementKind, MovementOutcome, MovementRecord, NodeId,
    OWNER_NAME_MAX_BYTES, Operation, OperationKind, Outcome, PreparedTransaction, RefusalReason,
    TRANSACTION_OPERATIONS_MAX, Totals, TransferId, TransferRecord,
};
use crate::record::{ENDED_IDS_MAX, Record, RecordDecodeError};
use crate::tables::{Tables, TablesError};
use crate::wal::{FileStorage, Lsn, Storage, Wal, WalError};

/// Records replayed per table batch at start-up.
const REPLAY_BATCH_RECORDS_MAX: usize = 1024;
/// Lock owners are engine-assigned, never client ids: two concurrent requests that reuse one
/// transfer id must not share locks. The high half keeps them apart from nothing in particular
/// but makes them easy to recognise in logs.
const LOCK_OWNER_BASE: u128 = 1 << 64;

/// Tunables of an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub lock_stripe_count: usize,
    /// How long a local operation (deposit, withdrawal, local transfer) waits for its locks
    /// before it is refused with a lock conflict. Zero means no waiting. Prepares never wait: one
    /// waiting transaction would hold up its whole batch.
    pub lock_wait: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lock_stripe_count: LOCK_STRIPE_COUNT_DEFAULT,
            lock_wait: Duration::from_millis(5),
        }
    }
}

/// Every way an engine operation fails. Expected refusals are variants; none changes any state.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("account {0} does not exist")]
    UnknownAccount(AccountId),
    #[error("account {0} exists with different attributes")]
    AccountExists(AccountId),
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("insufficient funds in account {account}: balance {balance}, needed {needed}")]
    InsufficientFunds {
        account: AccountId,
        balance: Amount,
        needed: Amount,
    },
    #[error("the balance of account {0} would overflow")]
    Overflow(AccountId),
    #[error("a transfer cannot debit and credit the same account ({0})")]
    SameAccount(AccountId),
    #[error("owner name is longer than {OWNER_NAME_MAX_BYTES} bytes")]
    OwnerNameTooLong,
    #[error("history page size must be between 1 and {HISTORY_PAGE_MAX_ENTRIES}")]
    InvalidPageSize,
    #[error("lock conflict on account {account}")]
    LockConflict { account: AccountId },
    /// The id names another transfer, deposit or withdrawal on this shard.
    #[error("id {0} was already used here with different content")]
    DuplicateWithDifferentContent(u128),
    /// Another request with this id is running.
    #[error("a request with id {0} is already in progress")]
    InProgress(u128),
    #[error("transaction {0} is not prepared here and was never committed")]
    UnknownTransaction(TransferId),
    #[error("transaction {0} was already aborted")]
    AlreadyAborted(TransferId),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("malformed record at LSN {lsn}: {source}")]
    Record { lsn: Lsn, source: RecordDecodeError },
    #[error("the log and the tables disagree: {0}")]
    Inconsistent(String),
    /// A storage failure happened earlier; the engine refuses writes until reopened.
    #[error("engine stopped accepting writes after a storage failure: {0}")]
    Failed(String),
}

/// What opening the engine found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// The tables' applied LSN before replay.
    pub applied_lsn_before: Lsn,
    pub records_replayed: u64,
    /// Prepared, undecided transactions: their locks are held again; ask their coordinators.
    pub in_doubt: Vec<PreparedTransaction>,
}

/// A participant's vote on one transaction of a prepare batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Yes,
    No(AbortReason),
}

/// One transaction of a prepare batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareRequest {
    pub id: TransferId,
    pub coordinator: NodeId,
    pub operations: Vec<Operation>,
}

/// What a shard knows of a transfer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferStatus {
    Unknown,
    /// Prepared here, decision not yet known.
    Prepared(PreparedTransaction),
    Decided(TransferRecord),
}

/// Shared locks held for a consistent read (see `Engine::lock_and_read`); give them back with
/// `Engine::release_locks`.
#[derive(Debug)]
#[must_use = "locks stay held until released"]
pub struct ReadLocks(Vec<u128>);

/// A consistent cut of one shard, for the conservation check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardAudit {
    pub applied_lsn: Lsn,
    pub accounts: u64,
    pub balance_sum: u128,
    pub totals: Totals,
    pub in_doubt: u64,
    /// Balances that can only be a negative number wrapped around: more than all the money that
    /// ever entered the shard (deposits and 2PC credits). Balances are unsigned and every debit
    /// is validated under its lock, so this is 0 unless an arithmetic or apply bug wrapped one.
    pub negative_balance_count: u64,
}

impl ShardAudit {
    /// The shard's books balance: what its accounts hold equals what came in minus what went out.
    pub fn is_balanced(&self) -> bool {
        self.totals.deposited + self.totals.credited_by_transactions
            == self.balance_sum + self.totals.withdrawn + self.totals.debited_by_transactions
    }
}

/// A participant's decision on a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Commit,
    Abort(AbortReason),
}

impl Decision {
    fn outcome(self) -> Outcome {
        match self {
            Decision::Commit => Outcome::Committed,
            Decision::Abort(reason) => Outcome::Aborted(reason),
        }
    }
}

/// A transaction the participant is working on: prepared (or being prepared), or decided and
/// being applied. Also a placeholder for an abort of a transaction never prepared here, so a
/// PREPARE racing that abort is refused.
struct PreparedEntry {
    lock_owner: u128,
    transaction: PreparedTransaction,
    /// LSN of the PREPARED record (0 until logged, or when not known after a restart).
    prepared_lsn: Lsn,
    /// The PREPARED record is durable: only then may anyone hear "prepared".
    prepared_durable: bool,
    /// The logged decision and its record's LSN (0 until logged).
    decision: Option<(Lsn, Decision)>,
}

/// Releases a lock owner's locks when dropped.
struct HeldLocks<'a> {
    locks: &'a LockManager,
    owner: u128,
}

impl Drop for HeldLocks<'_> {
    fn drop(&mut self) {
        self.locks.release_all(self.owner);
    }
}

/// Removes an id from the in-flight set when dropped.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<u128>>,
    id: u128,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.set).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// See the module documentation.
pub struct Engine<T: Tables, S: Storage = FileStorage> {
    wal: Wal<S>,
    tables: T,
    locks: LockManager,
    options: EngineOptions,
    next_lock_owner: AtomicU64,
    /// Logged records not yet applied, by LSN. Filled under this mutex in the same step that
    /// assigns their LSNs, so the applier never sees a gap that will later be filled.
    pending: Mutex<BTreeMap<Lsn, Record>>,
    /// LSN up to which the tables reflect the log; held while applying.
    applied: Mutex<Lsn>,
    failure: OnceLock<String>,
    /// Ids of the one-phase requests running (local transfers, deposits, withdrawals), which
    /// share one namespace: a second request with a running id is refused `InProgress`, and a
    /// prepare of it votes no.
    local_in_flight: Mutex<HashSet<u128>>,
    participant: Mutex<HashMap<TransferId, PreparedEntry>>,
    /// While non-zero, prepares of new transactions are refused (a cluster-wide cut is being
    /// taken; see `close_prepares`).
    prepares_closed: AtomicU32,
}

impl<T: Tables, S: Storage> Engine<T, S> {
    /// Opens the engine over an opened WAL and tables: replays the log from the tables' applied
    /// LSN + 1, then takes the locks of every prepared, undecided transaction again.
    pub fn open(
        wal: Wal<S>,
        tables: T,
        options: EngineOptions,
    ) -> Result<(Self, OpenReport), EngineError> {
        let applied_lsn_before = tables.applied_lsn()?;
        let durable = wal.durable_lsn();
        if applied_lsn_before > durable {
            return Err(EngineError::Inconsistent(format!(
                "tables are applied up to LSN {applied_lsn_before} but the log ends at {durable}"
            )));
        }
        if applied_lsn_before + 1 < wal.first_lsn() {
            return Err(EngineError::Inconsistent(format!(
                "tables are applied up to LSN {applied_lsn_before} but the log starts at {}",
                wal.first_lsn()
            )));
        }
        let mut records_replayed = 0;
        let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS_MAX);
        for record in wal.read_from(applied_lsn_before + 1)? {
            let record = record?;
            let decoded = Record::decode(record.kind, &record.payload).map_err(|source| {
                EngineError::Record {
                    lsn: record.lsn,
                    source,
                }
            })?;
            batch.push((record.lsn, decoded));
            if batch.len() == REPLAY_BATCH_RECORDS_MAX {
                records_replayed += batch.len() as u64;
                apply_records(&tables, &mut batch)?;
            }
        }
        records_replayed += batch.len() as u64;
        apply_records(&tables, &mut batch)?;
        let applied = tables.applied_lsn()?;

        let engine = Self {
            wal,
            tables,
            locks: LockManager::new(options.lock_stripe_count),
            options,
            next_lock_owner: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            applied: Mutex::new(applied),
            failure: OnceLock::new(),
            local_in_flight: Mutex::new(HashSet::new()),
            participant: Mutex::new(HashMap::new()),
            prepares_closed: AtomicU32::new(0),
        };
        let in_doubt = engine.tables.all_prepared()?;
        {
            let mut participant = lock(&engine.participant);
            for transaction in &in_doubt {
                let lock_owner = engine.new_lock_owner();
                let request = exclusive(&transaction.operations);
                engine
                    .locks
                    .acquire(lock_owner, &request, LockPolicy::NoWait)
                    .map_err(|error| {
                        EngineError::Inconsistent(format!(
                            "in-doubt transaction {} cannot take its locks again: {error}",
                            transaction.id
                        ))
                    })?;
                participant.insert(
                    transaction.id,
                    PreparedEntry {
                        lock_owner,
                        transaction: transaction.clone(),
                        prepared_lsn: 0,
                        prepared_durable: true,
                        decision: None,
                    },
                );
            }
        }
        if !in_doubt.is_empty() {
            tracing::warn!(
                count = in_doubt.len(),
                "in-doubt transactions after restart; their locks are held"
            );
        }
        Ok((
            engine,
            OpenReport {
                applied_lsn_before,
                records_replayed,
                in_doubt,
            },
        ))
    }

    pub fn wal(&self) -> &Wal<S> {
        &self.wal
    }

    pub fn tables(&self) -> &T {
        &self.tables
    }

    fn new_lock_owner(&self) -> u128 {
        LOCK_OWNER_BASE + u128::from(self.next_lock_owner.fetch_add(1, Ordering::Relaxed))
    }

    fn check_writable(&self) -> Result<(), EngineError> {
        if let Some(message) = self.failure.get() {
            return Err(EngineError::Failed(message.clone()));
        }
        if let Some(error) = self.wal.failure() {
            return Err(EngineError::Failed(format!("WAL: {error}")));
        }
        Ok(())
    }

    fn fail(&self, message: String) -> EngineError {
        tracing::error!(%message, "engine storage failure; refusing writes until reopened");
        let _ = self.failure.set(message.clone());
        EngineError::Failed(message)
    }

    fn lock_policy(&self) -> LockPolicy {
        if self.options.lock_wait.is_zero() {
            LockPolicy::NoWait
        } else {
            LockPolicy::BoundedWait {
                deadline: Instant::now() + self.options.lock_wait,
            }
        }
    }

    fn take_locks(
        &self,
        request: &[(AccountId, LockMode)],
        policy: LockPolicy,
    ) -> Result<HeldLocks<'_>, EngineError> {
        let owner = self.new_lock_owner();
        match self.locks.acquire(owner, request, policy) {
            Ok(()) => Ok(HeldLocks {
                locks: &self.locks,
                owner,
            }),
            Err(LockError::Conflict { account, .. }) => Err(EngineError::LockConflict { account }),
            Err(error @ LockError::TooManyAccounts { .. }) => {
                Err(EngineError::Inconsistent(error.to_string()))
            }
        }
    }

    /// Appends records with consecutive LSNs and registers them for applying; returns the last.
    /// The pending map stays locked while the WAL takes the records, so LSN order and pending
    /// order agree; under WAL back-pressure (pending bound reached) appliers wait here too, which
    /// is the back-pressure working as meant.
    fn log(&self, records: Vec<Record>) -> Result<Lsn, EngineError> {
        self.check_writable()?;
        let encoded: Vec<(u8, Vec<u8>)> = records
            .iter()
            .map(|record| (record.kind(), record.encode()))
            .collect();
        let borrowed: Vec<(u8, &[u8])> = encoded
            .iter()
            .map(|(kind, payload)| (*kind, payload.as_slice()))
            .collect();
        let mut pending = lock(&self.pending);
        let last = match self.wal.append_batch(&borrowed) {
            Ok(last) => last,
            Err(error @ WalError::Failed(_)) => return Err(self.fail(error.to_string())),
            Err(error) => return Err(error.into()),
        };
        let first = last + 1 - records.len() as Lsn;
        for (offset, record) in records.into_iter().enumerate() {
            pending.insert(first + offset as Lsn, record);
        }
        Ok(last)
    }

    /// Waits until `lsn` is durable, then until the tables reflect it.
    fn wait_applied(&self, lsn: Lsn) -> Result<(), EngineError> {
        match self.wal.wait_durable(lsn) {
            Ok(()) => {}
            // A clean close is not a storage failure.
            Err(WalError::Closed) => return Err(EngineError::Wal(WalError::Closed)),
            Err(error) => return Err(self.fail(error.to_string())),
        }
        let mut applied = lock(&self.applied);
        while *applied < lsn {
            self.check_writable()?;
            let durable = self.wal.durable_lsn();
            let mut records = Vec::new();
            {
                let mut pending = lock(&self.pending);
                let mut next = *applied + 1;
                while next <= durable {
                    let Some(record) = pending.remove(&next) else {
                        break;
                    };
                    records.push((next, record));
                    next += 1;
                }
            }
            if records.is_empty() {
                return Err(self.fail(format!(
                    "LSN {} is durable but was never registered for applying",
                    *applied + 1
                )));
            }
            match apply_records(&self.tables, &mut records) {
                Ok(applied_lsn) => *applied = applied_lsn,
                Err(error) => return Err(self.fail(error.to_string())),
            }
        }
        Ok(())
    }

    fn log_and_apply(&self, record: Record) -> Result<(), EngineError> {
        let lsn = self.log(vec![record])?;
        self.wait_applied(lsn)
    }

    fn existing_account(&self, id: AccountId) -> Result<Account, EngineError> {
        self.tables
            .account(id)?
            .ok_or(EngineError::UnknownAccount(id))
    }

    /// Creates an account with balance 0. Creating it again with the same owner and flags is the
    /// same success; with different ones it is `AccountExists`.
    pub fn create_account(
        &self,
        id: AccountId,
        owner: Option<&str>,
        flags: u32,
        created_at_ms: u64,
    ) -> Result<(), EngineError> {
        self.check_writable()?;
        if owner.is_some_and(|owner| owner.len() > OWNER_NAME_MAX_BYTES) {
            return Err(EngineError::OwnerNameTooLong);
        }
        let owner = owner.filter(|owner| !owner.is_empty()).map(str::to_owned);
        let _locks = self.take_locks(&[(id, LockMode::Exclusive)], self.lock_policy())?;
        if let Some(existing) = self.tables.account(id)? {
            return if existing.owner == owner && existing.flags == flags {
                Ok(())
            } else {
                Err(EngineError::AccountExists(id))
            };
        }
        self.log_and_apply(Record::AccountCreated {
            account: id,
            owner,
            flags,
            created_at_ms,
        })
    }

    /// Adds money to an account from outside, at most once per `id`: see [`Engine::move_money`].
    pub fn deposit(
        &self,
        id: MovementId,
        account: AccountId,
        amount: Amount,
    ) -> Result<MovementOutcome, EngineError> {
        self.move_money(id, account, MovementKind::Deposit, amount)
    }

    /// Takes money out of an account, at most once per `id`: see [`Engine::move_money`].
    pub fn withdraw(
        &self,
        id: MovementId,
        account: AccountId,
        amount: Amount,
    ) -> Result<MovementOutcome, EngineError> {
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
    ) -> Result<MovementOutcome, EngineError> {
        if amount == 0 {
            return Err(EngineError::ZeroAmount);
        }
        let same_request = |record: &MovementRecord| {
            if (record.account, record.kind, record.amount) == (account, kind, amount) {
                Ok(record.outcome)
            } else {
                Err(EngineError::DuplicateWithDifferentContent(id))
            }
        };
        // A retry of a recorded movement is a read: answered even after a storage failure.
        if let Some(record) = self.tables.movement(id)? {
            return same_request(&record);
        }
        self.check_writable()?;
        let _in_flight = self.enter_local_in_flight(id)?;
        // Checked again: a request with this id may have finished between the first look and
        // taking the in-flight slot.
        if let Some(record) = self.tables.movement(id)? {
            return same_request(&record);
        }
        self.refuse_transfer_id(id)?;
        let _locks = self.take_locks(&[(account, LockMode::Exclusive)], self.lock_policy())?;
        let refusal = match self.tables.account(account)? {
            None => Some(RefusalReason::UnknownAccount),
            Some(existing) => match kind {
                MovementKind::Deposit => existing
                    .balance
                    .checked_add(amount)
                    .is_none()
                    .then_some(RefusalReason::Overflow),
                MovementKind::Withdrawal => {
                    (existing.balance < amount).then_some(RefusalReason::InsufficientFunds)
                }
            },
        };
        self.log_and_apply(match refusal {
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
        })?;
        // The answer is read back from the tables: the very value every retry will be given.
        let record = self.tables.movement(id)?.ok_or_else(|| {
            self.fail(format!(
                "{kind} {id} was logged and applied but is not in the tables"
            ))
        })?;
        assert_eq!(
            (record.account, record.kind, record.amount),
            (account, kind, amount),
            "movement {id} read back with other content"
        );
        assert_eq!(
            matches!(record.outcome, MovementOutcome::Refused(_)),
            refusal.is_some(),
            "movement {id} read back with another outcome"
        );
        Ok(record.outcome)
    }

    /// Takes `id`'s slot among the one-phase requests running, or refuses `InProgress`.
    fn enter_local_in_flight(&self, id: u128) -> Result<InFlight<'_>, EngineError> {
        if !lock(&self.local_in_flight).insert(id) {
            return Err(EngineError::InProgress(id));
        }
        Ok(InFlight {
            set: &self.local_in_flight,
            id,
        })
    }

    /// Refuses a deposit or withdrawal whose id this shard knows as a transfer (one-phase, 2PC
    /// participant or coordinator decision): one node, one meaning per id. A transfer being
    /// prepared that is not durable yet may still vanish, so it is `InProgress`, not a duplicate.
    /// Called holding the id's in-flight slot, which a new prepare of the id checks, so no
    /// transfer can take the id between these looks and the movement's record.
    fn refuse_transfer_id(&self, id: u128) -> Result<(), EngineError> {
        if let Some(entry) = lock(&self.participant).get(&id) {
            let durable = entry.prepared_durable
                || entry
                    .decision
                    .is_some_and(|(decision_lsn, _)| decision_lsn > 0);
            return Err(if durable {
                EngineError::DuplicateWithDifferentContent(id)
            } else {
                EngineError::InProgress(id)
            });
        }
        // Looked up after the participant map: a decided transaction is in the tables before it
        // leaves the map.
        if self.tables.transfer(id)?.is_some() || self.tables.decision(id)?.is_some() {
            return Err(EngineError::DuplicateWithDifferentContent(id));
        }
        Ok(())
    }

    /// The committed balance.
    pub fn balance(&self, id: AccountId) -> Result<Amount, EngineError> {
        Ok(self.existing_account(id)?.balance)
    }

    pub fn account(&self, id: AccountId) -> Result<Account, EngineError> {
        self.existing_account(id)
    }

    /// History of an account, newest first: entries with LSN below `before_lsn` (`None` for
    /// the newest), at most `limit`.
    pub fn history(
        &self,
        id: AccountId,
        before_lsn: Option<Lsn>,
        limit: u32,
    ) -> Result<HistoryPage, EngineError> {
        if limit == 0 || limit > HISTORY_PAGE_MAX_ENTRIES {
            return Err(EngineError::InvalidPageSize);
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

    pub fn transfer_status(&self, id: TransferId) -> Result<TransferStatus, EngineError> {
        if let Some(entry) = lock(&self.participant).get(&id) {
            match entry.decision {
                // Decided, the decision possibly not applied yet: answer with it.
                Some((_, decision)) => {
                    return Ok(TransferStatus::Decided(transfer_record(
                        id,
                        &entry.transaction.operations,
                        decision.outcome(),
                    )));
                }
                None if entry.prepared_durable => {
                    return Ok(TransferStatus::Prepared(entry.transaction.clone()));
                }
                // Being prepared, nothing durable yet: as far as anyone may know, unknown.
                None => {}
            }
        }
        Ok(match self.tables.transfer(id)? {
            Some(record) => TransferStatus::Decided(record),
            None => TransferStatus::Unknown,
        })
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
    ) -> Result<Outcome, EngineError> {
        if amount == 0 {
            return Err(EngineError::ZeroAmount);
        }
        if debit == credit {
            return Err(EngineError::SameAccount(debit));
        }
        let same_request = |record: &TransferRecord| {
            if (record.debit, record.credit, record.amount) == (debit, credit, amount) {
                Ok(record.outcome)
            } else {
                Err(EngineError::DuplicateWithDifferentContent(id))
            }
        };
        // A retry of a recorded transfer is a read: answered even after a storage failure.
        if let Some(record) = self.tables.transfer(id)? {
            return same_request(&record);
        }
        self.check_writable()?;
        let _in_flight = self.enter_local_in_flight(id)?;
        if lock(&self.participant).contains_key(&id) {
            return Err(EngineError::InProgress(id));
        }
        // Checked again: a request with this id may have finished between the first look and
        // taking the in-flight slot.
        if let Some(record) = self.tables.transfer(id)? {
            return same_request(&record);
        }
        // A deposit's or withdrawal's id is not reused for a transfer (one node, one meaning per
        // id); movements take the same in-flight slot, so none can be logged after this look.
        if self.tables.movement(id)?.is_some() {
            return Err(EngineError::DuplicateWithDifferentContent(id));
        }
        let request = [(debit, LockMode::Exclusive), (credit, LockMode::Exclusive)];
        let refusal = match self.take_locks(&request, self.lock_policy()) {
            Err(EngineError::LockConflict { .. }) => Some((AbortReason::LockConflict, None)),
            Err(error) => return Err(error),
            Ok(locks) => match self.validate_transfer(debit, credit, amount)? {
                Some(reason) => Some((reason, Some(locks))),
                None => {
                    self.log_and_apply(Record::LocalTransfer {
                        id,
                        debit,
                        credit,
                        amount,
                    })?;
                    return Ok(Outcome::Committed);
                }
            },
        };
        let (reason, _locks) = refusal.expect("set on every other path");
        self.log_and_apply(Record::TransferAborted {
            id,
            debit,
            credit,
            amount,
            reason,
        })?;
        Ok(Outcome::Aborted(reason))
    }

    /// Why a transfer of `amount` from `debit` to `credit` cannot happen now, if it cannot.
    fn validate_transfer(
        &self,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
    ) -> Result<Option<AbortReason>, EngineError> {
        let (Some(from), Some(to)) = (self.tables.account(debit)?, self.tables.account(credit)?)
        else {
            return Ok(Some(AbortReason::UnknownAccount));
        };
        if from.balance < amount {
            return Ok(Some(AbortReason::InsufficientFunds));
        }
        if to.balance.checked_add(amount).is_none() {
            return Ok(Some(AbortReason::Overflow));
        }
        Ok(None)
    }

    /// Why this prepared transaction cannot commit now, if it cannot (its locks are held).
    fn validate_operations(
        &self,
        operations: &[Operation],
    ) -> Result<Option<AbortReason>, EngineError> {
        for operation in operations {
            let Some(account) = self.tables.account(operation.account)? else {
                return Ok(Some(AbortReason::UnknownAccount));
            };
            let fits = match operation.kind {
                OperationKind::Debit => account.balance >= operation.amount,
                OperationKind::Credit => account.balance.checked_add(operation.amount).is_some(),
            };
            if !fits {
                return Ok(Some(match operation.kind {
                    OperationKind::Debit => AbortReason::InsufficientFunds,
                    OperationKind::Credit => AbortReason::Overflow,
                }));
            }
        }
        Ok(None)
    }

    /// 2PC phase one for a batch: per transaction, take its locks (never waiting), validate, and
    /// log PREPARED; the whole batch costs one group commit. Votes are returned only once every
    /// PREPARED record they depend on is durable. An `Err` means a storage failure: no vote.
    pub fn prepare(&self, batch: &[PrepareRequest]) -> Result<Vec<Vote>, EngineError> {
        self.check_writable()?;
        let mut step = PrepareStep::default();
        let mut participant = lock(&self.participant);
        for request in batch {
            match self.prepare_one(&mut participant, request, &mut step) {
                Ok(vote) => step.votes.push(vote),
                Err(error) => {
                    self.forget_prepared(&mut participant, &step.newly_prepared);
                    return Err(error);
                }
            }
        }
        if !step.records.is_empty() {
            let count = step.records.len() as Lsn;
            let last = match self.log(std::mem::take(&mut step.records)) {
                Ok(last) => last,
                Err(error) => {
                    self.forget_prepared(&mut participant, &step.newly_prepared);
                    return Err(error);
                }
            };
            for (offset, id) in step.newly_prepared.iter().enumerate() {
                let entry = participant.get_mut(id).expect("inserted by prepare_one");
                entry.prepared_lsn = last + 1 - count + offset as Lsn;
            }
            step.wait_for = step.wait_for.max(last);
        }
        drop(participant);
        if step.wait_for > 0 {
            self.wait_applied(step.wait_for)?;
        }
        let mut participant = lock(&self.participant);
        for id in &step.newly_prepared {
            if let Some(entry) = participant.get_mut(id) {
                entry.prepared_durable = true;
            }
        }
        Ok(step.votes)
    }

    /// The vote on one transaction of a batch; records to log go into `step`.
    fn prepare_one(
        &self,
        participant: &mut HashMap<TransferId, PreparedEntry>,
        request: &PrepareRequest,
        step: &mut PrepareStep,
    ) -> Result<Vote, EngineError> {
        if let Some(entry) = participant.get(&request.id) {
            // A resent prepare, or one racing a decision: answer from what is known, once the
            // record behind the answer is durable. Same id with other operations, or from another
            // coordinator (a different transaction reusing the id), is refused.
            return Ok(match entry.decision {
                Some((_, Decision::Abort(reason))) => Vote::No(reason),
                _ if entry.transaction.coordinator != request.coordinator => {
                    Vote::No(AbortReason::InvalidRequest)
                }
                _ if entry.transaction.operations != request.operations => {
                    Vote::No(AbortReason::InvalidRequest)
                }
                Some((lsn, Decision::Commit)) => {
                    step.wait_for = step.wait_for.max(lsn);
                    Vote::Yes
                }
                None => {
                    step.wait_for = step.wait_for.max(entry.prepared_lsn);
                    Vote::Yes
                }
            });
        }
        if let Some(record) = self.tables.transfer(request.id)? {
            // Decided long ago. A committed id is only "yes" to the very same operations: a
            // reused id must never count as prepared without anything being prepared.
            return Ok(match record.outcome {
                Outcome::Aborted(reason) => Vote::No(reason),
                Outcome::Committed
                    if record
                        == transfer_record(request.id, &request.operations, Outcome::Committed) =>
                {
                    Vote::Yes
                }
                Outcome::Committed => Vote::No(AbortReason::InvalidRequest),
            });
        }
        // An id in use by a one-phase request, or recorded as a deposit or withdrawal here, is
        // another request's: refused like any id reused with other content.
        if lock(&self.local_in_flight).contains(&request.id)
            || !well_formed(&request.operations)
            || self.tables.movement(request.id)?.is_some()
        {
            return Ok(Vote::No(AbortReason::InvalidRequest));
        }
        if self.prepares_closed.load(Ordering::Acquire) > 0 {
            return Ok(Vote::No(AbortReason::LockConflict));
        }
        let lock_owner = self.new_lock_owner();
        if self
            .locks
            .acquire(
                lock_owner,
                &exclusive(&request.operations),
                LockPolicy::NoWait,
            )
            .is_err()
        {
            return Ok(Vote::No(AbortReason::LockConflict));
        }
        let refusal = match self.validate_operations(&request.operations) {
            Ok(refusal) => refusal,
            Err(error) => {
                self.locks.release_all(lock_owner);
                return Err(error);
            }
        };
        if let Some(reason) = refusal {
            self.locks.release_all(lock_owner);
            return Ok(Vote::No(reason));
        }
        let transaction = PreparedTransaction {
            id: request.id,
            coordinator: request.coordinator,
            operations: request.operations.clone(),
        };
        step.records.push(Record::Prepared {
            id: request.id,
            coordinator: request.coordinator,
            operations: request.operations.clone(),
        });
        participant.insert(
            request.id,
            PreparedEntry {
                lock_owner,
                transaction,
                prepared_lsn: 0,
                prepared_durable: false,
                decision: None,
            },
        );
        step.newly_prepared.push(request.id);
        Ok(Vote::Yes)
    }

    /// Undoes the in-memory part of prepares whose records were not logged.
    fn forget_prepared(
        &self,
        participant: &mut HashMap<TransferId, PreparedEntry>,
        ids: &[TransferId],
    ) {
        for id in ids {
            if let Some(entry) = participant.remove(id) {
                self.locks.release_all(entry.lock_owner);
            }
        }
    }

    /// 2PC phase two, commit: applies each prepared transaction, logs it, releases its locks. A
    /// transaction already committed answers `Ok`; one never prepared here is an error, logged
    /// loudly (it means a coordinator or message bug). The outer `Err` is a storage failure.
    pub fn commit(&self, ids: &[TransferId]) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        self.decide(
            ids.iter().map(|id| (*id, Decision::Commit)).collect(),
            None,
            Vec::new(),
        )
    }

    /// 2PC phase two, abort: discards each prepared transaction and releases its locks. Aborting
    /// an unknown transaction is `Ok`, and is recorded so that a late PREPARE for it is refused.
    pub fn abort(
        &self,
        ids: &[(TransferId, AbortReason)],
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        self.decide(
            ids.iter()
                .map(|(id, reason)| (*id, Decision::Abort(*reason)))
                .collect(),
            None,
            Vec::new(),
        )
    }

    /// 2PC phase two for decisions of `coordinator`: like `commit` and `abort`, except that a
    /// decision about a transaction this shard prepared for another coordinator (a different
    /// transaction reusing the id) changes nothing: an abort is acknowledged, a commit refused.
    pub fn decide_from(
        &self,
        coordinator: NodeId,
        decisions: &[(TransferId, Outcome)],
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        self.decide(
            decisions
                .iter()
                .map(|(id, outcome)| (*id, decision_of(*outcome)))
                .collect(),
            Some(coordinator),
            Vec::new(),
        )
    }

    /// Coordinator and participant in one step: logs `decisions` and applies this shard's part
    /// of them (`local`, as `commit` and `abort` would) in the same group commit, so this
    /// shard's locks are free by the time the client hears the outcome. The per-transaction
    /// results are those of `local`.
    pub fn log_decisions_and_decide(
        &self,
        coordinator: NodeId,
        decisions: Vec<CoordinatorDecision>,
        local: &[(TransferId, Outcome)],
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        self.decide(
            local
                .iter()
                .map(|(id, outcome)| (*id, decision_of(*outcome)))
                .collect(),
            Some(coordinator),
            decisions.into_iter().map(Record::Decided).collect(),
        )
    }

    /// Logs and applies participant decisions; `extra` records (coordinator decisions) go into
    /// the same log batch, first.
    fn decide(
        &self,
        decisions: Vec<(TransferId, Decision)>,
        coordinator: Option<NodeId>,
        extra: Vec<Record>,
    ) -> Result<Vec<Result<(), EngineError>>, EngineError> {
        self.check_writable()?;
        let mut results = Vec::with_capacity(decisions.len());
        let mut records = extra;
        let mut decided_here: Vec<TransferId> = Vec::new();
        let mut wait_for: Lsn = 0;
        let mut participant = lock(&self.participant);
        for (id, decision) in decisions {
            if let Some(entry) = participant.get_mut(&id) {
                if coordinator.is_some_and(|from| from != entry.transaction.coordinator) {
                    results.push(match decision {
                        Decision::Abort(_) => Ok(()),
                        Decision::Commit => {
                            tracing::error!(transaction = %id, "COMMIT from a coordinator that did not prepare this transaction here");
                            Err(EngineError::UnknownTransaction(id))
                        }
                    });
                    continue;
                }
                match entry.decision {
                    // Decided already (earlier, or earlier in this very batch): the same answer
                    // the tables would give, once the decision is applied.
                    Some((lsn, existing)) => {
                        wait_for = wait_for.max(lsn);
                        results.push(answer_repeated_decision(id, existing, decision));
                    }
                    None => {
                        records.push(match decision {
                            Decision::Commit => Record::Committed { id },
                            Decision::Abort(reason) => Record::Aborted { id, reason },
                        });
                        entry.decision = Some((0, decision));
                        decided_here.push(id);
                        results.push(Ok(()));
                    }
                }
                continue;
            }
            let recorded = match self.tables.transfer(id) {
                Ok(recorded) => recorded,
                Err(error) => {
                    undo_decisions(&mut participant, &decided_here);
                    return Err(error.into());
                }
            };
            match recorded {
                Some(record) => {
                    let existing = match record.outcome {
                        Outcome::Committed => Decision::Commit,
                        Outcome::Aborted(reason) => Decision::Abort(reason),
                    };
                    results.push(answer_repeated_decision(id, existing, decision));
                }
                None => match decision {
                    Decision::Commit => {
                        tracing::error!(transaction = %id, "COMMIT for a transaction never prepared here");
                        results.push(Err(EngineError::UnknownTransaction(id)));
                    }
                    Decision::Abort(reason) => {
                        // Recorded, and held as a placeholder until applied, so that a PREPARE
                        // for it arriving late is refused.
                        records.push(Record::Aborted { id, reason });
                        let placeholder = PreparedTransaction {
                            id,
                            coordinator: coordinator.unwrap_or(0),
                            operations: Vec::new(),
                        };
                        participant.insert(
                            id,
                            PreparedEntry {
                                lock_owner: self.new_lock_owner(),
                                transaction: placeholder,
                                prepared_lsn: 0,
                                prepared_durable: false,
                                decision: Some((0, decision)),
                            },
                        );
                        decided_here.push(id);
                        results.push(Ok(()));
                    }
                },
            }
        }
        if !records.is_empty() {
            let last = match self.log(records) {
                Ok(last) => last,
                Err(error) => {
                    undo_decisions(&mut participant, &decided_here);
                    return Err(error);
                }
            };
            for id in &decided_here {
                let entry = participant.get_mut(id).expect("present");
                let (_, decision) = entry.decision.expect("set above");
                entry.decision = Some((last, decision));
            }
            wait_for = wait_for.max(last);
        }
        drop(participant);
        if wait_for > 0 {
            self.wait_applied(wait_for)?;
        }
        let mut participant = lock(&self.participant);
        for id in decided_here {
            if let Some(entry) = participant.remove(&id) {
                self.locks.release_all(entry.lock_owner);
            }
        }
        Ok(results)
    }

    /// Prepared transactions whose decision is not known here.
    pub fn in_doubt(&self) -> Vec<PreparedTransaction> {
        let mut list: Vec<PreparedTransaction> = lock(&self.participant)
            .values()
            .filter(|entry| entry.decision.is_none() && entry.prepared_durable)
            .map(|entry| entry.transaction.clone())
            .collect();
        list.sort_by_key(|transaction| transaction.id);
        list
    }

    /// A consistent cut of this shard: taken while no batch is being applied.
    pub fn audit(&self) -> Result<ShardAudit, EngineError> {
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

    /// Coordinator: logs decisions (one group commit for all of them) and returns once they are
    /// durable and applied, so `decision` answers them from then on.
    pub fn log_decisions(&self, decisions: Vec<CoordinatorDecision>) -> Result<(), EngineError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let lsn = self.log(decisions.into_iter().map(Record::Decided).collect())?;
        self.wait_applied(lsn)
    }

    /// Coordinator: marks decisions every participant acknowledged, so they are not resent.
    pub fn end_decisions(&self, ids: &[TransferId]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let records = ids
            .chunks(ENDED_IDS_MAX)
            .map(|chunk| Record::Ended {
                ids: chunk.to_vec(),
            })
            .collect();
        let lsn = self.log(records)?;
        self.wait_applied(lsn)
    }

    /// Coordinator: the logged decision on `id`, ended or not.
    pub fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, EngineError> {
        Ok(self.tables.decision(id)?)
    }

    /// Coordinator: what the tables know of transfer `id` before it runs (the answer to the
    /// core's `Effect::LookUp`): a logged decision, or a one-phase record. A PREPARE of an
    /// earlier attempt whose decision was never logged counts as nothing: running the transfer
    /// again re-uses it.
    pub fn look_up(&self, id: TransferId) -> Result<Known, EngineError> {
        if let Some(decision) = self.decision(id)? {
            return Ok(Known::Decided(decision));
        }
        Ok(match self.transfer_status(id)? {
            TransferStatus::Decided(record) => Known::Recorded(record),
            TransferStatus::Prepared(_) | TransferStatus::Unknown => Known::Nothing,
        })
    }

    /// Coordinator: decisions some participant has not acknowledged yet (to resend).
    pub fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, EngineError> {
        Ok(self.tables.unended_decisions()?)
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
    ) -> Result<(ReadLocks, Vec<Amount>), EngineError> {
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
                Ok(held) => {
                    locks.0.push(held.owner);
                    std::mem::forget(held);
                }
                Err(error) => {
                    self.release_locks(locks);
                    return Err(error);
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

    /// Refuses prepares of new transactions until the matching `open_prepares` (calls nest).
    /// With prepares closed, the prepared transactions only drain: this is how a node takes its
    /// part of a cluster-wide consistent cut.
    pub fn close_prepares(&self) {
        self.prepares_closed.fetch_add(1, Ordering::AcqRel);
    }

    pub fn open_prepares(&self) {
        let _ = self
            .prepares_closed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                count.checked_sub(1)
            });
    }

    /// Transactions prepared (or being prepared) here whose decision is not applied yet.
    pub fn undecided_count(&self) -> usize {
        lock(&self.participant)
            .values()
            .filter(|entry| !entry.transaction.operations.is_empty())
            .count()
    }

    /// Makes the tables durable up to the applied LSN, then deletes the WAL segments below it.
    /// Returns how many segments were deleted.
    pub fn checkpoint(&self) -> Result<usize, EngineError> {
        let applied = *lock(&self.applied);
        if let Err(error) = self.tables.flush() {
            return Err(self.fail(error.to_string()));
        }
        Ok(self.wal.truncate_below(applied + 1)?)
    }
}

/// Applies consecutive records as one table batch, then clears the list; returns the LSN applied
/// up to (0 when there was nothing to apply).
fn apply_records<T: Tables>(
    tables: &T,
    records: &mut Vec<(Lsn, Record)>,
) -> Result<Lsn, EngineError> {
    if records.is_empty() {
        return Ok(0);
    }
    let batch = plan_batch(tables, records).map_err(|error| match error {
        ApplyError::Tables(error) => EngineError::Tables(error),
        ApplyError::Inconsistent { .. } => EngineError::Inconsistent(error.to_string()),
    })?;
    tables.write(&batch)?;
    records.clear();
    Ok(batch.applied_lsn)
}

/// Forgets decisions taken in memory whose records were never logged: placeholders go, prepared
/// transactions are undecided again (still in doubt, locks held).
fn undo_decisions(
    participant: &mut HashMap<TransferId, PreparedEntry>,
    decided_here: &[TransferId],
) {
    for id in decided_here {
        let entry = participant.get_mut(id).expect("present");
        if entry.transaction.operations.is_empty() {
            participant.remove(id);
        } else {
            entry.decision = None;
        }
    }
}

fn decision_of(outcome: Outcome) -> Decision {
    match outcome {
        Outcome::Committed => Decision::Commit,
        Outcome::Aborted(reason) => Decision::Abort(reason),
    }
}

/// The answer to a decision for a transaction already decided `existing`.
fn answer_repeated_decision(
    id: TransferId,
    existing: Decision,
    requested: Decision,
) -> Result<(), EngineError> {
    match (existing, requested) {
        (Decision::Commit, Decision::Commit) | (Decision::Abort(_), Decision::Abort(_)) => Ok(()),
        (Decision::Abort(_), Decision::Commit) => {
            tracing::error!(transaction = %id, "COMMIT for a transaction this participant aborted");
            Err(EngineError::AlreadyAborted(id))
        }
        (Decision::Commit, Decision::Abort(_)) => {
            tracing::error!(transaction = %id, "ABORT for a transaction this participant committed");
            Err(EngineError::Inconsistent(format!(
                "abort of committed transaction {id}"
            )))
        }
    }
}

/// What `prepare` gathers over a batch.
#[derive(Default)]
struct PrepareStep {
    votes: Vec<Vote>,
    records: Vec<Record>,
    newly_prepared: Vec<TransferId>,
    wait_for: Lsn,
}

fn exclusive(operations: &[Operation]) -> Vec<(AccountId, LockMode)> {
    operations
        .iter()
        .map(|operation| (operation.account, LockMode::Exclusive))
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
        && operations.len() <= TRANSACTION_OPERATIONS_MAX
        && accounts.len() == operations.len()
        && operations.iter().all(|operation| operation.amount > 0)
}
