//! A real 3-node cluster whose 3 shards each have 3 replicas (Raft groups): a shard's leader
//! killed under load, a shard's leader blackholed from its peers under load, and a shard that
//! lost its majority, checked through the client library.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use client::{ClientError, TallyClient};
use engine::testing::test_seed;
use loadgen::leaders::{GroupView, Leader, group_reports, leaders};
use loadgen::local::LinkProxies;
use loadgen::proxy::LinkMode;
use net::{GroupStatus, NodeId, ReplicaHealth, ReplicaRole, TransferOutcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::{Cluster, assert_audit_passes, funded, random_pair};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
const INITIAL: u64 = 1_000_000;

/// Accounts 1..=n with `INITIAL` each.
async fn funded_accounts(client: &TallyClient, n: u64) -> Vec<u64> {
    for account in 1..=n {
        funded(client, account, INITIAL).await;
    }
    (1..=n).collect()
}

/// The leader of `shard` in the highest term any replica reports, and its view of the group.
async fn leader_view(client: &TallyClient, shard: u32) -> Option<(NodeId, GroupStatus)> {
    let statuses = client.cluster_status().await.expect("cluster status");
    statuses
        .into_iter()
        .flat_map(|status| {
            let node = status.node_id;
            status.groups.into_iter().map(move |group| (node, group))
        })
        .filter(|(_, group)| group.shard == shard && group.role == ReplicaRole::Leader)
        .max_by_key(|(_, group)| group.term)
}

/// Panics unless each account's balance, in one consistent read, is what `expected` says.
async fn assert_balances(
    client: &TallyClient,
    accounts: &[u64],
    expected: &HashMap<u64, i128>,
    seed: u64,
) {
    let balances = client.balances(accounts).await.expect("consistent read");
    for (account, balance) in accounts.iter().zip(balances) {
        assert_eq!(
            i128::from(balance.balance),
            expected[account],
            "account {account}: balance differs from its acknowledged transfers (seed {seed})"
        );
    }
}

/// A new cluster's shards are first led by their preferred leaders (the other replicas leave them
/// the first election), so no leadership has to be handed over afterwards: such a hand-over,
/// under load, aborts the transfers the first leader was coordinating.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_clusters_first_leaders_are_the_preferred_ones() {
    let cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    // Started: every shard is led by its preferred leader. Give a hand-over time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in 1..=3 {
        let log = cluster.log(id);
        assert!(
            !log.contains("handing leadership to the preferred leader"),
            "node {id} handed a leadership over after start-up:\n{log}"
        );
    }
}

/// Kills the leader of shard 0 (node 1, its first leader) in the middle of a run of transfers
/// between accounts of every shard. The group elects another leader and the clients follow it:
/// no request fails, every acknowledged outcome holds (each account's balance is what the
/// committed transfers imply), and transfers debiting shard 0 commit again within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_shards_leader_under_load_loses_nothing_and_a_new_leader_serves() {
    let seed =
        test_seed("killing_a_shards_leader_under_load_loses_nothing_and_a_new_leader_serves");
    let mut cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    let client = cluster.client();
    let accounts = funded_accounts(&client, 30).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..8u64 {
        let client = client.clone();
        let accounts = accounts.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut random = StdRng::seed_from_u64(seed ^ worker);
            let mut committed: Vec<(u64, u64, u64)> = Vec::new();
            let mut failures: Vec<String> = Vec::new();
            let mut aborted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (debit, credit) = random_pair(&mut random, &accounts);
                let amount = random.random_range(1..100);
                match client
                    .transfer(TallyClient::new_transfer_id(), debit, credit, amount)
                    .await
                {
                    Ok(TransferOutcome::Committed) => committed.push((debit, credit, amount)),
                    Ok(TransferOutcome::Aborted(_)) => aborted += 1,
                    Err(error) => failures.push(error.to_string()),
                }
            }
            (committed, aborted, failures)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.kill(1);
    let killed = Instant::now();
    // A transfer debiting an account of shard 0 commits again once a new leader serves.
    let on_shard_0: Vec<u64> = accounts
        .iter()
        .copied()
        .filter(|account| cluster.config.shard_of(*account) == 0)
        .collect();
    let (debit, credit) = (on_shard_0[0], on_shard_0[1]);
    loop {
        match client
            .transfer(TallyClient::new_transfer_id(), debit, credit, 1)
            .await
        {
            Ok(TransferOutcome::Committed) => break,
            other => {
                assert!(
                    killed.elapsed() < Duration::from_secs(10),
                    "shard 0 serves no transfer 10 s after its leader died: {other:?} (seed {seed})"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let failover = killed.elapsed();
    // Follow-up probe transfer: counted below.
    let mut expected: HashMap<u64, i128> = accounts.iter().map(|a| (*a, INITIAL as i128)).collect();
    *expected.get_mut(&debit).unwrap() -= 1;
    *expected.get_mut(&credit).unwrap() += 1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total_committed = 0;
    for worker in workers {
        let (committed, _aborted, failures) = worker.await.expect("worker");
        assert!(
            failures.is_empty(),
            "requests failed across the failover: {failures:?} (seed {seed})"
        );
        total_committed += committed.len();
        for (debit, credit, amount) in committed {
            *expected.get_mut(&debit).unwrap() -= i128::from(amount);
            *expected.get_mut(&credit).unwrap() += i128::from(amount);
        }
    }
    assert!(total_committed > 0, "nothing committed (seed {seed})");
    assert_balances(&client, &accounts, &expected, seed).await;
    assert_audit_passes(&client, u128::from(INITIAL) * accounts.len() as u128).await;
    println!("failover: shard 0 served again {failover:?} after its leader was killed");

    // The status the nodes report: shard 0 has a new leader in a later term, which sees the
    // killed replica as down.
    let (leader, view) = leader_view(&client, 0)
        .await
        .expect("shard 0 reports a leader");
    assert_ne!(leader, 1, "the killed node still leads shard 0: {view:?}");
    assert!(view.term > 1, "no new term after the failover: {view:?}");
    let health = |view: &GroupStatus, node| {
        view.replicas
            .iter()
            .find(|replica| replica.node_id == node)
            .map(|replica| replica.health)
    };
    assert_eq!(health(&view, 1), Some(ReplicaHealth::Down), "{view:?}");
    assert_eq!(view.commit_index, view.last_index, "{view:?}");
    // The followers saw their connection to the killed leader close and elected at once rather
    // than after an election timeout of silence (`Group::leader_lost`).
    let noticed = [2, 3].into_iter().any(|id| {
        cluster.log(id).lines().any(|line| {
            line.contains("the connection to the leader closed")
                && line.contains("shard=0")
                && line.contains("leader=1")
        })
    });
    assert!(
        noticed,
        "no follower noticed its leader's connection close (seed {seed})"
    );

    // The killed replica comes back and catches up: once it leads shard 0 again (its old leader
    // handing over on SIGTERM), the balances it serves are the same.
    cluster.restart(1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in [2, 3] {
        cluster.stop(id);
        cluster.restart(id);
    }
    let after = client.balances(&accounts).await.expect("consistent read");
    // Every replica of shard 0 is up again, and the leader sees it current once idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = leader_view(&client, 0).await;
        if let Some((_, view)) = &view
            && (1..=3).all(|node| health(view, node) == Some(ReplicaHealth::Current))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "shard 0's replicas are not all current after restarts: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (account, balance) in accounts.iter().zip(after) {
        assert_eq!(
            i128::from(balance.balance),
            expected[account],
            "account {account} after restarts"
        );
    }
}

/// With two of its three replicas down a shard cannot commit: a write to it fails with an error
/// within the client's retries (no hang), while the shards that kept a majority go on serving;
/// with one replica back the shard serves again, and the write resent with its id is applied
/// exactly once. Five nodes, five shards of three replicas (shard s on nodes s+1, s+2, s+3,
/// wrapping): killing nodes 1 and 2 leaves shards 0 ({1,2,3}) and 4 ({5,1,2}) one replica each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_without_a_majority_refuses_writes_and_serves_again_when_one_returns() {
    let mut cluster = Cluster::start_replicated(PROGRAM.as_ref(), 5, 3);
    let client = cluster.client();
    // One account per shard.
    let mut on_shard: Vec<Option<u64>> = vec![None; 5];
    for account in 1..1000u64 {
        let shard = cluster.config.shard_of(account) as usize;
        if on_shard[shard].is_none() {
            on_shard[shard] = Some(account);
        }
    }
    let on_shard: Vec<u64> = on_shard
        .into_iter()
        .map(|a| a.expect("an account"))
        .collect();
    for account in &on_shard {
        funded(&client, *account, 100).await;
    }
    cluster.kill(1);
    cluster.kill(2);
    let started = Instant::now();
    let id = TallyClient::new_transfer_id();
    let refused = client.deposit(id, on_shard[0], 50).await;
    let elapsed = started.elapsed();
    match &refused {
        Err(ClientError::Remote { .. } | ClientError::Unavailable { .. })
        | Err(ClientError::OutcomeUnknown { .. }) => {}
        other => panic!("a deposit without a majority answered {other:?}"),
    }
    assert!(
        elapsed < Duration::from_secs(30),
        "the refused deposit took {elapsed:?}"
    );
    println!("refused in {elapsed:?}: {refused:?}");
    // Asked again once it has been without a leader for longer than elections take (3 s), the
    // surviving replica (node 3) says why. Until then it says an election is running.
    let survivor = net::Client::connect(
        cluster.config.node(3).unwrap().address.as_str(),
        net::ClientConfig::default(),
    )
    .await
    .expect("connect to node 3");
    let asking = Instant::now();
    loop {
        let answer = survivor
            .call(net::Deposit {
                id: TallyClient::new_transfer_id(),
                account: on_shard[0],
                amount: 7,
            })
            .await;
        match &answer {
            Err(net::ClientError::Remote(error))
                if error.code == net::ErrorCode::NotLeader
                    && error.message.contains("a majority of its replicas is down") =>
            {
                break;
            }
            Err(net::ClientError::Remote(error))
                if error.code == net::ErrorCode::NotLeader
                    && asking.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            other => panic!("node 3 answered {other:?} after {:?}", asking.elapsed()),
        }
    }
    // Shards 1, 2 and 3 kept two replicas each: they serve, within and across shards.
    for shard in [1, 2, 3] {
        let deposited = client
            .deposit(TallyClient::new_transfer_id(), on_shard[shard], 1)
            .await
            .unwrap_or_else(|error| panic!("shard {shard} with its majority: {error}"));
        assert_eq!(deposited.balance_after, 101);
    }
    let moved = client
        .transfer(TallyClient::new_transfer_id(), on_shard[1], on_shard[3], 1)
        .await
        .expect("a transfer between two shards with their majorities");
    assert_eq!(moved, TransferOutcome::Committed);
    cluster.restart(2);
    // The same id again: applied once, whatever became of the first attempt.
    let mut applied = None;
    for _ in 0..20 {
        match client.deposit(id, on_shard[0], 50).await {
            Ok(deposited) => {
                applied = Some(deposited.balance_after);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    assert!(
        applied.is_some(),
        "shard 0 does not serve with 2 of 3 replicas up"
    );
    assert_eq!(client.balance(on_shard[0]).await.expect("balance"), 150);
}

/// A replica down while its group appends thousands of entries catches up when it returns: the
/// leader sees it current again, and with another replica then killed, the shards it completes a
/// majority of serve exactly the balances written while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_down_for_thousands_of_entries_catches_up() {
    const DEPOSITS: u64 = 3_000;
    const ACCOUNTS: u64 = 12;
    let mut cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    let client = cluster.client();
    let accounts = funded_accounts(&client, ACCOUNTS).await;
    cluster.kill(3);
    // One deposit after another from a few tasks: each is (about) its own log entry.
    let mut tasks = Vec::new();
    for task in 0..4u64 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..DEPOSITS / 4 {
                let account = 1 + (task + n * 4) % ACCOUNTS;
                // Resent with its id until answered, as a client must when the outcome is
                // unknown (on a loaded machine the election can outlast one call's retries).
                let id = TallyClient::new_transfer_id();
                let deadline = Instant::now() + Duration::from_secs(30);
                while let Err(error) = client.deposit(id, account, 1).await {
                    assert!(
                        Instant::now() < deadline,
                        "deposit {id} with one replica down: {error}"
                    );
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("deposit task");
    }
    let mut lags = Vec::new();
    for shard in 0..3 {
        let (_, view) = leader_view(&client, shard).await.expect("a leader");
        let node_3 = view
            .replicas
            .iter()
            .find(|r| r.node_id == 3)
            .expect("node 3");
        lags.push(view.last_index - node_3.matched_index);
    }
    assert!(
        lags.iter().sum::<u64>() >= 1_000,
        "the down replica misses only {lags:?} entries"
    );
    cluster.restart(3);
    let started = Instant::now();
    loop {
        let mut current = true;
        for shard in 0..3 {
            let caught_up = leader_view(&client, shard).await.is_some_and(|(_, view)| {
                view.replicas.iter().any(|replica| {
                    replica.node_id == 3
                        && replica.health == ReplicaHealth::Current
                        && replica.matched_index == view.last_index
                })
            });
            current &= caught_up;
        }
        if current {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "node 3 has not caught up {lags:?} entries in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "node 3 caught up {lags:?} entries per shard in {:?}",
        started.elapsed()
    );
    // Nodes 2 and 3 are now every shard's majority.
    cluster.kill(1);
    let balances = client.balances(&accounts).await.expect("consistent read");
    let total: u64 = balances.iter().map(|balance| balance.balance).sum();
    assert_eq!(total, INITIAL * ACCOUNTS + DEPOSITS);
    for balance in balances {
        assert_eq!(
            balance.balance,
            INITIAL + DEPOSITS / ACCOUNTS,
            "account {}",
            balance.account
        );
    }
}

/// Each shard's leader, waiting (at most 20 s) until every one of `shards` has one; checks on
/// every look that no two nodes claim to lead a shard in the same term.
async fn leaders_of_every_shard(client: &TallyClient, shards: u32) -> BTreeMap<u32, Leader> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(reports) = group_reports(client).await {
            assert_one_leader_per_term(&reports);
            let found = leaders(&reports);
            if (0..shards).all(|shard| found.contains_key(&shard)) {
                return found;
            }
        }
        assert!(
            Instant::now() < deadline,
            "some shard has no leader after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Node `node`'s whole status of its replica of `shard` (panics if it does not answer).
async fn own_group(client: &TallyClient, node: NodeId, shard: u32) -> GroupStatus {
    let statuses = client.cluster_status().await.expect("cluster status");
    statuses
        .into_iter()
        .filter(|status| status.node_id == node && status.up)
        .flat_map(|status| status.groups)
        .find(|group| group.shard == shard)
        .unwrap_or_else(|| panic!("node {node} does not answer for shard {shard}"))
}

/// What `node` says of its replica of `shard`, if it answered.
fn own_view(reports: &[(u32, Vec<GroupView>)], node: u32, shard: u32) -> Option<GroupView> {
    reports
        .iter()
        .filter(|(id, _)| *id == node)
        .flat_map(|(_, groups)| groups.iter().copied())
        .find(|group| group.shard == shard)
}

/// Panics if two nodes claim to lead one shard in one term.
fn assert_one_leader_per_term(reports: &[(u32, Vec<GroupView>)]) {
    let mut claims: HashMap<(u32, u64), u32> = HashMap::new();
    for (node, groups) in reports {
        for group in groups.iter().filter(|group| group.leads) {
            if let Some(other) = claims.insert((group.shard, group.term), *node) {
                panic!(
                    "nodes {other} and {node} both lead shard {} in term {}",
                    group.shard, group.term
                );
            }
        }
    }
}

/// The leader of shard 0 is blackholed from its peers (through link proxies: its connections stay
/// open, nothing gets through either way) in the middle of a load of transfers between accounts
/// of every shard, for a time drawn from the seed. The majority elects another leader that
/// serves; the old leader steps down by itself, its commit index stays put until the heal, and a
/// deposit sent straight to it, which still takes requests from clients, is never acknowledged
/// and never applied (it cannot commit alone); no two nodes lead shard 0 in one term at any look. After the heal the old leader steps down, and every replica of
/// shard 0 catches up to the same applied entry. Every acknowledged transfer holds (each
/// balance is what the committed transfers imply, unknown outcomes resolved by status), and the
/// audit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blackholed_leader_commits_nothing_alone_and_catches_up_after_the_heal() {
    let seed = test_seed("a_blackholed_leader_commits_nothing_alone_and_catches_up_after_the_heal");
    let mut random = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::configure_replicated(PROGRAM.as_ref(), 3, 3);
    let links = LinkProxies::start(&cluster.config)
        .await
        .expect("link proxies");
    for (id, own) in &links.configs {
        let file = cluster.directory().join(format!("node-{id}.cluster.toml"));
        std::fs::write(&file, own.to_toml()).expect("write a node's cluster file");
        cluster.set_cluster_file(*id, file);
    }
    cluster.start_all();
    let client = cluster.client();
    let accounts = funded_accounts(&client, 30).await;
    let old = leaders_of_every_shard(&client, 3).await[&0];

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..6u64 {
        let client = client.clone();
        let accounts = accounts.clone();
        let stop = stop.clone();
        let mut random = StdRng::seed_from_u64(seed ^ (worker + 1));
        workers.push(tokio::spawn(async move {
            let mut committed: Vec<(u64, u64, u64)> = Vec::new();
            let mut unknown: Vec<(u128, u64, u64, u64)> = Vec::new();
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (debit, credit) = random_pair(&mut random, &accounts);
                let amount = random.random_range(1..100);
                let id = TallyClient::new_transfer_id();
                match client.transfer(id, debit, credit, amount).await {
                    Ok(TransferOutcome::Committed) => committed.push((debit, credit, amount)),
                    Ok(TransferOutcome::Aborted(_)) => {}
                    Err(ClientError::OutcomeUnknown { .. }) => {
                        unknown.push((id, debit, credit, amount))
                    }
                    // Surely not applied (a refusal, no node reachable): nothing to count.
                    Err(_) => refused += 1,
                }
            }
            (committed, unknown, refused)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Cut the leader of shard 0 off from both peers, both directions, silently.
    let blackhole_for = Duration::from_millis(random.random_range(2_500..5_000));
    println!(
        "blackholing node {} (leader of shard 0 in term {}) for {blackhole_for:?} (seed {seed})",
        old.node, old.term
    );
    links.set_links(old.node, None, LinkMode::Blackhole);
    let cut_at = Instant::now();
    // A deposit sent straight to the old leader, bypassing the client's routing.
    let lonely_account = accounts
        .iter()
        .copied()
        .find(|account| cluster.config.shard_of(*account) == 0)
        .expect("an account of shard 0");
    let lonely_id = TallyClient::new_transfer_id();
    let old_address = cluster.config.node(old.node).expect("node").address.clone();
    let lonely = tokio::spawn(async move {
        let connection = net::Client::connect(old_address.as_str(), net::ClientConfig::default())
            .await
            .expect("connect to the old leader");
        connection
            .call(net::Deposit {
                id: lonely_id,
                account: lonely_account,
                amount: 1,
            })
            .await
    });

    // The majority elects another leader of shard 0, in a later term, and it serves.
    let new = loop {
        let found = leaders_of_every_shard(&client, 3).await[&0];
        if found.node != old.node {
            break found;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "no new leader of shard 0 10 s into the blackhole (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(new.term > old.term, "{new:?} after {old:?}");
    let elected = cut_at.elapsed();
    let on_shard_0: Vec<u64> = accounts
        .iter()
        .copied()
        .filter(|account| cluster.config.shard_of(*account) == 0)
        .collect();
    let probe = TallyClient::new_transfer_id();
    let probe_outcome = client
        .transfer(probe, on_shard_0[1], on_shard_0[2], 1)
        .await;
    assert!(
        matches!(probe_outcome, Ok(TransferOutcome::Committed)),
        "the new leader of shard 0 does not serve: {probe_outcome:?} (seed {seed})"
    );
    // Cut off, the old leader hears from no majority and steps down by itself (check-quorum),
    // still within the blackhole.
    let stepped_down = loop {
        let reports = group_reports(&client).await.unwrap_or_default();
        assert_one_leader_per_term(&reports);
        if own_view(&reports, old.node, 0).is_some_and(|group| !group.leads) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < blackhole_for,
            "node {} still says it leads shard 0 at the end of the blackhole (seed {seed})",
            old.node
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // From then on its commit index stays where it is: it commits nothing alone.
    let commit_after_stepping_down = own_group(&client, old.node, 0).await.commit_index;
    tokio::time::sleep(blackhole_for.saturating_sub(cut_at.elapsed())).await;
    let before_the_heal = own_group(&client, old.node, 0).await;
    assert_eq!(
        before_the_heal.commit_index, commit_after_stepping_down,
        "the cut-off replica committed entries alone: {before_the_heal:?} (seed {seed})"
    );
    let answered_before_the_heal = lonely.is_finished();
    links.set_links(old.node, None, LinkMode::Pass);
    let healed = Instant::now();
    println!(
        "node {} elected in term {} {elected:?} into the blackhole, node {} stepped down after \
         {stepped_down:?}; healed after {:?}",
        new.node,
        new.term,
        old.node,
        cut_at.elapsed()
    );

    // The old replica learns of the new term: it follows, or leads again only in a later term
    // (a leadership handed back to the shard's preferred replica).
    loop {
        let reports = group_reports(&client).await.unwrap_or_default();
        assert_one_leader_per_term(&reports);
        let caught_up = own_view(&reports, old.node, 0)
            .is_some_and(|group| group.term >= new.term && (!group.leads || group.term > new.term));
        if caught_up {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "node {} has not learnt of term {} 10 s after the heal (seed {seed})",
            old.node,
            new.term
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The deposit sent to the cut-off leader was never acknowledged (its connection is direct,
    // so the answer, whatever it is, comes within the connection's 5 s request timeout).
    let lonely_answer = tokio::time::timeout(Duration::from_secs(10), lonely)
        .await
        .expect("the old leader answers the deposit or its call times out")
        .expect("deposit task");
    assert!(
        !matches!(lonely_answer, Ok(net::Message::Deposited(_))),
        "the cut-off leader acknowledged a deposit alone (answered before the heal: \
         {answered_before_the_heal}): {lonely_answer:?} (seed {seed})"
    );
    println!("the cut-off leader answered the deposit: {lonely_answer:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut expected: HashMap<u64, i128> = accounts.iter().map(|a| (*a, INITIAL as i128)).collect();
    let mut apply = |debit: u64, credit: u64, amount: u64| {
        *expected.get_mut(&debit).unwrap() -= i128::from(amount);
        *expected.get_mut(&credit).unwrap() += i128::from(amount);
    };
    apply(on_shard_0[1], on_shard_0[2], 1);
    let (mut committed_count, mut unknown_count, mut refused_count) = (0, 0, 0);
    for worker in workers {
        let (committed, unknown, refused) = worker.await.expect("worker");
        committed_count += committed.len();
        refused_count += refused;
        for (debit, credit, amount) in committed {
            apply(debit, credit, amount);
        }
        for (id, debit, credit, amount) in unknown {
            unknown_count += 1;
            let asked = Instant::now();
            loop {
                match client.transfer_status(id).await {
                    Ok(net::TransferState::Committed) => apply(debit, credit, amount),
                    Ok(net::TransferState::Aborted(_) | net::TransferState::Unknown) => {}
                    other => {
                        assert!(
                            asked.elapsed() < Duration::from_secs(10),
                            "transfer {id:#x} still {other:?} 10 s after the load (seed {seed})"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                break;
            }
        }
    }
    println!(
        "{committed_count} committed, {unknown_count} of unknown outcome (resolved), {refused_count} refused"
    );
    assert!(committed_count > 0, "nothing committed (seed {seed})");
    assert_balances(&client, &accounts, &expected, seed).await;
    let history = client
        .history(lonely_account, 1000, 0)
        .await
        .expect("history");
    assert!(
        history
            .entries
            .iter()
            .all(|entry| entry.transfer_id != lonely_id),
        "the deposit sent to the cut-off leader was applied (seed {seed})"
    );
    assert_audit_passes(&client, u128::from(INITIAL) * accounts.len() as u128).await;
    assert_replicas_agree(&client, 0, seed).await;
}

/// Waits (at most 20 s) until every replica of `shard` has applied the same entry, the leader's
/// commit index, and the leader sees every replica current: the replicas hold the same state.
async fn assert_replicas_agree(client: &TallyClient, shard: u32, seed: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let statuses = client.cluster_status().await.expect("cluster status");
        let groups: Vec<(NodeId, GroupStatus)> = statuses
            .into_iter()
            .flat_map(|status| {
                let node = status.node_id;
                status.groups.into_iter().map(move |group| (node, group))
            })
            .filter(|(_, group)| group.shard == shard)
            .collect();
        let leader = groups
            .iter()
            .filter(|(_, group)| group.role == ReplicaRole::Leader)
            .max_by_key(|(_, group)| group.term);
        let agreed = leader.is_some_and(|(_, leader)| {
            groups.len() == 3
                && groups
                    .iter()
                    .all(|(_, group)| group.applied_index == leader.commit_index)
                && leader
                    .replicas
                    .iter()
                    .all(|replica| replica.health == ReplicaHealth::Current)
        });
        if agreed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas of shard {shard} do not agree 20 s after the load: {groups:?} (seed {seed})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
