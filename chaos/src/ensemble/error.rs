//! The ensemble's error type: what failed (a lab part, the topology, a
//! process, a readiness wait), naming the thing and the value, with the tail
//! of the process's log when a process is to blame.

use std::path::PathBuf;
use std::time::Duration;

use ezone_topology::StoreError;

use crate::error::LabError;
use crate::proxy::ProxyError;

/// An error from starting or driving an [`Ensemble`](super::Ensemble).
#[derive(Debug, thiserror::Error)]
pub enum EnsembleError {
    /// A lab part (etcd, Postgres, a process, a port) failed.
    #[error(transparent)]
    Lab(#[from] LabError),

    /// The topology could not be written to or read from etcd.
    #[error("ensemble topology: {0}")]
    Topology(#[from] StoreError),

    /// The fault proxy refused a router link.
    #[error("ensemble WAN link: {0}")]
    Proxy(#[from] ProxyError),

    /// A spec that cannot work.
    #[error("invalid ensemble spec: {field} = {value}: {why}")]
    InvalidSpec {
        field: &'static str,
        value: String,
        why: String,
    },

    /// A process of the ensemble misbehaved (exited, printed no or a bad
    /// ready line).
    #[error("{name}: {message}; see its log at {}:\n{tail}", log.display())]
    Process {
        name: String,
        message: String,
        log: PathBuf,
        tail: String,
    },

    /// Something the ensemble waits for did not happen in time.
    #[error("{what} did not happen within {within:?}; last seen: {last}")]
    NotReady {
        what: String,
        within: Duration,
        last: String,
    },

    /// A statement at a site's Postgres failed.
    #[error("cannot {what} at {site}'s Postgres: {source}")]
    Postgres {
        site: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },

    /// A config file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A site or part that the ensemble does not have.
    #[error("no {what} named {name:?} in this ensemble; known: [{known}]")]
    Unknown {
        what: &'static str,
        name: String,
        known: String,
    },
}
