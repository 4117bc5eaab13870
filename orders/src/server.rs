//! The listener and its lifecycle: accept connections, serve each with
//! hyper (HTTP/1.1 with keep-alive, or HTTP/2 by prior knowledge, as the
//! router's `upstream.protocol` may choose), and on shutdown stop accepting,
//! let in-flight requests finish (up to [`DRAIN_TIMEOUT`]) and close the pool.

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
use tokio::task::JoinHandle;

use crate::config::{ConfigError, OrdersConfig};
use crate::db::Db;
use crate::http::App;
use crate::metrics::Metrics;

/// How long shutdown waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the start-up connection check may take (its failure is logged, not fatal).
pub const STARTUP_PING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on listen = {addr}: {source} (is another process using it?)")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running order service.
pub struct RunningOrders {
    /// The bound address (the real port when `listen` had port 0).
    pub addr: SocketAddr,
    pub site: String,
    app: Arc<App>,
    stop: watch::Sender<bool>,
    accept: JoinHandle<GracefulShutdown>,
}

impl RunningOrders {
    /// Validates the config, builds the pool, binds and starts serving. Must
    /// be called on a tokio runtime. Postgres being down does not stop the
    /// start: requests get 503 until it is back.
    pub async fn start(cfg: OrdersConfig) -> Result<RunningOrders, ServeError> {
        cfg.validate()?;
        let db = Db::new(&cfg)?;
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Bind {
            addr: cfg.listen,
            source,
        })?;
        match tokio::time::timeout(STARTUP_PING_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(site = %cfg.site, postgres = %cfg.redacted_postgres(), error = %e, "Postgres is not reachable yet; requests get 503 until it is.")
            }
            Err(_) => {
                tracing::warn!(site = %cfg.site, postgres = %cfg.redacted_postgres(), "Postgres did not answer the start-up check in time; requests get 503 until it does.")
            }
        }
        let app = Arc::new(App::new(db, Metrics::new()));
        let (stop, stop_rx) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(listener, app.clone(), stop_rx));
        tracing::info!(site = %cfg.site, listen = %addr, pool_size = cfg.pool_size, "Order service listening.");
        Ok(RunningOrders {
            addr,
            site: cfg.site,
            app,
            stop,
            accept,
        })
    }

    /// The request handler (for its metrics and pool).
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Stops accepting, lets in-flight requests finish up to
    /// [`DRAIN_TIMEOUT`], then closes the pool.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        match self.accept.await {
            Ok(graceful) => {
                if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
                    .await
                    .is_err()
                {
                    tracing::warn!(site = %self.site, deadline = ?DRAIN_TIMEOUT, "Drain deadline passed; cutting the remaining connections.");
                }
            }
            Err(e) => {
                tracing::warn!(site = %self.site, error = %e, "The accept loop ended abnormally.")
            }
        }
        self.app.db().close();
    }
}

/// Resolves once `stop` is true (or its sender is gone). The `Ref` that
/// `wait_for` returns is dropped here, so callers stay `Send`.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accepts until `stop`; returns the graceful-shutdown handle watching every
/// connection it started.
async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
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
            _ = stopped(&mut stop) => break,
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %peer, error = %ezone_replicator::chain(&*e), "Connection ended with an error.");
            }
        });
    }
    graceful
}
