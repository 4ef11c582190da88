//! How the node calls its engine: the engine type, blocking calls off the async threads, and
//! the wire error for an engine failure. Shared by the request handlers and the coordinator's
//! driver.

use std::sync::Mutex;

use engine::model::{NodeId, Outcome, TransferId};
use engine::tables::RocksTables;
use engine::wal::FileStorage;
use engine::{Engine, EngineError};
use net::{ErrorCode, ErrorResponse};

pub(crate) type NodeEngine = Engine<RocksTables, FileStorage>;

/// Runs blocking engine work off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(work: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
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

pub(crate) fn apply_decisions(
    engine: &NodeEngine,
    coordinator: NodeId,
    decisions: &[(TransferId, Outcome)],
) -> Result<Vec<TransferId>, EngineError> {
    let results = engine.decide_from(coordinator, decisions)?;
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
