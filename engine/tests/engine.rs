//! Engine tests over the in-memory WAL storage and tables: concurrency, crash-restart, errors,
//! the 2PC participant's message handling. Randomized tests print their seed; `TALLY_SEED=N`
//! replays one.

use engine::testing::test_seed;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::model::{
    AbortReason, AccountId, MovementId, MovementKind, MovementOutcome, Operation, OperationKind,
    Outcome, RefusalReason, TransferId,
};
use engine::record::Record;
use engine::tables::{MemoryTables, Tables};
use engine::wal::{CrashMode, MemoryStorage, Wal, WalOptions};
use engine::{
    CreateAccountError, Disagreement, Engine, EngineOptions, LocalTransferError, MovementError,
    PrepareRequest, ReadError, StorageCause, StorageError, TransferStatus, Vote, plan_batch,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type TestEngine = Engine<MemoryTables, Wal<MemoryStorage>>;

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 16 * 1024,
        ..WalOptions::default()
    }
}

fn open(storage: &MemoryStorage, tables: &MemoryTables, lock_wait: Duration) -> TestEngine {
    let (wal, _) = Wal::open(storage.clone(), wal_options()).expect("open WAL");
    let options = EngineOptions {
        lock_wait,
        ..EngineOptions::default()
    };
    Engine::open(wal, tables.clone(), options)
        .expect("open engine")
        .0
}

fn fresh() -> (MemoryStorage, MemoryTables, TestEngine) {
    let storage = MemoryStorage::new();
    let tables = MemoryTables::new();
    let engine = open(&storage, &tables, Duration::ZERO);
    (storage, tables, engine)
}

/// A fresh deposit or withdrawal id, from `1 << 100` up: clear of the small ids the tests give
/// transfers, since one shard keeps one namespace for both.
fn new_movement_id() -> MovementId {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    (1 << 100) + u128::from(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Deposits `amount` into `account` under a fresh id; returns the balance after it.
fn fund(engine: &TestEngine, account: AccountId, amount: u64) -> u64 {
    match engine.deposit(new_movement_id(), account, amount).unwrap() {
        MovementOutcome::Applied { balance_after, .. } => balance_after,
        refused => panic!("deposit of {amount} into account {account}: {refused:?}"),
    }
}

fn applied(outcome: &Result<MovementOutcome, MovementError>) -> bool {
    matches!(outcome, Ok(MovementOutcome::Applied { .. }))
}

fn debit(account: AccountId, amount: u64) -> Operation {
    Operation {
        account,
        kind: OperationKind::Debit,
        amount,
        counterparty: 9_000 + account,
    }
}

fn credit(account: AccountId, amount: u64) -> Operation {
    Operation {
        account,
        kind: OperationKind::Credit,
        amount,
        counterparty: 9_000 + account,
    }
}

fn prepare_one(engine: &TestEngine, id: TransferId, operation: Operation) -> Vote {
    engine
        .prepare(&[PrepareRequest {
            id,
            coordinator: 2,
            operations: vec![operation],
        }])
        .unwrap()[0]
}

#[test]
fn concurrent_random_operations_conserve_money_and_replay_to_the_same_state() {
    let seed = test_seed("concurrent_random_operations");
    let (storage, tables, engine) = fresh();
    let accounts: Vec<AccountId> = (1..=4).collect();
    for &account in &accounts {
        engine.create_account(account, Some("hot"), 0, 1).unwrap();
        fund(&engine, account, 1_000);
    }
    let engine = Arc::new(engine);
    let deposited = Arc::new(AtomicU64::new(4_000));
    let withdrawn = Arc::new(AtomicU64::new(0));
    let credited = Arc::new(AtomicU64::new(0));
    let debited = Arc::new(AtomicU64::new(0));
    let next_id = Arc::new(AtomicU64::new(1));
    let threads: Vec<_> = (0..4)
        .map(|thread| {
            let (engine, deposited, withdrawn, credited, debited, next_id) = (
                engine.clone(),
                deposited.clone(),
                withdrawn.clone(),
                credited.clone(),
                debited.clone(),
                next_id.clone(),
            );
            let accounts = accounts.clone();
            std::thread::spawn(move || {
                let mut random = StdRng::seed_from_u64(seed.wrapping_add(thread));
                for _ in 0..300 {
                    let account = accounts[random.random_range(0..accounts.len())];
                    let amount = random.random_range(1..200);
                    match random.random_range(0..5) {
                        0 => {
                            let id = u128::from(next_id.fetch_add(1, Ordering::SeqCst));
                            if applied(&engine.deposit(id, account, amount)) {
                                deposited.fetch_add(amount, Ordering::SeqCst);
                            }
                        }
                        1 => {
                            let id = u128::from(next_id.fetch_add(1, Ordering::SeqCst));
                            if applied(&engine.withdraw(id, account, amount)) {
                                withdrawn.fetch_add(amount, Ordering::SeqCst);
                            }
                        }
                        2 => {
                            let other = accounts[random.random_range(0..accounts.len())];
                            let id = u128::from(next_id.fetch_add(1, Ordering::SeqCst));
                            let _ = engine.local_transfer(id, account, other, amount);
                        }
                        _ => {
                            let id = u128::from(next_id.fetch_add(1, Ordering::SeqCst));
                            let is_debit = random.random_bool(0.5);
                            let operation = if is_debit {
                                debit(account, amount)
                            } else {
                                credit(account, amount)
                            };
                            if prepare_one(&engine, id, operation) == Vote::Yes {
                                if random.random_bool(0.7) {
                                    engine.commit(&[id]).unwrap()[0].as_ref().unwrap();
                                    let counter = if is_debit { &debited } else { &credited };
                                    counter.fetch_add(amount, Ordering::SeqCst);
                                } else {
                                    engine.abort(&[(id, AbortReason::Timeout)]).unwrap();
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let audit = engine.audit().unwrap();
    let expected = u128::from(deposited.load(Ordering::SeqCst))
        + u128::from(credited.load(Ordering::SeqCst))
        - u128::from(withdrawn.load(Ordering::SeqCst))
        - u128::from(debited.load(Ordering::SeqCst));
    assert_eq!(audit.balance_sum, expected, "seed {seed}");
    assert!(audit.is_balanced(), "seed {seed}: {audit:?}");
    assert_eq!(
        audit.totals.deposited,
        u128::from(deposited.load(Ordering::SeqCst))
    );
    assert_eq!(audit.in_doubt, 0);
    drop(engine);

    // The final state equals replaying the whole WAL into empty tables.
    let replayed = MemoryTables::new();
    let engine = open(&storage, &replayed, Duration::ZERO);
    assert!(
        replayed.same_state_as(&tables),
        "seed {seed}: replay differs from the live state"
    );
    assert_eq!(engine.audit().unwrap().balance_sum, expected);
}

/// What the test expects the shard to hold: only acknowledged operations.
#[derive(Default, Clone, Debug, PartialEq)]
struct Model {
    balances: BTreeMap<AccountId, u64>,
    outcomes: BTreeMap<TransferId, Outcome>,
    in_doubt: BTreeMap<TransferId, Operation>,
}

impl Model {
    fn check(&self, engine: &TestEngine, context: &str) {
        for (&account, &balance) in &self.balances {
            assert_eq!(
                engine.balance(account).unwrap(),
                balance,
                "{context}: account {account}"
            );
        }
        for (&id, &outcome) in &self.outcomes {
            match engine.transfer_status(id).unwrap() {
                TransferStatus::Decided(record) => {
                    assert_eq!(record.outcome, outcome, "{context}: {id}")
                }
                other => panic!("{context}: transfer {id} is {other:?}"),
            }
        }
        let in_doubt: Vec<TransferId> = engine
            .in_doubt()
            .iter()
            .map(|transaction| transaction.id)
            .collect();
        assert_eq!(
            in_doubt,
            self.in_doubt.keys().copied().collect::<Vec<_>>(),
            "{context}: in doubt"
        );
        let audit = engine.audit().unwrap();
        assert!(audit.is_balanced(), "{context}: {audit:?}");
        assert_eq!(
            audit.balance_sum,
            self.balances.values().map(|&b| u128::from(b)).sum::<u128>(),
            "{context}"
        );
    }
}

/// One random operation; updates the model only when the engine acknowledged it. Returns false
/// once the engine reports a storage failure.
fn random_step(
    engine: &TestEngine,
    model: &mut Model,
    random: &mut StdRng,
    next_id: &mut TransferId,
) -> bool {
    let accounts: Vec<AccountId> = model.balances.keys().copied().collect();
    let account = accounts[random.random_range(0..accounts.len())];
    let amount = random.random_range(1..300);
    fn failed(error: &impl StorageCause) -> bool {
        matches!(error.storage(), Some(StorageError::Failed(_)))
    }
    match random.random_range(0..6) {
        0 => {
            *next_id += 1;
            match engine.deposit(*next_id, account, amount) {
                Ok(MovementOutcome::Applied { balance_after, .. }) => {
                    *model.balances.get_mut(&account).unwrap() += amount;
                    assert_eq!(balance_after, model.balances[&account]);
                }
                Ok(refused) => panic!("deposit refused: {refused:?}"),
                Err(error) => {
                    return !failed(&error)
                        && !matches!(error.storage(), Some(StorageError::Wal(_)));
                }
            }
        }
        1 => {
            *next_id += 1;
            match engine.withdraw(*next_id, account, amount) {
                Ok(MovementOutcome::Applied { .. }) => {
                    *model.balances.get_mut(&account).unwrap() -= amount
                }
                Ok(_) => {}
                Err(error) => return !failed(&error),
            }
        }
        2 => {
            let other = accounts[random.random_range(0..accounts.len())];
            if other == account {
                return true;
            }
            *next_id += 1;
            match engine.local_transfer(*next_id, account, other, amount) {
                Ok(outcome) => {
                    if outcome == Outcome::Committed {
                        *model.balances.get_mut(&account).unwrap() -= amount;
                        *model.balances.get_mut(&other).unwrap() += amount;
                    }
                    model.outcomes.insert(*next_id, outcome);
                }
                Err(error) => return !failed(&error),
            }
        }
        3 | 4 => {
            if model
                .in_doubt
                .values()
                .any(|operation| operation.account == account)
            {
                return true;
            }
            *next_id += 1;
            let operation = if random.random_bool(0.5) {
                debit(account, amount)
            } else {
                credit(account, amount)
            };
            match engine.prepare(&[PrepareRequest {
                id: *next_id,
                coordinator: 3,
                operations: vec![operation],
            }]) {
                Ok(votes) => {
                    if votes[0] == Vote::Yes {
                        model.in_doubt.insert(*next_id, operation);
                    }
                }
                Err(error) => return !failed(&error),
            }
        }
        _ => {
            let Some((&id, &operation)) = model.in_doubt.iter().next() else {
                return true;
            };
            let commit = random.random_bool(0.5);
            let result = if commit {
                engine.commit(&[id])
            } else {
                engine.abort(&[(id, AbortReason::LockConflict)])
            };
            match result {
                Ok(results) => {
                    results[0].as_ref().unwrap();
                    model.in_doubt.remove(&id);
                    if commit {
                        let balance = model.balances.get_mut(&operation.account).unwrap();
                        match operation.kind {
                            OperationKind::Debit => *balance -= operation.amount,
                            OperationKind::Credit => *balance += operation.amount,
                        }
                        model.outcomes.insert(id, Outcome::Committed);
                    } else {
                        model
                            .outcomes
                            .insert(id, Outcome::Aborted(AbortReason::LockConflict));
                    }
                }
                Err(error) => return !failed(&error),
            }
        }
    }
    true
}

#[test]
fn restarts_at_random_points_recover_exactly_what_was_acknowledged() {
    let seed = test_seed("restarts");
    let mut random = StdRng::seed_from_u64(seed);
    let mut storage = MemoryStorage::new();
    let mut tables = MemoryTables::new();
    let mut engine = open(&storage, &tables, Duration::ZERO);
    let mut model = Model::default();
    for account in 1..=5 {
        engine.create_account(account, None, 0, 0).unwrap();
        fund(&engine, account, 500);
        model.balances.insert(account, 500);
    }
    let mut next_id: TransferId = 0;
    for restart in 0..60 {
        // Sometimes a sync or write fails part way through an operation: the engine must stop
        // taking writes, and what it acknowledged must survive.
        let injected = random.random_bool(0.4);
        if injected {
            if random.random_bool(0.5) {
                storage.fail_sync_after(random.random_range(1..8));
            } else {
                storage.fail_write_after(random.random_range(1..8));
            }
        }
        for _ in 0..random.random_range(1..40) {
            if random.random_bool(0.05) {
                let _ = engine.checkpoint();
            }
            if !random_step(&engine, &mut model, &mut random, &mut next_id) {
                assert!(injected, "seed {seed}: storage failure without injection");
                // Sticky: every later write is refused too.
                assert!(
                    matches!(
                        engine.deposit(new_movement_id(), 1, 1),
                        Err(MovementError::Storage(StorageError::Failed(_)))
                    ),
                    "seed {seed}"
                );
                break;
            }
        }
        let crashed_storage = storage.crash(CrashMode::DropUnsynced);
        let crashed_tables = tables.crash();
        drop(engine);
        storage = crashed_storage;
        tables = crashed_tables;
        engine = open(&storage, &tables, Duration::ZERO);
        let context = format!("seed {seed} restart {restart}");
        model.check(&engine, &context);
        // In-doubt transactions hold their locks again: a consistent read of their account
        // waits for them.
        if let Some((_, operation)) = model.in_doubt.iter().next() {
            let fence = engine.read_fence(None);
            assert!(
                !engine.fence_settled(&fence, Some(&[operation.account])),
                "{context}"
            );
        }
    }
}

#[test]
fn a_torn_crash_keeps_acknowledged_state() {
    let seed = test_seed("torn_crash");
    let mut random = StdRng::seed_from_u64(seed);
    for round in 0..20 {
        let (storage, tables, engine) = fresh();
        let mut model = Model::default();
        for account in 1..=3 {
            engine.create_account(account, None, 0, 0).unwrap();
            model.balances.insert(account, 0);
        }
        let mut next_id = 0;
        for _ in 0..random.random_range(1..50) {
            assert!(random_step(&engine, &mut model, &mut random, &mut next_id));
        }
        let crashed = storage.crash(CrashMode::KeepUnsyncedPrefix {
            seed: random.random(),
        });
        let crashed_tables = tables.crash();
        drop(engine);
        let engine = open(&crashed, &crashed_tables, Duration::ZERO);
        model.check(&engine, &format!("seed {seed} round {round}"));
    }
}

#[test]
fn every_error_case_is_typed_and_changes_nothing() {
    let (_, _, engine) = fresh();
    engine.create_account(1, Some("Ada"), 7, 10).unwrap();
    engine.create_account(2, None, 0, 10).unwrap();
    fund(&engine, 1, 100);
    let snapshot = |engine: &TestEngine| {
        (
            engine.balance(1).unwrap(),
            engine.balance(2).unwrap(),
            engine.wal().next_lsn(),
            engine.audit().unwrap(),
        )
    };
    let start = snapshot(&engine);

    assert!(matches!(
        engine.create_account(1, Some("Bob"), 7, 11),
        Err(CreateAccountError::AccountExists(1))
    ));
    assert!(matches!(
        engine.create_account(1, Some("Ada"), 8, 11),
        Err(CreateAccountError::AccountExists(1))
    ));
    assert!(matches!(
        engine.create_account(3, Some(&"x".repeat(65)), 0, 11),
        Err(CreateAccountError::OwnerNameTooLong)
    ));
    assert!(matches!(
        engine.deposit(new_movement_id(), 1, 0),
        Err(MovementError::ZeroAmount)
    ));
    assert!(matches!(
        engine.withdraw(new_movement_id(), 1, 0),
        Err(MovementError::ZeroAmount)
    ));
    assert!(matches!(
        engine.local_transfer(1, 1, 2, 0),
        Err(LocalTransferError::ZeroAmount)
    ));
    assert!(matches!(
        engine.local_transfer(1, 1, 1, 5),
        Err(LocalTransferError::SameAccount(1))
    ));
    assert!(matches!(
        engine.balance(9),
        Err(ReadError::UnknownAccount(9))
    ));
    assert!(matches!(
        engine.history(1, None, 0),
        Err(ReadError::InvalidPageSize)
    ));
    assert!(matches!(
        engine.history(1, None, 1001),
        Err(ReadError::InvalidPageSize)
    ));
    assert!(matches!(
        engine.history(9, None, 10),
        Err(ReadError::UnknownAccount(9))
    ));
    assert!(matches!(
        engine.commit(&[77]).unwrap()[0],
        Err(Disagreement::NotPrepared)
    ));
    assert_eq!(snapshot(&engine), start, "a refused request changed state");

    // Identical re-creation is the same success and logs nothing.
    engine.create_account(1, Some("Ada"), 7, 99).unwrap();
    assert_eq!(snapshot(&engine), start);

    // State-dependent refusals of a deposit or withdrawal are its recorded outcome too.
    for (kind, account, amount, reason) in [
        (MovementKind::Deposit, 9, 5, RefusalReason::UnknownAccount),
        (MovementKind::Deposit, 1, u64::MAX, RefusalReason::Overflow),
        (
            MovementKind::Withdrawal,
            9,
            5,
            RefusalReason::UnknownAccount,
        ),
        (
            MovementKind::Withdrawal,
            1,
            101,
            RefusalReason::InsufficientFunds,
        ),
    ] {
        assert_eq!(
            engine
                .move_money(new_movement_id(), account, kind, amount)
                .unwrap(),
            MovementOutcome::Refused(reason)
        );
    }
    assert_eq!(
        (engine.balance(1).unwrap(), engine.balance(2).unwrap()),
        (100, 0)
    );

    // State-dependent refusals of a transfer are its recorded outcome; balances stay put.
    assert_eq!(
        engine.local_transfer(10, 1, 2, 101).unwrap(),
        Outcome::Aborted(AbortReason::InsufficientFunds)
    );
    assert_eq!(
        engine.local_transfer(11, 1, 9, 5).unwrap(),
        Outcome::Aborted(AbortReason::UnknownAccount)
    );
    fund(&engine, 2, u64::MAX - 10);
    assert_eq!(
        engine.local_transfer(12, 1, 2, 50).unwrap(),
        Outcome::Aborted(AbortReason::Overflow)
    );
    assert_eq!(engine.balance(1).unwrap(), 100);
    // A retry gets the first outcome, even once it could succeed; other content is refused.
    fund(&engine, 1, 1_000);
    assert_eq!(
        engine.local_transfer(10, 1, 2, 101).unwrap(),
        Outcome::Aborted(AbortReason::InsufficientFunds)
    );
    assert!(matches!(
        engine.local_transfer(10, 1, 2, 102),
        Err(LocalTransferError::DuplicateWithDifferentContent(10))
    ));
}

#[test]
fn a_transfer_is_applied_once_and_history_pages_newest_first() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    engine.create_account(2, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    for _ in 0..3 {
        assert_eq!(
            engine.local_transfer(5, 1, 2, 30).unwrap(),
            Outcome::Committed
        );
    }
    assert_eq!(
        (engine.balance(1).unwrap(), engine.balance(2).unwrap()),
        (70, 30)
    );
    for amount in 1..=25 {
        fund(&engine, 2, amount);
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine.history(2, cursor, 10).unwrap();
        seen.extend(page.entries.iter().map(|entry| (entry.lsn, entry.amount)));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 26);
    assert!(
        seen.windows(2).all(|pair| pair[0].0 > pair[1].0),
        "not newest first: {seen:?}"
    );
    assert_eq!(
        seen.last().unwrap().1,
        30,
        "the oldest entry is the transfer"
    );
}

#[test]
fn applying_records_twice_equals_applying_them_once() {
    let (storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    engine.create_account(2, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    engine.local_transfer(3, 1, 2, 40).unwrap();
    assert_eq!(prepare_one(&engine, 4, credit(2, 5)), Vote::Yes);
    engine.commit(&[4]).unwrap();
    let records: Vec<(u64, Record)> = engine
        .wal()
        .read_from(1)
        .unwrap()
        .map(|record| {
            let record = record.unwrap();
            (
                record.lsn,
                Record::decode(record.kind, &record.payload).unwrap(),
            )
        })
        .collect();
    drop(engine);

    // The same planned batch written once and written twice leaves the same state: batches
    // carry absolute values keyed by LSN, not deltas.
    let once = MemoryTables::new();
    let twice = MemoryTables::new();
    let batch = plan_batch(&once, &records).unwrap();
    once.write(&batch).unwrap();
    twice.write(&batch).unwrap();
    twice.write(&batch).unwrap();
    assert!(once.same_state_as(&twice));
    assert!(
        once.same_state_as(&tables),
        "one batch of the whole log equals the live state"
    );
    assert_eq!(once.account(2).unwrap().unwrap().balance, 45);

    // Reopening over tables that already reflect the log applies nothing again.
    let (wal, _) = Wal::open(storage.clone(), wal_options()).unwrap();
    let (engine, report) = Engine::open(wal, tables.clone(), EngineOptions::default()).unwrap();
    assert_eq!(report.records_replayed, 0);
    assert_eq!(engine.balance(2).unwrap(), 45);
    drop(engine);
    // And over tables that reflect only a prefix, replay finishes the job exactly once.
    let prefix = MemoryTables::new();
    prefix
        .write(&plan_batch(&prefix, &records[..3]).unwrap())
        .unwrap();
    let (wal, _) = Wal::open(storage, wal_options()).unwrap();
    let (_engine, report) = Engine::open(wal, prefix.clone(), EngineOptions::default()).unwrap();
    assert_eq!(report.records_replayed as usize, records.len() - 3);
    assert!(prefix.same_state_as(&tables));
}

#[test]
fn participant_messages_may_be_duplicated_late_or_reordered() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);

    // Duplicate prepare: same vote, one PREPARED record.
    assert_eq!(prepare_one(&engine, 1, debit(1, 30)), Vote::Yes);
    let lsn = engine.wal().next_lsn();
    assert_eq!(prepare_one(&engine, 1, debit(1, 30)), Vote::Yes);
    assert_eq!(engine.wal().next_lsn(), lsn);
    // Its locks and its reservation hold until the decision: a consistent read waits, and
    // only the funds not reserved can be debited.
    let fence = engine.read_fence(None);
    assert!(!engine.fence_settled(&fence, Some(&[1])));
    assert_eq!(
        prepare_one(&engine, 2, debit(1, 71)),
        Vote::No(AbortReason::FundsHeld)
    );
    assert_eq!(
        prepare_one(&engine, 3, debit(1, 101)),
        Vote::No(AbortReason::InsufficientFunds)
    );
    // Duplicate commit: OK, applied once.
    engine.commit(&[1]).unwrap()[0].as_ref().unwrap();
    engine.commit(&[1]).unwrap()[0].as_ref().unwrap();
    assert_eq!(engine.balance(1).unwrap(), 70);
    // A late prepare of a committed transaction changes nothing.
    assert_eq!(prepare_one(&engine, 1, debit(1, 30)), Vote::Yes);
    assert_eq!(engine.balance(1).unwrap(), 70);

    // Abort of an unknown transaction is OK and refuses its late prepare.
    engine.abort(&[(3, AbortReason::Timeout)]).unwrap()[0]
        .as_ref()
        .unwrap();
    assert_eq!(
        prepare_one(&engine, 3, debit(1, 10)),
        Vote::No(AbortReason::Timeout)
    );
    // Commit of an aborted one is an error; commit of an unknown one too.
    assert!(matches!(
        engine.commit(&[3]).unwrap()[0],
        Err(Disagreement::AlreadyAborted)
    ));
    assert!(matches!(
        engine.commit(&[4]).unwrap()[0],
        Err(Disagreement::NotPrepared)
    ));

    // Prepare votes no with the reason when validation fails; nothing stays locked.
    assert_eq!(
        prepare_one(&engine, 5, debit(1, 1_000)),
        Vote::No(AbortReason::InsufficientFunds)
    );
    assert_eq!(
        prepare_one(&engine, 6, debit(42, 1)),
        Vote::No(AbortReason::UnknownAccount)
    );
    assert_eq!(
        prepare_one(&engine, 7, debit(1, 0)),
        Vote::No(AbortReason::InvalidRequest)
    );
    assert!(applied(&engine.withdraw(new_movement_id(), 1, 1)));

    // A batch: one group commit for all of its PREPARED records. Credits and debits of one
    // account overlap.
    engine.create_account(2, None, 0, 0).unwrap();
    let groups = engine.wal().stats().groups_written;
    let votes = engine
        .prepare(&[
            PrepareRequest {
                id: 20,
                coordinator: 1,
                operations: vec![credit(1, 1)],
            },
            PrepareRequest {
                id: 21,
                coordinator: 1,
                operations: vec![credit(2, 1)],
            },
            PrepareRequest {
                id: 22,
                coordinator: 1,
                operations: vec![credit(2, 1)],
            },
            PrepareRequest {
                id: 23,
                coordinator: 1,
                operations: vec![debit(1, 1)],
            },
        ])
        .unwrap();
    assert_eq!(votes, vec![Vote::Yes; 4]);
    assert_eq!(engine.wal().stats().groups_written, groups + 1);
    assert_eq!(engine.in_doubt().len(), 4);
    engine
        .abort(&[
            (20, AbortReason::Timeout),
            (21, AbortReason::Timeout),
            (22, AbortReason::Timeout),
            (23, AbortReason::Timeout),
        ])
        .unwrap();
    assert!(engine.in_doubt().is_empty());
}

#[test]
fn a_failed_tables_write_is_sticky() {
    let (_, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    tables.fail_writes();
    assert!(matches!(
        engine.deposit(new_movement_id(), 1, 5),
        Err(MovementError::Storage(StorageError::Failed(_)))
    ));
    assert!(matches!(
        engine.deposit(new_movement_id(), 1, 5),
        Err(MovementError::Storage(StorageError::Failed(_)))
    ));
    assert_eq!(engine.balance(1).unwrap(), 0, "reads still answer");
}

/// A full disk is matchable: the kind of the I/O error survives into every later refusal, and a
/// failed sync is not mistaken for one. Reads still answer, without waiting for the locks of
/// writes that will never be applied.
#[test]
fn a_storage_failure_keeps_its_io_error_kind() {
    for (fail, expected) in [
        (
            MemoryStorage::fail_write_after as fn(&MemoryStorage, u64),
            std::io::ErrorKind::StorageFull,
        ),
        (MemoryStorage::fail_sync_after, std::io::ErrorKind::Other),
    ] {
        let (storage, _, engine) = fresh();
        engine.create_account(1, None, 0, 0).unwrap();
        fail(&storage, 1);
        let error = engine.deposit(new_movement_id(), 1, 5).unwrap_err();
        assert_eq!(error.io_kind(), Some(expected), "{error}");
        let later = engine.deposit(new_movement_id(), 1, 5).unwrap_err();
        assert!(
            matches!(later, MovementError::Storage(StorageError::Failed(_))),
            "{later}"
        );
        assert_eq!(later.io_kind(), Some(expected), "{later}");
        assert_eq!(engine.balance(1).unwrap(), 0);
        let fence = engine.read_fence(None);
        assert!(
            engine.fence_settled(&fence, Some(&[1])),
            "no lock left behind by the failed deposit"
        );
        assert_eq!(
            engine.balances_at(&[1], engine.clock_now()).unwrap(),
            vec![0]
        );
    }
}

#[test]
fn repeated_and_conflicting_decisions_in_one_batch_apply_once_and_the_log_reopens() {
    let (storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    assert_eq!(prepare_one(&engine, 1, debit(1, 30)), Vote::Yes);
    let results = engine.commit(&[1, 1]).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(engine.balance(1).unwrap(), 70);

    assert_eq!(prepare_one(&engine, 2, debit(1, 5)), Vote::Yes);
    // Commit and abort of one transaction: the decision taken first stands.
    engine.commit(&[2]).unwrap()[0].as_ref().unwrap();
    let results = engine
        .abort(&[(2, AbortReason::Timeout), (2, AbortReason::Timeout)])
        .unwrap();
    assert!(
        results
            .iter()
            .all(|result| *result == Err(Disagreement::AlreadyCommitted)),
        "{results:?}"
    );
    assert_eq!(engine.balance(1).unwrap(), 65);
    drop(engine);
    let engine = open(&storage, &tables, Duration::ZERO);
    assert_eq!(engine.balance(1).unwrap(), 65);
    assert!(engine.audit().unwrap().is_balanced());
}

#[test]
fn a_reused_id_with_other_operations_never_counts_as_prepared() {
    let (_, _, engine) = fresh();
    for account in 1..=3 {
        engine.create_account(account, None, 0, 0).unwrap();
        fund(&engine, account, 100);
    }
    // A committed local transfer's id, reused for a cross-shard debit of another account.
    assert_eq!(
        engine.local_transfer(7, 1, 2, 10).unwrap(),
        Outcome::Committed
    );
    assert_eq!(
        prepare_one(&engine, 7, debit(3, 10)),
        Vote::No(AbortReason::InvalidRequest)
    );
    // A prepared transaction's id, resent with other operations.
    assert_eq!(prepare_one(&engine, 8, debit(3, 10)), Vote::Yes);
    assert_eq!(
        prepare_one(&engine, 8, debit(3, 11)),
        Vote::No(AbortReason::InvalidRequest)
    );
    engine.commit(&[8]).unwrap()[0].as_ref().unwrap();
    // The committed one resent with the same operations is the same yes; other ones are not.
    assert_eq!(prepare_one(&engine, 8, debit(3, 10)), Vote::Yes);
    assert_eq!(
        prepare_one(&engine, 8, credit(3, 10)),
        Vote::No(AbortReason::InvalidRequest)
    );
    assert_eq!(engine.balance(3).unwrap(), 90);
}

fn decision(id: TransferId, outcome: Outcome) -> engine::model::CoordinatorDecision {
    engine::model::CoordinatorDecision {
        id,
        transfer: Some(engine::model::Transfer {
            debit: 1,
            credit: 2,
            amount: 5,
        }),
        outcome,
        participants: vec![1, 2],
        ended: false,
        commit_ts: 0,
    }
}

#[test]
fn coordinator_decisions_survive_a_crash_and_end_once_acknowledged() {
    let (storage, tables, engine) = fresh();
    engine
        .log_decisions(vec![
            decision(1, Outcome::Committed),
            decision(2, Outcome::Aborted(AbortReason::InsufficientFunds)),
            decision(3, Outcome::Committed),
        ])
        .unwrap();
    engine.end_decisions(&[2, 99]).unwrap();
    let unended: Vec<TransferId> = engine
        .unended_decisions()
        .unwrap()
        .iter()
        .map(|decision| decision.id)
        .collect();
    assert_eq!(unended, vec![1, 3]);
    drop(engine);
    // Nothing was flushed: the decisions come back from the WAL alone.
    let storage = storage.crash(CrashMode::DropUnsynced);
    let tables = tables.crash();
    let engine = open(&storage, &tables, Duration::ZERO);
    assert_eq!(
        engine.decision(2).unwrap().unwrap(),
        engine::model::CoordinatorDecision {
            ended: true,
            commit_ts: 0,
            ..decision(2, Outcome::Aborted(AbortReason::InsufficientFunds))
        }
    );
    assert_eq!(engine.decision(99).unwrap(), None);
    let unended: Vec<TransferId> = engine
        .unended_decisions()
        .unwrap()
        .iter()
        .map(|decision| decision.id)
        .collect();
    assert_eq!(unended, vec![1, 3]);
    engine.end_decisions(&[1, 3]).unwrap();
    assert!(engine.unended_decisions().unwrap().is_empty());
    assert_eq!(
        engine.decision(1).unwrap().unwrap().outcome,
        Outcome::Committed
    );
}

#[test]
fn a_read_at_a_timestamp_waits_for_earlier_writers_blocks_none_and_takes_back_later_ones() {
    let (_storage, _tables, engine) = fresh();
    for account in [1, 2] {
        engine.create_account(account, None, 0, 0).unwrap();
        fund(&engine, account, 100);
    }
    assert_eq!(prepare_one(&engine, 10, debit(1, 5)), Vote::Yes);
    let vote_clock = engine.clock_now();
    let at = engine.clock_now();
    let fence = engine.read_fence(Some(at));
    assert!(!engine.fence_settled(&fence, Some(&[2, 1])));
    assert!(engine.fence_settled(&fence, Some(&[2])));
    // A writer arriving after the read is not refused, and the read does not wait for it.
    assert_eq!(prepare_one(&engine, 11, credit(2, 5)), Vote::Yes);
    assert!(engine.fence_settled(&fence, Some(&[2])));
    // Transaction 10 commits at a timestamp later than its vote's clock, but not later than
    // the read: the read sees it. Transaction 11 commits later than the read: it does not.
    let results = engine
        .decide_from(2, &[(10, Outcome::Committed, vote_clock + 1)])
        .unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(vote_clock < at);
    assert!(engine.fence_settled(&fence, Some(&[2, 1])));
    engine.commit(&[11]).unwrap();
    assert_eq!(
        engine.balances_at(&[2, 1, 2], at).unwrap(),
        vec![100, 95, 100]
    );
    assert_eq!(engine.balance(2).unwrap(), 105);
    let then = engine.audit_at(at).unwrap();
    assert_eq!(then.balance_sum, 195);
    assert_eq!(then.totals.debited_by_transactions, 5);
    assert_eq!(then.totals.credited_by_transactions, 0);
    assert!(then.is_balanced(), "{then:?}");
    let now = engine.clock_now();
    assert_eq!(engine.balances_at(&[1, 2], now).unwrap(), vec![95, 105]);
    let audit = engine.audit_at(now).unwrap();
    assert_eq!(audit.balance_sum, 200);
    assert!(audit.is_balanced(), "{audit:?}");
    // One-phase changes are stamped too: a deposit after the read is taken back.
    fund(&engine, 1, 50);
    assert_eq!(engine.balances_at(&[1], at).unwrap(), vec![95]);
    assert_eq!(
        engine.balances_at(&[1], engine.clock_now()).unwrap(),
        vec![145]
    );
    // Older than what the shard keeps: refused, with the timestamp to read at instead.
    assert!(matches!(
        engine.balances_at(&[1], 1),
        Err(ReadError::TooOld { at: 1, .. })
    ));
}

#[test]
fn a_coordinator_logs_its_decision_and_applies_its_own_part_in_one_step() {
    let (storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    assert_eq!(prepare_one(&engine, 10, debit(1, 30)), Vote::Yes);
    assert_eq!(
        prepare_one(&engine, 11, debit(1, 71)),
        Vote::No(AbortReason::FundsHeld),
        "30 are reserved"
    );
    let results = engine
        .log_decisions_and_decide(
            2,
            vec![decision(10, Outcome::Committed)],
            &[(10, Outcome::Committed)],
            1,
        )
        .unwrap();
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(engine.balance(1).unwrap(), 70);
    assert!(engine.in_doubt().is_empty());
    // The reservation is gone with the decision, and both records come back after a crash.
    assert_eq!(prepare_one(&engine, 12, debit(1, 70)), Vote::Yes);
    drop(engine);
    let engine = open(
        &storage.crash(CrashMode::DropUnsynced),
        &tables.crash(),
        Duration::ZERO,
    );
    assert_eq!(engine.balance(1).unwrap(), 70);
    assert_eq!(
        engine.decision(10).unwrap().unwrap().outcome,
        Outcome::Committed
    );
}

#[test]
fn a_decision_from_another_coordinator_never_touches_this_coordinators_transaction() {
    let (_storage, _tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    // Coordinator 2 prepared transaction 10 here.
    assert_eq!(prepare_one(&engine, 10, debit(1, 30)), Vote::Yes);
    // Coordinator 3 reuses the id: its prepare is refused, its abort changes nothing, its commit
    // is refused.
    let other = engine
        .prepare(&[PrepareRequest {
            id: 10,
            coordinator: 3,
            operations: vec![debit(1, 30)],
        }])
        .unwrap();
    assert_eq!(other, vec![Vote::No(AbortReason::InvalidRequest)]);
    let aborted = engine
        .decide_from(3, &[(10, Outcome::Aborted(AbortReason::Timeout), 0)])
        .unwrap();
    assert!(aborted[0].is_ok());
    assert!(
        engine
            .decide_from(3, &[(10, Outcome::Committed, 1)])
            .unwrap()[0]
            .is_err()
    );
    assert_eq!(engine.in_doubt().len(), 1);
    // Its own coordinator's commit applies.
    assert!(
        engine
            .decide_from(2, &[(10, Outcome::Committed, 1)])
            .unwrap()[0]
            .is_ok()
    );
    assert_eq!(engine.balance(1).unwrap(), 70);
    assert!(engine.in_doubt().is_empty());
}

#[test]
fn a_read_failure_mid_decision_leaves_earlier_transactions_of_the_batch_in_doubt() {
    let (_storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    assert_eq!(prepare_one(&engine, 10, debit(1, 30)), Vote::Yes);
    // 10 is decided in memory first; 99 needs a table lookup, which fails: nothing is logged,
    // so 10 must be undecided again rather than look decided and never be applied.
    tables.fail_transfer_reads(true);
    assert!(engine.commit(&[10, 99]).is_err());
    tables.fail_transfer_reads(false);
    assert_eq!(engine.in_doubt().len(), 1);
    assert!(engine.commit(&[10]).unwrap()[0].is_ok());
    assert_eq!(engine.balance(1).unwrap(), 70);
    assert!(engine.in_doubt().is_empty());
}

/// The audit's negative-balance count is not a constant: a balance wrapped below zero (here
/// written straight into the tables, as an apply bug would) is counted, and the books no longer
/// balance.
#[test]
fn the_audit_counts_a_wrapped_balance_as_negative() {
    let (_storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    engine.create_account(2, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    let audit = engine.audit().unwrap();
    assert_eq!(audit.negative_balance_count, 0);
    assert!(audit.is_balanced());

    let mut wrapped = engine.account(2).unwrap();
    wrapped.balance = 0u64.wrapping_sub(30);
    let batch = engine::tables::TableBatch {
        applied_lsn: tables.applied_lsn().unwrap(),
        accounts: vec![wrapped],
        totals: tables.totals().unwrap(),
        ..Default::default()
    };
    tables.write(&batch).unwrap();
    let audit = engine.audit().unwrap();
    assert_eq!(audit.negative_balance_count, 1, "{audit:?}");
    assert!(!audit.is_balanced());
}

/// What every request with one deposit or withdrawal id must be answered.
fn check_answer(
    engine: &TestEngine,
    id: MovementId,
    account: AccountId,
    kind: MovementKind,
    amount: u64,
    expected: MovementOutcome,
) {
    let next_lsn = engine.wal().next_lsn();
    assert_eq!(
        engine.move_money(id, account, kind, amount).unwrap(),
        expected,
        "{kind} {id}"
    );
    assert_eq!(
        engine.wal().next_lsn(),
        next_lsn,
        "{kind} {id}: a retry logged"
    );
}

#[test]
fn a_resent_deposit_or_withdrawal_applies_once_and_gets_the_first_answer() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    let deposited = engine.deposit(100, 1, 70).unwrap();
    let MovementOutcome::Applied {
        balance_after: 70,
        lsn: deposit_lsn,
    } = deposited
    else {
        panic!("deposit answered {deposited:?}");
    };
    let withdrawn = engine.withdraw(101, 1, 20).unwrap();
    assert!(matches!(
        withdrawn,
        MovementOutcome::Applied {
            balance_after: 50,
            ..
        }
    ));
    // Later changes of the balance do not change the answers.
    fund(&engine, 1, 5);
    for _ in 0..3 {
        check_answer(&engine, 100, 1, MovementKind::Deposit, 70, deposited);
        check_answer(&engine, 101, 1, MovementKind::Withdrawal, 20, withdrawn);
    }
    assert_eq!(engine.balance(1).unwrap(), 55);
    let audit = engine.audit().unwrap();
    assert_eq!((audit.totals.deposited, audit.totals.withdrawn), (75, 20));

    // History names each deposit and withdrawal by its id; the answer's LSN is its entry's.
    let page = engine.history(1, None, 10).unwrap();
    let entries: Vec<(u64, TransferId, u64)> = page
        .entries
        .iter()
        .map(|entry| (entry.amount, entry.transfer, entry.balance_after))
        .collect();
    assert_eq!(entries[1..], [(20, 101, 50), (70, 100, 70)]);
    assert_eq!(page.entries[2].lsn, deposit_lsn);
    assert!(
        page.entries[0].transfer >= 1 << 100,
        "the funding deposit's id"
    );
}

#[test]
fn an_id_reused_with_other_content_is_refused_and_changes_nothing() {
    let (_, _, engine) = fresh();
    for account in 1..=3 {
        engine.create_account(account, None, 0, 0).unwrap();
        fund(&engine, account, 100);
    }
    assert!(applied(&engine.deposit(200, 1, 10)));
    assert_eq!(
        engine.withdraw(201, 1, 1_000).unwrap(),
        MovementOutcome::Refused(RefusalReason::InsufficientFunds)
    );
    // Transfer ids this shard knows: one-phase committed and aborted, prepared (durable) here,
    // and decided here as a coordinator.
    assert_eq!(
        engine.local_transfer(7, 2, 3, 1).unwrap(),
        Outcome::Committed
    );
    assert_eq!(
        engine.local_transfer(8, 2, 3, 1_000).unwrap(),
        Outcome::Aborted(AbortReason::InsufficientFunds)
    );
    assert_eq!(prepare_one(&engine, 9, debit(3, 5)), Vote::Yes);
    engine
        .log_decisions(vec![decision(10, Outcome::Committed)])
        .unwrap();
    let state = |engine: &TestEngine| {
        (
            engine.wal().next_lsn(),
            engine.audit().unwrap(),
            (1..=3)
                .map(|account| engine.balance(account).unwrap())
                .collect::<Vec<_>>(),
        )
    };
    let before = state(&engine);
    let duplicates = [
        // Other amount, other account, other kind, each of an applied and a refused id.
        (200, 1, MovementKind::Deposit, 11),
        (200, 2, MovementKind::Deposit, 10),
        (200, 1, MovementKind::Withdrawal, 10),
        (201, 1, MovementKind::Withdrawal, 999),
        (201, 2, MovementKind::Withdrawal, 1_000),
        (201, 1, MovementKind::Deposit, 1_000),
        // Transfer ids.
        (7, 2, MovementKind::Deposit, 1),
        (8, 2, MovementKind::Withdrawal, 1),
        (9, 3, MovementKind::Deposit, 5),
        (10, 1, MovementKind::Deposit, 5),
    ];
    for (id, account, kind, amount) in duplicates {
        assert!(
            matches!(
                engine.move_money(id, account, kind, amount),
                Err(MovementError::DuplicateWithDifferentContent(duplicate)) if duplicate == id
            ),
            "{kind} {id} of {amount} on account {account}"
        );
    }
    // And the other way: a deposit's or withdrawal's id is not taken by a transfer.
    for id in [200, 201] {
        assert!(matches!(
            engine.local_transfer(id, 2, 3, 1),
            Err(LocalTransferError::DuplicateWithDifferentContent(_))
        ));
        assert_eq!(
            prepare_one(&engine, id, credit(2, 1)),
            Vote::No(AbortReason::InvalidRequest)
        );
    }
    assert_eq!(state(&engine), before, "a refused reuse changed state");
    // The prepared transaction's id stays a transfer's once it is committed.
    engine.commit(&[9]).unwrap()[0].as_ref().unwrap();
    assert!(matches!(
        engine.deposit(9, 3, 5),
        Err(MovementError::DuplicateWithDifferentContent(9))
    ));
}

#[test]
fn a_refused_withdrawal_stays_refused_after_the_funds_arrive() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 10);
    let refused = MovementOutcome::Refused(RefusalReason::InsufficientFunds);
    assert_eq!(engine.withdraw(300, 1, 50).unwrap(), refused);
    fund(&engine, 1, 100);
    check_answer(&engine, 300, 1, MovementKind::Withdrawal, 50, refused);
    // A deposit to an account that does not exist yet stays refused once it does.
    let unknown = MovementOutcome::Refused(RefusalReason::UnknownAccount);
    assert_eq!(engine.deposit(301, 2, 5).unwrap(), unknown);
    engine.create_account(2, None, 0, 0).unwrap();
    check_answer(&engine, 301, 2, MovementKind::Deposit, 5, unknown);
    assert_eq!(
        (engine.balance(1).unwrap(), engine.balance(2).unwrap()),
        (110, 0)
    );
    // A new id is a new request.
    assert!(applied(&engine.withdraw(302, 1, 50)));
    assert_eq!(engine.balance(1).unwrap(), 60);
}

#[test]
fn deposits_and_withdrawals_keep_their_answers_across_restarts() {
    let (storage, tables, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    let requests = [
        (400, 1, MovementKind::Deposit, 100),
        (401, 1, MovementKind::Withdrawal, 30),
        (402, 1, MovementKind::Withdrawal, 500),
        (403, 9, MovementKind::Deposit, 5),
    ];
    let answers: Vec<MovementOutcome> = requests
        .iter()
        .map(|&(id, account, kind, amount)| engine.move_money(id, account, kind, amount).unwrap())
        .collect();
    assert!(matches!(answers[2], MovementOutcome::Refused(_)));
    assert!(matches!(answers[3], MovementOutcome::Refused(_)));
    let check = |engine: &TestEngine, context: &str| {
        for (&(id, account, kind, amount), &answer) in requests.iter().zip(&answers) {
            check_answer(engine, id, account, kind, amount, answer);
            assert!(
                matches!(
                    engine.move_money(id, account, kind, amount + 1),
                    Err(MovementError::DuplicateWithDifferentContent(_))
                ),
                "{context}: {kind} {id}"
            );
        }
        assert_eq!(engine.balance(1).unwrap(), 70, "{context}");
        let audit = engine.audit().unwrap();
        assert_eq!(
            (audit.totals.deposited, audit.totals.withdrawn),
            (100, 30),
            "{context}"
        );
    };
    drop(engine);

    // Nothing was flushed: the tables come back empty and replay rebuilds the answers from the
    // WAL alone.
    let storage = storage.crash(CrashMode::DropUnsynced);
    let tables = tables.crash();
    let (wal, _) = Wal::open(storage.clone(), wal_options()).unwrap();
    let (engine, report) = Engine::open(wal, tables.clone(), EngineOptions::default()).unwrap();
    assert_eq!((report.applied_lsn_before, report.records_replayed), (0, 5));
    check(&engine, "replayed from the WAL");

    // Flushed: the answers come from the tables, with nothing replayed.
    engine.checkpoint().unwrap();
    drop(engine);
    let (wal, _) = Wal::open(storage.crash(CrashMode::DropUnsynced), wal_options()).unwrap();
    let (engine, report) = Engine::open(wal, tables.crash(), EngineOptions::default()).unwrap();
    assert_eq!(report.records_replayed, 0);
    check(&engine, "read from the tables");
}

#[test]
fn a_log_written_before_deposits_kept_their_ids_still_replays() {
    let storage = MemoryStorage::new();
    {
        let (wal, _) = Wal::open(storage.clone(), wal_options()).unwrap();
        // The byte layout of kinds 2 and 3 (account, amount), written by hand as older nodes did.
        let old_movement = |account: u64, amount: u64| {
            let mut payload = account.to_le_bytes().to_vec();
            payload.extend_from_slice(&amount.to_le_bytes());
            payload
        };
        let created = Record::AccountCreated {
            account: 1,
            owner: None,
            flags: 0,
            created_at_ms: 0,
        };
        let last = wal
            .append_batch(&[
                (created.kind(), &created.encode()),
                (2, &old_movement(1, 100)),
                (3, &old_movement(1, 30)),
            ])
            .unwrap();
        wal.wait_durable(last).unwrap();
    }
    let tables = MemoryTables::new();
    let engine = open(&storage, &tables, Duration::ZERO);
    assert_eq!(engine.balance(1).unwrap(), 70);
    let audit = engine.audit().unwrap();
    assert_eq!((audit.totals.deposited, audit.totals.withdrawn), (100, 30));
    let history = engine.history(1, None, 10).unwrap();
    assert!(history.entries.iter().all(|entry| entry.transfer == 0));
    // New deposits keep their ids alongside.
    assert!(applied(&engine.deposit(500, 1, 1)));
    check_answer(
        &engine,
        500,
        1,
        MovementKind::Deposit,
        1,
        MovementOutcome::Applied {
            balance_after: 71,
            lsn: 4,
        },
    );
}

#[test]
fn concurrent_requests_with_one_id_apply_it_once() {
    let seed = test_seed("concurrent_requests_with_one_id");
    let mut random = StdRng::seed_from_u64(seed);
    let storage = MemoryStorage::new();
    let tables = MemoryTables::new();
    // Waiting for locks, so that a request that found the id unused would queue behind the one
    // applying it and then apply it again, were it not for the in-flight slot.
    let engine = Arc::new(open(&storage, &tables, Duration::from_millis(100)));
    engine.create_account(1, None, 0, 0).unwrap();
    for round in 0..20u128 {
        let id = 600 + round;
        let balance_before = engine.balance(1).unwrap();
        // Half the threads send one amount, half another: one of the two wins.
        let amounts: Vec<u64> = (0..8)
            .map(|thread| if thread % 2 == 0 { 10 } else { 20 })
            .collect();
        let threads: Vec<_> = amounts
            .iter()
            .map(|&amount| {
                let engine = engine.clone();
                let pause = Duration::from_micros(random.random_range(0..200));
                std::thread::spawn(move || {
                    std::thread::sleep(pause);
                    loop {
                        match engine.deposit(id, 1, amount) {
                            Err(MovementError::InProgress(_)) => std::thread::yield_now(),
                            answer => return (amount, answer),
                        }
                    }
                })
            })
            .collect();
        let answers: Vec<(u64, Result<MovementOutcome, MovementError>)> = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        let winner = engine.balance(1).unwrap() - balance_before;
        assert!(
            winner == 10 || winner == 20,
            "seed {seed} round {round}: {answers:?}"
        );
        let first = answers
            .iter()
            .find(|(amount, _)| *amount == winner)
            .map(|(_, answer)| answer.as_ref().unwrap().to_owned())
            .unwrap();
        for (amount, answer) in &answers {
            if *amount == winner {
                assert_eq!(
                    answer.as_ref().unwrap(),
                    &first,
                    "seed {seed} round {round}"
                );
            } else {
                assert!(
                    matches!(answer, Err(MovementError::DuplicateWithDifferentContent(_))),
                    "seed {seed} round {round}: {answer:?}"
                );
            }
        }
    }
    assert_eq!(
        engine.audit().unwrap().totals.deposited,
        u128::from(engine.balance(1).unwrap())
    );
}

#[test]
fn a_history_page_holding_the_oldest_entry_has_no_next_cursor() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    let pages = |limit: u32| {
        let mut sizes = Vec::new();
        let mut cursor = None;
        loop {
            let page = engine.history(1, cursor, limit).unwrap();
            sizes.push(page.entries.len());
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return sizes,
            }
        }
    };
    for _ in 0..10 {
        fund(&engine, 1, 1);
    }
    // Exactly full pages: the last one says there is no older page, and no empty page follows.
    assert_eq!(pages(10), vec![10]);
    assert_eq!(pages(5), vec![5, 5]);
    assert_eq!(pages(1), vec![1; 10]);
    assert_eq!(pages(3), vec![3, 3, 3, 1]);
    assert_eq!(pages(11), vec![10]);
}

/// Credits to one account overlap (prepared at once, each holding a `Credit` lock), and the only
/// way a credit can fail, overflow, counts every credit pending on the account: of two that fit
/// alone but not together, the second votes no until the first is decided.
#[test]
fn pending_credits_overlap_and_overflow_counts_all_of_them() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, u64::MAX - 10);
    assert_eq!(prepare_one(&engine, 1, credit(1, 6)), Vote::Yes);
    assert_eq!(
        prepare_one(&engine, 2, credit(1, 6)),
        Vote::No(AbortReason::Overflow)
    );
    assert_eq!(prepare_one(&engine, 3, credit(1, 4)), Vote::Yes);
    // A deposit is a credit too.
    assert!(matches!(
        engine.deposit(new_movement_id(), 1, 1).unwrap(),
        MovementOutcome::Refused(RefusalReason::Overflow)
    ));
    engine.abort(&[(1, AbortReason::Timeout)]).unwrap()[0]
        .as_ref()
        .unwrap();
    assert_eq!(prepare_one(&engine, 4, credit(1, 6)), Vote::Yes);
    for id in [3, 4] {
        engine.commit(&[id]).unwrap()[0].as_ref().unwrap();
    }
    assert_eq!(engine.balance(1).unwrap(), u64::MAX);
}

/// Any interleaving of prepares (credits and debits), commits and aborts on one account keeps
/// the balance non-negative and ends at the initial balance plus the committed credits minus the
/// committed debits; a restart in the middle rebuilds the pending credits from the prepared ones.
#[test]
fn any_interleaving_on_one_account_ends_at_the_committed_changes() {
    let seed = test_seed("one account interleavings");
    let mut random = StdRng::seed_from_u64(seed);
    for round in 0..50 {
        let (storage, tables, mut engine) = fresh();
        engine.create_account(1, None, 0, 0).unwrap();
        let initial = random.random_range(0..1_000);
        let mut expected = i128::from(initial);
        if initial > 0 {
            fund(&engine, 1, initial);
        }
        let mut pending: Vec<(TransferId, Operation)> = Vec::new();
        for step in 0..60u128 {
            let id = 1_000 * round + step;
            match random.random_range(0..10) {
                0..=3 => {
                    let amount = random.random_range(1..400);
                    let operation = if random.random_bool(0.5) {
                        credit(1, amount)
                    } else {
                        debit(1, amount)
                    };
                    if prepare_one(&engine, id, operation) == Vote::Yes {
                        pending.push((id, operation));
                    }
                }
                4..=8 if !pending.is_empty() => {
                    let (id, operation) =
                        pending.swap_remove(random.random_range(0..pending.len()));
                    if random.random_bool(0.6) {
                        engine.commit(&[id]).unwrap()[0].as_ref().unwrap();
                        expected += match operation.kind {
                            OperationKind::Credit => i128::from(operation.amount),
                            OperationKind::Debit => -i128::from(operation.amount),
                        };
                    } else {
                        engine.abort(&[(id, AbortReason::Timeout)]).unwrap()[0]
                            .as_ref()
                            .unwrap();
                    }
                }
                _ => {
                    drop(engine);
                    engine = open(&storage, &tables, Duration::ZERO);
                }
            }
            assert!(expected >= 0, "seed {seed} round {round}: negative balance");
            assert_eq!(
                i128::from(engine.balance(1).unwrap()),
                expected,
                "seed {seed} round {round} step {step}"
            );
            assert_eq!(engine.audit().unwrap().negative_balance_count, 0);
        }
    }
}

/// Debits of one account overlap too, each reserving its amount (escrow): they are admitted
/// while the balance covers all of them, pending credits not counted (they may abort), so the
/// balance can never go negative whichever of them commit.
#[test]
fn pending_debits_reserve_their_amounts() {
    let (_, _, engine) = fresh();
    engine.create_account(1, None, 0, 0).unwrap();
    fund(&engine, 1, 100);
    assert_eq!(prepare_one(&engine, 1, debit(1, 60)), Vote::Yes);
    assert_eq!(prepare_one(&engine, 2, debit(1, 30)), Vote::Yes);
    // The funds are there but held: a distinct, retryable reason.
    assert_eq!(
        prepare_one(&engine, 3, debit(1, 20)),
        Vote::No(AbortReason::FundsHeld)
    );
    assert_eq!(
        prepare_one(&engine, 7, debit(1, 101)),
        Vote::No(AbortReason::InsufficientFunds)
    );
    assert_eq!(prepare_one(&engine, 4, credit(1, 50)), Vote::Yes);
    assert_eq!(
        prepare_one(&engine, 5, debit(1, 20)),
        Vote::No(AbortReason::FundsHeld),
        "a pending credit is not spendable"
    );
    // A withdrawal of held funds records nothing: the same id succeeds once they are free.
    let held = new_movement_id();
    assert!(matches!(
        engine.withdraw(held, 1, 20),
        Err(MovementError::FundsHeld { account: 1 })
    ));
    assert!(matches!(
        engine.withdraw(new_movement_id(), 1, 10).unwrap(),
        MovementOutcome::Applied {
            balance_after: 90,
            ..
        }
    ));
    engine.abort(&[(1, AbortReason::Timeout)]).unwrap()[0]
        .as_ref()
        .unwrap();
    assert!(matches!(
        engine.withdraw(held, 1, 20).unwrap(),
        MovementOutcome::Applied {
            balance_after: 70,
            ..
        }
    ));
    for id in [2, 4] {
        engine.commit(&[id]).unwrap()[0].as_ref().unwrap();
    }
    assert_eq!(engine.balance(1).unwrap(), 100 - 10 - 20 - 30 + 50);
}
