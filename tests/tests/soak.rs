//! Crash-restart cycles with real processes: a 3-node cluster under concurrent transfers with
//! idempotent retries, while a chaos loop SIGKILLs random nodes at random moments (one node,
//! two at once, or the same node twice in a row; sometimes restarting a node with a crash point
//! armed, so it dies at an exact 2PC step under load) and restarts them. At the end, with every
//! node up, every outcome a client heard is checked against the cluster.
//!
//! It runs twice: with single-copy shards, and with every shard a group of 3 replicas (one per
//! node), where transfers must also go on committing while one node is down.
//!
//! CI runs a short version. `TALLY_SOAK=N` runs N kill cycles and prints a summary line:
//! `TALLY_SOAK=200 cargo test --release -p tests --test soak -- --nocapture`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{AuditVerdict, ClientOptions, TallyClient};
use engine::testing::test_seed;
use net::{TransferOutcome, TransferState};
use node::failpoint::points;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tests::{Cluster, accounts_on_every_node, random_pair};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
/// Kill cycles of the CI run.
const CI_CYCLES: u32 = 6;
const ACCOUNTS_PER_NODE: usize = 6;
const INITIAL_BALANCE: u64 = 10_000;
const WORKERS: u64 = 6;
/// How long a worker keeps resending a transfer whose outcome it has not heard.
const RESEND_FOR: Duration = Duration::from_secs(20);

/// What a client heard about one transfer.
#[derive(Debug, Clone, Copy)]
struct Heard {
    debit: u64,
    credit: u64,
    amount: u64,
    /// `None`: no answer came, even after resending.
    outcome: Option<TransferOutcome>,
}

fn client(cluster: &Cluster) -> TallyClient {
    TallyClient::new(
        cluster.config.clone(),
        ClientOptions {
            request_timeout: Duration::from_secs(3),
            attempts_max: 3,
            ..ClientOptions::default()
        },
    )
}

/// Sends one transfer, resending it with the same id until an outcome is heard (a retry can
/// never apply twice) or `RESEND_FOR` passes.
async fn transfer_until_answered(
    client: &TallyClient,
    id: u128,
    debit: u64,
    credit: u64,
    amount: u64,
) -> Option<TransferOutcome> {
    let deadline = Instant::now() + RESEND_FOR;
    loop {
        match client.transfer(id, debit, credit, amount).await {
            Ok(outcome) => return Some(outcome),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_transfer_survives_random_kills() {
    soak("soak", 1).await;
}

/// The same with every shard a group of 3 replicas, one on each node. A node killed alone leaves
/// every shard a majority, so transfers must go on committing while it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_transfer_survives_random_kills_with_three_replicas() {
    soak("soak-replicated", 3).await;
}

async fn soak(name: &str, replicas: u32) {
    let cycles: u32 = std::env::var("TALLY_SOAK")
        .ok()
        .map(|value| {
            value
                .parse()
                .expect("TALLY_SOAK must be a number of cycles")
        })
        .unwrap_or(CI_CYCLES);
    let seed = test_seed(name);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, replicas);
    let client = client(&cluster);
    let accounts = accounts_on_every_node(&cluster.config, ACCOUNTS_PER_NODE);
    // Set-up with the library's patient defaults; the load below uses the impatient client.
    let setup = cluster.client();
    for account in &accounts {
        setup.create_account(*account, None, 0).await.unwrap();
        setup
            .deposit(TallyClient::new_transfer_id(), *account, INITIAL_BALANCE)
            .await
            .unwrap();
    }

    // The load: transfers within and across shards, with idempotent resends.
    let heard: Arc<Mutex<HashMap<u128, Heard>>> = Arc::default();
    // Committed transfers touching each shard (by either account).
    let committed_on: Arc<Vec<AtomicU64>> = Arc::new(
        (0..cluster.config.shard_count)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let client = client.clone();
        let accounts = accounts.clone();
        let heard = heard.clone();
        let committed_on = committed_on.clone();
        let config = cluster.config.clone();
        let stop = stop.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ (worker + 1) << 40);
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (debit, credit) = random_pair(&mut rng, &accounts);
                let amount = rng.random_range(1..=700);
                let id: u128 = rng.random::<u128>() | 1;
                let outcome = transfer_until_answered(&client, id, debit, credit, amount).await;
                if outcome == Some(TransferOutcome::Committed) {
                    let (from, to) = (config.shard_of(debit), config.shard_of(credit));
                    committed_on[from as usize].fetch_add(1, Ordering::Relaxed);
                    if to != from {
                        committed_on[to as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
                heard.lock().unwrap().insert(
                    id,
                    Heard {
                        debit,
                        credit,
                        amount,
                        outcome,
                    },
                );
            }
        }));
    }

    // The chaos.
    let mut kills = 0u32;
    // Nodes that died other than by SIGKILL (ours, or an armed crash point's).
    let mut crashes: Vec<String> = Vec::new();
    let mut last_victim = 1u32;
    // Transfers committed, while a single node was down, on the shards that node leads when all
    // is well: none with single-copy shards; replicated, the shards keep a majority and serve.
    let mut committed_while_one_down = 0u64;
    let mut single_kills = 0u32;
    let points_to_arm = [
        points::COORDINATOR_AFTER_VOTES,
        points::COORDINATOR_AFTER_DECISION,
        points::PARTICIPANT_BEFORE_DECISION,
    ];
    for cycle in 0..cycles {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..1200))).await;
        let victims: Vec<u32> = match rng.random_range(0..100) {
            0..15 => {
                let first = rng.random_range(1..=3);
                vec![first, first % 3 + 1]
            }
            15..30 => vec![last_victim],
            _ => vec![rng.random_range(1..=3)],
        };
        for node in 1..=3 {
            crashes.extend(unexpected_exit(&mut cluster, node));
        }
        for victim in &victims {
            cluster.kill(*victim);
            kills += 1;
        }
        last_victim = victims[0];
        let victim_shards: Vec<usize> = (0..cluster.config.shard_count)
            .filter(|shard| cluster.config.preferred_leader(*shard) == victims[0])
            .map(|shard| shard as usize)
            .collect();
        let on_victim_shards = || -> u64 {
            victim_shards
                .iter()
                .map(|s| committed_on[*s].load(Ordering::Relaxed))
                .sum()
        };
        let before = on_victim_shards();
        // Replicated, a node stays down long enough for its groups to elect new leaders.
        let down_ms = if replicas > 1 { 1500..3000 } else { 0..800 };
        tokio::time::sleep(Duration::from_millis(rng.random_range(down_ms))).await;
        if victims.len() == 1 {
            single_kills += 1;
            committed_while_one_down += on_victim_shards() - before;
        }
        for victim in &victims {
            // Now and then the node comes back with a crash point armed: it dies again at that
            // exact 2PC step under the load, and the next cycle brings it back.
            if rng.random_bool(0.25) {
                let point = points_to_arm[rng.random_range(0..points_to_arm.len())];
                println!("cycle {cycle}: node {victim} restarts with {point} armed");
                cluster.start_node(*victim, &[point]);
            } else {
                cluster.start_node(*victim, &[]);
            }
        }
        for victim in &victims {
            cluster.wait_up_or_exit(*victim);
        }
        // A node that already died at its crash point comes back plain, so every cycle ends
        // with the whole cluster running (an armed node still alive dies later, under load).
        for node in 1..=3 {
            if !cluster.is_running(node) {
                crashes.extend(unexpected_exit(&mut cluster, node));
                cluster.restart(node);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    // Every node up, nothing armed.
    for node in 1..=3 {
        crashes.extend(unexpected_exit(&mut cluster, node));
    }
    for node in 1..=3 {
        cluster.kill(node);
        cluster.start_node(node, &[]);
    }
    for node in 1..=3 {
        cluster.wait_up(node);
    }
    let heard = heard.lock().unwrap().clone();
    if replicas > 1 {
        // Leaders back where the cluster file puts them, so that no hand-over runs during the
        // checks.
        cluster.wait_for_leaders();
    }
    // Checked with the patient client: the checks must not fail on a retry's impatience.
    let mut violations = check(&cluster, &setup, &accounts, &heard).await;
    violations.extend(crashes);
    let committed = heard
        .values()
        .filter(|heard| heard.outcome == Some(TransferOutcome::Committed))
        .count();
    let unknown = heard
        .values()
        .filter(|heard| heard.outcome.is_none())
        .count();
    println!(
        "{name}: seed {seed}, replicas {replicas}, cycles {cycles}, transfers {} (committed {committed}, aborted {}, unknown {unknown}), kills {kills}, committed on a killed node's shards while it was down alone {committed_while_one_down} (in {single_kills} single kills), violations {}",
        heard.len(),
        heard.len() - committed - unknown,
        violations.len()
    );
    if replicas > 1 && single_kills > 0 {
        assert!(
            committed_while_one_down > 0,
            "seed {seed}: nothing committed while a single node was down, in {single_kills} kills"
        );
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations:\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(committed > 0, "seed {seed}: nothing committed");
}

/// A node that died by anything but SIGKILL (a panic, an error exit) is a violation.
fn unexpected_exit(cluster: &mut Cluster, node: u32) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let status = cluster.exit_status(node)?;
    (status.signal() != Some(libc::SIGKILL)).then(|| {
        format!(
            "node {node} died on its own ({status}); its log:\n{}",
            cluster.log(node)
        )
    })
}

/// Everything the cluster must agree with, once settled; returns the violations found.
async fn check(
    cluster: &Cluster,
    client: &TallyClient,
    accounts: &[u64],
    heard: &HashMap<u128, Heard>,
) -> Vec<String> {
    let mut violations = Vec::new();
    // Settle: in-doubt transactions resolved, decisions delivered (every shard is led already:
    // the caller waited for its preferred leader).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let settled = match client.cluster_status().await {
            Ok(nodes) => nodes.iter().all(|node| node.up && node.in_doubt_count == 0),
            Err(_) => false,
        };
        if settled {
            break;
        }
        if Instant::now() > deadline {
            violations.push("transactions still in doubt 60 s after the last restart".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each node's own view, asked directly: no node may say committed where another says aborted.
    let mut views = Vec::new();
    for node in &cluster.config.nodes {
        views.push(
            net::Client::connect(node.address.as_str(), net::ClientConfig::default())
                .await
                .expect("connect to a node"),
        );
    }
    let mut expected: HashMap<u64, i128> = accounts
        .iter()
        .map(|account| (*account, i128::from(INITIAL_BALANCE)))
        .collect();
    let mut committed_ids: HashMap<u128, (u64, u64)> = HashMap::new();
    // Every transfer's status on every node, and a retry of each acknowledged one, 64 at once.
    let entries: Vec<(u128, Heard)> = heard.iter().map(|(id, heard)| (*id, *heard)).collect();
    for chunk in entries.chunks(64) {
        let mut tasks = tokio::task::JoinSet::new();
        for (id, heard) in chunk.iter().copied() {
            let views = views.clone();
            let client = client.clone();
            tasks.spawn(async move {
                let mut states = Vec::new();
                let mut problems = Vec::new();
                for view in &views {
                    match view.call(net::GetTransferStatus { id }).await {
                        Ok(net::Message::TransferStatus(status)) => states.push(status.state),
                        other => {
                            problems.push(format!("transfer {id}: status query failed: {other:?}"))
                        }
                    }
                }
                // A retry of an acknowledged transfer returns its original outcome.
                if let Some(outcome) = heard.outcome {
                    match client
                        .transfer(id, heard.debit, heard.credit, heard.amount)
                        .await
                    {
                        Ok(again) if again == outcome => {}
                        other => problems.push(format!(
                            "transfer {id}: acknowledged {outcome:?}, a retry got {other:?}"
                        )),
                    }
                }
                (id, heard, states, problems)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (id, heard, states, problems) = joined.expect("check task");
            violations.extend(problems);
            let committed_somewhere = states.contains(&TransferState::Committed);
            let aborted_somewhere = states
                .iter()
                .any(|state| matches!(state, TransferState::Aborted(_)));
            if committed_somewhere && aborted_somewhere {
                violations.push(format!("transfer {id}: nodes disagree: {states:?}"));
            }
            if states.contains(&TransferState::InProgress) {
                violations.push(format!("transfer {id}: still in progress: {states:?}"));
            }
            match heard.outcome {
                Some(TransferOutcome::Committed) if !committed_somewhere => violations.push(
                    format!("transfer {id}: acknowledged committed, cluster says {states:?}"),
                ),
                Some(TransferOutcome::Aborted(_)) if committed_somewhere => violations.push(
                    format!("transfer {id}: acknowledged aborted, cluster says {states:?}"),
                ),
                _ => {}
            }
            if committed_somewhere {
                *expected.get_mut(&heard.debit).unwrap() -= i128::from(heard.amount);
                *expected.get_mut(&heard.credit).unwrap() += i128::from(heard.amount);
                committed_ids.insert(id, (heard.debit, heard.credit));
            }
        }
    }
    // Balances: exactly the committed transfers, each once.
    match client.balances(accounts).await {
        Ok(balances) => {
            for balance in balances {
                let want = expected[&balance.account];
                if i128::from(balance.balance) != want {
                    violations.push(format!(
                        "account {}: balance {}, expected {want}",
                        balance.account, balance.balance
                    ));
                }
            }
        }
        Err(error) => violations.push(format!("consistent read failed: {error}")),
    }
    // History: each committed transfer appears once on each side; nothing else does.
    let mut seen: HashMap<u128, u32> = HashMap::new();
    for account in accounts {
        let mut cursor = 0;
        loop {
            let page = match client.history(*account, 1000, cursor).await {
                Ok(page) => page,
                Err(error) => {
                    violations.push(format!("history of {account}: {error}"));
                    break;
                }
            };
            for entry in &page.entries {
                if matches!(
                    entry.kind,
                    net::HistoryKind::TransferDebit | net::HistoryKind::TransferCredit
                ) {
                    *seen.entry(entry.transfer_id).or_default() += 1;
                }
            }
            if page.next_cursor == 0 {
                break;
            }
            cursor = page.next_cursor;
        }
    }
    for (id, count) in &seen {
        if !committed_ids.contains_key(id) {
            violations.push(format!("transfer {id}: in history but not committed"));
        } else if *count != 2 {
            violations.push(format!(
                "transfer {id}: {count} history entries, expected 2"
            ));
        }
    }
    for id in committed_ids.keys() {
        if !seen.contains_key(id) {
            violations.push(format!("transfer {id}: committed but in no history"));
        }
    }
    // Money conserved, nothing negative, nothing in doubt, at one consistent cut.
    match client.audit().await {
        Ok(report) => {
            let verdict = AuditVerdict::new(&report, client.config());
            if !verdict.passed() {
                violations.push(format!("audit: {verdict}"));
            }
            let expected = u128::from(INITIAL_BALANCE) * accounts.len() as u128;
            if verdict.totals().map(|totals| totals.balances_sum) != Some(expected) {
                violations.push(format!(
                    "audit: balances should sum to {expected}: {verdict}"
                ));
            }
        }
        Err(error) => violations.push(format!("audit failed: {error}")),
    }
    violations
}
