//! `ezone replicator` end to end: the real binary, one per site, in the lab
//! (etcd, two Postgres 15 clusters, a 30 ms WAN through the fault proxy).
//! Writes at both sites converge; a replicator killed with -9 and restarted
//! resumes with nothing lost or doubled; a WAN partition heals and converges.
//! The admin endpoints along the way: `/healthz`, `/readyz` (ready once
//! streaming, not ready while the source is cut off, `?max_lag=`), and
//! `/metrics` as strict OpenMetrics.

use std::time::Duration;

use ezone_chaos::lab::{Lab, LabSpec};
use ezone_chaos::postgres::PgCluster;
use ezone_replicator::metrics::lint;
use ezone_tests::Configured;
use ezone_topology::starter::starter;
use ezone_topology::{EtcdStore, TopologyStore};

const DB: &str = "ezone";

struct Replicator {
    /// Killed when dropped.
    proc: Configured,
    admin: std::net::SocketAddr,
}

impl Replicator {
    /// The process's async runtime workers: tokio (1.5x) names each
    /// `tokio-rt-worker` (its blocking threads have another name).
    fn runtime_workers(&self) -> usize {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.proc.child.id()))
            .expect("the replicator's threads");
        tasks
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "tokio-rt-worker")
            })
            .count()
    }
}

fn replicator(lab: &Lab, site: &str) -> Replicator {
    replicator_with(lab, site, "")
}

/// [`replicator`] with more top-level settings (`key = value` lines).
fn replicator_with(lab: &Lab, site: &str, extra: &str) -> Replicator {
    let other = if site == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    // The other site's Postgres as reached from here: across the WAN.
    let source = lab.wan_dsn(other, site, DB).expect("wan dsn");
    let etcd = lab.etcd_options();
    let etcd_tls = match &etcd.tls {
        Some(tls) => format!(
            "etcd_tls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?} }}\n",
            tls.ca_file,
            tls.cert_file.as_ref().expect("a client certificate"),
            tls.key_file.as_ref().expect("its key")
        ),
        None => String::new(),
    };
    let cfg = format!(
        "site = \"{site}\"\ntables = [\"public.orders\"]\n{extra}\n[topology]\netcd = [\"{}\"]\n{etcd_tls}[sources.{other}]\ndsn = \"{source}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        etcd.endpoints[0]
    );
    let proc = Configured::start(&["replicator"], "replicator.toml", &cfg);
    assert!(
        proc.ready.to_string().contains("->"),
        "replicator did not start: {}",
        proc.ready
    );
    let admin = proc.addr("admin").expect("admin address");
    Replicator { proc, admin }
}

/// The topology of beijing and shanghai (the lab's Postgres as their DSNs)
/// in the lab's etcd, and an `orders` table at both; the store and the
/// topology written.
async fn beijing_and_shanghai(lab: &Lab) -> (EtcdStore, ezone_topology::Topology) {
    let mut t = starter(&["beijing", "shanghai"], 2);
    for name in ["beijing", "shanghai"] {
        let pg = lab.postgres(name).expect("site's Postgres");
        t.sites.get_mut(name).expect("site").postgres = pg.dsn(DB);
        create_orders(pg).await;
    }
    let store = EtcdStore::connect_with(&lab.etcd_options(), "/ezone")
        .await
        .expect("etcd");
    store.init(&t, false).await.expect("topology");
    (store, t)
}

async fn create_orders(pg: &PgCluster) {
    q(
        pg,
        "CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, note text)",
    )
    .await;
}

async fn q(pg: &PgCluster, sql: &str) -> String {
    pg.psql_db(DB, sql).await.expect("psql").trim().to_string()
}

async fn checksum(pg: &PgCluster) -> String {
    q(pg, "SELECT count(*) || ':' || coalesce(md5(string_agg(o::text, ',' ORDER BY id)), '') FROM orders o").await
}

async fn converge(a: &PgCluster, b: &PgCluster, want_rows: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let (x, y) = (checksum(a).await, checksum(b).await);
        if x == y && x.starts_with(&format!("{want_rows}:")) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sites did not converge: {x} vs {y} (want {want_rows} rows)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_slots(pgs: [&PgCluster; 2]) {
    for pg in pgs {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while q(pg, "SELECT count(*) FROM pg_replication_slots WHERE active").await != "1" {
            assert!(
                tokio::time::Instant::now() < deadline,
                "slot never became active"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn replicators_converge_through_kill_and_partition() {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let (a, b) = (
        lab.postgres("beijing").expect("bj"),
        lab.postgres("shanghai").expect("sh"),
    );
    beijing_and_shanghai(&lab).await;
    let bj = replicator(&lab, "beijing");
    let sh = replicator_with(&lab, "shanghai", "worker_threads = 3");
    wait_slots([a, b]).await;
    // The runtime is as big as the config says: one thread by default.
    assert_eq!(bj.runtime_workers(), 1);
    assert_eq!(sh.runtime_workers(), 3);

    // The admin endpoints: alive, ready once its link streams, and a lag
    // bound a caught-up link meets.
    let h = get(bj.admin, "/healthz").await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = until_status(bj.admin, "/readyz", 200, Duration::from_secs(30)).await;
    assert!(r.body.starts_with("ready\n"), "{}", r.body);
    assert!(
        r.body.contains("shanghai->beijing: streaming"),
        "{}",
        r.body
    );
    until_status(sh.admin, "/readyz", 200, Duration::from_secs(30)).await;
    until_status(bj.admin, "/readyz?max_lag=1s", 200, Duration::from_secs(30)).await;
    let bad = get(bj.admin, "/readyz?max_lag=soon").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(
        bad.body.contains("max_lag=\"soon\" is not a duration"),
        "{}",
        bad.body
    );
    let nf = get(bj.admin, "/status").await;
    assert_eq!(nf.status, 404, "{}", nf.body);
    for endpoint in ["/metrics", "/healthz", "/readyz"] {
        assert!(nf.body.contains(endpoint), "{}", nf.body);
    }

    for i in 0..100 {
        q(a, &format!("INSERT INTO orders VALUES ({i}, '010', 'bj')")).await;
        q(
            b,
            &format!("INSERT INTO orders VALUES ({}, '021', 'sh')", 10_000 + i),
        )
        .await;
    }
    converge(a, b, 200).await;

    // kill -9 the shanghai replicator while beijing keeps writing; restart it.
    drop(sh);
    for i in 100..200 {
        q(a, &format!("INSERT INTO orders VALUES ({i}, '010', 'bj')")).await;
    }
    let _sh = replicator(&lab, "shanghai");
    converge(a, b, 300).await;

    // Partition the WAN both ways, write at both sites, heal.
    let links = ["beijing->shanghai", "shanghai->beijing"].map(|n| lab.link(n).expect("wan link"));
    for l in &links {
        l.partition();
    }
    for i in 200..250 {
        q(a, &format!("INSERT INTO orders VALUES ({i}, '010', 'bj')")).await;
        q(
            b,
            &format!("INSERT INTO orders VALUES ({}, '021', 'sh')", 10_000 + i),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ne!(
        checksum(a).await,
        checksum(b).await,
        "a partition carries nothing"
    );
    // Cut off from its source, the link is not ready (the source has said
    // nothing for more than 10 s; later the stream times out and restarts),
    // and /readyz says which link and why.
    let r = until_status(bj.admin, "/readyz", 503, Duration::from_secs(45)).await;
    assert!(
        r.body.starts_with("not ready: 1 of 1 links\n"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("shanghai->beijing: streaming, but the source has said nothing for")
            || r.body.contains("shanghai->beijing: not streaming"),
        "{}",
        r.body
    );
    assert_eq!(get(bj.admin, "/readyz?max_lag=1h").await.status, 503);
    assert_eq!(get(bj.admin, "/healthz").await.status, 200);
    for l in &links {
        l.heal();
    }
    converge(a, b, 400).await;
    until_status(bj.admin, "/readyz", 200, Duration::from_secs(60)).await;
    for pg in [a, b] {
        assert_eq!(
            q(pg, "SELECT count(*) FROM ezone_replication.conflicts").await,
            "0"
        );
    }
    // Metrics: the link into beijing applied shanghai's rows, is caught up
    // (lag 0 once a keepalive arrives between transactions), and its slot's
    // retained WAL is known.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = metrics(bj.admin).await;
        let caught_up = m.contains("ezone_replicator_lag_bytes{link=\"shanghai->beijing\"} 0\n");
        let retained_known =
            !m.contains("ezone_replicator_slot_retained_wal_bytes{link=\"shanghai->beijing\"} -1");
        if caught_up && retained_known {
            assert!(
                m.contains("ezone_replicator_applied_rows_total{link=\"shanghai->beijing\"} 150"),
                "{m}"
            );
            // Batched: at least one target transaction, at most one per row.
            let batches: u64 = m
                .lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "ezone_replicator_applied_batches_total{link=\"shanghai->beijing\"} ",
                    )
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no batch count in {m}"));
            assert!((1..=150).contains(&batches), "{batches} batches: {m}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never showed caught up: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The scrape as a scraper sees it: OpenMetrics, strictly; counters
    // `_total`; no precomputed rates; the link's state.
    let m = get(bj.admin, "/metrics").await;
    assert_eq!(m.status, 200);
    lint::check_content_type(&m.content_type).unwrap_or_else(|e| panic!("{e}"));
    let e = lint::check(&m.body).unwrap_or_else(|e| panic!("{e}"));
    let link = [("link", "shanghai->beijing")];
    assert_eq!(
        e.value("ezone_replicator_applied_rows_total", &link),
        Some(150.0)
    );
    assert_eq!(e.value("ezone_replicator_streaming", &link), Some(1.0));
    for f in e.families.values() {
        if f.kind == "counter" {
            assert!(
                f.samples.iter().all(|s| s.name.ends_with("_total")),
                "{f:?}"
            );
        }
    }
    drop(bj);
}

/// An answer from an admin endpoint.
struct Got {
    status: u16,
    content_type: String,
    body: String,
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Got {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Got {
        status,
        content_type,
        body: body.to_string(),
    }
}

/// A definite error on a link (schema drift: a column the target lacks)
/// stops that link, not the process: the replicator stays up, says which
/// link stopped and why (/readyz, /metrics), and once an operator fixes the
/// cause the link tries again by itself and the row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definite_link_error_stops_the_link_not_the_process() {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let (a, b) = (
        lab.postgres("beijing").expect("bj"),
        lab.postgres("shanghai").expect("sh"),
    );
    beijing_and_shanghai(&lab).await;
    let sh = replicator_with(&lab, "shanghai", "stopped_link_retry = \"1s\"");
    until_status(sh.admin, "/readyz", 200, Duration::from_secs(30)).await;
    q(a, "INSERT INTO orders VALUES (1, '010', 'before')").await;
    until_rows(b, "1").await;

    // Beijing's table gains a column shanghai's lacks: drift.
    q(a, "ALTER TABLE orders ADD COLUMN tip bigint").await;
    q(a, "INSERT INTO orders VALUES (2, '010', 'drift', 5)").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(sh.admin, "/readyz").await;
        let m = metrics(sh.admin).await;
        if r.status == 503
            && r.body.contains("beijing->shanghai: stopped for good")
            && r.body.contains("tip")
            && m.contains("ezone_replicator_link_stopped{link=\"beijing->shanghai\"} 1")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the link did not report itself stopped: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The operator's view names the stopped link and why.
    let out = std::process::Command::new(ezone_tests::ezone_bin())
        .arg("status")
        .args(lab.etcd_cli_args())
        .arg("--replicator-admin")
        .arg(format!("shanghai={}", sh.admin))
        .output()
        .expect("ezone status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "replicator NOT READY (/readyz answered 503: beijing->shanghai: stopped for good"
        ) && text.contains("tip"),
        "{text}"
    );
    // The process is up all along.
    assert_eq!(get(sh.admin, "/healthz").await.status, 200);
    assert_eq!(
        q(b, "SELECT count(*) FROM orders").await,
        "1",
        "nothing half-applied"
    );

    // The operator adds the column at shanghai: the link picks it up.
    q(b, "ALTER TABLE orders ADD COLUMN tip bigint").await;
    until_rows(b, "2").await;
    assert_eq!(q(b, "SELECT tip FROM orders WHERE id = 2").await, "5");
    until_status(sh.admin, "/readyz", 200, Duration::from_secs(30)).await;
    assert!(
        metrics(sh.admin)
            .await
            .contains("ezone_replicator_link_stopped{link=\"beijing->shanghai\"} 0"),
        "the link no longer counts as stopped"
    );
}

/// The replicator's links follow the topology's sites: a site added while
/// it runs gets its link (its rows arrive), a site removed loses it; no
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_added_to_the_topology_gets_a_link_without_a_restart() {
    let lab = Lab::start(LabSpec::new(&["beijing", "shanghai", "shenzhen"]))
        .await
        .expect("lab");
    let (a, b, c) = (
        lab.postgres("beijing").expect("bj"),
        lab.postgres("shanghai").expect("sh"),
        lab.postgres("shenzhen").expect("sz"),
    );
    let (store, two) = beijing_and_shanghai(&lab).await;
    create_orders(c).await;
    let sh = replicator_with(&lab, "shanghai", "");
    let r = until_status(sh.admin, "/readyz", 200, Duration::from_secs(30)).await;
    assert!(!r.body.contains("shenzhen"), "{}", r.body);

    // Shenzhen joins (a site with no shards yet).
    let mut three = two.clone();
    let mut sz = two.sites["beijing"].clone();
    sz.name = "shenzhen".into();
    sz.postgres = c.dsn(DB);
    sz.router = "127.0.0.1:1".into();
    sz.more_routers = vec![];
    three.sites.insert("shenzhen".into(), sz);
    store.init(&three, true).await.expect("add shenzhen");
    q(
        c,
        "INSERT INTO orders VALUES (7, '0755', 'written at shenzhen')",
    )
    .await;
    until_rows(b, "1").await;
    assert_eq!(
        q(b, "SELECT note FROM orders WHERE id = 7").await,
        "written at shenzhen"
    );
    let r = until_status(sh.admin, "/readyz", 200, Duration::from_secs(30)).await;
    assert!(
        r.body.contains("shenzhen->shanghai: streaming"),
        "{}",
        r.body
    );
    assert!(
        metrics(sh.admin)
            .await
            .contains("ezone_replicator_streaming{link=\"shenzhen->shanghai\"} 1"),
        "the new link is on /metrics"
    );

    // Shenzhen leaves: its link stops and is no longer reported.
    store.init(&two, true).await.expect("remove shenzhen");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = get(sh.admin, "/readyz").await;
        if r.status == 200 && !r.body.contains("shenzhen") {
            assert!(
                r.body.contains("beijing->shanghai: streaming"),
                "{}",
                r.body
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "shenzhen's link is still reported: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!metrics(sh.admin).await.contains("shenzhen"));
    // The process still replicates what it should.
    q(
        a,
        "INSERT INTO orders VALUES (8, '010', 'written at beijing')",
    )
    .await;
    until_rows(b, "2").await;
}

async fn until_rows(pg: &PgCluster, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while q(pg, "SELECT count(*) FROM orders").await != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rows, want {want}",
            q(pg, "SELECT count(*) FROM orders").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `path` again and again until it answers `status`.
async fn until_status(
    addr: std::net::SocketAddr,
    path: &str,
    status: u16,
    within: Duration,
) -> Got {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = get(addr, path).await;
        if got.status == status {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} did not answer {status} within {within:?}: {} {}",
            got.status,
            got.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    get(addr, "/metrics").await.body
}
