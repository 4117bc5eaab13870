//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process
//! is up), `/readyz` (a valid topology is loaded), `/topology` (the version in
//! use and its age, as JSON).

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::proxy::Router;
use crate::upstream::body::{self, Body};

/// Refreshes the topology gauges from the watcher (done at scrape time so the
/// request path never touches them).
fn refresh(r: &Router) {
    let w = r.watcher();
    let m = r.metrics();
    if let Some(s) = w.current() {
        m.topology_version.set(s.version);
    }
    m.topology_age_seconds
        .set(w.age().map_or(f64::NAN, |a| a.as_secs_f64()));
    m.topology_refused
        .set(i64::try_from(w.stats().refused.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
    m.topology_reconnects
        .set(i64::try_from(w.stats().reconnects.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

pub async fn handle(r: Arc<Router>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ));
    }
    let resp = match req.uri().path() {
        "/metrics" => {
            refresh(&r);
            text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                r.metrics().render(),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match r.watcher().current() {
            Some(s) => text(
                StatusCode::OK,
                "text/plain",
                format!("ready: topology version {}\n", s.version),
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!(
                    "not ready: no valid topology loaded yet{}\n",
                    r.watcher()
                        .last_error()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                ),
            ),
        },
        "/topology" => {
            let w = r.watcher();
            let body = serde_json::json!({
                "site": r.cfg.site,
                "version": w.current().map(|s| s.version),
                "age_seconds": w.age().map(|a| a.as_secs_f64()),
                "accepted": w.stats().accepted.load(Ordering::Relaxed),
                "refused": w.stats().refused.load(Ordering::Relaxed),
                "reconnects": w.stats().reconnects.load(Ordering::Relaxed),
                "last_refusal": w.last_refusal(),
                "last_error": w.last_error(),
            });
            text(StatusCode::OK, "application/json", format!("{body}\n"))
        }
        other => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no admin endpoint {other}: try /metrics, /healthz, /readyz, /topology\n"),
        ),
    };
    Ok(resp)
}
