//! One proxied connection, from accept to close: hold it while the link is
//! partitioned, connect to the upstream, run the two pumps, close both ends.
//!
//! Why hold before connecting: behind a real partition a TCP handshake cannot
//! complete (it needs both directions), so the upstream must not see a
//! connection made during a partition (one-way or both) until it heals. The
//! client's own connect to the proxy does succeed, and its first bytes wait in
//! the kernel, as SYN retransmissions would wait.
//!
//! How it ends:
//! - both pumps passed their EOF on: a normal close;
//! - either side failed (reset by peer, ...): both ends are reset (RST), so
//!   each sees the failure the other side had;
//! - `reset()` on the link: both ends are reset (SO_LINGER 0, then close);
//! - the proxy stops: both ends are closed.
//!
//! Both streams are owned by this one task and split into borrowed halves, so
//! no half can close a socket behind the task's back and a reset closes the
//! whole socket at once.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::config::{Direction, Toxics};
use super::link::LinkShared;
use super::pipe::Pipe;
use super::tasks::TaskToken;

/// How long a connect to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a connection ended, which decides how its sockets are closed.
#[derive(Debug)]
enum End {
    /// Both directions closed normally.
    Closed,
    /// The link was reset.
    Reset,
    /// The proxy is stopping.
    Shutdown,
    /// One side failed; the other is reset too.
    Failed(io::Error),
}

/// Serves one accepted client until the connection ends; see the module doc.
pub(crate) async fn serve(
    link: Arc<LinkShared>,
    client: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
    reset: CancellationToken,
    _task: TaskToken,
) {
    let _open = link.counters.open_connection();
    let _ = client.set_nodelay(true);
    debug!(link = %link.name, %peer, "Connection accepted.");
    let mut up_toxics = link.toxics_receiver(Direction::Upstream);
    let mut down_toxics = link.toxics_receiver(Direction::Downstream);

    let connected = tokio::select! {
        biased;
        () = stop.cancelled() => Err(End::Shutdown),
        () = reset.cancelled() => Err(End::Reset),
        connected = hold_then_connect(&link, &mut up_toxics, &mut down_toxics) => connected.map_err(End::Failed),
    };
    let mut upstream = match connected {
        Ok(upstream) => upstream,
        Err(end) => {
            if let End::Failed(error) = &end {
                info!(link = %link.name, %peer, upstream = %link.upstream, %error, "Upstream connect failed; resetting the client.");
            }
            close(&link.name, peer, client, None, end);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    debug!(link = %link.name, %peer, "Connected upstream.");

    let mut client = client;
    let end = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let up = Pipe::new(
            &link.name,
            Direction::Upstream,
            client_read,
            upstream_write,
            up_toxics,
            link.counters.bytes(Direction::Upstream),
        )
        .run();
        let down = Pipe::new(
            &link.name,
            Direction::Downstream,
            upstream_read,
            client_write,
            down_toxics,
            link.counters.bytes(Direction::Downstream),
        )
        .run();
        tokio::select! {
            biased;
            () = stop.cancelled() => End::Shutdown,
            () = reset.cancelled() => End::Reset,
            pumped = futures::future::try_join(up, down) => match pumped {
                Ok(((), ())) => End::Closed,
                Err(error) => End::Failed(error),
            },
        }
    };
    close(&link.name, peer, client, Some(upstream), end);
}

/// Waits while either direction is partitioned, then connects upstream.
async fn hold_then_connect(
    link: &LinkShared,
    up: &mut watch::Receiver<Toxics>,
    down: &mut watch::Receiver<Toxics>,
) -> io::Result<TcpStream> {
    let mut held = false;
    loop {
        let partitioned = up.borrow_and_update().blackhole || down.borrow_and_update().blackhole;
        if !partitioned {
            break;
        }
        if !held {
            debug!(link = %link.name, "New connection held by a partition.");
            held = true;
        }
        // An error means the link is gone; the proxy's stop ends us then.
        tokio::select! {
            changed = up.changed() => if changed.is_err() { std::future::pending::<()>().await },
            changed = down.changed() => if changed.is_err() { std::future::pending::<()>().await },
        }
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(link.upstream)).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect to {} took longer than {CONNECT_TIMEOUT:?}",
                link.upstream
            ),
        )),
    }
}

/// Closes both sockets the way `end` calls for.
fn close(link: &str, peer: SocketAddr, client: TcpStream, upstream: Option<TcpStream>, end: End) {
    let abrupt = matches!(end, End::Reset | End::Failed(_));
    if abrupt {
        // SO_LINGER 0: the close below sends RST instead of FIN. It cannot
        // block, the linger time being zero.
        for stream in std::iter::once(&client).chain(upstream.as_ref()) {
            let _ = stream.set_zero_linger();
        }
    }
    match &end {
        End::Failed(error) => {
            debug!(link = %link, %peer, %error, "Connection failed; both ends reset.")
        }
        other => debug!(link = %link, %peer, end = ?other, "Connection closed."),
    }
    drop(client);
    drop(upstream);
}
