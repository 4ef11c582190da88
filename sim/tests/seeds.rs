//! Runs the deterministic cluster simulation over many seeds (`TALLY_SIM_SEEDS`, default 60),
//! checks that a seed replays exactly, and that deliberate bugs are caught.

use engine::testing::test_seed;
use sim::{Mutation, Scenario, Simulation, run_seed};

fn seeds() -> u64 {
    std::env::var("TALLY_SIM_SEEDS")
        .map(|value| value.parse().expect("TALLY_SIM_SEEDS must be a count"))
        .unwrap_or(60)
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
            Ok(stats) => totals.add(&stats),
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

/// Seeds a deliberate bug must be caught within (each is caught in a few seeds on average; see
/// ARCHITECTURE.md for the rates measured).
const MUTATION_SEEDS_MAX: u64 = 60;

/// Each deliberate bug is found within a bounded number of seeds; a replica that forgets its
/// vote is found by the check it breaks: two leaders in one term.
#[test]
fn deliberate_bugs_are_caught() {
    let first = test_seed("mutations");
    for (mutation, expected) in [
        (Mutation::CommitOnNoVote, ""),
        (Mutation::ForgetUnendedOnRestart, ""),
        (Mutation::ForgetVoteOnRestart, "two leaders in term"),
        (Mutation::AcknowledgeBeforeSync, ""),
        (Mutation::CommitAtOwnClock, "a commit seen on one side only"),
    ] {
        let caught = (first..first + MUTATION_SEEDS_MAX)
            .find_map(|seed| run_seed_quick(seed, mutation).err().map(|why| (seed, why)));
        match caught {
            Some((seed, why)) => {
                println!(
                    "{mutation:?}: caught after {} seeds: {why}",
                    seed - first + 1
                );
                assert!(
                    why.contains(expected),
                    "{mutation:?} (seed {seed}) was caught, but not as {expected:?}: {why}"
                );
            }
            None => panic!("{mutation:?}: not caught in {MUTATION_SEEDS_MAX} seeds from {first}"),
        }
    }
}

/// The mutated run's result (without shrinking).
fn run_seed_quick(seed: u64, mutation: Mutation) -> Result<(), String> {
    let mut simulation = Simulation::new(seed, Scenario::from_seed(seed), mutation);
    simulation.run()
}

#[test]
fn a_failure_is_shrunk_and_replayable() {
    let seed = (0..500)
        .find(|seed| run_seed_quick(*seed, Mutation::CommitOnNoVote).is_err())
        .expect("the mutation is caught");
    let failure = run_seed(seed, None, Mutation::CommitOnNoVote).expect_err("fails");
    let shrunk = run_seed(seed, Some(failure.transfers), Mutation::CommitOnNoVote)
        .expect_err("the shrunk run fails too");
    assert_eq!(shrunk.transfers, failure.transfers);
    assert!(failure.transfers <= Scenario::from_seed(seed).transfers);
    println!("{failure}");
}
