//! The web console in a real headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`; never a browser fetched at run time), driven over the DevTools protocol.
//! `tally cluster up` runs a 3-node cluster and its control panel, a load runs (started from the
//! panel), and the page must render every panel with live numbers read back from the DOM; the
//! throughput, latency and flows panels must move; a node killed from the panel must show as
//! down within the console's bound (three missed polls) and come back when restarted from it.
//!
//! With `TALLY_CONSOLE_SCREENSHOT=path`, the page under load is saved there as PNG (how
//! docs/console.png was made).

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

const PROGRAM: &str = env!("CARGO_BIN_EXE_tally-failpoints");
const CHROMIUM: &str = "/usr/bin/chromium";
const TOKEN: &str = "console-test-token-0123456789";

/// `tally cluster up`, stopped (SIGTERM, as Ctrl-C would) when dropped.
struct Up {
    child: Child,
    console: String,
}

impl Drop for Up {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 request to the control panel; the status code and the body.
fn http(address: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(40)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {address}\r\nx-tally-token: {TOKEN}\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Runs `check` until it says `Ok`; panics with its last `Err` (what it saw) after `within`.
fn eventually(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Result<String, String>,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last seen: {seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Evaluates `script` in the page, expecting a JSON string back, and parses it.
fn read(tab: &Tab, script: &str) -> Value {
    let result = tab
        .evaluate(&format!("JSON.stringify((() => {{ {script} }})())"), false)
        .expect("evaluate in the page");
    let text = result
        .value
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_else(|| "null".to_owned());
    serde_json::from_str(&text).expect("the page's answer is JSON")
}

/// What the page shows, read back from the DOM.
fn dom(tab: &Tab) -> Value {
    read(
        tab,
        r#"
        const text = (s) => { const e = document.querySelector(s); return e ? e.textContent.trim() : null; };
        const rows = (s) => document.querySelectorAll(s).length;
        const flows = [...document.querySelectorAll('#flows td')].map((c) => Number(c.textContent.replace(/,/g, '')) || 0);
        return {
          up: text('#nodes-up'), suspect: text('#nodes-suspect'), down: text('#nodes-down'),
          version: text('#version'), committed: text('#committed-rate'), p99: text('#p99'),
          node2: (document.querySelector('#node-row-2') || {dataset: {}}).dataset.state || null,
          node_rows: rows('#nodes tbody tr'),
          cpu1: text('#node-row-1 .cpu'), lsn1: text('#node-row-1 .lsn'), age1: text('#node-row-1 .age'),
          in_flight: text('#twopc-in-flight'), wal: text('#wal-commits-rate'), conflicts: text('#lock-conflicts'),
          replication_rows: rows('#panel-replication tbody tr'),
          flows: flows, flows_total: flows.reduce((a, b) => a + b, 0),
          recent_rows: rows('#recent tbody tr'),
          chart_points: (typeof throughputChart !== 'undefined' && throughputChart) ? throughputChart.data[0].length : 0,
          control_visible: !document.querySelector('#control').hidden,
          load: text('#load-state'),
          events: [...document.querySelectorAll('#events li')].map((li) => li.textContent),
        };
        "#,
    )
}

/// Waits (at most 15 s) until the node table shows node `node` in `state`.
fn node_shown_as(tab: &Tab, node: u32, state: &str, what: &str) {
    let script = format!("return document.querySelector('#node-row-{node}').dataset.state;");
    eventually(what, Duration::from_secs(15), || {
        let shown = read(tab, &script);
        if shown == state {
            Ok(String::new())
        } else {
            Err(shown.to_string())
        }
    });
}

fn number(value: &Value) -> Option<f64> {
    value
        .as_str()?
        .replace(',', "")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn the_console_shows_a_cluster_under_load_and_its_control_panel_kills_and_restarts_a_node() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium package"
    );
    let data = tempfile::tempdir().expect("a temporary directory");
    let base_port = tests::free_base_port();
    let console = format!("127.0.0.1:{}", base_port + 6);
    let child = Command::new(PROGRAM)
        .args(["cluster", "up", "--nodes", "3", "--data-dir"])
        .arg(data.path())
        .args(["--base-port", &base_port.to_string(), "--console", &console])
        .env("TALLY_CONSOLE_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tally cluster up");
    let up = Up { child, console };
    eventually(
        "the control panel answers",
        Duration::from_secs(30),
        || match http(&up.console, "GET", "/api/control") {
            Ok((200, body)) if body.contains("running") => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    // Load from the panel's own action (it waits until the cluster serves before creating
    // accounts).
    let (status, body) = http(&up.console, "POST", "/api/control/load-start").expect("load-start");
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(&up.console, "POST", "/api/control/kill?node=9").expect("kill 9");
    assert_eq!(status, 409, "an unknown node is refused");

    let profile = tempfile::tempdir().expect("a browser profile directory");
    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(PathBuf::from(CHROMIUM)))
            .headless(true)
            .sandbox(false)
            .window_size(Some((1400, 1900)))
            .user_data_dir(Some(profile.path().to_owned()))
            .args(vec![
                OsStr::new("--disable-gpu"),
                OsStr::new("--disable-background-networking"),
                OsStr::new("--disable-component-update"),
                OsStr::new("--no-first-run"),
            ])
            .idle_browser_timeout(Duration::from_secs(300))
            .build()
            .expect("browser options"),
    )
    .expect("start headless chromium");
    let tab = browser.new_tab().expect("a tab");
    tab.navigate_to(&format!("http://{}/?token={TOKEN}", up.console))
        .expect("open the console");
    tab.wait_until_navigated().expect("the console loads");

    // Every panel with live numbers, under load.
    let first = eventually(
        "every panel shows live numbers under load",
        Duration::from_secs(120),
        || {
            let page = dom(&tab);
            let live = page["up"] == "3"
                && page["version"].as_str().is_some_and(|v| v != "-")
                && number(&page["committed"]).is_some_and(|rate| rate > 0.0)
                && number(&page["p99"]).is_some()
                && page["node_rows"] == 3
                && number(&page["cpu1"]).is_some()
                && number(&page["lsn1"]).is_some_and(|lsn| lsn > 0.0)
                && number(&page["age1"]).is_some()
                && number(&page["in_flight"]).is_some()
                && number(&page["wal"]).is_some_and(|rate| rate > 0.0)
                && number(&page["conflicts"]).is_some()
                && page["replication_rows"] == 3
                && page["flows_total"]
                    .as_f64()
                    .is_some_and(|total| total > 0.0)
                && page["recent_rows"].as_u64().is_some_and(|rows| rows > 0)
                && page["chart_points"]
                    .as_u64()
                    .is_some_and(|points| points >= 3)
                && page["control_visible"] == true
                && page["load"] == "running";
            if live {
                Ok(page.to_string())
            } else {
                let load =
                    std::fs::read_to_string(data.path().join("load-1.log")).unwrap_or_default();
                let tail: Vec<&str> = load.lines().rev().take(5).collect();
                Err(format!("{page}; the load's log ends: {tail:?}"))
            }
        },
    );
    let first: Value = serde_json::from_str(&first).expect("JSON");
    println!("the console under load: {first}");
    if let Ok(path) = std::env::var("TALLY_CONSOLE_SCREENSHOT") {
        // Some history on the charts first.
        std::thread::sleep(Duration::from_secs(40));
        let png = tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .expect("a screenshot");
        std::fs::write(&path, png).expect("write the screenshot");
    }
    // The flows and latency panels move.
    eventually(
        "the flows and latency panels move",
        Duration::from_secs(20),
        || {
            let page = dom(&tab);
            let moved =
                page["flows"] != first["flows"] && page["chart_points"] != first["chart_points"];
            if moved {
                Ok(page.to_string())
            } else {
                Err(page.to_string())
            }
        },
    );

    // Kill node 2 from the control panel: down within three missed polls (about 3 s; the
    // bound allows for a loaded machine), then back once restarted from the panel.
    tab.find_element("#btn-kill-2")
        .expect("the kill button of node 2")
        .click()
        .expect("click kill");
    let killed = Instant::now();
    eventually("node 2 shows as down", Duration::from_secs(15), || {
        let page = dom(&tab);
        if page["node2"] == "down" {
            Ok(String::new())
        } else {
            Err(page.to_string())
        }
    });
    println!("node 2 shown down {:?} after the click", killed.elapsed());
    let page = dom(&tab);
    assert_eq!(page["down"], "1", "{page}");
    assert!(
        page["events"].as_array().is_some_and(|events| events
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains("node 2 down")))),
        "the kill is among the events marked: {page}"
    );
    tab.find_element("#btn-restart-2")
        .expect("the restart button of node 2")
        .click()
        .expect("click restart");
    eventually("node 2 comes back", Duration::from_secs(60), || {
        let page = dom(&tab);
        if page["node2"] == "up" && page["up"] == "3" {
            Ok(String::new())
        } else {
            Err(page.to_string())
        }
    });

    // A partitioned node still serves its console, but its peers stop hearing it: its heartbeat
    // age grows; healed, it shrinks again.
    let age3 = |tab: &Tab| {
        number(&read(
            tab,
            "return document.querySelector('#node-row-3 .age').textContent;",
        ))
    };
    let (status, body) =
        http(&up.console, "POST", "/api/control/partition?node=3").expect("partition");
    assert_eq!(status, 200, "{body}");
    eventually(
        "node 3's heartbeat age grows",
        Duration::from_secs(20),
        || match age3(&tab) {
            Some(age) if age > 1500.0 => Ok(String::new()),
            other => Err(format!("{other:?}")),
        },
    );
    let (status, body) = http(&up.console, "POST", "/api/control/heal?node=3").expect("heal");
    assert_eq!(status, 200, "{body}");
    eventually(
        "node 3's heartbeat age is fresh again",
        Duration::from_secs(20),
        || match age3(&tab) {
            Some(age) if age < 1000.0 => Ok(String::new()),
            other => Err(format!("{other:?}")),
        },
    );
    // A paused node answers nothing, its console polls included: down, then up once resumed.
    let (status, body) = http(&up.console, "POST", "/api/control/pause?node=3").expect("pause");
    assert_eq!(status, 200, "{body}");
    node_shown_as(&tab, 3, "down", "node 3 shows as down while paused");
    let (status, body) = http(&up.console, "POST", "/api/control/resume?node=3").expect("resume");
    assert_eq!(status, 200, "{body}");
    node_shown_as(&tab, 3, "up", "node 3 is up again once resumed");
    // The look-up form: an account of the load.
    read(
        &tab,
        "document.querySelector('#lookup-kind').value = 'account';
         document.querySelector('#lookup-id').value = '1';
         document.querySelector('#lookup button').click();
         return null;",
    );
    eventually("the look-up answers", Duration::from_secs(20), || {
        let answer = read(
            &tab,
            "return document.querySelector('#lookup-result').textContent;",
        );
        match answer.as_str() {
            Some(text) if text.contains("\"balance\"") => Ok(String::new()),
            _ => Err(answer.to_string()),
        }
    });

    let (status, body) = http(&up.console, "POST", "/api/control/load-stop").expect("load-stop");
    assert_eq!(status, 200, "{body}");
    // Money is conserved, by the page's own audit button.
    tab.find_element("#btn-audit")
        .expect("the audit button")
        .click()
        .expect("click audit");
    eventually("the audit passes", Duration::from_secs(60), || {
        let verdict = read(
            &tab,
            "return document.querySelector('#audit-result').textContent;",
        );
        match verdict.as_str() {
            Some(text) if text.contains("conserved") => Ok(text.to_owned()),
            _ => Err(verdict.to_string()),
        }
    });
    // A wrong token changes nothing.
    let mut stream = TcpStream::connect(&up.console).expect("connect");
    write!(
        stream,
        "POST /api/control/kill?node=1 HTTP/1.0\r\nx-tally-token: wrong-token-wrong-token\r\n\r\n"
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    assert!(
        answer.starts_with("HTTP/1.0 401") || answer.starts_with("HTTP/1.1 401"),
        "{answer}"
    );
    drop(up);
}
