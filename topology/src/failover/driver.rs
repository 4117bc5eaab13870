//! Drives the switchover state machine ([`super::Switchover`]) against the
//! real world: the topology store (CAS, lock, the operation record) and the
//! sites' databases through the [`SiteOps`] seam (fences, markers).
//!
//! The loop is: take the shard's lock; load or create the record; then until
//! the switchover is over, perform the action the step calls for, feed the
//! result to the machine, and persist the new step *before* acting on it. A
//! crash anywhere leaves a record whose step says what to do next, and a
//! re-run does exactly that (every action is idempotent: a CAS that already
//! landed is recognised, fences reconcile to the topology, the marker token
//! is deterministic).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::plan::Move;
use super::{Action, Event, Step, Switchover};
use crate::history::Transition;
use crate::model::{Epoch, Shard, ShardId, ShardState, Site, Topology};
use crate::store::{LockGuard, StoreError, TopologyStore};

/// A failure at a site's database, classified for the driver.
#[derive(Debug, Clone, thiserror::Error)]
#[error("site {site}: {what}: {detail}")]
pub struct SiteError {
    pub site: String,
    pub what: String,
    pub detail: String,
    /// The database could not be reached or was busy: trying again may work.
    pub retryable: bool,
}

/// What the driver needs from the sites' databases.
pub trait SiteOps: Send + Sync {
    /// Brings `site`'s fence in line with `t`. Closing a shard's fence
    /// returns only once no write for it can still commit there.
    fn sync_fence(
        &self,
        site: &Site,
        t: &Topology,
    ) -> impl Future<Output = Result<(), SiteError>> + Send;

    /// Opens `site`'s fence for `shard` at `epoch` ahead of the topology
    /// (only if the fence row is not at a later epoch). The next reconcile
    /// with a topology at that epoch keeps it or closes it.
    fn open_fence_ahead(
        &self,
        site: &Site,
        shard: ShardId,
        epoch: Epoch,
    ) -> impl Future<Output = Result<(), SiteError>> + Send;

    /// Writes a marker carrying `token` into `site`'s WAL; returns its LSN.
    fn emit_marker(
        &self,
        site: &Site,
        token: &str,
    ) -> impl Future<Output = Result<String, SiteError>> + Send;

    /// Whether the marker `token` has been applied at `site`.
    fn marker_applied(
        &self,
        site: &Site,
        token: &str,
    ) -> impl Future<Output = Result<bool, SiteError>> + Send;

    /// How many unresolved conflicts at `site` are about `shard` (a
    /// switchover does not move a shard over them).
    fn pending_conflicts(
        &self,
        site: &Site,
        shard: ShardId,
    ) -> impl Future<Output = Result<u64, SiteError>> + Send;

    /// The state of the link from `source` to `target`, read at the
    /// source (its slot for `target`, and the walsender serving it).
    fn link_state(
        &self,
        source: &Site,
        target: &str,
    ) -> impl Future<Output = Result<LinkState, SiteError>> + Send;

    /// How far `site` has applied `from`'s WAL (the link's origin progress).
    fn applied_from(
        &self,
        site: &Site,
        from: &str,
    ) -> impl Future<Output = Result<Option<String>, SiteError>> + Send;
}

/// A link as its source sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    /// The source has the link's slot.
    pub slot: bool,
    /// A replicator is streaming from the slot.
    pub active: bool,
    /// How long ago that replicator last confirmed (standby status
    /// feedback), if it is streaming.
    pub last_reply: Option<Duration>,
}

/// One preflight check and how it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{word} {}", self.what)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

/// How a driver run is tuned.
#[derive(Debug, Clone)]
pub struct Options {
    /// Who runs it (`user@host pid N`), written into the lock and record.
    pub holder: String,
    /// How long the forward steps may take in all before the switchover is
    /// rolled back (the catch-up wait dominates).
    pub timeout: Duration,
    /// The shard lock's lease: how long after a crash a re-run can proceed.
    pub lock_ttl: Duration,
    /// How long to wait for a lock held by someone else.
    pub lock_wait: Duration,
    /// Pause between tries of a retryable step and between marker polls.
    pub poll: Duration,
    /// While waiting for the marker: how long the link may apply nothing
    /// before the switchover gives up and rolls back (instead of holding
    /// the shard's writes for the whole `timeout`). A link busy with one
    /// very large transaction applies nothing until it commits: raise it
    /// for such workloads.
    pub stall: Duration,
    /// Check the links and a marker round trip before freezing a shard
    /// ([`preflight`]); a failed check refuses the switchover.
    pub preflight: bool,
    /// Preflight: a link into the target counts as streaming if its
    /// replicator confirmed within this long.
    pub link_fresh: Duration,
    /// Preflight: how long the marker round trip may take.
    pub round_trip: Duration,
    /// After the freeze lands, how long to let writes that routers decided
    /// just before seeing it reach the database before the fence closes:
    /// the fence then closes behind them (waiting for them) instead of
    /// refusing them. Adds to the write-hold window.
    pub settle: Duration,
}

impl Options {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(5);
    pub const DEFAULT_POLL: Duration = Duration::from_millis(5);
    pub const DEFAULT_SETTLE: Duration = Duration::from_millis(20);
    pub const DEFAULT_STALL: Duration = Duration::from_secs(5);
    /// Three of the replicator's standby status intervals.
    pub const DEFAULT_LINK_FRESH: Duration = Duration::from_secs(10);
    pub const DEFAULT_ROUND_TRIP: Duration = Duration::from_secs(5);

    pub fn new(holder: &str) -> Options {
        Options {
            holder: holder.into(),
            timeout: Self::DEFAULT_TIMEOUT,
            lock_ttl: Self::DEFAULT_LOCK_TTL,
            // Longer than the lease, so a re-run right after a crash waits
            // the dead holder's lease out instead of failing.
            lock_wait: Self::DEFAULT_LOCK_TTL * 3,
            poll: Self::DEFAULT_POLL,
            settle: Self::DEFAULT_SETTLE,
            stall: Self::DEFAULT_STALL,
            preflight: true,
            link_fresh: Self::DEFAULT_LINK_FRESH,
            round_trip: Self::DEFAULT_ROUND_TRIP,
        }
    }
}

/// When a step was reached (ms since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepMark {
    pub step: String,
    pub at_ms: u64,
}

/// The persisted record of one shard's switchover (`ops/switchover/{shard}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub switchover: Switchover,
    pub holder: String,
    pub history: Vec<StepMark>,
    /// When the freeze CAS landed and when the shard was active again: the
    /// write-hold window the routers saw.
    #[serde(default)]
    pub frozen_at_ms: Option<u64>,
    #[serde(default)]
    pub active_at_ms: Option<u64>,
    /// The final fence action ran too: nothing is left to do.
    #[serde(default)]
    pub finished: bool,
    /// When it finished (ms since the Unix epoch): the end of the last
    /// step in `history`. Records from before it was kept have none.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
}

impl Record {
    /// The write-hold window, once known.
    pub fn hold(&self) -> Option<Duration> {
        match (self.frozen_at_ms, self.active_at_ms) {
            (Some(a), Some(b)) if b >= a => Some(Duration::from_millis(b - a)),
            _ => None,
        }
    }
}

/// The switchovers whose records are not finished (a re-run must finish
/// them), from the store.
pub async fn unfinished<S: TopologyStore>(store: &S) -> Result<Vec<Switchover>, StoreError> {
    Ok(store
        .list_ops("switchover/")
        .await?
        .values()
        .filter_map(|b| serde_json::from_slice::<Record>(b).ok())
        .filter(|r| !r.finished)
        .map(|r| r.switchover)
        .collect())
}

/// The record's name in the store.
pub fn record_name(shard: ShardId) -> String {
    format!("switchover/{shard}")
}

/// The lock's name in the store.
pub fn lock_name(shard: ShardId) -> String {
    format!("shard-{shard}")
}

/// Why a switchover will not move a shard with `n` unresolved conflicts at
/// `site`, and what to do.
pub fn conflicts_refusal(n: u64, site: &str) -> String {
    format!(
        "{n} unresolved conflict(s) of this shard at {site}: its rows differ between the sites, \
         and a switchover does not move a shard over them; see them with `ezone conflicts list`, \
         repair them with `ezone conflicts resolve --site {site} ...`, then run the switchover again"
    )
}

/// The marker token for a switchover: deterministic, so a re-run after a
/// crash between emitting and recording it still matches what was emitted.
pub fn marker_token(s: &Switchover) -> String {
    format!(
        "switchover shard={} from={} to={} epoch={}",
        s.shard,
        s.from,
        s.to,
        s.epoch + 1
    )
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the driver reports as it goes (the CLI renders it).
#[derive(Debug, Clone)]
pub enum Progress {
    /// Starting (or resuming, from this step) the switchover of a shard.
    Begin {
        shard: ShardId,
        from: String,
        to: String,
        epoch: Epoch,
        resumed_at: Option<String>,
    },
    /// An action started.
    Step { shard: ShardId, label: String },
    /// It finished.
    StepDone {
        shard: ShardId,
        label: String,
        took: Duration,
    },
    /// Still waiting on something (sent about once a second).
    Waiting {
        shard: ShardId,
        what: String,
        elapsed: Duration,
    },
    /// A note (a retry, a lock held by someone else).
    Note { shard: ShardId, text: String },
}

/// How a shard's switchover ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Home at the target, active.
    Done { hold: Option<Duration> },
    /// Back at the old home, active, with a new epoch.
    RolledBack {
        reason: String,
        hold: Option<Duration>,
    },
    /// Nothing to do: already home at the target and active.
    AlreadyThere,
}

/// Why the driver stopped without the switchover being over.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Site(#[from] SiteError),
    #[error("shard {shard}: {detail}")]
    Refused { shard: ShardId, detail: String },
    /// The record could not be continued (a bug or a hand-edited record).
    #[error("shard {shard}: the switchover record cannot be continued: {detail}; inspect it with `ezone status` and fix or delete {prefix_hint}")]
    Record {
        shard: ShardId,
        detail: String,
        prefix_hint: String,
    },
    /// Rolling back could not finish in time (the store or a site was
    /// unreachable). The record says where it stopped: re-run the command.
    #[error(
        "shard {shard}: stopped at step {step}: {detail}; re-run the same command to finish it"
    )]
    Stuck {
        shard: ShardId,
        step: String,
        detail: String,
    },
}

/// An abort signal: becomes `true` on Ctrl-C.
pub type Abort = watch::Receiver<bool>;

type Observer<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// Simulated crashes for the tests: `FAILPOINTS=switchover.frozen=return`
/// makes the process exit at once (no destructors, the lock's lease left to
/// expire) right after the record reached that step.
/// Only with the `failpoints` feature; a build without it has none.
#[cfg(feature = "failpoints")]
fn crash_point(step: &str) {
    let name = format!("switchover.{step}");
    if fail::eval(&name, |_| ()).is_some() {
        eprintln!("failpoint {name}: exiting as if the process had crashed");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "failpoints"))]
fn crash_point(_step: &str) {}

async fn take_lock<S: TopologyStore>(
    store: &S,
    shard: ShardId,
    opts: &Options,
    observe: Observer<'_>,
) -> Result<LockGuard, DriveError> {
    let deadline = tokio::time::Instant::now() + opts.lock_wait;
    let mut told = false;
    loop {
        match store
            .lock(&lock_name(shard), &opts.holder, opts.lock_ttl)
            .await
        {
            Ok(g) => return Ok(g),
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                if !told {
                    observe(Progress::Note {
                        shard,
                        text: format!("waiting for the shard's lock: {e}"),
                    });
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Moves one shard to `to`, planned: zero loss, or a rollback to the old
/// home. Resumes a switchover of the shard left unfinished by a crash.
pub async fn switch_shard<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    mv: &Move,
    opts: &Options,
    abort: Abort,
    observe: Observer<'_>,
) -> Result<Outcome, DriveError> {
    let shard = mv.shard;
    let lock = take_lock(store, shard, opts, observe).await?;
    let resumed = match store.read_op(&record_name(shard)).await? {
        Some(bytes) => {
            let r: Record = serde_json::from_slice(&bytes).map_err(|e| DriveError::Record {
                shard,
                detail: format!("not valid JSON: {e}"),
                prefix_hint: format!("ops/{}", record_name(shard)),
            })?;
            if r.finished {
                None
            } else if r.switchover.to != mv.to && !r.switchover.is_over() {
                return Err(DriveError::Refused {
                    shard,
                    detail: format!(
                        "an unfinished switchover to {} is recorded (step {}): re-run it with --to {} to finish it first",
                        r.switchover.to,
                        r.switchover.step_name(),
                        r.switchover.to
                    ),
                });
            } else {
                Some(r)
            }
        }
        None => None,
    };
    let mut record = match resumed {
        Some(r) => {
            observe(Progress::Begin {
                shard,
                from: r.switchover.from.clone(),
                to: r.switchover.to.clone(),
                epoch: r.switchover.epoch,
                resumed_at: Some(r.switchover.step_name().into()),
            });
            r
        }
        None => {
            let snap = store.load().await?;
            let Some(cur) = snap.topology.shards.get(&shard) else {
                return Err(DriveError::Refused {
                    shard,
                    detail: "not in the topology".into(),
                });
            };
            if cur.home == mv.to && cur.state == ShardState::Active {
                lock.release().await.ok();
                return Ok(Outcome::AlreadyThere);
            }
            if opts.preflight && cur.state == ShardState::Active {
                let checks = preflight(sites, &snap.topology, shard, &cur.home, &mv.to, opts).await;
                let failed: Vec<String> = checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{}: {}", c.what, c.detail))
                    .collect();
                if !failed.is_empty() {
                    lock.release().await.ok();
                    return Err(DriveError::Refused {
                        shard,
                        detail: format!("preflight failed, nothing changed: {}", failed.join("; ")),
                    });
                }
                observe(Progress::Note {
                    shard,
                    text: format!(
                        "preflight: {}",
                        checks
                            .iter()
                            .map(|c| format!("{} ({})", c.what, c.detail))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                // For the tests: a pause between the preflight and the
                // freeze (`FAILPOINTS=switchover.preflight_done=sleep(1500)`),
                // to break something the preflight saw working.
                fail::fail_point!("switchover.preflight_done");
            }
            if cur.state == ShardState::Frozen {
                return Err(DriveError::Refused {
                    shard,
                    detail: format!(
                        "frozen at {} (epoch {}) with no unfinished switchover recorded: another tool froze it; \
                         unfreeze it with `ezone topo` or finish that tool's work first",
                        cur.home, cur.epoch
                    ),
                });
            }
            let r = Record {
                switchover: Switchover::new(shard, &cur.home, &mv.to, cur.epoch),
                holder: opts.holder.clone(),
                history: vec![StepMark {
                    step: "start".into(),
                    at_ms: now_ms(),
                }],
                frozen_at_ms: None,
                active_at_ms: None,
                finished: false,
                finished_at_ms: None,
            };
            persist(store, &lock, &r).await?;
            crash_point("start");
            observe(Progress::Begin {
                shard,
                from: r.switchover.from.clone(),
                to: r.switchover.to.clone(),
                epoch: r.switchover.epoch,
                resumed_at: None,
            });
            r
        }
    };
    record.holder = opts.holder.clone();
    let result = drive(store, sites, &lock, &mut record, opts, abort, observe).await;
    lock.release().await.ok();
    result
}

/// What must hold before a shard is frozen for a move from `from` to `to`,
/// so that a switchover that cannot finish does not start (and hold the
/// shard's writes until it times out):
/// - every link into `to` streams, and its replicator confirmed within
///   `opts.link_fresh` (the catch-up and the writes after the flip need them);
/// - no unresolved conflicts of the shard at `from` or `to` (its rows differ
///   between the sites: a switchover does not move a shard over them);
/// - a marker emitted at `from` is applied at `to` within `opts.round_trip`
///   (the catch-up will work).
///
/// Every check runs and is reported; the caller refuses on any failure.
pub async fn preflight<O: SiteOps>(
    sites: &O,
    t: &Topology,
    shard: ShardId,
    from: &str,
    to: &str,
    opts: &Options,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let (Some(from_site), Some(to_site)) = (t.sites.get(from), t.sites.get(to)) else {
        checks.push(Check {
            what: format!("sites {from} and {to}"),
            ok: false,
            detail: "not both in the topology".into(),
        });
        return checks;
    };
    for source in t.sites.values().filter(|s| s.name != to) {
        let what = format!("link {}->{to} streams", source.name);
        checks.push(match sites.link_state(source, to).await {
            Ok(l) if !l.slot => Check {
                what,
                ok: false,
                detail: format!(
                    "{} has no slot for {to}: is {to}'s replicator configured and started?",
                    source.name
                ),
            },
            Ok(l) if !l.active => Check {
                what,
                ok: false,
                detail: format!(
                    "nothing streams from {}'s slot for {to}: is {to}'s replicator running and able to reach {}?",
                    source.name, source.name
                ),
            },
            Ok(l) => match l.last_reply {
                Some(age) if age <= opts.link_fresh => Check {
                    what,
                    ok: true,
                    detail: format!("confirmed {} ms ago", age.as_millis()),
                },
                // Just (re)connected, no status update yet: the marker
                // round trip below says whether it delivers.
                None => Check {
                    what,
                    ok: true,
                    detail: "streaming, not confirmed yet".into(),
                },
                Some(age) => Check {
                    what,
                    ok: false,
                    detail: format!(
                        "its replicator last confirmed {} ms ago (more than {:?}): the link is stuck",
                        age.as_millis(),
                        opts.link_fresh
                    ),
                },
            },
            Err(e) => Check {
                what,
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    for site in [from_site, to_site] {
        let what = format!("no unresolved conflicts of shard {shard} at {}", site.name);
        checks.push(match sites.pending_conflicts(site, shard).await {
            Ok(0) => Check {
                what,
                ok: true,
                detail: String::new(),
            },
            Ok(n) => Check {
                what,
                ok: false,
                detail: conflicts_refusal(n, &site.name),
            },
            Err(e) => Check {
                what,
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    let what = format!("marker round trip {from}->{to}");
    let token = format!(
        "preflight shard={shard} from={from} to={to} at={}",
        now_ms()
    );
    let started = tokio::time::Instant::now();
    let trip = async {
        sites.emit_marker(from_site, &token).await?;
        loop {
            if sites.marker_applied(to_site, &token).await? {
                return Ok::<_, SiteError>(true);
            }
            if started.elapsed() >= opts.round_trip {
                return Ok(false);
            }
            tokio::time::sleep(opts.poll.max(Duration::from_millis(2))).await;
        }
    };
    checks.push(match trip.await {
        Ok(true) => Check {
            what,
            ok: true,
            detail: format!("{} ms", started.elapsed().as_millis()),
        },
        Ok(false) => Check {
            what,
            ok: false,
            detail: format!(
                "a marker written at {from} was not applied at {to} within {:?}: the link does not deliver",
                opts.round_trip
            ),
        },
        Err(e) => Check {
            what,
            ok: false,
            detail: e.to_string(),
        },
    });
    checks
}

async fn persist<S: TopologyStore>(
    store: &S,
    lock: &LockGuard,
    r: &Record,
) -> Result<(), DriveError> {
    if lock.is_lost() {
        return Err(DriveError::Refused {
            shard: r.switchover.shard,
            detail: "lost the shard's lock (its lease expired): stopping so that no one else's run is disturbed; re-run to continue".into(),
        });
    }
    let bytes = serde_json::to_vec(r).map_err(|e| DriveError::Record {
        shard: r.switchover.shard,
        detail: e.to_string(),
        prefix_hint: String::new(),
    })?;
    store
        .write_op(&record_name(r.switchover.shard), &bytes)
        .await?;
    Ok(())
}

fn label(s: &Switchover, a: &Action) -> String {
    match a {
        Action::Cas {
            home, state, epoch, ..
        } => match (&s.step, state) {
            (Step::Start, _) => format!("freeze at {home} (CAS frozen, epoch {epoch})"),
            (Step::RollingBack { .. }, _) => {
                format!("roll back: home {home}, active (CAS epoch {epoch})")
            }
            _ => format!("flip: home {home}, {state} (CAS epoch {epoch})"),
        },
        Action::CloseFence { site } => format!("close {site}'s fence (waits for in-flight writes)"),
        Action::EmitMarker { site } => format!("marker in {site}'s WAL"),
        Action::AwaitMarker { link, lsn } => {
            format!("wait for link {link} to apply the marker ({lsn})")
        }
        Action::OpenFenceAhead { site, epoch } => {
            format!("open {site}'s fence ahead of the flip (epoch {epoch})")
        }
        Action::OpenFence { site } => format!("confirm {site}'s fence is open"),
        Action::RestoreFences { sites } => {
            format!("reconcile the fences of {}", sites.join(" and "))
        }
        Action::Finished => "finished".into(),
    }
}

/// The loop: act, learn, persist, until over.
async fn drive<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    lock: &LockGuard,
    record: &mut Record,
    opts: &Options,
    mut abort: Abort,
    observe: Observer<'_>,
) -> Result<Outcome, DriveError> {
    let shard = record.switchover.shard;
    // Forward steps share one deadline; a rollback gets a fresh one.
    let mut deadline = tokio::time::Instant::now() + opts.timeout;
    let mut rolling = matches!(record.switchover.step, Step::RollingBack { .. });
    loop {
        let sw = record.switchover.clone();
        let action = sw.action();
        let text = label(&sw, &action);
        observe(Progress::Step {
            shard,
            label: text.clone(),
        });
        if sw.step == Step::Frozen {
            if let Some(frozen) = record.frozen_at_ms {
                let since = Duration::from_millis(now_ms().saturating_sub(frozen));
                if since < opts.settle {
                    tokio::time::sleep(opts.settle - since).await;
                }
            }
        }
        let started = tokio::time::Instant::now();
        let aborted = *abort.borrow();
        let forward = !matches!(
            sw.step,
            Step::RollingBack { .. } | Step::Done | Step::RolledBack { .. }
        );
        let event = if aborted && forward && sw.step != Step::Start {
            Event::Failed {
                reason: "aborted by the operator".into(),
            }
        } else if aborted && sw.step == Step::Start {
            Event::Failed {
                reason: "aborted by the operator before anything changed".into(),
            }
        } else {
            match perform(
                store, sites, &sw, &action, deadline, &mut abort, opts, observe,
            )
            .await
            {
                Ok(ev) => ev,
                Err(e) if forward => Event::Failed {
                    reason: e.to_string(),
                },
                Err(e) => {
                    return Err(DriveError::Stuck {
                        shard,
                        step: sw.step_name().into(),
                        detail: e.to_string(),
                    })
                }
            }
        };
        if !matches!(event, Event::Failed { .. }) {
            observe(Progress::StepDone {
                shard,
                label: text,
                took: started.elapsed(),
            });
        }
        let next = sw.on(event.clone()).map_err(|e| DriveError::Record {
            shard,
            detail: e.to_string(),
            prefix_hint: format!("ops/{}", record_name(shard)),
        })?;
        if let Event::Failed { reason } = &event {
            observe(Progress::Note {
                shard,
                text: format!("step failed: {reason}; rolling back"),
            });
        }
        let now = now_ms();
        match (&sw.step, &next.step) {
            (Step::Start, Step::Frozen) => record.frozen_at_ms = Some(now),
            (Step::Flipping | Step::RollingBack { .. }, Step::Done | Step::RolledBack { .. }) => {
                record.active_at_ms = Some(now)
            }
            _ => {}
        }
        let over = sw.is_over();
        record.switchover = next;
        record.finished = over;
        if over {
            record.finished_at_ms = Some(now);
        }
        if !over {
            record.history.push(StepMark {
                step: record.switchover.step_name().into(),
                at_ms: now,
            });
        }
        persist(store, lock, record).await?;
        crash_point(record.switchover.step_name());
        if matches!(record.switchover.step, Step::RollingBack { .. }) && !rolling {
            rolling = true;
            deadline = tokio::time::Instant::now() + opts.timeout;
        }
        if over {
            return Ok(match &record.switchover.step {
                Step::Done => Outcome::Done {
                    hold: record.hold(),
                },
                Step::RolledBack { reason } => Outcome::RolledBack {
                    reason: reason.clone(),
                    hold: record.hold(),
                },
                _ => unreachable!("over means done or rolled back"),
            });
        }
    }
}

/// Either an error worth retrying, or not.
enum StepError {
    Store(StoreError),
    Site(SiteError),
    Other(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Store(e) => e.fmt(f),
            StepError::Site(e) => e.fmt(f),
            StepError::Other(e) => f.write_str(e),
        }
    }
}

impl StepError {
    fn retryable(&self) -> bool {
        match self {
            StepError::Store(e) => matches!(e, StoreError::Unavailable { .. }),
            StepError::Site(e) => e.retryable,
            StepError::Other(_) => false,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn perform<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    sw: &Switchover,
    action: &Action,
    deadline: tokio::time::Instant,
    abort: &mut Abort,
    opts: &Options,
    observe: Observer<'_>,
) -> Result<Event, StepError> {
    let shard = sw.shard;
    let started = tokio::time::Instant::now();
    let mut last_note = started;
    let cancellable = !matches!(
        sw.step,
        Step::RollingBack { .. } | Step::Done | Step::RolledBack { .. } | Step::Flipping
    );
    // While waiting for the marker: how far the link has applied, and since
    // when it has not moved.
    let mut catch_up = match action {
        Action::AwaitMarker { lsn, .. } => Some(CatchUp::new(lsn)),
        _ => None,
    };
    loop {
        let attempt = attempt(store, sites, sw, action).await;
        match attempt {
            Ok(Some(ev)) => return Ok(ev),
            Ok(None) => {}
            Err(e) if e.retryable() => {
                if last_note.elapsed() >= Duration::from_secs(1) {
                    observe(Progress::Note {
                        shard,
                        text: format!("retrying: {e}"),
                    });
                    last_note = tokio::time::Instant::now();
                }
            }
            Err(e) => return Err(e),
        }
        if let Some(c) = catch_up.as_mut() {
            if let Err(reason) = c.look(store, sites, sw, opts).await {
                return Err(StepError::Other(reason));
            }
        }
        let waiting_for = match &catch_up {
            Some(c) => format!("{} ({})", label(sw, action), c.describe()),
            None => label(sw, action),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::Other(format!(
                "timed out after {:?} ({waiting_for})",
                opts.timeout,
            )));
        }
        if last_note.elapsed() >= Duration::from_secs(1) {
            observe(Progress::Waiting {
                shard,
                what: waiting_for,
                elapsed: started.elapsed(),
            });
            last_note = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(opts.poll) => {}
            changed = abort.changed(), if cancellable => {
                if changed.is_ok() && *abort.borrow() {
                    return Err(StepError::Other("aborted by the operator".into()));
                }
            }
        }
    }
}

/// Progress of the catch-up: the link's applied position (its origin at
/// the target), looked at every [`CatchUp::EVERY`], and when it last moved.
struct CatchUp {
    marker: String,
    applied: Option<String>,
    moved_at: tokio::time::Instant,
    looked_at: Option<tokio::time::Instant>,
}

impl CatchUp {
    const EVERY: Duration = Duration::from_millis(250);

    fn new(marker: &str) -> CatchUp {
        CatchUp {
            marker: marker.to_string(),
            applied: None,
            moved_at: tokio::time::Instant::now(),
            looked_at: None,
        }
    }

    /// Reads the link's position (at most every [`CatchUp::EVERY`]); an
    /// error when it has not moved for `opts.stall`.
    async fn look<S: TopologyStore, O: SiteOps>(
        &mut self,
        store: &S,
        sites: &O,
        sw: &Switchover,
        opts: &Options,
    ) -> Result<(), String> {
        let now = tokio::time::Instant::now();
        if self.looked_at.is_some_and(|t| now - t < Self::EVERY) {
            return Ok(());
        }
        self.looked_at = Some(now);
        // A position that cannot be read is not progress, nor a reason to
        // stop: the stall bound decides.
        if let Ok(snap) = store.load().await {
            if let Some(site) = snap.topology.sites.get(&sw.to) {
                if let Ok(applied) = sites.applied_from(site, &sw.from).await {
                    if applied != self.applied {
                        if self.applied.is_some() || applied.is_some() {
                            self.moved_at = now;
                        }
                        self.applied = applied;
                    }
                }
            }
        }
        let still = now - self.moved_at;
        if still >= opts.stall {
            return Err(format!(
                "no catch-up progress for {:?}: link {}->{} has applied {}'s WAL up to {}, the marker is at {} \
                 (is {}'s replicator running, and can it reach {}?)",
                opts.stall,
                sw.from,
                sw.to,
                sw.from,
                self.applied.as_deref().unwrap_or("(nothing yet)"),
                self.marker,
                sw.to,
                sw.from
            ));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "applied up to {}, marker at {}",
            self.applied.as_deref().unwrap_or("?"),
            self.marker
        )
    }
}

fn site_of<'a>(t: &'a Topology, name: &str) -> Result<&'a Site, StepError> {
    t.sites
        .get(name)
        .ok_or_else(|| StepError::Other(format!("site {name} is no longer in the topology")))
}

/// One try of an action: `Some(event)` when it is done, `None` to poll again.
async fn attempt<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    sw: &Switchover,
    action: &Action,
) -> Result<Option<Event>, StepError> {
    match action {
        Action::Cas {
            expected,
            home,
            state,
            epoch,
        } => {
            let next = Shard {
                id: sw.shard,
                home: home.clone(),
                state: *state,
                epoch: *epoch,
            };
            // The history entry says how the shard got this epoch: only a
            // flip after the catch-up hands over everything the old home
            // accepted (the replicators judge late writes by it).
            let how = match sw.step {
                Step::Start => Transition::Freeze,
                Step::RollingBack { .. } => Transition::Rollback,
                _ => Transition::Flip,
            };
            match store.cas_shard_as(*expected, &next, how).await {
                Ok(_) => Ok(Some(Event::CasLanded)),
                Err(StoreError::StaleEpoch { .. }) => {
                    // Our earlier try may have landed with its answer lost:
                    // look at what is there.
                    let snap = store.load().await.map_err(StepError::Store)?;
                    let cur = snap.topology.shards.get(&sw.shard).cloned();
                    match cur {
                        Some(c) if c == next => Ok(Some(Event::CasLanded)),
                        Some(c)
                            if matches!(sw.step, Step::RollingBack { .. })
                                && c.home == sw.to
                                && c.state == ShardState::Active
                                && c.epoch == sw.epoch + 2 =>
                        {
                            Ok(Some(Event::FlipFound))
                        }
                        Some(c) => Err(StepError::Other(format!(
                            "shard {} was changed by someone else: now home {} {} epoch {} (expected epoch {expected})",
                            sw.shard, c.home, c.state, c.epoch
                        ))),
                        None => Err(StepError::Other(format!(
                            "shard {} vanished from the topology",
                            sw.shard
                        ))),
                    }
                }
                Err(e) => Err(StepError::Store(e)),
            }
        }
        Action::CloseFence { .. } | Action::OpenFence { .. } | Action::RestoreFences { .. } => {
            let snap = store.load().await.map_err(StepError::Store)?;
            let t = &snap.topology;
            // The fence follows the topology; make sure it is the one this
            // step is about (a lagging member could serve an older view).
            let min_epoch = match sw.step {
                Step::Frozen => sw.epoch + 1,
                _ => sw.epoch + 2,
            };
            match t.shards.get(&sw.shard) {
                Some(s) if s.epoch >= min_epoch => {}
                _ => return Ok(None),
            }
            let names = match action {
                Action::CloseFence { site } | Action::OpenFence { site } => vec![site.clone()],
                Action::RestoreFences { sites } => sites.clone(),
                _ => Vec::new(),
            };
            for name in &names {
                let s = site_of(t, name)?;
                sites.sync_fence(s, t).await.map_err(StepError::Site)?;
            }
            Ok(Some(if matches!(action, Action::CloseFence { .. }) {
                Event::FenceClosed
            } else {
                Event::FenceOpened
            }))
        }
        Action::OpenFenceAhead { site, epoch } => {
            let snap = store.load().await.map_err(StepError::Store)?;
            let s = site_of(&snap.topology, site)?;
            // The catch-up may have brought conflicts of the shard to the
            // new home: then it does not become the home (rolled back).
            let n = sites
                .pending_conflicts(s, sw.shard)
                .await
                .map_err(StepError::Site)?;
            if n > 0 {
                return Err(StepError::Other(conflicts_refusal(n, site)));
            }
            sites
                .open_fence_ahead(s, sw.shard, *epoch)
                .await
                .map_err(StepError::Site)?;
            Ok(Some(Event::FenceOpened))
        }
        Action::EmitMarker { site } => {
            let snap = store.load().await.map_err(StepError::Store)?;
            let s = site_of(&snap.topology, site)?;
            let lsn = sites
                .emit_marker(s, &marker_token(sw))
                .await
                .map_err(StepError::Site)?;
            Ok(Some(Event::MarkerEmitted { lsn }))
        }
        Action::AwaitMarker { .. } => {
            // The new home first (its catch-up is what the stall bound
            // watches), then every other site: a third site must also have
            // every write the old home accepted before the new home's
            // first one can reach it (over another link, in no order of
            // its own), else it could apply the new home's version of a
            // row and then the old home's older one over it.
            let snap = store.load().await.map_err(StepError::Store)?;
            let token = marker_token(sw);
            let mut waiting_for: Vec<&str> = vec![sw.to.as_str()];
            waiting_for.extend(
                snap.topology
                    .sites
                    .keys()
                    .map(String::as_str)
                    .filter(|name| *name != sw.from && *name != sw.to),
            );
            for name in waiting_for {
                let s = site_of(&snap.topology, name)?;
                if !sites
                    .marker_applied(s, &token)
                    .await
                    .map_err(StepError::Site)?
                {
                    return Ok(None);
                }
            }
            Ok(Some(Event::MarkerApplied))
        }
        Action::Finished => Ok(Some(Event::FenceOpened)),
    }
}

/// Finishes or rolls back switchovers whose command died: a record that
/// is not finished, whose shard lock is free (the holder's lease lapsed),
/// and that has not moved for `abandoned_after`. One that has not reached
/// the flip is rolled back (the old home active again, with a new epoch);
/// one at or past the flip is finished. Meant to run every few seconds in a
/// part that always runs (every site's replicator does); the shard lock
/// keeps two of them, or one and an operator's re-run, from acting at once.
pub async fn recover_abandoned<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    opts: &Options,
    abandoned_after: Duration,
    observe: Observer<'_>,
) -> Result<Vec<(ShardId, Outcome)>, DriveError> {
    let mut out = Vec::new();
    // Forced failovers whose command died between taking the shards and
    // opening them at the survivor: opened once past their time (plus the
    // quiet time, so the command itself does it when it lives).
    for bytes in store.list_ops("forced/").await?.values() {
        let Ok(r) = serde_json::from_slice::<ForcedRecord>(bytes) else {
            continue;
        };
        if r.opened || now_ms() < r.opens_at_ms + abandoned_after.as_millis() as u64 {
            continue;
        }
        let name = forced_lock_name(&r.from);
        let lock = match store.lock(&name, &opts.holder, opts.lock_ttl).await {
            Ok(l) => l,
            Err(StoreError::Locked { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        observe(Progress::Note {
            shard: 0,
            text: format!(
                "the forced failover {} -> {} (by {}) was not opened: opening it",
                r.from, r.to, r.holder
            ),
        });
        let done = open_forced(store, sites, r, opts, observe).await;
        lock.release().await.ok();
        for (shard, _, _) in done?.shards {
            out.push((shard, Outcome::Done { hold: None }));
        }
    }
    let records = store.list_ops("switchover/").await?;
    for bytes in records.values() {
        let Ok(r) = serde_json::from_slice::<Record>(bytes) else {
            continue;
        };
        if r.finished || !quiet_for(&r, abandoned_after) {
            continue;
        }
        let shard = r.switchover.shard;
        let lock = match store
            .lock(&lock_name(shard), &opts.holder, opts.lock_ttl)
            .await
        {
            Ok(l) => l,
            // Someone is on it (the command, a re-run, another replicator).
            Err(StoreError::Locked { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        // Read again under the lock: it may have moved on meanwhile.
        let mut record = match store.read_op(&record_name(shard)).await? {
            Some(b) => match serde_json::from_slice::<Record>(&b) {
                Ok(r) if !r.finished && quiet_for(&r, abandoned_after) => r,
                _ => {
                    lock.release().await.ok();
                    continue;
                }
            },
            None => {
                lock.release().await.ok();
                continue;
            }
        };
        let reason = format!(
            "abandoned at step {}: its command ({}) died; recovered by {}",
            record.switchover.step_name(),
            record.holder,
            opts.holder
        );
        observe(Progress::Note {
            shard,
            text: reason.clone(),
        });
        let sw = &record.switchover;
        let next = match &sw.step {
            // Nothing may have happened, or the freeze landed with its
            // answer lost: the topology says which.
            Step::Start => {
                let snap = store.load().await?;
                match snap.topology.shards.get(&shard) {
                    Some(cur) if cur.epoch == sw.epoch => {
                        // Nothing changed: close the record, touch nothing.
                        record.switchover.step = Step::RolledBack {
                            reason: reason.clone(),
                        };
                        record.finished = true;
                        record.finished_at_ms = Some(now_ms());
                        record.holder = opts.holder.clone();
                        persist(store, &lock, &record).await?;
                        lock.release().await.ok();
                        out.push((shard, Outcome::RolledBack { reason, hold: None }));
                        continue;
                    }
                    _ => Some(Step::RollingBack {
                        reason: reason.clone(),
                    }),
                }
            }
            Step::Frozen | Step::Fenced | Step::CatchingUp { .. } | Step::Opening => {
                Some(Step::RollingBack {
                    reason: reason.clone(),
                })
            }
            // At or past the flip: finish what was started.
            Step::Flipping | Step::Done | Step::RollingBack { .. } | Step::RolledBack { .. } => {
                None
            }
        };
        if let Some(step) = next {
            record.switchover.step = step;
            record.history.push(StepMark {
                step: record.switchover.step_name().into(),
                at_ms: now_ms(),
            });
        }
        record.holder = opts.holder.clone();
        persist(store, &lock, &record).await?;
        // Never aborted: a rollback or a finish runs to its end.
        let (_keep, abort) = watch::channel(false);
        let result = drive(store, sites, &lock, &mut record, opts, abort, observe).await;
        lock.release().await.ok();
        out.push((shard, result?));
    }
    Ok(out)
}

/// The record has not moved for `d` (its last step mark is that old).
fn quiet_for(r: &Record, d: Duration) -> bool {
    let last = r.history.last().map(|m| m.at_ms).unwrap_or(0);
    now_ms().saturating_sub(last) >= d.as_millis() as u64
}

/// The record of a forced failover (`ops/forced/{from}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedRecord {
    pub from: String,
    pub to: String,
    pub at_ms: u64,
    pub holder: String,
    /// Each moved shard: id, epoch before, epoch after (the frozen epoch
    /// until the survivor opens, then the active one).
    pub shards: Vec<(ShardId, Epoch, Epoch)>,
    /// The divergence point: how far `to` had applied `from`'s WAL when the
    /// shards moved. `from`'s writes after it for these shards arrive as
    /// conflicts when it returns.
    pub divergence_lsn: Option<String>,
    /// Why it could not be read, if it could not.
    #[serde(default)]
    pub divergence_error: Option<String>,
    /// When the survivor may accept the shards: the lost site's fence lease
    /// has lapsed by then (lease + clock-skew bound after the shards were
    /// taken), whatever its clock says.
    #[serde(default)]
    pub opens_at_ms: u64,
    /// The survivor accepts them (the shards are active there). Records
    /// from before the two phases were opened at once.
    #[serde(default = "opened_by_default")]
    pub opened: bool,
    /// When an operator closed it (`ezone failover close-forced`) after the
    /// returning site's conflicts were repaired, and who: a closed record is
    /// history only. Open (none) in records from before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<String>,
}

fn opened_by_default() -> bool {
    true
}

/// The record's name in the store.
pub fn forced_name(from: &str) -> String {
    format!("forced/{from}")
}

/// The lock of `from`'s forced failover record: whoever opens it (a
/// replicator's recovery) or closes it holds it.
pub fn forced_lock_name(from: &str) -> String {
    format!("forced-{from}")
}

/// The forced failover of the shards in `moves` (all homed at one lost
/// site) to their target, in two phases, without consulting the old home:
///
/// 1. each shard is taken: CAS home `to`, **frozen**, a new epoch (routers
///    hold its writes; the old home's fence, if it is alive behind a
///    partition, still accepts them until its lease lapses). Unfinished
///    switchovers of those shards are superseded. The record is written.
/// 2. once the old home's lease must have lapsed (`settings.fence_lapse()`:
///    the lease plus the clock-skew bound, from the last take), each shard
///    is opened: CAS active at `to`, another epoch; the divergence point is
///    read and `to`'s fence opened. No two sites accept a shard's writes in
///    overlapping time.
///
/// A command that dies between the phases leaves a record with
/// `opened = false`: re-running it, or any replicator's recovery
/// ([`recover_abandoned`]), finishes phase 2.
pub async fn force_moves<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    from: &str,
    to: &str,
    moves: &[Move],
    opts: &Options,
    observe: Observer<'_>,
) -> Result<ForcedRecord, DriveError> {
    // A command that died between the phases: finish it first.
    if let Some(r) = read_forced(store, from).await? {
        if !r.opened && r.to == to {
            return open_forced(store, sites, r, opts, observe).await;
        }
    }
    let mut taken = Vec::new();
    for mv in moves {
        let shard = mv.shard;
        let lock = take_lock(store, shard, opts, observe).await?;
        if let Some(bytes) = store.read_op(&record_name(shard)).await? {
            if let Ok(mut r) = serde_json::from_slice::<Record>(&bytes) {
                if !r.finished {
                    r.finished = true;
                    r.finished_at_ms = Some(now_ms());
                    observe(Progress::Note {
                        shard,
                        text: format!(
                            "superseding the unfinished switchover (step {})",
                            r.switchover.step_name()
                        ),
                    });
                    r.switchover.step = Step::RolledBack {
                        reason: format!("superseded by the forced failover of {from}"),
                    };
                    persist(store, &lock, &r).await?;
                }
            }
        }
        let started = tokio::time::Instant::now();
        let deadline = started + opts.timeout;
        let text = format!("shard {shard}: home {to}, frozen until {from}'s lease lapses (CAS)");
        observe(Progress::Step {
            shard,
            label: text.clone(),
        });
        let (before, after) = loop {
            let cur = current_shard(store, shard, deadline).await?;
            if cur.home == to {
                // Taken already (by a run that died before writing its
                // record), or active there: nothing to take.
                break (cur.epoch, cur.epoch);
            }
            let next = Shard {
                id: shard,
                home: to.into(),
                state: ShardState::Frozen,
                epoch: cur.epoch + 1,
            };
            match store
                .cas_shard_as(cur.epoch, &next, Transition::Forced)
                .await
            {
                Ok(_) => break (cur.epoch, next.epoch),
                Err(StoreError::StaleEpoch { .. }) => continue,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        observe(Progress::StepDone {
            shard,
            label: text,
            took: started.elapsed(),
        });
        taken.push((shard, before, after));
        lock.release().await.ok();
    }
    let snap = store.load().await?;
    let lapse = snap.topology.settings.fence_lapse();
    let record = ForcedRecord {
        from: from.into(),
        to: to.into(),
        at_ms: now_ms(),
        holder: opts.holder.clone(),
        shards: taken,
        divergence_lsn: None,
        divergence_error: None,
        opens_at_ms: now_ms() + lapse.as_millis() as u64,
        opened: false,
        closed_at_ms: None,
        closed_by: None,
    };
    write_forced(store, &record).await?;
    open_forced(store, sites, record, opts, observe).await
}

/// `from`'s forced-failover record, if there is one that parses.
pub(super) async fn read_forced<S: TopologyStore>(
    store: &S,
    from: &str,
) -> Result<Option<ForcedRecord>, StoreError> {
    Ok(store
        .read_op(&forced_name(from))
        .await?
        .and_then(|b| serde_json::from_slice::<ForcedRecord>(&b).ok()))
}

async fn write_forced<S: TopologyStore>(store: &S, r: &ForcedRecord) -> Result<(), DriveError> {
    let bytes = serde_json::to_vec(r).map_err(|e| DriveError::Record {
        shard: 0,
        detail: e.to_string(),
        prefix_hint: format!("ops/{}", forced_name(&r.from)),
    })?;
    store.write_op(&forced_name(&r.from), &bytes).await?;
    Ok(())
}

/// The shard as the store has it now, retrying an unavailable store until
/// `deadline`.
async fn current_shard<S: TopologyStore>(
    store: &S,
    shard: ShardId,
    deadline: tokio::time::Instant,
) -> Result<Shard, DriveError> {
    loop {
        match store.load().await {
            Ok(s) => {
                return s
                    .topology
                    .shards
                    .get(&shard)
                    .cloned()
                    .ok_or_else(|| DriveError::Refused {
                        shard,
                        detail: "not in the topology".into(),
                    })
            }
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `name`'s site as the store has it now.
async fn snap_site<S: TopologyStore>(store: &S, name: &str) -> Result<Site, DriveError> {
    let snap = store.load().await?;
    snap.topology
        .sites
        .get(name)
        .cloned()
        .ok_or_else(|| DriveError::Refused {
            shard: 0,
            detail: format!("site {name} is not in the topology"),
        })
}

/// Phase 2 of a forced failover: waits until `opens_at_ms`, then makes each
/// taken shard active at the survivor, reads the divergence point and opens
/// the survivor's fence. Idempotent: a shard already active there is left
/// as it is.
async fn open_forced<S: TopologyStore, O: SiteOps>(
    store: &S,
    sites: &O,
    mut record: ForcedRecord,
    opts: &Options,
    observe: Observer<'_>,
) -> Result<ForcedRecord, DriveError> {
    let (from, to) = (record.from.clone(), record.to.clone());
    let wait = Duration::from_millis(record.opens_at_ms.saturating_sub(now_ms()));
    if !wait.is_zero() {
        let text = format!(
            "wait {} ms for {from}'s fence lease to lapse (lease + clock skew) before {to} accepts",
            wait.as_millis()
        );
        observe(Progress::Step {
            shard: 0,
            label: text.clone(),
        });
        tokio::time::sleep(wait).await;
        observe(Progress::StepDone {
            shard: 0,
            label: text,
            took: wait,
        });
    }
    let mut opened = Vec::new();
    for (shard, before, _frozen) in record.shards.clone() {
        let started = tokio::time::Instant::now();
        let deadline = started + opts.timeout;
        let text = format!("shard {shard}: home {to}, active (CAS)");
        observe(Progress::Step {
            shard,
            label: text.clone(),
        });
        let after = loop {
            let cur = current_shard(store, shard, deadline).await?;
            if cur.home != to || cur.state == ShardState::Active {
                // Opened already, or moved on since (a later failover):
                // not this run's to change.
                break cur.epoch;
            }
            let next = Shard {
                id: shard,
                home: to.clone(),
                state: ShardState::Active,
                epoch: cur.epoch + 1,
            };
            // As in a planned flip: the survivor's fence opens ahead of the
            // CAS, so the writes the routers release on seeing it pass.
            let site = snap_site(store, &to).await?;
            if let Err(e) = sites.open_fence_ahead(&site, shard, next.epoch).await {
                if e.retryable && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                return Err(e.into());
            }
            match store
                .cas_shard_as(cur.epoch, &next, Transition::Forced)
                .await
            {
                Ok(_) => break next.epoch,
                Err(StoreError::StaleEpoch { .. }) => continue,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        observe(Progress::StepDone {
            shard,
            label: text,
            took: started.elapsed(),
        });
        opened.push((shard, before, after));
    }
    let snap = store.load().await?;
    let target = snap
        .topology
        .sites
        .get(&to)
        .ok_or_else(|| DriveError::Refused {
            shard: 0,
            detail: format!("site {to} is not in the topology"),
        })?;
    let (divergence_lsn, divergence_error) = match sites.applied_from(target, &from).await {
        Ok(lsn) => (lsn, None),
        Err(e) => (None, Some(e.to_string())),
    };
    record.shards = opened;
    record.divergence_lsn = divergence_lsn;
    record.divergence_error = divergence_error;
    record.opened = true;
    write_forced(store, &record).await?;
    // Open the survivor's fence now rather than when its replicator notices.
    let started = tokio::time::Instant::now();
    let text = format!("open {to}'s fence");
    observe(Progress::Step {
        shard: 0,
        label: text.clone(),
    });
    let deadline = started + opts.timeout;
    loop {
        match sites.sync_fence(target, &snap.topology).await {
            Ok(()) => break,
            Err(e) if e.retryable && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    observe(Progress::StepDone {
        shard: 0,
        label: text,
        took: started.elapsed(),
    });
    Ok(record)
}

#[cfg(test)]
pub(crate) mod tests;
