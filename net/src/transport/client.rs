//! The pipelined TCP client: many requests in flight on one connection, answers matched by
//! request id in whatever order they come, each request bounded by a timeout.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::writer::write_frames;
use crate::error::{DecodeError, EncodeError};
use crate::frame::Frame;
use crate::message::{ErrorResponse, Message};

const READ_CHUNK_SIZE_BYTES: usize = 16 * 1024;

/// Limits of one client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Requests awaiting an answer at once; a further `call` waits for a slot (within its
    /// timeout), so a caller can never queue unbounded work.
    pub requests_in_flight_max: u32,
    /// Time from `call` to answer, waiting for a slot included.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            requests_in_flight_max: 256,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a call did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("request cannot be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("peer sent a malformed frame: {0}")]
    Decode(#[from] DecodeError),
    /// No answer within the request timeout. The request may still be applied by the peer.
    #[error("request timed out")]
    Timeout,
    /// The connection is closed; the request may or may not have been applied.
    #[error("connection closed")]
    Closed,
    /// The peer answered with an error frame.
    #[error("peer answered {code:?}: {message}", code = .0.code, message = .0.message)]
    Remote(ErrorResponse),
}

type Answer = Result<Message, ClientError>;

#[derive(Default)]
struct Pending {
    closed: bool,
    waiters: HashMap<u64, oneshot::Sender<Answer>>,
}

impl Pending {
    /// Fails every waiting call; later calls fail at once.
    fn close(&mut self, error: impl Fn() -> ClientError) {
        self.closed = true;
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.send(Err(error()));
        }
    }
}

/// One pipelined connection. Cheap to clone; clones share the connection, and it closes when the
/// last clone is dropped.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    sender: mpsc::Sender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    in_flight: Semaphore,
    // Request id 0 is reserved for errors about the connection as a whole.
    next_request_id: AtomicU64,
    request_timeout: Duration,
}

/// Removes a waiter whose call ended without an answer (timeout, or the caller gave up), so the
/// pending map only holds live calls.
struct WaiterGuard<'a> {
    pending: &'a Mutex<Pending>,
    request_id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).waiters.remove(&self.request_id);
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // A panic while holding this lock leaves the map consistent (single inserts and removes).
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Client {
    pub async fn connect(
        address: impl ToSocketAddrs,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        assert!(config.requests_in_flight_max > 0);
        let stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address)).await {
                Ok(stream) => stream.map_err(ClientError::Connect)?,
                Err(_) => return Err(ClientError::Timeout),
            };
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let in_flight_max = config.requests_in_flight_max as usize;
        let (sender, receiver) = mpsc::channel(in_flight_max);
        let pending = Arc::new(Mutex::new(Pending::default()));
        tokio::spawn(write_frames(write_half, receiver, config.request_timeout));
        tokio::spawn(read_answers(read_half, pending.clone()));
        let shared = Shared {
            sender,
            pending,
            in_flight: Semaphore::new(in_flight_max),
            next_request_id: AtomicU64::new(1),
            request_timeout: config.request_timeout,
        };
        Ok(Client {
            shared: Arc::new(shared),
        })
    }

    /// Sends a request and waits for its answer. An `ErrorResponse` answer is returned as
    /// `ClientError::Remote`.
    pub async fn call(&self, request: impl Into<Message>) -> Result<Message, ClientError> {
        let shared = &*self.shared;
        let deadline = tokio::time::Instant::now() + shared.request_timeout;
        let _permit = match tokio::time::timeout_at(deadline, shared.in_flight.acquire()).await {
            Ok(permit) => permit.expect("the semaphore is never closed"),
            Err(_) => return Err(ClientError::Timeout),
        };
        let request_id = shared.next_request_id.fetch_add(1, Ordering::Relaxed);
        let bytes = Frame::new(request_id, request).to_bytes()?.freeze();
        let (waiter, answer) = oneshot::channel();
        {
            let mut pending = lock(&shared.pending);
            if pending.closed {
                return Err(ClientError::Closed);
            }
            pending.waiters.insert(request_id, waiter);
        }
        let _guard = WaiterGuard {
            pending: &shared.pending,
            request_id,
        };
        match tokio::time::timeout_at(deadline, shared.sender.send(bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => return Err(ClientError::Timeout),
        }
        match tokio::time::timeout_at(deadline, answer).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Ok(Message::ErrorResponse(error)))) => Err(ClientError::Remote(error)),
            Ok(Ok(answer)) => answer,
        }
    }
}

/// Routes each answer to its waiting call. Ends, failing every waiting call, when the connection
/// closes or the peer sends a malformed frame.
async fn read_answers(mut read_half: OwnedReadHalf, pending: Arc<Mutex<Pending>>) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_SIZE_BYTES);
    loop {
        loop {
            match Frame::decode(&mut buf) {
                Ok(Some(Frame {
                    request_id: 0,
                    message,
                })) => {
                    // About the whole connection (e.g. too many connections): fail everyone.
                    tracing::debug!(?message, "connection-level answer");
                    let error = match message {
                        Message::ErrorResponse(error) => error,
                        _ => continue,
                    };
                    lock(&pending).close(|| ClientError::Remote(error.clone()));
                    return;
                }
                Ok(Some(Frame {
                    request_id,
                    message,
                })) => {
                    // No waiter: its call timed out or was dropped; the late answer is dropped too.
                    if let Some(waiter) = lock(&pending).waiters.remove(&request_id) {
                        let _ = waiter.send(Ok(message));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "peer sent a malformed frame; closing connection");
                    lock(&pending).close(|| ClientError::Decode(error.clone()));
                    return;
                }
            }
        }
        buf.reserve(READ_CHUNK_SIZE_BYTES);
        match read_half.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                lock(&pending).close(|| ClientError::Closed);
                return;
            }
            Ok(_) => {}
        }
    }
}
