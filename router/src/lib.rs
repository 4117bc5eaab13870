//! The ezone edge router: key extraction, shard lookup, forwarding to the home
//! site, and holding writes for frozen shards (see `docs/design.md`,
//! "Routing").
//!
//! The decision logic ([`extract`], [`decide`]) is pure and tested without
//! I/O; sockets, TLS and the topology watcher sit at the edges.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod conn;
pub mod decide;
pub mod extract;
pub mod h1;
pub mod h1_server;
pub mod headers;
pub mod health;
pub mod hold;
pub mod metrics;
pub mod peer_tls;
pub mod proxy;
pub mod server;
pub mod stall;
pub mod tls;
pub mod tunnel;
pub mod upstream;
