//! `ezone demo` (what `make demo` runs): the whole system on this machine.
//! etcd, two Postgres sites with the fence, an order service, a router and a
//! replicator per site, 30 ms WAN between the sites; order traffic for every
//! city through both routers with a live line; beijing's shards switched to
//! shanghai and back, planned; then the verification report: writes
//! acknowledged, lost (must be 0), sites identical, dual writes (must be
//! 0), the write-hold window of each switchover, and replication lag.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use ezone_chaos::check::{homes_of, record_homes};
use ezone_topology::failover::driver::Outcome;
use ezone_topology::TopologyStore;

use crate::cmd::failover::printer;
use crate::cmd::scenario::{self, ms};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Orders per second through the routers.
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Shards per site in the starter topology.
    #[arg(long, default_value_t = 2)]
    pub shards_per_site: u32,
    /// Round trips of beijing's shards to shanghai and back.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Seconds of traffic before, between and after the switchovers.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub pause: Duration,
    /// WAN round-trip time between the sites.
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    pub wan_rtt: Duration,
    /// Where the lab lives (default: a temp dir, removed at the end).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
    /// Keep everything running after the report until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    println!(
        "== ezone demo: sites beijing and shanghai, {} WAN round trip",
        ms(a.wan_rtt)
    );
    println!("== starting etcd, Postgres per site (with the fence), order services, routers, replicators");
    let ens = scenario::start(
        &["beijing", "shanghai"],
        a.shards_per_site,
        a.wan_rtt,
        a.dir.clone(),
    )
    .await?;
    for s in ens.sites() {
        println!(
            "   {s:<9} router http://{}  orders http://{}  postgres {}",
            ens.router_http(&s)?,
            ens.orders_addr(&s)?,
            ens.dsn(&s)?
        );
    }
    println!(
        "   etcd {}  (up in {:.1} s)",
        ens.etcd_endpoints().join(","),
        start.elapsed().as_secs_f64()
    );
    let t0 = ens.initial_topology().clone();
    let mut homes = homes_of(&t0);
    println!(
        "\n== topology: {} shards, {} cities",
        t0.shards.len(),
        t0.routing.cities.len()
    );
    for s in t0.shards.values() {
        let cities: Vec<&str> = t0
            .routing
            .cities
            .iter()
            .filter(|(_, id)| **id == s.id)
            .map(|(c, _)| c.as_str())
            .collect();
        println!(
            "   shard {:>2}: home {:<9} epoch {}  cities {}",
            s.id,
            s.home,
            s.epoch,
            cities.join(" ")
        );
    }

    println!(
        "\n== traffic: {} orders/s for every city, through both routers (live line every second)",
        a.rate
    );
    let wl = scenario::traffic(&ens, &format!("demo{}", std::process::id()), a.rate)?;
    let live = scenario::live_line(wl.progress_handle(), start);
    let (lag, lag_task) = scenario::lag_sampler(&ens);
    tokio::time::sleep(a.pause).await;

    let moving: Vec<u32> = t0
        .shards
        .values()
        .filter(|s| s.home == "beijing")
        .map(|s| s.id)
        .collect();
    let sites = scenario::pg_sites();
    let observe = printer(start);
    let mut holds: BTreeMap<u32, Vec<Duration>> = BTreeMap::new();
    let mut problems = Vec::new();
    for round in 1..=a.rounds {
        for (to, what) in [
            ("shanghai", "beijing's shards to shanghai"),
            ("beijing", "and back to beijing"),
        ] {
            println!("\n== round {round}: planned switchover of {what}");
            for &shard in &moving {
                let (out, took) = scenario::switch(&ens, &sites, shard, to, &observe).await?;
                match out {
                    Outcome::Done { hold } => {
                        let h = hold.unwrap_or(took);
                        println!(
                            "   shard {shard} -> {to}: done in {}, writes held {}",
                            ms(took),
                            ms(h)
                        );
                        holds.entry(shard).or_default().push(h);
                    }
                    Outcome::AlreadyThere => println!("   shard {shard}: already at {to}"),
                    Outcome::RolledBack { reason, .. } => {
                        println!("   shard {shard}: ROLLED BACK: {reason}");
                        problems.push(format!("shard {shard} rolled back: {reason}"));
                    }
                }
                let snap = ens.store().await?.load().await?;
                record_homes(&mut homes, &snap.topology);
            }
            tokio::time::sleep(a.pause).await;
        }
    }

    println!("\n== stopping traffic; waiting for the sites to converge");
    let history = wl.stop().await;
    live.abort();
    lag_task.abort();
    let converge = Instant::now();
    let sums = ens.wait_converged(Duration::from_secs(60)).await;
    if let Err(e) = &sums {
        problems.push(format!("sites did not converge: {e}"));
    }
    let converged_in = converge.elapsed();
    let report = ens.verify(&scenario::ops(&history), Some(&homes)).await?;

    println!("\n== verification report");
    let lat = history.latencies();
    println!(
        "requests:      {} sent, {} acknowledged, {} failed, {} retries",
        history.outcomes.len(),
        history.acked().len(),
        history.failed().len(),
        history.retries()
    );
    for (why, n) in history.retry_reasons() {
        println!("   retried {n} time(s) on: {why}");
    }
    if let Some(l) = lat {
        println!(
            "write latency: p50 {}  p99 {}  p99.9 {}  max {}",
            ms(l.p50),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
    }
    println!("{report}");
    println!("switchover write-hold window (freeze CAS -> active at the new home):");
    for (shard, hs) in &holds {
        let list: Vec<String> = hs.iter().map(|h| ms(*h)).collect();
        println!("   shard {shard:>2}: {}", list.join(", "));
    }
    let all: Vec<Duration> = holds.values().flatten().copied().collect();
    if let Some(max) = all.iter().max() {
        println!("   max {}", ms(*max));
    }
    println!("replication lag (each replicator's /metrics, sampled twice a second under traffic):");
    for (link, l) in lag.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!(
            "   {link:<20} max {:.3} s, max {:.0} bytes behind ({} samples)",
            l.max_seconds, l.max_bytes, l.samples
        );
    }
    println!(
        "   sites identical {} after traffic stopped",
        ms(converged_in)
    );
    if !history.failed().is_empty() {
        problems.push(format!("{} requests failed", history.failed().len()));
    }
    if !report.is_ok() {
        problems.push("the data checks failed (see the report)".into());
    }
    if a.keep {
        println!(
            "\neverything is still running (Ctrl-C to stop): try `ezone status --etcd {}`",
            ens.etcd_endpoints().join(",")
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    ens.teardown().await?;
    if problems.is_empty() {
        println!("\ndemo OK in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    } else {
        bail!("demo FAILED: {}", problems.join("; "))
    }
}
