//! One shard's transactional core: every operation a node performs on its accounts, serialized by
//! the lock manager, made durable through the WAL, then applied to the tables in LSN order.
//!
//! The path of every write: take the accounts' locks, validate against committed state, log one
//! record (or one batch of records), wait for the group commit, apply everything durable in LSN
//! order as one table batch, release the locks, answer. Locks are held until the change is applied,
//! so validation always sees every earlier change to the same account, either applied or still
//! pending under its lock (credits and debits share an account: `crate::lock::LockMode`).
//!
//! Every write comes in two halves, so that no thread blocks on an fsync: `*_logged` does
//! everything up to the WAL append and returns a [`Logged`] answer, and [`Engine::finish`]
//! (blocking) or [`Engine::finish_durably`] (a future, over [`Wal::durable`]) releases it once its
//! records are durable and applied. What must happen once an LSN is applied (locks released,
//! prepares made answerable, decided transactions forgotten) is queued by LSN in the engine and
//! done by whichever caller settles first, so an answer dropped unfinished leaks nothing. The
//! participant's rules live in the I/O-free [`crate::participant`] core; the one-call forms
//! (`prepare`, `commit`, ...) are `finish(…_logged(…))`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::apply::{ApplyError, plan_batch, transfer_record};
use crate::clock::{Hlc, MAX_CLOCK_OFFSET, Timestamp};
use crate::coordinator::{Known, Verdict};
use crate::lock::{LOCK_STRIPE_COUNT_DEFAULT, LockError, LockManager, LockMode, LockPolicy};
use crate::log::Log;
use crate::model::{
    AbortReason, Account, AccountId, Amount, CoordinatorDecision, HISTORY_PAGE_MAX_ENTRIES,
    HistoryPage, MovementId, MovementKind, MovementOutcome, MovementRecord, NodeId,
    OWNER_NAME_MAX_BYTES, Operation, OperationKind, Outcome, PreparedTransaction, RefusalReason,
    TRANSACTION_OPERATIONS_MAX, Totals, Transfer, TransferId, TransferRecord,
};
pub use crate::participant::Vote;
use crate::participant::{Answer, Decide, Participant, Status, Undo};
use crate::record::{ENDED_IDS_MAX, Record};
use crate::tables::Tables;
use crate::versions::{Change, ChangeKind, Stamp, Versions};
use crate::wal::{FileStorage, Lsn, Wal, WalError};

mod error;
mod one_phase;
mod reads;
mod two_phase;

use two_phase::lock_request;

pub use error::{
    CreateAccountError, Disagreement, LocalTransferError, MovementError, ReadError, StorageCause,
    StorageError, StorageFailure,
};
pub use reads::ReadFence;

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
    /// The node's clock, shared by its engines (`crate::clock`).
    pub clock: Arc<Hlc>,
    /// How long the changes applied are kept for reads at a timestamp: a read at a timestamp
    /// older than one to two windows is refused (`ReadError::TooOld`), and asked again later.
    pub versions_window: Duration,
    /// At most this many changes per window: past it, the window closes early.
    pub versions_changes_max: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lock_stripe_count: LOCK_STRIPE_COUNT_DEFAULT,
            lock_wait: Duration::from_millis(5),
            clock: Arc::new(Hlc::system()),
            versions_window: Duration::from_secs(2),
            versions_changes_max: 1 << 20,
        }
    }
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

/// One transaction of a prepare batch: what the participant holds once it is prepared.
pub type PrepareRequest = PreparedTransaction;

/// What a shard knows of a transfer id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferStatus {
    Unknown,
    /// Prepared here, decision not yet known.
    Prepared(PreparedTransaction),
    Decided(TransferRecord),
}

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

/// An answer that may be released only once the records behind it are durable and applied:
/// give it to [`Engine::finish`] or [`Engine::finish_durably`].
#[derive(Debug)]
#[must_use = "an answer is released only through Engine::finish or Engine::finish_durably"]
pub struct Logged<R> {
    wait_for: Option<Lsn>,
    answer: R,
}

impl<R> Logged<R> {
    /// An answer that depends on nothing not yet durable.
    fn now(answer: R) -> Self {
        Self {
            wait_for: None,
            answer,
        }
    }

    fn after(lsn: Lsn, answer: R) -> Self {
        Self {
            wait_for: Some(lsn),
            answer,
        }
    }

    /// The LSN that must be durable and applied before the answer is released, if any.
    pub fn wait_for(&self) -> Option<Lsn> {
        self.wait_for
    }
}

/// A lock the engine could not take: held by another owner.
#[derive(Debug, Clone, Copy)]
struct Conflict {
    account: AccountId,
}

/// What a one-phase transfer that meets a lock conflict does (`Engine::local_transfer_logged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Answer `LockConflict` and log nothing: the caller tries again.
    Retry,
    /// Log the transfer as aborted by the conflict: its final outcome.
    Abort,
}

/// What a one-phase write gives back once its record is applied.
#[derive(Debug, Clone, Copy)]
enum Release {
    Locks(u128),
    InFlight(u128),
}

/// Something a one-phase write holds (its locks, its id's in-flight slot): given back when the
/// guard drops, unless kept until the write's record is applied (`Engine::release_when_applied`).
struct Held<'a, T: Tables, L: Log> {
    engine: &'a Engine<T, L>,
    release: Release,
}

impl<T: Tables, L: Log> Held<'_, T, L> {
    fn keep(self) -> Release {
        let release = self.release;
        std::mem::forget(self);
        release
    }

    /// Keeps a lock guard's locks, to be released by their owner's id.
    fn keep_lock_owner(self) -> u128 {
        match self.keep() {
            Release::Locks(owner) => owner,
            Release::InFlight(id) => unreachable!("in-flight slot {id} kept as locks"),
        }
    }
}

impl<T: Tables, L: Log> Drop for Held<'_, T, L> {
    fn drop(&mut self) {
        self.engine.release([self.release]);
    }
}

/// A poisoned mutex means a thread panicked halfway through changing what it guards: a crash,
/// not something to carry on from.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a thread panicked while holding an engine lock")
}

/// See the module documentation.
pub struct Engine<T: Tables, L: Log = Wal<FileStorage>> {
    log: L,
    tables: T,
    locks: LockManager,
    options: EngineOptions,
    next_lock_owner: AtomicU64,
    /// Logged records not yet applied, by LSN. Filled under this mutex in the same step that
    /// assigns their LSNs, so the applier never sees a gap that will later be filled.
    pending: Mutex<BTreeMap<Lsn, Record>>,
    /// The timestamps and changes of logged records not yet applied (those that change
    /// balances), by LSN; filled with `pending`, moved into `versions` as they are applied.
    stamps: Mutex<BTreeMap<Lsn, Stamp>>,
    /// Recent changes by timestamp, for reads at a timestamp; changed only with `applied` held,
    /// together with the tables.
    versions: Mutex<Versions>,
    /// LSN up to which the tables reflect the log; held while applying.
    applied: Mutex<Lsn>,
    failure: OnceLock<StorageFailure>,
    /// Ids of the one-phase requests running (local transfers, deposits, withdrawals), which
    /// share one namespace: a second request with a running id is refused `InProgress`, and a
    /// prepare of it votes no.
    local_in_flight: Mutex<HashSet<u128>>,
    participant: Mutex<Participant>,
    /// What one-phase writes give back once their record is applied, by that record's LSN.
    when_applied: Mutex<BTreeMap<Lsn, Vec<Release>>>,
}

impl<T: Tables, L: Log> Engine<T, L> {
    /// Opens the engine over an opened WAL and tables: replays the log from the tables' applied
    /// LSN + 1, then takes the locks of every prepared, undecided transaction again.
    pub fn open(
        log: L,
        tables: T,
        options: EngineOptions,
    ) -> Result<(Self, OpenReport), StorageError> {
        let applied_lsn_before = tables.applied_lsn()?;
        let durable = log.durable_lsn();
        if applied_lsn_before > durable {
            return Err(StorageError::Inconsistent(format!(
                "tables are applied up to LSN {applied_lsn_before} but the log ends at {durable}"
            )));
        }
        if applied_lsn_before + 1 < log.first_lsn() {
            return Err(StorageError::Inconsistent(format!(
                "tables are applied up to LSN {applied_lsn_before} but the log starts at {}",
                log.first_lsn()
            )));
        }
        let mut records_replayed = 0;
        let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS_MAX);
        for record in log.read_from(applied_lsn_before + 1)? {
            let record = record?;
            let decoded = Record::decode(record.kind, &record.payload).map_err(|source| {
                StorageError::Record {
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
        // Whatever was applied before, on this node or where the log came from, was stamped by a
        // clock at most `MAX_CLOCK_OFFSET` ahead of this one: reads start above all of it.
        let clock = options.clock.clone();
        clock.observe(clock.physical() + MAX_CLOCK_OFFSET.as_micros() as Timestamp);
        let versions = Versions::new(
            clock.now(),
            options.versions_window.as_micros() as u64,
            options.versions_changes_max,
        );

        let engine = Self {
            log,
            tables,
            locks: LockManager::new(options.lock_stripe_count),
            options,
            next_lock_owner: AtomicU64::new(0),
            pending: Mutex::new(BTreeMap::new()),
            stamps: Mutex::new(BTreeMap::new()),
            versions: Mutex::new(versions),
            applied: Mutex::new(applied),
            failure: OnceLock::new(),
            local_in_flight: Mutex::new(HashSet::new()),
            participant: Mutex::new(Participant::default()),
            when_applied: Mutex::new(BTreeMap::new()),
        };
        let in_doubt = engine.tables.all_prepared()?;
        {
            let mut participant = lock(&engine.participant);
            for transaction in &in_doubt {
                let lock_owner = engine.new_lock_owner();
                let request = lock_request(&transaction.operations);
                engine
                    .locks
                    .acquire(lock_owner, &request, LockPolicy::NoWait)
                    .map_err(|error| {
                        StorageError::Inconsistent(format!(
                            "in-doubt transaction {} cannot take its locks again: {error}",
                            transaction.id
                        ))
                    })?;
                participant.restore(transaction.clone(), lock_owner);
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

    /// How long a local operation waits for its locks (`EngineOptions::lock_wait`).
    pub fn lock_wait(&self) -> Duration {
        self.options.lock_wait
    }

    /// The log this engine writes to: its WAL, or its replica group's log.
    pub fn wal(&self) -> &L {
        &self.log
    }

    pub fn tables(&self) -> &T {
        &self.tables
    }

    /// Owners are numbered in order (sequentially consistent with the clock: see
    /// `Engine::read_fence`).
    fn new_lock_owner(&self) -> u128 {
        LOCK_OWNER_BASE + u128::from(self.next_lock_owner.fetch_add(1, Ordering::SeqCst))
    }

    /// A reading of the node's clock. Read after a prepare batch took its locks, it is what the
    /// votes carry (`crate::clock`).
    pub fn clock_now(&self) -> Timestamp {
        self.options.clock.now()
    }

    fn check_writable(&self) -> Result<(), StorageError> {
        if let Some(failure) = self.failure.get() {
            return Err(StorageError::Failed(failure.clone()));
        }
        if let Some(error) = self.log.failure() {
            return Err(StorageError::Failed(StorageFailure {
                kind: Some(error.kind()),
                message: format!("WAL: {error}"),
            }));
        }
        Ok(())
    }

    /// Makes the engine refuse writes until reopened. One-phase writes waiting for their records
    /// give back their locks and ids now: those records will never be applied by this engine, and
    /// reads (still answered) must not wait for them.
    fn fail(&self, failure: StorageFailure) -> StorageError {
        tracing::error!(%failure, kind = ?failure.kind, "engine storage failure; refusing writes until reopened");
        let _ = self.failure.set(failure.clone());
        let waiting = std::mem::take(&mut *lock(&self.when_applied));
        self.release(waiting.into_values().flatten());
        StorageError::Failed(failure)
    }

    fn release(&self, releases: impl IntoIterator<Item = Release>) {
        for release in releases {
            match release {
                Release::Locks(owner) => {
                    self.locks.release_all(owner);
                }
                Release::InFlight(id) => {
                    lock(&self.local_in_flight).remove(&id);
                }
            }
        }
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
    ) -> Result<Held<'_, T, L>, Conflict> {
        let owner = self.new_lock_owner();
        match self.locks.acquire(owner, request, policy) {
            Ok(()) => Ok(Held {
                engine: self,
                release: Release::Locks(owner),
            }),
            Err(LockError::Conflict { account, .. }) => Err(Conflict { account }),
            // Callers lock at most a transaction's accounts, or chunk (`lock_and_read`).
            Err(error @ LockError::TooManyAccounts { .. }) => panic!("{error}"),
        }
    }

    /// Appends records with consecutive LSNs and registers them for applying; returns the last.
    /// The pending map stays locked while the WAL takes the records, so LSN order and pending
    /// order agree; under WAL back-pressure (pending bound reached) appliers wait here too, which
    /// is the back-pressure working as meant.
    fn log(&self, records: Vec<Record>) -> Result<Lsn, StorageError> {
        self.log_with_stamps(records, Vec::new())
    }

    /// [`Engine::log`] of one record that changes balances at `stamp`'s timestamp.
    fn log_stamped(&self, records: Vec<Record>, stamp: Option<Stamp>) -> Result<Lsn, StorageError> {
        debug_assert_eq!(records.len(), 1);
        self.log_with_stamps(records, stamp.map(|stamp| (0, stamp)).into_iter().collect())
    }

    /// [`Engine::log`], with the stamps of the records that change balances (by their index in
    /// `records`).
    fn log_with_stamps(
        &self,
        records: Vec<Record>,
        stamps: Vec<(usize, Stamp)>,
    ) -> Result<Lsn, StorageError> {
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
        let last = match self.log.append_batch(&borrowed) {
            Ok(last) => last,
            Err(error @ WalError::Failed(_)) => {
                return Err(self.fail(StorageFailure::of_wal(&error)));
            }
            Err(error) => return Err(error.into()),
        };
        let first = last + 1 - records.len() as Lsn;
        if !stamps.is_empty() {
            let mut stamped = lock(&self.stamps);
            for (offset, stamp) in stamps {
                stamped.insert(first + offset as Lsn, stamp);
            }
        }
        for (offset, record) in records.into_iter().enumerate() {
            pending.insert(first + offset as Lsn, record);
        }
        Ok(last)
    }

    /// Applies every durable record not applied yet (in LSN order, as one table batch), then
    /// does what waited for them: releases one-phase writes' locks and in-flight ids, makes
    /// prepares answerable, forgets applied decisions. Never waits for the disk. Returns the LSN
    /// the tables reflect.
    pub fn settle(&self) -> Result<Lsn, StorageError> {
        let mut applied = lock(&self.applied);
        let durable = self.log.durable_lsn();
        while *applied < durable {
            self.check_writable()?;
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
                return Err(self.fail(StorageFailure::inconsistent(format!(
                    "LSN {} is durable but was never registered for applying",
                    *applied + 1
                ))));
            }
            let before = *applied;
            match apply_records(&self.tables, &mut records) {
                Ok(applied_lsn) => *applied = applied_lsn,
                Err(error) => return Err(self.fail(StorageFailure::of(&error))),
            }
            self.record_versions(*applied);
            assert!(
                *applied > before,
                "the applied LSN went from {before} to {}",
                *applied
            );
        }
        let released = {
            let mut when_applied = lock(&self.when_applied);
            let mut released = Vec::new();
            while let Some(entry) = when_applied.first_entry() {
                if *entry.key() > *applied {
                    break;
                }
                released.extend(entry.remove());
            }
            released
        };
        self.release(released);
        for owner in lock(&self.participant).applied(*applied) {
            self.locks.release_all(owner);
        }
        Ok(*applied)
    }

    /// Moves the stamps of records applied up to `applied` into the versions (the applied lock
    /// is held, so reads see the tables and the versions change together).
    fn record_versions(&self, applied: Lsn) {
        let mut stamps = lock(&self.stamps);
        let Some((&first, _)) = stamps.first_key_value() else {
            return;
        };
        if first > applied {
            return;
        }
        let mut versions = lock(&self.versions);
        while let Some(entry) = stamps.first_entry() {
            if *entry.key() > applied {
                break;
            }
            versions.record(entry.remove());
        }
    }

    /// Settles up to `lsn`, which is durable.
    fn reach(&self, lsn: Lsn) -> Result<(), StorageError> {
        let applied = self.settle()?;
        if applied < lsn {
            return Err(self.fail(StorageFailure::inconsistent(format!(
                "LSN {lsn} is durable but the tables reach only {applied}"
            ))));
        }
        Ok(())
    }

    /// Releases a logged answer: blocks until its records are durable, settles, returns it.
    pub fn finish<R>(&self, logged: Logged<R>) -> Result<R, StorageError> {
        if let Some(lsn) = logged.wait_for {
            self.durable_result(self.log.wait_durable(lsn))?;
            self.reach(lsn)?;
        }
        Ok(logged.answer)
    }

    /// [`Engine::finish`] without blocking a thread: awaits the WAL's group commit.
    pub async fn finish_durably<R>(&self, logged: Logged<R>) -> Result<R, StorageError> {
        if let Some(lsn) = logged.wait_for {
            self.durable_result(self.log.durable(lsn).await)?;
            self.reach(lsn)?;
        }
        Ok(logged.answer)
    }

    fn durable_result(&self, result: Result<(), WalError>) -> Result<(), StorageError> {
        match result {
            Ok(()) => Ok(()),
            // A clean close is not a storage failure.
            Err(WalError::Closed) => Err(StorageError::Wal(WalError::Closed)),
            Err(error) => Err(self.fail(StorageFailure::of_wal(&error))),
        }
    }

    /// Queues what a one-phase write gives back once the record at `lsn` is applied.
    fn release_when_applied(&self, lsn: Lsn, releases: impl IntoIterator<Item = Release>) {
        if self.check_writable().is_err() {
            // Failed meanwhile: the record will never be applied here (see `fail`).
            self.release(releases);
            return;
        }
        lock(&self.when_applied)
            .entry(lsn)
            .or_default()
            .extend(releases);
    }

    /// Makes the tables durable up to the applied LSN, then deletes the WAL segments below it.
    /// Returns how many segments were deleted.
    pub fn checkpoint(&self) -> Result<usize, StorageError> {
        let applied = *lock(&self.applied);
        if let Err(error) = self.tables.flush() {
            return Err(self.fail(StorageFailure::of(&StorageError::Tables(error))));
        }
        Ok(self.log.truncate_below(applied + 1)?)
    }
}

/// Applies consecutive records as one table batch, then clears the list; returns the LSN applied
/// up to (0 when there was nothing to apply). The first must follow the tables' applied LSN.
/// Public for a replica that applies its group's committed records while no engine is open on it.
pub fn apply_records<T: Tables>(
    tables: &T,
    records: &mut Vec<(Lsn, Record)>,
) -> Result<Lsn, StorageError> {
    if records.is_empty() {
        return Ok(0);
    }
    let batch = plan_batch(tables, records).map_err(|error| match error {
        ApplyError::Tables(error) => StorageError::Tables(error),
        ApplyError::Inconsistent { .. } => StorageError::Inconsistent(error.to_string()),
    })?;
    tables.write(&batch)?;
    records.clear();
    Ok(batch.applied_lsn)
}
