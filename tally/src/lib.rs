//! The `tally` command line: runs a node (`start`), a local cluster (`cluster up`) or the load
//! generator (`loadgen`), and is a client of a running cluster (every other command).
//!
//! It is a library, with `main` its one public item, so that the tests crate's `tally-failpoints`
//! binary runs this same command line with the node's crash points compiled in (this crate's
//! `failpoints` feature): Cargo tells an integration test where a binary is
//! (`CARGO_BIN_EXE_<name>`) only for binaries of the test's own package.

mod cli;

pub use cli::main;
