//! The storage seam under the WAL: a directory of segment files, with a file backend.
//!
//! The WAL only ever writes at explicit offsets into files it pre-sized, so "append" is a
//! positional write past the last record. The in-memory backend (`memory.rs`) implements the same
//! traits and models what a crash keeps.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A directory of named files. Names are plain file names without a path separator.
///
/// Durability contract (what the WAL relies on, and what the in-memory backend models):
/// - bytes written with [`StorageFile::write_at`] survive a crash only after
///   [`StorageFile::sync_data`] on that file returned `Ok`;
/// - creating, renaming and removing a file survive a crash only after [`Storage::sync_dir`]
///   returned `Ok`;
/// - a failed write or sync may have persisted any part of the data, or none.
pub trait Storage: Send + Sync + 'static {
    type File: StorageFile;

    /// Names of every file in the directory, in no particular order.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new, empty file; fails if it exists.
    fn create(&self, name: &str) -> io::Result<Arc<Self::File>>;
    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Arc<Self::File>>;
    /// Atomically renames `from` to `to`, replacing nothing (`to` must not exist).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    fn remove(&self, name: &str) -> io::Result<()>;
    /// Makes every create, rename and remove so far durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// One file of a [`Storage`]. Shared by the writer and readers, hence `&self` everywhere.
pub trait StorageFile: Send + Sync + 'static {
    /// Writes all of `data` at `offset`, growing the file if needed.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Fills `buffer` from `offset`; fails with `UnexpectedEof` if the file is shorter.
    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()>;
    /// fdatasync: makes every write so far durable.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, length: u64) -> io::Result<()>;
    fn size_bytes(&self) -> io::Result<u64>;
}

/// The file type of [`FileStorage`]: a plain `File`; with the `failpoints` feature, a wrapper whose
/// record writes and syncs can be made to fail (`faults.rs`).
#[cfg(not(feature = "failpoints"))]
type SegmentFile = File;
#[cfg(feature = "failpoints")]
type SegmentFile = super::faults::FaultyFile;

#[cfg(not(feature = "failpoints"))]
fn segment_file(file: File) -> Arc<SegmentFile> {
    Arc::new(file)
}

#[cfg(feature = "failpoints")]
fn segment_file(file: File) -> Arc<SegmentFile> {
    Arc::new(super::faults::FaultyFile::new(file))
}

/// Segment files in a directory of the real file system.
#[derive(Debug, Clone)]
pub struct FileStorage {
    directory: PathBuf,
}

impl FileStorage {
    /// Uses `directory`, creating it (and its parents) if it is missing.
    pub fn open(directory: impl Into<PathBuf>) -> io::Result<Self> {
        let directory = directory.into();
        #[cfg(feature = "failpoints")]
        super::faults::check_configuration()?;
        fs::create_dir_all(&directory)?;
        Ok(Self { directory })
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    fn path(&self, name: &str) -> io::Result<PathBuf> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid segment file name {name:?}"),
            ));
        }
        Ok(self.directory.join(name))
    }
}

impl Storage for FileStorage {
    type File = SegmentFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.directory)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn create(&self, name: &str) -> io::Result<Arc<SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(name)?)?;
        Ok(segment_file(file))
    }

    fn open(&self, name: &str) -> io::Result<Arc<SegmentFile>> {
        Ok(segment_file(
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(self.path(name)?)?,
        ))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let target = self.path(to)?;
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("rename target {} exists", target.display()),
            ));
        }
        fs::rename(self.path(from)?, target)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path(name)?)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.directory)?.sync_all()
    }
}

impl StorageFile for File {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        FileExt::write_all_at(self, data, offset)
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(self, buffer, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        File::set_len(self, length)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}
