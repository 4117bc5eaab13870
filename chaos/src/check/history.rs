//! The client history the checker judges the data by: every request the
//! workload sent (creates and PATCHes), when it ran and what came of it.
//!
//! It is the checker's own type, not the workload's (`ezone-orders`): the
//! checker reads a history, whoever wrote it; the binary converts the
//! workload's outcomes (`ezone/src/cmd/scenario.rs`, `ops`).
//!
//! A request's **result** is what the client can be sure of:
//! - [`OpResult::Acked`]: a 2xx. The write happened, at some time between
//!   [`Op::invoke`] and [`Op::complete`].
//! - [`OpResult::Refused`]: every attempt was answered with a refusal that
//!   says nothing was applied (a 4xx, the fence's 503, a refused
//!   connection). The write did not happen.
//! - [`OpResult::InDoubt`]: not acknowledged, but some attempt's fate is
//!   unknown (no answer, a 502/504, a lost COMMIT answer). The write may
//!   have happened, at any time after `invoke`, even after `complete`:
//!   a router or an order service may still hold it.
//!
//! An acknowledged request may have had such an attempt too
//! ([`OpResult::Acked::may_land_later`]): its write happened by `complete`,
//! and that abandoned attempt may apply it *again* later. For a create that
//! changes nothing (an insert of an existing id does nothing); for a PATCH
//! it may set its status again after a later PATCH.

use std::collections::BTreeSet;
use std::time::Duration;

use super::AckedWrite;

/// The status the order service gives a new order (`public.orders.status`
/// default, docs/orders.md).
pub const INITIAL_STATUS: &str = "placed";

/// One request of the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The order's id.
    pub id: String,
    /// Its city (the shard key).
    pub city: String,
    pub kind: OpKind,
    /// The first attempt, from the run's start.
    pub invoke: Duration,
    /// The final answer (or giving up), from the run's start.
    pub complete: Duration,
    pub result: OpResult,
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// `POST /orders` with these values.
    Create {
        user: String,
        item: String,
        amount_cents: i64,
    },
    /// `PATCH /orders/{id}` setting this status.
    Patch { status: String },
}

/// What the client can be sure of (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpResult {
    /// A 2xx. `may_land_later`: an earlier attempt's fate is unknown, so it
    /// may apply the same write again after `complete`.
    Acked { may_land_later: bool },
    /// Refused for good: nothing was applied.
    Refused,
    /// Neither: it may have been applied, at any time after `invoke`.
    InDoubt,
}

impl OpResult {
    /// An acknowledgement whose every attempt's fate is known.
    pub const ACKED: OpResult = OpResult::Acked {
        may_land_later: false,
    };

    pub fn is_acked(self) -> bool {
        matches!(self, OpResult::Acked { .. })
    }

    /// Whether the write may (still) take effect at any time after the
    /// request was invoked, whatever came after it.
    pub fn may_land_any_time(self) -> bool {
        matches!(
            self,
            OpResult::InDoubt
                | OpResult::Acked {
                    may_land_later: true
                }
        )
    }

    /// `acked`, `acked, an attempt may land later`, `refused`, `in doubt`.
    pub fn describe(self) -> &'static str {
        match self {
            OpResult::Acked {
                may_land_later: false,
            } => "acked",
            OpResult::Acked {
                may_land_later: true,
            } => "acked, an attempt may land later",
            OpResult::Refused => "refused",
            OpResult::InDoubt => "in doubt",
        }
    }
}

impl Op {
    /// An acknowledged create of `w` (invoked and completed at time 0): the
    /// history of a caller that knows only its acknowledged creates.
    pub fn acked_create(w: &AckedWrite) -> Op {
        Op {
            id: w.id.clone(),
            city: w.city.clone(),
            kind: OpKind::Create {
                user: w.user_id.clone(),
                item: w.item.clone(),
                amount_cents: w.amount_cents,
            },
            invoke: Duration::ZERO,
            complete: Duration::ZERO,
            result: OpResult::ACKED,
        }
    }

    pub fn is_create(&self) -> bool {
        matches!(self.kind, OpKind::Create { .. })
    }

    /// The status a PATCH sets.
    pub fn patch_status(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Patch { status } => Some(status),
            OpKind::Create { .. } => None,
        }
    }

    /// The write a create sent, as a lost-write check wants it (status
    /// unchecked); `None` for a PATCH.
    pub fn create_write(&self) -> Option<AckedWrite> {
        match &self.kind {
            OpKind::Create {
                user,
                item,
                amount_cents,
            } => Some(AckedWrite {
                id: self.id.clone(),
                city: self.city.clone(),
                user_id: user.clone(),
                item: item.clone(),
                amount_cents: *amount_cents,
                status: None,
            }),
            OpKind::Patch { .. } => None,
        }
    }
}

/// The acknowledged creates of a history, once per id and value: what
/// [`super::lost_writes`] checks.
pub fn acked_writes(ops: &[Op]) -> Vec<AckedWrite> {
    let mut seen: BTreeSet<(String, String, String, String, i64)> = BTreeSet::new();
    ops.iter()
        .filter(|o| o.result.is_acked())
        .filter_map(Op::create_write)
        .filter(|w| {
            seen.insert((
                w.id.clone(),
                w.city.clone(),
                w.user_id.clone(),
                w.item.clone(),
                w.amount_cents,
            ))
        })
        .collect()
}

/// How many requests of each kind a history holds (for the report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryCounts {
    pub creates: usize,
    pub patches: usize,
    pub acked: usize,
    pub refused: usize,
    pub in_doubt: usize,
}

impl HistoryCounts {
    pub fn of(ops: &[Op]) -> HistoryCounts {
        let mut c = HistoryCounts::default();
        for o in ops {
            if o.is_create() {
                c.creates += 1;
            } else {
                c.patches += 1;
            }
            match o.result {
                OpResult::Acked { .. } => c.acked += 1,
                OpResult::Refused => c.refused += 1,
                OpResult::InDoubt => c.in_doubt += 1,
            }
        }
        c
    }
}

/// Milliseconds, for the reports.
pub(super) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{acked, create, patch};
    use super::*;

    #[test]
    fn acked_creates_become_acked_writes_once() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            // A second acknowledgement of the same create adds nothing.
            create("a", 20, 30, OpResult::ACKED),
            create("b", 0, 10, OpResult::InDoubt),
            create("c", 0, 10, OpResult::Refused),
            patch("a", "cooking", 40, 50, OpResult::ACKED),
        ];
        assert_eq!(acked_writes(&ops), vec![acked("a", "010")]);
        let c = HistoryCounts::of(&ops);
        assert_eq!(
            (c.creates, c.patches, c.acked, c.refused, c.in_doubt),
            (4, 1, 3, 1, 1)
        );
    }

    #[test]
    fn an_acked_write_is_a_history_of_one_create() {
        let w = acked("a", "010");
        let op = Op::acked_create(&w);
        assert_eq!(op.create_write(), Some(w));
        assert!(op.result.is_acked() && !op.result.may_land_any_time());
        assert!(OpResult::InDoubt.may_land_any_time());
        assert!(OpResult::Acked {
            may_land_later: true
        }
        .may_land_any_time());
        assert!(!OpResult::Refused.may_land_any_time());
    }
}
