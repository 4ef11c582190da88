//! The scheduled faults, applied to the local cluster: each at its time, reverted after its
//! duration, and those still active healed when the measured window ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::faults::{Fault, FaultKind};
use crate::local::LocalCluster;
use crate::lock;
use crate::proxy::LinkMode;
use crate::recorder::Recorder;
use crate::report::FaultEvent;

/// Applies each fault at its time and reverts it after its duration; records both.
pub(crate) async fn run_faults(
    faults: Vec<Fault>,
    cluster: Arc<Mutex<LocalCluster>>,
    recorder: Arc<Mutex<Recorder>>,
    events: Arc<Mutex<Vec<FaultEvent>>>,
    active: Arc<Mutex<Vec<Fault>>>,
    started: Instant,
) {
    let mut schedule: Vec<(Duration, bool, Fault)> = Vec::new();
    for fault in faults {
        schedule.push((fault.at, true, fault.clone()));
        schedule.push((fault.at + fault.duration, false, fault));
    }
    // At equal times a fault ends before the next one begins.
    schedule.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    for (at, begin, fault) in schedule {
        tokio::time::sleep_until((started + at).into()).await;
        let label = format!(
            "{} {}",
            fault_label(&fault),
            if begin { "start" } else { "end" }
        );
        {
            let mut active = lock(&active);
            if begin {
                active.push(fault.clone());
            } else if let Some(position) = active.iter().position(|other| *other == fault) {
                active.remove(position);
            }
        }
        // Applied in place (a kill, a start or a signal takes milliseconds): no await between
        // recording the fault as active and applying it.
        let outcome = apply_fault(&mut lock(&cluster), &fault, begin);
        let label = match outcome {
            Ok(()) => label,
            Err(error) => format!("{label} FAILED: {error:#}"),
        };
        println!(
            "\nfault at {:.1} s: {label}",
            started.elapsed().as_secs_f64()
        );
        lock(&recorder).faults_this_second.push(label.clone());
        lock(&events).push(FaultEvent {
            at_seconds: started.elapsed().as_secs_f64(),
            label,
        });
    }
}

fn fault_label(fault: &Fault) -> String {
    let mut label = match fault.kind {
        FaultKind::Kill => format!("kill node {}", fault.node),
        FaultKind::Pause => format!("pause node {}", fault.node),
        FaultKind::Partition => format!("partition node {}", fault.node),
        FaultKind::Delay(delay) => format!("delay {} ms node {}", delay.as_millis(), fault.node),
        FaultKind::Drop(probability) => format!("drop p={probability} node {}", fault.node),
    };
    if fault.is_link_fault() {
        match fault.peer {
            Some(peer) => label.push_str(&format!("-{peer}")),
            None => label.push_str("-all"),
        }
    }
    label
}

fn apply_fault(cluster: &mut LocalCluster, fault: &Fault, begin: bool) -> anyhow::Result<()> {
    match (fault.kind, begin) {
        (FaultKind::Kill, true) => cluster.kill(fault.node),
        (FaultKind::Kill, false) => cluster.start_node(fault.node)?,
        (FaultKind::Pause, true) => cluster.signal(fault.node, libc::SIGSTOP),
        (FaultKind::Pause, false) => cluster.signal(fault.node, libc::SIGCONT),
        (_, false) => cluster.set_links(fault.node, fault.peer, LinkMode::Pass),
        (FaultKind::Partition, true) => {
            cluster.set_links(fault.node, fault.peer, LinkMode::Partition)
        }
        (FaultKind::Delay(delay), true) => {
            cluster.set_links(fault.node, fault.peer, LinkMode::Delay(delay))
        }
        (FaultKind::Drop(probability), true) => {
            cluster.set_links(fault.node, fault.peer, LinkMode::Drop { probability })
        }
    }
    Ok(())
}

/// Undoes the faults still active when the run ended: nodes running, links passing.
pub(crate) fn heal(cluster: &Mutex<LocalCluster>, faults: &[Fault]) {
    let mut cluster = lock(cluster);
    for fault in faults {
        if let Err(error) = apply_fault(&mut cluster, fault, false) {
            println!("healing {}: {error:#}", fault_label(fault));
        }
    }
}
