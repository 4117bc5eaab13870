//! Integration tests of the TCP fault proxy on real loopback sockets: each
//! fault is asserted through what a client and an upstream actually see.
//!
//! Timing is asserted only with generous bounds (a lower bound the proxy
//! guarantees, an upper bound several times the ask), absence of bytes only
//! within a window, and everything else by polling with a deadline, so the
//! tests hold on a loaded two-core machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ezone_chaos::proxy::api::Directions;
use ezone_chaos::proxy::{
    AdminClient, Direction, FaultProxy, LinkHandle, LinkSpec, ProxyError, Toxics,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long to wait for something that must happen.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long to watch for something that must not happen.
const QUIET_WINDOW: Duration = Duration::from_millis(400);

const MS: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------- helpers

/// An upstream that echoes every byte and closes after the client's EOF.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo server");
    let addr = listener.local_addr().expect("echo server address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An upstream that hands each accepted connection to the test, so the test
/// can see whether (and when) a connection reached it and play the server.
struct Upstream {
    addr: SocketAddr,
    accepted: mpsc::Receiver<TcpStream>,
    count: Arc<AtomicUsize>,
}

async fn upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let (tx, accepted) = mpsc::channel(16);
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            if tx.send(stream).await.is_err() {
                break;
            }
        }
    });
    Upstream {
        addr,
        accepted,
        count,
    }
}

impl Upstream {
    async fn next(&mut self) -> TcpStream {
        tokio::time::timeout(DEADLINE, self.accepted.recv())
            .await
            .expect("a connection reaches the upstream in time")
            .expect("the upstream is running")
    }
}

fn spec(name: &str, upstream: SocketAddr) -> LinkSpec {
    LinkSpec {
        name: name.to_owned(),
        listen: "127.0.0.1:0".parse().expect("a literal address"),
        upstream,
        upstream_toxics: Toxics::default(),
        downstream_toxics: Toxics::default(),
    }
}

async fn connect(link: &LinkHandle) -> TcpStream {
    let stream = TcpStream::connect(link.listen_addr())
        .await
        .expect("connect to the proxy");
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("the bytes arrive in time")
        .expect("the stream stays open");
    buf
}

/// Asserts that nothing can be read from `stream` during the quiet window.
async fn assert_quiet(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    if let Ok(read) = tokio::time::timeout(QUIET_WINDOW, stream.read(&mut buf)).await {
        panic!("{what}: expected nothing, read {read:?}");
    }
}

/// Polls `cond` until it holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(10 * MS).await;
    }
}

/// A read that must end the stream: EOF or an error such as a reset.
async fn assert_closed(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: the connection stayed open"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A read that must fail with a reset (RST), not a clean EOF.
async fn assert_reset(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
        Err(_) => panic!("{what}: the connection stayed open"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(other) => panic!("{what}: expected a reset, got {other:?}"),
    }
}

/// One echo round trip of a small message through `stream`; its duration.
async fn round_trip(stream: &mut TcpStream, msg: &[u8]) -> Duration {
    let start = Instant::now();
    stream
        .write_all(msg)
        .await
        .expect("write through the proxy");
    let back = read_exactly(stream, msg.len()).await;
    assert_eq!(back, msg);
    start.elapsed()
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn clean_link_carries_a_large_transfer_both_ways_intact() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("clean", echo_server().await))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(&data).await.expect("send");
        w.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let receive = async { r.read_to_end(&mut back).await.expect("receive") };
    tokio::join!(send, receive);
    assert!(back == data, "echoed bytes differ");
    let stats = link.stats();
    assert_eq!(stats.bytes_upstream, 2_000_000);
    assert_eq!(stats.bytes_downstream, 2_000_000);
    eventually("the connection is closed", || {
        link.stats().connections_open == 0
    })
    .await;
    assert_eq!(link.stats().connections_total, 1);
    proxy.shutdown().await;
}

#[tokio::test]
async fn latency_is_added_each_way() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("latency", echo_server().await))
        .await
        .expect("add link");
    // The toxics are set on an open connection: they apply to it at once.
    let mut client = connect(&link).await;
    round_trip(&mut client, b"warm up").await;
    let fifty = Toxics {
        latency: 50 * MS,
        ..Toxics::default()
    };
    link.set_toxics(Direction::Upstream, fifty.clone());
    link.set_toxics(Direction::Downstream, fifty);
    let mut fastest = Duration::MAX;
    for i in 0..3u8 {
        let rtt = round_trip(&mut client, &[i; 16]).await;
        assert!(
            rtt >= 100 * MS,
            "round trip {i} took {rtt:?}, less than 2 x 50 ms"
        );
        fastest = fastest.min(rtt);
    }
    assert!(
        fastest < 500 * MS,
        "fastest round trip {fastest:?}, far more than 100 ms"
    );

    // Clearing the toxics takes effect on the open connection.
    link.set_toxics(Direction::Upstream, Toxics::default());
    link.set_toxics(Direction::Downstream, Toxics::default());
    let mut fastest = Duration::MAX;
    for i in 0..3u8 {
        fastest = fastest.min(round_trip(&mut client, &[i; 16]).await);
    }
    assert!(
        fastest < 90 * MS,
        "after clearing, fastest round trip {fastest:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn latency_delays_without_corrupting_a_bulk_transfer() {
    let proxy = FaultProxy::new();
    let mut s = spec("latency-bulk", echo_server().await);
    s.upstream_toxics.latency = 10 * MS;
    s.downstream_toxics.latency = 10 * MS;
    let link = proxy.add_link(s).await.expect("add link");
    let mut client = connect(&link).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = client.split();
    let send = async {
        w.write_all(&data).await.expect("send");
        w.shutdown().await.expect("half-close");
    };
    let mut back = Vec::new();
    let receive = async { r.read_to_end(&mut back).await.expect("receive") };
    tokio::join!(send, receive);
    assert!(back == data, "echoed bytes differ");
    proxy.shutdown().await;
}

#[tokio::test]
async fn jitter_never_reorders_bytes() {
    let proxy = FaultProxy::new();
    let mut s = spec("jitter", echo_server().await);
    let jittery = Toxics {
        latency: 10 * MS,
        jitter: 10 * MS,
        ..Toxics::default()
    };
    s.upstream_toxics = jittery.clone();
    s.downstream_toxics = jittery;
    let link = proxy.add_link(s).await.expect("add link");
    let mut client = connect(&link).await;
    let count = 3_000u32;
    let (mut r, mut w) = client.split();
    let send = async {
        for i in 0..count {
            w.write_all(&i.to_be_bytes()).await.expect("send");
            if i % 100 == 0 {
                // Let reads happen between writes, so chunks are many and small.
                tokio::time::sleep(MS).await;
            }
        }
    };
    let receive = async {
        let mut buf = vec![0u8; 4 * count as usize];
        tokio::time::timeout(DEADLINE, r.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("receive");
        buf
    };
    let ((), buf) = tokio::join!(send, receive);
    for (expected, got) in buf.chunks_exact(4).enumerate() {
        let got = u32::from_be_bytes([got[0], got[1], got[2], got[3]]);
        assert_eq!(got, expected as u32, "number {expected} came out of order");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn bandwidth_cap_roughly_holds() {
    let mut up = upstream().await;
    let proxy = FaultProxy::new();
    let mut s = spec("bandwidth", up.addr);
    s.upstream_toxics.bandwidth_bytes_per_sec = Some(100_000);
    let link = proxy.add_link(s).await.expect("add link");
    let mut client = connect(&link).await;
    let mut server = up.next().await;
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        client.write_all(&vec![1u8; 200_000]).await.expect("send");
        client
    });
    let got = tokio::time::timeout(DEADLINE, async {
        let mut buf = vec![0u8; 200_000];
        server.read_exact(&mut buf).await.map(|_| buf)
    })
    .await
    .expect("200 KB at 100 KB/s arrives well within the deadline")
    .expect("receive");
    let took = start.elapsed();
    assert!(got.iter().all(|&b| b == 1));
    assert!(took >= 1_500 * MS, "200 KB at 100 KB/s took only {took:?}");
    drop(writer);
    proxy.shutdown().await;
}

#[tokio::test]
async fn partition_holds_bytes_and_heal_delivers_them_in_order_on_the_same_connection() {
    let mut up = upstream().await;
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("partition", up.addr))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    let mut server = up.next().await;
    client.write_all(b"before").await.expect("send");
    assert_eq!(read_exactly(&mut server, 6).await, b"before");

    link.partition();
    let before = link.stats();
    client
        .write_all(b"held-1,")
        .await
        .expect("send into the partition");
    client
        .write_all(b"held-2")
        .await
        .expect("send into the partition");
    server
        .write_all(b"reply")
        .await
        .expect("send into the partition");
    assert_quiet(&mut server, "upstream during a partition").await;
    assert_quiet(&mut client, "client during a partition").await;
    let during = link.stats();
    assert_eq!(
        during.bytes_upstream, before.bytes_upstream,
        "bytes crossed upstream"
    );
    assert_eq!(
        during.bytes_downstream, before.bytes_downstream,
        "bytes crossed downstream"
    );

    link.heal();
    assert_eq!(read_exactly(&mut server, 13).await, b"held-1,held-2");
    assert_eq!(read_exactly(&mut client, 5).await, b"reply");
    assert_eq!(
        link.stats().connections_total,
        1,
        "the same connection carried on"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn partition_keeps_latency_and_heal_keeps_it_too() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("partition-latency", echo_server().await))
        .await
        .expect("add link");
    link.set_toxics(
        Direction::Upstream,
        Toxics {
            latency: 40 * MS,
            ..Toxics::default()
        },
    );
    link.partition();
    assert!(link.toxics(Direction::Upstream).blackhole);
    link.heal();
    let t = link.toxics(Direction::Upstream);
    assert!(!t.blackhole);
    assert_eq!(t.latency, 40 * MS);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_connection_made_during_a_partition_reaches_the_upstream_only_after_heal() {
    let mut up = upstream().await;
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("held-connect", up.addr))
        .await
        .expect("add link");
    link.partition();
    let mut client = connect(&link).await;
    client
        .write_all(b"hello")
        .await
        .expect("the kernel takes the first bytes");
    tokio::time::sleep(QUIET_WINDOW).await;
    assert_eq!(
        up.count.load(Ordering::SeqCst),
        0,
        "the upstream saw a connection during the partition"
    );
    assert_eq!(
        link.stats().connections_open,
        1,
        "the held connection counts as open"
    );

    link.heal();
    let mut server = up.next().await;
    assert_eq!(read_exactly(&mut server, 5).await, b"hello");
    server.write_all(b"welcome").await.expect("reply");
    assert_eq!(read_exactly(&mut client, 7).await, b"welcome");
    proxy.shutdown().await;
}

#[tokio::test]
async fn one_way_partition_blocks_only_that_direction() {
    let mut up = upstream().await;
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("one-way", up.addr))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    let mut server = up.next().await;

    link.partition_one_way(Direction::Upstream);
    client.write_all(b"up").await.expect("send");
    server.write_all(b"down").await.expect("send");
    assert_eq!(
        read_exactly(&mut client, 4).await,
        b"down",
        "downstream still flows"
    );
    assert_quiet(&mut server, "upstream direction while partitioned").await;
    link.heal();
    assert_eq!(read_exactly(&mut server, 2).await, b"up");

    link.partition_one_way(Direction::Downstream);
    client.write_all(b"up2").await.expect("send");
    server.write_all(b"down2").await.expect("send");
    assert_eq!(
        read_exactly(&mut server, 3).await,
        b"up2",
        "upstream still flows"
    );
    assert_quiet(&mut client, "downstream direction while partitioned").await;
    link.heal();
    assert_eq!(read_exactly(&mut client, 5).await, b"down2");
    proxy.shutdown().await;
}

#[tokio::test]
async fn reset_closes_open_connections_and_new_ones_work() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("reset", echo_server().await))
        .await
        .expect("add link");
    let mut first = connect(&link).await;
    let mut second = connect(&link).await;
    round_trip(&mut first, b"ping").await;
    round_trip(&mut second, b"ping").await;
    assert_eq!(link.stats().connections_open, 2);

    link.reset();
    assert_reset(&mut first, "first connection after reset").await;
    assert_reset(&mut second, "second connection after reset").await;
    eventually("no connection is open", || {
        link.stats().connections_open == 0
    })
    .await;

    let mut third = connect(&link).await;
    round_trip(&mut third, b"after reset").await;
    assert_eq!(link.stats().connections_total, 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn reset_also_closes_connections_held_by_a_partition() {
    let up = upstream().await;
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("reset-held", up.addr))
        .await
        .expect("add link");
    link.partition();
    let mut held = connect(&link).await;
    eventually("the held connection is counted", || {
        link.stats().connections_open == 1
    })
    .await;
    link.reset();
    assert_reset(&mut held, "held connection after reset").await;
    assert_eq!(up.count.load(Ordering::SeqCst), 0);
    proxy.shutdown().await;
}

#[tokio::test]
async fn slow_close_delays_passing_the_close_on() {
    let proxy = FaultProxy::new();
    let mut s = spec("slow-close", echo_server().await);
    s.downstream_toxics.slow_close = 300 * MS;
    let link = proxy.add_link(s).await.expect("add link");
    let mut client = connect(&link).await;
    round_trip(&mut client, b"x").await;
    let start = Instant::now();
    client.shutdown().await.expect("half-close");
    assert_closed(&mut client, "client after the echo server closed").await;
    let took = start.elapsed();
    assert!(took >= 300 * MS, "the close came back after {took:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_resets_the_client() {
    // Bind then drop, so the port is (almost certainly) closed.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("address");
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("dead-upstream", dead))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    assert_reset(&mut client, "client of a dead upstream").await;
    eventually("no connection is open", || {
        link.stats().connections_open == 0
    })
    .await;
    proxy.shutdown().await;
}

// ---------------------------------------------------------------- lifecycle

#[tokio::test]
async fn add_link_refuses_a_taken_name_and_a_busy_address() {
    let proxy = FaultProxy::new();
    let upstream = echo_server().await;
    let link = proxy
        .add_link(spec("a->b:pg", upstream))
        .await
        .expect("add link");
    match proxy.add_link(spec("a->b:pg", upstream)).await {
        Err(ProxyError::LinkExists { name }) => assert_eq!(name, "a->b:pg"),
        other => panic!("expected LinkExists, got {other:?}"),
    }
    let mut busy = spec("busy", upstream);
    busy.listen = link.listen_addr();
    let err = proxy
        .add_link(busy)
        .await
        .expect_err("the address is taken");
    assert!(matches!(err, ProxyError::Bind { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&link.listen_addr().to_string()),
        "{err}"
    );
    assert_eq!(proxy.links().len(), 1);
    assert_eq!(
        proxy.link("a->b:pg").map(|l| l.listen_addr()),
        Some(link.listen_addr())
    );
    assert!(proxy.link("nope").is_none());
    proxy.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_listeners_and_connections() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("shutdown", echo_server().await))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    round_trip(&mut client, b"hi").await;
    tokio::time::timeout(DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown completes");
    assert_closed(&mut client, "client after shutdown").await;
    assert!(
        TcpStream::connect(link.listen_addr()).await.is_err(),
        "the listener is closed"
    );
    assert!(matches!(
        proxy.add_link(spec("late", link.listen_addr())).await,
        Err(ProxyError::ShutDown)
    ));
    proxy.shutdown().await; // idempotent
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_proxy() {
    let proxy = FaultProxy::new();
    let link = proxy
        .add_link(spec("dropped", echo_server().await))
        .await
        .expect("add link");
    let mut client = connect(&link).await;
    round_trip(&mut client, b"hi").await;
    let clone = proxy.clone();
    drop(proxy);
    round_trip(&mut client, b"still alive").await;
    drop(clone);
    assert_closed(&mut client, "client after the last handle dropped").await;
    let start = Instant::now();
    while TcpStream::connect(link.listen_addr()).await.is_ok() {
        assert!(start.elapsed() < DEADLINE, "the listener stayed open");
        tokio::time::sleep(10 * MS).await;
    }
}

// ---------------------------------------------------------------- admin API

/// A raw HTTP/1.1 request; the status and the JSON body of the answer.
async fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(admin)
        .await
        .expect("connect to the admin API");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"));
    (status, json)
}

#[tokio::test]
async fn admin_api_adds_links_and_changes_their_faults() {
    let mut up = upstream().await;
    let proxy = FaultProxy::new();
    let admin = proxy
        .serve_admin("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("serve admin");
    let name = "beijing->shanghai:pg";
    let path = "/links/beijing-%3Eshanghai%3Apg";

    // Add a link.
    let add = format!(
        r#"{{"name": "{name}", "listen": "127.0.0.1:0", "upstream": "{}"}}"#,
        up.addr
    );
    let (status, link) = http(admin, "POST", "/links", Some(&add)).await;
    assert_eq!(status, 201, "{link}");
    assert_eq!(link["name"], name);
    let listen: SocketAddr = link["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("a listen address");
    assert_ne!(listen.port(), 0);
    let (status, err) = http(admin, "POST", "/links", Some(&add)).await;
    assert_eq!(status, 409, "{err}");
    assert!(
        err["error"].as_str().is_some_and(|e| e.contains(name)),
        "{err}"
    );

    // List and get.
    let (status, links) = http(admin, "GET", "/links", None).await;
    assert_eq!(status, 200);
    assert_eq!(links.as_array().map(Vec::len), Some(1), "{links}");
    let (status, got) = http(admin, "GET", path, None).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["listen"], link["listen"]);

    // Toxics, one direction.
    let body = r#"{"direction": "upstream", "toxics": {"latency": "30ms", "jitter": "2ms"}}"#;
    let (status, got) = http(admin, "POST", &format!("{path}/toxics"), Some(body)).await;
    assert_eq!(status, 200, "{got}");
    let handle = proxy.link(name).expect("the link exists in the proxy");
    assert_eq!(handle.toxics(Direction::Upstream).latency, 30 * MS);
    assert_eq!(handle.toxics(Direction::Upstream).jitter, 2 * MS);
    assert_eq!(handle.toxics(Direction::Downstream), Toxics::default());
    let body = r#"{"direction": "both", "toxics": {"bandwidth_bytes_per_sec": 0}}"#;
    let (status, err) = http(admin, "POST", &format!("{path}/toxics"), Some(body)).await;
    assert_eq!(status, 400, "{err}");
    let (status, err) = http(admin, "POST", &format!("{path}/toxics"), Some("{not json")).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("invalid JSON")),
        "{err}"
    );

    // Partition one way, both ways, heal.
    let (status, _) = http(
        admin,
        "POST",
        &format!("{path}/partition"),
        Some(r#"{"direction": "downstream"}"#),
    )
    .await;
    assert_eq!(status, 200);
    assert!(handle.toxics(Direction::Downstream).blackhole);
    assert!(!handle.toxics(Direction::Upstream).blackhole);
    let (status, got) = http(admin, "POST", &format!("{path}/partition"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got["upstream_toxics"]["blackhole"], true, "{got}");
    assert_eq!(got["downstream_toxics"]["blackhole"], true, "{got}");
    let (status, _) = http(admin, "POST", &format!("{path}/heal"), None).await;
    assert_eq!(status, 200);
    assert!(
        !handle.toxics(Direction::Upstream).blackhole
            && !handle.toxics(Direction::Downstream).blackhole
    );
    assert_eq!(
        handle.toxics(Direction::Upstream).latency,
        30 * MS,
        "heal keeps the latency"
    );

    // Reset closes an open connection.
    let mut client = TcpStream::connect(listen)
        .await
        .expect("connect through the new link");
    let mut server = up.next().await;
    client.write_all(b"x").await.expect("send");
    assert_eq!(read_exactly(&mut server, 1).await, b"x");
    let (status, _) = http(admin, "POST", &format!("{path}/reset"), None).await;
    assert_eq!(status, 200);
    assert_reset(&mut client, "client after an admin reset").await;
    assert_reset(&mut server, "upstream after an admin reset").await;

    // Errors name the thing and the fix.
    let (status, err) = http(admin, "GET", "/links/nope", None).await;
    assert_eq!(status, 404, "{err}");
    let message = err["error"].as_str().expect("an error message");
    assert!(
        message.contains("\"nope\"") && message.contains(name),
        "{message}"
    );
    let (status, _) = http(admin, "POST", "/links/nope/heal", None).await;
    assert_eq!(status, 404);
    let (status, err) = http(admin, "GET", "/nowhere", None).await;
    assert_eq!(status, 404);
    assert!(
        err["error"]
            .as_str()
            .is_some_and(|e| e.contains("GET /links")),
        "{err}"
    );
    let (status, _) = http(admin, "DELETE", path, None).await;
    assert_eq!(status, 405);
    let (status, _) = http(admin, "POST", &format!("{path}/explode"), None).await;
    assert_eq!(status, 404);

    proxy.shutdown().await;
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin API stops with the proxy"
    );
}

#[tokio::test]
async fn admin_client_drives_a_proxy_over_http() {
    let proxy = FaultProxy::new();
    let admin = proxy
        .serve_admin("127.0.0.1:0".parse().expect("an address"))
        .await
        .expect("serve admin");
    let client = AdminClient::new(admin);
    let name = "a/b->c:d %e";
    let added = client
        .add_link(&spec(name, echo_server().await))
        .await
        .expect("add over HTTP");
    assert_eq!(added.name, name);
    let fifty = Toxics {
        latency: 50 * MS,
        ..Toxics::default()
    };
    let status = client
        .set_toxics(name, Directions::Both, &fifty)
        .await
        .expect("set toxics");
    assert_eq!(status.upstream_toxics.latency, 50 * MS);
    assert_eq!(status.downstream_toxics.latency, 50 * MS);
    let status = client
        .partition(name, Directions::Upstream)
        .await
        .expect("partition");
    assert!(status.upstream_toxics.blackhole && !status.downstream_toxics.blackhole);
    let status = client.heal(name).await.expect("heal");
    assert!(!status.upstream_toxics.blackhole);
    client.reset(name).await.expect("reset");
    assert_eq!(client.links().await.expect("list").len(), 1);
    assert_eq!(client.link(name).await.expect("get").listen, added.listen);
    match client.link("missing").await {
        Err(ProxyError::AdminRejected {
            status: 404,
            message,
            ..
        }) => assert!(message.contains("missing"), "{message}"),
        other => panic!("expected a 404, got {other:?}"),
    }
    proxy.shutdown().await;
    assert!(matches!(
        client.links().await,
        Err(ProxyError::AdminUnreachable { .. })
    ));
}
