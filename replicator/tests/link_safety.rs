//! The link's safety rules against real Postgres 15: every conflict kind is
//! recorded (never overwritten, never dropped), a table without a primary key
//! is refused at start, schema drift stops the link with nothing half-applied,
//! and values of many types arrive intact.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{q, until};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::apply::Applier;
use ezone_replicator::link::{ensure_source, run, LinkConfig, LinkStats};
use tokio::sync::watch;

fn link(from: &PgCluster, to: &PgCluster, tables: &[&str]) -> LinkConfig {
    common::beijing_to_shanghai(from, to, tables)
}

#[tokio::test]
async fn every_conflict_kind_is_recorded() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(pg, "CREATE TABLE orders (id bigint PRIMARY KEY, note text)").await;
    }
    let cfg = link(&a, &b, &["public.orders"]);
    ensure_source(&cfg).await.expect("source");
    // The target already has rows the source will insert, lacks rows the
    // source will update and delete.
    q(&b, "INSERT INTO orders VALUES (1, 'target version')").await;
    q(&a, "INSERT INTO orders VALUES (1, 'source version')").await;
    q(&a, "INSERT INTO orders VALUES (2, 'x'), (3, 'y')").await;
    q(&b, "DELETE FROM orders WHERE id IN (2, 3)").await;
    let stats = Arc::new(LinkStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, stats.clone(), stop));
    // Rows 2 and 3 arrive by the insert; remove them at the target again so
    // the update and delete find nothing.
    until(&b, "SELECT count(*) FROM orders WHERE id IN (2, 3)", "2").await;
    q(&b, "DELETE FROM orders WHERE id IN (2, 3)").await;
    q(&a, "UPDATE orders SET note = 'changed' WHERE id = 2").await;
    q(&a, "DELETE FROM orders WHERE id = 3").await;
    until(
        &b,
        "SELECT string_agg(kind, ',' ORDER BY id) FROM ezone_replication.conflicts",
        "insert_exists,update_missing,delete_missing",
    )
    .await;
    // Never overwritten: the target keeps its row; both versions are recorded.
    assert_eq!(
        q(&b, "SELECT note FROM orders WHERE id = 1").await,
        "target version"
    );
    let rec = q(&b, "SELECT remote_row->>'note' || '|' || (local_row->>'note') FROM ezone_replication.conflicts WHERE kind = 'insert_exists'").await;
    assert_eq!(rec, "source version|target version");
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 3);
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn a_table_without_a_primary_key_is_refused_at_start() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(pg, "CREATE TABLE events (at timestamptz, what text)").await;
    }
    let err = ensure_source(&link(&a, &b, &["public.events"]))
        .await
        .expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("public.events") && msg.contains("primary key"),
        "{msg}"
    );
    // It names the side that lacks the key: the source, not a "target".
    assert!(
        msg.contains("source host=127.0.0.1") && !msg.contains("target"),
        "{msg}"
    );
    assert!(!err.is_transient());
    // Nothing was created at the source.
    assert_eq!(
        q(&a, "SELECT count(*) FROM pg_replication_slots").await,
        "0"
    );
    assert_eq!(q(&a, "SELECT count(*) FROM pg_publication").await, "0");
}

#[tokio::test]
async fn schema_drift_stops_the_link_with_nothing_half_applied() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(pg, "CREATE TABLE orders (id bigint PRIMARY KEY, note text)").await;
    }
    let cfg = link(&a, &b, &["public.orders"]);
    ensure_source(&cfg).await.expect("source");
    let stats = Arc::new(LinkStats::default());
    let (_stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, stats.clone(), stop));
    q(&a, "INSERT INTO orders VALUES (1, 'before')").await;
    until(&b, "SELECT count(*) FROM orders", "1").await;
    // The source grows a column the target lacks, and one transaction writes
    // a row with it and a row without.
    q(&a, "ALTER TABLE orders ADD COLUMN city text").await;
    q(&a, "BEGIN; INSERT INTO orders VALUES (2, 'x', '010'); INSERT INTO orders VALUES (3, 'y', NULL); COMMIT").await;
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the link stops by itself")
        .expect("join");
    let err = result.expect_err("schema drift is a definite error");
    let msg = err.to_string();
    assert!(
        msg.contains("schema drift") && msg.contains("city"),
        "{msg}"
    );
    assert!(!err.is_transient());
    // Nothing of the failing transaction was applied.
    assert_eq!(
        q(&b, "SELECT string_agg(id::text, ',') FROM orders").await,
        "1"
    );
    // Fix the target and restart: it resumes exactly at the failed transaction.
    q(&b, "ALTER TABLE orders ADD COLUMN city text").await;
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(link(&a, &b, &["public.orders"]), stats.clone(), stop));
    until(
        &b,
        "SELECT string_agg(id || ':' || coalesce(city, '-'), ',' ORDER BY id) FROM orders",
        "1:-,2:010,3:-",
    )
    .await;
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

#[tokio::test]
async fn values_of_many_types_arrive_intact() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    let ddl = "CREATE TYPE mood AS ENUM ('ok', 'happy'); \
        CREATE TABLE t (id uuid PRIMARY KEY, n numeric(30,10), ts timestamptz, j jsonb, arr int[], \
        by bytea, txt text, m mood, f float8, nothing text)";
    // Different enum oids at the two sites: the target resolves by name.
    q(&b, "CREATE TYPE other AS ENUM ('x')").await;
    for pg in [&a, &b] {
        q(pg, ddl).await;
    }
    let cfg = link(&a, &b, &["public.t"]);
    ensure_source(&cfg).await.expect("source");
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, Arc::new(LinkStats::default()), stop));
    q(&a, "INSERT INTO t VALUES ('6f1c3f8e-9d1b-4c43-9a0e-3e9c1b2a7f00', 12345678901234567890.0123456789, \
        '2026-11-25 13:01:02.123456+08', '{\"a\": [1, 2, {\"b\": null}], \"u\": \"用户\"}', '{1,NULL,3}', \
        '\\x00ff10', E'emoji 🚚 and quotes '' \" \\\\ tab\\t', 'happy', 'NaN', NULL)").await;
    // The whole row in Postgres's own text form (NULLs, escapes and all).
    let row = "SELECT t::text FROM t";
    let want = q(&a, row).await;
    assert!(want.contains("happy") && want.contains("🚚"), "{want}");
    until(&b, row, &want).await;
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

/// Ownership: with a shard key column and the topology, a change written at a
/// site that does not own the row's shard is recorded and not applied (owner
/// wins), and when both sites have the row, the owner's version is kept.
/// Beijing and shanghai, each with an `orders` table keyed by id, with a
/// city.
async fn two_sites_with_orders() -> (PgCluster, PgCluster) {
    common::two_sites_with(
        "CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, note text)",
    )
    .await
}

/// The link beijing->shanghai's ownership rules: `public.orders` sharded by
/// city, owner wins, judged against `topology` (and `history`, if given).
fn city_owned(
    topology: Arc<ezone_topology::Topology>,
    history: Option<ezone_replicator::apply::HistoryFn>,
) -> ezone_replicator::apply::Ownership {
    use ezone_replicator::conflict::{KeyKind, Policy, ShardKey};
    ezone_replicator::apply::Ownership {
        source_site: "beijing".into(),
        target_site: "shanghai".into(),
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
        topology: Some(Arc::new(move || Some(topology.clone()))),
        history,
        ..ezone_replicator::apply::Ownership::default()
    }
}

#[tokio::test]
async fn owner_wins_by_shard_key() {
    use ezone_replicator::link::run_with;
    let (a, b) = two_sites_with_orders().await;
    // A row of a beijing-owned city already at shanghai with another version.
    q(
        &b,
        "INSERT INTO orders VALUES (5, '010', 'shanghai version')",
    )
    .await;
    let cfg = link(&a, &b, &["public.orders"]);
    ensure_source(&cfg).await.expect("source");
    // 010 -> shard 1 (beijing), 021 -> shard 2 (shanghai) in the starter topology.
    let topology = std::sync::Arc::new(ezone_topology::starter::starter(
        &["beijing", "shanghai"],
        2,
    ));
    let own = city_owned(topology, None);
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run_with(cfg, own, Arc::new(LinkStats::default()), stop));
    q(
        &a,
        "INSERT INTO orders VALUES (1, '010', 'beijing owns this')",
    )
    .await;
    q(
        &a,
        "INSERT INTO orders VALUES (2, '021', 'written at beijing, owned by shanghai')",
    )
    .await;
    q(
        &a,
        "INSERT INTO orders VALUES (5, '010', 'beijing version')",
    )
    .await;
    until(&b, "SELECT count(*) FROM ezone_replication.conflicts", "2").await;
    // The owned row applied; the foreign one recorded, not applied; the
    // existing row now holds the owner's (the source's) version.
    until(
        &b,
        "SELECT string_agg(id || '=' || note, ';' ORDER BY id) FROM orders",
        "1=beijing owns this;5=beijing version",
    )
    .await;
    assert_eq!(
        q(&b, "SELECT string_agg(kind || ':' || resolution, ',' ORDER BY id) FROM ezone_replication.conflicts").await,
        "foreign_shard:owner_wins:kept_target,insert_exists:owner_wins:applied_source"
    );
    assert_eq!(
        q(&b, "SELECT remote_row->>'note' FROM ezone_replication.conflicts WHERE kind = 'foreign_shard'").await,
        "written at beijing, owned by shanghai"
    );
    // A delete at the non-owner: its old row carries only the primary key
    // (default replica identity), not the city. The owner is read from the
    // target's row: recorded, not applied.
    q(
        &b,
        "INSERT INTO orders VALUES (7, '021', 'shanghai owns this')",
    )
    .await;
    q(
        &a,
        "INSERT INTO orders VALUES (7, '021', 'stale copy at beijing')",
    )
    .await;
    until(&b, "SELECT count(*) FROM ezone_replication.conflicts", "3").await;
    q(&a, "DELETE FROM orders WHERE id = 7").await;
    until(&b, "SELECT count(*) FROM ezone_replication.conflicts", "4").await;
    assert_eq!(
        q(&b, "SELECT note FROM orders WHERE id = 7").await,
        "shanghai owns this",
        "the foreign delete was not applied"
    );
    assert_eq!(
        q(
            &b,
            "SELECT kind FROM ezone_replication.conflicts ORDER BY id DESC LIMIT 1"
        )
        .await,
        "foreign_shard"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

/// A site lost in a forced failover comes back and gets its shard back in a
/// planned flip before its unreplicated tail has crossed. The tail was
/// written under the tenure it lost: it stays a conflict (recorded, not
/// applied) even though the shard's home is the tail's own site again,
/// while what the site writes under its new tenure applies as usual.
#[tokio::test]
async fn a_lost_tenures_tail_stays_foreign_after_the_shard_comes_back() {
    use ezone_replicator::apply::HistoryFn;
    use ezone_replicator::link::run_with;
    use ezone_topology::history::{EpochEntry, ShardHistory, Transition};
    use ezone_topology::ShardState;
    let (a, b) = two_sites_with_orders().await;
    // Shanghai wrote row 9 while it held the shard (a conflicting version).
    q(
        &b,
        "INSERT INTO orders VALUES (9, '010', 'shanghai, epoch 3')",
    )
    .await;
    let cfg = link(&a, &b, &["public.orders"]);
    ensure_source(&cfg).await.expect("source");
    // Shard 1 (city 010): beijing at epoch 1, forced to shanghai (2, 3),
    // handed back to beijing in a planned switchover (4, 5).
    let mut t = ezone_topology::starter::starter(&["beijing", "shanghai"], 2);
    let shard = t.shards.get_mut(&1).expect("shard 1");
    assert_eq!(shard.home, "beijing");
    shard.epoch = 5;
    let topology = Arc::new(t);
    let entry = |epoch, home: &str, state, how| EpochEntry {
        epoch,
        home: home.into(),
        state,
        how,
        at_ms: 0,
    };
    let history = ShardHistory::new(vec![
        entry(1, "beijing", ShardState::Active, Transition::Init),
        entry(2, "shanghai", ShardState::Frozen, Transition::Forced),
        entry(3, "shanghai", ShardState::Active, Transition::Forced),
        entry(4, "shanghai", ShardState::Frozen, Transition::Freeze),
        entry(5, "beijing", ShardState::Active, Transition::Flip),
    ]);
    let read_history: HistoryFn = Arc::new(move |_shard| {
        let h = history.clone();
        Box::pin(async move { Ok(h) })
    });
    let own = city_owned(topology, Some(read_history));
    // The tail: written at beijing under epoch 1 (stamped as the fence
    // trigger stamps), a new row and a version of row 9.
    q(
        &a,
        "BEGIN; SELECT pg_logical_emit_message(true, 'ezone.epoch', '1:1'); \
         INSERT INTO orders VALUES (1, '010', 'tail'), (9, '010', 'beijing tail, epoch 1'); COMMIT",
    )
    .await;
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run_with(cfg, own, Arc::new(LinkStats::default()), stop));
    until(&b, "SELECT count(*) FROM ezone_replication.conflicts", "2").await;
    // Beijing's writes under its new tenure (epoch 5) are its own.
    q(
        &a,
        "BEGIN; SELECT pg_logical_emit_message(true, 'ezone.epoch', '1:5'); \
         INSERT INTO orders VALUES (2, '010', 'epoch 5'); COMMIT",
    )
    .await;
    until(&b, "SELECT count(*) FROM orders WHERE id = 2", "1").await;
    assert_eq!(
        q(
            &b,
            "SELECT string_agg(id || '=' || note, ';' ORDER BY id) FROM orders"
        )
        .await,
        "2=epoch 5;9=shanghai, epoch 3",
        "the lost tenure's tail was applied"
    );
    assert_eq!(
        q(
            &b,
            "SELECT string_agg(kind || ':' || resolution || ':' || (remote_row->>'id'), ',' ORDER BY id) \
             FROM ezone_replication.conflicts"
        )
        .await,
        "foreign_shard:owner_wins:kept_target:1,foreign_shard:owner_wins:kept_target:9"
    );
    assert_eq!(
        q(&b, "SELECT count(*) FROM ezone_replication.conflicts WHERE reason LIKE '%forced failover%'").await,
        "2"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

/// A set of inserts with one key the target already has: the fast path's
/// set statement skips it (`ON CONFLICT DO NOTHING`) and sees the conflict
/// by its count, so the careful path records it, and the target's log holds
/// no unique violation from the attempt.
#[tokio::test]
async fn a_conflicting_insert_set_leaves_no_error_in_the_targets_log() {
    let (a, b) =
        common::two_sites_with("CREATE TABLE orders (id bigint PRIMARY KEY, note text)").await;
    let cfg = link(&a, &b, &["public.orders"]);
    ensure_source(&cfg).await.expect("source");
    q(&b, "INSERT INTO orders VALUES (5, 'target version')").await;
    let stats = Arc::new(LinkStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, stats.clone(), stop));
    q(
        &a,
        "INSERT INTO orders SELECT g, 'source ' || g FROM generate_series(1, 10) g",
    )
    .await;
    until(
        &b,
        "SELECT count(*) || ':' || (SELECT count(*) FROM ezone_replication.conflicts WHERE kind = 'insert_exists') FROM orders",
        "10:1",
    )
    .await;
    assert_eq!(
        q(&b, "SELECT note FROM orders WHERE id = 5").await,
        "target version"
    );
    let log = std::fs::read_to_string(b.log_path()).expect("target log");
    assert!(
        !log.contains("duplicate key value"),
        "the fast path left a unique violation in the target's log:\n{log}"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}

/// The link confirms a batch to its source once the target's COMMIT
/// returns, so that commit must be durable: a target database set to
/// commit asynchronously (`synchronous_commit = off`) does not do so for
/// the link's apply session, and a stronger setting is left as it is.
#[tokio::test]
async fn an_asynchronous_target_still_commits_applies_durably() {
    let pg = PgCluster::start("shanghai").await.expect("pg");
    for (db, setting, want) in [
        ("relaxed", "off", "local"),
        ("strict", "remote_apply", "remote_apply"),
        ("plain", "on", "on"),
    ] {
        pg.psql(&format!("CREATE DATABASE {db}"))
            .await
            .expect("create database");
        pg.psql(&format!(
            "ALTER DATABASE {db} SET synchronous_commit = {setting}"
        ))
        .await
        .expect("alter database");
        let applier = Applier::connect(&pg.dsn(db), "beijing->shanghai", &format!("ezone_{db}"))
            .await
            .expect("applier");
        let got = applier
            .session_setting("synchronous_commit")
            .await
            .expect("setting");
        assert_eq!(got, want, "database {db} set to {setting}");
        applier.close().await;
    }
}

/// A table keyed by an identity column `GENERATED ALWAYS` (which Postgres
/// refuses a value for unless told `OVERRIDING SYSTEM VALUE`, and lets an
/// UPDATE set only to DEFAULT) replicates with the source's ids: a lone
/// insert, a transaction of 1,500 inserts (written by COPY), updates and
/// deletes, the target's rows equal to the source's, its identity column
/// untouched by the applies (a later insert at the target takes its own
/// next value).
#[tokio::test]
async fn a_table_with_an_identity_key_replicates_its_ids() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    let ddl =
        "CREATE TABLE ida (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text NOT NULL)";
    for pg in [&a, &b] {
        q(pg, ddl).await;
    }
    // The target's own sequence is elsewhere: the ids must be the source's.
    q(&b, "ALTER TABLE ida ALTER COLUMN id RESTART WITH 1000000").await;
    let cfg = link(&a, &b, &["public.ida"]);
    ensure_source(&cfg).await.expect("source");
    let (stop_tx, stop) = watch::channel(false);
    let stats = Arc::new(LinkStats::default());
    let task = tokio::spawn(run(cfg, stats.clone(), stop));
    q(&a, "INSERT INTO ida (v) VALUES ('lone')").await;
    q(
        &a,
        "INSERT INTO ida (v) SELECT 'bulk ' || g FROM generate_series(1, 1500) g",
    )
    .await;
    q(&a, "UPDATE ida SET v = v || ' changed' WHERE id % 7 = 0").await;
    q(&a, "UPDATE ida SET v = 'one' WHERE id = 3").await;
    q(&a, "DELETE FROM ida WHERE id % 11 = 0").await;
    let sum = "SELECT count(*) || ' ' || md5(string_agg(id || ':' || v, ',' ORDER BY id)) FROM ida";
    let want = q(&a, sum).await;
    until(&b, sum, &want).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
    q(&b, "INSERT INTO ida (v) VALUES ('local')").await;
    assert_eq!(
        q(&b, "SELECT id FROM ida WHERE v = 'local'").await.trim(),
        "1000000"
    );
}
