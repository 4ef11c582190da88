//! An in-memory [`Storage`] that keeps written bytes apart from durable bytes, for crash tests.
//!
//! It follows the durability contract of [`Storage`] literally: file data becomes durable on
//! `sync_data`, directory changes (create, rename, remove) on `sync_dir`. [`MemoryStorage::crash`]
//! returns what a machine would find after losing power at that instant: the durable image, and
//! optionally a prefix of each file's unsynced bytes (a torn write). Writes and syncs can be made
//! to fail at a chosen count, to test that failures are sticky.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::wal::storage::{Storage, StorageFile};

/// What a simulated crash keeps of the bytes that were written but not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced byte is lost.
    DropUnsynced,
    /// For each file, a pseudo-random prefix (chosen by `seed`) of its unsynced changes survives:
    /// a write that was torn part way.
    KeepUnsyncedPrefix { seed: u64 },
}

/// Counters shared by every file of one storage: the Nth write or sync can be made to fail.
#[derive(Debug)]
struct Faults {
    writes: AtomicU64,
    syncs: AtomicU64,
    /// 1-based index of the write that fails, and every one after it; `u64::MAX` for none.
    fail_write_from: AtomicU64,
    fail_sync_from: AtomicU64,
}

impl Faults {
    fn new() -> Self {
        Self {
            writes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            fail_write_from: AtomicU64::new(u64::MAX),
            fail_sync_from: AtomicU64::new(u64::MAX),
        }
    }

    /// Fails the operation if its turn has come: a write as a full disk would
    /// (`StorageFull`), a sync as a failing one would (`Other`, the kind of EIO).
    fn check(counter: &AtomicU64, fail_from: &AtomicU64, what: &str) -> io::Result<()> {
        let index = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if index >= fail_from.load(Ordering::SeqCst) {
            let kind = if what == "write" {
                io::ErrorKind::StorageFull
            } else {
                io::ErrorKind::Other
            };
            return Err(io::Error::new(
                kind,
                format!("injected failure of {what} number {index}"),
            ));
        }
        Ok(())
    }
}

/// See the module documentation. Cloning shares the same directory.
#[derive(Clone)]
pub struct MemoryStorage {
    directory: Arc<Mutex<Directory>>,
    faults: Arc<Faults>,
}

#[derive(Default)]
struct Directory {
    live: BTreeMap<String, Arc<MemoryFile>>,
    durable: BTreeMap<String, Arc<MemoryFile>>,
}

/// One in-memory file.
pub struct MemoryFile {
    bytes: Mutex<FileBytes>,
    faults: Arc<Faults>,
}

#[derive(Clone, Default)]
struct FileBytes {
    written: Vec<u8>,
    durable: Vec<u8>,
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self {
            directory: Arc::default(),
            faults: Arc::new(Faults::new()),
        }
    }

    /// Makes the `count`th write from now, and every later one, fail.
    pub fn fail_write_after(&self, count: u64) {
        let done = self.faults.writes.load(Ordering::SeqCst);
        self.faults
            .fail_write_from
            .store(done + count, Ordering::SeqCst);
    }

    /// Makes the `count`th sync (data or directory) from now, and every later one, fail.
    pub fn fail_sync_after(&self, count: u64) {
        let done = self.faults.syncs.load(Ordering::SeqCst);
        self.faults
            .fail_sync_from
            .store(done + count, Ordering::SeqCst);
    }

    /// Number of data and directory syncs so far.
    pub fn sync_count(&self) -> u64 {
        self.faults.syncs.load(Ordering::SeqCst)
    }

    /// The storage a restarted machine would see if power were lost now. The returned storage is
    /// independent of this one (whose later writes it never sees), and has no faults armed.
    pub fn crash(&self, mode: CrashMode) -> MemoryStorage {
        let directory = lock(&self.directory);
        let mut random = match mode {
            CrashMode::DropUnsynced => None,
            CrashMode::KeepUnsyncedPrefix { seed } => Some(SplitMix64(seed)),
        };
        let mut survivors = BTreeMap::new();
        for (name, file) in &directory.durable {
            let bytes = lock(&file.bytes).clone();
            let image = match random.as_mut() {
                None => bytes.durable,
                Some(random) => torn_image(&bytes, random),
            };
            survivors.insert(name.clone(), image);
        }
        drop(directory);
        let storage = MemoryStorage::new();
        {
            let mut directory = lock(&storage.directory);
            for (name, image) in survivors {
                let file = Arc::new(MemoryFile {
                    bytes: Mutex::new(FileBytes {
                        written: image.clone(),
                        durable: image,
                    }),
                    faults: storage.faults.clone(),
                });
                directory.live.insert(name.clone(), file.clone());
                directory.durable.insert(name, file);
            }
        }
        storage
    }

    /// Current (written, not necessarily durable) bytes of a file, for tests that damage or
    /// inspect segments.
    pub fn file_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let directory = lock(&self.directory);
        directory
            .live
            .get(name)
            .map(|file| lock(&file.bytes).written.clone())
    }

    /// Replaces a file's bytes, written and durable alike: a test's way to damage a segment.
    pub fn set_file_bytes(&self, name: &str, image: Vec<u8>) {
        let directory = lock(&self.directory);
        let file = directory
            .live
            .get(name)
            .expect("set_file_bytes: no such file");
        *lock(&file.bytes) = FileBytes {
            written: image.clone(),
            durable: image,
        };
    }
}

/// The durable bytes plus a prefix of the changes made since the last sync.
fn torn_image(bytes: &FileBytes, random: &mut SplitMix64) -> Vec<u8> {
    let mut image = bytes.durable.clone();
    let Some((first_change, last_change)) = changed_range(&bytes.written, &image) else {
        return image;
    };
    let changed = last_change + 1 - first_change;
    let keep = (random.next() % (changed as u64 + 1)) as usize;
    let end = (first_change + keep).min(bytes.written.len());
    if image.len() < end {
        image.resize(end, 0);
    }
    image[first_change..end].copy_from_slice(&bytes.written[first_change..end]);
    image
}

/// The first and last positions where two byte strings differ (a position past the end of one
/// of them differs from a byte of the other), or `None` when they are equal. Compares in blocks,
/// so that unchanged files cost a memcmp, not a loop per byte.
fn changed_range(one: &[u8], other: &[u8]) -> Option<(usize, usize)> {
    const BLOCK: usize = 4096;
    if one == other {
        return None;
    }
    let common = one.len().min(other.len());
    let length = one.len().max(other.len());
    let differs = |index: usize| one.get(index) != other.get(index);
    let mut start = 0;
    let first = loop {
        if start >= common {
            break common;
        }
        let end = (start + BLOCK).min(common);
        if one[start..end] != other[start..end] {
            break (start..end)
                .find(|&index| differs(index))
                .expect("a block differs");
        }
        start = end;
    };
    if length > common {
        return Some((first, length - 1));
    }
    let mut end = common;
    let last = loop {
        let start = end.saturating_sub(BLOCK).max(first);
        if one[start..end] != other[start..end] {
            break (start..end)
                .rev()
                .find(|&index| differs(index))
                .expect("a block differs");
        }
        end = start;
    };
    Some((first, last))
}

/// A tiny deterministic generator, so crash images depend only on the seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file named {name}"))
}

impl Storage for MemoryStorage {
    type File = MemoryFile;

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(lock(&self.directory).live.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Arc<MemoryFile>> {
        let mut directory = lock(&self.directory);
        if directory.live.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists"),
            ));
        }
        let file = Arc::new(MemoryFile {
            bytes: Mutex::default(),
            faults: self.faults.clone(),
        });
        directory.live.insert(name.to_owned(), file.clone());
        Ok(file)
    }

    fn open(&self, name: &str) -> io::Result<Arc<MemoryFile>> {
        lock(&self.directory)
            .live
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut directory = lock(&self.directory);
        if directory.live.contains_key(to) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to} exists"),
            ));
        }
        let file = directory.live.remove(from).ok_or_else(|| not_found(from))?;
        directory.live.insert(to.to_owned(), file);
        Ok(())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        lock(&self.directory)
            .live
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        Faults::check(&self.faults.syncs, &self.faults.fail_sync_from, "sync")?;
        let mut directory = lock(&self.directory);
        directory.durable = directory.live.clone();
        Ok(())
    }
}

impl StorageFile for MemoryFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        Faults::check(&self.faults.writes, &self.faults.fail_write_from, "write")?;
        let mut bytes = lock(&self.bytes);
        let start = offset as usize;
        let end = start + data.len();
        if bytes.written.len() < end {
            bytes.written.resize(end, 0);
        }
        bytes.written[start..end].copy_from_slice(data);
        Ok(())
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        let bytes = lock(&self.bytes);
        let start = offset as usize;
        let end = start + buffer.len();
        if end > bytes.written.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end of file",
            ));
        }
        buffer.copy_from_slice(&bytes.written[start..end]);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        Faults::check(&self.faults.syncs, &self.faults.fail_sync_from, "sync")?;
        let mut bytes = lock(&self.bytes);
        bytes.durable = bytes.written.clone();
        Ok(())
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        lock(&self.bytes).written.resize(length as usize, 0);
        Ok(())
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(lock(&self.bytes).written.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block-wise search finds what a byte-by-byte one does.
    #[test]
    fn changed_range_matches_a_byte_by_byte_search() {
        let naive = |one: &[u8], other: &[u8]| {
            let length = one.len().max(other.len());
            let differs = |index: usize| one.get(index) != other.get(index);
            let first = (0..length).find(|&index| differs(index))?;
            let last = (first..length).rev().find(|&index| differs(index))?;
            Some((first, last))
        };
        let mut random = SplitMix64(7);
        for _ in 0..300 {
            let length = (random.next() % 10_000) as usize;
            let one: Vec<u8> = (0..length).map(|_| (random.next() % 3) as u8).collect();
            let mut other = one.clone();
            for _ in 0..random.next() % 3 {
                if !other.is_empty() {
                    let at = (random.next() as usize) % other.len();
                    other[at] ^= 1;
                }
            }
            let new_length = match random.next() % 4 {
                0 => length + (random.next() % 5000) as usize,
                1 => length.saturating_sub((random.next() % 5000) as usize),
                _ => length,
            };
            other.resize(new_length, 0);
            assert_eq!(changed_range(&one, &other), naive(&one, &other));
        }
    }

    #[test]
    fn crash_keeps_only_synced_bytes_and_synced_names() {
        let storage = MemoryStorage::new();
        let kept = storage.create("kept").unwrap();
        kept.write_at(0, b"durable").unwrap();
        kept.sync_data().unwrap();
        storage.sync_dir().unwrap();
        kept.write_at(7, b" lost").unwrap();
        let unnamed = storage.create("unnamed").unwrap();
        unnamed.write_at(0, b"x").unwrap();
        unnamed.sync_data().unwrap();

        let after = storage.crash(CrashMode::DropUnsynced);
        assert_eq!(after.list().unwrap(), vec!["kept".to_owned()]);
        assert_eq!(after.file_bytes("kept").unwrap(), b"durable");
    }

    #[test]
    fn torn_crash_keeps_a_prefix_of_the_unsynced_change() {
        let storage = MemoryStorage::new();
        let file = storage.create("f").unwrap();
        file.write_at(0, &[0u8; 16]).unwrap();
        file.sync_data().unwrap();
        storage.sync_dir().unwrap();
        file.write_at(4, &[9u8; 8]).unwrap();
        for seed in 0..50 {
            let image = storage
                .crash(CrashMode::KeepUnsyncedPrefix { seed })
                .file_bytes("f")
                .unwrap();
            assert_eq!(image.len(), 16);
            let kept = image.iter().filter(|&&b| b == 9).count();
            assert!(
                image[4..4 + kept].iter().all(|&b| b == 9),
                "seed {seed}: not a prefix"
            );
        }
    }

    #[test]
    fn injected_failures_are_counted_from_arming() {
        let storage = MemoryStorage::new();
        let file = storage.create("f").unwrap();
        file.write_at(0, b"a").unwrap();
        storage.fail_write_after(2);
        file.write_at(1, b"b").unwrap();
        assert!(file.write_at(2, b"c").is_err());
        assert!(file.write_at(3, b"d").is_err());
        storage.fail_sync_after(1);
        assert!(file.sync_data().is_err());
    }
}
