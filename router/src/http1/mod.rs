//! HTTP/1.1 where the router speaks it itself rather than through hyper.
//!
//! - [`codec`]: the client side's framing (request heads encoded once,
//!   response heads and chunked bodies parsed), used by the upstream client;
//! - [`server`]: the server side for requests without a body, which hands
//!   any other connection to hyper.
//!
//! Neither knows the router's own types: both are generic over what they
//! carry, so they sit below the upstream client and the request path.

pub mod codec;
pub mod server;
