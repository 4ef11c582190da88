//! Engine benchmarks: applying a batch of 1,000 transfers to the tables (RocksDB and in-memory),
//! and the 2PC participant's prepare + commit of batches of 1, 64 and 1,024 transactions with
//! every group commit fdatasync'd.
//!
//! Run: `cargo bench -p bench --bench engine`. Files go to `TALLY_BENCH_DIR` (default: the system
//! temp directory). A summary table with transactions per fdatasync follows criterion's output.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bench::bench_directory;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use engine::model::{AccountId, MovementKind, Operation, OperationKind};
use engine::record::Record;
use engine::tables::{MemoryTables, RocksTables, Tables};
use engine::wal::{Wal, WalOptions};
use engine::{Engine, EngineOptions, PrepareRequest, Vote, plan_batch};

const APPLY_BATCH_TRANSFERS: usize = 1_000;
const ACCOUNTS: u64 = 100_000;
const INITIAL_BALANCE: u64 = 1_000_000_000;

/// Creates the accounts with one big batch per 10,000, written straight to the tables.
fn fill_accounts<T: Tables>(tables: &T) {
    let mut lsn = tables.applied_lsn().unwrap();
    let ids: Vec<AccountId> = (1..=ACCOUNTS).collect();
    for chunk in ids.chunks(10_000) {
        let mut records = Vec::new();
        for &account in chunk {
            lsn += 1;
            records.push((
                lsn,
                Record::AccountCreated {
                    account,
                    owner: None,
                    flags: 0,
                    created_at_ms: 0,
                },
            ));
            lsn += 1;
            records.push((
                lsn,
                Record::Movement {
                    id: u128::from(account),
                    account,
                    kind: MovementKind::Deposit,
                    amount: INITIAL_BALANCE,
                },
            ));
        }
        tables
            .write(&plan_batch(tables, &records).unwrap())
            .unwrap();
    }
}

/// 1,000 local transfers between pseudo-random accounts, continuing the tables' LSNs.
fn transfer_records(next_lsn: u64, seed: &mut u64) -> Vec<(u64, Record)> {
    (0..APPLY_BATCH_TRANSFERS as u64)
        .map(|index| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let debit = (*seed >> 33) % ACCOUNTS + 1;
            let credit = (debit + 1 + (*seed >> 13) % (ACCOUNTS - 1)) % ACCOUNTS + 1;
            let record = Record::LocalTransfer {
                id: u128::from(*seed),
                debit,
                credit,
                amount: 1,
            };
            (next_lsn + index, record)
        })
        .collect()
}

fn apply<T: Tables>(criterion: &mut Criterion, name: &str, tables: T) {
    fill_accounts(&tables);
    let mut group = criterion.benchmark_group("apply_batch_of_1000_transfers");
    group.throughput(Throughput::Elements(APPLY_BATCH_TRANSFERS as u64));
    let mut seed = 42u64;
    group.bench_function(name, |bencher| {
        bencher.iter(|| {
            let records = transfer_records(tables.applied_lsn().unwrap() + 1, &mut seed);
            let batch = plan_batch(&tables, &records).unwrap();
            tables.write(&batch).unwrap();
        });
    });
    group.finish();
}

fn apply_benches(criterion: &mut Criterion) {
    let directory = bench_directory();
    apply(
        criterion,
        "rocksdb",
        RocksTables::open(directory.path().join("tables")).unwrap(),
    );
    apply(criterion, "memory", MemoryTables::new());
}

fn participant_benches(criterion: &mut Criterion) {
    let summary = Mutex::new(Vec::new());
    let mut group = criterion.benchmark_group("participant_prepare_commit_fdatasync");
    for batch_size in [1usize, 64, 1024] {
        let directory = bench_directory();
        let (wal, _) =
            Wal::open_directory(directory.path().join("wal"), WalOptions::default()).unwrap();
        let tables = RocksTables::open(directory.path().join("tables")).unwrap();
        let (engine, _) = Engine::open(wal, tables, EngineOptions::default()).unwrap();
        for account in 1..=4096u64 {
            engine.create_account(account, None, 0, 0).unwrap();
        }
        let mut next_id = 1u128;
        let mut transactions = 0u64;
        let mut elapsed = Duration::ZERO;
        let groups_before = engine.wal().stats().groups_written;
        group.throughput(Throughput::Elements(batch_size as u64));
        group.bench_function(BenchmarkId::from_parameter(batch_size), |bencher| {
            bencher.iter_custom(|iterations| {
                let began = Instant::now();
                for _ in 0..iterations {
                    let batch: Vec<PrepareRequest> = (0..batch_size)
                        .map(|index| {
                            let id = next_id + index as u128;
                            let account = (id % 4096) as u64 + 1;
                            let operation = Operation {
                                account,
                                kind: OperationKind::Credit,
                                amount: 1,
                                counterparty: 0,
                            };
                            PrepareRequest {
                                id,
                                coordinator: 2,
                                operations: vec![operation],
                            }
                        })
                        .collect();
                    let ids: Vec<u128> = batch.iter().map(|request| request.id).collect();
                    next_id += batch_size as u128;
                    let votes = engine.prepare(&batch).unwrap();
                    assert!(votes.iter().all(|vote| *vote == Vote::Yes));
                    engine.commit(&ids).unwrap();
                }
                let took = began.elapsed();
                transactions += iterations * batch_size as u64;
                elapsed += took;
                took
            });
        });
        let fdatasyncs = engine.wal().stats().groups_written - groups_before;
        summary.lock().unwrap().push(format!(
            "| prepare + commit, batch of {batch_size} | {:.0} | {:.1} |",
            transactions as f64 / elapsed.as_secs_f64(),
            transactions as f64 / fdatasyncs.max(1) as f64
        ));
    }
    group.finish();
    println!(
        "\n| participant | transactions/s (mean) | transactions per fdatasync |\n|---|---:|---:|"
    );
    for line in summary.into_inner().unwrap() {
        println!("{line}");
    }
}

criterion_group!(benches, apply_benches, participant_benches);
criterion_main!(benches);
