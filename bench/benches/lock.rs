//! Contention benchmark of the lock manager: transfer-shaped acquire+release pairs per second
//! (two accounts, exclusive) for each policy, on 1 and 2 threads, over a uniform million accounts
//! or a hot set of ten. Conflict rates go to stderr.
//!
//! A failed acquire is retried with the same transaction id (and, under wait-die, the same
//! timestamp, as a real retry would keep it) after yielding the processor, so the figure is
//! completed pairs per second. The yield stands for the cost of a real retry and lets a holder
//! that was preempted run; without it a retrying thread spins through its whole time slice.
//! The abort rate printed is the share of transfers whose first attempt failed.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::lock::{LOCK_STRIPE_COUNT_DEFAULT, LockError, LockManager, LockMode, LockPolicy};

const ACCOUNTS_UNIFORM_COUNT: u64 = 1_000_000;
const ACCOUNTS_HOT_COUNT: u64 = 10;
/// The deadline of the waiting policies, from each attempt. Never reached here: holders release
/// at once, so it only has to be long enough not to fire.
const WAIT_DURATION_MAX: Duration = Duration::from_millis(10);
const SEED: u64 = 0x7a11_7a11;

#[derive(Clone, Copy, Debug)]
enum Policy {
    NoWait,
    BoundedWait,
    WaitDie,
}

/// Counts across every run of one benchmark (warm-up included), for the conflict rate.
#[derive(Default)]
struct Tally {
    transfers: AtomicU64,
    /// Transfers whose first attempt failed with a conflict.
    transfers_aborted: AtomicU64,
    /// Failed attempts, first ones included.
    conflicts: AtomicU64,
}

struct Workload<'a> {
    locks: &'a LockManager,
    policy: Policy,
    accounts_count: u64,
    /// Wait-die timestamps, shared by the threads like a node-wide transaction counter.
    clock: &'a AtomicU64,
    tally: &'a Tally,
}

impl Workload<'_> {
    fn run(&self, thread_index: u64, transfers_count: u64) {
        let mut random = SEED ^ (thread_index + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut conflicts = 0;
        let mut transfers_aborted = 0;
        for transfer in 0..transfers_count {
            let transaction_id = (u128::from(thread_index) << 64) | u128::from(transfer);
            let debit = next_random(&mut random) % self.accounts_count;
            let mut credit = next_random(&mut random) % (self.accounts_count - 1);
            if credit >= debit {
                credit += 1;
            }
            let request = [(debit, LockMode::Exclusive), (credit, LockMode::Exclusive)];
            let timestamp = match self.policy {
                Policy::WaitDie => self.clock.fetch_add(1, Ordering::Relaxed),
                Policy::NoWait | Policy::BoundedWait => 0,
            };
            for attempt in 0_u64.. {
                let policy = match self.policy {
                    Policy::NoWait => LockPolicy::NoWait,
                    Policy::BoundedWait => LockPolicy::BoundedWait {
                        deadline: Instant::now() + WAIT_DURATION_MAX,
                    },
                    Policy::WaitDie => LockPolicy::WaitDie {
                        timestamp,
                        deadline: Instant::now() + WAIT_DURATION_MAX,
                    },
                };
                match self
                    .locks
                    .acquire(transaction_id, black_box(&request), policy)
                {
                    Ok(()) => break,
                    Err(LockError::Conflict { .. }) => {
                        conflicts += 1;
                        transfers_aborted += u64::from(attempt == 0);
                        thread::yield_now();
                    }
                    Err(error) => panic!("{error}"),
                }
            }
            assert_eq!(self.locks.release_all(transaction_id), 2);
        }
        self.tally
            .transfers
            .fetch_add(transfers_count, Ordering::Relaxed);
        self.tally.conflicts.fetch_add(conflicts, Ordering::Relaxed);
        self.tally
            .transfers_aborted
            .fetch_add(transfers_aborted, Ordering::Relaxed);
    }
}

/// xorshift64*: cheap enough not to show in the figures.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn lock_contention(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("lock");
    for policy in [Policy::NoWait, Policy::BoundedWait, Policy::WaitDie] {
        for threads_count in [1_u64, 2] {
            for (workload_name, accounts_count) in [
                ("uniform", ACCOUNTS_UNIFORM_COUNT),
                ("hot", ACCOUNTS_HOT_COUNT),
            ] {
                let locks = LockManager::new(LOCK_STRIPE_COUNT_DEFAULT);
                let clock = AtomicU64::new(1);
                let tally = Tally::default();
                let workload = Workload {
                    locks: &locks,
                    policy,
                    accounts_count,
                    clock: &clock,
                    tally: &tally,
                };
                let name = format!("{policy:?}/{threads_count}-threads/{workload_name}");
                // One element is one completed acquire+release pair, on any thread.
                group.throughput(Throughput::Elements(threads_count));
                group.bench_function(&name, |bencher| {
                    bencher.iter_custom(|iterations| {
                        let start = Instant::now();
                        thread::scope(|scope| {
                            for thread_index in 1..threads_count {
                                let workload = &workload;
                                scope.spawn(move || workload.run(thread_index, iterations));
                            }
                            workload.run(0, iterations);
                        });
                        start.elapsed()
                    });
                });
                let transfers = tally.transfers.load(Ordering::Relaxed);
                let transfers_aborted = tally.transfers_aborted.load(Ordering::Relaxed);
                let conflicts = tally.conflicts.load(Ordering::Relaxed);
                eprintln!(
                    "lock/{name}: first attempt aborted (lock conflict) in {:.3}% of {transfers} \
                     transfers; {:.4} failed attempts per transfer",
                    100.0 * transfers_aborted as f64 / transfers.max(1) as f64,
                    conflicts as f64 / transfers.max(1) as f64,
                );
            }
        }
    }
    group.finish();
}

criterion_group!(benches, lock_contention);
criterion_main!(benches);
