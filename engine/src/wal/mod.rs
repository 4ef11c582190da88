//! The write-ahead log: group-committed, CRC-checked, LSN-addressed segment files.
//!
//! Appenders on any thread call [`Wal::append`], which encodes the record into the pending group
//! and returns its LSN at once. One writer thread takes everything that queued while its previous
//! fdatasync was in flight and makes it durable with one write and one fdatasync, then wakes the
//! appenders waiting in [`Wal::wait_durable`] (threads) or on [`Wal::durable`] (futures). A
//! second thread keeps one zero-filled segment ready so that rotation never waits on block
//! allocation. Layout and crash analysis: ARCHITECTURE.md, "The write-ahead log".

#[cfg(feature = "failpoints")]
mod faults;
mod format;
mod memory;
mod reader;
mod recovery;
mod storage;
mod writer;

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::thread::{self, JoinHandle, Thread};

pub use format::{
    FORMAT_VERSION, RECORD_HEADER_SIZE, RECORD_PAYLOAD_SIZE_MAX_BYTES, SEGMENT_HEADER_SIZE,
};
pub use memory::{CrashMode, MemoryFile, MemoryStorage};
pub use reader::{Record, WalReader};
pub use recovery::RecoveryReport;
pub use storage::{FileStorage, Storage, StorageFile};

/// Log sequence number: dense, starting at 1; 0 means "no record".
pub type Lsn = u64;

/// Default size of a segment file.
pub const SEGMENT_SIZE_DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted (small segments are for tests of rotation). A log whose
/// segments are smaller than a maximal record accepts only payloads that fit in one segment:
/// see [`Wal::payload_max_bytes`].
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4096;
/// Default bound on bytes queued for the writer; appenders block beyond it (back-pressure).
pub const PENDING_SIZE_DEFAULT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// When the writer makes a group durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// One fdatasync per group; a record counts as durable only after it. The only policy for
    /// real use.
    #[default]
    FdatasyncPerGroup,
    /// Never fdatasync: records count as durable once written to the OS. For benchmarks that
    /// isolate the cost of the sync; a crash of the machine loses acknowledged records.
    UnsafeNoSyncForBenchmarksOnly,
}

/// Tunables of a [`Wal`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Size of each new segment file (existing segments keep the size they were created with).
    pub segment_size_bytes: u64,
    pub sync_policy: SyncPolicy,
    pub pending_max_bytes: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            sync_policy: SyncPolicy::default(),
            pending_max_bytes: PENDING_SIZE_DEFAULT_MAX_BYTES,
        }
    }
}

/// Every way a WAL operation fails.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// The message includes the I/O error, which is therefore not also its `source` (a chain
    /// printed with `{:#}` would show it twice).
    #[error("WAL I/O error: {0}")]
    Io(io::Error),
    /// A write or sync failed earlier; the log accepts nothing until it is reopened, because what
    /// reached the disk is unknown.
    #[error("WAL stopped after a failed write or sync (reopen to recover): {0}")]
    Failed(Arc<io::Error>),
    #[error("WAL corrupt in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    #[error(
        "WAL segment {segment} has format version {version}; this build reads version {supported}"
    )]
    UnsupportedVersion {
        segment: String,
        version: u32,
        supported: u32,
    },
    #[error("record payload of {size_bytes} bytes exceeds the bound of {max_bytes} bytes")]
    RecordTooLarge { size_bytes: usize, max_bytes: u32 },
    #[error("record kind 0 is reserved")]
    ReservedKind,
    #[error("LSN {requested} is no longer in the log (the oldest is {first})")]
    Truncated { requested: Lsn, first: Lsn },
    #[error("LSN {requested} is not durable yet (durable up to {durable})")]
    NotYetDurable { requested: Lsn, durable: Lsn },
    #[error("invalid WAL options: {0}")]
    InvalidOptions(String),
    #[error("the WAL is closed")]
    Closed,
    /// A replicated log's bound of bytes not yet committed is reached: nothing was appended;
    /// retry later. (A [`Wal`] makes appenders wait instead.)
    #[error("the log holds {pending_bytes} bytes not yet durable, its bound; retry later")]
    Full { pending_bytes: usize },
}

impl WalError {
    /// The kind of the I/O error behind this error, if it is one (a full disk is
    /// `io::ErrorKind::StorageFull`).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            WalError::Io(error) => Some(error.kind()),
            WalError::Failed(error) => Some(error.kind()),
            _ => None,
        }
    }
}

impl From<io::Error> for WalError {
    fn from(error: io::Error) -> Self {
        WalError::Io(error)
    }
}

/// Counters since open.
#[derive(Debug, Clone, PartialEq)]
pub struct WalStats {
    pub records_appended: u64,
    /// Groups written; with `FdatasyncPerGroup`, one fdatasync each.
    pub groups_written: u64,
    pub bytes_written: u64,
    pub segments_created: u64,
    pub durable_lsn: Lsn,
    /// How long each group's closing fdatasync took.
    pub fsync: crate::stats::LatencySnapshot,
}

/// A segment as the writer, readers and truncation share it.
pub(crate) struct Segment<F> {
    pub(crate) first_lsn: Lsn,
    pub(crate) name: String,
    pub(crate) file: Arc<F>,
}

impl<F> Clone for Segment<F> {
    fn clone(&self) -> Self {
        Self {
            first_lsn: self.first_lsn,
            name: self.name.clone(),
            file: self.file.clone(),
        }
    }
}

pub(crate) fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.wal")
}

pub(crate) fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Records waiting for the writer.
pub(crate) struct Queue {
    pub(crate) buffer: Vec<u8>,
    /// LSN the next appended record gets.
    pub(crate) next_lsn: Lsn,
    pub(crate) writer_idle: bool,
    pub(crate) closed: bool,
    pub(crate) appenders_waiting_for_room: usize,
}

/// Who waits for an LSN to become durable: a parked thread or an async task. Shared with the
/// replicated log (crate `replica`), whose waiters wait for commits instead.
pub enum Waiter {
    Thread(Thread),
    Task(Waker),
}

impl Waiter {
    pub fn wake(self) {
        match self {
            Waiter::Thread(thread) => thread.unpark(),
            Waiter::Task(waker) => waker.wake(),
        }
    }
}

pub(crate) struct Shared<S: Storage> {
    pub(crate) storage: S,
    pub(crate) options: WalOptions,
    pub(crate) queue: Mutex<Queue>,
    /// Signals the writer that work arrived or the log closed.
    pub(crate) work_available: Condvar,
    /// Signals appenders blocked on the pending bound that the writer took the queue.
    pub(crate) room_available: Condvar,
    pub(crate) durable_lsn: AtomicU64,
    /// Set by the writer thread as it exits: nothing will become durable after this. An atomic,
    /// not a field of the queue, so that waiters never contend with appenders to read it.
    pub(crate) writer_stopped: AtomicBool,
    pub(crate) failure: OnceLock<Arc<io::Error>>,
    pub(crate) waiters: Mutex<Vec<(Lsn, Waiter)>>,
    /// Segments oldest first; the last is the one being written.
    pub(crate) segments: Mutex<Vec<Segment<S::File>>>,
    pub(crate) records_appended: AtomicU64,
    pub(crate) groups_written: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    pub(crate) segments_created: AtomicU64,
    pub(crate) fsync: crate::stats::LatencyHistogram,
}

impl<S: Storage> Shared<S> {
    pub(crate) fn failed(&self) -> Option<WalError> {
        self.failure
            .get()
            .map(|error| WalError::Failed(error.clone()))
    }

    /// Makes `error` sticky and wakes everyone so that nobody waits for a durability that will
    /// never come.
    pub(crate) fn fail(&self, error: io::Error) {
        tracing::error!(%error, "WAL write or sync failed; the log refuses appends until reopened");
        let _ = self.failure.set(Arc::new(error));
        lock(&self.queue).closed = true;
        self.room_available.notify_all();
        let waiters = std::mem::take(&mut *lock(&self.waiters));
        for (_, waiter) in waiters {
            waiter.wake();
        }
    }

    /// Publishes a new durable LSN and wakes the waiters it satisfies.
    pub(crate) fn publish_durable(&self, lsn: Lsn) {
        assert!(
            lsn >= self.durable_lsn.load(Ordering::Acquire),
            "durable LSN went backwards"
        );
        self.durable_lsn.store(lsn, Ordering::Release);
        let ready: Vec<Waiter> = {
            let mut waiters = lock(&self.waiters);
            let mut ready = Vec::new();
            let mut index = 0;
            while index < waiters.len() {
                if waiters[index].0 <= lsn {
                    ready.push(waiters.swap_remove(index).1);
                } else {
                    index += 1;
                }
            }
            ready
        };
        for waiter in ready {
            waiter.wake();
        }
    }

    /// `Ok(true)` when `lsn` is durable, `Ok(false)` when not yet, the sticky error otherwise.
    fn is_durable(&self, lsn: Lsn) -> Result<bool, WalError> {
        if self.durable_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(true);
        }
        if let Some(error) = self.failed() {
            return Err(error);
        }
        if self.writer_stopped.load(Ordering::Acquire) {
            // A failure may have been set between the look above and this one: the writer sets
            // it before it stops, so it is visible now.
            if let Some(error) = self.failed() {
                return Err(error);
            }
            // The writer drained the queue before it stopped, so this LSN was never appended.
            return if self.durable_lsn.load(Ordering::Acquire) >= lsn {
                Ok(true)
            } else {
                Err(WalError::Closed)
            };
        }
        Ok(false)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (buffers, lists), never
    // a half-made durable promise: the sticky failure covers the I/O side.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The write-ahead log. Dropping it writes and syncs what is queued, then stops its threads.
pub struct Wal<S: Storage = FileStorage> {
    shared: Arc<Shared<S>>,
    writer: Option<JoinHandle<()>>,
    preallocator: Option<JoinHandle<()>>,
    spare: Arc<writer::SpareSlot<S::File>>,
}

impl Wal<FileStorage> {
    /// Opens (or creates) the log in `directory`, usually `<data-dir>/wal`.
    pub fn open_directory(
        directory: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<(Self, RecoveryReport), WalError> {
        Self::open(FileStorage::open(directory.as_ref())?, options)
    }
}

impl<S: Storage> Wal<S> {
    /// Opens the log: scans every segment, checks every CRC, truncates a torn tail, refuses
    /// corruption, then starts the writer. See ARCHITECTURE.md for the rules.
    pub fn open(storage: S, options: WalOptions) -> Result<(Self, RecoveryReport), WalError> {
        if options.segment_size_bytes < SEGMENT_SIZE_MIN_BYTES {
            return Err(WalError::InvalidOptions(format!(
                "segment size {} is below the minimum of {SEGMENT_SIZE_MIN_BYTES} bytes",
                options.segment_size_bytes
            )));
        }
        if options.pending_max_bytes == 0 {
            return Err(WalError::InvalidOptions(
                "pending_max_bytes must be positive".into(),
            ));
        }
        let recovered = recovery::recover(&storage, &options)?;
        let report = recovered.report.clone();
        let next_lsn = report.last_lsn + 1;
        let shared = Arc::new(Shared {
            storage,
            options,
            queue: Mutex::new(Queue {
                buffer: Vec::new(),
                next_lsn,
                writer_idle: false,
                closed: false,
                appenders_waiting_for_room: 0,
            }),
            work_available: Condvar::new(),
            room_available: Condvar::new(),
            durable_lsn: AtomicU64::new(report.last_lsn),
            writer_stopped: AtomicBool::new(false),
            failure: OnceLock::new(),
            waiters: Mutex::new(Vec::new()),
            segments: Mutex::new(recovered.segments),
            records_appended: AtomicU64::new(0),
            groups_written: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            segments_created: AtomicU64::new(0),
            fsync: crate::stats::LatencyHistogram::default(),
        });
        let spare = Arc::new(writer::SpareSlot::new());
        let preallocator = {
            let shared = shared.clone();
            let spare = spare.clone();
            thread::Builder::new()
                .name("wal-preallocate".into())
                .spawn(move || writer::run_preallocator(&shared, &spare))?
        };
        let writer = {
            let shared = shared.clone();
            let spare = spare.clone();
            let active = writer::ActiveSegment {
                segment: recovered.active,
                write_offset: recovered.write_offset,
                capacity: recovered.capacity,
            };
            thread::Builder::new()
                .name("wal-writer".into())
                .spawn(move || writer::run_writer(&shared, &spare, active))?
        };
        let wal = Self {
            shared,
            writer: Some(writer),
            preallocator: Some(preallocator),
            spare,
        };
        Ok((wal, report))
    }

    /// Queues one record and returns its LSN. The record is durable once [`Wal::wait_durable`]
    /// (or [`Wal::durable`]) for that LSN returns `Ok`. Blocks only while the pending bound is
    /// exceeded.
    pub fn append(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        self.append_batch(&[(kind, payload)])
    }

    /// Queues several records with consecutive LSNs in one step, returning the last LSN (the
    /// first is `last - records.len() + 1`). An empty batch returns the last LSN assigned so far.
    pub fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError> {
        let mut batch_bytes = 0;
        let payload_max_bytes = self.payload_max_bytes();
        for &(kind, payload) in records {
            if kind == 0 {
                return Err(WalError::ReservedKind);
            }
            if payload.len() > payload_max_bytes as usize {
                return Err(WalError::RecordTooLarge {
                    size_bytes: payload.len(),
                    max_bytes: payload_max_bytes,
                });
            }
            batch_bytes += format::encoded_record_size(payload.len());
        }
        let mut queue = lock(&self.shared.queue);
        loop {
            if let Some(error) = self.shared.failed() {
                return Err(error);
            }
            if queue.closed {
                return Err(WalError::Closed);
            }
            let has_room = queue.buffer.is_empty()
                || queue.buffer.len() + batch_bytes <= self.shared.options.pending_max_bytes;
            if has_room {
                break;
            }
            queue.appenders_waiting_for_room += 1;
            queue = self
                .shared
                .room_available
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
            queue.appenders_waiting_for_room -= 1;
        }
        for &(kind, payload) in records {
            let lsn = queue.next_lsn;
            format::encode_record(&mut queue.buffer, lsn, kind, payload);
            queue.next_lsn = lsn + 1;
        }
        let last_lsn = queue.next_lsn - 1;
        let wake_writer = queue.writer_idle && !records.is_empty();
        if wake_writer {
            queue.writer_idle = false;
        }
        drop(queue);
        if wake_writer {
            self.shared.work_available.notify_one();
        }
        self.shared
            .records_appended
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(last_lsn)
    }

    /// The largest payload this log accepts: [`RECORD_PAYLOAD_SIZE_MAX_BYTES`], or less when
    /// segments are too small for it (every record must fit in one segment).
    pub fn payload_max_bytes(&self) -> u32 {
        let fits_in_segment = self.shared.options.segment_size_bytes
            - (SEGMENT_HEADER_SIZE + RECORD_HEADER_SIZE) as u64;
        fits_in_segment.min(RECORD_PAYLOAD_SIZE_MAX_BYTES as u64) as u32
    }

    /// Blocks until every record up to `lsn` is durable, or the log has failed.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            if self.shared.is_durable(lsn)? {
                return Ok(());
            }
            lock(&self.shared.waiters).push((lsn, Waiter::Thread(thread::current())));
            // Checked again after registering: the writer publishes before it takes the waiter
            // list, so either we see its LSN now or it sees us in the list.
            if self.shared.is_durable(lsn)? {
                return Ok(());
            }
            thread::park();
        }
    }

    /// Appends one record and waits until it is durable.
    pub fn append_durable(&self, kind: u8, payload: &[u8]) -> Result<Lsn, WalError> {
        let lsn = self.append(kind, payload)?;
        self.wait_durable(lsn)?;
        Ok(lsn)
    }

    /// A future that resolves once every record up to `lsn` is durable (for async callers).
    pub fn durable(&self, lsn: Lsn) -> Durable<S> {
        Durable {
            shared: self.shared.clone(),
            lsn,
        }
    }

    /// Every record up to this LSN is durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// The LSN the next appended record will get.
    pub fn next_lsn(&self) -> Lsn {
        lock(&self.shared.queue).next_lsn
    }

    /// The oldest LSN still readable (the first LSN of the oldest segment).
    pub fn first_lsn(&self) -> Lsn {
        lock(&self.shared.segments)
            .first()
            .map_or(1, |segment| segment.first_lsn)
    }

    /// The sticky failure, if a write or sync has failed.
    pub fn failure(&self) -> Option<Arc<io::Error>> {
        self.shared.failure.get().cloned()
    }

    /// Reads durable records from `from` on, in LSN order, up to the durable LSN at this call.
    pub fn read_from(&self, from: Lsn) -> Result<WalReader<S>, WalError> {
        reader::WalReader::new(self.shared.clone(), from)
    }

    /// Deletes whole segments whose records all lie below `lsn` (the caller's checkpoint: every
    /// record below it is reflected in durable state elsewhere). The segment being written is
    /// never deleted. Returns how many segments were deleted.
    pub fn truncate_below(&self, lsn: Lsn) -> Result<usize, WalError> {
        let mut deleted = 0;
        loop {
            // Oldest first, one at a time, each removal made durable before the next: a crash
            // at any point leaves a contiguous run of segments.
            let victim = {
                let mut segments = lock(&self.shared.segments);
                if segments.len() < 2 || segments[1].first_lsn > lsn {
                    break;
                }
                segments.remove(0)
            };
            self.shared.storage.remove(&victim.name)?;
            self.shared.storage.sync_dir()?;
            tracing::debug!(segment = %victim.name, "deleted WAL segment below checkpoint {lsn}");
            deleted += 1;
        }
        Ok(deleted)
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            records_appended: self.shared.records_appended.load(Ordering::Relaxed),
            groups_written: self.shared.groups_written.load(Ordering::Relaxed),
            bytes_written: self.shared.bytes_written.load(Ordering::Relaxed),
            segments_created: self.shared.segments_created.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
            fsync: self.shared.fsync.snapshot(),
        }
    }

    /// Names of the segment files, oldest first.
    pub fn segment_names(&self) -> Vec<String> {
        lock(&self.shared.segments)
            .iter()
            .map(|segment| segment.name.clone())
            .collect()
    }
}

impl<S: Storage> Drop for Wal<S> {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.work_available.notify_all();
        self.shared.room_available.notify_all();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        self.spare.shut_down();
        if let Some(preallocator) = self.preallocator.take() {
            let _ = preallocator.join();
        }
        // Whoever still waits learns the log is closed instead of sleeping forever.
        let waiters = std::mem::take(&mut *lock(&self.shared.waiters));
        for (_, waiter) in waiters {
            waiter.wake();
        }
    }
}

/// Future returned by [`Wal::durable`].
pub struct Durable<S: Storage> {
    shared: Arc<Shared<S>>,
    lsn: Lsn,
}

impl<S: Storage> Future for Durable<S> {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        match self.shared.is_durable(self.lsn) {
            Ok(true) => return Poll::Ready(Ok(())),
            Err(error) => return Poll::Ready(Err(error)),
            Ok(false) => {}
        }
        lock(&self.shared.waiters).push((self.lsn, Waiter::Task(context.waker().clone())));
        match self.shared.is_durable(self.lsn) {
            Ok(true) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
            Ok(false) => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests;
