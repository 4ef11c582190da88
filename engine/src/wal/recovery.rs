//! Opening the log: scan every segment, check every record, decide torn tail versus corruption.
//!
//! The rules (ARCHITECTURE.md, "Recovery", has the crash analysis behind them):
//! - spare files (`*.tmp`) are leftovers of preallocation and are deleted, once the segments
//!   checked out: a log that is refused (corruption, newer format version) is left unmodified;
//! - segments must be contiguous: each one's first LSN is the previous one's last LSN + 1;
//! - records inside a segment have dense LSNs starting at the segment's first LSN;
//! - a segment with a successor was synced in full before the successor existed, so anything
//!   wrong in it is corruption;
//! - in the last segment, a bad or short record followed by nothing valid is a torn tail: it is
//!   zeroed (a log line says how many bytes) and writing resumes there; followed by a valid record
//!   it is corruption, and opening fails naming segment and offset. Nothing is skipped silently.

use crate::wal::format::{self, Decoded, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE, SegmentHeader};
use crate::wal::storage::{Storage, StorageFile};
use crate::wal::writer::{self, ActiveSegment, SPARE_SUFFIX};
use crate::wal::{
    FORMAT_VERSION, Lsn, Segment, SyncPolicy, WalError, WalOptions, parse_segment_name,
};

/// What opening the log found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    /// Oldest LSN in the log.
    pub first_lsn: Lsn,
    /// Newest valid record's LSN (`first_lsn - 1` when the log is empty).
    pub last_lsn: Lsn,
    pub records_scanned: u64,
    /// Bytes of a torn last write that were zeroed.
    pub torn_bytes_dropped: u64,
    pub spare_files_removed: usize,
}

pub(crate) struct Recovered<F> {
    pub(crate) report: RecoveryReport,
    pub(crate) segments: Vec<Segment<F>>,
    pub(crate) active: Segment<F>,
    pub(crate) write_offset: u64,
    pub(crate) capacity: u64,
}

/// A record LSN this far past the expected one is taken for noise when looking for valid
/// records after a bad one, which keeps random bytes from passing for a record.
const PLAUSIBLE_LSN_DISTANCE_MAX: u64 = 1 << 32;

fn corrupt(segment: &str, offset: usize, reason: impl Into<String>) -> WalError {
    WalError::Corrupt {
        segment: segment.to_owned(),
        offset: offset as u64,
        reason: reason.into(),
    }
}

pub(crate) fn recover<S: Storage>(
    storage: &S,
    options: &WalOptions,
) -> Result<Recovered<S::File>, WalError> {
    let mut spares = Vec::new();
    let mut named = Vec::new();
    for name in storage.list()? {
        if name.ends_with(SPARE_SUFFIX) {
            spares.push(name);
        } else if let Some(first_lsn) = parse_segment_name(&name) {
            named.push((first_lsn, name));
        } else {
            tracing::warn!(file = %name, "ignoring a file that is not a WAL segment");
        }
    }
    named.sort();

    if named.is_empty() {
        let spare_files_removed = remove_spares(storage, &spares)?;
        return create_first_segment(storage, options, spare_files_removed);
    }

    let mut spare_files_removed = 0;
    let mut segments = Vec::with_capacity(named.len());
    let mut buffer = Vec::new();
    let mut next_lsn: Option<Lsn> = None;
    let mut records_scanned = 0;
    let mut torn_bytes_dropped = 0;
    let mut write_offset = 0;
    let mut capacity = 0;
    for (index, (name_lsn, name)) in named.iter().enumerate() {
        let is_last = index + 1 == named.len();
        let file = storage.open(name)?;
        let length = file.size_bytes()?;
        if length < SEGMENT_HEADER_SIZE as u64 {
            return Err(corrupt(name, 0, "file shorter than a segment header"));
        }
        buffer.resize(length as usize, 0);
        file.read_exact_at(0, &mut buffer)?;
        let first_lsn = match format::decode_segment_header(&buffer) {
            SegmentHeader::Valid { first_lsn } => first_lsn,
            SegmentHeader::UnsupportedVersion { version } => {
                return Err(WalError::UnsupportedVersion {
                    segment: name.clone(),
                    version,
                    supported: FORMAT_VERSION,
                });
            }
            SegmentHeader::Invalid => return Err(corrupt(name, 0, "bad segment header")),
        };
        if first_lsn != *name_lsn {
            return Err(corrupt(
                name,
                0,
                format!("header says first LSN {first_lsn}"),
            ));
        }
        if let Some(expected) = next_lsn {
            if first_lsn != expected {
                return Err(corrupt(
                    name,
                    0,
                    format!("segment starts at LSN {first_lsn} but LSN {expected} was expected"),
                ));
            }
        }

        let mut lsn = first_lsn;
        let mut offset = SEGMENT_HEADER_SIZE;
        let problem = loop {
            match format::decode_record(&buffer[offset..]) {
                Decoded::Record {
                    lsn: record_lsn,
                    size,
                    ..
                } => {
                    if record_lsn != lsn {
                        return Err(corrupt(
                            name,
                            offset,
                            format!("record has LSN {record_lsn} where {lsn} was expected"),
                        ));
                    }
                    lsn += 1;
                    offset += size;
                    records_scanned += 1;
                }
                Decoded::End => break "zeroes",
                Decoded::Short => break "a record cut short",
                Decoded::Bad => break "a bad record (CRC mismatch or invalid header)",
            }
        };
        if let Some(later) = find_valid_record_after(&buffer, offset, lsn) {
            return Err(corrupt(
                name,
                offset,
                format!("{problem} followed by a valid record at offset {later}"),
            ));
        }
        if let Some(dirty_length) = buffer[offset..].iter().rposition(|&byte| byte != 0) {
            let dirty_length = dirty_length + 1;
            if !is_last {
                return Err(corrupt(
                    name,
                    offset,
                    format!("{problem} in a segment that has a successor"),
                ));
            }
            file.write_at(offset as u64, &vec![0u8; dirty_length])?;
            torn_bytes_dropped += dirty_length as u64;
            tracing::warn!(
                segment = %name,
                offset,
                dropped_bytes = dirty_length,
                "truncated a torn WAL tail ({problem})"
            );
        }
        if is_last {
            // Every check that could refuse the log has passed (a refused log is left exactly
            // as found, spare files included): now the spares go.
            spare_files_removed = remove_spares(storage, &spares)?;
            // After a process crash the tail may be only in the page cache: make it durable
            // before anyone acts on what was read back.
            if options.sync_policy == SyncPolicy::FdatasyncPerGroup {
                file.sync_data()?;
                storage.sync_dir()?;
            }
            write_offset = offset as u64;
            capacity = length;
        }
        segments.push(Segment {
            first_lsn,
            name: name.clone(),
            file,
        });
        next_lsn = Some(lsn);
    }
    let active = segments.last().expect("at least one segment").clone();
    let report = RecoveryReport {
        segments: segments.len(),
        first_lsn: segments[0].first_lsn,
        last_lsn: next_lsn.expect("set by the loop") - 1,
        records_scanned,
        torn_bytes_dropped,
        spare_files_removed,
    };
    Ok(Recovered {
        report,
        segments,
        active,
        write_offset,
        capacity,
    })
}

fn create_first_segment<S: Storage>(
    storage: &S,
    options: &WalOptions,
    spare_files_removed: usize,
) -> Result<Recovered<S::File>, WalError> {
    let spare_name = format!("spare-000000{SPARE_SUFFIX}");
    let file = writer::prepare_spare(
        storage,
        &spare_name,
        options.segment_size_bytes,
        options.sync_policy,
        &|| false,
    )?
    .expect("never stopped");
    let ActiveSegment {
        segment,
        write_offset,
        capacity,
    } = writer::install_segment(storage, &spare_name, file, 1, options.sync_policy)?;
    let report = RecoveryReport {
        segments: 1,
        first_lsn: 1,
        last_lsn: 0,
        records_scanned: 0,
        torn_bytes_dropped: 0,
        spare_files_removed,
    };
    Ok(Recovered {
        report,
        segments: vec![segment.clone()],
        active: segment,
        write_offset,
        capacity,
    })
}

/// Deletes the spare files left by preallocation; returns how many.
fn remove_spares<S: Storage>(storage: &S, spares: &[String]) -> Result<usize, WalError> {
    for name in spares {
        storage.remove(name)?;
    }
    Ok(spares.len())
}

/// Offset of a valid record past `offset` whose LSN could belong to this log, if any.
fn find_valid_record_after(buffer: &[u8], offset: usize, next_lsn: Lsn) -> Option<usize> {
    let kind_offset = RECORD_HEADER_SIZE - 1;
    let mut position = offset + 1;
    while position + RECORD_HEADER_SIZE <= buffer.len() {
        // Every record has a non-zero kind byte, so jump to the next candidate whose kind byte is
        // non-zero: zero-filled space is crossed without decoding.
        let nonzero = buffer[position + kind_offset..]
            .iter()
            .position(|&byte| byte != 0)?;
        position += nonzero;
        if let Decoded::Record { lsn, .. } = format::decode_record(&buffer[position..]) {
            if lsn >= next_lsn && lsn - next_lsn < PLAUSIBLE_LSN_DISTANCE_MAX {
                return Some(position);
            }
        }
        position += 1;
    }
    None
}
