//! The `tally` command line: `start` runs a node, `cluster up` a local cluster, and the other
//! commands are a client of a running cluster (one request each, printed for people or as JSON).
//!
//! Exit codes: 0 success, 1 error, 2 usage error (from clap), 3 transfer aborted, 4 outcome
//! unknown. Errors are one line on stderr: `tally: error: <message>`.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use net::{
    AbortReason, AccountId, AuditReport, ErrorCode, HISTORY_PAGE_ENTRIES_MAX, HistoryKind,
    NodeAudit, NodeId, TransferId, TransferOutcome, TransferState,
};
use serde::Serialize;

use client::client::{ClientError, ClientOptions, TallyClient};
use client::config::{ClusterConfig, NODES_MAX};
use loadgen::local::UpOptions;
use node::server::StartOptions;

const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  error (for a write: it was not applied)
  2  usage error
  3  transfer aborted: a valid answer, printed with its reason
  4  outcome unknown: a write was sent and no answer came; it may or may not be applied";

const TRANSFER_HELP: &str = "\
Exit codes:
  0  committed
  1  error: the transfer was not applied (cluster unreachable, invalid request, ...)
  2  usage error
  3  aborted: a valid answer (insufficient funds, unknown account, ...), printed with its reason
  4  outcome unknown: no answer came. Check with `tally transfer-status ID`, or run the same
     command again with `--id ID`: a transfer id is applied at most once.

Without --id a random id is generated; it is printed with the result (and in any error) so that
the transfer can be checked or resent.";

const TRANSFER_STATUS_HELP: &str = "\
States:
  committed    decided and applied: final
  aborted      decided, with its reason: final (to try again, use a new id)
  in progress  running now, or prepared and waiting for its decision: ask again shortly
               (`in_progress` in --json output)
  unknown      no node has seen this id yet: it was never sent, or is still on its way. This is
               not exit 4: the command itself succeeded. Only resending the same transfer (same id
               and content) settles a transfer whose outcome a client did not hear.

Exit codes: 0 when the cluster answered (whatever the state), 1 on an error, 2 usage error.";

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

#[derive(Debug, Subcommand)]
enum HistCommand {
    /// Compare percentile distributions (.hgrm files, e.g. two loadgen runs): prints percentiles
    /// side by side with ratios to the first file, and with --out draws them in one chart.
    Compare(loadgen::hist::CompareArgs),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// This node's id in the cluster file.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    id: NodeId,
    /// The cluster file.
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// Where this node keeps its log and tables.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Start a cluster of local node processes; writes DIR/cluster.toml and stops the nodes on
    /// SIGINT or SIGTERM.
    Up(UpArgs),
}

#[derive(Debug, Args)]
struct UpArgs {
    /// How many nodes (one shard each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=i64::from(NODES_MAX)))]
    nodes: u32,
    /// Where the nodes keep their data, one subdirectory each.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Node i (from 1) listens on 127.0.0.1:(base-port + i - 1).
    #[arg(long, default_value_t = 7101, value_parser = clap::value_parser!(u16).range(1..))]
    base_port: u16,
}

#[derive(Debug, Subcommand)]
enum AccountCommand {
    /// Create an account; creating it again with the same owner and flags succeeds again.
    Create(CreateArgs),
}

/// What every client command takes.
#[derive(Debug, Args)]
struct ClientArgs {
    /// The cluster file.
    #[arg(long, env = "TALLY_CLUSTER", value_name = "FILE")]
    cluster: PathBuf,
    /// Print one JSON object instead of text (128-bit numbers as decimal strings).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The new account's id.
    #[arg(value_name = "ID")]
    account: AccountId,
    /// The owner's name (at most 64 bytes of UTF-8).
    #[arg(long, value_name = "NAME")]
    owner: Option<String>,
    /// Account flags, in decimal or 0x-hex.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_flags)]
    flags: u32,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct MoneyArgs {
    /// The account.
    #[arg(value_name = "ID")]
    account: AccountId,
    /// In minor units (e.g. cents), at least 1.
    #[arg(value_parser = parse_amount)]
    amount: u64,
    /// Idempotency id, in decimal or 0x-hex; generated when absent. The account's node applies
    /// an id at most once and answers a repeat with its first answer; the same id with another
    /// account, amount or direction (or an id it knows as a transfer) is refused.
    #[arg(long, value_name = "X", value_parser = parse_transfer_id)]
    id: Option<TransferId>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct BalanceArgs {
    /// The accounts; several are read at one consistent cut.
    #[arg(value_name = "ID", required = true)]
    accounts: Vec<AccountId>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct HistoryArgs {
    /// The account.
    #[arg(value_name = "ID")]
    account: AccountId,
    /// Entries per page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(HISTORY_PAGE_ENTRIES_MAX)))]
    limit: u32,
    /// Where the page starts: 0 for the newest entries, else the cursor printed with the
    /// previous page.
    #[arg(long, default_value_t = 0, value_name = "C")]
    cursor: u64,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct TransferArgs {
    /// The account debited.
    #[arg(long, value_name = "A")]
    from: AccountId,
    /// The account credited.
    #[arg(long, value_name = "B")]
    to: AccountId,
    /// In minor units (e.g. cents), at least 1.
    #[arg(long, value_name = "N", value_parser = parse_amount)]
    amount: u64,
    /// Transfer id, in decimal or 0x-hex; generated when absent.
    #[arg(long, value_name = "X", value_parser = parse_transfer_id)]
    id: Option<TransferId>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, Args)]
struct TransferStatusArgs {
    /// The transfer id, in decimal or 0x-hex.
    #[arg(value_name = "X", value_parser = parse_transfer_id)]
    id: TransferId,
    #[command(flatten)]
    client: ClientArgs,
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
        Command::Start(args) => {
            let options = StartOptions {
                id: args.id,
                cluster: args.cluster,
                data_dir: args.data_dir,
            };
            node::server::start(options).map_err(|error| Failure::error(format!("{error:#}")))?;
            Ok(Exit::Success)
        }
        Command::Cluster(ClusterCommand::Up(args)) => {
            let port_last = u32::from(args.base_port) + args.nodes - 1;
            if port_last > u32::from(u16::MAX) {
                return Err(Failure::error(format!(
                    "{} nodes from port {} need ports up to {port_last}, past 65535",
                    args.nodes, args.base_port
                )));
            }
            let options = UpOptions {
                nodes: args.nodes,
                data_dir: args.data_dir,
                base_port: args.base_port,
            };
            loadgen::local::up(options).map_err(|error| Failure::error(format!("{error:#}")))?;
            Ok(Exit::Success)
        }
        Command::Account(AccountCommand::Create(args)) => {
            with_client(args.client.cluster.clone(), |client| {
                create_account(client, args)
            })
        }
        Command::Deposit(args) => with_client(args.client.cluster.clone(), |client| {
            move_money(client, Direction::Deposit, args)
        }),
        Command::Withdraw(args) => with_client(args.client.cluster.clone(), |client| {
            move_money(client, Direction::Withdraw, args)
        }),
        Command::Balance(args) => {
            with_client(args.client.cluster.clone(), |client| balance(client, args))
        }
        Command::History(args) => {
            with_client(args.client.cluster.clone(), |client| history(client, args))
        }
        Command::Transfer(args) => {
            with_client(args.client.cluster.clone(), |client| transfer(client, args))
        }
        Command::TransferStatus(args) => with_client(args.client.cluster.clone(), |client| {
            transfer_status(client, args)
        }),
        Command::Status(args) => with_client(args.cluster, move |client| status(client, args.json)),
        Command::Audit(args) => with_client(args.cluster, move |client| audit(client, args.json)),
        Command::Hist(HistCommand::Compare(args)) => match loadgen::hist::compare(&args) {
            Ok(table) => {
                print!("{table}");
                Ok(Exit::Success)
            }
            Err(error) => Err(Failure::error(format!("{error:#}"))),
        },
        Command::Loadgen(args) => match loadgen::main(args) {
            Ok(true) => Ok(Exit::Success),
            Ok(false) => Err(Failure::error(
                "the end-of-run checks failed (see the report)",
            )),
            Err(error) => Err(Failure::error(format!("{error:#}"))),
        },
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

async fn create_account(client: TallyClient, args: CreateArgs) -> Result<Exit, Failure> {
    let what = format!("account {}", args.account);
    let created = client
        .create_account(args.account, args.owner, args.flags)
        .await
        .map_err(|error| {
            let hint = "creating it again with the same owner and flags is safe";
            Failure::write(&what, error, hint)
        })?;
    let output = AccountCreatedOutput {
        account: created.account,
        created_at_unix_ms: created.created_at_unix_ms,
    };
    let text = format!(
        "account {} created (at {} ms since the Unix epoch)",
        output.account, output.created_at_unix_ms
    );
    print_output(args.client.json, &output, &text)?;
    Ok(Exit::Success)
}

/// Which way a deposit or withdrawal moves money.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Deposit,
    Withdraw,
}

async fn move_money(
    client: TallyClient,
    direction: Direction,
    args: MoneyArgs,
) -> Result<Exit, Failure> {
    let id = args.id.unwrap_or_else(TallyClient::new_transfer_id);
    let (name, answer) = match direction {
        Direction::Deposit => {
            let answer = client.deposit(id, args.account, args.amount).await;
            (
                "deposit",
                answer.map(|done| (done.id, done.balance_after, done.lsn)),
            )
        }
        Direction::Withdraw => {
            let answer = client.withdraw(id, args.account, args.amount).await;
            (
                "withdrawal",
                answer.map(|done| (done.id, done.balance_after, done.lsn)),
            )
        }
    };
    let (id, balance_after, lsn) = answer.map_err(|error| {
        // The node applies an id at most once, so the same command with this id is safe.
        let hint = format!(
            "run it again with --id {id} (applied at most once), or look for id {id} in `tally \
             history {}`",
            args.account
        );
        Failure::write(&format!("{name} {id}"), error, &hint)
    })?;
    let output = MoneyOutput {
        id,
        account: args.account,
        amount: args.amount,
        balance_after,
        lsn,
    };
    let text = format!(
        "{name} {id}: account {} balance {balance_after} (lsn {lsn})",
        args.account
    );
    print_output(args.client.json, &output, &text)?;
    Ok(Exit::Success)
}

async fn balance(client: TallyClient, args: BalanceArgs) -> Result<Exit, Failure> {
    let balances = match args.accounts.as_slice() {
        &[account] => {
            let balance = client.balance(account).await.map_err(Failure::read)?;
            vec![BalanceOutput { account, balance }]
        }
        accounts => {
            let balances = client.balances(accounts).await.map_err(Failure::read)?;
            balances
                .into_iter()
                .map(|balance| BalanceOutput {
                    account: balance.account,
                    balance: balance.balance,
                })
                .collect()
        }
    };
    let total = balances.iter().map(|entry| u128::from(entry.balance)).sum();
    let output = BalancesOutput { balances, total };
    let text = if let [single] = output.balances.as_slice() {
        format!("account {}: {}", single.account, single.balance)
    } else {
        let mut rows: Vec<Vec<String>> = output
            .balances
            .iter()
            .map(|entry| vec![entry.account.to_string(), entry.balance.to_string()])
            .collect();
        rows.push(vec!["total".to_string(), output.total.to_string()]);
        render_table(&["account", "balance"], &rows)
    };
    print_output(args.client.json, &output, &text)?;
    Ok(Exit::Success)
}

async fn history(client: TallyClient, args: HistoryArgs) -> Result<Exit, Failure> {
    let history = client
        .history(args.account, args.limit, args.cursor)
        .await
        .map_err(Failure::read)?;
    let output = HistoryOutput {
        account: history.account,
        entries: history
            .entries
            .iter()
            .map(|entry| HistoryEntryOutput {
                sequence: entry.sequence,
                kind: history_kind_name(entry.kind),
                amount: entry.amount,
                counterparty_account: entry.counterparty_account,
                transfer_id: entry.transfer_id,
                balance_after: entry.balance_after,
            })
            .collect(),
        next_cursor: history.next_cursor,
    };
    let mut text = if output.entries.is_empty() {
        format!("account {}: no history", output.account)
    } else {
        let rows: Vec<Vec<String>> = output
            .entries
            .iter()
            .map(|entry| {
                // 0 stands for "none" in both fields.
                let counterparty = match entry.counterparty_account {
                    0 => "-".to_string(),
                    account => account.to_string(),
                };
                let id = match entry.transfer_id {
                    0 => "-".to_string(),
                    id => id.to_string(),
                };
                vec![
                    entry.sequence.to_string(),
                    human(entry.kind),
                    entry.amount.to_string(),
                    counterparty,
                    id,
                    entry.balance_after.to_string(),
                ]
            })
            .collect();
        let headers = [
            "lsn",
            "kind",
            "amount",
            "counterparty",
            "id",
            "balance after",
        ];
        render_table(&headers, &rows)
    };
    if output.next_cursor != 0 {
        text.push_str(&format!("\nolder entries: --cursor {}", output.next_cursor));
    }
    print_output(args.client.json, &output, &text)?;
    Ok(Exit::Success)
}

async fn transfer(client: TallyClient, args: TransferArgs) -> Result<Exit, Failure> {
    let id = args.id.unwrap_or_else(TallyClient::new_transfer_id);
    let outcome = client
        .transfer(id, args.from, args.to, args.amount)
        .await
        .map_err(|error| {
            let hint = format!(
                "check it with `tally transfer-status {id}`, or resend it with `--id {id}`"
            );
            Failure::write(&format!("transfer {id}"), error, &hint)
        })?;
    let (outcome_name, reason, exit) = match outcome {
        TransferOutcome::Committed => ("committed", None, Exit::Success),
        TransferOutcome::Aborted(reason) => {
            ("aborted", Some(abort_reason_name(reason)), Exit::Aborted)
        }
    };
    let output = TransferOutput {
        id,
        debit: args.from,
        credit: args.to,
        amount: args.amount,
        outcome: outcome_name,
        reason,
    };
    let text = match reason {
        None => format!("transfer {id}: {outcome_name}"),
        Some(reason) => format!("transfer {id}: {outcome_name}: {}", human(reason)),
    };
    print_output(args.client.json, &output, &text)?;
    Ok(exit)
}

async fn transfer_status(client: TallyClient, args: TransferStatusArgs) -> Result<Exit, Failure> {
    let state = client
        .transfer_status(args.id)
        .await
        .map_err(Failure::read)?;
    let (state_name, reason) = match state {
        TransferState::Committed => ("committed", None),
        TransferState::Aborted(reason) => ("aborted", Some(abort_reason_name(reason))),
        TransferState::InProgress => ("in_progress", None),
        TransferState::Unknown => ("unknown", None),
    };
    let output = TransferStatusOutput {
        id: args.id,
        state: state_name,
        reason,
    };
    let text = match reason {
        None => format!("transfer {}: {}", args.id, human(state_name)),
        Some(reason) => format!("transfer {}: {state_name}: {}", args.id, human(reason)),
    };
    print_output(args.client.json, &output, &text)?;
    Ok(Exit::Success)
}

async fn status(client: TallyClient, json: bool) -> Result<Exit, Failure> {
    let statuses = client.cluster_status().await.map_err(Failure::read)?;
    let config = client.config();
    let nodes: Vec<NodeStatusOutput> = statuses
        .into_iter()
        .map(|status| {
            let node = config.node(status.node_id);
            NodeStatusOutput {
                node_id: status.node_id,
                address: node.map_or_else(String::new, |node| node.address.clone()),
                up: status.up,
                shard: status.shard,
                shards: node.map_or_else(Vec::new, |node| node.shards.clone()),
                last_lsn: status.last_lsn,
                in_doubt_count: status.in_doubt_count,
                uptime_seconds: status.uptime_seconds,
            }
        })
        .collect();
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| {
            let shards = node.shards.iter().map(u32::to_string).collect::<Vec<_>>();
            let mut row = vec![
                node.node_id.to_string(),
                node.address.clone(),
                if node.up { "up" } else { "down" }.to_string(),
                shards.join(","),
            ];
            if node.up {
                row.push(node.last_lsn.to_string());
                row.push(node.in_doubt_count.to_string());
                row.push(format_uptime(node.uptime_seconds));
            } else {
                row.extend(["-", "-", "-"].map(String::from));
            }
            row
        })
        .collect();
    let headers = [
        "node", "address", "state", "shards", "last lsn", "in doubt", "uptime",
    ];
    let text = render_table(&headers, &rows);
    print_output(json, &StatusOutput { nodes }, &text)?;
    Ok(Exit::Success)
}

async fn audit(client: TallyClient, json: bool) -> Result<Exit, Failure> {
    let report = client.audit().await.map_err(Failure::read)?;
    let check = check_audit(&report, client.config());
    let mut rows: Vec<Vec<String>> = report
        .nodes
        .iter()
        .map(|node| audit_row(node.node_id.to_string(), &AuditTotals::of_node(node)))
        .collect();
    if let Some(totals) = &check.totals {
        rows.push(audit_row("total".to_string(), totals));
    }
    let headers = [
        "node",
        "accounts",
        "balances",
        "deposits",
        "withdrawals",
        "negative",
        "in doubt",
    ];
    let mut text = render_table(&headers, &rows);
    if check.violations.is_empty() {
        text.push_str("\nconservation: OK");
    } else {
        text.push_str(&format!(
            "\nconservation: VIOLATED ({})",
            check.violations.join("; ")
        ));
    }
    let output = AuditOutput {
        nodes: report.nodes.iter().map(AuditNodeOutput::from).collect(),
        totals: check.totals,
        conservation: if check.violations.is_empty() {
            "ok"
        } else {
            "violated"
        },
        violations: check.violations,
    };
    print_output(json, &output, &text)?;
    Ok(if output.violations.is_empty() {
        Exit::Success
    } else {
        Exit::Error
    })
}

fn audit_row(label: String, totals: &AuditTotals) -> Vec<String> {
    vec![
        label,
        totals.account_count.to_string(),
        totals.balances_sum.to_string(),
        totals.deposits_sum.to_string(),
        totals.withdrawals_sum.to_string(),
        totals.negative_balance_count.to_string(),
        totals.in_doubt_count.to_string(),
    ]
}

/// The sums of an audit: one node's, or the cluster's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct AuditTotals {
    #[serde(serialize_with = "decimal")]
    balances_sum: u128,
    #[serde(serialize_with = "decimal")]
    deposits_sum: u128,
    #[serde(serialize_with = "decimal")]
    withdrawals_sum: u128,
    account_count: u64,
    negative_balance_count: u64,
    in_doubt_count: u64,
}

impl AuditTotals {
    fn of_node(node: &NodeAudit) -> AuditTotals {
        AuditTotals {
            balances_sum: node.balances_sum,
            deposits_sum: node.deposits_sum,
            withdrawals_sum: node.withdrawals_sum,
            account_count: node.account_count,
            negative_balance_count: node.negative_balance_count,
            in_doubt_count: node.in_doubt_count,
        }
    }

    /// The sum of two, or `None` if a field overflows.
    fn checked_add(&self, other: &AuditTotals) -> Option<AuditTotals> {
        Some(AuditTotals {
            balances_sum: self.balances_sum.checked_add(other.balances_sum)?,
            deposits_sum: self.deposits_sum.checked_add(other.deposits_sum)?,
            withdrawals_sum: self.withdrawals_sum.checked_add(other.withdrawals_sum)?,
            account_count: self.account_count.checked_add(other.account_count)?,
            negative_balance_count: self
                .negative_balance_count
                .checked_add(other.negative_balance_count)?,
            in_doubt_count: self.in_doubt_count.checked_add(other.in_doubt_count)?,
        })
    }
}

/// The cluster's totals (`None` if they overflow) and every way the report breaks conservation.
#[derive(Debug)]
struct AuditCheck {
    totals: Option<AuditTotals>,
    violations: Vec<String>,
}

/// Checks `sum(balances) == sum(deposits) - sum(withdrawals)`, no negative balance, nothing in
/// doubt, and that every node of the config is in the report exactly once.
fn check_audit(report: &AuditReport, config: &ClusterConfig) -> AuditCheck {
    let mut violations = Vec::new();
    for node in &config.nodes {
        match report
            .nodes
            .iter()
            .filter(|audit| audit.node_id == node.id)
            .count()
        {
            1 => {}
            0 => violations.push(format!("node {} missing from the report", node.id)),
            count => violations.push(format!("node {} reported {count} times", node.id)),
        }
    }
    let zero = AuditTotals {
        balances_sum: 0,
        deposits_sum: 0,
        withdrawals_sum: 0,
        account_count: 0,
        negative_balance_count: 0,
        in_doubt_count: 0,
    };
    let totals = report.nodes.iter().try_fold(zero, |sum, node| {
        sum.checked_add(&AuditTotals::of_node(node))
    });
    match &totals {
        None => violations.push("the totals overflow 128 bits".to_string()),
        Some(totals) => {
            let expected = totals.deposits_sum.checked_sub(totals.withdrawals_sum);
            if expected != Some(totals.balances_sum) {
                violations.push(format!(
                    "balances {} != deposits {} - withdrawals {}",
                    totals.balances_sum, totals.deposits_sum, totals.withdrawals_sum
                ));
            }
            if totals.negative_balance_count != 0 {
                violations.push(format!(
                    "{} negative balance(s)",
                    totals.negative_balance_count
                ));
            }
            if totals.in_doubt_count != 0 {
                violations.push(format!("{} transaction(s) in doubt", totals.in_doubt_count));
            }
        }
    }
    AuditCheck { totals, violations }
}

#[derive(Debug, Serialize)]
struct AccountCreatedOutput {
    account: AccountId,
    created_at_unix_ms: u64,
}

#[derive(Debug, Serialize)]
struct MoneyOutput {
    #[serde(serialize_with = "decimal")]
    id: TransferId,
    account: AccountId,
    amount: u64,
    balance_after: u64,
    lsn: u64,
}

#[derive(Debug, Serialize)]
struct BalanceOutput {
    account: AccountId,
    balance: u64,
}

#[derive(Debug, Serialize)]
struct BalancesOutput {
    balances: Vec<BalanceOutput>,
    #[serde(serialize_with = "decimal")]
    total: u128,
}

#[derive(Debug, Serialize)]
struct HistoryEntryOutput {
    sequence: u64,
    kind: &'static str,
    amount: u64,
    counterparty_account: AccountId,
    #[serde(serialize_with = "decimal")]
    transfer_id: TransferId,
    balance_after: u64,
}

#[derive(Debug, Serialize)]
struct HistoryOutput {
    account: AccountId,
    entries: Vec<HistoryEntryOutput>,
    next_cursor: u64,
}

#[derive(Debug, Serialize)]
struct TransferOutput {
    #[serde(serialize_with = "decimal")]
    id: TransferId,
    debit: AccountId,
    credit: AccountId,
    amount: u64,
    outcome: &'static str,
    reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct TransferStatusOutput {
    #[serde(serialize_with = "decimal")]
    id: TransferId,
    state: &'static str,
    reason: Option<&'static str>,
}

/// A node's own status, with its address and shards from the cluster file.
#[derive(Debug, Serialize)]
struct NodeStatusOutput {
    node_id: NodeId,
    address: String,
    up: bool,
    /// The shard the node reports serving (for a node that is down: its first in the file).
    shard: u32,
    /// The shards the cluster file gives the node.
    shards: Vec<u32>,
    last_lsn: u64,
    in_doubt_count: u64,
    uptime_seconds: u64,
}

#[derive(Debug, Serialize)]
struct StatusOutput {
    nodes: Vec<NodeStatusOutput>,
}

#[derive(Debug, Serialize)]
struct AuditNodeOutput {
    node_id: NodeId,
    #[serde(flatten)]
    totals: AuditTotals,
}

impl From<&NodeAudit> for AuditNodeOutput {
    fn from(node: &NodeAudit) -> Self {
        AuditNodeOutput {
            node_id: node.node_id,
            totals: AuditTotals::of_node(node),
        }
    }
}

#[derive(Debug, Serialize)]
struct AuditOutput {
    nodes: Vec<AuditNodeOutput>,
    /// `None` (null) when the totals overflow.
    totals: Option<AuditTotals>,
    conservation: &'static str,
    violations: Vec<String>,
}

/// Serializes a `u128` as a decimal string: JSON readers commonly hold numbers in doubles, which
/// lose precision beyond 2^53.
fn decimal<S: serde::Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// Prints `output` as one line of JSON, or `text` for people.
fn print_output(json: bool, output: &impl Serialize, text: &str) -> Result<(), Failure> {
    let line = if json {
        serde_json::to_string(output)
            .map_err(|error| Failure::error(format!("cannot encode the answer as JSON: {error}")))?
    } else {
        text.to_string()
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // The reader went away (`tally history 7 | head -1`): nothing left to tell it.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(Failure::error(format!("cannot write to stdout: {error}"))),
    }
}

/// Columns padded to their widest cell: columns of numbers (every cell digits, or `-` for none)
/// right-aligned, the others left-aligned.
fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let column_count = headers.len();
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    let mut numeric = vec![true; column_count];
    for row in rows {
        debug_assert_eq!(
            row.len(),
            column_count,
            "a table row has one cell per column"
        );
        for (column, cell) in row.iter().enumerate().take(column_count) {
            widths[column] = widths[column].max(cell.chars().count());
            let is_number = cell == "-" || cell.chars().all(|digit| digit.is_ascii_digit());
            numeric[column] &= is_number;
        }
    }
    let header_row: Vec<String> = headers.iter().map(|header| header.to_string()).collect();
    std::iter::once(&header_row)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .enumerate()
                .take(column_count)
                .map(|(column, cell)| {
                    let width = widths[column];
                    if numeric[column] {
                        format!("{cell:>width$}")
                    } else {
                        format!("{cell:<width$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `3d04h`, `2h05m`, `5m03s`, `42s`.
fn format_uptime(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m{:02}s", seconds % 60),
        (0, _, _) => format!("{hours}h{minutes:02}m"),
        _ => format!("{days}d{hours:02}h"),
    }
}

fn abort_reason_name(reason: AbortReason) -> &'static str {
    match reason {
        AbortReason::InsufficientFunds => "insufficient_funds",
        AbortReason::UnknownAccount => "unknown_account",
        AbortReason::LockConflict => "lock_conflict",
        AbortReason::ParticipantUnavailable => "participant_unavailable",
        AbortReason::SelfTransfer => "self_transfer",
        AbortReason::ZeroAmount => "zero_amount",
        AbortReason::Overflow => "overflow",
        AbortReason::Timeout => "timeout",
        AbortReason::PresumedAbort => "presumed_abort",
        AbortReason::InvalidRequest => "invalid_request",
    }
}

fn history_kind_name(kind: HistoryKind) -> &'static str {
    match kind {
        HistoryKind::Deposit => "deposit",
        HistoryKind::Withdraw => "withdraw",
        HistoryKind::TransferDebit => "transfer_debit",
        HistoryKind::TransferCredit => "transfer_credit",
    }
}

/// A JSON name for people: `insufficient_funds` → `insufficient funds`.
fn human(name: &str) -> String {
    name.replace('_', " ")
}

/// `text` on one line, so that every error is exactly one line of stderr.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A whole number in decimal or `0x`-hex.
fn parse_number(text: &str) -> Result<u128, String> {
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    // from_str_radix accepts a leading '+'; a number here is digits only.
    if digits.is_empty() || !digits.chars().all(|digit| digit.is_digit(radix)) {
        return Err(format!("{text:?} is not a decimal or 0x-hex number"));
    }
    u128::from_str_radix(digits, radix).map_err(|_| format!("{text} does not fit in 128 bits"))
}

/// A transfer (or deposit, withdrawal) id: a non-zero `u128` in decimal or `0x`-hex.
fn parse_transfer_id(text: &str) -> Result<TransferId, String> {
    match parse_number(text)? {
        0 => Err("id 0 is reserved; ids start at 1".to_string()),
        id => Ok(id),
    }
}

/// Account flags: a `u32` in decimal or `0x`-hex.
fn parse_flags(text: &str) -> Result<u32, String> {
    let flags = parse_number(text)?;
    u32::try_from(flags).map_err(|_| format!("flags {text} do not fit in 32 bits"))
}

/// An amount of money in minor units: a decimal `u64`, at least 1.
fn parse_amount(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("an amount must be at least 1 minor unit".to_string()),
        Ok(amount) if text.chars().all(|digit| digit.is_ascii_digit()) => Ok(amount),
        _ => Err(format!(
            "{text:?} is not an amount: expected a whole number of minor units from 1 to {}",
            u64::MAX
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("tally").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    /// Parses `args` expecting a usage error, and returns its text.
    fn parse_error(args: &[&str]) -> clap::Error {
        match parse(args) {
            Ok(command) => panic!("{args:?} parsed as {command:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn start_and_cluster_up() {
        let command = parse(&[
            "start",
            "--id",
            "2",
            "--cluster",
            "c.toml",
            "--data-dir",
            "d",
        ])
        .expect("start");
        let Command::Start(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!(
            (args.id, args.cluster, args.data_dir),
            (2, PathBuf::from("c.toml"), PathBuf::from("d"))
        );
        parse_error(&["start", "--id", "0", "--cluster", "c", "--data-dir", "d"]);
        parse_error(&["start", "--id", "1", "--cluster", "c"]);

        let command = parse(&["cluster", "up", "--data-dir", "d"]).expect("cluster up");
        let Command::Cluster(ClusterCommand::Up(args)) = command else {
            panic!("{command:?}");
        };
        assert_eq!((args.nodes, args.base_port), (3, 7101));
        let command = parse(&[
            "cluster",
            "up",
            "--nodes",
            "5",
            "--data-dir",
            "d",
            "--base-port",
            "9000",
        ])
        .expect("cluster up");
        let Command::Cluster(ClusterCommand::Up(args)) = command else {
            panic!("{command:?}");
        };
        assert_eq!((args.nodes, args.base_port), (5, 9000));
        parse_error(&["cluster", "up", "--nodes", "0", "--data-dir", "d"]);
        parse_error(&["cluster", "up", "--nodes", "257", "--data-dir", "d"]);
    }

    #[test]
    fn client_commands() {
        let command = parse(&[
            "account",
            "create",
            "7",
            "--owner",
            "ann",
            "--flags",
            "0x3",
            "--cluster",
            "c",
            "--json",
        ])
        .expect("account create");
        let Command::Account(AccountCommand::Create(args)) = command else {
            panic!("{command:?}");
        };
        assert_eq!(
            (args.account, args.owner.as_deref(), args.flags),
            (7, Some("ann"), 3)
        );
        assert!(args.client.json);
        assert_eq!(args.client.cluster, PathBuf::from("c"));

        let command = parse(&["deposit", "7", "150", "--cluster", "c"]).expect("deposit");
        let Command::Deposit(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!((args.account, args.amount, args.id), (7, 150, None));
        assert!(!args.client.json);

        let command =
            parse(&["withdraw", "7", "5", "--id", "0x10", "--cluster", "c"]).expect("withdraw");
        let Command::Withdraw(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!(args.id, Some(16));

        let command = parse(&["balance", "1", "2", "3", "--cluster", "c"]).expect("balance");
        let Command::Balance(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!(args.accounts, vec![1, 2, 3]);
        parse_error(&["balance", "--cluster", "c"]);

        let command = parse(&["history", "9", "--cluster", "c"]).expect("history");
        let Command::History(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!((args.account, args.limit, args.cursor), (9, 20, 0));
        parse_error(&["history", "9", "--limit", "0", "--cluster", "c"]);
        parse_error(&["history", "9", "--limit", "1001", "--cluster", "c"]);

        let command = parse(&[
            "transfer",
            "--from",
            "1",
            "--to",
            "2",
            "--amount",
            "30",
            "--id",
            "99",
            "--cluster",
            "c",
        ])
        .expect("transfer");
        let Command::Transfer(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!(
            (args.from, args.to, args.amount, args.id),
            (1, 2, 30, Some(99))
        );
        parse_error(&["transfer", "--from", "1", "--to", "2", "--cluster", "c"]);
        let error = parse_error(&[
            "transfer",
            "--from",
            "1",
            "--to",
            "2",
            "--amount",
            "1.5",
            "--cluster",
            "c",
        ]);
        assert_eq!(error.kind(), ErrorKind::ValueValidation);

        let command =
            parse(&["transfer-status", "0xff", "--cluster", "c"]).expect("transfer-status");
        let Command::TransferStatus(args) = command else {
            panic!("{command:?}");
        };
        assert_eq!(args.id, 255);

        assert!(matches!(
            parse(&["status", "--cluster", "c", "--json"]),
            Ok(Command::Status(ClientArgs { json: true, .. }))
        ));
        assert!(matches!(
            parse(&["audit", "--cluster", "c"]),
            Ok(Command::Audit(ClientArgs { json: false, .. }))
        ));
    }

    #[test]
    fn help_is_available_everywhere_and_transfer_documents_its_exit_codes() {
        for args in [
            &["--help"][..],
            &["transfer", "--help"],
            &["cluster", "up", "--help"],
            &["account", "create", "--help"],
        ] {
            assert_eq!(parse_error(args).kind(), ErrorKind::DisplayHelp, "{args:?}");
        }
        let help = parse_error(&["transfer", "--help"]).to_string();
        for line in [
            "0  committed",
            "3  aborted",
            "4  outcome unknown",
            "1  error",
        ] {
            assert!(
                help.contains(line),
                "transfer --help lacks {line:?}:\n{help}"
            );
        }
    }

    #[test]
    fn transfer_status_help_tells_unknown_from_an_unknown_outcome() {
        let help = one_line(&parse_error(&["transfer-status", "--help"]).to_string());
        for phrase in [
            "unknown no node has seen this id yet",
            "This is not exit 4",
            "Only resending the same transfer",
            "0 when the cluster answered (whatever the state)",
        ] {
            assert!(
                help.contains(phrase),
                "transfer-status --help lacks {phrase:?}:\n{help}"
            );
        }
    }

    #[test]
    fn deposit_and_withdraw_help_say_how_to_resolve_an_unknown_outcome() {
        for command in ["deposit", "withdraw"] {
            let help = parse_error(&[command, "--help"]).to_string();
            let flat = one_line(&help);
            for phrase in [
                "Applied at most once per id",
                "exit code 4",
                "--id ID",
                "tally history ACCOUNT",
                "answers a repeat with its first answer",
            ] {
                assert!(
                    flat.contains(phrase),
                    "{command} --help lacks {phrase:?}:\n{help}"
                );
            }
            assert!(!flat.contains("Not resent"), "{command} --help:\n{help}");
        }
    }

    #[test]
    fn transfer_ids_parse_in_decimal_and_hex() {
        assert_eq!(parse_transfer_id("1"), Ok(1));
        assert_eq!(parse_transfer_id("0x1f"), Ok(31));
        assert_eq!(parse_transfer_id("0XFF"), Ok(255));
        assert_eq!(parse_transfer_id(&u128::MAX.to_string()), Ok(u128::MAX));
        assert_eq!(
            parse_transfer_id(&format!("{:#x}", u128::MAX)),
            Ok(u128::MAX)
        );
        for bad in ["", "0x", "-1", "+1", "1e3", "0x1g", "12 ", " 12", "0b101"] {
            assert!(parse_transfer_id(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            parse_transfer_id("0").unwrap_err(),
            "id 0 is reserved; ids start at 1"
        );
        assert_eq!(
            parse_transfer_id("0x0").unwrap_err(),
            "id 0 is reserved; ids start at 1"
        );
        let too_big = format!("{}0", u128::MAX);
        assert_eq!(
            parse_transfer_id(&too_big).unwrap_err(),
            format!("{too_big} does not fit in 128 bits")
        );
    }

    #[test]
    fn amounts_and_flags_parse() {
        assert_eq!(parse_amount("1"), Ok(1));
        assert_eq!(parse_amount(&u64::MAX.to_string()), Ok(u64::MAX));
        assert_eq!(
            parse_amount("0").unwrap_err(),
            "an amount must be at least 1 minor unit"
        );
        for bad in ["", "-1", "+1", "1.5", "1e3", "18446744073709551616", "ten"] {
            let error = parse_amount(bad).expect_err(bad);
            assert!(error.contains("is not an amount"), "{error}");
        }
        assert_eq!(parse_flags("0x80000000"), Ok(1 << 31));
        assert!(parse_flags("0x100000000").is_err());
    }

    fn node_audit(node_id: NodeId, balances: u128, deposits: u128, withdrawals: u128) -> NodeAudit {
        NodeAudit {
            node_id,
            balances_sum: balances,
            deposits_sum: deposits,
            withdrawals_sum: withdrawals,
            account_count: 2,
            negative_balance_count: 0,
            in_doubt_count: 0,
        }
    }

    #[test]
    fn audit_checks_conservation_across_nodes() {
        let config = ClusterConfig::local(2, 7101);
        // Money moved between nodes: each node alone looks unbalanced, the cluster does not.
        let report = AuditReport {
            nodes: vec![node_audit(1, 50, 100, 0), node_audit(2, 70, 30, 10)],
        };
        let check = check_audit(&report, &config);
        assert!(check.violations.is_empty(), "{:?}", check.violations);
        let totals = check.totals.expect("no overflow");
        assert_eq!(
            (
                totals.balances_sum,
                totals.deposits_sum,
                totals.withdrawals_sum
            ),
            (120, 130, 10)
        );
        assert_eq!(totals.account_count, 4);

        let mut report = AuditReport {
            nodes: vec![node_audit(1, 50, 100, 0)],
        };
        report.nodes[0].negative_balance_count = 1;
        report.nodes[0].in_doubt_count = 2;
        let check = check_audit(&report, &config);
        assert_eq!(
            check.violations,
            vec![
                "node 2 missing from the report",
                "balances 50 != deposits 100 - withdrawals 0",
                "1 negative balance(s)",
                "2 transaction(s) in doubt",
            ]
        );

        // More withdrawn than deposited cannot balance, and must not wrap around.
        let report = AuditReport {
            nodes: vec![node_audit(1, 0, 0, 5), node_audit(2, 0, 0, 0)],
        };
        assert_eq!(
            check_audit(&report, &config).violations,
            vec!["balances 0 != deposits 0 - withdrawals 5"]
        );

        let report = AuditReport {
            nodes: vec![node_audit(1, u128::MAX, 0, 0), node_audit(2, 1, 0, 0)],
        };
        let check = check_audit(&report, &config);
        assert_eq!(check.totals, None);
        assert_eq!(check.violations, vec!["the totals overflow 128 bits"]);
    }

    #[test]
    fn json_writes_128_bit_numbers_as_strings() {
        let output = TransferOutput {
            id: u128::MAX,
            debit: 1,
            credit: 2,
            amount: 3,
            outcome: "aborted",
            reason: Some("insufficient_funds"),
        };
        assert_eq!(
            serde_json::to_string(&output).expect("json"),
            format!(
                r#"{{"id":"{}","debit":1,"credit":2,"amount":3,"outcome":"aborted","reason":"insufficient_funds"}}"#,
                u128::MAX
            )
        );
        let node = AuditNodeOutput::from(&node_audit(1, 5, 6, 1));
        assert_eq!(
            serde_json::to_string(&node).expect("json"),
            r#"{"node_id":1,"balances_sum":"5","deposits_sum":"6","withdrawals_sum":"1","account_count":2,"negative_balance_count":0,"in_doubt_count":0}"#
        );
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["1".to_string(), "5".to_string()],
            vec!["total".to_string(), "12345".to_string()],
        ];
        assert_eq!(
            render_table(&["account", "balance"], &rows),
            "account  balance\n1              5\ntotal      12345"
        );
        let rows = vec![
            vec!["1".to_string(), "up".to_string(), "7".to_string()],
            vec!["22".to_string(), "down".to_string(), "-".to_string()],
        ];
        assert_eq!(
            render_table(&["node", "state", "lsn"], &rows),
            "node  state  lsn\n   1  up       7\n  22  down     -"
        );
    }

    #[test]
    fn uptimes_are_short() {
        assert_eq!(format_uptime(42), "42s");
        assert_eq!(format_uptime(5 * 60 + 3), "5m03s");
        assert_eq!(format_uptime(2 * 3600 + 5 * 60 + 9), "2h05m");
        assert_eq!(format_uptime(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn errors_fit_on_one_line() {
        assert_eq!(one_line("a\n  b\tc "), "a b c");
    }
}
