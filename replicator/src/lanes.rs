//! Parallel apply: which batches of a link may run beside which. Pure.
//!
//! A link applies its batches (consecutive source transactions, one target
//! transaction each) over `apply_workers` target connections, the *lanes*.
//! Two rules keep it exactly once and equal to applying one by one:
//!
//! 1. **Commits in source order.** Each batch waits, before its COMMIT, for
//!    the batch before it to have committed (a chain of signals, see
//!    `link.rs`). So what is committed is always a prefix of the source's
//!    order, each lane's origin advances with its own commits, and the
//!    link's progress is the furthest of its lanes' origins: after a crash
//!    the link restarts there, with no gap and nothing applied twice.
//! 2. **Only disjoint batches side by side.** A batch starts only when no
//!    batch still in flight touches a row it touches ([`Footprint`]: the
//!    rows by table and key, hashed). Batches in flight together touch
//!    disjoint rows, so the order they run in cannot change what they do:
//!    the result is that of applying them one after the other. A truncate
//!    touches every row (a barrier). Tables where changes of different rows
//!    can still meet (a unique index beyond the key, a trigger that fires
//!    for replayed rows) are handled by the applier: a batch with such a
//!    table waits for the batch before it to commit before it begins.
//!
//! A key hash collision only makes two batches wait for each other: safe.

pub mod sizing;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::pgoutput::{ColumnValue, Relation, TupleData};
use crate::txn::Change;

/// The rows a batch touches: each row's hash once per change of it, in the
/// order the batch got them (so a growing batch is checked only for the
/// rows it got since, see [`Checked`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footprint {
    rows: Vec<u64>,
    /// It touches every row (a truncate): nothing runs beside it.
    barrier: bool,
}

impl Footprint {
    /// Adds the rows `change` touches: its key (the replica identity
    /// columns) in the new image, and in the old one when sent (a key that
    /// changed).
    pub fn add(&mut self, change: &Change) {
        match change {
            Change::Insert { rel, new } => self.add_row(rel, new),
            Change::Update { rel, old, new } => {
                self.add_row(rel, new);
                if let Some(old) = old {
                    self.add_row(rel, old.tuple());
                }
            }
            Change::Delete { rel, old } => self.add_row(rel, old.tuple()),
            Change::Truncate { .. } => self.barrier = true,
            // A marker is its own row of the markers table.
            Change::Message(_) => {}
        }
    }

    fn add_row(&mut self, rel: &Relation, image: &TupleData) {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        rel.namespace.hash(&mut h);
        rel.name.hash(&mut h);
        for (col, value) in rel.columns.iter().zip(&image.columns) {
            if col.is_key() {
                match value {
                    ColumnValue::Text(b) => (0u8, b.as_ref()).hash(&mut h),
                    ColumnValue::Binary(b) => (1u8, b.as_ref()).hash(&mut h),
                    ColumnValue::Null => 2u8.hash(&mut h),
                    ColumnValue::UnchangedToast => 3u8.hash(&mut h),
                }
            }
        }
        self.rows.push(h.finish());
    }

    /// Whether this batch and `other` touch a common row (the rule
    /// [`InFlight`] keeps, pairwise: for the tests).
    #[cfg(test)]
    pub fn meets(&self, other: &Footprint) -> bool {
        if self.barrier || other.barrier {
            return true;
        }
        let mine: std::collections::HashSet<u64> = self.rows.iter().copied().collect();
        other.rows.iter().any(|r| mine.contains(r))
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && !self.barrier
    }
}

/// A hasher for keys that are hashes already (a row's, from
/// [`Footprint::add`]): they are their own hash.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// How far a growing pending batch has been checked against the batches in
/// flight: a link asks whether its pending batch may start at every event
/// while its lanes are busy, and checking the whole batch each time cost a
/// drain more CPU than applying it (measured 2026-12-05: 3 s of a 7 s drain,
/// in hashing). The answer for the rows already checked holds until the
/// batches in flight change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    rows: usize,
    generation: u64,
    meets: bool,
}

/// The footprints of the batches in flight, oldest first, and every row
/// they touch (counted: two batches in flight never share one, but a batch
/// may change a row more than once).
#[derive(Debug, Default)]
pub struct InFlight {
    batches: VecDeque<Footprint>,
    rows: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    barriers: usize,
    /// Changes at every start and commit ([`Checked`]).
    generation: u64,
}

impl InFlight {
    /// Whether a batch with footprint `fp` may start now: it touches no row
    /// of a batch in flight.
    pub fn may_start(&self, fp: &Footprint) -> bool {
        let mut fresh = Checked {
            generation: self.generation.wrapping_add(1),
            ..Checked::default()
        };
        self.may_start_from(fp, &mut fresh)
    }

    /// [`InFlight::may_start`] for a batch that grows between the calls:
    /// only the rows it got since `checked` are looked at, unless the
    /// batches in flight changed since.
    pub fn may_start_from(&self, fp: &Footprint, checked: &mut Checked) -> bool {
        if checked.generation != self.generation || checked.rows > fp.rows.len() {
            *checked = Checked {
                generation: self.generation,
                ..Checked::default()
            };
        }
        if !checked.meets {
            checked.meets = self.barriers > 0
                || (fp.barrier && !self.batches.is_empty())
                || fp.rows[checked.rows..]
                    .iter()
                    .any(|r| self.rows.contains_key(r));
            checked.rows = fp.rows.len();
        }
        !checked.meets
    }

    /// A batch started (it is the youngest).
    pub fn started(&mut self, fp: Footprint) {
        for r in &fp.rows {
            *self.rows.entry(*r).or_insert(0) += 1;
        }
        self.barriers += usize::from(fp.barrier);
        self.batches.push_back(fp);
        self.generation = self.generation.wrapping_add(1);
    }

    /// The oldest batch committed (batches commit in the order they
    /// started).
    pub fn committed(&mut self) {
        if let Some(fp) = self.batches.pop_front() {
            for r in &fp.rows {
                if let Some(n) = self.rows.get_mut(r) {
                    *n -= 1;
                    if *n == 0 {
                        self.rows.remove(r);
                    }
                }
            }
            self.barriers -= usize::from(fp.barrier);
        }
        self.generation = self.generation.wrapping_add(1);
    }

    pub fn len(&self) -> usize {
        self.batches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{OldTuple, RelationColumn, ReplicaIdentity};
    use bytes::Bytes;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn rel(name: &str) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    flags: RelationColumn::KEY_FLAG,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    flags: 0,
                    name: "v".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        })
    }

    fn row(id: u32, v: &str) -> TupleData {
        TupleData {
            columns: vec![
                ColumnValue::Text(Bytes::from(id.to_string())),
                ColumnValue::Text(Bytes::from(v.to_string())),
            ],
        }
    }

    fn fp(changes: &[Change]) -> Footprint {
        let mut f = Footprint::default();
        for c in changes {
            f.add(c);
        }
        f
    }

    #[test]
    fn the_same_row_meets_whatever_else_changed() {
        let t = rel("t");
        let a = fp(&[Change::Insert {
            rel: t.clone(),
            new: row(1, "a"),
        }]);
        let b = fp(&[Change::Update {
            rel: t.clone(),
            old: None,
            new: row(1, "b"),
        }]);
        let c = fp(&[Change::Delete {
            rel: t.clone(),
            old: OldTuple::Key(row(1, "")),
        }]);
        assert!(a.meets(&b) && b.meets(&c) && a.meets(&c));
        let other = fp(&[Change::Insert {
            rel: t,
            new: row(2, "a"),
        }]);
        assert!(!a.meets(&other));
        // The same key in another table is another row.
        let u = fp(&[Change::Insert {
            rel: rel("u"),
            new: row(1, "a"),
        }]);
        assert!(!a.meets(&u));
    }

    #[test]
    fn a_changed_key_touches_both_rows_and_a_truncate_every_row() {
        let t = rel("t");
        let moved = fp(&[Change::Update {
            rel: t.clone(),
            old: Some(OldTuple::Key(row(1, ""))),
            new: row(9, "x"),
        }]);
        for id in [1, 9] {
            assert!(moved.meets(&fp(&[Change::Insert {
                rel: t.clone(),
                new: row(id, "y"),
            }])));
        }
        let truncate = fp(&[Change::Truncate {
            rels: vec![rel("z")],
            cascade: false,
            restart_identity: false,
        }]);
        assert!(truncate.meets(&moved) && moved.meets(&truncate));
        assert!(truncate.meets(&Footprint::default()));
    }

    #[test]
    fn in_flight_batches_leave_in_start_order() {
        let t = rel("t");
        let one = fp(&[Change::Insert {
            rel: t.clone(),
            new: row(1, "a"),
        }]);
        let two = fp(&[Change::Insert {
            rel: t,
            new: row(2, "a"),
        }]);
        let mut f = InFlight::default();
        assert!(f.may_start(&one));
        f.started(one.clone());
        assert!(f.may_start(&two) && !f.may_start(&one));
        f.started(two.clone());
        f.committed();
        assert!(f.may_start(&one) && !f.may_start(&two));
        f.committed();
        assert!(f.is_empty());
    }

    #[test]
    fn a_growing_batch_is_checked_for_its_new_rows_until_the_flight_changes() {
        let t = rel("t");
        let ins = |id| Change::Insert {
            rel: t.clone(),
            new: row(id, "a"),
        };
        let mut f = InFlight::default();
        f.started(fp(&[ins(1), ins(2)]));
        let mut pending = fp(&[ins(3)]);
        let mut c = Checked::default();
        assert!(f.may_start_from(&pending, &mut c));
        pending.add(&ins(2));
        assert!(!f.may_start_from(&pending, &mut c));
        pending.add(&ins(4));
        assert!(!f.may_start_from(&pending, &mut c), "it still meets");
        // The batch it met committed: checked again whole.
        f.committed();
        assert!(f.may_start_from(&pending, &mut c));
        assert!(f.is_empty());
        // A barrier in flight stops everything, even an empty batch; a
        // barrier waits for an empty flight.
        let truncate = fp(&[Change::Truncate {
            rels: vec![rel("z")],
            cascade: false,
            restart_identity: false,
        }]);
        assert!(f.may_start(&truncate));
        f.started(truncate.clone());
        assert!(!f.may_start(&Footprint::default()));
        f.committed();
        f.started(fp(&[ins(9)]));
        assert!(!f.may_start(&truncate));
        f.committed();
        // A row changed twice by one batch is the flight's until it commits.
        f.started(fp(&[ins(5), ins(5)]));
        assert!(!f.may_start(&fp(&[ins(5)])));
        f.committed();
        assert!(f.may_start(&fp(&[ins(5)])));
    }

    /// One source transaction of the model: it reads and writes some
    /// accounts (a transfer: what it writes depends on what it read).
    #[derive(Debug, Clone)]
    struct Txn {
        moves: Vec<(u32, u32, i64)>,
    }

    /// What every account holds at first.
    const OPENING: i64 = 60;

    /// What a transaction does to the model, read-modify-write: a transfer
    /// of at most what the payer has, so the order of two transfers from
    /// one account changes the outcome.
    fn run(txn: &Txn, db: &mut BTreeMap<u32, i64>) {
        for (from, to, amount) in &txn.moves {
            let have = *db.entry(*from).or_insert(OPENING);
            let paid = (*amount).min(have.max(0));
            *db.entry(*from).or_insert(OPENING) -= paid;
            *db.entry(*to).or_insert(OPENING) += paid;
        }
    }

    fn footprint(txn: &Txn) -> Footprint {
        let t = rel("accounts");
        let mut f = Footprint::default();
        for (from, to, _) in &txn.moves {
            for id in [from, to] {
                f.add(&Change::Update {
                    rel: t.clone(),
                    old: None,
                    new: row(*id, "?"),
                });
            }
        }
        f
    }

    fn txns() -> impl Strategy<Value = Vec<Txn>> {
        let mv = (0u32..12, 0u32..12, 1i64..50);
        let txn = prop::collection::vec(mv, 1..4).prop_map(|moves| Txn { moves });
        prop::collection::vec(txn, 1..60)
    }

    proptest! {
        /// Dependent transactions (transfers between a few accounts) run by
        /// the lanes' rules, with the lanes finishing in any order the rules
        /// allow, end as applying them one by one, and the money is all
        /// there.
        #[test]
        fn lanes_end_as_one_by_one(
            txns in txns(),
            lanes in 1usize..5,
            picks in prop::collection::vec(any::<u16>(), 200),
        ) {
            let mut serial = BTreeMap::new();
            for t in &txns {
                run(t, &mut serial);
            }

            // Batches of one transaction. Each started batch runs at some
            // moment before its commit; commits go in start order.
            let mut db = BTreeMap::new();
            let mut in_flight = InFlight::default();
            let mut running: VecDeque<(usize, bool)> = VecDeque::new(); // (txn, ran yet)
            let mut next = 0;
            let mut pick = picks.into_iter().cycle();
            while next < txns.len() || !running.is_empty() {
                let choice = pick.next().unwrap_or(0) as usize;
                let fp = txns.get(next).map(footprint);
                let can_start = running.len() < lanes
                    && fp.as_ref().is_some_and(|f| in_flight.may_start(f));
                if can_start && choice.is_multiple_of(3) {
                    in_flight.started(fp.unwrap_or_default());
                    running.push_back((next, false));
                    next += 1;
                    continue;
                }
                // Run some started batch that has not run (any of them: they
                // are disjoint), or commit the oldest once it ran.
                let pending: Vec<usize> = running
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, ran))| !ran)
                    .map(|(i, _)| i)
                    .collect();
                if !pending.is_empty() && (choice % 3 == 1 || !running[0].1) {
                    let i = pending[choice % pending.len()];
                    run(&txns[running[i].0], &mut db);
                    running[i].1 = true;
                } else if running.front().is_some_and(|(_, ran)| *ran) {
                    running.pop_front();
                    in_flight.committed();
                } else if can_start {
                    in_flight.started(fp.unwrap_or_default());
                    running.push_back((next, false));
                    next += 1;
                } else {
                    // Nothing may start and nothing ran: run the oldest.
                    let i = pending[0];
                    run(&txns[running[i].0], &mut db);
                    running[i].1 = true;
                }
                // The rule itself: batches in flight are pairwise disjoint.
                for (i, (a, _)) in running.iter().enumerate() {
                    for (b, _) in running.iter().skip(i + 1) {
                        prop_assert!(!footprint(&txns[*a]).meets(&footprint(&txns[*b])));
                    }
                }
            }
            prop_assert_eq!(&db, &serial);
            let total: i64 = db.values().sum::<i64>() - OPENING * db.len() as i64;
            prop_assert_eq!(total, 0);
        }
    }
}
