//! docs/cli.md is the command line's contract for scripts. This test runs the session it shows,
//! command by command, against a fresh 3-node cluster: every command's stdout (one JSON object),
//! stderr (one error line) and exit code must be what the page says, except for the values the
//! page names as varying.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::Cluster;

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
const PAGE: &str = include_str!("../../docs/cli.md");
/// Values that differ from run to run; the page says so.
const VARYING: [&str; 8] = [
    "created_at_unix_ms",
    "uptime_seconds",
    "address",
    "last_lsn",
    // A replica group's log indexes depend on how its records were batched into entries, its
    // term on how many elections its first leader needed.
    "term",
    "last_index",
    "commit_index",
    "applied_index",
];

/// One command of the page's session and what it must print.
#[derive(Debug, Default)]
struct Step {
    args: Vec<String>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    exit: i32,
}

/// The commands of every `console` block of the page, in order.
fn session(page: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    for line in page.lines() {
        if line.starts_with("```") {
            in_block = line == "```console";
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(command) = line.strip_prefix("$ tally ") {
            steps.push(Step {
                args: command.split_whitespace().map(str::to_owned).collect(),
                ..Step::default()
            });
            continue;
        }
        let step = steps
            .last_mut()
            .expect("a console block starts with a command");
        if let Some(code) = line
            .strip_prefix("(exit ")
            .and_then(|rest| rest.strip_suffix(')'))
        {
            step.exit = code.parse().expect("an exit code");
        } else if line.starts_with("tally: error:") {
            step.stderr.push(line.to_owned());
        } else {
            step.stdout.push(line.to_owned());
        }
    }
    steps
}

/// `value` with every varying key's value replaced by null, at any depth.
fn masked(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                *item = if VARYING.contains(&key.as_str()) {
                    Value::Null
                } else {
                    masked(item.take())
                };
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = masked(item.take());
            }
        }
        _ => {}
    }
    value
}

/// One line of JSON as the page shows it or a command printed it (compared as values: key order
/// aside, every key, type and value counts).
fn json(line: &str, what: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|error| panic!("{what}: not JSON ({error}): {line}"))
}

#[test]
fn the_session_in_docs_cli_md_is_what_the_commands_do() {
    let steps = session(PAGE);
    // The parser found the session, and the session covers every command a script uses.
    for command in [
        "account",
        "deposit",
        "withdraw",
        "transfer",
        "transfer-status",
        "balance",
        "history",
        "status",
        "audit",
    ] {
        assert!(
            steps.iter().any(|step| step.args[0] == command),
            "docs/cli.md shows no `tally {command}`"
        );
    }
    assert!(steps.iter().any(|step| step.exit == 3) && steps.iter().any(|step| step.exit == 1));

    // What `tally cluster up --nodes 3` starts: 3 shards of 3 replicas, led by nodes 1, 2, 3.
    let cluster = Cluster::start_replicated(Path::new(PROGRAM), 3, 3);
    wait_for_preferred_leaders(&cluster);
    for step in &steps {
        // A status shows how replicas keep up, which changes for a moment after each write: it
        // is asked again, for a bounded time, until it shows what the page does.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match run_step(&cluster, step) {
                Ok(()) => break,
                Err(mismatch) if step.args[0] == "status" && Instant::now() < deadline => {
                    println!("status again: {mismatch}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(mismatch) => panic!("{mismatch}"),
            }
        }
    }
}

/// Waits until each shard `s` is led by node `s + 1`, as the cluster file prefers, so that the
/// session's answers name the same nodes every run.
fn wait_for_preferred_leaders(cluster: &Cluster) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(PROGRAM)
            .args(["status", "--json"])
            .env("TALLY_CLUSTER", &cluster.cluster_file)
            .output()
            .expect("run tally status");
        let status = String::from_utf8_lossy(&output.stdout);
        let settled = serde_json::from_str::<Value>(&status)
            .is_ok_and(|status| (0..3).all(|shard| status["shards"][shard]["leader"] == shard + 1));
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "leaders not where the cluster file prefers them: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs one step of the session; `Err` says how its output differs from the page.
fn run_step(cluster: &Cluster, step: &Step) -> Result<(), String> {
    let shown = format!("tally {}", step.args.join(" "));
    let output = Command::new(PROGRAM)
        .args(&step.args)
        .env("TALLY_CLUSTER", &cluster.cluster_file)
        .output()
        .expect("run tally");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
    if output.status.code() != Some(step.exit) {
        return Err(format!(
            "{shown}: exit code {:?}, not {} (stdout {stdout:?}, stderr {stderr:?})",
            output.status.code(),
            step.exit
        ));
    }
    let printed: Vec<&str> = stdout.lines().collect();
    if printed.len() != step.stdout.len() {
        return Err(format!("{shown}: stdout {stdout:?}"));
    }
    for (printed, expected) in printed.iter().zip(&step.stdout) {
        if masked(json(printed, &shown)) != masked(json(expected, "docs/cli.md")) {
            return Err(format!(
                "{shown}: printed {printed}\n   the page: {expected}"
            ));
        }
    }
    let errors: Vec<&str> = stderr.lines().collect();
    if errors != step.stderr {
        return Err(format!("{shown}: stderr {errors:?}, not {:?}", step.stderr));
    }
    Ok(())
}

#[test]
fn the_comparison_sees_a_changed_value_a_missing_key_and_a_renamed_one() {
    let page = json(
        r#"{"id":"9","state":"committed","reason":null,"uptime_seconds":3}"#,
        "page",
    );
    for printed in [
        r#"{"id":"9","state":"aborted","reason":null,"uptime_seconds":3}"#,
        r#"{"id":"9","state":"committed","uptime_seconds":3}"#,
        r#"{"id":"9","status":"committed","reason":null,"uptime_seconds":3}"#,
        r#"{"id":9,"state":"committed","reason":null,"uptime_seconds":3}"#,
    ] {
        assert_ne!(
            masked(json(printed, "printed")),
            masked(page.clone()),
            "{printed}"
        );
    }
    let varied = json(
        r#"{"id":"9","state":"committed","reason":null,"uptime_seconds":7}"#,
        "printed",
    );
    assert_eq!(masked(varied), masked(page));
}
