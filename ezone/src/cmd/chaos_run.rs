//! `ezone chaos run`: the whole system under a seeded fault schedule.
//!
//! Starts the lab and the ensemble (as `ezone demo` does, with each
//! replicator's etcd path behind the fault proxy), prints the schedule the
//! seed gives, drives order traffic through every site's router, applies
//! the schedule (`ezone_chaos::inject`), heals, waits out the quiet period,
//! and then reads every site's Postgres itself to check the invariants
//! (`ezone_chaos::check`: every acknowledged write at every site with its
//! value, sites identical, no shard accepted at two sites in one epoch).
//! The last line says how to replay the run. With `--report DIR`: the
//! schedule, every fault as applied, the request history (JSON lines) and
//! the verdict.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ezone_chaos::check::{homes_of, HomeHistory};
use ezone_chaos::inject::{self, supported, supported_kinds};
use ezone_chaos::schedule::{schedule, FaultKind, ScheduleSpec};

use crate::cmd::scenario;

/// `ezone chaos run ...`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[arg(long)]
    seed: u64,
    /// The whole run, the quiet period at its end included.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated; default: every kind the injector
    /// supports (`ezone chaos schedule` lists them all).
    #[arg(long)]
    faults: Option<String>,
    /// Orders per second through the routers.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// From the heal to the end of the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// Write the schedule, the faults as applied, the history and the
    /// verdict here.
    #[arg(long)]
    report: Option<PathBuf>,
}

impl RunArgs {
    /// The command line that replays this run.
    fn replay(&self, faults: &[FaultKind]) -> String {
        format!(
            "ezone chaos run --seed {} --duration {}s --faults {} --rate {} --quiet {}s",
            self.seed,
            self.duration.as_secs(),
            faults
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(","),
            self.rate,
            self.quiet.as_secs()
        )
    }
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let kinds = match &a.faults {
        Some(list) => FaultKind::parse_list(list).map_err(anyhow::Error::msg)?,
        None => supported_kinds(),
    };
    for k in &kinds {
        if let Err(why) = supported(*k) {
            anyhow::bail!("fault kind {k} cannot be run yet: {why}; leave it out of --faults");
        }
    }
    anyhow::ensure!(
        a.quiet < a.duration,
        "--quiet ({:?}) leaves no time for faults in --duration ({:?})",
        a.quiet,
        a.duration
    );
    let sites = ["beijing", "shanghai"];
    let mut spec = ScheduleSpec::new(a.seed, a.duration, &sites);
    spec.kinds = kinds.clone();
    spec.quiet = a.quiet;
    let sched = schedule(&spec);
    print!("{sched}");
    let report_dir = a.report.clone();
    if let Some(d) = &report_dir {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(d.join("schedule.txt"), sched.to_string())?;
    }
    eprintln!("== starting the ensemble");
    let ens = scenario::start_with(&sites, 2, Duration::from_millis(30), None, |es| {
        es.replicator_etcd_links = true;
    })
    .await?;
    let exe = std::env::current_exe().context("finding the ezone binary")?;
    let homes_at_start = homes_of(ens.initial_topology());
    let wl = scenario::traffic(&ens, &format!("chaos{}", a.seed), a.rate)?;
    let start = tokio::time::Instant::now();
    let note = |line: String| eprintln!("{line}");
    let applied = inject::apply(&ens, &sched, &exe, start, &note).await;
    tokio::time::sleep_until(start + spec.heal_at()).await;
    eprintln!("{:>8.3}s  heal", start.elapsed().as_secs_f64());
    let heal_problems = inject::heal(&ens).await;
    tokio::time::sleep_until(start + a.duration).await;
    let history = wl.stop().await;
    let converged = ens.wait_converged(Duration::from_secs(60)).await;
    // Every epoch a shard had during the run, from the topology store's
    // history (written with each swap), plus the initial topology.
    let mut homes: HomeHistory = homes_at_start;
    let store = ens.store().await?;
    for shard in ens.initial_topology().shards.keys() {
        let h = ezone_topology::history::read(&store, *shard).await?;
        for e in h.entries() {
            homes
                .entry(*shard)
                .or_default()
                .insert(e.epoch, e.home.clone());
        }
    }
    let acked = scenario::acked_writes(&history);
    let report = ens.verify(&acked, Some(&homes)).await?;
    let failed_faults: Vec<String> = applied
        .iter()
        .filter_map(|x| {
            x.outcome
                .as_ref()
                .err()
                .map(|e| format!("{}: {e}", x.fault))
        })
        .collect();
    let mut verdict = String::new();
    verdict.push_str(&format!(
        "requests: {} answered, {} acknowledged, {} failed\n",
        history.outcomes.len(),
        history.acked().len(),
        history.failed().len()
    ));
    verdict.push_str(&format!("faults applied: {}\n", applied.len()));
    for f in &failed_faults {
        verdict.push_str(&format!("  fault not applied cleanly: {f}\n"));
    }
    for p in &heal_problems {
        verdict.push_str(&format!("  heal: {p}\n"));
    }
    if let Err(e) = &converged {
        verdict.push_str(&format!("sites did not converge: {e}\n"));
    }
    verdict.push_str(report.to_string().trim_end());
    verdict.push('\n');
    let ok = report.is_ok() && converged.is_ok() && heal_problems.is_empty();
    verdict.push_str(&format!(
        "run verdict: {} (seed {})\n",
        if ok { "OK" } else { "VIOLATION" },
        a.seed
    ));
    print!("{verdict}");
    if let Some(d) = &report_dir {
        let mut faults = std::fs::File::create(d.join("faults.txt"))?;
        for x in &applied {
            writeln!(
                faults,
                "{:>8.3}s..{:>8.3}s  {}  {}",
                x.started.as_secs_f64(),
                x.ended.as_secs_f64(),
                x.fault,
                match &x.outcome {
                    Ok(t) => t.clone(),
                    Err(e) => format!("ERROR {e}"),
                }
            )?;
        }
        let mut lines = std::fs::File::create(d.join("history.jsonl"))?;
        for o in &history.outcomes {
            let line = serde_json::json!({
                "id": o.id,
                "city": o.city,
                "router": o.target.to_string(),
                "invoke_ms": o.started.as_secs_f64() * 1e3,
                "complete_ms": o.finished().as_secs_f64() * 1e3,
                "attempts": o.attempts,
                "status": o.status,
                "acked": o.acked,
                "body": o.body,
            });
            writeln!(lines, "{line}")?;
        }
        std::fs::write(d.join("verdict.txt"), &verdict)?;
    }
    ens.teardown().await?;
    let replay = a.replay(&kinds);
    if ok {
        println!("replay: {replay}");
        Ok(())
    } else {
        anyhow::bail!("violation under seed {}; replay: {replay}", a.seed)
    }
}
