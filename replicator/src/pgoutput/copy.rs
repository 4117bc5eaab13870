//! The CopyBoth framing of the streaming replication protocol.
//!
//! After `START_REPLICATION`, the connection is in CopyBoth mode and each
//! CopyData message carries one of these (the payloads handled here start at
//! the byte after CopyData's own `'d'` and length):
//!
//! ```text
//! server -> client
//! 'w' XLogData          Int64 wal_start, Int64 wal_end, Int64 send_time, Byte* data
//! 'k' Primary keepalive Int64 wal_end, Int64 send_time, Byte1 reply_requested
//! client -> server
//! 'r' Standby status    Int64 written, Int64 flushed, Int64 applied, Int64 now, Byte1 reply
//! ```
//!
//! For a logical slot, `data` of one XLogData frame is exactly one pgoutput
//! message (see [`super::decode`]). The walsender then sets both `wal_start`
//! and `wal_end` to the LSN of the WAL record the message was decoded from,
//! and to 0 when the message is not the last one written for that record (a
//! Begin followed by an Origin, a Relation sent just before the change that
//! needed it). They are therefore not positions to confirm: the confirmable
//! position is a Commit's `end_lsn` (and, when idle, a keepalive's `wal_end`).
//!
//! Why the status update matters, and why its three LSNs are not the same
//! thing: the server keeps WAL for the slot back to the `flushed` position the
//! client confirms, and a restarted stream resumes from there. The replicator
//! must therefore report as flushed only what the target has *durably*
//! committed (a Commit's `end_lsn` whose target transaction is committed),
//! never what it has merely received: confirming too early loses transactions
//! on a crash; confirming too late only costs disk at the source. A keepalive
//! with `reply_requested` set must be answered promptly, or the server ends the
//! connection after `wal_sender_timeout`.

use super::error::DecodeError;
use super::reader::Reader;
use super::timestamp::PgTimestamp;
use crate::lsn::Lsn;

/// The size of an encoded standby status update: tag, four Int64s, one byte.
pub const STANDBY_STATUS_LEN: usize = 1 + 8 * 4 + 1;

/// A decoded server-to-client CopyData payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage<'a> {
    /// `'w'`: WAL data; for a logical slot, one pgoutput message.
    XLogData {
        /// The WAL position the data starts at (for a logical slot, the LSN
        /// of the source record, or 0; see the module docs).
        wal_start: Lsn,
        /// The server's end of WAL (for a logical slot, equal to `wal_start`).
        wal_end: Lsn,
        /// The server's clock when it sent this frame.
        send_time: PgTimestamp,
        /// The payload, borrowed from the frame: decode it with
        /// [`super::decode`].
        data: &'a [u8],
    },
    /// `'k'`: the server's heartbeat.
    PrimaryKeepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The server's clock when it sent this frame.
        send_time: PgTimestamp,
        /// The server asks for a standby status update now (it is about to
        /// time the connection out).
        reply_requested: bool,
    },
}

/// Decodes one server-to-client CopyData payload (starting at its `'w'` or
/// `'k'` tag).
pub fn decode_copy_data(buf: &[u8]) -> Result<ReplicationMessage<'_>, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = match r.u8("CopyData tag") {
        Ok(tag) => tag,
        Err(_) => return Err(DecodeError::Empty),
    };
    match tag {
        b'w' => Ok(ReplicationMessage::XLogData {
            wal_start: Lsn(r.u64("XLogData WAL start")?),
            wal_end: Lsn(r.u64("XLogData WAL end")?),
            send_time: PgTimestamp(r.i64("XLogData send time")?),
            data: r.remaining(),
        }),
        b'k' => {
            let message = ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(r.u64("keepalive WAL end")?),
                send_time: PgTimestamp(r.i64("keepalive send time")?),
                // Postgres treats any non-zero byte as "reply requested".
                reply_requested: r.u8("keepalive reply requested")? != 0,
            };
            r.finish("primary keepalive")?;
            Ok(message)
        }
        other => Err(DecodeError::UnknownMessage(other)),
    }
}

/// A client-to-server standby status update (`'r'`).
///
/// Each LSN is "the last WAL byte + 1" the client has, respectively, received
/// and written, flushed to durable storage, and applied. See the module docs
/// for which of them the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Received and written.
    pub written: Lsn,
    /// Durably stored: the slot's confirmed position.
    pub flushed: Lsn,
    /// Applied.
    pub applied: Lsn,
    /// The client's clock.
    pub now: PgTimestamp,
    /// Ask the server to answer with a keepalive right away.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// The CopyData payload for this update.
    pub fn encode(&self) -> [u8; STANDBY_STATUS_LEN] {
        let mut out = [0u8; STANDBY_STATUS_LEN];
        out[0] = b'r';
        out[1..9].copy_from_slice(&self.written.0.to_be_bytes());
        out[9..17].copy_from_slice(&self.flushed.0.to_be_bytes());
        out[17..25].copy_from_slice(&self.applied.0.to_be_bytes());
        out[25..33].copy_from_slice(&self.now.0.to_be_bytes());
        out[33] = u8::from(self.reply_requested);
        out
    }

    /// Decodes an `'r'` payload (what the server reads; used by tests and by
    /// protocol fakes).
    pub fn decode(buf: &[u8]) -> Result<StandbyStatusUpdate, DecodeError> {
        let mut r = Reader::new(buf);
        match r.u8("CopyData tag") {
            Ok(b'r') => {}
            Ok(other) => return Err(DecodeError::UnknownMessage(other)),
            Err(_) => return Err(DecodeError::Empty),
        }
        let update = StandbyStatusUpdate {
            written: Lsn(r.u64("standby status written LSN")?),
            flushed: Lsn(r.u64("standby status flushed LSN")?),
            applied: Lsn(r.u64("standby status applied LSN")?),
            now: PgTimestamp(r.i64("standby status clock")?),
            reply_requested: r.u8("standby status reply requested")? != 0,
        };
        r.finish("standby status update")?;
        Ok(update)
    }
}

/// Encodes a standby status update (`'r'`): 1 + 8 * 4 + 1 = 34 bytes.
pub fn encode_standby_status(
    written: Lsn,
    flushed: Lsn,
    applied: Lsn,
    now: PgTimestamp,
    reply: bool,
) -> [u8; STANDBY_STATUS_LEN] {
    StandbyStatusUpdate {
        written,
        flushed,
        applied,
        now,
        reply_requested: reply,
    }
    .encode()
}
