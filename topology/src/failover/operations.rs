//! The switchovers and forced failovers on record, as `ezone failover
//! history` lists them: one [`Operation`] each, newest first.
//!
//! Two sources, joined ([`build_history`]): the shards' epoch histories
//! ([`crate::history`]: written with every CAS, never changed, so they say
//! what happened to each shard, each freeze and what followed it, each
//! forced take and open) and the operation records the driver keeps (a
//! switchover's steps, holder and reason, the latest one of each shard; a
//! forced failover's divergence point, the latest one of each site), which
//! add the detail they still hold.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::driver::{ForcedRecord, Record};
use super::Step;
use crate::history::{EpochEntry, ShardHistory, Transition};
use crate::model::{ShardId, ShardState};
use crate::store::{StoreError, TopologyStore};

/// Planned (a switchover) or forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    Planned,
    Forced,
}

/// How an operation ended, as far as the records say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpOutcome {
    Done,
    RolledBack,
    /// A planned switchover cut short by a forced failover.
    Superseded,
    InProgress,
    /// Its epochs are on record but not how it ended (a tool, a hand edit,
    /// or a command that died before writing its record).
    Unknown,
}

/// One step of an operation: when it was reached and how long it took
/// (until the next step; none when that is not recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpStep {
    pub step: String,
    pub what: String,
    pub at_ms: u64,
    pub took_ms: Option<u64>,
}

/// A switchover of one shard, or a forced failover of a site's shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operation {
    pub kind: OpKind,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
    pub shards: Vec<ShardId>,
    pub from: String,
    /// None: not recorded (a rolled-back switchover whose record a later
    /// one of the shard replaced).
    pub to: Option<String>,
    pub outcome: OpOutcome,
    /// The step it is at, while in progress.
    pub step: Option<String>,
    /// Why it rolled back, or what else the record says.
    pub detail: Option<String>,
    pub holder: Option<String>,
    /// Planned: how long the shard's writes were held (freeze to flip or
    /// rollback).
    pub hold_ms: Option<u64>,
    /// Empty when the step times are no longer kept (a switchover's record
    /// holds the shard's latest one only; its epochs stay).
    pub steps: Vec<OpStep>,
    /// Forced: how far the survivor had applied the lost site's WAL.
    pub divergence_lsn: Option<String>,
    /// Forced: the record is open (`ezone status` shows it) until
    /// `close-forced`.
    pub open: Option<bool>,
    pub closed_at_ms: Option<u64>,
    pub closed_by: Option<String>,
}

impl Operation {
    /// An operation of `kind` on `shards` from `from`, started at
    /// `started_at_ms`, of which nothing else is known yet.
    pub fn new(kind: OpKind, started_at_ms: u64, shards: Vec<ShardId>, from: &str) -> Operation {
        Operation {
            kind,
            started_at_ms,
            ended_at_ms: None,
            shards,
            from: from.into(),
            to: None,
            outcome: OpOutcome::Unknown,
            step: None,
            detail: None,
            holder: None,
            hold_ms: None,
            steps: Vec::new(),
            divergence_lsn: None,
            open: None,
            closed_at_ms: None,
            closed_by: None,
        }
    }
}

/// The shards' epoch entries from `list_ops("epochs/")` (names
/// `epochs/{shard}/{epoch}`), by shard, in epoch order.
pub fn epochs_by_shard(raw: &BTreeMap<String, Vec<u8>>) -> BTreeMap<ShardId, Vec<EpochEntry>> {
    let mut by: BTreeMap<ShardId, Vec<EpochEntry>> = BTreeMap::new();
    for (name, bytes) in raw {
        let Some(shard) = name
            .strip_prefix("epochs/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(s, _)| s.parse::<ShardId>().ok())
        else {
            continue;
        };
        if let Ok(e) = serde_json::from_slice::<EpochEntry>(bytes) {
            by.entry(shard).or_default().push(e);
        }
    }
    by.into_iter()
        .map(|(shard, es)| (shard, ShardHistory::new(es).entries().to_vec()))
        .collect()
}

/// What a planned switchover does in a step (by the step's recorded name).
fn step_what(step: &str, from: &str, to: &str) -> String {
    match step {
        "start" => format!("freeze at {from} (CAS frozen)"),
        "frozen" => format!("close {from}'s fence"),
        "fenced" => format!("marker in {from}'s WAL"),
        "catching_up" => format!("wait for link {from}->{to} to apply the marker"),
        "opening" => format!("open {to}'s fence ahead of the flip"),
        "flipping" => format!("flip: home {to}, active (CAS)"),
        "done" => format!("confirm {to}'s fence is open"),
        "rolling_back" => format!("roll back: home {from}, active (CAS)"),
        "rolled_back" => format!("reconcile the fences of {from} and {to}"),
        other => other.to_string(),
    }
}

/// A switchover record's steps, each lasting until the next one (the last
/// until the record finished, when that is recorded).
fn steps_of(r: &Record) -> Vec<OpStep> {
    let sw = &r.switchover;
    r.history
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let end = match r.history.get(i + 1) {
                Some(next) => Some(next.at_ms),
                None if r.finished => r.finished_at_ms,
                None => None,
            };
            OpStep {
                step: m.step.clone(),
                what: step_what(&m.step, &sw.from, &sw.to),
                at_ms: m.at_ms,
                took_ms: end.map(|e| e.saturating_sub(m.at_ms)),
            }
        })
        .collect()
}

/// Fills `op` from a switchover's record (which the epochs cannot say:
/// the target of a rollback, the steps, the holder, the reason).
fn apply_record(op: &mut Operation, r: &Record) {
    let sw = &r.switchover;
    op.to = Some(sw.to.clone());
    op.holder = Some(r.holder.clone());
    op.steps = steps_of(r);
    if let Some(first) = r.history.first() {
        if first.at_ms > 0 && (op.started_at_ms == 0 || first.at_ms < op.started_at_ms) {
            op.started_at_ms = first.at_ms;
        }
    }
    op.step = None;
    op.detail = None;
    match &sw.step {
        Step::Done if r.finished => op.outcome = OpOutcome::Done,
        Step::RolledBack { reason } => {
            op.outcome = if reason.starts_with("superseded") {
                OpOutcome::Superseded
            } else {
                OpOutcome::RolledBack
            };
            op.detail = Some(reason.clone());
        }
        _ => {
            op.outcome = OpOutcome::InProgress;
            op.step = Some(sw.step_name().to_string());
            if let Step::RollingBack { reason } = &sw.step {
                op.detail = Some(reason.clone());
            }
        }
    }
    if op.outcome != OpOutcome::InProgress {
        op.ended_at_ms = r
            .finished_at_ms
            .or(r.active_at_ms)
            .or(op.ended_at_ms)
            .or(r.history.last().map(|m| m.at_ms));
    } else {
        op.ended_at_ms = None;
    }
    if let Some(h) = r.hold() {
        op.hold_ms = Some(h.as_millis() as u64);
    }
}

/// A shard's forced move, from its epochs.
struct ForcedMove {
    shard: ShardId,
    before: u64,
    from: String,
    to: String,
    take_ms: u64,
    open_ms: Option<u64>,
}

/// Every switchover and forced failover the store remembers, newest first:
/// the shards' epoch histories say what happened (each freeze and what
/// followed it, each forced take and open), the operation records add the
/// detail they keep (a switchover's steps, holder and reason: the latest
/// one of each shard; a forced failover's divergence point: the latest one
/// of each site).
pub fn build_history(
    epochs: &BTreeMap<ShardId, Vec<EpochEntry>>,
    records: &[Record],
    forced: &[ForcedRecord],
) -> Vec<Operation> {
    let mut planned: Vec<((ShardId, u64), Operation)> = Vec::new();
    let mut moves: Vec<ForcedMove> = Vec::new();
    for (&shard, es) in epochs {
        let mut i = 0;
        while i < es.len() {
            let e = &es[i];
            let next = es.get(i + 1);
            let prev_home = i.checked_sub(1).map(|p| es[p].home.clone());
            match (e.how, e.state) {
                (Transition::Freeze, _) => {
                    let mut op = Operation::new(OpKind::Planned, e.at_ms, vec![shard], &e.home);
                    let mut used = 1;
                    match next {
                        Some(n) if n.how == Transition::Flip => {
                            op.to = Some(n.home.clone());
                            op.outcome = OpOutcome::Done;
                            op.ended_at_ms = Some(n.at_ms);
                            op.hold_ms = Some(n.at_ms.saturating_sub(e.at_ms));
                            used = 2;
                        }
                        Some(n) if n.how == Transition::Rollback => {
                            op.outcome = OpOutcome::RolledBack;
                            op.ended_at_ms = Some(n.at_ms);
                            op.hold_ms = Some(n.at_ms.saturating_sub(e.at_ms));
                            used = 2;
                        }
                        Some(n) if n.how == Transition::Forced => {
                            op.outcome = OpOutcome::Superseded;
                            op.detail = Some("superseded by a forced failover".into());
                            op.ended_at_ms = Some(n.at_ms);
                        }
                        Some(_) => op.outcome = OpOutcome::Unknown,
                        None => {
                            op.outcome = OpOutcome::InProgress;
                            op.step = Some("frozen".into());
                        }
                    }
                    planned.push(((shard, e.epoch.saturating_sub(1)), op));
                    i += used;
                }
                (Transition::Forced, ShardState::Frozen) => {
                    let open_ms = next
                        .filter(|n| {
                            n.how == Transition::Forced
                                && n.state == ShardState::Active
                                && n.home == e.home
                        })
                        .map(|n| n.at_ms);
                    moves.push(ForcedMove {
                        shard,
                        before: e.epoch.saturating_sub(1),
                        from: prev_home.unwrap_or_else(|| "?".into()),
                        to: e.home.clone(),
                        take_ms: e.at_ms,
                        open_ms,
                    });
                    i += if open_ms.is_some() { 2 } else { 1 };
                }
                // Forced failovers from before the two phases: taken active.
                (Transition::Forced, ShardState::Active) => {
                    moves.push(ForcedMove {
                        shard,
                        before: e.epoch.saturating_sub(1),
                        from: prev_home.unwrap_or_else(|| "?".into()),
                        to: e.home.clone(),
                        take_ms: e.at_ms,
                        open_ms: Some(e.at_ms),
                    });
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
    let mut out: Vec<Operation> = Vec::new();
    for r in records {
        let key = (r.switchover.shard, r.switchover.epoch);
        match planned.iter_mut().find(|(k, _)| *k == key) {
            Some((_, op)) => apply_record(op, r),
            None => {
                let started = r
                    .history
                    .first()
                    .map(|m| m.at_ms)
                    .or(r.frozen_at_ms)
                    .unwrap_or(0);
                let mut op = Operation::new(
                    OpKind::Planned,
                    started,
                    vec![r.switchover.shard],
                    &r.switchover.from,
                );
                apply_record(&mut op, r);
                out.push(op);
            }
        }
    }
    out.extend(planned.into_iter().map(|(_, op)| op));
    for f in forced {
        let (mine, rest): (Vec<ForcedMove>, Vec<ForcedMove>) = moves.into_iter().partition(|m| {
            m.from == f.from
                && m.to == f.to
                && f.shards
                    .iter()
                    .any(|&(s, before, _)| s == m.shard && before == m.before)
        });
        moves = rest;
        let mut shards: Vec<ShardId> = f.shards.iter().map(|&(s, _, _)| s).collect();
        shards.sort_unstable();
        shards.dedup();
        let take_start = mine.iter().map(|m| m.take_ms).min();
        let open_end = mine.iter().filter_map(|m| m.open_ms).max();
        let mut op = Operation::new(
            OpKind::Forced,
            take_start.unwrap_or(f.at_ms),
            shards,
            &f.from,
        );
        op.to = Some(f.to.clone());
        op.holder = Some(f.holder.clone());
        op.divergence_lsn = f.divergence_lsn.clone();
        op.detail = f
            .divergence_error
            .as_ref()
            .map(|e| format!("divergence point not read: {e}"));
        op.steps.push(OpStep {
            step: "take".into(),
            what: format!("CAS each shard to home {}, frozen", f.to),
            at_ms: op.started_at_ms,
            took_ms: take_start.map(|t| f.at_ms.saturating_sub(t)),
        });
        if f.opens_at_ms > 0 {
            op.steps.push(OpStep {
                step: "lease_lapse".into(),
                what: format!(
                    "wait for {}'s fence lease to lapse (lease + clock skew)",
                    f.from
                ),
                at_ms: f.at_ms,
                took_ms: Some(f.opens_at_ms.saturating_sub(f.at_ms)),
            });
        }
        if f.opened {
            let at = if f.opens_at_ms > 0 {
                f.opens_at_ms
            } else {
                f.at_ms
            };
            op.steps.push(OpStep {
                step: "open".into(),
                what: format!("CAS each shard active at {}, open its fence", f.to),
                at_ms: at,
                took_ms: open_end.map(|e| e.saturating_sub(at)),
            });
            op.outcome = OpOutcome::Done;
            op.ended_at_ms = open_end.or(Some(at));
            op.open = Some(f.closed_at_ms.is_none());
        } else {
            op.outcome = OpOutcome::InProgress;
            op.step = Some("lease_lapse".into());
            op.open = Some(true);
        }
        op.closed_at_ms = f.closed_at_ms;
        op.closed_by = f.closed_by.clone();
        out.push(op);
    }
    // Forced moves whose record a later forced failover of the site
    // replaced: one operation per site pair and burst of takes.
    moves.sort_by(|a, b| (&a.from, &a.to, a.take_ms).cmp(&(&b.from, &b.to, b.take_ms)));
    let mut groups: Vec<Vec<ForcedMove>> = Vec::new();
    for m in moves {
        match groups.last_mut() {
            Some(g)
                if g[0].from == m.from
                    && g[0].to == m.to
                    && m.take_ms.saturating_sub(g[g.len() - 1].take_ms) <= 60_000 =>
            {
                g.push(m)
            }
            _ => groups.push(vec![m]),
        }
    }
    for g in groups {
        let mut shards: Vec<ShardId> = g.iter().map(|m| m.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        let take = g.iter().map(|m| m.take_ms).min().unwrap_or(0);
        let mut op = Operation::new(OpKind::Forced, take, shards, &g[0].from);
        op.to = Some(g[0].to.clone());
        op.steps.push(OpStep {
            step: "take".into(),
            what: format!("CAS each shard to home {}, frozen", g[0].to),
            at_ms: take,
            took_ms: None,
        });
        if g.iter().all(|m| m.open_ms.is_some()) {
            let first = g.iter().filter_map(|m| m.open_ms).min().unwrap_or(take);
            op.steps.push(OpStep {
                step: "open".into(),
                what: format!("CAS each shard active at {}", g[0].to),
                at_ms: first,
                took_ms: None,
            });
            op.outcome = OpOutcome::Done;
            op.ended_at_ms = g.iter().filter_map(|m| m.open_ms).max();
        }
        op.detail = Some("its record was replaced by a later forced failover of the site".into());
        out.push(op);
    }
    out.sort_by(|a, b| {
        b.started_at_ms
            .cmp(&a.started_at_ms)
            .then_with(|| a.shards.cmp(&b.shards))
    });
    out
}

/// A record set the store could not give.
#[derive(Debug, thiserror::Error)]
#[error("reading {what}")]
pub struct ReadError {
    /// Which: the switchover records, the forced-failover records, the
    /// shards' epoch histories.
    pub what: &'static str,
    #[source]
    pub source: StoreError,
}

/// Every operation the store remembers, newest first ([`build_history`] of
/// the records and epochs it holds). A record that does not parse is left
/// out.
pub async fn read_all<S: TopologyStore>(store: &S) -> Result<Vec<Operation>, ReadError> {
    let records: Vec<Record> = parsed(store, "switchover/", "the switchover records").await?;
    let forced: Vec<ForcedRecord> = parsed(store, "forced/", "the forced-failover records").await?;
    let epochs = store
        .list_ops("epochs/")
        .await
        .map_err(|source| ReadError {
            what: "the shards' epoch histories",
            source,
        })?;
    Ok(build_history(&epochs_by_shard(&epochs), &records, &forced))
}

/// The records under `prefix` that parse as `T`.
async fn parsed<S: TopologyStore, T: serde::de::DeserializeOwned>(
    store: &S,
    prefix: &str,
    what: &'static str,
) -> Result<Vec<T>, ReadError> {
    let raw = store
        .list_ops(prefix)
        .await
        .map_err(|source| ReadError { what, source })?;
    Ok(raw
        .values()
        .filter_map(|b| serde_json::from_slice(b).ok())
        .collect())
}

/// A time (ms since the Unix epoch) as RFC 3339 UTC with milliseconds.
pub fn when(at_ms: u64) -> String {
    if at_ms == 0 {
        return "(time not recorded)".into();
    }
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(at_ms))
        .to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::failover::driver::StepMark;
    use crate::failover::Switchover;

    fn entry(epoch: u64, home: &str, state: ShardState, how: Transition, at_ms: u64) -> EpochEntry {
        EpochEntry {
            epoch,
            home: home.into(),
            state,
            how,
            at_ms,
        }
    }

    fn marks(steps: &[(&str, u64)]) -> Vec<StepMark> {
        steps
            .iter()
            .map(|(s, at)| StepMark {
                step: s.to_string(),
                at_ms: *at,
            })
            .collect()
    }

    fn done_record(shard: ShardId, epoch: u64, base: u64) -> Record {
        let mut sw = Switchover::new(shard, "beijing", "shanghai", epoch);
        sw.step = Step::Done;
        Record {
            switchover: sw,
            holder: "op@host pid 1".into(),
            history: marks(&[
                ("start", base),
                ("frozen", base + 8),
                ("fenced", base + 14),
                ("catching_up", base + 17),
                ("opening", base + 35),
                ("flipping", base + 39),
                ("done", base + 47),
            ]),
            frozen_at_ms: Some(base + 8),
            active_at_ms: Some(base + 47),
            finished: true,
            finished_at_ms: Some(base + 55),
        }
    }

    /// Each step of `op` with how long it took.
    fn step_times(op: &Operation) -> Vec<(&str, Option<u64>)> {
        op.steps
            .iter()
            .map(|s| (s.step.as_str(), s.took_ms))
            .collect()
    }

    /// A forced failover of beijing's shards 1 and 2 to shanghai, opened;
    /// `closed` or not. (The close tests use it too.)
    pub(crate) fn forced_record(closed: bool) -> ForcedRecord {
        ForcedRecord {
            from: "beijing".into(),
            to: "shanghai".into(),
            at_ms: 3_000_010,
            holder: "op@host pid 2".into(),
            shards: vec![(1, 5, 7), (2, 1, 3)],
            divergence_lsn: Some("0/16B3748".into()),
            divergence_error: None,
            opens_at_ms: 3_011_010,
            opened: true,
            closed_at_ms: closed.then_some(3_500_000),
            closed_by: closed.then(|| "op@host pid 3".into()),
        }
    }

    /// Shard 1: a planned switchover to shanghai and back (rolled back),
    /// then forced over; shard 2 forced over with it.
    fn sample() -> (
        BTreeMap<ShardId, Vec<EpochEntry>>,
        Vec<Record>,
        Vec<ForcedRecord>,
    ) {
        use ShardState::{Active, Frozen};
        use Transition::*;
        let mut epochs = BTreeMap::new();
        epochs.insert(
            1,
            vec![
                entry(1, "beijing", Active, Init, 1_000),
                entry(2, "beijing", Frozen, Freeze, 1_000_008),
                entry(3, "shanghai", Active, Flip, 1_000_047),
                entry(4, "shanghai", Frozen, Freeze, 2_000_000),
                entry(5, "shanghai", Active, Rollback, 2_000_900),
                entry(6, "beijing", Frozen, Forced, 3_000_000),
                entry(7, "beijing", Active, Forced, 3_011_020),
            ],
        );
        epochs.insert(
            2,
            vec![
                entry(1, "beijing", Active, Init, 1_000),
                entry(2, "shanghai", Frozen, Forced, 2_990_000),
                entry(3, "shanghai", Active, Forced, 3_001_000),
            ],
        );
        // Shard 1's record is its latest switchover: the rolled-back one.
        let mut sw = Switchover::new(1, "shanghai", "beijing", 3);
        sw.step = Step::RolledBack {
            reason: "timed out after 30s".into(),
        };
        let rolled = Record {
            switchover: sw,
            holder: "op@host pid 9".into(),
            history: marks(&[
                ("start", 1_999_990),
                ("frozen", 2_000_000),
                ("rolling_back", 2_000_800),
                ("rolled_back", 2_000_900),
            ]),
            frozen_at_ms: Some(2_000_000),
            active_at_ms: Some(2_000_900),
            finished: true,
            finished_at_ms: None,
        };
        // The forced record is from shanghai's point of view here.
        let mut f = forced_record(false);
        f.from = "shanghai".into();
        f.to = "beijing".into();
        f.shards = vec![(1, 5, 7)];
        (epochs, vec![rolled], vec![f])
    }

    #[test]
    fn history_joins_epochs_and_records() {
        let (epochs, records, forced) = sample();
        let ops = build_history(&epochs, &records, &forced);
        // Newest first: the forced failover of shanghai (shard 1), shard 2's
        // forced move of beijing (record replaced), the rollback, the flip.
        assert_eq!(ops.len(), 4, "{ops:#?}");
        assert_eq!(ops[0].kind, OpKind::Forced);
        assert_eq!(ops[0].shards, vec![1]);
        assert_eq!(
            (ops[0].from.as_str(), ops[0].to.as_deref()),
            ("shanghai", Some("beijing"))
        );
        assert_eq!(ops[0].outcome, OpOutcome::Done);
        assert_eq!(ops[0].open, Some(true));
        assert_eq!(
            step_times(&ops[0]),
            vec![
                ("take", Some(10)),
                ("lease_lapse", Some(11_000)),
                ("open", Some(10))
            ]
        );
        assert_eq!(ops[1].kind, OpKind::Forced);
        assert_eq!(ops[1].shards, vec![2]);
        assert_eq!(ops[1].from, "beijing");
        assert!(ops[1].detail.as_deref().unwrap_or("").contains("replaced"));
        // The rollback: its target from the record, its reason, its steps.
        assert_eq!(ops[2].kind, OpKind::Planned);
        assert_eq!(ops[2].outcome, OpOutcome::RolledBack);
        assert_eq!(ops[2].to.as_deref(), Some("beijing"));
        assert_eq!(ops[2].detail.as_deref(), Some("timed out after 30s"));
        assert_eq!(ops[2].started_at_ms, 1_999_990);
        assert_eq!(ops[2].hold_ms, Some(900));
        let took: Vec<Option<u64>> = ops[2].steps.iter().map(|s| s.took_ms).collect();
        // The record's end was not kept (an older record): the last step's
        // duration is unknown.
        assert_eq!(took, vec![Some(10), Some(800), Some(100), None]);
        // The first switchover, from its epochs alone.
        assert_eq!(ops[3].outcome, OpOutcome::Done);
        assert_eq!(ops[3].to.as_deref(), Some("shanghai"));
        assert_eq!(ops[3].hold_ms, Some(39));
        assert!(ops[3].steps.is_empty());
    }

    #[test]
    fn a_record_without_epochs_and_one_in_progress_are_listed() {
        let mut r = done_record(4, 1, 5_000);
        let mut epochs = BTreeMap::new();
        let ops = build_history(&epochs, std::slice::from_ref(&r), &[]);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].outcome, OpOutcome::Done);
        assert_eq!(ops[0].ended_at_ms, Some(5_055));
        let last = ops[0].steps.last().unwrap();
        assert_eq!((last.step.as_str(), last.took_ms), ("done", Some(8)));
        // In progress: frozen, catching up.
        r.switchover.step = Step::CatchingUp {
            marker_lsn: "0/1".into(),
        };
        r.history.truncate(4);
        r.finished = false;
        r.finished_at_ms = None;
        r.active_at_ms = None;
        epochs.insert(
            4,
            vec![entry(
                2,
                "beijing",
                ShardState::Frozen,
                Transition::Freeze,
                5_008,
            )],
        );
        let ops = build_history(&epochs, &[r], &[]);
        assert_eq!(ops.len(), 1, "{ops:#?}");
        assert_eq!(ops[0].outcome, OpOutcome::InProgress);
        assert_eq!(ops[0].step.as_deref(), Some("catching_up"));
        // The step it is at, still running: no duration yet.
        let at = ops[0].steps.last().unwrap();
        assert_eq!(
            (at.step.as_str(), at.at_ms, at.took_ms),
            ("catching_up", 5_017, None)
        );
        assert_eq!(
            at.what,
            "wait for link beijing->shanghai to apply the marker"
        );
    }

    #[test]
    fn a_switchovers_steps_last_until_the_next_and_a_forced_record_says_if_it_is_open() {
        let epochs = BTreeMap::new();
        let ops = build_history(
            &epochs,
            &[done_record(3, 1, 1_764_000_000_000)],
            &[forced_record(false)],
        );
        // Newest first: the switchover (2025) before the forced failover.
        assert_eq!(ops.len(), 2, "{ops:#?}");
        let planned = &ops[0];
        assert_eq!(planned.kind, OpKind::Planned);
        assert_eq!(planned.holder.as_deref(), Some("op@host pid 1"));
        assert_eq!(
            (planned.started_at_ms, planned.ended_at_ms),
            (1_764_000_000_000, Some(1_764_000_000_055))
        );
        assert_eq!(planned.hold_ms, Some(39));
        assert_eq!(
            step_times(planned),
            vec![
                ("start", Some(8)),
                ("frozen", Some(6)),
                ("fenced", Some(3)),
                ("catching_up", Some(18)),
                ("opening", Some(4)),
                ("flipping", Some(8)),
                ("done", Some(8)),
            ]
        );
        assert_eq!(planned.steps[0].what, "freeze at beijing (CAS frozen)");
        assert_eq!(planned.steps[6].what, "confirm shanghai's fence is open");
        let forced = &ops[1];
        assert_eq!(forced.kind, OpKind::Forced);
        assert_eq!(forced.shards, vec![1, 2]);
        assert_eq!(forced.outcome, OpOutcome::Done);
        assert_eq!(forced.divergence_lsn.as_deref(), Some("0/16B3748"));
        assert_eq!(forced.open, Some(true));
        let closed = build_history(&epochs, &[], &[forced_record(true)]);
        assert_eq!(closed[0].closed_at_ms, Some(3_500_000));
        assert_eq!(closed[0].closed_by.as_deref(), Some("op@host pid 3"));
        assert_eq!(closed[0].open, Some(false));
        // JSON carries the same.
        let v = serde_json::to_value(&ops).unwrap();
        assert_eq!(v[0]["kind"], "planned");
        assert_eq!(v[0]["steps"][0]["took_ms"], 8);
        assert_eq!(v[1]["kind"], "forced");
        assert_eq!(v[1]["outcome"], "done");
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(when(1_764_000_000_000), "2025-11-24T16:00:00.000Z");
        assert_eq!(when(0), "(time not recorded)");
    }

    #[tokio::test]
    async fn every_record_set_is_read_from_the_store() {
        let (_dir, store) = crate::failover::driver::tests::setup().await;
        let r = done_record(1, 1, 5_000);
        store
            .write_op("switchover/1", &serde_json::to_vec(&r).unwrap())
            .await
            .unwrap();
        store.write_op("switchover/2", b"not json").await.unwrap();
        store
            .write_op(
                &super::super::driver::forced_name("beijing"),
                &serde_json::to_vec(&forced_record(false)).unwrap(),
            )
            .await
            .unwrap();
        let ops = read_all(&store).await.unwrap();
        let kinds: Vec<OpKind> = ops.iter().map(|o| o.kind).collect();
        assert_eq!(kinds, vec![OpKind::Forced, OpKind::Planned], "{ops:#?}");
    }

    #[test]
    fn epoch_names_give_the_shard() {
        let mut raw = BTreeMap::new();
        let e = entry(3, "a", ShardState::Active, Transition::Flip, 1);
        raw.insert(
            crate::history::entry_name(12, 3),
            serde_json::to_vec(&e).unwrap(),
        );
        raw.insert("epochs/x/1".into(), b"{}".to_vec());
        raw.insert("epochs/5/00000000000000000001".into(), b"not json".to_vec());
        let by = epochs_by_shard(&raw);
        assert_eq!(by.len(), 1);
        assert_eq!(by[&12], vec![e]);
    }
}
