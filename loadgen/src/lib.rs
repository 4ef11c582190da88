//! Tally's load generator: throughput and tail latency of a cluster, under faults. `tally
//! loadgen` starts a local cluster (or drives an existing one), creates and funds the accounts,
//! runs the load for `--duration`, injects the scheduled faults, and ends with an audit through
//! the cluster: money conserved, every transfer it saw committed applied exactly once, every one
//! it saw aborted absent, nothing in doubt.
//!
//! Closed loop (`--clients N`): each client sends its next request when the previous one is
//! answered; latency runs from send to answer. Open loop (`--rate R`): each client has a schedule
//! of intended send times (R/N per second) and latency runs from the *intended* send time, so a
//! stall is charged to every request it delayed (no coordinated omission).
//!
//! Latencies are recorded in HdrHistogram (microseconds, 3 significant digits), overall and per
//! second; `--out DIR` writes them in the formats the HdrHistogram tools read.
//!
//! One module per part of a run: `args` (the options), `setup` (waiting for the cluster, creating
//! and funding the accounts), `run` (the measured window), `worker` (one client), `recorder` (the
//! histograms and the per-second timeline), `inject` (applying the scheduled faults), `checks`
//! (the end-of-run checks) and `summary` (the printed report and the files).

mod args;
pub mod chart;
mod checks;
pub mod control;
pub mod faults;
pub mod hist;
mod inject;
pub mod leaders;
pub mod local;
pub mod proxy;
mod recorder;
pub mod report;
mod run;
mod setup;
mod summary;
pub mod up;
mod worker;
pub mod workload;

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use client::config::ClusterConfig;

pub use crate::args::LoadgenArgs;
pub use crate::checks::Checks;
use crate::faults::Fault;
use crate::local::LocalCluster;
pub use crate::run::{Interruption, run};
pub use crate::summary::Report;
use crate::summary::write_files;

/// Runs `tally loadgen`: prints progress and the report, writes the files; returns whether
/// every check passed.
pub fn main(args: LoadgenArgs) -> anyhow::Result<bool> {
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let (config, cluster) = match &args.cluster {
            Some(path) => (ClusterConfig::load(path)?, None),
            None => {
                let proxies = args.faults.iter().any(Fault::is_link_fault);
                let cluster =
                    LocalCluster::start(
                        args.nodes,
                        args.replicas,
                        args.data_dir.clone(),
                        args.base_port,
                        proxies,
                    )
                    .await?;
                println!(
                    "loadgen: local cluster in {} ({})",
                    cluster.data_dir.display(),
                    cluster.cluster_file.display()
                );
                (cluster.config.clone(), Some(Arc::new(Mutex::new(cluster))))
            }
        };
        // The first SIGINT or SIGTERM ends the run early: the measured window closes, the
        // clients stop, and the report of what ran is printed without the end-of-run checks.
        // Before the load starts it stops the run at once; a second signal stops everything.
        let (interrupt, interruption) = tokio::sync::watch::channel(None);
        let watcher = tokio::spawn(async move {
            let first = interrupted().await?;
            let _ = interrupt.send(Some(first));
            interrupted().await
        });
        let report = tokio::select! {
            report = run(&args, config, cluster.clone(), interruption) => report,
            second = watcher => {
                let name = second.context("the signal watcher panicked")??;
                stop_cluster(cluster.as_ref());
                bail!("interrupted again by {name}: the local cluster is stopped and its files removed");
            }
        };
        stop_cluster(cluster.as_ref());
        let report = report?;
        print!("{}", report.render());
        if let Some(out) = &args.out {
            write_files(&args, &report, out)?;
            println!(
                "files: {}/{{summary.json, latency.hgrm, latency.hlog, timeline.csv, chart.svg}}",
                out.display()
            );
        }
        Ok(report.checks.passed())
    })
}

/// Stops the local cluster this command started, if any: its nodes are this command's to stop.
/// Its temporary directory goes when the cluster is dropped, once the run's tasks are gone with
/// the runtime.
fn stop_cluster(cluster: Option<&Arc<Mutex<LocalCluster>>>) {
    if let Some(cluster) = cluster {
        lock(cluster).stop();
    }
}

/// Resolves when SIGINT or SIGTERM arrives, with its name.
async fn interrupted() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
