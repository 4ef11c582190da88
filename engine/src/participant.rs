//! The participant's state machine: what this shard has prepared or decided and not yet applied,
//! and the rules of 2PC phase one and two over it. No I/O: the engine reads the tables, takes the
//! locks and logs the records; this core says what to vote, what to log, which answers wait for
//! which LSN, and which locks go when an LSN is durable and applied.
//!
//! An entry lives from its PREPARED record (or its abort placeholder) until its decision is
//! applied; after that the tables answer for it. Its state only moves forward:
//!
//! ```text
//! Logging ──logged(lsn)──▶ Preparing{lsn} ──applied ≥ lsn──▶ Prepared ──decided──▶ Deciding
//!                                                                                     │
//!                                     (entry removed, locks released) ◀──applied ≥ lsn┘
//! ```
//!
//! Invariants, asserted in release builds too: a yes vote is released only once its PREPARED is
//! durable (a vote on an entry that is not carries the LSN to wait for); a decision, once taken,
//! is never changed; an entry leaves only once its decision is applied.

use std::collections::{BTreeMap, HashMap};

use crate::model::{AbortReason, NodeId, Operation, Outcome, PreparedTransaction, TransferId};
use crate::record::Record;
use crate::shard::Disagreement;
use crate::wal::Lsn;

/// A participant's vote on one transaction of a prepare batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    Yes,
    No(AbortReason),
}

/// What the participant holds for one id.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Subject {
    /// A prepared transaction, holding its locks.
    Transaction(PreparedTransaction),
    /// The abort of a transaction never prepared here, held until its record is applied so that
    /// a PREPARE for it arriving late is refused. It holds no locks.
    AbortPlaceholder { coordinator: NodeId },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// PREPARED is in the batch being logged now; the batch's LSNs are not known yet.
    Logging,
    /// PREPARED logged at `lsn`, not yet durable and applied: nobody may hear "prepared".
    Preparing { lsn: Lsn },
    /// PREPARED durable and applied (at an LSN not kept: after a restart it is not known).
    Prepared,
    /// The decision is taken: logged at `lsn`, or in the batch being logged now (`None`).
    Deciding { lsn: Option<Lsn>, outcome: Outcome },
}

#[derive(Debug)]
struct Entry {
    subject: Subject,
    /// The lock owner holding this transaction's locks (none for a placeholder).
    lock_owner: Option<u128>,
    state: State,
}

impl Entry {
    fn coordinator(&self) -> NodeId {
        match &self.subject {
            Subject::Transaction(transaction) => transaction.coordinator,
            Subject::AbortPlaceholder { coordinator } => *coordinator,
        }
    }
}

/// The answer to a request about an id the participant holds, released only once `wait_for` (if
/// any) is durable and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer<A> {
    pub answer: A,
    pub wait_for: Option<Lsn>,
}

/// What to do with a decision (`Participant::decide`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decide {
    /// Answered from what the participant holds (a repeat, or a decision from a coordinator that
    /// did not prepare this transaction here).
    Answered(Answer<Result<(), Disagreement>>),
    /// Log this record; the decision is taken (undo with `undo` if the record is not logged).
    Log { record: Record, undo: Undo },
    /// Not held here: the engine looks the id up in the tables and calls `decide_unheld`.
    NotHeld,
}

/// How to take back a decision whose record was never logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Undo {
    id: TransferId,
    /// The state before the decision; `None` for a placeholder, which goes.
    previous: Option<State>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Participant {
    entries: HashMap<TransferId, Entry>,
    /// Entries whose record is logged but not yet applied, by that record's LSN.
    waiting: BTreeMap<Lsn, Vec<TransferId>>,
}

impl Participant {
    /// A transaction found prepared and undecided at start-up; its locks are held by `lock_owner`.
    pub fn restore(&mut self, transaction: PreparedTransaction, lock_owner: u128) {
        let previous = self.entries.insert(
            transaction.id,
            Entry {
                subject: Subject::Transaction(transaction),
                lock_owner: Some(lock_owner),
                state: State::Prepared,
            },
        );
        assert!(previous.is_none(), "a transaction restored twice");
    }

    pub fn holds(&self, id: TransferId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Whether a record of `id` is durable (a prepared transaction, or a decision logged and
    /// durable), as opposed to a prepare that may still vanish. `None` when not held.
    pub fn durably_known(&self, id: TransferId, durable: Lsn) -> Option<bool> {
        self.entries.get(&id).map(|entry| match entry.state {
            State::Logging => false,
            State::Preparing { lsn } => lsn <= durable,
            State::Prepared => true,
            State::Deciding { lsn, .. } => lsn.is_some_and(|lsn| lsn <= durable),
        })
    }

    /// The vote on a PREPARE of an id held here: a resent prepare, or one racing a decision. The
    /// same id with other operations, or from another coordinator (a different transaction
    /// reusing the id), is refused. `None` when the id is not held.
    /// A vote on an entry begun or decided in the batch being logged carries no LSN: the caller
    /// waits for that batch anyway.
    pub fn vote_again(&self, request: &PreparedTransaction) -> Option<Answer<Vote>> {
        let entry = self.entries.get(&request.id)?;
        let same = matches!(&entry.subject, Subject::Transaction(held) if held == request);
        Some(match entry.state {
            State::Deciding {
                outcome: Outcome::Aborted(reason),
                ..
            } => Answer {
                answer: Vote::No(reason),
                wait_for: None,
            },
            _ if !same => Answer {
                answer: Vote::No(AbortReason::InvalidRequest),
                wait_for: None,
            },
            State::Logging => Answer {
                answer: Vote::Yes,
                wait_for: None,
            },
            State::Preparing { lsn } => Answer {
                answer: Vote::Yes,
                wait_for: Some(lsn),
            },
            State::Prepared => Answer {
                answer: Vote::Yes,
                wait_for: None,
            },
            State::Deciding {
                lsn,
                outcome: Outcome::Committed,
            } => Answer {
                answer: Vote::Yes,
                wait_for: lsn,
            },
        })
    }

    /// A new prepare whose locks `lock_owner` holds and whose PREPARED goes into the batch being
    /// logged.
    pub fn begin_prepare(&mut self, transaction: PreparedTransaction, lock_owner: u128) {
        let previous = self.entries.insert(
            transaction.id,
            Entry {
                subject: Subject::Transaction(transaction),
                lock_owner: Some(lock_owner),
                state: State::Logging,
            },
        );
        assert!(previous.is_none(), "a held transaction prepared again");
    }

    /// The PREPARED records of `ids` were logged at consecutive LSNs from `first`.
    pub fn prepares_logged(&mut self, ids: &[TransferId], first: Lsn) {
        for (offset, id) in ids.iter().enumerate() {
            let lsn = first + offset as Lsn;
            let entry = self.entries.get_mut(id).expect("begun by begin_prepare");
            assert_eq!(entry.state, State::Logging, "transaction {id} logged twice");
            entry.state = State::Preparing { lsn };
            self.waiting.entry(lsn).or_default().push(*id);
        }
    }

    /// Prepares begun whose records were not logged: forgotten; returns the lock owners to free.
    pub fn forget_prepares(&mut self, ids: &[TransferId]) -> Vec<u128> {
        ids.iter()
            .filter_map(|id| {
                let entry = self.entries.remove(id).expect("begun by begin_prepare");
                assert_eq!(entry.state, State::Logging);
                entry.lock_owner
            })
            .collect()
    }

    /// A decision from `coordinator` (`None`: this node's own, trusted) on an id.
    pub fn decide(
        &mut self,
        id: TransferId,
        outcome: Outcome,
        coordinator: Option<NodeId>,
    ) -> Decide {
        let Some(entry) = self.entries.get_mut(&id) else {
            return Decide::NotHeld;
        };
        if coordinator.is_some_and(|from| from != entry.coordinator()) {
            // Another transaction reusing the id: nothing changes here. An abort is acknowledged
            // (there is nothing of it to undo), a commit refused.
            return Decide::Answered(Answer {
                answer: match outcome {
                    Outcome::Aborted(_) => Ok(()),
                    Outcome::Committed => Err(Disagreement::NotPrepared),
                },
                wait_for: None,
            });
        }
        match entry.state {
            State::Deciding {
                lsn,
                outcome: existing,
            } => Decide::Answered(Answer {
                answer: agree(existing, outcome),
                // Within one batch, the batch's own LSN: the caller waits for it anyway.
                wait_for: lsn,
            }),
            previous @ (State::Logging | State::Preparing { .. } | State::Prepared) => {
                // The coordinator only decides on votes, and a yes is only heard once PREPARED is
                // durable; an abort may arrive earlier (a vote timed out). One that does leaves
                // the entry listed under its PREPARED's LSN too: `applied` skips it there.
                assert!(
                    previous == State::Prepared || matches!(outcome, Outcome::Aborted(_)),
                    "COMMIT of transaction {id} before its PREPARED was durable"
                );
                entry.state = State::Deciding { lsn: None, outcome };
                Decide::Log {
                    record: decision_record(id, outcome),
                    undo: Undo {
                        id,
                        previous: Some(previous),
                    },
                }
            }
        }
    }

    /// A decision on an id not held here, given what the tables recorded of it.
    pub fn decide_unheld(
        &mut self,
        id: TransferId,
        outcome: Outcome,
        coordinator: Option<NodeId>,
        recorded: Option<Outcome>,
    ) -> Decide {
        assert!(!self.holds(id));
        match (recorded, outcome) {
            (Some(existing), _) => Decide::Answered(Answer {
                answer: agree(existing, outcome),
                wait_for: None,
            }),
            (None, Outcome::Committed) => Decide::Answered(Answer {
                answer: Err(Disagreement::NotPrepared),
                wait_for: None,
            }),
            (None, Outcome::Aborted(_)) => {
                self.entries.insert(
                    id,
                    Entry {
                        subject: Subject::AbortPlaceholder {
                            coordinator: coordinator.unwrap_or_default(),
                        },
                        lock_owner: None,
                        state: State::Deciding { lsn: None, outcome },
                    },
                );
                Decide::Log {
                    record: decision_record(id, outcome),
                    undo: Undo { id, previous: None },
                }
            }
        }
    }

    /// The decision records of `ids` were logged at these LSNs.
    pub fn decisions_logged(&mut self, logged: &[(TransferId, Lsn)]) {
        for (id, at) in logged {
            let entry = self.entries.get_mut(id).expect("decided by decide");
            let State::Deciding { lsn, outcome } = entry.state else {
                panic!("transaction {id} logged as decided without a decision");
            };
            assert!(lsn.is_none(), "transaction {id} decided twice");
            entry.state = State::Deciding {
                lsn: Some(*at),
                outcome,
            };
            self.waiting.entry(*at).or_default().push(*id);
        }
    }

    /// Takes back decisions whose records were not logged: a placeholder goes, a prepared
    /// transaction is undecided again (still in doubt, its locks held), in the state it had.
    pub fn undo(&mut self, undos: &[Undo]) {
        for undo in undos {
            let Some(previous) = undo.previous else {
                self.entries.remove(&undo.id);
                continue;
            };
            let entry = self.entries.get_mut(&undo.id).expect("decided by decide");
            assert!(matches!(entry.state, State::Deciding { lsn: None, .. }));
            entry.state = previous;
        }
    }

    /// Everything up to `applied` is durable and in the tables: prepares become answerable,
    /// decided entries go. Returns the lock owners to free.
    pub fn applied(&mut self, applied: Lsn) -> Vec<u128> {
        let mut released = Vec::new();
        while let Some(entry) = self.waiting.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for id in entry.remove() {
                let Some(held) = self.entries.get_mut(&id) else {
                    continue;
                };
                match held.state {
                    State::Preparing { .. } => held.state = State::Prepared,
                    State::Deciding { lsn: Some(lsn), .. } if lsn <= applied => {
                        let entry = self.entries.remove(&id).expect("present");
                        released.extend(entry.lock_owner);
                    }
                    // Decided after its prepare was queued here; it waits under its own LSN.
                    State::Deciding { .. } => {}
                    State::Logging | State::Prepared => {
                        panic!("transaction {id} was waiting in state {:?}", held.state)
                    }
                }
            }
        }
        released
    }

    /// Prepared transactions whose decision is not known here, by id.
    pub fn in_doubt(&self) -> Vec<PreparedTransaction> {
        let mut list: Vec<PreparedTransaction> = self
            .entries
            .values()
            .filter(|entry| entry.state == State::Prepared)
            .filter_map(|entry| match &entry.subject {
                Subject::Transaction(transaction) => Some(transaction.clone()),
                Subject::AbortPlaceholder { .. } => None,
            })
            .collect();
        list.sort_by_key(|transaction| transaction.id);
        list
    }

    /// What a reader may know of `id`: its decision (possibly not applied yet), prepared (only
    /// once durable), or nothing (`None`: ask the tables; a prepare not yet durable may vanish).
    pub fn status(&self, id: TransferId) -> Option<Status<'_>> {
        let entry = self.entries.get(&id)?;
        let operations = match &entry.subject {
            Subject::Transaction(transaction) => transaction.operations.as_slice(),
            Subject::AbortPlaceholder { .. } => &[],
        };
        match (entry.state, &entry.subject) {
            (State::Deciding { outcome, .. }, _) => Some(Status::Decided {
                operations,
                outcome,
            }),
            (State::Prepared, Subject::Transaction(transaction)) => {
                Some(Status::Prepared(transaction))
            }
            _ => None,
        }
    }

    /// Transactions prepared (or being prepared) here whose decision is not applied yet.
    pub fn undecided_count(&self) -> usize {
        self.entries
            .values()
            .filter(|entry| matches!(entry.subject, Subject::Transaction(_)))
            .count()
    }
}

/// What `Participant::status` reports.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Status<'a> {
    Prepared(&'a PreparedTransaction),
    Decided {
        operations: &'a [Operation],
        outcome: Outcome,
    },
}

fn decision_record(id: TransferId, outcome: Outcome) -> Record {
    match outcome {
        Outcome::Committed => Record::Committed { id },
        Outcome::Aborted(reason) => Record::Aborted { id, reason },
    }
}

/// The answer to a decision `requested` on a transaction already decided `existing`.
fn agree(existing: Outcome, requested: Outcome) -> Result<(), Disagreement> {
    match (existing, requested) {
        (Outcome::Committed, Outcome::Committed) | (Outcome::Aborted(_), Outcome::Aborted(_)) => {
            Ok(())
        }
        (Outcome::Aborted(_), Outcome::Committed) => Err(Disagreement::AlreadyAborted),
        (Outcome::Committed, Outcome::Aborted(_)) => Err(Disagreement::AlreadyCommitted),
    }
}

#[cfg(test)]
mod tests;
