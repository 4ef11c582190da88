//! `tally account create`, `deposit`, `withdraw`, `balance` and `history`: accounts and the
//! money that enters and leaves them.

use clap::{Args, Subcommand};
use net::{AccountId, HISTORY_PAGE_MAX_ENTRIES, HistoryKind, TransferId};
use serde::Serialize;

use super::output::{decimal, human, print_output, render_table};
use super::parse::{parse_amount, parse_flags, parse_transfer_id};
use super::{ClientArgs, Exit, Failure};
use client::client::TallyClient;

#[derive(Debug, Subcommand)]
pub(super) enum AccountCommand {
    /// Create an account; creating it again with the same owner and flags succeeds again.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub(super) struct CreateArgs {
    /// The new account's id.
    #[arg(value_name = "ID")]
    pub(super) account: AccountId,
    /// The owner's name (at most 64 bytes of UTF-8).
    #[arg(long, value_name = "NAME")]
    pub(super) owner: Option<String>,
    /// Account flags, in decimal or 0x-hex.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = parse_flags)]
    pub(super) flags: u32,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct MoneyArgs {
    /// The account.
    #[arg(value_name = "ID")]
    pub(super) account: AccountId,
    /// In minor units (e.g. cents), at least 1.
    #[arg(value_parser = parse_amount)]
    pub(super) amount: u64,
    /// Idempotency id, in decimal or 0x-hex; generated when absent. The account's node applies
    /// an id at most once and answers a repeat with its first answer; the same id with another
    /// account, amount or direction (or an id it knows as a transfer) is refused.
    #[arg(long, value_name = "X", value_parser = parse_transfer_id)]
    pub(super) id: Option<TransferId>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct BalanceArgs {
    /// The accounts; several are read at one consistent cut.
    #[arg(value_name = "ID", required = true)]
    pub(super) accounts: Vec<AccountId>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct HistoryArgs {
    /// The account.
    #[arg(value_name = "ID")]
    pub(super) account: AccountId,
    /// Entries per page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=i64::from(HISTORY_PAGE_MAX_ENTRIES)))]
    pub(super) limit: u32,
    /// Where the page starts: 0 for the newest entries, else the cursor printed with the
    /// previous page.
    #[arg(long, default_value_t = 0, value_name = "C")]
    pub(super) cursor: u64,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

pub(super) async fn create_account(client: TallyClient, args: CreateArgs) -> Result<Exit, Failure> {
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
pub(super) enum Direction {
    Deposit,
    Withdraw,
}

pub(super) async fn move_money(
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

pub(super) async fn balance(client: TallyClient, args: BalanceArgs) -> Result<Exit, Failure> {
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

pub(super) async fn history(client: TallyClient, args: HistoryArgs) -> Result<Exit, Failure> {
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

fn history_kind_name(kind: HistoryKind) -> &'static str {
    match kind {
        HistoryKind::Deposit => "deposit",
        HistoryKind::Withdraw => "withdraw",
        HistoryKind::TransferDebit => "transfer_debit",
        HistoryKind::TransferCredit => "transfer_credit",
    }
}
