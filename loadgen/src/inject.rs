//! The scheduled faults, applied to the local cluster: each at its time, reverted after its
//! duration, and those still active healed when the measured window ends. A fault aimed at a
//! role (`leader-of=S`) is resolved to a node when it begins, by asking the cluster
//! (`leaders::resolve_leader`); it ends on that node. One whose target cannot be resolved is not
//! injected, and the report says so.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::TallyClient;

use crate::faults::{Fault, FaultKind, Target};
use crate::leaders::{Leader, resolve_leader};
use crate::local::LocalCluster;
use crate::lock;
use crate::proxy::LinkMode;
use crate::recorder::Recorder;
use crate::report::FaultEvent;

/// A fault that began, and the node it hit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActiveFault {
    pub(crate) fault: Fault,
    pub(crate) node: u32,
}

/// What the fault task shares with the run.
pub(crate) struct FaultRun {
    pub(crate) cluster: Arc<Mutex<LocalCluster>>,
    pub(crate) client: TallyClient,
    pub(crate) recorder: Arc<Mutex<Recorder>>,
    pub(crate) events: Arc<Mutex<Vec<FaultEvent>>>,
    pub(crate) active: Arc<Mutex<Vec<ActiveFault>>>,
    pub(crate) started: Instant,
}

/// Applies each fault at its time and reverts it after its duration; records both.
pub(crate) async fn run_faults(faults: Vec<Fault>, run: FaultRun) {
    let mut schedule: Vec<(Duration, bool, usize)> = Vec::new();
    for (index, fault) in faults.iter().enumerate() {
        schedule.push((fault.at, true, index));
        schedule.push((fault.at + fault.duration, false, index));
    }
    // At equal times a fault ends before the next one begins.
    schedule.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    // The node each fault hit, once it began.
    let mut hit: Vec<Option<u32>> = vec![None; faults.len()];
    for (at, begin, index) in schedule {
        tokio::time::sleep_until((run.started + at).into()).await;
        let fault = &faults[index];
        let (node, label) = if begin {
            match resolve(&run.client, fault.target).await {
                Ok((node, leader)) => (node, fault_label(fault, node, leader, "start")),
                Err(reason) => {
                    let label =
                        format!("{} {} NOT INJECTED: {reason}", fault.action(), fault.target);
                    record(&run, label, None);
                    continue;
                }
            }
        } else {
            // A fault that was not injected has nothing to end.
            let Some(node) = hit[index] else { continue };
            (node, fault_label(fault, node, None, "end"))
        };
        let active = ActiveFault {
            fault: fault.clone(),
            node,
        };
        {
            let mut actives = lock(&run.active);
            if begin {
                actives.push(active.clone());
                hit[index] = Some(node);
            } else if let Some(position) = actives.iter().position(|other| *other == active) {
                actives.remove(position);
            }
        }
        // Applied in place (a kill, a start or a signal takes milliseconds): no await between
        // recording the fault as active and applying it.
        let outcome = apply_fault(&mut lock(&run.cluster), &active, begin);
        let label = match outcome {
            Ok(()) => label,
            Err(error) => format!("{label} FAILED: {error:#}"),
        };
        record(&run, label, Some(node));
    }
}

/// Prints a fault event and records it in the timeline and the report.
fn record(run: &FaultRun, label: String, node: Option<u32>) {
    let at_seconds = run.started.elapsed().as_secs_f64();
    println!("\nfault at {at_seconds:.1} s: {label}");
    lock(&run.recorder).faults_this_second.push(label.clone());
    lock(&run.events).push(FaultEvent {
        at_seconds,
        label,
        node,
    });
}

/// The node a fault hits now, and the leadership that made it the target.
async fn resolve(client: &TallyClient, target: Target) -> Result<(u32, Option<Leader>), String> {
    match target {
        Target::Node(node) => Ok((node, None)),
        Target::LeaderOf(shard) => {
            let leader = resolve_leader(client, shard).await?;
            Ok((leader.node, Some(leader)))
        }
    }
}

/// `kill node 2 start`, `blackhole node 1-all (leader of shard 0, term 3) start`.
fn fault_label(fault: &Fault, node: u32, leader: Option<Leader>, phase: &str) -> String {
    let mut label = format!("{} node {node}", fault.action());
    if fault.is_link_fault() {
        match fault.peer {
            Some(peer) => label.push_str(&format!("-{peer}")),
            None => label.push_str("-all"),
        }
    }
    if let Target::LeaderOf(shard) = fault.target {
        match leader {
            Some(leader) => {
                label.push_str(&format!(" (leader of shard {shard}, term {})", leader.term))
            }
            None => label.push_str(&format!(" (leader of shard {shard})")),
        }
    }
    label.push(' ');
    label.push_str(phase);
    label
}

fn apply_fault(
    cluster: &mut LocalCluster,
    active: &ActiveFault,
    begin: bool,
) -> anyhow::Result<()> {
    let (fault, node) = (&active.fault, active.node);
    match (fault.kind, begin) {
        (FaultKind::Kill, true) => cluster.kill(node),
        (FaultKind::Kill, false) => cluster.start_node(node)?,
        (FaultKind::Pause, true) => cluster.signal(node, libc::SIGSTOP),
        (FaultKind::Pause, false) => cluster.signal(node, libc::SIGCONT),
        (_, false) => cluster.set_links(node, fault.peer, LinkMode::Pass),
        // Aimed at a role, a partition is silent: the leader keeps running, cut off.
        (FaultKind::Partition, true) if matches!(fault.target, Target::LeaderOf(_)) => {
            cluster.set_links(node, None, LinkMode::Blackhole)
        }
        (FaultKind::Partition, true) => cluster.set_links(node, fault.peer, LinkMode::Partition),
        (FaultKind::Blackhole, true) => cluster.set_links(node, fault.peer, LinkMode::Blackhole),
        (FaultKind::Delay(delay), true) => {
            cluster.set_links(node, fault.peer, LinkMode::Delay(delay))
        }
        (FaultKind::Drop(probability), true) => {
            cluster.set_links(node, fault.peer, LinkMode::Drop { probability })
        }
    }
    Ok(())
}

/// Undoes the faults still active when the run ended: nodes running, links passing.
pub(crate) fn heal(cluster: &Mutex<LocalCluster>, faults: &[ActiveFault]) {
    let mut cluster = lock(cluster);
    for active in faults {
        if let Err(error) = apply_fault(&mut cluster, active, false) {
            println!(
                "healing {}: {error:#}",
                fault_label(&active.fault, active.node, None, "end")
            );
        }
    }
}
