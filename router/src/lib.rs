//! The ezone edge router: key extraction, shard lookup, forwarding to the home
//! site, and holding writes for frozen shards (see `docs/design.md`,
//! "Routing").
//!
//! The modules are grouped by concern ("wings") and layered: a module uses
//! only modules of the layers below its own (or of its own wing, lower in
//! the wing's list), never one above.
//!
//! ```text
//! server/    listeners, TLS termination, connections, balance, admin, health
//!   │
//! proxy/     the request path: its phases, its one error type
//!   │
//! access_log
//!   │
//! upstream/  endpoints, connections and pools, bodies, the client
//!   │
//! http1/     the HTTP/1.1 codec (client side) and the router's own server side
//! tls/       certificates, reloading, peer TLS
//!   │
//! config
//!   │
//! policy/    pure routing policy: extract, decide, headers; hold
//!   │
//! error, stall, metrics   (leaves)
//! ```
//!
//! The decision logic ([`policy::extract`], [`policy::decide`]) is pure and
//! tested without I/O; sockets, TLS and the topology watcher sit at the edges.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod config;
pub mod error;
pub mod http1;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod stall;
pub mod tls;
pub mod upstream;

// The paths other crates use, from before the modules were grouped.
pub use policy::headers;
pub use tls::peer as peer_tls;
