//! Injected disk faults for multi-process tests (the `failpoints` feature only): the files that
//! [`FileStorage`](crate::wal::FileStorage) hands out fail the WAL's record writes or syncs the
//! way a failing disk would, so a real node process meets the failure through the storage seam.
//!
//! - `TALLY_FAIL_WAL_WRITE_AFTER=N`: the first N record writes succeed; the N+1-th and every later
//!   one fail with an `io::Error` "injected WAL write failure ..." and write nothing.
//! - `TALLY_FAIL_WAL_SYNC_AFTER=N`: the same for the fdatasyncs that make records durable. The
//!   bytes of the failed sync stay written (in the page cache), as after a real failed fsync.
//!
//! Counted are only writes of records (non-zero bytes past the segment header: the writer's group
//! writes) and syncs of a segment that had such a write since its previous sync. Preallocation's
//! zero-filling, segment headers and recovery's own writes and syncs are never counted nor failed:
//! they run at moments a test cannot predict (the preallocator is a background thread), so
//! counting them would make N meaningless. With sequential requests each write request is one
//! write and one sync, so N counts acknowledged writes. Both variables are read once per process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::wal::format::SEGMENT_HEADER_SIZE;
use crate::wal::storage::StorageFile;

pub(crate) const WRITE_AFTER_VARIABLE: &str = "TALLY_FAIL_WAL_WRITE_AFTER";
pub(crate) const SYNC_AFTER_VARIABLE: &str = "TALLY_FAIL_WAL_SYNC_AFTER";

/// One kind of injected fault: how many operations succeed, and how many were counted.
struct Fault {
    variable: &'static str,
    succeed: Option<u64>,
    count: AtomicU64,
}

impl Fault {
    fn from_env(variable: &'static str) -> Result<Fault, String> {
        let succeed = match std::env::var(variable) {
            Ok(value) => Some(
                value
                    .trim()
                    .parse()
                    .map_err(|_| format!("{variable} must be a count, not {value:?}"))?,
            ),
            Err(_) => None,
        };
        Ok(Fault {
            variable,
            succeed,
            count: AtomicU64::new(0),
        })
    }

    /// Counts one operation; the error if it is one that must fail.
    fn check(&self, what: &str) -> io::Result<()> {
        let Some(succeed) = self.succeed else {
            return Ok(());
        };
        let index = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if index > succeed {
            return Err(io::Error::other(format!(
                "injected WAL {what} failure ({what} number {index}; {}={succeed})",
                self.variable
            )));
        }
        Ok(())
    }
}

struct Faults {
    write: Fault,
    sync: Fault,
}

fn faults() -> io::Result<&'static Faults> {
    static FAULTS: OnceLock<Result<Faults, String>> = OnceLock::new();
    FAULTS
        .get_or_init(|| {
            Ok(Faults {
                write: Fault::from_env(WRITE_AFTER_VARIABLE)?,
                sync: Fault::from_env(SYNC_AFTER_VARIABLE)?,
            })
        })
        .as_ref()
        .map_err(|message| io::Error::new(io::ErrorKind::InvalidInput, message.clone()))
}

/// Reads the variables (once): an unusable value fails opening the storage, not a later write.
pub(crate) fn check_configuration() -> io::Result<()> {
    faults().map(|_| ())
}

/// A segment file whose record writes and syncs can be made to fail.
#[derive(Debug)]
pub struct FaultyFile {
    file: File,
    /// A record was written since the last sync: the next sync is one that makes records durable.
    records_unsynced: AtomicBool,
}

impl FaultyFile {
    pub(crate) fn new(file: File) -> FaultyFile {
        FaultyFile {
            file,
            records_unsynced: AtomicBool::new(false),
        }
    }
}

impl StorageFile for FaultyFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let is_records = offset >= SEGMENT_HEADER_SIZE as u64 && data.iter().any(|&byte| byte != 0);
        if is_records {
            faults()?.write.check("write")?;
            self.records_unsynced.store(true, Ordering::SeqCst);
        }
        FileExt::write_all_at(&self.file, data, offset)
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        FileExt::read_exact_at(&self.file, buffer, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.records_unsynced.swap(false, Ordering::SeqCst) {
            faults()?.sync.check("fdatasync")?;
        }
        self.file.sync_data()
    }

    fn set_len(&self, length: u64) -> io::Result<()> {
        self.file.set_len(length)
    }

    fn size_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}
