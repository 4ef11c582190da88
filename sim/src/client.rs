//! The simulated clients: each sends one operation at a time to the node it believes leads the
//! operation's shard, follows `NotLeader` to the leader named, and resends the same id until it
//! hears an outcome; sometimes it resends an id already answered. What they hear is the ledger
//! the final checks hold the cluster to.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::coordinator::{Answer, Refusal, Transfer, TransferRequest};
use engine::model::{
    AccountId, Amount, MovementId, MovementKind, MovementOutcome, NodeId, Outcome, TransferId,
};

use crate::{
    Address, CLIENT_TIMEOUT, ClientReply, Event, INITIAL_BALANCE, Message, Pattern, Simulation,
};

/// A deposit or withdrawal, idempotent by its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cash {
    pub id: MovementId,
    pub account: AccountId,
    pub kind: MovementKind,
    pub amount: Amount,
}

/// Why a deposit or withdrawal got no outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CashRefusal {
    /// The id was used before with other content: a bug for a resend of the same request.
    Duplicate,
    /// Nothing was decided (a lock conflict, the leader changed): the same id again, later.
    Retry(String),
}

/// What a client is sending.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    Transfer(TransferId, Transfer),
    Cash(Cash),
}

/// What one client is doing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Client {
    /// The operation being sent; `attempt` numbers its latest send.
    pub current: Option<Operation>,
    pub attempt: u64,
    retries: u32,
    /// The node the latest send went to.
    sent_to: NodeId,
}

/// Everything the clients were told, to check against the cluster.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    pub transfers: BTreeMap<TransferId, Transfer>,
    pub heard: BTreeMap<TransferId, Outcome>,
    pub cash: BTreeMap<MovementId, Cash>,
    pub cash_heard: BTreeMap<MovementId, MovementOutcome>,
}

impl Simulation {
    /// An account other than `account`, uniformly (scenarios have at least four).
    fn pick_other_than(&mut self, account: AccountId) -> AccountId {
        loop {
            let other = rand::Rng::random_range(&mut self.random, 1..=self.scenario.accounts);
            if other != account {
                return other;
            }
        }
    }

    fn pick_account(&mut self) -> AccountId {
        use rand::Rng;
        let accounts = self.scenario.accounts;
        if self.random.random_bool(self.scenario.hot_fraction) {
            self.random.random_range(1..=2.min(accounts))
        } else {
            self.random.random_range(1..=accounts)
        }
    }

    pub(crate) fn next_operation(&mut self, client: usize) {
        use rand::Rng;
        if self.started >= self.scenario.transfers {
            self.clients[client].current = None;
            return;
        }
        // Sometimes resend an id that was already answered: it must get the same answer.
        if !self.ledger.heard.is_empty() && self.random.random_bool(0.1) {
            let index = self.random.random_range(0..self.ledger.heard.len());
            let id = *self.ledger.heard.keys().nth(index).expect("in range");
            let transfer = self.ledger.transfers[&id];
            self.stats.resends_of_answered += 1;
            self.clients[client].current = Some(Operation::Transfer(id, transfer));
        } else if self.random.random_bool(0.2) {
            // A deposit or a withdrawal (refused when funds are short), idempotent by its id.
            let kind = if self.random.random_bool(0.5) {
                MovementKind::Deposit
            } else {
                MovementKind::Withdrawal
            };
            let cash = Cash {
                id: self.next_cash,
                account: self.pick_account(),
                kind,
                amount: self.random.random_range(1..=INITIAL_BALANCE / 4),
            };
            self.next_cash += 1;
            self.started += 1;
            self.ledger.cash.insert(cash.id, cash);
            self.clients[client].current = Some(Operation::Cash(cash));
        } else {
            let (debit, credit) = match self.scenario.pattern {
                Pattern::ManyToOne => (self.pick_other_than(1), 1),
                Pattern::OneToMany => (1, self.pick_other_than(1)),
                Pattern::Picked => {
                    let debit = self.pick_account();
                    let credit = match self.pick_account() {
                        credit if credit != debit => credit,
                        _ => self.pick_other_than(debit),
                    };
                    (debit, credit)
                }
            };
            let amount = self.random.random_range(1..=INITIAL_BALANCE / 2);
            let id = self.next_transfer;
            self.next_transfer += 1;
            self.started += 1;
            let transfer = Transfer {
                debit,
                credit,
                amount,
            };
            self.ledger.transfers.insert(id, transfer);
            self.clients[client].current = Some(Operation::Transfer(id, transfer));
        }
        self.clients[client].retries = 0;
        self.send_current(client);
    }

    /// The shard an operation goes to: the debit account's for a transfer.
    fn shard_of_operation(&self, operation: Operation) -> u32 {
        match operation {
            Operation::Transfer(_, transfer) => self.shard_of(transfer.debit),
            Operation::Cash(cash) => self.shard_of(cash.account),
        }
    }

    /// Sends the client's current operation to the node it believes leads the shard.
    fn send_current(&mut self, client: usize) {
        let operation = self.clients[client].current.expect("a current operation");
        self.clients[client].attempt += 1;
        let attempt = self.clients[client].attempt;
        let shard = self.shard_of_operation(operation);
        let node = self.client_leaders[&shard];
        self.clients[client].sent_to = node;
        let message = match operation {
            Operation::Transfer(id, transfer) => Message::Transfer {
                client,
                attempt,
                request: TransferRequest {
                    id,
                    transfer,
                    credit_node: self.shard_of(transfer.credit),
                },
            },
            Operation::Cash(cash) => Message::Cash {
                client,
                attempt,
                cash,
            },
        };
        let to = self.node_address(node);
        self.send(Address::Client(client), to, message);
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimer { client, attempt });
    }

    /// No answer in time: the node may be down or cut off; the next replica is tried.
    pub(crate) fn client_timer(&mut self, client: usize, attempt: u64) {
        let state = &self.clients[client];
        if state.attempt != attempt {
            return;
        }
        let Some(operation) = state.current else {
            return;
        };
        let shard = self.shard_of_operation(operation);
        if self.client_leaders[&shard] == state.sent_to {
            let next = self.next_replica(shard, state.sent_to);
            self.client_leaders.insert(shard, next);
        }
        self.send_current(client);
    }

    pub(crate) fn client_answer(
        &mut self,
        client: usize,
        attempt: u64,
        reply: ClientReply,
    ) -> Result<(), String> {
        match reply {
            ClientReply::Transfer(id, answer) => self.transfer_answer(client, attempt, id, answer),
            ClientReply::Cash(id, answer) => self.cash_answer(client, attempt, id, answer),
            ClientReply::NotLeader { shard, leader } => {
                if self.clients[client].attempt != attempt || self.clients[client].current.is_none()
                {
                    return Ok(());
                }
                let sent_to = self.clients[client].sent_to;
                let next = match leader {
                    Some(leader) if leader != sent_to => leader,
                    _ => self.next_replica(shard, sent_to),
                };
                self.client_leaders.insert(shard, next);
                self.retry_later(
                    client,
                    format!("shard {shard}: not the leader at node {sent_to}"),
                );
                Ok(())
            }
        }
    }

    fn transfer_answer(
        &mut self,
        client: usize,
        attempt: u64,
        id: TransferId,
        answer: Answer,
    ) -> Result<(), String> {
        let current = match self.clients[client].current {
            Some(Operation::Transfer(current, _)) => Some(current),
            _ => None,
        };
        if current != Some(id) || self.clients[client].attempt != attempt {
            // An answer to an earlier send still counts: check it.
            if let Ok(outcome) = answer {
                self.hear(id, outcome)?;
            }
            return Ok(());
        }
        match answer {
            Ok(outcome) => {
                self.hear(id, outcome)?;
                self.next_operation(client);
            }
            Err(Refusal::DuplicateWithDifferentContent) => {
                return Err(format!(
                    "transfer {id}: a retry with the same content was refused as a duplicate"
                ));
            }
            Err(refusal) => {
                // Refused for now (overloaded, a participant's backlog, the leader changed):
                // the same id again, later.
                self.retry_later(client, format!("transfer {id} refused: {refusal:?}"));
            }
        }
        Ok(())
    }

    /// Nothing was decided for the client's current operation: it sends the same again after
    /// a backoff that doubles per retry (10 ms to 640 ms).
    fn retry_later(&mut self, client: usize, why: String) {
        self.clients[client].retries += 1;
        let backoff = Duration::from_millis(10 << self.clients[client].retries.min(6));
        self.note(format!("client {client}: {why}"));
        self.clients[client].attempt += 1;
        let attempt = self.clients[client].attempt;
        // A timer of this new attempt number resends at once when it fires.
        self.schedule(backoff, Event::ClientTimer { client, attempt });
        self.clients[client].sent_to = 0;
    }

    fn hear(&mut self, id: TransferId, outcome: Outcome) -> Result<(), String> {
        match self.ledger.heard.get(&id) {
            Some(earlier) if *earlier != outcome => Err(format!(
                "transfer {id}: a client heard {earlier:?}, now {outcome:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.ledger.heard.insert(id, outcome);
                if outcome == Outcome::Committed {
                    self.stats.transfers_committed += 1;
                } else {
                    self.stats.transfers_aborted += 1;
                }
                self.note(format!("transfer {id}: heard {outcome:?}"));
                Ok(())
            }
        }
    }

    fn cash_answer(
        &mut self,
        client: usize,
        attempt: u64,
        id: MovementId,
        answer: Result<MovementOutcome, CashRefusal>,
    ) -> Result<(), String> {
        let current = match self.clients[client].current {
            Some(Operation::Cash(cash)) => Some(cash.id),
            _ => None,
        };
        if current != Some(id) || self.clients[client].attempt != attempt {
            if let Ok(outcome) = answer {
                self.hear_cash(id, outcome)?;
            }
            return Ok(());
        }
        match answer {
            Ok(outcome) => {
                self.hear_cash(id, outcome)?;
                self.next_operation(client);
            }
            Err(CashRefusal::Duplicate) => {
                return Err(format!(
                    "deposit or withdrawal {id}: a resend of the same request was refused as a duplicate"
                ));
            }
            Err(CashRefusal::Retry(why)) => {
                self.retry_later(client, format!("movement {id} not done: {why}"));
            }
        }
        Ok(())
    }

    /// A client hears a deposit's or withdrawal's outcome: the same as any heard before.
    fn hear_cash(&mut self, id: MovementId, outcome: MovementOutcome) -> Result<(), String> {
        match self.ledger.cash_heard.get(&id) {
            Some(earlier) if *earlier != outcome => Err(format!(
                "movement {id}: a client heard {earlier:?}, now {outcome:?}"
            )),
            Some(_) => Ok(()),
            None => {
                self.ledger.cash_heard.insert(id, outcome);
                match outcome {
                    MovementOutcome::Applied { .. } => {
                        self.stats.deposits_and_withdrawals_applied += 1
                    }
                    MovementOutcome::Refused(_) => self.stats.deposits_and_withdrawals_refused += 1,
                }
                self.note(format!("movement {id}: heard {outcome:?}"));
                Ok(())
            }
        }
    }
}
