//! A Tally node: participant for its shard, coordinator for the transfers it receives; and the
//! client library and command line that talk to a cluster of them.

pub mod cli;
pub mod cluster;
mod convert;
mod coordinator;
pub mod failpoint;
mod node;
mod peers;
pub mod server;
