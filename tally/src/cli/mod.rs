//! The `tally` command line: `start` runs a node, `cluster up` a local cluster, and the other
//! commands are a client of a running cluster (one request each, printed for people or as JSON).
//! One file per group of commands: `cluster` (start, cluster up, status), `accounts` (account
//! create, deposit, withdraw, balance, history), `transfers` (transfer, transfer-status), `audit`,
//! `load` (loadgen, hist); `output` prints, `parse` reads the numbers clap is given.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 transfer aborted, 4 outcome
//! unknown. Errors are one line on stderr: `tally: error: <message>`.

mod accounts;
mod audit;
mod cluster;
mod load;
mod output;
mod parse;
mod status;
#[cfg(test)]
mod tests;
mod transfers;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use net::ErrorCode;

use self::accounts::{AccountCommand, BalanceArgs, Direction, HistoryArgs, MoneyArgs};
use self::cluster::{ClusterCommand, StartArgs};
use self::load::HistCommand;
use self::output::one_line;
use self::transfers::{TRANSFER_HELP, TRANSFER_STATUS_HELP, TransferArgs, TransferStatusArgs};
use client::client::{ClientError, ClientOptions, TallyClient};
use client::config::ClusterConfig;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error (for a write: it was not applied)
  2  usage error
  3  transfer aborted: a valid answer, printed with its reason
  4  outcome unknown: a write was sent and no answer came; it may or may not be applied";

/// Tally: a distributed money-transfer engine.
#[derive(Debug, Parser)]
#[command(name = "tally", version, after_help = EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node of a cluster until SIGINT or SIGTERM.
    Start(StartArgs),
    /// Tooling for a local cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Add money to an account from outside the system.
    ///
    /// Applied at most once per id: resent with the same id when an attempt gets no answer, and
    /// a resend gets the first answer (same balance and lsn). If no attempt is answered (exit
    /// code 4), run the same command again with `--id ID` (the id is printed), or look for the
    /// id in `tally history ACCOUNT`.
    Deposit(MoneyArgs),
    /// Take money out of an account, out of the system.
    ///
    /// Applied at most once per id, resent like `deposit`. A refusal (insufficient funds) is
    /// recorded: the same id is refused again even once the funds are there, so try again with a
    /// new id. If no attempt is answered (exit code 4), run the same command again with
    /// `--id ID`, or look for the id in `tally history ACCOUNT`.
    Withdraw(MoneyArgs),
    /// Show the balance of one account, or of several read at one consistent cut, with their
    /// total.
    Balance(BalanceArgs),
    /// Show a page of an account's history, newest first.
    History(HistoryArgs),
    /// Move money from one account to another.
    #[command(after_long_help = TRANSFER_HELP)]
    Transfer(TransferArgs),
    /// Show what the cluster knows about a transfer id.
    #[command(after_long_help = TRANSFER_STATUS_HELP)]
    TransferStatus(TransferStatusArgs),
    /// Show every node's status.
    Status(ClientArgs),
    /// Check that money is conserved across the cluster.
    ///
    /// Sums every node's balances, deposits and withdrawals at one consistent cut. Exits 1
    /// unless balances == deposits - withdrawals, no balance is negative and nothing is in doubt.
    Audit(ClientArgs),
    /// Measure throughput and tail latency: start a local cluster (or use --cluster), create and
    /// fund accounts, run closed-loop clients, and audit at the end (exit 1 if the audit fails).
    Loadgen(loadgen::LoadgenArgs),
    /// Latency histogram tools.
    #[command(subcommand)]
    Hist(HistCommand),
}
/// What every client command takes.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The cluster file.
    #[arg(long, env = "TALLY_CLUSTER", value_name = "FILE")]
    cluster: PathBuf,
    /// Print one JSON object instead of text (128-bit numbers as decimal strings).
    #[arg(long)]
    json: bool,
}
/// How `tally` ends; the values are the documented exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Success = 0,
    Error = 1,
    Aborted = 3,
    OutcomeUnknown = 4,
}

/// A command that failed: one line for stderr, and the exit code.
#[derive(Debug)]
struct Failure {
    message: String,
    exit: Exit,
}

impl Failure {
    fn error(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            exit: Exit::Error,
        }
    }

    /// A failed read.
    fn read(error: ClientError) -> Failure {
        Failure::error(error.to_string())
    }

    /// A failed write, named `what` (e.g. "transfer 12"), with `hint` on what to do when its
    /// outcome is unknown.
    fn write(what: &str, error: ClientError, hint: &str) -> Failure {
        let outcome_unknown = match &error {
            ClientError::OutcomeUnknown { .. } => true,
            // The node itself could not tell whether it applied the request.
            ClientError::Remote { code, .. } => {
                matches!(code, ErrorCode::Timeout | ErrorCode::Internal)
            }
            _ => false,
        };
        if outcome_unknown {
            Failure {
                message: format!("{what}: outcome unknown: {error}; {hint}"),
                exit: Exit::OutcomeUnknown,
            }
        } else {
            Failure::error(format!("{what}: {error}"))
        }
    }
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // Usage errors, and --help and --version, keep clap's output and exit codes.
            let _ = error.print();
            return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2));
        }
    };
    let exit = match run(cli.command) {
        Ok(exit) => exit,
        Err(failure) => {
            eprintln!("tally: error: {}", one_line(&failure.message));
            failure.exit
        }
    };
    ExitCode::from(exit as u8)
}
fn run(command: Command) -> Result<Exit, Failure> {
    match command {
        Command::Start(args) => cluster::start(args),
        Command::Cluster(ClusterCommand::Up(args)) => cluster::up(args),
        Command::Account(AccountCommand::Create(args)) => {
            with_client(args.client.cluster.clone(), |client| {
                accounts::create_account(client, args)
            })
        }
        Command::Deposit(args) => with_client(args.client.cluster.clone(), |client| {
            accounts::move_money(client, Direction::Deposit, args)
        }),
        Command::Withdraw(args) => with_client(args.client.cluster.clone(), |client| {
            accounts::move_money(client, Direction::Withdraw, args)
        }),
        Command::Balance(args) => with_client(args.client.cluster.clone(), |client| {
            accounts::balance(client, args)
        }),
        Command::History(args) => with_client(args.client.cluster.clone(), |client| {
            accounts::history(client, args)
        }),
        Command::Transfer(args) => with_client(args.client.cluster.clone(), |client| {
            transfers::transfer(client, args)
        }),
        Command::TransferStatus(args) => with_client(args.client.cluster.clone(), |client| {
            transfers::transfer_status(client, args)
        }),
        Command::Status(args) => with_client(args.cluster, move |client| {
            status::status(client, args.json)
        }),
        Command::Audit(args) => {
            with_client(args.cluster, move |client| audit::audit(client, args.json))
        }
        Command::Hist(HistCommand::Compare(args)) => load::hist_compare(&args),
        Command::Loadgen(args) => load::loadgen(args),
    }
}

/// Loads the cluster file, and runs `command` with a client of it on a current-thread runtime.
fn with_client<F, Fut>(cluster: PathBuf, command: F) -> Result<Exit, Failure>
where
    F: FnOnce(TallyClient) -> Fut,
    Fut: Future<Output = Result<Exit, Failure>>,
{
    let config =
        ClusterConfig::load(&cluster).map_err(|error| Failure::error(error.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::error(format!("cannot start the async runtime: {error}")))?;
    let client = TallyClient::new(config, ClientOptions::default());
    runtime.block_on(command(client))
}
