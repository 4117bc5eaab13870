//! Upgrades (`Connection: upgrade`, WebSocket): the request goes over
//! HTTP/1.1 to the upstream on a connection of its own, and after a `101`
//! both connections are spliced ([`super::tunnel`]) until either closes or
//! both stay idle for `timeouts.upstream_read_ms`.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::error::{Kind, ProxyError};
use super::message::Target;
use super::router::{ConnInfo, Routed, Router, Worker};
use super::tunnel;
use crate::error::chain;
use crate::upstream::body::{self, Body, RequestBody};
use crate::upstream::client::Upstream;

impl Router {
    /// Sends an upgrade request to one of the target's endpoints (never
    /// retried: its body is whatever the client sends first).
    pub(super) async fn forward_upgrade(
        &self,
        mut req: Request<RequestBody>,
        conn: ConnInfo,
        target: Target,
        worker: &Worker,
    ) -> Routed {
        let client_on = hyper::upgrade::on(&mut req);
        let (mut parts, incoming) = req.into_parts();
        self.prepare_head(&mut parts, &conn, &target, true);
        let Some(upstream) = worker.client.pick(
            &self.endpoints,
            &target.site,
            &target.addrs(),
            target.remote,
            &[],
        ) else {
            return Routed {
                response: self.answer(&Kind::NoUpstreamAvailable.into()),
                site: Some(target.site),
                shard: target.shard,
                upstream: None,
            };
        };
        let up = Request::from_parts(parts, incoming.into_body());
        let answered = self
            .upgrade(&upstream, up, client_on, &target, worker)
            .await;
        Routed {
            response: answered.unwrap_or_else(|e| self.answer(&e)),
            site: Some(target.site),
            shard: target.shard,
            upstream: Some(upstream),
        }
    }

    /// The exchange of an upgrade with `upstream`, and the splice after a
    /// `101`.
    async fn upgrade(
        &self,
        upstream: &Arc<Upstream>,
        req: Request<Body>,
        client_on: hyper::upgrade::OnUpgrade,
        target: &Target,
        worker: &Worker,
    ) -> Result<Response<Body>, ProxyError> {
        let ep = &upstream.endpoint;
        // Upgrades need HTTP/1.1 to the upstream, on a connection of their own.
        let sent = worker.client.send_upgrade(upstream, req);
        let mut resp = match tokio::time::timeout(self.cfg.timeouts.request(), sent).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.eject_on_failures(ep);
                tracing::warn!(site = %target.site, endpoint = %ep.addr, error = %chain(&e), "Upstream upgrade request failed.");
                return Err(Kind::UpstreamFailed {
                    whom: target.whom(),
                    reason: e.client_reason(&ep.addr),
                }
                .into());
            }
            Err(_) => return Err(Kind::UpgradeTimeout.into()),
        };
        ep.record_success();
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(self.respond(resp.map(|b| body::upstream(b, None, Some(upstream.clone())))));
        }
        let upstream_on = hyper::upgrade::on(&mut resp);
        let endpoint = ep.addr.clone();
        let idle = self.cfg.timeouts.upstream_read();
        tokio::spawn(async move {
            let (client_io, upstream_io) = match tokio::join!(client_on, upstream_on) {
                (Ok(c), Ok(u)) => (c, u),
                (c, u) => {
                    tracing::debug!(endpoint = %endpoint, client_ok = c.is_ok(), upstream_ok = u.is_ok(), "Upgrade did not complete.");
                    return;
                }
            };
            let c = TokioIo::new(client_io);
            let u = TokioIo::new(upstream_io);
            match tunnel::run(c, u, idle).await {
                Ok(tunnel::Ended::Idle) => {
                    tracing::debug!(endpoint = %endpoint, idle = ?idle, "Upgraded connection closed: idle for timeouts.upstream_read_ms.");
                }
                Ok(tunnel::Ended::Closed(..)) => {}
                Err(e) => {
                    tracing::debug!(endpoint = %endpoint, error = %e, "Upgraded connection ended with an error.");
                }
            }
        });
        Ok(self.respond(resp.map(|b| body::upstream(b, None, Some(upstream.clone())))))
    }
}
