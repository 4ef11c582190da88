//! Tally's wire protocol: the binary framing, every message family, and the tokio TCP transport.
//!
//! Every byte between clients and nodes, and between nodes, goes through this crate; no other
//! crate knows the wire format. `docs/protocol.md` is the byte-level specification.

mod error;
mod frame;
mod message;
mod transport;
mod wire;

#[cfg(test)]
mod tests;

pub use error::{DecodeError, EncodeError};
pub use frame::{
    FRAME_BODY_SIZE_MAX_BYTES, FRAME_HEADER_SIZE_BYTES, FRAME_MAGIC, FRAME_SIZE_MAX_BYTES, Frame,
    FrameCheck, PROTOCOL_VERSION,
};
pub use message::*;
pub use transport::{
    Client, ClientConfig, ClientError, Handler, REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX, Server,
    ServerConfig,
};
