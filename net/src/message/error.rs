//! The error family: one message that answers any request that failed, with a stable code.

use super::common::NodeId;
use crate::wire::{wire_enum, wire_struct};

/// Longest error message text, in bytes of UTF-8.
pub const ERROR_MESSAGE_SIZE_MAX_BYTES: u32 = 256;

wire_enum! {
    /// Every failure a request can meet. Codes are stable across versions: a code is never
    /// reused, and a new failure gets a new code.
    pub enum ErrorCode: u16 {
        UnknownAccount = 1,
        InsufficientFunds = 2,
        LockConflict = 3,
        /// The id was seen before with a different request body (transfer, deposit, account).
        DuplicateWithDifferentContent = 4,
        /// This node does not own the account; `redirect_node_id` names the one that does.
        WrongNode = 5,
        ParticipantUnavailable = 6,
        /// A bound was reached (connections, requests in flight, queue); retry later.
        Overloaded = 7,
        Timeout = 8,
        MalformedFrame = 9,
        UnsupportedVersion = 10,
        TooLarge = 11,
        /// The node is draining for shutdown and takes no new requests.
        ShuttingDown = 12,
        /// A well-formed request with a value the operation refuses (zero amount, limit too big).
        InvalidArgument = 13,
        /// A balance or sum would overflow its `u64`.
        Overflow = 14,
        /// A bug or an I/O failure on the node; the request may or may not have been applied.
        Internal = 15,
        /// A withdrawal whose funds are there but held by pending debits of the account; nothing
        /// was done (nothing recorded either): retry with the same id.
        FundsHeld = 16,
        /// This node holds a replica of the account's shard but is not its leader;
        /// `redirect_node_id` names the leader this node knows, or is absent while it knows none
        /// (an election is running). Nothing was done: retry at that node, or after a backoff.
        NotLeader = 17,
    }
}

wire_struct! {
    /// Answers any request that failed, and any malformed frame just before the connection closes.
    pub struct ErrorResponse {
        pub code: ErrorCode,
        /// Set only with `ErrorCode::WrongNode` (always) and `ErrorCode::NotLeader` (when a leader
        /// is known).
        pub redirect_node_id: Option<NodeId>,
        pub message: String [ERROR_MESSAGE_SIZE_MAX_BYTES],
    }
}

impl ErrorResponse {
    /// An error with a message; the message is cut (on a char boundary) to fit the wire limit.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > ERROR_MESSAGE_SIZE_MAX_BYTES as usize {
            let mut end = ERROR_MESSAGE_SIZE_MAX_BYTES as usize;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self {
            code,
            redirect_node_id: None,
            message,
        }
    }

    /// A `WrongNode` error pointing the client at the owner of the account.
    pub fn wrong_node(owner: NodeId) -> Self {
        Self {
            redirect_node_id: Some(owner),
            ..Self::new(ErrorCode::WrongNode, "account is owned by another node")
        }
    }

    /// A `NotLeader` error for `shard`, pointing the client at the leader this node knows, if any.
    pub fn not_leader(leader: Option<NodeId>, shard: u32) -> Self {
        let message = match leader {
            Some(leader) => format!("not the leader of shard {shard}; node {leader} is"),
            None => {
                format!("not the leader of shard {shard}; no leader known (an election is running)")
            }
        };
        Self {
            redirect_node_id: leader,
            ..Self::new(ErrorCode::NotLeader, message)
        }
    }
}
