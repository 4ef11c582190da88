//! The engine over RocksDB tables and the file WAL, in real processes: a child process applies
//! operations and dies without flushing RocksDB's memtables; the parent reopens and replays.
#![cfg(feature = "rocksdb")]

use std::process::Command;

use engine::model::{MovementId, MovementOutcome, Outcome, RefusalReason};
use engine::tables::{RocksTables, Tables};
use engine::wal::{Wal, WalOptions};
use engine::{Engine, EngineOptions};

const CHILD_DIRECTORY: &str = "TALLY_ROCKS_CHILD_DIRECTORY";
const ACCOUNTS: u64 = 20;

/// The id of the child's deposit into `account` (before the checkpoint: in the flushed tables).
fn deposit_id(account: u64) -> MovementId {
    1_000_000 + u128::from(account)
}

/// The id of the child's withdrawal from `account` (after the checkpoint: only in the WAL).
fn withdrawal_id(account: u64) -> MovementId {
    2_000_000 + u128::from(account)
}

/// The id of the child's refused withdrawal from `account` (only in the WAL).
fn refused_id(account: u64) -> MovementId {
    3_000_000 + u128::from(account)
}

fn open(directory: &std::path::Path) -> (Engine<RocksTables>, engine::OpenReport) {
    let (wal, _) = Wal::open_directory(
        directory.join("wal"),
        WalOptions {
            segment_size_bytes: 64 * 1024,
            ..WalOptions::default()
        },
    )
    .expect("open WAL");
    let tables = RocksTables::open(directory.join("tables")).expect("open tables");
    Engine::open(wal, tables, EngineOptions::default()).expect("open engine")
}

/// What the child does: accounts with deposits, a checkpoint, then transfers and withdrawals (one
/// applied, one refused per account) that live only in the WAL and in RocksDB's memtable when it
/// aborts.
fn child(directory: &std::path::Path) -> ! {
    let (engine, _) = open(directory);
    for account in 1..=ACCOUNTS {
        engine.create_account(account, Some("child"), 0, 0).unwrap();
        engine.deposit(deposit_id(account), account, 1_000).unwrap();
    }
    engine.checkpoint().unwrap();
    for id in 1..=200u128 {
        let debit = (id as u64 % ACCOUNTS) + 1;
        let credit = ((id as u64 * 7) % ACCOUNTS) + 1;
        if debit != credit {
            assert_eq!(
                engine.local_transfer(id, debit, credit, 3).unwrap(),
                Outcome::Committed
            );
        }
    }
    for account in 1..=ACCOUNTS {
        engine.withdraw(withdrawal_id(account), account, 1).unwrap();
        engine
            .withdraw(refused_id(account), account, 1_000_000)
            .unwrap();
    }
    println!(
        "child applied up to LSN {}",
        engine.tables().applied_lsn().unwrap()
    );
    // No destructors: RocksDB's memtable (its WAL is off) is lost, as in a crash.
    std::process::abort();
}

#[test]
fn tables_recover_from_the_wal_after_losing_unflushed_memtables() {
    if let Some(directory) = std::env::var_os(CHILD_DIRECTORY) {
        child(std::path::Path::new(&directory));
    }
    let directory = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tables_recover_from_the_wal_after_losing_unflushed_memtables",
            "--nocapture",
        ])
        .env(CHILD_DIRECTORY, directory.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must die by abort");

    // The tables alone are back at the checkpoint: the transfers were only in the memtable.
    let checkpointed = {
        let tables = RocksTables::open(directory.path().join("tables")).unwrap();
        let applied = tables.applied_lsn().unwrap();
        assert_eq!(
            applied,
            2 * ACCOUNTS,
            "tables should hold exactly the checkpoint"
        );
        applied
    };
    let (engine, report) = open(directory.path());
    assert_eq!(report.applied_lsn_before, checkpointed);
    assert!(
        report.records_replayed > 150,
        "replayed {}",
        report.records_replayed
    );
    let audit = engine.audit().unwrap();
    assert_eq!(audit.balance_sum, u128::from(ACCOUNTS) * 999);
    assert!(audit.is_balanced());
    // Every transfer and withdrawal is there exactly once.
    let mut expected = vec![999i64; ACCOUNTS as usize + 1];
    for id in 1..=200u64 {
        let (debit, credit) = ((id % ACCOUNTS) + 1, ((id * 7) % ACCOUNTS) + 1);
        if debit != credit {
            expected[debit as usize] -= 3;
            expected[credit as usize] += 3;
            assert!(matches!(
                engine.transfer_status(u128::from(id)).unwrap(),
                engine::TransferStatus::Decided(record) if record.outcome == Outcome::Committed
            ));
        }
    }
    for account in 1..=ACCOUNTS {
        assert_eq!(
            engine.balance(account).unwrap() as i64,
            expected[account as usize],
            "account {account}"
        );
    }
    // Resent deposits and withdrawals get their first answers, rebuilt by replay or read from
    // the flushed tables, and apply nothing.
    check_resent_movements(&engine);
    // A checkpoint truncates the WAL, and the state survives another reopen.
    engine.checkpoint().unwrap();
    drop(engine);
    let (engine, report) = open(directory.path());
    assert_eq!(report.records_replayed, 0);
    assert_eq!(
        engine.audit().unwrap().balance_sum,
        u128::from(ACCOUNTS) * 999
    );
    check_resent_movements(&engine);
}

fn check_resent_movements(engine: &Engine<RocksTables>) {
    let next_lsn = engine.wal().next_lsn();
    for account in 1..=ACCOUNTS {
        // Account k was created at LSN 2k - 1 and funded at LSN 2k.
        assert_eq!(
            engine.deposit(deposit_id(account), account, 1_000).unwrap(),
            MovementOutcome::Applied {
                balance_after: 1_000,
                lsn: 2 * account
            }
        );
        let MovementOutcome::Applied { lsn, .. } =
            engine.withdraw(withdrawal_id(account), account, 1).unwrap()
        else {
            panic!("withdrawal from account {account} not applied");
        };
        let history = engine.history(account, Some(lsn + 1), 1).unwrap();
        assert_eq!(history.entries[0].transfer, withdrawal_id(account));
        assert_eq!(
            engine
                .withdraw(refused_id(account), account, 1_000_000)
                .unwrap(),
            MovementOutcome::Refused(RefusalReason::InsufficientFunds)
        );
    }
    assert_eq!(
        engine.wal().next_lsn(),
        next_lsn,
        "a resend logged something"
    );
}
