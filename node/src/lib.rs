//! A Tally node: participant for its shard, coordinator for the transfers it receives; and the
//! client library and command line that talk to a cluster of them.

pub mod cli;
/// `tally cluster up` lives with the load generator's local clusters.
pub use loadgen::local as cluster;
mod convert;
mod coordinator;
mod engine_calls;
pub mod failpoint;
mod node;
mod peers;
pub mod server;
