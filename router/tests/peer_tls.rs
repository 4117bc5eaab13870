//! Mutual TLS between sites' routers, end to end on loopback: two routers
//! (the same `RunningRouter` as `ezone router`, in this process), beijing
//! and shanghai, on a two-site file topology whose `router` addresses are
//! their peer listeners, each with a fake upstream that says who it is and
//! what it saw. The certificates come from a CA made here with rcgen.
//!
//! - Each forwards the other's cities to the other over mutual TLS, reads
//!   and writes, on pooled connections; each probes the other healthy.
//! - The peer listener refuses a client without a certificate, with one
//!   from another CA, or with one of the right CA that names no site; a
//!   router's certificate on it is believed only with a hop list ending
//!   with its site.
//! - A certificate of the right CA naming another site (or a wildcard)
//!   cannot pose as the site dialed: the forwarding router refuses it.
//! - On the public listener, a client's peer headers are not believed.
//! - A router whose certificate does not name its site does not start; a
//!   rotated certificate is served without a restart.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ezone_router::config::RouterConfig;
use ezone_router::server::{RunningRouter, ServeError};
use ezone_router::tls::TlsError;

const WAIT: Duration = Duration::from_secs(15);

/// A CA of router certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).expect("CA cert");
        Ca { cert, key }
    }

    /// A leaf with these DNS names, for both TLS roles (as a router's is).
    fn issue(&self, sans: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
        p.distinguished_name
            .push(DnType::CommonName, "ezone router");
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.cert, &self.key).expect("leaf");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A router certificate for `site`.
    fn router(&self, site: &str) -> Issued {
        self.issue(&[&format!("{site}.ezone.internal")])
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }
}

impl Issued {
    /// Writes `<name>.crt` and `<name>.key` (by rename, as a rotation
    /// does); their paths.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        write_atomically(&key, &self.key);
        write_atomically(&cert, &self.cert);
        (cert, key)
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut self.cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("PEM certs")
    }

    fn private_key(&self) -> PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut self.key.as_bytes())
            .expect("PEM key")
            .expect("a key")
    }
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A fake upstream: answers every request with a JSON object saying who
/// it is and what it saw.
async fn upstream(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = l.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let count = count.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            if parts.uri.path() != "/healthz" {
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            let header = |n: &str| {
                                parts
                                    .headers
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string)
                            };
                            let seen = serde_json::json!({
                                "upstream": name,
                                "method": parts.method.as_str(),
                                "body": String::from_utf8_lossy(&body),
                                "site": header("x-ezone-site"),
                                "hop": header("x-ezone-hop"),
                                "peer": header("x-ezone-peer"),
                                "probe": header("x-ezone-probe"),
                                "proto": header("x-forwarded-proto"),
                            });
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                seen.to_string(),
                            ))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

/// A free port on loopback (bound, noted, released).
fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A two-site topology (shard 1 and city 010 at beijing, shard 2 and city
/// 021 at shanghai) with these router and upstream addresses.
fn topology(dir: &Path, routers: [SocketAddr; 2], upstreams: [SocketAddr; 2]) -> PathBuf {
    let mut t = ezone_topology::starter::starter(&["beijing", "shanghai"], 1);
    for (i, name) in ["beijing", "shanghai"].into_iter().enumerate() {
        let s = t.sites.get_mut(name).expect("site");
        s.router = routers[i].to_string();
        s.upstreams = vec![upstreams[i].to_string()];
    }
    assert_eq!(t.routing.cities["010"], 1);
    assert_eq!(t.routing.cities["021"], 2);
    let file = dir.join("topology.json");
    let doc = ezone_topology::doc::TopologyDoc::from(&t);
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write topology");
    file
}

/// A router's config: `site`, its peer listener at `peer`, its
/// certificate files, the CA file.
fn config(
    site: &str,
    peer: SocketAddr,
    topology: &Path,
    files: (PathBuf, PathBuf),
    ca: &Path,
) -> String {
    format!(
        r#"
site = "{site}"
[listen]
http = "127.0.0.1:0"
peer = "{peer}"
workers = 1
[topology]
file = {topology:?}
[routing]
on_missing_key = "reject"
[timeouts]
request_ms = 5000
drain_ms = 200
[upstream]
health_interval_ms = 200
[peer_tls]
cert_file = {cert:?}
key_file = {key:?}
ca_file = {ca:?}
"#,
        topology = topology.display().to_string(),
        cert = files.0.display().to_string(),
        key = files.1.display().to_string(),
        ca = ca.display().to_string(),
    )
}

/// Starts a router and waits until it has its topology.
async fn start(cfg: &str) -> RunningRouter {
    let cfg = RouterConfig::from_toml(cfg).expect("config");
    let router = RunningRouter::start(cfg).await.expect("router starts");
    let start = Instant::now();
    while router.router.watcher().current().is_none() {
        assert!(start.elapsed() < WAIT, "no topology in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    router
}

/// The answer to a request: status and body.
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    fn seen(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not an upstream's answer ({e}): {} {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(
    c: &Client<HttpConnector, Full<Bytes>>,
    method: &str,
    addr: SocketAddr,
    headers: &[(&str, &str)],
    body: &'static str,
) -> Answer {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/orders"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    let resp = tokio::time::timeout(WAIT, c.request(req))
        .await
        .expect("an answer in time")
        .expect("the request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Answer { status, body }
}

/// A metric's value from a router's exposition (0 if absent).
fn metric(router: &RunningRouter, series: &str) -> f64 {
    let text = router.router.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two sites' routers with their upstreams, sharing one CA.
struct Pair {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    beijing: RunningRouter,
    shanghai: RunningRouter,
    apps: [(SocketAddr, Arc<AtomicUsize>); 2],
}

async fn pair() -> Pair {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().to_path_buf();
    let ca = Ca::new("ezone router CA");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let apps = [
        upstream("beijing-app").await,
        upstream("shanghai-app").await,
    ];
    let peers = [free_addr(), free_addr()];
    let topo = topology(&dir, peers, [apps[0].0, apps[1].0]);
    let b = ca.router("beijing").write(&dir, "beijing");
    let s = ca.router("shanghai").write(&dir, "shanghai");
    let beijing = start(&config("beijing", peers[0], &topo, b, &ca_file)).await;
    let shanghai = start(&config("shanghai", peers[1], &topo, s, &ca_file)).await;
    assert_eq!(beijing.peer, Some(peers[0]));
    assert_eq!(shanghai.peer, Some(peers[1]));
    Pair {
        _dir: tmp,
        dir,
        ca,
        beijing,
        shanghai,
        apps,
    }
}

impl Pair {
    async fn shutdown(self) {
        self.beijing.shutdown().await;
        self.shanghai.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_forward_to_each_other_over_mutual_tls() {
    let p = pair().await;
    let c = client();
    let (bj, sh) = (
        p.beijing.http.expect("http"),
        p.shanghai.http.expect("http"),
    );

    for round in 0..5 {
        // Shanghai's city through beijing's router, and back.
        let a = send(&c, "GET", bj, &[("x-city-id", "021")], "").await;
        assert_eq!(a.status, 200, "{}", a.text());
        let seen = a.seen();
        assert_eq!(seen["upstream"], "shanghai-app");
        assert_eq!(seen["site"], "shanghai");
        assert!(seen["hop"].is_null() && seen["peer"].is_null(), "{seen}");
        assert_eq!(seen["proto"], "http", "the client's, kept across the hop");
        let a = send(&c, "GET", sh, &[("x-city-id", "010")], "").await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(a.seen()["upstream"], "beijing-app");
        // A write with a body (kept whole and sent over hyper's client).
        let a = send(&c, "POST", bj, &[("x-city-id", "021")], "an order").await;
        assert_eq!(a.status, 200, "round {round}: {}", a.text());
        assert_eq!(a.seen()["upstream"], "shanghai-app");
        assert_eq!(a.seen()["body"], "an order");
        // A local city stays local.
        let a = send(&c, "GET", bj, &[("x-city-id", "010")], "").await;
        assert_eq!(a.seen()["upstream"], "beijing-app");
    }
    assert_eq!(p.apps[1].1.load(Ordering::SeqCst), 10);

    // Each router's connections to the other are pooled: a handful (the
    // probes', one per kind of request), not one per request.
    let from_beijing = metric(
        &p.shanghai,
        "ezone_router_peer_connections_total{site=\"beijing\"}",
    );
    assert!(
        (1.0..=4.0).contains(&from_beijing),
        "connections from beijing: {from_beijing}"
    );
    assert!(
        metric(
            &p.beijing,
            "ezone_router_peer_connections_total{site=\"shanghai\"}"
        ) >= 1.0
    );
    assert_eq!(
        metric(&p.shanghai, "ezone_router_peer_handshake_failures_total"),
        0.0
    );
    // And each probes the other healthy over TLS.
    let healthy = format!(
        "ezone_router_upstream_healthy{{site=\"shanghai\",endpoint=\"{}\"}}",
        p.shanghai.peer.expect("peer")
    );
    eventually("beijing to see shanghai's router healthy", || {
        metric(&p.beijing, &healthy) == 1.0
    })
    .await;
    p.shutdown().await;
}

/// A TLS client of the peer listener at `addr`, presenting `cert` (if any),
/// trusting `ca`.
async fn peer_client(
    addr: SocketAddr,
    ca: &Ca,
    cert: Option<&Issued>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.cert.der().clone()).expect("CA");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain(), c.private_key())
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("shanghai.ezone.internal").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) on the
/// peer listener with this certificate; what came back, or the error.
async fn over_peer_listener(
    addr: SocketAddr,
    ca: &Ca,
    cert: Option<&Issued>,
    request: &str,
) -> Result<String, String> {
    let go = async {
        let mut tls = peer_client(addr, ca, cert)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        if out.is_empty() {
            return Err("closed without an answer".to_string());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(WAIT, go).await.expect("in time")
}

fn request(headers: &str) -> String {
    format!("GET /orders HTTP/1.1\r\nhost: shanghai\r\nx-city-id: 021\r\n{headers}connection: close\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_takes_only_a_sites_router_certificate() {
    let p = pair().await;
    let addr = p.shanghai.peer.expect("peer listener");
    let hop = request("x-ezone-hop: beijing@1\r\n");

    // No client certificate.
    let e = over_peer_listener(addr, &p.ca, None, &hop)
        .await
        .unwrap_err();
    assert!(!e.contains("HTTP/1.1"), "{e}");
    // A router certificate from another CA.
    let other = Ca::new("another CA");
    let foreign = other.router("beijing");
    let e = over_peer_listener(addr, &p.ca, Some(&foreign), &hop)
        .await
        .unwrap_err();
    assert!(!e.contains("HTTP/1.1"), "{e}");
    // The right CA, but no site named: not a router's.
    let nameless = p.ca.issue(&["client.example.com"]);
    let e = over_peer_listener(addr, &p.ca, Some(&nameless), &hop)
        .await
        .unwrap_err();
    assert!(!e.contains("HTTP/1.1"), "{e}");
    // A wildcard names no site either.
    let wildcard = p.ca.issue(&["*.ezone.internal"]);
    let e = over_peer_listener(addr, &p.ca, Some(&wildcard), &hop)
        .await
        .unwrap_err();
    assert!(!e.contains("HTTP/1.1"), "{e}");
    eventually("the four refusals counted", || {
        metric(&p.shanghai, "ezone_router_peer_handshake_failures_total") >= 4.0
    })
    .await;
    assert_eq!(p.apps[1].1.load(Ordering::SeqCst), 0, "nothing got through");

    // Beijing's router certificate gets in, and is believed: the router
    // answers its probe itself.
    let beijing = p.ca.router("beijing");
    let ok = over_peer_listener(
        addr,
        &p.ca,
        Some(&beijing),
        &request("x-ezone-hop: beijing\r\nx-ezone-probe: 1\r\n"),
    )
    .await
    .expect("an answer");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("ready: site shanghai"), "{ok}");
    // A forwarded request is served; its hop list is believed (a request
    // that already passed shanghai is a loop).
    let ok = over_peer_listener(addr, &p.ca, Some(&beijing), &hop)
        .await
        .expect("an answer");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("shanghai-app"), "{ok}");
    let looped = over_peer_listener(
        addr,
        &p.ca,
        Some(&beijing),
        &request("x-ezone-hop: shanghai@1,beijing@1\r\n"),
    )
    .await
    .expect("an answer");
    assert!(looped.starts_with("HTTP/1.1 508"), "{looped}");
    // But only with a hop list that ends with the certificate's site.
    for headers in ["", "x-ezone-hop: mars\r\n", "x-ezone-hop: beijing,mars\r\n"] {
        let refused = over_peer_listener(addr, &p.ca, Some(&beijing), &request(headers))
            .await
            .expect("an answer");
        assert!(
            refused.starts_with("HTTP/1.1 403"),
            "{headers:?}: {refused}"
        );
        assert!(refused.contains("beijing"), "{refused}");
    }
    assert_eq!(p.apps[1].1.load(Ordering::SeqCst), 1);
    p.shutdown().await;
}

/// A TLS server presenting `cert`, answering any request 200 "impostor";
/// counts the requests it read.
async fn impostor(cert: &Issued) -> (SocketAddr, Arc<AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(cert.chain(), cert.private_key())
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nimpostor")
                        .await;
                }
            });
        }
    });
    (addr, served)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_another_site_cannot_pose_as_the_dialed_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let ca = Ca::new("ezone router CA");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let (app, _) = upstream("beijing-app").await;
    let c = client();

    // What answers at shanghai's router address: a certificate of the
    // right CA for another site, a wildcard, one naming shanghai among
    // others, and (the control) shanghai's own.
    let cases: [(&[&str], &str); 4] = [
        (
            &["beijing.ezone.internal"],
            "not valid for name \"shanghai.ezone.internal\"",
        ),
        (&["*.ezone.internal"], "names no site"),
        (
            &["shanghai.ezone.internal", "beijing.ezone.internal"],
            "names several sites",
        ),
        (&["shanghai.ezone.internal"], ""),
    ];
    for (sans, why) in cases {
        let accepted = why.is_empty();
        let (fake, served) = impostor(&ca.issue(sans)).await;
        let peer = free_addr();
        let topo = topology(dir, [peer, fake], [app, app]);
        let files = ca.router("beijing").write(dir, "beijing");
        let beijing = start(&config("beijing", peer, &topo, files, &ca_file)).await;
        let a = send(
            &c,
            "GET",
            beijing.http.expect("http"),
            &[("x-city-id", "021")],
            "",
        )
        .await;
        if accepted {
            assert_eq!(a.status, 200, "{sans:?}: {}", a.text());
            assert_eq!(a.text(), "impostor");
            assert!(served.load(Ordering::SeqCst) >= 1);
        } else {
            assert_eq!(a.status, 502, "{sans:?}: {}", a.text());
            let text = a.text();
            assert!(text.contains("the router of site shanghai"), "{text}");
            assert!(text.contains("TLS handshake"), "{text}");
            assert!(text.contains(why), "{text}");
            assert!(!text.contains(&fake.to_string()), "no address: {text}");
            assert_eq!(
                served.load(Ordering::SeqCst),
                0,
                "{sans:?}: nothing sent to it"
            );
        }
        beijing.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_peer_headers_on_the_public_listener_are_not_believed() {
    let p = pair().await;
    let c = client();
    let sh = p.shanghai.http.expect("http");
    // Shanghai's own city with a hop list naming shanghai (a loop, if it
    // were believed), a probe, a peer secret and a claimed `https`.
    let a = send(
        &c,
        "GET",
        sh,
        &[
            ("x-city-id", "021"),
            ("x-ezone-hop", "shanghai@1,beijing@1"),
            ("x-ezone-probe", "1"),
            ("x-ezone-peer", "0123456789abcdef-guessed"),
            ("x-ezone-shard", "2"),
            ("x-ezone-epoch", "999"),
            ("x-forwarded-proto", "https"),
        ],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "routed as any client's: {}", a.text());
    let seen = a.seen();
    assert_eq!(seen["upstream"], "shanghai-app", "not answered as a probe");
    assert!(seen["hop"].is_null(), "{seen}");
    assert!(seen["peer"].is_null(), "{seen}");
    assert!(seen["probe"].is_null(), "{seen}");
    assert_eq!(seen["proto"], "http", "{seen}");
    assert_eq!(metric(&p.shanghai, "ezone_router_loops_total"), 0.0);
    // Through beijing, a client's hop list does not reach shanghai either:
    // beijing's router starts it afresh.
    let a = send(
        &c,
        "GET",
        p.beijing.http.expect("http"),
        &[("x-city-id", "021"), ("x-ezone-hop", "shanghai@1")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.seen()["upstream"], "shanghai-app");
    assert_eq!(metric(&p.shanghai, "ezone_router_loops_total"), 0.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_whose_certificate_names_another_site_does_not_start() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let ca = Ca::new("ezone router CA");
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let topo = topology(dir, [free_addr(), free_addr()], [free_addr(), free_addr()]);
    let files = ca.router("shanghai").write(dir, "wrong");
    let cfg = RouterConfig::from_toml(&config("beijing", free_addr(), &topo, files, &ca_file))
        .expect("config");
    let Err(e) = RunningRouter::start(cfg).await else {
        panic!("started with shanghai's certificate");
    };
    assert!(
        matches!(e, ServeError::Tls(TlsError::NotNamed { .. })),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains("peer_tls.cert_file"), "{msg}");
    assert!(msg.contains("beijing.ezone.internal"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_router_certificate_is_taken_without_a_restart() {
    let p = pair().await;
    let addr = p.shanghai.peer.expect("peer listener");
    let beijing = p.ca.router("beijing");
    let served = |tls: &tokio_rustls::client::TlsStream<TcpStream>| {
        tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
    };
    let before = served(&peer_client(addr, &p.ca, Some(&beijing)).await.expect("tls"));
    // A new key and certificate for shanghai, renamed into place.
    let next = p.ca.router("shanghai");
    next.write(&p.dir, "shanghai");
    let new = next.chain()[0].to_vec();
    assert_ne!(before, new);
    let start = Instant::now();
    loop {
        let now = served(&peer_client(addr, &p.ca, Some(&beijing)).await.expect("tls"));
        if now == new {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Forwarding keeps working, both ways, on the new certificate.
    let c = client();
    let a = send(
        &c,
        "GET",
        p.beijing.http.expect("http"),
        &[("x-city-id", "021")],
        "",
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    // A broken file is not taken: the rotated certificate stays.
    std::fs::write(p.dir.join("shanghai.key"), "garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let now = served(&peer_client(addr, &p.ca, Some(&beijing)).await.expect("tls"));
    assert_eq!(now, new);
    p.shutdown().await;
}
