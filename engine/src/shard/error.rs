//! The engine's errors, one type per kind of operation, so that a caller matches exactly what its
//! operation can answer. Each holds storage failures as a [`StorageError`], which keeps the kind
//! of the I/O error behind it: a full disk is matchable as `io::ErrorKind::StorageFull`, not
//! only printable. None of them changes any state: an error is never a logged outcome.

use std::io;

use crate::model::{
    AccountId, HISTORY_PAGE_MAX_ENTRIES, MovementId, OWNER_NAME_MAX_BYTES, Timestamp, TransferId,
};
use crate::record::RecordDecodeError;
use crate::tables::TablesError;
use crate::wal::{Lsn, WalError};

/// A failure below the engine's rules: the WAL, the tables, or the log and the tables
/// disagreeing. The engine then refuses writes until it is reopened (`Failed` from then on) and
/// keeps answering reads. What the failed operation did is unknown: only a read can tell.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
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
    Failed(StorageFailure),
}

impl StorageError {
    /// The kind of the I/O error behind this error, if there is one: a full disk is
    /// `io::ErrorKind::StorageFull`, whether it is hit now or stopped the engine earlier.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            StorageError::Failed(failure) => failure.kind,
            StorageError::Wal(error) => error.io_kind(),
            StorageError::Tables(error) => error.kind,
            StorageError::Record { .. } | StorageError::Inconsistent(_) => None,
        }
    }
}

/// Why an engine stopped accepting writes: what failed, and the kind of the I/O error behind it
/// when there is one, so that a full disk can be told from a failing one by matching.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StorageFailure {
    pub kind: Option<io::ErrorKind>,
    pub message: String,
}

impl StorageFailure {
    pub(super) fn of(error: &StorageError) -> Self {
        Self {
            kind: error.io_kind(),
            message: error.to_string(),
        }
    }

    pub(super) fn of_wal(error: &WalError) -> Self {
        Self {
            kind: error.io_kind(),
            message: error.to_string(),
        }
    }

    /// A failure that is not an I/O error: the log and the tables disagree.
    pub(super) fn inconsistent(message: String) -> Self {
        Self {
            kind: None,
            message,
        }
    }
}

/// An error that may be a storage failure: what every operation's error has in common.
pub trait StorageCause {
    /// The storage failure behind this error, if it is one.
    fn storage(&self) -> Option<&StorageError>;

    /// The kind of the I/O error behind this error, if there is one.
    fn io_kind(&self) -> Option<io::ErrorKind> {
        self.storage().and_then(StorageError::io_kind)
    }
}

impl StorageCause for StorageError {
    fn storage(&self) -> Option<&StorageError> {
        Some(self)
    }
}

/// Why an account was not created.
#[derive(Debug, thiserror::Error)]
pub enum CreateAccountError {
    #[error("owner name is longer than {OWNER_NAME_MAX_BYTES} bytes")]
    OwnerNameTooLong,
    #[error("account {0} exists with different attributes")]
    AccountExists(AccountId),
    #[error("lock conflict on account {account}")]
    LockConflict { account: AccountId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a deposit or withdrawal got no outcome (its outcomes, applied or refused, are answers).
#[derive(Debug, thiserror::Error)]
pub enum MovementError {
    #[error("amount must be positive")]
    ZeroAmount,
    /// The id names another deposit, withdrawal or transfer on this shard.
    #[error("id {0} was already used here with different content")]
    DuplicateWithDifferentContent(MovementId),
    /// Another request with this id is running: retrying later returns its outcome.
    #[error("a request with id {0} is already in progress")]
    InProgress(MovementId),
    #[error("lock conflict on account {account}")]
    LockConflict { account: AccountId },
    /// A withdrawal the balance covers, but not with the debits pending on the account: nothing
    /// is recorded, and a retry with the same id may succeed once they are decided.
    #[error("the funds of account {account} are held by pending debits")]
    FundsHeld { account: AccountId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a transfer within the shard got no outcome (its outcomes, committed or aborted, are
/// answers).
#[derive(Debug, thiserror::Error)]
pub enum LocalTransferError {
    #[error("amount must be positive")]
    ZeroAmount,
    #[error("a transfer cannot debit and credit the same account ({0})")]
    SameAccount(AccountId),
    /// The id names another transfer, deposit or withdrawal on this shard.
    #[error("id {0} was already used here with different content")]
    DuplicateWithDifferentContent(TransferId),
    /// Another request with this id is running: retrying later returns its outcome.
    #[error("a request with id {0} is already in progress")]
    InProgress(TransferId),
    /// Only with `OnConflict::Retry`: nothing was logged, try again.
    #[error("lock conflict on account {account}")]
    LockConflict { account: AccountId },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Why a read got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("account {0} does not exist")]
    UnknownAccount(AccountId),
    #[error("history page size must be between 1 and {HISTORY_PAGE_MAX_ENTRIES}")]
    InvalidPageSize,
    /// A read at a timestamp older than the changes this shard still keeps: read again at a
    /// later one (at least `floor`).
    #[error("read at timestamp {at} is older than this shard keeps (it keeps from {floor})")]
    TooOld { at: Timestamp, floor: Timestamp },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How a participant's decision disagrees with what this participant knows: the decision is
/// refused, nothing changes, and the error is logged loudly (it means a coordinator or message
/// bug). One per decision, next to the batch's storage result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Disagreement {
    /// COMMIT of a transaction not prepared here (never, or for another coordinator).
    #[error("COMMIT of a transaction not prepared here")]
    NotPrepared,
    /// COMMIT of a transaction this participant aborted.
    #[error("COMMIT of a transaction aborted here")]
    AlreadyAborted,
    /// ABORT of a transaction this participant committed: a coordinator changed its decision.
    #[error("ABORT of a transaction committed here")]
    AlreadyCommitted,
}

/// `StorageCause`, and conversions from the storage layers' errors, for an operation's error.
macro_rules! storage_cause {
    ($($error:ident),*) => {$(
        impl StorageCause for $error {
            fn storage(&self) -> Option<&StorageError> {
                match self {
                    $error::Storage(error) => Some(error),
                    _ => None,
                }
            }
        }

        impl From<TablesError> for $error {
            fn from(error: TablesError) -> Self {
                $error::Storage(error.into())
            }
        }
    )*};
}

storage_cause!(
    CreateAccountError,
    MovementError,
    LocalTransferError,
    ReadError
);
