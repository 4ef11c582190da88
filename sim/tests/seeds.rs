//! Runs the deterministic cluster simulation over many seeds (`TALLY_SIM_SEEDS`, default 200),
//! checks that a seed replays exactly, and that deliberate bugs are caught.

use engine::testing::test_seed;
use sim::{Mutation, Scenario, Simulation, run_seed};

fn seeds() -> u64 {
    std::env::var("TALLY_SIM_SEEDS")
        .map(|value| value.parse().expect("TALLY_SIM_SEEDS must be a count"))
        .unwrap_or(300)
}

/// `TALLY_SIM_TRANSFERS` replays a shrunk failure at its length.
fn transfers() -> Option<usize> {
    std::env::var("TALLY_SIM_TRANSFERS")
        .ok()
        .map(|value| value.parse().expect("TALLY_SIM_TRANSFERS must be a count"))
}

#[test]
fn simulated_clusters_keep_every_invariant() {
    let replay = std::env::var("TALLY_SEED").is_ok();
    let first = test_seed("sim");
    let count = if replay { 1 } else { seeds() };
    let mut totals = sim::Stats::default();
    for seed in first..first + count {
        match run_seed(seed, transfers(), Mutation::None) {
            Ok(stats) => {
                totals.events += stats.events;
                totals.messages_sent += stats.messages_sent;
                totals.crashes += stats.crashes;
                totals.strikes += stats.strikes;
                totals.torn_crashes += stats.torn_crashes;
                totals.partitions += stats.partitions;
                totals.messages_dropped += stats.messages_dropped;
                totals.messages_duplicated += stats.messages_duplicated;
                totals.transfers_committed += stats.transfers_committed;
                totals.transfers_aborted += stats.transfers_aborted;
                totals.resends_of_answered += stats.resends_of_answered;
                totals.deposits_and_withdrawals_applied += stats.deposits_and_withdrawals_applied;
                totals.deposits_and_withdrawals_refused += stats.deposits_and_withdrawals_refused;
                totals.consistent_reads += stats.consistent_reads;
                totals.reads_refused += stats.reads_refused;
                totals.settle_time = totals.settle_time.max(stats.settle_time);
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!("{count} seeds from {first}: {totals:?}");
    assert!(
        totals.transfers_committed > 0,
        "the simulation committed nothing"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let seed = test_seed("replay");
    let run = |seed| {
        let mut simulation = Simulation::new(seed, Scenario::from_seed(seed), Mutation::None);
        let result = simulation.run();
        (
            result,
            simulation.trace(),
            format!("{:?}", simulation.stats),
        )
    };
    let (first, first_trace, first_stats) = run(seed);
    let (second, second_trace, second_stats) = run(seed);
    assert_eq!(first, second);
    assert_eq!(first_stats, second_stats);
    assert_eq!(first_trace, second_trace);
}

/// Each deliberate bug is found within a bounded number of seeds.
#[test]
fn deliberate_bugs_are_caught() {
    let first = test_seed("mutations");
    for mutation in [
        Mutation::CommitOnNoVote,
        Mutation::NeverInquire,
        Mutation::ForgetUnendedOnRestart,
    ] {
        let caught = (first..first + 300).position(|seed| run_seed_quick(seed, mutation));
        match caught {
            Some(seeds) => println!("{mutation:?}: caught after {} seeds", seeds + 1),
            None => panic!("{mutation:?}: not caught in 300 seeds"),
        }
    }
}

/// Whether the mutated run fails (without shrinking).
fn run_seed_quick(seed: u64, mutation: Mutation) -> bool {
    let mut simulation = Simulation::new(seed, Scenario::from_seed(seed), mutation);
    simulation.run().is_err()
}

#[test]
fn a_failure_is_shrunk_and_replayable() {
    let seed = (0..500)
        .find(|seed| run_seed_quick(*seed, Mutation::CommitOnNoVote))
        .expect("the mutation is caught");
    let failure = run_seed(seed, None, Mutation::CommitOnNoVote).expect_err("fails");
    let shrunk = run_seed(seed, Some(failure.transfers), Mutation::CommitOnNoVote)
        .expect_err("the shrunk run fails too");
    assert_eq!(shrunk.transfers, failure.transfers);
    assert!(failure.transfers <= Scenario::from_seed(seed).transfers);
    println!("{failure}");
}
