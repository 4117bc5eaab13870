//! Failover end to end, everything real: etcd, two Postgres sites with the
//! fence, order services, routers, replicators (the ensemble), order
//! traffic through both routers, and the `ezone failover` command as an
//! operator runs it. The invariants are checked in the data
//! (`chaos::check`): nothing acknowledged lost, sites identical, and every
//! row accepted at the shard's home at the fence epoch it was written under.

use std::collections::BTreeSet;
use std::time::Duration;

use ezone_chaos::check::{homes_of, record_homes, AckedWrite, HomeHistory};
use ezone_chaos::ensemble::{etcd_link_name, Ensemble, EnsembleSpec, Part};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_chaos::proxy::{Direction, Toxics};
use ezone_orders::workload::{History, Workload, WorkloadSpec};
use ezone_tests::{eventually, ezone_bin};
use ezone_topology::{ShardState, TopologyStore};

async fn ensemble() -> Ensemble {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    Ensemble::start(lab, EnsembleSpec::new(ezone_bin()))
        .await
        .expect("ensemble")
}

/// Runs `ezone failover ARGS --etcd ...`; returns (exit code, stderr).
async fn failover(ens: &Ensemble, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = tokio::process::Command::new(ezone_bin());
    cmd.arg("failover")
        .args(args)
        .args(ens.etcd_cli_args())
        .arg("--lock-ttl")
        .arg("1s")
        .env("EZONE_LOG", "warn");
    for (k, v) in env {
        if *k == "FAILPOINTS" {
            ezone_tests::require_failpoints();
        }
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("failover command finished within 90 s")
        .expect("run ezone failover");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn acked(h: &History) -> Vec<AckedWrite> {
    h.acked()
        .iter()
        .filter_map(|o| o.body.as_ref().and_then(AckedWrite::from_row_json))
        .collect()
}

fn all_cities(ens: &Ensemble) -> Vec<String> {
    ens.cities().into_iter().map(|(c, _)| c).collect()
}

fn workload(ens: &Ensemble, prefix: &str, rate: u32) -> Workload {
    let targets = ens
        .sites()
        .iter()
        .map(|s| ens.router_http(s).expect("router"))
        .collect();
    Workload::start(WorkloadSpec {
        targets,
        cities: all_cities(ens),
        rate_per_sec: rate,
        id_prefix: prefix.into(),
        ..WorkloadSpec::default()
    })
    .expect("workload")
}

async fn record_topology(ens: &Ensemble, homes: &mut HomeHistory) {
    let store = ens.store().await.expect("store");
    let snap = store.load().await.expect("topology");
    record_homes(homes, &snap.topology);
}

async fn shard_of(ens: &Ensemble, id: u32) -> ezone_topology::Shard {
    let store = ens.store().await.expect("store");
    store.load().await.expect("topology").topology.shards[&id].clone()
}

fn other(site: &str) -> &'static str {
    if site == "beijing" {
        "shanghai"
    } else {
        "beijing"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planned_switchovers_under_load_fail_nothing_and_lose_nothing() {
    let ens = ensemble().await;
    let mut homes = homes_of(ens.initial_topology());
    let wl = workload(&ens, "planned", 150);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Two shards, each moved six times (back and forth three times): 12
    // switchovers under load; 40 with the long chaos profile
    // (EZONE_CHAOS_LONG=1).
    let rounds = if std::env::var_os("EZONE_CHAOS_LONG").is_some() {
        20
    } else {
        6
    };
    let shards: Vec<u32> = ens
        .initial_topology()
        .shards
        .keys()
        .copied()
        .take(2)
        .collect();
    let mut holds = Vec::new();
    for round in 0..rounds {
        for &s in &shards {
            let cur = shard_of(&ens, s).await;
            let to = other(&cur.home);
            let (code, err) =
                failover(&ens, &["shard", &s.to_string(), "--to", to, "--json"], &[]).await;
            assert_eq!(code, 0, "round {round} shard {s}: {err}");
            let now = shard_of(&ens, s).await;
            assert_eq!(
                (now.home.as_str(), now.state, now.epoch),
                (to, ShardState::Active, cur.epoch + 2),
                "{err}"
            );
            holds.push(
                err.lines()
                    .find(|l| l.contains("writes held"))
                    .map(str::to_string),
            );
            record_topology(&ens, &mut homes).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = wl.stop().await;
    let failed = history.failed();
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    // Not even a retried attempt: the routers held the writes and released
    // them to an open fence.
    assert_eq!(
        history.retries(),
        0,
        "retried: {:?}",
        history.retry_reasons()
    );
    assert!(
        history.acked().len() > 200,
        "{} acked",
        history.acked().len()
    );
    ens.wait_converged(Duration::from_secs(30))
        .await
        .expect("sites converge");
    let report = ens
        .verify(&acked(&history), Some(&homes))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report}\nholds: {holds:?}");
    ens.teardown().await.expect("teardown");
}

/// Every conflict recorded at `site` (link, reason, the row's id), read
/// from its database.
async fn conflicts_at(ens: &Ensemble, site: &str) -> Vec<(String, String, Option<String>)> {
    let (c, conn) = ezone_pg::connect(&ens.dsn(site).expect("dsn"))
        .await
        .expect("connect");
    tokio::spawn(conn);
    c.query(
        "SELECT link, reason, coalesce(remote_row->>'id', local_row->>'id') \
         FROM ezone_replication.conflicts ORDER BY id",
        &[],
    )
    .await
    .expect("conflicts")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// The old home's replicator learns of every topology change late (its
/// etcd path is slow): the new home's first writes reach the old home's
/// database before its view has the flip. Judged by the view they were
/// conflicts (`foreign_shard`, never applied there: the sites diverged);
/// judged by the epoch each was accepted under, they are the new home's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_topology_view_turns_no_write_into_a_conflict() {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let mut spec = EnsembleSpec::new(ezone_bin());
    spec.replicator_etcd_links = true;
    let ens = Ensemble::start(lab, spec).await.expect("ensemble");
    let mut homes = homes_of(ens.initial_topology());
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = ens.initial_topology().routing.cities[&city];
    let cities: Vec<String> = ens
        .cities()
        .into_iter()
        .filter(|(_, s)| *s == shard)
        .map(|(c, _)| c)
        .collect();
    // Beijing's replicator sees each change 300 ms (a round trip) late.
    let slow = Toxics {
        latency: Duration::from_millis(150),
        ..Toxics::default()
    };
    for site in ens.sites() {
        let link = ens
            .lab()
            .proxy()
            .and_then(|p| p.link(&etcd_link_name(&site)))
            .expect("the replicator's etcd link");
        if site == "beijing" {
            link.set_toxics(Direction::Upstream, slow.clone());
            link.set_toxics(Direction::Downstream, slow.clone());
        }
    }
    let targets = ens
        .sites()
        .iter()
        .map(|s| ens.router_http(s).expect("router"))
        .collect();
    let wl = Workload::start(WorkloadSpec {
        targets,
        cities,
        rate_per_sec: 120,
        id_prefix: "lagging".into(),
        ..WorkloadSpec::default()
    })
    .expect("workload");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flips = if std::env::var_os("EZONE_CHAOS_LONG").is_some() {
        20
    } else {
        6
    };
    for n in 0..flips {
        let cur = shard_of(&ens, shard).await;
        let to = other(&cur.home);
        let (code, err) = failover(&ens, &["shard", &shard.to_string(), "--to", to], &[]).await;
        assert_eq!(code, 0, "flip {n}: {err}");
        record_topology(&ens, &mut homes).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = wl.stop().await;
    assert!(
        history.acked().len() > 100,
        "{} acked",
        history.acked().len()
    );
    let converged = ens.wait_converged(Duration::from_secs(30)).await;
    let mut conflicts = Vec::new();
    for site in ens.sites() {
        conflicts.extend(conflicts_at(&ens, &site).await);
    }
    assert!(
        conflicts.is_empty(),
        "{} conflicts after {flips} flips ({} writes acknowledged): {:?}",
        conflicts.len(),
        history.acked().len(),
        &conflicts[..conflicts.len().min(3)]
    );
    converged.expect("sites converge");
    let report = ens
        .verify(&acked(&history), Some(&homes))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report}");
    ens.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_router_is_refused_by_the_fence() {
    let ens = ensemble().await;
    let t0 = ens.initial_topology().clone();
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = t0.routing.cities[&city];
    // A router that never learns: its topology is a file frozen at t0. It
    // needs a peer secret to start (the topology has other sites); it never
    // forwards here, so one of its own does.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("topology.json");
    ezone_topology::FileStore::new(&file)
        .init(&t0, false)
        .await
        .expect("write the stale topology");
    let stale = ezone_tests::router::RouterProc::start_ready(&format!(
        "site = \"beijing\"\n[listen]\nhttp = \"127.0.0.1:0\"\n[topology]\nfile = \"{}\"\n[routing]\npeer_secret = \"a-secret-of-its-own\"\n",
        file.display()
    ))
    .await;
    let (code, err) = failover(
        &ens,
        &["shard", &shard.to_string(), "--to", "shanghai"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let c = ezone_tests::router::client();
    let body = r#"{"id":"stale-1","user":"u1","item":"tea","amount_cents":100}"#;
    let a = ezone_tests::router::send(
        &c,
        "POST",
        stale.http,
        "/orders",
        &[("x-city-id", &city), ("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(a.status, 503, "the old home's fence refuses: {}", a.text());
    assert!(a.text().contains("fenced"), "{}", a.text());
    // Through a current router the same write lands at the new home.
    let a = ezone_tests::router::send(
        &c,
        "POST",
        ens.router_http("beijing").expect("router"),
        "/orders",
        &[("x-city-id", &city), ("content-type", "application/json")],
        r#"{"id":"fresh-1","user":"u1","item":"tea","amount_cents":100}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    ens.wait_converged(Duration::from_secs(30))
        .await
        .expect("converge");
    let rows = ezone_chaos::check::read_all(&ens.dsns())
        .await
        .expect("rows");
    for (site, rows) in &rows {
        assert!(
            rows.iter().all(|r| r.id != "stale-1"),
            "the stale router's write reached {site}"
        );
        let fresh = rows.iter().find(|r| r.id == "fresh-1").expect("fresh row");
        assert_eq!(fresh.site.as_deref(), Some("shanghai"), "{site}");
    }
    drop(stale);
    ens.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_killed_at_each_step_then_rerun_keeps_the_invariants() {
    let ens = ensemble().await;
    let mut homes = homes_of(ens.initial_topology());
    let wl = workload(&ens, "crashy", 100);
    let shard = *ens
        .initial_topology()
        .shards
        .keys()
        .next()
        .expect("a shard");
    for step in [
        "start",
        "frozen",
        "fenced",
        "catching_up",
        "opening",
        "flipping",
        "done",
    ] {
        let cur = shard_of(&ens, shard).await;
        let to = other(&cur.home);
        let (code, err) = failover(
            &ens,
            &["shard", &shard.to_string(), "--to", to],
            &[("FAILPOINTS", &format!("switchover.{step}=return"))],
        )
        .await;
        assert_eq!(code, 86, "the command crashed at {step}: {err}");
        let (code, err) = failover(&ens, &["shard", &shard.to_string(), "--to", to], &[]).await;
        assert_eq!(code, 0, "re-run after a crash at {step}: {err}");
        assert!(
            err.contains("resuming") || step == "start",
            "the re-run resumed from the record: {err}"
        );
        let now = shard_of(&ens, shard).await;
        assert_eq!(
            (now.home.as_str(), now.state),
            (to, ShardState::Active),
            "after the crash at {step}: {err}"
        );
        assert!(now.epoch > cur.epoch);
        record_topology(&ens, &mut homes).await;
    }
    let history = wl.stop().await;
    // Writes held past the deadline while the command was dead are retried
    // by the client; none may end failed.
    let failed = history.failed();
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    ens.wait_converged(Duration::from_secs(30))
        .await
        .expect("converge");
    let report = ens
        .verify(&acked(&history), Some(&homes))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report}");
    ens.teardown().await.expect("teardown");
}

/// Nobody re-runs a command that died mid-switchover: a replicator finds
/// the record (its lock lapsed) and rolls it back if it had not flipped,
/// or finishes it if it had. Nothing acknowledged is lost, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_command_died_is_finished_or_rolled_back_by_the_replicators() {
    let ens = ensemble().await;
    let mut homes = homes_of(ens.initial_topology());
    let wl = workload(&ens, "abandoned", 100);
    let shard = *ens
        .initial_topology()
        .shards
        .keys()
        .next()
        .expect("a shard");
    for (step, moves) in [("catching_up", false), ("flipping", true)] {
        let cur = shard_of(&ens, shard).await;
        let to = other(&cur.home);
        let (code, err) = failover(
            &ens,
            &["shard", &shard.to_string(), "--to", to],
            &[("FAILPOINTS", &format!("switchover.{step}=return"))],
        )
        .await;
        assert_eq!(code, 86, "the command crashed at {step}: {err}");
        let died = std::time::Instant::now();
        let want = if moves { to } else { cur.home.as_str() };
        let now = eventually(
            "the replicators recover the switchover",
            Duration::from_secs(30),
            || {
                let want = want.to_string();
                let ens = &ens;
                async move {
                    let s = shard_of(ens, shard).await;
                    let store = ens.store().await.ok()?;
                    let bytes = store.read_op(&format!("switchover/{shard}")).await.ok()??;
                    let r: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
                    (s.home == want
                        && s.state == ShardState::Active
                        && s.epoch == cur.epoch + 2
                        && r["finished"] == true)
                        .then_some(s)
                }
            },
        )
        .await;
        let took = died.elapsed();
        record_topology(&ens, &mut homes).await;
        eprintln!("crashed at {step}: recovered in {took:?}: {now:?}");
        // The lock's lease (1 s here) and the record's quiet time (3 s)
        // plus a poll: seconds, not until someone notices.
        assert!(took < Duration::from_secs(15), "{took:?}");
        let store = ens.store().await.expect("store");
        let bytes = store
            .read_op(&format!("switchover/{shard}"))
            .await
            .expect("record")
            .expect("a record");
        let r: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(r["finished"], true, "{r}");
        assert!(
            r["holder"]
                .as_str()
                .unwrap_or("")
                .starts_with("replicator at"),
            "{r}"
        );
        // Let the writes held meanwhile drain before the next round.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let history = wl.stop().await;
    let failed = history.failed();
    assert!(
        failed.is_empty(),
        "failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    ens.wait_converged(Duration::from_secs(30))
        .await
        .expect("converge");
    let report = ens
        .verify(&acked(&history), Some(&homes))
        .await
        .expect("verify");
    assert!(report.is_ok(), "{report}");
    ens.teardown().await.expect("teardown");
}

/// One write attempt: when it started and ended (since the test's start),
/// its status, and the site that stored it.
#[derive(Debug, Clone)]
struct Attempt {
    start: Duration,
    end: Duration,
    status: u16,
    site: Option<String>,
    body: String,
}

/// Posts orders for `city` to `addr` every 30 ms until `stop`, with
/// `headers`; every attempt recorded.
async fn write_until(
    addr: std::net::SocketAddr,
    city: String,
    prefix: &'static str,
    t0: std::time::Instant,
    headers: Vec<(String, String)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<Attempt> {
    let c = ezone_tests::router::client();
    let mut out = Vec::new();
    let mut n = 0;
    while !*stop.borrow() {
        n += 1;
        let body =
            format!(r#"{{"id":"{prefix}-{n}","user":"u1","item":"tea","amount_cents":100}}"#);
        let mut h: Vec<(&str, &str)> =
            vec![("x-city-id", &city), ("content-type", "application/json")];
        h.extend(headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let start = t0.elapsed();
        let a = ezone_tests::router::send(&c, "POST", addr, "/orders", &h, body.clone()).await;
        let text = a.text();
        let site = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["site"].as_str().map(str::to_string));
        out.push(Attempt {
            start,
            end: t0.elapsed(),
            status: a.status,
            site,
            body: text,
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    out
}

/// The fence fails closed. Beijing is alive (its Postgres, order service and
/// router up, its WAL still crossing) but its replicator is cut off from
/// etcd: beijing's database stops accepting writes by itself once its
/// lease lapses. A forced failover started at the moment of the cut opens
/// shanghai only after that lease must have lapsed: every write beijing
/// accepted ended before the first write shanghai accepted began. What
/// beijing accepted in between reaches shanghai, applied or as a conflict;
/// none is silently lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cut_off_from_etcd_stops_accepting_before_the_survivor_starts() {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let mut spec = EnsembleSpec::new(ezone_bin());
    spec.replicator_etcd_links = true;
    spec.fence_lease_ms = 3_000;
    spec.clock_skew_ms = 500;
    let ens = Ensemble::start(lab, spec).await.expect("ensemble");
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = ens.initial_topology().routing.cities[&city];
    let epoch = shard_of(&ens, shard).await.epoch;
    let t0 = std::time::Instant::now();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    // Straight to beijing's order service, as if routed there: only its
    // database's fence decides.
    let at_beijing = tokio::spawn(write_until(
        ens.orders_addr("beijing").expect("orders"),
        city.clone(),
        "cut-b",
        t0,
        vec![
            ("x-ezone-shard".into(), shard.to_string()),
            ("x-ezone-epoch".into(), epoch.to_string()),
            ("x-ezone-site".into(), "beijing".into()),
        ],
        stop.clone(),
    ));
    // Through shanghai's router: wherever the topology sends it.
    let via_shanghai = tokio::spawn(write_until(
        ens.router_http("shanghai").expect("router"),
        city.clone(),
        "cut-s",
        t0,
        Vec::new(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The cut, and the forced failover at once.
    let cut = t0.elapsed();
    let link = ens
        .lab()
        .proxy()
        .and_then(|p| p.link(&etcd_link_name("beijing")))
        .expect("beijing's replicator's etcd link");
    link.partition();
    let (code, err) = failover(
        &ens,
        &["site", "beijing", "--to", "shanghai", "--force", "--yes"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("lease to lapse"), "{err}");
    let forced_done = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let _ = stop_tx.send(true);
    let at_beijing = at_beijing.await.expect("beijing writer");
    let via_shanghai = via_shanghai.await.expect("shanghai writer");
    let summary = |v: &[Attempt]| {
        v.iter()
            .map(|a| {
                format!(
                    "{}-{}ms:{}:{}{}",
                    a.start.as_millis(),
                    a.end.as_millis(),
                    a.status,
                    a.site.as_deref().unwrap_or("-"),
                    if a.status == 201 {
                        String::new()
                    } else {
                        format!(" ({})", a.body.trim())
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "forced failover:\n{err}\nbeijing: {}\nshanghai: {}",
        summary(&at_beijing),
        summary(&via_shanghai)
    );
    let accepted_b: Vec<&Attempt> = at_beijing.iter().filter(|a| a.status == 201).collect();
    let accepted_s: Vec<&Attempt> = via_shanghai
        .iter()
        .filter(|a| a.status == 201 && a.site.as_deref() == Some("shanghai"))
        .collect();
    assert!(
        !accepted_b.is_empty(),
        "beijing accepted writes before the lapse"
    );
    let first_s = accepted_s
        .iter()
        .map(|a| a.start)
        .min()
        .expect("shanghai accepted writes after the failover");
    // The survivor's fence opened ahead of the routers releasing the held
    // writes: accepted at once, not after another hold.
    assert!(
        first_s < forced_done + Duration::from_millis(1_000),
        "shanghai's first accepted write began {:?} after the failover ended",
        first_s.saturating_sub(forced_done)
    );
    // Beijing refuses by itself, within its lease of the cut.
    let refused = at_beijing
        .iter()
        .find(|a| a.start > cut && a.status == 503 && a.body.contains("lease"))
        .map(|a| a.end)
        .expect("beijing refused once its lease lapsed");
    eprintln!(
        "cut at {cut:?}; beijing's first refusal ended {:?} after the cut; the forced failover took {:?}",
        refused - cut,
        forced_done - cut
    );
    assert!(
        refused - cut <= Duration::from_millis(3_000 + 1_500),
        "{:?}",
        refused - cut
    );
    assert!(
        at_beijing
            .iter()
            .filter(|a| a.start > refused)
            .all(|a| a.status != 201),
        "beijing accepted a write after refusing"
    );
    // No overlap, by each database's own record of when it accepted a row
    // of the shard (created_at: the writing transaction's start, the same
    // clock on this machine): beijing's last before shanghai's first.
    let when = |dsn: String, site: &'static str| async move {
        let (c, conn) = ezone_pg::connect(&dsn).await.expect("connect");
        tokio::spawn(conn);
        c.query_one(
            "SELECT extract(epoch FROM min(created_at))::float8, \
                    extract(epoch FROM max(created_at))::float8 FROM public.orders \
             WHERE site = $1 AND shard = $2 AND id LIKE 'cut-%'",
            &[&site, &(shard as i32)],
        )
        .await
        .map(|r| (r.get::<_, Option<f64>>(0), r.get::<_, Option<f64>>(1)))
        .expect("times")
    };
    let (_, last_b) = when(ens.dsn("beijing").expect("dsn"), "beijing").await;
    let (first_s, _) = when(ens.dsn("shanghai").expect("dsn"), "shanghai").await;
    let (last_b, first_s) = (
        last_b.expect("beijing rows"),
        first_s.expect("shanghai rows"),
    );
    eprintln!(
        "beijing's last accepted write came {:.3} s before shanghai's first",
        first_s - last_b
    );
    assert!(
        last_b < first_s,
        "beijing's last {last_b} >= shanghai's first {first_s}"
    );
    // Beijing is fenced for the shard once it reads the topology again.
    link.heal();
    let dsn_b = ens.dsn("beijing").expect("dsn");
    eventually("beijing fenced for the moved shard", Duration::from_secs(30), || {
        let dsn_b = dsn_b.clone();
        async move {
            let (c, conn) = ezone_pg::connect(&dsn_b).await.ok()?;
            tokio::spawn(conn);
            let r = c
                .query_opt(
                    "SELECT writable FROM ezone_fence.shards WHERE shard = $1 AND home = 'shanghai'",
                    &[&(shard as i32)],
                )
                .await
                .ok()??;
            (!r.get::<_, bool>(0)).then_some(())
        }
    })
    .await;
    // Every write beijing acknowledged is at shanghai, or a conflict there.
    let ids: Vec<String> = accepted_b
        .iter()
        .filter_map(|a| {
            serde_json::from_str::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_string))
        })
        .collect();
    let dsn_s = ens.dsn("shanghai").expect("dsn");
    eventually("beijing's writes at shanghai", Duration::from_secs(30), || {
        let dsn_s = dsn_s.clone();
        let ids = ids.clone();
        async move {
            let (c, conn) = ezone_pg::connect(&dsn_s).await.ok()?;
            tokio::spawn(conn);
            let rows = c.query("SELECT id FROM public.orders", &[]).await.ok()?;
            let mut have: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
            let conflicts = c
                .query(
                    "SELECT coalesce(remote_row->>'id', local_row->>'id') FROM ezone_replication.conflicts",
                    &[],
                )
                .await
                .ok()?;
            have.extend(conflicts.iter().filter_map(|r| r.get::<_, Option<String>>(0)));
            ids.iter().all(|i| have.contains(i)).then_some(())
        }
    })
    .await;
    ens.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_reports_exactly_the_writes_that_had_not_crossed() {
    let ens = ensemble().await;
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    // Cut what shanghai reads of beijing's Postgres: beijing's writes from
    // now on do not cross.
    let link = ens.lab().link("beijing->shanghai").expect("WAN link");
    link.partition();
    let wl = Workload::start(WorkloadSpec {
        targets: vec![ens.router_http("beijing").expect("router")],
        cities: vec![city.clone()],
        rate_per_sec: 50,
        concurrency: 1,
        limit: Some(20),
        id_prefix: "tail".into(),
        ..WorkloadSpec::default()
    })
    .expect("workload");
    let history = wl.finish().await;
    let tail_ids: BTreeSet<String> = history.acked().iter().map(|o| o.id.clone()).collect();
    assert_eq!(tail_ids.len(), 20);
    // What shanghai has of them (nothing, through the partition).
    let rows = ezone_chaos::check::read_rows("shanghai", &ens.dsn("shanghai").expect("dsn"))
        .await
        .expect("rows");
    let crossed: BTreeSet<String> = rows
        .iter()
        .map(|r| r.id.clone())
        .filter(|id| tail_ids.contains(id))
        .collect();
    let at_risk: BTreeSet<String> = tail_ids.difference(&crossed).cloned().collect();
    // Beijing is lost.
    for part in [Part::Router, Part::Orders, Part::Replicator, Part::Postgres] {
        ens.kill("beijing", part).expect("kill");
    }
    let (code, err) = failover(
        &ens,
        &["site", "beijing", "--to", "shanghai", "--force", "--yes"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("divergence point"), "{err}");
    // Writes for beijing's cities now succeed at the survivor.
    let after = Workload::start(WorkloadSpec {
        targets: vec![ens.router_http("shanghai").expect("router")],
        cities: vec![city.clone()],
        rate_per_sec: 50,
        limit: Some(10),
        id_prefix: "survivor".into(),
        ..WorkloadSpec::default()
    })
    .expect("workload");
    let survivor = after.finish().await;
    assert_eq!(
        survivor.acked().len(),
        10,
        "writes at the survivor after the forced failover"
    );
    for o in survivor.acked() {
        let site = o
            .body
            .as_ref()
            .and_then(|b| b.get("site"))
            .and_then(|s| s.as_str())
            .unwrap_or("");
        assert_eq!(site, "shanghai");
    }
    // Beijing returns: Postgres, then its replicator (which fences it
    // first), then the network.
    ens.restart("beijing", Part::Postgres)
        .await
        .expect("restart pg");
    let dsn_b = ens.dsn("beijing").expect("dsn");
    let shard = ens.initial_topology().routing.cities[&city];
    // Back before its replicator: its fence still says shard S is its own,
    // but its lease lapsed while it was away, so it refuses by itself.
    {
        let (c, conn) = ezone_pg::connect(&dsn_b).await.expect("connect");
        tokio::spawn(conn);
        let e = c
            .execute(
                "INSERT INTO public.orders (id, city, user_id, item, amount_cents, shard, epoch, site, fence_epoch) \
                 VALUES ('returning-1', $1, 'u1', 'tea', 100, $2, 1, 'beijing', 1)",
                &[&city, &(shard as i32)],
            )
            .await
            .expect_err("a returning site refuses until its lease is renewed");
        assert_eq!(
            e.code().map(|c| c.code().to_string()).as_deref(),
            Some("EZ003"),
            "{e:?}"
        );
    }
    ens.restart("beijing", Part::Replicator)
        .await
        .expect("restart replicator");
    link.heal();
    eventually("beijing fenced for the moved shard", Duration::from_secs(30), || {
        let dsn_b = dsn_b.clone();
        async move {
            let (c, conn) = ezone_pg::connect(&dsn_b).await.ok()?;
            tokio::spawn(conn);
            let r = c
                .query_opt(
                    "SELECT writable FROM ezone_fence.shards WHERE shard = $1 AND home = 'shanghai'",
                    &[&(shard as i32)],
                )
                .await
                .ok()??;
            (!r.get::<_, bool>(0)).then_some(())
        }
    })
    .await;
    // The tail arrives at shanghai as conflicts: exactly the writes at risk.
    let dsn_s = ens.dsn("shanghai").expect("dsn");
    let query =
        "SELECT coalesce(remote_row->>'id', local_row->>'id') FROM ezone_replication.conflicts \
                 WHERE link = 'beijing->shanghai'";
    let conflicted: BTreeSet<String> =
        eventually("the tail's conflicts", Duration::from_secs(60), || {
            let dsn_s = dsn_s.clone();
            let want = at_risk.len();
            async move {
                let (c, conn) = ezone_pg::connect(&dsn_s).await.ok()?;
                tokio::spawn(conn);
                let rows = c.query(query, &[]).await.ok()?;
                let ids: BTreeSet<String> = rows
                    .iter()
                    .filter_map(|r| r.get::<_, Option<String>>(0))
                    .collect();
                (ids.len() >= want).then_some(ids)
            }
        })
        .await;
    // Give any extra (wrong) conflict a moment to show up, then compare.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (c, conn) = ezone_pg::connect(&dsn_s).await.expect("connect");
    tokio::spawn(conn);
    let final_ids: BTreeSet<String> = c
        .query(query, &[])
        .await
        .expect("conflicts")
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    assert_eq!(conflicted, at_risk);
    assert_eq!(final_ids, at_risk, "no more, no fewer");
    // Each records the operation beijing made (the orders were created),
    // which is what `conflicts resolve --keep returning` goes by.
    let ops: Vec<Option<String>> = c
        .query(
            "SELECT op FROM ezone_replication.conflicts WHERE link = 'beijing->shanghai'",
            &[],
        )
        .await
        .expect("ops")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        ops.iter().all(|op| op.as_deref() == Some("insert")),
        "{ops:?}"
    );
    // Judged by the epoch they were written under: beijing was the home
    // then, and lost the shard by force before they crossed.
    let reasons: Vec<String> = c
        .query(
            "SELECT reason FROM ezone_replication.conflicts WHERE link = 'beijing->shanghai'",
            &[],
        )
        .await
        .expect("reasons")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        reasons.iter().all(|r| r.contains("forced failover")),
        "{reasons:?}"
    );
    // The shard does not move back over them: refused, nothing changed.
    let before_refusal = shard_of(&ens, shard).await;
    let (code, err) = failover(&ens, &["shard", &shard.to_string(), "--to", "beijing"], &[]).await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("unresolved conflict(s)") && err.contains("ezone conflicts resolve"),
        "{err}"
    );
    assert_eq!(shard_of(&ens, shard).await, before_refusal);
    // `status` counts them against the shard.
    let out = tokio::process::Command::new(ezone_bin())
        .args(["status", "--json"])
        .args(ens.etcd_cli_args())
        .output()
        .await
        .expect("status");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let row = v["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .find(|s| s["id"] == shard)
        .cloned()
        .expect("the shard in status");
    assert_eq!(
        row["conflicts_pending"].as_i64(),
        Some(at_risk.len() as i64),
        "{row}"
    );
    // The survivor's writes reached the returning site.
    eventually(
        "survivor writes at beijing",
        Duration::from_secs(30),
        || {
            let dsn_b = dsn_b.clone();
            let ids: Vec<String> = survivor.acked().iter().map(|o| o.id.clone()).collect();
            async move {
                let rows = ezone_chaos::check::read_rows("beijing", &dsn_b)
                    .await
                    .ok()?;
                let have: BTreeSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                ids.iter().all(|i| have.contains(i.as_str())).then_some(())
            }
        },
    )
    .await;
    ens.teardown().await.expect("teardown");
}

/// Starts `ezone failover shard S --to shanghai ARGS` that pauses 1.5 s
/// between its preflight and the freeze (a failpoint), so that the test can
/// break the link the preflight saw working.
fn failover_paused_after_preflight(
    ens: &Ensemble,
    shard: u32,
    args: &[&str],
) -> tokio::process::Child {
    ezone_tests::require_failpoints();
    tokio::process::Command::new(ezone_bin())
        .args(["failover", "shard", &shard.to_string(), "--to", "shanghai"])
        .args(args)
        .args(ens.etcd_cli_args())
        .env("EZONE_LOG", "warn")
        .env("FAILPOINTS", "switchover.preflight_done=sleep(1500)")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn")
}

async fn exited(child: tokio::process::Child) -> (bool, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("exits")
        .expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_that_cannot_finish_is_refused_or_rolled_back_early() {
    let ens = ensemble().await;
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = ens.initial_topology().routing.cities[&city];
    let s = shard.to_string();
    let before = shard_of(&ens, shard).await;

    // The new home's replicator is dead: the preflight says so, in the dry
    // run (non-zero exit) and in the real run, which changes nothing.
    ens.kill("shanghai", Part::Replicator).expect("kill");
    let (code, err) = failover(&ens, &["shard", &s, "--to", "shanghai", "--dry-run"], &[]).await;
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("FAIL") && err.contains("dry run: nothing changed"),
        "{err}"
    );
    let (code, err) = failover(&ens, &["shard", &s, "--to", "shanghai"], &[]).await;
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("preflight failed"), "{err}");
    assert_eq!(shard_of(&ens, shard).await, before, "nothing frozen");
    ens.restart("shanghai", Part::Replicator)
        .await
        .expect("restart");
    ens.wait_ready().await.expect("ready");
    let (code, err) = failover(&ens, &["shard", &s, "--to", "shanghai", "--dry-run"], &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("ok   link beijing->shanghai streams")
            && err.contains("ok   marker round trip beijing->shanghai"),
        "{err}"
    );

    // The link breaks after the preflight: no catch-up progress for the
    // stall bound rolls back, long before the timeout.
    let link = ens.lab().link("beijing->shanghai").expect("WAN link");
    let child = failover_paused_after_preflight(&ens, shard, &["--stall-timeout", "1s"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    link.partition();
    let started = std::time::Instant::now();
    let (ok, err) = exited(child).await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("rolled_back") && err.contains("no catch-up progress"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let now = shard_of(&ens, shard).await;
    assert_eq!(
        (now.home.as_str(), now.state, now.epoch),
        ("beijing", ShardState::Active, before.epoch + 2)
    );
    link.heal();

    // The overall timeout still holds when the stall bound is longer.
    let child = failover_paused_after_preflight(
        &ens,
        shard,
        &["--stall-timeout", "60s", "--timeout", "2s"],
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    link.partition();
    let (ok, err) = exited(child).await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("rolled_back") && err.contains("timed out"),
        "{err}"
    );
    let now = shard_of(&ens, shard).await;
    assert_eq!(
        (now.home.as_str(), now.state, now.epoch),
        ("beijing", ShardState::Active, before.epoch + 4)
    );
    link.heal();

    // Ctrl-C (SIGINT) while it waits: the same clean rollback.
    let child = failover_paused_after_preflight(&ens, shard, &["--stall-timeout", "60s"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    link.partition();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let (ok, err) = exited(child).await;
    assert!(!ok, "{err}");
    assert!(err.contains("aborted by the operator"), "{err}");
    let after = shard_of(&ens, shard).await;
    assert_eq!(
        (after.home.as_str(), after.state, after.epoch),
        ("beijing", ShardState::Active, before.epoch + 6)
    );
    // Writes for the city still work at the old home, and beijing's fence
    // is open again for it.
    link.heal();
    let c = ezone_tests::router::client();
    let a = ezone_tests::router::send(
        &c,
        "POST",
        ens.router_http("shanghai").expect("router"),
        "/orders",
        &[("x-city-id", &city), ("content-type", "application/json")],
        r#"{"id":"after-abort","user":"u1","item":"tea","amount_cents":100}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.text());
    ens.teardown().await.expect("teardown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_dry_run_show_without_changing() {
    let ens = ensemble().await;
    let t0 = ens.initial_topology().clone();
    let (code, err) = failover(
        &ens,
        &["site", "beijing", "--to", "shanghai", "--dry-run"],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("planned switchover") && err.contains("dry run: nothing changed"),
        "{err}"
    );
    assert!(
        err.contains("ok   link beijing->shanghai streams")
            && err.contains("ok   no unresolved conflicts")
            && err.contains("ok   marker round trip beijing->shanghai"),
        "{err}"
    );
    let store = ens.store().await.expect("store");
    assert_eq!(*store.load().await.expect("load").topology, t0);
    let out = tokio::process::Command::new(ezone_bin())
        .args(["status", "--json"])
        .args(ens.etcd_cli_args())
        .output()
        .await
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let sites = v["sites"].as_array().expect("sites");
    assert_eq!(sites.len(), 2);
    for s in sites {
        assert_eq!(s["reachable"], true, "{s}");
        assert_eq!(s["conflicts_pending"], 0, "{s}");
        assert!(
            s["fence_lease_ms"].as_i64().unwrap_or(0) > 0,
            "lease held: {s}"
        );
        let links = s["links"].as_array().expect("links");
        assert_eq!(links.len(), 1, "{s}");
        assert_eq!(links[0]["active"], true, "{s}");
    }
    assert_eq!(
        v["shards"].as_array().expect("shards").len(),
        t0.shards.len()
    );
    assert!(v["switchovers_in_progress"]
        .as_array()
        .expect("list")
        .is_empty());
    ens.teardown().await.expect("teardown");
}
