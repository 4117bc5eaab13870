//! The pure parts of `ezone bench replicator`: what pgbench printed, the lag
//! samples the target returned, their percentiles, and ratios. No I/O, so it
//! is tested by tables of cases.

use serde::Serialize;

/// What the bench reads from pgbench's summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgbenchSummary {
    /// Committed transactions (`number of transactions actually processed`).
    pub processed: u64,
    /// `number of failed transactions` (PostgreSQL 15+; 0 when absent).
    pub failed: u64,
    /// `tps = ... (without initial connection time)`, when printed.
    pub tps: Option<f64>,
}

/// Reads pgbench's end-of-run summary. `None` when the processed count is
/// missing (pgbench did not finish a run).
pub fn parse_pgbench(stdout: &str) -> Option<PgbenchSummary> {
    let mut processed = None;
    let mut failed = 0;
    let mut tps = None;
    for line in stdout.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            // "5000/5000" with -t, "3998" with -T.
            processed = rest.trim().split('/').next()?.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            // "0 (0.000%)"
            failed = rest.split_whitespace().next()?.parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("tps =") {
            // Prefer the figure without connection set-up (v14+: "without
            // initial connection time", older: "excluding connections").
            if tps.is_none() || rest.contains("without") || rest.contains("excluding") {
                tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
            }
        }
    }
    Some(PgbenchSummary {
        processed: processed?,
        failed,
        tps,
    })
}

/// One integer per non-empty line (what `psql -At` prints for a one-column
/// query). An error names the first line that is not an integer.
pub fn parse_integer_lines(text: &str) -> Result<Vec<i64>, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<i64>()
                .map_err(|e| format!("{l:?} is not an integer: {e}"))
        })
        .collect()
}

/// The nearest-rank percentile (`q` in `(0, 1]`) of ascending `sorted`:
/// the smallest sample with at least `q` of all samples at or below it.
/// `None` for no samples.
pub fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// Lag percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LagSummary {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Summarises lag samples given in microseconds (a negative sample, which
/// one clock cannot produce, counts as 0). `None` for no samples.
pub fn summarise_lag(micros: &[i64]) -> Option<LagSummary> {
    let mut v: Vec<u64> = micros
        .iter()
        .map(|&m| u64::try_from(m).unwrap_or(0))
        .collect();
    v.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    let sum: u128 = v.iter().map(|&x| u128::from(x)).sum();
    Some(LagSummary {
        samples: v.len(),
        p50_ms: ms(percentile(&v, 0.50)?),
        p99_ms: ms(percentile(&v, 0.99)?),
        max_ms: ms(*v.last()?),
        mean_ms: sum as f64 / v.len() as f64 / 1000.0,
    })
}

/// `a / b`, when both are known and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// `count / seconds`, when the window is positive.
pub fn per_second(count: u64, seconds: f64) -> Option<f64> {
    (seconds > 0.0).then(|| count as f64 / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_T: &str = "\
pgbench (15.8 (Debian 15.8-1))
transaction type: /tmp/x/backlog.sql
scaling factor: 1
query mode: simple
number of clients: 4
number of threads: 2
maximum number of tries: 1
number of transactions per client: 500
number of transactions actually processed: 2000/2000
number of failed transactions: 0 (0.000%)
latency average = 1.234 ms
initial connection time = 5.678 ms
tps = 3241.123456 (without initial connection time)
";

    const PGBENCH_R: &str = "\
transaction type: /tmp/x/steady.sql
number of clients: 4
duration: 5 s
number of transactions actually processed: 998
number of failed transactions: 2 (0.200%)
latency average = 1.1 ms
rate limit schedule lag: avg 0.1 (max 2.0) ms
tps = 199.6 (without initial connection time)
";

    #[test]
    fn reads_pgbench_summaries() {
        assert_eq!(
            parse_pgbench(PGBENCH_T),
            Some(PgbenchSummary {
                processed: 2000,
                failed: 0,
                tps: Some(3241.123456)
            })
        );
        assert_eq!(
            parse_pgbench(PGBENCH_R),
            Some(PgbenchSummary {
                processed: 998,
                failed: 2,
                tps: Some(199.6)
            })
        );
        // pgbench 14 has no failed line; older ones print two tps lines.
        let old = "number of transactions actually processed: 10/10\n\
                   tps = 9.0 (including connections establishing)\n\
                   tps = 10.0 (excluding connections establishing)\n";
        assert_eq!(
            parse_pgbench(old),
            Some(PgbenchSummary {
                processed: 10,
                failed: 0,
                tps: Some(10.0)
            })
        );
        assert_eq!(parse_pgbench("pgbench: error: connection refused"), None);
        assert_eq!(
            parse_pgbench("number of transactions actually processed: x/10"),
            None
        );
    }

    #[test]
    fn reads_integer_lines() {
        assert_eq!(parse_integer_lines("1\n-2\n\n 30 \n"), Ok(vec![1, -2, 30]));
        assert_eq!(parse_integer_lines(""), Ok(vec![]));
        assert!(parse_integer_lines("1\n2.5\n")
            .unwrap_err()
            .contains("\"2.5\""));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let cases: &[(&[u64], f64, Option<u64>)] = &[
            (&[], 0.5, None),
            (&[7], 0.5, Some(7)),
            (&[7], 0.99, Some(7)),
            (&[1, 2, 3, 4], 0.5, Some(2)),
            (&[1, 2, 3, 4], 0.75, Some(3)),
            (&[1, 2, 3, 4], 0.76, Some(4)),
            (&[1, 2, 3, 4], 1.0, Some(4)),
            (&[1, 2, 3, 4], 0.0, Some(1)),
        ];
        for (v, q, want) in cases {
            assert_eq!(percentile(v, *q), *want, "{v:?} q={q}");
        }
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 0.99), Some(99));
        assert_eq!(percentile(&hundred, 0.50), Some(50));
    }

    #[test]
    fn lag_summary_in_ms() {
        assert_eq!(summarise_lag(&[]), None);
        let s = summarise_lag(&[3000, 1000, 2000, -5]).expect("summary");
        assert_eq!(s.samples, 4);
        assert_eq!(s.p50_ms, 1.0);
        assert_eq!(s.p99_ms, 3.0);
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.mean_ms, 1.5);
    }

    #[test]
    fn ratios_and_rates() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
        assert_eq!(per_second(100, 2.0), Some(50.0));
        assert_eq!(per_second(100, 0.0), None);
    }
}
