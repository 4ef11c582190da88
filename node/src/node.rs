//! A running node's state and its answer to every request: client requests (routed to the
//! service of the account's shard when this node leads it, answered `NotLeader` when it holds a
//! replica it does not lead, `WrongNode` when it holds none), node-to-node requests (the
//! participant side of 2PC, decision inquiries, snapshot locks, each for a named shard), and the
//! replication driver's Raft messages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::coordinator::Verdict;
use engine::coordinator::{Asker, Refusal, Transfer, TransferRequest};
use engine::model::{
    AccountId, HistoryKind, MovementId, MovementKind, MovementOutcome, NodeId, Outcome,
    RefusalReason, TransferId,
};
use engine::tables::Tables;
use engine::wal::{FileStorage, Wal};
use engine::{PrepareRequest, StorageError, TransferStatus, Vote};
use net::{
    AccountCreated, Acks, Audit, AuditReport, Balance, Balances, ClusterStatus, CreateAccount,
    DecisionBatch, DecisionInquiry, Deposit, Deposited, ErrorCode, ErrorResponse, GetBalance,
    GetBalances, GetHistory, GetTransferStatus, Handler, Heartbeat, HeartbeatReply, History,
    InquiryAnswer, Message, NodeStatus, PrepareBatch, RaftMessages, RaftMessagesReceived,
    TransferState, VoteEntry, Votes, Withdraw, Withdrawn,
};

use crate::convert::{op_from_wire, outcome_from_wire, outcome_to_wire, reason_to_wire};
use crate::coordinator::Unavailable;
use crate::engine_calls::{
    apply_decisions, blocking, durably, engine_error, engine_error_of, with_lock_wait,
};
use crate::failpoint::{self, points};
use crate::peers::PeerError;
use crate::replication::Replication;
use crate::router::Router;
use crate::shard::{Serving, ShardServer};
use crate::snapshot;
use client::config::ClusterConfig;

/// Time the replication driver gets to report its groups for `GetClusterStatus`; the client
/// gives a node one second in all.
const GROUP_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// Time a read waits for its shard's leadership to be confirmed by a majority (a heartbeat round
/// normally; without a majority, about an election timeout until the leader steps down).
const READ_CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node shares with its tasks.
pub(crate) struct Node {
    pub id: NodeId,
    pub config: ClusterConfig,
    pub router: Arc<Router>,
    pub started: Instant,
    /// The shards this node holds a replica of.
    pub shards: BTreeMap<u32, Arc<ShardServer>>,
    pub replication: Replication,
    pub wal: Arc<Wal<FileStorage>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub console: crate::console::Console,
}

fn unavailable(error: Unavailable) -> ErrorResponse {
    match error {
        Unavailable::Overloaded => ErrorResponse::new(
            ErrorCode::Overloaded,
            "the coordinator's request queue is full",
        ),
        // The coordinator stops when this replica stops leading its shard (or the node stops).
        // Resending the request with the same id is safe, whatever became of it.
        Unavailable::Stopped => ErrorResponse::new(
            ErrorCode::NotLeader,
            "this replica stopped leading the shard; resend the request",
        ),
        Unavailable::Dropped => ErrorResponse::new(
            ErrorCode::NotLeader,
            "this replica stopped leading the shard while the request ran; resend it with the \
             same id (it is applied at most once)",
        ),
    }
}

pub(crate) fn peer_error(error: &PeerError) -> ErrorResponse {
    match error {
        PeerError::Refused { error, .. } => error.clone(),
        other => ErrorResponse::new(ErrorCode::ParticipantUnavailable, other.to_string()),
    }
}

/// This process's node id, for log events far from a `Node` (0 before the node starts).
static NODE_ID: std::sync::OnceLock<NodeId> = std::sync::OnceLock::new();

pub(crate) fn set_node_id(id: NodeId) {
    let _ = NODE_ID.set(id);
}

pub(crate) fn node_id() -> NodeId {
    NODE_ID.get().copied().unwrap_or(0)
}

pub(crate) fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Node {
    /// The service of `shard`, or the answer that sends the request elsewhere: `NotLeader` (with
    /// the leader this replica knows) when this node holds a replica it does not lead,
    /// `WrongNode` (to the leader this node last knew of) when it holds none.
    pub fn serving(&self, shard: u32) -> Result<Arc<Serving>, ErrorResponse> {
        match self.shards.get(&shard) {
            Some(server) => server.serving_or_redirect(),
            None => Err(ErrorResponse::wrong_node(self.router.leader_of(shard))),
        }
    }

    /// The service of `shard` for a read that must be current: [`Node::serving`], once a majority
    /// of the shard's group has confirmed, after this call, that this node's replica still leads
    /// (see `replica::Group::confirm_leadership`). A leader cut off from its majority so serves no
    /// stale read: its confirmation never comes, and it answers `Timeout`, or `NotLeader` once it
    /// has stepped down.
    pub async fn serving_current(&self, shard: u32) -> Result<Arc<Serving>, ErrorResponse> {
        self.serving(shard)?;
        match tokio::time::timeout(
            READ_CONFIRM_TIMEOUT,
            self.replication.confirm_leadership(shard),
        )
        .await
        {
            Ok(true) => self.serving(shard),
            Ok(false) => Err(self
                .serving(shard)
                .err()
                .unwrap_or_else(|| ErrorResponse::not_leader(None, shard))),
            Err(_) => Err(ErrorResponse::new(
                ErrorCode::Timeout,
                format!("shard {shard}: no majority confirmed this replica's leadership in time"),
            )),
        }
    }

    /// The service of `account`'s shard (see [`Node::serving`]).
    fn serving_for(&self, account: AccountId) -> Result<Arc<Serving>, ErrorResponse> {
        self.serving(self.config.shard_of(account))
    }

    pub fn status(&self) -> NodeStatus {
        let in_doubt: usize = self
            .shards
            .values()
            .filter_map(|server| server.serving())
            .map(|serving| serving.engine.in_doubt().len())
            .sum();
        NodeStatus {
            node_id: self.id,
            up: true,
            last_lsn: self.wal.durable_lsn(),
            in_doubt_count: in_doubt as u64,
            uptime_seconds: self.started.elapsed().as_secs(),
            groups: Vec::new(),
        }
    }

    /// [`Node::status`] with every replica group's status from the replication driver.
    async fn cluster_status(&self) -> Result<Message, ErrorResponse> {
        let mut status = self.status();
        status.groups = self
            .replication
            .status(GROUP_STATUS_TIMEOUT)
            .await
            .ok_or_else(|| {
                ErrorResponse::new(
                    ErrorCode::Timeout,
                    "the replication driver did not report its groups in time",
                )
            })?;
        Ok(ClusterStatus {
            nodes: vec![status],
        }
        .into())
    }

    pub async fn handle(self: Arc<Self>, request: Message) -> Message {
        let kind = request.kind();
        let answer = self.answer(request).await;
        self.metrics.request(kind, &answer);
        answer
    }

    async fn answer(self: &Arc<Self>, request: Message) -> Message {
        let answer = match request {
            Message::CreateAccount(request) => self.create_account(request).await,
            Message::Deposit(request) => self.deposit(request).await,
            Message::Withdraw(request) => self.withdraw(request).await,
            Message::GetBalance(GetBalance { account }) => self.balance(account).await,
            Message::GetBalances(GetBalances { accounts }) => self.balances(accounts).await,
            Message::GetHistory(request) => self.history(request).await,
            Message::Transfer(request) => {
                let started = Instant::now();
                let shards = (
                    self.config.shard_of(request.debit),
                    self.config.shard_of(request.credit),
                );
                tracing::debug!(node = self.id, shard = shards.0, transfer = %request.id, debit = request.debit, credit = request.credit, amount = request.amount, credit_shard = shards.1, "2pc: transfer received (coordinator)");
                let answer = self.transfer(request.clone()).await;
                match &answer {
                    Ok(Message::TransferResult(result)) => self.metrics.transfer(
                        &request,
                        shards,
                        outcome_from_wire(result.outcome),
                        started.elapsed(),
                    ),
                    _ => self.metrics.transfer_failed(started.elapsed()),
                }
                tracing::debug!(node = self.id, shard = shards.0, transfer = %request.id, answer = ?answer, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "2pc: transfer answered (coordinator)");
                answer
            }
            Message::GetTransferStatus(GetTransferStatus { id }) => self.transfer_status(id).await,
            Message::Audit(Audit {}) => self.audit().await,
            Message::GetClusterStatus(_) => self.cluster_status().await,
            Message::PrepareBatch(batch) => self.prepare(batch).await,
            Message::DecisionBatch(batch) => self.decide(batch).await,
            Message::DecisionInquiry(DecisionInquiry {
                participant,
                shard,
                txids,
            }) => {
                tracing::info!(participant, shard, count = txids.len(), "decision inquiry");
                match self.serving(shard) {
                    Err(error) => Err(error),
                    Ok(serving) => serving
                        .coordinator
                        .inquiry(txids, Asker::OtherNode)
                        .await
                        .map_err(unavailable)
                        .map(|decisions| {
                            InquiryAnswer {
                                decisions: decisions
                                    .into_iter()
                                    .map(|(txid, outcome, commit_ts)| net::DecisionEntry {
                                        txid,
                                        outcome: outcome_to_wire(outcome),
                                        commit_ts,
                                    })
                                    .collect(),
                            }
                            .into()
                        }),
                }
            }
            Message::RaftMessages(RaftMessages { messages, .. }) => {
                self.replication.deliver(messages);
                Ok(RaftMessagesReceived {}.into())
            }
            Message::Heartbeat(Heartbeat { .. }) => {
                let status = self.status();
                Ok(HeartbeatReply {
                    node_id: status.node_id,
                    last_lsn: status.last_lsn,
                    in_doubt_count: status.in_doubt_count,
                    uptime_seconds: status.uptime_seconds,
                }
                .into())
            }
            Message::SnapshotRead(request) => match self.shards.get(&request.shard) {
                Some(_) => snapshot::read_shard(self, request).await,
                None => Err(ErrorResponse::wrong_node(
                    self.router.leader_of(request.shard),
                )),
            },
            other => Err(ErrorResponse::new(
                ErrorCode::MalformedFrame,
                format!("{:?} is not a request", other.kind()),
            )),
        };
        answer.unwrap_or_else(Message::ErrorResponse)
    }

    /// A transfer: validated and routed here, run by the coordinator.
    async fn transfer(&self, request: net::Transfer) -> Result<Message, ErrorResponse> {
        let net::Transfer {
            id,
            debit,
            credit,
            amount,
        } = request;
        if amount == 0 {
            return Err(ErrorResponse::new(
                ErrorCode::InvalidArgument,
                "amount must be positive",
            ));
        }
        if debit == credit {
            return Err(ErrorResponse::new(
                ErrorCode::InvalidArgument,
                format!("a transfer cannot debit and credit the same account ({debit})"),
            ));
        }
        let serving = self.serving_for(debit)?;
        let request = TransferRequest {
            id,
            transfer: Transfer {
                debit,
                credit,
                amount,
            },
            // The parties of two-phase commit are shards.
            credit_node: self.config.shard_of(credit),
        };
        let answer = serving
            .coordinator
            .transfer(request)
            .await
            .map_err(unavailable)?;
        match answer {
            Ok(outcome) => Ok(outcome_message(id, outcome)),
            Err(Refusal::DuplicateWithDifferentContent) => Err(ErrorResponse::new(
                ErrorCode::DuplicateWithDifferentContent,
                format!("transfer {id} exists with different accounts or amount"),
            )),
            Err(Refusal::Overloaded) => Err(ErrorResponse::new(
                ErrorCode::Overloaded,
                "too many transfers in flight at this coordinator",
            )),
            Err(Refusal::ParticipantBacklog(node)) => Err(ErrorResponse::new(
                ErrorCode::ParticipantUnavailable,
                format!(
                    "shard {node} has not acknowledged many decisions (its leader is likely unreachable)"
                ),
            )),
            Err(Refusal::Storage(error)) => Err(engine_error_of(&*error)),
            Err(Refusal::Local(error)) => Err(engine_error_of(&*error)),
        }
    }

    async fn create_account(&self, request: CreateAccount) -> Result<Message, ErrorResponse> {
        let serving = self.serving_for(request.account)?;
        let engine = &serving.engine;
        let created_at = now_unix_ms();
        let logged = with_lock_wait(engine, |_| {
            engine.create_account_logged(
                request.account,
                request.owner.as_deref(),
                request.flags,
                created_at,
            )
        })
        .await;
        durably(engine, logged).await.map_err(engine_error)?;
        let account = engine.account(request.account).map_err(engine_error)?;
        Ok(AccountCreated {
            account: account.id,
            created_at_unix_ms: account.created_at_ms,
        }
        .into())
    }

    async fn deposit(&self, request: Deposit) -> Result<Message, ErrorResponse> {
        let (balance_after, lsn) = self
            .move_money(
                request.id,
                request.account,
                MovementKind::Deposit,
                request.amount,
            )
            .await?;
        Ok(Deposited {
            id: request.id,
            balance_after,
            lsn,
        }
        .into())
    }

    async fn withdraw(&self, request: Withdraw) -> Result<Message, ErrorResponse> {
        let (balance_after, lsn) = self
            .move_money(
                request.id,
                request.account,
                MovementKind::Withdrawal,
                request.amount,
            )
            .await?;
        Ok(Withdrawn {
            id: request.id,
            balance_after,
            lsn,
        }
        .into())
    }

    /// A deposit or a withdrawal, idempotent by `id`: the balance after it and the LSN of its
    /// record, or its refusal, as first decided (`Engine::move_money`), however often it is
    /// resent.
    async fn move_money(
        &self,
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: u64,
    ) -> Result<(u64, u64), ErrorResponse> {
        let serving = self.serving_for(account)?;
        let engine = &serving.engine;
        let logged = with_lock_wait(engine, |_| {
            engine.move_money_logged(id, account, kind, amount)
        })
        .await;
        durably(engine, logged).await.map_err(engine_error)?;
        let outcome = engine.recorded_movement(id).map_err(engine_error)?;
        failpoint::hit(points::MOVEMENT_BEFORE_ANSWER);
        match outcome {
            MovementOutcome::Applied { balance_after, lsn } => Ok((balance_after, lsn)),
            MovementOutcome::Refused(reason) => {
                let code = match reason {
                    RefusalReason::UnknownAccount => ErrorCode::UnknownAccount,
                    RefusalReason::InsufficientFunds => ErrorCode::InsufficientFunds,
                    RefusalReason::Overflow => ErrorCode::Overflow,
                };
                Err(ErrorResponse::new(
                    code,
                    format!(
                        "{kind} {id} refused: {reason} on account {account} (recorded: \
                         resending this id gets this refusal again)"
                    ),
                ))
            }
        }
    }

    async fn balance(&self, account: AccountId) -> Result<Message, ErrorResponse> {
        let shard = self.config.shard_of(account);
        let serving = self.serving_current(shard).await?;
        // A transfer whose outcome a client has heard may still be applying here (a credit
        // waits for its COMMIT): the read waits for the changes that held the account when it
        // arrived, without locking anything itself, and then reads the latest balance.
        let engine = serving.engine.clone();
        let fence = engine.read_fence(None);
        snapshot::wait_for_fence(&engine, &fence, Some(&[account]), shard).await?;
        let balance = engine.balance(account).map_err(engine_error)?;
        Ok(Balance { account, balance }.into())
    }

    async fn history(&self, request: GetHistory) -> Result<Message, ErrorResponse> {
        let serving = self
            .serving_current(self.config.shard_of(request.account))
            .await?;
        let limit = request.limit.clamp(1, net::HISTORY_PAGE_MAX_ENTRIES);
        let cursor = (request.cursor != 0).then_some(request.cursor);
        let engine = serving.engine.clone();
        let page = blocking(move || engine.history(request.account, cursor, limit))
            .await
            .map_err(engine_error)?;
        let entries = page
            .entries
            .iter()
            .map(|entry| net::HistoryEntry {
                sequence: entry.lsn,
                kind: match entry.kind {
                    HistoryKind::Deposit => net::HistoryKind::Deposit,
                    HistoryKind::Withdrawal => net::HistoryKind::Withdraw,
                    HistoryKind::TransferDebit => net::HistoryKind::TransferDebit,
                    HistoryKind::TransferCredit => net::HistoryKind::TransferCredit,
                },
                amount: entry.amount,
                counterparty_account: entry.counterparty,
                transfer_id: entry.transfer,
                balance_after: entry.balance_after,
            })
            .collect();
        Ok(History {
            account: request.account,
            entries,
            next_cursor: page.next_cursor.unwrap_or(0),
        }
        .into())
    }

    /// What this node knows of a transfer, over every shard it holds a replica of: a shard it
    /// serves answers from its coordinator and engine (its decision first: exact, and the only
    /// record of an abort decided before any participant prepared), a shard it follows from its
    /// tables (committed state, possibly behind). A decided state wins, then in progress.
    async fn transfer_status(self: &Arc<Self>, id: TransferId) -> Result<Message, ErrorResponse> {
        let mut state = TransferState::Unknown;
        for server in self.shards.values() {
            let found = match server.serving() {
                Some(serving) => {
                    if serving
                        .coordinator
                        .is_in_flight(id)
                        .await
                        .map_err(unavailable)?
                    {
                        TransferState::InProgress
                    } else {
                        let engine = serving.engine.clone();
                        blocking(move || {
                            if let Some(decision) = engine.decision(id)? {
                                return Ok(state_of(decision.outcome));
                            }
                            Ok::<_, StorageError>(match engine.transfer_status(id)? {
                                TransferStatus::Unknown => TransferState::Unknown,
                                TransferStatus::Prepared(_) => TransferState::InProgress,
                                TransferStatus::Decided(record) => state_of(record.outcome),
                            })
                        })
                        .await
                        .map_err(engine_error)?
                    }
                }
                None => {
                    let tables = server.tables.clone();
                    blocking(move || {
                        if let Some(decision) = tables.decision(id)? {
                            return Ok(state_of(decision.outcome));
                        }
                        if let Some(record) = tables.transfer(id)? {
                            return Ok(state_of(record.outcome));
                        }
                        Ok::<_, engine::tables::TablesError>(match tables.prepared(id)? {
                            Some(_) => TransferState::InProgress,
                            None => TransferState::Unknown,
                        })
                    })
                    .await
                    .map_err(|error| {
                        ErrorResponse::new(ErrorCode::Internal, format!("tables: {error}"))
                    })?
                }
            };
            state = match (state, found) {
                (TransferState::Committed | TransferState::Aborted(_), _) => state,
                (_, TransferState::Committed | TransferState::Aborted(_)) => found,
                (TransferState::InProgress, _) | (_, TransferState::InProgress) => {
                    TransferState::InProgress
                }
                _ => TransferState::Unknown,
            };
        }
        Ok(net::TransferStatus { id, state }.into())
    }

    /// Participant: phase one for a batch.
    async fn prepare(&self, batch: PrepareBatch) -> Result<Message, ErrorResponse> {
        let serving = self.serving(batch.shard)?;
        let requests: Vec<PrepareRequest> = batch
            .entries
            .iter()
            .map(|entry| PrepareRequest {
                id: entry.txid,
                coordinator: batch.coordinator,
                operations: entry.ops.iter().map(op_from_wire).collect(),
            })
            .collect();
        // Every operation must be on the shard asked; a misrouted one votes no.
        let misrouted: Vec<bool> = requests
            .iter()
            .map(|request| {
                request
                    .operations
                    .iter()
                    .any(|operation| self.config.shard_of(operation.account) != batch.shard)
            })
            .collect();
        let routed: Vec<PrepareRequest> = requests
            .iter()
            .zip(&misrouted)
            .filter(|(_, misrouted)| !**misrouted)
            .map(|(request, _)| request.clone())
            .collect();
        let engine = &serving.engine;
        let logged = engine.prepare_logged(&routed);
        let lsn = logged.as_ref().ok().and_then(|logged| logged.wait_for());
        let mut votes = durably(engine, logged)
            .await
            .map_err(engine_error)?
            .into_iter();
        let votes: Vec<VoteEntry> = requests
            .iter()
            .zip(misrouted)
            .map(|(request, misrouted)| VoteEntry {
                txid: request.id,
                vote: if misrouted {
                    net::Vote::No(net::AbortReason::InvalidRequest)
                } else {
                    match votes.next().expect("one vote per routed request") {
                        Vote::Yes => net::Vote::Yes,
                        Vote::No(reason) => net::Vote::No(reason_to_wire(reason)),
                    }
                },
            })
            .collect();
        for vote in &votes {
            tracing::debug!(node = self.id, shard = batch.shard, coordinator = batch.coordinator, transfer = %vote.txid, vote = ?vote.vote, lsn, "2pc: prepared (participant)");
        }
        // Read after every lock of the batch was taken: the commits come later (engine::clock).
        let clock = engine.clock_now();
        Ok(Votes { votes, clock }.into())
    }

    /// Participant: phase two for a batch; acknowledges each decision once applied.
    async fn decide(&self, batch: DecisionBatch) -> Result<Message, ErrorResponse> {
        let serving = self.serving(batch.shard)?;
        failpoint::hit(points::PARTICIPANT_BEFORE_DECISION);
        let decisions: Vec<Verdict> = batch
            .decisions
            .iter()
            .map(|entry| {
                (
                    entry.txid,
                    outcome_from_wire(entry.outcome),
                    entry.commit_ts,
                )
            })
            .collect();
        let txids = apply_decisions(&serving.engine, batch.shard, batch.coordinator, &decisions)
            .await
            .map_err(engine_error)?;

        Ok(Acks { txids }.into())
    }

    /// A consistent read of many accounts, possibly on several nodes.
    async fn balances(
        self: &Arc<Self>,
        accounts: Vec<AccountId>,
    ) -> Result<Message, ErrorResponse> {
        if accounts.is_empty() {
            return Ok(Balances { balances: vec![] }.into());
        }
        let parts = snapshot::take(self, &accounts, false).await?;
        let read: HashMap<AccountId, u64> = parts
            .iter()
            .flat_map(|part| part.balances.iter())
            .map(|balance| (balance.account, balance.balance))
            .collect();
        let balances = accounts
            .iter()
            .map(|account| Balance {
                account: *account,
                balance: read[account],
            })
            .collect();
        Ok(Balances { balances }.into())
    }

    /// A consistent cut of the whole cluster.
    async fn audit(self: &Arc<Self>) -> Result<Message, ErrorResponse> {
        let parts = snapshot::take(self, &[], true).await?;
        let nodes = parts.into_iter().filter_map(|part| part.audit).collect();
        Ok(AuditReport { nodes }.into())
    }
}

fn state_of(outcome: Outcome) -> TransferState {
    match outcome {
        Outcome::Committed => TransferState::Committed,
        Outcome::Aborted(reason) => TransferState::Aborted(reason_to_wire(reason)),
    }
}

/// The `net::Handler` of a node.
#[derive(Clone)]
pub(crate) struct NodeHandler(pub Arc<Node>);

impl Handler for NodeHandler {
    fn handle(&self, request: Message) -> impl Future<Output = Message> + Send {
        self.0.clone().handle(request)
    }
}

pub(crate) fn outcome_message(id: TransferId, outcome: Outcome) -> Message {
    net::TransferResult {
        id,
        outcome: outcome_to_wire(outcome),
    }
    .into()
}
