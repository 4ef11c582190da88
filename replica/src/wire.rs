//! raft-rs's messages to and from `net`'s wire form (`net::RaftMessage`, field for field).

use net::{RaftEntry, RaftEntryType, RaftMessage, RaftMessageType, RaftSnapshot};
use raft::eraftpb::{
    ConfState, Entry, EntryType, Message, MessageType, Snapshot, SnapshotMetadata,
};

/// A raft-rs message as it travels.
pub fn to_wire(message: &Message) -> RaftMessage {
    let snapshot = message
        .snapshot
        .as_ref()
        .filter(|s| !is_empty(s))
        .map(|snapshot| {
            let metadata = snapshot.metadata.clone().unwrap_or_default();
            let conf_state = metadata.conf_state.unwrap_or_default();
            RaftSnapshot {
                data: snapshot.data.clone().into(),
                index: metadata.index,
                term: metadata.term,
                voters: conf_state.voters,
                learners: conf_state.learners,
                voters_outgoing: conf_state.voters_outgoing,
                learners_next: conf_state.learners_next,
                auto_leave: conf_state.auto_leave,
            }
        });
    RaftMessage {
        msg_type: message_type_to_wire(message.get_msg_type()),
        to: message.to,
        from: message.from,
        term: message.term,
        log_term: message.log_term,
        index: message.index,
        entries: message
            .entries
            .iter()
            .map(|entry| RaftEntry {
                entry_type: match entry.get_entry_type() {
                    EntryType::EntryNormal => RaftEntryType::Normal,
                    EntryType::EntryConfChange => RaftEntryType::ConfChange,
                    EntryType::EntryConfChangeV2 => RaftEntryType::ConfChangeV2,
                },
                term: entry.term,
                index: entry.index,
                data: entry.data.clone().into(),
                context: entry.context.clone().into(),
            })
            .collect(),
        commit: message.commit,
        commit_term: message.commit_term,
        snapshot,
        request_snapshot: message.request_snapshot,
        reject: message.reject,
        reject_hint: message.reject_hint,
        context: message.context.clone().into(),
        deprecated_priority: message.deprecated_priority,
        priority: message.priority,
    }
}

/// A message from the wire, for raft-rs.
pub fn from_wire(wire: RaftMessage) -> Message {
    let mut message = Message {
        to: wire.to,
        from: wire.from,
        term: wire.term,
        log_term: wire.log_term,
        index: wire.index,
        entries: wire
            .entries
            .into_iter()
            .map(|entry| {
                let mut converted = Entry {
                    term: entry.term,
                    index: entry.index,
                    data: entry.data.to_vec(),
                    context: entry.context.to_vec(),
                    ..Entry::default()
                };
                converted.set_entry_type(match entry.entry_type {
                    RaftEntryType::Normal => EntryType::EntryNormal,
                    RaftEntryType::ConfChange => EntryType::EntryConfChange,
                    RaftEntryType::ConfChangeV2 => EntryType::EntryConfChangeV2,
                });
                converted
            })
            .collect(),
        commit: wire.commit,
        commit_term: wire.commit_term,
        snapshot: wire.snapshot.map(|snapshot| Snapshot {
            data: snapshot.data.to_vec(),
            metadata: Some(SnapshotMetadata {
                conf_state: Some(ConfState {
                    voters: snapshot.voters,
                    learners: snapshot.learners,
                    voters_outgoing: snapshot.voters_outgoing,
                    learners_next: snapshot.learners_next,
                    auto_leave: snapshot.auto_leave,
                }),
                index: snapshot.index,
                term: snapshot.term,
            }),
        }),
        request_snapshot: wire.request_snapshot,
        reject: wire.reject,
        reject_hint: wire.reject_hint,
        context: wire.context.to_vec(),
        deprecated_priority: wire.deprecated_priority,
        priority: wire.priority,
        ..Message::default()
    };
    message.set_msg_type(message_type_from_wire(wire.msg_type));
    message
}

fn is_empty(snapshot: &Snapshot) -> bool {
    snapshot.data.is_empty()
        && snapshot
            .metadata
            .as_ref()
            .is_none_or(|metadata| metadata.index == 0)
}

macro_rules! message_types {
    ($($name:ident),* $(,)?) => {
        fn message_type_to_wire(kind: MessageType) -> RaftMessageType {
            match kind {
                $(MessageType::$name => RaftMessageType::$name,)*
            }
        }

        fn message_type_from_wire(kind: RaftMessageType) -> MessageType {
            match kind {
                $(RaftMessageType::$name => MessageType::$name,)*
            }
        }
    };
}

message_types!(
    MsgHup,
    MsgBeat,
    MsgPropose,
    MsgAppend,
    MsgAppendResponse,
    MsgRequestVote,
    MsgRequestVoteResponse,
    MsgSnapshot,
    MsgHeartbeat,
    MsgHeartbeatResponse,
    MsgUnreachable,
    MsgSnapStatus,
    MsgCheckQuorum,
    MsgTransferLeader,
    MsgTimeoutNow,
    MsgReadIndex,
    MsgReadIndexResp,
    MsgRequestPreVote,
    MsgRequestPreVoteResponse,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_wire_field_for_field() {
        let mut entry = Entry {
            term: 3,
            index: 9,
            data: b"records".to_vec(),
            context: b"ctx".to_vec(),
            ..Entry::default()
        };
        entry.set_entry_type(EntryType::EntryConfChangeV2);
        let mut message = Message {
            to: 2,
            from: 1,
            term: 3,
            log_term: 2,
            index: 8,
            entries: vec![entry],
            commit: 7,
            commit_term: 2,
            snapshot: Some(Snapshot {
                data: b"image".to_vec(),
                metadata: Some(SnapshotMetadata {
                    conf_state: Some(ConfState {
                        voters: vec![1, 2, 3],
                        learners: vec![4],
                        voters_outgoing: vec![1],
                        learners_next: vec![5],
                        auto_leave: true,
                    }),
                    index: 6,
                    term: 2,
                }),
            }),
            request_snapshot: 5,
            reject: true,
            reject_hint: 4,
            context: b"read".to_vec(),
            deprecated_priority: 1,
            priority: -1,
            ..Message::default()
        };
        for kind in [
            MessageType::MsgAppend,
            MessageType::MsgRequestPreVoteResponse,
        ] {
            message.set_msg_type(kind);
            assert_eq!(from_wire(to_wire(&message)), message);
        }
    }
}
