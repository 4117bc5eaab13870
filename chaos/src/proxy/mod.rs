//! The TCP fault proxy, in the model of Toxiproxy: named links that listen on
//! one address and forward to one upstream, with per-direction faults
//! (latency, jitter, bandwidth cap, partition, slow close) and abrupt resets,
//! all changed at run time from Rust ([`FaultProxy`], [`LinkHandle`]), over the
//! admin HTTP API ([`api`], served by [`FaultProxy::serve_admin`], spoken by
//! [`AdminClient`]) or with `ezone chaos proxy`.
//!
//! How it is built, one concept per file:
//!
//! ```text
//!  FaultProxy (fault_proxy.rs) ── owns ──> links, admin API, stop signal, tasks (tasks.rs)
//!    └─ link (link.rs): listener + accept loop, toxics in a watch per direction
//!         └─ connection (connection.rs): hold while partitioned -> connect upstream
//!              ├─ pipe (pipe.rs) client -> upstream   delay.rs: latency + jitter schedule
//!              └─ pipe (pipe.rs) upstream -> client   bucket.rs: bandwidth token bucket
//! ```
//!
//! Why a partition *holds* bytes instead of dropping them: TCP cannot lose
//! bytes silently; behind a real partition the sender retransmits until the
//! network heals or it gives up. Holding (not reading, so the sender's window
//! fills) reproduces exactly that, and what an endpoint does about it
//! (timeouts, keepalives) is what the chaos suite is there to exercise.

pub mod api;
pub mod config;

mod admin;
mod bucket;
mod client;
mod connection;
mod delay;
mod error;
mod fault_proxy;
mod link;
mod pipe;
mod stats;
mod tasks;

pub use client::AdminClient;
pub use config::{Direction, LinkSpec, ProxyConfig, Toxics};
pub use error::ProxyError;
pub use fault_proxy::FaultProxy;
pub use link::{LinkHandle, LinkStatus};
pub use stats::LinkStats;
