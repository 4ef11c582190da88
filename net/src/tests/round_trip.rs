//! Every message survives encode then decode unchanged; limits hold at their exact boundaries.

use bytes::BytesMut;
use proptest::prelude::*;

use super::support::*;
use crate::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(request_id in any::<u64>(), message in any::<Message>()) {
        let frame = Frame { request_id, message };
        let mut buf = encode(&frame);
        let size = buf.len() as u32;
        prop_assert_eq!(
            frame.message.encoded_size_bytes(),
            buf.len() - FRAME_HEADER_SIZE_BYTES as usize
        );
        prop_assert_eq!(Frame::check(&buf), Ok(FrameCheck::Complete { frame_size_bytes: size }));
        prop_assert_eq!(Frame::decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty());
    }

    /// Frames arriving a byte at a time, several back to back, decode to the same sequence.
    #[test]
    fn split_stream_decodes_in_order(messages in prop::collection::vec(any::<Message>(), 1..5)) {
        let frames: Vec<Frame> =
            messages.into_iter().enumerate().map(|(index, message)| Frame { request_id: index as u64, message }).collect();
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in wire.iter() {
            buf.extend_from_slice(&[*byte]);
            while let Some(frame) = Frame::decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
    }
}

#[test]
fn every_kind_is_generated_and_answers_pair_up() {
    for kind in MessageKind::ALL {
        assert_eq!(MessageKind::from_code(kind.code()), Some(*kind));
        if let Some(response) = kind.response_kind() {
            assert!(!response.is_request(), "{kind:?}");
        }
    }
    assert_eq!(
        MessageKind::Transfer.response_kind(),
        Some(MessageKind::TransferResult)
    );
    assert_eq!(
        MessageKind::PrepareBatch.response_kind(),
        Some(MessageKind::Votes)
    );
    assert!(!MessageKind::ErrorResponse.is_request());
}

fn maximal_prepare_batch() -> PrepareBatch {
    let op = Op {
        account: u64::MAX,
        kind: OpKind::Debit,
        amount: u64::MAX,
        counterparty: u64::MAX,
    };
    let entry = PrepareEntry {
        txid: u128::MAX,
        ops: vec![op; TRANSACTION_OPERATIONS_MAX as usize],
    };
    PrepareBatch {
        coordinator: 1,
        shard: 2,
        entries: vec![entry; BATCH_ENTRIES_MAX as usize],
    }
}

#[test]
fn maximal_batch_fits_in_one_frame() {
    let frame = Frame::new(1, maximal_prepare_batch());
    let mut buf = encode(&frame);
    // The size docs/protocol.md states for the largest batch.
    assert_eq!(buf.len() - FRAME_HEADER_SIZE_BYTES as usize, 901_132);
    assert!(buf.len() <= FRAME_SIZE_MAX_BYTES as usize);
    assert_eq!(Frame::decode(&mut buf).unwrap(), Some(frame));
}

#[test]
fn lists_over_their_maximum_are_refused_by_encoder_and_decoder() {
    let mut batch = maximal_prepare_batch();
    batch.entries.truncate(1);
    let op = batch.entries[0].ops[0].clone();
    batch.entries[0].ops.push(op);
    let error = Frame::new(1, batch.clone()).to_bytes().unwrap_err();
    assert!(
        matches!(
            error,
            EncodeError::TooManyEntries {
                field: "PrepareEntry.ops",
                ..
            }
        ),
        "{error:?}"
    );

    // Forge the over-long count on the wire: the decoder must refuse it before allocating.
    batch.entries[0].ops.pop();
    let mut buf = encode(&Frame::new(1, batch));
    // Header, coordinator, shard, the entries count, the first txid.
    let ops_count_offset = 24 + 4 + 4 + 4 + 16;
    buf[ops_count_offset..ops_count_offset + 4]
        .copy_from_slice(&(TRANSACTION_OPERATIONS_MAX + 1).to_le_bytes());
    reseal(&mut buf);
    assert!(matches!(
        Frame::decode(&mut buf),
        Err(DecodeError::TooManyEntries {
            field: "PrepareEntry.ops",
            ..
        })
    ));
}

#[test]
fn a_count_larger_than_the_body_is_refused_before_allocating() {
    let mut buf = encode(&Frame::new(1, GetBalances { accounts: vec![] }));
    // 1000 accounts claimed, none present: must be Truncated, not a 1000-entry allocation.
    buf[24..28].copy_from_slice(&1000_u32.to_le_bytes());
    reseal(&mut buf);
    assert_eq!(
        Frame::decode(&mut buf),
        Err(DecodeError::Truncated {
            field: "GetBalances.accounts"
        })
    );
}

#[test]
fn owner_name_is_bounded() {
    let name_at_limit = "é".repeat(OWNER_NAME_MAX_BYTES as usize / 2);
    let ok = CreateAccount {
        account: 1,
        flags: 0,
        owner: Some(name_at_limit),
    };
    let mut buf = encode(&Frame::new(1, ok.clone()));
    assert_eq!(Frame::decode(&mut buf).unwrap(), Some(Frame::new(1, ok)));

    let too_long = CreateAccount {
        account: 1,
        flags: 0,
        owner: Some("x".repeat(65)),
    };
    assert!(matches!(
        Frame::new(1, too_long).to_bytes(),
        Err(EncodeError::StringTooLong { .. })
    ));
}

#[test]
fn invalid_utf8_and_bad_codes_are_malformed() {
    let frame = Frame::new(
        1,
        CreateAccount {
            account: 1,
            flags: 0,
            owner: Some("ab".into()),
        },
    );
    let mut buf = encode(&frame);
    let name_offset = 24 + 8 + 4 + 1 + 2;
    buf[name_offset] = 0xFF;
    reseal(&mut buf);
    assert_eq!(
        Frame::decode(&mut buf),
        Err(DecodeError::InvalidValue {
            field: "CreateAccount.owner"
        })
    );

    let mut buf = encode(&Frame::new(
        1,
        TransferResult {
            id: 1,
            outcome: TransferOutcome::Committed,
        },
    ));
    // Committed with a reason is contradictory.
    buf[24 + 16 + 1] = AbortReason::Timeout.code();
    reseal(&mut buf);
    assert_eq!(
        Frame::decode(&mut buf),
        Err(DecodeError::InvalidValue {
            field: "TransferResult.outcome"
        })
    );
}

#[test]
fn error_messages_are_cut_to_fit() {
    let error = ErrorResponse::new(ErrorCode::Internal, "€".repeat(200));
    assert!(error.message.len() <= ERROR_MESSAGE_SIZE_MAX_BYTES as usize);
    let frame = Frame::new(3, error);
    assert_eq!(Frame::decode(&mut encode(&frame)).unwrap(), Some(frame));
}

#[test]
fn not_leader_round_trips_with_and_without_a_leader() {
    for (leader, text) in [
        (Some(4), "not the leader of shard 9; node 4 is"),
        (
            None,
            "not the leader of shard 9; no leader known (an election is running)",
        ),
    ] {
        let error = ErrorResponse::not_leader(leader, 9);
        assert_eq!(
            (error.code, error.redirect_node_id, error.message.as_str()),
            (ErrorCode::NotLeader, leader, text)
        );
        let frame = Frame::new(6, error);
        let mut buf = encode(&frame);
        // Code 17, then the redirect option (present, or absent) where WrongNode has it.
        assert_eq!(buf[24..27], [17, 0, u8::from(leader.is_some())]);
        assert_eq!(Frame::decode(&mut buf).unwrap(), Some(frame));
    }
    assert_eq!(ErrorCode::from_code(17), Some(ErrorCode::NotLeader));
    assert_eq!(ErrorCode::from_code(18), None);
}
