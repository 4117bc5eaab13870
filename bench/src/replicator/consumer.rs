//! The two consumers `ezone bench replicator` compares, behind one face:
//! prepare (the slot exists, nothing consumes it), start, name the
//! processes whose CPU is the consumer's, stop (and drop the slot).
//!
//! - **ezone**: the real `ezone replicator --config FILE` binary as a child
//!   process (topology from a file, the source DSN as an override, so the
//!   link may cross the WAN proxy). Its slot is created up front with
//!   `pg_create_logical_replication_slot(.., 'pgoutput')`, exactly what the
//!   link's own `ensure_source` would do, so the backlog is in its history
//!   before the link starts. CPU: the replicator process, the target backend
//!   its applier talks to (found by `application_name`), and its source
//!   walsender (the slot's `active_pid`).
//! - **native**: `CREATE SUBSCRIPTION .. WITH (copy_data = false,
//!   create_slot = true, enabled = false, streaming = on|off)` (as ezone's
//!   `streaming`) at the target, then `ALTER
//!   SUBSCRIPTION .. ENABLE`. CPU: the apply worker (`pg_stat_subscription`)
//!   and its source walsender (the slot's `active_pid`). Stopped with
//!   `DISABLE`, then `DROP SUBSCRIPTION` (which drops the source slot); see
//!   [`Consumer::stop`] for why not a bare DROP.
//! - **pglogical** (2.x, where Debian's `postgresql-15-pglogical` is
//!   installed; both clusters then preload it): a provider node with the
//!   tables in its `default` replication set at the source, a subscriber node
//!   and `pglogical.create_subscription(.., synchronize_structure := false,
//!   synchronize_data := false)` at the target. Its slot is made when the
//!   subscription first starts, so the bench waits for `replicating`, then
//!   disables the subscription (`immediate`) before the backlog and enables
//!   it to drain. CPU: the `pglogical apply` worker and its source walsender.
//!   Stopped with `alter_subscription_disable`, then `drop_subscription`
//!   (which drops the source slot).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ezone_chaos::postgres::PgCluster;
use ezone_chaos::process::{pid_alive, proc_stat, proc_status_kib, ChildProcess, ProcessSpec};
use ezone_replicator::config::{origin_name, slot_name, ApplyWorkers};
use ezone_topology::starter::starter;
use ezone_topology::{FileStore, TopologyStore};
use serde::Serialize;

use super::workload::{sql, PUBLICATION, TABLES};
use crate::cpu;

/// The target session name of the ezone applier, to find its backend.
const EZONE_APPLY_APP: &str = "ezone_bench_apply";
/// How long a consumer may take to show all its processes.
const PROCESSES_WITHIN: Duration = Duration::from_secs(30);
/// How long a consumer's processes may take to go after it is stopped.
const SLOT_RELEASE_WITHIN: Duration = Duration::from_secs(15);
/// How long the replicator may take to stop on SIGTERM before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// Poll interval of the set-up waits.
const POLL: Duration = Duration::from_millis(50);

/// Which system consumes the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// `ezone replicator` (the link).
    Ezone,
    /// Postgres' built-in logical replication (a subscription).
    Native,
    /// pglogical 2 (a subscription of its own), if installed.
    Pglogical,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Ezone => "ezone",
            System::Native => "native",
            System::Pglogical => "pglogical",
        }
    }
}

/// Everything one run's consumer needs to know.
pub struct RunPlace<'a> {
    pub source: &'a PgCluster,
    pub target: &'a PgCluster,
    /// The run's database, at both sites.
    pub db: &'a str,
    /// The source as the consumer reaches it (direct, or across the WAN).
    pub source_dsn: String,
    /// The target as ezone's replicator reaches it (direct, or across the
    /// WAN in `far-target`).
    pub target_dsn: String,
    /// Unique per run: site, slot, origin and subscription names use it.
    pub run: usize,
    /// The bench's temp dir (configs, logs).
    pub dir: &'a Path,
    pub ezone_bin: &'a Path,
    /// ezone's lanes (`apply_workers`).
    pub apply_workers: ApplyWorkers,
    /// The replicator's runtime threads (`worker_threads`).
    pub worker_threads: usize,
    /// ezone's `streaming` and the subscription's (pglogical has none).
    pub streaming: bool,
}

/// What a process has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub ticks: u64,
    pub switches: u64,
}

/// A process whose CPU counts as the consumer's.
#[derive(Debug, Clone, Serialize)]
pub struct Proc {
    pub role: &'static str,
    pub pid: u32,
    /// From `/proc/PID/stat`, so a reused pid is never taken for it.
    #[serde(skip)]
    start_time: u64,
}

impl Proc {
    pub(super) fn new(role: &'static str, pid: u32) -> anyhow::Result<Proc> {
        let stat = proc_stat(pid)
            .with_context(|| format!("{role} (pid {pid}) is gone before it could be measured"))?;
        Ok(Proc {
            role,
            pid,
            start_time: stat.start_time,
        })
    }

    /// CPU ticks used and context switches made so far, or `None` if the
    /// process is gone (its counts went with it: a restart inside the
    /// window).
    pub fn sample(&self) -> Option<Sample> {
        self.alive().then(|| Sample {
            ticks: cpu::tree_ticks(self.pid),
            switches: cpu::tree_switches(self.pid),
        })
    }

    /// The process's peak resident set so far (`VmHWM`), in KiB; `None` if
    /// it is gone. A Postgres process's counts the shared buffers it touched.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        if !self.alive() {
            return None;
        }
        proc_status_kib(self.pid, "VmHWM")
    }

    fn alive(&self) -> bool {
        pid_alive(self.pid, Some(self.start_time))
    }
}

/// A consumer of one run; see the module docs.
pub enum Consumer {
    Ezone {
        config: PathBuf,
        slot: String,
        /// Boxed: a process handle is much larger than the other variant.
        child: Option<Box<ChildProcess>>,
    },
    Native {
        subscription: String,
    },
    Pglogical {
        subscription: String,
        /// The source slot pglogical made for it.
        slot: String,
    },
}

impl Consumer {
    /// Creates the consumer's slot at the source, consuming nothing yet.
    pub async fn prepare(system: System, at: &RunPlace<'_>) -> anyhow::Result<Consumer> {
        match system {
            System::Ezone => {
                let (src, dst) = (format!("src{}", at.run), format!("dst{}", at.run));
                let slot = slot_name(&dst);
                create_slot(at, &slot).await?;
                let target_dsn = format!("{} application_name={EZONE_APPLY_APP}", at.target_dsn);
                let mut t = starter(&[&src, &dst], 1);
                for (site, dsn) in [(&src, &at.source_dsn), (&dst, &target_dsn)] {
                    if let Some(s) = t.sites.get_mut(site.as_str()) {
                        s.postgres = dsn.clone();
                    }
                }
                let topology = at.dir.join(format!("topology-{}.toml", at.run));
                FileStore::new(&topology)
                    .init(&t, false)
                    .await
                    .with_context(|| format!("writing {}", topology.display()))?;
                let config = at.dir.join(format!("replicator-{}.toml", at.run));
                let text = format!(
                    "site = {dst:?}\ntables = {tables:?}\npublication = {PUBLICATION:?}\n\
                     target_dsn = {target_dsn:?}\napply_workers = {workers:?}\n\
                     worker_threads = {threads}\nstreaming = {streaming}\n\
                     [topology]\nfile = {file:?}\n\
                     [admin]\nlisten = \"127.0.0.1:0\"\n[sources.{src}]\ndsn = {source:?}\n",
                    tables = TABLES,
                    workers = at.apply_workers.to_string(),
                    threads = at.worker_threads,
                    streaming = at.streaming,
                    file = topology.display().to_string(),
                    source = at.source_dsn,
                );
                std::fs::write(&config, text)
                    .with_context(|| format!("writing {}", config.display()))?;
                Ok(Consumer::Ezone {
                    config,
                    slot,
                    child: None,
                })
            }
            System::Native => {
                let subscription = format!("native_sub_{}", at.run);
                sql(
                    at.target,
                    at.db,
                    &format!(
                        "CREATE SUBSCRIPTION {subscription} CONNECTION '{}' PUBLICATION {PUBLICATION} \
                         WITH (copy_data = false, create_slot = true, enabled = false, \
                         streaming = {})",
                        at.source_dsn,
                        if at.streaming { "on" } else { "off" }
                    ),
                )
                .await?;
                Ok(Consumer::Native { subscription })
            }
            System::Pglogical => prepare_pglogical(at).await,
        }
    }

    /// Starts consuming.
    pub async fn start(&mut self, at: &RunPlace<'_>) -> anyhow::Result<()> {
        match self {
            Consumer::Ezone { config, child, .. } => {
                let spec = ProcessSpec::new(
                    format!("ezone replicator (run {})", at.run),
                    at.ezone_bin,
                    at.dir,
                    &format!("replicator-{}.log", at.run),
                )
                .args(["replicator", "--config"])
                .arg(config.as_path())
                .env("RUST_LOG", "warn")
                .stdout_file(ready_file(at));
                *child = Some(Box::new(
                    ChildProcess::spawn(spec).context("starting ezone replicator")?,
                ));
                Ok(())
            }
            Consumer::Native { subscription } => {
                sql(
                    at.target,
                    at.db,
                    &format!("ALTER SUBSCRIPTION {subscription} ENABLE"),
                )
                .await?;
                Ok(())
            }
            Consumer::Pglogical { subscription, .. } => {
                sql(
                    at.target,
                    at.db,
                    &format!("SELECT pglogical.alter_subscription_enable('{subscription}', true)"),
                )
                .await?;
                Ok(())
            }
        }
    }

    /// An error if the consumer has stopped on its own (with why).
    pub fn check_running(&self) -> anyhow::Result<()> {
        if let Consumer::Ezone { child: Some(c), .. } = self {
            if let Some(status) = c.exit_status() {
                bail!(
                    "ezone replicator exited ({status}); its log ({}):\n{}",
                    c.log_path().display(),
                    c.log_tail()
                );
            }
        }
        Ok(())
    }

    /// The consumer's processes, once all of them are there.
    pub async fn processes(&self, at: &RunPlace<'_>) -> anyhow::Result<Vec<Proc>> {
        let deadline = tokio::time::Instant::now() + PROCESSES_WITHIN;
        loop {
            self.check_running()?;
            if let Some(found) = self.try_processes(at).await? {
                return Ok(found);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the {} consumer did not show its processes within {}s (walsender at the source, apply side at the target)",
                    self.system().name(),
                    PROCESSES_WITHIN.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn try_processes(&self, at: &RunPlace<'_>) -> anyhow::Result<Option<Vec<Proc>>> {
        let walsender = slot_pid(at, &self.slot()).await?;
        let (apply_role, apply_sql) = match self {
            // Every lane's backend (the replicator's target connections
            // carry the application name).
            Consumer::Ezone { .. } => ("target backend", ezone_backends_sql(at.db)),
            Consumer::Native { subscription } => (
                "apply worker",
                format!(
                    "SELECT pid FROM pg_stat_subscription WHERE subname = '{subscription}' \
                     AND relid IS NULL AND pid IS NOT NULL"
                ),
            ),
            // One apply worker per pglogical subscription; the run's
            // database has only this one.
            Consumer::Pglogical { .. } => (
                "apply worker",
                format!(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'pglogical apply%' \
                     AND datname = '{}'",
                    at.db
                ),
            ),
        };
        let applies = parse_pids(&sql(at.target, at.db, &apply_sql).await?)?;
        let lanes = match self {
            // `auto` starts with one lane.
            Consumer::Ezone { .. } => match at.apply_workers {
                ApplyWorkers::Fixed(n) => n,
                ApplyWorkers::Auto => 1,
            },
            Consumer::Native { .. } | Consumer::Pglogical { .. } => 1,
        };
        let Some(walsender) = walsender.filter(|_| applies.len() >= lanes) else {
            return Ok(None);
        };
        let mut procs = Vec::new();
        if let Consumer::Ezone { child: Some(c), .. } = self {
            procs.push(Proc::new("replicator", c.pid())?);
        }
        for apply in applies {
            procs.push(Proc::new(apply_role, apply)?);
        }
        procs.push(Proc::new("source walsender", walsender)?);
        Ok(Some(procs))
    }

    /// ezone's target backends not in `known` yet: lanes its link opened
    /// since (`apply_workers = "auto"`). Empty for the other systems, whose
    /// apply side is one process for the whole run.
    pub async fn new_lanes(&self, at: &RunPlace<'_>, known: &[Proc]) -> anyhow::Result<Vec<Proc>> {
        if !matches!(self, Consumer::Ezone { .. }) {
            return Ok(Vec::new());
        }
        let pids = parse_pids(&sql(at.target, at.db, &ezone_backends_sql(at.db)).await?)?;
        let mut found = Vec::new();
        for pid in pids {
            if known.iter().any(|p| p.pid == pid && p.alive()) {
                continue;
            }
            // Gone already (a lane given back at once): nothing to sample.
            if let Ok(p) = Proc::new("target backend", pid) {
                found.push(p);
            }
        }
        Ok(found)
    }

    /// The source slot this consumer reads.
    pub fn slot(&self) -> String {
        match self {
            Consumer::Ezone { slot, .. } => slot.clone(),
            // A subscription's slot is named after it by default.
            Consumer::Native { subscription } => subscription.clone(),
            Consumer::Pglogical { slot, .. } => slot.clone(),
        }
    }

    pub fn system(&self) -> System {
        match self {
            Consumer::Ezone { .. } => System::Ezone,
            Consumer::Native { .. } => System::Native,
            Consumer::Pglogical { .. } => System::Pglogical,
        }
    }

    /// ezone's recorded conflicts at the target (`None` for the others:
    /// native stops on a conflict, pglogical resolves it by its setting and
    /// logs it, neither records it).
    pub async fn conflicts(&self, at: &RunPlace<'_>) -> anyhow::Result<Option<u64>> {
        match self {
            Consumer::Ezone { .. } => {
                let n = sql(
                    at.target,
                    at.db,
                    "SELECT count(*) FROM ezone_replication.conflicts",
                )
                .await?;
                Ok(Some(n.trim().parse().with_context(|| {
                    format!("reading the conflict count {n:?}")
                })?))
            }
            Consumer::Native { .. } | Consumer::Pglogical { .. } => Ok(None),
        }
    }

    /// ezone's target transactions so far (its `applied_batches_total`
    /// over all links, from `/metrics`); `None` for the others.
    pub async fn batches(&self, at: &RunPlace<'_>) -> anyhow::Result<Option<u64>> {
        if !matches!(self, Consumer::Ezone { .. }) {
            return Ok(None);
        }
        let path = ready_file(at);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("reading the replicator's ready line in {}", path.display())
        })?;
        let ready: serde_json::Value = text
            .lines()
            .next()
            .and_then(|l| serde_json::from_str(l).ok())
            .with_context(|| format!("no JSON ready line in {}: {text:?}", path.display()))?;
        let admin = ready["admin"]
            .as_str()
            .with_context(|| format!("no admin address in the ready line {ready}"))?;
        let metrics = http_get(admin, "/metrics").await?;
        let total = metrics
            .lines()
            .filter(|l| l.starts_with("ezone_replicator_applied_batches_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
            .sum();
        Ok(Some(total))
    }

    /// Stops consuming and drops the slot (and, for ezone, its origin).
    pub async fn stop(self, at: &RunPlace<'_>) -> anyhow::Result<()> {
        match self {
            Consumer::Ezone { slot, child, .. } => {
                if let Some(c) = child {
                    c.terminate(STOP_WITHIN)
                        .await
                        .context("stopping ezone replicator")?;
                }
                wait_slot_free(at, &slot, "the replicator stopped").await?;
                sql(
                    at.source,
                    at.db,
                    &format!("SELECT pg_drop_replication_slot('{slot}')"),
                )
                .await?;
                let origin = origin_name(&format!("src{}", at.run));
                sql(
                    at.target,
                    at.db,
                    // The link's origin and its other lanes' (`origin#i`):
                    // origins are the cluster's, not the run database's.
                    &format!(
                        "SELECT pg_replication_origin_drop(roname) FROM pg_replication_origin \
                         WHERE roname = '{origin}' OR roname LIKE '{origin}#%'"
                    ),
                )
                .await?;
                Ok(())
            }
            Consumer::Native { subscription } => {
                // Disable first and wait for the worker to go. A DROP of an
                // enabled subscription kills its worker, and Postgres 15's
                // launcher at once tries to start it again; that attempt
                // resets the launcher's once-per-`wal_retrieve_retry_interval`
                // throttle, so the next run's ENABLE would wait up to 5 s
                // for its worker: a bench artefact, not replication.
                sql(
                    at.target,
                    at.db,
                    &format!("ALTER SUBSCRIPTION {subscription} DISABLE"),
                )
                .await?;
                let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WITHIN;
                loop {
                    let workers = sql(
                        at.target,
                        at.db,
                        &format!(
                            "SELECT count(*) FROM pg_stat_subscription \
                             WHERE subname = '{subscription}' AND pid IS NOT NULL"
                        ),
                    )
                    .await?;
                    if workers.trim() == "0" {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        bail!(
                            "subscription {subscription} still has a worker {}s after DISABLE",
                            SLOT_RELEASE_WITHIN.as_secs()
                        );
                    }
                    tokio::time::sleep(POLL).await;
                }
                // Drops the slot at the source too.
                sql(
                    at.target,
                    at.db,
                    &format!("DROP SUBSCRIPTION {subscription}"),
                )
                .await?;
                Ok(())
            }
            Consumer::Pglogical { subscription, slot } => {
                disable_pglogical(at, &subscription, &slot).await?;
                // Drops the slot at the source too (through the provider DSN).
                sql(
                    at.target,
                    at.db,
                    &format!("SELECT pglogical.drop_subscription('{subscription}')"),
                )
                .await?;
                Ok(())
            }
        }
    }
}

/// The pglogical nodes, the replication set and a subscription that has
/// made its slot and is disabled again (see the module docs).
async fn prepare_pglogical(at: &RunPlace<'_>) -> anyhow::Result<Consumer> {
    let subscription = format!("pgl_sub_{}", at.run);
    let mut provider = format!(
        "CREATE EXTENSION pglogical; \
         SELECT pglogical.create_node(node_name := 'src{}', dsn := '{}');",
        at.run,
        at.source.dsn(at.db)
    );
    for table in TABLES {
        provider.push_str(&format!(
            " SELECT pglogical.replication_set_add_table('default', '{table}', false);"
        ));
    }
    sql(at.source, at.db, &provider).await?;
    sql(
        at.target,
        at.db,
        &format!(
            "CREATE EXTENSION pglogical; \
             SELECT pglogical.create_node(node_name := 'dst{run}', dsn := '{target}'); \
             SELECT pglogical.create_subscription(subscription_name := '{subscription}', \
               provider_dsn := '{source}', replication_sets := ARRAY['default'], \
               synchronize_structure := false, synchronize_data := false, forward_origins := '{{}}')",
            run = at.run,
            target = at.target.dsn(at.db),
            source = at.source_dsn,
        ),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + PROCESSES_WITHIN;
    let slot = loop {
        let out = sql(
            at.target,
            at.db,
            &format!(
                "SELECT status || ' ' || coalesce(slot_name, '') \
                 FROM pglogical.show_subscription_status('{subscription}')"
            ),
        )
        .await?;
        match out.trim().split_once(' ') {
            Some(("replicating", slot)) if !slot.is_empty() => break slot.to_string(),
            _ if tokio::time::Instant::now() >= deadline => bail!(
                "pglogical subscription {subscription} is not replicating within {}s (status {:?}); \
                 see the target's postgres.log",
                PROCESSES_WITHIN.as_secs(),
                out.trim()
            ),
            _ => tokio::time::sleep(POLL).await,
        }
    };
    disable_pglogical(at, &subscription, &slot).await?;
    Ok(Consumer::Pglogical { subscription, slot })
}

/// Disable a pglogical subscription at once and wait until its slot is free.
async fn disable_pglogical(
    at: &RunPlace<'_>,
    subscription: &str,
    slot: &str,
) -> anyhow::Result<()> {
    sql(
        at.target,
        at.db,
        &format!("SELECT pglogical.alter_subscription_disable('{subscription}', true)"),
    )
    .await?;
    wait_slot_free(
        at,
        slot,
        &format!("pglogical subscription {subscription} was disabled"),
    )
    .await
}

/// Waits until no walsender holds `slot` (`after` says what should have
/// freed it, for the error).
async fn wait_slot_free(at: &RunPlace<'_>, slot: &str, after: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WITHIN;
    while slot_pid(at, slot).await?.is_some() {
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "slot {slot} is still in use {}s after {after}",
                SLOT_RELEASE_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// SQL: the pids of ezone's target backends (every lane's connection
/// carries the application name) in the run's database `db`, newest first.
fn ezone_backends_sql(db: &str) -> String {
    format!(
        "SELECT pid FROM pg_stat_activity WHERE application_name = '{EZONE_APPLY_APP}' \
         AND datname = '{db}' ORDER BY backend_start DESC"
    )
}

/// Creates the logical slot `slot` (`pgoutput`) at the source.
pub(super) async fn create_slot(at: &RunPlace<'_>, slot: &str) -> anyhow::Result<()> {
    sql(
        at.source,
        at.db,
        &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
    )
    .await
    .map(drop)
}

/// The pid of the walsender holding `slot`, if it is held.
pub(super) async fn slot_pid(at: &RunPlace<'_>, slot: &str) -> anyhow::Result<Option<u32>> {
    let out = sql(
        at.source,
        at.db,
        &format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
        ),
    )
    .await?;
    parse_pid(&out)
}

/// A pid from psql's output: empty (no row) is `None`.
/// Every pid in psql's output, one a line.
fn parse_pids(out: &str) -> anyhow::Result<Vec<u32>> {
    out.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("{p:?} is not a pid"))
        })
        .collect()
}

fn parse_pid(out: &str) -> anyhow::Result<Option<u32>> {
    let first = out.lines().map(str::trim).find(|l| !l.is_empty());
    match first {
        None => Ok(None),
        Some(p) => p
            .parse::<u32>()
            .map(Some)
            .with_context(|| format!("{p:?} is not a pid")),
    }
}

/// Where the replicator's stdout (its JSON ready line) goes.
fn ready_file(at: &RunPlace<'_>) -> PathBuf {
    at.dir.join(format!("replicator-{}.out", at.run))
}

/// The body of `GET path` from a plain HTTP/1.0 server at `addr`.
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the replicator's admin listener {addr}"))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .with_context(|| format!("asking {addr} for {path}"))?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .with_context(|| format!("{addr} did not answer {path} within 10 s"))?
        .with_context(|| format!("reading {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&out);
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => bail!("{addr} answered {path} with {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_from_psql() {
        assert_eq!(parse_pid("").ok().flatten(), None);
        assert_eq!(parse_pid("\n").ok().flatten(), None);
        assert_eq!(parse_pid("4242\n").ok().flatten(), Some(4242));
        assert!(parse_pid("abc").is_err());
    }
}
