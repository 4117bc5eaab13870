//! `ezone failover`: move shards between sites, planned (zero loss) or
//! forced (the old home is lost). The protocol is the topology crate's
//! driver (`topology/src/failover/driver.rs`), many shards at once
//! (`failover/batch.rs`), on real Postgres (`replicator/src/site_ops.rs`);
//! this module parses the command, shows the plan, renders progress, and
//! turns Ctrl-C into a clean abort. Also `history` (the switchovers and
//! forced failovers on record: `failover/operations.rs`, printed here) and
//! `close-forced` (closing a forced failover's record once its conflicts
//! are repaired: `failover/close.rs`; the conflicts are counted here).

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ezone_replicator::site_ops::PgSites;
use ezone_topology::failover::batch::{force_all, switch_all, unopened_forced, ForcedEvent};
use ezone_topology::failover::close::{self, closable, close_check, read_forced, sites_to_count};
use ezone_topology::failover::driver::{now_ms, unfinished, Options, Outcome, Progress};
use ezone_topology::failover::dry_run::{self, DryRunEvent};
use ezone_topology::failover::operations::{self, when, OpKind, OpOutcome, Operation};
use ezone_topology::failover::plan::{parse_shard_list, plan_shards, plan_site, Mode, Plan};
use ezone_topology::{ShardId, TopologyStore};
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
    let sites = PgSites::new(overrides.clone());
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
        (Pick::Site(site), Mode::Forced) => unopened_forced(&store, site, &plan.to)
            .await?
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
            let (abort, ctrl_c) = abort_on_ctrl_c();
            let observe = printer(start);
            let results = switch_all(
                &store,
                &sites,
                &plan.moves,
                &opts,
                common.parallel,
                abort,
                &observe,
            )
            .await;
            ctrl_c.abort();
            results
        }
        Mode::Forced => {
            let observe = |e: ForcedEvent<'_>| forced_event(start, e);
            force_all(
                &store,
                &sites,
                &plan,
                resume_forced.as_deref(),
                &opts,
                &observe,
            )
            .await?
        }
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
                ("error", None, e.to_string())
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

/// An abort signal that Ctrl-C turns on: what has not flipped yet rolls
/// back to its old home (active, new epoch); switchovers past the flip
/// finish. The task listening for it, to be aborted when done.
fn abort_on_ctrl_c() -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (abort_tx, abort) = watch::channel(false);
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
    (abort, ctrl_c)
}

/// Renders a forced failover's progress as [`printer`] does (its site-level
/// steps, the lease wait and opening the survivor's fence, shown as the
/// site's, not as a shard's), and each lost site's divergence point once
/// its shards are open.
fn forced_event(start: Instant, e: ForcedEvent<'_>) {
    match e {
        ForcedEvent::Progress { from, to, progress } => {
            let t = start.elapsed().as_secs_f64();
            eprintln!("[{t:>8.3}s] {}", progress_line(&progress, Some((from, to))));
        }
        ForcedEvent::Opened(rec) => {
            let (from, to) = (&rec.from, &rec.to);
            eprintln!(
                "forced failover {from} -> {to}: divergence point: {to} had applied {from}'s WAL up to {}{}",
                rec.divergence_lsn.as_deref().unwrap_or("(unknown)"),
                rec.divergence_error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
            eprintln!(
                "when {from} returns, it is fenced first (its replicator reconciles on start); its writes after that point arrive at {to} as conflicts: `ezone conflicts list`; once they are repaired, `ezone failover close-forced {from}` closes this record"
            );
        }
    }
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
    use ezone_pg::ProbeError;
    ezone_pg::probe(dsn, PROBE_TIMEOUT)
        .await
        .map_err(|e| match e {
            ProbeError::Connect(e) => redact_dsn(&ezone_replicator::chain(&e)),
            ProbeError::Query(e) => redact_dsn(&ezone_replicator::chain(&e)),
            timeout => timeout.to_string(),
        })
}

/// `--dry-run` (`failover/dry_run.rs`): each site involved probed, then
/// each planned shard's preflight; its findings printed as they come. An
/// error naming every unreachable site and why, or the failed checks;
/// nothing is ever changed.
async fn dry_run(
    plan: &Plan,
    t: &ezone_topology::Topology,
    sites: &PgSites,
    overrides: &HashMap<String, String>,
    opts: &Options,
) -> anyhow::Result<()> {
    eprintln!("checks:");
    let probe = |name: &str| {
        let dsn = site_dsn(t, overrides, name);
        async move {
            match dsn {
                Some(dsn) => probe(&dsn).await,
                None => Err("not in the topology and no --dsn given".to_string()),
            }
        }
    };
    let observe = |e: DryRunEvent<'_>| match e {
        DryRunEvent::NothingToMove => eprintln!("  nothing to move: no site to check"),
        DryRunEvent::Probed {
            site,
            answer: Ok(()),
        } => eprintln!("  {site}: Postgres reachable"),
        DryRunEvent::Probed {
            site,
            answer: Err(why),
        } => eprintln!("  {site}: Postgres NOT reachable: {why}"),
        DryRunEvent::NotRun { shard, unreachable } => {
            eprintln!("  shard {shard}: preflight not run: {unreachable} is unreachable")
        }
        DryRunEvent::Checked { shard, check } => eprintln!("  shard {shard}: {check}"),
        DryRunEvent::Excused { site } => eprintln!(
            "  {site}: unreachable, as a lost site may be: a forced failover goes ahead without it \
             (its writes that had not crossed become conflicts when it returns)"
        ),
    };
    dry_run::dry_run(plan, t, sites, opts, probe, &observe).await?;
    Ok(())
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

fn ms_u64(v: u64) -> String {
    ms(Duration::from_millis(v))
}

/// The text `ezone failover history` prints (`now_ms`: for how long an
/// operation in progress has been at its step).
fn format_history(ops: &[Operation], now_ms: u64) -> String {
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
    let mut ops = operations::read_all(&store).await?;
    ops.truncate(args.limit);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&ops)?);
    } else {
        print!("{}", format_history(&ops, now_ms()));
    }
    Ok(())
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
    let mut counts = Vec::new();
    for name in sites_to_count(site, &rec) {
        let count = match site_dsn(&snap.topology, &overrides, &name) {
            Some(dsn) => count_pending(&dsn).await,
            None => Err(format!("not in the topology; pass --dsn {name}=DSN")),
        };
        counts.push((name, count));
    }
    close_check(site, &rec, &counts).map_err(anyhow::Error::msg)?;
    let cur = close::close(&store, site, &rec, &holder()).await?;
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

    /// A planned switchover of shard 3, beijing -> shanghai, with its steps
    /// (name, at, took) and holder, as `operations::build_history` gives it.
    fn planned(
        started: u64,
        outcome: OpOutcome,
        steps: &[(&str, &str, u64, Option<u64>)],
    ) -> Operation {
        let mut op = Operation::new(OpKind::Planned, started, vec![3], "beijing");
        op.to = Some("shanghai".into());
        op.outcome = outcome;
        op.holder = Some("op@host pid 1".into());
        op.steps = steps
            .iter()
            .map(|&(step, what, at_ms, took_ms)| operations::OpStep {
                step: step.into(),
                what: what.into(),
                at_ms,
                took_ms,
            })
            .collect();
        op
    }

    /// A forced failover of beijing's shards 1 and 2 to shanghai, opened.
    fn forced(closed: bool) -> Operation {
        let mut op = Operation::new(OpKind::Forced, 3_000_000, vec![1, 2], "beijing");
        op.to = Some("shanghai".into());
        op.outcome = OpOutcome::Done;
        op.ended_at_ms = Some(3_011_000);
        op.divergence_lsn = Some("0/16B3748".into());
        op.open = Some(!closed);
        if closed {
            op.closed_at_ms = Some(3_500_000);
            op.closed_by = Some("op@host pid 3".into());
        }
        op
    }

    #[test]
    fn history_text_shows_steps_durations_and_the_open_record() {
        let base = 1_764_000_000_000;
        let mut done = planned(
            base,
            OpOutcome::Done,
            &[
                ("start", "freeze at beijing (CAS frozen)", base, Some(8)),
                (
                    "catching_up",
                    "wait for link beijing->shanghai to apply the marker",
                    base + 17,
                    Some(18),
                ),
                (
                    "done",
                    "confirm shanghai's fence is open",
                    base + 47,
                    Some(8),
                ),
            ],
        );
        done.ended_at_ms = Some(base + 55);
        done.hold_ms = Some(39);
        let ops = vec![done, forced(false)];
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
        let text = format_history(&[forced(true)], 0);
        assert!(
            text.contains("    closed 1970-01-01T00:58:20.000Z by op@host pid 3"),
            "{text}"
        );
        assert!(!text.contains("close-forced"), "{text}");
        assert_eq!(
            format_history(&[], 0),
            "no switchovers or forced failovers on record\n"
        );
    }

    #[test]
    fn an_operation_in_progress_shows_how_long_it_has_been_at_its_step() {
        let mut op = planned(
            5_000,
            OpOutcome::InProgress,
            &[
                ("start", "freeze at beijing (CAS frozen)", 5_000, Some(8)),
                (
                    "catching_up",
                    "wait for link beijing->shanghai to apply the marker",
                    5_017,
                    None,
                ),
            ],
        );
        op.step = Some("catching_up".into());
        let text = format_history(&[op], 6_017);
        assert!(
            text.contains("IN PROGRESS at step catching_up (for 1.00 s)"),
            "{text}"
        );
        assert!(
            text.contains("1.00 s..  wait for link beijing->shanghai"),
            "{text}"
        );
        let gone = planned(5_000, OpOutcome::RolledBack, &[]);
        let text = format_history(&[gone], 6_017);
        assert!(text.contains("(step times not kept"), "{text}");
    }

    #[test]
    fn shard_lists_compress_runs() {
        assert_eq!(shard_list(&[1, 2, 3, 5, 7, 8]), "1-3,5,7,8");
        assert_eq!(shard_list(&[4]), "4");
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
