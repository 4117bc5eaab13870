//! A workload generator for the order service: places orders through one or
//! more routers at a paced rate, retries each order (the same id) through
//! transient failures until a deadline, and records every order's outcome so
//! a test, the demo or a benchmark can check what was acknowledged.
//!
//! - **Pacing** is open-loop-ish: order `n` is due at `n / rate_per_sec`
//!   after the start, whatever earlier orders are doing, but at most
//!   `concurrency` orders are in flight; when all are busy the next due
//!   order waits for a slot, then the backlog is sent as fast as slots free.
//! - **Targets** are taken round-robin by order number; a retry moves on to
//!   the next target (a dead router does not hold an order back).
//! - **Retries**: 502, 503, 504, a connection error or an attempt timeout
//!   retry the *same* id (the service is idempotent by id, so a write whose
//!   answer was lost is answered 200 with the stored row on retry), with
//!   backoff from [`FIRST_BACKOFF`] doubling to [`MAX_BACKOFF`] (a
//!   `Retry-After` shorter than that is honoured; a longer one is capped),
//!   until `retry_deadline` after the first attempt. Any other status is final.
//! - **Determinism**: order `n`'s id is `{id_prefix}-{seed:x}-{n}` and its
//!   city, user, item and amount come from `seed` and `n` alone
//!   ([`WorkloadSpec::planned`]), whatever the timing.
//! - **Latency** of an order runs from its first attempt to its final answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Request, StatusCode};
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
}

/// Default [`WorkloadSpec::rate_per_sec`].
pub const DEFAULT_RATE_PER_SEC: u32 = 100;
/// Default [`WorkloadSpec::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Default [`WorkloadSpec::retry_deadline`].
pub const DEFAULT_RETRY_DEADLINE: Duration = Duration::from_secs(10);
/// Default [`WorkloadSpec::attempt_timeout`].
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// When order `n` is due, after the start.
    fn due(&self, n: u64) -> Duration {
        let nanos = u128::from(n) * 1_000_000_000 / u128::from(self.rate_per_sec.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// One order's fate.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub id: String,
    pub city: String,
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

/// Every order's outcome, in order of completion.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub outcomes: Vec<Outcome>,
    /// From the start to the last order's end.
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
    /// The orders acknowledged (final 2xx).
    pub fn acked(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.acked).collect()
    }

    /// The orders not acknowledged.
    pub fn failed(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| !o.acked).collect()
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

    /// Attempts beyond the first, over all orders.
    pub fn retries(&self) -> u64 {
        self.outcomes
            .iter()
            .map(|o| u64::from(o.attempts.saturating_sub(1)))
            .sum()
    }

    /// Acknowledged orders per second.
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

    /// The `q` quantile (0.0..=1.0) of acknowledged orders' latency.
    pub fn latency_percentile(&self, q: f64) -> Option<Duration> {
        quantile(&self.sorted_acked_latencies(), q)
    }

    /// p50/p90/p99/p99.9/max of acknowledged orders' latency.
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

    /// Per city, the longest latency of an order (acked or not) that was in
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

/// Live counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Orders started (first attempts).
    pub sent: u64,
    /// Orders finished with a 2xx.
    pub acked: u64,
    /// Orders finished otherwise.
    pub failed: u64,
    /// Retry attempts so far.
    pub retried: u64,
    /// Orders started and not finished.
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
        shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
        let s = shared.clone();
        tokio::spawn(async move {
            let outcome = place(&s, n).await;
            let c = &s.counters;
            if outcome.acked {
                c.acked.fetch_add(1, Ordering::Relaxed);
            } else {
                c.failed.fetch_add(1, Ordering::Relaxed);
            }
            s.outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(outcome);
            c.in_flight.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        n += 1;
    }
}

/// One attempt's result.
enum Attempt {
    Answered {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: Bytes,
    },
    NoAnswer,
}

async fn attempt(s: &Shared, target: SocketAddr, order: &PlannedOrder, body: &Bytes) -> Attempt {
    let mut builder =
        Request::post(format!("http://{target}/orders")).header(CONTENT_TYPE, "application/json");
    // The city was checked as a header value in validate().
    if let Ok(v) = HeaderValue::from_str(&order.city) {
        builder = builder.header(X_CITY_ID, v);
    }
    for (k, v) in &s.headers {
        builder = builder.header(k.clone(), v.clone());
    }
    let Ok(req) = builder.body(Full::new(body.clone())) else {
        return Attempt::NoAnswer;
    };
    let exchange = async {
        let resp = s.client.request(req).await.ok()?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(Attempt::Answered {
            status,
            retry_after,
            body,
        })
    };
    tokio::time::timeout(s.spec.attempt_timeout, exchange)
        .await
        .ok()
        .flatten()
        .unwrap_or(Attempt::NoAnswer)
}

fn retryable(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// A short reason for a retried attempt: the status and the service's
/// `error` field (or the start of the body: a router's own answer is text).
fn retry_reason(status: Option<StatusCode>, body: &[u8]) -> String {
    let Some(status) = status else {
        return "no answer".into();
    };
    let detail = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(60)])
                .trim()
                .to_string()
        });
    format!("{} {detail}", status.as_u16())
}

/// Places order `n`, retrying the same id until acked, refused for good, or
/// past the retry deadline.
async fn place(s: &Shared, n: u64) -> Outcome {
    let order = s.spec.planned(n);
    let body = Bytes::from(
        serde_json::json!({
            "id": order.id,
            "user": order.user,
            "item": order.item,
            "amount_cents": order.amount_cents,
        })
        .to_string(),
    );
    s.counters.sent.fetch_add(1, Ordering::Relaxed);
    let first = Instant::now();
    let targets = &s.spec.targets;
    let mut attempts: u32 = 0;
    let mut backoff = FIRST_BACKOFF;
    let mut retried_on = Vec::new();
    loop {
        let target = targets[((n + u64::from(attempts)) % targets.len() as u64) as usize];
        attempts += 1;
        let (status, retry_after, answer) = match attempt(s, target, &order, &body).await {
            Attempt::Answered {
                status,
                retry_after,
                body,
            } => (Some(status), retry_after, body),
            Attempt::NoAnswer => (None, None, Bytes::new()),
        };
        let again = status.is_none_or(retryable);
        let wait = retry_after.map_or(backoff, |r| r.min(backoff));
        if again && first.elapsed() + wait < s.spec.retry_deadline {
            s.counters.retried.fetch_add(1, Ordering::Relaxed);
            retried_on.push(retry_reason(status, &answer));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        let acked = status.is_some_and(|s| s.is_success());
        return Outcome {
            id: order.id,
            city: order.city,
            target,
            started: first.duration_since(s.start),
            latency: first.elapsed(),
            attempts,
            status: status.map_or(0, |s| s.as_u16()),
            acked,
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
        ];
        for (s, want) in bad {
            assert_eq!(s.validate(), Err(want));
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
            target: SocketAddr::from(([127, 0, 0, 1], 9)),
            started: Duration::from_millis(started_ms),
            latency: Duration::from_millis(latency_ms),
            attempts: if acked { 1 } else { 3 },
            status: if acked { 201 } else { 503 },
            acked,
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
    }
}
