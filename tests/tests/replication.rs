//! A real 3-node cluster whose 3 shards each have 3 replicas (Raft groups): a shard's leader
//! killed under load, and a shard that lost its majority, checked through the client library.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use client::{ClientError, TallyClient};
use engine::testing::test_seed;
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
    let balances = client.balances(&accounts).await.expect("consistent read");
    for (account, balance) in accounts.iter().zip(balances) {
        assert_eq!(
            i128::from(balance.balance),
            expected[account],
            "account {account}: balance differs from its acknowledged transfers (seed {seed})"
        );
    }
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
/// within the client's retries (no hang), and with one replica back the shard serves again; the
/// write resent with its id is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_without_a_majority_refuses_writes_and_serves_again_when_one_returns() {
    let mut cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    let client = cluster.client();
    funded(&client, 1, 100).await;
    cluster.kill(2);
    cluster.kill(3);
    let started = Instant::now();
    let id = TallyClient::new_transfer_id();
    let refused = client.deposit(id, 1, 50).await;
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
    cluster.restart(2);
    // The same id again: applied once, whatever became of the first attempt.
    let mut applied = None;
    for _ in 0..20 {
        match client.deposit(id, 1, 50).await {
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
    assert_eq!(client.balance(1).await.expect("balance"), 150);
}
