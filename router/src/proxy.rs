//! The request path: one function from a client request to a response.
//!
//! ```text
//! request ─▶ limits ─▶ loop check ─▶ extract key ─▶ decide ─┬▶ Local  ─▶ pick upstream (p2c) ─▶ forward
//!                                                           ├▶ Remote ─▶ the home site's router ─▶ forward
//!                                                           ├▶ Hold   ─▶ wait for the flip ─▶ decide again
//!                                                           └▶ Reject ─▶ 4xx/5xx with the reason
//! ```
//!
//! The topology is read with one lock-free load per request; bodies stream
//! both ways; errors are classified by whose fault they are (client: 4xx,
//! or 501 for a transfer coding the router does not implement; upstream:
//! 502/504; ourselves/topology: 503). A client's protocol error (a head
//! refused by [`headers::check_request`], a request body that does not
//! parse or is cut off) is never answered 502 and never counted against an
//! upstream. No answer to a client names an internal address: which
//! endpoint failed is in the log.
//!
//! **The shape of the hot path.** Everything up to the choice of where to
//! send is synchronous ([`Router::plan`]); only forwarding awaits. The rare
//! paths that must wait before forwarding (a held write, a topology behind a
//! peer's epoch) and upgrades are boxed. This keeps the future a request
//! lives in small: a future is moved (copied whole) a few times on its way
//! into hyper's connection task and each nested `async fn` keeps its own
//! copy of its arguments, so a deep chain of large futures cost more in
//! `memcpy` (measured: ~4% of the router's CPU) than the decision itself.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::Either;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use ezone_topology::{Snapshot, Watcher};

use crate::access_log::{AccessLog, Pending};
use crate::body::{self, Body, BodyFault, BodyWatch, RequestBody};
use crate::client::{Upstream, UpstreamClient, UpstreamError};
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::decide::{decide, is_write, Decision, Policy, ShardRef};
use crate::extract::{self, extract};
use crate::headers;
use crate::hold::{Held, HoldQueue};
use crate::metrics::{
    BounceLabels, BounceOutcome, EndpointLabels, Metrics, ReasonLabels, RequestStats, SiteLabels,
};
use crate::upstream::{Endpoints, RetryBudget};

/// Facts about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    pub tls: bool,
    /// The peer's address as a header value (for `X-Forwarded-For`), made
    /// once per connection rather than once per request.
    peer_value: Option<HeaderValue>,
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
    holds: HoldQueue,
    /// `X-Ezone-Site` for requests to this site's upstreams.
    site_value: Option<HeaderValue>,
    /// `routing.peer_secret` as a header value (validated as one).
    peer_secret: Option<HeaderValue>,
    /// `[peer_tls]`: this router's certificate and the CA, for dialing
    /// peers (set by `RunningRouter::start`, which loads the files). With
    /// it, a request is believed as a peer router's only on the peer
    /// listener.
    pub(crate) peer_tls: Option<crate::peer_tls::PeerTls>,
    /// The routing key fields (the `[[keys]]` header sources): each may
    /// appear once in a request, and `Connection` cannot remove them.
    key_headers: Vec<http::HeaderName>,
    /// `[access_log]`, if set (its writer is started with the router).
    pub(crate) access_log: Option<AccessLog>,
}

/// A request's outcome: the response, the site it went to (`none` if it
/// went nowhere), the shard it was routed by (for the metrics and logs) and
/// the endpoint it was sent to last, if any (for the access log).
type Routed = (
    Response<Body>,
    String,
    Option<ShardRef>,
    Option<Arc<Upstream>>,
);

/// What [`Router::plan`] decided, without waiting for anything.
enum Step<'a> {
    /// Answered already.
    Answer(Routed),
    /// Send it on.
    Forward(Forward),
    /// It must wait first (a held write, a topology behind a peer's epoch),
    /// or it is an upgrade: the rare paths, boxed so the common one stays
    /// small.
    Slow(Pin<Box<dyn Future<Output = Routed> + Send + 'a>>),
}

/// What is sent upstream.
enum Message {
    /// A request without a body to an HTTP/1 upstream: its head, encoded
    /// once, for the router's own exchange (a retry resends these bytes).
    Encoded(BytesMut),
    /// Any other: for hyper's client. Boxed: the less common case, and a
    /// larger one (it would make every request's future larger).
    Hyper(Box<HyperMessage>),
}

/// A request for hyper's client.
struct HyperMessage {
    /// The head as it goes upstream; `None` once sent for the last time.
    head: Option<http::request::Parts>,
    /// The streamed body, if the request has one.
    body: Option<Body>,
    /// A body read whole (see [`Router::write`]): sent with every attempt.
    replay: Option<Bytes>,
    /// Whether reading the streamed body failed (the client's fault).
    watch: Option<BodyWatch>,
}

impl HyperMessage {
    /// The request for the next attempt; the head is kept for another if
    /// `again`.
    fn request(&mut self, again: bool) -> Option<Request<Body>> {
        let head = if again {
            self.head.clone()
        } else {
            self.head.take()
        }?;
        let body = self
            .body
            .take()
            .or_else(|| self.replay.clone().map(body::full))
            .unwrap_or_else(body::empty);
        Some(Request::from_parts(head, body))
    }
}

/// A request ready to be sent upstream.
struct Forward {
    message: Message,
    /// It is a HEAD request (its response has no body).
    head_request: bool,
    target: Target,
    /// No body: it may be sent again (a body is streamed, never buffered).
    resendable: bool,
    idempotent: bool,
}

/// Where a request is sent.
struct Target {
    site: String,
    shard: Option<ShardRef>,
    /// The snapshot the decision was made on: addresses are borrowed from it
    /// instead of copied for every request.
    snap: Arc<Snapshot>,
    remote: bool,
}

impl Target {
    /// Candidate addresses (`host:port`): the site's upstreams, or its
    /// routers (borrowed unless the site lists more than one router).
    fn addrs(&self) -> Cow<'_, [String]> {
        match self.snap.topology.sites.get(&self.site) {
            Some(s) if self.remote && s.more_routers.is_empty() => {
                Cow::Borrowed(std::slice::from_ref(&s.router))
            }
            Some(s) if self.remote => Cow::Owned(s.routers().cloned().collect()),
            Some(s) => Cow::Borrowed(&s.upstreams),
            None => Cow::Borrowed(&[]),
        }
    }
}

/// One data-plane thread's own state: its upstream connections, its retry
/// budget and its handles on the request metrics. Each worker has one, so
/// nothing here is shared between threads on the request path.
pub struct Worker {
    pub router: Arc<Router>,
    pub(crate) client: UpstreamClient,
    budget: RetryBudget,
    stats: RequestStats,
    /// The router's access log, behind this worker's own reference count:
    /// each request takes a reference, and a shared count would be one
    /// more cache line every worker writes per request.
    access_log: Option<Arc<AccessLog>>,
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
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
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

    /// Handles one request on this worker. Never fails: every problem
    /// becomes a response.
    // Not an `async fn`: that would keep a second copy of the request in
    // the future (see the module docs).
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        async move {
            use tracing::Instrument;
            let started = Instant::now();
            let router = &*self.router;
            // What the access log needs of the request, taken before it
            // moves on; dropped unanswered (the client went away), it still
            // sends its line.
            let pending = self.access_log.as_ref().map(|log| {
                Pending::new(
                    log.clone(),
                    started.into_std(),
                    &req,
                    conn.peer,
                    &router.cfg.keys,
                )
            });
            let span = tracing::debug_span!(
                "request",
                site = %router.policy.site,
                from_site = conn.peer_site.as_deref(),
                method = %req.method(),
                shard = tracing::field::Empty,
                epoch = tracing::field::Empty,
                to = tracing::field::Empty,
            );
            // The step is turned into one future before awaiting, so that
            // it is not kept alongside it.
            let routed = match span.in_scope(|| router.plan(req, conn, &self)) {
                Step::Answer(routed) => Either::Left(std::future::ready(routed)),
                Step::Forward(f) => Either::Right(Either::Left(router.forward(f, &self))),
                Step::Slow(f) => Either::Right(Either::Right(f)),
            };
            let (resp, site, shard, upstream) = routed.instrument(span.clone()).await;
            if !span.is_disabled() {
                if let Some(s) = shard {
                    span.record("shard", s.id);
                    span.record("epoch", s.epoch);
                }
                span.record("to", site.as_str());
                span.in_scope(|| {
                    tracing::debug!(status = resp.status().as_u16(), "Request answered.")
                });
            }
            if is_fenced(&resp) {
                router
                    .metrics
                    .fence_bounces
                    .get_or_create(&BounceLabels {
                        outcome: BounceOutcome::Refused,
                    })
                    .inc();
            }
            self.stats.record(
                &router.metrics,
                &site,
                shard.map(|s| s.id),
                resp.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            match pending {
                Some(p) => p.answered(resp, site, shard, upstream),
                None => resp,
            }
        }
    }
}

fn error_response(status: StatusCode, reason: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(format!("ezone: {reason}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The request's `Content-Length`, if it has one that is a number.
fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

fn has_body(req: &Request<RequestBody>) -> bool {
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match content_length(req.headers()) {
        Some(n) => n > 0,
        // HTTP/2 requests may stream a body without a length.
        None => req.version() == http::Version::HTTP_2 && !req.body().is_end_stream(),
    }
}

/// Whether a request without a body goes over the router's own HTTP/1
/// exchange (see `client`): not CONNECT, to an HTTP/1 upstream or a peer
/// router. (Its `Host` is always written: see [`headers::forwarded_fields`].)
fn own_exchange(parts: &http::request::Parts, target: &Target, worker: &Worker) -> bool {
    parts.method != Method::CONNECT && (target.remote || !worker.client.upstreams_h2())
}

/// The most times one write is sent again after a fence refused it (a
/// second refusal means the shard moved again, or away, meanwhile).
const MAX_FENCE_BOUNCES: u32 = 2;

/// An upstream's answer that the database fence refused the write (nothing
/// of it committed).
fn is_fenced(resp: &Response<Body>) -> bool {
    resp.status() == StatusCode::SERVICE_UNAVAILABLE
        && resp.headers().contains_key(headers::X_EZONE_FENCED)
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
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
                crate::extract::KeySource::Header { name, .. } => {
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
            health_client: crate::client::legacy_client(
                &cfg,
                cfg.upstream.protocol == UpstreamProtocol::H2c,
            ),
            peer_tls: None,
            holds: HoldQueue::new(cfg.limits.max_held),
            endpoints: Endpoints::default(),
            metrics: Metrics::with_workers(crate::server::worker_count(&cfg)),
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
    fn is_from_peer(&self, headers: &http::HeaderMap, conn: &ConnInfo) -> bool {
        if self.cfg.peer_tls.is_some() {
            return conn
                .peer_site
                .as_deref()
                .is_some_and(|site| headers::last_hop(headers) == Some(site));
        }
        headers::from_peer(headers, self.peer_secret.as_ref())
    }

    fn hold_deadline(&self, snap: &Snapshot) -> Duration {
        Duration::from_millis(
            self.cfg
                .routing
                .write_hold_ms
                .unwrap_or(snap.topology.settings.write_hold_ms),
        )
    }

    fn count_fallback(&self, fallback: Option<crate::decide::Fallback>) {
        if let Some(f) = fallback {
            self.metrics
                .fallbacks
                .get_or_create(&ReasonLabels {
                    reason: f.as_str().into(),
                })
                .inc();
        }
    }

    fn reject(&self, status: StatusCode, reason: &str, label: &str) -> Response<Body> {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels {
                reason: label.to_string(),
            })
            .inc();
        error_response(status, reason)
    }

    /// The answer to a request whose head [`headers::check_request`]
    /// refused; it closes the connection if the body's framing is in doubt.
    fn refuse(&self, refusal: &headers::Refusal) -> Response<Body> {
        let mut r = self.reject(refusal.status(), &refusal.to_string(), refusal.label());
        if refusal.closes() {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }

    /// The answer to a request whose body could not be read (the client's
    /// fault: nothing is counted against the upstream). hyper closes an
    /// HTTP/1 connection whose request body failed or was left unread after
    /// the answer: what is left of it cannot be told from a next request.
    fn body_refusal(&self, fault: &BodyFault) -> Response<Body> {
        match fault {
            BodyFault::TooLarge => self.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body larger than {} bytes",
                    self.cfg.limits.max_body_bytes
                ),
                "body_too_large",
            ),
            BodyFault::Broken(why) => self.reject(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read ({why}); send a well-formed body (chunk sizes are hexadecimal digits)"),
                "bad_body",
            ),
            BodyFault::TimedOut { after, setting } => {
                let mut r = self.reject(
                    StatusCode::REQUEST_TIMEOUT,
                    &format!("the request body did not arrive in time ({setting}: {after:?}); send the body right after the head, without pauses"),
                    "body_timeout",
                );
                // The rest of the body may still come: it cannot be told
                // from a next request.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                r
            }
        }
    }

    /// Everything up to where the request goes, without waiting: limits,
    /// the loop check, the key and the decision.
    fn plan<'a>(
        &'a self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
    ) -> Step<'a> {
        let none = |r| Step::Answer((r, "none".to_string(), None, None));
        // The client's protocol errors first: nothing else is looked at.
        if let Err(refusal) =
            headers::check_request(req.version(), req.uri(), req.headers(), &self.key_headers)
        {
            return none(self.refuse(&refusal));
        }
        if let Some(what) = extract::repeated(&self.cfg.keys, req.uri(), req.headers()) {
            return none(self.refuse(&headers::Refusal::RepeatedKey(what)));
        }
        let Some(snap) = worker.snapshot() else {
            return none(self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "no topology loaded yet; see /readyz",
                "no_topology",
            ));
        };
        // Limits that need no upstream. hyper enforces the header count and
        // a buffer of at least 8 KiB; the configured head size is checked here.
        let head_bytes: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.uri().path_and_query().map_or(1, |p| p.as_str().len());
        if head_bytes > self.cfg.limits.max_header_bytes {
            return none(self.reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                &format!(
                    "request head is {head_bytes} bytes, over the limit of {}",
                    self.cfg.limits.max_header_bytes
                ),
                "headers_too_large",
            ));
        }
        if content_length(req.headers()).is_some_and(|n| n > self.cfg.limits.max_body_bytes) {
            return none(self.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body larger than {} bytes",
                    self.cfg.limits.max_body_bytes
                ),
                "body_too_large",
            ));
        }
        let peer = self.is_from_peer(req.headers(), &conn);
        // The peer listener is for routers' forwarded requests and probes
        // only: one whose hop list does not end with the site the client
        // certificate names is not one (and is not served as a client's,
        // which could send it back and forth unseen).
        if let (Some(site), false) = (conn.peer_site.as_deref(), peer) {
            tracing::warn!(peer = ?conn.peer, from_site = site, hops = ?headers::hops(req.headers()), "A request on the peer listener without a hop list ending with its certificate's site; refused.");
            return none(self.reject(
                StatusCode::FORBIDDEN,
                &format!(
                    "the peer listener takes requests forwarded by other sites' routers: X-Ezone-Hop must end with the site your certificate names ({site})"
                ),
                "peer_hop_mismatch",
            ));
        }
        // A peer router's health check (`health`): this router is up and has
        // a topology. Answered here, never forwarded.
        if peer && req.headers().contains_key(headers::X_EZONE_PROBE) {
            return none(error_response(
                StatusCode::OK,
                &format!(
                    "ready: site {} topology version {}",
                    self.policy.site, snap.version
                ),
            ));
        }
        if peer && headers::is_loop(req.headers(), &self.policy.site) {
            self.metrics.loops.inc();
            return none(self.reject(
                StatusCode::LOOP_DETECTED,
                &format!(
                    "routing loop: the request already passed through site {} (hops: {}); the sites' topologies disagree",
                    self.policy.site,
                    headers::hops(req.headers()).join(",")
                ),
                "loop",
            ));
        }
        // A peer router forwarded this at an epoch we have not seen yet: our
        // topology is a watch round trip behind. Wait for it rather than
        // send the request back (which the peer would answer 508).
        if let Some((shard, epoch)) = peer
            .then(|| headers::peer_decision(req.headers()))
            .flatten()
        {
            if snap
                .topology
                .shards
                .get(&shard)
                .is_some_and(|s| s.epoch < epoch)
            {
                return Step::Slow(Box::pin(
                    self.catch_up(req, conn, worker, snap, shard, epoch),
                ));
            }
        }
        self.decide_step(req, conn, worker, snap)
    }

    /// Waits (bounded) until this router's topology has the epoch a peer
    /// router decided at, then goes on as [`Self::plan`].
    async fn catch_up(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &Worker,
        snap: Arc<Snapshot>,
        shard: u32,
        epoch: u64,
    ) -> Routed {
        let deadline = self.hold_deadline(&snap);
        match crate::hold::wait_for_epoch(self.watcher.subscribe(), shard, epoch, deadline).await {
            Some(newer) => {
                self.run(self.decide_step(req, conn, worker, newer), worker)
                    .await
            }
            None => {
                let mut r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("shard {shard}: this router's topology is behind epoch {epoch} that the forwarding router used; retry shortly"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
                (r, "none".into(), None, None)
            }
        }
    }

    /// Carries out a step (on the slow paths, which may lead to another).
    async fn run(&self, step: Step<'_>, worker: &Worker) -> Routed {
        match step {
            Step::Answer(routed) => routed,
            Step::Forward(f) => self.forward(f, worker).await,
            Step::Slow(f) => f.await,
        }
    }

    /// The key, the decision against `snap`, and what follows from it.
    fn decide_step<'a>(
        &'a self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
        snap: Arc<Snapshot>,
    ) -> Step<'a> {
        let key = extract(&self.cfg.keys, req.uri(), req.headers());
        let decision = decide(&snap.topology, &self.policy, key.as_ref(), req.method());
        if let Decision::Hold { shard } = decision {
            return Step::Slow(Box::pin(self.hold(req, conn, worker, snap, shard)));
        }
        self.dispatch(decision, snap, req, conn, worker)
    }

    /// Holds a write for a frozen shard until it is released (then decides
    /// again and forwards), or the deadline passes.
    async fn hold(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &Worker,
        snap: Arc<Snapshot>,
        shard: ShardRef,
    ) -> Routed {
        let deadline = self.hold_deadline(&snap);
        match self.wait_for_release(shard, deadline).await {
            Held::Released(d) => {
                // Addresses from the topology that released it (or newer).
                let snap = self.watcher.current().unwrap_or(snap);
                self.run(self.dispatch(d, snap, req, conn, worker), worker)
                    .await
            }
            held => self.hold_refusal(&held, shard, deadline),
        }
    }

    /// Holds a write for `shard` (counted, bounded) until the topology
    /// releases it or `deadline` passes.
    async fn wait_for_release(&self, shard: ShardRef, deadline: Duration) -> Held {
        self.holds
            .hold(
                shard.id,
                deadline,
                &self.policy,
                self.watcher.subscribe(),
                &self.metrics,
            )
            .await
    }

    /// The answer to a write whose hold ended without a release.
    fn hold_refusal(&self, held: &Held, shard: ShardRef, deadline: Duration) -> Routed {
        let why = if *held == Held::Overflow {
            "too many writes held for frozen shards"
        } else {
            "the shard stayed frozen past the write-hold deadline"
        };
        let mut r = error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("shard {} is being moved: {why}; retry shortly", shard.id),
        );
        let secs = deadline.as_secs().max(1);
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        (r, "none".into(), Some(shard), None)
    }

    /// The shard a write may be sent again for after a fence refused it
    /// (see [`Self::write`]), or `None` if it is sent as any request is:
    /// reads, and writes whose body is streamed (chunked, or over
    /// `limits.replay_body_bytes`). A write for another site is kept too:
    /// the peer router resends it after a fence itself, but if one of the
    /// site's routers cannot be reached the write goes to another.
    fn replayable(&self, req: &Request<RequestBody>, target: &Target) -> Option<ShardRef> {
        if !is_write(req.method()) || req.method() == Method::CONNECT {
            return None;
        }
        let shard = target.shard?;
        if headers::wants_upgrade(req.headers())
            || req.headers().contains_key(header::TRANSFER_ENCODING)
        {
            return None;
        }
        let fits = match content_length(req.headers()) {
            Some(n) => n <= self.cfg.limits.replay_body_bytes,
            None => !has_body(req),
        };
        fits.then_some(shard)
    }

    /// A write for a shard, its body read whole first so that it can be
    /// sent again. A flip that begins while a write is on its way to the
    /// old home (the router decided before it saw the freeze) closes the
    /// fence in front of it: the database refuses it, commits nothing, and
    /// the upstream answers `503` with `X-Ezone-Fenced`. Rather than fail
    /// the write (the design's "a planned switchover fails no request"),
    /// it waits for the topology past the epoch it was decided at, is held
    /// like any write while the shard is frozen, and goes to the shard's
    /// home once the flip lands. Bounded by the write-hold deadline per
    /// wait and by [`MAX_FENCE_BOUNCES`]; past them the client gets a
    /// `503` with `Retry-After`.
    async fn write(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        mut target: Target,
        mut shard: ShardRef,
        worker: &Worker,
    ) -> Routed {
        let (parts, incoming) = req.into_parts();
        let cap = usize::try_from(self.cfg.limits.replay_body_bytes).unwrap_or(usize::MAX);
        // Between two reads `body_read_ms`; in all `request_ms`, the bound a
        // streamed body has too (a body that trickles in a byte at a time
        // just within the first bound must not hold the request for ever).
        let total = self.cfg.timeouts.request();
        let Ok(collected) =
            tokio::time::timeout(total, incoming.collect(cap, self.cfg.timeouts.body_read())).await
        else {
            let r = self.body_refusal(&BodyFault::TimedOut {
                after: total,
                setting: "timeouts.request_ms",
            });
            return (r, "none".into(), Some(shard), None);
        };
        let body = match collected {
            Ok(b) => b,
            Err(e) if e.is::<body::BodyTimeout>() => {
                let r = self.body_refusal(&BodyFault::TimedOut {
                    after: self.cfg.timeouts.body_read(),
                    setting: "timeouts.body_read_ms",
                });
                return (r, "none".into(), Some(shard), None);
            }
            Err(e) if is_body_too_large(&*e) => {
                // Content-Length said it fits; the body did not (hyper
                // enforces the length, so this is a guard, not a path).
                let r = self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "request body longer than its Content-Length",
                    "body_too_large",
                );
                return (r, "none".into(), Some(shard), None);
            }
            Err(e) => {
                let r = self.body_refusal(&BodyFault::Broken(error_chain(&*e)));
                return (r, "none".into(), Some(shard), None);
            }
        };
        let deadline = self.hold_deadline(&target.snap);
        let mut bounces = 0;
        loop {
            let remote = target.remote;
            worker.budget.deposit();
            let f = self.buffered(&parts, &body, &conn, target, worker);
            let routed = self.forward(f, worker).await;
            // A refusal from another site's router: it has resent already.
            if remote || bounces >= MAX_FENCE_BOUNCES || !is_fenced(&routed.0) {
                return routed;
            }
            bounces += 1;
            let refused_at = routed.1;
            drop(routed.0);
            let Some(snap) = crate::hold::wait_for_epoch(
                self.watcher.subscribe(),
                shard.id,
                shard.epoch + 1,
                deadline,
            )
            .await
            else {
                let mut r = error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "site {refused_at}'s database refused the write for shard {} (fenced: a move is under way, or this router's topology is stale) and no newer topology than epoch {} arrived within {deadline:?}; retry shortly",
                        shard.id, shard.epoch
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
                r.headers_mut()
                    .insert(headers::X_EZONE_FENCED, HeaderValue::from_static("1"));
                return (r, "none".into(), Some(shard), None);
            };
            let key = extract(&self.cfg.keys, &parts.uri, &parts.headers);
            let (decision, snap) =
                match decide(&snap.topology, &self.policy, key.as_ref(), &parts.method) {
                    Decision::Hold { shard: held_shard } => {
                        match self.wait_for_release(held_shard, deadline).await {
                            Held::Released(d) => (d, self.watcher.current().unwrap_or(snap)),
                            held => return self.hold_refusal(&held, held_shard, deadline),
                        }
                    }
                    d => (d, snap),
                };
            target = match self.target(decision, snap) {
                Ok(t) => t,
                Err(routed) => return routed,
            };
            shard = target.shard.unwrap_or(shard);
            self.metrics
                .fence_bounces
                .get_or_create(&BounceLabels {
                    outcome: BounceOutcome::Resent,
                })
                .inc();
            tracing::debug!(shard = shard.id, epoch = shard.epoch, to = %target.site, "Resending a write the fence refused.");
        }
    }

    /// A buffered write, ready to send (again).
    fn buffered(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        conn: &ConnInfo,
        target: Target,
        worker: &Worker,
    ) -> Forward {
        let message = if body.is_empty() && own_exchange(parts, &target, worker) {
            Message::Encoded(self.encode_head(parts, conn, &target))
        } else {
            let mut head = parts.clone();
            self.prepare_head(&mut head, conn, &target, false);
            Message::Hyper(Box::new(HyperMessage {
                head: Some(head),
                body: None,
                replay: Some(body.clone()),
                watch: None,
            }))
        };
        Forward {
            message,
            head_request: false,
            target,
            // The body is kept: it can be sent again.
            resendable: true,
            idempotent: idempotent(&parts.method),
        }
    }

    /// Where a decision sends a request, or the answer if it goes nowhere.
    // The answer is returned by value, as `Step::Answer` holds it: boxing it
    // would allocate on the refusal paths to save nothing on the hot one.
    #[allow(clippy::result_large_err)]
    fn target(&self, decision: Decision, snap: Arc<Snapshot>) -> Result<Target, Routed> {
        let target = match decision {
            Decision::Reject {
                status,
                reason,
                fallback,
            } => {
                let label = fallback.map_or("rejected", |f| f.as_str());
                return Err((
                    self.reject(status, &reason, label),
                    "none".into(),
                    None,
                    None,
                ));
            }
            Decision::Hold { shard } => {
                // `release` never yields Hold; be safe anyway.
                return Err((
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "shard is frozen"),
                    "none".into(),
                    Some(shard),
                    None,
                ));
            }
            Decision::Local {
                site,
                shard,
                fallback,
            } => {
                self.count_fallback(fallback);
                Target {
                    site,
                    shard,
                    snap,
                    remote: false,
                }
            }
            Decision::Remote {
                site,
                router: _,
                shard,
                fallback,
            } => {
                // Without peer TLS or the shared secret the other site's
                // router could not tell this request from a client's (its
                // hop list would be dropped, and a disagreement would loop
                // unseen). The router refuses to start like this; a
                // topology that gains a site later ends here.
                if !self.knows_peers() {
                    let r = self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!(
                            "this router cannot forward to site {site}: neither [peer_tls] nor routing.peer_secret is set; set up peer TLS (or the same secret) on every router of the deployment"
                        ),
                        "no_peer_secret",
                    );
                    return Err((r, site, shard, None));
                }
                self.count_fallback(fallback);
                self.metrics
                    .cross_site
                    .get_or_create(&SiteLabels { site: site.clone() })
                    .inc();
                Target {
                    site,
                    shard,
                    snap,
                    remote: true,
                }
            }
        };
        if target.addrs().is_empty() {
            let r = self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("site {} has no upstreams in the topology", target.site),
                "no_upstreams",
            );
            return Err((r, target.site, target.shard, None));
        }
        Ok(target)
    }

    /// Turns a decision into a step: an answer, or a request ready to send.
    fn dispatch<'a>(
        &'a self,
        decision: Decision,
        snap: Arc<Snapshot>,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
    ) -> Step<'a> {
        let target = match self.target(decision, snap) {
            Ok(t) => t,
            Err(routed) => return Step::Answer(routed),
        };
        if let Some(shard) = self.replayable(&req, &target) {
            return Step::Slow(Box::pin(self.write(req, conn, target, shard, worker)));
        }
        worker.budget.deposit();
        let resendable = !has_body(&req);
        let idem = idempotent(req.method());
        if headers::wants_upgrade(req.headers()) {
            let mut req = req;
            let on = hyper::upgrade::on(&mut req);
            return Step::Slow(Box::pin(
                self.forward_upgrade(req, on, conn, target, worker),
            ));
        }
        let (mut parts, incoming) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        if resendable && own_exchange(&parts, &target, worker) {
            let encoded = self.encode_head(&parts, &conn, &target);
            return Step::Forward(Forward {
                message: Message::Encoded(encoded),
                head_request,
                target,
                resendable,
                idempotent: idem,
            });
        }
        // A request without a body sends none (no limit wrapper needed); one
        // with a body streams through the size limit, watched for the
        // client's errors.
        let (body, watch) = if resendable {
            (None, None)
        } else {
            let (b, w) = incoming.limited(
                usize::try_from(self.cfg.limits.max_body_bytes).unwrap_or(usize::MAX),
                self.cfg.timeouts.body_read(),
            );
            (Some(b), w)
        };
        self.prepare_head(&mut parts, &conn, &target, false);
        Step::Forward(Forward {
            message: Message::Hyper(Box::new(HyperMessage {
                head: Some(parts),
                body,
                replay: None,
                watch,
            })),
            head_request,
            target,
            resendable,
            idempotent: idem,
        })
    }

    /// Sends the request to one of the target's endpoints, retrying on
    /// another if that is safe and the budget allows.
    // Not an `async fn`: `f` is used in place, not re-bound (see the module docs).
    #[allow(clippy::manual_async_fn)]
    fn forward<'a>(
        &'a self,
        mut f: Forward,
        worker: &'a Worker,
    ) -> impl Future<Output = Routed> + Send + 'a {
        async move {
            let max_attempts = if f.resendable {
                1 + self.cfg.upstream.max_retries
            } else {
                1
            };
            let mut attempt = 0;
            let mut tried: Vec<Arc<Upstream>> = Vec::new();
            // The endpoint tried last, whatever came of it (the access
            // log's `upstream`): moved here, not cloned.
            let mut last: Option<Arc<Upstream>> = None;
            let resp = loop {
                attempt += 1;
                let Some(up) = worker.client.pick(
                    &self.endpoints,
                    &f.target.site,
                    &f.target.addrs(),
                    f.target.remote,
                    &tried,
                ) else {
                    break self.reject(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no upstream available",
                        "no_upstreams",
                    );
                };
                let up: &Arc<Upstream> = last.insert(up);
                let sent = match &mut f.message {
                    Message::Encoded(head) => Either::Left(worker.client.exchange(
                        up,
                        head,
                        f.head_request,
                        f.idempotent,
                    )),
                    Message::Hyper(m) => {
                        let Some(req) = m.request(attempt < max_attempts) else {
                            break error_response(
                                StatusCode::BAD_GATEWAY,
                                "no request head left to send",
                            );
                        };
                        // Boxed: the less common path, and a larger future.
                        Either::Right(Box::pin(worker.client.send(up, req, !f.target.remote)))
                    }
                };
                let in_flight = up.start();
                let result = tokio::time::timeout(self.cfg.timeouts.request(), sent).await;
                drop(in_flight);
                let ep = &up.endpoint;
                // Reading the client's body failed: whatever the exchange
                // made of it (an error, no answer in time), it is the
                // client's fault, not the upstream's: no ejection, no
                // upstream error.
                if !matches!(result, Ok(Ok(_))) {
                    if let Some(fault) = f.body_fault() {
                        tracing::debug!(site = %f.target.site, endpoint = %ep.addr, fault = ?fault, "The client's request body failed on its way upstream.");
                        break self.body_refusal(fault);
                    }
                }
                match result {
                    Ok(Ok(resp)) => {
                        ep.record_success();
                        break self.respond(resp);
                    }
                    Ok(Err(e @ UpstreamError::Address { .. })) => {
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, error = %error_chain(&e), "Upstream address not usable.");
                        break self.reject(
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "{} is misconfigured: {}; see the router's log",
                                whom(&f.target),
                                e.client_reason(&ep.addr)
                            ),
                            "bad_upstream_addr",
                        );
                    }
                    Ok(Err(e)) => {
                        // The client's fault, not the upstream's: no ejection.
                        if is_body_too_large(&e) {
                            break self.body_refusal(&BodyFault::TooLarge);
                        }
                        self.note_failure(&f.target, &ep.addr);
                        ep.record_failure(
                            self.cfg.upstream.eject_after_failures,
                            Duration::from_millis(self.cfg.upstream.eject_ms),
                        );
                        let safe = f.resendable && (f.idempotent || e.is_connect());
                        // A request that never left (connect refused or timed
                        // out) adds no load anywhere by going elsewhere: it
                        // is not held to the retry budget, which is there to
                        // keep retries from piling onto a struggling upstream.
                        if safe
                            && attempt < max_attempts
                            && (e.is_connect() || worker.budget.try_withdraw())
                        {
                            tried.push(up.clone());
                            self.metrics.retries.inc();
                            tracing::debug!(site = %f.target.site, endpoint = %ep.addr, error = %e, "Retrying on another endpoint.");
                            continue;
                        }
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, error = %error_chain(&e), "Upstream request failed.");
                        break error_response(
                            StatusCode::BAD_GATEWAY,
                            &format!(
                                "{} failed: {}; retry, and see the router's log for which endpoint",
                                whom(&f.target),
                                e.client_reason(&ep.addr)
                            ),
                        );
                    }
                    // Out of time while waiting for the client's body (the
                    // upstream asked for more): the client's slowness.
                    Err(_) if f.waiting_for_client() => {
                        tracing::debug!(site = %f.target.site, endpoint = %ep.addr, "The client's request body did not arrive in time.");
                        break self.body_refusal(&BodyFault::TimedOut {
                            after: self.cfg.timeouts.request(),
                            setting: "timeouts.request_ms",
                        });
                    }
                    Err(_) => {
                        self.note_failure(&f.target, &ep.addr);
                        ep.record_failure(
                            self.cfg.upstream.eject_after_failures,
                            Duration::from_millis(self.cfg.upstream.eject_ms),
                        );
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, timeout = ?self.cfg.timeouts.request(), "Upstream sent no response head in time.");
                        break error_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!(
                                "{} sent no response head within {:?} (timeouts.request_ms); retry, and see the router's log for which endpoint",
                                whom(&f.target),
                                self.cfg.timeouts.request()
                            ),
                        );
                    }
                }
            };
            (resp, f.target.site, f.target.shard, last)
        }
    }

    fn note_failure(&self, target: &Target, addr: &str) {
        self.metrics
            .upstream_errors
            .get_or_create(&EndpointLabels {
                site: target.site.clone(),
                endpoint: addr.to_string(),
            })
            .inc();
    }

    /// Headers for the upstream request.
    /// What the router adds to a request it sends to `target`.
    fn forwarding<'a>(
        &'a self,
        conn: &'a ConnInfo,
        target: &'a Target,
        upgrade: bool,
        request: &http::HeaderMap,
    ) -> headers::Forwarding<'a> {
        headers::Forwarding {
            site: &target.site,
            site_value: self
                .site_value
                .as_ref()
                .filter(|_| target.site == self.policy.site),
            shard: target.shard.map(|s| (s.id, s.epoch)),
            client: conn.peer_value.as_ref(),
            tls: conn.tls,
            hop: target
                .remote
                .then(|| (self.policy.site.as_str(), target.shard.map(|s| s.epoch))),
            upgrade,
            peer: self.is_from_peer(request, conn),
            peer_secret: self.peer_secret.as_ref(),
            keys: &self.key_headers,
        }
    }

    /// The head as it goes upstream through hyper: the forwarded fields
    /// ([`headers::forwarded_fields`]) in a new header map, HTTP/1.1.
    fn prepare_head(
        &self,
        parts: &mut http::request::Parts,
        conn: &ConnInfo,
        target: &Target,
        upgrade: bool,
    ) {
        let mut fields = http::HeaderMap::with_capacity(parts.headers.len() + 8);
        headers::forwarded_fields(
            parts,
            &self.forwarding(conn, target, upgrade, &parts.headers),
            &mut fields,
        );
        parts.headers = fields;
        // The upstream connection's protocol is the client's choice, not ours.
        parts.version = http::Version::HTTP_11;
    }

    /// The head as it goes upstream through the router's own HTTP/1
    /// exchange: encoded once, straight from the client's head.
    fn encode_head(
        &self,
        parts: &http::request::Parts,
        conn: &ConnInfo,
        target: &Target,
    ) -> BytesMut {
        let mut out = BytesMut::with_capacity(
            parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
                + parts
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
                + 256,
        );
        crate::h1::encode_request_line(&parts.method, &parts.uri, &mut out);
        let mut w = crate::h1::HeadWriter(&mut out);
        headers::forwarded_fields(
            parts,
            &self.forwarding(conn, target, false, &parts.headers),
            &mut w,
        );
        w.finish();
        // Not frozen into `Bytes`: that would allocate again, and it is only
        // ever borrowed.
        out
    }

    fn respond(&self, mut resp: Response<Body>) -> Response<Body> {
        let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), upgrade);
        resp
    }

    async fn forward_upgrade(
        &self,
        req: Request<RequestBody>,
        client_on: hyper::upgrade::OnUpgrade,
        conn: ConnInfo,
        target: Target,
        worker: &Worker,
    ) -> Routed {
        let (mut parts, incoming) = req.into_parts();
        self.prepare_head(&mut parts, &conn, &target, true);
        let mut chosen = None;
        let resp = self
            .upgrade(parts, incoming, client_on, &target, worker, &mut chosen)
            .await;
        (resp, target.site, target.shard, chosen)
    }

    /// Sends an upgrade request; the endpoint it went to is put in `chosen`.
    async fn upgrade(
        &self,
        parts: http::request::Parts,
        incoming: RequestBody,
        client_on: hyper::upgrade::OnUpgrade,
        target: &Target,
        worker: &Worker,
        chosen: &mut Option<Arc<Upstream>>,
    ) -> Response<Body> {
        let Some(upstream) = worker.client.pick(
            &self.endpoints,
            &target.site,
            &target.addrs(),
            target.remote,
            &[],
        ) else {
            return self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream available",
                "no_upstreams",
            );
        };
        *chosen = Some(upstream.clone());
        let ep = &upstream.endpoint;
        let up = Request::from_parts(parts, incoming.into_body());
        // Upgrades need HTTP/1.1 to the upstream, on a connection of their own.
        let mut resp = match tokio::time::timeout(
            self.cfg.timeouts.request(),
            worker.client.send_upgrade(&upstream, up),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                ep.record_failure(
                    self.cfg.upstream.eject_after_failures,
                    Duration::from_millis(self.cfg.upstream.eject_ms),
                );
                tracing::warn!(site = %target.site, endpoint = %ep.addr, error = %error_chain(&e), "Upstream upgrade request failed.");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "{} failed: {}; retry, and see the router's log for which endpoint",
                        whom(target),
                        e.client_reason(&ep.addr)
                    ),
                );
            }
            Err(_) => {
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream sent no response head in time",
                )
            }
        };
        ep.record_success();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return self.respond(resp.map(|b| body::upstream(b, None, Some(upstream.clone()))));
        }
        let upstream_on = hyper::upgrade::on(&mut resp);
        let endpoint = ep.addr.clone();
        let idle = self.cfg.timeouts.upstream_read();
        tokio::spawn(async move {
            let (client_io, upstream_io) = match tokio::join!(client_on, upstream_on) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(endpoint = %endpoint, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "Upgrade did not complete.");
                    return;
                }
            };
            let c = TokioIo::new(client_io);
            let u = TokioIo::new(upstream_io);
            match crate::tunnel::run(c, u, idle).await {
                Ok(crate::tunnel::Ended::Idle) => {
                    tracing::debug!(endpoint = %endpoint, idle = ?idle, "Upgraded connection closed: idle for timeouts.upstream_read_ms.");
                }
                Ok(crate::tunnel::Ended::Closed(..)) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint, error = %e, "Upgraded connection ended with an error.");
                }
            }
        });
        self.respond(resp.map(|b| body::upstream(b, None, Some(upstream.clone()))))
    }
}

impl Forward {
    /// How reading the client's streamed body failed, if it did.
    fn body_fault(&self) -> Option<&BodyFault> {
        match &self.message {
            Message::Hyper(m) => m.watch.as_ref()?.fault(),
            Message::Encoded(_) => None,
        }
    }

    /// Whether the exchange is waiting for more of the client's body now.
    fn waiting_for_client(&self) -> bool {
        match &self.message {
            Message::Hyper(m) => m.watch.as_ref().is_some_and(BodyWatch::waiting_for_client),
            Message::Encoded(_) => false,
        }
    }
}

/// Who failed, as the client is told: the site, never an address.
fn whom(target: &Target) -> String {
    if target.remote {
        format!("the router of site {}", target.site)
    } else {
        format!("an upstream of site {}", target.site)
    }
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = c.source();
    }
    false
}
