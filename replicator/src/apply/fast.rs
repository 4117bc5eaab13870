//! The fast path: a batch's row changes planned into few set statements
//! ([`crate::plan`]) and sent pipelined, in one target transaction with the
//! origin's advance. It applies only when nothing needs a decision and
//! every statement touched exactly its rows; otherwise the transaction is
//! rolled back and the careful path ([`super::careful`]) takes the batch.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::Either;
use futures::{Future, FutureExt, SinkExt};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use super::error::{classify, ApplyError};
use super::one_message;
use super::ownership::Ownership;
use super::statements::{
    params, prepare, prepare_copy, prepare_set, RESET_PLANNER_SQL, SET_PLANNER_SQL,
};
use super::turn::{turn_done, wait_turn};
use super::{origin_setup, Applied, Applier, ORIGIN_SETUP_SQL};
use crate::conflict::{self, Found};
use crate::plan::{self, StepStatement};
use crate::sql::TableInfo;
use crate::txn::{Change, SourceTxn};

/// What one pipelined fast-path statement must do.
enum Expect<'s> {
    /// Planner settings: succeed.
    Settings,
    /// A row statement: touch its row.
    Row(&'s str),
    /// A set statement: touch this many rows.
    Set(&'s str, u64),
}

/// A fast-path statement failed: a broken connection is returned (the link
/// reconnects); anything else rolls back, and the caller sends the batch
/// down the careful path, which applies in source order and reports the
/// error if it is real.
async fn fall_back(client: &Client, link: &str, err: ApplyError) -> Result<(), ApplyError> {
    if err.is_transient() {
        // Ended here too, though the link drops the connection after any
        // error: a deadlock or lock timeout leaves it open.
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(err);
    }
    tracing::debug!(link, error = %err, "Fast path failed; applying the batch one change at a time.");
    let target = match &err {
        ApplyError::Transient { target, .. }
        | ApplyError::Definite { target, .. }
        | ApplyError::Shape { target, .. } => target.clone(),
    };
    client
        .batch_execute("ROLLBACK")
        .await
        .map_err(|e| classify(&target, "ROLLBACK", e))
}

/// A statement of the pipeline, running: how many rows it touched.
type Running<'c> =
    std::pin::Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'c>>;

/// Runs the prepared `COPY ... FROM STDIN` of `st` with its rows (COPY's
/// text format, [`crate::sql::push_copy_row`]): how many it wrote. In a
/// pipeline like any statement: the connection sends it, and its data,
/// after the requests before it and before those after it.
async fn copy_rows(
    c: &Client,
    copy: &tokio_postgres::Statement,
    st: &crate::sql::SetStatement<'_>,
) -> Result<u64, tokio_postgres::Error> {
    let mut data = Vec::with_capacity(st.rows * 16 * st.arrays.len().max(1));
    for row in 0..st.rows {
        crate::sql::push_copy_row(&mut data, &st.arrays, row);
    }
    let sink = c.copy_in::<_, bytes::Bytes>(copy).await?;
    futures::pin_mut!(sink);
    sink.as_mut().send(bytes::Bytes::from(data)).await?;
    sink.finish().await
}

/// How the fast path's statements went.
pub(super) enum Steps {
    /// Every statement touched exactly its rows.
    Applied,
    /// A statement touched fewer rows than it should: a conflict somewhere.
    Conflict,
    /// A statement failed (not the origin setup): the careful path says
    /// whether the batch really fails.
    Failed(ApplyError),
}

/// Runs the fast path's `steps` on `c`, inside a transaction (or savepoint)
/// the caller opened and ends, with the origin advanced first when `setup`
/// says. An `Err` is an error of the origin setup: it ends the transaction.
pub(super) async fn run_steps(
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
            StepStatement::Copy(st) => prepare_copy(c, cache, &st.sql).await,
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
            StepStatement::Copy(_) => Vec::new(),
        })
        .collect();
    // Every statement, in order, each with what it must touch; set
    // statements run with the planner settings they need, and only they.
    let mut futures: Vec<Running<'_>> = Vec::with_capacity(steps.len() + 2);
    let mut expect = Vec::with_capacity(steps.len() + 2);
    let mut set_planner = false;
    for (step, p) in steps.iter().zip(&param_refs) {
        let (sql, want) = match &step.statement {
            StepStatement::Row(st) => (&st.sql, None),
            StepStatement::Set(st) | StepStatement::Copy(st) => (&st.sql, Some(st.rows as u64)),
        };
        let copy = matches!(step.statement, StepStatement::Copy(_));
        // A COPY plans nothing: the settings stay as they are around it.
        if want.is_some() != set_planner && !copy {
            set_planner = want.is_some();
            let settings = if set_planner {
                SET_PLANNER_SQL
            } else {
                RESET_PLANNER_SQL
            };
            futures.push(Box::pin(c.batch_execute(settings).map(|r| r.map(|()| 0))));
            expect.push(Expect::Settings);
        }
        let Some(prepared) = cache.get(sql) else {
            return Ok(Steps::Failed(ApplyError::Definite {
                target: target.to_string(),
                detail: format!("the statement `{sql}` was not prepared"),
            }));
        };
        match &step.statement {
            StepStatement::Copy(st) => futures.push(Box::pin(copy_rows(c, prepared, st))),
            _ => futures.push(Box::pin(c.execute(prepared, p))),
        }
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

impl Applier {
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
    pub(super) async fn apply_pipelined(
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
        let setup = origin_setup(&last.commit);
        // BEGIN goes out with the statements, not a round trip ahead of
        // them: `join` polls it first, and a request is sent at its first
        // poll, so the server runs it first. It fails only with the
        // connection, and then so does everything after it. Every way out
        // below ends the transaction (COMMIT or ROLLBACK) or returns an
        // error, after which the link drops this connection.
        let one_message = one_message::eligible(&steps);
        let sent_as_one = one_message.is_some();
        let ran = match one_message {
            // A batch of row statements (a steady load's): one message.
            Some(rows) => {
                let setup = (setup.0.as_str(), setup.1);
                one_message::run(&self.client, &mut self.named, &target, &rows, setup).await
            }
            None => {
                let (began, ran) = futures::future::join(
                    self.client.batch_execute("BEGIN"),
                    run_steps(&self.client, &mut cache, &target, &steps, Some(&setup)),
                )
                .await;
                match began {
                    Ok(()) => ran,
                    Err(e) => Err(classify(&target, "BEGIN", e)),
                }
            }
        };
        self.statements = cache;
        let outcome = match ran {
            Ok(o) => o,
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        };
        let applied = match outcome {
            Steps::Applied => {
                if let Err(e) = wait_turn(&mut turn, &target).await {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
                self.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(|e| classify(&target, "COMMIT", e))?;
                turn_done(turn.take());
                tracing::trace!(link = %self.link, changes = planned.len(), statements = steps.len(), "Batch applied on the fast path.");
                Some(Applied {
                    rows: planned.len() as u64,
                    conflicts: 0,
                    markers: Vec::new(),
                    fast_path_statements: steps.len() as u64,
                    one_message: sent_as_one,
                })
            }
            Steps::Conflict => {
                // A conflict: undo and take the careful path.
                self.client
                    .batch_execute("ROLLBACK")
                    .await
                    .map_err(|e| classify(&target, "ROLLBACK", e))?;
                None
            }
            Steps::Failed(err) => {
                fall_back(&self.client, &self.link, err).await?;
                None
            }
        };
        // Not committed here: the careful path takes the turn.
        self.turn = turn;
        Ok(applied)
    }

    /// Every change of `txns` with its table, if the whole batch may go the
    /// fast path: row changes only, each with a shard key value where the
    /// table has one, none of a row the source did not own. `None`: the
    /// careful path decides.
    pub(super) async fn plan_fast<'t>(
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
            let commit_time = origin_setup(&txn.commit).1;
            for ch in &txn.changes {
                let (Some((rel, image)), Some(op)) = (ch.row_image(), ch.op()) else {
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
                let facts = own.facts(op, verdict.as_ref(), commit_time);
                if conflict::decide(&facts, Found::Unwritten).record.is_some() {
                    // A conflict before anything is written: the careful
                    // path records it.
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
}
