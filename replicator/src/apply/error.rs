//! What went wrong applying, classified by what the link should do
//! (retry after reconnecting, or stop), and the one place a Postgres error
//! is classified for the applier ([`crate::pg_error`]).

use tokio_postgres::Client;

use crate::sql::ShapeError;

/// What went wrong applying, classified by what the link should do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The target connection failed or a transient database error: retry the
    /// same transaction after reconnecting (nothing was committed).
    #[error("target {target}: {detail} (transient: the link will reconnect and retry)")]
    Transient { target: String, detail: String },
    /// The change cannot be applied as is (schema drift, no primary key, a
    /// constraint the data violates): the link stops with this error.
    #[error("target {target}: {detail}")]
    Definite { target: String, detail: String },
    #[error("target {target}: {source}")]
    Shape {
        target: String,
        #[source]
        source: ShapeError,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Transient { .. })
    }
}

/// Connects as `dsn` says; a DSN that does not parse is definite.
pub(super) async fn connect(
    dsn: &str,
    target: &str,
    what: &str,
) -> Result<(Client, ezone_pg::Connection), ApplyError> {
    match ezone_pg::connect(dsn).await {
        Ok(c) => Ok(c),
        Err(ezone_pg::ConnectError::Postgres(e)) => Err(classify(target, what, e)),
        Err(e @ ezone_pg::ConnectError::Dsn(_)) => Err(ApplyError::Definite {
            target: target.to_string(),
            detail: format!("{what}: {e}"),
        }),
    }
}

pub(super) fn classify(target: &str, what: &str, e: tokio_postgres::Error) -> ApplyError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => format!("{what}: {}", crate::chain(&e)),
    };
    // A write this applier does not understand stops the link rather than
    // loop on it (crate::pg_error: `Other` is definite here).
    let transient = crate::pg_error::Kind::of(&e).transient_or(false);
    if transient {
        ApplyError::Transient {
            target: target.to_string(),
            detail,
        }
    } else {
        ApplyError::Definite {
            target: target.to_string(),
            detail,
        }
    }
}
