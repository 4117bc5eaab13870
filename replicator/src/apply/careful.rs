//! The careful path: one statement at a time, in source order, each change
//! judged for ownership and each conflict decided by the policy
//! ([`crate::conflict::decide`]) and recorded ([`super::record`]). Every
//! batch the fast path cannot take comes here; what it does is what the
//! fast path must match.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio_postgres::Client;

use super::error::{classify, ApplyError};
use super::ownership::Ownership;
use super::record::{record, RecordAt, Row};
use super::statements::{exec, params};
use super::turn::{turn_done, wait_turn};
use super::{origin_setup, Applied, Applier, ORIGIN_SETUP_SQL};
use crate::conflict::{self, Conflict, Found, Then};
use crate::pgoutput::{Relation, TupleData};
use crate::sql::{self, ShapeError, TableInfo};
use crate::txn::{Change, SourceTxn};

/// The careful path's changes, one statement at a time in source order, on
/// `c` inside a transaction the caller opened (and ends): each change judged
/// for ownership, each conflict decided by the policy
/// ([`conflict::decide`]) and recorded. `shapes`: each change's table
/// ([`Applier::shapes`]).
pub(super) async fn apply_one_by_one(
    c: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    target: &str,
    link: &str,
    txns: &[SourceTxn],
    all_shapes: Vec<Vec<Option<Arc<TableInfo>>>>,
    own: &Ownership,
) -> Result<Applied, ApplyError> {
    let topology = own.topology.as_ref().and_then(|f| f());
    let topology = topology.as_deref();
    let shape_err = |e: ShapeError| ApplyError::Shape {
        target: target.to_string(),
        source: e,
    };
    let mut out = Applied::default();
    for (txn, shapes) in txns.iter().zip(all_shapes) {
        let commit_time = origin_setup(&txn.commit).1;
        // Where this transaction's conflicts are recorded from.
        let at = RecordAt {
            link,
            target,
            txn,
            commit_time,
        };
        for (ch, shape) in txn.changes.iter().zip(shapes) {
            let (Some(t), Some((rel, image)), Some(op)) = (&shape, ch.row_image(), ch.op()) else {
                match ch {
                    Change::Truncate {
                        rels,
                        cascade,
                        restart_identity,
                    } => truncate(c, target, rels, *cascade, *restart_identity).await?,
                    Change::Message(m) => {
                        c.execute(
                            "INSERT INTO ezone_replication.markers (link, prefix, content, source_lsn) \
                             VALUES ($1, $2, $3, $4::text::pg_lsn) ON CONFLICT DO NOTHING",
                            &[&link, &m.prefix, &m.content.as_ref(), &m.lsn.to_string()],
                        )
                        .await
                        .map_err(|e| classify(target, "recording a marker", e))?;
                        out.markers.push(m.prefix.clone());
                    }
                    // A row change whose table was not resolved cannot
                    // happen: shapes were resolved for every row change.
                    Change::Insert { .. } | Change::Update { .. } | Change::Delete { .. } => {}
                }
                out.rows += 1;
                continue;
            };
            // Ownership first: a change made at a site that does not own
            // the row's shard is a conflict whatever else happens.
            let mut shard = own.shard_of(topology, rel, image);
            if shard.is_none() && own.lacks_key(rel, image) {
                if let Ok(st) = sql::select_row(t, rel, image) {
                    let row = c
                        .query_opt(st.sql.as_str(), &params(&st))
                        .await
                        .map_err(|e| classify(target, "reading the row's shard key", e))?
                        .and_then(|r| r.get::<_, Option<String>>(0));
                    shard = row.and_then(|row| own.shard_of_json(topology, rel, &row));
                }
            }
            let verdict =
                own.verdict(shard, txn)
                    .await
                    .map_err(|detail| ApplyError::Transient {
                        target: target.to_string(),
                        detail,
                    })?;
            let facts = own.facts(op, verdict.as_ref(), commit_time);
            let row = Row {
                op,
                shard,
                table: t,
                rel,
                image,
            };
            let reason =
                |conflict: Conflict| conflict.kind.reason(verdict.as_ref(), &own.source_site);
            let before = conflict::decide(&facts, Found::Unwritten);
            if let Some(conflict) = before.record {
                record(c, &at, &row, conflict, &reason(conflict)).await?;
                out.conflicts += 1;
            }
            if before.then == Then::Skip {
                continue;
            }
            let touched = write(c, cache, target, t, ch).await? > 0;
            let found = if touched {
                Found::Touched
            } else {
                Found::Untouched {
                    target_commit: if facts.wants_target_commit() {
                        commit_time_of(c, t, rel, image).await
                    } else {
                        None
                    },
                }
            };
            let after = conflict::decide(&facts, found);
            if let Some(conflict) = after.record {
                record(c, &at, &row, conflict, &reason(conflict)).await?;
                out.conflicts += 1;
            }
            match after.then {
                Then::Applied => out.rows += 1,
                Then::Overwrite => {
                    // The source's version over the row that exists.
                    let st = sql::update(t, rel, None, image).map_err(shape_err)?;
                    exec(c, cache, &st).await.map_err(|e| {
                        classify(
                            target,
                            &format!("UPDATE of {} (conflict resolution)", t.qualified),
                            e,
                        )
                    })?;
                }
                // Not applied; decide() asks to write only before the write.
                Then::Skip | Then::Write => {}
            }
        }
    }
    Ok(out)
}

/// Writes a row change as it came; how many rows it touched.
async fn write(
    c: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    target: &str,
    t: &TableInfo,
    ch: &Change,
) -> Result<u64, ApplyError> {
    let shape_err = |e: ShapeError| ApplyError::Shape {
        target: target.to_string(),
        source: e,
    };
    let (st, what) = match ch {
        Change::Insert { rel, new } => {
            (sql::insert(t, rel, new).map_err(shape_err)?, "INSERT into")
        }
        Change::Update { rel, old, new } => (
            sql::update(t, rel, old.as_ref(), new).map_err(shape_err)?,
            "UPDATE of",
        ),
        Change::Delete { rel, old } => {
            (sql::delete(t, rel, old).map_err(shape_err)?, "DELETE from")
        }
        Change::Truncate { .. } | Change::Message(_) => return Ok(0),
    };
    exec(c, cache, &st)
        .await
        .map_err(|e| classify(target, &format!("{what} {}", t.qualified), e))
}

/// The commit time of the target's row with the key of `image`, if
/// Postgres knows it (`track_commit_timestamp`) and the row is there.
async fn commit_time_of(
    c: &Client,
    t: &TableInfo,
    rel: &Relation,
    image: &TupleData,
) -> Option<SystemTime> {
    let st = sql::select_commit_time(t, rel, image).ok()?;
    c.query_opt(st.sql.as_str(), &params(&st))
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<SystemTime>>(0))
}

/// Replays a TRUNCATE of `rels`.
async fn truncate(
    c: &Client,
    target: &str,
    rels: &[Arc<Relation>],
    cascade: bool,
    restart_identity: bool,
) -> Result<(), ApplyError> {
    let names: Vec<String> = rels.iter().map(|r| sql::qualified(r)).collect();
    let stmt = format!(
        "TRUNCATE {}{}{}",
        names.join(", "),
        if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        },
        if cascade { " CASCADE" } else { "" }
    );
    c.batch_execute(&stmt)
        .await
        .map_err(|e| classify(target, "TRUNCATE", e))
}

impl Applier {
    /// The target's shape of every row change of `txns` (`None` for a
    /// truncate or a message), read before the apply transaction begins.
    pub(super) async fn shapes(
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
    pub(super) async fn apply_sequential(
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
}
