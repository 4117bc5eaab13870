//! The database fence against real Postgres 15: writes for shards this site
//! does not own, or that are frozen, are refused with SQLSTATE EZ001;
//! replicated applies pass; closing a fence waits for in-flight writes; a
//! stale topology cannot reopen a fence.

use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_replicator::fence::{install_schema, install_table_sql, reconcile, FenceKey};
use ezone_topology::starter::starter;
use ezone_topology::{ShardState, Topology};

const DB: &str = "ezone";

async fn client(pg: &PgCluster) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(&pg.dsn(DB), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

fn with_shard(t: &Topology, id: u32, home: &str, state: ShardState) -> Topology {
    let mut t = t.clone();
    let s = t.shards.get_mut(&id).expect("shard");
    s.home = home.into();
    s.state = state;
    s.epoch += 1;
    t
}

#[tokio::test]
async fn the_fence_refuses_what_the_site_does_not_own() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    let mut admin = client(&pg).await;
    admin
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, note text)")
        .await
        .expect("table");
    install_schema(&admin, "beijing").await.expect("schema");
    admin
        .batch_execute(&install_table_sql("public.orders", "city", FenceKey::City))
        .await
        .expect("trigger");
    // 010 -> shard 1 (beijing), 021 -> shard 2 (shanghai).
    let t1 = starter(&["beijing", "shanghai"], 2);
    reconcile(&mut admin, "beijing", &t1, "beijing")
        .await
        .expect("reconcile");

    let app = client(&pg).await;
    app.execute("INSERT INTO orders VALUES (1, '010', 'ok')", &[])
        .await
        .expect("owned shard: accepted");
    let e = app
        .execute("INSERT INTO orders VALUES (2, '021', 'not ours')", &[])
        .await
        .expect_err("foreign shard: refused");
    assert_eq!(code(&e), "EZ001", "{e:?}");
    let e = app
        .execute("INSERT INTO orders VALUES (3, '9999', 'unmapped')", &[])
        .await
        .expect_err("unmapped city: refused");
    assert_eq!(code(&e), "EZ002");
    // Moving a row into a foreign shard is refused too.
    let e = app
        .execute("UPDATE orders SET city = '021' WHERE id = 1", &[])
        .await
        .expect_err("move into a foreign shard");
    assert_eq!(code(&e), "EZ001");

    // Replicated applies pass the fence.
    app.batch_execute("SET session_replication_role = replica; INSERT INTO orders VALUES (2, '021', 'replicated'); SET session_replication_role = origin")
        .await
        .expect("replica role bypasses the fence");

    // Freeze shard 1 for a flip: closing waits for an in-flight write.
    let mut writer = client(&pg).await;
    let tx = writer.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES (10, '010', 'in flight')", &[])
        .await
        .expect("in-flight write");
    let frozen = with_shard(&t1, 1, "beijing", ShardState::Frozen);
    let closing = {
        let frozen = frozen.clone();
        tokio::spawn(async move {
            reconcile(&mut admin, "beijing", &frozen, "beijing")
                .await
                .map(|closed| (closed, admin))
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !closing.is_finished(),
        "closing the fence must wait for the in-flight write"
    );
    tx.commit().await.expect("the in-flight write commits");
    let (closed, mut admin) = tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .expect("the fence closes once the write is done")
        .expect("join")
        .expect("reconcile");
    assert_eq!(closed, vec![1]);
    let e = app
        .execute(
            "INSERT INTO orders VALUES (11, '010', 'after the cut')",
            &[],
        )
        .await
        .expect_err("frozen: refused");
    assert_eq!(code(&e), "EZ001");

    // A stale topology (the old epoch) cannot reopen it.
    reconcile(&mut admin, "beijing", &t1, "beijing")
        .await
        .expect("reconcile stale");
    let e = app
        .execute("INSERT INTO orders VALUES (12, '010', 'stale reopen')", &[])
        .await
        .expect_err("still frozen");
    assert_eq!(code(&e), "EZ001");

    // The flip lands elsewhere: still refused here; no row of the cut landed.
    let moved = with_shard(&frozen, 1, "shanghai", ShardState::Active);
    reconcile(&mut admin, "beijing", &moved, "beijing")
        .await
        .expect("reconcile");
    assert!(app
        .execute("INSERT INTO orders VALUES (13, '010', 'x')", &[])
        .await
        .is_err());
    let ids: Vec<i64> = app
        .query("SELECT id FROM orders ORDER BY id", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2, 10]);
}
