//! Consistent cuts across shards: a multi-account read (shared locks on the accounts of each
//! shard, taken by its leader) or an audit (each leader refuses new prepares until its prepared
//! transactions are decided, then reads its totals). `SnapshotLock` on every shard of the cut,
//! then `SnapshotRelease` on each, whatever happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::model::AccountId;
use engine::{ReadLocks, ShardAudit};
use net::{
    Balance, ErrorCode, ErrorResponse, Message, NodeAudit, SnapshotLock, SnapshotLocked,
    SnapshotRelease,
};

use crate::engine_calls::{NodeEngine, blocking, engine_error, lock};
use crate::node::{Node, peer_error};
use crate::shard::ShardServer;

/// How long a multi-account read waits for the shared locks of one shard's accounts.
pub(crate) const READ_LOCK_WAIT: Duration = Duration::from_millis(50);
/// How long an audit waits for a shard's prepared transactions to be decided. Well below the
/// peer timeout, so that a shard that cannot drain says so before its caller gives up on it.
const AUDIT_DRAIN_WAIT: Duration = Duration::from_secs(1);
/// A snapshot's state is dropped after this long even if its release never comes.
const SNAPSHOT_LEASE: Duration = Duration::from_secs(5);
/// Attempts of a consistent read that meets lock conflicts before it gives up.
const SNAPSHOT_ATTEMPTS_MAX: u32 = 8;

/// What a shard holds for one snapshot until it is released.
enum SnapshotHold {
    /// Shared locks.
    Locks(ReadLocks),
    /// Prepares are closed.
    Gate,
}

/// A snapshot's hold, the engine holding it, and the task that ends it when its lease runs out.
pub(crate) struct Held {
    hold: SnapshotHold,
    engine: Arc<NodeEngine>,
    lease: Option<tokio::task::AbortHandle>,
}

impl Held {
    fn release(self) {
        if let Some(lease) = self.lease {
            lease.abort();
        }
        match self.hold {
            SnapshotHold::Locks(owner) => self.engine.release_locks(owner),
            SnapshotHold::Gate => self.engine.open_prepares(),
        }
    }
}

/// One shard's part of a snapshot (see `SnapshotLock` in docs/protocol.md), on its leader.
pub(crate) async fn lock_shard(
    node: &Node,
    server: &ShardServer,
    request: SnapshotLock,
) -> Result<Message, ErrorResponse> {
    let shard = server.shard;
    let serving = node.serving_current(shard).await?;
    for account in &request.accounts {
        if node.config.shard_of(*account) != shard {
            return Err(ErrorResponse::new(
                ErrorCode::InvalidArgument,
                format!("account {account} is not in shard {shard}"),
            ));
        }
    }
    let lease = Duration::from_millis(u64::from(request.lease_ms)).min(SNAPSHOT_LEASE);
    let id = request.snapshot_id;
    let engine = serving.engine.clone();
    let (hold, balances, audit) = if request.whole_shard {
        engine.close_prepares();
        lock(&server.snapshots).insert(
            id,
            Held {
                hold: SnapshotHold::Gate,
                engine: engine.clone(),
                lease: None,
            },
        );
        let deadline = Instant::now() + AUDIT_DRAIN_WAIT.min(lease);
        while engine.undecided_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let undecided = engine.undecided_count();
        if undecided > 0 {
            release_shard(server, id);
            return Err(ErrorResponse::new(
                ErrorCode::Timeout,
                format!(
                    "shard {shard}: {undecided} prepared transactions still undecided after {} ms (a coordinator may be down); no consistent cut",
                    AUDIT_DRAIN_WAIT.as_millis()
                ),
            ));
        }
        let audited = engine.clone();
        let audit = match blocking(move || audited.audit()).await {
            Ok(audit) => audit,
            Err(error) => {
                release_shard(server, id);
                return Err(engine_error(error));
            }
        };
        (
            SnapshotHold::Gate,
            Vec::new(),
            Some(node_audit(node.id, shard, &audit)),
        )
    } else {
        let accounts = request.accounts.clone();
        let reader = engine.clone();
        let (owner, balances) = blocking(move || reader.lock_and_read(&accounts, READ_LOCK_WAIT))
            .await
            .map_err(engine_error)?;
        let balances = request
            .accounts
            .iter()
            .zip(balances)
            .map(|(account, balance)| Balance {
                account: *account,
                balance,
            })
            .collect();
        (SnapshotHold::Locks(owner), balances, None)
    };
    let snapshots = server.snapshots.clone();
    let expiry = tokio::spawn(async move {
        tokio::time::sleep(lease).await;
        let held = lock(&snapshots).remove(&id);
        if let Some(held) = held {
            tracing::warn!(snapshot = id, "snapshot lease expired before its release");
            held.release();
        }
    });
    {
        let mut snapshots = lock(&server.snapshots);
        let gate_released = matches!(hold, SnapshotHold::Gate) && !snapshots.contains_key(&id);
        if gate_released {
            // Released while draining: nothing is held any more.
            expiry.abort();
        } else {
            snapshots.insert(
                id,
                Held {
                    hold,
                    engine,
                    lease: Some(expiry.abort_handle()),
                },
            );
        }
    }
    Ok(SnapshotLocked { balances, audit }.into())
}

/// Ends a snapshot's hold on a shard (unknown or expired ids are fine).
pub(crate) fn release_shard(server: &ShardServer, id: u128) {
    let held = lock(&server.snapshots).remove(&id);
    if let Some(held) = held {
        held.release();
    }
}

/// One consistent cut over several shards. It runs as a task of its own: a request dropped
/// halfway (its client closed the connection) still releases what it locked as soon as it can,
/// instead of leaving the locks to their lease while every transfer touching those accounts
/// aborts.
pub(crate) async fn take(
    node: &Arc<Node>,
    accounts: &[AccountId],
    whole_cluster: bool,
) -> Result<Vec<SnapshotLocked>, ErrorResponse> {
    let node = node.clone();
    let accounts = accounts.to_vec();
    let cut = tokio::spawn(async move { take_cut(&node, &accounts, whole_cluster).await });
    match cut.await {
        Ok(result) => result,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

async fn take_cut(
    node: &Arc<Node>,
    accounts: &[AccountId],
    whole_cluster: bool,
) -> Result<Vec<SnapshotLocked>, ErrorResponse> {
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
        let mut calls = tokio::task::JoinSet::new();
        for (shard, accounts) in &per_shard {
            let request = SnapshotLock {
                snapshot_id,
                shard: *shard,
                accounts: accounts.clone(),
                whole_shard: whole_cluster,
                lease_ms: SNAPSHOT_LEASE.as_millis() as u32,
            };
            let shard = *shard;
            let node = node.clone();
            calls.spawn(async move { (shard, lock_part(&node, request).await) });
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
        let mut releases = tokio::task::JoinSet::new();
        for shard in per_shard.keys() {
            releases.spawn(release_part(node.clone(), *shard, snapshot_id));
        }
        while releases.join_next().await.is_some() {}
        match failure {
            None => return Ok(parts.into_values().collect()),
            Some(error)
                if error.code == ErrorCode::LockConflict && attempt < SNAPSHOT_ATTEMPTS_MAX =>
            {
                let backoff = rand::random_range(1..=(1u64 << attempt.min(6)));
                tokio::time::sleep(Duration::from_millis(backoff)).await;
            }
            Some(error) => return Err(error),
        }
    }
}

/// One shard's part of a snapshot: in place when this node serves it, else from its leader.
async fn lock_part(
    node: &Arc<Node>,
    request: SnapshotLock,
) -> Result<SnapshotLocked, ErrorResponse> {
    let shard = request.shard;
    let local = node
        .shards
        .get(&shard)
        .filter(|server| server.serving().is_some());
    let answer = match local {
        Some(server) => lock_shard(node, server, request).await?,
        // Not idempotent: a lock taken twice is held until its lease.
        None => node
            .router
            .call(shard, request, false)
            .await
            .map_err(|error| peer_error(&error))?,
    };
    match answer {
        Message::SnapshotLocked(part) => Ok(part),
        Message::ErrorResponse(error) => Err(error),
        other => Err(ErrorResponse::new(
            ErrorCode::Internal,
            format!("shard {shard} answered a snapshot with {:?}", other.kind()),
        )),
    }
}

/// Releases one shard's part of a snapshot. A release that does not get through (the leader is
/// partitioned away or paused, and may hold the locks) is sent again in the background, with
/// backoff, until it does or the lease has ended it anyway.
async fn release_part(node: Arc<Node>, shard: u32, snapshot_id: u128) {
    if let Some(server) = node.shards.get(&shard) {
        release_shard(server, snapshot_id);
        if server.serving().is_some() {
            return;
        }
    }
    let release = SnapshotRelease { snapshot_id, shard };
    let lease_end = Instant::now() + SNAPSHOT_LEASE;
    let Err(error) = node.router.call(shard, release.clone(), true).await else {
        return;
    };
    tracing::info!(shard, %error, "snapshot release not delivered; sending it again");
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(50);
        while Instant::now() + pause < lease_end {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            if node.router.call(shard, release.clone(), true).await.is_ok() {
                return;
            }
        }
        tracing::warn!(shard, "snapshot release not delivered; its lease ends it");
    });
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
