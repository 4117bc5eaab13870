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
//! upstream: 502/504, ourselves/topology: 503).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::Limited;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use ezone_topology::{Snapshot, Watcher};

use crate::body::{self, Body};
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::decide::{decide, Decision, Policy, ShardRef};
use crate::extract::extract;
use crate::headers;
use crate::hold::{Held, HoldQueue};
use crate::metrics::{EndpointLabels, Metrics, ReasonLabels, RequestLabels, SiteLabels};
use crate::upstream::{Endpoints, RetryBudget};

/// Facts about the client connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: Option<SocketAddr>,
    pub tls: bool,
}

/// The router: shared by every connection.
pub struct Router {
    pub(crate) cfg: RouterConfig,
    pub(crate) policy: Policy,
    pub(crate) watcher: Watcher,
    pub(crate) metrics: Metrics,
    /// For health checks (control plane); requests use a worker's [`Clients`].
    health_client: Client<HttpConnector, Body>,
    pub(crate) endpoints: Endpoints,
    budget: RetryBudget,
    holds: HoldQueue,
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
    /// Candidate addresses (`host:port`): the site's upstreams, or its router.
    fn addrs(&self) -> &[String] {
        match self.snap.topology.sites.get(&self.site) {
            Some(s) if self.remote => std::slice::from_ref(&s.router),
            Some(s) => &s.upstreams,
            None => &[],
        }
    }
}

fn client(cfg: &RouterConfig, h2c: bool) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeouts.connect()));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(cfg.timeouts.idle())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1024)
        // Keep the client's Host header; add one from the URI only if absent.
        .set_host(true);
    if h2c {
        b.http2_only(true);
    }
    b.build(connector)
}

/// One worker's upstream connection pools. Each data-plane thread has its
/// own, so a pooled connection is only ever used by the thread that drives it.
pub struct Clients {
    upstream: Client<HttpConnector, Body>,
    peer: Client<HttpConnector, Body>,
}

impl Clients {
    pub fn new(cfg: &RouterConfig) -> Clients {
        Clients {
            upstream: client(cfg, cfg.upstream.protocol == UpstreamProtocol::H2c),
            peer: client(cfg, false),
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

fn has_body(req: &Request<Incoming>) -> bool {
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(n) => n > 0,
        // HTTP/2 requests may stream a body without a length.
        None => {
            req.version() == http::Version::HTTP_2 && !hyper::body::Body::is_end_stream(req.body())
        }
    }
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
        Router {
            health_client: client(&cfg, cfg.upstream.protocol == UpstreamProtocol::H2c),
            budget: RetryBudget::new(cfg.upstream.retry_budget_percent),
            holds: HoldQueue::new(cfg.limits.max_held),
            endpoints: Endpoints::default(),
            metrics: Metrics::new(),
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

    /// Handles one request. Never fails: every problem becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        clients: &Clients,
    ) -> Response<Body> {
        use tracing::Instrument;
        let started = Instant::now();
        let span = tracing::debug_span!(
            "request",
            site = %self.policy.site,
            method = %req.method(),
            shard = tracing::field::Empty,
            epoch = tracing::field::Empty,
            to = tracing::field::Empty,
        );
        let (resp, site, shard) = self
            .route(req, conn, clients)
            .instrument(span.clone())
            .await;
        if let Some(s) = shard {
            span.record("shard", s.id);
            span.record("epoch", s.epoch);
        }
        span.record("to", site.as_str());
        span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), "Request answered."));
        let status = resp.status().as_u16();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                site: site.clone(),
                shard: shard.map_or_else(|| "none".to_string(), |s| s.id.to_string()),
                status,
            })
            .inc();
        self.metrics
            .request_seconds
            .get_or_create(&SiteLabels { site })
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        clients: &Clients,
    ) -> (Response<Body>, String, Option<ShardRef>) {
        let none = |r| (r, "none".to_string(), None);
        let Some(snap) = self.watcher.current() else {
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
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.cfg.limits.max_body_bytes) {
            return none(self.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "request body larger than {} bytes",
                    self.cfg.limits.max_body_bytes
                ),
                "body_too_large",
            ));
        }
        if headers::is_loop(req.headers(), &self.policy.site) {
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
        let mut snap = snap;
        if let Some((shard, epoch)) = headers::peer_decision(req.headers()) {
            if snap
                .topology
                .shards
                .get(&shard)
                .is_some_and(|s| s.epoch < epoch)
            {
                let deadline = self.hold_deadline(&snap);
                match crate::hold::wait_for_epoch(self.watcher.subscribe(), shard, epoch, deadline)
                    .await
                {
                    Some(newer) => snap = newer,
                    None => {
                        let mut r = error_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            &format!("shard {shard}: this router's topology is behind epoch {epoch} that the forwarding router used; retry shortly"),
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(1u32));
                        return none(r);
                    }
                }
            }
        }
        let key = extract(&self.cfg.keys, req.uri(), req.headers());
        let mut decision = decide(&snap.topology, &self.policy, key.as_ref(), req.method());
        if let Decision::Hold { shard } = decision {
            let deadline = self.hold_deadline(&snap);
            let held = Box::pin(self.holds.hold(
                shard.id,
                deadline,
                &self.policy,
                self.watcher.subscribe(),
                &self.metrics,
            ))
            .await;
            decision = match held {
                Held::Released(d) => d,
                Held::Deadline | Held::Overflow => {
                    let why = if held == Held::Overflow {
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
                    return (r, "none".into(), Some(shard));
                }
            };
        }
        let target = match decision {
            Decision::Reject {
                status,
                reason,
                fallback,
            } => {
                let label = fallback.map_or("rejected", |f| f.as_str());
                return none(self.reject(status, &reason, label));
            }
            Decision::Hold { shard } => {
                // `release` never yields Hold; be safe anyway.
                return (
                    error_response(StatusCode::SERVICE_UNAVAILABLE, "shard is frozen"),
                    "none".into(),
                    Some(shard),
                );
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
                    snap: snap.clone(),
                    remote: false,
                }
            }
            Decision::Remote {
                site,
                router,
                shard,
                fallback,
            } => {
                self.count_fallback(fallback);
                self.metrics
                    .cross_site
                    .get_or_create(&SiteLabels { site: site.clone() })
                    .inc();
                let _ = router;
                Target {
                    site,
                    shard,
                    snap: snap.clone(),
                    remote: true,
                }
            }
        };
        let site = target.site.clone();
        let shard = target.shard;
        (self.forward(req, conn, target, clients).await, site, shard)
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        target: Target,
        clients: &Clients,
    ) -> Response<Body> {
        if target.addrs().is_empty() {
            return self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("site {} has no upstreams in the topology", target.site),
                "no_upstreams",
            );
        }
        self.budget.deposit();
        let upgrade = headers::wants_upgrade(req.headers());
        let retryable_body = !has_body(&req);
        let idem = idempotent(req.method());
        let (parts, incoming) = req.into_parts();
        if upgrade {
            // Re-assemble briefly to take the upgrade future from the request.
            let mut tmp = Request::from_parts(parts, incoming);
            let on = hyper::upgrade::on(&mut tmp);
            let (parts, incoming) = tmp.into_parts();
            // Boxed: upgrades are rare, and an inline state machine would make
            // every request's future (moved around by the runtime) larger.
            return Box::pin(self.forward_upgrade(parts, incoming, on, conn, target, clients))
                .await;
        }
        let mut parts = parts;
        self.prepare_head(&mut parts, conn, &target, false);
        // A request without a body sends none (no limit wrapper needed); one
        // with a body streams through the size limit.
        let mut body = if retryable_body {
            None
        } else {
            Some(body::boxed(Limited::new(
                incoming,
                usize::try_from(self.cfg.limits.max_body_bytes).unwrap_or(usize::MAX),
            )))
        };
        let max_attempts = if retryable_body {
            1 + self.cfg.upstream.max_retries
        } else {
            1
        };
        let mut attempt = 0;
        let mut tried: Vec<Arc<crate::upstream::Endpoint>> = Vec::new();
        let mut parts = Some(parts);
        loop {
            attempt += 1;
            let Some(ep) = self.pick(&target, &tried) else {
                return self.reject(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no upstream available",
                    "no_upstreams",
                );
            };
            // Keep a copy of the head only if another attempt may follow.
            let head = if attempt < max_attempts {
                parts.clone()
            } else {
                parts.take()
            };
            let Some(head) = head else {
                return error_response(StatusCode::BAD_GATEWAY, "no request head left to send");
            };
            let uri = match Uri::builder()
                .scheme("http")
                .authority(ep.addr.as_str())
                .path_and_query(head.uri.path_and_query().map_or("/", |p| p.as_str()))
                .build()
            {
                Ok(u) => u,
                Err(e) => {
                    return self.reject(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream address {:?} is not usable: {e}", ep.addr),
                        "bad_upstream_addr",
                    )
                }
            };
            let mut up = Request::from_parts(head, body.take().unwrap_or_else(body::empty));
            *up.uri_mut() = uri;
            let client = if target.remote {
                &clients.peer
            } else {
                &clients.upstream
            };
            let in_flight = ep.start();
            let result =
                tokio::time::timeout(self.cfg.timeouts.request(), client.request(up)).await;
            match result {
                Ok(Ok(resp)) => {
                    ep.record_success();
                    drop(in_flight);
                    return self.respond(resp);
                }
                Ok(Err(e)) => {
                    // The client's fault, not the upstream's: no ejection.
                    if is_body_too_large(&e) {
                        return self.reject(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!(
                                "request body larger than {} bytes",
                                self.cfg.limits.max_body_bytes
                            ),
                            "body_too_large",
                        );
                    }
                    self.note_failure(&target, &ep.addr);
                    ep.record_failure(
                        self.cfg.upstream.eject_after_failures,
                        Duration::from_millis(self.cfg.upstream.eject_ms),
                    );
                    let safe = retryable_body && (idem || e.is_connect());
                    if safe && attempt < max_attempts && self.budget.try_withdraw() {
                        tried.push(ep.clone());
                        self.metrics.retries.inc();
                        tracing::debug!(site = %target.site, endpoint = %ep.addr, error = %e, "Retrying on another endpoint.");
                        continue;
                    }
                    tracing::warn!(site = %target.site, endpoint = %ep.addr, error = %e, "Upstream request failed.");
                    return error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "upstream {} of site {} failed: {}",
                            ep.addr,
                            target.site,
                            error_chain(&e)
                        ),
                    );
                }
                Err(_) => {
                    self.note_failure(&target, &ep.addr);
                    ep.record_failure(
                        self.cfg.upstream.eject_after_failures,
                        Duration::from_millis(self.cfg.upstream.eject_ms),
                    );
                    return error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "upstream {} of site {} sent no response head within {:?}",
                            ep.addr,
                            target.site,
                            self.cfg.timeouts.request()
                        ),
                    );
                }
            }
        }
    }

    fn pick(
        &self,
        target: &Target,
        tried: &[Arc<crate::upstream::Endpoint>],
    ) -> Option<Arc<crate::upstream::Endpoint>> {
        let addrs = target.addrs();
        if tried.is_empty() {
            return self.endpoints.pick(addrs);
        }
        // Prefer an endpoint not tried yet for this request.
        let fresh: Vec<String> = addrs
            .iter()
            .filter(|a| !tried.iter().any(|t| &t.addr == *a))
            .cloned()
            .collect();
        if fresh.is_empty() {
            self.endpoints.pick(addrs)
        } else {
            self.endpoints.pick(&fresh)
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
    fn prepare_head(
        &self,
        parts: &mut http::request::Parts,
        conn: ConnInfo,
        target: &Target,
        upgrade: bool,
    ) {
        let from_peer = parts.headers.contains_key(headers::X_EZONE_HOP);
        // HTTP/2 requests carry the authority in the URI: keep it as Host.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::strip_ezone(&mut parts.headers);
        headers::set_ezone(
            &mut parts.headers,
            &target.site,
            target.shard.map(|s| (s.id, s.epoch)),
        );
        headers::set_forwarded(
            &mut parts.headers,
            conn.peer.map(|p| p.ip()),
            if conn.tls { "https" } else { "http" },
            parts.version,
            from_peer,
        );
        if target.remote {
            headers::add_hop(
                &mut parts.headers,
                &self.policy.site,
                target.shard.map(|s| s.epoch),
            );
        } else {
            parts.headers.remove(headers::X_EZONE_HOP);
        }
        // The upstream connection's protocol is the client's choice, not ours.
        parts.version = http::Version::HTTP_11;
    }

    fn respond(&self, resp: Response<Incoming>) -> Response<Body> {
        let (mut parts, body) = resp.into_parts();
        let upgrade = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        Response::from_parts(parts, body::boxed(body))
    }

    async fn forward_upgrade(
        &self,
        mut parts: http::request::Parts,
        incoming: Incoming,
        client_on: hyper::upgrade::OnUpgrade,
        conn: ConnInfo,
        target: Target,
        clients: &Clients,
    ) -> Response<Body> {
        self.prepare_head(&mut parts, conn, &target, true);
        let Some(ep) = self.endpoints.pick(target.addrs()) else {
            return self.reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "no upstream available",
                "no_upstreams",
            );
        };
        let uri = format!(
            "http://{}{}",
            ep.addr,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let Ok(uri) = uri.parse::<Uri>() else {
            return self.reject(
                StatusCode::BAD_GATEWAY,
                "upstream address is not usable",
                "bad_upstream_addr",
            );
        };
        let mut up = Request::from_parts(parts, body::boxed(incoming));
        *up.uri_mut() = uri;
        // Upgrades need HTTP/1.1 to the upstream.
        let client = &clients.peer;
        let mut resp =
            match tokio::time::timeout(self.cfg.timeouts.request(), client.request(up)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    ep.record_failure(
                        self.cfg.upstream.eject_after_failures,
                        Duration::from_millis(self.cfg.upstream.eject_ms),
                    );
                    return error_response(
                        StatusCode::BAD_GATEWAY,
                        &format!("upstream {} failed: {}", ep.addr, error_chain(&e)),
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
            return self.respond(resp);
        }
        let upstream_on = hyper::upgrade::on(&mut resp);
        let endpoint = ep.addr.clone();
        tokio::spawn(async move {
            let (client_io, upstream_io) = match tokio::join!(client_on, upstream_on) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(endpoint = %endpoint, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "Upgrade did not complete.");
                    return;
                }
            };
            let mut c = TokioIo::new(client_io);
            let mut u = TokioIo::new(upstream_io);
            if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                tracing::debug!(endpoint = %endpoint, error = %e, "Upgraded connection ended with an error.");
            }
        });
        self.respond(resp)
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
