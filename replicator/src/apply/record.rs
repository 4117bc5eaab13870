//! Conflict records: one row in `ezone_replication.conflicts` per conflict,
//! with both versions, written in the apply transaction (what is recorded
//! is decided by [`crate::conflict::decide`]).

use tokio_postgres::Client;

use super::error::{classify, ApplyError};
use super::statements::params;
use crate::conflict::{Conflict, Op};
use crate::pgoutput::{Relation, TupleData};
use crate::sql::{self, TableInfo};
use crate::txn::SourceTxn;
use ezone_topology::ShardId;

/// The row change a conflict is about.
pub(super) struct Row<'a> {
    /// The incoming change's operation.
    pub(super) op: Op,
    pub(super) shard: Option<ShardId>,
    pub(super) table: &'a TableInfo,
    pub(super) rel: &'a Relation,
    /// The incoming row image (the old one for a delete).
    pub(super) image: &'a TupleData,
}

/// Where conflicts are recorded from: the link, its target and the source
/// transaction being applied.
pub(super) struct RecordAt<'a> {
    pub(super) link: &'a str,
    pub(super) target: &'a str,
    pub(super) txn: &'a SourceTxn,
    pub(super) commit_time: std::time::SystemTime,
}

/// Writes one conflict record about `row`, with both versions, the
/// incoming change's operation and what [`crate::conflict::decide`] said
/// (`conflict`, and its `reason`), in the apply transaction.
pub(super) async fn record(
    tx: &Client,
    at: &RecordAt<'_>,
    row: &Row<'_>,
    conflict: Conflict,
    reason: &str,
) -> Result<(), ApplyError> {
    let Row {
        op,
        shard,
        table: t,
        rel,
        image,
    } = *row;
    let kind = conflict.kind.as_str();
    let resolution = conflict.resolution;
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
