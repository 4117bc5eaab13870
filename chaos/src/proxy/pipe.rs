//! One direction of one proxied connection: the byte pump that applies that
//! direction's toxics.
//!
//! A pump runs in one of two modes, chosen again whenever the toxics change
//! (they come through a `watch` channel, so a change reaches open connections
//! at once):
//!
//! - **clean** (no latency, jitter, cap or partition): a plain copy loop with
//!   one 32 KiB buffer, the hot path;
//! - **shaped**: chunks are read as they come, stamped with their read time,
//!   kept in a queue bounded to [`MAX_QUEUED_BYTES`] and written when the
//!   [`DelaySchedule`] and the [`TokenBucket`] allow. Reading goes on while
//!   earlier chunks wait, so latency delays bytes without throttling
//!   throughput (up to the queue bound: then TCP backpressure takes over).
//!
//! A partition (`blackhole`) stops both reading and writing in this
//! direction: held bytes stay in the queue and in the kernel buffers, the
//! sender's TCP window fills and it blocks, as behind a real partition where
//! TCP keeps retransmitting. On heal they flow again, in order, on the same
//! connection. The end of the stream (EOF) is queued like a chunk, so it is
//! delayed and partitioned like data; then `slow_close` waits before the
//! half-close (`shutdown(Write)`) is passed on.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tracing::{debug, trace};

use super::bucket::TokenBucket;
use super::config::{Direction, Toxics};
use super::delay::{sample_jitter, DelaySchedule};

/// The read buffer of a pump.
const BUFFER_BYTES: usize = 32 * 1024;

/// The most bytes a shaped pump reads ahead of what it has written.
pub(crate) const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// Whether a pump can run the plain copy loop under these toxics.
/// `slow_close` does not count: it only acts at the end of the stream.
fn is_clean(t: &Toxics) -> bool {
    t.latency.is_zero() && t.jitter.is_zero() && t.bandwidth_bytes_per_sec.is_none() && !t.blackhole
}

/// Waits for the next change of the toxics. The sender lives as long as the
/// link, which outlives its connections; should it go anyway, this waits
/// forever rather than spin.
async fn toxics_changed(rx: &mut watch::Receiver<Toxics>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why a mode loop returned.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    /// The toxics call for the other mode.
    SwitchMode,
    /// The sender's EOF was delivered (after its delay).
    Eof,
}

/// A chunk read and not yet fully written. An empty chunk is the EOF.
#[derive(Debug)]
struct Chunk {
    data: Bytes,
    read_at: Instant,
    jitter_sample: f64,
}

/// What one delivery step did.
enum Delivered {
    Bytes(usize),
    Eof,
    /// Woke early (the bucket had fewer tokens than expected); try again.
    NotYet,
}

/// One direction's pump; see the module doc.
pub(crate) struct Pipe<'a, R, W> {
    link: &'a str,
    dir: Direction,
    reader: R,
    writer: W,
    toxics: watch::Receiver<Toxics>,
    /// The link's byte counter for this direction.
    bytes: &'a AtomicU64,
}

impl<'a, R, W> Pipe<'a, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(crate) fn new(
        link: &'a str,
        dir: Direction,
        reader: R,
        writer: W,
        toxics: watch::Receiver<Toxics>,
        bytes: &'a AtomicU64,
    ) -> Self {
        Self {
            link,
            dir,
            reader,
            writer,
            toxics,
            bytes,
        }
    }

    /// Pumps until the sender's EOF has been passed on as a half-close.
    /// An I/O error on either side ends the pump with that error.
    pub(crate) async fn run(mut self) -> io::Result<()> {
        let mut buf = vec![0u8; BUFFER_BYTES];
        loop {
            let clean = is_clean(&self.toxics.borrow_and_update());
            trace!(link = %self.link, dir = ?self.dir, clean, "Pump mode chosen.");
            let flow = if clean {
                self.copy_clean(&mut buf).await?
            } else {
                self.copy_shaped(&mut buf).await?
            };
            if flow == Flow::Eof {
                break;
            }
        }
        debug!(link = %self.link, dir = ?self.dir, "End of stream; passing the close on.");
        self.close().await
    }

    /// The hot path: read, write, repeat, until EOF or the toxics change.
    async fn copy_clean(&mut self, buf: &mut [u8]) -> io::Result<Flow> {
        loop {
            if !is_clean(&self.toxics.borrow_and_update()) {
                return Ok(Flow::SwitchMode);
            }
            let n = tokio::select! {
                biased;
                () = toxics_changed(&mut self.toxics) => return Ok(Flow::SwitchMode),
                read = self.reader.read(buf) => read?,
            };
            if n == 0 {
                return Ok(Flow::Eof);
            }
            self.write_gated(&buf[..n]).await?;
        }
    }

    /// Writes all of `data`, pausing while this direction is partitioned.
    async fn write_gated(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.toxics.borrow_and_update().blackhole {
                toxics_changed(&mut self.toxics).await;
                continue;
            }
            tokio::select! {
                biased;
                () = toxics_changed(&mut self.toxics) => {}
                written = self.writer.write(data) => {
                    let n = nonzero_write(written?)?;
                    self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                    data = &data[n..];
                }
            }
        }
        Ok(())
    }

    /// Latency, jitter, bandwidth and partition, until the queue is empty and
    /// the toxics are clean again, or the EOF was delivered.
    async fn copy_shaped(&mut self, buf: &mut [u8]) -> io::Result<Flow> {
        let mut queue: VecDeque<Chunk> = VecDeque::new();
        let mut queued_bytes = 0usize;
        let mut eof_read = false;
        let mut schedule = DelaySchedule::new();
        let mut bucket = TokenBucket::new(Instant::now());
        loop {
            let t = self.toxics.borrow_and_update().clone();
            if queue.is_empty() && !eof_read && is_clean(&t) {
                return Ok(Flow::SwitchMode);
            }
            let now = Instant::now();
            let rate = t.bandwidth_bytes_per_sec;
            let can_read = !eof_read && !t.blackhole && queued_bytes < MAX_QUEUED_BYTES;
            // The head of the queue: when it is due, and when it may be written
            // (`None`: not now, because of a partition or a zero cap).
            let plan = if t.blackhole { None } else { queue.front() }.and_then(|chunk| {
                let due = schedule.due(chunk.read_at, chunk.jitter_sample, t.latency, t.jitter);
                let ready = match rate {
                    Some(rate) if !chunk.data.is_empty() => {
                        bucket.ready_at(now, rate, chunk.data.len() as u64)?
                    }
                    _ => now,
                };
                Some((due, ready.max(due)))
            });
            let (can_write, due, ready) = match plan {
                Some((due, ready)) => (true, due, ready),
                None => (false, now, now),
            };

            tokio::select! {
                biased;
                () = toxics_changed(&mut self.toxics) => {}
                // Writing what is due goes before reading more.
                delivered = deliver(&mut self.writer, queue.front().map(|c| &c.data), ready, &bucket, rate), if can_write => {
                    match delivered? {
                        Delivered::Eof => return Ok(Flow::Eof),
                        Delivered::NotYet => {}
                        Delivered::Bytes(n) => {
                            self.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            if let Some(rate) = rate {
                                bucket.consume(Instant::now(), rate, n as u64);
                            }
                            queued_bytes -= n;
                            if let Some(chunk) = queue.front_mut() {
                                chunk.data.advance(n);
                                if chunk.data.is_empty() {
                                    schedule.delivered(due);
                                    queue.pop_front();
                                }
                            }
                        }
                    }
                }
                read = self.reader.read(buf), if can_read => {
                    let n = read?;
                    eof_read = n == 0;
                    queue.push_back(Chunk {
                        data: Bytes::copy_from_slice(&buf[..n]),
                        read_at: Instant::now(),
                        jitter_sample: sample_jitter(),
                    });
                    queued_bytes += n;
                }
            }
        }
    }

    /// After the EOF was delivered: wait out any partition and the
    /// `slow_close`, then half-close the receiving side.
    async fn close(&mut self) -> io::Result<()> {
        let eof_at = Instant::now();
        loop {
            let t = self.toxics.borrow_and_update().clone();
            if t.blackhole {
                toxics_changed(&mut self.toxics).await;
                continue;
            }
            let deadline = eof_at + t.slow_close;
            if Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                () = sleep_until(deadline) => break,
                () = toxics_changed(&mut self.toxics) => {}
            }
        }
        self.writer.shutdown().await
    }
}

/// Waits until `at`, then writes as much of `data` as the bucket allows
/// (all of it without a cap). Empty `data` is the EOF. Cancel-safe: nothing
/// is written unless the write itself completes.
async fn deliver<W: AsyncWrite + Unpin>(
    writer: &mut W,
    data: Option<&Bytes>,
    at: Instant,
    bucket: &TokenBucket,
    rate: Option<u64>,
) -> io::Result<Delivered> {
    let Some(data) = data else {
        // Unreachable: the branch is disabled without a plan.
        return Ok(Delivered::NotYet);
    };
    if at > Instant::now() {
        sleep_until(at).await;
    }
    if data.is_empty() {
        return Ok(Delivered::Eof);
    }
    let allowed = match rate {
        None => data.len(),
        Some(rate) => {
            let tokens = bucket.available(Instant::now(), rate);
            usize::try_from(tokens)
                .unwrap_or(usize::MAX)
                .min(data.len())
        }
    };
    if allowed == 0 {
        return Ok(Delivered::NotYet);
    }
    let n = nonzero_write(writer.write(&data[..allowed]).await?)?;
    Ok(Delivered::Bytes(n))
}

/// A write of zero bytes means the receiver can take no more, ever.
fn nonzero_write(n: usize) -> io::Result<usize> {
    if n == 0 {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the receiving side accepted no bytes",
        ))
    } else {
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    //! The pump on in-memory pipes and paused time: exact, instant, no sockets.

    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{duplex, DuplexStream};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A pump from `sender` to `receiver`, run on its own task.
    struct Rig {
        sender: DuplexStream,
        receiver: DuplexStream,
        toxics: watch::Sender<Toxics>,
        bytes: Arc<AtomicU64>,
        task: tokio::task::JoinHandle<io::Result<()>>,
    }

    fn rig(toxics: Toxics) -> Rig {
        let (sender, pump_in) = duplex(256 * 1024);
        let (pump_out, receiver) = duplex(256 * 1024);
        let (tx, rx) = watch::channel(toxics);
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&bytes);
        let task = tokio::spawn(async move {
            let (r, _) = tokio::io::split(pump_in);
            let (_, w) = tokio::io::split(pump_out);
            Pipe::new("test", Direction::Upstream, r, w, rx, &counter)
                .run()
                .await
        });
        Rig {
            sender,
            receiver,
            toxics: tx,
            bytes,
            task,
        }
    }

    async fn read_exact(r: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).await.expect("the pump delivers");
        buf
    }

    #[tokio::test(start_paused = true)]
    async fn latency_delays_each_chunk_from_its_read_time() {
        let mut rig = rig(Toxics {
            latency: 50 * MS,
            ..Toxics::default()
        });
        let t0 = Instant::now();
        rig.sender.write_all(b"a").await.unwrap();
        tokio::time::sleep(10 * MS).await;
        rig.sender.write_all(b"b").await.unwrap();
        assert_eq!(read_exact(&mut rig.receiver, 1).await, b"a");
        assert_eq!(Instant::now() - t0, 50 * MS);
        assert_eq!(read_exact(&mut rig.receiver, 1).await, b"b");
        assert_eq!(
            Instant::now() - t0,
            60 * MS,
            "the second chunk left 50 ms after its own read"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn blackhole_holds_bytes_and_heal_delivers_them_in_order() {
        let mut rig = rig(Toxics {
            blackhole: true,
            ..Toxics::default()
        });
        rig.sender.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        let waited =
            tokio::time::timeout(Duration::from_secs(60), rig.receiver.read(&mut buf)).await;
        assert!(waited.is_err(), "no byte crosses a partition");
        assert_eq!(rig.bytes.load(Ordering::Relaxed), 0);
        rig.toxics.send_modify(|t| t.blackhole = false);
        assert_eq!(read_exact(&mut rig.receiver, 4).await, b"held");
        assert_eq!(rig.bytes.load(Ordering::Relaxed), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_set_on_a_clean_pump_takes_effect_at_once() {
        let mut rig = rig(Toxics::default());
        rig.sender.write_all(b"1").await.unwrap();
        assert_eq!(read_exact(&mut rig.receiver, 1).await, b"1");
        rig.toxics.send_modify(|t| t.blackhole = true);
        tokio::task::yield_now().await;
        rig.sender.write_all(b"2").await.unwrap();
        let mut buf = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_secs(5), rig.receiver.read(&mut buf))
                .await
                .is_err()
        );
        rig.toxics.send_modify(|t| t.blackhole = false);
        assert_eq!(read_exact(&mut rig.receiver, 1).await, b"2");
    }

    #[tokio::test(start_paused = true)]
    async fn bandwidth_cap_paces_the_stream() {
        let mut rig = rig(Toxics {
            bandwidth_bytes_per_sec: Some(100_000),
            ..Toxics::default()
        });
        let t0 = Instant::now();
        let writer = tokio::spawn(async move {
            let data = vec![7u8; 200_000];
            rig.sender.write_all(&data).await.unwrap();
            rig.sender
        });
        let got = read_exact(&mut rig.receiver, 200_000).await;
        let took = Instant::now() - t0;
        assert!(got.iter().all(|&b| b == 7));
        // 200 KB at 100 KB/s, less the initial burst of 5 KB.
        assert!(
            took >= Duration::from_millis(1_900) && took <= Duration::from_millis(2_100),
            "{took:?}"
        );
        drop(writer);
    }

    #[tokio::test(start_paused = true)]
    async fn eof_is_delayed_then_slow_closed() {
        let mut rig = rig(Toxics {
            latency: 30 * MS,
            slow_close: 100 * MS,
            ..Toxics::default()
        });
        let t0 = Instant::now();
        rig.sender.write_all(b"bye").await.unwrap();
        rig.sender.shutdown().await.unwrap();
        let mut all = Vec::new();
        rig.receiver.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"bye");
        assert_eq!(Instant::now() - t0, 130 * MS);
        rig.task.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_latency_to_zero_returns_to_the_clean_path_without_losing_bytes() {
        let mut rig = rig(Toxics {
            latency: 10_000 * MS,
            ..Toxics::default()
        });
        rig.sender.write_all(b"first").await.unwrap();
        tokio::time::sleep(10 * MS).await;
        rig.toxics.send_replace(Toxics::default());
        rig.sender.write_all(b"second").await.unwrap();
        let t0 = Instant::now();
        assert_eq!(read_exact(&mut rig.receiver, 11).await, b"firstsecond");
        assert!(Instant::now() - t0 < 1_000 * MS);
    }
}
