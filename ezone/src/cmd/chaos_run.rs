//! `ezone chaos run`: the whole system under a seeded fault schedule.
//!
//! Starts the lab and the ensemble (as `ezone demo` does, with each
//! replicator's etcd path behind the fault proxy), prints the schedule the
//! seed gives, drives order traffic through every site's router, applies
//! the schedule (`ezone_chaos::inject`), heals, waits out the quiet period,
//! and then reads every site's Postgres itself to check the invariants
//! (`ezone_chaos::check`: every acknowledged write at every site with its
//! value, sites identical, no shard accepted at two sites in one epoch).
//! Beside the orders, large transactions are written straight into the
//! sites' Postgres and streamed before their commit
//! (`ezone_chaos::scenario::bulk`): each committed one whole at every site,
//! none seen in part, no rolled-back row anywhere.
//! The last line says how to replay the run. With `--report DIR`: the
//! schedule, every fault as applied, the request history (JSON lines) and
//! the verdict.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use ezone_chaos::check::{homes_of, HomeHistory};
use ezone_chaos::inject::{self, supported, supported_kinds};
use ezone_chaos::lab::LabSpec;
use ezone_chaos::scenario;
use ezone_chaos::schedule::{schedule, FaultKind, ScheduleSpec, CLOCK_SKEW_MAX_MS};
use ezone_chaos::timeline;

use crate::cmd::chaos_report;

/// The ensemble's clock-skew bound: above every skew the schedule draws
/// (the design's promise holds inside the bound).
const CLOCK_SKEW_BOUND_MS: u64 = CLOCK_SKEW_MAX_MS + 100;

/// The sites of a run, in order (`--sites N` takes the first N).
const SITE_NAMES: [&str; 4] = ["beijing", "shanghai", "shenzhen", "chengdu"];

/// The share of acknowledged orders that then get status PATCHes (the
/// register check judges their final status).
const PATCH_RATIO: f64 = 0.3;

/// Requests in flight at most (an order and its PATCHes hold one).
const CONCURRENCY: usize = 64;

/// About how often a large transaction is written at one of the sites.
const BULK_EVERY: Duration = Duration::from_secs(4);

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
    /// How many sites (2 to 4: beijing, shanghai, shenzhen, chengdu).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=4))]
    sites: u8,
    /// From the heal to the end of the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    /// How long the sites may take to converge after the traffic stops.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    converge_within: Duration,
    /// Write the schedule, the faults as applied, the history and the
    /// verdict here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run the lab in DIR (missing or empty) and keep it there afterwards:
    /// every process's log, the configs, etcd's and each Postgres's data
    /// (a violation's conflicts and rows can be read after the run by
    /// starting that Postgres on its directory). Default: a temp dir,
    /// removed at the end.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Each site a host of its own: a network namespace with its own
    /// address and loopback, reaching the other sites only through the WAN
    /// proxy (needs root and iproute2).
    #[arg(long)]
    netns: bool,
    /// The replicators' `apply_workers`: `auto` or a count of target
    /// connections per link (a fixed count above one puts batches on
    /// several lanes under every fault) [default: the replicator's
    /// default].
    #[arg(long)]
    apply_workers: Option<ezone_replicator::config::ApplyWorkers>,
}

impl RunArgs {
    /// The command line that replays this run.
    fn replay(&self, faults: &[FaultKind]) -> String {
        format!(
            "ezone chaos run --seed {} --duration {}s --sites {} --faults {} --rate {} --quiet {}s{}{}",
            self.seed,
            self.duration.as_secs(),
            self.sites,
            faults
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(","),
            self.rate,
            self.quiet.as_secs(),
            if self.netns { " --netns" } else { "" },
            self.apply_workers
                .map(|w| format!(" --apply-workers {w}"))
                .unwrap_or_default()
        )
    }
}

/// Whether this binary can inject `kind`: killing a switchover command at a
/// step needs the failpoints compiled in.
fn built_for(kind: FaultKind) -> Result<(), &'static str> {
    if kind == FaultKind::SwitchoverKilled && !cfg!(feature = "failpoints") {
        return Err("it was built without failpoints: build it with `cargo build --features ezone/failpoints` (make does)");
    }
    Ok(())
}

pub async fn run(a: RunArgs) -> anyhow::Result<()> {
    let kinds = match &a.faults {
        Some(list) => FaultKind::parse_list(list).map_err(anyhow::Error::msg)?,
        None => supported_kinds()
            .into_iter()
            .filter(|k| built_for(*k).is_ok())
            .collect(),
    };
    for k in &kinds {
        if let Err(why) = supported(*k) {
            anyhow::bail!("fault kind {k} cannot be run yet: {why}; leave it out of --faults");
        }
        if let Err(why) = built_for(*k) {
            anyhow::bail!("fault kind {k} cannot be run by this ezone: {why}");
        }
    }
    anyhow::ensure!(
        a.quiet < a.duration,
        "--quiet ({:?}) leaves no time for faults in --duration ({:?})",
        a.quiet,
        a.duration
    );
    let sites = &SITE_NAMES[..usize::from(a.sites).clamp(2, SITE_NAMES.len())];
    let mut spec = ScheduleSpec::new(a.seed, a.duration, sites);
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
    // Three etcd members, as production runs them: a member lost is no
    // outage, two lost is one (the etcd faults need them).
    let kept = match &a.dir {
        Some(d) => Some(super::demo::claim_dir(d)?),
        None => None,
    };
    let mut lab = LabSpec::new(sites);
    lab.dir = kept.clone();
    lab.keep_files = kept.is_some();
    lab.wan_rtt = Duration::from_millis(30);
    lab.etcd_members = 3;
    // Each site's processes under libfaketime (the clock-skew fault).
    lab.clock_skew = true;
    if a.netns {
        lab.network = ezone_chaos::netns::Network::Namespaces;
    }
    let exe = std::env::current_exe().context("finding the ezone binary")?;
    let ens = scenario::start(&exe, lab, 2, |es| {
        es.replicator_etcd_links = true;
        es.clock_skew_ms = CLOCK_SKEW_BOUND_MS;
        es.bulk = true;
        es.apply_workers = a.apply_workers.map(|w| w.to_string());
    })
    .await?;
    let homes_at_start = homes_of(ens.initial_topology());
    let wl = scenario::traffic_with(&ens, &format!("chaos{}", a.seed), a.rate, |w| {
        w.seed = a.seed;
        w.patch_ratio = PATCH_RATIO;
        // An order keeps its slot through its PATCHes.
        w.concurrency = CONCURRENCY;
    })?;
    let bulk = scenario::bulk::start(ens.dsns(), a.seed, BULK_EVERY);
    let start = tokio::time::Instant::now();
    let note = |line: String| eprintln!("{line}");
    let applied = inject::apply(&ens, &sched, &exe, start, &note).await;
    tokio::time::sleep_until(start + spec.heal_at()).await;
    eprintln!("{:>8.3}s  heal", start.elapsed().as_secs_f64());
    let heal_at = start.elapsed();
    let heal_problems = inject::heal(&ens).await;
    // The quiet period runs from the heal as it happened: an undo that took
    // long (etcd regaining quorum, a forced failover's repair) delays the
    // heal, and liveness needs the whole quiet period of traffic after it.
    let end = (start + a.duration).max(start + heal_at + a.quiet);
    tokio::time::sleep_until(end).await;
    let history = wl.stop().await;
    let bulk_log = bulk.stop().await;
    let converged = ens.wait_converged(a.converge_within).await;
    let bulk_report = scenario::bulk::check(&ens.dsns(), &bulk_log, a.converge_within).await;
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
    let report = ens.verify(&scenario::ops(&history), Some(&homes)).await?;
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
    verdict.push_str(&bulk_report.to_string());
    // Forced failovers: the writes at risk are the conflicts recorded.
    let writes = chaos_report::answered_writes(&history);
    let mut forced_ok = true;
    for rec in applied.iter().filter_map(|x| x.forced.as_ref()) {
        let (lines, ok) = chaos_report::judge_forced(rec, &writes);
        forced_ok &= ok;
        for l in lines {
            verdict.push_str(&l);
            verdict.push('\n');
        }
    }
    // Liveness: every city takes writes again soon after the heal.
    let samples = chaos_report::samples(&history);
    let bound = chaos_report::liveness_bound(a.quiet);
    let live = timeline::liveness(
        &samples,
        ens.cities().into_iter().map(|(c, _)| c),
        heal_at,
        bound,
    );
    verdict.push_str(&format!(
        "liveness: every router ready and every link streaming after the heal: {}; \
         a write acknowledged for every city within {:.0}s of the heal: {}\n",
        if heal_problems.is_empty() {
            "yes"
        } else {
            "NO"
        },
        bound.as_secs_f64(),
        if live.is_ok() { "yes" } else { "NO" }
    ));
    for v in live.violations() {
        verdict.push_str(&format!("  {v}\n"));
    }
    let windows = timeline::window_counts(&samples, &chaos_report::windows(&applied));
    verdict.push_str("answers per fault window (requests in flight during it):\n");
    verdict.push_str(&timeline::render_window_table(&windows));
    if !verdict.ends_with('\n') {
        verdict.push('\n');
    }
    let ok = report.is_ok()
        && bulk_report.is_ok()
        && converged.is_ok()
        && heal_problems.is_empty()
        && forced_ok
        && live.is_ok();
    verdict.push_str(&format!(
        "run verdict: {} (seed {})\n",
        if ok { "OK" } else { "VIOLATION" },
        a.seed
    ));
    print!("{verdict}");
    let replay = a.replay(&kinds);
    if let Some(d) = &report_dir {
        // For `ezone chaos sweep` and scripts: the verdict in one object.
        let mut violations: Vec<String> = Vec::new();
        if !report.is_ok() {
            violations.extend(
                report
                    .to_string()
                    .lines()
                    .filter(|l| l.starts_with("  - ") || l.contains("NO"))
                    .take(20)
                    .map(|l| l.trim().to_string()),
            );
            if violations.is_empty() {
                violations.push("the checker's verdict: FAILED".into());
            }
        }
        if let Err(e) = &converged {
            violations.push(format!("sites did not converge: {e}"));
        }
        violations.extend(heal_problems.iter().map(|p| format!("heal: {p}")));
        violations.extend(
            bulk_report
                .violations
                .iter()
                .take(20)
                .map(|v| format!("large transactions: {v}")),
        );
        violations.extend(live.violations());
        if !forced_ok {
            violations.push("a forced failover's at-risk writes differ from its conflicts".into());
        }
        let summary = serde_json::json!({
            "seed": a.seed,
            "ok": ok,
            "requests": history.outcomes.len(),
            "acked": history.acked().len(),
            "faults_applied": applied.len(),
            "faults_not_clean": failed_faults,
            "kinds": sched.kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
            "violations": violations,
            "replay": replay,
        });
        std::fs::write(d.join("summary.json"), summary.to_string())?;
        // What each forced failover saw, to re-judge it by hand: the
        // survivor's rows when it opened, the conflicts, the times.
        for (i, rec) in applied.iter().filter_map(|x| x.forced.as_ref()).enumerate() {
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let json = serde_json::json!({
                "lost": rec.lost,
                "survivor": rec.survivor,
                "killed_ms": ms(rec.killed_at),
                "opened_ms": rec.opened_at.map(ms),
                "returned_ms": rec.returned_at.map(ms),
                "notes": rec.notes,
                "conflicts": rec.conflicts.iter().map(|c| serde_json::json!({
                    "id": c.conflict, "order": c.order, "op": c.op, "kept": c.kept,
                })).collect::<Vec<_>>(),
                "survivor_rows": rec.survivor_rows.as_ref().map(|rows| rows.iter().map(|r| {
                    serde_json::json!([r.id, r.status, r.site, r.fence_epoch])
                }).collect::<Vec<_>>()),
            });
            std::fs::write(d.join(format!("forced-{i}.json")), json.to_string())?;
        }
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
            let line = o.to_json();
            writeln!(lines, "{line}")?;
        }
        std::fs::write(d.join("verdict.txt"), &verdict)?;
        let title = format!("ezone chaos run --seed {}", a.seed);
        match chaos_report::svg(&history, &applied, a.duration, heal_at, &title) {
            Ok(svg) => std::fs::write(d.join("timeline.svg"), svg)?,
            Err(e) => eprintln!("the timeline could not be drawn: {e}"),
        }
    }
    ens.teardown().await?;
    if let Some(d) = &kept {
        super::demo::print_kept(d);
    }
    if ok {
        println!("replay: {replay}");
        Ok(())
    } else {
        anyhow::bail!("violation under seed {}; replay: {replay}", a.seed)
    }
}
