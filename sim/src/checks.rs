//! The checks that hold during and after a run: consistent reads conserve money; the cluster
//! settles once healed; every heard outcome is recorded at the coordinator and the participant;
//! balances follow from the ledger; every replica of a shard holds the same tables; answered ids
//! resent get their first answer. The Raft checks (one leader per term, committed entries kept)
//! run at every step, in `Simulation::check_group`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use engine::coordinator::{ClientToken, Effect, TransferRequest};
use engine::model::{AccountId, MovementKind, MovementOutcome, NodeId, Outcome, TransferId};
use engine::tables::Tables as _;
use engine::{ReadError, TransferStatus};
use rand::Rng as _;

use crate::client::Cash;
use crate::{INITIAL_BALANCE, SimEngine, Simulation};

impl Simulation {
    /// Each shard's engine at its serving leader, if every shard has one and every node runs.
    fn serving_engines(&self) -> Option<Vec<(u32, NodeId, &SimEngine)>> {
        if self.nodes.iter().any(|node| node.running.is_none()) {
            return None;
        }
        (1..=self.scenario.shards)
            .map(|shard| {
                self.serving_of(shard)
                    .map(|(node, serving)| (shard, node, &*serving.engine))
            })
            .collect()
    }

    /// A consistent read of every account at one timestamp, without locks: each shard's leader
    /// reads at the latest of their clocks, or up to 100 ms of timestamps before it (so that the
    /// changes applied since are taken back), once the changes that held locks on its accounts
    /// when the read arrived are applied (refused while any is not: a node would wait). The
    /// total must be what was deposited minus what was withdrawn by the shards' totals at the
    /// same timestamp, every cross-shard commit must be seen on both sides (credits equal
    /// debits), no balance may exceed the total, and the previous read, taken again at its
    /// timestamp, must find exactly what it found.
    pub(crate) fn consistent_read(&mut self) -> Result<(), String> {
        let lookback = self.random.random_range(0..=100_000);
        let previous = self.last_read.take();
        let Some(engines) = self.serving_engines() else {
            return Ok(());
        };
        let latest = engines
            .iter()
            .map(|(_, _, engine)| engine.clock_now())
            .max()
            .expect("at least one shard");
        let at = latest - lookback;
        let mut reads = vec![(at, Vec::new())];
        reads.extend(previous);
        let mut results = Vec::new();
        for (at, _) in &reads {
            results.push(self.read_at(&engines, *at)?);
        }
        if let (Some(Some(again)), Some((at, first))) = (results.get(1), reads.get(1))
            && again.0 != *first
        {
            return Err(format!(
                "a read at timestamp {at} found {first:?}, and taken again later {:?}",
                again.0
            ));
        }
        drop(engines);
        let Some(Some((balances, total))) = results.into_iter().next() else {
            self.stats.reads_refused += 1;
            return Ok(());
        };
        self.stats.consistent_reads += 1;
        let sum: u128 = balances
            .iter()
            .map(|(_, balance)| u128::from(*balance))
            .sum();
        if sum != total {
            return Err(format!(
                "consistent read at {at}: balances sum to {sum}, deposits less withdrawals to {total}: {balances:?}"
            ));
        }
        if let Some((account, balance)) = balances
            .iter()
            .find(|(_, balance)| u128::from(*balance) > total)
        {
            return Err(format!(
                "consistent read at {at}: account {account} holds {balance}, more than all the money"
            ));
        }
        self.last_read = Some((at, balances));
        Ok(())
    }

    /// Every account and the deposits less withdrawals at timestamp `at`; `None` where a node
    /// would wait (a change locked before the read is not applied) or the timestamp is older
    /// than a leader keeps.
    #[allow(clippy::type_complexity)]
    fn read_at(
        &self,
        engines: &[(u32, NodeId, &SimEngine)],
        at: u64,
    ) -> Result<Option<(Vec<(AccountId, u64)>, u128)>, String> {
        let mut balances = Vec::new();
        let (mut came_in, mut went_out, mut credited, mut debited) = (0u128, 0u128, 0u128, 0u128);
        for (shard, node, engine) in engines {
            let accounts: Vec<AccountId> = (1..=self.scenario.accounts)
                .filter(|account| self.shard_of(*account) == *shard)
                .collect();
            let fence = engine.read_fence(Some(at));
            if !engine.fence_settled(&fence, None) {
                return Ok(None);
            }
            let read = match engine.balances_at(&accounts, at) {
                Ok(read) => read,
                Err(ReadError::TooOld { .. }) => return Ok(None),
                Err(error) => {
                    return Err(format!(
                        "shard {shard} (node {node}): read at {at}: {error}"
                    ));
                }
            };
            balances.extend(accounts.into_iter().zip(read));
            let audit = engine
                .audit_at(at)
                .map_err(|error| format!("shard {shard} (node {node}): audit at {at}: {error}"))?;
            if !audit.is_balanced() {
                return Err(format!(
                    "shard {shard} (node {node}): its books at {at} do not balance: {audit:?}"
                ));
            }
            came_in += audit.totals.deposited;
            went_out += audit.totals.withdrawn;
            credited += audit.totals.credited_by_transactions;
            debited += audit.totals.debited_by_transactions;
        }
        if credited != debited {
            return Err(format!(
                "read at {at}: the shards received {credited} by cross-shard commits and sent {debited}: a commit seen on one side only"
            ));
        }
        Ok(Some((balances, came_in - went_out)))
    }

    /// Every client answered; every shard served by one leader whose coordinator and engine
    /// have nothing in flight, in doubt or unended; every replica applied the leader's whole log.
    pub(crate) fn settled(&self) -> bool {
        if self.clients.iter().any(|client| client.current.is_some()) {
            return false;
        }
        let Some(engines) = self.serving_engines() else {
            return false;
        };
        engines.iter().all(|(shard, node, engine)| {
            let serving = self
                .running(*node)
                .and_then(|running| running.replicas.get(shard))
                .and_then(|replica| replica.serving.as_ref())
                .expect("serving");
            let leader = &self.running(*node).expect("running").replicas[shard].group;
            let last = leader.last_index();
            serving.pending.is_empty()
                && serving.core.in_flight_count() == 0
                && serving.core.unended_count() == 0
                && engine.in_doubt().is_empty()
                // Durably ended too: a coordinator may forget only ended decisions.
                && engine
                    .unended_decisions()
                    .is_ok_and(|unended| unended.is_empty())
                && self.replicas_of(*shard).into_iter().all(|replica| {
                    let group = &self.running(replica).expect("running").replicas[shard].group;
                    group.applied_index() == last
                        && (replica == *node || group.engine().is_none())
                })
        })
    }

    pub(crate) fn unsettled(&self) -> String {
        let mut text = String::new();
        let busy = self
            .clients
            .iter()
            .filter(|client| client.current.is_some())
            .count();
        let _ = write!(text, "{busy} clients without an answer");
        for node in &self.nodes {
            if node.running.is_none() {
                let _ = write!(text, "; node {} down", node.id);
            }
        }
        for shard in 1..=self.scenario.shards {
            let _ = write!(text, "; shard {shard}:");
            for node in self.replicas_of(shard) {
                let Some(replica) = self.replica(node, shard) else {
                    continue;
                };
                let group = &replica.group;
                let _ = write!(
                    text,
                    " node {node} term {} {} commit {} applied {} last {}",
                    group.term(),
                    if group.is_leader() {
                        "leader"
                    } else {
                        "follower"
                    },
                    group.commit_index(),
                    group.applied_index(),
                    group.last_index()
                );
                if let Some(serving) = &replica.serving {
                    let _ = write!(
                        text,
                        " serving: {} pending, {} in flight, {} unended ({} logged), {} in doubt;",
                        serving.pending.len(),
                        serving.core.in_flight_count(),
                        serving.core.unended_count(),
                        serving
                            .engine
                            .unended_decisions()
                            .map_or(0, |unended| unended.len()),
                        serving.engine.in_doubt().len()
                    );
                }
            }
        }
        text
    }

    /// The engine serving the shard of `account` once settled.
    fn engine_of(&self, shard: u32) -> &SimEngine {
        &self.serving_of(shard).expect("settled: served").1.engine
    }

    /// After the run: every outcome a client heard is the coordinator's record and every
    /// participant's; each committed transfer moved its money exactly once and no aborted one
    /// moved any (every balance is the initial one plus what the committed transfers imply);
    /// every replica of a shard holds the leader's tables; money is conserved; nothing is in
    /// doubt; answered ids resent get their answers.
    pub(crate) fn check_final(&mut self) -> Result<(), String> {
        let mut expected: BTreeMap<AccountId, i128> = (1..=self.scenario.accounts)
            .map(|account| (account, i128::from(INITIAL_BALANCE)))
            .collect();
        for (id, cash) in &self.ledger.cash {
            let Some(outcome) = self.ledger.cash_heard.get(id) else {
                return Err(format!("movement {id}: no client heard an outcome"));
            };
            if let MovementOutcome::Applied { .. } = outcome {
                let change = i128::from(cash.amount);
                *expected.get_mut(&cash.account).expect("account") += match cash.kind {
                    MovementKind::Deposit => change,
                    MovementKind::Withdrawal => -change,
                };
            }
        }
        for (id, transfer) in &self.ledger.transfers {
            let heard = self.ledger.heard.get(id).copied();
            let coordinator = self.shard_of(transfer.debit);
            let recorded = recorded_outcome(self.engine_of(coordinator), *id)?;
            let Some(outcome) = heard else {
                return Err(format!("transfer {id}: no client heard an outcome"));
            };
            if recorded != Some(outcome) {
                return Err(format!(
                    "transfer {id}: the client heard {outcome:?}, shard {coordinator} recorded {recorded:?}"
                ));
            }
            let credit_shard = self.shard_of(transfer.credit);
            let at_credit = match self
                .engine_of(credit_shard)
                .transfer_status(*id)
                .map_err(|error| format!("transfer status: {error}"))?
            {
                TransferStatus::Decided(record) => Some(record.outcome),
                TransferStatus::Unknown => None,
                TransferStatus::Prepared(_) => {
                    return Err(format!(
                        "transfer {id}: still prepared at shard {credit_shard}"
                    ));
                }
            };
            match outcome {
                Outcome::Committed => {
                    if at_credit != Some(Outcome::Committed) {
                        return Err(format!(
                            "transfer {id}: committed, but shard {credit_shard} has {at_credit:?}"
                        ));
                    }
                    *expected.get_mut(&transfer.debit).expect("account") -=
                        i128::from(transfer.amount);
                    *expected.get_mut(&transfer.credit).expect("account") +=
                        i128::from(transfer.amount);
                }
                Outcome::Aborted(_) => {
                    if at_credit == Some(Outcome::Committed) {
                        return Err(format!(
                            "transfer {id}: aborted, but shard {credit_shard} committed it"
                        ));
                    }
                }
            }
        }
        for (account, expected) in expected {
            let balance = self
                .engine_of(self.shard_of(account))
                .balance(account)
                .map_err(|error| format!("balance: {error}"))?;
            if i128::from(balance) != expected {
                return Err(format!(
                    "account {account}: balance {balance}, the acknowledged outcomes imply {expected}"
                ));
            }
        }
        self.check_replicas_agree()?;
        self.consistent_read()?;
        self.check_retries()
    }

    /// During the run: replicas of a shard whose tables are applied up to the same LSN hold the
    /// same tables (the state at an LSN is a function of the committed records up to it).
    pub(crate) fn check_applied_states_agree(&self) -> Result<(), String> {
        for shard in 1..=self.scenario.shards {
            let mut seen: BTreeMap<u64, NodeId> = BTreeMap::new();
            for node in self.replicas_of(shard) {
                if self.running(node).is_none() {
                    continue;
                }
                let tables = &self.nodes[node as usize - 1].tables[&shard];
                let applied = tables
                    .applied_lsn()
                    .map_err(|error| format!("node {node}: tables: {error}"))?;
                match seen.get(&applied) {
                    Some(other)
                        if !self.nodes[*other as usize - 1].tables[&shard]
                            .same_state_as(tables) =>
                    {
                        return Err(format!(
                            "shard {shard}: nodes {other} and {node} both applied up to LSN \
                             {applied} but hold different tables"
                        ));
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(applied, node);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every replica of a shard, having applied the whole log, holds the leader's tables.
    fn check_replicas_agree(&self) -> Result<(), String> {
        for shard in 1..=self.scenario.shards {
            let (leader, _) = self.serving_of(shard).expect("settled: served");
            let tables = &self.nodes[leader as usize - 1].tables[&shard];
            for node in self.replicas_of(shard) {
                if !self.nodes[node as usize - 1].tables[&shard].same_state_as(tables) {
                    return Err(format!(
                        "shard {shard}: node {node}'s tables differ from the leader's (node {leader})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every answered id, sent again on a quiet network, gets the same answer.
    fn check_retries(&mut self) -> Result<(), String> {
        // Deposits and withdrawals: the same request again gets the first answer, logging
        // nothing.
        let heard: Vec<(Cash, MovementOutcome)> = self
            .ledger
            .cash_heard
            .iter()
            .map(|(id, outcome)| (self.ledger.cash[id], *outcome))
            .collect();
        for (cash, outcome) in heard {
            let engine = self.engine_of(self.shard_of(cash.account));
            let again = engine
                .move_money_logged(cash.id, cash.account, cash.kind, cash.amount)
                .and_then(|logged| match logged.wait_for() {
                    Some(lsn) => Err(engine::MovementError::Storage(
                        engine::StorageError::Inconsistent(format!(
                            "a resend logged again (LSN {lsn})"
                        )),
                    )),
                    None => Ok(engine.finish(logged)?),
                })
                .and_then(|()| engine.recorded_movement(cash.id));
            if again.as_ref().ok() != Some(&outcome) {
                return Err(format!(
                    "movement {}: answered {outcome:?}, a resend after the run got {again:?}",
                    cash.id
                ));
            }
        }
        let heard: Vec<(TransferId, Outcome)> = self
            .ledger
            .heard
            .iter()
            .map(|(id, outcome)| (*id, *outcome))
            .collect();
        for (id, outcome) in heard {
            let transfer = self.ledger.transfers[&id];
            let shard = self.shard_of(transfer.debit);
            let request = TransferRequest {
                id,
                transfer,
                credit_node: self.shard_of(transfer.credit),
            };
            let (node, _) = self.serving_of(shard).expect("settled: served");
            let now = self.now;
            let serving = self.serving_mut(node, shard).expect("serving");
            let token = ClientToken(u64::MAX - id as u64);
            serving.core.transfer(token, request);
            let mut answer = None;
            for _ in 0..16 {
                for effect in serving.core.take_ready(now) {
                    match effect {
                        Effect::Answer {
                            client,
                            answer: reply,
                            ..
                        } if client == token => answer = Some(reply),
                        Effect::LookUp { ids } => {
                            for id in ids {
                                let known = serving.engine.look_up(id).map_err(std::sync::Arc::new);
                                serving.core.looked_up(id, known);
                            }
                        }
                        other => {
                            return Err(format!(
                                "a retry of an answered transfer needed more than a look-up: {other:?}"
                            ));
                        }
                    }
                }
                if answer.is_some() {
                    break;
                }
            }
            match answer {
                Some(Ok(again)) if again == outcome => {}
                other => {
                    return Err(format!(
                        "transfer {id}: answered {outcome:?}, a retry after the run got {other:?}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The outcome a coordinator shard recorded for `id`: its decision, or its one-phase record.
fn recorded_outcome(engine: &SimEngine, id: TransferId) -> Result<Option<Outcome>, String> {
    if let Some(decision) = engine
        .decision(id)
        .map_err(|error| format!("decision: {error}"))?
    {
        return Ok(Some(decision.outcome));
    }
    Ok(
        match engine
            .transfer_status(id)
            .map_err(|error| format!("transfer status: {error}"))?
        {
            TransferStatus::Decided(record) => Some(record.outcome),
            _ => None,
        },
    )
}
