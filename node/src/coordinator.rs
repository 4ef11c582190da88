//! The coordinator: runs the transfers whose debit account this node owns. Same-shard transfers
//! commit in one phase in the engine; cross-shard ones run batched two-phase commit with presumed
//! abort:
//!
//! 1. A transfer is checked against what is known of its id (in flight, decided, or recorded by
//!    the engine), then queued. Batches form while earlier batches are in flight: the batch loop
//!    takes everything queued (up to a bound) when a batch slot frees up; there is no timer.
//! 2. One PREPARE per participant per batch, this node's own shard included (it holds the debit).
//! 3. Each transfer commits iff every vote is yes; an unreachable participant counts as a no
//!    (participant unavailable) once the peer timeout passes.
//! 4. Every decision of the batch is logged in one group commit (aborts too: a client that heard
//!    "aborted" must hear it again on retry, even after a crash), with this shard's own COMMIT or
//!    ABORT records in the same group; only then are clients told.
//! 5. Decisions go out as one batch per participant; acknowledged ones are ENDED lazily. Unended
//!    decisions are resent until acknowledged, also after a restart.
//!
//! An inquiry about a transaction still collecting votes forces it to abort (and is answered on a
//! later inquiry, once that abort is durable); one about a transaction never decided here is
//! answered abort, and that presumed abort is logged first so that a later retry of the same id
//! gets the same answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engine::model::{
    AbortReason, AccountId, Amount, CoordinatorDecision, NodeId, Operation, OperationKind, Outcome,
    TransferId,
};
use engine::{EngineError, PrepareRequest, TransferStatus, Vote};
use net::{
    DecisionBatch, DecisionEntry, ErrorCode, ErrorResponse, Message, PrepareBatch, PrepareEntry,
    Transfer,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::convert::{op_to_wire, outcome_from_wire, outcome_to_wire, reason_from_wire};
use crate::failpoint::{self, points};
use crate::node::{
    Node, NodeEngine, apply_decisions, blocking, engine_error, lock, outcome_message,
};

/// Transfers waiting for a batch; one more is answered `Overloaded`.
const QUEUE_CAPACITY: usize = 16 * 1024;
/// Transactions in one batch (and so in one PREPARE frame).
const BATCH_TRANSFERS_MAX: usize = net::BATCH_ENTRIES_MAX as usize;
/// Batches between PREPARE and decision at once. Two let a batch form and start while the
/// previous one waits for its group commits; more make every batch smaller. Measured (256
/// clients, docs/benchmarks.md): 1 slot 9,601/s, 2 slots 9,861/s, 4 slots 8,508/s, 8 slots
/// 7,764/s.
const BATCHES_IN_FLIGHT_MAX: usize = 2;
/// Phase-two deliveries at once; beyond it, decisions wait for the resend loop.
const DELIVERIES_IN_FLIGHT_MAX: usize = 16;
/// First resend of an unacknowledged decision; doubles up to `RESEND_INTERVAL_MAX`.
const RESEND_INTERVAL_MIN: Duration = Duration::from_millis(500);
const RESEND_INTERVAL_MAX: Duration = Duration::from_secs(5);

type Answer = Result<Outcome, ErrorResponse>;

/// A queued cross-shard transfer.
struct Queued {
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: Amount,
}

/// A transfer between its arrival and its durable decision.
struct InFlight {
    /// Debit, credit, amount; `None` for a presumed abort being logged (any retry joins it).
    content: Option<(AccountId, AccountId, Amount)>,
    waiters: Vec<oneshot::Sender<Answer>>,
    phase: Phase,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Queued or waiting for votes. `force_abort` is set by an inquiry: the decision will be abort.
    Collecting { force_abort: bool },
    /// The decision is being logged.
    Deciding,
}

/// A logged decision some participant has not acknowledged.
struct Unended {
    decision: CoordinatorDecision,
    pending: Vec<NodeId>,
    next_send: Instant,
    interval: Duration,
}

pub(crate) struct Coordinator {
    queue: mpsc::Sender<Queued>,
    receiver: Mutex<Option<mpsc::Receiver<Queued>>>,
    in_flight: Mutex<HashMap<TransferId, InFlight>>,
    unended: Mutex<HashMap<TransferId, Unended>>,
    /// Bounds the phase-two deliveries running at once.
    deliveries: Arc<Semaphore>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorResponse {
    ErrorResponse::new(code, message)
}

fn duplicate(id: TransferId) -> ErrorResponse {
    error(
        ErrorCode::DuplicateWithDifferentContent,
        format!("transfer {id} exists with different accounts or amount"),
    )
}

impl Coordinator {
    /// Loads the decisions to resend from the engine.
    pub fn new(engine: &NodeEngine) -> Result<Coordinator, EngineError> {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let now = Instant::now();
        let unended = engine
            .unended_decisions()?
            .into_iter()
            .map(|decision| {
                let pending = decision.participants.clone();
                (
                    decision.id,
                    Unended {
                        decision,
                        pending,
                        next_send: now,
                        interval: RESEND_INTERVAL_MIN,
                    },
                )
            })
            .collect();
        Ok(Coordinator {
            queue,
            receiver: Mutex::new(Some(receiver)),
            in_flight: Mutex::new(HashMap::new()),
            unended: Mutex::new(unended),
            deliveries: Arc::new(Semaphore::new(DELIVERIES_IN_FLIGHT_MAX)),
        })
    }

    pub fn unended_count(&self) -> usize {
        lock(&self.unended).len()
    }

    pub fn is_in_flight(&self, id: TransferId) -> bool {
        lock(&self.in_flight).contains_key(&id)
    }

    /// Answers a `Transfer` request.
    pub async fn transfer(
        &self,
        node: &Arc<Node>,
        request: Transfer,
    ) -> Result<Message, ErrorResponse> {
        let Transfer {
            id,
            debit,
            credit,
            amount,
        } = request;
        if amount == 0 {
            return Err(error(ErrorCode::InvalidArgument, "amount must be positive"));
        }
        if debit == credit {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!("a transfer cannot debit and credit the same account ({debit})"),
            ));
        }
        let owner = node.config.owner_of(debit);
        if owner != node.id {
            return Err(ErrorResponse::wrong_node(owner));
        }
        let content = (debit, credit, amount);
        if node.config.owner_of(credit) == node.id {
            return self.local_transfer(node, id, content).await;
        }
        let (sender, receiver) = oneshot::channel();
        {
            let mut in_flight = lock(&self.in_flight);
            if let Some(entry) = in_flight.get_mut(&id) {
                if entry.content.is_some_and(|existing| existing != content) {
                    return Err(duplicate(id));
                }
                entry.waiters.push(sender);
            } else {
                // Checked under the in-flight lock: a transfer leaves the in-flight map only
                // after its decision is applied, so no retry slips between the two.
                if let Some(outcome) = known_outcome(&node.engine, id, content)? {
                    return Ok(outcome_message(id, outcome));
                }
                let queued = Queued {
                    id,
                    debit,
                    credit,
                    amount,
                };
                if self.queue.try_send(queued).is_err() {
                    return Err(error(
                        ErrorCode::Overloaded,
                        "too many transfers waiting for a batch",
                    ));
                }
                in_flight.insert(
                    id,
                    InFlight {
                        content: Some(content),
                        waiters: vec![sender],
                        phase: Phase::Collecting { force_abort: false },
                    },
                );
            }
        }
        match receiver.await {
            Ok(answer) => answer.map(|outcome| outcome_message(id, outcome)),
            Err(_) => Err(error(
                ErrorCode::Internal,
                "the coordinator dropped the transfer; its outcome is unknown",
            )),
        }
    }

    /// A same-shard transfer: one phase, in the engine. It is registered in the in-flight map
    /// while it runs, so that a cross-shard transfer reusing its id is refused, not run.
    async fn local_transfer(
        &self,
        node: &Arc<Node>,
        id: TransferId,
        content: (AccountId, AccountId, Amount),
    ) -> Result<Message, ErrorResponse> {
        {
            let mut in_flight = lock(&self.in_flight);
            if let Some(entry) = in_flight.get(&id) {
                if entry.content != Some(content) {
                    return Err(duplicate(id));
                }
                // The same request, running: the engine answers `InProgress` (retry later).
            } else {
                if let Some(decision) = node.engine.decision(id).map_err(engine_error)? {
                    return decided_answer(&decision, content)
                        .map(|outcome| outcome_message(id, outcome));
                }
                in_flight.insert(
                    id,
                    InFlight {
                        content: Some(content),
                        waiters: Vec::new(),
                        phase: Phase::Deciding,
                    },
                );
            }
        }
        let engine = node.engine.clone();
        let (debit, credit, amount) = content;
        let outcome = blocking(move || engine.local_transfer(id, debit, credit, amount)).await;
        self.finish(&[id], |_| {
            Err(error(
                ErrorCode::Internal,
                "unreachable: nobody waits on a local transfer",
            ))
        });
        outcome
            .map(|outcome| outcome_message(id, outcome))
            .map_err(engine_error)
    }

    /// The batch loop: runs until the node stops.
    pub async fn run(node: Arc<Node>) {
        let Some(mut receiver) = lock(&node.coordinator.receiver).take() else {
            return;
        };
        let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        loop {
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH_TRANSFERS_MAX {
                match receiver.try_recv() {
                    Ok(queued) => batch.push(queued),
                    Err(_) => break,
                }
            }
            let node = node.clone();
            tokio::spawn(async move {
                let decided = run_batch(&node, batch).await;
                // The slot is for phase one and the decision; phase two does not hold it.
                drop(permit);
                // With enough deliveries running, the resend loop takes these.
                if !decided.is_empty()
                    && let Ok(delivery) = node.coordinator.deliveries.clone().try_acquire_owned()
                {
                    deliver(&node, decided).await;
                    drop(delivery);
                }
            });
        }
    }

    /// Answers an inquiry about `ids`: decided ones with their outcome; unknown ones abort
    /// (logged first); ones still collecting votes are forced to abort and left out (asked again).
    pub async fn answer_inquiry(
        &self,
        node: &Arc<Node>,
        ids: Vec<TransferId>,
    ) -> Result<Vec<DecisionEntry>, ErrorResponse> {
        let mut answers = Vec::with_capacity(ids.len());
        let mut presumed = Vec::new();
        {
            let mut in_flight = lock(&self.in_flight);
            for id in ids {
                if let Some(entry) = in_flight.get_mut(&id) {
                    if let Phase::Collecting { force_abort } = &mut entry.phase {
                        *force_abort = true;
                    }
                    continue;
                }
                match node.engine.decision(id) {
                    // Left out of the answer: the participant asks again.
                    Err(failure) => {
                        tracing::error!(transaction = %id, %failure, "cannot read a decision")
                    }
                    Ok(Some(decision)) => answers.push(DecisionEntry {
                        txid: id,
                        outcome: outcome_to_wire(decision.outcome),
                    }),
                    Ok(None) => {
                        in_flight.insert(
                            id,
                            InFlight {
                                content: None,
                                waiters: Vec::new(),
                                phase: Phase::Deciding,
                            },
                        );
                        presumed.push(id);
                    }
                }
            }
        }
        if presumed.is_empty() {
            return Ok(answers);
        }
        let outcome = Outcome::Aborted(AbortReason::PresumedAbort);
        let decisions = presumed
            .iter()
            .map(|id| CoordinatorDecision {
                id: *id,
                debit: 0,
                credit: 0,
                amount: 0,
                outcome,
                participants: Vec::new(),
                ended: true,
            })
            .collect();
        let engine = node.engine.clone();
        let logged = blocking(move || engine.log_decisions(decisions)).await;
        let answer = logged.as_ref().map(|()| outcome).map_err(|_| {
            error(
                ErrorCode::Internal,
                "storage failure while logging a presumed abort",
            )
        });
        self.finish(&presumed, |_| answer.clone());
        if let Err(failure) = logged {
            // The decided ones are still worth answering; the others are asked again.
            tracing::error!(%failure, "logging presumed aborts failed");
            return Ok(answers);
        }
        for id in presumed {
            tracing::info!(transaction = %id, "presumed abort: no decision was logged");
            answers.push(DecisionEntry {
                txid: id,
                outcome: outcome_to_wire(outcome),
            });
        }
        Ok(answers)
    }

    /// Removes transfers from the in-flight map and answers everyone waiting on them.
    fn finish(&self, ids: &[TransferId], answer: impl Fn(TransferId) -> Answer) {
        let mut in_flight = lock(&self.in_flight);
        for id in ids {
            if let Some(entry) = in_flight.remove(id) {
                for waiter in entry.waiters {
                    let _ = waiter.send(answer(*id));
                }
            }
        }
    }

    /// Resends unacknowledged decisions whose time has come; runs until the node stops.
    pub async fn resend_loop(node: Arc<Node>) {
        loop {
            tokio::time::sleep(RESEND_INTERVAL_MIN / 2).await;
            let now = Instant::now();
            let due: Vec<(CoordinatorDecision, Vec<NodeId>)> = {
                let mut unended = lock(&node.coordinator.unended);
                unended
                    .values_mut()
                    .filter(|entry| entry.next_send <= now)
                    .map(|entry| {
                        entry.next_send = now + entry.interval;
                        entry.interval = (entry.interval * 2).min(RESEND_INTERVAL_MAX);
                        (entry.decision.clone(), entry.pending.clone())
                    })
                    .collect()
            };
            if !due.is_empty() {
                tracing::info!(count = due.len(), "resending unacknowledged decisions");
                deliver(&node, due).await;
            }
        }
    }
}

/// The answer for a transfer whose decision is logged: its outcome if the request is the same.
fn decided_answer(
    decision: &CoordinatorDecision,
    content: (AccountId, AccountId, Amount),
) -> Answer {
    // A presumed abort does not know the transfer's content: any retry gets the abort.
    let presumed = decision.amount == 0;
    if presumed || (decision.debit, decision.credit, decision.amount) == content {
        Ok(decision.outcome)
    } else {
        Err(duplicate(decision.id))
    }
}

/// What is already known of transfer `id`: a logged decision, or an engine record of it.
fn known_outcome(
    engine: &NodeEngine,
    id: TransferId,
    content: (AccountId, AccountId, Amount),
) -> Result<Option<Outcome>, ErrorResponse> {
    if let Some(decision) = engine.decision(id).map_err(engine_error)? {
        return decided_answer(&decision, content).map(Some);
    }
    match engine.transfer_status(id).map_err(engine_error)? {
        // A one-phase transfer of this shard used the id.
        TransferStatus::Decided(record) => {
            if (record.debit, record.credit, record.amount) == content {
                Ok(Some(record.outcome))
            } else {
                Err(duplicate(id))
            }
        }
        // Prepared here by an earlier attempt whose decision was never logged (the node
        // restarted): running the transfer again re-uses that PREPARE.
        TransferStatus::Prepared(_) | TransferStatus::Unknown => Ok(None),
    }
}

/// Where a batch's transfer stands after phase one.
struct PhaseOne {
    /// This node voted yes (holds the PREPARED debit).
    local_yes: bool,
    /// The credit node voted yes, or did not answer (it may hold a PREPARE).
    remote_may_be_prepared: bool,
    refusal: Option<AbortReason>,
}

/// Phases one and the decision for a batch; returns the decisions to deliver (phase two).
async fn run_batch(
    node: &Arc<Node>,
    batch: Vec<Queued>,
) -> Vec<(CoordinatorDecision, Vec<NodeId>)> {
    let me = node.id;
    let mut local = Vec::with_capacity(batch.len());
    let mut remote: BTreeMap<NodeId, Vec<PrepareEntry>> = BTreeMap::new();
    let mut credit_node = Vec::with_capacity(batch.len());
    for transfer in &batch {
        local.push(PrepareRequest {
            id: transfer.id,
            coordinator: me,
            operations: vec![Operation {
                account: transfer.debit,
                kind: OperationKind::Debit,
                amount: transfer.amount,
                counterparty: transfer.credit,
            }],
        });
        let owner = node.config.owner_of(transfer.credit);
        credit_node.push(owner);
        remote.entry(owner).or_default().push(PrepareEntry {
            txid: transfer.id,
            ops: vec![op_to_wire(&Operation {
                account: transfer.credit,
                kind: OperationKind::Credit,
                amount: transfer.amount,
                counterparty: transfer.debit,
            })],
        });
    }

    // Phase one: every PREPARE at once, this node's own included.
    let mut calls = tokio::task::JoinSet::new();
    for (peer, entries) in remote {
        let node = node.clone();
        calls.spawn(async move {
            let ids: Vec<TransferId> = entries.iter().map(|entry| entry.txid).collect();
            let request = PrepareBatch {
                coordinator: node.id,
                entries,
            };
            (peer, ids, node.peers.call(peer, request).await)
        });
    }
    let engine = node.engine.clone();
    let local_votes = blocking(move || engine.prepare(&local)).await;
    // `None`: no answer (the participant may hold a PREPARE); a refusal or a failed connect
    // means the PREPARE surely was not applied, which counts as a no.
    let mut remote_votes: HashMap<TransferId, Option<net::Vote>> = HashMap::new();
    while let Some(joined) = calls.join_next().await {
        let (peer, ids, answer) = joined.expect("prepare call panicked");
        match answer {
            Ok(Message::Votes(votes)) => {
                for vote in votes.votes {
                    remote_votes.insert(vote.txid, Some(vote.vote));
                }
            }
            Ok(other) => {
                tracing::error!(peer, kind = ?other.kind(), "PREPARE answered with the wrong kind");
            }
            Err(error) => {
                tracing::warn!(peer, %error, count = ids.len(), "participant unavailable; aborting its transfers");
                if error.surely_not_applied() {
                    for id in &ids {
                        remote_votes.insert(
                            *id,
                            Some(net::Vote::No(net::AbortReason::ParticipantUnavailable)),
                        );
                    }
                }
            }
        }
        for id in ids {
            remote_votes.entry(id).or_insert(None);
        }
    }
    let local_votes = match local_votes {
        Ok(votes) => votes,
        Err(failure) => {
            // Nothing is decided: every participant that prepared will ask, and hear abort.
            tracing::error!(%failure, "local PREPARE failed; the batch's outcome is unknown");
            let ids: Vec<TransferId> = batch.iter().map(|transfer| transfer.id).collect();
            let answer = engine_error(failure);
            node.coordinator.finish(&ids, |_| Err(answer.clone()));
            return Vec::new();
        }
    };
    failpoint::hit(points::COORDINATOR_AFTER_VOTES);

    // Decide, under the in-flight lock so that an inquiry sees either "collecting" (and forces
    // the abort) or "deciding" (and waits for the logged decision).
    let mut decisions = Vec::with_capacity(batch.len());
    {
        let mut in_flight = lock(&node.coordinator.in_flight);
        for ((transfer, local_vote), credit_owner) in
            batch.iter().zip(local_votes).zip(&credit_node)
        {
            let remote_vote = remote_votes.get(&transfer.id).copied().flatten();
            let mut phase_one = PhaseOne {
                local_yes: local_vote == Vote::Yes,
                remote_may_be_prepared: !matches!(remote_vote, Some(net::Vote::No(_))),
                refusal: None,
            };
            if let Vote::No(reason) = local_vote {
                phase_one.refusal = Some(reason);
            }
            match remote_vote {
                Some(net::Vote::Yes) => {}
                Some(net::Vote::No(reason)) => {
                    phase_one.refusal.get_or_insert(reason_from_wire(reason));
                }
                None => {
                    phase_one
                        .refusal
                        .get_or_insert(AbortReason::ParticipantUnavailable);
                }
            }
            if let Some(entry) = in_flight.get_mut(&transfer.id) {
                if entry.phase == (Phase::Collecting { force_abort: true }) {
                    phase_one.refusal.get_or_insert(AbortReason::Timeout);
                }
                entry.phase = Phase::Deciding;
            }
            let (outcome, participants) = match phase_one.refusal {
                None => (Outcome::Committed, vec![node.id, *credit_owner]),
                Some(reason) => {
                    let mut participants = Vec::new();
                    if phase_one.local_yes {
                        participants.push(node.id);
                    }
                    if phase_one.remote_may_be_prepared {
                        participants.push(*credit_owner);
                    }
                    (Outcome::Aborted(reason), participants)
                }
            };
            decisions.push(CoordinatorDecision {
                id: transfer.id,
                debit: transfer.debit,
                credit: transfer.credit,
                amount: transfer.amount,
                outcome,
                participants,
                ended: false,
            });
        }
    }

    // One group commit for every decision of the batch, this shard's own part applied with it
    // (so its locks are free when the client hears); clients hear nothing before it.
    let mut local = Vec::new();
    for decision in &mut decisions {
        if let Some(position) = decision.participants.iter().position(|node| *node == me) {
            decision.participants.remove(position);
            local.push((decision.id, decision.outcome));
        }
    }
    let engine = node.engine.clone();
    let logged = {
        let decisions = decisions.clone();
        blocking(move || {
            engine
                .log_decisions_and_decide(me, decisions, &local)
                .map(|results| (local, results))
        })
        .await
    };
    let ids: Vec<TransferId> = decisions.iter().map(|decision| decision.id).collect();
    match logged {
        Ok((local, results)) => {
            for ((id, _), result) in local.iter().zip(results) {
                if let Err(error) = result {
                    tracing::error!(transaction = %id, %error, "local part of a decision not applied");
                }
            }
        }
        Err(failure) => {
            tracing::error!(%failure, "logging decisions failed; their outcome is unknown");
            let answer = engine_error(failure);
            node.coordinator.finish(&ids, |_| Err(answer.clone()));
            return Vec::new();
        }
    }
    failpoint::hit(points::COORDINATOR_AFTER_DECISION);
    let outcomes: HashMap<TransferId, Outcome> = decisions
        .iter()
        .map(|decision| (decision.id, decision.outcome))
        .collect();
    node.coordinator.finish(&ids, |id| Ok(outcomes[&id]));

    // Phase two.
    let now = Instant::now();
    let mut to_send = Vec::new();
    {
        let mut unended = lock(&node.coordinator.unended);
        for decision in decisions {
            if decision.participants.is_empty() {
                continue;
            }
            to_send.push((decision.clone(), decision.participants.clone()));
            unended.insert(
                decision.id,
                Unended {
                    pending: decision.participants.clone(),
                    decision,
                    next_send: now + RESEND_INTERVAL_MIN,
                    interval: RESEND_INTERVAL_MIN,
                },
            );
        }
    }
    to_send
}

/// Sends each decision to the participants listed with it (one batch per participant), records
/// the acknowledgements, and ends the decisions every participant has acknowledged.
async fn deliver(node: &Arc<Node>, decisions: Vec<(CoordinatorDecision, Vec<NodeId>)>) {
    let mut per_node: BTreeMap<NodeId, Vec<DecisionEntry>> = BTreeMap::new();
    for (decision, participants) in &decisions {
        for participant in participants {
            per_node
                .entry(*participant)
                .or_default()
                .push(DecisionEntry {
                    txid: decision.id,
                    outcome: outcome_to_wire(decision.outcome),
                });
        }
    }
    let mut calls = tokio::task::JoinSet::new();
    for (participant, entries) in per_node {
        for chunk in entries.chunks(net::BATCH_ENTRIES_MAX as usize) {
            let node = node.clone();
            let chunk = chunk.to_vec();
            calls.spawn(async move {
                let acked = if participant == node.id {
                    let decisions: Vec<(TransferId, Outcome)> = chunk
                        .iter()
                        .map(|entry| (entry.txid, outcome_from_wire(entry.outcome)))
                        .collect();
                    let engine = node.engine.clone();
                    let me = node.id;
                    match blocking(move || apply_decisions(&engine, me, &decisions)).await {
                        Ok(acked) => acked,
                        Err(error) => {
                            tracing::error!(%error, "applying decisions locally failed");
                            Vec::new()
                        }
                    }
                } else {
                    let request = DecisionBatch {
                        coordinator: node.id,
                        decisions: chunk,
                    };
                    match node.peers.call(participant, request).await {
                        Ok(Message::Acks(acks)) => acks.txids,
                        Ok(other) => {
                            tracing::error!(participant, kind = ?other.kind(), "decisions answered with the wrong kind");
                            Vec::new()
                        }
                        Err(error) => {
                            tracing::debug!(participant, %error, "decisions not delivered; will resend");
                            Vec::new()
                        }
                    }
                };
                (participant, acked)
            });
        }
    }
    let mut ended = Vec::new();
    while let Some(joined) = calls.join_next().await {
        let (participant, acked) = joined.expect("decision delivery panicked");
        let mut unended = lock(&node.coordinator.unended);
        for id in acked {
            if let Some(entry) = unended.get_mut(&id) {
                entry.pending.retain(|pending| *pending != participant);
                if entry.pending.is_empty() {
                    unended.remove(&id);
                    ended.push(id);
                }
            }
        }
    }
    if !ended.is_empty() {
        // Lazily: losing these records only means resending decisions after a restart.
        let engine = node.engine.clone();
        if let Err(error) = blocking(move || engine.end_decisions(&ended)).await {
            tracing::error!(%error, "logging ENDED failed");
        }
    }
}

/// The participant side of recovery: asks the coordinators of transactions in doubt here for
/// their decisions, until answered. A transaction is asked about once it has been in doubt for
/// `grace` (decisions normally arrive within milliseconds); the ones found at start-up at once.
pub(crate) async fn resolve_in_doubt_loop(
    node: Arc<Node>,
    recovered: Vec<TransferId>,
    grace: Duration,
) {
    let mut first_seen: HashMap<TransferId, Instant> = HashMap::new();
    let start = Instant::now();
    for id in recovered {
        first_seen.insert(id, start.checked_sub(grace).unwrap_or(start));
    }
    loop {
        let engine = node.engine.clone();
        let in_doubt = blocking(move || engine.in_doubt()).await;
        let now = Instant::now();
        first_seen.retain(|id, _| in_doubt.iter().any(|transaction| transaction.id == *id));
        let mut due: BTreeMap<NodeId, Vec<TransferId>> = BTreeMap::new();
        for transaction in &in_doubt {
            let seen = *first_seen.entry(transaction.id).or_insert(now);
            if now.duration_since(seen) >= grace {
                due.entry(transaction.coordinator)
                    .or_default()
                    .push(transaction.id);
            }
        }
        for (coordinator, ids) in due {
            for chunk in ids.chunks(net::BATCH_ENTRIES_MAX as usize) {
                resolve(&node, coordinator, chunk.to_vec()).await;
            }
        }
        tokio::time::sleep(grace / 2).await;
    }
}

async fn resolve(node: &Arc<Node>, coordinator: NodeId, ids: Vec<TransferId>) {
    let answers = if coordinator == node.id {
        node.coordinator.answer_inquiry(node, ids).await.ok()
    } else {
        let request = net::DecisionInquiry {
            participant: node.id,
            txids: ids,
        };
        match node.peers.call(coordinator, request).await {
            Ok(Message::InquiryAnswer(answer)) => Some(answer.decisions),
            Ok(other) => {
                tracing::error!(coordinator, kind = ?other.kind(), "inquiry answered with the wrong kind");
                None
            }
            Err(error) => {
                tracing::info!(coordinator, %error, "coordinator unreachable; in-doubt transactions wait");
                None
            }
        }
    };
    let Some(answers) = answers else {
        return;
    };
    let decisions: Vec<(TransferId, Outcome)> = answers
        .iter()
        .map(|entry| (entry.txid, outcome_from_wire(entry.outcome)))
        .collect();
    if decisions.is_empty() {
        return;
    }
    let engine = node.engine.clone();
    let applied = {
        let decisions = decisions.clone();
        blocking(move || apply_decisions(&engine, coordinator, &decisions)).await
    };
    match applied {
        Ok(applied) => {
            for (id, outcome) in decisions {
                if applied.contains(&id) {
                    tracing::info!(transaction = %id, coordinator, ?outcome, "in-doubt transaction resolved");
                }
            }
        }
        Err(error) => tracing::error!(%error, "applying resolved decisions failed"),
    }
}
