//! `apply_workers = "auto"` against real Postgres 15, the target 100 ms
//! away (through the fault proxy), a backlog at the source, judged from the
//! rows at the target and the lanes' own commit counts:
//!
//! - transactions on disjoint rows: the link opens more lanes (lane 1
//!   commits batches), is killed while it has them, restarts (with one lane
//!   again, its other lanes' origins behind its progress) and opens lanes
//!   again, gives them back once the load is a trickle (the target's
//!   connections through the proxy fall to one), and the target ends equal
//!   to the source with nothing applied twice;
//! - every transaction updating one hot row: no batch could ever run beside
//!   another, and the link never opens a second lane.
//!
//! The runtime has two threads: the proxy's pumps must not wait for the
//! link's work (on one thread, its deliveries came whole round trips late
//! once two lanes were busy).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_no_conflicts, items_converge, q, until_within, Running, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_chaos::proxy::{Direction, FaultProxy, LinkHandle, LinkSpec, Toxics};
use ezone_replicator::config::ApplyWorkers;
use ezone_replicator::link::{ensure_source, LinkConfig, LinkStats};

/// Half the round trip between the link and its target.
const ONE_WAY: Duration = Duration::from_millis(50);

/// The target behind a proxy adding [`ONE_WAY`] each way.
async fn far_target(proxy: &FaultProxy, to: &PgCluster) -> LinkHandle {
    let link = proxy
        .add_link(LinkSpec {
            name: "link->target".to_string(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: to.addr(),
            upstream_toxics: Toxics::default(),
            downstream_toxics: Toxics::default(),
        })
        .await
        .expect("proxy");
    for d in [Direction::Upstream, Direction::Downstream] {
        link.set_toxics(
            d,
            Toxics {
                latency: ONE_WAY,
                ..Toxics::default()
            },
        );
    }
    link
}

fn auto_link(from: &PgCluster, to: &PgCluster, target: SocketAddr) -> LinkConfig {
    LinkConfig {
        apply_workers: ApplyWorkers::Auto,
        target_dsn: to.dsn_at(target, DB),
        ..common::beijing_to_shanghai(from, to, &["public.items", "public.hot"])
    }
}

const SCHEMA: &str = "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL); \
     CREATE TABLE hot (id int PRIMARY KEY, n bigint NOT NULL); INSERT INTO hot VALUES (1, 0)";

/// `n` transactions at the source, one committed after the other, from
/// `first`: each inserts its own item and, if `hot`, adds one to the hot
/// row.
async fn write(pg: &PgCluster, first: i64, n: i64, hot: bool) {
    let bump = if hot {
        "UPDATE hot SET n = n + 1 WHERE id = 1;"
    } else {
        ""
    };
    q(
        pg,
        &format!(
            "DO $$ BEGIN FOR i IN {first}..{} LOOP \
             INSERT INTO items VALUES (i, 'v' || i); {bump} COMMIT; END LOOP; END $$",
            first + n - 1
        ),
    )
    .await;
}

/// Two sites with [`SCHEMA`], the target behind the proxy, the link's slot
/// made and a backlog of `n` transactions at the source ([`write`]).
async fn far_link_with_backlog(
    n: i64,
    hot: bool,
) -> (PgCluster, PgCluster, FaultProxy, LinkHandle, LinkConfig) {
    let (a, b) = common::two_sites_with(SCHEMA).await;
    let proxy = FaultProxy::new();
    let target = far_target(&proxy, &b).await;
    let cfg = auto_link(&a, &b, target.listen_addr());
    ensure_source(&cfg).await.expect("source");
    write(&a, 1, n, hot).await;
    (a, b, proxy, target, cfg)
}

/// The most lanes the link had, sampled until `done` answers true.
async fn watch_lanes(stats: &LinkStats, until: impl Fn() -> bool) -> u64 {
    let mut most = 0;
    while !until() {
        most = most.max(stats.lane_count.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most.max(stats.lane_count.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_opens_lanes_for_disjoint_rows_and_stays_exact_through_a_kill() {
    let (a, b, proxy, target, cfg) = far_link_with_backlog(30_000, false).await;

    let stats = Arc::new(LinkStats::default());
    let began = Instant::now();
    let link = Running::start(cfg.clone(), stats.clone());
    // Until lane 1 has committed batches: the link opened a second lane.
    let most = watch_lanes(&stats, || {
        stats.lane(1).batches.load(Ordering::Relaxed) >= 3
    })
    .await;
    eprintln!(
        "a second lane committed after {:.1} s, {most} lanes at most",
        began.elapsed().as_secs_f64()
    );
    assert!(most >= 2, "lanes: {most}");
    // Killed with its lanes open, part of the backlog applied.
    link.kill().await;
    let applied: i64 = q(&b, "SELECT count(*) FROM items")
        .await
        .parse()
        .expect("count");
    assert!(
        applied < 30_000,
        "the backlog was not all applied at the kill: {applied}"
    );

    // More at the source; the link restarts (one lane again) and goes on.
    write(&a, 30_001, 10_000, false).await;
    let lane_1_before = stats.lane(1).batches.load(Ordering::Relaxed);
    let link = Running::start(cfg.clone(), stats.clone());
    items_converge(&a, &b, Duration::from_secs(120)).await;
    assert!(
        stats.lane(1).batches.load(Ordering::Relaxed) > lane_1_before,
        "the restarted link opened a second lane for the rest of the backlog"
    );

    // The backlog is gone; a trickle of single transactions finds a lane
    // free every time, so lanes go back (a lane on trial at once, a kept
    // one after 30 quiet windows): the target sees the link's connection
    // for lane 0 only (counted by the proxy in front of it, whatever the
    // link believes).
    let trickle = {
        let dsn = a.dsn(DB);
        tokio::spawn(async move {
            let (client, conn) = ezone_pg::connect(&dsn).await.expect("connect");
            tokio::spawn(conn);
            loop {
                client
                    .batch_execute("UPDATE hot SET n = n + 1 WHERE id = 1")
                    .await
                    .expect("trickle");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let quiet_from = Instant::now();
    let deadline = quiet_from + Duration::from_secs(150);
    while target.stats().connections_open > 1 {
        assert!(
            Instant::now() < deadline,
            "lanes still open after {:?} of trickle: {} connections at the target",
            quiet_from.elapsed(),
            target.stats().connections_open
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "lanes given back after {:.1} s of trickle",
        quiet_from.elapsed().as_secs_f64()
    );
    trickle.abort();
    assert_eq!(stats.lane_count.load(Ordering::Relaxed), 1);
    link.stop().await;
    eprintln!(
        "40,000 transactions over {:?} each way in {:.1} s",
        ONE_WAY,
        began.elapsed().as_secs_f64()
    );
    assert_no_conflicts(&b).await;
    // Nothing applied twice, nothing missing: every item once, as written.
    until_within(
        &b,
        "SELECT count(*) = 40000 AND count(DISTINCT id) = 40000 AND min(id) = 1 AND max(id) = 40000 \
         AND bool_and(v = 'v' || id) FROM items",
        "t",
        Duration::from_secs(5),
    )
    .await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_keeps_one_lane_when_every_transaction_touches_a_hot_row() {
    let (a, b, proxy, _target, cfg) = far_link_with_backlog(15_000, true).await;

    let stats = Arc::new(LinkStats::default());
    let link = Running::start(cfg, stats.clone());
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (stats, done) = (stats.clone(), done.clone());
        tokio::spawn(async move { watch_lanes(&stats, || done.load(Ordering::Relaxed)).await })
    };
    items_converge(&a, &b, Duration::from_secs(120)).await;
    until_within(&b, "SELECT n FROM hot", "15000", Duration::from_secs(10)).await;
    done.store(true, Ordering::Relaxed);
    let most = watcher.await.expect("watcher");
    link.stop().await;
    assert_eq!(
        most, 1,
        "a second lane was opened for batches that all meet"
    );
    assert_eq!(stats.lane(1).batches.load(Ordering::Relaxed), 0);
    assert!(stats.lane(0).batches.load(Ordering::Relaxed) > 0);
    assert_no_conflicts(&b).await;
    proxy.shutdown().await;
}
