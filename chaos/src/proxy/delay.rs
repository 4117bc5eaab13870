//! The delivery schedule of one direction of a link: latency plus jitter,
//! without ever reordering bytes.
//!
//! A pump stamps every chunk it reads with its read time and one jitter sample
//! in `[-1, 1]`. The chunk may be written at
//! `max(previous delivery, read time + latency + sample * jitter)`: jitter makes
//! single chunks late, but a chunk never overtakes the one read before it (a
//! TCP byte stream has no reordering to show, so delaying the follower is the
//! only faithful option). The schedule is pure so it is tested on paused time.
//!
//! The due time is computed from the toxics in force *now*, not those at read
//! time, so lowering the latency speeds up chunks already queued.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

/// Delivery times of one direction; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct DelaySchedule {
    /// The due time of the last chunk delivered, the floor of the next one.
    last: Option<Instant>,
}

impl DelaySchedule {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// When a chunk read at `read_at` with jitter sample `jitter_sample`
    /// (clamped to `[-1, 1]`) may be delivered under `latency` and `jitter`.
    /// Never earlier than the previous delivery.
    pub(crate) fn due(
        &self,
        read_at: Instant,
        jitter_sample: f64,
        latency: Duration,
        jitter: Duration,
    ) -> Instant {
        let own = read_at + one_way_delay(jitter_sample, latency, jitter);
        match self.last {
            Some(last) if last > own => last,
            _ => own,
        }
    }

    /// Records that a chunk due at `due` was delivered in full.
    pub(crate) fn delivered(&mut self, due: Instant) {
        self.last = Some(match self.last {
            Some(last) if last > due => last,
            _ => due,
        });
    }
}

/// `latency + sample * jitter`, never negative, in whole nanoseconds.
fn one_way_delay(jitter_sample: f64, latency: Duration, jitter: Duration) -> Duration {
    if jitter.is_zero() {
        return latency;
    }
    let sample = if jitter_sample.is_nan() {
        0.0
    } else {
        jitter_sample.clamp(-1.0, 1.0)
    };
    // Integer nanoseconds for the latency keep `latency` exact; only the
    // jitter goes through floating point.
    let offset = (jitter.as_nanos() as f64 * sample) as i128;
    let total = (latency.as_nanos() as i128 + offset).max(0);
    Duration::from_nanos(u64::try_from(total).unwrap_or(u64::MAX))
}

/// A fresh jitter sample, uniform in `[-1, 1]`.
pub(crate) fn sample_jitter() -> f64 {
    rand::thread_rng().gen_range(-1.0..=1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn latency_alone_is_exact() {
        let s = DelaySchedule::new();
        let t0 = Instant::now();
        assert_eq!(s.due(t0, 0.7, 50 * MS, Duration::ZERO), t0 + 50 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_stays_within_its_band() {
        let s = DelaySchedule::new();
        let t0 = Instant::now();
        let cases = [
            (-1.0, 40),
            (-0.5, 45),
            (0.0, 50),
            (0.5, 55),
            (1.0, 60),
            (7.0, 60),
            (-7.0, 40),
        ];
        for (sample, want_ms) in cases {
            assert_eq!(
                s.due(t0, sample, 50 * MS, 10 * MS),
                t0 + want_ms * MS,
                "sample {sample}"
            );
        }
        // Jitter larger than the latency never yields a negative delay.
        assert_eq!(s.due(t0, -1.0, 5 * MS, 10 * MS), t0);
        assert_eq!(s.due(t0, f64::NAN, 5 * MS, 10 * MS), t0 + 5 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn due_times_never_decrease_whatever_the_jitter() {
        let mut s = DelaySchedule::new();
        let start = Instant::now();
        let mut previous = start;
        for i in 0..10_000u32 {
            // A chunk every 100 µs, with jitter (20 ms) far larger than the gap.
            let read_at = start + Duration::from_micros(100 * u64::from(i));
            let due = s.due(read_at, sample_jitter(), 30 * MS, 20 * MS);
            assert!(due >= previous, "chunk {i} overtook its predecessor");
            assert!(
                due >= read_at + 10 * MS,
                "chunk {i} left before latency - jitter"
            );
            s.delivered(due);
            previous = due;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_chunk_holds_back_its_followers_only_until_it_is_delivered() {
        let mut s = DelaySchedule::new();
        let t0 = Instant::now();
        let first = s.due(t0, 1.0, 50 * MS, 10 * MS); // t0 + 60
        s.delivered(first);
        let second = s.due(t0 + MS, -1.0, 50 * MS, 10 * MS); // own t0 + 41, held to 60
        assert_eq!(second, t0 + 60 * MS);
        s.delivered(second);
        let third = s.due(t0 + 100 * MS, 0.0, 50 * MS, 10 * MS);
        assert_eq!(third, t0 + 150 * MS);
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_the_latency_speeds_up_a_queued_chunk() {
        let s = DelaySchedule::new();
        let t0 = Instant::now();
        assert_eq!(s.due(t0, 0.0, 5_000 * MS, Duration::ZERO), t0 + 5_000 * MS);
        assert_eq!(s.due(t0, 0.0, Duration::ZERO, Duration::ZERO), t0);
    }
}
