//! How the node calls its engine: the engine type, writes in two halves without blocking a
//! thread on the disk, blocking reads off the async threads, and the wire error for an engine
//! failure. Shared by the request handlers and the coordinator's driver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::model::{NodeId, TransferId};
use engine::tables::RocksTables;
use engine::wal::WalError;
use engine::{
    CreateAccountError, LocalTransferError, Logged, MovementError, ReadError, StorageCause,
    StorageError,
};
use net::{ErrorCode, ErrorResponse};

/// The engine of a shard this node leads: over the shard's tables and its replica group's log.
pub(crate) type NodeEngine = replica::GroupEngine<RocksTables>;

/// Runs blocking engine work (scans, reads that wait for locks, checkpoints) off the async
/// threads. Never on the transfer path: writes go through [`durably`].
pub(crate) async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The second half of an engine write: awaits the group commit behind a logged answer (a
/// future, no thread waits), settles, and returns the answer. It runs as a task of its own, so
/// that a request dropped halfway (a closed connection) still settles what it logged at once.
pub(crate) async fn durably<R: Send + 'static, E: From<StorageError>>(
    engine: &Arc<NodeEngine>,
    logged: Result<Logged<R>, E>,
) -> Result<R, E> {
    let logged = logged?;
    if logged.wait_for().is_none() {
        return Ok(engine.finish(logged)?);
    }
    let engine = engine.clone();
    match tokio::spawn(async move { engine.finish_durably(logged).await }).await {
        Ok(result) => Ok(result?),
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// [`durably`] for a caller that already runs as a task of its own which nothing drops (the
/// coordinator driver's effects): awaits the group commit in place, without a second task.
pub(crate) async fn durably_in_task<R, E: From<StorageError>>(
    engine: &NodeEngine,
    logged: Result<Logged<R>, E>,
) -> Result<R, E> {
    Ok(engine.finish_durably(logged?).await?)
}

/// The first half of a one-phase write, tried again while it meets a lock conflict, for at most
/// the engine's lock wait: the engine never waits for a lock on an async thread, so the wait is
/// a timer here. `attempt` is told whether this is the last try.
pub(crate) async fn with_lock_wait<R, E: WireError>(
    engine: &NodeEngine,
    mut attempt: impl FnMut(bool) -> Result<Logged<R>, E>,
) -> Result<Logged<R>, E> {
    let deadline = Instant::now() + engine.lock_wait();
    let mut pause = Duration::from_micros(200);
    let mut waited = false;
    loop {
        let last = Instant::now() >= deadline;
        match attempt(last) {
            Err(error) if !last && error.code() == ErrorCode::LockConflict => {
                if !waited {
                    waited = true;
                    LOCK_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// Local operations (deposits, withdrawals, same-shard transfers, account creations) that met a
/// lock held in a conflicting mode and waited for it (`with_lock_wait`), since the process began.
pub(crate) static LOCK_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A poisoned mutex means a thread panicked halfway through changing what it guards: a crash,
/// not something to carry on from.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a thread panicked while holding this lock")
}

/// An engine error as the wire carries it: one code per variant, the error's text as message.
pub(crate) trait WireError: std::fmt::Display + StorageCause {
    /// The code of an error that is not a storage failure.
    fn refusal_code(&self) -> ErrorCode;

    fn code(&self) -> ErrorCode {
        match self.storage() {
            Some(_) => ErrorCode::Internal,
            None => self.refusal_code(),
        }
    }
}

/// The wire error for an engine error (for `map_err`).
pub(crate) fn engine_error<E: WireError>(error: E) -> ErrorResponse {
    engine_error_of(&error)
}

/// [`engine_error`] of a borrowed or shared error.
pub(crate) fn engine_error_of<E: WireError + ?Sized>(error: &E) -> ErrorResponse {
    match error.storage() {
        Some(StorageError::Failed(failure)) => {
            // Sticky until restart: every write from now on is refused, reads are still answered.
            return ErrorResponse::new(
                ErrorCode::Internal,
                format!(
                    "node stopped accepting writes after a storage failure (reads still work; \
                     restart it once the disk is fixed): {failure}"
                ),
            );
        }
        // The replica stopped leading while the request ran: its log closed. Whatever became of
        // the request, resending it (with its id) to the new leader is safe.
        Some(StorageError::Wal(WalError::Closed)) => {
            return ErrorResponse::new(
                ErrorCode::NotLeader,
                "this replica stopped leading the shard while the request ran; resend it with \
                 the same id (it is applied at most once)",
            );
        }
        // The group's bound of uncommitted records: nothing was logged.
        Some(StorageError::Wal(error @ WalError::Full { .. })) => {
            return ErrorResponse::new(ErrorCode::Overloaded, error.to_string());
        }
        Some(storage) => {
            tracing::error!(error = %storage, kind = ?storage.io_kind(), "request failed")
        }
        None => {}
    }
    ErrorResponse::new(error.code(), error.to_string())
}

impl WireError for StorageError {
    fn refusal_code(&self) -> ErrorCode {
        ErrorCode::Internal
    }
}

impl WireError for CreateAccountError {
    fn refusal_code(&self) -> ErrorCode {
        match self {
            CreateAccountError::OwnerNameTooLong => ErrorCode::InvalidArgument,
            CreateAccountError::AccountExists(_) => ErrorCode::DuplicateWithDifferentContent,
            CreateAccountError::LockConflict { .. } => ErrorCode::LockConflict,
            CreateAccountError::Storage(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for MovementError {
    fn refusal_code(&self) -> ErrorCode {
        match self {
            MovementError::ZeroAmount => ErrorCode::InvalidArgument,
            MovementError::DuplicateWithDifferentContent(_) => {
                ErrorCode::DuplicateWithDifferentContent
            }
            // Another request with this id is running: retrying later returns its outcome.
            MovementError::InProgress(_) => ErrorCode::Overloaded,
            MovementError::LockConflict { .. } => ErrorCode::LockConflict,
            MovementError::FundsHeld { .. } => ErrorCode::FundsHeld,
            MovementError::Storage(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for LocalTransferError {
    fn refusal_code(&self) -> ErrorCode {
        match self {
            LocalTransferError::ZeroAmount | LocalTransferError::SameAccount(_) => {
                ErrorCode::InvalidArgument
            }
            LocalTransferError::DuplicateWithDifferentContent(_) => {
                ErrorCode::DuplicateWithDifferentContent
            }
            LocalTransferError::InProgress(_) => ErrorCode::Overloaded,
            LocalTransferError::LockConflict { .. } => ErrorCode::LockConflict,
            LocalTransferError::Storage(_) => ErrorCode::Internal,
        }
    }
}

impl WireError for ReadError {
    fn refusal_code(&self) -> ErrorCode {
        match self {
            ReadError::UnknownAccount(_) => ErrorCode::UnknownAccount,
            ReadError::InvalidPageSize => ErrorCode::InvalidArgument,
            // Transient: a read at a later timestamp succeeds.
            ReadError::TooOld { .. } => ErrorCode::Timeout,
            ReadError::Storage(_) => ErrorCode::Internal,
        }
    }
}

/// Participant: logs and applies decisions of `coordinator` at shard `shard` of this node;
/// returns the ids to acknowledge.
pub(crate) async fn apply_decisions(
    engine: &Arc<NodeEngine>,
    shard: u32,
    coordinator: NodeId,
    decisions: &[engine::coordinator::Verdict],
) -> Result<Vec<TransferId>, StorageError> {
    let logged = engine.decide_from_logged(coordinator, decisions);
    let lsn = logged.as_ref().ok().and_then(|logged| logged.wait_for());
    let results = durably(engine, logged).await?;
    let mut applied = Vec::with_capacity(decisions.len());
    for ((id, outcome, commit_ts), result) in decisions.iter().zip(results) {
        tracing::debug!(node = crate::node::node_id(), shard, coordinator, transfer = %id, ?outcome, commit_ts, lsn, applied = result.is_ok(), "2pc: decision applied (participant)");
        match result {
            Ok(()) => applied.push(*id),
            Err(error) => {
                tracing::error!(transaction = %id, coordinator, %error, "decision not applied")
            }
        }
    }
    Ok(applied)
}
