//! The account tables: state derived from the WAL (accounts, transfer outcomes, deposit and
//! withdrawal outcomes, history, prepared transactions, totals, and the applied LSN), behind a small trait with a RocksDB and an
//! in-memory implementation.
//!
//! Writes come only as a [`TableBatch`] holding absolute values (new balances, not deltas) and the
//! LSN up to which it applies the log, written atomically. Writing the same batch twice therefore
//! leaves the same state as writing it once, and the applied LSN always matches the data.

mod memory;
#[cfg(feature = "rocksdb")]
mod rocks;

pub use memory::MemoryTables;
#[cfg(feature = "rocksdb")]
pub use rocks::{RocksTables, WINDOWS_BEHIND_MAX, WriteBackLimits};

use crate::model::{
    Account, AccountId, CoordinatorDecision, HistoryEntry, MovementId, MovementRecord,
    PreparedTransaction, Totals, TransferId, TransferRecord,
};
use crate::wal::Lsn;

/// A storage failure of the tables. Like a WAL failure it makes the engine stop accepting writes.
#[derive(Debug, Clone, thiserror::Error)]
#[error("account tables: {message}")]
pub struct TablesError {
    /// The kind of the I/O error behind it, when there is one (a full disk is `StorageFull`).
    pub kind: Option<std::io::ErrorKind>,
    pub message: String,
}

impl TablesError {
    /// A failure that is not an I/O error (malformed data, an injected fault).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: None,
            message: message.into(),
        }
    }

    /// A failure whose message carries the operating system's text for an I/O error, as
    /// RocksDB's do ("IO error: No space left on device"): the kind is recovered from it, so a
    /// full disk can be matched whichever store hit it first.
    pub fn from_io_message(message: String) -> Self {
        use std::io::ErrorKind;
        const KNOWN: [(&str, ErrorKind); 4] = [
            ("No space left on device", ErrorKind::StorageFull),
            ("Disk quota exceeded", ErrorKind::QuotaExceeded),
            ("Read-only file system", ErrorKind::ReadOnlyFilesystem),
            ("Permission denied", ErrorKind::PermissionDenied),
        ];
        let kind = KNOWN
            .iter()
            .find(|(text, _)| message.contains(text))
            .map(|(_, kind)| *kind)
            .or_else(|| message.starts_with("IO error").then_some(ErrorKind::Other));
        Self { kind, message }
    }
}

/// Everything one applied group of WAL records changes, in absolute values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableBatch {
    /// The log is applied up to and including this LSN once the batch is written.
    pub applied_lsn: Lsn,
    pub accounts: Vec<Account>,
    pub transfers: Vec<TransferRecord>,
    /// Deposits and withdrawals with their ids, applied or refused; never overwritten.
    pub movements: Vec<MovementRecord>,
    pub history: Vec<HistoryEntry>,
    /// `Some` stores a prepared transaction, `None` removes it (decided). A `Some` always
    /// creates its row: a transaction prepares once, and only while it is not prepared.
    pub prepared: Vec<(TransferId, Option<PreparedTransaction>)>,
    /// Coordinator decisions, as they now stand: new (an unended one creates its decision's
    /// unended mark: a transfer is decided once), or marked ended.
    pub decisions: Vec<CoordinatorDecision>,
    pub totals: Totals,
}

/// The derived state of one shard.
pub trait Tables: Send + Sync + 'static {
    /// The LSN up to which the log is reflected (0 for empty tables).
    fn applied_lsn(&self) -> Result<Lsn, TablesError>;
    fn account(&self, id: AccountId) -> Result<Option<Account>, TablesError>;
    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, TablesError>;
    /// The deposit or withdrawal logged with this id.
    fn movement(&self, id: MovementId) -> Result<Option<MovementRecord>, TablesError>;
    fn prepared(&self, id: TransferId) -> Result<Option<PreparedTransaction>, TablesError>;
    fn all_prepared(&self) -> Result<Vec<PreparedTransaction>, TablesError>;
    /// This node's decision as the coordinator of `id`.
    fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, TablesError>;
    /// Decisions not yet acknowledged by every participant (not ended), in id order.
    fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, TablesError>;
    /// History entries of `account` with LSN below `before_lsn`, newest first, at most `limit`.
    fn history(
        &self,
        account: AccountId,
        before_lsn: Lsn,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, TablesError>;
    fn totals(&self) -> Result<Totals, TablesError>;
    /// Calls `visit` for every account, in id order.
    fn scan_accounts(&self, visit: &mut dyn FnMut(&Account)) -> Result<(), TablesError>;
    /// Writes the batch atomically (all of it or none, with its applied LSN).
    fn write(&self, batch: &TableBatch) -> Result<(), TablesError>;
    /// Makes every written batch durable; afterwards a crash recovers at least this state, so the
    /// WAL may be truncated below the applied LSN.
    fn flush(&self) -> Result<(), TablesError>;
}

/// Shared tables: a replica group's tables are written by its follower-side applier while no
/// engine is open, and by the engine while the replica leads.
impl<T: Tables + ?Sized> Tables for std::sync::Arc<T> {
    fn applied_lsn(&self) -> Result<Lsn, TablesError> {
        (**self).applied_lsn()
    }
    fn account(&self, id: AccountId) -> Result<Option<Account>, TablesError> {
        (**self).account(id)
    }
    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, TablesError> {
        (**self).transfer(id)
    }
    fn movement(&self, id: MovementId) -> Result<Option<MovementRecord>, TablesError> {
        (**self).movement(id)
    }
    fn prepared(&self, id: TransferId) -> Result<Option<PreparedTransaction>, TablesError> {
        (**self).prepared(id)
    }
    fn all_prepared(&self) -> Result<Vec<PreparedTransaction>, TablesError> {
        (**self).all_prepared()
    }
    fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, TablesError> {
        (**self).decision(id)
    }
    fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, TablesError> {
        (**self).unended_decisions()
    }
    fn history(
        &self,
        account: AccountId,
        before_lsn: Lsn,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, TablesError> {
        (**self).history(account, before_lsn, limit)
    }
    fn totals(&self) -> Result<Totals, TablesError> {
        (**self).totals()
    }
    fn scan_accounts(&self, visit: &mut dyn FnMut(&Account)) -> Result<(), TablesError> {
        (**self).scan_accounts(visit)
    }
    fn write(&self, batch: &TableBatch) -> Result<(), TablesError> {
        (**self).write(batch)
    }
    fn flush(&self) -> Result<(), TablesError> {
        (**self).flush()
    }
}

/// Key layout of the byte-oriented implementation: a one-byte prefix per table, then big-endian
/// ids so that keys sort like the ids.
#[cfg(feature = "rocksdb")]
pub(crate) mod keys {
    use crate::model::{AccountId, MovementId, TransferId};
    use crate::wal::Lsn;

    pub const ACCOUNT: u8 = b'a';
    pub const DECISION: u8 = b'd';
    /// Deposits and withdrawals by id: money crossing the system's *edge*.
    pub const MOVEMENT: u8 = b'e';
    /// Index of the decisions not yet ended: key only, removed when the decision ends.
    pub const UNENDED: u8 = b'u';
    pub const HISTORY: u8 = b'h';
    pub const PREPARED: u8 = b'p';
    pub const TRANSFER: u8 = b't';

    /// Metadata keys share the prefix `m`.
    pub const META_APPLIED_LSN: &[u8] = b"mapplied_lsn";
    pub const META_TOTALS: &[u8] = b"mtotals";

    pub fn account(id: AccountId) -> [u8; 9] {
        let mut key = [ACCOUNT; 9];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn transfer(id: TransferId) -> [u8; 17] {
        let mut key = [TRANSFER; 17];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn movement(id: MovementId) -> [u8; 17] {
        let mut key = [MOVEMENT; 17];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn prepared(id: TransferId) -> [u8; 17] {
        let mut key = [PREPARED; 17];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn decision(id: TransferId) -> [u8; 17] {
        let mut key = [DECISION; 17];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn unended(id: TransferId) -> [u8; 17] {
        let mut key = [UNENDED; 17];
        key[1..].copy_from_slice(&id.to_be_bytes());
        key
    }

    pub fn history(account: AccountId, lsn: Lsn) -> [u8; 17] {
        let mut key = [HISTORY; 17];
        key[1..9].copy_from_slice(&account.to_be_bytes());
        key[9..].copy_from_slice(&lsn.to_be_bytes());
        key
    }
}

/// Value encodings of the byte-oriented implementation (little-endian, fixed width).
#[cfg(feature = "rocksdb")]
pub(crate) mod values {
    use super::TablesError;
    use crate::model::{
        AbortReason, Account, CoordinatorDecision, HistoryEntry, HistoryKind, MovementKind,
        MovementOutcome, MovementRecord, Outcome, PreparedTransaction, RefusalReason, Totals,
        Transfer, TransferRecord,
    };
    use crate::record::Record;

    fn corrupt(what: &str) -> TablesError {
        TablesError::new(format!("malformed {what} value"))
    }

    fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
    }

    fn u128_at(bytes: &[u8], offset: usize) -> u128 {
        u128::from_le_bytes(bytes[offset..offset + 16].try_into().expect("16 bytes"))
    }

    pub fn encode_account(account: &Account) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(&account.balance.to_le_bytes());
        out.extend_from_slice(&account.flags.to_le_bytes());
        out.extend_from_slice(&account.created_at_ms.to_le_bytes());
        out.extend_from_slice(account.owner.as_deref().unwrap_or("").as_bytes());
        out
    }

    pub fn decode_account(id: u64, bytes: &[u8]) -> Result<Account, TablesError> {
        if bytes.len() < 20 {
            return Err(corrupt("account"));
        }
        let owner = std::str::from_utf8(&bytes[20..]).map_err(|_| corrupt("account owner"))?;
        Ok(Account {
            id,
            balance: u64_at(bytes, 0),
            flags: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
            created_at_ms: u64_at(bytes, 12),
            owner: (!owner.is_empty()).then(|| owner.to_owned()),
        })
    }

    pub fn encode_transfer(transfer: &TransferRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(26);
        // An abort of a transaction never prepared here has no transfer: zeros (no transfer
        // moves 0 units).
        let content = transfer.transfer.unwrap_or(Transfer {
            debit: 0,
            credit: 0,
            amount: 0,
        });
        out.extend_from_slice(&content.debit.to_le_bytes());
        out.extend_from_slice(&content.credit.to_le_bytes());
        out.extend_from_slice(&content.amount.to_le_bytes());
        match transfer.outcome {
            Outcome::Committed => out.extend_from_slice(&[0, 0]),
            Outcome::Aborted(reason) => out.extend_from_slice(&[1, reason.code()]),
        }
        out
    }

    pub fn decode_transfer(id: u128, bytes: &[u8]) -> Result<TransferRecord, TablesError> {
        if bytes.len() != 26 {
            return Err(corrupt("transfer"));
        }
        let outcome = match bytes[24] {
            0 => Outcome::Committed,
            1 => Outcome::Aborted(
                AbortReason::from_code(bytes[25]).ok_or_else(|| corrupt("abort reason"))?,
            ),
            _ => return Err(corrupt("transfer outcome")),
        };
        let amount = u64_at(bytes, 16);
        Ok(TransferRecord {
            id,
            transfer: (amount > 0).then(|| Transfer {
                debit: u64_at(bytes, 0),
                credit: u64_at(bytes, 8),
                amount,
            }),
            outcome,
        })
    }

    /// A movement value: account u64 @0, kind u8 @8, amount u64 @9, outcome u8 @17, then for
    /// outcome 1 (applied) balance after u64 @18 and LSN u64 @26 (34 bytes), for outcome 2
    /// (refused) the reason u8 @18 (19 bytes).
    const MOVEMENT_OUTCOME_OFFSET: usize = 8 + 1 + 8;
    const MOVEMENT_APPLIED_SIZE: usize = MOVEMENT_OUTCOME_OFFSET + 1 + 8 + 8;
    const MOVEMENT_REFUSED_SIZE: usize = MOVEMENT_OUTCOME_OFFSET + 1 + 1;

    pub fn encode_movement(movement: &MovementRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(MOVEMENT_APPLIED_SIZE);
        out.extend_from_slice(&movement.account.to_le_bytes());
        out.push(movement.kind.code());
        out.extend_from_slice(&movement.amount.to_le_bytes());
        match movement.outcome {
            MovementOutcome::Applied { balance_after, lsn } => {
                out.push(1);
                out.extend_from_slice(&balance_after.to_le_bytes());
                out.extend_from_slice(&lsn.to_le_bytes());
                assert_eq!(out.len(), MOVEMENT_APPLIED_SIZE);
            }
            MovementOutcome::Refused(reason) => {
                out.push(2);
                out.push(reason.code());
                assert_eq!(out.len(), MOVEMENT_REFUSED_SIZE);
            }
        }
        out
    }

    pub fn decode_movement(id: u128, bytes: &[u8]) -> Result<MovementRecord, TablesError> {
        if bytes.len() <= MOVEMENT_OUTCOME_OFFSET {
            return Err(corrupt("movement"));
        }
        let outcome = match (bytes[MOVEMENT_OUTCOME_OFFSET], bytes.len()) {
            (1, MOVEMENT_APPLIED_SIZE) => MovementOutcome::Applied {
                balance_after: u64_at(bytes, MOVEMENT_OUTCOME_OFFSET + 1),
                lsn: u64_at(bytes, MOVEMENT_OUTCOME_OFFSET + 9),
            },
            (2, MOVEMENT_REFUSED_SIZE) => MovementOutcome::Refused(
                RefusalReason::from_code(bytes[MOVEMENT_OUTCOME_OFFSET + 1])
                    .ok_or_else(|| corrupt("movement refusal reason"))?,
            ),
            _ => return Err(corrupt("movement outcome")),
        };
        Ok(MovementRecord {
            id,
            account: u64_at(bytes, 0),
            kind: MovementKind::from_code(bytes[8]).ok_or_else(|| corrupt("movement kind"))?,
            amount: u64_at(bytes, 9),
            outcome,
        })
    }

    pub fn encode_history(entry: &HistoryEntry) -> Vec<u8> {
        let mut out = Vec::with_capacity(41);
        out.push(entry.kind as u8);
        out.extend_from_slice(&entry.amount.to_le_bytes());
        out.extend_from_slice(&entry.counterparty.to_le_bytes());
        out.extend_from_slice(&entry.transfer.to_le_bytes());
        out.extend_from_slice(&entry.balance_after.to_le_bytes());
        out
    }

    pub fn decode_history(
        account: u64,
        lsn: u64,
        bytes: &[u8],
    ) -> Result<HistoryEntry, TablesError> {
        if bytes.len() != 41 {
            return Err(corrupt("history"));
        }
        Ok(HistoryEntry {
            account,
            lsn,
            kind: HistoryKind::from_code(bytes[0]).ok_or_else(|| corrupt("history kind"))?,
            amount: u64_at(bytes, 1),
            counterparty: u64_at(bytes, 9),
            transfer: u128_at(bytes, 17),
            balance_after: u64_at(bytes, 33),
        })
    }

    /// A prepared transaction is stored as the payload of its PREPARED record.
    pub fn encode_prepared(prepared: &PreparedTransaction) -> Vec<u8> {
        Record::Prepared {
            id: prepared.id,
            coordinator: prepared.coordinator,
            operations: prepared.operations.clone(),
        }
        .encode()
    }

    pub fn decode_prepared(bytes: &[u8]) -> Result<PreparedTransaction, TablesError> {
        match Record::decode(crate::record::kind::PREPARED, bytes) {
            Ok(Record::Prepared {
                id,
                coordinator,
                operations,
            }) => Ok(PreparedTransaction {
                id,
                coordinator,
                operations,
            }),
            _ => Err(corrupt("prepared transaction")),
        }
    }

    /// A decision is stored as the payload of its DECIDED_AT record and one byte: ended or not
    /// (stored before timestamps existed: a DECIDED payload and that byte).
    pub fn encode_decision(decision: &CoordinatorDecision) -> Vec<u8> {
        let mut out = Record::Decided(decision.clone()).encode();
        out.push(u8::from(decision.ended));
        out
    }

    pub fn decode_decision(bytes: &[u8]) -> Result<CoordinatorDecision, TablesError> {
        let Some((ended, payload)) = bytes.split_last() else {
            return Err(corrupt("decision"));
        };
        // The timestamp makes a DECIDED_AT payload exactly 8 bytes longer than the DECIDED one,
        // and decoding refuses trailing or missing bytes, so at most one of the two fits.
        let decoded = Record::decode(crate::record::kind::DECIDED_AT, payload)
            .or_else(|_| Record::decode(crate::record::kind::DECIDED, payload));
        match decoded {
            Ok(Record::Decided(mut decision)) if *ended <= 1 => {
                decision.ended = *ended == 1;
                Ok(decision)
            }
            _ => Err(corrupt("decision")),
        }
    }

    pub fn encode_totals(totals: &Totals) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        for value in [
            totals.deposited,
            totals.withdrawn,
            totals.credited_by_transactions,
            totals.debited_by_transactions,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    pub fn decode_totals(bytes: &[u8]) -> Result<Totals, TablesError> {
        if bytes.len() != 64 {
            return Err(corrupt("totals"));
        }
        Ok(Totals {
            deposited: u128_at(bytes, 0),
            withdrawn: u128_at(bytes, 16),
            credited_by_transactions: u128_at(bytes, 32),
            debited_by_transactions: u128_at(bytes, 48),
        })
    }
}

#[cfg(all(test, feature = "rocksdb"))]
mod tests {
    use super::values::{decode_movement, decode_transfer, encode_movement, encode_transfer};
    use crate::model::{
        AbortReason, MovementKind, MovementOutcome, MovementRecord, Outcome, RefusalReason,
        Transfer, TransferRecord,
    };

    #[test]
    fn transfer_values_round_trip_with_or_without_their_transfer() {
        let known = TransferRecord {
            id: 5,
            transfer: Some(Transfer {
                debit: 1,
                credit: 1 << 40,
                amount: 3,
            }),
            outcome: Outcome::Committed,
        };
        // An abort of a transaction never prepared here knows no transfer.
        let unknown = TransferRecord {
            id: 6,
            transfer: None,
            outcome: Outcome::Aborted(AbortReason::Timeout),
        };
        for record in [known, unknown] {
            let bytes = encode_transfer(&record);
            assert_eq!(decode_transfer(record.id, &bytes).unwrap(), record);
            assert!(decode_transfer(record.id, &bytes[..bytes.len() - 1]).is_err());
        }
    }

    #[test]
    fn movement_values_round_trip_and_damage_is_refused() {
        let applied = MovementRecord {
            id: 9,
            account: 1 << 40,
            kind: MovementKind::Withdrawal,
            amount: 77,
            outcome: MovementOutcome::Applied {
                balance_after: u64::MAX,
                lsn: 12,
            },
        };
        let refused = MovementRecord {
            outcome: MovementOutcome::Refused(RefusalReason::Overflow),
            kind: MovementKind::Deposit,
            ..applied.clone()
        };
        for movement in [applied, refused] {
            let bytes = encode_movement(&movement);
            assert_eq!(decode_movement(9, &bytes).unwrap(), movement);
            for cut in 0..bytes.len() {
                assert!(decode_movement(9, &bytes[..cut]).is_err(), "cut {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(decode_movement(9, &longer).is_err());
            let mut bad_kind = bytes.clone();
            bad_kind[8] = 3;
            assert!(decode_movement(9, &bad_kind).is_err());
        }
    }
}
