//! Assembling the decoded pgoutput stream into whole source transactions.
//!
//! pgoutput sends `Begin`, then the relations it has not described yet on
//! this stream (`Relation`, `Type`), then the changes, then `Commit`; a
//! transaction replayed by a replicator at the source also carries an
//! `Origin`. The [`Assembler`] keeps the relation cache (a relation is sent
//! once per stream and again when it changes) and hands out a
//! [`SourceTxn`] per commit, so that the apply side sees whole transactions
//! only: nothing is applied before its commit is known, which is what makes
//! "apply in a target transaction, with the origin advanced in the same
//! commit" exactly-once.
//!
//! Pure: no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use crate::conflict::Op;
use crate::fence::{EpochStamp, EPOCH_MESSAGE_PREFIX};
use crate::pgoutput::{Begin, Commit, LogicalMessage, Message, Oid, OldTuple, Relation, TupleData};
use ezone_topology::{Epoch, ShardId};

/// One row change, with the relation it applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Insert {
        rel: Arc<Relation>,
        new: TupleData,
    },
    Update {
        rel: Arc<Relation>,
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        rel: Arc<Relation>,
        old: OldTuple,
    },
    Truncate {
        rels: Vec<Arc<Relation>>,
        cascade: bool,
        restart_identity: bool,
    },
    /// A transactional logical message (`pg_logical_emit_message(true, ...)`).
    Message(Message),
}

/// A whole source transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTxn {
    pub begin: Begin,
    /// Set if the transaction was itself replayed from another site: such a
    /// transaction is not sent on (loop prevention).
    pub origin: Option<String>,
    pub changes: Vec<Change>,
    pub commit: Commit,
    /// The epochs the source's fence stamped the transaction with, one per
    /// shard it wrote ([`crate::fence::EPOCH_MESSAGE_PREFIX`] messages, taken
    /// out of `changes`): what the applier judges ownership by.
    pub stamps: Vec<EpochStamp>,
}

impl SourceTxn {
    /// The epoch the transaction wrote `shard` under, if its fence said.
    pub fn stamp(&self, shard: ShardId) -> Option<Epoch> {
        self.stamps
            .iter()
            .find(|s| s.shard == shard)
            .map(|s| s.epoch)
    }
}

/// What the assembler yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Txn(SourceTxn),
    /// A non-transactional logical message (outside any transaction).
    Message(Message),
}

/// A stream that does not follow pgoutput's rules: the link must stop, as
/// applying it could corrupt data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("pgoutput stream: {what} outside a transaction")]
    OutsideTxn { what: &'static str },
    #[error("pgoutput stream: Begin inside a transaction (xid {open}) that never committed")]
    NestedBegin { open: u32 },
    #[error("pgoutput stream: a change for relation oid {oid}, which was never described by a Relation message")]
    UnknownRelation { oid: Oid },
    #[error("pgoutput stream: Commit at {commit} does not match Begin's final LSN {begin}")]
    CommitMismatch { begin: String, commit: String },
}

struct Open {
    begin: Begin,
    origin: Option<String>,
    changes: Vec<Change>,
    stamps: Vec<EpochStamp>,
    /// The memory `changes` takes, about ([`Change::approx_bytes`]).
    bytes: usize,
}

impl Change {
    /// The relation and the row image a row change is about (the new row,
    /// or the old one for a delete); `None` for truncates and messages.
    pub fn row_image(&self) -> Option<(&Arc<Relation>, &TupleData)> {
        match self {
            Change::Insert { rel, new } | Change::Update { rel, new, .. } => Some((rel, new)),
            Change::Delete { rel, old } => Some((rel, old.tuple())),
            Change::Truncate { .. } | Change::Message(_) => None,
        }
    }

    /// The operation of a row change, as a conflict records it; `None` for
    /// truncates and messages (never recorded as conflicts).
    pub fn op(&self) -> Option<Op> {
        match self {
            Change::Insert { .. } => Some(Op::Insert),
            Change::Update { .. } => Some(Op::Update),
            Change::Delete { .. } => Some(Op::Delete),
            Change::Truncate { .. } | Change::Message(_) => None,
        }
    }

    /// About how much memory this change takes once decoded: its values,
    /// their handles and the row's vectors. A bound for a link's memory
    /// ([`Assembler::open_bytes`]), not an exact count.
    pub fn approx_bytes(&self) -> usize {
        /// A change's own size (enum, vectors, the relation's handle).
        const CHANGE: usize = 128;
        /// A value's handle and its allocation's overhead.
        const VALUE: usize = 48;
        let tuple = |t: &TupleData| -> usize {
            t.columns
                .iter()
                .map(|c| match c {
                    crate::pgoutput::ColumnValue::Text(b)
                    | crate::pgoutput::ColumnValue::Binary(b) => VALUE + b.len(),
                    _ => VALUE,
                })
                .sum()
        };
        CHANGE
            + match self {
                Change::Insert { new, .. } => tuple(new),
                Change::Update { old, new, .. } => {
                    tuple(new) + old.as_ref().map_or(0, |o| tuple(o.tuple()))
                }
                Change::Delete { old, .. } => tuple(old.tuple()),
                Change::Truncate { rels, .. } => rels.len() * 8,
                Change::Message(m) => m.prefix.len() + m.content.len(),
            }
    }
}

impl Open {
    fn add(&mut self, change: Change) {
        self.bytes += change.approx_bytes();
        self.changes.push(change);
    }
}

/// Turns decoded messages into [`Event`]s.
#[derive(Default)]
pub struct Assembler {
    relations: HashMap<Oid, Arc<Relation>>,
    open: Option<Open>,
}

impl Assembler {
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// The relation cache, by source oid.
    pub fn relation(&self, oid: Oid) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    fn rel(&self, oid: Oid) -> Result<Arc<Relation>, AssembleError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or(AssembleError::UnknownRelation { oid })
    }

    fn open(&mut self, what: &'static str) -> Result<&mut Open, AssembleError> {
        self.open.as_mut().ok_or(AssembleError::OutsideTxn { what })
    }

    /// Feeds one message; returns an event when one is complete.
    pub fn push(&mut self, msg: LogicalMessage) -> Result<Option<Event>, AssembleError> {
        match msg {
            LogicalMessage::Begin(b) => {
                if let Some(o) = &self.open {
                    return Err(AssembleError::NestedBegin { open: o.begin.xid });
                }
                self.open = Some(Open {
                    begin: b,
                    origin: None,
                    changes: Vec::new(),
                    stamps: Vec::new(),
                    bytes: 0,
                });
            }
            LogicalMessage::Origin(o) => self.open("Origin")?.origin = Some(o.name),
            LogicalMessage::Relation(r) => {
                self.relations.insert(r.oid, Arc::new(r));
            }
            // Types only matter for binary values; the apply side resolves
            // column types from the target's catalog.
            LogicalMessage::Type(_) => {}
            LogicalMessage::Insert(i) => {
                let rel = self.rel(i.relation_oid)?;
                self.open("Insert")?.add(Change::Insert { rel, new: i.new });
            }
            LogicalMessage::Update(u) => {
                let rel = self.rel(u.relation_oid)?;
                self.open("Update")?.add(Change::Update {
                    rel,
                    old: u.old,
                    new: u.new,
                });
            }
            LogicalMessage::Delete(d) => {
                let rel = self.rel(d.relation_oid)?;
                self.open("Delete")?.add(Change::Delete { rel, old: d.old });
            }
            LogicalMessage::Truncate(t) => {
                let rels = t
                    .relation_oids
                    .iter()
                    .map(|oid| self.rel(*oid))
                    .collect::<Result<Vec<_>, _>>()?;
                let (cascade, restart_identity) = (t.cascade(), t.restart_identity());
                self.open("Truncate")?.add(Change::Truncate {
                    rels,
                    cascade,
                    restart_identity,
                });
            }
            LogicalMessage::Message(m) => {
                if m.is_transactional() && m.prefix == EPOCH_MESSAGE_PREFIX {
                    // Not a change to apply: the fence's word on the epoch.
                    // A stamp that does not parse is dropped; the change is
                    // then judged as an unstamped one.
                    let open = self.open("a transactional Message")?;
                    if let Some(stamp) = EpochStamp::parse(&m.content) {
                        if !open.stamps.contains(&stamp) {
                            open.stamps.push(stamp);
                        }
                    }
                } else if m.is_transactional() {
                    self.open("a transactional Message")?
                        .add(Change::Message(m));
                } else {
                    return Ok(Some(Event::Message(m)));
                }
            }
            LogicalMessage::Commit(c) => {
                let open = self
                    .open
                    .take()
                    .ok_or(AssembleError::OutsideTxn { what: "Commit" })?;
                if c.commit_lsn != open.begin.final_lsn {
                    return Err(AssembleError::CommitMismatch {
                        begin: open.begin.final_lsn.to_string(),
                        commit: c.commit_lsn.to_string(),
                    });
                }
                return Ok(Some(Event::Txn(SourceTxn {
                    begin: open.begin,
                    origin: open.origin,
                    changes: open.changes,
                    commit: c,
                    stamps: open.stamps,
                })));
            }
        }
        Ok(None)
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// About how much memory the open transaction's changes not yet taken
    /// take (0 outside a transaction).
    pub fn open_bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.bytes)
    }

    /// How many changes the open transaction holds, not yet taken.
    pub fn open_changes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.changes.len())
    }

    /// The open transaction's origin, if it was replayed from another site.
    pub fn open_origin(&self) -> Option<&str> {
        self.open.as_ref().and_then(|o| o.origin.as_deref())
    }

    /// Takes the open transaction's changes so far, for a transaction too
    /// large to hold whole: a [`SourceTxn`] with them, the stamps so far and
    /// a commit made from the Begin (its commit LSN and time; the end LSN is
    /// not known before the Commit, and is the commit LSN here). The
    /// transaction stays open: its later changes, and then its Commit, come
    /// out as usual, without the changes taken.
    ///
    /// Applying the parts in order in one target transaction is the same as
    /// applying the whole: a change is judged by the stamp of its shard,
    /// and the fence's trigger, running before the row is written, emits
    /// that stamp before the change in the stream.
    pub fn take_open_part(&mut self) -> Option<SourceTxn> {
        let open = self.open.as_mut()?;
        let changes = std::mem::take(&mut open.changes);
        open.bytes = 0;
        Some(SourceTxn {
            begin: open.begin.clone(),
            origin: open.origin.clone(),
            changes,
            commit: Commit {
                flags: 0,
                commit_lsn: open.begin.final_lsn,
                end_lsn: open.begin.final_lsn,
                commit_time: open.begin.commit_time,
            },
            stamps: open.stamps.clone(),
        })
    }

    /// Drops a half-received transaction (the stream broke mid-way; it will
    /// be sent again from the last confirmed position).
    pub fn reset_open(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::pgoutput::PgTimestamp;

    fn msg(transactional: bool, prefix: &str, content: &[u8]) -> LogicalMessage {
        LogicalMessage::Message(Message {
            flags: if transactional {
                Message::TRANSACTIONAL
            } else {
                0
            },
            lsn: Lsn(10),
            prefix: prefix.into(),
            content: bytes::Bytes::copy_from_slice(content),
        })
    }

    #[test]
    fn epoch_stamps_are_taken_out_of_the_changes() {
        let mut a = Assembler::new();
        let begin = Begin {
            final_lsn: Lsn(100),
            commit_time: PgTimestamp(0),
            xid: 7,
        };
        assert_eq!(a.push(LogicalMessage::Begin(begin)).unwrap(), None);
        for m in [
            msg(true, EPOCH_MESSAGE_PREFIX, b"3:17"),
            msg(true, EPOCH_MESSAGE_PREFIX, b"3:17"),
            msg(true, EPOCH_MESSAGE_PREFIX, b"4:2"),
            msg(true, EPOCH_MESSAGE_PREFIX, b"garbage"),
            msg(true, "ezone.switchover", b"token"),
        ] {
            assert_eq!(a.push(m).unwrap(), None);
        }
        let commit = Commit {
            flags: 0,
            commit_lsn: Lsn(100),
            end_lsn: Lsn(120),
            commit_time: PgTimestamp(0),
        };
        let Some(Event::Txn(t)) = a.push(LogicalMessage::Commit(commit)).unwrap() else {
            panic!("a whole transaction");
        };
        assert_eq!(t.stamp(3), Some(17));
        assert_eq!(t.stamp(4), Some(2));
        assert_eq!(t.stamp(5), None);
        assert_eq!(t.stamps.len(), 2);
        // The marker stays a change; the stamps do not.
        assert_eq!(t.changes.len(), 1);
        assert!(matches!(&t.changes[0], Change::Message(m) if m.prefix == "ezone.switchover"));
        // Outside a transaction an epoch message is an error like any other.
        assert!(a.push(msg(true, EPOCH_MESSAGE_PREFIX, b"3:1")).is_err());
    }
}
