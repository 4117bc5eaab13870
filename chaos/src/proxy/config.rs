//! What a fault-proxy link is and which faults it applies: plain serde values,
//! shared by the Rust API, the admin HTTP API and the `ezone chaos proxy` CLI.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A direction through a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client -> upstream (bytes the client sends).
    Upstream,
    /// Upstream -> client (bytes the upstream answers).
    Downstream,
}

/// The faults applied to one direction of a link. The default is a clean wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Toxics {
    /// Added one-way delay.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Uniform jitter added to `latency`, in `[-jitter, +jitter]`; never reorders bytes.
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Bandwidth cap in bytes per second; `None` is unlimited.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Partition: no byte crosses in this direction while set. Bytes are held
    /// (as a real network partition holds TCP retransmissions), not dropped, and
    /// flow again when healed, unless an endpoint gives up first.
    pub blackhole: bool,
    /// On close (EOF) from the sending side, wait this long before passing the
    /// close on.
    #[serde(with = "humantime_serde")]
    pub slow_close: Duration,
}

/// One proxied link: listen here, forward to there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Unique name, e.g. `beijing->shanghai:postgres`.
    pub name: String,
    /// Where the proxy listens (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Where it connects to.
    pub upstream: SocketAddr,
    #[serde(default)]
    pub upstream_toxics: Toxics,
    #[serde(default)]
    pub downstream_toxics: Toxics,
}

/// The config file of `ezone chaos proxy serve --config FILE` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// The admin HTTP API's address.
    pub admin: SocketAddr,
    #[serde(default)]
    pub links: Vec<LinkSpec>,
}
