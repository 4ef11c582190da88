//! The cluster file: which nodes exist, where they listen, and which shards each one holds a
//! replica of; and the shard map every client and node uses to find an account's shard and the
//! nodes that hold it.
//!
//! # The cluster file
//!
//! TOML, one `[[node]]` table per node. A shard listed by several nodes is a replica group: each
//! of those nodes holds a replica of it, and one of them at a time leads it. Here each of the three
//! shards has three replicas, and each node is the first leader of one shard:
//!
//! ```toml
//! # How many shards the account space is cut into. Fixed for the life of the cluster: changing
//! # it moves accounts between shards.
//! shard_count = 3
//!
//! [[node]]
//! id = 1                       # non-zero, unique
//! address = "127.0.0.1:7101"   # host:port the node listens on, unique
//! shards = [0, 1, 2]           # the shards this node holds a replica of
//! leads = [0]                  # optional: the shards whose first leader this node should be
//! http = "127.0.0.1:8101"      # optional: where the node serves /metrics (none when absent)
//!
//! [[node]]
//! id = 2
//! address = "127.0.0.1:7102"
//! shards = [0, 1, 2]
//! leads = [1]
//! http = "127.0.0.1:8102"
//!
//! [[node]]
//! id = 3
//! address = "127.0.0.1:7103"
//! shards = [0, 1, 2]
//! leads = [2]
//! http = "127.0.0.1:8103"
//! ```
//!
//! Without replication each shard is listed by one node (`shards = [0]`, `[1]`, `[2]`, no
//! `leads`), which is what [`ClusterConfig::local`] writes.
//!
//! Rules, checked by [`ClusterConfig::validate`]: `shard_count` is 1 to [`SHARD_COUNT_MAX`];
//! there are 1 to [`NODES_MAX`] nodes; node ids are non-zero and unique; addresses are `host:port`
//! and unique; every shard `0..shard_count` is listed in the `shards` of at least 1 and at most
//! [`REPLICAS_MAX`] nodes, and a node lists a shard at most once; `leads` (absent means `[]`)
//! holds only shards of the node's own `shards`, each at most once, and a shard is in the `leads`
//! of at most one node. Unknown keys are refused, so a misspelt key is an error rather than a
//! silent default.
//!
//! # The shard map
//!
//! An account lives in shard [`shard_of`] `= splitmix64(account) % shard_count`, and the shard is
//! held by the nodes that list it ([`ClusterConfig::replicas_of`]). Every client and every node
//! computes this independently, so the function must never change: a different hash would send
//! requests for existing accounts to nodes that do not hold them. `docs/protocol.md` (section 12)
//! defines it for clients in other languages, with test vectors that a test here reads from the
//! document and checks.
//!
//! Which replica leads a shard changes at run time (an election picks it); the file names only
//! the one that should lead first, [`ClusterConfig::preferred_leader`]: the node whose `leads` has
//! the shard, else its first replica in file order. That is where a client starts looking.

use std::io::Read;
use std::path::{Path, PathBuf};

use net::{AccountId, CLUSTER_NODES_MAX, NodeId};
use serde::{Deserialize, Serialize};

/// Most shards a cluster may have. Bounds the shard tables (8 bytes per shard and 4 per replica).
pub const SHARD_COUNT_MAX: u32 = 65_536;
/// Most nodes a cluster may have: as many as one `ClusterStatus` or `AuditReport` can describe.
pub const NODES_MAX: u32 = CLUSTER_NODES_MAX;
/// Most replicas a shard may have (nodes listing it). A Raft group of 7 survives 3 failures;
/// larger groups cost every write more messages for little more safety. Bounds the replica table.
pub const REPLICAS_MAX: u32 = 7;
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
    /// A node's `shards` has a shard at or above `shard_count`.
    #[error("node {id}: shard {shard} is out of range (shard_count is {shard_count})")]
    ShardOutOfRange {
        id: NodeId,
        shard: u32,
        shard_count: u32,
    },
    /// A node's `shards` or `leads` has a shard twice.
    #[error("node {id}: shard {shard} appears twice in its {field}")]
    ShardRepeated {
        id: NodeId,
        /// `shards` or `leads`.
        field: &'static str,
        shard: u32,
    },
    /// More than [`REPLICAS_MAX`] nodes list a shard in their `shards`.
    #[error(
        "node {id}: shard {shard} is already in the shards of {REPLICAS_MAX} earlier nodes, the most replicas a shard may have"
    )]
    TooManyReplicas { id: NodeId, shard: u32 },
    /// A shard below `shard_count` is in no node's `shards`.
    #[error("shard {shard} is in no node's shards: it needs at least one replica")]
    ShardWithoutReplica { shard: u32 },
    /// A node's `leads` has a shard that is not in its own `shards`.
    #[error("node {id}: leads shard {shard}, which is not in its shards")]
    LeadsShardNotHeld { id: NodeId, shard: u32 },
    /// A shard is in the `leads` of two nodes.
    #[error("shard {shard} is in the leads of both node {first} and node {second}")]
    ShardLedTwice {
        shard: u32,
        first: NodeId,
        second: NodeId,
    },
}

/// A validated cluster: its nodes and the shard map.
///
/// Read the fields freely. Build a config only through [`ClusterConfig::new`],
/// [`ClusterConfig::parse`], [`ClusterConfig::load`], [`ClusterConfig::local`] or
/// [`ClusterConfig::local_replicated`]: they validate it and build the shard tables that
/// [`ClusterConfig::replicas_of`] and [`ClusterConfig::preferred_leader`] read; a config whose
/// fields were changed afterwards must be rebuilt with `new`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ClusterFile")]
pub struct ClusterConfig {
    /// How many shards the account space is cut into; fixed for the life of the cluster.
    pub shard_count: u32,
    /// The nodes, in file order.
    #[serde(rename = "node")]
    pub nodes: Vec<NodeConfig>,
    /// The shard tables, derived from `nodes`, so not serialized.
    #[serde(skip)]
    map: ShardMap,
}

/// Who holds and who should first lead each shard, derived from the nodes at construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ShardMap {
    /// The replicas of every shard, shard after shard, each shard's in file order.
    replicas: Vec<NodeId>,
    /// Shard `s`'s replicas are `replicas[starts[s]..starts[s + 1]]`; `shard_count + 1` entries.
    starts: Vec<u32>,
    /// `preferred_leaders[shard]`: the node whose `leads` has it, else its first replica.
    preferred_leaders: Vec<NodeId>,
}

/// One `[[node]]` entry of the cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Non-zero and unique within the cluster.
    pub id: NodeId,
    /// Where the node listens, as `host:port` (e.g. `127.0.0.1:7101`).
    pub address: String,
    /// The shards this node holds a replica of.
    pub shards: Vec<u32>,
    /// The shards whose first leader this node should be: it campaigns first when the group is
    /// new. Each is also in `shards`. Absent in the file means empty, and an empty list is not
    /// written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leads: Vec<u32>,
    /// Where the node serves HTTP (`/metrics`), as `host:port`; absent means no HTTP. Unique
    /// among every address of the file. Loopback unless the operator wants it reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
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
        let map = shard_map(shard_count, &nodes)?;
        Ok(ClusterConfig {
            shard_count,
            nodes,
            map,
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
        let map = shard_map(self.shard_count, &self.nodes)?;
        assert_eq!(
            map, self.map,
            "the shard map is stale: the config was changed after it was built"
        );
        Ok(())
    }

    /// A cluster of `nodes` nodes on this machine: node `i` (from 1) listens on
    /// `127.0.0.1:(base_port + i - 1)` and holds shard `i - 1`, one shard per node and one replica
    /// per shard. The same as [`ClusterConfig::local_replicated`] with one replica.
    ///
    /// Panics if `nodes` is 0 or more than [`NODES_MAX`], or the ports would pass 65535.
    pub fn local(nodes: u32, base_port: u16) -> Self {
        ClusterConfig::local_replicated(nodes, 1, base_port)
    }

    /// A replicated cluster of `nodes` nodes on this machine, listening as in
    /// [`ClusterConfig::local`], with `nodes` shards: shard `s` has `min(replicas, nodes)`
    /// replicas, on nodes `s + 1`, `s + 2`, ... (wrapping from the last node to node 1), and node
    /// `s + 1` leads it first, so that the leaders start spread over the nodes. A shard of one
    /// replica has no election, so with one replica no `leads` is written.
    ///
    /// Panics if `nodes` is 0 or more than [`NODES_MAX`], `replicas` is 0 or more than
    /// [`REPLICAS_MAX`], or the ports would pass 65535.
    pub fn local_replicated(nodes: u32, replicas: u32, base_port: u16) -> Self {
        assert!(
            (1..=NODES_MAX).contains(&nodes),
            "a local cluster has 1 to {NODES_MAX} nodes, not {nodes}"
        );
        assert!(
            (1..=REPLICAS_MAX).contains(&replicas),
            "a shard has 1 to {REPLICAS_MAX} replicas, not {replicas}"
        );
        let port_last = u32::from(base_port) + nodes - 1;
        assert!(
            port_last <= u32::from(u16::MAX),
            "ports {base_port}..={port_last} do not fit in 1..=65535"
        );
        let replicas = replicas.min(nodes);
        let shard_count = nodes;
        let nodes = (1..=nodes)
            .map(|id| NodeConfig {
                id,
                address: format!("127.0.0.1:{}", u32::from(base_port) + id - 1),
                // Shard s is on nodes s + 1 + k (wrapping) for k < replicas, so node `id` holds
                // the shards s with (id - 1 - s) mod nodes < replicas.
                shards: (0..shard_count)
                    .filter(|&shard| (id - 1 + shard_count - shard) % shard_count < replicas)
                    .collect(),
                leads: if replicas > 1 {
                    vec![id - 1]
                } else {
                    Vec::new()
                },
                http: None,
            })
            .collect::<Vec<_>>();
        ClusterConfig::new(shard_count, nodes).expect("a local cluster is valid by construction")
    }

    /// The shard holding `account`: `splitmix64(account) % shard_count`.
    ///
    /// This function is part of the data format: every client and node computes it on its own, so
    /// it must never change for an existing cluster.
    pub fn shard_of(&self, account: AccountId) -> u32 {
        shard_of(account, self.shard_count)
    }

    /// The preferred leader of `account`'s shard ([`ClusterConfig::owner_of_shard`]).
    pub fn owner_of(&self, account: AccountId) -> NodeId {
        self.owner_of_shard(self.shard_of(account))
    }

    /// The preferred leader of `shard` ([`ClusterConfig::preferred_leader`]): in a cluster
    /// without replication the one node holding it; in a replicated cluster only where a client
    /// starts looking for its leader, which may have changed since. Panics if
    /// `shard >= shard_count`.
    pub fn owner_of_shard(&self, shard: u32) -> NodeId {
        self.preferred_leader(shard)
    }

    /// The node that should lead `shard` first: the one whose `leads` has it, else its first
    /// replica in file order. Panics if `shard >= shard_count`.
    pub fn preferred_leader(&self, shard: u32) -> NodeId {
        self.map.preferred_leaders[self.shard_index(shard)]
    }

    /// The nodes holding a replica of `shard`, in file order; never empty. Panics if
    /// `shard >= shard_count`.
    pub fn replicas_of(&self, shard: u32) -> &[NodeId] {
        let index = self.shard_index(shard);
        let (start, end) = (self.map.starts[index], self.map.starts[index + 1]);
        &self.map.replicas[start as usize..end as usize]
    }

    /// The shards node `id` holds a replica of, in its file order; empty for a node that is not
    /// in the cluster.
    pub fn shards_of(&self, id: NodeId) -> &[u32] {
        self.node(id).map_or(&[], |node| node.shards.as_slice())
    }

    /// `shard` as an index of the shard tables. Panics if `shard >= shard_count`.
    fn shard_index(&self, shard: u32) -> usize {
        assert!(
            shard < self.shard_count,
            "shard {shard} out of range 0..{}",
            self.shard_count
        );
        shard as usize
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

/// Validates `nodes` against `shard_count` and builds the shard tables, in two passes over the
/// file: one to check every rule and count each shard's replicas, one to fill the tables.
fn shard_map(shard_count: u32, nodes: &[NodeConfig]) -> Result<ShardMap, ConfigError> {
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
    let shards = shard_count as usize;
    // Per shard: how many nodes list it, and the last node that did, as its index + 1 (0: none
    // yet), which tells a shard a node lists twice and the shards the current node holds.
    let mut replica_counts = vec![0u32; shards];
    let mut last_holder = vec![0u32; shards];
    // The node whose `leads` has the shard; 0 (never a node id) for none yet.
    let mut leaders = vec![0 as NodeId; shards];
    for (index, node) in nodes.iter().enumerate() {
        if node.id == 0 {
            return Err(ConfigError::NodeIdZero);
        }
        for address in std::iter::once(&node.address).chain(&node.http) {
            if !is_host_and_port(address) {
                return Err(ConfigError::InvalidAddress {
                    id: node.id,
                    address: address.clone(),
                });
            }
        }
        if node.http.as_ref() == Some(&node.address) {
            return Err(ConfigError::DuplicateAddress {
                address: node.address.clone(),
                first: node.id,
                second: node.id,
            });
        }
        // At most NODES_MAX nodes, so comparing with each earlier one is cheap.
        for earlier in &nodes[..index] {
            if earlier.id == node.id {
                return Err(ConfigError::DuplicateNodeId { id: node.id });
            }
            let addresses = |node: &'_ NodeConfig| {
                std::iter::once(node.address.clone()).chain(node.http.clone())
            };
            if let Some(address) =
                addresses(node).find(|mine| addresses(earlier).any(|theirs| theirs == *mine))
            {
                return Err(ConfigError::DuplicateAddress {
                    address,
                    first: earlier.id,
                    second: node.id,
                });
            }
        }
        // At most NODES_MAX, so the cast is exact.
        let mark = index as u32 + 1;
        for &shard in &node.shards {
            let Some(holder) = last_holder.get_mut(shard as usize) else {
                return Err(ConfigError::ShardOutOfRange {
                    id: node.id,
                    shard,
                    shard_count,
                });
            };
            if *holder == mark {
                return Err(ConfigError::ShardRepeated {
                    id: node.id,
                    field: "shards",
                    shard,
                });
            }
            let count = &mut replica_counts[shard as usize];
            if *count == REPLICAS_MAX {
                return Err(ConfigError::TooManyReplicas { id: node.id, shard });
            }
            *holder = mark;
            *count += 1;
        }
        for &shard in &node.leads {
            if last_holder.get(shard as usize) != Some(&mark) {
                return Err(ConfigError::LeadsShardNotHeld { id: node.id, shard });
            }
            match leaders[shard as usize] {
                0 => leaders[shard as usize] = node.id,
                first if first == node.id => {
                    return Err(ConfigError::ShardRepeated {
                        id: node.id,
                        field: "leads",
                        shard,
                    });
                }
                first => {
                    return Err(ConfigError::ShardLedTwice {
                        shard,
                        first,
                        second: node.id,
                    });
                }
            }
        }
    }
    if let Some(shard) = replica_counts.iter().position(|&count| count == 0) {
        return Err(ConfigError::ShardWithoutReplica {
            shard: shard as u32,
        });
    }
    // At most SHARD_COUNT_MAX * REPLICAS_MAX replicas in all, which fits a u32.
    let mut starts = Vec::with_capacity(shards + 1);
    starts.push(0u32);
    for count in &replica_counts {
        starts.push(starts[starts.len() - 1] + count);
    }
    let mut replicas = vec![0 as NodeId; starts[shards] as usize];
    let mut next = starts[..shards].to_vec();
    for node in nodes {
        for &shard in &node.shards {
            let slot = &mut next[shard as usize];
            replicas[*slot as usize] = node.id;
            *slot += 1;
        }
    }
    let preferred_leaders = leaders
        .iter()
        .zip(&starts)
        .map(|(&leader, &start)| match leader {
            0 => replicas[start as usize],
            leader => leader,
        })
        .collect();
    Ok(ShardMap {
        replicas,
        starts,
        preferred_leaders,
    })
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
        leader(id, address, shards, &[])
    }

    fn leader(id: NodeId, address: &str, shards: &[u32], leads: &[u32]) -> NodeConfig {
        NodeConfig {
            id,
            address: address.to_string(),
            shards: shards.to_vec(),
            leads: leads.to_vec(),
            http: None,
        }
    }

    /// The TOML example of the module documentation, read from this file.
    fn documented_example() -> String {
        const SOURCE: &str = include_str!("config.rs");
        let start = SOURCE
            .find("//! ```toml\n")
            .expect("the module docs have a TOML example");
        SOURCE[start..]
            .lines()
            .skip(1)
            .take_while(|line| *line != "//! ```")
            .map(|line| format!("{}\n", line.trim_start_matches("//!").trim_start()))
            .collect()
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
    fn parses_the_replicated_example_of_the_module_docs() {
        let config = ClusterConfig::parse(&documented_example()).expect("valid");
        let mut expected = ClusterConfig::local_replicated(3, 3, 7101);
        for node in &mut expected.nodes {
            node.http = Some(format!("127.0.0.1:{}", 8100 + node.id));
        }
        assert_eq!(config, expected);
        for shard in 0..3 {
            assert_eq!(config.replicas_of(shard), [1, 2, 3]);
            assert_eq!(config.preferred_leader(shard), shard + 1);
        }
    }

    #[test]
    fn http_addresses_are_host_and_port_and_unique_among_every_address() {
        let with_http = |id, address: &str, http: &str| NodeConfig {
            http: Some(http.to_string()),
            ..node(id, address, &[0])
        };
        assert!(
            ClusterConfig::new(1, vec![with_http(1, "a:1", "a:2"), node(2, "a:3", &[])]).is_ok()
        );
        assert!(matches!(
            ClusterConfig::new(1, vec![with_http(1, "a:1", "a")]),
            Err(ConfigError::InvalidAddress { id: 1, .. })
        ));
        assert!(matches!(
            ClusterConfig::new(1, vec![with_http(1, "a:1", "a:1")]),
            Err(ConfigError::DuplicateAddress {
                first: 1,
                second: 1,
                ..
            })
        ));
        // A node's HTTP address taken by another node's protocol address, either way round.
        for nodes in [
            vec![with_http(1, "a:1", "a:2"), node(2, "a:2", &[])],
            vec![node(1, "a:2", &[0]), with_http(2, "a:1", "a:2")],
        ] {
            assert!(matches!(
                ClusterConfig::new(1, nodes),
                Err(ConfigError::DuplicateAddress {
                    first: 1,
                    second: 2,
                    ..
                })
            ));
        }
    }

    #[test]
    fn replicas_and_preferred_leaders() {
        let config = ClusterConfig::new(
            3,
            vec![
                node(10, "a:1", &[0, 1]),
                leader(20, "a:2", &[1, 2], &[2]),
                leader(30, "a:3", &[2, 0], &[0]),
                node(40, "a:4", &[1]),
            ],
        )
        .expect("valid");
        assert_eq!(config.replicas_of(0), [10, 30]);
        assert_eq!(config.replicas_of(1), [10, 20, 40]);
        assert_eq!(config.replicas_of(2), [20, 30]);
        // Named in `leads`, else the first replica.
        let preferred = [30, 10, 20];
        for shard in 0..3 {
            assert_eq!(config.preferred_leader(shard), preferred[shard as usize]);
            assert_eq!(config.owner_of_shard(shard), preferred[shard as usize]);
        }
        for account in 0..50 {
            let shard = config.shard_of(account);
            assert_eq!(config.owner_of(account), preferred[shard as usize]);
        }
        assert_eq!(config.shards_of(30), [2, 0]);
        assert_eq!(config.shards_of(99), [] as [u32; 0]);
    }

    #[test]
    #[should_panic(expected = "shard 3 out of range 0..3")]
    fn replicas_of_a_shard_out_of_range_panics() {
        let _ = ClusterConfig::local_replicated(3, 3, 7101).replicas_of(3);
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
            ClusterConfig::local_replicated(5, 3, 7101),
            ClusterConfig::new(
                2,
                vec![node(1, "a:1", &[0, 1]), leader(2, "a:2", &[1, 0], &[1, 0])],
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

    /// Files written before replicas existed have no `leads`, and must stay byte for byte the same
    /// when written back.
    #[test]
    fn a_file_without_leads_is_written_without_leads() {
        let text = ClusterConfig::local(3, 7101).to_toml();
        assert!(!text.contains("leads"), "{text}");
        assert_eq!(ClusterConfig::parse(&text).expect("valid").to_toml(), text);
        let text = ClusterConfig::local_replicated(3, 2, 7101).to_toml();
        assert!(text.contains("leads = [0]"), "{text}");
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
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 1, 0]",
            "node 1: shard 0 appears twice in its shards",
        );
        check_error(
            "shard_count = 3\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 2]",
            "shard 1 is in no node's shards: it needs at least one replica",
        );

        check_leads_errors();

        let too_many = (1..=NODES_MAX + 1)
            .map(|id| node(id, &format!("a:{id}"), &[]))
            .collect();
        assert!(matches!(
            ClusterConfig::new(1, too_many),
            Err(ConfigError::TooManyNodes { node_count: 257 })
        ));
    }

    /// A file of nodes 1 and 2 holding both shards of 2, with `leads` of their own.
    fn with_leads(first: &str, second: &str) -> String {
        format!(
            "shard_count = 2\n[[node]]\nid = 1\naddress = \"a:1\"\nshards = [0, 1]\nleads = {first}\n\
             [[node]]\nid = 2\naddress = \"a:2\"\nshards = [1]\nleads = {second}"
        )
    }

    fn check_leads_errors() {
        ClusterConfig::parse(&with_leads("[0]", "[1]")).expect("valid");
        let cases = [
            (
                "[]",
                "[0]",
                "node 2: leads shard 0, which is not in its shards",
            ),
            (
                "[2]",
                "[]",
                "node 1: leads shard 2, which is not in its shards",
            ),
            (
                "[1, 0, 1]",
                "[]",
                "node 1: shard 1 appears twice in its leads",
            ),
            (
                "[1]",
                "[1]",
                "shard 1 is in the leads of both node 1 and node 2",
            ),
        ];
        for (first, second, expected) in cases {
            check_error(&with_leads(first, second), expected);
        }
    }

    /// Many replicas are fine up to REPLICAS_MAX; one more is refused, naming the node too many.
    #[test]
    fn a_shard_has_at_most_replicas_max_replicas() {
        let nodes = |count: u32| -> Vec<NodeConfig> {
            (1..=count)
                .map(|id| node(id, &format!("a:{id}"), &[0]))
                .collect()
        };
        let config = ClusterConfig::new(1, nodes(REPLICAS_MAX)).expect("valid");
        assert_eq!(config.replicas_of(0), [1, 2, 3, 4, 5, 6, 7]);
        let error = ClusterConfig::new(1, nodes(REPLICAS_MAX + 1)).expect_err("too many");
        assert_eq!(
            error.to_string(),
            "node 8: shard 0 is already in the shards of 7 earlier nodes, the most replicas a shard may have"
        );
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
    #[should_panic(expected = "the shard map is stale")]
    fn validate_catches_a_changed_leader() {
        let mut config = ClusterConfig::local_replicated(3, 3, 7101);
        config.nodes[0].leads = vec![1];
        config.nodes[1].leads = vec![0];
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
    fn local_replicated_spreads_replicas_and_leaders() {
        let config = ClusterConfig::local_replicated(5, 3, 9000);
        assert_eq!(config.shard_count, 5);
        assert_eq!(
            config.nodes[0],
            leader(1, "127.0.0.1:9000", &[0, 3, 4], &[0])
        );
        assert_eq!(
            config.nodes[4],
            leader(5, "127.0.0.1:9004", &[2, 3, 4], &[4])
        );
        // Shard s on nodes s + 1, s + 2, s + 3, wrapping; listed in file order.
        assert_eq!(config.replicas_of(0), [1, 2, 3]);
        assert_eq!(config.replicas_of(3), [1, 4, 5]);
        assert_eq!(config.replicas_of(4), [1, 2, 5]);
        for shard in 0..5 {
            assert_eq!(config.preferred_leader(shard), shard + 1);
        }

        // No more replicas than nodes.
        let config = ClusterConfig::local_replicated(2, 3, 9000);
        assert_eq!(config.replicas_of(0), [1, 2]);
        assert_eq!(config.preferred_leader(1), 2);

        // One replica: the unreplicated cluster, without `leads`.
        assert_eq!(
            ClusterConfig::local_replicated(3, 1, 9000),
            ClusterConfig::local(3, 9000)
        );
    }

    #[test]
    #[should_panic(expected = "a shard has 1 to 7 replicas, not 8")]
    fn local_replicated_refuses_more_than_replicas_max() {
        let _ = ClusterConfig::local_replicated(10, 8, 9000);
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
