//! What a node tells the web console (`console` crate, served by `http`): a status document with
//! the last five minutes second by second, sampled here once a second from the metrics, so that
//! the page can merge every node's and draw throughput, latency and flows over time; and the
//! heartbeats each node sends its peers twice a second (round trip, up or down, answer age).
//!
//! Bounds: [`SECONDS_KEPT`] seconds, [`crate::metrics::RECENT_TRANSFERS_MAX`] recent transfers,
//! one heartbeat in flight per peer.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::model::{AbortReason, Outcome};
use engine::stats::{LATENCY_BOUNDS_SECONDS, LatencySnapshot};
use net::{GroupStatus, Heartbeat, Message};
use serde_json::{Value, json};

use crate::metrics::ABORT_REASONS;
use crate::node::Node;

/// Seconds of history each node keeps for the console.
pub const SECONDS_KEPT: usize = 300;
/// How often a node sends each peer a heartbeat.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// A heartbeat unanswered this long counts as missed.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// One second of a node's activity.
#[derive(Debug, Clone)]
struct Second {
    /// Unix time, in seconds, at the end of the second.
    t: u64,
    committed: u64,
    aborted: Vec<u64>,
    latency: Vec<u64>,
    max_ms: f64,
    flows: Vec<u64>,
    group_commits: u64,
    wal_bytes: u64,
    cpu_percent: f64,
}

/// The console's state on one node.
pub struct Console {
    data_dir: PathBuf,
    seconds: Mutex<VecDeque<Second>>,
    /// The process's CPU use over the last second, in percent of one core (f64 bits).
    cpu_percent: AtomicU64,
}

impl Console {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            seconds: Mutex::new(VecDeque::with_capacity(SECONDS_KEPT)),
            cpu_percent: AtomicU64::new(0),
        }
    }

    fn seconds(&self) -> std::sync::MutexGuard<'_, VecDeque<Second>> {
        self.seconds
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Samples the metrics at every wall-clock second, for as long as the node runs.
pub async fn sample_loop(node: Arc<Node>) {
    let mut previous = node.metrics.counts();
    let mut previous_wal = node.wal.stats();
    let mut previous_cpu = (cpu_ticks(), Instant::now());
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let to_next = Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos()));
        tokio::time::sleep(to_next).await;
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
            .round() as u64;
        let counts = node.metrics.counts();
        let wal = node.wal.stats();
        let cpu = (cpu_ticks(), Instant::now());
        let cpu_percent = match (previous_cpu.0, cpu.0) {
            (Some(before), Some(after)) => {
                let busy = after.saturating_sub(before) as f64 / clock_ticks_per_second();
                100.0 * busy / cpu.1.duration_since(previous_cpu.1).as_secs_f64().max(1e-3)
            }
            _ => 0.0,
        };
        node.console
            .cpu_percent
            .store(cpu_percent.to_bits(), Ordering::Relaxed);
        let second = Second {
            t,
            committed: counts.committed.saturating_sub(previous.committed),
            aborted: differences(&counts.aborted, &previous.aborted),
            latency: differences(&counts.latency, &previous.latency),
            max_ms: counts.max_nanos as f64 / 1e6,
            flows: differences(&counts.flows, &previous.flows),
            group_commits: wal
                .groups_written
                .saturating_sub(previous_wal.groups_written),
            wal_bytes: wal.bytes_written.saturating_sub(previous_wal.bytes_written),
            cpu_percent,
        };
        {
            let mut seconds = node.console.seconds();
            if seconds.len() == SECONDS_KEPT {
                seconds.pop_front();
            }
            seconds.push_back(second);
        }
        previous = counts;
        previous_wal = wal;
        previous_cpu = cpu;
    }
}

fn differences(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter()
        .enumerate()
        .map(|(index, value)| value.saturating_sub(before.get(index).copied().unwrap_or(0)))
        .collect()
}

/// Sends every peer a heartbeat every [`HEARTBEAT_INTERVAL`], and records what came back.
pub async fn heartbeat_loop(node: Arc<Node>) {
    let peers: Vec<u32> = node
        .config
        .nodes
        .iter()
        .map(|peer| peer.id)
        .filter(|id| *id != node.id)
        .collect();
    let mut ticker = tokio::time::interval(HEARTBEAT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let status = node.status();
        let mut calls = tokio::task::JoinSet::new();
        for peer in &peers {
            let node = node.clone();
            let peer = *peer;
            let beat = Heartbeat {
                node_id: node.id,
                last_lsn: status.last_lsn,
                in_doubt_count: status.in_doubt_count,
                uptime_seconds: status.uptime_seconds,
            };
            calls.spawn(async move {
                let started = Instant::now();
                let answer =
                    tokio::time::timeout(HEARTBEAT_TIMEOUT, node.router.peers().call(peer, beat))
                        .await;
                let answered = matches!(answer, Ok(Ok(Message::HeartbeatReply(_))));
                let mut peers = node
                    .metrics
                    .peers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let health = peers.entry(peer).or_default();
                health.up = answered;
                if answered {
                    health.rtt = started.elapsed();
                    health.last_answer = Some(Instant::now());
                } else {
                    health.missed += 1;
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }
}

/// The CPU time this process used so far, in clock ticks (Linux: `/proc/self/stat`).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory, in bytes (Linux: `/proc/self/statm`).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Free space for unprivileged users on the file system holding `path`.
fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `stats` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    Some(stats.f_bavail as u64 * stats.f_frsize as u64)
}

fn reason_name(code: usize) -> String {
    AbortReason::from_code(code as u8)
        .map_or_else(|| format!("code {code}"), |reason| format!("{reason:?}"))
}

/// A quantile of a latency snapshot, in ms: the upper bound of its bucket (`None` when empty).
fn quantile_ms(snapshot: &LatencySnapshot, q: f64) -> Option<f64> {
    let total: u64 = snapshot.buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let mut seen = 0;
    for (index, count) in snapshot.buckets.iter().enumerate() {
        seen += count;
        if seen as f64 >= q * total as f64 {
            let bound = LATENCY_BOUNDS_SECONDS
                .get(index)
                .copied()
                .unwrap_or(LATENCY_BOUNDS_SECONDS[LATENCY_BOUNDS_SECONDS.len() - 1] * 2.0);
            return Some(bound * 1000.0);
        }
    }
    None
}

fn phase(snapshot: &LatencySnapshot) -> Value {
    json!({
        "count": snapshot.count,
        "p50_ms": quantile_ms(snapshot, 0.5),
        "p99_ms": quantile_ms(snapshot, 0.99),
    })
}

fn group_json(group: &GroupStatus) -> Value {
    json!({
        "shard": group.shard,
        "role": format!("{:?}", group.role),
        "leader": group.leader,
        "term": group.term,
        "last": group.last_index,
        "commit": group.commit_index,
        "applied": group.applied_index,
        "in_doubt": group.in_doubt_count,
        "replicas": group.replicas.iter().map(|replica| json!({
            "node": replica.node_id,
            "health": format!("{:?}", replica.health),
            "matched": replica.matched_index,
            "lag": group.last_index.saturating_sub(replica.matched_index),
        })).collect::<Vec<_>>(),
    })
}

/// The status document (`GET /api/status`): seconds after `since` (unix seconds) only.
pub fn status(node: &Node, groups: &[GroupStatus], since: u64) -> Value {
    let metrics = &node.metrics;
    let wal = node.wal.stats();
    let status = node.status();
    let (in_flight, awaiting_ack) = metrics.coordinator_totals(groups);
    let [prepare, decide, deliver] = metrics.phases();
    let totals = metrics.transfer_totals();
    let peers: Vec<Value> = metrics
        .peers
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|(peer, health)| {
            json!({
                "node": peer,
                "up": health.up,
                "rtt_ms": health.rtt.as_secs_f64() * 1000.0,
                "age_ms": health.last_answer.map(|at| at.elapsed().as_millis() as u64),
                "missed": health.missed,
            })
        })
        .collect();
    let seconds: Vec<Value> = node
        .console
        .seconds()
        .iter()
        .filter(|second| second.t > since)
        .map(|second| {
            let aborted: serde_json::Map<String, Value> = second
                .aborted
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(code, count)| (reason_name(code), json!(count)))
                .collect();
            json!({
                "t": second.t,
                "committed": second.committed,
                "aborted": aborted,
                "latency": second.latency,
                "max_ms": second.max_ms,
                "flows": second.flows,
                "fsyncs": second.group_commits,
                "wal_bytes": second.wal_bytes,
                "cpu": second.cpu_percent,
            })
        })
        .collect();
    let recent: Vec<Value> = metrics
        .recent()
        .iter()
        .map(|transfer| {
            json!({
                "id": transfer.id.to_string(),
                "debit": transfer.debit,
                "credit": transfer.credit,
                "amount": transfer.amount,
                "outcome": match transfer.outcome {
                    Outcome::Committed => "committed".to_owned(),
                    Outcome::Aborted(reason) => format!("aborted: {reason:?}"),
                },
                "ms": transfer.elapsed.as_secs_f64() * 1000.0,
                "at_ms": transfer.at_unix_ms,
            })
        })
        .collect();
    let aborted: serde_json::Map<String, Value> = totals
        .1
        .iter()
        .enumerate()
        .take(ABORT_REASONS)
        .filter(|(_, count)| **count > 0)
        .map(|(code, count)| (reason_name(code), json!(count)))
        .collect();
    json!({
        "node": node.id,
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": crate::node::now_unix_ms(),
        "uptime_s": node.started.elapsed().as_secs_f64(),
        "shard_count": node.config.shard_count,
        "process": {
            "cpu_percent": f64::from_bits(node.console.cpu_percent.load(Ordering::Relaxed)),
            "rss_bytes": resident_bytes(),
            "disk_free_bytes": free_disk_bytes(&node.console.data_dir),
        },
        "wal": {
            "durable_lsn": wal.durable_lsn,
            "records": wal.records_appended,
            "group_commits": wal.groups_written,
            "bytes": wal.bytes_written,
            "fsync_p50_ms": quantile_ms(&wal.fsync, 0.5),
            "fsync_p99_ms": quantile_ms(&wal.fsync, 0.99),
        },
        "in_doubt": status.in_doubt_count,
        "in_flight": in_flight,
        "awaiting_ack": awaiting_ack,
        "presumed_aborts": metrics.presumed_abort_count(),
        "lock_conflicts": metrics.lock_conflicts(),
        "funds_held": metrics.funds_held(),
        "transfers": { "committed": totals.0, "aborted": aborted },
        "phases": { "prepare": phase(&prepare), "decide": phase(&decide), "deliver": phase(&deliver) },
        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
        "peers": peers,
        "recent": recent,
        "series": seconds,
    })
}
