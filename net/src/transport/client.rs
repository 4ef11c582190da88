//! The pipelined TCP client: many requests in flight on one connection, answers matched by
//! request id in whatever order they come, each request bounded by a timeout.

use super::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::AbortHandle;

use super::writer::write_frames;
use crate::error::{DecodeError, EncodeError};
use crate::frame::Frame;
use crate::message::{ErrorResponse, Message, MessageKind};

const READ_CHUNK_SIZE_BYTES: usize = 16 * 1024;

/// Limits of one client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Requests awaiting an answer at once; a further `call` waits for a slot (within its
    /// timeout), so a caller can never queue unbounded work.
    pub requests_in_flight_max: u32,
    /// Time from `call` to answer, waiting for a slot included. Also the dead-peer bound: a call
    /// that waits this out with no frame at all arriving on the connection meanwhile marks the
    /// peer dead; every waiting call fails `Timeout`, later ones `Closed`, and the connection is
    /// closed (a half-open peer costs one timeout, not one per call).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            requests_in_flight_max: REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
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
    /// The peer answered with a kind that does not answer the request: it is broken, so the
    /// connection is closed (other waiting calls fail `Closed`).
    #[error("peer answered a {request:?} with {found:?}")]
    UnexpectedKind {
        request: MessageKind,
        found: MessageKind,
    },
    /// The peer answered with an error frame.
    #[error("peer answered {code:?}: {message}", code = .0.code, message = .0.message)]
    Remote(ErrorResponse),
}

type Answer = Result<Message, ClientError>;

struct Waiter {
    answer: oneshot::Sender<Answer>,
    request: MessageKind,
}

#[derive(Default)]
struct Pending {
    closed: bool,
    waiters: HashMap<u64, Waiter>,
}

impl Pending {
    /// Fails every waiting call; later calls fail at once.
    fn close(&mut self, error: impl Fn() -> ClientError) {
        self.closed = true;
        for (_, waiter) in self.waiters.drain() {
            let _ = waiter.answer.send(Err(error()));
        }
    }
}

/// One pipelined connection. Cheap to clone; clones share the connection, and it closes (its task
/// is aborted) when the last clone is dropped.
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
    /// Frames of any kind received so far, to tell a silent (dead) peer from a slow request.
    frames_received: Arc<AtomicU64>,
    /// Set when the peer ended the connection (see [`Client::peer_closed`]).
    peer_closed: Arc<AtomicBool>,
    /// The task that reads and writes the socket; aborting it closes the connection.
    connection: AbortHandle,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.connection.abort();
    }
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
    /// True when both handles share one connection (clones of one `connect`).
    pub fn same_connection(&self, other: &Client) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// True once the peer has ended the connection: an end of stream or a reset while reading,
    /// or a write refused (as happens when the peer's process exits). Not set when this side
    /// gave up on a silent or slow peer (a timeout), so it tells a peer that is gone from one
    /// that is only slow.
    pub fn peer_closed(&self) -> bool {
        self.shared.peer_closed.load(Ordering::Acquire)
    }

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
        let frames_received = Arc::new(AtomicU64::new(0));
        let peer_closed = Arc::new(AtomicBool::new(false));
        let write_timeout = config.request_timeout;
        let connection = tokio::spawn({
            let pending = pending.clone();
            let frames_received = frames_received.clone();
            let peer_closed = peer_closed.clone();
            async move {
                // Whichever side ends first ends the connection; dropping both halves closes it.
                tokio::select! {
                    ended = read_answers(read_half, &pending, &frames_received) => {
                        if ended == ReadEnd::PeerClosed {
                            peer_closed.store(true, Ordering::Release);
                        }
                    }
                    written = write_frames(write_half, receiver, write_timeout) => {
                        if let Err(error) = written {
                            tracing::debug!(%error, "write failed; closing connection");
                            if error.kind() != io::ErrorKind::TimedOut {
                                peer_closed.store(true, Ordering::Release);
                            }
                        }
                    }
                }
                lock(&pending).close(|| ClientError::Closed);
            }
        });
        let shared = Shared {
            sender,
            pending,
            in_flight: Semaphore::new(in_flight_max),
            next_request_id: AtomicU64::new(1),
            request_timeout: config.request_timeout,
            frames_received,
            peer_closed,
            connection: connection.abort_handle(),
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
        let frame = Frame::new(request_id, request);
        let request_kind = frame.message.kind();
        let bytes = frame.to_bytes()?.freeze();
        let (waiter, answer) = oneshot::channel();
        let frames_before;
        {
            let mut pending = lock(&shared.pending);
            if pending.closed {
                return Err(ClientError::Closed);
            }
            // Read under the lock the reader takes per frame, so no frame is counted twice or lost.
            frames_before = shared.frames_received.load(Ordering::Acquire);
            let waiter = Waiter {
                answer: waiter,
                request: request_kind,
            };
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
            Err(_) => {
                if shared.frames_received.load(Ordering::Acquire) == frames_before {
                    // Not one frame for as long as this call waited: presume the peer dead.
                    tracing::warn!("no frame from the peer for a whole request timeout; closing");
                    lock(&shared.pending).close(|| ClientError::Timeout);
                    shared.connection.abort();
                }
                Err(ClientError::Timeout)
            }
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(Ok(Message::ErrorResponse(error)))) => Err(ClientError::Remote(error)),
            Ok(Ok(answer)) => answer,
        }
    }
}

/// Why [`read_answers`] stopped.
#[derive(Debug, PartialEq, Eq)]
enum ReadEnd {
    /// The peer ended the connection: an end of stream, or a read error (a reset).
    PeerClosed,
    /// The peer broke the protocol, or spoke for the whole connection.
    Protocol,
}

/// Routes each answer to its waiting call. Ends, failing every waiting call, when the connection
/// closes or the peer sends a malformed frame or an answer of the wrong kind.
async fn read_answers(
    mut read_half: OwnedReadHalf,
    pending: &Mutex<Pending>,
    frames_received: &AtomicU64,
) -> ReadEnd {
    let mut buf = BytesMut::with_capacity(READ_CHUNK_SIZE_BYTES);
    loop {
        loop {
            let frame = match Frame::decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    tracing::warn!(%error, "peer sent a malformed frame; closing connection");
                    lock(pending).close(|| ClientError::Decode(error.clone()));
                    return ReadEnd::Protocol;
                }
            };
            let mut pending = lock(pending);
            frames_received.fetch_add(1, Ordering::AcqRel);
            let Frame {
                request_id,
                message,
            } = frame;
            if request_id == 0 {
                // About the whole connection (e.g. too many connections): fail everyone.
                tracing::debug!(?message, "connection-level answer");
                match message {
                    Message::ErrorResponse(error) => {
                        pending.close(|| ClientError::Remote(error.clone()));
                    }
                    _ => pending.close(|| ClientError::Closed),
                }
                return ReadEnd::Protocol;
            }
            // No waiter: its call timed out or was dropped; the late answer is dropped too.
            let Some(waiter) = pending.waiters.remove(&request_id) else {
                continue;
            };
            let found = message.kind();
            let expected = waiter.request.response_kind();
            if found == MessageKind::ErrorResponse || Some(found) == expected {
                let _ = waiter.answer.send(Ok(message));
            } else {
                tracing::warn!(request = ?waiter.request, ?found, "answer of the wrong kind; closing");
                let _ = waiter.answer.send(Err(ClientError::UnexpectedKind {
                    request: waiter.request,
                    found,
                }));
                pending.close(|| ClientError::Closed);
                return ReadEnd::Protocol;
            }
        }
        buf.reserve(READ_CHUNK_SIZE_BYTES);
        match read_half.read_buf(&mut buf).await {
            Ok(0) | Err(_) => {
                lock(pending).close(|| ClientError::Closed);
                return ReadEnd::PeerClosed;
            }
            Ok(_) => {}
        }
    }
}
