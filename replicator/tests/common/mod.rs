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
