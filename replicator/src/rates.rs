//! Apply rates per link (rows/s and transactions/s), from the link's
//! counters sampled once a second over a sliding window. Prometheus can
//! derive rates from the counters too; these gauges are for a person reading
//! `/metrics` or `ezone status` directly.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How far back a rate looks.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Samples of (time, rows applied, transactions applied), oldest first.
#[derive(Debug, Default, Clone)]
pub struct RateWindow {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl RateWindow {
    /// Adds a sample and forgets those older than [`WINDOW`] before it
    /// (keeping one at or beyond the edge, so the window is always covered).
    pub fn push(&mut self, at: Instant, rows: u64, txns: u64) {
        self.samples.push_back((at, rows, txns));
        while self.samples.len() > 2 {
            match self.samples.get(1) {
                Some((t, _, _)) if at.duration_since(*t) >= WINDOW => {
                    self.samples.pop_front();
                }
                _ => break,
            }
        }
    }

    /// (rows/s, transactions/s) between the oldest and newest sample; zero
    /// with fewer than two samples. A counter that went backwards (a
    /// restarted process) counts as zero.
    pub fn per_second(&self) -> (f64, f64) {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return (0.0, 0.0);
        };
        let secs = last.0.duration_since(first.0).as_secs_f64();
        if secs <= 0.0 {
            return (0.0, 0.0);
        }
        (
            last.1.saturating_sub(first.1) as f64 / secs,
            last.2.saturating_sub(first.2) as f64 / secs,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_over_the_window() {
        let t0 = Instant::now();
        let mut w = RateWindow::default();
        assert_eq!(w.per_second(), (0.0, 0.0));
        for i in 0..=20u64 {
            // 300 rows and 100 transactions a second.
            w.push(t0 + Duration::from_secs(i), 300 * i, 100 * i);
        }
        let (rows, txns) = w.per_second();
        assert!((rows - 300.0).abs() < 1e-9 && (txns - 100.0).abs() < 1e-9);
        assert!(
            w.samples.len() <= 12,
            "old samples dropped: {}",
            w.samples.len()
        );
        // Idle: the rate falls to zero once the window has passed.
        for i in 21..=32u64 {
            w.push(t0 + Duration::from_secs(i), 6000, 2000);
        }
        assert_eq!(w.per_second(), (0.0, 0.0));
        // A counter reset is not a negative rate.
        w.push(t0 + Duration::from_secs(33), 0, 0);
        assert_eq!(w.per_second(), (0.0, 0.0));
    }
}
