//! What a normal Raft entry of a shard's group carries: a batch of the engine's records with
//! consecutive LSNs. The LSNs travel with the records, so every replica applies each record under
//! the LSN the leader's engine gave it: history keys and applied LSNs agree on every replica.
//! An entry with no data is Raft's own (the empty entry a new leader appends).
//!
//! Layout (little-endian): `first_lsn u64`, `count u32`, then per record `kind u8`,
//! `length u32`, `payload [length]`.

use engine::record::Record;
use engine::wal::Lsn;

const HEADER_BYTES: usize = 12;
const RECORD_HEADER_BYTES: usize = 5;

/// Encodes records with LSNs `first_lsn..` into an entry's data.
pub fn encode(first_lsn: Lsn, records: &[(u8, &[u8])], out: &mut Vec<u8>) {
    out.extend_from_slice(&first_lsn.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (kind, payload) in records {
        out.push(*kind);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
    }
}

/// The bytes [`encode`] adds for one record of `payload_bytes`.
pub fn record_bytes(payload_bytes: usize) -> usize {
    RECORD_HEADER_BYTES + payload_bytes
}

/// The bytes of an entry's header.
pub const fn header_bytes() -> usize {
    HEADER_BYTES
}

/// Why an entry's data is not a batch of records.
#[derive(Debug, thiserror::Error)]
#[error("entry data is not a record batch: {0}")]
pub struct PayloadError(String);

/// The records of an entry's data, with their LSNs, decoded. Empty data is an empty batch.
pub fn decode(data: &[u8]) -> Result<Vec<(Lsn, Record)>, PayloadError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let header = data
        .get(..HEADER_BYTES)
        .ok_or_else(|| PayloadError(format!("{} bytes, shorter than a header", data.len())))?;
    let first_lsn = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let mut rest = &data[HEADER_BYTES..];
    // Each record takes at least its header: a count beyond that is a lie, refused before
    // anything is allocated for it.
    if count as usize > rest.len() / RECORD_HEADER_BYTES {
        return Err(PayloadError(format!(
            "{count} records announced in {} bytes",
            rest.len()
        )));
    }
    let mut records = Vec::with_capacity(count as usize);
    for offset in 0..u64::from(count) {
        if rest.len() < RECORD_HEADER_BYTES {
            return Err(PayloadError(format!("record {offset} is cut short")));
        }
        let kind = rest[0];
        let length = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        let payload = rest
            .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + length)
            .ok_or_else(|| PayloadError(format!("record {offset} is cut short")))?;
        let lsn = first_lsn + offset;
        let record = Record::decode(kind, payload)
            .map_err(|error| PayloadError(format!("record at LSN {lsn}: {error}")))?;
        records.push((lsn, record));
        rest = &rest[RECORD_HEADER_BYTES + length..];
    }
    if !rest.is_empty() {
        return Err(PayloadError(format!(
            "{} bytes after the last record",
            rest.len()
        )));
    }
    Ok(records)
}

/// The last LSN an entry's data carries, if any, read from its header alone.
pub fn last_lsn(data: &[u8]) -> Option<Lsn> {
    let header = data.get(..HEADER_BYTES)?;
    let first_lsn = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
    let count = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    (count > 0).then(|| first_lsn + u64::from(count) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_keep_their_lsns_through_an_entry() {
        let first = Record::Ended { ids: vec![7, 8] };
        let second = Record::Ended { ids: vec![9] };
        let (a, b) = (first.encode(), second.encode());
        let mut data = Vec::new();
        encode(41, &[(first.kind(), &a), (second.kind(), &b)], &mut data);
        assert_eq!(last_lsn(&data), Some(42));
        assert_eq!(decode(&data).unwrap(), vec![(41, first), (42, second)]);
        assert_eq!(decode(&[]).unwrap(), vec![]);
    }

    #[test]
    fn a_batch_that_lies_about_its_size_is_refused() {
        let record = Record::Ended { ids: vec![7] };
        let payload = record.encode();
        let mut data = Vec::new();
        encode(1, &[(record.kind(), &payload)], &mut data);
        // A count no body could hold: refused before allocating for it.
        let mut huge = data.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
        // Cut short, and trailing bytes.
        assert!(decode(&data[..data.len() - 1]).is_err());
        let mut long = data.clone();
        long.push(0);
        assert!(decode(&long).is_err());
        assert!(decode(&data[..5]).is_err());
    }
}
