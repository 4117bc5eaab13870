//! The replicator's metrics, exported as OpenMetrics text on the admin
//! `/metrics` ([`crate::admin`]).
//!
//! One registry per replicator (no global state). The links keep their
//! numbers in [`LinkStats`] (atomics the link task updates); a collector
//! reads them at scrape time, so nothing is copied on the apply path. Every
//! metric has one label, `link` (`source->target`, from the topology's site
//! names, which are lowercase). Counters are counters (`_total`), units are
//! in the names, and rates are left to the query
//! (`rate(ezone_replicator_applied_rows_total[1m])`).

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::link::LinkStats;

#[cfg(any(test, feature = "test-support"))]
pub mod lint;

/// The metric name prefix.
pub const PREFIX: &str = "ezone_replicator";

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value {
    Count(u64),
    /// A counter of seconds.
    Seconds(f64),
    Int(i64),
    Float(f64),
}

/// One per-link metric: its name (without the prefix, the unit and
/// `_total`), unit, help, type, and how to read it from a link's stats.
struct Def {
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    kind: MetricType,
    read: fn(&LinkStats) -> Value,
}

fn counter(name: &'static str, help: &'static str, read: fn(&LinkStats) -> Value) -> Def {
    Def {
        name,
        unit: None,
        help,
        kind: MetricType::Counter,
        read,
    }
}

fn gauge(
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    read: fn(&LinkStats) -> Value,
) -> Def {
    Def {
        name,
        unit,
        help,
        kind: MetricType::Gauge,
        read,
    }
}

/// Every per-link metric, in the order exported.
fn defs() -> Vec<Def> {
    vec![
        counter(
            "applied_transactions",
            "Source transactions applied at the target",
            |s| Value::Count(s.applied_txns.load(Ordering::Relaxed)),
        ),
        counter("applied_rows", "Row changes applied at the target", |s| {
            Value::Count(s.applied_rows.load(Ordering::Relaxed))
        }),
        counter(
            "applied_batches",
            "Target transactions that applied source transactions (consecutive ones are batched: rows per batch is applied_rows_total / applied_batches_total)",
            |s| Value::Count(s.applied_batches.load(Ordering::Relaxed)),
        ),
        counter(
            "skipped_origin_transactions",
            "Source transactions not applied because they carry a replication origin (loop prevention)",
            |s| Value::Count(s.skipped_origin_txns.load(Ordering::Relaxed)),
        ),
        counter(
            "large_transactions",
            "Source transactions too large to hold whole (large_transaction_bytes), applied as they arrived in parts of one target transaction",
            |s| Value::Count(s.large_txns.load(Ordering::Relaxed)),
        ),
        counter(
            "streamed_transactions",
            "Source transactions streamed before their commit (streaming) that committed and were applied (or skipped by loop prevention)",
            |s| Value::Count(s.streamed_txns.load(Ordering::Relaxed)),
        ),
        counter(
            "streamed_aborts",
            "Source transactions streamed before their commit that aborted at the source (what was kept of them is dropped)",
            |s| Value::Count(s.streamed_aborts.load(Ordering::Relaxed)),
        ),
        gauge(
            "spooled",
            Some(Unit::Bytes),
            "Bytes of streamed source transactions kept in spool_dir, waiting for their commit",
            |s| Value::Int(i64::try_from(s.spooled_bytes.load(Ordering::Relaxed)).unwrap_or(i64::MAX)),
        ),
        counter(
            "conflicts",
            "Conflicts recorded at the target (ezone_replication.conflicts)",
            |s| Value::Count(s.conflicts.load(Ordering::Relaxed)),
        ),
        counter(
            "markers",
            "Logical messages (markers) applied at the target",
            |s| Value::Count(s.markers.load(Ordering::Relaxed)),
        ),
        counter(
            "restarts",
            "Link restarts after transient errors",
            |s| Value::Count(s.restarts.load(Ordering::Relaxed)),
        ),
        gauge(
            "lag",
            Some(Unit::Bytes),
            "Source WAL reported by the stream and not yet applied at the target (0 when caught up)",
            |s| Value::Int(i64::try_from(s.lag_bytes()).unwrap_or(i64::MAX)),
        ),
        gauge(
            "lag",
            Some(Unit::Seconds),
            "Age of the last applied source commit while the link is behind; 0 when caught up; NaN while behind with nothing applied since the start",
            |s| Value::Float(s.lag_seconds().unwrap_or(f64::NAN)),
        ),
        gauge(
            "slot_retained_wal",
            Some(Unit::Bytes),
            "WAL the source keeps for this link's slot, sampled every 5 s (-1: unknown); a dead or slow link shows here before the disk fills",
            |s| Value::Int(s.retained_wal_bytes.load(Ordering::Relaxed)),
        ),
        gauge(
            "applied_lsn",
            Some(Unit::Bytes),
            "The source end LSN of the last transaction applied, as a WAL byte position",
            |s| {
                Value::Int(
                    i64::try_from(s.last_end_lsn.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
                )
            },
        ),
        gauge(
            "streaming",
            None,
            "1 while the link streams from its source, 0 while it connects or restarts",
            |s| Value::Int(i64::from(s.streaming.load(Ordering::Relaxed))),
        ),
        gauge(
            "link_stopped",
            None,
            "1 while the link is stopped by a definite error (schema drift, a missing publication, refused credentials) until it tries again; the other links go on",
            |s| Value::Int(i64::from(s.stopped.load(Ordering::Relaxed))),
        ),
        gauge(
            "lanes",
            None,
            "Target connections the link applies over now (its apply_workers, or what auto chose; 0 before it first streams)",
            |s| Value::Int(i64::try_from(s.lane_count.load(Ordering::Relaxed)).unwrap_or(i64::MAX)),
        ),
        counter(
            "lane_changes",
            "Lanes apply_workers = \"auto\" opened or gave back (the log says why each time): climbing while the lanes gauge stands still is a link trying lanes that do not pay",
            |s| Value::Count(s.lane_changes.load(Ordering::Relaxed)),
        ),
        counter(
            "held_back_batches",
            "Batches that found a lane free but waited because they touch rows of a batch in flight (more lanes would not have helped them)",
            |s| Value::Count(s.held_back_batches.load(Ordering::Relaxed)),
        ),
        gauge(
            "source_silence",
            Some(Unit::Seconds),
            "Seconds since the source last spoke on the link's stream (accepted its position, sent WAL or a keepalive); NaN if it never has",
            |s| Value::Float(s.source_silence().map_or(f64::NAN, |d| d.as_secs_f64())),
        ),
    ]
}

/// One per-lane metric: like [`Def`], read from one lane's stats.
struct LaneDef {
    name: &'static str,
    unit: Option<Unit>,
    help: &'static str,
    read: fn(&crate::link::LaneStats) -> Value,
}

/// Every per-lane metric (all counters), labelled `link` and `lane`.
fn lane_defs() -> Vec<LaneDef> {
    vec![
        LaneDef {
            name: "lane_applied_batches",
            unit: None,
            help: "Target transactions committed on this lane of the link",
            read: |l| Value::Count(l.batches.load(Ordering::Relaxed)),
        },
        LaneDef {
            name: "lane_busy",
            unit: Some(Unit::Seconds),
            help: "Time this lane held a batch, from its start to its commit (waiting for its turn to commit included); its rate is the lane's utilisation",
            read: |l| Value::Seconds(l.busy_us.load(Ordering::Relaxed) as f64 / 1e6),
        },
    ]
}

/// One link's label set.
type LinkLabel<'a> = [(&'static str, &'a str); 1];
/// One lane's label set.
type LaneLabel<'a> = [(&'static str, &'a str); 2];

/// Reads every link's stats at scrape time.
struct Links {
    links: crate::link_set::LinkSet,
    defs: Vec<Def>,
    lane_defs: Vec<LaneDef>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").field("links", &self.links).finish()
    }
}

impl Collector for Links {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One copy of the set per scrape: every family lists the same links.
        let links = self.links.snapshot();
        for d in &self.defs {
            let mut family = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), d.kind)?;
            for (link, stats) in &links {
                let labels: LinkLabel = [("link", link.as_str())];
                let mut sample = family.encode_family(&labels)?;
                encode_value(&mut sample, (d.read)(stats))?;
            }
        }
        for d in &self.lane_defs {
            let kind = MetricType::Counter;
            let mut family = encoder.encode_descriptor(d.name, d.help, d.unit.as_ref(), kind)?;
            for (link, stats) in &links {
                // The lanes open now and every lane that ever held a batch
                // (`auto` opens and gives lanes back; a counter stays).
                let count =
                    usize::try_from(stats.lane_count.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
                for (i, lane) in stats.lanes.iter().enumerate() {
                    if i >= count && lane.batches.load(Ordering::Relaxed) == 0 {
                        continue;
                    }
                    let index = i.to_string();
                    let labels: LaneLabel = [("link", link.as_str()), ("lane", index.as_str())];
                    let mut sample = family.encode_family(&labels)?;
                    encode_value(&mut sample, (d.read)(lane))?;
                }
            }
        }
        Ok(())
    }
}

fn encode_value(
    sample: &mut prometheus_client::encoding::MetricEncoder<'_>,
    value: Value,
) -> Result<(), std::fmt::Error> {
    match value {
        Value::Count(v) => sample.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Value::Seconds(v) => sample.encode_counter::<NoLabelSet, _, u64>(&v, None),
        Value::Int(v) => sample.encode_gauge(&v),
        Value::Float(v) => sample.encode_gauge(&v),
    }
}

/// Every metric a replicator exports.
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// Metrics over these links (`source->target` to its stats).
    pub fn new(links: impl Into<crate::link_set::LinkSet>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(Links {
            links: links.into(),
            defs: defs(),
            lane_defs: lane_defs(),
        }));
        Metrics { registry }
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the scrape well-formed anyway.
            out = "# EOF\n".to_string();
        }
        out
    }

    /// The same metrics in the Prometheus text format 0.0.4, for tools that
    /// read only that (`promtool check metrics`).
    pub fn render_prometheus_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    /// Two links with every counter and gauge set.
    fn links() -> BTreeMap<String, Arc<LinkStats>> {
        let a = LinkStats::default();
        a.applied_txns.store(120, Ordering::Relaxed);
        a.applied_rows.store(150, Ordering::Relaxed);
        a.applied_batches.store(7, Ordering::Relaxed);
        a.skipped_origin_txns.store(3, Ordering::Relaxed);
        a.conflicts.store(2, Ordering::Relaxed);
        a.markers.store(1, Ordering::Relaxed);
        a.restarts.store(4, Ordering::Relaxed);
        a.source_wal_end.store(5000, Ordering::Relaxed);
        a.caught_up_lsn.store(4000, Ordering::Relaxed);
        a.last_end_lsn.store(4000, Ordering::Relaxed);
        a.retained_wal_bytes.store(65536, Ordering::Relaxed);
        a.streaming.store(true, Ordering::Relaxed);
        a.heard_from_source();
        a.lane_count.store(2, Ordering::Relaxed);
        a.held_back_batches.store(5, Ordering::Relaxed);
        a.lane_changes.store(3, Ordering::Relaxed);
        // A lane `auto` gave back, past the two open now.
        a.lanes[3].batches.store(4, Ordering::Relaxed);
        a.streamed_txns.store(9, Ordering::Relaxed);
        a.streamed_aborts.store(2, Ordering::Relaxed);
        a.spooled_bytes.store(4096, Ordering::Relaxed);
        a.lanes[0].batches.store(6, Ordering::Relaxed);
        a.lanes[0].busy_us.store(1_500_000, Ordering::Relaxed);
        a.lanes[1].batches.store(1, Ordering::Relaxed);
        let b = LinkStats::default();
        b.retained_wal_bytes.store(-1, Ordering::Relaxed);
        [("beijing->shanghai", a), ("guangzhou->shanghai", b)]
            .into_iter()
            .map(|(n, s)| (n.to_string(), Arc::new(s)))
            .collect()
    }

    #[test]
    fn the_exposition_is_strict_openmetrics_with_counters_and_units() {
        let m = Metrics::new(links());
        let text = m.render();
        let e = lint::check(&text).unwrap_or_else(|e| panic!("{e}"));
        let ab = [("link", "beijing->shanghai")];
        for (name, want) in [
            ("ezone_replicator_applied_transactions_total", 120.0),
            ("ezone_replicator_applied_rows_total", 150.0),
            ("ezone_replicator_applied_batches_total", 7.0),
            ("ezone_replicator_skipped_origin_transactions_total", 3.0),
            ("ezone_replicator_conflicts_total", 2.0),
            ("ezone_replicator_markers_total", 1.0),
            ("ezone_replicator_restarts_total", 4.0),
            ("ezone_replicator_lag_bytes", 1000.0),
            ("ezone_replicator_slot_retained_wal_bytes", 65536.0),
            ("ezone_replicator_applied_lsn_bytes", 4000.0),
            ("ezone_replicator_streaming", 1.0),
            ("ezone_replicator_lanes", 2.0),
            ("ezone_replicator_held_back_batches_total", 5.0),
            ("ezone_replicator_lane_changes_total", 3.0),
            ("ezone_replicator_streamed_transactions_total", 9.0),
            ("ezone_replicator_streamed_aborts_total", 2.0),
            ("ezone_replicator_spooled_bytes", 4096.0),
        ] {
            assert_eq!(e.value(name, &ab), Some(want), "{name}:\n{text}");
        }
        // Per lane: the lanes the link has and any that ever held a batch;
        // none before it streams.
        for (lane, batches, busy) in [("0", 6.0, 1.5), ("1", 1.0, 0.0), ("3", 4.0, 0.0)] {
            let l = [("link", "beijing->shanghai"), ("lane", lane)];
            assert_eq!(
                e.value("ezone_replicator_lane_applied_batches_total", &l),
                Some(batches),
                "lane {lane}:\n{text}"
            );
            assert_eq!(
                e.value("ezone_replicator_lane_busy_seconds_total", &l),
                Some(busy),
                "lane {lane}:\n{text}"
            );
        }
        assert_eq!(
            e.family("ezone_replicator_lane_busy_seconds").map(|f| (
                f.kind.as_str(),
                f.unit.as_deref(),
                f.samples.len()
            )),
            Some(("counter", Some("seconds"), 3)),
            "{text}"
        );
        let gz = [("link", "guangzhou->shanghai")];
        assert_eq!(
            e.value("ezone_replicator_slot_retained_wal_bytes", &gz),
            Some(-1.0)
        );
        assert_eq!(e.value("ezone_replicator_streaming", &gz), Some(0.0));
        assert!(e
            .value("ezone_replicator_source_silence_seconds", &gz)
            .is_some_and(f64::is_nan));
        assert!(e
            .value("ezone_replicator_source_silence_seconds", &ab)
            .is_some_and(|v| (0.0..5.0).contains(&v)));
        // Types and units as conventions want them.
        for (family, kind, unit) in [
            ("ezone_replicator_applied_rows", "counter", None),
            ("ezone_replicator_lag_bytes", "gauge", Some("bytes")),
            ("ezone_replicator_lag_seconds", "gauge", Some("seconds")),
            (
                "ezone_replicator_slot_retained_wal_bytes",
                "gauge",
                Some("bytes"),
            ),
        ] {
            let f = e
                .family(family)
                .unwrap_or_else(|| panic!("no {family}:\n{text}"));
            assert_eq!(
                (f.kind.as_str(), f.unit.as_deref()),
                (kind, unit),
                "{family}"
            );
            assert_eq!(f.samples.len(), 2, "{family}");
        }
        // The lines the repository's own readers look for (tests/tests/replicator_cli.rs,
        // `ezone demo`, `ezone bench replicator`).
        for line in [
            "ezone_replicator_lag_bytes{link=\"guangzhou->shanghai\"} 0\n",
            "ezone_replicator_applied_rows_total{link=\"beijing->shanghai\"} 150\n",
            "ezone_replicator_applied_batches_total{link=\"beijing->shanghai\"} 7\n",
            "ezone_replicator_slot_retained_wal_bytes{link=\"guangzhou->shanghai\"} -1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("per_second"), "{text}");
        lint::promtool_or_skip("the replicator's metrics", &m.render_prometheus_text());
    }

    #[test]
    fn no_links_is_still_a_valid_exposition() {
        let text = Metrics::new(BTreeMap::new()).render();
        lint::check(&text).unwrap_or_else(|e| panic!("{e}"));
    }
}
