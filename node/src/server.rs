//! `tally start`: one node. Opens its WAL (the Raft log of every group it hosts) and the tables
//! of each shard it holds a replica of, runs the replication driver (which opens a shard's
//! service, coordinator and in-doubt resolution included, while this node leads it), serves
//! clients and peers, and flushes the tables now and then; on SIGINT or SIGTERM it hands its
//! leaderships over, then stops.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use engine::model::NodeId;
use engine::tables::{RocksTables, Tables};
use engine::wal::Wal;
use net::{Server, ServerConfig};
use replica::{Group, GroupOptions};
use tokio::sync::Notify;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::engine_calls::blocking;
use crate::failpoint;
use crate::node::{Node, NodeHandler};
use crate::peers::Peers;
use crate::replication;
use crate::router::Router;
use crate::shard::ShardServer;
use client::config::ClusterConfig;

/// A peer that does not answer within this long counts as unavailable: the transfers waiting on
/// it abort (participant unavailable).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a stopping node waits for the groups it leads to elect other leaders.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the tables are flushed.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Threads for engine calls that may block: audit scans, history pages, status look-ups, reads
/// waiting (at most 50 ms) for shared locks, checkpoints. Writes never take one (they await the
/// group commit as a future), so a small pool suffices; more such calls wait their turn, within
/// the bounds on connections and requests in flight.
const BLOCKING_THREADS_MAX: usize = 64;

/// Log lines waiting for the writer thread, per destination; when it falls this far behind,
/// further lines are dropped rather than making a request wait.
const LOG_LINES_QUEUED_MAX: usize = 65_536;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One line per event for people: time, level, target, message, fields.
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`) and
    /// the enclosing spans.
    Json,
}

/// What `tally start` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub id: NodeId,
    pub cluster: PathBuf,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
}

/// Logs to stderr and to `tally.log` in the data dir, in `format`; the level comes from
/// `RUST_LOG`. Lines are written by a thread of their own from a bounded queue (lossy when
/// full): logging never blocks a request. The guards flush what is queued when dropped.
fn init_logging(
    data_dir: &Path,
    format: LogFormat,
) -> anyhow::Result<[tracing_appender::non_blocking::WorkerGuard; 2]> {
    let path = data_dir.join("tally.log");
    let file: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| {
            format!(
                "cannot write in the data dir {}: cannot open the log file {}",
                data_dir.display(),
                path.display()
            )
        })?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let non_blocking = |writer| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_LINES_QUEUED_MAX)
            .lossy(true)
            .finish(writer)
    };
    let (stderr, stderr_guard) =
        non_blocking(Box::new(std::io::stderr()) as Box<dyn std::io::Write + Send>);
    let (file, file_guard) = non_blocking(Box::new(file));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match format {
        LogFormat::Human => registry
            .with(tracing_subscriber::fmt::layer().with_writer(stderr))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(file),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(stderr))
            .with(tracing_subscriber::fmt::layer().json().with_writer(file))
            .try_init(),
    };
    installed.context("cannot set up logging")?;
    Ok([stderr_guard, file_guard])
}

/// Runs a node until SIGINT or SIGTERM.
pub fn start(options: StartOptions) -> anyhow::Result<()> {
    let config = ClusterConfig::load(&options.cluster)?;
    let Some(me) = config.node(options.id).cloned() else {
        bail!(
            "node {} is not in the cluster file {}",
            options.id,
            options.cluster.display()
        );
    };
    let data_dir = &options.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
    let _log_writers = init_logging(data_dir, options.log_format)?;
    crate::node::set_node_id(me.id);
    tracing::info!(node = me.id, address = %me.address, data_dir = %data_dir.display(), shards = ?me.shards, "starting");

    let wal_dir = data_dir.join("wal");
    let (wal, wal_report) = Wal::open_directory(&wal_dir, failpoint::wal_options()?)
        .with_context(|| format!("cannot open the WAL in {}", wal_dir.display()))?;
    let wal = Arc::new(wal);
    let mut recovered = replica::store::recover(&wal).with_context(|| {
        format!(
            "cannot recover the replicated log from {}",
            wal_dir.display()
        )
    })?;
    tracing::info!(
        segments = wal_report.segments,
        last_lsn = wal_report.last_lsn,
        torn_bytes_dropped = wal_report.torn_bytes_dropped,
        groups = recovered.len(),
        "WAL recovered"
    );
    if let Some(stray) = recovered.keys().find(|shard| !me.shards.contains(shard)) {
        bail!(
            "the WAL in {} holds a replica of shard {stray}, which the cluster file {} does not give node {}",
            wal_dir.display(),
            options.cluster.display(),
            me.id
        );
    }

    let wake = Arc::new(Notify::new());
    let peers = Arc::new(Peers::new(config.clone(), PEER_TIMEOUT));
    let router = Arc::new(Router::new(config.clone(), peers));
    let mut groups = BTreeMap::new();
    let mut shards = BTreeMap::new();
    let mut held = Vec::new();
    for &shard in &me.shards {
        let tables_dir = data_dir.join(format!("shard-{shard}"));
        let tables = Arc::new(
            RocksTables::open(&tables_dir)
                .with_context(|| format!("cannot open the tables in {}", tables_dir.display()))?,
        );
        let voters: Vec<u64> = config
            .replicas_of(shard)
            .iter()
            .map(|node| u64::from(*node))
            .collect();
        let fresh = !recovered.contains_key(&shard);
        let wake = wake.clone();
        let mut group = Group::open(
            shard,
            u64::from(me.id),
            &voters,
            recovered.remove(&shard),
            wal.clone(),
            tables.clone(),
            GroupOptions::default(),
            Arc::new(move || wake.notify_one()),
        )
        .with_context(|| format!("cannot open the replica of shard {shard}"))?;
        // A new group's first leader is the replica the cluster file names, so that leaders
        // start spread over the nodes; a group of one leads at once.
        if voters.len() == 1 || (fresh && config.preferred_leader(shard) == me.id) {
            group
                .campaign()
                .with_context(|| format!("shard {shard} cannot stand for election"))?;
        } else if fresh {
            // The other replicas leave it the first election (`Driver::hold_first_elections`).
            held.push(shard);
        }
        shards.insert(shard, Arc::new(ShardServer::new(shard, tables)));
        groups.insert(shard, group);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
        .context("cannot start the async runtime")?;
    let served = runtime.block_on(async {
        let metrics = Arc::new(crate::metrics::Metrics::new(config.shard_count));
        let (mut driver, replication) = replication::Driver::new(
            me.id,
            groups,
            shards.clone(),
            wal.clone(),
            router.clone(),
            wake,
            metrics.clone(),
        );
        let node = Arc::new(Node {
            id: me.id,
            config: config.clone(),
            router,
            started: Instant::now(),
            shards,
            replication: replication.clone(),
            wal: wal.clone(),
            metrics,
            console: crate::console::Console::new(data_dir.clone()),
        });
        driver.hold_first_elections(&held);
        driver.open_single_replicas().await;
        // Its bound on requests in flight per connection is what a peer's connection may send
        // (node-to-node traffic shares one): both are `net::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX`.
        let server_config = ServerConfig::default();
        let server = Server::bind(
            me.address.as_str(),
            server_config,
            NodeHandler(node.clone()),
        )
        .await
        .with_context(|| format!("cannot listen on {}", me.address))?;
        let http = match &me.http {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address.as_str())
                    .await
                    .with_context(|| format!("cannot listen for HTTP on {address}"))?,
            ),
            None => None,
        };
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(listener) = http {
            tracing::info!(address = ?me.http, "serving /metrics and the console over HTTP");
            let node = node.clone();
            tasks.spawn(async move {
                if let Err(error) = crate::http::serve(listener, node, std::future::pending()).await
                {
                    tracing::error!(%error, "the HTTP server stopped");
                }
            });
        }
        tasks.spawn(driver.run());
        tasks.spawn(checkpoint_loop(node.clone()));
        tasks.spawn(crate::console::sample_loop(node.clone()));
        tasks.spawn(crate::console::heartbeat_loop(node.clone()));
        tracing::info!(address = %me.address, "serving");
        let result = server
            .run(async move {
                shutdown_signal().await;
                // Leaderships go to other replicas while this node still answers, so that the
                // groups it led elect at once instead of after an election timeout.
                replication.hand_over(HAND_OVER_TIMEOUT).await;
            })
            .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let flushed = node.clone();
        blocking(move || checkpoint(&flushed)).await;
        result.context("server failed")
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    served?;
    tracing::info!("stopped");
    Ok(())
}

/// Makes every shard's tables durable (the replicated log is replayed from the start of what it
/// keeps anyway; a flush shortens that replay only).
fn checkpoint(node: &Node) {
    for server in node.shards.values() {
        if let Err(error) = server.tables.flush() {
            tracing::error!(shard = server.shard, %error, "flushing the tables failed");
        }
    }
}

async fn checkpoint_loop(node: Arc<Node>) {
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        let flushed = node.clone();
        blocking(move || checkpoint(&flushed)).await;
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}
