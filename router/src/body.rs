//! The body type the router passes around: requests and responses stream
//! through without buffering.
//!
//! [`Body`] is an enum rather than one boxed trait object: the two bodies of
//! almost every proxied exchange (an empty upstream request body, the
//! upstream's response) then cost no allocation and no virtual call; only
//! the rare ones (a request body streamed through the size limit, an HTTP/2
//! upstream's response) are boxed.
//!
//! A client's body streamed upstream is watched ([`BodyWatch`]): if reading
//! it fails (a malformed chunk size, a connection cut mid-body, the size
//! limit), the exchange that fails with it is the client's fault, not the
//! upstream's, whatever error the upstream connection reports.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};

use crate::client::{Checkin, RawBody};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request or response body.
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// A complete body in memory (error responses, admin pages); `None` once
    /// it has been read, or for an empty body.
    Full(Option<Bytes>),
    /// An HTTP/1 upstream's response, streamed; its connection goes back to
    /// the worker's pool once the body has been read to the end.
    Upstream(UpstreamBody),
    /// The same, read by the router's own HTTP/1 exchange.
    Raw(RawBody),
    /// Anything else, boxed.
    Boxed(BoxBody<Bytes, BoxError>),
}

/// An upstream response body and the pooled connection it arrived on.
struct UpstreamBody {
    inner: Incoming,
    /// Returned to the pool on drop if the body was read to its end (a body
    /// dropped half-read leaves its connection unusable: it is closed).
    conn: Option<Checkin>,
    done: bool,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.done || hyper::body::Body::is_end_stream(&self.inner) {
                conn.checkin();
            }
        }
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Full(_) => "full",
            Kind::Upstream(_) => "upstream",
            Kind::Raw(_) => "raw",
            Kind::Boxed(_) => "boxed",
        };
        f.debug_struct("Body").field("kind", &kind).finish()
    }
}

/// A client request's body as the request path sees it.
#[derive(Debug)]
pub enum RequestBody {
    /// From hyper's server connection: it may stream a body.
    Hyper(Incoming),
    /// None: a request read by the router's own HTTP/1 server, which only
    /// takes requests without a body (see `crate::h1_server`).
    Empty,
}

impl RequestBody {
    /// Nothing (more) to read.
    pub fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => hyper::body::Body::is_end_stream(b),
            RequestBody::Empty => true,
        }
    }

    /// The body to send upstream, cut off with an error past `limit` bytes,
    /// and (if there is one) the watch that tells whether reading it failed.
    pub fn limited(self, limit: usize) -> (Body, Option<BodyWatch>) {
        match self {
            RequestBody::Hyper(b) => {
                let watch = BodyWatch::default();
                let body = Watched {
                    inner: http_body_util::Limited::new(b, limit),
                    watch: watch.clone(),
                };
                (boxed(body), Some(watch))
            }
            RequestBody::Empty => (empty(), None),
        }
    }

    /// The whole body, up to `limit` bytes.
    pub async fn collect(self, limit: usize) -> Result<Bytes, BoxError> {
        match self {
            RequestBody::Hyper(b) => Ok(http_body_util::Limited::new(b, limit)
                .collect()
                .await?
                .to_bytes()),
            RequestBody::Empty => Ok(Bytes::new()),
        }
    }

    /// As a body to send (upgrades: whatever the client sends first).
    pub fn into_body(self) -> Body {
        match self {
            RequestBody::Hyper(b) => boxed(b),
            RequestBody::Empty => empty(),
        }
    }
}

/// How reading a client's request body failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFault {
    /// Past `limits.max_body_bytes`.
    TooLarge,
    /// It does not parse (a malformed chunk size, say), or the client's
    /// connection ended in the middle of it: what went wrong, as the
    /// client's side of the router saw it (no upstream in it).
    Broken(String),
}

/// Whether reading a client's request body on its way upstream failed.
/// Set by the body itself, before the upstream connection that was reading
/// it sees the error, so it is known by the time the exchange fails.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Arc<OnceLock<BodyFault>>);

impl BodyWatch {
    /// The first failure, if reading the body failed.
    pub fn fault(&self) -> Option<&BodyFault> {
        self.0.get()
    }

    fn note(&self, e: &BoxError) {
        let fault = if e.is::<http_body_util::LengthLimitError>() {
            BodyFault::TooLarge
        } else {
            BodyFault::Broken(crate::proxy::error_chain(&**e))
        };
        let _ = self.0.set(fault);
    }
}

/// A client's body on its way upstream, its failures noted in a [`BodyWatch`].
struct Watched {
    inner: http_body_util::Limited<Incoming>,
    watch: BodyWatch,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &r {
            self.watch.note(e);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A complete body from bytes.
pub fn full(b: impl Into<Bytes>) -> Body {
    let b = b.into();
    Body {
        kind: Kind::Full((!b.is_empty()).then_some(b)),
    }
}

/// An empty body.
pub fn empty() -> Body {
    Body {
        kind: Kind::Full(None),
    }
}

/// An upstream response body read by the router's own HTTP/1 exchange.
pub(crate) fn raw(b: RawBody) -> Body {
    Body { kind: Kind::Raw(b) }
}

/// Wraps any body whose error converts into [`BoxError`].
pub fn boxed<B>(b: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    Body {
        kind: Kind::Boxed(b.map_err(Into::into).boxed()),
    }
}

/// An upstream response body; `conn` (if any) is checked back in to its
/// pool once the body has been read to its end.
pub(crate) fn upstream(inner: Incoming, conn: Option<Checkin>) -> Body {
    Body {
        kind: Kind::Upstream(UpstreamBody {
            inner,
            conn,
            done: false,
        }),
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(u) => {
                let r = Pin::new(&mut u.inner).poll_frame(cx);
                match &r {
                    Poll::Ready(None) => u.done = true,
                    Poll::Ready(Some(Err(_))) => {
                        // The connection failed mid-body: never reuse it.
                        u.conn = None;
                    }
                    _ => {}
                }
                r.map(|f| f.map(|f| f.map_err(Into::into)))
            }
            Kind::Raw(b) => b.poll_frame(cx),
            Kind::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(u) => u.done || u.inner.is_end_stream(),
            Kind::Raw(b) => b.is_end_stream(),
            Kind::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(u) => u.inner.size_hint(),
            Kind::Raw(b) => b.size_hint(),
            Kind::Boxed(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_and_empty_bodies() {
        let b = full("hello");
        assert!(!hyper::body::Body::is_end_stream(&b));
        assert_eq!(hyper::body::Body::size_hint(&b).exact(), Some(5));
        let bytes = b.collect().await.expect("full body").to_bytes();
        assert_eq!(&bytes[..], b"hello");
        let e = empty();
        assert!(hyper::body::Body::is_end_stream(&e));
        assert_eq!(hyper::body::Body::size_hint(&e).exact(), Some(0));
        assert!(e.collect().await.expect("empty body").to_bytes().is_empty());
        assert!(hyper::body::Body::is_end_stream(&full("")));
    }
}
