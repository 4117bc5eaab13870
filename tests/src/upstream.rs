//! A real HTTP upstream for end-to-end router tests: it answers with what it
//! saw (its own name, method, path, the `X-Ezone-*` headers, body length),
//! serves `/healthz`, echoes bytes after a protocol upgrade, and counts the
//! requests it got. Its "fence" can be closed: writes are then refused as
//! the order service refuses a write its database fence stopped (`503` with
//! `X-Ezone-Fenced`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What the upstream reports about a request (its JSON answer).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Seen {
    pub upstream: String,
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body_bytes: u64,
    pub version: String,
}

/// A running upstream; stops when dropped.
pub struct Upstream {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// While true, writes (not GET/HEAD/OPTIONS) are refused as fenced.
    fenced: Arc<AtomicBool>,
    /// Writes refused so.
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    dead: tokio::sync::watch::Sender<bool>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(AtomicU64::new(0));
        let fenced = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (n, r) = (name.to_string(), requests.clone());
        let fence = Fence {
            closed: fenced.clone(),
            refused: refused.clone(),
        };
        let (dead, dead_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (n, r, fence) = (n.clone(), r.clone(), fence.clone());
                let mut dead = dead_rx.clone();
                tokio::spawn(async move {
                    let svc =
                        service_fn(move |req| handle(n.clone(), r.clone(), fence.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    // Dying closes open connections too, like a killed process.
                    tokio::select! {
                        _ = conn => {}
                        _ = dead.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        Upstream {
            name: name.to_string(),
            addr,
            requests,
            fenced,
            refused,
            task,
            dead,
        }
    }

    /// Closes (true) or opens the fence.
    pub fn set_fenced(&self, closed: bool) {
        self.fenced.store(closed, Ordering::SeqCst);
    }

    /// Writes refused as fenced so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Stops serving (closes the listener; open connections end too).
    pub fn kill(&self) {
        self.task.abort();
        let _ = self.dead.send(true);
    }
}

#[derive(Clone)]
struct Fence {
    closed: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

async fn handle(
    name: String,
    count: Arc<AtomicU64>,
    fence: Fence,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok"))));
    }
    let write = !matches!(
        *req.method(),
        hyper::Method::GET | hyper::Method::HEAD | hyper::Method::OPTIONS
    );
    if write && fence.closed.load(Ordering::SeqCst) {
        // Read the body first, as a real service would before its database
        // refused the write.
        let _ = req.into_body().collect().await;
        fence.refused.fetch_add(1, Ordering::SeqCst);
        let mut resp = Response::new(Full::new(Bytes::from_static(
            br#"{"error":"fenced","detail":"test upstream's fence is closed"}"#,
        )));
        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut()
            .insert("retry-after", "1".parse().expect("static"));
        resp.headers_mut()
            .insert("x-ezone-fenced", "1".parse().expect("static"));
        return Ok(resp);
    }
    count.fetch_add(1, Ordering::Relaxed);
    if req.headers().contains_key(hyper::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        resp.headers_mut().insert(
            hyper::header::CONNECTION,
            "upgrade".parse().expect("static"),
        );
        resp.headers_mut()
            .insert(hyper::header::UPGRADE, "echo".parse().expect("static"));
        return Ok(resp);
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .filter(|(k, _)| {
            k.as_str().starts_with("x-") || k.as_str() == "via" || k.as_str() == "host"
        })
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    // Stream the body through, counting bytes, without buffering it all.
    let mut body = req.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let seen = Seen {
        upstream: name,
        method,
        path,
        headers,
        body_bytes,
        version,
    };
    let json = serde_json::to_vec(&seen).unwrap_or_default();
    Ok(Response::new(Full::new(Bytes::from(json))))
}
