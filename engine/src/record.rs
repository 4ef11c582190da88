//! The engine's WAL records: one kind per state change, each carrying everything needed to redo
//! it. Payloads are fixed-width little-endian fields; the layouts are listed in ARCHITECTURE.md
//! ("Log records") and encoded only here.
//!
//! A record's layout never changes once written: a change is a new kind, and the old kind keeps
//! decoding so that logs written before replay (kinds 2 and 3, deposits and withdrawals without
//! their ids, are decoded but no longer written).

use crate::model::{
    AbortReason, AccountId, Amount, CoordinatorDecision, DECISION_PARTICIPANTS_MAX, MovementId,
    MovementKind, NodeId, OWNER_NAME_MAX_BYTES, Operation, OperationKind, Outcome, RefusalReason,
    TRANSACTION_OPERATIONS_MAX, Transfer, TransferId,
};

/// Most transaction ids one ENDED record carries.
pub const ENDED_IDS_MAX: usize = 4096;

/// WAL record kinds (the byte the WAL stores with each record). Never reuse a number.
pub mod kind {
    pub const ACCOUNT_CREATED: u8 = 1;
    /// Written before deposits kept their ids; decoded, never written.
    pub const DEPOSITED_WITHOUT_ID: u8 = 2;
    /// Written before withdrawals kept their ids; decoded, never written.
    pub const WITHDRAWN_WITHOUT_ID: u8 = 3;
    pub const LOCAL_TRANSFER: u8 = 4;
    pub const TRANSFER_ABORTED: u8 = 5;
    pub const PREPARED: u8 = 6;
    pub const COMMITTED: u8 = 7;
    pub const ABORTED: u8 = 8;
    pub const DECIDED: u8 = 9;
    pub const ENDED: u8 = 10;
    pub const DEPOSITED: u8 = 11;
    pub const WITHDRAWN: u8 = 12;
    pub const MOVEMENT_REFUSED: u8 = 13;
    /// A coordinator decision with its commit timestamp: kind 9's payload, then the timestamp.
    pub const DECIDED_AT: u8 = 14;
}

/// A state change, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    AccountCreated {
        account: AccountId,
        owner: Option<String>,
        flags: u32,
        created_at_ms: u64,
    },
    /// A deposit or withdrawal logged before ids were kept (kinds 2 and 3): replayed like a
    /// movement with id 0 that leaves no trace in the movement table. Never written any more.
    MovementWithoutId {
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
    },
    /// A deposit (kind 11) or withdrawal (kind 12), validated under the account's lock.
    Movement {
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
    },
    /// A deposit or withdrawal refused for a reason that depends on state (unknown account,
    /// funds, overflow): recorded so that a retry of the id is refused again.
    MovementRefused {
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
        reason: RefusalReason,
    },
    /// A one-phase transfer between two accounts of this shard, committed.
    LocalTransfer {
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
    },
    /// A one-phase transfer that was refused for a reason that depends on state (funds, unknown
    /// account, overflow, lock conflict): recorded so that a retry gets the same answer.
    TransferAborted {
        id: TransferId,
        debit: AccountId,
        credit: AccountId,
        amount: Amount,
        reason: AbortReason,
    },
    /// Participant: this transaction is validated and locked, and will commit if told to.
    Prepared {
        id: TransferId,
        coordinator: NodeId,
        operations: Vec<Operation>,
    },
    /// Participant: the coordinator decided commit; apply the prepared operations.
    Committed { id: TransferId },
    /// Participant: the coordinator decided abort (or aborted a transaction this shard never
    /// prepared, recorded so that a late prepare is refused).
    Aborted { id: TransferId, reason: AbortReason },
    /// Coordinator: the decision on a distributed transfer it coordinates (its `ended` is false).
    Decided(CoordinatorDecision),
    /// Coordinator: every participant acknowledged these decisions; stop resending them.
    Ended { ids: Vec<TransferId> },
}

/// A payload that does not decode: the log passed its CRC, so this is a bug or a format mismatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind_name} record payload: {reason}")]
pub struct RecordDecodeError {
    pub kind_name: &'static str,
    pub reason: &'static str,
}

impl Record {
    pub fn kind(&self) -> u8 {
        match self {
            Record::AccountCreated { .. } => kind::ACCOUNT_CREATED,
            Record::MovementWithoutId { kind, .. } => match kind {
                MovementKind::Deposit => kind::DEPOSITED_WITHOUT_ID,
                MovementKind::Withdrawal => kind::WITHDRAWN_WITHOUT_ID,
            },
            Record::Movement { kind, .. } => match kind {
                MovementKind::Deposit => kind::DEPOSITED,
                MovementKind::Withdrawal => kind::WITHDRAWN,
            },
            Record::MovementRefused { .. } => kind::MOVEMENT_REFUSED,
            Record::LocalTransfer { .. } => kind::LOCAL_TRANSFER,
            Record::TransferAborted { .. } => kind::TRANSFER_ABORTED,
            Record::Prepared { .. } => kind::PREPARED,
            Record::Committed { .. } => kind::COMMITTED,
            Record::Aborted { .. } => kind::ABORTED,
            Record::Decided(_) => kind::DECIDED_AT,
            Record::Ended { .. } => kind::ENDED,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Record::AccountCreated {
                account,
                owner,
                flags,
                created_at_ms,
            } => {
                out.extend_from_slice(&account.to_le_bytes());
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&created_at_ms.to_le_bytes());
                let owner = owner.as_deref().unwrap_or("").as_bytes();
                assert!(
                    owner.len() <= OWNER_NAME_MAX_BYTES as usize,
                    "owner name checked before logging"
                );
                out.push(owner.len() as u8);
                out.extend_from_slice(owner);
            }
            Record::MovementWithoutId {
                account, amount, ..
            } => {
                out.extend_from_slice(&account.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
            }
            // The kind is in the record kind.
            Record::Movement {
                id,
                account,
                amount,
                ..
            } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&account.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
            }
            Record::MovementRefused {
                id,
                account,
                kind,
                amount,
                reason,
            } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&account.to_le_bytes());
                out.push(kind.code());
                out.extend_from_slice(&amount.to_le_bytes());
                out.push(reason.code());
            }
            Record::LocalTransfer {
                id,
                debit,
                credit,
                amount,
            } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&debit.to_le_bytes());
                out.extend_from_slice(&credit.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
            }
            Record::TransferAborted {
                id,
                debit,
                credit,
                amount,
                reason,
            } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&debit.to_le_bytes());
                out.extend_from_slice(&credit.to_le_bytes());
                out.extend_from_slice(&amount.to_le_bytes());
                out.push(reason.code());
            }
            Record::Prepared {
                id,
                coordinator,
                operations,
            } => {
                assert!(operations.len() <= TRANSACTION_OPERATIONS_MAX as usize);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&coordinator.to_le_bytes());
                out.push(operations.len() as u8);
                for operation in operations {
                    out.extend_from_slice(&operation.account.to_le_bytes());
                    out.push(operation.kind as u8);
                    out.extend_from_slice(&operation.amount.to_le_bytes());
                    out.extend_from_slice(&operation.counterparty.to_le_bytes());
                }
            }
            Record::Committed { id } => out.extend_from_slice(&id.to_le_bytes()),
            Record::Aborted { id, reason } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.push(reason.code());
            }
            Record::Decided(decision) => {
                assert!(decision.participants.len() <= DECISION_PARTICIPANTS_MAX);
                out.extend_from_slice(&decision.id.to_le_bytes());
                // A decision without its transfer (a presumed abort) is written as zeros: no
                // transfer moves 0 units, so the two cannot be confused.
                let transfer = decision.transfer.unwrap_or(Transfer {
                    debit: 0,
                    credit: 0,
                    amount: 0,
                });
                assert!(decision.transfer.is_none_or(|transfer| transfer.amount > 0));
                out.extend_from_slice(&transfer.debit.to_le_bytes());
                out.extend_from_slice(&transfer.credit.to_le_bytes());
                out.extend_from_slice(&transfer.amount.to_le_bytes());
                match decision.outcome {
                    Outcome::Committed => out.extend_from_slice(&[1, 0]),
                    Outcome::Aborted(reason) => out.extend_from_slice(&[2, reason.code()]),
                }
                out.push(decision.participants.len() as u8);
                for node in &decision.participants {
                    out.extend_from_slice(&node.to_le_bytes());
                }
                out.extend_from_slice(&decision.commit_ts.to_le_bytes());
            }
            Record::Ended { ids } => {
                assert!(ids.len() <= ENDED_IDS_MAX);
                out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_le_bytes());
                }
            }
        }
        out
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Record, RecordDecodeError> {
        let kind_name = match kind {
            kind::ACCOUNT_CREATED => "account-created",
            kind::DEPOSITED_WITHOUT_ID => "deposited-without-id",
            kind::WITHDRAWN_WITHOUT_ID => "withdrawn-without-id",
            kind::LOCAL_TRANSFER => "local-transfer",
            kind::TRANSFER_ABORTED => "transfer-aborted",
            kind::PREPARED => "prepared",
            kind::COMMITTED => "committed",
            kind::ABORTED => "aborted",
            kind::DECIDED => "decided",
            kind::DECIDED_AT => "decided-at",
            kind::ENDED => "ended",
            kind::DEPOSITED => "deposited",
            kind::WITHDRAWN => "withdrawn",
            kind::MOVEMENT_REFUSED => "movement-refused",
            _ => {
                return Err(RecordDecodeError {
                    kind_name: "unknown",
                    reason: "unknown record kind",
                });
            }
        };
        let mut reader = Reader {
            bytes: payload,
            kind_name,
        };
        let record = match kind {
            kind::ACCOUNT_CREATED => {
                let account = reader.u64()?;
                let flags = reader.u32()?;
                let created_at_ms = reader.u64()?;
                let length = reader.u8()? as usize;
                if length > OWNER_NAME_MAX_BYTES as usize {
                    return Err(reader.error("owner name too long"));
                }
                let owner = reader.take(length)?;
                let owner =
                    std::str::from_utf8(owner).map_err(|_| reader.error("owner not UTF-8"))?;
                let owner = (!owner.is_empty()).then(|| owner.to_owned());
                Record::AccountCreated {
                    account,
                    owner,
                    flags,
                    created_at_ms,
                }
            }
            kind::DEPOSITED_WITHOUT_ID | kind::WITHDRAWN_WITHOUT_ID => Record::MovementWithoutId {
                account: reader.u64()?,
                kind: movement_kind_of(kind),
                amount: reader.u64()?,
            },
            kind::DEPOSITED | kind::WITHDRAWN => Record::Movement {
                id: reader.u128()?,
                account: reader.u64()?,
                kind: movement_kind_of(kind),
                amount: reader.u64()?,
            },
            kind::MOVEMENT_REFUSED => Record::MovementRefused {
                id: reader.u128()?,
                account: reader.u64()?,
                kind: MovementKind::from_code(reader.u8()?)
                    .ok_or_else(|| reader.error("unknown movement kind"))?,
                amount: reader.u64()?,
                reason: RefusalReason::from_code(reader.u8()?)
                    .ok_or_else(|| reader.error("unknown refusal reason"))?,
            },
            kind::LOCAL_TRANSFER => Record::LocalTransfer {
                id: reader.u128()?,
                debit: reader.u64()?,
                credit: reader.u64()?,
                amount: reader.u64()?,
            },
            kind::TRANSFER_ABORTED => Record::TransferAborted {
                id: reader.u128()?,
                debit: reader.u64()?,
                credit: reader.u64()?,
                amount: reader.u64()?,
                reason: AbortReason::from_code(reader.u8()?)
                    .ok_or_else(|| reader.error("unknown abort reason"))?,
            },
            kind::PREPARED => {
                let id = reader.u128()?;
                let coordinator = reader.u32()?;
                let count = reader.u8()? as usize;
                if count > TRANSACTION_OPERATIONS_MAX as usize {
                    return Err(reader.error("too many operations"));
                }
                let mut operations = Vec::with_capacity(count);
                for _ in 0..count {
                    let account = reader.u64()?;
                    let kind = match reader.u8()? {
                        1 => OperationKind::Debit,
                        2 => OperationKind::Credit,
                        _ => return Err(reader.error("unknown operation kind")),
                    };
                    let amount = reader.u64()?;
                    let counterparty = reader.u64()?;
                    operations.push(Operation {
                        account,
                        kind,
                        amount,
                        counterparty,
                    });
                }
                Record::Prepared {
                    id,
                    coordinator,
                    operations,
                }
            }
            kind::COMMITTED => Record::Committed { id: reader.u128()? },
            kind::ABORTED => Record::Aborted {
                id: reader.u128()?,
                reason: AbortReason::from_code(reader.u8()?)
                    .ok_or_else(|| reader.error("unknown abort reason"))?,
            },
            kind::DECIDED | kind::DECIDED_AT => {
                let id = reader.u128()?;
                let debit = reader.u64()?;
                let credit = reader.u64()?;
                let amount = reader.u64()?;
                let outcome = match (reader.u8()?, reader.u8()?) {
                    (1, 0) => Outcome::Committed,
                    (2, code) => Outcome::Aborted(
                        AbortReason::from_code(code)
                            .ok_or_else(|| reader.error("unknown abort reason"))?,
                    ),
                    _ => return Err(reader.error("unknown outcome")),
                };
                let count = reader.u8()? as usize;
                if count > DECISION_PARTICIPANTS_MAX {
                    return Err(reader.error("too many participants"));
                }
                let mut participants = Vec::with_capacity(count);
                for _ in 0..count {
                    participants.push(reader.u32()?);
                }
                let commit_ts = if kind == kind::DECIDED_AT {
                    reader.u64()?
                } else {
                    0
                };
                Record::Decided(CoordinatorDecision {
                    id,
                    transfer: (amount > 0).then_some(Transfer {
                        debit,
                        credit,
                        amount,
                    }),
                    outcome,
                    participants,
                    ended: false,
                    commit_ts,
                })
            }
            kind::ENDED => {
                let count = reader.u16()? as usize;
                if count > ENDED_IDS_MAX {
                    return Err(reader.error("too many ids"));
                }
                let mut ids = Vec::with_capacity(count);
                for _ in 0..count {
                    ids.push(reader.u128()?);
                }
                Record::Ended { ids }
            }
            _ => unreachable!("kind checked above"),
        };
        if !reader.bytes.is_empty() {
            return Err(reader.error("trailing bytes"));
        }
        Ok(record)
    }
}

/// The movement kind a deposited or withdrawn record kind stands for.
fn movement_kind_of(record_kind: u8) -> MovementKind {
    match record_kind {
        kind::DEPOSITED | kind::DEPOSITED_WITHOUT_ID => MovementKind::Deposit,
        kind::WITHDRAWN | kind::WITHDRAWN_WITHOUT_ID => MovementKind::Withdrawal,
        _ => unreachable!("only called for deposit and withdrawal record kinds"),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    kind_name: &'static str,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: &'static str) -> RecordDecodeError {
        RecordDecodeError {
            kind_name: self.kind_name,
            reason,
        }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], RecordDecodeError> {
        if self.bytes.len() < length {
            return Err(self.error("payload too short"));
        }
        let (head, tail) = self.bytes.split_at(length);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordDecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordDecodeError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, RecordDecodeError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, RecordDecodeError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u128(&mut self) -> Result<u128, RecordDecodeError> {
        Ok(u128::from_le_bytes(
            self.take(16)?.try_into().expect("16 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_kind_round_trips_and_truncations_fail() {
        let records = vec![
            Record::AccountCreated {
                account: 7,
                owner: Some("Ada".into()),
                flags: 3,
                created_at_ms: 99,
            },
            Record::AccountCreated {
                account: 8,
                owner: None,
                flags: 0,
                created_at_ms: 1,
            },
            Record::MovementWithoutId {
                account: 7,
                kind: MovementKind::Deposit,
                amount: 500,
            },
            Record::MovementWithoutId {
                account: 7,
                kind: MovementKind::Withdrawal,
                amount: 20,
            },
            Record::Movement {
                id: u128::MAX - 1,
                account: 7,
                kind: MovementKind::Deposit,
                amount: 500,
            },
            Record::Movement {
                id: 3,
                account: 7,
                kind: MovementKind::Withdrawal,
                amount: 20,
            },
            Record::MovementRefused {
                id: 4,
                account: 7,
                kind: MovementKind::Withdrawal,
                amount: 21,
                reason: RefusalReason::InsufficientFunds,
            },
            Record::MovementRefused {
                id: 5,
                account: 1 << 60,
                kind: MovementKind::Deposit,
                amount: u64::MAX,
                reason: RefusalReason::UnknownAccount,
            },
            Record::LocalTransfer {
                id: u128::MAX - 3,
                debit: 7,
                credit: 8,
                amount: 10,
            },
            Record::TransferAborted {
                id: 5,
                debit: 7,
                credit: 8,
                amount: 10,
                reason: AbortReason::InsufficientFunds,
            },
            Record::Prepared {
                id: 11,
                coordinator: 2,
                operations: vec![Operation {
                    account: 7,
                    kind: OperationKind::Debit,
                    amount: 4,
                    counterparty: 1 << 40,
                }],
            },
            Record::Committed { id: 11 },
            Record::Aborted {
                id: 12,
                reason: AbortReason::LockConflict,
            },
            Record::Decided(CoordinatorDecision {
                id: 13,
                transfer: Some(Transfer {
                    debit: 7,
                    credit: 1 << 50,
                    amount: 9,
                }),
                outcome: Outcome::Committed,
                participants: vec![1, 3],
                ended: false,
                commit_ts: 0,
            }),
            Record::Decided(CoordinatorDecision {
                id: 14,
                transfer: Some(Transfer {
                    debit: 7,
                    credit: 8,
                    amount: 9,
                }),
                outcome: Outcome::Aborted(AbortReason::ParticipantUnavailable),
                participants: vec![],
                ended: false,
                commit_ts: 0,
            }),
            Record::Decided(CoordinatorDecision {
                id: 15,
                transfer: None,
                outcome: Outcome::Aborted(AbortReason::PresumedAbort),
                participants: vec![],
                ended: false,
                commit_ts: 0,
            }),
            Record::Ended { ids: vec![13, 14] },
            Record::Ended { ids: vec![] },
        ];
        for record in records {
            let payload = record.encode();
            assert_eq!(Record::decode(record.kind(), &payload).unwrap(), record);
            for cut in 0..payload.len() {
                assert!(
                    Record::decode(record.kind(), &payload[..cut]).is_err(),
                    "{record:?} cut {cut}"
                );
            }
            let mut longer = payload.clone();
            longer.push(0);
            assert!(Record::decode(record.kind(), &longer).is_err());
        }
        assert!(Record::decode(0, &[]).is_err());
    }

    /// Kinds 2 and 3 were written before deposits and withdrawals kept their ids: logs holding
    /// them must still replay, byte for byte as they were written.
    #[test]
    fn deposits_and_withdrawals_without_ids_still_decode() {
        let mut payload = 7u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&500u64.to_le_bytes());
        for (kind, movement) in [(2, MovementKind::Deposit), (3, MovementKind::Withdrawal)] {
            let record = Record::decode(kind, &payload).unwrap();
            assert_eq!(
                record,
                Record::MovementWithoutId {
                    account: 7,
                    kind: movement,
                    amount: 500
                }
            );
            assert_eq!((record.kind(), record.encode()), (kind, payload.clone()));
        }
    }

    #[test]
    fn a_refusal_with_an_unknown_kind_or_reason_does_not_decode() {
        let refused = Record::MovementRefused {
            id: 1,
            account: 2,
            kind: MovementKind::Deposit,
            amount: 3,
            reason: RefusalReason::Overflow,
        };
        let payload = refused.encode();
        let kind_offset = 16 + 8;
        let reason_offset = payload.len() - 1;
        for (offset, bad) in [(kind_offset, 0), (kind_offset, 3), (reason_offset, 3)] {
            let mut broken = payload.clone();
            broken[offset] = bad;
            assert!(Record::decode(kind::MOVEMENT_REFUSED, &broken).is_err());
        }
    }
}
