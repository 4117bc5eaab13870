//! The request path: one function from a client request to a response
//! ([`Worker::handle`]), in named phases.
//!
//! ```text
//!  request
//!    │  check    the client's protocol errors                       admit   ┐ synchronous,
//!    │  admit    limits, trust, a peer's probe, the loop check       admit   │ pure but for
//!    │  decide   key → shard → site: Local, Remote, Hold or Reject   route   │ the metrics
//!    │  hold     (Hold) wait for the flip, then the decision again   route     (boxed)
//!    │  target   the site's upstreams, or its routers                route   ┘
//!    │  prepare  the head encoded once, or made for hyper's client   message
//!    │  forward  pick (p2c), exchange, again elsewhere if safe       forward
//!    ▼  respond  the upstream's answer, its hop-by-hop fields gone   forward
//!  response      (or, from any phase, a ProxyError's answer)         error
//! ```
//!
//! Two requests take a path of their own from `target` on: a write small
//! enough to keep is read whole first, and sent to the shard's new home
//! after a fence refusal, decided again the same way (`write`); an upgrade
//! is spliced after its `101` (`upgrade`, [`tunnel`]). The path's state
//! (the [`Router`], each thread's [`Worker`], a request's outcome) is in
//! `router`; every answer the router gives itself is a [`ProxyError`]
//! (whose fault, whether to retry), mapped to its status, body and header
//! fields in one place ([`error`]).
//!
//! The topology is read with one lock-free load per request; bodies stream
//! both ways. A client's protocol error (a head refused by
//! `headers::check_request`, a request body that does not parse or is cut
//! off) is never answered 502 and never counted against an upstream. No
//! answer to a client names an internal address: which endpoint failed is
//! in the log.
//!
//! **The shape of the hot path.** Everything up to the choice of where to
//! send is synchronous (`Router::plan`); only forwarding awaits. The rare
//! paths that must wait before forwarding (a held write, a topology behind a
//! peer's epoch, a write kept to be resent) and upgrades are boxed
//! (`Step::Slow`). This keeps the future a request lives in small: a
//! future is moved (copied whole) a few times on its way into hyper's
//! connection task and each nested `async fn` keeps its own copy of its
//! arguments, so a deep chain of large futures cost more in `memcpy`
//! (measured: ~4% of the router's CPU) than the decision itself.

pub mod error;
pub mod tunnel;

mod admit;
mod forward;
mod message;
mod route;
mod router;
mod upgrade;
mod write;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::Either;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use ezone_topology::Snapshot;

use crate::access_log::Pending;
use crate::metrics::{BounceLabels, BounceOutcome, NOWHERE};
use crate::policy::decide::Decision;
use crate::policy::headers;
use crate::policy::hold::wait_for_epoch;
use crate::upstream::body::{Body, RequestBody};
use admit::{Admitted, Gate};
pub use error::ProxyError;
use message::Forward;
pub use router::{ConnInfo, Router, Worker};
use router::{Failed, Routed};

/// What [`Router::plan`] decided, without waiting for anything.
enum Step<'a> {
    /// Answered already.
    Answer(Routed),
    /// Send it on.
    Forward(Forward),
    /// It must wait first (a held write, a topology behind a peer's epoch,
    /// a write read whole to be kept), or it is an upgrade: the rare paths,
    /// boxed so the common one stays small.
    Slow(Pin<Box<dyn Future<Output = Routed> + Send + 'a>>),
}

impl Worker {
    /// Handles one request on this worker. Never fails: every problem
    /// becomes a response.
    // Not an `async fn`: that would keep a second copy of the request in
    // the future (see the module docs).
    #[allow(clippy::manual_async_fn)]
    pub fn handle(
        self: Arc<Self>,
        req: Request<RequestBody>,
        conn: ConnInfo,
    ) -> impl Future<Output = Response<Body>> + Send + 'static {
        async move {
            use tracing::Instrument;
            let started = Instant::now();
            let router = &*self.router;
            // What the access log needs of the request, taken before it
            // moves on; dropped unanswered (the client went away), it still
            // sends its line.
            let pending = self.access_log.as_ref().map(|log| {
                Pending::new(
                    log.clone(),
                    started.into_std(),
                    &req,
                    conn.peer,
                    &router.cfg.keys,
                )
            });
            let span = tracing::debug_span!(
                "request",
                site = %router.policy.site,
                from_site = conn.peer_site.as_deref(),
                method = %req.method(),
                shard = tracing::field::Empty,
                epoch = tracing::field::Empty,
                to = tracing::field::Empty,
            );
            // The step is turned into one future before awaiting, so that
            // it is not kept alongside it.
            let routed = match span.in_scope(|| router.plan(req, conn, &self)) {
                Step::Answer(routed) => Either::Left(std::future::ready(routed)),
                Step::Forward(f) => Either::Right(Either::Left(router.forward(f, &self))),
                Step::Slow(f) => Either::Right(Either::Right(f)),
            };
            let Routed {
                response,
                site,
                shard,
                upstream,
            } = routed.instrument(span.clone()).await;
            let to = site.as_deref().unwrap_or(NOWHERE);
            if !span.is_disabled() {
                if let Some(s) = shard {
                    span.record("shard", s.id);
                    span.record("epoch", s.epoch);
                }
                span.record("to", to);
                span.in_scope(|| {
                    tracing::debug!(status = response.status().as_u16(), "Request answered.")
                });
            }
            if message::is_fenced(&response) {
                router
                    .metrics
                    .fence_bounces
                    .get_or_create(&BounceLabels {
                        outcome: BounceOutcome::Refused,
                    })
                    .inc();
            }
            self.stats.record(
                &router.metrics,
                to,
                shard.map(|s| s.id),
                response.status().as_u16(),
                started.elapsed().as_secs_f64(),
            );
            match pending {
                Some(p) => p.answered(response, site, shard, upstream),
                None => response,
            }
        }
    }
}

impl Router {
    /// What the first phases read of the configuration.
    fn gate(&self) -> Gate<'_> {
        Gate {
            keys: &self.cfg.keys,
            key_headers: &self.key_headers,
            limits: &self.cfg.limits,
            site: &self.policy.site,
        }
    }

    /// Everything up to where the request goes, without waiting: the
    /// protocol checks, the topology, the limits and trust checks, the key
    /// and the decision.
    fn plan<'a>(
        &'a self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
    ) -> Step<'a> {
        let gate = self.gate();
        if let Err(e) = admit::check(&gate, &req) {
            return Step::Answer(self.failed(Failed::at(e, None)));
        }
        let Some(snap) = worker.snapshot() else {
            return Step::Answer(self.failed(Failed::at(error::Kind::NoTopology, None)));
        };
        let peer = self.is_from_peer(req.headers(), &conn);
        match admit::admit(&gate, &req, &conn, peer, &snap) {
            Ok(Admitted::Route) => self.decide_step(req, conn, worker, snap),
            Ok(Admitted::Probe) => Step::Answer(Routed::nowhere(error::plain(
                StatusCode::OK,
                &format!(
                    "ready: site {} topology version {}",
                    self.policy.site, snap.version
                ),
            ))),
            Ok(Admitted::CatchUp { shard, epoch }) => Step::Slow(Box::pin(
                self.catch_up(req, conn, worker, snap, shard, epoch),
            )),
            Err(e) => Step::Answer(self.failed(Failed::at(e, None))),
        }
    }

    /// The decision against `snap`, and what follows from it: a write for
    /// a frozen shard is held first.
    fn decide_step<'a>(
        &'a self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
        snap: Arc<Snapshot>,
    ) -> Step<'a> {
        match self.decide(&snap, req.method(), req.uri(), req.headers()) {
            d @ Decision::Hold { .. } => {
                Step::Slow(Box::pin(self.held(req, conn, worker, d, snap)))
            }
            d => self.dispatch(d, snap, req, conn, worker),
        }
    }

    /// Holds a write for a frozen shard until it is released (then
    /// dispatches it), or the deadline passes.
    async fn held(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &Worker,
        decision: Decision,
        snap: Arc<Snapshot>,
    ) -> Routed {
        let deadline = self.hold_deadline(&snap);
        match self.settle(decision, snap, deadline).await {
            Ok((d, snap)) => {
                self.run(self.dispatch(d, snap, req, conn, worker), worker)
                    .await
            }
            Err(f) => self.failed(f),
        }
    }

    /// Waits (bounded) until this router's topology has the epoch a peer
    /// router decided at, then goes on as [`Router::plan`] would have.
    async fn catch_up(
        &self,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &Worker,
        snap: Arc<Snapshot>,
        shard: u32,
        epoch: u64,
    ) -> Routed {
        let deadline = self.hold_deadline(&snap);
        match wait_for_epoch(self.watcher.subscribe(), shard, epoch, deadline).await {
            Some(newer) => {
                self.run(self.decide_step(req, conn, worker, newer), worker)
                    .await
            }
            None => self.failed(Failed::at(error::Kind::BehindPeer { shard, epoch }, None)),
        }
    }

    /// Carries out a step (on the slow paths, which may lead to another).
    async fn run(&self, step: Step<'_>, worker: &Worker) -> Routed {
        match step {
            Step::Answer(routed) => routed,
            Step::Forward(f) => self.forward(f, worker).await,
            Step::Slow(f) => f.await,
        }
    }

    /// Turns a decision into a step: an answer, or a request ready to send
    /// (a write to be kept, and an upgrade, take their own slow paths).
    fn dispatch<'a>(
        &'a self,
        decision: Decision,
        snap: Arc<Snapshot>,
        req: Request<RequestBody>,
        conn: ConnInfo,
        worker: &'a Worker,
    ) -> Step<'a> {
        let target = match self.target(decision, snap) {
            Ok(t) => t,
            Err(f) => return Step::Answer(self.failed(f)),
        };
        if let Some(shard) = self.replayable(&req, &target) {
            return Step::Slow(Box::pin(self.write(req, conn, target, shard, worker)));
        }
        worker.budget.deposit();
        if headers::wants_upgrade(req.headers()) {
            return Step::Slow(Box::pin(self.forward_upgrade(req, conn, target, worker)));
        }
        Step::Forward(self.prepare(req, &conn, target, worker))
    }
}
