//! The node's Prometheus metrics, served at `/metrics` on its HTTP address (see `http`).
//!
//! Recording never takes a lock: request and transfer counts are relaxed atomic adds into fixed
//! arrays indexed by message kind, error code and abort reason, latencies go into
//! `engine::stats::LatencyHistogram`s, and everything else (the WAL's counters, every replica
//! group's state, in-doubt counts) is read when a scrape asks. Names follow Prometheus' rules: the
//! `tally_` prefix, base units (`_seconds`, `_bytes`), `_total` on counters only, and no account
//! or transfer id as a label (labels are bounded sets: message kinds, error codes, abort reasons,
//! shards, replicas).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::model::{AbortReason, Outcome};
use engine::stats::{LATENCY_BOUNDS_SECONDS, LatencyHistogram, LatencySnapshot};
use engine::wal::WalStats;
use net::{ErrorCode, GroupStatus, Message, MessageKind, ReplicaHealth, ReplicaRole};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Error codes are small integers; this bounds the table (codes past it count as the last).
const ERROR_CODES: usize = 32;
/// Abort reasons likewise (codes 1 to 9 today).
pub const ABORT_REASONS: usize = 16;
/// The most recent transfers kept for the console.
pub const RECENT_TRANSFERS_MAX: usize = 32;

/// What the node records as it serves.
#[derive(Debug)]
pub struct Metrics {
    /// Requests received, by the position of their kind in `MessageKind::ALL`.
    requests: Vec<AtomicU64>,
    /// Requests answered with an error, by kind position × `ERROR_CODES` + code.
    errors: Vec<AtomicU64>,
    transfers_committed: AtomicU64,
    /// Transfers answered aborted, by reason code.
    transfers_aborted: Vec<AtomicU64>,
    /// Client transfer requests coordinated here, from arrival to answer, whatever the answer.
    transfer_seconds: LatencyHistogram,
    /// Per shard: how often this node's replica became leader (its engine opened) and stopped
    /// leading. Changed only on leader changes, so a lock is fine.
    leadership: Mutex<BTreeMap<u32, [u64; 2]>>,
    /// The cluster's shard count (the flows matrix is that square).
    pub shards: usize,
    /// Transfers committed here, by debit shard × `shards` + credit shard.
    flows: Vec<AtomicU64>,
    /// The slowest transfer answered since the console's sampler last looked, in nanoseconds.
    transfer_max_nanos: AtomicU64,
    /// 2PC phases at this node's coordinators: a remote participant's vote round, logging a
    /// batch's decisions (with this shard's own part applied), a delivery of decisions to a
    /// participant until acknowledged.
    prepare_seconds: LatencyHistogram,
    decide_seconds: LatencyHistogram,
    deliver_seconds: LatencyHistogram,
    /// Presumed aborts logged: inquiries about transfers this coordinator never decided.
    presumed_aborts: AtomicU64,
    /// Per shard this node leads: transfers in flight at its coordinator, and decisions some
    /// participant has not acknowledged. Set by the coordinator's driver as it runs.
    in_flight: Vec<AtomicU64>,
    awaiting_ack: Vec<AtomicU64>,
    /// The last few transfers answered, newest last. Written with `try_lock` only: a transfer
    /// never waits for it, and one that finds it busy is just not listed.
    recent: Mutex<VecDeque<RecentTransfer>>,
    /// What this node hears of each peer's heartbeats (`console::heartbeats`).
    pub(crate) peers: Mutex<BTreeMap<u32, PeerHealth>>,
}

/// A transfer answered by this node's coordinator, for the console's list.
#[derive(Debug, Clone)]
pub struct RecentTransfer {
    pub id: u128,
    pub debit: u64,
    pub credit: u64,
    pub amount: u64,
    pub outcome: Outcome,
    pub elapsed: Duration,
    pub at_unix_ms: u64,
}

/// The last heartbeat exchange with one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    /// Answered the last heartbeat (within the peer timeout).
    pub up: bool,
    /// The last answered heartbeat's round trip.
    pub rtt: Duration,
    /// When a heartbeat was last answered.
    pub last_answer: Option<std::time::Instant>,
    /// Heartbeats not answered since the node started.
    pub missed: u64,
}

impl Metrics {
    /// Metrics for a node of a cluster of `shards` shards.
    pub fn new(shards: u32) -> Self {
        let counters = |count| (0..count).map(|_| AtomicU64::new(0)).collect();
        let shards = shards as usize;
        Self {
            requests: counters(MessageKind::ALL.len()),
            errors: counters(MessageKind::ALL.len() * ERROR_CODES),
            transfers_committed: AtomicU64::new(0),
            transfers_aborted: counters(ABORT_REASONS),
            transfer_seconds: LatencyHistogram::default(),
            leadership: Mutex::new(BTreeMap::new()),
            shards,
            flows: counters(shards * shards),
            transfer_max_nanos: AtomicU64::new(0),
            prepare_seconds: LatencyHistogram::default(),
            decide_seconds: LatencyHistogram::default(),
            deliver_seconds: LatencyHistogram::default(),
            presumed_aborts: AtomicU64::new(0),
            in_flight: counters(shards),
            awaiting_ack: counters(shards),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_TRANSFERS_MAX)),
            peers: Mutex::new(BTreeMap::new()),
        }
    }
}

/// Counters the console's sampler reads once a second (`console`).
#[derive(Debug, Clone, Default)]
pub struct Counts {
    pub committed: u64,
    pub aborted: Vec<u64>,
    pub latency: Vec<u64>,
    pub max_nanos: u64,
    pub flows: Vec<u64>,
}

fn kind_position(kind: MessageKind) -> usize {
    MessageKind::ALL
        .iter()
        .position(|known| *known == kind)
        .expect("every kind is in MessageKind::ALL")
}

impl Metrics {
    /// Counts one request of `kind` and its answer (an error answer by its code).
    pub fn request(&self, kind: MessageKind, answer: &Message) {
        let position = kind_position(kind);
        self.requests[position].fetch_add(1, Ordering::Relaxed);
        if let Message::ErrorResponse(error) = answer {
            let code = usize::from(error.code.code()).min(ERROR_CODES - 1);
            self.errors[position * ERROR_CODES + code].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a transfer this node coordinated and answered with `outcome`, after `elapsed`:
    /// `shards` are its debit and credit accounts' shards.
    pub fn transfer(
        &self,
        transfer: &net::Transfer,
        shards: (u32, u32),
        outcome: Outcome,
        elapsed: Duration,
    ) {
        match outcome {
            Outcome::Committed => {
                self.transfers_committed.fetch_add(1, Ordering::Relaxed);
                let (debit, credit) = (shards.0 as usize, shards.1 as usize);
                if debit < self.shards && credit < self.shards {
                    self.flows[debit * self.shards + credit].fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Aborted(reason) => {
                self.transfers_aborted[usize::from(reason.code()).min(ABORT_REASONS - 1)]
                    .fetch_add(1, Ordering::Relaxed);
            }
        };
        self.transfer_seconds.observe(elapsed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.transfer_max_nanos.fetch_max(nanos, Ordering::Relaxed);
        if let Ok(mut recent) = self.recent.try_lock() {
            if recent.len() == RECENT_TRANSFERS_MAX {
                recent.pop_front();
            }
            recent.push_back(RecentTransfer {
                id: transfer.id,
                debit: transfer.debit,
                credit: transfer.credit,
                amount: transfer.amount,
                outcome,
                elapsed,
                at_unix_ms: crate::node::now_unix_ms(),
            });
        }
    }

    /// A remote participant's vote round took `elapsed`.
    pub fn prepared(&self, elapsed: Duration) {
        self.prepare_seconds.observe(elapsed);
    }

    /// A batch's decisions were logged (and this shard's part applied) in `elapsed`; `presumed`
    /// of them were presumed aborts.
    pub fn decided(&self, elapsed: Duration, presumed: usize) {
        self.decide_seconds.observe(elapsed);
        self.presumed_aborts
            .fetch_add(presumed as u64, Ordering::Relaxed);
    }

    /// A delivery of decisions to a participant was acknowledged (or given up) after `elapsed`.
    pub fn delivered(&self, elapsed: Duration) {
        self.deliver_seconds.observe(elapsed);
    }

    /// The coordinator of `shard` holds `in_flight` transfers and `awaiting_ack` decisions.
    pub fn coordinator_load(&self, shard: u32, in_flight: usize, awaiting_ack: usize) {
        if let (Some(flight), Some(ack)) = (
            self.in_flight.get(shard as usize),
            self.awaiting_ack.get(shard as usize),
        ) {
            flight.store(in_flight as u64, Ordering::Relaxed);
            ack.store(awaiting_ack as u64, Ordering::Relaxed);
        }
    }

    /// Transfers in flight and decisions awaiting acknowledgement, summed over the shards this
    /// node leads by `groups` (a coordinator that stopped leaves its last values, not counted).
    pub fn coordinator_totals(&self, groups: &[GroupStatus]) -> (u64, u64) {
        groups
            .iter()
            .filter(|group| group.role == ReplicaRole::Leader)
            .map(|group| group.shard)
            .filter_map(|shard| {
                Some((
                    self.in_flight.get(shard as usize)?.load(Ordering::Relaxed),
                    self.awaiting_ack
                        .get(shard as usize)?
                        .load(Ordering::Relaxed),
                ))
            })
            .fold((0, 0), |(flight, ack), (one, other)| {
                (flight + one, ack + other)
            })
    }

    /// The counters the console's sampler diffs once a second; the slowest transfer since the
    /// last call is taken (and reset).
    pub fn counts(&self) -> Counts {
        Counts {
            committed: self.transfers_committed.load(Ordering::Relaxed),
            aborted: self
                .transfers_aborted
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            latency: self.transfer_seconds.snapshot().buckets,
            max_nanos: self.transfer_max_nanos.swap(0, Ordering::Relaxed),
            flows: self
                .flows
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Transfers committed, and aborted by reason code, since the node started.
    pub fn transfer_totals(&self) -> (u64, Vec<u64>) {
        (
            self.transfers_committed.load(Ordering::Relaxed),
            self.transfers_aborted
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
        )
    }

    /// Presumed aborts logged since the node started.
    pub fn presumed_abort_count(&self) -> u64 {
        self.presumed_aborts.load(Ordering::Relaxed)
    }

    /// The most recent transfers, newest last.
    pub fn recent(&self) -> Vec<RecentTransfer> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Requests refused and transfers aborted because an account was locked in a conflicting
    /// mode, since the node started.
    pub fn lock_conflicts(&self) -> u64 {
        self.errors_with(ErrorCode::LockConflict)
            + self.transfers_aborted[usize::from(AbortReason::LockConflict.code())]
                .load(Ordering::Relaxed)
    }

    /// Debits refused (or transfers aborted) because the funds were reserved by debits in flight.
    pub fn funds_held(&self) -> u64 {
        self.errors_with(ErrorCode::FundsHeld)
            + self.transfers_aborted[usize::from(AbortReason::FundsHeld.code())]
                .load(Ordering::Relaxed)
    }

    /// Errors answered with `code`, over every request kind.
    fn errors_with(&self, code: ErrorCode) -> u64 {
        let code = usize::from(code.code()).min(ERROR_CODES - 1);
        (0..MessageKind::ALL.len())
            .map(|position| self.errors[position * ERROR_CODES + code].load(Ordering::Relaxed))
            .sum()
    }

    /// Phase latency snapshots: prepare, decide, deliver.
    pub fn phases(&self) -> [LatencySnapshot; 3] {
        [
            self.prepare_seconds.snapshot(),
            self.decide_seconds.snapshot(),
            self.deliver_seconds.snapshot(),
        ]
    }

    /// This node's replica of `shard` became leader: its engine opened.
    pub fn leadership_gained(&self, shard: u32) {
        self.leadership_changed(shard, 0);
    }

    /// This node's replica of `shard` stopped leading: its engine closed.
    pub fn leadership_lost(&self, shard: u32) {
        self.leadership_changed(shard, 1);
    }

    fn leadership_changed(&self, shard: u32, which: usize) {
        let mut leadership = self
            .leadership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        leadership.entry(shard).or_default()[which] += 1;
    }

    /// A transfer request answered with an error (no outcome), after `elapsed`.
    pub fn transfer_failed(&self, elapsed: Duration) {
        self.transfer_seconds.observe(elapsed);
    }
}

/// Everything one scrape reports: the recorded counters and what the node reads when asked.
#[derive(Debug)]
pub struct Scrape<'a> {
    pub node: u32,
    pub version: &'static str,
    pub uptime: Duration,
    pub metrics: &'a Metrics,
    pub wal: WalStats,
    pub groups: Vec<GroupStatus>,
    /// Transactions prepared here without a decision, over the shards this node leads.
    pub in_doubt: u64,
}

impl Scrape<'_> {
    /// The Prometheus text exposition (OpenMetrics flavour, as `prometheus-client` writes it).
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        let collector = Snapshot::of(self);
        registry.register_collector(Box::new(collector));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// One number of a replica group's status.
type GroupValue = fn(&GroupStatus) -> u64;

/// A sample: its label pairs and its value.
type Sample = (Vec<(&'static str, String)>, f64);

/// The values of one scrape, owned, for the collector.
#[derive(Debug)]
struct Snapshot {
    counters: Vec<(&'static str, &'static str, Vec<Sample>)>,
    gauges: Vec<(&'static str, &'static str, Vec<Sample>)>,
    histograms: Vec<(&'static str, &'static str, LatencySnapshot)>,
    info: Vec<(&'static str, String)>,
}

fn label(name: &'static str, value: impl ToString) -> (&'static str, String) {
    (name, value.to_string())
}

impl Snapshot {
    fn of(scrape: Scrape<'_>) -> Self {
        let Scrape {
            node,
            version,
            uptime,
            metrics,
            wal,
            groups,
            in_doubt,
        } = scrape;
        let peers = metrics
            .peers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let (in_flight, awaiting_ack) = metrics.coordinator_totals(&groups);
        let [prepare, decide, deliver] = metrics.phases();
        let mut requests = Vec::new();
        let mut errors = Vec::new();
        for (position, kind) in MessageKind::ALL.iter().enumerate() {
            let count = metrics.requests[position].load(Ordering::Relaxed);
            if count > 0 {
                requests.push((vec![label("kind", format!("{kind:?}"))], count as f64));
            }
            for code in 0..ERROR_CODES {
                let count = metrics.errors[position * ERROR_CODES + code].load(Ordering::Relaxed);
                if count > 0 {
                    let code = ErrorCode::from_code(code as u16)
                        .map_or_else(|| format!("code {code}"), |code| format!("{code:?}"));
                    errors.push((
                        vec![label("kind", format!("{kind:?}")), label("code", code)],
                        count as f64,
                    ));
                }
            }
        }
        let mut transfers = vec![(
            vec![label("outcome", "committed"), label("reason", "")],
            metrics.transfers_committed.load(Ordering::Relaxed) as f64,
        )];
        for code in 1..ABORT_REASONS {
            let count = metrics.transfers_aborted[code].load(Ordering::Relaxed);
            let reason = AbortReason::from_code(code as u8);
            if count > 0 || reason.is_some() {
                let reason =
                    reason.map_or_else(|| format!("code {code}"), |reason| format!("{reason:?}"));
                transfers.push((
                    vec![label("outcome", "aborted"), label("reason", reason)],
                    count as f64,
                ));
            }
        }
        let per_group = |value: &dyn Fn(&GroupStatus) -> f64| -> Vec<Sample> {
            groups
                .iter()
                .map(|group| (vec![label("shard", group.shard)], value(group)))
                .collect()
        };
        let mut lag = Vec::new();
        let mut replica_up = Vec::new();
        for group in groups
            .iter()
            .filter(|group| group.role == ReplicaRole::Leader)
        {
            for replica in &group.replicas {
                let labels = vec![
                    label("shard", group.shard),
                    label("replica", replica.node_id),
                ];
                lag.push((
                    labels.clone(),
                    group.last_index.saturating_sub(replica.matched_index) as f64,
                ));
                replica_up.push((
                    labels,
                    f64::from(u8::from(replica.health != ReplicaHealth::Down)),
                ));
            }
        }
        let leadership = metrics
            .leadership
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let leadership_samples = |which: usize| -> Vec<Sample> {
            groups
                .iter()
                .map(|group| {
                    let count = leadership
                        .get(&group.shard)
                        .map_or(0, |counts| counts[which]);
                    (vec![label("shard", group.shard)], count as f64)
                })
                .collect()
        };
        let mut snapshot = Snapshot {
            counters: vec![
                (
                    "tally_raft_leadership_gained",
                    "Times this node's replica of the shard became leader (its engine opened).",
                    leadership_samples(0),
                ),
                (
                    "tally_raft_leadership_lost",
                    "Times this node's replica of the shard stopped leading (its engine closed).",
                    leadership_samples(1),
                ),
                (
                    "tally_requests",
                    "Requests received, by message kind.",
                    requests,
                ),
                (
                    "tally_request_errors",
                    "Requests answered with an error, by message kind and error code.",
                    errors,
                ),
                (
                    "tally_transfers",
                    "Transfers this node coordinated, by outcome and abort reason.",
                    transfers,
                ),
                (
                    "tally_wal_records",
                    "Records appended to the WAL (every group's Raft entries and this node's own).",
                    vec![(vec![], wal.records_appended as f64)],
                ),
                (
                    "tally_wal_group_commits",
                    "Group commits written (one fdatasync each); records per group commit is the ratio of the two rates.",
                    vec![(vec![], wal.groups_written as f64)],
                ),
                (
                    "tally_wal_written_bytes",
                    "Bytes written to the WAL.",
                    vec![(vec![], wal.bytes_written as f64)],
                ),
                (
                    "tally_2pc_presumed_aborts",
                    "Presumed aborts logged: a participant asked about a transfer this node's coordinators never decided.",
                    vec![(
                        vec![],
                        metrics.presumed_aborts.load(Ordering::Relaxed) as f64,
                    )],
                ),
                (
                    "tally_lock_conflicts",
                    "Requests refused and transfers aborted because an account was locked in a conflicting mode.",
                    vec![(vec![], metrics.lock_conflicts() as f64)],
                ),
                (
                    "tally_lock_waits",
                    "Local operations (deposits, withdrawals, same-shard transfers, account creations) that waited for a lock held in a conflicting mode.",
                    vec![(
                        vec![],
                        crate::engine_calls::LOCK_WAITS.load(Ordering::Relaxed) as f64,
                    )],
                ),
                (
                    "tally_funds_held",
                    "Debits refused because the funds were there but reserved by debits in flight (retryable).",
                    vec![(vec![], metrics.funds_held() as f64)],
                ),
                (
                    "tally_peer_heartbeats_missed",
                    "Heartbeats to a peer node that got no answer within the peer timeout.",
                    peers
                        .iter()
                        .map(|(peer, health)| (vec![label("peer", peer)], health.missed as f64))
                        .collect(),
                ),
            ],
            gauges: vec![
                (
                    "tally_uptime_seconds",
                    "Seconds since the node started.",
                    vec![(vec![], uptime.as_secs_f64())],
                ),
                (
                    "tally_wal_durable_lsn",
                    "The WAL's last durable log sequence number.",
                    vec![(vec![], wal.durable_lsn as f64)],
                ),
                (
                    "tally_in_doubt_transactions",
                    "Transactions prepared on the shards this node leads, without a decision.",
                    vec![(vec![], in_doubt as f64)],
                ),
                (
                    "tally_raft_leader",
                    "1 when this node's replica of the shard leads its group, else 0.",
                    per_group(&|group| f64::from(u8::from(group.role == ReplicaRole::Leader))),
                ),
                (
                    "tally_raft_follower_lag_entries",
                    "On a leader: entries each replica lacks of the leader's log.",
                    lag,
                ),
                (
                    "tally_raft_replica_up",
                    "On a leader: 1 when the replica answered within an election timeout.",
                    replica_up,
                ),
                (
                    "tally_2pc_in_flight_transfers",
                    "Transfers between their request and their decision at the coordinators of the shards this node leads.",
                    vec![(vec![], in_flight as f64)],
                ),
                (
                    "tally_2pc_awaiting_ack_decisions",
                    "Logged decisions some participant has not acknowledged, at the coordinators of the shards this node leads.",
                    vec![(vec![], awaiting_ack as f64)],
                ),
                (
                    "tally_peer_up",
                    "1 when the peer node answered the last heartbeat.",
                    peers
                        .iter()
                        .map(|(peer, health)| {
                            (vec![label("peer", peer)], f64::from(u8::from(health.up)))
                        })
                        .collect(),
                ),
                (
                    "tally_peer_rtt_seconds",
                    "Round trip of the last heartbeat the peer node answered.",
                    peers
                        .iter()
                        .map(|(peer, health)| (vec![label("peer", peer)], health.rtt.as_secs_f64()))
                        .collect(),
                ),
            ],
            histograms: vec![
                (
                    "tally_transfer_duration_seconds",
                    "Client transfers coordinated here, from request to answer.",
                    metrics.transfer_seconds.snapshot(),
                ),
                (
                    "tally_wal_fsync_duration_seconds",
                    "The fdatasync closing each WAL group commit.",
                    wal.fsync,
                ),
                (
                    "tally_2pc_prepare_duration_seconds",
                    "A remote participant's vote round: PREPARE sent to votes received.",
                    prepare,
                ),
                (
                    "tally_2pc_decide_duration_seconds",
                    "Logging a batch's decisions, with the coordinating shard's own part applied.",
                    decide,
                ),
                (
                    "tally_2pc_deliver_duration_seconds",
                    "Decisions sent to a participant until acknowledged (or given up for a resend).",
                    deliver,
                ),
            ],
            info: vec![label("version", version), label("node", node)],
        };
        /// Gauges with one sample per replica group, from its status.
        const PER_GROUP: [(&str, &str, GroupValue); 4] = [
            (
                "tally_raft_term",
                "The replica's current Raft term.",
                |group| group.term,
            ),
            (
                "tally_raft_last_index",
                "The replica's last log index.",
                |group| group.last_index,
            ),
            (
                "tally_raft_commit_index",
                "The replica's commit index.",
                |group| group.commit_index,
            ),
            (
                "tally_raft_applied_index",
                "The replica's applied index.",
                |group| group.applied_index,
            ),
        ];
        for (name, help, value) in PER_GROUP {
            snapshot
                .gauges
                .push((name, help, per_group(&|group| value(group) as f64)));
        }
        snapshot
    }
}

/// Writes one counter or gauge sample.
fn encode_value(kind: MetricType, value: f64, metric: MetricEncoder<'_>) -> std::fmt::Result {
    match kind {
        MetricType::Counter => ConstCounter::new(value as u64).encode(metric),
        _ => ConstGauge::new(value).encode(metric),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client appends `_total` to a counter's name.
        for (kind, metrics) in [
            (MetricType::Counter, &self.counters),
            (MetricType::Gauge, &self.gauges),
        ] {
            for (name, help, samples) in metrics {
                let mut family = encoder.encode_descriptor(name, help, None, kind)?;
                match samples.as_slice() {
                    // A metric without labels is written without braces.
                    [(labels, value)] if labels.is_empty() => encode_value(kind, *value, family)?,
                    _ => {
                        for (labels, value) in samples {
                            encode_value(kind, *value, family.encode_family(labels)?)?;
                        }
                    }
                }
            }
        }
        for (name, help, snapshot) in &self.histograms {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_SECONDS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX))
                .zip(snapshot.buckets.iter().copied())
                .collect();
            metric.encode_histogram::<NoLabelSet>(
                snapshot.sum_seconds,
                snapshot.count,
                &buckets,
                None,
            )?;
        }
        let mut build = encoder.encode_descriptor(
            "tally_build",
            "The node's version and id.",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&self.info)?;
        Ok(())
    }
}

/// The content type of [`Scrape::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
