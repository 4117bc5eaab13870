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
//! ([`crate::tls::peer`]). On shutdown the workers stop
//! accepting, every connection is asked to finish its in-flight requests
//! (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY), and
//! whatever is still open at the drain deadline is cut.
//!
//! Every phase of a connection is bounded (`[timeouts]`): the TLS handshake
//! and each request head (`header_read_ms`), an idle connection
//! (`keepalive_ms`: HTTP/1.1 between requests, HTTP/2 with no stream open,
//! then GOAWAY), the request body (`body_read_ms`, in `crate::upstream::body`), the
//! answer the client must take (`send_ms`, in [`conn::ClientIo`]), the upstream's
//! answer (`request_ms`, `upstream_read_ms`). The head and idle bounds are
//! kept here rather than by hyper, which arms, allocates and cancels a
//! timer for every request of a keep-alive connection (measured: ~4% of the
//! router's CPU per request). Here a connection counts its requests in
//! flight and notes when it last went idle ([`conn::ConnState`]); one timer per
//! connection checks that, re-armed at most about once per timeout period.
//!
//! The number of client connections is capped (`limits.max_connections`,
//! by default from the file descriptor limit, which is raised to its hard
//! limit at start): at the cap the accept loops stop accepting and shed the
//! connections idle the longest ([`Connections`]). Accept errors (out of
//! file descriptors or memory) back off, from 10 ms doubling to 1 s, and
//! are logged at most once a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use ezone_topology::{AnyStore, EtcdStore, FileStore, Watcher};

pub mod admin;
pub mod balance;
pub mod conn;
pub mod health;
mod worker;

use crate::config::RouterConfig;
use crate::proxy::Router;
use crate::tls::peer::PeerTls;
use crate::tls::ReloadingAcceptor;
use balance::Balance;
use conn::Connections;
use worker::{stopped, Tls, WorkerSetup, WorkerSocket};

/// How often TLS certificate files are checked for changes.
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(2);
/// The listen backlog of each worker's socket.
pub const LISTEN_BACKLOG: u32 = 1024;

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
        let workers = cfg.worker_count();
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
        control.spawn(health::run(Arc::downgrade(&router)));

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
                .spawn(move || worker::worker(w))
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
            let svc = service_fn(move |req| admin::handle(router.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
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
