//! The load generator's smoke run: a short load on a local 3-node cluster with a node killed and
//! restarted in the middle; the run must pass its end-of-run checks and write its files.

use std::process::Command;

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

#[test]
fn a_short_load_with_a_killed_node_passes_its_checks_and_writes_its_files() {
    let out = tempfile::tempdir().expect("temporary directory");
    let base_port = free_base_port();
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

/// An interrupted run stops every node it started and removes the cluster it created: SIGTERM
/// in the middle of the load, then no node process is left and the temporary directory is gone.
#[test]
fn an_interrupted_run_stops_its_nodes_and_removes_its_files() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let temporary = tempfile::tempdir().expect("temporary directory");
    let base_port = free_base_port();
    let mut loadgen = Command::new(PROGRAM)
        .args([
            "loadgen",
            "--accounts",
            "300",
            "--clients",
            "4",
            "--duration",
            "60",
            "--base-port",
            &base_port.to_string(),
        ])
        // The local cluster's temporary directory goes here, so that the test can look.
        .env("TMPDIR", temporary.path())
        .env_remove("TALLY_CLUSTER")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run loadgen");
    let stdout = loadgen.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    // The first progress line: the nodes run and the load has started.
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.expect("a line");
        let started = line.contains("committed/s");
        seen.push(line);
        if started {
            break;
        }
    }
    let nodes = children_of(loadgen.id());
    assert_eq!(
        nodes.len(),
        3,
        "three nodes run: {nodes:?}\n{}",
        seen.join("\n")
    );
    assert_eq!(
        std::fs::read_dir(temporary.path()).expect("list").count(),
        1,
        "the cluster's directory exists while it runs"
    );
    // SAFETY: sending a signal to a child process this test started.
    unsafe { libc::kill(loadgen.id() as libc::pid_t, libc::SIGTERM) };
    let status = loadgen.wait().expect("loadgen exits");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut loadgen.stderr.take().expect("piped"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "an interrupted run is not a success");
    // The report of what ran, its checks replaced by the interruption.
    let report = rest.join("\n");
    assert!(
        rest.iter()
            .any(|line| line.starts_with("elapsed ") && line.contains(" committed (")),
        "no report after the interruption:\n{report}\n{stderr}"
    );
    assert!(
        report.contains("interrupted by SIGTERM after")
            && report.contains("the end-of-run checks did not run"),
        "{report}"
    );
    assert!(report.contains("invariants: FAIL"), "{report}");
    for node in &nodes {
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(*node as libc::pid_t, 0) } == 0;
        assert!(
            !alive,
            "node process {node} is still running:\n{}",
            rest.join("\n")
        );
    }
    assert_eq!(
        std::fs::read_dir(temporary.path()).expect("list").count(),
        0,
        "the cluster's temporary directory is removed"
    );
}

/// `tally cluster up` owns the nodes it starts: SIGTERM stops all of them, and it exits 0 (its data
/// directory is the user's, and stays).
#[test]
fn cluster_up_stops_its_nodes_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let data = tempfile::tempdir().expect("temporary directory");
    let mut up = Command::new(PROGRAM)
        .args(["cluster", "up", "--nodes", "3", "--base-port"])
        .arg(free_base_port().to_string())
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cluster up");
    let stdout = up.stdout.take().expect("piped");
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line");
        let ready = line.starts_with("try:");
        seen.push(line);
        if ready {
            break;
        }
    }
    let nodes = children_of(up.id());
    assert_eq!(
        nodes.len(),
        3,
        "three nodes run: {nodes:?}\n{}",
        seen.join("\n")
    );
    // SAFETY: sending a signal to a child process this test started.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGTERM) };
    let status = up.wait().expect("cluster up exits");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut up.stderr.take().expect("piped"), &mut stderr)
        .expect("stderr");
    assert!(status.success(), "{status}: {stderr}");
    for node in &nodes {
        // SAFETY: signal 0 only asks whether the process exists.
        let alive = unsafe { libc::kill(*node as libc::pid_t, 0) } == 0;
        assert!(!alive, "node process {node} is still running");
    }
    assert!(data.path().join("cluster.toml").exists());
}

/// The first of three consecutive ports that were free a moment ago.
fn free_base_port() -> u16 {
    // Below Linux's ephemeral range (32768 and up): the nodes' own outgoing connections (each
    // node connects to every other, replicas to replicas) take ephemeral ports, so a range just
    // below a port the system handed out was taken now and then before a node could bind it.
    for _ in 0..1000 {
        let base: u16 = rand::random_range(20_000..32_000);
        let free =
            (base..base + 3).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no 3 consecutive free ports in 20000..32000");
}

/// Pids of the processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The fields after the parenthesised command name: state, then the parent's pid.
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let parent_pid: Option<u32> = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok());
        if parent_pid == Some(parent) {
            children.push(pid);
        }
    }
    children
}
