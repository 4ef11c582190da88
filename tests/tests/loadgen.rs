//! The load generator's smoke run: a short load on a local 3-node cluster with a node killed and
//! restarted in the middle; the run must pass its end-of-run checks and write its files.

use std::process::Command;

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

#[test]
fn a_short_load_with_a_killed_node_passes_its_checks_and_writes_its_files() {
    let out = tempfile::tempdir().expect("temporary directory");
    let ports = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    // Three consecutive ports from a free one; a clash with another process is unlikely.
    let base_port = ports
        .local_addr()
        .expect("address")
        .port()
        .saturating_sub(3)
        .max(1024);
    drop(ports);
    let output = Command::new(PROGRAM)
        .args([
            "loadgen",
            "--accounts",
            "300",
            "--clients",
            "8",
            "--duration",
            "6",
            "--cross-shard",
            "0.5",
            "--base-port",
            &base_port.to_string(),
            "--fault",
            "kill:node=2,at=2s,for=1s",
            "--out",
        ])
        .arg(out.path())
        .env_remove("TALLY_CLUSTER")
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("invariants: PASS"), "{stdout}");
    assert!(stdout.contains("kill node 2 start"), "{stdout}");
    for file in [
        "summary.json",
        "latency.hgrm",
        "latency.hlog",
        "timeline.csv",
        "chart.svg",
    ] {
        let path = out.path().join(file);
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .len();
        assert!(size > 0, "{} is empty", path.display());
    }
    let summary = std::fs::read_to_string(out.path().join("summary.json")).unwrap();
    assert!(summary.contains("\"passed\": true"), "{summary}");
}
