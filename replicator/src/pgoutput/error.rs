//! Why a byte buffer is not a valid `pgoutput` or CopyBoth message.
//!
//! Every error names the field that was being read (`"Relation column type
//! oid"`), the byte offset of that field inside the buffer handed to the
//! decoder, and what was wrong with it. That is what one needs to compare a
//! failing message with `proto.c` or a hex dump.
//!
//! All of these errors are *definite*: decoding the same bytes again gives the
//! same error. A caller must not retry on them; the link stops and reports,
//! because skipping a message it cannot read would silently drop a change.
//! [`DecodeError::UnknownMessage`] usually means a protocol option the
//! replicator did not ask for (two-phase) is on; the others mean a
//! corrupted stream or a decoder bug.

use std::fmt;
use std::str::Utf8Error;

/// A message that could not be decoded. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer holds no bytes at all, not even a message tag.
    #[error("empty message: expected at least a one-byte message tag")]
    Empty,

    /// The first byte is not a message type this decoder handles.
    #[error(
        "unsupported message tag {} at offset 0{}: this decoder handles pgoutput's \
         transaction messages (B C O R Y I U D T M), protocol version 2's streamed blocks \
         (S E c A, in pgoutput::stream) and CopyBoth framing (w k); check that two_phase is \
         not enabled on the replication connection",
        ShowByte(*.0),
        tag_hint(*.0)
    )]
    UnknownMessage(u8),

    /// The buffer ends before the field does.
    #[error("truncated {field} at offset {offset}: needs {needed} bytes, only {available} left")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field in the buffer.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the buffer at `offset`.
        available: usize,
    },

    /// A one-byte tag or code inside the message has a value not allowed there.
    #[error("bad {field} at offset {offset}: got {}, expected {expected}", ShowByte(*.got))]
    BadTag {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field in the buffer.
        offset: usize,
        /// The byte found.
        got: u8,
        /// The bytes allowed, in words.
        expected: &'static str,
    },

    /// A length field is negative.
    #[error("bad length in {field} at offset {offset}: {length} (must not be negative)")]
    BadLength {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the length field in the buffer.
        offset: usize,
        /// The length as sent.
        length: i64,
    },

    /// A NUL-terminated string runs to the end of the buffer without a NUL.
    #[error("unterminated {field} at offset {offset}: no NUL byte before the end of the message")]
    UnterminatedString {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the string's first byte.
        offset: usize,
    },

    /// A name (identifier, prefix) is not valid UTF-8.
    #[error("invalid UTF-8 in {field} at offset {offset}: {source}")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
        /// Byte offset of the string's first byte.
        offset: usize,
        /// Where in the string the invalid sequence starts.
        #[source]
        source: Utf8Error,
    },

    /// The message was complete but bytes are left over after it.
    #[error("{count} trailing bytes after the end of the {message} message at offset {offset}")]
    TrailingBytes {
        /// The message that was decoded.
        message: &'static str,
        /// Byte offset of the first left-over byte.
        offset: usize,
        /// How many bytes are left over.
        count: usize,
    },
}

impl DecodeError {
    /// The byte offset in the decoded buffer where the problem was found.
    pub fn offset(&self) -> usize {
        match self {
            DecodeError::Empty | DecodeError::UnknownMessage(_) => 0,
            DecodeError::Truncated { offset, .. }
            | DecodeError::BadTag { offset, .. }
            | DecodeError::BadLength { offset, .. }
            | DecodeError::UnterminatedString { offset, .. }
            | DecodeError::InvalidUtf8 { offset, .. }
            | DecodeError::TrailingBytes { offset, .. } => *offset,
        }
    }
}

/// Displays a protocol byte as `'B' (0x42)`, or just `0x00` when unprintable.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' (0x{:02x})", char::from(self.0), self.0)
        } else {
            write!(f, "0x{:02x}", self.0)
        }
    }
}

/// Names the message types Postgres may send that are deliberately not
/// decoded here, so that the error says *why* a known tag is refused.
fn tag_hint(tag: u8) -> &'static str {
    match tag {
        b'S' => " (Stream Start: protocol v2 streaming)",
        b'E' => " (Stream Stop: protocol v2 streaming)",
        b'c' => " (Stream Commit: protocol v2 streaming)",
        b'A' => " (Stream Abort: protocol v2 streaming)",
        b'b' => " (Begin Prepare: protocol v3 two-phase)",
        b'P' => " (Prepare: protocol v3 two-phase)",
        b'K' => " (Commit Prepared: protocol v3 two-phase)",
        b'r' => " (Rollback Prepared: protocol v3 two-phase; in CopyBoth, a standby status update)",
        b'p' => " (Stream Prepare: protocol v3 two-phase)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_message_names_the_tag_and_why() {
        let text = DecodeError::UnknownMessage(b'S').to_string();
        assert!(text.contains("'S' (0x53)"), "{text}");
        assert!(text.contains("streaming"), "{text}");
        let text = DecodeError::UnknownMessage(0).to_string();
        assert!(text.contains("0x00"), "{text}");
    }

    #[test]
    fn bad_tag_shows_the_byte() {
        let err = DecodeError::BadTag {
            field: "TupleData column kind",
            offset: 9,
            got: b'x',
            expected: "'n', 'u', 't' or 'b'",
        };
        assert_eq!(
            err.to_string(),
            "bad TupleData column kind at offset 9: got 'x' (0x78), expected 'n', 'u', 't' or 'b'"
        );
    }
}
