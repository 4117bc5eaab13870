//! One worker's handles on upstream addresses ([`Upstream`]) and their idle
//! connections, of both kinds: hyper's (`SendRequest`) and the router's own
//! (`RawConn`).
//!
//! Generic over `B`, the request body hyper's connections carry, the way
//! hyper's `SendRequest<B>` is: the router's body type (`super::body`)
//! itself carries a pooled connection back here, so the pool is written for
//! any body and the body module names it with its own (`Upstream<Body>`,
//! which the client calls `super::client::Upstream`). This module needs
//! neither.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::endpoints::{Endpoint, Endpoints, InFlight};
use super::io::RawConn;
use crate::metrics::EndpointLabels;
use crate::tls::peer::PeerTls;

/// The most idle connections kept per upstream address, per worker (of
/// each kind).
pub const MAX_IDLE_PER_ADDR: usize = 1024;

/// An idle connection, and since when.
pub(super) struct Idle<C> {
    pub(super) conn: C,
    pub(super) since: Instant,
}

impl<C> Idle<C> {
    pub(super) fn new(conn: C) -> Idle<C> {
        Idle {
            conn,
            since: Instant::now(),
        }
    }
}

/// One address's idle connections (most recently used last).
pub(super) struct Idles<B> {
    /// hyper's (requests with a body).
    pub(super) hyper: Vec<Idle<SendRequest<B>>>,
    /// The router's own (requests without one).
    pub(super) raw: Vec<Idle<RawConn>>,
}

impl<B> Default for Idles<B> {
    fn default() -> Self {
        Idles {
            hyper: Vec::new(),
            raw: Vec::new(),
        }
    }
}

/// How an upstream's failures after its response head are counted: a
/// response body that stalls fails the way an exchange does before it.
pub(crate) struct Faults {
    /// `timeouts.upstream_read_ms`.
    read_timeout: Duration,
    eject_after: u32,
    eject_for: Duration,
    /// `ezone_router_upstream_errors_total`.
    errors: Family<EndpointLabels, Counter>,
}

impl Faults {
    pub(super) fn new(
        read_timeout: Duration,
        eject_after: u32,
        eject_for: Duration,
        errors: Family<EndpointLabels, Counter>,
    ) -> Faults {
        Faults {
            read_timeout,
            eject_after,
            eject_for,
            errors,
        }
    }
}

/// How connections to an upstream are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dial {
    /// Plain TCP: this site's upstreams, and peer routers without
    /// `[peer_tls]`.
    Plain,
    /// TLS to a peer router, which must prove to be of the site this name
    /// names (`<site>.<domain>`).
    Peer(ServerName<'static>),
    /// A peer router that must be dialed over TLS but cannot be (why):
    /// its site's name makes no DNS name, or no peer TLS config is loaded.
    /// Never dialed, and never in clear text.
    Undialable(&'static str),
}

/// How a request wants its endpoint dialed.
#[derive(Clone, Copy)]
pub(super) enum Want<'a> {
    /// Plain TCP.
    Plain,
    /// Over TLS as a peer router (`None`: peer TLS is configured but not
    /// loaded here).
    Peer(Option<&'a PeerTls>),
}

/// One worker's view of one upstream address: the shared endpoint state
/// (health, ejection), this worker's requests in flight to it (for the
/// balancing; see [`super::endpoints::pick`]), and its idle connections.
pub struct Upstream<B> {
    pub endpoint: Arc<Endpoint>,
    in_flight: AtomicU32,
    idle: Mutex<Idles<B>>,
    /// The site it was first picked for (its failures' label; for a peer
    /// router dialed over TLS, the site it must prove to be).
    pub(super) site: String,
    pub(super) dial: Dial,
    faults: Arc<Faults>,
}

impl<B> Upstream<B> {
    fn new(endpoint: Arc<Endpoint>, site: &str, dial: Dial, faults: Arc<Faults>) -> Upstream<B> {
        Upstream {
            endpoint,
            in_flight: AtomicU32::new(0),
            idle: Mutex::new(Idles::default()),
            site: site.to_string(),
            dial,
            faults,
        }
    }

    /// Whether this handle is made the way a request for `site` needs
    /// (`tls`: as a peer router over TLS).
    fn fits(&self, site: &str, tls: bool) -> bool {
        match &self.dial {
            Dial::Plain => !tls,
            Dial::Peer(_) | Dial::Undialable(_) => tls && self.site == site,
        }
    }

    pub fn addr(&self) -> &str {
        &self.endpoint.addr
    }

    /// How long its response body may keep the router waiting.
    pub(crate) fn read_timeout(&self) -> Duration {
        self.faults.read_timeout
    }

    /// Its response body stalled: counted against it as an exchange that
    /// fails before the head is (`ezone_router_upstream_errors_total`,
    /// passive ejection).
    pub(crate) fn stalled(&self) {
        let f = &self.faults;
        tracing::warn!(site = %self.site, endpoint = %self.endpoint.addr, timeout = ?f.read_timeout, "Upstream stalled in the middle of a response body; cutting the answer off.");
        f.errors
            .get_or_create(&EndpointLabels {
                site: self.site.clone(),
                endpoint: self.endpoint.addr.clone(),
            })
            .inc();
        self.endpoint.record_failure(f.eject_after, f.eject_for);
    }

    /// This worker's requests in flight to it.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start(&self) -> InFlight<'_> {
        InFlight::start(&self.in_flight)
    }

    pub(super) fn idle(&self) -> MutexGuard<'_, Idles<B>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker's upstreams by address, as of an [`Endpoints::generation`].
pub(super) struct Upstreams<B> {
    pub(super) generation: u64,
    pub(super) by_addr: HashMap<String, Arc<Upstream<B>>>,
}

impl<B> Default for Upstreams<B> {
    fn default() -> Self {
        Upstreams {
            generation: 0,
            by_addr: HashMap::new(),
        }
    }
}

impl<B> Upstreams<B> {
    /// The handle on `addr` for `site`, dialed as `want`s.
    pub(super) fn get(
        &mut self,
        endpoints: &Endpoints,
        site: &str,
        addr: &str,
        want: Want<'_>,
        faults: &Arc<Faults>,
    ) -> Arc<Upstream<B>> {
        if let Some(u) = self.by_addr.get(addr) {
            if u.fits(site, matches!(want, Want::Peer(_))) {
                return u.clone();
            }
        }
        let dial = match want {
            Want::Plain => Dial::Plain,
            Want::Peer(Some(t)) => t.server_name(site).map_or(
                Dial::Undialable("the site's name makes no DNS name for its certificate"),
                Dial::Peer,
            ),
            Want::Peer(None) => Dial::Undialable("no peer TLS configuration is loaded"),
        };
        let u = Arc::new(Upstream::new(
            endpoints.get(addr),
            site,
            dial,
            faults.clone(),
        ));
        self.by_addr.insert(addr.to_string(), u.clone());
        u
    }
}

/// A hyper connection lent to one exchange; the response body that carries
/// it (`super::body`) checks it in once read to its end.
pub(crate) struct Checkin<B> {
    tx: SendRequest<B>,
    slot: Arc<Upstream<B>>,
}

impl<B> Checkin<B> {
    pub(super) fn new(tx: SendRequest<B>, slot: Arc<Upstream<B>>) -> Checkin<B> {
        Checkin { tx, slot }
    }

    /// Puts the connection back into its pool (unless the upstream has
    /// closed it, or the pool is full).
    pub(crate) fn checkin(self) {
        if self.tx.is_closed() {
            return;
        }
        let mut idle = self.slot.idle();
        if idle.hyper.len() < MAX_IDLE_PER_ADDR {
            idle.hyper.push(Idle::new(self.tx));
        }
    }
}
