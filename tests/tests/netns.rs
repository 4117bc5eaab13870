//! The whole system with each site a host of its own: every site's Postgres,
//! router, order service and replicator run in a network namespace of the
//! site's, on the site's own address; etcd and the fault proxy (the WAN)
//! live in this namespace. No forwarding between the sites' namespaces, so
//! whatever one site reaches of another it reaches across the WAN proxy,
//! with the WAN's latency, and a part that still assumed every process
//! shares 127.0.0.1 would find nothing there.
//!
//! Checked from the outside, not from ezone's own bookkeeping:
//! - each process runs in its site's namespace (`/proc/PID/ns/net`), and a
//!   site's namespace cannot reach the other site's Postgres directly, only
//!   through its WAN link;
//! - traffic through both routers (half of it crossing to the other site's
//!   router, over the WAN proxy's link in front of it) and a planned
//!   switchover through the CLI work;
//! - afterwards every order a client got an answer for is in the table at
//!   both sites, read straight from each Postgres;
//! - every client connection each Postgres has comes from the lab's
//!   addresses, never from loopback, and the other site's walsender
//!   connection comes from the WAN side.
//!
//! Needs root (namespaces); without it the test says so and passes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use ezone_chaos::ensemble::{Ensemble, EnsembleSpec};
use ezone_chaos::lab::{Lab, LabSpec, Role};
use ezone_chaos::netns::{netns_inode, Network};
use ezone_tests::router::{client, send};
use ezone_tests::{ezone_against, ezone_bin};
use ezone_topology::TopologyStore;

/// `pg_isready -h ADDR -p PORT` run inside namespace `ns`: its exit code
/// (0: accepting, 2: no response).
fn pg_isready_in(ns: &str, bin: &Path, addr: std::net::SocketAddr) -> i32 {
    let ip = ezone_chaos::netns::find_ip().expect("iproute2");
    let out = std::process::Command::new(ip)
        .args(["netns", "exec", ns])
        .arg(bin.join("pg_isready"))
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", "3"])
        .output()
        .expect("run pg_isready in the namespace");
    out.status.code().unwrap_or(-1)
}

/// POST an order `id` for `city` through `site`'s router: whether it was
/// acknowledged.
async fn order(ens: &Ensemble, via: &str, city: &str, id: &str) -> bool {
    let body = serde_json::json!({"id": id, "user": "u1", "item": "tea", "amount_cents": 100});
    let a = send(
        &client(),
        "POST",
        ens.router_http(via).expect("router"),
        "/orders",
        &[("x-city-id", city), ("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    a.status < 300
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_in_their_own_namespaces_serve_traffic_and_switch_over() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "note: sites_in_their_own_namespaces_serve_traffic_and_switch_over skipped: network \
             namespaces need root (run `make test` as root)"
        );
        return;
    }
    let lab = Lab::start(LabSpec {
        network: Network::Namespaces,
        ..LabSpec::default()
    })
    .await
    .expect("lab in namespaces");
    let names = lab.hosts().namespace_names();
    assert_eq!(names.len(), 2, "{names:?}");
    let wan = lab.hosts().wan().addr;
    assert!(!wan.is_loopback(), "{wan}");
    let ens = Ensemble::start(lab, EnsembleSpec::new(ezone_bin()))
        .await
        .expect("ensemble in namespaces");

    // Each process runs where it belongs: a site's parts in its namespace,
    // etcd and the proxy here.
    let here = netns_inode(Path::new("/proc/self/ns/net")).expect("own netns");
    let mut seen_roles = BTreeSet::new();
    for p in ens.state().processes {
        let inode = netns_inode(Path::new(&format!("/proc/{}/ns/net", p.record.pid)))
            .unwrap_or_else(|| panic!("{} (pid {}) is gone", p.record.name, p.record.pid));
        match &p.site {
            Some(site) => {
                let ns = Path::new("/run/netns").join(&names[site]);
                assert_eq!(
                    Some(inode),
                    netns_inode(&ns),
                    "{} runs outside {site}'s namespace",
                    p.record.name
                );
                seen_roles.insert(format!("{:?}", p.role));
            }
            None => assert_eq!(
                inode, here,
                "{} runs outside the WAN's namespace",
                p.record.name
            ),
        }
    }
    for role in [Role::Postgres, Role::Router, Role::Orders, Role::Replicator] {
        assert!(
            seen_roles.contains(&format!("{role:?}")),
            "{role:?} at no site: {seen_roles:?}"
        );
    }
    for site in ["beijing", "shanghai"] {
        let host = ens.lab().hosts().site(site).addr;
        assert!(!host.is_loopback(), "{site} at {host}");
        assert_eq!(ens.router_http(site).expect("router").ip(), host);
        assert_eq!(ens.orders_addr(site).expect("orders").ip(), host);
        assert_eq!(ens.lab().postgres(site).expect("pg").addr().ip(), host);
    }

    // From beijing's namespace: its own Postgres answers, shanghai's does
    // not directly, only through the WAN link beijing's replicator uses.
    let bin = ens
        .lab()
        .postgres("beijing")
        .expect("pg")
        .bin_dir()
        .to_path_buf();
    let own = ens.lab().postgres("beijing").expect("pg").addr();
    let other = ens.lab().postgres("shanghai").expect("pg").addr();
    let across = ens.lab().wan_addr("shanghai", "beijing").expect("link");
    assert_eq!(
        pg_isready_in(&names["beijing"], &bin, own),
        0,
        "own Postgres"
    );
    assert_eq!(
        pg_isready_in(&names["beijing"], &bin, other),
        2,
        "shanghai's Postgres must not be reachable from beijing except across the WAN"
    );
    assert_eq!(
        pg_isready_in(&names["beijing"], &bin, across),
        0,
        "WAN link"
    );

    // A request that crosses to the other site's router goes through the
    // WAN proxy's link in front of that router: the link carries it.
    let link = ens
        .router_link("shanghai")
        .expect("site")
        .expect("the in-process proxy's link");
    let before = link.stats().bytes_upstream;
    let city = ens.city_homed_at("shanghai").expect("a shanghai city");
    assert!(
        order(&ens, "beijing", &city, "netns-0").await,
        "order via beijing"
    );
    assert!(
        link.stats().bytes_upstream > before,
        "the request for a shanghai city did not cross the WAN link to shanghai's router"
    );

    // Traffic through both routers for a city of each site.
    let mut acked = vec!["netns-0".to_string()];
    let mut n = 0;
    for home in ["beijing", "shanghai"] {
        let city = ens.city_homed_at(home).expect("a city");
        for via in ["beijing", "shanghai"] {
            for _ in 0..5 {
                n += 1;
                let id = format!("netns-{n}");
                assert!(order(&ens, via, &city, &id).await, "order {id} via {via}");
                acked.push(id);
            }
        }
    }

    // A planned switchover through the CLI, from this namespace (the
    // operator's host), over etcd's TLS.
    let store = ens.store().await.expect("store");
    let t0 = store.load().await.expect("load").topology;
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = t0.routing.cities[&city].to_string();
    let out = ezone_against(
        &ens.etcd_cli_args(),
        &["failover", "shard", &shard, "--to", "shanghai"],
        "warn",
    )
    .await;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t1 = store.load().await.expect("load").topology;
    let moved = t0.routing.cities[&city];
    assert_eq!(t1.shards[&moved].home, "shanghai", "the shard moved");

    // The moved city's orders, through both routers, now land at shanghai.
    for via in ["beijing", "shanghai"] {
        for _ in 0..5 {
            n += 1;
            let id = format!("netns-{n}");
            assert!(order(&ens, via, &city, &id).await, "order {id} via {via}");
            acked.push(id);
        }
    }
    ens.wait_converged(Duration::from_secs(60))
        .await
        .expect("the sites converge");

    // Read from each site's Postgres: every acknowledged order is there,
    // and every client connection comes from the lab's addresses.
    for site in ["beijing", "shanghai"] {
        let own_addr = ens.lab().hosts().site(site).addr;
        let dsn = ens.dsn(site).expect("dsn");
        let c = ezone_pg::connect_spawned(&dsn).await.expect("connect");
        let rows = c
            .query("SELECT id FROM public.orders", &[])
            .await
            .expect("orders");
        let ids: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<&String> = acked.iter().filter(|id| !ids.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "{site} lacks acknowledged orders {missing:?}"
        );

        let rows = c
            .query(
                "SELECT host(client_addr), backend_type, application_name \
                 FROM pg_stat_activity \
                 WHERE client_addr IS NOT NULL AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_activity");
        let conns: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        for (addr, kind, app) in &conns {
            let ip: IpAddr = addr.parse().expect("an address");
            assert!(
                !ip.is_loopback(),
                "{site}: {kind} {app:?} connects over loopback: {conns:?}"
            );
        }
        let walsenders: Vec<&(String, String, String)> =
            conns.iter().filter(|(_, k, _)| k == "walsender").collect();
        assert!(!walsenders.is_empty(), "{site}: no walsender: {conns:?}");
        for (addr, _, _) in walsenders {
            // The proxy dials from this namespace's end of the site's veth.
            assert_ne!(
                addr,
                &own_addr.to_string(),
                "{site}: the other site's link must come across the WAN: {conns:?}"
            );
        }
        assert!(
            conns
                .iter()
                .any(|(a, _, app)| app.starts_with("ezone-orders") && a == &own_addr.to_string()),
            "{site}: the order service connects from the site's own address: {conns:?}"
        );
    }

    ens.teardown().await.expect("teardown");
    for ns in names.values() {
        assert!(
            !Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left behind"
        );
    }
}
