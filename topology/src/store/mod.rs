//! Where the topology lives: etcd (real deployments) or a file (a laptop).
//!
//! Both stores implement [`TopologyStore`]: a validated load, an initial write
//! that refuses to overwrite, compare-and-swap of one shard with an epoch check,
//! an operator lock, and a [`crate::watch::Watcher`] that publishes whole,
//! validated, immutable snapshots.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::history::Transition;
use crate::model::{Epoch, Shard, ShardId, Topology};
use crate::validate::Invalid;

pub mod any;
pub mod etcd;
pub mod etcd_options;
mod etcd_probe;
pub mod file;
pub mod layout;
pub mod lock;
pub mod source;

pub use any::AnyStore;
pub use etcd::EtcdStore;
pub use etcd_options::{
    EtcdAuth, EtcdOptions, EtcdOptionsProblem, EtcdTls, InvalidEtcdOptions, Password, PASSWORD_ENV,
};
pub use file::FileStore;
pub use lock::{LockGuard, LockInfo};
pub use source::TopologySource;

/// The version of a snapshot: the etcd revision it was read at, or, for a
/// file, its modification time in milliseconds since the Unix epoch.
pub type Version = i64;

/// A whole, validated, immutable topology, tagged with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub version: Version,
    pub topology: Arc<Topology>,
}

/// What went wrong in a store, classified by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or did not answer in time. Retry.
    #[error("topology store {store} is unavailable: {detail} (is it running and reachable? retrying may help)")]
    Unavailable { store: String, detail: String },
    /// etcd understood the request and refused it (bad argument, permission).
    /// Retrying the same request will not help.
    #[error("topology store {store} refused the request: {detail}")]
    Rejected { store: String, detail: String },
    /// The store cannot be used as configured: options that do not hold
    /// together (a field and its fix), or etcd refusing our credentials (a
    /// TLS certificate, an etcd user's password). Retrying will not help
    /// until the configuration, ours or etcd's, changes.
    #[error("topology store {store} cannot be used as configured: {detail}")]
    Misconfigured { store: String, detail: String },
    /// Nothing has been written under this prefix / to this file yet.
    #[error("no topology in {store}: write one with `ezone topo init -f FILE`")]
    NotInitialized { store: String },
    /// `init` without `force` found a topology already there.
    #[error("a topology already exists in {store}: refusing to overwrite it; pass --force to replace it")]
    AlreadyInitialized { store: String },
    /// What the store holds, or what was about to be written, is not valid.
    #[error("{0}")]
    Invalid(Invalid),
    /// A key holds bytes that are not the JSON it should be.
    #[error("topology key {key} in {store} is not valid JSON for a {what}: {detail}; fix or rewrite it (`ezone topo init --force`)")]
    Corrupt {
        store: String,
        key: String,
        what: &'static str,
        detail: String,
    },
    /// A key under the prefix that ezone does not know.
    #[error(
        "unknown key {key} under the topology prefix in {store}: remove it, or use another prefix"
    )]
    UnknownKey { store: String, key: String },
    /// Compare-and-swap lost: the shard is not at the epoch the caller read.
    #[error("shard {shard} is at epoch {found} (home {home}, {state}), not at the expected epoch {expected}: someone else changed it; re-read and decide again")]
    StaleEpoch {
        shard: ShardId,
        expected: Epoch,
        found: Epoch,
        home: String,
        state: String,
    },
    /// The shard to swap does not exist.
    #[error("shard {shard} does not exist in {store}")]
    UnknownShard { store: String, shard: ShardId },
    /// An operator lock is held by someone else.
    #[error("lock {name:?} is held by {holder}: wait for it to finish, or for its lease to expire if it died")]
    Locked { name: String, holder: String },
    /// A file-store I/O error.
    #[error("topology file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether retrying the same call later may succeed without anyone
    /// changing anything (the store was down, the lock may be released).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Locked { .. }
        )
    }
}

/// How long a call to a store may take before it counts as unavailable.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The operations every topology store offers.
///
/// Guarantees, for both stores:
/// - `load` returns only a topology that passed [`crate::validate::validate`].
/// - `init` is atomic: either the whole topology is written or nothing.
/// - `cas_shard` changes one shard only, and only if it is still at
///   `expected_epoch`; the new shard must carry a higher epoch, and the
///   resulting topology must validate as a successor of the current one.
/// - `lock` never blocks: it takes the lock or says who holds it. The lock is
///   released on [`LockGuard::release`], on drop, and when the holder dies (the
///   etcd lease expires; the file lock is released by the kernel).
pub trait TopologyStore: Send + Sync {
    /// A human-readable name for messages: `etcd http://...:2379 prefix /ezone`.
    fn describe(&self) -> String;

    fn load(&self) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    fn init(
        &self,
        topology: &Topology,
        force: bool,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// As [`TopologyStore::cas_shard_as`], for a change of no named kind.
    fn cas_shard(
        &self,
        expected_epoch: Epoch,
        next: &Shard,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        self.cas_shard_as(expected_epoch, next, Transition::Other)
    }

    /// Compare-and-swap of one shard, recording the new epoch in the
    /// shard's history ([`crate::history`]) with how it came about: in etcd
    /// in the same transaction, so no epoch is ever visible without its
    /// entry.
    fn cas_shard_as(
        &self,
        expected_epoch: Epoch,
        next: &Shard,
        how: Transition,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    fn lock(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<LockGuard, StoreError>> + Send;

    /// Operation records: JSON kept beside the topology (`{prefix}/ops/NAME`
    /// in etcd, `FILE.ops/` next to a file) for operations that span several
    /// CAS steps, such as a switchover, so a crashed operator command can be
    /// re-run from where it stopped. Not part of the topology: never
    /// validated, never watched. Writers hold the operation's lock.
    fn read_op(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    fn write_op(
        &self,
        name: &str,
        value: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn delete_op(&self, name: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every record whose name starts with `dir` (e.g. `switchover/`), by name.
    fn list_ops(
        &self,
        dir: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, Vec<u8>>, StoreError>> + Send;
}

/// Checks a CAS request against the current topology and returns the
/// successor topology, shared by both stores so they refuse the same things.
pub(crate) fn cas_successor(
    store: &str,
    current: &Topology,
    expected_epoch: Epoch,
    next: &Shard,
) -> Result<Topology, StoreError> {
    let Some(cur) = current.shards.get(&next.id) else {
        return Err(StoreError::UnknownShard {
            store: store.to_string(),
            shard: next.id,
        });
    };
    if cur.epoch != expected_epoch {
        return Err(StoreError::StaleEpoch {
            shard: next.id,
            expected: expected_epoch,
            found: cur.epoch,
            home: cur.home.clone(),
            state: cur.state.to_string(),
        });
    }
    let mut successor = current.clone();
    successor.shards.insert(next.id, next.clone());
    if next.epoch <= cur.epoch {
        return Err(StoreError::Invalid(Invalid(vec![
            crate::validate::Problem::EpochBackwards {
                id: next.id,
                from: cur.epoch,
                to: next.epoch,
            },
        ])));
    }
    crate::validate::validate_transition(current, &successor).map_err(StoreError::Invalid)?;
    Ok(successor)
}
