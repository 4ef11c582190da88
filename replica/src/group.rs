//! [`Group`]: one replica of one shard's Raft group, as a core its host drives. The host (the
//! node's driver task, or the simulator) ticks it, steps the messages other replicas send it,
//! calls [`Group::process`] to turn Raft's `Ready` into WAL appends, messages and applied
//! entries, and reports the WAL's durable LSN back with [`Group::persisted`]. The group does no
//! network I/O and reads no clock; its only I/O is appending to the node's WAL, whose durability
//! the host awaits.
//!
//! While the replica leads (and once everything committed before its term is applied), an
//! [`Engine`] is open over the group's tables and a [`ReplicatedLog`]: the engine locks, validates
//! and logs as on a single-copy node, its records become Raft entries, and it answers once they
//! are committed. While the replica follows, no engine is open: committed entries are applied to
//! the tables directly. A new leader's engine rebuilds its locks and in-doubt transactions from
//! the tables, the way a restarted single-copy engine does.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use engine::tables::Tables;
use engine::wal::{Lsn, Storage, Wal};
use engine::{Engine, EngineOptions, OpenReport, StorageError, apply_records};
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, EntryType, HardState, Message};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};

use crate::log::{ReplicatedLog, Wake};
use crate::payload;
use crate::store::{self, RecoveredGroup};

/// The engine a group's leader runs.
pub type GroupEngine<T> = Engine<Arc<T>, ReplicatedLog>;

/// Tunables of a [`Group`].
#[derive(Debug, Clone)]
pub struct GroupOptions {
    /// Ticks without a leader's word before a follower stands for election: drawn per election
    /// from `election_ticks_min..election_ticks_max` (raft-rs draws it).
    pub election_ticks_min: usize,
    pub election_ticks_max: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Largest data of one proposed entry (whole records; a single larger record goes alone).
    pub entry_data_max_bytes: usize,
    /// Bound on bytes of the engine's records queued or proposed and not yet committed.
    pub uncommitted_bytes_max: usize,
    /// Largest append message raft-rs builds (it always sends at least one entry).
    pub message_max_bytes: u64,
    /// Append messages in flight to one follower.
    pub inflight_messages_max: usize,
    pub engine: EngineOptions,
}

impl Default for GroupOptions {
    fn default() -> Self {
        Self {
            election_ticks_min: 8,
            election_ticks_max: 16,
            heartbeat_ticks: 2,
            entry_data_max_bytes: 256 * 1024,
            uncommitted_bytes_max: 16 * 1024 * 1024,
            message_max_bytes: 512 * 1024,
            inflight_messages_max: 256,
            engine: EngineOptions::default(),
        }
    }
}

/// Why a group cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("group {group}: {reason}")]
    Inconsistent { group: u32, reason: String },
}

/// What one [`Group::process`] produced for the host to carry out.
#[derive(Default)]
pub struct Output {
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// The WAL LSN the group waits for: once it is durable, call [`Group::persisted`].
    pub wait_for: Option<Lsn>,
    /// An engine was opened: this replica leads and serves.
    pub opened: Option<OpenReport>,
    /// The engine was closed: this replica stopped leading (or restarted its engine).
    pub closed: bool,
    /// Leadership confirmations asked with [`Group::confirm_leadership`] that a majority
    /// answered: this replica still led when they were asked.
    pub confirmed: Vec<u64>,
}

impl Output {
    fn merge(&mut self, other: Output) {
        self.messages.extend(other.messages);
        self.wait_for = self.wait_for.max(other.wait_for);
        if other.opened.is_some() {
            self.opened = other.opened;
        }
        self.closed |= other.closed;
        self.confirmed.extend(other.confirmed);
    }
}

/// A Ready's messages that may leave only once its appends are durable.
struct Unpersisted {
    number: u64,
    wal_lsn: Lsn,
    messages: Vec<Message>,
}

/// See the module documentation.
pub struct Group<T: Tables, S: Storage> {
    shard: u32,
    raw: RawNode<MemStorage>,
    storage: MemStorage,
    wal: Arc<Wal<S>>,
    tables: Arc<T>,
    options: GroupOptions,
    wake: Wake,
    engine: Option<(Arc<GroupEngine<T>>, ReplicatedLog)>,
    /// Leading, and waiting for this index to be applied before opening an engine.
    open_at: Option<u64>,
    /// The term the open engine serves: its records may be proposed in that term only.
    engine_term: u64,
    unpersisted: VecDeque<Unpersisted>,
    /// The highest WAL LSN this group appended.
    last_wal_lsn: Lsn,
    /// Ticks since the group opened, and the tick each other replica was last heard from (one
    /// entry per voter: raft refuses messages from replicas it does not know).
    ticks: u64,
    heard: HashMap<u64, u64>,
}

impl<T: Tables, S: Storage> Group<T, S> {
    /// Opens replica `id` of shard `shard`'s group from what recovery found in the node's WAL,
    /// or, for a group never seen, with `voters` as its first configuration. `wake` is called
    /// whenever the group has work (records queued by its engine).
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        shard: u32,
        id: u64,
        voters: &[u64],
        recovered: Option<RecoveredGroup>,
        wal: Arc<Wal<S>>,
        tables: Arc<T>,
        options: GroupOptions,
        wake: Wake,
    ) -> Result<Self, GroupError> {
        let storage = MemStorage::new();
        let recovered = recovered.unwrap_or_default();
        let conf_state = match recovered.conf_state {
            Some(conf_state) => conf_state,
            None => {
                let conf_state = ConfState {
                    voters: voters.to_vec(),
                    ..ConfState::default()
                };
                let lsn = wal
                    .append(
                        store::KIND_CONF_STATE,
                        &store::encode_conf_state(shard, &conf_state),
                    )
                    .map_err(StorageError::from)?;
                wal.wait_durable(lsn).map_err(StorageError::from)?;
                conf_state
            }
        };
        {
            let mut core = storage.wl();
            core.set_conf_state(conf_state);
            core.append(&recovered.entries)?;
            core.set_hardstate(recovered.hard_state.clone());
        }
        // Committed entries are handed over again from the start of the log; the records the
        // tables already hold are skipped by LSN.
        let config = raft::Config {
            id,
            election_tick: options.election_ticks_min,
            min_election_tick: options.election_ticks_min,
            max_election_tick: options.election_ticks_max,
            heartbeat_tick: options.heartbeat_ticks,
            applied: 0,
            max_size_per_msg: options.message_max_bytes,
            max_inflight_msgs: options.inflight_messages_max,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        config.validate()?;
        let raw = RawNode::new(&config, storage.clone(), &crate::slog_bridge::logger())?;
        Ok(Self {
            shard,
            raw,
            storage,
            wal,
            tables,
            options,
            wake,
            engine: None,
            open_at: None,
            engine_term: 0,
            unpersisted: VecDeque::new(),
            last_wal_lsn: 0,
            ticks: 0,
            heard: HashMap::new(),
        })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// The engine, while this replica leads and serves.
    pub fn engine(&self) -> Option<&Arc<GroupEngine<T>>> {
        self.engine.as_ref().map(|(engine, _)| engine)
    }

    pub fn tables(&self) -> &Arc<T> {
        &self.tables
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The leader this replica knows of (0 when none).
    pub fn leader(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    pub fn applied_index(&self) -> u64 {
        self.raw.raft.raft_log.applied
    }

    pub fn last_index(&self) -> u64 {
        self.raw.raft.raft_log.last_index()
    }

    /// This replica's view of its group for `tally status`: its role, the leader it knows, its
    /// log indexes, and each replica's progress. Only a leader knows how the others keep up: it
    /// counts a replica down when nothing came from it for a longest election timeout (a
    /// follower answers every heartbeat), lagging when it lacks entries the leader holds. A
    /// follower reports every other replica as unknown. (raft-rs's own `recent_active` is not
    /// used: check-quorum clears it every election timeout, so it reads false for every follower
    /// until the next heartbeat answer.)
    pub fn status(&self, in_doubt_count: u64) -> net::GroupStatus {
        let raft = &self.raw.raft;
        let leading = raft.state == StateRole::Leader;
        let last_index = self.last_index();
        let mut replicas: Vec<net::ReplicaProgress> = raft
            .prs()
            .iter()
            .map(|(&id, progress)| {
                let health = if id == raft.id {
                    net::ReplicaHealth::Current
                } else if !leading {
                    net::ReplicaHealth::Unknown
                } else if self.ticks - self.heard.get(&id).copied().unwrap_or(0)
                    > self.options.election_ticks_max as u64
                {
                    net::ReplicaHealth::Down
                } else if progress.matched < last_index {
                    net::ReplicaHealth::Lagging
                } else {
                    net::ReplicaHealth::Current
                };
                let matched_index = match (id == raft.id, leading) {
                    (true, _) => last_index,
                    (false, true) => progress.matched,
                    (false, false) => 0,
                };
                net::ReplicaProgress {
                    node_id: id as net::NodeId,
                    health,
                    matched_index,
                }
            })
            .collect();
        replicas.sort_by_key(|replica| replica.node_id);
        replicas.truncate(net::GROUP_REPLICAS_MAX as usize);
        net::GroupStatus {
            shard: self.shard,
            role: match raft.state {
                StateRole::Leader => net::ReplicaRole::Leader,
                StateRole::Follower => net::ReplicaRole::Follower,
                StateRole::Candidate | StateRole::PreCandidate => net::ReplicaRole::Candidate,
            },
            leader: raft.leader_id as net::NodeId,
            term: raft.term,
            last_index,
            commit_index: self.commit_index(),
            applied_index: self.applied_index(),
            in_doubt_count,
            replicas,
        }
    }

    /// The term of the entry at `index` in this replica's log, if it holds one there (for
    /// status, and for the simulator's check that committed entries stay).
    pub fn log_term(&self, index: u64) -> Option<u64> {
        use raft::Storage as _;
        let first = self.storage.first_index().ok()?;
        let last = self.storage.last_index().ok()?;
        if index < first || index > last {
            return None;
        }
        self.storage.term(index).ok()
    }

    /// raft-rs's view of the group (progress of each follower when leading).
    pub fn raft_status(&self) -> raft::Status<'_> {
        self.raw.status()
    }

    /// One tick of the group's logical clock.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
    }

    /// Replica `lost`, which this one followed, is known to be gone (the node saw its connection
    /// to it close: the process died or restarted). This replica forgets the leader, so that it
    /// grants votes at once instead of waiting for the lost leader's lease to run out, and stands
    /// for election soon instead of after a whole timeout of silence: the replicas other than
    /// `lost`, by id, stand 2, 4, 6 ... ticks later, so that the followers seeing the loss do not
    /// split the vote, and the next one stands when the first cannot win (its log is behind, or
    /// it asked before the others saw the loss). What does not end in a leader falls back on the
    /// randomized timeouts, as without the hint. The node calls this once per loss.
    ///
    /// Safe whatever the truth: elections never depend on timing for safety, and with pre-vote
    /// and check-quorum a replica that is wrong (the leader lives) wins no pre-vote from a
    /// replica that still hears the leader, so the leader is not disturbed.
    pub fn leader_lost(&mut self, lost: u64) {
        let raft = &mut self.raw.raft;
        let waiting = matches!(raft.state, StateRole::Follower | StateRole::PreCandidate);
        if !waiting || (raft.leader_id != raft::INVALID_ID && raft.leader_id != lost) {
            return;
        }
        let mut others: Vec<u64> = raft
            .prs()
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|id| *id != lost)
            .collect();
        others.sort_unstable();
        let rank = others
            .iter()
            .position(|id| *id == raft.id)
            .unwrap_or(others.len());
        // raft-rs's lease needs a known leader; a message from a live leader makes it known again.
        raft.leader_id = raft::INVALID_ID;
        // The first stands at the second tick, not the next: the other followers see the same
        // loss within milliseconds, and a pre-vote that reaches one still counting the lease is
        // ignored.
        let wait = 2 + 2 * rank;
        raft.election_elapsed = raft
            .election_elapsed
            .max(raft.randomized_election_timeout().saturating_sub(wait));
    }

    /// Stands for election now (used to place a group's first leader).
    pub fn campaign(&mut self) -> Result<(), GroupError> {
        Ok(self.raw.campaign()?)
    }

    /// Asks the other replicas to confirm that this one still leads (raft's read index, safe
    /// mode: a heartbeat round carrying `context`). A majority's answer shows up in a later
    /// [`Output::confirmed`]; without one (leadership lost, a partition) it never does, so the
    /// caller bounds its wait. Reads served after the confirmation are linearizable: every write
    /// acknowledged before the read arrived was applied by this leader's engine (answers wait
    /// for their records to commit and apply, and the engine opened only after every earlier
    /// term's entries were applied), and no other replica can have led a later term before the
    /// majority answered.
    pub fn confirm_leadership(&mut self, context: u64) {
        self.raw.read_index(context.to_le_bytes().to_vec());
    }

    /// Hands leadership to `to` (a voter that is up to date, or soon is).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// A message from another replica of this group. Messages raft refuses (from a peer it does
    /// not know, a local kind) are dropped: the network may deliver anything.
    pub fn step(&mut self, message: Message) {
        let from = message.from;
        match self.raw.step(message) {
            Ok(()) => {
                self.heard.insert(from, self.ticks);
            }
            Err(error) => tracing::debug!(shard = self.shard, %error, "raft message dropped"),
        }
    }

    /// Proposes what the engine queued, then handles every `Ready`. Call after ticks, steps and
    /// wake-ups.
    pub fn process(&mut self) -> Result<Output, GroupError> {
        let mut output = Output::default();
        self.propose(&mut output)?;
        while self.raw.has_ready() {
            let step = self.process_ready()?;
            output.merge(step);
        }
        Ok(output)
    }

    /// The WAL LSN the oldest unpersisted `Ready` waits for, if any.
    pub fn awaiting(&self) -> Option<Lsn> {
        self.unpersisted.front().map(|front| front.wal_lsn)
    }

    /// The WAL is durable up to `wal_lsn`: the Readies it covers are persisted. Returns the
    /// messages that waited for it; call [`Group::process`] next (commits may follow).
    pub fn persisted(&mut self, wal_lsn: Lsn) -> Vec<Message> {
        let mut messages = Vec::new();
        let mut number = None;
        while let Some(front) = self.unpersisted.front() {
            if front.wal_lsn > wal_lsn {
                break;
            }
            let front = self.unpersisted.pop_front().expect("checked");
            number = Some(front.number);
            messages.extend(front.messages);
        }
        if let Some(number) = number {
            self.raw.on_persist_ready(number);
        }
        messages
    }

    fn propose(&mut self, output: &mut Output) -> Result<(), GroupError> {
        if self.engine.is_none() {
            return Ok(());
        }
        // The engine belongs to one leadership. Steps since the last round may have ended it
        // (a higher term's vote request or append) before a `Ready` reported it: its records must
        // not be proposed then. As a follower, raft-rs would forward them to the new leader,
        // which would commit the old engine's records, LSNs and all, beside its own; in a later
        // term of this same replica they would follow entries the engine never saw.
        if !self.is_leader() || self.term() != self.engine_term {
            tracing::info!(
                shard = self.shard,
                term = self.term(),
                engine_term = self.engine_term,
                "leadership changed under the engine; closing it"
            );
            self.close_engine(output)?;
            if self.is_leader() {
                self.open_at = Some(self.last_index());
            }
            return Ok(());
        }
        let Some((_, log)) = &self.engine else {
            return Ok(());
        };
        // While leadership is being transferred raft-rs drops proposals; the records wait in the
        // log's queue instead. The transfer either ends this leadership (the queue is closed, its
        // records never acknowledged) or is given up after an election timeout, when they go.
        if self.raw.raft.lead_transferee.is_some() {
            return Ok(());
        }
        let log = log.clone();
        while let Some(data) = log.take_proposal(self.options.entry_data_max_bytes) {
            if let Err(error) = self.raw.propose(Vec::new(), data) {
                // A dropped proposal leaves a hole in the engine's LSNs: that engine cannot go
                // on. A new one opens once what the log holds is applied, if this replica still
                // leads then.
                tracing::warn!(shard = self.shard, %error, "proposal dropped; restarting the engine");
                self.close_engine(output)?;
                if self.is_leader() {
                    self.open_at = Some(self.last_index());
                }
                break;
            }
        }
        Ok(())
    }

    fn process_ready(&mut self) -> Result<Output, GroupError> {
        let mut output = Output::default();
        let mut ready = self.raw.ready();
        if let Some(soft_state) = ready.ss() {
            let leading = soft_state.raft_state == StateRole::Leader;
            if !leading {
                self.open_at = None;
                if self.engine.is_some() {
                    self.close_engine(&mut output)?;
                }
            } else if self.engine.is_none() && self.open_at.is_none() {
                // The entry a new leader appends is the last of its log: once it is applied,
                // everything any earlier leader committed is applied too.
                self.open_at = Some(self.last_index());
                tracing::info!(
                    shard = self.shard,
                    term = self.term(),
                    "leading; the engine opens once index {} is applied",
                    self.last_index()
                );
            }
        }
        output.messages.extend(ready.take_messages());
        output
            .confirmed
            .extend(ready.take_read_states().into_iter().filter_map(|state| {
                let context: [u8; 8] = state.request_ctx.as_slice().try_into().ok()?;
                Some(u64::from_le_bytes(context))
            }));
        if !ready.snapshot().is_empty() {
            return Err(GroupError::Inconsistent {
                group: self.shard,
                reason: "received a snapshot; installing snapshots is not supported yet".into(),
            });
        }
        let mut records: Vec<(u8, Vec<u8>)> = Vec::new();
        let entries = ready.take_entries();
        if !entries.is_empty() {
            self.storage.wl().append(&entries)?;
            for entry in &entries {
                let mut payload = Vec::with_capacity(entry.data.len() + 40);
                store::encode_entry(self.shard, entry, &mut payload);
                records.push((store::KIND_ENTRY, payload));
            }
        }
        if let Some(hard_state) = ready.hs() {
            self.storage.wl().set_hardstate(hard_state.clone());
            // A change of the commit index alone is written with the next appends, not on its
            // own (raft-rs: it need not be synced). A replica restarted with an older commit index
            // learns the newer one from its leader, or, leading, commits its log again; the
            // tables may hold records past it, which were committed and are durable here, and
            // are skipped by LSN when handed over again.
            if ready.must_sync() || !records.is_empty() {
                records.push((
                    store::KIND_HARD_STATE,
                    store::encode_hard_state(self.shard, hard_state),
                ));
            }
        }
        if !records.is_empty() {
            let borrowed: Vec<(u8, &[u8])> = records
                .iter()
                .map(|(kind, payload)| (*kind, payload.as_slice()))
                .collect();
            self.last_wal_lsn = self
                .wal
                .append_batch(&borrowed)
                .map_err(StorageError::from)?;
        }
        let committed = ready.take_committed_entries();
        self.apply(committed, &mut output)?;
        let persisted_messages = ready.take_persisted_messages();
        let number = ready.number();
        self.raw.advance_append_async(ready);
        // Every Ready is recorded, in order, even one that appended nothing: its messages wait
        // for the appends of the Readies before it.
        self.unpersisted.push_back(Unpersisted {
            number,
            wal_lsn: self.last_wal_lsn,
            messages: persisted_messages,
        });
        output.wait_for = Some(self.last_wal_lsn);
        Ok(output)
    }

    fn apply(
        &mut self,
        entries: Vec<raft::eraftpb::Entry>,
        output: &mut Output,
    ) -> Result<(), GroupError> {
        let Some(last) = entries.last().map(|entry| entry.index) else {
            return Ok(());
        };
        let mut engine_last_lsn = None;
        // A follower's records of every entry, applied as one table batch.
        let mut records = Vec::new();
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    if self.engine.is_some() {
                        // The engine's own records: it applies them itself once told they are
                        // committed. An open engine never meets an earlier term's entry (it
                        // opened after all of them were applied).
                        if entry.term != self.term() {
                            return Err(GroupError::Inconsistent {
                                group: self.shard,
                                reason: format!(
                                    "entry {} of term {} committed under the engine of term {}",
                                    entry.index,
                                    entry.term,
                                    self.term()
                                ),
                            });
                        }
                        // Its records are in the engine already: the header says how far they go.
                        engine_last_lsn =
                            Some(payload::last_lsn(&entry.data).ok_or_else(|| {
                                GroupError::Inconsistent {
                                    group: self.shard,
                                    reason: format!("entry {} has no record batch", entry.index),
                                }
                            })?);
                    } else {
                        records.extend(payload::decode(&entry.data).map_err(|error| {
                            GroupError::Inconsistent {
                                group: self.shard,
                                reason: format!("entry {}: {error}", entry.index),
                            }
                        })?);
                    }
                }
                EntryType::EntryConfChange => {
                    let change = <ConfChange as prost::Message>::decode(&entry.data[..]).map_err(
                        |error| GroupError::Inconsistent {
                            group: self.shard,
                            reason: format!("conf change entry {}: {error}", entry.index),
                        },
                    )?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    self.store_conf_state(conf_state)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let change = <ConfChangeV2 as prost::Message>::decode(&entry.data[..])
                        .map_err(|error| GroupError::Inconsistent {
                            group: self.shard,
                            reason: format!("conf change entry {}: {error}", entry.index),
                        })?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    self.store_conf_state(conf_state)?;
                }
            }
        }
        self.apply_records(records, last)?;
        if let (Some(lsn), Some((engine, log))) = (engine_last_lsn, &self.engine) {
            log.committed(lsn);
            // An engine that cannot apply what its group committed (its tables failed, or an
            // invariant broke) cannot serve; a leader keeping it would hold the shard down. The
            // group stops, as on a failure of its log, so that the other replicas elect.
            engine.settle().map_err(|error| {
                tracing::error!(shard = self.shard, %error, "the leader's engine failed to apply");
                error
            })?;
        }
        self.raw.advance_apply_to(last);
        if let Some(open_at) = self.open_at
            && last >= open_at
        {
            self.open_at = None;
            self.open_engine(output)?;
        }
        Ok(())
    }

    /// Applies committed records (up to entry `index`) to the tables as one batch (no engine
    /// open), skipping those they hold.
    fn apply_records(
        &mut self,
        records: Vec<(Lsn, engine::record::Record)>,
        index: u64,
    ) -> Result<(), GroupError> {
        let applied = self.tables.applied_lsn().map_err(StorageError::from)?;
        let mut records: Vec<_> = records
            .into_iter()
            .filter(|(lsn, _)| *lsn > applied)
            .collect();
        let Some(&(first, _)) = records.first() else {
            return Ok(());
        };
        if first != applied + 1 {
            return Err(GroupError::Inconsistent {
                group: self.shard,
                reason: format!(
                    "entries up to {index} carry LSN {first} but the tables are applied up to {applied}"
                ),
            });
        }
        apply_records(&self.tables, &mut records)?;
        Ok(())
    }

    fn store_conf_state(&mut self, conf_state: ConfState) -> Result<(), GroupError> {
        self.storage.wl().set_conf_state(conf_state.clone());
        self.last_wal_lsn = self
            .wal
            .append(
                store::KIND_CONF_STATE,
                &store::encode_conf_state(self.shard, &conf_state),
            )
            .map_err(StorageError::from)?;
        Ok(())
    }

    fn open_engine(&mut self, output: &mut Output) -> Result<(), GroupError> {
        let applied = self.tables.applied_lsn().map_err(StorageError::from)?;
        let wake = self.wake.clone();
        let log = ReplicatedLog::new(applied, self.options.uncommitted_bytes_max, wake);
        let (engine, report) = Engine::open(
            log.clone(),
            self.tables.clone(),
            self.options.engine.clone(),
        )?;
        tracing::info!(
            shard = self.shard,
            term = self.term(),
            applied_lsn = applied,
            in_doubt = report.in_doubt.len(),
            "leader's engine open"
        );
        self.engine = Some((Arc::new(engine), log));
        self.engine_term = self.term();
        output.opened = Some(report);
        Ok(())
    }

    /// Closes the engine: its waiting answers end `Closed`; what it committed is applied first,
    /// so that from here on the follower path alone writes the tables.
    fn close_engine(&mut self, output: &mut Output) -> Result<(), GroupError> {
        if let Some((engine, log)) = self.engine.take() {
            log.close();
            if let Err(error) = engine.settle() {
                tracing::error!(shard = self.shard, %error, "the closing engine failed to apply");
            }
            tracing::info!(
                shard = self.shard,
                term = self.term(),
                "leader's engine closed"
            );
            output.closed = true;
        }
        Ok(())
    }

    /// How many replicas vote in this group.
    pub fn voter_count(&self) -> usize {
        self.raw.raft.prs().conf().voters().ids().len()
    }

    /// Stops the group after a failure of its storage: the engine's waiting answers end with
    /// that failure (a sticky storage failure for the engine). The host drives the group no more.
    pub fn fail(&mut self, error: Arc<std::io::Error>) {
        if let Some((_, log)) = &self.engine {
            log.fail(error);
        }
    }

    /// The hard state raft-rs holds (for status and tests).
    pub fn hard_state(&self) -> HardState {
        self.raw.raft.hard_state()
    }
}

impl<T: Tables, S: Storage> Drop for Group<T, S> {
    /// Whoever waits on the engine's answers learns they will not come from here.
    fn drop(&mut self) {
        if let Some((_, log)) = self.engine.take() {
            log.close();
        }
    }
}
