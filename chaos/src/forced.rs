//! The forced-failover fault: a site lost (its Postgres killed), its shards
//! forced over to a survivor with the operator's command, the lost site's
//! return, and the repair of what had not crossed (`ezone conflicts
//! resolve`), as an operator would run them.
//!
//! What the checker needs to judge it is kept in a [`ForcedRecord`]: the
//! survivor's rows read directly from its Postgres once the failover
//! opened (before the lost site came back: what had crossed), and the
//! conflicts the survivor recorded for the lost site's link once its tail
//! arrived. [`at_risk_mismatches`] then compares, one for one, the writes a
//! client got an answer for at the lost site and that had not crossed with
//! the conflicts recorded: none may be missing, none may be unexplained.
//!
//! The repair keeps, per conflict, the newer version: the row as the
//! survivor holds it when it was written under a later fence epoch than the
//! tail's change (by the survivor after it took the shard over, or by the
//! lost site after the shard came back to it: a client got that answer
//! later in real time), else the returning site's (the order or status the
//! lost site acknowledged and the survivor never saw).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::check::{read_rows, OrderRow};
use crate::ensemble::{Ensemble, Part};

/// How long the forced failover command may keep failing (etcd down, say)
/// before the fault gives up on it.
const COMMAND_RETRY_FOR: Duration = Duration::from_secs(45);
/// How long the lost site's tail may take to reach the survivor.
const TAIL_WAIT: Duration = Duration::from_secs(60);
/// The prefix of the marker message the tail wait sends through the link
/// (the switchover's marker table records it at the survivor).
const MARKER_PREFIX: &str = "ezone.switchover";

/// One recorded conflict, as the survivor holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictSeen {
    pub conflict: i64,
    /// The order's id (from either recorded image).
    pub order: String,
    /// The lost site's operation (`insert`, `update`, `delete`).
    pub op: Option<String>,
    /// What the repair kept: `survivor` or `returning`.
    pub kept: String,
}

/// What a forced failover did, for the checker and the report.
#[derive(Debug, Clone, Default)]
pub struct ForcedRecord {
    pub lost: String,
    pub survivor: String,
    /// When the lost site's Postgres was killed, from the run's start.
    pub killed_at: Duration,
    /// When the failover command succeeded.
    pub opened_at: Option<Duration>,
    /// When the lost site's Postgres was back (it accepts nothing of the
    /// shards it lost from then on: its fence is closed for them).
    pub returned_at: Option<Duration>,
    /// The survivor's rows when the failover had opened, before the lost
    /// site returned: everything of the lost site's that had crossed.
    pub survivor_rows: Option<Vec<OrderRow>>,
    /// The conflicts the survivor recorded on the lost site's link.
    pub conflicts: Vec<ConflictSeen>,
    /// Steps as they went (for the report).
    pub notes: Vec<String>,
}

/// A forced failover under way: phase one (kill, force over, read the
/// survivor) runs in the background while other faults go on.
pub struct ForcedRun {
    lost: String,
    survivor: String,
    first_phase: tokio::task::JoinHandle<ForcedRecord>,
}

/// A client's answer to a write, as far as the at-risk comparison needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredWrite {
    pub order: String,
    /// `None` for a create; the status set, for a patch.
    pub status: Option<String>,
    /// The site that accepted it (the answer's `site`), when acknowledged.
    pub site: Option<String>,
    pub acked: bool,
    /// Some attempt's fate is unknown (its answer lost): it may have been
    /// applied at any site, whatever the final answer was.
    pub in_doubt: bool,
    pub invoke: Duration,
    pub complete: Duration,
}

/// What [`at_risk_mismatches`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AtRisk {
    /// Orders with an acknowledged write at the lost site that had not
    /// crossed.
    pub at_risk: BTreeSet<String>,
    /// At risk and no conflict recorded: silently dropped (a violation).
    pub unrecorded: BTreeSet<String>,
    /// Conflicts explained by no acknowledged or in-doubt write at the lost
    /// site (a violation: the repair would act on writes nobody made).
    pub unexplained: BTreeSet<String>,
    /// Conflicts explained by an in-doubt write only (allowed, counted).
    pub in_doubt: BTreeSet<String>,
    /// Orders whose row at the survivor shows not the last status
    /// acknowledged at the lost site but one an in-doubt write of it set:
    /// that write may have landed at the lost site after the acknowledged
    /// one (a request stuck in a partition, delivered once it healed) and
    /// crossed, so nothing of the order need be in the tail. Allowed,
    /// counted (the register check judges the order's final status).
    pub superseded_in_doubt: BTreeSet<String>,
}

impl AtRisk {
    pub fn is_ok(&self) -> bool {
        self.unrecorded.is_empty() && self.unexplained.is_empty()
    }
}

/// The writes acknowledged at `lost` that `survivor_rows` (what had crossed
/// when the failover opened) does not reflect, compared one for one (by
/// order) with the conflicts recorded. Only writes invoked before
/// `returned_at` count (the lost site accepted nothing of the shards it
/// lost between its Postgres being killed and its return, and once back
/// its fence refuses them; writes it accepts later, for shards moved back
/// to it, are ordinary ones). Per order, the last acknowledged write at the
/// lost site counts: a create is reflected when the row is there, a status
/// change when the row has that status.
pub fn at_risk_mismatches(
    writes: &[AnsweredWrite],
    lost: &str,
    returned_at: Duration,
    survivor_rows: &[OrderRow],
    conflicts: &[ConflictSeen],
) -> AtRisk {
    let rows: BTreeMap<&str, &OrderRow> =
        survivor_rows.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut last_acked: BTreeMap<&str, &AnsweredWrite> = BTreeMap::new();
    let mut doubted: BTreeSet<&str> = BTreeSet::new();
    // Statuses an in-doubt write of each order may have set.
    let mut doubtful_status: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for w in writes.iter().filter(|w| w.invoke < returned_at) {
        if w.acked && w.site.as_deref() == Some(lost) {
            let e = last_acked.entry(w.order.as_str()).or_insert(w);
            if w.complete >= e.complete {
                *e = w;
            }
        }
        if w.in_doubt {
            // An attempt whose answer was lost may have landed at the lost
            // site even when another attempt was acknowledged elsewhere
            // (and after it, setting its status again).
            doubted.insert(w.order.as_str());
            if let Some(st) = &w.status {
                doubtful_status
                    .entry(w.order.as_str())
                    .or_default()
                    .insert(st.as_str());
            }
        }
    }
    let mut out = AtRisk::default();
    for (order, w) in &last_acked {
        let crossed = match (rows.get(order), &w.status) {
            (None, _) => false,
            (Some(_), None) => true,
            // The survivor wrote the order itself since it took the shard
            // over (clients retried there at once): its version is newer
            // than anything the lost site acknowledged, so whether the lost
            // site's status had crossed cannot be read from the row (a
            // conflict, if it had not); the register check judges the end.
            (Some(r), Some(_)) if r.site.as_deref() != Some(lost) => true,
            (Some(r), Some(status)) => r.status.as_deref() == Some(status.as_str()),
        };
        // The lost site's row behind its last acknowledged status, at one
        // an in-doubt write set: that write may have landed after the
        // acknowledged one and crossed (see `superseded_in_doubt`).
        let superseded = !crossed
            && rows
                .get(order)
                .and_then(|r| r.status.as_deref())
                .is_some_and(|shown| {
                    doubtful_status
                        .get(order)
                        .is_some_and(|set| set.contains(shown))
                });
        if superseded {
            out.superseded_in_doubt.insert(order.to_string());
        } else if !crossed {
            out.at_risk.insert(order.to_string());
        }
    }
    let recorded: BTreeSet<&str> = conflicts.iter().map(|c| c.order.as_str()).collect();
    for order in &out.at_risk {
        if !recorded.contains(order.as_str()) {
            out.unrecorded.insert(order.clone());
        }
    }
    for order in recorded {
        if out.at_risk.contains(order) {
            continue;
        }
        if doubted.contains(order) || last_acked.contains_key(order) {
            // An in-doubt write, or an acknowledged one followed by an
            // in-doubt one that did not cross: the lost site may hold it.
            out.in_doubt.insert(order.to_string());
        } else {
            out.unexplained.insert(order.to_string());
        }
    }
    out
}

/// `ezone ARGS --etcd ...`, waited for; its exit code and stderr's tail.
/// Both phases run their commands through it (phase one from a task that
/// cannot borrow the ensemble, hence the etcd flags, TLS included:
/// [`Ensemble::etcd_cli_args`]).
async fn ezone(bin: &Path, etcd: &[String], args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(PathBuf::from(bin))
        .args(args)
        .args(etcd)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(90), out).await {
        Ok(Ok(o)) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().take(3).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            (o.status.code().unwrap_or(-1), tail.join(" | "))
        }
        Ok(Err(e)) => (-1, format!("cannot run {}: {e}", bin.display())),
        Err(_) => (-1, "timed out".into()),
    }
}

/// Phase one, started: `lost`'s Postgres killed; in the background, the
/// forced failover of `lost` to `survivor` (re-run until it succeeds or
/// [`COMMAND_RETRY_FOR`]), then the survivor's rows read.
pub fn begin(
    ens: &Ensemble,
    bin: &Path,
    lost: &str,
    survivor: &str,
    start: Instant,
) -> Result<ForcedRun, String> {
    ens.kill(lost, Part::Postgres)
        .map_err(|e| format!("killing {lost}'s Postgres: {e}"))?;
    let killed_at = start.elapsed();
    let (lost_s, survivor_s) = (lost.to_string(), survivor.to_string());
    let bin = bin.to_path_buf();
    let etcd = ens.etcd_cli_args();
    let survivor_dsn = ens.dsn(survivor).map_err(|e| e.to_string())?;
    let first_phase = tokio::spawn(async move {
        let mut rec = ForcedRecord {
            lost: lost_s.clone(),
            survivor: survivor_s.clone(),
            killed_at,
            ..ForcedRecord::default()
        };
        let deadline = Instant::now() + COMMAND_RETRY_FOR;
        loop {
            let (code, tail) = ezone(
                &bin,
                &etcd,
                &[
                    "failover",
                    "site",
                    &lost_s,
                    "--to",
                    &survivor_s,
                    "--force",
                    "--yes",
                    "--lock-ttl",
                    "1s",
                ],
            )
            .await;
            rec.notes.push(format!(
                "{:.3}s forced failover exit {code}: {tail}",
                start.elapsed().as_secs_f64()
            ));
            if code == 0 {
                rec.opened_at = Some(start.elapsed());
                break;
            }
            if Instant::now() >= deadline {
                return rec;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        match read_rows(&survivor_s, &survivor_dsn).await {
            Ok(rows) => rec.survivor_rows = Some(rows),
            Err(e) => rec.notes.push(format!(
                "reading {survivor_s}'s rows after the failover: {e}"
            )),
        }
        rec
    });
    Ok(ForcedRun {
        lost: lost.to_string(),
        survivor: survivor.to_string(),
        first_phase,
    })
}

/// Phase two: wait for phase one, bring the lost site's Postgres back, wait
/// until its tail has reached the survivor (a marker sent through the link
/// after the return arrives), read the conflicts, repair them.
pub async fn end(ens: &Ensemble, bin: &Path, run: ForcedRun, start: Instant) -> ForcedRecord {
    let ForcedRun {
        lost,
        survivor,
        first_phase,
    } = run;
    let mut rec = match first_phase.await {
        Ok(r) => r,
        Err(e) => ForcedRecord {
            lost: lost.clone(),
            survivor: survivor.clone(),
            notes: vec![format!("the failover task failed: {e}")],
            ..ForcedRecord::default()
        },
    };
    let note = |rec: &mut ForcedRecord, s: String| {
        rec.notes
            .push(format!("{:.3}s {s}", start.elapsed().as_secs_f64()))
    };
    if let Err(e) = ens.restart(&lost, Part::Postgres).await {
        note(&mut rec, format!("restarting {lost}'s Postgres: {e}"));
        return rec;
    }
    rec.returned_at = Some(start.elapsed());
    note(&mut rec, format!("{lost}'s Postgres is back"));
    if rec.opened_at.is_none() {
        // Not forced over: nothing to repair; the site simply came back.
        return rec;
    }
    match wait_tail(ens, &lost, &survivor).await {
        Ok(()) => note(&mut rec, format!("{lost}'s tail reached {survivor}")),
        Err(e) => {
            note(&mut rec, format!("waiting for {lost}'s tail: {e}"));
            return rec;
        }
    }
    let conflicts = match read_conflicts(ens, &lost, &survivor).await {
        Ok(c) => c,
        Err(e) => {
            note(&mut rec, format!("reading the conflicts: {e}"));
            return rec;
        }
    };
    // Resolve per version kept (the command takes many ids at once).
    let mut by_keep: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in &conflicts {
        by_keep
            .entry(c.kept.as_str())
            .or_default()
            .push(c.conflict.to_string());
    }
    for (keep, ids) in &by_keep {
        let mut args: Vec<&str> = vec!["conflicts", "resolve", "--site", &survivor, "--keep", keep];
        for id in ids {
            args.push("--id");
            args.push(id);
        }
        // Re-run until it succeeds: it needs etcd (the topology) and every
        // site's Postgres, which other faults may be holding down.
        let deadline = Instant::now() + COMMAND_RETRY_FOR;
        loop {
            let (code, tail) = ezone(bin, &ens.etcd_cli_args(), &args).await;
            note(
                &mut rec,
                format!(
                    "conflicts resolve --keep {keep} ({} conflicts): exit {code} {tail}",
                    ids.len()
                ),
            );
            if code == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    rec.conflicts = conflicts;
    rec
}

/// A marker sent at `lost` after its return, until it is seen applied at
/// `survivor`: everything `lost` wrote before it has reached the survivor.
async fn wait_tail(ens: &Ensemble, lost: &str, survivor: &str) -> Result<(), String> {
    let token = format!("chaos-tail-{}", std::process::id());
    let lost_dsn = ens.dsn(lost).map_err(|e| e.to_string())?;
    let survivor_dsn = ens.dsn(survivor).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TAIL_WAIT;
    let mut sent = false;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !sent {
            match sql(&lost_dsn).await {
                Ok(c) => match c
                    .execute(
                        "SELECT pg_logical_emit_message(true, $1, $2)",
                        &[&MARKER_PREFIX, &token],
                    )
                    .await
                {
                    Ok(_) => sent = true,
                    Err(e) => last = format!("sending the marker at {lost}: {e}"),
                },
                Err(e) => last = e,
            }
        }
        if sent {
            match sql(&survivor_dsn).await {
                Ok(c) => {
                    let seen = c
                        .query_one(
                            "SELECT to_regclass('ezone_replication.markers') IS NOT NULL AND \
                             EXISTS (SELECT 1 FROM ezone_replication.markers \
                                     WHERE prefix = $1 AND content = convert_to($2, 'UTF8'))",
                            &[&MARKER_PREFIX, &token],
                        )
                        .await;
                    match seen {
                        Ok(r) if r.get::<_, bool>(0) => return Ok(()),
                        Ok(_) => last = format!("the marker has not reached {survivor} yet"),
                        Err(e) => last = format!("looking for the marker at {survivor}: {e}"),
                    }
                }
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("not within {TAIL_WAIT:?}: {last}"))
}

async fn sql(dsn: &str) -> Result<tokio_postgres::Client, String> {
    ezone_pg::connect_spawned(dsn)
        .await
        .map_err(|e| e.to_string())
}

/// The unresolved conflicts on the link `lost->survivor`, each with the
/// version to keep (see the module's doc).
async fn read_conflicts(
    ens: &Ensemble,
    lost: &str,
    survivor: &str,
) -> Result<Vec<ConflictSeen>, String> {
    let dsn = ens.dsn(survivor).map_err(|e| e.to_string())?;
    let c = sql(&dsn).await?;
    let rows = c
        .query(
            "SELECT c.id, coalesce(c.remote_row->>'id', c.local_row->>'id'), c.op, \
                    o.fence_epoch, (c.remote_row->>'fence_epoch')::bigint \
             FROM ezone_replication.conflicts c \
             LEFT JOIN public.orders o ON o.id = coalesce(c.remote_row->>'id', c.local_row->>'id') \
             WHERE c.link = $1 AND NOT c.resolved ORDER BY c.id",
            &[&format!("{lost}->{survivor}")],
        )
        .await
        .map_err(|e| format!("reading ezone_replication.conflicts at {survivor}: {e}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            let now: Option<i64> = r.get(3);
            let tail: Option<i64> = r.get(4);
            ConflictSeen {
                conflict: r.get(0),
                order: r.get::<_, Option<String>>(1).unwrap_or_default(),
                op: r.get(2),
                kept: keep(now, tail).into(),
            }
        })
        .collect())
}

/// Which version a repair keeps: the row as the survivor holds it now when
/// it was written under a later epoch than the tail's change (by the
/// survivor after the takeover, or by the lost site itself after the shard
/// came back to it: either way a client got that answer after the tail's),
/// else the tail's (the returning site's) version. No row at the survivor:
/// the tail's.
fn keep(now_epoch: Option<i64>, tail_epoch: Option<i64>) -> &'static str {
    match (now_epoch, tail_epoch) {
        (Some(now), Some(tail)) if now > tail => "survivor",
        _ => "returning",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row last written at beijing.
    fn row(id: &str, status: &str) -> OrderRow {
        OrderRow {
            id: id.into(),
            status: Some(status.into()),
            site: Some("beijing".into()),
            ..OrderRow::default()
        }
    }

    fn w(order: &str, status: Option<&str>, site: &str, acked: bool, ms: u64) -> AnsweredWrite {
        AnsweredWrite {
            order: order.into(),
            status: status.map(str::to_string),
            site: acked.then(|| site.to_string()),
            acked,
            in_doubt: !acked,
            invoke: Duration::from_millis(ms),
            complete: Duration::from_millis(ms),
        }
    }

    /// After every write of the tests but [`late`]'s.
    const RETURNED: Duration = Duration::from_millis(100);

    fn conflict(order: &str) -> ConflictSeen {
        ConflictSeen {
            conflict: 1,
            order: order.into(),
            op: Some("insert".into()),
            kept: "returning".into(),
        }
    }

    #[test]
    fn the_writes_that_had_not_crossed_are_the_conflicts() {
        let writes = vec![
            w("a", None, "beijing", true, 1),            // crossed
            w("b", None, "beijing", true, 2),            // did not cross
            w("a", Some("cooking"), "beijing", true, 3), // status did not cross
            w("c", None, "shanghai", true, 4),           // not the lost site's
            w("d", None, "beijing", false, 5),           // in doubt
        ];
        let rows = vec![row("a", "placed"), row("c", "placed")];
        let all = [conflict("a"), conflict("b"), conflict("d")];
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &rows, &all);
        assert_eq!(r.at_risk, ["a", "b"].map(String::from).into());
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.in_doubt, ["d"].map(String::from).into());
        // One conflict missing: that write was dropped silently.
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &rows, &all[1..]);
        assert_eq!(r.unrecorded, ["a"].map(String::from).into());
        assert!(!r.is_ok());
        // A conflict nobody's write explains.
        let mut more = all.to_vec();
        more.push(conflict("zz"));
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &rows, &more);
        assert_eq!(r.unexplained, ["zz"].map(String::from).into());
        assert!(!r.is_ok());
    }

    #[test]
    fn a_status_the_survivor_has_since_overwritten_is_not_judged_from_the_row() {
        // beijing acknowledged "cancelled"; by the time the survivor's rows
        // were read, a retried PATCH had set "accepted" there.
        let writes = vec![
            w("a", None, "beijing", true, 1),
            w("a", Some("cancelled"), "beijing", true, 2),
        ];
        let mut since = row("a", "accepted");
        since.site = Some("shanghai".into());
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[since], &[]);
        assert!(r.at_risk.is_empty() && r.is_ok(), "{r:?}");
        // Still beijing's version, with another status: at risk.
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[row("a", "accepted")], &[]);
        assert_eq!(r.unrecorded, ["a"].map(String::from).into());
    }

    #[test]
    fn writes_after_the_return_are_not_at_risk() {
        // Acknowledged at beijing after it came back (a shard moved back to
        // it later): an ordinary write, not part of the failover.
        let writes = vec![w("late", None, "beijing", true, 500)];
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[], &[]);
        assert!(r.at_risk.is_empty() && r.is_ok(), "{r:?}");
    }

    #[test]
    fn an_unanswered_attempt_explains_a_conflict_whatever_the_final_answer() {
        // The first attempt reached beijing and its answer was lost; a retry
        // was acknowledged at shanghai after the failover.
        let mut retried = w("a", None, "shanghai", true, 50);
        retried.in_doubt = true;
        let r = at_risk_mismatches(&[retried], "beijing", RETURNED, &[], &[conflict("a")]);
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(r.in_doubt, ["a"].map(String::from).into());
    }

    #[test]
    fn the_last_acknowledged_write_of_an_order_counts() {
        // The status the survivor has is the last one acknowledged: crossed.
        let writes = vec![
            w("a", None, "beijing", true, 1),
            w("a", Some("cooking"), "beijing", true, 2),
            w("a", Some("delivered"), "beijing", true, 3),
        ];
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[row("a", "delivered")], &[]);
        assert!(r.at_risk.is_empty() && r.is_ok(), "{r:?}");
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[row("a", "cooking")], &[]);
        assert_eq!(r.unrecorded, ["a"].map(String::from).into());
    }

    #[test]
    fn the_repair_keeps_the_version_written_under_the_later_epoch() {
        // Written by the survivor (or the lost site, home again) since.
        assert_eq!(keep(Some(5), Some(1)), "survivor");
        // The survivor's row is older than the tail (it crossed before).
        assert_eq!(keep(Some(1), Some(1)), "returning");
        // Not at the survivor at all.
        assert_eq!(keep(None, Some(1)), "returning");
        // An image without the column: the tail's.
        assert_eq!(keep(Some(3), None), "returning");
    }

    #[test]
    fn a_late_in_doubt_write_explains_a_row_behind_the_last_acknowledged() {
        // "cooking" was sent first and its answer lost (in doubt), retried
        // and acknowledged; "delivered" was acknowledged after it; the
        // survivor's row shows "cooking": the stuck first attempt landed
        // at beijing after "delivered" and crossed. Not at risk.
        let mut first = w("a", Some("cooking"), "beijing", false, 10);
        first.in_doubt = true;
        let mut retry = w("a", Some("cooking"), "beijing", true, 20);
        retry.in_doubt = true;
        let last = w("a", Some("delivered"), "beijing", true, 30);
        let writes = [first, retry, last];
        let r = at_risk_mismatches(&writes, "beijing", RETURNED, &[row("a", "cooking")], &[]);
        assert!(r.at_risk.is_empty() && r.is_ok(), "{r:?}");
        assert_eq!(r.superseded_in_doubt, ["a"].map(String::from).into());
        // Without the in-doubt write, the same row is a write at risk.
        let r = at_risk_mismatches(
            &writes[2..],
            "beijing",
            RETURNED,
            &[row("a", "cooking")],
            &[],
        );
        assert_eq!(r.unrecorded, ["a"].map(String::from).into());
    }
}
