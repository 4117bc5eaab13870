//! The target side: apply whole source transactions, in commit order, each in
//! one target transaction that also advances this link's replication origin.
//!
//! ```text
//!  BEGIN
//!  SELECT pg_replication_origin_xact_setup(<source commit end LSN>, <source commit time>)
//!  INSERT/UPDATE/DELETE ...            (session_replication_role = replica)
//!  [conflict rows into ezone_replication.conflicts]
//!  [marker rows into ezone_replication.markers]
//!  COMMIT                              <- the rows and the origin's progress, atomically
//! ```
//!
//! Why this is exactly-once: the origin's `remote_lsn` moves only with a
//! commit of the applied rows. After a crash anywhere, the link restarts the
//! source stream at `pg_replication_origin_progress(origin, true)`: every
//! transaction committed at the target is at or before it and is skipped by
//! the source, every later one is sent again. The source slot is confirmed
//! only up to what this module has committed, so the source never discards
//! WAL the target still needs.
//!
//! Why `session_replication_role = replica`: user triggers and foreign-key
//! checks do not fire for replayed rows (they fired at the source), as in
//! native logical replication. The session's origin also marks every
//! replayed transaction in the target's WAL, which is how the link leaving
//! the target knows not to send it back (loop prevention).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use futures::FutureExt;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::conflict::{self, Op, Policy, Resolution, Right, ShardKey};
use crate::lsn::Lsn;
use crate::ownership::{self, Verdict};
use crate::pgoutput::{Relation, TupleData};
use crate::plan::{self, StepStatement};
use crate::sql::{self, ColumnInfo, SetStatement, ShapeError, Statement, TableInfo};
use crate::txn::{Change, SourceTxn};
use ezone_topology::history::ShardHistory;
use ezone_topology::{Epoch, ShardId, Topology};

/// Whether the planted bug `apply.drop_batch` fires for this batch (see
/// [`Applier::apply_batch`]); never without the `failpoints` feature.
fn drop_batch_failpoint() -> bool {
    fail::fail_point!("apply.drop_batch", |_| true);
    false
}

/// The origin of lane `lane` of a link whose origin is `origin`: lane 0
/// is the link's own, lane `i` is `<origin>#<i>` ([`crate::lanes`]).
pub fn lane_origin(origin: &str, lane: usize) -> String {
    if lane == 0 {
        origin.to_string()
    } else {
        format!("{origin}#{lane}")
    }
}

/// What went wrong applying, classified by what the link should do.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The target connection failed or a transient database error: retry the
    /// same transaction after reconnecting (nothing was committed).
    #[error("target {target}: {detail} (transient: the link will reconnect and retry)")]
    Transient { target: String, detail: String },
    /// The change cannot be applied as is (schema drift, no primary key, a
    /// constraint the data violates): the link stops with this error.
    #[error("target {target}: {detail}")]
    Definite { target: String, detail: String },
    #[error("target {target}: {source}")]
    Shape {
        target: String,
        #[source]
        source: ShapeError,
    },
}

impl ApplyError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Transient { .. })
    }
}

/// Who owns what, for conflict decisions (see [`crate::conflict`] and
/// [`crate::ownership`]).
#[derive(Clone)]
pub struct Ownership {
    /// The link's source and target site names.
    pub source_site: String,
    pub target_site: String,
    pub policy: Policy,
    /// Shard key column per table (`schema.table`); tables without one are
    /// not checked for ownership.
    pub shard_keys: HashMap<String, ShardKey>,
    /// The current topology (a lock-free read of the watcher's snapshot).
    pub topology: Option<TopologyFn>,
    /// Reads a shard's epoch history from the store, for changes stamped
    /// with an epoch older than the view after the home moved. Without
    /// it such changes are judged by the view.
    pub history: Option<HistoryFn>,
    /// How long a change stamped with an epoch newer than the view waits
    /// for the view before the batch fails (transient: the link retries).
    pub view_wait: Duration,
    /// Histories read so far, each with the view epoch it was read at
    /// (entries never change; a newer view may need newer entries).
    pub histories: HistoryCache,
}

/// Shard histories an applier has read, each with the view epoch it was
/// read at (shared by the clones of one link's [`Ownership`]).
pub type HistoryCache = Arc<Mutex<HashMap<ShardId, (Epoch, Arc<ShardHistory>)>>>;

impl Default for Ownership {
    fn default() -> Ownership {
        Ownership {
            source_site: String::new(),
            target_site: String::new(),
            policy: Policy::default(),
            shard_keys: HashMap::new(),
            topology: None,
            history: None,
            view_wait: DEFAULT_VIEW_WAIT,
            histories: Arc::default(),
        }
    }
}

/// How long a change waits for the view to reach its epoch by default:
/// far more than a watch takes to deliver a change (milliseconds), short
/// enough that a replicator cut off from etcd says so soon.
pub const DEFAULT_VIEW_WAIT: Duration = Duration::from_secs(10);

/// Reads the current topology.
pub type TopologyFn = Arc<dyn Fn() -> Option<Arc<Topology>> + Send + Sync>;

/// Reads a shard's epoch history (an error says why it could not).
pub type HistoryFn =
    Arc<dyn Fn(ShardId) -> BoxFuture<'static, Result<ShardHistory, String>> + Send + Sync>;

impl Ownership {
    /// No ownership rules: sites from a link name `source->target`, the
    /// default policy, no shard keys (only existing/missing rows conflict).
    pub fn for_link(link: &str) -> Ownership {
        let (s, t) = link.split_once("->").unwrap_or((link, ""));
        Ownership {
            source_site: s.to_string(),
            target_site: t.to_string(),
            ..Ownership::default()
        }
    }

    /// The shard of a row image of `rel`, if the table has a shard key and
    /// the value maps to a shard.
    fn shard_of(
        &self,
        topology: Option<&Topology>,
        rel: &Relation,
        image: &TupleData,
    ) -> Option<ShardId> {
        let t = topology?;
        let key = self.shard_key(rel)?;
        let idx = rel.columns.iter().position(|c| c.name == key.column)?;
        let value = image.columns.get(idx)?.as_text()?;
        conflict::shard_of(t, key, value)
    }

    /// The verdict on a change of `txn` from the source for the row of
    /// `shard` (`None`: not judged, no shard). Waits for the view when the
    /// change's stamp is newer, reads the shard's history when it is older
    /// and the home moved ([`ownership::judge`]). An error is transient:
    /// the view did not catch up in time, or the history could not be read.
    async fn verdict(
        &self,
        shard: Option<ShardId>,
        txn: &SourceTxn,
    ) -> Result<Option<Verdict>, String> {
        let Some(shard) = shard else {
            return Ok(None);
        };
        let stamp = txn.stamp(shard);
        let deadline = tokio::time::Instant::now() + self.view_wait;
        let mut told = false;
        loop {
            let Some(t) = self.topology.as_ref().and_then(|f| f()) else {
                return Ok(None);
            };
            let Some(view) = t.shards.get(&shard) else {
                return Ok(None);
            };
            let cached = self
                .histories
                .lock()
                .ok()
                .and_then(|h| h.get(&shard).cloned())
                .filter(|(at, _)| *at >= view.epoch)
                .map(|(_, h)| h);
            match ownership::judge(&self.source_site, view, stamp, cached.as_deref()) {
                Verdict::AwaitView { epoch } => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "a change from {} for shard {shard} was accepted at epoch {epoch}, but this \
                             replicator's view of the topology is still at epoch {} after {:?}: is etcd \
                             reachable from here? (retrying)",
                            self.source_site, view.epoch, self.view_wait
                        ));
                    }
                    if !told {
                        tracing::info!(source = %self.source_site, shard, epoch, view_epoch = view.epoch,
                            "A change is stamped with a newer epoch than this replicator's topology view: waiting for the view.");
                        told = true;
                    }
                    tokio::time::sleep(VIEW_POLL).await;
                }
                Verdict::NeedHistory => {
                    let mut history = match &self.history {
                        Some(read) => read(shard).await.map_err(|e| {
                            format!("reading the epoch history of shard {shard}: {e} (retrying)")
                        })?,
                        None => ShardHistory::default(),
                    };
                    // Completed with the view once here, not per change.
                    history.learn(ezone_topology::history::EpochEntry {
                        epoch: view.epoch,
                        home: view.home.clone(),
                        state: view.state,
                        how: ezone_topology::history::Transition::Other,
                        at_ms: 0,
                    });
                    if let Ok(mut h) = self.histories.lock() {
                        h.insert(shard, (view.epoch, Arc::new(history)));
                    }
                }
                v => return Ok(Some(v)),
            }
        }
    }

    /// The table's shard key, if it has one (asked for every row change:
    /// no name is built when no table has one).
    fn shard_key(&self, rel: &Relation) -> Option<&ShardKey> {
        if self.shard_keys.is_empty() {
            return None;
        }
        self.shard_keys
            .get(&format!("{}.{}", rel.namespace, rel.name))
    }

    /// The table has a shard key but this image does not carry its value: a
    /// delete's key-only old row (default replica identity) when the shard
    /// key is not part of the primary key. The owner must then be read from
    /// the target's row, never assumed.
    fn lacks_key(&self, rel: &Relation, image: &TupleData) -> bool {
        let Some(key) = self.shard_key(rel) else {
            return false;
        };
        match rel.columns.iter().position(|c| c.name == key.column) {
            Some(idx) => image.columns.get(idx).and_then(|v| v.as_text()).is_none(),
            None => false,
        }
    }

    /// The shard from the target's current row (for images that lack the
    /// shard key): the row's JSON, its key column, the topology.
    fn shard_of_json(
        &self,
        topology: Option<&Topology>,
        rel: &Relation,
        row: &str,
    ) -> Option<ShardId> {
        let t = topology?;
        let key = self.shard_key(rel)?;
        let v: serde_json::Value = serde_json::from_str(row).ok()?;
        let value = match v.get(&key.column)? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        conflict::shard_of(t, key, &value)
    }
}

/// How often a change waiting for the view looks again.
const VIEW_POLL: Duration = Duration::from_millis(5);

/// The conflict rules' reading of a verdict: the verdict decides, not the
/// name of the home it carries (see [`conflict::Right`]).
fn right_of(verdict: &Option<Verdict>) -> Right {
    match verdict {
        Some(Verdict::Owner) => Right::Owner,
        Some(Verdict::Foreign { .. }) => Right::Foreign,
        // judge() answers the other two only to be asked again.
        Some(Verdict::AwaitView { .. } | Verdict::NeedHistory) | None => Right::Unjudged,
    }
}

/// How one transaction went.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub rows: u64,
    pub conflicts: u64,
    /// Prefixes of logical messages (markers) applied with it.
    pub markers: Vec<String>,
    /// Statements the fast path wrote the rows with (set statements
    /// and lone rows, see [`crate::plan`]); 0 when the careful path applied
    /// the batch one change at a time.
    pub fast_path_statements: u64,
}

/// The advisory lock [`SCHEMA_SQL`] takes (a fixed key of ezone's own), so
/// that concurrent appliers ensure the schema one at a time.
pub const SCHEMA_LOCK: i64 = 7675238245213418866;

/// The DDL ezone keeps at each target: conflicts and applied markers.
///
/// `conflicts.op` is the incoming change's operation (`insert`, `update`,
/// `delete`: see [`conflict::Op`]); `conflicts.shard` the row's shard, when
/// the table has a shard key (a switchover refuses to move a shard with
/// unresolved conflicts). Tables made by an older ezone lack them: they
/// are added here, where every applier ensures the schema, and their
/// existing rows keep a NULL op (repair then does what it did before the
/// column existed: see [`crate::repair::choose`]). The `ALTER` runs only
/// when the column is missing: even with `IF NOT EXISTS` it takes an
/// ACCESS EXCLUSIVE lock on the table before looking, so run at every
/// applier start it would wait behind (and then block) a repair or a
/// `conflicts list` reading the table. `IF NOT EXISTS` still covers two
/// appliers adding it at once.
///
/// The whole text runs as one transaction (a simple query of many
/// statements) that first takes the advisory lock [`SCHEMA_LOCK`]: `IF NOT
/// EXISTS` does not make two sessions creating the same object safe (both see it missing,
/// the second fails on the catalog's unique index, SQLSTATE 23505), and
/// every link into a site (one per other site) ensures the schema when it
/// starts, at once when the replicator starts.
pub const SCHEMA_SQL: &str = "
SELECT pg_advisory_xact_lock(7675238245213418866); -- SCHEMA_LOCK
CREATE SCHEMA IF NOT EXISTS ezone_replication;
CREATE TABLE IF NOT EXISTS ezone_replication.conflicts (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    link text NOT NULL,
    kind text NOT NULL,
    op text,
    relation text NOT NULL,
    source_commit_lsn pg_lsn NOT NULL,
    source_commit_time timestamptz NOT NULL,
    remote_row jsonb,
    local_row jsonb,
    reason text NOT NULL,
    resolution text NOT NULL,
    resolved boolean NOT NULL DEFAULT false
);
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'ezone_replication.conflicts'::regclass
                     AND attname = 'op' AND NOT attisdropped) THEN
        ALTER TABLE ezone_replication.conflicts ADD COLUMN IF NOT EXISTS op text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = 'ezone_replication.conflicts'::regclass
                     AND attname = 'shard' AND NOT attisdropped) THEN
        ALTER TABLE ezone_replication.conflicts ADD COLUMN IF NOT EXISTS shard integer;
    END IF;
END $$;
CREATE TABLE IF NOT EXISTS ezone_replication.markers (
    link text NOT NULL,
    prefix text NOT NULL,
    content bytea NOT NULL,
    source_lsn pg_lsn NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (link, source_lsn, prefix)
);
";

/// Planner settings for set statements (see [`crate::plan`]), set for a
/// run of them and reset after it, within the apply transaction.
///
/// A set statement joins the `unnest` of its arrays to the table by the
/// primary key. Left to the planner, that join becomes a hash join over a
/// sequential scan of the whole table when the table is empty or never
/// analyzed at the first execution, and the prepared statement keeps that
/// plan while the table grows (with autovacuum off, for ever). So: one
/// generic plan per statement, which takes the arrays for 10 rows (no
/// planning per execution), and no hash or merge joins: a nested loop of
/// primary-key index lookups. Reset after the run, so that user code (a
/// trigger enabled `ALWAYS` on a table written row by row) plans with the
/// target's own settings. Sequential scans are not disabled: a disabled
/// scan that is still needed somewhere costs 10^10, which sends every such
/// statement through JIT compilation.
pub const SET_PLANNER_SQL: &str = "SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Back to the session's settings after a run of set statements.
pub const RESET_PLANNER_SQL: &str = "SET LOCAL plan_cache_mode TO DEFAULT; \
     SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT";

/// Advances the link's origin in the apply transaction.
const ORIGIN_SETUP_SQL: &str = "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, $2)";

/// What one pipelined fast-path statement must do.
enum Expect<'s> {
    /// Planner settings: succeed.
    Settings,
    /// A row statement: touch its row.
    Row(&'s str),
    /// A set statement: touch this many rows.
    Set(&'s str, u64),
}

/// A connection to the target, set up for one link.
pub struct Applier {
    client: Client,
    target: String,
    link: String,
    origin: String,
    tables: HashMap<(String, String), Arc<TableInfo>>,
    /// Prepared statements by SQL text: one round trip per row instead of
    /// two (parse + execute). Bounded by [`MAX_CACHED_STATEMENTS`].
    statements: HashMap<String, tokio_postgres::Statement>,
    /// This batch's place in the link's commit order, when the link applies
    /// over several lanes ([`crate::lanes`]): it commits only after the
    /// batch before it has.
    turn: Option<Turn>,
    conn: tokio::task::JoinHandle<()>,
}

/// A batch's place in its link's commit order.
#[derive(Debug)]
pub struct Turn {
    /// Fires when the batch before this one has committed; `None`: there is
    /// none in flight, or it was already awaited.
    prev: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired once this batch has committed; dropped unfired if it does not,
    /// which stops the batches after it from committing.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    pub fn new(
        prev: Option<tokio::sync::oneshot::Receiver<()>>,
        done: tokio::sync::oneshot::Sender<()>,
    ) -> Turn {
        Turn {
            prev,
            done: Some(done),
        }
    }
}

/// Waits for the batch before this one to commit (at most once).
async fn wait_turn(turn: &mut Option<Turn>, target: &str) -> Result<(), ApplyError> {
    let Some(prev) = turn.as_mut().and_then(|t| t.prev.take()) else {
        return Ok(());
    };
    prev.await.map_err(|_| ApplyError::Transient {
        target: target.to_string(),
        detail: "an earlier batch of this link did not commit, so this one is not committed \
                 either (the link restarts from its progress)"
            .to_string(),
    })
}

/// This batch committed: the next one may.
fn turn_done(turn: Option<Turn>) {
    if let Some(done) = turn.and_then(|t| t.done) {
        let _ = done.send(());
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Connects as `dsn` says; a DSN that does not parse is definite.
async fn connect(
    dsn: &str,
    target: &str,
    what: &str,
) -> Result<(Client, ezone_pg::Connection), ApplyError> {
    match ezone_pg::connect(dsn).await {
        Ok(c) => Ok(c),
        Err(ezone_pg::ConnectError::Postgres(e)) => Err(classify(target, what, e)),
        Err(e @ ezone_pg::ConnectError::Dsn(_)) => Err(ApplyError::Definite {
            target: target.to_string(),
            detail: format!("{what}: {e}"),
        }),
    }
}

fn classify(target: &str, what: &str, e: tokio_postgres::Error) -> ApplyError {
    let detail = match e.as_db_error() {
        Some(db) => format!("{what}: {} ({})", db.message(), db.code().code()),
        None => format!("{what}: {}", crate::chain(&e)),
    };
    // A write this applier does not understand stops the link rather than
    // loop on it (crate::pg_error: `Other` is definite here).
    let transient = crate::pg_error::Kind::of(&e).transient_or(false);
    if transient {
        ApplyError::Transient {
            target: target.to_string(),
            detail,
        }
    } else {
        ApplyError::Definite {
            target: target.to_string(),
            detail,
        }
    }
}

/// One conflict, as it is recorded in `ezone_replication.conflicts`.
struct ConflictRecord<'a> {
    /// `foreign_shard`, `insert_exists`, `update_missing`, `delete_missing`.
    kind: &'a str,
    /// The incoming change's operation.
    op: Op,
    shard: Option<ShardId>,
    table: &'a TableInfo,
    rel: &'a Relation,
    /// The incoming row image (the old one for a delete).
    image: &'a TupleData,
    reason: &'a str,
    resolution: &'a str,
}

/// Where conflicts are recorded from: the link, its target and the source
/// transaction being applied.
struct RecordAt<'a> {
    link: &'a str,
    target: &'a str,
    txn: &'a SourceTxn,
    commit_time: std::time::SystemTime,
}

/// Writes one conflict record, with both versions and the incoming change's
/// operation, in the apply transaction.
async fn record(tx: &Client, at: &RecordAt<'_>, c: ConflictRecord<'_>) -> Result<(), ApplyError> {
    let ConflictRecord {
        kind,
        op,
        shard,
        table: t,
        rel,
        image,
        reason,
        resolution,
    } = c;
    let local = match sql::select_row(t, rel, image) {
        Ok(st) => tx
            .query_opt(st.sql.as_str(), &params(&st))
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<String>>(0)),
        Err(_) => None,
    };
    tx.execute(
        "INSERT INTO ezone_replication.conflicts \
         (link, kind, op, relation, source_commit_lsn, source_commit_time, remote_row, local_row, reason, resolution, shard) \
         VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7::text::jsonb, $8::text::jsonb, $9, $10, $11)",
        &[
            &at.link,
            &kind,
            &op.as_str(),
            &t.qualified,
            &at.txn.commit.commit_lsn.to_string(),
            &at.commit_time,
            &sql::image_json(rel, image),
            &local,
            &reason,
            &resolution,
            &shard.and_then(|s| i32::try_from(s).ok()),
        ],
    )
    .await
    .map_err(|e| classify(at.target, "recording a conflict", e))?;
    tracing::warn!(link = at.link, kind, op = op.as_str(), relation = %t.qualified, lsn = %at.txn.commit.commit_lsn, resolution, "Replication conflict recorded.");
    Ok(())
}

/// The relation and the row image a row change is about (the new row, or
/// the old one for a delete); `None` for truncates and messages.
fn row_image(ch: &Change) -> Option<(&Arc<Relation>, &TupleData)> {
    match ch {
        Change::Insert { rel, new } | Change::Update { rel, new, .. } => Some((rel, new)),
        Change::Delete { rel, old } => Some((rel, old.tuple())),
        _ => None,
    }
}

/// The operation of a row change, as a conflict records it; `None` for
/// truncates and messages (never recorded as conflicts).
fn op_of(ch: &Change) -> Option<Op> {
    match ch {
        Change::Insert { .. } => Some(Op::Insert),
        Change::Update { .. } => Some(Op::Update),
        Change::Delete { .. } => Some(Op::Delete),
        Change::Truncate { .. } | Change::Message(_) => None,
    }
}

/// How many distinct prepared statements an applier keeps.
pub const MAX_CACHED_STATEMENTS: usize = 1000;

/// Executes a statement, preparing it once per connection (all parameters
/// are text: see [`crate::sql`]).
async fn exec(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &Statement,
) -> Result<u64, tokio_postgres::Error> {
    let prepared = prepare(tx, cache, st).await?;
    tx.execute(&prepared, &params(st)).await
}

/// The prepared form of `st` on this connection, preparing it on first use.
async fn prepare(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &Statement,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    prepare_typed(tx, cache, &st.sql, Type::TEXT, st.params.len()).await
}

/// As [`prepare`], for a set statement (every parameter `text[]`).
async fn prepare_set(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &SetStatement<'_>,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    prepare_typed(tx, cache, &st.sql, Type::TEXT_ARRAY, st.arrays.len()).await
}

async fn prepare_typed(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
    ty: Type,
    n: usize,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if let Some(p) = cache.get(sql) {
        return Ok(p.clone());
    }
    let p = tx.prepare_typed(sql, &vec![ty; n]).await?;
    cache.insert(sql.to_string(), p.clone());
    Ok(p)
}

/// A fast-path statement failed: a broken connection is returned (the link
/// reconnects); anything else rolls back, and the caller sends the batch
/// down the careful path, which applies in source order and reports the
/// error if it is real.
async fn fall_back(
    tx: tokio_postgres::Transaction<'_>,
    link: &str,
    err: ApplyError,
) -> Result<(), ApplyError> {
    if err.is_transient() {
        return Err(err);
    }
    tracing::debug!(link, error = %err, "Fast path failed; applying the batch one change at a time.");
    let target = match &err {
        ApplyError::Transient { target, .. }
        | ApplyError::Definite { target, .. }
        | ApplyError::Shape { target, .. } => target.clone(),
    };
    tx.rollback()
        .await
        .map_err(|e| classify(&target, "ROLLBACK", e))
}

/// How the fast path's statements went.
enum Steps {
    /// Every statement touched exactly its rows.
    Applied,
    /// A statement touched fewer rows than it should: a conflict somewhere.
    Conflict,
    /// A statement failed (not the origin setup): the careful path says
    /// whether the batch really fails.
    Failed(ApplyError),
}

/// The origin setup's parameters for a transaction ending at `commit`: its
/// end LSN and commit time.
fn origin_setup(commit: &crate::pgoutput::Commit) -> (String, std::time::SystemTime) {
    (
        commit.end_lsn.to_string(),
        commit
            .commit_time
            .to_system_time()
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH),
    )
}

/// Runs the fast path's `steps` on `c`, inside a transaction (or savepoint)
/// the caller opened and ends, with the origin advanced first when `setup`
/// says. An `Err` is an error of the origin setup: it ends the transaction.
async fn run_steps(
    c: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    target: &str,
    steps: &[plan::Step<'_>],
    setup: Option<&(String, std::time::SystemTime)>,
) -> Result<Steps, ApplyError> {
    // Prepare what is new (sequential, once per statement text).
    for step in steps {
        let prepared = match &step.statement {
            StepStatement::Row(st) => prepare(c, cache, st).await,
            StepStatement::Set(st) => prepare_set(c, cache, st).await,
        };
        if let Err(e) = prepared {
            return Ok(Steps::Failed(classify(target, "preparing a statement", e)));
        }
    }
    // Prepared, so that it is sent (and runs) first, before a row statement
    // that fails could abort the transaction under it.
    let setup = match setup {
        Some((end_lsn, commit_time)) => {
            let prepared = match cache.get(ORIGIN_SETUP_SQL) {
                Some(p) => p.clone(),
                None => {
                    let p = c
                        .prepare_typed(ORIGIN_SETUP_SQL, &[Type::TEXT, Type::TIMESTAMPTZ])
                        .await
                        .map_err(|e| {
                            classify(target, "preparing pg_replication_origin_xact_setup", e)
                        })?;
                    cache.insert(ORIGIN_SETUP_SQL.to_string(), p.clone());
                    p
                }
            };
            let params: [&(dyn ToSql + Sync); 2] = [end_lsn, commit_time];
            Either::Left(async move { c.execute(&prepared, &params).await.map(Some) })
        }
        None => Either::Right(futures::future::ready(Ok(None))),
    };
    let param_refs: Vec<Vec<&(dyn ToSql + Sync)>> = steps
        .iter()
        .map(|step| match &step.statement {
            StepStatement::Row(st) => params(st),
            StepStatement::Set(st) => st.arrays.iter().map(|a| a as &(dyn ToSql + Sync)).collect(),
        })
        .collect();
    // Every statement, in order, each with what it must touch; set
    // statements run with the planner settings they need, and only they.
    let mut futures = Vec::with_capacity(steps.len() + 2);
    let mut expect = Vec::with_capacity(steps.len() + 2);
    let mut set_planner = false;
    for (step, p) in steps.iter().zip(&param_refs) {
        let (sql, want) = match &step.statement {
            StepStatement::Row(st) => (&st.sql, None),
            StepStatement::Set(st) => (&st.sql, Some(st.rows as u64)),
        };
        if want.is_some() != set_planner {
            set_planner = want.is_some();
            let settings = if set_planner {
                SET_PLANNER_SQL
            } else {
                RESET_PLANNER_SQL
            };
            futures.push(Either::Right(
                c.batch_execute(settings).map(|r| r.map(|()| 0)),
            ));
            expect.push(Expect::Settings);
        }
        let Some(prepared) = cache.get(sql) else {
            return Ok(Steps::Failed(ApplyError::Definite {
                target: target.to_string(),
                detail: format!("the statement `{sql}` was not prepared"),
            }));
        };
        futures.push(Either::Left(c.execute(prepared, p)));
        expect.push(match want {
            None => Expect::Row(sql),
            Some(n) => Expect::Set(sql, n),
        });
    }
    let (setup, counts) = futures::future::join(setup, futures::future::join_all(futures)).await;
    setup.map_err(|e| classify(target, "pg_replication_origin_xact_setup", e))?;
    for (n, expect) in counts.into_iter().zip(expect) {
        let n = match n {
            Ok(n) => n,
            Err(e) => {
                let what = match expect {
                    Expect::Settings => "setting the planner for set statements".to_string(),
                    Expect::Row(sql) | Expect::Set(sql, _) => format!("applying `{sql}`"),
                };
                return Ok(Steps::Failed(classify(target, &what, e)));
            }
        };
        // A row statement touches its row (0: a conflict); a set statement
        // every one of its rows (fewer: a conflict somewhere).
        let touched = match expect {
            Expect::Settings => true,
            Expect::Row(_) => n > 0,
            Expect::Set(_, want) => n == want,
        };
        if !touched {
            return Ok(Steps::Conflict);
        }
    }
    Ok(Steps::Applied)
}

/// The careful path's changes, one statement at a time in source order, on
/// `c` inside a transaction the caller opened (and ends): each change judged
/// for ownership, each conflict recorded and resolved by the policy.
/// `shapes`: each change's table ([`Applier::shapes`]).
async fn apply_one_by_one(
    c: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    target: &str,
    link: &str,
    txns: &[SourceTxn],
    all_shapes: Vec<Vec<Option<Arc<TableInfo>>>>,
    own: &Ownership,
) -> Result<Applied, ApplyError> {
    let target = target.to_string();
    let link = link.to_string();
    let topology = own.topology.as_ref().and_then(|f| f());
    let topology = topology.as_deref();
    let time_of = |txn: &SourceTxn| origin_setup(&txn.commit).1;
    let shape_err = |e: ShapeError| ApplyError::Shape {
        target: target.clone(),
        source: e,
    };
    let mut out = Applied::default();
    for (txn, shapes) in txns.iter().zip(all_shapes) {
        let commit_time = time_of(txn);
        // Where this transaction's conflicts are recorded from.
        let at = RecordAt {
            link: &link,
            target: &target,
            txn,
            commit_time,
        };
        for (ch, shape) in txn.changes.iter().zip(shapes) {
            // Ownership first: a change made at a site that does not own
            // the row's shard is a conflict whatever else happens.
            let mut right = Right::Unjudged;
            let mut shard = None;
            if let (Some(t), Some((rel, image)), Some(op)) = (&shape, row_image(ch), op_of(ch)) {
                shard = own.shard_of(topology, rel, image);
                if shard.is_none() && own.lacks_key(rel, image) {
                    if let Ok(st) = sql::select_row(t, rel, image) {
                        let row = c
                            .query_opt(st.sql.as_str(), &params(&st))
                            .await
                            .map_err(|e| classify(&target, "reading the row's shard key", e))?
                            .and_then(|r| r.get::<_, Option<String>>(0));
                        shard = row.and_then(|row| own.shard_of_json(topology, rel, &row));
                    }
                }
                let verdict =
                    own.verdict(shard, txn)
                        .await
                        .map_err(|detail| ApplyError::Transient {
                            target: target.clone(),
                            detail,
                        })?;
                right = right_of(&verdict);
                if let Some(res) = conflict::resolve_foreign(own.policy, right) {
                    let reason = match verdict {
                        Some(Verdict::Foreign { reason, .. }) => reason,
                        // resolve_foreign answers only for a foreign verdict.
                        _ => format!(
                            "the change was made at {}, which did not own the row's shard",
                            own.source_site
                        ),
                    };
                    record(
                        c,
                        &at,
                        ConflictRecord {
                            kind: "foreign_shard",
                            op,
                            shard,
                            table: t,
                            rel,
                            image,
                            reason: &reason,
                            resolution: res.as_str(own.policy),
                        },
                    )
                    .await?;
                    out.conflicts += 1;
                    if res == Resolution::KeepTarget {
                        continue;
                    }
                }
            }
            let conflict = match (ch, shape) {
                (Change::Insert { rel, new }, Some(t)) => {
                    let st = sql::insert(&t, rel, new).map_err(shape_err)?;
                    let n = exec(c, cache, &st).await.map_err(|e| {
                        classify(&target, &format!("INSERT into {}", t.qualified), e)
                    })?;
                    if n == 0 {
                        // The row exists: the policy decides whose version stays.
                        let target_commit = if own.policy == Policy::LastWriterWins {
                            match sql::select_commit_time(&t, rel, new) {
                                Ok(st) => c
                                    .query_opt(st.sql.as_str(), &params(&st))
                                    .await
                                    .ok()
                                    .flatten()
                                    .and_then(|r| r.get::<_, Option<std::time::SystemTime>>(0)),
                                Err(_) => None,
                            }
                        } else {
                            None
                        };
                        let res = conflict::resolve_exists(
                            own.policy,
                            &own.source_site,
                            &own.target_site,
                            right,
                            commit_time,
                            target_commit,
                        );
                        record(
                            c,
                            &at,
                            ConflictRecord {
                                kind: "insert_exists",
                                op: Op::Insert,
                                shard,
                                table: &t,
                                rel,
                                image: new,
                                reason: "a row with this key already exists at the target",
                                resolution: res.as_str(own.policy),
                            },
                        )
                        .await?;
                        out.conflicts += 1;
                        if res == Resolution::ApplySource {
                            let st = sql::update(&t, rel, None, new).map_err(shape_err)?;
                            exec(c, cache, &st).await.map_err(|e| {
                                classify(
                                    &target,
                                    &format!("UPDATE of {} (conflict resolution)", t.qualified),
                                    e,
                                )
                            })?;
                        }
                        continue;
                    }
                    None
                }
                (Change::Update { rel, old, new }, Some(t)) => {
                    let st = sql::update(&t, rel, old.as_ref(), new).map_err(shape_err)?;
                    let n = exec(c, cache, &st)
                        .await
                        .map_err(|e| classify(&target, &format!("UPDATE of {}", t.qualified), e))?;
                    (n == 0).then_some((
                        t,
                        "update_missing",
                        Op::Update,
                        rel,
                        new,
                        "the row to update does not exist at the target",
                    ))
                }
                (Change::Delete { rel, old }, Some(t)) => {
                    let st = sql::delete(&t, rel, old).map_err(shape_err)?;
                    let n = exec(c, cache, &st).await.map_err(|e| {
                        classify(&target, &format!("DELETE from {}", t.qualified), e)
                    })?;
                    (n == 0).then_some((
                        t,
                        "delete_missing",
                        Op::Delete,
                        rel,
                        old.tuple(),
                        "the row to delete does not exist at the target",
                    ))
                }
                (
                    Change::Truncate {
                        rels,
                        cascade,
                        restart_identity,
                    },
                    _,
                ) => {
                    let names: Vec<String> = rels.iter().map(|r| sql::qualified(r)).collect();
                    let stmt = format!(
                        "TRUNCATE {}{}{}",
                        names.join(", "),
                        if *restart_identity {
                            " RESTART IDENTITY"
                        } else {
                            ""
                        },
                        if *cascade { " CASCADE" } else { "" }
                    );
                    c.batch_execute(&stmt)
                        .await
                        .map_err(|e| classify(&target, "TRUNCATE", e))?;
                    None
                }
                (Change::Message(m), _) => {
                    c.execute(
                        "INSERT INTO ezone_replication.markers (link, prefix, content, source_lsn) \
                         VALUES ($1, $2, $3, $4::text::pg_lsn) ON CONFLICT DO NOTHING",
                        &[&link, &m.prefix, &m.content.as_ref(), &m.lsn.to_string()],
                    )
                    .await
                    .map_err(|e| classify(&target, "recording a marker", e))?;
                    out.markers.push(m.prefix.clone());
                    None
                }
                // A row change whose table was not resolved cannot happen:
                // shapes were resolved for every row change above.
                (_, None) => None,
            };
            match conflict {
                None => out.rows += 1,
                Some((t, kind, op, rel, image, reason)) => {
                    out.conflicts += 1;
                    // A row missing for an update or delete: nothing to keep
                    // or overwrite; the change is recorded, not applied.
                    record(
                        c,
                        &at,
                        ConflictRecord {
                            kind,
                            op,
                            shard,
                            table: &t,
                            rel,
                            image,
                            reason,
                            resolution: "recorded:not_applied",
                        },
                    )
                    .await?;
                }
            }
        }
    }
    Ok(out)
}

fn params(st: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    st.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Applier {
    /// Connects, makes the ezone schema, the link's origin and the session
    /// setup. `origin` names this link's progress at the target (one per
    /// source site), e.g. `ezone_from_beijing`.
    pub async fn connect(dsn: &str, link: &str, origin: &str) -> Result<Applier, ApplyError> {
        let target = dsn
            .split_whitespace()
            .filter(|kv| !kv.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" ");
        let (client, connection) = connect(dsn, &target, "connecting").await?;
        let t2 = target.clone();
        let conn = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(target = %t2, error = %crate::chain(&e), "Lost the connection to the target Postgres; the link reconnects.");
            }
        });
        let a = Applier {
            client,
            target,
            link: link.to_string(),
            origin: origin.to_string(),
            tables: HashMap::new(),
            statements: HashMap::new(),
            turn: None,
            conn,
        };
        a.client
            .batch_execute(SCHEMA_SQL)
            .await
            .map_err(|e| classify(&a.target, "creating the ezone_replication schema", e))?;
        a.client
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(|e| {
                classify(
                    &a.target,
                    "SET session_replication_role (needs a superuser or replication owner)",
                    e,
                )
            })?;
        a.client
            .execute(
                "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS \
                 (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                &[&a.origin],
            )
            .await
            .map_err(|e| classify(&a.target, "creating the replication origin", e))?;
        a.client
            .execute("SELECT pg_replication_origin_session_setup($1)", &[&a.origin])
            .await
            .map_err(|e| classify(&a.target, "setting up the replication origin session (is another replicator applying this link?)", e))?;
        Ok(a)
    }

    /// The statement cache, taken out for a transaction (which borrows the
    /// client) and put back on success; on an error the link reconnects with
    /// a new Applier anyway. Cleared when it has grown past its bound.
    fn take_statements(&mut self) -> HashMap<String, tokio_postgres::Statement> {
        let mut cache = std::mem::take(&mut self.statements);
        if cache.len() > MAX_CACHED_STATEMENTS {
            cache.clear();
        }
        cache
    }

    /// Releases the origin session and closes the connection, so the next
    /// applier for this link can take the origin at once (a dropped
    /// connection's backend may hold it a little longer).
    pub async fn close(self) {
        let _ = self
            .client
            .batch_execute("SELECT pg_replication_origin_session_reset()")
            .await;
    }

    /// The link's origin without a lane suffix (see [`lane_origin`]).
    fn base_origin(&self) -> String {
        match self.origin.split_once('#') {
            Some((base, _)) => base.to_string(),
            None => self.origin.clone(),
        }
    }

    /// Sets this applier's place in its link's commit order for the next
    /// batch ([`crate::lanes`]).
    pub fn set_turn(&mut self, turn: Turn) {
        self.turn = Some(turn);
    }

    /// For a batch with nothing to apply: wait for the one before it, then
    /// let the next one commit.
    pub async fn pass_turn(&mut self) -> Result<(), ApplyError> {
        let mut turn = self.turn.take();
        wait_turn(&mut turn, &self.target).await?;
        turn_done(turn);
        Ok(())
    }

    /// The source position everything up to which has been applied here:
    /// where the link restarts the source stream. With several lanes, the
    /// furthest of their origins: they commit in source order, so all
    /// before it is committed and nothing after it.
    pub async fn progress(&self) -> Result<Lsn, ApplyError> {
        let row = self
            .client
            .query_one(
                "SELECT max(pg_replication_origin_progress(roname, true))::text \
                 FROM pg_replication_origin WHERE roname = $1 OR starts_with(roname, $1 || '#')",
                &[&self.base_origin()],
            )
            .await
            .map_err(|e| classify(&self.target, "reading the origin's progress", e))?;
        let text: Option<String> = row.get(0);
        Ok(text.and_then(|t| t.parse::<Lsn>().ok()).unwrap_or(Lsn(0)))
    }

    /// The target's shape of a source relation, cached per (schema, table,
    /// source column list) so a changed Relation message reloads it.
    async fn table(&mut self, rel: &Relation) -> Result<Arc<TableInfo>, ApplyError> {
        let key = (rel.namespace.clone(), rel.name.clone());
        if let Some(t) = self.tables.get(&key) {
            if rel
                .columns
                .iter()
                .all(|c| t.columns.iter().any(|tc| tc.name == c.name))
            {
                return Ok(t.clone());
            }
        }
        let qualified = sql::qualified(rel);
        // The table's shape may have changed: prepared statements for it
        // would fail or be wrong.
        self.statements.clear();
        let drift = |detail: String| ApplyError::Definite {
            target: self.target.clone(),
            detail: format!(
                "reading the shape of {qualified}: {detail}: create the table at the target \
                 (schema drift)"
            ),
        };
        let table = crate::catalog::load(&self.client, &rel.namespace, &rel.name)
            .await
            .map_err(|e| {
                let mut err = classify(
                    &self.target,
                    &format!("reading the shape of {qualified}"),
                    e,
                );
                if let ApplyError::Definite { detail, .. } = &mut err {
                    detail.push_str(": create the table at the target (schema drift)");
                }
                err
            })?
            .ok_or_else(|| drift("no such table here".to_string()))?;
        let columns: Vec<ColumnInfo> = table
            .columns
            .iter()
            .map(|c| ColumnInfo {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                key: c.key.is_some(),
            })
            .collect();
        if !columns.iter().any(|c| c.key) {
            return Err(ApplyError::Shape {
                target: self.target.clone(),
                source: ShapeError::NoPrimaryKey { table: qualified },
            });
        }
        // Triggers (of the table or a partition) or rules that fire for
        // replayed rows: the fast path does not group this table's changes.
        let replica_triggers = crate::catalog::replica_triggers(&self.client, &qualified)
            .await
            .map_err(|e| {
                classify(
                    &self.target,
                    &format!("reading the triggers of {qualified}"),
                    e,
                )
            })?;
        let unique_beyond_key = crate::catalog::unique_beyond_key(&self.client, &qualified)
            .await
            .map_err(|e| {
                classify(
                    &self.target,
                    &format!("reading the unique indexes of {qualified}"),
                    e,
                )
            })?;
        let t = Arc::new(TableInfo {
            qualified,
            columns,
            replica_triggers,
            serial: replica_triggers || unique_beyond_key,
        });
        self.tables.insert(key, t.clone());
        Ok(t)
    }

    /// Applies one source transaction atomically with the origin's progress.
    pub async fn apply(&mut self, txn: &SourceTxn, own: &Ownership) -> Result<Applied, ApplyError> {
        self.apply_batch(std::slice::from_ref(txn), own).await
    }

    /// Applies consecutive source transactions in one target transaction,
    /// in order, with the origin advanced to the last one's end: the same
    /// exactly-once guarantee (all of them or none commit, with their
    /// progress), one BEGIN/COMMIT for many small source transactions.
    pub async fn apply_batch(
        &mut self,
        txns: &[SourceTxn],
        own: &Ownership,
    ) -> Result<Applied, ApplyError> {
        // A planted bug, for the chaos suite's test of itself
        // (`FAILPOINTS=apply.drop_batch=3%return`): the batch is dropped as
        // if applied, its progress not recorded; the next batch's commit
        // moves the origin past it, so its changes are lost for good.
        if drop_batch_failpoint() {
            self.pass_turn().await?;
            return Ok(Applied::default());
        }
        let applied = self.apply_ordered(txns, own).await;
        if applied.is_err() {
            // Not committed: the batches after it must not commit either.
            self.turn = None;
        }
        applied
    }

    /// [`Applier::apply_batch`] once the batch may begin: a batch with a
    /// table whose changes may meet another batch's ([`TableInfo::serial`])
    /// begins only after the batch before it committed.
    async fn apply_ordered(
        &mut self,
        txns: &[SourceTxn],
        own: &Ownership,
    ) -> Result<Applied, ApplyError> {
        if self.turn.is_some() && self.any_serial(txns).await? {
            let mut turn = self.turn.take();
            wait_turn(&mut turn, &self.target).await?;
            self.turn = turn;
        }
        if let Some(applied) = self.apply_pipelined(txns, own).await? {
            return Ok(applied);
        }
        self.apply_sequential(txns, own).await
    }

    /// Whether any row change of `txns` is of a [`TableInfo::serial`] table.
    async fn any_serial(&mut self, txns: &[SourceTxn]) -> Result<bool, ApplyError> {
        let mut seen: Vec<usize> = Vec::new();
        for ch in txns.iter().flat_map(|t| &t.changes) {
            let Some((rel, _)) = row_image(ch) else {
                continue;
            };
            let id = Arc::as_ptr(rel) as usize;
            if seen.contains(&id) {
                continue;
            }
            seen.push(id);
            if self.table(rel).await?.serial {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The fast path: the batch's row changes are planned into few set
    /// statements ([`crate::plan`]: a table's inserts in one, its updates of
    /// the same columns in one, ...), all sent without waiting for the
    /// previous one's answer (tokio-postgres pipelines requests that are in
    /// flight together, in order). It applies only if nothing needs a
    /// decision: row changes only, no ownership conflict, and every statement
    /// touched exactly its rows. Otherwise the target transaction is rolled
    /// back (nothing was committed) and `Ok(None)` sends the batch down the
    /// sequential path, which records and resolves conflicts one by one. A
    /// statement that fails for a reason other than the connection goes the
    /// same way: the sequential path, in source order, says whether the
    /// batch really fails.
    async fn apply_pipelined(
        &mut self,
        txns: &[SourceTxn],
        own: &Ownership,
    ) -> Result<Option<Applied>, ApplyError> {
        let Some(last) = txns.last() else {
            return Ok(Some(Applied::default()));
        };
        let Some(changes) = self.plan_fast(txns, own).await? else {
            return Ok(None);
        };
        let planned: Vec<(&Change, &TableInfo)> =
            changes.iter().map(|(ch, t)| (*ch, t.as_ref())).collect();
        // Shape problems are reported by the careful path.
        let Some(steps) = plan::plan(&planned) else {
            return Ok(None);
        };
        let target = self.target.clone();
        let mut cache = self.take_statements();
        let mut turn = self.turn.take();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| classify(&target, "BEGIN", e))?;
        let setup = origin_setup(&last.commit);
        let ran = run_steps(tx.client(), &mut cache, &target, &steps, Some(&setup)).await;
        let outcome = match ran {
            Ok(o) => o,
            Err(e) => {
                self.statements = cache;
                return Err(e);
            }
        };
        let applied = match outcome {
            Steps::Applied => {
                wait_turn(&mut turn, &target).await?;
                tx.commit()
                    .await
                    .map_err(|e| classify(&target, "COMMIT", e))?;
                turn_done(turn.take());
                tracing::trace!(link = %self.link, changes = planned.len(), statements = steps.len(), "Batch applied on the fast path.");
                Some(Applied {
                    rows: planned.len() as u64,
                    conflicts: 0,
                    markers: Vec::new(),
                    fast_path_statements: steps.len() as u64,
                })
            }
            Steps::Conflict => {
                // A conflict: undo and take the careful path.
                tx.rollback()
                    .await
                    .map_err(|e| classify(&target, "ROLLBACK", e))?;
                None
            }
            Steps::Failed(err) => {
                fall_back(tx, &self.link, err).await?;
                None
            }
        };
        self.statements = cache;
        // Not committed here: the careful path takes the turn.
        self.turn = turn;
        Ok(applied)
    }

    /// Every change of `txns` with its table, if the whole batch may go the
    /// fast path: row changes only, each with a shard key value where the
    /// table has one, none of a row the source did not own. `None`: the
    /// careful path decides.
    async fn plan_fast<'t>(
        &mut self,
        txns: &'t [SourceTxn],
        own: &Ownership,
    ) -> Result<Option<Vec<(&'t Change, Arc<TableInfo>)>>, ApplyError> {
        let topology = own.topology.as_ref().and_then(|f| f());
        let topology = topology.as_deref();
        let target = self.target.clone();
        let mut changes = Vec::new();
        // The tables of this batch's relations (by the relation's address:
        // the batch holds them), so each is looked up once.
        let mut tables: Vec<(usize, Arc<TableInfo>)> = Vec::new();
        for txn in txns {
            for ch in &txn.changes {
                let Some((rel, image)) = row_image(ch) else {
                    return Ok(None);
                };
                if own.lacks_key(rel, image) {
                    // The owner needs the target's row: the careful path reads it.
                    return Ok(None);
                }
                let verdict = own
                    .verdict(own.shard_of(topology, rel, image), txn)
                    .await
                    .map_err(|detail| ApplyError::Transient {
                        target: target.clone(),
                        detail,
                    })?;
                if conflict::resolve_foreign(own.policy, right_of(&verdict)).is_some() {
                    return Ok(None);
                }
                let id = Arc::as_ptr(rel) as usize;
                let t = match tables.iter().find(|(r, _)| *r == id) {
                    Some((_, t)) => t.clone(),
                    None => {
                        let t = self.table(rel).await?;
                        tables.push((id, t.clone()));
                        t
                    }
                };
                changes.push((ch, t));
            }
        }
        Ok(Some(changes))
    }

    /// The target's shape of every row change of `txns` (`None` for a
    /// truncate or a message), read before the apply transaction begins.
    async fn shapes(
        &mut self,
        txns: &[SourceTxn],
    ) -> Result<Vec<Vec<Option<Arc<TableInfo>>>>, ApplyError> {
        let mut all_shapes = Vec::with_capacity(txns.len());
        for txn in txns {
            let mut shapes = Vec::with_capacity(txn.changes.len());
            for ch in &txn.changes {
                let t = match ch {
                    Change::Insert { rel, .. }
                    | Change::Update { rel, .. }
                    | Change::Delete { rel, .. } => Some(self.table(rel).await?),
                    _ => None,
                };
                shapes.push(t);
            }
            all_shapes.push(shapes);
        }
        Ok(all_shapes)
    }

    /// The careful path: one statement at a time, conflicts recorded and
    /// resolved by the policy as they are found.
    async fn apply_sequential(
        &mut self,
        txns: &[SourceTxn],
        own: &Ownership,
    ) -> Result<Applied, ApplyError> {
        let Some(last) = txns.last() else {
            return Ok(Applied::default());
        };
        // Resolve every table first (catalog reads outside the transaction).
        let all_shapes = self.shapes(txns).await?;
        let target = self.target.clone();
        let link = self.link.clone();
        let mut cache = self.take_statements();
        let mut turn = self.turn.take();
        let tx = self
            .client
            .transaction()
            .await
            .map_err(|e| classify(&target, "BEGIN", e))?;
        let (end_lsn, commit_time) = origin_setup(&last.commit);
        tx.execute(ORIGIN_SETUP_SQL, &[&end_lsn, &commit_time])
            .await
            .map_err(|e| classify(&target, "pg_replication_origin_xact_setup", e))?;
        let out = apply_one_by_one(
            tx.client(),
            &mut cache,
            &target,
            &link,
            txns,
            all_shapes,
            own,
        )
        .await?;
        wait_turn(&mut turn, &target).await?;
        tx.commit()
            .await
            .map_err(|e| classify(&target, "COMMIT", e))?;
        turn_done(turn);
        self.statements = cache;
        Ok(out)
    }

    /// Opens the target transaction a large source transaction is applied
    /// in as it arrives ([`Applier::apply_part`], then
    /// [`Applier::commit_streamed`]). Until then this applier holds an open
    /// transaction: on any error the caller drops it (the connection closes
    /// and the server rolls the transaction back).
    pub async fn begin_streamed(&mut self) -> Result<(), ApplyError> {
        self.client
            .batch_execute("BEGIN")
            .await
            .map_err(|e| classify(&self.target, "BEGIN", e))
    }

    /// Applies a part of the large source transaction opened with
    /// [`Applier::begin_streamed`] (a [`crate::txn::Assembler::take_open_part`]),
    /// inside that target transaction: the fast path under a savepoint, and
    /// the careful path for the part if the fast path cannot take it.
    pub async fn apply_part(
        &mut self,
        part: &SourceTxn,
        own: &Ownership,
    ) -> Result<Applied, ApplyError> {
        let txns = std::slice::from_ref(part);
        let target = self.target.clone();
        if let Some(changes) = self.plan_fast(txns, own).await? {
            let planned: Vec<(&Change, &TableInfo)> =
                changes.iter().map(|(ch, t)| (*ch, t.as_ref())).collect();
            if let Some(steps) = plan::plan(&planned) {
                let mut cache = self.take_statements();
                let savepoint = |what: &'static str| {
                    let c = &self.client;
                    let target = &target;
                    async move {
                        c.batch_execute(what)
                            .await
                            .map_err(|e| classify(target, what, e))
                    }
                };
                savepoint("SAVEPOINT ezone_part").await?;
                let ran = run_steps(&self.client, &mut cache, &target, &steps, None).await;
                let applied = match ran {
                    Err(e) => {
                        self.statements = cache;
                        return Err(e);
                    }
                    Ok(Steps::Applied) => {
                        savepoint("RELEASE SAVEPOINT ezone_part").await?;
                        Some(Applied {
                            rows: planned.len() as u64,
                            conflicts: 0,
                            markers: Vec::new(),
                            fast_path_statements: steps.len() as u64,
                        })
                    }
                    Ok(Steps::Failed(err)) if err.is_transient() => {
                        self.statements = cache;
                        return Err(err);
                    }
                    Ok(Steps::Conflict | Steps::Failed(_)) => {
                        savepoint("ROLLBACK TO SAVEPOINT ezone_part").await?;
                        savepoint("RELEASE SAVEPOINT ezone_part").await?;
                        None
                    }
                };
                self.statements = cache;
                if let Some(applied) = applied {
                    return Ok(applied);
                }
            }
        }
        let shapes = self.shapes(txns).await?;
        let link = self.link.clone();
        let mut cache = self.take_statements();
        let out =
            apply_one_by_one(&self.client, &mut cache, &target, &link, txns, shapes, own).await;
        self.statements = cache;
        out
    }

    /// Ends the large source transaction opened with
    /// [`Applier::begin_streamed`]: the origin advanced to `commit`'s end in
    /// the same target transaction, then COMMIT. The origin setup fails in
    /// a transaction an error aborted, so a COMMIT that would only roll back
    /// is never taken for a success.
    pub async fn commit_streamed(
        &mut self,
        commit: &crate::pgoutput::Commit,
    ) -> Result<(), ApplyError> {
        let (end_lsn, commit_time) = origin_setup(commit);
        self.client
            .execute(ORIGIN_SETUP_SQL, &[&end_lsn, &commit_time])
            .await
            .map_err(|e| classify(&self.target, "pg_replication_origin_xact_setup", e))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| classify(&self.target, "COMMIT", e))
    }

    /// Seeds an empty target from the source's exported snapshot: every
    /// table is copied (`COPY ... TO STDOUT` at the source inside a
    /// REPEATABLE READ transaction that adopts `snapshot`, streamed into
    /// `COPY ... FROM STDIN` at the target) in one target transaction that
    /// also sets this link's origin to `consistent_point`. Streaming then
    /// starts exactly there: no row is missed and none is applied twice.
    ///
    /// The snapshot lives only while the replication connection that
    /// exported it stays open and idle: the caller keeps it so until this
    /// returns.
    ///
    /// Only an empty target is seeded: if any of the tables has rows, the
    /// target is taken to hold the source's data already (it is an existing
    /// site, or was itself seeded from this source, as when a new site's
    /// link back to an old one starts), nothing is copied and `Ok(None)` is
    /// returned; streaming starts at the slot's consistent point.
    pub async fn seed(
        &mut self,
        source_dsn: &str,
        snapshot: &str,
        tables: &[String],
        consistent_point: Lsn,
    ) -> Result<Option<u64>, ApplyError> {
        use futures::{SinkExt, TryStreamExt};
        let target = self.target.clone();
        let (source, conn) = connect(
            source_dsn,
            &target,
            "connecting to the source for the initial copy",
        )
        .await?;
        let conn_task = tokio::spawn(conn);
        let result = async {
            source
                .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                .await
                .map_err(|e| classify(&target, "starting the snapshot transaction at the source", e))?;
            source
                .batch_execute(&format!("SET TRANSACTION SNAPSHOT '{}'", snapshot.replace('\'', "''")))
                .await
                .map_err(|e| classify(&target, "adopting the slot's exported snapshot", e))?;
            let tx = self
                .client
                .transaction()
                .await
                .map_err(|e| classify(&target, "BEGIN (initial copy)", e))?;
            tx.execute(
                "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, now())",
                &[&consistent_point.to_string()],
            )
            .await
            .map_err(|e| classify(&target, "pg_replication_origin_xact_setup (initial copy)", e))?;
            let quoted = |table: &String| {
                table
                    .split('.')
                    .map(crate::sql::quote_ident)
                    .collect::<Vec<_>>()
                    .join(".")
            };
            for table in tables {
                let qualified = quoted(table);
                let has_rows: bool = tx
                    .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {qualified})"), &[])
                    .await
                    .map_err(|e| classify(&target, &format!("checking {qualified} at the target"), e))?
                    .get(0);
                if has_rows {
                    tracing::info!(target = %target, table = %qualified, "The target already has data: not seeding.");
                    return Ok(None);
                }
            }
            let mut rows = 0u64;
            for table in tables {
                let qualified = quoted(table);
                let out = source
                    .copy_out(&format!("COPY {qualified} TO STDOUT"))
                    .await
                    .map_err(|e| classify(&target, &format!("COPY {qualified} TO STDOUT at the source"), e))?;
                let sink = tx
                    .copy_in(&format!("COPY {qualified} FROM STDIN"))
                    .await
                    .map_err(|e| classify(&target, &format!("COPY {qualified} FROM STDIN"), e))?;
                futures::pin_mut!(sink);
                futures::pin_mut!(out);
                while let Some(chunk) = out
                    .try_next()
                    .await
                    .map_err(|e| classify(&target, &format!("reading {qualified} from the source"), e))?
                {
                    sink.send(chunk)
                        .await
                        .map_err(|e| classify(&target, &format!("writing {qualified} at the target"), e))?;
                }
                rows += sink
                    .finish()
                    .await
                    .map_err(|e| classify(&target, &format!("finishing the copy of {qualified}"), e))?;
            }
            tx.commit()
                .await
                .map_err(|e| classify(&target, "COMMIT (initial copy)", e))?;
            Ok(Some(rows))
        }
        .await;
        conn_task.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_is_ensured_under_its_lock_first() {
        let first = SCHEMA_SQL
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or_default();
        assert!(
            first.starts_with(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK});")),
            "{first}"
        );
        // No transaction control inside: the text must stay one transaction.
        for l in SCHEMA_SQL.lines().map(|l| l.trim().to_uppercase()) {
            assert!(
                !["BEGIN;", "COMMIT;", "START TRANSACTION;", "ROLLBACK;"].contains(&l.as_str()),
                "{l}"
            );
        }
    }
}
