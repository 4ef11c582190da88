//! Multi-process tests of a real Tally cluster: a harness that runs `tally` nodes as child
//! processes on loopback (the `tally-failpoints` build, so tests can crash a node at an exact
//! protocol step), kills and restarts them, and talks to them with the client library.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use client::config::{ClusterConfig, NodeConfig};
use client::{ClientOptions, TallyClient};

/// A cluster of node processes in a temporary directory; dropping it kills every node.
pub struct Cluster {
    pub config: ClusterConfig,
    pub cluster_file: PathBuf,
    program: PathBuf,
    directory: tempfile::TempDir,
    children: Vec<Option<Child>>,
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
        let directory = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(nodes as usize);
        let config = ClusterConfig::new(
            nodes,
            (1..=nodes)
                .map(|id| NodeConfig {
                    id,
                    address: format!("127.0.0.1:{}", ports[id as usize - 1]),
                    shards: vec![id - 1],
                })
                .collect(),
        )
        .expect("valid cluster");
        let cluster_file = directory.path().join("cluster.toml");
        std::fs::write(&cluster_file, config.to_toml()).expect("write the cluster file");
        let mut cluster = Cluster {
            config,
            cluster_file,
            program: program.to_owned(),
            directory,
            children: (0..nodes).map(|_| None).collect(),
        };
        for id in 1..=nodes {
            cluster.start_node(id, &[]);
        }
        for id in 1..=nodes {
            cluster.wait_up(id);
        }
        cluster
    }

    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.directory.path().join(format!("node-{id}"))
    }

    /// Starts node `id` with the given crash points armed (`TALLY_FAILPOINTS`).
    pub fn start_node(&mut self, id: u32, failpoints: &[&str]) {
        assert!(self.children[id as usize - 1].is_none(), "node {id} runs");
        let log = std::fs::File::create(self.directory.path().join(format!("node-{id}.stderr")))
            .expect("stderr file");
        let child = Command::new(&self.program)
            .args(["start", "--id", &id.to_string(), "--cluster"])
            .arg(&self.cluster_file)
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .env("TALLY_FAILPOINTS", failpoints.join(","))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a node");
        self.children[id as usize - 1] = Some(child);
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
