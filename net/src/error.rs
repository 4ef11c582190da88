//! Typed failures of encoding and decoding frames; malformed input from a peer is always one of
//! these values, never a panic.

use crate::frame::{FRAME_BODY_SIZE_MAX_BYTES, PROTOCOL_VERSION};
use crate::message::ErrorCode;

/// Why bytes received from a peer are not a valid frame. Every variant closes the connection after
/// the error frame named by [`DecodeError::error_code`] has been sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {found:#010x}")]
    BadMagic { found: u32 },
    #[error("unsupported protocol version {version} (version {PROTOCOL_VERSION} is spoken here)")]
    UnsupportedVersion { version: u8 },
    #[error(
        "frame body of {body_size_bytes} bytes exceeds the maximum of {FRAME_BODY_SIZE_MAX_BYTES}"
    )]
    TooLarge { body_size_bytes: u32 },
    #[error("checksum mismatch: header says {expected:#010x}, content hashes to {computed:#010x}")]
    ChecksumMismatch { expected: u32, computed: u32 },
    #[error("unknown message kind {kind:#06x}")]
    UnknownKind { kind: u16 },
    #[error("body ends before {field} is complete")]
    Truncated { field: &'static str },
    #[error("{unread_bytes} bytes left over after the message body")]
    TrailingBytes { unread_bytes: u32 },
    #[error("invalid value for {field}")]
    InvalidValue { field: &'static str },
    #[error("{field} has {count} entries, more than the maximum of {max}")]
    TooManyEntries {
        field: &'static str,
        count: u32,
        max: u32,
    },
    #[error("{field} is {size_bytes} bytes, more than the maximum of {max}")]
    StringTooLong {
        field: &'static str,
        size_bytes: u16,
        max: u32,
    },
    #[error("{field} is {size_bytes} bytes, more than the maximum of {max}")]
    BytesTooLong {
        field: &'static str,
        size_bytes: u32,
        max: u32,
    },
}

impl DecodeError {
    /// The code of the error frame sent back before closing the connection.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::TooLarge { .. } => ErrorCode::TooLarge,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Why a message cannot be put on the wire: it breaks a limit the receiver would reject anyway, so
/// we refuse it at the sender where the bug is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} has {count} entries, more than the maximum of {max}")]
    TooManyEntries {
        field: &'static str,
        count: u64,
        max: u32,
    },
    #[error("{field} is {size_bytes} bytes, more than the maximum of {max}")]
    StringTooLong {
        field: &'static str,
        size_bytes: u64,
        max: u32,
    },
    #[error("{field} is {size_bytes} bytes, more than the maximum of {max}")]
    BytesTooLong {
        field: &'static str,
        size_bytes: u64,
        max: u32,
    },
    #[error(
        "frame body of {body_size_bytes} bytes exceeds the maximum of {FRAME_BODY_SIZE_MAX_BYTES}"
    )]
    TooLarge { body_size_bytes: u64 },
}
