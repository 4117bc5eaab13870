//! No dual writes: for every shard and fence epoch, the rows were accepted
//! at one site only, and (given the topology's history) at the site that
//! was the shard's home at that epoch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ezone_topology::Topology;

use super::OrderRow;

/// How many row ids a [`DualWrite`] keeps per site, as examples.
const DUAL_WRITE_IDS: usize = 5;

/// For each shard, its home site at each epoch (the topology's history).
pub type HomeHistory = BTreeMap<u32, BTreeMap<u64, String>>;

/// A violation of "one site per shard and epoch".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DualWrite {
    /// Rows of one shard and fence epoch were accepted at more than one site.
    ManySites {
        shard: u32,
        epoch: u64,
        /// Site -> some of the ids accepted there (at most 5).
        sites: BTreeMap<String, Vec<String>>,
    },
    /// Rows were accepted at a site that was not the shard's home at that
    /// epoch (`home` is `None` when the history knows no home for it).
    NotHome {
        shard: u32,
        epoch: u64,
        site: String,
        home: Option<String>,
        /// Some of the ids (at most 5).
        ids: Vec<String>,
    },
}

impl fmt::Display for DualWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DualWrite::ManySites {
                shard,
                epoch,
                sites,
            } => {
                write!(f, "shard {shard} epoch {epoch} accepted writes at")?;
                for (i, (site, ids)) in sites.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{site} (e.g. {})", ids.join(" "))?;
                }
                Ok(())
            }
            DualWrite::NotHome {
                shard,
                epoch,
                site,
                home,
                ids,
            } => {
                let home = home.as_deref().unwrap_or("unknown to the history");
                write!(
                    f,
                    "shard {shard} epoch {epoch} accepted writes at {site}, but its home then was {home} (e.g. {})",
                    ids.join(" ")
                )
            }
        }
    }
}

/// Rows accepted at more than one site for one shard and fence epoch, and,
/// given the topology's history, rows accepted at a site that was not the
/// shard's home at that epoch.
///
/// `rows` may hold the rows of every site at once (replicated copies agree
/// on where a row was accepted). Rows without a shard, fence epoch or site
/// cannot be attributed and are not checked. A PATCH re-stamps the row, so
/// a row is attributed to where its last write was accepted.
pub fn dual_writes(rows: &[OrderRow], homes: Option<&HomeHistory>) -> Vec<DualWrite> {
    // (shard, epoch) -> site -> ids
    let mut accepted: BTreeMap<(u32, u64), BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for r in rows {
        let (Some(shard), Some(epoch), Some(site)) = (r.shard, r.fence_epoch, r.site.as_deref())
        else {
            continue;
        };
        accepted
            .entry((shard, epoch))
            .or_default()
            .entry(site)
            .or_default()
            .insert(r.id.as_str());
    }
    let examples = |ids: &BTreeSet<&str>| -> Vec<String> {
        ids.iter()
            .take(DUAL_WRITE_IDS)
            .map(|s| s.to_string())
            .collect()
    };
    let mut found = Vec::new();
    for ((shard, epoch), sites) in &accepted {
        if sites.len() > 1 {
            found.push(DualWrite::ManySites {
                shard: *shard,
                epoch: *epoch,
                sites: sites
                    .iter()
                    .map(|(s, ids)| (s.to_string(), examples(ids)))
                    .collect(),
            });
        }
        let Some(homes) = homes else { continue };
        let home = homes.get(shard).and_then(|h| h.get(epoch));
        for (site, ids) in sites {
            if home.map(String::as_str) != Some(*site) {
                found.push(DualWrite::NotHome {
                    shard: *shard,
                    epoch: *epoch,
                    site: site.to_string(),
                    home: home.cloned(),
                    ids: examples(ids),
                });
            }
        }
    }
    found
}

/// The home of every shard at its current epoch: a [`HomeHistory`] of one
/// topology (extend it with each topology seen to cover flips).
pub fn homes_of(topology: &Topology) -> HomeHistory {
    let mut h = HomeHistory::new();
    record_homes(&mut h, topology);
    h
}

/// Add `topology`'s shard homes at their epochs to `history`.
pub fn record_homes(history: &mut HomeHistory, topology: &Topology) {
    for s in topology.shards.values() {
        history
            .entry(s.id)
            .or_default()
            .insert(s.epoch, s.home.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{history, row};
    use super::*;

    #[test]
    fn a_dual_write_is_found() {
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "010", 1, 1, "beijing"),
            row("c", "010", 1, 1, "shanghai"),
        ];
        let found = dual_writes(&rows, None);
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0] {
            DualWrite::ManySites {
                shard,
                epoch,
                sites,
            } => {
                assert_eq!((*shard, *epoch), (1, 1));
                assert_eq!(sites["beijing"], vec!["a", "b"]);
                assert_eq!(sites["shanghai"], vec!["c"]);
            }
            other => panic!("not a dual write: {other:?}"),
        }
        assert_eq!(
            found[0].to_string(),
            "shard 1 epoch 1 accepted writes at beijing (e.g. a b), shanghai (e.g. c)"
        );
    }

    #[test]
    fn a_write_away_from_home_is_found() {
        // With the history, shanghai is not shard 1's home at epoch 1.
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("c", "010", 1, 1, "shanghai"),
        ];
        let found = dual_writes(&rows, Some(&history()));
        let not_home: Vec<&DualWrite> = found
            .iter()
            .filter(|d| matches!(d, DualWrite::NotHome { .. }))
            .collect();
        assert_eq!(not_home.len(), 1, "{found:?}");
        assert_eq!(
            not_home[0].to_string(),
            "shard 1 epoch 1 accepted writes at shanghai, but its home then was beijing (e.g. c)"
        );
        // Alone at the wrong site (no second site in the epoch): still found.
        let rows = vec![row("c", "010", 1, 1, "shanghai")];
        assert!(matches!(
            dual_writes(&rows, Some(&history())).as_slice(),
            [DualWrite::NotHome { site, home: Some(h), ids, .. }]
                if site == "shanghai" && h == "beijing" && ids == &["c"]
        ));
    }

    #[test]
    fn a_flip_is_not_a_dual_write() {
        // Shard 1 moved from beijing (epoch 1) to shanghai (epoch 3).
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "010", 1, 3, "shanghai"),
        ];
        let mut h = history();
        h.entry(1).or_default().insert(3, "shanghai".to_string());
        assert!(dual_writes(&rows, Some(&h)).is_empty());
        // A write at an epoch the history does not know is reported.
        let rows = vec![row("a", "010", 1, 2, "beijing")];
        let found = dual_writes(&rows, Some(&h));
        assert!(matches!(
            found.as_slice(),
            [DualWrite::NotHome { home: None, .. }]
        ));
        assert!(
            found[0].to_string().contains("unknown to the history"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn unattributed_rows_are_not_counted() {
        let mut r = row("a", "010", 1, 1, "beijing");
        r.site = None;
        let rows = vec![r, row("b", "010", 1, 1, "shanghai")];
        assert!(dual_writes(&rows, None).is_empty());
    }

    #[test]
    fn homes_come_from_the_topology() {
        let t = ezone_topology::starter::starter(&["beijing", "shanghai"], 1);
        let h = homes_of(&t);
        assert_eq!(h[&1][&1], "beijing");
        assert_eq!(h[&2][&1], "shanghai");
    }
}
