//! Client connections balanced across the worker threads.
//!
//! Each worker accepts on its own `SO_REUSEPORT` socket, and the kernel
//! spreads new connections over those sockets by a hash of their addresses:
//! fair for many short connections, lopsided for a few long ones. 64
//! keep-alive connections measured as 36 against 28 on two workers, and the
//! busier worker's clients then wait longer (a worse p99) while the other
//! worker idles (less throughput). So, as Envoy's `exact_balance` and
//! nginx's `accept_disabled` do, the accepting worker looks at every
//! worker's open connections and, if another worker has clearly fewer,
//! hands the new connection to it. Only the accept is moved (a channel send
//! of the socket, then the other worker registers it with its own runtime);
//! every request on the connection is served by the worker that took it.
//!
//! The decision ([`choose`]) is a pure function of the counts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

/// A worker keeps a new connection unless another has at least this many
/// fewer open: a tolerance of one connection avoids handing off on every
/// accept when the counts are level.
pub const SLACK: usize = 1;

/// Open connections per worker, and the way to each worker's inbox (which
/// takes a `T`: the server's hand-off message, with the socket).
pub struct Balance<T> {
    counts: Arc<Counts>,
    inboxes: Vec<mpsc::UnboundedSender<T>>,
}

/// Open connections per worker.
pub struct Counts(Vec<AtomicUsize>);

/// One open connection of one worker; dropping it (when the connection ends)
/// counts it out. It travels with a handed-off connection, so that the
/// receiving worker counts it from the moment it was chosen: a burst of
/// accepts does not pick the same worker for all of them before it has
/// registered any.
pub struct Open {
    counts: Arc<Counts>,
    worker: usize,
}

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(c) = self.counts.0.get(self.worker) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<T> Balance<T> {
    /// A balance over `workers` workers, and each worker's inbox (in worker
    /// order).
    pub fn new(workers: usize) -> (Arc<Balance<T>>, Vec<mpsc::UnboundedReceiver<T>>) {
        let (inboxes, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            counts: Arc::new(Counts((0..workers).map(|_| AtomicUsize::new(0)).collect())),
            inboxes,
        };
        (Arc::new(balance), receivers)
    }

    /// Open connections of each worker, now.
    pub fn counts(&self) -> Vec<usize> {
        self.counts
            .0
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Counts a new connection against `worker`.
    pub fn open(&self, worker: usize) -> Open {
        if let Some(c) = self.counts.0.get(worker) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Open {
            counts: self.counts.clone(),
            worker,
        }
    }

    /// Where a connection accepted by worker `me` is served (see
    /// [`choose`]), counted against that worker.
    pub fn place(&self, me: usize) -> (usize, Open) {
        let to = choose(&self.counts(), me);
        (to, self.open(to))
    }

    /// Sends a connection to worker `to`'s inbox; gives it back if that
    /// worker is gone (its runtime failed to start or has stopped).
    pub fn hand_off(&self, to: usize, msg: T) -> Result<(), T> {
        match self.inboxes.get(to) {
            Some(tx) => tx.send(msg).map_err(|e| e.0),
            None => Err(msg),
        }
    }
}

/// Which worker should serve a connection that worker `me` accepted, given
/// every worker's open connections: `me`, unless some worker has more than
/// [`SLACK`] fewer (then the one with the fewest, the lowest index on a tie).
pub fn choose(counts: &[usize], me: usize) -> usize {
    let Some(&mine) = counts.get(me) else {
        return me;
    };
    let best = counts
        .iter()
        .enumerate()
        .min_by_key(|&(i, &c)| (c, i))
        .map_or(me, |(i, _)| i);
    match counts.get(best) {
        Some(&fewest) if fewest + SLACK < mine => best,
        _ => me,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_worker_keeps_its_connection_unless_another_has_clearly_fewer() {
        assert_eq!(choose(&[0, 0], 0), 0);
        assert_eq!(choose(&[0, 0], 1), 1);
        // Within the slack: kept.
        assert_eq!(choose(&[5, 4], 0), 0);
        // Beyond it: handed to the one with the fewest.
        assert_eq!(choose(&[6, 4], 0), 1);
        assert_eq!(choose(&[9, 3, 3], 0), 1);
        assert_eq!(choose(&[3, 9, 2], 1), 2);
        // A lone worker, or an index out of range: kept.
        assert_eq!(choose(&[100], 0), 0);
        assert_eq!(choose(&[], 0), 0);
        assert_eq!(choose(&[1, 2], 7), 7);
    }

    #[test]
    fn counts_follow_the_guards_and_a_burst_spreads() {
        let (b, _rx) = Balance::<()>::new(2);
        // Worker 0 accepts a burst of 64: they end up even, within the slack.
        let guards: Vec<Open> = (0..64).map(|_| b.place(0).1).collect();
        let c = b.counts();
        assert_eq!(c.iter().sum::<usize>(), 64);
        assert!(c[0].abs_diff(c[1]) <= SLACK + 1, "{c:?}");
        drop(guards);
        assert_eq!(b.counts(), vec![0, 0]);
    }

    #[tokio::test]
    async fn a_handoff_reaches_the_chosen_worker_or_comes_back() {
        let (b, mut rx) = Balance::<(u32, Open)>::new(2);
        let open = b.open(1);
        assert!(b.hand_off(1, (7, open)).is_ok());
        let got = rx[1].recv().await.expect("handed over");
        assert_eq!(got.0, 7);
        assert_eq!(b.counts(), vec![0, 1]);
        drop(got);
        assert_eq!(b.counts(), vec![0, 0]);
        // A worker that is gone gives the connection back.
        drop(rx);
        let open = b.open(1);
        assert!(b.hand_off(1, (8, open)).is_err());
        assert!(b.hand_off(5, (9, b.open(5))).is_err());
    }

    proptest! {
        /// Whatever the counts, the choice is `me` or a worker that exists
        /// and has clearly fewer connections.
        #[test]
        fn the_choice_never_adds_to_a_busier_worker(
            counts in proptest::collection::vec(0usize..1000, 0..8),
            me in 0usize..10,
        ) {
            let to = choose(&counts, me);
            if to != me {
                prop_assert!(to < counts.len());
                prop_assert!(counts[to] + SLACK < counts[me]);
            }
        }
    }
}
