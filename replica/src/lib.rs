//! Replica groups: each shard's log replicated by Raft, under the engine.
//!
//! A shard is a Raft group (raft-rs's `RawNode`) with a replica on each of a few nodes. Its log is
//! the Raft log, kept in the node's WAL ([`store`]); a normal entry carries a batch of the
//! engine's records with their LSNs ([`payload`]). The leader runs the engine over a
//! [`ReplicatedLog`], so the engine locks, validates and logs exactly as on a single-copy node and
//! answers once its records are committed in the group; followers apply committed entries to
//! their tables. [`Group`] is one replica as a core without network I/O or clock, which the node
//! and the simulator drive.

pub mod group;
pub mod log;
pub mod payload;
mod slog_bridge;
pub mod store;
pub mod wire;

pub use group::{Group, GroupEngine, GroupError, GroupOptions, Output};
pub use log::ReplicatedLog;
pub use raft::eraftpb::Message as RaftMessage;
