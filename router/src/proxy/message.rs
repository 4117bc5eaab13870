//! What is sent upstream, prepared once: where it goes ([`Target`]), and
//! the request as it goes there ([`Message`]): a request without a body
//! to an HTTP/1 upstream or a peer router has its head encoded once for the
//! router's own exchange (a retry resends the same bytes); any other is
//! prepared for hyper's client. Either way the head carries the router's
//! fields (`headers::forwarded_fields`).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode};

use ezone_topology::Snapshot;

use super::error::Whom;
use super::router::{ConnInfo, Router, Worker};
use crate::http1::codec as h1;
use crate::policy::decide::ShardRef;
use crate::policy::headers;
use crate::upstream::body::{self, Body, BodyFault, BodyWatch, RequestBody};

/// Where a request is sent.
pub(super) struct Target {
    pub site: String,
    pub shard: Option<ShardRef>,
    /// The snapshot the decision was made on: addresses are borrowed from it
    /// instead of copied for every request.
    pub snap: Arc<Snapshot>,
    /// To one of the site's routers (the site is another).
    pub remote: bool,
}

impl Target {
    /// Candidate addresses (`host:port`): the site's upstreams, or its
    /// routers (borrowed unless the site lists more than one router).
    pub fn addrs(&self) -> Cow<'_, [String]> {
        match self.snap.topology.sites.get(&self.site) {
            Some(s) if self.remote && s.more_routers.is_empty() => {
                Cow::Borrowed(std::slice::from_ref(&s.router))
            }
            Some(s) if self.remote => Cow::Owned(s.routers().cloned().collect()),
            Some(s) => Cow::Borrowed(&s.upstreams),
            None => Cow::Borrowed(&[]),
        }
    }

    /// Who an answer says failed: the site, never an address.
    pub fn whom(&self) -> Whom {
        Whom {
            site: self.site.clone(),
            remote: self.remote,
        }
    }
}

/// What is sent upstream.
pub(super) enum Message {
    /// A request without a body to an HTTP/1 upstream: its head, encoded
    /// once, for the router's own exchange (a retry resends these bytes).
    Encoded(BytesMut),
    /// Any other: for hyper's client. Boxed: the less common case, and a
    /// larger one (it would make every request's future larger).
    Hyper(Box<HyperMessage>),
}

/// A request for hyper's client.
pub(super) struct HyperMessage {
    /// The head as it goes upstream; `None` once sent for the last time.
    head: Option<http::request::Parts>,
    /// The streamed body, if the request has one.
    body: Option<Body>,
    /// A body read whole (see `write`): sent with every attempt.
    replay: Option<Bytes>,
    /// Whether reading the streamed body failed (the client's fault).
    watch: Option<BodyWatch>,
}

impl HyperMessage {
    /// The request for the next attempt; the head is kept for another if
    /// `again`.
    pub fn request(&mut self, again: bool) -> Option<Request<Body>> {
        let head = if again {
            self.head.clone()
        } else {
            self.head.take()
        }?;
        let body = self
            .body
            .take()
            .or_else(|| self.replay.clone().map(body::full))
            .unwrap_or_else(body::empty);
        Some(Request::from_parts(head, body))
    }
}

/// A request ready to be sent upstream.
pub(super) struct Forward {
    pub message: Message,
    /// It is a HEAD request (its response has no body).
    pub head_request: bool,
    pub target: Target,
    /// No body, or one kept: it may be sent again (a body is streamed,
    /// never buffered, unless it is a write kept to be resent).
    pub resendable: bool,
    pub idempotent: bool,
}

impl Forward {
    /// How reading the client's streamed body failed, if it did.
    pub fn body_fault(&self) -> Option<&BodyFault> {
        match &self.message {
            Message::Hyper(m) => m.watch.as_ref()?.fault(),
            Message::Encoded(_) => None,
        }
    }

    /// Whether the exchange is waiting for more of the client's body now.
    pub fn waiting_for_client(&self) -> bool {
        match &self.message {
            Message::Hyper(m) => m.watch.as_ref().is_some_and(BodyWatch::waiting_for_client),
            Message::Encoded(_) => false,
        }
    }
}

/// The request's `Content-Length`, if it has one that is a number.
pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Whether a request has a body (to stream, or to read whole).
pub(super) fn has_body(req: &Request<RequestBody>) -> bool {
    if req.headers().contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match content_length(req.headers()) {
        Some(n) => n > 0,
        // HTTP/2 requests may stream a body without a length.
        None => req.version() == http::Version::HTTP_2 && !req.body().is_end_stream(),
    }
}

/// Whether a method may be sent again after a failure that may have
/// reached the upstream.
pub(super) fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// An upstream's answer that the database fence refused the write (nothing
/// of it committed).
pub(super) fn is_fenced(resp: &Response<Body>) -> bool {
    resp.status() == StatusCode::SERVICE_UNAVAILABLE
        && resp.headers().contains_key(headers::X_EZONE_FENCED)
}

/// Whether a request without a body goes over the router's own HTTP/1
/// exchange (see `upstream::client`): not CONNECT, to an HTTP/1 upstream or
/// a peer router. (Its `Host` is always written: see
/// [`headers::forwarded_fields`].)
fn own_exchange(parts: &http::request::Parts, target: &Target, worker: &Worker) -> bool {
    parts.method != Method::CONNECT && (target.remote || !worker.client.upstreams_h2())
}

impl Router {
    /// The request as it goes to `target`: its head encoded once for the
    /// router's own exchange if it has no body, else prepared for hyper's
    /// client with its body streamed through the size limit, watched for
    /// the client's errors.
    pub(super) fn prepare(
        &self,
        req: Request<RequestBody>,
        conn: &ConnInfo,
        target: Target,
        worker: &Worker,
    ) -> Forward {
        let resendable = !has_body(&req);
        let idempotent = idempotent(req.method());
        let (mut parts, incoming) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        if resendable && own_exchange(&parts, &target, worker) {
            return Forward {
                message: Message::Encoded(self.encode_head(&parts, conn, &target)),
                head_request,
                target,
                resendable,
                idempotent,
            };
        }
        // A request without a body sends none (no limit wrapper needed); one
        // with a body streams through the size limit, watched for the
        // client's errors.
        let (body, watch) = if resendable {
            (None, None)
        } else {
            let (b, w) = incoming.limited(
                usize::try_from(self.cfg.limits.max_body_bytes).unwrap_or(usize::MAX),
                self.cfg.timeouts.body_read(),
            );
            (Some(b), w)
        };
        self.prepare_head(&mut parts, conn, &target, false);
        Forward {
            message: Message::Hyper(Box::new(HyperMessage {
                head: Some(parts),
                body,
                replay: None,
                watch,
            })),
            head_request,
            target,
            resendable,
            idempotent,
        }
    }

    /// A write whose body was read whole (`body`), ready to send (again):
    /// it can always be resent.
    pub(super) fn prepare_kept(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
        conn: &ConnInfo,
        target: Target,
        worker: &Worker,
    ) -> Forward {
        let message = if body.is_empty() && own_exchange(parts, &target, worker) {
            Message::Encoded(self.encode_head(parts, conn, &target))
        } else {
            let mut head = parts.clone();
            self.prepare_head(&mut head, conn, &target, false);
            Message::Hyper(Box::new(HyperMessage {
                head: Some(head),
                body: None,
                replay: Some(body.clone()),
                watch: None,
            }))
        };
        Forward {
            message,
            head_request: false,
            target,
            resendable: true,
            idempotent: idempotent(&parts.method),
        }
    }

    /// What the router adds to a request it sends to `target`.
    fn forwarding<'a>(
        &'a self,
        conn: &'a ConnInfo,
        target: &'a Target,
        upgrade: bool,
        request: &HeaderMap,
    ) -> headers::Forwarding<'a> {
        headers::Forwarding {
            site: &target.site,
            site_value: self
                .site_value
                .as_ref()
                .filter(|_| target.site == self.policy.site),
            shard: target.shard.map(|s| (s.id, s.epoch)),
            client: conn.peer_value.as_ref(),
            tls: conn.tls,
            hop: target
                .remote
                .then(|| (self.policy.site.as_str(), target.shard.map(|s| s.epoch))),
            upgrade,
            peer: self.is_from_peer(request, conn),
            peer_secret: self.peer_secret.as_ref(),
            keys: &self.key_headers,
        }
    }

    /// The head as it goes upstream through hyper: the forwarded fields
    /// ([`headers::forwarded_fields`]) in a new header map, HTTP/1.1.
    pub(super) fn prepare_head(
        &self,
        parts: &mut http::request::Parts,
        conn: &ConnInfo,
        target: &Target,
        upgrade: bool,
    ) {
        let mut fields = HeaderMap::with_capacity(parts.headers.len() + 8);
        headers::forwarded_fields(
            parts,
            &self.forwarding(conn, target, upgrade, &parts.headers),
            &mut fields,
        );
        parts.headers = fields;
        // The upstream connection's protocol is the client's choice, not ours.
        parts.version = http::Version::HTTP_11;
    }

    /// The head as it goes upstream through the router's own HTTP/1
    /// exchange: encoded once, straight from the client's head.
    fn encode_head(
        &self,
        parts: &http::request::Parts,
        conn: &ConnInfo,
        target: &Target,
    ) -> BytesMut {
        let mut out = BytesMut::with_capacity(
            parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
                + parts
                    .headers
                    .iter()
                    .map(|(k, v)| k.as_str().len() + v.len() + 4)
                    .sum::<usize>()
                + 256,
        );
        h1::encode_request_line(&parts.method, &parts.uri, &mut out);
        let mut w = h1::HeadWriter(&mut out);
        headers::forwarded_fields(
            parts,
            &self.forwarding(conn, target, false, &parts.headers),
            &mut w,
        );
        w.finish();
        // Not frozen into `Bytes`: that would allocate again, and it is only
        // ever borrowed.
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_requests_have_a_body_and_which_may_be_resent() {
        let req = |method: &str, fields: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri("/x");
            for (k, v) in fields {
                b = b.header(*k, *v);
            }
            b.body(RequestBody::Empty).expect("a valid request")
        };
        let cases = [
            (req("GET", &[]), false, true),
            (req("GET", &[("content-length", "0")]), false, true),
            (req("POST", &[("content-length", "7")]), true, false),
            (
                req("POST", &[("transfer-encoding", "chunked")]),
                true,
                false,
            ),
            (req("PUT", &[("content-length", "x")]), false, true),
            (req("DELETE", &[]), false, true),
            (req("PATCH", &[]), false, false),
        ];
        for (r, body, idem) in cases {
            assert_eq!(has_body(&r), body, "{} {:?}", r.method(), r.headers());
            assert_eq!(idempotent(r.method()), idem, "{}", r.method());
        }
        assert_eq!(
            content_length(req("POST", &[("content-length", "12")]).headers()),
            Some(12)
        );
    }

    #[test]
    fn only_a_fenced_503_is_the_fences_refusal() {
        let answer = |status: u16, fenced: bool| {
            let mut r = Response::new(body::empty());
            *r.status_mut() = StatusCode::from_u16(status).expect("a status");
            if fenced {
                r.headers_mut()
                    .insert(headers::X_EZONE_FENCED, http::HeaderValue::from_static("1"));
            }
            r
        };
        assert!(is_fenced(&answer(503, true)));
        assert!(!is_fenced(&answer(503, false)));
        assert!(!is_fenced(&answer(500, true)));
    }
}
