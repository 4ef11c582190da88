//! `tally cluster up`: runs a local cluster's nodes as child processes and keeps them running.
//!
//! A node that exits without being asked to (a crash, a `kill -9`, a failed start) is reported on
//! one line, `node N died: <how>; ...`, and the other nodes keep running. It is started again on
//! request (`restart N` on stdin), or by itself `--restart-after` later. Commands are read from
//! stdin, one a line (see [`HELP`]); stdin at end-of-file only ends the commands, not the cluster.
//! SIGINT or SIGTERM (or `quit`) stops every node it started: SIGTERM, then SIGKILL after a grace
//! period.
//!
//! Bounds: commands queue at most [`COMMANDS_QUEUED_MAX`] deep and [`COMMAND_BYTES_MAX`] long; a
//! node that dies within [`QUICK_DEATH`] of starting [`QUICK_DEATHS_MAX`] times in a row is not
//! restarted by itself again (`restart N` still does).
//!
//! The nodes reach each other through a proxy on every directed link (`local::LinkProxies`), so
//! that the control panel (`control`, a web page with the console) can partition a node and heal
//! it; it also kills, stops, restarts, pauses (SIGSTOP) and resumes nodes, runs audits, and starts
//! and stops a load (`tally loadgen --cluster`, a child process stopped with the cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::Context;

use serde_json::{Value, json};

use crate::control::{self, Action, CONTROL_QUEUED_MAX};
use crate::local::{
    LinkProxies, UpOptions, ensure_ports_free, node_data_dir, prepare, say, signal_flag,
    spawn_node, stop_all,
};
use crate::proxy::LinkMode;

/// The commands `tally cluster up` reads on stdin.
pub const HELP: &str =
    "commands: status, kill N (SIGKILL), stop N (SIGTERM), restart N, quit (stops every node)";
/// Longest command line; the rest of a longer line is discarded.
pub const COMMAND_BYTES_MAX: usize = 256;
/// Commands read but not yet carried out; the reader waits when this many are queued.
pub const COMMANDS_QUEUED_MAX: usize = 16;
/// How often the nodes are looked at (and the longest a command waits to be carried out).
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A node dying this soon after it started counts as a failed start.
pub const QUICK_DEATH: Duration = Duration::from_secs(5);
/// Failed starts in a row after which a node is no longer restarted by itself.
pub const QUICK_DEATHS_MAX: u32 = 5;

/// A command read on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpCommand {
    Status,
    /// SIGKILL the node: a crash on request (restarted by itself with `--restart-after`).
    Kill(u32),
    /// SIGTERM the node and leave it stopped.
    Stop(u32),
    /// Start the node (stopping it first if it runs).
    Restart(u32),
    Quit,
    Help,
}

impl std::str::FromStr for UpCommand {
    type Err = String;

    fn from_str(line: &str) -> Result<UpCommand, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let node = |word: &str| {
            word.parse::<u32>()
                .map_err(|_| format!("{word:?} is not a node id; {HELP}"))
        };
        match words.as_slice() {
            ["status"] => Ok(UpCommand::Status),
            ["quit"] | ["exit"] => Ok(UpCommand::Quit),
            ["help"] => Ok(UpCommand::Help),
            ["kill", id] => Ok(UpCommand::Kill(node(id)?)),
            ["stop", id] => Ok(UpCommand::Stop(node(id)?)),
            ["restart", id] | ["start", id] => Ok(UpCommand::Restart(node(id)?)),
            _ => Err(format!("unknown command {:?}; {HELP}", line.trim())),
        }
    }
}

/// How a process ended, for people: `exited with code 1`, `killed by signal SIGKILL`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!(
            "killed by signal {}{}",
            signal_name(signal),
            if status.core_dumped() {
                " (core dumped)"
            } else {
                ""
            }
        ),
        None => format!("ended ({status})"),
    }
}

/// `SIGKILL` for 9, and so on; `signal N` for the rare ones.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        other => return format!("signal {other}"),
    };
    name.to_owned()
}

/// What one node of the cluster is doing.
enum State {
    Running {
        child: Child,
        since: Instant,
        /// A `kill N` was sent: its death is not a crash.
        kill_requested: bool,
        /// Stopped with SIGSTOP by the control panel, until it resumes it.
        paused: bool,
    },
    /// Exited on its own (or by `kill N`); started again at `restart_at` if set.
    Down {
        since: Instant,
        how: String,
        restart_at: Option<Instant>,
    },
    /// Stopped by `stop N`: stays down until `restart N`.
    Stopped,
}

struct Node {
    id: u32,
    state: State,
    /// Deaths within `QUICK_DEATH` of a start, in a row.
    quick_deaths: u32,
}

/// The nodes of a running `tally cluster up` and how to start them.
struct Supervisor {
    program: PathBuf,
    cluster_file: PathBuf,
    /// The cluster file each node runs with: its peers' addresses are the link proxies'.
    node_files: BTreeMap<u32, PathBuf>,
    data_dir: PathBuf,
    restart_after: Option<Duration>,
    nodes: Vec<Node>,
    proxies: LinkProxies,
    /// Nodes whose links the control panel cut.
    partitioned: BTreeSet<u32>,
    /// The load started from the control panel, while it runs.
    load: Option<Child>,
    loads_started: u32,
}

impl Supervisor {
    fn log_path(&self, id: u32) -> PathBuf {
        node_data_dir(&self.data_dir, id).join("tally.log")
    }

    fn node(&mut self, id: u32) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|node| node.id == id)
    }

    /// Starts node `id` (not running). A failed spawn leaves it down, as a failed start.
    fn start(&mut self, id: u32) {
        let file = self
            .node_files
            .get(&id)
            .unwrap_or(&self.cluster_file)
            .clone();
        let spawned = spawn_node(&self.program, &file, &self.data_dir, id);
        let restart_after = self.restart_after;
        let Some(node) = self.node(id) else { return };
        match spawned {
            Ok(child) => {
                say(format_args!("node {id} started (pid {})", child.id()));
                node.state = State::Running {
                    child,
                    since: Instant::now(),
                    kill_requested: false,
                    paused: false,
                };
            }
            Err(error) => {
                say(format_args!("node {id} did not start: {error:#}"));
                node.quick_deaths += 1;
                node.state = State::Down {
                    since: Instant::now(),
                    how: format!("did not start: {error:#}"),
                    restart_at: restart_after
                        .filter(|_| node.quick_deaths < QUICK_DEATHS_MAX)
                        .map(|delay| Instant::now() + delay),
                };
            }
        }
    }

    /// Notices the nodes that exited, says so, and schedules their restarts.
    fn reap(&mut self) {
        let restart_after = self.restart_after;
        let mut lines = Vec::new();
        for node in &mut self.nodes {
            let State::Running {
                child,
                since,
                kill_requested,
                ..
            } = &mut node.state
            else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            let how = describe_exit(status);
            let lived = since.elapsed();
            let requested = *kill_requested;
            if requested || lived >= QUICK_DEATH {
                node.quick_deaths = 0;
            } else {
                node.quick_deaths += 1;
            }
            let restart_at = match restart_after {
                Some(_) if node.quick_deaths >= QUICK_DEATHS_MAX => None,
                Some(delay) => Some(Instant::now() + delay),
                None => None,
            };
            let mut line = format!(
                "node {} died: {how}{} after {:.1} s; ",
                node.id,
                if requested { " (kill on request)" } else { "" },
                lived.as_secs_f64()
            );
            match (restart_after, restart_at) {
                (Some(delay), Some(_)) => {
                    line.push_str(&format!("restarting it in {:.1} s", delay.as_secs_f64()))
                }
                (Some(_), None) => line.push_str(&format!(
                    "it died within {} s of starting {} times in a row, so it is not restarted by itself; `restart {}` starts it",
                    QUICK_DEATH.as_secs(),
                    node.quick_deaths,
                    node.id
                )),
                (None, _) => line.push_str(&format!("`restart {}` starts it again", node.id)),
            }
            lines.push((node.id, line));
            node.state = State::Down {
                since: Instant::now(),
                how,
                restart_at,
            };
        }
        for (id, line) in lines {
            say(format_args!(
                "{line}; its log: {}",
                self.log_path(id).display()
            ));
        }
    }

    /// Starts the nodes whose restart is due.
    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .nodes
            .iter()
            .filter(
                |node| matches!(node.state, State::Down { restart_at: Some(at), .. } if at <= now),
            )
            .map(|node| node.id)
            .collect();
        for id in due {
            self.start(id);
        }
    }

    /// Stops node `id` if it runs (SIGTERM, then SIGKILL after the grace period), leaving it
    /// stopped.
    fn stop(&mut self, id: u32) {
        let Some(node) = self.node(id) else { return };
        if let State::Running { child, paused, .. } =
            std::mem::replace(&mut node.state, State::Stopped)
        {
            if paused {
                // SAFETY: kill(2) with a pid of a child this process has not reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            }
            let mut children = [(id, child)];
            stop_all(&mut children);
        }
    }

    fn carry_out(&mut self, command: UpCommand) -> bool {
        let id = match command {
            UpCommand::Quit => return false,
            UpCommand::Help => {
                say(format_args!("{HELP}"));
                return true;
            }
            UpCommand::Status => {
                self.print_status();
                return true;
            }
            UpCommand::Kill(id) | UpCommand::Stop(id) | UpCommand::Restart(id) => id,
        };
        let count = self.nodes.len();
        let Some(node) = self.node(id) else {
            complain(format_args!(
                "no node {id}: the cluster has nodes 1..={count}"
            ));
            return true;
        };
        let running = matches!(node.state, State::Running { .. });
        match command {
            UpCommand::Kill(_) if running => {
                if let State::Running {
                    child,
                    kill_requested,
                    ..
                } = &mut node.state
                {
                    // The reaper reports its death, as any other.
                    *kill_requested = true;
                    let _ = child.kill();
                }
            }
            UpCommand::Kill(_) => complain(format_args!("node {id} is not running")),
            UpCommand::Stop(_) if running => self.stop(id),
            UpCommand::Stop(_) => {
                // Stopping a node that is down cancels its restart.
                node.state = State::Stopped;
                say(format_args!("node {id} stays stopped"));
            }
            UpCommand::Restart(_) => {
                node.quick_deaths = 0;
                if running {
                    self.stop(id);
                }
                self.start(id);
            }
            UpCommand::Status | UpCommand::Quit | UpCommand::Help => {}
        }
        true
    }

    fn print_status(&mut self) {
        for node in &mut self.nodes {
            let line = match &mut node.state {
                State::Running { child, since, .. } => format!(
                    "node {}: running, pid {}, for {:.0} s",
                    node.id,
                    child.id(),
                    since.elapsed().as_secs_f64()
                ),
                State::Down {
                    since,
                    how,
                    restart_at,
                } => format!(
                    "node {}: down for {:.0} s ({how}){}",
                    node.id,
                    since.elapsed().as_secs_f64(),
                    match restart_at {
                        Some(at) => format!(
                            ", restarting in {:.1} s",
                            at.saturating_duration_since(Instant::now()).as_secs_f64()
                        ),
                        None => String::new(),
                    }
                ),
                State::Stopped => format!("node {}: stopped", node.id),
            };
            say(format_args!("{line}"));
        }
    }

    /// Carries out an action of the control panel: `Ok` with what to answer, `Err` with why not.
    fn control(&mut self, action: Action) -> Result<Value, String> {
        let count = self.nodes.len();
        let known = |id: u32| {
            if id >= 1 && id as usize <= count {
                Ok(id)
            } else {
                Err(format!("no node {id}: the cluster has nodes 1..={count}"))
            }
        };
        let message = match action {
            Action::State => return Ok(self.state_json()),
            Action::Kill(id) => {
                let id = known(id)?;
                self.running_child(id)?;
                self.carry_out(UpCommand::Kill(id));
                format!("node {id} killed (SIGKILL)")
            }
            Action::Stop(id) => {
                let id = known(id)?;
                self.carry_out(UpCommand::Stop(id));
                format!("node {id} stopped")
            }
            Action::Restart(id) => {
                let id = known(id)?;
                self.carry_out(UpCommand::Restart(id));
                format!("node {id} started")
            }
            Action::Pause(id) | Action::Resume(id) => {
                let id = known(id)?;
                let pause = matches!(action, Action::Pause(_));
                let pid = self.running_child(id)?;
                // SAFETY: kill(2) with a pid of a child this process has not reaped.
                unsafe {
                    libc::kill(pid, if pause { libc::SIGSTOP } else { libc::SIGCONT });
                }
                if let Some(Node {
                    state: State::Running { paused, .. },
                    ..
                }) = self.node(id)
                {
                    *paused = pause;
                }
                let word = if pause { "paused (SIGSTOP)" } else { "resumed" };
                say(format_args!("node {id} {word}"));
                format!("node {id} {word}")
            }
            Action::Partition(id) => {
                let id = known(id)?;
                self.proxies.set_links(id, None, LinkMode::Blackhole);
                self.partitioned.insert(id);
                say(format_args!(
                    "node {id} partitioned: its links carry nothing"
                ));
                format!("node {id} partitioned")
            }
            Action::Heal(id) => {
                let id = known(id)?;
                self.heal(id);
                format!("node {id} healed")
            }
            Action::HealAll => {
                for id in std::mem::take(&mut self.partitioned) {
                    self.heal(id);
                }
                "every link healed".to_owned()
            }
            Action::LoadStart => self.start_load()?,
            Action::LoadStop => self.stop_load()?,
        };
        Ok(json!({ "message": message }))
    }

    /// The pid of running node `id`, or why there is none.
    fn running_child(&mut self, id: u32) -> Result<i32, String> {
        match self.node(id) {
            Some(Node {
                state: State::Running { child, .. },
                ..
            }) => Ok(child.id() as i32),
            _ => Err(format!("node {id} is not running")),
        }
    }

    fn heal(&mut self, id: u32) {
        self.partitioned.remove(&id);
        // Links to nodes still partitioned stay cut.
        for other in 1..=self.nodes.len() as u32 {
            if other != id && !self.partitioned.contains(&other) {
                self.proxies.set_links(id, Some(other), LinkMode::Pass);
            }
        }
        say(format_args!("node {id} healed"));
    }

    fn start_load(&mut self) -> Result<String, String> {
        if let Some(load) = &mut self.load
            && matches!(load.try_wait(), Ok(None))
        {
            return Err("a load is already running".to_owned());
        }
        self.loads_started += 1;
        let out = self.data_dir.join(format!("load-{}", self.loads_started));
        let log = std::fs::File::create(
            self.data_dir
                .join(format!("load-{}.log", self.loads_started)),
        )
        .map_err(|error| format!("cannot create the load's log: {error}"))?;
        let child = Command::new(&self.program)
            .args(["loadgen", "--cluster"])
            .arg(&self.cluster_file)
            .args([
                "--accounts",
                "10000",
                "--clients",
                "32",
                "--duration",
                "86400",
            ])
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|error| error.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|error| format!("cannot start the load: {error}"))?;
        say(format_args!(
            "load started (pid {}): 32 clients over 10,000 accounts; report in {}",
            child.id(),
            out.display()
        ));
        self.load = Some(child);
        Ok("load started: 32 clients over 10,000 accounts".to_owned())
    }

    fn stop_load(&mut self) -> Result<String, String> {
        let Some(mut load) = self.load.take() else {
            return Err("no load is running".to_owned());
        };
        let mut children = [(0, load)];
        stop_all(&mut children);
        [(_, load)] = children;
        let how = load.try_wait().ok().flatten().map(describe_exit);
        say(format_args!("load stopped"));
        Ok(format!(
            "load stopped{}",
            how.map(|how| format!(" ({how})")).unwrap_or_default()
        ))
    }

    fn load_state(&mut self) -> &'static str {
        match &mut self.load {
            Some(load) => match load.try_wait() {
                Ok(None) => "running",
                _ => "finished",
            },
            None => "none",
        }
    }

    fn state_json(&mut self) -> Value {
        let partitioned = self.partitioned.clone();
        let nodes: Vec<Value> = self
            .nodes
            .iter()
            .map(|node| {
                let state = match &node.state {
                    State::Running { paused: true, .. } => "paused",
                    State::Running { .. } if partitioned.contains(&node.id) => "partitioned",
                    State::Running { .. } => "running",
                    State::Down { .. } => "down",
                    State::Stopped => "stopped",
                };
                json!({ "id": node.id, "state": state })
            })
            .collect();
        json!({ "nodes": nodes, "load": self.load_state() })
    }

    /// Stops every running node.
    fn stop_everything(&mut self) {
        let mut children = Vec::new();
        for node in &mut self.nodes {
            if let State::Running { child, paused, .. } =
                std::mem::replace(&mut node.state, State::Stopped)
            {
                if paused {
                    // A stopped process would not act on SIGTERM before the grace period ends.
                    // SAFETY: kill(2) with a pid of a child this process has not reaped.
                    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
                }
                children.push((node.id, child));
            }
        }
        if let Some(load) = self.load.take() {
            children.push((0, load));
        }
        stop_all(&mut children);
    }
}

/// An error line about a command: stderr, and the cluster keeps running.
fn complain(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tally: cluster up: {line}");
}

/// Reads commands from stdin on a thread of its own, one a line, into a bounded queue. The queue
/// closes at end-of-file (or a read error).
fn read_commands() -> Receiver<Result<UpCommand, String>> {
    let (sender, commands) = sync_channel(COMMANDS_QUEUED_MAX);
    let spawned = std::thread::Builder::new()
        .name("cluster-up-stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut line = Vec::new();
            loop {
                line.clear();
                let limit = (COMMAND_BYTES_MAX + 1) as u64;
                match (&mut input).take(limit).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let command = if line.ends_with(b"\n") || line.len() <= COMMAND_BYTES_MAX {
                    let text = String::from_utf8_lossy(&line);
                    if text.trim().is_empty() {
                        continue;
                    }
                    text.parse::<UpCommand>()
                } else {
                    // Too long: skip to the end of the line.
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        match (&mut input).take(limit).read_until(b'\n', &mut rest) {
                            Ok(0) | Err(_) => break,
                            Ok(_) if rest.ends_with(b"\n") => break,
                            Ok(_) => {}
                        }
                    }
                    Err(format!(
                        "a command line longer than {COMMAND_BYTES_MAX} bytes; {HELP}"
                    ))
                };
                if sender.send(command).is_err() {
                    return;
                }
            }
        });
    if let Err(error) = spawned {
        complain(format_args!("cannot read commands from stdin: {error}"));
    }
    commands
}

/// Starts the nodes, prints where everything is, keeps them running (see the module's
/// documentation) and stops them on SIGINT, SIGTERM or `quit` (stdout closed early, as by
/// `| head`, changes nothing: the nodes are still stopped).
pub fn up(options: UpOptions, console: ConsoleOptions) -> anyhow::Result<()> {
    let (cluster_file, config) = prepare(&options)?;
    ensure_ports_free(&config)?;
    let console_address = console
        .address
        .unwrap_or_else(|| control::default_address(options.base_port, options.nodes));
    let program = std::env::current_exe().context("cannot find the tally executable")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(signal, &stop)?;
    }
    // The control panel and the link proxies run here, on a small runtime of their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cluster-up-console")
        .enable_all()
        .build()
        .context("cannot start the control panel's runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(console_address))
        .with_context(|| {
            format!("the control panel's address {console_address} is not free; choose another with --console")
        })?;
    let proxies = runtime.block_on(LinkProxies::start(&config))?;
    let mut node_files = BTreeMap::new();
    for (id, own) in &proxies.configs {
        let path = options.data_dir.join(format!("node-{id}.cluster.toml"));
        std::fs::write(&path, own.to_toml())
            .with_context(|| format!("cannot write {}", path.display()))?;
        node_files.insert(*id, path);
    }
    let token = console
        .token
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let (actions, action_requests) = sync_channel(CONTROL_QUEUED_MAX);
    runtime.spawn(control::serve(
        listener,
        token.clone(),
        config.clone(),
        actions,
    ));
    let mut supervisor = Supervisor {
        program,
        cluster_file: cluster_file.clone(),
        node_files,
        data_dir: options.data_dir.clone(),
        restart_after: options.restart_after,
        nodes: Vec::new(),
        proxies,
        partitioned: BTreeSet::new(),
        load: None,
        loads_started: 0,
    };
    for node in &config.nodes {
        match spawn_node(
            &supervisor.program,
            &supervisor.node_files[&node.id],
            &options.data_dir,
            node.id,
        ) {
            Ok(child) => supervisor.nodes.push(Node {
                id: node.id,
                state: State::Running {
                    child,
                    since: Instant::now(),
                    kill_requested: false,
                    paused: false,
                },
                quick_deaths: 0,
            }),
            Err(error) => {
                supervisor.stop_everything();
                return Err(error);
            }
        }
    }
    say(format_args!("cluster file: {}", cluster_file.display()));
    for node in &config.nodes {
        let dir = node_data_dir(&options.data_dir, node.id);
        say(format_args!(
            "node {}: {}  shards {:?}  data {}  log {}",
            node.id,
            node.address,
            node.shards,
            dir.display(),
            dir.join("tally.log").display()
        ));
    }
    say(format_args!(
        "a node that dies is {}; {HELP}",
        match options.restart_after {
            Some(delay) => format!("restarted after {:.1} s", delay.as_secs_f64()),
            None => "left down until `restart N`".to_owned(),
        }
    ));
    say(format_args!(
        "console and control panel: http://{console_address}/?token={token}   (each node's own console, read-only: http://<its http address>/)"
    ));
    say(format_args!(
        "try: tally status --cluster {}   (Ctrl-C stops the cluster)",
        cluster_file.display()
    ));
    supervise(&mut supervisor, &stop, read_commands(), &action_requests);
    say(format_args!("stopping the cluster"));
    supervisor.stop_everything();
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Where `tally cluster up` serves its control panel, and the token that guards it.
#[derive(Debug, Clone, Default)]
pub struct ConsoleOptions {
    /// Default: `control::default_address` (loopback).
    pub address: Option<SocketAddr>,
    /// Default: 128 random bits, printed at start.
    pub token: Option<String>,
}

/// Runs until `stop` is set or `quit` is read: carries out commands, reports deaths, restarts.
fn supervise(
    supervisor: &mut Supervisor,
    stop: &AtomicBool,
    commands: Receiver<Result<UpCommand, String>>,
    actions: &Receiver<control::Request>,
) {
    let mut stdin_open = true;
    while !stop.load(Ordering::Relaxed) {
        let received = if stdin_open {
            commands.recv_timeout(POLL_INTERVAL)
        } else {
            std::thread::sleep(POLL_INTERVAL);
            Err(RecvTimeoutError::Timeout)
        };
        match received {
            Ok(Ok(command)) => {
                if !supervisor.carry_out(command) {
                    return;
                }
            }
            Ok(Err(message)) => complain(format_args!("{message}")),
            Err(RecvTimeoutError::Timeout) => {}
            // End of stdin: no more commands; the cluster runs on.
            Err(RecvTimeoutError::Disconnected) => stdin_open = false,
        }
        // A signal that stops the cluster may also have reached the nodes (Ctrl-C goes to the
        // whole process group): their exits are not deaths to report or restart.
        if stop.load(Ordering::Relaxed) {
            return;
        }
        supervisor.reap();
        while let Ok((action, reply)) = actions.try_recv() {
            let _ = reply.send(supervisor.control(action));
        }
        supervisor.restart_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_bad_ones_say_what_is_accepted() {
        assert_eq!("status".parse::<UpCommand>(), Ok(UpCommand::Status));
        assert_eq!("  kill 2 ".parse::<UpCommand>(), Ok(UpCommand::Kill(2)));
        assert_eq!("stop 3\n".parse::<UpCommand>(), Ok(UpCommand::Stop(3)));
        assert_eq!("restart 1".parse::<UpCommand>(), Ok(UpCommand::Restart(1)));
        assert_eq!("start 1".parse::<UpCommand>(), Ok(UpCommand::Restart(1)));
        assert_eq!("quit".parse::<UpCommand>(), Ok(UpCommand::Quit));
        for bad in ["kill", "kill two", "kill 1 2", "reboot 1", "kill -1"] {
            let error = bad.parse::<UpCommand>().unwrap_err();
            assert!(error.contains("commands: status"), "{bad}: {error}");
            assert!(!error.contains('\n'), "{bad}: one line: {error}");
        }
    }

    #[test]
    fn exits_are_described_by_code_or_signal_name() {
        // Raw wait statuses: a code in the second byte, a signal in the low bits.
        assert_eq!(
            describe_exit(ExitStatus::from_raw(1 << 8)),
            "exited with code 1"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "killed by signal SIGKILL"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGSEGV | 0x80)),
            "killed by signal SIGSEGV (core dumped)"
        );
        assert_eq!(signal_name(63), "signal 63");
    }
}
