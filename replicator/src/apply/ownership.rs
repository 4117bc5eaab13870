//! The applier's side of ownership: which shard a row change is about
//! (its shard key column, or the target's row when the image lacks it) and
//! the verdict on it, waiting for the topology view or reading the shard's
//! epoch history as [`crate::ownership::judge`] asks. The rules that act
//! on a verdict are [`crate::conflict`]'s.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;

use crate::conflict::{self, Facts, Op, Policy, Right, ShardKey};
use crate::ownership::{self, Verdict};
use crate::pgoutput::{Relation, TupleData};
use crate::txn::SourceTxn;
use ezone_topology::history::ShardHistory;
use ezone_topology::{Epoch, ShardId, Topology};

/// Who owns what, for conflict decisions (see [`crate::conflict`] and
/// [`crate::ownership`]).
#[derive(Clone)]
pub struct Ownership {
    /// The link's source and target site names.
    pub source_site: String,
    pub target_site: String,
    pub policy: Policy,
    /// Shard key column per table (`schema.table`); tables without one are
    /// not checked for ownership.
    pub shard_keys: HashMap<String, ShardKey>,
    /// The current topology (a lock-free read of the watcher's snapshot).
    pub topology: Option<TopologyFn>,
    /// Reads a shard's epoch history from the store, for changes stamped
    /// with an epoch older than the view after the home moved. Without
    /// it such changes are judged by the view.
    pub history: Option<HistoryFn>,
    /// How long a change stamped with an epoch newer than the view waits
    /// for the view before the batch fails (transient: the link retries).
    pub view_wait: Duration,
    /// Histories read so far, each with the view epoch it was read at
    /// (entries never change; a newer view may need newer entries).
    pub histories: HistoryCache,
}

/// Shard histories an applier has read, each with the view epoch it was
/// read at (shared by the clones of one link's [`Ownership`]).
pub type HistoryCache = Arc<Mutex<HashMap<ShardId, (Epoch, Arc<ShardHistory>)>>>;

impl Default for Ownership {
    fn default() -> Ownership {
        Ownership {
            source_site: String::new(),
            target_site: String::new(),
            policy: Policy::default(),
            shard_keys: HashMap::new(),
            topology: None,
            history: None,
            view_wait: DEFAULT_VIEW_WAIT,
            histories: Arc::default(),
        }
    }
}

/// How long a change waits for the view to reach its epoch by default:
/// far more than a watch takes to deliver a change (milliseconds), short
/// enough that a replicator cut off from etcd says so soon.
pub const DEFAULT_VIEW_WAIT: Duration = Duration::from_secs(10);

/// Reads the current topology.
pub type TopologyFn = Arc<dyn Fn() -> Option<Arc<Topology>> + Send + Sync>;

/// Reads a shard's epoch history (an error says why it could not).
pub type HistoryFn =
    Arc<dyn Fn(ShardId) -> BoxFuture<'static, Result<ShardHistory, String>> + Send + Sync>;

impl Ownership {
    /// No ownership rules: sites from a link name `source->target`, the
    /// default policy, no shard keys (only existing/missing rows conflict).
    pub fn for_link(link: &str) -> Ownership {
        let (s, t) = link.split_once("->").unwrap_or((link, ""));
        Ownership {
            source_site: s.to_string(),
            target_site: t.to_string(),
            ..Ownership::default()
        }
    }

    /// The shard of a row image of `rel`, if the table has a shard key and
    /// the value maps to a shard.
    pub(super) fn shard_of(
        &self,
        topology: Option<&Topology>,
        rel: &Relation,
        image: &TupleData,
    ) -> Option<ShardId> {
        let t = topology?;
        let key = self.shard_key(rel)?;
        let idx = rel.columns.iter().position(|c| c.name == key.column)?;
        let value = image.columns.get(idx)?.as_text()?;
        conflict::shard_of(t, key, value)
    }

    /// The verdict on a change of `txn` from the source for the row of
    /// `shard` (`None`: not judged, no shard). Waits for the view when the
    /// change's stamp is newer, reads the shard's history when it is older
    /// and the home moved ([`ownership::judge`]). An error is transient:
    /// the view did not catch up in time, or the history could not be read.
    pub(super) async fn verdict(
        &self,
        shard: Option<ShardId>,
        txn: &SourceTxn,
    ) -> Result<Option<Verdict>, String> {
        let Some(shard) = shard else {
            return Ok(None);
        };
        let stamp = txn.stamp(shard);
        let deadline = tokio::time::Instant::now() + self.view_wait;
        let mut told = false;
        loop {
            let Some(t) = self.topology.as_ref().and_then(|f| f()) else {
                return Ok(None);
            };
            let Some(view) = t.shards.get(&shard) else {
                return Ok(None);
            };
            let cached = self
                .histories
                .lock()
                .ok()
                .and_then(|h| h.get(&shard).cloned())
                .filter(|(at, _)| *at >= view.epoch)
                .map(|(_, h)| h);
            match ownership::judge(&self.source_site, view, stamp, cached.as_deref()) {
                Verdict::AwaitView { epoch } => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "a change from {} for shard {shard} was accepted at epoch {epoch}, but this \
                             replicator's view of the topology is still at epoch {} after {:?}: is etcd \
                             reachable from here? (retrying)",
                            self.source_site, view.epoch, self.view_wait
                        ));
                    }
                    if !told {
                        tracing::info!(source = %self.source_site, shard, epoch, view_epoch = view.epoch,
                            "A change is stamped with a newer epoch than this replicator's topology view: waiting for the view.");
                        told = true;
                    }
                    tokio::time::sleep(VIEW_POLL).await;
                }
                Verdict::NeedHistory => {
                    let mut history = match &self.history {
                        Some(read) => read(shard).await.map_err(|e| {
                            format!("reading the epoch history of shard {shard}: {e} (retrying)")
                        })?,
                        None => ShardHistory::default(),
                    };
                    // Completed with the view once here, not per change.
                    history.learn(ezone_topology::history::EpochEntry {
                        epoch: view.epoch,
                        home: view.home.clone(),
                        state: view.state,
                        how: ezone_topology::history::Transition::Other,
                        at_ms: 0,
                    });
                    if let Ok(mut h) = self.histories.lock() {
                        h.insert(shard, (view.epoch, Arc::new(history)));
                    }
                }
                v => return Ok(Some(v)),
            }
        }
    }

    /// What the conflict rules ([`conflict::decide`]) rule on, for a change
    /// `op` of a source transaction committed at `source_commit`, with the
    /// ownership `verdict` on it.
    pub(super) fn facts(
        &self,
        op: Op,
        verdict: Option<&Verdict>,
        source_commit: SystemTime,
    ) -> Facts<'_> {
        Facts {
            policy: self.policy,
            op,
            right: Right::of(verdict),
            source_site: &self.source_site,
            target_site: &self.target_site,
            source_commit,
        }
    }

    /// The table's shard key, if it has one (asked for every row change:
    /// no name is built when no table has one).
    fn shard_key(&self, rel: &Relation) -> Option<&ShardKey> {
        if self.shard_keys.is_empty() {
            return None;
        }
        self.shard_keys
            .get(&format!("{}.{}", rel.namespace, rel.name))
    }

    /// The table has a shard key but this image does not carry its value: a
    /// delete's key-only old row (default replica identity) when the shard
    /// key is not part of the primary key. The owner must then be read from
    /// the target's row, never assumed.
    pub(super) fn lacks_key(&self, rel: &Relation, image: &TupleData) -> bool {
        let Some(key) = self.shard_key(rel) else {
            return false;
        };
        match rel.columns.iter().position(|c| c.name == key.column) {
            Some(idx) => image.columns.get(idx).and_then(|v| v.as_text()).is_none(),
            None => false,
        }
    }

    /// The shard from the target's current row (for images that lack the
    /// shard key): the row's JSON, its key column, the topology.
    pub(super) fn shard_of_json(
        &self,
        topology: Option<&Topology>,
        rel: &Relation,
        row: &str,
    ) -> Option<ShardId> {
        let t = topology?;
        let key = self.shard_key(rel)?;
        let v: serde_json::Value = serde_json::from_str(row).ok()?;
        let value = match v.get(&key.column)? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        conflict::shard_of(t, key, &value)
    }
}

/// How often a change waiting for the view looks again.
const VIEW_POLL: Duration = Duration::from_millis(5);
