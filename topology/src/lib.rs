//! The ezone topology: the model (sites, shards, cities, epochs), its
//! validation, the stable user hash, and its stores (etcd and a file) with
//! watch, compare-and-swap and an operator lock.
//!
//! The model, validation and hash are pure; the stores sit at the edge.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod diff;
pub mod doc;
pub mod failover;
pub mod hash;
pub mod history;
pub mod model;
pub mod starter;
pub mod validate;

pub use model::{Epoch, RoutingTable, Settings, Shard, ShardId, ShardState, Site, Topology};
pub mod store;
pub mod watch;

pub use store::{
    AnyStore, EtcdAuth, EtcdOptions, EtcdStore, EtcdTls, FileStore, Snapshot, StoreError,
    TopologyStore,
};
pub use watch::Watcher;
