//! Decoder for the `pgoutput` logical replication protocol, versions 1 and 2
//! (version 2's streamed blocks are [`stream`]'s).
//!
//! # Where these bytes come from
//!
//! The source side of a link opens a replication connection, runs
//! `START_REPLICATION SLOT s LOGICAL <lsn> (proto_version '2',
//! publication_names '...', messages 'true', streaming 'on')` (or version 1,
//! without streaming) and receives a CopyBoth stream.
//! Each CopyData frame from the server is either a keepalive or an XLogData
//! frame ([`copy`] decodes both); the payload of an XLogData frame is exactly
//! one pgoutput message, decoded here by [`decode`]. The authority for the
//! layout is PostgreSQL's `src/backend/replication/logical/proto.c` (the
//! `logicalrep_write_*` functions) and the "Logical Replication Message
//! Formats" chapter of the documentation.
//!
//! # Message layout (integers big-endian, strings NUL-terminated)
//!
//! ```text
//! 'B' Begin     Int64 final LSN, Int64 commit time, Int32 xid
//! 'C' Commit    Int8 flags (0), Int64 commit LSN, Int64 end LSN, Int64 commit time
//! 'O' Origin    Int64 commit LSN at the origin, String origin name
//! 'R' Relation  Int32 oid, String namespace ("" = pg_catalog), String name,
//!               Int8 replica identity ('d','n','f','i'), Int16 ncols, then per column:
//!               Int8 flags (1 = part of the key), String name, Int32 type oid, Int32 typmod
//! 'Y' Type      Int32 oid, String namespace ("" = pg_catalog), String name
//! 'I' Insert    Int32 relation oid, 'N', TupleData
//! 'U' Update    Int32 relation oid, ['K' TupleData | 'O' TupleData], 'N', TupleData
//! 'D' Delete    Int32 relation oid, 'K' or 'O', TupleData
//! 'T' Truncate  Int32 nrels, Int8 options (1 = CASCADE, 2 = RESTART IDENTITY), nrels x Int32 oid
//! 'M' Message   Int8 flags (1 = transactional), Int64 LSN, String prefix, Int32 len, len bytes
//! ```
//!
//! [`mod@tuple`] documents `TupleData`, including why an unchanged TOASTed value
//! ('u') is never the same as NULL.
//!
//! # What the replicator relies on
//!
//! - A transaction arrives as Begin, its changes, Commit; its changes refer to
//!   relations by oid, and a Relation (and, for non-built-in column types, a
//!   Type) message describing that oid is sent before the first change that
//!   needs it in each session and again after the table's schema changes. The
//!   applier keeps the latest Relation per oid and checks it against the target
//!   (schema drift stops the link rather than misapplying columns).
//! - Commit's `end_lsn` is the position to confirm to the slot once the target
//!   transaction is durable.
//! - An Origin message right after Begin means the transaction was itself
//!   applied by a replicator (it carries a replication origin); loop prevention
//!   drops such transactions instead of sending them on.
//! - A Message (`pg_logical_emit_message`) with the `ezone` prefix marks a cut
//!   in the source's WAL for planned switchover. Its content is raw bytes and
//!   need not be UTF-8; the prefix must be.
//! - Outside a streamed block data messages carry no xid (in both versions);
//!   inside one ([`stream`]) each carries its (sub)transaction's xid after the
//!   tag. [`decode`] refuses the streaming framing and two-phase messages with
//!   [`DecodeError::UnknownMessage`] rather than guessing: the link routes a
//!   block to [`stream`] and the spool before anything is decoded here.
//!
//! Names (namespaces, relations, columns, types, origin, message prefix) are
//! decoded as UTF-8 `String`s; invalid UTF-8 is a [`DecodeError`]. An empty
//! namespace is reported as `pg_catalog`, as Postgres' own reader does.
//!
//! Nothing here does I/O, and no input can make the decoder panic: all reads go
//! through a bounds-checked cursor and every message must be consumed exactly.

pub mod copy;
mod error;
mod reader;
pub mod stream;
mod timestamp;
pub mod tuple;

use bytes::Bytes;

pub use self::copy::{
    decode_copy_data, encode_standby_status, ReplicationMessage, StandbyStatusUpdate,
};
pub use self::error::DecodeError;
use self::reader::Reader;
pub use self::timestamp::{PgTimestamp, PG_EPOCH_UNIX_SECS};
pub use self::tuple::{ColumnValue, TupleData};
use crate::lsn::Lsn;

/// A Postgres object identifier (of a relation or a type).
pub type Oid = u32;

/// A Postgres transaction id (32-bit, as sent in Begin).
pub type Xid = u32;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    /// `'B'`: a transaction starts.
    Begin(Begin),
    /// `'C'`: the transaction ends.
    Commit(Commit),
    /// `'O'`: the transaction was replayed from another node (it has a
    /// replication origin).
    Origin(Origin),
    /// `'R'`: describes a relation that later changes refer to by oid.
    Relation(Relation),
    /// `'Y'`: describes a non-built-in type used by a relation's columns.
    Type(Type),
    /// `'I'`: a row was inserted.
    Insert(Insert),
    /// `'U'`: a row was updated.
    Update(Update),
    /// `'D'`: a row was deleted.
    Delete(Delete),
    /// `'T'`: one or more relations were truncated.
    Truncate(Truncate),
    /// `'M'`: a logical decoding message (`pg_logical_emit_message`).
    Message(Message),
}

/// `'B'`: the start of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// The commit time (for a transaction with a replication origin, the
    /// origin's commit time as set by `pg_replication_origin_xact_setup`).
    pub commit_time: PgTimestamp,
    /// The transaction id at the source.
    pub xid: Xid,
}

/// `'C'`: the end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Unused by Postgres 15 (always 0); kept as sent.
    pub flags: u8,
    /// The LSN of the commit record.
    pub commit_lsn: Lsn,
    /// The end of the commit record: the position to confirm to the slot once
    /// this transaction is durably applied.
    pub end_lsn: Lsn,
    /// The commit time.
    pub commit_time: PgTimestamp,
}

/// `'O'`: the replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN of the transaction on the origin server.
    pub commit_lsn: Lsn,
    /// The replication origin's name.
    pub name: String,
}

/// A relation's `REPLICA IDENTITY`, which decides what old-row data Update and
/// Delete carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `'d'`: the primary key (old key sent as `'K'` when the key changes, and on delete).
    Default,
    /// `'n'`: nothing (updates and deletes cannot be published).
    Nothing,
    /// `'f'`: the whole old row (sent as `'O'`).
    Full,
    /// `'i'`: the columns of a chosen unique index (sent as `'K'`).
    Index,
}

impl ReplicaIdentity {
    /// The byte Postgres stores in `pg_class.relreplident`.
    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
        }
    }
}

/// `'R'`: a relation's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's oid, used by later change messages.
    pub oid: Oid,
    /// The schema (`pg_catalog` when Postgres sent the empty string).
    pub namespace: String,
    /// The relation name.
    pub name: String,
    /// The replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// The live (not dropped, not generated) columns, in order: the order of
    /// values in every TupleData for this relation.
    pub columns: Vec<RelationColumn>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Flags as sent; bit 1 ([`RelationColumn::KEY_FLAG`]) marks a column of the
    /// replica identity key.
    pub flags: u8,
    /// The column name.
    pub name: String,
    /// The column's type oid.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), -1 when there is none.
    pub type_modifier: i32,
}

impl RelationColumn {
    /// The flag bit marking a replica identity (key) column.
    pub const KEY_FLAG: u8 = 1;

    /// Whether the column is part of the replica identity key (every column
    /// with `REPLICA IDENTITY FULL`).
    pub fn is_key(&self) -> bool {
        self.flags & Self::KEY_FLAG != 0
    }
}

impl Relation {
    /// The key columns, in order.
    pub fn key_columns(&self) -> impl Iterator<Item = &RelationColumn> {
        self.columns.iter().filter(|c| c.is_key())
    }
}

/// `'Y'`: a data type's name, sent before a relation that uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Type {
    /// The type's oid.
    pub oid: Oid,
    /// The schema (`pg_catalog` when Postgres sent the empty string).
    pub namespace: String,
    /// The type name.
    pub name: String,
}

/// `'I'`: an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The relation, described by an earlier [`Relation`].
    pub relation_oid: Oid,
    /// The new row.
    pub new: TupleData,
}

/// The old row image carried by an Update or a Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `'K'`: only the replica identity key columns have values; the other
    /// columns are sent as NULL (`'n'`) and mean "not sent", not NULL.
    Key(TupleData),
    /// `'O'`: the whole old row (`REPLICA IDENTITY FULL`).
    Full(TupleData),
}

impl OldTuple {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `'U'`: an updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The relation, described by an earlier [`Relation`].
    pub relation_oid: Oid,
    /// The old row: `None` with the default replica identity unless the key
    /// changed, `Key` for a changed key, `Full` with `REPLICA IDENTITY FULL`.
    pub old: Option<OldTuple>,
    /// The new row; [`ColumnValue::UnchangedToast`] marks columns to leave alone.
    pub new: TupleData,
}

/// `'D'`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The relation, described by an earlier [`Relation`].
    pub relation_oid: Oid,
    /// The old row's key (`'K'`) or whole old row (`'O'`).
    pub old: OldTuple,
}

/// `'T'`: truncated relations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// Option bits as sent: [`Truncate::CASCADE`], [`Truncate::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated relations.
    pub relation_oids: Vec<Oid>,
}

impl Truncate {
    /// `TRUNCATE ... CASCADE`.
    pub const CASCADE: u8 = 1;
    /// `TRUNCATE ... RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// Whether `CASCADE` was given.
    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    /// Whether `RESTART IDENTITY` was given.
    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// `'M'`: a logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Flag bits as sent: [`Message::TRANSACTIONAL`].
    pub flags: u8,
    /// The LSN of the message record.
    pub lsn: Lsn,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: String,
    /// The content: arbitrary bytes, not necessarily UTF-8.
    pub content: Bytes,
}

impl Message {
    /// The message was emitted as part of a transaction (and arrives between
    /// its Begin and Commit); otherwise it was emitted immediately, outside any
    /// Begin/Commit.
    pub const TRANSACTIONAL: u8 = 1;

    /// Whether the message is transactional.
    pub fn is_transactional(&self) -> bool {
        self.flags & Self::TRANSACTIONAL != 0
    }
}

impl LogicalMessage {
    /// The message's name, as used in errors and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LogicalMessage::Begin(_) => "Begin",
            LogicalMessage::Commit(_) => "Commit",
            LogicalMessage::Origin(_) => "Origin",
            LogicalMessage::Relation(_) => "Relation",
            LogicalMessage::Type(_) => "Type",
            LogicalMessage::Insert(_) => "Insert",
            LogicalMessage::Update(_) => "Update",
            LogicalMessage::Delete(_) => "Delete",
            LogicalMessage::Truncate(_) => "Truncate",
            LogicalMessage::Message(_) => "Message",
        }
    }
}

/// Decodes one pgoutput (protocol version 1) message: the payload of one
/// XLogData frame. The buffer must hold exactly one message.
pub fn decode(buf: &[u8]) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let tag = read_tag(&mut r)?;
    decode_body(tag, r)
}

/// The one-byte message tag every message starts with.
fn read_tag(r: &mut Reader<'_>) -> Result<u8, DecodeError> {
    r.u8("message tag").map_err(|_| DecodeError::Empty)
}

/// Decodes what follows the tag (and, inside a stream block, the xid): the
/// same layout in both protocol versions.
fn decode_body(tag: u8, mut r: Reader<'_>) -> Result<LogicalMessage, DecodeError> {
    let r = &mut r;
    let message = match tag {
        b'B' => LogicalMessage::Begin(read_begin(r)?),
        b'C' => LogicalMessage::Commit(read_commit(r)?),
        b'O' => LogicalMessage::Origin(read_origin(r)?),
        b'R' => LogicalMessage::Relation(read_relation(r)?),
        b'Y' => LogicalMessage::Type(read_type(r)?),
        b'I' => LogicalMessage::Insert(read_insert(r)?),
        b'U' => LogicalMessage::Update(read_update(r)?),
        b'D' => LogicalMessage::Delete(read_delete(r)?),
        b'T' => LogicalMessage::Truncate(read_truncate(r)?),
        b'M' => LogicalMessage::Message(read_message(r)?),
        other => return Err(DecodeError::UnknownMessage(other)),
    };
    r.finish(message.kind())?;
    Ok(message)
}

fn read_begin(r: &mut Reader<'_>) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: Lsn(r.u64("Begin final LSN")?),
        commit_time: PgTimestamp(r.i64("Begin commit time")?),
        xid: r.u32("Begin xid")?,
    })
}

fn read_commit(r: &mut Reader<'_>) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("Commit flags")?,
        commit_lsn: Lsn(r.u64("Commit commit LSN")?),
        end_lsn: Lsn(r.u64("Commit end LSN")?),
        commit_time: PgTimestamp(r.i64("Commit commit time")?),
    })
}

fn read_origin(r: &mut Reader<'_>) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: Lsn(r.u64("Origin commit LSN")?),
        name: r.cstr("Origin name")?.to_owned(),
    })
}

/// A namespace string; `""` is how pgoutput abbreviates `pg_catalog`.
fn read_namespace(r: &mut Reader<'_>, field: &'static str) -> Result<String, DecodeError> {
    let nsp = r.cstr(field)?;
    Ok(if nsp.is_empty() { "pg_catalog" } else { nsp }.to_owned())
}

fn read_relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let oid = r.u32("Relation oid")?;
    let namespace = read_namespace(r, "Relation namespace")?;
    let name = r.cstr("Relation name")?.to_owned();
    let offset = r.offset();
    let replica_identity = match r.u8("Relation replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        got => {
            return Err(DecodeError::BadTag {
                field: "Relation replica identity",
                offset,
                got,
                expected: "'d' (default), 'n' (nothing), 'f' (full) or 'i' (index)",
            })
        }
    };
    let count = r.u16("Relation column count")?;
    // A column takes at least 10 bytes (flags, NUL, two Int32s).
    let mut columns = Vec::with_capacity(usize::from(count).min(r.remaining().len() / 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            flags: r.u8("Relation column flags")?,
            name: r.cstr("Relation column name")?.to_owned(),
            type_oid: r.u32("Relation column type oid")?,
            type_modifier: r.i32("Relation column type modifier")?,
        });
    }
    Ok(Relation {
        oid,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn read_type(r: &mut Reader<'_>) -> Result<Type, DecodeError> {
    Ok(Type {
        oid: r.u32("Type oid")?,
        namespace: read_namespace(r, "Type namespace")?,
        name: r.cstr("Type name")?.to_owned(),
    })
}

/// Reads the one-byte tuple marker and checks it is one of `allowed`.
fn read_marker(
    r: &mut Reader<'_>,
    field: &'static str,
    allowed: &[u8],
    expected: &'static str,
) -> Result<u8, DecodeError> {
    let offset = r.offset();
    let got = r.u8(field)?;
    if allowed.contains(&got) {
        Ok(got)
    } else {
        Err(DecodeError::BadTag {
            field,
            offset,
            got,
            expected,
        })
    }
}

fn read_insert(r: &mut Reader<'_>) -> Result<Insert, DecodeError> {
    let relation_oid = r.u32("Insert relation oid")?;
    read_marker(r, "Insert tuple marker", b"N", "'N' (new tuple)")?;
    Ok(Insert {
        relation_oid,
        new: TupleData::read(r)?,
    })
}

fn read_update(r: &mut Reader<'_>) -> Result<Update, DecodeError> {
    let relation_oid = r.u32("Update relation oid")?;
    let marker = read_marker(
        r,
        "Update tuple marker",
        b"KON",
        "'K' (old key), 'O' (old tuple) or 'N' (new tuple)",
    )?;
    let old = match marker {
        b'K' => Some(OldTuple::Key(TupleData::read(r)?)),
        b'O' => Some(OldTuple::Full(TupleData::read(r)?)),
        _ => None,
    };
    if old.is_some() {
        read_marker(r, "Update new tuple marker", b"N", "'N' (new tuple)")?;
    }
    Ok(Update {
        relation_oid,
        old,
        new: TupleData::read(r)?,
    })
}

fn read_delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let relation_oid = r.u32("Delete relation oid")?;
    let marker = read_marker(
        r,
        "Delete tuple marker",
        b"KO",
        "'K' (old key) or 'O' (old tuple)",
    )?;
    let tuple = TupleData::read(r)?;
    let old = if marker == b'K' {
        OldTuple::Key(tuple)
    } else {
        OldTuple::Full(tuple)
    };
    Ok(Delete { relation_oid, old })
}

fn read_truncate(r: &mut Reader<'_>) -> Result<Truncate, DecodeError> {
    let count = r.u32("Truncate relation count")?;
    let options = r.u8("Truncate options")?;
    // Check the whole oid array is there before reserving room for it.
    let needed = usize::try_from(count)
        .ok()
        .and_then(|n| n.checked_mul(4))
        .unwrap_or(usize::MAX);
    let oids = r.bytes(needed, "Truncate relation oids")?;
    // `oids` is exactly `count` big-endian Int32s.
    let relation_oids = oids
        .chunks_exact(4)
        .map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
        .collect();
    Ok(Truncate {
        options,
        relation_oids,
    })
}

fn read_message(r: &mut Reader<'_>) -> Result<Message, DecodeError> {
    Ok(Message {
        flags: r.u8("Message flags")?,
        lsn: Lsn(r.u64("Message LSN")?),
        prefix: r.cstr("Message prefix")?.to_owned(),
        content: Bytes::copy_from_slice(r.counted_bytes("Message content")?),
    })
}
