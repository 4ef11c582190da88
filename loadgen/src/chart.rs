//! Charts of a run as plain SVG 1.1 text, written by hand (no scripts, no plotting crate): the
//! throughput timeline with fault markers (dashed lines across the plot, labelled at the top) and
//! leader-change marks (solid purple ticks rising from the time axis, labelled `s0→n2`) above the
//! latency percentile distribution, and several distributions overlaid for comparison.
//!
//! The percentile axis is HdrHistogram's: position `log10(1 / (1 - p))`, so each decade of
//! "nines" (90%, 99%, 99.9%, ...) gets the same width. Percentile 1 (the max) sits at the right
//! edge of the axis, which spans at least up to 99.999%.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::leaders::LeaderChange;
use crate::report::{self, FaultEvent, TimelineRow};

const WIDTH: f64 = 960.0;
const RUN_CHART_HEIGHT: f64 = 860.0;
const COMPARE_CHART_HEIGHT: f64 = 520.0;
/// Room left of a plot for the tick labels and the axis label.
const MARGIN_LEFT: f64 = 90.0;
const MARGIN_RIGHT: f64 = 50.0;
const FONT_FAMILY: &str = "Helvetica, Arial, sans-serif";
const FONT_SIZE_TITLE: f64 = 18.0;
const FONT_SIZE_SUBTITLE: f64 = 14.0;
const FONT_SIZE_LABEL: f64 = 12.0;
/// Lines of fault labels stacked at the top of the throughput plot, so close markers' labels
/// do not overwrite each other.
const FAULT_LABEL_LINES: usize = 4;
/// Decades of the percentile axis always shown: 0% to 99.999%.
const PERCENTILE_DECADES_MIN: u32 = 5;
/// Decades of the percentile axis at most: beyond, a percentile printed with 12 decimals is 1.
const PERCENTILE_DECADES_MAX: u32 = 12;
/// Series colours, distinguishable from one another (the Tableau 10 palette).
const PALETTE: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];
const COLOR_COMMITTED: &str = "#1f77b4";
const COLOR_ABORTED: &str = "#d62728";
const COLOR_FAULT: &str = "#555555";
const COLOR_LEADER: &str = "#9467bd";
/// The dash pattern of fault markers.
const FAULT_DASHES: &str = "5,4";
/// Height of a leader-change mark above the time axis.
const LEADER_MARK_HEIGHT: f64 = 22.0;
/// Lines of leader-change labels stacked above the marks.
const LEADER_LABEL_LINES: usize = 3;
const COLOR_AXIS: &str = "#333333";
const COLOR_GRID: &str = "#e3e3e3";

/// One SVG with two panels: the throughput timeline (committed and aborted transfers per
/// second, a dashed marker and label at each fault, a purple mark on the time axis at each
/// leader change) above the latency percentile distribution of `histogram` (microseconds, shown
/// in ms).
pub fn run_chart(
    title: &str,
    rows: &[TimelineRow],
    faults: &[FaultEvent],
    leader_changes: &[LeaderChange],
    histogram: &Histogram<u64>,
) -> String {
    let mut svg = Svg::new(WIDTH, RUN_CHART_HEIGHT);
    svg.text(
        WIDTH / 2.0,
        32.0,
        FONT_SIZE_TITLE,
        Anchor::Middle,
        "bold",
        title,
    );
    let throughput = Plot::new(70.0, 330.0);
    draw_timeline(&mut svg, &throughput, rows, faults, leader_changes);
    let latency = Plot::new(500.0, 300.0);
    let points = report::percentile_points(histogram);
    let subtitle = format!(
        "Latency by percentile: {} transfers, max {:.3} ms",
        histogram.len(),
        histogram.max() as f64 / report::MICROSECONDS_PER_MILLISECOND
    );
    draw_percentiles(
        &mut svg,
        &latency,
        &subtitle,
        &[("latency", &points[..])],
        false,
    );
    svg.finish()
}

/// Several percentile distributions overlaid (the axes of `run_chart`'s lower panel), one colour
/// and legend entry per series: (name, points (percentile 0..1, value in ms)).
pub fn compare_chart(title: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let mut svg = Svg::new(WIDTH, COMPARE_CHART_HEIGHT);
    svg.text(
        WIDTH / 2.0,
        32.0,
        FONT_SIZE_TITLE,
        Anchor::Middle,
        "bold",
        title,
    );
    let plot = Plot::new(70.0, COMPARE_CHART_HEIGHT - 70.0 - 60.0);
    let series: Vec<(&str, &[(f64, f64)])> = series
        .iter()
        .map(|(name, points)| (name.as_str(), &points[..]))
        .collect();
    draw_percentiles(&mut svg, &plot, "", &series, true);
    svg.finish()
}

/// Reads one count of a timeline row: a series of the throughput panel.
type RowCount = fn(&TimelineRow) -> u64;

/// The throughput panel.
fn draw_timeline(
    svg: &mut Svg,
    plot: &Plot,
    rows: &[TimelineRow],
    faults: &[FaultEvent],
    leader_changes: &[LeaderChange],
) {
    svg.text(
        plot.left,
        plot.top - 12.0,
        FONT_SIZE_SUBTITLE,
        Anchor::Start,
        "bold",
        "Throughput",
    );
    let last_second = rows.iter().map(|row| row.second + 1).max().unwrap_or(0) as f64;
    let last_fault = faults
        .iter()
        .map(|fault| fault.at_seconds)
        .chain(leader_changes.iter().map(|change| change.at_seconds))
        .filter(|at| at.is_finite())
        .fold(0.0, f64::max);
    let x_axis = Scale::nice(last_second.max(last_fault), 10.0);
    let y_max = rows
        .iter()
        .map(|row| row.committed.max(row.aborted))
        .max()
        .unwrap_or(0) as f64;
    let y_axis = Scale::nice(y_max, 5.0);
    let x = |seconds: f64| plot.left + seconds / x_axis.max * plot.width;
    let y = |rate: f64| plot.bottom() - rate / y_axis.max * plot.height;

    y_grid(svg, plot, &y_axis, y);
    for tick in x_axis.ticks() {
        svg.line(
            x(tick),
            plot.bottom(),
            x(tick),
            plot.bottom() + 5.0,
            COLOR_AXIS,
            1.0,
            None,
        );
        svg.text(
            x(tick),
            plot.bottom() + 20.0,
            FONT_SIZE_LABEL,
            Anchor::Middle,
            "normal",
            &x_axis.label(tick),
        );
    }
    axes_with_titles(
        svg,
        plot,
        "seconds since the start of the run",
        "transfers per second",
    );

    // Each row counts the transfers answered in [second, second + 1): drawn at its middle.
    let series: [(&str, &str, RowCount); 2] = [
        ("committed", COLOR_COMMITTED, |row| row.committed),
        ("aborted", COLOR_ABORTED, |row| row.aborted),
    ];
    for (_, color, count) in &series {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .map(|row| (x(row.second as f64 + 0.5), y(count(row) as f64)))
            .collect();
        svg.polyline(&points, color);
    }

    for (index, fault) in faults.iter().enumerate() {
        if !fault.at_seconds.is_finite() {
            continue;
        }
        let at = x(fault.at_seconds.max(0.0));
        svg.line(
            at,
            plot.top,
            at,
            plot.bottom(),
            COLOR_FAULT,
            1.2,
            Some(FAULT_DASHES),
        );
        let label_y = plot.top + 14.0 + (index % FAULT_LABEL_LINES) as f64 * 15.0;
        // Labels of markers in the right third run leftwards so they stay inside the chart.
        let (label_x, anchor) = if at > plot.left + plot.width * 2.0 / 3.0 {
            (at - 4.0, Anchor::End)
        } else {
            (at + 4.0, Anchor::Start)
        };
        svg.text_colored(
            label_x,
            label_y,
            FONT_SIZE_LABEL,
            anchor,
            COLOR_FAULT,
            &fault.label,
        );
    }

    for (index, change) in leader_changes.iter().enumerate() {
        if !change.at_seconds.is_finite() {
            continue;
        }
        let at = x(change.at_seconds.max(0.0));
        svg.line(
            at,
            plot.bottom(),
            at,
            plot.bottom() - LEADER_MARK_HEIGHT,
            COLOR_LEADER,
            2.5,
            None,
        );
        let label_y =
            plot.bottom() - LEADER_MARK_HEIGHT - 4.0 - (index % LEADER_LABEL_LINES) as f64 * 13.0;
        svg.text_colored(
            at,
            label_y,
            FONT_SIZE_LABEL - 1.0,
            Anchor::Middle,
            COLOR_LEADER,
            &format!("s{}\u{2192}n{}", change.shard, change.leader),
        );
    }

    let mut legend: Vec<(&str, &str, Option<&str>)> = series
        .iter()
        .map(|(name, color, _)| (*name, *color, None))
        .collect();
    if !faults.is_empty() {
        legend.push(("fault", COLOR_FAULT, Some(FAULT_DASHES)));
    }
    if !leader_changes.is_empty() {
        legend.push(("leader change (shard\u{2192}node)", COLOR_LEADER, None));
    }
    svg.legend(plot, &legend);
}

/// A percentile panel: the HdrHistogram axes and one line per series (no subtitle if empty).
fn draw_percentiles(
    svg: &mut Svg,
    plot: &Plot,
    subtitle: &str,
    series: &[(&str, &[(f64, f64)])],
    with_legend: bool,
) {
    if !subtitle.is_empty() {
        svg.text(
            plot.left,
            plot.top - 12.0,
            FONT_SIZE_SUBTITLE,
            Anchor::Start,
            "bold",
            subtitle,
        );
    }
    let finite = |percentile: f64| percentile.is_finite() && (0.0..1.0).contains(&percentile);
    let deepest = series
        .iter()
        .flat_map(|(_, points)| points.iter())
        .map(|&(percentile, _)| percentile)
        .filter(|&percentile| finite(percentile))
        .fold(0.0, f64::max);
    // The slack keeps a percentile like 0.9999999, a hair past 7 nines in floating point, at 7.
    let decades = ((nines(deepest) - 1e-6).ceil() as u32)
        .clamp(PERCENTILE_DECADES_MIN, PERCENTILE_DECADES_MAX);
    let value_max = series
        .iter()
        .flat_map(|(_, points)| points.iter())
        .map(|&(_, value)| value)
        .filter(|value| value.is_finite())
        .fold(0.0, f64::max);
    let y_axis = Scale::nice(value_max, 5.0);
    let x = |percentile: f64| {
        let position = if finite(percentile) {
            nines(percentile).min(f64::from(decades))
        } else if percentile.is_nan() || percentile < 0.0 {
            0.0
        } else {
            f64::from(decades)
        };
        plot.left + position / f64::from(decades) * plot.width
    };
    let y = |value: f64| plot.bottom() - value / y_axis.max * plot.height;

    y_grid(svg, plot, &y_axis, y);
    for decade in 0..=decades {
        let at = plot.left + f64::from(decade) / f64::from(decades) * plot.width;
        svg.line(at, plot.top, at, plot.bottom(), COLOR_GRID, 1.0, None);
        svg.text(
            at,
            plot.bottom() + 20.0,
            FONT_SIZE_LABEL,
            Anchor::Middle,
            "normal",
            &decade_label(decade),
        );
    }
    axes_with_titles(svg, plot, "percentile", "latency (ms)");

    let mut legend = Vec::with_capacity(series.len());
    for (index, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[index % PALETTE.len()];
        let points: Vec<(f64, f64)> = points
            .iter()
            .filter(|(_, value)| value.is_finite())
            .map(|&(percentile, value)| (x(percentile), y(value)))
            .collect();
        svg.polyline(&points, color);
        legend.push((*name, color));
    }
    if with_legend {
        svg.legend_top_left(plot, &legend);
    }
}

/// Position on the percentile axis: `log10(1 / (1 - p))`, 0 at 0%, 1 at 90%, 2 at 99%...
fn nines(percentile: f64) -> f64 {
    (1.0 / (1.0 - percentile)).log10()
}

/// The label of a decade of the percentile axis: 0%, 90%, 99%, 99.9%, ...
fn decade_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_owned(),
        1 => "90%".to_owned(),
        _ => format!("99.{}%", "9".repeat(decade as usize - 2)).replace(".%", "%"),
    }
}

/// A linear axis from 0 to a rounded max, with ticks at a 1, 2 or 5 times a power of ten step.
/// The plot's axes, the x axis title below them and the y axis title along the left.
fn axes_with_titles(svg: &mut Svg, plot: &Plot, x_title: &str, y_title: &str) {
    svg.axes(plot);
    svg.text(
        plot.left + plot.width / 2.0,
        plot.bottom() + 42.0,
        FONT_SIZE_LABEL,
        Anchor::Middle,
        "normal",
        x_title,
    );
    svg.vertical_text(24.0, plot.top + plot.height / 2.0, FONT_SIZE_LABEL, y_title);
}

/// Horizontal grid lines at `axis`'s ticks across `plot`, labelled on the left.
fn y_grid(svg: &mut Svg, plot: &Plot, axis: &Scale, y: impl Fn(f64) -> f64) {
    for tick in axis.ticks() {
        svg.line(
            plot.left,
            y(tick),
            plot.right(),
            y(tick),
            COLOR_GRID,
            1.0,
            None,
        );
        svg.text(
            plot.left - 8.0,
            y(tick) + 4.0,
            FONT_SIZE_LABEL,
            Anchor::End,
            "normal",
            &axis.label(tick),
        );
    }
}

struct Scale {
    max: f64,
    step: f64,
}

impl Scale {
    /// The axis for values up to `value_max`, with about `ticks` ticks.
    fn nice(value_max: f64, ticks: f64) -> Scale {
        if !value_max.is_finite() || value_max <= 0.0 {
            return Scale {
                max: 1.0,
                step: 0.2,
            };
        }
        let rough_step = value_max / ticks;
        let magnitude = 10f64.powf(rough_step.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|multiple| multiple * magnitude)
            .find(|&step| step >= rough_step)
            .unwrap_or(10.0 * magnitude);
        Scale {
            max: (value_max / step).ceil() * step,
            step,
        }
    }

    fn ticks(&self) -> Vec<f64> {
        let count = (self.max / self.step).round() as u32;
        (0..=count)
            .map(|index| f64::from(index) * self.step)
            .collect()
    }

    /// A tick's label, with as many decimals as the step needs.
    fn label(&self, value: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        format!("{value:.decimals$}")
    }
}

/// The plot area of a panel.
struct Plot {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
}

impl Plot {
    fn new(top: f64, height: f64) -> Plot {
        Plot {
            left: MARGIN_LEFT,
            top,
            width: WIDTH - MARGIN_LEFT - MARGIN_RIGHT,
            height,
        }
    }

    fn right(&self) -> f64 {
        self.left + self.width
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

#[derive(Clone, Copy)]
enum Anchor {
    Start,
    Middle,
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

/// An SVG document being written. Coordinates are rounded to 0.1 px to keep the file small.
struct Svg {
    text: String,
}

impl Svg {
    fn new(width: f64, height: f64) -> Svg {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{width}\" \
             height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"{FONT_FAMILY}\">"
        );
        let _ = writeln!(
            text,
            "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"white\"/>"
        );
        Svg { text }
    }

    fn finish(mut self) -> String {
        self.text.push_str("</svg>\n");
        self.text
    }

    fn text(&mut self, x: f64, y: f64, size: f64, anchor: Anchor, weight: &str, content: &str) {
        let _ = writeln!(
            self.text,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{}\" \
             font-weight=\"{weight}\" fill=\"{COLOR_AXIS}\">{}</text>",
            anchor.as_str(),
            escape(content)
        );
    }

    fn text_colored(
        &mut self,
        x: f64,
        y: f64,
        size: f64,
        anchor: Anchor,
        color: &str,
        content: &str,
    ) {
        let _ = writeln!(
            self.text,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{}\" \
             fill=\"{color}\">{}</text>",
            anchor.as_str(),
            escape(content)
        );
    }

    /// Text read bottom to top, centred on (x, y): a y axis label.
    fn vertical_text(&mut self, x: f64, y: f64, size: f64, content: &str) {
        let _ = writeln!(
            self.text,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"middle\" \
             fill=\"{COLOR_AXIS}\" transform=\"rotate(-90 {x:.1} {y:.1})\">{}</text>",
            escape(content)
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        color: &str,
        width: f64,
        dashes: Option<&str>,
    ) {
        let dashes = dashes
            .map(|pattern| format!(" stroke-dasharray=\"{pattern}\""))
            .unwrap_or_default();
        let _ = writeln!(
            self.text,
            "<line x1=\"{x1:.1}\" y1=\"{y1:.1}\" x2=\"{x2:.1}\" y2=\"{y2:.1}\" \
             stroke=\"{color}\" stroke-width=\"{width}\"{dashes}/>"
        );
    }

    /// One data series. Written even when empty, so every series has its element.
    fn polyline(&mut self, points: &[(f64, f64)], color: &str) {
        let mut coordinates = String::new();
        for (index, (x, y)) in points.iter().enumerate() {
            if index > 0 {
                coordinates.push(' ');
            }
            let _ = write!(coordinates, "{x:.1},{y:.1}");
        }
        let _ = writeln!(
            self.text,
            "<polyline points=\"{coordinates}\" fill=\"none\" stroke=\"{color}\" \
             stroke-width=\"2\" stroke-linejoin=\"round\"/>"
        );
    }

    /// The x and y axis lines of a plot.
    fn axes(&mut self, plot: &Plot) {
        self.line(
            plot.left,
            plot.bottom(),
            plot.right(),
            plot.bottom(),
            COLOR_AXIS,
            1.0,
            None,
        );
        self.line(
            plot.left,
            plot.top,
            plot.left,
            plot.bottom(),
            COLOR_AXIS,
            1.0,
            None,
        );
    }

    /// Legend entries (name, colour, dash pattern) in a row above the top right corner of a plot.
    fn legend(&mut self, plot: &Plot, entries: &[(&str, &str, Option<&str>)]) {
        let mut x = plot.right();
        let y = plot.top - 12.0;
        for (name, color, dashes) in entries.iter().rev() {
            let text_width = estimated_text_width(name, FONT_SIZE_LABEL);
            x -= text_width;
            self.text(x, y, FONT_SIZE_LABEL, Anchor::Start, "normal", name);
            x -= 26.0;
            self.line(x, y - 4.0, x + 20.0, y - 4.0, color, 2.0, *dashes);
            x -= 16.0;
        }
    }

    /// Legend entries one per line in the top left corner of a plot, on a white box: the
    /// distributions rise to the right, so that corner is the emptiest.
    fn legend_top_left(&mut self, plot: &Plot, entries: &[(&str, &str)]) {
        if entries.is_empty() {
            return;
        }
        let line_height = 18.0;
        let widest = entries
            .iter()
            .map(|(name, _)| estimated_text_width(name, FONT_SIZE_LABEL))
            .fold(0.0, f64::max);
        let box_width = (widest + 46.0).min(plot.width - 20.0);
        let box_height = entries.len() as f64 * line_height + 10.0;
        let _ = writeln!(
            self.text,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{box_width:.1}\" height=\"{box_height:.1}\" \
             fill=\"white\" fill-opacity=\"0.9\" stroke=\"{COLOR_GRID}\"/>",
            plot.left + 10.0,
            plot.top + 10.0
        );
        for (index, (name, color)) in entries.iter().enumerate() {
            let y = plot.top + 10.0 + 18.0 + index as f64 * line_height;
            let x = plot.left + 18.0;
            self.line(x, y - 4.0, x + 20.0, y - 4.0, color, 2.0, None);
            self.text(x + 28.0, y, FONT_SIZE_LABEL, Anchor::Start, "normal", name);
        }
    }
}

/// A rough width of `text` in a sans-serif font, enough to lay out a legend.
fn estimated_text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// `text` with the characters XML gives a meaning replaced by entities.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 text.
            character if character.is_control() => escaped.push(' '),
            character => escaped.push(character),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram() -> Histogram<u64> {
        let mut histogram = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        for micros in 1..=20_000u64 {
            histogram
                .record(500 + micros % 3_000 + micros / 19_990 * 400_000)
                .unwrap();
        }
        histogram
    }

    fn rows() -> Vec<TimelineRow> {
        (0..30)
            .map(|second| TimelineRow {
                second,
                committed: if (10..14).contains(&second) {
                    120
                } else {
                    5_000
                },
                aborted: second % 3,
                p50_us: 1_000,
                p99_us: 5_000,
                max_us: 9_000,
                ..TimelineRow::default()
            })
            .collect()
    }

    /// Checks what any chart must be: one SVG element, balanced tags, one polyline per series.
    fn check_svg(svg: &str, series: usize) {
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        assert_eq!(svg.matches("<polyline").count(), series, "{svg}");
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        assert!(!svg.contains("<script"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        for element in svg.split('<').skip(1) {
            let name: String = element
                .chars()
                .take_while(|character| character.is_ascii_alphanumeric() || *character == '/')
                .collect();
            assert!(
                ["svg", "/svg", "rect", "line", "polyline", "text", "/text"]
                    .contains(&name.as_str()),
                "unexpected element {name}"
            );
        }
    }

    #[test]
    fn run_chart_has_both_panels_and_fault_markers() {
        let faults = [
            FaultEvent {
                at_seconds: 10.0,
                label: "kill node 2 start".into(),
                node: Some(2),
            },
            FaultEvent {
                at_seconds: 14.0,
                label: "kill node 2 end".into(),
                node: Some(2),
            },
            FaultEvent {
                at_seconds: 25.5,
                label: "partition <1|2,3> & heal".into(),
                node: None,
            },
        ];
        let svg = run_chart("3 nodes, 64 clients", &rows(), &faults, &[], &histogram());
        check_svg(&svg, 3);
        assert!(svg.contains(">3 nodes, 64 clients</text>"));
        assert!(svg.contains(">kill node 2 start</text>"));
        assert!(svg.contains(">kill node 2 end</text>"));
        assert!(svg.contains(">partition &lt;1|2,3&gt; &amp; heal</text>"));
        // Three markers and the legend's fault entry.
        assert_eq!(svg.matches("stroke-dasharray").count(), 4);
        assert!(svg.contains(">fault</text>"));
        assert!(
            !svg.contains("leader change"),
            "no leader changes, no legend entry"
        );
        for label in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        assert!(svg.contains(">latency (ms)</text>"));
        assert!(svg.contains(">transfers per second</text>"));
    }

    #[test]
    fn run_chart_of_an_empty_run_is_still_a_chart() {
        let empty = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
        check_svg(&run_chart("empty", &[], &[], &[], &empty), 3);
    }

    #[test]
    fn run_chart_marks_leader_changes_on_the_time_axis_apart_from_faults() {
        let faults = [FaultEvent {
            at_seconds: 10.0,
            label: "kill node 1 (leader of shard 0, term 2) start".into(),
            node: Some(1),
        }];
        let changes = [
            LeaderChange {
                at_seconds: 11.2,
                shard: 0,
                leader: 2,
                term: 3,
            },
            LeaderChange {
                at_seconds: 40.0,
                shard: 1,
                leader: 3,
                term: 4,
            },
        ];
        let svg = run_chart("failover", &rows(), &faults, &changes, &histogram());
        check_svg(&svg, 3);
        assert!(svg.contains(">s0\u{2192}n2</text>"));
        assert!(svg.contains(">s1\u{2192}n3</text>"));
        assert!(svg.contains(">leader change (shard\u{2192}node)</text>"));
        // Two marks and the legend's line in the leader colour, none of them dashed; the
        // fault's marker and legend entry dashed in its own.
        let leader_lines: Vec<&str> = svg
            .lines()
            .filter(|line| line.starts_with("<line") && line.contains(COLOR_LEADER))
            .collect();
        assert_eq!(leader_lines.len(), 3, "{leader_lines:?}");
        assert!(leader_lines.iter().all(|line| !line.contains("dasharray")));
        assert_eq!(svg.matches("stroke-dasharray").count(), 2);
        // The time axis reaches the last change (at 40 s, past the 30 s of rows).
        assert!(
            svg.contains(">40</text>"),
            "the axis stops before the last change"
        );
    }

    #[test]
    fn compare_chart_has_a_line_and_legend_entry_per_series() {
        let series: Vec<(String, Vec<(f64, f64)>)> = (1..=3)
            .map(|index| {
                let points = report::percentile_points(&histogram())
                    .into_iter()
                    .map(|(percentile, value)| (percentile, value * f64::from(index)))
                    .collect();
                (format!("run {index}"), points)
            })
            .collect();
        let svg = compare_chart("three runs", &series);
        check_svg(&svg, 3);
        for index in 1..=3 {
            assert!(svg.contains(&format!(">run {index}</text>")));
        }
        assert!(svg.contains(PALETTE[0]) && svg.contains(PALETTE[1]) && svg.contains(PALETTE[2]));
    }

    #[test]
    fn percentile_axis_grows_with_the_deepest_percentile() {
        let series = vec![(
            "deep".to_owned(),
            vec![(0.0, 1.0), (0.999_999_9, 2.0), (1.0, 3.0)],
        )];
        let svg = compare_chart("deep", &series);
        assert!(svg.contains(">99.99999%</text>"));
        assert!(!svg.contains(">99.999999%</text>"));
    }

    #[test]
    fn scales_are_round() {
        let scale = Scale::nice(5_123.0, 5.0);
        assert_eq!((scale.max, scale.step), (6_000.0, 2_000.0));
        assert_eq!(scale.ticks(), [0.0, 2_000.0, 4_000.0, 6_000.0]);
        let scale = Scale::nice(0.37, 5.0);
        assert_eq!(scale.step, 0.1);
        assert_eq!(scale.label(0.30000000000000004), "0.3");
        let scale = Scale::nice(0.0, 5.0);
        assert_eq!(scale.max, 1.0);
        assert_eq!(decade_label(0), "0%");
        assert_eq!(decade_label(1), "90%");
        assert_eq!(decade_label(2), "99%");
        assert_eq!(decade_label(5), "99.999%");
    }
}
