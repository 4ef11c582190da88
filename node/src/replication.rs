//! The replication driver: one task owns every replica group this node hosts (`replica::Group`)
//! and moves events between them and the world. It ticks them on a timer, steps the Raft messages
//! other nodes send (`RaftMessages` frames), proposes what their leaders' engines queued, appends
//! what each `Ready` asks to the node's one WAL, awaits the group commit without blocking (one
//! fdatasync covers every group's appends), sends messages (a leader's at once, the others' once
//! their appends are durable), and opens or closes each shard's service as leadership changes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engine::model::NodeId;
use engine::tables::RocksTables;
use engine::wal::{FileStorage, Lsn, Wal};
use net::{Message, RaftMessages, ShardRaftMessage};
use replica::{Group, RaftMessage, wire};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::router::Router;
use crate::shard::ShardServer;

/// The period of a Raft tick. A follower stands for election after 8 to 16 ticks without its
/// leader's word (0.4 to 0.8 s); heartbeats go every 2 (100 ms).
pub(crate) const TICK: Duration = Duration::from_millis(50);
/// How often a leader looks whether its group's preferred leader could take over.
const REBALANCE_TICKS: u64 = 20;
/// After handing a group to its preferred leader, the ticks before trying that group again (a
/// transfer that did not take is given up after an election timeout).
const REBALANCE_BACKOFF_TICKS: u64 = 200;
/// Reads waiting for their leadership confirmation, over all groups; more are refused.
const CONFIRMATIONS_WAITING_MAX: usize = 65_536;
/// A confirmation not answered within this many ticks is given up (the reader has given up
/// before: see `node::READ_CONFIRM_TIMEOUT`).
const CONFIRMATION_TICKS_MAX: u64 = 60;
/// Incoming Raft frames waiting for the driver; more are dropped (Raft resends).
const INBOX_MAX: usize = 4096;
/// How long the replicas of a new group other than its preferred leader leave the first election
/// to that replica (`Driver::hold_first_elections`).
const FIRST_ELECTION_GRACE: Duration = Duration::from_secs(3);
/// A driver round slower than this is logged: every group on the node waited for it.
const SLOW_ROUND: Duration = Duration::from_millis(200);
/// A `RaftMessages` frame is cut before its body reaches this size (the frame limit is 1 MiB).
const FRAME_BODY_TARGET_BYTES: usize = 768 * 1024;

pub(crate) type NodeGroup = Group<RocksTables, FileStorage>;

/// What the driver is told.
pub(crate) enum Input {
    /// Raft messages from another node.
    Messages(Vec<ShardRaftMessage>),
    /// The WAL is durable up to here, or failed.
    Durable(Result<Lsn, engine::wal::WalError>),
    /// Hand every leadership to another replica (before the node stops); answered once done or
    /// given up.
    HandOver(oneshot::Sender<()>),
    /// Confirm that this node's replica of the shard still leads, before a read: answered true
    /// once a majority of the group confirms it, false when the replica does not lead (or stops).
    ConfirmLeadership(u32, oneshot::Sender<bool>),
    /// Report every group's status (for `tally status`).
    Status(oneshot::Sender<Vec<net::GroupStatus>>),
}

/// How other parts of the node reach the driver.
#[derive(Clone)]
pub(crate) struct Replication {
    inputs: mpsc::Sender<Input>,
    /// Frames of Raft messages dropped because the driver's inbox was full.
    dropped_frames: Arc<AtomicU64>,
}

impl Replication {
    /// Raft messages from another node; dropped when the driver is behind (Raft resends).
    pub fn deliver(&self, messages: Vec<ShardRaftMessage>) {
        if self.inputs.try_send(Input::Messages(messages)).is_err() {
            let dropped = self.dropped_frames.fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = dropped + 1,
                    "raft messages dropped: the replication driver is behind"
                );
            }
        }
    }

    /// Whether this node's replica of `shard` still leads, confirmed by a majority of its group
    /// after this call (see `Group::confirm_leadership`); false when it does not lead, or when
    /// too many reads wait. The caller bounds the wait.
    pub async fn confirm_leadership(&self, shard: u32) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .inputs
            .send(Input::ConfirmLeadership(shard, reply))
            .await
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Every group's status, or `None` when the driver does not answer within `timeout`.
    pub async fn status(&self, timeout: Duration) -> Option<Vec<net::GroupStatus>> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.inputs.send(Input::Status(reply)).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(timeout, asked).await.ok().flatten()
    }

    /// Hands this node's leaderships over, waiting at most `timeout`.
    pub async fn hand_over(&self, timeout: Duration) {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::HandOver(reply)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, answer).await;
        }
    }
}

/// See the module documentation.
pub(crate) struct Driver {
    me: NodeId,
    metrics: Arc<crate::metrics::Metrics>,
    groups: BTreeMap<u32, NodeGroup>,
    shards: BTreeMap<u32, Arc<ShardServer>>,
    wal: Arc<Wal<FileStorage>>,
    router: Arc<Router>,
    inputs: mpsc::Receiver<Input>,
    input_sender: mpsc::Sender<Input>,
    wake: Arc<Notify>,
    /// The WAL LSN the groups wait for, and the one a waiter task is already awaiting.
    wanted: Lsn,
    awaited: Lsn,
    hand_over: Option<oneshot::Sender<()>>,
    /// Groups stopped by a failure of their storage.
    failed: BTreeSet<u32>,
    /// Groups whose leader's connection was lost, with that leader (at most one per group).
    lost_leaders: HashMap<u32, NodeId>,
    /// New groups whose replica here stands for no election before `held_until`, unless a
    /// leader is known by then.
    held: BTreeSet<u32>,
    held_until: Instant,
    /// Ticks since the driver started, and the tick before which each group is not handed to
    /// its preferred leader again.
    ticks: u64,
    rebalance_after: BTreeMap<u32, u64>,
    /// Reads waiting for their group's next leadership confirmation, and confirmations asked:
    /// by context, the group, the tick asked and the reads waiting for it.
    reads_waiting: BTreeMap<u32, Vec<oneshot::Sender<bool>>>,
    confirmations: BTreeMap<u64, Confirmation>,
    waiting_count: usize,
    next_context: u64,
}

/// A leadership confirmation asked of one group.
struct Confirmation {
    shard: u32,
    asked_at: u64,
    readers: Vec<oneshot::Sender<bool>>,
}

impl Driver {
    /// The driver and the handle to reach it. `wake` is the `Notify` the groups' logs were given.
    pub fn new(
        me: NodeId,
        groups: BTreeMap<u32, NodeGroup>,
        shards: BTreeMap<u32, Arc<ShardServer>>,
        wal: Arc<Wal<FileStorage>>,
        router: Arc<Router>,
        wake: Arc<Notify>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> (Self, Replication) {
        let (input_sender, inputs) = mpsc::channel(INBOX_MAX);
        (
            Self {
                me,
                metrics,
                groups,
                shards,
                wal,
                router,
                inputs,
                input_sender: input_sender.clone(),
                wake,
                wanted: 0,
                awaited: 0,
                hand_over: None,
                failed: BTreeSet::new(),
                lost_leaders: HashMap::new(),
                held: BTreeSet::new(),
                held_until: Instant::now(),
                ticks: 0,
                rebalance_after: BTreeMap::new(),
                reads_waiting: BTreeMap::new(),
                confirmations: BTreeMap::new(),
                waiting_count: 0,
                next_context: 0,
            },
            Replication {
                inputs: input_sender,
                dropped_frames: Arc::new(AtomicU64::new(0)),
            },
        )
    }

    /// Before the node listens: drives the groups of a single replica until their engines are
    /// open (their logs replayed into the tables), so that a single-copy shard answers as soon as
    /// the node does. Groups of several replicas need their peers and open later.
    pub async fn open_single_replicas(&mut self) {
        loop {
            self.process();
            let waiting = self.groups.iter().any(|(shard, group)| {
                group.voter_count() == 1 && group.engine().is_none() && !self.failed.contains(shard)
            });
            if !waiting {
                return;
            }
            match tokio::time::timeout(TICK, self.inputs.recv()).await {
                Ok(Some(input)) => self.input(input),
                Ok(None) => return,
                Err(_) => {
                    for group in self.groups.values_mut() {
                        group.tick();
                    }
                }
            }
        }
    }

    /// Runs until the node stops (the task is aborted).
    pub async fn run(mut self) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.wake.clone();
        loop {
            tokio::select! {
                biased;
                input = self.inputs.recv() => {
                    let Some(input) = input else { return };
                    self.input(input);
                }
                () = wake.notified() => {}
                _ = ticks.tick() => {
                    self.notice_lost_leaders();
                    let holding = Instant::now() < self.held_until;
                    for (shard, group) in &mut self.groups {
                        if self.held.contains(shard) {
                            if holding && group.leader() == 0 {
                                continue;
                            }
                            self.held.remove(shard);
                        }
                        if !self.failed.contains(shard) {
                            group.tick();
                        }
                    }
                    self.check_hand_over();
                    self.ticks += 1;
                    if self.ticks % REBALANCE_TICKS == 0 {
                        self.rebalance();
                    }
                    self.expire_confirmations();
                }
            }
            let round = Instant::now();
            while let Ok(input) = self.inputs.try_recv() {
                self.input(input);
            }
            self.process();
            let took = round.elapsed();
            if took > SLOW_ROUND {
                tracing::warn!(
                    took_ms = took.as_millis() as u64,
                    "slow replication driver round"
                );
            }
        }
    }

    /// The first election of a new group is left to its preferred leader, which stands at once
    /// (leaders start spread over the nodes): the other replicas of `shards` here do not tick,
    /// so do not stand, for `FIRST_ELECTION_GRACE`, or until they know a leader; they vote all
    /// the same. Without this, whichever replica's timeout fired first after every node was up
    /// often won, and handing the group to its preferred leader later, under load, aborted the
    /// 2PC transactions its first leader coordinated.
    pub fn hold_first_elections(&mut self, shards: &[u32]) {
        self.held = shards.iter().copied().collect();
        self.held_until = Instant::now() + FIRST_ELECTION_GRACE;
    }

    /// A leader whose connection closed is likely dead: its followers elect another without
    /// waiting out an election timeout (`Group::leader_lost`, once per loss).
    fn notice_lost_leaders(&mut self) {
        let peers = self.router.peers();
        for (shard, group) in &mut self.groups {
            // While no leader is known, the loss noticed last stays noticed.
            let leader = NodeId::try_from(group.leader()).unwrap_or(0);
            if self.failed.contains(shard) || leader == 0 {
                continue;
            }
            if leader == self.me || !peers.connection_lost(leader) {
                self.lost_leaders.remove(shard);
            } else if self.lost_leaders.insert(*shard, leader) != Some(leader) {
                tracing::info!(
                    shard,
                    leader,
                    "the connection to the leader closed; electing without waiting for a timeout"
                );
                group.leader_lost(u64::from(leader));
            }
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Messages(messages) => {
                for message in messages {
                    if let Some(group) = self.groups.get_mut(&message.shard) {
                        group.step(wire::from_wire(message.message));
                    }
                }
            }
            Input::Durable(Ok(lsn)) => {
                self.persisted(lsn);
            }
            Input::Durable(Err(error)) => {
                let cause = io_cause(error);
                for (shard, group) in &mut self.groups {
                    self.failed.insert(*shard);
                    stop(group, &self.shards[shard], cause.clone());
                }
                let shards: Vec<u32> = self.groups.keys().copied().collect();
                for shard in shards {
                    self.fail_confirmations(shard);
                }
            }
            Input::HandOver(reply) => {
                self.hand_over = Some(reply);
                self.check_hand_over();
            }
            Input::ConfirmLeadership(shard, reply) => {
                // A group of one replica needs no confirmation: no other replica can lead. Its
                // reads go on after a storage failure too (the node refuses writes, not reads).
                if self
                    .groups
                    .get(&shard)
                    .is_some_and(|group| group.voter_count() == 1 && group.is_leader())
                {
                    let _ = reply.send(true);
                    return;
                }
                let leading = self
                    .groups
                    .get(&shard)
                    .is_some_and(|group| group.is_leader() && !self.failed.contains(&shard));
                if leading && self.waiting_count < CONFIRMATIONS_WAITING_MAX {
                    self.waiting_count += 1;
                    self.reads_waiting.entry(shard).or_default().push(reply);
                } else {
                    let _ = reply.send(false);
                }
            }
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn status(&self) -> Vec<net::GroupStatus> {
        self.groups
            .iter()
            .map(|(shard, group)| {
                let in_doubt = self.shards[shard]
                    .serving()
                    .map_or(0, |serving| serving.engine.in_doubt().len() as u64);
                let mut status = group.status(in_doubt);
                if self.failed.contains(shard) {
                    status.role = net::ReplicaRole::Failed;
                }
                status
            })
            .collect()
    }

    /// Asks each group this replica leads to elect another replica; answers the hand-over once
    /// none is led here any more.
    fn check_hand_over(&mut self) {
        if self.hand_over.is_none() {
            return;
        }
        let mut leading = false;
        for group in self.groups.values_mut() {
            if !group.is_leader() {
                continue;
            }
            leading = true;
            let status = group.raft_status();
            let best = status.progress.and_then(|progress| {
                progress
                    .iter()
                    .filter(|(id, _)| **id != status.id)
                    .max_by_key(|(_, p)| p.matched)
                    .map(|(id, _)| *id)
            });
            if let Some(to) = best {
                group.transfer_leader(to);
            }
        }
        if !leading && let Some(reply) = self.hand_over.take() {
            let _ = reply.send(());
        }
    }

    /// Hands each group this replica leads, but whose cluster file names another preferred
    /// leader, to that replica once it is up and holds the whole log, so that leaders spread
    /// over the nodes again after a failover (and when a new group's first election did not
    /// go to the replica meant for it). A group is tried again only after a backoff, so a
    /// preferred replica that cannot take over does not make its group change hands every second.
    fn rebalance(&mut self) {
        if self.hand_over.is_some() {
            return;
        }
        let config = self.router.config();
        for (shard, group) in &mut self.groups {
            if !group.is_leader() || self.failed.contains(shard) {
                continue;
            }
            let preferred = u64::from(config.preferred_leader(*shard));
            if preferred == u64::from(self.me)
                || self
                    .rebalance_after
                    .get(shard)
                    .is_some_and(|after| self.ticks < *after)
            {
                continue;
            }
            let ready = group.status(0).replicas.iter().any(|replica| {
                u64::from(replica.node_id) == preferred
                    && replica.health == net::ReplicaHealth::Current
            });
            if ready {
                tracing::info!(
                    shard,
                    to = preferred,
                    "handing leadership to the preferred leader"
                );
                group.transfer_leader(preferred);
                self.rebalance_after
                    .insert(*shard, self.ticks + REBALANCE_BACKOFF_TICKS);
            }
        }
    }

    /// Asks one confirmation per group for the reads that arrived since its last one: they all
    /// arrived before it is asked, so its answer serves every one of them.
    fn ask_confirmations(&mut self) {
        for (shard, readers) in std::mem::take(&mut self.reads_waiting) {
            let group = self
                .groups
                .get_mut(&shard)
                .expect("reads wait only for hosted groups");
            self.next_context += 1;
            group.confirm_leadership(self.next_context);
            self.confirmations.insert(
                self.next_context,
                Confirmation {
                    shard,
                    asked_at: self.ticks,
                    readers,
                },
            );
        }
    }

    /// Answers the readers of a confirmation.
    fn answer_confirmation(&mut self, context: u64, confirmed: bool) {
        if let Some(confirmation) = self.confirmations.remove(&context) {
            self.waiting_count -= confirmation.readers.len();
            for reader in confirmation.readers {
                let _ = reader.send(confirmed);
            }
        }
    }

    /// Answers false to the confirmations of `shard` (its replica stopped leading), or to those
    /// asked too long ago (the group lost touch with its majority, or the request was lost).
    fn expire_confirmations(&mut self) {
        let expired: Vec<u64> = self
            .confirmations
            .iter()
            .filter(|(_, c)| self.ticks - c.asked_at > CONFIRMATION_TICKS_MAX)
            .map(|(context, _)| *context)
            .collect();
        for context in expired {
            self.answer_confirmation(context, false);
        }
    }

    fn fail_confirmations(&mut self, shard: u32) {
        let failed: Vec<u64> = self
            .confirmations
            .iter()
            .filter(|(_, c)| c.shard == shard)
            .map(|(context, _)| *context)
            .collect();
        for context in failed {
            self.answer_confirmation(context, false);
        }
        if let Some(readers) = self.reads_waiting.remove(&shard) {
            self.waiting_count -= readers.len();
            for reader in readers {
                let _ = reader.send(false);
            }
        }
    }

    /// Releases what waited for the WAL up to `lsn`; returns whether any group moved.
    fn persisted(&mut self, lsn: Lsn) -> bool {
        let mut outgoing = Vec::new();
        let mut moved = false;
        for group in self.groups.values_mut() {
            if self.failed.contains(&group.shard()) {
                continue;
            }
            if group.awaiting().is_some_and(|awaited| awaited <= lsn) {
                moved = true;
                let shard = group.shard();
                outgoing.extend(group.persisted(lsn).into_iter().map(|m| (shard, m)));
            }
        }
        self.send(outgoing);
        moved
    }

    /// Handles every group's work until none has any, sends what it produced, and makes sure a
    /// task awaits the WAL LSN the groups wait for.
    fn process(&mut self) {
        self.ask_confirmations();
        // Bounded: the loop ends when nothing moves, which Raft reaches within a few rounds.
        for _ in 0..64 {
            let mut outgoing: Vec<(u32, RaftMessage)> = Vec::new();
            let mut moved = false;
            let mut confirmed: Vec<u64> = Vec::new();
            let mut lost_leadership: Vec<u32> = Vec::new();
            for (shard, group) in &mut self.groups {
                if self.failed.contains(shard) {
                    continue;
                }
                let output = match group.process() {
                    Ok(output) => output,
                    Err(error) => {
                        // A group that cannot go on (its storage failed, or its log is
                        // inconsistent) takes no further part: it answers nothing, votes for
                        // nothing, serves nothing, until the node restarts. The other replicas
                        // go on without it.
                        tracing::error!(shard, %error, "replica group failed; it stops here until restart");
                        self.failed.insert(*shard);
                        let cause = match error {
                            replica::GroupError::Storage(engine::StorageError::Wal(error)) => {
                                io_cause(error)
                            }
                            other => Arc::new(std::io::Error::other(other.to_string())),
                        };
                        stop(group, &self.shards[shard], cause);
                        lost_leadership.push(*shard);
                        continue;
                    }
                };
                let server = &self.shards[shard];
                server.set_leader(group.leader());
                self.router.learn_leader(*shard, group.leader() as NodeId);
                if output.closed {
                    server.close();
                    self.metrics.leadership_lost(*shard);
                }
                if output.opened.is_some() {
                    self.metrics.leadership_gained(*shard);
                }
                if (output.closed || !group.is_leader())
                    && (self.reads_waiting.contains_key(shard)
                        || self.confirmations.values().any(|c| c.shard == *shard))
                {
                    lost_leadership.push(*shard);
                }
                confirmed.extend(output.confirmed.iter().copied());
                if let Some(report) = &output.opened
                    && let Some(engine) = group.engine()
                    && let Err(error) =
                        server.open(engine.clone(), report, &self.router, &self.metrics)
                {
                    tracing::error!(shard, %error, "cannot start serving");
                }
                if let Some(lsn) = output.wait_for {
                    self.wanted = self.wanted.max(lsn);
                }
                moved |= output.wait_for.is_some()
                    || output.closed
                    || output.opened.is_some()
                    || !output.messages.is_empty();
                outgoing.extend(output.messages.into_iter().map(|m| (*shard, m)));
            }
            self.send(outgoing);
            for context in confirmed {
                self.answer_confirmation(context, true);
            }
            for shard in lost_leadership {
                self.fail_confirmations(shard);
            }
            moved |= self.persisted(self.wal.durable_lsn());
            if !moved {
                break;
            }
        }
        if self.wanted > self.wal.durable_lsn() && self.wanted > self.awaited {
            self.awaited = self.wanted;
            let wal = self.wal.clone();
            let inputs = self.input_sender.clone();
            let lsn = self.wanted;
            tokio::spawn(async move {
                let result = wal.durable(lsn).await;
                if let Err(error) = &result {
                    tracing::error!(%error, "the WAL failed: every group stops here until restart");
                }
                let _ = inputs.send(Input::Durable(result.map(|()| lsn))).await;
            });
        }
    }

    /// Sends messages, one frame per destination node (cut at the frame size target); Raft
    /// tolerates what gets lost.
    fn send(&self, messages: Vec<(u32, RaftMessage)>) {
        if messages.is_empty() {
            return;
        }
        let mut per_node: HashMap<NodeId, Vec<Vec<ShardRaftMessage>>> = HashMap::new();
        let mut sizes: HashMap<NodeId, usize> = HashMap::new();
        for (shard, message) in messages {
            let to = message.to as NodeId;
            let message = ShardRaftMessage {
                shard,
                message: wire::to_wire(&message),
            };
            let size = message.encoded_size_bytes();
            let frames = per_node.entry(to).or_default();
            let used = sizes.entry(to).or_default();
            if frames.is_empty()
                || *used + size > FRAME_BODY_TARGET_BYTES
                || frames
                    .last()
                    .is_some_and(|frame| frame.len() >= net::RAFT_MESSAGES_PER_FRAME_MAX as usize)
            {
                frames.push(Vec::new());
                *used = 0;
            }
            *used += size;
            frames.last_mut().expect("pushed").push(message);
        }
        for (to, frames) in per_node {
            for messages in frames {
                let peers = self.router.peers().clone();
                let frame = RaftMessages {
                    from: self.me,
                    messages,
                };
                tokio::spawn(async move {
                    if let Err(error) = peers.call(to, Message::RaftMessages(frame)).await {
                        tracing::debug!(to, %error, "raft messages not delivered");
                    }
                });
            }
        }
    }
}

/// The I/O error behind a WAL failure, kept as it is so that refusals name it.
fn io_cause(error: engine::wal::WalError) -> Arc<std::io::Error> {
    match error {
        engine::wal::WalError::Failed(io) => io,
        other => Arc::new(std::io::Error::other(other.to_string())),
    }
}

/// Stops a group whose storage failed. A replica of a group of several stops serving (the others
/// elect a leader; reads here could be stale). The only replica of a group keeps serving with its
/// engine failed: writes are refused as after any storage failure, reads are still answered (no
/// one else can have committed anything).
fn stop(group: &mut NodeGroup, server: &ShardServer, cause: Arc<std::io::Error>) {
    group.fail(cause);
    if group.voter_count() > 1 {
        server.close();
    }
}
