//! The ensemble: the whole system on one machine, as real processes, on top
//! of a started [`Lab`] (etcd, a Postgres per site, the WAN fault proxy).
//!
//! ```text
//!                        etcd: the topology (/ezone)
//!  beijing                                            shanghai
//!  router ◀── link router:beijing ───(WAN)─── router (forwards beijing's shards)
//!    │  (and the other way: link router:shanghai)      │
//!  orders serve                                       orders serve
//!    │                                                  │
//!  postgres ◀─ replicator (applies shanghai->beijing)  postgres ◀─ replicator
//!            reads shanghai's Postgres over link shanghai->beijing
//! ```
//!
//! Per site, [`Ensemble::start`]:
//! 1. installs the orders table and its fence (`ezone orders install`);
//! 2. starts the order service (`ezone orders serve`) and the router
//!    (`ezone router`), each on port 0, and reads their bound addresses from
//!    their ready lines; each config is then rewritten with those ports, so a
//!    restart binds the same ones and the topology stays right;
//! 3. puts a WAN link (`router:<site>`, the lab's latency) in front of each
//!    router: the topology's `router` address, where other sites reach it;
//! 4. writes the topology ([`ezone_topology::starter::starter`] with the
//!    real addresses) to etcd;
//! 5. starts the replicator (`ezone replicator`, `fence = true`, each other
//!    site's Postgres read across the WAN);
//! 6. waits until routers answer `/readyz`, every link's slot is active and
//!    every fence is reconciled.
//!
//! Processes log to `<lab dir>/ensemble/<site>/<part>.log` and are tied to
//! the test ([`Supervision::Tied`]): dropping the ensemble (also during a
//! panic) kills them, then drops the lab. The `ensemble` directory is
//! removed with them, unless the lab keeps its files
//! ([`crate::lab::LabSpec::keep_files`]). [`Ensemble::state`] is what a
//! `lab.json` records for the whole of it (`ezone demo --dir`).
//!
//! **Threads:** start and restart spawn children tied to the calling thread
//! (see [`crate::process`]): call them from a test's thread or a runtime
//! worker, never from `spawn_blocking`.

mod config;
mod error;
mod http;
mod procs;
mod ready;
mod start;
mod topology;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ezone_topology::{EtcdStore, Topology};

pub use error::EnsembleError;
pub use topology::{
    etcd_link_name, etcd_links, etcd_member_link_name, router_link_name, TOPOLOGY_PREFIX,
};

use crate::check::{self, CheckError, HomeHistory, Report, Writes};
use crate::lab::{Lab, LabProcess, LabState, Role};
use crate::process::Supervision;
use crate::proxy::LinkHandle;
use crate::scratch::ScratchDir;
use procs::Service;
use start::{site_dsn, Front, Layout, OrdersReady, ReplicatorReady, RouterReady};

/// Default shards per site.
pub const DEFAULT_SHARDS_PER_SITE: u32 = 2;
/// Default connections in each order service's pool.
pub const DEFAULT_POOL_SIZE: usize = 8;
/// Default deadline for each step of bringing the ensemble up.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default log filter (`RUST_LOG`) of the processes.
pub const DEFAULT_LOG_FILTER: &str = "info";
/// The environment variable that overrides [`DEFAULT_LOG_FILTER`] (e.g.
/// `EZONE_LAB_LOG=info,ezone_replicator=debug ezone chaos run ...`): the
/// processes' own `RUST_LOG`, never inherited from the caller's.
pub const LOG_FILTER_ENV: &str = "EZONE_LAB_LOG";
/// The ensemble's directory inside the lab's.
const DIR_NAME: &str = "ensemble";

/// What ensemble to start.
#[derive(Debug, Clone)]
pub struct EnsembleSpec {
    /// The `ezone` binary to run.
    pub ezone_bin: PathBuf,
    /// Shards per site in the starter topology (at least 1).
    pub shards_per_site: u32,
    /// Postgres connections per order service.
    pub pool_size: usize,
    /// Deadline of each wait (a ready line, readiness of everything).
    pub ready_timeout: Duration,
    /// `RUST_LOG` for every process ([`LOG_FILTER_ENV`] or
    /// [`DEFAULT_LOG_FILTER`] by default).
    pub log_filter: String,
    pub supervision: Supervision,
    /// Each site's replicator reaches etcd through fault-proxy links, one
    /// per member, `etcd:<site>[#i]` ([`topology::etcd_member_link_name`];
    /// no fault until a test sets one): a replicator whose view of the
    /// topology lags.
    pub replicator_etcd_links: bool,
    /// The topology's fence lease ([`DEFAULT_FENCE_LEASE_MS`]) and
    /// clock-skew bound ([`DEFAULT_CLOCK_SKEW_MS`]).
    pub fence_lease_ms: u64,
    pub clock_skew_ms: u64,
    /// The routers forward to each other over mutual TLS (a certificate per
    /// site from an ensemble CA, each router's peer listener behind its WAN
    /// link); off: over plain HTTP with a shared secret. On by default.
    pub peer_tls: bool,
    /// A second replicated table, [`BULK_TABLE`], for large transactions
    /// (`ezone chaos run` writes them: `scenario::bulk`); the replicators
    /// ask for `streaming` and every site's Postgres streams transactions
    /// over [`BULK_STREAM_AFTER`] of changes before their commit, so that
    /// the replicators take that path for them. Off by default.
    pub bulk: bool,
    /// The replicators' `apply_workers` (`"auto"` or a count); `None`: the
    /// replicator's default.
    pub apply_workers: Option<String>,
}

/// The table of [`EnsembleSpec::bulk`], at every site, replicated.
pub const BULK_TABLE: &str = "public.chaos_bulk";
/// Creates it (idempotent).
pub const BULK_TABLE_SQL: &str = "CREATE TABLE IF NOT EXISTS public.chaos_bulk (\
     batch text NOT NULL, n integer NOT NULL, site text NOT NULL, payload text NOT NULL, \
     PRIMARY KEY (batch, n))";
/// Every site's `logical_decoding_work_mem` with [`EnsembleSpec::bulk`]:
/// Postgres' least, so that a transaction of a few thousand rows is streamed.
pub const BULK_STREAM_AFTER: &str = "64kB";

/// The ensemble's fence lease: shorter than a deployment's (10 s), so that
/// a forced failover waits seconds, not tens of them; long enough that a
/// replicator starved of CPU on a busy 2-core machine still renews it (every
/// third of it).
pub const DEFAULT_FENCE_LEASE_MS: u64 = 5_000;
/// One machine, one clock: the bound only covers scheduling delays.
pub const DEFAULT_CLOCK_SKEW_MS: u64 = 500;

impl EnsembleSpec {
    /// The defaults, running `ezone_bin`.
    pub fn new(ezone_bin: impl Into<PathBuf>) -> Self {
        EnsembleSpec {
            ezone_bin: ezone_bin.into(),
            shards_per_site: DEFAULT_SHARDS_PER_SITE,
            pool_size: DEFAULT_POOL_SIZE,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            log_filter: std::env::var(LOG_FILTER_ENV)
                .ok()
                .filter(|f| !f.trim().is_empty())
                .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_string()),
            supervision: Supervision::Tied,
            replicator_etcd_links: false,
            fence_lease_ms: DEFAULT_FENCE_LEASE_MS,
            clock_skew_ms: DEFAULT_CLOCK_SKEW_MS,
            peer_tls: true,
            bulk: false,
            apply_workers: None,
        }
    }

    /// Refuse specs that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), EnsembleError> {
        if !self.ezone_bin.is_file() {
            return Err(EnsembleError::InvalidSpec {
                field: "ezone_bin",
                value: self.ezone_bin.display().to_string(),
                why: "no such file: build it with `cargo build -p ezone`".to_string(),
            });
        }
        if self.shards_per_site == 0 {
            return Err(EnsembleError::InvalidSpec {
                field: "shards_per_site",
                value: "0".to_string(),
                why: "each site needs at least one shard".to_string(),
            });
        }
        if self.pool_size == 0 {
            return Err(EnsembleError::InvalidSpec {
                field: "pool_size",
                value: "0".to_string(),
                why: "the order service needs at least one connection".to_string(),
            });
        }
        Ok(())
    }
}

/// A part of a site that chaos can kill, pause and restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Router,
    Replicator,
    Orders,
    Postgres,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Router => "router",
            Part::Replicator => "replicator",
            Part::Orders => "orders",
            Part::Postgres => "postgres",
        })
    }
}

/// One site's processes and addresses.
#[derive(Debug)]
struct SiteParts {
    front: Front,
    replicator: Service,
    replicator_admin: SocketAddr,
}

/// The running ensemble; see the module docs.
#[derive(Debug)]
pub struct Ensemble {
    // Field order is drop order: processes, their directory, then the lab.
    sites: BTreeMap<String, SiteParts>,
    dir: ScratchDir,
    topology: Topology,
    ready_timeout: Duration,
    lab: Lab,
}

impl Ensemble {
    /// Bring the whole system up on `lab` (which the ensemble then owns).
    /// On failure everything started is stopped again, the lab included.
    pub async fn start(lab: Lab, spec: EnsembleSpec) -> Result<Ensemble, EnsembleError> {
        spec.validate()?;
        let began = Instant::now();
        let dir = ScratchDir::create(&lab.dir().join(DIR_NAME))?.keep_files(lab.keep_files());
        let layout = Layout::new(&spec, dir.path(), &lab)?;
        start::install(&lab, &layout).await?;
        let fronts = start::fronts(&lab, &layout).await?;
        let mut topology = topology::build(
            lab.sites(),
            spec.shards_per_site,
            &start::site_addrs(&lab, &fronts)?,
        );
        topology.settings.fence_lease_ms = spec.fence_lease_ms;
        topology.settings.clock_skew_ms = spec.clock_skew_ms;
        topology::write(&lab.etcd_options(), &topology).await?;
        let replicators = start::replicators(&lab, &layout).await?;
        // Both maps hold every site, in name order.
        let sites = fronts
            .into_iter()
            .zip(replicators)
            .map(|((site, front), (_, (replicator, replicator_admin)))| {
                let parts = SiteParts {
                    front,
                    replicator,
                    replicator_admin,
                };
                (site, parts)
            })
            .collect();
        let ensemble = Ensemble {
            sites,
            dir,
            topology,
            ready_timeout: spec.ready_timeout,
            lab,
        };
        ensemble.wait_ready().await?;
        tracing::info!(
            sites = ?ensemble.sites(),
            elapsed = ?began.elapsed(),
            "Ensemble is up."
        );
        Ok(ensemble)
    }

    /// Wait until every router is ready, every replication link streams and
    /// every site's fence is reconciled (for instance after a restart).
    pub async fn wait_ready(&self) -> Result<(), EnsembleError> {
        let timeout = self.ready_timeout;
        for (site, p) in &self.sites {
            ready::router(site, p.front.router_admin, timeout).await?;
        }
        let dsns = self.dsns();
        ready::links(&dsns, timeout).await?;
        for (site, dsn) in &dsns {
            ready::fence(site, dsn, self.topology.shards.len(), timeout).await?;
        }
        Ok(())
    }

    /// The sites, in name order.
    pub fn sites(&self) -> Vec<String> {
        self.sites.keys().cloned().collect()
    }

    fn site(&self, site: &str) -> Result<&SiteParts, EnsembleError> {
        self.sites.get(site).ok_or_else(|| EnsembleError::Unknown {
            what: "site",
            name: site.to_string(),
            known: self.sites().join(", "),
        })
    }

    /// Where clients send requests to `site`'s router (its own LAN address).
    pub fn router_http(&self, site: &str) -> Result<SocketAddr, EnsembleError> {
        Ok(self.site(site)?.front.router_http)
    }

    /// `site`'s router admin API (`/readyz`, `/metrics`, `/topology`).
    pub fn router_admin(&self, site: &str) -> Result<SocketAddr, EnsembleError> {
        Ok(self.site(site)?.front.router_admin)
    }

    /// Where other sites reach `site`'s router: across the WAN link
    /// `router:<site>` (the topology's `router` address).
    pub fn router_wan(&self, site: &str) -> Result<SocketAddr, EnsembleError> {
        Ok(self.site(site)?.front.router_link.listen)
    }

    /// The in-process proxy's handle of the WAN link in front of `site`'s
    /// router (`None` when the lab's proxy runs as a process: use
    /// [`Lab::admin_client`] with [`router_link_name`]).
    pub fn router_link(&self, site: &str) -> Result<Option<LinkHandle>, EnsembleError> {
        Ok(self.site(site)?.front.router_link.handle.clone())
    }

    /// `site`'s order service.
    pub fn orders_addr(&self, site: &str) -> Result<SocketAddr, EnsembleError> {
        Ok(self.site(site)?.front.orders_addr)
    }

    /// `site`'s replicator admin API (`/metrics`).
    pub fn replicator_admin(&self, site: &str) -> Result<SocketAddr, EnsembleError> {
        Ok(self.site(site)?.replicator_admin)
    }

    /// etcd client URLs.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.lab.etcd().client_urls()
    }

    /// How to reach etcd (endpoints, and TLS when the lab's etcd uses it).
    pub fn etcd_options(&self) -> ezone_topology::store::EtcdOptions {
        self.lab.etcd_options()
    }

    /// The `ezone` command-line flags that reach the lab's etcd (TLS
    /// included), for running the CLI against the ensemble.
    pub fn etcd_cli_args(&self) -> Vec<String> {
        self.lab.etcd_cli_args()
    }

    /// A client of the topology store (prefix [`TOPOLOGY_PREFIX`]).
    pub async fn store(&self) -> Result<EtcdStore, EnsembleError> {
        topology::store(&self.lab.etcd_options()).await
    }

    /// `site`'s own Postgres DSN.
    pub fn dsn(&self, site: &str) -> Result<String, EnsembleError> {
        self.site(site)?;
        site_dsn(&self.lab, site)
    }

    /// Every site's own Postgres DSN, by site: what the checker reads.
    pub fn dsns(&self) -> BTreeMap<String, String> {
        self.sites
            .keys()
            .filter_map(|s| site_dsn(&self.lab, s).ok().map(|d| (s.clone(), d)))
            .collect()
    }

    /// The lab underneath (etcd, Postgres, the WAN links).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The ensemble's directory (configs and logs, per site).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What `lab.json` records for the whole ensemble: each site's router,
    /// order service and replicator (the current incarnation of each), then
    /// the lab's processes ([`Lab::state`]); the `ensemble` directory is
    /// among the entries to remove unless the lab keeps its files.
    pub fn state(&self) -> LabState {
        let mut state = self.lab.state();
        let mut processes = Vec::new();
        for (site, p) in &self.sites {
            for (role, svc) in [
                (Role::Router, &p.front.router),
                (Role::Orders, &p.front.orders),
                (Role::Replicator, &p.replicator),
            ] {
                processes.push(LabProcess {
                    role,
                    site: Some(site.clone()),
                    record: svc.process().record(),
                });
            }
        }
        processes.append(&mut state.processes);
        state.processes = processes;
        if !state.keep_files {
            state.entries.push(DIR_NAME.to_string());
        }
        state
    }

    /// The log file of `site`'s `part`.
    pub fn log_path(&self, site: &str, part: Part) -> Result<PathBuf, EnsembleError> {
        let p = self.site(site)?;
        Ok(match part {
            Part::Router => p.front.router.process().log_path().to_path_buf(),
            Part::Replicator => p.replicator.process().log_path().to_path_buf(),
            Part::Orders => p.front.orders.process().log_path().to_path_buf(),
            Part::Postgres => self.lab.postgres(site)?.log_path().to_path_buf(),
        })
    }

    /// The topology as written at start (flips change etcd, not this).
    pub fn initial_topology(&self) -> &Topology {
        &self.topology
    }

    /// Every city and its shard (the routing table).
    pub fn cities(&self) -> Vec<(String, u32)> {
        topology::cities(&self.topology)
    }

    /// The home site of `city` in the initial topology.
    pub fn home_of(&self, city: &str) -> Option<&str> {
        self.topology.city_shard(city).map(|s| s.home.as_str())
    }

    /// A city homed at `site` in the initial topology (the first by id).
    pub fn city_homed_at(&self, site: &str) -> Option<String> {
        self.topology
            .routing
            .cities
            .keys()
            .find(|c| self.home_of(c) == Some(site))
            .cloned()
    }

    /// Kill -9 `site`'s `part`.
    pub fn kill(&self, site: &str, part: Part) -> Result<(), EnsembleError> {
        tracing::info!(site, part = %part, "Killing.");
        let p = self.site(site)?;
        match part {
            Part::Router => p.front.router.kill(),
            Part::Replicator => p.replicator.kill(),
            Part::Orders => p.front.orders.kill(),
            Part::Postgres => Ok(self.lab.postgres(site)?.kill()?),
        }
    }

    /// SIGSTOP `site`'s `part` (it keeps its sockets open, answering nothing).
    pub fn pause(&self, site: &str, part: Part) -> Result<(), EnsembleError> {
        tracing::info!(site, part = %part, "Pausing.");
        let p = self.site(site)?;
        match part {
            Part::Router => p.front.router.pause(),
            Part::Replicator => p.replicator.pause(),
            Part::Orders => p.front.orders.pause(),
            Part::Postgres => Ok(self.lab.postgres(site)?.pause()?),
        }
    }

    /// SIGCONT `site`'s `part`.
    pub fn resume(&self, site: &str, part: Part) -> Result<(), EnsembleError> {
        tracing::info!(site, part = %part, "Resuming.");
        let p = self.site(site)?;
        match part {
            Part::Router => p.front.router.resume(),
            Part::Replicator => p.replicator.resume(),
            Part::Orders => p.front.orders.resume(),
            Part::Postgres => Ok(self.lab.postgres(site)?.resume()?),
        }
    }

    /// Kill (if running) and start `site`'s `part` again on the same ports
    /// and config; returns once it is up (its ready line; for a router,
    /// `/readyz`; for Postgres, accepting connections). Other parts reconnect
    /// on their own: [`Ensemble::wait_ready`] waits for that.
    pub async fn restart(&self, site: &str, part: Part) -> Result<(), EnsembleError> {
        tracing::info!(site, part = %part, "Restarting.");
        let p = self.site(site)?;
        match part {
            Part::Router => {
                let _: RouterReady = p.front.router.restart().await?;
                ready::router(site, p.front.router_admin, self.ready_timeout).await
            }
            Part::Replicator => {
                let _: ReplicatorReady = p.replicator.restart().await?;
                Ok(())
            }
            Part::Orders => {
                let _: OrdersReady = p.front.orders.restart().await?;
                Ok(())
            }
            Part::Postgres => Ok(self.lab.postgres(site)?.restart().await?),
        }
    }

    /// Every site's rows checked against what the clients did (the request
    /// history, or only the acknowledged creates): lost writes, unexpected
    /// rows and statuses (with a history), checksums, dual writes (see
    /// [`crate::check`]).
    pub async fn verify<'a>(
        &self,
        writes: impl Into<Writes<'a>>,
        homes: Option<&HomeHistory>,
    ) -> Result<Report, CheckError> {
        check::verify(&self.dsns(), writes, homes).await
    }

    /// Wait until `public.orders` is identical at every site; the checksums.
    pub async fn wait_converged(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<String, String>, CheckError> {
        check::wait_identical(&self.dsns(), timeout).await
    }

    /// Kill every process of the ensemble, remove its directory (unless the
    /// lab keeps its files), then tear the lab down (reporting the first
    /// failure). Dropping does the same without reporting.
    pub async fn teardown(self) -> Result<(), EnsembleError> {
        let Ensemble {
            sites, dir, lab, ..
        } = self;
        let mut first: Option<EnsembleError> = None;
        for p in sites.values() {
            for svc in [&p.front.router, &p.replicator, &p.front.orders] {
                if let Err(e) = svc.kill() {
                    first.get_or_insert(e);
                }
            }
        }
        drop(sites);
        if let Err(e) = dir.remove() {
            first.get_or_insert(e.into());
        }
        if let Err(e) = lab.teardown().await {
            first.get_or_insert(e.into());
        }
        match first {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}
