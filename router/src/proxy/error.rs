//! The request path's one error type, and the one place it becomes an
//! answer.
//!
//! Every request the router answers itself rather than with an upstream's
//! answer ends as a [`ProxyError`]: what happened ([`Kind`]), whose fault it
//! is ([`Fault`]: the client's, an upstream's, a peer router's, or the
//! router's own, its topology or configuration) and whether the client may
//! send it again ([`Retry`]; with a `Retry-After` when it must wait first).
//! The two are read off the kind in [`ProxyError::new`], and
//! [`ProxyError::answer`] maps it to the status, body and header fields the
//! client gets; [`ProxyError::label`] is its `reason` in
//! `ezone_router_rejected_total`, if it counts there. No other code writes
//! an error answer (`plain` is the format they share with the router's
//! other own answers, the health probe's).
//!
//! The rules the answers keep (`docs/router.md`): the client's protocol and
//! body errors are 4xx (501 for a transfer coding the router does not
//! implement) and never count against an upstream; an upstream's are 502
//! or 504 and name the site, never an address (the log has the endpoint);
//! the router's own, or its topology's, are 503.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

use crate::policy::decide::Fallback;
use crate::policy::headers::{self, Refusal};
use crate::upstream::body::{self, Body, BodyFault};

/// A request the router answers itself, with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    pub kind: Kind,
    pub whose_fault: Fault,
    pub retry: Retry,
}

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client's request: a protocol error, a limit, a body that did not
    /// arrive, a key the topology does not route.
    Client,
    /// This site's upstream (or none of them is available).
    Upstream,
    /// Another site's router.
    Peer,
    /// The router itself: its topology (none yet, behind, a shard being
    /// moved, sites disagreeing) or its configuration.
    Router,
}

/// Whether the client may send the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Not as it is: the same request gets the same answer.
    No,
    /// Yes, at once (another endpoint may take it; `Retry-After` is not set).
    Yes,
    /// Yes, after this many seconds (`Retry-After`).
    After(u64),
}

/// Which upstream failed, as the client is told: the site, never an
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whom {
    pub site: String,
    /// One of the site's routers (else one of its upstreams).
    pub remote: bool,
}

impl std::fmt::Display for Whom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.remote {
            write!(f, "the router of site {}", self.site)
        } else {
            write!(f, "an upstream of site {}", self.site)
        }
    }
}

/// What went wrong, with what its answer names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A protocol error in the head ([`headers::check_request`]), or a
    /// routing key sent twice.
    Protocol(Refusal),
    /// The head is over `limits.max_header_bytes`.
    HeadTooLarge { bytes: usize, limit: usize },
    /// The body is (or is declared) over `limits.max_body_bytes`.
    BodyTooLarge { limit: u64 },
    /// A body read whole was longer than its `Content-Length`.
    BodyOverLength,
    /// The body does not parse, or the client's connection ended in it.
    BodyBroken { why: String },
    /// Nothing of the body arrived for `after` (`setting`).
    BodySlow {
        after: Duration,
        setting: &'static str,
    },
    /// The key routes nowhere (`decide::Decision::Reject`).
    Unroutable {
        status: StatusCode,
        reason: String,
        fallback: Option<Fallback>,
    },
    /// A request on the peer listener whose hop list does not end with the
    /// site its client certificate names.
    PeerHopMismatch { site: Arc<str> },
    /// The request already passed through this router's site.
    Loop { site: String, hops: String },
    /// No topology loaded yet.
    NoTopology,
    /// A peer router decided at an epoch this router did not see in time.
    BehindPeer { shard: u32, epoch: u64 },
    /// A decision to hold where none can be (`decide::release` never makes
    /// one).
    Frozen,
    /// A held write that was not released: past `deadline`, or held writes
    /// are at `limits.max_held` (`overflow`).
    Held {
        shard: u32,
        overflow: bool,
        deadline: Duration,
    },
    /// A write the fence refused at `site`, with no newer topology than
    /// `epoch` within `waited`.
    Fenced {
        site: String,
        shard: u32,
        epoch: u64,
        waited: Duration,
    },
    /// Another site's home, and no way to tell its routers from clients
    /// (neither `[peer_tls]` nor `routing.peer_secret`).
    NoPeerTrust { site: String },
    /// The topology lists no address for the site.
    NoUpstreamsInTopology { site: String },
    /// None of the site's addresses can be picked.
    NoUpstreamAvailable,
    /// The request was sent as often as it may be (an internal error).
    NothingToSend,
    /// An address in the topology that makes no request target.
    Misconfigured { whom: Whom, reason: String },
    /// The exchange failed (connect, reset, a malformed answer).
    UpstreamFailed { whom: Whom, reason: String },
    /// No response head within `after` (`timeouts.request_ms`).
    UpstreamTimeout { whom: Whom, after: Duration },
    /// No response head in time to an upgrade request.
    UpgradeTimeout,
}

impl From<Kind> for ProxyError {
    fn from(kind: Kind) -> ProxyError {
        ProxyError::new(kind)
    }
}

impl ProxyError {
    /// The error, with whose fault it is and whether it may be retried.
    pub fn new(kind: Kind) -> ProxyError {
        use Fault::{Client, Peer, Router, Upstream};
        let upstream = |w: &Whom| if w.remote { Peer } else { Upstream };
        let (whose_fault, retry) = match &kind {
            Kind::Protocol(_)
            | Kind::HeadTooLarge { .. }
            | Kind::BodyTooLarge { .. }
            | Kind::BodyOverLength
            | Kind::BodyBroken { .. } => (Client, Retry::No),
            // Sent without pauses, it may pass.
            Kind::BodySlow { .. } => (Client, Retry::Yes),
            Kind::Unroutable { status, .. } if status.is_client_error() => (Client, Retry::No),
            Kind::Unroutable { .. } => (Router, Retry::No),
            Kind::PeerHopMismatch { .. } => (Peer, Retry::No),
            Kind::Loop { .. } => (Router, Retry::No),
            Kind::NoTopology | Kind::Frozen => (Router, Retry::Yes),
            Kind::BehindPeer { .. } => (Router, Retry::After(1)),
            Kind::Held { deadline, .. } => (Router, Retry::After(deadline.as_secs().max(1))),
            Kind::Fenced { .. } => (Upstream, Retry::After(1)),
            Kind::NoPeerTrust { .. }
            | Kind::NoUpstreamsInTopology { .. }
            | Kind::NothingToSend
            | Kind::Misconfigured { .. } => (Router, Retry::No),
            Kind::NoUpstreamAvailable | Kind::UpgradeTimeout => (Upstream, Retry::Yes),
            Kind::UpstreamFailed { whom, .. } | Kind::UpstreamTimeout { whom, .. } => {
                (upstream(whom), Retry::Yes)
            }
        };
        ProxyError {
            kind,
            whose_fault,
            retry,
        }
    }

    /// A client's request body that could not be read (`max_body_bytes`:
    /// `limits.max_body_bytes`, which the answer to a body too large names).
    pub fn body(fault: &BodyFault, max_body_bytes: u64) -> ProxyError {
        ProxyError::new(match fault {
            BodyFault::TooLarge => Kind::BodyTooLarge {
                limit: max_body_bytes,
            },
            BodyFault::Broken(why) => Kind::BodyBroken { why: why.clone() },
            BodyFault::TimedOut { after, setting } => Kind::BodySlow {
                after: *after,
                setting,
            },
        })
    }

    /// The status of its answer.
    pub fn status(&self) -> StatusCode {
        match &self.kind {
            Kind::Protocol(r) => r.status(),
            Kind::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Kind::BodyTooLarge { .. } | Kind::BodyOverLength => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::BodyBroken { .. } => StatusCode::BAD_REQUEST,
            Kind::BodySlow { .. } => StatusCode::REQUEST_TIMEOUT,
            Kind::Unroutable { status, .. } => *status,
            Kind::PeerHopMismatch { .. } => StatusCode::FORBIDDEN,
            Kind::Loop { .. } => StatusCode::LOOP_DETECTED,
            Kind::NoTopology
            | Kind::BehindPeer { .. }
            | Kind::Frozen
            | Kind::Held { .. }
            | Kind::Fenced { .. }
            | Kind::NoPeerTrust { .. }
            | Kind::NoUpstreamsInTopology { .. }
            | Kind::NoUpstreamAvailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::NothingToSend | Kind::Misconfigured { .. } | Kind::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Kind::UpstreamTimeout { .. } | Kind::UpgradeTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Its `reason` in `ezone_router_rejected_total`, if it counts there
    /// (an upstream's failures count in `ezone_router_upstream_errors_total`
    /// instead, a hold's in `ezone_router_hold_outcomes_total`, a fenced
    /// write's in `ezone_router_fenced_writes_total`).
    pub fn label(&self) -> Option<&'static str> {
        Some(match &self.kind {
            Kind::Protocol(r) => r.label(),
            Kind::HeadTooLarge { .. } => "headers_too_large",
            Kind::BodyTooLarge { .. } | Kind::BodyOverLength => "body_too_large",
            Kind::BodyBroken { .. } => "bad_body",
            Kind::BodySlow { .. } => "body_timeout",
            Kind::Unroutable { fallback, .. } => fallback.map_or("rejected", |f| f.as_str()),
            Kind::PeerHopMismatch { .. } => "peer_hop_mismatch",
            Kind::Loop { .. } => "loop",
            Kind::NoTopology => "no_topology",
            Kind::NoPeerTrust { .. } => "no_peer_secret",
            Kind::NoUpstreamsInTopology { .. } | Kind::NoUpstreamAvailable => "no_upstreams",
            Kind::Misconfigured { .. } => "bad_upstream_addr",
            Kind::BehindPeer { .. }
            | Kind::Frozen
            | Kind::Held { .. }
            | Kind::Fenced { .. }
            | Kind::NothingToSend
            | Kind::UpstreamFailed { .. }
            | Kind::UpstreamTimeout { .. }
            | Kind::UpgradeTimeout => return None,
        })
    }

    /// Whether the connection must close after the answer: the request's
    /// body framing is in doubt, or the rest of a late body may still come
    /// (neither can be told from a next request).
    pub fn closes(&self) -> bool {
        match &self.kind {
            Kind::Protocol(r) => r.closes(),
            Kind::BodySlow { .. } => true,
            _ => false,
        }
    }

    /// What the answer says (after `ezone: `): what is wrong, and what to
    /// do about it.
    pub fn reason(&self) -> String {
        match &self.kind {
            Kind::Protocol(r) => r.to_string(),
            Kind::HeadTooLarge { bytes, limit } => {
                format!("request head is {bytes} bytes, over the limit of {limit}")
            }
            Kind::BodyTooLarge { limit } => format!("request body larger than {limit} bytes"),
            Kind::BodyOverLength => "request body longer than its Content-Length".into(),
            Kind::BodyBroken { why } => format!("the request body could not be read ({why}); send a well-formed body (chunk sizes are hexadecimal digits)"),
            Kind::BodySlow { after, setting } => format!("the request body did not arrive in time ({setting}: {after:?}); send the body right after the head, without pauses"),
            Kind::Unroutable { reason, .. } => reason.clone(),
            Kind::PeerHopMismatch { site } => format!("the peer listener takes requests forwarded by other sites' routers: X-Ezone-Hop must end with the site your certificate names ({site})"),
            Kind::Loop { site, hops } => format!("routing loop: the request already passed through site {site} (hops: {hops}); the sites' topologies disagree"),
            Kind::NoTopology => "no topology loaded yet; see /readyz".into(),
            Kind::BehindPeer { shard, epoch } => format!("shard {shard}: this router's topology is behind epoch {epoch} that the forwarding router used; retry shortly"),
            Kind::Frozen => "shard is frozen".into(),
            Kind::Held { shard, overflow, .. } => {
                let why = if *overflow {
                    "too many writes held for frozen shards"
                } else {
                    "the shard stayed frozen past the write-hold deadline"
                };
                format!("shard {shard} is being moved: {why}; retry shortly")
            }
            Kind::Fenced { site, shard, epoch, waited } => format!("site {site}'s database refused the write for shard {shard} (fenced: a move is under way, or this router's topology is stale) and no newer topology than epoch {epoch} arrived within {waited:?}; retry shortly"),
            Kind::NoPeerTrust { site } => format!("this router cannot forward to site {site}: neither [peer_tls] nor routing.peer_secret is set; set up peer TLS (or the same secret) on every router of the deployment"),
            Kind::NoUpstreamsInTopology { site } => {
                format!("site {site} has no upstreams in the topology")
            }
            Kind::NoUpstreamAvailable => "no upstream available".into(),
            Kind::NothingToSend => "no request head left to send".into(),
            Kind::Misconfigured { whom, reason } => {
                format!("{whom} is misconfigured: {reason}; see the router's log")
            }
            Kind::UpstreamFailed { whom, reason } => format!("{whom} failed: {reason}; retry, and see the router's log for which endpoint"),
            Kind::UpstreamTimeout { whom, after } => format!("{whom} sent no response head within {after:?} (timeouts.request_ms); retry, and see the router's log for which endpoint"),
            Kind::UpgradeTimeout => "upstream sent no response head in time".into(),
        }
    }

    /// The answer the client gets.
    pub fn answer(&self) -> Response<Body> {
        let mut resp = plain(self.status(), &self.reason());
        let fields = resp.headers_mut();
        if self.closes() {
            fields.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Retry::After(secs) = self.retry {
            fields.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self.kind, Kind::Fenced { .. }) {
            // Still the fence's refusal: nothing of the write was committed.
            fields.insert(headers::X_EZONE_FENCED, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// An answer of the router's own (see [`crate::error::answer_text`]).
pub(crate) fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(crate::error::answer_text(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::error::ANSWER_CONTENT_TYPE),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn whom(remote: bool) -> Whom {
        Whom {
            site: "shanghai".into(),
            remote,
        }
    }

    /// Every answer the router gives itself: status, body, the header
    /// fields besides `content-type`, whose fault, retry, and the metric
    /// label. The bodies are the router's answers as they have always been
    /// (tests of the whole router read parts of them).
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(
        Kind,
        u16,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Fault,
        Retry,
        Option<&'static str>,
    )> {
        use Fault::*;
        let ms = Duration::from_millis;
        vec![
            (Kind::Protocol(Refusal::Hosts), 400, "more than one Host field; send exactly one", vec![], Client, Retry::No, Some("bad_host")),
            (Kind::Protocol(Refusal::TransferCoding), 501, "Transfer-Encoding other than `chunked` is not supported; send the body chunked (only), or with a Content-Length", vec![("connection", "close")], Client, Retry::No, Some("bad_transfer_encoding")),
            (Kind::Protocol(Refusal::RepeatedKey("query parameter city".into())), 400, "query parameter city (a routing key) appears more than once; send it once", vec![], Client, Retry::No, Some("repeated_key")),
            (Kind::HeadTooLarge { bytes: 9000, limit: 8192 }, 431, "request head is 9000 bytes, over the limit of 8192", vec![], Client, Retry::No, Some("headers_too_large")),
            (Kind::BodyTooLarge { limit: 1024 }, 413, "request body larger than 1024 bytes", vec![], Client, Retry::No, Some("body_too_large")),
            (Kind::BodyOverLength, 413, "request body longer than its Content-Length", vec![], Client, Retry::No, Some("body_too_large")),
            (Kind::BodyBroken { why: "invalid chunk size".into() }, 400, "the request body could not be read (invalid chunk size); send a well-formed body (chunk sizes are hexadecimal digits)", vec![], Client, Retry::No, Some("bad_body")),
            (Kind::BodySlow { after: ms(1500), setting: "timeouts.body_read_ms" }, 408, "the request body did not arrive in time (timeouts.body_read_ms: 1.5s); send the body right after the head, without pauses", vec![("connection", "close")], Client, Retry::Yes, Some("body_timeout")),
            (Kind::Unroutable { status: StatusCode::NOT_FOUND, reason: "unknown city \"999\": it is not in the routing table".into(), fallback: Some(Fallback::UnknownCity) }, 404, "unknown city \"999\": it is not in the routing table", vec![], Client, Retry::No, Some("unknown_city")),
            (Kind::Unroutable { status: StatusCode::SERVICE_UNAVAILABLE, reason: "site \"x\" is not in the topology".into(), fallback: None }, 503, "site \"x\" is not in the topology", vec![], Router, Retry::No, Some("rejected")),
            (Kind::PeerHopMismatch { site: "shanghai".into() }, 403, "the peer listener takes requests forwarded by other sites' routers: X-Ezone-Hop must end with the site your certificate names (shanghai)", vec![], Peer, Retry::No, Some("peer_hop_mismatch")),
            (Kind::Loop { site: "beijing".into(), hops: "beijing,shanghai".into() }, 508, "routing loop: the request already passed through site beijing (hops: beijing,shanghai); the sites' topologies disagree", vec![], Router, Retry::No, Some("loop")),
            (Kind::NoTopology, 503, "no topology loaded yet; see /readyz", vec![], Router, Retry::Yes, Some("no_topology")),
            (Kind::BehindPeer { shard: 3, epoch: 7 }, 503, "shard 3: this router's topology is behind epoch 7 that the forwarding router used; retry shortly", vec![("retry-after", "1")], Router, Retry::After(1), None),
            (Kind::Frozen, 503, "shard is frozen", vec![], Router, Retry::Yes, None),
            (Kind::Held { shard: 1, overflow: false, deadline: ms(2000) }, 503, "shard 1 is being moved: the shard stayed frozen past the write-hold deadline; retry shortly", vec![("retry-after", "2")], Router, Retry::After(2), None),
            (Kind::Held { shard: 1, overflow: true, deadline: ms(300) }, 503, "shard 1 is being moved: too many writes held for frozen shards; retry shortly", vec![("retry-after", "1")], Router, Retry::After(1), None),
            (Kind::Fenced { site: "beijing".into(), shard: 1, epoch: 4, waited: ms(2000) }, 503, "site beijing's database refused the write for shard 1 (fenced: a move is under way, or this router's topology is stale) and no newer topology than epoch 4 arrived within 2s; retry shortly", vec![("retry-after", "1"), ("x-ezone-fenced", "1")], Upstream, Retry::After(1), None),
            (Kind::NoPeerTrust { site: "shanghai".into() }, 503, "this router cannot forward to site shanghai: neither [peer_tls] nor routing.peer_secret is set; set up peer TLS (or the same secret) on every router of the deployment", vec![], Router, Retry::No, Some("no_peer_secret")),
            (Kind::NoUpstreamsInTopology { site: "beijing".into() }, 503, "site beijing has no upstreams in the topology", vec![], Router, Retry::No, Some("no_upstreams")),
            (Kind::NoUpstreamAvailable, 503, "no upstream available", vec![], Upstream, Retry::Yes, Some("no_upstreams")),
            (Kind::NothingToSend, 502, "no request head left to send", vec![], Router, Retry::No, None),
            (Kind::Misconfigured { whom: whom(false), reason: "its address in the topology does not make a URI".into() }, 502, "an upstream of site shanghai is misconfigured: its address in the topology does not make a URI; see the router's log", vec![], Router, Retry::No, Some("bad_upstream_addr")),
            (Kind::UpstreamFailed { whom: whom(false), reason: "cannot connect: refused".into() }, 502, "an upstream of site shanghai failed: cannot connect: refused; retry, and see the router's log for which endpoint", vec![], Upstream, Retry::Yes, None),
            (Kind::UpstreamFailed { whom: whom(true), reason: "cannot connect: refused".into() }, 502, "the router of site shanghai failed: cannot connect: refused; retry, and see the router's log for which endpoint", vec![], Peer, Retry::Yes, None),
            (Kind::UpstreamTimeout { whom: whom(true), after: ms(30_000) }, 504, "the router of site shanghai sent no response head within 30s (timeouts.request_ms); retry, and see the router's log for which endpoint", vec![], Peer, Retry::Yes, None),
            (Kind::UpgradeTimeout, 504, "upstream sent no response head in time", vec![], Upstream, Retry::Yes, None),
        ]
    }

    #[tokio::test]
    async fn every_error_maps_to_one_answer() {
        for (kind, status, text, fields, fault, retry, label) in table() {
            let e = ProxyError::new(kind.clone());
            assert_eq!(e.whose_fault, fault, "{kind:?}");
            assert_eq!(e.retry, retry, "{kind:?}");
            assert_eq!(e.label(), label, "{kind:?}");
            let resp = e.answer();
            assert_eq!(resp.status().as_u16(), status, "{kind:?}");
            let mut got: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().expect("ASCII").to_string()))
                .collect();
            assert_eq!(
                got.remove(0),
                ("content-type".into(), "text/plain; charset=utf-8".into())
            );
            let want: Vec<(String, String)> = fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want, "{kind:?}");
            let body = resp
                .into_body()
                .collect()
                .await
                .expect("a full body")
                .to_bytes();
            assert_eq!(body, format!("ezone: {text}\n").as_bytes(), "{kind:?}");
        }
    }

    #[test]
    fn a_body_fault_is_the_clients() {
        let cases = [
            (BodyFault::TooLarge, 413),
            (BodyFault::Broken("cut".into()), 400),
            (
                BodyFault::TimedOut {
                    after: Duration::from_secs(1),
                    setting: "timeouts.request_ms",
                },
                408,
            ),
        ];
        for (fault, status) in cases {
            let e = ProxyError::body(&fault, 10);
            assert_eq!(e.status().as_u16(), status, "{fault:?}");
            assert_eq!(e.whose_fault, Fault::Client, "{fault:?}");
        }
        assert_eq!(
            ProxyError::body(&BodyFault::TooLarge, 10).reason(),
            "request body larger than 10 bytes"
        );
    }
}
