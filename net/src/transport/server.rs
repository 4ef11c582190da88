//! The pipelined TCP server: bounded connections, bounded requests in flight per connection, idle
//! timeout, error frames for malformed input, and graceful shutdown with a drain deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::writer::write_frames;
use crate::frame::{FRAME_HEADER_SIZE_BYTES, Frame};
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
/// id. Only request kinds reach the handler.
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
    /// After shutdown starts, in-flight requests get this long to finish before connections are
    /// cut.
    pub shutdown_drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            connections_max: 1024,
            requests_in_flight_per_connection_max: 256,
            idle_timeout: Duration::from_secs(60),
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

impl<H: Handler> ServerConnection<H> {
    async fn serve(mut self, stream: TcpStream) {
        let (mut read_half, write_half) = stream.into_split();
        let in_flight_max = self.config.requests_in_flight_per_connection_max as usize;
        // Room for every in-flight answer plus the error frames the reader may add.
        let (sender, receiver) = mpsc::channel::<Bytes>(in_flight_max + 8);
        let writer = tokio::spawn(write_frames(write_half, receiver, self.config.idle_timeout));
        let mut in_flight: JoinSet<()> = JoinSet::new();
        let mut buf = BytesMut::with_capacity(READ_CHUNK_SIZE_BYTES);
        'read: loop {
            loop {
                match Frame::decode(&mut buf) {
                    Ok(Some(frame)) => match self.dispatch(frame, &sender, &mut in_flight).await {
                        ReadEnd::Continue => {}
                        ReadEnd::Close => break 'read,
                    },
                    Ok(None) => break,
                    Err(error) => {
                        tracing::debug!(%error, "malformed frame; closing connection");
                        let request_id = Frame::peek_request_id(&buf).unwrap_or(0);
                        let reply = ErrorResponse::new(error.error_code(), error.to_string());
                        let _ = sender.send(encode_error(request_id, reply)).await;
                        break 'read;
                    }
                }
            }
            while in_flight.try_join_next().is_some() {}
            buf.reserve(READ_CHUNK_SIZE_BYTES.max(FRAME_HEADER_SIZE_BYTES as usize));
            let read = tokio::select! {
                _ = self.shutdown.wait_for(|shutting_down| *shutting_down) => break 'read,
                read = tokio::time::timeout(self.config.idle_timeout, read_half.read_buf(&mut buf)) => read,
            };
            match read {
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
        // Finish what was accepted; the server bounds this with its drain deadline.
        while in_flight.join_next().await.is_some() {}
        drop(sender);
        if let Ok(Err(error)) = writer.await {
            tracing::debug!(%error, "write failed");
        }
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
            let reply = ErrorResponse::new(
                ErrorCode::MalformedFrame,
                format!("{:?} is not a request", message.kind()),
            );
            let _ = sender.send(encode_error(request_id, reply)).await;
            return ReadEnd::Close;
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
        let handler = self.handler.clone();
        let sender = sender.clone();
        in_flight.spawn(async move {
            let response = handler.handle(message).await;
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
