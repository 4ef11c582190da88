//! The Tally client library: the cluster file and shard map (`config`), an async client that
//! routes each request to the node owning its account, follows redirects, and retries what can
//! be retried (`client`), and the one verdict on a cluster's audit (`audit`). The `tally` command
//! line, the nodes, the load generator and the tests use it.

pub mod audit;
pub mod client;
pub mod config;

pub use audit::{AuditTotals, AuditVerdict, AuditViolation};
pub use client::{ClientError, ClientOptions, TallyClient};
pub use config::{ClusterConfig, ConfigError, NodeConfig};
