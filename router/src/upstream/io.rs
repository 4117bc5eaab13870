//! A connection to an upstream or a peer router (`UpIo`: plain TCP, or TLS
//! to a peer router), and one the router speaks HTTP/1.1 on itself
//! (`RawConn`: the socket and what was read from it).

use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::stall::Stall;

/// A connection's read buffer: its initial size, and the least free space
/// a read is given.
const READ_BUF: usize = 8 * 1024;
const MIN_READ: usize = 1024;

/// A connection to an upstream or a peer router: plain TCP, or TLS to a
/// peer router (`[peer_tls]`).
pub(crate) enum UpIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpIo {
    pub(super) fn is_tls(&self) -> bool {
        matches!(self, UpIo::Tls(_))
    }
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Plain(s) => s.is_write_vectored(),
            UpIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpIo::Tls(s) => std::pin::Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// A connection the router speaks HTTP/1.1 on itself.
pub(crate) struct RawConn {
    pub(super) io: UpIo,
    /// Bytes read and not yet used (a response head being read, body bytes).
    pub(super) buf: BytesMut,
    /// How long a response body has kept the router waiting (its timer is
    /// kept with the connection, for every response on it).
    pub(super) stall: Stall,
}

impl RawConn {
    pub(super) fn new(io: UpIo) -> RawConn {
        RawConn {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
            stall: Stall::new(),
        }
    }

    /// Reads what the socket has into the buffer: `Ok(0)` at its end.
    ///
    /// Through tokio's `AsyncRead`, which knows that a read that did not
    /// fill the buffer drained the socket, and so does not need a second
    /// read (that fails with `EAGAIN`) to learn that it must wait.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.reserve(READ_BUF);
        }
        let read = tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf);
        std::pin::pin!(read).poll(cx)
    }

    /// True if an idle connection can take a request: the upstream has not
    /// closed it (nor sent anything unasked). Costs no system call unless
    /// the socket has signalled something since it was last read.
    pub(super) fn still_open(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.poll_fill(&mut cx).is_pending()
    }
}
