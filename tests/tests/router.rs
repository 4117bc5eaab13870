//! The edge router end to end: real `ezone router` processes, a real etcd from
//! the lab, real upstream HTTP servers per site.

use std::time::Duration;

use ezone_chaos::etcd::EtcdCluster;
use ezone_chaos::ports::free_port;
use ezone_tests::eventually;
use ezone_tests::router::{client, send, RouterProc};
use ezone_tests::upstream::Upstream;
use ezone_topology::starter::starter;
use ezone_topology::{EtcdStore, Shard, ShardState, Topology, TopologyStore};

const WAIT: Duration = Duration::from_secs(20);

/// Two sites, each with one upstream and one router, topology in etcd.
struct World {
    etcd: EtcdCluster,
    store: EtcdStore,
    bj_app: Upstream,
    sh_app: Upstream,
    bj: RouterProc,
    sh: RouterProc,
}

/// The routers' shared secret in these tests.
const PEER_SECRET: &str = "ezone-test-peer-secret";

/// A router's config: `routing` lines go into its `[routing]` table (which
/// has the peer secret), `extra` (whole tables) at the end.
fn router_toml(site: &str, port: u16, topology: &str, routing: &str, extra: &str) -> String {
    format!(
        r#"
site = "{site}"
[listen]
http = "127.0.0.1:{port}"
[topology]
{topology}
[routing]
peer_secret = "{PEER_SECRET}"
{routing}
[[keys]]
source = "header"
name = "x-city-id"
kind = "city"
[[keys]]
source = "header"
name = "x-user-id"
kind = "user"
[[keys]]
source = "query"
name = "city"
kind = "city"
[[keys]]
source = "path"
after = "cities"
kind = "city"
[upstream]
health_interval_ms = 200
{extra}
"#
    )
}

async fn world(routing: &str, extra: &str) -> World {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let bj_app = Upstream::start("beijing-app").await;
    let sh_app = Upstream::start("shanghai-app").await;
    let (bj_port, sh_port) = (free_port().expect("port"), free_port().expect("port"));
    let mut t = starter(&["beijing", "shanghai"], 2);
    for (site, port, app) in [
        ("beijing", bj_port, &bj_app),
        ("shanghai", sh_port, &sh_app),
    ] {
        let s = t.sites.get_mut(site).expect("site");
        s.router = format!("127.0.0.1:{port}");
        s.upstreams = vec![app.addr.to_string()];
    }
    let store = EtcdStore::connect(&etcd.client_urls(), "/ezone")
        .await
        .expect("connect");
    store.init(&t, false).await.expect("init");
    let src = format!("etcd = [\"{}\"]", etcd.client_urls()[0]);
    let bj = RouterProc::start(&router_toml("beijing", bj_port, &src, routing, extra));
    let sh = RouterProc::start(&router_toml("shanghai", sh_port, &src, routing, extra));
    let w = World {
        etcd,
        store,
        bj_app,
        sh_app,
        bj,
        sh,
    };
    let c = client();
    for r in [&w.bj, &w.sh] {
        eventually("the router to be ready", WAIT, || async {
            let a = send(&c, "GET", r.admin, "/readyz", &[], "").await;
            (a.status == 200).then_some(())
        })
        .await;
    }
    w
}

async fn shard(store: &EtcdStore, id: u32) -> Shard {
    store.load().await.expect("load").topology.shards[&id].clone()
}

async fn set_shard(store: &EtcdStore, id: u32, home: &str, state: ShardState) -> i64 {
    let cur = shard(store, id).await;
    let next = Shard {
        id,
        home: home.into(),
        state,
        epoch: cur.epoch + 1,
    };
    store.cas_shard(cur.epoch, &next).await.expect("cas")
}

/// `POST /orders` for city 010 (body `order-1`) to the router at `addr`,
/// in a task of its own (it may be held).
fn spawn_order(addr: std::net::SocketAddr) -> tokio::task::JoinHandle<ezone_tests::router::Answer> {
    tokio::spawn(async move {
        send(
            &client(),
            "POST",
            addr,
            "/orders",
            &[("X-City-Id", "010")],
            "order-1",
        )
        .await
    })
}

fn home_of_user(t: &Topology, user: &str) -> String {
    t.user_shard(user).expect("user shard").home.clone()
}

#[tokio::test]
async fn requests_land_on_their_home_site_and_follow_topology_changes() {
    let w = world("", "").await;
    let c = client();
    // 010 -> shard 1 (beijing); 021 -> shard 2 (shanghai).
    let a = send(&c, "GET", w.bj.http, "/orders", &[("X-City-Id", "010")], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.seen();
    assert_eq!(seen.upstream, "beijing-app");
    assert_eq!(seen.headers["x-ezone-shard"], "1");
    assert_eq!(seen.headers["x-ezone-epoch"], "1");
    assert_eq!(seen.headers["x-ezone-site"], "beijing");
    assert!(seen.headers["via"].contains("ezone"));
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    // Entering the wrong site: forwarded once, to the home site's router.
    let a = send(&c, "GET", w.sh.http, "/orders", &[("X-City-Id", "010")], "").await;
    let seen = a.seen();
    assert_eq!(seen.upstream, "beijing-app");
    assert!(
        !seen.headers.contains_key("x-ezone-hop"),
        "hop header must not reach upstreams"
    );
    assert_eq!(
        seen.headers["x-forwarded-for"], "127.0.0.1, 127.0.0.1",
        "one forward, one hop"
    );

    // Other key sources: query, path, user id.
    let a = send(&c, "GET", w.bj.http, "/orders?city=021", &[], "").await;
    assert_eq!(a.seen().upstream, "shanghai-app");
    let a = send(&c, "GET", w.bj.http, "/api/cities/021/orders", &[], "").await;
    assert_eq!(a.seen().upstream, "shanghai-app");
    let t = w.store.load().await.expect("load").topology;
    for user in ["alice", "bob", "u1", "10086"] {
        let a = send(&c, "GET", w.sh.http, "/me", &[("X-User-Id", user)], "").await;
        let want = format!("{}-app", home_of_user(&t, user));
        assert_eq!(a.seen().upstream, want, "user {user}");
    }

    // Spoofed X-Ezone-* headers are replaced by the router's.
    let a = send(
        &c,
        "GET",
        w.bj.http,
        "/",
        &[
            ("X-City-Id", "010"),
            ("X-Ezone-Shard", "99"),
            ("X-Ezone-Epoch", "12345"),
            ("X-Ezone-Site", "mars"),
        ],
        "",
    )
    .await;
    let seen = a.seen();
    assert_eq!(seen.headers["x-ezone-shard"], "1");
    assert_eq!(seen.headers["x-ezone-epoch"], "1");
    assert_eq!(seen.headers["x-ezone-site"], "beijing");

    // Unknown city: a clear 404; no key: the local site (default action).
    let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "9999")], "").await;
    assert_eq!(a.status, 404);
    assert!(a.text().contains("unknown city"), "{}", a.text());
    let a = send(&c, "GET", w.sh.http, "/", &[], "").await;
    assert_eq!(a.seen().upstream, "shanghai-app");
    assert!(!a.seen().headers.contains_key("x-ezone-shard"));

    // Move shard 1 to shanghai: both routers follow.
    set_shard(&w.store, 1, "shanghai", ShardState::Active).await;
    for r in [&w.bj, &w.sh] {
        eventually("the move to be followed", WAIT, || async {
            let a = send(&c, "GET", r.http, "/", &[("X-City-Id", "010")], "").await;
            (a.status == 200 && a.seen().upstream == "shanghai-app").then_some(())
        })
        .await;
    }
    let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "010")], "").await;
    assert_eq!(a.seen().headers["x-ezone-epoch"], "2");

    // etcd gone: the routers keep routing by the last good topology and
    // report its age.
    w.etcd.kill().expect("kill etcd");
    eventually("the topology age to pass 2 s", WAIT, || async {
        let a = send(&c, "GET", w.bj.admin, "/topology", &[], "").await;
        let v: serde_json::Value = serde_json::from_slice(&a.body).ok()?;
        (v["age_seconds"].as_f64()? > 2.0).then_some(())
    })
    .await;
    let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "010")], "").await;
    assert_eq!(a.seen().upstream, "shanghai-app");
    let m = send(&c, "GET", w.bj.admin, "/metrics", &[], "").await;
    let metrics = m.text();
    assert!(
        metrics.contains("ezone_router_topology_age_seconds"),
        "{metrics}"
    );
    assert!(metrics.contains("ezone_router_cross_site_forwards_total"));
    assert!(w.bj_app.count() > 0 && w.sh_app.count() > 0);
}

#[tokio::test]
async fn frozen_shard_writes_are_held_then_released_to_the_new_home() {
    let w = world("write_hold_ms = 1500", "").await;
    let c = client();
    // Freeze shard 1 (home beijing) for a flip to shanghai.
    set_shard(&w.store, 1, "beijing", ShardState::Frozen).await;
    eventually("the freeze to be seen", WAIT, || async {
        let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "010")], "").await;
        (a.seen().headers["x-ezone-epoch"] == "2").then_some(())
    })
    .await;
    // Reads keep flowing to the current home.
    let a = send(&c, "GET", w.sh.http, "/", &[("X-City-Id", "010")], "").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.seen().upstream, "beijing-app");

    // A write is held; the flip lands; the write goes to the new home.
    let before = w.bj_app.count();
    let held = spawn_order(w.bj.http);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "the write must be held while frozen");
    set_shard(&w.store, 1, "shanghai", ShardState::Active).await;
    let a = held.await.expect("join");
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.seen();
    assert_eq!(seen.upstream, "shanghai-app");
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_bytes, 7);
    assert_eq!(seen.headers["x-ezone-epoch"], "3");
    assert_eq!(
        w.bj_app.count(),
        before,
        "no write reached the old home while frozen"
    );

    // Frozen past the deadline: 503 with Retry-After.
    set_shard(&w.store, 1, "shanghai", ShardState::Frozen).await;
    eventually("the second freeze to be seen", WAIT, || async {
        let a = send(&c, "GET", w.sh.http, "/", &[("X-City-Id", "010")], "").await;
        (a.seen().headers["x-ezone-epoch"] == "4").then_some(())
    })
    .await;
    let a = send(
        &c,
        "POST",
        w.sh.http,
        "/orders",
        &[("X-City-Id", "010")],
        "x",
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.headers.contains_key("retry-after"));
    let m = send(&c, "GET", w.sh.admin, "/metrics", &[], "")
        .await
        .text();
    assert!(
        m.contains("ezone_router_hold_outcomes_total{outcome=\"deadline\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_write_the_fence_refused_is_resent_to_the_new_home_after_the_flip() {
    let w = world("write_hold_ms = 1500", "[limits]\nreplay_body_bytes = 16").await;
    let c = client();
    // Beijing's database fence is closed for a move of shard 1 that the
    // router has not seen yet: a write it sends there is refused.
    w.bj_app.set_fenced(true);
    let write = spawn_order(w.bj.http);
    eventually("the fence to refuse the write", WAIT, || async {
        (w.bj_app.refused() == 1).then_some(())
    })
    .await;
    // Not failed: it waits for the move, and is held while the shard is frozen.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!write.is_finished(), "the refused write must wait");
    set_shard(&w.store, 1, "beijing", ShardState::Frozen).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!write.is_finished(), "the refused write must be held");
    set_shard(&w.store, 1, "shanghai", ShardState::Active).await;
    let a = write.await.expect("join");
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.seen();
    assert_eq!(seen.upstream, "shanghai-app");
    assert_eq!(seen.body_bytes, 7, "the same body, sent again");
    assert_eq!(seen.headers["x-ezone-epoch"], "3");
    assert_eq!(w.bj_app.refused(), 1, "sent to the old home once");
    let m = send(&c, "GET", w.bj.admin, "/metrics", &[], "")
        .await
        .text();
    assert!(
        m.contains("ezone_router_fenced_writes_total{outcome=\"resent\"} 1"),
        "{m}"
    );

    // A body over limits.replay_body_bytes streams, so it cannot be sent
    // again: the refusal reaches the client at once.
    w.sh_app.set_fenced(true);
    let long = "a body longer than sixteen bytes";
    let a = send(
        &c,
        "POST",
        w.sh.http,
        "/orders",
        &[("X-City-Id", "010")],
        long,
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert_eq!(a.headers["x-ezone-fenced"], "1");
    assert_eq!(w.sh_app.refused(), 1);

    // A short one while no move comes (a stale router, a fence left
    // closed): refused, then answered 503 with Retry-After after the hold
    // deadline, still marked as fenced.
    let a = send(
        &c,
        "POST",
        w.sh.http,
        "/orders",
        &[("X-City-Id", "010")],
        "x",
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.headers.contains_key("retry-after"));
    assert_eq!(a.headers["x-ezone-fenced"], "1");
    assert!(
        a.text().contains("refused the write for shard 1"),
        "{}",
        a.text()
    );
    assert_eq!(w.sh_app.refused(), 2, "not sent again without a move");
    let m = send(&c, "GET", w.sh.admin, "/metrics", &[], "")
        .await
        .text();
    assert!(
        m.contains("ezone_router_fenced_writes_total{outcome=\"refused\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn with_a_peer_secret_only_routers_are_believed() {
    let w = world("", "").await;
    let c = client();
    // Routers still forward to each other: a Shanghai city entering Beijing.
    let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "021")], "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.seen();
    assert_eq!(seen.upstream, "shanghai-app");
    assert!(
        !seen.headers.contains_key("x-ezone-peer") && !seen.headers.contains_key("x-ezone-hop"),
        "no upstream sees the secret or the hop list: {:?}",
        seen.headers
    );
    // A client posing as a router: its hop list would make this a loop
    // (508) if it were believed; it is dropped like any X-Ezone-* it sends.
    let forged = [
        ("X-City-Id", "010"),
        ("X-Ezone-Hop", "beijing"),
        ("X-Ezone-Peer", "a guess"),
        ("X-Forwarded-Proto", "https"),
    ];
    let a = send(&c, "GET", w.bj.http, "/", &forged, "").await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = a.seen();
    assert_eq!(seen.upstream, "beijing-app");
    assert_eq!(
        seen.headers["x-forwarded-proto"], "http",
        "a client's is replaced"
    );
    assert!(!seen.headers.contains_key("x-ezone-peer"));
}

#[tokio::test]
async fn a_loop_between_disagreeing_routers_is_cut() {
    let app = Upstream::start("app").await;
    let (p1, p2) = (free_port().expect("port"), free_port().expect("port"));
    let dir = tempfile::tempdir().expect("tempdir");
    // Each router's file says shard 1 lives at the other site.
    let mut files = Vec::new();
    for (i, home) in ["shanghai", "beijing"].iter().enumerate() {
        let mut t = starter(&["beijing", "shanghai"], 1);
        t.sites.get_mut("beijing").expect("bj").router = format!("127.0.0.1:{p1}");
        t.sites.get_mut("shanghai").expect("sh").router = format!("127.0.0.1:{p2}");
        for s in t.sites.values_mut() {
            s.upstreams = vec![app.addr.to_string()];
        }
        t.shards.get_mut(&1).expect("shard").home = home.to_string();
        let path = dir.path().join(format!("t{i}.json"));
        let doc = ezone_topology::doc::TopologyDoc::from(&t);
        std::fs::write(&path, serde_json::to_string(&doc).expect("json")).expect("write");
        files.push(path);
    }
    let a_src = format!("file = {:?}", files[0].display().to_string());
    let b_src = format!("file = {:?}", files[1].display().to_string());
    let a = RouterProc::start(&router_toml("beijing", p1, &a_src, "", ""));
    let _b = RouterProc::start(&router_toml("shanghai", p2, &b_src, "", ""));
    let c = client();
    let ans = eventually("an answer", WAIT, || async {
        let r = send(&c, "GET", a.http, "/", &[("X-City-Id", "010")], "").await;
        (r.status != 503).then_some(r)
    })
    .await;
    assert_eq!(ans.status, 508, "{}", ans.text());
    assert!(ans.text().contains("loop"), "{}", ans.text());
    assert_eq!(
        app.count(),
        0,
        "a looping request never reaches an upstream"
    );
}

#[tokio::test]
async fn bad_input_is_refused_without_touching_an_upstream() {
    let w = world(
        "",
        "[limits]\nmax_header_bytes = 4096\nmax_body_bytes = 1000",
    )
    .await;
    let c = client();
    let before = w.bj_app.count();
    let big = "x".repeat(8000);
    // Oversized headers: 431, naming the limit.
    let req = http::Request::get(format!("http://{}/", w.bj.http))
        .header("X-City-Id", "010")
        .header("X-Big", big.as_str())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("req");
    let r = c.request(req).await.expect("an answer");
    assert_eq!(r.status().as_u16(), 431);
    // A declared body over the limit: 413 at once.
    let a = send(
        &c,
        "POST",
        w.bj.http,
        "/",
        &[("X-City-Id", "010")],
        vec![b'a'; 2000],
    )
    .await;
    assert_eq!(a.status, 413, "{}", a.text());
    // Garbage on the wire: a 4xx, and the router keeps serving.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(w.bj.http)
        .await
        .expect("connect");
    s.write_all(b"GARBAGE\x00\x01 / HTTP/9.9\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer")
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || head.starts_with("HTTP/1.1 4"), "{head}");
    assert_eq!(w.bj_app.count(), before, "nothing reached the upstream");
    let a = send(&c, "GET", w.bj.http, "/", &[("X-City-Id", "010")], "").await;
    assert_eq!(a.status, 200);
}
