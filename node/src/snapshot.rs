//! Consistent reads across shards without locks: a multi-account read or the audit, read at one
//! timestamp on every shard it touches (`engine::clock` has the protocol and why it is a
//! consistent cut).
//!
//! Two rounds of `SnapshotRead`, to every shard's leader at once. The first waits until the
//! changes holding the read's accounts when it arrived are applied, and answers the leader's
//! clock: by then at least the timestamp of every change it applied, so reading at the latest of
//! those clocks sees every transfer that finished before the read began (the read is
//! linearizable, not only consistent). The second reads at that timestamp. Neither takes a lock:
//! transfers meeting a read go on as if it were not there.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::model::AccountId;
use engine::{ReadFence, ShardAudit};
use net::{Balance, ErrorCode, ErrorResponse, Message, NodeAudit, SnapshotPart, SnapshotRead};

use crate::engine_calls::{NodeEngine, blocking, engine_error};
use crate::node::{Node, peer_error};

/// How long a read waits for the changes that held its accounts when it arrived. Well below the
/// peer timeout, so that a shard that cannot settle (a coordinator of its prepared transactions
/// is down) says so before its caller gives up on it.
const READ_WAIT: Duration = Duration::from_secs(1);
/// Attempts of a consistent read whose timestamp a shard no longer keeps (its leader changed
/// between the two rounds) before it gives up.
const SNAPSHOT_ATTEMPTS_MAX: u32 = 4;

/// Waits until every change that held one of `accounts` (`None`: any account) when `fence` was
/// taken is applied, at most `READ_WAIT`.
pub(crate) async fn wait_for_fence(
    engine: &NodeEngine,
    fence: &ReadFence,
    accounts: Option<&[AccountId]>,
    shard: u32,
) -> Result<(), ErrorResponse> {
    let deadline = Instant::now() + READ_WAIT;
    let mut pause = Duration::from_micros(200);
    while !engine.fence_settled(fence, accounts) {
        if Instant::now() >= deadline {
            return Err(ErrorResponse::new(
                ErrorCode::Timeout,
                format!(
                    "shard {shard}: changes locked before the read are still undecided after {} ms \
                     (a coordinator may be down); no consistent read",
                    READ_WAIT.as_millis()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
    Ok(())
}

/// One shard's part of a read (see `SnapshotRead` in docs/protocol.md), on its leader.
pub(crate) async fn read_shard(
    node: &Node,
    request: SnapshotRead,
) -> Result<Message, ErrorResponse> {
    let shard = request.shard;
    let serving = node.serving_current(shard).await?;
    for account in &request.accounts {
        if node.config.shard_of(*account) != shard {
            return Err(ErrorResponse::new(
                ErrorCode::InvalidArgument,
                format!("account {account} is not in shard {shard}"),
            ));
        }
    }
    let engine = serving.engine.clone();
    let at = (request.at != 0).then_some(request.at);
    let fence = engine.read_fence(at);
    let accounts = (!request.whole_shard).then_some(request.accounts.as_slice());
    wait_for_fence(&engine, &fence, accounts, shard).await?;
    let Some(at) = at else {
        return Ok(SnapshotPart {
            balances: Vec::new(),
            audit: None,
            clock: engine.clock_now(),
        }
        .into());
    };
    let reader = engine.clone();
    let accounts = request.accounts.clone();
    let balances = blocking(move || reader.balances_at(&accounts, at))
        .await
        .map_err(engine_error)?;
    let audit = if request.whole_shard {
        let reader = engine.clone();
        let audit = blocking(move || reader.audit_at(at))
            .await
            .map_err(engine_error)?;
        Some(node_audit(node.id, shard, &audit))
    } else {
        None
    };
    Ok(SnapshotPart {
        balances: request
            .accounts
            .iter()
            .zip(balances)
            .map(|(account, balance)| Balance {
                account: *account,
                balance,
            })
            .collect(),
        audit,
        clock: engine.clock_now(),
    }
    .into())
}

/// One consistent read over several shards (every shard when `whole_cluster`: the audit).
pub(crate) async fn take(
    node: &Arc<Node>,
    accounts: &[AccountId],
    whole_cluster: bool,
) -> Result<Vec<SnapshotPart>, ErrorResponse> {
    let mut per_shard: BTreeMap<u32, Vec<AccountId>> = BTreeMap::new();
    if whole_cluster {
        for shard in 0..node.config.shard_count {
            per_shard.insert(shard, Vec::new());
        }
    }
    for account in accounts {
        per_shard
            .entry(node.config.shard_of(*account))
            .or_default()
            .push(*account);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
        let snapshot_id: u128 = rand::random();
        let first = round(node, &per_shard, snapshot_id, whole_cluster, 0).await?;
        let at = first
            .values()
            .map(|part| part.clock)
            .max()
            .expect("a read touches at least one shard");
        match round(node, &per_shard, snapshot_id, whole_cluster, at).await {
            Ok(parts) => return Ok(parts.into_values().collect()),
            // A shard whose leader changed between the rounds keeps only later timestamps.
            Err(error)
                if error.code == ErrorCode::Timeout
                    && error.message.contains("older than this shard keeps")
                    && attempt < SNAPSHOT_ATTEMPTS_MAX => {}
            Err(error) => return Err(error),
        }
    }
}

/// One round of `SnapshotRead` to every shard at once.
async fn round(
    node: &Arc<Node>,
    per_shard: &BTreeMap<u32, Vec<AccountId>>,
    snapshot_id: u128,
    whole_shard: bool,
    at: u64,
) -> Result<BTreeMap<u32, SnapshotPart>, ErrorResponse> {
    let mut calls = tokio::task::JoinSet::new();
    for (shard, accounts) in per_shard {
        let request = SnapshotRead {
            snapshot_id,
            shard: *shard,
            accounts: accounts.clone(),
            whole_shard,
            at,
        };
        let shard = *shard;
        let node = node.clone();
        calls.spawn(async move { (shard, read_part(&node, request).await) });
    }
    let mut parts = BTreeMap::new();
    let mut failure = None;
    while let Some(joined) = calls.join_next().await {
        let (shard, answer) = joined.expect("snapshot call panicked");
        match answer {
            Ok(part) => {
                parts.insert(shard, part);
            }
            Err(error) => failure = Some(error),
        }
    }
    match failure {
        None => Ok(parts),
        Some(error) => Err(error),
    }
}

/// One shard's part of a read: in place when this node serves it, else from its leader.
async fn read_part(node: &Arc<Node>, request: SnapshotRead) -> Result<SnapshotPart, ErrorResponse> {
    let shard = request.shard;
    let local = node
        .shards
        .get(&shard)
        .is_some_and(|server| server.serving().is_some());
    let answer = if local {
        read_shard(node, request).await?
    } else {
        // Idempotent: a read changes nothing.
        node.router
            .call(shard, request, true)
            .await
            .map_err(|error| peer_error(&error))?
    };
    match answer {
        Message::SnapshotPart(part) => Ok(part),
        Message::ErrorResponse(error) => Err(error),
        other => Err(ErrorResponse::new(
            ErrorCode::Internal,
            format!(
                "shard {shard} answered a snapshot read with {:?}",
                other.kind()
            ),
        )),
    }
}

fn node_audit(node: u32, shard: u32, audit: &ShardAudit) -> NodeAudit {
    NodeAudit {
        node_id: node,
        shard,
        balances_sum: audit.balance_sum,
        deposits_sum: audit.totals.deposited,
        withdrawals_sum: audit.totals.withdrawn,
        account_count: audit.accounts,
        negative_balance_count: audit.negative_balance_count,
        in_doubt_count: audit.in_doubt,
    }
}
