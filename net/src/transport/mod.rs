//! The tokio TCP transport: a pipelined server that runs a [`Handler`] per request, and a
//! pipelined client that matches answers to requests by request id.
//!
//! Both sides write through one writer task per connection that drains a bounded channel of
//! encoded frames into one buffer and issues one `write_all` for all of them, so under load many
//! frames leave in one syscall and with no load a frame leaves at once (no timers on the path).

mod client;
mod server;
mod writer;

#[cfg(test)]
pub(crate) use writer::write_frames;

pub use client::{Client, ClientConfig, ClientError};
pub use server::{Handler, Server, ServerConfig};
