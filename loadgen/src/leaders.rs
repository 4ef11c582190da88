//! Who leads each shard, from the nodes' own statuses: resolving a fault aimed at a role
//! (`kill:leader-of=S`) when it begins, and watching for leader changes during a run, for the
//! report and the chart.
//!
//! The leader of a shard is the node whose own status says it leads that shard, with the highest
//! term among those that say so (a leader cut off from its group may still believe it leads, in
//! an older term, until it hears of the newer one). A shard no node claims has no known leader.
//!
//! Every poll is bounded ([`POLL_TIMEOUT`]), resolving a leader retries for at most
//! [`RESOLVE_WITHIN`], and a run records at most [`CHANGES_MAX`] changes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::TallyClient;
use net::NodeId;

use crate::lock;

/// How often the leaders are asked for during a run.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Longest one poll of every node's status may take (each node's own answer is bounded by the
/// client's status timeout, 1 s).
pub const POLL_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a fault aimed at a shard's leader looks for one before it is given up.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(5);
/// Pause between two looks for a leader when none is known.
const RESOLVE_RETRY: Duration = Duration::from_millis(100);
/// Leader changes a run records; later ones are counted, not kept.
pub const CHANGES_MAX: usize = 10_000;

/// What one node says of one of its replica groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupView {
    pub shard: u32,
    /// Whether the node's replica is the leader.
    pub leads: bool,
    pub term: u64,
}

/// A shard's leader: its node and term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leader {
    pub node: NodeId,
    pub term: u64,
}

/// A shard's leader changed (another node, or the same one in a new term).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderChange {
    /// Seconds since the start of the measured run (when the change was seen).
    pub at_seconds: f64,
    pub shard: u32,
    pub leader: NodeId,
    pub term: u64,
}

/// Each shard's leader, from what each node says of its own groups.
pub fn leaders(reports: &[(NodeId, Vec<GroupView>)]) -> BTreeMap<u32, Leader> {
    let mut leaders: BTreeMap<u32, Leader> = BTreeMap::new();
    for (node, groups) in reports {
        for group in groups.iter().filter(|group| group.leads) {
            let candidate = Leader {
                node: *node,
                term: group.term,
            };
            leaders
                .entry(group.shard)
                .and_modify(|known| {
                    if candidate.term > known.term {
                        *known = candidate;
                    }
                })
                .or_insert(candidate);
        }
    }
    leaders
}

/// What the nodes that answered say of their groups (a node that does not answer says nothing);
/// `None` if the status poll failed or took longer than [`POLL_TIMEOUT`].
pub async fn group_reports(client: &TallyClient) -> Option<Vec<(NodeId, Vec<GroupView>)>> {
    let statuses = tokio::time::timeout(POLL_TIMEOUT, client.cluster_status())
        .await
        .ok()?
        .ok()?;
    Some(
        statuses
            .iter()
            .filter(|status| status.up)
            .map(|status| (status.node_id, group_views(status)))
            .collect(),
    )
}

/// What a node's status says of its groups.
fn group_views(status: &net::NodeStatus) -> Vec<GroupView> {
    status
        .groups
        .iter()
        .map(|group| GroupView {
            shard: group.shard,
            leads: group.role == net::ReplicaRole::Leader,
            term: group.term,
        })
        .collect()
}

/// Each shard's leader now, by one poll; `None` if the poll failed.
pub async fn current_leaders(client: &TallyClient) -> Option<BTreeMap<u32, Leader>> {
    group_reports(client).await.map(|reports| leaders(&reports))
}

/// The node leading `shard` now, asked of the cluster for up to [`RESOLVE_WITHIN`].
pub async fn resolve_leader(client: &TallyClient, shard: u32) -> Result<Leader, String> {
    let deadline = Instant::now() + RESOLVE_WITHIN;
    loop {
        if let Some(leader) = current_leaders(client)
            .await
            .and_then(|leaders| leaders.get(&shard).copied())
        {
            return Ok(leader);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no node said it leads shard {shard} within {} s",
                RESOLVE_WITHIN.as_secs()
            ));
        }
        tokio::time::sleep(RESOLVE_RETRY).await;
    }
}

/// The leader changes of a run, and how many more there were than it keeps.
#[derive(Debug, Default)]
pub struct LeaderChanges {
    pub changes: Vec<LeaderChange>,
    pub not_kept: u64,
}

/// Compares `now` with the leaders last seen, records every change into `changes` (a shard seen
/// for the first time is not a change), and remembers `now`. Returns the changes recorded.
pub fn record_changes(
    last: &mut BTreeMap<u32, Leader>,
    now: &BTreeMap<u32, Leader>,
    at_seconds: f64,
    changes: &mut LeaderChanges,
) -> Vec<LeaderChange> {
    let mut seen = Vec::new();
    for (shard, leader) in now {
        match last.insert(*shard, *leader) {
            Some(before) if before != *leader => {
                let change = LeaderChange {
                    at_seconds,
                    shard: *shard,
                    leader: leader.node,
                    term: leader.term,
                };
                if changes.changes.len() < CHANGES_MAX {
                    changes.changes.push(change.clone());
                } else {
                    changes.not_kept += 1;
                }
                seen.push(change);
            }
            _ => {}
        }
    }
    seen
}

/// Polls the leaders every [`WATCH_INTERVAL`] from `started` until aborted, recording each change
/// into `changes` and printing it.
pub(crate) async fn watch_leaders(
    client: TallyClient,
    started: Instant,
    changes: Arc<Mutex<LeaderChanges>>,
) {
    let mut last = BTreeMap::new();
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(reports) = group_reports(&client).await else {
            continue;
        };
        let at_seconds = started.elapsed().as_secs_f64();
        let seen = record_changes(
            &mut last,
            &leaders(&reports),
            at_seconds,
            &mut lock(&changes),
        );
        for change in seen {
            println!(
                "\nleader change at {at_seconds:.1} s: shard {} led by node {} (term {})",
                change.shard, change.leader, change.term
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(shard: u32, leads: bool, term: u64) -> GroupView {
        GroupView { shard, leads, term }
    }

    #[test]
    fn the_leader_is_the_claimant_of_the_highest_term() {
        let reports = vec![
            // Node 1 was cut off: it still says it leads shard 0, in term 2.
            (1, vec![view(0, true, 2), view(1, false, 3)]),
            (2, vec![view(0, true, 4), view(1, true, 3)]),
            (
                3,
                vec![view(0, false, 4), view(1, false, 3), view(2, false, 1)],
            ),
        ];
        let found = leaders(&reports);
        assert_eq!(found.get(&0), Some(&Leader { node: 2, term: 4 }));
        assert_eq!(found.get(&1), Some(&Leader { node: 2, term: 3 }));
        assert_eq!(found.get(&2), None, "nobody claims shard 2");
        // The order of the reports does not matter.
        let mut reversed = reports.clone();
        reversed.reverse();
        assert_eq!(leaders(&reversed), found);
    }

    #[test]
    fn changes_are_new_leaders_or_terms_not_first_sightings() {
        let mut last = BTreeMap::new();
        let mut changes = LeaderChanges::default();
        let at = |node, term| Leader { node, term };
        let first = BTreeMap::from([(0, at(1, 2)), (1, at(2, 2))]);
        assert!(record_changes(&mut last, &first, 0.2, &mut changes).is_empty());
        // Shard 0 without a known leader for a moment: no change, and none when it comes back.
        let gap = BTreeMap::from([(1, at(2, 2))]);
        assert!(record_changes(&mut last, &gap, 0.4, &mut changes).is_empty());
        assert!(record_changes(&mut last, &first, 0.6, &mut changes).is_empty());
        let failover = BTreeMap::from([(0, at(3, 3)), (1, at(2, 2))]);
        let seen = record_changes(&mut last, &failover, 10.5, &mut changes);
        assert_eq!(
            seen,
            vec![LeaderChange {
                at_seconds: 10.5,
                shard: 0,
                leader: 3,
                term: 3
            }]
        );
        // The same node elected again in a new term is a change too.
        let again = BTreeMap::from([(0, at(3, 5)), (1, at(2, 2))]);
        assert_eq!(
            record_changes(&mut last, &again, 12.0, &mut changes).len(),
            1
        );
        assert_eq!(changes.changes.len(), 2);
        assert_eq!(changes.not_kept, 0);
    }
}
