//! `ezone bench failover`: what a switchover costs the traffic, on the whole
//! system (ensemble) with a 30 ms WAN round trip between the sites.
//!
//! Side by side in one run, the same fixed order load through both routers:
//! 1. baseline: no switchovers (write latency p50/p99/max);
//! 2. planned: shards switched back and forth, one at a time. Per switchover
//!    the write-hold window (freeze CAS -> active at the new home, from the
//!    driver's record), and the same latency figures as the baseline, with
//!    requests failed (target 0);
//! 3. forced: beijing's Postgres killed, `failover site --force` run
//!    in-process; the time from the command to the first write for a
//!    beijing city acknowledged at shanghai.

use std::time::{Duration, Instant};

use anyhow::Context;
use ezone_chaos::ensemble::Part;
use ezone_chaos::lab::LabSpec;
use ezone_chaos::scenario;
use ezone_orders::workload::History;
use ezone_topology::failover::driver::{force_moves, Options, Outcome};
use ezone_topology::failover::plan::{plan_site, Mode};
use ezone_topology::TopologyStore;

/// `ezone bench failover`'s options.
#[derive(Debug, clap::Args)]
pub struct FailoverBench {
    /// Orders per second through the routers, in every phase.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Planned switchovers to time.
    #[arg(long, default_value_t = 20)]
    pub switchovers: u32,
    /// Length of the baseline phase.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub baseline: Duration,
    /// Pause between switchovers.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub gap: Duration,
    /// WAN round-trip time.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    pub wan_rtt: Duration,
    /// Skip the forced failover phase.
    #[arg(long)]
    pub no_forced: bool,
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn row(out: &mut String, name: &str, h: &History) {
    use std::fmt::Write;
    let l = h.latencies();
    let (p50, p99, max) = l.map(|l| (l.p50, l.p99, l.max)).unwrap_or_default();
    let _ = writeln!(
        out,
        "{name:<22} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
        h.outcomes.len(),
        h.failed().len(),
        h.retries(),
        ms(p50),
        ms(p99),
        ms(max)
    );
}

/// One order POST through a router; its status, or `None` without an answer.
async fn place_once(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    router: std::net::SocketAddr,
    city: &str,
    id: &str,
) -> Option<u16> {
    let body = serde_json::json!({"id": id, "user": "bench", "item": "tea", "amount_cents": 100});
    let req = hyper::Request::post(format!("http://{router}/orders"))
        .header("x-city-id", city)
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .ok()?
        .ok()?;
    Some(resp.status().as_u16())
}

/// What `ezone bench failover` measured.
#[derive(Debug)]
pub struct Report {
    wan_rtt: Duration,
    rate: u32,
    /// Phase 1: no switchovers.
    baseline: History,
    /// Phase 2: the same load during the switchovers.
    planned: History,
    /// Each switchover's write-hold window, sorted.
    holds: Vec<Duration>,
    rolled_back: usize,
    /// Phase 3 (`None`: skipped): command start to the first write
    /// acknowledged at the survivor, if one was within 30 s.
    forced_to_write: Option<Option<Duration>>,
}

/// Runs the three phases on an ensemble of its own, torn down at the end.
pub async fn run(b: &FailoverBench) -> anyhow::Result<Report> {
    eprintln!("starting the ensemble (etcd, 2 Postgres sites, order services, routers, replicators; WAN {})", ms(b.wan_rtt));
    let exe = std::env::current_exe().context("finding the ezone binary")?;
    let mut lab = LabSpec::new(&["beijing", "shanghai"]);
    lab.wan_rtt = b.wan_rtt;
    let ens = scenario::start(exe, lab, 2, |_| {}).await?;
    let t0 = ens.initial_topology().clone();

    eprintln!(
        "phase 1: baseline, {} orders/s for {:?}",
        b.rate, b.baseline
    );
    let wl = scenario::traffic(&ens, &format!("fbbase{}", std::process::id()), b.rate)?;
    tokio::time::sleep(b.baseline).await;
    let base = wl.stop().await;

    eprintln!(
        "phase 2: {} planned switchovers under the same load",
        b.switchovers
    );
    let wl = scenario::traffic(&ens, &format!("fbplan{}", std::process::id()), b.rate)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sites = scenario::pg_sites();
    let quiet = |_p| {};
    let shards: Vec<u32> = t0.shards.keys().copied().collect();
    let mut holds = Vec::new();
    let mut rolled_back = 0;
    for i in 0..b.switchovers {
        let shard = shards[i as usize % shards.len()];
        let store = ens.store().await?;
        let cur = store.load().await?.topology.shards[&shard].clone();
        let to = if cur.home == "beijing" {
            "shanghai"
        } else {
            "beijing"
        };
        let (out, took) = scenario::switch(&ens, &sites, shard, to, &quiet).await?;
        match out {
            Outcome::Done { hold } => holds.push(hold.unwrap_or(took)),
            Outcome::RolledBack { reason, .. } => {
                rolled_back += 1;
                eprintln!("  shard {shard} rolled back: {reason}");
            }
            Outcome::AlreadyThere => {}
        }
        tokio::time::sleep(b.gap).await;
    }
    let planned = wl.stop().await;
    holds.sort();

    let mut forced_to_write = None;
    if !b.no_forced {
        eprintln!("phase 3: forced failover of beijing (its Postgres killed)");
        let city = ens
            .city_homed_at("beijing")
            .context("no city is homed at beijing")?;
        ens.kill("beijing", Part::Postgres)?;
        let store = ens.store().await?;
        let t = store.load().await?.topology;
        let plan = plan_site(&t, "beijing", "shanghai", Mode::Forced, &[])?;
        let started = Instant::now();
        let opts = Options::new("ezone bench failover");
        force_moves(
            &store,
            &sites,
            "beijing",
            "shanghai",
            &plan.moves,
            &opts,
            &|_p| {},
        )
        .await?;
        let router = ens.router_http("shanghai")?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let mut n = 0;
        loop {
            n += 1;
            let id = format!("fbforced{}-{n}", std::process::id());
            if place_once(&client, router, &city, &id)
                .await
                .is_some_and(|s| (200..300).contains(&s))
            {
                forced_to_write = Some(started.elapsed());
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    ens.teardown().await?;
    Ok(Report {
        wan_rtt: b.wan_rtt,
        rate: b.rate,
        baseline: base,
        planned,
        holds,
        rolled_back,
        forced_to_write: (!b.no_forced).then_some(forced_to_write),
    })
}

impl Report {
    /// The tables `ezone bench failover` prints.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let (base, planned, holds) = (&self.baseline, &self.planned, &self.holds);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nezone bench failover: 2 sites, WAN round trip {}, {} orders/s through both routers",
            ms(self.wan_rtt),
            self.rate
        );
        let _ = writeln!(
            out,
            "\n{:<22} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10}",
            "write latency", "orders", "failed", "retries", "p50", "p99", "max"
        );
        row(&mut out, "baseline (no flips)", base);
        row(&mut out, "during switchovers", planned);
        if let (Some(b0), Some(p0)) = (base.latencies(), planned.latencies()) {
            let _ = writeln!(
                out,
                "{:<22} {:>8} {:>8} {:>8} {:>9.2}x {:>9.2}x {:>9.2}x",
                "ratio",
                "",
                "",
                "",
                p0.p50.as_secs_f64() / b0.p50.as_secs_f64().max(1e-9),
                p0.p99.as_secs_f64() / b0.p99.as_secs_f64().max(1e-9),
                p0.max.as_secs_f64() / b0.max.as_secs_f64().max(1e-9)
            );
        }
        let _ = writeln!(
            out,
            "\nwrite-hold window per planned switchover ({} done, {} rolled back): p50 {}  p99 {}  max {}  (target p99 < 1 s)",
            holds.len(),
            self.rolled_back,
            ms(pct(holds, 0.5)),
            ms(pct(holds, 0.99)),
            ms(holds.last().copied().unwrap_or_default())
        );
        match self.forced_to_write {
            Some(Some(d)) => {
                let _ = writeln!(
                    out,
                    "forced failover: command start -> first write acknowledged at the survivor: {}",
                    ms(d)
                );
            }
            None => {}
            Some(None) => {
                let _ = writeln!(
                    out,
                    "forced failover: no write succeeded at the survivor within 30 s"
                );
            }
        }
        out
    }
}
