//! A scenario: the whole system on this machine, the way `ezone demo`,
//! `ezone chaos run` and `ezone bench failover` drive it.
//!
//! ```text
//!   start / ensemble_on        traffic / traffic_with          switch
//!   lab + ensemble      ──▶    orders through every      ──▶   one shard, planned, with
//!   (this module)              site's router (traffic.rs)      `ezone failover`'s driver
//!                              lag_sampler (lag.rs)            ops: the history as the
//!                                                              checker's requests
//! ```
//!
//! - [`start`] brings up a lab ([`Lab`]: etcd, Postgres per site, the WAN)
//!   and the [`Ensemble`] on it (each site's router, order service and
//!   replicator, run from the `ezone` binary given); [`ensemble_on`] is its
//!   second half, for a caller that starts (and records) the lab itself.
//! - [`traffic`] runs order traffic for every city through every site's
//!   router ([`ezone_orders::workload`]); [`ops`] turns what came of it into
//!   the requests the invariant checker judges ([`crate::check`]).
//! - [`switch`] moves one shard to another site with the same driver the
//!   operator's `ezone failover` uses
//!   ([`ezone_topology::failover::driver::switch_shard`]) on the sites'
//!   Postgres ([`pg_sites`]), reporting each step to an observer.
//! - [`lag_sampler`] watches every replicator's lag while the traffic runs.
//!
//! Nothing here prints: the callers render progress and results.
#![cfg(feature = "scenario")]

pub mod bulk;
mod lag;
mod traffic;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ezone_orders::workload::WorkloadError;
use ezone_replicator::site_ops::PgSites;
use ezone_topology::failover::driver::{switch_shard, DriveError, Options, Outcome, Progress};
use ezone_topology::failover::plan::Move;
use ezone_topology::{ShardId, StoreError, TopologyStore};
use tokio::sync::watch;

use crate::ensemble::{Ensemble, EnsembleError, EnsembleSpec};
use crate::error::LabError;
use crate::lab::{Lab, LabSpec};

pub use lag::{lag_sampler, LagSeen};
pub use traffic::{ops, traffic, traffic_with};

/// The log filter of the ensemble's processes in a scenario: warnings only,
/// so that a run's own output is not drowned.
const LOG_FILTER: &str = "warn";

/// Why a scenario could not start or drive the system.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The lab (etcd, Postgres, the WAN) did not start.
    #[error("starting the lab")]
    Lab(#[source] LabError),

    /// The ensemble's processes did not start.
    #[error("starting routers, order services and replicators")]
    Start(#[source] EnsembleError),

    /// A part of the running ensemble (a site's address, the store client).
    #[error(transparent)]
    Ensemble(#[from] EnsembleError),

    /// The order traffic's spec was refused.
    #[error(transparent)]
    Workload(#[from] WorkloadError),

    /// The topology store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The switchover driver stopped without the switchover being over.
    #[error(transparent)]
    Drive(#[from] DriveError),

    /// A shard the topology does not have.
    #[error("shard {0} is not in the topology")]
    UnknownShard(ShardId),
}

/// Starts a lab of `spec` and the ensemble on it: `ezone_bin`'s routers,
/// order services and replicators, `shards_per_site` shards per site in the
/// starter topology, the ensemble's spec adjusted by `tweak` last.
pub async fn start(
    ezone_bin: impl Into<PathBuf>,
    spec: LabSpec,
    shards_per_site: u32,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> Result<Ensemble, ScenarioError> {
    let lab = Lab::start(spec).await.map_err(ScenarioError::Lab)?;
    ensemble_on(ezone_bin, lab, shards_per_site, tweak).await
}

/// The ensemble on a started `lab`, which it then owns: [`start`]'s second
/// half.
pub async fn ensemble_on(
    ezone_bin: impl Into<PathBuf>,
    lab: Lab,
    shards_per_site: u32,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> Result<Ensemble, ScenarioError> {
    let mut es = EnsembleSpec::new(ezone_bin);
    es.shards_per_site = shards_per_site;
    es.log_filter = LOG_FILTER.into();
    tweak(&mut es);
    Ensemble::start(lab, es).await.map_err(ScenarioError::Start)
}

/// Moves one shard to `to`, planned, with the operator command's driver;
/// how it ended and how long the whole switchover took. `observe` sees the
/// driver's progress (steps, waits, notes) as it happens.
pub async fn switch(
    ens: &Ensemble,
    sites: &PgSites,
    shard: ShardId,
    to: &str,
    observe: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(Outcome, Duration), ScenarioError> {
    let store = ens.store().await?;
    let snap = store.load().await?;
    let cur = snap
        .topology
        .shards
        .get(&shard)
        .ok_or(ScenarioError::UnknownShard(shard))?;
    let mv = Move {
        shard,
        from: cur.home.clone(),
        to: to.into(),
        epoch: cur.epoch,
        state: cur.state,
    };
    let opts = Options::new(&format!("ezone demo pid {}", std::process::id()));
    let (_keep, abort) = watch::channel(false);
    let started = Instant::now();
    let out = switch_shard(&store, sites, &mv, &opts, abort, observe).await?;
    Ok((out, started.elapsed()))
}

/// The sites' Postgres as the driver reaches them: the topology's DSNs, no
/// overrides.
pub fn pg_sites() -> PgSites {
    PgSites::new(HashMap::new())
}
