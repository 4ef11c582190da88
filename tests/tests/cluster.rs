//! A real 3-node cluster on loopback: transfers within and across shards, the crash points of
//! two-phase commit (coordinator and participant killed at exact steps, then restarted), and
//! conservation under concurrent load, checked through the client library.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::{ClientError, ClientOptions, TallyClient};
use engine::testing::test_seed;
use net::{AbortReason, ErrorCode, TransferOutcome, TransferState};
use node::failpoint::points;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::{
    Cluster, account_on, accounts_on_every_node, assert_audit_passes, balance, funded, random_pair,
};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

/// A 3-node cluster with account `a` on node 1 holding 100 and `b` on node 2 holding 0, and
/// node `armed` restarted with crash point `point` armed.
async fn armed_cluster(armed: u32, point: &str) -> (Cluster, TallyClient, u64, u64) {
    let mut cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    let b = account_on(&cluster.config, 2, 1, 0);
    funded(&client, a, 100).await;
    funded(&client, b, 0).await;
    cluster.kill(armed);
    cluster.start_node(armed, &[point]);
    cluster.wait_up(armed);
    (cluster, client, a, b)
}

/// A client that tries once: a crash point must not be papered over by a retry.
fn one_shot(cluster: &Cluster) -> TallyClient {
    TallyClient::new(
        cluster.config.clone(),
        ClientOptions {
            attempts_max: 1,
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
}

/// Polls `check` every 50 ms until it returns true (at most 30 s).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn nothing_in_doubt(client: &TallyClient) -> bool {
    match client.cluster_status().await {
        Ok(nodes) => nodes.iter().all(|node| node.up && node.in_doubt_count == 0),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_within_and_across_shards_apply_once_and_refusals_change_nothing() {
    let cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    let config = &cluster.config;
    let a = account_on(config, 1, 1, 0);
    let a2 = account_on(config, 1, 1, 1);
    let b = account_on(config, 2, 1, 0);
    let c = account_on(config, 3, 1, 0);
    funded(&client, a, 1_000).await;
    funded(&client, a2, 0).await;
    funded(&client, b, 0).await;
    funded(&client, c, 0).await;

    // Cross-shard, then same-shard.
    let cross = 1u128 << 100;
    assert_eq!(
        client.transfer(cross, a, b, 300).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(
        client.transfer(cross + 1, a, a2, 100).await.unwrap(),
        TransferOutcome::Committed
    );
    // A retry of either id returns the first outcome and moves nothing.
    assert_eq!(
        client.transfer(cross, a, b, 300).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(
        client.transfer(cross + 1, a, a2, 100).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(
        (
            balance(&client, a).await,
            balance(&client, a2).await,
            balance(&client, b).await
        ),
        (600, 100, 300)
    );
    // The same id with other content is refused, whichever path (one-phase or 2PC) it takes.
    for (id, debit, credit, amount) in [
        (cross, a, b, 301),
        (cross, a, a2, 300),
        (cross + 1, a, b, 100),
    ] {
        match client.transfer(id, debit, credit, amount).await {
            Err(ClientError::Remote { code, .. }) => {
                assert_eq!(code, ErrorCode::DuplicateWithDifferentContent)
            }
            other => panic!("expected a duplicate-content error, got {other:?}"),
        }
    }

    // Insufficient funds and unknown accounts abort, across and within shards, and the abort is
    // the permanent answer for that id.
    let unknown = account_on(config, 3, 1, 5);
    for (id, debit, credit, amount, reason) in [
        (cross + 2, a, b, 10_000, AbortReason::InsufficientFunds),
        (cross + 3, a, a2, 10_000, AbortReason::InsufficientFunds),
        (cross + 4, a, unknown, 1, AbortReason::UnknownAccount),
    ] {
        let aborted = TransferOutcome::Aborted(reason);
        assert_eq!(
            client.transfer(id, debit, credit, amount).await.unwrap(),
            aborted
        );
        assert_eq!(
            client.transfer(id, debit, credit, amount).await.unwrap(),
            aborted
        );
        assert_eq!(
            client.transfer_status(id).await.unwrap(),
            TransferState::Aborted(reason)
        );
    }
    assert_eq!(
        (
            balance(&client, a).await,
            balance(&client, a2).await,
            balance(&client, b).await,
            balance(&client, c).await
        ),
        (600, 100, 300, 0)
    );
    assert_eq!(
        client.transfer_status(cross).await.unwrap(),
        TransferState::Committed
    );
    assert_eq!(
        client.transfer_status(cross + 99).await.unwrap(),
        TransferState::Unknown
    );
    // History on both sides of the cross-shard transfer.
    let history = client.history(b, 10, 0).await.unwrap();
    assert_eq!(history.entries.len(), 1);
    assert_eq!(history.entries[0].transfer_id, cross);
    assert_eq!(history.entries[0].counterparty_account, a);

    // A request sent to the wrong node is refused with a redirect, never executed there.
    let wrong = net::Client::connect(
        cluster.config.node(2).unwrap().address.as_str(),
        net::ClientConfig::default(),
    )
    .await
    .unwrap();
    match wrong
        .call(net::Transfer {
            id: cross + 5,
            debit: a,
            credit: b,
            amount: 1,
        })
        .await
    {
        Err(net::ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::WrongNode);
            assert_eq!(error.redirect_node_id, Some(1));
        }
        other => panic!("expected WrongNode, got {other:?}"),
    }
    assert_eq!(
        client.transfer_status(cross + 5).await.unwrap(),
        TransferState::Unknown
    );
    assert_audit_passes(&client, 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_makes_transfers_touching_it_abort_promptly() {
    let mut cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    let a = account_on(&cluster.config, 1, 1, 0);
    let c = account_on(&cluster.config, 3, 1, 0);
    funded(&client, a, 100).await;
    funded(&client, c, 0).await;
    cluster.kill(3);
    let started = Instant::now();
    assert_eq!(
        client.transfer(7, a, c, 10).await.unwrap(),
        TransferOutcome::Aborted(AbortReason::ParticipantUnavailable)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    cluster.restart(3);
    assert_eq!(balance(&client, a).await, 100);
    // The debit's lock was released: the next transfer goes through.
    assert_eq!(
        client.transfer(8, a, c, 10).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(balance(&client, c).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_before_its_decision_aborts_everywhere_after_restart() {
    let (mut cluster, client, a, b) = armed_cluster(1, points::COORDINATOR_AFTER_VOTES).await;
    let id = 41;
    let answer = one_shot(&cluster).transfer(id, a, b, 60).await;
    assert!(
        matches!(answer, Err(ClientError::OutcomeUnknown { .. })),
        "{answer:?}"
    );
    cluster.wait_dead(1);
    // Node 2 holds a durable PREPARE: in doubt until the coordinator answers.
    let status = one_shot(&cluster).cluster_status().await.unwrap();
    assert_eq!(status[1].in_doubt_count, 1, "{status:?}");
    cluster.restart(1);
    eventually("the transfer is resolved everywhere", || {
        nothing_in_doubt(&client)
    })
    .await;
    assert_eq!(
        client.transfer_status(id).await.unwrap(),
        TransferState::Aborted(AbortReason::PresumedAbort)
    );
    // A retry gets the abort; nothing moved; the locks are free.
    assert_eq!(
        client.transfer(id, a, b, 60).await.unwrap(),
        TransferOutcome::Aborted(AbortReason::PresumedAbort)
    );
    assert_eq!(
        (balance(&client, a).await, balance(&client, b).await),
        (100, 0)
    );
    assert_eq!(
        client.transfer(42, a, b, 60).await.unwrap(),
        TransferOutcome::Committed
    );
    assert!(cluster.log(2).contains("in-doubt transaction resolved"));
    assert_audit_passes(&client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_after_its_decision_commits_everywhere_after_restart() {
    let (mut cluster, client, a, b) = armed_cluster(1, points::COORDINATOR_AFTER_DECISION).await;
    let id = 51;
    let answer = one_shot(&cluster).transfer(id, a, b, 60).await;
    assert!(
        matches!(answer, Err(ClientError::OutcomeUnknown { .. })),
        "{answer:?}"
    );
    cluster.wait_dead(1);
    cluster.restart(1);
    eventually("the decision is delivered", || nothing_in_doubt(&client)).await;
    assert_eq!(
        client.transfer_status(id).await.unwrap(),
        TransferState::Committed
    );
    assert_eq!(
        client.transfer(id, a, b, 60).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(
        (balance(&client, a).await, balance(&client, b).await),
        (40, 60)
    );
    assert!(cluster.log(1).contains("decisions to resend after restart"));
    assert_audit_passes(&client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_killed_while_prepared_learns_the_decision_after_restart() {
    let (mut cluster, client, a, b) = armed_cluster(2, points::PARTICIPANT_BEFORE_DECISION).await;
    // The decision is durable at the coordinator before the participant hears it.
    assert_eq!(
        client.transfer(61, a, b, 60).await.unwrap(),
        TransferOutcome::Committed
    );
    cluster.wait_dead(2);
    cluster.restart(2);
    eventually("the participant learns the decision", || {
        nothing_in_doubt(&client)
    })
    .await;
    assert_eq!(balance(&client, b).await, 60);
    // Its locks are released: b takes part in the next transfer.
    assert_eq!(
        client.transfer(62, a, b, 40).await.unwrap(),
        TransferOutcome::Committed
    );
    assert_eq!(
        (balance(&client, a).await, balance(&client, b).await),
        (0, 100)
    );
    assert_audit_passes(&client, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_on_hot_accounts_conserve_money() {
    let seed = test_seed("concurrent_transfers_on_hot_accounts");
    let cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    // Two accounts per node: six hot accounts.
    let accounts = accounts_on_every_node(&cluster.config, 2);
    for account in &accounts {
        funded(&client, *account, 1_000).await;
    }
    let committed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let client = client.clone();
        let accounts = accounts.clone();
        let committed = committed.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ worker);
            for _ in 0..60 {
                let (from, to) = random_pair(&mut rng, &accounts);
                let id = TallyClient::new_transfer_id();
                let amount = rng.random_range(1..=300);
                if client
                    .transfer(id, from, to, amount)
                    .await
                    .expect("transfer")
                    == TransferOutcome::Committed
                {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(committed.load(Ordering::Relaxed) > 0, "seed {seed}");
    assert_audit_passes(&client, 6_000).await;
    let read = client.balances(&accounts).await.unwrap();
    assert_eq!(
        read.iter()
            .map(|balance| u128::from(balance.balance))
            .sum::<u128>(),
        6_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_reads_during_cross_shard_transfers_always_sum_to_the_total() {
    let seed = test_seed("consistent_reads_during_cross_shard_transfers");
    let cluster = Cluster::start(PROGRAM.as_ref(), 3);
    let client = cluster.client();
    let accounts = accounts_on_every_node(&cluster.config, 3);
    for account in &accounts {
        funded(&client, *account, 500).await;
    }
    let total: u128 = 500 * accounts.len() as u128;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for worker in 0..4u64 {
        let client = client.clone();
        let accounts = accounts.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (worker << 32));
            let mut committed = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (from, to) = random_pair(&mut rng, &accounts);
                let outcome = client
                    .transfer(
                        TallyClient::new_transfer_id(),
                        from,
                        to,
                        rng.random_range(1..=50),
                    )
                    .await
                    .expect("transfer");
                // Reads take no locks: none of these transfers meets one.
                assert_ne!(
                    outcome,
                    TransferOutcome::Aborted(AbortReason::LockConflict),
                    "a transfer aborted on a lock conflict beside consistent reads (seed {seed})"
                );
                committed += u64::from(outcome == TransferOutcome::Committed);
            }
            committed
        }));
    }
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline || reads < 20 {
        match client.balances(&accounts).await {
            Ok(read) => {
                let sum: u128 = read.iter().map(|balance| u128::from(balance.balance)).sum();
                assert_eq!(sum, total, "read {reads}, seed {seed}");
                reads += 1;
            }
            Err(error) => assert!(error.is_retryable(), "{error}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    assert!(
        committed > 0,
        "no transfer committed while reading (seed {seed})"
    );
    assert_audit_passes(&client, total).await;
}

/// A consistent read that fails because the link to a node it read from was cut (after that node
/// had the read's first round, before its answer came back) leaves nothing behind on that node:
/// reads take no locks, so a deposit to the account it was reading succeeds at once, while the
/// link is still cut and after it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_leaves_nothing_that_blocks_writes() {
    use loadgen::proxy::{LinkMode, Proxy};

    let mut cluster = Cluster::configure(std::path::Path::new(PROGRAM), 2);
    // Node 1 reaches node 2 through a proxy; clients and node 2 use the real addresses.
    let node_2 = cluster.config.node(2).expect("node 2").address.clone();
    let proxy = Proxy::start(
        "127.0.0.1:0".parse().expect("address"),
        node_2.parse().expect("node 2's address"),
    )
    .await
    .expect("start the proxy");
    let mut own = cluster.config.clone();
    own.nodes[1].address = proxy.local_addr().to_string();
    let own_file = cluster.directory().join("node-1.cluster.toml");
    std::fs::write(&own_file, own.to_toml()).expect("write node 1's cluster file");
    cluster.set_cluster_file(1, &own_file);
    cluster.start_all();
    let client = cluster.client();
    let on_1 = account_on(&cluster.config, 1, 1, 0);
    let on_2 = account_on(&cluster.config, 2, 1, 0);
    funded(&client, on_1, 100).await;
    funded(&client, on_2, 100).await;

    // The read's request reaches node 2 after 600 ms; its answer would be back at 1.2 s.
    proxy.set_mode(LinkMode::Delay(Duration::from_millis(600)));
    let read = tokio::spawn(async move {
        let connection = net::Client::connect(
            cluster_address(&own, 1).as_str(),
            net::ClientConfig::default(),
        )
        .await
        .expect("connect to node 1");
        connection
            .call(net::GetBalances {
                accounts: vec![on_1, on_2],
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Cut while the answer is on its way: node 2 served the read, node 1 hears nothing.
    proxy.set_mode(LinkMode::Partition);
    let direct = net::Client::connect(node_2.as_str(), net::ClientConfig::default())
        .await
        .expect("connect to node 2");
    let mut read = Some(read);
    for (attempt, mode) in [(1u128, "cut"), (2, "healed")] {
        if attempt == 2 {
            let read = read.take().expect("the read is awaited once");
            let answer = read.await.expect("read task");
            assert!(
                matches!(&answer, Err(net::ClientError::Remote(refusal)) if refusal.code == ErrorCode::ParticipantUnavailable),
                "{answer:?}"
            );
            proxy.set_mode(LinkMode::Pass);
        }
        let deposit = net::Deposit {
            id: (1 << 100) + attempt,
            account: on_2,
            amount: 1,
        };
        let answer = direct.call(deposit).await;
        assert!(
            matches!(answer, Ok(net::Message::Deposited(_))),
            "a deposit to an account a failed read was reading, link {mode}: {answer:?}"
        );
    }
    assert_eq!(balance(&client, on_2).await, 100 + 2);
}

fn cluster_address(config: &client::config::ClusterConfig, id: u32) -> String {
    config.node(id).expect("node").address.clone()
}
