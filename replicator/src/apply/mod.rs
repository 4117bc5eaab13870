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
//!
//! The parts, each a file:
//!
//! ```text
//!  Applier::apply_batch (here)
//!    ├─ fast      the batch as few set statements, pipelined; anything that
//!    │            needs a decision, or a statement short of its rows, rolls
//!    │            back to
//!    └─ careful   one change at a time: ownership (ownership), the conflict
//!                 rules (crate::conflict::decide), conflict rows (record)
//!  Applier::begin_streamed / apply_part / commit_streamed (streamed)
//!                 a large source transaction in parts of one target transaction
//!  Applier::seed (seed)  a new site copied from the slot's snapshot
//!  turn           the batch's place in its link's commit order (lanes)
//!  statements     the prepared-statement cache, planner settings
//!  schema         ezone_replication's tables;  error: ApplyError, classify
//! ```

mod careful;
mod error;
mod fast;
mod one_message;
mod ownership;
mod record;
mod schema;
mod seed;
mod statements;
mod streamed;
mod turn;

use std::collections::HashMap;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pgoutput::Relation;
use crate::sql::{self, ColumnInfo, ShapeError, TableInfo};
use crate::txn::SourceTxn;
use error::{classify, connect};
use statements::MAX_CACHED_STATEMENTS;
use turn::{turn_done, wait_turn};

pub use error::ApplyError;
pub use ownership::{HistoryCache, HistoryFn, Ownership, TopologyFn, DEFAULT_VIEW_WAIT};
pub use schema::{SCHEMA_LOCK, SCHEMA_SQL};
pub use statements::{RESET_PLANNER_SQL, SET_PLANNER_SQL};
pub use turn::Turn;

/// Whether the planted bug `apply.drop_batch` fires for this batch (see
/// [`Applier::apply_batch`]); never without the `failpoints` feature.
fn drop_batch_failpoint() -> bool {
    fail::fail_point!("apply.drop_batch", |_| true);
    false
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
    /// The fast path sent the batch as one query message
    /// ([`one_message`]), the way a steady load's small batches go.
    pub one_message: bool,
}

/// Advances the link's origin in the apply transaction.
const ORIGIN_SETUP_SQL: &str = "SELECT pg_replication_origin_xact_setup($1::text::pg_lsn, $2)";

/// Table shapes one lane read, handed to another ([`Applier::known_tables`]).
#[derive(Debug, Clone, Default)]
pub struct KnownTables(HashMap<(String, String), Arc<TableInfo>>);

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
    /// Row statements prepared by name, for a batch sent as one message
    /// ([`one_message`]).
    named: one_message::Named,
    /// This batch's place in the link's commit order, when the link applies
    /// over several lanes ([`crate::lanes`]): it commits only after the
    /// batch before it has.
    turn: Option<Turn>,
    /// Which of its link's lanes this is (for the per-lane metrics).
    lane: usize,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Applier {
    fn drop(&mut self) {
        self.conn.abort();
    }
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
            named: one_message::Named::default(),
            turn: None,
            lane: 0,
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
        // The link confirms a batch to its source once its COMMIT has
        // returned (crate::confirm), and the source may then drop that WAL:
        // a commit that returned must be on the target's disk. So a target
        // (server, database or role) that commits asynchronously does not
        // do so for this session: `local` is the least that flushes before
        // answering, and every other setting does already.
        a.client
            .batch_execute(
                "SELECT set_config('synchronous_commit', 'local', false) \
                 WHERE current_setting('synchronous_commit') = 'off'",
            )
            .await
            .map_err(|e| classify(&a.target, "setting synchronous_commit", e))?;
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

    /// The value of the setting `name` in this applier's session (as
    /// `current_setting`), for diagnostics.
    pub async fn session_setting(&self, name: &str) -> Result<String, ApplyError> {
        let row = self
            .client
            .query_one("SELECT current_setting($1)", &[&name])
            .await
            .map_err(|e| classify(&self.target, "reading a setting", e))?;
        Ok(row.get(0))
    }

    /// The target's table shapes this applier has read, for a new lane of
    /// the same link to start with (each shape is two queries, round trips
    /// a new lane's first batch would otherwise pay while every batch after
    /// it waits for its commit).
    pub fn known_tables(&self) -> KnownTables {
        KnownTables(self.tables.clone())
    }

    /// Starts from shapes another lane of the link read ([`Applier::known_tables`]).
    pub fn adopt_tables(&mut self, known: KnownTables) {
        for (key, table) in known.0 {
            self.tables.entry(key).or_insert(table);
        }
    }

    /// Connections the target has free for clients now: `max_connections`
    /// less the reserved ones and the client backends open (walsenders and
    /// background workers have their own limits).
    pub async fn free_connections(&self) -> Result<i64, ApplyError> {
        let row = self
            .client
            .query_one(
                "SELECT current_setting('max_connections')::bigint \
                 - current_setting('superuser_reserved_connections')::bigint \
                 - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
                &[],
            )
            .await
            .map_err(|e| classify(&self.target, "reading the free connections", e))?;
        Ok(row.get(0))
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

    /// This applier is lane `lane` of its link.
    pub fn on_lane(mut self, lane: usize) -> Applier {
        self.lane = lane;
        self
    }

    /// Which of its link's lanes this is.
    pub fn lane(&self) -> usize {
        self.lane
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
                &format!(
                    "SELECT max(pg_replication_origin_progress(roname, true))::text \
                     FROM ({}) o",
                    crate::config::LINK_ORIGINS_SQL
                ),
                &[&crate::config::link_origin(&self.origin)],
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
        // Only a batch beside one still in flight asks which tables it has.
        if self.turn.as_mut().is_some_and(Turn::waits) && self.any_serial(txns).await? {
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
            let Some((rel, _)) = ch.row_image() else {
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
}
