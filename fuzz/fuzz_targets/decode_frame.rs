//! Fuzzes the frame decoder with arbitrary bytes, as a connection would feed it: it must never
//! panic, a decoded frame must consume bytes, a failed decode must consume none, and every frame
//! it accepts must re-encode to a frame that decodes to the same value.
//!
//! Random bytes rarely get past the magic and the CRC, so each input is also used a second way:
//! its first two bytes as a kind and the rest as a body, behind a valid header with a correct
//! checksum, which sends the fuzzer straight into the body decoders.
//!
//! Run with `cargo +nightly fuzz run decode_frame` from `fuzz/`. CI covers the same properties
//! with proptest in `net/src/tests/decoder_fuzz.rs`.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use net::Frame;

fuzz_target!(|data: &[u8]| {
    decode_stream(data);
    if data.len() >= 2 && data.len() - 2 <= net::FRAME_BODY_SIZE_MAX_BYTES as usize {
        decode_stream(&sealed_frame([data[0], data[1]], &data[2..]));
    }
});

fn sealed_frame(kind: [u8; 2], body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(24 + body.len());
    frame.extend_from_slice(b"TALY");
    frame.extend_from_slice(&[net::PROTOCOL_VERSION, 0]);
    frame.extend_from_slice(&kind);
    frame.extend_from_slice(&1_u64.to_le_bytes());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame);
    hasher.update(body);
    frame.extend_from_slice(&hasher.finalize().to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

fn decode_stream(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match Frame::decode(&mut buf) {
            Ok(Some(frame)) => {
                assert!(buf.len() < before, "a decoded frame consumes bytes");
                let mut encoded = frame.to_bytes().expect("a decoded frame re-encodes");
                assert_eq!(Frame::decode(&mut encoded), Ok(Some(frame)));
                assert!(encoded.is_empty());
            }
            Ok(None) => break,
            Err(_) => {
                assert_eq!(buf.len(), before, "a failed decode consumes nothing");
                break;
            }
        }
    }
}
