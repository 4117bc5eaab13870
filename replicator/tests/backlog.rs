//! A backlog drained on the fast path (set statements, one batch applied
//! while the next is received) by a link that is aborted again and again:
//! every source transaction lands exactly once, nothing is missing, nothing
//! conflicts. The transactions are pgbench-shaped (an account upsert, a
//! branch update, a history insert) plus deletes, so the batches hold every
//! kind of set statement and rows changed many times.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{assert_no_conflicts, q, until_within, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::link::{ensure_source, run, LinkConfig, LinkStats};
use ezone_replicator::walsender::SourceConfig;
use tokio::sync::watch;

const TABLES_SQL: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL, note text);
CREATE TABLE branches (id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE history (id bigint PRIMARY KEY, aid bigint NOT NULL, delta int NOT NULL, at timestamptz NOT NULL);
INSERT INTO branches SELECT g, 0 FROM generate_series(1, 5) g;
";

/// `n` transactions, each committed on its own.
const LOAD_SQL: &str = "
CREATE PROCEDURE load(first int, n int) LANGUAGE plpgsql AS $$
DECLARE aid bigint; delta int;
BEGIN
  FOR i IN first .. first + n - 1 LOOP
    aid := (i * 7919) % 400;
    delta := (i * 31) % 1000 - 500;
    INSERT INTO accounts VALUES (aid, delta, 'acc ' || aid)
      ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + excluded.balance;
    UPDATE branches SET balance = balance + delta WHERE id = 1 + i % 5;
    INSERT INTO history VALUES (i, aid, delta, clock_timestamp());
    IF i % 10 = 0 THEN
      DELETE FROM history WHERE id = i - 5;
      DELETE FROM accounts WHERE id = (aid + 1) % 400;
    END IF;
    COMMIT;
  END LOOP;
END $$;
";

const CHECKSUM_SQL: &str = "SELECT \
 (SELECT count(*) || ':' || coalesce(md5(string_agg(a::text, ',' ORDER BY id)), '') FROM accounts a) || ' ' || \
 (SELECT count(*) || ':' || coalesce(md5(string_agg(b::text, ',' ORDER BY id)), '') FROM branches b) || ' ' || \
 (SELECT count(*) || ':' || coalesce(md5(string_agg(h::text, ',' ORDER BY id)), '') FROM history h)";

#[tokio::test]
async fn a_backlog_drained_through_many_aborts_lands_exactly_once() {
    let a = PgCluster::start("beijing").await.expect("pg a");
    let b = PgCluster::start("shanghai").await.expect("pg b");
    for pg in [&a, &b] {
        q(pg, TABLES_SQL).await;
    }
    q(&a, LOAD_SQL).await;
    let cfg = LinkConfig {
        name: "beijing->shanghai".into(),
        source: SourceConfig::from_dsn(&a.dsn(DB)).expect("dsn"),
        source_dsn: a.dsn(DB),
        target_dsn: b.dsn(DB),
        publication: "ezone_pub".into(),
        slot: "ezone_to_shanghai".into(),
        origin: "ezone_from_beijing".into(),
        apply_workers: ezone_replicator::config::defaults::APPLY_WORKERS,
        large_transaction_bytes: ezone_replicator::config::defaults::LARGE_TRANSACTION_BYTES,
        streaming: None,
        tables: vec![
            "public.accounts".into(),
            "public.branches".into(),
            "public.history".into(),
        ],
    };
    ensure_source(&cfg).await.expect("slot and publication");
    let long = std::env::var_os("EZONE_CHAOS_LONG").is_some();
    let (txns, min_runs): (i64, u64) = if long { (50_000, 60) } else { (10_000, 8) };
    // The backlog, written with no link running.
    q(&a, &format!("CALL load(1, {txns})")).await;
    let want = q(&a, CHECKSUM_SQL).await;
    let stats = Arc::new(LinkStats::default());
    let mut runs = 0u64;
    loop {
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(cfg.clone(), stats.clone(), stop));
        tokio::time::sleep(Duration::from_millis(60 + (runs * 37) % 120)).await;
        // Wherever it is: mid-batch, mid-commit, between batches.
        task.abort();
        let _ = task.await;
        drop(stop_tx);
        runs += 1;
        if runs >= min_runs {
            break;
        }
    }
    // More while a link runs, then the rest drains.
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(run(cfg.clone(), stats.clone(), stop));
    q(&a, &format!("CALL load({}, 500)", txns + 1)).await;
    let want_after = q(&a, CHECKSUM_SQL).await;
    assert_ne!(want, want_after);
    until_within(&b, CHECKSUM_SQL, &want_after, Duration::from_secs(120)).await;
    // A transaction applied twice would have met its own rows: a conflict.
    assert_no_conflicts(&b).await;
    assert_eq!(stats.conflicts.load(Ordering::Relaxed), 0);
    let _ = stop_tx.send(true);
    task.await.expect("join").expect("clean stop");
}
