//! The driver against a real file store and scripted sites: every path of
//! the machine, crashes resumed from the record, abort, lost answers. The
//! scripted sites and the set-up are shared with the tests of the modules
//! built on the driver (`failover/batch.rs`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::*;
use crate::failover::plan::{plan_shards, plan_site, Mode};
use crate::starter::starter;
use crate::store::FileStore;

/// Scripted sites: records every call; the marker shows up after
/// `marker_after` polls (`usize::MAX`: never).
pub(crate) struct FakeSites {
    calls: Mutex<Vec<String>>,
    polls: AtomicUsize,
    marker_after: usize,
    fail_fence_at: Option<String>,
    /// Unresolved conflicts by (site, shard).
    conflicts: Mutex<std::collections::HashMap<(String, ShardId), u64>>,
    /// Conflicts of shard 1 the marker's arrival brings to a site.
    conflicts_with_marker: Mutex<Option<(String, u64)>>,
    /// Link states by source site (default: streaming, confirmed 100 ms ago).
    links: Mutex<std::collections::HashMap<String, LinkState>>,
    /// The link's applied position, as `applied_from` answers it.
    applied: Mutex<Option<String>>,
    /// Sites at which the marker has not arrived (whatever `marker_after`
    /// says), and the sites asked, in order.
    marker_missing_at: Mutex<std::collections::BTreeSet<String>>,
    marker_asked: Mutex<Vec<String>>,
}

impl FakeSites {
    pub(crate) fn new(marker_after: usize) -> FakeSites {
        FakeSites {
            calls: Mutex::new(Vec::new()),
            polls: AtomicUsize::new(0),
            marker_after,
            fail_fence_at: None,
            conflicts: Mutex::default(),
            conflicts_with_marker: Mutex::default(),
            links: Mutex::default(),
            applied: Mutex::new(Some("0/ABC".into())),
            marker_missing_at: Mutex::default(),
            marker_asked: Mutex::default(),
        }
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl SiteOps for FakeSites {
    async fn sync_fence(&self, site: &Site, t: &Topology) -> Result<(), SiteError> {
        if self.fail_fence_at.as_deref() == Some(site.name.as_str()) {
            return Err(SiteError {
                site: site.name.clone(),
                what: "fence".into(),
                detail: "permission denied".into(),
                retryable: false,
            });
        }
        let s = &t.shards[&1];
        self.calls.lock().unwrap().push(format!(
            "fence {} shard1={}:{}:{}",
            site.name, s.home, s.state, s.epoch
        ));
        Ok(())
    }
    async fn open_fence_ahead(
        &self,
        site: &Site,
        shard: ShardId,
        epoch: Epoch,
    ) -> Result<(), SiteError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("open ahead {} shard{shard}@{epoch}", site.name));
        Ok(())
    }
    async fn emit_marker(&self, site: &Site, token: &str) -> Result<String, SiteError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("marker {} {token}", site.name));
        Ok("0/1000".into())
    }
    async fn marker_applied(&self, site: &Site, _token: &str) -> Result<bool, SiteError> {
        self.marker_asked.lock().unwrap().push(site.name.clone());
        if self.marker_missing_at.lock().unwrap().contains(&site.name) {
            return Ok(false);
        }
        let applied = self.polls.fetch_add(1, Ordering::SeqCst) >= self.marker_after;
        if applied {
            // What the catch-up brought with it.
            if let Some((site, n)) = self.conflicts_with_marker.lock().unwrap().take() {
                self.conflicts.lock().unwrap().insert((site, 1), n);
            }
        }
        Ok(applied)
    }
    async fn link_state(&self, source: &Site, _target: &str) -> Result<LinkState, SiteError> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .get(&source.name)
            .cloned()
            .unwrap_or(LinkState {
                slot: true,
                active: true,
                last_reply: Some(Duration::from_millis(100)),
            }))
    }
    async fn pending_conflicts(&self, site: &Site, shard: ShardId) -> Result<u64, SiteError> {
        Ok(self
            .conflicts
            .lock()
            .unwrap()
            .get(&(site.name.clone(), shard))
            .copied()
            .unwrap_or(0))
    }
    async fn applied_from(&self, _site: &Site, _from: &str) -> Result<Option<String>, SiteError> {
        Ok(self.applied.lock().unwrap().clone())
    }
}

pub(crate) async fn setup() -> (tempfile::TempDir, FileStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("topology.toml"));
    store
        .init(&starter(&["beijing", "shanghai"], 1), false)
        .await
        .unwrap();
    (dir, store)
}

pub(crate) fn opts() -> Options {
    let mut o = Options::new("test");
    o.timeout = Duration::from_millis(500);
    o.poll = Duration::from_millis(1);
    o.lock_wait = Duration::from_millis(300);
    // The scripted sites' calls are asserted step by step; the preflight
    // has its own tests.
    o.preflight = false;
    o
}

fn no_abort() -> (watch::Sender<bool>, Abort) {
    watch::channel(false)
}

fn quiet(_: Progress) {}

async fn shard1(store: &FileStore) -> Shard {
    store.load().await.unwrap().topology.shards[&1].clone()
}

fn mv(store_shard: &Shard, to: &str) -> Move {
    Move {
        shard: 1,
        from: store_shard.home.clone(),
        to: to.into(),
        epoch: store_shard.epoch,
        state: store_shard.state,
    }
}

/// Leaves `sw` as the record a crashed run wrote, then re-runs the command.
async fn resume_after_crash(store: &FileStore, sw: Switchover, m: &Move) -> Outcome {
    let r = Record {
        switchover: sw,
        holder: "crashed".into(),
        history: vec![],
        frozen_at_ms: None,
        active_at_ms: None,
        finished: false,
        finished_at_ms: None,
    };
    store
        .write_op("switchover/1", &serde_json::to_vec(&r).unwrap())
        .await
        .unwrap();
    let sites = FakeSites::new(0);
    let (_tx, abort) = no_abort();
    switch_shard(store, &sites, m, &opts(), abort, &quiet)
        .await
        .unwrap()
}

async fn record(store: &FileStore) -> Record {
    serde_json::from_slice(&store.read_op("switchover/1").await.unwrap().unwrap()).unwrap()
}

#[tokio::test]
async fn a_planned_switchover_fences_waits_for_the_marker_and_flips() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let sites = FakeSites::new(3);
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Done { hold: Some(_) }), "{out:?}");
    let after = shard1(&store).await;
    assert_eq!(
        (after.home.as_str(), after.state, after.epoch),
        (to, ShardState::Active, before.epoch + 2)
    );
    let from = &before.home;
    assert_eq!(
        sites.calls(),
        vec![
            format!("fence {from} shard1={from}:frozen:{}", before.epoch + 1),
            format!(
                "marker {from} switchover shard=1 from={from} to={to} epoch={}",
                before.epoch + 1
            ),
            format!("open ahead {to} shard1@{}", before.epoch + 2),
            format!("fence {to} shard1={to}:active:{}", before.epoch + 2),
        ]
    );
    let r = record(&store).await;
    assert_eq!(r.switchover.step, Step::Done);
    let steps: Vec<&str> = r.history.iter().map(|m| m.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "start",
            "frozen",
            "fenced",
            "catching_up",
            "opening",
            "flipping",
            "done"
        ]
    );
    // The end of the last step (confirming the new home's fence) is kept.
    assert!(r.finished);
    let done_at = r.history.last().unwrap().at_ms;
    assert!(r.finished_at_ms.is_some_and(|t| t >= done_at), "{r:?}");
    // A second run finds nothing to do.
    let (_tx, abort) = no_abort();
    let again = switch_shard(&store, &sites, &mv(&after, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    assert_eq!(again, Outcome::AlreadyThere);
}

#[tokio::test]
async fn a_marker_that_never_arrives_rolls_back_with_a_new_epoch() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let sites = FakeSites::new(usize::MAX);
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    match out {
        Outcome::RolledBack { reason, hold } => {
            assert!(reason.contains("timed out"), "{reason}");
            assert!(hold.is_some());
        }
        other => panic!("{other:?}"),
    }
    let after = shard1(&store).await;
    assert_eq!(
        (after.home.as_str(), after.state, after.epoch),
        (before.home.as_str(), ShardState::Active, before.epoch + 2)
    );
    // Both fences are reconciled with the rolled-back topology: the old
    // home's reopens, the target's (never opened here) stays closed.
    let calls = sites.calls();
    let tail = &calls[calls.len() - 2..];
    assert!(
        tail[0].starts_with(&format!("fence {} ", before.home)),
        "{tail:?}"
    );
    assert!(tail[1].starts_with(&format!("fence {to} ")), "{tail:?}");
}

#[tokio::test]
async fn an_abort_before_the_flip_rolls_back() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let sites = FakeSites::new(usize::MAX);
    let (tx, abort) = no_abort();
    let mut o = opts();
    o.timeout = Duration::from_secs(30);
    let task = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(true).unwrap();
    };
    let m = mv(&before, to);
    let (out, ()) = tokio::join!(switch_shard(&store, &sites, &m, &o, abort, &quiet), task);
    match out.unwrap() {
        Outcome::RolledBack { reason, .. } => assert!(reason.contains("aborted"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(shard1(&store).await.home, before.home);
}

#[tokio::test]
async fn a_fence_that_cannot_close_rolls_back() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let mut sites = FakeSites::new(0);
    sites.fail_fence_at = Some(before.home.clone());
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet).await;
    // The rollback's own fence reopen fails too (same site): the driver
    // stops and says to re-run; the topology is rolled back already.
    match out {
        Err(DriveError::Stuck { step, .. }) => assert_eq!(step, "rolled_back"),
        other => panic!("{other:?}"),
    }
    let after = shard1(&store).await;
    assert_eq!(
        (after.home.as_str(), after.state),
        (before.home.as_str(), ShardState::Active)
    );
    // Re-run once the site is healthy: it finishes the reopen.
    sites.fail_fence_at = None;
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&after, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    // The record was over only after the reopen, so the re-run resumed it.
    assert!(matches!(out, Outcome::RolledBack { .. }), "{out:?}");
}

/// A crash right after each step was persisted: the world (store and
/// record) is set up as that crash leaves it, and a re-run finishes.
#[tokio::test]
async fn a_rerun_resumes_from_every_recorded_step() {
    for stop_at in [
        "start",
        "frozen",
        "fenced",
        "catching_up",
        "opening",
        "flipping",
    ] {
        let (_d, store) = setup().await;
        let before = shard1(&store).await;
        let from = before.home.clone();
        let to = if from == "beijing" {
            "shanghai"
        } else {
            "beijing"
        };
        // Bring the world to the state a crash right after persisting
        // `stop_at` leaves behind.
        let mut sw = Switchover::new(1, &from, to, before.epoch);
        let script = [
            Event::CasLanded,
            Event::FenceClosed,
            Event::MarkerEmitted { lsn: "0/1".into() },
            Event::MarkerApplied,
            Event::FenceOpened,
        ];
        let steps = [
            "start",
            "frozen",
            "fenced",
            "catching_up",
            "opening",
            "flipping",
        ];
        let n = steps.iter().position(|s| *s == stop_at).unwrap();
        for ev in &script[..n] {
            if matches!(ev, Event::CasLanded) {
                let mut s = before.clone();
                s.state = ShardState::Frozen;
                s.epoch += 1;
                store.cas_shard(before.epoch, &s).await.unwrap();
            }
            sw = sw.on(ev.clone()).unwrap();
        }
        let out = resume_after_crash(&store, sw, &mv(&before, to)).await;
        assert!(matches!(out, Outcome::Done { .. }), "{stop_at}: {out:?}");
        let after = shard1(&store).await;
        assert_eq!(
            (after.home.as_str(), after.epoch),
            (to, before.epoch + 2),
            "{stop_at}"
        );
    }
}

#[tokio::test]
async fn a_flip_whose_answer_was_lost_is_recognised() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let from = before.home.clone();
    let to = if from == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    // The flip landed in the store, but the record still says flipping.
    let mut frozen = before.clone();
    frozen.state = ShardState::Frozen;
    frozen.epoch += 1;
    store.cas_shard(before.epoch, &frozen).await.unwrap();
    let mut flipped = frozen.clone();
    flipped.home = to.into();
    flipped.state = ShardState::Active;
    flipped.epoch += 1;
    store.cas_shard(frozen.epoch, &flipped).await.unwrap();
    let mut sw = Switchover::new(1, &from, to, before.epoch);
    for ev in [
        Event::CasLanded,
        Event::FenceClosed,
        Event::MarkerEmitted { lsn: "0/1".into() },
        Event::MarkerApplied,
        Event::FenceOpened,
    ] {
        sw = sw.on(ev).unwrap();
    }
    let out = resume_after_crash(&store, sw, &mv(&before, to)).await;
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert_eq!(shard1(&store).await, flipped);
}

#[tokio::test]
async fn two_operators_cannot_switch_one_shard() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let _held = store
        .lock(&lock_name(1), "other operator", Duration::from_secs(5))
        .await
        .unwrap();
    let sites = FakeSites::new(0);
    let (_tx, abort) = no_abort();
    let err = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("other operator"), "{err}");
    assert_eq!(shard1(&store).await, before);
}

/// Sets the topology's fence lease and clock-skew bound.
pub(crate) async fn with_lease(store: &FileStore, lease_ms: u64, skew_ms: u64) {
    let mut t = (*store.load().await.unwrap().topology).clone();
    t.settings.fence_lease_ms = lease_ms;
    t.settings.clock_skew_ms = skew_ms;
    store.init(&t, true).await.unwrap();
}

#[tokio::test]
async fn a_forced_failover_moves_every_shard_and_records_the_divergence() {
    let (_d, store) = setup().await;
    with_lease(&store, 1_000, 200).await;
    let started = std::time::Instant::now();
    let t = store.load().await.unwrap().topology;
    let plan = plan_site(&t, "beijing", "shanghai", Mode::Forced, &[]).unwrap();
    assert!(!plan.moves.is_empty());
    let sites = FakeSites::new(0);
    let rec = force_moves(
        &store,
        &sites,
        "beijing",
        "shanghai",
        &plan.moves,
        &opts(),
        &quiet,
    )
    .await
    .unwrap();
    assert_eq!(rec.divergence_lsn.as_deref(), Some("0/ABC"));
    assert_eq!(rec.shards.len(), plan.moves.len());
    let after = store.load().await.unwrap().topology;
    for (id, before, now) in &rec.shards {
        let s = &after.shards[id];
        assert_eq!(
            (s.home.as_str(), s.state, s.epoch),
            ("shanghai", ShardState::Active, *now)
        );
        // Taken frozen, then opened: two epochs, both named forced.
        assert_eq!(*now, before + 2);
        let h = crate::history::read(&store, *id).await.unwrap();
        let last: Vec<(ShardState, crate::history::Transition)> = h.entries()
            [h.entries().len() - 2..]
            .iter()
            .map(|e| (e.state, e.how))
            .collect();
        assert_eq!(
            last,
            vec![
                (ShardState::Frozen, crate::history::Transition::Forced),
                (ShardState::Active, crate::history::Transition::Forced)
            ]
        );
    }
    // The survivor opened only once beijing's lease (1 s) plus the clock
    // skew bound (0.2 s) had passed.
    assert!(
        started.elapsed() >= Duration::from_millis(1_200),
        "{:?}",
        started.elapsed()
    );
    assert!(rec.opened);
    assert!(after.shards.values().all(|s| s.home == "shanghai"));
    let stored: ForcedRecord =
        serde_json::from_slice(&store.read_op("forced/beijing").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored, rec);
    // Planning the same shards again: nothing left to move.
    let all = after.shards.keys().copied().collect();
    assert!(plan_shards(&after, &all, "shanghai", Mode::Forced, &[])
        .unwrap()
        .moves
        .is_empty());
}

#[tokio::test]
async fn unresolved_conflicts_of_the_shard_refuse_or_stop_a_switchover() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    // Pending at the target: refused before anything changes.
    let sites = FakeSites::new(0);
    sites
        .conflicts
        .lock()
        .unwrap()
        .insert((to.to_string(), 1), 2);
    let (_tx, abort) = no_abort();
    let mut o = opts();
    o.preflight = true;
    let err = switch_shard(&store, &sites, &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("2 unresolved conflict(s)") && text.contains("ezone conflicts"),
        "{text}"
    );
    assert_eq!(shard1(&store).await, before);
    // Nothing but the preflight's own marker.
    assert!(
        sites.calls().iter().all(|c| c.contains("preflight")),
        "{:?}",
        sites.calls()
    );
    assert!(store.read_op("switchover/1").await.unwrap().is_none());
    // Conflicts of another shard do not matter.
    sites.conflicts.lock().unwrap().clear();
    sites
        .conflicts
        .lock()
        .unwrap()
        .insert((to.to_string(), 2), 5);
    // Conflicts the catch-up brings: the target does not become the home.
    *sites.conflicts_with_marker.lock().unwrap() = Some((to.to_string(), 1));
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    match out {
        Outcome::RolledBack { reason, .. } => {
            assert!(reason.contains("1 unresolved conflict(s)"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let after = shard1(&store).await;
    assert_eq!(
        (after.home.as_str(), after.state),
        (before.home.as_str(), ShardState::Active)
    );
}

#[tokio::test]
async fn each_epoch_the_driver_writes_says_how_it_came_about() {
    use crate::history::{self, Transition};
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = if before.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    let (_tx, abort) = no_abort();
    switch_shard(
        &store,
        &FakeSites::new(0),
        &mv(&before, to),
        &opts(),
        abort,
        &quiet,
    )
    .await
    .unwrap();
    let (_tx, abort) = no_abort();
    let now = shard1(&store).await;
    let back = switch_shard(
        &store,
        &FakeSites::new(usize::MAX),
        &mv(&now, &before.home),
        &opts(),
        abort,
        &quiet,
    )
    .await
    .unwrap();
    assert!(matches!(back, Outcome::RolledBack { .. }), "{back:?}");
    let h = history::read(&store, 1).await.unwrap();
    let got: Vec<(u64, &str, Transition)> = h
        .entries()
        .iter()
        .map(|e| (e.epoch, e.home.as_str(), e.how))
        .collect();
    let e = before.epoch;
    let from = before.home.as_str();
    assert_eq!(
        got,
        vec![
            (e, from, Transition::Init),
            (e + 1, from, Transition::Freeze),
            (e + 2, to, Transition::Flip),
            (e + 3, to, Transition::Freeze),
            (e + 4, to, Transition::Rollback),
        ]
    );
}

fn other_site(home: &str) -> &'static str {
    if home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    }
}

#[tokio::test]
async fn a_preflight_that_fails_changes_nothing() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = other_site(&before.home);
    let mut o = opts();
    o.preflight = true;
    o.round_trip = Duration::from_millis(100);
    // The link into the target is down (its replicator is dead).
    let sites = FakeSites::new(0);
    sites.links.lock().unwrap().insert(
        before.home.clone(),
        LinkState {
            slot: true,
            active: false,
            last_reply: None,
        },
    );
    let (_tx, abort) = no_abort();
    let err = switch_shard(&store, &sites, &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("preflight failed") && err.contains("nothing streams"),
        "{err}"
    );
    assert_eq!(shard1(&store).await, before);
    // A link that streams but stopped confirming.
    sites.links.lock().unwrap().insert(
        before.home.clone(),
        LinkState {
            slot: true,
            active: true,
            last_reply: Some(Duration::from_secs(60)),
        },
    );
    let (_tx, abort) = no_abort();
    let err = switch_shard(&store, &sites, &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("stuck"), "{err}");
    // A marker that does not come through.
    let sites = FakeSites::new(usize::MAX);
    let (_tx, abort) = no_abort();
    let err = switch_shard(&store, &sites, &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("marker round trip"), "{err}");
    assert_eq!(shard1(&store).await, before);
    assert!(store.read_op("switchover/1").await.unwrap().is_none());
    // All well: every check passes and says so.
    let sites = FakeSites::new(0);
    let t = store.load().await.unwrap().topology;
    let checks = preflight(&sites, &t, 1, &before.home, to, &o).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:?}");
    assert_eq!(
        checks.len(),
        4,
        "one link in, two conflict checks, the round trip"
    );
}

#[tokio::test]
async fn a_catch_up_that_stalls_rolls_back_long_before_the_timeout() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = other_site(&before.home);
    let mut o = opts();
    o.timeout = Duration::from_secs(20);
    o.stall = Duration::from_millis(300);
    let sites = FakeSites::new(usize::MAX);
    let started = std::time::Instant::now();
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap();
    match out {
        Outcome::RolledBack { reason, .. } => {
            assert!(
                reason.contains("no catch-up progress") && reason.contains("up to 0/ABC"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(shard1(&store).await.home, before.home);
}

#[tokio::test]
async fn a_catch_up_that_moves_is_not_a_stall() {
    let (_d, store) = setup().await;
    let before = shard1(&store).await;
    let to = other_site(&before.home);
    let mut o = opts();
    o.timeout = Duration::from_secs(20);
    o.stall = Duration::from_millis(600);
    // The marker arrives after ~1.5 s of polls while the link keeps applying.
    o.poll = Duration::from_millis(10);
    let sites = std::sync::Arc::new(FakeSites::new(150));
    let moving = sites.clone();
    let mover = tokio::spawn(async move {
        for n in 0..40u32 {
            *moving.applied.lock().unwrap() = Some(format!("0/{:X}", 0x1000 + n));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, sites.as_ref(), &mv(&before, to), &o, abort, &quiet)
        .await
        .unwrap();
    mover.abort();
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
}

/// Leaves the record a command that died at `step` would leave (its last
/// mark `age` old), with the topology as that step implies.
async fn abandoned(store: &FileStore, step: Step, age: Duration) -> (Shard, String) {
    let before = shard1(store).await;
    let to = other_site(&before.home).to_string();
    let frozen = Shard {
        state: ShardState::Frozen,
        epoch: before.epoch + 1,
        ..before.clone()
    };
    if step != Step::Start {
        store.cas_shard(before.epoch, &frozen).await.unwrap();
    }
    let mut sw = Switchover::new(1, &before.home, &to, before.epoch);
    sw.step = step;
    let r = Record {
        switchover: sw,
        holder: "dead".into(),
        history: vec![StepMark {
            step: "x".into(),
            at_ms: now_ms() - age.as_millis() as u64,
        }],
        frozen_at_ms: None,
        active_at_ms: None,
        finished: false,
        finished_at_ms: None,
    };
    store
        .write_op("switchover/1", &serde_json::to_vec(&r).unwrap())
        .await
        .unwrap();
    (before, to)
}

#[tokio::test]
async fn an_abandoned_switchover_before_the_flip_is_rolled_back() {
    let (_d, store) = setup().await;
    let (before, _) = abandoned(
        &store,
        Step::CatchingUp {
            marker_lsn: "0/1".into(),
        },
        Duration::from_secs(60),
    )
    .await;
    let sites = FakeSites::new(usize::MAX);
    // Too young to be abandoned: left alone.
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_secs(600), &quiet)
        .await
        .unwrap();
    assert!(out.is_empty());
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_secs(5), &quiet)
        .await
        .unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        matches!(&out[0].1, Outcome::RolledBack { reason, .. } if reason.contains("abandoned at step catching_up")),
        "{out:?}"
    );
    let now = shard1(&store).await;
    assert_eq!(
        (now.home.as_str(), now.state, now.epoch),
        (before.home.as_str(), ShardState::Active, before.epoch + 2)
    );
    assert!(record(&store).await.finished);
    // Nothing left to do.
    let out = recover_abandoned(&store, &sites, &opts(), Duration::ZERO, &quiet)
        .await
        .unwrap();
    assert!(out.is_empty());
}

#[tokio::test]
async fn an_abandoned_switchover_at_the_flip_is_finished() {
    let (_d, store) = setup().await;
    let (before, to) = abandoned(&store, Step::Flipping, Duration::from_secs(60)).await;
    let sites = FakeSites::new(0);
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_secs(5), &quiet)
        .await
        .unwrap();
    assert!(matches!(out[..], [(1, Outcome::Done { .. })]), "{out:?}");
    let now = shard1(&store).await;
    assert_eq!(
        (now.home.as_str(), now.state, now.epoch),
        (to.as_str(), ShardState::Active, before.epoch + 2)
    );
}

#[tokio::test]
async fn an_abandoned_start_changes_only_what_landed() {
    let (_d, store) = setup().await;
    let (before, _) = abandoned(&store, Step::Start, Duration::from_secs(60)).await;
    let sites = FakeSites::new(0);
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_secs(5), &quiet)
        .await
        .unwrap();
    assert!(
        matches!(out[..], [(1, Outcome::RolledBack { .. })]),
        "{out:?}"
    );
    // The freeze never landed: the shard is as it was.
    assert_eq!(shard1(&store).await, before);
}

#[tokio::test]
async fn a_switchover_whose_lock_is_held_is_not_abandoned() {
    let (_d, store) = setup().await;
    abandoned(&store, Step::Fenced, Duration::from_secs(60)).await;
    let held = store
        .lock(&lock_name(1), "the operator", Duration::from_secs(5))
        .await
        .unwrap();
    let out = recover_abandoned(&store, &FakeSites::new(0), &opts(), Duration::ZERO, &quiet)
        .await
        .unwrap();
    assert!(out.is_empty());
    assert!(!record(&store).await.finished);
    held.release().await.unwrap();
}

#[tokio::test]
async fn a_forced_failover_whose_command_died_before_opening_is_opened_by_recovery() {
    let (_d, store) = setup().await;
    with_lease(&store, 1_000, 0).await;
    let before = store.load().await.unwrap().topology;
    // What a command that died after taking the shards leaves.
    let mut taken = Vec::new();
    for s in before.shards.values().filter(|s| s.home == "beijing") {
        let next = Shard {
            id: s.id,
            home: "shanghai".into(),
            state: ShardState::Frozen,
            epoch: s.epoch + 1,
        };
        store
            .cas_shard_as(s.epoch, &next, crate::history::Transition::Forced)
            .await
            .unwrap();
        taken.push((s.id, s.epoch, s.epoch + 1));
    }
    let r = ForcedRecord {
        from: "beijing".into(),
        to: "shanghai".into(),
        at_ms: now_ms(),
        holder: "dead".into(),
        shards: taken.clone(),
        divergence_lsn: None,
        divergence_error: None,
        opens_at_ms: now_ms() + 300,
        opened: false,
        closed_at_ms: None,
        closed_by: None,
    };
    store
        .write_op("forced/beijing", &serde_json::to_vec(&r).unwrap())
        .await
        .unwrap();
    let sites = FakeSites::new(0);
    // Not yet: its time (and the quiet time after it) has not come.
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_millis(200), &quiet)
        .await
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let out = recover_abandoned(&store, &sites, &opts(), Duration::from_millis(200), &quiet)
        .await
        .unwrap();
    assert_eq!(out.len(), taken.len(), "{out:?}");
    let after = store.load().await.unwrap().topology;
    for (id, before, _) in &taken {
        let s = &after.shards[id];
        assert_eq!(
            (s.home.as_str(), s.state, s.epoch),
            ("shanghai", ShardState::Active, before + 2)
        );
    }
    let stored: ForcedRecord =
        serde_json::from_slice(&store.read_op("forced/beijing").await.unwrap().unwrap()).unwrap();
    assert!(stored.opened);
    assert_eq!(stored.divergence_lsn.as_deref(), Some("0/ABC"));
}

#[test]
fn records_written_before_the_newer_fields_still_load() {
    let old = r#"{"switchover":{"shard":3,"from":"beijing","to":"shanghai","epoch":4,"step":{"step":"done"}},
        "holder":"h","history":[{"step":"start","at_ms":1}],"finished":true}"#;
    let r: Record = serde_json::from_str(old).unwrap();
    assert!(r.finished && r.finished_at_ms.is_none());
    let old = r#"{"from":"beijing","to":"shanghai","at_ms":5,"holder":"h","shards":[[1,2,4]],
        "divergence_lsn":"0/1"}"#;
    let f: ForcedRecord = serde_json::from_str(old).unwrap();
    assert!(f.opened && f.closed_at_ms.is_none() && f.closed_by.is_none());
    // An open record is written as before: no closing fields.
    let text = serde_json::to_string(&f).unwrap();
    assert!(!text.contains("closed"), "{text}");
}

/// With a third site, the flip waits until the marker has reached it too:
/// it then has every write the old home accepted before the new home's
/// first write can reach it over the other link.
#[tokio::test]
async fn a_third_site_has_the_old_homes_writes_before_the_flip() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("topology.toml"));
    store
        .init(&starter(&["beijing", "shanghai", "shenzhen"], 1), false)
        .await
        .unwrap();
    let before = shard1(&store).await;
    let from = before.home.clone();
    let to = if from == "shanghai" {
        "beijing"
    } else {
        "shanghai"
    };
    let third = ["beijing", "shanghai", "shenzhen"]
        .into_iter()
        .find(|s| *s != from && *s != to)
        .unwrap();
    // The marker reaches the new home at once, the third site never: the
    // switchover does not flip, and rolls back at its deadline.
    let sites = FakeSites::new(0);
    sites
        .marker_missing_at
        .lock()
        .unwrap()
        .insert(third.to_string());
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    assert!(matches!(out, Outcome::RolledBack { .. }), "{out:?}");
    let after = shard1(&store).await;
    assert_eq!(
        (after.home.as_str(), after.state),
        (from.as_str(), ShardState::Active)
    );
    let asked = sites.marker_asked.lock().unwrap().clone();
    assert!(
        asked.iter().any(|s| s == to) && asked.iter().any(|s| s == third),
        "{asked:?}"
    );
    assert!(!asked.contains(&from), "{asked:?}");
    // Once it arrives there too, the next run flips.
    sites.marker_missing_at.lock().unwrap().clear();
    let before = shard1(&store).await;
    let (_tx, abort) = no_abort();
    let out = switch_shard(&store, &sites, &mv(&before, to), &opts(), abort, &quiet)
        .await
        .unwrap();
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert_eq!(shard1(&store).await.home, to);
}
