//! A running node's state and its answer to every request: client requests (routed to the
//! engine, the coordinator, or a consistent cut across nodes) and node-to-node requests (the
//! participant side of 2PC, decision inquiries, snapshot locks).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::coordinator::{Asker, Refusal, Transfer, TransferRequest};
use engine::model::{
    AccountId, HistoryKind, MovementId, MovementKind, MovementOutcome, NodeId, Outcome,
    RefusalReason, TransferId,
};
use engine::{
    PrepareRequest, ReadError, ReadLocks, ShardAudit, StorageError, TransferStatus, Vote,
};
use net::{
    AccountCreated, Acks, Audit, AuditReport, Balance, Balances, ClusterStatus, CreateAccount,
    DecisionBatch, DecisionInquiry, Deposit, Deposited, ErrorCode, ErrorResponse, GetBalance,
    GetBalances, GetHistory, GetTransferStatus, Handler, Heartbeat, HeartbeatReply, History,
    InquiryAnswer, Message, NodeAudit, NodeStatus, PrepareBatch, SnapshotLock, SnapshotLocked,
    SnapshotRelease, SnapshotReleased, TransferState, VoteEntry, Votes, Withdraw, Withdrawn,
};

use crate::convert::{op_from_wire, outcome_from_wire, outcome_to_wire, reason_to_wire};
use crate::coordinator::{Coordinator, Driver, Unavailable};
use crate::engine_calls::{
    NodeEngine, apply_decisions, blocking, durably, engine_error, engine_error_of, lock,
    with_lock_wait,
};
use crate::failpoint::{self, points};
use crate::peers::{PeerError, Peers};
use client::config::ClusterConfig;

/// How long a multi-account read waits for the shared locks of one node's accounts.
const READ_LOCK_WAIT: Duration = Duration::from_millis(50);
/// How long an audit waits for a node's prepared transactions to be decided.
/// Well below the peer timeout, so that a node that cannot drain says so before its caller
/// gives up on it.
const AUDIT_DRAIN_WAIT: Duration = Duration::from_secs(1);
/// A snapshot's state is dropped after this long even if its release never comes.
const SNAPSHOT_LEASE: Duration = Duration::from_secs(5);
/// Attempts of a consistent read that meets lock conflicts before it gives up.
const SNAPSHOT_ATTEMPTS_MAX: u32 = 8;

/// What a node shares with its tasks.
pub(crate) struct Node {
    pub id: NodeId,
    pub config: ClusterConfig,
    pub engine: Arc<NodeEngine>,
    pub peers: Arc<Peers>,
    pub started: Instant,
    pub coordinator: Coordinator,
    /// Shared with the lease tasks that drop a snapshot whose release never came.
    snapshots: Arc<Mutex<HashMap<u128, Held>>>,
}

/// What a node holds for one snapshot until it is released.
enum SnapshotHold {
    /// Shared locks.
    Locks(ReadLocks),
    /// Prepares are closed.
    Gate,
}

/// A snapshot's hold and the task that ends it when its lease runs out.
struct Held {
    hold: SnapshotHold,
    lease: Option<tokio::task::AbortHandle>,
}

fn unavailable(error: Unavailable) -> ErrorResponse {
    match error {
        Unavailable::Overloaded => ErrorResponse::new(
            ErrorCode::Overloaded,
            "the coordinator's request queue is full",
        ),
        Unavailable::Stopped => ErrorResponse::new(ErrorCode::ShuttingDown, "the node is stopping"),
        // Not ShuttingDown, which promises nothing was done: the request may have been applied.
        Unavailable::Dropped => ErrorResponse::new(
            ErrorCode::Internal,
            "the node stopped while running the request; its outcome is unknown",
        ),
    }
}

fn peer_error(error: &PeerError) -> ErrorResponse {
    match error {
        PeerError::Refused { error, .. } => error.clone(),
        other => ErrorResponse::new(ErrorCode::ParticipantUnavailable, other.to_string()),
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Node {
    /// The node and its coordinator's driver, to run beside it.
    pub fn new(
        id: NodeId,
        config: ClusterConfig,
        engine: Arc<NodeEngine>,
        peer_timeout: Duration,
    ) -> Result<(Arc<Node>, Driver), StorageError> {
        let peers = Arc::new(Peers::new(config.clone(), peer_timeout));
        let (coordinator, driver) = Coordinator::new(id, engine.clone(), peers.clone())?;
        let node = Arc::new(Node {
            id,
            peers,
            config,
            engine,
            started: Instant::now(),
            coordinator,
            snapshots: Arc::new(Mutex::new(HashMap::new())),
        });
        Ok((node, driver))
    }

    /// A `WrongNode` redirect when `account` belongs to another node.
    fn owned(&self, account: AccountId) -> Result<(), ErrorResponse> {
        let owner = self.config.owner_of(account);
        if owner == self.id {
            Ok(())
        } else {
            Err(ErrorResponse::wrong_node(owner))
        }
    }

    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.id,
            up: true,
            shard: self
                .config
                .node(self.id)
                .and_then(|node| node.shards.first().copied())
                .unwrap_or(0),
            last_lsn: self.engine.wal().durable_lsn(),
            in_doubt_count: self.engine.in_doubt().len() as u64,
            uptime_seconds: self.started.elapsed().as_secs(),
        }
    }

    pub async fn handle(self: Arc<Self>, request: Message) -> Message {
        let answer = match request {
            Message::CreateAccount(request) => self.create_account(request).await,
            Message::Deposit(request) => self.deposit(request).await,
            Message::Withdraw(request) => self.withdraw(request).await,
            Message::GetBalance(GetBalance { account }) => self.balance(account).await,
            Message::GetBalances(GetBalances { accounts }) => self.balances(accounts).await,
            Message::GetHistory(request) => self.history(request).await,
            Message::Transfer(request) => self.transfer(request).await,
            Message::GetTransferStatus(GetTransferStatus { id }) => self.transfer_status(id).await,
            Message::Audit(Audit {}) => self.audit().await,
            Message::GetClusterStatus(_) => Ok(ClusterStatus {
                nodes: vec![self.status()],
            }
            .into()),
            Message::PrepareBatch(batch) => self.prepare(batch).await,
            Message::DecisionBatch(batch) => self.decide(batch).await,
            Message::DecisionInquiry(DecisionInquiry { participant, txids }) => {
                tracing::info!(participant, count = txids.len(), "decision inquiry");
                self.coordinator
                    .inquiry(txids, Asker::OtherNode)
                    .await
                    .map_err(unavailable)
                    .map(|decisions| {
                        InquiryAnswer {
                            decisions: decisions
                                .into_iter()
                                .map(|(txid, outcome)| net::DecisionEntry {
                                    txid,
                                    outcome: outcome_to_wire(outcome),
                                })
                                .collect(),
                        }
                        .into()
                    })
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
            Message::SnapshotLock(request) => self.snapshot_lock(request).await,
            Message::SnapshotRelease(SnapshotRelease { snapshot_id }) => {
                self.snapshot_release(snapshot_id);
                Ok(SnapshotReleased {}.into())
            }
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
        self.owned(debit)?;
        let request = TransferRequest {
            id,
            transfer: Transfer {
                debit,
                credit,
                amount,
            },
            credit_node: self.config.owner_of(credit),
        };
        let answer = self
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
                format!("node {node} has not acknowledged many decisions (it is likely down)"),
            )),
            Err(Refusal::Storage(error)) => Err(engine_error_of(&*error)),
            Err(Refusal::Local(error)) => Err(engine_error_of(&*error)),
        }
    }

    async fn create_account(&self, request: CreateAccount) -> Result<Message, ErrorResponse> {
        self.owned(request.account)?;
        let engine = &self.engine;
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
        self.owned(account)?;
        let engine = &self.engine;
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
        self.owned(account)?;
        // Under a shared lock: a transfer whose outcome a client has heard may still be applying
        // here (a credit waits for its COMMIT); the read waits for it rather than miss it.
        let engine = self.engine.clone();
        let balance = blocking(move || {
            let (owner, balances) = engine.lock_and_read(&[account], READ_LOCK_WAIT)?;
            engine.release_locks(owner);
            Ok::<_, ReadError>(balances[0])
        })
        .await
        .map_err(engine_error)?;
        Ok(Balance { account, balance }.into())
    }

    async fn history(&self, request: GetHistory) -> Result<Message, ErrorResponse> {
        self.owned(request.account)?;
        let limit = request.limit.clamp(1, net::HISTORY_PAGE_MAX_ENTRIES);
        let cursor = (request.cursor != 0).then_some(request.cursor);
        let engine = self.engine.clone();
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

    /// What this node knows of a transfer: its coordinator decision first (exact, and the only
    /// record of an abort decided before any participant prepared), then its participant state.
    async fn transfer_status(self: &Arc<Self>, id: TransferId) -> Result<Message, ErrorResponse> {
        if self
            .coordinator
            .is_in_flight(id)
            .await
            .map_err(unavailable)?
        {
            return Ok(net::TransferStatus {
                id,
                state: TransferState::InProgress,
            }
            .into());
        }
        let engine = self.engine.clone();
        let state = blocking(move || {
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
        .map_err(engine_error)?;
        Ok(net::TransferStatus { id, state }.into())
    }

    /// Participant: phase one for a batch.
    async fn prepare(&self, batch: PrepareBatch) -> Result<Message, ErrorResponse> {
        let requests: Vec<PrepareRequest> = batch
            .entries
            .iter()
            .map(|entry| PrepareRequest {
                id: entry.txid,
                coordinator: batch.coordinator,
                operations: entry.ops.iter().map(op_from_wire).collect(),
            })
            .collect();
        // Every operation must be on this node's accounts; a misrouted one votes no.
        let misrouted: Vec<bool> = requests
            .iter()
            .map(|request| {
                request
                    .operations
                    .iter()
                    .any(|operation| self.config.owner_of(operation.account) != self.id)
            })
            .collect();
        let routed: Vec<PrepareRequest> = requests
            .iter()
            .zip(&misrouted)
            .filter(|(_, misrouted)| !**misrouted)
            .map(|(request, _)| request.clone())
            .collect();
        let mut votes = durably(&self.engine, self.engine.prepare_logged(&routed))
            .await
            .map_err(engine_error)?
            .into_iter();
        let votes = requests
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
        Ok(Votes { votes }.into())
    }

    /// Participant: phase two for a batch; acknowledges each decision once applied.
    async fn decide(&self, batch: DecisionBatch) -> Result<Message, ErrorResponse> {
        failpoint::hit(points::PARTICIPANT_BEFORE_DECISION);
        let decisions: Vec<(TransferId, Outcome)> = batch
            .decisions
            .iter()
            .map(|entry| (entry.txid, outcome_from_wire(entry.outcome)))
            .collect();
        let txids = apply_decisions(&self.engine, batch.coordinator, &decisions)
            .await
            .map_err(engine_error)?;
        Ok(Acks { txids }.into())
    }

    /// One node's part of a snapshot (see `SnapshotLock` in docs/protocol.md).
    async fn snapshot_lock(&self, request: SnapshotLock) -> Result<Message, ErrorResponse> {
        for account in &request.accounts {
            self.owned(*account)?;
        }
        let lease = Duration::from_millis(u64::from(request.lease_ms)).min(SNAPSHOT_LEASE);
        let id = request.snapshot_id;
        let engine = self.engine.clone();
        let (hold, balances, audit) = if request.whole_shard {
            engine.close_prepares();
            lock(&self.snapshots).insert(
                id,
                Held {
                    hold: SnapshotHold::Gate,
                    lease: None,
                },
            );
            let deadline = Instant::now() + AUDIT_DRAIN_WAIT.min(lease);
            while engine.undecided_count() > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let undecided = engine.undecided_count();
            if undecided > 0 {
                self.snapshot_release(id);
                return Err(ErrorResponse::new(
                    ErrorCode::Timeout,
                    format!(
                        "node {}: {undecided} prepared transactions still undecided after {} ms (a coordinator may be down); no consistent cut",
                        self.id,
                        AUDIT_DRAIN_WAIT.as_millis()
                    ),
                ));
            }
            let audit = match blocking(move || engine.audit()).await {
                Ok(audit) => audit,
                Err(error) => {
                    self.snapshot_release(id);
                    return Err(engine_error(error));
                }
            };
            (
                SnapshotHold::Gate,
                Vec::new(),
                Some(node_audit(self.id, &audit)),
            )
        } else {
            let accounts = request.accounts.clone();
            let (owner, balances) =
                blocking(move || engine.lock_and_read(&accounts, READ_LOCK_WAIT))
                    .await
                    .map_err(engine_error)?;
            let balances = request
                .accounts
                .iter()
                .zip(balances)
                .map(|(account, balance)| Balance {
                    account: *account,
                    balance,
                })
                .collect();
            (SnapshotHold::Locks(owner), balances, None)
        };
        let engine = self.engine.clone();
        let snapshots = self.snapshots.clone();
        let expiry = tokio::spawn(async move {
            tokio::time::sleep(lease).await;
            let held = lock(&snapshots).remove(&id);
            if let Some(held) = held {
                tracing::warn!(snapshot = id, "snapshot lease expired before its release");
                release_hold(&engine, held.hold);
            }
        });
        {
            let mut snapshots = lock(&self.snapshots);
            let gate_released = matches!(hold, SnapshotHold::Gate) && !snapshots.contains_key(&id);
            if gate_released {
                // Released while draining: nothing is held any more.
                expiry.abort();
            } else {
                snapshots.insert(
                    id,
                    Held {
                        hold,
                        lease: Some(expiry.abort_handle()),
                    },
                );
            }
        }
        Ok(SnapshotLocked { balances, audit }.into())
    }

    fn snapshot_release(&self, id: u128) {
        let held = lock(&self.snapshots).remove(&id);
        if let Some(held) = held {
            if let Some(lease) = held.lease {
                lease.abort();
            }
            release_hold(&self.engine, held.hold);
        }
    }

    /// One consistent cut over several nodes: `SnapshotLock` on each (this node included),
    /// then `SnapshotRelease` on each, whatever happened. Retried on lock conflicts. It runs as a
    /// task of its own: a request dropped halfway (its client closed the connection) still
    /// releases what it locked as soon as it can, instead of leaving the locks to their lease
    /// while every transfer touching those accounts aborts.
    async fn snapshot(
        self: &Arc<Self>,
        accounts: &[AccountId],
        whole_cluster: bool,
    ) -> Result<Vec<SnapshotLocked>, ErrorResponse> {
        let node = self.clone();
        let accounts = accounts.to_vec();
        let cut = tokio::spawn(async move { node.take_snapshot(&accounts, whole_cluster).await });
        match cut.await {
            Ok(result) => result,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    async fn take_snapshot(
        self: &Arc<Self>,
        accounts: &[AccountId],
        whole_cluster: bool,
    ) -> Result<Vec<SnapshotLocked>, ErrorResponse> {
        let mut per_node: BTreeMap<NodeId, Vec<AccountId>> = BTreeMap::new();
        if whole_cluster {
            for node in &self.config.nodes {
                per_node.insert(node.id, Vec::new());
            }
        }
        for account in accounts {
            per_node
                .entry(self.config.owner_of(*account))
                .or_default()
                .push(*account);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let snapshot_id: u128 = rand::random();
            let mut calls = tokio::task::JoinSet::new();
            for (node, accounts) in &per_node {
                let request = SnapshotLock {
                    snapshot_id,
                    accounts: accounts.clone(),
                    whole_shard: whole_cluster,
                    lease_ms: SNAPSHOT_LEASE.as_millis() as u32,
                };
                let node = *node;
                let part = self.clone().snapshot_part(node, request);
                calls.spawn(async move { (node, part.await) });
            }
            let mut parts = BTreeMap::new();
            let mut failure = None;
            while let Some(joined) = calls.join_next().await {
                let (node, answer) = joined.expect("snapshot call panicked");
                match answer {
                    Ok(part) => {
                        parts.insert(node, part);
                    }
                    Err(error) => failure = Some(error),
                }
            }
            let mut releases = tokio::task::JoinSet::new();
            for node in per_node.keys() {
                releases.spawn(self.clone().release_part(*node, snapshot_id));
            }
            while releases.join_next().await.is_some() {}
            match failure {
                None => return Ok(parts.into_values().collect()),
                Some(error)
                    if error.code == ErrorCode::LockConflict && attempt < SNAPSHOT_ATTEMPTS_MAX =>
                {
                    let backoff = rand::random_range(1..=(1u64 << attempt.min(6)));
                    tokio::time::sleep(Duration::from_millis(backoff)).await;
                }
                Some(error) => return Err(error),
            }
        }
    }

    /// One node's part of a snapshot, this node's own included (handled in place).
    async fn snapshot_part(
        self: Arc<Self>,
        node: NodeId,
        request: SnapshotLock,
    ) -> Result<SnapshotLocked, ErrorResponse> {
        let answer = if node == self.id {
            self.snapshot_lock(request).await?
        } else {
            self.peers
                .call(node, request)
                .await
                .map_err(|error| peer_error(&error))?
        };
        match answer {
            Message::SnapshotLocked(part) => Ok(part),
            Message::ErrorResponse(error) => Err(error),
            other => Err(ErrorResponse::new(
                ErrorCode::Internal,
                format!("node {node} answered a snapshot with {:?}", other.kind()),
            )),
        }
    }

    /// Releases one node's part of a snapshot. A release that does not get through (the node is
    /// partitioned away or paused, and may hold the locks) is sent again in the background, with
    /// backoff, until it does or the lease has ended it anyway: the locks go as soon as the node
    /// can hear it, not only at the end of the lease.
    async fn release_part(self: Arc<Self>, node: NodeId, snapshot_id: u128) {
        if node == self.id {
            self.snapshot_release(snapshot_id);
            return;
        }
        let lease_end = Instant::now() + SNAPSHOT_LEASE;
        let Err(error) = self.peers.call(node, SnapshotRelease { snapshot_id }).await else {
            return;
        };
        tracing::info!(node, %error, "snapshot release not delivered; sending it again");
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            while Instant::now() + pause < lease_end {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                if self
                    .peers
                    .call(node, SnapshotRelease { snapshot_id })
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tracing::warn!(node, "snapshot release not delivered; its lease ends it");
        });
    }

    /// A consistent read of many accounts, possibly on several nodes.
    async fn balances(
        self: &Arc<Self>,
        accounts: Vec<AccountId>,
    ) -> Result<Message, ErrorResponse> {
        if accounts.is_empty() {
            return Ok(Balances { balances: vec![] }.into());
        }
        let parts = self.snapshot(&accounts, false).await?;
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
        let parts = self.snapshot(&[], true).await?;
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

fn node_audit(node: NodeId, audit: &ShardAudit) -> NodeAudit {
    NodeAudit {
        node_id: node,
        balances_sum: audit.balance_sum,
        deposits_sum: audit.totals.deposited,
        withdrawals_sum: audit.totals.withdrawn,
        account_count: audit.accounts,
        negative_balance_count: audit.negative_balance_count,
        in_doubt_count: audit.in_doubt,
    }
}

fn release_hold(engine: &NodeEngine, hold: SnapshotHold) {
    match hold {
        SnapshotHold::Locks(owner) => engine.release_locks(owner),
        SnapshotHold::Gate => engine.open_prepares(),
    }
}

/// Applies `coordinator`'s decisions at this participant; returns the ids now applied (to
/// acknowledge).
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
