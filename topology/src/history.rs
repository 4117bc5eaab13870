//! Each shard's epochs: who was its home at each epoch, and how the shard
//! came to that epoch.
//!
//! The topology holds only the current epoch of a shard. Judging a
//! replicated write by the epoch it was accepted under (the replicator's
//! ownership rule) needs the past too: "was site X the home of shard S at
//! epoch E, and did X hand S over with everything it had accepted (a planned
//! flip) or lose it (a forced failover)?". So every compare-and-swap of a
//! shard also writes an entry for the new epoch, in the same etcd
//! transaction (an epoch is never visible without its entry):
//!
//! ```text
//! {prefix}/ops/epochs/{shard}/{epoch, 20 digits}   EpochEntry JSON
//! ```
//!
//! `topo init` writes an entry for each shard's first epoch (a forced init
//! only for the epochs it changes). Entries are written once and never
//! changed, so a reader may cache them. Epochs from before ezone kept the
//! history have none: a reader that finds no entry at or before an epoch
//! falls back to what it knows ([`Tenure::Unknown`]).

use serde::{Deserialize, Serialize};

use crate::model::{Epoch, Shard, ShardId, ShardState};
use crate::store::{StoreError, TopologyStore};

/// How a shard came to an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transition {
    /// The epoch a topology was written with (`topo init`).
    Init,
    /// A planned switchover froze the shard at its home.
    Freeze,
    /// A planned switchover moved the home after the new home had applied
    /// every write the old home accepted (the marker was caught up).
    Flip,
    /// A planned switchover was rolled back to the old home.
    Rollback,
    /// A forced failover moved the home without the old home's tail.
    Forced,
    /// Anything else (a tool, a benchmark, a hand edit).
    Other,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Init => "init",
            Transition::Freeze => "freeze",
            Transition::Flip => "flip",
            Transition::Rollback => "rollback",
            Transition::Forced => "forced",
            Transition::Other => "other",
        }
    }
}

/// One shard's state from `epoch` on, until the next entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochEntry {
    pub epoch: Epoch,
    pub home: String,
    pub state: ShardState,
    pub how: Transition,
    /// When the swap was written (ms since the Unix epoch, the writer's clock).
    pub at_ms: u64,
}

impl EpochEntry {
    /// The entry for a shard as a swap is about to write it, stamped now.
    pub fn for_swap(next: &Shard, how: Transition) -> EpochEntry {
        EpochEntry {
            epoch: next.epoch,
            home: next.home.clone(),
            state: next.state,
            how,
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        }
    }
}

/// The operation-record name of a shard's entry for an epoch (zero-padded,
/// so that names sort by epoch).
pub fn entry_name(shard: ShardId, epoch: Epoch) -> String {
    format!("epochs/{shard}/{epoch:020}")
}

/// The operation-record directory of a shard's entries.
pub fn shard_dir(shard: ShardId) -> String {
    format!("epochs/{shard}/")
}

/// A shard's known entries, by epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardHistory {
    entries: Vec<EpochEntry>,
}

/// What the history says about a site's write to a shard under an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenure {
    /// The history has no entry at or before the epoch: it cannot say.
    Unknown,
    /// The site was not the home at that epoch: `home` was.
    NotHome { home: String },
    /// The site was the home at that epoch and still is in the history's
    /// latest entry.
    Current,
    /// The site was the home at that epoch and later lost the shard at
    /// `epoch` to `to`, by `how`. After a [`Transition::Flip`], the new home
    /// had applied every write the site accepted before the flip; after
    /// anything else it may not have.
    Ended {
        epoch: Epoch,
        to: String,
        how: Transition,
    },
}

impl ShardHistory {
    /// From entries in any order (duplicates by epoch keep the first).
    pub fn new(mut entries: Vec<EpochEntry>) -> ShardHistory {
        entries.sort_by_key(|e| e.epoch);
        entries.dedup_by_key(|e| e.epoch);
        ShardHistory { entries }
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest epoch with an entry.
    pub fn latest(&self) -> Option<Epoch> {
        self.entries.last().map(|e| e.epoch)
    }

    /// Adds an entry the reader learned elsewhere (its own view of the
    /// topology); an existing entry for that epoch wins.
    pub fn learn(&mut self, entry: EpochEntry) {
        if self.entries.iter().any(|e| e.epoch == entry.epoch) {
            return;
        }
        self.entries.push(entry);
        self.entries.sort_by_key(|e| e.epoch);
    }

    /// The home at `epoch`: the entry at the latest epoch not after it.
    pub fn home_at(&self, epoch: Epoch) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.epoch <= epoch)
            .map(|e| e.home.as_str())
    }

    /// `site`'s tenure of the shard as of `epoch`.
    pub fn tenure(&self, site: &str, epoch: Epoch) -> Tenure {
        let Some(home) = self.home_at(epoch) else {
            return Tenure::Unknown;
        };
        if home != site {
            return Tenure::NotHome { home: home.into() };
        }
        match self
            .entries
            .iter()
            .find(|e| e.epoch > epoch && e.home != site)
        {
            None => Tenure::Current,
            Some(e) => Tenure::Ended {
                epoch: e.epoch,
                to: e.home.clone(),
                how: e.how,
            },
        }
    }
}

/// Reads a shard's history from the store. Entries that are not valid JSON
/// are skipped (they cannot be judged by; the caller falls back).
pub async fn read<S: TopologyStore>(store: &S, shard: ShardId) -> Result<ShardHistory, StoreError> {
    let raw = store.list_ops(&shard_dir(shard)).await?;
    Ok(ShardHistory::new(
        raw.values()
            .filter_map(|b| serde_json::from_slice::<EpochEntry>(b).ok())
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(epoch: Epoch, home: &str, state: ShardState, how: Transition) -> EpochEntry {
        EpochEntry {
            epoch,
            home: home.into(),
            state,
            how,
            at_ms: 0,
        }
    }

    use ShardState::{Active, Frozen};
    use Transition::*;

    #[test]
    fn names_sort_by_epoch() {
        assert!(entry_name(3, 9) < entry_name(3, 10));
        assert!(entry_name(3, 10).starts_with(&shard_dir(3)));
        assert!(!entry_name(31, 1).starts_with(&shard_dir(3)));
    }

    #[test]
    fn home_at_takes_the_latest_entry_not_after_the_epoch() {
        let h = ShardHistory::new(vec![
            e(4, "b", Active, Flip),
            e(2, "a", Active, Other),
            e(3, "a", Frozen, Freeze),
        ]);
        assert_eq!(h.home_at(1), None);
        assert_eq!(h.home_at(2), Some("a"));
        assert_eq!(h.home_at(3), Some("a"));
        assert_eq!(h.home_at(4), Some("b"));
        assert_eq!(h.home_at(99), Some("b"));
        assert_eq!(h.latest(), Some(4));
    }

    #[test]
    fn tenure_says_how_a_home_lost_the_shard() {
        let h = ShardHistory::new(vec![
            e(2, "a", Active, Other),
            e(3, "a", Frozen, Freeze),
            e(4, "a", Active, Rollback),
            e(5, "a", Frozen, Freeze),
            e(6, "b", Active, Flip),
            e(7, "a", Active, Forced),
        ]);
        assert_eq!(h.tenure("a", 1), Tenure::Unknown);
        // A freeze and a rollback keep the home: the next move away counts.
        assert_eq!(
            h.tenure("a", 2),
            Tenure::Ended {
                epoch: 6,
                to: "b".into(),
                how: Flip
            }
        );
        assert_eq!(h.tenure("b", 2), Tenure::NotHome { home: "a".into() });
        assert_eq!(
            h.tenure("b", 6),
            Tenure::Ended {
                epoch: 7,
                to: "a".into(),
                how: Forced
            }
        );
        assert_eq!(h.tenure("a", 7), Tenure::Current);
        assert_eq!(h.tenure("b", 7), Tenure::NotHome { home: "a".into() });
    }

    #[test]
    fn learning_never_replaces_a_stored_entry() {
        let mut h = ShardHistory::new(vec![e(3, "a", Active, Forced)]);
        h.learn(e(3, "a", Active, Other));
        h.learn(e(2, "b", Active, Other));
        assert_eq!(h.entries()[1].how, Forced);
        assert_eq!(h.home_at(2), Some("b"));
    }

    #[test]
    fn entries_round_trip_as_json() {
        let x = e(5, "shanghai", Active, Flip);
        let text = serde_json::to_string(&x).unwrap();
        assert!(text.contains("\"how\":\"flip\""), "{text}");
        assert_eq!(serde_json::from_str::<EpochEntry>(&text).unwrap(), x);
    }
}
