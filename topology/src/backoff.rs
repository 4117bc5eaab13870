//! Waits between retries: doubling from a minimum up to a maximum, with
//! jitter, so that many clients that failed together (every replicator and
//! router when etcd loses its leader, every link when a site's Postgres
//! restarts) do not all come back in the same instant.
//!
//! "Equal jitter": each wait is half the current bound plus a random part
//! of the other half, so a wait is never shorter than half the bound (a
//! retry loop cannot spin) and the retries of many clients spread over the
//! other half.

use std::time::Duration;

use rand::Rng;

/// One retry loop's waits. `reset` after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    bound: Duration,
}

impl Backoff {
    /// Waits from about `min` (between `min / 2` and `min`) doubling up to
    /// `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            bound: min,
        }
    }

    /// The next wait, and the bound doubles (up to the maximum).
    pub fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.bound, rand::thread_rng().gen::<f64>());
        self.bound = (self.bound * 2).min(self.max);
        wait
    }

    /// Back to the minimum (after a success).
    pub fn reset(&mut self) {
        self.bound = self.min;
    }

    /// The bound the next wait is drawn under.
    pub fn bound(&self) -> Duration {
        self.bound
    }
}

/// Half of `bound`, plus `unit` (in `[0, 1)`) of the other half.
fn jittered(bound: Duration, unit: f64) -> Duration {
    let half = bound / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_stay_between_half_the_bound_and_the_bound() {
        assert_eq!(jittered(100 * MS, 0.0), 50 * MS);
        assert_eq!(jittered(100 * MS, 0.5), 75 * MS);
        assert!(jittered(100 * MS, 0.999_999) <= 100 * MS);
        let mut b = Backoff::new(100 * MS, 800 * MS);
        for bound in [100, 200, 400, 800, 800, 800] {
            assert_eq!(b.bound(), bound * MS);
            let w = b.next_wait();
            assert!(
                w >= bound * MS / 2 && w <= bound * MS,
                "{w:?} under {bound} ms"
            );
        }
        b.reset();
        assert_eq!(b.bound(), 100 * MS);
    }

    #[test]
    fn waits_are_spread() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
            seen.insert(b.next_wait());
        }
        assert!(seen.len() > 10, "50 clients, {} distinct waits", seen.len());
    }

    #[test]
    fn a_maximum_below_the_minimum_is_the_minimum() {
        let mut b = Backoff::new(100 * MS, 10 * MS);
        b.next_wait();
        assert_eq!(b.bound(), 100 * MS);
    }
}
