//! The client library: typed calls to a Tally cluster that route each request to the leader of
//! its account's shard, follow redirects and leaders, and retry exactly when a retry cannot apply a
//! request twice.
//!
//! # Leaders
//!
//! A shard is held by one node or by a replica group of several ([`ClusterConfig::replicas_of`]),
//! one of which leads it and serves its requests. The client remembers, per shard, the node it
//! last found leading it, starting with [`ClusterConfig::preferred_leader`], and sends requests
//! about an account there. The remembered leaders are shared by every clone of a client. A
//! follower answers `NotLeader` naming the leader it knows, if any; the client moves its memory
//! to that node when it is a replica of the shard, and otherwise (no leader known: an election is
//! running), like after a node it could not reach, to the next replica of the shard in file order.
//! An update is made only if the memory still names the node that failed, so that many requests
//! failing on one node at once move it one step, not one step each.
//!
//! # Retries
//!
//! Every request goes through one loop (`TallyClient::send`). Each attempt is bounded by
//! [`ClientOptions::request_timeout`]; there are at most [`ClientOptions::attempts_max`] attempts,
//! with full-jitter exponential backoff between them. What ends an attempt decides what follows:
//!
//! | attempt ended with                          | then                                           |
//! |---------------------------------------------|------------------------------------------------|
//! | an answer                                   | return it                                      |
//! | connect failure (nothing was sent)          | next replica\*, retry                          |
//! | `Overloaded`, `LockConflict` or `FundsHeld` | retry (refused before doing anything)          |
//! | `ShuttingDown` (nothing was done)           | next replica\*, retry                          |
//! | `NotLeader` naming another replica          | remember it, resend there at once (an attempt) |
//! | `NotLeader` naming no other replica         | next replica\*, retry (nothing was done)       |
//! | `WrongNode` naming a node of the config     | resend there at once (counts as an attempt)    |
//! | any other error code                        | return [`ClientError::Remote`]                 |
//! | sent, then timeout or connection lost       | next replica\*, retry (a write: the same id)   |
//!
//! "Another replica" is a replica of the request's shard other than the node that answered.
//!
//! \* For a request about an account, the next replica of its shard becomes the remembered
//! leader and gets the retry. Requests any node serves (`GetBalances`, `Audit`) go to the next
//! node of the config instead, and requests to one named node (`GetTransferStatus`,
//! `GetClusterStatus`) to the same node again. "Retry" is after a backoff; "at once" is not.
//!
//! `NotLeader` and the other refusals of rows 3 to 6 mean the node did nothing with the request, so
//! every request is resent after them. Every write is idempotent: the node deduplicates
//! transfers, deposits and withdrawals by their id and account creations by the account id, so a
//! resend returns the recorded outcome (an answer, or a recorded refusal such as
//! `InsufficientFunds`) and can never apply twice.
//!
//! When the attempts run out, the last failure is returned ([`ClientError::Unavailable`], or the
//! last refusal), except for an idempotent write that some attempt may have delivered: no later
//! failure can show that delivery was not applied, so that is [`ClientError::OutcomeUnknown`].
//!
//! # Connections
//!
//! Each node gets [`ClientOptions::connections_per_node`] pipelined connections, made on first use
//! and used in turn. A connection that failed in a way that may have closed it (timeout, closed,
//! malformed answer, `Overloaded` or `ShuttingDown`, which a node also sends about a whole
//! connection) is dropped, and the next request to that node makes a new one.

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use net::{
    AccountCreated, AccountId, Audit, AuditReport, Balance, Balances, ClientConfig, ClusterStatus,
    CreateAccount, Deposit, Deposited, ErrorCode, ErrorResponse, GetBalance, GetBalances,
    GetClusterStatus, GetHistory, GetTransferStatus, History, Message, NodeId, NodeStatus,
    Transfer, TransferId, TransferOutcome, TransferResult, TransferState, TransferStatus, Withdraw,
    Withdrawn,
};
use net::{Client as Connection, ClientError as NetError};
use tokio::task::JoinSet;

use crate::config::ClusterConfig;

/// Time one node gets to answer `GetClusterStatus`: a status report must come back quickly even
/// when nodes are down, and a node that cannot answer in a second is reported down.
pub const CLUSTER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// Timeouts, retry and connection limits of a [`TallyClient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Bound on one attempt of one request, from sending to answer.
    pub request_timeout: Duration,
    /// Bound on making a connection (waiting for another request's connect included).
    pub connect_timeout: Duration,
    /// Attempts per request, the first included. At least 1.
    pub attempts_max: u32,
    /// Upper bound of the first backoff; each later one doubles, up to `backoff_max`. The actual
    /// sleep is uniform in `0..=bound` (full jitter), so retrying clients spread out.
    pub backoff_initial: Duration,
    /// Largest backoff bound.
    pub backoff_max: Duration,
    /// Connections kept to each node. At least 1.
    pub connections_per_node: u32,
    /// Requests awaiting an answer on one connection; more wait for a slot (within the request
    /// timeout). At least 1.
    pub requests_in_flight_per_connection_max: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            // With the backoff below, about 3 s on average (6 s at most) of retrying: enough to
            // outlast a Raft election after a leader dies (under a second: its followers wait
            // 0.4 to 0.8 s without its heartbeats, then elect).
            attempts_max: 12,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            connections_per_node: 1,
            requests_in_flight_per_connection_max: net::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
        }
    }
}

/// Why a call did not return an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node refused the request with a typed error code.
    #[error("node {node} refused: {code:?}: {message}")]
    Remote {
        /// The node that refused.
        node: NodeId,
        code: ErrorCode,
        /// The node's explanation, for people.
        message: String,
    },
    /// The node could not be reached, or gave no answer to a read, within the attempts. A write
    /// was surely not applied.
    #[error("node {node} unavailable: {reason}")]
    Unavailable {
        /// The node of the last attempt.
        node: NodeId,
        /// What ended the last attempt.
        reason: String,
    },
    /// A write was sent but no answer came (timeout, or the connection was lost after sending):
    /// it may or may not have been applied. For a transfer, deposit or withdrawal `id` is set:
    /// resend it with the same id, which cannot apply twice and returns its first answer (a
    /// transfer can also be resolved with [`TallyClient::transfer_status`], a deposit or
    /// withdrawal by finding its id in the account's history).
    #[error("no answer from node {node} ({reason}); the request may or may not have been applied")]
    OutcomeUnknown {
        /// The node of the last attempt.
        node: NodeId,
        /// The id of the transfer, deposit or withdrawal; `None` for an account creation.
        id: Option<TransferId>,
        /// What ended the last attempt.
        reason: String,
    },
    /// Nodes gave answers that cannot all be true (a transfer both committed and aborted).
    #[error("nodes disagree: {0}")]
    Inconsistent(String),
    /// Some nodes did not answer a transfer status query, and those that did know no decision:
    /// one of the silent nodes may hold it.
    #[error(
        "transfer {id}: node(s) {unreachable:?} did not answer, and no node that answered knows a decision ({state:?})"
    )]
    StatusIncomplete {
        /// The transfer asked about.
        id: TransferId,
        /// What the nodes that answered say (`Unknown` or `InProgress`).
        state: TransferState,
        /// The nodes that gave no answer, in config order.
        unreachable: Vec<NodeId>,
    },
    /// A node answered `WrongNode` pointing at a node that is not in the cluster config (or at
    /// none): the client's config and the cluster's disagree.
    #[error("node {node} redirected to {redirect:?}, which is not a node of the cluster config")]
    BadRedirect {
        /// The node that redirected.
        node: NodeId,
        /// Where it pointed.
        redirect: Option<NodeId>,
    },
    /// The request breaks a protocol limit (too many accounts, owner name too long) and was not
    /// sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A node answered something that does not fit the request: a bug on the node.
    #[error("node {node} broke the protocol: {reason}")]
    Protocol {
        /// The node at fault.
        node: NodeId,
        /// What was wrong with its answer.
        reason: String,
    },
}

impl ClientError {
    /// Whether the request surely was not applied and the same request, sent again later, may
    /// succeed: the node was unreachable, overloaded, shutting down, not the leader (an election
    /// may have been running), or met a transient conflict.
    /// [`ClientError::OutcomeUnknown`] is not retryable in this sense: resolve it first (by
    /// resending with the same id; see its documentation).
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Unavailable { .. } | ClientError::StatusIncomplete { .. } => true,
            ClientError::Remote { code, .. } => matches!(
                code,
                ErrorCode::Overloaded
                    | ErrorCode::ShuttingDown
                    | ErrorCode::LockConflict
                    | ErrorCode::FundsHeld
                    | ErrorCode::ParticipantUnavailable
                    | ErrorCode::NotLeader
            ),
            ClientError::OutcomeUnknown { .. }
            | ClientError::Inconsistent(_)
            | ClientError::BadRedirect { .. }
            | ClientError::InvalidRequest(_)
            | ClientError::Protocol { .. } => false,
        }
    }
}

/// A client of one cluster. Cheap to clone: clones share the connections and the remembered
/// leaders. `Send + Sync`, for use from many tasks at once.
#[derive(Clone)]
pub struct TallyClient {
    shared: Arc<Shared>,
}

struct Shared {
    config: ClusterConfig,
    options: ClientOptions,
    pools: HashMap<NodeId, NodePool>,
    leaders: Leaders,
}

/// The node each shard was last found led by, one atomic per shard, so that reading it takes no
/// lock. Starts at each shard's preferred leader; only ever holds a replica of the shard.
struct Leaders(Box<[AtomicU32]>);

impl Leaders {
    fn new(config: &ClusterConfig) -> Self {
        let leaders = (0..config.shard_count)
            .map(|shard| AtomicU32::new(config.preferred_leader(shard)))
            .collect();
        Leaders(leaders)
    }

    fn get(&self, shard: u32) -> NodeId {
        self.0[shard as usize].load(Ordering::Relaxed)
    }

    /// Remembers `leader` for `shard` in place of `failed`, unless another request has already
    /// replaced `failed`: its news is at least as new. Returns the node now remembered.
    fn replace(&self, shard: u32, failed: NodeId, leader: NodeId) -> NodeId {
        match self.0[shard as usize].compare_exchange(
            failed,
            leader,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => {
                if leader != failed {
                    tracing::debug!(shard, failed, leader, "remembering a new leader");
                }
                leader
            }
            Err(current) => current,
        }
    }
}

/// The connections to one node.
struct NodePool {
    address: String,
    /// Round-robin position over `slots`.
    next_slot: AtomicU32,
    slots: Vec<Slot>,
}

/// One connection, made on first use and re-made after it fails.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held while connecting, so concurrent requests wait for one connect instead of each making
    /// a connection.
    connecting: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    /// Bumped per connection made, so a failure on an old connection does not drop its successor.
    generation: u64,
    connection: Option<Connection>,
}

/// A connection lent to one attempt, with where it came from so it can be dropped on failure.
struct Lease {
    slot: usize,
    generation: u64,
    connection: Connection,
}

fn lock(state: &Mutex<SlotState>) -> MutexGuard<'_, SlotState> {
    // Every critical section is a single read or write of the state, so a panic cannot leave it
    // half-changed.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a request does, which decides what no answer to it means. Both kinds are resent after
/// an attempt that may have left: the node applies a write at most once per id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    /// Changes nothing: no answer at all is [`ClientError::Unavailable`].
    Read,
    /// The node deduplicates it by its id: no answer to an attempt that may have left is
    /// [`ClientError::OutcomeUnknown`].
    IdempotentWrite,
}

/// A request of the client family, with its answer type and retry class.
trait Request: Into<Message> + Clone {
    type Answer;
    const EFFECT: Effect;
    /// The answer, if `message` is of the right kind.
    fn answer(message: Message) -> Option<Self::Answer>;
    /// The id to report when the outcome is unknown (transfers, deposits, withdrawals).
    fn id(&self) -> Option<TransferId> {
        None
    }
}

/// `requests! { Request => Answer, Effect; ... }`; `Request => Answer, Effect, id;` for a request
/// with an `id` field to report when its outcome is unknown.
macro_rules! requests {
    ( $( $request:ident => $answer:ident, $effect:ident $(, $id:ident)?; )* ) => {
        $(
            impl Request for $request {
                type Answer = $answer;
                const EFFECT: Effect = Effect::$effect;
                fn answer(message: Message) -> Option<$answer> {
                    match message {
                        Message::$answer(answer) => Some(answer),
                        _ => None,
                    }
                }
                $(
                    fn id(&self) -> Option<TransferId> {
                        Some(self.$id)
                    }
                )?
            }
        )*
    };
}

requests! {
    CreateAccount => AccountCreated, IdempotentWrite;
    Deposit => Deposited, IdempotentWrite, id;
    Withdraw => Withdrawn, IdempotentWrite, id;
    Transfer => TransferResult, IdempotentWrite, id;
    GetBalance => Balance, Read;
    GetBalances => Balances, Read;
    GetHistory => History, Read;
    GetTransferStatus => TransferStatus, Read;
    Audit => AuditReport, Read;
    GetClusterStatus => ClusterStatus, Read;
}

/// `WrongNode` and `NotLeader` redirects one request follows at most (they are not attempts).
const REDIRECTS_MAX: u32 = 8;

/// Where the attempts of one request go.
#[derive(Debug, Clone, Copy)]
enum Route {
    /// To the remembered leader of this shard, following `NotLeader` among its replicas and
    /// `WrongNode` redirects.
    Shard(u32),
    /// To this node, and to whichever node it redirects to.
    Node(NodeId),
    /// For requests any node serves: to this node first, then after each failed attempt to the
    /// next one of the config, so that one unreachable node does not fail them.
    EachNodeInTurn { from: NodeId },
}

/// Bounds of one request's attempts.
#[derive(Debug, Clone, Copy)]
struct Policy {
    attempts_max: u32,
    attempt_timeout: Duration,
}

/// How one attempt ended.
enum AttemptEnd {
    Answer(Message),
    /// Nothing was sent: the request surely was not applied.
    NotSent(String),
    /// The node answered with an error.
    Refused(ErrorResponse),
    /// The request may have left, and no answer came.
    NoAnswer(String),
    /// The request cannot be encoded; no attempt can succeed.
    Invalid(String),
}

impl TallyClient {
    /// A client of the cluster described by `config`. Connects lazily, per node, on first use.
    ///
    /// Panics if `attempts_max`, `connections_per_node` or
    /// `requests_in_flight_per_connection_max` is 0.
    pub fn new(config: ClusterConfig, options: ClientOptions) -> Self {
        assert!(options.attempts_max >= 1, "attempts_max must be at least 1");
        assert!(
            options.connections_per_node >= 1,
            "connections_per_node must be at least 1"
        );
        assert!(
            options.requests_in_flight_per_connection_max >= 1,
            "requests_in_flight_per_connection_max must be at least 1"
        );
        let pools = config
            .nodes
            .iter()
            .map(|node| {
                let pool = NodePool {
                    address: node.address.clone(),
                    next_slot: AtomicU32::new(0),
                    slots: (0..options.connections_per_node)
                        .map(|_| Slot::default())
                        .collect(),
                };
                (node.id, pool)
            })
            .collect();
        TallyClient {
            shared: Arc::new(Shared {
                leaders: Leaders::new(&config),
                config,
                options,
                pools,
            }),
        }
    }

    /// The cluster this client talks to.
    pub fn config(&self) -> &ClusterConfig {
        &self.shared.config
    }

    /// Creates an account on its shard's leader. Repeating it with the same content succeeds again.
    pub async fn create_account(
        &self,
        account: AccountId,
        owner: Option<String>,
        flags: u32,
    ) -> Result<AccountCreated, ClientError> {
        let request = CreateAccount {
            account,
            flags,
            owner,
        };
        self.send_to_leader(account, request).await
    }

    /// Adds `amount` to `account` from outside the system, at most once per `id`: resent with
    /// the same id when an attempt gets no answer, and answered with the first answer (the same
    /// `balance_after` and `lsn`, or the same recorded refusal) however often it arrives. If no
    /// attempt is answered, [`ClientError::OutcomeUnknown`] carries the id: resend it, or find
    /// the id in the account's history. The same id with other content is refused
    /// (`DuplicateWithDifferentContent`).
    pub async fn deposit(
        &self,
        id: TransferId,
        account: AccountId,
        amount: u64,
    ) -> Result<Deposited, ClientError> {
        let request = Deposit {
            id,
            account,
            amount,
        };
        self.send_to_leader(account, request).await
    }

    /// Takes `amount` out of `account`, at most once per `id`, resent like
    /// [`TallyClient::deposit`]. A refusal for insufficient funds is recorded: the same id is
    /// refused again even once the funds are there, so a new attempt needs a new id.
    pub async fn withdraw(
        &self,
        id: TransferId,
        account: AccountId,
        amount: u64,
    ) -> Result<Withdrawn, ClientError> {
        let request = Withdraw {
            id,
            account,
            amount,
        };
        self.send_to_leader(account, request).await
    }

    /// The committed balance of one account.
    pub async fn balance(&self, account: AccountId) -> Result<u64, ClientError> {
        let answer = self.send_to_leader(account, GetBalance { account }).await?;
        Ok(answer.balance)
    }

    /// A consistent multi-account read: sent as one `GetBalances` to the remembered leader of
    /// `accounts[0]`'s shard (saving a hop when all are on one node), which reads all of them at
    /// one consistent cut across shards; any node serves it, so when that one cannot be reached
    /// the next nodes of the cluster file are tried in turn. One balance per account, in the
    /// order asked. At most [`net::BALANCES_PER_REQUEST_MAX`] accounts; none asks nothing.
    pub async fn balances(&self, accounts: &[AccountId]) -> Result<Vec<Balance>, ClientError> {
        let Some(&first) = accounts.first() else {
            return Ok(Vec::new());
        };
        let node = self.shared.leaders.get(self.config().shard_of(first));
        let request = GetBalances {
            accounts: accounts.to_vec(),
        };
        let answer = self
            .send(Route::EachNodeInTurn { from: node }, request, self.policy())
            .await?;
        let answered = answer.balances.iter().map(|balance| balance.account);
        if !answered.eq(accounts.iter().copied()) {
            return Err(ClientError::Protocol {
                node,
                reason: format!(
                    "asked for {} balances, got {} not matching the accounts asked",
                    accounts.len(),
                    answer.balances.len()
                ),
            });
        }
        Ok(answer.balances)
    }

    /// A page of `account`'s history, newest first: `cursor` 0 for the newest page, otherwise the
    /// `next_cursor` of the previous page. `limit` above [`net::HISTORY_PAGE_MAX_ENTRIES`] is
    /// clamped by the node.
    pub async fn history(
        &self,
        account: AccountId,
        limit: u32,
        cursor: u64,
    ) -> Result<History, ClientError> {
        let request = GetHistory {
            account,
            limit,
            cursor,
        };
        self.send_to_leader(account, request).await
    }

    /// Moves `amount` from `debit` to `credit`; sent to the leader of `debit`'s shard, which
    /// coordinates.
    /// An abort is an answer (`TransferOutcome::Aborted`), not an error. Resent with the same id
    /// when an attempt gets no answer; if none does, [`ClientError::OutcomeUnknown`] carries the
    /// id to resolve with [`TallyClient::transfer_status`].
    pub async fn transfer(
        &self,
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: u64,
    ) -> Result<TransferOutcome, ClientError> {
        let request = Transfer {
            id,
            debit,
            credit,
            amount,
        };
        let answer = self.send_to_leader(debit, request).await?;
        Ok(answer.outcome)
    }

    /// What the cluster knows about transfer `id`. Asks every node in parallel and merges: a
    /// decision (committed or aborted) from any node wins, since nodes never disagree on one
    /// ([`ClientError::Inconsistent`] if they do); else `InProgress` if any node says so; else
    /// `Unknown`. Without a decision, a node that did not answer may hold one, so the result is
    /// then [`ClientError::StatusIncomplete`] naming the silent nodes.
    pub async fn transfer_status(&self, id: TransferId) -> Result<TransferState, ClientError> {
        let policy = self.policy();
        let answers = self
            .on_every_node(move |client, node| async move {
                let request = GetTransferStatus { id };
                let answer = client.send(Route::Node(node), request, policy).await?;
                Ok(answer.state)
            })
            .await;
        merge_transfer_states(id, answers)
    }

    /// The audit of the whole cluster at one consistent cut, from the first node (in config
    /// order) that answers.
    pub async fn audit(&self) -> Result<AuditReport, ClientError> {
        let node_count = self.config().nodes.len() as u32;
        let policy = Policy {
            // Enough attempts to try every node once.
            attempts_max: self.shared.options.attempts_max.max(node_count),
            attempt_timeout: self.shared.options.request_timeout,
        };
        let first = self.config().nodes[0].id;
        self.send(Route::EachNodeInTurn { from: first }, Audit {}, policy)
            .await
    }

    /// Every node's own status, in config order, asked of each node directly with a one-second
    /// timeout ([`CLUSTER_STATUS_TIMEOUT`]) and no retry. A node that does not answer with its
    /// own status is listed `up: false`, with no groups and every other field 0.
    pub async fn cluster_status(&self) -> Result<Vec<NodeStatus>, ClientError> {
        let policy = Policy {
            attempts_max: 1,
            attempt_timeout: CLUSTER_STATUS_TIMEOUT,
        };
        let answers = self
            .on_every_node(move |client, node| async move {
                let answer = client
                    .send(Route::Node(node), GetClusterStatus {}, policy)
                    .await?;
                answer
                    .nodes
                    .into_iter()
                    .find(|status| status.node_id == node)
                    .ok_or_else(|| ClientError::Protocol {
                        node,
                        reason: "its cluster status does not describe itself".to_string(),
                    })
            })
            .await;
        let statuses = answers
            .into_iter()
            .map(|(node, answer)| {
                answer.unwrap_or_else(|error| {
                    tracing::debug!(node, %error, "no status from node");
                    NodeStatus {
                        node_id: node,
                        up: false,
                        last_lsn: 0,
                        in_doubt_count: 0,
                        uptime_seconds: 0,
                        groups: Vec::new(),
                    }
                })
            })
            .collect();
        Ok(statuses)
    }

    /// A fresh random transfer id, never 0.
    pub fn new_transfer_id() -> TransferId {
        loop {
            let id = rand::random::<TransferId>();
            if id != 0 {
                return id;
            }
        }
    }

    /// The policy of ordinary requests.
    fn policy(&self) -> Policy {
        Policy {
            attempts_max: self.shared.options.attempts_max,
            attempt_timeout: self.shared.options.request_timeout,
        }
    }

    /// Sends a request about `account` to its shard's leader.
    async fn send_to_leader<R: Request>(
        &self,
        account: AccountId,
        request: R,
    ) -> Result<R::Answer, ClientError> {
        let shard = self.config().shard_of(account);
        self.send(Route::Shard(shard), request, self.policy()).await
    }

    /// The retry loop of every request (see the module documentation for the policy).
    async fn send<R: Request>(
        &self,
        route: Route,
        request: R,
        policy: Policy,
    ) -> Result<R::Answer, ClientError> {
        let mut node = match route {
            Route::Shard(shard) => self.shared.leaders.get(shard),
            Route::Node(node) | Route::EachNodeInTurn { from: node } => node,
        };
        let mut backoff_bound = self.shared.options.backoff_initial;
        // Whether some attempt may have delivered the request: then no later failure can prove
        // that it was not applied.
        let mut maybe_delivered = false;
        let mut redirected = false;
        let mut failure = None;
        // Redirects are followed at once and do not count as attempts, up to this many in all.
        let mut redirects_left = REDIRECTS_MAX;
        // Nodes this request could not reach: a `NotLeader` naming one of them (a stale leader,
        // just killed) is not followed, so a dead leader does not eat the attempts while its
        // group elects another.
        let mut unreachable: Vec<NodeId> = Vec::new();
        let mut attempt = 0;
        while attempt < policy.attempts_max {
            if attempt > 0 && !redirected {
                let bound = backoff_bound.min(self.shared.options.backoff_max);
                let sleep_nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
                tokio::time::sleep(Duration::from_nanos(rand::random_range(0..=sleep_nanos))).await;
                backoff_bound = backoff_bound
                    .saturating_mul(2)
                    .min(self.shared.options.backoff_max);
            }
            if !redirected {
                attempt += 1;
            }
            redirected = false;
            let end = self
                .attempt(node, request.clone().into(), policy.attempt_timeout)
                .await;
            // Whether this node is of no use to the request for now (down, draining, or not the
            // leader), so that the next attempt should go elsewhere.
            let mut move_on = true;
            let error = match end {
                AttemptEnd::Answer(message) => {
                    let kind = message.kind();
                    return R::answer(message).ok_or_else(|| ClientError::Protocol {
                        node,
                        reason: format!("answered with a {kind:?}"),
                    });
                }
                AttemptEnd::Invalid(reason) => return Err(ClientError::InvalidRequest(reason)),
                AttemptEnd::NotSent(reason) => {
                    unreachable.push(node);
                    ClientError::Unavailable { node, reason }
                }
                AttemptEnd::Refused(refusal) => {
                    if let Some(target) = self.redirect(route, node, &refusal)?
                        && redirects_left > 0
                        && !unreachable.contains(&target)
                    {
                        redirects_left -= 1;
                        failure = Some(remote(node, refusal));
                        node = target;
                        redirected = true;
                        continue;
                    }
                    match refusal.code {
                        // Refused before anything was done (a lock conflict of a deposit or
                        // withdrawal is not recorded, unlike a transfer's), so the next attempt
                        // may succeed, and an earlier attempt's fate is still open.
                        ErrorCode::Overloaded | ErrorCode::LockConflict | ErrorCode::FundsHeld => {
                            move_on = false;
                        }
                        // Nothing was done either, and this node will not do it soon.
                        ErrorCode::ShuttingDown | ErrorCode::NotLeader => {}
                        // A definite answer about this request (a resent idempotent write is
                        // answered from the node's record of it), so it ends the request.
                        _ => return Err(remote(node, refusal)),
                    }
                    remote(node, refusal)
                }
                AttemptEnd::NoAnswer(reason) => {
                    unreachable.push(node);
                    if R::EFFECT == Effect::IdempotentWrite {
                        maybe_delivered = true;
                    }
                    ClientError::Unavailable { node, reason }
                }
            };
            failure = Some(error);
            node = self.next_node(route, node, move_on);
        }
        let error = failure.expect("every attempt that does not return records its failure");
        if !maybe_delivered {
            return Err(error);
        }
        // A later refusal or connect failure says nothing about whether the delivery that may
        // have happened was applied.
        let (node, reason) = match error {
            ClientError::Unavailable { node, reason } => (node, reason),
            ClientError::Remote {
                node,
                code,
                message,
            } => (node, format!("{code:?}: {message}")),
            error => return Err(error),
        };
        Err(ClientError::OutcomeUnknown {
            node,
            id: request.id(),
            reason: format!("{reason}; after {} attempts", policy.attempts_max),
        })
    }

    /// Where `refusal` from `node` sends the request at once, if anywhere: a `WrongNode` redirect
    /// to a node of the config, or a `NotLeader` naming a replica of the request's shard other
    /// than `node`. A replica so named becomes the shard's remembered leader. A `WrongNode`
    /// redirect outside the config is an error: the client's config and the cluster's differ.
    fn redirect(
        &self,
        route: Route,
        node: NodeId,
        refusal: &ErrorResponse,
    ) -> Result<Option<NodeId>, ClientError> {
        let redirect = refusal.redirect_node_id;
        let target = match refusal.code {
            ErrorCode::WrongNode => match redirect {
                Some(owner) if self.shared.pools.contains_key(&owner) => owner,
                redirect => return Err(ClientError::BadRedirect { node, redirect }),
            },
            ErrorCode::NotLeader => match (route, redirect) {
                (Route::Shard(shard), Some(leader))
                    if leader != node && self.config().replicas_of(shard).contains(&leader) =>
                {
                    leader
                }
                _ => {
                    tracing::debug!(
                        node,
                        ?redirect,
                        "not the leader, and names no other replica of the shard"
                    );
                    return Ok(None);
                }
            },
            _ => return Ok(None),
        };
        if let Route::Shard(shard) = route {
            if self.config().replicas_of(shard).contains(&target) {
                self.shared.leaders.replace(shard, node, target);
            }
        }
        Ok(Some(target))
    }

    /// The node of the attempt after a failed one on `node`; `move_on` when `node` is of no use
    /// to the request for now. A request about a shard then moves the shard's remembered leader
    /// from `node` to its next replica (in file order, wrapping), and goes wherever the memory
    /// now points.
    fn next_node(&self, route: Route, node: NodeId, move_on: bool) -> NodeId {
        match route {
            Route::Shard(shard) if move_on => {
                let replicas = self.config().replicas_of(shard);
                // A node outside the replicas (a WrongNode redirect's target) moves to the first.
                let next = replicas
                    .iter()
                    .position(|&replica| replica == node)
                    .map_or(0, |index| (index + 1) % replicas.len());
                self.shared.leaders.replace(shard, node, replicas[next])
            }
            Route::Shard(_) | Route::Node(_) => node,
            Route::EachNodeInTurn { .. } => {
                let nodes = &self.config().nodes;
                let index = nodes.iter().position(|config| config.id == node);
                nodes[index.map_or(0, |index| (index + 1) % nodes.len())].id
            }
        }
    }
}

/// A refusal as the caller sees it.
fn remote(node: NodeId, refusal: ErrorResponse) -> ClientError {
    ClientError::Remote {
        node,
        code: refusal.code,
        message: refusal.message,
    }
}

impl TallyClient {
    /// One attempt: a connection to `node` (bounded by the connect timeout), then one call
    /// (bounded by `timeout`). A connection that may be broken afterwards is dropped.
    async fn attempt(&self, node: NodeId, request: Message, timeout: Duration) -> AttemptEnd {
        let Some(pool) = self.shared.pools.get(&node) else {
            return AttemptEnd::NotSent(format!("node {node} is not in the cluster config"));
        };
        let connect_timeout = self.shared.options.connect_timeout.min(timeout);
        let lease = match tokio::time::timeout(connect_timeout, self.lease(pool)).await {
            Ok(Ok(lease)) => lease,
            Ok(Err(reason)) => return AttemptEnd::NotSent(reason),
            Err(_) => {
                return AttemptEnd::NotSent(format!(
                    "no connection to {} within {connect_timeout:?}",
                    pool.address
                ));
            }
        };
        let answer = tokio::time::timeout(timeout, lease.connection.call(request)).await;
        match answer {
            Ok(Ok(message)) => AttemptEnd::Answer(message),
            Ok(Err(NetError::Remote(refusal))) => {
                // Also sent about a whole connection (too many connections, draining), which
                // the node then closes.
                if matches!(
                    refusal.code,
                    ErrorCode::Overloaded | ErrorCode::ShuttingDown
                ) {
                    discard(pool, &lease);
                }
                AttemptEnd::Refused(refusal)
            }
            Ok(Err(NetError::Encode(error))) => AttemptEnd::Invalid(error.to_string()),
            // `Closed` may also mean the connection died before this call, but the transport
            // does not tell the two apart, so assume the worst: the request may have left.
            // (`Connect` comes only from connecting; listed so that a new variant must be
            // placed here.)
            Ok(Err(
                error @ (NetError::Timeout
                | NetError::Closed
                | NetError::Decode(_)
                | NetError::UnexpectedKind { .. }
                | NetError::Connect(_)),
            )) => {
                discard(pool, &lease);
                AttemptEnd::NoAnswer(error.to_string())
            }
            Err(_) => {
                discard(pool, &lease);
                AttemptEnd::NoAnswer(format!("no answer within {timeout:?}"))
            }
        }
    }

    /// A connection to the pool's node, made if its slot has none.
    async fn lease(&self, pool: &NodePool) -> Result<Lease, String> {
        let slot = pool.next_slot.fetch_add(1, Ordering::Relaxed) as usize % pool.slots.len();
        let current = |state: &SlotState| {
            state.connection.as_ref().map(|connection| Lease {
                slot,
                generation: state.generation,
                connection: connection.clone(),
            })
        };
        if let Some(lease) = current(&lock(&pool.slots[slot].state)) {
            return Ok(lease);
        }
        let _connecting = pool.slots[slot].connecting.lock().await;
        // Another request may have connected while this one waited.
        if let Some(lease) = current(&lock(&pool.slots[slot].state)) {
            return Ok(lease);
        }
        let options = &self.shared.options;
        let config = ClientConfig {
            requests_in_flight_max: options.requests_in_flight_per_connection_max,
            request_timeout: options.request_timeout,
            connect_timeout: options.connect_timeout,
        };
        let connection = match Connection::connect(pool.address.as_str(), config).await {
            Ok(connection) => connection,
            Err(NetError::Timeout) => {
                return Err(format!(
                    "connect to {} timed out after {:?}",
                    pool.address, options.connect_timeout
                ));
            }
            Err(error) => return Err(format!("{}: {error}", pool.address)),
        };
        let mut state = lock(&pool.slots[slot].state);
        state.generation += 1;
        state.connection = Some(connection.clone());
        Ok(Lease {
            slot,
            generation: state.generation,
            connection,
        })
    }

    /// Runs `call` against every node of the config at once; the results in config order.
    async fn on_every_node<T, F, Fut>(&self, call: F) -> Vec<(NodeId, Result<T, ClientError>)>
    where
        F: Fn(TallyClient, NodeId) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + Send + 'static,
        T: Send + 'static,
    {
        let mut calls = JoinSet::new();
        for (index, node) in self.config().nodes.iter().enumerate() {
            let call = call(self.clone(), node.id);
            calls.spawn(async move { (index, call.await) });
        }
        let mut results: Vec<_> = self
            .config()
            .nodes
            .iter()
            .map(|node| (node.id, None))
            .collect();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((index, result)) => results[index].1 = Some(result),
                // Nothing aborts these tasks, so this is a panic: pass it on.
                Err(error) => std::panic::resume_unwind(error.into_panic()),
            }
        }
        results
            .into_iter()
            .map(|(node, result)| (node, result.expect("every node's call finished")))
            .collect()
    }
}

/// Drops the leased connection from its slot, unless the slot has already moved on to a newer
/// one. Calls still using the dropped connection finish on it.
fn discard(pool: &NodePool, lease: &Lease) {
    let mut state = lock(&pool.slots[lease.slot].state);
    if state.generation == lease.generation {
        state.connection = None;
    }
}

/// Merges the nodes' answers about transfer `id` (see [`TallyClient::transfer_status`]).
fn merge_transfer_states(
    id: TransferId,
    answers: Vec<(NodeId, Result<TransferState, ClientError>)>,
) -> Result<TransferState, ClientError> {
    let mut decided: Option<(NodeId, TransferState)> = None;
    let mut in_progress = false;
    let mut unreachable = Vec::new();
    for (node, answer) in answers {
        match answer {
            Ok(state @ (TransferState::Committed | TransferState::Aborted(_))) => match decided {
                None => decided = Some((node, state)),
                Some((first, first_state)) => {
                    // Abort reasons may differ between nodes (each logs its own); the decision
                    // may not.
                    let committed = |state| state == TransferState::Committed;
                    if committed(first_state) != committed(state) {
                        return Err(ClientError::Inconsistent(format!(
                            "transfer {id}: node {first} says {first_state:?}, node {node} says {state:?}"
                        )));
                    }
                }
            },
            Ok(TransferState::InProgress) => in_progress = true,
            Ok(TransferState::Unknown) => {}
            Err(error) => {
                tracing::debug!(node, %error, "no transfer status from node");
                unreachable.push(node);
            }
        }
    }
    let state = match decided {
        Some((_, state)) => return Ok(state),
        None if in_progress => TransferState::InProgress,
        None => TransferState::Unknown,
    };
    if unreachable.is_empty() {
        Ok(state)
    } else {
        Err(ClientError::StatusIncomplete {
            id,
            state,
            unreachable,
        })
    }
}
