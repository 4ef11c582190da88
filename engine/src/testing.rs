//! Helpers for Tally's randomized tests, shared by the engine's own tests and other crates' tests.

/// The seed for a randomized test: `TALLY_SEED` if set, otherwise a fresh one. Printed either way
/// (test output is shown on failure), so any failing run can be replayed with `TALLY_SEED=N`.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("TALLY_SEED") {
        Ok(value) => value
            .parse()
            .expect("TALLY_SEED must be an unsigned 64-bit integer"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                elapsed.as_nanos() as u64 ^ u64::from(std::process::id())
            }),
    };
    println!("{test}: seed {seed} (replay with TALLY_SEED={seed})");
    seed
}

/// Engine options for a single-threaded driver (the simulator, the power-loss test): local
/// operations never wait for a lock, since nothing else would release it and a wait would read
/// the real clock.
pub fn single_threaded_engine_options() -> crate::EngineOptions {
    crate::EngineOptions {
        lock_wait: std::time::Duration::ZERO,
        ..crate::EngineOptions::default()
    }
}

/// WAL options with small segments, so that groups cross segment boundaries, checkpoints delete
/// segments and recovery meets rotations often.
pub fn small_segment_wal_options(segment_size_bytes: u64) -> crate::wal::WalOptions {
    crate::wal::WalOptions {
        segment_size_bytes,
        ..crate::wal::WalOptions::default()
    }
}
