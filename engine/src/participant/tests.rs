//! The participant core, event by event: each state, each answer, and the orders that matter
//! (a decision racing its own PREPARED, a resend, a decision from another coordinator).

use super::*;
use crate::model::OperationKind;

const ME: NodeId = 1;
const OTHER: NodeId = 2;

fn transaction(id: TransferId) -> PreparedTransaction {
    PreparedTransaction {
        id,
        coordinator: ME,
        operations: vec![Operation {
            account: 10,
            kind: OperationKind::Debit,
            amount: 5,
            counterparty: 20,
        }],
    }
}

fn aborted() -> Outcome {
    Outcome::Aborted(AbortReason::InsufficientFunds)
}

/// A participant holding `id` prepared at LSN `lsn`, not yet applied, with lock owner 100 + id.
fn preparing(id: TransferId, lsn: Lsn) -> Participant {
    let mut participant = Participant::default();
    participant.begin_prepare(transaction(id), 100 + id);
    participant.prepares_logged(&[id], lsn);
    participant
}

fn prepared(id: TransferId, lsn: Lsn) -> Participant {
    let mut participant = preparing(id, lsn);
    assert!(participant.applied(lsn).is_empty());
    participant
}

fn logged_decision(participant: &mut Participant, id: TransferId, outcome: Outcome, lsn: Lsn) {
    match participant.decide(id, outcome, Some(ME)) {
        Decide::Log { record, .. } => assert_eq!(record, decision_record(id, outcome)),
        other => panic!("expected a record to log, got {other:?}"),
    }
    participant.decisions_logged(&[(id, lsn)]);
}

#[test]
fn a_yes_waits_for_its_prepared_then_is_in_doubt() {
    let mut participant = preparing(7, 3);
    assert_eq!(
        participant.vote_again(&transaction(7)),
        Some(Answer {
            answer: Vote::Yes,
            wait_for: Some(3)
        })
    );
    assert_eq!(
        participant.status(7),
        None,
        "not durable: nobody may hear of it"
    );
    assert!(participant.in_doubt().is_empty());
    assert_eq!(participant.durably_known(7, 2), Some(false));
    assert_eq!(participant.durably_known(7, 3), Some(true));

    assert!(participant.applied(2).is_empty());
    assert_eq!(participant.status(7), None);
    assert!(
        participant.applied(3).is_empty(),
        "a prepare keeps its locks"
    );
    assert_eq!(
        participant.vote_again(&transaction(7)),
        Some(Answer {
            answer: Vote::Yes,
            wait_for: None
        })
    );
    assert_eq!(participant.in_doubt(), vec![transaction(7)]);
    assert_eq!(
        participant.status(7),
        Some(Status::Prepared(&transaction(7)))
    );
    assert_eq!(participant.undecided_count(), 1);
}

#[test]
fn a_reused_id_votes_no() {
    let participant = prepared(7, 3);
    let mut other_operations = transaction(7);
    other_operations.operations[0].amount = 6;
    let mut other_coordinator = transaction(7);
    other_coordinator.coordinator = OTHER;
    for request in [other_operations, other_coordinator] {
        assert_eq!(
            participant.vote_again(&request),
            Some(Answer {
                answer: Vote::No(AbortReason::InvalidRequest),
                wait_for: None
            })
        );
    }
    assert_eq!(participant.vote_again(&transaction(8)), None);
}

#[test]
fn a_commit_is_applied_then_forgotten_with_its_locks() {
    let mut participant = prepared(7, 3);
    logged_decision(&mut participant, 7, Outcome::Committed, 9);
    assert!(participant.in_doubt().is_empty());
    assert_eq!(
        participant.status(7),
        Some(Status::Decided {
            operations: &transaction(7).operations,
            outcome: Outcome::Committed
        })
    );
    // A resent PREPARE of a committed transaction is a yes, once the commit is applied.
    assert_eq!(
        participant.vote_again(&transaction(7)),
        Some(Answer {
            answer: Vote::Yes,
            wait_for: Some(9)
        })
    );
    assert!(participant.applied(8).is_empty());
    assert_eq!(participant.applied(9), vec![107]);
    assert!(!participant.holds(7));
    assert_eq!(participant.undecided_count(), 0);
}

#[test]
fn a_decision_is_never_changed() {
    let mut participant = prepared(7, 3);
    logged_decision(&mut participant, 7, Outcome::Committed, 9);
    assert_eq!(
        participant.decide(7, aborted(), Some(ME)),
        Decide::Answered(Answer {
            answer: Err(Disagreement::AlreadyCommitted),
            wait_for: Some(9)
        })
    );
    assert_eq!(
        participant.decide(7, Outcome::Committed, Some(ME)),
        Decide::Answered(Answer {
            answer: Ok(()),
            wait_for: Some(9)
        })
    );

    let mut participant = prepared(7, 3);
    logged_decision(&mut participant, 7, aborted(), 9);
    assert_eq!(
        participant.decide(7, Outcome::Committed, None),
        Decide::Answered(Answer {
            answer: Err(Disagreement::AlreadyAborted),
            wait_for: Some(9)
        })
    );
    assert_eq!(
        participant.vote_again(&transaction(7)),
        Some(Answer {
            answer: Vote::No(AbortReason::InsufficientFunds),
            wait_for: None
        })
    );
}

#[test]
fn a_decision_from_another_coordinator_changes_nothing() {
    let mut participant = prepared(7, 3);
    assert_eq!(
        participant.decide(7, Outcome::Committed, Some(OTHER)),
        Decide::Answered(Answer {
            answer: Err(Disagreement::NotPrepared),
            wait_for: None
        })
    );
    assert_eq!(
        participant.decide(7, aborted(), Some(OTHER)),
        Decide::Answered(Answer {
            answer: Ok(()),
            wait_for: None
        })
    );
    assert_eq!(participant.in_doubt(), vec![transaction(7)]);
}

#[test]
fn an_abort_of_an_unknown_transaction_holds_a_placeholder_until_applied() {
    let mut participant = Participant::default();
    assert_eq!(participant.decide(7, aborted(), Some(ME)), Decide::NotHeld);
    assert!(matches!(
        participant.decide_unheld(7, aborted(), Some(ME), None),
        Decide::Log { .. }
    ));
    participant.decisions_logged(&[(7, 4)]);
    // A PREPARE arriving late is refused, whatever it carries.
    assert_eq!(
        participant
            .vote_again(&transaction(7))
            .map(|answer| answer.answer),
        Some(Vote::No(AbortReason::InsufficientFunds))
    );
    assert_eq!(
        participant.undecided_count(),
        0,
        "a placeholder is no transaction"
    );
    assert!(participant.in_doubt().is_empty());
    assert!(
        participant.applied(4).is_empty(),
        "a placeholder holds no locks"
    );
    assert!(!participant.holds(7));
}

#[test]
fn decisions_on_unheld_ids_answer_from_the_tables() {
    let mut participant = Participant::default();
    let answered = |answer| {
        Decide::Answered(Answer {
            answer,
            wait_for: None,
        })
    };
    assert_eq!(
        participant.decide_unheld(7, Outcome::Committed, Some(ME), None),
        answered(Err(Disagreement::NotPrepared))
    );
    assert_eq!(
        participant.decide_unheld(7, Outcome::Committed, Some(ME), Some(aborted())),
        answered(Err(Disagreement::AlreadyAborted))
    );
    assert_eq!(
        participant.decide_unheld(7, aborted(), Some(ME), Some(Outcome::Committed)),
        answered(Err(Disagreement::AlreadyCommitted))
    );
    assert_eq!(
        participant.decide_unheld(7, Outcome::Committed, None, Some(Outcome::Committed)),
        answered(Ok(()))
    );
    assert!(!participant.holds(7));
}

#[test]
fn an_unlogged_decision_is_taken_back() {
    let mut participant = prepared(7, 3);
    let Decide::Log { undo, .. } = participant.decide(7, Outcome::Committed, None) else {
        panic!("expected a record to log");
    };
    let Decide::Log {
        undo: placeholder, ..
    } = participant.decide_unheld(8, aborted(), None, None)
    else {
        panic!("expected a record to log");
    };
    participant.undo(&[undo, placeholder]);
    assert_eq!(participant.in_doubt(), vec![transaction(7)]);
    assert!(!participant.holds(8));
    // Decidable again.
    logged_decision(&mut participant, 7, aborted(), 5);
    assert_eq!(participant.applied(5), vec![107]);
}

#[test]
fn an_unlogged_abort_of_a_prepare_not_yet_durable_leaves_it_waiting() {
    let mut participant = preparing(7, 3);
    let Decide::Log { undo, .. } = participant.decide(7, aborted(), None) else {
        panic!("expected a record to log");
    };
    participant.undo(&[undo]);
    assert!(
        participant.in_doubt().is_empty(),
        "not durable yet: not in doubt"
    );
    assert_eq!(
        participant.vote_again(&transaction(7)),
        Some(Answer {
            answer: Vote::Yes,
            wait_for: Some(3)
        })
    );
    assert!(participant.applied(3).is_empty());
    assert_eq!(participant.in_doubt(), vec![transaction(7)]);
}

#[test]
fn an_abort_may_overtake_its_own_prepared() {
    let mut participant = preparing(7, 3);
    logged_decision(&mut participant, 7, aborted(), 4);
    assert!(
        participant.applied(3).is_empty(),
        "the PREPARED alone frees nothing"
    );
    assert!(participant.in_doubt().is_empty());
    assert_eq!(participant.applied(4), vec![107]);
    assert!(!participant.holds(7));
}

#[test]
#[should_panic(expected = "before its PREPARED was durable")]
fn a_commit_before_the_prepared_is_durable_is_a_bug() {
    let mut participant = preparing(7, 3);
    let _ = participant.decide(7, Outcome::Committed, None);
}

#[test]
fn prepares_not_logged_are_forgotten_with_their_locks() {
    let mut participant = Participant::default();
    participant.begin_prepare(transaction(7), 107);
    participant.begin_prepare(transaction(8), 108);
    assert_eq!(
        participant.vote_again(&transaction(8)),
        Some(Answer {
            answer: Vote::Yes,
            wait_for: None
        }),
        "a duplicate within the batch waits for the batch"
    );
    assert_eq!(participant.forget_prepares(&[7, 8]), vec![107, 108]);
    assert!(!participant.holds(7) && !participant.holds(8));
}

#[test]
fn restored_transactions_are_in_doubt_and_decidable() {
    let mut participant = Participant::default();
    participant.restore(transaction(7), 107);
    assert_eq!(participant.in_doubt(), vec![transaction(7)]);
    assert_eq!(participant.durably_known(7, 0), Some(true));
    logged_decision(&mut participant, 7, Outcome::Committed, 12);
    assert_eq!(participant.applied(12), vec![107]);
}
