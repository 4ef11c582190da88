//! [`SimStorage`]: a node's disk as the simulator sees it. Writes reach the in-memory files at
//! once, but a WAL's syncs only take note: the bytes become durable when the simulator says the
//! fdatasync completed ([`SimStorage::sync`], at a `Sync` event some simulated time later). So
//! what a crash keeps depends on the simulated clock alone, never on when the WAL's writer
//! thread happened to run, and a crash between an append and its sync loses it (or tears it)
//! exactly as power loss would.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use engine::wal::{CrashMode, MemoryFile, MemoryStorage, Storage, StorageFile};

/// Syncs asked for and not yet carried out.
#[derive(Default)]
struct Unsynced {
    files: Vec<Arc<MemoryFile>>,
    directory: bool,
}

/// See the module documentation. Clones share the same disk.
#[derive(Clone)]
pub struct SimStorage {
    inner: MemoryStorage,
    unsynced: Arc<Mutex<Unsynced>>,
}

/// A file of a [`SimStorage`].
pub struct SimFile {
    inner: Arc<MemoryFile>,
    unsynced: Arc<Mutex<Unsynced>>,
}

fn lock(unsynced: &Mutex<Unsynced>) -> MutexGuard<'_, Unsynced> {
    unsynced
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SimStorage {
    pub fn new() -> Self {
        Self::over(MemoryStorage::new())
    }

    fn over(inner: MemoryStorage) -> Self {
        Self {
            inner,
            unsynced: Arc::default(),
        }
    }

    /// The fdatasyncs asked for so far complete: every byte written and every directory change
    /// made so far becomes durable.
    pub fn sync(&self) -> io::Result<()> {
        let (files, directory) = {
            let mut unsynced = lock(&self.unsynced);
            (
                std::mem::take(&mut unsynced.files),
                std::mem::take(&mut unsynced.directory),
            )
        };
        for file in files {
            file.sync_data()?;
        }
        if directory {
            self.inner.sync_dir()?;
        }
        Ok(())
    }

    /// The disk a restarted machine finds after losing power now (see [`MemoryStorage::crash`]).
    pub fn crash(&self, mode: CrashMode) -> SimStorage {
        Self::over(self.inner.crash(mode))
    }

    fn wrap(&self, inner: Arc<MemoryFile>) -> Arc<SimFile> {
        Arc::new(SimFile {
            inner,
            unsynced: self.unsynced.clone(),
        })
    }
}

impl Default for SimStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl Storage for SimStorage {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }

    fn create(&self, name: &str) -> io::Result<Arc<SimFile>> {
        Ok(self.wrap(self.inner.create(name)?))
    }

    fn open(&self, name: &str) -> io::Result<Arc<SimFile>> {
        Ok(self.wrap(self.inner.open(name)?))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.inner.remove(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        lock(&self.unsynced).directory = true;
        Ok(())
    }
}

impl StorageFile for SimFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact_at(offset, buffer)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut unsynced = lock(&self.unsynced);
        if !unsynced
            .files
            .iter()
            .any(|file| Arc::ptr_eq(file, &self.inner))
        {
            unsynced.files.push(self.inner.clone());
        }
        Ok(())
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.inner.set_len(length)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        self.inner.size_bytes()
    }
}
