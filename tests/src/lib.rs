//! Multi-process tests of a real Tally cluster: a harness that runs `tally` nodes as child
//! processes on loopback (the `tally-failpoints` build, so tests can crash a node at an exact
//! protocol step), kills and restarts them, and talks to them with the client library.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use client::config::{ClusterConfig, NodeConfig};
use client::{AuditVerdict, ClientOptions, TallyClient};

/// A cluster of node processes in a temporary directory; dropping it kills every node.
pub struct Cluster {
    pub config: ClusterConfig,
    pub cluster_file: PathBuf,
    program: PathBuf,
    directory: tempfile::TempDir,
    children: Vec<Option<Child>>,
    data_dirs: Vec<PathBuf>,
    /// Extra environment of each node's process, on every start.
    envs: Vec<Vec<(String, String)>>,
    /// A node's own cluster file, when it is not `cluster_file` (its peers behind proxies).
    node_cluster_files: Vec<Option<PathBuf>>,
}

/// Free loopback ports (bound, then released; a race with other processes is unlikely).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

impl Cluster {
    /// Starts `nodes` nodes, each owning one shard, and waits until all answer.
    pub fn start(program: &Path, nodes: u32) -> Cluster {
        let mut cluster = Cluster::configure(program, nodes);
        cluster.start_all();
        cluster
    }

    /// Starts `nodes` nodes and `nodes` shards, each shard with `replicas` replicas (shard `s` on
    /// nodes `s+1, s+2, ...`, first led by node `s+1`), and waits until all answer.
    /// With several replicas it also waits until every shard is led by its preferred leader
    /// (nodes hand their groups over to it), so that a test starts with leaders where the cluster
    /// file puts them and no hand-over under way.
    pub fn start_replicated(program: &Path, nodes: u32, replicas: u32) -> Cluster {
        let mut cluster = Cluster::configure_replicated(program, nodes, replicas);
        cluster.start_all();
        if replicas > 1 {
            cluster.wait_for_leaders();
        }
        cluster
    }

    /// Waits (60 s at most) until the preferred leader of every shard reports that it leads.
    /// Callable from inside an async test: it asks from a thread of its own.
    pub fn wait_for_leaders(&self) {
        let config = self.config.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let led = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let client = TallyClient::new(config.clone(), ClientOptions::default());
                while Instant::now() < deadline {
                    if let Ok(nodes) = client.cluster_status().await {
                        let led = |shard| {
                            nodes.iter().any(|node| {
                                node.node_id == config.preferred_leader(shard)
                                    && node.groups.iter().any(|group| {
                                        group.shard == shard
                                            && group.role == net::ReplicaRole::Leader
                                    })
                            })
                        };
                        if (0..config.shard_count).all(led) {
                            return true;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            })
        })
        .join()
        .expect("leader wait");
        assert!(
            led,
            "some shard is not led by its preferred leader within 60 s"
        );
    }

    /// The cluster file and directory of `nodes` nodes, none started yet: set a node's data dir
    /// or environment first, then [`Cluster::start_all`].
    pub fn configure(program: &Path, nodes: u32) -> Cluster {
        Cluster::configure_replicated(program, nodes, 1)
    }

    /// [`Cluster::configure`] with `replicas` replicas of each shard.
    pub fn configure_replicated(program: &Path, nodes: u32, replicas: u32) -> Cluster {
        let directory = tempfile::tempdir().expect("temporary directory");
        // A port for each node's protocol, then one for each node's HTTP.
        let ports = free_ports(2 * nodes as usize);
        let config = ClusterConfig::new(
            nodes,
            (1..=nodes)
                .map(|id| {
                    // Shard s lives on nodes s+1 .. s+replicas (wrapping).
                    let mut shards: Vec<u32> = (0..nodes)
                        .filter(|shard| (id - 1 + nodes - shard) % nodes < replicas)
                        .collect();
                    shards.sort_unstable();
                    NodeConfig {
                        id,
                        address: format!("127.0.0.1:{}", ports[id as usize - 1]),
                        shards,
                        leads: if replicas > 1 {
                            vec![id - 1]
                        } else {
                            Vec::new()
                        },
                        http: Some(format!("127.0.0.1:{}", ports[(nodes + id) as usize - 1])),
                    }
                })
                .collect(),
        )
        .expect("valid cluster");
        let cluster_file = directory.path().join("cluster.toml");
        std::fs::write(&cluster_file, config.to_toml()).expect("write the cluster file");
        Cluster {
            config,
            cluster_file,
            program: program.to_owned(),
            data_dirs: (1..=nodes)
                .map(|id| directory.path().join(format!("node-{id}")))
                .collect(),
            envs: (0..nodes).map(|_| Vec::new()).collect(),
            node_cluster_files: (0..nodes).map(|_| None).collect(),
            directory,
            children: (0..nodes).map(|_| None).collect(),
        }
    }

    /// Starts every node with nothing armed and waits until all answer.
    pub fn start_all(&mut self) {
        let nodes = self.children.len() as u32;
        for id in 1..=nodes {
            self.start_node(id, &[]);
        }
        for id in 1..=nodes {
            self.wait_up(id);
        }
    }

    /// The temporary directory holding the cluster file, the nodes' stderr files and (unless
    /// moved) their data dirs.
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.data_dirs[id as usize - 1].clone()
    }

    /// Node `id` keeps its data in `data_dir` from its next start on.
    pub fn set_data_dir(&mut self, id: u32, data_dir: impl Into<PathBuf>) {
        self.data_dirs[id as usize - 1] = data_dir.into();
    }

    /// Sets `key=value` in node `id`'s environment from its next start on (e.g. an injected disk
    /// fault, `TALLY_FAIL_WAL_WRITE_AFTER`).
    pub fn set_env(&mut self, id: u32, key: &str, value: &str) {
        self.remove_env(id, key);
        self.envs[id as usize - 1].push((key.to_owned(), value.to_owned()));
    }

    /// Makes node `id` run with its own cluster file (the same cluster, other peer addresses:
    /// proxies in front of its peers), from its next start on.
    pub fn set_cluster_file(&mut self, id: u32, file: impl Into<PathBuf>) {
        self.node_cluster_files[id as usize - 1] = Some(file.into());
    }

    pub fn remove_env(&mut self, id: u32, key: &str) {
        self.envs[id as usize - 1].retain(|(existing, _)| existing != key);
    }

    /// `tally-failpoints start` for node `id`, with its data dir and environment.
    fn start_command(&self, id: u32, failpoints: &[&str]) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(["start", "--id", &id.to_string(), "--cluster"])
            .arg(
                self.node_cluster_files[id as usize - 1]
                    .as_ref()
                    .unwrap_or(&self.cluster_file),
            )
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("TALLY_FAILPOINTS", failpoints.join(","))
            .env("RUST_LOG", "info")
            .envs(self.envs[id as usize - 1].iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Starts node `id` with the given crash points armed (`TALLY_FAILPOINTS`).
    pub fn start_node(&mut self, id: u32, failpoints: &[&str]) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} runs");
        let log = std::fs::File::create(self.stderr_path(id)).expect("stderr file");
        let child = self
            .start_command(id, failpoints)
            .stderr(log)
            .spawn()
            .expect("start a node");
        self.children[id as usize - 1] = Some(child);
    }

    fn stderr_path(&self, id: u32) -> PathBuf {
        self.directory.path().join(format!("node-{id}.stderr"))
    }

    /// What node `id`'s latest process wrote to stderr.
    pub fn stderr(&self, id: u32) -> String {
        std::fs::read_to_string(self.stderr_path(id)).unwrap_or_default()
    }

    /// Runs `start` for node `id` (not running) in the foreground, for a start that must fail:
    /// waits at most 30 s for it to exit and returns its exit status and stderr. Panics if it is
    /// still running then (it came up instead of refusing).
    pub fn run_start_expecting_exit(&mut self, id: u32) -> (ExitStatus, String) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} runs");
        let log = std::fs::File::create(self.stderr_path(id)).expect("stderr file");
        let mut child = self
            .start_command(id, &[])
            .stderr(log)
            .spawn()
            .expect("start a node");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {id} was expected to refuse to start but kept running; its stderr:\n{}",
                    self.stderr(id)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, self.stderr(id))
    }

    /// Stops node `id` with SIGTERM (a clean shutdown) and waits at most 30 s for it to exit.
    pub fn stop(&mut self, id: u32) -> ExitStatus {
        let mut child = self.children[id as usize - 1]
            .take()
            .expect("node was started");
        // SAFETY: kill(2) with a pid of our own child has no memory-safety preconditions.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until node `id` accepts connections (at most 60 s).
    pub fn wait_up(&self, id: u32) {
        let address = &self.config.node(id).expect("node").address;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                Instant::now() < deadline,
                "node {id} did not come up; its log:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How node `id`'s process ended, if it has (without reaping it for good).
    pub fn exit_status(&mut self, id: u32) -> Option<ExitStatus> {
        self.children[id as usize - 1]
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Whether node `id`'s process is alive.
    pub fn is_running(&mut self, id: u32) -> bool {
        match self.children[id as usize - 1].as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until node `id` accepts connections or its process has exited (at most 60 s).
    pub fn wait_up_or_exit(&mut self, id: u32) {
        let address = self.config.node(id).expect("node").address.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&address).is_err() && self.is_running(id) {
            assert!(
                Instant::now() < deadline,
                "node {id} did not come up; its log:\n{}",
                self.log(id)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Restarts node `id` (after it was killed or crashed) with nothing armed.
    pub fn restart(&mut self, id: u32) {
        self.reap(id);
        self.start_node(id, &[]);
        self.wait_up(id);
    }

    /// `kill -9` node `id`.
    pub fn kill(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits (at most 30 s) for node `id` to die by itself (a crash point), and reaps it.
    pub fn wait_dead(&mut self, id: u32) {
        let child = self.children[id as usize - 1]
            .as_mut()
            .expect("node was started");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} did not die");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.children[id as usize - 1] = None;
    }

    fn reap(&mut self, id: u32) {
        if let Some(mut child) = self.children[id as usize - 1].take() {
            let _ = child.wait();
        }
    }

    /// The node's log file (its tracing output).
    pub fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.data_dir(id).join("tally.log")).unwrap_or_default()
    }

    pub fn client(&self) -> TallyClient {
        TallyClient::new(
            self.config.clone(),
            ClientOptions {
                request_timeout: Duration::from_secs(5),
                ..ClientOptions::default()
            },
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An account id that the cluster places on `node`, the `n`-th such one from `start`.
pub fn account_on(config: &ClusterConfig, node: u32, start: u64, n: usize) -> u64 {
    (start..)
        .filter(|account| config.owner_of(*account) == node)
        .nth(n)
        .expect("the hash spreads accounts over every node")
}

/// Creates `account` and deposits `amount` into it (panics on failure: test set-up).
pub async fn funded(client: &TallyClient, account: u64, amount: u64) {
    client
        .create_account(account, None, 0)
        .await
        .expect("create account");
    if amount > 0 {
        client
            .deposit(TallyClient::new_transfer_id(), account, amount)
            .await
            .expect("deposit");
    }
}

/// Audits the cluster and panics unless the verdict passes (every node counted once, money
/// conserved, no negative balance, nothing in doubt) with `balances_sum` in the accounts.
pub async fn assert_audit_passes(client: &TallyClient, balances_sum: u128) {
    let report = client.audit().await.expect("audit");
    let verdict = AuditVerdict::new(&report, client.config());
    assert!(verdict.passed(), "{verdict}\n{report:?}");
    assert_eq!(
        verdict.totals().map(|totals| totals.balances_sum),
        Some(balances_sum),
        "{verdict}"
    );
}

/// The balance of `account` (panics on failure).
pub async fn balance(client: &TallyClient, account: u64) -> u64 {
    client.balance(account).await.expect("balance")
}

/// `per_node` accounts on each node of a 3-node cluster, node 1's first.
pub fn accounts_on_every_node(config: &ClusterConfig, per_node: usize) -> Vec<u64> {
    config
        .nodes
        .iter()
        .flat_map(|node| (0..per_node).map(move |n| account_on(config, node.id, 1, n)))
        .collect()
}

/// Two different accounts of `accounts`, uniformly.
pub fn random_pair(rng: &mut impl rand::Rng, accounts: &[u64]) -> (u64, u64) {
    let debit = accounts[rng.random_range(0..accounts.len())];
    let mut credit = debit;
    while credit == debit {
        credit = accounts[rng.random_range(0..accounts.len())];
    }
    (debit, credit)
}

/// The first of three consecutive ports that were free a moment ago.
pub fn free_base_port() -> u16 {
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
pub fn children_of(parent: u32) -> Vec<u32> {
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

/// The pid of the child of `parent` that runs `start --id ID` (from /proc), if any.
pub fn node_pid(parent: u32, id: u32) -> Option<u32> {
    let wanted = ["--id".to_owned(), id.to_string()];
    children_of(parent).into_iter().find(|pid| {
        let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let arguments: Vec<String> = command_line
            .split(|byte| *byte == 0)
            .map(|argument| String::from_utf8_lossy(argument).into_owned())
            .collect();
        arguments.windows(2).any(|pair| pair == wanted)
    })
}

/// Whether process `pid` exists (a zombie counts until it is reaped).
pub fn process_exists(pid: u32) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}
