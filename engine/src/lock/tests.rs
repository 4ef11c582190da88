//! Unit tests of the lock manager: modes, ordering, all-or-nothing, waiting, and a seeded stress
//! test of mutual exclusion and deadlock freedom.

use super::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Long enough that a waiter woken by a release returns well before it, short enough that a
/// broken wakeup fails the test rather than hanging it.
const WAIT_LONG: Duration = Duration::from_secs(60);
/// Short deadline for the timeout tests; its length is never asserted on.
const WAIT_SHORT: Duration = Duration::from_millis(10);

const A: u128 = 1;
const B: u128 = 2;
const C: u128 = 3;
const D: u128 = 4;

fn manager() -> LockManager {
    LockManager::new(LOCK_STRIPE_COUNT_DEFAULT)
}

fn exclusive(accounts: &[u64]) -> Vec<(u64, LockMode)> {
    accounts
        .iter()
        .map(|&account| (account, LockMode::Exclusive))
        .collect()
}

fn shared(accounts: &[u64]) -> Vec<(u64, LockMode)> {
    accounts
        .iter()
        .map(|&account| (account, LockMode::Shared))
        .collect()
}

fn conflict(account: u64, holder: u128) -> Result<(), LockError> {
    Err(LockError::Conflict { account, holder })
}

/// Block until a thread waits on the stripe of `account`, so a release is known to race with
/// nothing. Bounded like everything else.
fn wait_for_waiter(locks: &LockManager, account: u64) {
    let deadline = Instant::now() + WAIT_LONG;
    while locks.waiters_count(account) == 0 {
        assert!(
            Instant::now() < deadline,
            "no thread ever waited on account {account}"
        );
        thread::yield_now();
    }
}

#[test]
fn compatibility_matrix() {
    use LockMode::{Credit, Debit, Exclusive, Shared};
    let expected = [
        (Shared, Shared, true),
        (Shared, Credit(3), false),
        (Shared, Debit(3), false),
        (Shared, Exclusive, false),
        (Credit(3), Credit(4), true),
        (Credit(3), Debit(4), true),
        (Debit(3), Debit(4), true),
        (Credit(3), Exclusive, false),
        (Debit(3), Exclusive, false),
        (Exclusive, Exclusive, false),
    ];
    for (held, requested, compatible) in expected {
        assert_eq!(
            held.is_compatible_with(requested),
            compatible,
            "{held:?} vs {requested:?}"
        );
        assert_eq!(requested.is_compatible_with(held), compatible, "symmetry");
    }
    assert_eq!(Shared.join(Shared), Shared);
    assert_eq!(Shared.join(Exclusive), Exclusive);
    assert_eq!(Exclusive.join(Shared), Exclusive);
    assert_eq!(Exclusive.join(Exclusive), Exclusive);
    assert_eq!(Credit(3).join(Credit(4)), Credit(7));
    assert_eq!(Debit(3).join(Debit(4)), Debit(7));
    assert_eq!(Debit(3).join(Credit(4)), Exclusive);
    assert_eq!(Credit(u64::MAX).join(Credit(1)), Exclusive);
    assert_eq!(Credit(3).join(Shared), Exclusive);
    assert_eq!(Shared.join(Credit(3)), Exclusive);
}

#[test]
fn credits_and_debits_overlap_and_count_every_pending_amount() {
    let locks = manager();
    locks
        .acquire(A, &[(5, LockMode::Credit(10))], LockPolicy::NoWait)
        .unwrap();
    locks
        .acquire(B, &[(5, LockMode::Credit(32))], LockPolicy::NoWait)
        .unwrap();
    locks
        .acquire(D, &[(5, LockMode::Debit(7))], LockPolicy::NoWait)
        .unwrap();
    let pending = |credits, debits| Pending { credits, debits };
    assert_eq!(locks.pending(5), pending(42, 7));
    assert_eq!(locks.pending(6), pending(0, 0));
    assert_eq!(
        locks.acquire(C, &exclusive(&[5]), LockPolicy::NoWait),
        conflict(5, A)
    );
    assert_eq!(
        locks.acquire(C, &shared(&[5]), LockPolicy::NoWait),
        conflict(5, A)
    );
    locks.release_all(A);
    assert_eq!(locks.pending(5), pending(32, 7));
    locks.release_all(B);
    locks.release_all(D);
    assert_eq!(locks.pending(5), pending(0, 0));
    locks
        .acquire(C, &exclusive(&[5]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(
        locks.acquire(A, &[(5, LockMode::Credit(1))], LockPolicy::NoWait),
        conflict(5, C)
    );
}

#[test]
fn compatibility_is_enforced() {
    let locks = manager();
    locks.acquire(A, &shared(&[5]), LockPolicy::NoWait).unwrap();
    locks.acquire(B, &shared(&[5]), LockPolicy::NoWait).unwrap();
    assert_eq!(
        locks.acquire(C, &exclusive(&[5]), LockPolicy::NoWait),
        conflict(5, A)
    );
    locks.release_all(A);
    assert_eq!(
        locks.acquire(C, &exclusive(&[5]), LockPolicy::NoWait),
        conflict(5, B)
    );
    locks.release_all(B);
    locks
        .acquire(C, &exclusive(&[5]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(
        locks.acquire(A, &shared(&[5]), LockPolicy::NoWait),
        conflict(5, C)
    );
}

#[test]
fn sequential_ids_spread_over_stripes() {
    let stripe_count = 64;
    let per_stripe = 100;
    let locks = LockManager::new(stripe_count);
    let mut counts = vec![0_u32; stripe_count];
    for account in 0..(stripe_count * per_stripe) as u64 {
        counts[stripe_index(mix(account), locks.stripe_mask)] += 1;
    }
    for (stripe, &count) in counts.iter().enumerate() {
        assert!(
            (50..=150).contains(&count),
            "stripe {stripe} got {count} of {per_stripe} expected"
        );
    }
}

#[test]
fn acquire_locks_in_account_id_order() {
    let locks = manager();
    locks
        .acquire(A, &exclusive(&[3, 9]), LockPolicy::NoWait)
        .unwrap();
    // Asked for 9 first, but 3 is locked first: the conflict is reported there.
    assert_eq!(
        locks.acquire(B, &exclusive(&[9, 3]), LockPolicy::NoWait),
        conflict(3, A)
    );
}

#[test]
fn duplicate_accounts_take_the_join_of_their_modes() {
    let locks = manager();
    let request = [
        (5, LockMode::Shared),
        (5, LockMode::Exclusive),
        (5, LockMode::Shared),
    ];
    locks.acquire(A, &request, LockPolicy::NoWait).unwrap();
    assert_eq!(locks.mode_held(A, 5), Some(LockMode::Exclusive));
    assert_eq!(locks.release_all(A), 1);
}

#[test]
fn conflict_releases_what_the_call_took() {
    let locks = manager();
    locks
        .acquire(A, &exclusive(&[7]), LockPolicy::NoWait)
        .unwrap();
    locks
        .acquire(B, &exclusive(&[2]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(
        locks.acquire(B, &exclusive(&[1, 4, 7, 10]), LockPolicy::NoWait),
        conflict(7, A)
    );
    for account in [1, 4, 10] {
        assert_eq!(locks.mode_held(B, account), None);
    }
    // What B held before the failed call, it still holds.
    assert_eq!(locks.mode_held(B, 2), Some(LockMode::Exclusive));
    locks
        .acquire(C, &exclusive(&[1, 4, 10]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(locks.release_all(B), 1);
}

#[test]
fn failed_upgrade_keeps_the_previous_mode() {
    let locks = manager();
    locks.acquire(A, &shared(&[5]), LockPolicy::NoWait).unwrap();
    locks.acquire(B, &shared(&[5]), LockPolicy::NoWait).unwrap();
    assert_eq!(
        locks.acquire(B, &exclusive(&[2, 5]), LockPolicy::NoWait),
        conflict(5, A)
    );
    assert_eq!(locks.mode_held(B, 5), Some(LockMode::Shared));
    assert_eq!(locks.mode_held(B, 2), None);
    // Once alone, the upgrade succeeds and does not count the account twice.
    assert_eq!(locks.release_all(A), 1);
    locks
        .acquire(B, &exclusive(&[5]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(locks.mode_held(B, 5), Some(LockMode::Exclusive));
    assert_eq!(locks.release_all(B), 1);
}

#[test]
fn reacquiring_held_locks_changes_nothing() {
    let locks = manager();
    locks
        .acquire(A, &exclusive(&[1, 2]), LockPolicy::NoWait)
        .unwrap();
    locks
        .acquire(A, &shared(&[1, 2]), LockPolicy::NoWait)
        .unwrap();
    locks
        .acquire(A, &exclusive(&[2, 3]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(locks.mode_held(A, 1), Some(LockMode::Exclusive));
    assert_eq!(locks.release_all(A), 3);
}

#[test]
fn release_all_is_idempotent() {
    let locks = manager();
    assert_eq!(locks.release_all(A), 0);
    locks
        .acquire(A, &exclusive(&[1, 2]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(locks.release_all(A), 2);
    assert_eq!(locks.release_all(A), 0);
    locks
        .acquire(B, &exclusive(&[1, 2]), LockPolicy::NoWait)
        .unwrap();
}

#[test]
fn empty_request_succeeds_and_holds_nothing() {
    let locks = manager();
    locks.acquire(A, &[], LockPolicy::NoWait).unwrap();
    assert_eq!(locks.release_all(A), 0);
}

#[test]
fn too_many_accounts_are_rejected() {
    let locks = manager();
    let too_many: Vec<u64> = (0..=LOCK_REQUEST_ACCOUNTS_MAX as u64).collect();
    assert_eq!(
        locks.acquire(A, &exclusive(&too_many), LockPolicy::NoWait),
        Err(LockError::TooManyAccounts {
            accounts_count: LOCK_REQUEST_ACCOUNTS_MAX + 1
        })
    );
    // The bound is on what one transaction holds in total, across calls.
    let first_half: Vec<u64> = (0..LOCK_REQUEST_ACCOUNTS_MAX as u64).collect();
    locks
        .acquire(A, &exclusive(&first_half), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(
        locks.acquire(A, &exclusive(&[1000]), LockPolicy::NoWait),
        Err(LockError::TooManyAccounts {
            accounts_count: LOCK_REQUEST_ACCOUNTS_MAX + 1
        })
    );
    assert_eq!(locks.mode_held(A, 1000), None);
    assert_eq!(locks.release_all(A), LOCK_REQUEST_ACCOUNTS_MAX);
}

#[test]
fn recovery_retakes_locks_with_no_wait() {
    // A restarted participant re-takes the locks of its in-doubt transactions on an empty
    // table, then releases each by id when its decision arrives.
    let locks = manager();
    let in_doubt = [(10_u128, [1_u64, 2]), (11, [3, 4]), (12, [2_000_000, 7])];
    for (transaction_id, accounts) in in_doubt {
        locks
            .acquire(transaction_id, &exclusive(&accounts), LockPolicy::NoWait)
            .unwrap();
    }
    assert_eq!(
        locks.acquire(A, &exclusive(&[4]), LockPolicy::NoWait),
        conflict(4, 11)
    );
    for (transaction_id, _) in in_doubt {
        assert_eq!(locks.release_all(transaction_id), 2);
    }
    locks
        .acquire(
            A,
            &exclusive(&[1, 2, 3, 4, 7, 2_000_000]),
            LockPolicy::NoWait,
        )
        .unwrap();
}

#[test]
fn release_wakes_a_bounded_waiter() {
    let locks = manager();
    locks
        .acquire(A, &exclusive(&[1]), LockPolicy::NoWait)
        .unwrap();
    thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let deadline = Instant::now() + WAIT_LONG;
            locks.acquire(B, &exclusive(&[1, 2]), LockPolicy::BoundedWait { deadline })
        });
        wait_for_waiter(&locks, 1);
        locks.release_all(A);
        assert_eq!(waiter.join().unwrap(), Ok(()));
    });
    assert_eq!(locks.mode_held(B, 1), Some(LockMode::Exclusive));
    assert_eq!(locks.mode_held(B, 2), Some(LockMode::Exclusive));
}

#[test]
fn bounded_wait_times_out_with_a_conflict() {
    let locks = manager();
    locks
        .acquire(A, &exclusive(&[3]), LockPolicy::NoWait)
        .unwrap();
    let deadline = Instant::now() + WAIT_SHORT;
    let policy = LockPolicy::BoundedWait { deadline };
    assert_eq!(
        locks.acquire(B, &exclusive(&[1, 3]), policy),
        conflict(3, A)
    );
    assert_eq!(locks.mode_held(B, 1), None);
    assert_eq!(locks.waiters_count(3), 0);
}

#[test]
fn wait_die_rule() {
    assert!(wait_die_may_wait(1, 2), "older waits for younger");
    assert!(!wait_die_may_wait(2, 1), "younger dies");
    assert!(
        !wait_die_may_wait(2, 2),
        "equal dies, so no two wait for each other"
    );
    assert!(
        !wait_die_may_wait(5, TIMESTAMP_OLDEST),
        "never waits for non-wait-die holders"
    );
}

#[test]
fn wait_die_younger_dies_without_waiting() {
    let locks = manager();
    let old = LockPolicy::WaitDie {
        timestamp: 100,
        deadline: Instant::now() + WAIT_LONG,
    };
    let young = LockPolicy::WaitDie {
        timestamp: 200,
        deadline: Instant::now() + WAIT_LONG,
    };
    locks.acquire(A, &exclusive(&[1]), old).unwrap();
    // With a long deadline, only dying makes this return.
    assert_eq!(locks.acquire(B, &exclusive(&[1]), young), conflict(1, A));
    // A lock taken without wait-die counts as the oldest holder.
    locks
        .acquire(C, &exclusive(&[2]), LockPolicy::NoWait)
        .unwrap();
    assert_eq!(locks.acquire(A, &exclusive(&[2]), old), conflict(2, C));
}

#[test]
fn wait_die_older_waits_and_is_woken() {
    let locks = manager();
    let young = LockPolicy::WaitDie {
        timestamp: 200,
        deadline: Instant::now() + WAIT_LONG,
    };
    locks.acquire(B, &exclusive(&[1]), young).unwrap();
    thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let old = LockPolicy::WaitDie {
                timestamp: 100,
                deadline: Instant::now() + WAIT_LONG,
            };
            locks.acquire(A, &exclusive(&[1]), old)
        });
        wait_for_waiter(&locks, 1);
        locks.release_all(B);
        assert_eq!(waiter.join().unwrap(), Ok(()));
    });
    assert_eq!(locks.mode_held(A, 1), Some(LockMode::Exclusive));
}

/// Threads lock random subsets of a few hot accounts under random policies; each exclusive
/// holder increments the account's counter with a separate load and store, and each shared
/// holder checks the counter does not move. Lost updates or a moving counter mean broken
/// mutual exclusion; a thread that never finishes means a deadlock.
#[test]
fn stress_mutual_exclusion_and_no_deadlock() {
    const THREADS_COUNT: usize = 4;
    const ACCOUNTS_HOT_COUNT: u64 = 5;
    const ITERATIONS_PER_THREAD: usize = 20_000;
    const REQUEST_ACCOUNTS_MAX: usize = 3;
    const FINISH_WAIT: Duration = Duration::from_secs(120);

    let seed = crate::testing::test_seed("lock stress test");

    let locks = Arc::new(manager());
    let counters: Arc<Vec<AtomicU64>> =
        Arc::new((0..ACCOUNTS_HOT_COUNT).map(|_| AtomicU64::new(0)).collect());
    let timestamps = Arc::new(AtomicU64::new(1));
    let mut threads = Vec::new();
    for thread_index in 0..THREADS_COUNT {
        let locks = Arc::clone(&locks);
        let counters = Arc::clone(&counters);
        let timestamps = Arc::clone(&timestamps);
        threads.push(thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed ^ mix(thread_index as u64));
            let mut increments = vec![0_u64; ACCOUNTS_HOT_COUNT as usize];
            let mut conflicts = 0_u64;
            for iteration in 0..ITERATIONS_PER_THREAD {
                let transaction_id = ((thread_index as u128) << 64) | iteration as u128;
                let mut accounts: Vec<u64> = (0..ACCOUNTS_HOT_COUNT).collect();
                let accounts_count = rng.random_range(1..=REQUEST_ACCOUNTS_MAX);
                let mut request = Vec::new();
                for _ in 0..accounts_count {
                    let account = accounts.swap_remove(rng.random_range(0..accounts.len()));
                    let mode = match rng.random_range(0..10) {
                        0 | 1 => LockMode::Shared,
                        2 | 3 => LockMode::Credit(1),
                        4 | 5 => LockMode::Debit(1),
                        _ => LockMode::Exclusive,
                    };
                    request.push((account, mode));
                }
                let deadline = Instant::now() + Duration::from_micros(rng.random_range(0..2_000));
                let policy = match rng.random_range(0..3) {
                    0 => LockPolicy::NoWait,
                    1 => LockPolicy::BoundedWait { deadline },
                    _ => LockPolicy::WaitDie {
                        timestamp: timestamps.fetch_add(1, Ordering::Relaxed),
                        deadline,
                    },
                };
                match locks.acquire(transaction_id, &request, policy) {
                    Ok(()) => {}
                    Err(LockError::Conflict { .. }) => {
                        conflicts += 1;
                        assert_eq!(locks.release_all(transaction_id), 0);
                        continue;
                    }
                    Err(error) => panic!("unexpected {error}"),
                }
                let yield_inside = rng.random_bool(0.1);
                for &(account, mode) in &request {
                    let counter = &counters[account as usize];
                    let before = counter.load(Ordering::Relaxed);
                    if yield_inside {
                        thread::yield_now();
                    }
                    match mode {
                        LockMode::Exclusive => {
                            counter.store(before + 1, Ordering::Relaxed);
                            increments[account as usize] += 1;
                        }
                        // Credits and debits overlap: their changes must not be lost, so they
                        // add atomically (the test counts debits as additions too).
                        LockMode::Credit(amount) | LockMode::Debit(amount) => {
                            counter.fetch_add(amount, Ordering::Relaxed);
                            increments[account as usize] += amount;
                        }
                        LockMode::Shared => {
                            assert_eq!(counter.load(Ordering::Relaxed), before, "{account} moved");
                        }
                    }
                }
                assert_eq!(locks.release_all(transaction_id), request.len());
            }
            (increments, conflicts)
        }));
    }
    let mut increments_expected = vec![0_u64; ACCOUNTS_HOT_COUNT as usize];
    let mut conflicts_total = 0;
    // Polled rather than joined in order, so a panic in any thread fails the test at once and a
    // thread stuck for good fails it after a bound instead of hanging it.
    let deadline = Instant::now() + FINISH_WAIT;
    while !threads.is_empty() {
        assert!(
            Instant::now() < deadline,
            "a stress thread did not finish: deadlock or lost wakeup"
        );
        let Some(index) = threads.iter().position(|thread| thread.is_finished()) else {
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        let (increments, conflicts) = match threads.swap_remove(index).join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        for (expected, increment) in increments_expected.iter_mut().zip(increments) {
            *expected += increment;
        }
        conflicts_total += conflicts;
    }
    for (account, expected) in increments_expected.iter().enumerate() {
        assert_eq!(
            counters[account].load(Ordering::Relaxed),
            *expected,
            "account {account}"
        );
    }
    eprintln!("lock stress test: {conflicts_total} conflicts, increments {increments_expected:?}");
}
