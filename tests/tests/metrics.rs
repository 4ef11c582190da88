//! Every node's `/metrics` on a replicated cluster: the exposition parses with a Prometheus
//! text-format parser, and what it counts agrees with what the client saw.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use prometheus_parse::{Scrape, Value};
use tests::{Cluster, funded};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

/// The body of `GET /metrics` at `address`, over plain HTTP/1.1, with its content type.
fn get_metrics(address: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the HTTP address");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|line| line.strip_prefix("content-type: "))
        .expect("a content type")
        .to_string();
    (content_type, body.to_string())
}

/// The sum of `name`'s samples whose labels include every pair of `labels`.
fn sum(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == name)
        .filter(|sample| {
            labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
        .map(|sample| match &sample.value {
            Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => *value,
            Value::Histogram(buckets) => buckets.last().map_or(0.0, |bucket| bucket.count),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_count_what_the_client_saw() {
    let cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    let client = cluster.client();
    let accounts: Vec<u64> = (1..=12).collect();
    for account in &accounts {
        funded(&client, *account, 1_000).await;
    }
    let mut committed = 0u64;
    let mut aborted = 0u64;
    for round in 0..150u64 {
        let debit = accounts[(round % 12) as usize];
        let credit = accounts[((round * 5 + 1) % 12) as usize];
        if debit == credit {
            continue;
        }
        // Round 0 and every 25th move more than an account holds: aborted, insufficient funds.
        let amount = if round % 25 == 0 { 1_000_000 } else { 1 };
        match client
            .transfer(u128::from(round) + 1, debit, credit, amount)
            .await
            .expect("transfer")
        {
            net::TransferOutcome::Committed => committed += 1,
            net::TransferOutcome::Aborted(_) => aborted += 1,
        }
    }
    assert!(
        committed > 100 && aborted > 0,
        "{committed} committed, {aborted} aborted"
    );

    let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
    let mut leaders = 0.0;
    // Per shard, leaderships gained minus lost over the nodes: the leaders serving now.
    let mut serving: BTreeMap<&str, f64> = BTreeMap::new();
    for node in &client.config().nodes {
        let address = node
            .http
            .as_deref()
            .expect("the harness gives every node HTTP");
        let (content_type, body) = get_metrics(address);
        assert!(
            content_type.starts_with("application/openmetrics-text"),
            "{content_type}"
        );
        assert!(body.ends_with("# EOF\n"), "an exposition ends with # EOF");
        let lines = body.lines().map(|line| Ok(line.to_string()));
        let scrape = Scrape::parse(lines).expect("the exposition parses");
        *totals.entry("committed").or_default() += sum(
            &scrape,
            "tally_transfers_total",
            &[("outcome", "committed")],
        );
        *totals.entry("insufficient").or_default() += sum(
            &scrape,
            "tally_transfers_total",
            &[("outcome", "aborted"), ("reason", "InsufficientFunds")],
        );
        *totals.entry("transfer requests").or_default() +=
            sum(&scrape, "tally_requests_total", &[("kind", "Transfer")]);
        leaders += sum(&scrape, "tally_raft_leader", &[]);
        for shard in ["0", "1", "2"] {
            *serving.entry(shard).or_default() += sum(
                &scrape,
                "tally_raft_leadership_gained_total",
                &[("shard", shard)],
            ) - sum(
                &scrape,
                "tally_raft_leadership_lost_total",
                &[("shard", shard)],
            );
        }
        // Every node holds a replica of each of the 3 shards, and writes its WAL.
        for shard in ["0", "1", "2"] {
            assert!(
                sum(&scrape, "tally_raft_commit_index", &[("shard", shard)]) > 0.0,
                "node {}: shard {shard} has no commit index\n{body}",
                node.id
            );
        }
        assert!(sum(&scrape, "tally_wal_fsync_duration_seconds", &[]) > 0.0);
        assert!(sum(&scrape, "tally_wal_records_total", &[]) > 0.0);
        assert!(body.contains("tally_build_info{"), "{body}");
        *totals.entry("prepare rounds").or_default() +=
            sum(&scrape, "tally_2pc_prepare_duration_seconds", &[]);
        *totals.entry("decision logs").or_default() +=
            sum(&scrape, "tally_2pc_decide_duration_seconds", &[]);
        *totals.entry("deliveries").or_default() +=
            sum(&scrape, "tally_2pc_deliver_duration_seconds", &[]);
        // Every peer answers heartbeats on a quiet cluster.
        assert_eq!(
            sum(&scrape, "tally_peer_up", &[]),
            2.0,
            "node {}: {body}",
            node.id
        );
        assert!(sum(&scrape, "tally_peer_rtt_seconds", &[]) > 0.0, "{body}");
        // Present, whatever their values: nothing is in flight or conflicting here.
        for family in [
            "tally_2pc_in_flight_transfers",
            "tally_2pc_awaiting_ack_decisions",
            "tally_2pc_presumed_aborts_total",
            "tally_lock_conflicts_total",
            "tally_lock_waits_total",
            "tally_funds_held_total",
            "tally_in_doubt_transactions",
        ] {
            assert!(
                body.contains(&format!("\n{family} ")),
                "{family} is missing:\n{body}"
            );
        }
    }
    // Every cross-shard transfer had a remote vote round, a logged decision and a delivery.
    for phase in ["prepare rounds", "decision logs", "deliveries"] {
        assert!(totals[phase] > 0.0, "no {phase}: {totals:?}");
    }
    // Each transfer is counted once, by the node that coordinated it (no retry was needed on a
    // quiet cluster, so requests equal transfers).
    assert_eq!(totals["committed"], committed as f64, "{totals:?}");
    assert_eq!(totals["insufficient"], aborted as f64, "{totals:?}");
    assert_eq!(
        totals["transfer requests"],
        (committed + aborted) as f64,
        "{totals:?}"
    );
    assert_eq!(leaders, 3.0, "one leader per shard");
    for (shard, count) in serving {
        assert_eq!(count, 1.0, "shard {shard}: leaderships gained minus lost");
    }
}

/// The load generator's own count of committed transfers and the nodes' `tally_transfers_total`
/// agree: every committed answer it heard was counted by the node that sent it, and the nodes
/// counted few more (answers to resends after a lost answer, and outcomes it resolved after).
#[test]
fn the_nodes_count_the_committed_transfers_the_load_generator_heard() {
    let cluster = Cluster::start_replicated(PROGRAM.as_ref(), 3, 3);
    let clients: u64 = 8;
    let output = std::process::Command::new(PROGRAM)
        .args(["loadgen", "--cluster"])
        .arg(&cluster.cluster_file)
        .args(["--accounts", "200", "--clients", &clients.to_string()])
        .args(["--duration", "3", "--seed", "1"])
        .output()
        .expect("run tally loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find(|line| line.starts_with("metrics: "))
        .unwrap_or_else(|| panic!("no metrics line:\n{stdout}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|word| word.parse().ok())
        .collect();
    let [counted, heard, resolved] = numbers[..] else {
        panic!("{line}");
    };
    assert!(heard > 0, "{stdout}");
    assert!(
        counted >= heard && counted <= heard + resolved + clients.max(heard / 50),
        "the nodes counted {counted} committed transfers, the load generator heard {heard} (+{resolved}): {line}"
    );
}
