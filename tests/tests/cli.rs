//! docs/cli.md is the command line's contract for scripts. This test runs the session it shows,
//! command by command, against a fresh 3-node cluster: every command's stdout (one JSON object),
//! stderr (one error line) and exit code must be what the page says, except for the values the
//! page names as varying.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tests::Cluster;

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
const PAGE: &str = include_str!("../../docs/cli.md");
/// Values that differ from run to run; the page says so.
const VARYING: [&str; 4] = [
    "created_at_unix_ms",
    "uptime_seconds",
    "address",
    "last_lsn",
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

    let cluster = Cluster::start(Path::new(PROGRAM), 3);
    for step in &steps {
        let shown = format!("tally {}", step.args.join(" "));
        let output = Command::new(PROGRAM)
            .args(&step.args)
            .env("TALLY_CLUSTER", &cluster.cluster_file)
            .output()
            .expect("run tally");
        let stdout = String::from_utf8(output.stdout).expect("UTF-8 stdout");
        let stderr = String::from_utf8(output.stderr).expect("UTF-8 stderr");
        assert_eq!(
            output.status.code(),
            Some(step.exit),
            "{shown}: exit code (stdout {stdout:?}, stderr {stderr:?})"
        );
        let printed: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            printed.len(),
            step.stdout.len(),
            "{shown}: stdout {stdout:?}"
        );
        for (printed, expected) in printed.iter().zip(&step.stdout) {
            assert_eq!(
                masked(json(printed, &shown)),
                masked(json(expected, "docs/cli.md")),
                "{shown}: printed {printed}"
            );
        }
        let errors: Vec<&str> = stderr.lines().collect();
        assert_eq!(errors, step.stderr, "{shown}: stderr");
    }
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
