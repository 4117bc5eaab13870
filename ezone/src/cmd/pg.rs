//! One way for the operator commands to reach a site's Postgres: connect
//! within a bound, drive the connection in the background, and say why not
//! in words an operator can print (the cause chain, never the password).

use std::time::Duration;

use super::redact::redact_dsn;

/// A client of the Postgres at `dsn`, connected within `within`; else why
/// not, with the DSN's password redacted.
pub async fn connect(dsn: &str, within: Duration) -> Result<tokio_postgres::Client, String> {
    match tokio::time::timeout(within, ezone_pg::connect_spawned(dsn)).await {
        Err(_) => Err(format!("no answer within {within:?}")),
        Ok(Err(e)) => Err(redact_dsn(&ezone_replicator::chain(&e))),
        Ok(Ok(client)) => Ok(client),
    }
}
