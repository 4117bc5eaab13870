//! A strict check of an OpenMetrics text exposition, for tests (this crate's,
//! and other crates' through the `test-support` feature): every line is
//! parsed, `prometheus-parse` reads the whole text independently and must
//! agree, and the conventions ezone keeps are enforced.
//!
//! - the text ends with `# EOF`, which appears once;
//! - every family has `# HELP` then `# TYPE` (and `# UNIT` only if its name
//!   ends with `_<unit>`), before its samples; no family appears twice;
//! - a counter's samples end in `_total` (the family name does not);
//!   a histogram's are `_bucket` (with `le`), `_sum` and `_count`; a gauge's
//!   carry the family name;
//! - no name looks like a precomputed rate (`rate`, `per_second`, ...);
//! - names and label names are valid, label values are well escaped and
//!   have no capitals (but `le`'s `+Inf`), values are numbers, no
//!   timestamps.
//!
//! [`promtool`] runs `promtool check metrics` when it is on `PATH`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use prometheus_parse::{LineInfo, Scrape, Value};

/// One metric family as exposed.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: String,
    pub help: String,
    pub unit: Option<String>,
    pub samples: Vec<Sample>,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// The families of a checked exposition, by name.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub families: BTreeMap<String, Family>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.families
            .values()
            .flat_map(|f| &f.samples)
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.value)
    }

    /// The family `name` (as in `# TYPE`).
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.get(name)
    }
}

/// The OpenMetrics text format's `Content-Type`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Checks a `Content-Type` header value against [`CONTENT_TYPE`].
pub fn check_content_type(value: &str) -> Result<(), String> {
    if value == CONTENT_TYPE {
        Ok(())
    } else {
        Err(format!(
            "Content-Type is {value:?}, not the OpenMetrics one {CONTENT_TYPE:?}"
        ))
    }
}

/// Checks `text` (see the module docs); the families, or every problem
/// found, one a line.
pub fn check(text: &str) -> Result<Exposition, String> {
    let mut problems = Vec::new();
    let mut exposition = Exposition::default();
    // The family being read, and whether its samples have begun.
    let mut current: Option<String> = None;
    let mut in_samples = false;
    let Some(body) = text.strip_suffix("# EOF\n") else {
        return Err(format!(
            "the text does not end with the line \"# EOF\": ...{:?}",
            &text[text.len().saturating_sub(80)..]
        ));
    };
    for (i, line) in body.lines().enumerate() {
        let n = i + 1;
        let mut bad = |what: String| problems.push(format!("line {n}: {what}: {line:?}"));
        if line.is_empty() {
            bad("empty line".into());
            continue;
        }
        if line == "# EOF" {
            bad("# EOF before the end".into());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').unwrap_or((rest, ""));
            match current
                .as_ref()
                .and_then(|c| exposition.families.get_mut(c))
            {
                Some(f) if f.name == name && !in_samples && !f.kind.is_empty() => {
                    if unit.is_empty() || !name.ends_with(&format!("_{unit}")) {
                        bad(format!("the name does not end with its unit {unit:?}"));
                    }
                    f.unit = Some(unit.to_string());
                }
                _ => bad("UNIT not right after its family's TYPE".into()),
            }
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            match LineInfo::parse(line) {
                LineInfo::Doc { metric_name, doc } => {
                    if exposition.families.contains_key(metric_name) {
                        bad("a second HELP for this family (families must not repeat)".into());
                        continue;
                    }
                    check_name(metric_name, &mut bad);
                    exposition.families.insert(
                        metric_name.to_string(),
                        Family {
                            name: metric_name.to_string(),
                            kind: String::new(),
                            help: doc.to_string(),
                            unit: None,
                            samples: Vec::new(),
                        },
                    );
                    current = Some(metric_name.to_string());
                    in_samples = false;
                }
                LineInfo::Type { .. } => {
                    // prometheus-parse calls a histogram `<name>_bucket`: take
                    // the name and type from the line itself.
                    let mut words = line["# TYPE ".len()..].split(' ');
                    let (name, kind) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    match current
                        .as_ref()
                        .and_then(|c| exposition.families.get_mut(c))
                    {
                        Some(f) if f.name == name && f.kind.is_empty() && !in_samples => {
                            if !matches!(
                                kind,
                                "counter"
                                    | "gauge"
                                    | "histogram"
                                    | "gaugehistogram"
                                    | "summary"
                                    | "info"
                                    | "stateset"
                                    | "unknown"
                            ) {
                                bad(format!("unknown type {kind:?}"));
                            }
                            if kind == "counter" && name.ends_with("_total") {
                                bad("a counter family's name must not end in _total (its samples do)".into());
                            }
                            f.kind = kind.to_string();
                        }
                        _ => bad("TYPE without its family's HELP right before it".into()),
                    }
                }
                _ => bad("unreadable HELP or TYPE".into()),
            }
            continue;
        }
        if line.starts_with('#') {
            bad("a comment OpenMetrics does not have".into());
            continue;
        }
        let Some(family) = current
            .as_ref()
            .and_then(|c| exposition.families.get_mut(c))
        else {
            bad("a sample before any HELP and TYPE".into());
            continue;
        };
        if family.kind.is_empty() {
            bad("a sample of a family without TYPE".into());
            continue;
        }
        in_samples = true;
        let parsed = match parse_sample(line) {
            Ok(s) => s,
            Err(e) => {
                bad(e);
                continue;
            }
        };
        // The same line as prometheus-parse reads it.
        match LineInfo::parse(line) {
            LineInfo::Sample {
                metric_name,
                value,
                timestamp,
                ..
            } if metric_name == parsed.name && timestamp.is_none() => {
                if parse_float(value).is_none_or(|v| !same(v, parsed.value)) {
                    bad(format!("prometheus-parse reads the value as {value:?}"));
                }
            }
            other => bad(format!("prometheus-parse reads this line as {other:?}")),
        }
        let suffix = parsed.name.strip_prefix(family.name.as_str());
        let allowed: &[&str] = match family.kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !suffix.is_some_and(|s| allowed.contains(&s)) {
            bad(format!(
                "a {} of family {} must be named {} + one of {allowed:?}",
                family.kind, family.name, family.name
            ));
        }
        if family.kind == "histogram"
            && suffix == Some("_bucket")
            && !parsed.labels.iter().any(|(k, _)| k == "le")
        {
            bad("a bucket without le".into());
        }
        for (k, v) in &parsed.labels {
            if k != "le" && k != "quantile" && v.chars().any(|c| c.is_ascii_uppercase()) {
                bad(format!(
                    "label value {k}={v:?} has capitals (label values are lowercase)"
                ));
            }
        }
        family.samples.push(parsed);
    }
    for f in exposition.families.values() {
        if f.kind.is_empty() {
            problems.push(format!("family {} has no TYPE", f.name));
        }
        if let Some(word) = rate_like(&f.name) {
            problems.push(format!(
                "family {} looks like a precomputed rate ({word:?}): export the counter, rate() is the query's",
                f.name
            ));
        }
    }
    // prometheus-parse over the whole text must find the same samples
    // (histograms aside: it folds their buckets).
    match Scrape::parse(text.lines().map(|l| Ok(l.to_string()))) {
        Ok(scrape) => {
            for f in exposition.families.values() {
                if f.kind == "histogram" {
                    continue;
                }
                for s in &f.samples {
                    let found = scrape.samples.iter().any(|p| {
                        p.metric == s.name
                            && s.labels
                                .iter()
                                .all(|(k, v)| p.labels.get(k) == Some(v.as_str()))
                            && match p.value {
                                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                                    same(v, s.value)
                                }
                                _ => false,
                            }
                    });
                    if !found {
                        problems.push(format!(
                            "prometheus-parse does not find {} {:?} = {}",
                            s.name, s.labels, s.value
                        ));
                    }
                }
            }
        }
        Err(e) => problems.push(format!("prometheus-parse fails: {e}")),
    }
    if problems.is_empty() {
        Ok(exposition)
    } else {
        Err(format!("{}\n--- the text:\n{text}", problems.join("\n")))
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan())
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            s.parse().ok()
        }
        _ => None,
    }
}

fn valid_name(name: &str, colon: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
}

fn check_name(name: &str, bad: &mut impl FnMut(String)) {
    if !valid_name(name, true) {
        bad(format!("{name:?} is not a metric name"));
    }
}

/// A word of `name` that says "rate", if any.
fn rate_like(name: &str) -> Option<String> {
    let words: Vec<&str> = name.split('_').collect();
    for (i, w) in words.iter().enumerate() {
        if matches!(*w, "rate" | "rates" | "ps" | "qps" | "rps" | "tps") {
            return Some((*w).to_string());
        }
        if *w == "per"
            && words
                .get(i + 1)
                .is_some_and(|n| matches!(*n, "second" | "sec" | "s" | "minute" | "min" | "hour"))
        {
            return Some(format!("per_{}", words[i + 1]));
        }
    }
    None
}

/// `name{label="value",...} value` (no timestamp, no exemplar), strictly.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("{name:?} is not a metric name"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // A label name up to '='.
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if inner[start..].starts_with('}') {
                chars.next();
                break;
            }
            let eq = inner[start..].find('=').ok_or("a label without =")? + start;
            let key = &inner[start..eq];
            if !valid_name(key, false) {
                return Err(format!("{key:?} is not a label name"));
            }
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label {key} twice"));
            }
            while chars.peek().is_some_and(|(i, _)| *i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key}'s value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next().map(|(_, c)| c) {
                    Some('"') => break,
                    Some('\\') => match chars.next().map(|(_, c)| c) {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => return Err(format!("bad escape \\{other:?} in label {key}")),
                    },
                    Some('\n') | None => {
                        return Err(format!("label {key}'s value is unterminated"))
                    }
                    Some(c) => value.push(c),
                }
            }
            labels.push((key.to_string(), value));
            match chars.next().map(|(_, c)| c) {
                Some(',') => {}
                Some('}') => break,
                other => return Err(format!("after label {key}: {other:?}, not , or }}")),
            }
        }
        let used = chars.peek().map_or(inner.len(), |(i, _)| *i);
        rest = &inner[used..];
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("no single space before the value")?;
    if value.contains(' ') || value.contains('#') {
        return Err("a timestamp or an exemplar (ezone sets neither)".into());
    }
    let value = parse_float(value).ok_or_else(|| format!("{value:?} is not a number"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// Runs `promtool check metrics` on `prometheus_text` (the Prometheus text
/// format 0.0.4, which is what promtool reads: given OpenMetrics it takes a
/// counter's `_total` samples for a family of their own without HELP). `None`
/// when promtool is not on `PATH`; otherwise its verdict, with its output.
pub fn promtool(prometheus_text: &str) -> Option<Result<(), String>> {
    let path = std::env::var_os("PATH")?;
    let promtool = std::env::split_paths(&path)
        .map(|d| d.join("promtool"))
        .find(|p| p.is_file())?;
    let run = || -> std::io::Result<std::process::Output> {
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(prometheus_text.as_bytes())?;
        }
        child.wait_with_output()
    };
    Some(match run() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "promtool check metrics failed ({}):\n{}{}\n--- the text:\n{prometheus_text}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) => Err(format!("running {}: {e}", promtool.display())),
    })
}

/// [`promtool`], or a note on stderr that it was skipped.
pub fn promtool_or_skip(what: &str, prometheus_text: &str) {
    match promtool(prometheus_text) {
        Some(Ok(())) => {}
        Some(Err(e)) => panic!("{what}: {e}"),
        None => eprintln!(
            "note: promtool is not on PATH: `promtool check metrics` skipped for {what} (Debian package prometheus)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{route=\"get\",status=\"200\"} 3\n# HELP x_lag_seconds Lag.\n# TYPE x_lag_seconds gauge\n# UNIT x_lag_seconds seconds\nx_lag_seconds{link=\"a->b\"} 0.5\nx_lag_seconds{link=\"b->a\"} NaN\n# HELP x_took_seconds Took.\n# TYPE x_took_seconds histogram\nx_took_seconds_sum 1.5\nx_took_seconds_count 2\nx_took_seconds_bucket{le=\"1.0\"} 1\nx_took_seconds_bucket{le=\"+Inf\"} 2\n# EOF\n";

    #[test]
    fn a_good_exposition_passes_and_reads_back() {
        let e = check(GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.value("x_requests_total", &[("route", "get")]), Some(3.0));
        assert_eq!(e.value("x_lag_seconds", &[("link", "a->b")]), Some(0.5));
        assert!(e
            .value("x_lag_seconds", &[("link", "b->a")])
            .is_some_and(f64::is_nan));
        assert_eq!(
            e.family("x_lag_seconds").unwrap().unit.as_deref(),
            Some("seconds")
        );
        assert_eq!(e.family("x_took_seconds").unwrap().samples.len(), 4);
    }

    #[test]
    fn each_broken_rule_is_caught() {
        let cases = [
            ("no EOF", GOOD.replace("# EOF\n", "")),
            (
                "counter without _total",
                GOOD.replace("x_requests_total{", "x_requests{"),
            ),
            (
                "counter family with _total",
                GOOD.replace("x_requests ", "x_requests_total ")
                    .replace("x_requests_total{", "x_requests_total_total{"),
            ),
            ("no HELP", GOOD.replace("# HELP x_lag_seconds Lag.\n", "")),
            ("no TYPE", GOOD.replace("# TYPE x_lag_seconds gauge\n", "")),
            (
                "rate gauge",
                GOOD.replace("x_lag_seconds", "x_rows_per_second")
                    .replace("# UNIT x_rows_per_second seconds\n", ""),
            ),
            (
                "capital label value",
                GOOD.replace("route=\"get\"", "route=\"Get\""),
            ),
            (
                "bad unit",
                GOOD.replace("# UNIT x_lag_seconds seconds", "# UNIT x_lag_seconds bytes"),
            ),
            ("bad value", GOOD.replace("} 0.5", "} fast")),
            ("timestamp", GOOD.replace("} 0.5", "} 0.5 1700000000")),
            (
                "empty line",
                GOOD.replace("# HELP x_took", "\n# HELP x_took"),
            ),
            ("unquoted label", GOOD.replace("link=\"a->b\"", "link=a")),
            (
                "repeated family",
                format!("{}{}", GOOD.replace("# EOF\n", ""), GOOD),
            ),
        ];
        for (what, text) in cases {
            assert!(check(&text).is_err(), "{what} passed:\n{text}");
        }
    }

    #[test]
    fn rate_like_names() {
        assert!(rate_like("ezone_replicator_applied_rows_per_second").is_some());
        assert!(rate_like("x_error_rate").is_some());
        assert!(rate_like("ezone_replicator_applied_rows").is_none());
        assert!(rate_like("x_separate_things").is_none());
    }
}
