//! HTTP/1.1 message framing for the router's own upstream exchanges: the
//! request head written, the response head parsed, the response body's
//! framing decided and chunked bodies decoded. Pure: bytes in, values out;
//! the sockets are the upstream client's (`upstream::client`).
//!
//! Only what a proxy that sends requests *without a body* needs (requests
//! with a body, upgrades and HTTP/2 upstreams go through hyper). The rules
//! follow RFC 9112 and, where it leaves a choice, hyper's client, so that
//! both paths treat an upstream's answer alike:
//!
//! - the response body: none for HEAD, 1xx, 204 and 304; chunked if the last
//!   transfer coding is `chunked`; read to the end of the connection if
//!   another transfer coding is named, or no length is given; else exactly
//!   `Content-Length` (several values must agree, none over
//!   [`MAX_CONTENT_LENGTH`]);
//! - 1xx answers other than 101 are skipped; 101 is an error (no upgrade was
//!   asked for); HTTP/1.0 with `Transfer-Encoding` is an error;
//! - header lines: `name: value`, a token name, the value trimmed of spaces
//!   and tabs and checked as [`HeaderValue`]; obsolete line folding, a space
//!   before the colon, more than [`MAX_HEADERS`] fields or a head over
//!   [`MAX_HEAD_BYTES`] are errors; bare LF line ends are accepted.
//!
//! Where this differs from hyper's client, on purpose (the differential test
//! `router/tests/h1_differential.rs` checks these are the only differences):
//!
//! - stricter: an empty line before the status line is an error (RFC 9112
//!   2.2 asks only a server to skip them, before a request line); a chunk
//!   size of more than 16 hex digits (leading zeros included), a chunk-size
//!   line over [`MAX_CHUNK_LINE`] bytes, or a control byte (NUL) in a chunk
//!   extension is a malformed body; a response head over [`MAX_HEAD_BYTES`]
//!   is an error (hyper takes some 400 KiB);
//! - more lenient: chunked framing lines (sizes, the end of a chunk's data,
//!   trailers) may end in a bare LF, as nginx's chunked parser allows
//!   (hyper requires CRLF there); the body is decoded either way and sent on
//!   to the client in the router's own framing, so the two readings cannot
//!   split a stream; a trailer section may take up to [`MAX_HEAD_BYTES`]
//!   (hyper: 16 KiB);
//! - the reason phrase: none (`HTTP/1.1 200`) is written on as the status's
//!   usual one ("OK"), and one with bytes 0x80-0xff is kept as sent (hyper
//!   drops it to "").
//!
//! Nothing a peer sends can make these functions panic (property-tested).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// The most header fields a response head (or a trailer section) may have.
pub const MAX_HEADERS: usize = 100;
/// The largest response head (or trailer section), in bytes.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The longest chunk-size line (with extensions), in bytes.
pub const MAX_CHUNK_LINE: usize = 4096;

/// What is wrong with what the upstream sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum H1Error {
    #[error("malformed HTTP/1 status line")]
    StatusLine,
    #[error("unsupported HTTP version in the response")]
    Version,
    #[error("malformed header line in the response")]
    Header,
    #[error("response head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("response head is larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length in the response")]
    ContentLength,
    #[error("HTTP/1.0 response with Transfer-Encoding")]
    TransferEncoding,
    #[error("101 Switching Protocols answered a request that asked for no upgrade")]
    UnexpectedUpgrade,
    #[error("malformed chunked body")]
    Chunked,
}

/// Writes the request line of a request without a body: origin form (or
/// `*`), HTTP/1.1.
pub fn encode_request_line(method: &Method, uri: &http::Uri, out: &mut BytesMut) {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
}

/// Writes header fields into an encoded head. No framing field is added: a
/// request without `Content-Length` or `Transfer-Encoding` has no body.
pub struct HeadWriter<'a>(pub &'a mut BytesMut);

impl HeadWriter<'_> {
    /// Ends the head (the empty line).
    pub fn finish(self) {
        self.0.put_slice(b"\r\n");
    }
}

/// What [`HeaderValue`] accepts.
fn valid_value(b: &[u8]) -> bool {
    b.iter().all(|&c| c == b'\t' || (c >= 0x20 && c != 0x7f))
}

impl crate::policy::headers::FieldSink for HeadWriter<'_> {
    fn field(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.0.put_slice(name.as_str().as_bytes());
        self.0.put_slice(b": ");
        self.0.put_slice(value.as_bytes());
        self.0.put_slice(b"\r\n");
    }

    fn field_concat(&mut self, name: &HeaderName, parts: &[&[u8]]) {
        if !parts.iter().all(|p| valid_value(p)) {
            return;
        }
        self.0.put_slice(name.as_str().as_bytes());
        self.0.put_slice(b": ");
        for p in parts {
            self.0.put_slice(p);
        }
        self.0.put_slice(b"\r\n");
    }
}

/// Writes the head of a request without a body as it is: the request line
/// and its header fields.
pub fn encode_request_head(parts: &http::request::Parts, out: &mut BytesMut) {
    use crate::policy::headers::FieldSink;
    encode_request_line(&parts.method, &parts.uri, out);
    let mut w = HeadWriter(out);
    for (k, v) in &parts.headers {
        w.field(k, v);
    }
    w.finish();
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub version: Version,
    pub status: StatusCode,
    /// The reason phrase, if it is not the status code's usual one.
    pub reason: Option<Bytes>,
    pub headers: HeaderMap,
}

/// The end of the head in `buf`: the index just past the empty line, if
/// it is there.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(n) = memchr(b'\n', &buf[i..]) {
        let nl = i + n;
        // An empty line: "\n\n" or "\n\r\n".
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

/// The first `needle` in `hay` (SIMD, from the `memchr` crate).
fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    memchr::memchr(needle, hay)
}

/// Lines of a section (without their line ends), up to the empty line.
fn lines(head: &[u8]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= head.len() {
            return None;
        }
        let n = memchr(b'\n', &head[pos..])?;
        let start = pos;
        let mut end = pos + n;
        pos = end + 1;
        if end > start && head[end - 1] == b'\r' {
            end -= 1;
        }
        (end > start).then_some((start, end))
    })
}

/// Parses header field lines `head[range]` into `headers`.
fn parse_fields(
    head: &Bytes,
    lines: impl Iterator<Item = (usize, usize)>,
    headers: &mut HeaderMap,
) -> Result<(), H1Error> {
    for (count, (start, end)) in lines.enumerate() {
        if count >= MAX_HEADERS {
            return Err(H1Error::TooManyHeaders);
        }
        let line = &head[start..end];
        // Obsolete line folding, or any leading whitespace.
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(H1Error::Header);
        }
        let colon = memchr(b':', line).ok_or(H1Error::Header)?;
        let name = &line[..colon];
        if name.is_empty() {
            return Err(H1Error::Header);
        }
        let mut vs = start + colon + 1;
        let mut ve = end;
        while vs < ve && (head[vs] == b' ' || head[vs] == b'\t') {
            vs += 1;
        }
        while ve > vs && (head[ve - 1] == b' ' || head[ve - 1] == b'\t') {
            ve -= 1;
        }
        let name = HeaderName::from_bytes(name).map_err(|_| H1Error::Header)?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| H1Error::Header)?;
        headers.append(name, value);
    }
    Ok(())
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete,
/// read more. On success the head's bytes have been split off `buf` (the
/// header values point into them: no copy).
pub fn parse_response_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, H1Error> {
    // Where the head ends (its empty line), and how many lines it has.
    let mut lines_before_end = 0;
    let mut pos = 0;
    let end = loop {
        let Some(nl) = memchr(b'\n', &buf[pos..]) else {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(H1Error::HeadTooLarge)
            } else {
                Ok(None)
            };
        };
        let nl = pos + nl;
        if nl >= MAX_HEAD_BYTES {
            return Err(H1Error::HeadTooLarge);
        }
        let e = if nl > pos && buf[nl - 1] == b'\r' {
            nl - 1
        } else {
            nl
        };
        if e == pos {
            if lines_before_end == 0 {
                return Err(H1Error::StatusLine);
            }
            break nl + 1;
        }
        lines_before_end += 1;
        if lines_before_end > MAX_HEADERS + 1 {
            return Err(H1Error::TooManyHeaders);
        }
        pos = nl + 1;
    };
    // Split off, not copied: the header values share the read buffer, which
    // is reused in place once they are gone (the response head is written
    // to the client, and dropped, long before the connection reads again).
    let head = buf.split_to(end).freeze();
    let mut at = lines(&head);
    let (s, e) = at.next().ok_or(H1Error::StatusLine)?;
    let line = &head[s..e];
    let version = match line.get(..8) {
        Some(b"HTTP/1.1") => Version::HTTP_11,
        Some(b"HTTP/1.0") => Version::HTTP_10,
        Some(v) if v.starts_with(b"HTTP/") => return Err(H1Error::Version),
        _ => return Err(H1Error::StatusLine),
    };
    if line.get(8) != Some(&b' ') {
        return Err(H1Error::StatusLine);
    }
    let code = line.get(9..12).ok_or(H1Error::StatusLine)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(H1Error::StatusLine);
    }
    let status = StatusCode::from_bytes(code).map_err(|_| H1Error::StatusLine)?;
    let reason = match line.get(12..) {
        None | Some(b"") => None,
        Some([b' ', rest @ ..]) => {
            if rest.iter().any(|&b| b != b'\t' && (b < 0x20 || b == 0x7f)) {
                return Err(H1Error::StatusLine);
            }
            (status.canonical_reason().map(str::as_bytes) != Some(rest))
                .then(|| head.slice(s + 13..e))
        }
        Some(_) => return Err(H1Error::StatusLine),
    };
    let mut headers = HeaderMap::with_capacity(lines_before_end - 1);
    parse_fields(&head, at, &mut headers)?;
    Ok(Some(ResponseHead {
        version,
        status,
        reason,
        headers,
    }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    Eof,
}

/// What to do with a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// An informational (1xx) answer: skip it, read the next head.
    Skip,
    /// The final answer: its body's framing, and whether the connection may
    /// carry another request after it.
    Body { framing: Framing, reusable: bool },
}

/// The largest `Content-Length` taken: hyper's client refuses larger ones
/// (it keeps the two values above as markers), and no body that long will
/// ever come: refusing the head answers 502 at once instead of starting an
/// answer that must break.
pub const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// `Content-Length`: every value (and every comma-separated item) must be
/// the same number, at most [`MAX_CONTENT_LENGTH`].
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let s = v.to_str().map_err(|_| H1Error::ContentLength)?;
        for item in s.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(H1Error::ContentLength);
            }
            let n: u64 = item.parse().map_err(|_| H1Error::ContentLength)?;
            if n > MAX_CONTENT_LENGTH {
                return Err(H1Error::ContentLength);
            }
            match found {
                Some(f) if f != n => return Err(H1Error::ContentLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// True if the last transfer coding named is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// True if a `Connection` field names `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Decides what follows a response head, for a request with `method`.
pub fn next(head: &ResponseHead, method: &Method) -> Result<Next, H1Error> {
    let code = head.status.as_u16();
    if code == 101 {
        return Err(H1Error::UnexpectedUpgrade);
    }
    if (100..200).contains(&code) {
        return Ok(Next::Skip);
    }
    let keep_alive = match head.version {
        Version::HTTP_11 => !connection_has(&head.headers, "close"),
        _ => connection_has(&head.headers, "keep-alive"),
    };
    let body = |framing, ok: bool| Next::Body {
        framing,
        reusable: keep_alive && ok,
    };
    if code == 204 || code == 304 || *method == Method::HEAD {
        // A length given anyway describes the body a GET would have had.
        return Ok(body(Framing::Empty, true));
    }
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            return Err(H1Error::TransferEncoding);
        }
        // Both a coding and a length: the coding wins, but the connection
        // is not trusted for another request (RFC 9112, 6.3).
        let both = head.headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if is_chunked(&head.headers) {
            body(Framing::Chunked, !both)
        } else {
            body(Framing::Eof, false)
        });
    }
    Ok(match content_length(&head.headers)? {
        Some(0) => body(Framing::Empty, true),
        Some(n) => body(Framing::Length(n), true),
        None => body(Framing::Eof, false),
    })
}

/// A step of chunked decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The trailer section (the body is complete).
    Trailers(HeaderMap),
    /// The body is complete (no trailers).
    End,
}

/// Where a chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body from a read buffer.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
        }
    }
}

/// Takes `n` bytes off the front of `buf`, without copying them (the read
/// buffer is reused in place once they have been written on and dropped;
/// if they are still held when it must read again, it gets a new one).
pub fn take_bytes(buf: &mut BytesMut, n: usize) -> Bytes {
    buf.split_to(n).freeze()
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The next piece from `buf`; `Ok(None)`: read more. Data is taken off
    /// `buf` as it is returned.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Chunk>, H1Error> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(nl) = memchr(b'\n', buf) else {
                        return if buf.len() > MAX_CHUNK_LINE {
                            Err(H1Error::Chunked)
                        } else {
                            Ok(None)
                        };
                    };
                    if nl > MAX_CHUNK_LINE {
                        return Err(H1Error::Chunked);
                    }
                    let line = &buf[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                    if digits == 0 || digits > 16 {
                        return Err(H1Error::Chunked);
                    }
                    // After the size: optional whitespace, then nothing or
                    // extensions (ignored).
                    let rest = &line[digits..];
                    let rest_trimmed = rest
                        .iter()
                        .position(|&b| b != b' ' && b != b'\t')
                        .map_or(&rest[rest.len()..], |i| &rest[i..]);
                    if !(rest_trimmed.is_empty() || rest_trimmed[0] == b';')
                        || rest.iter().any(|&b| b == b'\r' || b == 0)
                    {
                        return Err(H1Error::Chunked);
                    }
                    let mut size: u64 = 0;
                    for &d in &line[..digits] {
                        let v = (d as char).to_digit(16).ok_or(H1Error::Chunked)?;
                        size = size
                            .checked_mul(16)
                            .and_then(|s| s.checked_add(u64::from(v)))
                            .ok_or(H1Error::Chunked)?;
                    }
                    buf.advance(nl + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = take_bytes(buf, n);
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Some(Chunk::Data(data)));
                }
                ChunkState::DataEnd => {
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => buf.advance(1),
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(None),
                            Some(b'\n') => buf.advance(2),
                            Some(_) => return Err(H1Error::Chunked),
                        },
                        Some(_) => return Err(H1Error::Chunked),
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // No trailers: just the final empty line.
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => {
                            buf.advance(1);
                            self.state = ChunkState::Done;
                            return Ok(Some(Chunk::End));
                        }
                        Some(b'\r') => match buf.get(1) {
                            None => return Ok(None),
                            Some(b'\n') => {
                                buf.advance(2);
                                self.state = ChunkState::Done;
                                return Ok(Some(Chunk::End));
                            }
                            Some(_) => return Err(H1Error::Chunked),
                        },
                        Some(_) => {}
                    }
                    // A trailer section: field lines up to an empty line.
                    let Some(end) = head_end(buf) else {
                        return if buf.len() > MAX_HEAD_BYTES {
                            Err(H1Error::HeadTooLarge)
                        } else {
                            Ok(None)
                        };
                    };
                    if end > MAX_HEAD_BYTES {
                        return Err(H1Error::HeadTooLarge);
                    }
                    let section = Bytes::copy_from_slice(&buf[..end]);
                    buf.advance(end);
                    let mut trailers = HeaderMap::new();
                    parse_fields(&section, lines(&section), &mut trailers)?;
                    self.state = ChunkState::Done;
                    return Ok(Some(Chunk::Trailers(trailers)));
                }
                ChunkState::Done => return Ok(Some(Chunk::End)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &[u8]) -> Result<Option<ResponseHead>, H1Error> {
        parse_response_head(&mut BytesMut::from(s))
    }

    #[test]
    fn a_request_head_is_written_as_it_is() {
        let (mut parts, ()) = http::Request::get("/a/b?c=1")
            .header("host", "example")
            .header("x-city-id", "010")
            .header("accept", "a")
            .header("accept", "b")
            .body(())
            .expect("request")
            .into_parts();
        let mut out = BytesMut::new();
        encode_request_head(&parts, &mut out);
        assert_eq!(
            &out[..],
            &b"GET /a/b?c=1 HTTP/1.1\r\nhost: example\r\nx-city-id: 010\r\naccept: a\r\naccept: b\r\n\r\n"[..]
        );
        parts.method = Method::OPTIONS;
        parts.uri = "*".parse().expect("uri");
        parts.headers.clear();
        out.clear();
        encode_request_head(&parts, &mut out);
        assert_eq!(&out[..], &b"OPTIONS * HTTP/1.1\r\n\r\n"[..]);
    }

    #[test]
    fn response_heads() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\nx-a: c\r\n\r\nhello"[..],
        );
        let h = parse_response_head(&mut buf)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.status, 200);
        assert_eq!(h.version, Version::HTTP_11);
        assert!(h.reason.is_none());
        assert_eq!(h.headers["content-length"], "5");
        let xa: Vec<_> = h
            .headers
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(xa, ["b", "c"]);
        assert_eq!(&buf[..], b"hello");
        assert_eq!(
            next(&h, &Method::GET),
            Ok(Next::Body {
                framing: Framing::Length(5),
                reusable: true
            })
        );

        // Bare LF, no reason phrase, a custom reason phrase.
        let h = parse(b"HTTP/1.0 404\n\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(h.status, 404);
        assert_eq!(
            next(&h, &Method::GET),
            Ok(Next::Body {
                framing: Framing::Eof,
                reusable: false
            })
        );
        let h = parse(b"HTTP/1.1 200 Fine Thanks\r\n\r\n")
            .expect("valid")
            .expect("complete");
        assert_eq!(h.reason.as_deref(), Some(&b"Fine Thanks"[..]));

        // Incomplete.
        assert!(parse(b"HTTP/1.1 200 OK\r\nContent-Le")
            .expect("ok")
            .is_none());
        assert!(parse(b"").expect("ok").is_none());

        // Malformed.
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nname : v\r\n\r\n",
            b"HTTP/1.1 200 OK\r\na: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\na: b\x01c\r\n\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            (0..=MAX_HEADERS)
                .map(|i| format!("h{i}: v\r\n"))
                .collect::<String>()
        );
        assert_eq!(parse(many.as_bytes()).err(), Some(H1Error::TooManyHeaders));
        let huge = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert_eq!(parse(&huge).err(), Some(H1Error::HeadTooLarge));
    }

    fn head(s: &str) -> ResponseHead {
        parse(s.as_bytes()).expect("valid").expect("complete")
    }

    #[test]
    fn framing_follows_the_rules() {
        let cases: &[(&str, Method, Result<Next, H1Error>)] = &[
            ("HTTP/1.1 100 Continue\r\n\r\n", Method::GET, Ok(Next::Skip)),
            (
                "HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n",
                Method::GET,
                Ok(Next::Skip),
            ),
            (
                "HTTP/1.1 101 Switching\r\n\r\n",
                Method::GET,
                Err(H1Error::UnexpectedUpgrade),
            ),
            (
                "HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Empty,
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n",
                Method::HEAD,
                Ok(Next::Body {
                    framing: Framing::Empty,
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Chunked,
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Chunked,
                    reusable: false,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Eof,
                    reusable: false,
                }),
            ),
            (
                "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
                Err(H1Error::TransferEncoding),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Length(3),
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
                Method::GET,
                Err(H1Error::ContentLength),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
                Method::GET,
                Err(H1Error::ContentLength),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551614\r\n\r\n",
                Method::GET,
                Err(H1Error::ContentLength),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551613\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Length(u64::MAX - 2),
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: +1\r\n\r\n",
                Method::GET,
                Err(H1Error::ContentLength),
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Empty,
                    reusable: false,
                }),
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Length(2),
                    reusable: true,
                }),
            ),
            (
                "HTTP/1.1 200 OK\r\nconnection: upgrade, close\r\ncontent-length: 1\r\n\r\n",
                Method::GET,
                Ok(Next::Body {
                    framing: Framing::Length(1),
                    reusable: false,
                }),
            ),
        ];
        for (text, method, want) in cases {
            assert_eq!(&next(&head(text), method), want, "{text:?} {method}");
        }
    }

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Option<HeaderMap>), H1Error> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Some(Chunk::Data(b)) => out.extend_from_slice(&b),
                Some(Chunk::Trailers(t)) => return Ok((out, Some(t))),
                Some(Chunk::End) => return Ok((out, None)),
                None => {
                    if fed >= input.len() {
                        return Err(H1Error::Chunked);
                    }
                    let n = split.max(1).min(input.len() - fed);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        for split in [1, 2, 3, 7, 100] {
            let (data, trailers) = decode_all(body, split).expect("valid");
            assert_eq!(data, b"hello, world");
            assert!(trailers.is_none());
        }
        let with_trailers = b"3\nabc\n0\nx-sum: 1\nx-other: 2\n\n";
        let (data, trailers) = decode_all(with_trailers, 4).expect("valid");
        assert_eq!(data, b"abc");
        let t = trailers.expect("trailers");
        assert_eq!(t["x-sum"], "1");
        assert_eq!(t["x-other"], "2");
        for bad in [
            &b"g\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"5 x\r\n",
            b"0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        /// Any bytes: a head, "read more", or an error; never a panic.
        #[test]
        fn any_response_bytes_parse_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(h)) = parse_response_head(&mut buf) {
                let _ = next(&h, &Method::GET);
                let _ = next(&h, &Method::HEAD);
            }
        }

        /// Near-valid heads (a status line, then bytes from the characters
        /// heads are made of): a head, "read more" or an error.
        #[test]
        fn near_valid_heads_parse_without_panicking(
            code in 0u16..1000,
            rest in proptest::collection::vec(proptest::sample::select(b"ab:; \t\r\n0-,\x7f\x80".to_vec()), 0..200),
        ) {
            let mut bytes = format!("HTTP/1.1 {code} OK\r\n").into_bytes();
            bytes.extend_from_slice(&rest);
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(h)) = parse_response_head(&mut buf) {
                let _ = next(&h, &Method::GET);
            }
        }

        /// Heads built from arbitrary valid parts parse back to them.
        #[test]
        fn valid_heads_round_trip(
            code in 200u16..600,
            fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,20}"), 0..10),
        ) {
            let mut text = format!("HTTP/1.1 {code} X\r\n");
            for (k, v) in &fields {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\n");
            let h = parse(text.as_bytes()).expect("valid").expect("complete");
            prop_assert_eq!(h.status.as_u16(), code);
            for (k, v) in &fields {
                let want = v.trim_matches(|c| c == ' ' || c == '\t');
                prop_assert!(h.headers.get_all(k.as_str()).iter().any(|got| *got == *want));
            }
        }

        /// Any bytes fed to the chunked decoder in any split: data, the
        /// end, "read more" or an error; never a panic.
        #[test]
        fn any_chunked_bytes_decode_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            split in 1usize..64,
        ) {
            let _ = decode_all(&bytes, split);
        }

        /// Chunked encodings of arbitrary data decode back to it.
        #[test]
        fn chunked_round_trip(
            pieces in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            split in 1usize..64,
        ) {
            let mut enc = Vec::new();
            for p in &pieces {
                enc.extend_from_slice(format!("{:x}\r\n", p.len()).as_bytes());
                enc.extend_from_slice(p);
                enc.extend_from_slice(b"\r\n");
            }
            enc.extend_from_slice(b"0\r\n\r\n");
            let (data, trailers) = decode_all(&enc, split).expect("valid");
            prop_assert_eq!(data, pieces.concat());
            prop_assert!(trailers.is_none());
        }
    }
}
