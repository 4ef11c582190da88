//! The cluster outside the measured window: waiting for every node, creating and funding the
//! accounts, reading every balance.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use client::{ClientError, TallyClient};
use net::AccountId;

/// Accounts created and funded at once during set-up.
const SETUP_CONCURRENCY: usize = 256;

/// How long the end-of-run checks wait for the cluster to settle.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until every node answers and every shard has a leader (a cluster just started may
/// still be electing them; a set-up started then would be refused `NotLeader`).
pub(crate) async fn wait_until_up(client: &TallyClient) -> anyhow::Result<()> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let shards = client.config().shard_count;
    loop {
        let nodes = client.cluster_status().await?;
        let led = |shard: u32| {
            nodes.iter().any(|node| {
                node.groups
                    .iter()
                    .any(|group| group.shard == shard && group.role == net::ReplicaRole::Leader)
            })
        };
        if nodes.iter().all(|node| node.up) && (0..shards).all(led) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster is not up (every node answering, every shard led) after {SETTLE_TIMEOUT:?}: {nodes:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates accounts 1..=count and tops each up to `balance`.
pub(crate) async fn set_up_accounts(
    client: &TallyClient,
    count: u64,
    balance: u64,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..SETUP_CONCURRENCY {
        let client = client.clone();
        let next = next.clone();
        tasks.spawn(async move {
            loop {
                let account = next.fetch_add(1, Ordering::Relaxed);
                if account > count {
                    return Ok::<(), ClientError>(());
                }
                // An election may still run on a cluster just started (a leader hands its group
                // to the preferred one): a step refused without effect is taken again.
                let deadline = Instant::now() + SETTLE_TIMEOUT;
                loop {
                    match fund(&client, account, balance).await {
                        Err(error) if error.is_retryable() && Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => break other?,
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined
            .context("set-up task panicked")?
            .context("set-up failed")?;
    }
    Ok(())
}

/// Creates `account` if it does not exist and tops it up to `balance`. Safe to take again after
/// a retryable error: creation is idempotent, and the top-up reads the balance first.
async fn fund(client: &TallyClient, account: AccountId, balance: u64) -> Result<(), ClientError> {
    client.create_account(account, None, 0).await?;
    let current = client.balance(account).await?;
    if current < balance {
        client
            .deposit(TallyClient::new_transfer_id(), account, balance - current)
            .await?;
    }
    Ok(())
}

/// Every account's balance (reads of up to 1,024 accounts each; call when nothing moves).
pub(crate) async fn read_all_balances(
    client: &TallyClient,
    count: u64,
) -> anyhow::Result<Vec<u64>> {
    let mut balances = Vec::with_capacity(count as usize);
    let ids: Vec<AccountId> = (1..=count).collect();
    for chunk in ids.chunks(net::BALANCES_PER_REQUEST_MAX as usize) {
        let read = client
            .balances(chunk)
            .await
            .context("reading every balance")?;
        balances.extend(read.iter().map(|balance| balance.balance));
    }
    Ok(balances)
}
