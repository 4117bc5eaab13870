//! A large source transaction applied as it arrives
//! ([`crate::link`]'s `large_transaction_bytes`): one target transaction
//! opened for it, its parts applied inside (the fast path under a
//! savepoint, else the careful path), committed with the origin advanced
//! when its Commit arrives. Nothing commits before then: an error drops the
//! open transaction and the link is sent the whole transaction again.

use super::careful::apply_one_by_one;
use super::error::{classify, ApplyError};
use super::fast::{run_steps, Steps};
use super::ownership::Ownership;
use super::{origin_setup, Applied, Applier, ORIGIN_SETUP_SQL};
use crate::plan;
use crate::sql::TableInfo;
use crate::txn::{Change, SourceTxn};

impl Applier {
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
                            one_message: false,
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
}
