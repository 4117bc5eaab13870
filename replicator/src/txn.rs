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

use crate::pgoutput::{Begin, Commit, LogicalMessage, Message, Oid, OldTuple, Relation, TupleData};

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
                self.open("Insert")?
                    .changes
                    .push(Change::Insert { rel, new: i.new });
            }
            LogicalMessage::Update(u) => {
                let rel = self.rel(u.relation_oid)?;
                self.open("Update")?.changes.push(Change::Update {
                    rel,
                    old: u.old,
                    new: u.new,
                });
            }
            LogicalMessage::Delete(d) => {
                let rel = self.rel(d.relation_oid)?;
                self.open("Delete")?
                    .changes
                    .push(Change::Delete { rel, old: d.old });
            }
            LogicalMessage::Truncate(t) => {
                let rels = t
                    .relation_oids
                    .iter()
                    .map(|oid| self.rel(*oid))
                    .collect::<Result<Vec<_>, _>>()?;
                let (cascade, restart_identity) = (t.cascade(), t.restart_identity());
                self.open("Truncate")?.changes.push(Change::Truncate {
                    rels,
                    cascade,
                    restart_identity,
                });
            }
            LogicalMessage::Message(m) => {
                if m.is_transactional() {
                    self.open("a transactional Message")?
                        .changes
                        .push(Change::Message(m));
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
                })));
            }
        }
        Ok(None)
    }

    /// Whether a transaction has begun and not yet committed.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Drops a half-received transaction (the stream broke mid-way; it will
    /// be sent again from the last confirmed position).
    pub fn reset_open(&mut self) {
        self.open = None;
    }
}
