//! Latency histograms in microseconds, as the topology and propagation
//! benches record them.

use std::time::Duration;

use hdrhistogram::Histogram;

/// The longest latency a histogram holds: a minute, in µs.
const MAX_MICROS: u64 = 60_000_000;
/// Significant figures kept.
const SIGFIGS: u8 = 3;

/// An empty histogram of 1 µs to a minute.
pub fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_MICROS, SIGFIGS)?)
}

/// `d` in whole microseconds, at least 1 (a histogram's lowest value).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Microseconds as milliseconds.
pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_at_least_one_microsecond() {
        assert_eq!(micros(Duration::ZERO), 1);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
        assert_eq!(ms(1500), 1.5);
        let mut h = histogram().expect("bounds");
        h.record(micros(Duration::from_secs(60))).expect("in range");
    }
}
