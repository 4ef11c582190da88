//! Keeps `docs/protocol.md` honest: its worked hex examples must be exactly what the encoder
//! produces, and must decode back to the messages the document describes.

use crate::*;

const PROTOCOL_DOC: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"));

/// The bytes of the hex block that follows the `<!-- check: NAME -->` marker. Each line's leading
/// two-digit hex tokens are bytes; the rest of the line is commentary.
fn example_bytes(name: &str) -> Vec<u8> {
    let marker = format!("<!-- check: {name} -->");
    let start = PROTOCOL_DOC
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/protocol.md lacks {marker}"));
    let block = &PROTOCOL_DOC[start + marker.len()..];
    let block = &block[block.find("```").expect("code block") + 3..];
    let block = &block
        [block.find('\n').expect("fence line") + 1..block.find("\n```").expect("closing fence")];
    let mut bytes = Vec::new();
    for line in block.lines() {
        for token in line.split_whitespace() {
            match (token.len(), u8::from_str_radix(token, 16)) {
                (2, Ok(byte)) => bytes.push(byte),
                _ => break,
            }
        }
    }
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(name: &str, frame: Frame) {
    let encoded = frame.to_bytes().unwrap().to_vec();
    let documented = example_bytes(name);
    assert_eq!(
        hex(&documented),
        hex(&encoded),
        "docs/protocol.md example {name} drifted from the encoder"
    );
    assert_eq!(Frame::parse(&documented).unwrap(), frame);
}

pub(crate) fn example_transfer_request() -> Frame {
    Frame::new(
        7,
        Transfer {
            id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            debit: 1001,
            credit: 2002,
            amount: 2500,
        },
    )
}

pub(crate) fn example_transfer_response() -> Frame {
    Frame::new(
        7,
        TransferResult {
            id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            outcome: TransferOutcome::Committed,
        },
    )
}

pub(crate) fn example_error_response() -> Frame {
    Frame::new(8, ErrorResponse::wrong_node(3))
}

/// Node 1 appends entry 7 (term 3, data "tx") of shard 0's log to node 2 (Raft peer 2).
pub(crate) fn example_raft_messages() -> Frame {
    let append = RaftMessage {
        msg_type: RaftMessageType::MsgAppend,
        to: 2,
        from: 1,
        term: 3,
        log_term: 3,
        index: 6,
        entries: vec![RaftEntry {
            entry_type: RaftEntryType::Normal,
            term: 3,
            index: 7,
            data: bytes::Bytes::from_static(b"tx"),
            context: bytes::Bytes::new(),
        }],
        commit: 6,
        commit_term: 3,
        snapshot: None,
        request_snapshot: 0,
        reject: false,
        reject_hint: 0,
        context: bytes::Bytes::new(),
        deprecated_priority: 0,
        priority: 0,
    };
    Frame::new(
        12,
        RaftMessages {
            from: 1,
            messages: vec![ShardRaftMessage {
                shard: 0,
                message: append,
            }],
        },
    )
}

#[test]
fn transfer_request_example_matches() {
    check("transfer-request", example_transfer_request());
}

#[test]
fn transfer_response_example_matches() {
    check("transfer-response", example_transfer_response());
}

#[test]
fn error_response_example_matches() {
    check("error-response", example_error_response());
}

#[test]
fn raft_messages_example_matches() {
    check("raft-messages", example_raft_messages());
}

/// Run with `--ignored --nocapture` to print the examples when a layout change is intended.
#[test]
#[ignore]
fn print_examples() {
    for (name, frame) in [
        ("transfer-request", example_transfer_request()),
        ("transfer-response", example_transfer_response()),
        ("error-response", example_error_response()),
        ("raft-messages", example_raft_messages()),
    ] {
        let bytes = frame.to_bytes().unwrap();
        println!("{name}:");
        for chunk in bytes.chunks(8) {
            println!("{}", hex(chunk));
        }
    }
}
