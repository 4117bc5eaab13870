//! The fault proxy's error type: what went wrong, named so a caller (or the
//! admin API's HTTP client) can act on it.
//!
//! Each variant says which thing failed, with its value, and what to do about
//! it. [`ProxyError::http_status`] classifies them the way the admin API
//! answers: the caller's mistake (4xx) or the proxy being gone (503); the
//! admin client's own failures (unreachable, refused, unreadable answer) are
//! here too, so the CLI reports one kind of error.

use std::io;
use std::net::SocketAddr;

use super::config::Direction;

/// An error from the fault proxy's Rust API or its admin API.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `add_link` with a name that is already taken.
    #[error(
        "link {name:?} already exists; pick another name or change the existing link's toxics"
    )]
    LinkExists { name: String },

    /// A link name that no link has.
    #[error("no link named {name:?}; known links: [{}] (names are case-sensitive; in an admin URL, percent-encode the name)", known.join(", "))]
    UnknownLink { name: String, known: Vec<String> },

    /// A link spec that cannot work (empty name, ...).
    #[error("link {name:?} is invalid: {reason}")]
    InvalidLink { name: String, reason: String },

    /// Toxics that cannot work (for example a zero bandwidth cap).
    #[error("toxics for link {link:?} direction {direction:?} are invalid: {reason}")]
    InvalidToxics {
        link: String,
        direction: Direction,
        reason: String,
    },

    /// The listen address of a link or of the admin API could not be bound.
    #[error("cannot listen on {addr} for {what}: {source}; pick a free port (or port 0 for any free port)")]
    Bind {
        what: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// The proxy was shut down; nothing can be added to it any more.
    #[error("the fault proxy is shut down; create a new FaultProxy")]
    ShutDown,

    /// [`AdminClient`](super::AdminClient): the admin API could not be reached.
    #[error("cannot reach the fault proxy admin API at {addr}: {reason}; is `ezone chaos proxy serve` running there? (pass --admin ADDR or set EZONE_PROXY_ADMIN)")]
    AdminUnreachable { addr: SocketAddr, reason: String },

    /// [`AdminClient`](super::AdminClient): the admin API refused the request.
    #[error("the fault proxy admin API at {addr} answered {status}: {message}")]
    AdminRejected {
        addr: SocketAddr,
        status: u16,
        message: String,
    },

    /// [`AdminClient`](super::AdminClient): the answer was not what the API promises.
    #[error("the fault proxy admin API at {addr} gave an answer this client cannot read ({reason}); are the proxy and this client the same ezone version?")]
    AdminBadAnswer { addr: SocketAddr, reason: String },
}

impl ProxyError {
    /// The HTTP status the admin API answers this error with.
    pub fn http_status(&self) -> u16 {
        match self {
            ProxyError::LinkExists { .. } => 409,
            ProxyError::UnknownLink { .. } => 404,
            ProxyError::InvalidLink { .. } | ProxyError::InvalidToxics { .. } => 400,
            ProxyError::Bind { source, .. } if source.kind() == io::ErrorKind::AddrInUse => 409,
            ProxyError::Bind { .. } => 400,
            ProxyError::ShutDown => 503,
            ProxyError::AdminRejected { status, .. } => *status,
            ProxyError::AdminUnreachable { .. } | ProxyError::AdminBadAnswer { .. } => 502,
        }
    }
}
