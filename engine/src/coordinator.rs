//! The coordinator core: batched two-phase commit with presumed abort, as a state machine that
//! does no I/O. It owns the state of every transfer this node coordinates between the request
//! and the durable decision, and of every logged decision some participant has not acknowledged.
//! It never reads a clock, a file, a socket or a random number: the driver (`node`, or the
//! simulator) feeds it events, each with the current [`Time`], and carries out the [`Effect`]s
//! that [`Coordinator::take_ready`] returns, feeding their results back as events.
//!
//! The life of a cross-shard transfer:
//! 1. [`Coordinator::transfer`]: a request joins a running transfer with the same id, is refused
//!    (same id, other content; a bound reached), or starts: [`Effect::LookUp`] asks what the
//!    tables know of the id ([`Coordinator::looked_up`]). A decided id is answered from its
//!    record; an unknown one is queued.
//! 2. Batches form in [`Coordinator::take_ready`] whenever a batch slot is free: everything
//!    queued (up to a bound) becomes one [`Effect::Prepare`] per participant, this node included.
//!    No timer forms a batch: requests queue while the slots are busy.
//! 3. [`Coordinator::votes`]: once every participant answered (or the vote deadline passed for
//!    the remote ones, see [`Coordinator::tick`]), each transfer commits iff every vote is yes.
//! 4. Every decision of the batch, aborts included, goes into one [`Effect::LogDecisions`], with
//!    this shard's own part of them. Clients hear nothing before [`Coordinator::decisions_logged`]
//!    says the records are durable: only then come the [`Effect::Answer`]s.
//! 5. Decisions go to the other participants as [`Effect::SendDecisions`], resent with backoff
//!    until acknowledged ([`Coordinator::delivered`]); fully acknowledged ones are ended lazily
//!    ([`Effect::LogEnded`]).
//!
//! An inquiry ([`Coordinator::inquiry`]) about a transfer still collecting votes forces it to
//! abort and is answered on a later inquiry; about one never decided here it is answered abort,
//! and that presumed abort is logged first, so that a later retry of the id gets the same answer.
//! Same-shard transfers run in one phase in the engine ([`Effect::RunLocal`]); they pass through
//! the core only so that one id is never run twice at once, locally and across shards.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{
    AbortReason, CoordinatorDecision, NodeId, Operation, OperationKind, Outcome, Timestamp,
    TransferId, TransferRecord,
};
use crate::shard::{LocalTransferError, PrepareRequest, StorageError, Vote};

#[cfg(test)]
mod tests;

/// A point on the driver's clock: time since an epoch the driver chose (process start, or zero
/// in the simulator). Only differences matter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    pub const ZERO: Time = Time(Duration::ZERO);

    pub fn from_elapsed(elapsed: Duration) -> Time {
        Time(elapsed)
    }

    pub fn elapsed(self) -> Duration {
        self.0
    }
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;

    fn add(self, duration: Duration) -> Time {
        Time(self.0 + duration)
    }
}

pub use crate::model::Transfer;

/// A transfer request that reached its coordinator: the debit account is this node's. The driver
/// validated it (positive amount, two different accounts) and routed the credit account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferRequest {
    pub id: TransferId,
    pub transfer: Transfer,
    /// The node owning the credit account; this node for a same-shard transfer.
    pub credit_node: NodeId,
}

/// Opaque handle of a client waiting for an answer, chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientToken(pub u64);

/// Opaque handle of an inquiry waiting for its answer, chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InquiryToken(pub u64);

/// A batch of transfers between its PREPAREs and its logged decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub u64);

/// One group of decision records being logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LogId(pub u64);

/// One decision batch sent to one participant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub u64);

/// What the tables know of a transfer id (the driver's answer to [`Effect::LookUp`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// This node logged a coordinator decision for the id.
    Decided(CoordinatorDecision),
    /// This shard recorded an outcome for the id without a coordinator decision: a same-shard
    /// transfer.
    Recorded(TransferRecord),
    Nothing,
}

/// Why a client gets no outcome.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The id was used before with other accounts or another amount.
    DuplicateWithDifferentContent,
    /// A bound was reached (transfers in flight); nothing was done, retry later.
    Overloaded,
    /// Too many decisions for this participant are not acknowledged yet (it is likely down);
    /// nothing was done.
    ParticipantBacklog(NodeId),
    /// The engine's storage failed; for a cross-shard transfer the outcome is unknown to the
    /// client until it asks again.
    Storage(Arc<StorageError>),
    /// The one-phase path refused the transfer without an outcome (another request with its id
    /// is running, or the id is a deposit's).
    Local(Arc<LocalTransferError>),
}

impl PartialEq for Refusal {
    fn eq(&self, other: &Refusal) -> bool {
        match (self, other) {
            (Refusal::Storage(one), Refusal::Storage(other)) => Arc::ptr_eq(one, other),
            (Refusal::Local(one), Refusal::Local(other)) => Arc::ptr_eq(one, other),
            (Refusal::ParticipantBacklog(one), Refusal::ParticipantBacklog(other)) => one == other,
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

/// What a client hears.
pub type Answer = Result<Outcome, Refusal>;

/// Who asks about in-doubt transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// Another node, which holds a PREPARE of ours: a transfer still collecting votes is forced
    /// to abort, since that node may be asking because it restarted and our vote round may
    /// never end for it.
    OtherNode,
    /// This node's own participant part: it is in doubt only because the decision is not made
    /// yet, and the decision is applied with its record; nothing is forced.
    ThisNode,
}

/// Why a participant's votes did not arrive.
#[derive(Debug, Clone)]
pub enum VoteFailure {
    /// No answer from a remote participant. `surely_not_applied`: the PREPARE surely never
    /// reached it (connect failed, refused), so it holds nothing; otherwise it may be prepared.
    Unreachable { surely_not_applied: bool },
    /// This node's own engine failed to prepare (a storage failure): nothing of the batch can be
    /// decided here; the other participants will ask, and hear the presumed abort.
    Storage(Arc<StorageError>),
}

/// One transaction of a PREPARE, as one participant sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareEntry {
    pub id: TransferId,
    pub operation: Operation,
}

impl PrepareEntry {
    /// The participant's request for this entry of a PREPARE from `coordinator`.
    pub fn request(&self, coordinator: NodeId) -> PrepareRequest {
        PrepareRequest {
            id: self.id,
            coordinator,
            operations: vec![self.operation],
        }
    }
}

/// A decision as a participant hears it: a commit carries the timestamp every participant
/// applies it at (0 with an abort).
pub type Verdict = (TransferId, Outcome, Timestamp);

/// What the driver must do. Effects come out of [`Coordinator::take_ready`] in the order they
/// must be carried out; each one whose result matters names the event that reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Read what the tables know of these ids; report each with [`Coordinator::looked_up`].
    LookUp { ids: Vec<TransferId> },
    /// Run this same-shard transfer in one phase; report with [`Coordinator::local_done`].
    RunLocal { id: TransferId, transfer: Transfer },
    /// Send a PREPARE (or, for this node, prepare in the engine); report the votes, in any
    /// order, with [`Coordinator::votes`].
    Prepare {
        batch: BatchId,
        participant: NodeId,
        entries: Vec<PrepareEntry>,
    },
    /// Log the decisions in one group commit and apply `local` (this shard's own part) in the
    /// same one, its commits at `commit_ts` (the decisions' own); report with
    /// [`Coordinator::decisions_logged`] once durable and applied.
    LogDecisions {
        log: LogId,
        decisions: Vec<CoordinatorDecision>,
        local: Vec<(TransferId, Outcome)>,
        commit_ts: Timestamp,
    },
    /// Release an answer to a client (only ever after the record behind it is durable).
    Answer {
        client: ClientToken,
        id: TransferId,
        answer: Answer,
    },
    /// Release an inquiry's answer: the decided ones among its ids. Those left out are asked
    /// again.
    AnswerInquiry {
        inquiry: InquiryToken,
        decisions: Vec<Verdict>,
    },
    /// Send logged decisions to a participant; report the acknowledged ids with
    /// [`Coordinator::delivered`] (none when the participant did not answer).
    SendDecisions {
        delivery: DeliveryId,
        participant: NodeId,
        decisions: Vec<Verdict>,
    },
    /// Log that these decisions are acknowledged by every participant. Lazily: no event reports
    /// it, and losing it only means resending the decisions after a restart.
    LogEnded { ids: Vec<TransferId> },
}

/// The coordinator's bounds and timings.
#[derive(Debug, Clone)]
pub struct CoordinatorLimits {
    /// Transfers between their request and their decision (and ids being looked up for an
    /// inquiry); one more request is answered `Overloaded`.
    pub in_flight_transfers_max: usize,
    /// Transactions in one batch (and so in one PREPARE).
    pub batch_transfers_max: usize,
    /// Batches between PREPARE and logged decision at once. Two let a batch form and start
    /// while the previous one waits for its group commits; more make every batch smaller.
    /// Measured (256 clients, docs/benchmarks.md): 1 slot 9,601/s, 2 slots 9,861/s, 4 slots
    /// 8,508/s, 8 slots 7,764/s.
    pub batches_in_flight_max: usize,
    /// How long remote votes are awaited; a participant silent past it may hold a PREPARE, and
    /// the transfer aborts with `ParticipantUnavailable`.
    pub vote_timeout: Duration,
    /// Decision batches sent and not yet answered, over all participants.
    pub deliveries_in_flight_max: usize,
    /// First resend of an unacknowledged decision; doubles up to the maximum.
    pub resend_interval_min: Duration,
    pub resend_interval_max: Duration,
    /// Logged decisions one participant has not acknowledged; at the bound, new transfers that
    /// need that participant are refused (`ParticipantBacklog`) rather than growing the map
    /// while it is down.
    pub unended_per_participant_max: usize,
    /// Ids in one `LookUp`, `SendDecisions` or `LogEnded`.
    pub ids_per_effect_max: usize,
}

impl Default for CoordinatorLimits {
    fn default() -> Self {
        Self {
            in_flight_transfers_max: 32 * 1024,
            batch_transfers_max: 4096,
            batches_in_flight_max: 2,
            vote_timeout: Duration::from_secs(5),
            deliveries_in_flight_max: 16,
            resend_interval_min: Duration::from_millis(500),
            resend_interval_max: Duration::from_secs(5),
            unended_per_participant_max: 64 * 1024,
            ids_per_effect_max: 4096,
        }
    }
}

/// What the coordinator holds of one id in flight.
#[derive(Debug)]
enum Content {
    /// A transfer request.
    Transfer(TransferRequest),
    /// Only an inquiry asked about the id; its content is not known here.
    Inquired,
    /// A presumed abort being logged: any retry of the id joins it, whatever its content.
    PresumedAbort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    LookingUp,
    Queued,
    /// A same-shard transfer running in the engine.
    Local,
    Preparing(BatchId),
    Deciding(LogId),
}

#[derive(Debug)]
struct Entry {
    content: Content,
    phase: Phase,
    waiters: Vec<ClientToken>,
    /// Inquiries to answer once this id's decision is durable.
    inquiries: Vec<InquiryToken>,
    /// An inquiry found the transfer before its decision: the decision will be abort.
    force_abort: bool,
}

/// A remote participant's vote as far as the coordinator knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteVote {
    Yes,
    No(AbortReason),
    /// No answer: the participant may hold a PREPARE.
    Unknown,
}

#[derive(Debug)]
struct Batch {
    ids: Vec<TransferId>,
    local_votes: HashMap<TransferId, Vote>,
    remote_votes: HashMap<TransferId, RemoteVote>,
    /// The latest clock reading among the votes that arrived: the batch's commits get a later
    /// timestamp, after every participant's locks were taken (`engine::clock`).
    latest_clock: Timestamp,
    /// Participants whose votes have not arrived.
    awaiting: HashSet<NodeId>,
    deadline: Time,
}

#[derive(Debug)]
struct PendingLog {
    batch: Option<BatchId>,
    outcomes: Vec<(TransferId, Outcome)>,
    commit_ts: Timestamp,
    /// The decisions whose participants must still hear them.
    to_deliver: Vec<CoordinatorDecision>,
}

#[derive(Debug)]
struct Unended {
    outcome: Outcome,
    commit_ts: Timestamp,
    /// Participants that have not acknowledged.
    pending: Vec<NodeId>,
    next_send: Time,
    interval: Duration,
}

#[derive(Debug)]
struct PendingInquiry {
    /// Ids of the inquiry not settled yet (answered or left out).
    waiting: usize,
    decisions: Vec<Verdict>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    me: NodeId,
    limits: CoordinatorLimits,
    in_flight: HashMap<TransferId, Entry>,
    queue: VecDeque<TransferId>,
    to_look_up: Vec<TransferId>,
    batches: BTreeMap<BatchId, Batch>,
    logs: HashMap<LogId, PendingLog>,
    /// Presumed aborts waiting to be logged (one group commit for all of them).
    to_presume: Vec<TransferId>,
    unended: BTreeMap<TransferId, Unended>,
    unended_per_participant: HashMap<NodeId, usize>,
    deliveries: HashMap<DeliveryId, NodeId>,
    to_end: Vec<TransferId>,
    inquiries: HashMap<InquiryToken, PendingInquiry>,
    ready: Vec<Effect>,
    next_batch: u64,
    next_log: u64,
    next_delivery: u64,
}

fn decided_answer(decision: &CoordinatorDecision, transfer: Transfer) -> Answer {
    // A presumed abort does not know the transfer's content: any retry gets the abort.
    if decision.transfer.is_none_or(|decided| decided == transfer) {
        Ok(decision.outcome)
    } else {
        Err(Refusal::DuplicateWithDifferentContent)
    }
}

fn recorded_answer(record: &TransferRecord, transfer: Transfer) -> Answer {
    if record.transfer == Some(transfer) {
        Ok(record.outcome)
    } else {
        Err(Refusal::DuplicateWithDifferentContent)
    }
}

impl Coordinator {
    /// A coordinator that resends `unended` (the decisions logged but not acknowledged by every
    /// participant, read from the tables at start-up) at once.
    pub fn new(
        me: NodeId,
        limits: CoordinatorLimits,
        unended: Vec<CoordinatorDecision>,
        now: Time,
    ) -> Coordinator {
        let mut coordinator = Coordinator {
            me,
            limits,
            in_flight: HashMap::new(),
            queue: VecDeque::new(),
            to_look_up: Vec::new(),
            batches: BTreeMap::new(),
            logs: HashMap::new(),
            to_presume: Vec::new(),
            unended: BTreeMap::new(),
            unended_per_participant: HashMap::new(),
            deliveries: HashMap::new(),
            to_end: Vec::new(),
            inquiries: HashMap::new(),
            ready: Vec::new(),
            next_batch: 0,
            next_log: 0,
            next_delivery: 0,
        };
        for decision in unended {
            coordinator.add_unended(&decision, now);
        }
        coordinator
    }

    pub fn node(&self) -> NodeId {
        self.me
    }

    /// Decisions some participant has not acknowledged.
    pub fn unended_count(&self) -> usize {
        self.unended.len()
    }

    /// Whether `id` is between its request and its durable decision here.
    pub fn is_in_flight(&self, id: TransferId) -> bool {
        self.in_flight
            .get(&id)
            .is_some_and(|entry| matches!(entry.content, Content::Transfer(_)))
    }

    /// Transfers (and inquired ids) in flight.
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// A transfer request. Answered at once when it is refused; otherwise once decided.
    pub fn transfer(&mut self, client: ClientToken, request: TransferRequest) {
        let id = request.id;
        assert!(
            request.transfer.amount > 0 && request.transfer.debit != request.transfer.credit,
            "the driver validates transfers before the core sees them"
        );
        if let Some(entry) = self.in_flight.get_mut(&id) {
            match &entry.content {
                Content::Transfer(existing) if existing.transfer != request.transfer => {
                    self.answer(client, id, Err(Refusal::DuplicateWithDifferentContent));
                    return;
                }
                Content::Transfer(_) | Content::PresumedAbort => {}
                Content::Inquired => {
                    assert_eq!(entry.phase, Phase::LookingUp, "an inquired id is looked up");
                    entry.content = Content::Transfer(request);
                }
            }
            entry.waiters.push(client);
            return;
        }
        if self.in_flight.len() >= self.limits.in_flight_transfers_max {
            self.answer(client, id, Err(Refusal::Overloaded));
            return;
        }
        if request.credit_node != self.me
            && self.unended_for(request.credit_node) >= self.limits.unended_per_participant_max
        {
            self.answer(
                client,
                id,
                Err(Refusal::ParticipantBacklog(request.credit_node)),
            );
            return;
        }
        self.in_flight.insert(
            id,
            Entry {
                content: Content::Transfer(request),
                phase: Phase::LookingUp,
                waiters: vec![client],
                inquiries: Vec::new(),
                force_abort: false,
            },
        );
        self.to_look_up.push(id);
    }

    /// What the tables know of `id`, as asked by [`Effect::LookUp`].
    pub fn looked_up(&mut self, id: TransferId, known: Result<Known, Arc<StorageError>>) {
        let entry = self
            .in_flight
            .get_mut(&id)
            .expect("looked up ids are in flight");
        assert_eq!(
            entry.phase,
            Phase::LookingUp,
            "transfer {id} was not being looked up"
        );
        let known = match known {
            Ok(known) => known,
            Err(error) => {
                self.settle(id, |_| Err(Refusal::Storage(error.clone())), None);
                return;
            }
        };
        let transfer = match &entry.content {
            Content::Transfer(request) => Some(*request),
            Content::Inquired => None,
            Content::PresumedAbort => unreachable!("presumed aborts are not looked up"),
        };
        match (known, transfer) {
            (Known::Decided(decision), _) => {
                let decided = (decision.outcome, decision.commit_ts);
                self.settle(
                    id,
                    |transfer| decided_answer(&decision, transfer),
                    Some(decided),
                );
            }
            (Known::Recorded(record), Some(request)) => {
                // A same-shard transfer used the id. An inquiry that joined asks about some
                // other transaction with this id, which was never decided commit here.
                let answer = recorded_answer(&record, request.transfer);
                self.settle(
                    id,
                    |_| answer.clone(),
                    Some((Outcome::Aborted(AbortReason::PresumedAbort), 0)),
                );
            }
            (Known::Recorded(_), None) => {
                // Nothing to log: the id is taken by a recorded outcome, so no retry can ever
                // start it as a cross-shard transfer.
                self.settle(
                    id,
                    |_| unreachable!("no client waits on an inquired id"),
                    Some((Outcome::Aborted(AbortReason::PresumedAbort), 0)),
                );
            }
            (Known::Nothing, None) => {
                entry.content = Content::PresumedAbort;
                self.to_presume.push(id);
            }
            (Known::Nothing, Some(request)) => {
                // Inquiries that joined during the look-up ask about an earlier attempt, which
                // may be prepared somewhere: this run must abort, and its logged decision
                // answers them on their next inquiry.
                if !entry.inquiries.is_empty() {
                    entry.force_abort = true;
                    let inquiries = std::mem::take(&mut entry.inquiries);
                    for inquiry in inquiries {
                        self.inquiry_settled(inquiry, None);
                    }
                }
                let entry = self.in_flight.get_mut(&id).expect("present");
                if request.credit_node == self.me {
                    entry.phase = Phase::Local;
                    self.ready.push(Effect::RunLocal {
                        id,
                        transfer: request.transfer,
                    });
                } else {
                    entry.phase = Phase::Queued;
                    self.queue.push_back(id);
                }
            }
        }
    }

    /// The answer of a one-phase transfer run by [`Effect::RunLocal`].
    pub fn local_done(&mut self, id: TransferId, answer: Answer) {
        let entry = self
            .in_flight
            .get(&id)
            .expect("local transfers are in flight");
        assert_eq!(
            entry.phase,
            Phase::Local,
            "transfer {id} was not running locally"
        );
        self.settle(id, |_| answer.clone(), None);
    }

    /// A participant's votes on a batch (or why they did not come), with its clock read after
    /// it took the batch's locks (`engine::Engine::clock_now`). Votes for a batch already
    /// decided, from a participant that already voted, or on transfers the participant was not
    /// asked about, are ignored.
    pub fn votes(
        &mut self,
        batch_id: BatchId,
        participant: NodeId,
        votes: Result<(Vec<(TransferId, Vote)>, Timestamp), VoteFailure>,
    ) {
        let me = self.me;
        let Some(batch) = self.batches.get_mut(&batch_id) else {
            return;
        };
        if !batch.awaiting.remove(&participant) {
            return;
        }
        match votes {
            Err(VoteFailure::Storage(error)) => {
                assert_eq!(participant, me, "only this node's engine fails a prepare");
                self.fail_batch(batch_id, error);
                return;
            }
            Err(VoteFailure::Unreachable { surely_not_applied }) => {
                assert_ne!(participant, me, "this node's engine always answers");
                let vote = if surely_not_applied {
                    RemoteVote::No(AbortReason::ParticipantUnavailable)
                } else {
                    RemoteVote::Unknown
                };
                for (id, remote) in batch.remote_votes.iter_mut() {
                    if self.in_flight[id].credit_node() == Some(participant) {
                        *remote = vote;
                    }
                }
            }
            Ok((votes, clock)) => {
                batch.latest_clock = batch.latest_clock.max(clock);
                for (id, vote) in votes {
                    if participant == me {
                        if batch.ids.contains(&id) {
                            batch.local_votes.insert(id, vote);
                        }
                    } else if let Some(remote) = batch.remote_votes.get_mut(&id)
                        && self.in_flight[&id].credit_node() == Some(participant)
                    {
                        *remote = match vote {
                            Vote::Yes => RemoteVote::Yes,
                            Vote::No(reason) => RemoteVote::No(reason),
                        };
                    }
                }
            }
        }
        if batch.awaiting.is_empty() {
            self.decide(batch_id);
        }
    }

    /// Logged decisions (from [`Effect::LogDecisions`]) are durable and this shard's part is
    /// applied, or logging failed.
    pub fn decisions_logged(
        &mut self,
        log: LogId,
        now: Time,
        result: Result<(), Arc<StorageError>>,
    ) {
        let pending = self.logs.remove(&log).expect("logs are reported once");
        if let Some(batch) = pending.batch {
            self.batches.remove(&batch).expect("a batch is deciding");
        }
        match result {
            Ok(()) => {
                for (id, outcome) in &pending.outcomes {
                    assert_eq!(
                        self.in_flight[id].phase,
                        Phase::Deciding(log),
                        "transfer {id} was not being decided"
                    );
                    let commit_ts = commit_ts_of(*outcome, pending.commit_ts);
                    self.settle(*id, |_| Ok(*outcome), Some((*outcome, commit_ts)));
                }
                for decision in &pending.to_deliver {
                    self.add_unended(decision, now);
                }
            }
            Err(error) => {
                for (id, _) in &pending.outcomes {
                    self.settle(*id, |_| Err(Refusal::Storage(error.clone())), None);
                }
            }
        }
    }

    /// A participant's answer to [`Effect::SendDecisions`]: the ids it applied (or had
    /// applied before). An empty list when it did not answer; those are resent later.
    pub fn delivered(&mut self, delivery: DeliveryId, acknowledged: Vec<TransferId>) {
        let participant = self
            .deliveries
            .remove(&delivery)
            .expect("deliveries are reported once");
        for id in acknowledged {
            let Some(unended) = self.unended.get_mut(&id) else {
                continue;
            };
            let before = unended.pending.len();
            unended.pending.retain(|pending| *pending != participant);
            if unended.pending.len() < before {
                let count = self
                    .unended_per_participant
                    .get_mut(&participant)
                    .expect("counted when added");
                *count -= 1;
            }
            if unended.pending.is_empty() {
                self.unended.remove(&id);
                self.to_end.push(id);
            }
        }
    }

    /// A participant asks about transactions it holds prepared.
    pub fn inquiry(&mut self, inquiry: InquiryToken, mut ids: Vec<TransferId>, asker: Asker) {
        ids.sort_unstable();
        ids.dedup();
        assert!(
            !self.inquiries.contains_key(&inquiry),
            "inquiry tokens are unique"
        );
        let mut waiting = 0;
        for id in ids {
            if let Some(entry) = self.in_flight.get_mut(&id) {
                match entry.phase {
                    Phase::LookingUp | Phase::Deciding(_) => {
                        entry.inquiries.push(inquiry);
                        waiting += 1;
                    }
                    // Still collecting votes (or not even asked yet): for another node, the
                    // decision will be abort, and answers its next inquiry.
                    Phase::Queued | Phase::Preparing(_) => {
                        if asker == Asker::OtherNode {
                            entry.force_abort = true;
                        }
                    }
                    Phase::Local => {}
                }
                continue;
            }
            if self.in_flight.len() >= self.limits.in_flight_transfers_max {
                continue;
            }
            self.in_flight.insert(
                id,
                Entry {
                    content: Content::Inquired,
                    phase: Phase::LookingUp,
                    waiters: Vec::new(),
                    inquiries: vec![inquiry],
                    force_abort: false,
                },
            );
            self.to_look_up.push(id);
            waiting += 1;
        }
        self.inquiries.insert(
            inquiry,
            PendingInquiry {
                waiting,
                decisions: Vec::new(),
            },
        );
        if waiting == 0 {
            self.inquiry_settled(inquiry, None);
        }
    }

    /// Time passes: remote votes past their deadline count as unknown.
    pub fn tick(&mut self, now: Time) {
        let late: Vec<BatchId> = self
            .batches
            .iter()
            .filter(|(_, batch)| {
                batch.deadline <= now && batch.awaiting.iter().any(|node| *node != self.me)
            })
            .map(|(id, _)| *id)
            .collect();
        for batch_id in late {
            let me = self.me;
            let batch = self.batches.get_mut(&batch_id).expect("listed");
            let silent: Vec<NodeId> = batch
                .awaiting
                .iter()
                .copied()
                .filter(|node| *node != me)
                .collect();
            for participant in silent {
                self.votes(
                    batch_id,
                    participant,
                    Err(VoteFailure::Unreachable {
                        surely_not_applied: false,
                    }),
                );
            }
        }
    }

    /// The effects to carry out now, in order. Forms batches while slots are free and sends
    /// the decisions whose (re)send time has come.
    pub fn take_ready(&mut self, now: Time) -> Vec<Effect> {
        let chunk = self.limits.ids_per_effect_max;
        for ids in std::mem::take(&mut self.to_look_up).chunks(chunk) {
            self.ready.push(Effect::LookUp { ids: ids.to_vec() });
        }
        if !self.to_presume.is_empty() {
            self.log_presumed_aborts();
        }
        while self.batches.len() < self.limits.batches_in_flight_max && !self.queue.is_empty() {
            self.start_batch(now);
        }
        self.send_due_decisions(now);
        for ids in std::mem::take(&mut self.to_end).chunks(chunk) {
            self.ready.push(Effect::LogEnded { ids: ids.to_vec() });
        }
        std::mem::take(&mut self.ready)
    }

    /// The earliest time at which [`Coordinator::tick`] or [`Coordinator::take_ready`] has
    /// something to do without any other event, if any: the driver's next timer.
    pub fn next_deadline(&self) -> Option<Time> {
        let votes = self
            .batches
            .values()
            .filter(|batch| batch.awaiting.iter().any(|node| *node != self.me))
            .map(|batch| batch.deadline)
            .min();
        let resend = if self.deliveries.len() < self.limits.deliveries_in_flight_max {
            self.unended.values().map(|unended| unended.next_send).min()
        } else {
            None
        };
        votes.into_iter().chain(resend).min()
    }

    fn answer(&mut self, client: ClientToken, id: TransferId, answer: Answer) {
        self.ready.push(Effect::Answer { client, id, answer });
    }

    fn unended_for(&self, participant: NodeId) -> usize {
        self.unended_per_participant
            .get(&participant)
            .copied()
            .unwrap_or(0)
    }

    /// Removes `id` from the in-flight map: answers its clients (each with `answer` of the
    /// request's content) and its inquiries (with `decided`, or leaves it out of them).
    fn settle(
        &mut self,
        id: TransferId,
        answer: impl Fn(Transfer) -> Answer,
        decided: Option<(Outcome, Timestamp)>,
    ) {
        let entry = self
            .in_flight
            .remove(&id)
            .expect("settled ids are in flight");
        if !entry.waiters.is_empty() {
            let reply = match &entry.content {
                Content::Transfer(request) => answer(request.transfer),
                Content::PresumedAbort => Ok(decided.expect("a presumed abort is decided").0),
                Content::Inquired => unreachable!("a client's request gives the content"),
            };
            for client in entry.waiters {
                self.answer(client, id, reply.clone());
            }
        }
        for inquiry in entry.inquiries {
            self.inquiry_settled(inquiry, decided.map(|(outcome, at)| (id, outcome, at)));
        }
    }

    fn inquiry_settled(&mut self, inquiry: InquiryToken, decision: Option<Verdict>) {
        let pending = self
            .inquiries
            .get_mut(&inquiry)
            .expect("pending inquiries are known");
        pending.decisions.extend(decision);
        // The token is registered with `waiting` already counted; an inquiry with nothing to
        // wait for is settled once, with `waiting` 0.
        if pending.waiting > 0 {
            pending.waiting -= 1;
        }
        if pending.waiting == 0 {
            let pending = self.inquiries.remove(&inquiry).expect("present");
            self.ready.push(Effect::AnswerInquiry {
                inquiry,
                decisions: pending.decisions,
            });
        }
    }

    fn add_unended(&mut self, decision: &CoordinatorDecision, now: Time) {
        assert!(
            !decision.participants.contains(&self.me),
            "this shard's part of a decision is applied with its record"
        );
        if decision.participants.is_empty() {
            return;
        }
        if let Some(existing) = self.unended.get(&decision.id) {
            assert_eq!(
                existing.outcome, decision.outcome,
                "a decision is never changed (transfer {})",
                decision.id
            );
            return;
        }
        for participant in &decision.participants {
            *self
                .unended_per_participant
                .entry(*participant)
                .or_insert(0) += 1;
        }
        self.unended.insert(
            decision.id,
            Unended {
                outcome: decision.outcome,
                commit_ts: decision.commit_ts,
                pending: decision.participants.clone(),
                next_send: now,
                interval: self.limits.resend_interval_min,
            },
        );
    }

    fn log_presumed_aborts(&mut self) {
        let log = LogId(self.next_log);
        self.next_log += 1;
        let outcome = Outcome::Aborted(AbortReason::PresumedAbort);
        let ids = std::mem::take(&mut self.to_presume);
        let mut decisions = Vec::with_capacity(ids.len());
        for id in &ids {
            let entry = self
                .in_flight
                .get_mut(id)
                .expect("presumed ids are in flight");
            entry.phase = Phase::Deciding(log);
            decisions.push(CoordinatorDecision {
                id: *id,
                transfer: None,
                outcome,
                participants: Vec::new(),
                ended: true,
                commit_ts: 0,
            });
        }
        self.logs.insert(
            log,
            PendingLog {
                batch: None,
                outcomes: ids.iter().map(|id| (*id, outcome)).collect(),
                commit_ts: 0,
                to_deliver: Vec::new(),
            },
        );
        self.ready.push(Effect::LogDecisions {
            log,
            decisions,
            local: Vec::new(),
            commit_ts: 0,
        });
    }

    fn start_batch(&mut self, now: Time) {
        let batch_id = BatchId(self.next_batch);
        self.next_batch += 1;
        let count = self.queue.len().min(self.limits.batch_transfers_max);
        let ids: Vec<TransferId> = self.queue.drain(..count).collect();
        let mut local = Vec::with_capacity(ids.len());
        let mut remote: BTreeMap<NodeId, Vec<PrepareEntry>> = BTreeMap::new();
        let mut remote_votes = HashMap::with_capacity(ids.len());
        for id in &ids {
            let entry = self
                .in_flight
                .get_mut(id)
                .expect("queued ids are in flight");
            assert_eq!(entry.phase, Phase::Queued);
            entry.phase = Phase::Preparing(batch_id);
            let Content::Transfer(request) = &entry.content else {
                unreachable!("only transfers are queued")
            };
            let Transfer {
                debit,
                credit,
                amount,
            } = request.transfer;
            local.push(PrepareEntry {
                id: *id,
                operation: Operation {
                    account: debit,
                    kind: OperationKind::Debit,
                    amount,
                    counterparty: credit,
                },
            });
            remote
                .entry(request.credit_node)
                .or_default()
                .push(PrepareEntry {
                    id: *id,
                    operation: Operation {
                        account: credit,
                        kind: OperationKind::Credit,
                        amount,
                        counterparty: debit,
                    },
                });
            remote_votes.insert(*id, RemoteVote::Unknown);
        }
        let mut awaiting: HashSet<NodeId> = remote.keys().copied().collect();
        awaiting.insert(self.me);
        self.batches.insert(
            batch_id,
            Batch {
                ids,
                local_votes: HashMap::new(),
                remote_votes,
                latest_clock: 0,
                awaiting,
                deadline: now + self.limits.vote_timeout,
            },
        );
        self.ready.push(Effect::Prepare {
            batch: batch_id,
            participant: self.me,
            entries: local,
        });
        for (participant, entries) in remote {
            self.ready.push(Effect::Prepare {
                batch: batch_id,
                participant,
                entries,
            });
        }
    }

    fn fail_batch(&mut self, batch_id: BatchId, error: Arc<StorageError>) {
        let batch = self
            .batches
            .remove(&batch_id)
            .expect("failing a known batch");
        for id in batch.ids {
            self.settle(id, |_| Err(Refusal::Storage(error.clone())), None);
        }
    }

    /// Every vote of the batch is in (or given up on): decide each transfer and log the
    /// decisions.
    fn decide(&mut self, batch_id: BatchId) {
        let log = LogId(self.next_log);
        self.next_log += 1;
        let batch = self.batches.get(&batch_id).expect("deciding a known batch");
        // Later than every participant's clock once it held the batch's locks, so a read at any
        // timestamp a participant had reached by then never sees these commits.
        let commit_ts = batch.latest_clock + 1;
        let mut decisions = Vec::with_capacity(batch.ids.len());
        let mut local = Vec::new();
        let mut outcomes = Vec::with_capacity(batch.ids.len());
        for id in &batch.ids {
            let entry = self
                .in_flight
                .get_mut(id)
                .expect("batched ids are in flight");
            assert_eq!(entry.phase, Phase::Preparing(batch_id));
            let Content::Transfer(request) = &entry.content else {
                unreachable!("only transfers are batched")
            };
            // This node's engine always answers, with a vote for every transaction it was sent.
            let local_vote = *batch
                .local_votes
                .get(id)
                .unwrap_or(&Vote::No(AbortReason::InvalidRequest));
            let remote_vote = batch.remote_votes[id];
            let refusal = match (local_vote, remote_vote) {
                (Vote::No(reason), _) => Some(reason),
                (_, RemoteVote::No(reason)) => Some(reason),
                (_, RemoteVote::Unknown) => Some(AbortReason::ParticipantUnavailable),
                (Vote::Yes, RemoteVote::Yes) if entry.force_abort => Some(AbortReason::Timeout),
                (Vote::Yes, RemoteVote::Yes) => None,
            };
            let outcome = match refusal {
                None => Outcome::Committed,
                Some(reason) => Outcome::Aborted(reason),
            };
            if outcome == Outcome::Committed {
                assert!(
                    local_vote == Vote::Yes && remote_vote == RemoteVote::Yes && !entry.force_abort,
                    "commit only on a durable yes from every participant"
                );
            }
            // Who must hear the decision: every participant that may hold a PREPARE.
            let mut participants = Vec::with_capacity(1);
            if matches!(remote_vote, RemoteVote::Yes | RemoteVote::Unknown) {
                participants.push(request.credit_node);
            }
            if local_vote == Vote::Yes {
                local.push((*id, outcome));
            }
            entry.phase = Phase::Deciding(log);
            outcomes.push((*id, outcome));
            decisions.push(CoordinatorDecision {
                id: *id,
                transfer: Some(request.transfer),
                outcome,
                participants,
                ended: false,
                commit_ts: commit_ts_of(outcome, commit_ts),
            });
        }
        let to_deliver = decisions
            .iter()
            .filter(|decision| !decision.participants.is_empty())
            .cloned()
            .collect();
        self.logs.insert(
            log,
            PendingLog {
                batch: Some(batch_id),
                outcomes,
                commit_ts,
                to_deliver,
            },
        );
        // The batch keeps its slot until its decisions are durable.
        self.batches.get_mut(&batch_id).expect("present").deadline = Time(Duration::MAX);
        self.ready.push(Effect::LogDecisions {
            log,
            decisions,
            local,
            commit_ts,
        });
    }

    fn send_due_decisions(&mut self, now: Time) {
        let mut due: BTreeMap<NodeId, Vec<Verdict>> = BTreeMap::new();
        for (id, unended) in &self.unended {
            if unended.next_send <= now {
                for participant in &unended.pending {
                    due.entry(*participant).or_default().push((
                        *id,
                        unended.outcome,
                        unended.commit_ts,
                    ));
                }
            }
        }
        for (participant, decisions) in due {
            for chunk in decisions.chunks(self.limits.ids_per_effect_max) {
                if self.deliveries.len() >= self.limits.deliveries_in_flight_max {
                    // Past the bound the rest stay due, and go when a delivery ends.
                    return;
                }
                for (id, _, _) in chunk {
                    let unended = self.unended.get_mut(id).expect("listed above");
                    unended.next_send = now + unended.interval;
                    unended.interval = (unended.interval * 2).min(self.limits.resend_interval_max);
                }
                let delivery = DeliveryId(self.next_delivery);
                self.next_delivery += 1;
                self.deliveries.insert(delivery, participant);
                self.ready.push(Effect::SendDecisions {
                    delivery,
                    participant,
                    decisions: chunk.to_vec(),
                });
            }
        }
    }
}

/// The timestamp a decision carries: its batch's for a commit, 0 for an abort.
fn commit_ts_of(outcome: Outcome, commit_ts: Timestamp) -> Timestamp {
    match outcome {
        Outcome::Committed => commit_ts,
        Outcome::Aborted(_) => 0,
    }
}

impl Entry {
    fn credit_node(&self) -> Option<NodeId> {
        match &self.content {
            Content::Transfer(request) => Some(request.credit_node),
            Content::Inquired | Content::PresumedAbort => None,
        }
    }
}
