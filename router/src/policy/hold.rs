//! Holding writes for a frozen shard.
//!
//! A write for a frozen shard is not failed: it waits, bounded in number and
//! time, until the topology shows the shard active again (the flip landed),
//! and is then forwarded to the shard's (possibly new) home. Past the deadline
//! it gets 503 with `Retry-After`. Reads never come here.

use std::sync::Arc;
use std::time::Duration;

use ezone_topology::ShardId;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::metrics::{HoldLabels, HoldOutcome, Metrics};
use crate::policy::decide::{release, Decision, Policy};

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// The shard is active again: send the write per this decision.
    Released(Decision),
    /// The deadline passed.
    Deadline,
    /// Too many writes are held already.
    Overflow,
}

/// Waits until the topology shows `shard` at `epoch` or later (a peer
/// router forwarded a request decided at that epoch), up to `deadline`.
/// Returns the snapshot to decide with, or `None` past the deadline.
pub async fn wait_for_epoch(
    mut topology: tokio::sync::watch::Receiver<Option<Arc<ezone_topology::Snapshot>>>,
    shard: ShardId,
    epoch: u64,
    deadline: Duration,
) -> Option<Arc<ezone_topology::Snapshot>> {
    let until = Instant::now() + deadline;
    loop {
        let current = topology.borrow_and_update().clone();
        if let Some(snap) = current {
            if snap
                .topology
                .shards
                .get(&shard)
                .is_none_or(|s| s.epoch >= epoch)
            {
                return Some(snap);
            }
        }
        tokio::select! {
            changed = topology.changed() => {
                if changed.is_err() {
                    return None;
                }
            }
            _ = tokio::time::sleep_until(until) => return None,
        }
    }
}

/// The bounded set of held writes.
pub struct HoldQueue {
    slots: Arc<Semaphore>,
}

impl HoldQueue {
    pub fn new(max_held: usize) -> HoldQueue {
        HoldQueue {
            slots: Arc::new(Semaphore::new(max_held)),
        }
    }

    /// Holds a write for `shard` until it is released or `deadline` passes.
    /// `topology` yields every new snapshot (a `watch` receiver).
    pub async fn hold(
        &self,
        shard: ShardId,
        deadline: Duration,
        policy: &Policy,
        mut topology: tokio::sync::watch::Receiver<Option<Arc<ezone_topology::Snapshot>>>,
        metrics: &Metrics,
    ) -> Held {
        let Ok(_slot) = self.slots.clone().try_acquire_owned() else {
            metrics
                .hold_outcomes
                .get_or_create(&HoldLabels {
                    outcome: HoldOutcome::Overflow,
                })
                .inc();
            return Held::Overflow;
        };
        metrics.held.inc();
        let started = Instant::now();
        let until = started + deadline;
        let outcome = loop {
            let released = topology
                .borrow_and_update()
                .as_ref()
                .and_then(|snap| release(&snap.topology, policy, shard));
            if let Some(d) = released {
                break Held::Released(d);
            }
            tokio::select! {
                changed = topology.changed() => {
                    if changed.is_err() {
                        // The watcher is gone: nothing will release us.
                        tokio::time::sleep_until(until).await;
                        break Held::Deadline;
                    }
                }
                _ = tokio::time::sleep_until(until) => break Held::Deadline,
            }
        };
        metrics.held.dec();
        metrics
            .hold_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match outcome {
            Held::Released(_) => HoldOutcome::Released,
            _ => HoldOutcome::Deadline,
        };
        metrics
            .hold_outcomes
            .get_or_create(&HoldLabels { outcome: label })
            .inc();
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::decide::FallbackAction;
    use ezone_topology::starter::starter;
    use ezone_topology::{ShardState, Snapshot};

    fn policy() -> Policy {
        Policy {
            site: "beijing".into(),
            on_missing_key: FallbackAction::DefaultSite,
            on_unknown_city: FallbackAction::Reject,
        }
    }

    fn snap(version: i64, state: ShardState, home: &str, epoch: u64) -> Option<Arc<Snapshot>> {
        let mut t = starter(&["beijing", "shanghai"], 1);
        let s = t.shards.get_mut(&1).unwrap();
        s.state = state;
        s.home = home.into();
        s.epoch = epoch;
        Some(Arc::new(Snapshot {
            version,
            topology: Arc::new(t),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn released_when_the_flip_lands() {
        let (tx, rx) = tokio::sync::watch::channel(snap(1, ShardState::Frozen, "beijing", 2));
        let q = HoldQueue::new(10);
        let m = Metrics::new();
        let p = policy();
        let hold = q.hold(1, Duration::from_secs(2), &p, rx, &m);
        let flip = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            tx.send_replace(snap(2, ShardState::Active, "shanghai", 3));
        };
        let (held, ()) = tokio::join!(hold, flip);
        match held {
            Held::Released(Decision::Remote { site, shard, .. }) => {
                assert_eq!(site, "shanghai");
                assert_eq!(shard.map(|s| s.epoch), Some(3));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.held.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_and_overflow() {
        let (_tx, rx) = tokio::sync::watch::channel(snap(1, ShardState::Frozen, "beijing", 2));
        let q = HoldQueue::new(1);
        let m = Metrics::new();
        let p = policy();
        let first = q.hold(1, Duration::from_secs(2), &p, rx.clone(), &m);
        let second = async {
            // Let the first take the only slot.
            tokio::task::yield_now().await;
            q.hold(1, Duration::from_secs(2), &p, rx.clone(), &m).await
        };
        let (a, b) = tokio::join!(first, second);
        assert_eq!(a, Held::Deadline);
        assert_eq!(b, Held::Overflow);
    }

    #[tokio::test(start_paused = true)]
    async fn a_router_behind_a_peer_waits_for_its_epoch_or_gives_up() {
        let (tx, rx) = tokio::sync::watch::channel(snap(1, ShardState::Active, "beijing", 2));
        let catch_up = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            tx.send_replace(snap(2, ShardState::Active, "shanghai", 4));
        };
        let (got, ()) = tokio::join!(
            wait_for_epoch(rx.clone(), 1, 4, Duration::from_secs(2)),
            catch_up
        );
        assert_eq!(
            got.map(|s| s.topology.shards[&1].home.clone()).as_deref(),
            Some("shanghai")
        );
        // Never catching up: the deadline.
        let (_tx2, rx2) = tokio::sync::watch::channel(snap(1, ShardState::Active, "beijing", 2));
        assert!(wait_for_epoch(rx2, 1, 9, Duration::from_secs(2))
            .await
            .is_none());
    }
}
