//! `ezone demo` (what `make demo` runs): the whole system on this machine.
//! etcd, two Postgres sites with the fence, an order service, a router and a
//! replicator per site, 30 ms WAN between the sites; order traffic for every
//! city through both routers with a live line; beijing's shards switched to
//! shanghai and back, planned; then the verification report: writes
//! acknowledged, lost (must be 0), sites identical, dual writes (must be
//! 0), the write-hold window of each switchover, and replication lag.
//!
//! Without `--dir` everything lives in a temp dir, removed at the end. With
//! `--dir DIR` (which must be missing or empty):
//! - the demo records its processes in `DIR/lab.json` while it runs (itself,
//!   etcd, the postmasters, and each site's router, order service and
//!   replicator), so `ezone lab status --dir DIR` lists them and
//!   `ezone lab down --dir DIR` stops them (the demo first: on SIGTERM or
//!   SIGINT it stops everything it started and exits);
//! - when it stops its processes itself (at the end, on an error, or when
//!   interrupted) it removes `lab.json`, so a later `lab down` finds nothing
//!   running;
//! - everything it wrote stays in `DIR`: the logs, the ensemble's configs,
//!   etcd's and Postgres's data. Its last lines list the logs. A second
//!   demo on the same `DIR` is refused until the directory is removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use ezone_chaos::check::{homes_of, record_homes};
use ezone_chaos::ensemble::Ensemble;
use ezone_chaos::lab::{Lab, LabProcess, LabSpec, LabState, Role};
use ezone_chaos::process::ProcessRecord;
use ezone_chaos::scenario;
use ezone_orders::workload::ProgressHandle;
use ezone_topology::failover::driver::Outcome;
use ezone_topology::TopologyStore;
use nix::sys::signal::Signal;

use crate::cmd::failover::printer;
use crate::cmd::lab::interrupted;

/// The demo's sites.
const SITES: &[&str] = &["beijing", "shanghai"];
/// How deep under `--dir` the closing list of logs looks.
const LOG_DEPTH: usize = 3;

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
    /// Where the lab lives, missing or empty: its processes are recorded in
    /// DIR/lab.json while it runs (for `ezone lab status|down --dir DIR`),
    /// and its logs and data stay there after it exits. Default: a temp
    /// dir, removed at the end.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Keep everything running after the report until Ctrl-C (or SIGTERM,
    /// or `ezone lab down --dir DIR`).
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(a: DemoArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let dir = match &a.dir {
        Some(d) => Some(claim_dir(d)?),
        None => None,
    };
    let result = demo(&a, dir.as_deref(), start).await;
    if let Some(d) = &dir {
        print_kept(d);
    }
    result
}

async fn demo(a: &DemoArgs, dir: Option<&Path>, start: Instant) -> anyhow::Result<()> {
    println!(
        "== ezone demo: sites beijing and shanghai, {} WAN round trip",
        ms(a.wan_rtt)
    );
    println!("== starting etcd, Postgres per site (with the fence), order services, routers, replicators");
    // Declared before the ensemble: dropped after it, once its processes
    // are gone.
    let record = dir.map(StateFile::new);
    let body = async {
        let mut spec = LabSpec::new(SITES);
        spec.wan_rtt = a.wan_rtt;
        spec.dir = dir.map(Path::to_path_buf);
        spec.keep_files = dir.is_some();
        let lab = Lab::start(spec).await.context("starting the lab")?;
        if let Some(r) = &record {
            r.save(lab.state())?;
        }
        let exe = std::env::current_exe().context("finding the ezone binary")?;
        let ens = scenario::ensemble_on(exe, lab, a.shards_per_site, |_| {}).await?;
        if let Some(r) = &record {
            r.save(ens.state())?;
        }
        let problems = drive(&ens, a, start).await?;
        anyhow::Ok((ens, problems))
    };
    // Interrupted, the body is dropped, and with it whatever it started.
    let (ens, problems) = tokio::select! {
        r = body => r?,
        () = interrupted() => bail!("interrupted; the demo stopped everything it had started"),
    };
    if a.keep {
        let down = match dir {
            Some(d) => format!(", or `ezone lab down --dir {}`", d.display()),
            None => String::new(),
        };
        println!(
            "\neverything is still running (Ctrl-C to stop{down}): try `ezone status {}`",
            ens.etcd_cli_args().join(" ")
        );
        interrupted().await;
    }
    let torn = ens.teardown().await;
    if let Some(r) = record {
        match &torn {
            Ok(()) => r.remove()?,
            // Something may still run: lab.json stays for `ezone lab down`.
            Err(_) => r.disarm(),
        }
    }
    torn?;
    if problems.is_empty() {
        println!("\ndemo OK in {:.1} s", start.elapsed().as_secs_f64());
        Ok(())
    } else {
        bail!("demo FAILED: {}", problems.join("; "))
    }
}

/// Everything between the start and the teardown: traffic, switchovers and
/// the verification report; the problems found.
async fn drive(ens: &Ensemble, a: &DemoArgs, start: Instant) -> anyhow::Result<Vec<String>> {
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
    let wl = scenario::traffic(ens, &format!("demo{}", std::process::id()), a.rate)?;
    let live = live_line(wl.progress_handle(), start);
    let (lag, lag_task) = scenario::lag_sampler(ens);
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
                let (out, took) = scenario::switch(ens, &sites, shard, to, &observe).await?;
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
    Ok(problems)
}

/// Prints a traffic line every second until dropped (aborted).
fn live_line(p: ProgressHandle, start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = p.get();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = p.get();
            eprintln!(
                "[{:>8.3}s] traffic: {:>5} orders/s acked, total sent {} acked {} failed {} retried {} in flight {}",
                start.elapsed().as_secs_f64(),
                now.acked.saturating_sub(last.acked),
                now.sent,
                now.acked,
                now.failed,
                now.retried,
                now.in_flight
            );
            last = now;
        }
    })
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `--dir`, absolute, if the demo may use it: missing or empty. A running
/// lab or demo there, or the files an earlier demo kept, are refused with
/// what to do.
pub(crate) fn claim_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir)
        .with_context(|| format!("cannot resolve --dir {}", dir.display()))?;
    if let Some(state) = LabState::load(&dir)? {
        let alive: Vec<String> = state
            .alive()
            .iter()
            .map(|p| p.record.pid.to_string())
            .collect();
        if !alive.is_empty() {
            bail!(
                "a lab or demo is running in {} (pids {}): stop it with `ezone lab down --dir {}`, \
                 or pick another --dir",
                dir.display(),
                alive.join(", "),
                dir.display()
            );
        }
    }
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "--dir {} is not empty (an earlier `ezone demo --dir` keeps its logs and \
                     data there): remove it (`rm -rf {}`) or pick another --dir",
                    dir.display(),
                    dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| format!("cannot use --dir {}", dir.display()));
        }
    }
    Ok(dir)
}

/// `DIR/lab.json` while the demo runs: saved as its processes come up (the
/// demo itself first, so `ezone lab down` stops it before the rest), and
/// removed once the demo has stopped them: by [`StateFile::remove`] after
/// the teardown, or on drop (after a failure or an interruption, by then
/// the dropped ensemble has killed its processes).
struct StateFile {
    dir: PathBuf,
    armed: bool,
}

impl StateFile {
    fn new(dir: &Path) -> Self {
        StateFile {
            dir: dir.to_path_buf(),
            armed: true,
        }
    }

    fn save(&self, state: LabState) -> anyhow::Result<()> {
        let demo = LabProcess {
            role: Role::Demo,
            site: None,
            record: ProcessRecord::this_process("ezone demo", Signal::SIGTERM),
        };
        state.with_owner(demo).save()?;
        Ok(())
    }

    fn remove(mut self) -> anyhow::Result<()> {
        self.armed = false;
        let path = LabState::path(&self.dir);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        }
    }

    /// Leave `lab.json` for `ezone lab down`.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(LabState::path(&self.dir));
        }
    }
}

/// The closing lines with `--dir`: what was kept, and where the logs are.
pub(crate) fn print_kept(dir: &Path) {
    println!(
        "\nfiles kept in {}: logs, the ensemble's configs, etcd's and Postgres's data \
         (remove the directory when done)",
        dir.display()
    );
    if LabState::path(dir).exists() {
        println!(
            "some processes may still run: `ezone lab status --dir {0}`, `ezone lab down --dir {0}`",
            dir.display()
        );
    }
    let mut logs = Vec::new();
    log_files(dir, LOG_DEPTH, &mut logs);
    logs.sort();
    println!("logs:");
    for l in &logs {
        println!("   {}", l.display());
    }
}

/// `*.log` files under `dir`, `depth` levels down, skipping data dirs.
fn log_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(kind) = e.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if depth > 0 && e.file_name() != "data" {
                log_files(&path, depth - 1, out);
            }
        } else if path.extension().is_some_and(|x| x == "log") {
            out.push(path);
        }
    }
}
