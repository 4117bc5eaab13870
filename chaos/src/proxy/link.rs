//! One link of the proxy: its shared state (toxics per direction, counters,
//! the reset switch), the [`LinkHandle`] that changes it, and the accept loop
//! that turns each accepted client into a connection task.
//!
//! Toxics live in one `watch` channel per direction: every connection's pumps
//! hold a receiver, so a change reaches open connections at once, without
//! locks on the data path. Reset is a `CancellationToken` that every
//! connection clones when it starts; `reset()` cancels it (closing them all)
//! and puts a fresh one in place for the connections that come after.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::config::{Direction, LinkSpec, Toxics};
use super::connection;
use super::error::ProxyError;
use super::stats::{LinkCounters, LinkStats};
use super::tasks::TaskToken;

/// How long the accept loop waits after a failed accept (for example when
/// out of file descriptors) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What a link is and does now: the admin API's and `links()`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub name: String,
    /// The bound listen address (the real port when `:0` was asked).
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub upstream_toxics: Toxics,
    pub downstream_toxics: Toxics,
    pub stats: LinkStats,
}

/// The state a link shares between its handle, its listener and its
/// connections.
#[derive(Debug)]
pub(crate) struct LinkShared {
    pub(crate) name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) upstream: SocketAddr,
    upstream_toxics: watch::Sender<Toxics>,
    downstream_toxics: watch::Sender<Toxics>,
    pub(crate) counters: LinkCounters,
    /// Cancelled by `reset()`; connections clone the one in place when they start.
    reset: Mutex<CancellationToken>,
}

impl LinkShared {
    fn toxics_sender(&self, dir: Direction) -> &watch::Sender<Toxics> {
        match dir {
            Direction::Upstream => &self.upstream_toxics,
            Direction::Downstream => &self.downstream_toxics,
        }
    }

    /// A receiver of one direction's toxics, for a connection's pump.
    pub(crate) fn toxics_receiver(&self, dir: Direction) -> watch::Receiver<Toxics> {
        self.toxics_sender(dir).subscribe()
    }

    /// The reset switch a connection starting now obeys.
    fn reset_token(&self) -> CancellationToken {
        self.reset
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// A handle to one link of a [`FaultProxy`](super::FaultProxy). Cheap to
/// clone; every change takes effect at once, on open connections too.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    shared: Arc<LinkShared>,
}

impl LinkHandle {
    /// The link's unique name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Where the link listens (the bound address, with the real port).
    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// Where the link connects to.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Replaces one direction's toxics. A bandwidth cap of `Some(0)` lets no
    /// byte through (the admin API refuses it; use `blackhole` to say so).
    pub fn set_toxics(&self, dir: Direction, t: Toxics) {
        debug!(link = %self.shared.name, dir = ?dir, toxics = ?t, "Toxics set.");
        self.shared.toxics_sender(dir).send_replace(t);
    }

    /// One direction's toxics now.
    pub fn toxics(&self, dir: Direction) -> Toxics {
        self.shared.toxics_sender(dir).borrow().clone()
    }

    /// Partitions both directions: no byte crosses until [`heal`](Self::heal);
    /// bytes in flight are held, not dropped; new connections are held before
    /// they reach the upstream.
    pub fn partition(&self) {
        self.partition_one_way(Direction::Upstream);
        self.partition_one_way(Direction::Downstream);
    }

    /// Partitions one direction only: bytes already flowing the other way
    /// keep flowing, but a new connection is held until heal (a TCP
    /// handshake needs both directions).
    pub fn partition_one_way(&self, dir: Direction) {
        info!(link = %self.shared.name, dir = ?dir, "Link partitioned.");
        self.shared
            .toxics_sender(dir)
            .send_modify(|t| t.blackhole = true);
    }

    /// Clears the partition in both directions; latency and the other
    /// toxics stay as they are.
    pub fn heal(&self) {
        info!(link = %self.shared.name, "Link healed.");
        for dir in [Direction::Upstream, Direction::Downstream] {
            self.shared
                .toxics_sender(dir)
                .send_modify(|t| t.blackhole = false);
        }
    }

    /// Closes every open connection of the link abruptly (TCP RST to both
    /// ends), now. New connections are accepted as before.
    pub fn reset(&self) {
        let mut reset = self
            .shared
            .reset
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reset.cancel();
        *reset = CancellationToken::new();
        info!(link = %self.shared.name, "Link reset: open connections closed.");
    }

    /// The link's counters now.
    pub fn stats(&self) -> LinkStats {
        self.shared.counters.snapshot()
    }

    /// Everything about the link now.
    pub fn status(&self) -> LinkStatus {
        LinkStatus {
            name: self.shared.name.clone(),
            listen: self.shared.listen,
            upstream: self.shared.upstream,
            upstream_toxics: self.toxics(Direction::Upstream),
            downstream_toxics: self.toxics(Direction::Downstream),
            stats: self.stats(),
        }
    }
}

/// Checks a link spec before anything is bound.
pub(crate) fn validate_spec(spec: &LinkSpec) -> Result<(), ProxyError> {
    if spec.name.trim().is_empty() {
        return Err(ProxyError::InvalidLink {
            name: spec.name.clone(),
            reason:
                "the name is empty; give it a unique name such as \"beijing->shanghai:postgres\""
                    .into(),
        });
    }
    if spec.name.chars().any(char::is_control) {
        return Err(ProxyError::InvalidLink {
            name: spec.name.clone(),
            reason: "the name contains control characters; use printable ones".into(),
        });
    }
    validate_toxics(&spec.name, Direction::Upstream, &spec.upstream_toxics)?;
    validate_toxics(&spec.name, Direction::Downstream, &spec.downstream_toxics)
}

/// Checks toxics the admin API or a spec brings.
pub(crate) fn validate_toxics(
    link: &str,
    direction: Direction,
    t: &Toxics,
) -> Result<(), ProxyError> {
    if t.bandwidth_bytes_per_sec == Some(0) {
        return Err(ProxyError::InvalidToxics {
            link: link.to_owned(),
            direction,
            reason: "bandwidth_bytes_per_sec is 0; use null for no cap, or blackhole to let nothing through".into(),
        });
    }
    Ok(())
}

/// Binds a link's listener and starts its accept loop.
pub(crate) async fn start(
    spec: LinkSpec,
    stop: CancellationToken,
    task: TaskToken,
) -> Result<LinkHandle, ProxyError> {
    let bind_error = |source| ProxyError::Bind {
        what: format!("link {:?}", spec.name),
        addr: spec.listen,
        source,
    };
    let listener = TcpListener::bind(spec.listen).await.map_err(bind_error)?;
    let listen = listener.local_addr().map_err(bind_error)?;
    let shared = Arc::new(LinkShared {
        name: spec.name,
        listen,
        upstream: spec.upstream,
        upstream_toxics: watch::Sender::new(spec.upstream_toxics),
        downstream_toxics: watch::Sender::new(spec.downstream_toxics),
        counters: LinkCounters::default(),
        reset: Mutex::new(CancellationToken::new()),
    });
    info!(link = %shared.name, %listen, upstream = %shared.upstream, "Link listening.");
    tokio::spawn(accept_loop(Arc::clone(&shared), listener, stop, task));
    Ok(LinkHandle { shared })
}

/// Accepts clients until the proxy stops; one task per connection.
async fn accept_loop(
    shared: Arc<LinkShared>,
    listener: TcpListener,
    stop: CancellationToken,
    task: TaskToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                let reset = shared.reset_token();
                tokio::spawn(connection::serve(
                    Arc::clone(&shared),
                    client,
                    peer,
                    stop.clone(),
                    reset,
                    task.clone(),
                ));
            }
            Err(error) => {
                warn!(link = %shared.name, %error, "Accept failed; retrying shortly.");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
    debug!(link = %shared.name, "Listener closed.");
}
