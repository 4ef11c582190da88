//! Crash points for tests: with the `failpoints` feature, `hit("name")` kills the process with
//! SIGKILL when `TALLY_FAILPOINTS` (a comma-separated list) names that point, exactly as `kill -9`
//! would at that protocol step. Without the feature every call compiles to nothing.
//!
//! The feature also turns on the engine's injected disk faults (`TALLY_FAIL_WAL_WRITE_AFTER`,
//! `TALLY_FAIL_WAL_SYNC_AFTER`: see `engine/src/wal/faults.rs`) and lets `TALLY_WAL_SEGMENT_BYTES`
//! set the WAL's segment size (see [`wal_options`]).

use engine::wal::WalOptions;

/// Every point, so tests and the code agree on the names.
pub mod points {
    /// Coordinator: every vote is in and every yes is durable at its participant; no decision is
    /// logged yet.
    pub const COORDINATOR_AFTER_VOTES: &str = "coordinator-after-votes";
    /// Coordinator: the decisions are durable; no client has heard them and no participant has
    /// been told.
    pub const COORDINATOR_AFTER_DECISION: &str = "coordinator-after-decision";
    /// Participant: a decision batch arrived for transactions it prepared; nothing applied yet.
    pub const PARTICIPANT_BEFORE_DECISION: &str = "participant-before-decision";
    /// A deposit or withdrawal is durable and applied; its answer is not sent yet.
    pub const MOVEMENT_BEFORE_ANSWER: &str = "movement-before-answer";
}

#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("TALLY_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|point| !point.is_empty())
            .map(str::to_owned)
            .collect()
    });
    if armed.iter().any(|point| point == name) {
        eprintln!("tally: failpoint {name} hit: killing this process with SIGKILL");
        // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// The node's WAL options: the defaults. With the `failpoints` feature, `TALLY_WAL_SEGMENT_BYTES`
/// sets the segment size, so that tests filling a small disk see segments rotate (and a spare
/// segment fail to be made) after a few hundred records instead of 64 MiB of them.
pub fn wal_options() -> anyhow::Result<WalOptions> {
    #[cfg(feature = "failpoints")]
    if let Ok(value) = std::env::var("TALLY_WAL_SEGMENT_BYTES") {
        use anyhow::Context;
        let segment_size_bytes = value.trim().parse().with_context(|| {
            format!("TALLY_WAL_SEGMENT_BYTES must be a size in bytes, not {value:?}")
        })?;
        return Ok(WalOptions {
            segment_size_bytes,
            ..WalOptions::default()
        });
    }
    Ok(WalOptions::default())
}
