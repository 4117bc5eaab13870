//! A link: one ordered pair of sites, source -> target.
//!
//! ```text
//!   source Postgres                                   target Postgres
//!   ┌──────────────┐  START_REPLICATION at P          ┌──────────────────┐
//!   │ slot (pgoutput) ├──── CopyBoth ───▶ decode ──▶ assemble ──▶ apply ──▶│ origin remote_lsn │
//!   └──────────────┘◀─── status: flushed = last committed end LSN ──────────┘
//!          P = pg_replication_origin_progress(origin) at the target
//! ```
//!
//! Progress is one number, kept in one place: the target's replication
//! origin, advanced in the same commit as the rows. On (re)start the link
//! reads it and asks the source for everything after it; it confirms to the
//! source only what the target has committed. So a crash of the replicator,
//! the source, the target or the network anywhere resumes with no gap and no
//! duplicate.
//!
//! Loop prevention: a transaction that carries an `Origin` was itself
//! replayed by a link into the source; it is skipped (and confirmed), so with
//! links in both directions nothing echoes.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio_postgres::types::Type;

use crate::apply::{Applier, ApplyError, Ownership, Turn};
use crate::config::defaults::MAX_APPLY_WORKERS;
use crate::config::ApplyWorkers;
use crate::confirm::ConfirmTracker;
use crate::lanes::sizing::{Sizer, Start};
use crate::lsn::Lsn;
use crate::pgoutput::{self, DecodeError, LogicalMessage};
use crate::spool::{Outcome, Replay, Spool, SpoolError};
use crate::txn::{AssembleError, Assembler, Event, SourceTxn};
use crate::walsender::{ReplicationConn, SourceConfig, SourceError, StreamEvent};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};

/// One link's settings.
#[derive(Clone)]
pub struct LinkConfig {
    /// `source->target`, e.g. `beijing->shanghai`.
    pub name: String,
    /// The source's replication login (`replication=database`).
    pub source: SourceConfig,
    /// A normal SQL connection string to the source (publication and slot
    /// management).
    pub source_dsn: String,
    /// The target's connection string (a superuser: it sets
    /// `session_replication_role`).
    pub target_dsn: String,
    pub publication: String,
    pub slot: String,
    /// Replication origin at the target for this link.
    pub origin: String,
    /// Tables to replicate (`schema.table` or `table`).
    pub tables: Vec<String>,
    /// Target connections the link applies over ([`crate::lanes`]): a
    /// count (1: one batch at a time) or `auto` ([`crate::lanes::sizing`]).
    pub apply_workers: crate::config::ApplyWorkers,
    /// A source transaction whose decoded changes take more than this many
    /// bytes is applied as it arrives, not held whole
    /// ([`crate::config::defaults::LARGE_TRANSACTION_BYTES`]).
    pub large_transaction_bytes: usize,
    /// `Some(dir)`: the source streams a transaction that outgrows its
    /// `logical_decoding_work_mem` before its commit (protocol version 2),
    /// and the link keeps it in unnamed files in `dir` until then
    /// ([`crate::spool`]); `None`: the source sends each transaction at its
    /// commit (version 1), holding a large one in its own memory and disk.
    pub streaming: Option<std::path::PathBuf>,
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub applied_txns: AtomicU64,
    pub applied_rows: AtomicU64,
    /// Target transactions that applied source transactions (batches):
    /// rows per batch is `applied_rows / applied_batches`.
    pub applied_batches: AtomicU64,
    pub skipped_origin_txns: AtomicU64,
    /// Source transactions too large to hold whole, applied as they arrived
    /// ([`LinkConfig::large_transaction_bytes`]).
    pub large_txns: AtomicU64,
    /// Source transactions streamed before their commit
    /// ([`LinkConfig::streaming`]) that committed, and that aborted.
    pub streamed_txns: AtomicU64,
    pub streamed_aborts: AtomicU64,
    /// Bytes of streamed transactions kept on disk now, waiting for their
    /// commit.
    pub spooled_bytes: AtomicU64,
    pub conflicts: AtomicU64,
    pub markers: AtomicU64,
    pub restarts: AtomicU64,
    /// The source end LSN of the last applied (or skipped) transaction.
    pub last_end_lsn: AtomicU64,
    /// The furthest source WAL position the stream has reported.
    pub source_wal_end: AtomicU64,
    /// Everything of interest up to here has been applied (moves with
    /// applied commits, and with keepalives received between transactions).
    pub caught_up_lsn: AtomicU64,
    /// Source commit time (microseconds since 2000-01-01) of the last applied
    /// transaction.
    pub last_commit_time_us: AtomicI64,
    /// WAL the source keeps for this link's slot (`pg_current_wal_lsn() -
    /// restart_lsn`), sampled every [`SLOT_SAMPLE_INTERVAL`]; `-1` unknown.
    pub retained_wal_bytes: AtomicI64,
    /// Streaming from the source now: from a successful
    /// `START_REPLICATION` until that stream ends.
    pub streaming: AtomicBool,
    /// When the source last spoke on the stream (it accepted
    /// `START_REPLICATION` at the link's position, or sent WAL data or a
    /// keepalive), in [`monotonic_ms`]; 0: never.
    pub source_heard_ms: AtomicU64,
    /// The error the link last stopped streaming with (it restarts after a
    /// transient one), for `/readyz`.
    pub last_error: Mutex<Option<String>>,
    /// The link stopped for good (a definite error: an operator must act).
    pub stopped: AtomicBool,
    /// Target connections the link applies over now (its `apply_workers`;
    /// 0 before it first streams).
    pub lane_count: AtomicU64,
    /// Each lane's numbers, by lane index (only the first `lane_count` are
    /// used).
    pub lanes: [LaneStats; crate::config::defaults::MAX_APPLY_WORKERS],
    /// Batches that found a lane free but had to wait because they touch
    /// rows of a batch in flight ([`crate::lanes`]): more lanes would not
    /// have helped them.
    pub held_back_batches: AtomicU64,
    /// Lanes `auto` opened or gave back ([`crate::lanes::sizing`]): a count
    /// that climbs between two reads of `lane_count` is a link trying lanes
    /// that do not pay (the log says why each time).
    pub lane_changes: AtomicU64,
}

/// One apply lane's numbers ([`crate::lanes`]).
#[derive(Debug, Default)]
pub struct LaneStats {
    /// Batches this lane committed.
    pub batches: AtomicU64,
    /// Microseconds this lane held a batch, from its start to its commit
    /// (waiting for its turn to commit included).
    pub busy_us: AtomicU64,
}

impl LaneStats {
    fn committed(&self, since: Instant) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.busy_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// How often the source's slot is sampled for retained WAL.
pub const SLOT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

impl LinkStats {
    /// Lane `i`'s numbers (the last lane's for an index past the end, which
    /// a valid config never gives).
    pub fn lane(&self, i: usize) -> &LaneStats {
        &self.lanes[i.min(self.lanes.len() - 1)]
    }

    /// Bytes of source WAL not yet applied (0 when caught up).
    pub fn lag_bytes(&self) -> u64 {
        self.source_wal_end
            .load(Ordering::Relaxed)
            .saturating_sub(self.caught_up_lsn.load(Ordering::Relaxed))
    }

    /// Seconds behind: how old the last applied source commit is, while the
    /// link is behind; 0 when caught up; `None` (unknown) while behind with
    /// no transaction applied since the start (no commit time to age).
    pub fn lag_seconds(&self) -> Option<f64> {
        if self.lag_bytes() == 0 {
            return Some(0.0);
        }
        let us = self.last_commit_time_us.load(Ordering::Relaxed);
        if us == 0 {
            return None;
        }
        let t = crate::pgoutput::PgTimestamp(us).to_system_time()?;
        Some(
            std::time::SystemTime::now()
                .duration_since(t)
                .map_or(0.0, |d| d.as_secs_f64()),
        )
    }

    fn raise(cell: &AtomicU64, v: u64) {
        cell.fetch_max(v, Ordering::Relaxed);
    }

    /// The source just spoke on the stream.
    pub fn heard_from_source(&self) {
        self.source_heard_ms
            .store(monotonic_ms(), Ordering::Relaxed);
    }

    /// The source spoke on the stream `ago` (read by the stream's task
    /// while the link was busy elsewhere).
    fn heard_from_source_ago(&self, ago: Duration) {
        let ago = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        Self::raise(
            &self.source_heard_ms,
            monotonic_ms().saturating_sub(ago).max(1),
        );
    }

    /// How long ago the source last spoke on the stream (`None`: never).
    pub fn source_silence(&self) -> Option<Duration> {
        match self.source_heard_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(monotonic_ms().saturating_sub(at))),
        }
    }

    /// The error the link last stopped streaming with, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_error(&self, e: &LinkError) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// Milliseconds on a monotonic clock since its first use in this process,
/// plus one (so that 0 can mean "never").
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let ms = START.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// Marks a link streaming while it lives (however the stream ends).
struct Streaming<'a>(&'a LinkStats);

impl<'a> Streaming<'a> {
    fn start(stats: &'a LinkStats) -> Streaming<'a> {
        stats.heard_from_source();
        stats.streaming.store(true, Ordering::Relaxed);
        Streaming(stats)
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.streaming.store(false, Ordering::Relaxed);
    }
}

/// Why a link stopped or restarted.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link {link}: source: {source}")]
    Source {
        link: String,
        #[source]
        source: SourceError,
    },
    #[error("link {link}: {source}")]
    Apply {
        link: String,
        #[source]
        source: ApplyError,
    },
    #[error("link {link}: undecodable message from the source: {source}")]
    Decode {
        link: String,
        #[source]
        source: DecodeError,
    },
    #[error("link {link}: {source}")]
    Assemble {
        link: String,
        #[source]
        source: AssembleError,
    },
    #[error("link {link}: a transaction streamed before its commit: {source}")]
    Spool {
        link: String,
        #[source]
        source: SpoolError,
    },
    #[error("link {link}: setting up the source: {detail}")]
    Setup { link: String, detail: String },
    /// A table the link replicates has no primary key at the source: it
    /// cannot be applied by key anywhere. Definite.
    #[error("link {link}: source {server}: table {table} has no primary key: ezone replicates only tables with one; add a primary key (at every site) or remove the table from the replicator's tables")]
    NoSourceKey {
        link: String,
        server: String,
        table: String,
    },
}

impl LinkError {
    /// Wraps link `link`'s apply errors (for `map_err`).
    fn apply(link: &str) -> impl Fn(ApplyError) -> LinkError + Copy + '_ {
        move |source| LinkError::Apply {
            link: link.to_string(),
            source,
        }
    }

    /// Wraps link `link`'s source errors (for `map_err`).
    fn source(link: &str) -> impl Fn(SourceError) -> LinkError + Copy + '_ {
        move |source| LinkError::Source {
            link: link.to_string(),
            source,
        }
    }

    /// Wraps link `link`'s spool errors (for `map_err`).
    fn spool(link: &str) -> impl Fn(SpoolError) -> LinkError + Copy + '_ {
        move |source| LinkError::Spool {
            link: link.to_string(),
            source,
        }
    }

    /// Transient errors restart the link; definite ones stop it.
    pub fn is_transient(&self) -> bool {
        match self {
            LinkError::Source { source, .. } => source.is_transient(),
            LinkError::Apply { source, .. } => source.is_transient(),
            LinkError::Setup { .. } => true,
            LinkError::Spool { source, .. } => source.is_transient(),
            LinkError::Decode { .. }
            | LinkError::Assemble { .. }
            | LinkError::NoSourceKey { .. } => false,
        }
    }
}

/// The advisory lock the links out of a source take to create its
/// publication one at a time (a fixed key of ezone's own).
pub const PUBLICATION_LOCK: i64 = 7675238245213418867;

/// Makes sure the source has the publication and the slot, and that every
/// table has a primary key (refused at start otherwise). Idempotent.
pub async fn ensure_source(cfg: &LinkConfig) -> Result<(), LinkError> {
    let setup = |detail: String| LinkError::Setup {
        link: cfg.name.clone(),
        detail,
    };
    let (client, conn) = ezone_pg::connect(&cfg.source_dsn).await.map_err(|e| {
        setup(format!(
            "connecting to {}: {}",
            cfg.source.redacted(),
            crate::chain(&e)
        ))
    })?;
    let task = tokio::spawn(conn);
    let result = async {
        // One round trip for every check (over a WAN each one counts, at
        // every start): the tables without a primary key, whether the
        // publication and the slot exist.
        let row = client
            .query_typed_one(
                "SELECT ARRAY(SELECT t FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i) \
                        WHERE NOT EXISTS (SELECT 1 FROM pg_index \
                                          WHERE indrelid = t::regclass AND indisprimary) \
                        ORDER BY i), \
                 EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2), \
                 EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $3)",
                &[
                    (&cfg.tables, Type::TEXT_ARRAY),
                    (&cfg.publication, Type::TEXT),
                    (&cfg.slot, Type::TEXT),
                ],
            )
            .await
            .map_err(|e| {
                setup(format!(
                    "looking up tables {}, publication {} and slot {}: {}",
                    cfg.tables.join(", "),
                    cfg.publication,
                    cfg.slot,
                    crate::chain(&e)
                ))
            })?;
        let without_key: Vec<String> = row.get(0);
        if let Some(table) = without_key.first() {
            return Err(LinkError::NoSourceKey {
                link: cfg.name.clone(),
                server: cfg.source.redacted(),
                table: table.clone(),
            });
        }
        let exists: bool = row.get(1);
        if !exists {
            // Every link out of this source creates the same publication,
            // and with three sites two links start at once: two sessions
            // that both find it missing and both create it make one fail
            // (42710, or 23505 on the catalog's unique index). Look again
            // and create under an advisory lock, in one transaction.
            let create = format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                crate::sql::quote_ident(&cfg.publication),
                cfg.tables.join(", ")
            );
            let fail = |e: tokio_postgres::Error| {
                setup(format!(
                    "creating publication {}: {}",
                    cfg.publication,
                    crate::chain(&e)
                ))
            };
            client.batch_execute("BEGIN").await.map_err(fail)?;
            let created = async {
                client
                    .execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLICATION_LOCK])
                    .await?;
                let row = client
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
                        &[&cfg.publication],
                    )
                    .await?;
                if !row.get::<_, bool>(0) {
                    client.batch_execute(&create).await?;
                }
                client.batch_execute("COMMIT").await
            }
            .await;
            if let Err(e) = created {
                let _ = client.batch_execute("ROLLBACK").await;
                return Err(fail(e));
            }
        }
        let slot: bool = row.get(2);
        if !slot {
            let mut rc = ReplicationConn::connect(&cfg.source)
                .await
                .map_err(LinkError::source(&cfg.name))?;
            let info = rc
                .create_logical_slot(&cfg.slot, false, true)
                .await
                .map_err(LinkError::source(&cfg.name))?;
            // A new slot: seed the target from the slot's own snapshot, so
            // that the copy and the stream meet exactly at its consistent
            // point. `rc` stays open and idle until the copy is done: the
            // snapshot dies with it.
            if let Some(snapshot) = &info.snapshot_name {
                let mut applier = Applier::connect(&cfg.target_dsn, &cfg.name, &cfg.origin)
                    .await
                    .map_err(LinkError::apply(&cfg.name))?;
                let progress = applier
                    .progress()
                    .await
                    .map_err(LinkError::apply(&cfg.name))?;
                if progress == Lsn(0) {
                    let seeded = applier
                        .seed(&cfg.source_dsn, snapshot, &cfg.tables, info.consistent_point)
                        .await;
                    let rows = match seeded {
                        Ok(rows) => rows,
                        Err(source) => {
                            // Without its copy the slot would stream changes
                            // on top of missing rows: drop it, so the next
                            // attempt creates a new one and seeds again.
                            drop(applier);
                            if let Err(e) = rc.drop_slot(&cfg.slot, false).await {
                                tracing::error!(link = %cfg.name, slot = %cfg.slot, error = %crate::chain(&e), "Could not drop the slot of a failed seed: drop it by hand before restarting.");
                            }
                            return Err(LinkError::apply(&cfg.name)(source));
                        }
                    };
                    match rows {
                        Some(rows) => tracing::info!(link = %cfg.name, rows, at = %info.consistent_point, "Target seeded from the slot's snapshot."),
                        None => tracing::info!(link = %cfg.name, at = %info.consistent_point, "Target not empty: not seeded; streaming from the slot's start."),
                    }
                    applier.close().await;
                } else {
                    tracing::warn!(link = %cfg.name, progress = %progress, "New slot but the target already has progress for this link: not seeding; changes between the old slot and this one are not replicated.");
                    applier.close().await;
                }
            }
            drop(rc);
        }
        Ok(())
    }
    .await;
    task.abort();
    result
}

/// Streams and applies until `stop` is set or an error ends the stream.
pub async fn run_once(
    cfg: &LinkConfig,
    own: &Ownership,
    stats: &LinkStats,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let link = cfg.name.as_str();
    let apply_err = LinkError::apply(link);
    let source_err = LinkError::source(link);
    // The target (its lanes and progress) and the source's replication
    // connection at once: over a WAN, the source's round trips are the long
    // ones.
    let (lane_count, auto) = match cfg.apply_workers {
        ApplyWorkers::Fixed(n) => (n.clamp(1, MAX_APPLY_WORKERS), false),
        ApplyWorkers::Auto => (1, true),
    };
    let ((idle, start), conn) = tokio::try_join!(
        async {
            let appliers = futures::future::try_join_all((0..lane_count).map(|lane| {
                let origin = crate::config::lane_origin(&cfg.origin, lane);
                async move {
                    let a = Applier::connect(&cfg.target_dsn, link, &origin).await?;
                    Ok(a.on_lane(lane))
                }
            }))
            .await
            .map_err(apply_err)?;
            let start = appliers[0].progress().await.map_err(apply_err)?;
            Ok((appliers, start))
        },
        async {
            ReplicationConn::connect(&cfg.source)
                .await
                .map_err(source_err)
        },
    )?;
    let mut stream = conn
        .start_logical(
            &cfg.slot,
            start,
            std::slice::from_ref(&cfg.publication),
            true,
            cfg.streaming.is_some(),
        )
        .await
        .map_err(source_err)?;
    // The source accepted the link's position.
    let _streaming = Streaming::start(stats);
    stats.lane_count.store(lane_count as u64, Ordering::Relaxed);
    tracing::info!(link, start = %start, lanes = lane_count, "Link streaming.");
    let mut assembler = Assembler::new();
    // Transactions the source streams before their commit, kept aside
    // until then (only asked for with `streaming`; a version 1 stream
    // never frames a block).
    let mut spool = Spool::new(cfg.streaming.as_deref());
    // What an earlier stream had kept went with it.
    stats.spooled_bytes.store(0, Ordering::Relaxed);
    // Consecutive transactions already received are applied together in one
    // target transaction (see `Applier::apply_batch`): a busy source's many
    // small transactions cost one BEGIN/COMMIT per batch, not each. Batches
    // are applied on the link's lanes (`Lanes`: the free ones, and the
    // batches in flight, each holding its lane) while the next is received
    // and decoded: the target works while the stream is read, and the next
    // batch is what arrived in the meantime. A batch starts beside the ones
    // in flight only if it touches none of their rows; batches commit one
    // after the other, in source order (`lanes.rs`), and come out of
    // `in_flight` in that order. What is confirmed to the source, and when,
    // is `confirm`'s to say (`confirm.rs`): a batch once committed, a
    // keepalive once all before it is.
    let sizer = if auto {
        // At most a share of the target's free connections: the
        // applications need the rest.
        let free = idle[0].free_connections().await.map_err(apply_err)?;
        let ceiling = crate::lanes::sizing::ceiling(free);
        tracing::info!(link, ceiling, free, "Apply lanes: auto, from one.");
        Some(Sizer::new(ceiling, Instant::now()))
    } else {
        None
    };
    let mut used = [false; MAX_APPLY_WORKERS];
    for lane in used.iter_mut().take(lane_count) {
        *lane = true;
    }
    let mut lanes = Lanes {
        idle,
        in_flight: FuturesOrdered::new(),
        footprints: crate::lanes::InFlight::default(),
        last_commit: None,
        limit: lane_count,
        used,
        sizer,
        opening: None,
        known: None,
    };
    let mut confirm = ConfirmTracker::new();
    let mut batch = Pending {
        // With one lane for good, no batch ever runs beside another.
        track_rows: lane_count > 1 || auto,
        ..Pending::default()
    };
    loop {
        if lanes.sizer.is_some() {
            lanes.resize(cfg, stats);
        }
        let ev = if !lanes.in_flight.is_empty() {
            let step = if batch.is_full() {
                // Enough waiting: let the target catch up before reading on.
                match lanes.in_flight.next().await {
                    Some(done) => Waited::Applied(Box::new(done)),
                    None => continue,
                }
            } else {
                // A free lane and something pending: what is already there
                // first; if nothing is, the pending batch starts beside the
                // ones in flight (if it touches none of their rows).
                let ready = if !batch.txns.is_empty() && !lanes.idle.is_empty() {
                    stream.next().now_or_never()
                } else {
                    None
                };
                let received = match ready {
                    Some(ev) => Some(ev),
                    None => {
                        if !batch.txns.is_empty()
                            && lanes.try_start(&mut batch, &mut confirm, own, stats)
                        {
                            continue;
                        }
                        None
                    }
                };
                let received = match received {
                    Some(ev) => Waited::Received(ev.map_err(SourceFailed)),
                    None => tokio::select! {
                        Some(done) = lanes.in_flight.next() => Waited::Applied(Box::new(done)),
                        ev = stream.next() => Waited::Received(ev.map_err(SourceFailed)),
                    },
                };
                match received {
                    Waited::Received(Err(SourceFailed(e))) => {
                        // The source failed with batches in flight at the
                        // target: let them finish (they do not need the
                        // source) and count those that commit, rather than
                        // drop them half-way; they are confirmed by the next
                        // run, which resumes from the target's origin.
                        while let Some((_, result)) = lanes.in_flight.next().await {
                            match result {
                                Ok(done) => count(stats, &done),
                                Err(_) => break,
                            }
                        }
                        return Err(source_err(e));
                    }
                    other => other,
                }
            };
            match step {
                Waited::Applied(applied) => {
                    let (a, done) = *applied;
                    lanes.landed(a);
                    finished(stats, &mut stream, &mut confirm, done.map_err(apply_err)?);
                    if batch.is_full() {
                        lanes.try_start(&mut batch, &mut confirm, own, stats);
                    }
                    continue;
                }
                Waited::Received(Ok(ev)) => Some(ev),
                // Handled above.
                Waited::Received(Err(SourceFailed(e))) => return Err(source_err(e)),
            }
        } else if batch.txns.is_empty() {
            tokio::select! {
                ev = stream.next() => Some(ev.map_err(source_err)?),
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        } else {
            // Only what is already there (`next` is cancel-safe).
            stream
                .next()
                .now_or_never()
                .transpose()
                .map_err(source_err)?
        };
        let Some(ev) = ev else {
            // Nothing more is ready: apply what is pending if a lane is free
            // and it may run now (else a batch in flight finishes first).
            lanes.try_start(&mut batch, &mut confirm, own, stats);
            continue;
        };
        let Some(ev) = ev else {
            return Err(stream_ended(cfg, &stream, "streaming"));
        };
        stats.heard_from_source();
        match ev {
            StreamEvent::XLogData { data, wal_end, .. } => {
                LinkStats::raise(&stats.source_wal_end, wal_end.0);
                // A streamed transaction's commit gives it back to read
                // (`replay`): whole into the assembler, or as far as
                // `large_transaction_bytes` and the rest as it is applied.
                let (event, mut replay) = if spool.takes(&data) {
                    spooled(cfg, stats, &mut spool, &mut assembler, &data)?
                } else {
                    (assemble(link, &mut assembler, &data)?, None)
                };
                if let Some(Event::Txn(txn)) = event {
                    batch.push(txn);
                    confirm.received();
                    if batch.is_full() {
                        lanes.try_start(&mut batch, &mut confirm, own, stats);
                    }
                } else if assembler.open_bytes() > cfg.large_transaction_bytes {
                    // Too large to hold whole: what came before it is
                    // applied first, in order, then it, as it arrives.
                    while let Some((a, done)) = lanes.in_flight.next().await {
                        lanes.landed(a);
                        finished(stats, &mut stream, &mut confirm, done.map_err(apply_err)?);
                    }
                    if !batch.txns.is_empty() {
                        lanes.try_start(&mut batch, &mut confirm, own, stats);
                        if let Some((a, done)) = lanes.in_flight.next().await {
                            lanes.landed(a);
                            finished(stats, &mut stream, &mut confirm, done.map_err(apply_err)?);
                        }
                    }
                    let Some(mut a) = lanes.idle.pop() else {
                        unreachable!("every lane is free once nothing is in flight");
                    };
                    let began = Instant::now();
                    let feed = match replay.as_mut() {
                        Some(replay) => Feed::Replay {
                            replay,
                            stream: &stream,
                        },
                        None => Feed::Stream(&mut stream),
                    };
                    let done =
                        apply_large(cfg, &mut a, feed, &mut assembler, own, stats, stop).await;
                    if matches!(done, Ok(Some(_))) {
                        stats.lane(a.lane()).committed(began);
                    }
                    lanes.idle.push(a);
                    match done? {
                        Some(done) => {
                            // A batch of its own, the only one in flight.
                            confirm.started(done.last.map(|(end, _)| end));
                            finished(stats, &mut stream, &mut confirm, done);
                        }
                        None => return Ok(()),
                    }
                }
            }
            StreamEvent::Keepalive { wal_end, .. } => {
                LinkStats::raise(&stats.source_wal_end, wal_end.0);
                // Between transactions, everything the source had to send up
                // to `wal_end` has been sent and handled (the stream is in
                // order): we are caught up to it once what is pending (and
                // what is being applied) is applied, and the source may free
                // that WAL. Never inside a transaction: its commit is not
                // applied yet.
                // Nor inside a block of a streamed transaction (what came
                // before the block is sent, but be as strict as inside a
                // transaction).
                let inside = assembler.in_transaction() || spool.in_block();
                if let Some(to) = confirm.keepalive(wal_end, inside) {
                    caught_up(stats, &mut stream, to);
                }
            }
        }
    }
}

/// The source ended the stream (the link restarts from its progress).
fn stream_ended(
    cfg: &LinkConfig,
    stream: &crate::walsender::ReplicationStream,
    during: &'static str,
) -> LinkError {
    LinkError::Source {
        link: cfg.name.clone(),
        source: SourceError::Io {
            server: stream.server().to_string(),
            slot: Some(cfg.slot.clone()),
            during,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the source ended the stream",
            ),
        },
    }
}

/// Decodes one pgoutput message into `assembler`: an event once one is
/// whole.
fn assemble(
    link: &str,
    assembler: &mut Assembler,
    data: &[u8],
) -> Result<Option<Event>, LinkError> {
    let msg = pgoutput::decode(data).map_err(|source| LinkError::Decode {
        link: link.to_string(),
        source,
    })?;
    push(link, assembler, msg)
}

/// Feeds one decoded message to `assembler`.
fn push(
    link: &str,
    assembler: &mut Assembler,
    msg: LogicalMessage,
) -> Result<Option<Event>, LinkError> {
    assembler.push(msg).map_err(|source| LinkError::Assemble {
        link: link.to_string(),
        source,
    })
}

/// Hands one message of a streamed block (or its framing) to `spool`: the
/// event of a streamed transaction that committed and is small enough to
/// be read back whole, or its [`Replay`] with `assembler` holding it open
/// once it is not.
fn spooled(
    cfg: &LinkConfig,
    stats: &LinkStats,
    spool: &mut Spool,
    assembler: &mut Assembler,
    data: &[u8],
) -> Result<(Option<Event>, Option<Replay>), LinkError> {
    let link = cfg.name.as_str();
    let outcome = spool.push(data).map_err(LinkError::spool(link));
    stats.spooled_bytes.store(spool.bytes(), Ordering::Relaxed);
    match outcome? {
        Outcome::Kept => Ok((None, None)),
        Outcome::Aborted { whole } => {
            if whole {
                stats.streamed_aborts.fetch_add(1, Ordering::Relaxed);
            }
            Ok((None, None))
        }
        Outcome::Committed(mut r) => {
            stats.streamed_txns.fetch_add(1, Ordering::Relaxed);
            match replay_into(link, assembler, &mut r, cfg.large_transaction_bytes)? {
                Some(event) => Ok((Some(event), None)),
                None => Ok((None, Some(r))),
            }
        }
    }
}

/// Reads a committed streamed transaction back into `assembler`: its whole
/// event, or `None` once its changes outgrow `large` (the assembler then
/// holds it open, and the rest is read from `replay` as it is applied).
fn replay_into(
    link: &str,
    assembler: &mut Assembler,
    replay: &mut Replay,
    large: usize,
) -> Result<Option<Event>, LinkError> {
    loop {
        let msg = replay.next_message().map_err(LinkError::spool(link))?;
        if let Some(event) = push(link, assembler, msg)? {
            return Ok(Some(event));
        }
        if assembler.open_bytes() > large {
            return Ok(None);
        }
    }
}

/// Where a large transaction's messages come from: the stream (sent at its
/// commit), or a streamed transaction read back from the spool.
enum Feed<'s> {
    Stream(&'s mut crate::walsender::ReplicationStream),
    /// The stream is not read meanwhile; its task keeps answering the
    /// source, and says when it last heard from it (`/readyz`).
    Replay {
        replay: &'s mut Replay,
        stream: &'s crate::walsender::ReplicationStream,
    },
}

/// Applies the open source transaction, too large to hold whole
/// ([`LinkConfig::large_transaction_bytes`]), as it arrives: in parts of at
/// most [`MAX_BATCH_ROWS`] changes (or that many bytes), each applied inside
/// one target transaction opened for it, which commits with the origin
/// advanced to the source transaction's end once its Commit arrives. The
/// link's memory holds one part, not the transaction. Exactly once as for a
/// whole transaction: nothing is committed before the Commit, and any error
/// (or a stop) drops the target transaction, so the link restarts from the
/// origin and the source sends the transaction again. A transaction the
/// source replayed from another site is read through and skipped.
///
/// `None`: `stop` was set meanwhile.
async fn apply_large(
    cfg: &LinkConfig,
    applier: &mut Applier,
    mut feed: Feed<'_>,
    assembler: &mut Assembler,
    own: &Ownership,
    stats: &LinkStats,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<Flushed>, LinkError> {
    let link = cfg.name.as_str();
    let apply_err = LinkError::apply(link);
    let source_err = LinkError::source(link);
    let replayed = assembler.open_origin().is_some();
    tracing::info!(
        link,
        bytes = assembler.open_bytes(),
        limit = cfg.large_transaction_bytes,
        replayed,
        "A source transaction too large to hold whole: applying it as it arrives."
    );
    stats.large_txns.fetch_add(1, Ordering::Relaxed);
    if !replayed {
        applier.begin_streamed().await.map_err(apply_err)?;
    }
    let mut applied = crate::apply::Applied::default();
    let mut parts = 0u64;
    loop {
        if let Some(part) = assembler.take_open_part() {
            if !replayed && !part.changes.is_empty() {
                let a = applier.apply_part(&part, own).await.map_err(apply_err)?;
                merge(&mut applied, a);
                parts += 1;
            }
        }
        // Read on until another part's worth is there, or the Commit.
        let txn = loop {
            let event = match &mut feed {
                Feed::Stream(stream) => {
                    let ev = tokio::select! {
                        // A stop first: the open target transaction is
                        // dropped and the transaction sent again after a
                        // restart.
                        biased;
                        _ = stop.wait_for(|s| *s) => return Ok(None),
                        ev = stream.next() => ev.map_err(source_err)?,
                    };
                    let Some(ev) = ev else {
                        return Err(stream_ended(cfg, stream, "streaming a large transaction"));
                    };
                    stats.heard_from_source();
                    match ev {
                        StreamEvent::XLogData { data, wal_end, .. } => {
                            LinkStats::raise(&stats.source_wal_end, wal_end.0);
                            assemble(link, assembler, &data)?
                        }
                        // Inside a transaction: nothing to confirm.
                        StreamEvent::Keepalive { wal_end, .. } => {
                            LinkStats::raise(&stats.source_wal_end, wal_end.0);
                            continue;
                        }
                    }
                }
                Feed::Replay { replay, stream } => {
                    if *stop.borrow() {
                        return Ok(None);
                    }
                    stats.heard_from_source_ago(stream.silence());
                    let msg = replay.next_message().map_err(LinkError::spool(link))?;
                    push(link, assembler, msg)?
                }
            };
            match event {
                Some(Event::Txn(txn)) => break Some(txn),
                // Not inside a transaction's changes; nothing to do
                // with one, as in the main loop.
                Some(Event::Message(_)) => {}
                None => {
                    if assembler.open_changes() >= MAX_BATCH_ROWS
                        || assembler.open_bytes() >= cfg.large_transaction_bytes
                    {
                        break None;
                    }
                }
            }
        };
        let Some(txn) = txn else {
            continue;
        };
        // The Commit, with the changes since the last part.
        let last = Some((txn.commit.end_lsn, txn.commit.commit_time.0));
        if replayed {
            stats.skipped_origin_txns.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Flushed {
                last,
                applied_txns: 0,
                applied,
            }));
        }
        if !txn.changes.is_empty() {
            let a = applier.apply_part(&txn, own).await.map_err(apply_err)?;
            merge(&mut applied, a);
            parts += 1;
        }
        applier
            .commit_streamed(&txn.commit)
            .await
            .map_err(apply_err)?;
        tracing::info!(link, parts, rows = applied.rows, conflicts = applied.conflicts, end = %txn.commit.end_lsn, "Large source transaction applied.");
        return Ok(Some(Flushed {
            last,
            applied_txns: 1,
            applied,
        }));
    }
}

/// Adds a part's outcome to the whole transaction's.
fn merge(into: &mut crate::apply::Applied, part: crate::apply::Applied) {
    into.rows += part.rows;
    into.conflicts += part.conflicts;
    into.markers.extend(part.markers);
    into.fast_path_statements += part.fast_path_statements;
}

/// What the link waited for while batches were being applied.
enum Waited {
    Applied(Box<(Applier, Result<Flushed, ApplyError>)>),
    Received(Result<Option<StreamEvent>, SourceFailed>),
}

/// The stream failed while batches were in flight.
struct SourceFailed(SourceError);

/// The most row changes applied in one target transaction.
pub const MAX_BATCH_ROWS: usize = 2_000;
/// The most source transactions applied in one target transaction.
pub const MAX_BATCH_TXNS: usize = 500;

/// Received transactions not yet applied.
#[derive(Default)]
struct Pending {
    txns: Vec<SourceTxn>,
    /// The rows they touch ([`crate::lanes`]), kept only when the link has
    /// more than one lane (with one, no batch ever runs beside another).
    footprint: crate::lanes::Footprint,
    track_rows: bool,
    /// Row changes in `txns`.
    rows: usize,
    /// It found a lane free but touched rows of a batch in flight.
    held_back: bool,
    /// It found every lane busy while its rows met none of the batches in
    /// flight: another lane would have started it.
    wanted_lane: bool,
    /// It found every lane busy.
    waited: bool,
    /// How far `footprint` was checked against the batches in flight.
    checked: crate::lanes::Checked,
}

impl Pending {
    fn push(&mut self, txn: SourceTxn) {
        self.rows += txn.changes.len();
        // Replayed transactions are not applied: they touch nothing.
        if self.track_rows && txn.origin.is_none() {
            for ch in &txn.changes {
                self.footprint.add(ch);
            }
        }
        self.txns.push(txn);
    }

    fn is_full(&self) -> bool {
        self.rows >= MAX_BATCH_ROWS || self.txns.len() >= MAX_BATCH_TXNS
    }
}

/// A batch being applied; it gives the applier back with the outcome.
type InFlight<'a> =
    Pin<Box<dyn Future<Output = (Applier, Result<Flushed, ApplyError>)> + Send + 'a>>;

/// An applied (committed) batch, to count and confirm.
struct Flushed {
    /// The last transaction's end and commit time.
    last: Option<(Lsn, i64)>,
    applied_txns: u64,
    applied: crate::apply::Applied,
}

/// A link's lanes while it streams ([`crate::lanes`]).
struct Lanes<'a> {
    /// The free lanes.
    idle: Vec<Applier>,
    /// The batches being applied, each holding its lane, in commit order.
    in_flight: FuturesOrdered<InFlight<'a>>,
    /// The rows the batches in flight touch.
    footprints: crate::lanes::InFlight,
    /// Fires when the youngest batch in flight has committed.
    last_commit: Option<oneshot::Receiver<()>>,
    /// The most batches in flight at once: the lanes the link applies over
    /// now (more may be open for a moment after `auto` gave one back: each
    /// closes as its batch lands).
    limit: usize,
    /// Which lane numbers (and so origins) have an open connection.
    used: [bool; MAX_APPLY_WORKERS],
    /// `auto`: what decides `limit` ([`crate::lanes::sizing`]).
    sizer: Option<Sizer>,
    /// A lane being opened (`auto`): its number and its connection, once
    /// made.
    opening: Option<(usize, oneshot::Receiver<Result<Applier, ApplyError>>)>,
    /// While a lane is opened: the table shapes the others read, for it to
    /// start with.
    known: Option<crate::apply::KnownTables>,
}

impl<'a> Lanes<'a> {
    /// Starts the pending batch on a free lane if it may run beside the
    /// batches in flight (it touches none of their rows): its turn in the
    /// commit order is after the youngest in flight. Whether it did.
    fn try_start(
        &mut self,
        batch: &mut Pending,
        confirm: &mut ConfirmTracker,
        own: &'a Ownership,
        stats: &'a LinkStats,
    ) -> bool {
        if batch.txns.is_empty() {
            return false;
        }
        let free = self.in_flight.len() < self.limit && !self.idle.is_empty();
        if !self
            .footprints
            .may_start_from(&batch.footprint, &mut batch.checked)
        {
            batch.held_back |= free;
            batch.waited |= !free;
            return false;
        }
        if !free {
            batch.wanted_lane = true;
            return false;
        }
        let Some(mut a) = self.idle.pop() else {
            return false;
        };
        if let Some(sizer) = self.sizer.as_mut() {
            sizer.started(Start {
                rows: batch.rows as u64,
                wanted_lane: batch.wanted_lane,
                waited: batch.waited,
                held_back: batch.held_back,
            });
        }
        batch.wanted_lane = false;
        batch.waited = false;
        let (done, committed) = oneshot::channel();
        a.set_turn(Turn::new(self.last_commit.replace(committed), done));
        self.footprints
            .started(std::mem::take(&mut batch.footprint));
        batch.checked = crate::lanes::Checked::default();
        confirm.started(batch.txns.last().map(|t| t.commit.end_lsn));
        self.in_flight.push_back(start_batch(a, own, stats, batch));
        true
    }

    /// A batch came out of `in_flight` (committed or not): its lane is free,
    /// or closed if `auto` gave a lane back since it started.
    fn landed(&mut self, a: Applier) {
        self.footprints.committed();
        if self.opening.is_some() {
            self.known = Some(a.known_tables());
        }
        self.idle.push(a);
        self.trim();
    }

    /// Closes free lanes while more are open than `limit` (after `auto`
    /// gave lanes back; the busy ones close as their batches land). Lane 0
    /// (the link's own origin) stays.
    fn trim(&mut self) {
        while self.idle.len() + self.in_flight.len() > self.limit {
            let Some(i) = self.idle.iter().position(|a| a.lane() != 0) else {
                break;
            };
            let a = self.idle.swap_remove(i);
            self.close(a);
        }
    }

    /// Closes a lane `auto` gave back.
    fn close(&mut self, a: Applier) {
        if let Some(used) = self.used.get_mut(a.lane()) {
            *used = false;
        }
        // Its origin session released before the connection goes, so the
        // lane can open again at once.
        tokio::spawn(a.close());
    }

    /// `auto`: opens or closes lanes if the sizer decides it is time. A lane
    /// opened is a new target connection with its own origin, connected in
    /// a task of its own (across a WAN that takes several round trips, which
    /// the link does not wait for); the lane counts from when it is there,
    /// and nothing else is decided meanwhile.
    fn resize(&mut self, cfg: &LinkConfig, stats: &LinkStats) {
        let Some(sizer) = self.sizer.as_mut() else {
            return;
        };
        let link = cfg.name.as_str();
        if let Some((lane, rx)) = self.opening.as_mut() {
            let lane = *lane;
            let opened = match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(crate::chain(&e)),
                Err(oneshot::error::TryRecvError::Closed) => {
                    Err("the task opening it ended".to_string())
                }
            };
            self.opening = None;
            let known = self.known.take();
            match opened.map(|mut a| {
                if let Some(known) = known {
                    a.adopt_tables(known);
                }
                a
            }) {
                Ok(a) => {
                    self.idle.push(a.on_lane(lane));
                    self.limit = sizer.lanes();
                    sizer.resized(Instant::now());
                    stats.lane_count.store(self.limit as u64, Ordering::Relaxed);
                    stats.lane_changes.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(link, lanes = self.limit, "Apply lane opened.");
                }
                Err(error) => {
                    self.used[lane] = false;
                    sizer.grow_failed(Instant::now());
                    tracing::warn!(
                        link,
                        lane,
                        error,
                        "Could not open another apply lane; the link goes on with the lanes it has and tries later."
                    );
                }
            }
            return;
        }
        let Some(decided) = sizer.tick(Instant::now()) else {
            return;
        };
        tracing::info!(
            link,
            from = self.limit,
            to = decided.to,
            why = decided.why.as_str(),
            "Apply lanes resizing."
        );
        if decided.to > self.idle.len() + self.in_flight.len() {
            let Some(lane) = self.used.iter().position(|u| !u) else {
                sizer.grow_failed(Instant::now());
                return;
            };
            // Taken now, so no other lane gets its origin.
            self.used[lane] = true;
            let (tx, rx) = oneshot::channel();
            let (dsn, name) = (cfg.target_dsn.clone(), cfg.name.clone());
            let origin = crate::config::lane_origin(&cfg.origin, lane);
            tokio::spawn(async move {
                let _ = tx.send(Applier::connect(&dsn, &name, &origin).await);
            });
            self.opening = Some((lane, rx));
            self.known = self.idle.first().map(Applier::known_tables);
            return;
        }
        sizer.resized(Instant::now());
        self.limit = decided.to;
        self.trim();
        stats.lane_changes.fetch_add(1, Ordering::Relaxed);
        stats.lane_count.store(self.limit as u64, Ordering::Relaxed);
    }
}

/// Starts applying the pending batch (skipping replayed transactions) on
/// `applier`; the batch is empty again.
fn start_batch<'a>(
    mut applier: Applier,
    own: &'a Ownership,
    stats: &'a LinkStats,
    pending: &mut Pending,
) -> InFlight<'a> {
    pending.rows = 0;
    if std::mem::take(&mut pending.held_back) {
        stats.held_back_batches.fetch_add(1, Ordering::Relaxed);
    }
    let began = Instant::now();
    let txns = std::mem::take(&mut pending.txns);
    let last = txns
        .last()
        .map(|t| (t.commit.end_lsn, t.commit.commit_time.0));
    let (skipped, ours): (Vec<SourceTxn>, Vec<SourceTxn>) =
        txns.into_iter().partition(|t| t.origin.is_some());
    // Replayed into the source by a link: not ours to send on.
    stats
        .skipped_origin_txns
        .fetch_add(skipped.len() as u64, Ordering::Relaxed);
    Box::pin(async move {
        let applied = if ours.is_empty() {
            // Nothing to apply; still in the commit order.
            applier
                .pass_turn()
                .await
                .map(|()| crate::apply::Applied::default())
        } else {
            applier.apply_batch(&ours, own).await
        };
        let done = applied.map(|applied| {
            stats.lane(applier.lane()).committed(began);
            Flushed {
                last,
                applied_txns: ours.len() as u64,
                applied,
            }
        });
        (applier, done)
    })
}

/// Counts the oldest batch in flight, just committed at the target (or
/// with nothing to commit), and confirms to the source what its commit
/// lets the link confirm ([`ConfirmTracker::committed`]): the source may
/// now forget it.
fn finished(
    stats: &LinkStats,
    stream: &mut crate::walsender::ReplicationStream,
    confirm: &mut ConfirmTracker,
    done: Flushed,
) {
    count(stats, &done);
    if let Some((end, commit_time)) = done.last {
        stats.last_end_lsn.store(end.0, Ordering::Relaxed);
        LinkStats::raise(&stats.source_wal_end, end.0);
        stats
            .last_commit_time_us
            .store(commit_time, Ordering::Relaxed);
    }
    if let Some(to) = confirm.committed() {
        caught_up(stats, stream, to);
    }
}

/// Everything of interest up to `to` is applied: confirmed to the source,
/// and the link's lag counts from there.
fn caught_up(stats: &LinkStats, stream: &mut crate::walsender::ReplicationStream, to: Lsn) {
    LinkStats::raise(&stats.caught_up_lsn, to.0);
    stream.confirm(to);
}

/// Counts a committed batch's transactions, rows, conflicts and markers.
fn count(stats: &LinkStats, done: &Flushed) {
    stats
        .applied_txns
        .fetch_add(done.applied_txns, Ordering::Relaxed);
    stats
        .applied_rows
        .fetch_add(done.applied.rows, Ordering::Relaxed);
    if done.applied_txns > 0 {
        stats.applied_batches.fetch_add(1, Ordering::Relaxed);
    }
    stats
        .conflicts
        .fetch_add(done.applied.conflicts, Ordering::Relaxed);
    stats
        .markers
        .fetch_add(done.applied.markers.len() as u64, Ordering::Relaxed);
}

/// Runs a link until `stop`: transient errors restart it (with backoff),
/// a definite error ends it and is returned.
pub async fn run(
    cfg: LinkConfig,
    stats: Arc<LinkStats>,
    stop: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let own = Ownership::for_link(&cfg.name);
    run_with(cfg, own, stats, stop).await
}

/// As [`run`], with ownership rules (shard keys, topology, policy) for
/// conflict decisions.
pub async fn run_with(
    cfg: LinkConfig,
    own: Ownership,
    stats: Arc<LinkStats>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    stats.retained_wal_bytes.store(-1, Ordering::Relaxed);
    let monitor = tokio::spawn(sample_slot(cfg.clone(), stats.clone(), stop.clone()));
    let result = run_link(cfg, own, stats, &mut stop).await;
    monitor.abort();
    result
}

/// Samples the source slot's retained WAL until `stop`, reconnecting as needed.
async fn sample_slot(cfg: LinkConfig, stats: Arc<LinkStats>, mut stop: watch::Receiver<bool>) {
    loop {
        if let Ok((client, conn)) = ezone_pg::connect(&cfg.source_dsn).await {
            let task = tokio::spawn(conn);
            loop {
                let row = client
                    .query_opt(
                        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
                         FROM pg_replication_slots WHERE slot_name = $1",
                        &[&cfg.slot],
                    )
                    .await;
                match row {
                    Ok(Some(r)) => {
                        let v: Option<i64> = r.get(0);
                        stats
                            .retained_wal_bytes
                            .store(v.unwrap_or(-1), Ordering::Relaxed);
                    }
                    Ok(None) => stats.retained_wal_bytes.store(-1, Ordering::Relaxed),
                    Err(_) => break,
                }
                tokio::select! {
                    _ = tokio::time::sleep(SLOT_SAMPLE_INTERVAL) => {}
                    _ = stop.wait_for(|s| *s) => { task.abort(); return; }
                }
            }
            task.abort();
        }
        tokio::select! {
            _ = tokio::time::sleep(SLOT_SAMPLE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn run_link(
    cfg: LinkConfig,
    own: Ownership,
    stats: Arc<LinkStats>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), LinkError> {
    let mut backoff =
        ezone_topology::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let result = match ensure_source(&cfg).await {
            Ok(()) => run_once(&cfg, &own, &stats, stop).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => {
                stats.restarts.fetch_add(1, Ordering::Relaxed);
                stats.set_error(&e);
                tracing::warn!(link = %cfg.name, error = %crate::chain(&e), "Link interrupted; restarting from the target's progress.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_wait()) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
            Err(e) => {
                stats.set_error(&e);
                stats.stopped.store(true, Ordering::Relaxed);
                tracing::error!(link = %cfg.name, error = %crate::chain(&e), "Link stopped: an operator must act.");
                return Err(e);
            }
        }
    }
}
