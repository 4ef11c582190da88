//! A node's log formats: with `TALLY_LOG_FORMAT=json` (or `--log-format json`) every line of its
//! log file is one JSON object; an unknown format is a usage error.

use std::process::Command;

use tests::Cluster;

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
