//! `ezone failover`: move shards between sites, planned (zero loss) or
//! forced (the old home is lost). The protocol is the topology crate's
//! driver (`topology/src/failover/driver.rs`) on real Postgres
//! (`replicator/src/site_ops.rs`); this module parses the command, shows the
//! plan, renders progress, and turns Ctrl-C into a clean abort.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ezone_replicator::site_ops::PgSites;
use ezone_topology::failover::driver::{
    force_moves, preflight, switch_shard, unfinished, Options, Outcome, Progress,
};
use ezone_topology::failover::plan::{parse_shard_list, plan_shards, plan_site, Mode, Plan};
use ezone_topology::TopologyStore;
use futures::StreamExt;
use tokio::sync::watch;

use crate::cmd::topo::{parse_site_dsn, StoreArgs};

#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The site to move to.
    #[arg(long)]
    pub to: String,
    /// The old home is lost: move at once, without fencing it or waiting for
    /// its writes (they arrive as conflicts when it returns).
    #[arg(long)]
    pub force: bool,
    /// Show the plan and check the sites, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How long a shard's switchover may take before it is rolled back.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// While catching up: how long the link may apply nothing before the
    /// switchover rolls back (raise it for very large transactions).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub stall_timeout: Duration,
    /// How many shards switch at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// A site's Postgres DSN instead of the topology's (SITE=DSN; repeatable).
    #[arg(long = "dsn", value_parser = parse_site_dsn)]
    pub dsns: Vec<(String, String)>,
    /// Print one JSON summary on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// The shard lock's lease: after a crash, a re-run waits this out.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, hide = true)]
    pub lock_ttl: Duration,
}

#[derive(Debug, clap::Subcommand)]
pub enum FailoverCommand {
    /// Move shards (e.g. `7`, `1,2,3`, `5-8`) to another site.
    Shard {
        /// The shards: a list and/or ranges.
        shards: String,
        #[command(flatten)]
        common: Common,
    },
    /// Move every shard homed at SITE to another site.
    Site {
        /// The site to move away from.
        site: String,
        #[command(flatten)]
        common: Common,
    },
}

fn holder() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host} pid {}", std::process::id())
}

/// Renders progress as lines on stderr, each with the time since start.
pub(crate) fn printer(start: Instant) -> impl Fn(Progress) + Send + Sync {
    move |p: Progress| {
        let t = start.elapsed().as_secs_f64();
        let line = match p {
            Progress::Begin {
                shard,
                from,
                to,
                epoch,
                resumed_at,
            } => match resumed_at {
                Some(step) => format!(
                    "shard {shard}: resuming the switchover {from} -> {to} (started at epoch {epoch}) from step {step}"
                ),
                None => format!("shard {shard}: {from} -> {to} (epoch {epoch})"),
            },
            Progress::Step { shard, label } => format!("shard {shard}:   .. {label}"),
            Progress::StepDone { shard, label, took } => {
                format!("shard {shard}:   ok {label} ({})", ms(took))
            }
            Progress::Waiting {
                shard,
                what,
                elapsed,
            } => format!("shard {shard}:   .. still waiting ({:.1} s): {what}", elapsed.as_secs_f64()),
            Progress::Note { shard, text } => format!("shard {shard}:   !! {text}"),
        };
        eprintln!("[{t:>8.3}s] {line}");
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

pub async fn run(c: FailoverCommand) -> anyhow::Result<()> {
    // Simulated crashes for the tests (FAILPOINTS=switchover.frozen=return).
    let _scenario = fail::FailScenario::setup();
    let (common, pick) = match c {
        FailoverCommand::Shard { shards, common } => {
            let set = parse_shard_list(&shards).map_err(anyhow::Error::msg)?;
            (common, Pick::Shards(set))
        }
        FailoverCommand::Site { site, common } => (common, Pick::Site(site)),
    };
    let store = common.store.open().await?;
    let snap = store
        .load()
        .await
        .context("loading the topology to plan the failover")?;
    let t = &snap.topology;
    let mode = if common.force {
        Mode::Forced
    } else {
        Mode::Planned
    };
    let pending = unfinished(&store)
        .await
        .context("reading unfinished switchovers")?;
    let plan = match &pick {
        Pick::Shards(set) => plan_shards(t, set, &common.to, mode, &pending)?,
        Pick::Site(site) => plan_site(t, site, &common.to, mode, &pending)?,
    };
    eprint!("{plan}");
    let sites = Arc::new(PgSites::new(
        common.dsns.iter().cloned().collect::<HashMap<_, _>>(),
    ));
    let mut opts = Options::new(&holder());
    opts.timeout = common.timeout;
    opts.stall = common.stall_timeout;
    opts.lock_ttl = common.lock_ttl;
    opts.lock_wait = common.lock_ttl * 3;
    if common.dry_run {
        let ok = dry_run(&plan, t, &sites, &opts).await;
        eprintln!("dry run: nothing changed");
        if !ok {
            bail!("the preflight failed (see above): a switchover now would be refused");
        }
        return Ok(());
    }
    // A forced failover of this site whose command died before the
    // survivor opened: finish it (its shards are no longer homed here, so
    // the plan is empty).
    let resume_forced = match (&pick, mode) {
        (Pick::Site(site), Mode::Forced) => store
            .read_op(&ezone_topology::failover::driver::forced_name(site))
            .await?
            .and_then(|b| {
                serde_json::from_slice::<ezone_topology::failover::driver::ForcedRecord>(&b).ok()
            })
            .filter(|r| !r.opened && r.to == plan.to)
            .map(|r| r.from),
        _ => None,
    };
    if plan.moves.is_empty() && resume_forced.is_none() {
        eprintln!("nothing to do");
        if common.json {
            println!("{}", serde_json::json!({ "shards": [] }));
        }
        return Ok(());
    }
    let start = Instant::now();
    let observe = printer(start);
    let results = match mode {
        Mode::Planned => run_planned(&store, &sites, &plan, &opts, common.parallel, &observe).await,
        Mode::Forced => run_forced(&store, &sites, &plan, resume_forced, &opts, &observe).await?,
    };
    let took = start.elapsed();
    let mut failed = 0;
    let mut summary = Vec::new();
    eprintln!("\nsummary ({} total):", ms(took));
    for (shard, r) in &results {
        let (word, hold, detail) = match r {
            Ok(Outcome::Done { hold }) => ("done", *hold, String::new()),
            Ok(Outcome::AlreadyThere) => ("already_there", None, String::new()),
            Ok(Outcome::RolledBack { reason, hold }) => {
                failed += 1;
                ("rolled_back", *hold, reason.clone())
            }
            Err(e) => {
                failed += 1;
                ("error", None, e.clone())
            }
        };
        let hold_txt = hold
            .map(|h| format!(", writes held {}", ms(h)))
            .unwrap_or_default();
        let detail_txt = if detail.is_empty() {
            String::new()
        } else {
            format!(": {detail}")
        };
        eprintln!("  shard {shard:>4}: {word}{hold_txt}{detail_txt}");
        summary.push(serde_json::json!({
            "shard": shard,
            "outcome": word,
            "hold_ms": hold.map(|h| h.as_secs_f64() * 1e3),
            "detail": detail,
        }));
    }
    if common.json {
        println!(
            "{}",
            serde_json::json!({ "mode": if common.force { "forced" } else { "planned" }, "to": plan.to, "took_ms": took.as_secs_f64() * 1e3, "shards": summary })
        );
    }
    if failed > 0 {
        bail!("{failed} shard(s) did not move (see above); the topology is consistent: each is active at its old home or can be finished by re-running the same command");
    }
    Ok(())
}

enum Pick {
    Shards(BTreeSet<u32>),
    Site(String),
}

type ShardResult = (u32, Result<Outcome, String>);

async fn run_planned(
    store: &ezone_topology::AnyStore,
    sites: &Arc<PgSites>,
    plan: &Plan,
    opts: &Options,
    parallel: usize,
    observe: &(dyn Fn(Progress) + Send + Sync),
) -> Vec<ShardResult> {
    let (abort_tx, abort) = watch::channel(false);
    // Ctrl-C: abort what has not flipped yet (rolled back to the old home,
    // active, new epoch). Switchovers past the flip finish.
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nCtrl-C: aborting; shards not yet flipped roll back to their old home (this takes a moment)");
            let _ = abort_tx.send(true);
            // Later Ctrl-Cs are ignored: stopping a rollback half way helps nobody.
            loop {
                if tokio::signal::ctrl_c().await.is_err() {
                    break;
                }
                eprintln!("still rolling back; please wait");
            }
        }
    });
    let mut results: Vec<ShardResult> = futures::stream::iter(plan.moves.iter())
        .map(|mv| {
            let abort = abort.clone();
            async move {
                let r = switch_shard(store, sites.as_ref(), mv, opts, abort, observe)
                    .await
                    .map_err(|e| e.to_string());
                (mv.shard, r)
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    ctrl_c.abort();
    results.sort_by_key(|(s, _)| *s);
    results
}

async fn run_forced(
    store: &ezone_topology::AnyStore,
    sites: &Arc<PgSites>,
    plan: &Plan,
    resume: Option<String>,
    opts: &Options,
    observe: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<Vec<ShardResult>> {
    let mut by_from: BTreeMap<String, Vec<_>> = BTreeMap::new();
    if let Some(from) = resume {
        by_from.entry(from).or_default();
    }
    for m in &plan.moves {
        by_from.entry(m.from.clone()).or_default().push(m.clone());
    }
    let mut results = Vec::new();
    for (from, moves) in by_from {
        let rec = force_moves(
            store,
            sites.as_ref(),
            &from,
            &plan.to,
            &moves,
            opts,
            observe,
        )
        .await
        .with_context(|| format!("forced failover of {from}'s shards to {}", plan.to))?;
        eprintln!(
            "forced failover {from} -> {}: divergence point: {} had applied {from}'s WAL up to {}{}",
            plan.to,
            plan.to,
            rec.divergence_lsn.as_deref().unwrap_or("(unknown)"),
            rec.divergence_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        eprintln!(
            "when {from} returns, it is fenced first (its replicator reconciles on start); its writes after that point arrive at {} as conflicts: `ezone conflicts list`",
            plan.to
        );
        for (shard, _, _) in rec.shards {
            results.push((shard, Ok(Outcome::Done { hold: None })));
        }
    }
    Ok(results)
}

/// `--dry-run`: a planned switchover's preflight for every shard (the
/// checks a real run makes before freezing it, marker round trip included);
/// for a forced one, whether each site can be reached. `false` if anything
/// a real run would refuse on failed.
async fn dry_run(
    plan: &Plan,
    t: &ezone_topology::Topology,
    sites: &PgSites,
    opts: &Options,
) -> bool {
    use ezone_topology::failover::driver::SiteOps;
    eprintln!("checks:");
    if plan.mode == Mode::Planned {
        let mut ok = true;
        for mv in &plan.moves {
            for check in preflight(sites, t, mv.shard, &mv.from, &mv.to, opts).await {
                ok &= check.ok;
                eprintln!("  shard {}: {check}", mv.shard);
            }
        }
        return ok;
    }
    let mut involved: BTreeSet<&str> = plan.moves.iter().map(|m| m.from.as_str()).collect();
    involved.insert(plan.to.as_str());
    let mut ok = true;
    for name in involved {
        let Some(site) = t.sites.get(name) else {
            continue;
        };
        match sites.marker_applied(site, "dry-run probe").await {
            Ok(_) => eprintln!("  {name}: Postgres reachable"),
            // The lost site is expected to be unreachable.
            Err(e) if name != plan.to => {
                eprintln!("  {name}: not reachable ({e}): expected of a lost site")
            }
            Err(e) => {
                ok = false;
                eprintln!("  {name}: NOT reachable: {e}");
            }
        }
    }
    ok
}
