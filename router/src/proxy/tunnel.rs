//! An upgraded connection (a WebSocket, say) as a tunnel of bytes between
//! the client and the upstream, closed once no byte has moved either way
//! for the idle bound (`timeouts.upstream_read_ms`, as nginx's
//! `proxy_read_timeout` ends an idle WebSocket): a tunnel both ends forgot
//! must not hold two connections for ever. Traffic in either direction
//! keeps it open; a side that does not read what is sent to it is bounded
//! by the client stream's own send timeout.
//!
//! The clock is read only when the idle timer fires: each side records that
//! it moved bytes in a flag, and the timer, on firing, looks at the flag
//! (set: clear it and wait another bound; clear: close). A tunnel thus
//! closes between one and two bounds after its last byte.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// One side closed and the other's bytes were passed on: bytes each way
    /// (client to upstream, upstream to client).
    Closed(u64, u64),
    /// No byte either way for the idle bound.
    Idle,
}

/// Copies bytes both ways between `client` and `upstream` until both are
/// done or the tunnel sits idle for `idle`.
pub async fn run<C, U>(client: C, upstream: U, idle: Duration) -> io::Result<Ended>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Arc::new(AtomicBool::new(false));
    let mut c = Active {
        io: client,
        moved: moved.clone(),
    };
    let mut u = Active {
        io: upstream,
        moved: moved.clone(),
    };
    let copy = tokio::io::copy_bidirectional(&mut c, &mut u);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            r = &mut copy => return r.map(|(a, b)| Ended::Closed(a, b)),
            () = tokio::time::sleep(idle) => {
                if !moved.swap(false, Ordering::Relaxed) {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// A stream that notes when bytes move through it.
struct Active<T> {
    io: T,
    moved: Arc<AtomicBool>,
}

impl<T> Active<T> {
    fn note(&self, n: usize) {
        if n > 0 {
            self.moved.store(true, Ordering::Relaxed);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.note(buf.filled().len() - before);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            self.note(n);
        }
        r
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn an_idle_tunnel_is_closed_after_its_bound() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (upstream, _upstream_peer) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let ended = run(client, upstream, IDLE).await.expect("tunnel");
        assert_eq!(ended, Ended::Idle);
        assert_eq!(start.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_it_open() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let start = tokio::time::Instant::now();
        let tunnel = tokio::spawn(run(client, upstream, IDLE));
        // A byte every 50 s, alternating directions, for 5 minutes: never
        // 60 s idle.
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            let mut b = [0u8; 1];
            if i % 2 == 0 {
                client_peer.write_all(b"c").await.expect("write");
                upstream_peer.read_exact(&mut b).await.expect("read");
                assert_eq!(&b, b"c");
            } else {
                upstream_peer.write_all(b"u").await.expect("write");
                client_peer.read_exact(&mut b).await.expect("read");
                assert_eq!(&b, b"u");
            }
        }
        assert!(!tunnel.is_finished(), "open after 300 s of traffic");
        // Then silence: closed between one and two bounds after the last byte.
        let ended = tunnel.await.expect("join").expect("tunnel");
        assert_eq!(ended, Ended::Idle);
        let idle_for = start.elapsed() - Duration::from_secs(300);
        assert!(idle_for >= IDLE && idle_for <= 2 * IDLE, "{idle_for:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_closed_by_both_ends_reports_its_bytes() {
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (upstream, mut upstream_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(run(client, upstream, IDLE));
        client_peer.write_all(b"hello").await.expect("write");
        client_peer.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        upstream_peer.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello");
        upstream_peer.write_all(b"bye").await.expect("write");
        upstream_peer.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        client_peer.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"bye");
        let ended = tunnel.await.expect("join").expect("tunnel");
        assert_eq!(ended, Ended::Closed(5, 3));
    }
}
