//! One shard this node holds a replica of. While the replica leads, the shard is *served*: an
//! engine is open over the group's log, a coordinator runs the transfers whose debit account is
//! here, and the in-doubt loop asks other shards' coordinators about transactions prepared here.
//! The replication driver opens and closes the service as leadership comes and goes; requests
//! meet either the service or a `NotLeader` answer naming the leader this replica knows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use engine::model::TransferId;
use engine::tables::RocksTables;
use engine::{OpenReport, StorageError};
use net::ErrorResponse;

use crate::coordinator::{Coordinator, resolve_in_doubt_loop};
use crate::engine_calls::{NodeEngine, lock};
use crate::router::Router;
use crate::snapshot::Held;

/// A transaction in doubt this long is asked about; decisions normally take milliseconds.
const IN_DOUBT_GRACE: Duration = Duration::from_secs(1);

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
    /// Consistent cuts holding this shard, until released or their lease ends.
    pub snapshots: Arc<Mutex<HashMap<u128, Held>>>,
}

impl ShardServer {
    pub fn new(shard: u32, tables: Arc<RocksTables>) -> Self {
        Self {
            shard,
            tables,
            serving: RwLock::new(None),
            leader: AtomicU32::new(0),
            snapshots: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The service, while this replica leads and serves.
    pub fn serving(&self) -> Option<Arc<Serving>> {
        self.serving
            .read()
            .expect("a thread panicked holding the serving lock")
            .clone()
    }

    /// The service, or the `NotLeader` answer that names the leader this replica knows.
    pub fn serving_or_redirect(&self) -> Result<Arc<Serving>, ErrorResponse> {
        self.serving()
            .ok_or_else(|| ErrorResponse::not_leader(self.leader(), self.shard))
    }

    pub fn leader(&self) -> Option<u32> {
        match self.leader.load(Ordering::Relaxed) {
            0 => None,
            leader => Some(leader),
        }
    }

    pub fn set_leader(&self, leader: u64) {
        self.leader.store(leader as u32, Ordering::Relaxed);
    }

    /// This replica leads and its engine is open: start serving.
    pub fn open(
        &self,
        engine: Arc<NodeEngine>,
        report: &OpenReport,
        router: &Arc<Router>,
    ) -> Result<(), StorageError> {
        let (coordinator, driver) = Coordinator::new(self.shard, engine.clone(), router.clone())?;
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

    /// This replica stopped leading: stop serving. Snapshots held here end with the engine.
    pub fn close(&self) {
        let serving = self
            .serving
            .write()
            .expect("a thread panicked holding the serving lock")
            .take();
        if serving.is_some() {
            lock(&self.snapshots).clear();
            tracing::info!(shard = self.shard, "stopped serving");
        }
    }
}
