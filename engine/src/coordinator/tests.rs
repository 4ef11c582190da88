//! The coordinator core, event by event: each test feeds events and checks the effects that come
//! out, and in which order. Node 1 coordinates; node 2 and node 3 are the other participants.

use super::*;
use crate::model::AccountId;

const ME: NodeId = 1;
const TWO: NodeId = 2;
const THREE: NodeId = 3;

fn at(ms: u64) -> Time {
    Time::from_elapsed(Duration::from_millis(ms))
}

fn request(id: TransferId, credit_node: NodeId) -> TransferRequest {
    TransferRequest {
        id,
        transfer: Transfer {
            debit: 10,
            credit: 20 + id as AccountId,
            amount: 5,
        },
        credit_node,
    }
}

fn decision(id: TransferId, outcome: Outcome, participants: Vec<NodeId>) -> CoordinatorDecision {
    CoordinatorDecision {
        id,
        transfer: Some(request(id, TWO).transfer),
        outcome,
        participants,
        ended: false,
        commit_ts: 0,
    }
}

fn engine_failure() -> Arc<StorageError> {
    Arc::new(StorageError::Failed(crate::StorageFailure {
        kind: Some(std::io::ErrorKind::Other),
        message: "disk on fire".into(),
    }))
}

/// A coordinator under test and the effects it released so far.
struct Check {
    core: Coordinator,
    now: Time,
}

impl Check {
    fn new() -> Check {
        Check::with(CoordinatorLimits::default(), Vec::new())
    }

    fn with(limits: CoordinatorLimits, unended: Vec<CoordinatorDecision>) -> Check {
        Check {
            core: Coordinator::new(ME, limits, unended, Time::ZERO),
            now: Time::ZERO,
        }
    }

    fn ready(&mut self) -> Vec<Effect> {
        self.core.take_ready(self.now)
    }

    /// Sends a transfer and answers its look-up with `known`; returns the effects after that.
    fn start(&mut self, client: u64, request: TransferRequest, known: Known) -> Vec<Effect> {
        self.core.transfer(ClientToken(client), request);
        assert_eq!(
            self.ready(),
            vec![Effect::LookUp {
                ids: vec![request.id]
            }]
        );
        self.core.looked_up(request.id, Ok(known));
        self.ready()
    }

    /// This node and node 2 both vote yes on transfer `id` of batch `batch`.
    fn both_vote_yes(&mut self, batch: u64, id: TransferId) {
        self.core
            .votes(BatchId(batch), ME, Ok((vec![(id, Vote::Yes)], 0)));
        self.core
            .votes(BatchId(batch), TWO, Ok((vec![(id, Vote::Yes)], 0)));
    }

    fn logged(&mut self, log: LogId) -> Vec<Effect> {
        self.core.decisions_logged(log, self.now, Ok(()));
        self.ready()
    }
}

fn prepare(batch: u64, participant: NodeId, ids: &[TransferId]) -> Effect {
    Effect::Prepare {
        batch: BatchId(batch),
        participant,
        entries: ids
            .iter()
            .map(|id| {
                let request = request(*id, participant);
                let (account, kind, counterparty) = if participant == ME {
                    (
                        request.transfer.debit,
                        OperationKind::Debit,
                        request.transfer.credit,
                    )
                } else {
                    (
                        request.transfer.credit,
                        OperationKind::Credit,
                        request.transfer.debit,
                    )
                };
                PrepareEntry {
                    id: *id,
                    operation: Operation {
                        account,
                        kind,
                        amount: request.transfer.amount,
                        counterparty,
                    },
                }
            })
            .collect(),
    }
}

fn answer(client: u64, id: TransferId, outcome: Outcome) -> Effect {
    Effect::Answer {
        client: ClientToken(client),
        id,
        answer: Ok(outcome),
    }
}

fn inquiry_answer(token: u64, decisions: Vec<Verdict>) -> Effect {
    Effect::AnswerInquiry {
        inquiry: InquiryToken(token),
        decisions,
    }
}

fn refusal(effects: &[Effect]) -> Vec<(u64, String)> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Answer {
                client,
                answer: Err(refusal),
                ..
            } => Some((client.0, format!("{refusal:?}"))),
            _ => None,
        })
        .collect()
}

fn log_of(effects: &[Effect]) -> (LogId, Vec<CoordinatorDecision>, Vec<(TransferId, Outcome)>) {
    let logs: Vec<_> = effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::LogDecisions {
                log,
                decisions,
                local,
                ..
            } => Some((*log, decisions.clone(), local.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(logs.len(), 1, "one decision log in {effects:?}");
    logs.into_iter().next().expect("one")
}

const COMMITTED: Outcome = Outcome::Committed;

fn aborted(reason: AbortReason) -> Outcome {
    Outcome::Aborted(reason)
}

#[test]
fn a_transfer_commits_on_two_yes_votes_and_is_answered_only_once_logged() {
    let mut check = Check::new();
    let effects = check.start(7, request(1, TWO), Known::Nothing);
    assert_eq!(effects, vec![prepare(0, ME, &[1]), prepare(0, TWO, &[1])]);

    check
        .core
        .votes(BatchId(0), TWO, Ok((vec![(1, Vote::Yes)], 70)));
    assert_eq!(
        check.ready(),
        vec![],
        "the decision waits for this node's vote"
    );
    check
        .core
        .votes(BatchId(0), ME, Ok((vec![(1, Vote::Yes)], 40)));
    let effects = check.ready();
    let (log, decisions, local) = log_of(&effects);
    // Committed later than every participant's clock when it voted.
    assert!(matches!(
        effects[0],
        Effect::LogDecisions { commit_ts: 71, .. }
    ));
    assert_eq!(
        decisions,
        vec![CoordinatorDecision {
            commit_ts: 71,
            ..decision(1, COMMITTED, vec![TWO])
        }]
    );
    assert_eq!(local, vec![(1, COMMITTED)]);
    assert_eq!(effects.len(), 1, "no answer before the decision is durable");

    let effects = check.logged(log);
    assert_eq!(
        effects,
        vec![
            answer(7, 1, COMMITTED),
            Effect::SendDecisions {
                delivery: DeliveryId(0),
                participant: TWO,
                decisions: vec![(1, COMMITTED, 71)],
            },
        ]
    );
    assert!(!check.core.is_in_flight(1));
    assert_eq!(check.core.unended_count(), 1);

    check.core.delivered(DeliveryId(0), vec![1]);
    assert_eq!(check.ready(), vec![Effect::LogEnded { ids: vec![1] }]);
    assert_eq!(check.core.unended_count(), 0);
}

#[test]
fn a_no_vote_aborts_with_its_reason_and_only_prepared_participants_hear_it() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check.core.votes(
        BatchId(0),
        TWO,
        Ok((vec![(1, Vote::No(AbortReason::UnknownAccount))], 0)),
    );
    check
        .core
        .votes(BatchId(0), ME, Ok((vec![(1, Vote::Yes)], 0)));
    let effects = check.ready();
    let (log, decisions, local) = log_of(&effects);
    let outcome = aborted(AbortReason::UnknownAccount);
    assert_eq!(decisions, vec![decision(1, outcome, vec![])]);
    assert_eq!(local, vec![(1, outcome)], "this node's PREPARE is undone");
    assert_eq!(check.logged(log), vec![answer(7, 1, outcome)]);
    assert_eq!(check.core.unended_count(), 0, "nobody else to tell");

    // This node refused: the participant that voted yes must hear the abort; nothing local.
    check.start(8, request(2, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(1), TWO, Ok((vec![(2, Vote::Yes)], 0)));
    check.core.votes(
        BatchId(1),
        ME,
        Ok((vec![(2, Vote::No(AbortReason::InsufficientFunds))], 0)),
    );
    let (_, decisions, local) = log_of(&check.ready());
    let outcome = aborted(AbortReason::InsufficientFunds);
    assert_eq!(decisions, vec![decision(2, outcome, vec![TWO])]);
    assert_eq!(local, vec![]);
}

#[test]
fn a_silent_participant_may_be_prepared_and_a_refused_one_is_not() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(0), ME, Ok((vec![(1, Vote::Yes)], 0)));
    check.core.votes(
        BatchId(0),
        TWO,
        Err(VoteFailure::Unreachable {
            surely_not_applied: false,
        }),
    );
    let (_, decisions, _) = log_of(&check.ready());
    let outcome = aborted(AbortReason::ParticipantUnavailable);
    assert_eq!(decisions, vec![decision(1, outcome, vec![TWO])]);

    check.start(8, request(2, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(1), ME, Ok((vec![(2, Vote::Yes)], 0)));
    check.core.votes(
        BatchId(1),
        TWO,
        Err(VoteFailure::Unreachable {
            surely_not_applied: true,
        }),
    );
    let (_, decisions, _) = log_of(&check.ready());
    assert_eq!(decisions, vec![decision(2, outcome, vec![])]);
}

#[test]
fn remote_votes_past_the_deadline_count_as_unknown_and_late_ones_are_ignored() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(0), ME, Ok((vec![(1, Vote::Yes)], 0)));
    let deadline = check.core.next_deadline().expect("votes awaited");
    assert_eq!(
        deadline,
        Time::ZERO + CoordinatorLimits::default().vote_timeout
    );
    check.core.tick(Time::from_elapsed(
        deadline.elapsed() - Duration::from_millis(1),
    ));
    assert_eq!(check.ready(), vec![]);
    check.now = deadline;
    check.core.tick(deadline);
    let (log, decisions, _) = log_of(&check.ready());
    assert_eq!(
        decisions,
        vec![decision(
            1,
            aborted(AbortReason::ParticipantUnavailable),
            vec![TWO]
        )]
    );
    // The yes arriving now changes nothing.
    check
        .core
        .votes(BatchId(0), TWO, Ok((vec![(1, Vote::Yes)], 0)));
    assert_eq!(check.ready(), vec![]);
    let effects = check.logged(log);
    assert_eq!(
        effects[0],
        answer(7, 1, aborted(AbortReason::ParticipantUnavailable))
    );
}

#[test]
fn the_deadline_never_decides_without_this_nodes_vote() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(0), TWO, Ok((vec![(1, Vote::Yes)], 0)));
    check.core.tick(at(60_000));
    assert_eq!(check.ready(), vec![]);
    check
        .core
        .votes(BatchId(0), ME, Ok((vec![(1, Vote::Yes)], 0)));
    let (_, decisions, _) = log_of(&check.ready());
    assert_eq!(decisions[0].outcome, COMMITTED);
}

#[test]
fn votes_from_the_wrong_participant_or_on_unknown_transfers_are_ignored() {
    let mut check = Check::new();
    check.core.transfer(ClientToken(7), request(1, TWO));
    check.core.transfer(ClientToken(8), request(2, THREE));
    check.ready();
    check.core.looked_up(1, Ok(Known::Nothing));
    check.core.looked_up(2, Ok(Known::Nothing));
    check.ready();
    // Node 3 votes on transfer 1, which is node 2's to vote on, and on an id not in the batch.
    check.core.votes(
        BatchId(0),
        THREE,
        Ok((vec![(1, Vote::Yes), (2, Vote::Yes), (99, Vote::Yes)], 0)),
    );
    // A second answer from node 3 does not count.
    check.core.votes(
        BatchId(0),
        THREE,
        Ok((vec![(2, Vote::No(AbortReason::LockConflict))], 0)),
    );
    check.core.votes(
        BatchId(0),
        ME,
        Ok((vec![(1, Vote::Yes), (2, Vote::Yes)], 0)),
    );
    check.core.votes(
        BatchId(0),
        TWO,
        Ok((vec![(1, Vote::No(AbortReason::LockConflict))], 0)),
    );
    let (_, decisions, _) = log_of(&check.ready());
    assert_eq!(decisions[0].outcome, aborted(AbortReason::LockConflict));
    assert_eq!(decisions[1].outcome, COMMITTED);
}

#[test]
fn a_retry_joins_the_running_transfer_and_other_content_is_refused() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check.core.transfer(ClientToken(8), request(1, TWO));
    let mut other = request(1, TWO);
    other.transfer.amount += 1;
    check.core.transfer(ClientToken(9), other);
    assert_eq!(
        refusal(&check.ready()),
        vec![(9, "DuplicateWithDifferentContent".into())]
    );
    check.both_vote_yes(0, 1);
    let (log, _, _) = log_of(&check.ready());
    let effects = check.logged(log);
    assert_eq!(effects[0], answer(7, 1, COMMITTED));
    assert_eq!(effects[1], answer(8, 1, COMMITTED));
}

#[test]
fn a_known_id_is_answered_from_its_record() {
    let mut check = Check::new();
    let logged = decision(1, COMMITTED, vec![TWO]);
    assert_eq!(
        check.start(7, request(1, TWO), Known::Decided(logged.clone())),
        vec![answer(7, 1, COMMITTED)]
    );
    let mut other = request(1, TWO);
    other.transfer.credit += 1;
    let effects = check.start(8, other, Known::Decided(logged));
    assert_eq!(
        refusal(&effects),
        vec![(8, "DuplicateWithDifferentContent".into())]
    );

    // A presumed abort is the answer for any content.
    let presumed = CoordinatorDecision {
        transfer: None,
        ..decision(2, aborted(AbortReason::PresumedAbort), vec![])
    };
    assert_eq!(
        check.start(9, request(2, TWO), Known::Decided(presumed)),
        vec![answer(9, 2, aborted(AbortReason::PresumedAbort))]
    );

    // A same-shard transfer recorded the id.
    let record = TransferRecord {
        id: 3,
        transfer: Some(request(3, ME).transfer),
        outcome: aborted(AbortReason::InsufficientFunds),
    };
    assert_eq!(
        check.start(10, request(3, TWO), Known::Recorded(record.clone())),
        vec![answer(10, 3, aborted(AbortReason::InsufficientFunds))]
    );
    let mut other = request(3, TWO);
    other.transfer.amount = 1;
    assert_eq!(
        refusal(&check.start(11, other, Known::Recorded(record))),
        vec![(11, "DuplicateWithDifferentContent".into())]
    );
    assert_eq!(check.core.in_flight_count(), 0);
}

#[test]
fn a_failed_look_up_answers_with_the_failure() {
    let mut check = Check::new();
    check.core.transfer(ClientToken(7), request(1, TWO));
    check.ready();
    check.core.looked_up(1, Err(engine_failure()));
    assert_eq!(refusal(&check.ready()).len(), 1);
    assert_eq!(check.core.in_flight_count(), 0);
}

#[test]
fn a_same_shard_transfer_runs_in_one_phase_and_blocks_its_id_meanwhile() {
    let mut check = Check::new();
    let effects = check.start(7, request(1, ME), Known::Nothing);
    assert_eq!(
        effects,
        vec![Effect::RunLocal {
            id: 1,
            transfer: request(1, ME).transfer
        }]
    );
    check.core.transfer(ClientToken(8), request(1, ME));
    let mut other = request(1, TWO);
    other.transfer.credit += 100;
    check.core.transfer(ClientToken(9), other);
    assert_eq!(
        refusal(&check.ready()),
        vec![(9, "DuplicateWithDifferentContent".into())]
    );
    check.core.local_done(1, Ok(COMMITTED));
    assert_eq!(
        check.ready(),
        vec![answer(7, 1, COMMITTED), answer(8, 1, COMMITTED)]
    );
}

#[test]
fn an_inquiry_about_an_unknown_id_logs_a_presumed_abort_before_answering() {
    let mut check = Check::new();
    check
        .core
        .inquiry(InquiryToken(1), vec![5, 5], Asker::OtherNode);
    assert_eq!(check.ready(), vec![Effect::LookUp { ids: vec![5] }]);
    // A retry of the transfer arrives meanwhile, then the tables know nothing.
    check.core.looked_up(5, Ok(Known::Nothing));
    let effects = check.ready();
    let (log, decisions, local) = log_of(&effects);
    assert_eq!(
        effects.len(),
        1,
        "no answer before the presumed abort is durable"
    );
    let presumed = aborted(AbortReason::PresumedAbort);
    assert_eq!(decisions.len(), 1);
    assert_eq!((decisions[0].id, decisions[0].outcome), (5, presumed));
    assert!(decisions[0].participants.is_empty() && local.is_empty());
    // A transfer reusing the id while the abort is logged joins it, whatever its content.
    check.core.transfer(ClientToken(9), request(5, TWO));
    assert_eq!(check.ready(), vec![]);
    assert_eq!(
        check.logged(log),
        vec![
            answer(9, 5, presumed),
            inquiry_answer(1, vec![(5, presumed, 0)])
        ]
    );
}

#[test]
fn an_inquiry_is_answered_from_a_logged_decision() {
    let mut check = Check::new();
    check
        .core
        .inquiry(InquiryToken(1), vec![5, 6], Asker::OtherNode);
    check.ready();
    check
        .core
        .looked_up(5, Ok(Known::Decided(decision(5, COMMITTED, vec![TWO]))));
    assert_eq!(check.ready(), vec![], "waits for the other id");
    check.core.looked_up(6, Err(engine_failure()));
    assert_eq!(
        check.ready(),
        vec![inquiry_answer(1, vec![(5, COMMITTED, 0)])],
        "an id that could not be read is left out, to be asked again"
    );
}

#[test]
fn an_inquiry_while_votes_are_collected_forces_an_abort_and_is_answered_later() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .inquiry(InquiryToken(1), vec![1], Asker::OtherNode);
    assert_eq!(check.ready(), vec![inquiry_answer(1, vec![])]);
    check.both_vote_yes(0, 1);
    let (log, decisions, _) = log_of(&check.ready());
    let outcome = aborted(AbortReason::Timeout);
    assert_eq!(decisions, vec![decision(1, outcome, vec![TWO])]);

    // Asked again while the abort is being logged: answered once it is durable.
    check
        .core
        .inquiry(InquiryToken(2), vec![1], Asker::OtherNode);
    assert_eq!(check.ready(), vec![]);
    let effects = check.logged(log);
    assert_eq!(effects[0], answer(7, 1, outcome));
    assert_eq!(effects[1], inquiry_answer(2, vec![(1, outcome, 0)]));
}

#[test]
fn this_nodes_own_inquiry_never_forces_an_abort() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .inquiry(InquiryToken(1), vec![1], Asker::ThisNode);
    assert_eq!(check.ready(), vec![inquiry_answer(1, vec![])]);
    check.both_vote_yes(0, 1);
    let (_, decisions, _) = log_of(&check.ready());
    assert_eq!(decisions[0].outcome, COMMITTED);
}

#[test]
fn an_inquiry_joining_a_look_up_makes_the_retried_transfer_abort() {
    let mut check = Check::new();
    check.core.transfer(ClientToken(7), request(1, TWO));
    check
        .core
        .inquiry(InquiryToken(1), vec![1], Asker::OtherNode);
    assert_eq!(check.ready(), vec![Effect::LookUp { ids: vec![1] }]);
    check.core.looked_up(1, Ok(Known::Nothing));
    let effects = check.ready();
    assert_eq!(effects[0], inquiry_answer(1, vec![]));
    check.both_vote_yes(0, 1);
    let (_, decisions, _) = log_of(&check.ready());
    assert_eq!(decisions[0].outcome, aborted(AbortReason::Timeout));
}

#[test]
fn a_failed_decision_log_answers_with_the_failure_and_sends_nothing() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check.both_vote_yes(0, 1);
    let (log, _, _) = log_of(&check.ready());
    check
        .core
        .decisions_logged(log, check.now, Err(engine_failure()));
    let effects = check.ready();
    assert_eq!(refusal(&effects).len(), 1);
    assert_eq!(effects.len(), 1, "no decision is sent: none is durable");
    assert_eq!(check.core.unended_count(), 0);
    assert_eq!(check.core.in_flight_count(), 0);
}

#[test]
fn a_failed_local_prepare_decides_nothing() {
    let mut check = Check::new();
    check.start(7, request(1, TWO), Known::Nothing);
    check
        .core
        .votes(BatchId(0), TWO, Ok((vec![(1, Vote::Yes)], 0)));
    check
        .core
        .votes(BatchId(0), ME, Err(VoteFailure::Storage(engine_failure())));
    let effects = check.ready();
    assert_eq!(refusal(&effects).len(), 1);
    assert_eq!(effects.len(), 1, "no decision is logged");
    assert_eq!(check.core.in_flight_count(), 0);
}

#[test]
fn batches_form_from_whatever_queued_while_the_slots_were_busy() {
    let limits = CoordinatorLimits {
        batches_in_flight_max: 1,
        batch_transfers_max: 2,
        ..CoordinatorLimits::default()
    };
    let mut check = Check::with(limits, Vec::new());
    check.start(1, request(1, TWO), Known::Nothing);
    for id in 2..=4 {
        assert_eq!(
            check.start(id as u64, request(id, TWO), Known::Nothing),
            vec![]
        );
    }
    check.both_vote_yes(0, 1);
    let (log, _, _) = log_of(&check.ready());
    let effects = check.logged(log);
    // The slot frees when the decision is durable: the next batch takes the queue, up to two.
    assert!(effects.contains(&prepare(1, ME, &[2, 3])));
    assert!(effects.contains(&prepare(1, TWO, &[2, 3])));
}

#[test]
fn one_prepare_per_participant_per_batch() {
    let mut check = Check::new();
    for (id, node) in [(1, TWO), (2, THREE), (3, TWO)] {
        check
            .core
            .transfer(ClientToken(id as u64), request(id, node));
    }
    check.ready();
    for id in 1..=3 {
        check.core.looked_up(id, Ok(Known::Nothing));
    }
    assert_eq!(
        check.ready(),
        vec![
            prepare(0, ME, &[1, 2, 3]),
            prepare(0, TWO, &[1, 3]),
            prepare(0, THREE, &[2])
        ]
    );
}

#[test]
fn unacknowledged_decisions_are_resent_with_backoff() {
    let limits = CoordinatorLimits::default();
    let restarted = vec![decision(1, COMMITTED, vec![TWO])];
    let mut check = Check::with(limits.clone(), restarted);
    let send = |delivery| Effect::SendDecisions {
        delivery: DeliveryId(delivery),
        participant: TWO,
        decisions: vec![(1, COMMITTED, 0)],
    };
    assert_eq!(
        check.ready(),
        vec![send(0)],
        "resent at once after a restart"
    );
    check.core.delivered(DeliveryId(0), vec![]);
    let first = limits.resend_interval_min;
    assert_eq!(check.core.next_deadline(), Some(Time::ZERO + first));
    check.now = Time::ZERO + (first - Duration::from_millis(1));
    assert_eq!(check.ready(), vec![]);
    check.now = Time::ZERO + first;
    assert_eq!(check.ready(), vec![send(1)]);
    check.core.delivered(DeliveryId(1), vec![]);
    assert_eq!(
        check.core.next_deadline(),
        Some(Time::ZERO + first + first * 2),
        "the interval doubles"
    );
    check.now = Time::ZERO + first * 3;
    assert_eq!(check.ready(), vec![send(2)]);
    check.core.delivered(DeliveryId(2), vec![1]);
    assert_eq!(check.ready(), vec![Effect::LogEnded { ids: vec![1] }]);
    assert_eq!(check.core.next_deadline(), None);
}

#[test]
fn deliveries_in_flight_are_bounded() {
    let limits = CoordinatorLimits {
        deliveries_in_flight_max: 1,
        ..CoordinatorLimits::default()
    };
    let restarted = vec![
        decision(1, COMMITTED, vec![TWO]),
        decision(2, COMMITTED, vec![THREE]),
    ];
    let mut check = Check::with(limits, restarted);
    let effects = check.ready();
    assert_eq!(effects.len(), 1);
    assert_eq!(
        check.core.next_deadline(),
        None,
        "nothing to do until a delivery ends"
    );
    check.core.delivered(DeliveryId(0), vec![1]);
    let effects = check.ready();
    assert_eq!(
        effects[0],
        Effect::SendDecisions {
            delivery: DeliveryId(1),
            participant: THREE,
            decisions: vec![(2, COMMITTED, 0)]
        }
    );
}

#[test]
fn a_participant_with_a_full_backlog_refuses_new_transfers_that_need_it() {
    let limits = CoordinatorLimits {
        unended_per_participant_max: 1,
        ..CoordinatorLimits::default()
    };
    let mut check = Check::with(limits, vec![decision(1, COMMITTED, vec![TWO])]);
    check.ready();
    check.core.transfer(ClientToken(7), request(2, TWO));
    assert_eq!(
        refusal(&check.ready()),
        vec![(7, "ParticipantBacklog(2)".into())]
    );
    check.core.transfer(ClientToken(8), request(3, THREE));
    assert_eq!(check.ready(), vec![Effect::LookUp { ids: vec![3] }]);
    // Once acknowledged, node 2 takes transfers again.
    check.core.delivered(DeliveryId(0), vec![1]);
    check.core.transfer(ClientToken(9), request(4, TWO));
    let effects = check.ready();
    assert!(effects.contains(&Effect::LookUp { ids: vec![4] }));
}

#[test]
fn in_flight_transfers_are_bounded() {
    let limits = CoordinatorLimits {
        in_flight_transfers_max: 2,
        ..CoordinatorLimits::default()
    };
    let mut check = Check::with(limits, Vec::new());
    for id in 1..=3 {
        check
            .core
            .transfer(ClientToken(id as u64), request(id, TWO));
    }
    let effects = check.ready();
    assert_eq!(refusal(&effects), vec![(3, "Overloaded".into())]);
    // An inquiry past the bound leaves its ids out, to be asked again.
    check
        .core
        .inquiry(InquiryToken(1), vec![9], Asker::OtherNode);
    assert_eq!(check.ready(), vec![inquiry_answer(1, vec![])]);
}

#[test]
#[should_panic(expected = "a decision is never changed")]
fn a_decision_is_never_changed() {
    let mut check = Check::with(
        CoordinatorLimits::default(),
        vec![decision(1, COMMITTED, vec![TWO])],
    );
    check.core.add_unended(
        &decision(1, aborted(AbortReason::Timeout), vec![TWO]),
        Time::ZERO,
    );
}
