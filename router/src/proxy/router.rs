//! The request path's state: the router shared by every connection
//! ([`Router`]), each data-plane thread's own ([`Worker`]), the facts of the
//! connection a request came on ([`ConnInfo`]), and a request's outcome
//! ([`Routed`]; [`Failed`] for an answer of the router's own).
//!
//! The phases (`admit`, `route`, `message`, `forward`, `write`, `upgrade`)
//! are methods on these, each in its own module; the path that strings them
//! together is the parent's (`proxy`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::Response;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use ezone_topology::{Snapshot, Watcher};

use super::error::{Kind, ProxyError};
use crate::access_log::AccessLog;
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::metrics::{Metrics, ReasonLabels, RequestStats};
use crate::policy::decide::{Policy, ShardRef};
use crate::policy::headers;
use crate::policy::hold::HoldQueue;
use crate::upstream::body::Body;
use crate::upstream::client::{Upstream, UpstreamClient};
use crate::upstream::endpoints::{Endpoints, RetryBudget};

/// Facts about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The peer's address as a header value (for `X-Forwarded-For`), made
    /// once per connection rather than once per request.
    pub(super) peer_value: Option<HeaderValue>,
    /// On the peer listener (`[peer_tls]`): the site the connection's
    /// verified client certificate names. `None` on the public listeners.
    pub peer_site: Option<Arc<str>>,
}

impl ConnInfo {
    pub fn new(peer: Option<SocketAddr>, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            tls,
            peer_value: peer.and_then(|p| HeaderValue::from_str(&p.ip().to_string()).ok()),
            peer_site: None,
        }
    }

    /// A connection on the peer listener from a router of `site` (its
    /// client certificate verified).
    pub fn from_peer_router(peer: Option<SocketAddr>, site: Arc<str>) -> ConnInfo {
        ConnInfo {
            peer_site: Some(site),
            ..ConnInfo::new(peer, true)
        }
    }
}

/// The router: shared by every connection.
pub struct Router {
    pub(crate) cfg: RouterConfig,
    pub(crate) policy: Policy,
    pub(crate) watcher: Watcher,
    pub(crate) metrics: Metrics,
    /// For health checks (control plane); requests use a [`Worker`]'s client.
    health_client: Client<HttpConnector, Body>,
    pub(crate) endpoints: Endpoints,
    pub(super) holds: HoldQueue,
    /// `X-Ezone-Site` for requests to this site's upstreams.
    pub(super) site_value: Option<HeaderValue>,
    /// `routing.peer_secret` as a header value (validated as one).
    pub(super) peer_secret: Option<HeaderValue>,
    /// `[peer_tls]`: this router's certificate and the CA, for dialing
    /// peers (set by `RunningRouter::start`, which loads the files). With
    /// it, a request is believed as a peer router's only on the peer
    /// listener.
    pub(crate) peer_tls: Option<crate::tls::peer::PeerTls>,
    /// The routing key fields (the `[[keys]]` header sources): each may
    /// appear once in a request, and `Connection` cannot remove them.
    pub(super) key_headers: Vec<http::HeaderName>,
    /// `[access_log]`, if set (its writer is started with the router).
    pub(crate) access_log: Option<AccessLog>,
}

/// A request's outcome.
pub(super) struct Routed {
    /// The answer: the upstream's, or the router's own.
    pub response: Response<Body>,
    /// The site it was routed to; `None` if it went nowhere (refused, or
    /// answered by the router).
    pub site: Option<String>,
    /// The shard it was routed by (for the metrics and logs).
    pub shard: Option<ShardRef>,
    /// The endpoint it was sent to last, if any (for the access log).
    pub upstream: Option<Arc<Upstream>>,
}

impl Routed {
    /// An answer of the router's own, to a request that went nowhere.
    pub(super) fn nowhere(response: Response<Body>) -> Routed {
        Routed {
            response,
            site: None,
            shard: None,
            upstream: None,
        }
    }
}

/// A request the router answers with an error, and how far it got: the site
/// it was going to and the shard it was routed by, if it got that far.
pub(super) struct Failed {
    pub error: ProxyError,
    pub site: Option<String>,
    pub shard: Option<ShardRef>,
}

impl Failed {
    /// Before a site was chosen (the shard, if it was known).
    pub(super) fn at(error: impl Into<ProxyError>, shard: Option<ShardRef>) -> Failed {
        Failed {
            error: error.into(),
            site: None,
            shard,
        }
    }
}

/// One data-plane thread's own state: its upstream connections, its retry
/// budget and its handles on the request metrics. Each worker has one, so
/// nothing here is shared between threads on the request path.
pub struct Worker {
    pub router: Arc<Router>,
    pub(crate) client: UpstreamClient,
    pub(super) budget: RetryBudget,
    pub(super) stats: RequestStats,
    /// The router's access log, behind this worker's own reference count:
    /// each request takes a reference, and a shared count would be one
    /// more cache line every worker writes per request.
    pub(super) access_log: Option<Arc<AccessLog>>,
    /// The watcher's snapshot last seen, and this worker's own copy of it.
    /// Every request holds a snapshot while it is in flight; cloning the
    /// watcher's `Arc` would have every worker increment and decrement one
    /// shared counter per request (a cache line bouncing between cores).
    /// The copy is taken once per topology change, and its counter is only
    /// ever touched by this worker's thread.
    snap: std::sync::Mutex<Option<(Arc<Snapshot>, Arc<Snapshot>)>>,
}

impl Worker {
    /// Worker number `index` of `router`.
    pub fn new(router: Arc<Router>, index: usize) -> Worker {
        Worker {
            client: UpstreamClient::new(
                &router.cfg,
                router.metrics.upstream_errors.clone(),
                router.peer_tls.clone(),
            ),
            budget: RetryBudget::new(router.cfg.upstream.retry_budget_percent),
            stats: RequestStats::new(index),
            access_log: router.access_log.clone().map(Arc::new),
            router,
            snap: std::sync::Mutex::new(None),
        }
    }

    /// The topology in use, as this worker's own copy (see [`Worker::snap`]).
    pub(super) fn snapshot(&self) -> Option<Arc<Snapshot>> {
        let watcher = &self.router.watcher;
        let mut cache = self.snap.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seen, own)) = &*cache {
            if watcher.is_current(seen) {
                return Some(own.clone());
            }
        }
        let seen = watcher.current()?;
        let own = Arc::new(Snapshot::clone(&seen));
        *cache = Some((seen, own.clone()));
        Some(own)
    }
}

impl Router {
    pub fn new(cfg: RouterConfig, watcher: Watcher) -> Router {
        let policy = Policy {
            site: cfg.site.clone(),
            on_missing_key: cfg.routing.on_missing_key,
            on_unknown_city: cfg.routing.on_unknown_city,
        };
        let key_headers = cfg
            .keys
            .iter()
            .filter_map(|k| match k {
                crate::policy::extract::KeySource::Header { name, .. } => {
                    http::HeaderName::from_bytes(name.as_bytes()).ok()
                }
                _ => None,
            })
            .collect();
        Router {
            key_headers,
            access_log: None,
            site_value: HeaderValue::from_str(&cfg.site).ok(),
            peer_secret: cfg.routing.peer_secret.as_ref().and_then(|s| {
                let mut v = HeaderValue::from_str(&s.0).ok()?;
                v.set_sensitive(true);
                Some(v)
            }),
            health_client: crate::upstream::client::legacy_client(
                &cfg,
                cfg.upstream.protocol == UpstreamProtocol::H2c,
            ),
            peer_tls: None,
            holds: HoldQueue::new(cfg.limits.max_held),
            endpoints: Endpoints::default(),
            metrics: Metrics::with_workers(cfg.worker_count()),
            policy,
            watcher,
            cfg,
        }
    }

    pub fn watcher(&self) -> &Watcher {
        &self.watcher
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(crate) fn health_client(&self) -> &Client<HttpConnector, Body> {
        &self.health_client
    }

    /// `routing.peer_secret`, if set.
    pub(crate) fn peer_secret(&self) -> Option<&HeaderValue> {
        self.peer_secret.as_ref()
    }

    /// Whether this router can tell other sites' routers from clients
    /// (`[peer_tls]` or `routing.peer_secret`): only then does it forward
    /// to them, or believe anyone's hop list.
    pub(crate) fn knows_peers(&self) -> bool {
        self.cfg.peer_tls.is_some() || self.peer_secret.is_some()
    }

    /// Whether the request's hop information comes from a peer router.
    /// With `[peer_tls]`: it came on the peer listener, whose client
    /// certificate named a site, and its hop list ends with that site (the
    /// forwarding router appends its own). Otherwise: it carries the
    /// shared secret ([`headers::from_peer`]). On the public listeners with
    /// `[peer_tls]`, never.
    pub(super) fn is_from_peer(&self, headers: &http::HeaderMap, conn: &ConnInfo) -> bool {
        if self.cfg.peer_tls.is_some() {
            return conn
                .peer_site
                .as_deref()
                .is_some_and(|site| headers::last_hop(headers) == Some(site));
        }
        headers::from_peer(headers, self.peer_secret.as_ref())
    }

    /// How long a write may be held (`routing.write_hold_ms`, else the
    /// topology's).
    pub(super) fn hold_deadline(&self, snap: &Snapshot) -> Duration {
        Duration::from_millis(
            self.cfg
                .routing
                .write_hold_ms
                .unwrap_or(snap.topology.settings.write_hold_ms),
        )
    }

    /// The answer to an error: counted (`ezone_router_rejected_total`, and
    /// `ezone_router_loops_total` for a loop) and mapped
    /// ([`ProxyError::answer`]).
    pub(super) fn answer(&self, error: &ProxyError) -> Response<Body> {
        if let Some(reason) = error.label() {
            self.metrics
                .rejected
                .get_or_create(&ReasonLabels {
                    reason: reason.to_string(),
                })
                .inc();
        }
        if matches!(error.kind, Kind::Loop { .. }) {
            self.metrics.loops.inc();
        }
        tracing::debug!(status = error.status().as_u16(), fault = ?error.whose_fault, retry = ?error.retry, reason = %error.reason(), "The router answers with an error.");
        error.answer()
    }

    /// A failed request's outcome.
    pub(super) fn failed(&self, f: Failed) -> Routed {
        Routed {
            response: self.answer(&f.error),
            site: f.site,
            shard: f.shard,
            upstream: None,
        }
    }
}
