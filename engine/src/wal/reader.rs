//! Reading durable records from any LSN on: replay at start-up, and later log shipping.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::wal::format::{self, Decoded, RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE};
use crate::wal::storage::{Storage, StorageFile};
use crate::wal::{Lsn, Segment, Shared, WalError, lock};

/// Bytes read from a segment file at a time.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// One record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub lsn: Lsn,
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Iterator over durable records, from the LSN given to [`crate::wal::Wal::read_from`] up to the
/// durable LSN at the time it was created. A record that fails its check is an `Err` and ends the
/// iteration. It holds its segments open, so truncation behind it does not disturb it.
pub struct WalReader<S: Storage> {
    segments: Vec<Segment<S::File>>,
    segment_index: usize,
    segment_capacity: u64,
    /// LSN of the next record to decode.
    next_lsn: Lsn,
    from_lsn: Lsn,
    end_lsn: Lsn,
    /// File offset of the next record in the current segment.
    offset: u64,
    chunk: Vec<u8>,
    chunk_start: u64,
    finished: bool,
}

impl<S: Storage> WalReader<S> {
    pub(crate) fn new(shared: Arc<Shared<S>>, from_lsn: Lsn) -> Result<Self, WalError> {
        let end_lsn = shared.durable_lsn.load(Ordering::Acquire);
        let all_segments = lock(&shared.segments).clone();
        let first = all_segments.first().map_or(1, |segment| segment.first_lsn);
        if from_lsn < first {
            return Err(WalError::Truncated {
                requested: from_lsn,
                first,
            });
        }
        if from_lsn > end_lsn + 1 {
            return Err(WalError::NotYetDurable {
                requested: from_lsn,
                durable: end_lsn,
            });
        }
        let start = all_segments
            .partition_point(|segment| segment.first_lsn <= from_lsn)
            .max(1)
            - 1;
        let segments = all_segments[start..].to_vec();
        let mut reader = Self {
            next_lsn: segments[0].first_lsn,
            segments,
            segment_index: 0,
            segment_capacity: 0,
            from_lsn,
            end_lsn,
            offset: SEGMENT_HEADER_SIZE as u64,
            chunk: Vec::new(),
            chunk_start: 0,
            finished: false,
        };
        reader.segment_capacity = reader.segments[0].file.size_bytes()?;
        Ok(reader)
    }

    fn corrupt(&self, reason: impl Into<String>) -> WalError {
        WalError::Corrupt {
            segment: self.segments[self.segment_index].name.clone(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Makes the chunk cover `needed` bytes from the current offset, or as many as the segment
    /// has. Returns the bytes available from the offset.
    fn fill(&mut self, needed: usize) -> Result<&[u8], WalError> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        let wanted_end = (self.offset + needed as u64).min(self.segment_capacity);
        if self.offset < self.chunk_start || wanted_end > chunk_end {
            let length =
                (needed.max(READ_CHUNK_BYTES) as u64).min(self.segment_capacity - self.offset);
            self.chunk.resize(length as usize, 0);
            self.segments[self.segment_index]
                .file
                .read_exact_at(self.offset, &mut self.chunk)?;
            self.chunk_start = self.offset;
        }
        Ok(&self.chunk[(self.offset - self.chunk_start) as usize..])
    }

    fn next_record(&mut self) -> Result<Option<Record>, WalError> {
        loop {
            if self.next_lsn > self.end_lsn {
                return Ok(None);
            }
            let mut needed = RECORD_HEADER_SIZE;
            let decoded = loop {
                let segment_remaining = self.segment_capacity - self.offset;
                let available = self.fill(needed)?;
                if available.len() < RECORD_HEADER_SIZE {
                    // `fill` gives at least `needed` bytes unless the segment ends first.
                    if available.iter().all(|&byte| byte == 0) {
                        break None;
                    }
                    return Err(self.corrupt("record cut short by the end of the segment"));
                }
                match format::decode_record(available) {
                    Decoded::Record {
                        lsn,
                        kind,
                        payload,
                        size,
                    } => {
                        break Some((lsn, kind, payload.to_vec(), size));
                    }
                    Decoded::End => break None,
                    Decoded::Short => {
                        let size = format::trusted_record_size(available);
                        if size as u64 > segment_remaining {
                            return Err(self.corrupt("record runs past the end of the segment"));
                        }
                        needed = size;
                    }
                    Decoded::Bad => {
                        return Err(self.corrupt("bad record within the durable part of the log"));
                    }
                }
            };
            let Some((lsn, kind, payload, size)) = decoded else {
                // End of this segment's records: the next one must continue the sequence.
                self.segment_index += 1;
                let Some(segment) = self.segments.get(self.segment_index) else {
                    self.segment_index -= 1;
                    return Err(self.corrupt(format!(
                        "the log ends before LSN {} although it is durable up to {}",
                        self.next_lsn, self.end_lsn
                    )));
                };
                if segment.first_lsn != self.next_lsn {
                    return Err(self.corrupt(format!(
                        "segment starts at LSN {} but {} was expected",
                        segment.first_lsn, self.next_lsn
                    )));
                }
                self.segment_capacity = segment.file.size_bytes()?;
                self.offset = SEGMENT_HEADER_SIZE as u64;
                self.chunk.clear();
                self.chunk_start = 0;
                continue;
            };
            if lsn != self.next_lsn {
                return Err(self.corrupt(format!(
                    "record has LSN {lsn} where {} was expected",
                    self.next_lsn
                )));
            }
            self.next_lsn += 1;
            self.offset += size as u64;
            if lsn >= self.from_lsn {
                return Ok(Some(Record { lsn, kind, payload }));
            }
        }
    }
}

impl<S: Storage> Iterator for WalReader<S> {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.finished = true;
                None
            }
            Err(error) => {
                self.finished = true;
                Some(Err(error))
            }
        }
    }
}
