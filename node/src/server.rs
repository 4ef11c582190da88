//! `tally start`: one node. Opens the shard (WAL, then tables, then replay), serves clients and
//! peers, runs the coordinator's batch loop, decision resends and in-doubt resolution, and
//! checkpoints now and then; stops cleanly on SIGINT or SIGTERM.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use engine::model::NodeId;
use engine::tables::RocksTables;
use engine::wal::Wal;
use engine::{Engine, EngineOptions};
use net::{Server, ServerConfig};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::coordinator::resolve_in_doubt_loop;
use crate::engine_calls::blocking;
use crate::failpoint;
use crate::node::{Node, NodeHandler};
use client::config::ClusterConfig;

/// A peer that does not answer within this long counts as unavailable: the transfers waiting on
/// it abort (participant unavailable).
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
/// A transaction in doubt this long is asked about; decisions normally take milliseconds.
const IN_DOUBT_GRACE: Duration = Duration::from_secs(1);
/// How often the tables are flushed and the WAL below them deleted.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(30);
/// Threads for engine calls that may block: audit scans, history pages, status look-ups, reads
/// waiting (at most 50 ms) for shared locks, checkpoints. Writes never take one (they await the
/// group commit as a future), so a small pool suffices; more such calls wait their turn, within
/// the bounds on connections and requests in flight.
const BLOCKING_THREADS_MAX: usize = 64;

/// What `tally start` needs.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub id: NodeId,
    pub cluster: PathBuf,
    pub data_dir: PathBuf,
}

/// Logs to stderr and to `tally.log` in the data dir; the level comes from `RUST_LOG`.
fn init_logging(data_dir: &Path) -> anyhow::Result<()> {
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
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(Mutex::new(file)),
        )
        .try_init()
        .context("cannot set up logging")?;
    Ok(())
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
    init_logging(data_dir)?;
    tracing::info!(node = me.id, address = %me.address, data_dir = %data_dir.display(), shards = ?me.shards, "starting");

    let wal_dir = data_dir.join("wal");
    let (wal, wal_report) = Wal::open_directory(&wal_dir, failpoint::wal_options()?)
        .with_context(|| format!("cannot open the WAL in {}", wal_dir.display()))?;
    let tables_dir = data_dir.join("tables");
    let tables = RocksTables::open(&tables_dir)
        .with_context(|| format!("cannot open the tables in {}", tables_dir.display()))?;
    let (engine, report) = Engine::open(wal, tables, EngineOptions::default())
        .context("cannot recover the shard from its WAL")?;
    tracing::info!(
        segments = wal_report.segments,
        last_lsn = wal_report.last_lsn,
        torn_bytes_dropped = wal_report.torn_bytes_dropped,
        applied_lsn_before = report.applied_lsn_before,
        records_replayed = report.records_replayed,
        in_doubt = report.in_doubt.len(),
        "recovered"
    );
    for transaction in &report.in_doubt {
        tracing::info!(transaction = %transaction.id, coordinator = transaction.coordinator, "in doubt after restart");
    }
    let engine = Arc::new(engine);
    let (node, driver) = Node::new(me.id, config, engine.clone(), PEER_TIMEOUT)
        .context("cannot load the coordinator's decisions")?;
    if driver.unended_count() > 0 {
        tracing::info!(
            count = driver.unended_count(),
            "decisions to resend after restart"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .build()
        .context("cannot start the async runtime")?;
    let recovered: Vec<_> = report
        .in_doubt
        .iter()
        .map(|transaction| transaction.id)
        .collect();
    let served = runtime.block_on(async {
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
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(driver.run());
        tasks.spawn(resolve_in_doubt_loop(
            node.id,
            node.engine.clone(),
            node.peers.clone(),
            node.coordinator.clone(),
            recovered,
            IN_DOUBT_GRACE,
        ));
        tasks.spawn(checkpoint_loop(node.clone()));
        tracing::info!(address = %me.address, "serving");
        let result = server.run(shutdown_signal()).await;
        tasks.abort_all();
        result.context("server failed")
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(node);
    served?;
    match Arc::try_unwrap(engine) {
        Ok(engine) => {
            if let Err(error) = engine.checkpoint() {
                tracing::warn!(%error, "final checkpoint failed; the next start replays more");
            }
        }
        Err(_) => tracing::warn!("engine still in use at shutdown; skipping the final checkpoint"),
    }
    tracing::info!("stopped");
    Ok(())
}

async fn checkpoint_loop(node: Arc<Node>) {
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        let engine = node.engine.clone();
        match blocking(move || engine.checkpoint()).await {
            Ok(deleted) => tracing::debug!(segments_deleted = deleted, "checkpoint"),
            Err(error) => tracing::error!(%error, "checkpoint failed"),
        }
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
