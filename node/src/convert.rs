//! Conversions between the engine's types and the wire's. The engine's abort reason codes are its
//! log format; the wire's are the protocol's; each side keeps its own stable numbering.

use engine::model::{AbortReason as EngineReason, Operation, OperationKind, Outcome};
use net::{AbortReason as WireReason, Op, OpKind, TransferOutcome};

pub fn reason_to_wire(reason: EngineReason) -> WireReason {
    match reason {
        EngineReason::InsufficientFunds => WireReason::InsufficientFunds,
        EngineReason::UnknownAccount => WireReason::UnknownAccount,
        EngineReason::LockConflict => WireReason::LockConflict,
        EngineReason::ParticipantUnavailable => WireReason::ParticipantUnavailable,
        EngineReason::Overflow => WireReason::Overflow,
        EngineReason::Timeout => WireReason::Timeout,
        EngineReason::InvalidRequest => WireReason::InvalidRequest,
        EngineReason::PresumedAbort => WireReason::PresumedAbort,
        EngineReason::FundsHeld => WireReason::FundsHeld,
    }
}

pub fn reason_from_wire(reason: WireReason) -> EngineReason {
    match reason {
        WireReason::InsufficientFunds => EngineReason::InsufficientFunds,
        WireReason::UnknownAccount => EngineReason::UnknownAccount,
        WireReason::LockConflict => EngineReason::LockConflict,
        WireReason::ParticipantUnavailable => EngineReason::ParticipantUnavailable,
        WireReason::Overflow => EngineReason::Overflow,
        WireReason::Timeout => EngineReason::Timeout,
        WireReason::PresumedAbort => EngineReason::PresumedAbort,
        WireReason::FundsHeld => EngineReason::FundsHeld,
        WireReason::SelfTransfer | WireReason::ZeroAmount | WireReason::InvalidRequest => {
            EngineReason::InvalidRequest
        }
    }
}

pub fn outcome_to_wire(outcome: Outcome) -> TransferOutcome {
    match outcome {
        Outcome::Committed => TransferOutcome::Committed,
        Outcome::Aborted(reason) => TransferOutcome::Aborted(reason_to_wire(reason)),
    }
}

pub fn outcome_from_wire(outcome: TransferOutcome) -> Outcome {
    match outcome {
        TransferOutcome::Committed => Outcome::Committed,
        TransferOutcome::Aborted(reason) => Outcome::Aborted(reason_from_wire(reason)),
    }
}

pub fn op_to_wire(operation: &Operation) -> Op {
    Op {
        account: operation.account,
        kind: match operation.kind {
            OperationKind::Debit => OpKind::Debit,
            OperationKind::Credit => OpKind::Credit,
        },
        amount: operation.amount,
        counterparty: operation.counterparty,
    }
}

pub fn op_from_wire(op: &Op) -> Operation {
    Operation {
        account: op.account,
        kind: match op.kind {
            OpKind::Debit => OperationKind::Debit,
            OpKind::Credit => OperationKind::Credit,
        },
        amount: op.amount,
        counterparty: op.counterparty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_reason_survives_the_wire() {
        for code in 1..=u8::MAX {
            if let Some(reason) = EngineReason::from_code(code) {
                assert_eq!(reason_from_wire(reason_to_wire(reason)), reason);
            }
        }
    }
}
