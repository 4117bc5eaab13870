//! Where the sites differ: the orders whose rows are not the same at every
//! site. The checksums ([`super::identical`]) say whether the sites agree;
//! this says on which orders and columns they do not, so that a report
//! names them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use super::lost::text;
use super::{OrderRow, RowsBySite};

/// An order whose row is not the same at every site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub id: String,
    /// The first column that differs (`row` when some site lacks the row).
    pub field: &'static str,
    /// Site -> its value of `field` (`missing` when it lacks the row).
    pub values: BTreeMap<String, String>,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "order {:?} differs in {}:", self.id, self.field)?;
        for (i, (site, v)) in self.values.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(f, "{sep}{site} {v}")?;
        }
        Ok(())
    }
}

/// The columns of a row the comparison reads, as reports print them.
fn columns(r: &OrderRow) -> [(&'static str, String); 9] {
    let num = |v: Option<u64>| v.map_or_else(|| "NULL".to_string(), |v| v.to_string());
    [
        ("city", text(r.city.as_deref())),
        ("user_id", text(r.user_id.as_deref())),
        ("item", text(r.item.as_deref())),
        (
            "amount_cents",
            r.amount_cents
                .map_or_else(|| "NULL".to_string(), |v| v.to_string()),
        ),
        ("status", text(r.status.as_deref())),
        ("shard", num(r.shard.map(u64::from))),
        ("epoch", num(r.epoch)),
        ("site", text(r.site.as_deref())),
        ("fence_epoch", num(r.fence_epoch)),
    ]
}

/// Every order whose row differs between the sites of `rows_by_site` (or
/// is missing at some), in id order. Timestamps are not compared (the
/// checksum covers them).
pub fn divergence(rows_by_site: &RowsBySite) -> Vec<Divergence> {
    let by_site: BTreeMap<&str, HashMap<&str, &OrderRow>> = rows_by_site
        .iter()
        .map(|(site, rows)| {
            (
                site.as_str(),
                rows.iter().map(|r| (r.id.as_str(), r)).collect(),
            )
        })
        .collect();
    let ids: BTreeSet<&str> = rows_by_site
        .values()
        .flatten()
        .map(|r| r.id.as_str())
        .collect();
    let mut found = Vec::new();
    for id in ids {
        let rows: Vec<(&str, Option<&OrderRow>)> = by_site
            .iter()
            .map(|(site, rows)| (*site, rows.get(id).copied()))
            .collect();
        if rows.iter().any(|(_, r)| r.is_none()) {
            found.push(Divergence {
                id: id.to_string(),
                field: "row",
                values: rows
                    .iter()
                    .map(|(site, r)| {
                        let v = if r.is_some() { "present" } else { "missing" };
                        (site.to_string(), v.to_string())
                    })
                    .collect(),
            });
            continue;
        }
        let cols: Vec<(&str, [(&'static str, String); 9])> = rows
            .iter()
            .filter_map(|(site, r)| r.map(|r| (*site, columns(r))))
            .collect();
        let Some((_, first)) = cols.first() else {
            continue;
        };
        let differing = (0..first.len()).find(|&i| cols.iter().any(|(_, c)| c[i].1 != first[i].1));
        if let Some(i) = differing {
            found.push(Divergence {
                id: id.to_string(),
                field: first[i].0,
                values: cols
                    .iter()
                    .map(|(site, c)| (site.to_string(), c[i].1.clone()))
                    .collect(),
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{both_sites, row};
    use super::*;

    #[test]
    fn identical_sites_do_not_diverge() {
        let rows = both_sites(vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "021", 2, 1, "shanghai"),
        ]);
        assert!(divergence(&rows).is_empty());
    }

    #[test]
    fn a_differing_column_names_the_order_and_the_sites() {
        let mut rows = both_sites(vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "021", 2, 1, "shanghai"),
        ]);
        rows.get_mut("shanghai").expect("site")[1].status = Some("cooking".to_string());
        let found = divergence(&rows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].to_string(),
            "order \"b\" differs in status: beijing \"placed\", shanghai \"cooking\""
        );
    }

    #[test]
    fn a_row_at_one_site_only_diverges() {
        let mut rows = both_sites(vec![row("a", "010", 1, 1, "beijing")]);
        rows.get_mut("beijing")
            .expect("site")
            .push(row("z", "010", 1, 1, "beijing"));
        let found = divergence(&rows);
        assert_eq!(
            found.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec!["order \"z\" differs in row: beijing present, shanghai missing"]
        );
    }
}
