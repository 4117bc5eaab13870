//! The router's metrics, exported as Prometheus text on the admin `/metrics`.
//!
//! One registry per router instance (no global state, so several routers can
//! run in one test process). Label sets are bounded: site and shard come from
//! the topology, status is an HTTP status code; city ids, user ids and paths
//! never become labels.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum HoldOutcome {
    /// The shard became active; the write was forwarded.
    Released,
    /// The deadline passed: 503 with Retry-After.
    Deadline,
    /// Too many held already: 503 at once.
    Overflow,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    pub outcome: HoldOutcome,
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

fn latency() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the router exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistFamily<SiteLabels>,
    pub held: Gauge,
    pub hold_seconds: Histogram,
    pub hold_outcomes: Family<HoldLabels, Counter>,
    pub cross_site: Family<SiteLabels, Counter>,
    pub fallbacks: Family<ReasonLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub loops: Counter,
    pub retries: Counter,
    pub upstream_errors: Family<EndpointLabels, Counter>,
    pub upstream_healthy: Family<EndpointLabels, Gauge>,
    pub topology_version: Gauge,
    pub topology_age_seconds: Gauge<f64, AtomicU64>,
    pub topology_refused: Gauge,
    pub topology_reconnects: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ezone_router");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: HistFamily::new_with_constructor(latency),
            held: Gauge::default(),
            hold_seconds: latency(),
            hold_outcomes: Family::default(),
            cross_site: Family::default(),
            fallbacks: Family::default(),
            rejected: Family::default(),
            loops: Counter::default(),
            retries: Counter::default(),
            upstream_errors: Family::default(),
            upstream_healthy: Family::default(),
            topology_version: Gauge::default(),
            topology_age_seconds: Gauge::default(),
            topology_refused: Gauge::default(),
            topology_reconnects: Gauge::default(),
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

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
