//! `ezone replicator` end to end: the real binary, one per site, in the lab
//! (etcd, two Postgres 15 clusters, a 30 ms WAN through the fault proxy).
//! Writes at both sites converge; a replicator killed with -9 and restarted
//! resumes with nothing lost or doubled; a WAN partition heals and converges.

use std::time::Duration;

use ezone_chaos::lab::{Lab, LabSpec};
use ezone_chaos::postgres::PgCluster;
use ezone_tests::Configured;
use ezone_topology::starter::starter;
use ezone_topology::{EtcdStore, TopologyStore};

const DB: &str = "ezone";

struct Replicator {
    /// Killed when dropped.
    _proc: Configured,
    admin: std::net::SocketAddr,
}

fn replicator(lab: &Lab, site: &str) -> Replicator {
    let other = if site == "beijing" {
        "shanghai"
    } else {
        "beijing"
    };
    // The other site's Postgres as reached from here: across the WAN.
    let source = lab.wan_dsn(other, site, DB).expect("wan dsn");
    let cfg = format!(
        "site = \"{site}\"\ntables = [\"public.orders\"]\n[topology]\netcd = [\"{}\"]\n[sources.{other}]\ndsn = \"{source}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        lab.etcd().client_urls()[0]
    );
    let proc = Configured::start(&["replicator"], "replicator.toml", &cfg);
    assert!(
        proc.ready.to_string().contains("->"),
        "replicator did not start: {}",
        proc.ready
    );
    let admin = proc.addr("admin").expect("admin address");
    Replicator { _proc: proc, admin }
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
    let mut t = starter(&["beijing", "shanghai"], 2);
    for (name, pg) in [("beijing", a), ("shanghai", b)] {
        t.sites.get_mut(name).expect("site").postgres = pg.dsn(DB);
    }
    let store = EtcdStore::connect(&lab.etcd().client_urls(), "/ezone")
        .await
        .expect("etcd");
    store.init(&t, false).await.expect("topology");
    for pg in [a, b] {
        q(
            pg,
            "CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL, note text)",
        )
        .await;
    }
    let bj = replicator(&lab, "beijing");
    let sh = replicator(&lab, "shanghai");
    wait_slots([a, b]).await;

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
    for l in &links {
        l.heal();
    }
    converge(a, b, 400).await;
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
    drop(bj);
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}
