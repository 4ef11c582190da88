//! The end-of-run checks, with every node up and nothing moving: unknown outcomes resolved, the
//! audit judged, every balance compared with what the acknowledged outcomes imply, and a sample
//! of statuses compared with what the clients heard.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use client::{AuditVerdict, ClientError, TallyClient};
use net::{AccountId, TransferId, TransferState};

use crate::local::LocalCluster;
use crate::setup::{SETTLE_TIMEOUT, read_all_balances, wait_until_up};
use crate::worker::{Ledger, Movement, maybe_applied};
use crate::{LoadgenArgs, lock};

/// Status look-ups of the sample in flight at once.
const STATUS_CHECKS_IN_FLIGHT: usize = 64;

/// The end-of-run checks.
#[derive(Debug, Default)]
pub struct Checks {
    /// The verdict on the cluster's audit; `None` if no node answered it (the error is in
    /// `problems`).
    pub audit: Option<AuditVerdict>,
    /// Unknown-outcome transfers, resolved by status afterwards.
    pub unknown_resolved_committed: u64,
    pub unknown_resolved_aborted: u64,
    /// Unknown-outcome deposits and withdrawals, resolved by resending them with their ids
    /// afterwards: applied (earlier, or by the resend), or refused.
    pub unknown_movements_resolved_applied: u64,
    pub unknown_movements_resolved_refused: u64,
    /// Accounts whose balance differs from what the acknowledged outcomes imply.
    pub balance_mismatches: u64,
    /// Sampled transfers whose status contradicts what the client heard.
    pub status_mismatches: u64,
    pub statuses_checked: u64,
    /// Transfers the nodes' `/metrics` count as answered committed (`tally_transfers_total`),
    /// summed over the nodes, when every node of the cluster file has an HTTP address that
    /// answered; reported beside the run's own count, not judged (a node restarted during the
    /// run starts counting again, and a transfer resent after a lost answer is answered twice).
    pub metrics_committed: Option<u64>,
    pub problems: Vec<String>,
}

impl Checks {
    pub fn passed(&self) -> bool {
        self.audit.as_ref().is_some_and(AuditVerdict::passed)
            && self.balance_mismatches == 0
            && self.status_mismatches == 0
            && self.statuses_checked > 0
            && self.problems.is_empty()
    }
}

/// The end-of-run checks, with every node up and nothing moving.
pub(crate) async fn check(
    client: &TallyClient,
    cluster: Option<&Arc<Mutex<LocalCluster>>>,
    args: &LoadgenArgs,
    initial: &[u64],
    mut ledger: Ledger,
) -> Checks {
    let mut checks = Checks::default();
    if let Some(cluster) = cluster {
        for (node, status) in lock(cluster).exited() {
            checks
                .problems
                .push(format!("node {node} exited on its own ({status})"));
        }
    }
    if let Err(error) = wait_until_up(client).await {
        checks.problems.push(format!("{error:#}"));
        return checks;
    }
    // Decisions and in-doubt transactions settle within a few resend rounds.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        match client.cluster_status().await {
            Ok(nodes) if nodes.iter().all(|node| node.in_doubt_count == 0) => break,
            _ if Instant::now() > deadline => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Unknown outcomes: ask, until decided (one deadline for all of them).
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    for (id, debit, credit, amount) in std::mem::take(&mut ledger.unknown_transfers) {
        match settled_status(client, id, deadline).await {
            Ok(TransferState::Committed) => {
                checks.unknown_resolved_committed += 1;
                *ledger.deltas.entry(debit).or_default() -= i128::from(amount);
                *ledger.deltas.entry(credit).or_default() += i128::from(amount);
            }
            Ok(TransferState::Aborted(_) | TransferState::Unknown) => {
                checks.unknown_resolved_aborted += 1
            }
            Ok(TransferState::InProgress) => checks.problems.push(format!(
                "transfer {id} still in progress after {SETTLE_TIMEOUT:?}"
            )),
            Err(error) => checks
                .problems
                .push(format!("status of transfer {id}: {error}")),
        }
    }
    // Unknown deposits and withdrawals: resent with their ids, which applies each at most once
    // and answers with its first outcome (or does it now, if it never arrived). Before the
    // audit and the balance reads, which must see a resend that applies.
    for movement in std::mem::take(&mut ledger.unknown_movements) {
        match resolve_movement(client, &movement, deadline).await {
            Ok(true) => {
                checks.unknown_movements_resolved_applied += 1;
                *ledger.deltas.entry(movement.account).or_default() += movement.change;
            }
            Ok(false) => checks.unknown_movements_resolved_refused += 1,
            Err(error) => checks.problems.push(format!(
                "deposit or withdrawal {} on account {} not resolved: {error}",
                movement.id, movement.account
            )),
        }
    }
    checks.metrics_committed = metrics_committed(client.config()).await;
    match client.audit().await {
        Ok(report) => checks.audit = Some(AuditVerdict::new(&report, client.config())),
        Err(error) => checks.problems.push(format!("audit: {error}")),
    }
    // Exactly once: every account holds what the acknowledged outcomes imply.
    match read_all_balances(client, args.accounts).await {
        Ok(now) => {
            for (index, balance) in now.iter().enumerate() {
                let account = index as AccountId + 1;
                let expected =
                    i128::from(initial[index]) + ledger.deltas.get(&account).copied().unwrap_or(0);
                if i128::from(*balance) != expected {
                    checks.balance_mismatches += 1;
                    if checks.balance_mismatches <= 5 {
                        checks.problems.push(format!(
                            "account {account}: balance {balance}, expected {expected}"
                        ));
                    }
                }
            }
        }
        Err(error) => checks.problems.push(format!("{error:#}")),
    }
    // Statuses agree with what clients heard: asked STATUS_CHECKS_IN_FLIGHT at a time, as a
    // sample of tens of thousands asked one by one takes longer than the run.
    let sampled = ledger
        .committed_sample
        .iter()
        .map(|id| (*id, true))
        .chain(ledger.aborted_sample.iter().map(|id| (*id, false)));
    let mut answers = futures_util::stream::iter(sampled)
        .map(|(id, committed)| async move {
            match client.transfer_status(id).await {
                Ok(TransferState::Committed) => committed,
                Ok(TransferState::Aborted(_)) => !committed,
                _ => false,
            }
        })
        .buffer_unordered(STATUS_CHECKS_IN_FLIGHT);
    while let Some(agrees) = answers.next().await {
        checks.statuses_checked += 1;
        if !agrees {
            checks.status_mismatches += 1;
        }
    }
    checks
}

/// Whether a deposit or withdrawal of unknown outcome is applied, learned by resending it with
/// its id until a node answers (or `deadline`): `true` applied, `false` refused (the refusal
/// the node recorded for the id, or its first refusal now).
async fn resolve_movement(
    client: &TallyClient,
    movement: &Movement,
    deadline: Instant,
) -> Result<bool, ClientError> {
    loop {
        match movement.send(client).await {
            Ok(()) => return Ok(true),
            // The refusals a node records for the id: its answer from now on.
            Err(ClientError::Remote {
                code:
                    net::ErrorCode::InsufficientFunds
                    | net::ErrorCode::UnknownAccount
                    | net::ErrorCode::Overflow,
                ..
            }) => return Ok(false),
            Err(error)
                if Instant::now() < deadline && (maybe_applied(&error) || error.is_retryable()) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(error) => return Err(error),
        }
    }
}

/// A transfer's status once it is decided (or known never to have arrived).
async fn settled_status(
    client: &TallyClient,
    id: TransferId,
    deadline: Instant,
) -> Result<TransferState, ClientError> {
    loop {
        match client.transfer_status(id).await {
            Ok(TransferState::InProgress) | Err(ClientError::StatusIncomplete { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            other => return other,
        }
    }
}

/// The committed transfers every node's `/metrics` counts, summed; `None` unless every node has
/// an HTTP address and answers.
async fn metrics_committed(config: &client::ClusterConfig) -> Option<u64> {
    let mut total = 0u64;
    for node in &config.nodes {
        let address = node.http.as_deref()?;
        let text = tokio::time::timeout(Duration::from_secs(5), scrape(address))
            .await
            .ok()??;
        total += text
            .lines()
            .filter(|line| {
                line.starts_with("tally_transfers_total{") && line.contains("outcome=\"committed\"")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum::<u64>();
    }
    Some(total)
}

/// One `GET /metrics` over HTTP/1.0: the body.
async fn scrape(address: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.take(16 << 20).read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200 OK")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.1 200 OK").then(|| body.to_owned()))
}
