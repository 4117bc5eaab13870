//! The ezone replicator: one logical replication *link* per ordered pair of
//! sites (see `docs/design.md`, "Replication").
//!
//! The source side reads a `pgoutput` slot over the streaming replication
//! protocol (CopyBoth); the target side applies each source transaction in
//! order, exactly once, together with a replication-origin advance.
//!
//! Pure parts, unit-tested without I/O: [`lsn`] (WAL positions),
//! [`pgoutput`] (the decoder of `pgoutput` messages and the CopyBoth framing
//! around them), [`txn`] (whole source transactions and their epoch
//! stamps), [`plan`] (set statements for the fast path), [`ownership`]
//! (who may write a shard, judged by the write's epoch), [`conflict`] (what
//! is done and recorded about a conflict: [`conflict::decide`]), [`lanes`]
//! (which batches may run side by side), [`confirm`] (what a link confirms
//! to its source, and when).
//! At the edges: [`walsender`] (the source connection), [`apply`] (the
//! target), [`link`] and [`service`] (the running links), [`admin`] and
//! [`metrics`] (`/metrics`, `/healthz`, `/readyz`), [`fence`],
//! [`repair`] and [`site_ops`] (the failover driver's database side).
#![forbid(unsafe_code)]

pub mod admin;
pub mod apply;
pub mod catalog;
pub mod config;
pub mod confirm;
pub mod conflict;
pub mod fence;
pub mod lanes;
pub mod link;
pub mod link_set;
pub mod lsn;
pub mod metrics;
pub mod ownership;
pub mod pg_error;
pub mod pgoutput;
pub mod plan;
pub mod repair;
pub mod service;
pub mod site_ops;
pub mod site_report;
pub mod spool;
pub mod sql;
pub mod txn;
pub mod walsender;

/// An error and its causes on one line, for logs: its `Display`, then each
/// [`source`](std::error::Error::source) joined with `": "`, skipping a cause
/// whose text the line already holds (many errors here print their source
/// themselves). A Postgres server error ([`tokio_postgres::error::DbError`],
/// whose wrapper's `Display` is only "db error") is written as `SQLSTATE
/// <code>: <message>`, with its detail and hint when it has them.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = describe(e);
    let mut next = e.source();
    while let Some(cause) = next {
        let text = describe(cause);
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// One error of a chain, without its sources.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let Some(db) = e.downcast_ref::<tokio_postgres::error::DbError>() else {
        return e.to_string();
    };
    let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
    if let Some(detail) = db.detail() {
        s.push_str(&format!(" (detail: {detail})"));
    }
    if let Some(hint) = db.hint() {
        s.push_str(&format!(" (hint: {hint})"));
    }
    s
}

#[cfg(test)]
mod chain_tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("connection reset by peer")]
    struct Io;

    /// Says its source itself, as most of this crate's errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("reading the slot: {source}")]
    struct Quoting {
        #[source]
        source: Io,
    }

    /// Hides its source, as `tokio_postgres::Error` does.
    #[derive(Debug, thiserror::Error)]
    #[error("db error")]
    struct Terse {
        #[source]
        source: Quoting,
    }

    #[derive(Debug, thiserror::Error)]
    enum Top {
        #[error("link a->b")]
        Link(#[from] Terse),
    }

    #[test]
    fn joins_every_cause_once() {
        let e = Top::from(Terse {
            source: Quoting { source: Io },
        });
        assert_eq!(
            chain(&e),
            "link a->b: db error: reading the slot: connection reset by peer"
        );
    }

    #[test]
    fn an_error_without_sources_is_its_display() {
        assert_eq!(chain(&Io), "connection reset by peer");
        let io = std::io::Error::other("disk full");
        assert_eq!(chain(&io), "disk full");
    }

    #[test]
    fn a_source_already_quoted_is_not_repeated() {
        let e = Quoting { source: Io };
        assert_eq!(chain(&e), "reading the slot: connection reset by peer");
    }
}
