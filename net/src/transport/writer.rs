//! The per-connection writer task shared by server and client: coalesces queued frames into one
//! write.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Stop gathering queued frames into one write once this much is buffered, so one write never
/// holds more than about this much memory beyond the frames themselves.
pub(crate) const WRITE_COALESCE_SIZE_MAX_BYTES: usize = 256 * 1024;

/// Writes every frame received on `frames` until all senders are gone, then shuts the stream down
/// for writing. A write that cannot finish within `write_timeout` (a peer that stopped reading,
/// or vanished) ends the task, which closes the channel and so stops its producers.
pub(crate) async fn write_frames<W: AsyncWrite + Unpin>(
    mut stream: W,
    mut frames: mpsc::Receiver<Bytes>,
    write_timeout: Duration,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while let Some(frame) = frames.recv().await {
        buf.extend_from_slice(&frame);
        // Let the tasks already runnable go first: under load they queue more frames, which
        // then leave in this write instead of one write each; with nothing else to run this
        // returns at once.
        tokio::task::yield_now().await;
        while buf.len() < WRITE_COALESCE_SIZE_MAX_BYTES {
            match frames.try_recv() {
                Ok(frame) => buf.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        match tokio::time::timeout(write_timeout, stream.write_all(&buf)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "peer is not reading",
                ));
            }
        }
        buf.clear();
    }
    // Bounded too: a peer that never reads could otherwise hold the flush forever.
    let _ = tokio::time::timeout(write_timeout, stream.shutdown()).await;
    Ok(())
}
