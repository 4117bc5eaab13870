//! The ezone replicator: one logical replication *link* per ordered pair of
//! sites (see `shared/DESIGN.md`, "Replication").
//!
//! The source side reads a `pgoutput` slot over the streaming replication
//! protocol (CopyBoth); the target side applies each source transaction in
//! order, exactly once, together with a replication-origin advance.
//!
//! Built so far, all pure code without I/O:
//! - [`lsn`]: the WAL position type, in Postgres' `X/X` text form.
//! - [`pgoutput`]: the decoder of `pgoutput` logical decoding messages
//!   (protocol version 1) and of the CopyBoth framing around them
//!   (XLogData, primary keepalive, standby status update).
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod conflict;
pub mod fence;
pub mod link;
pub mod lsn;
pub mod pgoutput;
pub mod plan;
pub mod rates;
pub mod repair;
pub mod service;
pub mod site_ops;
pub mod sql;
pub mod txn;
pub mod walsender;
