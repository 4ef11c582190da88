//! The files a load-generator run leaves behind: the latency percentile distribution (`.hgrm`,
//! the text of Java HdrHistogram's `outputPercentileDistribution`), the per-second interval log
//! (`.hlog`, what `HistogramLogProcessor` and the other HdrHistogram tools read), and the
//! per-second timeline as CSV. Pure functions over data: the caller opens the files.
//!
//! Latencies are recorded in microseconds; every file shows milliseconds, the unit people read
//! tail latency in, so the `.hgrm` values are divided by 1000 and the `.hlog` keeps microseconds
//! with a max-value divisor of 1000 (the HdrHistogram tools scale by it).
//!
//! `.hgrm` layout, exactly as Java writes it (`%12.3f %2.12f %10d %14.2f`, 3 being the
//! histogram's significant digits):
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        0.101 0.000000000000          1           1.00
//!        ...
//!       12.351 1.000000000000      50000
//! #[Mean    =        1.234, StdDeviation   =        0.567]
//! #[Max     =       12.351, Total count    =        50000]
//! #[Buckets =           16, SubBuckets     =         2048]
//! ```
//!
//! The last row (percentile 1) has no `1/(1-Percentile)` column, as in Java; the online plotter
//! skips it.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;

/// Microseconds (what the histograms hold) per millisecond (what the files show).
pub(crate) const MICROSECONDS_PER_MILLISECOND: f64 = 1000.0;
/// Percentile rows per half of the distance left to 100%, as HdrHistogram's tools default to.
const PERCENTILE_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Length of one interval of the `.hlog`: one histogram per second of the run.
const HLOG_INTERVAL: Duration = Duration::from_secs(1);
/// The `.hlog` format version Java's `HistogramLogWriter` writes with V2 compressed histograms.
const HLOG_FORMAT_VERSION: &str = "1.3";

/// One second of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimelineRow {
    /// Seconds since the start of the measured run; this row covers `[second, second + 1)`.
    pub second: u64,
    pub committed: u64,
    pub aborted: u64,
    pub unknown: u64,
    pub failed: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Faults that started or ended in this second, e.g. "kill node 2 start", "kill node 2 end".
    pub faults: Vec<String>,
}

/// A fault injected during a run, for the markers of the throughput chart.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultEvent {
    /// Seconds since the start of the measured run.
    pub at_seconds: f64,
    pub label: String,
    /// The node it hit (`None`: a fault that was not injected, its target unknown).
    pub node: Option<u32>,
}

/// One row of a percentile distribution.
struct PercentileRow {
    /// Highest value equivalent to the one at this percentile, in microseconds.
    value_us: u64,
    /// The percentile level iterated to, 0 to 100 (Java's unit, in which the steps are exact).
    percent: f64,
    /// Values at or below `value_us`.
    total_count: u64,
}

/// The rows Java HdrHistogram's `PercentileIterator` yields with 5 ticks per half distance: a row
/// each time the share of values at or below the current bucket reaches the next percentile
/// level, one row at the last bucket, then one at 100%.
///
/// Ported rather than taken from `Histogram::iter_quantiles`, which steps in fractions of 1: 0.1
/// is not exact in binary, its sums drift (0.7 + 0.05 = 0.7500000000000002), and a level that
/// Java reaches exactly is then missed. Java steps in percent, by 10, 5, 2.5, ..., all exact.
fn percentile_rows(histogram: &Histogram<u64>) -> Vec<PercentileRow> {
    let total = histogram.len();
    let mut rows = Vec::new();
    let mut percent_to_reach = 0.0f64;
    let mut total_count = 0u64;
    for bucket in histogram.iter_recorded() {
        total_count += bucket.count_at_value();
        let value_us = bucket.value_iterated_to();
        while (100.0 * total_count as f64) / total as f64 >= percent_to_reach {
            rows.push(PercentileRow {
                value_us,
                percent: percent_to_reach,
                total_count,
            });
            if total_count >= total {
                // The last bucket: one row at the level reached, then one at 100%.
                if percent_to_reach < 100.0 {
                    rows.push(PercentileRow {
                        value_us,
                        percent: 100.0,
                        total_count,
                    });
                }
                return rows;
            }
            // Same expression as Java, so the halvings (a floor) agree at 50%, 75%, 87.5%...
            let halvings = ((100.0 / (100.0 - percent_to_reach)).ln() / 2f64.ln()) as u32;
            let ticks = u64::from(PERCENTILE_TICKS_PER_HALF_DISTANCE) << (halvings.min(60) + 1);
            let next = percent_to_reach + 100.0 / ticks as f64;
            // Past about 45 halvings a step no longer changes the level: only 100% is left.
            percent_to_reach = if next > percent_to_reach { next } else { 100.0 };
        }
    }
    rows
}

/// The percentile distribution of `histogram` as (percentile 0..1, value in ms) points: the same
/// points `write_hgrm` writes, the last at percentile 1 (the max). Empty for an empty histogram.
pub fn percentile_points(histogram: &Histogram<u64>) -> Vec<(f64, f64)> {
    percentile_rows(histogram)
        .iter()
        .map(|row| {
            (
                row.percent / 100.0,
                row.value_us as f64 / MICROSECONDS_PER_MILLISECOND,
            )
        })
        .collect()
}

/// Sub-buckets per bucket, computed as HdrHistogram does (the Rust crate keeps it private): the
/// power of two that gives unit resolution up to 2 * 10^digits.
fn sub_bucket_count(significant_digits: u8) -> u64 {
    let largest_with_unit_resolution = 2.0 * 10f64.powi(i32::from(significant_digits));
    let magnitude = largest_with_unit_resolution.log2().ceil().max(1.0) as u32;
    1u64 << magnitude
}

/// Writes the HdrHistogram "percentile distribution" text exactly in the format of Java
/// HdrHistogram's `outputPercentileDistribution(out, 5, 1000.0)`: values in milliseconds
/// (recorded in microseconds), 5 ticks per half distance, the `#[Mean ...]`, `#[Max ...]` and
/// `#[Buckets ...]` footer. Loadable by the HdrHistogram online plotter and by
/// `hist::parse_hgrm`.
pub fn write_hgrm(histogram: &Histogram<u64>, out: &mut impl Write) -> io::Result<()> {
    let digits = usize::from(histogram.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    for row in percentile_rows(histogram) {
        let value_ms = row.value_us as f64 / MICROSECONDS_PER_MILLISECOND;
        let percentile = row.percent / 100.0;
        let total_count = row.total_count;
        if row.percent != 100.0 {
            let one_over = 1.0 / (1.0 - percentile);
            writeln!(
                out,
                "{value_ms:12.digits$} {percentile:2.12} {total_count:10} {one_over:14.2}"
            )?;
        } else {
            writeln!(
                out,
                "{value_ms:12.digits$} {percentile:2.12} {total_count:10}"
            )?;
        }
    }
    let mean_ms = histogram.mean() / MICROSECONDS_PER_MILLISECOND;
    let deviation_ms = histogram.stdev() / MICROSECONDS_PER_MILLISECOND;
    let max_ms = histogram.max() as f64 / MICROSECONDS_PER_MILLISECOND;
    writeln!(
        out,
        "#[Mean    = {mean_ms:12.digits$}, StdDeviation   = {deviation_ms:12.digits$}]"
    )?;
    writeln!(
        out,
        "#[Max     = {max_ms:12.digits$}, Total count    = {:12}]",
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_bucket_count(histogram.sigfig())
    )?;
    Ok(())
}

/// Writes an HdrHistogram interval log (`.hlog`): a comment naming the content, the format
/// version, `StartTime` and `BaseTime` (both `start_unix_seconds`), the legend, the max-value
/// divisor (1000: values are microseconds, the max column shows milliseconds), then one
/// V2-compressed histogram per element of `intervals`, the `i`th starting `i` seconds after
/// `BaseTime` and lasting 1 s. The histograms hold microseconds, so Java's `HistogramLogProcessor`
/// shows milliseconds with `-outputValueUnitRatio 1000` (its default, 10^6, suits nanoseconds).
pub fn write_hlog(
    start_unix_seconds: f64,
    intervals: &[Histogram<u64>],
    out: &mut impl Write,
) -> io::Result<()> {
    let since_epoch = Duration::try_from_secs_f64(start_unix_seconds).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("start time {start_unix_seconds} is not a time after the Unix epoch"),
        )
    })?;
    let start = UNIX_EPOCH + since_epoch;
    let mut serializer = V2DeflateSerializer::new();
    // Java writes the legend after the time headers; the builder cannot, so the headers come from
    // a first builder, the legend from us, then a second builder adds only the divisor line (the
    // readers skip comment lines wherever they are).
    IntervalLogWriterBuilder::new()
        .add_comment("[Tally loadgen: transfer latency in microseconds, one histogram per second]")
        .add_comment(&format!(
            "[Histogram log format version {HLOG_FORMAT_VERSION}]"
        ))
        .with_start_time(start)
        .with_base_time(start)
        .begin_log_with(&mut *out, &mut serializer)?;
    writeln!(
        out,
        "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\""
    )?;
    let mut log = IntervalLogWriterBuilder::new()
        .with_max_value_divisor(MICROSECONDS_PER_MILLISECOND)
        .begin_log_with(&mut *out, &mut serializer)?;
    for (second, interval) in intervals.iter().enumerate() {
        log.write_histogram(
            interval,
            Duration::from_secs(second as u64),
            HLOG_INTERVAL,
            None,
        )
        .map_err(|error| io::Error::other(format!("cannot write interval {second}: {error}")))?;
    }
    Ok(())
}

/// Writes the timeline as CSV: a header
/// `second,committed,aborted,unknown,failed,p50_ms,p99_ms,max_ms,faults`, then one line per row,
/// latencies in ms with 3 decimals, faults joined with `;` (quoted as RFC 4180 says when the
/// joined text holds a comma, a quote or a line break).
pub fn write_timeline_csv(rows: &[TimelineRow], out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "second,committed,aborted,unknown,failed,p50_ms,p99_ms,max_ms,faults"
    )?;
    let ms = |micros: u64| micros as f64 / MICROSECONDS_PER_MILLISECOND;
    for row in rows {
        writeln!(
            out,
            "{},{},{},{},{},{:.3},{:.3},{:.3},{}",
            row.second,
            row.committed,
            row.aborted,
            row.unknown,
            row.failed,
            ms(row.p50_us),
            ms(row.p99_us),
            ms(row.max_us),
            csv_field(&row.faults.join(";"))
        )?;
    }
    Ok(())
}

/// A CSV field: as it is, or quoted with its quotes doubled when it needs to be.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::Deserializer;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
    }

    /// A skewed distribution with a tail: most values near 1 ms, a few up to 250 ms.
    fn latencies(count: u64) -> Histogram<u64> {
        let mut histogram = histogram();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
            let micros = (800.0 / (1.0 - uniform).powf(0.6)) as u64;
            histogram.record(micros.clamp(1, 250_000)).unwrap();
        }
        histogram
    }

    fn hgrm_text(histogram: &Histogram<u64>) -> String {
        let mut out = Vec::new();
        write_hgrm(histogram, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hgrm_has_java_layout() {
        let mut histogram = histogram();
        for micros in [100_000, 200_000, 250_000, 600_000] {
            histogram.record(micros).unwrap();
        }
        let text = hgrm_text(&histogram);
        // Rows and footer as Java HdrHistogram prints the same four values (recorded in
        // microseconds, printed in milliseconds): see its outputPercentileDistribution.
        // The steps and columns of Java's output for the same values (whose buckets' highest
        // equivalent values are 100031, 200063, 250111 and 600063 us).
        let expected = "       Value     Percentile TotalCount 1/(1-Percentile)\n\
                        \n\
                        \x20    100.031 0.000000000000          1           1.00\n\
                        \x20    100.031 0.100000000000          1           1.11\n\
                        \x20    100.031 0.200000000000          1           1.25\n\
                        \x20    200.063 0.300000000000          2           1.43\n\
                        \x20    200.063 0.400000000000          2           1.67\n\
                        \x20    200.063 0.500000000000          2           2.00\n\
                        \x20    250.111 0.550000000000          3           2.22\n\
                        \x20    250.111 0.600000000000          3           2.50\n\
                        \x20    250.111 0.650000000000          3           2.86\n\
                        \x20    250.111 0.700000000000          3           3.33\n\
                        \x20    250.111 0.750000000000          3           4.00\n\
                        \x20    600.063 0.775000000000          4           4.44\n\
                        \x20    600.063 1.000000000000          4\n\
                        #[Mean    =      287.464, StdDeviation   =      188.249]\n\
                        #[Max     =      600.063, Total count    =            4]\n\
                        #[Buckets =           16, SubBuckets     =         2048]\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn hgrm_round_trips_through_parse() {
        let histogram = latencies(100_000);
        let points = crate::hist::parse_hgrm(&hgrm_text(&histogram)).unwrap();
        assert!(points.len() > 50);
        let exact = percentile_points(&histogram);
        assert_eq!(points.len(), exact.len());
        for (read, written) in points.iter().zip(&exact) {
            // Percentiles are printed with 12 decimals, values exactly (microseconds).
            assert!(
                (read.0 - written.0).abs() < 1e-12,
                "{read:?} vs {written:?}"
            );
            assert_eq!(read.1, written.1);
        }
        // Java's steps: by 10% up to 50%, then 5%, 2.5%, 1.25%... each half of the way left.
        let java_steps = [
            0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.775, 0.8, 0.825, 0.85,
            0.875, 0.8875, 0.9, 0.9125, 0.925, 0.9375, 0.94375,
        ];
        let steps: Vec<f64> = points
            .iter()
            .take(java_steps.len())
            .map(|point| point.0)
            .collect();
        assert_eq!(steps, java_steps);
        for &(percentile, value_ms) in &points {
            let value_us = (value_ms * MICROSECONDS_PER_MILLISECOND).round() as u64;
            let expected_us = histogram.value_at_quantile(percentile);
            assert!(
                histogram.equivalent(value_us, expected_us),
                "at {percentile}: {value_us} vs {expected_us}"
            );
        }
        let (last_percentile, last_ms) = *points.last().unwrap();
        assert_eq!(last_percentile, 1.0);
        assert_eq!(last_ms, histogram.max() as f64 / 1000.0);
        let p99 = crate::hist::value_at(&points, 0.99).unwrap();
        let exact = histogram.value_at_quantile(0.99) as f64 / 1000.0;
        assert!(p99 >= exact && p99 <= exact * 1.05, "{p99} vs {exact}");
    }

    #[test]
    fn hgrm_of_an_empty_histogram_is_only_headers() {
        let text = hgrm_text(&histogram());
        assert_eq!(text.lines().count(), 5, "{text}");
        assert!(text.contains("Total count    =            0]"));
    }

    /// Standard base64, which the interval log uses for its histograms.
    fn base64_decode(text: &str) -> Vec<u8> {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bytes = Vec::new();
        let mut buffer = 0u32;
        let mut bits = 0;
        for symbol in text.bytes().filter(|&symbol| symbol != b'=') {
            let digit = alphabet.iter().position(|&a| a == symbol).unwrap() as u32;
            buffer = (buffer << 6) | digit;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                bytes.push((buffer >> bits) as u8);
                buffer &= (1 << bits) - 1;
            }
        }
        bytes
    }

    #[test]
    fn hlog_has_headers_and_reads_back() {
        let intervals: Vec<Histogram<u64>> = (0..4u64)
            .map(|second| {
                let mut histogram = histogram();
                for value in 0..(second * 10) {
                    histogram.record(1_000 + value * 997).unwrap();
                }
                histogram
            })
            .collect();
        let start = 1_700_000_000.25;
        let mut out = Vec::new();
        write_hlog(start, &intervals, &mut out).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..6],
            [
                "#[Tally loadgen: transfer latency in microseconds, one histogram per second]",
                "#[Histogram log format version 1.3]",
                "#[StartTime: 1700000000.250 (seconds since epoch)]",
                "#[BaseTime: 1700000000.250 (seconds since epoch)]",
                "\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"",
                "#[MaxValueDivisor: 1000.000]",
            ]
        );
        assert!(lines[6].starts_with("0.000,1.000,0.000,"), "{}", lines[6]);
        assert!(lines[9].starts_with("3.000,1.000,29.919,"), "{}", lines[9]);

        let mut start_times = 0;
        let mut base_times = 0;
        let mut read = Vec::new();
        for entry in IntervalLogIterator::new(&out) {
            match entry.unwrap() {
                LogEntry::StartTime(time) => {
                    start_times += 1;
                    assert_eq!(time, Duration::from_millis(1_700_000_000_250));
                }
                LogEntry::BaseTime(_) => base_times += 1,
                LogEntry::Interval(interval) => {
                    assert_eq!(interval.duration(), Duration::from_secs(1));
                    let bytes = base64_decode(interval.encoded_histogram());
                    let histogram: Histogram<u64> =
                        Deserializer::new().deserialize(&mut &bytes[..]).unwrap();
                    read.push((interval.start_timestamp(), histogram));
                }
            }
        }
        assert_eq!((start_times, base_times), (1, 1));
        assert_eq!(read.len(), intervals.len());
        let total: u64 = read.iter().map(|(_, histogram)| histogram.len()).sum();
        assert_eq!(total, 60);
        for (second, (start, histogram)) in read.iter().enumerate() {
            assert_eq!(*start, Duration::from_secs(second as u64));
            assert_eq!(histogram, &intervals[second]);
        }
    }

    #[test]
    fn hlog_refuses_a_start_before_the_epoch() {
        let error = write_hlog(-1.0, &[], &mut Vec::new()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn timeline_csv_has_header_and_rows() {
        let rows = [
            TimelineRow {
                second: 0,
                committed: 5120,
                aborted: 3,
                unknown: 0,
                failed: 0,
                p50_us: 1_234,
                p99_us: 5_600,
                max_us: 12_001,
                faults: vec![],
            },
            TimelineRow {
                second: 1,
                committed: 10,
                aborted: 0,
                unknown: 2,
                failed: 1,
                p50_us: 2_000_000,
                p99_us: 3_000_500,
                max_us: 3_100_000,
                faults: vec!["kill node 2 start".into(), "delay 1,2 \"50 ms\"".into()],
            },
        ];
        let mut out = Vec::new();
        write_timeline_csv(&rows, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "second,committed,aborted,unknown,failed,p50_ms,p99_ms,max_ms,faults\n\
             0,5120,3,0,0,1.234,5.600,12.001,\n\
             1,10,0,2,1,2000.000,3000.500,3100.000,\"kill node 2 start;delay 1,2 \"\"50 ms\"\"\"\n"
        );
    }
}
