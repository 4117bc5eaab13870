//! The router's own HTTP/1.1 server side, for the request almost every
//! client sends: HTTP/1.1, no body, no upgrade.
//!
//! Like the client side (`upstream::client`), this takes the common case off
//! hyper's general machinery (Pingora writes its own HTTP/1 for the same
//! reason): the head is parsed with `httparse` straight into the request
//! the router decides on, the request is handled in the connection's own
//! task, and the response head and body go out in one write when the body
//! is ready. Anything else that arrives on the connection — a request with
//! a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2 prior knowledge — hands
//! the connection, with every byte read so far, to hyper
//! ([`Ended::Handover`]), which serves it from there on. So this path only
//! has to be right for the requests it takes, and hyper stays the one that
//! handles the rest of HTTP/1.
//!
//! What this path answers itself: a head that does not parse (400) or is
//! too large (431), each followed by closing the connection, as hyper
//! does. Everything else about a head (its `Host`, say) is judged by the
//! request path, for both servers alike. A head whose body cannot be framed
//! safely (a `Transfer-Encoding` other than `chunked`, or one with a
//! `Content-Length`) is taken here rather than handed to hyper (which would
//! read such a body one way or another), so the request path refuses it;
//! its body is never read, and the connection is closed after the answer.
//! Repeated equal `Content-Length: 0` fields are kept as sent (hyper keeps
//! the first); the request goes on with one (`headers::forwarded_fields`).
//! Keep-alive is HTTP/1.1's: the connection stays open unless the request
//! says `Connection: close`, the answer does (the router's refusals of a
//! body it cannot frame), or the worker is draining or the connection was
//! shed (the answer then says `Connection: close`). Pipelined requests are
//! answered in order.
//!
//! Every wait is bounded. The first request head must be complete within
//! `header_read` of the connection's start; after an answer the connection
//! may sit idle for `keepalive`, and once the next head has begun it too
//! must be complete within `header_read`. One timer per connection covers
//! both, re-armed only when it fires (or, rarely, when a bound ends sooner
//! than it is set for), and no clock is read for a head that arrives whole.
//! Writing the answer is bounded by the stream itself (the router's
//! `ClientIo` fails a write the client leaves waiting for
//! `timeouts.send_ms`), waiting for the answer by the request path. A
//! connection asked to close ([`Signals::shed`]: the router is at its
//! connection cap) is closed at its next wait for a head, even one half
//! read. Nothing a client sends can panic this code (property-tested
//! below).

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::error::BoxError;
use crate::stall::deadline;

/// Limits for the heads this path reads.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request head buffered before it is answered 431 (the
    /// configured head limit, checked exactly by the request path, is
    /// usually lower; this bounds the buffer).
    pub max_head_bytes: usize,
    /// The most header fields (more: 431).
    pub max_headers: usize,
    /// How long a request head may take: the first from the connection's
    /// start, a later one from its first byte.
    pub header_read: Duration,
    /// How long the connection may sit idle between an answer and the
    /// first byte of the next request.
    pub keepalive: Duration,
}

/// What the connection's owner tells this path (finish up, close), and is
/// told by it (a request is in flight, or not).
pub trait Signals {
    /// Draining has started (or the connection was shed): answer the
    /// request in hand, then close.
    fn is_draining(&self) -> bool;
    /// Resolves once draining starts (closes an idle connection).
    fn draining(&self) -> impl Future<Output = ()> + Send + '_;
    /// Resolves once the connection is asked to close to make room for
    /// others: it is then closed at its next wait for a head, even one
    /// half read. Never, by default.
    fn shed(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::pending()
    }
    /// A request head has been read; its answer is on its way.
    fn request_started(&self) {}
    /// The answer has been sent, at `at`: waiting for the next request.
    fn request_done(&self, at: Instant) {
        let _ = at;
    }
}

/// How a connection left this path.
#[derive(Debug)]
pub enum Ended<IO> {
    /// Closed: by the client, after an error was answered, on a timeout or
    /// for draining.
    Closed,
    /// A request this path does not take arrived: serve the rest of the
    /// connection elsewhere, replaying `read` (the bytes already read,
    /// starting with that request) first.
    Handover { io: IO, read: Bytes },
}

/// The stack room for header fields (hyper's default too); more than this
/// (if the configured limit allows) takes a heap vector per request.
const STACK_HEADERS: usize = 100;
/// Where the fields of a head with up to this many are noted on the stack
/// (a browser sends 10 to 20); more take a vector.
const STACK_OFFSETS: usize = 32;
/// What a read asks the socket for at least.
const READ_CHUNK: usize = 8 * 1024;
/// Body frames up to this size are copied behind the head into one write.
const COALESCE: usize = 16 * 1024;

/// What the head of a request means for this path.
// Not boxed: the large variant is the common one, moved once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Parsed<R> {
    /// Not all there yet.
    Partial,
    /// A request to handle (its head taken off the buffer); `close`: the
    /// client asked for the connection to end after it.
    Request { req: Request<R>, close: bool },
    /// Not for this path: hand the connection over.
    Handover,
    /// Answer this and close.
    Refuse(StatusCode, &'static str),
}

/// Serves requests on `io` until the connection ends or a request needs
/// hyper. `handle` answers one request; the requests this path takes have
/// no body, so each is made with `R::default()` (an empty body) as its body.
pub async fn serve<IO, H, F, S, R, B>(
    mut io: IO,
    limits: &Limits,
    mut handle: H,
    signals: &S,
) -> Ended<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<R>) -> F,
    F: Future<Output = Response<B>>,
    S: Signals,
    R: Default,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    // One timer for the connection, re-armed only when it fires (see the
    // module docs): the wait in progress began at `waiting_since` and may
    // last `limit`; `kept_alive` while it is the wait between an answer and
    // the first byte of the next request.
    let mut waiting_since = Instant::now();
    let mut limit = limits.header_read;
    let mut kept_alive = false;
    let timer = tokio::time::sleep_until(deadline(waiting_since, limit));
    tokio::pin!(timer);
    // One registration with each signal for the connection too.
    let draining = signals.draining();
    tokio::pin!(draining);
    let shed = signals.shed();
    tokio::pin!(shed);
    loop {
        let parsed = parse(&mut buf, limits);
        let (req, close) = match parsed {
            Parsed::Request { req, close } => (req, close),
            Parsed::Handover => {
                return Ended::Handover {
                    io,
                    read: buf.freeze(),
                }
            }
            Parsed::Refuse(status, why) => {
                let _ = refuse(&mut io, &mut out, status, why).await;
                return Ended::Closed;
            }
            Parsed::Partial => {
                if buf.capacity() - buf.len() < READ_CHUNK / 2 {
                    buf.reserve(READ_CHUNK);
                }
                let idle = buf.is_empty();
                if kept_alive && !idle {
                    // The next head has begun (and did not arrive whole):
                    // from now on, the header-read bound.
                    kept_alive = false;
                    waiting_since = Instant::now();
                    limit = limits.header_read;
                    let due = deadline(waiting_since, limit);
                    if timer.deadline() > due {
                        timer.as_mut().reset(due);
                    }
                }
                let read = tokio::select! {
                    biased;
                    r = io.read_buf(&mut buf) => r,
                    () = &mut timer => {
                        let due = deadline(waiting_since, limit);
                        if Instant::now() >= due {
                            if kept_alive {
                                tracing::debug!(timeout = ?limit, "Idle past the keep-alive bound; closing the connection.");
                            } else {
                                tracing::debug!(timeout = ?limit, "No request head in time; closing the connection.");
                            }
                            return Ended::Closed;
                        }
                        timer.as_mut().reset(due);
                        continue;
                    }
                    () = &mut draining, if idle => return Ended::Closed,
                    () = &mut shed => {
                        tracing::debug!("Closing a connection to make room for others (limits.max_connections).");
                        return Ended::Closed;
                    }
                };
                match read {
                    Ok(0) | Err(_) => return Ended::Closed,
                    Ok(_) => continue,
                }
            }
        };
        let head_request = req.method() == Method::HEAD;
        signals.request_started();
        let resp = handle(req).await;
        let close = close || signals.is_draining();
        let written = write_response(&mut io, &mut out, resp, head_request, close).await;
        waiting_since = Instant::now();
        signals.request_done(waiting_since);
        let Ok(close) = written else {
            return Ended::Closed;
        };
        if close {
            // FIN (and TLS close_notify) after the answer.
            let _ = io.shutdown().await;
            return Ended::Closed;
        }
        kept_alive = true;
        limit = limits.keepalive;
        let due = deadline(waiting_since, limit);
        if timer.deadline() > due {
            timer.as_mut().reset(due);
        }
    }
}

/// Reads a request head from the front of `buf` (consuming it if this path
/// takes the request).
fn parse<R: Default>(buf: &mut BytesMut, limits: &Limits) -> Parsed<R> {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // HTTP/2 prior knowledge: hyper's (if the listener allows h2c).
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let n = buf.len().min(PREFACE.len());
    if buf[..n] == PREFACE[..n] {
        return if n == PREFACE.len() {
            Parsed::Handover
        } else {
            Parsed::Partial
        };
    }
    // Uninitialised: httparse fills only what it returns (no 3 KiB memset
    // per request).
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap;
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if limits.max_headers <= STACK_HEADERS {
        &mut stack[..limits.max_headers]
    } else {
        heap = std::iter::repeat_with(MaybeUninit::uninit)
            .take(limits.max_headers)
            .collect::<Vec<_>>();
        &mut heap
    };
    let mut r = httparse::Request::new(&mut []);
    let len = match r.parse_with_uninit_headers(buf, fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes {
                Parsed::Refuse(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                )
            } else {
                Parsed::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            )
        }
        // Some (a bad version token among them) hyper answers the same way.
        Err(_) => return Parsed::Refuse(StatusCode::BAD_REQUEST, "malformed request head"),
    };
    if len > limits.max_head_bytes {
        return Parsed::Refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        );
    }
    // `httparse` fills every field it returns.
    let (Some(method), Some(path), Some(version)) = (r.method, r.path, r.version) else {
        return Parsed::Refuse(StatusCode::BAD_REQUEST, "malformed request line");
    };
    if version != 1 {
        // HTTP/1.0 keep-alive rules and the like: hyper's.
        return Parsed::Handover;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Refuse(StatusCode::BAD_REQUEST, "invalid method");
    };
    if method == Method::CONNECT {
        return Parsed::Handover;
    }
    let mut close = false;
    // Not for this path (a body, an upgrade, `Expect`): hyper's, once the
    // framing fields have all been looked at.
    let mut handover = false;
    let mut length = false;
    // `Transfer-Encoding` fields, and whether each was exactly `chunked`.
    let mut codings = 0usize;
    let mut chunked = true;
    for f in r.headers.iter() {
        let name = f.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            length = true;
            // No body: "0" exactly (anything else, hyper judges).
            handover |= f.value != b"0";
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
            chunked &= crate::headers::is_chunked(f.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in f.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    handover = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"expect") {
            handover = true;
        }
    }
    if codings > 0 {
        if codings > 1 || !chunked || length {
            // A body this server cannot frame, nor should hyper: the
            // request path refuses the head (`headers::check_request`), the
            // body is never read, and the connection ends after the answer.
            close = true;
            handover = false;
        } else {
            handover = true;
        }
    }
    if handover {
        return Parsed::Handover;
    }
    // The head's bytes, shared by the URI and the field values (no copies):
    // where each piece is, noted before the head is split off the buffer.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path_at = (offset(path.as_bytes()), path.len());
    let count = r.headers.len();
    let mut stack_at = [(0usize, 0usize, 0usize, 0usize); STACK_OFFSETS];
    let mut heap_at;
    let at: &mut [(usize, usize, usize, usize)] = if count <= STACK_OFFSETS {
        &mut stack_at[..count]
    } else {
        heap_at = vec![(0, 0, 0, 0); count];
        &mut heap_at
    };
    for (slot, f) in at.iter_mut().zip(r.headers.iter()) {
        *slot = (
            offset(f.name.as_bytes()),
            f.name.len(),
            offset(f.value),
            f.value.len(),
        );
    }
    let head = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_at.0..path_at.0 + path_at.1)) else {
        return Parsed::Refuse(StatusCode::BAD_REQUEST, "invalid request target");
    };
    let mut headers = HeaderMap::with_capacity(count);
    for &(n, nl, v, vl) in at.iter() {
        let Ok(name) = HeaderName::from_bytes(&head[n..n + nl]) else {
            return Parsed::Refuse(StatusCode::BAD_REQUEST, "invalid header name");
        };
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(v..v + vl)) else {
            return Parsed::Refuse(StatusCode::BAD_REQUEST, "invalid header value");
        };
        headers.append(name, value);
    }
    let mut req = Request::new(R::default());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    Parsed::Request { req, close }
}

/// Writes `resp` (head, then body) to `io`, with `Connection: close` if
/// `close` or if the answer itself says so (the router's refusals of a body
/// it cannot frame; an upstream's hop-by-hop fields never get here). Returns
/// whether the connection must now close. An error means the connection is
/// not usable any more.
async fn write_response<IO, B>(
    io: &mut IO,
    out: &mut BytesMut,
    resp: Response<B>,
    head_request: bool,
    mut close: bool,
) -> io::Result<bool>
where
    IO: AsyncWrite + Unpin,
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    // No body for these, whatever the body says (RFC 9112 6.3); their
    // framing fields describe the GET's body and are passed on as they are.
    let bodiless = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = if bodiless {
        None
    } else {
        body.size_hint().exact()
    };
    out.clear();
    if status == StatusCode::OK {
        out.put_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
    }
    let mut dated = false;
    for (name, value) in &parts.headers {
        if !bodiless && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        if name == header::CONNECTION {
            close |= value.as_bytes().eq_ignore_ascii_case(b"close");
            continue;
        }
        dated |= name == header::DATE;
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if !dated {
        out.put_slice(b"date: ");
        out.put_slice(&date::now());
        out.put_slice(b"\r\n");
    }
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    let chunked = !bodiless && length.is_none();
    match length {
        _ if bodiless => {}
        Some(n) => {
            out.put_slice(b"content-length: ");
            out.put_slice(crate::headers::digits(n, &mut [0u8; 20]));
            out.put_slice(b"\r\n");
        }
        None => out.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.put_slice(b"\r\n");
    if !bodiless {
        loop {
            // Take what the body has ready without waiting; write what is
            // gathered before waiting for more.
            let frame = match poll_once(&mut body).await {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    if !out.is_empty() {
                        io.write_all(out).await?;
                        out.clear();
                    }
                    // What was written must reach the client before the
                    // wait (a TLS stream may still hold it).
                    io.flush().await?;
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => {
                    // The framing promised more: all that can be done is to
                    // end the connection.
                    return Err(io::Error::other(e));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    // Trailers: not passed on over HTTP/1.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            if chunked {
                put_hex(out, data.len());
                out.put_slice(b"\r\n");
            }
            if data.len() <= COALESCE {
                out.put_slice(&data);
            } else {
                io.write_all(out).await?;
                out.clear();
                io.write_all(&data).await?;
            }
            if chunked {
                out.put_slice(b"\r\n");
            }
            if out.len() >= COALESCE {
                io.write_all(out).await?;
                out.clear();
            }
        }
        if chunked {
            out.put_slice(b"0\r\n\r\n");
        }
    }
    if !out.is_empty() {
        io.write_all(out).await?;
        out.clear();
    }
    // A no-op on a socket; a TLS stream may hold encrypted records back.
    io.flush().await?;
    Ok(close)
}

/// The body's next frame if it has one ready, without waiting.
async fn poll_once<B: hyper::body::Body + Unpin>(
    body: &mut B,
) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx))).await
}

/// Answers a head this path refuses, then the connection is closed.
async fn refuse<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut BytesMut,
    status: StatusCode,
    why: &str,
) -> io::Result<()> {
    let text = Bytes::from(crate::error::answer_text(why));
    let mut resp = Response::new(http_body_util::Full::new(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::error::ANSWER_CONTENT_TYPE),
    );
    write_response(io, out, resp, false, true).await?;
    io.shutdown().await
}

/// `n` in hexadecimal digits (a chunk size).
fn put_hex(out: &mut BytesMut, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

/// The `Date` field's value, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
    }

    pub fn now() -> [u8; 29] {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1[0] == 0 {
                let s = httpdate::fmt_http_date(now);
                let b = s.as_bytes();
                // Always 29 bytes ("Sun, 06 Nov 1994 08:49:37 GMT").
                if b.len() == 29 {
                    c.1.copy_from_slice(b);
                    c.0 = secs;
                }
            }
            c.1
        })
    }
}

/// A connection handed over to hyper: the bytes this path read first, then
/// the socket.
pub struct Prefixed<IO> {
    read: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(read: Bytes, io: IO) -> Prefixed<IO> {
        Prefixed { read, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(dst.remaining());
            dst.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, dst)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, b)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt, Empty, Full};

    /// What the handlers take (this path's requests have no body) and
    /// answer (any body).
    type Req = Request<Empty<Bytes>>;
    type Resp = Response<BoxBody<Bytes, BoxError>>;

    fn full(b: impl Into<Bytes>) -> BoxBody<Bytes, BoxError> {
        Full::new(b.into()).map_err(|e| match e {}).boxed()
    }

    fn boxed<B>(b: B) -> BoxBody<Bytes, BoxError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        b.map_err(Into::into).boxed()
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::Notify;

    fn limits() -> Limits {
        Limits {
            max_head_bytes: 8192,
            max_headers: 16,
            header_read: Duration::from_secs(10),
            keepalive: Duration::from_secs(75),
        }
    }

    /// Signals a test sets: drain, shed; and what the server told it.
    #[derive(Default)]
    struct TestDrain {
        on: AtomicBool,
        shed: AtomicBool,
        notify: Notify,
        /// Requests started, and answered.
        started: AtomicUsize,
        done: AtomicUsize,
    }

    impl TestDrain {
        fn start(&self) {
            self.on.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        }

        fn shed_now(&self) {
            self.shed.store(true, Ordering::SeqCst);
            self.notify.notify_waiters();
        }

        async fn until(&self, f: impl Fn(&Self) -> bool) {
            loop {
                let n = self.notify.notified();
                if f(self) {
                    return;
                }
                n.await;
            }
        }
    }

    impl Signals for TestDrain {
        fn is_draining(&self) -> bool {
            self.on.load(Ordering::SeqCst) || self.shed.load(Ordering::SeqCst)
        }

        async fn draining(&self) {
            self.until(|d| d.on.load(Ordering::SeqCst)).await
        }

        async fn shed(&self) {
            self.until(|d| d.shed.load(Ordering::SeqCst)).await
        }

        fn request_started(&self) {
            self.started.fetch_add(1, Ordering::SeqCst);
            self.notify.notify_waiters();
        }

        fn request_done(&self, _at: Instant) {
            self.done.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Reads from `client` until what it read contains `want`.
    async fn read_until(client: &mut tokio::io::DuplexStream, want: &str) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&got).contains(want) {
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// Answers `METHOD PATH` (and the `x-n` field, if sent) as the body.
    async fn echo(req: Req) -> Resp {
        let n = req
            .headers()
            .get("x-n")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let mut resp = Response::new(full(format!("{} {}{n}", req.method(), req.uri())));
        resp.headers_mut()
            .insert("x-upstream", HeaderValue::from_static("echo"));
        resp
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Closed,
        Handover(Bytes),
    }

    /// Sends `input` (then ends the client's side), serves it with `echo`,
    /// and returns what the client read and how serving ended.
    async fn exchange(input: &[u8], limits: Limits) -> (String, Outcome) {
        exchange_with(input, true, &limits, echo).await
    }

    /// Serves one end of a duplex pair with `handler` while the client
    /// writes `input` on the other (then ends its side, if `end`) and reads
    /// to the end: what the client read, and how serving ended.
    async fn exchange_with<H, F>(
        input: &[u8],
        end: bool,
        limits: &Limits,
        handler: H,
    ) -> (String, Outcome)
    where
        H: FnMut(Req) -> F,
        F: Future<Output = Resp>,
    {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let drain = TestDrain::default();
        let serving = async {
            match serve(server, limits, handler, &drain).await {
                Ended::Closed => Outcome::Closed,
                Ended::Handover { read, .. } => Outcome::Handover(read),
            }
        };
        let talking = async {
            client.write_all(input).await.expect("write");
            if end {
                client.shutdown().await.expect("shutdown");
            }
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        };
        let (outcome, out) = tokio::join!(serving, talking);
        (out, outcome)
    }

    /// The response bodies in `out`, in order (content-length framing).
    fn bodies(out: &str) -> Vec<String> {
        let mut rest = out;
        let mut found = Vec::new();
        while let Some(end) = rest.find("\r\n\r\n") {
            let head = &rest[..end];
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let body_at = end + 4;
            found.push(rest[body_at..body_at + len].to_string());
            rest = &rest[body_at + len..];
        }
        found
    }

    #[tokio::test]
    async fn keep_alive_and_pipelined_requests_are_answered_in_order() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\nX-N: 1\r\n\r\nGET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /c HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, outcome) = exchange(input, limits()).await;
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
        assert_eq!(bodies(&out)[..2], ["GET /a1", "GET /b?q=1"]);
        assert!(out.contains("x-upstream: echo\r\n"), "{out}");
        assert!(out.contains("date: "), "{out}");
        assert!(!out.contains("connection: close"), "{out}");
        // HEAD: the head as for GET would be, no body.
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[tokio::test]
    async fn a_head_with_more_fields_than_the_stack_holds_is_read_whole() {
        let many: String = (0..STACK_OFFSETS + 8)
            .map(|i| format!("X-F{i}: v{i}\r\n"))
            .collect();
        let input = format!("GET /m HTTP/1.1\r\nHost: x\r\n{many}X-N: last\r\n\r\n");
        let wide = Limits {
            max_headers: 64,
            ..limits()
        };
        let (out, _) = exchange(input.as_bytes(), wide).await;
        assert_eq!(bodies(&out), ["GET /mlast"], "{out}");
    }

    #[tokio::test]
    async fn connection_close_is_honoured() {
        let input = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
        let (out, outcome) = exchange(input, limits()).await;
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(bodies(&out), ["GET /a"], "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn requests_this_path_does_not_take_are_handed_over_whole() {
        let cases: [&[u8]; 9] = [
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
            b"GET /a HTTP/1.0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\n\r\n",
            b"PUT /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for input in cases {
            let (out, outcome) = exchange(input, limits()).await;
            assert_eq!(out, "", "nothing answered here");
            assert_eq!(
                outcome,
                Outcome::Handover(Bytes::copy_from_slice(input)),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        // After requests this path took: from the one it does not take.
        let (out, outcome) = exchange(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz",
            limits(),
        )
        .await;
        assert_eq!(bodies(&out), ["GET /a"]);
        assert_eq!(
            outcome,
            Outcome::Handover(Bytes::from_static(
                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz"
            ))
        );
        // `Content-Length: 0` is no body: taken here.
        let (out, _) = exchange(
            b"DELETE /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            limits(),
        )
        .await;
        assert_eq!(bodies(&out), ["DELETE /a"]);
        // No Host, or two: taken here too (the request path refuses them,
        // for both servers alike).
        let (out, _) = exchange(
            b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
            limits(),
        )
        .await;
        assert_eq!(bodies(&out), ["GET /a", "GET /b"]);
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_framed_is_taken_unread_and_the_connection_closed() {
        // Transfer codings other than `chunked` alone, or with a length:
        // hyper must not read such a body either. Taken here (the request
        // path refuses it), the body never read, the connection closed even
        // though the answer (here `echo`'s) did not ask for it.
        let cases: [&[u8]; 6] = [
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n",
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nExpect: 100-continue\r\n\r\n",
        ];
        for input in cases {
            let (out, outcome) = exchange(input, limits()).await;
            assert_eq!(
                outcome,
                Outcome::Closed,
                "{}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(bodies(&out), ["POST /a"], "{out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
        }
    }

    #[tokio::test]
    async fn an_answer_that_says_close_ends_the_connection() {
        let handler = |req: Req| async move {
            let mut resp = echo(req).await;
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            resp
        };
        let (out, outcome) = exchange_with(
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
            false,
            &limits(),
            handler,
        )
        .await;
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(bodies(&out), ["GET /a"], "{out}");
        assert_eq!(out.matches("connection: close\r\n").count(), 1, "{out}");
    }

    #[tokio::test]
    async fn bad_heads_are_refused_and_the_connection_closed() {
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "y".repeat(9000)
        );
        let many: String = (0..20).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let cases: [(&[u8], &str); 5] = [
            (b"GARBAGE\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", "400"),
            (big.as_bytes(), "431"),
            (many.as_bytes(), "431"),
        ];
        for (input, status) in cases {
            let (out, outcome) = exchange(input, limits()).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{status}: {out}"
            );
            assert!(out.contains("connection: close\r\n"), "{out}");
            assert_eq!(outcome, Outcome::Closed);
        }
        // A head that never ends, trickled past the limit: 431, not a
        // buffer that grows.
        let endless = format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}", "y".repeat(20_000));
        let (out, _) = exchange(endless.as_bytes(), limits()).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_is_chunked_and_informational_statuses_have_none() {
        let handler = |req: Req| async move {
            if req.uri().path() == "/304" {
                let mut r = Response::new(full("ignored"));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
                return r;
            }
            let frames = futures::stream::iter(vec![
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
                    b"hello ",
                ))),
                Ok(hyper::body::Frame::data(Bytes::from(vec![b'w'; 17]))),
            ]);
            Response::new(boxed(http_body_util::StreamBody::new(frames)))
        };
        let (out, _) = exchange_with(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
            &limits(),
            handler,
        )
        .await;
        let first = format!(
            "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n11\r\n{}\r\n0\r\n\r\n",
            "w".repeat(17)
        );
        assert!(out.contains(&first), "{out}");
        let second = &out[out.find("HTTP/1.1 304").expect("304")..];
        assert!(second.contains("content-length: 7\r\n"), "{second}");
        assert!(
            second.ends_with("\r\n\r\n"),
            "no body after a 304: {second}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_head_in_time_closes_the_connection() {
        let started = Instant::now();
        let (out, outcome) = exchange_with(
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HT",
            false,
            &limits(),
            echo,
        )
        .await;
        assert_eq!(outcome, Outcome::Closed);
        assert_eq!(bodies(&out), ["GET /"]);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_held_to_the_keep_alive_bound_and_a_begun_head_to_the_head_bound()
    {
        // Idle after an answer: closed after `keepalive` (75 s), not
        // `header_read` (10 s).
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = TestDrain::default();
        let lim = limits();
        let serving = serve(server, &lim, echo, &drain);
        let talking = async {
            client
                .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            read_until(&mut client, "GET /a").await;
            let idle = Instant::now();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("read");
            assert!(rest.is_empty());
            idle.elapsed()
        };
        let (ended, waited) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
        assert!(
            waited >= Duration::from_secs(75) && waited < Duration::from_secs(76),
            "{waited:?}"
        );
        assert_eq!(drain.started.load(Ordering::SeqCst), 1);
        assert_eq!(drain.done.load(Ordering::SeqCst), 1);

        // The next head begun after 30 s: `header_read` from its first byte.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serving = serve(server, &lim, echo, &drain);
        let talking = async {
            client
                .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            read_until(&mut client, "GET /a").await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            client.write_all(b"GET /b HT").await.expect("write");
            let begun = Instant::now();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.expect("read");
            begun.elapsed()
        };
        let (ended, waited) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_shed_connection_closes_at_its_next_wait_even_in_the_middle_of_a_head() {
        // Waiting, half a head read: closed at once, nothing answered.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = TestDrain::default();
        let lim = limits();
        let serving = serve(server, &lim, echo, &drain);
        let talking = async {
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
            tokio::task::yield_now().await;
            drain.shed_now();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            out
        };
        let (ended, out) = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(serving, talking)
        })
        .await
        .expect("closed at once");
        assert!(matches!(ended, Ended::Closed));
        assert!(out.is_empty());

        // A request in flight: answered (saying close), then closed.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = TestDrain::default();
        let gate = Notify::new();
        let handler = |req: Req| {
            let gate = &gate;
            async move {
                gate.notified().await;
                echo(req).await
            }
        };
        let serving = serve(server, &lim, handler, &drain);
        let talking = async {
            client
                .write_all(b"GET /busy HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            drain.until(|d| d.started.load(Ordering::SeqCst) == 1).await;
            drain.shed_now();
            gate.notify_one();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        };
        let (ended, out) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
        assert_eq!(bodies(&out), ["GET /busy"]);
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn draining_closes_idle_connections_and_ends_busy_ones_after_the_answer() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = TestDrain::default();
        let gate = Notify::new();
        let handler = |req: Req| {
            let gate = &gate;
            async move {
                if req.uri().path() == "/slow" {
                    gate.notified().await;
                }
                echo(req).await
            }
        };
        let lim = limits();
        let serving = serve(server, &lim, handler, &drain);
        let talking = async {
            client
                .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            tokio::task::yield_now().await;
            drain.start();
            gate.notify_one();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            String::from_utf8_lossy(&out).into_owned()
        };
        let (ended, out) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
        assert_eq!(bodies(&out), ["GET /slow"]);
        assert!(out.contains("connection: close\r\n"), "{out}");

        // Idle when draining starts: closed without an answer.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let drain = TestDrain::default();
        let lim = limits();
        let serving = serve(server, &lim, echo, &drain);
        let talking = async {
            tokio::task::yield_now().await;
            drain.start();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.expect("read");
            out
        };
        let (ended, out) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
        assert!(out.is_empty());
    }

    /// A stream that holds what is written until it is flushed (as a TLS
    /// stream may).
    struct HoldsUntilFlush<IO> {
        inner: IO,
        held: Vec<u8>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for HoldsUntilFlush<IO> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            dst: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, dst)
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for HoldsUntilFlush<IO> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held.extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                match Pin::new(&mut this.inner).poll_write(cx, &this.held) {
                    Poll::Ready(Ok(n)) => {
                        this.held.drain(..n);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.as_mut().poll_flush(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn answers_are_flushed_before_waiting_for_the_next_request() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let server = HoldsUntilFlush {
            inner: server,
            held: Vec::new(),
        };
        let drain = TestDrain::default();
        let lim = limits();
        let serving = serve(server, &lim, echo, &drain);
        let talking = async {
            client
                .write_all(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            // The answer must arrive while the connection stays open.
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !String::from_utf8_lossy(&got).contains("GET /one") {
                let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                    .await
                    .expect("the answer, not a wait for the next request")
                    .expect("read");
                assert!(n > 0, "closed early");
                got.extend_from_slice(&buf[..n]);
            }
            drop(client);
        };
        let (ended, ()) = tokio::join!(serving, talking);
        assert!(matches!(ended, Ended::Closed));
    }

    #[tokio::test]
    async fn a_handed_over_connection_replays_what_was_read_then_the_socket() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut p = Prefixed::new(Bytes::from_static(b"first "), b);
        a.write_all(b"then").await.expect("write");
        a.shutdown().await.expect("shutdown");
        let mut got = String::new();
        p.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "first then");
        p.write_all(b"back").await.expect("write");
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.expect("read");
        assert_eq!(&back, b"back");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// Any bytes: no panic, and serving ends (the client's side ends).
        #[test]
        fn any_bytes_end_without_a_panic(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            prefix in proptest::sample::select(vec![
                &b""[..],
                &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],
                &b"GET / HTTP/1.1\r\n"[..],
                &b"PRI * HTTP/2.0\r\n"[..],
            ]),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&input);
            let small = Limits { max_head_bytes: 256, max_headers: 4, header_read: Duration::from_secs(5), keepalive: Duration::from_secs(5) };
            let ended = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), exchange(&bytes, small)).await
            });
            proptest::prop_assert!(ended.is_ok(), "serving did not end once the client's side did");
        }
    }
}
