//! No acknowledged write is lost: every create a client got a 2xx for is
//! at every site, with the values it was acknowledged with.
//!
//! The status is left to the register check ([`super::register`]) when the
//! whole history is known: which status a row may end with depends on
//! every PATCH and when it ran, not on one acknowledged write.

use std::collections::HashMap;
use std::fmt;

use super::{OrderRow, RowsBySite};

/// A write a client got a 2xx for, and the value it must have everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedWrite {
    pub id: String,
    pub city: String,
    pub user_id: String,
    pub item: String,
    pub amount_cents: i64,
    /// The status the row must have; `None` (the usual case) leaves the
    /// status unchecked here. Set it only when no other PATCH of the order
    /// can have run after this one; otherwise give the history and let the
    /// register check judge the status.
    pub status: Option<String>,
}

impl AckedWrite {
    /// The write acknowledged by an order service's answer to a create: its
    /// row JSON (`{"id","city","user","item","amount_cents",...}`,
    /// docs/orders.md). The status is not checked (a later PATCH may change
    /// it). `None` when a field is missing or has the wrong type.
    pub fn from_row_json(row: &serde_json::Value) -> Option<AckedWrite> {
        let text = |k: &str| row.get(k)?.as_str().map(str::to_string);
        Some(AckedWrite {
            id: text("id")?,
            city: text("city")?,
            user_id: text("user")?,
            item: text("item")?,
            amount_cents: row.get("amount_cents")?.as_i64()?,
            status: None,
        })
    }
}

/// An acknowledged write that is not at a site as acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub id: String,
    pub site: String,
    pub problem: LostProblem,
}

/// What is wrong with a [`Lost`] write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostProblem {
    /// No row with the id.
    Missing,
    /// The row is there with another value in `field`.
    Differs {
        field: &'static str,
        expected: String,
        found: String,
    },
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            LostProblem::Missing => write!(f, "order {:?} is missing at {}", self.id, self.site),
            LostProblem::Differs {
                field,
                expected,
                found,
            } => write!(
                f,
                "order {:?} at {} has {field} = {found}, acknowledged as {expected}",
                self.id, self.site
            ),
        }
    }
}

/// Every acknowledged write that is not present, with its value, at every
/// site of `rows_by_site`. A write is checked field by field (city, user,
/// item, amount, and status when [`AckedWrite::status`] is set).
pub fn lost_writes(acked: &[AckedWrite], rows_by_site: &RowsBySite) -> Vec<Lost> {
    let mut lost = Vec::new();
    for (site, rows) in rows_by_site {
        let by_id: HashMap<&str, &OrderRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        for w in acked {
            let Some(row) = by_id.get(w.id.as_str()) else {
                lost.push(Lost {
                    id: w.id.clone(),
                    site: site.clone(),
                    problem: LostProblem::Missing,
                });
                continue;
            };
            if let Some(problem) = difference(w, row) {
                lost.push(Lost {
                    id: w.id.clone(),
                    site: site.clone(),
                    problem,
                });
            }
        }
    }
    lost
}

/// A column's value as the reports print it: quoted text, or `NULL`.
pub(super) fn text(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("{s:?}"),
        None => "NULL".to_string(),
    }
}

/// The first field in which `row` differs from the write (as
/// `LostProblem::Differs`).
pub(super) fn difference(w: &AckedWrite, row: &OrderRow) -> Option<LostProblem> {
    let mut checks: Vec<(&'static str, String, String)> = vec![
        ("city", text(Some(&w.city)), text(row.city.as_deref())),
        (
            "user_id",
            text(Some(&w.user_id)),
            text(row.user_id.as_deref()),
        ),
        ("item", text(Some(&w.item)), text(row.item.as_deref())),
        (
            "amount_cents",
            w.amount_cents.to_string(),
            row.amount_cents
                .map_or_else(|| "NULL".to_string(), |a| a.to_string()),
        ),
    ];
    if let Some(status) = &w.status {
        checks.push(("status", text(Some(status)), text(row.status.as_deref())));
    }
    checks
        .into_iter()
        .find(|(_, expected, found)| expected != found)
        .map(|(field, expected, found)| LostProblem::Differs {
            field,
            expected,
            found,
        })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{acked, both_sites, clean};
    use super::*;

    #[test]
    fn a_missing_write_is_lost_at_that_site_only() {
        let (acked, mut rows) = clean();
        rows.get_mut("shanghai")
            .expect("site")
            .retain(|r| r.id != "a");
        let lost = lost_writes(&acked, &rows);
        assert_eq!(
            lost,
            vec![Lost {
                id: "a".to_string(),
                site: "shanghai".to_string(),
                problem: LostProblem::Missing,
            }]
        );
        assert_eq!(lost[0].to_string(), "order \"a\" is missing at shanghai");
    }

    #[test]
    fn a_changed_value_is_lost() {
        type Change = fn(&mut OrderRow);
        let cases: Vec<(&str, Change, &str)> = vec![
            ("amount", |r| r.amount_cents = Some(99), "amount_cents"),
            ("item", |r| r.item = None, "item"),
            ("city", |r| r.city = Some("020".to_string()), "city"),
            ("user", |r| r.user_id = Some("u2".to_string()), "user_id"),
        ];
        for (name, change, field) in cases {
            let (acked, mut rows) = clean();
            change(&mut rows.get_mut("beijing").expect("site")[0]);
            let lost = lost_writes(&acked, &rows);
            assert_eq!(lost.len(), 1, "{name}: {lost:?}");
            assert!(
                matches!(&lost[0].problem, LostProblem::Differs { field: f, .. } if *f == field),
                "{name}: {lost:?}"
            );
            let msg = lost[0].to_string();
            assert!(
                msg.starts_with("order \"a\" at beijing has ") && msg.contains(field),
                "{name}: {msg}"
            );
        }
    }

    #[test]
    fn status_is_checked_only_when_given() {
        let (mut acked, rows) = clean();
        acked[0].status = Some("placed".to_string());
        assert!(lost_writes(&acked, &rows).is_empty());
        acked[0].status = Some("delivered".to_string());
        let lost = lost_writes(&acked, &rows);
        assert_eq!(lost.len(), 2, "at both sites: {lost:?}");
        assert!(lost[0].to_string().contains("status"), "{}", lost[0]);
    }

    #[test]
    fn acked_writes_come_from_the_services_row_json() {
        let row = serde_json::json!({
            "id": "a", "city": "010", "user": "u1", "item": "tea", "amount_cents": 100,
            "status": "placed", "shard": 1, "epoch": 1, "site": "beijing", "fence_epoch": 1,
            "created_at": "2024-01-01T00:00:00.000000Z", "updated_at": "2024-01-01T00:00:00.000000Z",
        });
        assert_eq!(AckedWrite::from_row_json(&row), Some(acked("a", "010")));
        assert_eq!(
            AckedWrite::from_row_json(&serde_json::json!({"id": "a"})),
            None
        );
        // Rows of other orders are not this one's concern.
        let rows = both_sites(vec![]);
        assert_eq!(lost_writes(&[], &rows), vec![]);
    }
}
