//! The Raft transport messages: every type and message type round-trips, the maximal payloads fit
//! in one frame as docs/protocol.md section 6 says, and every bound is refused before anything is
//! allocated for it.

use bytes::Bytes;

use super::support::*;
use crate::*;

/// Where fields start in a `RaftMessages` frame holding one message, counted from the frame's
/// first byte (24-byte header, `from`, the message count, `shard`).
const MESSAGE_AT: usize = 24 + 4 + 4 + 4;
const MESSAGES_COUNT_AT: usize = 24 + 4;
/// After `msg_type` and five `u64`s.
const ENTRIES_COUNT_AT: usize = MESSAGE_AT + 1 + 5 * 8;
/// The first entry's data length, after its type, term and index.
const FIRST_ENTRY_DATA_SIZE_AT: usize = ENTRIES_COUNT_AT + 4 + 1 + 8 + 8;
/// With no entries: the snapshot's presence flag, after `commit` and `commit_term`.
const SNAPSHOT_FLAG_AT: usize = ENTRIES_COUNT_AT + 4 + 8 + 8;
/// With no entries and a snapshot with empty data: its `voters` count, after data, index, term.
const SNAPSHOT_VOTERS_COUNT_AT: usize = SNAPSHOT_FLAG_AT + 1 + 4 + 8 + 8;
/// With no entries and no snapshot: the message's context length.
const CONTEXT_SIZE_AT: usize = SNAPSHOT_FLAG_AT + 1 + 8 + 1 + 8;

fn entry(entry_type: RaftEntryType, index: u64, data: &'static [u8]) -> RaftEntry {
    RaftEntry {
        entry_type,
        term: 3,
        index,
        data: Bytes::from_static(data),
        context: Bytes::from_static(b"ctx"),
    }
}

fn snapshot() -> RaftSnapshot {
    RaftSnapshot {
        data: Bytes::from_static(b"the shard's state"),
        index: 41,
        term: 2,
        voters: vec![1, 2, 3],
        learners: vec![4],
        voters_outgoing: vec![1, 2, 5],
        learners_next: vec![5],
        auto_leave: true,
    }
}

/// A message with every field set to a distinct value (the snapshot only when asked).
fn message(msg_type: RaftMessageType, snapshot: Option<RaftSnapshot>) -> RaftMessage {
    RaftMessage {
        msg_type,
        to: 2,
        from: 1,
        term: 3,
        log_term: 4,
        index: 5,
        entries: vec![
            entry(RaftEntryType::Normal, 6, b"transfer"),
            entry(RaftEntryType::ConfChange, 7, b""),
            entry(RaftEntryType::ConfChangeV2, 8, b"v2"),
        ],
        commit: 9,
        commit_term: 10,
        snapshot,
        request_snapshot: 11,
        reject: true,
        reject_hint: 12,
        context: Bytes::from_static(b"CampaignTransfer"),
        deprecated_priority: 13,
        priority: -14,
    }
}

/// A message with nothing variable in it: no entries, no snapshot, an empty context.
fn bare_message() -> RaftMessage {
    RaftMessage {
        msg_type: RaftMessageType::MsgHeartbeat,
        to: 2,
        from: 1,
        term: 3,
        log_term: 0,
        index: 0,
        entries: vec![],
        commit: 0,
        commit_term: 0,
        snapshot: None,
        request_snapshot: 0,
        reject: false,
        reject_hint: 0,
        context: Bytes::new(),
        deprecated_priority: 0,
        priority: 0,
    }
}

fn frame_of(messages: Vec<RaftMessage>) -> Frame {
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(shard, message)| ShardRaftMessage {
            shard: shard as u32,
            message,
        })
        .collect();
    Frame::new(9, RaftMessages { from: 1, messages })
}

/// Encodes, checks the encoded size the sender is told, and decodes back.
fn round_trip(frame: &Frame) -> usize {
    let mut buf = encode(frame);
    let body_size_bytes = buf.len() - FRAME_HEADER_SIZE_BYTES as usize;
    assert_eq!(frame.message.encoded_size_bytes(), body_size_bytes);
    assert_eq!(Frame::decode(&mut buf).unwrap().as_ref(), Some(frame));
    body_size_bytes
}

/// Writes `value` at `offset` of the encoded `frame`, reseals it, and decodes it.
fn decode_forged(frame: &Frame, offset: usize, value: u32) -> Result<Option<Frame>, DecodeError> {
    let mut buf = encode(frame);
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    reseal(&mut buf);
    Frame::decode(&mut buf)
}

#[test]
fn the_message_types_are_eraftpb_s() {
    let codes: Vec<u8> = RaftMessageType::ALL.iter().map(|t| t.code()).collect();
    assert_eq!(codes, (0..=18).collect::<Vec<u8>>());
    assert_eq!(RaftMessageType::MsgAppend.code(), 3);
    assert_eq!(RaftMessageType::MsgSnapshot.code(), 7);
    assert_eq!(RaftMessageType::MsgRequestPreVoteResponse.code(), 18);
    let codes: Vec<u8> = RaftEntryType::ALL.iter().map(|t| t.code()).collect();
    assert_eq!(codes, [0, 1, 2]);
    assert_eq!(
        MessageKind::RaftMessages.response_kind(),
        Some(MessageKind::RaftMessagesReceived)
    );
    assert_eq!(
        (
            MessageKind::RaftMessages.code(),
            MessageKind::RaftMessagesReceived.code()
        ),
        (0x0207, 0x0287)
    );
}

#[test]
fn every_message_type_round_trips_with_entries_and_a_snapshot() {
    let messages: Vec<RaftMessage> = RaftMessageType::ALL
        .iter()
        .flat_map(|msg_type| {
            [
                message(*msg_type, None),
                message(*msg_type, Some(snapshot())),
            ]
        })
        .collect();
    for single in &messages {
        round_trip(&frame_of(vec![single.clone()]));
    }
    round_trip(&frame_of(messages));
    round_trip(&frame_of(vec![]));
    round_trip(&frame_of(vec![bare_message()]));
    round_trip(&Frame::new(9, RaftMessagesReceived {}));
    assert_eq!(encode(&Frame::new(9, RaftMessagesReceived {})).len(), 24);
}

#[test]
fn encoded_sizes_are_what_a_sender_needs() {
    // docs/protocol.md section 8: 25 bytes of an entry besides its data and context; 99 of a
    // message besides its entries, snapshot and context; 4 for the shard; 8 for the frame body.
    let entry = entry(RaftEntryType::Normal, 1, b"12345");
    assert_eq!(entry.encoded_size_bytes(), 25 + 5 + 3);
    assert_eq!(bare_message().encoded_size_bytes(), 99);
    let with_entry = RaftMessage {
        entries: vec![entry.clone()],
        ..bare_message()
    };
    assert_eq!(with_entry.encoded_size_bytes(), 99 + 33);
    let snapshot_size_bytes = 4 + 17 + 8 + 8 + (4 + 3 * 8) + (4 + 8) + (4 + 3 * 8) + (4 + 8) + 1;
    assert_eq!(snapshot().encoded_size_bytes(), snapshot_size_bytes);
    let shard_message = ShardRaftMessage {
        shard: 1,
        message: with_entry,
    };
    assert_eq!(shard_message.encoded_size_bytes(), 4 + 99 + 33);

    // A sender filling a frame by these sizes gets a frame the encoder takes, up to the limit.
    let big = ShardRaftMessage {
        shard: 1,
        message: RaftMessage {
            entries: vec![RaftEntry {
                data: Bytes::from(vec![7; 100_000]),
                ..entry
            }],
            ..bare_message()
        },
    };
    let mut frame = RaftMessages {
        from: 1,
        messages: vec![],
    };
    while frame.encoded_size_bytes() + big.encoded_size_bytes()
        <= FRAME_BODY_SIZE_MAX_BYTES as usize
    {
        frame.messages.push(big.clone());
    }
    assert_eq!(frame.messages.len(), 10);
    let body_size_bytes = round_trip(&Frame::new(1, frame.clone()));
    assert!(body_size_bytes + big.encoded_size_bytes() > FRAME_BODY_SIZE_MAX_BYTES as usize);
    frame.messages.push(big);
    assert!(matches!(
        Frame::new(1, frame).to_bytes(),
        Err(EncodeError::TooLarge { .. })
    ));
}

/// docs/protocol.md section 6 states both sizes.
#[test]
fn one_maximal_entry_or_snapshot_fits_in_one_frame() {
    let context = Bytes::from(vec![0xcc; RAFT_CONTEXT_MAX_BYTES as usize]);
    let maximal_entry = RaftEntry {
        entry_type: RaftEntryType::Normal,
        term: u64::MAX,
        index: u64::MAX,
        data: Bytes::from(vec![0xdd; RAFT_ENTRY_DATA_MAX_BYTES as usize]),
        context: context.clone(),
    };
    let with_entry = RaftMessage {
        msg_type: RaftMessageType::MsgAppend,
        entries: vec![maximal_entry],
        context: context.clone(),
        ..bare_message()
    };
    assert_eq!(round_trip(&frame_of(vec![with_entry])), 1_034_376);

    let ids: Vec<u64> = (1..=u64::from(CLUSTER_NODES_MAX)).collect();
    let maximal_snapshot = RaftSnapshot {
        data: Bytes::from(vec![0x55; RAFT_SNAPSHOT_DATA_MAX_BYTES as usize]),
        index: u64::MAX,
        term: u64::MAX,
        voters: ids.clone(),
        learners: ids.clone(),
        voters_outgoing: ids.clone(),
        learners_next: ids,
        auto_leave: true,
    };
    let with_snapshot = RaftMessage {
        msg_type: RaftMessageType::MsgSnapshot,
        snapshot: Some(maximal_snapshot),
        context,
        ..bare_message()
    };
    assert_eq!(round_trip(&frame_of(vec![with_snapshot])), 1_041_556);

    // The counts can be reached too: as many messages, and entries, as allowed fit.
    let most_messages = frame_of(vec![bare_message(); RAFT_MESSAGES_PER_FRAME_MAX as usize]);
    assert!(round_trip(&most_messages) <= FRAME_BODY_SIZE_MAX_BYTES as usize);
    let most_entries = RaftMessage {
        entries: vec![entry(RaftEntryType::Normal, 1, b""); RAFT_ENTRIES_PER_MESSAGE_MAX as usize],
        ..bare_message()
    };
    assert!(round_trip(&frame_of(vec![most_entries])) <= FRAME_BODY_SIZE_MAX_BYTES as usize);
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let too_long_data = RaftEntry {
        data: Bytes::from(vec![0; RAFT_ENTRY_DATA_MAX_BYTES as usize + 1]),
        ..entry(RaftEntryType::Normal, 1, b"")
    };
    let cases = [
        RaftMessage {
            entries: vec![too_long_data],
            ..bare_message()
        },
        RaftMessage {
            context: Bytes::from(vec![0; RAFT_CONTEXT_MAX_BYTES as usize + 1]),
            ..bare_message()
        },
        RaftMessage {
            snapshot: Some(RaftSnapshot {
                voters: vec![1; CLUSTER_NODES_MAX as usize + 1],
                ..snapshot()
            }),
            ..bare_message()
        },
    ];
    let errors: Vec<EncodeError> = cases
        .into_iter()
        .map(|message| frame_of(vec![message]).to_bytes().unwrap_err())
        .collect();
    assert!(
        matches!(
            errors[..],
            [
                EncodeError::BytesTooLong {
                    field: "RaftEntry.data",
                    ..
                },
                EncodeError::BytesTooLong {
                    field: "RaftMessage.context",
                    ..
                },
                EncodeError::TooManyEntries {
                    field: "RaftSnapshot.voters",
                    ..
                },
            ]
        ),
        "{errors:?}"
    );
    let too_many = frame_of(vec![
        bare_message();
        RAFT_MESSAGES_PER_FRAME_MAX as usize + 1
    ]);
    assert!(matches!(
        too_many.to_bytes(),
        Err(EncodeError::TooManyEntries {
            field: "RaftMessages.messages",
            ..
        })
    ));
}

/// A count or length over its limit, or over what the rest of the body can hold, is refused
/// when it is read, before the list or the bytes are allocated.
#[test]
fn forged_counts_and_lengths_are_refused_before_allocating() {
    let with_entry = frame_of(vec![RaftMessage {
        entries: vec![entry(RaftEntryType::Normal, 1, b"data")],
        ..bare_message()
    }]);
    let with_snapshot = frame_of(vec![RaftMessage {
        snapshot: Some(RaftSnapshot {
            data: Bytes::new(),
            ..snapshot()
        }),
        ..bare_message()
    }]);
    let bare = frame_of(vec![bare_message()]);
    let empty = frame_of(vec![]);
    let cases: [(&str, &Frame, usize, u32, DecodeError); 10] = [
        (
            "more messages than the body holds",
            &empty,
            MESSAGES_COUNT_AT,
            1000,
            DecodeError::Truncated {
                field: "RaftMessages.messages",
            },
        ),
        (
            "more messages than allowed",
            &empty,
            MESSAGES_COUNT_AT,
            RAFT_MESSAGES_PER_FRAME_MAX + 1,
            DecodeError::TooManyEntries {
                field: "RaftMessages.messages",
                count: RAFT_MESSAGES_PER_FRAME_MAX + 1,
                max: RAFT_MESSAGES_PER_FRAME_MAX,
            },
        ),
        (
            "more entries than the body holds",
            &bare,
            ENTRIES_COUNT_AT,
            100,
            DecodeError::Truncated {
                field: "RaftMessage.entries",
            },
        ),
        (
            "more entries than allowed",
            &bare,
            ENTRIES_COUNT_AT,
            RAFT_ENTRIES_PER_MESSAGE_MAX + 1,
            DecodeError::TooManyEntries {
                field: "RaftMessage.entries",
                count: RAFT_ENTRIES_PER_MESSAGE_MAX + 1,
                max: RAFT_ENTRIES_PER_MESSAGE_MAX,
            },
        ),
        (
            "entry data longer than the body holds",
            &with_entry,
            FIRST_ENTRY_DATA_SIZE_AT,
            RAFT_ENTRY_DATA_MAX_BYTES,
            DecodeError::Truncated {
                field: "RaftEntry.data",
            },
        ),
        (
            "entry data longer than allowed",
            &with_entry,
            FIRST_ENTRY_DATA_SIZE_AT,
            RAFT_ENTRY_DATA_MAX_BYTES + 1,
            DecodeError::BytesTooLong {
                field: "RaftEntry.data",
                size_bytes: RAFT_ENTRY_DATA_MAX_BYTES + 1,
                max: RAFT_ENTRY_DATA_MAX_BYTES,
            },
        ),
        (
            "a context longer than allowed",
            &bare,
            CONTEXT_SIZE_AT,
            RAFT_CONTEXT_MAX_BYTES + 1,
            DecodeError::BytesTooLong {
                field: "RaftMessage.context",
                size_bytes: RAFT_CONTEXT_MAX_BYTES + 1,
                max: RAFT_CONTEXT_MAX_BYTES,
            },
        ),
        (
            "snapshot data longer than allowed",
            &with_snapshot,
            SNAPSHOT_FLAG_AT + 1,
            RAFT_SNAPSHOT_DATA_MAX_BYTES + 1,
            DecodeError::BytesTooLong {
                field: "RaftSnapshot.data",
                size_bytes: RAFT_SNAPSHOT_DATA_MAX_BYTES + 1,
                max: RAFT_SNAPSHOT_DATA_MAX_BYTES,
            },
        ),
        (
            "more voters than allowed",
            &with_snapshot,
            SNAPSHOT_VOTERS_COUNT_AT,
            CLUSTER_NODES_MAX + 1,
            DecodeError::TooManyEntries {
                field: "RaftSnapshot.voters",
                count: CLUSTER_NODES_MAX + 1,
                max: CLUSTER_NODES_MAX,
            },
        ),
        (
            "more voters than the body holds",
            &with_snapshot,
            SNAPSHOT_VOTERS_COUNT_AT,
            CLUSTER_NODES_MAX,
            DecodeError::Truncated {
                field: "RaftSnapshot.voters",
            },
        ),
    ];
    for (name, frame, offset, value, error) in cases {
        assert_eq!(decode_forged(frame, offset, value), Err(error), "{name}");
    }
}

#[test]
fn unknown_message_and_entry_types_are_malformed() {
    let frame = frame_of(vec![RaftMessage {
        entries: vec![entry(RaftEntryType::Normal, 1, b"")],
        ..bare_message()
    }]);
    let entry_type_at = ENTRIES_COUNT_AT + 4;
    for (offset, code, field) in [
        (MESSAGE_AT, 19, "RaftMessage.msg_type"),
        (MESSAGE_AT, 0xff, "RaftMessage.msg_type"),
        (entry_type_at, 3, "RaftEntry.entry_type"),
    ] {
        let mut buf = encode(&frame);
        buf[offset] = code;
        reseal(&mut buf);
        let error = Frame::decode(&mut buf).unwrap_err();
        assert_eq!(error, DecodeError::InvalidValue { field });
        assert_eq!(error.error_code(), ErrorCode::MalformedFrame);
    }
}
