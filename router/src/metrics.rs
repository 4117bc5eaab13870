//! The router's metrics, exported as Prometheus text on the admin `/metrics`.
//!
//! One registry per router instance (no global state, so several routers can
//! run in one test process). Label sets are bounded: site and shard come from
//! the topology, status is an HTTP status code; city ids, user ids and paths
//! never become labels.
//!
//! The two metrics every request updates (`requests_total` and
//! `request_seconds`) are kept in one cell per worker thread and summed when
//! scraped ([`ShardedCounter`], [`ShardedHistogram`]): a shared counter or a
//! histogram behind one lock would have every worker write the same cache
//! line for every request.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::family::MetricConstructor;
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The site the request was sent to.
    pub site: String,
    /// The shard id, or `none` for requests routed without one.
    pub shard: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SiteLabels {
    pub site: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum HoldOutcome {
    /// The shard became active; the write was forwarded.
    Released,
    /// The deadline passed: 503 with Retry-After.
    Deadline,
    /// Too many held already: 503 at once.
    Overflow,
}

/// What became of a write a database fence refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum BounceOutcome {
    /// Sent again (to the shard's home after the flip).
    Resent,
    /// Its body streamed (too large to keep), or the shard did not move in
    /// time, or it bounced too often: the client got the refusal.
    Refused,
}

// Label values are lowercase, as Prometheus convention has them (the
// derive would write the variant's name).
macro_rules! lowercase_label {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl EncodeLabelValue for $t {
            fn encode(
                &self,
                e: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> std::fmt::Result {
                std::fmt::Write::write_str(e, match self { $(Self::$v => $s),+ })
            }
        }
    };
}

lowercase_label!(HoldOutcome {
    Released => "released",
    Deadline => "deadline",
    Overflow => "overflow",
});
lowercase_label!(BounceOutcome {
    Resent => "resent",
    Refused => "refused",
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BounceLabels {
    pub outcome: BounceOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    pub outcome: HoldOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabels {
    pub worker: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub site: String,
    pub endpoint: String,
}

/// The latency buckets: 0.5 ms .. ~16 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

fn latency() -> Histogram {
    Histogram::new(latency_buckets())
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter with one cell per worker (see the module docs).
#[derive(Debug, Clone)]
pub struct ShardedCounter {
    cells: Arc<[Padded<AtomicU64>]>,
}

impl ShardedCounter {
    fn new(shards: usize) -> ShardedCounter {
        ShardedCounter {
            cells: (0..shards.max(1)).map(|_| Padded::default()).collect(),
        }
    }

    /// Adds one in `shard`'s cell.
    pub fn inc(&self, shard: usize) {
        if let Some(c) = self.cells.get(shard % self.cells.len()) {
            c.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.cells.iter().map(|c| c.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One worker's cell of a [`ShardedHistogram`].
#[derive(Debug)]
struct HistogramCell {
    /// The sum of observations, as `f64` bits.
    sum: AtomicU64,
    count: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

/// A histogram with one cell per worker (see the module docs).
#[derive(Debug, Clone)]
pub struct ShardedHistogram {
    /// Upper bounds, the last one infinite.
    bounds: Arc<[f64]>,
    cells: Arc<[Padded<HistogramCell>]>,
}

impl ShardedHistogram {
    fn new(shards: usize, bounds: impl Iterator<Item = f64>) -> ShardedHistogram {
        let bounds: Arc<[f64]> = bounds
            .filter(|b| b.is_finite())
            .chain(std::iter::once(f64::INFINITY))
            .collect();
        let cells = (0..shards.max(1))
            .map(|_| {
                Padded(HistogramCell {
                    sum: AtomicU64::new(0f64.to_bits()),
                    count: AtomicU64::new(0),
                    buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
                })
            })
            .collect();
        ShardedHistogram { bounds, cells }
    }

    /// Records `v` in `shard`'s cell.
    pub fn observe(&self, shard: usize, v: f64) {
        let Some(Padded(c)) = self.cells.get(shard % self.cells.len()) else {
            return;
        };
        // Only this worker writes its cell: the update never loops.
        let _ = c
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
        c.count.fetch_add(1, Ordering::Relaxed);
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len() - 1);
        if let Some(b) = c.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut sum = 0.0;
        let mut count = 0;
        let mut buckets: Vec<(f64, u64)> = self.bounds.iter().map(|b| (*b, 0)).collect();
        for Padded(c) in self.cells.iter() {
            sum += f64::from_bits(c.sum.load(Ordering::Relaxed));
            count += c.count.load(Ordering::Relaxed);
            for (slot, n) in buckets.iter_mut().zip(c.buckets.iter()) {
                slot.1 += n.load(Ordering::Relaxed);
            }
        }
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Makes a family's sharded metrics, one cell per worker.
#[derive(Debug, Clone, Copy)]
pub struct Shards(usize);

impl MetricConstructor<ShardedCounter> for Shards {
    fn new_metric(&self) -> ShardedCounter {
        ShardedCounter::new(self.0)
    }
}

impl MetricConstructor<ShardedHistogram> for Shards {
    fn new_metric(&self) -> ShardedHistogram {
        ShardedHistogram::new(self.0, latency_buckets())
    }
}

/// Every metric the router exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, ShardedCounter, Shards>,
    pub request_seconds: Family<SiteLabels, ShardedHistogram, Shards>,
    pub held: Gauge,
    pub hold_seconds: Histogram,
    pub hold_outcomes: Family<HoldLabels, Counter>,
    pub cross_site: Family<SiteLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub loops: Counter,
    pub retries: Counter,
    pub fence_bounces: Family<BounceLabels, Counter>,
    pub upstream_errors: Family<EndpointLabels, Counter>,
    pub upstream_healthy: Family<EndpointLabels, Gauge>,
    pub topology_version: Gauge,
    pub topology_age_seconds: Gauge<f64, AtomicU64>,
    pub topology_refused: Gauge,
    pub topology_reconnects: Gauge,
    pub worker_connections: Family<WorkerLabels, Gauge>,
    pub handoffs: Counter,
    pub connections: Gauge,
    pub max_connections: Gauge,
    pub connections_shed: Counter,
    pub accept_errors: Counter,
    pub access_log_dropped: Counter,
    /// Connections on the peer listener whose client certificate passed,
    /// by the site it names.
    pub peer_connections: Family<SiteLabels, Counter>,
    /// TLS handshakes on the peer listener that failed or were refused.
    pub peer_handshake_failures: Counter,
}

impl Metrics {
    /// Metrics for a router with one worker.
    pub fn new() -> Metrics {
        Metrics::with_workers(1)
    }

    /// Metrics for a router with `workers` worker threads (each gets its own
    /// cells of the per-request metrics).
    pub fn with_workers(workers: usize) -> Metrics {
        let mut registry = Registry::with_prefix("ezone_router");
        let m = Metrics {
            requests: Family::new_with_constructor(Shards(workers.max(1))),
            request_seconds: Family::new_with_constructor(Shards(workers.max(1))),
            held: Gauge::default(),
            hold_seconds: latency(),
            hold_outcomes: Family::default(),
            cross_site: Family::default(),
            fallbacks: Family::default(),
            rejected: Family::default(),
            loops: Counter::default(),
            retries: Counter::default(),
            fence_bounces: Family::default(),
            upstream_errors: Family::default(),
            upstream_healthy: Family::default(),
            topology_version: Gauge::default(),
            topology_age_seconds: Gauge::default(),
            topology_refused: Gauge::default(),
            topology_reconnects: Gauge::default(),
            worker_connections: Family::default(),
            handoffs: Counter::default(),
            connections: Gauge::default(),
            max_connections: Gauge::default(),
            connections_shed: Counter::default(),
            accept_errors: Counter::default(),
            access_log_dropped: Counter::default(),
            peer_connections: Family::default(),
            peer_handshake_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by destination site, shard and status",
            m.requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from request head to response head",
            m.request_seconds.clone(),
        );
        registry.register(
            "held_requests",
            "Writes held now for frozen shards",
            m.held.clone(),
        );
        registry.register(
            "hold_seconds",
            "How long held writes were held",
            m.hold_seconds.clone(),
        );
        registry.register(
            "hold_outcomes",
            "Held writes by outcome",
            m.hold_outcomes.clone(),
        );
        registry.register(
            "cross_site_forwards",
            "Requests forwarded to another site's router",
            m.cross_site.clone(),
        );
        registry.register(
            "fallbacks",
            "Requests routed to the default site, by reason",
            m.fallbacks.clone(),
        );
        registry.register(
            "rejected",
            "Requests refused by the router itself, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "loops",
            "Requests refused with 508 because they looped between routers",
            m.loops.clone(),
        );
        registry.register("retries", "Upstream retries", m.retries.clone());
        registry.register(
            "fenced_writes",
            "Writes a site's database fence refused (a flip began while they were on their way), by what the router did: resent to the shard's home after the flip, or answered with the refusal",
            m.fence_bounces.clone(),
        );
        registry.register(
            "upstream_errors",
            "Connection-level upstream failures",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_healthy",
            "1 if the endpoint passes health checks and is not ejected",
            m.upstream_healthy.clone(),
        );
        registry.register(
            "worker_connections",
            "Client connections open, by worker thread (balanced across workers)",
            m.worker_connections.clone(),
        );
        registry.register(
            "connection_handoffs",
            "Client connections handed by the accepting worker to one with fewer",
            m.handoffs.clone(),
        );
        registry.register(
            "connections",
            "Client connections open (all workers)",
            m.connections.clone(),
        );
        registry.register(
            "max_connections",
            "The cap on client connections (limits.max_connections, or derived from the file descriptor limit)",
            m.max_connections.clone(),
        );
        registry.register(
            "connections_shed",
            "Idle client connections closed to make room at the connection cap (or when out of file descriptors)",
            m.connections_shed.clone(),
        );
        registry.register(
            "peer_connections",
            "Connections accepted on the peer listener, by the site their client certificate names",
            m.peer_connections.clone(),
        );
        registry.register(
            "peer_handshake_failures",
            "TLS handshakes on the peer listener that failed: no client certificate, one not signed by peer_tls.ca_file or naming no site, or none in time",
            m.peer_handshake_failures.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts of client connections (out of file descriptors or memory, and the like)",
            m.accept_errors.clone(),
        );
        registry.register(
            "access_log_dropped",
            "Access log lines dropped: the writer's buffer was full (the disk or standard output too slow) or writing failed",
            m.access_log_dropped.clone(),
        );
        registry.register(
            "topology_version",
            "The topology version (etcd revision) in use",
            m.topology_version.clone(),
        );
        registry.register(
            "topology_age_seconds",
            "Seconds since the topology in use was last confirmed current",
            m.topology_age_seconds.clone(),
        );
        registry.register(
            "topology_refused",
            "Topology changes refused by validation",
            m.topology_refused.clone(),
        );
        registry.register(
            "topology_reconnects",
            "Times the topology watch was re-established",
            m.topology_reconnects.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.push_str("# error encoding metrics\n");
        }
        out
    }
}

/// One site's request metrics, as resolved from the families.
struct SiteStats {
    seconds: ShardedHistogram,
    /// By (shard, status).
    requests: FnvHashMap<(Option<u32>, u16), ShardedCounter>,
}

/// Keys are a handful of site names and (shard, status) pairs the worker
/// chose itself, looked up on every request: FNV, not SipHash.
type FnvHashMap<K, V> = HashMap<K, V, fnv::FnvBuildHasher>;

/// The `site` and `shard` labels of a request that went nowhere (refused,
/// or answered by the router itself).
pub const NOWHERE: &str = "none";

/// One worker's handles on the per-request metrics
/// (`requests_total{site,shard,status}` and `request_seconds{site}`).
///
/// A family lookup builds its label set (the site and the shard as
/// strings), hashes it and takes the family's lock, shared by every worker;
/// doing that twice per request cost more than the rest of the bookkeeping.
/// Each worker resolves a label set once and keeps the handle (metrics are
/// reference-counted cells: the family still exports them). The cache holds
/// one entry per label set the family holds, so it is bounded the same way
/// (sites and shards from the topology, status codes).
#[derive(Default)]
pub struct RequestStats {
    /// This worker's cell in the sharded metrics.
    shard: usize,
    sites: Mutex<FnvHashMap<String, SiteStats>>,
}

impl RequestStats {
    /// The stats of worker number `shard`.
    pub fn new(shard: usize) -> RequestStats {
        RequestStats {
            shard,
            sites: Mutex::default(),
        }
    }

    /// Counts one answered request and its duration.
    pub fn record(&self, m: &Metrics, site: &str, shard: Option<u32>, status: u16, seconds: f64) {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        // One lookup on the common path; the entry is made once per site.
        let s = match sites.get_mut(site) {
            Some(s) => s,
            None => {
                let seconds = m
                    .request_seconds
                    .get_or_create(&SiteLabels {
                        site: site.to_string(),
                    })
                    .clone();
                sites.entry(site.to_string()).or_insert(SiteStats {
                    seconds,
                    requests: FnvHashMap::default(),
                })
            }
        };
        s.seconds.observe(self.shard, seconds);
        s.requests
            .entry((shard, status))
            .or_insert_with(|| {
                m.requests
                    .get_or_create(&RequestLabels {
                        site: site.to_string(),
                        shard: shard.map_or_else(|| NOWHERE.to_string(), |s| s.to_string()),
                        status,
                    })
                    .clone()
            })
            .inc(self.shard);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_stats_land_in_the_exported_families() {
        let m = Metrics::with_workers(2);
        let a = RequestStats::new(0);
        let b = RequestStats::new(1);
        a.record(&m, "beijing", Some(3), 200, 0.001);
        a.record(&m, "beijing", Some(3), 200, 0.001);
        b.record(&m, "beijing", Some(3), 200, 0.001);
        b.record(&m, "none", None, 400, 0.0);
        let text = m.render();
        assert!(
            text.contains(
                r#"ezone_router_requests_total{site="beijing",shard="3",status="200"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ezone_router_requests_total{site="none",shard="none",status="400"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ezone_router_request_seconds_count{site="beijing"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ezone_router_request_seconds_bucket{le="0.001",site="beijing"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ezone_router_request_seconds_sum{site="beijing"} 0.003"#),
            "{text}"
        );
    }
}
