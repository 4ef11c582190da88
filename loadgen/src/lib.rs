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

pub mod chart;
pub mod faults;
pub mod hist;
pub mod local;
pub mod proxy;
pub mod report;
pub mod workload;

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use client::config::ClusterConfig;
use client::{AuditVerdict, ClientError, ClientOptions, TallyClient};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use net::{AccountId, TransferId, TransferOutcome, TransferState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::faults::{Fault, FaultKind};
use crate::local::LocalCluster;
use crate::proxy::LinkMode;
use crate::report::{FaultEvent, TimelineRow};
use crate::workload::{Accounts, Pattern, SmallBank};

/// Accounts created and funded at once during set-up.
const SETUP_CONCURRENCY: usize = 256;
/// Largest latency the histograms hold (60 s, in microseconds); longer ones are clamped.
const LATENCY_MAX_MICROS: u64 = 60_000_000;
/// Ids of committed and aborted transfers each client keeps for the end-of-run status check.
const STATUS_SAMPLE_PER_CLIENT: usize = 200;
/// How long the end-of-run checks wait for the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// `tally loadgen`: every option.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Drive this existing cluster instead of starting a local one.
    #[arg(long, env = "TALLY_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Nodes of the local cluster started when no --cluster is given.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Data dir of the local cluster (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First port of the local cluster (node i listens on base-port + i - 1).
    #[arg(long, default_value_t = 7401)]
    pub base_port: u16,
    /// Accounts to create, ids 1..=N (an existing account with the same attributes is reused).
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// Each account is topped up to this balance before the run.
    #[arg(long, default_value_t = 1_000_000)]
    pub initial_balance: u64,
    /// Concurrent clients. Closed loop: each waits for its answers before sending again.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Open loop: this many requests per second in total, on a fixed schedule; latency is
    /// measured from each request's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Client-side batching: each client sends this many requests at once (pipelined on its
    /// connection) and waits for all of them. Batching in the node is separate and always on.
    #[arg(long, default_value_t = 1)]
    pub client_batch: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Fraction of transfers whose two accounts are on different nodes (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub cross_shard: f64,
    /// Which accounts transfers touch: uniform, many-to-one, one-to-many, circular.
    #[arg(long, default_value = "uniform")]
    pub pattern: Pattern,
    /// Zipfian skew: accounts drawn with probability proportional to 1/rank^THETA.
    #[arg(long, conflicts_with = "hot_spot")]
    pub zipf: Option<f64>,
    /// Hot spot X:Y: X% of picks come from Y% of the accounts.
    #[arg(long, value_parser = workload::parse_hot_spot)]
    pub hot_spot: Option<Pattern>,
    /// Run the SmallBank mix (six transaction types over checking and savings accounts, see
    /// README) instead of plain transfers.
    #[arg(long)]
    pub smallbank: bool,
    /// Largest amount of one transfer, deposit or withdrawal (each is uniform in 1..=N).
    #[arg(long, default_value_t = 100)]
    pub max_amount: u64,
    /// A fault: KIND:node=N[,peer=M],at=T,for=D with KIND kill, pause, partition, delay[,ms=X]
    /// or drop[,p=P]. Repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<Fault>,
    /// Write summary.json, latency.hgrm, latency.hlog, timeline.csv and chart.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the workload's random choices (default: time-based, printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl LoadgenArgs {
    fn pattern(&self) -> Pattern {
        match (self.zipf, self.hot_spot) {
            (Some(theta), _) => Pattern::Zipf { theta },
            (None, Some(hot_spot)) => hot_spot,
            (None, None) => self.pattern,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=1.0).contains(&self.cross_shard) {
            bail!("--cross-shard must be between 0 and 1");
        }
        if self.accounts < 4 || self.clients == 0 || self.max_amount == 0 || self.client_batch == 0
        {
            bail!("need at least 4 accounts, 1 client, a positive --max-amount and --client-batch");
        }
        if self
            .zipf
            .is_some_and(|theta| !(theta > 0.0 && theta < 10.0))
        {
            bail!("--zipf must be between 0 and 10");
        }
        if self.rate.is_some_and(|rate| rate.is_nan() || rate <= 0.0) {
            bail!("--rate must be positive");
        }
        if self.duration.is_nan() || self.duration <= 0.0 {
            bail!("--duration must be positive");
        }
        if self.cluster.is_some() {
            if let Some(fault) = self.faults.first() {
                bail!(
                    "faults ({fault}) need a cluster started by loadgen (it restarts killed nodes and proxies the links); drop --cluster"
                );
            }
        }
        for fault in &self.faults {
            if fault.node == 0
                || fault.node > self.nodes
                || fault.peer.is_some_and(|p| p == 0 || p > self.nodes)
            {
                bail!("fault {fault}: the cluster has nodes 1..={}", self.nodes);
            }
            if fault.duration.is_zero() {
                bail!("fault {fault} lasts no time");
            }
            if fault.at.as_secs_f64() >= self.duration {
                bail!(
                    "fault {fault} starts after the run ends ({} s)",
                    self.duration
                );
            }
        }
        Ok(())
    }
}

/// Every outcome of the run, and what the end-of-run checks found.
pub struct Report {
    pub elapsed: Duration,
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    pub unknown: u64,
    pub failed: u64,
    /// Non-transfer operations answered (SmallBank reads, deposits, withdrawals).
    pub other_ops: u64,
    pub latency: Histogram<u64>,
    pub timeline: Vec<TimelineRow>,
    pub intervals: Vec<Histogram<u64>>,
    pub faults: Vec<FaultEvent>,
    pub checks: Checks,
    pub start_unix_seconds: f64,
}

/// The end-of-run checks.
#[derive(Debug, Default)]
pub struct Checks {
    /// The verdict on the cluster's audit; `None` if no node answered it (the error is in
    /// `problems`).
    pub audit: Option<AuditVerdict>,
    /// Unknown-outcome transfers, resolved by status afterwards.
    pub unknown_resolved_committed: u64,
    pub unknown_resolved_aborted: u64,
    /// Unknown-outcome deposits and withdrawals, resolved by resending them with their ids
    /// afterwards: applied (earlier, or by the resend), or refused.
    pub unknown_movements_resolved_applied: u64,
    pub unknown_movements_resolved_refused: u64,
    /// Accounts whose balance differs from what the acknowledged outcomes imply.
    pub balance_mismatches: u64,
    /// Sampled transfers whose status contradicts what the client heard.
    pub status_mismatches: u64,
    pub statuses_checked: u64,
    pub problems: Vec<String>,
}

impl Checks {
    pub fn passed(&self) -> bool {
        self.audit.as_ref().is_some_and(AuditVerdict::passed)
            && self.balance_mismatches == 0
            && self.status_mismatches == 0
            && self.statuses_checked > 0
            && self.problems.is_empty()
    }
}

impl Report {
    pub fn committed_per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency in milliseconds at a quantile.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// The report printed at the end of a run.
    pub fn render(&self) -> String {
        let aborted: u64 = self.aborted.values().sum();
        let mut out = String::new();
        out.push_str(&format!(
            "elapsed {:.1} s: {} committed ({:.0}/s), {} aborted, {} unknown outcome, {} failed",
            self.elapsed.as_secs_f64(),
            self.committed,
            self.committed_per_second(),
            aborted,
            self.unknown,
            self.failed
        ));
        if self.other_ops > 0 {
            out.push_str(&format!(", {} other operations", self.other_ops));
        }
        out.push('\n');
        for (reason, count) in &self.aborted {
            out.push_str(&format!("  aborted, {reason}: {count}\n"));
        }
        out.push_str(&format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}\n",
            self.latency_ms(0.5),
            self.latency_ms(0.9),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency_ms(0.9999),
            self.latency.max() as f64 / 1000.0
        ));
        for fault in &self.faults {
            out.push_str(&format!(
                "fault at {:.1} s: {}\n",
                fault.at_seconds, fault.label
            ));
        }
        let checks = &self.checks;
        match &checks.audit {
            Some(verdict) => out.push_str(&format!("audit: {verdict}\n")),
            None => out.push_str("audit: no answer\n"),
        }
        out.push_str(&format!(
            "exactly once: {} accounts off; {} of {} sampled statuses contradict their answer; unknown outcomes resolved: {} committed, {} aborted; deposits and withdrawals {} applied, {} refused",
            checks.balance_mismatches,
            checks.status_mismatches,
            checks.statuses_checked,
            checks.unknown_resolved_committed,
            checks.unknown_resolved_aborted,
            checks.unknown_movements_resolved_applied,
            checks.unknown_movements_resolved_refused
        ));
        out.push('\n');
        for problem in &checks.problems {
            out.push_str(&format!("problem: {problem}\n"));
        }
        out.push_str(if checks.passed() {
            "invariants: PASS\n"
        } else {
            "invariants: FAIL\n"
        });
        out
    }
}

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
                    LocalCluster::start(args.nodes, args.data_dir.clone(), args.base_port, proxies)
                        .await?;
                println!(
                    "loadgen: local cluster in {} ({})",
                    cluster.data_dir.display(),
                    cluster.cluster_file.display()
                );
                (cluster.config.clone(), Some(Arc::new(Mutex::new(cluster))))
            }
        };
        let report = tokio::select! {
            report = run(&args, config, cluster.clone()) => report,
            signal = interrupted() => {
                // The nodes are this command's to stop; its temporary directory goes when the
                // cluster is dropped, once the run's tasks are gone with the runtime.
                if let Some(cluster) = &cluster {
                    lock(cluster).stop();
                }
                let name = signal?;
                bail!("interrupted by {name}: the local cluster is stopped and its files removed");
            }
        };
        if let Some(cluster) = cluster {
            lock(&cluster).stop();
        }
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

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("valid histogram bounds")
}

/// What every client records into, shared; the ticker takes a row out of it every second.
struct Recorder {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    committed: u64,
    aborted: BTreeMap<String, u64>,
    unknown: u64,
    failed: u64,
    other_ops: u64,
    /// This second's counts.
    second: [u64; 4],
    faults_this_second: Vec<String>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            total: new_histogram(),
            interval: new_histogram(),
            committed: 0,
            aborted: BTreeMap::new(),
            unknown: 0,
            failed: 0,
            other_ops: 0,
            second: [0; 4],
            faults_this_second: Vec::new(),
        }
    }

    fn latency(&mut self, micros: u64) {
        let micros = micros.clamp(1, LATENCY_MAX_MICROS);
        self.total.record(micros).expect("clamped into range");
        self.interval.record(micros).expect("clamped into range");
    }
}

/// What one client saw, for the end-of-run checks.
#[derive(Default)]
struct Ledger {
    /// Net change per account implied by acknowledged outcomes.
    deltas: HashMap<AccountId, i128>,
    committed_sample: Vec<TransferId>,
    aborted_sample: Vec<TransferId>,
    /// Transfers whose outcome the client never heard: (id, debit, credit, amount).
    unknown_transfers: Vec<(TransferId, AccountId, AccountId, u64)>,
    /// Deposits and withdrawals whose outcome the client never heard, resent with their ids at
    /// the end.
    unknown_movements: Vec<Movement>,
}

/// A deposit (positive `change`) or withdrawal (negative) of `change.unsigned_abs()`.
#[derive(Debug, Clone, Copy)]
struct Movement {
    id: TransferId,
    account: AccountId,
    change: i128,
}

impl Movement {
    fn new(account: AccountId, amount: u64, deposit: bool) -> Movement {
        let amount = i128::from(amount);
        Movement {
            id: TallyClient::new_transfer_id(),
            account,
            change: if deposit { amount } else { -amount },
        }
    }

    /// Sends it (again: the node applies an id at most once and answers with its first answer).
    async fn send(&self, client: &TallyClient) -> Result<(), ClientError> {
        let amount = u64::try_from(self.change.unsigned_abs()).expect("made from a u64");
        if self.change > 0 {
            client.deposit(self.id, self.account, amount).await?;
        } else {
            client.withdraw(self.id, self.account, amount).await?;
        }
        Ok(())
    }
}

/// One request a client sends.
enum Request {
    Transfer {
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    },
    SmallBank(SmallBank),
}

/// Creates and funds the accounts, runs the load with its faults, checks.
pub async fn run(
    args: &LoadgenArgs,
    config: ClusterConfig,
    cluster: Option<Arc<Mutex<LocalCluster>>>,
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
    wait_until_up(&client).await?;
    let started = Instant::now();
    set_up_accounts(&client, args.accounts, args.initial_balance).await?;
    let initial = read_all_balances(&client, args.accounts).await?;
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
            cluster,
            recorder.clone(),
            fault_events.clone(),
            active_faults.clone(),
            started,
        ))
    });
    let (timeline, intervals) =
        tick(&recorder, started, Duration::from_secs_f64(args.duration)).await;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    // Faults end with the measured window: the clients' last requests, and the checks, meet a
    // whole cluster. The fault task applies faults synchronously, so aborting it at its await
    // points never leaves one half-applied.
    if let Some(task) = fault_task {
        task.abort();
        let _ = task.await;
    }
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
    let mut checks = check(&client, cluster.as_ref(), args, &initial, ledger).await;
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
        checks,
        start_unix_seconds,
    })
}

/// Every second until `duration`: a timeline row and an interval histogram, and the progress
/// line (rewritten in place on a terminal, one line per second otherwise).
async fn tick(
    recorder: &Mutex<Recorder>,
    started: Instant,
    duration: Duration,
) -> (Vec<TimelineRow>, Vec<Histogram<u64>>) {
    let terminal = std::io::stdout().is_terminal();
    let mut rows = Vec::new();
    let mut intervals = Vec::new();
    let mut second = 0u64;
    loop {
        second += 1;
        let due = started + Duration::from_secs(second).min(duration);
        tokio::time::sleep_until(due.into()).await;
        let (row, interval, totals) = {
            let mut recorder = lock(recorder);
            let interval = std::mem::replace(&mut recorder.interval, new_histogram());
            let [committed, aborted, unknown, failed] = std::mem::take(&mut recorder.second);
            let row = TimelineRow {
                second,
                committed,
                aborted,
                unknown,
                failed,
                p50_us: interval.value_at_quantile(0.5),
                p99_us: interval.value_at_quantile(0.99),
                max_us: interval.max(),
                faults: std::mem::take(&mut recorder.faults_this_second),
            };
            let aborted_total: u64 = recorder.aborted.values().sum();
            (
                row,
                interval,
                (aborted_total, recorder.unknown + recorder.failed),
            )
        };
        let line = format!(
            "[{:>5.1} s] {:>7} committed/s  p99 {:>8.3} ms  aborted {:>7}  unknown+failed {:>5}  faults {}",
            started.elapsed().as_secs_f64(),
            row.committed,
            row.p99_us as f64 / 1000.0,
            totals.0,
            totals.1,
            if row.faults.is_empty() {
                "-".to_owned()
            } else {
                row.faults.join("; ")
            }
        );
        if terminal {
            print!("\r{line}\x1b[K");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{line}");
        }
        rows.push(row);
        intervals.push(interval);
        if started.elapsed() >= duration {
            if terminal {
                println!();
            }
            return (rows, intervals);
        }
    }
}

/// One client: sends requests until told to stop, records what it hears.
struct Worker {
    client: TallyClient,
    accounts: Arc<Accounts>,
    recorder: Arc<Mutex<Recorder>>,
    stop: Arc<AtomicBool>,
    args: LoadgenArgs,
    seed: u64,
    started: Instant,
    /// The end of the measured window: no request is scheduled after it.
    ends: Instant,
    index: u32,
}

impl Worker {
    async fn run(self) -> Ledger {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut ledger = Ledger::default();
        let mut ring = u64::from(self.index) * 7919;
        // Open loop: this client's share of the rate, on a fixed schedule.
        let interval = self.args.rate.map(|rate| {
            Duration::from_secs_f64(
                f64::from(self.args.client_batch) * f64::from(self.args.clients) / rate,
            )
        });
        let mut intended = self.started
            + interval.map_or(Duration::ZERO, |interval| {
                interval.mul_f64(f64::from(self.index) / f64::from(self.args.clients))
            });
        while !self.stop.load(Ordering::Relaxed) {
            if interval.is_some() {
                if intended >= self.ends {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                if self.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            let began = if interval.is_some() {
                intended
            } else {
                Instant::now()
            };
            let batch: Vec<Request> = (0..self.args.client_batch)
                .map(|_| self.next_request(&mut rng, &mut ring))
                .collect();
            // Requests of one client share its connection: awaiting them together pipelines
            // them.
            let answers = join_all(batch.into_iter().map(|request| async {
                let answer = self.send(request).await;
                (answer, Instant::now())
            }))
            .await;
            let mut recorder = lock(&self.recorder);
            for (answer, done) in answers {
                let micros = done.duration_since(began).as_micros() as u64;
                self.record(&mut recorder, &mut ledger, answer, micros);
            }
            drop(recorder);
            if let Some(interval) = interval {
                intended += interval;
            }
        }
        ledger
    }

    fn next_request(&self, rng: &mut StdRng, ring: &mut u64) -> Request {
        if self.args.smallbank {
            return Request::SmallBank(workload::small_bank(
                &self.accounts,
                rng,
                self.args.max_amount,
            ));
        }
        let (debit, credit) = self.accounts.pick(rng, self.args.cross_shard, ring);
        Request::Transfer {
            debit,
            credit,
            amount: rng.random_range(1..=self.args.max_amount),
        }
    }

    async fn send(&self, request: Request) -> Answer {
        let client = &self.client;
        match request {
            Request::Transfer {
                debit,
                credit,
                amount,
            }
            | Request::SmallBank(
                SmallBank::Amalgamate {
                    from_savings: debit,
                    to_checking: credit,
                    amount,
                }
                | SmallBank::SendPayment {
                    from: debit,
                    to: credit,
                    amount,
                },
            ) => {
                let id = TallyClient::new_transfer_id();
                let result = client.transfer(id, debit, credit, amount).await;
                Answer::Transfer {
                    id,
                    debit,
                    credit,
                    amount,
                    result,
                }
            }
            Request::SmallBank(SmallBank::Balance { checking, savings }) => Answer::Other {
                movement: None,
                result: client.balances(&[checking, savings]).await.map(|_| ()),
            },
            Request::SmallBank(
                SmallBank::DepositChecking { account, amount }
                | SmallBank::TransactSavings {
                    account,
                    amount,
                    withdraw: false,
                },
            ) => Self::send_movement(client, Movement::new(account, amount, true)).await,
            Request::SmallBank(
                SmallBank::WriteCheck { account, amount }
                | SmallBank::TransactSavings {
                    account,
                    amount,
                    withdraw: true,
                },
            ) => Self::send_movement(client, Movement::new(account, amount, false)).await,
        }
    }

    async fn send_movement(client: &TallyClient, movement: Movement) -> Answer {
        Answer::Other {
            movement: Some(movement),
            result: movement.send(client).await,
        }
    }

    fn record(&self, recorder: &mut Recorder, ledger: &mut Ledger, answer: Answer, micros: u64) {
        match answer {
            Answer::Transfer {
                id,
                debit,
                credit,
                amount,
                result,
            } => match result {
                Ok(TransferOutcome::Committed) => {
                    recorder.committed += 1;
                    recorder.second[0] += 1;
                    recorder.latency(micros);
                    *ledger.deltas.entry(debit).or_default() -= i128::from(amount);
                    *ledger.deltas.entry(credit).or_default() += i128::from(amount);
                    sample(&mut ledger.committed_sample, id, recorder.committed);
                }
                Ok(TransferOutcome::Aborted(reason)) => {
                    *recorder.aborted.entry(format!("{reason:?}")).or_default() += 1;
                    recorder.second[1] += 1;
                    recorder.latency(micros);
                    let seen: u64 = recorder.aborted.values().sum();
                    sample(&mut ledger.aborted_sample, id, seen);
                }
                Err(error) if maybe_applied(&error) => {
                    recorder.unknown += 1;
                    recorder.second[2] += 1;
                    recorder.latency(micros);
                    ledger.unknown_transfers.push((id, debit, credit, amount));
                }
                Err(_) => {
                    recorder.failed += 1;
                    recorder.second[3] += 1;
                    recorder.latency(micros);
                }
            },
            Answer::Other { movement, result } => match result {
                Ok(()) => {
                    recorder.other_ops += 1;
                    recorder.latency(micros);
                    if let Some(movement) = movement {
                        *ledger.deltas.entry(movement.account).or_default() += movement.change;
                    }
                }
                Err(error) if maybe_applied(&error) => {
                    recorder.unknown += 1;
                    recorder.second[2] += 1;
                    recorder.latency(micros);
                    if let Some(movement) = movement {
                        ledger.unknown_movements.push(movement);
                    }
                }
                // A refused withdrawal (insufficient funds) changed nothing.
                Err(ClientError::Remote { .. }) => {
                    recorder.other_ops += 1;
                    recorder.latency(micros);
                }
                Err(_) => {
                    recorder.failed += 1;
                    recorder.second[3] += 1;
                    recorder.latency(micros);
                }
            },
        }
    }
}

/// The request may have been applied although no outcome came: no answer after sending, or a
/// node that failed while handling it (`Internal`, `Timeout`).
fn maybe_applied(error: &ClientError) -> bool {
    match error {
        ClientError::OutcomeUnknown { .. } => true,
        ClientError::Remote { code, .. } => {
            matches!(code, net::ErrorCode::Internal | net::ErrorCode::Timeout)
        }
        _ => false,
    }
}

/// What a request got.
enum Answer {
    Transfer {
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
        result: Result<TransferOutcome, ClientError>,
    },
    /// A read, or a deposit or withdrawal (`movement`).
    Other {
        movement: Option<Movement>,
        result: Result<(), ClientError>,
    },
}

/// Keeps an evenly spread sample of at most `STATUS_SAMPLE_PER_CLIENT` ids.
fn sample(sample: &mut Vec<TransferId>, id: TransferId, seen: u64) {
    if sample.len() < STATUS_SAMPLE_PER_CLIENT {
        sample.push(id);
    } else if seen % 17 == 0 {
        let slot = (seen / 17) as usize % STATUS_SAMPLE_PER_CLIENT;
        sample[slot] = id;
    }
}

/// Applies each fault at its time and reverts it after its duration; records both.
async fn run_faults(
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
fn heal(cluster: &Mutex<LocalCluster>, faults: &[Fault]) {
    let mut cluster = lock(cluster);
    for fault in faults {
        if let Err(error) = apply_fault(&mut cluster, fault, false) {
            println!("healing {}: {error:#}", fault_label(fault));
        }
    }
}

async fn wait_until_up(client: &TallyClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let nodes = client.cluster_status().await?;
        if nodes.iter().all(|node| node.up) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster is not up after {SETTLE_TIMEOUT:?}: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates accounts 1..=count and tops each up to `balance`.
async fn set_up_accounts(client: &TallyClient, count: u64, balance: u64) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SETUP_CONCURRENCY {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let account = next.fetch_add(1, Ordering::Relaxed);
                if account > count {
                    return Ok::<(), ClientError>(());
                }
                client.create_account(account, None, 0).await?;
                let current = client.balance(account).await?;
                if current < balance {
                    client
                        .deposit(TallyClient::new_transfer_id(), account, balance - current)
                        .await?;
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("set-up task panicked")?
            .context("set-up failed")?;
    }
    Ok(())
}

/// Every account's balance (reads of up to 1,024 accounts each; call when nothing moves).
async fn read_all_balances(client: &TallyClient, count: u64) -> anyhow::Result<Vec<u64>> {
    let mut balances = Vec::with_capacity(count as usize);
    let ids: Vec<AccountId> = (1..=count).collect();
    for chunk in ids.chunks(net::BALANCES_PER_REQUEST_MAX as usize) {
        let read = client
            .balances(chunk)
            .await
            .context("reading every balance")?;
        balances.extend(read.iter().map(|balance| balance.balance));
    }
    Ok(balances)
}

/// The end-of-run checks, with every node up and nothing moving.
async fn check(
    client: &TallyClient,
    cluster: Option<&Arc<Mutex<LocalCluster>>>,
    args: &LoadgenArgs,
    initial: &[u64],
    mut ledger: Ledger,
) -> Checks {
    let mut checks = Checks::default();
    if let Some(cluster) = cluster {
        for (node, status) in lock(cluster).exited() {
            checks
                .problems
                .push(format!("node {node} exited on its own ({status})"));
        }
    }
    if let Err(error) = wait_until_up(client).await {
        checks.problems.push(format!("{error:#}"));
        return checks;
    }
    // Decisions and in-doubt transactions settle within a few resend rounds.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match client.cluster_status().await {
            Ok(nodes) if nodes.iter().all(|node| node.in_doubt_count == 0) => break,
            _ if Instant::now() > deadline => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Unknown outcomes: ask, until decided (one deadline for all of them).
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for (id, debit, credit, amount) in std::mem::take(&mut ledger.unknown_transfers) {
        match settled_status(client, id, deadline).await {
            Ok(TransferState::Committed) => {
                checks.unknown_resolved_committed += 1;
                *ledger.deltas.entry(debit).or_default() -= i128::from(amount);
                *ledger.deltas.entry(credit).or_default() += i128::from(amount);
            }
            Ok(TransferState::Aborted(_) | TransferState::Unknown) => {
                checks.unknown_resolved_aborted += 1
            }
            Ok(TransferState::InProgress) => checks.problems.push(format!(
                "transfer {id} still in progress after {SETTLE_TIMEOUT:?}"
            )),
            Err(error) => checks
                .problems
                .push(format!("status of transfer {id}: {error}")),
        }
    }
    // Unknown deposits and withdrawals: resent with their ids, which applies each at most once
    // and answers with its first outcome (or does it now, if it never arrived). Before the
    // audit and the balance reads, which must see a resend that applies.
    for movement in std::mem::take(&mut ledger.unknown_movements) {
        match resolve_movement(client, &movement, deadline).await {
            Ok(true) => {
                checks.unknown_movements_resolved_applied += 1;
                *ledger.deltas.entry(movement.account).or_default() += movement.change;
            }
            Ok(false) => checks.unknown_movements_resolved_refused += 1,
            Err(error) => checks.problems.push(format!(
                "deposit or withdrawal {} on account {} not resolved: {error}",
                movement.id, movement.account
            )),
        }
    }
    match client.audit().await {
        Ok(report) => checks.audit = Some(AuditVerdict::new(&report, client.config())),
        Err(error) => checks.problems.push(format!("audit: {error}")),
    }
    // Exactly once: every account holds what the acknowledged outcomes imply.
    match read_all_balances(client, args.accounts).await {
        Ok(now) => {
            for (index, balance) in now.iter().enumerate() {
                let account = index as AccountId + 1;
                let expected =
                    i128::from(initial[index]) + ledger.deltas.get(&account).copied().unwrap_or(0);
                if i128::from(*balance) != expected {
                    checks.balance_mismatches += 1;
                    if checks.balance_mismatches <= 5 {
                        checks.problems.push(format!(
                            "account {account}: balance {balance}, expected {expected}"
                        ));
                    }
                }
            }
        }
        Err(error) => checks.problems.push(format!("{error:#}")),
    }
    // Statuses agree with what clients heard.
    for (ids, committed) in [
        (&ledger.committed_sample, true),
        (&ledger.aborted_sample, false),
    ] {
        for id in ids {
            checks.statuses_checked += 1;
            let agrees = match client.transfer_status(*id).await {
                Ok(TransferState::Committed) => committed,
                Ok(TransferState::Aborted(_)) => !committed,
                _ => false,
            };
            if !agrees {
                checks.status_mismatches += 1;
            }
        }
    }
    checks
}

/// Whether a deposit or withdrawal of unknown outcome is applied, learned by resending it with
/// its id until a node answers (or `deadline`): `true` applied, `false` refused (the refusal
/// the node recorded for the id, or its first refusal now).
async fn resolve_movement(
    client: &TallyClient,
    movement: &Movement,
    deadline: Instant,
) -> Result<bool, ClientError> {
    loop {
        match movement.send(client).await {
            Ok(()) => return Ok(true),
            // The refusals a node records for the id: its answer from now on.
            Err(ClientError::Remote {
                code:
                    net::ErrorCode::InsufficientFunds
                    | net::ErrorCode::UnknownAccount
                    | net::ErrorCode::Overflow,
                ..
            }) => return Ok(false),
            Err(error)
                if Instant::now() < deadline && (maybe_applied(&error) || error.is_retryable()) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => return Err(error),
        }
    }
}

/// A transfer's status once it is decided (or known never to have arrived).
async fn settled_status(
    client: &TallyClient,
    id: TransferId,
    deadline: Instant,
) -> Result<TransferState, ClientError> {
    loop {
        match client.transfer_status(id).await {
            Ok(TransferState::InProgress) | Err(ClientError::StatusIncomplete { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
}

/// Writes the run's files into `out`.
fn write_files(args: &LoadgenArgs, report: &Report, out: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let create = |name: &str| {
        let path = out.join(name);
        std::fs::File::create(&path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("cannot write {}", path.display()))
    };
    report::write_hgrm(&report.latency, &mut create("latency.hgrm")?)?;
    report::write_hlog(
        report.start_unix_seconds,
        &report.intervals,
        &mut create("latency.hlog")?,
    )?;
    report::write_timeline_csv(&report.timeline, &mut create("timeline.csv")?)?;
    let title = format!(
        "tally loadgen: {} clients{}, {:.0} committed/s",
        args.clients,
        args.rate
            .map_or(String::new(), |rate| format!(", open loop {rate:.0}/s")),
        report.committed_per_second()
    );
    std::fs::write(
        out.join("chart.svg"),
        chart::run_chart(&title, &report.timeline, &report.faults, &report.latency),
    )
    .context("cannot write chart.svg")?;
    let summary = summary_json(args, report);
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&summary).expect("JSON values serialize"),
    )
    .context("cannot write summary.json")?;
    Ok(())
}

fn summary_json(args: &LoadgenArgs, report: &Report) -> serde_json::Value {
    let checks = &report.checks;
    let audit = checks.audit.as_ref();
    let totals = audit.and_then(AuditVerdict::totals);
    serde_json::json!({
        "command_line": std::env::args().collect::<Vec<_>>(),
        "versions": {
            "tally": env!("CARGO_PKG_VERSION"),
            "protocol": net::PROTOCOL_VERSION,
        },
        "options": {
            "accounts": args.accounts,
            "clients": args.clients,
            "rate": args.rate,
            "client_batch": args.client_batch,
            "duration_seconds": args.duration,
            "cross_shard": args.cross_shard,
            "workload": if args.smallbank { "smallbank".to_owned() } else { format!("{:?}", args.pattern()) },
            "faults": args.faults.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "committed": report.committed,
        "committed_per_second": report.committed_per_second(),
        "aborted": report.aborted,
        "unknown_outcome": report.unknown,
        "failed": report.failed,
        "other_operations": report.other_ops,
        "latency_ms": {
            "p50": report.latency_ms(0.5),
            "p90": report.latency_ms(0.9),
            "p99": report.latency_ms(0.99),
            "p99.9": report.latency_ms(0.999),
            "p99.99": report.latency_ms(0.9999),
            "max": report.latency.max() as f64 / 1000.0,
        },
        "faults": report.faults.iter().map(|fault| serde_json::json!({"at_seconds": fault.at_seconds, "event": fault.label})).collect::<Vec<_>>(),
        "invariants": {
            "passed": checks.passed(),
            "conserved": audit.is_some_and(AuditVerdict::money_conserved),
            "audit": audit.map(ToString::to_string),
            "balances": totals.map(|totals| totals.balances_sum.to_string()),
            "deposits": totals.map(|totals| totals.deposits_sum.to_string()),
            "withdrawals": totals.map(|totals| totals.withdrawals_sum.to_string()),
            "in_doubt": totals.map(|totals| totals.in_doubt_count),
            "negative_balances": totals.map(|totals| totals.negative_balance_count),
            "balance_mismatches": checks.balance_mismatches,
            "unknown_movements_resolved_applied": checks.unknown_movements_resolved_applied,
            "unknown_movements_resolved_refused": checks.unknown_movements_resolved_refused,
            "status_mismatches": checks.status_mismatches,
            "statuses_checked": checks.statuses_checked,
            "unknown_resolved_committed": checks.unknown_resolved_committed,
            "unknown_resolved_aborted": checks.unknown_resolved_aborted,
            "problems": checks.problems,
        },
    })
}
