//! One shard this node holds a replica of. While the replica leads, the shard is *served*: an
//! engine is open over the group's log, a coordinator runs the transfers whose debit account is
//! here, and the in-doubt loop asks other shards' coordinators about transactions prepared here.
//! The replication driver opens and closes the service as leadership comes and goes; requests
//! meet either the service or a `NotLeader` answer naming the leader this replica knows.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use engine::model::TransferId;
use engine::tables::RocksTables;
use engine::{OpenReport, StorageError};
use net::ErrorResponse;

use crate::coordinator::{Coordinator, resolve_in_doubt_loop};
use crate::engine_calls::{NodeEngine, lock};
use crate::router::Router;

/// A transaction in doubt this long is asked about; decisions normally take milliseconds.
const IN_DOUBT_GRACE: Duration = Duration::from_secs(1);
/// Without a leader for longer than this (a few election timeouts), a replica's `NotLeader` says
/// that its group seems to lack a majority.
const LEADERLESS_NOTICE: Duration = Duration::from_secs(3);

/// What a leading replica runs.
pub(crate) struct Serving {
    pub engine: Arc<NodeEngine>,
    pub coordinator: Coordinator,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Serving {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// See the module documentation.
pub(crate) struct ShardServer {
    pub shard: u32,
    pub tables: Arc<RocksTables>,
    serving: RwLock<Option<Arc<Serving>>>,
    /// The leader this replica knows (0: none).
    leader: AtomicU32,
    /// Since when this replica has known no leader (`None` while it knows one).
    leaderless_since: Mutex<Option<Instant>>,
}

impl ShardServer {
    pub fn new(shard: u32, tables: Arc<RocksTables>) -> Self {
        Self {
            shard,
            tables,
            serving: RwLock::new(None),
            leader: AtomicU32::new(0),
            leaderless_since: Mutex::new(Some(Instant::now())),
        }
    }

    /// The service, while this replica leads and serves.
    pub fn serving(&self) -> Option<Arc<Serving>> {
        self.serving
            .read()
            .expect("a thread panicked holding the serving lock")
            .clone()
    }

    /// The service, or the `NotLeader` answer that names the leader this replica knows. Without
    /// a leader for longer than elections take, it says that a majority seems to be missing.
    pub fn serving_or_redirect(&self) -> Result<Arc<Serving>, ErrorResponse> {
        self.serving().ok_or_else(|| {
            let leader = self.leader();
            let leaderless = lock(&self.leaderless_since).map(|since| since.elapsed());
            match (leader, leaderless) {
                (None, Some(for_)) if for_ > LEADERLESS_NOTICE => ErrorResponse {
                    message: format!(
                        "shard {}: no leader for {:.1} s; a majority of its replicas is down or \
                         cut off",
                        self.shard,
                        for_.as_secs_f64()
                    ),
                    ..ErrorResponse::not_leader(None, self.shard)
                },
                _ => ErrorResponse::not_leader(leader, self.shard),
            }
        })
    }

    pub fn leader(&self) -> Option<u32> {
        match self.leader.load(Ordering::Relaxed) {
            0 => None,
            leader => Some(leader),
        }
    }

    pub fn set_leader(&self, leader: u64) {
        let before = self.leader.swap(leader as u32, Ordering::Relaxed);
        if (before == 0) != (leader == 0) {
            *lock(&self.leaderless_since) = (leader == 0).then(Instant::now);
        }
    }

    /// This replica leads and its engine is open: start serving.
    pub fn open(
        &self,
        engine: Arc<NodeEngine>,
        report: &OpenReport,
        router: &Arc<Router>,
        metrics: &Arc<crate::metrics::Metrics>,
    ) -> Result<(), StorageError> {
        let (coordinator, driver) =
            Coordinator::new(self.shard, engine.clone(), router.clone(), metrics.clone())?;
        if driver.unended_count() > 0 {
            tracing::info!(
                shard = self.shard,
                count = driver.unended_count(),
                "decisions to resend after restart or a change of leader"
            );
        }
        let recovered: Vec<TransferId> = report.in_doubt.iter().map(|t| t.id).collect();
        let tasks = vec![
            tokio::spawn(driver.run()).abort_handle(),
            tokio::spawn(resolve_in_doubt_loop(
                self.shard,
                engine.clone(),
                router.clone(),
                coordinator.clone(),
                recovered,
                IN_DOUBT_GRACE,
            ))
            .abort_handle(),
        ];
        let serving = Arc::new(Serving {
            engine,
            coordinator,
            tasks,
        });
        *self
            .serving
            .write()
            .expect("a thread panicked holding the serving lock") = Some(serving);
        tracing::info!(shard = self.shard, "serving");
        Ok(())
    }

    /// This replica stopped leading: stop serving.
    pub fn close(&self) {
        let serving = self
            .serving
            .write()
            .expect("a thread panicked holding the serving lock")
            .take();
        if serving.is_some() {
            tracing::info!(shard = self.shard, "stopped serving");
        }
    }
}
