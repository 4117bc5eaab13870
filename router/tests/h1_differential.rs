//! Differential property tests: the router's hand-written HTTP/1 code
//! against hyper, on the same bytes.
//!
//! The router parses HTTP/1 itself on its two hot paths: upstream
//! *responses* in `ezone_router::http1::codec` (the client side) and client
//! *requests* in `ezone_router::http1::server` (the server side, with
//! `httparse`, handing anything unusual to hyper). Everything those parsers
//! accept is forwarded, so they must agree with the reference — hyper, which
//! serves every other exchange of the router — on everything the router
//! passes on: a head one side takes and the other refuses, a header field
//! read differently or a body framed differently is how responses get mixed
//! up on a reused connection, or requests smuggled past a check.
//!
//! What is compared, for bytes from a grammar of mostly well-formed messages
//! (odd versions and status codes, `Content-Length` and `Transfer-Encoding`
//! in their valid and invalid shapes, obsolete line folding, a space before
//! the colon, bare LF, non-token names, odd value bytes, huge heads, chunked
//! bodies with odd size lines, extensions and trailers), then randomly
//! mutated (bytes flipped, inserted, deleted, the message truncated):
//!
//! - responses: `h1::parse_response_head` + `h1::next` + the body read with
//!   the framing `next` chose (the way `upstream/client.rs` reads it, fed in random
//!   splits) against hyper's HTTP/1 client (`client::conn::http1`, built as
//!   `upstream/client.rs` builds it) answered with the same bytes over an in-memory
//!   pipe, for a GET or a HEAD: whether the head is taken; if both take it,
//!   the status, version, reason phrase, header fields (names and values,
//!   in order), and the body's bytes and trailer fields (or both fail on
//!   the body);
//! - requests: `h1_server::serve` against hyper's HTTP/1 server
//!   (`server::conn::http1`, with the limits `server/worker.rs` gives it), each
//!   over an in-memory pipe: whether the first request head is taken,
//!   refused (and with which status) or, by `serve` only, handed over to
//!   hyper (fine by construction: hyper then serves it; the bytes handed
//!   over must be exactly the ones read); if both take it, the method,
//!   target, version and header fields, and hyper must agree that the
//!   request has no body (`serve` only takes bodyless requests).
//!
//! Every disagreement fails the test unless it is one of the named
//! exceptions in [`Allowed`], each with the line of the router's docs it
//! rests on (most in the list of differences in `h1.rs`'s module doc).
//! Where an exception is
//! a feature of the bytes (empty lines before the status line; bare LFs,
//! long sizes, odd extensions or large trailers in a chunked body), the
//! feature is taken out and the side that failed must then read exactly
//! what the other read, so that an exception cannot hide a second
//! difference. Allowed differences in short:
//!
//! - documented: 101 refused (`Upgrade101`); the router's own limits on
//!   response heads, chunk-size lines and trailer sections
//!   (`ResponseHeadOverLimit`, `ChunkLineOverLimit`,
//!   `TrailersOverHyperLimit`); requests with a body that cannot be framed
//!   taken so that the request path refuses them (`UnframableBodyTaken`);
//!   malformed heads past hyper's first read answered 400 where hyper
//!   waits (`HyperWaitsForTheHeadEnd`); a connection cut in the middle of
//!   an HTTP/2 preface closed unanswered (`CutHttp2Preface`);
//!   empty lines before a status line refused (`LeadingEmptyLine`); an
//!   empty or obs-text reason phrase passed on differently (`EmptyReason`,
//!   `ObsTextReason`); bare LFs in chunked framing accepted
//!   (`BareLfInChunkedBody`); chunk sizes over 16 digits and NULs in chunk
//!   extensions refused (`LongChunkSize`, `NulInChunkExtension`); repeated
//!   `Content-Length: 0` kept as parsed (`RepeatedContentLength`; the
//!   request goes on with one).
//!
//! A `Content-Length` past hyper's maximum (2^64-3) was taken by the router
//! until this test found it (a client then got a broken body instead of a
//! 502); both now refuse it.
//!
//! `each_allowed_difference_has_an_example` pins each exception to its
//! smallest example: when the router changes so that one is no longer met,
//! that test says which exception to drop. How often each exception, and
//! each kind of outcome, was met is printed at the end of the two property
//! tests (`-- --nocapture`).
//!
//! Case counts: 512 per test by default (the file runs in a few seconds in
//! debug). For a long run set `EZONE_FUZZ_CASES` (e.g.
//! `EZONE_FUZZ_CASES=100000 cargo test -p ezone-router --release --test
//! h1_differential -- --nocapture`); proptest's own `PROPTEST_CASES` works
//! too (`EZONE_FUZZ_CASES` wins if both are set). Failures are not
//! persisted (`failure_persistence: None`, no regression files in the
//! tree): proptest prints the shrunk failing input, which is the case to
//! add to a unit test.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ezone_router::http1::codec::{self as h1, Chunk, ChunkedDecoder, Framing, H1Error, Next};
use ezone_router::http1::server::{self as h1_server, Ended, Limits, Signals};
use ezone_router::policy::headers::{check_request, Refusal};
use ezone_router::upstream::body::RequestBody;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Cases per test unless `EZONE_FUZZ_CASES` or `PROPTEST_CASES` says.
const DEFAULT_CASES: u32 = 512;

/// The request head limit both servers get: the router's default
/// `limits.max_header_bytes` (as `server/worker.rs` passes it to both).
const HEAD_LIMIT: usize = 16 * 1024;
/// Both servers' field count limit (the router's default, hyper's too).
const MAX_FIELDS: usize = 100;

fn config() -> Config {
    // `Config::default()` has read `PROPTEST_CASES` if it is set.
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = DEFAULT_CASES;
    }
    if let Some(n) = std::env::var("EZONE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        c.cases = n;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_TIME").is_none() {
        // Shrinking runs both sides per step: bound it (milliseconds).
        c.max_shrink_time = 60_000;
    }
    c.failure_persistence = None;
    c
}

/// The disagreements allowed, each by a line of the router's docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Allowed {
    // --- Responses (`h1.rs`) ---
    /// h1.rs module doc: "1xx answers other than 101 are skipped; 101 is an
    /// error (no upgrade was asked for)". hyper hands the 101 up as the
    /// answer.
    Upgrade101,
    /// h1.rs module doc: "... or a head over [`MAX_HEAD_BYTES`] are errors"
    /// (64 KiB; hyper's client buffers about 400 KiB).
    ResponseHeadOverLimit,
    /// h1.rs module doc: empty lines before the status
    /// line. httparse (so hyper) skips them; `parse_response_head` refuses
    /// a head whose first line is empty (`H1Error::StatusLine`). RFC 9112
    /// 2.2 asks only servers to skip them before a request line.
    LeadingEmptyLine,
    /// h1.rs module doc: a status line without a reason
    /// phrase ("HTTP/1.1 200\r\n" or "HTTP/1.1 200 \r\n"). hyper keeps the
    /// empty phrase (and writes "200 " on); the router's `ResponseHead`
    /// has `reason: None` ("the reason phrase, if it is not the status
    /// code's usual one"), so the usual one ("OK") is written on.
    EmptyReason,
    /// h1.rs module doc: a reason phrase with obs-text (bytes
    /// 0x80-0xff). httparse drops such a phrase (hyper gets ""), the router
    /// keeps it as sent.
    ObsTextReason,
    /// h1.rs module doc: "chunked framing lines (sizes, the end of a
    /// chunk's data, trailers) may end in a bare LF, as nginx's chunked
    /// parser allows (hyper requires CRLF there)".
    BareLfInChunkedBody,
    /// h1.rs module doc: a chunk size written with
    /// more than 16 hex digits (leading zeros). hyper accepts any number of
    /// digits whose value fits in 64 bits, `ChunkedDecoder` at most 16.
    LongChunkSize,
    /// h1.rs module doc: a NUL byte in a chunk
    /// extension, which `ChunkedDecoder` refuses and hyper ignores.
    NulInChunkExtension,
    /// h1.rs: `MAX_CHUNK_LINE` "The longest chunk-size line (with
    /// extensions), in bytes" (4096; hyper allows 16 KiB of extensions).
    ChunkLineOverLimit,
    /// h1.rs: `MAX_HEAD_BYTES` "The largest response head (or trailer
    /// section), in bytes" (64 KiB; hyper's client allows 16 KiB of
    /// trailers).
    TrailersOverHyperLimit,
    // --- Requests (`http1/server.rs`) ---
    /// http1/server.rs module doc: "A head whose body cannot be framed safely
    /// (a `Transfer-Encoding` other than `chunked`, or one with a
    /// `Content-Length`) is taken here rather than handed to hyper (which
    /// would read such a body one way or another), so the request path
    /// refuses it". Checked: `headers::check_request` refuses it.
    UnframableBodyTaken,
    /// http1/server.rs module doc: "What this path answers itself: a head that
    /// does not parse (400) or is too large (431), each followed by closing
    /// the connection, as hyper does". hyper does, but once its first read
    /// (8 KiB) did not hold a whole head it parses again only when the
    /// head's empty line has arrived, while `serve` parses what it has at
    /// each read. So a head malformed past its first 8 KiB, which does not
    /// end before the connection does (hyper: closed without an answer) or
    /// before hyper's buffer limit (hyper: 431), is 400 from `serve`.
    HyperWaitsForTheHeadEnd,
    /// http1/server.rs module doc: "Anything else that arrives on the
    /// connection — ... HTTP/2 prior knowledge — hands the connection, with
    /// every byte read so far, to hyper". To know, `serve` waits for the
    /// preface's first line ("PRI * HTTP/2.0"); a connection that ends in
    /// the middle of it is closed without an answer, where hyper's HTTP/1
    /// server may already have answered 400.
    CutHttp2Preface,
    /// http1/server.rs module doc: repeated `Content-Length: 0` fields. hyper's
    /// server keeps only the first of equal lengths; `serve` keeps them all
    /// as sent, so the request path sees (and may pass on) both.
    RepeatedContentLength,
}

/// How often each exception, and each kind of outcome, was met in a test.
#[derive(Default)]
struct Tally(Mutex<Counts>);

#[derive(Default)]
struct Counts {
    allowed: BTreeMap<Allowed, u64>,
    outcomes: BTreeMap<&'static str, u64>,
}

impl Tally {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note(&self, a: Allowed) {
        *self.counts().allowed.entry(a).or_default() += 1;
    }

    fn outcome(&self, kind: &'static str) {
        *self.counts().outcomes.entry(kind).or_default() += 1;
    }

    fn print(&self, test: &str) {
        let c = self.counts();
        eprintln!("{test}: outcomes {:?}", c.outcomes);
        eprintln!("{test}: allowed differences met {:?}", c.allowed);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

type Fields = Vec<(String, Vec<u8>)>;

fn fields(h: &HeaderMap) -> Fields {
    h.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// Bytes for messages, readable.
fn show(b: &[u8]) -> String {
    if b.len() > 600 {
        format!(
            "{}...({} bytes)...{}",
            b[..300].escape_ascii(),
            b.len(),
            b[b.len() - 200..].escape_ascii()
        )
    } else {
        b.escape_ascii().to_string()
    }
}

// ---------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------

fn one_of(items: &[&'static [u8]]) -> BoxedStrategy<Vec<u8>> {
    proptest::sample::select(items.to_vec())
        .prop_map(<[u8]>::to_vec)
        .boxed()
}

fn lit(b: &'static [u8]) -> BoxedStrategy<Vec<u8>> {
    Just(b.to_vec()).boxed()
}

/// A line end: mostly CRLF.
fn eol() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        30 => lit(b"\r\n"),
        4 => lit(b"\n"),
        1 => one_of(&[b"\r", b"\r\r\n", b"\n\r", b" \r\n"]),
    ]
    .boxed()
}

fn name() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => "[A-Za-z][A-Za-z0-9-]{0,10}".prop_map(String::into_bytes),
        1 => one_of(&[
            b"!#$%&'*+-.^_`|~",
            b"x a",
            b"x(a)",
            b"x\x80",
            b"",
            b"x@y",
            b"x\"y",
            b"x/y",
            b"\xff",
            b"x\x00",
            b"x\ty",
            b"{}",
            b"x\x7f",
        ]),
    ]
    .boxed()
}

fn value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        6 => "[ -~]{0,20}".prop_map(String::into_bytes),
        3 => one_of(&[
            b"",
            b" ",
            b"a\tb",
            b"\ta\t",
            b"  spaced  ",
            b"caf\xc3\xa9",
            b"\x80\xff",
            b"a\x7fb",
            b"a\x00b",
            b"a\x01b",
            b"a\rb",
            b"\"q\"",
            b"a, b",
        ]),
        1 => vec(any::<u8>(), 0..8),
    ]
    .boxed()
}

/// Between a field's name and value: mostly ": ".
fn sep() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        16 => lit(b": "),
        4 => lit(b":"),
        1 => one_of(&[b" : ", b" :", b"\t:", b":\t", b":   ", b"", b"::"]),
    ]
    .boxed()
}

fn field_of(
    names: BoxedStrategy<Vec<u8>>,
    values: BoxedStrategy<Vec<u8>>,
) -> BoxedStrategy<Vec<u8>> {
    (names, sep(), values, eol())
        .prop_map(|(n, s, v, e)| [n, s, v, e].concat())
        .boxed()
}

/// A well-formed field.
fn clean_field() -> BoxedStrategy<Vec<u8>> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,10}",
        prop_oneof![4 => lit(b": "), 1 => lit(b":")],
        "[!-~]([ -~]{0,18}[!-~])?",
        prop_oneof![8 => lit(b"\r\n"), 1 => lit(b"\n")],
    )
        .prop_map(|(n, s, v, e)| [n.into_bytes(), s, v.into_bytes(), e].concat())
        .boxed()
}

/// Any field: mostly well-formed, else with odd names, values, separators
/// or line ends, or followed by an obs-fold continuation line.
fn generic_field() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        14 => clean_field(),
        1 => field_of(name(), value()),
        1 => (
            field_of(name(), value()),
            one_of(&[b" folded", b"\tfolded", b" "]),
            eol()
        )
            .prop_map(|(f, c, e)| [f, c, e].concat()),
    ]
    .boxed()
}

fn cl_name() -> BoxedStrategy<Vec<u8>> {
    one_of(&[
        b"Content-Length",
        b"content-length",
        b"CONTENT-LENGTH",
        b"Content-length",
    ])
}

fn cl_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => (0u64..100).prop_map(|n| n.to_string().into_bytes()),
        2 => one_of(&[
            b"",
            b" 5 ",
            b"+5",
            b"-1",
            b"5, 5",
            b"5,5",
            b"5,6",
            b"5, ",
            b",5",
            b"0x5",
            b"1 2",
            b"05",
            b"5.0",
            b"\t3\t",
            b"0",
            b"00",
            b"18446744073709551613",
            b"18446744073709551614",
            b"18446744073709551615",
            b"18446744073709551616",
            b"99999999999999999999",
        ]),
        1 => any::<u64>().prop_map(|n| n.to_string().into_bytes()),
    ]
    .boxed()
}

fn cl_field() -> BoxedStrategy<Vec<u8>> {
    field_of(cl_name(), cl_value())
}

fn te_name() -> BoxedStrategy<Vec<u8>> {
    one_of(&[
        b"Transfer-Encoding",
        b"transfer-encoding",
        b"TRANSFER-ENCODING",
    ])
}

fn te_value() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => lit(b"chunked"),
        3 => one_of(&[
            b"Chunked",
            b"CHUNKED",
            b"gzip",
            b"gzip, chunked",
            b"chunked, gzip",
            b"gzip,chunked",
            b" chunked ",
            b"identity",
            b"chunked,",
            b",chunked",
            b"",
            b"chunked;q=1",
            b"x-custom, chunked",
            b"chunked chunked",
            b"chunked, chunked",
        ]),
    ]
    .boxed()
}

fn te_field() -> BoxedStrategy<Vec<u8>> {
    field_of(te_name(), te_value())
}

fn connection_field() -> BoxedStrategy<Vec<u8>> {
    field_of(
        one_of(&[b"Connection", b"connection"]),
        one_of(&[
            b"close",
            b"keep-alive",
            b"upgrade",
            b"Upgrade, close",
            b"keep-alive, close",
            b"",
        ]),
    )
}

/// Rarely, a head made huge: one long field or about 100 fields.
fn bulk(long: std::ops::Range<usize>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![40 => Just(Vec::new()), 2 => huge(long)].boxed()
}

/// One field of about `long` bytes, or about 100 fields.
fn huge(long: std::ops::Range<usize>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        long.prop_map(|n| format!("X-Big: {}\r\n", "a".repeat(n)).into_bytes()),
        (96usize..104).prop_map(|n| {
            (0..n)
                .map(|i| format!("h{i}: v\r\n"))
                .collect::<String>()
                .into_bytes()
        }),
    ]
    .boxed()
}

/// One random change to a message.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn mutations() -> BoxedStrategy<Vec<Mutation>> {
    let one = prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<Index>(), vec(any::<u8>(), 1..4)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..8).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
    ];
    prop_oneof![
        7 => Just(Vec::new()),
        1 => vec(one, 1..4),
    ]
    .boxed()
}

fn mutate(mut b: Vec<u8>, ms: &[Mutation]) -> Vec<u8> {
    for m in ms {
        match m {
            Mutation::Flip(i, x) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *x;
            }
            Mutation::Insert(i, x) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, x.iter().copied());
            }
            Mutation::Delete(i, n) if !b.is_empty() => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Mutation::Truncate(i) => {
                let i = i.index(b.len() + 1);
                b.truncate(i);
            }
            _ => {}
        }
    }
    b
}

/// A chunked body: well-formed, or with odd size lines, line ends,
/// extensions or trailers.
fn chunked_body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![1 => clean_chunked_body(), 2 => odd_chunked_body()].boxed()
}

/// A well-formed chunked body, sometimes with extensions and trailers.
fn clean_chunked_body() -> BoxedStrategy<Vec<u8>> {
    let ext = || prop_oneof![6 => lit(b""), 1 => lit(b";a=b"), 1 => lit(b"; name=\"v\"")];
    let chunk = (vec(any::<u8>(), 1..300), any::<bool>(), ext()).prop_map(|(data, upper, ext)| {
        let size = if upper {
            format!("{:X}", data.len())
        } else {
            format!("{:x}", data.len())
        };
        [
            size.into_bytes(),
            ext,
            b"\r\n".to_vec(),
            data,
            b"\r\n".to_vec(),
        ]
        .concat()
    });
    (
        vec(chunk, 0..5),
        ext(),
        prop_oneof![3 => Just(Vec::new()), 1 => vec(clean_field(), 1..4).prop_map(|v| v.concat())],
    )
        .prop_map(|(chunks, ext, trailers)| {
            [
                chunks.concat(),
                b"0".to_vec(),
                ext,
                b"\r\n".to_vec(),
                trailers,
                b"\r\n".to_vec(),
            ]
            .concat()
        })
        .boxed()
}

/// A chunked body with odd size lines, line ends, extensions or trailers.
fn odd_chunked_body() -> BoxedStrategy<Vec<u8>> {
    let size = |n: usize| -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            30 => Just(format!("{n:x}").into_bytes()),
            1 => Just(format!("{n:X}").into_bytes()),
            1 => (1usize..20).prop_map(move |z| format!("{}{n:x}", "0".repeat(z)).into_bytes()),
            1 => prop_oneof![Just(n + 1), Just(n.saturating_sub(1))]
                .prop_map(|m| format!("{m:x}").into_bytes()),
            1 => one_of(&[b"", b"g", b" 5", b"0x5", b"-1", b"ffffffffffffffffff", b"+5"]),
        ]
        .boxed()
    };
    let ext = || -> BoxedStrategy<Vec<u8>> {
        prop_oneof![
            20 => lit(b""),
            1 => one_of(&[
                b";a=b",
                b" ;x",
                b";q=\"x y\"",
                b"\t",
                b" ",
                b";\x00",
                b";\x7f",
                b"x",
                b"; a = b",
                b";\x80",
            ]),
            1 => (4000usize..4200).prop_map(|n| format!(";{}", "e".repeat(n)).into_bytes()),
        ]
        .boxed()
    };
    let chunk = vec(any::<u8>(), 1..24)
        .prop_flat_map(move |data| {
            let n = data.len();
            (Just(data), size(n), ext(), eol(), eol())
        })
        .prop_map(|(data, size, ext, le, de)| [size, ext, le, data, de].concat());
    let last = (
        one_of(&[b"0", b"0", b"0", b"00000", b"00000000000000000000"]),
        ext(),
        eol(),
        prop_oneof![
            4 => Just(Vec::new()),
            1 => vec(generic_field(), 1..3).prop_map(|v| v.concat()),
            1 => huge(15_000..18_000),
        ],
        prop_oneof![8 => lit(b"\r\n"), 1 => lit(b"\n"), 1 => lit(b"")],
    )
        .prop_map(|(z, ext, le, trailers, end)| [z, ext, le, trailers, end].concat());
    (
        vec(chunk, 0..4),
        last,
        prop_oneof![6 => lit(b""), 1 => lit(b"junk")],
    )
        .prop_map(|(chunks, last, after)| [chunks.concat(), last, after].concat())
        .boxed()
}

fn raw_body() -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..40).boxed()
}

/// How a generated response frames its body: the framing fields and the
/// body.
fn response_framing() -> BoxedStrategy<(Vec<Vec<u8>>, Vec<u8>)> {
    prop_oneof![
        // Chunked, sometimes with a length too.
        5 => (
            field_of(te_name(), lit(b"chunked")),
            prop_oneof![5 => Just(None), 1 => cl_field().prop_map(Some)],
            chunked_body()
        )
            .prop_map(|(te, cl, body)| (std::iter::once(te).chain(cl).collect(), body)),
        // A length, usually the body's.
        3 => (raw_body(), -1i64..=1, 0u8..4).prop_map(|(body, off, rep)| {
            let n = (body.len() as i64 + if rep == 3 { off } else { 0 }).max(0);
            let mut fields = vec![format!("Content-Length: {n}\r\n").into_bytes()];
            if rep == 2 {
                fields.push(format!("content-length: {n}\r\n").into_bytes());
            }
            (fields, body)
        }),
        // Neither: to the end of the connection.
        1 => raw_body().prop_map(|b| (Vec::new(), b)),
        // Anything.
        2 => (
            vec(prop_oneof![cl_field(), te_field()], 0..3),
            prop_oneof![raw_body(), chunked_body()]
        ),
    ]
    .boxed()
}

fn status_line() -> BoxedStrategy<Vec<u8>> {
    let version = prop_oneof![
        20 => lit(b"HTTP/1.1"),
        5 => lit(b"HTTP/1.0"),
        1 => one_of(&[
            b"HTTP/1.2",
            b"HTTP/2.0",
            b"HTTP/2",
            b"http/1.1",
            b"HTTP/1.1 ",
            b"HTTP/1",
            b"ICY",
            b"HTTP/0.9",
            b"HTTP/1.10",
        ]),
    ];
    let code = prop_oneof![
        16 => proptest::sample::select(vec![
            200u16, 200, 200, 200, 200, 200, 200, 200, 201, 204, 206, 301, 304, 404, 500, 599,
            100, 101, 103,
        ])
        .prop_map(|c| c.to_string().into_bytes()),
        2 => (100u16..1000).prop_map(|c| c.to_string().into_bytes()),
        1 => prop_oneof![
            (0u16..100).prop_map(|c| format!("{c:03}").into_bytes()),
            one_of(&[b"20", b"2000", b"0200", b"099", b"000", b"2x0", b" 200", b""]),
        ],
    ];
    let reason = prop_oneof![
        12 => lit(b" OK"),
        3 => lit(b""),
        2 => one_of(&[
            b" ",
            b" Not Found",
            b" No Content",
            b" Fine Thanks",
            b" weird\treason",
            b" caf\xc3\xa9",
            b" x\x7f",
            b" x\x01",
            b"  two spaces",
            b"OK",
            b" OK ",
        ]),
    ];
    (version, lit(b" "), code, reason, eol())
        .prop_map(|(v, s, c, r, e)| [v, s, c, r, e].concat())
        .boxed()
}

/// A generated response and how it is asked for.
#[derive(Clone)]
struct ResponseCase {
    bytes: Vec<u8>,
    head_request: bool,
    /// How many bytes the router's reads return at a time.
    split: usize,
}

impl std::fmt::Debug for ResponseCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} request, answered b\"{}\" (router reads {} bytes at a time)",
            if self.head_request { "HEAD" } else { "GET" },
            show(&self.bytes),
            self.split
        )
    }
}

fn response_case() -> impl Strategy<Value = ResponseCase> {
    let prefix = prop_oneof![
        20 => lit(b""),
        1 => one_of(&[
            b"\r\n",
            b"\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
            b"HTTP/1.1 102 Processing\n\n",
        ]),
    ];
    (
        prefix,
        status_line(),
        response_framing(),
        vec(
            prop_oneof![8 => generic_field(), 1 => connection_field()],
            0..6,
        ),
        any::<Index>(),
        bulk(60_000..70_000),
        prop_oneof![10 => lit(b"\r\n"), 2 => lit(b"\n"), 1 => lit(b"")],
        mutations(),
        prop_oneof![4 => Just(false), 1 => Just(true)],
        prop_oneof![3 => Just(usize::MAX), 1 => 1usize..48],
    )
        .prop_map(
            |(
                prefix,
                status,
                (framing, body),
                mut others,
                at,
                bulk,
                end,
                ms,
                head_request,
                split,
            )| {
                let i = at.index(others.len() + 1);
                others.splice(i..i, framing);
                let bytes = [prefix, status, others.concat(), bulk, end, body].concat();
                ResponseCase {
                    bytes: mutate(bytes, &ms),
                    head_request,
                    split,
                }
            },
        )
}

// ---------------------------------------------------------------------
// Responses: both sides
// ---------------------------------------------------------------------

/// A response as one side read it.
#[derive(Debug)]
enum Read<E> {
    /// No (final) response head was taken.
    Refused(E),
    Answered(Answer),
}

struct Answer {
    status: u16,
    version: Version,
    /// The reason phrase passed on, if not the status code's usual one.
    reason: Option<Vec<u8>>,
    headers: Fields,
    /// The body's bytes and trailer fields, or why reading it failed.
    body: Result<(Vec<u8>, Option<Fields>), String>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = match &self.body {
            Ok((b, t)) => format!(
                "b\"{}\" trailers {:?}",
                show(b),
                t.as_ref().map(show_fields)
            ),
            Err(e) => format!("failed: {e}"),
        };
        write!(
            f,
            "{} {:?} reason {:?} {:?} body {body}",
            self.status,
            self.version,
            self.reason.as_deref().map(show),
            show_fields(&self.headers)
        )
    }
}

/// What the router did, with where things are in the input.
struct RouterRead {
    read: Read<Option<H1Error>>,
    /// Where the head last parsed (or refused) starts.
    head_at: usize,
    /// Where the final head's body starts, and its framing.
    body_at: usize,
    framing: Option<Framing>,
}

/// The input, handed to a read buffer `split` bytes at a time.
struct Feeder<'a> {
    input: &'a [u8],
    fed: usize,
    split: usize,
    buf: BytesMut,
}

impl Feeder<'_> {
    /// Reads more; false at the end of the input (the peer closed).
    fn feed(&mut self) -> bool {
        if self.fed >= self.input.len() {
            return false;
        }
        let n = self.split.max(1).min(self.input.len() - self.fed);
        self.buf
            .extend_from_slice(&self.input[self.fed..self.fed + n]);
        self.fed += n;
        true
    }

    /// Where in the input the buffer starts.
    fn at(&self) -> usize {
        self.fed - self.buf.len()
    }
}

/// The router's client side over `input`, read `split` bytes at a time,
/// as `upstream/client.rs` reads it.
fn router_response(input: &[u8], method: &Method, split: usize) -> RouterRead {
    let mut r = Feeder {
        input,
        fed: 0,
        split,
        buf: BytesMut::new(),
    };
    let mut out = RouterRead {
        read: Read::Refused(None),
        head_at: 0,
        body_at: 0,
        framing: None,
    };
    let (head, framing) = loop {
        match h1::parse_response_head(&mut r.buf) {
            Ok(Some(head)) => match h1::next(&head, method) {
                // A 1xx: the next head starts here.
                Ok(Next::Skip) => out.head_at = r.at(),
                Ok(Next::Body { framing, .. }) => break (head, framing),
                Err(e) => {
                    out.read = Read::Refused(Some(e));
                    return out;
                }
            },
            Ok(None) => {
                if !r.feed() {
                    return out;
                }
            }
            Err(e) => {
                out.read = Read::Refused(Some(e));
                return out;
            }
        }
    };
    out.framing = Some(framing);
    out.body_at = r.at();
    let body = match framing {
        Framing::Empty | Framing::Length(0) => Ok((Vec::new(), None)),
        Framing::Length(n) => {
            let mut got = Vec::new();
            let mut left = n;
            loop {
                let k = usize::try_from(left).unwrap_or(usize::MAX).min(r.buf.len());
                got.extend_from_slice(&h1::take_bytes(&mut r.buf, k));
                left -= k as u64;
                if left == 0 {
                    break Ok((got, None));
                }
                if !r.feed() {
                    break Err("closed in the middle of the body".to_owned());
                }
            }
        }
        Framing::Chunked => {
            let mut d = ChunkedDecoder::default();
            let mut got = Vec::new();
            loop {
                match d.decode(&mut r.buf) {
                    Ok(Some(Chunk::Data(b))) => got.extend_from_slice(&b),
                    Ok(Some(Chunk::Trailers(t))) => break Ok((got, Some(fields(&t)))),
                    Ok(Some(Chunk::End)) => break Ok((got, None)),
                    Ok(None) => {
                        if !r.feed() {
                            break Err("closed in the middle of the chunked body".to_owned());
                        }
                    }
                    Err(e) => break Err(format!("{e:?}")),
                }
            }
        }
        Framing::Eof => {
            while r.feed() {}
            Ok((r.buf.to_vec(), None))
        }
    };
    out.read = Read::Answered(Answer {
        status: head.status.as_u16(),
        version: head.version,
        // As `upstream/client.rs` passes it on.
        reason: head
            .reason
            .filter(|r| hyper::ext::ReasonPhrase::try_from(r.clone()).is_ok())
            .map(|r| r.to_vec()),
        headers: fields(&head.headers),
        body,
    });
    out
}

/// hyper's HTTP/1 client (as `upstream/client.rs` builds it), asking with `method`
/// and answered with `input` (then the end of the connection).
async fn hyper_response(input: &[u8], method: &Method) -> Read<String> {
    let (client, mut server) = tokio::io::duplex(1 << 20);
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(client))
        .await
        .expect("handshake");
    let conn = tokio::spawn(conn);
    let upstream = async move {
        // The request first (a response before it is another case).
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server.read(&mut b).await.expect("read the request");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&b[..n]);
        }
        // (Errors: the client gave up on the connection already.)
        let _ = server.write_all(input).await;
        let _ = server.shutdown().await;
        // Kept open for reading until the client is done.
        server
    };
    let asking = async {
        let req = Request::builder()
            .method(method.clone())
            .uri("/")
            .header(header::HOST, "upstream")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => return Read::Refused(format!("{e:?}")),
        };
        let (parts, body) = resp.into_parts();
        let body = match body.collect().await {
            Ok(c) => {
                let trailers = c.trailers().map(fields);
                Ok((c.to_bytes().to_vec(), trailers))
            }
            Err(e) => Err(format!("{e:?}")),
        };
        Read::Answered(Answer {
            status: parts.status.as_u16(),
            version: parts.version,
            reason: parts
                .extensions
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| r.as_bytes().to_vec()),
            headers: fields(&parts.headers),
            body,
        })
    };
    let (_server, read) = tokio::join!(upstream, asking);
    conn.abort();
    read
}

/// What a chunked body looks like, read the way `ChunkedDecoder` reads it
/// (lines up to LF), for naming the exceptions.
#[derive(Debug, Default)]
struct ChunkedShape {
    bare_lf: bool,
    long_size: bool,
    nul_in_extension: bool,
    long_line: bool,
    /// The trailer section's size.
    trailer_bytes: usize,
    /// The same body with the features above taken out (CRLF line ends,
    /// sizes without leading zeros, no odd extensions, no trailer section
    /// over hyper's limit), then what followed it; `None` if the body is
    /// broken some other way.
    canonical: Option<Vec<u8>>,
}

/// hyper's client's limit on a trailer section (`TRAILER_LIMIT`).
const HYPER_TRAILER_LIMIT: usize = 16 * 1024;

fn chunked_shape(body: &[u8]) -> ChunkedShape {
    let mut s = ChunkedShape::default();
    s.canonical = canonical_chunked(body, &mut s);
    s
}

/// The next line (without its line end) off `b`, and whether it ended
/// with a bare LF.
fn next_line<'a>(b: &mut &'a [u8]) -> Option<(&'a [u8], bool)> {
    let nl = b.iter().position(|&c| c == b'\n')?;
    let l = &b[..nl];
    *b = &b[nl + 1..];
    let bare = !l.ends_with(b"\r");
    Some((l.strip_suffix(b"\r").unwrap_or(l), bare))
}

fn canonical_chunked(mut b: &[u8], s: &mut ChunkedShape) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (l, bare) = next_line(&mut b)?;
        s.bare_lf |= bare;
        s.long_line |= l.len() + 1 > h1::MAX_CHUNK_LINE;
        let digits = l.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        s.long_size |= digits > 16;
        let ext = &l[digits..];
        s.nul_in_extension |= ext.contains(&0);
        let size = l[..digits].iter().try_fold(0u64, |n, &d| {
            let v = u64::from((d as char).to_digit(16)?);
            n.checked_mul(16)?.checked_add(v)
        })?;
        let ext = ext.trim_ascii_start();
        if digits == 0 || !(ext.is_empty() || ext[0] == b';') || ext.contains(&b'\r') {
            return None;
        }
        out.extend_from_slice(format!("{size:x}").as_bytes());
        if !ext.contains(&0) && ext.len() < 1024 {
            out.extend_from_slice(ext);
        }
        out.extend_from_slice(b"\r\n");
        if size == 0 {
            let mut section = Vec::new();
            loop {
                let (l, bare) = next_line(&mut b)?;
                s.bare_lf |= bare;
                s.trailer_bytes += l.len() + if bare { 1 } else { 2 };
                if l.is_empty() {
                    break;
                }
                section.extend_from_slice(l);
                section.extend_from_slice(b"\r\n");
            }
            if s.trailer_bytes <= HYPER_TRAILER_LIMIT {
                out.extend_from_slice(&section);
            }
            out.extend_from_slice(b"\r\n");
            break;
        }
        let n = usize::try_from(size).ok()?;
        out.extend_from_slice(b.get(..n)?);
        b = &b[n..];
        if let Some(rest) = b.strip_prefix(b"\r\n") {
            b = rest;
        } else if let Some(rest) = b.strip_prefix(b"\n") {
            s.bare_lf = true;
            b = rest;
        } else {
            return None;
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b);
    Some(out)
}

/// Compares one response; `Ok(Some)`: an allowed difference.
fn compare_response(
    input: &[u8],
    method: &Method,
    r: &RouterRead,
    h: &Read<String>,
) -> Result<Option<Allowed>, String> {
    let (ra, ha) = match (&r.read, h) {
        (Read::Refused(_), Read::Refused(_)) => return Ok(None),
        (Read::Refused(Some(H1Error::UnexpectedUpgrade)), Read::Answered(a)) if a.status == 101 => {
            return Ok(Some(Allowed::Upgrade101))
        }
        (Read::Refused(Some(H1Error::HeadTooLarge)), Read::Answered(_))
            if input.len() - r.head_at > h1::MAX_HEAD_BYTES =>
        {
            return Ok(Some(Allowed::ResponseHeadOverLimit))
        }
        (Read::Refused(Some(H1Error::StatusLine)), Read::Answered(_))
            if input[r.head_at..].starts_with(b"\n") || input[r.head_at..].starts_with(b"\r\n") =>
        {
            // The only difference, if without those lines the router
            // reads what hyper read.
            let mut rest = &input[r.head_at..];
            while let Some(after) = rest
                .strip_prefix(b"\n")
                .or_else(|| rest.strip_prefix(b"\r\n"))
            {
                rest = after;
            }
            let without = [&input[..r.head_at], rest].concat();
            let again = router_response(&without, method, usize::MAX);
            return compare_response(&without, method, &again, h)
                // Allowed::LeadingEmptyLine (documented).
                .map(|_| Some(Allowed::LeadingEmptyLine))
                .map_err(|e| format!("without the empty lines before the head: {e}"));
        }
        (Read::Refused(e), Read::Answered(_)) => {
            return Err(format!(
                "the router refused the head ({e:?}), hyper took it"
            ))
        }
        (Read::Answered(_), Read::Refused(e)) => {
            return Err(format!("the router took the head, hyper refused it ({e})"))
        }
        (Read::Answered(ra), Read::Answered(ha)) => (ra, ha),
    };
    if (ra.status, ra.version, &ra.headers) != (ha.status, ha.version, &ha.headers) {
        return Err(format!(
            "heads differ:\n router: {} {:?} {:?}\n  hyper: {} {:?} {:?}",
            ra.status,
            ra.version,
            show_fields(&ra.headers),
            ha.status,
            ha.version,
            show_fields(&ha.headers)
        ));
    }
    let mut allowed = None;
    if ra.reason != ha.reason {
        allowed = Some(match (&ra.reason, &ha.reason) {
            // Allowed::EmptyReason (documented).
            (None, Some(e)) if e.is_empty() => Allowed::EmptyReason,
            (Some(r), Some(e)) if e.is_empty() && r.iter().any(|&b| b >= 0x80) => {
                // Allowed::ObsTextReason (documented).
                Allowed::ObsTextReason
            }
            (r, e) => {
                return Err(format!(
                    "reason phrases differ: router {:?}, hyper {:?}",
                    r.as_deref().map(show),
                    e.as_deref().map(show)
                ))
            }
        });
    }
    let differ = |rb: &Result<_, String>, hb: &Result<_, String>| -> String {
        let show_body = |b: &Result<(Vec<u8>, Option<Fields>), String>| match b {
            Ok((b, t)) => format!(
                "b\"{}\" trailers {:?}",
                show(b),
                t.as_ref().map(show_fields)
            ),
            Err(e) => format!("failed: {e}"),
        };
        format!(
            "bodies differ:\n router: {}\n  hyper: {}",
            show_body(rb),
            show_body(hb)
        )
    };
    let chunked = r.framing == Some(Framing::Chunked);
    match (&ra.body, &ha.body) {
        (Ok(rb), Ok(hb)) if rb == hb => Ok(allowed),
        (Err(_), Err(_)) => Ok(allowed),
        (Ok(_), Err(_)) if chunked => {
            // The router read more than hyper: allowed if that is only bare
            // LFs or a large trailer section, i.e. hyper reads the same
            // body with those taken out.
            let s = chunked_shape(&input[r.body_at..]);
            let exception = if s.bare_lf {
                // Allowed::BareLfInChunkedBody (documented).
                Allowed::BareLfInChunkedBody
            } else if s.trailer_bytes > HYPER_TRAILER_LIMIT {
                Allowed::TrailersOverHyperLimit
            } else {
                return Err(differ(&ra.body, &ha.body));
            };
            let canonical = s
                .canonical
                .as_deref()
                .ok_or_else(|| differ(&ra.body, &ha.body))?;
            let again = runtime().block_on(hyper_response(
                &[&input[..r.body_at], canonical].concat(),
                method,
            ));
            let mut want = ra.body.clone();
            if s.trailer_bytes > HYPER_TRAILER_LIMIT {
                // Taken out.
                want = want.map(|(b, _)| (b, None));
            }
            match again {
                Read::Answered(a) if a.body == want => Ok(Some(exception)),
                Read::Answered(a) => Err(format!(
                    "{exception:?} and more: with it taken out, {}",
                    differ(&want, &a.body)
                )),
                Read::Refused(e) => Err(format!(
                    "{exception:?} and more: with it taken out hyper refused the head ({e})"
                )),
            }
        }
        (Err(_), Ok(_)) if chunked => {
            // hyper read more than the router: allowed if that is only
            // long sizes, NULs in extensions or long lines, i.e. the router
            // reads the same body with those taken out.
            let s = chunked_shape(&input[r.body_at..]);
            let exception = if s.long_size {
                // Allowed::LongChunkSize (documented).
                Allowed::LongChunkSize
            } else if s.nul_in_extension {
                // Allowed::NulInChunkExtension (documented).
                Allowed::NulInChunkExtension
            } else if s.long_line {
                Allowed::ChunkLineOverLimit
            } else {
                return Err(differ(&ra.body, &ha.body));
            };
            let canonical = s
                .canonical
                .as_deref()
                .ok_or_else(|| differ(&ra.body, &ha.body))?;
            let again = router_response(
                &[&input[..r.body_at], canonical].concat(),
                method,
                usize::MAX,
            );
            match again.read {
                Read::Answered(a) if a.body == ha.body => Ok(Some(exception)),
                Read::Answered(a) => Err(format!(
                    "{exception:?} and more: with it taken out, {}",
                    differ(&a.body, &ha.body)
                )),
                Read::Refused(e) => Err(format!(
                    "{exception:?} and more: with it taken out the router refused the head ({e:?})"
                )),
            }
        }
        _ => Err(differ(&ra.body, &ha.body)),
    }
}

fn show_fields(f: &Fields) -> Vec<String> {
    f.iter().map(|(k, v)| format!("{k}: {}", show(v))).collect()
}

#[test]
fn responses_are_read_as_hyper_reads_them() {
    let tally = Tally::default();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&response_case(), |case| {
        let method = if case.head_request {
            Method::HEAD
        } else {
            Method::GET
        };
        let ours = router_response(&case.bytes, &method, case.split);
        let theirs = runtime().block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                hyper_response(&case.bytes, &method),
            )
            .await
        });
        let Ok(theirs) = theirs else {
            return Err(TestCaseError::fail("hyper's client did not finish"));
        };
        tally.outcome(match (&ours.read, &theirs) {
            (Read::Refused(_), Read::Refused(_)) => "both refused the head",
            (Read::Answered(a), Read::Answered(b)) => match (&a.body, &b.body) {
                (Ok(_), Ok(_)) => match ours.framing {
                    Some(Framing::Chunked) => "both read a chunked body",
                    Some(Framing::Length(_)) => "both read a sized body",
                    Some(Framing::Eof) => "both read a body to the end",
                    _ => "both read no body",
                },
                (Err(_), Err(_)) => "both failed on the body",
                _ => "one failed on the body",
            },
            _ => "one refused the head",
        });
        match compare_response(&case.bytes, &method, &ours, &theirs) {
            Ok(None) => Ok(()),
            Ok(Some(a)) => {
                tally.note(a);
                Ok(())
            }
            Err(why) => Err(TestCaseError::fail(format!(
                "{why}\n router: {:?}\n  hyper: {theirs:?}",
                ours.read
            ))),
        }
    });
    tally.print("responses");
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------

fn request_field() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => field_of(
            one_of(&[b"Host", b"host", b"HOST"]),
            prop_oneof![
                4 => lit(b"example.com"),
                1 => one_of(&[b"example.com:8080", b"", b"a b", b"[::1]:80", b"x", b"ex\x80"]),
            ]
            .boxed()
        ),
        2 => cl_field(),
        2 => lit(b"Content-Length: 0\r\n"),
        2 => te_field(),
        1 => connection_field(),
        1 => one_of(&[
            b"Upgrade: websocket\r\n",
            b"Expect: 100-continue\r\n",
            b"expect: 100-Continue\r\n",
        ]),
        8 => generic_field(),
    ]
    .boxed()
}

#[derive(Clone)]
struct RequestCase {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for RequestCase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", show(&self.bytes))
    }
}

fn request_case() -> impl Strategy<Value = RequestCase> {
    let prefix = prop_oneof![
        20 => lit(b""),
        1 => one_of(&[b"\r\n", b"\n", b"\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]),
    ];
    let method = prop_oneof![
        10 => lit(b"GET"),
        4 => one_of(&[b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"PATCH"]),
        1 => one_of(&[b"get", b"X-CUSTOM", b"G ET", b"", b"GE\x01T", b"GET\x80", b"PRI"]),
    ];
    let sp = || prop_oneof![20 => lit(b" "), 1 => one_of(&[b"  ", b"\t", b""])];
    let target = prop_oneof![
        6 => lit(b"/"),
        6 => "/[a-zA-Z0-9/?=&%._~-]{0,20}".prop_map(String::into_bytes),
        2 => one_of(&[
            b"/a/b?c=1",
            b"*",
            b"http://example.com/x",
            b"example.com:443",
            b"/%zz",
            b"/a b",
            b"/\x7f",
            b"/caf\xc3\xa9",
            b"",
            b"//x",
            b"/?q=a#frag",
            b"/a?b\"c",
            b"/{x}",
            b"/a|b",
            b"/a\\b",
            b"/a^b",
        ]),
    ];
    let version = prop_oneof![
        12 => lit(b"HTTP/1.1"),
        2 => lit(b"HTTP/1.0"),
        1 => one_of(&[b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.1 ", b"", b"HTTP/1"]),
    ];
    let after = prop_oneof![
        6 => lit(b""),
        2 => raw_body(),
        1 => lit(b"GET /second HTTP/1.1\r\nHost: example.com\r\n\r\n"),
    ];
    (
        prefix,
        method,
        sp(),
        target,
        sp(),
        version,
        eol(),
        vec(request_field(), 0..7),
        bulk(14_000..18_000),
        prop_oneof![10 => lit(b"\r\n"), 2 => lit(b"\n"), 1 => lit(b"")],
        after,
        mutations(),
    )
        .prop_map(|(p, m, s1, t, s2, v, e, fields, bulk, end, after, ms)| {
            let bytes = [p, m, s1, t, s2, v, e, fields.concat(), bulk, end, after].concat();
            RequestCase {
                bytes: mutate(bytes, &ms),
            }
        })
}

/// A request head as a server handed it on.
struct ReqHead {
    method: String,
    uri: String,
    version: Version,
    headers: Fields,
    /// Whether the server reads no body after it.
    bodyless: bool,
    raw_headers: HeaderMap,
}

impl std::fmt::Debug for ReqHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:?} {:?}{}",
            self.method,
            self.uri,
            self.version,
            show_fields(&self.headers),
            if self.bodyless { "" } else { " with a body" }
        )
    }
}

impl ReqHead {
    fn of<B: hyper::body::Body>(req: &Request<B>, bodyless: bool) -> ReqHead {
        ReqHead {
            method: req.method().as_str().to_owned(),
            uri: req.uri().to_string(),
            version: req.version(),
            headers: fields(req.headers()),
            bodyless,
            raw_headers: req.headers().clone(),
        }
    }
}

/// How a server treated the first request on a connection.
#[derive(Debug)]
enum Served {
    /// The head went to the handler.
    Taken(Box<ReqHead>),
    /// Answered with this status without taking it.
    Refused(u16),
    /// Closed without an answer.
    Silent,
    /// `serve` only: handed to hyper, with the bytes read so far.
    Handover(Bytes),
}

/// The status of the first answer in `out`.
fn status_of(out: &[u8]) -> Option<u16> {
    let code = out.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

struct NoSignals;

impl Signals for NoSignals {
    fn is_draining(&self) -> bool {
        false
    }

    async fn draining(&self) {
        std::future::pending::<()>().await
    }
}

/// Writes `input` into a pipe, ends the writing side, and reads the
/// answers to the end.
async fn client_side(mut client: tokio::io::DuplexStream, input: &[u8]) -> Vec<u8> {
    // The server may close before reading all (after a refusal).
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let mut out = Vec::new();
    let _ = client.read_to_end(&mut out).await;
    out
}

/// The router's own server over `input`.
async fn router_request(input: &[u8]) -> Served {
    let (client, server) = tokio::io::duplex(1 << 20);
    let limits = Limits {
        // As `server.rs` sets them.
        max_head_bytes: HEAD_LIMIT.max(8192),
        max_headers: MAX_FIELDS,
        header_read: Duration::from_secs(10),
        keepalive: Duration::from_secs(10),
    };
    let first = RefCell::new(None);
    let handler = |req: Request<RequestBody>| {
        let mut first = first.borrow_mut();
        if first.is_none() {
            let bodyless = req.body().is_end_stream();
            let (parts, _) = req.into_parts();
            *first = Some(ReqHead::of(
                &Request::from_parts(parts, Empty::<Bytes>::new()),
                bodyless,
            ));
        }
        std::future::ready(Response::new(ezone_router::upstream::body::empty()))
    };
    let serving = async {
        match h1_server::serve(server, &limits, handler, &NoSignals).await {
            Ended::Closed => None,
            // The connection (our end of it) is dropped here: closed.
            Ended::Handover { read, .. } => Some(read),
        }
    };
    let (handover, out) = tokio::join!(serving, client_side(client, input));
    if let Some(head) = first.into_inner() {
        return Served::Taken(Box::new(head));
    }
    if let Some(read) = handover {
        return Served::Handover(read);
    }
    match status_of(&out) {
        Some(s) => Served::Refused(s),
        None if out.is_empty() => Served::Silent,
        None => Served::Refused(0),
    }
}

/// hyper's HTTP/1 server (with the settings `server.rs` gives it) over
/// `input`.
async fn hyper_request(input: &[u8]) -> Served {
    let (client, server) = tokio::io::duplex(1 << 20);
    let first: Arc<Mutex<Option<ReqHead>>> = Arc::default();
    let seen = first.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let mut first = seen.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(ReqHead::of(&req, req.body().is_end_stream()));
        }
        async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
    });
    let serving = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None::<Duration>)
        .max_buf_size(HEAD_LIMIT.max(8192))
        .keep_alive(true)
        .serve_connection(TokioIo::new(server), service);
    let (_, out) = tokio::join!(serving, client_side(client, input));
    let first = first.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(head) = first {
        return Served::Taken(Box::new(head));
    }
    match status_of(&out) {
        Some(s) => Served::Refused(s),
        None if out.is_empty() => Served::Silent,
        None => Served::Refused(0),
    }
}

/// Whether `b` has the empty line that ends a head anywhere.
fn has_head_end(b: &[u8]) -> bool {
    b.windows(2).any(|w| w == b"\n\n") || b.windows(3).any(|w| w == b"\n\r\n")
}

/// A head `serve` takes although its body cannot be framed: the request
/// path (`headers::check_request`) must refuse it for its coding.
fn unframable_body_refused(h: &ReqHead) -> bool {
    let codings = h
        .raw_headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .count();
    if codings == 0 {
        return false;
    }
    // With a good `Host`, so that the coding is what is judged.
    let mut headers = h.raw_headers.clone();
    headers.remove(header::HOST);
    headers.insert(header::HOST, HeaderValue::from_static("example.com"));
    matches!(
        check_request(Version::HTTP_11, &Uri::from_static("/"), &headers, &[]),
        Err(Refusal::TransferCoding | Refusal::TransferCodingAndLength)
    )
}

/// Compares how the two servers treated the first request.
fn compare_request(
    input: &[u8],
    ours: &Served,
    theirs: &Served,
) -> Result<Option<Allowed>, String> {
    match (ours, theirs) {
        (Served::Handover(read), _) => {
            // hyper serves it from here: fine by construction, if it gets
            // exactly what was read.
            if input.starts_with(read) {
                Ok(None)
            } else {
                Err(format!(
                    "handed over b\"{}\", not what was read",
                    show(read)
                ))
            }
        }
        (Served::Taken(o), Served::Taken(t)) => {
            if (&o.method, &o.uri, o.version) != (&t.method, &t.uri, t.version) {
                return Err(format!(
                    "request lines differ: router {} {} {:?}, hyper {} {} {:?}",
                    o.method, o.uri, o.version, t.method, t.uri, t.version
                ));
            }
            if unframable_body_refused(o) {
                // hyper drops a length given with a coding.
                let no_length = |f: &Fields| -> Fields {
                    f.iter()
                        .filter(|(k, _)| k != "content-length")
                        .cloned()
                        .collect()
                };
                // As multimaps: hyper's removal reorders its map.
                let by_name = |f: &Fields| -> Fields {
                    let mut f = no_length(f);
                    f.sort_by(|a, b| a.0.cmp(&b.0));
                    f
                };
                return if by_name(&o.headers) == by_name(&t.headers) {
                    Ok(Some(Allowed::UnframableBodyTaken))
                } else {
                    Err(format!(
                        "header fields differ:\n router: {:?}\n  hyper: {:?}",
                        show_fields(&o.headers),
                        show_fields(&t.headers)
                    ))
                };
            }
            if !t.bodyless {
                return Err("the router took a request hyper reads a body after".to_owned());
            }
            if o.headers == t.headers {
                return Ok(None);
            }
            // hyper keeps the first of equal lengths only.
            let mut seen_length = false;
            let deduped: Fields = o
                .headers
                .iter()
                .filter(|(k, _)| {
                    let again = seen_length && k == "content-length";
                    seen_length |= k == "content-length";
                    !again
                })
                .cloned()
                .collect();
            if deduped == t.headers {
                // Allowed::RepeatedContentLength (documented).
                return Ok(Some(Allowed::RepeatedContentLength));
            }
            Err(format!(
                "header fields differ:\n router: {:?}\n  hyper: {:?}",
                show_fields(&o.headers),
                show_fields(&t.headers)
            ))
        }
        (Served::Taken(o), _) if unframable_body_refused(o) => {
            Ok(Some(Allowed::UnframableBodyTaken))
        }
        (Served::Refused(a), Served::Refused(b)) if a == b => Ok(None),
        (Served::Silent, Served::Silent) => Ok(None),
        (Served::Silent, Served::Refused(_))
            if input.len() < 14 && b"PRI * HTTP/2.0".starts_with(input) =>
        {
            Ok(Some(Allowed::CutHttp2Preface))
        }
        // hyper's first read: `INIT_BUFFER_SIZE`.
        (Served::Refused(400), Served::Silent) if input.len() > 8192 && !has_head_end(input) => {
            Ok(Some(Allowed::HyperWaitsForTheHeadEnd))
        }
        (Served::Refused(400), Served::Refused(431)) if input.len() >= HEAD_LIMIT => {
            Ok(Some(Allowed::HyperWaitsForTheHeadEnd))
        }
        (o, t) => Err(format!("the router: {o:?}; hyper: {t:?}")),
    }
}

#[test]
fn request_heads_are_taken_as_hyper_takes_them() {
    let tally = Tally::default();
    let mut runner = TestRunner::new(config());
    let result = runner.run(&request_case(), |case| {
        let (ours, theirs) = runtime()
            .block_on(async {
                let both = async {
                    (
                        router_request(&case.bytes).await,
                        hyper_request(&case.bytes).await,
                    )
                };
                tokio::time::timeout(Duration::from_secs(10), both).await
            })
            .map_err(|_| TestCaseError::fail("a server did not finish"))?;
        tally.outcome(match (&ours, &theirs) {
            (Served::Handover(_), _) => "handed over to hyper",
            (Served::Taken(_), Served::Taken(_)) => "taken by both",
            (Served::Refused(_), Served::Refused(_)) => "refused by both",
            (Served::Silent, Served::Silent) => "incomplete for both",
            _ => "treated differently",
        });
        match compare_request(&case.bytes, &ours, &theirs) {
            Ok(None) => Ok(()),
            Ok(Some(a)) => {
                tally.note(a);
                Ok(())
            }
            Err(why) => Err(TestCaseError::fail(why)),
        }
    });
    tally.print("requests");
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Each allowed difference, on its smallest example: still met (when one
/// stops being met, the router changed: drop the exception).
#[test]
fn each_allowed_difference_has_an_example() {
    let chunked = |body: &[u8]| {
        [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            body,
        ]
        .concat()
    };
    let responses: Vec<(Vec<u8>, Allowed)> = vec![
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec(),
            Allowed::Upgrade101,
        ),
        (
            format!(
                "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
                "a".repeat(h1::MAX_HEAD_BYTES)
            )
            .into_bytes(),
            Allowed::ResponseHeadOverLimit,
        ),
        (
            b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Allowed::LeadingEmptyLine,
        ),
        (
            b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Allowed::EmptyReason,
        ),
        (
            b"HTTP/1.1 200 caf\xc3\xa9\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Allowed::ObsTextReason,
        ),
        (chunked(b"5\nhello\n0\n\n"), Allowed::BareLfInChunkedBody),
        (
            chunked(b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
            Allowed::LongChunkSize,
        ),
        (
            chunked(b"5;\x00\r\nhello\r\n0\r\n\r\n"),
            Allowed::NulInChunkExtension,
        ),
        (
            chunked(
                format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(h1::MAX_CHUNK_LINE)).as_bytes(),
            ),
            Allowed::ChunkLineOverLimit,
        ),
        (
            chunked(
                format!(
                    "5\r\nhello\r\n0\r\nX-Big: {}\r\n\r\n",
                    "a".repeat(HYPER_TRAILER_LIMIT)
                )
                .as_bytes(),
            ),
            Allowed::TrailersOverHyperLimit,
        ),
    ];
    for (bytes, want) in responses {
        let ours = router_response(&bytes, &Method::GET, usize::MAX);
        let theirs = runtime().block_on(hyper_response(&bytes, &Method::GET));
        assert_eq!(
            compare_response(&bytes, &Method::GET, &ours, &theirs),
            Ok(Some(want)),
            "b\"{}\"\n router: {:?}\n  hyper: {theirs:?}",
            show(&bytes),
            ours.read
        );
    }
    let requests: Vec<(Vec<u8>, Allowed)> = vec![
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            Allowed::UnframableBodyTaken,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            Allowed::UnframableBodyTaken,
        ),
        (
            // Malformed past 8 KiB, ending past the limit.
            format!(
                "GET / HTTP/1.1\r\nX-Big: {}\r\n\x00{}\r\n\r\n",
                "a".repeat(9000),
                "b".repeat(HEAD_LIMIT)
            )
            .into_bytes(),
            Allowed::HyperWaitsForTheHeadEnd,
        ),
        (
            format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\x00", "a".repeat(9000)).into_bytes(),
            Allowed::HyperWaitsForTheHeadEnd,
        ),
        (b"PRI * HTTP/2".to_vec(), Allowed::CutHttp2Preface),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n".to_vec(),
            Allowed::RepeatedContentLength,
        ),
    ];
    for (bytes, want) in requests {
        let (ours, theirs) = runtime()
            .block_on(async { (router_request(&bytes).await, hyper_request(&bytes).await) });
        assert_eq!(
            compare_request(&bytes, &ours, &theirs),
            Ok(Some(want)),
            "b\"{}\"\n router: {ours:?}\n  hyper: {theirs:?}",
            show(&bytes)
        );
    }
}
