//! The pipelined TCP server: bounded connections, bounded requests in flight per connection, idle
//! timeout, error frames for malformed input, and graceful shutdown with a drain deadline.

use super::REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX;
use std::any::Any;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::writer::write_frames;
use crate::error::DecodeError;
use crate::frame::{FRAME_HEADER_SIZE_BYTES, FRAME_SIZE_MAX_BYTES, Frame};
use crate::message::{ErrorCode, ErrorResponse, Message};

/// Bytes asked of the socket per read; the buffer grows past this only to hold one large frame.
const READ_CHUNK_SIZE_BYTES: usize = 16 * 1024;
/// At most this many over-limit connections are being answered `Overloaded` at once; beyond it
/// they are closed without an answer, so a connection flood cannot spawn unbounded tasks.
const CONNECTION_REJECTIONS_IN_FLIGHT_MAX: usize = 64;
/// Time given to an over-limit connection to receive its `Overloaded` frame.
const CONNECTION_REJECTION_TIMEOUT: Duration = Duration::from_secs(1);

/// Answers requests. Called once per request frame, concurrently for pipelined requests of one
/// connection; the returned message (an `ErrorResponse` for failures) is sent with the request's
/// id. Only request kinds reach the handler. A handler that panics is answered `Internal` (this
/// relies on unwinding; with `panic = "abort"` the process ends instead).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Message) -> impl Future<Output = Message> + Send;
}

/// Limits of one server. Every one bounds memory or time.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; one more is answered `Overloaded` and closed.
    pub connections_max: u32,
    /// Requests of one connection being handled at once; one more is answered `Overloaded`.
    pub requests_in_flight_per_connection_max: u32,
    /// A connection with nothing in flight that sends nothing for this long is closed; a write
    /// that makes no progress for this long closes the connection too (half-open peers).
    pub idle_timeout: Duration,
    /// A frame must be complete this long after its first byte arrived, or the connection is
    /// answered `Timeout` (request id 0) and closed, so a peer trickling bytes cannot hold a
    /// half-built frame and a connection slot forever.
    pub frame_read_timeout: Duration,
    /// After shutdown starts, in-flight requests get this long to finish before connections are
    /// cut.
    pub shutdown_drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 1024,
            requests_in_flight_per_connection_max: REQUESTS_IN_FLIGHT_PER_CONNECTION_MAX,
            idle_timeout: Duration::from_secs(60),
            frame_read_timeout: Duration::from_secs(30),
            shutdown_drain_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound listener, ready to [`Server::run`].
pub struct Server<H: Handler> {
    listener: TcpListener,
    config: Arc<ServerConfig>,
    handler: Arc<H>,
}

impl<H: Handler> Server<H> {
    pub async fn bind(
        address: impl ToSocketAddrs,
        config: ServerConfig,
        handler: H,
    ) -> io::Result<Server<H>> {
        assert!(config.connections_max > 0 && config.requests_in_flight_per_connection_max > 0);
        assert!(!config.frame_read_timeout.is_zero() && !config.idle_timeout.is_zero());
        let listener = TcpListener::bind(address).await?;
        Ok(Server {
            listener,
            config: Arc::new(config),
            handler: Arc::new(handler),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets in-flight requests finish
    /// (each connection stops reading new ones), and returns once every connection is closed or
    /// `shutdown_drain_timeout` has passed, whichever is first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (shutdown_sender, shutdown_receiver) = watch::channel(false);
        let connection_permits = Arc::new(Semaphore::new(self.config.connections_max as usize));
        let rejection_permits = Arc::new(Semaphore::new(CONNECTION_REJECTIONS_IN_FLIGHT_MAX));
        let mut connections = JoinSet::new();
        let mut rejections = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            while connections.try_join_next().is_some() {}
            while rejections.try_join_next().is_some() {}
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: back off briefly instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            match connection_permits.clone().try_acquire_owned() {
                Ok(permit) => {
                    let connection = ServerConnection {
                        handler: self.handler.clone(),
                        config: self.config.clone(),
                        shutdown: shutdown_receiver.clone(),
                    };
                    connections.spawn(async move {
                        connection.serve(stream).await;
                        tracing::debug!(%peer, "connection closed");
                        drop(permit);
                    });
                }
                Err(_) => {
                    tracing::debug!(%peer, "connection limit reached");
                    if let Ok(permit) = rejection_permits.clone().try_acquire_owned() {
                        rejections.spawn(async move {
                            reject_connection(stream).await;
                            drop(permit);
                        });
                    }
                }
            }
        }
        drop(self.listener);
        let _ = shutdown_sender.send(true);
        rejections.abort_all();
        let drain = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = connections.len(),
                "shutdown drain deadline passed; cutting connections"
            );
            connections.shutdown().await;
        }
        Ok(())
    }
}

async fn reject_connection(stream: TcpStream) {
    let bytes = encode_error(
        0,
        ErrorResponse::new(ErrorCode::Overloaded, "too many connections"),
    );
    let (_, write_half) = stream.into_split();
    let (sender, receiver) = mpsc::channel(1);
    let _ = sender.send(bytes).await;
    drop(sender);
    let _ = write_frames(write_half, receiver, CONNECTION_REJECTION_TIMEOUT).await;
}

/// Encodes an error frame. Error frames are small and bounded, so this cannot fail.
fn encode_error(request_id: u64, error: ErrorResponse) -> Bytes {
    let frame = Frame::new(request_id, error);
    frame
        .to_bytes()
        .expect("an ErrorResponse always fits in a frame")
        .freeze()
}

struct ServerConnection<H: Handler> {
    handler: Arc<H>,
    config: Arc<ServerConfig>,
    shutdown: watch::Receiver<bool>,
}

/// Why a connection stops reading.
enum ReadEnd {
    Continue,
    Close,
}

/// Whether a decode error was found before the frame's checksum was verified, so nothing in the
/// header (the request id included) can be trusted.
fn is_header_level(error: &DecodeError) -> bool {
    matches!(
        error,
        DecodeError::BadMagic { .. }
            | DecodeError::UnsupportedVersion { .. }
            | DecodeError::TooLarge { .. }
            | DecodeError::ChecksumMismatch { .. }
    )
}

/// Turns a panic while polling the wrapped future into an `Err`, so a panicking handler still
/// gets its request answered. Boxed so the inner future can be polled without unsafe pinning.
struct CatchUnwind<F: Future>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(context))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

fn panic_text(panic: &(dyn Any + Send)) -> &str {
    if let Some(text) = panic.downcast_ref::<&str>() {
        text
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text
    } else {
        "non-string panic payload"
    }
}

impl<H: Handler> ServerConnection<H> {
    /// Reads and answers requests until the peer closes, misbehaves, idles out, the writer dies,
    /// or shutdown starts. The writer runs inside this future (not as a detached task), so when it
    /// returns, or is dropped by the server's drain deadline, the socket is closed.
    async fn serve(self, stream: TcpStream) {
        let (read_half, write_half) = stream.into_split();
        let in_flight_max = self.config.requests_in_flight_per_connection_max as usize;
        // Room for every in-flight answer plus the error frames the reader may add.
        let (sender, receiver) = mpsc::channel::<Bytes>(in_flight_max + 8);
        let writer = write_frames(write_half, receiver, self.config.idle_timeout);
        let ((), written) = tokio::join!(self.read_requests(read_half, sender), writer);
        if let Err(error) = written {
            tracing::debug!(%error, "write failed");
        }
    }

    async fn read_requests(mut self, mut read_half: OwnedReadHalf, sender: mpsc::Sender<Bytes>) {
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut buf = BytesMut::with_capacity(READ_CHUNK_SIZE_BYTES);
        // When the first byte of the frame now at the front of `buf` arrived.
        let mut frame_started: Option<Instant> = None;
        'read: loop {
            let mut consumed_any = false;
            loop {
                if sender.is_closed() {
                    // The writer died: answers have nowhere to go, so take no more requests.
                    tracing::debug!("writer closed; no longer reading requests");
                    break 'read;
                }
                match Frame::decode(&mut buf) {
                    Ok(Some(frame)) => {
                        consumed_any = true;
                        let end = if *self.shutdown.borrow() {
                            answer_shutting_down(frame, &sender).await
                        } else {
                            self.dispatch(frame, &sender, &mut in_flight).await
                        };
                        match end {
                            ReadEnd::Continue => {}
                            ReadEnd::Close => break 'read,
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        send_decode_error(&error, &buf, &sender).await;
                        break 'read;
                    }
                }
            }
            if buf.is_empty() {
                frame_started = None;
            } else if consumed_any || frame_started.is_none() {
                frame_started = Some(Instant::now());
            }
            while in_flight.try_join_next().is_some() {}
            buf.reserve(READ_CHUNK_SIZE_BYTES.max(FRAME_HEADER_SIZE_BYTES as usize));
            let idle_deadline = Instant::now() + self.config.idle_timeout;
            let frame_deadline = frame_started.map(|start| start + self.config.frame_read_timeout);
            let deadline = frame_deadline.map_or(idle_deadline, |frame| frame.min(idle_deadline));
            let read = tokio::select! {
                _ = self.shutdown.wait_for(|shutting_down| *shutting_down) => None,
                () = sender.closed() => {
                    tracing::debug!("writer closed; no longer reading requests");
                    break 'read;
                }
                read = tokio::time::timeout_at(deadline, read_half.read_buf(&mut buf)) => Some(read),
            };
            let Some(read) = read else {
                drain_on_shutdown(&mut read_half, &mut buf, &sender).await;
                break 'read;
            };
            match read {
                Err(_) if frame_deadline.is_some_and(|frame| Instant::now() >= frame) => {
                    tracing::debug!("frame not completed within the frame read timeout");
                    let reply = ErrorResponse::new(
                        ErrorCode::Timeout,
                        "frame not completed within the frame read timeout",
                    );
                    let _ = sender.send(encode_error(0, reply)).await;
                    break;
                }
                Err(_) if in_flight.is_empty() => {
                    tracing::debug!("idle timeout");
                    break;
                }
                // Still answering: the peer is waiting on us, not idle.
                Err(_) => {}
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%error, "read failed");
                    break;
                }
            }
        }
        // Nothing more is read; if the writer is gone too, this closes the socket now.
        drop(read_half);
        // Finish what was accepted; the server bounds this with its drain deadline.
        while in_flight.join_next().await.is_some() {}
        // Dropping the last sender lets the writer flush and shut the stream down.
        drop(sender);
    }

    async fn dispatch(
        &self,
        frame: Frame,
        sender: &mpsc::Sender<Bytes>,
        in_flight: &mut JoinSet<()>,
    ) -> ReadEnd {
        let Frame {
            request_id,
            message,
        } = frame;
        if !message.kind().is_request() {
            return not_a_request(request_id, &message, sender).await;
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= self.config.requests_in_flight_per_connection_max as usize {
            let reply = ErrorResponse::new(
                ErrorCode::Overloaded,
                "too many requests in flight on this connection",
            );
            return match sender.send(encode_error(request_id, reply)).await {
                Ok(()) => ReadEnd::Continue,
                Err(_) => ReadEnd::Close,
            };
        }
        if sender.is_closed() {
            return ReadEnd::Close;
        }
        let handler = self.handler.clone();
        let sender = sender.clone();
        in_flight.spawn(async move {
            let response = match CatchUnwind(Box::pin(handler.handle(message))).await {
                Ok(response) => response,
                Err(panic) => {
                    let text = panic_text(&*panic);
                    tracing::error!(panic = text, request_id, "handler panicked");
                    ErrorResponse::new(ErrorCode::Internal, format!("handler panicked: {text}"))
                        .into()
                }
            };
            let bytes = match Frame::new(request_id, response).to_bytes() {
                Ok(bytes) => bytes.freeze(),
                Err(error) => {
                    tracing::error!(%error, "handler returned a response that cannot be encoded");
                    encode_error(
                        request_id,
                        ErrorResponse::new(ErrorCode::Internal, error.to_string()),
                    )
                }
            };
            // The writer is gone only if the connection failed; the answer has nowhere to go.
            let _ = sender.send(bytes).await;
        });
        ReadEnd::Continue
    }
}

async fn not_a_request(
    request_id: u64,
    message: &Message,
    sender: &mpsc::Sender<Bytes>,
) -> ReadEnd {
    let reply = ErrorResponse::new(
        ErrorCode::MalformedFrame,
        format!("{:?} is not a request", message.kind()),
    );
    let _ = sender.send(encode_error(request_id, reply)).await;
    ReadEnd::Close
}

async fn answer_shutting_down(frame: Frame, sender: &mpsc::Sender<Bytes>) -> ReadEnd {
    if !frame.message.kind().is_request() {
        return not_a_request(frame.request_id, &frame.message, sender).await;
    }
    let reply = ErrorResponse::new(ErrorCode::ShuttingDown, "the node is shutting down");
    match sender.send(encode_error(frame.request_id, reply)).await {
        Ok(()) => ReadEnd::Continue,
        Err(_) => ReadEnd::Close,
    }
}

/// Answers a malformed frame before the connection closes. A header-level failure carries
/// request id 0: the id in an unverified header may be garbage.
async fn send_decode_error(error: &DecodeError, buf: &[u8], sender: &mpsc::Sender<Bytes>) {
    tracing::debug!(%error, "malformed frame; closing connection");
    let request_id = if is_header_level(error) {
        0
    } else {
        Frame::peek_request_id(buf).unwrap_or(0)
    };
    let reply = ErrorResponse::new(error.error_code(), error.to_string());
    let _ = sender.send(encode_error(request_id, reply)).await;
}

/// Shutdown started: every whole request already received (buffered here or in the socket's
/// receive buffer) is answered `ShuttingDown` rather than left unanswered.
async fn drain_on_shutdown(
    read_half: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    sender: &mpsc::Sender<Bytes>,
) {
    loop {
        loop {
            match Frame::decode(buf) {
                Ok(Some(frame)) => {
                    if let ReadEnd::Close = answer_shutting_down(frame, sender).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    send_decode_error(&error, buf, sender).await;
                    return;
                }
            }
        }
        // Only what has already arrived; never wait for more. Bounded by one maximal frame
        // beyond what is buffered.
        if buf.len() >= FRAME_SIZE_MAX_BYTES as usize {
            return;
        }
        buf.reserve(READ_CHUNK_SIZE_BYTES);
        match read_half.try_read_buf(buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
