//! Transactions the source streams before their commit (protocol version 2,
//! `streaming 'on'`), against real Postgres 15 whose
//! `logical_decoding_work_mem` is set to its least (64 kB), so that a
//! transaction of a few thousand rows is streamed in blocks. Judged from
//! the rows at both sites:
//!
//! - a streamed transaction arrives whole at its commit, and only then,
//!   while small transactions committed meanwhile cross before it; the
//!   rows of a subtransaction rolled back to its savepoint never arrive, and
//!   a table first described inside such a subtransaction is still known
//!   to the rows after it;
//! - one that aborts at the source leaves nothing at the target;
//! - one replayed at the source from another site (it has an origin) is
//!   not applied (loop prevention);
//! - a link killed while such a transaction is half streamed, and again
//!   while it is being applied, applies it exactly once after restarts;
//! - the process's peak memory while a 200,000-row UPDATE is streamed and
//!   applied stays far below what holding it takes.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{
    assert_no_conflicts, items_converge, q, until, until_a_lock_wait, until_within, Running, DB,
};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::link::{ensure_source, LinkConfig, LinkStats};

/// Two sites whose source streams any transaction over 64 kB of changes.
async fn two_sites() -> (PgCluster, PgCluster) {
    let (a, b) = common::two_sites_with(common::ITEMS_SQL).await;
    q(&a, "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'").await;
    q(&a, "SELECT pg_reload_conf()").await;
    (a, b)
}

fn link(from: &PgCluster, to: &PgCluster) -> LinkConfig {
    LinkConfig {
        streaming: Some(ezone_replicator::config::defaults::spool_dir()),
        ..common::beijing_to_shanghai(from, to, &["public.items"])
    }
}

/// Two sites and the streaming link between them, running.
async fn started() -> (PgCluster, PgCluster, LinkConfig, Arc<LinkStats>, Running) {
    let (a, b) = two_sites().await;
    let cfg = link(&a, &b);
    ensure_source(&cfg).await.expect("source");
    let stats = Arc::new(LinkStats::default());
    let running = Running::start(cfg.clone(), stats.clone());
    (a, b, cfg, stats, running)
}

/// Waits until the source has streamed a transaction before its commit.
async fn source_streamed(a: &PgCluster) {
    until_within(
        a,
        "SELECT stream_txns > 0 FROM pg_stat_replication_slots WHERE slot_name = 'ezone_to_shanghai'",
        "t",
        Duration::from_secs(60),
    )
    .await;
}

/// Waits (up to a minute) until `counter` is above zero.
async fn until_counted(counter: &std::sync::atomic::AtomicU64, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection to `pg` of the test's own, for a transaction held open.
async fn session(pg: &PgCluster) -> tokio_postgres::Client {
    ezone_pg::connect_spawned(&pg.dsn(DB))
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_streamed_transaction_arrives_whole_at_its_commit_and_others_pass_it() {
    let (a, b, _, stats, running) = started().await;

    // A large transaction held open at the source, with a savepoint rolled
    // back inside, and more after it.
    let big = session(&a).await;
    big.batch_execute(
        "BEGIN;
         INSERT INTO items SELECT g, 'big ' || g FROM generate_series(1, 20000) g;
         SAVEPOINT s1;
         INSERT INTO items SELECT g, 'rolled back' FROM generate_series(20001, 25000) g;
         SAVEPOINT s2;
         INSERT INTO items SELECT g, 'rolled back' FROM generate_series(25001, 26000) g;
         ROLLBACK TO SAVEPOINT s1;
         SAVEPOINT s3;
         INSERT INTO items SELECT g, 'kept savepoint ' || g FROM generate_series(30001, 33000) g;
         RELEASE SAVEPOINT s3;",
    )
    .await
    .expect("the large transaction so far");
    // The source streams it while it is open: blocks arrive and are kept.
    source_streamed(&a).await;
    // Small transactions committed meanwhile cross before it.
    q(
        &a,
        "INSERT INTO items VALUES (-1, 'small, while the big one is open')",
    )
    .await;
    until(&b, "SELECT count(*) FROM items WHERE id = -1", "1").await;
    assert_eq!(
        q(&b, "SELECT count(*) FROM items WHERE id > 0").await,
        "0",
        "rows of a transaction not yet committed at the source reached the target"
    );
    big.batch_execute(
        "INSERT INTO items SELECT g, 'big, after ' || g FROM generate_series(40001, 42000) g; COMMIT",
    )
    .await
    .expect("commit");
    q(&a, "INSERT INTO items VALUES (-2, 'small, after')").await;
    items_converge(&a, &b, Duration::from_secs(90)).await;
    assert_eq!(
        q(&b, "SELECT count(*) FROM items WHERE v = 'rolled back'").await,
        "0"
    );
    assert_eq!(
        q(&b, "SELECT count(*) FROM items WHERE id > 0").await,
        "25000"
    );
    assert_eq!(stats.streamed_txns.load(Ordering::Relaxed), 1);
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), 0);
    assert_no_conflicts(&b).await;
    running.stop().await;
}

#[tokio::test]
async fn a_relation_first_described_in_a_rolled_back_savepoint_still_serves() {
    let (a, b, _, stats, running) = started().await;
    // The stream has described no relation yet: the first changes of
    // `items` it streams, and so its Relation, are in a savepoint that is
    // then rolled back, and cut out of the spool with it. The rows after
    // need the Relation again: the source forgets what it described in a
    // transaction at any Stream Abort (pgoutput's `cleanup_rel_sync_cache`)
    // and sends it again; were that to change, this fails.
    q(
        &a,
        "BEGIN;
         SAVEPOINT s;
         INSERT INTO items SELECT g, 'rolled back' FROM generate_series(1, 20000) g;
         ROLLBACK TO SAVEPOINT s;
         INSERT INTO items SELECT g, 'kept ' || g FROM generate_series(20001, 30000) g;
         COMMIT;",
    )
    .await;
    items_converge(&a, &b, Duration::from_secs(60)).await;
    assert_eq!(q(&b, "SELECT count(*) FROM items").await, "10000");
    assert_eq!(stats.streamed_txns.load(Ordering::Relaxed), 1);
    running.stop().await;
}

#[tokio::test]
async fn a_streamed_transaction_that_aborts_leaves_nothing() {
    let (a, b, _, stats, running) = started().await;
    let big = session(&a).await;
    big.batch_execute(
        "BEGIN; INSERT INTO items SELECT g, 'aborted' FROM generate_series(1, 30000) g",
    )
    .await
    .expect("open");
    source_streamed(&a).await;
    big.batch_execute("ROLLBACK").await.expect("abort");
    q(&a, "INSERT INTO items VALUES (-1, 'after')").await;
    until(&b, "SELECT count(*) FROM items", "1").await;
    assert_eq!(
        q(&b, "SELECT count(*) FROM items WHERE v = 'aborted'").await,
        "0"
    );
    until_counted(&stats.streamed_aborts, "no Stream Abort counted").await;
    assert_eq!(stats.streamed_txns.load(Ordering::Relaxed), 0);
    assert_eq!(stats.spooled_bytes.load(Ordering::Relaxed), 0);
    running.stop().await;
}

#[tokio::test]
async fn a_streamed_transaction_with_an_origin_is_not_applied() {
    let (a, b, _, stats, running) = started().await;
    // As a replicator at beijing applying shanghai's changes would.
    q(
        &a,
        "SELECT pg_replication_origin_create('ezone_from_shanghai')",
    )
    .await;
    q(
        &a,
        "SELECT pg_replication_origin_session_setup('ezone_from_shanghai');
         INSERT INTO items SELECT g, 'from shanghai' FROM generate_series(1, 20000) g;",
    )
    .await;
    // A later transaction of another session relies on the Relation the
    // skipped one carried (the source counts it as sent).
    q(&a, "INSERT INTO items VALUES (-1, 'local')").await;
    until(&b, "SELECT count(*) FROM items", "1").await;
    assert_eq!(stats.streamed_txns.load(Ordering::Relaxed), 1);
    assert!(stats.skipped_origin_txns.load(Ordering::Relaxed) >= 1);
    running.stop().await;
}

#[tokio::test]
async fn a_link_killed_mid_stream_applies_the_transaction_exactly_once() {
    let (a, b, cfg, stats, running) = started().await;
    q(&a, "INSERT INTO items VALUES (0, 'first')").await;
    until(&b, "SELECT count(*) FROM items", "1").await;

    // Killed while blocks of an open transaction are kept, and a small
    // transaction committed after them has been applied.
    let big = session(&a).await;
    big.batch_execute(
        "BEGIN; INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 20000) g",
    )
    .await
    .expect("open");
    until_counted(&stats.spooled_bytes, "nothing spooled").await;
    q(&a, "INSERT INTO items VALUES (-1, 'small')").await;
    until(&b, "SELECT count(*) FROM items", "2").await;
    running.kill().await;

    // Restarted: streamed again from its start. Then killed again while
    // its commit is being applied (a target row held makes it wait).
    let running = Running::start(cfg.clone(), stats.clone());
    let hold = session(&b).await;
    hold.batch_execute("BEGIN; INSERT INTO items VALUES (19000, 'held by the target')")
        .await
        .expect("hold a key");
    big.batch_execute(
        "INSERT INTO items SELECT g, 'row ' || g FROM generate_series(20001, 21000) g; COMMIT",
    )
    .await
    .expect("commit");
    until_a_lock_wait(&b).await;
    running.kill().await;
    hold.batch_execute("ROLLBACK").await.expect("release");
    assert_eq!(q(&b, "SELECT count(*) FROM items").await, "2");

    let running = Running::start(cfg, stats.clone());
    items_converge(&a, &b, Duration::from_secs(90)).await;
    assert_eq!(q(&b, "SELECT count(*) FROM items").await, "21002");
    assert_eq!(
        q(&b, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0",
        "a row of the streamed transaction was applied twice"
    );
    assert!(stats.streamed_txns.load(Ordering::Relaxed) >= 1);
    running.stop().await;
}

#[tokio::test]
async fn memory_stays_bounded_while_a_large_update_is_streamed() {
    // `EZONE_LARGE_TXN_ROWS` runs it bigger, by hand.
    let (a, b) = two_sites().await;
    let cfg = LinkConfig {
        large_transaction_bytes: 1024 * 1024,
        ..link(&a, &b)
    };
    let stats = Arc::new(LinkStats::default());
    let (seen, running) = common::large_update(&a, &b, cfg, stats.clone()).await;
    assert!(
        seen.grew_mib < 64,
        "peak RSS grew by {} MiB while a {}-row UPDATE was streamed",
        seen.grew_mib,
        seen.rows
    );
    assert_eq!(stats.streamed_txns.load(Ordering::Relaxed), 1);
    assert_eq!(stats.large_txns.load(Ordering::Relaxed), 1);
    assert_eq!(
        q(
            &a,
            "SELECT spill_txns FROM pg_stat_replication_slots WHERE slot_name = 'ezone_to_shanghai'"
        )
        .await,
        "0",
        "the source spilled the transaction to its own disk instead of streaming it"
    );
    running.stop().await;
}
