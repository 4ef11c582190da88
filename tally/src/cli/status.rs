//! `tally status`: every node, and every shard's replica group as the nodes see it.
//!
//! Each node reports its own replicas (`NodeStatus.groups`). A shard's row is taken from the
//! replica that leads it in the highest term any replica reports: only a leader knows how the
//! other replicas keep up (current, lagging by N entries, down). Without a leader the row says
//! so, and each replica's state is what its own node reports (or `down` when the node does not
//! answer).

use std::collections::BTreeMap;

use net::{GroupStatus, NodeId, NodeStatus, ReplicaHealth, ReplicaRole};
use serde::Serialize;

use super::output::{print_output, render_table};
use super::{Exit, Failure};
use client::client::TallyClient;
use client::config::ClusterConfig;

pub(super) async fn status(client: TallyClient, json: bool) -> Result<Exit, Failure> {
    let statuses = client.cluster_status().await.map_err(Failure::read)?;
    let output = summarize(client.config(), &statuses);
    print_output(json, &output, &render(&output))?;
    Ok(Exit::Success)
}

/// A node's own status, with its address and shards from the cluster file.
#[derive(Debug, Serialize)]
struct NodeOutput {
    node_id: NodeId,
    address: String,
    up: bool,
    /// The shards the cluster file gives the node a replica of.
    shards: Vec<u32>,
    /// The shards whose replica on this node leads.
    leads: Vec<u32>,
    last_lsn: u64,
    in_doubt_count: u64,
    uptime_seconds: u64,
}

/// One shard's group.
#[derive(Debug, Serialize)]
struct ShardOutput {
    shard: u32,
    /// The leader of the highest term reported; `None` when no replica leads.
    leader: Option<NodeId>,
    term: u64,
    last_index: u64,
    commit_index: u64,
    applied_index: u64,
    in_doubt_count: u64,
    replicas: Vec<ReplicaOutput>,
}

#[derive(Debug, Serialize)]
struct ReplicaOutput {
    node_id: NodeId,
    /// `leader`, `current`, `lagging`, `down`, `candidate`, `follower` (no leader to judge it),
    /// `failed` (its node's storage failed) or `unknown`.
    state: &'static str,
    /// Entries it lacks of the leader's log (only when a leader reports it).
    lag: Option<u64>,
    /// What the replica's own node reports of it.
    applied_index: Option<u64>,
}

#[derive(Debug, Serialize)]
struct StatusOutput {
    nodes: Vec<NodeOutput>,
    shards: Vec<ShardOutput>,
}

fn summarize(config: &ClusterConfig, statuses: &[NodeStatus]) -> StatusOutput {
    let nodes = statuses
        .iter()
        .map(|status| {
            let node = config.node(status.node_id);
            NodeOutput {
                node_id: status.node_id,
                address: node.map_or_else(String::new, |node| node.address.clone()),
                up: status.up,
                shards: node.map_or_else(Vec::new, |node| node.shards.clone()),
                leads: status
                    .groups
                    .iter()
                    .filter(|group| group.role == ReplicaRole::Leader)
                    .map(|group| group.shard)
                    .collect(),
                last_lsn: status.last_lsn,
                in_doubt_count: status.in_doubt_count,
                uptime_seconds: status.uptime_seconds,
            }
        })
        .collect();
    // Every replica's own view, by shard then node.
    let mut views: BTreeMap<u32, BTreeMap<NodeId, &GroupStatus>> = BTreeMap::new();
    for status in statuses.iter().filter(|status| status.up) {
        for group in &status.groups {
            views
                .entry(group.shard)
                .or_default()
                .insert(status.node_id, group);
        }
    }
    let up: BTreeMap<NodeId, bool> = statuses.iter().map(|s| (s.node_id, s.up)).collect();
    let shards = (0..config.shard_count)
        .map(|shard| {
            let own = views.remove(&shard).unwrap_or_default();
            shard_output(shard, config.replicas_of(shard), &own, &up)
        })
        .collect();
    StatusOutput { nodes, shards }
}

fn shard_output(
    shard: u32,
    replicas: &[NodeId],
    own: &BTreeMap<NodeId, &GroupStatus>,
    up: &BTreeMap<NodeId, bool>,
) -> ShardOutput {
    let leader = own
        .iter()
        .filter(|(_, group)| group.role == ReplicaRole::Leader)
        .max_by_key(|(_, group)| group.term)
        .map(|(node, group)| (*node, *group));
    let newest = own
        .values()
        .max_by_key(|group| (group.term, group.commit_index));
    let replica_state = |node: NodeId| -> (&'static str, Option<u64>) {
        let mine = own.get(&node);
        if !up.get(&node).copied().unwrap_or(false) {
            return ("down", None);
        }
        match mine.map(|group| group.role) {
            Some(ReplicaRole::Failed) => return ("failed", None),
            Some(ReplicaRole::Leader) if leader.is_some_and(|(l, _)| l == node) => {
                return ("leader", Some(0));
            }
            Some(ReplicaRole::Candidate) => return ("candidate", None),
            None => return ("unknown", None),
            _ => {}
        }
        let Some((_, view)) = leader else {
            return ("follower", None);
        };
        match view.replicas.iter().find(|r| r.node_id == node) {
            Some(progress) => {
                let lag = view.last_index.saturating_sub(progress.matched_index);
                let state = match progress.health {
                    ReplicaHealth::Current => "current",
                    ReplicaHealth::Lagging => "lagging",
                    ReplicaHealth::Down => "down",
                    ReplicaHealth::Unknown => "unknown",
                };
                (state, Some(lag))
            }
            None => ("unknown", None),
        }
    };
    let source = leader.map(|(_, group)| group).or(newest.copied());
    ShardOutput {
        shard,
        leader: leader.map(|(node, _)| node),
        term: source.map_or(0, |group| group.term),
        last_index: source.map_or(0, |group| group.last_index),
        commit_index: source.map_or(0, |group| group.commit_index),
        applied_index: source.map_or(0, |group| group.applied_index),
        in_doubt_count: leader.map_or(0, |(_, group)| group.in_doubt_count),
        replicas: replicas
            .iter()
            .map(|&node| {
                let (state, lag) = replica_state(node);
                ReplicaOutput {
                    node_id: node,
                    state,
                    lag,
                    applied_index: own.get(&node).map(|group| group.applied_index),
                }
            })
            .collect(),
    }
}

fn render(output: &StatusOutput) -> String {
    let node_rows: Vec<Vec<String>> = output
        .nodes
        .iter()
        .map(|node| {
            let list = |shards: &[u32]| {
                let names: Vec<String> = shards.iter().map(u32::to_string).collect();
                if names.is_empty() {
                    "-".to_string()
                } else {
                    names.join(",")
                }
            };
            let mut row = vec![
                node.node_id.to_string(),
                node.address.clone(),
                if node.up { "up" } else { "down" }.to_string(),
                list(&node.shards),
            ];
            if node.up {
                row.push(list(&node.leads));
                row.push(node.last_lsn.to_string());
                row.push(node.in_doubt_count.to_string());
                row.push(format_uptime(node.uptime_seconds));
            } else {
                row.extend(["-", "-", "-", "-"].map(String::from));
            }
            row
        })
        .collect();
    let node_headers = [
        "node", "address", "state", "shards", "leads", "last lsn", "in doubt", "uptime",
    ];
    let shard_rows: Vec<Vec<String>> = output
        .shards
        .iter()
        .map(|shard| {
            let replicas: Vec<String> = shard
                .replicas
                .iter()
                .map(|replica| match (replica.state, replica.lag) {
                    ("lagging", Some(lag)) => format!("{} lagging by {lag}", replica.node_id),
                    (state, _) => format!("{} {state}", replica.node_id),
                })
                .collect();
            vec![
                shard.shard.to_string(),
                shard
                    .leader
                    .map_or_else(|| "none".to_string(), |leader| leader.to_string()),
                shard.term.to_string(),
                shard.commit_index.to_string(),
                shard.applied_index.to_string(),
                shard.in_doubt_count.to_string(),
                replicas.join(", "),
            ]
        })
        .collect();
    let shard_headers = [
        "shard", "leader", "term", "commit", "applied", "in doubt", "replicas",
    ];
    format!(
        "{}\n{}",
        render_table(&node_headers, &node_rows),
        render_table(&shard_headers, &shard_rows)
    )
}

/// `3d04h`, `2h05m`, `5m03s`, `42s`.
fn format_uptime(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m{:02}s", seconds % 60),
        (0, _, _) => format!("{hours}h{minutes:02}m"),
        _ => format!("{days}d{hours:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_are_short() {
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(5 * 60 + 3), "5m03s");
        assert_eq!(format_uptime(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(format_uptime(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
