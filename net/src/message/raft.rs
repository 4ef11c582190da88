//! The node-to-node family's Raft transport: `RaftMessages` carries a batch of raft-rs messages
//! from one node to another, each tagged with the shard (the Raft group) it belongs to, and
//! `RaftMessagesReceived` frees the request's in-flight slot. Raft messages are fire-and-forget:
//! the reply says nothing about what the receiver did with them.
//!
//! `RaftMessage`, `RaftEntry` and `RaftSnapshot` mirror raft-rs 0.7's `eraftpb::Message`, `Entry`
//! and `Snapshot` (`raft-proto-0.7.0/proto/eraftpb.proto`) field by field, so that they convert
//! losslessly, except for the deprecated `Entry.sync_log`, which raft-rs ignores; this crate does
//! not depend on `raft`, and the conversion lives with the code that drives it.
//!
//! The limits are chosen so that one frame (1 MiB of body) can always carry one message with a
//! maximal entry, or one with a maximal snapshot; the `const` assertions below check it. A sender
//! fills a frame by summing `encoded_size_bytes()`.

use bytes::Bytes;

use super::client::CLUSTER_NODES_MAX;
use super::common::NodeId;
use crate::frame::FRAME_BODY_SIZE_MAX_BYTES;
use crate::wire::{Wire, wire_enum, wire_struct};

/// Most Raft messages in one `RaftMessages` frame.
pub const RAFT_MESSAGES_PER_FRAME_MAX: u32 = 1024;
/// Most log entries in one `RaftMessage` (raft-rs bounds a message by bytes only,
/// `Config::max_size_per_msg`, so a sender also splits by this count).
pub const RAFT_ENTRIES_PER_MESSAGE_MAX: u32 = 4096;
/// Largest `RaftEntry.data`: 1 MiB less 16 KiB, so that one maximal entry fits in a frame with
/// its message and both contexts at their maxima.
pub const RAFT_ENTRY_DATA_MAX_BYTES: u32 = 1024 * 1024 - 16 * 1024;
/// Largest `RaftEntry.context` and `RaftMessage.context` (raft-rs puts a read request's id or
/// the 16-byte campaign type there).
pub const RAFT_CONTEXT_MAX_BYTES: u32 = 1024;
/// Largest `RaftSnapshot.data`: like an entry's, so that one maximal snapshot fits in a frame
/// with its conf state at `CLUSTER_NODES_MAX` ids per list. A larger snapshot cannot be sent.
pub const RAFT_SNAPSHOT_DATA_MAX_BYTES: u32 = 1024 * 1024 - 16 * 1024;

wire_enum! {
    /// `eraftpb::MessageType`, code for code, with the proto's names.
    pub enum RaftMessageType: u8 {
        MsgHup = 0,
        MsgBeat = 1,
        MsgPropose = 2,
        MsgAppend = 3,
        MsgAppendResponse = 4,
        MsgRequestVote = 5,
        MsgRequestVoteResponse = 6,
        MsgSnapshot = 7,
        MsgHeartbeat = 8,
        MsgHeartbeatResponse = 9,
        MsgUnreachable = 10,
        MsgSnapStatus = 11,
        MsgCheckQuorum = 12,
        MsgTransferLeader = 13,
        MsgTimeoutNow = 14,
        MsgReadIndex = 15,
        MsgReadIndexResp = 16,
        MsgRequestPreVote = 17,
        MsgRequestPreVoteResponse = 18,
    }
}

wire_enum! {
    /// `eraftpb::EntryType` (`EntryNormal`, `EntryConfChange`, `EntryConfChangeV2`), code for code.
    pub enum RaftEntryType: u8 {
        Normal = 0,
        ConfChange = 1,
        ConfChangeV2 = 2,
    }
}

wire_struct! {
    /// `eraftpb::Entry` without the deprecated `sync_log`.
    pub struct RaftEntry {
        pub entry_type: RaftEntryType,
        pub term: u64,
        pub index: u64,
        pub data: Bytes [RAFT_ENTRY_DATA_MAX_BYTES],
        pub context: Bytes [RAFT_CONTEXT_MAX_BYTES],
    }
}

wire_struct! {
    /// `eraftpb::Snapshot` with its `SnapshotMetadata` and `ConfState` flattened into it.
    pub struct RaftSnapshot {
        pub data: Bytes [RAFT_SNAPSHOT_DATA_MAX_BYTES],
        /// `metadata.index`: the applied index the snapshot holds.
        pub index: u64,
        /// `metadata.term`: the term of that index.
        pub term: u64,
        /// `metadata.conf_state.voters`, and so on for the next four fields.
        pub voters: Vec<u64> [CLUSTER_NODES_MAX],
        pub learners: Vec<u64> [CLUSTER_NODES_MAX],
        pub voters_outgoing: Vec<u64> [CLUSTER_NODES_MAX],
        pub learners_next: Vec<u64> [CLUSTER_NODES_MAX],
        pub auto_leave: bool,
    }
}

wire_struct! {
    /// `eraftpb::Message`, field by field in the proto's declaration order. `to` and `from` are
    /// Raft peer ids within the shard's group.
    pub struct RaftMessage {
        pub msg_type: RaftMessageType,
        pub to: u64,
        pub from: u64,
        pub term: u64,
        pub log_term: u64,
        pub index: u64,
        pub entries: Vec<RaftEntry> [RAFT_ENTRIES_PER_MESSAGE_MAX],
        pub commit: u64,
        pub commit_term: u64,
        /// Absent for every message but a snapshot's (raft-rs's default `Snapshot`).
        pub snapshot: Option<RaftSnapshot>,
        pub request_snapshot: u64,
        pub reject: bool,
        pub reject_hint: u64,
        pub context: Bytes [RAFT_CONTEXT_MAX_BYTES],
        pub deprecated_priority: u64,
        pub priority: i64,
    }
}

wire_struct! {
    /// One Raft message for the group of `shard`.
    pub struct ShardRaftMessage {
        pub shard: u32,
        pub message: RaftMessage,
    }
}

wire_struct! {
    /// Raft messages from node `from` to the receiving node, for any of the shards they share.
    /// Answered by `RaftMessagesReceived` as soon as they are read; nothing waits on them.
    pub struct RaftMessages {
        pub from: NodeId,
        pub messages: Vec<ShardRaftMessage> [RAFT_MESSAGES_PER_FRAME_MAX],
    }
}

wire_struct! {
    /// Frees the `RaftMessages` request's in-flight slot; says nothing about the messages.
    pub struct RaftMessagesReceived {}
}

/// The body of a `RaftMessages` frame holding one message, with every bounded byte string at its
/// maximum and `extra_size_bytes` more: the frame's own fields, the message's, both contexts.
const fn one_message_body_size_bytes(extra_size_bytes: u32) -> u32 {
    <RaftMessages as Wire>::ENCODED_SIZE_MIN_BYTES
        + <ShardRaftMessage as Wire>::ENCODED_SIZE_MIN_BYTES
        + RAFT_CONTEXT_MAX_BYTES
        + extra_size_bytes
}

const _: () = {
    // One message with one maximal entry fits in a frame.
    let entry_size_bytes = <RaftEntry as Wire>::ENCODED_SIZE_MIN_BYTES
        + RAFT_ENTRY_DATA_MAX_BYTES
        + RAFT_CONTEXT_MAX_BYTES;
    assert!(one_message_body_size_bytes(entry_size_bytes) <= FRAME_BODY_SIZE_MAX_BYTES);
    // One message with a maximal snapshot (data, and every conf-state list full) fits too. A
    // snapshot's `Option` flag is counted in the message's minimum.
    let snapshot_size_bytes = <RaftSnapshot as Wire>::ENCODED_SIZE_MIN_BYTES
        + RAFT_SNAPSHOT_DATA_MAX_BYTES
        + 4 * CLUSTER_NODES_MAX * 8;
    assert!(one_message_body_size_bytes(snapshot_size_bytes) <= FRAME_BODY_SIZE_MAX_BYTES);
    // Each count limit can be reached: that many items of the smallest size fit in a frame.
    assert!(
        RAFT_MESSAGES_PER_FRAME_MAX * <ShardRaftMessage as Wire>::ENCODED_SIZE_MIN_BYTES
            <= FRAME_BODY_SIZE_MAX_BYTES
    );
    assert!(
        RAFT_ENTRIES_PER_MESSAGE_MAX * <RaftEntry as Wire>::ENCODED_SIZE_MIN_BYTES
            <= FRAME_BODY_SIZE_MAX_BYTES
    );
};
