//! `tally start` and `tally cluster up`: running nodes.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use net::NodeId;

use super::{Exit, Failure};
use client::config::NODES_MAX;
use loadgen::local::UpOptions;
use node::server::{LogFormat, StartOptions};

#[derive(Debug, Args)]
pub(super) struct StartArgs {
    /// This node's id in the cluster file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub(super) id: NodeId,
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    pub(super) cluster: PathBuf,
    /// Where this node keeps its log and tables.
    #[arg(long, value_name = "DIR")]
    pub(super) data_dir: PathBuf,
    /// How log lines are written (to stderr and DIR/tally.log): for people, or one JSON object
    /// per line.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Human, env = "TALLY_LOG_FORMAT")]
    pub(super) log_format: LogFormatArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum LogFormatArg {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub(super) enum ClusterCommand {
    /// Start a cluster of local node processes; writes DIR/cluster.toml, keeps the other nodes
    /// running when one dies (saying which and how), reads commands on stdin (status, kill N,
    /// stop N, restart N, quit) and stops every node on SIGINT, SIGTERM or quit.
    Up(UpArgs),
}

#[derive(Debug, Args)]
pub(super) struct UpArgs {
    /// How many nodes (and shards: one led by each node at first).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(NODES_MAX)))]
    pub(super) nodes: u32,
    /// Replicas of each shard, each on its own node (at most --nodes): each shard is a Raft
    /// group that keeps serving while a minority of its replicas is down.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(client::config::REPLICAS_MAX)))]
    pub(super) replicas: u32,
    /// Where the nodes keep their data, one subdirectory each.
    #[arg(long, value_name = "DIR")]
    pub(super) data_dir: PathBuf,
    /// Node i (from 1) listens on 127.0.0.1:(base-port + i - 1), and serves HTTP (`/metrics`
    /// and its console at `/`) on 127.0.0.1:(base-port + nodes + i - 1).
    #[arg(long, default_value_t = 7101, value_parser = clap::value_parser!(u16).range(1..))]
    pub(super) base_port: u16,
    /// Where the console with its control panel listens (host:port; default
    /// 127.0.0.1:(base-port + 2 × nodes)). Its token is printed at start.
    #[arg(long, value_name = "ADDRESS")]
    pub(super) console: Option<std::net::SocketAddr>,
    /// The control panel's token (default: 128 random bits, printed at start).
    #[arg(
        long,
        env = "TALLY_CONSOLE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(super) console_token: Option<String>,
    /// Restart a node that died by itself this long after its death (like 5, 1.5s, 500ms);
    /// without it a dead node stays down until `restart N` on stdin.
    #[arg(long, value_name = "SECONDS", value_parser = parse_restart_after)]
    pub(super) restart_after: Option<Duration>,
}

/// A positive delay of at most a day.
fn parse_restart_after(text: &str) -> Result<Duration, String> {
    let delay = loadgen::faults::parse_duration(text)?;
    if delay.is_zero() {
        return Err("the delay must be positive".into());
    }
    Ok(delay)
}

/// `tally start`: runs the node until SIGINT or SIGTERM.
pub(super) fn start(args: StartArgs) -> Result<Exit, Failure> {
    let options = StartOptions {
        id: args.id,
        cluster: args.cluster,
        data_dir: args.data_dir,
        log_format: match args.log_format {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        },
    };
    node::server::start(options).map_err(|error| Failure::error(format!("{error:#}")))?;
    Ok(Exit::Success)
}

/// `tally cluster up`: runs the local cluster until SIGINT or SIGTERM.
pub(super) fn up(args: UpArgs) -> Result<Exit, Failure> {
    // The nodes' ports, then as many for their HTTP, then the control panel's.
    let port_last = u32::from(args.base_port) + 2 * args.nodes;
    if port_last > u32::from(u16::MAX) {
        return Err(Failure::error(format!(
            "{} nodes from port {} need ports up to {port_last}, past 65535",
            args.nodes, args.base_port
        )));
    }
    let options = UpOptions {
        nodes: args.nodes,
        replicas: args.replicas,
        data_dir: args.data_dir,
        base_port: args.base_port,
        restart_after: args.restart_after,
    };
    if let Some(token) = &args.console_token
        && (token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()))
    {
        return Err(Failure::error(
            "the console token must be at least 16 printable characters without spaces",
        ));
    }
    let console = loadgen::up::ConsoleOptions {
        address: args.console,
        token: args.console_token,
    };
    loadgen::up::up(options, console).map_err(|error| Failure::error(format!("{error:#}")))?;
    Ok(Exit::Success)
}
