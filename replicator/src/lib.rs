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
//! stamps), [`plan`] (set statements for the fast path), [`conflict`] and
//! [`ownership`] (who may write a shard, judged by the write's epoch).
//! At the edges: [`walsender`] (the source connection), [`apply`] (the
//! target), [`link`] and [`service`] (the running links), [`fence`],
//! [`repair`] and [`site_ops`] (the failover driver's database side).
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod conflict;
pub mod fence;
pub mod link;
pub mod lsn;
pub mod ownership;
pub mod pgoutput;
pub mod plan;
pub mod rates;
pub mod repair;
pub mod service;
pub mod site_ops;
pub mod sql;
pub mod txn;
pub mod walsender;
