//! Listeners, connections and lifecycle: a thread per core.
//!
//! The data plane runs on `workers` threads, each with its own single-thread
//! tokio runtime, its own `SO_REUSEPORT` listener socket (the kernel spreads
//! connections over them) and its own upstream connection pools. A request
//! is handled start to finish on one thread: no cross-thread wake-ups, which
//! on a small machine cost more CPU than the proxying itself (measured: the
//! same router on a shared multi-thread runtime used ~15% more CPU per
//! request). The topology watcher, health checks and the admin listener run
//! on the caller's runtime (the control plane).
//!
//! Each connection is served by hyper's auto builder (HTTP/1.1, and HTTP/2 by
//! ALPN on TLS or by prior knowledge on plain). The listeners: plain
//! (`listen.http`), HTTPS (`listen.https`) and, with `[peer_tls]`, the peer
//! listener (`listen.peer`), whose TLS handshake requires another site's
//! router certificate and whose connections carry the site it names
//! ([`crate::peer_tls`]). On shutdown the workers stop
//! accepting, every connection is asked to finish its in-flight requests
//! (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY), and
//! whatever is still open at the drain deadline is cut.
//!
//! Every phase of a connection is bounded (`[timeouts]`): the TLS handshake
//! and each request head (`header_read_ms`), an idle connection
//! (`keepalive_ms`: HTTP/1.1 between requests, HTTP/2 with no stream open,
//! then GOAWAY), the request body (`body_read_ms`, in `crate::body`), the
//! answer the client must take (`send_ms`, in [`ClientIo`]), the upstream's
//! answer (`request_ms`, `upstream_read_ms`). The head and idle bounds are
//! kept here rather than by hyper, which arms, allocates and cancels a
//! timer for every request of a keep-alive connection (measured: ~4% of the
//! router's CPU per request). Here a connection counts its requests in
//! flight and notes when it last went idle ([`ConnState`]); one timer per
//! connection checks that, re-armed at most about once per timeout period.
//!
//! The number of client connections is capped (`limits.max_connections`,
//! by default from the file descriptor limit, which is raised to its hard
//! limit at start): at the cap the accept loops stop accepting and shed the
//! connections idle the longest ([`Connections`]). Accept errors (out of
//! file descriptors or memory) back off, from 10 ms doubling to 1 s, and
//! are logged at most once a second.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use ezone_topology::{AnyStore, EtcdStore, FileStore, Watcher};

use crate::balance::{Balance, Open};
use crate::body::Body;
use crate::config::RouterConfig;
use crate::conn::{Busy, ClientIo, ConnState, Connections, Counted, Expired, IdleBounds};
use crate::metrics::{SiteLabels, WorkerLabels};
use crate::peer_tls::PeerTls;
use crate::proxy::{ConnInfo, Router, Worker};
use crate::tls::ReloadingAcceptor;

/// How often TLS certificate files are checked for changes.
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(2);
/// The listen backlog of each worker's socket.
pub const LISTEN_BACKLOG: u32 = 1024;
/// hyper's HTTP/1 header count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;
/// An accept error's first back-off, doubled for each one in a row...
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// ...up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {what} {addr}: {source} (is another process using it?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start router worker thread {index}: {source}")]
    Worker {
        index: usize,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
    #[error(transparent)]
    Topology(#[from] ezone_topology::StoreError),
    #[error(
        "neither [peer_tls] nor routing.peer_secret is set, and the topology has other sites \
         ({}) whose routers this router forwards to and takes requests from: without either \
         any client could pose as one of them. Set up peer TLS ([peer_tls] and listen.peer, \
         see docs/router.md \"Peer TLS\") on every router of the deployment, or set \
         routing.peer_secret to the same secret (16 or more visible ASCII characters) on \
         every router.",
        sites.join(", ")
    )]
    NoPeerSecret { sites: Vec<String> },
}

/// How long a router without `routing.peer_secret` waits at start for the
/// topology, to refuse to run if it names other sites. If none arrives in
/// time (etcd down), the router starts; cross-site requests are then refused
/// per request (see `proxy`) and an error is logged once the topology shows
/// other sites.
pub const PEER_CHECK_WAIT: Duration = Duration::from_secs(5);

/// The sites other than `site` in `snap`'s topology: the peers whose
/// routers this one forwards to.
fn other_sites(snap: &ezone_topology::Snapshot, site: &str) -> Vec<String> {
    snap.topology
        .sites
        .keys()
        .filter(|s| *s != site)
        .cloned()
        .collect()
}

/// Without a peer secret: refuses to start if the topology (once loaded,
/// within [`PEER_CHECK_WAIT`]) has other sites, and from then on logs an
/// error for each topology version that does.
async fn check_peer_trust(
    cfg: &RouterConfig,
    watcher: &Watcher,
    control: &mut JoinSet<()>,
) -> Result<(), ServeError> {
    if cfg.routing.peer_secret.is_some() || cfg.peer_tls.is_some() {
        return Ok(());
    }
    let mut rx = watcher.subscribe();
    let first = tokio::time::timeout(PEER_CHECK_WAIT, rx.wait_for(|s| s.is_some()))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|s| s.clone()));
    if let Some(snap) = first {
        let sites = other_sites(&snap, &cfg.site);
        if !sites.is_empty() {
            return Err(ServeError::NoPeerSecret { sites });
        }
    }
    let site = cfg.site.clone();
    control.spawn(async move {
        let mut warned = None;
        loop {
            let snap = rx.borrow_and_update().clone();
            if let Some(snap) = snap {
                let sites = other_sites(&snap, &site);
                if !sites.is_empty() && warned != Some(snap.version) {
                    warned = Some(snap.version);
                    tracing::error!(site = %site, peers = ?sites, version = snap.version, "The topology has other sites but neither [peer_tls] nor routing.peer_secret is set: requests for their shards are refused with 503. Set up peer TLS (or the same routing.peer_secret) on every router and restart.");
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// A client connection's byte stream: plain TCP or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

/// Resolves once `stop` is true (or its sender is gone). The `Ref` that
/// `wait_for` returns is dropped here, so callers stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// How a listener's connections start.
#[derive(Clone)]
enum Tls {
    /// Plain TCP (`listen.http`).
    None,
    /// TLS, any client (`listen.https`).
    Public(ReloadingAcceptor),
    /// TLS with a client certificate from another site's router
    /// (`listen.peer`, `[peer_tls]`).
    Peer(PeerTls),
}

/// One listener's sockets: one per worker, all on the same port.
struct Listener {
    what: &'static str,
    sockets: Vec<std::net::TcpListener>,
    tls: Tls,
    h2: bool,
}

/// Binds `workers` `SO_REUSEPORT` sockets on `addr` (the first one picks the
/// port if `addr` has port 0). Returned as std sockets: each worker registers
/// its own with its own runtime.
fn bind_reuseport(
    what: &'static str,
    addr: SocketAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ServeError> {
    let err = |source| ServeError::Bind { what, addr, source };
    let mut bound = addr;
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(err)?;
        socket.set_reuseaddr(true).map_err(err)?;
        socket.set_reuseport(true).map_err(err)?;
        socket.set_nodelay(true).map_err(err)?;
        socket.bind(bound).map_err(err)?;
        let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
        bound = listener.local_addr().map_err(err)?;
        out.push(listener.into_std().map_err(err)?);
    }
    Ok((bound, out))
}

/// One worker's socket of one listener.
struct WorkerSocket {
    socket: std::net::TcpListener,
    tls: Tls,
    h2: bool,
    what: &'static str,
}

/// A running router.
pub struct RunningRouter {
    pub router: Arc<Router>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    /// The peer listener (`listen.peer`, with `[peer_tls]`).
    pub peer: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    /// Sent when draining is over: workers then drop what is left.
    done: watch::Sender<bool>,
    control: JoinSet<()>,
    threads: Vec<std::thread::JoinHandle<()>>,
    conns: Arc<Connections>,
    drain: Duration,
    /// The access log's writer thread, if `[access_log]` is set.
    access_log: Option<crate::access_log::Writer>,
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

/// The number of data-plane threads: `listen.workers`, else the number of CPUs.
pub fn worker_count(cfg: &RouterConfig) -> usize {
    cfg.listen
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

impl RunningRouter {
    /// Loads the topology source, binds every listener and starts serving.
    /// Must be called on a tokio runtime (the control plane runs there).
    pub async fn start(cfg: RouterConfig) -> Result<RunningRouter, ServeError> {
        // Loaded first: a peer certificate that does not name this router's
        // site (or that its peers would refuse) stops the start.
        let peer_tls = match &cfg.peer_tls {
            Some(c) => Some(PeerTls::start(c, &cfg.site, TLS_RELOAD_POLL)?),
            None => None,
        };
        let store = match &cfg.topology.file {
            Some(f) => AnyStore::File(FileStore::new(f)),
            None => AnyStore::Etcd(Box::new(
                EtcdStore::connect_with(&cfg.topology.etcd_options(), &cfg.topology.prefix).await?,
            )),
        };
        let workers = worker_count(&cfg);
        let watcher = Watcher::start(store);
        let mut control = JoinSet::new();
        check_peer_trust(&cfg, &watcher, &mut control).await?;
        let drain = cfg.timeouts.drain();
        let mut router = Router::new(cfg.clone(), watcher);
        router.peer_tls = peer_tls.clone();
        let access_log = match &cfg.access_log {
            Some(c) => {
                let (log, writer) =
                    crate::access_log::Writer::start(c, router.metrics.access_log_dropped.clone())?;
                router.access_log = Some(log);
                on_sighup((!c.is_stdout()).then(|| writer.reopener()), &mut control);
                Some(writer)
            }
            None => {
                on_sighup(None, &mut control);
                None
            }
        };
        let router = Arc::new(router);
        let (stop, stop_rx) = watch::channel(false);
        let (done, done_rx) = watch::channel(false);
        let fds = raise_fd_limit();
        let cap = cfg.limits.connection_cap(fds);
        if let (Some(fds), Some(set)) = (fds, cfg.limits.max_connections) {
            if set > cfg.limits.connection_cap(Some(fds)) {
                tracing::warn!(max_connections = set, fd_limit = fds, "limits.max_connections is more than the file descriptor limit leaves room for (two per connection); accepting may fail before the cap is reached.");
            }
        }
        router
            .metrics
            .max_connections
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
        let conns = Arc::new(Connections::new(
            workers,
            cap,
            router.metrics.connections.clone(),
        ));
        control.spawn(crate::health::run(Arc::downgrade(&router)));

        let mut listeners = Vec::new();
        let mut http = None;
        if let Some(addr) = cfg.listen.http {
            let (bound, sockets) = bind_reuseport("listen.http", addr, workers)?;
            http = Some(bound);
            listeners.push(Listener {
                what: "http",
                sockets,
                tls: Tls::None,
                h2: cfg.listen.h2c,
            });
        }
        let mut https = None;
        if let (Some(addr), Some(cert), Some(key)) =
            (cfg.listen.https, &cfg.listen.tls_cert, &cfg.listen.tls_key)
        {
            let acceptor = ReloadingAcceptor::start(cert.clone(), key.clone(), TLS_RELOAD_POLL)?;
            let (bound, sockets) = bind_reuseport("listen.https", addr, workers)?;
            https = Some(bound);
            listeners.push(Listener {
                what: "https",
                sockets,
                tls: Tls::Public(acceptor),
                h2: true,
            });
        }
        let mut peer = None;
        if let (Some(addr), Some(tls)) = (cfg.listen.peer, peer_tls) {
            let (bound, sockets) = bind_reuseport("listen.peer", addr, workers)?;
            peer = Some(bound);
            listeners.push(Listener {
                what: "peer",
                sockets,
                tls: Tls::Peer(tls),
                h2: true,
            });
        }
        let mut admin = None;
        if let Some(a) = &cfg.admin {
            let l = TcpListener::bind(a.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    what: "admin.listen",
                    addr: a.listen,
                    source,
                })?;
            admin = l.local_addr().ok();
            control.spawn(admin_loop(l, router.clone(), stop_rx.clone()));
        }

        // Hand each worker its socket of every listener.
        let mut per_worker: Vec<Vec<WorkerSocket>> = (0..workers).map(|_| Vec::new()).collect();
        for l in listeners {
            for (i, s) in l.sockets.into_iter().enumerate() {
                per_worker[i].push(WorkerSocket {
                    socket: s,
                    tls: l.tls.clone(),
                    h2: l.h2,
                    what: l.what,
                });
            }
        }
        let (balance, inboxes) = Balance::new(workers);
        let mut threads = Vec::with_capacity(workers);
        for (index, (sockets, inbox)) in per_worker.into_iter().zip(inboxes).enumerate() {
            let w = WorkerSetup {
                index,
                router: router.clone(),
                sockets,
                balance: balance.clone(),
                inbox,
                stop: stop_rx.clone(),
                done: done_rx.clone(),
                conns: conns.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ezone-worker-{index}"))
                .spawn(move || worker(w))
                .map_err(|source| ServeError::Worker { index, source })?;
            threads.push(thread);
        }
        tracing::info!(site = %cfg.site, workers, http = ?http, https = ?https, peer = ?peer, admin = ?admin, max_connections = cap, fd_limit = ?fds, "Router listening.");
        Ok(RunningRouter {
            router,
            http,
            https,
            peer,
            admin,
            stop,
            done,
            control,
            threads,
            conns,
            drain,
            access_log,
        })
    }

    /// Stops accepting, lets in-flight requests finish up to the drain
    /// deadline, then stops everything.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(self.drain, self.conns.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline = ?self.drain,
                open = self.conns.open(),
                "Drain deadline passed; cutting the remaining connections."
            );
        }
        let _ = self.done.send(true);
        self.control.abort_all();
        while self.control.join_next().await.is_some() {}
        let threads = std::mem::take(&mut self.threads);
        let access_log = self.access_log.take();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            // After the workers: the lines of the requests they were
            // still serving (cut at the drain deadline) are in by now.
            if let Some(w) = access_log {
                w.finish();
            }
        })
        .await;
    }
}

/// SIGHUP reopens the access log file, for log rotation (logrotate's
/// `postrotate`: `kill -HUP`, a service manager's reload). Handled whatever
/// the config: a reload must never end the router (the signal's default),
/// also without a log file to reopen (certificates are reloaded when their
/// files change, see `crate::tls`).
fn on_sighup(reopen: Option<crate::access_log::Reopen>, control: &mut JoinSet<()>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot install a SIGHUP handler: the access log will not be reopened on SIGHUP (rotate it with copytruncate), and a SIGHUP ends the router.");
            return;
        }
    };
    control.spawn(async move {
        while hup.recv().await.is_some() {
            match &reopen {
                Some(reopen) => reopen.request(),
                None => tracing::info!("SIGHUP: no access log file to reopen; nothing to do."),
            }
        }
    });
}

/// A connection accepted by one worker and served by another (see
/// [`crate::balance`]).
struct Handoff {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    /// The listener it came in on: its position in every worker's list.
    listener: usize,
    open: Open,
    counted: Counted,
}

/// Everything a worker thread starts with.
struct WorkerSetup {
    index: usize,
    router: Arc<Router>,
    sockets: Vec<WorkerSocket>,
    balance: Arc<Balance<Handoff>>,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
    stop: watch::Receiver<bool>,
    done: watch::Receiver<bool>,
    conns: Arc<Connections>,
}

/// How a worker serves the connections of one listener.
struct ListenerCtx {
    builder: auto::Builder<TokioExecutor>,
    tls: Tls,
    /// HTTP/1.1 (plain, or TLS without ALPN h2) goes to the router's own
    /// server first.
    own_http1: Option<crate::h1_server::Limits>,
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
fn worker(setup: WorkerSetup) {
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
                        crate::h1_server::Limits {
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

impl crate::h1_server::Signals for ConnSignals<'_> {
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
    type Error = crate::body::BoxError;

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

/// Raises this process's file descriptor limit to its hard limit; the
/// limit in effect (`None`: unknown).
fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::debug!(
                from = soft,
                to = hard,
                "File descriptor limit raised to its hard limit."
            );
            Some(hard)
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "Cannot raise the file descriptor limit; keeping it.");
            Some(soft)
        }
    }
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
                let req = req.map(crate::body::RequestBody::Hyper);
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
    own: Option<&crate::h1_server::Limits>,
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
    limits: &crate::h1_server::Limits,
    ctx: &Arc<WorkerCtx>,
    conn: &ConnInfo,
    signals: &ConnSignals<'_>,
) -> Option<Box<dyn Io>> {
    let worker = &ctx.worker;
    let handle = |req| worker.clone().handle(req, conn.clone());
    match crate::h1_server::serve(io, limits, handle, signals).await {
        crate::h1_server::Ended::Closed => None,
        crate::h1_server::Ended::Handover { io, read } => {
            Some(Box::new(crate::h1_server::Prefixed::new(read, io)))
        }
    }
}

async fn admin_loop(listener: TcpListener, router: Arc<Router>, mut stop: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| crate::admin::handle(router.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
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
