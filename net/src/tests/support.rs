//! Helpers shared by the tests: frame surgery on raw bytes, and a small handler for live servers.

use std::time::Duration;

use bytes::BytesMut;

use crate::*;

/// Recomputes the checksum of a whole encoded frame after a test edited it, so the edit reaches
/// the body decoder instead of being caught by the CRC.
pub(crate) fn reseal(frame: &mut [u8]) {
    if frame.len() < 24 {
        return;
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..20]);
    hasher.update(&frame[24..]);
    let crc = hasher.finalize();
    frame[20..24].copy_from_slice(&crc.to_le_bytes());
}

/// Sets the body-size field and reseals.
pub(crate) fn set_body_size(frame: &mut [u8], body_size_bytes: u32) {
    frame[16..20].copy_from_slice(&body_size_bytes.to_le_bytes());
    reseal(frame);
}

pub(crate) fn encode(frame: &Frame) -> BytesMut {
    frame.to_bytes().expect("test frames encode")
}

pub(crate) fn transfer(id: u128) -> Transfer {
    Transfer {
        id,
        debit: 7,
        credit: 9,
        amount: 1,
    }
}

/// `Transfer` answers `Committed` after sleeping `amount` milliseconds when `amount` < 10_000
/// (so answers can overtake each other); `Heartbeat` with node id `u32::MAX` never answers;
/// `GetBalance` answers twice the account id; `GetTransferStatus` with id `PANIC_TRANSFER_ID`
/// panics; anything else is refused.
pub(crate) struct TestHandler;

pub(crate) const NODE_ID_HANG: NodeId = u32::MAX;
pub(crate) const PANIC_TRANSFER_ID: u128 = 0xdead;

impl Handler for TestHandler {
    async fn handle(&self, request: Message) -> Message {
        match request {
            Message::Transfer(transfer) => {
                if transfer.amount > 1 && transfer.amount < 10_000 {
                    tokio::time::sleep(Duration::from_millis(transfer.amount)).await;
                }
                TransferResult {
                    id: transfer.id,
                    outcome: TransferOutcome::Committed,
                }
                .into()
            }
            Message::Heartbeat(heartbeat) if heartbeat.node_id == NODE_ID_HANG => {
                std::future::pending().await
            }
            Message::GetTransferStatus(status) if status.id == PANIC_TRANSFER_ID => {
                panic!("the test handler panics on request")
            }
            Message::GetBalance(get) => Balance {
                account: get.account,
                balance: get.account.wrapping_mul(2),
            }
            .into(),
            _ => ErrorResponse::new(
                ErrorCode::InvalidArgument,
                "not supported by the test handler",
            )
            .into(),
        }
    }
}

pub(crate) fn hang_request() -> Heartbeat {
    Heartbeat {
        node_id: NODE_ID_HANG,
        last_lsn: 0,
        in_doubt_count: 0,
        uptime_seconds: 0,
    }
}
