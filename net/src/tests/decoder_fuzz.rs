//! The decoder against hostile input: random bytes and random mutations of valid frames, with and
//! without a recomputed checksum (so mutations reach the body decoder). It must return a value
//! every time: a frame, "incomplete", or an error; never panic, never consume a partial frame.
//! The same inputs are sent to a live server in `server.rs`.

use bytes::BytesMut;
use proptest::prelude::*;

use super::support::reseal;
use crate::*;

#[derive(Debug, Clone)]
pub(crate) enum Mutation {
    SetByte { index: usize, value: u8 },
    Truncate { size_bytes: usize },
    Insert { index: usize, bytes: Vec<u8> },
    SetBodySize { body_size_bytes: u32 },
    SetKind { kind: u16 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(index, value)| Mutation::SetByte { index, value }),
        1 => any::<usize>().prop_map(|size_bytes| Mutation::Truncate { size_bytes }),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(index, bytes)| Mutation::Insert { index, bytes }),
        1 => prop_oneof![any::<u32>(), 0..64_u32].prop_map(|body_size_bytes| Mutation::SetBodySize { body_size_bytes }),
        1 => prop_oneof![any::<u16>(), prop::sample::select(MessageKind::ALL).prop_map(|kind| kind.code())]
            .prop_map(|kind| Mutation::SetKind { kind }),
    ]
}

fn apply(frame: &mut Vec<u8>, mutation: &Mutation) {
    match mutation {
        Mutation::SetByte { index, value } if !frame.is_empty() => {
            let index = index % frame.len();
            frame[index] = *value;
        }
        Mutation::SetByte { .. } => {}
        Mutation::Truncate { size_bytes } => frame.truncate(size_bytes % (frame.len() + 1)),
        Mutation::Insert { index, bytes } => {
            let index = index % (frame.len() + 1);
            frame.splice(index..index, bytes.iter().copied());
        }
        Mutation::SetBodySize { body_size_bytes } if frame.len() >= 20 => {
            frame[16..20].copy_from_slice(&body_size_bytes.to_le_bytes());
        }
        Mutation::SetKind { kind } if frame.len() >= 8 => {
            frame[6..8].copy_from_slice(&kind.to_le_bytes())
        }
        Mutation::SetBodySize { .. } | Mutation::SetKind { .. } => {}
    }
}

/// A valid frame with a few mutations, resealed or not.
pub(crate) fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<Message>(),
        any::<u64>(),
        prop::collection::vec(mutation(), 1..4),
        any::<bool>(),
    )
        .prop_map(|(message, request_id, mutations, reseal_after)| {
            let mut bytes = Frame {
                request_id,
                message,
            }
            .to_bytes()
            .expect("generated frames encode")
            .to_vec();
            for mutation in &mutations {
                apply(&mut bytes, mutation);
            }
            if reseal_after {
                reseal(&mut bytes);
            }
            bytes
        })
}

/// Random bytes, sometimes behind a valid-looking header so they reach the body decoder.
pub(crate) fn random_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (
            prop::sample::select(MessageKind::ALL),
            prop::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(kind, body)| {
                let mut bytes = Vec::with_capacity(24 + body.len());
                bytes.extend_from_slice(b"TALY");
                bytes.push(PROTOCOL_VERSION);
                bytes.push(0);
                bytes.extend_from_slice(&kind.code().to_le_bytes());
                bytes.extend_from_slice(&1_u64.to_le_bytes());
                bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
                bytes.extend_from_slice(&[0; 4]);
                bytes.extend_from_slice(&body);
                reseal(&mut bytes);
                bytes
            }),
    ]
}

/// Feeds `input` to the decoder as a connection would, returning once it stops making progress.
fn decode_all(input: &[u8]) {
    let mut buf = BytesMut::from(input);
    loop {
        let before = buf.len();
        match Frame::decode(&mut buf) {
            Ok(Some(_)) => assert!(buf.len() < before, "a decoded frame must consume bytes"),
            Ok(None) => {
                // Incomplete must mean: what is buffered is a prefix of a frame within limits.
                assert!(buf.len() < FRAME_SIZE_MAX_BYTES as usize);
                return;
            }
            Err(_) => {
                assert_eq!(buf.len(), before, "a failed decode must not consume bytes");
                return;
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn decoder_survives_random_bytes(input in random_input()) {
        decode_all(&input);
    }

    #[test]
    fn decoder_survives_mutated_frames(input in mutated_frame()) {
        decode_all(&input);
    }
}

#[test]
fn each_kind_of_malformation_has_its_error() {
    let valid = Frame::new(5, super::support::transfer(1))
        .to_bytes()
        .unwrap()
        .to_vec();

    let mut bad_magic = valid.clone();
    bad_magic[0] = b'X';
    assert!(matches!(
        Frame::check(&bad_magic),
        Err(DecodeError::BadMagic { .. })
    ));
    // Detected from the first wrong byte, without waiting for a whole header.
    assert!(matches!(
        Frame::check(b"TX"),
        Err(DecodeError::BadMagic { .. })
    ));
    assert_eq!(Frame::check(b"TAL"), Ok(FrameCheck::Incomplete));

    let mut bad_version = valid.clone();
    bad_version[4] = PROTOCOL_VERSION + 1;
    assert_eq!(
        Frame::check(&bad_version[..5]),
        Err(DecodeError::UnsupportedVersion {
            version: PROTOCOL_VERSION + 1
        })
    );

    let mut too_large = valid.clone();
    super::support::set_body_size(&mut too_large, FRAME_BODY_SIZE_MAX_BYTES + 1);
    assert!(matches!(
        Frame::check(&too_large[..24]),
        Err(DecodeError::TooLarge { .. })
    ));

    let mut bad_crc = valid.clone();
    bad_crc[30] ^= 1;
    assert!(matches!(
        Frame::parse(&bad_crc),
        Err(DecodeError::ChecksumMismatch { .. })
    ));

    let mut unknown_kind = valid.clone();
    unknown_kind[6..8].copy_from_slice(&0x7777_u16.to_le_bytes());
    reseal(&mut unknown_kind);
    assert_eq!(
        Frame::parse(&unknown_kind),
        Err(DecodeError::UnknownKind { kind: 0x7777 })
    );

    let mut short_body = valid.clone();
    short_body.pop();
    let body_size_bytes = (short_body.len() - 24) as u32;
    super::support::set_body_size(&mut short_body, body_size_bytes);
    assert!(matches!(
        Frame::parse(&short_body),
        Err(DecodeError::Truncated { .. })
    ));

    let mut long_body = valid.clone();
    long_body.push(0);
    let body_size_bytes = (long_body.len() - 24) as u32;
    super::support::set_body_size(&mut long_body, body_size_bytes);
    assert_eq!(
        Frame::parse(&long_body),
        Err(DecodeError::TrailingBytes { unread_bytes: 1 })
    );
}

/// docs/protocol.md sections 2 and 10: a version-1 frame is refused as soon as its kind shows it
/// is not an error frame, and a version-1 error frame (an `UnsupportedVersion` reply always is
/// one) is read, so that peers of any two versions understand each other's refusal.
#[test]
fn version_1_is_read_only_in_error_frames() {
    assert_eq!(PROTOCOL_VERSION, 2);
    let mut version_1_request = Frame::new(5, super::support::transfer(1))
        .to_bytes()
        .unwrap()
        .to_vec();
    version_1_request[4] = 1;
    reseal(&mut version_1_request);
    let refused = DecodeError::UnsupportedVersion { version: 1 };
    // Undecided while the kind has not arrived (an error frame may follow), refused once it has.
    assert_eq!(
        Frame::check(&version_1_request[..7]),
        Ok(FrameCheck::Incomplete)
    );
    assert_eq!(Frame::check(&version_1_request[..8]), Err(refused.clone()));
    assert_eq!(Frame::parse(&version_1_request), Err(refused.clone()));
    assert_eq!(refused.error_code(), ErrorCode::UnsupportedVersion);

    let reply = Frame::new(
        0,
        ErrorResponse::new(ErrorCode::UnsupportedVersion, "version 2 is spoken here"),
    );
    let reply_bytes = reply.to_bytes().unwrap();
    assert_eq!(reply_bytes[4], 1, "the reply is in the frozen version 1");
    assert_eq!(Frame::parse(&reply_bytes), Ok(reply));

    // Every other frame, error frames included, is written in the current version; a version-1
    // error frame of any code is read.
    let wrong_node = Frame::new(8, ErrorResponse::wrong_node(3));
    let mut wrong_node_bytes = wrong_node.to_bytes().unwrap().to_vec();
    assert_eq!(wrong_node_bytes[4], PROTOCOL_VERSION);
    wrong_node_bytes[4] = 1;
    reseal(&mut wrong_node_bytes);
    assert_eq!(Frame::parse(&wrong_node_bytes), Ok(wrong_node));
}
