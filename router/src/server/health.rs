//! Active health checks: every interval, GET the health path of each of this
//! site's upstream endpoints, and probe each router of the other sites (a
//! request with `X-Ezone-Probe` and the hop list, which the peer answers
//! itself: `200` once it has a topology). The probes go the way forwarded
//! requests do: over TLS with this router's certificate to the peer
//! listener with `[peer_tls]` (the peer's certificate checked the same way),
//! else with the peer secret. A non-2xx answer, an error or a timeout marks
//! the endpoint unhealthy until a check passes again; requests for a site
//! go to its healthy routers. Passive ejection (`upstream::endpoints`)
//! covers the time between checks.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Request, StatusCode};
use http_body_util::BodyExt;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::error;
use crate::http1::codec as h1;
use crate::metrics::EndpointLabels;
use crate::policy::headers;
use crate::proxy::Router;
use crate::upstream::body::{self, Body};
use crate::upstream::client::UpstreamClient;
use crate::upstream::error::UpstreamError;

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
    // Peer routers are probed over connections of the probes' own, made as
    // a worker makes them (TLS with `[peer_tls]`), kept between rounds.
    let probes = {
        let Some(r) = router.upgrade() else { return };
        UpstreamClient::new(
            &r.cfg,
            r.metrics.upstream_errors.clone(),
            r.peer_tls.clone(),
        )
    };
    loop {
        let Some(r) = router.upgrade() else { return };
        let interval = Duration::from_millis(r.cfg.upstream.health_interval_ms);
        check_all(&r, &probes).await;
        probes.reap();
        drop(r);
        tokio::time::sleep(interval).await;
    }
}

async fn check_all(r: &Arc<Router>, probes: &UpstreamClient) {
    let Some(snap) = r.watcher.current() else {
        return;
    };
    // Forget endpoints the topology no longer names (bounded state and labels).
    let known: Vec<String> = snap
        .topology
        .sites
        .values()
        .flat_map(|s| s.upstreams.iter().chain(s.routers()).cloned())
        .collect();
    r.endpoints.retain(&known);
    let Some(site) = snap.topology.sites.get(&r.policy.site) else {
        return;
    };
    // (site, address, is a peer router)
    let mut targets: Vec<(String, String, bool)> = site
        .upstreams
        .iter()
        .map(|a| (r.policy.site.clone(), a.clone(), false))
        .collect();
    // Without peer TLS or a secret this router forwards to no peer: nothing
    // to check.
    if r.knows_peers() {
        for (name, s) in &snap.topology.sites {
            if *name != r.policy.site {
                targets.extend(s.routers().map(|a| (name.clone(), a.clone(), true)));
            }
        }
    }
    let timeout =
        Duration::from_millis(r.cfg.upstream.health_interval_ms).min(Duration::from_secs(2));
    let checks = targets.iter().map(|(site, addr, peer)| {
        let r = r.clone();
        async move {
            let ok = if *peer {
                probe_peer(&r, probes, site, addr, timeout).await
            } else {
                check_one(&r, addr, timeout).await
            };
            let ep = r.endpoints.get(addr);
            ep.set_healthy(ok);
            r.metrics
                .upstream_healthy
                .get_or_create(&EndpointLabels {
                    site: site.clone(),
                    endpoint: addr.clone(),
                })
                .set(i64::from(ep.is_available()));
        }
    });
    futures::future::join_all(checks).await;
}

/// Asks the router of `site` at `addr` whether it is up and has a topology.
async fn probe_peer(
    r: &Router,
    probes: &UpstreamClient,
    site: &str,
    addr: &str,
    timeout: Duration,
) -> bool {
    let mut req = Request::get("/")
        .header(http::header::HOST, addr)
        .header(headers::X_EZONE_PROBE, "1")
        .header(headers::X_EZONE_HOP, r.policy.site.as_str());
    // With peer TLS the certificate says who is asking (a secret is not
    // allowed beside it).
    if r.cfg.peer_tls.is_none() {
        let Some(secret) = r.peer_secret() else {
            return false;
        };
        req = req.header(headers::X_EZONE_PEER, secret.clone());
    }
    let Ok(req) = req.body(()) else {
        return false;
    };
    let (parts, ()) = req.into_parts();
    let mut head = BytesMut::with_capacity(256);
    h1::encode_request_head(&parts, &mut head);
    let up = probes.upstream(&r.endpoints, site, addr, true);
    let asked = async {
        match probes.exchange(&up, &head, false, true).await {
            Ok(resp) => {
                let ok = resp.status().is_success();
                // Read to its end, so the connection is kept for the next.
                let _ = resp.into_body().collect().await;
                ok
            }
            Err(e) => {
                // A certificate problem does not go away by itself: said
                // once, when the router turns unhealthy for it.
                if matches!(e, UpstreamError::Tls { .. }) && up.endpoint.is_healthy() {
                    tracing::warn!(site, endpoint = addr, error = %error::chain(&e), "Peer router probe failed: the TLS handshake did not pass.");
                } else {
                    tracing::debug!(site, endpoint = addr, error = %error::chain(&e), "Peer router probe failed.");
                }
                false
            }
        }
    };
    tokio::time::timeout(timeout, asked).await.unwrap_or(false)
}

async fn check_one(r: &Router, addr: &str, timeout: Duration) -> bool {
    let uri = format!("http://{addr}{}", r.cfg.upstream.health_path);
    let Ok(req) = Request::get(uri).body(body::empty()) else {
        return false;
    };
    answered_ok(r.health_client(), req, timeout).await
}

/// Sends `req`; true on a 2xx answer within `timeout`.
async fn answered_ok(
    client: &Client<HttpConnector, Body>,
    req: Request<Body>,
    timeout: Duration,
) -> bool {
    match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success() || resp.status() == StatusCode::NO_CONTENT;
            // Drain the body so the connection can be reused.
            let _ = resp.into_body().collect().await;
            ok
        }
        _ => false,
    }
}
