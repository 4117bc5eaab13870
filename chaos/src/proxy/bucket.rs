//! The bandwidth cap of one direction of a link: a token bucket in bytes.
//!
//! Tokens (bytes) refill at the capped rate up to a burst of 50 ms worth (at
//! least one byte), so a cap holds over any window longer than that while
//! writes stay large enough to be cheap. The rate is passed on every call
//! rather than stored, so a changed cap applies at once; the bucket is pure
//! (time comes in as an argument) and tested on paused time.

use std::time::Duration;

use tokio::time::Instant;

/// How much of a second the burst may be.
const BURST_DIVISOR: f64 = 20.0;

/// Bytes allowed to be written; see the module doc.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    /// Tokens at `last`, at most the burst of the rate in force.
    tokens: f64,
    last: Instant,
    /// `false` until the first use: a fresh bucket starts full.
    primed: bool,
}

impl TokenBucket {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            tokens: 0.0,
            last: now,
            primed: false,
        }
    }

    /// The largest burst (bytes) at `rate` bytes per second.
    pub(crate) fn burst(rate: u64) -> f64 {
        (rate as f64 / BURST_DIVISOR).max(1.0)
    }

    /// Tokens at `now` without taking any.
    fn level(&self, now: Instant, rate: u64) -> f64 {
        let burst = Self::burst(rate);
        if !self.primed {
            return burst;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate as f64).min(burst)
    }

    /// Whole bytes that may be written at `now`.
    pub(crate) fn available(&self, now: Instant, rate: u64) -> u64 {
        self.level(now, rate).floor() as u64
    }

    /// When `want` bytes (clamped to `[1, burst]`) will be available; `None`
    /// if never (a rate of zero).
    pub(crate) fn ready_at(&self, now: Instant, rate: u64, want: u64) -> Option<Instant> {
        if rate == 0 {
            return None;
        }
        let want = (want as f64).clamp(1.0, Self::burst(rate).floor().max(1.0));
        let level = self.level(now, rate);
        if level >= want {
            return Some(now);
        }
        let wait = Duration::from_secs_f64((want - level) / rate as f64);
        // Round up to a whole microsecond so the wake-up is never early.
        Some(now + wait + Duration::from_micros(1))
    }

    /// Takes `n` bytes' worth of tokens at `now` (after they were written).
    pub(crate) fn consume(&mut self, now: Instant, rate: u64, n: u64) {
        let level = self.level(now, rate);
        self.tokens = (level - n as f64).max(0.0);
        self.last = now;
        self.primed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fresh_bucket_allows_one_burst() {
        let now = Instant::now();
        let b = TokenBucket::new(now);
        assert_eq!(b.available(now, 100_000), 5_000);
        assert_eq!(b.ready_at(now, 100_000, 5_000), Some(now));
    }

    #[tokio::test(start_paused = true)]
    async fn refills_at_the_rate_up_to_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        b.consume(t0, 100_000, 5_000);
        assert_eq!(b.available(t0, 100_000), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(10), 100_000), 1_000);
        assert_eq!(b.available(t0 + Duration::from_secs(10), 100_000), 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_at_waits_for_the_bytes_wanted_capped_to_a_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        b.consume(t0, 100_000, 5_000);
        let at = b
            .ready_at(t0, 100_000, 1_000_000)
            .expect("a positive rate is ready some time");
        let waited = at - t0;
        assert!(
            waited >= Duration::from_millis(50) && waited < Duration::from_millis(51),
            "{waited:?}"
        );
        assert!(b.available(at, 100_000) >= 5_000);
        assert_eq!(b.ready_at(t0, 0, 10), None);
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_throughput_matches_the_rate() {
        // Drain as fast as the bucket allows for 10 simulated seconds.
        let rate = 100_000;
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        let mut now = t0;
        let mut sent = 0u64;
        while now < t0 + Duration::from_secs(10) {
            let Some(at) = b.ready_at(now, rate, 16 * 1024) else {
                unreachable!()
            };
            now = at;
            let n = b.available(now, rate).min(16 * 1024);
            b.consume(now, rate, n);
            sent += n;
        }
        // 10 s at 100 KB/s plus at most one initial burst.
        assert!(sent <= 1_000_000 + 5_000 + 5_000, "{sent}");
        assert!(sent >= 990_000, "{sent}");
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_rate_clamps_saved_tokens_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(t0);
        b.consume(t0, 1_000_000, 0);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.available(later, 1_000_000), 50_000);
        assert_eq!(b.available(later, 1_000), 50);
    }
}
