//! The router's bounds on every phase of a connection, and its cap on
//! connections, end to end with a real `ezone router`: a request head
//! whose body never comes (408, the upstream released), a client that does
//! not read its answer (dropped, the upstream released), an upstream that
//! stalls mid-body (cut off, counted against it), idle HTTP/1.1 and HTTP/2
//! connections (closed), and an attacker holding connections at the cap
//! while another client is still served.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use ezone_tests::eventually;
use ezone_tests::router::{client, one_site_router, send, RouterProc};
use ezone_tests::upstream::Upstream;

/// How long a test waits for anything the router should do within a
/// bound of at most a second: well short of the 10 s and 30 s defaults
/// the same thing would otherwise take.
const SOON: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(20);

/// What a scripted upstream does with a request (health checks it answers).
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Reads on without answering until the router ends the request.
    Hold,
    /// Answers with a body of [`BIG`] bytes, written as fast as it is taken.
    Big,
    /// Sends a head promising 1000 bytes and 10 of them, then nothing.
    Stall,
}

const BIG: usize = 64 << 20;

/// An HTTP/1.1 upstream following a [`Script`], reporting what happened.
struct Scripted {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<(&'static str, Instant)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    async fn start(script: Script) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(scripted(s, script, tx.clone()));
            }
        });
        Scripted { addr, events, task }
    }

    /// Waits (up to `within`) for the upstream to report `what`; when.
    async fn next(&mut self, what: &str, within: Duration) -> Instant {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("the upstream saw no {what:?} within {within:?}"))
                .expect("upstream running");
            if got.0 == what {
                return got.1;
            }
        }
    }
}

async fn scripted(
    mut s: TcpStream,
    script: Script,
    tx: mpsc::UnboundedSender<(&'static str, Instant)>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if head.starts_with("GET /healthz ") {
            if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let _ = tx.send(("request", Instant::now()));
        match script {
            Script::Hold | Script::Stall => {
                if matches!(script, Script::Stall) {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                        .await;
                }
                // Until the router ends the request.
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = tx.send(("ended", Instant::now()));
                return;
            }
            Script::Big => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BIG}\r\n\r\n");
                if s.write_all(head.as_bytes()).await.is_err() {
                    let _ = tx.send(("cut", Instant::now()));
                    return;
                }
                let block = vec![b'x'; 64 * 1024];
                let mut sent = 0;
                while sent < BIG {
                    if s.write_all(&block).await.is_err() {
                        let _ = tx.send(("cut", Instant::now()));
                        return;
                    }
                    sent += block.len();
                }
                let _ = tx.send(("sent", Instant::now()));
            }
        }
    }
}

/// An answer read off a raw connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one answer off `s` (framed by its Content-Length), waiting at
/// most `within` for it.
async fn answer(s: &mut (impl tokio::io::AsyncRead + Unpin), within: Duration) -> Raw {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer within {within:?}"))
            .unwrap_or(0);
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
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    let mut body = got[end..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no whole body within {within:?}: {head}"))
            .unwrap_or(0);
        assert!(n > 0, "closed in the middle of the body: {head}");
        body.extend_from_slice(&buf[..n]);
    }
    Raw { status, head, body }
}

/// Reads `s` to its end (within `within`): how many bytes came.
async fn to_the_end(s: &mut TcpStream, within: Duration) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("the router did not close the connection within {within:?}"),
            Ok(Ok(0) | Err(_)) => return total,
            Ok(Ok(n)) => total += n,
        }
    }
}

/// The router's metrics page.
async fn metrics(r: &RouterProc) -> String {
    send(&client(), "GET", r.admin, "/metrics", &[], "")
        .await
        .text()
}

/// The sum of a metric's values (0 if absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            let rest = &l[name.len()..];
            rest.starts_with(' ') || rest.starts_with('{')
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// A request head that promises a body which never comes is answered 408
/// once the body read bound passes (here 500 ms), on both HTTP/1 servers:
/// a write read whole before it is sent (a shard's small write), and bodies
/// that stream (a GET with a body, a large write). The upstream is not
/// blamed, and nothing incomplete reaches it.
#[tokio::test]
async fn a_head_whose_body_never_comes_is_answered_408() {
    for own in ["true", "false"] {
        let app = Upstream::start("app").await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[app.addr],
            dir.path(),
            &format!("own_http1 = {own}"),
            "health_interval_ms = 60000\neject_after_failures = 1",
            "[timeouts]\nbody_read_ms = 500",
        )
        .await;
        let heads = [
            "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 1000\r\n\r\n",
            "GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 1000\r\n\r\n",
            "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 100000\r\n\r\nsome",
        ];
        for (i, head) in heads.iter().enumerate() {
            let mut s = TcpStream::connect(r.http).await.expect("connect");
            s.write_all(head.as_bytes()).await.expect("write");
            let started = Instant::now();
            let ans = answer(&mut s, SOON).await;
            let took = started.elapsed();
            assert_eq!(ans.status, 408, "own_http1 = {own}: {head:?}: {ans:?}");
            assert!(took >= Duration::from_millis(400), "{took:?}");
            assert!(
                ans.head.to_lowercase().contains("connection: close"),
                "{ans:?}"
            );
            assert!(
                String::from_utf8_lossy(&ans.body).contains("timeouts.body_read_ms"),
                "{ans:?}"
            );
            to_the_end(&mut s, SOON).await;
            if i == 0 {
                assert_eq!(
                    app.count(),
                    0,
                    "own_http1 = {own}: a kept write goes on whole or not at all"
                );
            }
        }
        // Not the upstream's fault: it serves the next request.
        let ans = send(&client(), "GET", r.http, "/", &[("x-city-id", "010")], "").await;
        assert_eq!(ans.status, 200, "{}", ans.text());
        let m = metrics(&r).await;
        assert_eq!(
            metric(&m, "ezone_router_rejected_total{reason=\"body_timeout\"}"),
            3.0,
            "own_http1 = {own}: {m}"
        );
        assert_eq!(metric(&m, "ezone_router_upstream_errors_total"), 0.0, "{m}");
    }
}

/// A write whose body trickles in (a byte every 300 ms, well within the
/// between-reads bound) is cut once `request_ms` has passed in all: 408,
/// nothing of it sent on, the upstream not blamed.
#[tokio::test]
async fn a_body_that_trickles_is_cut_at_the_request_bound() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = one_site_router(
        &[app.addr],
        dir.path(),
        "",
        "health_interval_ms = 60000\neject_after_failures = 1",
        "[timeouts]\nbody_read_ms = 1000\nrequest_ms = 1500",
    )
    .await;
    let s = TcpStream::connect(r.http).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(
        b"POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 1000\r\n\r\n",
    )
    .await
    .expect("write");
    let trickle = async move {
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"x").await.is_err() {
                break;
            }
        }
    };
    // The answer comes while the client is still sending.
    let ans = tokio::select! {
        a = answer(&mut rd, SOON) => a,
        () = trickle => panic!("the router took the whole trickled body"),
    };
    assert_eq!(ans.status, 408, "{ans:?}");
    assert!(
        String::from_utf8_lossy(&ans.body).contains("timeouts.request_ms"),
        "{ans:?}"
    );
    assert_eq!(app.count(), 0, "nothing of it was sent on");
    let m = metrics(&r).await;
    assert_eq!(metric(&m, "ezone_router_upstream_errors_total"), 0.0, "{m}");
}

/// A chunked request head with no body: 408 once the body read bound
/// passes, and the upstream that was sent the head sees the request end
/// then (its connection closed), not at the 30 s request timeout. With the
/// default body bound (60 s) the request timeout (here 500 ms) ends it
/// first, still as the client's fault: 408, not 504.
#[tokio::test]
async fn a_chunked_head_without_a_body_ends_upstream_too() {
    for (timeouts, setting) in [
        ("body_read_ms = 500", "timeouts.body_read_ms"),
        ("request_ms = 500", "timeouts.request_ms"),
    ] {
        let mut up = Scripted::start(Script::Hold).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[up.addr],
            dir.path(),
            "",
            "health_interval_ms = 60000",
            &format!("[timeouts]\n{timeouts}"),
        )
        .await;
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        s.write_all(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .expect("write");
        let sent = Instant::now();
        up.next("request", SOON).await;
        let ans = answer(&mut s, SOON).await;
        assert_eq!(ans.status, 408, "{timeouts}: {ans:?}");
        assert!(
            String::from_utf8_lossy(&ans.body).contains(setting),
            "{ans:?}"
        );
        let ended = up.next("ended", SOON).await;
        assert!(
            ended.duration_since(sent) < SOON,
            "{timeouts}: the upstream held the half request"
        );
        to_the_end(&mut s, SOON).await;
        let m = metrics(&r).await;
        assert_eq!(metric(&m, "ezone_router_upstream_errors_total"), 0.0, "{m}");
    }
}

/// A client that asks for a 64 MiB answer and never reads it is dropped
/// once the send bound passes (here 500 ms), on both HTTP/1 servers, and
/// the upstream connection the answer came on is released with it.
#[tokio::test]
async fn a_client_that_does_not_read_its_answer_is_dropped() {
    for own in ["true", "false"] {
        let mut up = Scripted::start(Script::Big).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[up.addr],
            dir.path(),
            &format!("own_http1 = {own}"),
            "health_interval_ms = 60000",
            "[timeouts]\nsend_ms = 500",
        )
        .await;
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n\r\n")
            .await
            .expect("write");
        up.next("request", SOON).await;
        // Not reading: the router gives up on the client, and so on the
        // upstream.
        up.next("cut", SOON).await;
        eventually("the client connection to be counted out", SOON, || async {
            (metric(&metrics(&r).await, "ezone_router_connections") == 0.0).then_some(())
        })
        .await;
        let got = to_the_end(&mut s, WAIT).await;
        assert!(
            got < BIG,
            "own_http1 = {own}: the whole answer came ({got})"
        );
    }
}

/// An upstream that sends a head and part of its body, then nothing: the
/// answer is cut off once the upstream read bound passes (here 500 ms),
/// whether the router's own exchange read it (a GET) or hyper's client (a
/// write with a body), on both HTTP/1 servers; each counts against the
/// upstream.
#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off() {
    for own in ["true", "false"] {
        let mut up = Scripted::start(Script::Stall).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[up.addr],
            dir.path(),
            &format!("own_http1 = {own}"),
            "health_interval_ms = 60000",
            "[timeouts]\nupstream_read_ms = 500",
        )
        .await;
        let requests = [
            "GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n\r\n",
            "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 2\r\n\r\nhi",
        ];
        for (i, req) in requests.iter().enumerate() {
            let mut s = TcpStream::connect(r.http).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            up.next("request", SOON).await;
            let started = Instant::now();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The head and the 10 bytes, then the end.
            loop {
                let n = tokio::time::timeout(SOON, s.read(&mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("own_http1 = {own}: {req:?}: not cut off"))
                    .unwrap_or(0);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(text.ends_with("0123456789"), "{text}");
            assert!(started.elapsed() >= Duration::from_millis(400));
            up.next("ended", SOON).await;
            let counted = (i + 1) as f64;
            eventually("the stall to count against the upstream", SOON, || async {
                let m = metrics(&r).await;
                (metric(&m, "ezone_router_upstream_errors_total") == counted).then_some(())
            })
            .await;
        }
    }
}

/// An HTTP/1.1 connection left idle after an answer is closed once the
/// keep-alive bound passes (here 500 ms, the head bound 10 s), whichever
/// server answered.
#[tokio::test]
async fn an_idle_http1_connection_is_closed_after_the_keep_alive_bound() {
    let app = Upstream::start("app").await;
    for own in ["true", "false"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = one_site_router(
            &[app.addr],
            dir.path(),
            &format!("own_http1 = {own}"),
            "",
            "[timeouts]\nkeepalive_ms = 500\nheader_read_ms = 10000\n",
        )
        .await;
        let requests = [
            "GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n\r\n",
            // A body: hyper serves it (and the connection from then on).
            "POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 2\r\n\r\nhi",
        ];
        for req in requests {
            let mut s = TcpStream::connect(r.http).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("write");
            let ans = answer(&mut s, SOON).await;
            assert_eq!(ans.status, 200, "{ans:?}");
            let idle = Instant::now();
            assert_eq!(to_the_end(&mut s, SOON).await, 0);
            assert!(idle.elapsed() >= Duration::from_millis(400));
        }
    }
}

/// An HTTP/2 connection with no stream open is closed (GOAWAY) once the
/// keep-alive bound passes (here 500 ms).
#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_keep_alive_bound() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = one_site_router(
        &[app.addr],
        dir.path(),
        "",
        "",
        "[timeouts]\nkeepalive_ms = 500\n",
    )
    .await;
    let tcp = TcpStream::connect(r.http).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    let conn = tokio::spawn(conn);
    for _ in 0..2 {
        let req = http::Request::get(format!("http://{}/orders", r.http))
            .header("x-city-id", "010")
            .body(Full::new(Bytes::new()))
            .expect("request");
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.expect("body");
        // Idle for less than the bound: still open.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let idle = Instant::now();
    tokio::time::timeout(SOON, conn)
        .await
        .expect("the router closed the idle HTTP/2 connection")
        .expect("joined")
        .expect("closed cleanly (GOAWAY)");
    assert!(idle.elapsed() >= Duration::from_millis(200));
}

/// Lowers a running process's file descriptor limit (soft and hard).
fn limit_fds(pid: u32, n: u64) {
    let limit = nix::libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: plain syscall on another process of ours; the pointers are
    // valid for its duration.
    let rc = unsafe {
        nix::libc::prlimit(
            pid as nix::libc::pid_t,
            nix::libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// File descriptors a process has open.
fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc")
        .count() as u64
}

/// An attacker opens twice the connection cap (20) and holds each with a
/// half-sent request head, then with a head whose body never comes, on a
/// router with file descriptors for little more than the cap. Another
/// client is still served: the idle connections are shed first (the half
/// heads); the busy ones (half bodies) are answered 408 and closed once
/// the body bound passes, and the rest wait in the listen backlog meanwhile
/// instead of running the router out of descriptors.
#[tokio::test]
async fn an_attacker_at_the_connection_cap_does_not_keep_others_out() {
    let app = Upstream::start("app").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let r = one_site_router(
        &[app.addr],
        dir.path(),
        "",
        "",
        "[limits]\nmax_connections = 20\n[timeouts]\nbody_read_ms = 1000\n",
    )
    .await;
    let victim = || async {
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        s.write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\n\r\n")
            .await
            .expect("write");
        let started = Instant::now();
        let ans = answer(&mut s, Duration::from_secs(8)).await;
        assert_eq!(ans.status, 200, "{ans:?}");
        started.elapsed()
    };
    // Warm up (the upstream connections a request takes), then leave the
    // router descriptors for the cap and a few more.
    for _ in 0..4 {
        victim().await;
    }
    let pid = r.proc.child.id();
    limit_fds(pid, open_fds(pid) + 28);
    let m = metrics(&r).await;
    assert_eq!(metric(&m, "ezone_router_max_connections"), 20.0, "{m}");

    // Half-sent heads: idle, shed oldest first.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    let took = victim().await;
    assert!(took < Duration::from_secs(3), "served after {took:?}");
    // All 40 get in, in turn (the half heads would only time out after
    // 10 s), the cap holding.
    eventually(
        "every attacker's connection to be accepted",
        SOON,
        || async {
            let m = metrics(&r).await;
            let open = metric(&m, "ezone_router_connections");
            assert!(open <= 22.0, "{m}");
            (metric(&m, "ezone_router_connections_shed_total") >= 20.0).then_some(())
        },
    )
    .await;
    drop(held);

    // Heads whose bodies never come: busy, answered 408 after the body
    // bound, a new batch accepted in their place meanwhile.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(r.http).await.expect("connect");
        s.write_all(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nX-City-Id: 010\r\nContent-Length: 1000\r\n\r\n",
        )
        .await
        .expect("write");
        held.push(s);
    }
    let took = victim().await;
    assert!(took < Duration::from_secs(8), "served after {took:?}");
    // Every attacker's connection ends: 408 (or, accepted while the cap
    // was reached and idle before its head was read, shed).
    let mut timed_out = 0;
    for s in &mut held {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("the attacker's connection ends")
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        if !text.is_empty() {
            assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
            timed_out += 1;
        }
    }
    assert!(timed_out >= 20, "{timed_out} answered 408");
    let m = metrics(&r).await;
    assert_eq!(
        metric(&m, "ezone_router_rejected_total{reason=\"body_timeout\"}"),
        f64::from(timed_out),
        "{m}"
    );
    assert_eq!(app.count(), 4 + 2, "only the victim's requests went on");
}
