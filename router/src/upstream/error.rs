//! Why an exchange with an upstream (or a peer router) failed, classified
//! for the retry rules ([`UpstreamError::is_connect`]: nothing was sent) and
//! told to a client without the endpoint's address
//! ([`UpstreamError::client_reason`]).

use std::io;
use std::time::Duration;

use crate::http1::codec::H1Error;

/// Why an upstream exchange failed, classified for the retry rules.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection: nothing was sent, so any request may be retried.
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// No connection within `timeouts.connect_ms`: nothing was sent.
    #[error("connecting to {addr} took longer than {after:?} (timeouts.connect_ms)")]
    ConnectTimeout { addr: String, after: Duration },
    /// The TLS handshake with a peer router failed (its certificate is not
    /// the dialed site's, or not signed by `peer_tls.ca_file`; or it
    /// refused ours): nothing was sent.
    #[error("TLS handshake with the router at {addr} (as {name}) failed")]
    Tls {
        addr: String,
        name: String,
        #[source]
        source: io::Error,
    },
    /// The exchange failed after the connection was made (reset, closed
    /// before the response, malformed response, request body error).
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The router's own exchange failed on the socket.
    #[error("upstream connection failed")]
    Io(#[source] io::Error),
    /// The upstream closed the connection before a complete response head.
    #[error("upstream closed the connection before sending a response head")]
    Closed,
    /// The upstream's response is not valid HTTP/1.
    #[error("invalid response from the upstream")]
    Malformed(#[source] H1Error),
    /// The upstream sent nothing of its response body for `after` while the
    /// router waited for it.
    #[error("the upstream sent nothing for {after:?} in the middle of its response body (timeouts.upstream_read_ms)")]
    Stalled { after: Duration },
    /// The upstream address does not make a URI (HTTP/2 upstreams).
    #[error("upstream address {addr:?} is not usable: {source}")]
    Address {
        addr: String,
        #[source]
        source: http::Error,
    },
    /// An HTTP/2 upstream's client failed.
    #[error(transparent)]
    H2(#[from] hyper_util::client::legacy::Error),
}

impl UpstreamError {
    /// What went wrong, as a client may be told: never the endpoint's
    /// address (the log has that), so an answer does not reveal the
    /// internal network. `addr` (the endpoint) is masked from anything the
    /// underlying errors say, in case one names it.
    pub fn client_reason(&self, addr: &str) -> String {
        let reason = match self {
            UpstreamError::Connect { source, .. } => format!("cannot connect: {source}"),
            UpstreamError::ConnectTimeout { after, .. } => {
                format!("no connection within {after:?} (timeouts.connect_ms)")
            }
            UpstreamError::Tls { name, source, .. } => {
                format!("the TLS handshake as {name} failed: {source}")
            }
            UpstreamError::Address { .. } => {
                "its address in the topology does not make a URI".to_string()
            }
            other => crate::error::chain(other),
        };
        if addr.is_empty() || !reason.contains(addr) {
            return reason;
        }
        reason.replace(addr, "the endpoint")
    }

    /// True if the request was certainly not sent (safe to retry anything).
    pub fn is_connect(&self) -> bool {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::ConnectTimeout { .. }
            | UpstreamError::Tls { .. } => true,
            UpstreamError::Exchange(_)
            | UpstreamError::Io(_)
            | UpstreamError::Closed
            | UpstreamError::Malformed(_)
            | UpstreamError::Stalled { .. }
            | UpstreamError::Address { .. } => false,
            UpstreamError::H2(e) => e.is_connect(),
        }
    }
}
