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

/// The fence stamps each transaction, once per shard it writes, with the
/// epoch of the fence row the write passed (what the replicators judge
/// ownership by); a rolled-back subtransaction takes its stamp with it, and
/// replicated applies (which the fence lets through) carry none.
#[tokio::test]
async fn every_write_transaction_carries_its_shards_epochs() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    let mut admin = client(&pg).await;
    admin
        .batch_execute("SELECT pg_create_logical_replication_slot('stamps', 'test_decoding')")
        .await
        .expect("slot");
    admin
        .batch_execute("CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, note text)")
        .await
        .expect("table");
    install_schema(&admin, "beijing").await.expect("schema");
    admin
        .batch_execute(&install_table_sql("public.orders", "city", FenceKey::City))
        .await
        .expect("trigger");
    // Both shards homed at beijing; shard 3 moved there at a later epoch.
    let t = starter(&["beijing", "shanghai"], 2);
    let t = with_shard(&t, 3, "beijing", ShardState::Active);
    let (one, three) = (t.shards[&1].epoch, t.shards[&3].epoch);
    assert_ne!(one, three);
    let city_of = |shard: u32| {
        t.routing
            .cities
            .iter()
            .find(|(_, s)| **s == shard)
            .map(|(c, _)| c.clone())
            .expect("a city")
    };
    let (c1, c3) = (city_of(1), city_of(3));
    reconcile(&mut admin, "beijing", &t, "beijing")
        .await
        .expect("reconcile");
    let app = client(&pg).await;
    app.batch_execute(&format!(
        "BEGIN;\
         INSERT INTO orders VALUES (1, '{c1}', 'a'), (2, '{c1}', 'b');\
         UPDATE orders SET note = 'c' WHERE id = 1;\
         INSERT INTO orders VALUES (3, '{c3}', 'd');\
         COMMIT;\
         BEGIN;\
         SAVEPOINT s; INSERT INTO orders VALUES (4, '{c1}', 'undone'); ROLLBACK TO SAVEPOINT s;\
         INSERT INTO orders VALUES (5, '{c1}', 'kept');\
         COMMIT;\
         SET session_replication_role = replica;\
         INSERT INTO orders VALUES (6, '{c1}', 'replicated');\
         SET session_replication_role = origin;"
    ))
    .await
    .expect("writes");
    let rows = admin
        .query(
            "SELECT data FROM pg_logical_slot_get_changes('stamps', NULL, NULL) \
             WHERE data LIKE 'BEGIN%' OR data LIKE 'message:%'",
            &[],
        )
        .await
        .expect("decode");
    // Per transaction: its stamps, in order.
    let mut txns: Vec<Vec<String>> = Vec::new();
    for r in rows {
        let data: String = r.get(0);
        if data.starts_with("BEGIN") {
            txns.push(Vec::new());
        } else if let Some(t) = txns.last_mut() {
            assert!(data.contains("prefix: ezone.epoch"), "{data}");
            t.push(data.rsplit("content:").next().unwrap_or("").to_string());
        }
    }
    // The DDL and the fence's own transactions carry none; the first write
    // transaction one per shard; the second one, for the kept insert only;
    // the replicated insert none.
    let stamped: Vec<&Vec<String>> = txns.iter().filter(|t| !t.is_empty()).collect();
    assert_eq!(
        stamped,
        vec![
            &vec![format!("1:{one}"), format!("3:{three}")],
            &vec![format!("1:{one}")],
        ],
        "{txns:?}"
    );
}
