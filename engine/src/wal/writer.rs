//! The WAL's two threads: the group-commit writer and the segment preallocator.
//!
//! The writer sleeps until records are queued, takes the whole queue (everything that arrived
//! while its previous fdatasync ran), writes it with one positional write per segment touched,
//! syncs once, and publishes the new durable LSN. No timer forms a group: the fdatasync itself is
//! the window in which the next group gathers.
//!
//! The preallocator keeps one spare segment ready: created under a temporary name, zero-filled
//! with real writes and synced, so that the writer's fdatasyncs overwrite blocks the file system
//! has already allocated and marked written (no extent conversion or size change to journal).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

use crate::wal::format::{self, SEGMENT_HEADER_SIZE};
use crate::wal::storage::{Storage, StorageFile};
use crate::wal::{Lsn, Segment, Shared, SyncPolicy, lock, segment_name};

/// Zero-filling writes this much at a time, so shutting down never waits for a whole segment.
const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;
/// Suffix of segment files still being prepared; recovery deletes them.
pub(crate) const SPARE_SUFFIX: &str = ".tmp";

/// The segment being written.
pub(crate) struct ActiveSegment<F> {
    pub(crate) segment: Segment<F>,
    pub(crate) write_offset: u64,
    /// The segment file's size: records never go past it.
    pub(crate) capacity: u64,
}

/// Hand-over point between the preallocator (producer) and the writer (consumer).
pub(crate) struct SpareSlot<F> {
    state: Mutex<SpareState<F>>,
    changed: Condvar,
}

struct SpareState<F> {
    ready: Option<(String, Arc<F>)>,
    error: Option<io::Error>,
    shutdown: bool,
    sequence: u64,
}

impl<F> SpareSlot<F> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(SpareState {
                ready: None,
                error: None,
                shutdown: false,
                sequence: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// Waits for the spare segment, or the preallocator's error.
    fn take(&self) -> io::Result<(String, Arc<F>)> {
        let mut state = lock(&self.state);
        loop {
            if let Some(spare) = state.ready.take() {
                self.changed.notify_all();
                return Ok(spare);
            }
            if let Some(error) = state.error.take() {
                return Err(error);
            }
            if state.shutdown {
                return Err(io::Error::other("WAL preallocator shut down"));
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub(crate) fn shut_down(&self) {
        lock(&self.state).shutdown = true;
        self.changed.notify_all();
    }

    fn is_shut_down(&self) -> bool {
        lock(&self.state).shutdown
    }
}

pub(crate) fn run_preallocator<S: Storage>(shared: &Shared<S>, spare: &SpareSlot<S::File>) {
    loop {
        let sequence = {
            let mut state = lock(&spare.state);
            while state.ready.is_some() && !state.shutdown {
                state = spare.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.shutdown {
                return;
            }
            state.sequence += 1;
            state.sequence
        };
        let name = format!("spare-{sequence:06}{SPARE_SUFFIX}");
        let result = prepare_spare(
            &shared.storage,
            &name,
            shared.options.segment_size_bytes,
            shared.options.sync_policy,
            &|| spare.is_shut_down(),
        );
        let mut state = lock(&spare.state);
        match result {
            Ok(Some(file)) => state.ready = Some((name, file)),
            Ok(None) => return,
            Err(error) => {
                tracing::error!(%error, "WAL segment preallocation failed");
                // Reported when the writer needs the segment: say what was being done.
                state.error = Some(io::Error::new(
                    error.kind(),
                    format!("cannot prepare the next WAL segment: {error}"),
                ));
                spare.changed.notify_all();
                return;
            }
        }
        spare.changed.notify_all();
    }
}

/// Creates `name`, zero-fills `size_bytes` with real writes and syncs it. `None` when
/// `stop()` turned true part way (the file is left for recovery to delete).
pub(crate) fn prepare_spare<S: Storage>(
    storage: &S,
    name: &str,
    size_bytes: u64,
    sync_policy: SyncPolicy,
    stop: &dyn Fn() -> bool,
) -> io::Result<Option<Arc<S::File>>> {
    let file = storage.create(name)?;
    let zeroes = vec![0u8; ZERO_FILL_CHUNK_BYTES];
    let mut offset = 0u64;
    while offset < size_bytes {
        if stop() {
            return Ok(None);
        }
        let length = (size_bytes - offset).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_at(offset, &zeroes[..length])?;
        offset += length as u64;
    }
    if sync_policy == SyncPolicy::FdatasyncPerGroup {
        file.sync_data()?;
    }
    Ok(Some(file))
}

/// Turns a prepared spare into the segment starting at `first_lsn`: header written and synced
/// before the rename, rename made durable before any record is written into it. A crash before
/// the directory sync leaves either the spare (deleted at open) or the empty new segment.
pub(crate) fn install_segment<S: Storage>(
    storage: &S,
    spare_name: &str,
    file: Arc<S::File>,
    first_lsn: Lsn,
    sync_policy: SyncPolicy,
) -> io::Result<ActiveSegment<S::File>> {
    let capacity = file.size_bytes()?;
    file.write_at(0, &format::encode_segment_header(first_lsn))?;
    let name = segment_name(first_lsn);
    if sync_policy == SyncPolicy::FdatasyncPerGroup {
        file.sync_data()?;
    }
    storage.rename(spare_name, &name)?;
    if sync_policy == SyncPolicy::FdatasyncPerGroup {
        storage.sync_dir()?;
    }
    Ok(ActiveSegment {
        segment: Segment {
            first_lsn,
            name,
            file,
        },
        write_offset: SEGMENT_HEADER_SIZE as u64,
        capacity,
    })
}

pub(crate) fn run_writer<S: Storage>(
    shared: &Shared<S>,
    spare: &SpareSlot<S::File>,
    mut active: ActiveSegment<S::File>,
) {
    let mut group = Vec::new();
    loop {
        let last_lsn = {
            let mut queue = lock(&shared.queue);
            while queue.buffer.is_empty() && !queue.closed {
                queue.writer_idle = true;
                queue = shared
                    .work_available
                    .wait(queue)
                    .unwrap_or_else(|p| p.into_inner());
            }
            queue.writer_idle = false;
            if queue.buffer.is_empty() || shared.failure.get().is_some() {
                shared.writer_stopped.store(true, Ordering::Release);
                return;
            }
            std::mem::swap(&mut queue.buffer, &mut group);
            if queue.appenders_waiting_for_room > 0 {
                shared.room_available.notify_all();
            }
            queue.next_lsn - 1
        };
        match write_group(shared, spare, &mut active, &group) {
            Ok(()) => shared.publish_durable(last_lsn),
            Err(error) => {
                shared.fail(error);
                shared.writer_stopped.store(true, Ordering::Release);
                return;
            }
        }
        group.clear();
    }
}

fn write_group<S: Storage>(
    shared: &Shared<S>,
    spare: &SpareSlot<S::File>,
    active: &mut ActiveSegment<S::File>,
    mut bytes: &[u8],
) -> io::Result<()> {
    let sync = shared.options.sync_policy == SyncPolicy::FdatasyncPerGroup;
    while !bytes.is_empty() {
        let room = active.capacity - active.write_offset;
        let mut fitting = 0usize;
        while fitting < bytes.len() {
            let size = format::trusted_record_size(&bytes[fitting..]);
            if (fitting + size) as u64 > room {
                break;
            }
            fitting += size;
        }
        if fitting > 0 {
            active
                .segment
                .file
                .write_at(active.write_offset, &bytes[..fitting])?;
            active.write_offset += fitting as u64;
            shared
                .bytes_written
                .fetch_add(fitting as u64, Ordering::Relaxed);
            bytes = &bytes[fitting..];
        } else if active.write_offset == SEGMENT_HEADER_SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a record does not fit in an empty segment",
            ));
        }
        if !bytes.is_empty() {
            // The old segment must be complete on disk before the new one's name is: recovery
            // treats any damage in a segment that has a successor as corruption.
            if sync {
                active.segment.file.sync_data()?;
            }
            let (spare_name, file) = spare.take()?;
            let first_lsn = format::trusted_record_lsn(bytes);
            *active = install_segment(
                &shared.storage,
                &spare_name,
                file,
                first_lsn,
                shared.options.sync_policy,
            )?;
            lock(&shared.segments).push(active.segment.clone());
            shared.segments_created.fetch_add(1, Ordering::Relaxed);
        }
    }
    if sync {
        let started = std::time::Instant::now();
        active.segment.file.sync_data()?;
        shared.fsync.observe(started.elapsed());
    }
    shared.groups_written.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
