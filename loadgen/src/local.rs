//! A local cluster of N nodes as child processes of this one, on 127.0.0.1: the cluster `tally
//! loadgen` starts when it is given none, and the parts `tally cluster up` (`crate::up`) shares.
//! The cluster file goes to `DATA_DIR/cluster.toml` (an existing one is reused, so starting again
//! on the same directory recovers every node), node `i` keeps its data in `DATA_DIR/node-i`.
//! Stopping is clean: SIGTERM, then SIGKILL after a grace period.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use client::config::ClusterConfig;

use crate::proxy::{LinkMode, Proxy};

/// Time a node gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What `tally cluster up` needs.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: u32,
    /// Replicas of each shard (at most `nodes`): shard `s` on nodes `s+1, s+2, ...`, its first
    /// leader node `s+1`.
    pub replicas: u32,
    pub data_dir: PathBuf,
    /// Node `i` (from 1) listens on `127.0.0.1:(base_port + i - 1)`.
    pub base_port: u16,
    /// `tally cluster up` restarts a node that died after this long (never if `None`).
    pub restart_after: Option<Duration>,
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
    // The nodes' ports, then as many for their HTTP (`/metrics`).
    if u32::from(options.base_port) + 2 * options.nodes > u32::from(u16::MAX) + 1 {
        bail!(
            "ports {}..{} do not fit",
            options.base_port,
            u32::from(options.base_port) + 2 * options.nodes - 1
        );
    }
    let mut config = ClusterConfig::local_replicated(
        options.nodes,
        options.replicas.clamp(1, options.nodes),
        options.base_port,
    );
    for node in &mut config.nodes {
        node.http = Some(format!(
            "127.0.0.1:{}",
            u32::from(options.base_port) + options.nodes + node.id - 1
        ));
    }
    std::fs::write(&path, config.to_toml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok((path, config))
}

/// Refuses to start a local cluster whose nodes' ports are taken: its nodes would fail to bind
/// and exit, and whatever listens there (another cluster, say) would be driven in their place.
pub fn ensure_ports_free(config: &ClusterConfig) -> anyhow::Result<()> {
    for node in &config.nodes {
        for address in std::iter::once(&node.address).chain(&node.http) {
            if let Err(error) = std::net::TcpListener::bind(address.as_str()) {
                bail!(
                    "node {}'s address {address} is not free ({error}): another cluster may run there; choose other ports with --base-port (or another --data-dir)",
                    node.id,
                );
            }
        }
    }
    Ok(())
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
                    say(format_args!("node {id} stopped ({status})"));
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    say(format_args!(
                        "node {id} killed after {} s",
                        STOP_GRACE.as_secs()
                    ));
                    break;
                }
            }
        }
    }
}

/// A fault-injecting proxy on every directed link between the nodes of a cluster, and the cluster
/// file each node must run with to use them (its peers' addresses replaced by the proxies in
/// front of them; clients keep the real addresses).
#[derive(Default)]
pub struct LinkProxies {
    /// The proxy on the link from the first node to the second.
    pub proxies: BTreeMap<(u32, u32), Proxy>,
    /// Each node's own cluster file.
    pub configs: BTreeMap<u32, ClusterConfig>,
}

impl LinkProxies {
    /// Starts a proxy (on a free loopback port) for every directed link between nodes of
    /// `config`.
    pub async fn start(config: &ClusterConfig) -> anyhow::Result<LinkProxies> {
        let mut links = LinkProxies::default();
        for from in &config.nodes {
            let mut own = config.clone();
            for (index, to) in config.nodes.iter().enumerate() {
                if to.id == from.id {
                    continue;
                }
                let target: SocketAddr = to
                    .address
                    .parse()
                    .with_context(|| format!("node {} address {}", to.id, to.address))?;
                let listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
                let proxy = Proxy::start(listen, target)
                    .await
                    .context("cannot start a link proxy")?;
                own.nodes[index].address = proxy.local_addr().to_string();
                links.proxies.insert((from.id, to.id), proxy);
            }
            links.configs.insert(from.id, own);
        }
        Ok(links)
    }

    /// Sets both directions of the links between `node` and `peer` (every other node if `None`).
    pub fn set_links(&self, node: u32, peer: Option<u32>, mode: LinkMode) {
        for ((from, to), proxy) in &self.proxies {
            let touches = |a: u32, b: u32| a == node && peer.is_none_or(|peer| peer == b);
            if touches(*from, *to) || touches(*to, *from) {
                proxy.set_mode(mode);
            }
        }
    }
}

/// A local cluster started for a load run; stopped (and its temporary directory removed) by
/// `stop` or on drop. With proxies, every node reaches every other node through a fault-injecting
/// proxy on that directed link (each node gets its own cluster file naming the proxies as its
/// peers' addresses); clients use the real addresses.
pub struct LocalCluster {
    pub config: ClusterConfig,
    pub cluster_file: PathBuf,
    pub data_dir: PathBuf,
    program: PathBuf,
    children: Vec<(u32, Child)>,
    /// Nodes found dead that nobody killed, with their exit status.
    crashed: Vec<(u32, std::process::ExitStatus)>,
    /// The proxies on the links between nodes, if link faults may be injected.
    proxies: LinkProxies,
    _temporary: Option<tempfile::TempDir>,
}

impl LocalCluster {
    /// Starts `nodes` nodes of this executable in `data_dir` (a temporary directory if `None`),
    /// with proxies between them if `proxies`.
    pub async fn start(
        nodes: u32,
        replicas: u32,
        data_dir: Option<PathBuf>,
        base_port: u16,
        proxies: bool,
    ) -> anyhow::Result<Self> {
        let temporary = match data_dir {
            Some(_) => None,
            None => Some(tempfile::tempdir().context("cannot create a temporary directory")?),
        };
        let data_dir = data_dir
            .unwrap_or_else(|| temporary.as_ref().expect("created above").path().to_owned());
        let options = UpOptions {
            nodes,
            replicas,
            data_dir: data_dir.clone(),
            base_port,
            restart_after: None,
        };
        let (cluster_file, config) = prepare(&options)?;
        ensure_ports_free(&config)?;
        let program = std::env::current_exe().context("cannot find the tally executable")?;
        let mut cluster = LocalCluster {
            config,
            cluster_file,
            data_dir,
            program,
            children: Vec::new(),
            crashed: Vec::new(),
            proxies: LinkProxies::default(),
            _temporary: temporary,
        };
        if proxies {
            cluster.start_proxies().await?;
        }
        let ids: Vec<u32> = cluster.config.nodes.iter().map(|node| node.id).collect();
        for id in ids {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    async fn start_proxies(&mut self) -> anyhow::Result<()> {
        let links = LinkProxies::start(&self.config).await?;
        for (id, own) in &links.configs {
            let path = self.data_dir.join(format!("node-{id}.cluster.toml"));
            std::fs::write(&path, own.to_toml())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        self.proxies = links;
        Ok(())
    }

    /// The cluster file node `id` runs with: its peers' proxies when there are proxies.
    fn node_cluster_file(&self, id: u32) -> PathBuf {
        if self.proxies.proxies.is_empty() {
            self.cluster_file.clone()
        } else {
            self.data_dir.join(format!("node-{id}.cluster.toml"))
        }
    }

    /// Whether link faults can be injected.
    pub fn has_proxies(&self) -> bool {
        !self.proxies.proxies.is_empty()
    }

    /// Sets both directions of the links between `node` and `peer` (every other node if `None`).
    pub fn set_links(&self, node: u32, peer: Option<u32>, mode: LinkMode) {
        self.proxies.set_links(node, peer, mode);
    }

    /// Starts node `id` (after `kill`, or for the first time); a node already running is left
    /// alone.
    pub fn start_node(&mut self, id: u32) -> anyhow::Result<()> {
        if let Some((_, child)) = self
            .children
            .iter_mut()
            .find(|(child_id, _)| *child_id == id)
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        self.forget(id);
        let file = self.node_cluster_file(id);
        let child = spawn_node(&self.program, &file, &self.data_dir, id)?;
        self.children.push((id, child));
        Ok(())
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u32) {
        self.forget(id);
    }

    /// Removes node `id`'s process (killing it if it runs), remembering how it ended if it died
    /// on its own.
    fn forget(&mut self, id: u32) {
        if let Some(position) = self
            .children
            .iter()
            .position(|(child_id, _)| *child_id == id)
        {
            let (_, mut child) = self.children.remove(position);
            if let Ok(Some(status)) = child.try_wait() {
                self.crashed.push((id, status));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (e.g. SIGSTOP, SIGCONT) to node `id`, if it runs.
    pub fn signal(&mut self, id: u32, signal: libc::c_int) {
        if let Some((_, child)) = self
            .children
            .iter_mut()
            .find(|(child_id, _)| *child_id == id)
            && matches!(child.try_wait(), Ok(None))
        {
            // SAFETY: kill(2) with a live child's pid has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Nodes that have exited on their own (a crash) during the run, with their status.
    pub fn exited(&mut self) -> Vec<(u32, std::process::ExitStatus)> {
        let mut exited = self.crashed.clone();
        exited.extend(
            self.children
                .iter_mut()
                .filter_map(|(id, child)| match child.try_wait() {
                    Ok(Some(status)) => Some((*id, status)),
                    _ => None,
                }),
        );
        exited
    }

    /// Stops every node cleanly.
    pub fn stop(&mut self) {
        let ids: Vec<u32> = self.children.iter().map(|(id, _)| *id).collect();
        for id in ids {
            // A paused node cannot stop.
            self.signal(id, libc::SIGCONT);
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

/// A line on stdout; a closed stdout is not an error for a command whose work is elsewhere.
pub(crate) fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Sets `flag` when `signal` arrives.
pub(crate) fn signal_flag(signal: libc::c_int, flag: &Arc<AtomicBool>) -> anyhow::Result<()> {
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
