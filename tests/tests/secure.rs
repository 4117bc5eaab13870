//! The whole system with every link secured, as it should run across a WAN:
//! etcd serves only TLS with client certificates, each site's Postgres takes
//! TCP only over TLS with a client certificate (and a password the processes
//! read from a password file), and the routers forward to each other over
//! mutual TLS. Traffic flows through both routers, a planned switchover
//! runs, the sites converge; then, read from the servers themselves:
//!
//! - every connection each Postgres has from a client (the order services'
//!   pools, the replicators' applies and fence keepers, the walsenders of
//!   the links) is encrypted (`pg_stat_ssl`);
//! - a client without a certificate is refused by etcd, by Postgres and by
//!   a router's peer listener;
//! - nothing in etcd holds the password.

use std::time::Duration;

use ezone_chaos::ensemble::{Ensemble, EnsembleSpec};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_tests::ezone_bin;
use ezone_tests::router::orders_through_every_router;
use ezone_topology::TopologyStore;

/// `ezone ARGS` against the ensemble's etcd (TLS flags included).
async fn ezone(ens: &Ensemble, args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(ezone_bin())
            .args(args)
            .args(ens.etcd_cli_args())
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("finished within 90 s")
    .expect("run ezone");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "$ ezone {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_link_is_encrypted_and_an_unknown_client_is_refused() {
    let password = format!("ez-secure-{}", std::process::id());
    let lab = Lab::start(LabSpec {
        pg_password: Some(password.clone()),
        etcd_tls: true,
        ..LabSpec::default()
    })
    .await
    .expect("lab");
    assert!(
        lab.etcd()
            .client_urls()
            .iter()
            .all(|u| u.starts_with("https://")),
        "{:?}",
        lab.etcd().client_urls()
    );
    let ens = Ensemble::start(lab, EnsembleSpec::new(ezone_bin()))
        .await
        .expect("ensemble");

    // Traffic through both routers for a city of each site: half of it
    // crosses to the other site's router.
    orders_through_every_router(&ens, "secure").await;

    // A planned switchover through the CLI, over etcd's TLS.
    let store = ens.store().await.expect("store over TLS");
    let t0 = store.load().await.expect("load").topology;
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = t0.routing.cities[&city].to_string();
    let (code, out) = ezone(&ens, &["failover", "shard", &shard, "--to", "shanghai"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = ezone(&ens, &["status"]).await;
    assert_eq!(code, 0, "{out}");
    ens.wait_converged(Duration::from_secs(60))
        .await
        .expect("the sites converge");

    // Every client connection each Postgres has is encrypted, and there are
    // the ones we expect (orders, applies, walsenders).
    for site in ["beijing", "shanghai"] {
        let dsn = ens.dsn(site).expect("dsn");
        let c = ezone_pg::connect_spawned(&dsn).await.expect("connect");
        let rows = c
            .query(
                "SELECT a.application_name, a.backend_type, s.ssl \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.client_port IS NOT NULL AND a.pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl");
        let seen: Vec<(String, String, bool)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert!(
            seen.iter().all(|(_, _, ssl)| *ssl),
            "{site}: a plaintext connection: {seen:?}"
        );
        assert!(
            seen.iter().any(|(_, kind, _)| kind == "walsender"),
            "{site}: the other site's link streams from here: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|(app, _, _)| app.starts_with("ezone-orders")),
            "{site}: the order service's pool: {seen:?}"
        );
    }

    // A client without a certificate, at each of the three.
    let plain_etcd = ezone_topology::store::EtcdOptions::new(&ens.etcd_endpoints());
    match ezone_topology::EtcdStore::connect_with(&plain_etcd, "/ezone").await {
        Ok(s) => {
            let e = s
                .load()
                .await
                .expect_err("etcd refuses a client without a certificate");
            assert!(!e.is_retryable(), "{e}");
        }
        Err(e) => assert!(!e.is_retryable(), "{e}"),
    }
    let anonymous_pg: String = ens
        .dsn("beijing")
        .expect("dsn")
        .split_whitespace()
        .filter(|kv| !kv.starts_with("sslcert=") && !kv.starts_with("sslkey="))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        ezone_pg::connect_spawned(&anonymous_pg).await.is_err(),
        "Postgres refuses a client without a certificate"
    );

    // A router's peer listener (what the topology names for other sites'
    // routers) takes only TLS with a router certificate: a plain HTTP
    // request there gets no answer.
    let peer = t0.sites["beijing"].router.clone();
    let answer = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&peer)
            .await
            .expect("the peer listener accepts TCP");
        conn.write_all(b"GET /orders HTTP/1.1\r\nhost: x\r\nx-ezone-hop: shanghai\r\n\r\n")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).into_owned()
    };
    assert!(
        !answer.starts_with("HTTP/"),
        "a plain request to the peer listener {peer} was answered: {answer}"
    );

    // Nothing in etcd holds the password.
    let t = store.load().await.expect("load").topology;
    let doc = serde_json::to_string(&ezone_topology::doc::TopologyDoc::from(&*t)).expect("json");
    assert!(!doc.contains(&password), "{doc}");

    ens.teardown().await.expect("teardown");
}
