//! Writes kept whole, so that a fence refusal does not fail them.
//!
//! A flip that begins while a write is on its way to the old home (the
//! router decided before it saw the freeze) closes the fence in front of
//! it: the database refuses it, commits nothing, and the upstream answers
//! `503` with `X-Ezone-Fenced`. Rather than fail the write (the design's "a
//! planned switchover fails no request"), the router waits for the topology
//! past the epoch it was decided at, decides it again as it decides any
//! request (`route`: the key, the decision, the hold while the shard is
//! frozen), and sends it to the shard's home once the flip lands. Bounded
//! by the write-hold deadline per wait and by [`MAX_FENCE_BOUNCES`]; past
//! them the client gets a `503` with `Retry-After`.

use http::{Method, Request};

use super::error::Kind;
use super::message::{content_length, has_body, is_fenced, Target};
use super::router::{ConnInfo, Failed, Routed, Router, Worker};
use crate::error::{caused_by, chain};
use crate::metrics::{BounceLabels, BounceOutcome};
use crate::policy::decide::{is_write, ShardRef};
use crate::policy::headers;
use crate::policy::hold::wait_for_epoch;
use crate::upstream::body::{BodyFault, BodyTimeout, RequestBody};

/// The most times one write is sent again after a fence refused it (a
/// second refusal means the shard moved again, or away, meanwhile).
const MAX_FENCE_BOUNCES: u32 = 2;

impl Router {
    /// The shard a write may be sent again for after a fence refused it
    /// (see [`Router::write`]), or `None` if it is sent as any request is:
    /// reads, and writes whose body is streamed (chunked, or over
    /// `limits.replay_body_bytes`). A write for another site is kept too:
    /// the peer router resends it after a fence itself, but if one of the
    /// site's routers cannot be reached the write goes to another.
    pub(super) fn replayable(
        &self,
        req: &Request<RequestBody>,
        target: &Target,
    ) -> Option<ShardRef> {
        if !is_write(req.method()) || req.method() == Method::CONNECT {
            return None;
        }
        let shard = target.shard?;
        if headers::wants_upgrade(req.headers())
            || req.headers().contains_key(http::header::TRANSFER_ENCODING)
        {
            return None;
        }
        let fits = match content_length(req.headers()) {
            Some(n) => n <= self.cfg.limits.replay_body_bytes,
            None => !has_body(req),
        };
        fits.then_some(shard)
    }

    /// A write for `shard`, its body read whole first so that it can be
    /// sent again after a fence refusal (see the module docs).
    pub(super) async fn write(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        mut target: Target,
        mut shard: ShardRef,
        worker: &Worker,
    ) -> Routed {
        let (parts, incoming) = req.into_parts();
        let cap = usize::try_from(self.cfg.limits.replay_body_bytes).unwrap_or(usize::MAX);
        // Between two reads `body_read_ms`; in all `request_ms`, the bound a
        // streamed body has too (a body that trickles in a byte at a time
        // just within the first bound must not hold the request for ever).
        let total = self.cfg.timeouts.request();
        let collected =
            tokio::time::timeout(total, incoming.collect(cap, self.cfg.timeouts.body_read())).await;
        let body = match collected {
            Ok(Ok(b)) => b,
            Err(_) => {
                let slow = self.body_error(&BodyFault::TimedOut {
                    after: total,
                    setting: "timeouts.request_ms",
                });
                return self.failed(Failed::at(slow, Some(shard)));
            }
            Ok(Err(e)) => {
                let unread = if e.is::<BodyTimeout>() {
                    self.body_error(&BodyFault::TimedOut {
                        after: self.cfg.timeouts.body_read(),
                        setting: "timeouts.body_read_ms",
                    })
                } else if caused_by::<http_body_util::LengthLimitError>(&*e) {
                    // Content-Length said it fits; the body did not (hyper
                    // enforces the length, so this is a guard, not a path).
                    Kind::BodyOverLength.into()
                } else {
                    self.body_error(&BodyFault::Broken(chain(&*e)))
                };
                return self.failed(Failed::at(unread, Some(shard)));
            }
        };
        let deadline = self.hold_deadline(&target.snap);
        let mut bounces = 0;
        loop {
            let remote = target.remote;
            worker.budget.deposit();
            let f = self.prepare_kept(&parts, &body, &conn, target, worker);
            let routed = self.forward(f, worker).await;
            // A refusal from another site's router: it has resent already.
            if remote || bounces >= MAX_FENCE_BOUNCES || !is_fenced(&routed.response) {
                return routed;
            }
            bounces += 1;
            // The refusal is done with before the wait (its connection goes).
            let Routed { response, site, .. } = routed;
            drop(response);
            let refused_at = site.unwrap_or_default();
            let Some(snap) = wait_for_epoch(
                self.watcher.subscribe(),
                shard.id,
                shard.epoch + 1,
                deadline,
            )
            .await
            else {
                let fenced = Kind::Fenced {
                    site: refused_at,
                    shard: shard.id,
                    epoch: shard.epoch,
                    waited: deadline,
                };
                return self.failed(Failed::at(fenced, Some(shard)));
            };
            let decision = self.decide(&snap, &parts.method, &parts.uri, &parts.headers);
            let (decision, snap) = match self.settle(decision, snap, deadline).await {
                Ok(settled) => settled,
                Err(f) => return self.failed(f),
            };
            target = match self.target(decision, snap) {
                Ok(t) => t,
                Err(f) => return self.failed(f),
            };
            shard = target.shard.unwrap_or(shard);
            self.metrics
                .fence_bounces
                .get_or_create(&BounceLabels {
                    outcome: BounceOutcome::Resent,
                })
                .inc();
            tracing::debug!(shard = shard.id, epoch = shard.epoch, to = %target.site, "Resending a write the fence refused.");
        }
    }
}
