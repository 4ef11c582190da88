//! In-crate tests: they reach the proptest generators that `wire_struct!` derives under
//! `cfg(test)`, which integration tests could not see.

mod decoder_fuzz;
mod protocol_doc;
mod raft;
mod round_trip;
mod server;
mod support;
