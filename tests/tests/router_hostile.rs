//! The router under hostile clients and broken upstreams, end to end with a
//! real `ezone router`: requests it must refuse (the client's protocol
//! errors: 400, 501, never 502, never counted against an upstream), fields
//! that hop-by-hop removal must not touch, and answers that must never name
//! an internal address.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use ezone_chaos::ports::free_port;
use ezone_tests::eventually;
use ezone_tests::router::{client, one_site_router, send, RouterProc};
use ezone_tests::upstream::{Seen, Upstream};
use ezone_topology::starter::starter;

const WAIT: Duration = Duration::from_secs(20);

/// Two sites on one file topology, each with its router and one upstream:
/// city 010 lives in beijing, 021 in shanghai.
async fn two_sites(dir: &Path, bj_app: &Upstream, sh_app: &Upstream) -> (RouterProc, RouterProc) {
    let (bj_port, sh_port) = (free_port().expect("port"), free_port().expect("port"));
    let mut t = starter(&["beijing", "shanghai"], 2);
    for (site, port, app) in [("beijing", bj_port, bj_app), ("shanghai", sh_port, sh_app)] {
        let s = t.sites.get_mut(site).expect("site");
        s.router = format!("127.0.0.1:{port}");
        s.upstreams = vec![app.addr.to_string()];
    }
    let file = dir.join("topology.json");
    let doc = ezone_topology::doc::TopologyDoc::from(&t);
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write");
    let config = |site: &str, port: u16| {
        format!(
            "site = \"{site}\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[topology]\nfile = {:?}\n[upstream]\nhealth_interval_ms = 60000\n[routing]\npeer_secret = \"ezone-test-peer-secret\"\n",
            file.display().to_string()
        )
    };
    (
        RouterProc::start_ready(&config("beijing", bj_port)).await,
        RouterProc::start_ready(&config("shanghai", sh_port)).await,
    )
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn seen(&self) -> Seen {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an upstream answer ({e}): {self:?}"))
    }
}

/// Writes `request` on `s` and reads one answer (framed by its
/// Content-Length, else to the end of the connection).
async fn exchange(s: &mut TcpStream, request: &[u8]) -> Raw {
    s.write_all(request).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = read_some(s, &mut buf).await;
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status: {head}"));
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = got[end..].to_vec();
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        let n = read_some(s, &mut buf).await;
        if n == 0 {
            assert!(length.is_none(), "closed in the middle of the body: {head}");
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Raw {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// What the router sends next (0: it closed the connection).
async fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> usize {
    tokio::time::timeout(WAIT, s.read(buf))
        .await
        .expect("an answer in time")
        .unwrap_or(0)
}

/// `request` on a new connection.
async fn raw(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    exchange(&mut s, request).await
}

/// True if the router closes `s` (within the wait) without sending more.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(WAIT, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The router's metrics page.
async fn metrics(r: &RouterProc) -> String {
    send(&client(), "GET", r.admin, "/metrics", &[], "")
        .await
        .text()
}

/// Asserts an answer to the client names no internal address.
fn names_no_address(a: &Raw, addrs: &[SocketAddr]) {
    for addr in addrs {
        assert!(
            !a.body.contains(&addr.to_string()) && !a.head.contains(&addr.to_string()),
            "the answer names the internal address {addr}: {a:?}"
        );
    }
    assert!(!a.body.contains("127.0.0.1"), "{a:?}");
}

/// Runs `check` on each of the router's HTTP/1 servers: for `own_http1`
/// "true" and "false" in turn, a new upstream and a router for it (with
/// `rest` after its config) are started and handed to `check` with that
/// value.
async fn on_both_http1_servers(
    rest: &str,
    check: impl AsyncFn(&'static str, &Upstream, &RouterProc),
) {
    for own in ["true", "false"] {
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[app.addr],
            dir.path(),
            &format!("own_http1 = {own}"),
            "",
            rest,
        )
        .await;
        check(own, &app, &r).await;
    }
}

/// Sends each of `requests` on a new connection to `r`: each is answered
/// 400, and `check` holds for the answer (`own` is the `own_http1` value,
/// for the failure message).
async fn each_refused(r: &RouterProc, own: &str, requests: &[&[u8]], check: impl Fn(&Raw)) {
    for req in requests {
        let ans = raw(r.http, req).await;
        assert_eq!(
            ans.status,
            400,
            "own_http1 = {own}: {}: {ans:?}",
            String::from_utf8_lossy(req)
        );
        check(&ans);
    }
}

/// A chunked body with a malformed chunk size is the client's mistake: 400,
/// not 502; it names no internal address, and it counts nothing against the
/// upstream (no upstream error, no passive ejection: both upstreams keep
/// getting traffic even with `eject_after_failures = 1`).
#[tokio::test]
async fn a_malformed_chunk_size_is_the_clients_fault() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Health checks far apart: they would end an ejection early.
    let r = one_site_router(
        &[a.addr, b.addr],
        dir.path(),
        "",
        "health_interval_ms = 60000\neject_after_failures = 1\neject_ms = 60000",
        "",
    )
    .await;
    let c = client();
    // 2^64 in hex and in decimal; a hex prefix; a sign; not hex at all.
    for size in [
        "zz",
        "0x5",
        "-5",
        "10000000000000000",
        "18446744073709551616",
    ] {
        let req = format!(
            "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n"
        );
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        let ans = exchange(&mut s, req.as_bytes()).await;
        assert_eq!(ans.status, 400, "chunk size {size:?}: {ans:?}");
        assert!(ans.body.contains("chunk"), "{ans:?}");
        names_no_address(&ans, &[a.addr, b.addr]);
        // What is left of the body is not taken for a next request.
        assert!(closed(&mut s).await, "chunk size {size:?}: left open");
        // Neither upstream was ejected: both still get traffic.
        let (before_a, before_b) = (a.count(), b.count());
        for _ in 0..24 {
            let ans = send(&c, "GET", r.http, "/", &[("x-city-id", "010")], "").await;
            assert_eq!(ans.status, 200, "{}", ans.text());
        }
        assert!(
            a.count() > before_a && b.count() > before_b,
            "after chunk size {size:?} one upstream got all the traffic: a {} -> {}, b {} -> {}",
            before_a,
            a.count(),
            before_b,
            b.count()
        );
    }
    let m = metrics(&r).await;
    assert!(!m.contains("ezone_router_upstream_errors_total{"), "{m}");
    assert!(
        m.contains("ezone_router_rejected_total{reason=\"bad_body\"} 5"),
        "{m}"
    );
}

/// A failing upstream (no answer in time: 504; refusing connections: 502)
/// is named in the router's log, never in the answer to the client.
#[tokio::test]
async fn upstream_failures_name_no_internal_address() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            conns.push(s);
        }
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let r = one_site_router(
        &[addr],
        dir.path(),
        "",
        "health_interval_ms = 60000",
        "[timeouts]\nrequest_ms = 300",
    )
    .await;
    let get = b"GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n\r\n";
    let ans = raw(r.http, get).await;
    assert_eq!(ans.status, 504, "{ans:?}");
    names_no_address(&ans, &[addr]);
    // Gone: connections refused.
    held.abort();
    let _ = held.await;
    let ans = raw(r.http, get).await;
    assert_eq!(ans.status, 502, "{ans:?}");
    names_no_address(&ans, &[addr]);
    assert!(ans.body.contains("site beijing"), "{ans:?}");
}

/// Exactly one Host per HTTP/1.1 request (else 400, the upstream not
/// touched); an HTTP/1.0 request may have none, and the upstream then gets
/// an empty Host, never the upstream's own address. In absolute form the
/// request target's authority is the Host. Both on the router's own
/// HTTP/1.1 server and on hyper's.
#[tokio::test]
async fn a_request_has_exactly_one_host() {
    on_both_http1_servers("", async |own, app, r| {
        let refused: [&[u8]; 4] = [
            b"GET /orders HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-City-Id: 010\r\n\r\n",
            b"GET /orders HTTP/1.1\r\nX-City-Id: 010\r\n\r\n",
            b"GET /orders HTTP/1.1\r\nHost: a.example/b\r\nX-City-Id: 010\r\n\r\n",
            b"POST /orders HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nX-City-Id: 010\r\nContent-Length: 2\r\n\r\nhi",
        ];
        each_refused(r, own, &refused, |ans| {
            assert!(ans.body.contains("Host"), "{ans:?}");
            names_no_address(ans, &[app.addr]);
        })
        .await;
        assert_eq!(app.count(), 0, "own_http1 = {own}: refused, never sent on");

        // HTTP/1.0 without a Host: forwarded, with an empty one.
        let ans = raw(r.http, b"GET /orders HTTP/1.0\r\nX-City-Id: 010\r\n\r\n").await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        assert_eq!(ans.seen().headers.get("host").map(String::as_str), Some(""));
        // Absolute form: the target's authority is the Host.
        let ans = raw(
            r.http,
            b"GET http://orders.example/orders HTTP/1.1\r\nHost: other.example\r\nX-City-Id: 010\r\n\r\n",
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        assert_eq!(ans.seen().headers["host"], "orders.example");
    })
    .await;
}

/// `Connection` may name hop-by-hop fields, but never the Host, the routing
/// key or the router's own `X-Ezone-*` fields: those still reach the
/// upstream.
#[tokio::test]
async fn connection_cannot_remove_the_host_or_the_routing_fields() {
    on_both_http1_servers("", async |own, _, r| {
        let ans = raw(
            r.http,
            b"GET /orders HTTP/1.1\r\nHost: orders.example\r\nX-City-Id: 010\r\nX-Secret: s\r\nConnection: Host, X-City-Id, X-Ezone-Shard, X-Ezone-Site, X-Secret\r\n\r\n",
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        let seen = ans.seen();
        assert_eq!(seen.headers["host"], "orders.example", "{seen:?}");
        assert_eq!(seen.headers["x-city-id"], "010", "{seen:?}");
        assert_eq!(seen.headers["x-ezone-shard"], "1", "{seen:?}");
        assert_eq!(seen.headers["x-ezone-site"], "beijing", "{seen:?}");
        assert!(!seen.headers.contains_key("x-secret"), "{seen:?}");
        // A body on the way (hyper's path to the upstream) keeps them too.
        let ans = raw(
            r.http,
            b"POST /orders HTTP/1.1\r\nHost: orders.example\r\nX-City-Id: 010\r\nConnection: host, x-city-id\r\nContent-Length: 2\r\n\r\nhi",
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        let seen = ans.seen();
        assert_eq!(seen.headers["host"], "orders.example", "{seen:?}");
        assert_eq!(seen.headers["x-city-id"], "010", "{seen:?}");
        assert_eq!(seen.body_bytes, 2);
    })
    .await;
}

/// A Transfer-Encoding other than exactly `chunked` is 501 and the
/// connection is closed (its body's framing is unknown); in an HTTP/1.0
/// request it is 400; together with a Content-Length it is 400 where the
/// router reads the head itself. None of them reaches the upstream.
#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    on_both_http1_servers("", async |own, app, r| {
        let head = "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n";
        let body = "5\r\nhello\r\n0\r\n\r\n";
        let not_implemented = [
            "Transfer-Encoding: identity, chunked\r\n",
            "Transfer-Encoding: chunked, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
        ];
        for te in not_implemented {
            let mut s = TcpStream::connect(r.http).await.expect("connect");
            let ans = exchange(&mut s, format!("{head}{te}\r\n{body}").as_bytes()).await;
            assert_eq!(ans.status, 501, "own_http1 = {own}: {te:?}: {ans:?}");
            assert!(ans.body.contains("chunked"), "{ans:?}");
            assert!(closed(&mut s).await, "own_http1 = {own}: {te:?}: left open");
        }
        // A coding list that does not end in chunked: the router's own
        // server answers 501; hyper refuses it with 400 before the router
        // sees it. Never forwarded either way.
        let ans = raw(
            r.http,
            format!("{head}Transfer-Encoding: gzip\r\n\r\n{body}").as_bytes(),
        )
        .await;
        let want = if own == "true" { 501 } else { 400 };
        assert_eq!(ans.status, want, "own_http1 = {own}: {ans:?}");
        // HTTP/1.0 has no transfer codings.
        let ans = raw(
            r.http,
            format!(
                "POST /orders HTTP/1.0\r\nHost: x\r\nX-City-Id: 010\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(ans.status, 400, "own_http1 = {own}: {ans:?}");
        assert_eq!(app.count(), 0, "own_http1 = {own}: nothing forwarded");
        // Both framings: refused by the router's own server; hyper drops
        // the Content-Length and closes the connection after the answer
        // (RFC 9112 6.3). Either way the connection ends.
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        let ans = exchange(
            &mut s,
            format!("{head}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n{body}")
                .as_bytes(),
        )
        .await;
        if own == "true" {
            assert_eq!(ans.status, 400, "{ans:?}");
        } else {
            assert!(ans.status == 400 || ans.status == 200, "{ans:?}");
        }
        assert!(closed(&mut s).await, "own_http1 = {own}: left open");
        // `chunked` in any case is fine.
        let ans = raw(
            r.http,
            format!("{head}Transfer-Encoding: Chunked\r\n\r\n{body}").as_bytes(),
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        assert_eq!(ans.seen().body_bytes, 5);
        // The router's refusals are counted, whichever server read the head.
        let counted = if own == "true" { 6 } else { 4 };
        let m = metrics(r).await;
        assert!(
            m.contains(&format!(
                "ezone_router_rejected_total{{reason=\"bad_transfer_encoding\"}} {counted}"
            )),
            "own_http1 = {own}: {m}"
        );
        assert!(!m.contains("ezone_router_upstream_errors_total{"), "{m}");
    })
    .await;
}

/// The routing key sent twice (whatever header the router is configured to
/// route by) is 400: the first would route while both were forwarded.
#[tokio::test]
async fn a_routing_key_sent_twice_is_refused() {
    let keys = "[[keys]]\nsource = \"header\"\nname = \"X-Region\"\nkind = \"city\"\n[[keys]]\nsource = \"header\"\nname = \"x-user-id\"\nkind = \"user\"\n\
                [[keys]]\nsource = \"query\"\nname = \"city\"\nkind = \"city\"\n[[keys]]\nsource = \"cookie\"\nname = \"uid\"\nkind = \"user\"\n";
    on_both_http1_servers(keys, async |own, app, r| {
        let refused: [&[u8]; 4] = [
            b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Region: 010\r\nX-Region: 021\r\n\r\n",
            b"GET /orders HTTP/1.1\r\nHost: x\r\nx-region: 010\r\nX-REGION: 010\r\n\r\n",
            b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Region: 010\r\nX-User-Id: u1\r\nX-User-Id: u2\r\n\r\n",
            b"POST /orders HTTP/1.1\r\nHost: x\r\nX-Region: 010\r\nX-Region: 021\r\nContent-Length: 2\r\n\r\nhi",
        ];
        each_refused(r, own, &refused, |ans| {
            assert!(ans.body.to_lowercase().contains("x-"), "{ans:?}");
        })
        .await;
        // A query parameter or cookie key with two different values.
        let refused: [&[u8]; 3] = [
            b"GET /orders?city=010&city=021 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /orders?city=010&c%69ty=021 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /orders HTTP/1.1\r\nHost: x\r\nCookie: uid=u1\r\nCookie: a=b; uid=u2\r\n\r\n",
        ];
        each_refused(r, own, &refused, |ans| {
            assert!(
                ans.body.contains("query parameter city") || ans.body.contains("cookie uid"),
                "{ans:?}"
            );
        })
        .await;
        assert_eq!(app.count(), 0, "own_http1 = {own}: refused, never sent on");
        assert!(
            metrics(r)
                .await
                .contains("ezone_router_rejected_total{reason=\"repeated_key\"} 7"),
            "own_http1 = {own}"
        );
        // The same value twice routes one way only: served.
        let ans = raw(
            r.http,
            b"GET /orders?city=010&city=010 HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        // A header the router does not route by may repeat.
        let ans = raw(
            r.http,
            b"GET /orders HTTP/1.1\r\nHost: x\r\nX-Region: 010\r\nX-City-Id: 1\r\nX-City-Id: 2\r\n\r\n",
        )
        .await;
        assert_eq!(ans.status, 200, "own_http1 = {own}: {ans:?}");
        assert_eq!(ans.seen().headers["x-ezone-shard"], "1");
    })
    .await;
}

/// A refusal that leaves the framing intact (two Hosts) keeps the
/// connection: the next request on it is served. Refusals are counted.
#[tokio::test]
async fn the_router_keeps_serving_after_refusals() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = one_site_router(&[app.addr], dir.path(), "", "", "").await;
    let mut s = TcpStream::connect(r.http).await.expect("connect");
    let ans = exchange(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-City-Id: 010\r\n\r\n",
    )
    .await;
    assert_eq!(ans.status, 400, "{ans:?}");
    let ans = exchange(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-City-Id: 010\r\n\r\n",
    )
    .await;
    assert_eq!(ans.status, 200, "{ans:?}");
    eventually("the refusal to be counted", WAIT, || async {
        metrics(&r)
            .await
            .contains("ezone_router_rejected_total{reason=\"bad_host\"} 1")
            .then_some(())
    })
    .await;
}

/// Across sites: an HTTP/1.0 request without a Host reaches the other
/// site's upstream through its router (which accepts the empty Host the
/// first router sends for it), and a peer router that is down is named by
/// its site, not its address.
#[tokio::test]
async fn across_sites_the_same_rules_hold() {
    let bj_app = Upstream::start("beijing-app").await;
    let sh_app = Upstream::start("shanghai-app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (bj, sh) = two_sites(dir.path(), &bj_app, &sh_app).await;
    let ans = raw(bj.http, b"GET /orders HTTP/1.0\r\nX-City-Id: 021\r\n\r\n").await;
    assert_eq!(ans.status, 200, "{ans:?}");
    let seen = ans.seen();
    assert_eq!(seen.upstream, "shanghai-app");
    assert_eq!(seen.headers.get("host").map(String::as_str), Some(""));
    // Two routing keys are refused by the first router already.
    let ans = raw(
        bj.http,
        b"GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 021\r\nX-City-Id: 010\r\n\r\n",
    )
    .await;
    assert_eq!(ans.status, 400, "{ans:?}");
    assert_eq!(sh_app.count(), 1);
    // Shanghai's router gone: beijing's answer names the site only.
    let sh_addr = sh.http;
    drop(sh);
    let ans = raw(
        bj.http,
        b"GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 021\r\n\r\n",
    )
    .await;
    assert_eq!(ans.status, 502, "{ans:?}");
    assert!(ans.body.contains("router of site shanghai"), "{ans:?}");
    names_no_address(&ans, &[sh_addr, sh_app.addr]);
}
