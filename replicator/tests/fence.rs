//! The database fence against real Postgres 15: writes for shards this site
//! does not own, or that are frozen, are refused with SQLSTATE EZ001;
//! replicated applies pass; closing a fence waits for in-flight writes; a
//! stale topology cannot reopen a fence.

use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_replicator::fence::{
    install_schema, install_table_sql, reconcile, renew_lease, FenceKey,
};
use ezone_topology::starter::starter;
use ezone_topology::{ShardState, Topology};

const DB: &str = "ezone";

async fn client(pg: &PgCluster) -> tokio_postgres::Client {
    let (c, conn) = ezone_pg::connect(&pg.dsn(DB)).await.expect("connect");
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
    // The lease, as a replicator renews it (for ever, here).
    renew_lease(&admin, "beijing", None, "test")
        .await
        .expect("lease");
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
    // The lease, as a replicator renews it (for ever, here).
    renew_lease(&admin, "beijing", None, "test")
        .await
        .expect("lease");
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

/// User ids for the hash agreement test: the published vectors, edge cases
/// (empty, multi-byte UTF-8, quotes, long strings) and a few hundred
/// generated ones, deterministic so that a failure reproduces.
fn user_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "",
        "u1",
        "u2",
        "alice",
        "bob",
        "10086",
        "用户42",
        "用户",
        "a",
        "foobar",
        "O'Brien",
        "x\\y",
        " padded ",
        "Ünïcødé",
        "пользователь",
        "🦀🚀",
        "\u{7f}\u{80}\u{ffff}",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    ids.push("x".repeat(1000));
    ids.push("用户".repeat(300));
    // Pieces of 1, 2, 3 and 4 UTF-8 bytes.
    let pieces = [
        "a", "Z", "0", "-", "_", "é", "ж", "用", "户", "€", "🦀", "𝄞",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    for i in 0..300 {
        let ascii_only = i % 3 == 0;
        let len = (next() % 40) as usize;
        let id: String = (0..len)
            .map(|_| {
                let r = next() as usize;
                if ascii_only {
                    pieces[r % 5]
                } else {
                    pieces[r % pieces.len()]
                }
            })
            .collect();
        ids.push(id);
        ids.push(format!("user-{}", next()));
    }
    ids
}

/// The fence's SQL user hash agrees with the routers' (the Rust
/// `ezone_topology::hash`): FNV-1a, jump and the whole user -> shard map, on
/// the published vectors and on generated ids, for several list lengths.
#[tokio::test]
async fn the_sql_user_hash_agrees_with_the_routers() {
    use ezone_topology::hash::{fnv1a64, jump, user_shard};

    let pg = PgCluster::start("beijing").await.expect("pg");
    let admin = client(&pg).await;
    install_schema(&admin, "beijing").await.expect("schema");
    // Installing twice is harmless (idempotent).
    install_schema(&admin, "beijing")
        .await
        .expect("schema again");

    // The published FNV-1a and jump vectors (docs/topology.md,
    // topology/src/hash.rs).
    for (input, want) in [
        ("", 0xcbf2_9ce4_8422_2325_u64),
        ("a", 0xaf63_dc4c_8601_ec8c),
        ("foobar", 0x8594_4171_f739_67e8),
        ("u1", 0x08c4_7b07_b567_47f3),
        ("u2", 0x08c4_7c07_b567_49a6),
        ("alice", 0x508b_2abb_65a0_3907),
        ("bob", 0x004d_4419_134a_0a54),
        ("10086", 0x82c9_2676_59b1_300e),
        ("用户42", 0xc777_c5a5_1fce_32df),
    ] {
        let got: i64 = admin
            .query_one("SELECT ezone_fence.fnv1a64($1)", &[&input])
            .await
            .expect("fnv1a64")
            .get(0);
        assert_eq!(got as u64, want, "fnv1a64({input:?})");
    }
    let mut jumps: Vec<(u64, u32, u32)> = vec![
        (1, 1, 0),
        (42, 57, 43),
        (0xDEAD_10CC, 1, 0),
        (0xDEAD_10CC, 666, 361),
        (256, 1024, 520),
        (4, 2, 1),
        (1, 128, 55),
        (129, 128, 120),
        (128, 100_000_000, 38_172_097),
        (u64::MAX, 128, 92),
    ];
    // And keys at the edges of the halves the SQL splits them into.
    for key in [
        0,
        1 << 31,
        1 << 32,
        (1 << 32) - 1,
        1 << 63,
        (1 << 63) - 1,
        u64::MAX - 1,
    ] {
        for n in [1, 2, 3, 7, 16, 1000, 1 << 20] {
            jumps.push((key, n, jump(key, n)));
        }
    }
    for (key, n, want) in jumps {
        let got: i32 = admin
            .query_one(
                "SELECT ezone_fence.jump($1, $2)",
                &[&(key as i64), &(n as i32)],
            )
            .await
            .expect("jump")
            .get(0);
        assert_eq!(got as u32, want, "jump({key:#x}, {n})");
        assert_eq!(want, jump(key, n), "jump({key:#x}, {n}) in Rust");
    }

    let ids = user_ids();
    assert!(ids.len() > 600);
    // Every id's FNV-1a.
    let rows = admin
        .query(
            "SELECT ezone_fence.fnv1a64(u) FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
            &[&ids],
        )
        .await
        .expect("fnv1a64 of the ids");
    assert_eq!(rows.len(), ids.len());
    for (id, row) in ids.iter().zip(&rows) {
        let got: i64 = row.get(0);
        assert_eq!(got as u64, fnv1a64(id), "fnv1a64({id:?})");
    }

    // The published user vectors, then every id, for lists of several
    // lengths (and out of order: position order is what counts).
    let lists: Vec<Vec<u32>> = vec![
        (1..=8).collect(),
        vec![7],
        vec![1, 2],
        vec![3, 1, 2],
        (1..=7).collect(),
        (1..=16).rev().collect(),
        vec![40, 3, 17, 8, 1, 99, 23, 5, 60, 2, 11, 70, 12, 31, 9, 6],
    ];
    for list in &lists {
        admin
            .batch_execute("DELETE FROM ezone_fence.user_shards")
            .await
            .expect("clear");
        for (pos, shard) in list.iter().enumerate() {
            admin
                .execute(
                    "INSERT INTO ezone_fence.user_shards (pos, shard) VALUES ($1, $2)",
                    &[&(pos as i32), &(*shard as i32)],
                )
                .await
                .expect("user shard");
        }
        if *list == (1..=8).collect::<Vec<u32>>() {
            for (user, want) in [
                ("u1", 5),
                ("u2", 5),
                ("alice", 5),
                ("bob", 3),
                ("10086", 1),
                ("用户42", 7),
            ] {
                let got: Option<i32> = admin
                    .query_one("SELECT ezone_fence.user_shard($1)", &[&user])
                    .await
                    .expect("user_shard")
                    .get(0);
                assert_eq!(got, Some(want), "user_shard({user:?})");
                assert_eq!(user_shard(user, list), Some(want as u32));
            }
        }
        let rows = admin
            .query(
                "SELECT ezone_fence.user_shard(u), ezone_fence.shard_of('user', u) \
                 FROM unnest($1::text[]) WITH ORDINALITY AS x(u, i) ORDER BY i",
                &[&ids],
            )
            .await
            .expect("user_shard of the ids");
        assert_eq!(rows.len(), ids.len());
        let mut seen = std::collections::BTreeSet::new();
        for (id, row) in ids.iter().zip(&rows) {
            let (got, via): (Option<i32>, Option<i32>) = (row.get(0), row.get(1));
            let want = user_shard(id, list).map(|s| s as i32);
            assert_eq!(got, want, "user_shard({id:?}) over {list:?}");
            assert_eq!(via, want, "shard_of('user', {id:?}) over {list:?}");
            seen.insert(got);
        }
        // Enough ids that every shard of the list is hit: the test covers
        // the whole list, not one position.
        assert_eq!(seen.len(), list.len(), "{list:?}");
    }

    // No list, or no id: no shard (the trigger refuses with EZ002).
    admin
        .batch_execute("DELETE FROM ezone_fence.user_shards")
        .await
        .expect("clear");
    let row = admin
        .query_one(
            "SELECT ezone_fence.user_shard('u1'), ezone_fence.user_shard(NULL)",
            &[],
        )
        .await
        .expect("empty list");
    assert_eq!(
        (row.get::<_, Option<i32>>(0), row.get::<_, Option<i32>>(1)),
        (None, None)
    );
}

/// `ezone_fence.user_shards` with each row's xmin (which transaction wrote it).
async fn user_shard_rows(c: &tokio_postgres::Client) -> Vec<(i32, i32, String)> {
    c.query(
        "SELECT pos, shard, xmin::text FROM ezone_fence.user_shards ORDER BY pos",
        &[],
    )
    .await
    .expect("user shards")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// A table keyed by user id: writes for users whose shard this site owns
/// pass, others are refused with EZ001; reconciling a topology whose
/// `user_shards` changed changes the answers, and writes only the
/// positions that changed.
#[tokio::test]
async fn the_fence_maps_user_ids_through_the_user_hash() {
    use ezone_topology::hash::user_shard;

    let pg = PgCluster::start("beijing").await.expect("pg");
    let mut admin = client(&pg).await;
    admin
        .batch_execute("CREATE TABLE profiles (user_id text PRIMARY KEY, note text)")
        .await
        .expect("table");
    install_schema(&admin, "beijing").await.expect("schema");
    admin
        .batch_execute(&install_table_sql(
            "public.profiles",
            "user_id",
            FenceKey::User,
        ))
        .await
        .expect("trigger");
    // Shards 1 and 3 at beijing, 2 and 4 at shanghai; user_shards [1, 2, 3, 4].
    let t1 = starter(&["beijing", "shanghai"], 2);
    // The lease, as a replicator renews it (for ever, here).
    renew_lease(&admin, "beijing", None, "test")
        .await
        .expect("lease");
    assert_eq!(t1.routing.user_shards, vec![1, 2, 3, 4]);
    reconcile(&mut admin, "beijing", &t1, "beijing")
        .await
        .expect("reconcile");
    let owned = |t: &Topology, user: &str| {
        user_shard(user, &t.routing.user_shards).map(|s| t.shards[&s].home == "beijing")
            == Some(true)
    };
    // The reordered list swaps the homes of every position.
    let mut t2 = t1.clone();
    t2.routing.user_shards = vec![2, 1, 4, 3];
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let pick = |ours1: bool| {
        users
            .iter()
            .find(|u| owned(&t1, u) == ours1 && owned(&t2, u) != ours1)
            .cloned()
            .expect("a user")
    };
    let (ours, theirs) = (pick(true), pick(false));

    let app = client(&pg).await;
    let insert = "INSERT INTO profiles VALUES ($1, 'x')";
    for u in users.iter().filter(|u| owned(&t1, u)) {
        app.execute(insert, &[u])
            .await
            .unwrap_or_else(|e| panic!("{u}: owned: accepted: {e:?}"));
    }
    for u in users.iter().filter(|u| !owned(&t1, u)) {
        let e = app
            .execute(insert, &[u])
            .await
            .expect_err("foreign user: refused");
        assert_eq!(code(&e), "EZ001", "{u}: {e:?}");
    }
    // Moving a row to a foreign user's shard is refused; a NULL id maps to
    // no shard.
    let e = app
        .execute(
            "UPDATE profiles SET user_id = $1 WHERE user_id = $2",
            &[&theirs, &ours],
        )
        .await
        .expect_err("move to a foreign user");
    assert_eq!(code(&e), "EZ001");
    let e = app
        .execute("INSERT INTO profiles VALUES (NULL, 'x')", &[])
        .await
        .expect_err("no user id");
    assert_eq!(code(&e), "EZ002");

    // The other site's users arrive by replication (which the fence lets
    // through), so that every user has a row to write below.
    for u in users.iter().filter(|u| !owned(&t1, u)) {
        app.batch_execute(&format!(
            "SET session_replication_role = replica; \
             INSERT INTO profiles VALUES ('{u}', 'replicated'); \
             SET session_replication_role = origin"
        ))
        .await
        .expect("replicated");
    }
    // Every write below fires the trigger on an existing row: accepted
    // exactly where the user's shard (under `t`) is homed here.
    let check_all = |t: Topology| {
        let (app, users) = (&app, &users);
        async move {
            for u in users {
                let r = app
                    .execute("UPDATE profiles SET note = 'w' WHERE user_id = $1", &[u])
                    .await;
                match r {
                    Ok(n) => {
                        assert_eq!(n, 1, "{u}");
                        assert!(owned(&t, u), "{u}: accepted but not ours");
                    }
                    Err(e) => {
                        assert!(!owned(&t, u), "{u}: refused but ours: {e:?}");
                        assert_eq!(code(&e), "EZ001", "{u}: {e:?}");
                    }
                }
            }
        }
    };
    check_all(t1.clone()).await;

    // The list changes: the answers follow.
    reconcile(&mut admin, "beijing", &t2, "beijing")
        .await
        .expect("reconcile");
    let e = app
        .execute(
            "UPDATE profiles SET note = 'y' WHERE user_id = $1",
            &[&ours],
        )
        .await
        .expect_err("no longer ours");
    assert_eq!(code(&e), "EZ001");
    app.execute("DELETE FROM profiles WHERE user_id = $1", &[&theirs])
        .await
        .expect("ours now: accepted");
    app.execute(insert, &[&theirs])
        .await
        .expect("ours now: accepted");
    check_all(t2.clone()).await;

    // Shrinking the list deletes the last position and leaves the others
    // untouched; an unchanged list writes nothing.
    let before = user_shard_rows(&admin).await;
    let mut t3 = t2.clone();
    t3.routing.user_shards = vec![2, 1, 4];
    reconcile(&mut admin, "beijing", &t3, "beijing")
        .await
        .expect("reconcile");
    let after = user_shard_rows(&admin).await;
    assert_eq!(after, before[..3].to_vec());
    reconcile(&mut admin, "beijing", &t3, "beijing")
        .await
        .expect("reconcile again");
    assert_eq!(user_shard_rows(&admin).await, after);
    check_all(t3.clone()).await;
}

/// The fence fails closed: without a lease renewed from the topology the
/// site refuses every write (EZ003), a lapsed lease refuses them again, and
/// renewing never waits for the writes in flight.
#[tokio::test]
async fn writes_pass_only_while_the_lease_holds() {
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
    let t = starter(&["beijing", "shanghai"], 2);
    reconcile(&mut admin, "beijing", &t, "beijing")
        .await
        .expect("reconcile");
    let mut app = client(&pg).await;
    // Never granted: refused, though the shard is this site's.
    let e = app
        .execute("INSERT INTO orders VALUES (1, '010', 'no lease')", &[])
        .await
        .expect_err("no lease yet");
    assert_eq!(code(&e), "EZ003", "{e:?}");
    // Granted for 1.5 s: accepted, then refused once it lapsed.
    let until = std::time::SystemTime::now() + Duration::from_millis(1500);
    renew_lease(&admin, "beijing", Some(until), "test")
        .await
        .expect("renew");
    app.execute("INSERT INTO orders VALUES (2, '010', 'leased')", &[])
        .await
        .expect("within the lease");
    // A write in flight holds its shard's fence row; a renewal does not
    // wait for it (nor would the writes wait for the renewal).
    let tx = app.transaction().await.expect("begin");
    tx.execute("INSERT INTO orders VALUES (3, '010', 'in flight')", &[])
        .await
        .expect("in flight");
    tokio::time::timeout(
        Duration::from_secs(2),
        renew_lease(&admin, "beijing", Some(until), "test"),
    )
    .await
    .expect("a renewal does not wait for writes in flight")
    .expect("renew");
    tx.commit().await.expect("commit");
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let e = app
        .execute("INSERT INTO orders VALUES (4, '010', 'lapsed')", &[])
        .await
        .expect_err("lapsed");
    assert_eq!(code(&e), "EZ003", "{e:?}");
    assert!(
        e.to_string().contains("lapsed") || format!("{e:?}").contains("lapsed"),
        "{e:?}"
    );
    // Renewed again: accepted again.
    renew_lease(
        &admin,
        "beijing",
        Some(std::time::SystemTime::now() + Duration::from_secs(60)),
        "test",
    )
    .await
    .expect("renew");
    app.execute("INSERT INTO orders VALUES (4, '010', 'renewed')", &[])
        .await
        .expect("renewed");
    // Replicated applies are not subject to it (triggers do not fire).
    renew_lease(
        &admin,
        "beijing",
        Some(std::time::SystemTime::now() - Duration::from_secs(1)),
        "test",
    )
    .await
    .expect("lapse it");
    app.batch_execute("SET session_replication_role = replica; INSERT INTO orders VALUES (5, '010', 'replicated'); SET session_replication_role = origin")
        .await
        .expect("replicated applies pass");
}
