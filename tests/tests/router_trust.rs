//! Routers and their peers, end to end with real `ezone router` processes:
//! who is believed as a peer (only a router with the shared secret, and no
//! one by a router without one, which refuses to run beside other sites),
//! and a site with several routers, health-checked and balanced, so that one
//! of them down or hung does not cut the site off from the others' traffic.

use std::path::Path;
use std::time::Duration;

use ezone_chaos::ports::free_port;
use ezone_tests::router::{client, send, RouterProc};
use ezone_tests::upstream::Upstream;
use ezone_tests::{eventually, ezone_bin};
use ezone_topology::starter::starter;
use ezone_topology::Topology;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "ezone-test-peer-secret";

/// Writes `t` as a topology file at `path`.
fn write_topology(path: &Path, t: &Topology) {
    let doc = ezone_topology::doc::TopologyDoc::from(t);
    std::fs::write(path, serde_json::to_string(&doc).expect("json")).expect("write topology");
}

/// A router config for `site` on `port`, its topology from `file`, with
/// `routing` lines in its `[routing]` table.
fn config(site: &str, port: u16, file: &Path, routing: &str) -> String {
    format!(
        "site = \"{site}\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\n[topology]\nfile = {:?}\n\
         [upstream]\nhealth_interval_ms = 200\n[routing]\n{routing}\n",
        file.display().to_string()
    )
}

/// The router's metrics page.
async fn metrics(r: &RouterProc) -> String {
    send(&client(), "GET", r.admin, "/metrics", &[], "")
        .await
        .text()
}

#[tokio::test]
async fn a_router_with_peers_and_no_secret_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("topology.json");
    write_topology(&file, &starter(&["beijing", "shanghai"], 1));
    let port = free_port().expect("port");
    let cfg = dir.path().join("router.toml");
    std::fs::write(&cfg, config("beijing", port, &file, "")).expect("write config");
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(ezone_bin())
            .args(["router", "--config"])
            .arg(&cfg)
            .env("EZONE_LOG", "warn")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the router exits instead of serving")
    .expect("run ezone router");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not run: {err}");
    assert!(
        err.contains("routing.peer_secret") && err.contains("shanghai"),
        "the error names the setting and the peers: {err}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens"
    );
}

#[tokio::test]
async fn without_a_secret_no_client_is_believed_and_nothing_is_forwarded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("topology.json");
    let app = Upstream::start("beijing-app").await;
    let port = free_port().expect("port");
    // One site: the router may run without a secret.
    let mut t = starter(&["beijing"], 1);
    let bj = t.sites.get_mut("beijing").expect("site");
    bj.router = format!("127.0.0.1:{port}");
    bj.upstreams = vec![app.addr.to_string()];
    write_topology(&file, &t);
    let r = RouterProc::start_ready(&config("beijing", port, &file, "")).await;
    let c = client();
    let city = t.routing.cities.keys().next().expect("a city").clone();

    // A client posing as a router. Believed, its hop list would make this a
    // loop (508), or a wait for an epoch no one has (a 2 s hold), and its
    // X-Forwarded-Proto would reach the upstream.
    for hop in ["beijing", "shanghai@999"] {
        let forged = [
            ("X-City-Id", city.as_str()),
            ("X-Ezone-Hop", hop),
            ("X-Ezone-Shard", "1"),
            ("X-Ezone-Epoch", "999"),
            ("X-Ezone-Peer", "anything"),
            ("X-Forwarded-Proto", "https"),
        ];
        let a = send(&c, "GET", r.http, "/", &forged, "").await;
        assert_eq!(a.status, 200, "{}", a.text());
        let seen = a.seen();
        assert_eq!(seen.upstream, "beijing-app");
        assert_eq!(seen.headers["x-forwarded-proto"], "http", "{seen:?}");
        assert!(
            !seen.headers.contains_key("x-ezone-hop"),
            "a client's hop list is not carried on: {seen:?}"
        );
    }
    // A peer's health probe is a client's request like any other here.
    let probe = [
        ("X-City-Id", city.as_str()),
        ("X-Ezone-Probe", "1"),
        ("X-Ezone-Hop", "shanghai"),
    ];
    let a = send(&c, "GET", r.http, "/", &probe, "").await;
    assert_eq!(a.seen().upstream, "beijing-app");

    // The topology gains a site: this router cannot forward to it.
    let mut t2 = starter(&["beijing", "shanghai"], 1);
    for s in t2.sites.values_mut() {
        s.router = format!("127.0.0.1:{port}");
        s.upstreams = vec![app.addr.to_string()];
    }
    let (far_city, _) = t2
        .routing
        .cities
        .iter()
        .find(|(_, id)| t2.shards[id].home == "shanghai")
        .expect("a shanghai city");
    let far_city = far_city.clone();
    write_topology(&file, &t2);
    // (Until the new topology is read, the city is beijing's.)
    eventually("the new topology", WAIT, || async {
        let a = send(
            &c,
            "GET",
            r.http,
            "/",
            &[("X-City-Id", far_city.as_str())],
            "",
        )
        .await;
        (a.status == 503).then_some(a)
    })
    .await;
    let before = app.count();
    let a = send(
        &c,
        "POST",
        r.http,
        "/",
        &[("X-City-Id", far_city.as_str())],
        "{}",
    )
    .await;
    assert_eq!(a.status, 503, "{}", a.text());
    assert!(a.text().contains("routing.peer_secret"), "{}", a.text());
    assert_eq!(app.count(), before, "nothing reached an upstream");
    assert!(
        metrics(&r)
            .await
            .contains("ezone_router_rejected_total{reason=\"no_peer_secret\"}"),
        "counted"
    );
}

#[tokio::test]
async fn a_site_with_two_routers_stays_reachable_when_one_is_down_or_hung() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("topology.json");
    let bj_app = Upstream::start("beijing-app").await;
    let sh_app = Upstream::start("shanghai-app").await;
    let (bj, sh1, sh2) = (
        free_port().expect("port"),
        free_port().expect("port"),
        free_port().expect("port"),
    );
    let mut t = starter(&["beijing", "shanghai"], 1);
    let b = t.sites.get_mut("beijing").expect("bj");
    b.router = format!("127.0.0.1:{bj}");
    b.upstreams = vec![bj_app.addr.to_string()];
    let s = t.sites.get_mut("shanghai").expect("sh");
    s.router = format!("127.0.0.1:{sh1}");
    s.more_routers = vec![format!("127.0.0.1:{sh2}")];
    s.upstreams = vec![sh_app.addr.to_string()];
    write_topology(&file, &t);
    let city = t
        .routing
        .cities
        .iter()
        .find(|(_, id)| t.shards[id].home == "shanghai")
        .map(|(c, _)| c.clone())
        .expect("a shanghai city");
    let secret = format!("peer_secret = \"{SECRET}\"");
    let entry = RouterProc::start_ready(&config("beijing", bj, &file, &secret)).await;
    let mut first = RouterProc::start_ready(&config("shanghai", sh1, &file, &secret)).await;
    let second = RouterProc::start_ready(&config("shanghai", sh2, &file, &secret)).await;
    let c = client();
    let healthy = |port: u16, up: bool| {
        format!(
            "ezone_router_upstream_healthy{{site=\"shanghai\",endpoint=\"127.0.0.1:{port}\"}} {}",
            i64::from(up)
        )
    };
    // Writes for a shanghai city entering beijing, one attempt each.
    let writes = |n: usize, tag: &'static str| {
        let c = c.clone();
        let city = city.clone();
        let entry = entry.http;
        async move {
            for i in 0..n {
                let a = send(
                    &c,
                    "POST",
                    entry,
                    "/orders",
                    &[("X-City-Id", city.as_str())],
                    format!("{{\"id\":\"{tag}-{i}\"}}"),
                )
                .await;
                assert_eq!(a.status, 200, "{tag} write {i}: {}", a.text());
                assert_eq!(a.seen().upstream, "shanghai-app");
            }
        }
    };
    // Both routers are probed and both take traffic.
    eventually("both shanghai routers healthy", WAIT, || async {
        let m = metrics(&entry).await;
        (m.contains(&healthy(sh1, true)) && m.contains(&healthy(sh2, true))).then_some(())
    })
    .await;
    let before = (metrics(&first).await, metrics(&second).await);
    writes(40, "both").await;
    let forwarded = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("ezone_router_requests_total") && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let after = (metrics(&first).await, metrics(&second).await);
    assert!(
        forwarded(&after.0) > forwarded(&before.0) && forwarded(&after.1) > forwarded(&before.1),
        "both shanghai routers served some of the 40 writes"
    );

    // One hung (SIGSTOP): its connections accept but never answer. The
    // probe marks it down, and no write waits on it.
    let pid = nix::unistd::Pid::from_raw(first.proc.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).expect("stop");
    eventually("the hung router marked down", WAIT, || async {
        metrics(&entry)
            .await
            .contains(&healthy(sh1, false))
            .then_some(())
    })
    .await;
    writes(20, "hung").await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).expect("cont");
    eventually("the resumed router healthy again", WAIT, || async {
        metrics(&entry)
            .await
            .contains(&healthy(sh1, true))
            .then_some(())
    })
    .await;

    // One killed: at once, with no wait for a probe. A connect refused means
    // nothing was sent, so the write goes to the other router.
    first.proc.child.kill().expect("kill");
    let _ = first.proc.child.wait();
    writes(20, "killed").await;
    drop(second);
}
