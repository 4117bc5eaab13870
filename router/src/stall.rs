//! How long a stream has been kept waiting by its peer: the timer behind
//! the "between two reads" and "between two writes" bounds (a client's
//! request body, an answer the client does not take, an upstream's
//! response body).
//!
//! A [`Stall`] only counts while its owner waits: from the first time a
//! read or write returns `Pending` after it last made progress. Time spent
//! not asking (the other side of the proxy is the slow one) is not counted
//! against this side. Nothing is allocated and no timer is armed until a
//! stream first has to wait; the timer is then kept for the stream's life
//! and re-armed at most about once per wait (a wait that ends early leaves
//! it to fire early once and be moved on).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `since + limit`, or a year on if that does not fit.
pub fn deadline(since: Instant, limit: Duration) -> Instant {
    since
        .checked_add(limit)
        .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600))
}

/// See the module docs.
#[derive(Default)]
pub struct Stall {
    timer: Option<Pin<Box<Sleep>>>,
    /// When the current wait began; `None`: not waiting.
    since: Option<Instant>,
}

impl std::fmt::Debug for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stall").field("since", &self.since).finish()
    }
}

impl Stall {
    pub const fn new() -> Stall {
        Stall {
            timer: None,
            since: None,
        }
    }

    /// The stream made progress: any wait is over.
    #[inline]
    pub fn progress(&mut self) {
        self.since = None;
    }

    /// Whether the stream is waiting now (its last poll was `Pending`).
    pub fn waiting(&self) -> bool {
        self.since.is_some()
    }

    /// To be called when the stream returned `Pending`: `Ready` once it has
    /// waited `limit` since it last made progress, else `Pending` (the
    /// task is woken when that time comes).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, limit: Duration) -> Poll<()> {
        let since = *self.since.get_or_insert_with(Instant::now);
        let due = deadline(since, limit);
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() > due {
                    t.as_mut().reset(due);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if Instant::now() >= due => return Poll::Ready(()),
                // Armed for an earlier wait: move it on.
                Poll::Ready(()) => timer.as_mut().reset(due),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expired(s: &mut Stall, limit: Duration) {
        std::future::poll_fn(|cx| s.poll_expired(cx, limit)).await
    }

    #[tokio::test(start_paused = true)]
    async fn counts_only_while_waiting() {
        let limit = Duration::from_secs(10);
        let mut s = Stall::new();
        let start = Instant::now();
        expired(&mut s, limit).await;
        assert_eq!(start.elapsed(), limit);
        // Progress, then a long time not asking: the next wait starts afresh.
        s.progress();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let start = Instant::now();
        expired(&mut s, limit).await;
        assert_eq!(start.elapsed(), limit);
        // Waits that end early do not add up.
        s.progress();
        for _ in 0..5 {
            let r = tokio::time::timeout(Duration::from_secs(6), expired(&mut s, limit)).await;
            assert!(r.is_err(), "6 s is within the limit");
            s.progress();
        }
        assert!(!s.waiting());
    }

    #[test]
    fn a_deadline_past_the_end_of_time_is_far_away_instead() {
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now + Duration::from_secs(3600));
    }
}
