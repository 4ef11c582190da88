//! A deterministic simulation of a whole replicated Tally cluster in one thread, from one seed.
//!
//! Each shard is a Raft group: a real `replica::Group` (raft-rs) on each of its replicas' nodes,
//! its Raft log kept as records of the node's one WAL (`engine::wal::Wal` over [`SimStorage`],
//! whose syncs complete when the simulator says so) and its tables in `MemoryTables`. The
//! leader of each shard serves: the group opens an engine over its replicated log, and the
//! simulator runs the real coordinator core (`engine::coordinator`) over it, as
//! `node/src/coordinator.rs` does on a real node (the parties of two-phase commit are shards).
//! Raft messages, 2PC messages and client requests go through a simulated network that delays,
//! reorders, duplicates and drops messages and cuts links (one way or both). Nodes crash at any
//! event, losing every unsynced byte (sometimes keeping a torn prefix) and their unflushed
//! tables, and restart through the real recovery path (WAL recovery, `replica::store::recover`,
//! `Group::open`, the new leader's engine rebuilt from the tables). Time is a simulated clock:
//! every event sits in one queue ordered by (time, sequence number), so a run is a pure function
//! of its seed.
//!
//! Clients send each operation to the node they believe leads its shard, follow `NotLeader` to
//! the leader named, and resend the same id until they hear an outcome. The checks: every outcome
//! heard of an id equals every earlier one; consistent reads during the run conserve money; at
//! most one leader per term per group; an entry once committed in a group stays at its index in
//! every replica's log and in every later leader's; after the faults heal the cluster settles
//! within a bounded simulated time, every acknowledged outcome holds, balances agree with the
//! ledger, and every replica of a shard holds the same tables. See `Simulation::check_final`.
//!
//! What it does not cover: RocksDB itself (the tables are in memory), real sockets and framing
//! (`net` has its own tests), real time and threads (the node's driver), the engine's lock waits
//! (local operations never wait here), membership changes, and a read index (reads go to the
//! leader at the highest term).

mod checks;
mod client;
mod shard;
mod storage;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::Vote;
use engine::coordinator::{
    Answer, BatchId, Coordinator, CoordinatorLimits, DeliveryId, PrepareEntry, Time,
    TransferRequest, Verdict,
};
use engine::model::{AccountId, Amount, MovementId, MovementOutcome, NodeId, TransferId};
use engine::tables::{MemoryTables, Tables};
use engine::testing::{single_threaded_engine_options, small_segment_wal_options};
use engine::wal::{CrashMode, Lsn, Wal, WalOptions};
use raft::eraftpb::MessageType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::{Group, GroupEngine, GroupOptions, RaftMessage, store, wire};

pub use storage::SimStorage;

use client::{CashRefusal, Client, Ledger};
use shard::{Pending, Serving};

type SimGroup = Group<MemoryTables, SimStorage>;
type SimEngine = GroupEngine<MemoryTables>;

/// Every account starts with this much.
pub const INITIAL_BALANCE: Amount = 1_000;
/// Lines of the trace kept (and printed) for a failing run.
const TRACE_LINES: usize = 200;
/// How often each node looks at its coordinators' timers (votes, resends, in-doubt transactions).
const NODE_TICK: Duration = Duration::from_millis(20);
/// The period of a Raft tick (the node's): heartbeats every 2, elections after 8 to 16.
const RAFT_TICK: Duration = Duration::from_millis(50);
/// Per replica and Raft tick in a faulty phase: the chance that a live leader is taken for lost.
const FALSE_LEADER_LOSS_PROBABILITY: f64 = 0.002;
/// How often faults are drawn while they are on.
const CHAOS_TICK: Duration = Duration::from_millis(10);
/// A client resends after this long without an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// A decision batch without an acknowledgement counts as undelivered after this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_millis(500);
/// `NotLeader` redirects a PREPARE follows before its votes are left to time out.
const REDIRECTS_MAX: u32 = 4;
/// After the faults heal, everything must be decided and settled within this simulated time.
pub const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// Faults heal after this simulated time even if the clients have not started every operation
/// (a bug can keep a client retrying forever): the settle bound then reports it, instead of the
/// run never ending.
pub const FAULT_PHASE_MAX: Duration = Duration::from_secs(120);
/// The cluster must elect its first leaders and create its accounts within this time.
const SETUP_BOUND: Duration = Duration::from_secs(30);

/// The shape of one run, drawn from its seed (each seed tries a different mix of faults).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: u32,
    pub shards: u32,
    /// Replicas per shard: 3 (a Raft group that survives one node down), or 1 (a single copy,
    /// down while its node is).
    pub replicas: u32,
    pub accounts: u64,
    pub clients: usize,
    /// Operations the clients start in all (retries and resends of answered ids not counted).
    pub transfers: usize,
    /// Fraction of picks that go to the first two accounts (hot accounts).
    pub hot_fraction: f64,
    /// Which accounts transfers touch.
    pub pattern: Pattern,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    pub delay_max: Duration,
    /// Chance per 10 ms that a random node loses power.
    pub crash_probability: f64,
    /// Chance that a WAL sync is struck: the node loses power instead of completing it.
    pub strike_probability: f64,
    /// Chance that a replica which just granted its vote loses power right after (and comes back
    /// within 30 ms): elections that race with crashes.
    pub crash_after_vote_probability: f64,
    /// Chance per 10 ms that a link is cut (one way or both) for a while.
    pub partition_probability: f64,
    /// Chance per 10 ms that a node flushes its tables (so a restart starts from them, not
    /// from an empty state).
    pub flush_probability: f64,
    /// Each replica's election timeout is drawn from `8..8 + election_spread` ticks at each
    /// start: with a spread of 1 every replica times out alike and elections race.
    pub election_spread: u32,
    /// A transaction in doubt this long is asked about. Shorter than the coordinator's vote
    /// timeout, a participant's inquiry usually forces the abort; longer, the timeout does.
    pub in_doubt_grace: Duration,
}

impl Scenario {
    /// A scenario drawn from the seed: sizes and fault rates vary from seed to seed.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut random = StdRng::seed_from_u64(seed ^ 0x5eed_5eed_5eed_5eed);
        let pick =
            |random: &mut StdRng, choices: &[f64]| choices[random.random_range(0..choices.len())];
        let replicas = if random.random_bool(0.8) { 3 } else { 1 };
        let mut scenario = Scenario {
            nodes: random.random_range(3..=4),
            shards: random.random_range(2..=4),
            replicas,
            accounts: random.random_range(4..=16),
            clients: random.random_range(1..=6),
            transfers: 40,
            hot_fraction: pick(&mut random, &[0.0, 0.0, 0.5, 0.9]),
            drop_probability: pick(&mut random, &[0.0, 0.01, 0.05, 0.2]),
            duplicate_probability: pick(&mut random, &[0.0, 0.02, 0.1]),
            delay_max: Duration::from_millis(pick(&mut random, &[1.0, 5.0, 50.0, 200.0]) as u64),
            crash_probability: pick(&mut random, &[0.0, 0.002, 0.005, 0.01]),
            strike_probability: pick(&mut random, &[0.0, 0.005, 0.02]),
            crash_after_vote_probability: pick(&mut random, &[0.0, 0.2, 0.5]),
            partition_probability: pick(&mut random, &[0.0, 0.01, 0.03]),
            flush_probability: pick(&mut random, &[0.0, 0.005]),
            election_spread: pick(&mut random, &[1.0, 2.0, 8.0]) as u32,
            in_doubt_grace: Duration::from_millis(pick(&mut random, &[200.0, 2_000.0]) as u64),
            pattern: [
                Pattern::Picked,
                Pattern::Picked,
                Pattern::ManyToOne,
                Pattern::OneToMany,
            ][random.random_range(0..4)],
        };
        // A third of the seeds are election storms: nodes crash often, voters crash right after
        // granting a vote and come back at once, every replica times out alike and messages
        // are slow, so candidates race each other across crashes.
        if random.random_bool(1.0 / 3.0) {
            scenario.replicas = 3;
            scenario.election_spread = 1;
            scenario.crash_after_vote_probability = 0.5;
            scenario.crash_probability = 0.03;
            scenario.delay_max = Duration::from_millis(200);
        }
        scenario
    }
}

/// Which accounts a scenario's transfers touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Both ends picked (with the scenario's hot fraction).
    Picked,
    /// Every transfer credits account 1 (a merchant): its credits overlap.
    ManyToOne,
    /// Every transfer debits account 1 (a payroll): its debits reserve their amounts.
    OneToMany,
}

/// Deliberate bugs, for showing that the checks catch what they are for. Only the simulator's
/// own tests turn them on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mutation {
    #[default]
    None,
    /// The coordinator's driver turns the first abort of every batch into a commit.
    CommitOnNoVote,
    /// Participants never ask about their in-doubt transactions. Not caught here (0 in 300
    /// seeds): a client resends its transfer until it hears an outcome, and the coordinator
    /// shard's next leader runs it again, which decides the participant's PREPARE too. Kept to
    /// show that.
    NeverInquire,
    /// A new leader's coordinator does not resend the unended decisions it finds.
    ForgetUnendedOnRestart,
    /// A restarted replica forgets whom it voted for (its hard state's vote is dropped at
    /// recovery): it may vote twice in one term.
    ForgetVoteOnRestart,
    /// The driver sends what Raft says must wait for the WAL (votes, append acknowledgements)
    /// before the WAL's sync completes: a crash then loses what the others were told is durable.
    AcknowledgeBeforeSync,
    /// A participant applies a commit at its own clock's timestamp instead of the one the
    /// decision carries: a read at a timestamp between the two sees the commit on one side only.
    CommitAtOwnClock,
}

/// One shard's service on one node, for messages answering it: a new leadership (a new epoch)
/// never receives the answers meant for an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Party {
    node: NodeId,
    incarnation: u64,
    shard: u32,
    epoch: u64,
}

/// A message on the simulated network.
#[derive(Debug, Clone)]
enum Message {
    Transfer {
        client: usize,
        attempt: u64,
        request: TransferRequest,
    },
    Cash {
        client: usize,
        attempt: u64,
        cash: client::Cash,
    },
    /// To shard `shard`'s leader.
    Prepare {
        shard: u32,
        from: Party,
        batch: BatchId,
        entries: Vec<PrepareEntry>,
        redirects: u32,
    },
    Votes {
        to: Party,
        from_shard: u32,
        batch: BatchId,
        votes: Vec<(TransferId, Vote)>,
        /// The voter's clock after it took the batch's locks.
        clock: u64,
    },
    /// To shard `shard`'s leader.
    Decisions {
        shard: u32,
        from: Party,
        delivery: DeliveryId,
        decisions: Vec<Verdict>,
    },
    Acks {
        to: Party,
        delivery: DeliveryId,
        ids: Vec<TransferId>,
    },
    /// To shard `shard`'s leader (the coordinator of `ids`).
    Inquiry {
        shard: u32,
        from: Party,
        ids: Vec<TransferId>,
    },
    InquiryAnswer {
        to: Party,
        from_shard: u32,
        decisions: Vec<Verdict>,
    },
    /// A replica that does not serve `shard` refuses a message for it, naming the leader it
    /// knows.
    NotLeader {
        shard: u32,
        leader: Option<NodeId>,
        refused: Box<Message>,
    },
    Raft {
        shard: u32,
        message: Box<RaftMessage>,
    },
}

/// Where a message goes: a node (one incarnation of it: messages to an earlier incarnation die
/// with its connections) or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Address {
    Node(NodeId, u64),
    Client(usize),
}

/// What a client hears back.
#[derive(Debug)]
enum ClientReply {
    Transfer(TransferId, Answer),
    Cash(MovementId, Result<MovementOutcome, CashRefusal>),
    NotLeader { shard: u32, leader: Option<NodeId> },
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: Address,
        to: Address,
        message: Message,
    },
    ClientAnswer {
        client: usize,
        attempt: u64,
        reply: ClientReply,
    },
    ClientTimer {
        client: usize,
        attempt: u64,
    },
    NodeTick {
        node: NodeId,
        incarnation: u64,
    },
    RaftTick {
        node: NodeId,
        incarnation: u64,
    },
    /// The WAL's fdatasync completes.
    Sync {
        node: NodeId,
        incarnation: u64,
    },
    PowerOff {
        node: NodeId,
        incarnation: u64,
    },
    Restart {
        node: NodeId,
    },
    Heal {
        from: NodeId,
        to: NodeId,
    },
    Chaos,
    Read,
}

/// One replica of one shard on a running node.
struct Replica {
    group: SimGroup,
    /// While this replica leads and its engine is open.
    serving: Option<Serving>,
}

/// A node while it has power.
struct Running {
    wal: Arc<Wal<SimStorage>>,
    replicas: BTreeMap<u32, Replica>,
    /// The node this node last found leading each shard.
    leaders: BTreeMap<u32, NodeId>,
    /// The WAL is durable up to here (the last completed sync).
    synced: Lsn,
    sync_scheduled: bool,
}

struct Node {
    id: NodeId,
    storage: SimStorage,
    /// The tables of each shard this node holds a replica of.
    tables: BTreeMap<u32, MemoryTables>,
    running: Option<Running>,
    incarnation: u64,
}

/// Counts of what happened, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub messages_sent: u64,
    pub raft_messages: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub crashes: u64,
    pub crashes_after_vote: u64,
    pub strikes: u64,
    pub torn_crashes: u64,
    pub partitions: u64,
    pub syncs: u64,
    /// Distinct (group, term) leaderships seen.
    pub leaderships: u64,
    pub transfers_committed: u64,
    pub transfers_aborted: u64,
    pub resends_of_answered: u64,
    pub not_leader_redirects: u64,
    pub deposits_and_withdrawals_applied: u64,
    pub deposits_and_withdrawals_refused: u64,
    pub consistent_reads: u64,
    pub reads_refused: u64,
    pub settle_time: Duration,
}

impl Stats {
    /// Adds another run's counts (the settle time is the longest of the two).
    pub fn add(&mut self, other: &Stats) {
        self.events += other.events;
        self.messages_sent += other.messages_sent;
        self.raft_messages += other.raft_messages;
        self.messages_dropped += other.messages_dropped;
        self.messages_duplicated += other.messages_duplicated;
        self.crashes += other.crashes;
        self.crashes_after_vote += other.crashes_after_vote;
        self.strikes += other.strikes;
        self.torn_crashes += other.torn_crashes;
        self.partitions += other.partitions;
        self.syncs += other.syncs;
        self.leaderships += other.leaderships;
        self.transfers_committed += other.transfers_committed;
        self.transfers_aborted += other.transfers_aborted;
        self.resends_of_answered += other.resends_of_answered;
        self.not_leader_redirects += other.not_leader_redirects;
        self.deposits_and_withdrawals_applied += other.deposits_and_withdrawals_applied;
        self.deposits_and_withdrawals_refused += other.deposits_and_withdrawals_refused;
        self.consistent_reads += other.consistent_reads;
        self.reads_refused += other.reads_refused;
        self.settle_time = self.settle_time.max(other.settle_time);
    }
}

/// What the checks of the Raft layer remember of each group.
#[derive(Default)]
struct GroupRecord {
    /// Who led each term.
    leaders: BTreeMap<u64, NodeId>,
    /// The term of every entry seen committed, from index 1.
    committed: Vec<u64>,
    /// Per node: the index up to which its log was checked against `committed`.
    checked: BTreeMap<NodeId, u64>,
}

/// Where the simulated nodes' clocks start: 2026-01-01 in microseconds since the Unix epoch.
const SIM_EPOCH_MICROS: u64 = 1_767_225_600_000_000;

/// One simulated cluster.
pub struct Simulation {
    pub seed: u64,
    pub scenario: Scenario,
    mutation: Mutation,
    random: StdRng,
    now: Time,
    sequence: u64,
    queue: BinaryHeap<Reverse<(Time, u64, usize)>>,
    events: BTreeMap<usize, Event>,
    next_event: usize,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    /// The node the clients last found leading each shard (shared by all, as one client
    /// library's leader cache is).
    client_leaders: BTreeMap<u32, NodeId>,
    ledger: Ledger,
    started: usize,
    next_transfer: TransferId,
    next_cash: MovementId,
    next_epoch: u64,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Faults are on: from the end of the setup until they heal.
    faulty: bool,
    healed: bool,
    groups: BTreeMap<u32, GroupRecord>,
    /// Setup operations not yet finished, and the first of their failures.
    setup_left: usize,
    setup_failure: Option<String>,
    trace: VecDeque<String>,
    /// The timestamp and balances of the last consistent read, taken again at the next.
    last_read: Option<(u64, Vec<(AccountId, u64)>)>,
    /// Simulated time in microseconds, which the nodes' clocks read.
    micros: Arc<AtomicU64>,
    pub stats: Stats,
}

/// Why a run failed: the broken invariant and the end of the trace.
#[derive(Debug)]
pub struct Failure {
    pub seed: u64,
    pub transfers: usize,
    pub violation: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            formatter,
            "seed {} ({} transfers): {}",
            self.seed, self.transfers, self.violation
        )?;
        writeln!(formatter, "last events:")?;
        for line in &self.trace {
            writeln!(formatter, "  {line}")?;
        }
        write!(
            formatter,
            "replay with TALLY_SEED={} (TALLY_SIM_TRANSFERS={} for this shortest run)",
            self.seed, self.transfers
        )
    }
}

fn wal_options() -> WalOptions {
    small_segment_wal_options(64 * 1024)
}

fn limits() -> CoordinatorLimits {
    CoordinatorLimits {
        vote_timeout: Duration::from_millis(700),
        resend_interval_min: Duration::from_millis(100),
        resend_interval_max: Duration::from_secs(1),
        batch_transfers_max: 16,
        ..CoordinatorLimits::default()
    }
}

impl Simulation {
    pub fn new(seed: u64, scenario: Scenario, mutation: Mutation) -> Simulation {
        let mut simulation = Simulation {
            seed,
            random: StdRng::seed_from_u64(seed),
            mutation,
            now: Time::ZERO,
            sequence: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            next_event: 0,
            nodes: Vec::new(),
            clients: vec![Client::default(); scenario.clients],
            client_leaders: BTreeMap::new(),
            ledger: Ledger::default(),
            started: 0,
            next_transfer: 1,
            next_cash: 1 << 64,
            next_epoch: 1,
            cut: BTreeSet::new(),
            faulty: false,
            healed: false,
            groups: BTreeMap::new(),
            setup_left: 0,
            setup_failure: None,
            trace: VecDeque::new(),
            last_read: None,
            micros: Arc::new(AtomicU64::new(0)),
            stats: Stats::default(),
            scenario,
        };
        for id in 1..=simulation.scenario.nodes {
            let tables = (1..=simulation.scenario.shards)
                .filter(|shard| simulation.replicas_of(*shard).contains(&id))
                .map(|shard| (shard, MemoryTables::new()))
                .collect();
            simulation.nodes.push(Node {
                id,
                storage: SimStorage::new(),
                tables,
                running: None,
                incarnation: 0,
            });
        }
        for shard in 1..=simulation.scenario.shards {
            simulation.groups.insert(shard, GroupRecord::default());
            let leader = simulation.preferred_leader(shard);
            simulation.client_leaders.insert(shard, leader);
        }
        simulation
    }

    /// Runs the scenario to the end and checks it; the first broken invariant fails the run. A
    /// panic (raft-rs refuses a log that lost committed entries, say) fails it too.
    pub fn run(&mut self) -> Result<(), String> {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.run_checked())) {
            Ok(result) => result,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                Err(format!("panicked: {text}"))
            }
        }
    }

    fn run_checked(&mut self) -> Result<(), String> {
        for node in 1..=self.scenario.nodes {
            self.power_on(node)?;
        }
        self.setup()?;
        self.faulty = true;
        for client in 0..self.scenario.clients {
            self.next_operation(client);
        }
        self.schedule(Duration::from_millis(50), Event::Read);
        self.schedule(CHAOS_TICK, Event::Chaos);
        let start = self.now;
        let mut heal_started: Option<Time> = None;
        loop {
            if heal_started.is_none()
                && (self.started >= self.scenario.transfers || self.now > start + FAULT_PHASE_MAX)
            {
                self.heal_everything()?;
                heal_started = Some(self.now);
            }
            if let Some(heal) = heal_started {
                if self.settled() {
                    self.stats.settle_time = self.now.elapsed() - heal.elapsed();
                    break;
                }
                if self.now > heal + SETTLE_BOUND {
                    return Err(format!(
                        "liveness: not settled {SETTLE_BOUND:?} after the faults healed: {}",
                        self.unsettled()
                    ));
                }
            }
            self.step()?;
        }
        self.check_final()
    }

    /// Elects the first leaders and creates and funds the accounts, without faults.
    fn setup(&mut self) -> Result<(), String> {
        let deadline = self.now + SETUP_BOUND;
        let shards: Vec<u32> = (1..=self.scenario.shards).collect();
        self.run_until(deadline, "first leaders", |simulation| {
            shards
                .iter()
                .all(|shard| simulation.serving_of(*shard).is_some())
        })?;
        for funding in [false, true] {
            for account in 1..=self.scenario.accounts {
                let shard = self.shard_of(account);
                let (node, _) = self.serving_of(shard).expect("serving");
                let serving = self.serving_mut(node, shard).expect("serving");
                let logged = if funding {
                    // Funding ids from 2^120 up, clear of the transfer ids (from 1), since a
                    // shard keeps one namespace for both.
                    serving
                        .engine
                        .move_money_logged(
                            (1 << 120) | u128::from(account),
                            account,
                            engine::model::MovementKind::Deposit,
                            INITIAL_BALANCE,
                        )
                        .map_err(|error| format!("setup: {error}"))?
                } else {
                    serving
                        .engine
                        .create_account_logged(account, None, 0, 0)
                        .map_err(|error| format!("setup: {error}"))?
                };
                serving.pending.push(Pending::Setup { logged });
                self.setup_left += 1;
                self.process(node)?;
            }
            self.run_until(deadline, "accounts created", |simulation| {
                simulation.setup_left == 0
            })?;
            if let Some(failure) = self.setup_failure.take() {
                return Err(format!("setup: {failure}"));
            }
        }
        self.note("setup done".into());
        Ok(())
    }

    fn run_until(
        &mut self,
        deadline: Time,
        what: &str,
        done: impl Fn(&Simulation) -> bool,
    ) -> Result<(), String> {
        while !done(self) {
            if self.now > deadline {
                return Err(format!("setup: {what} not reached by {deadline:?}"));
            }
            self.step()?;
        }
        Ok(())
    }

    /// Handles the next event.
    fn step(&mut self) -> Result<(), String> {
        let Some(Reverse((time, _, index))) = self.queue.pop() else {
            return Err(format!(
                "no event left but not settled: {}",
                self.unsettled()
            ));
        };
        self.now = time;
        self.micros
            .store(time.elapsed().as_micros() as u64, Ordering::Relaxed);
        let event = self.events.remove(&index).expect("queued");
        self.stats.events += 1;
        self.handle(event)
    }

    pub fn trace(&self) -> Vec<String> {
        self.trace.iter().cloned().collect()
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        let millis = self.now.elapsed().as_micros() as f64 / 1000.0;
        self.trace.push_back(format!("{millis:>10.3} ms  {line}"));
    }

    // ---- Placement. ----

    /// The shard of an account (shards are numbered from 1; they are the parties of 2PC).
    fn shard_of(&self, account: AccountId) -> u32 {
        (account % u64::from(self.scenario.shards)) as u32 + 1
    }

    /// Shard `s` has its replicas on nodes `s, s+1, ...` (wrapping), first led by node `s`, as
    /// `tally cluster up` places them.
    fn replicas_of(&self, shard: u32) -> Vec<NodeId> {
        (0..self.scenario.replicas)
            .map(|offset| (shard - 1 + offset) % self.scenario.nodes + 1)
            .collect()
    }

    fn preferred_leader(&self, shard: u32) -> NodeId {
        (shard - 1) % self.scenario.nodes + 1
    }

    /// The replica after `node` in the shard's list (the next one to try).
    fn next_replica(&self, shard: u32, node: NodeId) -> NodeId {
        let replicas = self.replicas_of(shard);
        let position = replicas.iter().position(|replica| *replica == node);
        replicas[position.map_or(0, |position| (position + 1) % replicas.len())]
    }

    fn schedule(&mut self, after: Duration, event: Event) {
        let index = self.next_event;
        self.next_event += 1;
        self.sequence += 1;
        self.events.insert(index, event);
        self.queue
            .push(Reverse((self.now + after, self.sequence, index)));
    }

    fn delay(&mut self) -> Duration {
        let max = self.scenario.delay_max.as_micros() as u64;
        Duration::from_micros(self.random.random_range(1..=max.max(1)))
    }

    fn running(&self, node: NodeId) -> Option<&Running> {
        self.nodes[node as usize - 1].running.as_ref()
    }

    fn running_mut(&mut self, node: NodeId) -> Option<&mut Running> {
        self.nodes[node as usize - 1].running.as_mut()
    }

    fn replica(&self, node: NodeId, shard: u32) -> Option<&Replica> {
        self.running(node)?.replicas.get(&shard)
    }

    fn replica_mut(&mut self, node: NodeId, shard: u32) -> Option<&mut Replica> {
        self.running_mut(node)?.replicas.get_mut(&shard)
    }

    fn serving_mut(&mut self, node: NodeId, shard: u32) -> Option<&mut Serving> {
        self.replica_mut(node, shard)?.serving.as_mut()
    }

    /// The replica of `shard` that serves at the highest term any running replica of the shard
    /// knows (a deposed leader that has not heard of its successor yet is not it).
    fn serving_of(&self, shard: u32) -> Option<(NodeId, &Serving)> {
        let mut term = 0;
        let mut serving = None;
        for node in self.replicas_of(shard) {
            let Some(replica) = self.replica(node, shard) else {
                continue;
            };
            let replica_term = replica.group.term();
            if replica_term > term {
                term = replica_term;
                serving = None;
            }
            if replica_term == term
                && let Some(open) = &replica.serving
            {
                serving = Some((node, open));
            }
        }
        serving
    }

    // ---- The network. ----

    fn send(&mut self, from: Address, to: Address, message: Message) {
        self.stats.messages_sent += 1;
        if let (Address::Node(a, _), Address::Node(b, _)) = (from, to)
            && self.cut.contains(&(a, b))
        {
            self.stats.messages_dropped += 1;
            return;
        }
        if self.faulty && self.random.random_bool(self.scenario.drop_probability) {
            self.stats.messages_dropped += 1;
            return;
        }
        if self.faulty && self.random.random_bool(self.scenario.duplicate_probability) {
            self.stats.messages_duplicated += 1;
            let delay = self.delay();
            self.schedule(
                delay,
                Event::Deliver {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
        let delay = self.delay();
        self.schedule(delay, Event::Deliver { from, to, message });
    }

    /// A client hears back over the network: the answer may be lost.
    fn answer_client(&mut self, client: usize, attempt: u64, reply: ClientReply) {
        if self.faulty && self.random.random_bool(self.scenario.drop_probability) {
            self.stats.messages_dropped += 1;
            return;
        }
        let delay = self.delay();
        self.schedule(
            delay,
            Event::ClientAnswer {
                client,
                attempt,
                reply,
            },
        );
    }

    fn node_address(&self, node: NodeId) -> Address {
        Address::Node(node, self.nodes[node as usize - 1].incarnation)
    }

    /// Sends a message for `shard`'s leader from `node`, to the node `node` believes leads it.
    fn send_to_shard(&mut self, node: NodeId, shard: u32, message: Message) {
        let to = self.route(node, shard);
        let from = self.node_address(node);
        let to = self.node_address(to);
        self.send(from, to, message);
    }

    /// The node `node` believes leads `shard`.
    fn route(&self, node: NodeId, shard: u32) -> NodeId {
        self.running(node)
            .and_then(|running| running.leaders.get(&shard).copied())
            .unwrap_or_else(|| self.preferred_leader(shard))
    }

    // ---- Faults. ----

    fn chaos(&mut self) -> Result<(), String> {
        if self.random.random_bool(self.scenario.crash_probability) {
            let node = self.random.random_range(1..=self.scenario.nodes);
            if self.nodes[node as usize - 1].running.is_some() {
                let after = Duration::from_millis(self.random.random_range(10..2_000));
                self.power_off(node, after);
            }
        }
        if self.random.random_bool(self.scenario.partition_probability) {
            let from = self.random.random_range(1..=self.scenario.nodes);
            let to = self.random.random_range(1..=self.scenario.nodes);
            if from != to {
                let both = self.random.random_bool(0.5);
                self.cut.insert((from, to));
                if both {
                    self.cut.insert((to, from));
                }
                self.stats.partitions += 1;
                let length = Duration::from_millis(self.random.random_range(50..3_000));
                self.note(format!(
                    "link {from} -> {to} cut{} for {length:?}",
                    if both { " both ways" } else { "" }
                ));
                self.schedule(length, Event::Heal { from, to });
            }
        }
        if self.random.random_bool(self.scenario.flush_probability) {
            let node = self.random.random_range(1..=self.scenario.nodes);
            let entry = &self.nodes[node as usize - 1];
            if entry.running.is_some() {
                for tables in entry.tables.values() {
                    tables
                        .flush()
                        .map_err(|error| format!("node {node}: flush: {error}"))?;
                }
            }
        }
        Ok(())
    }

    /// The node loses power now and comes back `restart_after` later.
    fn power_off(&mut self, node: NodeId, restart_after: Duration) {
        let mode = if self.random.random_bool(0.5) {
            CrashMode::DropUnsynced
        } else {
            self.stats.torn_crashes += 1;
            CrashMode::KeepUnsyncedPrefix {
                seed: self.random.random(),
            }
        };
        let entry = &mut self.nodes[node as usize - 1];
        // The images first: what runs on after (the WAL's writer, dropped engines) writes to the
        // old disk only.
        let storage = entry.storage.crash(mode);
        let tables = entry
            .tables
            .iter()
            .map(|(shard, tables)| (*shard, tables.crash()))
            .collect();
        let running = entry.running.take();
        entry.storage = storage;
        entry.tables = tables;
        entry.incarnation += 1;
        drop(running);
        self.stats.crashes += 1;
        self.note(format!("node {node} loses power ({mode:?})"));
        self.schedule(restart_after, Event::Restart { node });
    }

    /// Starts a node from what its disk kept: WAL recovery, each group's log recovered from it,
    /// each group opened over its tables.
    fn power_on(&mut self, node: NodeId) -> Result<(), String> {
        if self.nodes[node as usize - 1].running.is_some() {
            return Ok(());
        }
        let spread = self.scenario.election_spread.max(1) as usize;
        let entry = &self.nodes[node as usize - 1];
        let incarnation = entry.incarnation;
        let (wal, _) = Wal::open(entry.storage.clone(), wal_options())
            .map_err(|error| format!("node {node}: the WAL does not open: {error}"))?;
        let wal = Arc::new(wal);
        let mut recovered = store::recover(&wal).map_err(|error| {
            format!("node {node}: the replicated log does not recover: {error}")
        })?;
        let shards: Vec<(u32, MemoryTables)> = entry
            .tables
            .iter()
            .map(|(shard, tables)| (*shard, tables.clone()))
            .collect();
        let mut replicas = BTreeMap::new();
        // The node's clock: simulated time from a recent epoch, off by up to 50 ms (nodes'
        // physical clocks disagree), started afresh like a process's.
        let skew = self.random.random_range(0..=50_000u64);
        let micros = self.micros.clone();
        let clock = Arc::new(engine::clock::Hlc::with_physical(move || {
            SIM_EPOCH_MICROS + skew + micros.load(Ordering::Relaxed)
        }));
        for (shard, tables) in shards {
            let mut group = recovered.remove(&shard);
            if self.mutation == Mutation::ForgetVoteOnRestart
                && let Some(group) = &mut group
            {
                group.hard_state.vote = 0;
            }
            // Fixed per start (raft-rs would draw from its own thread's generator otherwise).
            let election = 8 + self.random.random_range(0..spread);
            let options = GroupOptions {
                election_ticks_min: election,
                election_ticks_max: election + 1,
                heartbeat_ticks: 2,
                engine: engine::EngineOptions {
                    clock: clock.clone(),
                    // Long enough for a read to be taken again at the next check.
                    versions_window: Duration::from_secs(60),
                    ..single_threaded_engine_options()
                },
                ..GroupOptions::default()
            };
            let voters: Vec<u64> = self.replicas_of(shard).into_iter().map(u64::from).collect();
            let mut group = Group::open(
                shard,
                u64::from(node),
                &voters,
                group,
                wal.clone(),
                Arc::new(tables),
                options,
                Arc::new(|| {}),
            )
            .map_err(|error| format!("node {node}: group {shard} does not open: {error}"))?;
            if incarnation == 0 && self.preferred_leader(shard) == node {
                group
                    .campaign()
                    .map_err(|error| format!("node {node}: campaign: {error}"))?;
            }
            replicas.insert(
                shard,
                Replica {
                    group,
                    serving: None,
                },
            );
            if let Some(record) = self.groups.get_mut(&shard) {
                record.checked.insert(node, 0);
            }
        }
        // Opening syncs what recovery repaired and each new group's first configuration.
        let storage = self.nodes[node as usize - 1].storage.clone();
        storage
            .sync()
            .map_err(|error| format!("node {node}: sync: {error}"))?;
        let synced = wal.next_lsn() - 1;
        self.nodes[node as usize - 1].running = Some(Running {
            wal,
            replicas,
            leaders: BTreeMap::new(),
            synced,
            sync_scheduled: false,
        });
        self.note(format!("node {node} starts (incarnation {incarnation})"));
        let phase =
            Duration::from_micros(self.random.random_range(1..=RAFT_TICK.as_micros() as u64));
        self.schedule(phase, Event::RaftTick { node, incarnation });
        self.schedule(NODE_TICK, Event::NodeTick { node, incarnation });
        self.process(node)
    }

    fn heal_everything(&mut self) -> Result<(), String> {
        self.healed = true;
        self.faulty = false;
        // Clients finish what they are sending and start nothing new: a client still without
        // an answer at the settle bound is stuck, not busy.
        self.started = self.started.max(self.scenario.transfers);
        self.cut.clear();
        self.note("faults heal: links restored, every node powered".into());
        for node in 1..=self.scenario.nodes {
            self.power_on(node)?;
        }
        Ok(())
    }

    // ---- Events. ----

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::ClientAnswer {
                client,
                attempt,
                reply,
            } => self.client_answer(client, attempt, reply),
            Event::ClientTimer { client, attempt } => {
                self.client_timer(client, attempt);
                Ok(())
            }
            Event::NodeTick { node, incarnation } => {
                if self.nodes[node as usize - 1].incarnation != incarnation {
                    return Ok(());
                }
                self.schedule(NODE_TICK, Event::NodeTick { node, incarnation });
                self.node_tick(node)?;
                self.process(node)
            }
            Event::RaftTick { node, incarnation } => {
                if self.nodes[node as usize - 1].incarnation != incarnation {
                    return Ok(());
                }
                // Jittered, so that the nodes' clocks drift apart and elections race.
                let period = RAFT_TICK.as_micros() as u64;
                let next = self.random.random_range(period * 9 / 10..=period * 11 / 10);
                self.schedule(
                    Duration::from_micros(next),
                    Event::RaftTick { node, incarnation },
                );
                // What a node's driver does when its connection to a group's leader closes
                // (`Group::leader_lost`): hinted when the leader's node is down, and now and
                // then wrongly, while the leader lives (a connection that failed for nothing).
                let up: Vec<bool> = self.nodes.iter().map(|n| n.running.is_some()).collect();
                let false_alarms: Vec<bool> = (0..=self.scenario.shards)
                    .map(|_| self.faulty && self.random.random_bool(FALSE_LEADER_LOSS_PROBABILITY))
                    .collect();
                if let Some(running) = self.running_mut(node) {
                    for (shard, replica) in running.replicas.iter_mut() {
                        let leader = replica.group.leader();
                        let down =
                            leader != 0 && !up.get(leader as usize - 1).copied().unwrap_or(true);
                        if leader != 0
                            && leader != u64::from(node)
                            && (down || false_alarms.get(*shard as usize).copied().unwrap_or(false))
                        {
                            replica.group.leader_lost(leader);
                        }
                        replica.group.tick();
                    }
                }
                self.process(node)
            }
            Event::Sync { node, incarnation } => {
                if self.nodes[node as usize - 1].incarnation != incarnation {
                    return Ok(());
                }
                self.sync(node)
            }
            Event::PowerOff { node, incarnation } => {
                if self.nodes[node as usize - 1].incarnation == incarnation
                    && self.nodes[node as usize - 1].running.is_some()
                {
                    let after = Duration::from_millis(self.random.random_range(1..30));
                    self.power_off(node, after);
                }
                Ok(())
            }
            Event::Restart { node } => self.power_on(node),
            Event::Heal { from, to } => {
                self.cut.remove(&(from, to));
                self.cut.remove(&(to, from));
                Ok(())
            }
            Event::Chaos => {
                if !self.healed {
                    self.chaos()?;
                    self.schedule(CHAOS_TICK, Event::Chaos);
                }
                Ok(())
            }
            Event::Read => {
                self.consistent_read()?;
                self.check_applied_states_agree()?;
                if !self.healed {
                    self.schedule(Duration::from_millis(100), Event::Read);
                }
                Ok(())
            }
        }
    }

    /// The node's WAL sync completes (or, struck, the node loses power instead): the Readies it
    /// covers are persisted.
    fn sync(&mut self, node: NodeId) -> Result<(), String> {
        if self.faulty && self.random.random_bool(self.scenario.strike_probability) {
            self.stats.strikes += 1;
            self.note(format!("node {node}: WAL sync struck"));
            let after = Duration::from_millis(self.random.random_range(10..2_000));
            self.power_off(node, after);
            return Ok(());
        }
        let entry = &mut self.nodes[node as usize - 1];
        let Some(running) = entry.running.as_mut() else {
            return Ok(());
        };
        running.sync_scheduled = false;
        // Everything appended so far is written (the driver waits for the WAL's writer after
        // each round): this sync covers all of it.
        let upto = running.wal.next_lsn() - 1;
        entry
            .storage
            .sync()
            .map_err(|error| format!("node {node}: sync: {error}"))?;
        running.synced = upto;
        self.stats.syncs += 1;
        self.process(node)
    }

    fn deliver(&mut self, from: Address, to: Address, message: Message) -> Result<(), String> {
        let node = match to {
            Address::Client(_) => unreachable!("clients get ClientAnswer events"),
            Address::Node(node, incarnation) => {
                let entry = &self.nodes[node as usize - 1];
                if entry.incarnation != incarnation || entry.running.is_none() {
                    return Ok(());
                }
                node
            }
        };
        if let Message::Raft { shard, message } = message {
            if let Some(replica) = self.replica_mut(node, shard) {
                // Through the wire form the node sends, and back.
                replica.group.step(wire::from_wire(wire::to_wire(&message)));
            }
        } else {
            self.deliver_to_shard(node, from, message)?;
        }
        self.process(node)
    }

    // ---- Raft. ----

    /// Drives every group of the node until none has work: Readies handled, their messages
    /// sent (those that wait for the WAL once the sync covers them), leaderships checked and
    /// served, engine answers released once committed.
    fn process(&mut self, node: NodeId) -> Result<(), String> {
        let before_sync = self.mutation == Mutation::AcknowledgeBeforeSync;
        for _round in 0..64 {
            let Some(running) = self.running_mut(node) else {
                return Ok(());
            };
            let shards: Vec<u32> = running.replicas.keys().copied().collect();
            let mut moved = false;
            let mut outgoing: Vec<(u32, RaftMessage)> = Vec::new();
            for shard in shards {
                let running = self.running_mut(node).expect("running");
                let replica = running.replicas.get_mut(&shard).expect("hosted");
                let output = replica
                    .group
                    .process()
                    .map_err(|error| format!("node {node}: group {shard}: {error}"))?;
                moved |= output.wait_for.is_some()
                    || output.closed
                    || output.opened.is_some()
                    || !output.messages.is_empty();
                outgoing.extend(output.messages.into_iter().map(|m| (shard, m)));
                moved |= self.after_process(node, shard)?;
            }
            let running = self.running_mut(node).expect("running");
            // The WAL's writer has written everything appended (its sync only takes note, see
            // `SimStorage`), so what a crash keeps depends on the simulated clock alone.
            let last = running.wal.next_lsn() - 1;
            running
                .wal
                .wait_durable(last)
                .map_err(|error| format!("node {node}: WAL: {error}"))?;
            let covered = if before_sync { last } else { running.synced };
            for (shard, replica) in &mut running.replicas {
                if replica
                    .group
                    .awaiting()
                    .is_some_and(|awaiting| awaiting <= covered)
                {
                    moved = true;
                    outgoing.extend(
                        replica
                            .group
                            .persisted(covered)
                            .into_iter()
                            .map(|m| (*shard, m)),
                    );
                }
            }
            let waiting = running
                .replicas
                .values()
                .any(|replica| replica.group.awaiting().is_some());
            if waiting && !running.sync_scheduled {
                running.sync_scheduled = true;
                let incarnation = self.nodes[node as usize - 1].incarnation;
                let after = Duration::from_micros(self.random.random_range(100..3_000));
                self.schedule(after, Event::Sync { node, incarnation });
            }
            self.send_raft(node, outgoing);
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    fn send_raft(&mut self, node: NodeId, messages: Vec<(u32, RaftMessage)>) {
        let from = self.node_address(node);
        for (shard, message) in messages {
            self.stats.raft_messages += 1;
            if message.msg_type == MessageType::MsgRequestVoteResponse as i32
                && !message.reject
                && self.faulty
                && self
                    .random
                    .random_bool(self.scenario.crash_after_vote_probability)
            {
                // The voter loses power right after its vote leaves (and comes back soon).
                self.stats.crashes_after_vote += 1;
                let incarnation = self.nodes[node as usize - 1].incarnation;
                let after = Duration::from_micros(self.random.random_range(1..3_000));
                self.schedule(after, Event::PowerOff { node, incarnation });
            }
            let Ok(to) = NodeId::try_from(message.to) else {
                continue;
            };
            if to == 0 || to > self.scenario.nodes {
                continue;
            }
            let to = self.node_address(to);
            self.send(
                from,
                to,
                Message::Raft {
                    shard,
                    message: Box::new(message),
                },
            );
        }
    }

    /// After a group's `process`: the Raft checks, the node's knowledge of the leader, the
    /// shard's service opened or closed with the engine, answers released. Returns whether
    /// anything moved.
    fn after_process(&mut self, node: NodeId, shard: u32) -> Result<bool, String> {
        self.check_group(node, shard)?;
        let replica = self.replica_mut(node, shard).expect("hosted");
        let leader = replica.group.leader();
        let engine = replica.group.engine().cloned();
        let term = replica.group.term();
        let stale = match (&replica.serving, &engine) {
            (Some(serving), Some(engine)) => !Arc::ptr_eq(&serving.engine, engine),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if leader != 0
            && let Some(running) = self.running_mut(node)
        {
            running.leaders.insert(shard, leader as NodeId);
        }
        let mut moved = false;
        if stale {
            self.stop_serving(node, shard)?;
            moved = true;
        }
        let replica = self.replica_mut(node, shard).expect("hosted");
        if replica.serving.is_none()
            && let Some(engine) = engine
        {
            self.start_serving(node, shard, term, engine)?;
            moved = true;
        }
        moved |= self.finish_ready(node, shard)?;
        Ok(moved)
    }

    /// At most one leader per term per group; every entry committed stays committed, at its
    /// index, in every replica's log, and every new leader holds all of them.
    fn check_group(&mut self, node: NodeId, shard: u32) -> Result<(), String> {
        let replica = self.replica(node, shard).expect("hosted");
        let group = &replica.group;
        let term = group.term();
        let leading = group.is_leader();
        let commit = group.commit_index();
        let record = self.groups.get(&shard).expect("a record per group");
        let checked = record.checked.get(&node).copied().unwrap_or(0);
        let new_leader = leading && !record.leaders.contains_key(&term);
        if leading
            && let Some(other) = record.leaders.get(&term)
            && *other != node
        {
            return Err(format!(
                "group {shard}: two leaders in term {term}: node {other} and node {node}"
            ));
        }
        // A new leader's log holds every entry committed so far (all of earlier terms). An entry
        // is known by its index and term: with one leader per term (checked above), two entries
        // with the same index and term are the same entry (Raft's log matching).
        let from = if new_leader { 1 } else { checked + 1 };
        let upto = if new_leader {
            commit.max(record.committed.len() as u64)
        } else {
            commit
        };
        let terms: Vec<(u64, Option<u64>)> = (from..=upto)
            .map(|index| (index, group.log_term(index)))
            .collect();
        let mut violation = None;
        let record = self.groups.get_mut(&shard).expect("a record per group");
        if new_leader {
            record.leaders.insert(term, node);
            self.stats.leaderships += 1;
        }
        for (index, held) in terms {
            match (record.committed.get(index as usize - 1), held) {
                (Some(committed), held) if held != Some(*committed) => {
                    violation.get_or_insert(format!(
                        "group {shard}: node {node} holds {held:?} at index {index}, where an entry \
                         of term {committed} was committed"
                    ));
                }
                (Some(_), _) => {}
                (None, Some(held))
                    if index as usize == record.committed.len() + 1 && index <= commit =>
                {
                    record.committed.push(held);
                }
                (None, _) => {}
            }
        }
        record.checked.insert(node, commit.max(checked));
        if new_leader {
            self.note(format!("group {shard}: node {node} leads term {term}"));
        }
        match violation {
            Some(violation) => Err(violation),
            None => Ok(()),
        }
    }

    /// The replica's engine opened: the shard is served here, with a coordinator that resends
    /// the decisions it finds unended and asks about the transactions in doubt.
    fn start_serving(
        &mut self,
        node: NodeId,
        shard: u32,
        term: u64,
        engine: Arc<SimEngine>,
    ) -> Result<(), String> {
        let mut unended = engine
            .unended_decisions()
            .map_err(|error| format!("node {node}: shard {shard}: unended decisions: {error}"))?;
        if self.mutation == Mutation::ForgetUnendedOnRestart {
            unended.clear();
        }
        let core = Coordinator::new(shard, limits(), unended, self.now);
        let in_doubt_since = engine
            .in_doubt()
            .iter()
            .map(|transaction| (transaction.id, Time::ZERO))
            .collect();
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let serving = Serving::new(epoch, engine, core, in_doubt_since);
        self.replica_mut(node, shard).expect("hosted").serving = Some(serving);
        self.note(format!(
            "node {node} serves shard {shard} (term {term}, epoch {epoch})"
        ));
        self.drive(node, shard)
    }

    /// The replica stopped leading (its engine closed): what was committed is answered, the
    /// rest is dropped; clients waiting here are told to go to the leader.
    fn stop_serving(&mut self, node: NodeId, shard: u32) -> Result<(), String> {
        self.finish_ready(node, shard)?;
        let leader = self
            .replica_mut(node, shard)
            .map(|replica| replica.group.leader() as NodeId)
            .filter(|leader| *leader != 0 && *leader != node);
        let Some(serving) = self.replica_mut(node, shard).and_then(|r| r.serving.take()) else {
            return Ok(());
        };
        self.note(format!(
            "node {node} stops serving shard {shard} (epoch {})",
            serving.epoch
        ));
        let mut waiting: Vec<(usize, u64)> = serving.clients.values().copied().collect();
        for pending in &serving.pending {
            if let Pending::Cash {
                client, attempt, ..
            } = pending
            {
                waiting.push((*client, *attempt));
            }
            if let Pending::Setup { .. } = pending {
                self.setup_left -= 1;
                self.setup_failure
                    .get_or_insert("the leader changed during setup".into());
            }
        }
        for (client, attempt) in waiting {
            self.answer_client(client, attempt, ClientReply::NotLeader { shard, leader });
        }
        Ok(())
    }
}

/// Runs one seed; on failure, shrinks it to the fewest client operations that still fail and
/// returns that run's failure.
pub fn run_seed(seed: u64, transfers: Option<usize>, mutation: Mutation) -> Result<Stats, Failure> {
    let mut scenario = Scenario::from_seed(seed);
    if let Some(transfers) = transfers {
        scenario.transfers = transfers;
    }
    let mut simulation = Simulation::new(seed, scenario.clone(), mutation);
    let Err(violation) = simulation.run() else {
        return Ok(simulation.stats);
    };
    let mut failure = Failure {
        seed,
        transfers: scenario.transfers,
        violation,
        trace: simulation.trace(),
    };
    // Shrink: the shortest prefix of the client load that still fails (runs are deterministic,
    // so a shorter run is the same run cut earlier).
    let (mut low, mut high) = (1, scenario.transfers);
    while low < high {
        let middle = (low + high) / 2;
        let mut shorter = scenario.clone();
        shorter.transfers = middle;
        let mut simulation = Simulation::new(seed, shorter, mutation);
        match simulation.run() {
            Err(violation) => {
                high = middle;
                failure = Failure {
                    seed,
                    transfers: middle,
                    violation,
                    trace: simulation.trace(),
                };
            }
            Ok(()) => low = middle + 1,
        }
    }
    Err(failure)
}
