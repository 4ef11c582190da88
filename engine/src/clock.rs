//! The hybrid logical clock that orders commits against reads across shards.
//!
//! A consistent multi-account read (and the audit) reads every shard "at" one timestamp `S`
//! instead of taking locks that writers would trip on. For that to be a consistent cut, every
//! change gets a timestamp, and a shard answers a read at `S` with exactly the changes whose
//! timestamps are at most `S`:
//! - a one-phase change (deposit, withdrawal, same-shard transfer) is stamped with the shard's
//!   clock read after its locks are taken;
//! - a cross-shard commit is stamped once, by its coordinator, later than every participant's
//!   clock read after that participant took the transaction's locks (the votes carry it), and
//!   that one timestamp travels with the decision (and is logged with it, so a resent decision
//!   carries the same one): every participant applies it at the same timestamp;
//! - a read at `S` first pushes the shard's clock to `S`, so that everything locked from then on
//!   is stamped later than `S`, and waits for the changes that held locks on its accounts when it
//!   arrived (those may still commit at or below `S`); then it reads the applied balances and
//!   takes back the changes stamped after `S`, kept for a while in memory (`crate::versions`).
//!
//! The clock is hybrid: its readings follow the physical clock (microseconds since the Unix epoch)
//! and never go back, and hearing a later timestamp from another node moves it ahead. This is the
//! Clock-SI construction (Du, Elnikety, Zwaenepoel, 2013) with HLC timestamps (Kulkarni et al.,
//! 2014), without the commit wait: reads that must see every commit finished before they began
//! first ask each shard for its clock (`Engine::read_fence` then its `reached`), which is at
//! least the timestamp of everything already committed there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::model::Timestamp;

/// How far apart two nodes' physical clocks may be. A shard that starts serving (a restart, a new
/// leader) pushes its clock this far ahead of its physical clock, so that everything it applied
/// before, stamped by whichever clock, is below the first timestamp it can read at.
pub const MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);

/// A node's hybrid logical clock. Shared by every engine of the node.
pub struct Hlc {
    latest: AtomicU64,
    physical: Box<dyn Fn() -> Timestamp + Send + Sync>,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Hlc")
            .field("latest", &self.latest.load(Ordering::Relaxed))
            .finish()
    }
}

impl Default for Hlc {
    fn default() -> Self {
        Self::system()
    }
}

impl Hlc {
    /// A clock over the system's wall clock.
    pub fn system() -> Self {
        Self::with_physical(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_micros() as Timestamp)
        })
    }

    /// A clock over another physical time source (the simulator's).
    pub fn with_physical(physical: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Self {
            latest: AtomicU64::new(0),
            physical: Box::new(physical),
        }
    }

    /// A new timestamp, later than every one this clock gave or heard of.
    pub fn now(&self) -> Timestamp {
        let physical = (self.physical)();
        let previous = self
            .latest
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |latest| {
                Some(physical.max(latest + 1))
            })
            .expect("the update always returns Some");
        physical.max(previous + 1)
    }

    /// Hears of a timestamp: every later reading is above it.
    pub fn observe(&self, timestamp: Timestamp) {
        self.latest.fetch_max(timestamp, Ordering::SeqCst);
    }

    /// The physical clock, for pushing the clock ahead of it (`MAX_CLOCK_OFFSET`).
    pub fn physical(&self) -> Timestamp {
        (self.physical)()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn readings_increase_follow_the_physical_clock_and_pass_what_was_heard() {
        let physical = Arc::new(AtomicU64::new(1_000));
        let source = physical.clone();
        let clock = Hlc::with_physical(move || source.load(Ordering::SeqCst));
        assert_eq!(clock.now(), 1_000);
        // The physical clock stands still: readings still increase.
        assert_eq!(clock.now(), 1_001);
        physical.store(5_000, Ordering::SeqCst);
        assert_eq!(clock.now(), 5_000);
        clock.observe(9_000);
        assert_eq!(clock.now(), 9_001);
        // Hearing of an earlier timestamp changes nothing.
        clock.observe(10);
        assert_eq!(clock.now(), 9_002);
        // The physical clock going back changes nothing either.
        physical.store(3, Ordering::SeqCst);
        assert_eq!(clock.now(), 9_003);
    }
}
