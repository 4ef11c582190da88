//! The Raft log of every group a node hosts, kept in the node's one WAL.
//!
//! raft-rs persists nothing itself: each `Ready` hands over entries and a hard state to make
//! durable. A node writes them as records of its WAL (the same segments, CRCs, group commit and
//! recovery as a single-copy node's log), tagged with their group, so one fdatasync covers the
//! appends of every group the node hosts. In memory each group's log is a raft-rs `MemStorage`,
//! which raft reads through its `Storage` trait.
//!
//! Records (payloads little-endian, each starting with `group u32`):
//! - `ENTRY`: `index u64`, `term u64`, `entry_type u8`, `data_length u32`, `data`,
//!   `context_length u32`, `context`. A later entry at an index supersedes the one stored there
//!   and every entry after it: that is how a follower's uncommitted suffix is replaced by the
//!   leader's (Raft only ever rewrites entries that were never committed).
//! - `HARD_STATE`: `term u64`, `vote u64`, `commit u64`. The last one counts.
//! - `CONF_STATE`: the group's voters and learners (`count u32` then `u64`s, four lists), then
//!   `auto_leave u8`. The last one counts.
//!
//! Recovery reads the WAL once and rebuilds every group's entries, hard state and conf state.

use std::collections::BTreeMap;

use engine::wal::{Lsn, Storage, Wal, WalError};
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

/// WAL record kinds of the replicated log. A replicated node's WAL holds only these.
pub const KIND_ENTRY: u8 = 0x41;
pub const KIND_HARD_STATE: u8 = 0x42;
pub const KIND_CONF_STATE: u8 = 0x43;

/// Most ids in one list of a conf state (a group has a handful of replicas).
pub const CONF_STATE_IDS_MAX: u32 = 1024;

/// Why the replicated log in a WAL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error("replicated log record at LSN {lsn} (kind {kind:#04x}) is malformed: {reason}")]
    Malformed { lsn: Lsn, kind: u8, reason: String },
    #[error("WAL record at LSN {lsn} has kind {kind:#04x}, which a replicated log never writes")]
    UnknownKind { lsn: Lsn, kind: u8 },
    #[error("group {group}: entry {index} at LSN {lsn} leaves a gap after entry {last}")]
    Gap {
        group: u32,
        lsn: Lsn,
        index: u64,
        last: u64,
    },
}

/// What recovery found of one group.
#[derive(Debug, Clone, Default)]
pub struct RecoveredGroup {
    pub hard_state: HardState,
    pub conf_state: Option<ConfState>,
    /// Consecutive entries from index 1 (or from after the last compaction).
    pub entries: Vec<Entry>,
}

/// Reads every replicated-log record of a WAL, by group.
pub fn recover<S: Storage>(wal: &Wal<S>) -> Result<BTreeMap<u32, RecoveredGroup>, StoreError> {
    let mut groups: BTreeMap<u32, RecoveredGroup> = BTreeMap::new();
    for record in wal.read_from(wal.first_lsn())? {
        let record = record?;
        let malformed = |reason: String| StoreError::Malformed {
            lsn: record.lsn,
            kind: record.kind,
            reason,
        };
        let mut reader = Reader(&record.payload);
        let group = reader.u32().map_err(malformed)?;
        let recovered = groups.entry(group).or_default();
        match record.kind {
            KIND_ENTRY => {
                let entry = decode_entry(&mut reader).map_err(malformed)?;
                let index = entry.index;
                let first = recovered.entries.first().map_or(index, |first| first.index);
                if index < first {
                    // Older than every entry kept: the log was rewritten from before its start.
                    recovered.entries.clear();
                } else {
                    let keep = (index - first) as usize;
                    if keep > recovered.entries.len() {
                        return Err(StoreError::Gap {
                            group,
                            lsn: record.lsn,
                            index,
                            last: recovered.entries.last().map_or(0, |entry| entry.index),
                        });
                    }
                    recovered.entries.truncate(keep);
                }
                recovered.entries.push(entry);
            }
            KIND_HARD_STATE => {
                recovered.hard_state = HardState {
                    term: reader.u64().map_err(malformed)?,
                    vote: reader.u64().map_err(malformed)?,
                    commit: reader.u64().map_err(malformed)?,
                };
            }
            KIND_CONF_STATE => {
                recovered.conf_state = Some(decode_conf_state(&mut reader).map_err(malformed)?);
            }
            kind => {
                return Err(StoreError::UnknownKind {
                    lsn: record.lsn,
                    kind,
                });
            }
        }
        if !reader.0.is_empty() {
            return Err(StoreError::Malformed {
                lsn: record.lsn,
                kind: record.kind,
                reason: format!("{} bytes after the record", reader.0.len()),
            });
        }
    }
    Ok(groups)
}

/// Encodes an entry as an `ENTRY` record's payload.
pub fn encode_entry(group: u32, entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&entry.index.to_le_bytes());
    out.extend_from_slice(&entry.term.to_le_bytes());
    out.push(entry.entry_type as u8);
    out.extend_from_slice(&(entry.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry.data);
    out.extend_from_slice(&(entry.context.len() as u32).to_le_bytes());
    out.extend_from_slice(&entry.context);
}

/// Encodes a hard state as a `HARD_STATE` record's payload.
pub fn encode_hard_state(group: u32, hard_state: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(28);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&hard_state.term.to_le_bytes());
    out.extend_from_slice(&hard_state.vote.to_le_bytes());
    out.extend_from_slice(&hard_state.commit.to_le_bytes());
    out
}

/// Encodes a conf state as a `CONF_STATE` record's payload.
pub fn encode_conf_state(group: u32, conf_state: &ConfState) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    for list in [
        &conf_state.voters,
        &conf_state.learners,
        &conf_state.voters_outgoing,
        &conf_state.learners_next,
    ] {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for id in list {
            out.extend_from_slice(&id.to_le_bytes());
        }
    }
    out.push(u8::from(conf_state.auto_leave));
    out
}

fn decode_entry(reader: &mut Reader<'_>) -> Result<Entry, String> {
    let index = reader.u64()?;
    let term = reader.u64()?;
    let entry_type = match reader.u8()? {
        0 => EntryType::EntryNormal,
        1 => EntryType::EntryConfChange,
        2 => EntryType::EntryConfChangeV2,
        other => return Err(format!("entry type {other} is unknown")),
    };
    let mut entry = Entry {
        index,
        term,
        data: reader.bytes()?.to_vec(),
        context: reader.bytes()?.to_vec(),
        ..Entry::default()
    };
    entry.set_entry_type(entry_type);
    Ok(entry)
}

fn decode_conf_state(reader: &mut Reader<'_>) -> Result<ConfState, String> {
    let mut lists: [Vec<u64>; 4] = Default::default();
    for list in &mut lists {
        let count = reader.u32()?;
        if count > CONF_STATE_IDS_MAX || count as usize > reader.0.len() / 8 {
            return Err(format!("{count} ids in a conf state list"));
        }
        for _ in 0..count {
            list.push(reader.u64()?);
        }
    }
    let [voters, learners, voters_outgoing, learners_next] = lists;
    let auto_leave = match reader.u8()? {
        0 => false,
        1 => true,
        other => return Err(format!("auto_leave is {other}")),
    };
    Ok(ConfState {
        voters,
        learners,
        voters_outgoing,
        learners_next,
        auto_leave,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, bytes: usize) -> Result<&'a [u8], String> {
        if self.0.len() < bytes {
            return Err(format!(
                "cut short: {bytes} bytes wanted, {} left",
                self.0.len()
            ));
        }
        let (head, tail) = self.0.split_at(bytes);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

#[cfg(test)]
mod tests {
    use engine::testing::small_segment_wal_options;
    use engine::wal::MemoryStorage;

    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec(),
            ..Entry::default()
        }
    }

    fn append_entries(wal: &Wal<MemoryStorage>, group: u32, entries: &[Entry]) {
        for entry in entries {
            let mut payload = Vec::new();
            encode_entry(group, entry, &mut payload);
            wal.append(KIND_ENTRY, &payload).unwrap();
        }
    }

    fn reopen(wal: Wal<MemoryStorage>, storage: &MemoryStorage) -> Wal<MemoryStorage> {
        let lsn = wal.next_lsn() - 1;
        wal.wait_durable(lsn).unwrap();
        drop(wal);
        Wal::open(storage.clone(), small_segment_wal_options(64 * 1024))
            .unwrap()
            .0
    }

    #[test]
    fn a_later_entry_supersedes_the_suffix_it_overwrites_per_group() {
        let storage = MemoryStorage::new();
        let (wal, _) = Wal::open(storage.clone(), small_segment_wal_options(64 * 1024)).unwrap();
        append_entries(
            &wal,
            1,
            &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
        );
        append_entries(&wal, 2, &[entry(1, 1, b"x")]);
        // A new leader of term 2 overwrites group 1 from index 2.
        append_entries(&wal, 1, &[entry(2, 2, b"B")]);
        let hard_state = HardState {
            term: 2,
            vote: 3,
            commit: 2,
        };
        wal.append(KIND_HARD_STATE, &encode_hard_state(1, &hard_state))
            .unwrap();
        let conf_state = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        };
        wal.append(KIND_CONF_STATE, &encode_conf_state(2, &conf_state))
            .unwrap();
        let wal = reopen(wal, &storage);

        let groups = recover(&wal).unwrap();
        let one = &groups[&1];
        let got: Vec<(u64, u64, &[u8])> = one
            .entries
            .iter()
            .map(|e| (e.index, e.term, &e.data[..]))
            .collect();
        assert_eq!(got, vec![(1, 1, &b"a"[..]), (2, 2, &b"B"[..])]);
        assert_eq!(one.hard_state, hard_state);
        assert_eq!(groups[&2].entries.len(), 1);
        assert_eq!(groups[&2].conf_state.as_ref(), Some(&conf_state));
    }

    #[test]
    fn a_gap_or_a_malformed_record_is_refused() {
        let storage = MemoryStorage::new();
        let (wal, _) = Wal::open(storage.clone(), small_segment_wal_options(64 * 1024)).unwrap();
        append_entries(&wal, 1, &[entry(1, 1, b"a"), entry(3, 1, b"c")]);
        let wal = reopen(wal, &storage);
        assert!(matches!(
            recover(&wal),
            Err(StoreError::Gap { index: 3, .. })
        ));

        let storage = MemoryStorage::new();
        let (wal, _) = Wal::open(storage.clone(), small_segment_wal_options(64 * 1024)).unwrap();
        let mut payload = Vec::new();
        encode_entry(1, &entry(1, 1, b"abc"), &mut payload);
        payload.pop();
        wal.append(KIND_ENTRY, &payload).unwrap();
        let wal = reopen(wal, &storage);
        assert!(matches!(recover(&wal), Err(StoreError::Malformed { .. })));

        let storage = MemoryStorage::new();
        let (wal, _) = Wal::open(storage.clone(), small_segment_wal_options(64 * 1024)).unwrap();
        wal.append(0x07, &1u32.to_le_bytes()).unwrap();
        let wal = reopen(wal, &storage);
        assert!(matches!(
            recover(&wal),
            Err(StoreError::UnknownKind { kind: 7, .. })
        ));
    }
}
