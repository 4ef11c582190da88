//! `tally loadgen`'s options, and the checks of their values clap cannot make.

use std::path::PathBuf;

use anyhow::bail;

use crate::faults::{Fault, Target};
use crate::workload::{self, Pattern};

/// `tally loadgen`: every option.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Drive this existing cluster instead of starting a local one.
    #[arg(long, env = "TALLY_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// Nodes of the local cluster started when no --cluster is given.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Replicas of each shard of the local cluster (at most --nodes): each shard a Raft group.
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Data dir of the local cluster (default: a new temporary directory, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// First port of the local cluster (node i listens on base-port + i - 1, and serves HTTP
    /// `/metrics` on base-port + nodes + i - 1).
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
    /// A fault: KIND:node=N[,peer=M],at=T,for=D with KIND kill, pause, partition, blackhole,
    /// delay[,ms=X] or drop[,p=P]; or KIND:leader-of=SHARD,at=T,for=D, aimed at the node leading
    /// SHARD when the fault begins (partition:leader-of is a blackhole of that node). Repeatable.
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
    pub(crate) fn pattern(&self) -> Pattern {
        match (self.zipf, self.hot_spot) {
            (Some(theta), _) => Pattern::Zipf { theta },
            (None, Some(hot_spot)) => hot_spot,
            (None, None) => self.pattern,
        }
    }

    pub(crate) fn validate(&self) -> anyhow::Result<()> {
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
            let node_ok = |node: u32| (1..=self.nodes).contains(&node);
            match fault.target {
                Target::Node(node) if !node_ok(node) || !fault.peer.is_none_or(node_ok) => {
                    bail!("fault {fault}: the cluster has nodes 1..={}", self.nodes);
                }
                // A local cluster has as many shards as nodes.
                Target::LeaderOf(shard) if shard >= self.nodes => {
                    bail!(
                        "fault {fault}: the cluster has {} shards, numbered from 0",
                        self.nodes
                    );
                }
                _ => {}
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
