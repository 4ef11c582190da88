//! The tokio TCP transport: a pipelined server that runs a [`Handler`] per request, and a
//! pipelined client that matches answers to requests by request id.
//!
//! Both sides write through one writer task per connection that drains a bounded channel of
//! encoded frames into one buffer and issues one `write_all` for all of them, so under load many
//! frames leave in one syscall and with no load a frame leaves at once (no timers on the path).
//! Woken by a frame, the writer first yields once to the tasks already runnable, which under load
//! queue more frames for it: without that, an idle runtime worker woke it for every frame, and a
//! node made one `sendto` per frame.

mod client;
mod server;
mod writer;

#[cfg(test)]
pub(crate) use writer::write_frames;

/// Requests one connection carries in flight at once, by default, at both ends: a server answers
/// one more with `Overloaded`, a client waits for a slot. A node and the client library use it;
/// docs/protocol.md, section 6.
pub const REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX: u32 = 1024;

pub use client::{Client, ClientConfig, ClientError};
pub use server::{Handler, Server, ServerConfig};
