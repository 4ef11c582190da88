//! Tally's storage core for one shard: the write-ahead log (the source of truth), the account
//! tables derived from it, the lock manager, and the engine that serializes every operation with
//! two-phase locking and takes part in two-phase commit. The engine never touches a socket.

mod apply;
pub mod clock;
pub mod coordinator;
pub mod lock;
pub mod log;
pub use ::model;
mod participant;
pub mod record;
mod shard;
pub mod stats;
pub mod tables;
pub mod testing;
mod versions;
pub mod wal;

pub use apply::{ApplyError, plan_batch};
pub use log::Log;
pub use shard::{
    CreateAccountError, Disagreement, Engine, EngineOptions, LocalTransferError, Logged,
    MovementError, OnConflict, OpenReport, PrepareRequest, ReadError, ReadFence, ShardAudit,
    StorageCause, StorageError, StorageFailure, TransferStatus, Vote, apply_records,
};
