//! A Tally node: a replica of each shard the cluster file gives it; for the shards it leads, the
//! participant and the coordinator of two-phase commit.
//! `server::start` runs one until SIGINT or SIGTERM; the `tally` crate is its command line.

mod console;
mod convert;
mod coordinator;
mod engine_calls;
pub mod failpoint;
mod http;
mod metrics;
mod node;
mod peers;
mod replication;
mod router;
pub mod server;
mod shard;
mod snapshot;
