//! Connections from this node to the other nodes: one pipelined connection per peer, made on
//! first use and made again after it fails. Every call is bounded by a timeout.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use engine::model::NodeId;
use net::{Client, ClientConfig, ClientError, ErrorResponse, Message};

use client::config::ClusterConfig;

/// Why a peer did not answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node {0} is not in the cluster file")]
    UnknownNode(NodeId),
    #[error("node {node} unreachable: {source}")]
    Unreachable { node: NodeId, source: ClientError },
    #[error("node {node} refused: {code:?}: {message}", code = .error.code, message = .error.message)]
    Refused { node: NodeId, error: ErrorResponse },
    /// No connection could be made: the request was never sent.
    #[error("cannot connect to node {node}: {reason}")]
    NotConnected { node: NodeId, reason: String },
    #[error("node {node} did not answer within {timeout:?}")]
    Timeout { node: NodeId, timeout: Duration },
}

impl PeerError {
    /// The request surely was not applied by the peer (never sent, or refused).
    pub fn surely_not_applied(&self) -> bool {
        match self {
            PeerError::UnknownNode(_) | PeerError::NotConnected { .. } => true,
            PeerError::Refused { error, .. } => matches!(
                error.code,
                net::ErrorCode::Overloaded | net::ErrorCode::ShuttingDown
            ),
            PeerError::Unreachable { .. } | PeerError::Timeout { .. } => false,
        }
    }
}

pub struct Peers {
    config: ClusterConfig,
    client_config: ClientConfig,
    connections: Mutex<HashMap<NodeId, Client>>,
    /// Peers whose connection was lost (see [`Peers::connection_lost`]); at most one entry per
    /// node of the cluster file.
    lost: Mutex<HashSet<NodeId>>,
}

impl Peers {
    pub fn new(config: ClusterConfig, timeout: Duration) -> Self {
        Peers {
            config,
            client_config: ClientConfig {
                // Requests to one peer awaiting answers at once (a batch frame counts as one):
                // as many as its server takes on one connection.
                requests_in_flight_max: net::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
                request_timeout: timeout,
                connect_timeout: timeout,
            },
            connections: Mutex::new(HashMap::new()),
            lost: Mutex::new(HashSet::new()),
        }
    }

    /// The bound on one call, connecting included.
    pub fn timeout(&self) -> Duration {
        self.client_config.request_timeout
    }

    fn cached(&self, node: NodeId) -> Option<Client> {
        lock(&self.connections).get(&node).cloned()
    }

    /// True when `node` ended this node's connection to it (an end of stream or a reset, as when
    /// its process exits) and no call to it has been answered since, or when the last try to
    /// connect to it failed. A hint for failure detection, never proof: a peer that is only slow
    /// or silent (a call timing out, a connection this side gave up on) does not count as lost.
    pub fn connection_lost(&self, node: NodeId) -> bool {
        lock(&self.lost).contains(&node)
            || self.cached(node).is_some_and(|client| client.peer_closed())
    }

    fn set_lost(&self, node: NodeId, lost: bool) {
        let mut set = lock(&self.lost);
        if lost {
            set.insert(node);
        } else {
            set.remove(&node);
        }
    }

    /// Sends `request` to `node` and waits for its answer; connecting and answering together
    /// take at most the peer timeout.
    pub async fn call(
        &self,
        node: NodeId,
        request: impl Into<Message>,
    ) -> Result<Message, PeerError> {
        let timeout = self.client_config.request_timeout;
        match tokio::time::timeout(timeout, self.call_unbounded(node, request.into())).await {
            Ok(answer) => answer,
            Err(_) => Err(PeerError::Timeout { node, timeout }),
        }
    }

    async fn call_unbounded(&self, node: NodeId, request: Message) -> Result<Message, PeerError> {
        let client = match self.cached(node) {
            Some(client) => client,
            None => {
                let address = &self
                    .config
                    .node(node)
                    .ok_or(PeerError::UnknownNode(node))?
                    .address;
                let client = Client::connect(address.as_str(), self.client_config.clone())
                    .await
                    .map_err(|source| {
                        // Refused or reset, not merely slow to answer.
                        if matches!(source, ClientError::Connect(_)) {
                            self.set_lost(node, true);
                        }
                        PeerError::NotConnected {
                            node,
                            reason: source.to_string(),
                        }
                    })?;
                lock(&self.connections).insert(node, client.clone());
                client
            }
        };
        match client.call(request).await {
            Ok(answer) => {
                self.set_lost(node, false);
                Ok(answer)
            }
            Err(ClientError::Remote(error)) => {
                self.set_lost(node, false);
                Err(PeerError::Refused { node, error })
            }
            Err(source) => {
                if client.peer_closed() {
                    self.set_lost(node, true);
                }
                // The connection may be dead: the next call makes a new one.
                let mut connections = lock(&self.connections);
                if connections
                    .get(&node)
                    .is_some_and(|cached| cached.same_connection(&client))
                {
                    connections.remove(&node);
                }
                Err(PeerError::Unreachable { node, source })
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
