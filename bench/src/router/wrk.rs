//! Running `wrk` for the router bench, and reading its results.
//!
//! wrk's own summary is meant for people (`1.23ms`, `45.6k`), so the bench
//! hands it a Lua script whose `done()` prints one machine-readable line:
//!
//! ```text
//! EZONE_WRK requests=123 duration_us=3000000 bytes=456 connect_errors=0 ...
//! ```
//!
//! The same script sets the routing header (`X-City-Id`) on every request,
//! so all targets (direct, nginx, ezone) get byte-identical requests. The
//! script defines no per-response `response()` callback: that would run Lua
//! for every response and make wrk itself the bottleneck. The price is that
//! wrk's "status" error counter counts responses with status > 399 only
//! (so 3xx are not errors); the bench upstream never answers 3xx.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ezone_chaos::process::{ChildProcess, ProcessSpec};
use serde::Serialize;

/// The prefix of the line the script prints in `done()`.
const MARKER: &str = "EZONE_WRK";

/// How long past its `-d` duration wrk may take to finish and print.
const EXIT_GRACE: Duration = Duration::from_secs(30);

/// The request script: the routing header, and a parseable summary.
pub fn script(city: &str) -> String {
    format!(
        r#"-- Written by `ezone bench router`.
wrk.headers["X-City-Id"] = "{city}"

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "{MARKER} requests=%.0f duration_us=%.0f bytes=%.0f connect_errors=%.0f read_errors=%.0f write_errors=%.0f status_errors=%.0f timeouts=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f mean_us=%.1f max_us=%.0f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
"#
    )
}

/// What wrk was asked to do.
#[derive(Debug, Clone)]
pub struct WrkRun {
    pub wrk: PathBuf,
    pub script: PathBuf,
    pub url: String,
    pub threads: u32,
    pub connections: u32,
    /// Whole seconds (wrk's `-d` takes integers).
    pub seconds: u64,
    /// wrk's per-request timeout (a slower response counts as a timeout).
    pub timeout_seconds: u64,
}

/// wrk's error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses with status > 399.
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

/// One wrk run's results, as printed by [`script`]'s `done()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WrkResult {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub errors: WrkErrors,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

impl WrkResult {
    /// Completed requests per second over wrk's own measured duration.
    pub fn requests_per_second(&self) -> f64 {
        if self.duration_us == 0 {
            return 0.0;
        }
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

/// Parses wrk's stdout: the last `EZONE_WRK` line.
pub fn parse(output: &str) -> anyhow::Result<WrkResult> {
    let line = output
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(MARKER))
        .with_context(|| {
            format!(
                "wrk printed no {MARKER} line (was the Lua script loaded?); its output:\n{output}"
            )
        })?;
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let num = |k: &str| -> anyhow::Result<f64> {
        let v = fields
            .get(k)
            .with_context(|| format!("wrk's {MARKER} line has no {k}: {line:?}"))?;
        let x: f64 = v
            .parse()
            .with_context(|| format!("wrk's {MARKER} line: {k}={v:?} is not a number"))?;
        if !x.is_finite() || x < 0.0 {
            bail!("wrk's {MARKER} line: {k}={v} is out of range");
        }
        Ok(x)
    };
    // Counts are printed with `%.0f`, so they are whole numbers.
    let count = |k: &str| num(k).map(|x| x as u64);
    Ok(WrkResult {
        requests: count("requests")?,
        duration_us: count("duration_us")?,
        bytes: count("bytes")?,
        errors: WrkErrors {
            connect: count("connect_errors")?,
            read: count("read_errors")?,
            write: count("write_errors")?,
            status: count("status_errors")?,
            timeout: count("timeouts")?,
        },
        p50_us: num("p50_us")?,
        p99_us: num("p99_us")?,
        p999_us: num("p999_us")?,
        mean_us: num("mean_us")?,
        max_us: num("max_us")?,
    })
}

/// Runs wrk to completion (killed if it overruns, or if this future is
/// dropped) and parses its result. `dir` holds its output and log.
pub async fn run(w: &WrkRun, dir: &Path, label: &str) -> anyhow::Result<WrkResult> {
    let out = dir.join(format!("wrk-{label}.out"));
    let spec = ProcessSpec::new(
        format!("wrk ({label})"),
        &w.wrk,
        dir,
        &format!("wrk-{label}.log"),
    )
    .args([
        "-t".to_string(),
        w.threads.to_string(),
        "-c".to_string(),
        w.connections.to_string(),
        "-d".to_string(),
        format!("{}s", w.seconds),
        "--timeout".to_string(),
        format!("{}s", w.timeout_seconds),
        "-s".to_string(),
        w.script.display().to_string(),
        w.url.clone(),
    ])
    .stdout_file(out.clone());
    let child = ChildProcess::spawn(spec).context("starting wrk")?;
    let within = Duration::from_secs(w.seconds) + EXIT_GRACE;
    let status = match child.wait_exit(within).await {
        Some(s) => s,
        None => {
            child.kill().context("killing an overrunning wrk")?;
            bail!("wrk ({label}) did not finish within {within:?}; killed");
        }
    };
    let stdout = std::fs::read_to_string(&out)
        .with_context(|| format!("reading wrk's output {}", out.display()))?;
    if !status.success() {
        bail!(
            "wrk ({label}) failed ({status}): {}\n{stdout}",
            child.log_tail()
        );
    }
    parse(&stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
Running 3s test @ http://127.0.0.1:40001/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02ms  400.11us  12.00ms   90.00%
  60000 requests in 3.00s, 9.00MB read
Requests/sec:  20000.00
EZONE_WRK requests=60000 duration_us=3000123 bytes=9437184 connect_errors=0 read_errors=1 write_errors=0 status_errors=7 timeouts=2 p50_us=950 p99_us=2400 p999_us=5100 mean_us=1020.5 max_us=12000
";

    #[test]
    fn parses_the_marker_line() {
        let r = parse(SAMPLE).expect("parses");
        assert_eq!(r.requests, 60_000);
        assert_eq!(r.duration_us, 3_000_123);
        assert_eq!(r.bytes, 9_437_184);
        assert_eq!(
            r.errors,
            WrkErrors {
                connect: 0,
                read: 1,
                write: 0,
                status: 7,
                timeout: 2
            }
        );
        assert_eq!(r.errors.total(), 10);
        assert_eq!(r.p50_us, 950.0);
        assert_eq!(r.p99_us, 2400.0);
        assert_eq!(r.p999_us, 5100.0);
        assert_eq!(r.mean_us, 1020.5);
        assert!((r.requests_per_second() - 60_000.0 / 3.000123).abs() < 1e-6);
    }

    #[test]
    fn the_last_marker_line_wins() {
        let two = format!("{SAMPLE}EZONE_WRK requests=1 duration_us=1000000 bytes=1 connect_errors=0 read_errors=0 write_errors=0 status_errors=0 timeouts=0 p50_us=1 p99_us=1 p999_us=1 mean_us=1 max_us=1\n");
        assert_eq!(parse(&two).expect("parses").requests, 1);
    }

    #[test]
    fn refuses_missing_or_bad_fields() {
        let err = parse("Running 3s test\nRequests/sec: 5\n").expect_err("no marker");
        assert!(err.to_string().contains("no EZONE_WRK line"), "{err}");
        let missing = SAMPLE.replace(" p99_us=2400", "");
        let err = parse(&missing).expect_err("no p99");
        assert!(err.to_string().contains("p99_us"), "{err}");
        let bad = SAMPLE.replace("requests=60000", "requests=lots");
        let err = parse(&bad).expect_err("not a number");
        assert!(err.to_string().contains("requests"), "{err}");
        let neg = SAMPLE.replace("timeouts=2", "timeouts=-2");
        assert!(parse(&neg).is_err());
        let nan = SAMPLE.replace("p50_us=950", "p50_us=nan");
        assert!(parse(&nan).is_err());
    }

    #[test]
    fn zero_duration_is_zero_throughput() {
        let r = parse(&SAMPLE.replace("duration_us=3000123", "duration_us=0")).expect("parses");
        assert_eq!(r.requests_per_second(), 0.0);
    }

    #[test]
    fn the_script_sets_the_header_and_prints_the_marker() {
        let s = script("010");
        assert!(s.contains(r#"wrk.headers["X-City-Id"] = "010""#));
        assert!(s.contains("function done(summary, latency, requests)"));
        assert!(s.contains("EZONE_WRK requests="));
    }
}
