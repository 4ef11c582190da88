//! The account tables in RocksDB, with RocksDB's own WAL off: the Tally WAL is the log.
//!
//! One column family with a one-byte key prefix per table (`tables::keys`). With RocksDB's WAL
//! off, only flushed memtables survive a crash; with a single column family a flush is one
//! memtable, so every table and the applied LSN always survive together, at a batch boundary,
//! without relying on atomic flush across column families.

use std::path::Path;

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

/// See the module documentation.
pub struct RocksTables {
    database: DB,
    write_options: WriteOptions,
}

fn error(error: rocksdb::Error) -> TablesError {
    TablesError::from_io_message(error.into_string())
}

impl RocksTables {
    /// Opens (or creates) the tables in `directory`, usually `<data-dir>/tables`.
    pub fn open(directory: impl AsRef<Path>) -> Result<Self, TablesError> {
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
        Ok(Self {
            database,
            write_options,
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>, TablesError> {
        self.database.get_pinned(key).map_err(error)
    }

    /// Visits every key-value pair whose key starts with `prefix`, in key order.
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut KeyValueVisitor<'_>,
    ) -> Result<(), TablesError> {
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
        match self.get(keys::META_APPLIED_LSN)? {
            None => Ok(0),
            Some(bytes) => Ok(u64::from_le_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| TablesError::new("malformed applied LSN"))?,
            )),
        }
    }

    fn account(&self, id: AccountId) -> Result<Option<Account>, TablesError> {
        self.get(&keys::account(id))?
            .map(|bytes| values::decode_account(id, &bytes))
            .transpose()
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, TablesError> {
        self.get(&keys::transfer(id))?
            .map(|bytes| values::decode_transfer(id, &bytes))
            .transpose()
    }

    fn movement(&self, id: MovementId) -> Result<Option<MovementRecord>, TablesError> {
        self.get(&keys::movement(id))?
            .map(|bytes| values::decode_movement(id, &bytes))
            .transpose()
    }

    fn prepared(&self, id: TransferId) -> Result<Option<PreparedTransaction>, TablesError> {
        self.get(&keys::prepared(id))?
            .map(|bytes| values::decode_prepared(&bytes))
            .transpose()
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
        self.get(&keys::decision(id))?
            .map(|bytes| values::decode_decision(&bytes))
            .transpose()
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
        match self.get(keys::META_TOTALS)? {
            None => Ok(Totals::default()),
            Some(bytes) => values::decode_totals(&bytes),
        }
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
        let mut write = WriteBatch::default();
        for account in &batch.accounts {
            write.put(keys::account(account.id), values::encode_account(account));
        }
        for transfer in &batch.transfers {
            write.put(
                keys::transfer(transfer.id),
                values::encode_transfer(transfer),
            );
        }
        for movement in &batch.movements {
            write.put(
                keys::movement(movement.id),
                values::encode_movement(movement),
            );
        }
        for entry in &batch.history {
            write.put(
                keys::history(entry.account, entry.lsn),
                values::encode_history(entry),
            );
        }
        for (id, prepared) in &batch.prepared {
            match prepared {
                Some(prepared) => write.put(keys::prepared(*id), values::encode_prepared(prepared)),
                None => write.delete(keys::prepared(*id)),
            }
        }
        for decision in &batch.decisions {
            write.put(
                keys::decision(decision.id),
                values::encode_decision(decision),
            );
            if decision.ended {
                write.delete(keys::unended(decision.id));
            } else {
                write.put(keys::unended(decision.id), []);
            }
        }
        write.put(keys::META_TOTALS, values::encode_totals(&batch.totals));
        write.put(keys::META_APPLIED_LSN, batch.applied_lsn.to_le_bytes());
        self.database
            .write_opt(write, &self.write_options)
            .map_err(error)
    }

    fn flush(&self) -> Result<(), TablesError> {
        let mut options = FlushOptions::default();
        options.set_wait(true);
        self.database.flush_opt(&options).map_err(error)
    }
}
