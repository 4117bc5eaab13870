//! Protocol version 2: transactions streamed before their commit.
//!
//! With `proto_version '2', streaming 'on'` the source sends a transaction
//! whose decoded changes outgrow its `logical_decoding_work_mem` before it
//! commits, in blocks, between other transactions:
//!
//! ```text
//! 'S' Stream Start   Int32 xid (top level), Int8 first segment (1 = the first block of xid)
//!     ['O' Origin]   only after the first block's Stream Start, as after Begin
//!     R Y I U D T M  as in version 1, each with Int32 xid (the subtransaction's) after the tag
//! 'E' Stream Stop    (nothing)
//! 'c' Stream Commit  Int32 xid, Int8 flags (0), Int64 commit LSN, Int64 end LSN, Int64 commit time
//! 'A' Stream Abort   Int32 xid, Int32 subxid (= xid when the whole transaction aborted)
//! ```
//!
//! (Postgres 16 adds an abort LSN and time to Stream Abort only for
//! `streaming 'parallel'`, which the replicator does not ask for.) A
//! transaction that stays under the limit is sent as in version 1, Begin to
//! Commit, with no xids. The authority is `proto.c` (`logicalrep_write_stream_*`)
//! and `pgoutput.c` (`pgoutput_stream_*`, and `send_repl_origin` for the
//! Origin).
//!
//! What arrives in a block belongs to the block's transaction only: the
//! [`crate::spool`] keeps it aside until that transaction's Stream Commit
//! (or drops it at its Stream Abort). A Relation sent inside a block is
//! part of that transaction too: pgoutput counts it as sent only once the
//! transaction commits, and sends it again otherwise.

use super::reader::Reader;
use super::{decode_body, read_commit, read_tag, Commit, DecodeError, LogicalMessage, Xid};

/// One of the four messages that frame streamed transactions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamControl {
    /// `'S'`: a block of `xid`'s changes follows.
    Start { xid: Xid, first_segment: bool },
    /// `'E'`: the block ends.
    Stop,
    /// `'c'`: `xid`, streamed before, committed.
    Commit { xid: Xid, commit: Commit },
    /// `'A'`: `subxid` (a subtransaction of `xid`, or `xid` itself) aborted.
    Abort { xid: Xid, subxid: Xid },
}

/// Whether a message's first byte is one of [`StreamControl`]'s.
pub fn is_control(buf: &[u8]) -> bool {
    matches!(buf.first(), Some(b'S' | b'E' | b'c' | b'A'))
}

/// Decodes a Stream Start, Stop, Commit or Abort.
pub fn decode_control(buf: &[u8]) -> Result<StreamControl, DecodeError> {
    let mut r = Reader::new(buf);
    let (control, kind) = match read_tag(&mut r)? {
        b'S' => {
            let xid = r.u32("Stream Start xid")?;
            let offset = r.offset();
            let first_segment = match r.u8("Stream Start first segment")? {
                0 => false,
                1 => true,
                got => {
                    return Err(DecodeError::BadTag {
                        field: "Stream Start first segment",
                        offset,
                        got,
                        expected: "0 or 1",
                    })
                }
            };
            (StreamControl::Start { xid, first_segment }, "Stream Start")
        }
        b'E' => (StreamControl::Stop, "Stream Stop"),
        b'c' => {
            let xid = r.u32("Stream Commit xid")?;
            let commit = read_commit(&mut r)?;
            (StreamControl::Commit { xid, commit }, "Stream Commit")
        }
        b'A' => {
            let xid = r.u32("Stream Abort xid")?;
            let subxid = r.u32("Stream Abort subxid")?;
            (StreamControl::Abort { xid, subxid }, "Stream Abort")
        }
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(kind)?;
    Ok(control)
}

/// Whether a message inside a stream block carries an xid after its tag:
/// every data message does; the Origin does not.
fn carries_xid(tag: u8) -> bool {
    matches!(tag, b'R' | b'Y' | b'I' | b'U' | b'D' | b'T' | b'M')
}

/// The xid a message inside a stream block carries (the (sub)transaction
/// that made the change), read without decoding the rest; `None` for an
/// Origin. Anything else is not allowed inside a block.
pub fn block_xid(buf: &[u8]) -> Result<Option<Xid>, DecodeError> {
    let mut r = Reader::new(buf);
    match read_tag(&mut r)? {
        b'O' => Ok(None),
        tag if carries_xid(tag) => Ok(Some(r.u32("streamed message xid")?)),
        other => Err(DecodeError::UnknownMessage(other)),
    }
}

/// Decodes a message sent inside a stream block: its xid (`None` for an
/// Origin) and the message, laid out as in version 1 after the xid.
pub fn decode_in_block(buf: &[u8]) -> Result<(Option<Xid>, LogicalMessage), DecodeError> {
    let mut r = Reader::new(buf);
    let tag = read_tag(&mut r)?;
    let xid = match tag {
        b'O' => None,
        tag if carries_xid(tag) => Some(r.u32("streamed message xid")?),
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    Ok((xid, decode_body(tag, r)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::{decode, Insert, PgTimestamp};
    use proptest::prelude::*;

    #[test]
    fn the_four_framing_messages() {
        assert_eq!(
            decode_control(b"S\0\0\x02\x00\x01").unwrap(),
            StreamControl::Start {
                xid: 512,
                first_segment: true
            }
        );
        assert_eq!(decode_control(b"E").unwrap(), StreamControl::Stop);
        let mut commit = vec![b'c', 0, 0, 0, 9, 0];
        commit.extend_from_slice(&100u64.to_be_bytes());
        commit.extend_from_slice(&120u64.to_be_bytes());
        commit.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(
            decode_control(&commit).unwrap(),
            StreamControl::Commit {
                xid: 9,
                commit: Commit {
                    flags: 0,
                    commit_lsn: Lsn(100),
                    end_lsn: Lsn(120),
                    commit_time: PgTimestamp(7),
                }
            }
        );
        assert_eq!(
            decode_control(b"A\0\0\0\x09\0\0\0\x0b").unwrap(),
            StreamControl::Abort { xid: 9, subxid: 11 }
        );
        assert!(is_control(b"S") && is_control(b"E") && !is_control(b"I") && !is_control(b""));
    }

    #[test]
    fn framing_errors_name_the_field() {
        let err = decode_control(b"S\0\0\0\x01\x02").unwrap_err();
        assert!(
            err.to_string().contains("Stream Start first segment"),
            "{err}"
        );
        let err = decode_control(b"A\0\0\0\x01").unwrap_err();
        assert!(err.to_string().contains("Stream Abort subxid"), "{err}");
        // Postgres 16's abort LSN and time come only with 'parallel'.
        let err = decode_control(&[b'A', 0, 0, 0, 1, 0, 0, 0, 1, 0]).unwrap_err();
        assert!(err.to_string().contains("Stream Abort"), "{err}");
        assert_eq!(decode_control(b""), Err(DecodeError::Empty));
        assert!(decode_control(b"I").is_err());
    }

    #[test]
    fn a_streamed_change_is_its_version_1_layout_after_the_xid() {
        // Insert into relation 16384: one text column "a".
        let v1: &[u8] = b"I\0\0\x40\0N\0\x01t\0\0\0\x01a";
        let mut v2 = vec![b'I', 0, 0, 0x01, 0xf4];
        v2.extend_from_slice(&v1[1..]);
        let (xid, msg) = decode_in_block(&v2).unwrap();
        assert_eq!(xid, Some(500));
        assert_eq!(msg, decode(v1).unwrap());
        assert!(matches!(
            msg,
            LogicalMessage::Insert(Insert {
                relation_oid: 16384,
                ..
            })
        ));
        assert_eq!(block_xid(&v2).unwrap(), Some(500));
        // The Origin carries none.
        let origin = b"O\0\0\0\0\0\0\0\x10pg_1\0";
        assert_eq!(block_xid(origin).unwrap(), None);
        assert!(matches!(
            decode_in_block(origin).unwrap(),
            (None, LogicalMessage::Origin(_))
        ));
        // Begin and Commit have no place inside a block.
        assert_eq!(block_xid(b"B"), Err(DecodeError::UnknownMessage(b'B')));
        assert!(decode_in_block(b"C").is_err());
    }

    proptest! {
        // Nothing a source (or a corrupted stream) sends makes these panic.
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_control(&buf);
            let _ = block_xid(&buf);
            let _ = decode_in_block(&buf);
        }

        #[test]
        fn a_framing_message_cut_short_is_an_error(cut in 0usize..30) {
            let mut commit = vec![b'c', 0, 0, 0, 9, 0];
            commit.extend_from_slice(&[1; 24]);
            let cut = cut.min(commit.len() - 1);
            prop_assert!(decode_control(&commit[..cut]).is_err());
        }
    }
}
