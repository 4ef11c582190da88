//! Every message of the protocol, one module per family, and the single `match` on the kind tag
//! that turns a frame body into a [`Message`] and back.
//!
//! Kind codes: `0x0001` is the error response; `0x01xx` the client family; `0x02xx` the
//! node-to-node family. Within a family a request kind has bit `0x0080` clear and its response is
//! the same code with `0x0080` set.

mod client;
mod common;
mod error;
mod peer;
mod raft;

use bytes::BytesMut;

pub use client::*;
pub use common::{
    AbortReason, AccountId, Lsn, NodeId, TransferId, TransferOutcome, TransferState, Vote,
};
pub use error::{ERROR_MESSAGE_SIZE_MAX_BYTES, ErrorCode, ErrorResponse};
pub use peer::*;
pub use raft::*;

use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Wire};

/// Bit set in the kind of every response.
const KIND_RESPONSE_BIT: u16 = 0x0080;

macro_rules! messages {
    ( $( $variant:ident = $kind:literal ),* $(,)? ) => {
        /// The kind tag in a frame header: which message the body holds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum MessageKind {
            $( $variant = $kind, )*
        }

        impl MessageKind {
            /// Every kind, in code order.
            pub const ALL: &'static [MessageKind] = &[ $( MessageKind::$variant, )* ];

            pub const fn code(self) -> u16 {
                self as u16
            }

            pub const fn from_code(code: u16) -> Option<MessageKind> {
                match code {
                    $( $kind => Some(MessageKind::$variant), )*
                    _ => None,
                }
            }
        }

        /// One decoded frame body. The variant is the kind; each holds the message struct of the
        /// same name.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $variant($variant), )*
        }

        impl Message {
            pub fn kind(&self) -> MessageKind {
                match self {
                    $( Message::$variant(_) => MessageKind::$variant, )*
                }
            }

            /// The size of this message's frame body in bytes, without the 24-byte header.
            pub fn encoded_size_bytes(&self) -> usize {
                match self {
                    $( Message::$variant(message) => message.encoded_size_bytes(), )*
                }
            }

            pub(crate) fn encode_body(&self, buf: &mut BytesMut) -> Result<(), EncodeError> {
                match self {
                    $( Message::$variant(message) => message.encode(buf), )*
                }
            }

            pub(crate) fn decode_body(kind: MessageKind, reader: &mut Reader<'_>) -> Result<Message, DecodeError> {
                Ok(match kind {
                    $( MessageKind::$variant => Message::$variant($variant::decode(reader, stringify!($variant))?), )*
                })
            }
        }

        $(
            impl From<$variant> for Message {
                fn from(message: $variant) -> Message {
                    Message::$variant(message)
                }
            }
        )*

        #[cfg(test)]
        impl proptest::arbitrary::Arbitrary for Message {
            type Parameters = ();
            type Strategy = proptest::strategy::BoxedStrategy<Message>;
            fn arbitrary_with(_: ()) -> Self::Strategy {
                use proptest::strategy::Strategy;
                proptest::strategy::Union::new(vec![
                    $( proptest::arbitrary::any::<$variant>().prop_map(Message::$variant).boxed(), )*
                ])
                .boxed()
            }
        }
    };
}

messages! {
    ErrorResponse = 0x0001,

    CreateAccount = 0x0101,
    Deposit = 0x0102,
    Withdraw = 0x0103,
    GetBalance = 0x0104,
    GetBalances = 0x0105,
    GetHistory = 0x0106,
    Transfer = 0x0107,
    GetTransferStatus = 0x0108,
    Audit = 0x0109,
    GetClusterStatus = 0x010A,

    AccountCreated = 0x0181,
    Deposited = 0x0182,
    Withdrawn = 0x0183,
    Balance = 0x0184,
    Balances = 0x0185,
    History = 0x0186,
    TransferResult = 0x0187,
    TransferStatus = 0x0188,
    AuditReport = 0x0189,
    ClusterStatus = 0x018A,

    PrepareBatch = 0x0201,
    DecisionBatch = 0x0202,
    DecisionInquiry = 0x0203,
    Heartbeat = 0x0204,
    SnapshotRead = 0x0205,
    // 0x0206 was SnapshotRelease, retired with the locks reads took: never reuse it.
    RaftMessages = 0x0207,

    Votes = 0x0281,
    Acks = 0x0282,
    InquiryAnswer = 0x0283,
    HeartbeatReply = 0x0284,
    SnapshotPart = 0x0285,
    // 0x0286 was SnapshotReleased: never reuse it.
    RaftMessagesReceived = 0x0287,
}

impl MessageKind {
    /// Whether a peer may send this kind as a request (servers refuse anything else).
    pub const fn is_request(self) -> bool {
        let code = self.code();
        code >= 0x0100 && code & KIND_RESPONSE_BIT == 0
    }

    /// The kind that answers this request kind on success, or `None` for a response kind.
    pub fn response_kind(self) -> Option<MessageKind> {
        if self.is_request() {
            MessageKind::from_code(self.code() | KIND_RESPONSE_BIT)
        } else {
            None
        }
    }
}
