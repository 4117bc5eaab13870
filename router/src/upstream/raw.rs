//! A response body read by the router's own HTTP/1.1 exchange, straight
//! from its connection (`RawBody`): by `Content-Length`, chunked, or to
//! the connection's end. The connection goes back to its pool when the body
//! has been read to its end.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};

use super::error::UpstreamError;
use super::io::RawConn;
use super::pool::{Idle, Upstream, MAX_IDLE_PER_ADDR};
use crate::error::BoxError;
use crate::http1::codec::{self as h1, ChunkedDecoder, Framing};

/// Where a [`RawBody`] is.
enum RawState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Eof,
    Done,
}

/// A response body read from one of the router's own connections. The
/// connection goes back to its pool when the body has been read to its end
/// (if the upstream allows reuse); a body dropped before that closes it.
pub(crate) struct RawBody<B> {
    conn: Option<RawConn>,
    slot: Arc<Upstream<B>>,
    state: RawState,
    reusable: bool,
}

impl<B> RawBody<B> {
    pub(super) fn new(
        conn: RawConn,
        slot: Arc<Upstream<B>>,
        framing: Framing,
        reusable: bool,
    ) -> RawBody<B> {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => RawState::Done,
            Framing::Length(n) => RawState::Length(n),
            Framing::Chunked => RawState::Chunked(ChunkedDecoder::default()),
            Framing::Eof => RawState::Eof,
        };
        RawBody {
            conn: Some(conn),
            slot,
            state,
            reusable,
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = RawState::Done;
        Poll::Ready(Some(Err(e)))
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match &mut self.state {
                RawState::Done => return Poll::Ready(None),
                RawState::Length(left) => {
                    if !conn.buf.is_empty() {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = h1::take_bytes(&mut conn.buf, n);
                        *left -= n as u64;
                        if *left == 0 {
                            self.state = RawState::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                RawState::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(Some(h1::Chunk::Data(data))) => {
                        return Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Ok(Some(h1::Chunk::Trailers(t))) => {
                        self.state = RawState::Done;
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                    Ok(Some(h1::Chunk::End)) => {
                        self.state = RawState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return self.fail(Box::new(UpstreamError::Malformed(e))),
                },
                RawState::Eof => {
                    if !conn.buf.is_empty() {
                        let n = conn.buf.len();
                        return Poll::Ready(Some(Ok(Frame::data(h1::take_bytes(
                            &mut conn.buf,
                            n,
                        )))));
                    }
                }
            }
            // The buffer holds nothing usable: read more.
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(r) => {
                    conn.stall.progress();
                    r
                }
                Poll::Pending => {
                    let limit = self.slot.read_timeout();
                    if conn.stall.poll_expired(cx, limit).is_ready() {
                        self.slot.stalled();
                        return self.fail(Box::new(UpstreamError::Stalled { after: limit }));
                    }
                    return Poll::Pending;
                }
            };
            match filled {
                Ok(0) => {
                    if matches!(self.state, RawState::Eof) {
                        self.state = RawState::Done;
                        self.conn = None;
                        return Poll::Ready(None);
                    }
                    return self.fail(Box::new(UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection in the middle of the response body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => return self.fail(Box::new(UpstreamError::Io(e))),
            }
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.state, RawState::Done)
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.state {
            RawState::Done => SizeHint::with_exact(0),
            RawState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl<B> Drop for RawBody<B> {
    fn drop(&mut self) {
        if let (RawState::Done, true, Some(conn)) = (&self.state, self.reusable, self.conn.take()) {
            // Anything left over was not asked for: do not reuse.
            if conn.buf.is_empty() {
                let mut idle = self.slot.idle();
                if idle.raw.len() < MAX_IDLE_PER_ADDR {
                    idle.raw.push(Idle::new(conn));
                }
            }
        }
    }
}
