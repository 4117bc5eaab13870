//! The forward phase: the request sent to one of the target's endpoints
//! (power of two choices, `upstream::client`), again on another if that is
//! safe and the retry budget allows, and the answer passed on
//! ([`Router::respond`]).
//!
//! What a failure is decides what happens next. A client's body that failed
//! on its way is the client's fault whatever the exchange made of it: no
//! retry, no ejection, nothing counted against the upstream. A connect that
//! failed sent nothing: it may go elsewhere, outside the retry budget. Any
//! other failure counts against the endpoint (passive ejection,
//! `ezone_router_upstream_errors_total`) and is retried only if the request
//! may be sent again ([`Forward::resendable`]) and its method is idempotent.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::Either;
use http::{Response, StatusCode};

use super::error::{Kind, ProxyError};
use super::message::{Forward, Message, Target};
use super::router::{Routed, Router, Worker};
use crate::error::{caused_by, chain};
use crate::metrics::EndpointLabels;
use crate::policy::headers;
use crate::upstream::body::{Body, BodyFault};
use crate::upstream::client::Upstream;
use crate::upstream::endpoints::Endpoint;
use crate::upstream::error::UpstreamError;

impl Router {
    /// Sends the request to one of the target's endpoints, retrying on
    /// another if that is safe and the budget allows.
    // Not an `async fn`: `f` is used in place, not re-bound (see the module
    // docs of `proxy`).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn forward<'a>(
        &'a self,
        mut f: Forward,
        worker: &'a Worker,
    ) -> impl Future<Output = Routed> + Send + 'a {
        async move {
            let max_attempts = if f.resendable {
                1 + self.cfg.upstream.max_retries
            } else {
                1
            };
            let mut attempt = 0;
            let mut tried: Vec<Arc<Upstream>> = Vec::new();
            // The endpoint tried last, whatever came of it (the access
            // log's `upstream`): moved here, not cloned.
            let mut last: Option<Arc<Upstream>> = None;
            let answered = loop {
                attempt += 1;
                let Some(up) = worker.client.pick(
                    &self.endpoints,
                    &f.target.site,
                    &f.target.addrs(),
                    f.target.remote,
                    &tried,
                ) else {
                    break Err(Kind::NoUpstreamAvailable.into());
                };
                let up: &Arc<Upstream> = last.insert(up);
                let sent = match &mut f.message {
                    Message::Encoded(head) => Either::Left(worker.client.exchange(
                        up,
                        head,
                        f.head_request,
                        f.idempotent,
                    )),
                    Message::Hyper(m) => {
                        let Some(req) = m.request(attempt < max_attempts) else {
                            break Err(Kind::NothingToSend.into());
                        };
                        // Boxed: the less common path, and a larger future.
                        Either::Right(Box::pin(worker.client.send(up, req, !f.target.remote)))
                    }
                };
                let in_flight = up.start();
                let result = tokio::time::timeout(self.cfg.timeouts.request(), sent).await;
                drop(in_flight);
                let ep = &up.endpoint;
                // Reading the client's body failed: whatever the exchange
                // made of it (an error, no answer in time), it is the
                // client's fault, not the upstream's: no ejection, no
                // upstream error.
                if !matches!(result, Ok(Ok(_))) {
                    if let Some(fault) = f.body_fault() {
                        tracing::debug!(site = %f.target.site, endpoint = %ep.addr, fault = ?fault, "The client's request body failed on its way upstream.");
                        break Err(self.body_error(fault));
                    }
                }
                match result {
                    Ok(Ok(resp)) => {
                        ep.record_success();
                        break Ok(self.respond(resp));
                    }
                    Ok(Err(e @ UpstreamError::Address { .. })) => {
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, error = %chain(&e), "Upstream address not usable.");
                        break Err(Kind::Misconfigured {
                            whom: f.target.whom(),
                            reason: e.client_reason(&ep.addr),
                        }
                        .into());
                    }
                    Ok(Err(e)) => {
                        // The client's fault, not the upstream's: no ejection.
                        if caused_by::<http_body_util::LengthLimitError>(&e) {
                            break Err(self.body_error(&BodyFault::TooLarge));
                        }
                        self.upstream_failed(&f.target, ep);
                        let safe = f.resendable && (f.idempotent || e.is_connect());
                        // A request that never left (connect refused or timed
                        // out) adds no load anywhere by going elsewhere: it
                        // is not held to the retry budget, which is there to
                        // keep retries from piling onto a struggling upstream.
                        if safe
                            && attempt < max_attempts
                            && (e.is_connect() || worker.budget.try_withdraw())
                        {
                            tried.push(up.clone());
                            self.metrics.retries.inc();
                            tracing::debug!(site = %f.target.site, endpoint = %ep.addr, error = %e, "Retrying on another endpoint.");
                            continue;
                        }
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, error = %chain(&e), "Upstream request failed.");
                        break Err(Kind::UpstreamFailed {
                            whom: f.target.whom(),
                            reason: e.client_reason(&ep.addr),
                        }
                        .into());
                    }
                    // Out of time while waiting for the client's body (the
                    // upstream asked for more): the client's slowness.
                    Err(_) if f.waiting_for_client() => {
                        tracing::debug!(site = %f.target.site, endpoint = %ep.addr, "The client's request body did not arrive in time.");
                        break Err(self.body_error(&BodyFault::TimedOut {
                            after: self.cfg.timeouts.request(),
                            setting: "timeouts.request_ms",
                        }));
                    }
                    Err(_) => {
                        self.upstream_failed(&f.target, ep);
                        tracing::warn!(site = %f.target.site, endpoint = %ep.addr, timeout = ?self.cfg.timeouts.request(), "Upstream sent no response head in time.");
                        break Err(Kind::UpstreamTimeout {
                            whom: f.target.whom(),
                            after: self.cfg.timeouts.request(),
                        }
                        .into());
                    }
                }
            };
            Routed {
                response: answered.unwrap_or_else(|e| self.answer(&e)),
                site: Some(f.target.site),
                shard: f.target.shard,
                upstream: last,
            }
        }
    }

    /// A client's request body that could not be read (the client's fault:
    /// nothing is counted against the upstream). hyper closes an HTTP/1
    /// connection whose request body failed or was left unread after the
    /// answer: what is left of it cannot be told from a next request.
    pub(super) fn body_error(&self, fault: &BodyFault) -> ProxyError {
        ProxyError::body(fault, self.cfg.limits.max_body_bytes)
    }

    /// An exchange with `ep` failed before its response head: counted
    /// against it (`ezone_router_upstream_errors_total`, passive ejection).
    fn upstream_failed(&self, target: &Target, ep: &Endpoint) {
        self.metrics
            .upstream_errors
            .get_or_create(&EndpointLabels {
                site: target.site.clone(),
                endpoint: ep.addr.to_string(),
            })
            .inc();
        self.eject_on_failures(ep);
    }

    /// A failure of `ep`, towards its passive ejection
    /// (`upstream.eject_after_failures` in a row eject it for
    /// `upstream.eject_ms`).
    pub(super) fn eject_on_failures(&self, ep: &Endpoint) {
        ep.record_failure(
            self.cfg.upstream.eject_after_failures,
            Duration::from_millis(self.cfg.upstream.eject_ms),
        );
    }

    /// The upstream's answer, as it goes to the client: its hop-by-hop
    /// fields removed (an upgrade's kept on a 101).
    pub(super) fn respond(&self, mut resp: Response<Body>) -> Response<Body> {
        let upgrade = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::strip_hop_by_hop(resp.headers_mut(), upgrade);
        resp
    }
}
