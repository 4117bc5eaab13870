//! Running real `ezone router` processes for end-to-end tests, and a small
//! HTTP client to talk to them.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use ezone_chaos::ports::free_port;
use ezone_topology::starter::starter;

use crate::Configured;

/// A router process; killed when dropped.
pub struct RouterProc {
    pub proc: Configured,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl RouterProc {
    /// Starts `ezone router` with this TOML config (admin is added on a free
    /// port) and waits for its ready line.
    pub fn start(config_toml: &str) -> RouterProc {
        let full = format!("{config_toml}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        let proc = Configured::start(&["router"], "router.toml", &full);
        RouterProc {
            http: proc.addr("http").expect("http addr"),
            https: proc.addr("https"),
            admin: proc.addr("admin").expect("admin addr"),
            proc,
        }
    }

    /// Starts a router and waits until `/readyz` says a topology is loaded.
    pub async fn start_ready(config_toml: &str) -> RouterProc {
        let r = RouterProc::start(config_toml);
        let c = client();
        crate::eventually(
            "the router to be ready",
            Duration::from_secs(20),
            || async {
                let req = http::Request::get(format!("http://{}/readyz", r.admin))
                    .body(Full::new(Bytes::new()))
                    .ok()?;
                let resp = c.request(req).await.ok()?;
                (resp.status() == 200).then_some(())
            },
        )
        .await;
        r
    }

    /// SIGTERM: graceful stop.
    pub fn terminate(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.proc.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Starts a router for one site, beijing (one shard), whose upstreams are
/// `upstreams`, on a file topology written to `dir`, and waits until it is
/// ready. Its config has `listen` lines after its `[listen]` table's
/// `http`, `upstream` lines for its `[upstream]` table and `rest` (whole
/// tables) after them; the `[admin]` table is added (see
/// [`RouterProc::start`]).
pub async fn one_site_router(
    upstreams: &[SocketAddr],
    dir: &Path,
    listen: &str,
    upstream: &str,
    rest: &str,
) -> RouterProc {
    let port = free_port().expect("port");
    let mut t = starter(&["beijing"], 1);
    let s = t.sites.get_mut("beijing").expect("site");
    s.router = format!("127.0.0.1:{port}");
    s.upstreams = upstreams.iter().map(|a| a.to_string()).collect();
    let file = dir.join("topology.json");
    let doc = ezone_topology::doc::TopologyDoc::from(&t);
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write");
    RouterProc::start_ready(&format!(
        r#"
site = "beijing"
[listen]
http = "127.0.0.1:{port}"
{listen}
[topology]
file = {:?}
[upstream]
{upstream}
{rest}
"#,
        file.display().to_string()
    ))
    .await
}

/// The answer to a request.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn seen(&self) -> crate::upstream::Seen {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an upstream answer ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request and reads the whole answer (30 s limit).
pub async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(body.into())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(30), c.request(req))
        .await
        .expect("answer within 30 s")
        .expect("request");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// One order for a city of each site of `ens`, POSTed through each site's
/// router (so half of them cross to the other site's router); each must be
/// acknowledged. Ids are `<prefix>-<n>`.
pub async fn orders_through_every_router(ens: &ezone_chaos::ensemble::Ensemble, prefix: &str) {
    let http = client();
    let mut n = 0;
    let sites = ens.lab().sites().to_vec();
    for site in &sites {
        let city = ens.city_homed_at(site).expect("a city");
        for via in &sites {
            n += 1;
            let body = serde_json::json!({"id": format!("{prefix}-{n}"), "user": "u1", "item": "tea", "amount_cents": 100});
            let a = send(
                &http,
                "POST",
                ens.router_http(via).expect("router"),
                "/orders",
                &[("x-city-id", &city), ("content-type", "application/json")],
                body.to_string(),
            )
            .await;
            assert!(
                a.status < 300,
                "via {via} for {site}: {} {:?}",
                a.status,
                a.body
            );
        }
    }
}
