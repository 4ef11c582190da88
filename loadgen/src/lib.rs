//! Tally's load generator: throughput and tail latency of a cluster. `tally loadgen` starts a
//! local cluster (or drives an existing one), creates and funds the accounts, runs closed-loop
//! clients that each send one transfer and wait for its answer, and ends with an audit through
//! the cluster.
//!
//! Latency is measured per transfer from just before it is sent to its answer, retries included,
//! into HdrHistogram (microseconds, 3 significant digits). In a closed loop the next transfer of a
//! client starts when the previous one is answered, so a stall shows up as one long latency per
//! client, not as many; the throughput figure shows the rest.

pub mod local;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::config::ClusterConfig;
use client::{ClientError, ClientOptions, TallyClient};
use hdrhistogram::Histogram;
use net::{AccountId, TransferOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Accounts created and funded at once during set-up.
const SETUP_CONCURRENCY: usize = 256;
/// Largest latency the histograms hold (60 s, in microseconds); longer ones are clamped.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

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
    /// Deposit into each account before the run.
    #[arg(long, default_value_t = 1_000_000)]
    pub initial_balance: u64,
    /// Concurrent closed-loop clients, each waiting for its answer before sending the next.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Fraction of transfers whose two accounts are on different nodes (0 to 1).
    #[arg(long, default_value_t = 1.0)]
    pub cross_shard: f64,
    /// Largest amount of one transfer (each is uniform in 1..=N).
    #[arg(long, default_value_t = 100)]
    pub max_amount: u64,
    /// Seed of the workload's random choices (default: time-based, printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct Report {
    pub elapsed: Duration,
    pub committed: u64,
    pub aborted: BTreeMap<String, u64>,
    pub unknown: u64,
    pub failed: u64,
    /// Latency of every answered transfer (committed or aborted), in microseconds.
    pub latency: Histogram<u64>,
    pub audit: AuditCheck,
}

/// The end-of-run audit.
#[derive(Debug)]
pub struct AuditCheck {
    pub balances: u128,
    pub deposits: u128,
    pub withdrawals: u128,
    pub in_doubt: u64,
    pub negative: u64,
}

impl AuditCheck {
    pub fn passed(&self) -> bool {
        self.balances + self.withdrawals == self.deposits
            && self.in_doubt == 0
            && self.negative == 0
    }
}

impl Report {
    pub fn committed_per_second(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64()
    }

    /// The report printed at the end of a run.
    pub fn render(&self) -> String {
        let ms = |quantile: f64| self.latency.value_at_quantile(quantile) as f64 / 1000.0;
        let aborted: u64 = self.aborted.values().sum();
        let mut out = String::new();
        out.push_str(&format!(
            "elapsed {:.1} s: {} committed ({:.0}/s), {} aborted, {} unknown outcome, {} failed\n",
            self.elapsed.as_secs_f64(),
            self.committed,
            self.committed_per_second(),
            aborted,
            self.unknown,
            self.failed
        ));
        for (reason, count) in &self.aborted {
            out.push_str(&format!("  aborted, {reason}: {count}\n"));
        }
        out.push_str(&format!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}\n",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            ms(0.9999),
            self.latency.max() as f64 / 1000.0
        ));
        out.push_str(&format!(
            "audit: balances {} = deposits {} - withdrawals {}: {}; in doubt {}; negative {}: {}\n",
            self.audit.balances,
            self.audit.deposits,
            self.audit.withdrawals,
            if self.audit.balances + self.audit.withdrawals == self.audit.deposits {
                "conserved"
            } else {
                "NOT CONSERVED"
            },
            self.audit.in_doubt,
            self.audit.negative,
            if self.audit.passed() { "PASS" } else { "FAIL" }
        ));
        out
    }
}

/// Runs `tally loadgen`: prints progress and the report; returns whether the audit passed.
pub fn main(args: LoadgenArgs) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let mut local = None;
    let config = match &args.cluster {
        Some(path) => ClusterConfig::load(path)?,
        None => {
            let cluster =
                local::LocalCluster::start(args.nodes, args.data_dir.clone(), args.base_port)?;
            let config = cluster.config.clone();
            local = Some(cluster);
            config
        }
    };
    let report = runtime.block_on(run(&args, config));
    if let Some(mut cluster) = local {
        cluster.stop();
    }
    let report = report?;
    print!("{}", report.render());
    Ok(report.audit.passed())
}

/// Creates and funds the accounts, runs the load, audits.
pub async fn run(args: &LoadgenArgs, config: ClusterConfig) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.cross_shard) {
        bail!("--cross-shard must be between 0 and 1");
    }
    if args.accounts < 2 || args.clients == 0 || args.max_amount == 0 {
        bail!("need at least 2 accounts, 1 client and a positive --max-amount");
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!(
        "loadgen: {} nodes, {} accounts, {} clients, {:.0} s, cross-shard {:.0}%, seed {seed}",
        config.nodes.len(),
        args.accounts,
        args.clients,
        args.duration,
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
    println!(
        "set-up: {} accounts created and funded in {:.1} s",
        args.accounts,
        started.elapsed().as_secs_f64()
    );

    let accounts = Arc::new(Accounts::new(&config, args.accounts));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for index in 0..args.clients {
        let client = client.clone();
        let accounts = accounts.clone();
        let stop = stop.clone();
        let args = args.clone();
        tasks.spawn(async move {
            closed_loop(client, accounts, stop, &args, seed ^ u64::from(index)).await
        });
    }
    let deadline = started + Duration::from_secs_f64(args.duration);
    tokio::time::sleep_until(deadline.into()).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Counts::new();
    while let Some(joined) = tasks.join_next().await {
        total.merge(joined.context("client task panicked")?);
    }
    let elapsed = started.elapsed();
    let audit = audit(&client).await?;
    Ok(Report {
        elapsed,
        committed: total.committed,
        aborted: total.aborted,
        unknown: total.unknown,
        failed: total.failed,
        latency: total.latency,
        audit,
    })
}

async fn wait_until_up(client: &TallyClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let nodes = client.cluster_status().await?;
        if nodes.iter().all(|node| node.up) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster is not up after 60 s: {nodes:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates accounts 1..=count and deposits `balance` into each that has less than it.
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

/// The accounts, grouped by the node that owns them.
struct Accounts {
    all: Vec<AccountId>,
    by_node: BTreeMap<u32, Vec<AccountId>>,
    owner: Vec<u32>,
}

impl Accounts {
    fn new(config: &ClusterConfig, count: u64) -> Accounts {
        let mut by_node: BTreeMap<u32, Vec<AccountId>> = BTreeMap::new();
        let mut owner = Vec::with_capacity(count as usize);
        for account in 1..=count {
            let node = config.owner_of(account);
            by_node.entry(node).or_default().push(account);
            owner.push(node);
        }
        Accounts {
            all: (1..=count).collect(),
            by_node,
            owner,
        }
    }

    fn owner(&self, account: AccountId) -> u32 {
        self.owner[account as usize - 1]
    }

    /// A debit and a credit account: uniform, on different nodes with probability `cross`.
    fn pick(&self, rng: &mut StdRng, cross: f64) -> (AccountId, AccountId) {
        let debit = self.all[rng.random_range(0..self.all.len())];
        let home = self.owner(debit);
        let want_cross = self.by_node.len() > 1 && rng.random_bool(cross);
        loop {
            let credit = if want_cross {
                self.all[rng.random_range(0..self.all.len())]
            } else {
                let same = &self.by_node[&home];
                same[rng.random_range(0..same.len())]
            };
            if credit != debit && (self.owner(credit) != home) == want_cross {
                return (debit, credit);
            }
        }
    }
}

/// What one client saw.
struct Counts {
    committed: u64,
    aborted: BTreeMap<String, u64>,
    unknown: u64,
    failed: u64,
    latency: Histogram<u64>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            committed: 0,
            aborted: BTreeMap::new(),
            unknown: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3)
                .expect("valid histogram bounds"),
        }
    }

    fn merge(&mut self, other: Counts) {
        self.committed += other.committed;
        for (reason, count) in other.aborted {
            *self.aborted.entry(reason).or_default() += count;
        }
        self.unknown += other.unknown;
        self.failed += other.failed;
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds");
    }
}

async fn closed_loop(
    client: TallyClient,
    accounts: Arc<Accounts>,
    stop: Arc<AtomicBool>,
    args: &LoadgenArgs,
    seed: u64,
) -> Counts {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        let (debit, credit) = accounts.pick(&mut rng, args.cross_shard);
        let amount = rng.random_range(1..=args.max_amount);
        let id = TallyClient::new_transfer_id();
        let sent = Instant::now();
        let answer = client.transfer(id, debit, credit, amount).await;
        let micros = (sent.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_MICROS);
        match answer {
            Ok(TransferOutcome::Committed) => {
                counts.committed += 1;
                counts.latency.record(micros).expect("clamped into range");
            }
            Ok(TransferOutcome::Aborted(reason)) => {
                *counts.aborted.entry(format!("{reason:?}")).or_default() += 1;
                counts.latency.record(micros).expect("clamped into range");
            }
            Err(ClientError::OutcomeUnknown { .. }) => counts.unknown += 1,
            Err(_) => counts.failed += 1,
        }
    }
    counts
}

async fn audit(client: &TallyClient) -> anyhow::Result<AuditCheck> {
    let report = client.audit().await.context("end-of-run audit")?;
    Ok(AuditCheck {
        balances: report.nodes.iter().map(|node| node.balances_sum).sum(),
        deposits: report.nodes.iter().map(|node| node.deposits_sum).sum(),
        withdrawals: report.nodes.iter().map(|node| node.withdrawals_sum).sum(),
        in_doubt: report.nodes.iter().map(|node| node.in_doubt_count).sum(),
        negative: report
            .nodes
            .iter()
            .map(|node| node.negative_balance_count)
            .sum(),
    })
}
