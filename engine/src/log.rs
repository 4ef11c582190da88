//! The log an [`crate::Engine`] writes its records to: what the engine needs of it, as a trait.
//!
//! A single-copy node's engine writes to its own [`Wal`]: a record is "durable" once the group
//! commit covering it is on this node's disk. A replicated shard's engine (on the leader of the
//! shard's Raft group) writes to a log whose records travel inside Raft entries: a record is
//! "durable" once the entry carrying it is committed in its group, on a majority of the replicas,
//! this one included. The engine's rules are the same over both: nothing is answered before the
//! records behind it are durable, records are applied in LSN order, and a failed log is sticky.

use std::future::Future;
use std::io;
use std::sync::Arc;

use crate::wal::{Lsn, Record, Storage, Wal, WalError, WalReader};

/// See the module documentation. LSNs are dense: each appended record gets the next one.
pub trait Log: Send + Sync + 'static {
    /// Resolves once every record up to an LSN is durable, or with the reason it never will be.
    type Durable: Future<Output = Result<(), WalError>> + Send + 'static;
    /// The durable records from an LSN on.
    type Reader: Iterator<Item = Result<Record, WalError>>;

    /// Queues records with consecutive LSNs in one step, returning the last LSN. May wait while
    /// the log's bound of undurable bytes is reached (its back-pressure), never for the disk.
    fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError>;

    /// Every record up to this LSN is durable.
    fn durable_lsn(&self) -> Lsn;

    /// Blocks until every record up to `lsn` is durable.
    fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError>;

    /// [`Log::wait_durable`] as a future.
    fn durable(&self, lsn: Lsn) -> Self::Durable;

    /// The sticky failure, if a write or sync of this log failed.
    fn failure(&self) -> Option<Arc<io::Error>>;

    /// The oldest LSN [`Log::read_from`] can still read.
    fn first_lsn(&self) -> Lsn;

    /// Reads the durable records from `from` on, in LSN order.
    fn read_from(&self, from: Lsn) -> Result<Self::Reader, WalError>;

    /// Forgets records below `lsn`, which the caller's tables reflect durably. Returns how many
    /// units (segments, entries) it let go.
    fn truncate_below(&self, lsn: Lsn) -> Result<usize, WalError>;
}

impl<S: Storage> Log for Wal<S> {
    type Durable = crate::wal::Durable<S>;
    type Reader = WalReader<S>;

    fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError> {
        Wal::append_batch(self, records)
    }

    fn durable_lsn(&self) -> Lsn {
        Wal::durable_lsn(self)
    }

    fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        Wal::wait_durable(self, lsn)
    }

    fn durable(&self, lsn: Lsn) -> Self::Durable {
        Wal::durable(self, lsn)
    }

    fn failure(&self) -> Option<Arc<io::Error>> {
        Wal::failure(self)
    }

    fn first_lsn(&self) -> Lsn {
        Wal::first_lsn(self)
    }

    fn read_from(&self, from: Lsn) -> Result<Self::Reader, WalError> {
        Wal::read_from(self, from)
    }

    fn truncate_below(&self, lsn: Lsn) -> Result<usize, WalError> {
        Wal::truncate_below(self, lsn)
    }
}
