//! A local cluster of N nodes as child processes of this one, on 127.0.0.1: `tally cluster up`,
//! and the cluster `tally loadgen` starts when it is given none.
//! The cluster file goes to `DATA_DIR/cluster.toml` (an existing one is reused, so starting again
//! on the same directory recovers every node), node `i` keeps its data in `DATA_DIR/node-i`.
//! SIGINT or SIGTERM stops every node cleanly (SIGTERM, then SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use client::config::ClusterConfig;

/// Time a node gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `tally cluster up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u32,
    pub data_dir: PathBuf,
    /// Node `i` (from 1) listens on `127.0.0.1:(base_port + i - 1)`.
    pub base_port: u16,
}

/// The cluster file of a local cluster in `data_dir`: the existing one, or a new one written.
pub fn prepare(options: &UpOptions) -> anyhow::Result<(PathBuf, ClusterConfig)> {
    std::fs::create_dir_all(&options.data_dir)
        .with_context(|| format!("cannot create the data dir {}", options.data_dir.display()))?;
    let path = options.data_dir.join("cluster.toml");
    if path.exists() {
        let config = ClusterConfig::load(&path)?;
        if config.nodes.len() != options.nodes as usize {
            bail!(
                "{} names {} nodes, not {}; use another data dir or --nodes {}",
                path.display(),
                config.nodes.len(),
                options.nodes,
                config.nodes.len()
            );
        }
        return Ok((path, config));
    }
    if options.nodes == 0 {
        bail!("a cluster needs at least one node");
    }
    if u32::from(options.base_port) + options.nodes > u32::from(u16::MAX) + 1 {
        bail!("ports {}..{} do not fit", options.base_port, options.nodes);
    }
    let config = ClusterConfig::local(options.nodes, options.base_port);
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((path, config))
}

/// The data dir of node `id` in a local cluster.
pub fn node_data_dir(data_dir: &Path, id: u32) -> PathBuf {
    data_dir.join(format!("node-{id}"))
}

/// Starts node `id` of the cluster file `cluster` as a child process running `program`.
pub fn spawn_node(
    program: &Path,
    cluster: &Path,
    data_dir: &Path,
    id: u32,
) -> anyhow::Result<Child> {
    Command::new(program)
        .arg("start")
        .arg("--id")
        .arg(id.to_string())
        .arg("--cluster")
        .arg(cluster)
        .arg("--data-dir")
        .arg(node_data_dir(data_dir, id))
        .stdin(Stdio::null())
        // Each node logs to its own file; the terminal stays readable.
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start node {id} ({})", program.display()))
}

/// Sends SIGTERM to each child, waits up to `STOP_GRACE` for all, then SIGKILLs the rest.
pub fn stop_all(children: &mut [(u32, Child)]) {
    for (_, child) in children.iter_mut() {
        // An exited child's pid may belong to another process by now.
        if !matches!(child.try_wait(), Ok(None)) {
            continue;
        }
        // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for (id, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    println!("node {id} stopped ({status})");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    println!("node {id} killed after {} s", STOP_GRACE.as_secs());
                    break;
                }
            }
        }
    }
}

/// A local cluster started for a load run; stopped (and its temporary directory removed) by
/// `stop` or on drop.
pub struct LocalCluster {
    pub config: ClusterConfig,
    pub cluster_file: PathBuf,
    pub data_dir: PathBuf,
    program: PathBuf,
    children: Vec<(u32, Child)>,
    _temporary: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts `nodes` nodes of this executable in `data_dir` (a temporary directory if `None`).
    pub fn start(nodes: u32, data_dir: Option<PathBuf>, base_port: u16) -> anyhow::Result<Self> {
        let temporary = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().context("cannot create a temporary directory")?),
        };
        let data_dir = data_dir
            .unwrap_or_else(|| temporary.as_ref().expect("created above").path().to_owned());
        let options = UpOptions {
            nodes,
            data_dir: data_dir.clone(),
            base_port,
        };
        let (cluster_file, config) = prepare(&options)?;
        let program = std::env::current_exe().context("cannot find the tally executable")?;
        let mut cluster = LocalCluster {
            config,
            cluster_file,
            data_dir,
            program,
            children: Vec::new(),
            _temporary: temporary,
        };
        let ids: Vec<u32> = cluster.config.nodes.iter().map(|node| node.id).collect();
        for id in ids {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` (after `kill`, or for the first time).
    pub fn start_node(&mut self, id: u32) -> anyhow::Result<()> {
        self.children.retain(|(child_id, _)| *child_id != id);
        let child = spawn_node(&self.program, &self.cluster_file, &self.data_dir, id)?;
        self.children.push((id, child));
        Ok(())
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u32) {
        if let Some(position) = self
            .children
            .iter()
            .position(|(child_id, _)| *child_id == id)
        {
            let (_, mut child) = self.children.remove(position);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to node `id`.
    pub fn signal(&self, id: u32, signal: libc::c_int) {
        if let Some((_, child)) = self.children.iter().find(|(child_id, _)| *child_id == id) {
            // SAFETY: kill(2) with a child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Stops every node cleanly.
    pub fn stop(&mut self) {
        for (_, child) in &self.children {
            // A paused node cannot stop.
            // SAFETY: as in `signal`.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGCONT);
            }
        }
        stop_all(&mut self.children);
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the nodes, prints where everything is, and stops them on SIGINT or SIGTERM.
pub fn up(options: UpOptions) -> anyhow::Result<()> {
    let (cluster_file, config) = prepare(&options)?;
    let program = std::env::current_exe().context("cannot find the tally executable")?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(signal, &stop)?;
    }
    let mut children = Vec::new();
    for node in &config.nodes {
        match spawn_node(&program, &cluster_file, &options.data_dir, node.id) {
            Ok(child) => children.push((node.id, child)),
            Err(error) => {
                stop_all(&mut children);
                return Err(error);
            }
        }
    }
    println!("cluster file: {}", cluster_file.display());
    for node in &config.nodes {
        let dir = node_data_dir(&options.data_dir, node.id);
        println!(
            "node {}: {}  shards {:?}  data {}  log {}",
            node.id,
            node.address,
            node.shards,
            dir.display(),
            dir.join("tally.log").display()
        );
    }
    println!(
        "try: tally status --cluster {}   (Ctrl-C stops the cluster)",
        cluster_file.display()
    );
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        for (id, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                failed = Some(format!("node {id} exited ({status}); see its log"));
            }
        }
        if failed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("stopping the cluster");
    stop_all(&mut children);
    match failed {
        Some(message) => bail!(message),
        None => Ok(()),
    }
}

/// Sets `flag` when `signal` arrives.
fn signal_flag(signal: libc::c_int, flag: &Arc<AtomicBool>) -> anyhow::Result<()> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(flag.clone());
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(flag) = FLAG.get() {
            flag.store(true, Ordering::Relaxed);
        }
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let previous = unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
    if previous == libc::SIG_ERR {
        bail!("cannot install a handler for signal {signal}");
    }
    Ok(())
}
