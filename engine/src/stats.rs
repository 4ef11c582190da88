//! Counters that the hot paths bump with relaxed atomic adds and an exporter reads when asked
//! (the node's `/metrics`): no lock is taken to record.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: 10 µs doubling to about 10.5 s (an
/// fdatasync here takes about 0.1 ms, a transfer a few milliseconds), then `+Inf`.
pub const LATENCY_BOUNDS_SECONDS: [f64; 21] = {
    let mut bounds = [0.0; 21];
    let mut index = 0;
    let mut bound = 0.000_01;
    while index < bounds.len() {
        bounds[index] = bound;
        bound *= 2.0;
        index += 1;
    }
    bounds
};

/// A latency histogram with fixed buckets ([`LATENCY_BOUNDS_SECONDS`] and one past them).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// What a [`LatencyHistogram`] held when read: per-bucket (not cumulative) counts, the last one
/// past every bound.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let index = LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BOUNDS_SECONDS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        LatencySnapshot {
            count: buckets.iter().sum(),
            buckets,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(10));
        histogram.observe(Duration::from_micros(11));
        histogram.observe(Duration::from_millis(3));
        histogram.observe(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 4);
        assert_eq!(snapshot.buckets[0], 1, "10 µs is within the first bound");
        assert_eq!(snapshot.buckets[1], 1, "11 µs is within 20 µs");
        // 3 ms: 10 µs × 2^9 = 5.12 ms is the first bound above it.
        assert_eq!(snapshot.buckets[9], 1);
        assert_eq!(
            snapshot.buckets[LATENCY_BOUNDS_SECONDS.len()],
            1,
            "past every bound"
        );
        assert!((snapshot.sum_seconds - 60.003_021).abs() < 1e-9);
        assert!((LATENCY_BOUNDS_SECONDS[20] - 10.485_76).abs() < 1e-9);
    }
}
