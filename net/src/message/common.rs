//! Identifiers and outcome types shared by the client and node-to-node message families.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Wire, wire_enum};

/// An account, chosen by the client that creates it.
pub type AccountId = u64;
/// A transfer's idempotency key, chosen by the client; it is also the 2PC transaction id.
pub type TransferId = u128;
/// A node of the cluster, as named in the cluster file. `u32` leaves room for growth at no cost.
pub type NodeId = u32;
/// A position in a node's write-ahead log.
pub type Lsn = u64;

wire_enum! {
    /// Why a transfer (or a 2PC vote) is aborted. Codes are stable; new reasons get new codes.
    pub enum AbortReason: u8 {
        InsufficientFunds = 1,
        UnknownAccount = 2,
        LockConflict = 3,
        ParticipantUnavailable = 4,
        SelfTransfer = 5,
        ZeroAmount = 6,
        Overflow = 7,
        Timeout = 8,
        /// Presumed abort: a coordinator answered an inquiry for a transaction it never logged a
        /// commit for.
        PresumedAbort = 9,
        /// The transaction is malformed, or reuses an id with different content.
        InvalidRequest = 10,
        /// The funds are there but held by pending debits of the account: a new transfer may
        /// succeed once they are decided.
        FundsHeld = 11,
    }
}

/// Encodes a (state, reason) pair: two `u8`s, the reason 0 unless the state is an abort. Shared by
/// outcomes, statuses and votes so that all three read the same way on the wire.
fn encode_state(buf: &mut BytesMut, state: u8, reason: Option<AbortReason>) {
    buf.put_u8(state);
    buf.put_u8(reason.map_or(0, AbortReason::code));
}

fn decode_state(
    reader: &mut Reader<'_>,
    field: &'static str,
) -> Result<(u8, Option<AbortReason>), DecodeError> {
    let state = reader.u8(field)?;
    let reason = match reader.u8(field)? {
        0 => None,
        code => Some(AbortReason::from_code(code).ok_or(DecodeError::InvalidValue { field })?),
    };
    Ok((state, reason))
}

/// The final result of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferOutcome {
    Committed,
    Aborted(AbortReason),
}

impl Wire for TransferOutcome {
    const ENCODED_SIZE_MIN_BYTES: u32 = 2;
    fn encoded_size_bytes(&self) -> usize {
        2
    }
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            TransferOutcome::Committed => encode_state(buf, 1, None),
            TransferOutcome::Aborted(reason) => encode_state(buf, 2, Some(*reason)),
        }
        Ok(())
    }
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match decode_state(reader, field)? {
            (1, None) => Ok(TransferOutcome::Committed),
            (2, Some(reason)) => Ok(TransferOutcome::Aborted(reason)),
            _ => Err(DecodeError::InvalidValue { field }),
        }
    }
}

/// What a node knows about a transfer id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferState {
    Committed,
    Aborted(AbortReason),
    /// No transfer with this id was ever received by this node.
    Unknown,
    /// Received and not yet decided.
    InProgress,
}

impl Wire for TransferState {
    const ENCODED_SIZE_MIN_BYTES: u32 = 2;
    fn encoded_size_bytes(&self) -> usize {
        2
    }
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            TransferState::Committed => encode_state(buf, 1, None),
            TransferState::Aborted(reason) => encode_state(buf, 2, Some(*reason)),
            TransferState::Unknown => encode_state(buf, 3, None),
            TransferState::InProgress => encode_state(buf, 4, None),
        }
        Ok(())
    }
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match decode_state(reader, field)? {
            (1, None) => Ok(TransferState::Committed),
            (2, Some(reason)) => Ok(TransferState::Aborted(reason)),
            (3, None) => Ok(TransferState::Unknown),
            (4, None) => Ok(TransferState::InProgress),
            _ => Err(DecodeError::InvalidValue { field }),
        }
    }
}

/// A participant's vote on one prepared transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Vote {
    /// Prepared: the PREPARED record is durable and the locks are held.
    Yes,
    No(AbortReason),
}

impl Wire for Vote {
    const ENCODED_SIZE_MIN_BYTES: u32 = 2;
    fn encoded_size_bytes(&self) -> usize {
        2
    }
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Vote::Yes => encode_state(buf, 1, None),
            Vote::No(reason) => encode_state(buf, 2, Some(*reason)),
        }
        Ok(())
    }
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match decode_state(reader, field)? {
            (1, None) => Ok(Vote::Yes),
            (2, Some(reason)) => Ok(Vote::No(reason)),
            _ => Err(DecodeError::InvalidValue { field }),
        }
    }
}

impl<T: Wire> Wire for Option<T> {
    const ENCODED_SIZE_MIN_BYTES: u32 = 1;
    fn encoded_size_bytes(&self) -> usize {
        1 + self.as_ref().map_or(0, Wire::encoded_size_bytes)
    }
    fn encode(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            None => buf.put_u8(0),
            Some(value) => {
                buf.put_u8(1);
                value.encode(buf)?;
            }
        }
        Ok(())
    }
    fn decode(reader: &mut Reader<'_>, field: &'static str) -> Result<Self, DecodeError> {
        match bool::decode(reader, field)? {
            false => Ok(None),
            true => Ok(Some(T::decode(reader, field)?)),
        }
    }
}

#[cfg(test)]
mod strategies {
    use proptest::prelude::*;

    use super::*;

    impl Arbitrary for TransferOutcome {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            prop_oneof![
                Just(Self::Committed),
                any::<AbortReason>().prop_map(Self::Aborted)
            ]
            .boxed()
        }
    }

    impl Arbitrary for TransferState {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            prop_oneof![
                Just(Self::Committed),
                any::<AbortReason>().prop_map(Self::Aborted),
                Just(Self::Unknown),
                Just(Self::InProgress),
            ]
            .boxed()
        }
    }

    impl Arbitrary for Vote {
        type Parameters = ();
        type Strategy = BoxedStrategy<Self>;
        fn arbitrary_with(_: ()) -> Self::Strategy {
            prop_oneof![Just(Self::Yes), any::<AbortReason>().prop_map(Self::No)].boxed()
        }
    }
}
