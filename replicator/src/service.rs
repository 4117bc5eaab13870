//! A replicator process: for this site, one link from every other site in
//! the topology, each an owned task that restarts on transient errors; and
//! the admin endpoints (`/metrics`, `/healthz`, `/readyz`: [`crate::admin`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ezone_topology::{AnyStore, EtcdStore, FileStore, StoreError, TopologyStore};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::apply::Ownership;
use crate::config::{origin_name, slot_name, ReplicatorConfig};
use crate::link::{run_with, LinkConfig, LinkError, LinkStats};
use crate::link_set::LinkSet;
use crate::walsender::SourceConfig;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Topology(#[from] ezone_topology::StoreError),
    #[error("site {site:?} is not in the topology (sites: {known}): fix `site` in the replicator config")]
    UnknownSite { site: String, known: String },
    #[error("source DSN for site {site}: {detail}")]
    Source { site: String, detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The longest wait between two tries of an unavailable topology store at
/// start.
const START_RETRY_MAX: Duration = Duration::from_secs(2);

/// `f` again and again while the topology store is unavailable (etcd
/// without quorum, or the member the client reached just died): a
/// replicator started then waits for it, as a running one rides it out,
/// rather than exiting (found by the chaos suite: a replicator restarted
/// during an etcd fault exited, and its site went unreplicated). Other
/// errors (a refused request, a bad topology) are returned at once.
async fn until_available<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff =
        ezone_topology::backoff::Backoff::new(Duration::from_millis(100), START_RETRY_MAX);
    let mut tries: u32 = 0;
    loop {
        match f().await {
            Err(StoreError::Unavailable { store, detail }) => {
                tries += 1;
                tracing::warn!(%store, %detail, tries, "The topology store is unavailable at start ({what}); retrying.");
                tokio::time::sleep(backoff.next_wait()).await;
            }
            other => return other,
        }
    }
}

/// The running links of one replicator.
pub struct Service {
    /// The links running now (the set follows the topology's sites).
    pub links: LinkSet,
    /// Keeps the topology watcher (shared by the links) alive.
    _watcher: Arc<ezone_topology::Watcher>,
    pub admin: Option<std::net::SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<(String, Result<(), LinkError>)>,
}

impl Service {
    /// Reads the topology once and starts a link from each other site.
    pub async fn start(cfg: ReplicatorConfig) -> Result<Service, ServiceError> {
        let etcd = cfg.topology.etcd_options();
        let store = match &cfg.topology.file {
            Some(f) => AnyStore::File(FileStore::new(f)),
            None => AnyStore::Etcd(Box::new(
                until_available("connecting", || {
                    EtcdStore::connect_with(&etcd, &cfg.topology.prefix)
                })
                .await?,
            )),
        };
        let snap = until_available("reading the topology", || store.load()).await?;
        // A live view of the topology for ownership checks (lock-free reads).
        let watcher = Arc::new(ezone_topology::Watcher::start(store.clone()));
        let topology: crate::apply::TopologyFn = {
            let w = watcher.clone();
            Arc::new(move || w.current().map(|s| s.topology.clone()))
        };
        // Each shard's epoch history, for changes stamped with an epoch
        // older than the view (crate::ownership).
        let history: crate::apply::HistoryFn = {
            let store = store.clone();
            Arc::new(move |shard| {
                let store = store.clone();
                Box::pin(async move {
                    ezone_topology::history::read(&store, shard)
                        .await
                        .map_err(|e| e.to_string())
                })
            })
        };
        let t = &snap.topology;
        let Some(here) = t.sites.get(&cfg.site) else {
            return Err(ServiceError::UnknownSite {
                site: cfg.site.clone(),
                known: t.sites.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let target_dsn = cfg
            .target_dsn
            .clone()
            .unwrap_or_else(|| here.postgres.clone());
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        if !cfg.abandoned_switchover_after.is_zero() {
            // This replicator reaches every site's Postgres as its links do.
            let mut dsns: HashMap<String, String> = cfg
                .sources
                .iter()
                .map(|(site, o)| (site.clone(), o.dsn.clone()))
                .collect();
            dsns.insert(cfg.site.clone(), target_dsn.clone());
            let (store, site, after) = (
                store.clone(),
                cfg.site.clone(),
                cfg.abandoned_switchover_after,
            );
            let rx = stop_rx.clone();
            tasks.spawn(async move {
                (
                    "switchover recovery".to_string(),
                    recover_switchovers(store, site, dsns, after, rx).await,
                )
            });
        }
        if cfg.fence {
            let (site, dsn) = (cfg.site.clone(), target_dsn.clone());
            let (st, w, rx) = (store.clone(), watcher.clone(), stop_rx.clone());
            tasks.spawn(
                async move { ("fence".to_string(), keep_fence(site, dsn, st, w, rx).await) },
            );
        }
        // One link from each other site, now and as sites come and go.
        let factory = Arc::new(LinkFactory {
            cfg: cfg.clone(),
            target_dsn: target_dsn.clone(),
            topology: topology.clone(),
            history: history.clone(),
        });
        let links = LinkSet::default();
        let mut running = BTreeMap::new();
        for (name, site) in &t.sites {
            if *name == cfg.site {
                continue;
            }
            running.insert(name.clone(), factory.spawn(name, site, &links)?);
        }
        {
            let (factory, links, rx) = (factory.clone(), links.clone(), stop_rx.clone());
            let sites = watcher.subscribe();
            tasks.spawn(async move {
                follow_sites(factory, links, running, sites, rx).await;
                ("links".to_string(), Ok(()))
            });
        }
        let mut admin = None;
        if let Some(a) = &cfg.admin {
            let l = tokio::net::TcpListener::bind(a.listen)
                .await
                .map_err(|source| ServiceError::Bind {
                    addr: a.listen,
                    source,
                })?;
            admin = l.local_addr().ok();
            let state = Arc::new(crate::admin::Admin::new(links.clone()));
            let rx = stop_rx.clone();
            tasks.spawn(async move {
                crate::admin::serve(l, state, rx).await;
                ("admin".to_string(), Ok(()))
            });
        }
        Ok(Service {
            links,
            _watcher: watcher,
            admin,
            stop,
            tasks,
        })
    }

    /// Waits for a part of the process (the fence keeper, the switchover
    /// recovery) to fail for good (returned with the part's name), or
    /// forever. Links never end the process: a link stopped by a definite
    /// error is retried (see [`supervise`]) while the others go on.
    pub async fn wait_failure(&mut self) -> Option<(String, LinkError)> {
        while let Some(done) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = done {
                return Some((name, e));
            }
        }
        None
    }

    /// Stops every link (each finishes the transaction it is applying or
    /// abandons it uncommitted: either way the origin says where to resume).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs one link until `stop`. A definite error stops this link only (the
/// process and its other links go on; the link's /readyz and metrics say it
/// stopped and why); after `retry` it is tried again, in case an operator
/// fixed the cause (a column added, a publication created), so a fix needs
/// no restart. `retry` zero: stopped until the process restarts.
async fn supervise(
    name: &str,
    cfg: LinkConfig,
    own: Ownership,
    stats: Arc<crate::link::LinkStats>,
    mut stop: watch::Receiver<bool>,
    retry: std::time::Duration,
) {
    loop {
        match run_with(cfg.clone(), own.clone(), stats.clone(), stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                // run_with marked the link stopped and logged the error.
                if retry.is_zero() {
                    tracing::error!(link = %name, "The link stays stopped until this replicator restarts (stopped_link_retry = 0s); its other links go on.");
                    let _ = stop.wait_for(|s| *s).await;
                    return;
                }
                tracing::warn!(link = %name, error = %crate::chain(&e), retry_in = ?retry,
                    "Link stopped; the other links go on, and this one tries again later in case the cause was fixed.");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                stats
                    .stopped
                    .store(false, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// What a link from one source site needs, for the links started at the
/// beginning and for sites that join later.
struct LinkFactory {
    cfg: ReplicatorConfig,
    target_dsn: String,
    topology: crate::apply::TopologyFn,
    history: crate::apply::HistoryFn,
}

/// A running link: its own stop, and its task.
struct RunningLink {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl LinkFactory {
    /// Starts the link `name -> here` (added to `links`).
    fn spawn(
        &self,
        name: &str,
        site: &ezone_topology::Site,
        links: &LinkSet,
    ) -> Result<RunningLink, ServiceError> {
        let cfg = &self.cfg;
        let dsn = cfg
            .sources
            .get(name)
            .map(|o| o.dsn.clone())
            .unwrap_or_else(|| site.postgres.clone());
        let mut source = SourceConfig::from_dsn(&dsn).map_err(|e| ServiceError::Source {
            site: name.to_string(),
            detail: e.to_string(),
        })?;
        let link_name = format!("{name}->{}", cfg.site);
        source.application_name = format!("ezone {link_name}");
        let lc = LinkConfig {
            name: link_name.clone(),
            source,
            source_dsn: dsn,
            target_dsn: self.target_dsn.clone(),
            publication: cfg.publication.clone(),
            slot: slot_name(&cfg.site),
            origin: origin_name(name),
            apply_workers: cfg.apply_workers,
            large_transaction_bytes: cfg.large_transaction_bytes,
            streaming: cfg.link_streaming(),
            tables: cfg.tables.clone(),
        };
        let own = Ownership {
            source_site: name.to_string(),
            target_site: cfg.site.clone(),
            policy: cfg.conflict_policy,
            shard_keys: cfg.shard_keys.clone().into_iter().collect(),
            topology: Some(self.topology.clone()),
            history: Some(self.history.clone()),
            ..Ownership::default()
        };
        let stats = Arc::new(LinkStats::default());
        links.insert(link_name.clone(), stats.clone());
        let (stop, rx) = watch::channel(false);
        let retry = cfg.stopped_link_retry;
        let task = tokio::spawn(async move {
            supervise(&link_name, lc, own, stats, rx, retry).await;
        });
        Ok(RunningLink { stop, task })
    }
}

/// Keeps one link per other site of the topology: a site that appears gets
/// its link started (its slot and publication are made at its Postgres, as
/// at start), a site that leaves gets its link stopped. Until `stop`, which
/// stops every link and waits for them.
async fn follow_sites(
    factory: Arc<LinkFactory>,
    links: LinkSet,
    mut running: BTreeMap<String, RunningLink>,
    mut topology: watch::Receiver<Option<Arc<ezone_topology::Snapshot>>>,
    mut stop: watch::Receiver<bool>,
) {
    let here = factory.cfg.site.clone();
    loop {
        let changed = tokio::select! {
            changed = topology.changed() => changed.is_ok(),
            _ = stop.wait_for(|s| *s) => break,
        };
        if !changed {
            // The watcher is gone: keep the links as they are.
            let _ = stop.wait_for(|s| *s).await;
            break;
        }
        let Some(snap) = topology.borrow_and_update().clone() else {
            continue;
        };
        let sites = &snap.topology.sites;
        for (name, site) in sites {
            if *name == here || running.contains_key(name) {
                continue;
            }
            match factory.spawn(name, site, &links) {
                Ok(link) => {
                    tracing::info!(site = %name, version = snap.version, "A site joined the topology: its link to this site starts.");
                    running.insert(name.clone(), link);
                }
                Err(e) => {
                    tracing::error!(site = %name, error = %e, "A site joined the topology, but its link cannot be made; fix its postgres DSN in the topology (or [sources.SITE] here).");
                }
            }
        }
        let gone: Vec<String> = running
            .keys()
            .filter(|name| !sites.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(link) = running.remove(&name) {
                tracing::warn!(site = %name, version = snap.version, "A site left the topology: its link to this site stops (its slot stays at its Postgres until dropped there).");
                let _ = link.stop.send(true);
                let _ = link.task.await;
                links.remove(&format!("{name}->{here}"));
            }
        }
    }
    for link in running.values() {
        let _ = link.stop.send(true);
    }
    for (_, link) in running {
        let _ = link.task.await;
    }
}

/// Every second, finishes or rolls back the switchovers whose command died
/// ([`ezone_topology::failover::driver::recover_abandoned`]), until `stop`.
async fn recover_switchovers(
    store: AnyStore,
    site: String,
    dsns: HashMap<String, String>,
    after: std::time::Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    use ezone_topology::failover::driver::{recover_abandoned, Options, Progress};
    let sites = crate::site_ops::PgSites::new(dsns);
    let mut opts = Options::new(&format!(
        "replicator at {site} (pid {})",
        std::process::id()
    ));
    opts.preflight = false;
    let observe = |p: Progress| match p {
        Progress::Note { shard, text } => {
            tracing::warn!(shard, "Switchover recovery: {text}")
        }
        Progress::StepDone { shard, label, took } => {
            tracing::info!(
                shard,
                took_ms = took.as_millis() as u64,
                "Switchover recovery: {label}"
            )
        }
        _ => {}
    };
    let mut last_error = String::new();
    loop {
        match recover_abandoned(&store, &sites, &opts, after, &observe).await {
            Ok(done) => {
                for (shard, outcome) in done {
                    tracing::warn!(site = %site, shard, ?outcome, "Recovered an abandoned switchover.");
                }
                last_error.clear();
            }
            Err(e) => {
                // Said once per distinct error: etcd or a site may be down
                // for a while.
                let text = e.to_string();
                if text != last_error {
                    tracing::warn!(site = %site, error = %text, "Switchover recovery could not run; retrying.");
                    last_error = text;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Keeps this site's fence in line with the topology and its lease alive:
/// on start, on every topology change and every third of the lease, it
/// reads the topology from etcd's quorum (a linearizable read, not the
/// watcher's view, which may be stale), reconciles the fence with it, and
/// only then renews the lease until the read's start plus
/// `settings.fence_lease_ms`. While the quorum cannot be read nothing is
/// renewed: the site's database stops accepting writes by itself when the
/// lease lapses (the fence fails closed). A failure is retried at the next
/// tick; errors are logged at WARN/ERROR.
async fn keep_fence(
    site: String,
    dsn: String,
    store: AnyStore,
    watcher: Arc<ezone_topology::Watcher>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    use std::time::{Duration, SystemTime};
    let mut rx = watcher.subscribe();
    let mut conn: Option<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> = None;
    let by = format!("replicator at {site} (pid {})", std::process::id());
    // When the lease granted last lapses, and whether the quorum was lost
    // (said once per loss).
    let mut granted: Option<SystemTime> = None;
    let mut quorum_lost = false;
    loop {
        let read_at = SystemTime::now();
        let every;
        match store.load().await {
            Ok(snap) => {
                if quorum_lost {
                    tracing::warn!(site = %site, "The topology can be read again: renewing the fence's lease.");
                    quorum_lost = false;
                }
                let settings = &snap.topology.settings;
                every = settings.fence_renew_every();
                if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                    conn = match ezone_pg::connect(&dsn).await {
                        Ok((client, c)) => {
                            let task = tokio::spawn(async move {
                                let _ = c.await;
                            });
                            match crate::fence::install_schema(&client, &site).await {
                                Ok(()) => Some((client, task)),
                                Err(e) => {
                                    tracing::error!(site = %site, error = %crate::chain(&e), "Cannot install the fence's schema; retrying.");
                                    task.abort();
                                    None
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(site = %site, error = %crate::chain(&e), "Cannot reach the site's Postgres to keep the fence; retrying.");
                            None
                        }
                    };
                }
                if let Some((client, _)) = conn.as_mut() {
                    let until = crate::fence::lease_until(settings, read_at);
                    let r = async {
                        let closed =
                            crate::fence::reconcile(client, &site, &snap.topology, &site).await?;
                        crate::fence::renew_lease(client, &site, until, &by).await?;
                        Ok::<_, crate::fence::FenceError>(closed)
                    }
                    .await;
                    match r {
                        Ok(closed) => {
                            if !closed.is_empty() {
                                tracing::info!(site = %site, version = snap.version, closed = ?closed, "Fence reconciled.");
                            }
                            tracing::debug!(site = %site, version = snap.version, "Fence reconciled and its lease renewed.");
                            granted = until;
                        }
                        Err(e) => {
                            tracing::error!(site = %site, error = %crate::chain(&e), "Fence reconcile or lease renewal failed; retrying.");
                            if let Some((_, task)) = conn.take() {
                                task.abort();
                            }
                        }
                    }
                }
            }
            Err(e) => {
                every = Duration::from_secs(1);
                if !quorum_lost {
                    let lapses = granted
                        .map(|t| {
                            format!(
                                "{:?} from now",
                                t.duration_since(SystemTime::now()).unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|| "already".into());
                    tracing::warn!(site = %site, error = %e, lapses = %lapses,
                        "Cannot read the topology from etcd's quorum: the fence's lease is not renewed, and this site refuses writes once it lapses.");
                    quorum_lost = true;
                }
            }
        }
        tokio::select! {
            r = rx.changed() => { if r.is_err() { return Ok(()); } }
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            store: "etcd".into(),
            detail: "no leader".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_store_at_start_is_waited_for() {
        let calls = AtomicU32::new(0);
        let got = until_available("reading", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 5 {
                    Err(unavailable())
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert!(matches!(got, Ok(5)), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn other_store_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let got: Result<(), StoreError> = until_available("reading", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err(StoreError::NotInitialized {
                    store: "etcd".into(),
                })
            }
        })
        .await;
        assert!(
            matches!(got, Err(StoreError::NotInitialized { .. })),
            "{got:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
