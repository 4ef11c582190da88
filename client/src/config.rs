//! The cluster file: which nodes exist, where they listen, and which shards each one owns; and the
//! shard map every client and node uses to find the owner of an account.
//!
//! # The cluster file
//!
//! TOML, one `[[node]]` table per node:
//!
//! ```toml
//! # How many shards the account space is cut into. Fixed for the life of the cluster: changing
//! # it moves accounts between shards.
//! shard_count = 3
//!
//! [[node]]
//! id = 1                       # non-zero, unique
//! address = "127.0.0.1:7101"   # host:port the node listens on, unique
//! shards = [0]                 # the shards this node owns
//!
//! [[node]]
//! id = 2
//! address = "127.0.0.1:7102"
//! shards = [1]
//!
//! [[node]]
//! id = 3
//! address = "127.0.0.1:7103"
//! shards = [2]
//! ```
//!
//! Rules, checked by [`ClusterConfig::validate`]: `shard_count` is 1 to [`SHARD_COUNT_MAX`];
//! there are 1 to [`NODES_MAX`] nodes; node ids are non-zero and unique; addresses are `host:port`
//! and unique; every shard `0..shard_count` is owned by exactly one node. Unknown keys are
//! refused, so a misspelt key is an error rather than a silent default.
//!
//! # The shard map
//!
//! An account lives in shard [`shard_of`] `= splitmix64(account) % shard_count`, and the shard is
//! owned by the node that lists it. Every client and every node computes this independently, so
//! the function must never change: a different hash would send requests for existing accounts to
//! nodes that do not hold them. `docs/protocol.md` (section 12) defines it for clients in other
//! languages, with test vectors that a test here reads from the document and checks.

use std::io::Read;
use std::path::{Path, PathBuf};

use net::{AccountId, CLUSTER_NODES_MAX, NodeId};
use serde::{Deserialize, Serialize};

/// Most shards a cluster may have. Bounds the owner table (4 bytes per shard).
pub const SHARD_COUNT_MAX: u32 = 65_536;
/// Most nodes a cluster may have: as many as one `ClusterStatus` or `AuditReport` can describe.
pub const NODES_MAX: u32 = CLUSTER_NODES_MAX;
/// Largest cluster file [`ClusterConfig::load`] reads; a real one is a few hundred bytes per node.
pub const CLUSTER_FILE_SIZE_MAX_BYTES: u64 = 1024 * 1024;

/// Why a cluster file or config is unusable. Every message is one line naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be opened or read (or is not UTF-8).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is over [`CLUSTER_FILE_SIZE_MAX_BYTES`].
    #[error("{} is larger than {CLUSTER_FILE_SIZE_MAX_BYTES} bytes", path.display())]
    FileTooLarge { path: PathBuf },
    /// An error found in a file, wrapped by [`ClusterConfig::load`] to name the file.
    #[error("{}: {error}", path.display())]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
    /// Not TOML, or not the shape of a cluster file (missing or unknown key, wrong type).
    #[error("{}{message}", location.map(|(line, column)| format!("line {line}, column {column}: ")).unwrap_or_default())]
    Syntax {
        /// Line and column (from 1) of the offending text, when known.
        location: Option<(u32, u32)>,
        /// The parser's message, on one line.
        message: String,
    },
    /// `shard_count` is 0.
    #[error("shard_count must be at least 1")]
    NoShards,
    /// `shard_count` is over [`SHARD_COUNT_MAX`].
    #[error("shard_count is {shard_count}, more than the maximum of {SHARD_COUNT_MAX}")]
    TooManyShards { shard_count: u32 },
    /// The file has no `[[node]]` entry.
    #[error("no [[node]] entries: a cluster needs at least one node")]
    NoNodes,
    /// More than [`NODES_MAX`] nodes.
    #[error("{node_count} [[node]] entries, more than the maximum of {NODES_MAX}")]
    TooManyNodes { node_count: u64 },
    /// A node has id 0.
    #[error("node id 0 is reserved; ids start at 1")]
    NodeIdZero,
    /// Two nodes have the same id.
    #[error("node id {id} appears more than once")]
    DuplicateNodeId { id: NodeId },
    /// A node's address is not `host:port` with a port from 1 to 65535.
    #[error("node {id}: address {address:?} is not host:port")]
    InvalidAddress { id: NodeId, address: String },
    /// Two nodes have the same address.
    #[error("nodes {first} and {second} have the same address {address:?}")]
    DuplicateAddress {
        address: String,
        first: NodeId,
        second: NodeId,
    },
    /// A node lists a shard at or above `shard_count`.
    #[error("node {id}: shard {shard} is out of range (shard_count is {shard_count})")]
    ShardOutOfRange {
        id: NodeId,
        shard: u32,
        shard_count: u32,
    },
    /// A shard is listed twice (by two nodes, or twice by one).
    #[error("shard {shard} is listed by both node {first} and node {second}")]
    ShardOwnedTwice {
        shard: u32,
        first: NodeId,
        second: NodeId,
    },
    /// A shard below `shard_count` is listed by no node.
    #[error("shard {shard} is not owned by any node")]
    ShardUnowned { shard: u32 },
}

/// A validated cluster: its nodes and the shard map.
///
/// Read the fields freely. Build a config only through [`ClusterConfig::new`],
/// [`ClusterConfig::parse`], [`ClusterConfig::load`] or [`ClusterConfig::local`]: they validate it
/// and build the shard-to-node table that [`ClusterConfig::owner_of`] reads; a config whose fields
/// were changed afterwards must be rebuilt with `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ClusterFile")]
pub struct ClusterConfig {
    /// How many shards the account space is cut into; fixed for the life of the cluster.
    pub shard_count: u32,
    /// The nodes, in file order.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// `owners[shard]` is the node owning `shard`; derived from `nodes`, so not serialized.
    #[serde(skip)]
    owners: Vec<NodeId>,
}

/// One `[[node]]` entry of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Non-zero and unique within the cluster.
    pub id: NodeId,
    /// Where the node listens, as `host:port` (e.g. `127.0.0.1:7101`).
    pub address: String,
    /// The shards this node owns.
    pub shards: Vec<u32>,
}

/// The cluster file as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    shard_count: u32,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeConfig>,
}

impl TryFrom<ClusterFile> for ClusterConfig {
    type Error = ConfigError;

    fn try_from(file: ClusterFile) -> Result<Self, ConfigError> {
        ClusterConfig::new(file.shard_count, file.nodes)
    }
}

impl ClusterConfig {
    /// Validates the nodes and builds the shard map.
    pub fn new(shard_count: u32, nodes: Vec<NodeConfig>) -> Result<Self, ConfigError> {
        let owners = owner_table(shard_count, &nodes)?;
        Ok(ClusterConfig {
            shard_count,
            nodes,
            owners,
        })
    }

    /// Reads, parses and validates a cluster file; errors name the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut text = String::new();
        // One byte more than allowed, to tell "exactly at the limit" from "over it".
        file.take(CLUSTER_FILE_SIZE_MAX_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > CLUSTER_FILE_SIZE_MAX_BYTES {
            return Err(ConfigError::FileTooLarge {
                path: path.to_path_buf(),
            });
        }
        ClusterConfig::parse(&text).map_err(|error| ConfigError::InFile {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }

    /// Parses and validates the text of a cluster file.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: ClusterFile = toml::from_str(text).map_err(|error| ConfigError::Syntax {
            location: error.span().map(|span| line_and_column(text, span.start)),
            // toml's own Display spans several lines (it quotes the source); keep the message.
            message: error.message().trim().replace('\n', " "),
        })?;
        ClusterConfig::new(file.shard_count, file.nodes)
    }

    /// The cluster file text for this config; [`ClusterConfig::parse`] reads it back unchanged.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a cluster config has only integers, strings and arrays")
    }

    /// Checks every rule of the cluster file (see the module documentation). Every constructor
    /// already did; this re-checks a config whose fields may have been changed.
    ///
    /// Panics if the fields were changed after the config was built, even into another valid
    /// config: the shard map would be stale, which is a bug of the caller, not bad input.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let owners = owner_table(self.shard_count, &self.nodes)?;
        assert_eq!(
            owners, self.owners,
            "the shard map is stale: the config was changed after it was built"
        );
        Ok(())
    }

    /// A cluster of `nodes` nodes on this machine: node `i` (from 1) listens on
    /// `127.0.0.1:(base_port + i - 1)` and owns shard `i - 1`, one shard per node.
    ///
    /// Panics if `nodes` is 0 or more than [`NODES_MAX`], or the ports would pass 65535.
    pub fn local(nodes: u32, base_port: u16) -> Self {
        assert!(
            (1..=NODES_MAX).contains(&nodes),
            "a local cluster has 1 to {NODES_MAX} nodes, not {nodes}"
        );
        let port_last = u32::from(base_port) + nodes - 1;
        assert!(
            port_last <= u32::from(u16::MAX),
            "ports {base_port}..={port_last} do not fit in 1..=65535"
        );
        let nodes = (1..=nodes)
            .map(|id| NodeConfig {
                id,
                address: format!("127.0.0.1:{}", u32::from(base_port) + id - 1),
                shards: vec![id - 1],
            })
            .collect::<Vec<_>>();
        let shard_count = nodes.len() as u32;
        ClusterConfig::new(shard_count, nodes).expect("a local cluster is valid by construction")
    }

    /// The shard holding `account`: `splitmix64(account) % shard_count`.
    ///
    /// This function is part of the data format: every client and node computes it on its own, so
    /// it must never change for an existing cluster.
    pub fn shard_of(&self, account: AccountId) -> u32 {
        shard_of(account, self.shard_count)
    }

    /// The node owning `account`'s shard.
    pub fn owner_of(&self, account: AccountId) -> NodeId {
        self.owner_of_shard(self.shard_of(account))
    }

    /// The node owning `shard`. Panics if `shard >= shard_count`.
    pub fn owner_of_shard(&self, shard: u32) -> NodeId {
        assert!(
            shard < self.shard_count,
            "shard {shard} out of range 0..{}",
            self.shard_count
        );
        self.owners[shard as usize]
    }

    /// The node with this id, if the cluster has one.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

/// The shard holding `account` in a cluster of `shard_count` shards: `splitmix64(account) %
/// shard_count`. Stable forever (see [`ClusterConfig::shard_of`]). Panics if `shard_count` is 0.
pub fn shard_of(account: AccountId, shard_count: u32) -> u32 {
    assert!(shard_count > 0, "a cluster has at least one shard");
    // The remainder is below shard_count, a u32, so the cast is exact.
    (splitmix64(account) % u64::from(shard_count)) as u32
}

/// The SplitMix64 finalizer (Steele, Lea and Flood, 2014): a bijection on `u64` whose output bits
/// each depend on every input bit, so sequential account ids spread evenly over the shards.
fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Validates `nodes` against `shard_count` and returns `owners[shard]`, in one pass over the file.
fn owner_table(shard_count: u32, nodes: &[NodeConfig]) -> Result<Vec<NodeId>, ConfigError> {
    if shard_count == 0 {
        return Err(ConfigError::NoShards);
    }
    if shard_count > SHARD_COUNT_MAX {
        return Err(ConfigError::TooManyShards { shard_count });
    }
    if nodes.is_empty() {
        return Err(ConfigError::NoNodes);
    }
    if nodes.len() as u64 > u64::from(NODES_MAX) {
        return Err(ConfigError::TooManyNodes {
            node_count: nodes.len() as u64,
        });
    }
    // 0 marks a shard with no owner yet: node ids are non-zero.
    let mut owners = vec![0 as NodeId; shard_count as usize];
    for (index, node) in nodes.iter().enumerate() {
        if node.id == 0 {
            return Err(ConfigError::NodeIdZero);
        }
        if !is_host_and_port(&node.address) {
            return Err(ConfigError::InvalidAddress {
                id: node.id,
                address: node.address.clone(),
            });
        }
        // At most NODES_MAX nodes, so comparing with each earlier one is cheap.
        for earlier in &nodes[..index] {
            if earlier.id == node.id {
                return Err(ConfigError::DuplicateNodeId { id: node.id });
            }
            if earlier.address == node.address {
                return Err(ConfigError::DuplicateAddress {
                    address: node.address.clone(),
                    first: earlier.id,
                    second: node.id,
                });
            }
        }
        for &shard in &node.shards {
            let Some(owner) = owners.get_mut(shard as usize) else {
                return Err(ConfigError::ShardOutOfRange {
                    id: node.id,
                    shard,
                    shard_count,
                });
            };
            if *owner != 0 {
                return Err(ConfigError::ShardOwnedTwice {
                    shard,
                    first: *owner,
                    second: node.id,
                });
            }
            *owner = node.id;
        }
    }
    if let Some(shard) = owners.iter().position(|&owner| owner == 0) {
        return Err(ConfigError::ShardUnowned {
            shard: shard as u32,
        });
    }
    Ok(owners)
}

/// Whether `address` has the form `host:port` with a non-empty host and a port in 1..=65535.
/// Host names are allowed (resolved when connecting), so the host itself is not checked further.
fn is_host_and_port(address: &str) -> bool {
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.chars().any(char::is_whitespace)
                && port.parse::<u16>().is_ok_and(|port| port != 0)
        }
        None => false,
    }
}

/// Line and column (from 1, column in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (u32, u32) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (saturate_u32(line), saturate_u32(column))
}

fn saturate_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_NODES: &str = r#"
shard_count = 3

[[node]]
id = 1
address = "127.0.0.1:7101"
shards = [0]

[[node]]
id = 2
address = "127.0.0.1:7102"
shards = [1]

[[node]]
id = 3
address = "127.0.0.1:7103"
shards = [2]
"#;

    fn node(id: NodeId, address: &str, shards: &[u32]) -> NodeConfig {
        NodeConfig {
            id,
            address: address.to_string(),
            shards: shards.to_vec(),
        }
    }

    /// Parses `text` expecting failure, and returns the one-line message.
    fn check_error(text: &str, expected: &str) {
        match ClusterConfig::parse(text) {
            Ok(config) => panic!("parsed an invalid file: {config:?}"),
            Err(error) => {
                let message = error.to_string();
                assert!(!message.contains('\n'), "multi-line message: {message}");
                assert!(
                    message.contains(expected),
                    "message {message:?} does not contain {expected:?}"
                );
            }
        }
    }

    #[test]
    fn parses_the_documented_example() {
        let config = ClusterConfig::parse(THREE_NODES).expect("valid");
        assert_eq!(config, ClusterConfig::local(3, 7101));
        assert_eq!(
            config.node(2).map(|node| node.address.as_str()),
            Some("127.0.0.1:7102")
        );
        assert_eq!(config.node(4), None);
        for shard in 0..3 {
            assert_eq!(config.owner_of_shard(shard), shard + 1);
        }
    }

    #[test]
    fn to_toml_round_trips() {
        let configs = [
            ClusterConfig::local(1, 9000),
            ClusterConfig::local(5, 7101),
            ClusterConfig::new(
                4,
                vec![
                    node(10, "db-a.internal:7101", &[3, 0]),
                    node(20, "[::1]:7102", &[1, 2]),
                ],
            )
            .expect("valid"),
        ];
        for config in configs {
            let text = config.to_toml();
            assert_eq!(
                ClusterConfig::parse(&text).expect("round trip"),
                config,
                "{text}"
            );
        }
    }

    #[test]
    fn loads_a_file_and_names_it_in_errors() {
        let directory = tempfile::tempdir().expect("temp dir");
        let path = directory.path().join("cluster.toml");
        std::fs::write(&path, THREE_NODES).expect("write");
        assert_eq!(
            ClusterConfig::load(&path).expect("load"),
            ClusterConfig::local(3, 7101)
        );

        std::fs::write(
            &path,
            "shard_count = 0\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = []\n",
        )
        .expect("write");
        let message = ClusterConfig::load(&path).expect_err("invalid").to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert!(
            message.ends_with("shard_count must be at least 1"),
            "{message}"
        );

        let missing = directory.path().join("missing.toml");
        let message = ClusterConfig::load(&missing)
            .expect_err("missing")
            .to_string();
        assert!(message.starts_with("cannot read "), "{message}");

        let large = " ".repeat(CLUSTER_FILE_SIZE_MAX_BYTES as usize + 1);
        std::fs::write(&path, large).expect("write");
        assert!(matches!(
            ClusterConfig::load(&path),
            Err(ConfigError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn syntax_errors_are_one_line_with_a_location() {
        check_error("shard_count = ", "line 1, column 15: ");
        check_error(
            "shard_count = 1\n[[node]]\nid = 1\nshards = [0]\n",
            "missing field `address`",
        );
        check_error(
            "shard_count = 1\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0]\nadress = 2\n",
            "unknown field `adress`",
        );
        check_error("shard_count = -1\n", "line 1, column 15: ");
        check_error("shard_count = 1\ncolour = 2\n", "unknown field `colour`");
    }

    #[test]
    fn each_validation_rule_has_its_error() {
        check_error(
            "shard_count = 0\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = []",
            "shard_count must be at least 1",
        );
        check_error(
            "shard_count = 70000\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = []",
            "more than the maximum of 65536",
        );
        check_error("shard_count = 1\n", "no [[node]] entries");
        check_error(
            "shard_count = 1\n[[node]]\nid = 0\naddress = \"a:1\"\nshards = [0]",
            "node id 0 is reserved",
        );
        check_error(
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0]\n[[node]]\nid = 1\naddress = \"a:2\"\nshards = [1]",
            "node id 1 appears more than once",
        );
        for address in ["", "a", "a:", ":1", "a:0", "a:65536", "a b:1", "a:x"] {
            let text =
                format!("shard_count = 1\n[[node]]\nid = 1\naddress = {address:?}\nshards = [0]");
            check_error(
                &text,
                &format!("node 1: address {address:?} is not host:port"),
            );
        }
        check_error(
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0]\n[[node]]\nid = 2\naddress = \"a:1\"\nshards = [1]",
            "nodes 1 and 2 have the same address \"a:1\"",
        );
        check_error(
            "shard_count = 2\n[[node]]\nid = 7\naddress = \"a:1\"\nshards = [0, 2]",
            "node 7: shard 2 is out of range (shard_count is 2)",
        );
        check_error(
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 1]\n[[node]]\nid = 2\naddress = \"a:2\"\nshards = [1]",
            "shard 1 is listed by both node 1 and node 2",
        );
        check_error(
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 0]",
            "shard 0 is listed by both node 1 and node 1",
        );
        check_error(
            "shard_count = 3\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 2]",
            "shard 1 is not owned by any node",
        );

        let too_many = (1..=NODES_MAX + 1)
            .map(|id| node(id, &format!("a:{id}"), &[]))
            .collect();
        assert!(matches!(
            ClusterConfig::new(1, too_many),
            Err(ConfigError::TooManyNodes { node_count: 257 })
        ));
    }

    #[test]
    fn validate_accepts_what_new_built() {
        let config = ClusterConfig::local(4, 7101);
        config.validate().expect("valid");
    }

    #[test]
    #[should_panic(expected = "the shard map is stale")]
    fn validate_catches_a_changed_config() {
        let mut config = ClusterConfig::local(2, 7101);
        config.nodes[0].shards = vec![1];
        config.nodes[1].shards = vec![0];
        let _ = config.validate();
    }

    #[test]
    fn local_numbers_nodes_ports_and_shards() {
        let config = ClusterConfig::local(3, 9000);
        assert_eq!(config.shard_count, 3);
        assert_eq!(
            config.nodes,
            vec![
                node(1, "127.0.0.1:9000", &[0]),
                node(2, "127.0.0.1:9001", &[1]),
                node(3, "127.0.0.1:9002", &[2]),
            ]
        );
    }

    #[test]
    #[should_panic(expected = "do not fit")]
    fn local_refuses_ports_past_65535() {
        let _ = ClusterConfig::local(2, u16::MAX);
    }

    /// These values are part of the data format: if this test fails, the hash changed, and every
    /// existing cluster would look for its accounts on the wrong nodes.
    #[test]
    fn shard_of_is_pinned() {
        // The first output of the reference SplitMix64 generator seeded with 0.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        let pinned: [(AccountId, u32, u32); 8] = [
            (0, 3, 1),
            (1, 3, 2),
            (2, 3, 1),
            (3, 3, 0),
            (42, 3, 1),
            (u64::MAX, 3, 2),
            (1, 1024, 193),
            (123_456_789, 65_536, 30_329),
        ];
        for (account, shard_count, shard) in pinned {
            assert_eq!(
                shard_of(account, shard_count),
                shard,
                "account {account} of {shard_count} shards"
            );
        }
        let config = ClusterConfig::local(3, 7101);
        assert_eq!(config.owner_of(42), config.owner_of_shard(shard_of(42, 3)));
    }

    /// One row of the shard test vectors in docs/protocol.md.
    struct ShardVector {
        account: AccountId,
        hash: u64,
        /// One shard per shard count of the table's header, in order.
        shards: Vec<u32>,
    }

    /// The test-vector table of docs/protocol.md ("The shard function"): the shard counts named
    /// in its header, and its rows. Read from the document itself, so that a client written from
    /// the document is checked against the same numbers the code produces.
    fn documented_shard_vectors() -> (Vec<u32>, Vec<ShardVector>) {
        const PROTOCOL_DOC: &str =
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"));
        const MARKER: &str = "<!-- check: shard-vectors -->";
        let start = PROTOCOL_DOC
            .find(MARKER)
            .unwrap_or_else(|| panic!("docs/protocol.md lacks {MARKER}"));
        let cells = |line: &str| -> Vec<String> {
            line.trim()
                .trim_matches('|')
                .split('|')
                .map(|cell| cell.trim().trim_matches('`').to_string())
                .collect()
        };
        let mut lines = PROTOCOL_DOC[start + MARKER.len()..]
            .lines()
            .skip_while(|line| line.trim().is_empty())
            .take_while(|line| line.trim_start().starts_with('|'));
        let header = cells(lines.next().expect("a header row"));
        // "shard, 3 shards" -> 3.
        let shard_counts: Vec<u32> = header[2..]
            .iter()
            .map(|cell| {
                cell.split_whitespace()
                    .find_map(|word| word.parse().ok())
                    .unwrap_or_else(|| panic!("header cell {cell:?} names no shard count"))
            })
            .collect();
        let rows = lines
            .skip(1) // the |---| separator row
            .map(|line| {
                let row = cells(line);
                assert_eq!(row.len(), 2 + shard_counts.len(), "row {line:?}");
                let account = row[0]
                    .parse()
                    .unwrap_or_else(|_| panic!("account {:?} is not a u64", row[0]));
                let hash = u64::from_str_radix(row[1].trim_start_matches("0x"), 16)
                    .unwrap_or_else(|_| panic!("hash {:?} is not hex", row[1]));
                let shards = row[2..]
                    .iter()
                    .map(|cell| cell.parse().expect("a shard number"))
                    .collect();
                ShardVector {
                    account,
                    hash,
                    shards,
                }
            })
            .collect();
        (shard_counts, rows)
    }

    /// A client in another language is written from the document's vectors; they must be the
    /// code's, or that client would send requests for existing accounts to the wrong nodes.
    #[test]
    fn shard_vectors_in_the_protocol_doc_hold() {
        let (shard_counts, rows) = documented_shard_vectors();
        // The edge cases a reimplementation gets wrong first (wrapping add, unsigned
        // remainder), and the shard counts the document promises: a table that lost them would
        // otherwise pass by checking less.
        for account in [0, 1, u64::MAX] {
            assert!(
                rows.iter().any(|row| row.account == account),
                "docs/protocol.md has no shard vector for account {account}"
            );
        }
        assert_eq!(shard_counts, [3, 7], "shard counts of the vector table");
        for ShardVector {
            account,
            hash,
            shards,
        } in &rows
        {
            assert_eq!(
                format!("{:#018x}", splitmix64(*account)),
                format!("{hash:#018x}"),
                "docs/protocol.md: splitmix64({account})"
            );
            for (shard_count, shard) in shard_counts.iter().zip(shards) {
                assert_eq!(
                    shard_of(*account, *shard_count),
                    *shard,
                    "docs/protocol.md: shard of account {account} among {shard_count} shards"
                );
            }
        }
    }

    #[test]
    fn shard_of_spreads_sequential_accounts_evenly() {
        for shard_count in [2, 3, 7, 16] {
            let accounts = 70_000u64;
            let mut counts = vec![0u64; shard_count as usize];
            for account in 1..=accounts {
                counts[shard_of(account, shard_count) as usize] += 1;
            }
            let expected = accounts / u64::from(shard_count);
            for (shard, &count) in counts.iter().enumerate() {
                // Within 5% of even: far more than the binomial spread at this size.
                assert!(
                    count.abs_diff(expected) * 20 < expected,
                    "shard {shard} of {shard_count} holds {count}, expected about {expected}"
                );
            }
        }
    }
}
