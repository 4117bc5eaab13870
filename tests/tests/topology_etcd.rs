//! The topology against real etcd: watch, refusal of invalid changes, CAS with
//! a stale epoch, the operator lock (excludes, and is released when its holder
//! dies), and a watcher that survives member deaths and a full etcd restart
//! without missing a change.

use std::sync::atomic::Ordering;
use std::time::Duration;

use ezone_chaos::etcd::EtcdCluster;
use ezone_tests::{eventually, ezone_bin};
use ezone_topology::starter::starter;
use ezone_topology::{
    AnyStore, EtcdStore, Shard, ShardState, StoreError, Topology, TopologyStore, Watcher,
};

const WAIT: Duration = Duration::from_secs(20);

async fn seeded(cluster: &EtcdCluster, prefix: &str) -> (EtcdStore, Topology) {
    let store = EtcdStore::connect(&cluster.client_urls(), prefix)
        .await
        .expect("connect");
    let t = starter(&["beijing", "shanghai"], 2);
    store.init(&t, false).await.expect("init");
    (store, t)
}

fn flipped(s: &Shard, home: &str) -> Shard {
    Shard {
        id: s.id,
        home: home.to_string(),
        state: ShardState::Active,
        epoch: s.epoch + 1,
    }
}

#[tokio::test]
async fn a_change_reaches_the_watcher_and_invalid_ones_are_refused() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let (store, t) = seeded(&etcd, "/ezone").await;
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    let first = watcher
        .wait_for_version(1, WAIT)
        .await
        .expect("first snapshot");
    assert_eq!(*first.topology, t);

    // A valid change: shard 1 frozen, epoch 2, by CAS.
    let mut s1 = t.shards[&1].clone();
    s1.state = ShardState::Frozen;
    s1.epoch = 2;
    let v = store.cas_shard(1, &s1).await.expect("cas");
    let snap = watcher
        .wait_for_version(v, WAIT)
        .await
        .expect("change seen");
    assert_eq!(snap.version, v);
    assert_eq!(snap.topology.shards[&1], s1);

    // Invalid: a home that is not a site. Refused, last good kept.
    let bad = serde_json::json!({"id": 1, "home": "guangzhou", "state": "active", "epoch": 3});
    store
        .put_raw("/ezone/shards/1", bad.to_string().as_bytes())
        .await
        .expect("put");
    eventually("the refusal to be counted", WAIT, || async {
        (watcher.stats().refused.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    assert_eq!(watcher.current().expect("current").version, v);
    let reason = watcher.last_refusal().expect("a reason");
    assert!(reason.contains("guangzhou"), "{reason}");

    // Invalid: the epoch going backwards. Also refused.
    let back = serde_json::json!({"id": 1, "home": "beijing", "state": "active", "epoch": 1});
    store
        .put_raw("/ezone/shards/1", back.to_string().as_bytes())
        .await
        .expect("put");
    eventually("the second refusal", WAIT, || async {
        (watcher.stats().refused.load(Ordering::Relaxed) == 2).then_some(())
    })
    .await;
    let reason = watcher.last_refusal().expect("a reason");
    assert!(reason.contains("backwards"), "{reason}");
    assert_eq!(watcher.current().expect("current").topology.shards[&1], s1);

    // Garbage bytes: refused with the key named.
    store
        .put_raw("/ezone/shards/2", b"{nonsense")
        .await
        .expect("put");
    eventually("the third refusal", WAIT, || async {
        (watcher.stats().refused.load(Ordering::Relaxed) == 3).then_some(())
    })
    .await;
    assert!(watcher
        .last_refusal()
        .unwrap_or_default()
        .contains("/ezone/shards/2"));

    // Repair both keys with valid values: accepted again.
    let good1 = serde_json::json!({"id": 1, "home": "shanghai", "state": "active", "epoch": 4});
    store
        .put_raw("/ezone/shards/1", good1.to_string().as_bytes())
        .await
        .expect("put");
    let good2 = serde_json::to_vec(&t.shards[&2]).expect("json");
    let v = store.put_raw("/ezone/shards/2", &good2).await.expect("put");
    let snap = watcher.wait_for_version(v, WAIT).await.expect("repaired");
    assert_eq!(snap.topology.shards[&1].home, "shanghai");
    assert_eq!(snap.topology.shards[&1].epoch, 4);
}

#[tokio::test]
async fn every_epoch_has_its_history_entry_and_a_lost_race_writes_none() {
    use ezone_topology::history::{self, Tenure, Transition};
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let (store, t) = seeded(&etcd, "/hist").await;
    let s2 = t.shards[&2].clone();
    let h = history::read(&store, 2).await.expect("history");
    assert_eq!(h.entries().len(), 1, "{h:?}");
    assert_eq!(h.entries()[0].how, Transition::Init);
    assert_eq!(h.home_at(s2.epoch), Some(s2.home.as_str()));
    let to = if s2.home == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    store
        .cas_shard_as(s2.epoch, &flipped(&s2, to), Transition::Forced)
        .await
        .expect("cas");
    // A swap that loses (stale epoch) leaves no entry behind.
    store
        .cas_shard_as(s2.epoch, &flipped(&s2, &s2.home), Transition::Flip)
        .await
        .expect_err("stale");
    let h = history::read(&store, 2).await.expect("history");
    assert_eq!(h.entries().len(), 2, "{h:?}");
    assert_eq!(h.home_at(s2.epoch + 1), Some(to));
    assert_eq!(
        h.tenure(&s2.home, s2.epoch),
        Tenure::Ended {
            epoch: s2.epoch + 1,
            to: to.to_string(),
            how: Transition::Forced
        }
    );
    // A forced re-init keeps the entries of the epochs it does not change.
    let now = store.load().await.expect("load").topology;
    store.init(&now, true).await.expect("re-init");
    let again = history::read(&store, 2).await.expect("history");
    assert_eq!(again, h);
    // The history is not part of the topology: loading still validates.
    assert_eq!(*store.load().await.expect("load").topology, *now);
}

#[tokio::test]
async fn cas_with_a_stale_epoch_fails_and_says_why() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let (store, t) = seeded(&etcd, "/cas").await;
    let s2 = t.shards[&2].clone();
    store
        .cas_shard(1, &flipped(&s2, "beijing"))
        .await
        .expect("first cas");
    let err = store
        .cas_shard(1, &flipped(&s2, "beijing"))
        .await
        .expect_err("stale");
    match &err {
        StoreError::StaleEpoch {
            shard,
            expected,
            found,
            ..
        } => assert_eq!((*shard, *expected, *found), (2, 1, 2)),
        other => panic!("expected StaleEpoch, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("shard 2") && msg.contains("expected epoch 1"),
        "{msg}"
    );

    // Unknown site as the new home: refused before anything is written.
    let err = store
        .cas_shard(2, &flipped(&flipped(&s2, "x"), "nowhere"))
        .await
        .expect_err("invalid");
    assert!(err.to_string().contains("nowhere"), "{err}");

    // Two operators racing on the same epoch: exactly one wins.
    let a = store.clone();
    let b = store.clone();
    let cur = store.load().await.expect("load").topology.shards[&2].clone();
    let (to_sh, to_bj) = (flipped(&cur, "shanghai"), flipped(&cur, "beijing"));
    let (ra, rb) = tokio::join!(
        a.cas_shard(cur.epoch, &to_sh),
        b.cas_shard(cur.epoch, &to_bj)
    );
    assert!(
        ra.is_ok() ^ rb.is_ok(),
        "exactly one CAS must win: {ra:?} {rb:?}"
    );

    // init refuses to overwrite.
    let err = store.init(&t, false).await.expect_err("overwrite");
    assert!(
        matches!(err, StoreError::AlreadyInitialized { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn the_lock_excludes_a_second_holder_and_dies_with_its_holder() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let (store, _) = seeded(&etcd, "/ezone").await;

    // In-process: a second holder is refused, release lets it in.
    let g = store
        .lock("shard-1", "alice", Duration::from_secs(5))
        .await
        .expect("lock");
    let err = store
        .lock("shard-1", "bob", Duration::from_secs(5))
        .await
        .expect_err("held");
    assert!(err.to_string().contains("alice"), "{err}");
    g.release().await.expect("release");
    store
        .lock("shard-1", "bob", Duration::from_secs(5))
        .await
        .expect("free again")
        .release()
        .await
        .expect("release");

    // A real holder process killed with -9: the lease expires, the lock frees.
    let mut holder = std::process::Command::new(ezone_bin())
        .args([
            "topo", "lock", "shard-7", "--ttl", "2s", "--holder", "carol",
        ])
        .arg("--etcd")
        .arg(etcd.client_urls().join(","))
        .args(["--", "sleep", "60"])
        .process_group(0)
        .spawn()
        .expect("spawn ezone topo lock");
    let pgid = holder.id();
    // Watch the lock key itself: taking the lock to probe it could make
    // carol's one attempt fail while the probe holds it.
    let etcd_client = etcd_client::Client::connect(etcd.client_urls(), None)
        .await
        .expect("etcd client");
    eventually("carol to hold the lock", WAIT, || {
        let mut c = etcd_client.clone();
        async move {
            let r = c.get("/ezone/locks/shard-7", None).await.ok()?;
            let kv = r.kvs().first()?;
            String::from_utf8_lossy(kv.value())
                .contains("carol")
                .then_some(())
        }
    })
    .await;
    assert!(matches!(
        store.lock("shard-7", "dave", Duration::from_secs(5)).await,
        Err(StoreError::Locked { holder, .. }) if holder.contains("carol")
    ));
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the holder");
    let _ = holder.wait();
    let g = eventually("the lease to expire", WAIT, || async {
        store
            .lock("shard-7", "dave", Duration::from_secs(5))
            .await
            .ok()
    })
    .await;
    g.release().await.expect("release");
}

use std::os::unix::process::CommandExt;

/// Counts accepted snapshots: every change must be published (none skipped).
async fn flip_and_wait(store: &EtcdStore, watcher: &Watcher, shard: u32, home: &str) -> i64 {
    let cur = eventually("a load", WAIT, || async { store.load().await.ok() })
        .await
        .topology
        .shards[&shard]
        .clone();
    let v = eventually("a CAS to go through", WAIT, || async {
        store.cas_shard(cur.epoch, &flipped(&cur, home)).await.ok()
    })
    .await;
    watcher
        .wait_for_version(v, WAIT)
        .await
        .unwrap_or_else(|| panic!("watcher did not see version {v}"));
    v
}

#[tokio::test]
async fn the_watcher_survives_member_deaths_and_a_full_restart() {
    let etcd = EtcdCluster::start(3).await.expect("etcd");
    let (store, _) = seeded(&etcd, "/ezone").await;
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    watcher.wait_for_version(1, WAIT).await.expect("first");
    let accepted = |w: &Watcher| w.stats().accepted.load(Ordering::Relaxed);
    let mut expected_accepted = accepted(&watcher);
    assert_eq!(expected_accepted, 1);

    // Kill each member in turn (so whichever one the watcher talks to dies),
    // writing changes while it is down; then bring it back.
    for i in 0..3 {
        etcd.members()[i].kill().expect("kill");
        for home in ["shanghai", "beijing"] {
            flip_and_wait(&store, &watcher, 1, home).await;
            expected_accepted += 1;
        }
        etcd.restart_member(i).await.expect("restart member");
    }
    assert_eq!(accepted(&watcher), expected_accepted, "a change was missed");
    let reconnects = watcher.stats().reconnects.load(Ordering::Relaxed);
    assert!(
        reconnects >= 1,
        "the member the watcher talked to died, so it must have reconnected"
    );

    // A full restart: the watcher keeps the last good snapshot meanwhile, its
    // age grows, and it follows changes made after etcd comes back.
    let before = watcher.current().expect("current");
    etcd.kill().expect("kill all");
    eventually("the age to grow past 2 s", WAIT, || async {
        watcher.age().filter(|a| *a > Duration::from_secs(2))
    })
    .await;
    assert_eq!(watcher.current().expect("still serving"), before);
    etcd.restart().await.expect("restart all");
    let v = flip_and_wait(&store, &watcher, 2, "beijing").await;
    expected_accepted += 1;
    assert_eq!(accepted(&watcher), expected_accepted, "a change was missed");
    assert!(watcher.current().expect("current").version >= v);
    assert!(watcher.stats().reconnects.load(Ordering::Relaxed) > reconnects);
    eventually("the age to drop once etcd is back", WAIT, || async {
        watcher.age().filter(|a| *a < Duration::from_secs(2))
    })
    .await;
}

/// The watcher is cut off from etcd (a partition through the fault proxy)
/// while changes are made and the history is compacted past its revision:
/// on heal it cannot resume, so it reloads the whole prefix and serves the
/// latest state.
#[tokio::test]
async fn the_watcher_reloads_after_compaction() {
    use ezone_chaos::proxy::{FaultProxy, LinkSpec, Toxics};
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let (direct, _) = seeded(&etcd, "/ezone").await;
    let upstream = etcd.client_urls()[0]
        .trim_start_matches("http://")
        .parse()
        .expect("etcd address");
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(LinkSpec {
            name: "watcher->etcd".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            upstream,
            upstream_toxics: Toxics::default(),
            downstream_toxics: Toxics::default(),
        })
        .await
        .expect("link");
    let via_proxy = EtcdStore::connect(&[format!("http://{}", link.listen_addr())], "/ezone")
        .await
        .expect("connect via proxy");
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(via_proxy)));
    watcher.wait_for_version(1, WAIT).await.expect("first");
    let reloads = watcher.stats().reloads.load(Ordering::Relaxed);

    link.partition();
    let mut last = 0;
    for home in ["shanghai", "beijing", "shanghai"] {
        let cur = direct.load().await.expect("load").topology.shards[&1].clone();
        last = direct
            .cas_shard(cur.epoch, &flipped(&cur, home))
            .await
            .expect("cas");
    }
    direct.client().compact(last, None).await.expect("compact");
    // Make sure the old stream is gone, then heal.
    link.reset();
    link.heal();

    let snap = watcher.wait_for_version(last, WAIT).await.expect("latest");
    assert_eq!(snap.topology.shards[&1].home, "shanghai");
    assert_eq!(snap.topology.shards[&1].epoch, 4);
    assert!(
        watcher.stats().reloads.load(Ordering::Relaxed) > reloads,
        "a compacted revision must cause a full reload"
    );
}

/// With three members and one of them dead or hung, every request still
/// succeeds: a fresh client (a command run by an operator) and one that
/// was connected before the member went are both served by the others.
#[tokio::test]
async fn one_member_down_or_hung_fails_no_request() {
    let etcd = EtcdCluster::start(3).await.expect("etcd");
    let (before, _) = seeded(&etcd, "/ezone").await;
    before.load().await.expect("load with every member up");
    for (what, stop) in [("killed", true), ("paused", false)] {
        let member = &etcd.members()[1];
        if stop {
            member.kill().expect("kill");
        } else {
            member.pause().expect("pause");
        }
        for i in 0..10 {
            let fresh = EtcdStore::connect(&etcd.client_urls(), "/ezone")
                .await
                .expect("connect");
            fresh
                .load()
                .await
                .unwrap_or_else(|e| panic!("{what}: fresh client, request {i}: {e}"));
            before
                .load()
                .await
                .unwrap_or_else(|e| panic!("{what}: old client, request {i}: {e}"));
        }
        if stop {
            etcd.restart_member(1).await.expect("restart");
        } else {
            member.resume().expect("resume");
        }
        etcd.wait_healthy(WAIT).await.expect("healthy again");
    }
}
