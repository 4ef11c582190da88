//! Crash points for tests: with the `failpoints` feature, `hit("name")` kills the process with
//! SIGKILL when `TALLY_FAILPOINTS` (a comma-separated list) names that point, exactly as `kill -9`
//! would at that protocol step. Without the feature every call compiles to nothing.

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
