//! `tally transfer` and `tally transfer-status`: moving money between accounts, and asking what
//! became of a transfer.

use clap::Args;
use net::{AbortReason, AccountId, TransferId, TransferOutcome, TransferState};
use serde::Serialize;

use super::output::{decimal, human, print_output};
use super::parse::{parse_amount, parse_transfer_id};
use super::{ClientArgs, Exit, Failure};
use client::client::TallyClient;

pub(super) const TRANSFER_HELP: &str = "\
Exit codes:
  0  committed
  1  error: the transfer was not applied (cluster unreachable, invalid request, ...)
  2  usage error
  3  aborted: a valid answer (insufficient funds, unknown account, ...), printed with its reason
  4  outcome unknown: no answer came. Check with `tally transfer-status ID`, or run the same
     command again with `--id ID`: a transfer id is applied at most once.

Without --id a random id is generated; it is printed with the result (and in any error) so that
the transfer can be checked or resent.";

pub(super) const TRANSFER_STATUS_HELP: &str = "\
States:
  committed    decided and applied: final
  aborted      decided, with its reason: final (to try again, use a new id)
  in progress  running now, or prepared and waiting for its decision: ask again shortly
               (`in_progress` in --json output)
  unknown      no node has seen this id yet: it was never sent, or is still on its way. This is
               not exit 4: the command itself succeeded. Only resending the same transfer (same id
               and content) settles a transfer whose outcome a client did not hear.

Exit codes: 0 when the cluster answered (whatever the state), 1 on an error, 2 usage error.";
#[derive(Debug, Args)]
pub(super) struct TransferArgs {
    /// The account debited.
    #[arg(long, value_name = "A")]
    pub(super) from: AccountId,
    /// The account credited.
    #[arg(long, value_name = "B")]
    pub(super) to: AccountId,
    /// In minor units (e.g. cents), at least 1.
    #[arg(long, value_name = "N", value_parser = parse_amount)]
    pub(super) amount: u64,
    /// Transfer id, in decimal or 0x-hex; generated when absent.
    #[arg(long, value_name = "X", value_parser = parse_transfer_id)]
    pub(super) id: Option<TransferId>,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

#[derive(Debug, Args)]
pub(super) struct TransferStatusArgs {
    /// The transfer id, in decimal or 0x-hex.
    #[arg(value_name = "X", value_parser = parse_transfer_id)]
    pub(super) id: TransferId,
    #[command(flatten)]
    pub(super) client: ClientArgs,
}

pub(super) async fn transfer(client: TallyClient, args: TransferArgs) -> Result<Exit, Failure> {
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

pub(super) async fn transfer_status(
    client: TallyClient,
    args: TransferStatusArgs,
) -> Result<Exit, Failure> {
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
        AbortReason::FundsHeld => "funds_held",
        AbortReason::InvalidRequest => "invalid_request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
