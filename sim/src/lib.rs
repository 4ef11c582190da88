//! A deterministic simulation of a whole Tally cluster in one thread, from one seed.
//!
//! Each simulated node is the real coordinator core (`engine::coordinator`) over the real engine
//! (WAL, tables, lock manager, 2PC participant) on in-memory storage (`MemoryStorage`, which
//! keeps written and synced bytes apart, and `MemoryTables`, which keeps flushed and unflushed
//! state apart). The nodes talk through a simulated network that delays, reorders, duplicates
//! and drops messages and cuts links (one way or both). Time is a simulated clock: every event
//! sits in one queue ordered by (time, sequence number), so a run is a pure function of its
//! seed. Nodes crash at any event, losing every unsynced byte (sometimes keeping a torn prefix)
//! and their unflushed tables, and restart through the real recovery path (WAL recovery, engine
//! replay, the core reloading its unended decisions). An engine call can also be struck: its WAL
//! write or sync fails and the node loses power right after.
//!
//! Clients send transfers to the debit account's node and retry with the same id until they
//! hear an outcome; sometimes they resend an id already answered. Consistent reads of every
//! account are taken during the run (shared locks on every account of every node at one
//! instant). After the run the faults are healed and the cluster must settle within a bounded
//! simulated time; then every acknowledged outcome, every balance and every node's records are
//! checked against each other. See `Simulation::check_final`.
//!
//! What it does not cover: RocksDB itself (the tables are in memory), real sockets and framing
//! (`net` has its own tests), real time and threads (the node's driver), and the engine's lock
//! waits (local operations never wait here).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use engine::coordinator::{
    Answer, Asker, BatchId, ClientToken, Coordinator, CoordinatorLimits, DeliveryId, Effect,
    InquiryToken, Known, LogId, PrepareEntry, Refusal, Time, Transfer, TransferRequest,
    VoteFailure,
};
use engine::model::{
    AccountId, Amount, MovementId, MovementKind, MovementOutcome, NodeId, Outcome, TransferId,
};
use engine::tables::MemoryTables;
use engine::testing::{single_threaded_engine_options, small_segment_wal_options};
use engine::wal::{CrashMode, MemoryStorage, Wal, WalOptions};
use engine::{
    Engine, LocalTransferError, MovementError, PrepareRequest, ReadError, StorageError,
    TransferStatus, Vote,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type SimEngine = Engine<MemoryTables, Wal<MemoryStorage>>;

/// Every account starts with this much.
pub const INITIAL_BALANCE: Amount = 1_000;
/// Lines of the trace kept (and printed) for a failing run.
const TRACE_LINES: usize = 200;
/// How often each node looks at its timers (votes, resends, in-doubt transactions).
const NODE_TICK: Duration = Duration::from_millis(20);
/// A client resends after this long without an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(1_500);
/// A decision batch without an acknowledgement counts as undelivered after this long.
const DELIVERY_TIMEOUT: Duration = Duration::from_millis(500);
/// After the faults heal, everything must be decided and settled within this simulated time.
pub const SETTLE_BOUND: Duration = Duration::from_secs(60);
/// Faults heal after this simulated time even if the clients have not started every operation
/// (a bug can keep a client retrying forever, say a deposit behind a lock nobody releases): the
/// settle bound then reports it, instead of the run never ending.
pub const FAULT_PHASE_MAX: Duration = Duration::from_secs(120);

/// The shape of one run, drawn from its seed (each seed tries a different mix of faults).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub nodes: u32,
    pub accounts: u64,
    pub clients: usize,
    /// Transfers the clients start in all (retries and resends of answered ids not counted).
    pub transfers: usize,
    /// Fraction of picks that go to the first two accounts (hot accounts).
    pub hot_fraction: f64,
    /// Which accounts transfers touch.
    pub pattern: Pattern,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    pub delay_max: Duration,
    /// Chance per event that a random node loses power.
    pub crash_probability: f64,
    /// Chance that an engine call is struck (its write or sync fails, then power is lost).
    pub strike_probability: f64,
    /// Chance per event that a link is cut (one way or both) for a while.
    pub partition_probability: f64,
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
        Scenario {
            nodes: random.random_range(2..=4),
            accounts: random.random_range(4..=16),
            clients: random.random_range(1..=6),
            transfers: 60,
            hot_fraction: pick(&mut random, &[0.0, 0.0, 0.5, 0.9]),
            drop_probability: pick(&mut random, &[0.0, 0.01, 0.05, 0.2]),
            duplicate_probability: pick(&mut random, &[0.0, 0.02, 0.1]),
            delay_max: Duration::from_millis(pick(&mut random, &[1.0, 5.0, 50.0, 400.0]) as u64),
            crash_probability: pick(&mut random, &[0.0, 0.001, 0.005, 0.02]),
            strike_probability: pick(&mut random, &[0.0, 0.005, 0.02]),
            partition_probability: pick(&mut random, &[0.0, 0.002, 0.01]),
            in_doubt_grace: Duration::from_millis(pick(&mut random, &[200.0, 2_000.0]) as u64),
            pattern: [
                Pattern::Picked,
                Pattern::Picked,
                Pattern::ManyToOne,
                Pattern::OneToMany,
            ][random.random_range(0..4)],
        }
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
    /// Participants never ask about their in-doubt transactions.
    NeverInquire,
    /// The coordinator's driver never resends unacknowledged decisions after a restart.
    ForgetUnendedOnRestart,
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
        cash: Cash,
    },
    Prepare {
        from: NodeId,
        batch: BatchId,
        entries: Vec<PrepareEntry>,
    },
    Votes {
        from: NodeId,
        batch: BatchId,
        votes: Vec<(TransferId, Vote)>,
    },
    Decisions {
        from: NodeId,
        delivery: DeliveryId,
        decisions: Vec<(TransferId, Outcome)>,
    },
    Acks {
        delivery: DeliveryId,
        ids: Vec<TransferId>,
    },
    Inquiry {
        from: NodeId,
        ids: Vec<TransferId>,
    },
    InquiryAnswer {
        from: NodeId,
        decisions: Vec<(TransferId, Outcome)>,
    },
}

/// Where a message goes: a node (one incarnation of it: messages to an earlier incarnation die
/// with its connections) or a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Address {
    Node(NodeId, u64),
    Client(usize),
}

/// The result of an effect carried out by a node, reported to its core a little later.
#[derive(Debug)]
enum Completion {
    LookedUp(Vec<(TransferId, Result<Known, Arc<StorageError>>)>),
    LocalDone(TransferId, Answer),
    Votes(BatchId, Result<Vec<(TransferId, Vote)>, VoteFailure>),
    Logged(LogId, Result<(), Arc<StorageError>>),
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: Address,
        to: Address,
        message: Message,
    },
    Complete {
        node: NodeId,
        incarnation: u64,
        completion: Completion,
    },
    ClientAnswer {
        client: usize,
        attempt: u64,
        id: TransferId,
        answer: Answer,
    },
    ClientCashAnswer {
        client: usize,
        attempt: u64,
        id: MovementId,
        answer: Result<MovementOutcome, CashRefusal>,
    },
    ClientTimer {
        client: usize,
        attempt: u64,
    },
    NodeTick {
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
    Read,
}

/// A node while it has power.
struct Running {
    engine: SimEngine,
    core: Coordinator,
    next_token: u64,
    /// Clients waiting on the core: token -> (client, attempt).
    clients: BTreeMap<ClientToken, (usize, u64)>,
    /// Inquiries from participants: token -> who asked (this node itself for its own).
    inquiries: BTreeMap<InquiryToken, NodeId>,
    /// Decision batches sent and not yet answered, with their deadline.
    deliveries: BTreeMap<DeliveryId, Time>,
    /// When each in-doubt transaction was first seen.
    in_doubt_since: BTreeMap<TransferId, Time>,
}

struct Node {
    id: NodeId,
    storage: MemoryStorage,
    tables: MemoryTables,
    running: Option<Running>,
    incarnation: u64,
}

/// A deposit or withdrawal, idempotent by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cash {
    id: MovementId,
    account: AccountId,
    kind: MovementKind,
    amount: Amount,
}

/// Why a deposit or withdrawal got no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CashRefusal {
    /// The id was used before with other content: a bug for a resend of the same request.
    Duplicate,
    /// Nothing was decided (a lock conflict, a storage failure): the same id again, later.
    Retry(String),
}

/// What a client is sending.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Transfer(TransferId, Transfer),
    Cash(Cash),
}

/// What one client is doing.
#[derive(Debug, Clone)]
struct Client {
    /// The operation being sent; `attempt` numbers its latest send.
    current: Option<Operation>,
    attempt: u64,
    retries: u32,
}

/// Everything the clients were told, to check against the nodes.
#[derive(Debug, Default)]
struct Ledger {
    transfers: BTreeMap<TransferId, Transfer>,
    heard: BTreeMap<TransferId, Outcome>,
    cash: BTreeMap<MovementId, Cash>,
    cash_heard: BTreeMap<MovementId, MovementOutcome>,
}

/// Counts of what happened, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub messages_sent: u64,
    pub messages_dropped: u64,
    pub messages_duplicated: u64,
    pub crashes: u64,
    pub strikes: u64,
    pub torn_crashes: u64,
    pub partitions: u64,
    pub transfers_committed: u64,
    pub transfers_aborted: u64,
    pub resends_of_answered: u64,
    pub deposits_and_withdrawals_applied: u64,
    pub deposits_and_withdrawals_refused: u64,
    pub consistent_reads: u64,
    pub reads_refused: u64,
    pub settle_time: Duration,
}

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
    ledger: Ledger,
    started: usize,
    next_transfer: TransferId,
    next_cash: MovementId,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    healed: bool,
    trace: VecDeque<String>,
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
    small_segment_wal_options(8192)
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
            clients: vec![
                Client {
                    current: None,
                    attempt: 0,
                    retries: 0,
                };
                scenario.clients
            ],
            ledger: Ledger::default(),
            started: 0,
            next_transfer: 1,
            next_cash: 1 << 64,
            cut: BTreeSet::new(),
            healed: false,
            trace: VecDeque::new(),
            stats: Stats::default(),
            scenario,
        };
        for id in 1..=simulation.scenario.nodes {
            simulation.nodes.push(Node {
                id,
                storage: MemoryStorage::new(),
                tables: MemoryTables::new(),
                running: None,
                incarnation: 0,
            });
        }
        simulation
    }

    /// Runs the scenario to the end and checks it; the first broken invariant fails the run.
    pub fn run(&mut self) -> Result<(), String> {
        for node in 1..=self.scenario.nodes {
            self.power_on(node)?;
        }
        for account in 1..=self.scenario.accounts {
            let engine = self.engine(self.owner(account)).expect("just started");
            engine
                .create_account(account, None, 0, 0)
                .map_err(|error| format!("setup: {error}"))?;
            // Funding ids from 2^120 up, clear of the transfer ids (from 1), since a node keeps one
            // namespace for both.
            engine
                .deposit((1 << 120) | u128::from(account), account, INITIAL_BALANCE)
                .map_err(|error| format!("setup: {error}"))?;
        }
        for client in 0..self.scenario.clients {
            self.next_operation(client);
        }
        self.schedule(Duration::from_millis(50), Event::Read);
        let mut heal_started: Option<Time> = None;
        loop {
            if heal_started.is_none()
                && (self.started >= self.scenario.transfers
                    || self.now > Time::ZERO + FAULT_PHASE_MAX)
            {
                self.heal_everything()?;
                heal_started = Some(self.now);
            }
            if let Some(start) = heal_started {
                if self.settled() {
                    self.stats.settle_time = self.now.elapsed() - start.elapsed();
                    break;
                }
                if self.now > start + SETTLE_BOUND {
                    return Err(format!(
                        "liveness: not settled {SETTLE_BOUND:?} after the faults healed: {}",
                        self.unsettled()
                    ));
                }
            }
            let Some(Reverse((time, _, index))) = self.queue.pop() else {
                return Err(format!(
                    "no event left but not settled: {}",
                    self.unsettled()
                ));
            };
            self.now = time;
            let event = self.events.remove(&index).expect("queued");
            self.stats.events += 1;
            self.handle(event)?;
            if !self.healed {
                self.maybe_inject_faults()?;
            }
        }
        self.check_final()
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

    fn owner(&self, account: AccountId) -> NodeId {
        (account % u64::from(self.scenario.nodes)) as NodeId + 1
    }

    fn engine(&self, node: NodeId) -> Option<&SimEngine> {
        self.nodes[node as usize - 1]
            .running
            .as_ref()
            .map(|running| &running.engine)
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

    // ---- The network. ----

    fn send(&mut self, from: Address, to: Address, message: Message) {
        self.stats.messages_sent += 1;
        if let (Address::Node(a, _), Address::Node(b, _)) = (from, to)
            && self.cut.contains(&(a, b))
        {
            self.stats.messages_dropped += 1;
            return;
        }
        if !self.healed && self.random.random_bool(self.scenario.drop_probability) {
            self.stats.messages_dropped += 1;
            return;
        }
        if !self.healed && self.random.random_bool(self.scenario.duplicate_probability) {
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

    fn node_address(&self, node: NodeId) -> Address {
        Address::Node(node, self.nodes[node as usize - 1].incarnation)
    }

    // ---- Faults. ----

    fn maybe_inject_faults(&mut self) -> Result<(), String> {
        if self.random.random_bool(self.scenario.crash_probability) {
            let node = self.random.random_range(1..=self.scenario.nodes);
            if self.nodes[node as usize - 1].running.is_some() {
                self.power_off(node);
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
        Ok(())
    }

    fn power_off(&mut self, node: NodeId) {
        let mode = if self.random.random_bool(0.5) {
            CrashMode::DropUnsynced
        } else {
            self.stats.torn_crashes += 1;
            CrashMode::KeepUnsyncedPrefix {
                seed: self.random.random(),
            }
        };
        let entry = &mut self.nodes[node as usize - 1];
        // The images first: dropping the engine would write and sync what it queued.
        let storage = entry.storage.crash(mode);
        let tables = entry.tables.crash();
        entry.running = None;
        entry.storage = storage;
        entry.tables = tables;
        entry.incarnation += 1;
        self.stats.crashes += 1;
        self.note(format!("node {node} loses power ({mode:?})"));
        let after = Duration::from_millis(self.random.random_range(10..2_000));
        self.schedule(after, Event::Restart { node });
    }

    /// Starts a node from what its storage kept: WAL recovery, engine replay, then a core that
    /// resends the unended decisions.
    fn power_on(&mut self, node: NodeId) -> Result<(), String> {
        let entry = &mut self.nodes[node as usize - 1];
        if entry.running.is_some() {
            return Ok(());
        }
        let (wal, _) = Wal::open(entry.storage.clone(), wal_options())
            .map_err(|error| format!("node {node}: the WAL does not open: {error}"))?;
        let (engine, report) =
            Engine::open(wal, entry.tables.clone(), single_threaded_engine_options())
                .map_err(|error| format!("node {node}: the engine does not open: {error}"))?;
        let mut unended = engine
            .unended_decisions()
            .map_err(|error| format!("node {node}: unended decisions: {error}"))?;
        if self.mutation == Mutation::ForgetUnendedOnRestart {
            unended.clear();
        }
        let core = Coordinator::new(node, limits(), unended, self.now);
        let in_doubt_since = report
            .in_doubt
            .iter()
            .map(|transaction| (transaction.id, Time::ZERO))
            .collect();
        entry.running = Some(Running {
            engine,
            core,
            next_token: 0,
            clients: BTreeMap::new(),
            inquiries: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            in_doubt_since,
        });
        let incarnation = entry.incarnation;
        self.note(format!(
            "node {node} starts (incarnation {incarnation}, {} in doubt)",
            report.in_doubt.len()
        ));
        self.schedule(NODE_TICK, Event::NodeTick { node, incarnation });
        self.drive(node)
    }

    fn heal_everything(&mut self) -> Result<(), String> {
        self.healed = true;
        self.cut.clear();
        self.note("faults heal: links restored, every node powered".into());
        for node in 1..=self.scenario.nodes {
            self.power_on(node)?;
        }
        Ok(())
    }

    /// Runs one state-changing engine call at `node`; it may be struck (the call's WAL write or
    /// sync fails, and the node loses power right after). `None` when the node lost power.
    fn call<R>(
        &mut self,
        node: NodeId,
        what: &str,
        run: impl FnOnce(&SimEngine) -> R,
    ) -> Option<R> {
        let strike = !self.healed && self.random.random_bool(self.scenario.strike_probability);
        let write = self.random.random_bool(0.5);
        let entry = &self.nodes[node as usize - 1];
        let running = entry.running.as_ref()?;
        if !strike {
            return Some(run(&running.engine));
        }
        if write {
            entry.storage.fail_write_after(1);
        } else {
            entry.storage.fail_sync_after(1);
        }
        drop(run(&running.engine));
        self.stats.strikes += 1;
        self.note(format!(
            "node {node}: {what} struck ({} fails)",
            if write { "write" } else { "sync" }
        ));
        self.power_off(node);
        None
    }

    // ---- Events. ----

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver { from, to, message } => self.deliver(from, to, message),
            Event::Complete {
                node,
                incarnation,
                completion,
            } => {
                if self.nodes[node as usize - 1].incarnation != incarnation {
                    return Ok(());
                }
                self.complete(node, completion)?;
                self.drive(node)
            }
            Event::ClientAnswer {
                client,
                attempt,
                id,
                answer,
            } => self.client_answer(client, attempt, id, answer),
            Event::ClientCashAnswer {
                client,
                attempt,
                id,
                answer,
            } => self.client_cash_answer(client, attempt, id, answer),
            Event::ClientTimer { client, attempt } => {
                if self.clients[client].attempt == attempt && self.clients[client].current.is_some()
                {
                    self.send_current(client);
                }
                Ok(())
            }
            Event::NodeTick { node, incarnation } => {
                if self.nodes[node as usize - 1].incarnation != incarnation {
                    return Ok(());
                }
                self.schedule(NODE_TICK, Event::NodeTick { node, incarnation });
                self.node_tick(node)
            }
            Event::Restart { node } => self.power_on(node),
            Event::Heal { from, to } => {
                self.cut.remove(&(from, to));
                self.cut.remove(&(to, from));
                Ok(())
            }
            Event::Read => {
                self.consistent_read()?;
                if !self.healed {
                    self.schedule(Duration::from_millis(100), Event::Read);
                }
                Ok(())
            }
        }
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
        match message {
            Message::Transfer {
                client,
                attempt,
                request,
            } => {
                let running = self.running(node);
                running.next_token += 1;
                let token = ClientToken(running.next_token);
                running.clients.insert(token, (client, attempt));
                running.core.transfer(token, request);
            }
            Message::Cash {
                client,
                attempt,
                cash,
            } => {
                let Some(result) =
                    self.call(node, "deposit or withdrawal", |engine| match cash.kind {
                        MovementKind::Deposit => engine.deposit(cash.id, cash.account, cash.amount),
                        MovementKind::Withdrawal => {
                            engine.withdraw(cash.id, cash.account, cash.amount)
                        }
                    })
                else {
                    return Ok(());
                };
                let answer = match result {
                    Ok(outcome) => Ok(outcome),
                    Err(MovementError::DuplicateWithDifferentContent(_)) => {
                        Err(CashRefusal::Duplicate)
                    }
                    Err(other) => Err(CashRefusal::Retry(other.to_string())),
                };
                // Over the network: the answer may be lost.
                if !self.healed && self.random.random_bool(self.scenario.drop_probability) {
                    self.stats.messages_dropped += 1;
                } else {
                    let delay = self.delay();
                    self.schedule(
                        delay,
                        Event::ClientCashAnswer {
                            client,
                            attempt,
                            id: cash.id,
                            answer,
                        },
                    );
                }
            }
            Message::Prepare {
                from: coordinator,
                batch,
                entries,
            } => {
                let requests: Vec<PrepareRequest> = entries
                    .iter()
                    .map(|entry| entry.request(coordinator))
                    .collect();
                let Some(votes) = self.call(node, "prepare", |engine| engine.prepare(&requests))
                else {
                    return Ok(());
                };
                let votes = votes.map_err(|error| format!("node {node}: prepare: {error}"))?;
                let votes = requests
                    .iter()
                    .map(|request| request.id)
                    .zip(votes)
                    .collect();
                let reply = Message::Votes {
                    from: node,
                    batch,
                    votes,
                };
                let me = self.node_address(node);
                self.send(me, from, reply);
            }
            Message::Votes { from, batch, votes } => {
                self.running(node).core.votes(batch, from, Ok(votes));
            }
            Message::Decisions {
                from: coordinator,
                delivery,
                decisions,
            } => {
                let Some(ids) = self.apply_decisions(node, coordinator, &decisions)? else {
                    return Ok(());
                };
                let me = self.node_address(node);
                self.send(me, from, Message::Acks { delivery, ids });
            }
            Message::Acks { delivery, ids } => {
                let running = self.running(node);
                if running.deliveries.remove(&delivery).is_some() {
                    running.core.delivered(delivery, ids);
                }
            }
            Message::Inquiry { from: asker, ids } => {
                let running = self.running(node);
                running.next_token += 1;
                let token = InquiryToken(running.next_token);
                running.inquiries.insert(token, asker);
                running.core.inquiry(token, ids, Asker::OtherNode);
            }
            Message::InquiryAnswer {
                from: coordinator,
                decisions,
            } => {
                self.apply_decisions(node, coordinator, &decisions)?;
            }
        }
        self.drive(node)
    }

    fn running(&mut self, node: NodeId) -> &mut Running {
        self.nodes[node as usize - 1]
            .running
            .as_mut()
            .expect("the node is running")
    }

    /// A participant applies decisions; `None` if it lost power meanwhile. A participant that
    /// refuses a decision (a commit for a transaction it never prepared, or one it aborted) is a
    /// broken invariant.
    fn apply_decisions(
        &mut self,
        node: NodeId,
        coordinator: NodeId,
        decisions: &[(TransferId, Outcome)],
    ) -> Result<Option<Vec<TransferId>>, String> {
        if decisions.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let Some(results) = self.call(node, "apply decisions", |engine| {
            engine.decide_from(coordinator, decisions)
        }) else {
            return Ok(None);
        };
        let results = results.map_err(|error| format!("node {node}: decide: {error}"))?;
        let mut applied = Vec::new();
        for ((id, outcome), result) in decisions.iter().zip(results) {
            match result {
                Ok(()) => applied.push(*id),
                Err(error) => {
                    return Err(format!(
                        "node {node} refuses {outcome:?} for transfer {id} from node {coordinator}: {error}"
                    ));
                }
            }
        }
        Ok(Some(applied))
    }

    fn complete(&mut self, node: NodeId, completion: Completion) -> Result<(), String> {
        let now = self.now;
        let running = self.running(node);
        match completion {
            Completion::LookedUp(results) => {
                for (id, known) in results {
                    running.core.looked_up(id, known);
                }
            }
            Completion::LocalDone(id, answer) => running.core.local_done(id, answer),
            Completion::Votes(batch, votes) => running.core.votes(batch, node, votes),
            Completion::Logged(log, result) => running.core.decisions_logged(log, now, result),
        }
        Ok(())
    }

    fn later(&mut self, node: NodeId, completion: Completion) {
        let incarnation = self.nodes[node as usize - 1].incarnation;
        let after = Duration::from_micros(self.random.random_range(0..2_000));
        self.schedule(
            after,
            Event::Complete {
                node,
                incarnation,
                completion,
            },
        );
    }

    /// Takes the core's ready effects and carries them out; engine work completes a little later
    /// (another event), as it would on the node's blocking pool.
    fn drive(&mut self, node: NodeId) -> Result<(), String> {
        let now = self.now;
        let Some(running) = self.nodes[node as usize - 1].running.as_mut() else {
            return Ok(());
        };
        running.core.tick(now);
        let effects = running.core.take_ready(now);
        for effect in effects {
            if self.nodes[node as usize - 1].running.is_none() {
                // Lost power while carrying out an earlier effect: the rest never happens.
                return Ok(());
            }
            self.carry_out(node, effect)?;
        }
        Ok(())
    }

    fn carry_out(&mut self, node: NodeId, effect: Effect) -> Result<(), String> {
        let me = self.node_address(node);
        match effect {
            Effect::LookUp { ids } => {
                let engine = self.engine(node).expect("running");
                let results = ids
                    .into_iter()
                    .map(|id| (id, engine.look_up(id).map_err(Arc::new)))
                    .collect();
                self.later(node, Completion::LookedUp(results));
            }
            Effect::RunLocal { id, transfer } => {
                let Some(result) = self.call(node, "local transfer", |engine| {
                    engine.local_transfer(id, transfer.debit, transfer.credit, transfer.amount)
                }) else {
                    return Ok(());
                };
                let answer = result.map_err(|error| match error {
                    LocalTransferError::DuplicateWithDifferentContent(_) => {
                        Refusal::DuplicateWithDifferentContent
                    }
                    LocalTransferError::Storage(error) => Refusal::Storage(Arc::new(error)),
                    other => Refusal::Local(Arc::new(other)),
                });
                self.later(node, Completion::LocalDone(id, answer));
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } if participant == node => {
                let requests: Vec<PrepareRequest> =
                    entries.iter().map(|entry| entry.request(node)).collect();
                let Some(votes) = self.call(node, "coordinator prepare", |engine| {
                    engine.prepare(&requests)
                }) else {
                    return Ok(());
                };
                let votes = votes
                    .map(|votes| {
                        requests
                            .iter()
                            .map(|request| request.id)
                            .zip(votes)
                            .collect()
                    })
                    .map_err(|error| VoteFailure::Storage(Arc::new(error)));
                self.later(node, Completion::Votes(batch, votes));
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } => {
                let to = self.node_address(participant);
                self.send(
                    me,
                    to,
                    Message::Prepare {
                        from: node,
                        batch,
                        entries,
                    },
                );
            }
            Effect::LogDecisions {
                log,
                mut decisions,
                mut local,
            } => {
                if self.mutation == Mutation::CommitOnNoVote
                    && let Some(position) = decisions.iter().position(|decision| {
                        decision.outcome != Outcome::Committed && decision.transfer.is_some()
                    })
                {
                    decisions[position].outcome = Outcome::Committed;
                    for (id, outcome) in &mut local {
                        if *id == decisions[position].id {
                            *outcome = Outcome::Committed;
                        }
                    }
                }
                let Some(result) = self.call(node, "log decisions", |engine| {
                    engine.log_decisions_and_decide(node, decisions, &local)
                }) else {
                    return Ok(());
                };
                let result = match result {
                    Ok(results) => {
                        for ((id, outcome), result) in local.iter().zip(results) {
                            if let Err(error) = result {
                                return Err(format!(
                                    "node {node} refuses its own {outcome:?} for transfer {id}: {error}"
                                ));
                            }
                        }
                        Ok(())
                    }
                    Err(error) => Err(Arc::new(error)),
                };
                self.later(node, Completion::Logged(log, result));
            }
            Effect::Answer { client, id, answer } => {
                let running = self.running(node);
                if let Some((client_index, attempt)) = running.clients.remove(&client) {
                    // Over the network: the answer may be lost.
                    if !self.healed && self.random.random_bool(self.scenario.drop_probability) {
                        self.stats.messages_dropped += 1;
                    } else {
                        let delay = self.delay();
                        self.schedule(
                            delay,
                            Event::ClientAnswer {
                                client: client_index,
                                attempt,
                                id,
                                answer,
                            },
                        );
                    }
                }
            }
            Effect::AnswerInquiry { inquiry, decisions } => {
                let asker = self
                    .running(node)
                    .inquiries
                    .remove(&inquiry)
                    .expect("inquiries are answered once");
                if asker == node {
                    self.apply_decisions(node, node, &decisions)?;
                } else {
                    let to = self.node_address(asker);
                    self.send(
                        me,
                        to,
                        Message::InquiryAnswer {
                            from: node,
                            decisions,
                        },
                    );
                }
            }
            Effect::SendDecisions {
                delivery,
                participant,
                decisions,
            } => {
                let deadline = self.now + DELIVERY_TIMEOUT;
                self.running(node).deliveries.insert(delivery, deadline);
                let to = self.node_address(participant);
                self.send(
                    me,
                    to,
                    Message::Decisions {
                        from: node,
                        delivery,
                        decisions,
                    },
                );
            }
            Effect::LogEnded { ids } => {
                if let Some(result) =
                    self.call(node, "log ended", |engine| engine.end_decisions(&ids))
                {
                    result.map_err(|error| format!("node {node}: end decisions: {error}"))?;
                }
            }
        }
        Ok(())
    }

    /// Timers of a node: undelivered decision batches time out; in-doubt transactions past the
    /// grace are asked about.
    fn node_tick(&mut self, node: NodeId) -> Result<(), String> {
        let now = self.now;
        let grace = self.scenario.in_doubt_grace;
        let running = self.running(node);
        let late: Vec<DeliveryId> = running
            .deliveries
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(delivery, _)| *delivery)
            .collect();
        for delivery in late {
            running.deliveries.remove(&delivery);
            running.core.delivered(delivery, Vec::new());
        }
        let in_doubt = running.engine.in_doubt();
        running
            .in_doubt_since
            .retain(|id, _| in_doubt.iter().any(|transaction| transaction.id == *id));
        let mut due: BTreeMap<NodeId, Vec<TransferId>> = BTreeMap::new();
        for transaction in &in_doubt {
            let since = *running.in_doubt_since.entry(transaction.id).or_insert(now);
            if now.elapsed().saturating_sub(since.elapsed()) >= grace {
                due.entry(transaction.coordinator)
                    .or_default()
                    .push(transaction.id);
            }
        }
        if self.mutation == Mutation::NeverInquire {
            due.clear();
        }
        let me = self.node_address(node);
        for (coordinator, ids) in due {
            if coordinator == node {
                let running = self.running(node);
                running.next_token += 1;
                let token = InquiryToken(running.next_token);
                running.inquiries.insert(token, node);
                running.core.inquiry(token, ids, Asker::ThisNode);
            } else {
                let to = self.node_address(coordinator);
                self.send(me, to, Message::Inquiry { from: node, ids });
            }
        }
        self.drive(node)
    }

    // ---- Clients. ----

    /// An account other than `account`, uniformly (scenarios have at least four).
    fn pick_other_than(&mut self, account: AccountId) -> AccountId {
        loop {
            let other = self.random.random_range(1..=self.scenario.accounts);
            if other != account {
                return other;
            }
        }
    }

    fn pick_account(&mut self) -> AccountId {
        let accounts = self.scenario.accounts;
        if self.random.random_bool(self.scenario.hot_fraction) {
            self.random.random_range(1..=2.min(accounts))
        } else {
            self.random.random_range(1..=accounts)
        }
    }

    fn next_operation(&mut self, client: usize) {
        if self.started >= self.scenario.transfers {
            self.clients[client].current = None;
            return;
        }
        // Sometimes resend an id that was already answered: it must get the same answer.
        if !self.ledger.heard.is_empty() && self.random.random_bool(0.1) {
            let index = self.random.random_range(0..self.ledger.heard.len());
            let id = *self.ledger.heard.keys().nth(index).expect("in range");
            let transfer = self.ledger.transfers[&id];
            self.stats.resends_of_answered += 1;
            self.clients[client].current = Some(Operation::Transfer(id, transfer));
        } else if self.random.random_bool(0.2) {
            // A deposit or a withdrawal (refused when funds are short), idempotent by its id.
            let kind = if self.random.random_bool(0.5) {
                MovementKind::Deposit
            } else {
                MovementKind::Withdrawal
            };
            let cash = Cash {
                id: self.next_cash,
                account: self.pick_account(),
                kind,
                amount: self.random.random_range(1..=INITIAL_BALANCE / 4),
            };
            self.next_cash += 1;
            self.started += 1;
            self.ledger.cash.insert(cash.id, cash);
            self.clients[client].current = Some(Operation::Cash(cash));
        } else {
            let (debit, credit) = match self.scenario.pattern {
                Pattern::ManyToOne => (self.pick_other_than(1), 1),
                Pattern::OneToMany => (1, self.pick_other_than(1)),
                Pattern::Picked => {
                    let debit = self.pick_account();
                    let credit = match self.pick_account() {
                        credit if credit != debit => credit,
                        _ => self.pick_other_than(debit),
                    };
                    (debit, credit)
                }
            };
            let amount = self.random.random_range(1..=INITIAL_BALANCE / 2);
            let id = self.next_transfer;
            self.next_transfer += 1;
            self.started += 1;
            let transfer = Transfer {
                debit,
                credit,
                amount,
            };
            self.ledger.transfers.insert(id, transfer);
            self.clients[client].current = Some(Operation::Transfer(id, transfer));
        }
        self.clients[client].retries = 0;
        self.send_current(client);
    }

    fn send_current(&mut self, client: usize) {
        let operation = self.clients[client].current.expect("a current operation");
        self.clients[client].attempt += 1;
        let attempt = self.clients[client].attempt;
        let (id, transfer) = match operation {
            Operation::Transfer(id, transfer) => (id, transfer),
            Operation::Cash(cash) => {
                let to = self.node_address(self.owner(cash.account));
                let message = Message::Cash {
                    client,
                    attempt,
                    cash,
                };
                self.send(Address::Client(client), to, message);
                self.schedule(CLIENT_TIMEOUT, Event::ClientTimer { client, attempt });
                return;
            }
        };
        let owner = self.owner(transfer.debit);
        let request = TransferRequest {
            id,
            transfer,
            credit_node: self.owner(transfer.credit),
        };
        let to = self.node_address(owner);
        self.send(
            Address::Client(client),
            to,
            Message::Transfer {
                client,
                attempt,
                request,
            },
        );
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimer { client, attempt });
    }

    fn client_answer(
        &mut self,
        client: usize,
        attempt: u64,
        id: TransferId,
        answer: Answer,
    ) -> Result<(), String> {
        let Some(Operation::Transfer(current, _)) = self.clients[client].current else {
            // An answer to an earlier send: it still counts.
            if let Ok(outcome) = answer {
                self.hear(id, outcome)?;
            }
            return Ok(());
        };
        if current != id || self.clients[client].attempt != attempt {
            // An answer to an earlier send of the same id still counts: check it.
            if let Ok(outcome) = answer {
                self.hear(id, outcome)?;
            }
            return Ok(());
        }
        match answer {
            Ok(outcome) => {
                self.hear(id, outcome)?;
                self.next_operation(client);
            }
            Err(Refusal::DuplicateWithDifferentContent) => {
                return Err(format!(
                    "transfer {id}: a retry with the same content was refused as a duplicate"
                ));
            }
            Err(refusal) => {
                // Refused for now (overloaded, a participant's backlog, a storage failure):
                // the same id again, later.
                self.retry_later(client, format!("transfer {id} refused: {refusal:?}"));
            }
        }
        Ok(())
    }

    /// Nothing was decided for the client's current operation: it sends the same again after
    /// a backoff that doubles per retry (10 ms to 640 ms).
    fn retry_later(&mut self, client: usize, why: String) {
        self.clients[client].retries += 1;
        let backoff = Duration::from_millis(10 << self.clients[client].retries.min(6));
        self.note(format!("client {client}: {why}"));
        self.clients[client].attempt += 1;
        let attempt = self.clients[client].attempt;
        self.schedule(backoff, Event::ClientTimer { client, attempt });
    }

    fn hear(&mut self, id: TransferId, outcome: Outcome) -> Result<(), String> {
        match self.ledger.heard.get(&id) {
            Some(earlier) if *earlier != outcome => Err(format!(
                "transfer {id}: a client heard {earlier:?}, now {outcome:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.ledger.heard.insert(id, outcome);
                if outcome == Outcome::Committed {
                    self.stats.transfers_committed += 1;
                } else {
                    self.stats.transfers_aborted += 1;
                }
                self.note(format!("transfer {id}: heard {outcome:?}"));
                Ok(())
            }
        }
    }

    fn client_cash_answer(
        &mut self,
        client: usize,
        attempt: u64,
        id: MovementId,
        answer: Result<MovementOutcome, CashRefusal>,
    ) -> Result<(), String> {
        let current = match self.clients[client].current {
            Some(Operation::Cash(cash)) => Some(cash.id),
            _ => None,
        };
        if current != Some(id) || self.clients[client].attempt != attempt {
            if let Ok(outcome) = answer {
                self.hear_cash(id, outcome)?;
            }
            return Ok(());
        }
        match answer {
            Ok(outcome) => {
                self.hear_cash(id, outcome)?;
                self.next_operation(client);
            }
            Err(CashRefusal::Duplicate) => {
                return Err(format!(
                    "deposit or withdrawal {id}: a resend of the same request was refused as a duplicate"
                ));
            }
            Err(CashRefusal::Retry(why)) => {
                self.retry_later(client, format!("movement {id} not done: {why}"));
            }
        }
        Ok(())
    }

    /// A client hears a deposit's or withdrawal's outcome: the same as any heard before.
    fn hear_cash(&mut self, id: MovementId, outcome: MovementOutcome) -> Result<(), String> {
        match self.ledger.cash_heard.get(&id) {
            Some(earlier) if *earlier != outcome => Err(format!(
                "movement {id}: a client heard {earlier:?}, now {outcome:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.ledger.cash_heard.insert(id, outcome);
                match outcome {
                    MovementOutcome::Applied { .. } => {
                        self.stats.deposits_and_withdrawals_applied += 1
                    }
                    MovementOutcome::Refused(_) => self.stats.deposits_and_withdrawals_refused += 1,
                }
                self.note(format!("movement {id}: heard {outcome:?}"));
                Ok(())
            }
        }
    }

    // ---- Checks. ----

    /// A consistent read of every account, taken at one instant with shared locks on every
    /// account of every node (refused while any transfer is between its first and last change:
    /// a prepared transaction holds its locks until its decision is applied). The total must be
    /// what was deposited, and no balance may exceed it.
    fn consistent_read(&mut self) -> Result<(), String> {
        if self.nodes.iter().any(|node| node.running.is_none()) {
            return Ok(());
        }
        let mut held = Vec::new();
        let mut balances = Vec::new();
        let mut refused = false;
        for node in 1..=self.scenario.nodes {
            let accounts: Vec<AccountId> = (1..=self.scenario.accounts)
                .filter(|account| self.owner(*account) == node)
                .collect();
            let engine = self.engine(node).expect("running");
            match engine.lock_and_read(&accounts, Duration::ZERO) {
                Ok((locks, read)) => {
                    held.push((node, locks));
                    balances.extend(accounts.into_iter().zip(read));
                }
                Err(ReadError::LockConflict { .. }) => {
                    refused = true;
                    break;
                }
                Err(error) => return Err(format!("node {node}: consistent read: {error}")),
            }
        }
        for (node, locks) in held {
            self.engine(node).expect("running").release_locks(locks);
        }
        if refused {
            self.stats.reads_refused += 1;
            return Ok(());
        }
        self.stats.consistent_reads += 1;
        // What came in minus what went out, by the nodes' own totals at this same instant.
        let mut total: u128 = 0;
        let mut withdrawn: u128 = 0;
        for node in 1..=self.scenario.nodes {
            let audit = self
                .engine(node)
                .expect("running")
                .audit()
                .map_err(|error| format!("node {node}: audit: {error}"))?;
            total += audit.totals.deposited;
            withdrawn += audit.totals.withdrawn;
        }
        let total = total - withdrawn;
        let sum: u128 = balances
            .iter()
            .map(|(_, balance)| u128::from(*balance))
            .sum();
        if sum != total {
            return Err(format!(
                "consistent read during the run: balances sum to {sum}, deposits to {total}: {balances:?}"
            ));
        }
        if let Some((account, balance)) = balances
            .iter()
            .find(|(_, balance)| u128::from(*balance) > total)
        {
            return Err(format!(
                "consistent read: account {account} holds {balance}, more than all the money"
            ));
        }
        Ok(())
    }

    fn settled(&self) -> bool {
        self.clients.iter().all(|client| client.current.is_none())
            && self.nodes.iter().all(|node| {
                node.running.as_ref().is_some_and(|running| {
                    running.core.in_flight_count() == 0
                        && running.core.unended_count() == 0
                        && running.engine.in_doubt().is_empty()
                        // Durably ended too: a coordinator may forget only ended decisions.
                        && running
                            .engine
                            .unended_decisions()
                            .is_ok_and(|unended| unended.is_empty())
                })
            })
    }

    fn unsettled(&self) -> String {
        let mut text = String::new();
        let busy = self
            .clients
            .iter()
            .filter(|client| client.current.is_some())
            .count();
        let _ = write!(text, "{busy} clients without an answer");
        for node in &self.nodes {
            match &node.running {
                None => {
                    let _ = write!(text, "; node {} down", node.id);
                }
                Some(running) => {
                    let _ = write!(
                        text,
                        "; node {}: {} in flight, {} unended ({} logged), {} in doubt",
                        node.id,
                        running.core.in_flight_count(),
                        running.core.unended_count(),
                        running
                            .engine
                            .unended_decisions()
                            .map_or(0, |unended| unended.len()),
                        running.engine.in_doubt().len()
                    );
                }
            }
        }
        text
    }

    /// After the run: every outcome a client heard is the coordinator's record and every
    /// participant's; each committed transfer moved its money exactly once and no aborted one
    /// moved any (every balance is the initial one plus what the committed transfers imply);
    /// money is conserved; nothing is in doubt.
    fn check_final(&mut self) -> Result<(), String> {
        let mut expected: BTreeMap<AccountId, i128> = (1..=self.scenario.accounts)
            .map(|account| (account, i128::from(INITIAL_BALANCE)))
            .collect();
        for (id, cash) in &self.ledger.cash {
            let Some(outcome) = self.ledger.cash_heard.get(id) else {
                return Err(format!("movement {id}: no client heard an outcome"));
            };
            if let MovementOutcome::Applied { .. } = outcome {
                let change = i128::from(cash.amount);
                *expected.get_mut(&cash.account).expect("account") += match cash.kind {
                    MovementKind::Deposit => change,
                    MovementKind::Withdrawal => -change,
                };
            }
        }
        for (id, transfer) in &self.ledger.transfers {
            let heard = self.ledger.heard.get(id).copied();
            let coordinator = self.owner(transfer.debit);
            let recorded = self.recorded_outcome(coordinator, *id)?;
            let Some(outcome) = heard else {
                return Err(format!("transfer {id}: no client heard an outcome"));
            };
            if recorded != Some(outcome) {
                return Err(format!(
                    "transfer {id}: the client heard {outcome:?}, node {coordinator} recorded {recorded:?}"
                ));
            }
            let credit_node = self.owner(transfer.credit);
            let at_credit = match self
                .engine(credit_node)
                .expect("running")
                .transfer_status(*id)
                .map_err(|error| format!("transfer status: {error}"))?
            {
                TransferStatus::Decided(record) => Some(record.outcome),
                TransferStatus::Unknown => None,
                TransferStatus::Prepared(_) => {
                    return Err(format!(
                        "transfer {id}: still prepared at node {credit_node}"
                    ));
                }
            };
            match outcome {
                Outcome::Committed => {
                    if at_credit != Some(Outcome::Committed) {
                        return Err(format!(
                            "transfer {id}: committed, but node {credit_node} has {at_credit:?}"
                        ));
                    }
                    *expected.get_mut(&transfer.debit).expect("account") -=
                        i128::from(transfer.amount);
                    *expected.get_mut(&transfer.credit).expect("account") +=
                        i128::from(transfer.amount);
                }
                Outcome::Aborted(_) => {
                    if at_credit == Some(Outcome::Committed) {
                        return Err(format!(
                            "transfer {id}: aborted, but node {credit_node} committed it"
                        ));
                    }
                }
            }
        }
        for (account, expected) in expected {
            let balance = self
                .engine(self.owner(account))
                .expect("running")
                .balance(account)
                .map_err(|error| format!("balance: {error}"))?;
            if i128::from(balance) != expected {
                return Err(format!(
                    "account {account}: balance {balance}, the acknowledged outcomes imply {expected}"
                ));
            }
        }
        self.consistent_read()?;
        self.check_retries()
    }

    /// The outcome node `coordinator` recorded for `id`: its decision, or its one-phase record.
    fn recorded_outcome(
        &self,
        coordinator: NodeId,
        id: TransferId,
    ) -> Result<Option<Outcome>, String> {
        let engine = self.engine(coordinator).expect("running");
        if let Some(decision) = engine
            .decision(id)
            .map_err(|error| format!("decision: {error}"))?
        {
            return Ok(Some(decision.outcome));
        }
        Ok(
            match engine
                .transfer_status(id)
                .map_err(|error| format!("transfer status: {error}"))?
            {
                TransferStatus::Decided(record) => Some(record.outcome),
                _ => None,
            },
        )
    }

    /// Every answered id, sent again on a quiet network, gets the same answer.
    fn check_retries(&mut self) -> Result<(), String> {
        // Deposits and withdrawals: the same request again gets the first answer, applying
        // nothing.
        let heard: Vec<(Cash, MovementOutcome)> = self
            .ledger
            .cash_heard
            .iter()
            .map(|(id, outcome)| (self.ledger.cash[id], *outcome))
            .collect();
        for (cash, outcome) in heard {
            let engine = self.engine(self.owner(cash.account)).expect("running");
            let again = match cash.kind {
                MovementKind::Deposit => engine.deposit(cash.id, cash.account, cash.amount),
                MovementKind::Withdrawal => engine.withdraw(cash.id, cash.account, cash.amount),
            };
            if again.as_ref().ok() != Some(&outcome) {
                return Err(format!(
                    "movement {}: answered {outcome:?}, a resend after the run got {again:?}",
                    cash.id
                ));
            }
        }
        let heard: Vec<(TransferId, Outcome)> = self
            .ledger
            .heard
            .iter()
            .map(|(id, outcome)| (*id, *outcome))
            .collect();
        for (id, outcome) in heard {
            let transfer = self.ledger.transfers[&id];
            let node = self.owner(transfer.debit);
            let request = TransferRequest {
                id,
                transfer,
                credit_node: self.owner(transfer.credit),
            };
            let running = self.running(node);
            running.next_token += 1;
            let token = ClientToken(running.next_token);
            running.core.transfer(token, request);
            let mut answer = None;
            for _ in 0..16 {
                let now = self.now;
                let effects = self.running(node).core.take_ready(now);
                for effect in effects {
                    match effect {
                        Effect::Answer {
                            client,
                            answer: reply,
                            ..
                        } if client == token => answer = Some(reply),
                        other => self.carry_out_quiet(node, other)?,
                    }
                }
                if answer.is_some() {
                    break;
                }
            }
            match answer {
                Some(Ok(again)) if again == outcome => {}
                other => {
                    return Err(format!(
                        "transfer {id}: answered {outcome:?}, a retry after the run got {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Carries out an effect at once (no faults, completions fed back directly).
    fn carry_out_quiet(&mut self, node: NodeId, effect: Effect) -> Result<(), String> {
        let engine = self.engine(node).expect("running");
        match effect {
            Effect::LookUp { ids } => {
                let results: Vec<_> = ids
                    .into_iter()
                    .map(|id| (id, engine.look_up(id).map_err(Arc::new)))
                    .collect();
                let core = &mut self.running(node).core;
                for (id, known) in results {
                    core.looked_up(id, known);
                }
                Ok(())
            }
            other => Err(format!(
                "a retry of an answered transfer needed more than a look-up: {other:?}"
            )),
        }
    }
}

/// Runs one seed; on failure, shrinks it to the fewest transfers that still fail and returns
/// that run's failure.
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
