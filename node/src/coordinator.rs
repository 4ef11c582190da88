//! The coordinator's driver: one task owns the I/O-free core (`engine::coordinator`), feeds it
//! requests from connections and the results of its effects, and carries out the effects: engine
//! calls (look-ups in place; prepares and decision logs in two halves, the WAL's group commit
//! awaited as a future in the effect's own task, see `engine_calls::durably_in_task`), PREPAREs
//! and decisions to the other nodes over `Peers`, answers to the waiting clients. The rules of
//! two-phase commit live in the core; this file only moves events and effects between it and the
//! world.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::coordinator::{
    Answer, Asker, ClientToken, Coordinator as Core, CoordinatorLimits, Effect, InquiryToken,
    Refusal, TransferRequest, Verdict, VoteFailure,
};
use engine::model::{NodeId, Outcome, TransferId};
use engine::{LocalTransferError, OnConflict, StorageError};
use engine::{PrepareRequest, Vote};
use net::{DecisionBatch, DecisionEntry, Message, PrepareBatch};

use crate::metrics::Metrics;
use tokio::sync::{mpsc, oneshot};

use crate::convert::{op_to_wire, outcome_from_wire, outcome_to_wire, reason_from_wire};
use crate::engine_calls::{NodeEngine, apply_decisions, durably_in_task, with_lock_wait};
use crate::failpoint::{self, points};
use crate::router::Router;

/// Requests waiting for the driver; one more is answered `Overloaded` by the caller.
const REQUESTS_QUEUED_MAX: usize = 16 * 1024;
/// The longest the driver sleeps without looking at the core's timers.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// A request to the coordinator from a connection.
enum Request {
    Transfer {
        request: TransferRequest,
        reply: oneshot::Sender<Answer>,
    },
    Inquiry {
        ids: Vec<TransferId>,
        asker: Asker,
        reply: oneshot::Sender<Vec<Verdict>>,
    },
    InFlight {
        id: TransferId,
        reply: oneshot::Sender<bool>,
    },
}

/// The result of an effect, fed back to the core.
enum Completion {
    LocalDone(TransferId, Answer),
    Votes {
        batch: engine::coordinator::BatchId,
        participant: NodeId,
        votes: Result<(Vec<(TransferId, Vote)>, u64), VoteFailure>,
    },
    Logged {
        log: engine::coordinator::LogId,
        result: Result<(), Arc<StorageError>>,
    },
    Delivered {
        delivery: engine::coordinator::DeliveryId,
        acknowledged: Vec<TransferId>,
    },
}

/// Why the coordinator could not take a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Unavailable {
    /// Its request queue is full.
    Overloaded,
    /// The driver stopped before taking the request (the node is shutting down): nothing was
    /// done.
    Stopped,
    /// The driver took the request and stopped before answering: it may have been applied.
    Dropped,
}

/// The handle connections use to reach the coordinator.
#[derive(Clone)]
pub(crate) struct Coordinator {
    requests: mpsc::Sender<Request>,
}

/// The task that owns the core; [`Driver::run`] until the node stops.
pub(crate) struct Driver {
    core: Core,
    engine: Arc<NodeEngine>,
    router: Arc<Router>,
    requests: mpsc::Receiver<Request>,
    completions: mpsc::UnboundedReceiver<Completion>,
    completion_sender: mpsc::UnboundedSender<Completion>,
    clients: HashMap<ClientToken, oneshot::Sender<Answer>>,
    inquiries: HashMap<InquiryToken, oneshot::Sender<Vec<Verdict>>>,
    next_token: u64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

impl Coordinator {
    /// A coordinator for shard `me` (the parties of two-phase commit are shards, each acting
    /// through its leader) and the driver to run it; loads the decisions to resend.
    pub fn new(
        me: NodeId,
        engine: Arc<NodeEngine>,
        router: Arc<Router>,
        metrics: Arc<Metrics>,
    ) -> Result<(Coordinator, Driver), StorageError> {
        let limits = CoordinatorLimits {
            batch_transfers_max: net::BATCH_ENTRIES_MAX as usize,
            ids_per_effect_max: net::BATCH_ENTRIES_MAX as usize,
            vote_timeout: router.peers().timeout(),
            ..CoordinatorLimits::default()
        };
        let epoch = Instant::now();
        let core = Core::new(
            me,
            limits,
            engine.unended_decisions()?,
            engine::coordinator::Time::ZERO,
        );
        let (request_sender, requests) = mpsc::channel(REQUESTS_QUEUED_MAX);
        // Unbounded, yet bounded by the core: every completion answers an effect it released,
        // and it bounds the effects in flight (batches, deliveries, transfers in flight).
        let (completion_sender, completions) = mpsc::unbounded_channel();
        Ok((
            Coordinator {
                requests: request_sender,
            },
            Driver {
                core,
                engine,
                router,
                requests,
                completions,
                completion_sender,
                clients: HashMap::new(),
                inquiries: HashMap::new(),
                next_token: 0,
                epoch,
                metrics,
            },
        ))
    }

    /// Runs a transfer whose debit account this node owns; the answer comes once decided.
    pub async fn transfer(&self, request: TransferRequest) -> Result<Answer, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Transfer { request, reply })?;
        answer.await.map_err(|_| Unavailable::Dropped)
    }

    /// A participant's inquiry: the decided ones among `ids` (the others are asked again).
    pub async fn inquiry(
        &self,
        ids: Vec<TransferId>,
        asker: Asker,
    ) -> Result<Vec<Verdict>, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Inquiry { ids, asker, reply })?;
        answer.await.map_err(|_| Unavailable::Dropped)
    }

    /// Whether `id` is between its request and its durable decision here.
    pub async fn is_in_flight(&self, id: TransferId) -> Result<bool, Unavailable> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::InFlight { id, reply })?;
        answer.await.map_err(|_| Unavailable::Dropped)
    }

    fn send(&self, request: Request) -> Result<(), Unavailable> {
        self.requests
            .try_send(request)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => Unavailable::Overloaded,
                mpsc::error::TrySendError::Closed(_) => Unavailable::Stopped,
            })
    }
}

impl Driver {
    /// Decisions to resend, as loaded at start-up.
    pub fn unended_count(&self) -> usize {
        self.core.unended_count()
    }

    fn now(&self) -> engine::coordinator::Time {
        engine::coordinator::Time::from_elapsed(self.epoch.elapsed())
    }

    /// Feeds the core until the node stops. Everything ready is taken in one go before the
    /// effects run, so requests that queued meanwhile form one batch.
    pub async fn run(mut self) {
        // One timer, moved only when the core's next deadline comes earlier (or the timer
        // fired): re-arming it on every turn would cost a timer update per turn.
        let timer = tokio::time::sleep(IDLE_TICK);
        tokio::pin!(timer);
        loop {
            let wanted = match self.core.next_deadline() {
                Some(deadline) => deadline
                    .elapsed()
                    .saturating_sub(self.epoch.elapsed())
                    .min(IDLE_TICK),
                None => IDLE_TICK,
            };
            let wanted = tokio::time::Instant::now() + wanted;
            if wanted < timer.deadline() || timer.is_elapsed() {
                timer.as_mut().reset(wanted);
            }
            tokio::select! {
                biased;
                completion = self.completions.recv() => {
                    let completion = completion.expect("the driver holds a sender");
                    self.complete(completion);
                }
                request = self.requests.recv() => {
                    let Some(request) = request else { return };
                    self.request(request);
                }
                () = &mut timer => {}
            }
            while let Ok(completion) = self.completions.try_recv() {
                self.complete(completion);
            }
            while let Ok(request) = self.requests.try_recv() {
                self.request(request);
            }
            let now = self.now();
            self.core.tick(now);
            // Look-ups are answered in place, so their effects come out of the next round.
            loop {
                let effects = self.core.take_ready(now);
                if effects.is_empty() {
                    break;
                }
                for effect in effects {
                    self.carry_out(effect);
                }
            }
            self.metrics.coordinator_load(
                self.core.node(),
                self.core.in_flight_count(),
                self.core.unended_count(),
            );
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    fn request(&mut self, request: Request) {
        match request {
            Request::Transfer { request, reply } => {
                let client = ClientToken(self.token());
                self.clients.insert(client, reply);
                self.core.transfer(client, request);
            }
            Request::Inquiry { ids, asker, reply } => {
                let inquiry = InquiryToken(self.token());
                self.inquiries.insert(inquiry, reply);
                self.core.inquiry(inquiry, ids, asker);
            }
            Request::InFlight { id, reply } => {
                let _ = reply.send(self.core.is_in_flight(id));
            }
        }
    }

    fn complete(&mut self, completion: Completion) {
        match completion {
            Completion::LocalDone(id, answer) => self.core.local_done(id, answer),
            Completion::Votes {
                batch,
                participant,
                votes,
            } => self.core.votes(batch, participant, votes),
            Completion::Logged { log, result } => {
                if result.is_ok() {
                    failpoint::hit(points::COORDINATOR_AFTER_DECISION);
                }
                let now = self.now();
                self.core.decisions_logged(log, now, result);
            }
            Completion::Delivered {
                delivery,
                acknowledged,
            } => self.core.delivered(delivery, acknowledged),
        }
    }

    fn carry_out(&mut self, effect: Effect) {
        let completions = self.completion_sender.clone();
        let engine = self.engine.clone();
        let me = self.core.node();
        match effect {
            Effect::LookUp { ids } => {
                // In place: two point reads per id, both usually answered by RocksDB's bloom
                // filters and block cache in microseconds, cheaper than a hop to the blocking
                // pool and back (measured: the hop cost about a tenth of the throughput).
                for id in ids {
                    let known = self.engine.look_up(id).map_err(Arc::new);
                    self.core.looked_up(id, known);
                }
            }
            Effect::RunLocal { id, transfer } => {
                tokio::spawn(async move {
                    let logged = with_lock_wait(&engine, |last| {
                        engine.local_transfer_logged(
                            id,
                            transfer.debit,
                            transfer.credit,
                            transfer.amount,
                            if last {
                                OnConflict::Abort
                            } else {
                                OnConflict::Retry
                            },
                        )
                    })
                    .await;
                    let result = durably_in_task(&engine, logged).await;
                    let answer = result.map_err(|error| match error {
                        LocalTransferError::DuplicateWithDifferentContent(_) => {
                            Refusal::DuplicateWithDifferentContent
                        }
                        LocalTransferError::Storage(error) => Refusal::Storage(Arc::new(error)),
                        other => Refusal::Local(Arc::new(other)),
                    });
                    let _ = completions.send(Completion::LocalDone(id, answer));
                });
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } if participant == me => {
                tokio::spawn(async move {
                    let requests: Vec<PrepareRequest> =
                        entries.iter().map(|entry| entry.request(me)).collect();
                    let ids: Vec<TransferId> = requests.iter().map(|request| request.id).collect();
                    let logging = engine.prepare_logged(&requests);
                    let lsn = logging.as_ref().ok().and_then(|logged| logged.wait_for());
                    let votes = durably_in_task(&engine, logging)
                        .await
                        .inspect(|votes| {
                            for (id, vote) in ids.iter().zip(votes) {
                                tracing::debug!(node = crate::node::node_id(), shard = me, transfer = %id, ?vote, lsn, "2pc: prepared (coordinator's own shard)");
                            }
                        })
                        .map(|votes| (ids.into_iter().zip(votes).collect(), engine.clock_now()))
                        .map_err(|error| {
                            tracing::error!(%error, "local PREPARE failed; the batch's outcome is unknown");
                            VoteFailure::Storage(Arc::new(error))
                        });
                    let _ = completions.send(Completion::Votes {
                        batch,
                        participant,
                        votes,
                    });
                });
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } => {
                let router = self.router.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let request = PrepareBatch {
                        coordinator: me,
                        shard: participant,
                        entries: entries
                            .into_iter()
                            .map(|entry| net::PrepareEntry {
                                txid: entry.id,
                                ops: vec![op_to_wire(&entry.operation)],
                            })
                            .collect(),
                    };
                    let count = request.entries.len();
                    // Idempotent: a prepare seen twice votes the same.
                    let votes = match router.call(participant, request, true).await {
                        Ok(Message::Votes(votes)) => Ok((
                            votes
                                .votes
                                .into_iter()
                                .map(|entry| {
                                    let vote = match entry.vote {
                                        net::Vote::Yes => Vote::Yes,
                                        net::Vote::No(reason) => Vote::No(reason_from_wire(reason)),
                                    };
                                    (entry.txid, vote)
                                })
                                .collect(),
                            votes.clock,
                        )),
                        Ok(other) => {
                            tracing::error!(participant, kind = ?other.kind(), "PREPARE answered with the wrong kind");
                            Err(VoteFailure::Unreachable {
                                surely_not_applied: false,
                            })
                        }
                        Err(error) => {
                            tracing::warn!(node = crate::node::node_id(), shard = me, participant, %error, count, "2pc: participant unavailable; aborting its transfers");
                            Err(VoteFailure::Unreachable {
                                surely_not_applied: error.surely_not_applied(),
                            })
                        }
                    };
                    metrics.prepared(started.elapsed());
                    let _ = completions.send(Completion::Votes {
                        batch,
                        participant,
                        votes,
                    });
                });
            }
            Effect::LogDecisions {
                log,
                decisions,
                local,
                commit_ts,
            } => {
                let presumed = Outcome::Aborted(engine::model::AbortReason::PresumedAbort);
                let presumed_count = decisions
                    .iter()
                    .filter(|decision| decision.outcome == presumed)
                    .count();
                if presumed_count < decisions.len() {
                    failpoint::hit(points::COORDINATOR_AFTER_VOTES);
                }
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let traced: Vec<(TransferId, Outcome, Vec<NodeId>)> =
                        if tracing::enabled!(tracing::Level::DEBUG) {
                            decisions
                                .iter()
                                .map(|d| (d.id, d.outcome, d.participants.clone()))
                                .collect()
                        } else {
                            Vec::new()
                        };
                    let logging =
                        engine.log_decisions_and_decide_logged(me, decisions, &local, commit_ts);
                    let lsn = logging.as_ref().ok().and_then(|logged| logged.wait_for());
                    let logged = durably_in_task(&engine, logging)
                    .await
                    .map(|results| {
                        for ((id, _), result) in local.iter().zip(results) {
                            if let Err(error) = result {
                                tracing::error!(node = crate::node::node_id(), shard = me, transfer = %id, %error, "2pc: local part of a decision not applied");
                            }
                        }
                    });
                    let result = logged.map_err(|failure: StorageError| {
                        tracing::error!(%failure, "logging decisions failed; their outcome is unknown");
                        Arc::new(failure)
                    });
                    if result.is_ok() {
                        metrics.decided(started.elapsed(), presumed_count);
                        for (id, outcome, participants) in &traced {
                            tracing::debug!(node = crate::node::node_id(), shard = me, transfer = %id, ?outcome, commit_ts, lsn, ?participants, "2pc: decision logged (coordinator)");
                        }
                    }
                    let _ = completions.send(Completion::Logged { log, result });
                });
            }
            Effect::Answer { client, answer, .. } => {
                if let Some(reply) = self.clients.remove(&client) {
                    let _ = reply.send(answer);
                }
            }
            Effect::AnswerInquiry { inquiry, decisions } => {
                for (id, outcome, _) in &decisions {
                    if *outcome == Outcome::Aborted(engine::model::AbortReason::PresumedAbort) {
                        tracing::info!(node = crate::node::node_id(), shard = me, transfer = %id, "2pc: presumed abort: no decision was logged");
                    }
                }
                if let Some(reply) = self.inquiries.remove(&inquiry) {
                    let _ = reply.send(decisions);
                }
            }
            Effect::SendDecisions {
                delivery,
                participant,
                decisions,
            } => {
                let router = self.router.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let acknowledged = if participant == me {
                        // Only decisions logged by an older version list this node.
                        apply_decisions(&engine, me, me, &decisions)
                            .await
                            .unwrap_or_else(|error| {
                                tracing::error!(%error, "applying decisions locally failed");
                                Vec::new()
                            })
                    } else {
                        let request = DecisionBatch {
                            coordinator: me,
                            shard: participant,
                            decisions: decisions
                                .iter()
                                .map(|(id, outcome, commit_ts)| DecisionEntry {
                                    txid: *id,
                                    outcome: outcome_to_wire(*outcome),
                                    commit_ts: *commit_ts,
                                })
                                .collect(),
                        };
                        match router.call(participant, request, true).await {
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
                    metrics.delivered(started.elapsed());
                    for id in &acknowledged {
                        tracing::debug!(node = crate::node::node_id(), shard = me, participant, transfer = %id, "2pc: decision acknowledged (coordinator)");
                    }
                    let _ = completions.send(Completion::Delivered {
                        delivery,
                        acknowledged,
                    });
                });
            }
            Effect::LogEnded { ids } => {
                tokio::spawn(async move {
                    // Lazily: losing these records only means resending decisions after a restart.
                    if let Err(error) =
                        durably_in_task(&engine, engine.end_decisions_logged(&ids)).await
                    {
                        tracing::error!(%error, "logging ENDED failed");
                    }
                });
            }
        }
    }
}

/// The participant side of recovery: asks the coordinators of transactions in doubt here for
/// their decisions, until answered. A transaction is asked about once it has been in doubt for
/// `grace` (decisions normally arrive within milliseconds); the ones found at start-up at once.
pub(crate) async fn resolve_in_doubt_loop(
    me: NodeId,
    engine: Arc<NodeEngine>,
    router: Arc<Router>,
    coordinator: Coordinator,
    recovered: Vec<TransferId>,
    grace: Duration,
) {
    let mut first_seen: HashMap<TransferId, Instant> = HashMap::new();
    let start = Instant::now();
    for id in recovered {
        first_seen.insert(id, start.checked_sub(grace).unwrap_or(start));
    }
    loop {
        let in_doubt = engine.in_doubt();
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
        for (asked, ids) in due {
            for chunk in ids.chunks(net::BATCH_ENTRIES_MAX as usize) {
                let answers = if asked == me {
                    coordinator
                        .inquiry(chunk.to_vec(), Asker::ThisNode)
                        .await
                        .ok()
                } else {
                    ask(&router, me, asked, chunk.to_vec()).await
                };
                if let Some(decisions) = answers {
                    apply_resolved(&engine, me, asked, decisions).await;
                }
            }
        }
        tokio::time::sleep(grace / 2).await;
    }
}

async fn ask(
    router: &Router,
    me: NodeId,
    coordinator: NodeId,
    ids: Vec<TransferId>,
) -> Option<Vec<Verdict>> {
    let request = net::DecisionInquiry {
        participant: me,
        shard: coordinator,
        txids: ids,
    };
    match router.call(coordinator, request, true).await {
        Ok(Message::InquiryAnswer(answer)) => Some(
            answer
                .decisions
                .iter()
                .map(|entry| {
                    (
                        entry.txid,
                        outcome_from_wire(entry.outcome),
                        entry.commit_ts,
                    )
                })
                .collect(),
        ),
        Ok(other) => {
            tracing::error!(coordinator, kind = ?other.kind(), "inquiry answered with the wrong kind");
            None
        }
        Err(error) => {
            tracing::info!(coordinator, %error, "coordinator unreachable; in-doubt transactions wait");
            None
        }
    }
}

async fn apply_resolved(
    engine: &Arc<NodeEngine>,
    me: NodeId,
    coordinator: NodeId,
    decisions: Vec<Verdict>,
) {
    if decisions.is_empty() {
        return;
    }
    let applied = apply_decisions(engine, me, coordinator, &decisions).await;
    match applied {
        Ok(applied) => {
            for (id, outcome, _) in decisions {
                if applied.contains(&id) {
                    tracing::info!(node = crate::node::node_id(), shard = me, transfer = %id, coordinator, ?outcome, "2pc: in-doubt transaction resolved");
                }
            }
        }
        Err(error) => tracing::error!(%error, "applying resolved decisions failed"),
    }
}
