//! `ezone orders` end to end on a real Postgres: install (twice), serve, the
//! HTTP API with the fence open, closed and without a mapping, a graceful
//! stop, and the workload generator against one service (no router, so the
//! router's headers are passed by hand) with every acknowledged order checked
//! in the table.

use std::collections::HashMap;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ezone_chaos::postgres::PgCluster;
use ezone_orders::workload::{Workload, WorkloadSpec};
use ezone_replicator::metrics::lint;
use ezone_tests::router::{client, send};
use ezone_tests::{ezone_bin, Configured};

const DB: &str = "ezone";

/// An `ezone orders serve` process; killed when dropped.
struct Service {
    proc: Configured,
    addr: SocketAddr,
}

impl Service {
    fn start(site: &str, dsn: &str) -> Service {
        let proc = Configured::start(
            &["orders", "serve"],
            "orders.toml",
            &format!("site = \"{site}\"\nlisten = \"127.0.0.1:0\"\npostgres = \"{dsn}\"\npool_size = 4\n"),
        );
        assert_eq!(proc.ready["site"], site, "{}", proc.ready);
        let addr = proc.addr("listen").expect("listen address");
        Service { proc, addr }
    }
}

fn install(dsn: &str) -> String {
    let out = Command::new(ezone_bin())
        .args(["orders", "install", "--dsn", dsn])
        .output()
        .expect("run ezone orders install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn q(pg: &PgCluster, sql: &str) -> String {
    pg.psql_db(DB, sql).await.expect("psql").trim().to_string()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

#[tokio::test]
async fn install_serve_and_the_api_under_the_fence() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    let dsn = pg.dsn(DB);

    let first = install(&dsn);
    assert!(first.contains("public.orders created"), "{first}");
    let second = install(&dsn);
    assert!(second.contains("already there"), "{second}");
    assert_eq!(first.lines().count(), 1);
    assert_eq!(
        q(&pg, "SELECT count(*) FROM pg_trigger WHERE tgname = 'ezone_fence' AND tgrelid = 'public.orders'::regclass").await,
        "1"
    );

    // The fence as `ezone fence sync` would leave it for beijing: shard 1
    // (city 010) is ours, shard 2 (city 021) is shanghai's; a lease that
    // never lapses (as with `fence_lease_ms = 0`).
    q(
        &pg,
        "INSERT INTO ezone_fence.cities VALUES ('010', 1), ('021', 2); \
         INSERT INTO ezone_fence.shards (shard, writable, epoch, home) VALUES (1, true, 5, 'beijing'), (2, false, 6, 'shanghai'); \
         INSERT INTO ezone_fence.lease (valid_until) VALUES ('infinity')",
    )
    .await;

    let svc = Service::start("beijing", &dsn);
    let c = client();
    let a = svc.addr;
    let routed = |city: &'static str, shard: &'static str| {
        vec![
            ("x-city-id", city),
            ("x-ezone-shard", shard),
            ("x-ezone-epoch", "7"),
            ("x-ezone-site", "beijing"),
            ("content-type", "application/json"),
        ]
    };
    let order = r#"{"id":"o-1","user":"u1","item":"tea","amount_cents":250}"#;

    let r = send(&c, "GET", a, "/healthz", &[], "").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    assert_eq!(r.headers["x-ezone-served-by"], "beijing");
    // Ready: its pool runs SELECT 1.
    let r = send(&c, "GET", a, "/readyz", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().starts_with("ready: Postgres ran SELECT 1"),
        "{}",
        r.text()
    );

    // Created, with the router's stamp and the fence epoch.
    let r = send(&c, "POST", a, "/orders", &routed("010", "1"), order).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.headers["x-ezone-served-by"], "beijing");
    let row = json(&r.body);
    assert_eq!(row["id"], "o-1");
    assert_eq!(row["city"], "010");
    assert_eq!(row["user"], "u1");
    assert_eq!(row["amount_cents"], 250);
    assert_eq!(row["status"], "placed");
    assert_eq!(row["shard"], 1);
    assert_eq!(row["epoch"], 7);
    assert_eq!(row["site"], "beijing");
    assert_eq!(row["fence_epoch"], 5);
    assert_eq!(
        q(&pg, "SELECT city, user_id, item, amount_cents, shard, epoch, site, fence_epoch FROM orders WHERE id = 'o-1'").await,
        "010|u1|tea|250|1|7|beijing|5"
    );

    // The same order again: a retry, answered with the stored row.
    let r = send(&c, "POST", a, "/orders", &routed("010", "1"), order).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r.body), row);
    // The same id with other values: a conflict.
    let other = r#"{"id":"o-1","user":"u1","item":"tea","amount_cents":999}"#;
    let r = send(&c, "POST", a, "/orders", &routed("010", "1"), other).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(json(&r.body)["error"], "id_conflict");

    // PATCH and GET.
    let r = send(
        &c,
        "PATCH",
        a,
        "/orders/o-1",
        &routed("010", "1"),
        r#"{"status":"shipped"}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let patched = json(&r.body);
    assert_eq!(patched["status"], "shipped");
    assert_eq!(patched["fence_epoch"], 5);
    let r = send(&c, "GET", a, "/orders/o-1", &[], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(json(&r.body), patched);
    let r = send(&c, "GET", a, "/orders/nope", &[], "").await;
    assert_eq!(r.status, 404);
    let r = send(
        &c,
        "PATCH",
        a,
        "/orders/nope",
        &routed("010", "1"),
        r#"{"status":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 404);

    // Not through a router.
    let r = send(&c, "POST", a, "/orders", &[("x-city-id", "010")], order).await;
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("send writes through an ezone router"),
        "{}",
        r.text()
    );

    // Shanghai's shard: the fence refuses, nothing is written.
    let o2 = r#"{"id":"o-2","user":"u2","item":"rice","amount_cents":100}"#;
    let r = send(&c, "POST", a, "/orders", &routed("021", "2"), o2).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    // Tells a router the write committed nothing: it may send it again.
    assert_eq!(r.headers["x-ezone-fenced"], "1");
    let body = json(&r.body);
    assert_eq!(body["error"], "fenced");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not writable"),
        "{body}"
    );
    assert_eq!(
        q(&pg, "SELECT count(*) FROM orders WHERE id = 'o-2'").await,
        "0"
    );
    // A stale router that stamps our writable shard on shanghai's city is
    // refused too (the fence maps the city itself).
    let r = send(&c, "POST", a, "/orders", &routed("021", "1"), o2).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        q(&pg, "SELECT count(*) FROM orders WHERE id = 'o-2'").await,
        "0"
    );

    // A city the routing table does not know.
    let o3 = r#"{"id":"o-3","user":"u3","item":"duck","amount_cents":100}"#;
    let r = send(&c, "POST", a, "/orders", &routed("999", "1"), o3).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(json(&r.body)["error"], "unmapped_city");
    assert_eq!(q(&pg, "SELECT count(*) FROM orders").await, "1");

    let r = send(&c, "GET", a, "/metrics", &[], "").await;
    assert_eq!(r.status, 200);
    let ct = r.headers["content-type"].to_str().expect("content type");
    lint::check_content_type(ct).unwrap_or_else(|e| panic!("{e}"));
    let e = lint::check(&r.text()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        e.value(
            "ezone_orders_requests_total",
            &[("route", "readyz"), ("status", "200")]
        ),
        Some(1.0)
    );
    assert!(
        r.text().contains("ezone_orders_fence_refusals_total 1"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("route=\"place_order\",status=\"201\""),
        "{}",
        r.text()
    );

    // SIGTERM: a clean exit.
    let mut svc = svc;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(svc.proc.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = ezone_tests::eventually("orders serve to exit", Duration::from_secs(15), || {
        let s = svc.proc.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn workload_against_one_service_every_ack_is_stored() {
    let pg = PgCluster::start("shanghai").await.expect("pg");
    let dsn = pg.dsn(DB);
    install(&dsn);
    q(
        &pg,
        "INSERT INTO ezone_fence.cities VALUES ('021', 2), ('0571', 2), ('0512', 2); \
         INSERT INTO ezone_fence.shards (shard, writable, epoch, home) VALUES (2, true, 3, 'shanghai'); \
         INSERT INTO ezone_fence.lease (valid_until) VALUES ('infinity')",
    )
    .await;
    let svc = Service::start("shanghai", &dsn);

    let spec = WorkloadSpec {
        targets: vec![svc.addr],
        cities: vec!["021".into(), "0571".into(), "0512".into()],
        rate_per_sec: 500,
        concurrency: 16,
        retry_deadline: Duration::from_secs(10),
        seed: 7,
        id_prefix: "t-wl".into(),
        extra_headers: vec![
            ("x-ezone-shard".into(), "2".into()),
            ("x-ezone-epoch".into(), "3".into()),
        ],
        limit: Some(300),
        ..WorkloadSpec::default()
    };
    let w = Workload::start(spec.clone()).expect("valid spec");
    let h = w.finish().await;
    assert_eq!(h.outcomes.len(), 300);
    let failed: Vec<_> = h.failed().into_iter().map(|o| (&o.id, o.status)).collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(h.latencies().is_some());

    // Every acked order is in the table with its planned values, and the
    // service's answer is what was stored.
    let stored: HashMap<String, String> = q(
        &pg,
        "SELECT id, city || '|' || user_id || '|' || item || '|' || amount_cents || '|' || shard || '|' || epoch || '|' || site || '|' || fence_epoch FROM orders",
    )
    .await
    .lines()
    .filter_map(|l| l.split_once('|'))
    .map(|(id, rest)| (id.to_string(), rest.to_string()))
    .collect();
    assert_eq!(stored.len(), 300);
    for n in 0..300 {
        let p = spec.planned(n);
        let want = format!(
            "{}|{}|{}|{}|2|3|shanghai|3",
            p.city, p.user, p.item, p.amount_cents
        );
        assert_eq!(stored.get(&p.id), Some(&want), "order {n}");
    }
    for o in h.acked() {
        let body = o.body.as_ref().expect("acked with a row");
        assert_eq!(body["id"], o.id.as_str());
        assert_eq!(body["city"], o.city.as_str());
        assert_eq!(body["site"], "shanghai");
    }
}

/// Up without its Postgres: alive (`/healthz`), not ready (`/readyz` says why).
#[tokio::test]
async fn without_postgres_alive_but_not_ready() {
    // Port 9 on loopback: nothing listens, connections are refused at once.
    let svc = Service::start(
        "beijing",
        "host=127.0.0.1 port=9 user=postgres dbname=ezone",
    );
    let c = client();
    let r = send(&c, "GET", svc.addr, "/healthz", &[], "").await;
    assert_eq!((r.status, r.text().trim()), (200, "ok"));
    let r = send(&c, "GET", svc.addr, "/readyz", &[], "").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.text()
            .starts_with("not ready: Postgres cannot run SELECT 1: "),
        "{}",
        r.text()
    );
    let r = send(&c, "GET", svc.addr, "/metrics", &[], "").await;
    assert_eq!(r.status, 200);
    lint::check(&r.text()).unwrap_or_else(|e| panic!("{e}"));
}
