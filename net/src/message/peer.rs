//! The node-to-node family: 2PC batches (prepare, votes, decisions, acknowledgements), decision
//! inquiries after a restart, and heartbeats. One frame carries a whole batch of transactions.

use super::client::{BALANCES_PER_REQUEST_MAX, Balance, NodeAudit};
use super::common::{AccountId, Lsn, NodeId, TransferId, TransferOutcome, Vote};
use crate::wire::{wire_enum, wire_struct};

/// Most transactions in one batch frame (prepare, votes, decisions, acks, inquiries, answers).
pub const BATCH_ENTRIES_MAX: u32 = 4096;
/// Most account operations one transaction asks of one participant: the engine's limit, from
/// the shared model.
pub use model::TRANSACTION_OPERATIONS_MAX;

wire_enum! {
    pub enum OpKind: u8 {
        Debit = 1,
        Credit = 2,
    }
}

wire_struct! {
    /// One change a participant must prepare on one of its accounts.
    pub struct Op {
        pub account: AccountId,
        pub kind: OpKind,
        pub amount: u64,
        /// The transfer's other account (for the participant's history entry).
        pub counterparty: AccountId,
    }
}

wire_struct! {
    pub struct PrepareEntry {
        pub txid: TransferId,
        pub ops: Vec<Op> [TRANSACTION_OPERATIONS_MAX],
    }
}

wire_struct! {
    /// Asks a participant to prepare each transaction; answered by `Votes` in the same order.
    /// Parties of two-phase commit are shards: `coordinator` is the coordinating shard (the debit
    /// account's), `shard` the participant shard asked, whose leader answers (any other replica
    /// answers `NotLeader`).
    pub struct PrepareBatch {
        pub coordinator: NodeId,
        pub shard: u32,
        pub entries: Vec<PrepareEntry> [BATCH_ENTRIES_MAX],
    }
}

wire_struct! {
    pub struct VoteEntry {
        pub txid: TransferId,
        pub vote: Vote,
    }
}

wire_struct! {
    /// The votes, and the participant's clock read once it held the batch's locks (microseconds,
    /// hybrid logical): the coordinator commits the batch at a later timestamp.
    pub struct Votes {
        pub votes: Vec<VoteEntry> [BATCH_ENTRIES_MAX],
        pub clock: u64,
    }
}

wire_struct! {
    /// A decision; a commit carries the timestamp every participant applies it at (0 with an
    /// abort).
    pub struct DecisionEntry {
        pub txid: TransferId,
        pub outcome: TransferOutcome,
        pub commit_ts: u64,
    }
}

wire_struct! {
    /// The coordinator's decisions; answered by `Acks` once each is applied (or discarded).
    /// `coordinator` is the deciding shard, `shard` the participant shard told.
    pub struct DecisionBatch {
        pub coordinator: NodeId,
        pub shard: u32,
        pub decisions: Vec<DecisionEntry> [BATCH_ENTRIES_MAX],
    }
}

wire_struct! {
    pub struct Acks {
        pub txids: Vec<TransferId> [BATCH_ENTRIES_MAX],
    }
}

wire_struct! {
    /// A participant with in-doubt transactions asks their coordinator for the decisions.
    /// `participant` is the asking shard, `shard` the coordinating shard asked.
    pub struct DecisionInquiry {
        pub participant: NodeId,
        pub shard: u32,
        pub txids: Vec<TransferId> [BATCH_ENTRIES_MAX],
    }
}

wire_struct! {
    /// Presumed abort: a coordinator with no logged commit answers `Abort`.
    pub struct InquiryAnswer {
        pub decisions: Vec<DecisionEntry> [BATCH_ENTRIES_MAX],
    }
}

wire_struct! {
    /// Liveness and progress of the sender; answered by `HeartbeatReply` with the receiver's own.
    pub struct Heartbeat {
        pub node_id: NodeId,
        pub last_lsn: Lsn,
        pub in_doubt_count: u64,
        pub uptime_seconds: u64,
    }
}

wire_struct! {
    pub struct HeartbeatReply {
        pub node_id: NodeId,
        pub last_lsn: Lsn,
        pub in_doubt_count: u64,
        pub uptime_seconds: u64,
    }
}

wire_struct! {
    /// One shard's part of a consistent read across shards, answered by its leader without
    /// taking locks. The leader first waits (at most 1 s) until every change that held a lock
    /// on `accounts` (on any account when `whole_shard`) when the request arrived is applied.
    /// With `at` 0 (the first round) it then answers only its clock, which is at least the
    /// timestamp of every change it applied. With `at` set (the second round, at the latest
    /// clock of the first) it first pushes its clock past `at`, waits likewise, and answers
    /// the balances of `accounts` at `at` (and its audit at `at` when `whole_shard`): every
    /// change stamped at or before `at`, none after.
    pub struct SnapshotRead {
        pub snapshot_id: TransferId,
        pub shard: u32,
        pub accounts: Vec<AccountId> [BALANCES_PER_REQUEST_MAX],
        pub whole_shard: bool,
        pub at: u64,
    }
}

wire_struct! {
    /// The balances at `at` (request order; none in the first round), the shard's audit at `at`
    /// when `whole_shard` was asked, and the leader's clock.
    pub struct SnapshotPart {
        pub balances: Vec<Balance> [BALANCES_PER_REQUEST_MAX],
        pub audit: Option<NodeAudit>,
        pub clock: u64,
    }
}
