//! A Tally node: participant for its shard, coordinator for the transfers it receives.
//! `server::start` runs one until SIGINT or SIGTERM; the `tally` crate is its command line.

mod convert;
mod coordinator;
mod engine_calls;
pub mod failpoint;
mod node;
mod peers;
pub mod server;
