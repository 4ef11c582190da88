//! A node's log formats: with `TALLY_LOG_FORMAT=json` (or `--log-format json`) every line of its
//! log file is one JSON object; an unknown format is a usage error. With the node's debug events
//! on, one grep for a transfer id over every node's log traces its two-phase commit end to end.

use std::process::Command;

use client::TallyClient;
use tests::{Cluster, account_on, funded};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

#[test]
fn json_logs_are_one_object_per_line_and_flushed_at_stop() {
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 1);
    cluster.set_env(1, "TALLY_LOG_FORMAT", "json");
    cluster.start_all();
    assert!(cluster.stop(1).success());
    let log = cluster.log(1);
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "too few lines:\n{log}");
    for line in &lines {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        assert!(object["level"].is_string(), "{line}");
        assert!(object["timestamp"].is_string(), "{line}");
        assert!(object["fields"]["message"].is_string(), "{line}");
    }
    // The last line written before the exit reaches the file: the writer thread is flushed.
    assert!(
        lines
            .last()
            .is_some_and(|line| line.contains("\"stopped\"")),
        "{log}"
    );
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let output = Command::new(PROGRAM)
        .args([
            "start",
            "--id",
            "1",
            "--cluster",
            "/nonexistent",
            "--data-dir",
            "/nonexistent",
            "--log-format",
            "xml",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("xml"), "{stderr}");
}

/// Every two-phase commit event names its node, shard, transfer and (where a record was logged)
/// LSN, so that a grep for one transfer id over the nodes' logs tells its whole story.
#[test]
fn one_grep_over_the_logs_traces_a_transfer_end_to_end() {
    let mut cluster = Cluster::configure(PROGRAM.as_ref(), 2);
    for id in [1, 2] {
        cluster.set_env(id, "TALLY_LOG_FORMAT", "json");
        cluster.set_env(id, "RUST_LOG", "info,node=debug");
    }
    cluster.start_all();
    let client = cluster.client();
    let id = TallyClient::new_transfer_id();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let on_1 = account_on(&cluster.config, 1, 1, 0);
        let on_2 = account_on(&cluster.config, 2, 1, 0);
        funded(&client, on_1, 100).await;
        funded(&client, on_2, 0).await;
        let outcome = client.transfer(id, on_1, on_2, 40).await.expect("transfer");
        assert_eq!(outcome, net::TransferOutcome::Committed);
    });
    for node in [1, 2] {
        assert!(cluster.stop(node).success());
    }
    let needle = id.to_string();
    let mut events = Vec::new();
    for node in [1, 2] {
        for line in cluster
            .log(node)
            .lines()
            .filter(|line| line.contains(&needle))
        {
            let object: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
            let fields = &object["fields"];
            assert_eq!(fields["transfer"], needle.as_str(), "{line}");
            assert_eq!(fields["node"], node, "{line}");
            assert!(fields["shard"].is_u64(), "{line}");
            let message = fields["message"].as_str().expect("a message").to_owned();
            if message.contains("prepared")
                || message.contains("decision logged")
                || message.contains("decision applied")
            {
                assert!(
                    fields["lsn"].as_u64().is_some_and(|lsn| lsn > 0),
                    "no LSN: {line}"
                );
            }
            events.push((node, message));
        }
    }
    for (node, expected) in [
        (1, "2pc: transfer received (coordinator)"),
        (1, "2pc: prepared (coordinator's own shard)"),
        (2, "2pc: prepared (participant)"),
        (1, "2pc: decision logged (coordinator)"),
        (1, "2pc: transfer answered (coordinator)"),
        (2, "2pc: decision applied (participant)"),
        (1, "2pc: decision acknowledged (coordinator)"),
    ] {
        assert!(
            events
                .iter()
                .any(|(at, message)| *at == node && message == expected),
            "node {node} did not log {expected:?}: {events:#?}"
        );
    }
}
