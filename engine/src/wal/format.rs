//! Byte layout of WAL segment headers and records: the one place that encodes and decodes them.
//!
//! Everything is little-endian. The layout is also described in ARCHITECTURE.md ("WAL format");
//! the two must agree.
//!
//! Segment header (`SEGMENT_HEADER_SIZE` bytes, at offset 0 of every segment file):
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! |      0 |    8 | magic `b"TALLYWAL"`                               |
//! |      8 |    4 | format version (`FORMAT_VERSION`)                 |
//! |     12 |    4 | reserved, zero                                    |
//! |     16 |    8 | first LSN of the segment                          |
//! |     24 |    4 | CRC32 (crc32fast, IEEE) of bytes 0..24            |
//! |     28 |    4 | reserved, zero                                    |
//!
//! Record (`RECORD_HEADER_SIZE` + payload bytes, records packed back to back after the header):
//!
//! | offset | size | field                                                      |
//! |-------:|-----:|------------------------------------------------------------|
//! |      0 |    4 | payload length in bytes                                    |
//! |      4 |    4 | CRC32 of bytes 0..4 followed by bytes 8..17+length         |
//! |      8 |    8 | LSN                                                        |
//! |     16 |    1 | kind (never 0: a zero header marks the end of the records) |
//! |     17 |    n | payload                                                    |
//!
//! The unused tail of a segment is zero-filled (segments are pre-allocated with real writes), so a
//! record header whose bytes are all zero is the end of the written records.

use crate::wal::Lsn;

pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"TALLYWAL";
/// The segment format this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

const SEGMENT_MAGIC_OFFSET: usize = 0;
const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + SEGMENT_MAGIC.len();
const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_VERSION_OFFSET + 4;
const SEGMENT_FIRST_LSN_OFFSET: usize = SEGMENT_RESERVED_OFFSET + 4;
const SEGMENT_CRC_OFFSET: usize = SEGMENT_FIRST_LSN_OFFSET + 8;
const SEGMENT_PADDING_OFFSET: usize = SEGMENT_CRC_OFFSET + 4;
/// Size of the header at the start of every segment; records start right after it.
pub const SEGMENT_HEADER_SIZE: usize = SEGMENT_PADDING_OFFSET + 4;

const RECORD_LENGTH_OFFSET: usize = 0;
const RECORD_CRC_OFFSET: usize = RECORD_LENGTH_OFFSET + 4;
const RECORD_LSN_OFFSET: usize = RECORD_CRC_OFFSET + 4;
const RECORD_KIND_OFFSET: usize = RECORD_LSN_OFFSET + 8;
/// Size of a record's fixed part; the payload follows it.
pub const RECORD_HEADER_SIZE: usize = RECORD_KIND_OFFSET + 1;

/// The largest payload one record may carry. Bounded so that a corrupt length can never make a
/// reader allocate or scan more than this, and so that any record fits in a minimal segment.
pub const RECORD_PAYLOAD_SIZE_MAX_BYTES: u32 = 1024 * 1024;

/// Result of decoding the segment header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SegmentHeader {
    Valid {
        first_lsn: Lsn,
    },
    /// Magic and CRC are right but the version is one this build does not know.
    UnsupportedVersion {
        version: u32,
    },
    Invalid,
}

pub(crate) fn encode_segment_header(first_lsn: Lsn) -> [u8; SEGMENT_HEADER_SIZE] {
    let mut header = [0u8; SEGMENT_HEADER_SIZE];
    header[SEGMENT_MAGIC_OFFSET..SEGMENT_VERSION_OFFSET].copy_from_slice(&SEGMENT_MAGIC);
    header[SEGMENT_VERSION_OFFSET..SEGMENT_RESERVED_OFFSET]
        .copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[SEGMENT_FIRST_LSN_OFFSET..SEGMENT_CRC_OFFSET].copy_from_slice(&first_lsn.to_le_bytes());
    let crc = crc32fast::hash(&header[..SEGMENT_CRC_OFFSET]);
    header[SEGMENT_CRC_OFFSET..SEGMENT_PADDING_OFFSET].copy_from_slice(&crc.to_le_bytes());
    header
}

pub(crate) fn decode_segment_header(bytes: &[u8]) -> SegmentHeader {
    if bytes.len() < SEGMENT_HEADER_SIZE
        || bytes[SEGMENT_MAGIC_OFFSET..SEGMENT_VERSION_OFFSET] != SEGMENT_MAGIC
    {
        return SegmentHeader::Invalid;
    }
    // The padding after the CRC is not covered by it, so it must be exactly zero.
    if bytes[SEGMENT_PADDING_OFFSET..SEGMENT_HEADER_SIZE]
        .iter()
        .any(|&byte| byte != 0)
    {
        return SegmentHeader::Invalid;
    }
    let stored_crc = read_u32(bytes, SEGMENT_CRC_OFFSET);
    if crc32fast::hash(&bytes[..SEGMENT_CRC_OFFSET]) != stored_crc {
        return SegmentHeader::Invalid;
    }
    let version = read_u32(bytes, SEGMENT_VERSION_OFFSET);
    if version != FORMAT_VERSION {
        return SegmentHeader::UnsupportedVersion { version };
    }
    SegmentHeader::Valid {
        first_lsn: read_u64(bytes, SEGMENT_FIRST_LSN_OFFSET),
    }
}

/// Bytes a record with this payload occupies in a segment.
pub(crate) fn encoded_record_size(payload_len: usize) -> usize {
    RECORD_HEADER_SIZE + payload_len
}

/// Appends one encoded record to `out`. The caller has checked kind != 0 and the payload bound.
pub(crate) fn encode_record(out: &mut Vec<u8>, lsn: Lsn, kind: u8, payload: &[u8]) {
    assert!(
        kind != 0,
        "record kind 0 is reserved for the zero-filled tail"
    );
    assert!(payload.len() <= RECORD_PAYLOAD_SIZE_MAX_BYTES as usize);
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
    let crc = record_crc(&out[start..]);
    out[start + RECORD_CRC_OFFSET..start + RECORD_LSN_OFFSET].copy_from_slice(&crc.to_le_bytes());
}

fn record_crc(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[RECORD_LENGTH_OFFSET..RECORD_CRC_OFFSET]);
    hasher.update(&record[RECORD_LSN_OFFSET..]);
    hasher.finalize()
}

/// What sits at some offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole record whose CRC checks.
    Record {
        lsn: Lsn,
        kind: u8,
        payload: &'a [u8],
        size: usize,
    },
    /// A record header of all zeroes: the end of the written records.
    End,
    /// Fewer bytes than the header or its declared length: cut short.
    Short,
    /// The bytes are not a valid record (bad CRC, length over the bound, kind 0).
    Bad,
}

/// Decodes the record at the start of `bytes` (the rest of the segment, or as much as is known).
/// `Short` means the bytes end before the record does; a reader that has more bytes should retry.
pub(crate) fn decode_record(bytes: &[u8]) -> Decoded<'_> {
    if bytes.len() < RECORD_HEADER_SIZE {
        if bytes.iter().all(|&b| b == 0) {
            return Decoded::End;
        }
        return Decoded::Short;
    }
    let header = &bytes[..RECORD_HEADER_SIZE];
    if header.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let payload_len = read_u32(bytes, RECORD_LENGTH_OFFSET);
    let kind = header[RECORD_KIND_OFFSET];
    if payload_len > RECORD_PAYLOAD_SIZE_MAX_BYTES || kind == 0 {
        return Decoded::Bad;
    }
    let size = encoded_record_size(payload_len as usize);
    if bytes.len() < size {
        return Decoded::Short;
    }
    let stored_crc = read_u32(bytes, RECORD_CRC_OFFSET);
    if record_crc(&bytes[..size]) != stored_crc {
        return Decoded::Bad;
    }
    Decoded::Record {
        lsn: read_u64(bytes, RECORD_LSN_OFFSET),
        kind,
        payload: &bytes[RECORD_HEADER_SIZE..size],
        size,
    }
}

/// The size of the record starting at `bytes`, read from its length field without checking it.
/// Only for buffers this process encoded itself (the writer splitting a group at a boundary).
pub(crate) fn trusted_record_size(bytes: &[u8]) -> usize {
    encoded_record_size(read_u32(bytes, RECORD_LENGTH_OFFSET) as usize)
}

/// The LSN of the record starting at `bytes`, without checking it (same trust as above).
pub(crate) fn trusted_record_lsn(bytes: &[u8]) -> Lsn {
    read_u64(bytes, RECORD_LSN_OFFSET)
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let mut out = Vec::new();
        encode_record(&mut out, 42, 7, b"hello");
        assert_eq!(out.len(), encoded_record_size(5));
        assert_eq!(
            decode_record(&out),
            Decoded::Record {
                lsn: 42,
                kind: 7,
                payload: b"hello",
                size: out.len()
            }
        );
        assert_eq!(trusted_record_size(&out), out.len());
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut out = Vec::new();
        encode_record(&mut out, 9, 3, b"payload bytes");
        for bit in 0..out.len() * 8 {
            let mut damaged = out.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_record(&damaged), Decoded::Record { .. }),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroes_are_the_end_and_prefixes_are_short() {
        assert_eq!(decode_record(&[0u8; 64]), Decoded::End);
        assert_eq!(decode_record(&[]), Decoded::End);
        let mut out = Vec::new();
        encode_record(&mut out, 1, 1, &[5u8; 40]);
        for cut in 1..out.len() {
            let decoded = decode_record(&out[..cut]);
            assert!(
                matches!(decoded, Decoded::Short | Decoded::End),
                "cut {cut}: {decoded:?}"
            );
        }
    }

    #[test]
    fn segment_header_round_trip_and_version_check() {
        let header = encode_segment_header(1234);
        assert_eq!(
            decode_segment_header(&header),
            SegmentHeader::Valid { first_lsn: 1234 }
        );
        let mut newer = header;
        newer[SEGMENT_VERSION_OFFSET..SEGMENT_RESERVED_OFFSET].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&newer[..SEGMENT_CRC_OFFSET]);
        newer[SEGMENT_CRC_OFFSET..SEGMENT_PADDING_OFFSET].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_segment_header(&newer),
            SegmentHeader::UnsupportedVersion { version: 2 }
        );
        let mut damaged = header;
        damaged[17] ^= 1;
        assert_eq!(decode_segment_header(&damaged), SegmentHeader::Invalid);
    }
}
