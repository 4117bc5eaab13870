//! Conflict repair against real Postgres 15: a forced failover's tail is
//! produced for real (shanghai owns the shard, beijing writes it anyway, the
//! link records the changes as `foreign_shard`), then resolved row by row
//! with both links running; the repair writes get past beijing's database
//! fence and are not replicated back and forth.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{q, until, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::apply::{Applier, Ownership};
use ezone_replicator::config::{origin_name, slot_name};
use ezone_replicator::conflict::{KeyKind, Policy, ShardKey};
use ezone_replicator::fence::{install_schema, install_table_sql, reconcile, FenceKey};
use ezone_replicator::link::{ensure_source, run_with, LinkConfig, LinkStats};
use ezone_replicator::repair::{self, Keep, Outcome, Repairer, SiteClient};
use ezone_replicator::walsender::SourceConfig;
use ezone_topology::Topology;
use tokio::sync::watch;

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
        apply_workers: ezone_replicator::config::defaults::APPLY_WORKERS,
        large_transaction_bytes: ezone_replicator::config::defaults::LARGE_TRANSACTION_BYTES,
        streaming: None,
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
        ..Ownership::default()
    }
}

async fn connect(pg: &PgCluster) -> tokio_postgres::Client {
    let (client, conn) = ezone_pg::connect(&pg.dsn(DB)).await.expect("connect");
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

/// Beijing and shanghai with the test schema, beijing's deletes carrying
/// the whole old row (REPLICA IDENTITY FULL: so they are checked for
/// ownership like any change, and look like an insert's image), and both
/// links running with ownership checks. City 021 is shard 2, homed at
/// shanghai: the survivor owns it.
struct Linked {
    a: PgCluster,
    b: PgCluster,
    ab_stats: Arc<LinkStats>,
    ba_stats: Arc<LinkStats>,
    topology: Arc<Topology>,
    stop: watch::Sender<bool>,
    links: Vec<tokio::task::JoinHandle<Result<(), ezone_replicator::link::LinkError>>>,
}

impl Linked {
    async fn start() -> Linked {
        let a = PgCluster::start("beijing").await.expect("pg");
        let b = PgCluster::start("shanghai").await.expect("pg");
        for pg in [&a, &b] {
            q(pg, DDL).await;
        }
        q(&a, "ALTER TABLE orders REPLICA IDENTITY FULL").await;
        let topology = Arc::new(ezone_topology::starter::starter(
            &["beijing", "shanghai"],
            2,
        ));
        let a_to_b = link(&a, "beijing", &b, "shanghai");
        let b_to_a = link(&b, "shanghai", &a, "beijing");
        ensure_source(&a_to_b).await.expect("source beijing");
        ensure_source(&b_to_a).await.expect("source shanghai");
        let (stop, stopped) = watch::channel(false);
        let ab_stats = Arc::new(LinkStats::default());
        let ba_stats = Arc::new(LinkStats::default());
        let links = vec![
            tokio::spawn(run_with(
                a_to_b,
                ownership("beijing", "shanghai", topology.clone()),
                ab_stats.clone(),
                stopped.clone(),
            )),
            tokio::spawn(run_with(
                b_to_a,
                ownership("shanghai", "beijing", topology.clone()),
                ba_stats.clone(),
                stopped,
            )),
        ];
        Linked {
            a,
            b,
            ab_stats,
            ba_stats,
            topology,
            stop,
            links,
        }
    }

    /// Stops both links; each must end cleanly.
    async fn stop(self) {
        let _ = self.stop.send(true);
        for l in self.links {
            l.await.expect("join").expect("clean stop");
        }
    }
}

#[tokio::test]
async fn a_forced_failover_tail_is_repaired_row_by_row() {
    let linked = Linked::start().await;
    let (a, b) = (&linked.a, &linked.b);
    let (ab_stats, ba_stats) = (linked.ab_stats.clone(), linked.ba_stats.clone());
    let topology = linked.topology.clone();

    // The survivor's rows, replicated to beijing as usual.
    q(
        b,
        "INSERT INTO orders VALUES \
         ('o-1', '021', 'survivor o-1', 10.00, '2026-01-01 10:00:00+00', '{\"v\": 1}', '{a}', '\\x01'), \
         ('o-3', '021', 'survivor o-3', 30.00, '2026-01-01 10:00:00+00', '{\"v\": 1}', '{a}', '\\x03')",
    )
    .await;
    until(a, "SELECT count(*) FROM orders", "2").await;
    // Beijing's tail: written where the shard is not homed, so it reaches
    // shanghai as conflicts, recorded and not applied.
    q(
        a,
        "UPDATE orders SET note = 'returning o-1', amount = 11.50 WHERE id = 'o-1'",
    )
    .await;
    q(
        a,
        "INSERT INTO orders VALUES ('o-2', '021', 'returning o-2', 20.00, NULL, NULL, NULL, NULL)",
    )
    .await;
    q(
        a,
        "UPDATE orders SET note = 'returning o-3', amount = 12345.67, \
         at = '2026-11-25 13:01:02.123456+08', meta = '{\"a\": [1, 2, {\"b\": null}], \"u\": \"用户\"}', \
         tags = '{x,NULL,\"y z\"}', blob = '\\x00ff10' WHERE id = 'o-3'",
    )
    .await;
    until(
        b,
        "SELECT string_agg(kind || ':' || op || ':' || (remote_row->>'id'), ',' ORDER BY id) FROM ezone_replication.conflicts",
        "foreign_shard:update:o-1,foreign_shard:insert:o-2,foreign_shard:update:o-3",
    )
    .await;
    let survivor_o1 = row(b, "o-1").await;
    let returning_o3 = row(a, "o-3").await;
    assert!(survivor_o1.contains("survivor o-1"), "{survivor_o1}");
    assert!(returning_o3.contains("用户"), "{returning_o3}");
    assert_eq!(row(b, "o-2").await, "");

    // Beijing comes back fenced: it refuses writes for shanghai's shard.
    {
        let mut c = connect(a).await;
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
    let b_client = connect(b).await;
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
    assert_eq!(first.op.as_deref(), Some("update"));
    assert!(!first.resolved);
    // The diff shows what beijing changed, and only that.
    let d = repair::diff(
        first.remote_row.as_ref().expect("remote"),
        first.local_row.as_ref().expect("local"),
    );
    let cols: Vec<&str> = d.iter().map(|c| c.column.as_str()).collect();
    assert_eq!(cols, ["amount", "note"], "{d:?}");
    let a_client = connect(a).await;
    assert!(repair::list(&a_client, "beijing", true)
        .await
        .expect("list")
        .is_empty());

    // A dry run changes nothing.
    let mut dry = Repairer::open(sites(a, b).await, true).await.expect("open");
    let out = dry
        .resolve("shanghai", c1, Keep::Survivor)
        .await
        .expect("dry");
    assert_eq!(
        out.to_string(),
        format!("conflict {c1} public.orders id=o-1: would keep survivor at shanghai, beijing")
    );
    dry.close().await;
    assert!(row(a, "o-1").await.contains("returning o-1"));
    assert_eq!(
        repair::list(&b_client, "shanghai", false)
            .await
            .expect("list")
            .len(),
        3
    );

    let ab_skipped = ab_stats.skipped_origin_txns.load(Ordering::Relaxed);
    let ba_skipped = ba_stats.skipped_origin_txns.load(Ordering::Relaxed);
    let mut r = Repairer::open(sites(a, b).await, false)
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
        q(b, "SELECT string_agg(id || ':' || resolved || ':' || resolution, ',' ORDER BY id) FROM ezone_replication.conflicts").await,
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
    q(a, "INSERT INTO beacon VALUES (1, 'beijing')").await;
    q(b, "INSERT INTO beacon VALUES (2, 'shanghai')").await;
    until(a, "SELECT count(*) FROM beacon", "2").await;
    until(b, "SELECT count(*) FROM beacon", "2").await;
    assert_eq!(
        q(b, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "3"
    );
    assert_eq!(
        q(a, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0"
    );
    check("after both links caught up").await;
    // Three repair transactions at beijing (o-1, o-2, o-3), one at shanghai (o-3).
    assert!(ab_stats.skipped_origin_txns.load(Ordering::Relaxed) >= ab_skipped + 3);
    assert!(ba_stats.skipped_origin_txns.load(Ordering::Relaxed) > ba_skipped);

    linked.stop().await;
}

/// Runs `sql` at `pg` in a session whose transactions carry an origin, so
/// no link sends them on: the rows stay at that one site.
async fn local_only(pg: &PgCluster, sql: &str) {
    q(
        pg,
        &format!(
            "SELECT pg_replication_origin_create('ezone_test_local') WHERE NOT EXISTS \
             (SELECT 1 FROM pg_replication_origin WHERE roname = 'ezone_test_local'); \
             SELECT pg_replication_origin_session_setup('ezone_test_local'); {sql}"
        ),
    )
    .await;
}

#[tokio::test]
async fn the_op_is_recorded_and_taking_a_returning_delete_deletes_the_row() {
    let linked = Linked::start().await;
    let (a, b) = (&linked.a, &linked.b);

    // The survivor's rows, replicated to beijing.
    q(
        b,
        "INSERT INTO orders (id, city, note, amount) VALUES \
         ('o-1', '021', 'survivor o-1', 10.00), ('o-2', '021', 'survivor o-2', 20.00), \
         ('o-5', '021', 'survivor o-5', 50.00)",
    )
    .await;
    until(a, "SELECT count(*) FROM orders", "3").await;
    // Beacon rows (no shard key) at one site only.
    local_only(b, "INSERT INTO beacon VALUES (10, 'shanghai')").await;
    local_only(
        a,
        "INSERT INTO beacon VALUES (11, 'beijing'), (12, 'beijing')",
    )
    .await;

    // Beijing's tail: one conflict of each operation, and of each kind.
    q(a, "DELETE FROM orders WHERE id = 'o-1'").await;
    q(
        a,
        "UPDATE orders SET note = 'returning o-2', amount = 21.00 WHERE id = 'o-2'",
    )
    .await;
    q(
        a,
        "INSERT INTO orders (id, city, note) VALUES ('o-4', '021', 'returning o-4')",
    )
    .await;
    // With the default replica identity a delete sends only the key.
    q(
        a,
        "ALTER TABLE orders REPLICA IDENTITY DEFAULT; DELETE FROM orders WHERE id = 'o-5'",
    )
    .await;
    q(a, "INSERT INTO beacon VALUES (10, 'beijing')").await;
    q(a, "UPDATE beacon SET site = 'beijing again' WHERE id = 11").await;
    q(a, "DELETE FROM beacon WHERE id = 12").await;
    until(
        b,
        "SELECT string_agg(kind || ':' || op || ':' || (remote_row->>'id'), ',' ORDER BY id) \
         FROM ezone_replication.conflicts",
        "foreign_shard:delete:o-1,foreign_shard:update:o-2,foreign_shard:insert:o-4,\
         foreign_shard:delete:o-5,insert_exists:insert:10,update_missing:update:11,\
         delete_missing:delete:12",
    )
    .await;
    // The delete under REPLICA IDENTITY FULL recorded the whole old row;
    // the other one only the key.
    assert_eq!(
        q(
            b,
            "SELECT string_agg((remote_row->>'id') || '=' || coalesce(remote_row->>'note', 'NULL'), ',' ORDER BY id) \
             FROM ezone_replication.conflicts WHERE op = 'delete' AND kind = 'foreign_shard'"
        )
        .await,
        "o-1=survivor o-1,o-5=NULL"
    );
    // Not applied at shanghai.
    assert!(row(b, "o-1").await.contains("survivor o-1"));
    assert!(row(b, "o-5").await.contains("survivor o-5"));

    let b_client = connect(b).await;
    let listed = repair::list(&b_client, "shanghai", false)
        .await
        .expect("list");
    let ops: Vec<Option<&str>> = listed.iter().map(|c| c.op.as_deref()).collect();
    assert_eq!(
        ops,
        [
            Some("delete"),
            Some("update"),
            Some("insert"),
            Some("delete"),
            Some("insert"),
            Some("update"),
            Some("delete")
        ]
    );
    let ids: Vec<i64> = listed.iter().map(|c| c.id).collect();
    let [c_o1, c_o2, c_o4, c_o5, c_10, c_11, c_12] = <[i64; 7]>::try_from(ids).expect("seven");

    // A dry run says the delete is taken as a delete.
    let mut dry = Repairer::open(sites(a, b).await, true).await.expect("open");
    let out = dry
        .resolve("shanghai", c_o1, Keep::Returning)
        .await
        .expect("dry");
    assert_eq!(
        out.to_string(),
        format!(
            "conflict {c_o1} public.orders id=o-1: would take returning (no row: deleted) at shanghai, beijing"
        )
    );
    dry.close().await;
    assert!(row(b, "o-1").await.contains("survivor o-1"));

    // Every one taken from the returning site.
    let mut r = Repairer::open(sites(a, b).await, false)
        .await
        .expect("open");
    for (id, deleted) in [
        (c_o1, true),
        (c_o2, false),
        (c_o4, false),
        (c_o5, true),
        (c_10, false),
        (c_11, false),
        (c_12, true),
    ] {
        let out = r
            .resolve("shanghai", id, Keep::Returning)
            .await
            .expect("resolve");
        assert!(
            matches!(out, Outcome::Resolved { deleted: d, dry_run: false, .. } if d == deleted),
            "{id}: {out}"
        );
    }
    r.close().await;

    for (site, pg) in [("beijing", &a), ("shanghai", &b)] {
        // The deletes deleted (not brought back from the full old row)...
        assert_eq!(row(pg, "o-1").await, "", "o-1 at {site}");
        assert_eq!(row(pg, "o-5").await, "", "o-5 at {site}");
        // ...the update and the insert are beijing's versions.
        assert_eq!(
            q(pg, "SELECT string_agg(id || '=' || note || '=' || coalesce(amount::text, 'NULL'), ',' ORDER BY id) FROM orders").await,
            "o-2=returning o-2=21.00,o-4=returning o-4=NULL",
            "orders at {site}"
        );
        assert_eq!(
            q(
                pg,
                "SELECT string_agg(id || '=' || site, ',' ORDER BY id) FROM beacon"
            )
            .await,
            "10=beijing,11=beijing again",
            "beacon at {site}"
        );
    }
    assert_eq!(
        q(b, "SELECT count(*) FROM ezone_replication.conflicts WHERE resolved AND resolution = 'took returning by operator'").await,
        "7"
    );

    linked.stop().await;
}

/// The conflicts table as ezone made it before it recorded the operation.
const OLD_CONFLICTS: &str = "CREATE SCHEMA ezone_replication; \
    CREATE TABLE ezone_replication.conflicts (id bigserial PRIMARY KEY, \
    recorded_at timestamptz NOT NULL DEFAULT now(), link text NOT NULL, kind text NOT NULL, \
    relation text NOT NULL, source_commit_lsn pg_lsn NOT NULL, \
    source_commit_time timestamptz NOT NULL, remote_row jsonb, local_row jsonb, \
    reason text NOT NULL, resolution text NOT NULL, resolved boolean NOT NULL DEFAULT false)";

#[tokio::test]
async fn records_from_before_the_op_column_read_as_null_and_are_decided_as_before() {
    // Two sites as two databases of one cluster (a dry run holds no
    // replication origin, which is the cluster's).
    let pg = PgCluster::start("shanghai").await.expect("pg");
    pg.psql("CREATE DATABASE beijing").await.expect("database");
    q(&pg, DDL).await;
    pg.psql_db("beijing", DDL).await.expect("ddl");
    q(&pg, OLD_CONFLICTS).await;
    q(
        &pg,
        "INSERT INTO orders (id, city, note) VALUES ('o-1', '021', 'survivor o-1'); \
         INSERT INTO ezone_replication.conflicts (link, kind, relation, source_commit_lsn, \
         source_commit_time, remote_row, local_row, reason, resolution) VALUES \
         ('beijing->shanghai', 'foreign_shard', '\"public\".\"orders\"', '0/1', now(), \
          '{\"id\": \"o-1\", \"city\": \"021\", \"note\": \"survivor o-1\"}', \
          '{\"id\": \"o-1\", \"city\": \"021\", \"note\": \"survivor o-1\"}', \
          'the row''s shard is homed at shanghai', 'owner_wins:kept_target')",
    )
    .await;
    let client = connect(&pg).await;
    let has_op = "SELECT count(*) FROM pg_attribute \
        WHERE attrelid = 'ezone_replication.conflicts'::regclass AND attname = 'op'";
    let sites = || async {
        let (beijing, conn) = ezone_pg::connect(&pg.dsn("beijing"))
            .await
            .expect("connect");
        tokio::spawn(conn);
        vec![
            SiteClient {
                site: "shanghai".into(),
                client: connect(&pg).await,
            },
            SiteClient {
                site: "beijing".into(),
                client: beijing,
            },
        ]
    };
    // What it would do with an old record: take the image as the row,
    // as before (the record cannot say that it was a delete).
    let dry_run = || async {
        let mut r = Repairer::open(sites().await, true).await.expect("open");
        let out = r
            .resolve("shanghai", 1, Keep::Returning)
            .await
            .expect("dry run");
        r.close().await;
        out.to_string()
    };
    let before = "conflict 1 public.orders id=o-1: would take returning at shanghai, beijing";

    // Listed before any applier has added the column: op unknown.
    assert_eq!(q(&pg, has_op).await, "0");
    let listed = repair::list(&client, "shanghai", true).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].op, None);
    assert_eq!(dry_run().await, before);

    // An applier adds it; the old record's op is NULL.
    let dsn = pg.dsn(DB);
    let applier = Applier::connect(&dsn, "beijing->shanghai", "ezone_from_beijing")
        .await
        .expect("applier");
    applier.close().await;
    assert_eq!(q(&pg, has_op).await, "1");
    assert_eq!(
        q(
            &pg,
            "SELECT coalesce(op, 'NULL') FROM ezone_replication.conflicts"
        )
        .await,
        "NULL"
    );
    let listed = repair::list(&client, "shanghai", true).await.expect("list");
    assert_eq!(listed[0].op, None);
    assert_eq!(dry_run().await, before);

    // Once there, ensuring it again locks nothing: an applier starts while
    // another session holds a conflict row (as a repair does).
    let holder = connect(&pg).await;
    holder
        .batch_execute("BEGIN; SELECT id FROM ezone_replication.conflicts FOR UPDATE")
        .await
        .expect("lock");
    let again = tokio::time::timeout(
        Duration::from_secs(10),
        Applier::connect(&dsn, "beijing->shanghai", "ezone_from_beijing"),
    )
    .await
    .expect("the applier waited for the conflicts table's lock")
    .expect("applier");
    again.close().await;
    holder.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(q(&pg, has_op).await, "1");
}
