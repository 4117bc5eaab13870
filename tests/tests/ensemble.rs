//! The ensemble end to end: two sites of real processes (etcd, Postgres 15,
//! order services, routers, replicators, a 30 ms WAN through the fault
//! proxy). Orders written through the wrong site's router land at the city's
//! home, replicate to the other site, and the invariant checker finds
//! nothing lost, sites identical and no dual writes; killed routers and
//! replicators (and a Postgres) come back on the same ports and the sites
//! converge again.

use std::time::Duration;

use ezone_chaos::check::{self, AckedWrite};
use ezone_chaos::ensemble::{Ensemble, EnsembleSpec, Part};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_tests::router::{client, send, Answer};
use ezone_tests::{eventually, ezone_bin};

const CONVERGE: Duration = Duration::from_secs(30);

async fn ensemble() -> Ensemble {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let mut spec = EnsembleSpec::new(ezone_bin());
    spec.log_filter = "info".to_string();
    Ensemble::start(lab, spec).await.expect("ensemble")
}

/// POST an order for `city` through `via`'s router; the answer and what was
/// acknowledged.
async fn place(e: &Ensemble, via: &str, id: &str, city: &str) -> (Answer, AckedWrite) {
    let w = AckedWrite {
        id: id.to_string(),
        city: city.to_string(),
        user_id: format!("user-{id}"),
        item: "jasmine tea".to_string(),
        amount_cents: 1250,
        status: None,
    };
    let body = serde_json::json!({
        "id": w.id, "user": w.user_id, "item": w.item, "amount_cents": w.amount_cents,
    });
    let answer = send(
        &client(),
        "POST",
        e.router_http(via).expect("router"),
        "/orders",
        &[("x-city-id", city), ("content-type", "application/json")],
        body.to_string(),
    )
    .await;
    (answer, w)
}

fn body(a: &Answer) -> String {
    String::from_utf8_lossy(&a.body).into_owned()
}

fn cities(e: &Ensemble) -> (String, String) {
    (
        e.city_homed_at("beijing").expect("a beijing city"),
        e.city_homed_at("shanghai").expect("a shanghai city"),
    )
}

/// Wait for convergence, then every invariant must hold.
async fn assert_clean(e: &Ensemble, acked: &[AckedWrite]) {
    e.wait_converged(CONVERGE).await.expect("sites converge");
    let homes = check::homes_of(e.initial_topology());
    let report = e.verify(acked, Some(&homes)).await.expect("verify");
    eprintln!("{report}");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.acked, acked.len());
    for (site, rows) in &report.rows {
        assert_eq!(*rows, acked.len(), "{site}: {report}");
    }
}

#[tokio::test]
async fn orders_route_to_their_home_and_replicate() {
    let e = ensemble().await;
    let (bj_city, sh_city) = cities(&e);

    // Each order goes through the *other* site's router: it crosses the WAN.
    let (a, bj) = place(&e, "shanghai", "o-bj-1", &bj_city).await;
    assert_eq!(a.status, 201, "{}", body(&a));
    let (a, sh) = place(&e, "beijing", "o-sh-1", &sh_city).await;
    assert_eq!(a.status, 201, "{}", body(&a));
    let acked = vec![bj, sh];

    assert_clean(&e, &acked).await;
    // Each row was accepted at its city's home, and both rows are at both sites.
    let rows = check::read_all(&e.dsns()).await.expect("rows");
    for (site, rows) in &rows {
        for r in rows {
            let city = r.city.as_deref().expect("city");
            assert_eq!(r.site.as_deref(), e.home_of(city), "{site}: {r:?}");
        }
    }
    assert!(
        check::dual_writes(&rows.values().flatten().cloned().collect::<Vec<_>>(), None).is_empty()
    );
    assert!(check::lost_writes(&acked, &rows).is_empty());
    e.teardown().await.expect("teardown");
}

#[tokio::test]
async fn killed_routers_and_replicators_come_back() {
    let e = ensemble().await;
    let (bj_city, sh_city) = cities(&e);
    let mut acked = Vec::new();

    // A dead router: shanghai cannot forward beijing's orders to it.
    e.kill("beijing", Part::Router).expect("kill router");
    let (a, _) = place(&e, "shanghai", "o-lost", &bj_city).await;
    assert!(a.status >= 500, "{} {}", a.status, body(&a));
    e.restart("beijing", Part::Router)
        .await
        .expect("restart router");
    for (via, id, city) in [
        ("shanghai", "o-1", &bj_city),
        ("beijing", "o-2", &sh_city),
        ("beijing", "o-3", &bj_city),
    ] {
        let (a, w) = place(&e, via, id, city).await;
        assert_eq!(a.status, 201, "{id} via {via}: {}", body(&a));
        acked.push(w);
    }

    // A dead replicator: beijing's writes wait at the source, then arrive.
    e.kill("shanghai", Part::Replicator)
        .expect("kill replicator");
    for i in 0..5 {
        let (a, w) = place(&e, "shanghai", &format!("o-while-down-{i}"), &bj_city).await;
        assert_eq!(a.status, 201, "{}", body(&a));
        acked.push(w);
    }
    let sums = check::site_checksums(&e.dsns()).await.expect("checksums");
    assert!(
        !check::identical(&sums),
        "nothing applies at shanghai: {sums:?}"
    );
    e.restart("shanghai", Part::Replicator)
        .await
        .expect("restart replicator");
    e.wait_ready().await.expect("ready again");
    let (a, w) = place(&e, "beijing", "o-after", &sh_city).await;
    assert_eq!(a.status, 201, "{}", body(&a));
    acked.push(w);

    // A Postgres killed and restarted: the links and the order service
    // reconnect (a write may get a retryable 503 meanwhile).
    e.kill("shanghai", Part::Postgres).expect("kill postgres");
    e.restart("shanghai", Part::Postgres)
        .await
        .expect("restart postgres");
    e.wait_ready().await.expect("ready after postgres");
    let w = eventually(
        "an order at shanghai after its restart",
        CONVERGE,
        || async {
            let (a, w) = place(&e, "beijing", "o-after-pg", &sh_city).await;
            match a.status {
                201 | 200 => Some(w),
                s if s >= 500 => None,
                s => panic!("{s}: {}", body(&a)),
            }
        },
    )
    .await;
    acked.push(w);

    assert_clean(&e, &acked).await;
    e.teardown().await.expect("teardown");
}
