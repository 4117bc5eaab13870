//! The register check: an order's status is a register that PATCHes write,
//! and the status it ends with at every site must be one the history
//! allows.
//!
//! The final status is read after every request has ended, so it must be
//! the value of a write that may come last in some order of the writes
//! consistent with real time:
//! - an **acknowledged PATCH** `w`, unless another acknowledged PATCH `v`
//!   of the order was invoked after `w` completed (then `v` took effect
//!   after `w`) and sets another status: `w` is superseded;
//! - a PATCH **in doubt**, or acknowledged with an attempt of unknown fate:
//!   it may take effect at any time after it was invoked, even after every
//!   other write, so nothing supersedes it;
//! - the **initial status** ([`INITIAL_STATUS`]), only while no PATCH of
//!   the order was acknowledged: an acknowledged PATCH is durable, and a
//!   create's insert never overwrites a row.
//!
//! Refused PATCHes set nothing. Orders the history does not know are the
//! unexpected-row check's ([`super::unexpected`]); rows missing at a site,
//! the lost-write check's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::history::ms;
use super::lost::text;
use super::{Op, OpResult, RowsBySite, INITIAL_STATUS};

/// A PATCH of the order, as a [`RegisterViolation`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchSeen {
    pub status: String,
    pub invoke: Duration,
    pub complete: Duration,
    pub result: OpResult,
}

impl fmt::Display for PatchSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} {}..{} ms",
            self.status,
            self.result.describe(),
            ms(self.invoke),
            ms(self.complete)
        )
    }
}

/// An order whose status at a site is none the history allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterViolation {
    pub id: String,
    pub site: String,
    /// The row's status (`None`: NULL).
    pub found: Option<String>,
    /// The statuses the history allows, sorted.
    pub allowed: Vec<String>,
    /// Every PATCH of the order, in order of invocation.
    pub patches: Vec<PatchSeen>,
}

impl fmt::Display for RegisterViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<String> = self.allowed.iter().map(|s| format!("{s:?}")).collect();
        write!(
            f,
            "order {:?} at {} has status {}, but the history allows only {}",
            self.id,
            self.site,
            text(self.found.as_deref()),
            allowed.join(" or ")
        )?;
        if self.patches.is_empty() {
            return write!(f, " (no PATCH was sent)");
        }
        let patches: Vec<String> = self.patches.iter().map(|p| p.to_string()).collect();
        write!(f, " (PATCHes: {})", patches.join("; "))
    }
}

/// The statuses an order may end with, given its requests (module docs).
pub fn allowed_statuses(ops: &[&Op]) -> BTreeSet<String> {
    let patches: Vec<(&Op, &str)> = ops
        .iter()
        .filter_map(|o| o.patch_status().map(|s| (*o, s)))
        .collect();
    let acked: Vec<(&Op, &str)> = patches
        .iter()
        .copied()
        .filter(|(o, _)| o.result.is_acked())
        .collect();
    let mut allowed = BTreeSet::new();
    if acked.is_empty() {
        allowed.insert(INITIAL_STATUS.to_string());
    }
    for (w, status) in &patches {
        let candidate = match w.result {
            OpResult::Refused => false,
            r if r.may_land_any_time() => true,
            _ => !acked
                .iter()
                .any(|(v, other)| v.invoke > w.complete && other != status),
        };
        if candidate {
            allowed.insert(status.to_string());
        }
    }
    allowed
}

/// Every row, at every site, whose status the history does not allow.
/// Only orders the history holds a request of are judged.
pub fn register_violations(ops: &[Op], rows_by_site: &RowsBySite) -> Vec<RegisterViolation> {
    let mut by_id: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in ops {
        by_id.entry(o.id.as_str()).or_default().push(o);
    }
    let allowed: BTreeMap<&str, BTreeSet<String>> = by_id
        .iter()
        .map(|(id, ops)| (*id, allowed_statuses(ops)))
        .collect();
    let mut found = Vec::new();
    for (site, rows) in rows_by_site {
        for row in rows {
            let Some(ok) = allowed.get(row.id.as_str()) else {
                continue;
            };
            if row.status.as_ref().is_some_and(|s| ok.contains(s)) {
                continue;
            }
            let mut patches: Vec<PatchSeen> = by_id
                .get(row.id.as_str())
                .into_iter()
                .flatten()
                .filter_map(|o| {
                    o.patch_status().map(|s| PatchSeen {
                        status: s.to_string(),
                        invoke: o.invoke,
                        complete: o.complete,
                        result: o.result,
                    })
                })
                .collect();
            patches.sort_by_key(|p| (p.invoke, p.complete));
            found.push(RegisterViolation {
                id: row.id.clone(),
                site: site.clone(),
                found: row.status.clone(),
                allowed: ok.iter().cloned().collect(),
                patches,
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{both_sites, create, patch, row};
    use super::*;
    use crate::check::OrderRow;

    const MAYBE_AGAIN: OpResult = OpResult::Acked {
        may_land_later: true,
    };

    /// Order "a" with `status` at beijing and shanghai.
    fn rows_with(status: &str) -> RowsBySite {
        let mut r: OrderRow = row("a", "010", 1, 1, "beijing");
        r.status = Some(status.to_string());
        both_sites(vec![r])
    }

    fn allowed(ops: &[Op]) -> Vec<String> {
        let refs: Vec<&Op> = ops.iter().collect();
        allowed_statuses(&refs).into_iter().collect()
    }

    #[test]
    fn the_last_acknowledged_patch_is_the_final_status() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::ACKED),
            patch("a", "delivered", 50, 60, OpResult::ACKED),
        ];
        assert_eq!(allowed(&ops), vec!["delivered"]);
        assert!(register_violations(&ops, &rows_with("delivered")).is_empty());
    }

    #[test]
    fn a_status_older_than_a_later_acknowledged_patch_is_a_violation() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::ACKED),
            patch("a", "delivered", 50, 60, OpResult::ACKED),
        ];
        let mut rows = rows_with("delivered");
        rows.get_mut("shanghai").expect("site")[0].status = Some("cooking".to_string());
        let found = register_violations(&ops, &rows);
        assert_eq!(found.len(), 1, "{found:?}");
        let v = &found[0];
        assert_eq!((v.id.as_str(), v.site.as_str()), ("a", "shanghai"));
        assert_eq!(v.found.as_deref(), Some("cooking"));
        assert_eq!(v.allowed, vec!["delivered"]);
        assert_eq!(
            v.to_string(),
            "order \"a\" at shanghai has status \"cooking\", but the history allows only \
             \"delivered\" (PATCHes: \"cooking\" acked 20.0..30.0 ms; \"delivered\" acked 50.0..60.0 ms)"
        );
    }

    #[test]
    fn a_patch_in_flight_may_be_the_final_status() {
        // "cooking" was in doubt: it may have landed after "delivered".
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::InDoubt),
            patch("a", "delivered", 50, 60, OpResult::ACKED),
        ];
        assert_eq!(allowed(&ops), vec!["cooking", "delivered"]);
        assert!(register_violations(&ops, &rows_with("cooking")).is_empty());
        // The same when it was acknowledged, but an earlier attempt of it
        // went unanswered: that attempt may land after "delivered".
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, MAYBE_AGAIN),
            patch("a", "delivered", 50, 60, OpResult::ACKED),
        ];
        assert!(register_violations(&ops, &rows_with("cooking")).is_empty());
        // A refused PATCH sets nothing.
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::ACKED),
            patch("a", "cancelled", 40, 45, OpResult::Refused),
        ];
        let found = register_violations(&ops, &rows_with("cancelled"));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0]
                .to_string()
                .contains("\"cancelled\" refused 40.0..45.0 ms"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn concurrent_acknowledged_patches_may_either_win() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 60, OpResult::ACKED),
            patch("a", "cancelled", 30, 50, OpResult::ACKED),
        ];
        assert_eq!(allowed(&ops), vec!["cancelled", "cooking"]);
        for status in ["cooking", "cancelled"] {
            assert!(register_violations(&ops, &rows_with(status)).is_empty());
        }
        let found = register_violations(&ops, &rows_with("placed"));
        assert_eq!(found.len(), 2);
        assert!(
            found[0]
                .to_string()
                .contains("allows only \"cancelled\" or \"cooking\""),
            "{}",
            found[0]
        );
    }

    #[test]
    fn the_initial_status_after_an_acknowledged_patch_is_a_violation() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::ACKED),
        ];
        let mut rows = rows_with("cooking");
        rows.get_mut("beijing").expect("site")[0].status = Some(INITIAL_STATUS.to_string());
        let found = register_violations(&ops, &rows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "order \"a\" at beijing has status \"placed\", but the history allows only \
             \"cooking\" (PATCHes: \"cooking\" acked 20.0..30.0 ms)"
        );
    }

    #[test]
    fn without_an_acknowledged_patch_the_initial_status_stays_allowed() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::InDoubt),
        ];
        assert_eq!(allowed(&ops), vec!["cooking", "placed"]);
        // No PATCH at all: only the initial status.
        let ops = vec![create("a", 0, 10, OpResult::ACKED)];
        let found = register_violations(&ops, &rows_with("delivered"));
        assert_eq!(found.len(), 2);
        assert_eq!(
            found[0].to_string(),
            "order \"a\" at beijing has status \"delivered\", but the history allows only \
             \"placed\" (no PATCH was sent)"
        );
        // A NULL status is never allowed.
        let mut rows = rows_with("placed");
        rows.get_mut("shanghai").expect("site")[0].status = None;
        let found = register_violations(&ops, &rows);
        assert_eq!(found.len(), 1);
        assert!(
            found[0].to_string().contains("has status NULL"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_superseding_patch_of_the_same_status_keeps_it_allowed() {
        let ops = vec![
            create("a", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 20, 30, OpResult::ACKED),
            patch("a", "cooking", 50, 60, OpResult::ACKED),
        ];
        assert_eq!(allowed(&ops), vec!["cooking"]);
    }

    #[test]
    fn orders_outside_the_history_are_not_judged_here() {
        let ops = vec![create("b", 0, 10, OpResult::ACKED)];
        assert!(register_violations(&ops, &rows_with("anything")).is_empty());
    }
}
