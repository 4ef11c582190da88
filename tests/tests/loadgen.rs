//! The load generator and `tally cluster up` as processes: short loads on a local 3-node cluster
//! with a node killed and restarted, or faults aimed at shard leaders, which must pass their
//! end-of-run checks and write their files; an interrupted run; bad faults; `cluster up` stopping
//! its nodes, and keeping them running when one dies.

use std::process::Command;
use std::time::{Duration, Instant};

use tests::{children_of, free_base_port};

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");

/// Runs `tally loadgen` on a local cluster of its own (300 accounts, 8 clients, half of the
/// transfers cross-shard) with `arguments` and `--out out`; panics unless it succeeds. Its stdout.
fn run_loadgen(arguments: &[&str], out: &std::path::Path) -> String {
    let output = Command::new(PROGRAM)
        .args(["loadgen", "--accounts", "300", "--clients", "8"])
        .args(["--cross-shard", "0.5", "--base-port"])
        .arg(free_base_port().to_string())
        .args(arguments)
        .arg("--out")
        .arg(out)
        .env_remove("TALLY_CLUSTER")
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    stdout
}

#[test]
fn a_short_load_with_a_killed_node_passes_its_checks_and_writes_its_files() {
    let out = tempfile::tempdir().expect("temporary directory");
    let stdout = run_loadgen(
        &["--duration", "6", "--fault", "kill:node=2,at=2s,for=1s"],
        out.path(),
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

/// Faults aimed at roles: the leader of shard 0 killed, then the leader of shard 1 blackholed from
/// its peers, each resolved to a node when it begins. The report and summary name the node each
/// hit; the leader changes seen during the run include a new leader of each of those shards, on
/// another node, after its fault began; the chart marks them; the checks pass.
#[test]
fn faults_aimed_at_leaders_hit_them_and_the_leader_changes_are_reported() {
    let out = tempfile::tempdir().expect("temporary directory");
    let stdout = run_loadgen(
        &[
            "--duration",
            "12",
            "--replicas",
            "3",
            "--fault",
            "kill:leader-of=0,at=2s,for=2s",
            "--fault",
            "partition:leader-of=1,at=6s,for=3s",
        ],
        out.path(),
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary.json is JSON");
    assert_eq!(summary["invariants"]["passed"], true, "{stdout}");
    let faults = summary["faults"].as_array().expect("faults");
    let changes = summary["leader_changes"]
        .as_array()
        .expect("leader_changes");
    for (shard, action) in [(0, "kill"), (1, "blackhole")] {
        let role = format!("(leader of shard {shard}");
        let events: Vec<&serde_json::Value> = faults
            .iter()
            .filter(|event| event["event"].as_str().unwrap().contains(&role))
            .collect();
        assert_eq!(
            events.len(),
            2,
            "a start and an end for shard {shard}: {faults:?}"
        );
        let hit = events[0]["node"].as_u64().expect("the node the fault hit");
        let start = events[0]["event"].as_str().unwrap();
        let prefix = format!("{action} node {hit}");
        assert!(
            start.starts_with(&prefix) && start.ends_with(" start") && start.contains(", term "),
            "{start}"
        );
        assert_eq!(
            events[1]["node"].as_u64(),
            Some(hit),
            "ends on the node it hit"
        );
        assert!(stdout.contains(start), "the report names it: {stdout}");
        let began = events[0]["at_seconds"].as_f64().unwrap();
        assert!(
            changes.iter().any(|change| change["shard"] == shard
                && change["leader"].as_u64() != Some(hit)
                && change["at_seconds"].as_f64().unwrap() >= began),
            "no new leader of shard {shard} after its leader, node {hit}, was hit: {changes:?}\n{stdout}"
        );
    }
    assert!(stdout.contains("leader change at "), "{stdout}");
    let chart = std::fs::read_to_string(out.path().join("chart.svg")).expect("chart.svg");
    assert!(
        chart.contains(">leader change (shard"),
        "no leader-change legend"
    );
    println!(
        "failed requests: {}, unknown outcomes: {}; leader changes: {changes:?}",
        summary["failed"], summary["unknown_outcome"]
    );
}

/// A fault aimed at a shard the cluster does not have, or written wrong, is one error line and a
/// non-zero exit, before any node starts.
#[test]
fn a_bad_fault_is_one_error_line() {
    for (fault, code) in [
        ("kill:leader-of=3,at=1s,for=1s", 1),
        ("kill:leader-of=zero,at=1s,for=1s", 2),
        ("partition:leader-of=0,peer=2,at=1s,for=1s", 2),
    ] {
        let output = Command::new(PROGRAM)
            .args([
                "loadgen",
                "--nodes",
                "3",
                "--duration",
                "5",
                "--fault",
                fault,
            ])
            .env_remove("TALLY_CLUSTER")
            .output()
            .expect("run loadgen");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{fault}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|line| !line.trim().is_empty())
            .collect();
        assert!(
            lines.first().is_some_and(|line| line.contains("error")),
            "{fault}: {stderr}"
        );
        if code == 1 {
            assert_eq!(lines.len(), 1, "{fault}: {stderr}");
        }
    }
}

/// A local cluster whose ports are taken (another cluster runs there, say) is refused with one
/// error line, by loadgen and by `cluster up`: its nodes could not bind, and whatever answers on
/// those ports must not be driven in their place.
#[test]
fn a_local_cluster_on_taken_ports_is_refused() {
    let base_port = free_base_port();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", base_port + 1)).expect("take a port");
    let data = tempfile::tempdir().expect("temporary directory");
    for arguments in [
        vec!["loadgen", "--duration", "5"],
        vec!["cluster", "up", "--data-dir", data.path().to_str().unwrap()],
    ] {
        let output = Command::new(PROGRAM)
            .args(&arguments)
            .args(["--nodes", "3", "--base-port", &base_port.to_string()])
            .env_remove("TALLY_CLUSTER")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run tally");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{arguments:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{arguments:?}: {stderr}");
        assert!(
            lines[0].starts_with("tally: error: node 2's address")
                && lines[0].contains("is not free"),
            "{arguments:?}: {stderr}"
        );
    }
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

/// The lines a child process prints, read on a thread of their own, and what was seen so far.
struct Lines {
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(stream: impl std::io::Read + Send + 'static) -> Lines {
        use std::io::BufRead;
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Lines {
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line from now on that satisfies `wanted`, within `timeout`.
    fn expect(&mut self, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no such line within {timeout:?}; the lines so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// Writes one command to `tally cluster up`'s stdin.
fn command(stdin: &mut std::process::ChildStdin, line: &str) {
    use std::io::Write;
    writeln!(stdin, "{line}").expect("write a command");
    stdin.flush().expect("flush");
}

/// Deposits 1 into one account of each shard (retrying through a failover for up to 20 s each):
/// the cluster serves every shard.
fn every_shard_serves(runtime: &tokio::runtime::Runtime, cluster_file: &std::path::Path) {
    let config = client::config::ClusterConfig::load(cluster_file).expect("cluster file");
    let client = client::TallyClient::new(config.clone(), client::ClientOptions::default());
    runtime.block_on(async {
        for shard in 0..config.nodes.len() as u32 {
            let account = (1..)
                .find(|account| config.shard_of(*account) == shard)
                .expect("an account of each shard");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let _ = client.create_account(account, None, 0).await;
                match client
                    .deposit(client::TallyClient::new_transfer_id(), account, 1)
                    .await
                {
                    Ok(_) => break,
                    Err(error) => {
                        assert!(
                            Instant::now() < deadline,
                            "shard {shard} does not serve: {error}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
}

/// `tally cluster up` keeps the cluster running when a node dies: kill -9 of node 2 is reported
/// on one line naming the node and the signal, the other nodes keep running and every shard
/// keeps serving (3 replicas each), and with `--restart-after` node 2 is started again by itself.
/// Commands on stdin stop and restart a node; stdin at end-of-file leaves the cluster running;
/// SIGTERM stops every node.
#[test]
fn cluster_up_survives_a_dead_node_restarts_it_and_takes_commands() {
    use std::process::Stdio;

    let data = tempfile::tempdir().expect("temporary directory");
    let mut up = Command::new(PROGRAM)
        .args(["cluster", "up", "--nodes", "3", "--replicas", "3"])
        .args(["--restart-after", "2", "--base-port"])
        .arg(free_base_port().to_string())
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cluster up");
    let mut stdin = up.stdin.take().expect("piped");
    let mut stdout = Lines::new(up.stdout.take().expect("piped"));
    let mut stderr = Lines::new(up.stderr.take().expect("piped"));
    stdout.expect(Duration::from_secs(30), |line| line.starts_with("try:"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cluster_file = data.path().join("cluster.toml");
    every_shard_serves(&runtime, &cluster_file);

    let killed = tests::node_pid(up.id(), 2).expect("node 2 runs");
    let survivors = [1, 3].map(|id| tests::node_pid(up.id(), id).expect("node runs"));
    // SAFETY: SIGKILL to a process this test's child started.
    unsafe { libc::kill(killed as libc::pid_t, libc::SIGKILL) };
    let died = stdout.expect(Duration::from_secs(5), |line| {
        line.starts_with("node 2 died")
    });
    assert!(
        died.starts_with("node 2 died: killed by signal SIGKILL after ")
            && died.contains("restarting it in 2.0 s"),
        "{died}"
    );
    assert!(up.try_wait().expect("wait").is_none(), "cluster up exited");
    for pid in survivors {
        assert!(tests::process_exists(pid), "node process {pid} is gone");
    }
    every_shard_serves(&runtime, &cluster_file);
    let started = stdout.expect(Duration::from_secs(10), |line| {
        line.starts_with("node 2 started")
    });
    let restarted = tests::node_pid(up.id(), 2).expect("node 2 runs again");
    assert_ne!(restarted, killed, "{started}");
    assert_eq!(
        survivors,
        [1, 3].map(|id| tests::node_pid(up.id(), id).unwrap())
    );

    // Stopped on request, it stays down (no restart after 2 s); restarted on request, it runs.
    command(&mut stdin, "stop 3");
    stdout.expect(Duration::from_secs(15), |line| {
        line.starts_with("node 3 stopped")
    });
    command(&mut stdin, "bogus 3");
    let complaint = stderr.expect(Duration::from_secs(5), |_| true);
    assert!(
        complaint.starts_with("tally: cluster up: unknown command \"bogus 3\""),
        "{complaint}"
    );
    std::thread::sleep(Duration::from_secs(3));
    command(&mut stdin, "status");
    let status = stdout.expect(Duration::from_secs(5), |line| line.starts_with("node 3:"));
    assert_eq!(status, "node 3: stopped");
    assert_eq!(tests::node_pid(up.id(), 3), None);
    command(&mut stdin, "restart 3");
    stdout.expect(Duration::from_secs(5), |line| {
        line.starts_with("node 3 started")
    });

    // End of stdin ends the commands, not the cluster.
    drop(stdin);
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        up.try_wait().expect("wait").is_none(),
        "cluster up exited at end of stdin"
    );
    every_shard_serves(&runtime, &cluster_file);
    let nodes = children_of(up.id());
    assert_eq!(nodes.len(), 3, "{nodes:?}");

    // SAFETY: sending a signal to a child process this test started.
    unsafe { libc::kill(up.id() as libc::pid_t, libc::SIGTERM) };
    let status = up.wait().expect("cluster up exits");
    assert!(status.success(), "{status}\n{}", stdout.seen.join("\n"));
    for node in nodes {
        assert!(
            !tests::process_exists(node),
            "node process {node} still runs"
        );
    }
}
