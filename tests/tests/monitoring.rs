//! The monitoring deliverables against the metrics the processes really
//! export: the Grafana dashboard (`deploy/grafana/ezone.json`), the alert and
//! recording rules (`deploy/prometheus/ezone-rules.yml`) and the example
//! scrape config (`deploy/prometheus/prometheus.yml`); docs/monitoring.md.
//!
//! The exported names come from the real registries: each process's
//! `Metrics` is built, every labelled family touched so that it renders a
//! sample, and the exposition read back (`metrics::lint::check`). Every
//! metric and label name in a PromQL expression of the dashboard and of the
//! rules must be one of those (or a series the rules record, or Prometheus's
//! own `up`); `rate`/`increase` take counters, `histogram_quantile` buckets.
//! With `promtool` on `PATH` (Debian package `prometheus`), `promtool check
//! rules`, `check config` and `check metrics` (each process's exposition)
//! must pass; without it that part is skipped with a note.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ezone_replicator::metrics::lint;
use serde::Deserialize;

/// Labels the scrape adds to every series (`deploy/prometheus/prometheus.yml`
/// sets `ezone_site` on each target).
const TARGET_LABELS: &[&str] = &["job", "instance", "ezone_site"];

/// Series Prometheus makes itself, with their labels.
const SYNTHETIC: &[(&str, &[&str])] = &[("up", &[])];

/// Grafana's own variables.
const GRAFANA_VARIABLES: &[&str] = &[
    "__rate_interval",
    "__interval",
    "__range",
    "__range_s",
    "__interval_ms",
];

/// PromQL's aggregation operators (they may be followed by `by (...)`
/// instead of their argument).
const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// PromQL functions this checker knows (an unknown one is a typo).
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "delta",
    "deriv",
    "floor",
    "histogram_quantile",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "max_over_time",
    "min_over_time",
    "predict_linear",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
];

/// Keywords that take a list of label names.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords (binary operators, modifiers, literals).
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "Inf", "NaN",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

fn read(path: &str) -> String {
    let p = repo().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

// ----------------------------------------------------------------------------
// What the processes export.

/// One sample name as scraped (`ezone_router_requests_total`,
/// `ezone_router_request_seconds_bucket`, ...).
#[derive(Debug, Clone)]
struct Series {
    /// The family's type: counter, gauge, histogram.
    kind: String,
    /// Its label names (the histogram's `le` on `_bucket`).
    labels: BTreeSet<String>,
}

/// Every series the three kinds of processes export, by sample name.
#[derive(Debug, Default)]
struct Exported {
    series: BTreeMap<String, Series>,
}

impl Exported {
    /// Reads an OpenMetrics exposition (strictly checked). A labelled
    /// family renders nothing until a label set exists: the functions below
    /// touch every one (`every_registered_family_renders` checks that).
    fn add(&mut self, what: &str, text: &str) {
        let e = lint::check(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        for f in e.families.values() {
            let names: Vec<String> = match f.kind.as_str() {
                "counter" => vec![format!("{}_total", f.name)],
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .map(|s| format!("{}{s}", f.name))
                    .collect(),
                _ => vec![f.name.clone()],
            };
            for name in names {
                let labels = f
                    .samples
                    .iter()
                    .filter(|s| s.name == name)
                    .flat_map(|s| s.labels.iter().map(|(k, _)| k.clone()))
                    .collect();
                self.series.insert(
                    name,
                    Series {
                        kind: f.kind.clone(),
                        labels,
                    },
                );
            }
        }
    }

    fn get(&self, name: &str) -> Option<&Series> {
        self.series.get(name)
    }
}

/// The router's metrics, every family with a sample.
fn router_metrics() -> ezone_router::metrics::Metrics {
    use ezone_router::metrics::*;
    let m = Metrics::with_workers(2);
    RequestStats::new(1).record(&m, "beijing", Some(3), 200, 0.002);
    RequestStats::new(0).record(&m, "none", None, 503, 0.0);
    m.held.set(1);
    m.hold_seconds.observe(0.25);
    m.hold_outcomes
        .get_or_create(&HoldLabels {
            outcome: HoldOutcome::Released,
        })
        .inc();
    m.cross_site
        .get_or_create(&SiteLabels {
            site: "shanghai".into(),
        })
        .inc();
    m.peer_connections
        .get_or_create(&SiteLabels {
            site: "shanghai".into(),
        })
        .inc();
    m.fallbacks
        .get_or_create(&ReasonLabels {
            reason: "missing_key".into(),
        })
        .inc();
    m.rejected
        .get_or_create(&ReasonLabels {
            reason: "no_topology".into(),
        })
        .inc();
    m.loops.inc();
    m.retries.inc();
    m.fence_bounces
        .get_or_create(&BounceLabels {
            outcome: BounceOutcome::Resent,
        })
        .inc();
    let endpoint = EndpointLabels {
        site: "beijing".into(),
        endpoint: "10.0.1.10:8090".into(),
    };
    m.upstream_errors.get_or_create(&endpoint).inc();
    m.upstream_healthy.get_or_create(&endpoint).set(1);
    m.worker_connections
        .get_or_create(&WorkerLabels { worker: "0".into() })
        .set(1);
    m.topology_version.set(42);
    m.topology_age_seconds.set(0.5);
    m
}

/// A replicator's metrics with one link.
fn replicator_metrics() -> ezone_replicator::metrics::Metrics {
    let links = [(
        "beijing->shanghai".to_string(),
        Arc::new(ezone_replicator::link::LinkStats::default()),
    )]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    ezone_replicator::metrics::Metrics::new(links)
}

/// The order service's metrics, every family with a sample.
fn orders_metrics() -> ezone_orders::metrics::Metrics {
    use ezone_orders::metrics::{Metrics, Route};
    let m = Metrics::new();
    m.observe(Route::place_order, 201, Duration::from_millis(3));
    m.db_error(&ezone_orders::db::DbError::Fenced { detail: "x".into() });
    m
}

/// Each process's OpenMetrics text, by kind.
fn expositions() -> Vec<(&'static str, String)> {
    vec![
        ("the router", router_metrics().render()),
        ("the replicator", replicator_metrics().render()),
        ("the order service", orders_metrics().encode()),
    ]
}

fn exported() -> Exported {
    let mut e = Exported::default();
    for (what, text) in expositions() {
        e.add(what, &text);
    }
    for (name, labels) in SYNTHETIC {
        e.series.insert(
            (*name).to_string(),
            Series {
                kind: "gauge".into(),
                labels: labels.iter().map(|l| (*l).to_string()).collect(),
            },
        );
    }
    e
}

/// The names `registry.register(NAME, ...)` registers in a metrics module's
/// source (the router's and the order service's registries are private).
fn registered(path: &str) -> Vec<String> {
    read(path)
        .split("registry.register(")
        .skip(1)
        .filter_map(|rest| {
            let rest = rest.trim_start().strip_prefix('"')?;
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect()
}

#[test]
fn every_registered_family_renders() {
    let expositions = expositions();
    for (what, source, prefix) in [
        ("the router", "router/src/metrics.rs", "ezone_router"),
        ("the order service", "orders/src/metrics.rs", "ezone_orders"),
    ] {
        let names = registered(source);
        assert!(names.len() >= 4, "{source}: found only {names:?}");
        let text = &expositions
            .iter()
            .find(|(w, _)| *w == what)
            .expect("an exposition")
            .1;
        let e = lint::check(text).unwrap_or_else(|e| panic!("{what}: {e}"));
        for n in names {
            let family = format!("{prefix}_{n}");
            assert!(
                e.family(&family).is_some_and(|f| !f.samples.is_empty()),
                "{family} ({source}) does not render here: a labelled family renders only once a label set exists; set one in this test"
            );
        }
    }
}

// ----------------------------------------------------------------------------
// PromQL, as far as the names go.

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Func(String),
    Metric(String),
    Label(String),
    Var(String),
}

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b':'
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b':'
}

/// The metric names, label names, functions and Grafana variables of a
/// PromQL expression, in order.
fn tokens(expr: &str) -> Result<Vec<Tok>, String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    let ident = |i: usize| {
        let mut j = i;
        while j < b.len() && ident_char(b[j]) {
            j += 1;
        }
        j
    };
    let string_end = |i: usize| -> Result<usize, String> {
        let q = b[i];
        let mut j = i + 1;
        while j < b.len() && b[j] != q {
            if b[j] == b'\\' && q != b'`' {
                j += 1;
            }
            j += 1;
        }
        if j >= b.len() {
            return Err(format!("unterminated string in {expr:?}"));
        }
        Ok(j + 1)
    };
    // Grafana variables inside strings and ranges.
    let vars = |s: &str, out: &mut Vec<Tok>| {
        let mut rest = s;
        while let Some(p) = rest.find('$') {
            let after = rest[p + 1..].trim_start_matches('{');
            let n = after
                .bytes()
                .position(|c| !ident_char(c))
                .unwrap_or(after.len());
            // A lone `$` (a regular expression's anchor) is no variable.
            if n > 0 {
                out.push(Tok::Var(after[..n].to_string()));
            }
            rest = &after[n..];
        }
    };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'"' || c == b'\'' || c == b'`' {
            let end = string_end(i)?;
            vars(&expr[i..end], &mut out);
            i = end;
        } else if c == b'{' {
            // Label matchers: the names, outside the quoted values.
            i += 1;
            loop {
                i = skip_ws(i);
                match b.get(i) {
                    None => return Err(format!("unterminated {{ in {expr:?}")),
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    Some(b'"' | b'\'' | b'`') => {
                        let end = string_end(i)?;
                        vars(&expr[i..end], &mut out);
                        i = end;
                    }
                    Some(&c) if ident_start(c) => {
                        let j = ident(i);
                        out.push(Tok::Label(expr[i..j].to_string()));
                        i = j;
                    }
                    Some(_) => i += 1,
                }
            }
        } else if c == b'[' {
            let end = expr[i..]
                .find(']')
                .map(|p| i + p + 1)
                .ok_or_else(|| format!("unterminated [ in {expr:?}"))?;
            vars(&expr[i..end], &mut out);
            i = end;
        } else if c == b'$' {
            // `$name` or `${name}`.
            let mut j = i + 1;
            if b.get(j) == Some(&b'{') {
                j += 1;
            }
            j = ident(j);
            if b.get(j) == Some(&b'}') {
                j += 1;
            }
            vars(&expr[i..j], &mut out);
            i = j;
        } else if c.is_ascii_digit() || c == b'.' {
            // A number or a duration.
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if ident_start(c) {
            let j = ident(i);
            let word = &expr[i..j];
            let next = skip_ws(j);
            i = j;
            if GROUPING.contains(&word) {
                if b.get(next) == Some(&b'(') {
                    let end = expr[next..]
                        .find(')')
                        .map(|p| next + p)
                        .ok_or_else(|| format!("unterminated {word} ( in {expr:?}"))?;
                    for l in expr[next + 1..end].split(',') {
                        let l = l.trim();
                        if !l.is_empty() {
                            out.push(Tok::Label(l.to_string()));
                        }
                    }
                    i = end + 1;
                }
            } else if KEYWORDS.contains(&word) {
            } else if AGGREGATORS.contains(&word) || b.get(next) == Some(&b'(') {
                out.push(Tok::Func(word.to_string()));
            } else {
                out.push(Tok::Metric(word.to_string()));
            }
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// What the checks of an expression found wrong, empty if nothing; the label
/// names the expression's series may carry (for a recording rule's output).
fn check_expr(
    where_: &str,
    expr: &str,
    exported: &Exported,
    recorded: &BTreeMap<String, BTreeSet<String>>,
    variables: &BTreeSet<String>,
) -> (Vec<String>, BTreeSet<String>) {
    let mut problems = Vec::new();
    let toks = match tokens(expr) {
        Ok(t) => t,
        Err(e) => return (vec![format!("{where_}: {e}")], BTreeSet::new()),
    };
    let mut allowed: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let mut metrics = 0;
    for t in &toks {
        if let Tok::Metric(m) = t {
            metrics += 1;
            if let Some(s) = exported.get(m) {
                allowed.extend(s.labels.iter().cloned());
            } else if let Some(labels) = recorded.get(m) {
                allowed.extend(labels.iter().cloned());
            } else {
                problems.push(format!(
                    "{where_}: {m} is not a metric any ezone process exports (nor a recorded series): {expr}"
                ));
            }
        }
    }
    if metrics == 0 {
        problems.push(format!("{where_}: no metric in {expr:?}"));
    }
    for (n, t) in toks.iter().enumerate() {
        match t {
            Tok::Label(l) if !allowed.contains(l) => problems.push(format!(
                "{where_}: label {l} is on none of the series of {expr}"
            )),
            Tok::Var(v) if !variables.contains(v) && !GRAFANA_VARIABLES.contains(&v.as_str()) => {
                problems.push(format!(
                    "{where_}: ${v} is not a dashboard variable: {expr}"
                ))
            }
            Tok::Func(f)
                if !FUNCTIONS.contains(&f.as_str()) && !AGGREGATORS.contains(&f.as_str()) =>
            {
                problems.push(format!("{where_}: unknown function {f}: {expr}"))
            }
            Tok::Func(f) if ["rate", "irate", "increase"].contains(&f.as_str()) => {
                match toks.get(n + 1) {
                    Some(Tok::Metric(m)) => {
                        // A histogram's _bucket, _sum and _count are counters.
                        let counter = exported
                            .get(m)
                            .is_some_and(|s| s.kind == "counter" || s.kind == "histogram");
                        if !counter {
                            problems.push(format!(
                                "{where_}: {f}() of {m}, which is not a counter (or a histogram's series): {expr}"
                            ));
                        }
                    }
                    other => problems.push(format!(
                        "{where_}: {f}() not directly of a metric ({other:?}): {expr}"
                    )),
                }
            }
            Tok::Func(f) if f == "delta" => match toks.get(n + 1) {
                Some(Tok::Metric(m)) if exported.get(m).is_some_and(|s| s.kind == "gauge") => {}
                other => problems.push(format!(
                    "{where_}: delta() takes a gauge, not {other:?}: {expr}"
                )),
            },
            Tok::Func(f) if f == "histogram_quantile" => {
                let first = toks[n + 1..].iter().find_map(|t| match t {
                    Tok::Metric(m) => Some(m),
                    _ => None,
                });
                if !first.is_some_and(|m| {
                    m.ends_with("_bucket") && exported.get(m).is_some_and(|s| s.kind == "histogram")
                }) {
                    problems.push(format!(
                        "{where_}: histogram_quantile() of {first:?}, not a histogram's _bucket: {expr}"
                    ));
                }
                if !toks[n + 1..].contains(&Tok::Label("le".into())) {
                    problems.push(format!(
                        "{where_}: histogram_quantile() without le in its aggregation: {expr}"
                    ));
                }
            }
            _ => {}
        }
    }
    (problems, allowed)
}

#[test]
fn the_promql_reader_finds_names_labels_and_variables() {
    let toks = tokens(
        r#"histogram_quantile(0.9, sum by (site, le) (rate(x_bucket{site=~"$site", a!="}{"}[$__rate_interval] offset 5m))) / on(site) group_left y_total"#,
    )
    .expect("parses");
    let f = |s: &str| Tok::Func(s.into());
    let m = |s: &str| Tok::Metric(s.into());
    let l = |s: &str| Tok::Label(s.into());
    let v = |s: &str| Tok::Var(s.into());
    assert_eq!(
        toks,
        vec![
            f("histogram_quantile"),
            f("sum"),
            l("site"),
            l("le"),
            f("rate"),
            m("x_bucket"),
            l("site"),
            v("site"),
            l("a"),
            v("__rate_interval"),
            l("site"),
            m("y_total"),
        ]
    );
    assert_eq!(
        tokens("count(up == 0) or vector(0)").expect("parses"),
        vec![f("count"), m("up"), f("vector")]
    );
}

// ----------------------------------------------------------------------------
// The rules file.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    #[serde(default)]
    alert: Option<String>,
    #[serde(default)]
    record: Option<String>,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn rule_file() -> RuleFile {
    serde_yaml::from_str(&read("deploy/prometheus/ezone-rules.yml"))
        .unwrap_or_else(|e| panic!("deploy/prometheus/ezone-rules.yml: {e}"))
}

/// The series the rules record, with the labels they may carry; the problems
/// of every rule's expression.
fn check_rules(
    rules: &RuleFile,
    exported: &Exported,
) -> (BTreeMap<String, BTreeSet<String>>, Vec<String>) {
    let mut recorded = BTreeMap::new();
    let mut problems = Vec::new();
    let none = BTreeSet::new();
    for g in &rules.groups {
        for r in &g.rules {
            let name = r.alert.as_ref().or(r.record.as_ref());
            let where_ = format!("ezone-rules.yml {}/{}", g.name, name.map_or("?", |n| n));
            let (p, labels) = check_expr(&where_, &r.expr, exported, &recorded, &none);
            problems.extend(p);
            if let Some(rec) = &r.record {
                recorded.insert(rec.clone(), labels);
            }
        }
    }
    (recorded, problems)
}

#[test]
fn the_rules_parse_use_only_exported_metrics_and_have_the_alerts() {
    let exported = exported();
    let rules = rule_file();
    let (recorded, problems) = check_rules(&rules, &exported);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(!recorded.is_empty(), "no recording rule");
    let mut alerts = BTreeMap::new();
    for g in &rules.groups {
        for r in &g.rules {
            match (&r.alert, &r.record) {
                (Some(a), None) => {
                    assert!(
                        alerts.insert(a.clone(), r).is_none(),
                        "alert {a} appears twice"
                    );
                    assert!(
                        r.for_.as_deref().is_some_and(|f| !f.is_empty()),
                        "alert {a} has no `for:`"
                    );
                    assert!(
                        matches!(
                            r.labels.get("severity").map(String::as_str),
                            Some("critical" | "warning")
                        ),
                        "alert {a}: severity is {:?}, not critical or warning",
                        r.labels.get("severity")
                    );
                    for key in ["summary", "description"] {
                        assert!(
                            r.annotations.get(key).is_some_and(|s| !s.trim().is_empty()),
                            "alert {a} has no {key}"
                        );
                    }
                    assert!(
                        r.annotations
                            .get("description")
                            .is_some_and(|d| d.contains("Fix:")),
                        "alert {a}'s description does not say the fix (\"Fix: ...\")"
                    );
                }
                (None, Some(rec)) => {
                    assert!(
                        r.for_.is_none() && r.annotations.is_empty(),
                        "recording rule {rec} has alert fields"
                    );
                    assert!(
                        rec.contains(':'),
                        "recorded series {rec} is not named level:metric:operations"
                    );
                }
                _ => panic!(
                    "a rule must have exactly one of alert and record: {:?}",
                    r.expr
                ),
            }
        }
    }
    // The alerts docs/monitoring.md describes, with what each must watch.
    for (alert, metric) in [
        ("EzoneTargetDown", "up"),
        ("EzoneReplicationLagHigh", "ezone_replicator_lag_seconds"),
        (
            "EzoneReplicationLagCritical",
            "ezone_replicator_lag_seconds",
        ),
        ("EzoneReplicationLagBytesHigh", "ezone_replicator_lag_bytes"),
        (
            "EzoneReplicationLinkNotStreaming",
            "ezone_replicator_streaming",
        ),
        (
            "EzoneReplicationSourceSilent",
            "ezone_replicator_source_silence_seconds",
        ),
        (
            "EzoneReplicationLinkRestarting",
            "ezone_replicator_restarts_total",
        ),
        (
            "EzoneReplicationSlotRetainingWal",
            "ezone_replicator_slot_retained_wal_bytes",
        ),
        (
            "EzoneReplicationConflictsRecorded",
            "ezone_replicator_conflicts_total",
        ),
        ("EzoneRouterNoTopology", "ezone_router_topology_version"),
        (
            "EzoneRouterTopologyStale",
            "ezone_router_topology_age_seconds",
        ),
        (
            "EzoneRouterTopologyRefused",
            "ezone_router_topology_refused",
        ),
        ("EzoneRouterRefusing", "ezone_router_rejected_total"),
        (
            "EzoneRouterHoldRefusals",
            "ezone_router_hold_outcomes_total",
        ),
        (
            "EzoneRouterFencedWritesRefused",
            "ezone_router_fenced_writes_total",
        ),
        (
            "EzoneRouterUpstreamUnhealthy",
            "ezone_router_upstream_healthy",
        ),
        (
            "EzoneRouterNoHealthyUpstream",
            "ezone_router_upstream_healthy",
        ),
        (
            "EzoneRouterErrorRatioHigh",
            "instance:ezone_router_requests_5xx:ratio5m",
        ),
        ("EzoneRouterConnectionsNearCap", "ezone_router_connections"),
        (
            "EzoneFenceRefusingWrites",
            "ezone_orders_fence_refusals_total",
        ),
        ("EzoneOrdersDatabaseErrors", "ezone_orders_db_errors_total"),
    ] {
        let r = alerts
            .get(alert)
            .unwrap_or_else(|| panic!("no alert {alert}"));
        let toks = tokens(&r.expr).expect("parses");
        assert!(
            toks.contains(&Tok::Metric(metric.into())),
            "alert {alert} does not watch {metric}: {}",
            r.expr
        );
    }
    let docs = read("docs/monitoring.md");
    for alert in alerts.keys() {
        assert!(
            docs.contains(alert.as_str()),
            "docs/monitoring.md does not describe {alert}"
        );
    }
}

// ----------------------------------------------------------------------------
// The dashboard.

/// Every panel, the ones inside collapsed rows too.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(p) = stack.pop() {
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        out.push(p);
    }
    out
}

#[test]
fn the_dashboard_parses_and_uses_only_exported_metrics() {
    let exported = exported();
    let (recorded, _) = check_rules(&rule_file(), &exported);
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/ezone.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/ezone.json: {e}"));
    let schema = d["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(d["title"].is_string() && d["uid"].is_string());
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("a DS_PROMETHEUS variable");
    assert_eq!(
        (ds["type"].as_str(), ds["query"].as_str()),
        (Some("datasource"), Some("prometheus"))
    );
    let variables: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let mut problems = Vec::new();
    // `label_values(metric, label)` queries.
    for v in vars.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap_or("?");
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name} has no query"));
        let args = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {q} is not label_values(metric, label)"));
        let (metric, label) = args.split_once(',').expect("label_values(metric, label)");
        let (metric, label) = (metric.trim(), label.trim());
        match exported.get(metric) {
            Some(s) if s.labels.contains(label) => {}
            _ => problems.push(format!(
                "variable {name}: {metric} is not exported with label {label}"
            )),
        }
        assert_eq!(
            v["datasource"]["uid"], "${DS_PROMETHEUS}",
            "variable {name}"
        );
    }
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    let mut used = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().unwrap_or("?");
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title} has no id"));
        assert!(ids.insert(id), "panel id {id} twice ({title})");
        let g = &p["gridPos"];
        let (x, w) = (g["x"].as_u64().expect("x"), g["w"].as_u64().expect("w"));
        assert!(w >= 1 && x + w <= 24, "panel {title}: gridPos {g}");
        assert!(g["h"].as_u64().is_some() && g["y"].as_u64().is_some());
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {title}");
            let expr = t["expr"].as_str().expect("expr");
            let (p, _) = check_expr(
                &format!("panel {title:?}"),
                expr,
                &exported,
                &recorded,
                &variables,
            );
            problems.extend(p);
            for tok in tokens(expr).unwrap_or_default() {
                if let Tok::Metric(m) = tok {
                    used.insert(m);
                }
            }
            exprs += 1;
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(exprs > 20, "only {exprs} queries");
    // What the dashboard must show (the rows docs/monitoring.md describes).
    for m in [
        "ezone_router_requests_total",
        "ezone_router_request_seconds_bucket",
        "ezone_router_held_requests",
        "ezone_router_hold_outcomes_total",
        "ezone_router_fenced_writes_total",
        "ezone_router_rejected_total",
        "ezone_router_upstream_healthy",
        "ezone_router_topology_version",
        "ezone_router_topology_age_seconds",
        "ezone_replicator_lag_bytes",
        "ezone_replicator_lag_seconds",
        "ezone_replicator_applied_rows_total",
        "ezone_replicator_conflicts_total",
        "ezone_replicator_streaming",
        "ezone_replicator_markers_total",
        "ezone_orders_requests_total",
        "ezone_orders_db_errors_total",
        "ezone_orders_fence_refusals_total",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
}

// ----------------------------------------------------------------------------
// The scrape config.

#[test]
fn the_scrape_config_names_each_kind_on_each_host_at_the_documented_ports() {
    let cfg: serde_yaml::Value = serde_yaml::from_str(&read("deploy/prometheus/prometheus.yml"))
        .unwrap_or_else(|e| panic!("deploy/prometheus/prometheus.yml: {e}"));
    let rule_files: Vec<&str> = cfg["rule_files"]
        .as_sequence()
        .expect("rule_files")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(rule_files, ["ezone-rules.yml"]);
    // The order service's default listen; the router's and the replicator's
    // admin listeners have no default: the docs' example configs' ports.
    let orders_port = ezone_orders::config::DEFAULT_LISTEN
        .rsplit(':')
        .next()
        .expect("a port");
    assert!(read("docs/router.md").contains("listen = \"127.0.0.1:9901\""));
    assert!(read("docs/replicator.md").contains("listen = \"127.0.0.1:9902\""));
    let jobs = cfg["scrape_configs"].as_sequence().expect("scrape_configs");
    for (job, port) in [
        ("ezone-router", "9901"),
        ("ezone-replicator", "9902"),
        ("ezone-orders", orders_port),
    ] {
        let j = jobs
            .iter()
            .find(|j| j["job_name"].as_str() == Some(job))
            .unwrap_or_else(|| panic!("no job {job}"));
        let groups = j["static_configs"].as_sequence().expect("static_configs");
        let mut sites = BTreeSet::new();
        for g in groups {
            for t in g["targets"].as_sequence().expect("targets") {
                let t = t.as_str().expect("a target");
                assert!(
                    t.ends_with(&format!(":{port}")),
                    "{job}: {t}, not port {port}"
                );
            }
            sites.insert(g["labels"]["ezone_site"].as_str().expect("ezone_site"));
        }
        assert_eq!(sites.len(), 3, "{job}: {sites:?}");
    }
}

// ----------------------------------------------------------------------------
// promtool.

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())
}

/// Runs promtool in the repository with `args` (and `stdin`); its exit
/// status and its output.
fn run_promtool(promtool: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.unwrap_or("").as_bytes())
            .expect("write promtool's stdin");
    }
    let out = child.wait_with_output().expect("wait for promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as
/// prometheus-client writes both: a counter's HELP and TYPE name its `_total`
/// samples, and there is no `# UNIT` or `# EOF` (the router exports
/// OpenMetrics only; promtool reads the older format).
fn prometheus_text(openmetrics: &str) -> String {
    let mut counters = BTreeSet::new();
    for line in openmetrics.lines() {
        if let Some((name, "counter")) =
            line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
        {
            counters.insert(name.to_string());
        }
    }
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The lines of a text exposition, each sample's labels sorted, in order
/// (an encoder may order a histogram's series and `le` differently).
fn normalized(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| match (l.find('{'), l.rfind('}')) {
            (Some(a), Some(b)) if !l.starts_with('#') && a < b => {
                let mut labels: Vec<&str> = l[a + 1..b].split(',').collect();
                labels.sort_unstable();
                format!("{}{{{}}}{}", &l[..a], labels.join(","), &l[b + 1..])
            }
            _ => l.to_string(),
        })
        .collect();
    lines.sort();
    lines
}

#[test]
fn the_openmetrics_to_prometheus_text_rewrite_matches_the_encoder() {
    let r = replicator_metrics();
    assert_eq!(
        normalized(&prometheus_text(&r.render())),
        normalized(&r.render_prometheus_text())
    );
    let o = orders_metrics();
    assert_eq!(
        normalized(&prometheus_text(&o.encode())),
        normalized(&o.encode_prometheus_text())
    );
}

#[test]
fn promtool_checks_the_rules_the_config_and_each_exposition() {
    let Some(promtool) = promtool() else {
        eprintln!(
            "note: promtool is not on PATH: `promtool check rules|config|metrics` skipped; install it with `apt-get install prometheus` (or scripts/install-deps.sh --monitoring)"
        );
        return;
    };
    for args in [
        ["check", "rules", "deploy/prometheus/ezone-rules.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
    ] {
        let (ok, out) = run_promtool(&promtool, &args, None);
        assert!(ok, "promtool {}: {out}", args.join(" "));
    }
    let texts = [
        ("the router", prometheus_text(&router_metrics().render())),
        (
            "the replicator",
            replicator_metrics().render_prometheus_text(),
        ),
        (
            "the order service",
            orders_metrics().encode_prometheus_text(),
        ),
    ];
    for (what, text) in texts {
        let (ok, out) = run_promtool(&promtool, &["check", "metrics"], Some(&text));
        // Only a missing HELP of a `_created` series would be excused; ezone
        // exports none.
        let problems: Vec<&str> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !(l.contains("_created") && l.contains("no help text")))
            .collect();
        assert!(
            ok && problems.is_empty(),
            "promtool check metrics on {what}'s exposition:\n{out}\n--- the text:\n{text}"
        );
    }
}
