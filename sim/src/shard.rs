//! A shard's service on the replica that leads it: the coordinator core driven over the leader's
//! engine (as `node/src/coordinator.rs` drives it), the participant's side of two-phase commit,
//! deposits and withdrawals. Engine writes run in two halves: the first logs (the records become
//! a Raft proposal), and the answer is released once the group committed them.

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::coordinator::{
    Asker, BatchId, ClientToken, Coordinator, DeliveryId, Effect, InquiryToken, LogId, Refusal,
    Time, Verdict, VoteFailure,
};
use engine::model::{NodeId, Outcome, TransferId};
use engine::wal::WalError;
use engine::{
    Disagreement, LocalTransferError, Logged, MovementError, OnConflict, PrepareRequest,
    StorageError, Vote,
};

use crate::client::CashRefusal;
use crate::{
    Address, ClientReply, DELIVERY_TIMEOUT, Message, Mutation, Party, REDIRECTS_MAX, SimEngine,
    Simulation,
};

/// An engine answer waiting for its records to be committed, and what to do with it then.
pub(crate) enum Pending {
    Cash {
        client: usize,
        attempt: u64,
        id: engine::model::MovementId,
        logged: Logged<()>,
    },
    /// A PREPARE from another shard's coordinator: its votes go back to it.
    RemoteVotes {
        to: Party,
        batch: BatchId,
        ids: Vec<TransferId>,
        logged: Logged<Vec<Vote>>,
    },
    /// This shard's own part of a batch it coordinates.
    LocalVotes {
        batch: BatchId,
        ids: Vec<TransferId>,
        logged: Logged<Vec<Vote>>,
    },
    /// Decisions applied as a participant; acknowledged to the coordinator when they came in a
    /// delivery.
    Decide {
        ack: Option<(Party, DeliveryId)>,
        coordinator: u32,
        decisions: Vec<Verdict>,
        logged: Logged<Vec<Result<(), Disagreement>>>,
    },
    Local {
        id: TransferId,
        logged: Logged<Outcome>,
    },
    LogDecisions {
        log: LogId,
        local: Vec<(TransferId, Outcome)>,
        logged: Logged<Vec<Result<(), Disagreement>>>,
    },
    Ended {
        logged: Logged<()>,
    },
    /// Account creation and funding before the run.
    Setup {
        logged: Logged<()>,
    },
}

impl Pending {
    fn wait_for(&self) -> Option<engine::wal::Lsn> {
        match self {
            Pending::Cash { logged, .. }
            | Pending::Ended { logged }
            | Pending::Setup { logged } => logged.wait_for(),
            Pending::RemoteVotes { logged, .. } | Pending::LocalVotes { logged, .. } => {
                logged.wait_for()
            }
            Pending::Decide { logged, .. } | Pending::LogDecisions { logged, .. } => {
                logged.wait_for()
            }
            Pending::Local { logged, .. } => logged.wait_for(),
        }
    }
}

/// What a leading replica runs (see the module documentation).
pub(crate) struct Serving {
    pub epoch: u64,
    pub engine: Arc<SimEngine>,
    pub core: Coordinator,
    next_token: u64,
    /// Clients waiting on the core: token -> (client, attempt).
    pub clients: BTreeMap<ClientToken, (usize, u64)>,
    /// Inquiries: token -> who asked (`None`: this shard itself).
    inquiries: BTreeMap<InquiryToken, Option<Party>>,
    /// Decision batches sent and not yet answered, with their deadline.
    deliveries: BTreeMap<DeliveryId, Time>,
    /// When each in-doubt transaction was first seen.
    in_doubt_since: BTreeMap<TransferId, Time>,
    pub pending: Vec<Pending>,
}

impl Serving {
    pub fn new(
        epoch: u64,
        engine: Arc<SimEngine>,
        core: Coordinator,
        in_doubt_since: BTreeMap<TransferId, Time>,
    ) -> Self {
        Self {
            epoch,
            engine,
            core,
            next_token: 0,
            clients: BTreeMap::new(),
            inquiries: BTreeMap::new(),
            deliveries: BTreeMap::new(),
            in_doubt_since,
            pending: Vec::new(),
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }
}

/// Whether an engine error is the close of its log (the replica stopped leading).
fn closed(error: &StorageError) -> bool {
    matches!(error, StorageError::Wal(WalError::Closed))
}

impl Simulation {
    fn party(&self, node: NodeId, shard: u32, epoch: u64) -> Party {
        Party {
            node,
            incarnation: self.nodes[node as usize - 1].incarnation,
            shard,
            epoch,
        }
    }

    fn party_address(party: Party) -> Address {
        Address::Node(party.node, party.incarnation)
    }

    /// A message for a shard or one of its services arrives at `node`.
    pub(crate) fn deliver_to_shard(
        &mut self,
        node: NodeId,
        from: Address,
        message: Message,
    ) -> Result<(), String> {
        let me = self.node_address(node);
        // Answers to a service: only the same epoch takes them.
        let to_party = match &message {
            Message::Votes { to, .. }
            | Message::Acks { to, .. }
            | Message::InquiryAnswer { to, .. } => Some(*to),
            _ => None,
        };
        if let Some(to) = to_party {
            let Some(serving) = self.serving_mut(node, to.shard) else {
                return Ok(());
            };
            if serving.epoch != to.epoch {
                return Ok(());
            }
            match message {
                Message::Votes {
                    from_shard,
                    batch,
                    votes,
                    clock,
                    ..
                } => serving.core.votes(batch, from_shard, Ok((votes, clock))),
                Message::Acks { delivery, ids, .. } => {
                    if serving.deliveries.remove(&delivery).is_some() {
                        serving.core.delivered(delivery, ids);
                    }
                }
                Message::InquiryAnswer {
                    from_shard,
                    decisions,
                    ..
                } => self.apply_decisions(node, to.shard, from_shard, decisions, None)?,
                _ => unreachable!("answers only"),
            }
            return self.drive(node, to.shard);
        }
        if let Message::NotLeader {
            shard,
            leader,
            refused,
        } = message
        {
            let Address::Node(refuser, _) = from else {
                unreachable!("replicas refuse, clients do not")
            };
            return self.not_leader(node, refuser, shard, leader, *refused);
        }
        let shard = match &message {
            Message::Transfer { request, .. } => self.shard_of(request.transfer.debit),
            Message::Cash { cash, .. } => self.shard_of(cash.account),
            Message::Prepare { shard, .. }
            | Message::Decisions { shard, .. }
            | Message::Inquiry { shard, .. } => *shard,
            _ => unreachable!("handled above"),
        };
        let hint = self
            .running(node)
            .and_then(|running| running.leaders.get(&shard).copied())
            .filter(|leader| *leader != node);
        if self.serving_mut(node, shard).is_none() {
            // Not served here: the sender is told whom to ask.
            self.stats.not_leader_redirects += 1;
            match message {
                Message::Transfer {
                    client, attempt, ..
                }
                | Message::Cash {
                    client, attempt, ..
                } => {
                    let reply = ClientReply::NotLeader {
                        shard,
                        leader: hint,
                    };
                    self.answer_client(client, attempt, reply);
                }
                other => {
                    let refused = Message::NotLeader {
                        shard,
                        leader: hint,
                        refused: Box::new(other),
                    };
                    self.send(me, from, refused);
                }
            }
            return Ok(());
        }
        let serving = self.serving_mut(node, shard).expect("checked");
        match message {
            Message::Transfer {
                client,
                attempt,
                request,
            } => {
                let token = ClientToken(serving.token());
                serving.clients.insert(token, (client, attempt));
                serving.core.transfer(token, request);
            }
            Message::Cash {
                client,
                attempt,
                cash,
            } => {
                match serving.engine.move_money_logged(
                    cash.id,
                    cash.account,
                    cash.kind,
                    cash.amount,
                ) {
                    Ok(logged) => serving.pending.push(Pending::Cash {
                        client,
                        attempt,
                        id: cash.id,
                        logged,
                    }),
                    Err(error) => {
                        let reply = ClientReply::Cash(cash.id, Err(cash_refusal(error)));
                        self.answer_client(client, attempt, reply);
                    }
                }
            }
            Message::Prepare {
                from: coordinator,
                batch,
                entries,
                ..
            } => {
                let requests: Vec<PrepareRequest> = entries
                    .iter()
                    .map(|entry| entry.request(coordinator.shard))
                    .collect();
                // A failure (the log closed or full) leaves the vote to time out.
                if let Ok(logged) = serving.engine.prepare_logged(&requests) {
                    serving.pending.push(Pending::RemoteVotes {
                        to: coordinator,
                        batch,
                        ids: requests.iter().map(|request| request.id).collect(),
                        logged,
                    });
                }
            }
            Message::Decisions {
                from: coordinator,
                delivery,
                decisions,
                ..
            } => {
                self.apply_decisions(
                    node,
                    shard,
                    coordinator.shard,
                    decisions,
                    Some((coordinator, delivery)),
                )?;
            }
            Message::Inquiry {
                from: asker, ids, ..
            } => {
                let token = InquiryToken(serving.token());
                serving.inquiries.insert(token, Some(asker));
                serving.core.inquiry(token, ids, Asker::OtherNode);
            }
            _ => unreachable!("handled above"),
        }
        self.drive(node, shard)
    }

    /// A replica refused a message for `shard`: learn the leader it named and, for a PREPARE,
    /// send it there (a few times at most; then its votes time out).
    fn not_leader(
        &mut self,
        node: NodeId,
        refuser: NodeId,
        shard: u32,
        leader: Option<NodeId>,
        refused: Message,
    ) -> Result<(), String> {
        // As the node's router does: the leader named is compared with the replica that refused,
        // not with where this node routes now. Several refusals from one replica (one per
        // message it was sent) all name the same leader; comparing with the route would take
        // the second of them as the leader's own refusal and move on past it, and the third
        // back, for as long as messages go out in pairs.
        let next = match leader {
            Some(leader) if leader != refuser => Some(leader),
            // Nothing known there: the next replica, unless the route moved on already.
            _ => (self.route(node, shard) == refuser).then(|| self.next_replica(shard, refuser)),
        };
        if let Some(next) = next
            && let Some(running) = self.running_mut(node)
        {
            running.leaders.insert(shard, next);
        }
        if let Message::Prepare {
            shard,
            from,
            batch,
            entries,
            redirects,
        } = refused
            && redirects < REDIRECTS_MAX
            && self
                .serving_mut(node, from.shard)
                .is_some_and(|serving| serving.epoch == from.epoch)
        {
            let message = Message::Prepare {
                shard,
                from,
                batch,
                entries,
                redirects: redirects + 1,
            };
            self.send_to_shard(node, shard, message);
        }
        Ok(())
    }

    /// Applies decisions of `coordinator` at `shard`'s leader on `node`; acknowledged once
    /// committed.
    fn apply_decisions(
        &mut self,
        node: NodeId,
        shard: u32,
        coordinator: u32,
        decisions: Vec<Verdict>,
        ack: Option<(Party, DeliveryId)>,
    ) -> Result<(), String> {
        let mutation = self.mutation;
        let Some(serving) = self.serving_mut(node, shard) else {
            return Ok(());
        };
        if decisions.is_empty() {
            if let Some((to, delivery)) = ack {
                let me = self.node_address(node);
                let acks = Message::Acks {
                    to,
                    delivery,
                    ids: Vec::new(),
                };
                self.send(me, Self::party_address(to), acks);
            }
            return Ok(());
        }
        let mut decisions = decisions;
        if mutation == Mutation::CommitAtOwnClock {
            for (_, _, commit_ts) in &mut decisions {
                *commit_ts = serving.engine.clock_now();
            }
        }
        if let Ok(logged) = serving.engine.decide_from_logged(coordinator, &decisions) {
            serving.pending.push(Pending::Decide {
                ack,
                coordinator,
                decisions,
                logged,
            });
        }
        Ok(())
    }

    /// Releases every engine answer of `shard`'s service on `node` whose records are committed
    /// (or whose log closed), and feeds the results on. Returns whether any was released.
    pub(crate) fn finish_ready(&mut self, node: NodeId, shard: u32) -> Result<bool, String> {
        let mut moved = false;
        loop {
            let Some(serving) = self.serving_mut(node, shard) else {
                return Ok(moved);
            };
            let durable = engine::Log::durable_lsn(serving.engine.wal());
            let position = serving
                .pending
                .iter()
                .position(|pending| pending.wait_for().is_none_or(|lsn| lsn <= durable));
            let Some(position) = position else {
                return Ok(moved);
            };
            let pending = serving.pending.remove(position);
            moved = true;
            self.complete(node, shard, pending)?;
            self.drive(node, shard)?;
        }
    }

    /// A committed engine answer: released, and its result fed to whoever waits for it.
    fn complete(&mut self, node: NodeId, shard: u32, pending: Pending) -> Result<(), String> {
        let now = self.now;
        let me = self.node_address(node);
        let serving = self.serving_mut(node, shard).expect("serving");
        let engine = serving.engine.clone();
        match pending {
            Pending::Cash {
                client,
                attempt,
                id,
                logged,
            } => {
                let answer = engine
                    .finish(logged)
                    .map_err(MovementError::from)
                    .and_then(|()| engine.recorded_movement(id))
                    .map_err(cash_refusal);
                self.answer_client(client, attempt, ClientReply::Cash(id, answer));
            }
            Pending::RemoteVotes {
                to,
                batch,
                ids,
                logged,
            } => {
                if let Ok(votes) = engine.finish(logged) {
                    let votes = Message::Votes {
                        to,
                        from_shard: shard,
                        batch,
                        votes: ids.into_iter().zip(votes).collect(),
                        clock: engine.clock_now(),
                    };
                    self.send(me, Self::party_address(to), votes);
                }
            }
            Pending::LocalVotes { batch, ids, logged } => {
                let votes = engine
                    .finish(logged)
                    .map(|votes| (ids.into_iter().zip(votes).collect(), engine.clock_now()))
                    .map_err(|error| VoteFailure::Storage(Arc::new(error)));
                serving.core.votes(batch, shard, votes);
            }
            Pending::Decide {
                ack,
                coordinator,
                decisions,
                logged,
            } => {
                let Ok(results) = engine.finish(logged) else {
                    return Ok(());
                };
                let mut applied = Vec::new();
                for ((id, outcome, _), result) in decisions.iter().zip(results) {
                    match result {
                        Ok(()) => applied.push(*id),
                        Err(error) => {
                            return Err(format!(
                                "shard {shard} (node {node}) refuses {outcome:?} for transfer {id} \
                                 from shard {coordinator}: {error}"
                            ));
                        }
                    }
                }
                if let Some((to, delivery)) = ack {
                    let acks = Message::Acks {
                        to,
                        delivery,
                        ids: applied,
                    };
                    self.send(me, Self::party_address(to), acks);
                }
            }
            Pending::Local { id, logged } => {
                let answer = engine
                    .finish(logged)
                    .map_err(|error| Refusal::Storage(Arc::new(error)));
                serving.core.local_done(id, answer);
            }
            Pending::LogDecisions { log, local, logged } => {
                let result = match engine.finish(logged) {
                    Ok(results) => {
                        for ((id, outcome), result) in local.iter().zip(results) {
                            if let Err(error) = result {
                                return Err(format!(
                                    "shard {shard} (node {node}) refuses its own {outcome:?} for \
                                     transfer {id}: {error}"
                                ));
                            }
                        }
                        Ok(())
                    }
                    Err(error) => Err(Arc::new(error)),
                };
                serving.core.decisions_logged(log, now, result);
            }
            Pending::Ended { logged } => {
                let _ = engine.finish(logged);
            }
            Pending::Setup { logged } => {
                self.setup_left -= 1;
                if let Err(error) = engine.finish(logged) {
                    self.setup_failure.get_or_insert(error.to_string());
                }
            }
        }
        Ok(())
    }

    /// Takes the core's ready effects and carries them out, until it has none: look-ups are
    /// answered in place, so their effects come out of the next round (as on a node).
    pub(crate) fn drive(&mut self, node: NodeId, shard: u32) -> Result<(), String> {
        let now = self.now;
        let Some(serving) = self.serving_mut(node, shard) else {
            return Ok(());
        };
        serving.core.tick(now);
        loop {
            let Some(serving) = self.serving_mut(node, shard) else {
                return Ok(());
            };
            let effects = serving.core.take_ready(now);
            if effects.is_empty() {
                return Ok(());
            }
            for effect in effects {
                self.carry_out(node, shard, effect)?;
            }
        }
    }

    fn carry_out(&mut self, node: NodeId, shard: u32, effect: Effect) -> Result<(), String> {
        let epoch = match self.serving_mut(node, shard) {
            Some(serving) => serving.epoch,
            None => return Ok(()),
        };
        let me = self.party(node, shard, epoch);
        let mutation = self.mutation;
        let now = self.now;
        let serving = self.serving_mut(node, shard).expect("serving");
        match effect {
            Effect::LookUp { ids } => {
                for id in ids {
                    let known = serving.engine.look_up(id).map_err(Arc::new);
                    serving.core.looked_up(id, known);
                }
            }
            Effect::RunLocal { id, transfer } => {
                match serving.engine.local_transfer_logged(
                    id,
                    transfer.debit,
                    transfer.credit,
                    transfer.amount,
                    OnConflict::Abort,
                ) {
                    Ok(logged) => serving.pending.push(Pending::Local { id, logged }),
                    Err(error) => {
                        let answer = Err(match error {
                            LocalTransferError::DuplicateWithDifferentContent(_) => {
                                Refusal::DuplicateWithDifferentContent
                            }
                            LocalTransferError::Storage(error) => Refusal::Storage(Arc::new(error)),
                            other => Refusal::Local(Arc::new(other)),
                        });
                        serving.core.local_done(id, answer);
                    }
                }
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } if participant == shard => {
                let requests: Vec<PrepareRequest> =
                    entries.iter().map(|entry| entry.request(shard)).collect();
                let ids = requests.iter().map(|request| request.id).collect();
                match serving.engine.prepare_logged(&requests) {
                    Ok(logged) => serving
                        .pending
                        .push(Pending::LocalVotes { batch, ids, logged }),
                    Err(error) => {
                        serving.core.votes(
                            batch,
                            shard,
                            Err(VoteFailure::Storage(Arc::new(error))),
                        );
                    }
                }
            }
            Effect::Prepare {
                batch,
                participant,
                entries,
            } => {
                let message = Message::Prepare {
                    shard: participant,
                    from: me,
                    batch,
                    entries,
                    redirects: 0,
                };
                self.send_to_shard(node, participant, message);
            }
            Effect::LogDecisions {
                log,
                mut decisions,
                mut local,
                commit_ts,
            } => {
                if mutation == Mutation::CommitOnNoVote
                    && let Some(position) = decisions.iter().position(|decision| {
                        decision.outcome != Outcome::Committed && decision.transfer.is_some()
                    })
                {
                    decisions[position].outcome = Outcome::Committed;
                    for (id, outcome) in &mut local {
                        if *id == decisions[position].id {
                            *outcome = Outcome::Committed;
                        }
                    }
                }
                match serving
                    .engine
                    .log_decisions_and_decide_logged(shard, decisions, &local, commit_ts)
                {
                    Ok(logged) => {
                        serving
                            .pending
                            .push(Pending::LogDecisions { log, local, logged })
                    }
                    Err(error) => serving
                        .core
                        .decisions_logged(log, now, Err(Arc::new(error))),
                }
            }
            Effect::Answer { client, id, answer } => {
                if let Some((client, attempt)) = serving.clients.remove(&client) {
                    self.answer_client(client, attempt, ClientReply::Transfer(id, answer));
                }
            }
            Effect::AnswerInquiry { inquiry, decisions } => {
                let asker = serving
                    .inquiries
                    .remove(&inquiry)
                    .expect("inquiries are answered once");
                match asker {
                    None => self.apply_decisions(node, shard, shard, decisions, None)?,
                    Some(asker) => {
                        let answer = Message::InquiryAnswer {
                            to: asker,
                            from_shard: shard,
                            decisions,
                        };
                        self.send(Self::party_address(me), Self::party_address(asker), answer);
                    }
                }
            }
            Effect::SendDecisions {
                delivery,
                participant,
                decisions,
            } => {
                serving.deliveries.insert(delivery, now + DELIVERY_TIMEOUT);
                let message = Message::Decisions {
                    shard: participant,
                    from: me,
                    delivery,
                    decisions,
                };
                self.send_to_shard(node, participant, message);
            }
            Effect::LogEnded { ids } => {
                if let Ok(logged) = serving.engine.end_decisions_logged(&ids) {
                    serving.pending.push(Pending::Ended { logged });
                }
            }
        }
        Ok(())
    }

    /// Timers of each shard served on the node: undelivered decision batches time out;
    /// in-doubt transactions past the grace are asked about.
    pub(crate) fn node_tick(&mut self, node: NodeId) -> Result<(), String> {
        let now = self.now;
        let grace = self.scenario.in_doubt_grace;
        let shards: Vec<u32> = match self.running(node) {
            Some(running) => running.replicas.keys().copied().collect(),
            None => return Ok(()),
        };
        for shard in shards {
            let Some(serving) = self.serving_mut(node, shard) else {
                continue;
            };
            let epoch = serving.epoch;
            let late: Vec<DeliveryId> = serving
                .deliveries
                .iter()
                .filter(|(_, deadline)| **deadline <= now)
                .map(|(delivery, _)| *delivery)
                .collect();
            for delivery in late {
                serving.deliveries.remove(&delivery);
                serving.core.delivered(delivery, Vec::new());
            }
            let in_doubt = serving.engine.in_doubt();
            serving
                .in_doubt_since
                .retain(|id, _| in_doubt.iter().any(|transaction| transaction.id == *id));
            let mut due: BTreeMap<NodeId, Vec<TransferId>> = BTreeMap::new();
            for transaction in &in_doubt {
                let since = *serving.in_doubt_since.entry(transaction.id).or_insert(now);
                if now.elapsed().saturating_sub(since.elapsed()) >= grace {
                    due.entry(transaction.coordinator)
                        .or_default()
                        .push(transaction.id);
                }
            }
            if self.mutation == Mutation::NeverInquire {
                due.clear();
            }
            let me = self.party(node, shard, epoch);
            for (coordinator, ids) in due {
                if coordinator == shard {
                    let serving = self.serving_mut(node, shard).expect("serving");
                    let token = InquiryToken(serving.token());
                    serving.inquiries.insert(token, None);
                    serving.core.inquiry(token, ids, Asker::ThisNode);
                } else {
                    let message = Message::Inquiry {
                        shard: coordinator,
                        from: me,
                        ids,
                    };
                    self.send_to_shard(node, coordinator, message);
                }
            }
            self.drive(node, shard)?;
        }
        Ok(())
    }
}

/// A deposit's or withdrawal's refusal as its client sees it.
fn cash_refusal(error: MovementError) -> CashRefusal {
    match error {
        MovementError::DuplicateWithDifferentContent(_) => CashRefusal::Duplicate,
        MovementError::Storage(error) if closed(&error) => {
            CashRefusal::Retry("the replica stopped leading".into())
        }
        other => CashRefusal::Retry(other.to_string()),
    }
}
