//! Client connections: what each one is doing (for its timeouts), how many
//! are open (the cap, `limits.max_connections`), which to close when the
//! cap is reached, and the send timeout on everything written to a client.
//!
//! - [`ConnState`]: one per connection. Whether a request is in flight on
//!   it, since when it has been idle, whether it was asked to close. Both
//!   HTTP/1 servers (the router's own, then hyper's) and HTTP/2 keep it up
//!   to date; its updates are a few relaxed atomic operations per request,
//!   on a cache line only the connection's own thread writes.
//! - [`Connections`]: the router's count of open connections and each
//!   worker's list of them. At the cap the accept loops stop accepting and
//!   ask the connection idle the longest to close ("shedding": it closes
//!   at its next wait for a request, or at once if it is waiting now); a
//!   connection with a request in flight is never shed, nor one idle for
//!   less than 200 ms (just accepted, its request may be on its way). With none idle,
//!   nothing more is accepted until one closes (the kernel's listen backlog
//!   holds new ones meanwhile).
//! - [`ClientIo`]: the client's socket, under TLS if any. A write (or flush)
//!   that makes no progress for `timeouts.send_ms` fails, which ends the
//!   connection whichever server is writing: a client that does not read
//!   its answer is dropped, and with it the upstream connection the answer
//!   came on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::stall::Stall;

/// How often the accept loops look again for a connection to shed while
/// every connection is busy (one may have gone idle meanwhile).
const RESCAN: Duration = Duration::from_millis(100);
/// At most one warning per this long for shedding (and for accept errors).
const WARN_EVERY_MS: u64 = 1_000;
/// A connection idle for less than this is not shed: one just accepted
/// (or just answered) has not had the time to send its request.
const MIN_IDLE_TO_SHED_MS: u64 = 200;

/// One client connection's state (see the module docs).
#[derive(Debug)]
pub struct ConnState {
    /// Requests in flight (HTTP/2: streams).
    busy: AtomicU32,
    /// When `busy` last dropped to zero (or the connection was accepted),
    /// in milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    /// On a connection hyper serves: when the first bytes of a request head
    /// arrived while it was idle (0: none yet). The head is then held to
    /// the header-read bound rather than the keep-alive one.
    head_since_ms: AtomicU64,
    /// At least one request has been answered: waiting for the next is
    /// keep-alive.
    served: AtomicBool,
    /// It speaks HTTP/2.
    h2: AtomicBool,
    /// hyper serves it (its reads are noted for the header-read bound).
    hyper: AtomicBool,
    /// Asked to close (shed).
    shed: AtomicBool,
    wake: Notify,
    /// The bound on an idle connection changed (a head began, it turned
    /// out to be HTTP/2): the timer waiting on the old one looks again.
    rebound: Notify,
    epoch: Instant,
}

/// The bounds on an idle connection.
#[derive(Debug, Clone, Copy)]
pub struct IdleBounds {
    /// A request head: from the connection's start, or from its first byte.
    pub header_read: Duration,
    /// Between an answer and the next request (HTTP/2: with no stream open).
    pub keepalive: Duration,
}

/// Why an idle connection's time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request head (complete) in time.
    Head,
    /// Idle past the keep-alive bound.
    KeepAlive,
    /// An HTTP/2 connection with no stream open past the keep-alive bound.
    Http2,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    /// A connection accepted now; times are counted from `epoch` (the
    /// same for every connection, so that they compare).
    pub fn new(epoch: Instant) -> ConnState {
        let s = ConnState {
            busy: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            hyper: AtomicBool::new(false),
            shed: AtomicBool::new(false),
            wake: Notify::new(),
            rebound: Notify::new(),
            epoch,
        };
        s.idle_since_ms.store(s.now_ms(), Ordering::Relaxed);
        s
    }

    fn now_ms(&self) -> u64 {
        ms(self.epoch.elapsed())
    }

    fn at_ms(&self, at: Instant) -> u64 {
        ms(at.saturating_duration_since(self.epoch))
    }

    /// It speaks HTTP/2 (known from ALPN, or from its first request).
    pub fn set_h2(&self) {
        if !self.h2.swap(true, Ordering::Relaxed) {
            self.rebound.notify_one();
        }
    }

    /// hyper serves it from now on.
    pub fn set_hyper(&self) {
        self.hyper.store(true, Ordering::Relaxed);
    }

    /// A request has arrived.
    #[inline]
    pub fn request_started(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A request's answer has been sent (or dropped), at `at`.
    #[inline]
    pub fn request_done(&self, at: Instant) {
        if self.busy.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ms.store(self.at_ms(at), Ordering::Relaxed);
            self.head_since_ms.store(0, Ordering::Relaxed);
            if !self.served.load(Ordering::Relaxed) {
                self.served.store(true, Ordering::Relaxed);
            }
        }
    }

    /// A request head has arrived (hyper's servers); the connection is busy
    /// until the guard (carried by the response body) is dropped.
    pub fn enter(self: &Arc<Self>, version: http::Version) -> Busy {
        if version == http::Version::HTTP_2 {
            self.set_h2();
        }
        self.request_started();
        Busy(self.clone())
    }

    /// Bytes arrived on the connection (noted for hyper's HTTP/1 only).
    #[inline]
    fn bytes_read(&self) {
        if self.hyper.load(Ordering::Relaxed)
            && self.busy.load(Ordering::Relaxed) == 0
            && self.head_since_ms.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            self.head_since_ms
                .store(self.now_ms().max(1), Ordering::Relaxed);
            self.rebound.notify_one();
        }
    }

    /// No request in flight: a candidate for shedding.
    pub fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Relaxed) == 0
    }

    /// Asks the connection to close: at once if it is waiting for a
    /// request, else after the one in flight. False if asked already.
    /// (Only [`Connections`] asks: it counts the connections it asked.)
    fn shed(&self) -> bool {
        if self.shed.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.wake.notify_one();
        true
    }

    pub fn is_shed(&self) -> bool {
        self.shed.load(Ordering::Relaxed)
    }

    /// Resolves once the connection has been asked to close.
    pub async fn shed_requested(&self) {
        loop {
            let woken = self.wake.notified();
            if self.is_shed() {
                return;
            }
            woken.await;
        }
    }

    /// For hyper's connections: resolves when the connection has been idle
    /// too long (see [`Expired`]). One timer, re-armed about once per bound
    /// while requests are in flight, and when the bound changes.
    pub async fn expired(&self, b: IdleBounds) -> Expired {
        let period = b.header_read.min(b.keepalive);
        loop {
            let rebound = self.rebound.notified();
            let wait = if self.busy.load(Ordering::Relaxed) > 0 {
                period
            } else {
                let (since, limit, why) = if self.h2.load(Ordering::Relaxed) {
                    (
                        self.idle_since_ms.load(Ordering::Relaxed),
                        b.keepalive,
                        Expired::Http2,
                    )
                } else {
                    match self.head_since_ms.load(Ordering::Relaxed) {
                        0 if self.served.load(Ordering::Relaxed) => (
                            self.idle_since_ms.load(Ordering::Relaxed),
                            b.keepalive,
                            Expired::KeepAlive,
                        ),
                        0 => (
                            self.idle_since_ms.load(Ordering::Relaxed),
                            b.header_read,
                            Expired::Head,
                        ),
                        head => (head, b.header_read, Expired::Head),
                    }
                };
                let waited = self.now_ms().saturating_sub(since);
                let limit = ms(limit);
                if waited >= limit {
                    return why;
                }
                Duration::from_millis(limit - waited)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = rebound => {}
            }
        }
    }

    /// Milliseconds since `epoch` it has been idle from (for choosing
    /// whom to shed).
    fn idle_since(&self) -> u64 {
        self.idle_since_ms.load(Ordering::Relaxed)
    }
}

/// A request in flight on a connection (see [`ConnState::enter`]).
pub struct Busy(Arc<ConnState>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.request_done(Instant::now());
    }
}

/// One worker's connections, in slots that are reused.
#[derive(Default)]
struct Slab {
    slots: Vec<Option<Arc<ConnState>>>,
    free: Vec<usize>,
}

/// The router's client connections (see the module docs).
pub struct Connections {
    /// The cap.
    max: usize,
    /// Open now (also exported as `ezone_router_connections`).
    open: Gauge,
    /// Asked to close and not closed yet.
    shedding: AtomicUsize,
    /// A connection closed while the router was at its cap.
    freed: Notify,
    /// The last connection closed (for draining).
    none: Notify,
    workers: Box<[Mutex<Slab>]>,
    epoch: Instant,
    warned_shed_ms: AtomicU64,
    warned_accept_ms: AtomicU64,
}

/// A connection counted as open until dropped.
pub struct Counted(Arc<Connections>);

impl Drop for Counted {
    fn drop(&mut self) {
        let c = &self.0;
        let before = usize::try_from(c.open.dec()).unwrap_or(0);
        if before <= 1 {
            c.none.notify_waiters();
        }
        if before >= c.max {
            c.freed.notify_waiters();
        }
    }
}

/// A connection listed with its worker until dropped.
pub struct Registered {
    conns: Arc<Connections>,
    worker: usize,
    slot: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut slab = self.conns.slab(self.worker);
        let state = slab.slots.get_mut(self.slot).and_then(Option::take);
        slab.free.push(self.slot);
        // Under the lock: a shed is counted under it too (see
        // `shed_oldest_idle`).
        if state.is_some_and(|s| s.is_shed()) {
            self.conns.shedding.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Connections {
    /// Connections for `workers` workers, at most `max` open (`open` is
    /// the gauge that counts them).
    pub fn new(workers: usize, max: usize, open: Gauge) -> Connections {
        Connections {
            max: max.max(1),
            open,
            shedding: AtomicUsize::new(0),
            freed: Notify::new(),
            none: Notify::new(),
            workers: (0..workers.max(1))
                .map(|_| Mutex::new(Slab::default()))
                .collect(),
            epoch: Instant::now(),
            warned_shed_ms: AtomicU64::new(0),
            warned_accept_ms: AtomicU64::new(0),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Open now.
    pub fn open(&self) -> usize {
        usize::try_from(self.open.get()).unwrap_or(0)
    }

    /// The clock every connection's times count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    fn slab(&self, worker: usize) -> MutexGuard<'_, Slab> {
        self.workers[worker % self.workers.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a connection just accepted.
    pub fn count(self: &Arc<Self>) -> Counted {
        self.open.inc();
        Counted(self.clone())
    }

    /// Lists a connection with the worker serving it.
    pub fn register(self: &Arc<Self>, worker: usize, state: Arc<ConnState>) -> Registered {
        let mut slab = self.slab(worker);
        let slot = match slab.free.pop() {
            Some(i) => {
                slab.slots[i] = Some(state);
                i
            }
            None => {
                slab.slots.push(Some(state));
                slab.slots.len() - 1
            }
        };
        Registered {
            conns: self.clone(),
            worker,
            slot,
        }
    }

    /// Room for another connection (those asked to close not counted).
    pub fn has_room(&self) -> bool {
        self.open()
            .saturating_sub(self.shedding.load(Ordering::Relaxed))
            < self.max
    }

    /// Asks the connection idle the longest (no request in flight) to
    /// close. False if every connection is busy (or asked already).
    pub fn shed_oldest_idle(&self) -> bool {
        // (idle since, worker, slot)
        let mut oldest: Option<(u64, usize, usize)> = None;
        let recent = ms(self.epoch.elapsed()).saturating_sub(MIN_IDLE_TO_SHED_MS);
        for w in 0..self.workers.len() {
            let slab = self.slab(w);
            for (i, s) in slab.slots.iter().enumerate() {
                let Some(s) = s else { continue };
                if !s.is_idle() || s.is_shed() {
                    continue;
                }
                let since = s.idle_since();
                if since > recent {
                    continue;
                }
                if oldest.is_none_or(|(o, _, _)| since < o) {
                    oldest = Some((since, w, i));
                }
            }
        }
        let Some((_, w, i)) = oldest else {
            return false;
        };
        // Told and counted under its worker's lock, so that its close
        // (`Registered::drop`, on that worker's thread) counts it out once.
        let slab = self.slab(w);
        match slab.slots.get(i) {
            Some(Some(s)) if s.shed() => {
                self.shedding.fetch_add(1, Ordering::Relaxed);
                true
            }
            // Closed (or its slot reused) meanwhile: look again next time.
            _ => false,
        }
    }

    /// Waits until there is room for another connection: sheds the
    /// connection idle the longest if that makes room, else waits for one
    /// to close (looking again every so often: one may go idle). Returns
    /// how many it shed.
    pub async fn make_room(&self) -> u64 {
        let mut shed = 0;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.has_room() {
                return shed;
            }
            if self.shed_oldest_idle() {
                shed += 1;
                continue;
            }
            let _ = tokio::time::timeout(RESCAN, freed).await;
        }
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.none.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// True at most once per second (for rate-limited warnings).
    fn warn_now(&self, last: &AtomicU64) -> bool {
        let now = ms(self.epoch.elapsed()) + WARN_EVERY_MS;
        let before = last.load(Ordering::Relaxed);
        now >= before + WARN_EVERY_MS
            && last
                .compare_exchange(before, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Whether to log shedding now (at most once a second).
    pub fn warn_shedding(&self) -> bool {
        self.warn_now(&self.warned_shed_ms)
    }

    /// Whether to log an accept error now (at most once a second).
    pub fn warn_accept(&self) -> bool {
        self.warn_now(&self.warned_accept_ms)
    }
}

/// A client's byte stream with the send timeout (see the module docs);
/// it also tells the connection's state that bytes arrived.
pub struct ClientIo<IO> {
    io: IO,
    state: Arc<ConnState>,
    send: Duration,
    stall: Stall,
}

impl<IO> ClientIo<IO> {
    pub fn new(io: IO, state: Arc<ConnState>, send: Duration) -> ClientIo<IO> {
        ClientIo {
            io,
            state,
            send,
            stall: Stall::new(),
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// A write made no progress: the timeout error once it has waited
    /// `send`.
    fn blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.stall.poll_expired(cx, self.send) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took nothing of its answer for {:?} (timeouts.send_ms)",
                    self.send
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn wrote<T>(&mut self, r: io::Result<T>) -> Poll<io::Result<T>> {
        self.stall.progress();
        Poll::Ready(r)
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ClientIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ClientIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        b: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write(cx, b) {
            Poll::Ready(r) => self.wrote(r),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.io).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => self.wrote(r),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_flush(cx) {
            Poll::Ready(r) => self.wrote(r),
            Poll::Pending => self.blocked(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.io).poll_shutdown(cx) {
            Poll::Ready(r) => self.wrote(r),
            Poll::Pending => self.blocked(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn bounds() -> IdleBounds {
        IdleBounds {
            header_read: Duration::from_millis(300),
            keepalive: Duration::from_millis(1000),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_a_busy_one_does_not() {
        let state = Arc::new(ConnState::new(Instant::now()));
        // Busy: no expiry however long it takes.
        let busy = state.enter(http::Version::HTTP_11);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), state.expired(bounds()))
                .await
                .is_err()
        );
        drop(busy);
        // Idle after an answer: the keep-alive bound.
        let started = Instant::now();
        assert_eq!(state.expired(bounds()).await, Expired::KeepAlive);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        // A head begun (hyper's): the header-read bound from its first byte.
        state.set_hyper();
        state.request_done_for_test();
        tokio::time::sleep(Duration::from_millis(500)).await;
        state.bytes_read();
        let started = Instant::now();
        assert_eq!(state.expired(bounds()).await, Expired::Head);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // Never served: the header-read bound from the start.
        let fresh = ConnState::new(Instant::now());
        let started = Instant::now();
        assert_eq!(fresh.expired(bounds()).await, Expired::Head);
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // HTTP/2 with no stream open: the keep-alive bound.
        let h2 = Arc::new(ConnState::new(Instant::now()));
        drop(h2.enter(http::Version::HTTP_2));
        let started = Instant::now();
        assert_eq!(h2.expired(bounds()).await, Expired::Http2);
        assert_eq!(started.elapsed(), Duration::from_millis(1000));
        // A bound that turns shorter while the timer waits on a longer one
        // (an HTTP/2 connection known as such only at its first request).
        let long_head = IdleBounds {
            header_read: Duration::from_secs(10),
            keepalive: Duration::from_secs(1),
        };
        let h2 = Arc::new(ConnState::new(Instant::now()));
        let started = Instant::now();
        let expiry = tokio::spawn({
            let h2 = h2.clone();
            async move { h2.expired(long_head).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(h2.enter(http::Version::HTTP_2));
        assert_eq!(expiry.await.expect("joined"), Expired::Http2);
        assert_eq!(started.elapsed(), Duration::from_millis(1100));
    }

    impl ConnState {
        /// A request started and answered at once.
        fn request_done_for_test(&self) {
            self.request_started();
            self.request_done(Instant::now());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_sheds_the_connection_idle_longest_and_never_a_busy_one() {
        let conns = Arc::new(Connections::new(2, 3, Gauge::default()));
        let mut states = Vec::new();
        let mut held = Vec::new();
        let open = |i: usize, states: &mut Vec<Arc<ConnState>>| {
            let s = Arc::new(ConnState::new(conns.epoch()));
            states.push(s.clone());
            (conns.count(), conns.register(i % 2, s))
        };
        for i in 0..3 {
            held.push(Some(open(i, &mut states)));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(!conns.has_room());
        // The first is busy; the second has been idle the longest.
        states[0].request_started();
        assert_eq!(conns.make_room().await, 1);
        assert!(states[1].is_shed() && !states[0].is_shed() && !states[2].is_shed());
        assert!(conns.has_room(), "the shed one no longer counts");
        // It closes: still room, and nothing is counted twice.
        held[1] = None;
        assert_eq!(conns.open(), 2);
        assert_eq!(conns.shedding.load(Ordering::Relaxed), 0);
        assert!(conns.has_room());
        // Just accepted: not shed (its request may be on its way).
        states[2].request_started();
        held.push(Some(open(3, &mut states)));
        assert!(!conns.has_room());
        assert!(!conns.shed_oldest_idle());
        tokio::time::sleep(Duration::from_millis(300)).await;
        // All busy: no room is made until one closes.
        states[3].request_started();
        assert!(!conns.shed_oldest_idle());
        let waiting = tokio::spawn({
            let conns = conns.clone();
            async move { conns.make_room().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        held[3] = None;
        assert_eq!(waiting.await.expect("room"), 0);
        // One that goes idle while the cap is reached is shed.
        held.push(Some(open(4, &mut states)));
        states[4].request_started();
        let waiting = tokio::spawn({
            let conns = conns.clone();
            async move { conns.make_room().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        states[0].request_done(Instant::now());
        assert_eq!(waiting.await.expect("room"), 1);
        assert!(states[0].is_shed() && !states[4].is_shed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_makes_no_progress_times_out() {
        let (mut client, server) = tokio::io::duplex(64);
        let state = Arc::new(ConnState::new(Instant::now()));
        let mut io = ClientIo::new(server, state, Duration::from_secs(60));
        // Taken as it is written: no timeout however long it takes.
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 1000];
            for _ in 0..10 {
                client.read_exact(&mut got[..100]).await.expect("read");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            client
        });
        for _ in 0..10 {
            io.write_all(&[1u8; 100]).await.expect("taken in time");
        }
        let _client = reader.await.expect("reader");
        // Not taken: fails after the send timeout.
        let started = Instant::now();
        let e = io.write_all(&[1u8; 1000]).await.expect_err("never taken");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(60));
    }
}
