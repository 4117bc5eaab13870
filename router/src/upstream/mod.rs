//! Upstreams: where a request is sent, and the connections it goes over.
//!
//! From the bottom up:
//!
//! - [`endpoints`]: an address's shared state (health, passive ejection),
//!   power-of-two-choices balancing, the retry budget;
//! - [`error`]: why an exchange failed, classified for the retry rules;
//! - [`io`]: a connection (plain TCP, or TLS to a peer router), and one the
//!   router speaks HTTP/1.1 on itself;
//! - [`pool`]: a worker's handles on addresses and their idle connections;
//! - [`raw`]: a response body read by the router's own HTTP/1.1 exchange;
//! - [`body`]: the body type the router passes around (it may carry a
//!   pooled connection back), and a client's request body;
//! - [`client`]: one worker's client: pick, connect, exchange, send.

pub mod body;
pub mod client;
pub mod endpoints;
pub mod error;
pub mod io;
pub mod pool;
pub mod raw;
