//! `tally hist compare A.hgrm B.hgrm [...] --out cmp.svg`: the tail latencies of several runs
//! side by side, from their percentile-distribution files (`report::write_hgrm`'s, or any that
//! Java HdrHistogram or wrk2 wrote), with each later run's ratio to the first, and optionally
//! the distributions overlaid in one SVG chart.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::anyhow;

use crate::chart;

/// Percentiles the comparison table shows, with their row labels; the last row is the max.
const TABLE_PERCENTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("max", 1.0),
];
/// Slack when matching a percentile against the file's, which are printed with 12 decimals.
const PERCENTILE_TOLERANCE: f64 = 1e-9;
/// Largest percentile-distribution file read: a real one is a few hundred rows.
const HGRM_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `tally hist compare`: every option.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Two or more .hgrm files (percentile distributions); ratios are to the first.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
    /// Write the overlay chart here (SVG).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Parses a percentile-distribution file, as `report::write_hgrm` and Java HdrHistogram's
/// `outputPercentileDistribution` write it (plain or CSV), into (percentile 0..1, value) points
/// in the file's units. Rows are read from the line after the `Value` header up to the `#[`
/// footer or the first line that is not a row (so wrk2's whole output parses too); the last
/// column (`1/(1-Percentile)`) is optional and not checked. Errors name the line.
pub fn parse_hgrm(text: &str) -> Result<Vec<(f64, f64)>, String> {
    let mut lines = text.lines().enumerate();
    if !lines.any(|(_, line)| is_header(line)) {
        return Err("no `Value Percentile TotalCount 1/(1-Percentile)` header line".into());
    }
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (index, line) in lines {
        let line = line.trim();
        if line.is_empty() && points.is_empty() {
            continue;
        }
        let fields: Vec<&str> = if line.contains(',') {
            line.split(',').map(str::trim).collect()
        } else {
            line.split_whitespace().collect()
        };
        let Some(Ok(value)) = fields.first().map(|field| field.parse::<f64>()) else {
            break; // the footer, or whatever follows the rows
        };
        let number = index + 1;
        let row_error = || {
            format!(
                "line {number}: expected `value percentile total_count [1/(1-percentile)]`, \
                 found `{line}`"
            )
        };
        if !(3..=4).contains(&fields.len()) {
            return Err(row_error());
        }
        let percentile: f64 = fields[1].parse().map_err(|_| row_error())?;
        fields[2].parse::<u64>().map_err(|_| row_error())?;
        if !value.is_finite() || value < 0.0 {
            return Err(format!("line {number}: value {value} is not a latency"));
        }
        if !(0.0..=1.0).contains(&percentile) {
            return Err(format!(
                "line {number}: percentile {percentile} is not between 0 and 1"
            ));
        }
        if let Some(&(previous, _)) = points.last() {
            if percentile < previous {
                return Err(format!(
                    "line {number}: percentile {percentile} is below the previous row's"
                ));
            }
        }
        points.push((percentile, value));
    }
    if points.is_empty() {
        return Err("no rows after the header (an empty histogram?)".into());
    }
    Ok(points)
}

/// Whether `line` is the column header of a percentile distribution (plain or CSV).
fn is_header(line: &str) -> bool {
    let line = line.trim_start();
    (line.starts_with("Value") || line.starts_with("\"Value\"")) && line.contains("Percentile")
}

/// The value at `percentile` (0..1): that of the first point whose percentile is at or above it,
/// as HdrHistogram reports a percentile (the highest value it is sure of). `None` when the
/// points stop below it, or it is not in 0..1.
pub fn value_at(points: &[(f64, f64)], percentile: f64) -> Option<f64> {
    if !(0.0..=1.0).contains(&percentile) {
        return None;
    }
    points
        .iter()
        .find(|(at, _)| *at >= percentile - PERCENTILE_TOLERANCE)
        .map(|&(_, value)| value)
}

/// Runs `tally hist compare`: reads every file, writes the overlay chart to `--out` if given,
/// and returns the table for the caller to print: p50, p90, p99, p99.9, p99.99 and max of each
/// file side by side, each later file's cell with its ratio to the first (`12.300 (1.45x)`).
/// Values are in the files' units (milliseconds for Tally's). An error is one line naming the
/// file.
pub fn compare(args: &CompareArgs) -> anyhow::Result<String> {
    if args.files.len() < 2 {
        return Err(anyhow!("hist compare needs two or more .hgrm files"));
    }
    let mut series = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let name = path.display().to_string();
        let text = read_limited(path).map_err(|error| anyhow!("cannot read {name}: {error}"))?;
        let points = parse_hgrm(&text).map_err(|error| anyhow!("{name}: {error}"))?;
        series.push((name, points));
    }
    let table = comparison_table(&series);
    if let Some(out) = &args.out {
        let names: Vec<&str> = series.iter().map(|(name, _)| name.as_str()).collect();
        let title = format!("Latency by percentile: {}", names.join(" vs "));
        let svg = chart::compare_chart(&title, &series);
        std::fs::write(out, svg)
            .map_err(|error| anyhow!("cannot write {}: {error}", out.display()))?;
    }
    Ok(table)
}

/// Reads a text file, refusing one larger than any percentile distribution.
fn read_limited(path: &std::path::Path) -> std::io::Result<String> {
    let size = std::fs::metadata(path)?.len();
    if size > HGRM_FILE_BYTES_MAX {
        return Err(std::io::Error::other(format!(
            "{size} bytes is more than the {HGRM_FILE_BYTES_MAX} a percentile distribution can be"
        )));
    }
    std::fs::read_to_string(path)
}

/// The table of `compare`: a header of file names, then a row per percentile; columns
/// right-aligned.
fn comparison_table(series: &[(String, Vec<(f64, f64)>)]) -> String {
    let mut header = vec!["percentile".to_owned()];
    header.extend(series.iter().map(|(name, _)| name.clone()));
    let mut rows = vec![header];
    for (label, percentile) in TABLE_PERCENTILES {
        let first = value_at(&series[0].1, percentile);
        let mut row = vec![label.to_owned()];
        for (index, (_, points)) in series.iter().enumerate() {
            let cell = match (value_at(points, percentile), first) {
                (None, _) => "-".to_owned(),
                (Some(value), _) if index == 0 => format!("{value:.3}"),
                (Some(value), Some(first)) if first > 0.0 => {
                    format!("{value:.3} ({:.2}x)", value / first)
                }
                (Some(value), _) => format!("{value:.3} (n/a)"),
            };
            row.push(cell);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut table = String::new();
    for row in &rows {
        let mut line = String::new();
        for (column, cell) in row.iter().enumerate() {
            if column == 0 {
                let _ = write!(line, "{cell:<width$}", width = widths[0]);
            } else {
                let _ = write!(line, "  {cell:>width$}", width = widths[column]);
            }
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::write_hgrm;
    use hdrhistogram::Histogram;

    #[test]
    fn parses_java_plain_and_csv_output() {
        // Java HdrHistogram's output for values 100, 200, 250 and 600 (scaling ratio 1).
        let plain = "       Value     Percentile TotalCount 1/(1-Percentile)\n\
                     \n\
                     \x20    100.000 0.000000000000          1           1.00\n\
                     \x20    200.000 0.300000000000          2           1.43\n\
                     \x20    250.000 0.550000000000          3           2.22\n\
                     \x20    600.000 0.775000000000          4           4.44\n\
                     \x20    600.000 1.000000000000          4\n\
                     #[Mean    =      287.500, StdDeviation   =      188.331]\n\
                     #[Max     =      600.000, Total count    =            4]\n\
                     #[Buckets =           32, SubBuckets     =         2048]\n";
        let expected = vec![
            (0.0, 100.0),
            (0.3, 200.0),
            (0.55, 250.0),
            (0.775, 600.0),
            (1.0, 600.0),
        ];
        assert_eq!(parse_hgrm(plain).unwrap(), expected);
        let csv = "\"Value\",\"Percentile\",\"TotalCount\",\"1/(1-Percentile)\"\n\
                   100.000,0.000000000000,1,1.00\n\
                   200.000,0.300000000000,2,1.43\n\
                   250.000,0.550000000000,3,2.22\n\
                   600.000,0.775000000000,4,4.44\n\
                   600.000,1.000000000000,4,Infinity\n";
        assert_eq!(parse_hgrm(csv).unwrap(), expected);
    }

    #[test]
    fn parses_wrk2_output() {
        let wrk2 = "  Latency Distribution (HdrHistogram - Recorded Latency)\n\
                    \x2050.000%   10.24ms\n\
                    \n  Detailed Percentile spectrum:\n\
                    \x20      Value   Percentile   TotalCount 1/(1-Percentile)\n\
                    \n\
                    \x20      9.704     0.000000            1         1.00\n\
                    \x20     10.239     0.500000         1998         2.00\n\
                    \x20     11.383     1.000000         3992          inf\n\
                    #[Mean    =       10.312, StdDeviation   =        0.301]\n\
                    ----------------------------------------------------------\n\
                    \x20 3994 requests in 20.00s, 0.98MB read\n";
        assert_eq!(
            parse_hgrm(wrk2).unwrap(),
            vec![(0.0, 9.704), (0.5, 10.239), (1.0, 11.383)]
        );
    }

    #[test]
    fn rejects_malformed_files() {
        assert!(parse_hgrm("").unwrap_err().contains("header"));
        assert!(
            parse_hgrm("Value Percentile TotalCount\n\n")
                .unwrap_err()
                .contains("no rows")
        );
        let error = parse_hgrm("Value Percentile TotalCount\n\n1.0 0.5\n").unwrap_err();
        assert!(error.starts_with("line 3: expected"), "{error}");
        let error = parse_hgrm("Value Percentile TotalCount\n1.0 0.5 x 2.0\n").unwrap_err();
        assert!(error.starts_with("line 2: expected"), "{error}");
        let error = parse_hgrm("Value Percentile TotalCount\n1.0 1.5 3\n").unwrap_err();
        assert!(error.contains("not between 0 and 1"), "{error}");
        let error = parse_hgrm("Value Percentile TotalCount\n1 0.5 3\n2 0.4 4\n").unwrap_err();
        assert!(error.contains("below the previous"), "{error}");
    }

    #[test]
    fn value_at_takes_the_first_point_at_or_above() {
        let points = [
            (0.0, 1.0),
            (0.5, 2.0),
            (0.9, 5.0),
            (0.990625, 9.0),
            (1.0, 20.0),
        ];
        assert_eq!(value_at(&points, 0.0), Some(1.0));
        assert_eq!(value_at(&points, 0.3), Some(2.0));
        assert_eq!(value_at(&points, 0.5), Some(2.0));
        assert_eq!(value_at(&points, 0.9), Some(5.0));
        assert_eq!(value_at(&points, 0.899_999_999_999), Some(5.0));
        assert_eq!(value_at(&points, 0.99), Some(9.0));
        assert_eq!(value_at(&points, 0.999), Some(20.0));
        assert_eq!(value_at(&points, 1.0), Some(20.0));
        assert_eq!(value_at(&points, 1.5), None);
        assert_eq!(value_at(&points, f64::NAN), None);
        assert_eq!(value_at(&points[..3], 0.95), None);
        assert_eq!(value_at(&[], 0.5), None);
    }

    fn write_file(dir: &std::path::Path, name: &str, micros: &[(u64, u64)]) -> PathBuf {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for &(value, count) in micros {
            histogram.record_n(value, count).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&histogram, &mut out).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, out).unwrap();
        path
    }

    #[test]
    fn compare_prints_ratios_and_writes_the_chart() {
        let dir = tempfile::tempdir().unwrap();
        // 1000 values: 990 at 1 ms, 9 at 10 ms, 1 at 100 ms; the second run is twice as slow
        // at p50 and has a 300 ms max.
        let first = write_file(
            dir.path(),
            "a.hgrm",
            &[(1_000, 990), (10_000, 9), (100_000, 1)],
        );
        let second = write_file(
            dir.path(),
            "b.hgrm",
            &[(2_000, 990), (10_000, 9), (300_000, 1)],
        );
        let out = dir.path().join("cmp.svg");
        let args = CompareArgs {
            files: vec![first.clone(), second.clone()],
            out: Some(out.clone()),
        };
        let table = compare(&args).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 7, "{table}");
        let header: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            header,
            [
                "percentile",
                first.to_str().unwrap(),
                second.to_str().unwrap()
            ]
        );
        let cells = |line: &str| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(cells(lines[1]), ["p50", "1.000", "2.000", "(2.00x)"]);
        assert_eq!(cells(lines[2]), ["p90", "1.000", "2.000", "(2.00x)"]);
        assert_eq!(cells(lines[3]), ["p99", "10.007", "10.007", "(1.00x)"]);
        assert_eq!(cells(lines[6]), ["max", "100.031", "300.031", "(3.00x)"]);
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a.hgrm") && svg.contains("b.hgrm"));
    }

    #[test]
    fn compare_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_file(dir.path(), "good.hgrm", &[(1_000, 10)]);
        let bad = dir.path().join("bad.hgrm");
        std::fs::write(&bad, "not a histogram\n").unwrap();
        let missing = dir.path().join("missing.hgrm");
        let compare_with = |other: &PathBuf| {
            let args = CompareArgs {
                files: vec![good.clone(), other.clone()],
                out: None,
            };
            format!("{:#}", compare(&args).unwrap_err())
        };
        let error = compare_with(&bad);
        assert!(
            error.starts_with(&format!("{}: no `Value", bad.display())),
            "{error}"
        );
        assert!(!error.contains('\n'));
        let error = compare_with(&missing);
        assert!(
            error.starts_with(&format!("cannot read {}: ", missing.display())),
            "{error}"
        );
    }
}
