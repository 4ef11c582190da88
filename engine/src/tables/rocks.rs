//! The account tables in RocksDB, with RocksDB's own WAL off: the Tally WAL is the log.
//!
//! One column family with a one-byte key prefix per table (`tables::keys`). With RocksDB's WAL
//! off, only flushed memtables survive a crash; with a single column family a flush is one
//! memtable, so every table and the applied LSN always survive together, at a batch boundary,
//! without relying on atomic flush across column families.
//!
//! Batches are not written to RocksDB one by one. They gather in memory, in a write-back layer
//! that reads consult first, and go to RocksDB together, in key order, once the layer holds
//! [`PENDING_ENTRIES_MAX`] keys or [`PENDING_BYTES_MAX`] bytes (written then by the tables' own
//! spill thread, so that the writer, often an async task, does not wait for it), before any
//! scan, on [`Tables::flush`] and on close. A key written again before then is written once: a prepared
//! transaction's row and its removal, a decision and its end, an account changed twice. Each
//! spill is one RocksDB write batch holding the newest applied LSN with the data it covers, so
//! what survives a crash is still one batch boundary, only an older one: replay starts from it.
//! Measured in docs/benchmarks.md.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedOptions, Cache, DB, Direction, FlushOptions, IteratorMode, Options, WriteBatch,
    WriteOptions,
};

use super::{TableBatch, Tables, TablesError, keys, values};
use crate::model::{
    Account, AccountId, CoordinatorDecision, HistoryEntry, MovementId, MovementRecord,
    PreparedTransaction, Totals, TransferId, TransferRecord,
};
use crate::wal::Lsn;

/// Called with each key and value of a prefix scan.
type KeyValueVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<(), TablesError> + 'a;

/// RocksDB's block cache (its default is 32 MiB).
const BLOCK_CACHE_BYTES: usize = 256 << 20;

/// The write-back layer goes to RocksDB once it holds this many keys...
pub const PENDING_ENTRIES_MAX: usize = 32_768;
/// ... or this many bytes of keys and values.
pub const PENDING_BYTES_MAX: usize = 8 << 20;

/// A full window is written by the spill thread while writes go on into the next one. Should
/// that thread fall this many windows behind, the writer spills itself (waiting for the spill
/// under way first): the layer never holds more than this many windows' keys.
pub const WINDOWS_BEHIND_MAX: usize = 4;

/// Account rows kept in memory after they reach RocksDB, per shard replica: a read of one is
/// then a hash look-up, not a walk of the memtable's skiplist or a block-cache probe. About 100
/// bytes each; when full, an arbitrary eighth is dropped.
pub const CLEAN_ACCOUNTS_MAX: usize = 262_144;

/// The bounds of the write-back layer; tests choose small ones so that spills and evictions
/// come often.
#[derive(Debug, Clone, Copy)]
pub struct WriteBackLimits {
    /// The layer goes to RocksDB once it holds this many keys ...
    pub pending_entries_max: usize,
    /// ... or this many bytes of keys and values.
    pub pending_bytes_max: usize,
    /// Account rows kept after they reach RocksDB.
    pub clean_accounts_max: usize,
}

impl Default for WriteBackLimits {
    fn default() -> Self {
        Self {
            pending_entries_max: PENDING_ENTRIES_MAX,
            pending_bytes_max: PENDING_BYTES_MAX,
            clean_accounts_max: CLEAN_ACCOUNTS_MAX,
        }
    }
}

/// A key of the tables: at most 17 bytes (a prefix and a 16-byte id), held inline so that the
/// layer's maps allocate nothing per key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    length: u8,
    bytes: [u8; 17],
}

impl Key {
    fn new(key: &[u8]) -> Self {
        let mut bytes = [0; 17];
        bytes[..key.len()].copy_from_slice(key);
        Self {
            length: key.len() as u8,
            bytes,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }
}

/// The layer's maps hash with foldhash: several times faster than SipHash on these short keys,
/// and seeded at random per process, so ids chosen to collide cannot be computed in advance.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A key's newest value in the write-back layer.
enum Change {
    /// Written over whatever RocksDB holds.
    Put(Vec<u8>),
    /// Created in this window over a key that held nothing (the engine's word: a prepared
    /// transaction's row, a decision's unended mark): removed again before the spill, the key
    /// never reaches RocksDB, neither its value nor a tombstone.
    Created(Vec<u8>),
    Delete,
}

impl Change {
    fn value(&self) -> Option<&[u8]> {
        match self {
            Self::Put(value) | Self::Created(value) => Some(value),
            Self::Delete => None,
        }
    }

    fn size(&self) -> usize {
        self.value().map_or(0, <[u8]>::len)
    }
}

/// The newest change of each key in a window of the write-back layer.
type Changes = FastMap<Key, Change>;

/// One key's change as a batch asks for it.
struct Written {
    key: Key,
    value: Option<Vec<u8>>,
    /// The key holds nothing before this write (see [`Change::Created`]).
    creates: bool,
}

/// The write-back layer (see the module documentation).
#[derive(Default)]
struct WriteBack {
    /// Written since the last spill began.
    pending: Changes,
    pending_bytes: usize,
    /// Being written to RocksDB by a spill: older than `pending`, newer than RocksDB. Readers
    /// consult it until RocksDB holds it, so no written key is ever out of sight.
    spilling: Option<Arc<Changes>>,
    /// Account rows as RocksDB holds them (older than `spilling` and `pending`).
    clean_accounts: FastMap<Key, Vec<u8>>,
    /// Counts finished spills: a row read from RocksDB joins `clean_accounts` only if no spill
    /// finished while it was read, since that spill may have written a newer value.
    spills: u64,
    /// Keys written to RocksDB by finished spills (values and tombstones).
    spilled_keys: u64,
    /// Why a spill failed: the tables then refuse every write (a failed write is sticky).
    failed: Option<TablesError>,
    /// A window is full: the spill thread is to write it.
    spill_wanted: bool,
    /// The tables are closing: the spill thread ends.
    closing: bool,
}

impl WriteBack {
    /// Takes one key's change into the pending window.
    fn change(
        &mut self,
        Written {
            key,
            value,
            creates,
        }: Written,
    ) {
        use std::collections::hash_map::Entry;
        let key_size = usize::from(key.length);
        match self.pending.entry(key) {
            Entry::Vacant(vacant) => {
                let change = match value {
                    Some(value) if creates => Change::Created(value),
                    Some(value) => Change::Put(value),
                    None => Change::Delete,
                };
                self.pending_bytes += key_size + change.size();
                vacant.insert(change);
            }
            Entry::Occupied(mut occupied) => {
                self.pending_bytes -= occupied.get().size();
                let created = matches!(occupied.get(), Change::Created(_));
                match value {
                    // Created and removed within the window: RocksDB never hears of it.
                    None if created => {
                        occupied.remove();
                        self.pending_bytes -= key_size;
                    }
                    None => {
                        occupied.insert(Change::Delete);
                    }
                    Some(value) => {
                        let change = if created {
                            Change::Created(value)
                        } else {
                            Change::Put(value)
                        };
                        self.pending_bytes += change.size();
                        occupied.insert(change);
                    }
                }
            }
        }
    }

    fn remember_account(&mut self, key: Key, value: Vec<u8>, limit: usize) {
        if self.clean_accounts.len() >= limit && !self.clean_accounts.contains_key(&key) {
            let mut seen = 0u32;
            self.clean_accounts.retain(|_, _| {
                seen += 1;
                seen % 8 != 0
            });
        }
        self.clean_accounts.insert(key, value);
    }
}

/// See the module documentation.
pub struct RocksTables {
    inner: Arc<Inner>,
    /// Writes full windows to RocksDB (see [`run_spiller`]); joined on drop.
    spiller: Option<JoinHandle<()>>,
}

/// What the tables and their spill thread share.
pub struct Inner {
    database: DB,
    write_options: WriteOptions,
    write_back: Mutex<WriteBack>,
    limits: WriteBackLimits,
    /// Held for the whole of a spill, so spills reach RocksDB in the order they were taken.
    spill: Mutex<()>,
    /// Wakes the spill thread (with `WriteBack::spill_wanted` or `closing` set).
    wake: Condvar,
}

impl Deref for RocksTables {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

/// The spill thread: writes the pending window each time a writer finds it full, until the
/// tables close. A failed spill is kept in the layer (sticky): the next write returns it.
fn run_spiller(inner: Arc<Inner>) {
    loop {
        {
            let mut write_back = lock(&inner.write_back);
            while !write_back.spill_wanted && !write_back.closing {
                write_back = inner
                    .wake
                    .wait(write_back)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if write_back.closing {
                return;
            }
        }
        if let Err(failed) = inner.spill() {
            // Sticky: every later write returns it, so there is nothing left to spill.
            tracing::error!(%failed, "writing the tables' write-back layer to RocksDB failed");
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn error(error: rocksdb::Error) -> TablesError {
    TablesError::from_io_message(error.into_string())
}

impl RocksTables {
    /// Opens (or creates) the tables in `directory`, usually `<data-dir>/tables`.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, TablesError> {
        Self::open_with_write_back(directory, WriteBackLimits::default())
    }

    /// Opens the tables with other bounds for the write-back layer.
    pub fn open_with_write_back(
        directory: impl AsRef<Path>,
        limits: WriteBackLimits,
    ) -> Result<Self, TablesError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        // With its WAL off, RocksDB flushes the memtables when it is closed cleanly (the C API
        // cannot turn that off). Harmless: durable tables may run ahead of the last checkpoint,
        // never behind the WAL, and replay starts from whatever applied LSN they hold.
        options.set_max_background_jobs(2);
        // Most point reads on the write path miss (a new transfer id is looked up before it is
        // used): bloom filters, in the memtable too, answer those without walking the skiplist
        // or the SST index blocks. Measured in docs/benchmarks.md.
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        // The point reads the write path makes in place on async threads (the account rows, an
        // id's record) are served from memory: recent writes from the memtables, the rest from
        // this cache, which holds several million account rows; index and filter blocks stay
        // in memory outside it. A miss reads the OS page cache, bounded by the request bounds.
        table.set_block_cache(&Cache::new_lru_cache(BLOCK_CACHE_BYTES));
        options.set_block_based_table_factory(&table);
        options.set_memtable_prefix_bloom_ratio(0.1);
        options.set_memtable_whole_key_filtering(true);
        let database = DB::open(&options, directory).map_err(error)?;
        let mut write_options = WriteOptions::default();
        write_options.disable_wal(true);
        let inner = Arc::new(Inner {
            database,
            write_options,
            write_back: Mutex::new(WriteBack::default()),
            limits,
            spill: Mutex::new(()),
            wake: Condvar::new(),
        });
        let spiller = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("tally-spill".into())
                .spawn(move || run_spiller(inner))
                .map_err(|error| TablesError::from_io_message(error.to_string()))?
        };
        Ok(Self {
            inner,
            spiller: Some(spiller),
        })
    }

    /// Holds off the spill thread (and every other spill) until the guard is dropped. For tests
    /// of the layer's bounds.
    #[doc(hidden)]
    pub fn pause_spills(&self) -> MutexGuard<'_, ()> {
        lock(&self.spill)
    }

    /// How many keys (values and tombstones) the write-back layer has written to RocksDB.
    pub fn spilled_keys(&self) -> u64 {
        lock(&self.write_back).spilled_keys
    }

    /// Keys in the write-back layer not yet in RocksDB (pending and being spilled).
    pub fn unspilled_keys(&self) -> usize {
        let write_back = lock(&self.write_back);
        write_back.pending.len()
            + write_back
                .spilling
                .as_ref()
                .map_or(0, |spilling| spilling.len())
    }
}

impl Inner {
    /// The newest value of `key`, the write-back layer's or else RocksDB's, decoded by `decode`
    /// (in place: a value in memory is decoded under the layer's lock, without a copy).
    fn read<R>(
        &self,
        key: &[u8],
        decode: impl FnOnce(&[u8]) -> Result<R, TablesError>,
    ) -> Result<Option<R>, TablesError> {
        let key = Key::new(key);
        let is_account = key.bytes[0] == keys::ACCOUNT;
        let spills = {
            let write_back = lock(&self.write_back);
            let newest = write_back.pending.get(&key).or_else(|| {
                write_back
                    .spilling
                    .as_ref()
                    .and_then(|spilling| spilling.get(&key))
            });
            if let Some(change) = newest {
                return change.value().map(decode).transpose();
            }
            if is_account && let Some(value) = write_back.clean_accounts.get(&key) {
                return decode(value).map(Some);
            }
            write_back.spills
        };
        let Some(stored) = self.database.get_pinned(key.as_slice()).map_err(error)? else {
            return Ok(None);
        };
        if is_account {
            let mut write_back = lock(&self.write_back);
            if write_back.spills == spills {
                write_back.remember_account(key, stored.to_vec(), self.limits.clean_accounts_max);
            }
        }
        decode(&stored).map(Some)
    }

    /// Writes the write-back layer to RocksDB: one write batch, in key order, so the memtable's
    /// skiplist walks on from each insert to the next instead of descending from its top.
    fn spill(&self) -> Result<(), TablesError> {
        let _spill = lock(&self.spill);
        let changes = {
            let mut write_back = lock(&self.write_back);
            if let Some(failed) = &write_back.failed {
                return Err(failed.clone());
            }
            // Every spill takes the whole pending window, whoever runs it (the thread, a scan,
            // `flush`, a writer that fell behind): the thread is not to wake for a leftover.
            write_back.spill_wanted = false;
            if write_back.pending.is_empty() {
                return Ok(());
            }
            // The next window starts at full size: growing a map to it rehashes every key.
            let capacity = write_back.pending.len();
            let changes = Arc::new(std::mem::replace(
                &mut write_back.pending,
                Changes::with_capacity_and_hasher(capacity, Default::default()),
            ));
            write_back.pending_bytes = 0;
            write_back.spilling = Some(changes.clone());
            changes
        };
        let mut keys: Vec<&Key> = changes.keys().collect();
        keys.sort_unstable();
        let mut write = WriteBatch::default();
        for key in &keys {
            match changes[*key].value() {
                Some(value) => write.put(key.as_slice(), value),
                None => write.delete(key.as_slice()),
            }
        }
        let written = self
            .database
            .write_opt(write, &self.write_options)
            .map_err(error);
        let mut write_back = lock(&self.write_back);
        match written {
            // Still visible in `spilling`, which stays: reads go on seeing every written key.
            Err(failed) => {
                write_back.failed = Some(failed.clone());
                Err(failed)
            }
            Ok(()) => {
                for key in keys {
                    if key.bytes[0] == keys::ACCOUNT {
                        match changes[key].value() {
                            Some(value) => write_back.remember_account(
                                *key,
                                value.to_vec(),
                                self.limits.clean_accounts_max,
                            ),
                            None => {
                                write_back.clean_accounts.remove(key);
                            }
                        }
                    }
                }
                write_back.spilling = None;
                write_back.spills += 1;
                write_back.spilled_keys += changes.len() as u64;
                Ok(())
            }
        }
    }

    /// Visits every key-value pair whose key starts with `prefix`, in key order.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut KeyValueVisitor<'_>,
    ) -> Result<(), TablesError> {
        // Scans read RocksDB alone: whatever was written before the scan goes there first.
        self.spill()?;
        for item in self
            .database
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (key, value) = item.map_err(error)?;
            if !key.starts_with(prefix) {
                break;
            }
            visit(&key, &value)?;
        }
        Ok(())
    }
}

impl Tables for RocksTables {
    fn applied_lsn(&self) -> Result<Lsn, TablesError> {
        let applied = self.read(keys::META_APPLIED_LSN, |bytes| {
            Ok(u64::from_le_bytes(
                bytes
                    .try_into()
                    .map_err(|_| TablesError::new("malformed applied LSN"))?,
            ))
        })?;
        Ok(applied.unwrap_or(0))
    }

    fn account(&self, id: AccountId) -> Result<Option<Account>, TablesError> {
        self.read(&keys::account(id), |bytes| {
            values::decode_account(id, bytes)
        })
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, TablesError> {
        self.read(&keys::transfer(id), |bytes| {
            values::decode_transfer(id, bytes)
        })
    }

    fn movement(&self, id: MovementId) -> Result<Option<MovementRecord>, TablesError> {
        self.read(&keys::movement(id), |bytes| {
            values::decode_movement(id, bytes)
        })
    }

    fn prepared(&self, id: TransferId) -> Result<Option<PreparedTransaction>, TablesError> {
        self.read(&keys::prepared(id), values::decode_prepared)
    }

    fn all_prepared(&self) -> Result<Vec<PreparedTransaction>, TablesError> {
        let mut list = Vec::new();
        self.scan_prefix(&[keys::PREPARED], &mut |_, value| {
            list.push(values::decode_prepared(value)?);
            Ok(())
        })?;
        Ok(list)
    }

    fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, TablesError> {
        self.read(&keys::decision(id), values::decode_decision)
    }

    fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, TablesError> {
        let mut ids = Vec::new();
        self.scan_prefix(&[keys::UNENDED], &mut |key, _| {
            ids.push(u128::from_be_bytes(key[1..17].try_into().map_err(
                |_| TablesError::new("malformed unended-decision key"),
            )?));
            Ok(())
        })?;
        ids.into_iter()
            .map(|id| {
                self.decision(id)?.ok_or_else(|| {
                    TablesError::new(format!("unended decision {id} has no decision row"))
                })
            })
            .collect()
    }

    fn history(
        &self,
        account: AccountId,
        before_lsn: Lsn,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, TablesError> {
        self.spill()?;
        let start = keys::history(account, before_lsn);
        let prefix = &start[..9];
        let mut entries = Vec::new();
        for item in self
            .database
            .iterator(IteratorMode::From(&start, Direction::Reverse))
        {
            let (key, value) = item.map_err(error)?;
            if !key.starts_with(prefix) || entries.len() == limit as usize {
                break;
            }
            let lsn = u64::from_be_bytes(
                key[9..17]
                    .try_into()
                    .map_err(|_| TablesError::new("malformed history key"))?,
            );
            if lsn >= before_lsn {
                continue;
            }
            entries.push(values::decode_history(account, lsn, &value)?);
        }
        Ok(entries)
    }

    fn totals(&self) -> Result<Totals, TablesError> {
        Ok(self
            .read(keys::META_TOTALS, values::decode_totals)?
            .unwrap_or_default())
    }

    fn scan_accounts(&self, visit: &mut dyn FnMut(&Account)) -> Result<(), TablesError> {
        self.scan_prefix(&[keys::ACCOUNT], &mut |key, value| {
            let id = u64::from_be_bytes(
                key[1..9]
                    .try_into()
                    .map_err(|_| TablesError::new("malformed account key"))?,
            );
            visit(&values::decode_account(id, value)?);
            Ok(())
        })
    }

    fn write(&self, batch: &TableBatch) -> Result<(), TablesError> {
        let mut changes: Vec<Written> = Vec::with_capacity(
            batch.accounts.len()
                + batch.transfers.len()
                + batch.movements.len()
                + batch.history.len()
                + batch.prepared.len()
                + 2 * batch.decisions.len()
                + 2,
        );
        let mut put = |key: &[u8], value: Vec<u8>| {
            changes.push(Written {
                key: Key::new(key),
                value: Some(value),
                creates: false,
            })
        };
        for account in &batch.accounts {
            put(&keys::account(account.id), values::encode_account(account));
        }
        for transfer in &batch.transfers {
            put(
                &keys::transfer(transfer.id),
                values::encode_transfer(transfer),
            );
        }
        for movement in &batch.movements {
            put(
                &keys::movement(movement.id),
                values::encode_movement(movement),
            );
        }
        for entry in &batch.history {
            put(
                &keys::history(entry.account, entry.lsn),
                values::encode_history(entry),
            );
        }
        for decision in &batch.decisions {
            put(
                &keys::decision(decision.id),
                values::encode_decision(decision),
            );
        }
        put(keys::META_TOTALS, values::encode_totals(&batch.totals));
        put(
            keys::META_APPLIED_LSN,
            batch.applied_lsn.to_le_bytes().to_vec(),
        );
        // A prepared row is stored once, when its transaction prepares, and an unended mark
        // once, with its new decision (`TableBatch` documents both): each creates its key.
        for (id, prepared) in &batch.prepared {
            changes.push(Written {
                key: Key::new(&keys::prepared(*id)),
                value: prepared.as_ref().map(values::encode_prepared),
                creates: prepared.is_some(),
            });
        }
        for decision in &batch.decisions {
            changes.push(Written {
                key: Key::new(&keys::unended(decision.id)),
                value: (!decision.ended).then(Vec::new),
                creates: !decision.ended,
            });
        }
        let behind = {
            let mut write_back = lock(&self.write_back);
            if let Some(failed) = &write_back.failed {
                return Err(failed.clone());
            }
            // The whole batch under one lock: a spill takes batches whole, with their LSN.
            for written in changes {
                write_back.change(written);
            }
            let windows = (write_back.pending.len() / self.limits.pending_entries_max.max(1))
                .max(write_back.pending_bytes / self.limits.pending_bytes_max.max(1));
            if windows >= 1 && !write_back.spill_wanted {
                write_back.spill_wanted = true;
                self.wake.notify_one();
            }
            windows >= WINDOWS_BEHIND_MAX
        };
        if behind { self.spill() } else { Ok(()) }
    }

    fn flush(&self) -> Result<(), TablesError> {
        self.spill()?;
        let mut options = FlushOptions::default();
        options.set_wait(true);
        self.database.flush_opt(&options).map_err(error)
    }
}

impl Drop for RocksTables {
    /// A clean close stops the spill thread and writes the write-back layer, sparing its replay
    /// at the next start.
    fn drop(&mut self) {
        lock(&self.write_back).closing = true;
        self.wake.notify_all();
        if let Some(spiller) = self.spiller.take() {
            let _ = spiller.join();
        }
        if let Err(failed) = self.spill() {
            tracing::warn!(%failed, "the tables' last writes stay in the WAL only");
        }
    }
}
