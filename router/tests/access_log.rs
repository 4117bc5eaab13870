//! The access log end to end: a router (the same `RunningRouter` as `ezone
//! router`, in this process) with `[access_log]` pointing at a temp file, on
//! a one-site file topology whose upstream is a local HTTP server. Requests
//! it routes and requests it answers itself each leave one line with the
//! right fields, and neither the query string nor any header value reaches
//! the file.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use ezone_router::config::RouterConfig;
use ezone_router::server::RunningRouter;

/// The upstream's answer to every request but `/slow`.
const HELLO: &[u8] = b"hello from upstream";

/// Fake secrets: none of them may appear in the log.
const QUERY_SECRET: &str = "s3cr3t-FAKE-token-0001";
const QUERY_KEY: &str = "api-key-FAKE-0002";
const BEARER: &str = "Bearer FAKE-bearer-0003";
const COOKIE: &str = "session=FAKE-cookie-0004";
const PEER_SECRET: &str = "FAKE-peer-secret-0005";

/// An HTTP/1.1 upstream on loopback: answers [`HELLO`], except paths
/// under `/slow`, which it never answers (counting them as they arrive).
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = l.local_addr().expect("upstream addr");
    let slow = Arc::new(AtomicUsize::new(0));
    let count = slow.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let count = count.clone();
                    async move {
                        if req.uri().path().starts_with("/slow") {
                            count.fetch_add(1, Ordering::SeqCst);
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            HELLO,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, slow)
}

/// A one-site topology (beijing, one shard: every starter city is on it)
/// whose upstream is `up`, written to `dir`.
fn topology_file(dir: &Path, up: SocketAddr) -> PathBuf {
    let mut t = ezone_topology::starter::starter(&["beijing"], 1);
    let s = t.sites.get_mut("beijing").expect("site");
    s.router = "127.0.0.1:1".into();
    s.upstreams = vec![up.to_string()];
    let file = dir.join("topology.json");
    let doc = ezone_topology::doc::TopologyDoc::from(&t);
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write topology");
    file
}

/// Starts a router with its access log at `log`, and waits until it has
/// its topology.
async fn start_router(topology: &Path, log: &Path) -> RunningRouter {
    let cfg = RouterConfig::from_toml(&format!(
        r#"
site = "beijing"
[listen]
http = "127.0.0.1:0"
workers = 1
[topology]
file = {:?}
[routing]
on_missing_key = "reject"
[timeouts]
request_ms = 5000
drain_ms = 300
[access_log]
path = {:?}
"#,
        topology.display().to_string(),
        log.display().to_string(),
    ))
    .expect("config");
    let router = RunningRouter::start(cfg).await.expect("router starts");
    let start = std::time::Instant::now();
    while router.router.watcher().current().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no topology within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    router
}

/// Sends a GET and reads the whole answer.
async fn get(
    c: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> (u16, Bytes) {
    let mut b = http::Request::get(format!("http://{addr}{path_and_query}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::new())).expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("an answer within 10 s")
        .expect("the request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The one line whose path is `path`.
fn line_for<'a>(lines: &'a [Value], path: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(found.len(), 1, "one line for {path}: {lines:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_routed_and_refused_are_logged_without_query_or_header_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (up, slow_arrivals) = upstream().await;
    let topology = topology_file(dir.path(), up);
    let log = dir.path().join("access.log");
    let router = start_router(&topology, &log).await;
    let addr = router.http.expect("http listener");
    let h1: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let before = std::time::SystemTime::now();

    // Routed by its city, with secrets in the query and in header values.
    let (status, body) = get(
        &h1,
        addr,
        &format!("/orders/42?token={QUERY_SECRET}&api_key={QUERY_KEY}"),
        &[
            ("x-city-id", "010"),
            ("authorization", BEARER),
            ("cookie", COOKIE),
            ("x-ezone-peer", PEER_SECRET),
        ],
    )
    .await;
    assert_eq!((status, &body[..]), (200, HELLO));
    // No routing key: the router answers itself (on_missing_key = reject).
    let (status, refusal) = get(&h1, addr, &format!("/no-key?token={QUERY_SECRET}"), &[]).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&refusal));
    // A city the topology does not have: no route.
    let (status, _) = get(&h1, addr, "/unknown-city", &[("x-city-id", "999")]).await;
    assert_eq!(status, 404);
    // HTTP/2 (prior knowledge), routed.
    let (status, _) = get(&h2, addr, "/over-h2?q=1", &[("x-city-id", "010")]).await;
    assert_eq!(status, 200);
    // The client gives up before the upstream answers: HTTP/2 resets the
    // stream, the router drops the request, and logs it as nginx does.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        h2.request(
            http::Request::get(format!("http://{addr}/slow"))
                .header("x-city-id", "010")
                .body(Full::new(Bytes::new()))
                .expect("request"),
        ),
    )
    .await;
    assert!(gave_up.is_err(), "/slow is never answered");

    // Flushed while the router runs (the writer drains every 100 ms).
    let start = std::time::Instant::now();
    while lines(&log).len() < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "five lines within 10 s: {:#?}",
            lines(&log)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One more in flight when the router stops: cut at the drain
    // deadline, its line is written by the shutdown.
    let cut = {
        let h1 = h1.clone();
        tokio::spawn(async move {
            let req = http::Request::get(format!("http://{addr}/slow/at-shutdown"))
                .header("x-city-id", "010")
                .body(Full::new(Bytes::new()))
                .expect("request");
            h1.request(req).await.map(|r| r.status())
        })
    };
    let start = std::time::Instant::now();
    while slow_arrivals.load(Ordering::SeqCst) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the last request reaches the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = router.router.clone();
    router.shutdown().await;
    let after = std::time::SystemTime::now();
    assert!(
        !matches!(cut.await, Ok(Ok(_))),
        "the request in flight got no answer"
    );

    let raw = std::fs::read_to_string(&log).expect("read the log");
    for secret in [
        QUERY_SECRET,
        QUERY_KEY,
        "token=",
        "api_key",
        "?",
        BEARER,
        "FAKE-bearer",
        COOKIE,
        "FAKE-cookie",
        PEER_SECRET,
    ] {
        assert!(!raw.contains(secret), "{secret:?} in the log:\n{raw}");
    }
    let all = lines(&log);
    assert_eq!(all.len(), 6, "{all:#?}");
    let fields: BTreeSet<&str> = [
        "time",
        "client",
        "method",
        "path",
        "proto",
        "status",
        "city",
        "shard",
        "site",
        "upstream",
        "duration_ms",
        "bytes",
    ]
    .into_iter()
    .collect();
    let rfc3339 = |t: &str| {
        t.len() == 24
            && t.ends_with('Z')
            && t.as_bytes()[10] == b'T'
            && t.as_bytes()[19] == b'.'
            && t[..4].parse::<u32>().is_ok()
    };
    // The log's times are to the millisecond: round the window out to it.
    let window = (
        humane(before - Duration::from_millis(1)),
        humane(after + Duration::from_millis(1)),
    );
    for l in &all {
        let keys: BTreeSet<&str> = l
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{l}");
        let time = l["time"].as_str().expect("time");
        assert!(rfc3339(time), "{l}");
        assert!(
            window.0.as_str() <= time && time <= window.1.as_str(),
            "{time} not within {window:?}"
        );
        let client: SocketAddr = l["client"]
            .as_str()
            .expect("client")
            .parse()
            .expect("an address");
        assert!(client.ip().is_loopback(), "{l}");
        assert_eq!(l["method"], "GET", "{l}");
        assert!(l["duration_ms"].is_f64(), "{l}");
        assert!(l["duration_ms"].as_f64().unwrap_or(-1.0) >= 0.0, "{l}");
    }

    let routed = line_for(&all, "/orders/42");
    assert_eq!(routed["proto"], "HTTP/1.1");
    assert_eq!(routed["status"], 200);
    assert_eq!(routed["city"], "010");
    assert_eq!(routed["shard"], 1);
    assert_eq!(routed["site"], "beijing");
    assert_eq!(routed["upstream"], up.to_string());
    assert_eq!(routed["bytes"], HELLO.len());

    let no_key = line_for(&all, "/no-key");
    assert_eq!(no_key["status"], 400);
    for null in ["city", "shard", "site", "upstream"] {
        assert!(no_key[null].is_null(), "{null}: {no_key}");
    }
    assert_eq!(no_key["bytes"], refusal.len(), "the router's own answer");

    let unknown = line_for(&all, "/unknown-city");
    assert_eq!(unknown["status"], 404);
    assert_eq!(unknown["city"], "999", "the city it asked for");
    assert!(unknown["site"].is_null() && unknown["upstream"].is_null());

    let over_h2 = line_for(&all, "/over-h2");
    assert_eq!(over_h2["proto"], "HTTP/2");
    assert_eq!(over_h2["status"], 200);
    assert_eq!(over_h2["upstream"], up.to_string());
    assert_eq!(over_h2["bytes"], HELLO.len());

    let slow = line_for(&all, "/slow");
    assert_eq!(slow["status"], 499, "{slow}");
    assert_eq!(slow["bytes"], 0);
    assert_eq!(slow["city"], "010");
    let at_shutdown = line_for(&all, "/slow/at-shutdown");
    assert_eq!(at_shutdown["status"], 499, "{at_shutdown}");
    assert_eq!(at_shutdown["proto"], "HTTP/1.1");
    assert!(
        at_shutdown["duration_ms"].as_f64().unwrap_or(0.0) >= 300.0,
        "cut at the drain deadline: {at_shutdown}"
    );

    assert_eq!(dropped(&metrics), 0, "nothing dropped");
}

/// `ezone_router_access_log_dropped_total`, from the exposition.
fn dropped(router: &ezone_router::proxy::Router) -> u64 {
    let text = router.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix("ezone_router_access_log_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("the counter is exported:\n{text}"))
}

/// `t` as the log writes it (to compare strings: same format, same order).
fn humane(t: std::time::SystemTime) -> String {
    let line = ezone_router::access_log::format(&ezone_router::access_log::Entry {
        time: t,
        client: None,
        proto: http::Version::HTTP_11,
        method: "GET",
        path: "/",
        city: None,
        shard: None,
        site: None,
        upstream: None,
        status: 200,
        duration: Duration::ZERO,
        bytes: 0,
    })
    .expect("formats");
    let v: Value = serde_json::from_str(&line).expect("JSON");
    v["time"].as_str().expect("time").to_string()
}
