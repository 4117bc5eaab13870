//! The time-resolved part of a chaos run's report: what the clients saw, second by second and
//! fault window by fault window, whether every city took writes again after the heal, and a
//! picture of it all.
//!
//! Everything here is pure and works on plain input types ([`Sample`], [`Window`]) rather than
//! on the run's own history types, so that the arithmetic can be tested on small hand-made
//! histories and the report can be redrawn from a saved run without starting anything.
//!
//! Times are [`Duration`]s since the start of the run throughout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use plotters::prelude::*;

/// One client request as the traffic driver saw it.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The city the request was sent to (its router).
    pub city: String,
    /// `"create"` or `"patch"`; both are writes.
    pub op: String,
    /// When the request was sent.
    pub invoke: Duration,
    /// When the answer came, or when the client gave up on it.
    pub complete: Duration,
    /// The HTTP status, 0 when there was no answer (timeout, connection refused or reset).
    pub status: u16,
    /// Whether the answer acknowledged the write (the checker then expects it in the data).
    pub acked: bool,
}

/// One fault of the schedule, from its injection to its repair.
#[derive(Debug, Clone)]
pub struct Window {
    /// What the fault was, e.g. `"kill-router beijing"`; windows with the same label share a
    /// color in the picture.
    pub label: String,
    pub from: Duration,
    pub to: Duration,
}

/// What completed in one second of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bucket {
    /// Whole seconds since the start: the bucket covers `[second, second + 1)`.
    pub second: u64,
    /// Requests acknowledged in this second.
    pub acked: usize,
    /// Requests that completed in this second without an acknowledgement (any status,
    /// including no answer at all).
    pub failed: usize,
    /// The 99th percentile (nearest rank) latency of the acknowledged ones; `None` when
    /// nothing was acknowledged, so a gap in the picture is a gap and not a fast second.
    pub p99: Option<Duration>,
}

/// Buckets the samples by the second in which they completed.
///
/// The result has one bucket per second from 0 up to the end of the run (`run_len`, rounded
/// up) or the last completion, whichever is later, with empty seconds present as zeros: an
/// outage has to show as a drop to zero, not as a line drawn straight across it.
pub fn per_second(samples: &[Sample], run_len: Duration) -> Vec<Bucket> {
    let run_secs = run_len.as_secs() + u64::from(run_len.subsec_nanos() > 0);
    let last = samples
        .iter()
        .map(|s| s.complete.as_secs() + 1)
        .max()
        .unwrap_or(0);
    let len = run_secs.max(last);

    let mut acked = vec![0usize; len as usize];
    let mut failed = vec![0usize; len as usize];
    let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); len as usize];
    for s in samples {
        let i = s.complete.as_secs() as usize;
        if s.acked {
            acked[i] += 1;
            latencies[i].push(s.complete.saturating_sub(s.invoke));
        } else {
            failed[i] += 1;
        }
    }
    latencies
        .into_iter()
        .enumerate()
        .map(|(i, mut lat)| Bucket {
            second: i as u64,
            acked: acked[i],
            failed: failed[i],
            p99: nearest_rank(&mut lat, 99),
        })
        .collect()
}

/// The `pct` percentile by nearest rank: the smallest value with at least `pct`% of the values
/// at or below it. No interpolation, so the answer is always a latency that was observed.
fn nearest_rank(values: &mut [Duration], pct: usize) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let rank = (pct * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// The label of the row for requests that overlapped no fault window.
pub const NO_FAULT: &str = "no fault";

/// Answers by status for the requests in flight during one fault window (or during no
/// window at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowCounts {
    /// The window's label, or [`NO_FAULT`].
    pub label: String,
    /// The window's `(from, to)`; `None` for the no-fault row, which is not one interval.
    pub span: Option<(Duration, Duration)>,
    /// Requests counted in this row.
    pub total: usize,
    /// Of those, how many were acknowledged.
    pub acked: usize,
    /// Of those, how many had each status (0 = no answer), acknowledged or not.
    pub by_status: BTreeMap<u16, usize>,
}

impl WindowCounts {
    fn new(label: String, span: Option<(Duration, Duration)>) -> Self {
        WindowCounts {
            label,
            span,
            total: 0,
            acked: 0,
            by_status: BTreeMap::new(),
        }
    }

    fn add(&mut self, s: &Sample) {
        self.total += 1;
        self.acked += usize::from(s.acked);
        *self.by_status.entry(s.status).or_insert(0) += 1;
    }
}

/// Whether the request was in flight at some point during the window. A request sent before
/// a fault and answered during it was exposed to the fault, so it counts; a zero-length
/// window (an instantaneous fault such as a kill) counts what was in flight at that instant.
fn overlaps(s: &Sample, w: &Window) -> bool {
    s.invoke < w.to && s.complete >= w.from
}

/// One row per window, in the order given, then a [`NO_FAULT`] row for the requests that
/// overlapped no window. A request overlapping several windows counts in each of them, so the
/// rows need not add up to the number of samples.
pub fn window_counts(samples: &[Sample], windows: &[Window]) -> Vec<WindowCounts> {
    let mut rows: Vec<WindowCounts> = windows
        .iter()
        .map(|w| WindowCounts::new(w.label.clone(), Some((w.from, w.to))))
        .collect();
    let mut calm = WindowCounts::new(NO_FAULT.to_string(), None);
    for s in samples {
        let mut any = false;
        for (w, row) in windows.iter().zip(rows.iter_mut()) {
            if overlaps(s, w) {
                row.add(s);
                any = true;
            }
        }
        if !any {
            calm.add(s);
        }
    }
    rows.push(calm);
    rows
}

/// The window counts as an aligned text table for the report: window, from-to seconds, total,
/// acknowledged, then `status:count` pairs (`none` for no answer).
pub fn render_window_table(rows: &[WindowCounts]) -> String {
    let header = [
        "window".to_string(),
        "seconds".to_string(),
        "total".to_string(),
        "acked".to_string(),
        "statuses".to_string(),
    ];
    let mut cells: Vec<[String; 5]> = vec![header];
    for r in rows {
        let span = match r.span {
            Some((from, to)) => format!("{:.1}-{:.1}", from.as_secs_f64(), to.as_secs_f64()),
            None => "-".to_string(),
        };
        let statuses = r
            .by_status
            .iter()
            .map(|(status, n)| match status {
                0 => format!("none:{n}"),
                s => format!("{s}:{n}"),
            })
            .collect::<Vec<_>>()
            .join(" ");
        cells.push([
            r.label.clone(),
            span,
            r.total.to_string(),
            r.acked.to_string(),
            statuses,
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        // Text columns left-aligned, numbers right-aligned; the last column is not padded so
        // lines carry no trailing spaces.
        let line = format!(
            "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Whether each city took writes again after the heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Liveness {
    /// When the last fault was repaired.
    pub heal_at: Duration,
    /// How soon after `heal_at` every city must acknowledge a write again.
    pub bound: Duration,
    /// Per city, how long after `heal_at` the first acknowledgement of a request sent at or
    /// after `heal_at` arrived; `None` when no such request was acknowledged.
    pub per_city: BTreeMap<String, Option<Duration>>,
    /// Per city, when its last acknowledgement before `heal_at` arrived, so that a violation
    /// says how long the city had been down.
    pub last_ack_before_heal: BTreeMap<String, Option<Duration>>,
}

/// Judges liveness after the heal for the given cities.
///
/// Only requests sent at or after `heal_at` count: an acknowledgement of a request sent
/// before the heal may have been held through the fault and says nothing about whether the
/// repaired system takes new writes. Among those, the earliest completion is taken, since
/// that is when the city was taking writes again. Cities in `cities` with no samples at all
/// are reported as never acknowledged; samples of cities not listed are ignored.
pub fn liveness<I>(samples: &[Sample], cities: I, heal_at: Duration, bound: Duration) -> Liveness
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut per_city: BTreeMap<String, Option<Duration>> = BTreeMap::new();
    let mut last_ack_before_heal: BTreeMap<String, Option<Duration>> = BTreeMap::new();
    for c in cities {
        per_city.insert(c.as_ref().to_string(), None);
        last_ack_before_heal.insert(c.as_ref().to_string(), None);
    }
    for s in samples.iter().filter(|s| s.acked) {
        if s.invoke >= heal_at {
            if let Some(first) = per_city.get_mut(&s.city) {
                let after = s.complete.saturating_sub(heal_at);
                *first = Some(first.map_or(after, |f| f.min(after)));
            }
        } else if s.complete < heal_at {
            if let Some(last) = last_ack_before_heal.get_mut(&s.city) {
                *last = Some(last.map_or(s.complete, |l| l.max(s.complete)));
            }
        }
    }
    Liveness {
        heal_at,
        bound,
        per_city,
        last_ack_before_heal,
    }
}

impl Liveness {
    /// One sentence per city that did not acknowledge a write within `bound` of the heal.
    pub fn violations(&self) -> Vec<String> {
        self.per_city
            .iter()
            .filter_map(|(city, first)| self.violation(city, *first))
            .collect()
    }

    /// Whether every city acknowledged a write within the bound.
    pub fn is_ok(&self) -> bool {
        self.violations().is_empty()
    }

    fn violation(&self, city: &str, first: Option<Duration>) -> Option<String> {
        match first {
            Some(after) if after <= self.bound => None,
            Some(after) => Some(format!(
                "city {city}: first write after the heal acknowledged {} after it, over the {} bound",
                secs(after),
                secs(self.bound),
            )),
            None => {
                let last = match self.last_ack_before_heal.get(city).copied().flatten() {
                    Some(t) => format!("last ack at {}", secs(t)),
                    None => "never acknowledged before it either".to_string(),
                };
                Some(format!(
                    "city {city}: no write acknowledged within {} of the heal at {} ({last})",
                    secs(self.bound),
                    secs(self.heal_at),
                ))
            }
        }
    }
}

/// One line per city: either when it acknowledged again, or its violation.
impl fmt::Display for Liveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (city, first) in &self.per_city {
            match (self.violation(city, *first), first) {
                (Some(v), _) => writeln!(f, "VIOLATION {v}")?,
                (None, Some(after)) => writeln!(
                    f,
                    "ok city {city}: write acknowledged {} after the heal at {} (bound {})",
                    secs(*after),
                    secs(self.heal_at),
                    secs(self.bound),
                )?,
                // A city without an acknowledgement is always a violation.
                (None, None) => {}
            }
        }
        Ok(())
    }
}

/// Seconds with up to millisecond precision and no trailing zeros: `20s`, `1.25s`.
fn secs(d: Duration) -> String {
    let s = format!("{:.3}", d.as_secs_f64());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}s")
}

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    /// plotters' errors are generic over the backend; only the message matters to the report.
    #[error("drawing the timeline: {0}")]
    Draw(String),
}

fn draw_err<E: fmt::Display>(e: E) -> TimelineError {
    TimelineError::Draw(e.to_string())
}

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 720;
const FONT: &str = "sans-serif";
const ACKED_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const FAILED_COLOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const P99_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// Band colors, picked per distinct label in order of first appearance; chosen to stay
/// distinguishable from the series colors when translucent.
const BAND_COLORS: [RGBColor; 8] = [
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x7f, 0x7f, 0x7f),
    RGBColor(0xbc, 0xbd, 0x22),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0xff, 0xbb, 0x00),
];
const BAND_ALPHA: f64 = 0.2;

/// Draws the run as an SVG document: requests/s (acknowledged and failed) on top, p99 latency
/// of the acknowledged ones below, both over seconds since the start, with each fault window
/// as a translucent band (labelled in the top panel) and the heal as a vertical line.
///
/// SVG because plotters' SVG backend writes text as `<text>` itself and so needs no system
/// font libraries, and because the report is read in a browser anyway.
pub fn render_svg(
    buckets: &[Bucket],
    windows: &[Window],
    heal_at: Option<Duration>,
    title: &str,
) -> Result<String, TimelineError> {
    let x_max = buckets
        .iter()
        .map(|b| (b.second + 1) as f64)
        .chain(windows.iter().map(|w| w.from.max(w.to).as_secs_f64()))
        .chain(heal_at.map(|h| h.as_secs_f64()))
        .fold(1.0f64, f64::max);
    let bands = band_spans(windows, x_max);
    let colors = band_colors(windows);

    let rate_max = buckets
        .iter()
        .map(|b| b.acked.max(b.failed) as f64)
        .fold(0.0f64, f64::max);
    let rate_top = (rate_max * 1.15).max(1.0);
    let ms_max = buckets
        .iter()
        .filter_map(|b| b.p99)
        .map(|d| d.as_secs_f64() * 1000.0)
        .fold(0.0f64, f64::max);
    let ms_top = (ms_max * 1.15).max(1.0);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let root = root.titled(title, (FONT, 22)).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(55.percent_height());

        // Top panel: requests per second.
        let mut chart = ChartBuilder::on(&top)
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..rate_top)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .y_desc("requests/s")
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(bands.iter().zip(&colors).map(|(&(x0, x1), c)| {
                Rectangle::new([(x0, 0.0), (x1, rate_top)], c.mix(BAND_ALPHA).filled())
            }))
            .map_err(draw_err)?;
        // Labels staggered over a few rows so that adjacent windows do not print on top of
        // each other.
        chart
            .draw_series(windows.iter().zip(&bands).zip(&colors).enumerate().map(
                |(i, ((w, &(x0, _)), c))| {
                    let y = rate_top * (0.97 - 0.07 * (i % 4) as f64);
                    Text::new(w.label.clone(), (x0, y), (FONT, 15).into_font().color(c))
                },
            ))
            .map_err(draw_err)?;
        chart
            .draw_series(LineSeries::new(
                steps(buckets, |b| b.acked as f64),
                ACKED_COLOR.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label("acked/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], ACKED_COLOR.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                steps(buckets, |b| b.failed as f64),
                FAILED_COLOR.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label("failed/s")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], FAILED_COLOR.stroke_width(2)));
        if let Some(h) = heal_at {
            let h = h.as_secs_f64();
            chart
                .draw_series(DashedLineSeries::new(
                    [(h, 0.0), (h, rate_top)],
                    6,
                    4,
                    BLACK.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label("heal")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .draw()
            .map_err(draw_err)?;

        // Bottom panel: p99 latency of the acknowledged requests.
        let mut chart = ChartBuilder::on(&bottom)
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..ms_top)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .x_desc("seconds since start")
            .y_desc("p99 latency (ms)")
            .draw()
            .map_err(draw_err)?;
        chart
            .draw_series(bands.iter().zip(&colors).map(|(&(x0, x1), c)| {
                Rectangle::new([(x0, 0.0), (x1, ms_top)], c.mix(BAND_ALPHA).filled())
            }))
            .map_err(draw_err)?;
        // One line per run of seconds that had acknowledgements, so that seconds without
        // any show as gaps.
        for run in p99_runs(buckets) {
            chart
                .draw_series(LineSeries::new(run, P99_COLOR.stroke_width(2)))
                .map_err(draw_err)?;
        }
        if let Some(h) = heal_at {
            let h = h.as_secs_f64();
            chart
                .draw_series(DashedLineSeries::new(
                    [(h, 0.0), (h, ms_top)],
                    6,
                    4,
                    BLACK.stroke_width(2),
                ))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The x extent of each window's band, ordered and at least a sliver wide so that an
/// instantaneous fault is still visible.
fn band_spans(windows: &[Window], x_max: f64) -> Vec<(f64, f64)> {
    let min_width = x_max / 300.0;
    windows
        .iter()
        .map(|w| {
            let (a, b) = (w.from.min(w.to), w.from.max(w.to));
            let x0 = a.as_secs_f64();
            let x1 = b.as_secs_f64().max(x0 + min_width);
            (x0, x1)
        })
        .collect()
}

/// A color per window: the same label gets the same color, distinct labels get distinct
/// colors until the palette runs out.
fn band_colors(windows: &[Window]) -> Vec<RGBColor> {
    let mut seen: Vec<&str> = Vec::new();
    windows
        .iter()
        .map(|w| {
            let i = match seen.iter().position(|l| *l == w.label) {
                Some(i) => i,
                None => {
                    seen.push(&w.label);
                    seen.len() - 1
                }
            };
            BAND_COLORS[i % BAND_COLORS.len()]
        })
        .collect()
}

/// A step line: each bucket's value held across its whole second, which is what a per-second
/// count means, and which leaves a single bucket visible as a segment rather than a point.
fn steps(buckets: &[Bucket], value: impl Fn(&Bucket) -> f64) -> Vec<(f64, f64)> {
    buckets
        .iter()
        .flat_map(|b| {
            let (x, y) = (b.second as f64, value(b));
            [(x, y), (x + 1.0, y)]
        })
        .collect()
}

/// Step lines of p99 in milliseconds, split wherever a second had no acknowledgement or
/// seconds are not consecutive.
fn p99_runs(buckets: &[Bucket]) -> Vec<Vec<(f64, f64)>> {
    let mut runs: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut prev: Option<u64> = None;
    for b in buckets {
        let Some(p99) = b.p99 else {
            prev = None;
            continue;
        };
        let (x, y) = (b.second as f64, p99.as_secs_f64() * 1000.0);
        match runs.last_mut() {
            Some(run) if prev.is_some_and(|p| p + 1 == b.second) => {
                run.extend([(x, y), (x + 1.0, y)]);
            }
            _ => runs.push(vec![(x, y), (x + 1.0, y)]),
        }
        prev = Some(b.second);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn sample(city: &str, invoke: u64, complete: u64, status: u16, acked: bool) -> Sample {
        Sample {
            city: city.to_string(),
            op: "create".to_string(),
            invoke: ms(invoke),
            complete: ms(complete),
            status,
            acked,
        }
    }

    fn window(label: &str, from: u64, to: u64) -> Window {
        Window {
            label: label.to_string(),
            from: ms(from),
            to: ms(to),
        }
    }

    #[test]
    fn buckets_count_by_completion_and_take_nearest_rank_p99() {
        let mut samples = vec![
            // Sent in second 0, completed in second 1: counts in second 1.
            sample("010", 900, 1_100, 201, true),
            sample("010", 1_000, 1_010, 200, true),
            sample("021", 1_200, 1_900, 503, false),
            sample("021", 1_300, 1_950, 0, false),
        ];
        // Second 3: 100 acked requests with latencies 1..=100 ms, so p99 is 99 ms by
        // nearest rank (rank ceil(0.99 * 100) = 99).
        for i in 1..=100 {
            samples.push(sample("010", 3_000, 3_000 + i, 201, true));
        }
        let b = per_second(&samples, Duration::from_millis(4_500));
        assert_eq!(b.len(), 5, "run of 4.5s rounds up to 5 buckets");
        assert_eq!(
            b[0],
            Bucket {
                second: 0,
                acked: 0,
                failed: 0,
                p99: None
            }
        );
        assert_eq!(b[1].acked, 2);
        assert_eq!(b[1].failed, 2);
        // Two latencies (200 ms, 10 ms): rank ceil(0.99 * 2) = 2, the larger.
        assert_eq!(b[1].p99, Some(ms(200)));
        assert_eq!(
            b[2],
            Bucket {
                second: 2,
                acked: 0,
                failed: 0,
                p99: None
            }
        );
        assert_eq!(b[3].acked, 100);
        assert_eq!(b[3].p99, Some(ms(99)));
        assert_eq!(b[4].acked, 0);
    }

    #[test]
    fn buckets_extend_past_run_len_and_handle_empty_input() {
        assert!(per_second(&[], Duration::ZERO).is_empty());
        assert_eq!(per_second(&[], Duration::from_secs(3)).len(), 3);
        // A late completion is not dropped; a completion before its invoke does not panic.
        let b = per_second(
            &[sample("010", 6_000, 5_500, 200, true)],
            Duration::from_secs(2),
        );
        assert_eq!(b.len(), 6);
        assert_eq!(b[5].acked, 1);
        assert_eq!(b[5].p99, Some(Duration::ZERO));
    }

    #[test]
    fn window_counts_include_overlapping_requests_and_a_no_fault_row() {
        let windows = vec![
            window("kill-router beijing", 10_000, 20_000),
            window("partition 010-021", 15_000, 25_000),
            // Instantaneous fault at 30 s.
            window("kill-pg shanghai", 30_000, 30_000),
        ];
        let samples = vec![
            // Sent before the first window, answered during it: exposed to it.
            sample("010", 9_000, 10_500, 0, false),
            // In both of the first two windows.
            sample("010", 16_000, 17_000, 201, true),
            // Sent exactly at the end of the first window: not in it, in the second.
            sample("021", 20_000, 20_100, 503, false),
            // Completed exactly at the start of the first window: in flight at its start.
            sample("021", 9_500, 10_000, 201, true),
            // In flight across the instant of the third window.
            sample("021", 29_900, 30_100, 201, true),
            // Overlaps nothing.
            sample("010", 1_000, 1_100, 201, true),
            sample("010", 26_000, 26_100, 409, false),
        ];
        let rows = window_counts(&samples, &windows);
        assert_eq!(rows.len(), 4);

        assert_eq!(rows[0].label, "kill-router beijing");
        assert_eq!(rows[0].span, Some((ms(10_000), ms(20_000))));
        assert_eq!(rows[0].total, 3);
        assert_eq!(rows[0].acked, 2);
        assert_eq!(rows[0].by_status, BTreeMap::from([(0, 1), (201, 2)]));

        assert_eq!(rows[1].total, 2);
        assert_eq!(rows[1].acked, 1);
        assert_eq!(rows[1].by_status, BTreeMap::from([(201, 1), (503, 1)]));

        assert_eq!(rows[2].total, 1);
        assert_eq!(rows[2].by_status, BTreeMap::from([(201, 1)]));

        assert_eq!(rows[3].label, NO_FAULT);
        assert_eq!(rows[3].span, None);
        assert_eq!(rows[3].total, 2);
        assert_eq!(rows[3].acked, 1);
        assert_eq!(rows[3].by_status, BTreeMap::from([(201, 1), (409, 1)]));

        let table = render_window_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("window"), "{table}");
        assert!(lines[1].contains("10.0-20.0"), "{table}");
        assert!(lines[1].ends_with("none:1 201:2"), "{table}");
        assert!(lines[4].starts_with("no fault"), "{table}");
        assert!(lines[4].ends_with("201:1 409:1"), "{table}");
        // Aligned: the seconds column starts at the same offset on every line.
        let col = lines[0]
            .find("seconds")
            .expect("header has a seconds column");
        assert_eq!(lines[1].find("10.0-20.0"), Some(col), "{table}");
        assert_eq!(lines[4].find('-'), Some(col), "{table}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{table}");
    }

    #[test]
    fn window_counts_without_windows_is_all_no_fault() {
        let rows = window_counts(&[sample("010", 0, 10, 201, true)], &[]);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].label, NO_FAULT);
        assert_eq!(rows[0].total, 1);
        assert_eq!(render_window_table(&[]).lines().count(), 1);
    }

    #[test]
    fn liveness_ok_when_every_city_acks_within_the_bound() {
        let heal = Duration::from_secs(60);
        let samples = vec![
            sample("010", 59_000, 61_000, 201, true), // sent before the heal: ignored
            sample("010", 60_000, 62_000, 201, true),
            sample("010", 60_500, 61_500, 200, true), // later sent, earlier acked
            sample("021", 61_000, 65_000, 0, false),
            sample("021", 62_000, 70_000, 201, true),
        ];
        let l = liveness(&samples, ["010", "021"], heal, Duration::from_secs(20));
        assert_eq!(l.per_city["010"], Some(ms(1_500)));
        assert_eq!(l.per_city["021"], Some(ms(10_000)));
        assert!(l.violations().is_empty());
        assert!(l.is_ok());
        let shown = l.to_string();
        assert_eq!(shown.lines().count(), 2, "{shown}");
        assert!(
            shown.contains("city 010: write acknowledged 1.5s after the heal"),
            "{shown}"
        );
        assert!(shown.contains("bound 20s"), "{shown}");
    }

    #[test]
    fn liveness_names_each_city_without_a_timely_ack() {
        let heal = Duration::from_secs(60);
        let samples = vec![
            sample("010", 60_000, 60_100, 201, true),
            // 021: last ack before the heal at 41.2 s, nothing acknowledged after.
            sample("021", 41_000, 41_200, 201, true),
            sample("021", 61_000, 66_000, 0, false),
            // 0571: acknowledged, but 25 s after the heal.
            sample("0571", 84_000, 85_000, 201, true),
            // Not a listed city: ignored.
            sample("999", 61_000, 61_100, 201, true),
        ];
        let cities = vec![
            "010".to_string(),
            "021".to_string(),
            "0571".to_string(),
            "0755".to_string(),
        ];
        let l = liveness(&samples, &cities, heal, Duration::from_secs(20));
        assert!(!l.per_city.contains_key("999"));
        let v = l.violations();
        assert_eq!(v.len(), 3, "{v:?}");
        assert_eq!(
            v[0],
            "city 021: no write acknowledged within 20s of the heal at 60s (last ack at 41.2s)"
        );
        assert_eq!(
            v[1],
            "city 0571: first write after the heal acknowledged 25s after it, over the 20s bound"
        );
        assert!(
            v[2].starts_with("city 0755: no write acknowledged"),
            "{v:?}"
        );
        assert!(v[2].contains("never acknowledged"), "{v:?}");
        let shown = l.to_string();
        assert_eq!(shown.lines().count(), 4, "{shown}");
        assert_eq!(shown.matches("VIOLATION").count(), 3, "{shown}");
    }

    #[test]
    fn svg_renders_empty_input() {
        let svg = render_svg(&[], &[], None, "empty run").expect("renders");
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains("empty run"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn svg_renders_a_single_bucket_and_zero_length_window() {
        let buckets = per_second(&[sample("010", 0, 100, 201, true)], Duration::ZERO);
        assert_eq!(buckets.len(), 1);
        let windows = [window("kill-router beijing", 0, 0)];
        let svg = render_svg(&buckets, &windows, Some(Duration::ZERO), "one").expect("renders");
        assert!(svg.contains("<svg"));
        assert!(svg.contains("kill-router beijing"));
    }

    #[test]
    fn svg_draws_a_band_per_window_in_each_panel() {
        let mut samples = Vec::new();
        for s in 0..40u64 {
            samples.push(sample("010", s * 1_000, s * 1_000 + 30 + s, 201, true));
            if (10..20).contains(&s) {
                samples.push(sample("021", s * 1_000, s * 1_000 + 900, 0, false));
            }
        }
        let buckets = per_second(&samples, Duration::from_secs(40));
        let windows = [
            window("kill-router beijing", 10_000, 20_000),
            window("partition 010<->021", 15_000, 25_000),
            window("kill-router beijing", 30_000, 32_000),
        ];
        let heal = Some(Duration::from_secs(32));
        let bare = render_svg(&buckets, &[], heal, "run 7").expect("renders");
        let svg = render_svg(&buckets, &windows, heal, "run 7").expect("renders");
        assert!(svg.contains("<svg"));
        // Everything but the bands is the same in both pictures.
        let rects = |s: &str| s.matches("<rect").count();
        assert_eq!(rects(&svg) - rects(&bare), 2 * windows.len(), "{svg}");
        // Labels are written as text (on a line of their own inside <text>), escaped.
        assert_eq!(svg.matches("\nkill-router beijing\n").count(), 2, "{svg}");
        assert!(svg.contains("partition 010&lt;-&gt;021"), "{svg}");
        for text in [
            "acked/s",
            "failed/s",
            "heal",
            "p99 latency (ms)",
            "seconds since start",
        ] {
            assert!(svg.contains(text), "missing {text}");
        }
        // Same label, same color; distinct labels, distinct colors.
        let colors = band_colors(&windows);
        assert_eq!(colors[0], colors[2]);
        assert_ne!(colors[0], colors[1]);
    }
}
