//! Seeding a new site: the tables copied from the source slot's exported
//! snapshot in one target transaction that also sets the link's origin to
//! the slot's consistent point, so streaming starts exactly where the copy
//! ends.

use super::error::{classify, connect, ApplyError};
use super::Applier;
use crate::lsn::Lsn;

impl Applier {
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
