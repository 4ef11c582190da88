//! The run: set-up, then the clients and the faults for `--duration`, then the checks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use client::config::ClusterConfig;
use client::{ClientOptions, TallyClient};

use crate::checks::check;
use crate::inject::{FaultRun, heal, run_faults};
use crate::leaders::{LeaderChanges, watch_leaders};
use crate::local::LocalCluster;
use crate::recorder::{Recorder, tick};
use crate::setup::{read_all_balances, set_up_accounts, wait_until_up};
use crate::worker::{Ledger, Worker};
use crate::workload::Accounts;
use crate::{Checks, LoadgenArgs, Report, lock};

/// The name of the signal that interrupted the run, once one did.
pub type Interruption = tokio::sync::watch::Receiver<Option<&'static str>>;

/// Resolves once the run is interrupted, with the signal's name; never if it cannot be.
async fn interrupted(interruption: &mut Interruption) -> &'static str {
    match interruption.wait_for(Option::is_some).await {
        Ok(name) => name.expect("waited for it"),
        Err(_) => std::future::pending().await,
    }
}

/// Creates and funds the accounts, runs the load with its faults, checks. Interrupted during
/// set-up it stops with an error; during the load, the measured window closes there and the
/// report covers what ran, its checks replaced by the interruption (so the run fails).
pub async fn run(
    args: &LoadgenArgs,
    config: ClusterConfig,
    cluster: Option<Arc<Mutex<LocalCluster>>>,
    mut interruption: Interruption,
) -> anyhow::Result<Report> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mode = match args.rate {
        Some(rate) => format!("open loop at {rate:.0}/s over {} clients", args.clients),
        None => format!("closed loop, {} clients", args.clients),
    };
    println!(
        "loadgen: {} nodes, {} accounts, {mode}, client batch {}, {:.0} s, {}, cross-shard {:.0}%, seed {seed}",
        config.nodes.len(),
        args.accounts,
        args.client_batch,
        args.duration,
        if args.smallbank {
            "SmallBank mix".to_owned()
        } else {
            format!("{:?}", args.pattern())
        },
        args.cross_shard * 100.0
    );
    let client = TallyClient::new(
        config.clone(),
        ClientOptions {
            connections_per_node: 4,
            ..ClientOptions::default()
        },
    );
    let started = Instant::now();
    let set_up = async {
        wait_until_up(&client).await?;
        // A node of ours that could not start (its port taken since the check) leaves whatever
        // answers at its address to be driven instead: stop before writing anything.
        if let Some(cluster) = &cluster
            && let Some((node, status)) = lock(cluster).exited().first()
        {
            anyhow::bail!(
                "node {node} of the local cluster exited during start-up ({status}); see its log"
            );
        }
        set_up_accounts(&client, args.accounts, args.initial_balance).await?;
        read_all_balances(&client, args.accounts).await
    };
    let initial = tokio::select! {
        initial = set_up => initial?,
        name = interrupted(&mut interruption) => {
            anyhow::bail!("interrupted by {name} during set-up: nothing was measured")
        }
    };
    println!(
        "set-up: {} accounts created and funded in {:.1} s",
        args.accounts,
        started.elapsed().as_secs_f64()
    );

    let accounts = Arc::new(Accounts::new(&config, args.accounts, args.pattern(), seed));
    let recorder = Arc::new(Mutex::new(Recorder::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let start_unix_seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |elapsed| elapsed.as_secs_f64());
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for index in 0..args.clients {
        let worker = Worker {
            client: client.clone(),
            accounts: accounts.clone(),
            recorder: recorder.clone(),
            stop: stop.clone(),
            args: args.clone(),
            seed: seed ^ (u64::from(index) << 32 | u64::from(index)),
            started,
            ends: started + Duration::from_secs_f64(args.duration),
            index,
        };
        clients.spawn(worker.run());
    }
    let fault_events = Arc::new(Mutex::new(Vec::new()));
    let active_faults = Arc::new(Mutex::new(Vec::new()));
    let fault_task = cluster.clone().map(|cluster| {
        tokio::spawn(run_faults(
            args.faults.clone(),
            FaultRun {
                cluster,
                client: client.clone(),
                recorder: recorder.clone(),
                events: fault_events.clone(),
                active: active_faults.clone(),
                started,
            },
        ))
    });
    let leader_changes = Arc::new(Mutex::new(LeaderChanges::default()));
    let leader_task = tokio::spawn(watch_leaders(
        client.clone(),
        started,
        leader_changes.clone(),
    ));
    let (timeline, intervals) = tick(
        &recorder,
        started,
        Duration::from_secs_f64(args.duration),
        interrupted(&mut interruption),
    )
    .await;
    let interrupted_by = *interruption.borrow();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Faults end with the measured window: the clients' last requests, and the checks, meet a
    // whole cluster. The fault task applies faults synchronously, so aborting it at its await
    // points never leaves one half-applied.
    if let Some(task) = fault_task {
        task.abort();
        let _ = task.await;
    }
    leader_task.abort();
    let _ = leader_task.await;
    if let Some(cluster) = &cluster {
        heal(cluster, &lock(&active_faults));
    }
    let mut ledger = Ledger::default();
    while let Some(joined) = clients.join_next().await {
        let part = joined.context("client task panicked")?;
        for (account, delta) in part.deltas {
            *ledger.deltas.entry(account).or_default() += delta;
        }
        ledger.committed_sample.extend(part.committed_sample);
        ledger.aborted_sample.extend(part.aborted_sample);
        ledger.unknown_transfers.extend(part.unknown_transfers);
        ledger.unknown_movements.extend(part.unknown_movements);
    }
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| anyhow::anyhow!("recorder still shared"))?
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let faults = lock(&fault_events).clone();
    let leader_changes = std::mem::take(&mut *lock(&leader_changes));
    let mut checks = match interrupted_by {
        // Stopping is what was asked for: the checks (an audit, status look-ups, resends of
        // unknown outcomes) could take long against a faulty cluster.
        Some(name) => Checks {
            problems: vec![format!(
                "interrupted by {name} after {:.1} s: the end-of-run checks did not run",
                elapsed.as_secs_f64()
            )],
            ..Checks::default()
        },
        // A signal during the checks stops them too: whoever sent it wants the command to end.
        None => tokio::select! {
            checks = check(&client, cluster.as_ref(), args, &initial, ledger) => checks,
            name = interrupted(&mut interruption) => Checks {
                problems: vec![format!(
                    "interrupted by {name} during the end-of-run checks: they did not finish"
                )],
                ..Checks::default()
            },
        },
    };
    if recorder.committed == 0 {
        checks
            .problems
            .push("no transfer committed: nothing was measured".into());
    }
    Ok(Report {
        elapsed,
        committed: recorder.committed,
        aborted: recorder.aborted,
        unknown: recorder.unknown,
        failed: recorder.failed,
        other_ops: recorder.other_ops,
        latency: recorder.total,
        timeline,
        intervals,
        faults,
        leader_changes,
        checks,
        start_unix_seconds,
    })
}
