//! Listeners, connections and lifecycle.
//!
//! Each listener (plain HTTP, HTTPS, admin) has an accept loop; each
//! connection is served by hyper's auto builder (HTTP/1.1, and HTTP/2 by ALPN
//! on TLS or by prior knowledge on plain). On shutdown the loops stop
//! accepting, in-flight requests get up to the drain deadline to finish, and
//! whatever is left is cut.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use ezone_topology::{AnyStore, EtcdStore, FileStore, Watcher};

use crate::config::RouterConfig;
use crate::proxy::{ConnInfo, Router};
use crate::tls::ReloadingAcceptor;

/// How often TLS certificate files are checked for changes.
pub const TLS_RELOAD_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {what} {addr}: {source} (is another process using it?)")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Topology(#[from] ezone_topology::StoreError),
}

/// A running router.
pub struct RunningRouter {
    pub router: Arc<Router>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    graceful: Arc<GracefulShutdown>,
    drain: Duration,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { what, addr, source })
}

fn builder(cfg: &RouterConfig, h2: bool) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.timeouts.header_read())
        .max_buf_size(cfg.limits.max_header_bytes.max(8192))
        .max_headers(cfg.limits.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(20)));
    if !h2 {
        b = b.http1_only();
    }
    b
}

impl RunningRouter {
    /// Loads the topology source, binds every listener and starts serving.
    pub async fn start(cfg: RouterConfig) -> Result<RunningRouter, ServeError> {
        let store = match &cfg.topology.file {
            Some(f) => AnyStore::File(FileStore::new(f)),
            None => AnyStore::Etcd(Box::new(
                EtcdStore::connect(&cfg.topology.etcd, &cfg.topology.prefix).await?,
            )),
        };
        let watcher = Watcher::start(store);
        let drain = cfg.timeouts.drain();
        let router = Arc::new(Router::new(cfg.clone(), watcher));
        let (stop, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::health::run(Arc::downgrade(&router)));

        let mut http = None;
        if let Some(addr) = cfg.listen.http {
            let l = bind("listen.http", addr).await?;
            http = l.local_addr().ok();
            let b = Arc::new(builder(&cfg, cfg.listen.h2c));
            tasks.spawn(accept_loop(
                l,
                router.clone(),
                b,
                None,
                graceful.clone(),
                stop_rx.clone(),
            ));
        }
        let mut https = None;
        if let (Some(addr), Some(cert), Some(key)) =
            (cfg.listen.https, &cfg.listen.tls_cert, &cfg.listen.tls_key)
        {
            let acceptor = ReloadingAcceptor::start(cert.clone(), key.clone(), TLS_RELOAD_POLL)?;
            let l = bind("listen.https", addr).await?;
            https = l.local_addr().ok();
            let b = Arc::new(builder(&cfg, true));
            tasks.spawn(accept_loop(
                l,
                router.clone(),
                b,
                Some(acceptor),
                graceful.clone(),
                stop_rx.clone(),
            ));
        }
        let mut admin = None;
        if let Some(a) = &cfg.admin {
            let l = bind("admin.listen", a.listen).await?;
            admin = l.local_addr().ok();
            tasks.spawn(admin_loop(l, router.clone(), stop_rx.clone()));
        }
        tracing::info!(site = %cfg.site, http = ?http, https = ?https, admin = ?admin, "Router listening.");
        Ok(RunningRouter {
            router,
            http,
            https,
            admin,
            stop,
            tasks,
            graceful,
            drain,
        })
    }

    /// Stops accepting, lets in-flight requests finish up to the drain
    /// deadline, then stops everything.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        // The accept loops return on `stop`; the health loop is aborted. Then
        // only connection tasks remain, each watched by `graceful`.
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        match Arc::try_unwrap(self.graceful) {
            Ok(graceful) => {
                if tokio::time::timeout(self.drain, graceful.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!(deadline = ?self.drain, "Drain deadline passed; cutting the remaining connections.");
                }
            }
            Err(_) => {
                tracing::warn!("Connections could not be drained: a listener is still running.")
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: Arc<Router>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    tls: Option<ReloadingAcceptor>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let handshake_timeout = router.cfg.timeouts.header_read();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let graceful = graceful.watcher();
        tokio::spawn(async move {
            let conn = ConnInfo {
                peer: Some(peer),
                tls: tls.is_some(),
            };
            let svc = service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.handle(req, conn).await) }
            });
            let result = match tls {
                None => {
                    let c = builder
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .into_owned();
                    graceful.watch(c).await
                }
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed.");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(peer = %peer, "TLS handshake timed out.");
                                return;
                            }
                        };
                    let c = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .into_owned();
                    graceful.watch(c).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "Connection ended with an error.");
            }
        });
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
            _ = stop.changed() => return,
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
