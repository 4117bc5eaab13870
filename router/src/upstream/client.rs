//! Upstream connections: one [`UpstreamClient`] per worker thread.
//!
//! HTTP/1 upstreams (and peer routers, which are always spoken to in
//! HTTP/1.1) get a pool of connections owned by the worker, of two kinds:
//!
//! - **Requests without a body** (nearly all reads, and most traffic) go over
//!   the router's own HTTP/1.1 exchange ([`UpstreamClient::exchange`],
//!   framing in [`crate::http1::codec`]): the head, encoded once, is written straight
//!   to the socket and the response read back in the request's own task; its
//!   body is read from the socket as the client's connection takes it
//!   ([`RawBody`]). No connection task, no channels, and a retry resends the
//!   same encoded bytes. hyper's client connection, by comparison, runs in a
//!   task of its own and hands requests, responses and body chunks across
//!   channels, each crossing a wake-up (measured: ~3 µs of CPU per request,
//!   a sixth of the router's).
//! - **Requests with a body** (streamed, never buffered) and upgrades go
//!   through hyper's client connections, which handle a body racing its
//!   response, `100-continue` and the switch to another protocol.
//!
//! Both kinds are pooled the same way:
//!
//! ```text
//!  checkout ──▶ idle connection (LIFO, closed ones skipped) ──▶ send ──▶ response head
//!      │             or a new one (connect_ms)                            │
//!      └─────────────────────────────── checkin ◀── response body read to its end
//! ```
//!
//! Why not hyper-util's pooled client: it is built for a multi-threaded
//! runtime (a pool shared behind locks, a checkout future racing a connect,
//! and a task spawned per request just to put the connection back once the
//! response body is done). Here each connection is only ever used by the
//! thread that drives it, so checkout is a `pop` and checkin a `push` on
//! the worker's own list (behind a mutex that is never contended: only its
//! worker touches it), and the connection goes back when the response body,
//! which carries it ([`super::body`]), reaches its end. A body dropped before
//! its end takes its connection with it (hyper closes it).
//!
//! Failures keep their meaning for the retry rules ([`UpstreamError::is_connect`]):
//! a connect error or timeout means nothing was sent. A pooled connection
//! that the upstream closed while it sat idle is skipped at checkout; one
//! that closes just as a request is handed to it gives the request back
//! unsent, and it is sent on the next connection (as hyper-util does).
//!
//! HTTP/2 upstreams (`upstream.protocol = "h2c"`) multiplex many requests on
//! one connection; they keep hyper-util's client, which does that well.
//!
//! Peer routers (another site's `router` and `more_routers`) are pooled the
//! same way, both kinds. With `[peer_tls]` their connections are TLS
//! ([`UpIo::Tls`], [`crate::tls::peer`]): this router's certificate as the
//! client certificate, theirs checked against the CA and the site dialed.
//! The handshake is part of making a connection (bounded by
//! `timeouts.connect_ms` too, and like a refused connect it means nothing
//! was sent); a pooled connection is used as a plain one is, the TLS
//! session costing only its record framing and encryption.

use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::body::{self, Body};
use super::endpoints::Endpoints;
use super::error::UpstreamError;
use super::io::{RawConn, UpIo};
#[cfg(test)]
use super::pool::Idles;
use super::pool::{self, Dial, Faults, Upstreams, Want, MAX_IDLE_PER_ADDR};
use super::raw::RawBody;
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::http1::codec::{self as h1, Next};
use crate::metrics::EndpointLabels;
use crate::tls::peer::PeerTls;

/// One worker's handle on one upstream address (see [`pool::Upstream`]),
/// its idle hyper connections carrying the router's [`Body`].
pub type Upstream = pool::Upstream<Body>;

/// How this client dials peer routers.
enum PeerDialing {
    /// In clear text (no `[peer_tls]`: the secret says who is asking).
    Plain,
    Tls(PeerTls),
    /// `[peer_tls]` is configured but this client was not given its
    /// configs: peers are not dialed at all.
    Missing,
}

/// One worker's upstream connections.
pub struct UpstreamClient {
    upstreams: Mutex<Upstreams<Body>>,
    faults: Arc<Faults>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    /// For `upstream.protocol = "h2c"`.
    h2: Option<Client<HttpConnector, Body>>,
    /// How peer routers are dialed (TLS with `[peer_tls]`).
    peers: PeerDialing,
}

/// hyper-util's client; only for HTTP/2 upstreams and health checks.
pub fn legacy_client(cfg: &RouterConfig, h2c: bool) -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.timeouts.connect()));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(cfg.timeouts.idle())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(MAX_IDLE_PER_ADDR)
        // Keep the client's Host header; add one from the URI only if absent.
        .set_host(true);
    if h2c {
        b.http2_only(true);
    }
    b.build(connector)
}

impl UpstreamClient {
    /// A worker's client; `errors` is where it counts an upstream's
    /// failures after the response head (`ezone_router_upstream_errors_total`).
    pub fn new(
        cfg: &RouterConfig,
        errors: Family<EndpointLabels, Counter>,
        peer_tls: Option<PeerTls>,
    ) -> UpstreamClient {
        UpstreamClient {
            upstreams: Mutex::default(),
            faults: Arc::new(Faults::new(
                cfg.timeouts.upstream_read(),
                cfg.upstream.eject_after_failures,
                Duration::from_millis(cfg.upstream.eject_ms),
                errors,
            )),
            connect_timeout: cfg.timeouts.connect(),
            idle_timeout: cfg.timeouts.idle(),
            h2: (cfg.upstream.protocol == UpstreamProtocol::H2c).then(|| legacy_client(cfg, true)),
            peers: match (peer_tls, cfg.peer_tls.is_some()) {
                (Some(t), _) => PeerDialing::Tls(t),
                (None, false) => PeerDialing::Plain,
                (None, true) => PeerDialing::Missing,
            },
        }
    }

    /// True if this site's upstreams are spoken to in HTTP/2 (h2c).
    pub fn upstreams_h2(&self) -> bool {
        self.h2.is_some()
    }

    /// This worker's upstreams, refreshed if an endpoint has been dropped
    /// since it last looked (then its handles, and idle connections, go).
    fn upstreams(&self, endpoints: &Endpoints) -> MutexGuard<'_, Upstreams<Body>> {
        let mut u = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        let generation = endpoints.generation();
        if u.generation != generation {
            u.by_addr.clear();
            u.generation = generation;
        }
        u
    }

    /// This worker's handle on `addr`, an endpoint of `site`: one of its
    /// upstreams, or if `peer` one of its routers.
    pub fn upstream(
        &self,
        endpoints: &Endpoints,
        site: &str,
        addr: &str,
        peer: bool,
    ) -> Arc<Upstream> {
        let want = self.want(peer);
        self.upstreams(endpoints)
            .get(endpoints, site, addr, want, &self.faults)
    }

    /// How an endpoint is dialed: a peer router (`peer`) over TLS with
    /// `[peer_tls]`, anything else in clear text.
    fn want(&self, peer: bool) -> Want<'_> {
        match (&self.peers, peer) {
            (_, false) | (PeerDialing::Plain, true) => Want::Plain,
            (PeerDialing::Tls(t), true) => Want::Peer(Some(t)),
            (PeerDialing::Missing, true) => Want::Peer(None),
        }
    }

    /// Picks one of `addrs` (endpoints of `site`: its upstreams, or if
    /// `peer` its routers), preferring those not `tried` yet: power of two
    /// choices on this worker's requests in flight, among the available
    /// endpoints ([`super::endpoints::pick`]).
    pub fn pick(
        &self,
        endpoints: &Endpoints,
        site: &str,
        addrs: &[String],
        peer: bool,
        tried: &[Arc<Upstream>],
    ) -> Option<Arc<Upstream>> {
        let want = self.want(peer);
        let mut u = self.upstreams(endpoints);
        // The common single-endpoint case needs no choice (and no allocation).
        if let [only] = addrs {
            return Some(u.get(endpoints, site, only, want, &self.faults));
        }
        let all: Vec<Arc<Upstream>> = addrs
            .iter()
            .map(|a| u.get(endpoints, site, a, want, &self.faults))
            .collect();
        drop(u);
        let fresh: Vec<&Arc<Upstream>> = all
            .iter()
            .filter(|c| !tried.iter().any(|t| Arc::ptr_eq(t, c)))
            .collect();
        let candidates = if fresh.is_empty() {
            all.iter().collect()
        } else {
            fresh
        };
        super::endpoints::pick(&candidates, |c| &c.endpoint, |c| c.in_flight()).cloned()
    }

    /// A new TCP connection to `addr` (`host:port`), within the connect
    /// timeout.
    async fn tcp(&self, addr: &str) -> Result<TcpStream, UpstreamError> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                    after: self.connect_timeout,
                })
            }
        };
        // Small requests and responses must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A new connection to `slot`: TCP, and for a peer router with
    /// `[peer_tls]` the TLS handshake (within the connect timeout too).
    async fn open(&self, slot: &Upstream) -> Result<UpIo, UpstreamError> {
        let addr = slot.addr();
        let tls_error = |name: String, source| UpstreamError::Tls {
            addr: addr.to_string(),
            name,
            source,
        };
        let undialable = |why: &'static str| {
            tls_error(
                format!("site {}", slot.site),
                io::Error::new(io::ErrorKind::InvalidInput, why),
            )
        };
        let (name, tls) = match (&slot.dial, &self.peers) {
            (Dial::Plain, _) => return Ok(UpIo::Plain(self.tcp(addr).await?)),
            (Dial::Undialable(why), _) => return Err(undialable(why)),
            (Dial::Peer(name), PeerDialing::Tls(tls)) => (name, tls),
            (Dial::Peer(_), _) => return Err(undialable("no peer TLS configuration is loaded")),
        };
        let tcp = self.tcp(addr).await?;
        let shown = || name.to_str().into_owned();
        match tokio::time::timeout(self.connect_timeout, tls.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => Ok(UpIo::Tls(Box::new(s))),
            Ok(Err(source)) => Err(tls_error(shown(), source)),
            Err(_) => Err(tls_error(
                shown(),
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no handshake within {:?} (timeouts.connect_ms)",
                        self.connect_timeout
                    ),
                ),
            )),
        }
    }

    /// A new hyper HTTP/1 connection to `slot`, driven by a task on this
    /// worker.
    async fn connect(
        &self,
        slot: &Upstream,
        upgrades: bool,
    ) -> Result<SendRequest<Body>, UpstreamError> {
        let addr = slot.addr();
        let io = self.open(slot).await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Exchange)?;
        let endpoint = addr.to_string();
        if upgrades {
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(endpoint = %endpoint, error = %e, "Upstream connection ended with an error.");
                }
            });
        } else {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(endpoint = %endpoint, error = %e, "Upstream connection ended with an error.");
                }
            });
        }
        Ok(tx)
    }

    /// Sends `req` to `addr`: over HTTP/2 if `h2` and the upstreams speak
    /// it (`upstream.protocol = "h2c"`), else over HTTP/1.1 on a pooled
    /// connection. The URI is rewritten to the form the protocol needs (the
    /// head's `Host` is the one `policy::headers::forwarded_fields` wrote:
    /// never `addr`). An HTTP/1 response body returns its connection to the
    /// pool once read to its end.
    pub fn send<'a>(
        &'a self,
        upstream: &'a Arc<Upstream>,
        mut req: Request<Body>,
        h2: bool,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a {
        let addr = upstream.addr();
        let h2 = if h2 { self.h2.as_ref() } else { None };
        if h2.is_none() {
            origin_form(&mut req);
        }
        // `req` is used in place, not re-bound: the future keeps one copy.
        async move {
            if let Some(client) = h2 {
                *req.uri_mut() = absolute(addr, req.uri())?;
                let resp = client.request(req).await?;
                let (parts, incoming) = resp.into_parts();
                return Ok(Response::from_parts(
                    parts,
                    body::upstream(incoming, None, Some(upstream.clone())),
                ));
            }
            let slot = upstream;
            loop {
                let pooled = self.checkout(slot);
                let reused = pooled.is_some();
                let mut tx = match pooled {
                    Some(mut tx) => {
                        // Put back a moment ago; its connection task may not
                        // have noticed yet that the last response is done.
                        if !tx.is_ready() && tx.ready().await.is_err() {
                            continue;
                        }
                        tx
                    }
                    // Boxed: rare, and it would make every request's future larger.
                    None => Box::pin(self.connect(slot, false)).await?,
                };
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        let (parts, incoming) = resp.into_parts();
                        let conn = pool::Checkin::new(tx, slot.clone());
                        return Ok(Response::from_parts(
                            parts,
                            body::upstream(incoming, Some(conn), Some(slot.clone())),
                        ));
                    }
                    Err(mut e) => match e.take_message() {
                        // Closed before the request was written: try the next
                        // connection (a fresh one is only tried once, so this
                        // ends).
                        Some(unsent) if reused => {
                            tracing::debug!(endpoint = %addr, error = %e.error(), "Pooled connection closed; resending on another.");
                            req = unsent;
                        }
                        _ => return Err(UpstreamError::Exchange(e.into_error())),
                    },
                }
            }
        }
    }

    /// Sends an upgrade request (`Connection: upgrade`) on a connection of
    /// its own, which is never pooled: after a 101 it belongs to the upgrade.
    pub async fn send_upgrade(
        &self,
        upstream: &Upstream,
        mut req: Request<Body>,
    ) -> Result<Response<hyper::body::Incoming>, UpstreamError> {
        origin_form(&mut req);
        let mut tx = self.connect(upstream, true).await?;
        Ok(tx.send_request(req).await?)
    }

    /// Pops the most recently used open hyper connection.
    fn checkout(&self, slot: &Upstream) -> Option<SendRequest<Body>> {
        let mut idle = slot.idle();
        while let Some(c) = idle.hyper.pop() {
            if !c.conn.is_closed() {
                return Some(c.conn);
            }
        }
        None
    }

    /// Pops the most recently used open connection of the router's own.
    fn checkout_raw(&self, slot: &Upstream) -> Option<RawConn> {
        loop {
            let mut c = slot.idle().raw.pop()?.conn;
            if c.still_open() {
                return Some(c);
            }
        }
    }

    /// Sends a request without a body, its head already encoded
    /// ([`h1::encode_request_head`]), to `addr` over HTTP/1.1 on one of this
    /// worker's own connections; `head_request` if its method is HEAD (its
    /// response has no body). The response body returns the connection to
    /// the pool once read to its end.
    ///
    /// A pooled connection can be closed by the upstream (its keep-alive
    /// timeout) just as a request is written to it. That is the connection's
    /// fault, not the endpoint's, so it is not reported as a failure: the
    /// request goes again on a new connection if it certainly was not
    /// processed (the write failed), or if it is `idempotent` and the
    /// upstream closed without a byte of answer (as nginx does for its
    /// cached connections).
    pub fn exchange<'a>(
        &'a self,
        upstream: &'a Arc<Upstream>,
        head: &'a [u8],
        head_request: bool,
        idempotent: bool,
    ) -> impl Future<Output = Result<Response<Body>, UpstreamError>> + Send + 'a {
        let addr = upstream.addr();
        async move {
            let slot = upstream;
            let method = if head_request {
                http::Method::HEAD
            } else {
                http::Method::GET
            };
            let mut pooled = self.checkout_raw(slot);
            'conn: loop {
                let reused = pooled.is_some();
                let mut conn = match pooled.take() {
                    Some(c) => c,
                    // Boxed: rare, and it would make every request's future larger.
                    None => RawConn::new(Box::pin(self.open(slot)).await?),
                };
                let mut written = tokio::io::AsyncWriteExt::write_all(&mut conn.io, head).await;
                // TLS may keep the records of a write back; a plain socket
                // has sent it all.
                if written.is_ok() && conn.io.is_tls() {
                    written = tokio::io::AsyncWriteExt::flush(&mut conn.io).await;
                }
                if let Err(e) = written {
                    if reused {
                        tracing::debug!(endpoint = %addr, error = %e, "Pooled connection closed; resending on a new one.");
                        continue 'conn;
                    }
                    return Err(UpstreamError::Io(e));
                }
                let mut answered = false;
                loop {
                    match h1::parse_response_head(&mut conn.buf) {
                        Ok(Some(resp)) => match h1::next(&resp, &method) {
                            Ok(Next::Skip) => continue,
                            Ok(Next::Body { framing, reusable }) => {
                                let body = RawBody::new(conn, slot.clone(), framing, reusable);
                                return Ok(response(resp, body));
                            }
                            Err(e) => return Err(UpstreamError::Malformed(e)),
                        },
                        Ok(None) => {}
                        Err(e) => return Err(UpstreamError::Malformed(e)),
                    }
                    let stale = reused && idempotent && !answered;
                    match std::future::poll_fn(|cx| conn.poll_fill(cx)).await {
                        Ok(0) if stale => {
                            tracing::debug!(endpoint = %addr, "Pooled connection closed unanswered; resending on a new one.");
                            continue 'conn;
                        }
                        Err(e) if stale && is_reset(&e) => {
                            tracing::debug!(endpoint = %addr, error = %e, "Pooled connection reset unanswered; resending on a new one.");
                            continue 'conn;
                        }
                        Ok(0) => return Err(UpstreamError::Closed),
                        Ok(_) => answered = true,
                        Err(e) => return Err(UpstreamError::Io(e)),
                    }
                }
            }
        }
    }

    /// Closes connections idle for longer than `timeouts.idle_ms` (and
    /// forgets closed ones). Called periodically by the worker.
    pub fn reap(&self) {
        let upstreams = self.upstreams.lock().unwrap_or_else(|p| p.into_inner());
        for slot in upstreams.by_addr.values() {
            let mut idle = slot.idle();
            idle.hyper
                .retain(|c| !c.conn.is_closed() && c.since.elapsed() < self.idle_timeout);
            idle.raw
                .retain_mut(|c| c.since.elapsed() < self.idle_timeout && c.conn.still_open());
        }
    }

    /// How often [`Self::reap`] should run.
    pub fn reap_interval(&self) -> Duration {
        (self.idle_timeout / 2).max(Duration::from_secs(1))
    }

    /// `f` of the idle connections to `addr`; 0 if there is no such upstream
    /// (for tests).
    #[cfg(test)]
    fn count_idle(&self, addr: &str, f: impl FnOnce(&Idles<Body>) -> usize) -> usize {
        self.upstreams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_addr
            .get(addr)
            .map_or(0, |u| f(&u.idle()))
    }

    /// Idle hyper connections to `addr` that are still open (for tests).
    #[cfg(test)]
    fn open_idle(&self, addr: &str) -> usize {
        self.count_idle(addr, |i| {
            i.hyper.iter().filter(|c| !c.conn.is_closed()).count()
        })
    }

    /// Idle connections of the router's own to `addr` (for tests).
    #[cfg(test)]
    fn raw_idle(&self, addr: &str) -> usize {
        self.count_idle(addr, |i| i.raw.len())
    }
}

/// The peer closed the connection under us.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// A response from a parsed head and its body.
fn response(head: h1::ResponseHead, body: RawBody<Body>) -> Response<Body> {
    let mut resp = Response::new(body::raw(body));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    if let Some(reason) = head.reason {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
            resp.extensions_mut().insert(r);
        }
    }
    resp
}

/// The request line's target for HTTP/1: `/path?query` (requests that came
/// over HTTP/2, or in absolute-form, carry a scheme and authority).
fn origin_form(req: &mut Request<Body>) {
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let mut parts = http::uri::Parts::default();
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    if let Ok(u) = Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

/// `http://{addr}{path?query}`, for the HTTP/2 client.
fn absolute(addr: &str, uri: &Uri) -> Result<Uri, UpstreamError> {
    Uri::builder()
        .scheme("http")
        .authority(addr)
        .path_and_query(uri.path_and_query().map_or("/", |p| p.as_str()))
        .build()
        .map_err(|source| UpstreamError::Address {
            addr: addr.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    const WAIT: Duration = Duration::from_secs(5);

    /// A worker's client, and the shared endpoint state it uses.
    struct Client {
        c: UpstreamClient,
        endpoints: Endpoints,
    }

    impl Client {
        fn up(&self, addr: &str) -> Arc<Upstream> {
            self.c.upstream(&self.endpoints, "a", addr, false)
        }

        async fn send(
            &self,
            addr: &str,
            req: Request<Body>,
            h2: bool,
        ) -> Result<Response<Body>, UpstreamError> {
            let up = self.up(addr);
            self.c.send(&up, req, h2).await
        }

        async fn exchange(
            &self,
            addr: &str,
            head: &[u8],
            head_request: bool,
        ) -> Result<Response<Body>, UpstreamError> {
            self.exchange_as(addr, head, head_request, true).await
        }

        async fn exchange_as(
            &self,
            addr: &str,
            head: &[u8],
            head_request: bool,
            idempotent: bool,
        ) -> Result<Response<Body>, UpstreamError> {
            let up = self.up(addr);
            self.c.exchange(&up, head, head_request, idempotent).await
        }

        fn open_idle(&self, addr: &str) -> usize {
            self.c.open_idle(addr)
        }

        fn raw_idle(&self, addr: &str) -> usize {
            self.c.raw_idle(addr)
        }

        fn reap(&self) {
            self.c.reap()
        }
    }

    fn client() -> Client {
        let cfg = RouterConfig::from_toml(
            "site = \"a\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[topology]\nfile = \"t.toml\"\n",
        )
        .expect("config");
        Client {
            c: UpstreamClient::new(&cfg, Family::default(), None),
            endpoints: Endpoints::default(),
        }
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(body::empty()).expect("request")
    }

    /// A raw HTTP/1.1 server: answers each request on a connection with
    /// `body`; after `per_conn` requests it closes the connection (without
    /// saying so). Counts connections.
    async fn server(body: &'static [u8], per_conn: usize) -> (String, Arc<AtomicUsize>) {
        scripted(per_conn, move |_| {
            let mut r =
                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            r.extend_from_slice(body);
            r
        })
        .await
    }

    /// A raw HTTP/1.1 server answering each request head with what
    /// `respond` makes of it, closing after `per_conn` requests.
    async fn scripted(
        per_conn: usize,
        respond: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let respond = Arc::new(respond);
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..per_conn {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        if s.write_all(&respond(&head)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn encoded(method: &str, path: &str) -> Bytes {
        let (parts, ()) = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "upstream")
            .body(())
            .expect("request")
            .into_parts();
        let mut b = BytesMut::new();
        h1::encode_request_head(&parts, &mut b);
        b.freeze()
    }

    async fn collect(resp: Response<Body>) -> (Vec<u8>, Option<http::HeaderMap>) {
        let c = resp.into_body().collect().await.expect("body");
        let trailers = c.trailers().cloned();
        (c.to_bytes().to_vec(), trailers)
    }

    async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_is_read() {
        let (addr, conns) = server(b"hello", usize::MAX).await;
        let c = client();
        for _ in 0..3 {
            let resp = c.send(&addr, get("/"), false).await.expect("response");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"hello");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(c.open_idle(&addr), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_takes_its_connection_along() {
        let big: &'static [u8] = Box::leak(vec![b'x'; 1 << 20].into_boxed_slice());
        let (addr, conns) = server(big, usize::MAX).await;
        let c = client();
        let resp = c.send(&addr, get("/"), false).await.expect("response");
        let mut body = resp.into_body();
        let first = body.frame().await.expect("a frame").expect("data");
        assert!(first.is_data());
        drop(body);
        assert_eq!(
            c.open_idle(&addr),
            0,
            "a half-read connection is not pooled"
        );
        let resp = c.send(&addr, get("/"), false).await.expect("response");
        let all = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(all.len(), big.len());
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        assert_eq!(c.open_idle(&addr), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_skipped() {
        // One request per connection, then the server closes it silently.
        let (addr, conns) = server(b"ok", 1).await;
        let c = client();
        for round in 1..=3 {
            let resp = c.send(&addr, get("/"), false).await.expect("response");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
            // The connection task notices the close on its own.
            wait_until("the idle connection is seen closed", || {
                c.open_idle(&addr) == 0
            })
            .await;
            assert_eq!(conns.load(Ordering::SeqCst), round);
        }
    }

    #[tokio::test]
    async fn connect_failures_are_marked_safe_to_retry() {
        // A port nobody listens on: bind, note it, close.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        drop(l);
        let c = client();
        let e = c.send(&addr, get("/"), false).await.expect_err("refused");
        assert!(e.is_connect(), "{e:?}");
        assert!(e.to_string().contains(&addr), "{e}");
    }

    #[tokio::test]
    async fn a_reset_after_sending_is_not_marked_safe() {
        // Reads the request, then closes without answering.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
            }
        });
        let c = client();
        let e = c.send(&addr, get("/"), false).await.expect_err("no answer");
        assert!(!e.is_connect(), "{e:?}");
    }

    #[tokio::test]
    async fn own_exchange_reuses_its_connections() {
        let (addr, conns) = server(b"hello", usize::MAX).await;
        let c = client();
        for _ in 0..3 {
            let resp = c
                .exchange(&addr, &encoded("GET", "/"), false)
                .await
                .expect("response");
            assert_eq!(resp.status(), 200);
            assert_eq!(collect(resp).await.0, b"hello");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
        assert_eq!(c.raw_idle(&addr), 1);
    }

    #[tokio::test]
    async fn own_exchange_follows_the_framing() {
        let (addr, conns) = scripted(usize::MAX, |head| {
            let req = String::from_utf8_lossy(head).to_string();
            let r: &[u8] = if req.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
            } else if req.contains("/chunked") {
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 5\r\n\r\n"
            } else if req.contains("/custom") {
                b"HTTP/1.1 299 Quite Fine\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 204 No Content\r\n\r\n"
            };
            r.to_vec()
        })
        .await;
        let c = client();
        let resp = c
            .exchange(&addr, &encoded("HEAD", "/"), true)
            .await
            .expect("head");
        assert_eq!(resp.headers()["content-length"], "5");
        assert_eq!(collect(resp).await.0, b"");
        let resp = c
            .exchange(&addr, &encoded("GET", "/chunked"), false)
            .await
            .expect("chunked");
        assert_eq!(resp.status(), 200, "the 103 is skipped");
        let (body, trailers) = collect(resp).await;
        assert_eq!(body, b"abcde");
        assert_eq!(trailers.expect("trailers")["x-sum"], "5");
        let resp = c
            .exchange(&addr, &encoded("GET", "/custom"), false)
            .await
            .expect("custom");
        assert_eq!(resp.status().as_u16(), 299);
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .expect("reason");
        assert_eq!(reason.as_bytes(), b"Quite Fine");
        drop(resp);
        let resp = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("204");
        assert_eq!(resp.status(), 204);
        drop(resp);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "all on one connection");
        assert_eq!(c.raw_idle(&addr), 1);
    }

    #[tokio::test]
    async fn a_body_to_the_end_of_the_connection_is_not_pooled() {
        // HTTP/1.0, no length: the body ends when the connection does.
        let (addr, _) = scripted(1, |_| b"HTTP/1.0 200 OK\r\n\r\nuntil the end".to_vec()).await;
        let c = client();
        let resp = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("response");
        assert_eq!(collect(resp).await.0, b"until the end");
        assert_eq!(c.raw_idle(&addr), 0);
    }

    #[tokio::test]
    async fn own_exchange_errors_are_classified() {
        let (garbage, _) = scripted(1, |_| b"SMTP ready\r\n\r\n".to_vec()).await;
        let (silent, _) = scripted(0, |_| Vec::new()).await;
        let c = client();
        let e = c
            .exchange(&garbage, &encoded("GET", "/"), false)
            .await
            .expect_err("garbage");
        assert!(matches!(e, UpstreamError::Malformed(_)), "{e:?}");
        let e = c
            .exchange(&silent, &encoded("GET", "/"), false)
            .await
            .expect_err("silent");
        assert!(
            matches!(e, UpstreamError::Closed | UpstreamError::Io(_)),
            "{e:?}"
        );
        assert!(!e.is_connect());
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let refused = l.local_addr().expect("addr").to_string();
        drop(l);
        let e = c
            .exchange(&refused, &encoded("GET", "/"), false)
            .await
            .expect_err("refused");
        assert!(e.is_connect(), "{e:?}");
    }

    #[tokio::test]
    async fn own_connections_closed_while_idle_are_skipped() {
        let (addr, conns) = server(b"ok", 1).await;
        let c = client();
        for round in 1..=3 {
            let resp = c
                .exchange(&addr, &encoded("GET", "/"), false)
                .await
                .expect("response");
            assert_eq!(collect(resp).await.0, b"ok");
            assert_eq!(conns.load(Ordering::SeqCst), round);
            // Once the close has reached this end, the idle connection is
            // found closed (by the reaper here, at checkout otherwise).
            wait_until("the idle connection is seen closed", || {
                c.reap();
                c.raw_idle(&addr) == 0
            })
            .await;
        }
    }

    /// A server that answers the first request on each connection, then
    /// reads the second and closes without a word: the keep-alive race.
    /// (Requests arrive one at a time here, so even-numbered ones are each
    /// connection's first.)
    async fn closes_on_the_second_request() -> (String, Arc<AtomicUsize>) {
        let seen = AtomicUsize::new(0);
        scripted(2, move |_| {
            if seen.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
            } else {
                Vec::new()
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_pooled_connection_closed_unanswered_is_resent_only_if_idempotent() {
        let (addr, conns) = closes_on_the_second_request().await;
        let c = client();
        let first = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("response");
        assert_eq!(collect(first).await.0, b"ok");
        assert_eq!(c.raw_idle(&addr), 1);
        // Idempotent: the pooled connection closes unanswered, the request
        // goes again on a new one.
        let again = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("resent on a new connection");
        assert_eq!(collect(again).await.0, b"ok");
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        // Not idempotent: it may have been acted on; the error is returned.
        let err = c
            .exchange_as(&addr, &encoded("POST", "/"), false, false)
            .await
            .expect_err("not resent");
        assert!(matches!(err, UpstreamError::Closed), "{err:?}");
        assert!(!err.is_connect());
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_large_body_streams_and_a_dropped_one_is_not_pooled() {
        let big: &'static [u8] = Box::leak(vec![b'y'; 1 << 20].into_boxed_slice());
        let (addr, conns) = server(big, usize::MAX).await;
        let c = client();
        let resp = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("response");
        assert_eq!(collect(resp).await.0.len(), big.len());
        assert_eq!(c.raw_idle(&addr), 1);
        let resp = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("response");
        let mut body = resp.into_body();
        assert!(body.frame().await.expect("frame").expect("data").is_data());
        drop(body);
        assert_eq!(c.raw_idle(&addr), 0, "a half-read connection is not pooled");
        let resp = c
            .exchange(&addr, &encoded("GET", "/"), false)
            .await
            .expect("response");
        assert_eq!(collect(resp).await.0.len(), big.len());
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_and_counts_against_its_upstream() {
        // A head promising 1000 bytes, 10 of them, then nothing (the
        // connection held open).
        let (addr, _) = scripted(usize::MAX, |_| {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789".to_vec()
        })
        .await;
        let cfg = RouterConfig::from_toml(
            "site = \"a\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[topology]\nfile = \"t.toml\"\n[timeouts]\nupstream_read_ms = 200\n[upstream]\neject_after_failures = 2\n",
        )
        .expect("config");
        let errors = Family::<EndpointLabels, Counter>::default();
        let c = Client {
            c: UpstreamClient::new(&cfg, errors.clone(), None),
            endpoints: Endpoints::default(),
        };
        for (n, own) in [(1, true), (2, false)] {
            let resp = if own {
                c.exchange(&addr, &encoded("GET", "/"), false).await
            } else {
                c.send(&addr, get("/"), false).await
            }
            .expect("a head");
            let started = Instant::now();
            let e = resp.into_body().collect().await.expect_err("stalled");
            assert!(started.elapsed() >= Duration::from_millis(200));
            assert!(e.to_string().contains("upstream_read_ms"), "{e}");
            let counted = errors
                .get_or_create(&EndpointLabels {
                    site: "a".into(),
                    endpoint: addr.clone(),
                })
                .get();
            assert_eq!(counted, n);
        }
        // Two in a row: ejected, as for failures before the head.
        assert!(c.up(&addr).endpoint.is_ejected());
    }

    #[test]
    fn uris_take_the_form_each_protocol_needs() {
        let mut r = Request::get("http://example.com/a?b=1")
            .body(body::empty())
            .expect("request");
        origin_form(&mut r);
        assert_eq!(r.uri().to_string(), "/a?b=1");
        let mut r = get("/x");
        origin_form(&mut r);
        assert_eq!(r.uri().to_string(), "/x");
        let u = absolute("10.0.0.1:80", &"/p?q".parse().expect("uri")).expect("absolute");
        assert_eq!(u.to_string(), "http://10.0.0.1:80/p?q");
        assert!(matches!(
            absolute("not an address", &"/".parse().expect("uri")),
            Err(UpstreamError::Address { .. })
        ));
    }

    #[test]
    fn what_a_client_is_told_names_no_address() {
        let addr = "10.1.2.3:8080";
        let errors = [
            UpstreamError::Connect {
                addr: addr.into(),
                source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
            },
            UpstreamError::ConnectTimeout {
                addr: addr.into(),
                after: Duration::from_secs(1),
            },
            UpstreamError::Io(io::Error::other(format!("reset by {addr}"))),
            absolute("not an address", &"/".parse().expect("uri")).expect_err("bad address"),
            UpstreamError::Closed,
        ];
        for e in errors {
            let told = e.client_reason(addr);
            assert!(!told.contains("10.1.2.3"), "{told}");
            assert!(!told.contains("not an address"), "{told}");
            assert!(!told.is_empty());
        }
        let e = UpstreamError::Connect {
            addr: addr.into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused"),
        };
        assert!(e.to_string().contains(addr), "the log still has it");
    }
}

#[cfg(test)]
mod pick_tests {
    use super::*;

    fn client() -> UpstreamClient {
        let cfg = RouterConfig::from_toml(
            "site = \"a\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[topology]\nfile = \"t.toml\"\n",
        )
        .expect("config");
        UpstreamClient::new(&cfg, Family::default(), None)
    }

    #[test]
    fn picks_balance_this_workers_load_and_avoid_tried() {
        let shared = Endpoints::default();
        let c = client();
        let addrs = vec!["a".to_string(), "b".to_string()];
        let a = c.upstream(&shared, "s", "a", false);
        let _busy: Vec<_> = (0..5).map(|_| a.start()).collect();
        for _ in 0..50 {
            assert_eq!(
                c.pick(&shared, "s", &addrs, false, &[])
                    .expect("one")
                    .addr(),
                "b"
            );
        }
        // Tried already: the other one, however loaded.
        let b = c.upstream(&shared, "s", "b", false);
        assert_eq!(
            c.pick(&shared, "s", &addrs, false, std::slice::from_ref(&b))
                .expect("one")
                .addr(),
            "a"
        );
        // Another worker's load is its own.
        let other = client();
        assert_eq!(other.upstream(&shared, "s", "a", false).in_flight(), 0);
        // Health is shared.
        shared.get("b").set_healthy(false);
        assert_eq!(
            other
                .pick(&shared, "s", &addrs, false, &[])
                .expect("one")
                .addr(),
            "a"
        );
    }

    #[test]
    fn a_dropped_endpoint_is_not_used_after_the_topology_moves_on() {
        let shared = Endpoints::default();
        let c = client();
        let old = c.upstream(&shared, "s", "a", false);
        shared.retain(&[]);
        let new = c.upstream(&shared, "s", "a", false);
        assert!(!Arc::ptr_eq(&old.endpoint, &new.endpoint));
        assert!(Arc::ptr_eq(&new.endpoint, &shared.get("a")));
    }
}
