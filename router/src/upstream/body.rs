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
//! limit, nothing for `timeouts.body_read_ms`), the exchange that fails
//! with it is the client's fault, not the upstream's, whatever error the
//! upstream connection reports.
//!
//! Both directions are bounded between reads ([`crate::stall`]): a client's
//! request body by `timeouts.body_read_ms`, an upstream's response body by
//! `timeouts.upstream_read_ms` (which counts against the upstream). Only
//! the time the router spends waiting for the next bytes counts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};

use super::error::UpstreamError;
use super::pool::{Checkin, Upstream};
use super::raw::RawBody;
pub use crate::error::BoxError;
use crate::stall::Stall;

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
    Raw(RawBody<Body>),
    /// Anything else, boxed.
    Boxed(BoxBody<Bytes, BoxError>),
}

/// An upstream response body and the pooled connection it arrived on.
struct UpstreamBody {
    inner: Incoming,
    /// Returned to the pool on drop if the body was read to its end (a body
    /// dropped half-read leaves its connection unusable: it is closed).
    conn: Option<Checkin<Body>>,
    done: bool,
    /// Who sent it: a stall counts against it.
    from: Option<Arc<Upstream<Body>>>,
    stall: Stall,
}

impl UpstreamBody {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let r = hyper::body::Body::poll_frame(Pin::new(&mut self.inner), cx);
        match &r {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Err(_))) => {
                // The connection failed mid-body: never reuse it.
                self.conn = None;
            }
            Poll::Ready(Some(Ok(_))) => {}
            Poll::Pending => {
                if let Some(from) = &self.from {
                    let limit = from.read_timeout();
                    if self.stall.poll_expired(cx, limit).is_ready() {
                        from.stalled();
                        self.conn = None;
                        self.done = true;
                        return Poll::Ready(Some(Err(Box::new(UpstreamError::Stalled {
                            after: limit,
                        }))));
                    }
                }
                return Poll::Pending;
            }
        }
        self.stall.progress();
        r.map(|f| f.map(|f| f.map_err(Into::into)))
    }
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
    /// takes requests without a body (see `crate::http1::server`).
    Empty,
}

/// What the router's own HTTP/1 server makes a request with: no body.
impl Default for RequestBody {
    fn default() -> Self {
        RequestBody::Empty
    }
}

impl RequestBody {
    /// Nothing (more) to read.
    pub fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => hyper::body::Body::is_end_stream(b),
            RequestBody::Empty => true,
        }
    }

    /// The body to send upstream, cut off with an error past `limit` bytes
    /// or when nothing of it arrives for `read_timeout` while it is waited
    /// for, and (if there is one) the watch that tells whether reading it
    /// failed.
    pub fn limited(self, limit: usize, read_timeout: Duration) -> (Body, Option<BodyWatch>) {
        match self {
            RequestBody::Hyper(b) => {
                let body = Watched::new(b, limit, read_timeout);
                let watch = body.watch.clone();
                (boxed(body), Some(watch))
            }
            RequestBody::Empty => (empty(), None),
        }
    }

    /// The whole body, up to `limit` bytes, none of it more than
    /// `read_timeout` after the last (else a [`BodyTimeout`] error).
    pub async fn collect(self, limit: usize, read_timeout: Duration) -> Result<Bytes, BoxError> {
        match self {
            RequestBody::Hyper(b) => Ok(Watched::new(b, limit, read_timeout)
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
    /// Nothing of it arrived for `after` (the `setting`) while the router
    /// waited for it.
    TimedOut {
        after: Duration,
        setting: &'static str,
    },
}

/// A client's request body that stopped arriving: nothing of it for the
/// time given (`timeouts.body_read_ms`) while the router waited.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {0:?} (timeouts.body_read_ms)")]
pub struct BodyTimeout(pub Duration);

#[derive(Debug, Default)]
struct WatchState {
    fault: OnceLock<BodyFault>,
    /// The router is waiting for more of the body now.
    waiting: AtomicBool,
}

/// Whether reading a client's request body on its way upstream failed.
/// Set by the body itself, before the upstream connection that was reading
/// it sees the error, so it is known by the time the exchange fails.
#[derive(Debug, Clone, Default)]
pub struct BodyWatch(Arc<WatchState>);

impl BodyWatch {
    /// The first failure, if reading the body failed.
    pub fn fault(&self) -> Option<&BodyFault> {
        self.0.fault.get()
    }

    /// Whether the body is being waited for right now: the upstream has
    /// asked for more and the client has not sent it. (If the exchange runs
    /// out of time then, the client is the one holding it up.)
    pub fn waiting_for_client(&self) -> bool {
        self.fault().is_none() && self.0.waiting.load(Ordering::Relaxed)
    }

    fn note(&self, e: &BoxError) {
        let fault = if e.is::<http_body_util::LengthLimitError>() {
            BodyFault::TooLarge
        } else if let Some(t) = e.downcast_ref::<BodyTimeout>() {
            BodyFault::TimedOut {
                after: t.0,
                setting: "timeouts.body_read_ms",
            }
        } else {
            BodyFault::Broken(crate::error::chain(&**e))
        };
        let _ = self.0.fault.set(fault);
    }
}

/// A client's body on its way upstream (or being read whole), its
/// failures noted in a [`BodyWatch`], cut off when nothing of it arrives
/// for `read_timeout` while it is waited for.
struct Watched {
    inner: http_body_util::Limited<Incoming>,
    watch: BodyWatch,
    read_timeout: Duration,
    stall: Stall,
    failed: bool,
}

impl Watched {
    fn new(inner: Incoming, limit: usize, read_timeout: Duration) -> Watched {
        Watched {
            inner: http_body_util::Limited::new(inner, limit),
            watch: BodyWatch::default(),
            read_timeout,
            stall: Stall::new(),
            failed: false,
        }
    }
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Pending => {
                if !this.stall.waiting() {
                    this.watch.0.waiting.store(true, Ordering::Relaxed);
                }
                if this.stall.poll_expired(cx, this.read_timeout).is_ready() {
                    this.failed = true;
                    let e: BoxError = Box::new(BodyTimeout(this.read_timeout));
                    this.watch.note(&e);
                    return Poll::Ready(Some(Err(e)));
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                this.watch.note(e);
            }
            Poll::Ready(_) => {}
        }
        if this.stall.waiting() {
            this.stall.progress();
            this.watch.0.waiting.store(false, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
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
pub(crate) fn raw(b: RawBody<Body>) -> Body {
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

/// An upstream response body from `from`; `conn` (if any) is checked back
/// in to its pool once the body has been read to its end. A body that
/// stalls (`timeouts.upstream_read_ms`) fails and counts against `from`.
pub(crate) fn upstream(
    inner: Incoming,
    conn: Option<Checkin<Body>>,
    from: Option<Arc<Upstream<Body>>>,
) -> Body {
    Body {
        kind: Kind::Upstream(UpstreamBody {
            inner,
            conn,
            done: false,
            from,
            stall: Stall::new(),
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
            Kind::Upstream(u) => u.poll_frame(cx),
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
