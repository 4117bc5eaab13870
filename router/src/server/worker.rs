//! A data-plane worker thread: its own single-thread runtime, its socket
//! of every listener and their accept loops, the connections handed to it
//! by other workers ([`super::balance`]), and each connection served from
//! its TLS handshake to its end: the router's own HTTP/1.1 server first
//! where it is on, hyper's for the rest, both calling `Worker::handle`.
//!
//! What bounds a connection's phases, and why here rather than in hyper, is
//! in the parent module's docs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::balance::{Balance, Open};
use super::conn::{Busy, ClientIo, ConnState, Connections, Counted, Expired, IdleBounds};
use crate::config::RouterConfig;
use crate::http1::server as h1_server;
use crate::metrics::{SiteLabels, WorkerLabels};
use crate::proxy::{ConnInfo, Router, Worker};
use crate::tls::peer::PeerTls;
use crate::tls::ReloadingAcceptor;
use crate::upstream::body::{Body, BoxError, RequestBody};

/// hyper's HTTP/1 header count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// An accept error's first back-off, doubled for each one in a row...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ...up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Resolves once `stop` is true (or its sender is gone). The `Ref` that
/// `wait_for` returns is dropped here, so callers stay `Send`.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How a listener's connections start.
#[derive(Clone)]
pub(super) enum Tls {
    /// Plain TCP (`listen.http`).
    None,
    /// TLS, any client (`listen.https`).
    Public(ReloadingAcceptor),
    /// TLS with a client certificate from another site's router
    /// (`listen.peer`, `[peer_tls]`).
    Peer(PeerTls),
}

/// One worker's socket of one listener.
pub(super) struct WorkerSocket {
    pub socket: std::net::TcpListener,
    pub tls: Tls,
    pub h2: bool,
    pub what: &'static str,
}

fn builder(cfg: &RouterConfig, h2: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // Enforced per connection instead: see the module docs.
        .header_read_timeout(None::<Duration>)
        .max_buf_size(cfg.limits.max_header_bytes.max(8192))
        .keep_alive(true);
    // hyper's own limit is 100 headers, on the stack; setting any limit
    // (even the same) makes it build a vector of that size per request.
    if cfg.limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.http1().max_headers(cfg.limits.max_headers);
    }
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    if !h2 {
        b = b.http1_only();
    }
    b
}

/// A connection accepted by one worker and served by another (see
/// [`super::balance`]).
pub(super) struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    /// The listener it came in on: its position in every worker's list.
    listener: usize,
    open: Open,
    counted: Counted,
}

/// Everything a worker thread starts with.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub router: Arc<Router>,
    pub sockets: Vec<WorkerSocket>,
    pub balance: Arc<Balance<Handoff>>,
    pub inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    pub stop: watch::Receiver<bool>,
    pub done: watch::Receiver<bool>,
    pub conns: Arc<Connections>,
}

/// How a worker serves the connections of one listener.
struct ListenerCtx {
    builder: auto::Builder<TokioExecutor>,
    tls: Tls,
    /// HTTP/1.1 (plain, or TLS without ALPN h2) goes to the router's own
    /// server first.
    own_http1: Option<h1_server::Limits>,
}

/// A worker's state shared by its accept loops and its connections.
struct WorkerCtx {
    worker: Arc<Worker>,
    index: usize,
    /// By listener position.
    listeners: Vec<ListenerCtx>,
    balance: Arc<Balance<Handoff>>,
    drain: Arc<Drain>,
    conns: Arc<Connections>,
}

/// One data-plane thread: its own runtime, its own sockets, its own pools.
pub(super) fn worker(setup: WorkerSetup) {
    let WorkerSetup {
        index,
        router,
        sockets,
        balance,
        inbox,
        stop,
        mut done,
        conns,
    } = setup;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "Cannot start a worker runtime; this worker serves nothing.");
            return;
        }
    };
    rt.block_on(async move {
        let worker = Arc::new(Worker::new(router.clone(), index));
        let mut loops = JoinSet::new();
        loops.spawn(reap_idle(worker.clone()));
        // The connections' own stop signal, set when the router's is.
        let drain = Arc::new(Drain::default());
        {
            let drain = drain.clone();
            let mut stop = stop.clone();
            loops.spawn(async move {
                stopped(&mut stop).await;
                drain.start();
            });
        }
        let ctx = Arc::new(WorkerCtx {
            worker,
            index,
            listeners: sockets
                .iter()
                .map(|s| ListenerCtx {
                    builder: builder(&router.cfg, s.h2),
                    tls: s.tls.clone(),
                    own_http1: router.cfg.listen.own_http1.then(|| {
                        h1_server::Limits {
                            // As hyper's buffer (see `builder`).
                            max_head_bytes: router.cfg.limits.max_header_bytes.max(8192),
                            max_headers: router.cfg.limits.max_headers,
                            header_read: router.cfg.timeouts.header_read(),
                            keepalive: router.cfg.timeouts.keepalive(),
                        }
                    }),
                })
                .collect(),
            balance,
            drain,
            conns,
        });
        loops.spawn(inbox_loop(inbox, ctx.clone()));
        for (position, WorkerSocket { socket, what, .. }) in sockets.into_iter().enumerate() {
            let listener = match TcpListener::from_std(socket) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(worker = index, listener = what, error = %e, "Cannot register a listener socket.");
                    continue;
                }
            };
            loops.spawn(accept_loop(listener, position, ctx.clone(), stop.clone()));
        }
        // Keep the runtime (and so the connections) alive until draining is over.
        stopped(&mut done).await;
        loops.abort_all();
    });
}

/// A worker's signal to its connections to finish: set once. A connection
/// checks it each time its task runs (an atomic load; the router's `watch`
/// channel, shared by every connection of every worker, takes a lock on each
/// look), and is woken when it is set.
#[derive(Default)]
struct Drain {
    stopping: AtomicBool,
    wakers: std::sync::Mutex<std::collections::HashMap<u64, std::task::Waker>>,
    next: AtomicU64,
}

impl Drain {
    fn wakers(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, std::task::Waker>> {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells every connection to finish.
    fn start(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let wakers: Vec<_> = self.wakers().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves once [`Self::start`] has been called.
    fn draining(&self) -> Draining<'_> {
        Draining {
            drain: self,
            registered: None,
        }
    }
}

/// One connection's signals for the router's own HTTP/1 server: the
/// worker's drain, and the connection's own state (shed, busy or idle).
struct ConnSignals<'a> {
    drain: &'a Drain,
    state: &'a ConnState,
}

impl h1_server::Signals for ConnSignals<'_> {
    fn is_draining(&self) -> bool {
        self.drain.stopping.load(Ordering::Relaxed) || self.state.is_shed()
    }

    fn draining(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.drain.draining()
    }

    fn shed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.state.shed_requested()
    }

    fn request_started(&self) {
        self.state.request_started();
    }

    fn request_done(&self, at: Instant) {
        self.state.request_done(at);
    }
}

/// See [`Drain::draining`].
struct Draining<'a> {
    drain: &'a Drain,
    /// This future's waker, as registered with the drain.
    registered: Option<(u64, std::task::Waker)>,
}

impl std::future::Future for Draining<'_> {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.drain.stopping.load(Ordering::SeqCst) {
            return std::task::Poll::Ready(());
        }
        let fresh = match &self.registered {
            Some((_, w)) => !w.will_wake(cx.waker()),
            None => true,
        };
        if fresh {
            let id = match &self.registered {
                Some((id, _)) => *id,
                None => self.drain.next.fetch_add(1, Ordering::Relaxed),
            };
            self.drain.wakers().insert(id, cx.waker().clone());
            self.registered = Some((id, cx.waker().clone()));
            // `start` may have run between the first look and the insert.
            if self.drain.stopping.load(Ordering::SeqCst) {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        if let Some((id, _)) = self.registered.take() {
            self.drain.wakers().remove(&id);
        }
    }
}

/// Closes the worker's upstream connections that sat idle too long.
async fn reap_idle(worker: Arc<Worker>) {
    let every = worker.client.reap_interval();
    loop {
        tokio::time::sleep(every).await;
        worker.client.reap();
    }
}

/// A response body that keeps its request counted as in flight until the
/// body has been sent (or dropped).
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

async fn accept_loop(
    listener: TcpListener,
    position: usize,
    ctx: Arc<WorkerCtx>,
    mut stop: watch::Receiver<bool>,
) {
    let metrics = &ctx.worker.router.metrics;
    let mut backoff = Duration::ZERO;
    loop {
        if !ctx.conns.has_room() {
            // At the cap: nothing more is accepted (the listen backlog
            // holds new connections) until one idle the longest has been
            // asked to close, or, all busy, one closes.
            let shed = tokio::select! {
                n = ctx.conns.make_room() => n,
                _ = stopped(&mut stop) => return,
            };
            if shed > 0 {
                metrics.connections_shed.inc_by(shed);
                if ctx.conns.warn_shedding() {
                    tracing::warn!(
                        max_connections = ctx.conns.max(),
                        shed_total = metrics.connections_shed.get(),
                        "At the connection cap (limits.max_connections): closing the connections idle the longest to make room."
                    );
                }
            }
        }
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = Duration::ZERO;
                    x
                }
                Err(e) => {
                    // Out of file descriptors or memory, and the like:
                    // back off rather than spin, keep serving.
                    metrics.accept_errors.inc();
                    backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                    if out_of_descriptors(&e) && ctx.conns.shed_oldest_idle() {
                        // An idle connection gives one back.
                        metrics.connections_shed.inc();
                    }
                    if ctx.conns.warn_accept() {
                        tracing::warn!(
                            error = %e,
                            retry_in = ?backoff,
                            open = ctx.conns.open(),
                            errors_total = metrics.accept_errors.get(),
                            "Accepting a connection failed; backing off."
                        );
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        _ = stopped(&mut stop) => return,
                    }
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let _ = tcp.set_nodelay(true);
        let counted = ctx.conns.count();
        let (to, open) = ctx.balance.place(ctx.index);
        if to == ctx.index {
            serve(&ctx, tcp, peer, position, open, counted);
            continue;
        }
        // Another worker has clearly fewer connections: it takes this one.
        ctx.worker.router.metrics.handoffs.inc();
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "Cannot hand a connection over; dropping it.");
                continue;
            }
        };
        let h = Handoff {
            tcp,
            peer,
            listener: position,
            open,
            counted,
        };
        if let Err(h) = ctx.balance.hand_off(to, h) {
            // That worker is gone: serve it here after all.
            let open = ctx.balance.open(ctx.index);
            match TcpStream::from_std(h.tcp) {
                Ok(tcp) => serve(&ctx, tcp, h.peer, position, open, h.counted),
                Err(e) => {
                    tracing::debug!(peer = %peer, error = %e, "Cannot take a connection back; dropping it.")
                }
            }
        }
    }
}

/// The process (or the system) is out of file descriptors.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error()
        .is_some_and(|n| matches!(Errno::from_raw(n), Errno::EMFILE | Errno::ENFILE))
}

/// Serves the connections other workers hand to this one.
async fn inbox_loop(mut inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>, ctx: Arc<WorkerCtx>) {
    while let Some(h) = inbox.recv().await {
        match TcpStream::from_std(h.tcp) {
            Ok(tcp) => serve(&ctx, tcp, h.peer, h.listener, h.open, h.counted),
            Err(e) => {
                tracing::debug!(peer = %h.peer, error = %e, "Cannot register a handed-over connection; dropping it.")
            }
        }
    }
}

/// Serves one client connection on this worker, in a task of its own.
fn serve(
    ctx: &Arc<WorkerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    listener: usize,
    open: Open,
    counted: Counted,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let gauge = ctx
            .worker
            .router
            .metrics
            .worker_connections
            .get_or_create(&WorkerLabels {
                worker: ctx.index.to_string(),
            })
            .clone();
        gauge.inc();
        let _counted = (
            open,
            counted,
            on_drop(move || {
                gauge.dec();
            }),
        );
        let Some(l) = ctx.listeners.get(listener) else {
            tracing::error!(
                listener,
                "A connection came from a listener this worker does not have."
            );
            return;
        };
        let timeouts = &ctx.worker.router.cfg.timeouts;
        let header_read = timeouts.header_read();
        let state = Arc::new(ConnState::new(ctx.conns.epoch()));
        let _listed = ctx.conns.register(ctx.index, state.clone());
        let mut conn = ConnInfo::new(Some(peer), !matches!(l.tls, Tls::None));
        // Everything written to the client, under TLS if any, is held to
        // the send timeout.
        let tcp = ClientIo::new(tcp, state.clone(), timeouts.send());
        let signals = ConnSignals {
            drain: &ctx.drain,
            state: &state,
        };
        // One code path for both: a TLS stream or the plain socket, boxed
        // (a vtable call per read/write is noise next to the syscall).
        // HTTP/1.1 (plain, or TLS without ALPN h2): the router's own server,
        // until a request it does not take; then hyper serves the rest of
        // the connection, from that request on.
        let io: Box<dyn Io> = match &l.tls {
            Tls::None => match &l.own_http1 {
                Some(limits) => match own_http1(tcp, limits, &ctx, &conn, &signals).await {
                    Some(io) => io,
                    None => return,
                },
                None => Box::new(tcp),
            },
            Tls::Peer(peer_tls) => {
                let metrics = &ctx.worker.router.metrics;
                let handshake = tokio::select! {
                    r = tokio::time::timeout(header_read, peer_tls.accept(tcp)) => r,
                    () = state.shed_requested() => return,
                };
                let (s, site) = match handshake {
                    Ok(Ok(accepted)) => accepted,
                    Ok(Err(e)) => {
                        metrics.peer_handshake_failures.inc();
                        // Counted; at debug level, as anyone can knock.
                        tracing::debug!(peer = %peer, error = %e, "Peer TLS handshake refused (no client certificate, or not a site's router certificate signed by peer_tls.ca_file).");
                        return;
                    }
                    Err(_) => {
                        metrics.peer_handshake_failures.inc();
                        tracing::debug!(peer = %peer, "Peer TLS handshake timed out.");
                        return;
                    }
                };
                metrics
                    .peer_connections
                    .get_or_create(&SiteLabels {
                        site: site.to_string(),
                    })
                    .inc();
                tracing::debug!(peer = %peer, from_site = %site, "Peer router connected.");
                conn = ConnInfo::from_peer_router(Some(peer), site);
                match after_handshake(s, l.own_http1.as_ref(), &ctx, &conn, &signals).await {
                    Some(io) => io,
                    None => return,
                }
            }
            Tls::Public(acceptor) => {
                let handshake = tokio::select! {
                    r = tokio::time::timeout(header_read, acceptor.accept(tcp)) => r,
                    () = state.shed_requested() => return,
                };
                match handshake {
                    Ok(Ok(s)) => {
                        match after_handshake(s, l.own_http1.as_ref(), &ctx, &conn, &signals).await
                        {
                            Some(io) => io,
                            None => return,
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed.");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %peer, "TLS handshake timed out.");
                        return;
                    }
                }
            }
        };
        state.set_hyper();
        let svc = {
            let state = state.clone();
            let worker = ctx.worker.clone();
            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let busy = state.enter(req.version());
                let req = req.map(RequestBody::Hyper);
                // A combinator, not an `async` block: a block would keep
                // a second copy of the request (see `proxy`'s docs).
                worker.clone().handle(req, conn.clone()).map(move |resp| {
                    Ok::<_, Infallible>(resp.map(|body| Tracked { body, _busy: busy }))
                })
            })
        };
        let c = l
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), svc);
        tokio::pin!(c);
        let bounds = IdleBounds {
            header_read,
            keepalive: timeouts.keepalive(),
        };
        // How long a connection asked to close may take to finish what it
        // has in flight.
        let grace = timeouts.drain();
        let result = tokio::select! {
            biased;
            r = c.as_mut() => r,
            _ = ctx.drain.draining() => {
                c.as_mut().graceful_shutdown();
                c.await
            }
            () = state.shed_requested() => {
                tracing::debug!(peer = %peer, "Closing a connection to make room for others (limits.max_connections).");
                c.as_mut().graceful_shutdown();
                match tokio::time::timeout(grace, c.as_mut()).await {
                    Ok(r) => r,
                    Err(_) => return,
                }
            }
            why = state.expired(bounds) => match why {
                Expired::Http2 => {
                    tracing::debug!(peer = %peer, timeout = ?bounds.keepalive, "HTTP/2 connection idle past the keep-alive bound; GOAWAY.");
                    c.as_mut().graceful_shutdown();
                    match tokio::time::timeout(grace, c.as_mut()).await {
                        Ok(r) => r,
                        Err(_) => return,
                    }
                }
                Expired::KeepAlive => {
                    tracing::debug!(peer = %peer, timeout = ?bounds.keepalive, "Idle past the keep-alive bound; closing the connection.");
                    return;
                }
                Expired::Head => {
                    tracing::debug!(peer = %peer, timeout = ?header_read, "No request head in time; closing the connection.");
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
        }
    });
}

/// Serves `io` with the router's own HTTP/1.1 server; the connection for
/// hyper if a request needs it (`None`: it is over).
/// A TLS connection once its handshake is done: HTTP/2 (by ALPN) to hyper,
/// HTTP/1.1 to the router's own server when it is on. `None`: the
/// connection is finished.
async fn after_handshake<IO>(
    s: tokio_rustls::server::TlsStream<IO>,
    own: Option<&h1_server::Limits>,
    ctx: &Arc<WorkerCtx>,
    conn: &ConnInfo,
    signals: &ConnSignals<'_>,
) -> Option<Box<dyn Io>>
where
    tokio_rustls::server::TlsStream<IO>: Io + 'static,
{
    let h2 = s.get_ref().1.alpn_protocol() == Some(&b"h2"[..]);
    if h2 {
        signals.state.set_h2();
    }
    match own {
        Some(limits) if !h2 => own_http1(s, limits, ctx, conn, signals).await,
        _ => Some(Box::new(s)),
    }
}

async fn own_http1<IO: Io + 'static>(
    io: IO,
    limits: &h1_server::Limits,
    ctx: &Arc<WorkerCtx>,
    conn: &ConnInfo,
    signals: &ConnSignals<'_>,
) -> Option<Box<dyn Io>> {
    let worker = &ctx.worker;
    let handle = |req| worker.clone().handle(req, conn.clone());
    match h1_server::serve(io, limits, handle, signals).await {
        h1_server::Ended::Closed => None,
        h1_server::Ended::Handover { io, read } => {
            Some(Box::new(h1_server::Prefixed::new(read, io)))
        }
    }
}

/// Runs `f` when dropped (when a connection's task ends, however it ends).
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn on_drop<F: FnOnce()>(f: F) -> OnDrop<F> {
    OnDrop(Some(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_wakes_every_connection_once_started() {
        let drain = Arc::new(Drain::default());
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let d = drain.clone();
                tokio::spawn(async move { d.draining().await })
            })
            .collect();
        // Let them register.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(drain.wakers().len(), 3);
        drain.start();
        for w in waiting {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("joined");
        }
        // Late ones resolve at once; nothing is left registered.
        drain.draining().await;
        assert!(drain.wakers().is_empty());
    }
}
