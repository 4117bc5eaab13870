//! Active health checks: every interval, GET the health path of each of this
//! site's upstream endpoints; a non-2xx answer, an error or a timeout marks it
//! unhealthy until a check passes again. Passive ejection (in
//! [`crate::upstream`]) covers the time between checks.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;

use crate::body;
use crate::metrics::EndpointLabels;
use crate::proxy::Router;

/// Runs until the router is dropped (holds only a weak reference). The
/// first round runs as soon as a topology is loaded (not an interval after
/// the first look found none), so health is known from the start.
pub async fn run(router: std::sync::Weak<Router>) {
    loop {
        let Some(r) = router.upgrade() else { return };
        if r.watcher.current().is_some() {
            break;
        }
        let mut changes = r.watcher.subscribe();
        let interval = Duration::from_millis(r.cfg.upstream.health_interval_ms);
        drop(r);
        // Woken by the first snapshot; the interval bounds the wait in case
        // the watcher is gone.
        let _ = tokio::time::timeout(interval, changes.changed()).await;
    }
    loop {
        let Some(r) = router.upgrade() else { return };
        let interval = Duration::from_millis(r.cfg.upstream.health_interval_ms);
        check_all(&r).await;
        drop(r);
        tokio::time::sleep(interval).await;
    }
}

async fn check_all(r: &Arc<Router>) {
    let Some(snap) = r.watcher.current() else {
        return;
    };
    // Forget endpoints the topology no longer names (bounded state and labels).
    let known: Vec<String> = snap
        .topology
        .sites
        .values()
        .flat_map(|s| {
            s.upstreams
                .iter()
                .cloned()
                .chain(std::iter::once(s.router.clone()))
        })
        .collect();
    r.endpoints.retain(&known);
    let Some(site) = snap.topology.sites.get(&r.policy.site) else {
        return;
    };
    let addrs = site.upstreams.clone();
    let timeout =
        Duration::from_millis(r.cfg.upstream.health_interval_ms).min(Duration::from_secs(2));
    let checks = addrs.iter().map(|addr| {
        let r = r.clone();
        async move {
            let ok = check_one(&r, addr, timeout).await;
            let ep = r.endpoints.get(addr);
            ep.set_healthy(ok);
            r.metrics
                .upstream_healthy
                .get_or_create(&EndpointLabels {
                    site: r.policy.site.clone(),
                    endpoint: addr.clone(),
                })
                .set(i64::from(ep.is_available()));
        }
    });
    futures::future::join_all(checks).await;
}

async fn check_one(r: &Router, addr: &str, timeout: Duration) -> bool {
    let uri = format!("http://{addr}{}", r.cfg.upstream.health_path);
    let Ok(req) = Request::get(uri).body(body::empty()) else {
        return false;
    };
    match tokio::time::timeout(timeout, r.health_client().request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success() || resp.status() == StatusCode::NO_CONTENT;
            // Drain the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}
