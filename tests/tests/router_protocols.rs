//! The router's protocol handling, end to end with a real `ezone router`:
//! TLS from a test CA with HTTP/2 over ALPN, h2c, a streamed large body, a
//! protocol upgrade, an upstream that dies mid-test, graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ezone_chaos::ports::free_port;
use ezone_tests::eventually;
use ezone_tests::router::{client, one_site_router, send, RouterProc};
use ezone_tests::upstream::{Seen, Upstream};

const WAIT: Duration = Duration::from_secs(20);

/// One site, `apps` upstreams, a file topology, a router with `extra` config.
async fn router_with(apps: &[&Upstream], dir: &Path, extra: &str) -> RouterProc {
    router_with_upstream(apps, dir, extra, "").await
}

/// As [`router_with`], with more lines for the `[upstream]` table.
async fn router_with_upstream(
    apps: &[&Upstream],
    dir: &Path,
    extra: &str,
    upstream: &str,
) -> RouterProc {
    let addrs: Vec<_> = apps.iter().map(|a| a.addr).collect();
    one_site_router(
        &addrs,
        dir,
        extra,
        &format!("health_interval_ms = 100\neject_after_failures = 1\n{upstream}"),
        "",
    )
    .await
}

struct Pki {
    ca_der: Vec<u8>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "ezone test CA");
    let ca = params.self_signed(&ca_key).expect("ca");
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("leaf");
    let (cert, keyp) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, leaf.pem()).expect("write");
    std::fs::write(&keyp, key.serialize_pem()).expect("write");
    Pki {
        ca_der: ca.der().to_vec(),
        cert,
        key: keyp,
    }
}

/// A router for `app` with an HTTPS listener using the test PKI.
async fn https_router(app: &Upstream, dir: &Path, p: &Pki) -> RouterProc {
    let https = free_port().expect("port");
    router_with(
        &[app],
        dir,
        &format!(
            "https = \"127.0.0.1:{https}\"\ntls_cert = {:?}\ntls_key = {:?}",
            p.cert.display().to_string(),
            p.key.display().to_string()
        ),
    )
    .await
}

/// A TLS connection to `addr` trusting the test CA, offering `alpn`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    p: &Pki,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(p.ca_der.clone().into()).expect("root");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake with the test CA")
}

#[tokio::test]
async fn tls_with_http2_over_alpn() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let r = https_router(&app, dir.path(), &p).await;
    let addr = r.https.expect("https listener");

    let tls = tls_connect(addr, &p, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/orders", addr.port()))
        .header("x-city-id", "010")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen: Seen = serde_json::from_slice(&body).expect("upstream answer");
    assert_eq!(seen.upstream, "app");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-ezone-shard"], "1");
    assert!(
        seen.headers["via"].starts_with("2 ezone"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "").await;
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = http::Request::get(format!("http://{}/", r.http))
        .header("x-city-id", "010")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let resp = c.request(req).await.expect("h2c request");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_large_body_streams_through() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "[limits]\nmax_body_bytes = 200000000").await;
    // 64 MiB in 1 MiB chunks, chunked encoding (no length known up front).
    let chunks =
        (0..64).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![7u8; 1 << 20]))));
    let body = StreamBody::new(futures::stream::iter(chunks));
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = http::Request::post(format!("http://{}/upload", r.http))
        .header("x-city-id", "010")
        .body(body)
        .expect("req");
    let resp = c.request(req).await.expect("upload");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen: Seen = serde_json::from_slice(&body).expect("answer");
    assert_eq!(seen.body_bytes, 64 << 20);
}

#[tokio::test]
async fn an_upgrade_passes_through_and_an_idle_one_is_closed() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The idle bound of a tunnel is the upstream read bound.
    let idle = Duration::from_millis(1500);
    let r = one_site_router(
        &[app.addr],
        dir.path(),
        "",
        "",
        &format!("[timeouts]\nupstream_read_ms = {}", idle.as_millis()),
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(r.http)
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut byte))
            .await
            .expect("head in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Bytes now flow both ways through the router, untouched.
    s.write_all(b"ping over the upgraded connection")
        .await
        .expect("write");
    let mut buf = vec![0u8; 33];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("read");
    assert_eq!(&buf, b"ping over the upgraded connection");
    // Traffic keeps it open past the bound...
    for _ in 0..4 {
        tokio::time::sleep(idle / 2).await;
        s.write_all(b"k").await.expect("write");
        let mut b = [0u8; 1];
        tokio::time::timeout(WAIT, s.read_exact(&mut b))
            .await
            .expect("echo in time")
            .expect("still open");
    }
    // ...silence closes it (nginx's proxy_read_timeout does the same).
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(WAIT, s.read(&mut b))
        .await
        .expect("closed within the wait");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
}

#[tokio::test]
async fn a_dead_upstream_is_ejected_and_traffic_continues() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&a, &b], dir.path(), "").await;
    let c = client();
    // Both serve.
    eventually("both upstreams to get traffic", WAIT, || async {
        send(&c, "GET", r.http, "/", &[("x-city-id", "010")], "").await;
        (a.count() > 0 && b.count() > 0).then_some(())
    })
    .await;
    a.kill();
    // Once ejected (passively, or by the 100 ms health check), every request
    // succeeds on b.
    eventually("a to be ejected", WAIT, || async {
        let ans = send(&c, "GET", r.http, "/", &[("x-city-id", "010")], "").await;
        (ans.status == 200).then_some(())
    })
    .await;
    for _ in 0..50 {
        let ans = send(&c, "GET", r.http, "/", &[("x-city-id", "010")], "").await;
        assert_eq!(ans.status, 200, "{}", ans.text());
        assert_eq!(ans.seen().upstream, "b");
    }
    let m = send(&c, "GET", r.admin, "/metrics", &[], "").await.text();
    assert!(m.contains("ezone_router_upstream_healthy"), "{m}");
}

/// A service manager's reload (`ExecReload=kill -HUP`) must never end the
/// router, also without an access log file to reopen.
#[tokio::test]
async fn sighup_without_an_access_log_does_not_end_the_router() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "").await;
    let pid = nix::unistd::Pid::from_raw(r.proc.child.id() as i32);
    for _ in 0..3 {
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = send(
        &client(),
        "GET",
        r.http,
        "/after-hup",
        &[("x-city-id", "010")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "").await;
    // A request whose body is still arriving when SIGTERM lands.
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<StreamBody<futures::channel::mpsc::Receiver<_>>>();
    let req = http::Request::post(format!("http://{}/slow", r.http))
        .header("x-city-id", "010")
        .body(StreamBody::new(rx))
        .expect("req");
    let in_flight = tokio::spawn(async move { c.request(req).await });
    let mut tx = tx;
    use futures::SinkExt;
    tx.send(Ok(Frame::data(Bytes::from_static(b"part one "))))
        .await
        .expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections are refused once the listener is closed...
    eventually("the listener to close", WAIT, || async {
        tokio::net::TcpStream::connect(r.http)
            .await
            .err()
            .map(|_| ())
    })
    .await;
    // ...while the in-flight request completes.
    tx.send(Ok(Frame::data(Bytes::from_static(b"part two"))))
        .await
        .expect("send");
    drop(tx);
    let resp = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("in time")
        .expect("join")
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let seen: Seen = serde_json::from_slice(&body).expect("answer");
    assert_eq!(seen.body_bytes, 17);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_gets_413() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "[limits]\nmax_body_bytes = 100000").await;
    // Chunked: no Content-Length, so the limit is only found while streaming.
    let chunks =
        (0..10).map(|_| Ok::<_, std::io::Error>(Frame::data(Bytes::from(vec![1u8; 50_000]))));
    let c = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = http::Request::post(format!("http://{}/upload", r.http))
        .header("x-city-id", "010")
        .body(StreamBody::new(futures::stream::iter(chunks)))
        .expect("req");
    match c.request(req).await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        // The router may also close the connection while the client is still
        // sending; what must not happen is a 200.
        Err(e) => assert!(!e.is_connect(), "{e}"),
    }
    // The client's oversized body is not the upstream's fault: it stays in
    // the pool, and the next request is served.
    let ans = send(&client(), "GET", r.http, "/", &[("x-city-id", "010")], "").await;
    assert_eq!(ans.status, 200, "{}", ans.text());
    let m = send(&client(), "GET", r.admin, "/metrics", &[], "")
        .await
        .text();
    assert!(!m.contains("ezone_router_upstream_errors_total{"), "{m}");
}

#[tokio::test]
async fn a_slow_client_is_cut_off() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "[timeouts]\nheader_read_ms = 300").await;
    let mut s = tokio::net::TcpStream::connect(r.http)
        .await
        .expect("connect");
    // Half a request head, then silence.
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("the router must not wait forever")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
    assert_eq!(app.count(), 0);
}

#[tokio::test]
async fn h2c_to_the_upstream() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with_upstream(&[&app], dir.path(), "", "protocol = \"h2c\"").await;
    let a = send(&client(), "GET", r.http, "/", &[("x-city-id", "010")], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.seen().version, "HTTP/2.0");
}

/// The value of `ezone_router_worker_connections` for each worker.
fn worker_connections(metrics: &str) -> Vec<(String, i64)> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("ezone_router_worker_connections{worker=\""))
        .filter_map(|rest| {
            let (worker, value) = rest.split_once("\"} ")?;
            Some((worker.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn connections_are_balanced_across_workers() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = router_with(&[&app], dir.path(), "workers = 2").await;
    // 16 keep-alive connections, each with a request answered: the kernel's
    // SO_REUSEPORT hash alone would split them unevenly.
    let mut conns = Vec::new();
    for _ in 0..16 {
        let mut s = tokio::net::TcpStream::connect(r.http)
            .await
            .expect("connect");
        s.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\nx-city-id: 010\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        conns.push(s);
    }
    let c = client();
    let m = send(&c, "GET", r.admin, "/metrics", &[], "").await.text();
    let per_worker = worker_connections(&m);
    assert_eq!(per_worker.len(), 2, "{m}");
    let counts: Vec<i64> = per_worker.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts.iter().sum::<i64>(), 16, "{per_worker:?}");
    assert!(
        (counts[0] - counts[1]).abs() <= 2,
        "unbalanced: {per_worker:?}"
    );
    // Closed connections are counted out.
    drop(conns);
    eventually("closed connections are counted out", WAIT, || async {
        let m = send(&c, "GET", r.admin, "/metrics", &[], "").await.text();
        worker_connections(&m)
            .iter()
            .all(|(_, n)| *n == 0)
            .then_some(())
    })
    .await;
}

/// Three requests on one client connection: the router's own HTTP/1 server
/// takes the first, hands the connection to hyper at the one with a body,
/// and hyper serves the rest; with `own_http1 = false`, hyper serves all.
/// Either way every answer is right.
#[tokio::test]
async fn one_connection_moves_from_the_own_server_to_hyper_at_a_body() {
    for own in ["true", "false"] {
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = router_with(&[&app], dir.path(), &format!("own_http1 = {own}")).await;
        let tcp = tokio::net::TcpStream::connect(r.http)
            .await
            .expect("connect");
        let (mut send_req, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let requests = [
            ("GET", "/first", ""),
            ("POST", "/second", "a body"),
            ("GET", "/third", ""),
            ("HEAD", "/fourth", ""),
        ];
        for (method, path, body) in requests {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "router")
                .header("x-city-id", "010")
                .header("x-ezone-shard", "999")
                .body(Full::new(Bytes::from(body)))
                .expect("req");
            let resp = send_req.send_request(req).await.expect("answer");
            assert_eq!(resp.status(), 200, "own_http1 = {own}: {method} {path}");
            assert!(resp.headers().contains_key("date"));
            let got = resp.into_body().collect().await.expect("body").to_bytes();
            if method == "HEAD" {
                assert!(got.is_empty());
                continue;
            }
            let seen: Seen = serde_json::from_slice(&got).expect("answer");
            assert_eq!((seen.method.as_str(), seen.path.as_str()), (method, path));
            assert_eq!(seen.body_bytes, body.len() as u64);
            // The client's spoofed copy replaced by the router's.
            assert_eq!(seen.headers["x-ezone-shard"], "1", "own_http1 = {own}");
        }
        assert_eq!(app.count(), 4);
    }
}

/// HTTP/1.1 over TLS (ALPN http/1.1): the router's own server answers the
/// request without a body, hyper the one with a body after it, on the same
/// TLS connection; both are forwarded as HTTPS.
#[tokio::test]
async fn tls_with_http1_on_one_connection() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki(dir.path());
    let r = https_router(&app, dir.path(), &p).await;
    let addr = r.https.expect("https listener");
    let tls = tls_connect(addr, &p, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1 handshake");
    tokio::spawn(conn);
    for (method, body) in [("GET", ""), ("POST", "twelve bytes"), ("GET", "")] {
        let req = http::Request::builder()
            .method(method)
            .uri("/orders")
            .header("host", "localhost")
            .header("x-city-id", "010")
            .body(Full::new(Bytes::from(body)))
            .expect("req");
        let resp = sender.send_request(req).await.expect("request");
        assert_eq!(resp.status(), 200, "{method}");
        let got = resp.into_body().collect().await.expect("body").to_bytes();
        let seen: Seen = serde_json::from_slice(&got).expect("upstream answer");
        assert_eq!(seen.method, method);
        assert_eq!(seen.body_bytes, body.len() as u64);
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
    }
    assert_eq!(app.count(), 3);
}
