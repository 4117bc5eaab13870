//! `ezone failover`: move shards between sites, planned (zero loss) or
//! forced (the old home is lost). The protocol is the topology crate's
//! driver (`topology/src/failover/driver.rs`) on real Postgres
//! (`replicator/src/site_ops.rs`); this module parses the command, shows the
//! plan, renders progress, and turns Ctrl-C into a clean abort. Also
//! `history` (the switchovers and forced failovers on record, from the
//! operation records and the shards' epoch histories) and `close-forced`
//! (closing a forced failover's record once its conflicts are repaired).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ezone_replicator::site_ops::PgSites;
use ezone_topology::failover::driver::{
    force_moves, forced_name, now_ms, preflight, switch_shard, unfinished, DriveError,
    ForcedRecord, Options, Outcome, Progress, Record,
};
use ezone_topology::failover::plan::{parse_shard_list, plan_shards, plan_site, Mode, Plan};
use ezone_topology::failover::Step;
use ezone_topology::history::{EpochEntry, ShardHistory, Transition};
use ezone_topology::{ShardId, ShardState, TopologyStore};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;

use crate::cmd::redact::redact_dsn;
use crate::cmd::topo::{parse_site_dsn, StoreArgs};

/// How long a site's Postgres may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// Confirm a --force without being asked (for scripts). On a terminal,
    /// --force otherwise asks for the name of the site failed away from;
    /// elsewhere it is refused.
    #[arg(long)]
    pub yes: bool,
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
    /// Past and in-progress switchovers and forced failovers, newest first:
    /// when, which shards, from -> to, each step with its duration, outcome.
    History(HistoryArgs),
    /// Close SITE's forced-failover record once the conflicts it left are
    /// repaired (`ezone status` shows an open one). Refused while conflicts
    /// are pending at SITE or at the site that took its shards.
    CloseForced {
        /// The site that was failed away from.
        site: String,
        #[command(flatten)]
        store: StoreArgs,
        /// A site's Postgres DSN instead of the topology's (SITE=DSN; repeatable).
        #[arg(long = "dsn", value_parser = parse_site_dsn)]
        dsns: Vec<(String, String)>,
    },
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Show at most this many, the most recent.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print a JSON array (newest first) instead of text.
    #[arg(long)]
    pub json: bool,
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
        eprintln!("[{t:>8.3}s] {}", progress_line(&p, None));
    }
}

/// As [`printer`], for a forced failover of `from`'s shards to `to`: its
/// site-level steps (the lease wait, opening the survivor's fence) are
/// shown as the site's, not as a shard's.
fn forced_printer(start: Instant, from: String, to: String) -> impl Fn(Progress) + Send + Sync {
    move |p: Progress| {
        let t = start.elapsed().as_secs_f64();
        eprintln!("[{t:>8.3}s] {}", progress_line(&p, Some((&from, &to))));
    }
}

/// One progress line. In a forced failover (`forced`: from, to) the driver
/// labels each shard's own step `shard N: ...`; a step labelled otherwise
/// is the site's and is shown under `from -> to`.
pub(crate) fn progress_line(p: &Progress, forced: Option<(&str, &str)>) -> String {
    let who = |shard: ShardId, label: &str| -> (String, String) {
        let Some((from, to)) = forced else {
            return (format!("shard {shard}"), label.to_string());
        };
        match label.strip_prefix(&format!("shard {shard}: ")) {
            Some(rest) => (format!("shard {shard}"), rest.to_string()),
            None => (format!("{from} -> {to}"), label.to_string()),
        }
    };
    match p {
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
        Progress::Step { shard, label } => {
            let (w, l) = who(*shard, label);
            format!("{w}:   .. {l}")
        }
        Progress::StepDone { shard, label, took } => {
            let (w, l) = who(*shard, label);
            format!("{w}:   ok {l} ({})", ms(*took))
        }
        Progress::Waiting {
            shard,
            what,
            elapsed,
        } => format!(
            "shard {shard}:   .. still waiting ({:.1} s): {what}",
            elapsed.as_secs_f64()
        ),
        Progress::Note { shard, text } => format!("shard {shard}:   !! {text}"),
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
    let result = match c {
        FailoverCommand::History(args) => show_history(args).await,
        FailoverCommand::CloseForced { site, store, dsns } => {
            close_forced(&site, &store, &dsns).await
        }
        FailoverCommand::Shard { shards, common } => match parse_shard_list(&shards) {
            Ok(set) => move_shards(common, Pick::Shards(set)).await,
            Err(e) => Err(anyhow::Error::msg(e)),
        },
        FailoverCommand::Site { site, common } => move_shards(common, Pick::Site(site)).await,
    };
    // A DSN (from the topology or --dsn) never shows its password.
    result.map_err(|e| anyhow!(super::redact::describe(&e)))
}

async fn move_shards(common: Common, pick: Pick) -> anyhow::Result<()> {
    // Simulated crashes for the tests (FAILPOINTS=switchover.frozen=return).
    // FAILPOINTS=... (a build with the `failpoints` feature only).
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    let stdin_tty = std::io::stdin().is_terminal();
    // A forced failover from a script must say --yes: refused before
    // anything is read or changed.
    if common.force && !common.dry_run {
        if let Confirm::Refuse(why) = confirm_forced(stdin_tty, common.yes, None, "") {
            bail!(why);
        }
    }
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
    let overrides: HashMap<String, String> = common.dsns.iter().cloned().collect();
    let sites = Arc::new(PgSites::new(overrides.clone()));
    let mut opts = Options::new(&holder());
    opts.timeout = common.timeout;
    opts.stall = common.stall_timeout;
    opts.lock_ttl = common.lock_ttl;
    opts.lock_wait = common.lock_ttl * 3;
    if common.dry_run {
        let verdict = dry_run(&plan, t, &sites, &overrides, &opts).await;
        eprintln!("dry run: nothing changed");
        return verdict;
    }
    // A forced failover of this site whose command died before the
    // survivor opened: finish it (its shards are no longer homed here, so
    // the plan is empty).
    let resume_forced = match (&pick, mode) {
        (Pick::Site(site), Mode::Forced) => store
            .read_op(&forced_name(site))
            .await?
            .and_then(|b| serde_json::from_slice::<ForcedRecord>(&b).ok())
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
    if mode == Mode::Forced {
        let mut lost: BTreeSet<&str> = plan.moves.iter().map(|m| m.from.as_str()).collect();
        if let Some(from) = &resume_forced {
            lost.insert(from);
        }
        for site in lost {
            confirm_on_terminal(stdin_tty, common.yes, site, &plan.to).await?;
        }
    }
    let start = Instant::now();
    let results = match mode {
        Mode::Planned => {
            let observe = printer(start);
            run_planned(&store, &sites, &plan, &opts, common.parallel, &observe).await
        }
        Mode::Forced => run_forced(&store, &sites, &plan, resume_forced, &opts, start).await?,
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

/// What to do about a forced failover's confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Confirm {
    /// Go on.
    Proceed,
    /// Ask the operator to type the site's name, then decide again with it.
    Ask,
    /// Stop, changing nothing, with this message.
    Refuse(String),
}

/// The confirmation of a forced failover away from `site`: `--yes` goes on;
/// otherwise stdin must be a terminal, where the operator types the site's
/// name (`typed`, once asked).
pub(crate) fn confirm_forced(is_tty: bool, yes: bool, typed: Option<&str>, site: &str) -> Confirm {
    if yes {
        return Confirm::Proceed;
    }
    if !is_tty {
        return Confirm::Refuse(
            "a forced failover must be confirmed, and stdin is not a terminal to ask on: nothing changed; \
             pass --yes to confirm it from a script"
                .into(),
        );
    }
    match typed.map(str::trim) {
        None => Confirm::Ask,
        Some(t) if t == site => Confirm::Proceed,
        Some("") => Confirm::Refuse(format!(
            "nothing typed (the site's name is {site}): nothing changed"
        )),
        Some(t) => Confirm::Refuse(format!(
            "typed {t:?}, not the site's name {site:?}: nothing changed"
        )),
    }
}

/// Asks on the terminal (when it must) before a forced failover away from
/// `site` changes anything.
async fn confirm_on_terminal(is_tty: bool, yes: bool, site: &str, to: &str) -> anyhow::Result<()> {
    let mut typed: Option<String> = None;
    loop {
        match confirm_forced(is_tty, yes, typed.as_deref(), site) {
            Confirm::Proceed => return Ok(()),
            Confirm::Refuse(why) => bail!(why),
            Confirm::Ask => {
                eprint!(
                    "\nFORCED failover: {site}'s shards move to {to} without consulting {site}; \
                     its writes that have not reached {to} become conflicts when it returns.\n\
                     Type the name of the site being failed away from ({site}) to go on: "
                );
                let line = tokio::task::spawn_blocking(|| {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).map(|_| line)
                })
                .await
                .context("reading the confirmation")?
                .context("reading the confirmation")?;
                typed = Some(line);
            }
        }
    }
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
    start: Instant,
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
        let observe = forced_printer(start, from.clone(), plan.to.clone());
        let rec = force_moves(
            store,
            sites.as_ref(),
            &from,
            &plan.to,
            &moves,
            opts,
            &observe,
        )
        .await
        .map_err(|e| match e {
            // The driver's site-level refusals carry no shard.
            DriveError::Refused { shard: 0, detail } if detail.starts_with("site ") => {
                anyhow!(detail)
            }
            e => anyhow::Error::new(e),
        })
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
            "when {from} returns, it is fenced first (its replicator reconciles on start); its writes after that point arrive at {} as conflicts: `ezone conflicts list`; once they are repaired, `ezone failover close-forced {from}` closes this record",
            plan.to
        );
        for (shard, _, _) in rec.shards {
            results.push((shard, Ok(Outcome::Done { hold: None })));
        }
    }
    Ok(results)
}

/// A site's Postgres DSN: the `--dsn` override, else the topology's.
fn site_dsn(
    t: &ezone_topology::Topology,
    overrides: &HashMap<String, String>,
    name: &str,
) -> Option<String> {
    overrides
        .get(name)
        .cloned()
        .or_else(|| t.sites.get(name).map(|s| s.postgres.clone()))
}

/// Connects to a site's Postgres and asks it one thing; why not, if not
/// (never with the DSN's password).
async fn probe(dsn: &str) -> Result<(), String> {
    let client = super::pg::connect(dsn, PROBE_TIMEOUT).await?;
    match tokio::time::timeout(PROBE_TIMEOUT, client.simple_query("SELECT 1")).await {
        Err(_) => Err(format!(
            "connected, but no answer to a query within {PROBE_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(redact_dsn(&ezone_replicator::chain(&e))),
        Ok(Ok(_)) => Ok(()),
    }
}

/// `--dry-run`: whether each site involved (every old home, and the target)
/// answers; then, for a planned switchover, the preflight of every shard
/// whose sites answered (the checks a real run makes before freezing it,
/// marker round trip included). An error naming every unreachable site and
/// why, or the failed checks; nothing is ever changed.
async fn dry_run(
    plan: &Plan,
    t: &ezone_topology::Topology,
    sites: &PgSites,
    overrides: &HashMap<String, String>,
    opts: &Options,
) -> anyhow::Result<()> {
    eprintln!("checks:");
    if plan.moves.is_empty() {
        eprintln!("  nothing to move: no site to check");
        return Ok(());
    }
    let lost: BTreeSet<&str> = plan.moves.iter().map(|m| m.from.as_str()).collect();
    let mut involved = lost.clone();
    involved.insert(plan.to.as_str());
    let probes = involved.iter().map(|name| async move {
        let answer = match site_dsn(t, overrides, name) {
            Some(dsn) => probe(&dsn).await,
            None => Err("not in the topology and no --dsn given".to_string()),
        };
        (*name, answer)
    });
    let mut unreachable: Vec<(&str, String)> = Vec::new();
    for (name, answer) in futures::future::join_all(probes).await {
        match answer {
            Ok(()) => eprintln!("  {name}: Postgres reachable"),
            Err(why) => {
                eprintln!("  {name}: Postgres NOT reachable: {why}");
                unreachable.push((name, why));
            }
        }
    }
    let down: BTreeSet<&str> = unreachable.iter().map(|(n, _)| *n).collect();
    let mut ok = true;
    if plan.mode == Mode::Planned {
        for mv in &plan.moves {
            if down.contains(mv.from.as_str()) || down.contains(mv.to.as_str()) {
                eprintln!(
                    "  shard {}: preflight not run: {} is unreachable",
                    mv.shard,
                    if down.contains(mv.from.as_str()) {
                        &mv.from
                    } else {
                        &mv.to
                    }
                );
                continue;
            }
            for check in preflight(sites, t, mv.shard, &mv.from, &mv.to, opts).await {
                ok &= check.ok;
                eprintln!("  shard {}: {check}", mv.shard);
            }
        }
    }
    if plan.mode == Mode::Forced && !down.contains(plan.to.as_str()) {
        // The lost site being unreachable is what a forced failover is for:
        // the dry run says so and succeeds; only the survivor must answer.
        for (name, _) in &unreachable {
            eprintln!(
                "  {name}: unreachable, as a lost site may be: a forced failover goes ahead without it \
                 (its writes that had not crossed become conflicts when it returns)"
            );
        }
        unreachable.clear();
    }
    if !unreachable.is_empty() {
        let named = unreachable
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect::<Vec<_>>()
            .join("; ");
        let what_now = match plan.mode {
            Mode::Planned if unreachable.iter().any(|(n, _)| lost.contains(n)) => format!(
                "a planned switchover now would be refused; if {} is lost, `--force` moves its shards without it \
                 (its writes that have not crossed become conflicts)",
                unreachable
                    .iter()
                    .filter(|(n, _)| lost.contains(n))
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Mode::Planned => format!(
                "a planned switchover now would be refused: {} must be reachable",
                plan.to
            ),
            Mode::Forced => format!(
                "a forced failover now would fail: {} must be reachable to take the shards",
                plan.to
            ),
        };
        bail!("unreachable: {named}: {what_now}");
    }
    if !ok {
        bail!("the preflight failed (see above): a switchover now would be refused");
    }
    Ok(())
}

/// Planned (a switchover) or forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpKind {
    Planned,
    Forced,
}

/// How an operation ended, as far as the records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OpOutcome {
    Done,
    RolledBack,
    /// A planned switchover cut short by a forced failover.
    Superseded,
    InProgress,
    /// Its epochs are on record but not how it ended (a tool, a hand edit,
    /// or a command that died before writing its record).
    Unknown,
}

/// One step of an operation: when it was reached and how long it took
/// (until the next step; none when that is not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OpStep {
    pub step: String,
    pub what: String,
    pub at_ms: u64,
    pub took_ms: Option<u64>,
}

/// A switchover of one shard, or a forced failover of a site's shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Operation {
    pub kind: OpKind,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub shards: Vec<ShardId>,
    pub from: String,
    /// None: not recorded (a rolled-back switchover whose record a later
    /// one of the shard replaced).
    pub to: Option<String>,
    pub outcome: OpOutcome,
    /// The step it is at, while in progress.
    pub step: Option<String>,
    /// Why it rolled back, or what else the record says.
    pub detail: Option<String>,
    pub holder: Option<String>,
    /// Planned: how long the shard's writes were held (freeze to flip or
    /// rollback).
    pub hold_ms: Option<u64>,
    /// Empty when the step times are no longer kept (a switchover's record
    /// holds the shard's latest one only; its epochs stay).
    pub steps: Vec<OpStep>,
    /// Forced: how far the survivor had applied the lost site's WAL.
    pub divergence_lsn: Option<String>,
    /// Forced: the record is open (`ezone status` shows it) until
    /// `close-forced`.
    pub open: Option<bool>,
    pub closed_at_ms: Option<u64>,
    pub closed_by: Option<String>,
}

impl Operation {
    fn new(kind: OpKind, started_at_ms: u64, shards: Vec<ShardId>, from: &str) -> Operation {
        Operation {
            kind,
            started_at_ms,
            ended_at_ms: None,
            shards,
            from: from.into(),
            to: None,
            outcome: OpOutcome::Unknown,
            step: None,
            detail: None,
            holder: None,
            hold_ms: None,
            steps: Vec::new(),
            divergence_lsn: None,
            open: None,
            closed_at_ms: None,
            closed_by: None,
        }
    }
}

/// The shards' epoch entries from `list_ops("epochs/")` (names
/// `epochs/{shard}/{epoch}`), by shard, in epoch order.
pub(crate) fn epochs_by_shard(
    raw: &BTreeMap<String, Vec<u8>>,
) -> BTreeMap<ShardId, Vec<EpochEntry>> {
    let mut by: BTreeMap<ShardId, Vec<EpochEntry>> = BTreeMap::new();
    for (name, bytes) in raw {
        let Some(shard) = name
            .strip_prefix("epochs/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(s, _)| s.parse::<ShardId>().ok())
        else {
            continue;
        };
        if let Ok(e) = serde_json::from_slice::<EpochEntry>(bytes) {
            by.entry(shard).or_default().push(e);
        }
    }
    by.into_iter()
        .map(|(shard, es)| (shard, ShardHistory::new(es).entries().to_vec()))
        .collect()
}

/// What a planned switchover does in a step (by the step's recorded name).
fn step_what(step: &str, from: &str, to: &str) -> String {
    match step {
        "start" => format!("freeze at {from} (CAS frozen)"),
        "frozen" => format!("close {from}'s fence"),
        "fenced" => format!("marker in {from}'s WAL"),
        "catching_up" => format!("wait for link {from}->{to} to apply the marker"),
        "opening" => format!("open {to}'s fence ahead of the flip"),
        "flipping" => format!("flip: home {to}, active (CAS)"),
        "done" => format!("confirm {to}'s fence is open"),
        "rolling_back" => format!("roll back: home {from}, active (CAS)"),
        "rolled_back" => format!("reconcile the fences of {from} and {to}"),
        other => other.to_string(),
    }
}

/// A switchover record's steps, each lasting until the next one (the last
/// until the record finished, when that is recorded).
fn steps_of(r: &Record) -> Vec<OpStep> {
    let sw = &r.switchover;
    r.history
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let end = match r.history.get(i + 1) {
                Some(next) => Some(next.at_ms),
                None if r.finished => r.finished_at_ms,
                None => None,
            };
            OpStep {
                step: m.step.clone(),
                what: step_what(&m.step, &sw.from, &sw.to),
                at_ms: m.at_ms,
                took_ms: end.map(|e| e.saturating_sub(m.at_ms)),
            }
        })
        .collect()
}

/// Fills `op` from a switchover's record (which the epochs cannot say:
/// the target of a rollback, the steps, the holder, the reason).
fn apply_record(op: &mut Operation, r: &Record) {
    let sw = &r.switchover;
    op.to = Some(sw.to.clone());
    op.holder = Some(r.holder.clone());
    op.steps = steps_of(r);
    if let Some(first) = r.history.first() {
        if first.at_ms > 0 && (op.started_at_ms == 0 || first.at_ms < op.started_at_ms) {
            op.started_at_ms = first.at_ms;
        }
    }
    op.step = None;
    op.detail = None;
    match &sw.step {
        Step::Done if r.finished => op.outcome = OpOutcome::Done,
        Step::RolledBack { reason } => {
            op.outcome = if reason.starts_with("superseded") {
                OpOutcome::Superseded
            } else {
                OpOutcome::RolledBack
            };
            op.detail = Some(reason.clone());
        }
        _ => {
            op.outcome = OpOutcome::InProgress;
            op.step = Some(sw.step_name().to_string());
            if let Step::RollingBack { reason } = &sw.step {
                op.detail = Some(reason.clone());
            }
        }
    }
    if op.outcome != OpOutcome::InProgress {
        op.ended_at_ms = r
            .finished_at_ms
            .or(r.active_at_ms)
            .or(op.ended_at_ms)
            .or(r.history.last().map(|m| m.at_ms));
    } else {
        op.ended_at_ms = None;
    }
    if let Some(h) = r.hold() {
        op.hold_ms = Some(h.as_millis() as u64);
    }
}

/// A shard's forced move, from its epochs.
struct ForcedMove {
    shard: ShardId,
    before: u64,
    from: String,
    to: String,
    take_ms: u64,
    open_ms: Option<u64>,
}

/// Every switchover and forced failover the store remembers, newest first:
/// the shards' epoch histories say what happened (each freeze and what
/// followed it, each forced take and open), the operation records add the
/// detail they keep (a switchover's steps, holder and reason: the latest
/// one of each shard; a forced failover's divergence point: the latest one
/// of each site).
pub(crate) fn build_history(
    epochs: &BTreeMap<ShardId, Vec<EpochEntry>>,
    records: &[Record],
    forced: &[ForcedRecord],
) -> Vec<Operation> {
    let mut planned: Vec<((ShardId, u64), Operation)> = Vec::new();
    let mut moves: Vec<ForcedMove> = Vec::new();
    for (&shard, es) in epochs {
        let mut i = 0;
        while i < es.len() {
            let e = &es[i];
            let next = es.get(i + 1);
            let prev_home = i.checked_sub(1).map(|p| es[p].home.clone());
            match (e.how, e.state) {
                (Transition::Freeze, _) => {
                    let mut op = Operation::new(OpKind::Planned, e.at_ms, vec![shard], &e.home);
                    let mut used = 1;
                    match next {
                        Some(n) if n.how == Transition::Flip => {
                            op.to = Some(n.home.clone());
                            op.outcome = OpOutcome::Done;
                            op.ended_at_ms = Some(n.at_ms);
                            op.hold_ms = Some(n.at_ms.saturating_sub(e.at_ms));
                            used = 2;
                        }
                        Some(n) if n.how == Transition::Rollback => {
                            op.outcome = OpOutcome::RolledBack;
                            op.ended_at_ms = Some(n.at_ms);
                            op.hold_ms = Some(n.at_ms.saturating_sub(e.at_ms));
                            used = 2;
                        }
                        Some(n) if n.how == Transition::Forced => {
                            op.outcome = OpOutcome::Superseded;
                            op.detail = Some("superseded by a forced failover".into());
                            op.ended_at_ms = Some(n.at_ms);
                        }
                        Some(_) => op.outcome = OpOutcome::Unknown,
                        None => {
                            op.outcome = OpOutcome::InProgress;
                            op.step = Some("frozen".into());
                        }
                    }
                    planned.push(((shard, e.epoch.saturating_sub(1)), op));
                    i += used;
                }
                (Transition::Forced, ShardState::Frozen) => {
                    let open_ms = next
                        .filter(|n| {
                            n.how == Transition::Forced
                                && n.state == ShardState::Active
                                && n.home == e.home
                        })
                        .map(|n| n.at_ms);
                    moves.push(ForcedMove {
                        shard,
                        before: e.epoch.saturating_sub(1),
                        from: prev_home.unwrap_or_else(|| "?".into()),
                        to: e.home.clone(),
                        take_ms: e.at_ms,
                        open_ms,
                    });
                    i += if open_ms.is_some() { 2 } else { 1 };
                }
                // Forced failovers from before the two phases: taken active.
                (Transition::Forced, ShardState::Active) => {
                    moves.push(ForcedMove {
                        shard,
                        before: e.epoch.saturating_sub(1),
                        from: prev_home.unwrap_or_else(|| "?".into()),
                        to: e.home.clone(),
                        take_ms: e.at_ms,
                        open_ms: Some(e.at_ms),
                    });
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
    let mut out: Vec<Operation> = Vec::new();
    for r in records {
        let key = (r.switchover.shard, r.switchover.epoch);
        match planned.iter_mut().find(|(k, _)| *k == key) {
            Some((_, op)) => apply_record(op, r),
            None => {
                let started = r
                    .history
                    .first()
                    .map(|m| m.at_ms)
                    .or(r.frozen_at_ms)
                    .unwrap_or(0);
                let mut op = Operation::new(
                    OpKind::Planned,
                    started,
                    vec![r.switchover.shard],
                    &r.switchover.from,
                );
                apply_record(&mut op, r);
                out.push(op);
            }
        }
    }
    out.extend(planned.into_iter().map(|(_, op)| op));
    for f in forced {
        let (mine, rest): (Vec<ForcedMove>, Vec<ForcedMove>) = moves.into_iter().partition(|m| {
            m.from == f.from
                && m.to == f.to
                && f.shards
                    .iter()
                    .any(|&(s, before, _)| s == m.shard && before == m.before)
        });
        moves = rest;
        let mut shards: Vec<ShardId> = f.shards.iter().map(|&(s, _, _)| s).collect();
        shards.sort_unstable();
        shards.dedup();
        let take_start = mine.iter().map(|m| m.take_ms).min();
        let open_end = mine.iter().filter_map(|m| m.open_ms).max();
        let mut op = Operation::new(
            OpKind::Forced,
            take_start.unwrap_or(f.at_ms),
            shards,
            &f.from,
        );
        op.to = Some(f.to.clone());
        op.holder = Some(f.holder.clone());
        op.divergence_lsn = f.divergence_lsn.clone();
        op.detail = f
            .divergence_error
            .as_ref()
            .map(|e| format!("divergence point not read: {e}"));
        op.steps.push(OpStep {
            step: "take".into(),
            what: format!("CAS each shard to home {}, frozen", f.to),
            at_ms: op.started_at_ms,
            took_ms: take_start.map(|t| f.at_ms.saturating_sub(t)),
        });
        if f.opens_at_ms > 0 {
            op.steps.push(OpStep {
                step: "lease_lapse".into(),
                what: format!(
                    "wait for {}'s fence lease to lapse (lease + clock skew)",
                    f.from
                ),
                at_ms: f.at_ms,
                took_ms: Some(f.opens_at_ms.saturating_sub(f.at_ms)),
            });
        }
        if f.opened {
            let at = if f.opens_at_ms > 0 {
                f.opens_at_ms
            } else {
                f.at_ms
            };
            op.steps.push(OpStep {
                step: "open".into(),
                what: format!("CAS each shard active at {}, open its fence", f.to),
                at_ms: at,
                took_ms: open_end.map(|e| e.saturating_sub(at)),
            });
            op.outcome = OpOutcome::Done;
            op.ended_at_ms = open_end.or(Some(at));
            op.open = Some(f.closed_at_ms.is_none());
        } else {
            op.outcome = OpOutcome::InProgress;
            op.step = Some("lease_lapse".into());
            op.open = Some(true);
        }
        op.closed_at_ms = f.closed_at_ms;
        op.closed_by = f.closed_by.clone();
        out.push(op);
    }
    // Forced moves whose record a later forced failover of the site
    // replaced: one operation per site pair and burst of takes.
    moves.sort_by(|a, b| (&a.from, &a.to, a.take_ms).cmp(&(&b.from, &b.to, b.take_ms)));
    let mut groups: Vec<Vec<ForcedMove>> = Vec::new();
    for m in moves {
        match groups.last_mut() {
            Some(g)
                if g[0].from == m.from
                    && g[0].to == m.to
                    && m.take_ms.saturating_sub(g[g.len() - 1].take_ms) <= 60_000 =>
            {
                g.push(m)
            }
            _ => groups.push(vec![m]),
        }
    }
    for g in groups {
        let mut shards: Vec<ShardId> = g.iter().map(|m| m.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        let take = g.iter().map(|m| m.take_ms).min().unwrap_or(0);
        let mut op = Operation::new(OpKind::Forced, take, shards, &g[0].from);
        op.to = Some(g[0].to.clone());
        op.steps.push(OpStep {
            step: "take".into(),
            what: format!("CAS each shard to home {}, frozen", g[0].to),
            at_ms: take,
            took_ms: None,
        });
        if g.iter().all(|m| m.open_ms.is_some()) {
            let first = g.iter().filter_map(|m| m.open_ms).min().unwrap_or(take);
            op.steps.push(OpStep {
                step: "open".into(),
                what: format!("CAS each shard active at {}", g[0].to),
                at_ms: first,
                took_ms: None,
            });
            op.outcome = OpOutcome::Done;
            op.ended_at_ms = g.iter().filter_map(|m| m.open_ms).max();
        }
        op.detail = Some("its record was replaced by a later forced failover of the site".into());
        out.push(op);
    }
    out.sort_by(|a, b| {
        b.started_at_ms
            .cmp(&a.started_at_ms)
            .then_with(|| a.shards.cmp(&b.shards))
    });
    out
}

/// `1,2,3,5` -> `1-3,5`.
fn shard_list(ids: &[ShardId]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        out.push(if j > i + 1 {
            format!("{}-{}", ids[i], ids[j])
        } else if j == i + 1 {
            format!("{},{}", ids[i], ids[j])
        } else {
            ids[i].to_string()
        });
        i = j + 1;
    }
    out.join(",")
}

/// A time (ms since the Unix epoch) as RFC 3339 UTC with milliseconds.
pub(crate) fn when(at_ms: u64) -> String {
    if at_ms == 0 {
        return "(time not recorded)".into();
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at_ms))
        .to_string()
}

fn ms_u64(v: u64) -> String {
    ms(Duration::from_millis(v))
}

/// The text `ezone failover history` prints (`now_ms`: for how long an
/// operation in progress has been at its step).
pub(crate) fn format_history(ops: &[Operation], now_ms: u64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if ops.is_empty() {
        out.push_str("no switchovers or forced failovers on record\n");
        return out;
    }
    for (n, op) in ops.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let (kind, which) = match op.kind {
            OpKind::Planned => ("planned", shards_word(&op.shards)),
            OpKind::Forced => (
                "FORCED ",
                format!("site {} ({})", op.from, shards_word(&op.shards)),
            ),
        };
        let to = op.to.as_deref().unwrap_or("?");
        let outcome = match op.outcome {
            OpOutcome::Done => "done".to_string(),
            OpOutcome::RolledBack => format!(
                "ROLLED BACK{}",
                op.detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            OpOutcome::Superseded => format!(
                "superseded{}",
                op.detail
                    .as_ref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default()
            ),
            OpOutcome::InProgress => {
                let since = op.steps.last().map(|s| s.at_ms).unwrap_or(op.started_at_ms);
                format!(
                    "IN PROGRESS at step {} (for {})",
                    op.step.as_deref().unwrap_or("?"),
                    ms_u64(now_ms.saturating_sub(since))
                )
            }
            OpOutcome::Unknown => "outcome not recorded".to_string(),
        };
        let _ = write!(
            out,
            "{}  {kind}  {which}  {} -> {to}  {outcome}",
            when(op.started_at_ms),
            op.from
        );
        if let Some(end) = op.ended_at_ms {
            if op.started_at_ms > 0 {
                let _ = write!(
                    out,
                    ", took {}",
                    ms_u64(end.saturating_sub(op.started_at_ms))
                );
            }
        }
        if let Some(h) = op.hold_ms {
            let _ = write!(out, ", writes held {}", ms_u64(h));
        }
        if let Some(lsn) = &op.divergence_lsn {
            let _ = write!(out, ", divergence point {lsn}");
        }
        out.push('\n');
        if let Some(h) = &op.holder {
            let _ = writeln!(out, "    by {h}");
        }
        if op.kind == OpKind::Forced {
            match (&op.closed_at_ms, op.open) {
                (Some(at), _) => {
                    let _ = writeln!(
                        out,
                        "    closed {} by {}",
                        when(*at),
                        op.closed_by.as_deref().unwrap_or("?")
                    );
                }
                (None, Some(true)) => {
                    let _ = writeln!(
                        out,
                        "    open: `ezone status` shows it until `ezone failover close-forced {}` (after the conflicts are repaired)",
                        op.from
                    );
                }
                _ => {}
            }
            if op.outcome != OpOutcome::RolledBack {
                if let Some(d) = &op.detail {
                    let _ = writeln!(out, "    note: {d}");
                }
            }
        }
        if op.steps.is_empty() {
            let _ = writeln!(
                out,
                "    (step times not kept: a later switchover of the shard replaced its record)"
            );
        }
        let last = op.steps.len().saturating_sub(1);
        for (i, s) in op.steps.iter().enumerate() {
            let took = match s.took_ms {
                Some(t) => ms_u64(t),
                None if i == last && op.outcome == OpOutcome::InProgress => {
                    format!("{}..", ms_u64(now_ms.saturating_sub(s.at_ms)))
                }
                None => "-".into(),
            };
            let _ = writeln!(out, "    {:<13} {:>10}  {}", s.step, took, s.what);
        }
    }
    out
}

fn shards_word(ids: &[ShardId]) -> String {
    if ids.len() == 1 {
        format!("shard {}", ids[0])
    } else {
        format!("shards {}", shard_list(ids))
    }
}

async fn show_history(args: HistoryArgs) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let records: Vec<Record> = store
        .list_ops("switchover/")
        .await
        .context("reading the switchover records")?
        .values()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    let forced: Vec<ForcedRecord> = store
        .list_ops("forced/")
        .await
        .context("reading the forced-failover records")?
        .values()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect();
    let epochs = epochs_by_shard(
        &store
            .list_ops("epochs/")
            .await
            .context("reading the shards' epoch histories")?,
    );
    let mut ops = build_history(&epochs, &records, &forced);
    ops.truncate(args.limit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ops)?);
    } else {
        print!("{}", format_history(&ops, now_ms()));
    }
    Ok(())
}

/// Whether SITE's forced-failover record can be closed at all (before the
/// conflicts are counted).
pub(crate) fn closable(site: &str, rec: Option<&ForcedRecord>) -> Result<(), String> {
    match rec {
        None => Err(format!(
            "no forced failover of {site} is on record: nothing to close (`ezone status` lists the open ones)"
        )),
        Some(r) if r.closed_at_ms.is_some() => Err(format!(
            "the forced failover {site} -> {} was already closed {} by {}: nothing open to close",
            r.to,
            when(r.closed_at_ms.unwrap_or(0)),
            r.closed_by.as_deref().unwrap_or("?")
        )),
        Some(r) if !r.opened => Err(format!(
            "the forced failover {site} -> {} is not finished (its shards are not open at {} yet): nothing closed; \
             finish it first: `ezone failover site {site} --to {} --force --yes` (or let a replicator do it)",
            r.to, r.to, r.to
        )),
        Some(_) => Ok(()),
    }
}

/// Refuses to close SITE's forced failover while conflicts are pending, or
/// cannot be counted, at any of `counts` (site, unresolved conflicts there).
pub(crate) fn close_check(
    site: &str,
    rec: &ForcedRecord,
    counts: &[(String, Result<i64, String>)],
) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut uncounted = false;
    for (name, count) in counts {
        match count {
            Ok(0) => {}
            Ok(n) => problems.push(format!("{n} unresolved conflict(s) at {name}")),
            Err(e) => {
                uncounted = true;
                problems.push(format!("the conflicts at {name} cannot be counted: {e}"))
            }
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to close the forced failover {site} -> {}: {}; nothing closed. \
         List them with `ezone conflicts list`, repair them with `ezone conflicts resolve --site SITE ...`, then close it{}",
        rec.to,
        problems.join("; "),
        if uncounted {
            format!(
                " ({site}'s writes that had not crossed arrive at {} as conflicts only once {site} is back: both must be reachable)",
                rec.to
            )
        } else {
            String::new()
        }
    ))
}

/// Unresolved conflicts at a site, counted as `ezone conflicts list` and
/// `ezone status` count them.
async fn count_pending(dsn: &str) -> Result<i64, String> {
    let client = super::pg::connect(dsn, PROBE_TIMEOUT).await?;
    let pending = ezone_replicator::site_ops::pending_conflicts(&client)
        .await
        .map_err(|e| redact_dsn(&ezone_replicator::chain(&e)))?;
    Ok(pending.iter().map(|p| p.count).sum())
}

async fn read_forced<S: TopologyStore>(
    store: &S,
    site: &str,
) -> anyhow::Result<Option<ForcedRecord>> {
    match store.read_op(&forced_name(site)).await? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .with_context(|| format!("the record ops/{} is not valid JSON", forced_name(site))),
    }
}

async fn close_forced(
    site: &str,
    store_args: &StoreArgs,
    dsns: &[(String, String)],
) -> anyhow::Result<()> {
    let store = store_args.open().await?;
    let rec = read_forced(&store, site).await?;
    closable(site, rec.as_ref()).map_err(anyhow::Error::msg)?;
    let Some(rec) = rec else {
        unreachable!("closable refuses a missing record");
    };
    let snap = store.load().await.context("loading the topology")?;
    let overrides: HashMap<String, String> = dsns.iter().cloned().collect();
    let mut names = vec![rec.to.clone()];
    if rec.to != site {
        names.push(site.to_string());
    }
    let mut counts = Vec::new();
    for name in names {
        let count = match site_dsn(&snap.topology, &overrides, &name) {
            Some(dsn) => count_pending(&dsn).await,
            None => Err(format!("not in the topology; pass --dsn {name}=DSN")),
        };
        counts.push((name, count));
    }
    close_check(site, &rec, &counts).map_err(anyhow::Error::msg)?;
    let me = holder();
    // The lock the replicators' recovery takes before opening a forced
    // failover: nobody changes the record meanwhile.
    let lock = store
        .lock(&format!("forced-{site}"), &me, Duration::from_secs(5))
        .await
        .context("taking the forced failover's lock")?;
    let mut now = read_forced(&store, site).await?;
    if let Err(why) = closable(site, now.as_ref()) {
        lock.release().await.ok();
        bail!(why);
    }
    let Some(mut cur) = now.take() else {
        unreachable!("closable refuses a missing record");
    };
    if cur.at_ms != rec.at_ms || cur.to != rec.to {
        lock.release().await.ok();
        bail!("the forced failover of {site} changed while its conflicts were counted (another forced failover?): nothing closed; run the command again");
    }
    cur.closed_at_ms = Some(now_ms());
    cur.closed_by = Some(me);
    let written = store
        .write_op(&forced_name(site), &serde_json::to_vec(&cur)?)
        .await;
    lock.release().await.ok();
    written.context("writing the closed record")?;
    println!(
        "closed the forced failover {site} -> {} (taken {}): no conflicts pending at {}; `ezone status` no longer shows it, `ezone failover history` keeps it",
        cur.to,
        when(cur.at_ms),
        counts
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::failover::driver::StepMark;
    use ezone_topology::failover::Switchover;

    fn entry(epoch: u64, home: &str, state: ShardState, how: Transition, at_ms: u64) -> EpochEntry {
        EpochEntry {
            epoch,
            home: home.into(),
            state,
            how,
            at_ms,
        }
    }

    fn marks(steps: &[(&str, u64)]) -> Vec<StepMark> {
        steps
            .iter()
            .map(|(s, at)| StepMark {
                step: s.to_string(),
                at_ms: *at,
            })
            .collect()
    }

    fn done_record(shard: ShardId, epoch: u64, base: u64) -> Record {
        let mut sw = Switchover::new(shard, "beijing", "shanghai", epoch);
        sw.step = Step::Done;
        Record {
            switchover: sw,
            holder: "op@host pid 1".into(),
            history: marks(&[
                ("start", base),
                ("frozen", base + 8),
                ("fenced", base + 14),
                ("catching_up", base + 17),
                ("opening", base + 35),
                ("flipping", base + 39),
                ("done", base + 47),
            ]),
            frozen_at_ms: Some(base + 8),
            active_at_ms: Some(base + 47),
            finished: true,
            finished_at_ms: Some(base + 55),
        }
    }

    fn forced_record(closed: bool) -> ForcedRecord {
        ForcedRecord {
            from: "beijing".into(),
            to: "shanghai".into(),
            at_ms: 3_000_010,
            holder: "op@host pid 2".into(),
            shards: vec![(1, 5, 7), (2, 1, 3)],
            divergence_lsn: Some("0/16B3748".into()),
            divergence_error: None,
            opens_at_ms: 3_011_010,
            opened: true,
            closed_at_ms: closed.then_some(3_500_000),
            closed_by: closed.then(|| "op@host pid 3".into()),
        }
    }

    /// Shard 1: a planned switchover to shanghai and back (rolled back),
    /// then forced over; shard 2 forced over with it.
    fn sample() -> (
        BTreeMap<ShardId, Vec<EpochEntry>>,
        Vec<Record>,
        Vec<ForcedRecord>,
    ) {
        use ShardState::{Active, Frozen};
        use Transition::*;
        let mut epochs = BTreeMap::new();
        epochs.insert(
            1,
            vec![
                entry(1, "beijing", Active, Init, 1_000),
                entry(2, "beijing", Frozen, Freeze, 1_000_008),
                entry(3, "shanghai", Active, Flip, 1_000_047),
                entry(4, "shanghai", Frozen, Freeze, 2_000_000),
                entry(5, "shanghai", Active, Rollback, 2_000_900),
                entry(6, "beijing", Frozen, Forced, 3_000_000),
                entry(7, "beijing", Active, Forced, 3_011_020),
            ],
        );
        epochs.insert(
            2,
            vec![
                entry(1, "beijing", Active, Init, 1_000),
                entry(2, "shanghai", Frozen, Forced, 2_990_000),
                entry(3, "shanghai", Active, Forced, 3_001_000),
            ],
        );
        // Shard 1's record is its latest switchover: the rolled-back one.
        let mut sw = Switchover::new(1, "shanghai", "beijing", 3);
        sw.step = Step::RolledBack {
            reason: "timed out after 30s".into(),
        };
        let rolled = Record {
            switchover: sw,
            holder: "op@host pid 9".into(),
            history: marks(&[
                ("start", 1_999_990),
                ("frozen", 2_000_000),
                ("rolling_back", 2_000_800),
                ("rolled_back", 2_000_900),
            ]),
            frozen_at_ms: Some(2_000_000),
            active_at_ms: Some(2_000_900),
            finished: true,
            finished_at_ms: None,
        };
        // The forced record is from shanghai's point of view here.
        let mut f = forced_record(false);
        f.from = "shanghai".into();
        f.to = "beijing".into();
        f.shards = vec![(1, 5, 7)];
        (epochs, vec![rolled], vec![f])
    }

    #[test]
    fn history_joins_epochs_and_records() {
        let (epochs, records, forced) = sample();
        let ops = build_history(&epochs, &records, &forced);
        // Newest first: the forced failover of shanghai (shard 1), shard 2's
        // forced move of beijing (record replaced), the rollback, the flip.
        assert_eq!(ops.len(), 4, "{ops:#?}");
        assert_eq!(ops[0].kind, OpKind::Forced);
        assert_eq!(ops[0].shards, vec![1]);
        assert_eq!(
            (ops[0].from.as_str(), ops[0].to.as_deref()),
            ("shanghai", Some("beijing"))
        );
        assert_eq!(ops[0].outcome, OpOutcome::Done);
        assert_eq!(ops[0].open, Some(true));
        let steps: Vec<(&str, Option<u64>)> = ops[0]
            .steps
            .iter()
            .map(|s| (s.step.as_str(), s.took_ms))
            .collect();
        assert_eq!(
            steps,
            vec![
                ("take", Some(10)),
                ("lease_lapse", Some(11_000)),
                ("open", Some(10))
            ]
        );
        assert_eq!(ops[1].kind, OpKind::Forced);
        assert_eq!(ops[1].shards, vec![2]);
        assert_eq!(ops[1].from, "beijing");
        assert!(ops[1].detail.as_deref().unwrap_or("").contains("replaced"));
        // The rollback: its target from the record, its reason, its steps.
        assert_eq!(ops[2].kind, OpKind::Planned);
        assert_eq!(ops[2].outcome, OpOutcome::RolledBack);
        assert_eq!(ops[2].to.as_deref(), Some("beijing"));
        assert_eq!(ops[2].detail.as_deref(), Some("timed out after 30s"));
        assert_eq!(ops[2].started_at_ms, 1_999_990);
        assert_eq!(ops[2].hold_ms, Some(900));
        let took: Vec<Option<u64>> = ops[2].steps.iter().map(|s| s.took_ms).collect();
        // The record's end was not kept (an older record): the last step's
        // duration is unknown.
        assert_eq!(took, vec![Some(10), Some(800), Some(100), None]);
        // The first switchover, from its epochs alone.
        assert_eq!(ops[3].outcome, OpOutcome::Done);
        assert_eq!(ops[3].to.as_deref(), Some("shanghai"));
        assert_eq!(ops[3].hold_ms, Some(39));
        assert!(ops[3].steps.is_empty());
    }

    #[test]
    fn a_record_without_epochs_and_one_in_progress_are_listed() {
        let mut r = done_record(4, 1, 5_000);
        let mut epochs = BTreeMap::new();
        let ops = build_history(&epochs, std::slice::from_ref(&r), &[]);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].outcome, OpOutcome::Done);
        assert_eq!(ops[0].ended_at_ms, Some(5_055));
        let last = ops[0].steps.last().unwrap();
        assert_eq!((last.step.as_str(), last.took_ms), ("done", Some(8)));
        // In progress: frozen, catching up.
        r.switchover.step = Step::CatchingUp {
            marker_lsn: "0/1".into(),
        };
        r.history.truncate(4);
        r.finished = false;
        r.finished_at_ms = None;
        r.active_at_ms = None;
        epochs.insert(
            4,
            vec![entry(
                2,
                "beijing",
                ShardState::Frozen,
                Transition::Freeze,
                5_008,
            )],
        );
        let ops = build_history(&epochs, &[r], &[]);
        assert_eq!(ops.len(), 1, "{ops:#?}");
        assert_eq!(ops[0].outcome, OpOutcome::InProgress);
        assert_eq!(ops[0].step.as_deref(), Some("catching_up"));
        let text = format_history(&ops, 6_017);
        assert!(
            text.contains("IN PROGRESS at step catching_up (for 1.00 s)"),
            "{text}"
        );
        assert!(
            text.contains("1.00 s..  wait for link beijing->shanghai"),
            "{text}"
        );
    }

    #[test]
    fn history_text_shows_steps_durations_and_the_open_record() {
        let epochs = BTreeMap::new();
        let ops = build_history(
            &epochs,
            &[done_record(3, 1, 1_764_000_000_000)],
            &[forced_record(false)],
        );
        let text = format_history(&ops, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("2025-11-24T16:00:00.000Z  planned  shard 3  beijing -> shanghai  done, took 55.0 ms, writes held 39.0 ms"),
            "{text}"
        );
        assert!(text.contains("    by op@host pid 1\n"), "{text}");
        assert!(
            text.contains("    start             8.0 ms  freeze at beijing (CAS frozen)\n"),
            "{text}"
        );
        assert!(
            text.contains("    catching_up      18.0 ms  wait for link beijing->shanghai to apply the marker\n"),
            "{text}"
        );
        assert!(
            text.contains("    done              8.0 ms  confirm shanghai's fence is open\n"),
            "{text}"
        );
        assert!(
            text.contains("FORCED   site beijing (shards 1,2)  beijing -> shanghai  done, took 11.00 s, divergence point 0/16B3748"),
            "{text}"
        );
        assert!(text.contains("close-forced beijing"), "{text}");
        let closed = build_history(&epochs, &[], &[forced_record(true)]);
        let text = format_history(&closed, 0);
        assert!(
            text.contains("    closed 1970-01-01T00:58:20.000Z by op@host pid 3"),
            "{text}"
        );
        assert!(!text.contains("close-forced"), "{text}");
        assert_eq!(
            format_history(&[], 0),
            "no switchovers or forced failovers on record\n"
        );
        // JSON carries the same.
        let v = serde_json::to_value(&ops).unwrap();
        assert_eq!(v[0]["kind"], "planned");
        assert_eq!(v[0]["steps"][0]["took_ms"], 8);
        assert_eq!(v[1]["kind"], "forced");
        assert_eq!(v[1]["outcome"], "done");
    }

    #[test]
    fn shard_lists_compress_runs() {
        assert_eq!(shard_list(&[1, 2, 3, 5, 7, 8]), "1-3,5,7,8");
        assert_eq!(shard_list(&[4]), "4");
    }

    #[test]
    fn epoch_names_give_the_shard() {
        let mut raw = BTreeMap::new();
        let e = entry(3, "a", ShardState::Active, Transition::Flip, 1);
        raw.insert(
            ezone_topology::history::entry_name(12, 3),
            serde_json::to_vec(&e).unwrap(),
        );
        raw.insert("epochs/x/1".into(), b"{}".to_vec());
        raw.insert("epochs/5/00000000000000000001".into(), b"not json".to_vec());
        let by = epochs_by_shard(&raw);
        assert_eq!(by.len(), 1);
        assert_eq!(by[&12], vec![e]);
    }

    #[test]
    fn a_forced_failover_is_confirmed_by_yes_or_by_the_typed_site_name() {
        // --yes: always, terminal or not, nothing asked.
        assert_eq!(
            confirm_forced(false, true, None, "beijing"),
            Confirm::Proceed
        );
        assert_eq!(
            confirm_forced(true, true, None, "beijing"),
            Confirm::Proceed
        );
        // No terminal and no --yes: refused, naming --yes.
        match confirm_forced(false, false, None, "beijing") {
            Confirm::Refuse(why) => assert!(why.contains("--yes"), "{why}"),
            other => panic!("{other:?}"),
        }
        // A terminal: ask, then the typed name decides.
        assert_eq!(confirm_forced(true, false, None, "beijing"), Confirm::Ask);
        assert_eq!(
            confirm_forced(true, false, Some("beijing\n"), "beijing"),
            Confirm::Proceed
        );
        for wrong in ["shanghai\n", "Beijing", "y", "", "\n"] {
            match confirm_forced(true, false, Some(wrong), "beijing") {
                Confirm::Refuse(why) => assert!(why.contains("nothing changed"), "{why}"),
                other => panic!("{wrong:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn closing_a_forced_record_needs_an_open_one_and_no_pending_conflicts() {
        let why = closable("beijing", None).unwrap_err();
        assert!(why.contains("no forced failover of beijing"), "{why}");
        let why = closable("beijing", Some(&forced_record(true))).unwrap_err();
        assert!(why.contains("already closed"), "{why}");
        let mut unopened = forced_record(false);
        unopened.opened = false;
        let why = closable("beijing", Some(&unopened)).unwrap_err();
        assert!(why.contains("not finished"), "{why}");
        let open = forced_record(false);
        assert!(closable("beijing", Some(&open)).is_ok());
        let clean = [
            ("shanghai".to_string(), Ok(0)),
            ("beijing".to_string(), Ok(0)),
        ];
        assert!(close_check("beijing", &open, &clean).is_ok());
        let pending = [
            ("shanghai".to_string(), Ok(3)),
            ("beijing".to_string(), Ok(0)),
        ];
        let why = close_check("beijing", &open, &pending).unwrap_err();
        assert!(
            why.contains("3 unresolved conflict(s) at shanghai") && why.contains("nothing closed"),
            "{why}"
        );
        let down = [
            ("shanghai".to_string(), Ok(0)),
            ("beijing".to_string(), Err("connection refused".to_string())),
        ];
        let why = close_check("beijing", &open, &down).unwrap_err();
        assert!(
            why.contains("cannot be counted") && why.contains("back"),
            "{why}"
        );
    }

    #[test]
    fn site_level_forced_steps_are_not_shown_as_a_shard() {
        let forced = Some(("beijing", "shanghai"));
        let site = Progress::StepDone {
            shard: 0,
            label: "open shanghai's fence".into(),
            took: Duration::from_millis(4),
        };
        assert_eq!(
            progress_line(&site, forced),
            "beijing -> shanghai:   ok open shanghai's fence (4.0 ms)"
        );
        let own = Progress::Step {
            shard: 0,
            label: "shard 0: home shanghai, active (CAS)".into(),
        };
        assert_eq!(
            progress_line(&own, forced),
            "shard 0:   .. home shanghai, active (CAS)"
        );
        // A planned switchover's steps are always the shard's.
        let planned = Progress::Step {
            shard: 0,
            label: "close beijing's fence (waits for in-flight writes)".into(),
        };
        assert_eq!(
            progress_line(&planned, None),
            "shard 0:   .. close beijing's fence (waits for in-flight writes)"
        );
    }
}
