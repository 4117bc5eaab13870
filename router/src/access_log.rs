//! The optional access log (`[access_log]`): one JSON object per line for
//! every request the router finishes, those it answers itself included
//! (docs/router.md, "Access log").
//!
//! **The request path never waits for it.** A line is formatted on the
//! request's own task when the request ends and handed to a bounded channel
//! with `try_send` ([`AccessLog::send`]); if the channel is full (the disk or
//! whatever reads standard output is slower than the requests) the line is
//! dropped and counted in `ezone_router_access_log_dropped_total`. One
//! writer thread ([`Writer`]) empties the channel every [`DRAIN_EVERY`] into
//! a [`BufWriter`], flushed after each round that wrote something and at
//! shutdown.
//!
//! Why a thread that looks every [`DRAIN_EVERY`] rather than a task woken
//! for each line: a receiver that is never parked on the channel leaves no
//! waker for a sender to wake, so a send is a few atomic operations and
//! never a cross-thread wake-up (a syscall on the request's thread; see
//! `server` for what those cost). And writing to a file blocks: on a slow
//! disk it must not stall a worker's runtime nor the control plane's
//! (topology watch, health checks).
//!
//! **What it never holds:** header values (cookies, `Authorization`, the
//! peer secret) and the query string (it may carry keys or tokens): only
//! the path of the request target.
//!
//! The line's content is a pure function ([`format()`]) of an [`Entry`]; a
//! request's entry is gathered in a `Pending`, which sends it when it is
//! dropped: after the response body has been handed to the client's
//! connection (the `Logged` body carries it there), or, for a request
//! whose answer never came (the client went away, the router stopped), at
//! once with status [`CLIENT_CLOSED`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, Uri, Version};
use hyper::body::{Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;

use crate::config::AccessLogConfig;
use crate::policy::decide::ShardRef;
use crate::policy::extract::{extract, Key, KeySource};
use crate::upstream::body::{self, Body, BoxError};
use crate::upstream::client::Upstream;

/// How often the writer empties the channel (and so the longest a line
/// waits before it is written and flushed, when the writer keeps up).
pub const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// The writer's buffer: lines gathered into writes of up to this size.
const WRITE_BUFFER: usize = 64 * 1024;

/// The status logged for a request that was never answered because its
/// client went away first (or the router stopped): nginx's 499, which no
/// client ever receives.
pub const CLIENT_CLOSED: u16 = 499;

/// Starting the access log failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error(
        "cannot open the access log {} (access_log.path): {source}; let the router write there, \
         or set access_log.path to another file (\"-\" for standard output)",
        path.display()
    )]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the access log writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// One finished request, as its line tells it.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the request ended (its response body handed over).
    pub time: SystemTime,
    /// The client connection's peer address.
    pub client: Option<SocketAddr>,
    pub proto: Version,
    pub method: &'a str,
    /// The path of the request target, without its query.
    pub path: &'a str,
    /// The city key the request carries, if it has one.
    pub city: Option<&'a str>,
    pub shard: Option<u32>,
    /// The site it was routed to.
    pub site: Option<&'a str>,
    /// The address it was sent to (the last one tried).
    pub upstream: Option<&'a str>,
    pub status: u16,
    /// From the request head read to the response body handed over.
    pub duration: Duration,
    /// Response body bytes handed to the client's connection.
    pub bytes: u64,
}

/// The line's fields, in the order they are written.
#[derive(Serialize)]
struct Line<'a> {
    time: Rfc3339,
    client: Option<SocketAddr>,
    method: &'a str,
    path: &'a str,
    proto: &'static str,
    status: u16,
    city: Option<&'a str>,
    shard: Option<u32>,
    site: Option<&'a str>,
    upstream: Option<&'a str>,
    duration_ms: f64,
    bytes: u64,
}

/// The access log line for `e`: one JSON object and a newline. Every string
/// is escaped by serde_json, so no path or key can break a line in two or
/// forge a field. (Serializing these fields cannot fail; the error is
/// passed on rather than assumed away.)
pub fn format(e: &Entry<'_>) -> Result<String, serde_json::Error> {
    // Room for the whole line at once (the fixed part is under 256 bytes).
    let mut out =
        Vec::with_capacity(256 + e.path.len() + e.method.len() + e.city.map_or(0, str::len));
    serde_json::to_writer(
        &mut out,
        &Line {
            time: Rfc3339(e.time),
            client: e.client,
            method: e.method,
            path: e.path,
            proto: proto(e.proto),
            status: e.status,
            city: e.city,
            shard: e.shard,
            site: e.site,
            upstream: e.upstream,
            // Microseconds are as fine as a log line needs (and keep the
            // number short).
            duration_ms: e.duration.as_micros() as f64 / 1000.0,
            bytes: e.bytes,
        },
    )?;
    out.push(b'\n');
    // serde_json writes UTF-8 only.
    String::from_utf8(out).map_err(serde::ser::Error::custom)
}

fn proto(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// A time as RFC 3339 in UTC with milliseconds
/// (`2026-11-27T10:15:30.123Z`), by humantime (digits into a fixed buffer,
/// no allocation). A clock outside 1970..=9999 is not a clock to trust:
/// shown at the nearest end (humantime would refuse it).
struct Rfc3339(SystemTime);

/// The last instant humantime formats (9999-12-31T23:59:59.999Z).
const LAST_FORMATTABLE: Duration = Duration::from_millis(253_402_300_799_999);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let since = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let t = UNIX_EPOCH + since.min(LAST_FORMATTABLE);
        fmt::Display::fmt(&humantime::format_rfc3339_millis(t), f)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The request path's end of the access log: never waits.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Counter,
}

impl AccessLog {
    /// A log whose lines go to the returned receiver (at most `capacity`
    /// waiting), counting those it drops in `dropped`.
    fn channel(capacity: usize, dropped: Counter) -> (AccessLog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (AccessLog { tx, dropped }, rx)
    }

    /// Formats `e` and hands the line to the writer, or drops and counts
    /// it if the writer is that far behind (or gone).
    pub fn send(&self, e: &Entry<'_>) {
        let sent = match format(e) {
            Ok(line) => self.tx.try_send(line).is_ok(),
            Err(_) => false,
        };
        if !sent {
            self.dropped.inc();
        }
    }
}

/// Asks the writer to reopen its file (after a log rotation moved it).
#[derive(Debug, Clone)]
pub struct Reopen(Arc<AtomicBool>);

impl Reopen {
    /// The file is reopened before the writer's next round (within
    /// [`DRAIN_EVERY`]); lines written until then go to the old one.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// A request not yet carried out.
    pub fn is_pending(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The writer thread. Dropped without [`Writer::finish`], it still writes
/// what is waiting and stops, but no one waits for that.
pub struct Writer {
    /// Dropped to tell the thread to stop (nothing is ever sent).
    stop: Option<std_mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    reopen: Reopen,
}

/// Opens (or creates) the log file for appending: O_APPEND, so that several
/// writers or a `copytruncate` rotation never leave holes or overwrite.
/// Client addresses are personal data: not world-readable.
fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Writer {
    /// Opens the destination and starts the writer thread; lines dropped
    /// (channel full, or a failed write) are counted in `dropped`.
    pub fn start(
        cfg: &AccessLogConfig,
        dropped: Counter,
    ) -> Result<(AccessLog, Writer), AccessLogError> {
        let (out, file): (Box<dyn Write + Send>, _) = if cfg.is_stdout() {
            (Box::new(io::stdout()), None)
        } else {
            let f = open(&cfg.path).map_err(|source| AccessLogError::Open {
                path: cfg.path.clone(),
                source,
            })?;
            (Box::new(f), Some(cfg.path.clone()))
        };
        let (log, rx) = AccessLog::channel(cfg.buffer_lines, dropped.clone());
        let (stop, stopped) = std_mpsc::channel();
        let reopen = Reopen(Arc::new(AtomicBool::new(false)));
        let drain = Drain {
            rx,
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            file,
            reopen: reopen.clone(),
            dropped,
            round: cfg.buffer_lines.max(1),
            failing: false,
        };
        let thread = std::thread::Builder::new()
            .name("ezone-access-log".into())
            .spawn(move || drain.run(stopped))
            .map_err(AccessLogError::Thread)?;
        Ok((
            log,
            Writer {
                stop: Some(stop),
                thread: Some(thread),
                reopen,
            },
        ))
    }

    /// The handle that asks for the file to be reopened (SIGHUP).
    pub fn reopener(&self) -> Reopen {
        self.reopen.clone()
    }

    /// Writes every line still waiting, flushes, and stops the thread.
    /// Blocks until then: call it once the workers have stopped (later
    /// lines are dropped and counted), off the async runtime.
    pub fn finish(mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!(
                    "The access log writer thread panicked; its last lines may be lost."
                );
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Dropping the sender is the stop signal; the thread is not waited for.
        drop(self.stop.take());
    }
}

/// The writer thread's state.
struct Drain {
    rx: mpsc::Receiver<String>,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file's path (`None`: standard output, never reopened).
    file: Option<PathBuf>,
    reopen: Reopen,
    dropped: Counter,
    /// Lines taken in one round at most, so that a flood cannot keep the
    /// writer from flushing, reopening or stopping.
    round: usize,
    /// Writing fails now (warned once, until it works again).
    failing: bool,
}

impl Drain {
    fn run(mut self, stop: std_mpsc::Receiver<()>) {
        let mut behind = false;
        loop {
            // Nothing is ever sent: the sender dropped is the stop signal.
            let stopping = if behind {
                // A full round last time: more is waiting, no pause.
                matches!(stop.try_recv(), Err(std_mpsc::TryRecvError::Disconnected))
            } else {
                matches!(
                    stop.recv_timeout(DRAIN_EVERY),
                    Err(std_mpsc::RecvTimeoutError::Disconnected)
                )
            };
            if self.reopen.0.swap(false, Ordering::Relaxed) {
                self.reopen_file();
            }
            if stopping {
                // No more lines from now on (a late one is dropped and
                // counted); those already waiting are written.
                self.rx.close();
                while self.drain() > 0 {}
                self.flush();
                return;
            }
            let wrote = self.drain();
            behind = wrote >= self.round;
            if wrote > 0 {
                self.flush();
            }
        }
    }

    /// Writes up to a round of waiting lines into the buffer; how many it
    /// took.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while n < self.round {
            let Ok(line) = self.rx.try_recv() else {
                break;
            };
            n += 1;
            // A failed write leaves the line out (BufWriter keeps what it
            // already held for the next flush): counted as dropped.
            if let Err(e) = self.out.write_all(line.as_bytes()) {
                self.dropped.inc();
                self.failed(&e);
            }
        }
        n
    }

    fn flush(&mut self) {
        match self.out.flush() {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = ?self.file, "Writing the access log works again.");
                }
            }
            Err(e) => self.failed(&e),
        }
    }

    fn failed(&mut self, e: &io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(path = ?self.file, error = %e, "Cannot write the access log: lines are dropped (ezone_router_access_log_dropped_total) until it works again.");
        }
    }

    /// Reopens the file at its path (logrotate moved the old one away);
    /// on failure it keeps writing to the file it has open.
    fn reopen_file(&mut self) {
        let Some(path) = self.file.clone() else {
            return;
        };
        // What was written before the rotation belongs in the old file.
        self.flush();
        match open(&path) {
            Ok(f) => {
                *self.out.get_mut() = Box::new(f);
                tracing::info!(path = %path.display(), "Access log reopened.");
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot reopen the access log; still writing to the file open before.");
            }
        }
    }
}

/// A request on its way, as its line will tell it; the line is sent when
/// this is dropped (see the module docs).
pub(crate) struct Pending {
    log: Arc<AccessLog>,
    /// The standard clock, not tokio's: the line may be sent while a
    /// worker's runtime is being torn down (shutdown), outside any runtime.
    started: Instant,
    client: Option<SocketAddr>,
    proto: Version,
    method: Method,
    /// The request target, kept whole (a reference count, not a copy);
    /// only its path is ever logged.
    uri: Uri,
    city: Option<String>,
    shard: Option<u32>,
    site: Option<String>,
    upstream: Option<Arc<Upstream>>,
    status: u16,
    bytes: u64,
}

impl Pending {
    /// What the log needs of `req`, taken before the request moves on. The
    /// city is read as the router reads its key (`keys`): a request refused
    /// before it was routed still shows the city it named. Boxed: the
    /// request's future then grows by a pointer only when the log is off.
    pub(crate) fn new<B>(
        log: Arc<AccessLog>,
        started: Instant,
        req: &Request<B>,
        client: Option<SocketAddr>,
        keys: &[KeySource],
    ) -> Box<Pending> {
        let city = match extract(keys, req.uri(), req.headers()) {
            Some(Key::City(c)) => Some(c),
            // A user id is not logged: personal data, and the shard says
            // where the request went.
            Some(Key::User(_)) | None => None,
        };
        Box::new(Pending {
            log,
            started,
            client,
            proto: req.version(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            city,
            shard: None,
            site: None,
            upstream: None,
            status: CLIENT_CLOSED,
            bytes: 0,
        })
    }

    /// The request was answered with `resp` (routed to `site`, if anywhere,
    /// by `shard`, sent to `upstream`): the response whose body sends the
    /// line once the client's connection is done with it.
    pub(crate) fn answered(
        mut self: Box<Self>,
        resp: Response<Body>,
        site: Option<String>,
        shard: Option<ShardRef>,
        upstream: Option<Arc<Upstream>>,
    ) -> Response<Body> {
        self.status = resp.status().as_u16();
        self.site = site;
        self.shard = shard.map(|s| s.id);
        self.upstream = upstream;
        resp.map(|body| {
            body::boxed(Logged {
                body,
                pending: self,
            })
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.log.send(&Entry {
            time: SystemTime::now(),
            client: self.client,
            proto: self.proto,
            method: self.method.as_str(),
            path: self.uri.path(),
            city: self.city.as_deref(),
            shard: self.shard,
            site: self.site.as_deref(),
            upstream: self.upstream.as_ref().map(|u| u.addr()),
            status: self.status,
            duration: self.started.elapsed(),
            bytes: self.bytes,
        });
    }
}

/// A response body that counts the bytes handed to the client's connection
/// and sends the request's line when it is dropped (read to its end, cut
/// off, or never read: HEAD, 204, 304).
struct Logged {
    body: Body,
    pending: Box<Pending>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(data) = frame.data_ref() {
                this.pending.bytes += data.len() as u64;
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            // 2023-11-14T22:13:20.123Z
            time: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            client: Some("10.1.2.3:51234".parse().expect("addr")),
            proto: Version::HTTP_11,
            method: "GET",
            path: "/api/cities/010/orders",
            city: Some("010"),
            shard: Some(3),
            site: Some("beijing"),
            upstream: Some("10.0.0.7:9000"),
            status: 200,
            duration: Duration::from_nanos(1_234_567),
            bytes: 512,
        }
    }

    #[test]
    fn a_routed_request_makes_one_line_with_every_field() {
        let line = format(&entry()).expect("formats");
        assert_eq!(
            line,
            concat!(
                r#"{"time":"2023-11-14T22:13:20.123Z","client":"10.1.2.3:51234","method":"GET","#,
                r#""path":"/api/cities/010/orders","proto":"HTTP/1.1","status":200,"city":"010","#,
                r#""shard":3,"site":"beijing","upstream":"10.0.0.7:9000","duration_ms":1.234,"#,
                r#""bytes":512}"#,
                "\n"
            )
        );
    }

    #[test]
    fn what_is_unknown_is_null_not_missing() {
        let e = Entry {
            client: None,
            proto: Version::HTTP_2,
            city: None,
            shard: None,
            site: None,
            upstream: None,
            status: 400,
            duration: Duration::ZERO,
            bytes: 0,
            ..entry()
        };
        let line = format(&e).expect("formats");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        for field in ["client", "city", "shard", "site", "upstream"] {
            assert_eq!(v[field], serde_json::Value::Null, "{field} in {line}");
        }
        assert_eq!(v["proto"], "HTTP/2");
        assert_eq!(v["status"], 400);
        assert_eq!(v["duration_ms"], 0.0);
        assert!(v["duration_ms"].is_f64(), "a float even when whole: {line}");
        assert_eq!(v.as_object().map(|o| o.len()), Some(12), "{line}");
    }

    #[test]
    fn odd_paths_and_keys_are_escaped_and_stay_on_one_line() {
        let odd = [
            "/a\"b",
            "/back\\slash",
            "/new\nline\r\n{\"status\":200}",
            "/tab\there\u{0}\u{1b}[31m",
            "/caf\u{e9}/\u{5317}\u{4eac}",
            "/\u{2028}\u{2029}",
        ];
        for path in odd {
            let e = Entry {
                path,
                city: Some(path),
                method: "M\"X",
                ..entry()
            };
            let line = format(&e).expect("formats");
            assert_eq!(
                line.find('\n'),
                Some(line.len() - 1),
                "one line for {path:?}: {line}"
            );
            assert!(!line[..line.len() - 1].contains('\r'), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            assert_eq!(v["path"], path);
            assert_eq!(v["city"], path);
            assert_eq!(v["method"], "M\"X");
            assert_eq!(v["status"], 200, "no field forged by the path: {line}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        let at = |ms: u64| Rfc3339(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(4_107_542_400_000), "2100-03-01T00:00:00.000Z");
        assert_eq!(at(1_798_761_599_001), "2026-12-31T23:59:59.001Z");
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Rfc3339(before).to_string(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_full_channel_drops_the_line_and_counts_it() {
        let dropped = Counter::default();
        let (log, mut rx) = AccessLog::channel(2, dropped.clone());
        for _ in 0..3 {
            log.send(&entry());
        }
        assert_eq!(dropped.get(), 1);
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        drop(rx);
        log.send(&entry());
        assert_eq!(dropped.get(), 2, "a writer gone counts too");
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_writer_flushes_without_shutdown_writes_the_rest_at_finish_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("access.log");
        let cfg = AccessLogConfig {
            path: path.clone(),
            buffer_lines: 64,
        };
        let dropped = Counter::default();
        let (log, writer) = Writer::start(&cfg, dropped.clone()).expect("starts");
        log.send(&Entry {
            path: "/first",
            ..entry()
        });
        // Flushed within a round, without waiting for shutdown.
        wait_until("the first line", || lines(&path).len() == 1);

        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rotate");
        let reopen = writer.reopener();
        reopen.request();
        wait_until("the reopen", || !reopen.is_pending());
        log.send(&Entry {
            path: "/second",
            ..entry()
        });
        log.send(&Entry {
            path: "/third",
            ..entry()
        });
        writer.finish();

        let old = lines(&rotated);
        let new = lines(&path);
        assert_eq!(old.len(), 1, "{old:?}");
        assert!(old[0].contains("\"/first\""), "{old:?}");
        assert_eq!(new.len(), 2, "{new:?}");
        assert!(new[0].contains("\"/second\""), "{new:?}");
        assert!(new[1].contains("\"/third\""), "{new:?}");
        assert_eq!(dropped.get(), 0);
        log.send(&entry());
        assert_eq!(
            dropped.get(),
            1,
            "after finish, lines are dropped and counted"
        );
        assert_eq!(lines(&path).len(), 2);
    }

    #[test]
    fn an_unopenable_file_is_an_error_naming_the_setting() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = AccessLogConfig {
            path: dir.path().join("missing").join("access.log"),
            buffer_lines: 8,
        };
        let e = Writer::start(&cfg, Counter::default())
            .err()
            .expect("cannot open");
        let msg = e.to_string();
        assert!(msg.contains("access_log.path"), "{msg}");
        assert!(msg.contains("missing"), "{msg}");
    }
}
