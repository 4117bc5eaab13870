//! Conflict repair against real Postgres 15: a forced failover's tail is
//! produced for real (shanghai owns the shard, beijing writes it anyway, the
//! link records the changes as `foreign_shard`), then resolved row by row
//! with both links running; the repair writes get past beijing's database
//! fence and are not replicated back and forth.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_replicator::apply::Ownership;
use ezone_replicator::config::{origin_name, slot_name};
use ezone_replicator::conflict::{KeyKind, Policy, ShardKey};
use ezone_replicator::fence::{install_schema, install_table_sql, reconcile, FenceKey};
use ezone_replicator::link::{ensure_source, run_with, LinkConfig, LinkStats};
use ezone_replicator::repair::{self, Keep, Outcome, Repairer, SiteClient};
use ezone_replicator::walsender::SourceConfig;
use ezone_topology::Topology;
use tokio::sync::watch;

const DB: &str = "ezone";
const TABLES: &[&str] = &["public.orders", "public.beacon"];
const DDL: &str = "CREATE TABLE orders (id text PRIMARY KEY, city text NOT NULL, note text, \
    amount numeric(12,2), at timestamptz, meta jsonb, tags text[], blob bytea); \
    CREATE TABLE beacon (id int PRIMARY KEY, site text NOT NULL)";

fn link(from: &PgCluster, from_site: &str, to: &PgCluster, to_site: &str) -> LinkConfig {
    LinkConfig {
        name: format!("{from_site}->{to_site}"),
        source: SourceConfig::from_dsn(&from.dsn(DB)).expect("dsn"),
        source_dsn: from.dsn(DB),
        target_dsn: to.dsn(DB),
        publication: "ezone_pub".into(),
        slot: slot_name(to_site),
        origin: origin_name(from_site),
        tables: TABLES.iter().map(|t| t.to_string()).collect(),
    }
}

fn ownership(source: &str, target: &str, t: Arc<Topology>) -> Ownership {
    Ownership {
        source_site: source.into(),
        target_site: target.into(),
        policy: Policy::OwnerWins,
        shard_keys: [(
            "public.orders".to_string(),
            ShardKey {
                column: "city".into(),
                kind: KeyKind::City,
            },
        )]
        .into_iter()
        .collect(),
        topology: Some(Arc::new(move || Some(t.clone()))),
    }
}

async fn q(pg: &PgCluster, sql: &str) -> String {
    pg.psql_db(DB, sql).await.expect("psql").trim().to_string()
}

async fn until(pg: &PgCluster, sql: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = q(pg, sql).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(pg: &PgCluster) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.dsn(DB), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

async fn sites(a: &PgCluster, b: &PgCluster) -> Vec<SiteClient> {
    vec![
        SiteClient {
            site: "shanghai".into(),
            client: connect(b).await,
        },
        SiteClient {
            site: "beijing".into(),
            client: connect(a).await,
        },
    ]
}

/// The whole row in Postgres's own text form.
async fn row(pg: &PgCluster, id: &str) -> String {
    q(
        pg,
        &format!("SELECT o::text FROM orders o WHERE id = '{id}'"),
    )
    .await
}

#[tokio::test]
async fn a_forced_failover_tail_is_repaired_row_by_row() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(pg, DDL).await;
    }
    // Beijing's deletes carry the whole old row (so they are checked for
    // ownership like any change).
    q(&a, "ALTER TABLE orders REPLICA IDENTITY FULL").await;
    // City 021 -> shard 2, homed at shanghai: the survivor owns it now.
    let topology = Arc::new(ezone_topology::starter::starter(
        &["beijing", "shanghai"],
        2,
    ));
    let a_to_b = link(&a, "beijing", &b, "shanghai");
    let b_to_a = link(&b, "shanghai", &a, "beijing");
    ensure_source(&a_to_b).await.expect("source beijing");
    ensure_source(&b_to_a).await.expect("source shanghai");
    let (stop_tx, stop) = watch::channel(false);
    let ab_stats = Arc::new(LinkStats::default());
    let ba_stats = Arc::new(LinkStats::default());
    let ab = tokio::spawn(run_with(
        a_to_b,
        ownership("beijing", "shanghai", topology.clone()),
        ab_stats.clone(),
        stop.clone(),
    ));
    let ba = tokio::spawn(run_with(
        b_to_a,
        ownership("shanghai", "beijing", topology.clone()),
        ba_stats.clone(),
        stop,
    ));

    // The survivor's rows, replicated to beijing as usual.
    q(
        &b,
        "INSERT INTO orders VALUES \
         ('o-1', '021', 'survivor o-1', 10.00, '2026-01-01 10:00:00+00', '{\"v\": 1}', '{a}', '\\x01'), \
         ('o-3', '021', 'survivor o-3', 30.00, '2026-01-01 10:00:00+00', '{\"v\": 1}', '{a}', '\\x03')",
    )
    .await;
    until(&a, "SELECT count(*) FROM orders", "2").await;
    // Beijing's tail: written where the shard is not homed, so it reaches
    // shanghai as conflicts, recorded and not applied.
    q(
        &a,
        "UPDATE orders SET note = 'returning o-1', amount = 11.50 WHERE id = 'o-1'",
    )
    .await;
    q(
        &a,
        "INSERT INTO orders VALUES ('o-2', '021', 'returning o-2', 20.00, NULL, NULL, NULL, NULL)",
    )
    .await;
    q(
        &a,
        "UPDATE orders SET note = 'returning o-3', amount = 12345.67, \
         at = '2026-11-25 13:01:02.123456+08', meta = '{\"a\": [1, 2, {\"b\": null}], \"u\": \"用户\"}', \
         tags = '{x,NULL,\"y z\"}', blob = '\\x00ff10' WHERE id = 'o-3'",
    )
    .await;
    until(
        &b,
        "SELECT string_agg(kind || ':' || (remote_row->>'id'), ',' ORDER BY id) FROM ezone_replication.conflicts",
        "foreign_shard:o-1,foreign_shard:o-2,foreign_shard:o-3",
    )
    .await;
    let survivor_o1 = row(&b, "o-1").await;
    let returning_o3 = row(&a, "o-3").await;
    assert!(survivor_o1.contains("survivor o-1"), "{survivor_o1}");
    assert!(returning_o3.contains("用户"), "{returning_o3}");
    assert_eq!(row(&b, "o-2").await, "");

    // Beijing comes back fenced: it refuses writes for shanghai's shard.
    {
        let mut c = connect(&a).await;
        install_schema(&c, "beijing").await.expect("fence schema");
        c.batch_execute(&install_table_sql("public.orders", "city", FenceKey::City))
            .await
            .expect("fence trigger");
        reconcile(&mut c, "beijing", &topology, "beijing")
            .await
            .expect("reconcile");
        let refused = c
            .execute("UPDATE orders SET note = 'x' WHERE id = 'o-1'", &[])
            .await
            .expect_err("fenced");
        assert_eq!(refused.code().map(|c| c.code()), Some("EZ001"));
    }

    // list: the three at shanghai, none at beijing.
    let b_client = connect(&b).await;
    let listed = repair::list(&b_client, "shanghai", false)
        .await
        .expect("list");
    assert_eq!(listed.len(), 3);
    let id_of = |key: &str| {
        listed
            .iter()
            .find(|c| c.remote_row.as_ref().and_then(|r| r["id"].as_str()) == Some(key))
            .map(|c| c.id)
            .expect("listed")
    };
    let (c1, c2, c3) = (id_of("o-1"), id_of("o-2"), id_of("o-3"));
    let first = &listed[0];
    assert_eq!(first.site, "shanghai");
    assert_eq!(first.link, "beijing->shanghai");
    assert_eq!(first.returning_site().expect("link"), "beijing");
    assert!(!first.resolved);
    // The diff shows what beijing changed, and only that.
    let d = repair::diff(
        first.remote_row.as_ref().expect("remote"),
        first.local_row.as_ref().expect("local"),
    );
    let cols: Vec<&str> = d.iter().map(|c| c.column.as_str()).collect();
    assert_eq!(cols, ["amount", "note"], "{d:?}");
    let a_client = connect(&a).await;
    assert!(repair::list(&a_client, "beijing", true)
        .await
        .expect("list")
        .is_empty());

    // A dry run changes nothing.
    let mut dry = Repairer::open(sites(&a, &b).await, true)
        .await
        .expect("open");
    let out = dry
        .resolve("shanghai", c1, Keep::Survivor)
        .await
        .expect("dry");
    assert_eq!(
        out.to_string(),
        format!("conflict {c1} public.orders id=o-1: would keep survivor at shanghai, beijing")
    );
    dry.close().await;
    assert!(row(&a, "o-1").await.contains("returning o-1"));
    assert_eq!(
        repair::list(&b_client, "shanghai", false)
            .await
            .expect("list")
            .len(),
        3
    );

    let ab_skipped = ab_stats.skipped_origin_txns.load(Ordering::Relaxed);
    let ba_skipped = ba_stats.skipped_origin_txns.load(Ordering::Relaxed);
    let mut r = Repairer::open(sites(&a, &b).await, false)
        .await
        .expect("open");
    // Survivor: beijing takes shanghai's row...
    let out = r
        .resolve("shanghai", c1, Keep::Survivor)
        .await
        .expect("o-1");
    assert_eq!(
        out.to_string(),
        format!("conflict {c1} public.orders id=o-1: kept survivor at shanghai, beijing")
    );
    // ...and a row shanghai does not have is deleted at beijing.
    let out = r
        .resolve("shanghai", c2, Keep::Survivor)
        .await
        .expect("o-2");
    assert!(
        matches!(out, Outcome::Resolved { deleted: true, .. }),
        "{out}"
    );
    // Returning: both take beijing's version, every type intact.
    let out = r
        .resolve("shanghai", c3, Keep::Returning)
        .await
        .expect("o-3");
    assert_eq!(
        out.to_string(),
        format!("conflict {c3} public.orders id=o-3: took returning at shanghai, beijing")
    );
    // Idempotent: resolved is resolved, whatever is asked the second time.
    for (id, keep) in [(c1, Keep::Survivor), (c3, Keep::Survivor)] {
        let again = r.resolve("shanghai", id, keep).await.expect("again");
        assert!(matches!(again, Outcome::AlreadyResolved { .. }), "{again}");
        assert!(again.to_string().contains("already resolved"), "{again}");
    }
    let missing = r
        .resolve("shanghai", 999, Keep::Survivor)
        .await
        .expect_err("no such conflict");
    assert!(
        missing.to_string().contains("conflict 999 does not exist"),
        "{missing}"
    );
    r.close().await;

    let check = |what: &'static str| {
        let (a, b) = (&a, &b);
        let (survivor_o1, returning_o3) = (survivor_o1.clone(), returning_o3.clone());
        async move {
            for (site, pg) in [("beijing", a), ("shanghai", b)] {
                assert_eq!(row(pg, "o-1").await, survivor_o1, "{what}: o-1 at {site}");
                assert_eq!(row(pg, "o-2").await, "", "{what}: o-2 at {site}");
                assert_eq!(row(pg, "o-3").await, returning_o3, "{what}: o-3 at {site}");
            }
        }
    };
    check("after the repair").await;
    assert_eq!(
        q(&b, "SELECT string_agg(id || ':' || resolved || ':' || resolution, ',' ORDER BY id) FROM ezone_replication.conflicts").await,
        format!(
            "{c1}:true:kept survivor by operator,{c2}:true:kept survivor by operator,{c3}:true:took returning by operator"
        )
    );
    assert!(repair::list(&b_client, "shanghai", false)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        repair::list(&b_client, "shanghai", true)
            .await
            .expect("list")
            .len(),
        3
    );

    // Nothing was replicated because of the repair: once a beacon written
    // after it has crossed each link, both links have seen the repair's
    // transactions, and skipped them (they carry the repair origin).
    q(&a, "INSERT INTO beacon VALUES (1, 'beijing')").await;
    q(&b, "INSERT INTO beacon VALUES (2, 'shanghai')").await;
    until(&a, "SELECT count(*) FROM beacon", "2").await;
    until(&b, "SELECT count(*) FROM beacon", "2").await;
    assert_eq!(
        q(&b, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "3"
    );
    assert_eq!(
        q(&a, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0"
    );
    check("after both links caught up").await;
    // Three repair transactions at beijing (o-1, o-2, o-3), one at shanghai (o-3).
    assert!(ab_stats.skipped_origin_txns.load(Ordering::Relaxed) >= ab_skipped + 3);
    assert!(ba_stats.skipped_origin_txns.load(Ordering::Relaxed) > ba_skipped);

    let _ = stop_tx.send(true);
    ab.await.expect("join").expect("clean stop");
    ba.await.expect("join").expect("clean stop");
}
