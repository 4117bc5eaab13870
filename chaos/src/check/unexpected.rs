//! Unexpected rows: a row whose order was never acknowledged.
//!
//! A row may exist without an acknowledgement only when some create of its
//! id is in doubt (its answer was lost: it may have been applied). Such
//! rows are allowed and counted, and must still hold the values that create
//! sent. A row whose id no create in the history carries, or whose every
//! create was refused for good, was written by nobody the clients know of:
//! a violation (a replayed, invented or resurrected write).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::lost::{difference, LostProblem};
use super::{Op, OpResult, RowsBySite};

/// A row that should not exist at a site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpected {
    pub id: String,
    pub site: String,
    pub why: UnexpectedWhy,
}

/// Why an [`Unexpected`] row should not exist (or not so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnexpectedWhy {
    /// No create of this id is in the history.
    NeverSent,
    /// Every create of this id (`creates` of them) was refused for good.
    Refused { creates: usize },
    /// A create of this id is in doubt, so the row may exist, but it holds
    /// another value in `field` than that create sent.
    Differs {
        field: &'static str,
        sent: String,
        found: String,
    },
}

impl fmt::Display for Unexpected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (id, site) = (&self.id, &self.site);
        match &self.why {
            UnexpectedWhy::NeverSent => write!(
                f,
                "order {id:?} exists at {site}, but no create of it was ever sent"
            ),
            UnexpectedWhy::Refused { creates } => write!(
                f,
                "order {id:?} exists at {site}, but its {creates} create(s) were all refused for good"
            ),
            UnexpectedWhy::Differs { field, sent, found } => write!(
                f,
                "order {id:?} at {site} (never acknowledged, its create in doubt) has {field} = {found}, sent as {sent}"
            ),
        }
    }
}

/// Rows whose id was never acknowledged by a create: how many distinct
/// orders are allowed (a create of theirs was in doubt, and the row holds
/// what it sent), and the violations, per row and site.
pub fn unexpected_rows(ops: &[Op], rows_by_site: &RowsBySite) -> (usize, Vec<Unexpected>) {
    let mut creates: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for o in ops.iter().filter(|o| o.is_create()) {
        creates.entry(o.id.as_str()).or_default().push(o);
    }
    let mut allowed: BTreeSet<&str> = BTreeSet::new();
    let mut found = Vec::new();
    for (site, rows) in rows_by_site {
        for row in rows {
            let of_id = creates.get(row.id.as_str()).map_or(&[][..], Vec::as_slice);
            if of_id.iter().any(|o| o.result.is_acked()) {
                continue;
            }
            let in_doubt: Vec<&Op> = of_id
                .iter()
                .copied()
                .filter(|o| o.result == OpResult::InDoubt)
                .collect();
            let why = if of_id.is_empty() {
                Some(UnexpectedWhy::NeverSent)
            } else if in_doubt.is_empty() {
                Some(UnexpectedWhy::Refused {
                    creates: of_id.len(),
                })
            } else {
                // Allowed when it holds what one of the doubtful creates sent.
                let problems: Vec<LostProblem> = in_doubt
                    .iter()
                    .filter_map(|o| o.create_write())
                    .filter_map(|w| difference(&w, row))
                    .collect();
                if problems.len() < in_doubt.len() {
                    allowed.insert(row.id.as_str());
                    None
                } else {
                    problems.into_iter().next().map(|p| match p {
                        LostProblem::Differs {
                            field,
                            expected,
                            found,
                        } => UnexpectedWhy::Differs {
                            field,
                            sent: expected,
                            found,
                        },
                        // A row is at hand: difference() never says missing.
                        LostProblem::Missing => UnexpectedWhy::NeverSent,
                    })
                }
            };
            if let Some(why) = why {
                found.push(Unexpected {
                    id: row.id.clone(),
                    site: site.clone(),
                    why,
                });
            }
        }
    }
    (allowed.len(), found)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{both_sites, create, patch, row};
    use super::*;

    fn rows() -> RowsBySite {
        both_sites(vec![row("a", "010", 1, 1, "beijing")])
    }

    #[test]
    fn an_acknowledged_order_is_expected() {
        let ops = vec![
            create("a", 0, 10, OpResult::Refused),
            create("a", 20, 30, OpResult::ACKED),
        ];
        assert_eq!(unexpected_rows(&ops, &rows()), (0, vec![]));
    }

    #[test]
    fn a_row_never_sent_is_a_violation() {
        // Only a PATCH of "a" was sent (a PATCH cannot create an order).
        let ops = vec![
            create("b", 0, 10, OpResult::ACKED),
            patch("a", "cooking", 0, 10, OpResult::Refused),
        ];
        let (allowed, found) = unexpected_rows(&ops, &rows());
        assert_eq!(allowed, 0);
        assert_eq!(found.len(), 2, "at both sites: {found:?}");
        assert_eq!(found[0].why, UnexpectedWhy::NeverSent);
        assert_eq!(
            found[0].to_string(),
            "order \"a\" exists at beijing, but no create of it was ever sent"
        );
        assert_eq!(found[1].site, "shanghai");
    }

    #[test]
    fn a_row_of_a_refused_create_is_a_violation() {
        let ops = vec![
            create("a", 0, 10, OpResult::Refused),
            create("a", 20, 30, OpResult::Refused),
        ];
        let (allowed, found) = unexpected_rows(&ops, &rows());
        assert_eq!(allowed, 0);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].why, UnexpectedWhy::Refused { creates: 2 });
        assert_eq!(
            found[0].to_string(),
            "order \"a\" exists at beijing, but its 2 create(s) were all refused for good"
        );
    }

    #[test]
    fn a_row_of_a_create_in_doubt_is_allowed_and_counted() {
        let ops = vec![
            create("a", 0, 10, OpResult::Refused),
            create("a", 20, 30, OpResult::InDoubt),
        ];
        // One order at two sites counts once.
        assert_eq!(unexpected_rows(&ops, &rows()), (1, vec![]));
        // Not being there is fine too.
        assert_eq!(unexpected_rows(&ops, &both_sites(vec![])), (0, vec![]));
    }

    #[test]
    fn a_row_in_doubt_must_hold_what_was_sent() {
        let ops = vec![create("a", 0, 10, OpResult::InDoubt)];
        let mut rows = rows();
        rows.get_mut("shanghai").expect("site")[0].item = Some("rice".to_string());
        let (allowed, found) = unexpected_rows(&ops, &rows);
        assert_eq!(allowed, 1, "beijing's copy is fine");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "order \"a\" at shanghai (never acknowledged, its create in doubt) has item = \"rice\", sent as \"tea\""
        );
    }
}
