//! Turning logged records into table changes: a pure function of the tables' state and the
//! records, used alike by the live path and by replay, so replay rebuilds exactly the live state.

use std::collections::{HashMap, HashSet};

use crate::model::{
    Account, AccountId, Amount, CoordinatorDecision, HistoryEntry, HistoryKind, MovementId,
    MovementKind, MovementOutcome, MovementRecord, Operation, OperationKind, Outcome,
    PreparedTransaction, Totals, Transfer, TransferId, TransferRecord,
};
use crate::record::Record;
use crate::tables::{TableBatch, Tables, TablesError};
use crate::wal::Lsn;

/// Why records could not be applied: the tables failed, or the log contradicts them (which
/// validation before logging rules out, so it means a bug or a damaged store).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Tables(#[from] TablesError),
    #[error("record at LSN {lsn} does not apply: {reason}")]
    Inconsistent { lsn: Lsn, reason: String },
}

/// The state a group of records is applied to: the tables, overlaid with the group's changes.
struct Overlay<'a, T: Tables + ?Sized> {
    tables: &'a T,
    accounts: HashMap<AccountId, Account>,
    account_order: Vec<AccountId>,
    transfers: Vec<TransferRecord>,
    movements: Vec<MovementRecord>,
    /// Ids of `movements`, to check that no id is logged twice within the group either.
    movement_ids: HashSet<MovementId>,
    history: Vec<HistoryEntry>,
    prepared: HashMap<TransferId, Option<PreparedTransaction>>,
    prepared_order: Vec<TransferId>,
    decisions: HashMap<TransferId, CoordinatorDecision>,
    decision_order: Vec<TransferId>,
    totals: Totals,
}

impl<'a, T: Tables + ?Sized> Overlay<'a, T> {
    fn account(&mut self, id: AccountId) -> Result<Option<&mut Account>, ApplyError> {
        if !self.accounts.contains_key(&id) {
            let Some(account) = self.tables.account(id)? else {
                return Ok(None);
            };
            self.accounts.insert(id, account);
            self.account_order.push(id);
        }
        Ok(self.accounts.get_mut(&id))
    }

    fn prepared(&mut self, id: TransferId) -> Result<Option<PreparedTransaction>, ApplyError> {
        if let Some(entry) = self.prepared.get(&id) {
            return Ok(entry.clone());
        }
        Ok(self.tables.prepared(id)?)
    }

    fn set_prepared(&mut self, id: TransferId, value: Option<PreparedTransaction>) {
        if self.prepared.insert(id, value).is_none() {
            self.prepared_order.push(id);
        }
    }

    fn set_decision(&mut self, decision: CoordinatorDecision) {
        if !self.decisions.contains_key(&decision.id) {
            self.decision_order.push(decision.id);
        }
        self.decisions.insert(decision.id, decision);
    }

    /// Adds (or subtracts) `amount` and records the history entry; returns the new balance.
    fn change_balance(
        &mut self,
        lsn: Lsn,
        id: AccountId,
        kind: HistoryKind,
        amount: u64,
        counterparty: AccountId,
        transfer: TransferId,
    ) -> Result<Amount, ApplyError> {
        let inconsistent = |reason: String| ApplyError::Inconsistent { lsn, reason };
        let account = self
            .account(id)?
            .ok_or_else(|| inconsistent(format!("account {id} does not exist")))?;
        let balance = match kind {
            HistoryKind::Deposit | HistoryKind::TransferCredit => {
                account.balance.checked_add(amount)
            }
            HistoryKind::Withdrawal | HistoryKind::TransferDebit => {
                account.balance.checked_sub(amount)
            }
        };
        // Validation under locks ruled both out before the record was logged.
        let balance =
            balance.ok_or_else(|| inconsistent(format!("balance of account {id} out of range")))?;
        account.balance = balance;
        self.history.push(HistoryEntry {
            account: id,
            lsn,
            kind,
            amount,
            counterparty,
            transfer,
            balance_after: balance,
        });
        Ok(balance)
    }

    /// Money entering or leaving through `account`; returns its new balance. `id` is 0 for the
    /// records that did not keep it.
    fn move_money(
        &mut self,
        lsn: Lsn,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
        id: MovementId,
    ) -> Result<Amount, ApplyError> {
        let balance_after =
            self.change_balance(lsn, account, kind.history_kind(), amount, 0, id)?;
        match kind {
            MovementKind::Deposit => self.totals.deposited += u128::from(amount),
            MovementKind::Withdrawal => self.totals.withdrawn += u128::from(amount),
        }
        Ok(balance_after)
    }

    /// Records a movement's permanent outcome. A movement id is logged at most once (the engine
    /// looks it up under its in-flight slot before logging): a second record would change the
    /// answer of an id whose first answer was given, so it stops the applier instead.
    fn record_movement(
        &mut self,
        lsn: Lsn,
        id: MovementId,
        account: AccountId,
        kind: MovementKind,
        amount: Amount,
        outcome: MovementOutcome,
    ) -> Result<(), ApplyError> {
        if !self.movement_ids.insert(id) || self.tables.movement(id)?.is_some() {
            return Err(ApplyError::Inconsistent {
                lsn,
                reason: format!("deposit or withdrawal {id} is logged twice"),
            });
        }
        self.movements.push(MovementRecord {
            id,
            account,
            kind,
            amount,
            outcome,
        });
        Ok(())
    }

    fn apply(&mut self, lsn: Lsn, record: &Record) -> Result<(), ApplyError> {
        match record {
            Record::AccountCreated {
                account,
                owner,
                flags,
                created_at_ms,
            } => {
                if self.account(*account)?.is_none() {
                    self.accounts.insert(
                        *account,
                        Account {
                            id: *account,
                            balance: 0,
                            owner: owner.clone(),
                            flags: *flags,
                            created_at_ms: *created_at_ms,
                        },
                    );
                    self.account_order.push(*account);
                }
            }
            Record::MovementWithoutId {
                account,
                kind,
                amount,
            } => {
                self.move_money(lsn, *account, *kind, *amount, 0)?;
            }
            Record::Movement {
                id,
                account,
                kind,
                amount,
            } => {
                let balance_after = self.move_money(lsn, *account, *kind, *amount, *id)?;
                self.record_movement(
                    lsn,
                    *id,
                    *account,
                    *kind,
                    *amount,
                    MovementOutcome::Applied { balance_after, lsn },
                )?;
            }
            Record::MovementRefused {
                id,
                account,
                kind,
                amount,
                reason,
            } => {
                self.record_movement(
                    lsn,
                    *id,
                    *account,
                    *kind,
                    *amount,
                    MovementOutcome::Refused(*reason),
                )?;
            }
            Record::LocalTransfer {
                id,
                debit,
                credit,
                amount,
            } => {
                self.change_balance(
                    lsn,
                    *debit,
                    HistoryKind::TransferDebit,
                    *amount,
                    *credit,
                    *id,
                )?;
                self.change_balance(
                    lsn,
                    *credit,
                    HistoryKind::TransferCredit,
                    *amount,
                    *debit,
                    *id,
                )?;
                self.transfers.push(TransferRecord {
                    id: *id,
                    transfer: Some(Transfer {
                        debit: *debit,
                        credit: *credit,
                        amount: *amount,
                    }),
                    outcome: Outcome::Committed,
                });
            }
            Record::TransferAborted {
                id,
                debit,
                credit,
                amount,
                reason,
            } => {
                self.transfers.push(TransferRecord {
                    id: *id,
                    transfer: Some(Transfer {
                        debit: *debit,
                        credit: *credit,
                        amount: *amount,
                    }),
                    outcome: Outcome::Aborted(*reason),
                });
            }
            Record::Prepared {
                id,
                coordinator,
                operations,
            } => {
                self.set_prepared(
                    *id,
                    Some(PreparedTransaction {
                        id: *id,
                        coordinator: *coordinator,
                        operations: operations.clone(),
                    }),
                );
            }
            Record::Committed { id } => {
                let prepared = self
                    .prepared(*id)?
                    .ok_or_else(|| ApplyError::Inconsistent {
                        lsn,
                        reason: format!("commit of transaction {id}, which is not prepared"),
                    })?;
                for operation in &prepared.operations {
                    let kind = match operation.kind {
                        OperationKind::Debit => HistoryKind::TransferDebit,
                        OperationKind::Credit => HistoryKind::TransferCredit,
                    };
                    self.change_balance(
                        lsn,
                        operation.account,
                        kind,
                        operation.amount,
                        operation.counterparty,
                        *id,
                    )?;
                    match operation.kind {
                        OperationKind::Debit => {
                            self.totals.debited_by_transactions += u128::from(operation.amount)
                        }
                        OperationKind::Credit => {
                            self.totals.credited_by_transactions += u128::from(operation.amount)
                        }
                    }
                }
                self.set_prepared(*id, None);
                self.transfers.push(transfer_record(
                    *id,
                    &prepared.operations,
                    Outcome::Committed,
                ));
            }
            Record::Aborted { id, reason } => {
                let operations = self
                    .prepared(*id)?
                    .map(|prepared| prepared.operations)
                    .unwrap_or_default();
                self.set_prepared(*id, None);
                self.transfers
                    .push(transfer_record(*id, &operations, Outcome::Aborted(*reason)));
            }
            Record::Decided(decision) => {
                // A decision no participant must hear (every vote was no) is ended at once.
                let mut decision = decision.clone();
                decision.ended = decision.participants.is_empty();
                self.set_decision(decision);
            }
            Record::Ended { ids } => {
                for id in ids {
                    let existing = match self.decisions.get(id) {
                        Some(decision) => Some(decision.clone()),
                        None => self.tables.decision(*id)?,
                    };
                    // Ending an unknown decision is harmless; ending one twice is idempotent.
                    if let Some(mut decision) = existing {
                        decision.ended = true;
                        self.set_decision(decision);
                    }
                }
            }
        }
        Ok(())
    }
}

/// A participant's view of a distributed transfer: its debit and credit accounts come from its
/// own operation and that operation's counterparty.
pub(crate) fn transfer_record(
    id: TransferId,
    operations: &[Operation],
    outcome: Outcome,
) -> TransferRecord {
    let transfer = operations.first().map(|operation| {
        let (debit, credit) = match operation.kind {
            OperationKind::Debit => (operation.account, operation.counterparty),
            OperationKind::Credit => (operation.counterparty, operation.account),
        };
        Transfer {
            debit,
            credit,
            amount: operation.amount,
        }
    });
    TransferRecord {
        id,
        transfer,
        outcome,
    }
}

/// The table batch that applies `records` (consecutive LSNs, in order) to `tables`.
pub fn plan_batch<T: Tables + ?Sized>(
    tables: &T,
    records: &[(Lsn, Record)],
) -> Result<TableBatch, ApplyError> {
    let mut overlay = Overlay {
        tables,
        accounts: HashMap::new(),
        account_order: Vec::new(),
        transfers: Vec::new(),
        movements: Vec::new(),
        movement_ids: HashSet::new(),
        history: Vec::new(),
        prepared: HashMap::new(),
        prepared_order: Vec::new(),
        decisions: HashMap::new(),
        decision_order: Vec::new(),
        totals: tables.totals()?,
    };
    for (lsn, record) in records {
        overlay.apply(*lsn, record)?;
    }
    let Overlay {
        mut accounts,
        account_order,
        transfers,
        movements,
        history,
        mut prepared,
        prepared_order,
        mut decisions,
        decision_order,
        totals,
        ..
    } = overlay;
    Ok(TableBatch {
        applied_lsn: records.last().map_or(0, |(lsn, _)| *lsn),
        accounts: account_order
            .iter()
            .filter_map(|id| accounts.remove(id))
            .collect(),
        transfers,
        movements,
        history,
        prepared: prepared_order
            .iter()
            .map(|id| (*id, prepared.remove(id).expect("ordered")))
            .collect(),
        decisions: decision_order
            .iter()
            .map(|id| decisions.remove(id).expect("ordered"))
            .collect(),
        totals,
    })
}
