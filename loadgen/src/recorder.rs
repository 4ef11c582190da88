//! What the clients record into: latency histograms and counts, overall and for the current
//! second, which the ticker turns into the timeline and the progress line.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::lock;
use crate::report::TimelineRow;

/// Largest latency the histograms hold (60 s, in microseconds); longer ones are clamped.
const LATENCY_MAX_MICROS: u64 = 60_000_000;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, 3).expect("valid histogram bounds")
}

/// What every client records into, shared; the ticker takes a row out of it every second.
pub(crate) struct Recorder {
    pub(crate) total: Histogram<u64>,
    pub(crate) interval: Histogram<u64>,
    pub(crate) committed: u64,
    pub(crate) aborted: BTreeMap<String, u64>,
    pub(crate) unknown: u64,
    pub(crate) failed: u64,
    pub(crate) other_ops: u64,
    /// This second's counts.
    pub(crate) second: [u64; 4],
    pub(crate) faults_this_second: Vec<String>,
}

impl Recorder {
    pub(crate) fn new() -> Recorder {
        Recorder {
            total: new_histogram(),
            interval: new_histogram(),
            committed: 0,
            aborted: BTreeMap::new(),
            unknown: 0,
            failed: 0,
            other_ops: 0,
            second: [0; 4],
            faults_this_second: Vec::new(),
        }
    }

    pub(crate) fn latency(&mut self, micros: u64) {
        let micros = micros.clamp(1, LATENCY_MAX_MICROS);
        self.total.record(micros).expect("clamped into range");
        self.interval.record(micros).expect("clamped into range");
    }
}

/// Every second until `duration`, or until `interrupted` resolves (the last row is then a part
/// of a second): a timeline row and an interval histogram, and the progress line (rewritten in
/// place on a terminal, one line per second otherwise).
pub(crate) async fn tick(
    recorder: &Mutex<Recorder>,
    started: Instant,
    duration: Duration,
    interrupted: impl std::future::Future,
) -> (Vec<TimelineRow>, Vec<Histogram<u64>>) {
    let mut interrupted = std::pin::pin!(interrupted);
    let mut stopping = false;
    let terminal = std::io::stdout().is_terminal();
    let mut rows = Vec::new();
    let mut intervals = Vec::new();
    let mut second = 0u64;
    loop {
        second += 1;
        let due = started + Duration::from_secs(second).min(duration);
        if !stopping {
            tokio::select! {
                () = tokio::time::sleep_until(due.into()) => {}
                _ = &mut interrupted => stopping = true,
            }
        }
        let (row, interval, totals) = {
            let mut recorder = lock(recorder);
            let interval = std::mem::replace(&mut recorder.interval, new_histogram());
            let [committed, aborted, unknown, failed] = std::mem::take(&mut recorder.second);
            let row = TimelineRow {
                second,
                committed,
                aborted,
                unknown,
                failed,
                p50_us: interval.value_at_quantile(0.5),
                p99_us: interval.value_at_quantile(0.99),
                max_us: interval.max(),
                faults: std::mem::take(&mut recorder.faults_this_second),
            };
            let aborted_total: u64 = recorder.aborted.values().sum();
            (
                row,
                interval,
                (aborted_total, recorder.unknown + recorder.failed),
            )
        };
        let line = format!(
            "[{:>5.1} s] {:>7} committed/s  p99 {:>8.3} ms  aborted {:>7}  unknown+failed {:>5}  faults {}",
            started.elapsed().as_secs_f64(),
            row.committed,
            row.p99_us as f64 / 1000.0,
            totals.0,
            totals.1,
            if row.faults.is_empty() {
                "-".to_owned()
            } else {
                row.faults.join("; ")
            }
        );
        if terminal {
            print!("\r{line}\x1b[K");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        } else {
            println!("{line}");
        }
        rows.push(row);
        intervals.push(interval);
        if stopping || started.elapsed() >= duration {
            if terminal {
                println!();
            }
            return (rows, intervals);
        }
    }
}
