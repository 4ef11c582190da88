//! [`ReplicatedLog`]: the [`engine::Log`] of an engine open on a group's leader. The engine's
//! records are queued here with their LSNs; the group's driver takes them as Raft proposals (one
//! entry for everything queued, up to a bound) and reports back which LSNs are committed. A record
//! is "durable" for the engine once the entry carrying it is committed in the group and applied
//! locally.
//!
//! One `ReplicatedLog` serves one engine for one stretch of leadership. When the replica stops
//! leading, the log is closed: appends and waits are answered [`WalError::Closed`] (not a storage
//! failure), and the next leadership opens a new engine over a new log.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread;

use engine::Log;
use engine::wal::{Lsn, Record, Waiter, WalError};

use crate::payload;

/// Called when records are queued, so the driver proposes them.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .expect("a thread panicked while holding a replicated log lock")
}

/// See the module documentation. Cloning gives another handle on the same log.
#[derive(Clone)]
pub struct ReplicatedLog {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Every record up to here is committed and applied locally (as far as the log knows).
    committed_lsn: AtomicU64,
    waiters: Mutex<Vec<(Lsn, Waiter)>>,
    wake: Wake,
    /// Bound on bytes of records queued or proposed and not yet committed.
    uncommitted_bytes_max: usize,
}

struct State {
    closed: bool,
    failure: Option<Arc<io::Error>>,
    next_lsn: Lsn,
    /// Queued records, encoded as in an entry (without its header), from `queued_first_lsn`.
    queued: Vec<u8>,
    queued_first_lsn: Lsn,
    queued_count: u32,
    /// Records of entries proposed and not yet committed: (last LSN, bytes), oldest first.
    proposed: VecDeque<(Lsn, usize)>,
    uncommitted_bytes: usize,
}

impl ReplicatedLog {
    /// A log whose records up to `committed_lsn` are committed and applied, and whose next
    /// record gets `committed_lsn + 1`.
    pub fn new(committed_lsn: Lsn, uncommitted_bytes_max: usize, wake: Wake) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    closed: false,
                    failure: None,
                    next_lsn: committed_lsn + 1,
                    queued: Vec::new(),
                    queued_first_lsn: committed_lsn + 1,
                    queued_count: 0,
                    proposed: VecDeque::new(),
                    uncommitted_bytes: 0,
                }),
                committed_lsn: AtomicU64::new(committed_lsn),
                waiters: Mutex::new(Vec::new()),
                wake,
                uncommitted_bytes_max,
            }),
        }
    }

    /// Takes the queued records as one entry's data, at most `data_bytes_max` bytes (but always
    /// at least one record), or `None` when nothing is queued. The caller proposes it at once.
    pub fn take_proposal(&self, data_bytes_max: usize) -> Option<Vec<u8>> {
        let mut state = lock(&self.inner.state);
        if state.closed || state.queued_count == 0 {
            return None;
        }
        // Whole records, as many as fit.
        let mut end = 0;
        let mut count = 0u32;
        while count < state.queued_count {
            let length = u32::from_le_bytes(
                state.queued[end + 1..end + 5]
                    .try_into()
                    .expect("a queued record header"),
            ) as usize;
            let next = end + payload::record_bytes(length);
            if count > 0 && payload::header_bytes() + next > data_bytes_max {
                break;
            }
            end = next;
            count += 1;
        }
        let first_lsn = state.queued_first_lsn;
        let mut data = Vec::with_capacity(payload::header_bytes() + end);
        data.extend_from_slice(&first_lsn.to_le_bytes());
        data.extend_from_slice(&count.to_le_bytes());
        data.extend_from_slice(&state.queued[..end]);
        state.queued.drain(..end);
        state.queued_first_lsn += u64::from(count);
        state.queued_count -= count;
        let last_lsn = first_lsn + u64::from(count) - 1;
        state.proposed.push_back((last_lsn, end));
        Some(data)
    }

    /// Whether records are queued for a proposal.
    pub fn has_queued(&self) -> bool {
        lock(&self.inner.state).queued_count > 0
    }

    /// Records the commit (and local apply) of every record up to `lsn`, and wakes who waits.
    pub fn committed(&self, lsn: Lsn) {
        {
            let mut state = lock(&self.inner.state);
            while let Some(&(last, bytes)) = state.proposed.front() {
                if last > lsn {
                    break;
                }
                state.proposed.pop_front();
                state.uncommitted_bytes -= bytes;
            }
        }
        self.inner.committed_lsn.fetch_max(lsn, Ordering::AcqRel);
        self.wake_waiters(|waiter_lsn| waiter_lsn <= lsn);
    }

    /// Stops the log: this replica no longer leads, or its proposals broke the LSN sequence.
    /// Queued records are dropped; every append and wait from now on is `Closed`.
    pub fn close(&self) {
        {
            let mut state = lock(&self.inner.state);
            state.closed = true;
            state.queued.clear();
            state.queued_count = 0;
        }
        self.wake_waiters(|_| true);
    }

    /// Makes the log fail: the replica's storage failed.
    pub fn fail(&self, error: Arc<io::Error>) {
        lock(&self.inner.state).failure.get_or_insert(error);
        self.close();
    }

    fn wake_waiters(&self, ready: impl Fn(Lsn) -> bool) {
        let woken: Vec<Waiter> = {
            let mut waiters = lock(&self.inner.waiters);
            let (woken, kept) = std::mem::take(&mut *waiters)
                .into_iter()
                .partition(|(lsn, _)| ready(*lsn));
            *waiters = kept;
            woken.into_iter().map(|(_, waiter)| waiter).collect()
        };
        for waiter in woken {
            waiter.wake();
        }
    }

    /// `Ok(true)` when `lsn` is committed, the reason it never will be, or `Ok(false)`.
    fn is_durable(&self, lsn: Lsn) -> Result<bool, WalError> {
        if self.inner.committed_lsn.load(Ordering::Acquire) >= lsn {
            return Ok(true);
        }
        let state = lock(&self.inner.state);
        if let Some(failure) = &state.failure {
            return Err(WalError::Failed(failure.clone()));
        }
        if state.closed {
            return Err(WalError::Closed);
        }
        Ok(false)
    }
}

impl Log for ReplicatedLog {
    type Durable = Committed;
    type Reader = std::iter::Empty<Result<Record, WalError>>;

    fn append_batch(&self, records: &[(u8, &[u8])]) -> Result<Lsn, WalError> {
        let bytes: usize = records
            .iter()
            .map(|(_, payload)| payload::record_bytes(payload.len()))
            .sum();
        {
            let mut state = lock(&self.inner.state);
            if let Some(failure) = &state.failure {
                return Err(WalError::Failed(failure.clone()));
            }
            if state.closed {
                return Err(WalError::Closed);
            }
            if records.is_empty() {
                return Ok(state.next_lsn - 1);
            }
            if state.uncommitted_bytes > 0
                && state.uncommitted_bytes + bytes > self.inner.uncommitted_bytes_max
            {
                return Err(WalError::Full {
                    pending_bytes: state.uncommitted_bytes,
                });
            }
            for (kind, _) in records {
                if *kind == 0 {
                    return Err(WalError::ReservedKind);
                }
            }
            for (kind, payload) in records {
                state.queued.push(*kind);
                state
                    .queued
                    .extend_from_slice(&(payload.len() as u32).to_le_bytes());
                state.queued.extend_from_slice(payload);
            }
            state.queued_count += records.len() as u32;
            state.uncommitted_bytes += bytes;
            state.next_lsn += records.len() as Lsn;
            let last = state.next_lsn - 1;
            drop(state);
            (self.inner.wake)();
            Ok(last)
        }
    }

    fn durable_lsn(&self) -> Lsn {
        self.inner.committed_lsn.load(Ordering::Acquire)
    }

    fn wait_durable(&self, lsn: Lsn) -> Result<(), WalError> {
        loop {
            if self.is_durable(lsn)? {
                return Ok(());
            }
            lock(&self.inner.waiters).push((lsn, Waiter::Thread(thread::current())));
            if self.is_durable(lsn)? {
                return Ok(());
            }
            thread::park();
        }
    }

    fn durable(&self, lsn: Lsn) -> Committed {
        Committed {
            log: self.clone(),
            lsn,
        }
    }

    fn failure(&self) -> Option<Arc<io::Error>> {
        lock(&self.inner.state).failure.clone()
    }

    /// Everything committed is applied before an engine opens over this log, so the engine
    /// replays nothing: the log has nothing to read back.
    fn first_lsn(&self) -> Lsn {
        self.durable_lsn() + 1
    }

    fn read_from(&self, from: Lsn) -> Result<Self::Reader, WalError> {
        let first = self.first_lsn();
        if from < first {
            return Err(WalError::Truncated {
                requested: from,
                first,
            });
        }
        Ok(std::iter::empty())
    }

    /// The group compacts its Raft log itself, below what every replica's tables hold.
    fn truncate_below(&self, _lsn: Lsn) -> Result<usize, WalError> {
        Ok(0)
    }
}

/// Future returned by [`ReplicatedLog::durable`](Log::durable).
pub struct Committed {
    log: ReplicatedLog,
    lsn: Lsn,
}

impl std::future::Future for Committed {
    type Output = Result<(), WalError>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        match self.log.is_durable(self.lsn) {
            Ok(true) => return Poll::Ready(Ok(())),
            Err(error) => return Poll::Ready(Err(error)),
            Ok(false) => {}
        }
        lock(&self.log.inner.waiters).push((self.lsn, Waiter::Task(context.waker().clone())));
        match self.log.is_durable(self.lsn) {
            Ok(true) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(Err(error)),
            Ok(false) => Poll::Pending,
        }
    }
}
