//! Helpers shared by the replicator's end-to-end tests (each test binary
//! uses some of them).
#![allow(dead_code)]

use std::time::Duration;

use ezone_chaos::postgres::PgCluster;

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
