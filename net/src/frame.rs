//! The one frame type: a fixed 24-byte header followed by a message body, checked and parsed in
//! exactly one place.
//!
//! Header layout (all integers little-endian; mirrored in `docs/protocol.md`):
//!
//! | offset | size | field                                                    |
//! |--------|------|----------------------------------------------------------|
//! | 0      | 4    | magic, the bytes `T A L Y`                               |
//! | 4      | 1    | protocol version, 2 (1 only in an error frame)           |
//! | 5      | 1    | flags, 0 (reserved: senders write 0, receivers ignore)   |
//! | 6      | 2    | kind (`MessageKind`)                                     |
//! | 8      | 8    | request id, echoed by the response                       |
//! | 16     | 4    | body size in bytes, at most `FRAME_BODY_SIZE_MAX_BYTES`  |
//! | 20     | 4    | CRC-32 (IEEE) over header bytes 0..20, then the body     |
//!
//! Decoding is two steps, as in mini-redis: [`Frame::check`] looks at the buffered bytes without
//! allocating and says whether a whole frame is there (rejecting bad magic, versions and sizes as
//! soon as the header shows them, before the body is ever buffered); [`Frame::parse`] then verifies
//! the checksum and decodes the body.

use bytes::{Buf, BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::message::{ErrorCode, Message, MessageKind};
use crate::wire::Reader;

/// `T A L Y` read as a little-endian `u32`.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"TALY");
/// The protocol version this build speaks and writes (docs/protocol.md section 10 says what each
/// version added).
pub const PROTOCOL_VERSION: u8 = 2;
/// The version of an error frame that every version reads (docs/protocol.md section 10): an
/// `UnsupportedVersion` reply is written in it, and a version-1 frame is read if and only if it
/// is an `ErrorResponse`, whose header and body layouts are frozen.
const FROZEN_ERROR_FRAME_VERSION: u8 = 1;

const HEADER_MAGIC_OFFSET: usize = 0;
const HEADER_MAGIC_SIZE: usize = 4;
const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + HEADER_MAGIC_SIZE;
const HEADER_VERSION_SIZE: usize = 1;
const HEADER_FLAGS_OFFSET: usize = HEADER_VERSION_OFFSET + HEADER_VERSION_SIZE;
const HEADER_FLAGS_SIZE: usize = 1;
const HEADER_KIND_OFFSET: usize = HEADER_FLAGS_OFFSET + HEADER_FLAGS_SIZE;
const HEADER_KIND_SIZE: usize = 2;
const HEADER_REQUEST_ID_OFFSET: usize = HEADER_KIND_OFFSET + HEADER_KIND_SIZE;
const HEADER_REQUEST_ID_SIZE: usize = 8;
const HEADER_BODY_SIZE_OFFSET: usize = HEADER_REQUEST_ID_OFFSET + HEADER_REQUEST_ID_SIZE;
const HEADER_BODY_SIZE_SIZE: usize = 4;
const HEADER_CHECKSUM_OFFSET: usize = HEADER_BODY_SIZE_OFFSET + HEADER_BODY_SIZE_SIZE;
const HEADER_CHECKSUM_SIZE: usize = 4;

/// Size of the fixed header in bytes.
pub const FRAME_HEADER_SIZE_BYTES: u32 = (HEADER_CHECKSUM_OFFSET + HEADER_CHECKSUM_SIZE) as u32;
/// Largest body a peer may send. A maximal `PrepareBatch` (4096 entries of 8 ops) is 901 128 bytes.
pub const FRAME_BODY_SIZE_MAX_BYTES: u32 = 1024 * 1024;
/// Largest whole frame, header included.
pub const FRAME_SIZE_MAX_BYTES: u32 = FRAME_HEADER_SIZE_BYTES + FRAME_BODY_SIZE_MAX_BYTES;

const _: () = assert!(FRAME_HEADER_SIZE_BYTES == 24);

/// A request or response: the request id that pairs them, and the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub request_id: u64,
    pub message: Message,
}

/// What [`Frame::check`] found in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCheck {
    /// A whole frame of this many bytes (header included) starts the buffer.
    Complete { frame_size_bytes: u32 },
    /// More bytes are needed; not an error.
    Incomplete,
}

fn read_u16(buf: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([buf[offset], buf[offset + 1]])
}

fn read_u32(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(buf[offset..offset + 4].try_into().expect("4 bytes"))
}

fn read_u64(buf: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(buf[offset..offset + 8].try_into().expect("8 bytes"))
}

impl Frame {
    pub fn new(request_id: u64, message: impl Into<Message>) -> Frame {
        Frame {
            request_id,
            message: message.into(),
        }
    }

    /// Whether `buf` starts with a whole frame. Never allocates. Fails as soon as the bytes seen
    /// so far cannot start a valid frame: bad magic, unsupported version, or a body size over the
    /// limit, so a hostile length is refused before anything is buffered for it.
    pub fn check(buf: &[u8]) -> Result<FrameCheck, DecodeError> {
        let magic_end = HEADER_MAGIC_OFFSET + HEADER_MAGIC_SIZE;
        if buf.len() >= magic_end {
            let magic = read_u32(buf, HEADER_MAGIC_OFFSET);
            if magic != FRAME_MAGIC {
                return Err(DecodeError::BadMagic { found: magic });
            }
        } else if buf
            .iter()
            .zip(FRAME_MAGIC.to_le_bytes())
            .any(|(byte, expected)| *byte != expected)
        {
            // A partial magic that is already wrong is refused now rather than after a wait.
            let mut found = [0_u8; 4];
            found[..buf.len()].copy_from_slice(buf);
            return Err(DecodeError::BadMagic {
                found: u32::from_le_bytes(found),
            });
        }
        if buf.len() > HEADER_VERSION_OFFSET {
            let version = buf[HEADER_VERSION_OFFSET];
            let kind_end = HEADER_KIND_OFFSET + HEADER_KIND_SIZE;
            // A version-1 frame is refused as soon as its kind shows it is not an error frame.
            let supported = version == PROTOCOL_VERSION
                || (version == FROZEN_ERROR_FRAME_VERSION
                    && (buf.len() < kind_end
                        || read_u16(buf, HEADER_KIND_OFFSET) == MessageKind::ErrorResponse.code()));
            if !supported {
                return Err(DecodeError::UnsupportedVersion { version });
            }
        }
        if buf.len() < FRAME_HEADER_SIZE_BYTES as usize {
            return Ok(FrameCheck::Incomplete);
        }
        let body_size_bytes = read_u32(buf, HEADER_BODY_SIZE_OFFSET);
        if body_size_bytes > FRAME_BODY_SIZE_MAX_BYTES {
            return Err(DecodeError::TooLarge { body_size_bytes });
        }
        let frame_size_bytes = FRAME_HEADER_SIZE_BYTES + body_size_bytes;
        if buf.len() < frame_size_bytes as usize {
            return Ok(FrameCheck::Incomplete);
        }
        Ok(FrameCheck::Complete { frame_size_bytes })
    }

    /// The request id of the frame starting `buf`, if its header is buffered, so an error frame
    /// answering a malformed request can still name the request.
    pub fn peek_request_id(buf: &[u8]) -> Option<u64> {
        let header_size = FRAME_HEADER_SIZE_BYTES as usize;
        (buf.len() >= header_size && read_u32(buf, HEADER_MAGIC_OFFSET) == FRAME_MAGIC)
            .then(|| read_u64(buf, HEADER_REQUEST_ID_OFFSET))
    }

    /// Parses exactly one frame that [`Frame::check`] reported `Complete`: verifies the checksum,
    /// the kind, and that the body is consumed exactly.
    pub fn parse(frame: &[u8]) -> Result<Frame, DecodeError> {
        let frame_size_bytes = match Frame::check(frame)? {
            FrameCheck::Complete { frame_size_bytes } => frame_size_bytes as usize,
            FrameCheck::Incomplete => return Err(DecodeError::Truncated { field: "frame" }),
        };
        if frame.len() != frame_size_bytes {
            let unread_bytes = u32::try_from(frame.len() - frame_size_bytes).unwrap_or(u32::MAX);
            return Err(DecodeError::TrailingBytes { unread_bytes });
        }
        let expected = read_u32(frame, HEADER_CHECKSUM_OFFSET);
        let computed = checksum(
            &frame[..HEADER_CHECKSUM_OFFSET],
            &frame[FRAME_HEADER_SIZE_BYTES as usize..],
        );
        if expected != computed {
            return Err(DecodeError::ChecksumMismatch { expected, computed });
        }
        let kind_code = read_u16(frame, HEADER_KIND_OFFSET);
        let kind = MessageKind::from_code(kind_code)
            .ok_or(DecodeError::UnknownKind { kind: kind_code })?;
        let request_id = read_u64(frame, HEADER_REQUEST_ID_OFFSET);
        let mut reader = Reader::new(&frame[FRAME_HEADER_SIZE_BYTES as usize..]);
        let message = Message::decode_body(kind, &mut reader)?;
        let unread_bytes = reader.remaining_bytes();
        if unread_bytes != 0 {
            return Err(DecodeError::TrailingBytes { unread_bytes });
        }
        Ok(Frame {
            request_id,
            message,
        })
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` if it is not all there
    /// yet. On error the buffer is left as it was; the connection is expected to close.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match Frame::check(buf)? {
            FrameCheck::Incomplete => Ok(None),
            FrameCheck::Complete { frame_size_bytes } => {
                let frame = Frame::parse(&buf[..frame_size_bytes as usize])?;
                buf.advance(frame_size_bytes as usize);
                Ok(Some(frame))
            }
        }
    }

    /// Appends this frame to `buf`. On error `buf` is left as it was.
    pub fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        let start = buf.len();
        buf.reserve(FRAME_HEADER_SIZE_BYTES as usize + 64);
        buf.put_u32_le(FRAME_MAGIC);
        buf.put_u8(self.version_on_wire());
        buf.put_u8(0);
        buf.put_u16_le(self.message.kind().code());
        buf.put_u64_le(self.request_id);
        buf.put_u32_le(0); // Body size, patched below once known.
        buf.put_u32_le(0); // Checksum, patched below once the body is written.
        let body_start = buf.len();
        if let Err(error) = self.message.encode_body(buf) {
            buf.truncate(start);
            return Err(error);
        }
        let body_size_bytes = (buf.len() - body_start) as u64;
        if body_size_bytes > u64::from(FRAME_BODY_SIZE_MAX_BYTES) {
            buf.truncate(start);
            return Err(EncodeError::TooLarge { body_size_bytes });
        }
        let frame = &mut buf[start..];
        frame[HEADER_BODY_SIZE_OFFSET..HEADER_BODY_SIZE_OFFSET + HEADER_BODY_SIZE_SIZE]
            .copy_from_slice(&(body_size_bytes as u32).to_le_bytes());
        let crc = checksum(
            &frame[..HEADER_CHECKSUM_OFFSET],
            &frame[FRAME_HEADER_SIZE_BYTES as usize..],
        );
        frame[HEADER_CHECKSUM_OFFSET..HEADER_CHECKSUM_OFFSET + HEADER_CHECKSUM_SIZE]
            .copy_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(
            Frame::check(frame),
            Ok(FrameCheck::Complete {
                frame_size_bytes: frame.len() as u32
            })
        );
        Ok(())
    }

    /// The header's version byte: `PROTOCOL_VERSION`, except for an `UnsupportedVersion` reply,
    /// which is written in the frozen version 1 so that a peer of any version can read it.
    fn version_on_wire(&self) -> u8 {
        match &self.message {
            Message::ErrorResponse(error) if error.code == ErrorCode::UnsupportedVersion => {
                FROZEN_ERROR_FRAME_VERSION
            }
            _ => PROTOCOL_VERSION,
        }
    }

    /// Encodes into a fresh buffer; convenient for tests and one-off frames.
    pub fn to_bytes(&self) -> Result<BytesMut, EncodeError> {
        let mut buf = BytesMut::new();
        self.encode(&mut buf)?;
        Ok(buf)
    }
}

fn checksum(header_before_checksum: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header_before_checksum);
    hasher.update(body);
    hasher.finalize()
}
