//! A bounds-checked cursor over one message's bytes.
//!
//! The bytes come from the network, so any length or count in them may be a
//! lie. Every read here checks what is left before taking anything and turns a
//! short buffer into a [`DecodeError`] naming the field and its offset; nothing
//! in the decoder indexes a slice directly, so no input can make it panic.
//!
//! Integers are big-endian (network order), as `pq_sendint*` writes them.
//! Strings are NUL-terminated (`pq_sendstring`), and the names in them are UTF-8
//! (the replicated databases use the UTF8 server encoding).

use super::error::DecodeError;

/// A cursor over a message buffer. Offsets in errors are relative to the
/// start of that buffer.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// The offset of the next byte to read.
    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    /// The bytes not read yet.
    pub(crate) fn remaining(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn truncated(&self, field: &'static str, needed: usize) -> DecodeError {
        DecodeError::Truncated {
            field,
            offset: self.pos,
            needed,
            available: self.remaining().len(),
        }
    }

    /// Takes exactly `n` bytes.
    pub(crate) fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.remaining();
        match rest.get(..n) {
            Some(taken) => {
                self.pos += n;
                Ok(taken)
            }
            None => Err(self.truncated(field, n)),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        match self.remaining().first_chunk::<N>() {
            Some(chunk) => {
                self.pos += N;
                Ok(*chunk)
            }
            None => Err(self.truncated(field, N)),
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(field).map(|[b]| b)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_be_bytes)
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        self.array(field).map(i32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        self.array(field).map(i64::from_be_bytes)
    }

    /// An `Int32` length followed by that many bytes (`pq_sendcountedtext`,
    /// message content). A negative length is an error, not "NULL": pgoutput
    /// marks NULL with a column kind byte instead.
    pub(crate) fn counted_bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let len = self.i32(field)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::BadLength {
            field,
            offset,
            length: i64::from(len),
        })?;
        self.bytes(len, field)
    }

    /// A NUL-terminated UTF-8 string; the NUL is consumed, not returned.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let offset = self.pos;
        let rest = self.remaining();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString { field, offset })?;
        let raw = self.bytes(len, field)?;
        self.pos += 1; // the NUL, found above
        std::str::from_utf8(raw).map_err(|source| DecodeError::InvalidUtf8 {
            field,
            offset,
            source,
        })
    }

    /// Checks that the whole buffer was consumed by `message`.
    pub(crate) fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.remaining().len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message,
                offset: self.pos,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_integers_in_sequence() {
        let buf = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0xff, 0xff, 0xff, 0xfe, 0, 0, 0, 0, 0, 0, 1,
            0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("a"), Ok(0x01));
        assert_eq!(r.u16("b"), Ok(0x0203));
        assert_eq!(r.u32("c"), Ok(0x0405_0607));
        assert_eq!(r.offset(), 7);
        assert_eq!(r.i32("d"), Ok(-2));
        assert_eq!(r.u64("e"), Ok(0x100));
        assert_eq!(r.i64("f"), Ok(-1));
        assert_eq!(r.finish("test"), Ok(()));
    }

    #[test]
    fn short_reads_fail_without_consuming() {
        let buf = [1, 2, 3];
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8("tag"), Ok(1));
        let err = r.u32("oid").unwrap_err();
        assert_eq!(
            err,
            DecodeError::Truncated {
                field: "oid",
                offset: 1,
                needed: 4,
                available: 2
            }
        );
        assert_eq!(r.offset(), 1, "a failed read consumes nothing");
        assert_eq!(r.u16("ok"), Ok(0x0203));
        assert!(matches!(
            r.u8("x"),
            Err(DecodeError::Truncated {
                offset: 3,
                needed: 1,
                available: 0,
                ..
            })
        ));
        assert!(matches!(
            r.u64("x"),
            Err(DecodeError::Truncated { needed: 8, .. })
        ));
        assert!(matches!(
            r.i64("x"),
            Err(DecodeError::Truncated { needed: 8, .. })
        ));
    }

    #[test]
    fn bytes_checks_huge_lengths_without_overflow() {
        let buf = [0u8; 4];
        let mut r = Reader::new(&buf);
        assert_eq!(r.bytes(2, "x"), Ok(&[0u8, 0][..]));
        assert!(matches!(
            r.bytes(usize::MAX, "x"),
            Err(DecodeError::Truncated {
                offset: 2,
                available: 2,
                ..
            })
        ));
        assert_eq!(r.bytes(0, "empty"), Ok(&[][..]));
        assert_eq!(r.bytes(2, "x"), Ok(&[0u8, 0][..]));
        assert_eq!(r.remaining(), &[] as &[u8]);
    }

    #[test]
    fn counted_bytes() {
        let buf = [
            0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 9, b'x',
        ];
        let mut r = Reader::new(&buf);
        assert_eq!(r.counted_bytes("value"), Ok(&b"hi"[..]));
        assert_eq!(
            r.counted_bytes("value"),
            Err(DecodeError::BadLength {
                field: "value",
                offset: 6,
                length: -1
            })
        );
        let mut r = Reader::new(buf.get(10..).unwrap_or_default());
        assert!(matches!(
            r.counted_bytes("value"),
            Err(DecodeError::Truncated {
                offset: 4,
                needed: 9,
                available: 1,
                ..
            })
        ));
    }

    #[test]
    fn cstr() {
        let buf = b"public\0\0abc";
        let mut r = Reader::new(buf);
        assert_eq!(r.cstr("namespace"), Ok("public"));
        assert_eq!(r.offset(), 7);
        assert_eq!(r.cstr("empty"), Ok(""));
        assert_eq!(
            r.cstr("name"),
            Err(DecodeError::UnterminatedString {
                field: "name",
                offset: 8
            })
        );
        let mut r = Reader::new(b"\0\xff\xfe\0");
        assert_eq!(r.cstr("a"), Ok(""));
        assert!(matches!(
            r.cstr("b"),
            Err(DecodeError::InvalidUtf8 {
                field: "b",
                offset: 1,
                ..
            })
        ));
    }

    #[test]
    fn finish_reports_trailing_bytes() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u8("tag"), Ok(1));
        assert_eq!(
            r.finish("Begin"),
            Err(DecodeError::TrailingBytes {
                message: "Begin",
                offset: 1,
                count: 2
            })
        );
    }

    #[test]
    fn empty_buffer() {
        let mut r = Reader::new(&[]);
        assert_eq!(r.remaining(), &[] as &[u8]);
        assert_eq!(r.finish("x"), Ok(()));
        assert!(r.u8("tag").is_err());
        assert!(r.cstr("s").is_err());
    }
}
