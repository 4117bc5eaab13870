//! Message framing over the TCP connection: whole backend messages in,
//! buffered frontend messages out.
//!
//! Every backend message is `tag: u8, len: i32 (including itself), body`.
//! [`FrameReader`] cuts the byte stream into such frames and hands each to
//! `postgres_protocol`'s [`Message::parse`], except CopyBothResponse (`'W'`),
//! which that parser does not know (tokio-postgres never enters CopyBoth) and
//! which we recognise ourselves.
//!
//! Both halves are **cancel-safe**: a read that is dropped half-way keeps what
//! it read in the buffer, and a write keeps the unsent bytes in its buffer and
//! sends them first next time. The stream task relies on this to wait for a
//! frame and a timer at once.
//!
//! A frame longer than [`MAX_FRAME_LEN`] is refused before anything is
//! allocated for it: a broken or hostile peer cannot make us reserve gigabytes.

use std::io;

use bytes::{Buf, BytesMut};
use ezone_pg::PgStream;
use postgres_protocol::message::backend::{Header, Message};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest backend message accepted: Postgres never builds a message
/// larger than `MaxAllocSize` (1 GiB - 1), which also bounds one pgoutput
/// message (one XLogData frame) from the walsender.
pub(crate) const MAX_FRAME_LEN: usize = 1 << 30;

/// The tag of CopyBothResponse, which `Message::parse` does not handle.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// How much to read at least per socket read.
const READ_CHUNK: usize = 16 * 1024;

/// One backend message.
pub(crate) enum Frame {
    /// Any message `postgres_protocol` parses.
    Message(Message),
    /// `'W'`: the server entered CopyBoth mode (after START_REPLICATION).
    CopyBothResponse,
}

impl Frame {
    /// A short name for "unexpected message" errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Frame::CopyBothResponse => "CopyBothResponse",
            Frame::Message(m) => message_name(m),
        }
    }
}

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum WireError {
    /// The socket failed or the server closed it (`UnexpectedEof`).
    Io(io::Error),
    /// The bytes are not a valid message.
    Protocol(String),
}

/// Reads whole backend messages.
pub(crate) struct FrameReader {
    half: Box<dyn AsyncRead + Send + Unpin>,
    buf: BytesMut,
}

/// Buffers and sends frontend messages.
pub(crate) struct FrameWriter {
    half: Box<dyn AsyncWrite + Send + Unpin>,
    buf: BytesMut,
}

/// Splits a connection into its two framed halves. A plain socket splits
/// without a lock; a TLS one shares its session through tokio's split (one
/// session encrypts both ways).
pub(crate) fn split(stream: PgStream) -> (FrameReader, FrameWriter) {
    let (read, write): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match stream {
        PgStream::Plain(tcp) => {
            let (read, write) = tcp.into_split();
            (Box::new(read), Box::new(write))
        }
        tls @ PgStream::Tls(_) => {
            let (read, write) = tokio::io::split(tls);
            (Box::new(read), Box::new(write))
        }
    };
    (
        FrameReader {
            half: read,
            buf: BytesMut::with_capacity(READ_CHUNK),
        },
        FrameWriter {
            half: write,
            buf: BytesMut::with_capacity(1024),
        },
    )
}

impl FrameReader {
    /// The next whole message. Cancel-safe.
    pub(crate) async fn read_frame(&mut self) -> Result<Frame, WireError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self
                .half
                .read_buf(&mut self.buf)
                .await
                .map_err(WireError::Io)?;
            if n == 0 {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }

    /// A whole message already read into the buffer, if there is one: no
    /// read, no waiting.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Frame>, WireError> {
        self.take_frame()
    }

    /// Cuts one frame off the buffer if it is complete.
    fn take_frame(&mut self) -> Result<Option<Frame>, WireError> {
        let header = match Header::parse(&self.buf) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(e) => return Err(WireError::Protocol(e.to_string())),
        };
        // Header::parse checked len >= 4.
        let len = usize::try_from(header.len()).unwrap_or(usize::MAX);
        if len > MAX_FRAME_LEN {
            return Err(WireError::Protocol(format!(
                "message {} claims {len} bytes, more than the {MAX_FRAME_LEN} Postgres ever sends",
                show_tag(header.tag())
            )));
        }
        let total = len + 1;
        if self.buf.len() < total {
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(total);
        if header.tag() == COPY_BOTH_RESPONSE_TAG {
            // Int8 overall format, Int16 column count, Int16 per column: the
            // walsender always sends binary with zero columns. Nothing to keep.
            frame.advance(total);
            return Ok(Some(Frame::CopyBothResponse));
        }
        match Message::parse(&mut frame) {
            Ok(Some(message)) => Ok(Some(Frame::Message(message))),
            Ok(None) => Err(WireError::Protocol(format!(
                "message {} could not be parsed although complete",
                show_tag(header.tag())
            ))),
            Err(e) => Err(WireError::Protocol(format!(
                "message {}: {e}",
                show_tag(header.tag())
            ))),
        }
    }
}

impl FrameWriter {
    /// The buffer to encode frontend messages into; [`FrameWriter::flush`]
    /// sends it.
    pub(crate) fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Sends everything buffered. Cancel-safe: unsent bytes stay buffered.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        while !self.buf.is_empty() {
            let n = self.half.write_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the connection accepts no more data",
                ));
            }
        }
        self.half.flush().await
    }
}

/// `'W' (0x57)` or `0x01`.
pub(crate) fn show_tag(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}' (0x{tag:02x})", char::from(tag))
    } else {
        format!("0x{tag:02x}")
    }
}

/// The protocol name of a parsed message, for error text.
pub(crate) fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationCleartextPassword
        | Message::AuthenticationGss
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationOk
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => "Authentication",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "an unknown message",
    }
}
