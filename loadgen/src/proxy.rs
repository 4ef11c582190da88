//! A fault-injecting TCP proxy for one directed link between two nodes: the load generator puts one
//! on each link (node i's connections to node j go to proxy(i→j), which forwards them to node j's
//! real address) and changes a link's [`LinkMode`] during a run to inject faults.
//!
//! What each mode does to the link:
//! - [`LinkMode::Pass`]: bytes are forwarded as they arrive.
//! - [`LinkMode::Partition`]: every open connection is cut at once, and a new connection is
//!   accepted and cut at once, so nothing gets through in either direction. A real partition would
//!   rather leave connections silent until the peers' timeouts fire; cutting them makes the nodes'
//!   reconnect and in-doubt paths run at once, which keeps fault runs short.
//! - [`LinkMode::Blackhole`]: a silent partition. Open connections stay open, but nothing is
//!   forwarded in either direction: the proxy stops reading from both sides (so the senders'
//!   kernel buffers fill and their writes stall, as behind a real network black hole) and holds
//!   what it had already read. A new connection is accepted (the connecting node sees a connect
//!   succeed) and the target is not even connected to. Neither side hears a reset or an
//!   end-of-stream: only its own timeouts tell it the peer is gone.
//!   When the link leaves the blackhole (for any mode), every connection that was open during it
//!   is cut (reset on both sides), and the bytes the proxy held are discarded. A black hole loses
//!   the packets sent into it; over a real network TCP would retransmit them, and either the
//!   connection would time out (the nodes' own peer timeouts give up on a silent connection after
//!   a few seconds, closing it from their side) or stale bytes would arrive long after they were
//!   sent. Cutting at the heal takes the first of these: nothing sent during the blackhole is
//!   ever delivered, and the nodes reconnect at once over a healed link. Connections opened after
//!   the heal pass normally. (A blackhole so short that a connection's task never saw it holds
//!   nothing and cuts nothing.)
//! - [`LinkMode::Delay`]: each chunk read is written `delay` after it arrived, in order, per
//!   direction. It is a delay line, not a sleep per chunk: chunks wait in a queue stamped with
//!   their due time while the next ones are read, so the delay adds latency without limiting
//!   throughput. A change of mode applies to the chunks read after it.
//! - [`LinkMode::Drop`]: each chunk forwarded, in either direction, cuts its connection with the
//!   given probability (a flaky link).
//!
//! Why dropping is cutting: TCP is a reliable byte stream. A segment lost on the wire is resent by
//! the kernel, so at this level loss only shows up as delay, and leaving bytes out of the middle of
//! a stream would not model loss but corruption (the peer would decode garbage frames). What a
//! program sees of a lossy link is a connection that fails, with whatever was in flight lost; so a
//! drop cuts the connection and discards the bytes the proxy still holds.
//!
//! A cut is an abortive close of both sockets (`SO_LINGER` zero, so a reset, not a FIN): the peers'
//! reads fail or return end-of-stream at once, and neither can take the cut for an orderly close
//! at a message boundary. An orderly close (end-of-stream from one side) is passed on as a
//! half-close to the other side once the bytes before it have been delivered.
//!
//! Each connection is one task running both directions; each direction reads into a queue bounded
//! at [`QUEUE_BYTES_MAX`] and stops reading when it is full, which is backpressure on the sender.
//! Dropping the [`Proxy`] stops its listener and cuts every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Largest chunk read from one side at once.
const CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Bytes one direction of one connection holds (read, not yet written) before it stops reading.
pub const QUEUE_BYTES_MAX: usize = 1024 * 1024;
/// Connections open at once through one proxy; one more is cut as soon as it is accepted. A node
/// keeps a few pipelined connections per peer, so this is ample, and it bounds what a proxy can
/// hold to `CONNECTIONS_MAX * 2 * QUEUE_BYTES_MAX` (512 MiB) when every peer stops reading.
pub const CONNECTIONS_MAX: usize = 256;
/// Time to connect to the target before the accepted connection is given up.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, say), so the listener does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);
/// Longest delay a link accepts; longer is a mistake, and would overflow `Instant` arithmetic.
pub const DELAY_MAX: Duration = Duration::from_secs(3600);

// A chunk is always smaller than the queue, so a reader waiting for room is never stuck.
const _: () = assert!(CHUNK_BYTES_MAX <= QUEUE_BYTES_MAX);
const _: () = assert!(QUEUE_BYTES_MAX <= Semaphore::MAX_PERMITS);

/// How a link behaves now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkMode {
    /// Bytes are forwarded as they arrive.
    Pass,
    /// Partitioned: open connections are cut (both sides reset) at once, new ones are accepted and
    /// cut at once; nothing gets through.
    Partition,
    /// A silent partition: connections stay open (new ones are accepted) and nothing is forwarded
    /// either way, the proxy reading nothing; when the link leaves this mode, every connection
    /// open during it is cut and what it held is discarded.
    Blackhole,
    /// Every chunk of bytes is delivered `delay` later than it arrived (in order, per direction;
    /// a delay line, so throughput is not limited).
    Delay(Duration),
    /// Each connection is cut with probability `probability` (0 to 1) per chunk forwarded.
    Drop { probability: f64 },
}

/// What a proxy has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients, the rejected ones included.
    pub connections_accepted: u64,
    /// Connections cut as soon as they were accepted: during a partition, or past
    /// [`CONNECTIONS_MAX`].
    pub connections_rejected: u64,
    /// Connections accepted during a blackhole (held, never connected to the target, cut when it
    /// ends).
    pub connections_blackholed: u64,
    /// Accepted connections given up because the target could not be reached.
    pub connections_failed: u64,
    /// Open connections cut by the proxy (a partition, a drop, or the proxy stopping).
    pub connections_cut: u64,
    /// Bytes written to the target (client to target).
    pub bytes_to_target: u64,
    /// Bytes written to the client (target to client).
    pub bytes_to_client: u64,
}

/// A running proxy: listens on its own address and forwards each connection to `target`.
pub struct Proxy {
    local_addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<LinkMode>,
    counters: Arc<Counters>,
    /// Owns every connection task (in a `JoinSet`), so aborting it aborts them all.
    listener_task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks a free port; see [`Proxy::local_addr`]) and forwards to
    /// `target`, in [`LinkMode::Pass`]. The target is only connected to when a client connects.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let (mode, mode_receiver) = watch::channel(LinkMode::Pass);
        let counters = Arc::new(Counters::default());
        let listener_task = tokio::spawn(accept_loop(
            listener,
            target,
            mode_receiver,
            counters.clone(),
        ));
        Ok(Proxy {
            local_addr,
            target,
            mode,
            counters,
            listener_task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address connections are forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Changes how the link behaves, at once for open and new connections.
    ///
    /// # Panics
    /// If a drop probability is not within 0 to 1 or a delay is longer than [`DELAY_MAX`]: those
    /// are mistakes of the caller, which checks its own input first.
    pub fn set_mode(&self, mode: LinkMode) {
        match mode {
            LinkMode::Drop { probability } => assert!(
                (0.0..=1.0).contains(&probability),
                "drop probability {probability} is not within 0 to 1"
            ),
            LinkMode::Delay(delay) => assert!(
                delay <= DELAY_MAX,
                "link delay {delay:?} is longer than {DELAY_MAX:?}"
            ),
            LinkMode::Pass | LinkMode::Partition | LinkMode::Blackhole => {}
        }
        // `send_replace` stores the mode even when no connection is listening.
        self.mode.send_replace(mode);
    }

    /// How the link behaves now.
    pub fn mode(&self) -> LinkMode {
        *self.mode.borrow()
    }

    /// What the proxy has done since it started.
    pub fn stats(&self) -> ProxyStats {
        let counters = &self.counters;
        ProxyStats {
            connections_accepted: counters.connections_accepted.load(Ordering::Relaxed),
            connections_rejected: counters.connections_rejected.load(Ordering::Relaxed),
            connections_blackholed: counters.connections_blackholed.load(Ordering::Relaxed),
            connections_failed: counters.connections_failed.load(Ordering::Relaxed),
            connections_cut: counters.connections_cut.load(Ordering::Relaxed),
            bytes_to_target: counters.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: counters.bytes_to_client.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    /// Stops the listener and cuts every connection: aborting the listener task drops the
    /// `JoinSet` that owns the connection tasks, and dropping the mode sender wakes every
    /// connection's watch, which cuts it.
    fn drop(&mut self) {
        self.listener_task.abort();
    }
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    connections_rejected: AtomicU64,
    connections_blackholed: AtomicU64,
    connections_failed: AtomicU64,
    connections_cut: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }
}

/// Why a connection ended other than by an orderly close of both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The proxy cut it (a partition, a drop, the end of a blackhole, or the proxy stopping).
    Cut,
    /// One side failed (a reset, a write to a closed socket); the other side is reset in turn.
    Broken,
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<LinkMode>,
    counters: Arc<Counters>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let client = match accepted {
                    Ok((client, _)) => client,
                    Err(_) => {
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        continue;
                    }
                };
                Counters::add(&counters.connections_accepted, 1);
                if *mode.borrow() == LinkMode::Partition || connections.len() >= CONNECTIONS_MAX {
                    Counters::add(&counters.connections_rejected, 1);
                    reset(client);
                    continue;
                }
                connections.spawn(serve_connection(client, target, mode.clone(), counters.clone()));
            }
            // Reaps finished connections so the set only holds open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Connects to the target and forwards both directions until both close, one side fails, or the
/// proxy cuts the connection.
async fn serve_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<LinkMode>,
    counters: Arc<Counters>,
) {
    if *mode.borrow() == LinkMode::Blackhole {
        // Held silently, the target never contacted, and cut when the blackhole ends.
        Counters::add(&counters.connections_blackholed, 1);
        until_cut(&mut mode).await;
        Counters::add(&counters.connections_cut, 1);
        reset(client);
        return;
    }
    let connect = tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(target));
    let mut server = tokio::select! {
        connected = connect => match connected {
            Ok(Ok(server)) => server,
            Ok(Err(_)) | Err(_) => {
                Counters::add(&counters.connections_failed, 1);
                reset(client);
                return;
            }
        },
        () = until_cut(&mut mode) => {
            Counters::add(&counters.connections_cut, 1);
            reset(client);
            return;
        }
    };
    // Nagle's algorithm would hold small frames back and add its own delay to every mode.
    let nodelay = client
        .set_nodelay(true)
        .and_then(|()| server.set_nodelay(true));
    if nodelay.is_err() {
        Counters::add(&counters.connections_failed, 1);
        reset(client);
        reset(server);
        return;
    }

    let ending = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let to_target = forward(
            client_read,
            server_write,
            mode.clone(),
            &counters.bytes_to_target,
        );
        let to_client = forward(
            server_read,
            client_write,
            mode.clone(),
            &counters.bytes_to_client,
        );
        tokio::select! {
            // The cut first: at the end of a blackhole the writers wake too, and must not write
            // what they held before the connection is cut.
            biased;
            () = until_cut(&mut mode) => Some(Ending::Cut),
            ended = async { tokio::try_join!(to_target, to_client) } => ended.err(),
        }
    };
    match ending {
        // Both directions closed in order and passed their end-of-stream on.
        None => {}
        Some(ending) => {
            // Counted before the reset, so a peer that sees the reset sees the count too.
            if ending == Ending::Cut {
                Counters::add(&counters.connections_cut, 1);
            }
            reset(client);
            reset(server);
        }
    }
}

/// Returns when the link is partitioned, when it leaves a blackhole this connection saw, or when
/// the proxy is gone (its mode sender dropped).
async fn until_cut(mode: &mut watch::Receiver<LinkMode>) {
    let mut blackholed = false;
    loop {
        // The current mode first, so a partition or blackhole already in force counts.
        match *mode.borrow_and_update() {
            LinkMode::Partition => return,
            LinkMode::Blackhole => blackholed = true,
            _ if blackholed => return,
            _ => {}
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// Waits while the link is a blackhole (at once if it is not); the connection's `until_cut`
/// ends the connection when the blackhole does.
async fn while_blackholed(mode: &mut watch::Receiver<LinkMode>) {
    let _ = mode.wait_for(|mode| *mode != LinkMode::Blackhole).await;
}

/// One direction of a connection: a reader that stamps each chunk with its due time and queues
/// it, and a writer that writes each chunk once due, both running at once so a delay does not
/// limit throughput. End-of-stream is passed on once the queue is drained.
async fn forward<R, W>(
    mut reader: R,
    mut writer: W,
    mode: watch::Receiver<LinkMode>,
    bytes_written: &AtomicU64,
) -> Result<(), Ending>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Room in the queue, in bytes: the reader takes a chunk's worth before queueing it, the writer
    // gives it back once the chunk is written. The channel itself is bounded by this.
    let room = &Semaphore::new(QUEUE_BYTES_MAX);
    let (queue, mut due_chunks) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();

    let mut write_mode = mode.clone();
    let mut mode = mode;
    // Moves `queue` in, so that it is dropped, and the writer sees the end, when reading ends.
    let read = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES_MAX];
        loop {
            // In a blackhole nothing is read: the sender's bytes stay in the kernel buffers.
            while_blackholed(&mut mode).await;
            let length = reader.read(&mut buffer).await.map_err(|_| Ending::Broken)?;
            if length == 0 {
                // Dropping `queue` tells the writer that no more chunks come.
                return Ok(());
            }
            let arrived = Instant::now();
            let delay = match *mode.borrow() {
                LinkMode::Pass => Duration::ZERO,
                LinkMode::Delay(delay) => delay,
                LinkMode::Drop { probability } => {
                    if drop_roll(probability) {
                        return Err(Ending::Cut);
                    }
                    Duration::ZERO
                }
                // The connection's watch cuts it too; this only stops the chunk at once.
                LinkMode::Partition => return Err(Ending::Cut),
                // Read as the blackhole began: held (queued, and the writer holds it).
                LinkMode::Blackhole => Duration::ZERO,
            };
            let permits = u32::try_from(length).map_err(|_| Ending::Broken)?;
            // Waiting here is the backpressure: the sender's bytes stay in the kernel buffers.
            // The semaphore is never closed, so acquiring only fails if it is a bug.
            room.acquire_many(permits)
                .await
                .map_err(|_| Ending::Broken)?
                .forget();
            queue
                .send((arrived + delay, buffer[..length].to_vec()))
                .map_err(|_| Ending::Broken)?;
        }
    };

    let write = async move {
        while let Some((due, chunk)) = due_chunks.recv().await {
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            // Nothing is written in a blackhole; what is held goes with the cut at its end.
            while_blackholed(&mut write_mode).await;
            writer.write_all(&chunk).await.map_err(|_| Ending::Broken)?;
            Counters::add(bytes_written, chunk.len() as u64);
            room.add_permits(chunk.len());
        }
        writer.shutdown().await.map_err(|_| Ending::Broken)
    };

    tokio::try_join!(read, write).map(|((), ())| ())
}

/// Whether a chunk cuts its connection under `LinkMode::Drop { probability }`.
fn drop_roll(probability: f64) -> bool {
    // The ends are exact, so that 0 and 1 are deterministic (and `random_bool` is not asked for
    // values outside 0 to 1, which it panics on).
    if probability <= 0.0 {
        false
    } else if probability >= 1.0 {
        true
    } else {
        rand::random_bool(probability)
    }
}

/// Closes `stream` abortively: the peer gets a reset, not an orderly end-of-stream.
fn reset(stream: TcpStream) {
    // If the option cannot be set, dropping still closes the socket, with a FIN instead.
    let _ = stream.set_zero_linger();
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Longest any single step of a test may take; every wait is bounded by it.
    const STEP_TIMEOUT: Duration = Duration::from_secs(1);

    /// An echo server on a free port: writes back every byte, closes when the client does.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let address = listener.local_addr().expect("echo address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    if tokio::io::copy(&mut reader, &mut writer).await.is_ok() {
                        let _ = writer.shutdown().await;
                    }
                });
            }
        });
        address
    }

    /// A proxy in front of a new echo server.
    async fn echo_proxy() -> Proxy {
        let echo = echo_server().await;
        Proxy::start("127.0.0.1:0".parse().expect("address"), echo)
            .await
            .expect("start proxy")
    }

    async fn connect(proxy: &Proxy) -> TcpStream {
        let stream = TcpStream::connect(proxy.local_addr())
            .await
            .expect("connect to proxy");
        stream.set_nodelay(true).expect("nodelay");
        stream
    }

    /// Sends `message` and reads as many bytes back.
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write");
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(STEP_TIMEOUT, stream.read_exact(&mut echoed))
            .await
            .expect("echo within the step timeout")
            .expect("read echo");
        echoed
    }

    /// Asserts that the connection is cut promptly: a read ends (end-of-stream or an error)
    /// without giving back any byte.
    async fn assert_cut(stream: &mut (impl AsyncRead + Unpin)) {
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(STEP_TIMEOUT, stream.read(&mut buffer)).await {
            Err(_) => panic!("connection still open after {STEP_TIMEOUT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(length)) => panic!("{length} bytes got through a cut connection"),
        }
    }

    /// Waits until the proxy's stats satisfy `check`: counters move in the proxy's tasks, a
    /// moment after the peers see the effect.
    async fn wait_for_stats(proxy: &Proxy, check: impl Fn(&ProxyStats) -> bool) -> ProxyStats {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let stats = proxy.stats();
            if check(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "stats never matched: {stats:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn proxy_pass_echoes_and_counts() {
        let proxy = echo_proxy().await;
        assert_eq!(proxy.mode(), LinkMode::Pass);
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        assert_eq!(round_trip(&mut stream, b"world!").await, b"world!");
        let stats = wait_for_stats(&proxy, |stats| stats.bytes_to_client == 11).await;
        assert_eq!(
            stats,
            ProxyStats {
                connections_accepted: 1,
                bytes_to_target: 11,
                bytes_to_client: 11,
                ..ProxyStats::default()
            }
        );
    }

    #[tokio::test]
    async fn proxy_passes_orderly_close_on() {
        let proxy = echo_proxy().await;
        let mut stream = connect(&proxy).await;
        stream.write_all(b"last words").await.expect("write");
        stream.shutdown().await.expect("half-close");
        let mut echoed = Vec::new();
        tokio::time::timeout(STEP_TIMEOUT, stream.read_to_end(&mut echoed))
            .await
            .expect("end-of-stream within the step timeout")
            .expect("read to end");
        assert_eq!(echoed, b"last words");
        let stats = wait_for_stats(&proxy, |stats| stats.bytes_to_client == 10).await;
        assert_eq!(stats.connections_cut, 0);
    }

    #[tokio::test]
    async fn proxy_delay_holds_each_direction_and_keeps_order() {
        let delay = Duration::from_millis(50);
        let proxy = echo_proxy().await;
        proxy.set_mode(LinkMode::Delay(delay));
        assert_eq!(proxy.mode(), LinkMode::Delay(delay));
        let mut stream = connect(&proxy).await;
        let sent = Instant::now();
        assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");
        assert!(
            sent.elapsed() >= 2 * delay,
            "round trip took {:?}, less than twice the delay",
            sent.elapsed()
        );

        // Chunks sent a little apart are delayed side by side, not one after the other: 20 of
        // them would take at least 20 * 50 ms one after the other, and come back in about
        // 40 ms + 2 * 50 ms through a delay line.
        let (mut reader, mut writer) = stream.into_split();
        let sent = Instant::now();
        let chunks = 20u8;
        let sender = tokio::spawn(async move {
            for index in 0..chunks {
                writer.write_all(&[index]).await.expect("write chunk");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            writer
        });
        let mut echoed = vec![0u8; usize::from(chunks)];
        tokio::time::timeout(STEP_TIMEOUT, reader.read_exact(&mut echoed))
            .await
            .expect("echo within the step timeout")
            .expect("read echo");
        let elapsed = sent.elapsed();
        assert_eq!(
            echoed,
            (0..chunks).collect::<Vec<u8>>(),
            "bytes out of order"
        );
        assert!(elapsed >= 2 * delay, "came back after {elapsed:?}");
        assert!(
            elapsed < Duration::from_millis(600),
            "came back after {elapsed:?}: chunks were delayed one after the other"
        );
        sender.await.expect("sender task");
    }

    #[tokio::test]
    async fn proxy_delay_bounds_its_queue_and_delivers_a_large_transfer_intact() {
        let proxy = echo_proxy().await;
        proxy.set_mode(LinkMode::Delay(Duration::from_millis(5)));
        let stream = connect(&proxy).await;
        let (mut reader, mut writer) = stream.into_split();
        // Several times the queue bound, so the proxy has to stop reading and start again.
        let payload: Vec<u8> = (0..4 * QUEUE_BYTES_MAX).map(|index| index as u8).collect();
        let sent = payload.clone();
        let sender = tokio::spawn(async move {
            writer.write_all(&sent).await.expect("write payload");
            writer.shutdown().await.expect("half-close");
        });
        let mut echoed = Vec::with_capacity(payload.len());
        tokio::time::timeout(STEP_TIMEOUT, reader.read_to_end(&mut echoed))
            .await
            .expect("whole payload within the step timeout")
            .expect("read payload");
        assert!(echoed == payload, "payload changed on the way");
        sender.await.expect("sender task");
    }

    #[tokio::test]
    async fn proxy_partition_cuts_open_and_new_connections_until_pass() {
        let proxy = echo_proxy().await;
        let mut open = connect(&proxy).await;
        assert_eq!(round_trip(&mut open, b"before").await, b"before");

        proxy.set_mode(LinkMode::Partition);
        assert_cut(&mut open).await;
        wait_for_stats(&proxy, |stats| stats.connections_cut == 1).await;

        let mut during = connect(&proxy).await;
        // The write may fail or not, depending on when the reset lands; nothing may come back.
        let _ = during.write_all(b"during").await;
        assert_cut(&mut during).await;
        wait_for_stats(&proxy, |stats| stats.connections_rejected == 1).await;

        proxy.set_mode(LinkMode::Pass);
        let mut after = connect(&proxy).await;
        assert_eq!(round_trip(&mut after, b"after").await, b"after");
        let stats = proxy.stats();
        assert_eq!(stats.connections_accepted, 3);
        assert_eq!(stats.connections_cut, 1);
        assert_eq!(stats.connections_rejected, 1);
        assert_eq!(stats.bytes_to_target, 11, "bytes got through the partition");
    }

    /// Asserts that nothing comes back on `stream` for a while and that it is not closed either.
    async fn assert_silent(stream: &mut TcpStream, how_long: Duration) {
        let mut buffer = [0u8; 64];
        match tokio::time::timeout(how_long, stream.read(&mut buffer)).await {
            Err(_) => {}
            Ok(Ok(0)) => panic!("end-of-stream through a blackhole"),
            Ok(Ok(length)) => panic!("{length} bytes got through a blackhole"),
            Ok(Err(error)) => panic!("a blackholed connection failed: {error}"),
        }
    }

    #[tokio::test]
    async fn proxy_blackhole_holds_connections_silently_and_cuts_them_when_it_ends() {
        let proxy = echo_proxy().await;
        let mut open = connect(&proxy).await;
        assert_eq!(round_trip(&mut open, b"before").await, b"before");

        proxy.set_mode(LinkMode::Blackhole);
        assert_eq!(proxy.mode(), LinkMode::Blackhole);
        open.write_all(b"into the hole").await.expect("write");
        assert_silent(&mut open, Duration::from_millis(300)).await;
        // A new connection is accepted, and silent too.
        let mut during = connect(&proxy).await;
        during.write_all(b"also lost").await.expect("write");
        assert_silent(&mut during, Duration::from_millis(100)).await;
        // The proxy reads nothing, so a sender's writes stall once the kernel buffers are full:
        // far more than they hold cannot be written.
        let (mut reader, mut writer) = open.into_split();
        let flood = tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut written = 0usize;
            while writer.write_all(&chunk).await.is_ok() {
                written += chunk.len();
            }
            written
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !flood.is_finished(),
            "the sender's writes failed in a blackhole"
        );
        let stats = proxy.stats();
        assert_eq!(stats.bytes_to_target, 6, "bytes got through the blackhole");
        assert_eq!(stats.bytes_to_client, 6, "bytes got through the blackhole");
        assert_eq!(stats.connections_cut, 0);
        assert_eq!(stats.connections_blackholed, 1);

        // The heal cuts both connections (the held bytes are discarded); a new one passes.
        proxy.set_mode(LinkMode::Pass);
        assert_cut(&mut reader).await;
        let written = tokio::time::timeout(STEP_TIMEOUT, flood)
            .await
            .expect("the stalled sender fails once cut")
            .expect("sender task");
        assert!(
            written < 32 * QUEUE_BYTES_MAX,
            "{written} bytes were written into a blackhole: the proxy kept reading"
        );
        assert_cut(&mut during).await;
        let stats = wait_for_stats(&proxy, |stats| stats.connections_cut == 2).await;
        assert_eq!(
            stats.bytes_to_target, 6,
            "held bytes were delivered after the heal"
        );
        let mut after = connect(&proxy).await;
        assert_eq!(round_trip(&mut after, b"after").await, b"after");
    }

    #[tokio::test]
    async fn proxy_drop_certain_cuts_on_first_chunk() {
        let proxy = echo_proxy().await;
        proxy.set_mode(LinkMode::Drop { probability: 1.0 });
        let mut stream = connect(&proxy).await;
        stream.write_all(b"lost").await.expect("write");
        assert_cut(&mut stream).await;
        let stats = wait_for_stats(&proxy, |stats| stats.connections_cut == 1).await;
        assert_eq!(stats.bytes_to_target, 0);
        assert_eq!(stats.bytes_to_client, 0);

        proxy.set_mode(LinkMode::Drop { probability: 0.0 });
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"kept").await, b"kept");
    }

    #[tokio::test]
    async fn proxy_dropped_cuts_connections_and_stops_listening() {
        let proxy = echo_proxy().await;
        let address = proxy.local_addr();
        let mut stream = connect(&proxy).await;
        assert_eq!(round_trip(&mut stream, b"alive").await, b"alive");
        drop(proxy);
        assert_cut(&mut stream).await;
        // The listener task is aborted asynchronously; the port closes a moment later.
        let deadline = Instant::now() + STEP_TIMEOUT;
        while TcpStream::connect(address).await.is_ok() {
            assert!(Instant::now() < deadline, "proxy still listening");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    #[should_panic(expected = "not within 0 to 1")]
    fn proxy_refuses_a_drop_probability_above_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let proxy = echo_proxy().await;
            proxy.set_mode(LinkMode::Drop { probability: 1.5 });
        });
    }
}
