//! Helpers shared by the replicator's end-to-end tests (each test binary
//! uses some of them).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_replicator::config::defaults;
use ezone_replicator::link::{run, LinkConfig, LinkError, LinkStats};
use ezone_replicator::walsender::SourceConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The database every test creates at each site.
pub const DB: &str = "ezone";

/// Runs `sql` in [`DB`] and returns its output, trimmed.
pub async fn q(pg: &PgCluster, sql: &str) -> String {
    pg.psql_db(DB, sql).await.expect("psql").trim().to_string()
}

/// Waits (up to 30 s) until `sql` answers `want`.
pub async fn until(pg: &PgCluster, sql: &str, want: &str) {
    until_within(pg, sql, want, Duration::from_secs(30)).await
}

/// Waits up to `within` until `sql` answers `want`; fails the test with the
/// last answer otherwise.
pub async fn until_within(pg: &PgCluster, sql: &str, want: &str, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = q(pg, sql).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sql}: got {got:?}, want {want:?} (waited {within:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two sites, beijing and shanghai, each with `schema` run in [`DB`].
pub async fn two_sites_with(schema: &str) -> (PgCluster, PgCluster) {
    let a = PgCluster::start("beijing").await.expect("pg");
    let b = PgCluster::start("shanghai").await.expect("pg");
    for pg in [&a, &b] {
        q(pg, schema).await;
    }
    (a, b)
}

/// The link beijing->shanghai from `from` to `to` over `tables`, with the
/// replicator's defaults.
pub fn beijing_to_shanghai(from: &PgCluster, to: &PgCluster, tables: &[&str]) -> LinkConfig {
    LinkConfig {
        name: "beijing->shanghai".into(),
        source: SourceConfig::from_dsn(&from.dsn(DB)).expect("dsn"),
        source_dsn: from.dsn(DB),
        target_dsn: to.dsn(DB),
        publication: "ezone_pub".into(),
        slot: "ezone_to_shanghai".into(),
        origin: "ezone_from_beijing".into(),
        apply_workers: defaults::APPLY_WORKERS,
        large_transaction_bytes: defaults::LARGE_TRANSACTION_BYTES,
        streaming: None,
        tables: tables.iter().map(|t| t.to_string()).collect(),
    }
}

/// A link running in a task of the test (`link::run`), with its stop
/// switch.
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), LinkError>>,
}

impl Running {
    /// Starts `cfg`, counting into `stats` (the caller keeps a handle to
    /// read them, and may hand the same one to a later run).
    pub fn start(cfg: LinkConfig, stats: Arc<LinkStats>) -> Running {
        let (stop, rx) = watch::channel(false);
        Running {
            stop,
            task: tokio::spawn(run(cfg, stats, rx)),
        }
    }

    /// Asks the link to stop (it sees it between transactions).
    pub fn ask_to_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the link has stopped: cleanly, within a minute.
    pub async fn stopped(self) {
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the link stops")
            .expect("join")
            .expect("clean stop");
    }

    /// Asks the link to stop and waits until it has.
    pub async fn stop(self) {
        self.ask_to_stop();
        self.stopped().await;
    }

    /// kill -9 for an in-process link: the task is aborted wherever it is.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The large-transaction tests' table at both sites.
pub const ITEMS_SQL: &str = "CREATE TABLE items (id bigint PRIMARY KEY, v text NOT NULL)";

/// `items`' rows in key order, as one checksum.
pub const ITEMS_CHECKSUM: &str =
    "SELECT count(*) || ':' || coalesce(md5(string_agg(id || '=' || v, ',' ORDER BY id)), '') FROM items";

/// Waits (up to `within`) until `b`'s `items` are `a`'s.
pub async fn items_converge(a: &PgCluster, b: &PgCluster, within: Duration) {
    let want = q(a, ITEMS_CHECKSUM).await;
    until_within(b, ITEMS_CHECKSUM, &want, within).await;
}

/// Waits until a session of `pg` waits on a lock (the link's apply, held
/// by a row the test locked).
pub async fn until_a_lock_wait(pg: &PgCluster) {
    until_within(
        pg,
        "SELECT count(*) > 0 FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
        "t",
        Duration::from_secs(60),
    )
    .await;
}

/// `pg` recorded no conflict.
pub async fn assert_no_conflicts(pg: &PgCluster) {
    assert_eq!(
        q(pg, "SELECT count(*) FROM ezone_replication.conflicts").await,
        "0",
        "conflicts recorded at {}",
        pg.name()
    );
}

/// A memory figure of this process, in KiB: `VmHWM` (the peak resident
/// set) or `VmRSS` (the current one).
pub fn status_kib(field: &str) -> u64 {
    ezone_chaos::process::proc_status_kib(std::process::id(), field)
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// What [`large_update`] saw.
pub struct LargeUpdate {
    pub rows: u64,
    /// How far this process's peak RSS rose above its RSS before.
    pub grew_mib: u64,
    /// From the source's commit until the last row was updated at the target.
    pub took: Duration,
}

/// `items` filled at both sites with `EZONE_LARGE_TXN_ROWS` rows (default
/// 200,000) before link `cfg` starts (its slot is made after: only the
/// UPDATE crosses), then every row updated in one transaction at `a`, until
/// `b` equals `a`. The link is left running.
pub async fn large_update(
    a: &PgCluster,
    b: &PgCluster,
    cfg: LinkConfig,
    stats: Arc<LinkStats>,
) -> (LargeUpdate, Running) {
    let rows: u64 = std::env::var("EZONE_LARGE_TXN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let fill = format!("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, {rows}) g");
    q(a, &fill).await;
    q(b, &fill).await;
    ezone_replicator::link::ensure_source(&cfg)
        .await
        .expect("source");
    let running = Running::start(cfg, stats);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Reset the peak (Linux: "5" to clear_refs), then let the UPDATE cross.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = status_kib("VmRSS");
    q(a, "UPDATE items SET v = v || ' updated'").await;
    let committed = std::time::Instant::now();
    // One row shows the whole transaction (it commits at once there).
    until_within(
        b,
        &format!("SELECT v LIKE '% updated' FROM items WHERE id = {rows}"),
        "t",
        Duration::from_secs(600),
    )
    .await;
    let took = committed.elapsed();
    items_converge(a, b, Duration::from_secs(60)).await;
    let grew_mib = status_kib("VmHWM").saturating_sub(before) / 1024;
    eprintln!(
        "peak RSS grew by {grew_mib} MiB while {rows} updated rows crossed; at the target \
         {took:?} after the source's commit"
    );
    (
        LargeUpdate {
            rows,
            grew_mib,
            took,
        },
        running,
    )
}
