//! The order service's metrics, exported as OpenMetrics text on `/metrics`.
//!
//! One registry per service instance (no global state). Labels are bounded:
//! the route is one of a fixed set, the status an HTTP code, the error kind
//! one of [`crate::db::DbError::kind`]'s values; ids, cities and paths never
//! become labels.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The metric name prefix.
pub const PREFIX: &str = "ezone_orders";

/// The `Content-Type` of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which handler answered (bounded).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Route {
    place_order,
    update_order,
    get_order,
    healthz,
    readyz,
    metrics,
    other,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Route,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

fn latency() -> Histogram {
    // 0.25 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// `ezone_orders_requests_total{route,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `ezone_orders_request_seconds{route}`: request head to response.
    pub request_seconds: HistFamily<RouteLabels>,
    /// `ezone_orders_fence_refusals_total`: writes the fence refused (EZ001).
    pub fence_refusals: Counter,
    /// `ezone_orders_db_errors_total{kind}`.
    pub db_errors: Family<KindLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = HistFamily::<RouteLabels>::new_with_constructor(latency);
        let fence_refusals = Counter::default();
        let db_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        registry.register(
            "request_seconds",
            "Time from request head to response, by route",
            request_seconds.clone(),
        );
        registry.register(
            "fence_refusals",
            "Writes the database fence refused (SQLSTATE EZ001)",
            fence_refusals.clone(),
        );
        registry.register(
            "db_errors",
            "Failed database operations, by kind",
            db_errors.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            fence_refusals,
            db_errors,
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, route: Route, status: u16, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels { route, status })
            .inc();
        self.request_seconds
            .get_or_create(&RouteLabels { route })
            .observe(took.as_secs_f64());
    }

    /// Counts one failed database operation.
    pub fn db_error(&self, e: &crate::db::DbError) {
        if matches!(e, crate::db::DbError::Fenced { .. }) {
            self.fence_refusals.inc();
        }
        self.db_errors
            .get_or_create(&KindLabels { kind: e.kind() })
            .inc();
    }

    /// The OpenMetrics text exposition (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the scrape well-formed anyway.
            out = "# EOF\n".to_string();
        }
        out
    }

    /// The same metrics in the Prometheus text format 0.0.4, for tools that
    /// read only that (`promtool check metrics`).
    pub fn encode_prometheus_text(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_units_and_labels_are_bounded() {
        let m = Metrics::new();
        m.observe(Route::place_order, 201, Duration::from_millis(3));
        m.db_error(&crate::db::DbError::Fenced { detail: "x".into() });
        let text = m.encode();
        assert!(
            text.contains("ezone_orders_requests_total{route=\"place_order\",status=\"201\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ezone_orders_request_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("ezone_orders_fence_refusals_total 1"),
            "{text}"
        );
        assert!(
            text.contains("ezone_orders_db_errors_total{kind=\"fenced\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_exposition_is_strict_openmetrics() {
        use ezone_replicator::metrics::lint;
        let m = Metrics::new();
        m.observe(Route::place_order, 201, Duration::from_millis(3));
        m.observe(Route::readyz, 503, Duration::from_millis(1));
        m.db_error(&crate::db::DbError::Fenced { detail: "x".into() });
        m.db_error(&crate::db::DbError::Unavailable { detail: "x".into() });
        let text = m.encode();
        let e = lint::check(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.value(
                "ezone_orders_requests_total",
                &[("route", "readyz"), ("status", "503")]
            ),
            Some(1.0)
        );
        assert_eq!(e.value("ezone_orders_fence_refusals_total", &[]), Some(1.0));
        assert_eq!(
            e.value("ezone_orders_db_errors_total", &[("kind", "unavailable")]),
            Some(1.0)
        );
        let h = e.family("ezone_orders_request_seconds").expect("histogram");
        assert_eq!(h.kind, "histogram");
        for (family, kind) in [
            ("ezone_orders_requests", "counter"),
            ("ezone_orders_fence_refusals", "counter"),
            ("ezone_orders_db_errors", "counter"),
        ] {
            assert_eq!(
                e.family(family).map(|f| f.kind.as_str()),
                Some(kind),
                "{text}"
            );
        }
        lint::promtool_or_skip("the order service's metrics", &m.encode_prometheus_text());
    }
}
