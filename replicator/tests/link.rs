//! Links end to end between two real Postgres 15 clusters: both directions
//! running, writes at both sites, everything converges, nothing echoes; the
//! replicator killed mid-stream again and again resumes with no gap and no
//! duplicate.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_no_conflicts, q, until, until_within, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::link::{run, LinkConfig, LinkStats};
use ezone_replicator::walsender::SourceConfig;
use tokio::sync::watch;

const TABLE_SQL: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, amount numeric(12,2), note text, big text, tags text[], meta jsonb, at timestamptz)";

fn link(name: &str, from: &PgCluster, to: &PgCluster, from_site: &str) -> LinkConfig {
    let mut source = SourceConfig::from_dsn(&from.dsn(DB)).expect("source dsn");
    source.application_name = format!("ezone {name}");
    LinkConfig {
        name: name.to_string(),
        source,
        source_dsn: from.dsn(DB),
        target_dsn: to.dsn(DB),
        publication: "ezone_pub".into(),
        slot: format!("ezone_to_{}", name.split("->").nth(1).unwrap_or("x")),
        origin: format!("ezone_from_{from_site}"),
        apply_workers: ezone_replicator::config::defaults::APPLY_WORKERS,
        large_transaction_bytes: ezone_replicator::config::defaults::LARGE_TRANSACTION_BYTES,
        streaming: None,
        tables: vec!["public.orders".into()],
    }
}

/// A checksum of the whole table, the same at both sites when they agree.
async fn checksum(pg: &PgCluster) -> String {
    q(pg, "SELECT count(*) || ':' || coalesce(md5(string_agg(o::text, ',' ORDER BY id)), '') FROM orders o").await
}

async fn converge(a: &PgCluster, b: &PgCluster) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (x, y) = (checksum(a).await, checksum(b).await);
        if x == y {
            return x;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sites did not converge: {x} vs {y}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn two_sites() -> (PgCluster, PgCluster) {
    let a = PgCluster::start("beijing").await.expect("pg a");
    let b = PgCluster::start("shanghai").await.expect("pg b");
    for pg in [&a, &b] {
        q(pg, TABLE_SQL).await;
    }
    (a, b)
}

#[tokio::test]
async fn both_directions_converge_without_echo() {
    let (a, b) = two_sites().await;
    let (stop_tx, stop) = watch::channel(false);
    let ab = Arc::new(LinkStats::default());
    let ba = Arc::new(LinkStats::default());
    let t1 = tokio::spawn(run(
        link("beijing->shanghai", &a, &b, "beijing"),
        ab.clone(),
        stop.clone(),
    ));
    let t2 = tokio::spawn(run(
        link("shanghai->beijing", &b, &a, "shanghai"),
        ba.clone(),
        stop.clone(),
    ));
    // Wait until both slots exist before writing (the slot starts the history).
    for pg in [&a, &b] {
        until(
            pg,
            "SELECT count(*) FROM pg_replication_slots WHERE active",
            "1",
        )
        .await;
    }
    // Disjoint writes at both sites, many small transactions, every type.
    for i in 0..50 {
        q(&a, &format!(
            "INSERT INTO orders VALUES ({i}, '010', {i}.25, 'bj {i} 北京', NULL, ARRAY['a','b'], '{{\"k\": {i}}}', now())"
        ))
        .await;
        q(&b, &format!(
            "INSERT INTO orders VALUES ({}, '021', 7.5, 'sh {i} 上海', repeat('x', 10), NULL, NULL, now())",
            1000 + i
        ))
        .await;
    }
    q(
        &a,
        "UPDATE orders SET note = note || ' updated' WHERE id < 10",
    )
    .await;
    q(&b, "DELETE FROM orders WHERE id >= 1040").await;
    // A large TOASTed value, then an update that leaves it unchanged.
    q(&a, "INSERT INTO orders VALUES (500, '010', 1, 'toast', repeat(md5('x'), 20000), NULL, NULL, now())").await;
    q(&a, "UPDATE orders SET amount = 2 WHERE id = 500").await;
    // A marker.
    q(
        &a,
        "SELECT pg_logical_emit_message(true, 'ezone.marker', 'cut-1')",
    )
    .await;
    let sum = converge(&a, &b).await;
    assert!(sum.starts_with("91:"), "{sum}");
    assert_eq!(
        q(&b, "SELECT length(big) FROM orders WHERE id = 500").await,
        "640000",
        "the unchanged TOASTed value survived the update"
    );
    assert_eq!(
        q(&b, "SELECT amount FROM orders WHERE id = 500").await,
        "2.00"
    );
    // The marker was recorded at the target.
    until(
        &b,
        "SELECT count(*) FROM ezone_replication.markers WHERE content = 'cut-1'",
        "1",
    )
    .await;
    // Nothing echoed: every applied transaction came back as skipped, none
    // applied twice, no conflicts anywhere.
    for pg in [&a, &b] {
        assert_no_conflicts(pg).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ab.conflicts.load(Ordering::Relaxed), 0);
    assert_eq!(ba.conflicts.load(Ordering::Relaxed), 0);
    assert!(
        ab.skipped_origin_txns.load(Ordering::Relaxed) > 0,
        "b's replays came back to a->b and were skipped"
    );
    assert!(ba.skipped_origin_txns.load(Ordering::Relaxed) > 0);
    let _ = stop_tx.send(true);
    t1.await.expect("join").expect("link a->b ended cleanly");
    t2.await.expect("join").expect("link b->a ended cleanly");
}

#[tokio::test]
async fn killed_mid_stream_many_times_no_gap_no_duplicate() {
    let (a, b) = two_sites().await;
    let cfg = link("beijing->shanghai", &a, &b, "beijing");
    let stats = Arc::new(LinkStats::default());
    // The slot (and so the history) starts before the first write.
    ezone_replicator::link::ensure_source(&cfg)
        .await
        .expect("slot and publication");
    // The long chaos profile (`EZONE_CHAOS_LONG=1`, `make chaos-long`) kills
    // the link far more often over a longer stream.
    let long = std::env::var_os("EZONE_CHAOS_LONG").is_some();
    let (rows, min_runs): (i64, u64) = if long { (5_000, 100) } else { (400, 8) };
    // Writer: `rows` single-row transactions at the source, in the background.
    let writer_pg = a.dsn(DB);
    let writer = tokio::spawn(async move {
        let (client, conn) = ezone_pg::connect(&writer_pg).await.expect("connect writer");
        tokio::spawn(conn);
        for i in 0..rows {
            client
                .execute(
                    "INSERT INTO orders (id, city, note) VALUES ($1, '010', 'n')",
                    &[&i],
                )
                .await
                .expect("insert");
        }
    });
    let mut runs: u64 = 0;
    loop {
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(cfg.clone(), stats.clone(), stop));
        tokio::time::sleep(Duration::from_millis(150 + (runs * 37) % 200)).await;
        // kill -9 equivalent for the in-process replicator: abort the task
        // wherever it is (mid-transaction, mid-commit, between messages).
        task.abort();
        let _ = task.await;
        drop(stop_tx);
        runs += 1;
        if writer.is_finished() && runs >= min_runs {
            break;
        }
    }
    writer.await.expect("writer");
    // A final run drains the rest.
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg.clone(), stats.clone(), stop));
    until_within(
        &b,
        "SELECT count(*) FROM orders",
        &rows.to_string(),
        Duration::from_secs(60),
    )
    .await;
    // No duplicate (a re-applied insert would be a recorded conflict) and no
    // gap (ids 0..rows all present).
    assert_no_conflicts(&b).await;
    assert_eq!(
        q(
            &b,
            "SELECT min(id) || ' ' || max(id) || ' ' || count(DISTINCT id) FROM orders"
        )
        .await,
        format!("0 {} {rows}", rows - 1)
    );
    assert_eq!(checksum(&a).await, checksum(&b).await);
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean end");
}

#[tokio::test]
async fn source_and_target_crashes_converge() {
    let (a, b) = two_sites().await;
    let cfg = link("beijing->shanghai", &a, &b, "beijing");
    ezone_replicator::link::ensure_source(&cfg)
        .await
        .expect("source");
    let stats = Arc::new(LinkStats::default());
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg, stats.clone(), stop));
    let mut next = 0i64;
    let mut write = |n: i64| {
        let from = next;
        next += n;
        format!(
            "INSERT INTO orders (id, city) SELECT i, '010' FROM generate_series({from}, {}) i",
            from + n - 1
        )
    };
    q(&a, &write(100)).await;
    // The source crashes (kill -9, then crash recovery) mid-stream.
    a.kill().expect("kill source");
    a.restart().await.expect("restart source");
    q(&a, &write(100)).await;
    // The target crashes.
    b.kill().expect("kill target");
    q(&a, &write(100)).await;
    b.restart().await.expect("restart target");
    q(&a, &write(100)).await;
    converge(&a, &b).await;
    assert_eq!(q(&b, "SELECT count(*) FROM orders").await, "400");
    assert_no_conflicts(&b).await;
    assert!(
        stats.restarts.load(Ordering::Relaxed) >= 2,
        "the link restarted after each crash"
    );
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}
