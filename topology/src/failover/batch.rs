//! A plan's moves, many shards at once, as `ezone failover` runs them.
//!
//! - Planned ([`switch_all`]): each shard switches on its own
//!   ([`switch_shard`]: its own lock, record and rollback), at most
//!   `parallel` at once, all under one abort signal. One shard rolling back
//!   does not stop the others; the results come back in shard order.
//! - Forced ([`force_all`]): the shards go by the site they are lost from,
//!   one [`force_moves`] per lost site, one site after the other: each site
//!   has its own record (`ops/forced/{from}`), and its shards open together
//!   once its fence lease has lapsed. A site whose forced failover a dead
//!   command left unopened ([`unopened_forced`]) is finished first, even
//!   with no shard left to move.
//!
//! Nothing here prints: progress reaches the caller as the driver's
//! [`Progress`] (planned) or as [`ForcedEvent`]s (forced).

use std::collections::BTreeMap;

use futures::StreamExt;

use super::driver::{
    force_moves, read_forced, switch_shard, Abort, DriveError, ForcedRecord, Options, Outcome,
    Progress, SiteOps,
};
use super::plan::{Move, Plan};
use crate::model::ShardId;
use crate::store::{StoreError, TopologyStore};

/// One shard's result: how its move ended, or why the driver stopped.
pub type ShardResult = (ShardId, Result<Outcome, DriveError>);

/// Switches every shard of `moves` (a planned plan's), at most `parallel`
/// at once (at least one). `abort` turning `true` rolls back each switchover
/// that has not flipped yet; those past the flip finish. Results in shard
/// order.
pub async fn switch_all<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    moves: &[Move],
    opts: &Options,
    parallel: usize,
    abort: Abort,
    observe: &(dyn Fn(Progress) + Send + Sync),
) -> Vec<ShardResult> {
    let mut results: Vec<ShardResult> = futures::stream::iter(moves)
        .map(|mv| {
            let abort = abort.clone();
            async move {
                let r = switch_shard(store, sites, mv, opts, abort, observe).await;
                (mv.shard, r)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.sort_by_key(|(s, _)| *s);
    results
}

/// What [`force_all`] reports as it goes.
#[derive(Debug)]
pub enum ForcedEvent<'a> {
    /// The driver's progress in the forced failover of `from`'s shards to
    /// `to`. A step labelled `shard N: ...` is that shard's; any other is
    /// the site's (the lease wait, opening the survivor's fence).
    Progress {
        from: &'a str,
        to: &'a str,
        progress: Progress,
    },
    /// `from`'s shards are open at `to`: its record, with the divergence
    /// point (how far `to` had applied `from`'s WAL).
    Opened(&'a ForcedRecord),
}

/// Why a lost site's forced failover stopped (the sites before it are
/// done; re-running the command finishes it).
#[derive(Debug, thiserror::Error)]
pub enum ForceError {
    /// The driver refused the site itself, not one of its shards (e.g. the
    /// survivor is not in the topology).
    #[error("forced failover of {from}'s shards to {to}: {detail}")]
    SiteRefused {
        from: String,
        to: String,
        detail: String,
    },
    /// The driver stopped.
    #[error("forced failover of {from}'s shards to {to}")]
    Driver {
        from: String,
        to: String,
        #[source]
        source: DriveError,
    },
}

impl ForceError {
    fn new(from: &str, to: &str, e: DriveError) -> ForceError {
        let (from, to) = (from.to_string(), to.to_string());
        match e {
            // The driver's site-level refusals carry no shard.
            DriveError::Refused { shard: 0, detail } if detail.starts_with("site ") => {
                ForceError::SiteRefused { from, to, detail }
            }
            source => ForceError::Driver { from, to, source },
        }
    }
}

/// Forces every shard of `plan` (a forced plan's) to `plan.to`, one lost
/// site after the other, after finishing `resume`'s unopened forced
/// failover when given ([`unopened_forced`]). Every shard moved is
/// `Outcome::Done` (a forced move does not hold writes in the planned
/// sense: `hold` is `None`). Stops at the first site that fails.
pub async fn force_all<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    plan: &Plan,
    resume: Option<&str>,
    opts: &Options,
    observe: &(dyn Fn(ForcedEvent<'_>) + Send + Sync),
) -> Result<Vec<ShardResult>, ForceError> {
    let mut by_from: BTreeMap<&str, Vec<Move>> = BTreeMap::new();
    if let Some(from) = resume {
        by_from.entry(from).or_default();
    }
    for m in &plan.moves {
        by_from.entry(m.from.as_str()).or_default().push(m.clone());
    }
    let to = plan.to.as_str();
    let mut results = Vec::new();
    for (from, moves) in by_from {
        let progress = |progress: Progress| {
            observe(ForcedEvent::Progress { from, to, progress });
        };
        let rec = force_moves(store, sites, from, to, &moves, opts, &progress)
            .await
            .map_err(|e| ForceError::new(from, to, e))?;
        observe(ForcedEvent::Opened(&rec));
        for &(shard, _, _) in &rec.shards {
            results.push((shard, Ok(Outcome::Done { hold: None })));
        }
    }
    Ok(results)
}

/// The forced failover of `from` to `to` that a command which died before
/// the survivor opened left behind (its shards are no longer homed at
/// `from`, so a plan for `from` is empty): [`force_all`] finishes it when
/// given it as `resume`. `None` when there is none (or its record is not
/// readable as one).
pub async fn unopened_forced<S: TopologyStore>(
    store: &S,
    from: &str,
    to: &str,
) -> Result<Option<ForcedRecord>, StoreError> {
    Ok(read_forced(store, from)
        .await?
        .filter(|r| !r.opened && r.to == to))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::watch;

    use super::*;
    use crate::failover::driver::forced_name;
    use crate::failover::driver::tests::{opts, setup, with_lease, FakeSites};
    use crate::failover::plan::{plan_shards, plan_site, Mode};
    use crate::model::ShardState;

    #[tokio::test]
    async fn every_shard_of_a_planned_plan_switches_and_results_come_in_shard_order() {
        let (_d, store) = setup().await;
        let t = store.load().await.unwrap().topology;
        let all = t.shards.keys().copied().collect();
        let plan = plan_shards(&t, &all, "shanghai", Mode::Planned, &[]).unwrap();
        // One shard is at shanghai already: the plan moves beijing's.
        let moving: Vec<ShardId> = plan.moves.iter().map(|m| m.shard).collect();
        assert!(!moving.is_empty());
        let sites = FakeSites::new(0);
        let (_tx, abort) = watch::channel(false);
        let begun = Mutex::new(Vec::new());
        let observe = |p: Progress| {
            if let Progress::Begin { shard, .. } = p {
                begun.lock().unwrap().push(shard);
            }
        };
        let results = switch_all(&store, &sites, &plan.moves, &opts(), 4, abort, &observe).await;
        let shards: Vec<ShardId> = results.iter().map(|(s, _)| *s).collect();
        assert_eq!(shards, moving);
        for (shard, r) in &results {
            assert!(
                matches!(r, Ok(Outcome::Done { .. })),
                "shard {shard}: {r:?}"
            );
        }
        let mut begun = begun.into_inner().unwrap();
        begun.sort_unstable();
        assert_eq!(begun, moving);
        let after = store.load().await.unwrap().topology;
        assert!(after.shards.values().all(|s| s.home == "shanghai"));
    }

    #[tokio::test]
    async fn an_abort_before_the_flip_rolls_every_shard_back() {
        let (_d, store) = setup().await;
        let t = store.load().await.unwrap().topology;
        let plan = plan_site(&t, "beijing", "shanghai", Mode::Planned, &[]).unwrap();
        // The marker never arrives: only the abort ends the catch-up.
        let sites = FakeSites::new(usize::MAX);
        let (tx, abort) = watch::channel(false);
        let mut o = opts();
        o.timeout = std::time::Duration::from_secs(30);
        let ctrl_c = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            tx.send(true).unwrap();
        };
        let (results, ()) = tokio::join!(
            switch_all(&store, &sites, &plan.moves, &o, 1, abort, &|_| {}),
            ctrl_c
        );
        assert_eq!(results.len(), plan.moves.len());
        for (shard, r) in &results {
            match r {
                Ok(Outcome::RolledBack { reason, .. }) => {
                    assert!(reason.contains("aborted"), "shard {shard}: {reason}")
                }
                other => panic!("shard {shard}: {other:?}"),
            }
        }
        let after = store.load().await.unwrap().topology;
        for m in &plan.moves {
            assert_eq!(after.shards[&m.shard].home, "beijing");
        }
    }

    #[tokio::test]
    async fn a_forced_plan_goes_site_by_site_and_reports_each_opening() {
        let (_d, store) = setup().await;
        // No lease: the survivor opens at once.
        with_lease(&store, 0, 0).await;
        let t = store.load().await.unwrap().topology;
        let plan = plan_site(&t, "beijing", "shanghai", Mode::Forced, &[]).unwrap();
        let sites = FakeSites::new(0);
        let seen = Mutex::new(Vec::new());
        let observe = |e: ForcedEvent<'_>| {
            let line = match e {
                ForcedEvent::Progress { from, to, .. } => format!("progress {from}->{to}"),
                ForcedEvent::Opened(r) => format!("opened {}->{}", r.from, r.to),
            };
            seen.lock().unwrap().push(line);
        };
        let results = force_all(&store, &sites, &plan, None, &opts(), &observe)
            .await
            .unwrap();
        let moved: Vec<ShardId> = plan.moves.iter().map(|m| m.shard).collect();
        assert_eq!(results.iter().map(|(s, _)| *s).collect::<Vec<_>>(), moved);
        assert!(results
            .iter()
            .all(|(_, r)| matches!(r, Ok(Outcome::Done { hold: None }))));
        let seen = seen.into_inner().unwrap();
        assert_eq!(
            seen.last().map(String::as_str),
            Some("opened beijing->shanghai")
        );
        assert!(seen[..seen.len() - 1]
            .iter()
            .all(|l| l == "progress beijing->shanghai"));
        let after = store.load().await.unwrap().topology;
        for m in &plan.moves {
            let s = &after.shards[&m.shard];
            assert_eq!((s.home.as_str(), s.state), ("shanghai", ShardState::Active));
        }
        // Done: nothing left unopened to resume.
        assert!(unopened_forced(&store, "beijing", "shanghai")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn an_unopened_forced_failover_is_found_and_finished_with_nothing_left_to_move() {
        let (_d, store) = setup().await;
        with_lease(&store, 0, 0).await;
        let t = store.load().await.unwrap().topology;
        let plan = plan_site(&t, "beijing", "shanghai", Mode::Forced, &[]).unwrap();
        let taken: Vec<(ShardId, u64, u64)> = plan
            .moves
            .iter()
            .map(|m| (m.shard, m.epoch, m.epoch + 1))
            .collect();
        // What a command that died after taking the shards leaves: the
        // shards homed at shanghai, frozen, and a record not opened.
        for m in &plan.moves {
            let next = crate::model::Shard {
                id: m.shard,
                home: "shanghai".into(),
                state: ShardState::Frozen,
                epoch: m.epoch + 1,
            };
            store.cas_shard(m.epoch, &next).await.unwrap();
        }
        let rec = ForcedRecord {
            from: "beijing".into(),
            to: "shanghai".into(),
            at_ms: 1,
            holder: "died".into(),
            shards: taken,
            divergence_lsn: None,
            divergence_error: None,
            opens_at_ms: 1,
            opened: false,
            closed_at_ms: None,
            closed_by: None,
        };
        store
            .write_op(&forced_name("beijing"), &serde_json::to_vec(&rec).unwrap())
            .await
            .unwrap();
        assert!(unopened_forced(&store, "beijing", "elsewhere")
            .await
            .unwrap()
            .is_none());
        let found = unopened_forced(&store, "beijing", "shanghai")
            .await
            .unwrap()
            .expect("the unopened record");
        let now = store.load().await.unwrap().topology;
        let empty = plan_site(&now, "beijing", "shanghai", Mode::Forced, &[]).unwrap();
        assert!(empty.moves.is_empty());
        let sites = FakeSites::new(0);
        let results = force_all(&store, &sites, &empty, Some(&found.from), &opts(), &|_| {})
            .await
            .unwrap();
        assert_eq!(results.len(), plan.moves.len());
        let after = store.load().await.unwrap().topology;
        for m in &plan.moves {
            assert_eq!(after.shards[&m.shard].state, ShardState::Active);
        }
    }

    #[tokio::test]
    async fn a_site_level_refusal_names_the_site_not_shard_0() {
        let e = ForceError::new(
            "beijing",
            "mars",
            DriveError::Refused {
                shard: 0,
                detail: "site mars is not in the topology".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "forced failover of beijing's shards to mars: site mars is not in the topology"
        );
        let e = ForceError::new(
            "beijing",
            "shanghai",
            DriveError::Refused {
                shard: 3,
                detail: "x".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "forced failover of beijing's shards to shanghai"
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("shard 3: x"));
    }
}
