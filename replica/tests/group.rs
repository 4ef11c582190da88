//! Replica groups of one shard on three in-memory nodes, driven in one thread: elections, the
//! leader's engine over the replicated log, followers applying, leader changes, crashes.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use engine::Log;
use engine::model::{AccountId, MovementKind, MovementOutcome};
use engine::tables::{MemoryTables, Tables};
use engine::testing::{single_threaded_engine_options, small_segment_wal_options, test_seed};
use engine::wal::{CrashMode, MemoryStorage, Wal};
use engine::{Logged, StorageError};
use raft::eraftpb::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replica::{Group, GroupEngine, GroupOptions, store};

const SHARD: u32 = 7;
const VOTERS: [u64; 3] = [1, 2, 3];

struct Node {
    id: u64,
    storage: MemoryStorage,
    tables: Arc<MemoryTables>,
    wal: Arc<Wal<MemoryStorage>>,
    group: Option<Group<MemoryTables, MemoryStorage>>,
}

impl Node {
    fn start(id: u64, storage: MemoryStorage, tables: Arc<MemoryTables>) -> Self {
        let (wal, _) =
            Wal::open(storage.clone(), small_segment_wal_options(256 * 1024)).expect("WAL opens");
        let wal = Arc::new(wal);
        let mut recovered = store::recover(&wal).expect("replicated log recovers");
        let options = GroupOptions {
            // Distinct, fixed election timeouts: elections do not depend on raft-rs's own
            // random draw.
            election_ticks_min: 10 + 4 * id as usize,
            election_ticks_max: 11 + 4 * id as usize,
            heartbeat_ticks: 2,
            engine: single_threaded_engine_options(),
            ..GroupOptions::default()
        };
        let group = Group::open(
            SHARD,
            id,
            &VOTERS,
            recovered.remove(&SHARD),
            wal.clone(),
            tables.clone(),
            options,
            Arc::new(|| {}),
        )
        .expect("group opens");
        Self {
            id,
            storage,
            tables,
            wal,
            group: Some(group),
        }
    }
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
    in_flight: VecDeque<Message>,
    /// Directed links that drop everything.
    cut: HashSet<(u64, u64)>,
    /// (term, leader) pairs seen: at most one leader per term.
    leaders: BTreeMap<u64, u64>,
    /// When set, each tick crashes a random node (losing what it had not synced) with this
    /// probability, then restarts it.
    chaos: Option<(StdRng, f64)>,
    /// (node, context) of every leadership confirmation a group reported.
    confirmed: Vec<(u64, u64)>,
}

impl Cluster {
    fn new() -> Self {
        let nodes = VOTERS
            .iter()
            .map(|&id| {
                (
                    id,
                    Node::start(id, MemoryStorage::new(), Arc::new(MemoryTables::new())),
                )
            })
            .collect();
        Self {
            nodes,
            in_flight: VecDeque::new(),
            cut: HashSet::new(),
            leaders: BTreeMap::new(),
            chaos: None,
            confirmed: Vec::new(),
        }
    }

    fn up(&self, id: u64) -> bool {
        self.nodes[&id].group.is_some()
    }

    /// Processes every node until nothing moves: Readies handled, appends made durable,
    /// messages delivered.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for node in self.nodes.values_mut() {
                let Some(group) = node.group.as_mut() else {
                    continue;
                };
                let mut failed = false;
                loop {
                    // A group that fails stops, as the node's driver stops it.
                    let Ok(output) = group.process() else {
                        failed = true;
                        break;
                    };
                    let quiet = output.messages.is_empty() && output.wait_for.is_none();
                    self.confirmed
                        .extend(output.confirmed.iter().map(|context| (node.id, *context)));
                    self.in_flight.extend(output.messages);
                    if let Some(lsn) = output.wait_for {
                        node.wal.wait_durable(lsn).expect("WAL syncs");
                        self.in_flight.extend(group.persisted(lsn));
                    }
                    if quiet {
                        break;
                    }
                    moved = true;
                }
                if failed {
                    node.group = None;
                    continue;
                }
                if group.is_leader() {
                    let term = group.term();
                    let leader = *self.leaders.entry(term).or_insert(node.id);
                    assert_eq!(leader, node.id, "two leaders in term {term}");
                }
            }
            while let Some(message) = self.in_flight.pop_front() {
                moved = true;
                if self.cut.contains(&(message.from, message.to)) {
                    continue;
                }
                if let Some(group) = self
                    .nodes
                    .get_mut(&message.to)
                    .and_then(|n| n.group.as_mut())
                {
                    group.step(message);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never settled");
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for node in self.nodes.values_mut() {
                if let Some(group) = node.group.as_mut() {
                    group.tick();
                }
            }
            let victim = self.chaos.as_mut().and_then(|(random, probability)| {
                random
                    .random_bool(*probability)
                    .then(|| VOTERS[random.random_range(0..VOTERS.len())])
            });
            if let Some(victim) = victim {
                self.crash(victim, CrashMode::DropUnsynced);
            }
            self.settle();
        }
    }

    /// A cluster whose leader serves account 10 with 100 deposited; and that leader.
    fn with_deposit() -> (Self, u64) {
        let mut cluster = Cluster::new();
        let leader = cluster.serving();
        create(&mut cluster, 10);
        deposit(&mut cluster, 1, 10, 100).unwrap();
        cluster.tick(3);
        (cluster, leader)
    }

    /// The engine node `id` serves with (panics unless it does).
    fn engine_of(&self, id: u64) -> Arc<GroupEngine<MemoryTables>> {
        self.nodes[&id]
            .group
            .as_ref()
            .and_then(|group| group.engine())
            .expect("the node serves")
            .clone()
    }

    /// The node whose engine is open, once one is (ticking until then).
    fn serving(&mut self) -> u64 {
        for _ in 0..500 {
            let serving: Vec<u64> = self
                .nodes
                .values()
                .filter(|node| node.group.as_ref().is_some_and(|g| g.engine().is_some()))
                .map(|node| node.id)
                .collect();
            if let [id] = serving[..] {
                return id;
            }
            self.tick(1);
        }
        panic!("no leader serves");
    }

    /// The serving node and its engine.
    fn serving_engine(&mut self) -> (u64, Arc<GroupEngine<MemoryTables>>) {
        let leader = self.serving();
        let engine = self.nodes[&leader]
            .group
            .as_ref()
            .unwrap()
            .engine()
            .unwrap();
        (leader, engine.clone())
    }

    /// Drives the cluster until a logged answer is committed, then releases it (`Err` when the
    /// engine closed first).
    fn finish<R>(&mut self, leader: u64, logged: Logged<R>) -> Result<R, StorageError> {
        let engine = self.nodes[&leader]
            .group
            .as_ref()
            .and_then(|g| g.engine().cloned())
            .expect("leader serves");
        for _ in 0..200 {
            self.settle();
            let done = logged
                .wait_for()
                .is_none_or(|lsn| engine.wal().durable_lsn() >= lsn);
            let closed = self.nodes[&leader]
                .group
                .as_ref()
                .is_none_or(|g| g.engine().is_none());
            if done || closed {
                return engine.finish(logged);
            }
            self.tick(1);
        }
        panic!("a logged answer was never committed nor refused");
    }

    fn crash(&mut self, id: u64, mode: CrashMode) {
        let node = self.nodes.remove(&id).expect("node exists");
        drop(node.group);
        let wal = Arc::try_unwrap(node.wal)
            .ok()
            .expect("only the node holds its WAL");
        let storage = node.storage.crash(mode);
        let tables = Arc::new(node.tables.crash());
        drop(wal);
        self.in_flight.retain(|m| m.to != id && m.from != id);
        self.nodes.insert(id, Node::start(id, storage, tables));
    }

    fn isolate(&mut self, id: u64) {
        for other in VOTERS {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Every replica's balance of `account` (None where the account does not exist).
    fn balances(&self, account: AccountId) -> Vec<(u64, Option<u64>)> {
        self.nodes
            .values()
            .map(|node| {
                let balance = node
                    .tables
                    .account(account)
                    .expect("reads")
                    .map(|a| a.balance);
                (node.id, balance)
            })
            .collect()
    }
}

fn deposit(cluster: &mut Cluster, id: u128, account: AccountId, amount: u64) -> Result<(), String> {
    let (leader, engine) = cluster.serving_engine();
    let logged = engine
        .move_money_logged(id, account, MovementKind::Deposit, amount)
        .map_err(|error| error.to_string())?;
    cluster
        .finish(leader, logged)
        .map_err(|error| error.to_string())?;
    match engine
        .recorded_movement(id)
        .map_err(|error| error.to_string())?
    {
        MovementOutcome::Applied { .. } => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

fn create(cluster: &mut Cluster, account: AccountId) {
    let (leader, engine) = cluster.serving_engine();
    let logged = engine
        .create_account_logged(account, None, 0, 1)
        .expect("account creation logs");
    cluster
        .finish(leader, logged)
        .expect("account creation commits");
}

#[test]
fn a_leader_serves_and_every_replica_applies_what_it_commits() {
    let mut cluster = Cluster::new();
    let leader = cluster.serving();
    create(&mut cluster, 10);
    deposit(&mut cluster, 1, 10, 500).unwrap();
    deposit(&mut cluster, 2, 10, 250).unwrap();
    cluster.tick(5);
    assert_eq!(
        cluster.balances(10),
        vec![(1, Some(750)), (2, Some(750)), (3, Some(750))],
        "leader {leader}"
    );
}

#[test]
fn a_cut_off_leader_commits_nothing_and_the_majority_goes_on() {
    let (mut cluster, old) = Cluster::with_deposit();

    cluster.isolate(old);
    // The cut-off leader takes a deposit it can never commit.
    let engine = cluster.engine_of(old);
    let lost = engine
        .move_money_logged(2, 10, MovementKind::Deposit, 1_000)
        .expect("logs locally");
    cluster.tick(60);
    assert!(
        engine.wal().durable_lsn() < lost.wait_for().unwrap(),
        "an isolated leader committed alone"
    );
    let new = cluster.serving();
    assert_ne!(new, old, "the isolated node still serves");
    deposit(&mut cluster, 3, 10, 10).unwrap();

    cluster.heal();
    cluster.tick(30);
    assert!(
        engine.finish(lost).is_err(),
        "the old leader's uncommitted deposit was answered"
    );
    assert_eq!(
        cluster.balances(10),
        vec![(1, Some(110)), (2, Some(110)), (3, Some(110))]
    );
}

/// The replicas that lead, with their terms.
fn leaders(cluster: &Cluster) -> Vec<(u64, u64)> {
    cluster
        .nodes
        .values()
        .filter_map(|node| node.group.as_ref().filter(|group| group.is_leader()))
        .map(|group| (group.id(), group.term()))
        .collect()
}

/// Followers told that their leader is gone (their node saw the connection to it close) elect a
/// new leader at once, instead of after a whole election timeout of silence (here 14 ticks or
/// more); one told so wrongly, while the leader lives, disturbs nothing.
#[test]
fn followers_told_their_leader_is_gone_elect_without_waiting_out_a_timeout() {
    let (mut cluster, old) = Cluster::with_deposit();
    let term = cluster.nodes[&old].group.as_ref().unwrap().term();
    let followers: Vec<u64> = VOTERS.iter().copied().filter(|id| *id != old).collect();

    // A false alarm at one follower: the other still hears the leader and refuses to vote.
    let wrong = followers[0];
    cluster
        .nodes
        .get_mut(&wrong)
        .unwrap()
        .group
        .as_mut()
        .unwrap()
        .leader_lost(old);
    cluster.tick(30);
    assert_eq!(
        leaders(&cluster),
        vec![(old, term)],
        "a false alarm deposed a live leader"
    );

    // The leader dies (nothing reaches it or comes from it any more).
    cluster.isolate(old);
    cluster.tick(2);
    assert!(
        leaders(&cluster).iter().all(|(id, _)| *id == old),
        "an election before any timeout, without the hint"
    );
    // The first to stand hears of the loss first: its try meets a follower still counting the
    // lost leader's lease and fails; the other stands two ticks later and wins.
    let hint = |cluster: &mut Cluster, id: u64| {
        let group = cluster.nodes.get_mut(&id).unwrap().group.as_mut().unwrap();
        group.leader_lost(old);
    };
    hint(&mut cluster, followers[0]);
    cluster.tick(1);
    hint(&mut cluster, followers[1]);
    cluster.tick(3);
    let new: Vec<u64> = leaders(&cluster)
        .into_iter()
        .filter(|(id, leader_term)| *id != old && *leader_term > term)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        new.len(),
        1,
        "no new leader two ticks after the hint: {new:?}"
    );
    deposit(&mut cluster, 2, 10, 5).unwrap();
    cluster.heal();
    cluster.tick(30);
    assert_eq!(
        cluster.balances(10),
        vec![(1, Some(105)), (2, Some(105)), (3, Some(105))]
    );
}

/// A leader confirms its leadership (raft's read index) with a majority before a read: a
/// connected one gets the confirmation; one cut off from the others never does, not even after
/// the partition heals (it has stepped down by then), while the new leader does.
#[test]
fn only_a_leader_with_its_majority_confirms_its_leadership() {
    let mut cluster = Cluster::new();
    let old = cluster.serving();
    let confirm = |cluster: &mut Cluster, node: u64, context: u64| {
        cluster
            .nodes
            .get_mut(&node)
            .unwrap()
            .group
            .as_mut()
            .unwrap()
            .confirm_leadership(context);
        cluster.settle();
    };
    confirm(&mut cluster, old, 1);
    assert_eq!(cluster.confirmed, vec![(old, 1)]);

    cluster.isolate(old);
    confirm(&mut cluster, old, 2);
    cluster.tick(60);
    let new = cluster.serving();
    assert_ne!(new, old, "the isolated node still serves");
    confirm(&mut cluster, new, 3);
    cluster.heal();
    cluster.tick(30);
    assert_eq!(
        cluster.confirmed,
        vec![(old, 1), (new, 3)],
        "a cut-off leader confirmed its leadership"
    );
}

/// A leader that learns of a newer leader (a heartbeat of a higher term) before it next proposes
/// must not propose what its engine queued: as a follower raft-rs would forward it to the new
/// leader, which would commit the old engine's records beside its own. The old engine closes, its
/// queued deposit is never applied anywhere, and the new leader serves.
#[test]
fn a_deposed_leader_never_proposes_what_its_engine_queued() {
    let (mut cluster, old) = Cluster::with_deposit();
    let engine = cluster.engine_of(old);
    // The old leader sits out while another replica is elected in a later term.
    let mut old_group = cluster.nodes.get_mut(&old).unwrap().group.take().unwrap();
    let mut new = None;
    for _ in 0..100 {
        cluster.tick(1);
        new = VOTERS.into_iter().find(|id| {
            cluster.nodes[id]
                .group
                .as_ref()
                .is_some_and(|group| group.is_leader())
        });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the other two elect a leader");
    let new_group = cluster.nodes.get_mut(&new).unwrap().group.as_mut().unwrap();
    assert!(new_group.is_leader());
    // The old leader's engine queues a deposit; then, before its next round, it steps the new
    // leader's heartbeat.
    let queued = engine
        .move_money_logged(2, 10, MovementKind::Deposit, 1_000)
        .expect("queued");
    for _ in 0..4 {
        new_group.tick();
    }
    let heartbeats: Vec<Message> = new_group
        .process()
        .unwrap()
        .messages
        .into_iter()
        .filter(|m| m.to == old)
        .collect();
    assert!(
        !heartbeats.is_empty(),
        "the new leader sends nothing to the old one"
    );
    for message in heartbeats {
        old_group.step(message);
    }
    assert!(!old_group.is_leader());
    let output = old_group.process().unwrap();
    assert!(
        !output
            .messages
            .iter()
            .any(|m| m.get_msg_type() == raft::eraftpb::MessageType::MsgPropose),
        "the deposed leader forwarded its engine's records: {:?}",
        output.messages
    );
    assert!(output.closed, "the deposed leader's engine stays open");
    cluster.nodes.get_mut(&old).unwrap().group = Some(old_group);
    cluster.in_flight.extend(output.messages);
    cluster.tick(30);
    assert!(
        engine.finish(queued).is_err(),
        "the queued deposit was answered"
    );
    deposit(&mut cluster, 3, 10, 10).unwrap();
    cluster.tick(5);
    assert_eq!(
        cluster.balances(10),
        vec![(1, Some(110)), (2, Some(110)), (3, Some(110))]
    );
}

/// A leader whose engine cannot apply (its tables fail) stops instead of holding the shard with
/// an engine that refuses everything: the other replicas elect, and the new leader serves.
#[test]
fn a_leader_whose_engine_fails_stops_and_another_serves() {
    let (mut cluster, old) = Cluster::with_deposit();
    cluster.nodes[&old].tables.fail_writes();
    assert!(deposit(&mut cluster, 2, 10, 5).is_err());
    let new = cluster.serving();
    assert_ne!(new, old, "the leader with a failed engine still serves");
    deposit(&mut cluster, 3, 10, 10).unwrap();
    cluster.tick(5);
    let live: Vec<_> = cluster
        .balances(10)
        .into_iter()
        .filter(|(node, _)| *node != old)
        .collect();
    assert!(
        live.iter().all(|(_, balance)| *balance == Some(115)),
        "{live:?}"
    );
}

#[test]
fn a_crashed_replica_recovers_its_log_and_catches_up() {
    let mut cluster = Cluster::new();
    let leader = cluster.serving();
    create(&mut cluster, 10);
    let follower = VOTERS.into_iter().find(|&id| id != leader).unwrap();
    deposit(&mut cluster, 1, 10, 100).unwrap();
    cluster.tick(3);
    cluster.crash(follower, CrashMode::DropUnsynced);
    for id in 2..50u128 {
        deposit(&mut cluster, id, 10, 1).unwrap();
    }
    cluster.tick(20);
    assert!(cluster.up(follower));
    assert_eq!(
        cluster.balances(10),
        vec![(1, Some(148)), (2, Some(148)), (3, Some(148))]
    );
}

/// Random deposits through whoever leads, with leaders cut off and nodes crashed (losing what
/// they had not synced) at random: every acknowledged deposit is on every replica at the end,
/// no unacknowledged one appears twice, and no term has two leaders.
#[test]
fn acknowledged_deposits_survive_partitions_and_crashes() {
    let seed = test_seed("acknowledged_deposits_survive_partitions_and_crashes");
    let mut random = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::new();
    create(&mut cluster, 10);
    cluster.chaos = Some((StdRng::seed_from_u64(seed ^ 1), 0.02));
    let mut acknowledged = 0u64;
    let mut maybe = 0u64;
    for id in 1..=300u128 {
        match random.random_range(0..10) {
            // One replica cut off at a time, so that a majority can always serve.
            0 if cluster.cut.is_empty() => {
                let leader = cluster.serving();
                cluster.isolate(leader);
            }
            1 => cluster.heal(),
            2 => {
                let victim = VOTERS[random.random_range(0..3)];
                cluster.crash(victim, CrashMode::DropUnsynced);
            }
            _ => {}
        }
        let amount = random.random_range(1..100);
        match deposit(&mut cluster, id, 10, amount) {
            Ok(()) => acknowledged += amount,
            Err(_) => maybe += amount,
        }
    }
    cluster.heal();
    cluster.chaos = None;
    cluster.tick(40);
    for (node, balance) in cluster.balances(10) {
        let balance = balance.expect("the account exists everywhere");
        assert!(
            balance >= acknowledged && balance <= acknowledged + maybe,
            "node {node}: balance {balance}, acknowledged {acknowledged}, unknown {maybe} (seed {seed})"
        );
    }
    let first = cluster.balances(10)[0].1;
    assert!(
        cluster.balances(10).iter().all(|(_, b)| *b == first),
        "replicas disagree: {:?} (seed {seed})",
        cluster.balances(10)
    );
}
