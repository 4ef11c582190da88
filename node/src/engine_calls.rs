//! How the node calls its engine: the engine type, writes in two halves without blocking a
//! thread on the disk, blocking reads off the async threads, and the wire error for an engine
//! failure. Shared by the request handlers and the coordinator's driver.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::model::{NodeId, Outcome, TransferId};
use engine::tables::RocksTables;
use engine::wal::FileStorage;
use engine::{Engine, EngineError, Logged};
use net::{ErrorCode, ErrorResponse};

pub(crate) type NodeEngine = Engine<RocksTables, FileStorage>;

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
pub(crate) async fn durably<R: Send + 'static>(
    engine: &Arc<NodeEngine>,
    logged: Result<Logged<R>, EngineError>,
) -> Result<R, EngineError> {
    let logged = logged?;
    if logged.wait_for().is_none() {
        return engine.finish(logged);
    }
    let engine = engine.clone();
    match tokio::spawn(async move { engine.finish_durably(logged).await }).await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The first half of a one-phase write, tried again while it meets a lock conflict, for at most
/// the engine's lock wait: the engine never waits for a lock on an async thread, so the wait is
/// a timer here. `attempt` is told whether this is the last try.
pub(crate) async fn with_lock_wait<R>(
    engine: &NodeEngine,
    mut attempt: impl FnMut(bool) -> Result<Logged<R>, EngineError>,
) -> Result<Logged<R>, EngineError> {
    let deadline = Instant::now() + engine.lock_wait();
    let mut pause = Duration::from_micros(200);
    loop {
        let last = Instant::now() >= deadline;
        match attempt(last) {
            Err(EngineError::LockConflict { .. }) if !last => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

/// A poisoned mutex means a thread panicked halfway through changing what it guards: a crash,
/// not something to carry on from.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a thread panicked while holding this lock")
}

/// The wire error for an engine failure.
pub(crate) fn engine_error(error: EngineError) -> ErrorResponse {
    engine_error_of(&error)
}

/// [`engine_error`] of a shared error.
pub(crate) fn engine_error_of(error: &EngineError) -> ErrorResponse {
    if let EngineError::Failed(failure) = error {
        // Sticky until restart: every write from now on is refused, reads are still answered.
        return ErrorResponse::new(
            ErrorCode::Internal,
            format!(
                "node stopped accepting writes after a storage failure (reads still work; restart \
                 it once the disk is fixed): {failure}"
            ),
        );
    }
    let code = match error {
        EngineError::UnknownAccount(_) => ErrorCode::UnknownAccount,
        EngineError::AccountExists(_) | EngineError::DuplicateWithDifferentContent(_) => {
            ErrorCode::DuplicateWithDifferentContent
        }
        EngineError::ZeroAmount
        | EngineError::SameAccount(_)
        | EngineError::OwnerNameTooLong
        | EngineError::InvalidPageSize => ErrorCode::InvalidArgument,
        EngineError::InsufficientFunds { .. } => ErrorCode::InsufficientFunds,
        EngineError::Overflow(_) => ErrorCode::Overflow,
        EngineError::LockConflict { .. } => ErrorCode::LockConflict,
        // Another request with this id is running: retrying later returns its outcome.
        EngineError::InProgress(_) => ErrorCode::Overloaded,
        EngineError::UnknownTransaction(_)
        | EngineError::AlreadyAborted(_)
        | EngineError::Wal(_)
        | EngineError::Tables(_)
        | EngineError::Record { .. }
        | EngineError::Inconsistent(_)
        | EngineError::Failed(_) => {
            tracing::error!(%error, "request failed");
            ErrorCode::Internal
        }
    };
    ErrorResponse::new(code, error.to_string())
}

/// Participant: logs and applies decisions of `coordinator`; returns the ids to acknowledge.
pub(crate) async fn apply_decisions(
    engine: &Arc<NodeEngine>,
    coordinator: NodeId,
    decisions: &[(TransferId, Outcome)],
) -> Result<Vec<TransferId>, EngineError> {
    let results = durably(engine, engine.decide_from_logged(coordinator, decisions)).await?;
    let mut applied = Vec::with_capacity(decisions.len());
    for ((id, _), result) in decisions.iter().zip(results) {
        match result {
            Ok(()) => applied.push(*id),
            Err(error) => {
                tracing::error!(transaction = %id, coordinator, %error, "decision not applied")
            }
        }
    }
    Ok(applied)
}
