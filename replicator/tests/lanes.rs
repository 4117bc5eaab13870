//! Parallel apply against real Postgres 15: a link applying over four lanes
//! a stream of transactions, each with an audit row numbered in commit
//! order, every tenth also moving money between accounts (and so depending
//! on whichever earlier transactions touched those accounts), killed
//! again and again, judged from the rows at the target:
//!
//! - while it runs, the audit rows at the target are always `1..k` for some
//!   k (batches commit in source order: never a later one before an
//!   earlier), and the accounts always hold the opening total;
//! - at the end the target equals the source, no change was applied twice
//!   (no conflict recorded), none is missing, and more than one lane
//!   committed.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{q, until_within, Running, DB};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::link::{ensure_source, LinkConfig, LinkStats};

const ACCOUNTS: i64 = 100_000;
const OPENING: i64 = 1000;

fn link(from: &PgCluster, to: &PgCluster) -> LinkConfig {
    LinkConfig {
        apply_workers: ezone_replicator::config::ApplyWorkers::Fixed(4),
        ..common::beijing_to_shanghai(from, to, &["public.accounts", "public.audit"])
    }
}

const CHECKSUM: &str = "SELECT (SELECT count(*) || ':' || md5(string_agg(id || '=' || balance, ',' ORDER BY id)) FROM accounts) \
     || '/' || (SELECT count(*) || ':' || coalesce(md5(string_agg(seq || ':' || from_id || '>' || to_id || ':' || amount, ',' ORDER BY seq)), '') FROM audit)";

/// Audit rows are `1..k` and the money is all there.
fn prefix_and_total() -> String {
    format!(
        "SELECT (SELECT count(*) = coalesce(max(seq), 0) FROM audit) \
         AND (SELECT sum(balance) FROM accounts) = {}",
        ACCOUNTS * OPENING
    )
}

#[tokio::test]
async fn lanes_commit_in_source_order_and_exactly_once_through_kills() {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(
            pg,
            &format!(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); \
                 CREATE TABLE audit (seq bigint PRIMARY KEY, from_id bigint, to_id bigint, amount bigint); \
                 INSERT INTO accounts SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g"
            ),
        )
        .await;
    }
    let cfg = link(&a, &b);
    ensure_source(&cfg).await.expect("source");
    let long = std::env::var_os("EZONE_CHAOS_LONG").is_some();
    let (transfers, min_runs): (i64, u64) = if long { (20_000, 60) } else { (1_500, 8) };

    // The writer: one transfer per transaction, an audit row numbered in
    // commit order (a single writer), sometimes several transfers at once.
    let writer_dsn = a.dsn(DB);
    let writer = tokio::spawn(async move {
        let (client, conn) = ezone_pg::connect(&writer_dsn).await.expect("connect");
        tokio::spawn(conn);
        let mut seq = 0i64;
        let mut n = 0i64;
        while seq < transfers {
            n += 1;
            let moves = 1 + (n % 3);
            let mut sql = String::from("BEGIN;");
            for m in 0..moves {
                seq += 1;
                if n % 10 != 0 {
                    sql.push_str(&format!("INSERT INTO audit VALUES ({seq}, 0, 0, 0);"));
                    continue;
                }
                // Two batches of a backlog (some hundred transactions
                // each) meet on an account now and then.
                let from = 1 + (n * 7919 + m * 104_729) % ACCOUNTS;
                let to = 1 + (n * 6007 + m * 31_337 + 1) % ACCOUNTS;
                let amount = 1 + (n * 13 + m) % 40;
                sql.push_str(&format!(
                    "UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; \
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; \
                     INSERT INTO audit VALUES ({seq}, {from}, {to}, {amount});"
                ));
            }
            sql.push_str("COMMIT;");
            client.batch_execute(&sql).await.expect("transfer");
        }
        seq
    });

    let stats = Arc::new(LinkStats::default());
    let mut runs: u64 = 0;
    loop {
        let running = Running::start(cfg.clone(), stats.clone());
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(60 + (runs * 41) % 120)).await;
            assert_eq!(
                q(&b, &prefix_and_total()).await,
                "t",
                "the target holds a gap in the audit or money that is not all there"
            );
        }
        // Lanes mid-batch and mid-commit included.
        running.kill().await;
        runs += 1;
        if writer.is_finished() && runs >= min_runs {
            break;
        }
    }
    let written = writer.await.expect("writer");
    let running = Running::start(cfg, stats.clone());
    let want = q(&a, CHECKSUM).await;
    until_within(&b, CHECKSUM, &want, Duration::from_secs(90)).await;
    assert_eq!(
        q(&b, "SELECT count(*) FROM audit").await,
        written.to_string()
    );
    assert_eq!(q(&b, &prefix_and_total()).await, "t");
    assert_eq!(
        q(&b, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0",
        "a change was applied twice"
    );
    // More than one lane committed (each has its own origin).
    let lanes = q(
        &b,
        "SELECT count(*) FROM pg_replication_origin_status \
         WHERE starts_with(external_id, 'ezone_from_beijing') AND remote_lsn <> '0/0'",
    )
    .await;
    assert!(
        lanes.parse::<u32>().unwrap_or(0) > 1,
        "only {lanes} lane(s) committed"
    );
    // The per-lane metrics agree: four lanes, more than one with commits.
    assert_eq!(stats.lane_count.load(Ordering::Relaxed), 4);
    let busy = stats.lanes[..4]
        .iter()
        .filter(|l| l.batches.load(Ordering::Relaxed) > 0)
        .count();
    assert!(
        busy > 1,
        "the lane metrics show {busy} lane(s) with commits"
    );
    running.stop().await;
}
