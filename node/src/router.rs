//! Requests to a shard, wherever its leader is: the node this node last found leading each shard,
//! followed through `NotLeader` answers and moved on to the next replica when a node does not
//! answer, all within one peer timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use engine::model::NodeId;
use net::{ErrorCode, Message};

use crate::peers::{PeerError, Peers};
use client::config::ClusterConfig;

/// `NotLeader` redirects followed in a row before the call backs off.
const REDIRECTS_MAX: u32 = 4;
/// First pause before asking another replica when no leader is known; doubles each time.
const RETRY_PAUSE_FIRST: Duration = Duration::from_millis(20);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(200);

/// See the module documentation.
pub struct Router {
    config: ClusterConfig,
    peers: Arc<Peers>,
    /// The node last found leading each shard (0: none known yet).
    leaders: Vec<AtomicU32>,
}

/// Whether a failed call may be sent again: only when it surely was not applied, or applying it
/// twice is harmless (`idempotent`).
fn resendable(error: &PeerError, idempotent: bool) -> bool {
    idempotent || error.surely_not_applied()
}

impl Router {
    pub fn new(config: ClusterConfig, peers: Arc<Peers>) -> Self {
        let leaders = (0..config.shard_count).map(|_| AtomicU32::new(0)).collect();
        Self {
            config,
            peers,
            leaders,
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn peers(&self) -> &Arc<Peers> {
        &self.peers
    }

    /// The node to ask first for `shard`.
    pub fn leader_of(&self, shard: u32) -> NodeId {
        match self.leaders[shard as usize].load(Ordering::Relaxed) {
            0 => self.config.preferred_leader(shard),
            known => known,
        }
    }

    /// Learns who leads `shard` (from this node's own replica, or an answer).
    pub fn learn_leader(&self, shard: u32, node: NodeId) {
        if node != 0 && self.config.replicas_of(shard).contains(&node) {
            self.leaders[shard as usize].store(node, Ordering::Relaxed);
        }
    }

    fn next_replica(&self, shard: u32, after: NodeId) -> NodeId {
        let replicas = self.config.replicas_of(shard);
        let position = replicas.iter().position(|node| *node == after);
        let next = position.map_or(0, |position| (position + 1) % replicas.len());
        replicas[next]
    }

    /// Sends `request` (for `shard`) to the shard's leader and returns its answer, following
    /// `NotLeader` and trying the other replicas when one does not answer, for at most one peer
    /// timeout. `idempotent` requests are also resent after a failure that may have delivered
    /// them; others only after failures that surely did not.
    pub async fn call(
        &self,
        shard: u32,
        request: impl Into<Message>,
        idempotent: bool,
    ) -> Result<Message, PeerError> {
        let request = request.into();
        let deadline = Instant::now() + self.peers.timeout();
        let mut node = self.leader_of(shard);
        let mut redirects = 0;
        let mut pause = RETRY_PAUSE_FIRST;
        loop {
            let error = match self.peers.call(node, request.clone()).await {
                Ok(answer) => {
                    self.learn_leader(shard, node);
                    return Ok(answer);
                }
                Err(error) => error,
            };
            let not_leader = match &error {
                PeerError::Refused { error, .. } if error.code == ErrorCode::NotLeader => {
                    Some(error.redirect_node_id)
                }
                _ => None,
            };
            let next = match not_leader {
                Some(Some(leader))
                    if redirects < REDIRECTS_MAX
                        && leader != node
                        && self.config.replicas_of(shard).contains(&leader) =>
                {
                    redirects += 1;
                    self.learn_leader(shard, leader);
                    node = leader;
                    continue;
                }
                // Nothing was done there: ask the next replica, after a pause.
                Some(_) => self.next_replica(shard, node),
                None if resendable(&error, idempotent)
                    && !matches!(error, PeerError::Refused { .. }) =>
                {
                    self.next_replica(shard, node)
                }
                None => return Err(error),
            };
            redirects = 0;
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RETRY_PAUSE_MAX);
            node = next;
        }
    }
}
