//! The client family: requests a client sends to any node, and their responses. Each response
//! kind is its request kind with bit 0x0080 set (see `MessageKind::response_kind`).

use super::common::{AccountId, Lsn, NodeId, TransferId, TransferOutcome, TransferState};
use crate::wire::{wire_enum, wire_struct};

/// Longest account owner name, in bytes of UTF-8; most entries in one page of history (a larger
/// requested `limit` is clamped to this). The engine's limits, from the shared model.
pub use model::{HISTORY_PAGE_MAX_ENTRIES, OWNER_NAME_MAX_BYTES};
/// Most accounts read by one consistent `GetBalances`.
pub const BALANCES_PER_REQUEST_MAX: u32 = 1024;
/// Most nodes described in one `AuditReport` or `ClusterStatus`.
pub const CLUSTER_NODES_MAX: u32 = 256;
/// Most replica groups one `NodeStatus` describes (the shards a node holds a replica of).
pub const NODE_GROUPS_MAX: u32 = 256;
/// Most replicas one `GroupStatus` describes (a shard's replica count; the cluster file's bound).
pub const GROUP_REPLICAS_MAX: u32 = 7;

wire_struct! {
    /// Creates an account. Repeating it with the same content is answered as a success; with a
    /// different owner or flags, by `DuplicateWithDifferentContent`.
    pub struct CreateAccount {
        pub account: AccountId,
        pub flags: u32,
        pub owner: Option<String> [OWNER_NAME_MAX_BYTES],
    }
}

wire_struct! {
    pub struct AccountCreated {
        pub account: AccountId,
        pub created_at_unix_ms: u64,
    }
}

wire_struct! {
    /// Adds money from outside the system. `id` is an idempotency key like a transfer id.
    pub struct Deposit {
        pub id: TransferId,
        pub account: AccountId,
        pub amount: u64,
    }
}

wire_struct! {
    pub struct Deposited {
        pub id: TransferId,
        pub balance_after: u64,
        pub lsn: Lsn,
    }
}

wire_struct! {
    /// Takes money out of the system. `id` is an idempotency key like a transfer id.
    pub struct Withdraw {
        pub id: TransferId,
        pub account: AccountId,
        pub amount: u64,
    }
}

wire_struct! {
    pub struct Withdrawn {
        pub id: TransferId,
        pub balance_after: u64,
        pub lsn: Lsn,
    }
}

wire_struct! {
    /// Reads one committed balance.
    pub struct GetBalance {
        pub account: AccountId,
    }
}

wire_struct! {
    pub struct Balance {
        pub account: AccountId,
        pub balance: u64,
    }
}

wire_struct! {
    /// Reads many balances at one consistent cut, possibly across shards.
    pub struct GetBalances {
        pub accounts: Vec<AccountId> [BALANCES_PER_REQUEST_MAX],
    }
}

wire_struct! {
    /// One balance per requested account, in request order.
    pub struct Balances {
        pub balances: Vec<Balance> [BALANCES_PER_REQUEST_MAX],
    }
}

wire_struct! {
    /// A page of an account's history, newest first. `cursor` 0 asks for the newest entries;
    /// otherwise it is a `next_cursor` from a previous page.
    pub struct GetHistory {
        pub account: AccountId,
        pub limit: u32,
        pub cursor: u64,
    }
}

wire_enum! {
    pub enum HistoryKind: u8 {
        Deposit = 1,
        Withdraw = 2,
        TransferDebit = 3,
        TransferCredit = 4,
    }
}

wire_struct! {
    pub struct HistoryEntry {
        /// The LSN of the record that made this change.
        pub sequence: u64,
        pub kind: HistoryKind,
        pub amount: u64,
        /// The other account of a transfer; 0 for deposits and withdrawals.
        pub counterparty_account: AccountId,
        /// The transfer, deposit or withdrawal id.
        pub transfer_id: TransferId,
        pub balance_after: u64,
    }
}

wire_struct! {
    pub struct History {
        pub account: AccountId,
        pub entries: Vec<HistoryEntry> [HISTORY_PAGE_MAX_ENTRIES],
        /// Pass back to get the next (older) page; 0 when there is none.
        pub next_cursor: u64,
    }
}

wire_struct! {
    /// Moves `amount` from `debit` to `credit`. Sent to the node owning `debit`; `id` is the
    /// idempotency key: a retry returns the recorded outcome.
    pub struct Transfer {
        pub id: TransferId,
        pub debit: AccountId,
        pub credit: AccountId,
        pub amount: u64,
    }
}

wire_struct! {
    pub struct TransferResult {
        pub id: TransferId,
        pub outcome: TransferOutcome,
    }
}

wire_struct! {
    pub struct GetTransferStatus {
        pub id: TransferId,
    }
}

wire_struct! {
    pub struct TransferStatus {
        pub id: TransferId,
        pub state: TransferState,
    }
}

wire_struct! {
    /// Asks for a consistent cut of the whole cluster's totals.
    pub struct Audit {}
}

wire_struct! {
    /// One node's totals at the audit cut. Sums are `u128` so they cannot overflow.
    pub struct NodeAudit {
        pub node_id: NodeId,
        pub shard: u32,
        pub balances_sum: u128,
        pub deposits_sum: u128,
        pub withdrawals_sum: u128,
        pub account_count: u64,
        pub negative_balance_count: u64,
        pub in_doubt_count: u64,
    }
}

wire_struct! {
    pub struct AuditReport {
        pub nodes: Vec<NodeAudit> [CLUSTER_NODES_MAX],
    }
}

wire_struct! {
    pub struct GetClusterStatus {}
}

wire_enum! {
    /// What a replica is in its group's Raft.
    pub enum ReplicaRole: u8 {
        Follower = 1,
        /// Standing for election (pre-vote or vote).
        Candidate = 2,
        Leader = 3,
        /// Stopped by a failure of the node's storage: it takes no part until the node restarts.
        Failed = 4,
    }
}

wire_enum! {
    /// How a replica keeps up, as its group's leader sees it.
    pub enum ReplicaHealth: u8 {
        /// It holds the leader's whole log.
        Current = 1,
        /// It answered within the last election timeout but lacks some entries.
        Lagging = 2,
        /// It has not answered within the last election timeout.
        Down = 3,
        /// Not known: the replica answering is not the leader.
        Unknown = 4,
    }
}

wire_struct! {
    /// One replica of a group, as the replica answering knows it.
    pub struct ReplicaProgress {
        pub node_id: NodeId,
        pub health: ReplicaHealth,
        /// The highest log index known to be on that replica (0 when not known).
        pub matched_index: u64,
    }
}

wire_struct! {
    /// A node's replica of one shard's group.
    pub struct GroupStatus {
        pub shard: u32,
        pub role: ReplicaRole,
        /// The leader this replica knows of (itself when it leads); 0 when it knows none.
        pub leader: NodeId,
        pub term: u64,
        pub last_index: u64,
        pub commit_index: u64,
        pub applied_index: u64,
        /// Transactions this shard holds prepared without a decision (known to its leader only;
        /// 0 on a follower).
        pub in_doubt_count: u64,
        /// Every replica of the group, this one included.
        pub replicas: Vec<ReplicaProgress> [GROUP_REPLICAS_MAX],
    }
}

wire_struct! {
    pub struct NodeStatus {
        pub node_id: NodeId,
        pub up: bool,
        pub last_lsn: Lsn,
        pub in_doubt_count: u64,
        pub uptime_seconds: u64,
        pub groups: Vec<GroupStatus> [NODE_GROUPS_MAX],
    }
}

wire_struct! {
    pub struct ClusterStatus {
        pub nodes: Vec<NodeStatus> [CLUSTER_NODES_MAX],
    }
}
