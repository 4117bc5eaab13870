//! What `ezone chaos run` adds to the checker's verdict: the answers per
//! fault window, the timeline picture, liveness after the heal, and the
//! forced failovers' at-risk writes against the conflicts recorded.
//!
//! Everything here reads the request history (what clients were answered)
//! and what the injector recorded; the judging functions are the chaos
//! crate's pure ones (`ezone_chaos::timeline`, `ezone_chaos::forced`).

use std::time::Duration;

use ezone_chaos::forced::{at_risk_mismatches, AnsweredWrite, ForcedRecord};
use ezone_chaos::inject::Applied;
use ezone_chaos::schedule::FaultKind;
use ezone_chaos::timeline::{self, Sample, Window};
use ezone_orders::workload::{History, Op};

/// Every request as the timeline functions take it.
pub fn samples(h: &History) -> Vec<Sample> {
    h.outcomes
        .iter()
        .map(|o| Sample {
            city: o.city.clone(),
            op: o.op.name().to_string(),
            invoke: o.started,
            complete: o.finished(),
            status: o.status,
            acked: o.acked,
        })
        .collect()
}

/// The label of a fault in the report: its kind and what it hit.
fn label(a: &Applied) -> String {
    let f = &a.fault;
    match f.kind {
        FaultKind::KillEtcdMember | FaultKind::PauseEtcdMember => {
            format!("{} {}", f.kind, f.amount)
        }
        FaultKind::EtcdQuorumLoss => f.kind.to_string(),
        _ => match &f.other {
            Some(o) => format!("{} {}>{}", f.kind, f.site, o),
            None => format!("{} {}", f.kind, f.site),
        },
    }
}

/// Each fault as it was applied (not as scheduled: undoing one can take
/// longer than planned), as a timeline window.
pub fn windows(applied: &[Applied]) -> Vec<Window> {
    applied
        .iter()
        .map(|a| Window {
            label: label(a),
            from: a.started,
            to: a.ended.max(a.started),
        })
        .collect()
}

/// Every write as the at-risk comparison takes it.
pub fn answered_writes(h: &History) -> Vec<AnsweredWrite> {
    h.outcomes
        .iter()
        .map(|o| AnsweredWrite {
            order: o.id.clone(),
            status: match &o.op {
                Op::Patch { status } => Some(status.clone()),
                Op::Create { .. } => None,
            },
            site: o
                .body
                .as_ref()
                .and_then(|b| b.get("site"))
                .and_then(|s| s.as_str())
                .map(str::to_string),
            acked: o.acked,
            in_doubt: o.unanswered > 0,
            invoke: o.started,
            complete: o.finished(),
        })
        .collect()
}

/// A forced failover judged: its lines for the verdict, and whether it
/// kept its promise (every write at risk recorded as a conflict, no
/// conflict without a write behind it).
pub fn judge_forced(rec: &ForcedRecord, writes: &[AnsweredWrite]) -> (Vec<String>, bool) {
    let head = format!("forced failover {} -> {}", rec.lost, rec.survivor);
    let Some(rows) = &rec.survivor_rows else {
        // The command never succeeded (or the survivor could not be read):
        // nothing was forced over, so nothing is at risk; said, not judged.
        return (
            vec![format!(
                "{head}: did not open ({})",
                rec.notes.last().map(String::as_str).unwrap_or("no note")
            )],
            true,
        );
    };
    let Some(returned_at) = rec.returned_at else {
        return (
            vec![format!(
                "{head}: the lost site did not come back ({})",
                rec.notes.last().map(String::as_str).unwrap_or("no note")
            )],
            false,
        );
    };
    let r = at_risk_mismatches(writes, &rec.lost, returned_at, rows, &rec.conflicts);
    let mut lines = vec![format!(
        "{head}: {} acknowledged write(s) at risk (acknowledged at {}, not at {} when it opened), \
         {} conflict(s) recorded, {} explained by an in-doubt write, {} superseded by a late \
         in-doubt write; unrecorded {} (must be 0), unexplained {} (must be 0)",
        r.at_risk.len(),
        rec.lost,
        rec.survivor,
        rec.conflicts.len(),
        r.in_doubt.len(),
        r.superseded_in_doubt.len(),
        r.unrecorded.len(),
        r.unexplained.len()
    )];
    let examples = |set: &std::collections::BTreeSet<String>| {
        set.iter().take(10).cloned().collect::<Vec<_>>().join(" ")
    };
    if !r.unrecorded.is_empty() {
        lines.push(format!(
            "  at risk, no conflict recorded (dropped silently): {}",
            examples(&r.unrecorded)
        ));
    }
    if !r.unexplained.is_empty() {
        lines.push(format!(
            "  conflicts no client's write explains: {}",
            examples(&r.unexplained)
        ));
    }
    (lines, r.is_ok())
}

/// How long after the heal every city must have had a write acknowledged
/// again: the quiet period, at most [`LIVENESS_BOUND_MAX`].
pub fn liveness_bound(quiet: Duration) -> Duration {
    quiet.min(LIVENESS_BOUND_MAX)
}

/// The longest liveness bound (a long quiet period does not excuse a slow
/// recovery).
pub const LIVENESS_BOUND_MAX: Duration = Duration::from_secs(20);

/// The timeline picture of a run.
pub fn svg(
    h: &History,
    applied: &[Applied],
    run_len: Duration,
    heal_at: Duration,
    title: &str,
) -> Result<String, timeline::TimelineError> {
    let buckets = timeline::per_second(&samples(h), run_len);
    timeline::render_svg(&buckets, &windows(applied), Some(heal_at), title)
}
