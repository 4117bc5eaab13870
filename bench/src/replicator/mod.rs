//! `ezone bench replicator`: ezone's replication link next to Postgres'
//! built-in logical replication and, where it is installed, pglogical 2;
//! same machine, same clusters, same workload, one run.
//!
//! ```text
//!   pgbench ──▶ source Postgres ── slot (pgoutput) ──▶ consumer ──▶ target Postgres
//!                                      │                  │
//!                        direct, or through the fault proxy with
//!                        half the WAN round trip added each way
//!   consumer = `ezone replicator` (child process)  |  CREATE SUBSCRIPTION (apply worker)
//!              |  pglogical.create_subscription (its apply worker)
//! ```
//!
//! # What is measured
//!
//! Two Postgres 15 clusters (source, target) are started for the bench.
//! Every (variant, system) run gets a fresh database at both, its own slot,
//! publication and (ezone) replication origin or (native) subscription, all
//! dropped again at its end, so runs never see each other's WAL or
//! progress. Runs go one after the other; the system that goes first
//! alternates between variants.
//!
//! 1. **Backlog drain.** With the slot created but nothing consuming it, the
//!    source takes `--backlog-txns` transactions (pgbench, `--clients`
//!    connections; each transaction an account upsert, a branch update and
//!    a history insert: 3 row changes). A mark row is committed just before
//!    and just after. Then the consumer starts (the replicator process is
//!    spawned / the subscription enabled) and the bench waits for the end
//!    mark at the target. The target stamps each mark with
//!    `clock_timestamp()` when it is applied (a trigger enabled `ALWAYS`),
//!    so the times do not depend on how often the bench polls:
//!    *drain s* = consumer start → end mark applied; *start s* = consumer
//!    start → first mark applied (process start, connections, slot start);
//!    *rows/s (apply)* = rows over first → end mark, the pure apply rate.
//!    CPU is the consumer's processes' utime + stime from `/proc` (they all
//!    start with the consumer, so their totals at the end are the drain's):
//!    ezone = the replicator process + the target backend its applier talks
//!    to + its source walsender; native = the apply worker + its source
//!    walsender. Reported per 10k rows. Then *stream rows/s*: the same
//!    backlog read by `pg_recvlogical` into `/dev/null` from a slot of its
//!    own, made before the backlog ([`ceiling`]): what the source's stream
//!    allows, which no consumer's drain can beat; *stream bound* in the
//!    ratios is that over the baseline's drain, the largest drain ratio any
//!    consumer could show here.
//! 2. **Steady lag.** With the consumer caught up, pgbench offers `--rate`
//!    transactions/s for `--duration`. Each history row carries the source's
//!    `clock_timestamp()` taken just before its commit; the target's trigger
//!    stamps it when applied. Every transaction's lag is the difference
//!    (both clusters are on this machine: one clock), so the distribution
//!    has a sample per transaction, not one per polling interval, and no
//!    polling sawtooth. p50/p99/max/mean over all of them, and the consumer's
//!    CPU over the phase (until an end mark is applied) per 10k rows.
//!    Each process's peak resident set (`VmHWM`) is read at the end of
//!    each phase: a Postgres process's counts the shared buffers it touched.
//! 3. **One large transaction.** `bulk` holds `--large-rows` rows at both
//!    sites from the start (written before the slot exists, so not
//!    replicated); with the consumer caught up, one transaction updates
//!    every row (or, `--large-op insert`, inserts as many new ones: a bulk
//!    load) and inserts a mark last. *visible s* = the source's COMMIT
//!    returned → the mark applied at the target (just before the target's
//!    commit). The source's work for the slot over the phase is read from
//!    `pg_stat_replication_slots`: bytes spilled to its disk and bytes
//!    streamed before the commit. With `--streaming on` ezone and the
//!    subscription both ask for transactions to be streamed before their
//!    commit (off by default, as both systems' defaults are); pglogical
//!    cannot.
//! 4. All phases **direct** (the consumer dials the source's port) and
//!    across the **WAN** (`--wan-rtt`, half each way, through the in-process
//!    fault proxy). Only the consumer's source connection crosses it; the
//!    load is local to the source, the apply local to the target. With
//!    `--variants far-target` ezone's replicator sits beside the source
//!    instead and its target connections cross the WAN (every batch's round
//!    trips pay it: what apply lanes overlap); the subscriptions, which
//!    apply inside the target, read the source across it as in `wan`.
//!
//! `--skip-branch-update` drops the workload's update of one of 10 branch
//! rows (as pgbench's `-N`), so that transactions on different accounts
//! touch disjoint rows.
//!
//! At the end of each run the three tables are compared by checksum (every
//! replicated column) at both sites: the *data* column says whether the
//! target has exactly the source's rows. For ezone the number of recorded
//! conflicts is reported (expected 0).
//!
//! # What is not comparable (read before quoting a ratio)
//!
//! - **Process model.** Native apply runs inside the target server (one
//!   worker, no SQL round trips). ezone is a separate process that applies
//!   through a SQL connection: each statement is a round trip to the target
//!   backend, whose CPU is therefore counted on ezone's side. That is the
//!   cost of the design, measured, not an accident of the bench.
//! - **Commit durability.** A subscription applies with
//!   `synchronous_commit = off` by default; ezone's applier uses the
//!   target's default (`on`). Both clusters run with `fsync = off` (the
//!   lab's setting), so the difference is one WAL write per commit, not an
//!   fsync.
//! - **What else each does per transaction.** ezone detects conflicts
//!   (checks each row count) and advances its origin with an explicit
//!   `pg_replication_origin_xact_setup` statement; native does both inside.
//!   Both use the text protocol of pgoutput (`binary = false`, native's
//!   default), and the same `--streaming` (the workload's transactions are
//!   small: only the large transaction is ever streamed). Streamed, native's
//!   apply worker (Postgres 15) writes it to files and applies it at the
//!   commit, as ezone does.
//! - **Startup.** *drain s* includes starting the consumer: exec'ing the
//!   replicator and reading its topology file, versus the launcher forking
//!   an apply worker. *start s* shows how much that is; *rows/s (apply)*
//!   leaves it out.
//! - **The machine.** pgbench, both clusters and the consumer share the
//!   cores; autovacuum is turned off on both clusters (for both systems) so
//!   that it cannot land in one system's window and not the other's. The
//!   numbers are for this machine and noisy; the ratios, from one run, are
//!   the point. Numbers are printed, never asserted.
//! - **Lag includes** the source's commit after the stamp (one local round
//!   trip of pgbench) and excludes the target's commit after the apply (the
//!   row is the last of its transaction, so only the commit remains; for
//!   ezone one more local round trip, for native none).
//!
//! - **pglogical** is preloaded at both clusters whenever it is one of the
//!   systems, so every system's runs see the same servers. Its apply worker
//!   applies rows inside the target server like native's. On Postgres 15,
//!   pglogical 2.4.2's supervisor never takes the signal barrier that DROP
//!   DATABASE waits for, so with it loaded the runs' databases are kept (idle,
//!   their slots and subscriptions dropped) until the clusters go.
//!
//! # Clean-up
//!
//! Postgres clusters, pgbench and the replicator are [`ChildProcess`]es tied
//! to this process (killed on drop, on error, on Ctrl-C because `ezone
//! bench` races the run against the signal, and by the parent-death signal
//! if this process is killed outright); the cluster directories and the
//! bench's temp dir (configs, pgbench and replicator logs) are removed with
//! their guards.
//!
//! [`ChildProcess`]: ezone_chaos::process::ChildProcess

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use ezone_chaos::postgres::PgCluster;
use ezone_chaos::proxy::{Direction, FaultProxy, LinkSpec, Toxics};
use ezone_replicator::config::ApplyWorkers;
use serde::Serialize;

use crate::cpu;
use ceiling::{Ceiling, StreamOnly};
use consumer::{Consumer, Proc, RunPlace, Sample};
use stats::{parse_integer_lines, per_second, ratio, summarise_lag, LagSummary};
use workload::{
    bulk_fill_sql, large_txn_sql, mark_seen_sql, mark_sql, pgbench_script, rows_per_txn,
    slot_spill_stream_sql, source_schema_sql, sql, target_schema_sql, LargeOp, Pace, Pgbench,
    CHECKSUM_SQL, LAG_MICROS_SQL, TARGET_HISTORY_TRIGGER_SQL,
};

pub use consumer::System;

mod ceiling;
mod consumer;
mod stats;
mod workload;

/// Defaults of a full run (about 2-3 minutes on a 2-core machine).
const BACKLOG_TXNS: u64 = 20_000;
const LARGE_ROWS: u64 = 500_000;
const QUICK_LARGE_ROWS: u64 = 20_000;
const STEADY: Duration = Duration::from_secs(20);
/// Defaults of `--quick` (about 30 s).
const QUICK_BACKLOG_TXNS: u64 = 2_000;
const QUICK_STEADY: Duration = Duration::from_secs(4);
/// How often the bench looks for a mark at the target. The mark's own
/// timestamp is what is reported; this only bounds how long the bench idles.
const MARK_POLL: Duration = Duration::from_millis(200);
/// How long the steady phase's tail may take to be applied.
const TAIL_WITHIN: Duration = Duration::from_secs(120);

/// Where the consumer reaches the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The source's own port, no added latency.
    Direct,
    /// Through the fault proxy with `--wan-rtt` (half each way).
    Wan,
    /// ezone's replicator beside the source, its target across the WAN
    /// (`--wan-rtt`): each batch's round trips to the target cross it.
    /// Postgres' subscription and pglogical apply inside the target, so for
    /// them the source is across the WAN, as in `wan`.
    FarTarget,
}

/// `ezone bench replicator`'s options.
#[derive(Debug, clap::Args)]
pub struct ReplicatorBench {
    /// Backlog written while the consumer is stopped, in transactions of 3 row
    /// changes each [default: 20000; 2000 with --quick].
    #[arg(long)]
    pub backlog_txns: Option<u64>,
    /// Steady load offered during the lag phase, transactions/s (pgbench -R).
    #[arg(long, default_value_t = 200)]
    pub rate: u32,
    /// Length of the steady phase, whole seconds (pgbench -T) [default: 20s; 4s with --quick].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Round trip of the WAN variant (half added each way by the fault proxy).
    #[arg(long, default_value = "30ms", value_parser = humantime::parse_duration)]
    pub wan_rtt: Duration,
    /// Which variants to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "direct,wan")]
    pub variants: Vec<Variant>,
    /// Which systems to run (the first goes first in the first variant; the
    /// order alternates between variants) [default: ezone,native, and
    /// pglogical where its package, postgresql-15-pglogical, is installed].
    #[arg(long, value_enum, value_delimiter = ',')]
    pub systems: Option<Vec<System>>,
    /// pgbench connections at the source, for the backlog and the steady load.
    #[arg(long, default_value_t = 4)]
    pub clients: u32,
    /// Account keys the upserts pick from (uniformly).
    #[arg(long, default_value_t = 100_000)]
    pub accounts: u64,
    /// A ~30 s sanity run: a small backlog and a short steady phase.
    #[arg(long)]
    pub quick: bool,
    /// Both clusters take plain TCP (no TLS), for the cost of TLS side by
    /// side with a default run (which encrypts every connection, ezone's and
    /// the native subscription's alike, with verify-full).
    #[arg(long)]
    pub plain_tcp: bool,
    /// Target connections (lanes) ezone's link applies over: the
    /// replicator's `apply_workers`, `auto` or a count [default: the
    /// replicator's default].
    #[arg(long)]
    pub apply_workers: Option<ApplyWorkers>,
    /// Threads of the replicator's runtime: its `worker_threads` [default:
    /// the replicator's default].
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Rows of the one large transaction (an UPDATE of every `bulk` row);
    /// 0 leaves the phase out [default: 500000; 20000 with --quick].
    #[arg(long)]
    pub large_rows: Option<u64>,
    /// What the large transaction does: update every `bulk` row, or insert
    /// as many new ones.
    #[arg(long, value_enum, default_value = "update")]
    pub large_op: LargeOp,
    /// Whether ezone (`streaming`) and the native subscription (`streaming
    /// = on`) have the source stream large transactions before their commit
    /// (off: both systems' default).
    #[arg(long, default_value = "off", value_parser = on_off, action = clap::ArgAction::Set)]
    pub streaming: bool,
    /// The workload without its update of one of 10 branch rows (as
    /// pgbench's `-N`): an account upsert and a history insert, so batches
    /// of transactions on different accounts touch disjoint rows (what
    /// ezone's apply lanes need).
    #[arg(long)]
    pub skip_branch_update: bool,
    /// Print a JSON object instead of the tables.
    #[arg(long)]
    pub json: bool,
    /// The ezone binary whose `replicator` is run (default: this one).
    #[arg(long)]
    pub ezone_bin: Option<PathBuf>,
}

/// The run's settings, resolved and checked.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    backlog_txns: u64,
    rate: u32,
    steady_seconds: u64,
    wan_rtt_ms: f64,
    clients: u32,
    accounts: u64,
    rows_per_txn: u64,
    /// The workload without its branch update (pgbench's `-N`).
    skip_branch_update: bool,
    /// Every connection over TLS (verify-full), or plain TCP.
    tls: bool,
    /// ezone's lanes (`apply_workers`).
    apply_workers: ApplyWorkers,
    /// Rows of the large transaction (0: no such phase).
    large_rows: u64,
    /// What it does with them.
    large_op: LargeOp,
    /// Streaming of transactions before their commit, for ezone and native.
    streaming: bool,
    /// The replicator's runtime threads (`worker_threads`).
    worker_threads: usize,
    /// Both clusters preload pglogical (it is one of the systems), for
    /// every system's runs alike.
    pglogical_loaded: bool,
    #[serde(skip)]
    wan_rtt: Duration,
    #[serde(skip)]
    variants: Vec<Variant>,
    #[serde(skip)]
    systems: Vec<System>,
}

impl Params {
    fn from_args(a: &ReplicatorBench) -> anyhow::Result<Params> {
        let backlog_txns = a.backlog_txns.unwrap_or(if a.quick {
            QUICK_BACKLOG_TXNS
        } else {
            BACKLOG_TXNS
        });
        let steady = a
            .duration
            .unwrap_or(if a.quick { QUICK_STEADY } else { STEADY });
        if steady.subsec_nanos() != 0 || steady.is_zero() {
            bail!(
                "--duration {}: use whole seconds, at least 1s (pgbench's -T takes seconds)",
                humantime::format_duration(steady)
            );
        }
        if backlog_txns == 0 {
            bail!("--backlog-txns must be at least 1");
        }
        if a.rate == 0 {
            bail!("--rate must be at least 1 transaction/s");
        }
        if a.clients == 0 {
            bail!("--clients must be at least 1");
        }
        if a.accounts == 0 {
            bail!("--accounts must be at least 1");
        }
        use ezone_replicator::config::defaults;
        let apply_workers = a.apply_workers.unwrap_or(defaults::APPLY_WORKERS);
        if let ApplyWorkers::Fixed(n) = apply_workers {
            if n == 0 || n > defaults::MAX_APPLY_WORKERS {
                bail!(
                    "--apply-workers {n}: use auto or 1 to {}",
                    defaults::MAX_APPLY_WORKERS
                );
            }
        }
        let worker_threads = one_to(
            "worker-threads",
            a.worker_threads,
            defaults::WORKER_THREADS,
            defaults::MAX_WORKER_THREADS,
        )?;
        let pglogical = pglogical_library();
        let systems = match &a.systems {
            Some(s) => s.clone(),
            None if pglogical.is_some() => vec![System::Ezone, System::Native, System::Pglogical],
            None => vec![System::Ezone, System::Native],
        };
        if a.variants.is_empty() || systems.is_empty() {
            bail!("--variants and --systems each need at least one value");
        }
        let pglogical_loaded = systems.contains(&System::Pglogical);
        if pglogical_loaded && pglogical.is_none() {
            bail!(
                "--systems pglogical: pglogical is not installed for this Postgres (no pglogical.so \
                 next to its bin directory); install Debian's postgresql-15-pglogical \
                 (`scripts/install-deps.sh --bench` as root does), or leave it out of --systems"
            );
        }
        if a.variants.iter().any(|v| *v != Variant::Direct) && a.wan_rtt.is_zero() {
            bail!("--wan-rtt 0s: give the WAN a round trip, or run --variants direct");
        }
        let mut variants = a.variants.clone();
        variants.dedup();
        let mut systems = systems;
        systems.dedup();
        Ok(Params {
            backlog_txns,
            rate: a.rate,
            steady_seconds: steady.as_secs(),
            wan_rtt_ms: a.wan_rtt.as_secs_f64() * 1000.0,
            clients: a.clients,
            accounts: a.accounts,
            rows_per_txn: rows_per_txn(a.skip_branch_update),
            skip_branch_update: a.skip_branch_update,
            tls: !a.plain_tcp,
            apply_workers,
            large_rows: a.large_rows.unwrap_or(if a.quick {
                QUICK_LARGE_ROWS
            } else {
                LARGE_ROWS
            }),
            large_op: a.large_op,
            streaming: a.streaming,
            worker_threads,
            pglogical_loaded,
            wan_rtt: a.wan_rtt,
            variants,
            systems,
        })
    }

    fn variant_label(&self, v: Variant) -> String {
        match v {
            Variant::Direct => "direct".to_string(),
            Variant::Wan => format!("wan {}ms", fmt_num(self.wan_rtt_ms)),
            Variant::FarTarget => format!("far target {}ms", fmt_num(self.wan_rtt_ms)),
        }
    }
}

/// `on` or `off`.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: use on or off")),
    }
}

/// `--flag`'s value (or `default`), which must be 1 to `max`.
fn one_to(flag: &str, value: Option<usize>, default: usize, max: usize) -> anyhow::Result<usize> {
    let v = value.unwrap_or(default);
    if v == 0 || v > max {
        bail!("--{flag} {v}: use 1 to {max}");
    }
    Ok(v)
}

/// pglogical's server library for the Postgres the bench runs, if installed.
fn pglogical_library() -> Option<PathBuf> {
    let bin = ezone_chaos::postgres::find_pg_bin().ok()?;
    let lib = bin.parent()?.join("lib").join("pglogical.so");
    lib.is_file().then_some(lib)
}

/// Server settings pglogical needs: preloaded, and workers for its
/// supervisor, a manager per database that has the extension and the apply
/// worker, beside native's launcher and workers (8 by default).
const PGLOGICAL_SETTINGS: &[(&str, &str)] = &[
    ("shared_preload_libraries", "pglogical"),
    ("max_worker_processes", "32"),
];

/// CPU of the consumer's processes over a window.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// All processes together; `None` if one of them restarted in the window.
    seconds: Option<f64>,
    per_10k_rows: Option<f64>,
    /// The source walsender's share, per 10k rows.
    walsender_per_10k_rows: Option<f64>,
    by_process: Vec<ProcCpu>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcCpu {
    role: &'static str,
    pid: u32,
    seconds: Option<f64>,
    /// Its context switches in the window (each a sleep or a preemption,
    /// and a wake-up after it).
    switches: Option<u64>,
    /// The process's peak resident set at the end of the window (its
    /// lifetime peak so far), MB.
    peak_rss_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    txns: u64,
    rows: u64,
    wal_bytes: u64,
    /// How long pgbench took to write the backlog.
    written_seconds: f64,
    /// Consumer start → last backlog transaction applied.
    seconds: f64,
    /// Consumer start → first backlog transaction applied.
    startup_seconds: f64,
    /// First → last backlog transaction applied.
    apply_seconds: f64,
    txns_per_second: Option<f64>,
    rows_per_second: Option<f64>,
    /// Rows over the apply window only (no startup).
    apply_rows_per_second: Option<f64>,
    /// Target transactions ezone used for the drain (`None` for native).
    batches: Option<u64>,
    cpu: CpuReport,
    /// The same backlog read by a reader that discards it: what the
    /// source's stream allows ([`ceiling`]).
    stream_only: StreamOnly,
}

#[derive(Debug, Clone, Serialize)]
pub struct SteadyReport {
    offered_tps: u32,
    seconds: u64,
    txns: u64,
    rows: u64,
    /// What pgbench achieved.
    source_tps: Option<f64>,
    /// Source commit → applied at the target, one sample per transaction.
    lag: Option<LagSummary>,
    cpu: CpuReport,
}

/// The one large transaction, source commit to applied at the target.
#[derive(Debug, Clone, Serialize)]
pub struct LargeReport {
    rows: u64,
    /// How long the source took to run it (the UPDATE and the commit).
    source_seconds: f64,
    /// The source's COMMIT returned → its last row applied at the target.
    visible_seconds: f64,
    /// What the source did for the slot meanwhile, bytes: spilled to its
    /// disk, and streamed before the commit.
    source_spill_bytes: Option<u64>,
    source_stream_bytes: Option<u64>,
    cpu: CpuReport,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    variant: Variant,
    label: String,
    added_rtt_ms: f64,
    system: System,
    drain: DrainReport,
    steady: SteadyReport,
    large: Option<LargeReport>,
    /// The target holds exactly the source's rows (checksums) at the end.
    data_identical: bool,
    /// ezone's recorded conflicts (native has none to record).
    conflicts: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RatioReport {
    variant: Variant,
    label: String,
    /// What ezone is divided by.
    baseline: System,
    drain_rows_per_second: Option<f64>,
    /// The stream alone over the baseline's drain, both from the
    /// baseline's run: the most any consumer's drain could be, as a
    /// multiple of the baseline's, on this machine.
    stream_bound: Option<f64>,
    apply_rows_per_second: Option<f64>,
    drain_cpu_per_10k_rows: Option<f64>,
    lag_p50: Option<f64>,
    lag_p99: Option<f64>,
    steady_cpu_per_10k_rows: Option<f64>,
    large_visible_seconds: Option<f64>,
}

/// What `ezone bench replicator` found: every run, and ezone / each baseline per
/// variant. `--json` prints it as is; the tables are [`Report::table`].
#[derive(Debug, Serialize)]
pub struct Report {
    params: Params,
    postgres: String,
    cpus: usize,
    runs: Vec<RunReport>,
    /// ezone / each other system, per variant.
    ratios: Vec<RatioReport>,
}

/// What every run shares.
struct Ctx {
    params: Params,
    // Field order is drop order: the proxy before the clusters it points at.
    proxy: FaultProxy,
    wan_addr: SocketAddr,
    /// The target across the WAN (ezone's replicator in `far-target`).
    far_target_addr: SocketAddr,
    source: PgCluster,
    target: PgCluster,
    pgbench: Pgbench,
    ezone_bin: PathBuf,
    ticks_per_second: u64,
    dir: tempfile::TempDir,
}

/// Runs the bench. Every process it starts is stopped when it returns, and
/// killed when the future is dropped (raced against Ctrl-C, say).
pub async fn run(args: &ReplicatorBench) -> anyhow::Result<Report> {
    let params = Params::from_args(args)?;
    let ezone_bin = crate::ezone_bin(args.ezone_bin.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("ezone-bench-replicator-")
        .tempdir()
        .context("creating the bench's temp dir")?;
    eprintln!("starting two Postgres clusters (source, target)...");
    let settings: Vec<(String, String)> = if params.pglogical_loaded {
        PGLOGICAL_SETTINGS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    } else {
        Vec::new()
    };
    let options = |name: &str| ezone_chaos::postgres::PgOptions {
        tls: !args.plain_tcp,
        settings: settings.clone(),
        ..ezone_chaos::postgres::PgOptions::new(name)
    };
    let (source, target) = tokio::try_join!(
        PgCluster::start_with(options("bench-source")),
        PgCluster::start_with(options("bench-target"))
    )
    .context("starting the bench's Postgres clusters")?;
    for pg in [&source, &target] {
        // One statement per call: ALTER SYSTEM refuses a transaction block.
        sql(pg, "postgres", "ALTER SYSTEM SET autovacuum = off").await?;
        sql(pg, "postgres", "SELECT pg_reload_conf()").await?;
    }
    let version = sql(&source, "postgres", "SHOW server_version").await?;
    let proxy = FaultProxy::new();
    // The WAN in front of the source (`wan`, and the subscriptions in
    // `far-target`), and in front of the target (ezone in `far-target`).
    let mut wan = Vec::new();
    for (name, upstream) in [("to source", source.addr()), ("to target", target.addr())] {
        let link = proxy
            .add_link(LinkSpec {
                name: name.to_string(),
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                upstream,
                upstream_toxics: Toxics::default(),
                downstream_toxics: Toxics::default(),
            })
            .await
            .context("starting the WAN fault proxy")?;
        let half = params.wan_rtt / 2;
        for d in [Direction::Upstream, Direction::Downstream] {
            link.set_toxics(
                d,
                Toxics {
                    latency: half,
                    ..Toxics::default()
                },
            );
        }
        wan.push(link.listen_addr());
    }
    let script = dir.path().join("workload.sql");
    std::fs::write(
        &script,
        pgbench_script(params.accounts, params.skip_branch_update),
    )
    .with_context(|| format!("writing {}", script.display()))?;
    let pgbench = Pgbench {
        bin: source.bin_dir().join("pgbench"),
        dir: dir.path().to_path_buf(),
        addr: source.addr(),
        script,
        clients: params.clients,
        tls: source.client_tls().cloned(),
    };
    if !pgbench.bin.is_file() {
        bail!(
            "pgbench not found at {} (install postgresql-15's client tools)",
            pgbench.bin.display()
        );
    }
    let ctx = Ctx {
        params: params.clone(),
        wan_addr: wan[0],
        far_target_addr: wan[1],
        proxy,
        source,
        target,
        pgbench,
        ezone_bin,
        ticks_per_second: cpu::clock_ticks_per_second(),
        dir,
    };
    let total = params.variants.len() * params.systems.len();
    let mut runs = Vec::new();
    for (vi, &variant) in params.variants.iter().enumerate() {
        let mut order = params.systems.clone();
        if vi % 2 == 1 {
            order.reverse();
        }
        for system in order {
            let n = runs.len() + 1;
            runs.push(one_run(&ctx, variant, system, n, total).await?);
        }
    }
    ctx.proxy.shutdown().await;
    // A fast shutdown rather than the kill -9 of dropping them.
    for pg in [&ctx.source, &ctx.target] {
        if let Err(e) = pg.stop(Duration::from_secs(10)).await {
            tracing::warn!(site = %pg.name(), error = %e, "Postgres did not stop politely; it is killed.");
        }
    }
    let mut ratio_rows = Vec::new();
    for &v in &params.variants {
        for baseline in [System::Native, System::Pglogical] {
            ratio_rows.extend(ratios(&params, &runs, v, baseline));
        }
    }
    Ok(Report {
        params,
        postgres: version.trim().to_string(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        runs,
        ratios: ratio_rows,
    })
}

/// One system, one variant: fresh database, backlog drain, steady lag, check.
async fn one_run(
    ctx: &Ctx,
    variant: Variant,
    system: System,
    run: usize,
    total: usize,
) -> anyhow::Result<RunReport> {
    let p = &ctx.params;
    let (source, target) = (&ctx.source, &ctx.target);
    let label = p.variant_label(variant);
    let say = |what: &str| eprintln!("[{run}/{total}] {label}, {}: {what}", system.name());
    let db = format!("bench_run{run}");
    for pg in [source, target] {
        sql(pg, "postgres", &format!("CREATE DATABASE {db}")).await?;
    }
    sql(source, &db, &source_schema_sql()).await?;
    sql(target, &db, &target_schema_sql()).await?;
    if p.large_rows > 0 {
        for pg in [source, target] {
            sql(pg, &db, &bulk_fill_sql(p.large_rows)).await?;
        }
    }
    let at = RunPlace {
        source,
        target,
        db: &db,
        source_dsn: match (variant, system) {
            (Variant::Direct, _) | (Variant::FarTarget, System::Ezone) => source.dsn(&db),
            (Variant::Wan, _) | (Variant::FarTarget, _) => source.dsn_at(ctx.wan_addr, &db),
        },
        target_dsn: match (variant, system) {
            (Variant::FarTarget, System::Ezone) => target.dsn_at(ctx.far_target_addr, &db),
            _ => target.dsn(&db),
        },
        run,
        dir: ctx.dir.path(),
        ezone_bin: &ctx.ezone_bin,
        apply_workers: ctx.params.apply_workers,
        worker_threads: ctx.params.worker_threads,
        streaming: ctx.params.streaming,
    };
    let mut consumer = Consumer::prepare(system, &at).await?;
    let ceiling = Ceiling::prepare(&at).await?;

    // 1. Backlog, with nothing consuming the slot.
    say(&format!(
        "writing a backlog of {} transactions, consumer stopped",
        p.backlog_txns
    ));
    checkpoint(ctx).await?;
    let lsn0 = sql(source, &db, "SELECT pg_current_wal_lsn()").await?;
    sql(source, &db, &mark_sql(1, "backlog start")).await?;
    let began = Instant::now();
    let backlog = ctx
        .pgbench
        .run(
            &format!("run{run}-backlog"),
            &db,
            Pace::Count {
                txns: p.backlog_txns,
            },
        )
        .await?;
    let written_seconds = began.elapsed().as_secs_f64();
    sql(source, &db, &mark_sql(2, "backlog end")).await?;
    let end_lsn = sql(source, &db, "SELECT pg_current_wal_lsn()").await?;
    let wal = sql(
        source,
        &db,
        &format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{}')::bigint",
            lsn0.trim()
        ),
    )
    .await?;
    let wal_bytes: u64 = wal
        .trim()
        .parse()
        .with_context(|| format!("reading the WAL size {wal:?}"))?;
    checkpoint(ctx).await?;

    // 2. Drain: start the consumer, wait for the end mark.
    say("draining the backlog");
    let t0 = unix_micros();
    consumer.start(&at).await?;
    let mut procs = consumer.processes(&at).await?;
    let drain_within = Duration::from_secs(300 + backlog.processed / 50);
    let last = wait_mark(&at, &consumer, 2, drain_within).await?;
    // Lanes opened during the drain started with the consumer's run: all
    // their CPU is the drain's.
    let mut drain_start = vec![Some(Sample::default()); procs.len()];
    with_new_lanes(&consumer, &at, &mut procs, &mut drain_start).await?;
    let drain_ticks: Vec<Option<Sample>> = procs.iter().map(Proc::sample).collect();
    let first = wait_mark(&at, &consumer, 1, TAIL_WITHIN).await?;
    let rows = backlog.processed * p.rows_per_txn;
    let secs = |a: i64, b: i64| (b - a) as f64 / 1e6;
    let (seconds, apply_seconds) = (secs(t0, last), secs(first, last));
    let batches = consumer.batches(&at).await?;
    say("reading the same backlog with pg_recvlogical into /dev/null");
    let stream_only = ceiling
        .measure(&at, &end_lsn, rows, ctx.ticks_per_second)
        .await?;
    let drain = DrainReport {
        txns: backlog.processed,
        rows,
        wal_bytes,
        written_seconds,
        seconds,
        startup_seconds: secs(t0, first),
        apply_seconds,
        txns_per_second: per_second(backlog.processed, seconds),
        rows_per_second: per_second(rows, seconds),
        apply_rows_per_second: per_second(rows, apply_seconds),
        batches,
        cpu: cpu_report(ctx, &procs, &drain_start, &drain_ticks, rows),
        stream_only,
    };

    // 3. Steady load with the consumer running and caught up.
    say(&format!(
        "steady load, {} txn/s for {} s",
        p.rate, p.steady_seconds
    ));
    sql(target, &db, TARGET_HISTORY_TRIGGER_SQL).await?;
    checkpoint(ctx).await?;
    procs.extend(consumer.new_lanes(&at, &procs).await?);
    let mut before: Vec<Option<Sample>> = procs.iter().map(Proc::sample).collect();
    let steady = ctx
        .pgbench
        .run(
            &format!("run{run}-steady"),
            &db,
            Pace::Rate {
                tps: p.rate,
                seconds: p.steady_seconds,
            },
        )
        .await?;
    sql(source, &db, &mark_sql(3, "steady end")).await?;
    wait_mark(&at, &consumer, 3, TAIL_WITHIN).await?;
    with_new_lanes(&consumer, &at, &mut procs, &mut before).await?;
    let after: Vec<Option<Sample>> = procs.iter().map(Proc::sample).collect();
    let lag_out = sql(target, &db, LAG_MICROS_SQL).await?;
    let lag = summarise_lag(
        &parse_integer_lines(&lag_out).map_err(|e| anyhow::anyhow!("reading lag samples: {e}"))?,
    );
    let steady_rows = steady.processed * p.rows_per_txn;
    let steady = SteadyReport {
        offered_tps: p.rate,
        seconds: p.steady_seconds,
        txns: steady.processed,
        rows: steady_rows,
        source_tps: steady.tps,
        lag,
        cpu: cpu_report(ctx, &procs, &before, &after, steady_rows),
    };

    // 4. One large transaction, the consumer caught up.
    let large = if p.large_rows > 0 {
        let verb = match p.large_op {
            LargeOp::Update => "updating",
            LargeOp::Insert => "inserting",
        };
        say(&format!("one transaction {verb} {} rows", p.large_rows));
        checkpoint(ctx).await?;
        let slot_numbers = |out: String| -> (Option<u64>, Option<u64>) {
            let mut it = out.split_whitespace().map(|v| v.parse::<u64>().ok());
            (it.next().flatten(), it.next().flatten())
        };
        let (spill0, stream0) =
            slot_numbers(sql(source, &db, &slot_spill_stream_sql(&consumer.slot())).await?);
        procs.extend(consumer.new_lanes(&at, &procs).await?);
        let mut before: Vec<Option<Sample>> = procs.iter().map(Proc::sample).collect();
        let began = Instant::now();
        sql(source, &db, &large_txn_sql(p.large_op, p.large_rows, 4)).await?;
        let source_seconds = began.elapsed().as_secs_f64();
        let committed = unix_micros();
        let seen = wait_mark(
            &at,
            &consumer,
            4,
            TAIL_WITHIN + Duration::from_secs(p.large_rows / 1000),
        )
        .await?;
        with_new_lanes(&consumer, &at, &mut procs, &mut before).await?;
        let after: Vec<Option<Sample>> = procs.iter().map(Proc::sample).collect();
        let (spill1, stream1) =
            slot_numbers(sql(source, &db, &slot_spill_stream_sql(&consumer.slot())).await?);
        let diff = |a: Option<u64>, b: Option<u64>| Some(b?.saturating_sub(a?));
        Some(LargeReport {
            rows: p.large_rows,
            source_seconds,
            visible_seconds: (seen - committed) as f64 / 1e6,
            source_spill_bytes: diff(spill0, spill1),
            source_stream_bytes: diff(stream0, stream1),
            cpu: cpu_report(ctx, &procs, &before, &after, p.large_rows),
        })
    } else {
        None
    };

    // 5. Check, stop, drop.
    let (a, b) = (
        sql(source, &db, CHECKSUM_SQL).await?,
        sql(target, &db, CHECKSUM_SQL).await?,
    );
    let data_identical = a.trim() == b.trim();
    if !data_identical {
        eprintln!(
            "[{run}/{total}] {label}, {}: WARNING: the target differs from the source:\n  source {}\n  target {}",
            system.name(),
            a.trim(),
            b.trim()
        );
    }
    let conflicts = consumer.conflicts(&at).await?;
    consumer.stop(&at).await?;
    // With pglogical preloaded the run's database stays (idle, its slot and
    // subscription gone): on Postgres 15 pglogical 2.4.2's supervisor never
    // takes the signal barrier DROP DATABASE waits for, so the DROP would
    // hang, and ending the supervisor ends pglogical for the cluster.
    if !p.pglogical_loaded {
        for pg in [target, source] {
            sql(pg, "postgres", &format!("DROP DATABASE {db} WITH (FORCE)")).await?;
        }
    }
    Ok(RunReport {
        variant,
        label,
        added_rtt_ms: match variant {
            Variant::Direct => 0.0,
            Variant::Wan | Variant::FarTarget => p.wan_rtt_ms,
        },
        system,
        drain,
        steady,
        large,
        data_identical,
        conflicts,
    })
}

/// CHECKPOINT both clusters, so that neither phase inherits the other's.
async fn checkpoint(ctx: &Ctx) -> anyhow::Result<()> {
    for pg in [&ctx.source, &ctx.target] {
        sql(pg, "postgres", "CHECKPOINT").await?;
    }
    Ok(())
}

/// Waits until mark `id` is applied at the target; returns when it was
/// (µs since the Unix epoch, the target's clock).
async fn wait_mark(
    at: &RunPlace<'_>,
    consumer: &Consumer,
    id: u32,
    within: Duration,
) -> anyhow::Result<i64> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        consumer.check_running()?;
        let out = sql(at.target, at.db, &mark_seen_sql(id)).await?;
        let seen = parse_integer_lines(&out)
            .map_err(|e| anyhow::anyhow!("reading mark {id} at the target: {e}"))?;
        if let Some(&t) = seen.first() {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the {} consumer did not apply mark {id} within {}s (logs in {})",
                consumer.system().name(),
                within.as_secs(),
                at.dir.display()
            );
        }
        tokio::time::sleep(MARK_POLL).await;
    }
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// At a phase's end: adds the lanes ezone's link opened during it (with
/// `apply_workers = "auto"`), each starting from zero in `from` (the
/// phase's starting samples: `procs` was read again at its start). A lane
/// given back during a phase takes its counts with it: that process's CPU,
/// and so the phase's, is then unknown, not short.
async fn with_new_lanes(
    consumer: &Consumer,
    at: &RunPlace<'_>,
    procs: &mut Vec<Proc>,
    from: &mut Vec<Option<Sample>>,
) -> anyhow::Result<()> {
    for p in consumer.new_lanes(at, procs).await? {
        procs.push(p);
        from.push(Some(Sample::default()));
    }
    Ok(())
}

fn cpu_report(
    ctx: &Ctx,
    procs: &[Proc],
    before: &[Option<Sample>],
    after: &[Option<Sample>],
    rows: u64,
) -> CpuReport {
    let tps = ctx.ticks_per_second.max(1) as f64;
    let by_process: Vec<ProcCpu> = procs
        .iter()
        .zip(before.iter().zip(after))
        .map(|(p, (b, a))| ProcCpu {
            role: p.role,
            pid: p.pid,
            peak_rss_mb: p.peak_rss_kib().map(|k| k as f64 / 1024.0),
            seconds: match (b, a) {
                (Some(b), Some(a)) => Some(a.ticks.saturating_sub(b.ticks) as f64 / tps),
                _ => None,
            },
            switches: match (b, a) {
                (Some(b), Some(a)) => Some(a.switches.saturating_sub(b.switches)),
                _ => None,
            },
        })
        .collect();
    let seconds: Option<f64> = by_process.iter().map(|p| p.seconds).sum();
    let per_10k = |s: Option<f64>| s.filter(|_| rows > 0).map(|s| s / rows as f64 * 10_000.0);
    let walsender = by_process
        .iter()
        .find(|p| p.role == "source walsender")
        .and_then(|p| p.seconds);
    CpuReport {
        seconds,
        per_10k_rows: per_10k(seconds),
        walsender_per_10k_rows: per_10k(walsender),
        by_process,
    }
}

/// ezone / `baseline` for one variant, when both ran.
fn ratios(p: &Params, runs: &[RunReport], v: Variant, baseline: System) -> Option<RatioReport> {
    let find = |s: System| runs.iter().find(|r| r.variant == v && r.system == s);
    let (e, n) = (find(System::Ezone)?, find(baseline)?);
    Some(RatioReport {
        variant: v,
        label: p.variant_label(v),
        baseline,
        drain_rows_per_second: ratio(e.drain.rows_per_second, n.drain.rows_per_second),
        stream_bound: ratio(n.drain.stream_only.rows_per_second, n.drain.rows_per_second),
        apply_rows_per_second: ratio(e.drain.apply_rows_per_second, n.drain.apply_rows_per_second),
        drain_cpu_per_10k_rows: ratio(e.drain.cpu.per_10k_rows, n.drain.cpu.per_10k_rows),
        lag_p50: ratio(
            e.steady.lag.map(|l| l.p50_ms),
            n.steady.lag.map(|l| l.p50_ms),
        ),
        lag_p99: ratio(
            e.steady.lag.map(|l| l.p99_ms),
            n.steady.lag.map(|l| l.p99_ms),
        ),
        steady_cpu_per_10k_rows: ratio(e.steady.cpu.per_10k_rows, n.steady.cpu.per_10k_rows),
        large_visible_seconds: ratio(
            e.large.as_ref().map(|l| l.visible_seconds),
            n.large.as_ref().map(|l| l.visible_seconds),
        ),
    })
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.decimals$}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.2}x"))
}

impl Report {
    /// The tables `ezone bench replicator` prints.
    pub fn table(&self) -> String {
        tables(self)
    }
}

fn tables(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let p = &r.params;
    let first = r.runs.first();
    let _ = writeln!(
        out,
        "ezone bench replicator: PostgreSQL {} source -> target on this machine ({} CPUs), ezone replicator vs {}",
        r.postgres,
        r.cpus,
        if p.pglogical_loaded {
            "native logical replication and pglogical (preloaded at both clusters for every run)"
        } else {
            "native logical replication"
        }
    );
    let _ = writeln!(
        out,
        "workload: pgbench, {} clients; each transaction = account upsert + {}history insert ({} rows); {}",
        p.clients,
        if p.skip_branch_update {
            ""
        } else {
            "branch update + "
        },
        p.rows_per_txn,
        if p.tls {
            "every connection over TLS (verify-full)"
        } else {
            "plain TCP (--plain-tcp)"
        }
    );
    let _ = writeln!(
        out,
        "ezone replicator: apply_workers = {}, worker_threads = {}",
        p.apply_workers, p.worker_threads
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "backlog drain: {} txns ({} rows, {:.1} MB WAL) written with the consumer stopped; timed from consumer start",
        first.map_or(p.backlog_txns, |r| r.drain.txns),
        first.map_or(p.backlog_txns * p.rows_per_txn, |r| r.drain.rows),
        first.map_or(0.0, |r| r.drain.wal_bytes as f64 / 1e6),
    );
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:>8} {:>8} {:>8} {:>8} {:>12} {:>13} {:>13} {:>13} {:>6}",
        "variant",
        "system",
        "drain s",
        "start s",
        "txn/s",
        "rows/s",
        "rows/s apply",
        "CPU s/10k rw",
        "of which wals",
        "stream rows/s",
        "data"
    );
    for run in &r.runs {
        let d = &run.drain;
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>8.2} {:>8.2} {:>8} {:>8} {:>12} {:>13} {:>13} {:>13} {:>6}",
            run.label,
            run.system.name(),
            d.seconds,
            d.startup_seconds,
            opt(d.txns_per_second, 0),
            opt(d.rows_per_second, 0),
            opt(d.apply_rows_per_second, 0),
            opt(d.cpu.per_10k_rows, 3),
            opt(d.cpu.walsender_per_10k_rows, 3),
            opt(d.stream_only.rows_per_second, 0),
            if run.data_identical { "ok" } else { "DIFF" },
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "steady lag: {} txn/s offered for {} s; lag of every transaction = source commit -> applied at the target",
        p.rate, p.steady_seconds
    );
    let _ = writeln!(
        out,
        "{:<10} {:<9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>9}",
        "variant",
        "system",
        "txns",
        "src tps",
        "p50 ms",
        "p99 ms",
        "max ms",
        "mean ms",
        "CPU s/10k rw",
        "conflicts"
    );
    for run in &r.runs {
        let s = &run.steady;
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>13} {:>9}",
            run.label,
            run.system.name(),
            s.txns,
            opt(s.source_tps, 1),
            opt(s.lag.map(|l| l.p50_ms), 2),
            opt(s.lag.map(|l| l.p99_ms), 2),
            opt(s.lag.map(|l| l.max_ms), 2),
            opt(s.lag.map(|l| l.mean_ms), 2),
            opt(s.cpu.per_10k_rows, 3),
            run.conflicts
                .map_or_else(|| "-".to_string(), |c| c.to_string()),
        );
    }
    if r.runs.iter().any(|run| run.large.is_some()) {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "large transaction: one {} of {} rows (and a mark, last) at the source; visible = its COMMIT returned -> applied at the target; streaming before commit {} for ezone and native",
            match p.large_op {
                LargeOp::Update => "UPDATE",
                LargeOp::Insert => "INSERT",
            },
            p.large_rows,
            if p.streaming { "on" } else { "off" }
        );
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>8} {:>9} {:>13} {:>12} {:>13} {:>13}",
            "variant",
            "system",
            "source s",
            "visible s",
            "CPU s/10k rw",
            "src spill MB",
            "src stream MB",
            "peak RSS MB"
        );
        for run in &r.runs {
            let Some(l) = &run.large else { continue };
            let mb = |b: Option<u64>| opt(b.map(|b| b as f64 / 1e6), 1);
            // The consumer's own process: the replicator, or the apply worker.
            let peak = l
                .cpu
                .by_process
                .iter()
                .find(|p| p.role != "source walsender" && p.role != "target backend")
                .and_then(|p| p.peak_rss_mb);
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>8.2} {:>9.2} {:>13} {:>12} {:>13} {:>13}",
                run.label,
                run.system.name(),
                l.source_seconds,
                l.visible_seconds,
                opt(l.cpu.per_10k_rows, 3),
                mb(l.source_spill_bytes),
                mb(l.source_stream_bytes),
                opt(peak, 0),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "CPU by process (seconds, drain / steady / large transaction), its context switches per transaction of the steady load (each a sleep and a wake-up, or a preemption) and its peak RSS at the end (MB; a Postgres process's includes the shared buffers it touched):"
    );
    for run in &r.runs {
        let large = run.large.as_ref().map(|l| &l.cpu.by_process);
        let parts: Vec<String> = run
            .drain
            .cpu
            .by_process
            .iter()
            .zip(&run.steady.cpu.by_process)
            .enumerate()
            .map(|(i, (d, s))| {
                // The last phase's reading holds the run's peak.
                let l = large.and_then(|l| l.get(i));
                let per_txn = s
                    .switches
                    .filter(|_| run.steady.txns > 0)
                    .map(|n| n as f64 / run.steady.txns as f64);
                format!(
                    "{} {} / {} / {}, {} switches/txn, {} MB",
                    d.role,
                    opt(d.seconds, 2),
                    opt(s.seconds, 2),
                    l.map_or_else(|| "-".to_string(), |l| opt(l.seconds, 2)),
                    opt(per_txn, 1),
                    opt(l.map_or(s.peak_rss_mb, |l| l.peak_rss_mb), 0)
                )
            })
            .collect();
        let batches = match run.drain.batches {
            Some(b) if b > 0 => format!(
                "; drain in {b} target transactions ({:.0} rows each)",
                run.drain.rows as f64 / b as f64
            ),
            _ => String::new(),
        };
        let stream = format!(
            "; the backlog to pg_recvlogical: walsender {} s",
            opt(run.drain.stream_only.walsender_cpu_seconds, 2)
        );
        let _ = writeln!(
            out,
            "  {:<10} {:<9} {}{batches}{stream}",
            run.label,
            run.system.name(),
            parts.join(", ")
        );
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "ezone / baseline (throughput: higher is better for ezone; lag and CPU: lower is better; stream bound: the stream alone / the baseline's drain, the most any consumer's drain ratio could be here)"
        );
        let _ = writeln!(
            out,
            "{:<10} {:<9} {:>13} {:>13} {:>13} {:>14} {:>8} {:>8} {:>15} {:>13}",
            "variant",
            "baseline",
            "drain rows/s",
            "stream bound",
            "apply rows/s",
            "drain CPU/10k",
            "lag p50",
            "lag p99",
            "steady CPU/10k",
            "large visible"
        );
        for x in &r.ratios {
            let _ = writeln!(
                out,
                "{:<10} {:<9} {:>13} {:>13} {:>13} {:>14} {:>8} {:>8} {:>15} {:>13}",
                x.label,
                x.baseline.name(),
                times(x.drain_rows_per_second),
                times(x.stream_bound),
                times(x.apply_rows_per_second),
                times(x.drain_cpu_per_10k_rows),
                times(x.lag_p50),
                times(x.lag_p99),
                times(x.steady_cpu_per_10k_rows),
                times(x.large_visible_seconds),
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,"not comparable one to one: native (and pglogical) apply inside the target server, native with synchronous_commit=off; ezone applies over SQL from its own process (its target backend's CPU is counted on its side) with synchronous_commit=on; fsync=off and autovacuum=off on both clusters; see `ezone bench replicator --help` and the module docs");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: ReplicatorBench,
    }

    fn params(args: &[&str]) -> Result<Params, String> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Params::from_args(&cli.bench).map_err(|e| e.to_string())
    }

    #[test]
    fn the_large_transaction_phase_and_streaming_flags() {
        let p = params(&[]).unwrap();
        assert_eq!((p.large_rows, p.streaming), (LARGE_ROWS, false));
        let p = params(&["--quick", "--streaming", "on"]).unwrap();
        assert_eq!((p.large_rows, p.streaming), (QUICK_LARGE_ROWS, true));
        let p = params(&["--streaming", "off", "--large-rows", "0"]).unwrap();
        assert_eq!((p.large_rows, p.streaming), (0, false));
        let e = params(&["--streaming", "true"]).unwrap_err();
        assert!(e.contains("use on or off"), "{e}");
    }
}
