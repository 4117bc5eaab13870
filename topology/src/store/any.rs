//! Either store, chosen at run time (`--etcd` or `--file`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::history::Transition;
use crate::model::{Epoch, Shard, Topology};
use crate::store::{EtcdStore, FileStore, LockGuard, Snapshot, StoreError, TopologyStore, Version};

/// The store a process was configured with.
#[derive(Debug, Clone)]
pub enum AnyStore {
    Etcd(Box<EtcdStore>),
    File(FileStore),
}

impl TopologyStore for AnyStore {
    fn describe(&self) -> String {
        match self {
            AnyStore::Etcd(s) => s.describe(),
            AnyStore::File(s) => s.describe(),
        }
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.load().await,
            AnyStore::File(s) => s.load().await,
        }
    }

    async fn init(&self, topology: &Topology, force: bool) -> Result<Version, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.init(topology, force).await,
            AnyStore::File(s) => s.init(topology, force).await,
        }
    }

    async fn cas_shard_as(
        &self,
        expected_epoch: Epoch,
        next: &Shard,
        how: Transition,
    ) -> Result<Version, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.cas_shard_as(expected_epoch, next, how).await,
            AnyStore::File(s) => s.cas_shard_as(expected_epoch, next, how).await,
        }
    }

    async fn lock(&self, name: &str, holder: &str, ttl: Duration) -> Result<LockGuard, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.lock(name, holder, ttl).await,
            AnyStore::File(s) => s.lock(name, holder, ttl).await,
        }
    }

    async fn read_op(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.read_op(name).await,
            AnyStore::File(s) => s.read_op(name).await,
        }
    }

    async fn write_op(&self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        match self {
            AnyStore::Etcd(s) => s.write_op(name, value).await,
            AnyStore::File(s) => s.write_op(name, value).await,
        }
    }

    async fn delete_op(&self, name: &str) -> Result<(), StoreError> {
        match self {
            AnyStore::Etcd(s) => s.delete_op(name).await,
            AnyStore::File(s) => s.delete_op(name).await,
        }
    }

    async fn list_ops(&self, dir: &str) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        match self {
            AnyStore::Etcd(s) => s.list_ops(dir).await,
            AnyStore::File(s) => s.list_ops(dir).await,
        }
    }
}
