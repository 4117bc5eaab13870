//! `TupleData`: the column values of one row in Insert, Update and Delete.
//!
//! ```text
//! Int16   number of columns (live columns: dropped and generated ones are left out)
//! then per column, one of:
//!   'n'                       NULL
//!   'u'                       unchanged TOASTed value (no data follows)
//!   't'  Int32 len, len bytes  the value in text format (the type's output function)
//!   'b'  Int32 len, len bytes  the value in binary format (the type's send function;
//!                              only with the `binary` option)
//! ```
//!
//! Why 'u' is its own variant and must never be read as NULL: a large value is
//! stored out of line in the table's TOAST relation. When an UPDATE does not
//! change such a column, the new row version points at the same TOAST data, and
//! pgoutput does not fetch it: it sends 'u' instead ("the value did not change,
//! you already have it"). An applier that wrote NULL there, or wrote the column
//! at all, would destroy the value at the target. The right apply is to leave
//! the column out of the target UPDATE's SET list. [`ColumnValue::UnchangedToast`]
//! makes that a separate case the applier has to handle.
//!
//! Values are kept as raw bytes ([`Bytes`]): text-format values are in the
//! server encoding and are passed on to the target as they are, so the decoder
//! neither validates nor converts them.

use bytes::Bytes;

use super::error::DecodeError;
use super::reader::Reader;

/// One row image: a value per live column, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// The values, one per column of the matching Relation message.
    pub columns: Vec<ColumnValue>,
}

/// One column of a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnValue {
    /// `'n'`: SQL NULL.
    Null,
    /// `'u'`: an out-of-line TOASTed value that the change did not modify, so
    /// its data was not sent. **Not NULL**: the target must keep its current
    /// value (see the module docs).
    UnchangedToast,
    /// `'t'`: the value in text format.
    Text(Bytes),
    /// `'b'`: the value in the type's binary (send/recv) format.
    Binary(Bytes),
}

impl ColumnValue {
    /// Whether this is SQL NULL. `false` for [`ColumnValue::UnchangedToast`].
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }

    /// Whether this is an unchanged TOASTed value whose data was not sent.
    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, ColumnValue::UnchangedToast)
    }

    /// The value's bytes, for text and binary values.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            ColumnValue::Text(b) | ColumnValue::Binary(b) => Some(b),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }

    /// A text-format value as `&str`, if it is one and is valid UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            ColumnValue::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

impl TupleData {
    /// Reads a `TupleData` at the reader's position.
    pub(crate) fn read(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
        let count = r.u16("TupleData column count")?;
        // Every column takes at least one byte: a lying count cannot make us
        // reserve more than the buffer could hold.
        let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining().len()));
        for _ in 0..count {
            let offset = r.offset();
            let value = match r.u8("TupleData column kind")? {
                b'n' => ColumnValue::Null,
                b'u' => ColumnValue::UnchangedToast,
                b't' => ColumnValue::Text(Bytes::copy_from_slice(
                    r.counted_bytes("TupleData text value")?,
                )),
                b'b' => ColumnValue::Binary(Bytes::copy_from_slice(
                    r.counted_bytes("TupleData binary value")?,
                )),
                got => {
                    return Err(DecodeError::BadTag {
                        field: "TupleData column kind",
                        offset,
                        got,
                        expected: "'n' (null), 'u' (unchanged TOAST), 't' (text) or 'b' (binary)",
                    })
                }
            };
            columns.push(value);
        }
        Ok(TupleData { columns })
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the tuple has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &[u8]) -> Result<TupleData, DecodeError> {
        let mut r = Reader::new(buf);
        let t = TupleData::read(&mut r)?;
        r.finish("TupleData")?;
        Ok(t)
    }

    #[test]
    fn all_four_kinds() {
        let buf = [
            0, 4, b'n', b'u', b't', 0, 0, 0, 2, b'4', b'2', b'b', 0, 0, 0, 1, 0xff,
        ];
        let t = read(&buf).unwrap();
        assert_eq!(
            t.columns,
            vec![
                ColumnValue::Null,
                ColumnValue::UnchangedToast,
                ColumnValue::Text(Bytes::from_static(b"42")),
                ColumnValue::Binary(Bytes::from_static(&[0xff])),
            ]
        );
        assert!(t.columns[0].is_null() && !t.columns[0].is_unchanged_toast());
        assert!(t.columns[1].is_unchanged_toast() && !t.columns[1].is_null());
        assert_eq!(t.columns[2].as_text(), Some("42"));
        assert_eq!(t.columns[3].as_bytes(), Some(&[0xff][..]));
        assert_eq!(t.columns[3].as_text(), None);
    }

    #[test]
    fn lying_column_count_is_truncation_not_allocation() {
        let err = read(&[0xff, 0xff, b'n']).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::Truncated {
                field: "TupleData column kind",
                offset: 3,
                ..
            }
        ));
    }

    #[test]
    fn bad_kind() {
        let err = read(&[0, 2, b'n', b'x']).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadTag {
                offset: 3,
                got: b'x',
                ..
            }
        ));
    }

    #[test]
    fn negative_length() {
        let err = read(&[0, 1, b't', 0x80, 0, 0, 0]).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::BadLength {
                offset: 3,
                length: -2147483648,
                ..
            }
        ));
    }
}
