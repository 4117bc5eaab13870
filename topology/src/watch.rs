//! The watcher: a background task that follows the store and publishes whole,
//! validated, immutable [`Snapshot`]s.
//!
//! Readers on a hot path call [`Watcher::current`], a lock-free `ArcSwap` load;
//! the task never blocks them. A change that fails validation (alone, or as a
//! successor of the last good snapshot: epochs only grow) is refused, logged
//! with the reason and counted, and the last good snapshot keeps serving.
//!
//! For etcd the task reads the prefix at a revision, then watches from the
//! next revision. When the stream breaks (a member died, etcd restarted) it
//! reconnects and resumes from the last revision it applied, so no change is
//! missed; if that revision has been compacted away, or the store's revision
//! went backwards (etcd was wiped), it reloads the whole prefix instead.
//! Events of one revision arrive in one watch response, so a multi-key
//! transaction is never published half-applied.
//!
//! "Age" is the time since the served snapshot was last known to be the
//! store's current, valid state: it grows while the store is unreachable or
//! while a refused change is pending there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use etcd_client::{EventType, WatchOptions};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::Topology;
use crate::store::{AnyStore, EtcdStore, FileStore, Snapshot, StoreError, Version};

/// How often the etcd watcher asks for a progress notification, which
/// confirms the served snapshot is still current (and so keeps its age low).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often the file watcher looks at the file.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Reconnect backoff bounds.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often the etcd watcher repeats its warning while etcd stays unreachable.
pub const OUTAGE_REPEAT: Duration = Duration::from_secs(60);

/// Counters a watcher keeps (exported as metrics by the processes that use it).
#[derive(Debug, Default)]
pub struct WatchStats {
    /// Snapshots accepted and published.
    pub accepted: AtomicU64,
    /// Changes refused by validation (the last good snapshot kept serving).
    pub refused: AtomicU64,
    /// Times the watch had to be re-established.
    pub reconnects: AtomicU64,
    /// Full reloads (initial load, compaction, store reset).
    pub reloads: AtomicU64,
}

struct Shared {
    current: ArcSwapOption<Snapshot>,
    changes: watch::Sender<Option<Arc<Snapshot>>>,
    stats: WatchStats,
    /// When the served snapshot was last confirmed as the store's current state.
    confirmed_at: Mutex<Option<Instant>>,
    /// A refused change is what the store holds now.
    refusal_pending: AtomicBool,
    last_refusal: Mutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    /// Whether etcd answers (for the log lines only).
    outage: Mutex<Outage>,
}

impl Shared {
    fn confirm(&self) {
        if !self.refusal_pending.load(Ordering::Relaxed) && self.current.load().is_some() {
            if let Ok(mut at) = self.confirmed_at.lock() {
                *at = Some(Instant::now());
            }
        }
    }

    fn note_error(&self, e: &StoreError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    /// The store could not be read or watched.
    fn failed(&self, store: &str, error: &str) {
        if let Ok(mut outage) = self.outage.lock() {
            outage.failed(store, error);
        }
    }

    /// The store answered.
    fn reached(&self, store: &str) {
        if let Ok(mut outage) = self.outage.lock() {
            outage.reached(store);
        }
    }

    fn refuse(&self, version: Version, reason: String) {
        self.stats.refused.fetch_add(1, Ordering::Relaxed);
        self.refusal_pending.store(true, Ordering::Relaxed);
        tracing::warn!(
            version,
            reason = %reason,
            "Topology change refused; the last good snapshot keeps serving."
        );
        if let Ok(mut last) = self.last_refusal.lock() {
            *last = Some(reason);
        }
    }

    /// Offers a newly read state of the store.
    fn offer(&self, version: Version, read: Result<Option<Topology>, StoreError>) {
        let t = match read {
            Ok(Some(t)) => t,
            Ok(None) => {
                self.refuse(
                    version,
                    "the topology was removed from the store (no settings key)".into(),
                );
                return;
            }
            Err(e) => {
                self.refuse(version, e.to_string());
                return;
            }
        };
        if let Some(prev) = self.current.load_full() {
            if *prev.topology == t {
                // Same content (e.g. reload after reconnect): keep the snapshot
                // readers already hold.
                self.refusal_pending.store(false, Ordering::Relaxed);
                self.confirm();
                return;
            }
            if let Err(invalid) = crate::validate::validate_transition(&prev.topology, &t) {
                self.refuse(version, invalid.to_string());
                return;
            }
        }
        let snap = Arc::new(Snapshot {
            version,
            topology: Arc::new(t),
        });
        self.current.store(Some(snap.clone()));
        self.refusal_pending.store(false, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        self.confirm();
        tracing::info!(version, "Topology snapshot published.");
        self.changes.send_replace(Some(snap));
    }
}

/// Follows a store and serves its latest good snapshot. Dropping it stops the task.
pub struct Watcher {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watcher {
    /// Starts following `store`. Returns at once; [`Watcher::current`] is
    /// `None` until the first valid snapshot is loaded.
    pub fn start(store: AnyStore) -> Watcher {
        let (changes, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            current: ArcSwapOption::empty(),
            changes,
            stats: WatchStats::default(),
            confirmed_at: Mutex::new(None),
            refusal_pending: AtomicBool::new(false),
            last_refusal: Mutex::new(None),
            last_error: Mutex::new(None),
            outage: Mutex::new(Outage::default()),
        });
        let task = match store {
            AnyStore::Etcd(s) => tokio::spawn(run_etcd(*s, shared.clone())),
            AnyStore::File(s) => tokio::spawn(run_file(s, shared.clone())),
        };
        Watcher { shared, task }
    }

    /// The snapshot in use: a lock-free load, safe on the request path.
    pub fn current(&self) -> Option<Arc<Snapshot>> {
        self.shared.current.load_full()
    }

    /// True if `snap` is the snapshot in use (the same one, not an equal
    /// one). Writes nothing shared: a request path can ask this every time
    /// and keep its own copy while it holds (see the router's worker).
    pub fn is_current(&self, snap: &Arc<Snapshot>) -> bool {
        self.shared
            .current
            .load()
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, snap))
    }

    /// A receiver that sees every published snapshot (the latest, if several
    /// were published between two looks).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Snapshot>>> {
        self.shared.changes.subscribe()
    }

    /// Waits until a snapshot at `version` or later is in use.
    pub async fn wait_for_version(
        &self,
        version: Version,
        timeout: Duration,
    ) -> Option<Arc<Snapshot>> {
        let mut rx = self.subscribe();
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|s| s.as_ref().is_some_and(|s| s.version >= version)),
        )
        .await;
        match waited {
            Ok(Ok(s)) => s.clone(),
            _ => None,
        }
    }

    pub fn stats(&self) -> &WatchStats {
        &self.shared.stats
    }

    /// Time since the served snapshot was last confirmed current (`None`
    /// before the first snapshot).
    pub fn age(&self) -> Option<Duration> {
        self.shared
            .confirmed_at
            .lock()
            .ok()
            .and_then(|at| at.map(|at| at.elapsed()))
    }

    /// Why the last refused change was refused.
    pub fn last_refusal(&self) -> Option<String> {
        self.shared.last_refusal.lock().ok().and_then(|r| r.clone())
    }

    /// The last error talking to the store.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().ok().and_then(|r| r.clone())
    }
}

/// Whether the etcd watcher reaches etcd, for its log lines: a warning at
/// the first failure after a success (or at start), again once a minute
/// while the failures last, and an info line when etcd answers again; the
/// failures in between are at debug.
#[derive(Default)]
struct Outage {
    /// When the failures began, and when that was last said.
    since: Option<(Instant, Instant)>,
    failures: u64,
}

impl Outage {
    fn failed(&mut self, store: &str, error: &str) {
        let now = Instant::now();
        self.failures += 1;
        match &mut self.since {
            None => {
                self.since = Some((now, now));
                tracing::warn!(%store, error, "Cannot reach the topology store; retrying (the last good snapshot, if any, keeps serving).");
            }
            Some((since, said)) if now.duration_since(*said) >= OUTAGE_REPEAT => {
                *said = now;
                tracing::warn!(%store, error, failures = self.failures, down_for = ?now.duration_since(*since), "The topology store is still unreachable; retrying.");
            }
            Some(_) => tracing::debug!(%store, error, "Topology store unreachable; retrying."),
        }
    }

    fn reached(&mut self, store: &str) {
        if let Some((since, _)) = self.since.take() {
            tracing::info!(%store, failures = self.failures, down_for = ?since.elapsed(), "The topology store is reachable again.");
        }
        self.failures = 0;
    }
}

/// Why a watch stream ended.
enum StreamEnd {
    /// Broken connection or error: back off and resume from the last revision.
    Broken(StoreError),
    /// Our revision is gone (compacted) or the store was reset: reload it all.
    Reload(String),
}

fn broken(store: &str, why: impl Into<String>) -> StreamEnd {
    StreamEnd::Broken(StoreError::Unavailable {
        store: store.to_string(),
        detail: why.into(),
    })
}

/// Notes a failure to read or watch etcd: an outage is logged as one
/// (a warning now and then); a configuration etcd refuses (a certificate, a
/// password) as an error each time it changes. Either way the watcher keeps
/// trying: the fix may come from etcd's side.
fn trouble(shared: &Shared, store: &str, e: &StoreError, said: &mut Option<String>) {
    shared.note_error(e);
    if e.is_retryable() {
        *said = None;
        shared.failed(store, &e.to_string());
    } else {
        let text = e.to_string();
        if said.as_deref() != Some(text.as_str()) {
            tracing::error!(error = %text, "The topology store refuses this process's configuration; retrying, but it needs fixing.");
            *said = Some(text);
        }
    }
}

async fn run_etcd(store: EtcdStore, shared: Arc<Shared>) {
    let layout = store.layout().clone();
    let describe = crate::store::TopologyStore::describe(&store);
    let mut raw: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    // The revision of the last state applied to `raw`; `None` = reload.
    let mut revision: Option<Version> = None;
    let mut backoff = crate::backoff::Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
    let mut said: Option<String> = None;
    loop {
        let rev = match revision {
            Some(rev) => rev,
            None => match store.read_raw().await {
                Ok((r, rev)) => {
                    shared.reached(&describe);
                    raw = r;
                    shared.stats.reloads.fetch_add(1, Ordering::Relaxed);
                    shared.offer(rev, layout.assemble(&describe, &raw));
                    revision = Some(rev);
                    rev
                }
                Err(e) => {
                    trouble(&shared, &describe, &e, &mut said);
                    tokio::time::sleep(backoff.next_wait()).await;
                    continue;
                }
            },
        };
        let end = follow(
            &store,
            &layout,
            &describe,
            &shared,
            &mut raw,
            rev,
            &mut revision,
        )
        .await;
        shared.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        match end {
            StreamEnd::Reload(why) => {
                tracing::info!(reason = %why, "Reloading the whole topology.");
                revision = None;
            }
            StreamEnd::Broken(e) => {
                trouble(&shared, &describe, &e, &mut said);
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        }
        backoff.reset();
    }
}

/// Follows one watch stream from `start` (the last applied revision) until it ends.
async fn follow(
    store: &EtcdStore,
    layout: &crate::store::layout::Layout,
    describe: &str,
    shared: &Shared,
    raw: &mut BTreeMap<String, Vec<u8>>,
    start: Version,
    revision: &mut Option<Version>,
) -> StreamEnd {
    let mut client = store.client();
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(start + 1)
        .with_progress_notify();
    let mut stream = match tokio::time::timeout(
        crate::store::DEFAULT_REQUEST_TIMEOUT,
        client.watch(layout.dir(), Some(opts)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return StreamEnd::Broken(store.classify_probing("watching the topology", e).await)
        }
        Err(_) => return broken(describe, "creating the watch timed out"),
    };
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A progress request that gets no answer within this long means the
    // member is gone (paused, partitioned) even if TCP has not noticed yet.
    let silence_limit = PROGRESS_INTERVAL * 4;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            msg = stream.message() => {
                let resp = match msg {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return broken(describe, "the watch stream ended"),
                    Err(e) => return StreamEnd::Broken(store.classify_probing("watching the topology", e).await),
                };
                last_heard = Instant::now();
                shared.reached(describe);
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        return StreamEnd::Reload(format!(
                            "revision {} was compacted (oldest kept: {})",
                            start + 1,
                            resp.compact_revision()
                        ));
                    }
                    let reason = resp.cancel_reason();
                    if let Some(auth) = &store.options().auth {
                        // etcd checks the auth token when a watch is created
                        // (a canceled watch, not an error etcd-client would
                        // renew the token on), and forgets a token left unused
                        // past --auth-token-ttl (300 s), which a long-lived
                        // watch does not use: renew it for the next try.
                        if reason.contains("permission denied") || reason.contains("auth token") {
                            if let Err(e) = client.refresh_token().await {
                                return StreamEnd::Broken(store.unavailable("renewing the etcd auth token", e));
                            }
                            return broken(describe, format!(
                                "watch canceled: {reason} (auth token renewed; if this repeats, etcd user {:?} may not read the prefix)",
                                auth.user
                            ));
                        }
                    }
                    return broken(describe, format!("watch canceled: {reason}"));
                }
                let header_rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                let applied = revision.unwrap_or(start);
                if resp.events().is_empty() {
                    if header_rev > 0 && header_rev < applied {
                        return StreamEnd::Reload(format!(
                            "the store's revision went back from {applied} to {header_rev} (was etcd reset?)"
                        ));
                    }
                    // Created or progress: everything up to header_rev was sent.
                    shared.confirm();
                    continue;
                }
                let mut rev = applied;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match ev.event_type() {
                        EventType::Put => {
                            raw.insert(key, kv.value().to_vec());
                        }
                        EventType::Delete => {
                            raw.remove(&key);
                        }
                    }
                    rev = rev.max(kv.mod_revision());
                }
                *revision = Some(rev);
                shared.offer(rev, layout.assemble(describe, raw));
            }
            _ = progress.tick() => {
                if last_heard.elapsed() > silence_limit {
                    return broken(describe, format!("no answer from etcd for {:?}", last_heard.elapsed()));
                }
                if let Err(e) = stream.request_progress().await {
                    return StreamEnd::Broken(store.unavailable("asking etcd for watch progress", e));
                }
            }
        }
    }
}

async fn run_file(store: FileStore, shared: Arc<Shared>) {
    let mut seen: Option<Version> = None;
    loop {
        match store.version() {
            Ok(Some(v)) if seen != Some(v) => {
                seen = Some(v);
                let read = crate::store::TopologyStore::load(&store).await;
                match read {
                    Ok(snap) => shared.offer(v, Ok(Some((*snap.topology).clone()))),
                    Err(StoreError::NotInitialized { .. }) => {}
                    Err(e) => shared.offer(v, Err(e)),
                }
            }
            Ok(_) => shared.confirm(),
            Err(e) => shared.note_error(&e),
        }
        tokio::time::sleep(FILE_POLL_INTERVAL).await;
    }
}
