//! In-memory tables for fast tests and simulation, modelling RocksDB without its WAL: written
//! batches are visible at once but survive a crash only after `flush`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{TableBatch, Tables, TablesError};
use crate::model::{
    Account, AccountId, CoordinatorDecision, HistoryEntry, MovementId, MovementRecord,
    PreparedTransaction, Totals, TransferId, TransferRecord,
};
use crate::wal::Lsn;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    applied_lsn: Lsn,
    accounts: BTreeMap<AccountId, Account>,
    transfers: BTreeMap<TransferId, TransferRecord>,
    movements: BTreeMap<MovementId, MovementRecord>,
    history: BTreeMap<(AccountId, Lsn), HistoryEntry>,
    prepared: BTreeMap<TransferId, PreparedTransaction>,
    decisions: BTreeMap<TransferId, CoordinatorDecision>,
    totals: Totals,
}

#[derive(Default)]
struct Inner {
    written: State,
    flushed: State,
    /// When set, every later write fails (an injected storage failure).
    fail_writes: bool,
    /// When set, transfer lookups fail (an injected read failure).
    fail_transfer_reads: bool,
}

/// See the module documentation. Clones share the same tables.
#[derive(Clone, Default)]
pub struct MemoryTables {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryTables {
    pub fn new() -> Self {
        Self::default()
    }

    /// The tables a restarted process would find: only what was flushed.
    pub fn crash(&self) -> MemoryTables {
        let flushed = self.lock().flushed.clone();
        MemoryTables {
            inner: Arc::new(Mutex::new(Inner {
                written: flushed.clone(),
                flushed,
                fail_writes: false,
                fail_transfer_reads: false,
            })),
        }
    }

    /// Makes every later write fail.
    pub fn fail_writes(&self) {
        self.lock().fail_writes = true;
    }

    /// Makes transfer lookups fail (`true`) or work again (`false`).
    pub fn fail_transfer_reads(&self, fail: bool) {
        self.lock().fail_transfer_reads = fail;
    }

    /// True when both tables hold the same visible state (for replay-equivalence tests).
    pub fn same_state_as(&self, other: &MemoryTables) -> bool {
        if Arc::ptr_eq(&self.inner, &other.inner) {
            return true;
        }
        let mine = self.lock().written.clone();
        mine == other.lock().written
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Tables for MemoryTables {
    fn applied_lsn(&self) -> Result<Lsn, TablesError> {
        Ok(self.lock().written.applied_lsn)
    }

    fn account(&self, id: AccountId) -> Result<Option<Account>, TablesError> {
        Ok(self.lock().written.accounts.get(&id).cloned())
    }

    fn transfer(&self, id: TransferId) -> Result<Option<TransferRecord>, TablesError> {
        let inner = self.lock();
        if inner.fail_transfer_reads {
            return Err(TablesError::new("injected read failure"));
        }
        Ok(inner.written.transfers.get(&id).cloned())
    }

    fn movement(&self, id: MovementId) -> Result<Option<MovementRecord>, TablesError> {
        Ok(self.lock().written.movements.get(&id).cloned())
    }

    fn prepared(&self, id: TransferId) -> Result<Option<PreparedTransaction>, TablesError> {
        Ok(self.lock().written.prepared.get(&id).cloned())
    }

    fn all_prepared(&self) -> Result<Vec<PreparedTransaction>, TablesError> {
        Ok(self.lock().written.prepared.values().cloned().collect())
    }

    fn decision(&self, id: TransferId) -> Result<Option<CoordinatorDecision>, TablesError> {
        Ok(self.lock().written.decisions.get(&id).cloned())
    }

    fn unended_decisions(&self) -> Result<Vec<CoordinatorDecision>, TablesError> {
        Ok(self
            .lock()
            .written
            .decisions
            .values()
            .filter(|decision| !decision.ended)
            .cloned()
            .collect())
    }

    fn history(
        &self,
        account: AccountId,
        before_lsn: Lsn,
        limit: u32,
    ) -> Result<Vec<HistoryEntry>, TablesError> {
        let inner = self.lock();
        Ok(inner
            .written
            .history
            .range((account, 0)..(account, before_lsn))
            .rev()
            .take(limit as usize)
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    fn totals(&self) -> Result<Totals, TablesError> {
        Ok(self.lock().written.totals)
    }

    fn scan_accounts(&self, visit: &mut dyn FnMut(&Account)) -> Result<(), TablesError> {
        let accounts: Vec<Account> = self.lock().written.accounts.values().cloned().collect();
        accounts.iter().for_each(visit);
        Ok(())
    }

    fn write(&self, batch: &TableBatch) -> Result<(), TablesError> {
        let mut inner = self.lock();
        if inner.fail_writes {
            return Err(TablesError::new("injected write failure"));
        }
        let state = &mut inner.written;
        // What a batch says it creates must hold nothing yet (`TableBatch`): RocksTables relies
        // on it to drop a row created and removed between two spills.
        for (id, prepared) in &batch.prepared {
            if prepared.is_some() && state.prepared.contains_key(id) {
                return Err(TablesError::new(format!(
                    "transaction {id} prepared again while prepared"
                )));
            }
        }
        for decision in &batch.decisions {
            if !decision.ended && state.decisions.contains_key(&decision.id) {
                return Err(TablesError::new(format!(
                    "transfer {} decided again",
                    decision.id
                )));
            }
        }
        for account in &batch.accounts {
            state.accounts.insert(account.id, account.clone());
        }
        for transfer in &batch.transfers {
            state.transfers.insert(transfer.id, transfer.clone());
        }
        for movement in &batch.movements {
            state.movements.insert(movement.id, movement.clone());
        }
        for entry in &batch.history {
            state
                .history
                .insert((entry.account, entry.lsn), entry.clone());
        }
        for (id, prepared) in &batch.prepared {
            match prepared {
                Some(prepared) => state.prepared.insert(*id, prepared.clone()),
                None => state.prepared.remove(id),
            };
        }
        for decision in &batch.decisions {
            state.decisions.insert(decision.id, decision.clone());
        }
        state.totals = batch.totals;
        state.applied_lsn = batch.applied_lsn;
        Ok(())
    }

    fn flush(&self) -> Result<(), TablesError> {
        let mut inner = self.lock();
        inner.flushed = inner.written.clone();
        Ok(())
    }
}
