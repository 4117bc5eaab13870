//! A workload generator for the order service: places orders through one or
//! more routers at a paced rate, retries each order (the same id) through
//! transient failures until a deadline, optionally changes the status of
//! acknowledged orders with PATCHes, and records every request's outcome so
//! a test, the demo, a benchmark or the chaos checker can check what was
//! acknowledged.
//!
//! - **Pacing** is open-loop-ish: order `n` is due at `n / rate_per_sec`
//!   after the start, whatever earlier orders are doing, but at most
//!   `concurrency` orders are in flight; when all are busy the next due
//!   order waits for a slot, then the backlog is sent as fast as slots free.
//! - **Targets** are taken round-robin by order number (an order's k-th
//!   PATCH starts k targets further); a retry moves on to the next target
//!   (a dead router does not hold an order back).
//! - **Retries**: 502, 503, 504, a connection error or an attempt timeout
//!   retry the *same* id (the service is idempotent by id, so a write whose
//!   answer was lost is answered 200 with the stored row on retry), with
//!   backoff from [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`] (a
//!   `Retry-After` shorter than that is honoured; a longer one is capped),
//!   until `retry_deadline` after the first attempt. Any other status is final.
//! - **Determinism**: order `n`'s id is `{id_prefix}-{seed:x}-{n}` and its
//!   city, user, item and amount come from `seed` and `n` alone
//!   ([`WorkloadSpec::planned`]), whatever the timing.
//! - **Latency** of a request runs from its first attempt to its final answer.
//! - **PATCH traffic** (`patch_ratio` > 0): after an order's create is
//!   acknowledged, the same task sends it 1 to `max_patches` `PATCH
//!   /orders/{id}` (`{"status": S}`, each S differing from the one before),
//!   each after a short pause, with the creates' retry rules (a PATCH sets
//!   the status, so resending it is safe). Which orders get PATCHes, how
//!   many, their statuses and pauses follow from `seed` and `n` alone
//!   ([`WorkloadSpec::planned_patches`]). An order holds its concurrency
//!   slot through its PATCHes; after [`Workload::stop`] no new PATCH starts.
//! - **The history** has one [`Outcome`] per request (create or PATCH), and
//!   says per request whether some attempt's fate is unknown (the write may
//!   have been applied though no 2xx came back: [`Outcome::unanswered`]), so
//!   a checker can tell a write refused for good from one in doubt.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http::{valid_id, X_CITY_ID};

/// The first retry's backoff.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest backoff between two attempts of one order.
pub const MAX_BACKOFF: Duration = Duration::from_millis(200);
/// The longest `id_prefix`.
pub const MAX_PREFIX_LEN: usize = 64;
/// The items orders are drawn from.
pub const ITEMS: [&str; 8] = [
    "dumplings",
    "noodles",
    "rice",
    "tea",
    "buns",
    "hotpot",
    "congee",
    "duck",
];
/// Users per run are drawn from `u0 .. u{USERS-1}`.
pub const USERS: u64 = 10_000;
/// The statuses PATCHes set (the service takes any short text; these read
/// like an order's life, and none is the service's initial `placed`).
pub const PATCH_STATUSES: [&str; 5] = [
    "accepted",
    "cooking",
    "delivering",
    "delivered",
    "cancelled",
];
/// The shortest pause before a PATCH (after the previous request's answer).
pub const PATCH_PAUSE_MIN: Duration = Duration::from_millis(20);
/// The longest pause before a PATCH.
pub const PATCH_PAUSE_MAX: Duration = Duration::from_millis(200);
/// Mixed into an order's draw for its PATCHes, so that they do not
/// correlate with its values.
const PATCH_SALT: u64 = 0x5041_5443_4845_5321;

/// What to run.
#[derive(Debug, Clone)]
pub struct WorkloadSpec {
    /// Routers (or order services); requests spread round-robin.
    pub targets: Vec<SocketAddr>,
    /// City ids (the shard key, sent as `x-city-id`); each order picks one.
    pub cities: Vec<String>,
    /// Orders started per second, in total.
    pub rate_per_sec: u32,
    /// At most this many orders in flight.
    pub concurrency: usize,
    /// Keep retrying the same id on 502/503/504/connection errors until this
    /// long after its first attempt.
    pub retry_deadline: Duration,
    /// Everything the orders hold follows from this and the order number.
    pub seed: u64,
    /// Ids are `{id_prefix}-{seed:x}-{n}`: use a fresh prefix per run.
    pub id_prefix: String,
    /// Headers added to every request (e.g. `x-ezone-shard`/`x-ezone-epoch`
    /// when driving an order service directly, without a router).
    pub extra_headers: Vec<(String, String)>,
    /// One attempt's limit (connect, request, response body).
    pub attempt_timeout: Duration,
    /// Stop starting orders after this many (`None`: until [`Workload::stop`]).
    pub limit: Option<u64>,
    /// The share (0.0 to 1.0) of acknowledged orders that then get status
    /// PATCHes; 0 (the default): creates only.
    pub patch_ratio: f64,
    /// An order that gets PATCHes gets 1 to this many (at least 1 when
    /// `patch_ratio` > 0).
    pub max_patches: u32,
}

/// Default [`WorkloadSpec::rate_per_sec`].
pub const DEFAULT_RATE_PER_SEC: u32 = 100;
/// Default [`WorkloadSpec::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default [`WorkloadSpec::retry_deadline`].
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(10);
/// Default [`WorkloadSpec::attempt_timeout`].
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`WorkloadSpec::max_patches`].
pub const DEFAULT_MAX_PATCHES: u32 = 3;

impl Default for WorkloadSpec {
    /// No targets (set them); the two starter cities `010` and `021`.
    fn default() -> Self {
        WorkloadSpec {
            targets: Vec::new(),
            cities: vec!["010".into(), "021".into()],
            rate_per_sec: DEFAULT_RATE_PER_SEC,
            concurrency: DEFAULT_CONCURRENCY,
            retry_deadline: DEFAULT_RETRY_DEADLINE,
            seed: 1,
            id_prefix: "wl".into(),
            extra_headers: Vec::new(),
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            limit: None,
            patch_ratio: 0.0,
            max_patches: DEFAULT_MAX_PATCHES,
        }
    }
}

/// A spec that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload: targets is empty; give at least one router address")]
    NoTargets,
    #[error("workload: cities is empty; give at least one city id")]
    NoCities,
    #[error("workload: city {0:?} is not a valid x-city-id header value")]
    BadCity(String),
    #[error("workload: rate_per_sec is 0; give the orders per second to start")]
    ZeroRate,
    #[error("workload: concurrency is 0; give how many orders may be in flight")]
    ZeroConcurrency,
    #[error("workload: id_prefix {0:?} must be 1 to 64 of A-Z a-z 0-9 . _ : -")]
    BadPrefix(String),
    #[error("workload: extra header {0:?} is not a valid header name and value")]
    BadHeader(String),
    /// The ratio as text (an `f64` is not `Eq`).
    #[error("workload: patch_ratio {0} is not between 0 and 1; give the share of orders that get status PATCHes (0 for none)")]
    BadPatchRatio(String),
    #[error("workload: max_patches is 0 but patch_ratio is above 0; give at least 1, or set patch_ratio to 0")]
    ZeroMaxPatches,
}

/// Order `n` of a workload, as planned (before it is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedOrder {
    pub id: String,
    pub city: String,
    pub user: String,
    pub item: String,
    pub amount_cents: i64,
}

/// One PATCH of an order, as planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPatch {
    /// The status it sets.
    pub status: String,
    /// The pause before it is sent, after the previous request's answer.
    pub pause: Duration,
}

/// splitmix64: a tiny, well-mixed, portable generator step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl WorkloadSpec {
    /// Checks the spec.
    pub fn validate(&self) -> Result<(), WorkloadError> {
        if self.targets.is_empty() {
            return Err(WorkloadError::NoTargets);
        }
        if self.cities.is_empty() {
            return Err(WorkloadError::NoCities);
        }
        if let Some(c) = self
            .cities
            .iter()
            .find(|c| c.is_empty() || HeaderValue::from_str(c).is_err())
        {
            return Err(WorkloadError::BadCity(c.clone()));
        }
        if self.rate_per_sec == 0 {
            return Err(WorkloadError::ZeroRate);
        }
        if self.concurrency == 0 {
            return Err(WorkloadError::ZeroConcurrency);
        }
        if self.id_prefix.len() > MAX_PREFIX_LEN || !valid_id(&self.id_prefix) {
            return Err(WorkloadError::BadPrefix(self.id_prefix.clone()));
        }
        // Written so that NaN is refused too.
        if !(0.0..=1.0).contains(&self.patch_ratio) {
            return Err(WorkloadError::BadPatchRatio(self.patch_ratio.to_string()));
        }
        if self.patch_ratio > 0.0 && self.max_patches == 0 {
            return Err(WorkloadError::ZeroMaxPatches);
        }
        self.headers().map(|_| ())
    }

    fn headers(&self) -> Result<Vec<(HeaderName, HeaderValue)>, WorkloadError> {
        self.extra_headers
            .iter()
            .map(|(k, v)| {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(k), Ok(v)) => Ok((k, v)),
                    _ => Err(WorkloadError::BadHeader(format!("{k}: {v}"))),
                }
            })
            .collect()
    }

    /// Order `n`: its id and values, from `seed` and `n` alone.
    pub fn planned(&self, n: u64) -> PlannedOrder {
        let r = mix(self.seed ^ mix(n));
        let city = match self.cities.len() {
            0 => String::new(),
            len => self.cities[(r % len as u64) as usize].clone(),
        };
        let r2 = mix(r);
        PlannedOrder {
            id: format!("{}-{:x}-{n}", self.id_prefix, self.seed),
            city,
            user: format!("u{}", r2 % USERS),
            item: ITEMS[((r2 >> 32) % ITEMS.len() as u64) as usize].to_string(),
            amount_cents: 100 + ((r2 >> 16) % 9_900) as i64,
        }
    }

    /// The PATCHes order `n` gets once its create is acknowledged (none for
    /// most orders when `patch_ratio` is small), from `seed` and `n` alone.
    /// Each sets a status other than the one before it.
    pub fn planned_patches(&self, n: u64) -> Vec<PlannedPatch> {
        let p = mix(mix(self.seed ^ mix(n)) ^ PATCH_SALT);
        // The top 53 bits as a uniform draw in [0, 1).
        let draw = (p >> 11) as f64 / (1u64 << 53) as f64;
        if self.max_patches == 0 || draw >= self.patch_ratio {
            return Vec::new();
        }
        let count = 1 + mix(p) % u64::from(self.max_patches);
        let statuses = PATCH_STATUSES.len() as u64;
        let pause_span = (PATCH_PAUSE_MAX - PATCH_PAUSE_MIN).as_millis() as u64 + 1;
        let mut prev: Option<u64> = None;
        (0..count)
            .map(|k| {
                let q = mix(p ^ mix(k + 1));
                let i = match prev {
                    None => q % statuses,
                    // Any of the others: never the same status twice in a row.
                    Some(prev) => (prev + 1 + q % (statuses - 1)) % statuses,
                };
                prev = Some(i);
                PlannedPatch {
                    status: PATCH_STATUSES[i as usize].to_string(),
                    pause: PATCH_PAUSE_MIN + Duration::from_millis((q >> 32) % pause_span),
                }
            })
            .collect()
    }

    /// When order `n` is due, after the start.
    fn due(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate_per_sec.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// What a request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `POST /orders` with these values.
    Create {
        user: String,
        item: String,
        amount_cents: i64,
    },
    /// `PATCH /orders/{id}` setting this status.
    Patch { status: String },
}

impl Op {
    /// `"create"` or `"patch"`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Patch { .. } => "patch",
        }
    }

    /// The request body (the order's id is added for a create).
    fn body(&self, id: &str) -> serde_json::Value {
        match self {
            Op::Create {
                user,
                item,
                amount_cents,
            } => serde_json::json!({
                "id": id, "user": user, "item": item, "amount_cents": amount_cents,
            }),
            Op::Patch { status } => serde_json::json!({ "status": status }),
        }
    }
}

/// One request's fate (a create or a PATCH, with all its attempts).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub city: String,
    pub op: Op,
    /// Where the final attempt went.
    pub target: SocketAddr,
    /// The first attempt, after the workload's start.
    pub started: Duration,
    /// First attempt to final answer.
    pub latency: Duration,
    pub attempts: u32,
    /// The final status; 0 when the final attempt got no answer.
    pub status: u16,
    /// The final status was 2xx.
    pub acked: bool,
    /// Attempts whose fate is unknown: the write may have been applied,
    /// and may even be applied later (a router or service may still hold
    /// it). No answer on a connection that was open (a refused connection
    /// sent nothing), 502, 504, 503 `database_unavailable` (the COMMIT's
    /// answer may be what was lost) and other 5xx. Other answers (4xx,
    /// the fence's and the router's own 503s) say nothing was applied.
    pub unanswered: u32,
    /// Why each earlier attempt was retried: `503 fenced`, `no answer`, ...
    pub retried_on: Vec<String>,
    /// The stored row the service answered with, on ack.
    pub body: Option<serde_json::Value>,
}

impl Outcome {
    /// When the final answer came, after the workload's start.
    pub fn finished(&self) -> Duration {
        self.started + self.latency
    }

    /// Not acknowledged, but some attempt may have been applied: neither
    /// acknowledged nor refused for good.
    pub fn in_doubt(&self) -> bool {
        !self.acked && self.unanswered > 0
    }

    /// A create (`POST /orders`).
    pub fn is_create(&self) -> bool {
        matches!(self.op, Op::Create { .. })
    }

    /// The request as one line of a run's history: `id`, `op` (`create`,
    /// `patch`), `sent` (the body's values: user, item and amount of a
    /// create, the status a PATCH sets), `city`, `router` (where the final
    /// attempt went), `invoke_ms` and `complete_ms` (first attempt and
    /// final answer, after the workload's start), `attempts`, `status`
    /// (the final HTTP status, 0 for none), `acked`, `in_doubt`,
    /// `unanswered`, `retried_on` and `body` (the row answered, on ack).
    pub fn to_json(&self) -> serde_json::Value {
        let mut sent = self.op.body(&self.id);
        if let Some(m) = sent.as_object_mut() {
            m.remove("id");
        }
        serde_json::json!({
            "id": self.id,
            "op": self.op.name(),
            "sent": sent,
            "city": self.city,
            "router": self.target.to_string(),
            "invoke_ms": self.started.as_secs_f64() * 1e3,
            "complete_ms": self.finished().as_secs_f64() * 1e3,
            "attempts": self.attempts,
            "status": self.status,
            "acked": self.acked,
            "in_doubt": self.in_doubt(),
            "unanswered": self.unanswered,
            "retried_on": self.retried_on,
            "body": self.body,
        })
    }
}

/// Latency percentiles of a set of outcomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latencies {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
}

/// Every request's outcome (creates and PATCHes), in order of completion.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub outcomes: Vec<Outcome>,
    /// From the start to the last request's end.
    pub elapsed: Duration,
}

/// The nearest-rank `q` quantile (0.0..=1.0) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let q = q.clamp(0.0, 1.0);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl History {
    /// The requests acknowledged (final 2xx): creates and PATCHes.
    pub fn acked(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.acked).collect()
    }

    /// The creates acknowledged: the orders that must exist.
    pub fn acked_creates(&self) -> Vec<&Outcome> {
        self.outcomes
            .iter()
            .filter(|o| o.acked && o.is_create())
            .collect()
    }

    /// The requests not acknowledged.
    pub fn failed(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.acked).collect()
    }

    /// The requests neither acknowledged nor refused for good.
    pub fn in_doubt(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.in_doubt()).collect()
    }

    /// The PATCHes (acknowledged or not).
    pub fn patches(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.is_create()).collect()
    }

    /// How often each retry reason occurred, most frequent first.
    pub fn retry_reasons(&self) -> Vec<(String, usize)> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for o in &self.outcomes {
            for r in &o.retried_on {
                *counts.entry(r.clone()).or_default() += 1;
            }
        }
        let mut v: Vec<(String, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    /// Attempts beyond the first, over all requests.
    pub fn retries(&self) -> u64 {
        self.outcomes
            .iter()
            .map(|o| u64::from(o.attempts.saturating_sub(1)))
            .sum()
    }

    /// Acknowledged requests per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.acked().len() as f64 / secs
        } else {
            0.0
        }
    }

    fn sorted_acked_latencies(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = self.acked().iter().map(|o| o.latency).collect();
        v.sort_unstable();
        v
    }

    /// The `q` quantile (0.0..=1.0) of acknowledged requests' latency.
    pub fn latency_percentile(&self, q: f64) -> Option<Duration> {
        quantile(&self.sorted_acked_latencies(), q)
    }

    /// p50/p90/p99/p99.9/max of acknowledged requests' latency.
    pub fn latencies(&self) -> Option<Latencies> {
        let v = self.sorted_acked_latencies();
        Some(Latencies {
            count: v.len(),
            p50: quantile(&v, 0.50)?,
            p90: quantile(&v, 0.90)?,
            p99: quantile(&v, 0.99)?,
            p999: quantile(&v, 0.999)?,
            max: *v.last()?,
        })
    }

    /// Per city, the longest latency of a request (acked or not) that was in
    /// flight at some point of `[from, to)` (times after the start): e.g. the
    /// write-hold a switchover caused for that city.
    pub fn max_latency_by_city(&self, from: Duration, to: Duration) -> BTreeMap<String, Duration> {
        let mut out: BTreeMap<String, Duration> = BTreeMap::new();
        for o in &self.outcomes {
            if o.started < to && o.finished() >= from {
                let e = out.entry(o.city.clone()).or_default();
                *e = (*e).max(o.latency);
            }
        }
        out
    }
}

/// Live counters, of requests (creates and PATCHes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests started (first attempts).
    pub sent: u64,
    /// Requests finished with a 2xx.
    pub acked: u64,
    /// Requests finished otherwise.
    pub failed: u64,
    /// Retry attempts so far.
    pub retried: u64,
    /// Requests started and not finished.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    in_flight: AtomicU64,
}

/// A cloneable handle on a workload's live counters (for a progress line).
#[derive(Debug, Clone)]
pub struct ProgressHandle(Arc<Counters>);

impl ProgressHandle {
    pub fn get(&self) -> Progress {
        let c = &self.0;
        Progress {
            sent: c.sent.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            in_flight: c.in_flight.load(Ordering::Relaxed),
        }
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Shared by the dispatcher and every order task.
struct Shared {
    spec: WorkloadSpec,
    headers: Vec<(HeaderName, HeaderValue)>,
    client: HttpClient,
    start: Instant,
    counters: Arc<Counters>,
    outcomes: Mutex<Vec<Outcome>>,
}

/// A running workload (its tasks run on the current tokio runtime).
pub struct Workload {
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    stop: watch::Sender<bool>,
    dispatcher: JoinHandle<()>,
}

impl Workload {
    /// Checks the spec and starts placing orders. Must be called on a tokio
    /// runtime.
    pub fn start(spec: WorkloadSpec) -> Result<Workload, WorkloadError> {
        spec.validate()?;
        let headers = spec.headers()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.attempt_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(spec.concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let slots = Arc::new(Semaphore::new(spec.concurrency));
        let shared = Arc::new(Shared {
            spec,
            headers,
            client,
            start: Instant::now(),
            counters: Arc::new(Counters::default()),
            outcomes: Mutex::new(Vec::new()),
        });
        let (stop, stop_rx) = watch::channel(false);
        let dispatcher = tokio::spawn(dispatch(shared.clone(), slots.clone(), stop_rx));
        Ok(Workload {
            shared,
            slots,
            stop,
            dispatcher,
        })
    }

    /// The counters now.
    pub fn progress(&self) -> Progress {
        self.progress_handle().get()
    }

    /// A handle on the counters that outlives borrowing the workload.
    pub fn progress_handle(&self) -> ProgressHandle {
        ProgressHandle(self.shared.counters.clone())
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.shared.start.elapsed()
    }

    /// Stops starting orders, waits for those in flight to finish (each
    /// within its retry deadline) and returns the history.
    pub async fn stop(self) -> History {
        let _ = self.stop.send(true);
        self.collect().await
    }

    /// Waits until `limit` orders have been started and all have finished,
    /// then returns the history. Without a limit this is [`Workload::stop`].
    pub async fn finish(self) -> History {
        if self.shared.spec.limit.is_none() {
            return self.stop().await;
        }
        self.collect().await
    }

    async fn collect(self) -> History {
        if let Err(e) = self.dispatcher.await {
            tracing::warn!(error = %e, "The workload dispatcher ended abnormally.");
        }
        // Every order task holds a slot until its outcome is recorded.
        let all = u32::try_from(self.shared.spec.concurrency).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
        let elapsed = self.shared.start.elapsed();
        let outcomes = std::mem::take(
            &mut *self
                .shared
                .outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        History { outcomes, elapsed }
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Starts order `n` when it is due and a slot is free, until stopped or the
/// limit is reached.
async fn dispatch(shared: Arc<Shared>, slots: Arc<Semaphore>, mut stop: watch::Receiver<bool>) {
    let mut n: u64 = 0;
    loop {
        if shared.spec.limit.is_some_and(|l| n >= l) || *stop.borrow() {
            return;
        }
        let due = shared.start + shared.spec.due(n);
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = stopped(&mut stop) => return,
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stopped(&mut stop) => return,
        };
        let s = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            run_order(&s, n, stop).await;
            // The slot is held until every outcome of the order is recorded.
            drop(permit);
        });
        n += 1;
    }
}

/// Order `n`: its create, then (once acknowledged) its planned PATCHes,
/// each outcome recorded as it ends. No PATCH starts after a stop.
async fn run_order(s: &Shared, n: u64, mut stop: watch::Receiver<bool>) {
    let order = s.spec.planned(n);
    let create = Op::Create {
        user: order.user.clone(),
        item: order.item.clone(),
        amount_cents: order.amount_cents,
    };
    if !record(s, send(s, n, &order, create).await) {
        return;
    }
    for (k, p) in (1..).zip(s.spec.planned_patches(n)) {
        tokio::select! {
            _ = tokio::time::sleep(p.pause) => {}
            _ = stopped(&mut stop) => return,
        }
        if *stop.borrow() {
            return;
        }
        // The first attempt of PATCH k goes k targets further than the
        // create's: an order's requests cross every router.
        record(
            s,
            send(s, n + k, &order, Op::Patch { status: p.status }).await,
        );
    }
}

/// Counts and keeps an outcome; whether it was acknowledged.
fn record(s: &Shared, outcome: Outcome) -> bool {
    let acked = outcome.acked;
    let c = &s.counters;
    if acked {
        c.acked.fetch_add(1, Ordering::Relaxed);
    } else {
        c.failed.fetch_add(1, Ordering::Relaxed);
    }
    s.outcomes
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(outcome);
    c.in_flight.fetch_sub(1, Ordering::Relaxed);
    acked
}

/// One attempt's result.
enum Attempt {
    Answered {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    /// No answer; `sent`: the request may have reached the server (false
    /// only when the connection was refused or never made).
    NoAnswer { sent: bool },
}

async fn attempt(s: &Shared, target: SocketAddr, req: &Outgoing<'_>) -> Attempt {
    let mut builder = Request::builder()
        .method(req.method.clone())
        .uri(format!("http://{target}{}", req.path))
        .header(CONTENT_TYPE, "application/json");
    // The city was checked as a header value in validate().
    if let Ok(v) = HeaderValue::from_str(req.city) {
        builder = builder.header(X_CITY_ID, v);
    }
    for (k, v) in &s.headers {
        builder = builder.header(k.clone(), v.clone());
    }
    let Ok(request) = builder.body(Full::new(req.body.clone())) else {
        return Attempt::NoAnswer { sent: false };
    };
    let exchange = async {
        let resp = match s.client.request(request).await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::NoAnswer {
                    sent: !e.is_connect(),
                }
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        match resp.into_body().collect().await {
            Ok(body) => Attempt::Answered {
                status,
                retry_after,
                body: body.to_bytes(),
            },
            Err(_) => Attempt::NoAnswer { sent: true },
        }
    };
    tokio::time::timeout(s.spec.attempt_timeout, exchange)
        .await
        .unwrap_or(Attempt::NoAnswer { sent: true })
}

fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The order service's `error` field of a JSON answer.
fn service_error(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("error")?
        .as_str()
        .map(str::to_string)
}

/// Whether a write whose attempt got this (not a 2xx) may still have been
/// applied. No answer once the request may have been sent, a router's 502
/// or 504 (its upstream may have the write), the service's 503
/// `database_unavailable` (a lost COMMIT answer looks like this) and any
/// other 5xx (a 500 may come after the COMMIT). Refused for good: 4xx, and
/// the other 503s: the fence's refusal (rolled back), `shard_mismatch`, and
/// the router's own (held past the deadline, no upstream, no topology:
/// nothing was forwarded).
fn fate_unknown(status: Option<StatusCode>, sent: bool, body: &[u8]) -> bool {
    match status {
        None => sent,
        Some(s) if s.is_success() => false,
        Some(StatusCode::SERVICE_UNAVAILABLE) => {
            service_error(body).as_deref() == Some("database_unavailable")
        }
        Some(s) => s.is_server_error(),
    }
}

/// A short reason for a retried attempt: the status and the service's
/// `error` field (or the start of the body: a router's own answer is text).
fn retry_reason(status: Option<StatusCode>, body: &[u8]) -> String {
    let Some(status) = status else {
        return "no answer".into();
    };
    let detail = service_error(body).unwrap_or_else(|| {
        String::from_utf8_lossy(&body[..body.len().min(60)])
            .trim()
            .to_string()
    });
    format!("{} {detail}", status.as_u16())
}

/// A request ready to send (every attempt sends the same).
struct Outgoing<'a> {
    method: Method,
    path: String,
    city: &'a str,
    body: Bytes,
}

/// Sends one request of `order` (its create, or a PATCH), retrying until
/// acked, refused for good, or past the retry deadline. Attempt `a` goes to
/// target `base + a` (round-robin).
async fn send(s: &Shared, base: u64, order: &PlannedOrder, op: Op) -> Outcome {
    let (method, path) = match op {
        Op::Create { .. } => (Method::POST, "/orders".to_string()),
        // Ids are checked characters only (valid_id): no escaping needed.
        Op::Patch { .. } => (Method::PATCH, format!("/orders/{}", order.id)),
    };
    let req = Outgoing {
        method,
        path,
        city: &order.city,
        body: Bytes::from(op.body(&order.id).to_string()),
    };
    s.counters.sent.fetch_add(1, Ordering::Relaxed);
    s.counters.in_flight.fetch_add(1, Ordering::Relaxed);
    let first = Instant::now();
    let targets = &s.spec.targets;
    let mut attempts: u32 = 0;
    let mut unanswered: u32 = 0;
    let mut backoff = ezone_topology::backoff::Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut retried_on = Vec::new();
    loop {
        let target = targets[((base + u64::from(attempts)) % targets.len() as u64) as usize];
        attempts += 1;
        let (status, retry_after, answer, sent) = match attempt(s, target, &req).await {
            Attempt::Answered {
                status,
                retry_after,
                body,
            } => (Some(status), retry_after, body, true),
            Attempt::NoAnswer { sent } => (None, None, Bytes::new(), sent),
        };
        if fate_unknown(status, sent, &answer) {
            unanswered += 1;
        }
        let again = status.is_none_or(retryable);
        let next = backoff.next_wait();
        let wait = retry_after.map_or(next, |r| r.min(next));
        if again && first.elapsed() + wait < s.spec.retry_deadline {
            s.counters.retried.fetch_add(1, Ordering::Relaxed);
            retried_on.push(retry_reason(status, &answer));
            tokio::time::sleep(wait).await;
            continue;
        }
        let acked = status.is_some_and(|s| s.is_success());
        return Outcome {
            id: order.id.clone(),
            city: order.city.clone(),
            op,
            target,
            started: first.duration_since(s.start),
            latency: first.elapsed(),
            attempts,
            status: status.map_or(0, |s| s.as_u16()),
            acked,
            unanswered,
            retried_on,
            body: if acked {
                serde_json::from_slice(&answer).ok()
            } else {
                None
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            targets: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            cities: vec!["010".into(), "021".into(), "0755".into()],
            ..WorkloadSpec::default()
        }
    }

    #[test]
    fn orders_follow_from_seed_and_number() {
        let a = spec();
        assert_eq!(a.planned(7), a.planned(7));
        assert_eq!(a.planned(7).id, "wl-1-7");
        let b = WorkloadSpec { seed: 2, ..spec() };
        assert_ne!(a.planned(7).id, b.planned(7).id);
        // Values vary across orders and every city is used.
        let cities: std::collections::BTreeSet<String> =
            (0..100).map(|n| a.planned(n).city).collect();
        assert_eq!(cities.len(), 3);
        for n in 0..100 {
            let o = a.planned(n);
            assert!(valid_id(&o.id));
            assert!((100..10_000).contains(&o.amount_cents));
        }
    }

    #[test]
    fn specs_are_checked() {
        assert!(spec().validate().is_ok());
        let bad = [
            (
                WorkloadSpec {
                    targets: vec![],
                    ..spec()
                },
                WorkloadError::NoTargets,
            ),
            (
                WorkloadSpec {
                    cities: vec![],
                    ..spec()
                },
                WorkloadError::NoCities,
            ),
            (
                WorkloadSpec {
                    rate_per_sec: 0,
                    ..spec()
                },
                WorkloadError::ZeroRate,
            ),
            (
                WorkloadSpec {
                    concurrency: 0,
                    ..spec()
                },
                WorkloadError::ZeroConcurrency,
            ),
            (
                WorkloadSpec {
                    id_prefix: "a b".into(),
                    ..spec()
                },
                WorkloadError::BadPrefix("a b".into()),
            ),
            (
                WorkloadSpec {
                    cities: vec!["a\nb".into()],
                    ..spec()
                },
                WorkloadError::BadCity("a\nb".into()),
            ),
            (
                WorkloadSpec {
                    extra_headers: vec![("bad name".into(), "v".into())],
                    ..spec()
                },
                WorkloadError::BadHeader("bad name: v".into()),
            ),
            (
                WorkloadSpec {
                    patch_ratio: 1.5,
                    ..spec()
                },
                WorkloadError::BadPatchRatio("1.5".into()),
            ),
            (
                WorkloadSpec {
                    patch_ratio: -0.1,
                    ..spec()
                },
                WorkloadError::BadPatchRatio("-0.1".into()),
            ),
            (
                WorkloadSpec {
                    patch_ratio: f64::NAN,
                    ..spec()
                },
                WorkloadError::BadPatchRatio("NaN".into()),
            ),
            (
                WorkloadSpec {
                    patch_ratio: 0.5,
                    max_patches: 0,
                    ..spec()
                },
                WorkloadError::ZeroMaxPatches,
            ),
        ];
        for (s, want) in bad {
            assert_eq!(s.validate(), Err(want));
        }
        // The bounds themselves are fine, and no PATCHes need no maximum.
        for (patch_ratio, max_patches) in [(0.0, 0), (1.0, 1), (0.0, 3)] {
            let s = WorkloadSpec {
                patch_ratio,
                max_patches,
                ..spec()
            };
            assert_eq!(s.validate(), Ok(()), "{patch_ratio} {max_patches}");
        }
        let msg = WorkloadError::BadPatchRatio("1.5".into()).to_string();
        assert!(
            msg.contains("patch_ratio 1.5") && msg.contains("0 for none"),
            "{msg}"
        );
    }

    #[test]
    fn patches_follow_from_seed_and_number() {
        let s = WorkloadSpec {
            patch_ratio: 0.5,
            ..spec()
        };
        let plans: Vec<Vec<PlannedPatch>> = (0..1000).map(|n| s.planned_patches(n)).collect();
        assert_eq!(plans[7], s.planned_patches(7), "the same twice");
        // About half the orders get PATCHes; 1 to 3 each, all three counts seen.
        let patched = plans.iter().filter(|p| !p.is_empty()).count();
        assert!((400..600).contains(&patched), "{patched}");
        let counts: std::collections::BTreeSet<usize> = plans
            .iter()
            .filter(|p| !p.is_empty())
            .map(Vec::len)
            .collect();
        assert_eq!(counts, [1, 2, 3].into_iter().collect());
        for plan in &plans {
            for (i, p) in plan.iter().enumerate() {
                assert!(PATCH_STATUSES.contains(&p.status.as_str()), "{p:?}");
                assert!(
                    (PATCH_PAUSE_MIN..=PATCH_PAUSE_MAX).contains(&p.pause),
                    "{p:?}"
                );
                if i > 0 {
                    assert_ne!(plan[i - 1].status, p.status, "{plan:?}");
                }
            }
        }
        // Every status and a spread of pauses are used.
        let statuses: std::collections::BTreeSet<&str> =
            plans.iter().flatten().map(|p| p.status.as_str()).collect();
        assert_eq!(statuses.len(), PATCH_STATUSES.len());
        let pauses: std::collections::BTreeSet<Duration> =
            plans.iter().flatten().map(|p| p.pause).collect();
        assert!(pauses.len() > 100, "{}", pauses.len());
        // Another seed, other PATCHes; the order's own values are unchanged.
        let t = WorkloadSpec {
            seed: 2,
            ..s.clone()
        };
        assert!((0..100).any(|n| t.planned_patches(n) != s.planned_patches(n)));
        let plain = spec();
        assert_eq!(plain.planned(7), s.planned(7));
    }

    #[test]
    fn patch_ratio_bounds_and_max() {
        let none = spec();
        assert!((0..1000).all(|n| none.planned_patches(n).is_empty()));
        let all = WorkloadSpec {
            patch_ratio: 1.0,
            max_patches: 1,
            ..spec()
        };
        assert!((0..1000).all(|n| all.planned_patches(n).len() == 1));
        let many = WorkloadSpec {
            patch_ratio: 1.0,
            max_patches: 10,
            ..spec()
        };
        assert!((0..1000).all(|n| (1..=10).contains(&many.planned_patches(n).len())));
    }

    #[test]
    fn an_unknown_fate_is_told_from_a_refusal() {
        let unavailable = br#"{"error":"database_unavailable","detail":"x"}"#;
        let fenced = br#"{"error":"fenced","detail":"x"}"#;
        let cases: [(Option<u16>, bool, &[u8], bool); 12] = [
            (None, true, b"", true),
            (None, false, b"", false),
            (Some(502), true, b"ezone: upstream failed", true),
            (Some(504), true, b"ezone: no response head", true),
            (Some(500), true, br#"{"error":"database_error"}"#, true),
            (Some(503), true, unavailable, true),
            (Some(503), true, fenced, false),
            (Some(503), true, br#"{"error":"shard_mismatch"}"#, false),
            (Some(503), true, b"ezone: shard 1 is being moved", false),
            (Some(404), true, b"", false),
            (Some(409), true, br#"{"error":"id_conflict"}"#, false),
            (Some(201), true, b"{}", false),
        ];
        for (status, sent, body, want) in cases {
            let status = status.map(|s| StatusCode::from_u16(s).expect("status"));
            assert_eq!(
                fate_unknown(status, sent, body),
                want,
                "{status:?} {}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn pacing_spreads_orders_over_the_second() {
        let s = WorkloadSpec {
            rate_per_sec: 4,
            ..spec()
        };
        assert_eq!(s.due(0), Duration::ZERO);
        assert_eq!(s.due(1), Duration::from_millis(250));
        assert_eq!(s.due(8), Duration::from_secs(2));
    }

    fn outcome(city: &str, started_ms: u64, latency_ms: u64, acked: bool) -> Outcome {
        Outcome {
            id: format!("{city}-{started_ms}"),
            city: city.into(),
            op: Op::Create {
                user: "u1".into(),
                item: "tea".into(),
                amount_cents: 100,
            },
            target: SocketAddr::from(([127, 0, 0, 1], 9)),
            started: Duration::from_millis(started_ms),
            latency: Duration::from_millis(latency_ms),
            attempts: if acked { 1 } else { 3 },
            status: if acked { 201 } else { 503 },
            acked,
            unanswered: 0,
            retried_on: Vec::new(),
            body: None,
        }
    }

    #[test]
    fn history_helpers() {
        let h = History {
            outcomes: vec![
                outcome("010", 0, 10, true),
                outcome("010", 100, 900, true),
                outcome("021", 150, 20, true),
                outcome("021", 2000, 30, false),
            ],
            elapsed: Duration::from_secs(3),
        };
        assert_eq!(h.acked().len(), 3);
        assert_eq!(h.failed().len(), 1);
        assert_eq!(h.retries(), 2);
        assert_eq!(h.throughput(), 1.0);
        assert_eq!(h.latency_percentile(0.5), Some(Duration::from_millis(20)));
        let l = h.latencies().expect("some");
        assert_eq!((l.count, l.max), (3, Duration::from_millis(900)));
        assert_eq!(l.p50, Duration::from_millis(20));
        // In flight during [500ms, 600ms): only the 010 order from 100..1000.
        let m = h.max_latency_by_city(Duration::from_millis(500), Duration::from_millis(600));
        assert_eq!(m.len(), 1);
        assert_eq!(m["010"], Duration::from_millis(900));
        assert!(History::default().latencies().is_none());
        assert_eq!(h.acked_creates().len(), 3);
        assert!(h.patches().is_empty() && h.in_doubt().is_empty());
    }

    #[test]
    fn patches_and_doubt_in_the_history() {
        let mut patch = outcome("010", 50, 10, true);
        patch.op = Op::Patch {
            status: "cooking".into(),
        };
        let mut doubt = outcome("021", 60, 10, false);
        doubt.unanswered = 1;
        let refused = outcome("021", 70, 10, false);
        let h = History {
            outcomes: vec![outcome("010", 0, 10, true), patch, doubt, refused],
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(h.acked().len(), 2, "creates and patches");
        assert_eq!(h.acked_creates().len(), 1);
        assert_eq!(h.patches().len(), 1);
        assert_eq!(h.in_doubt().len(), 1);
        assert_eq!(h.failed().len(), 2);
        // An acknowledged request is never in doubt, whatever its attempts.
        let mut acked = outcome("010", 0, 10, true);
        acked.unanswered = 2;
        assert!(!acked.in_doubt());
    }

    #[test]
    fn an_outcome_is_a_history_line() {
        let mut o = outcome("010", 1500, 250, false);
        o.op = Op::Patch {
            status: "delivered".into(),
        };
        o.unanswered = 1;
        o.retried_on = vec!["no answer".into()];
        let j = o.to_json();
        assert_eq!(j["id"], "010-1500");
        assert_eq!(j["op"], "patch");
        assert_eq!(j["sent"], serde_json::json!({"status": "delivered"}));
        assert_eq!(j["city"], "010");
        assert_eq!(j["router"], "127.0.0.1:9");
        assert_eq!(j["invoke_ms"], 1500.0);
        assert_eq!(j["complete_ms"], 1750.0);
        assert_eq!(j["attempts"], 3);
        assert_eq!(j["status"], 503);
        assert_eq!(j["acked"], false);
        assert_eq!(j["in_doubt"], true);
        assert_eq!(j["unanswered"], 1);
        assert_eq!(j["retried_on"], serde_json::json!(["no answer"]));
        assert!(j["body"].is_null());
        let c = outcome("021", 0, 5, true).to_json();
        assert_eq!(c["op"], "create");
        assert_eq!(
            c["sent"],
            serde_json::json!({"user": "u1", "item": "tea", "amount_cents": 100})
        );
        assert_eq!(c["in_doubt"], false);
    }

    /// A stand-in order service on loopback: records each request (method,
    /// path, body) and answers 201 to a create and 200 to a PATCH, except
    /// that the first PATCH it sees gets a 503 `fenced` (retried).
    async fn fake_service() -> (SocketAddr, Arc<Mutex<Vec<(String, String, String)>>>) {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use hyper_util::rt::TokioIo;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let body = req.into_body().collect().await?.to_bytes();
                            let body = String::from_utf8_lossy(&body).into_owned();
                            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                            let first_patch =
                                method == "PATCH" && log.iter().all(|(m, _, _)| m != "PATCH");
                            log.push((method.clone(), path, body.clone()));
                            let (status, answer) = match method.as_str() {
                                _ if first_patch => (503, r#"{"error":"fenced"}"#.to_string()),
                                "POST" => (201, body),
                                _ => (200, body),
                            };
                            let mut r = hyper::Response::new(Full::new(Bytes::from(answer)));
                            *r.status_mut() = StatusCode::from_u16(status).expect("status");
                            Ok::<_, hyper::Error>(r)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn acknowledged_orders_get_their_planned_patches() {
        let (addr, seen) = fake_service().await;
        let s = WorkloadSpec {
            targets: vec![addr],
            limit: Some(20),
            rate_per_sec: 1000,
            patch_ratio: 0.5,
            retry_deadline: Duration::from_secs(5),
            ..spec()
        };
        let plans: Vec<Vec<PlannedPatch>> = (0..20).map(|n| s.planned_patches(n)).collect();
        let w = Workload::start(s.clone()).expect("valid");
        let h = w.finish().await;
        let patches: usize = plans.iter().map(Vec::len).sum();
        assert!(patches > 0, "seed 1 patches some of 20 orders");
        assert_eq!(h.outcomes.len(), 20 + patches, "{h:?}");
        assert!(h.outcomes.iter().all(|o| o.acked), "{h:?}");
        assert_eq!(h.acked_creates().len(), 20);
        assert_eq!(h.retries(), 1, "the first PATCH was refused once");
        for (n, plan) in (0u64..).zip(&plans) {
            let id = s.planned(n).id;
            let sent: Vec<&Outcome> = h
                .outcomes
                .iter()
                .filter(|o| o.id == id && !o.is_create())
                .collect();
            let statuses: Vec<&str> = sent
                .iter()
                .map(|o| match &o.op {
                    Op::Patch { status } => status.as_str(),
                    Op::Create { .. } => "",
                })
                .collect();
            let planned: Vec<&str> = plan.iter().map(|p| p.status.as_str()).collect();
            assert_eq!(statuses, planned, "order {id}");
            // One after the other, each after its create.
            let create = h
                .outcomes
                .iter()
                .find(|o| o.id == id && o.is_create())
                .expect("create");
            let mut last = create.finished();
            for o in sent {
                assert!(o.started >= last, "order {id}: {o:?}");
                last = o.finished();
            }
        }
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        let (m, path, body) = seen.iter().find(|(m, _, _)| m == "PATCH").expect("a PATCH");
        assert_eq!(m, "PATCH");
        assert!(path.starts_with("/orders/wl-1-"), "{path}");
        let body: serde_json::Value = serde_json::from_str(body).expect("json");
        assert!(body["status"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn a_dead_target_fails_after_the_deadline_without_panicking() {
        // Port 9 (discard) on loopback: nothing listens; connections are refused.
        let s = WorkloadSpec {
            retry_deadline: Duration::from_millis(100),
            limit: Some(3),
            rate_per_sec: 1000,
            ..spec()
        };
        let w = Workload::start(s).expect("valid");
        let h = w.finish().await;
        assert_eq!(h.outcomes.len(), 3);
        assert!(h
            .outcomes
            .iter()
            .all(|o| !o.acked && o.status == 0 && o.attempts > 1));
        // Refused connections sent nothing: refused for good, not in doubt.
        assert!(h.outcomes.iter().all(|o| !o.in_doubt()), "{h:?}");
        // Creates only, and an unacknowledged order gets no PATCH.
        assert!(h.outcomes.iter().all(Outcome::is_create));
    }
}
