//! Routing policy: what the router decides about a request from its head
//! and the topology, with no sockets.
//!
//! - [`extract`]: the routing key, from the `[[keys]]` sources (pure);
//! - [`decide`]: key + topology → where the request goes (pure);
//! - [`headers`]: the header rules, ezone's own headers, and the checks that
//!   refuse a client's protocol errors (pure);
//! - [`hold`]: holding a frozen shard's writes until the topology releases
//!   them (waits on the watcher, decides with [`decide::release`]).

pub mod decide;
pub mod extract;
pub mod headers;
pub mod hold;
