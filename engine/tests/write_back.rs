//! The RocksDB tables' write-back layer (see `engine::tables::RocksTables`): with spills made
//! frequent by small bounds, the tables answer exactly as the in-memory model does, across
//! spills, flushes and reopens, and a key being spilled never drops out of a reader's sight.
#![cfg(feature = "rocksdb")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use engine::model::{
    AbortReason, Account, CoordinatorDecision, HistoryEntry, HistoryKind, Operation, OperationKind,
    Outcome, PreparedTransaction, Totals, Transfer, TransferRecord,
};
use engine::tables::{MemoryTables, RocksTables, TableBatch, Tables, WriteBackLimits};
use engine::testing::test_seed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ACCOUNTS: u64 = 40;

/// Spills every `entries` keys, and keeps a handful of account rows after they spill.
fn small_limits(entries: usize) -> WriteBackLimits {
    WriteBackLimits {
        pending_entries_max: entries,
        pending_bytes_max: 4096,
        clean_accounts_max: 6,
    }
}
const IDS: u128 = 80;

/// A random batch that keeps `TableBatch`'s promises about `model`'s state: a prepared row is
/// stored only while its id is not prepared, and a decision is new only once (later writes of
/// it mark it ended).
fn random_batch(random: &mut StdRng, lsn: &mut u64, model: &MemoryTables) -> TableBatch {
    let mut batch = TableBatch::default();
    for _ in 0..random.random_range(0..4) {
        let id = random.random_range(1..=ACCOUNTS);
        if batch.accounts.iter().all(|account| account.id != id) {
            batch.accounts.push(Account {
                id,
                balance: random.random_range(0..1_000),
                owner: random.random_bool(0.5).then(|| format!("owner {id}")),
                flags: 0,
                created_at_ms: id,
            });
        }
    }
    for _ in 0..random.random_range(0..3) {
        let id = random.random_range(1..=IDS);
        let outcome = if random.random_bool(0.7) {
            Outcome::Committed
        } else {
            Outcome::Aborted(AbortReason::LockConflict)
        };
        batch.transfers.push(TransferRecord {
            id,
            transfer: Some(Transfer {
                debit: 1,
                credit: 2,
                amount: random.random_range(1..100),
            }),
            outcome,
        });
    }
    for _ in 0..random.random_range(0..3) {
        *lsn += 1;
        let account = random.random_range(1..=4);
        batch.history.push(HistoryEntry {
            account,
            lsn: *lsn,
            kind: HistoryKind::TransferCredit,
            amount: 5,
            counterparty: 9,
            transfer: u128::from(*lsn),
            balance_after: *lsn,
        });
    }
    for _ in 0..random.random_range(0..3) {
        let id = random.random_range(1..=IDS);
        if batch.prepared.iter().all(|(other, _)| *other != id) {
            let free = model.prepared(id).unwrap().is_none();
            let prepared = (free && random.random_bool(0.5)).then(|| PreparedTransaction {
                id,
                coordinator: random.random_range(1..4),
                operations: vec![Operation {
                    account: random.random_range(1..=ACCOUNTS),
                    kind: OperationKind::Debit,
                    amount: 7,
                    counterparty: 3,
                }],
            });
            batch.prepared.push((id, prepared));
        }
    }
    for _ in 0..random.random_range(0..3) {
        let id = random.random_range(1..=IDS);
        if batch.decisions.iter().all(|decision| decision.id != id) {
            let decision = match model.decision(id).unwrap() {
                Some(decided) => CoordinatorDecision {
                    ended: true,
                    ..decided
                },
                None => CoordinatorDecision {
                    id,
                    transfer: None,
                    outcome: Outcome::Committed,
                    participants: vec![1, 2],
                    ended: random.random_bool(0.5),
                    commit_ts: random.random(),
                },
            };
            batch.decisions.push(decision);
        }
    }
    batch.totals = Totals {
        deposited: u128::from(*lsn),
        ..Totals::default()
    };
    *lsn += 1;
    batch.applied_lsn = *lsn;
    batch
}

/// An account row with nothing but its balance.
fn account(id: u64, balance: u64) -> Account {
    Account {
        id,
        balance,
        owner: None,
        flags: 0,
        created_at_ms: 0,
    }
}

/// Asserts that a read (a method call) answers the same on the tables and on the model.
macro_rules! same {
    ($tables:expr, $model:expr, $context:expr, $($read:tt)+) => {
        assert_eq!(
            $tables.$($read)+.unwrap(),
            $model.$($read)+.unwrap(),
            "{}: {}",
            $context,
            stringify!($($read)+)
        )
    };
}

/// Every point read the tables answer (no spill), compared with the model's.
fn assert_same_points(tables: &RocksTables, model: &MemoryTables, context: &str) {
    same!(tables, model, context, applied_lsn());
    same!(tables, model, context, totals());
    for id in 1..=ACCOUNTS {
        same!(tables, model, context, account(id));
    }
    for id in 1..=IDS {
        same!(tables, model, context, transfer(id));
        same!(tables, model, context, prepared(id));
        same!(tables, model, context, decision(id));
    }
}

/// Every read the tables answer, scans too, compared with the model's.
fn assert_same(tables: &RocksTables, model: &MemoryTables, context: &str) {
    assert_same_points(tables, model, context);
    same!(tables, model, context, all_prepared());
    same!(tables, model, context, unended_decisions());
    for account in 1..=4 {
        same!(tables, model, context, history(account, u64::MAX, 5));
    }
    let mut scanned = Vec::new();
    tables
        .scan_accounts(&mut |account| scanned.push(account.clone()))
        .unwrap();
    let mut expected = Vec::new();
    model
        .scan_accounts(&mut |account| expected.push(account.clone()))
        .unwrap();
    assert_eq!(scanned, expected, "{context}");
}

#[test]
fn write_back_tables_answer_as_the_model_across_spills_flushes_and_reopens() {
    let seed = test_seed("write_back_tables_answer_as_the_model_across_spills_flushes_and_reopens");
    let mut random = StdRng::seed_from_u64(seed);
    let directory = tempfile::tempdir().unwrap();
    let open = || RocksTables::open_with_write_back(directory.path(), small_limits(24)).unwrap();
    let mut tables = open();
    let model = MemoryTables::new();
    let mut lsn = 0;
    for step in 0..3_000 {
        let batch = random_batch(&mut random, &mut lsn, &model);
        tables.write(&batch).unwrap();
        model.write(&batch).unwrap();
        match random.random_range(0..100) {
            // Point reads only: answered from the layer or RocksDB, without a spill.
            0..10 => assert_same_points(&tables, &model, &format!("step {step}")),
            10..13 => assert_same(&tables, &model, &format!("step {step}")),
            13 => tables.flush().unwrap(),
            // A clean close writes the layer: the reopened tables hold everything.
            14 => {
                drop(tables);
                tables = open();
                assert_same(&tables, &model, &format!("step {step}, reopened"));
            }
            _ => {}
        }
    }
    assert_same(&tables, &model, "the end");
}

#[test]
fn a_row_created_and_removed_between_two_spills_never_reaches_rocksdb() {
    let directory = tempfile::tempdir().unwrap();
    let tables = RocksTables::open(directory.path()).unwrap();
    let prepared = |id| PreparedTransaction {
        id,
        coordinator: 1,
        operations: vec![Operation {
            account: 1,
            kind: OperationKind::Debit,
            amount: 7,
            counterparty: 2,
        }],
    };
    let decided = |id, ended| CoordinatorDecision {
        id,
        transfer: None,
        outcome: Outcome::Committed,
        participants: vec![2],
        ended,
        commit_ts: 1,
    };
    let batch = |lsn, prepared, decisions| TableBatch {
        applied_lsn: lsn,
        prepared,
        decisions,
        ..TableBatch::default()
    };
    // Each spill writes the totals and the applied LSN.
    const META: u64 = 2;

    // Prepared, decided and ended within one window: the prepared row and the unended mark are
    // gone before the spill; only the decision row is written.
    tables
        .write(&batch(
            1,
            vec![(1, Some(prepared(1)))],
            vec![decided(1, false)],
        ))
        .unwrap();
    tables
        .write(&batch(2, vec![(1, None)], vec![decided(1, true)]))
        .unwrap();
    assert_eq!(tables.prepared(1).unwrap(), None);
    tables.flush().unwrap();
    assert_eq!(tables.spilled_keys(), META + 1);

    // Prepared in one window and removed in the next: both reach RocksDB, the removal as a
    // tombstone over the stored row, as they must.
    tables
        .write(&batch(
            3,
            vec![(2, Some(prepared(2)))],
            vec![decided(2, false)],
        ))
        .unwrap();
    tables.flush().unwrap();
    assert_eq!(tables.spilled_keys(), 2 * META + 1 + 3);
    tables
        .write(&batch(4, vec![(2, None)], vec![decided(2, true)]))
        .unwrap();
    tables.flush().unwrap();
    assert_eq!(tables.spilled_keys(), 3 * META + 1 + 3 + 3);
    drop(tables);

    let tables = RocksTables::open(directory.path()).unwrap();
    assert_eq!(tables.all_prepared().unwrap(), vec![]);
    assert_eq!(tables.unended_decisions().unwrap(), vec![]);
    assert_eq!(tables.decision(1).unwrap(), Some(decided(1, true)));
    assert_eq!(tables.decision(2).unwrap(), Some(decided(2, true)));
}

/// The model refuses a batch that breaks the promise the tables rely on above, so that the
/// simulator, which runs on the model, catches an engine that ever breaks it.
#[test]
fn the_model_refuses_a_second_prepare_or_decision_of_one_transfer() {
    let model = MemoryTables::new();
    let prepared = PreparedTransaction {
        id: 1,
        coordinator: 1,
        operations: Vec::new(),
    };
    let decided = CoordinatorDecision {
        id: 1,
        transfer: None,
        outcome: Outcome::Committed,
        participants: vec![2],
        ended: false,
        commit_ts: 1,
    };
    let batch = TableBatch {
        applied_lsn: 1,
        prepared: vec![(1, Some(prepared))],
        decisions: vec![decided.clone()],
        ..TableBatch::default()
    };
    model.write(&batch).unwrap();
    let again = model.write(&TableBatch {
        decisions: Vec::new(),
        ..batch.clone()
    });
    assert!(again.unwrap_err().to_string().contains("prepared again"));
    let again = model.write(&TableBatch {
        prepared: Vec::new(),
        ..batch.clone()
    });
    assert!(again.unwrap_err().to_string().contains("decided again"));
    // Removing the row, then ending the decision, are what follows.
    model
        .write(&TableBatch {
            applied_lsn: 2,
            prepared: vec![(1, None)],
            decisions: vec![CoordinatorDecision {
                ended: true,
                ..decided
            }],
            ..TableBatch::default()
        })
        .unwrap();
}

#[test]
fn a_key_being_spilled_stays_visible_to_readers() {
    let directory = tempfile::tempdir().unwrap();
    // Spills of a few keys each, one after another.
    let tables =
        Arc::new(RocksTables::open_with_write_back(directory.path(), small_limits(8)).unwrap());
    // The accounts exist before the reader starts (it once started first, and a read before
    // the setup batch found nothing: a flake of the test, not of the tables).
    let setup = TableBatch {
        applied_lsn: 1,
        accounts: (1..=4).map(|id| account(id, 0)).collect(),
        ..TableBatch::default()
    };
    tables.write(&setup).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let tables = tables.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut last = 0;
            while !done.load(Ordering::Relaxed) || reads == 0 {
                for id in 1..=4 {
                    if let Some(account) = tables.account(id).unwrap() {
                        if id == 1 {
                            assert!(account.balance >= last, "account 1 went back in time");
                            last = account.balance;
                        }
                    } else {
                        // Written before the reader started (below), never removed.
                        panic!("account {id} out of sight after {reads} reads");
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    for lsn in 2..20_000u64 {
        let batch = TableBatch {
            applied_lsn: lsn,
            accounts: vec![account(1, lsn), account(2 + lsn % 3, lsn)],
            history: vec![HistoryEntry {
                account: 1,
                lsn,
                kind: HistoryKind::Deposit,
                amount: 1,
                counterparty: 0,
                transfer: 0,
                balance_after: lsn,
            }],
            ..TableBatch::default()
        };
        tables.write(&batch).unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("the reader saw a key out of sight");
    println!("{reads} rounds of reads beside the spills");
    assert_eq!(tables.account(1).unwrap().unwrap().balance, 19_999);
}

#[test]
fn account_rows_read_from_rocksdb_never_hide_a_newer_spill() {
    // Many accounts, few kept in memory: most reads go to RocksDB and refill the kept rows while
    // spills write newer values of the same accounts.
    const MANY: u64 = 64;
    let directory = tempfile::tempdir().unwrap();
    let tables =
        Arc::new(RocksTables::open_with_write_back(directory.path(), small_limits(8)).unwrap());
    tables
        .write(&TableBatch {
            applied_lsn: 1,
            accounts: (1..=MANY).map(|id| account(id, 0)).collect(),
            ..TableBatch::default()
        })
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|reader| {
            let tables = tables.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut seen = vec![0; MANY as usize + 1];
                let mut id = 1 + reader;
                while !done.load(Ordering::Relaxed) {
                    id = id % MANY + 1;
                    let balance = tables.account(id).unwrap().expect("account exists").balance;
                    assert!(
                        balance >= seen[id as usize],
                        "account {id}: read {balance} after {}",
                        seen[id as usize]
                    );
                    seen[id as usize] = balance;
                }
            })
        })
        .collect();
    let rounds = 4000;
    let mut lsn = 1;
    for round in 1..=rounds {
        for ids in (1..=MANY).collect::<Vec<_>>().chunks(4) {
            lsn += 1;
            tables
                .write(&TableBatch {
                    applied_lsn: lsn,
                    accounts: ids.iter().map(|id| account(*id, round)).collect(),
                    ..TableBatch::default()
                })
                .unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    for reader in readers {
        reader
            .join()
            .expect("a reader saw an account go back in time");
    }
    for id in 1..=MANY {
        assert_eq!(
            tables.account(id).unwrap().unwrap().balance,
            rounds,
            "account {id}"
        );
    }
}

/// One account row per batch, each a new key.
fn accounts_batch(lsn: u64) -> TableBatch {
    TableBatch {
        applied_lsn: lsn,
        accounts: vec![account(lsn, lsn)],
        ..TableBatch::default()
    }
}

/// A full window is written by the tables' spill thread: a writer does not wait for a spill
/// under way (a writer is often an async task, and a spill of a full window took 40-80 ms,
/// stalling every task behind it), until the thread is `WINDOWS_BEHIND_MAX` windows behind;
/// then the writer waits, so the layer stays bounded.
#[test]
fn writers_leave_full_windows_to_the_spill_thread_until_it_falls_behind() {
    use engine::tables::WINDOWS_BEHIND_MAX;
    // Each batch writes its account, the totals and the applied LSN: 3 keys, of which 1 new.
    const WINDOW: usize = 16;
    let directory = tempfile::tempdir().unwrap();
    let tables = Arc::new(
        RocksTables::open_with_write_back(
            directory.path(),
            WriteBackLimits {
                pending_entries_max: WINDOW,
                pending_bytes_max: 1 << 20,
                clean_accounts_max: 6,
            },
        )
        .unwrap(),
    );
    let paused = tables.pause_spills();
    // Below the bound: every write returns while spills are held off.
    let below = (WINDOW * (WINDOWS_BEHIND_MAX - 1)) as u64;
    let writer = {
        let tables = tables.clone();
        std::thread::spawn(move || {
            for lsn in 1..=below {
                tables.write(&accounts_batch(lsn)).unwrap();
            }
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !writer.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "a writer waited for a spill while the layer held under {WINDOWS_BEHIND_MAX} windows"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    writer.join().unwrap();
    assert_eq!(tables.spilled_keys(), 0);
    assert_eq!(tables.account(below).unwrap().unwrap().balance, below);
    // At the bound the writer waits for the spills ...
    let writer = {
        let tables = tables.clone();
        std::thread::spawn(move || {
            for lsn in below + 1..=below + WINDOW as u64 + 2 {
                tables.write(&accounts_batch(lsn)).unwrap();
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!writer.is_finished(), "the layer grew past its bound");
    // At most the bound's windows and the batch that reached it (3 keys).
    assert!(tables.unspilled_keys() <= WINDOW * WINDOWS_BEHIND_MAX + 3);
    // ... and goes on once they are let through.
    drop(paused);
    writer.join().unwrap();
    // The spill thread writes a full window without any flush, scan or close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tables.spilled_keys() == 0 || tables.unspilled_keys() >= WINDOW {
        assert!(
            std::time::Instant::now() < deadline,
            "no spill came: {} keys spilled, {} not",
            tables.spilled_keys(),
            tables.unspilled_keys()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let last = below + WINDOW as u64 + 2;
    for lsn in 1..=last {
        assert_eq!(tables.account(lsn).unwrap().unwrap().balance, lsn);
    }
    assert_eq!(tables.applied_lsn().unwrap(), last);
}
