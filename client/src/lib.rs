//! The Tally client library: the cluster file and shard map (`config`), and an async client that
//! routes each request to the node owning its account, follows redirects, and retries what can
//! be retried (`client`). The `tally` command line, the nodes and the load generator use it.

pub mod client;
pub mod config;

pub use client::{ClientError, ClientOptions, TallyClient};
pub use config::{ClusterConfig, ConfigError, NodeConfig};
