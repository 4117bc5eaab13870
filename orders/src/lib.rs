//! The sample order service behind the ezone router, and a workload
//! generator that drives it (docs/orders.md).
//!
//! One service (or more) runs per site. It writes orders into its site's
//! Postgres, in transactions the database fence guards, stamping each row
//! with the shard and epoch the router decided on, the site that accepted
//! it and the fence epoch in force when it committed: the chaos suite's
//! checkers read those to prove no acknowledged write was lost and no shard
//! was written at two sites in one epoch.
//!
//! - [`config`] — `orders.toml`.
//! - [`schema`] — the orders table and its install (with the fence trigger).
//! - [`db`] — the connection pool and the write/read transactions.
//! - [`http`] — the HTTP API, input checks and status mapping.
//! - [`metrics`] — Prometheus metrics.
//! - [`server`] — the listener and graceful shutdown.
//! - [`workload`] — the workload generator used by tests, the demo and the benchmark.

#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod schema;
pub mod server;
pub mod workload;

pub use config::OrdersConfig;
pub use server::RunningOrders;
pub use workload::{History, Outcome, Progress, Workload, WorkloadSpec};
