//! The router bench's upstream: a minimal hyper HTTP/1.1 keep-alive server
//! that answers every request `200` with a fixed body.
//!
//! It runs as its own process (`ezone bench upstream --listen ADDR`, a
//! hidden subcommand started by `ezone bench router`), so that its CPU time
//! is never counted as the proxy's, and so that the same upstream, untouched,
//! serves all three targets of a run (direct, nginx, ezone). It does as
//! little as a server can: no routing, no logging per request, the body
//! shared (`Bytes` clones are reference counts).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use ezone_chaos::process::{ChildProcess, ProcessSpec};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The default response body size.
pub const DEFAULT_BODY_BYTES: usize = 128;
/// The largest body the upstream will serve (it is held in memory once).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// Back-off after a failed accept (out of file descriptors, ...).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// Address to listen on.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Response body size in bytes.
    #[arg(long, default_value_t = DEFAULT_BODY_BYTES)]
    pub body_bytes: usize,
}

/// Serves until the process is killed.
pub async fn serve(args: UpstreamArgs) -> anyhow::Result<()> {
    if args.body_bytes > MAX_BODY_BYTES {
        anyhow::bail!(
            "--body-bytes {} is more than the upstream serves ({MAX_BODY_BYTES}); pick a smaller body",
            args.body_bytes
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bench upstream: cannot listen on {}", args.listen))?;
    let body = Bytes::from(vec![b'x'; args.body_bytes]);
    tracing::info!(listen = %args.listen, body_bytes = args.body_bytes, "Bench upstream serving.");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "Bench upstream: accept failed; retrying.");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Small responses must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(peer = %peer, error = %e, "Bench upstream connection ended with an error.");
            }
        });
    }
}

/// Starts `ezone_bin bench upstream` as a child process (killed with its
/// guard), logging to `dir/upstream.log`.
pub fn spawn(
    ezone_bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    body_bytes: usize,
) -> anyhow::Result<ChildProcess> {
    let spec = ProcessSpec::new(
        "bench upstream",
        PathBuf::from(ezone_bin),
        dir,
        "upstream.log",
    )
    .args([
        "bench".to_string(),
        "upstream".to_string(),
        "--listen".to_string(),
        listen.to_string(),
        "--body-bytes".to_string(),
        body_bytes.to_string(),
    ]);
    ChildProcess::spawn(spec).context("starting the bench upstream")
}
