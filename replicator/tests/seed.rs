//! Seeding: a new, empty site gets a consistent copy from the slot's exported
//! snapshot, then streams from exactly that point — with writes going on at
//! the source the whole time, nothing is missed and nothing is doubled.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{q, until, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::link::{ensure_source, run, LinkConfig, LinkStats};
use ezone_replicator::walsender::SourceConfig;
use tokio::sync::watch;

fn link(from: &PgCluster, to: &PgCluster) -> LinkConfig {
    LinkConfig {
        name: "beijing->guangzhou".into(),
        source: SourceConfig::from_dsn(&from.dsn(DB)).expect("dsn"),
        source_dsn: from.dsn(DB),
        target_dsn: to.dsn(DB),
        publication: "ezone_pub".into(),
        slot: "ezone_to_guangzhou".into(),
        origin: "ezone_from_beijing".into(),
        apply_workers: ezone_replicator::config::defaults::APPLY_WORKERS,
        large_transaction_bytes: ezone_replicator::config::defaults::LARGE_TRANSACTION_BYTES,
        streaming: None,
        tables: vec!["public.orders".into()],
    }
}

async fn checksum(pg: &PgCluster) -> String {
    q(
        pg,
        "SELECT count(*) || ':' || md5(string_agg(o::text, ',' ORDER BY id)) FROM orders o",
    )
    .await
}

#[tokio::test]
async fn a_new_site_is_seeded_then_streams_from_exactly_that_point() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let g = PgCluster::start("guangzhou").await.expect("pg");
    for pg in [&a, &g] {
        q(
            pg,
            "CREATE TABLE orders (id bigint PRIMARY KEY, note text, big text)",
        )
        .await;
    }
    q(&a, "INSERT INTO orders SELECT i, 'old ' || i, CASE WHEN i % 100 = 0 THEN repeat(md5(i::text), 1000) END FROM generate_series(1, 5000) i").await;
    // Writes continue during the seed.
    let dsn = a.dsn(DB);
    let writer = tokio::spawn(async move {
        let (c, conn) = ezone_pg::connect(&dsn).await.expect("connect");
        tokio::spawn(conn);
        for i in 5001..5300i64 {
            c.execute("INSERT INTO orders VALUES ($1, 'new', NULL)", &[&i])
                .await
                .expect("insert");
            c.execute(
                "UPDATE orders SET note = 'touched' WHERE id = $1",
                &[&(i - 5000)],
            )
            .await
            .expect("update");
        }
    });
    let cfg = link(&a, &g);
    ensure_source(&cfg).await.expect("slot, snapshot and seed");
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg.clone(), Arc::new(LinkStats::default()), stop));
    writer.await.expect("writer");
    let want = checksum(&a).await;
    assert!(want.starts_with("5299:"), "{want}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = checksum(&g).await;
        if got == want {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{got} vs {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        q(&g, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_site_that_already_has_data_is_not_seeded() {
    // As when a new site's link back to an old one starts: the old site
    // already holds everything, so nothing is copied into it.
    let a = PgCluster::start("beijing").await.expect("pg");
    let g = PgCluster::start("guangzhou").await.expect("pg");
    for pg in [&a, &g] {
        q(
            pg,
            "CREATE TABLE orders (id bigint PRIMARY KEY, note text, big text)",
        )
        .await;
    }
    q(&a, "INSERT INTO orders VALUES (1, 'a', NULL)").await;
    q(&g, "INSERT INTO orders VALUES (1, 'a', NULL)").await;
    let cfg = link(&a, &g);
    ensure_source(&cfg).await.expect("slot");
    assert_eq!(
        q(&g, "SELECT count(*) FROM orders").await,
        "1",
        "nothing copied"
    );
    // Streaming works from the slot's start.
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, Arc::new(LinkStats::default()), stop));
    q(&a, "INSERT INTO orders VALUES (2, 'b', NULL)").await;
    // Streaming goes on after a skipped seed.
    until(&g, "SELECT count(*) FROM orders", "2").await;
    assert_eq!(
        q(&g, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}
