//! The node's HTTP side: `/metrics` (Prometheus text exposition, see `metrics`), and the web
//! console: the page at `/` and its files under `/assets/` (the `console` crate), the JSON it
//! polls (`/api/status`, `/api/cluster`), and look-ups and audits it asks for (`/api/transfer/ID`,
//! `/api/account/ID`, `/api/audit`). Everything here reads; nothing changes the cluster (the
//! control panel is `tally cluster up`'s). It listens on its own address, loopback unless the
//! operator says otherwise, apart from the binary protocol. The status documents allow any origin
//! (the page served by one node polls every node). Bounded: at most [`HTTP_CONNECTIONS_MAX`]
//! connections at once (more wait in the kernel's accept queue), and a scrape that cannot read the
//! replica groups in time answers 503.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use console::json_response;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::{CONTENT_TYPE, Scrape};
use crate::node::Node;

/// Most HTTP connections served at once.
pub const HTTP_CONNECTIONS_MAX: usize = 64;
/// How long a scrape waits for the replication driver's view of the groups.
const SCRAPE_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let console = console::router(node.config.clone());
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .with_state(node)
        .merge(console);
    let listener = BoundedListener {
        listener,
        permits: Arc::new(Semaphore::new(HTTP_CONNECTIONS_MAX)),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let Some(groups) = node.replication.status(SCRAPE_STATUS_TIMEOUT).await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the replication driver did not report its groups in time\n",
        )
            .into_response();
    };
    let status = node.status();
    let text = Scrape {
        node: node.id,
        version: env!("CARGO_PKG_VERSION"),
        uptime: node.started.elapsed(),
        metrics: &node.metrics,
        wal: node.wal.stats(),
        groups,
        in_doubt: status.in_doubt_count,
    }
    .render();
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
}

async fn status(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let since = query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("since="))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(0);
    let Some(groups) = node.replication.status(SCRAPE_STATUS_TIMEOUT).await else {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "the replication driver did not report its groups in time" }),
        );
    };
    json_response(
        StatusCode::OK,
        &crate::console::status(&node, &groups, since),
    )
}

/// A TCP listener that holds a permit per open connection: at the bound, accepting waits.
struct BoundedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, address)) => {
                    return (
                        BoundedStream {
                            stream,
                            _permit: permit,
                        },
                        address,
                    );
                }
                // Out of descriptors, or a connection reset before it was accepted: wait a
                // little rather than spin.
                Err(error) => {
                    tracing::debug!(%error, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A connection and the permit it holds until it closes.
struct BoundedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for BoundedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}
