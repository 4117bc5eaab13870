//! The fast path's plan: a batch's row changes written as few set statements
//! (see [`crate::sql::insert_set_sql`] and its siblings) instead of one
//! statement per row.
//!
//! ```text
//!  source order (a batch of transactions, one target transaction):
//!    I acc 7 │ U br 3 │ I hist 90 │ U acc 8 │ U br 3 │ I hist 91 │ ...
//!  plan (table by table, in order of first appearance):
//!    accounts  INSERT set {7, ...}      UPDATE set {8, ...}
//!    branches  UPDATE set {3 (its last version), ...}
//!    history   INSERT set {90, 91, ...}
//! ```
//!
//! The apply side runs the plan only when every set statement touches
//! exactly its rows (an INSERT inserts each one, an UPDATE or DELETE finds
//! each one) and every row statement touches its row. Anything else is what
//! the careful path would call a conflict, or might be: the target
//! transaction is rolled back and the batch applied there, one change at a
//! time in source order, where it is decided and recorded. So the plan only
//! has to be right when nothing conflicts, and then the committed state is
//! the one of applying every change in source order:
//!
//! - **The batch commits as one target transaction** (with the origin's
//!   progress): nobody sees the order of statements inside it, only its
//!   result. Source commit order between batches is unchanged.
//! - **A row's changes keep their source order.** A row's final version
//!   depends only on the changes to its primary key, in their order: a
//!   change joins the open group of its kind and columns only if that group
//!   runs after every earlier change to its key, else it opens a new group
//!   after all others of its table. Changes to different rows commute:
//!   replayed rows fire no triggers and no foreign-key checks
//!   (`session_replication_role = replica`); a secondary unique index that one
//!   change frees for a later one would make the reordered statement fail or
//!   skip its row, which sends the batch the careful way.
//! - **A row updated twice with the same columns keeps the last version
//!   only.** Each update writes every column of the shape with a constant, so
//!   the last one overwrites all the earlier one wrote; and both find the row
//!   or the later one misses it too (nothing in between touches that key):
//!   same final row, same conflicts. A row inserted or deleted twice in one
//!   group is a certain conflict: the plan gives up at once.
//! - **Unchanged TOAST** (`'u'`) columns are left out as in [`crate::sql`]:
//!   the column set is part of a group's shape, so such rows never share a
//!   statement with rows that write the column.
//! - **Tables whose triggers or rules fire for replayed rows**
//!   ([`TableInfo::replica_triggers`]) are barriers: everything before the
//!   change is written, then the change alone, as the careful path writes
//!   it, then what follows. Such a trigger sees the target as it would
//!   without the grouping.
//! - An update that **changes the key** is written alone, in its place among
//!   its table's groups, and orders both its keys.
//!
//! Keys are compared as the text pgoutput sent. Two texts of one value
//! (`1.0` and `1.00` in a numeric key) are distinct keys to the plan but
//! the same row to Postgres: an UPDATE or DELETE set then finds fewer rows
//! than it has, an INSERT set skips one, and the batch goes the careful way.
//!
//! Anything the plan cannot place (not a row change, a NULL or unsent key
//! value, a binary value, a shape that does not fit the target) gives `None`:
//! the careful path applies the batch, and reports what is wrong.
//!
//! Pure: no I/O.

use std::borrow::Cow;
use std::collections::HashMap;
use std::rc::Rc;

use bytes::Bytes;

use crate::pgoutput::{ColumnValue, TupleData};
use crate::sql::{self, SetStatement, Statement, TableInfo};
use crate::txn::Change;

/// The most rows in one set statement: a larger group is continued in a
/// new one (each array is one bind parameter, at most 1 GB in Postgres).
pub const MAX_SET_ROWS: usize = 5_000;

/// The fewest rows of an insert set written by COPY rather than by
/// [`sql::insert_set_sql`] ([`sql::copy_sql`]: faster per row, but a row
/// that exists fails it with an error in the target's log, so only for the
/// sets of a backlog or a bulk load, where that is rare).
pub const COPY_MIN_ROWS: usize = 1_000;

/// One statement of a plan, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step<'a> {
    pub statement: StepStatement<'a>,
    /// The changes it writes (indexes into the planned changes), one per
    /// row; an update overwritten by a later one in the same set is not
    /// among them.
    pub changes: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepStatement<'a> {
    /// One change, exactly as the careful path writes it: it must touch its
    /// row.
    Row(Statement),
    /// Many changes of one table and shape: it must touch
    /// [`SetStatement::rows`] rows.
    Set(SetStatement<'a>),
    /// Many inserts of one table and shape, at least [`COPY_MIN_ROWS`]:
    /// `COPY ... FROM STDIN` of the arrays' rows, which must write every
    /// one ([`SetStatement::sql`] is the COPY).
    Copy(SetStatement<'a>),
}

/// Plans `changes` (in source order, each with its target table). `None`:
/// the batch must take the careful path.
pub fn plan<'a>(changes: &[(&'a Change, &'a TableInfo)]) -> Option<Vec<Step<'a>>> {
    let mut p = Planner::default();
    for (i, (ch, t)) in changes.iter().enumerate() {
        p.push(i, ch, t)?;
    }
    p.flush()?;
    Some(p.steps)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Insert,
    Update,
    Delete,
}

/// What a set statement writes: its kind and the target columns it sets
/// (indexes into [`TableInfo::columns`], in array order; none for a delete).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    kind: Kind,
    cols: Vec<usize>,
}

/// A row's primary key values as sent.
type Key = Vec<Bytes>;

type Values<'a> = Vec<Option<Cow<'a, str>>>;

enum Group<'a> {
    /// Changes of one shape, keys distinct; `at` finds a key's row.
    Set {
        shape: Shape,
        rows: Vec<(usize, &'a Change, Values<'a>)>,
        at: HashMap<Key, usize>,
    },
    /// A change written alone (an update of the key).
    Row(usize, &'a Change),
}

/// One table's groups in the current segment.
struct TablePlan<'a> {
    table: &'a TableInfo,
    /// Target key columns the source sends (indexes into the table's
    /// columns), in source order: what [`sql::update`] finds a row by.
    key: Vec<usize>,
    groups: Vec<Group<'a>>,
    /// The group of each key's latest change.
    last: HashMap<Key, usize>,
    /// The group each shape's next change may join.
    open: HashMap<Shape, usize>,
}

#[derive(Default)]
struct Planner<'a> {
    steps: Vec<Step<'a>>,
    /// The segment since the last barrier, tables in order of first change.
    tables: Vec<TablePlan<'a>>,
    /// Target column index of each source column, per (relation, table).
    mappings: HashMap<(usize, usize), Rc<[usize]>>,
}

/// Change `i` alone, as the careful path writes it.
fn single<'a>(i: usize, ch: &Change, t: &TableInfo) -> Option<Step<'a>> {
    let st = match ch {
        Change::Insert { rel, new } => sql::insert(t, rel, new),
        Change::Update { rel, old, new } => sql::update(t, rel, old.as_ref(), new),
        Change::Delete { rel, old } => sql::delete(t, rel, old),
        _ => return None,
    };
    Some(Step {
        statement: StepStatement::Row(st.ok()?),
        changes: vec![i],
    })
}

/// The key of an image: its values of the `(source position)` key columns,
/// all sent as text.
fn key_of(image: &TupleData, positions: &[usize]) -> Option<Key> {
    positions
        .iter()
        .map(|&c| match image.columns.get(c)? {
            ColumnValue::Text(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn text(v: &ColumnValue) -> Option<Option<Cow<'_, str>>> {
    match v {
        ColumnValue::Null => Some(None),
        ColumnValue::Text(b) => Some(Some(match std::str::from_utf8(b) {
            Ok(s) => Cow::Borrowed(s),
            Err(_) => String::from_utf8_lossy(b),
        })),
        ColumnValue::Binary(_) | ColumnValue::UnchangedToast => None,
    }
}

impl<'a> Planner<'a> {
    fn mapping(&mut self, ch: &'a Change, t: &'a TableInfo) -> Option<Rc<[usize]>> {
        let rel = match ch {
            Change::Insert { rel, .. }
            | Change::Update { rel, .. }
            | Change::Delete { rel, .. } => rel,
            _ => return None,
        };
        let id = (
            std::sync::Arc::as_ptr(rel) as usize,
            t as *const TableInfo as usize,
        );
        if let Some(m) = self.mappings.get(&id) {
            return Some(m.clone());
        }
        let m: Rc<[usize]> = rel
            .columns
            .iter()
            .map(|c| t.columns.iter().position(|tc| tc.name == c.name))
            .collect::<Option<_>>()?;
        self.mappings.insert(id, m.clone());
        Some(m)
    }

    fn push(&mut self, i: usize, ch: &'a Change, t: &'a TableInfo) -> Option<()> {
        if t.replica_triggers {
            // A barrier: its triggers see everything before it, nothing after.
            self.flush()?;
            self.steps.push(single(i, ch, t)?);
            return Some(());
        }
        let (kind, key_image, new) = match ch {
            Change::Insert { new, .. } => (Kind::Insert, new, Some(new)),
            Change::Update { old, new, .. } => (
                Kind::Update,
                old.as_ref().map_or(new, |o| o.tuple()),
                Some(new),
            ),
            Change::Delete { old, .. } => (Kind::Delete, old.tuple(), None),
            _ => return None,
        };
        let map = self.mapping(ch, t)?;
        if key_image.columns.len() != map.len() || new.is_some_and(|n| n.columns.len() != map.len())
        {
            return None;
        }
        // Source positions of the key columns.
        let positions: Vec<usize> = (0..map.len()).filter(|&c| t.columns[map[c]].key).collect();
        if positions.is_empty() {
            return None;
        }
        let key_cols: Vec<usize> = positions.iter().map(|&c| map[c]).collect();
        let key = key_of(key_image, &positions)?;
        let idx = match self
            .tables
            .iter()
            .position(|tp| tp.table.qualified == t.qualified)
        {
            Some(found) => found,
            None => {
                self.tables.push(TablePlan {
                    table: t,
                    key: key_cols.clone(),
                    groups: Vec::new(),
                    last: HashMap::new(),
                    open: HashMap::new(),
                });
                self.tables.len() - 1
            }
        };
        let tp = &mut self.tables[idx];
        if !(std::ptr::eq(tp.table, t) || tp.table == t) || tp.key != key_cols {
            // The table's shape changed within the batch.
            return None;
        }
        if let (Change::Update { old: Some(_), .. }, Some(new)) = (ch, new) {
            let new_key = key_of(new, &positions);
            if new_key.as_ref() != Some(&key) {
                // The key changes: alone, after the old key's and the new
                // key's earlier changes, before their later ones.
                let g = tp.groups.len();
                tp.groups.push(Group::Row(i, ch));
                tp.last.insert(key, g);
                if let Some(k) = new_key {
                    tp.last.insert(k, g);
                }
                return Some(());
            }
        }
        let mut cols = Vec::new();
        let mut values: Values<'a> = Vec::new();
        if let Some(new) = new {
            for (c, v) in new.columns.iter().enumerate() {
                // An update finds its row by the key, which it does not
                // change: the key is not written again.
                if v.is_unchanged_toast() || (kind == Kind::Update && t.columns[map[c]].key) {
                    continue;
                }
                cols.push(map[c]);
                values.push(text(v)?);
            }
            if cols.is_empty() {
                if kind == Kind::Insert {
                    return None;
                }
                // Nothing but the key: write the key (its own value), as
                // the careful path does, so the row must still be found.
                for &c in &positions {
                    cols.push(map[c]);
                    values.push(text(&new.columns[c])?);
                }
            }
        }
        if kind != Kind::Insert {
            for &c in &positions {
                values.push(text(&key_image.columns[c])?);
            }
        }
        let shape = Shape { kind, cols };
        let last = tp.last.get(&key).copied();
        match tp.open.get(&shape).copied() {
            Some(g) if last.is_none_or(|l| g >= l) => {
                let Group::Set { rows, at, .. } = &mut tp.groups[g] else {
                    return None;
                };
                if last == Some(g) {
                    // The key's previous change is in this very group.
                    if kind != Kind::Update {
                        return None;
                    }
                    let pos = *at.get(&key)?;
                    rows[pos] = (i, ch, values);
                } else {
                    at.insert(key.clone(), rows.len());
                    rows.push((i, ch, values));
                }
                if rows.len() >= MAX_SET_ROWS {
                    tp.open.remove(&shape);
                }
                tp.last.insert(key, g);
            }
            _ => {
                let g = tp.groups.len();
                tp.groups.push(Group::Set {
                    shape: shape.clone(),
                    rows: vec![(i, ch, values)],
                    at: HashMap::from([(key.clone(), 0)]),
                });
                tp.open.insert(shape, g);
                tp.last.insert(key, g);
            }
        }
        Some(())
    }

    /// Writes out the segment: table by table, each table's groups in order.
    fn flush(&mut self) -> Option<()> {
        for tp in std::mem::take(&mut self.tables) {
            let t = tp.table;
            for g in tp.groups {
                match g {
                    Group::Row(i, ch) => self.steps.push(single(i, ch, t)?),
                    Group::Set { rows, .. } if rows.len() == 1 => {
                        // One row: the careful path's statement (prepared
                        // already, and what a lone transaction always uses).
                        self.steps.push(single(rows[0].0, rows[0].1, t)?);
                    }
                    Group::Set { shape, rows, .. } => {
                        let copy = shape.kind == Kind::Insert && rows.len() >= COPY_MIN_ROWS;
                        let sql = match shape.kind {
                            Kind::Insert if copy => sql::copy_sql(t, &shape.cols),
                            Kind::Insert => sql::insert_set_sql(t, &shape.cols),
                            Kind::Update => sql::update_set_sql(t, &shape.cols, &tp.key),
                            Kind::Delete => sql::delete_set_sql(t, &tp.key),
                        };
                        let n = rows.len();
                        let width = rows[0].2.len();
                        let mut arrays: Vec<Values<'a>> =
                            (0..width).map(|_| Vec::with_capacity(n)).collect();
                        let mut changes = Vec::with_capacity(n);
                        for (i, _, values) in rows {
                            changes.push(i);
                            for (a, v) in arrays.iter_mut().zip(values) {
                                a.push(v);
                            }
                        }
                        let set = SetStatement {
                            sql,
                            arrays,
                            rows: n,
                        };
                        self.steps.push(Step {
                            statement: if copy {
                                StepStatement::Copy(set)
                            } else {
                                StepStatement::Set(set)
                            },
                            changes,
                        });
                    }
                }
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{OldTuple, Relation, RelationColumn, ReplicaIdentity};
    use crate::sql::ColumnInfo;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// A table `name` with columns `cols`, the first `keys` of them the
    /// primary key (text columns, but for the `id` key).
    fn table(name: &str, cols: &[&str], keys: usize) -> (Arc<Relation>, TableInfo) {
        let rel = Relation {
            oid: 1,
            namespace: "public".into(),
            name: name.into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| RelationColumn {
                    flags: u8::from(i < keys),
                    name: c.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        };
        let t = TableInfo {
            qualified: format!("\"public\".\"{name}\""),
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| ColumnInfo {
                    name: c.to_string(),
                    type_name: if i == 0 { "bigint" } else { "text" }.into(),
                    key: i < keys,
                })
                .collect(),
            replica_triggers: false,
            serial: false,
        };
        (Arc::new(rel), t)
    }

    fn v(s: &str) -> ColumnValue {
        match s {
            "<u>" => ColumnValue::UnchangedToast,
            "<null>" => ColumnValue::Null,
            _ => ColumnValue::Text(Bytes::from(s.to_string())),
        }
    }

    fn tup(vals: &[&str]) -> TupleData {
        TupleData {
            columns: vals.iter().map(|s| v(s)).collect(),
        }
    }

    fn ins(rel: &Arc<Relation>, vals: &[&str]) -> Change {
        Change::Insert {
            rel: rel.clone(),
            new: tup(vals),
        }
    }

    fn upd(rel: &Arc<Relation>, vals: &[&str]) -> Change {
        Change::Update {
            rel: rel.clone(),
            old: None,
            new: tup(vals),
        }
    }

    fn del(rel: &Arc<Relation>, vals: &[&str]) -> Change {
        Change::Delete {
            rel: rel.clone(),
            old: OldTuple::Key(tup(vals)),
        }
    }

    /// Each step as `SQL verb [change indexes]`, `Row` for a lone change.
    fn outline(steps: &[Step<'_>]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match &s.statement {
                StepStatement::Row(st) => {
                    format!("row {} {:?}", st.sql.split(' ').next().unwrap(), s.changes)
                }
                StepStatement::Set(st) | StepStatement::Copy(st) => {
                    assert_eq!(st.rows, s.changes.len());
                    for a in &st.arrays {
                        assert_eq!(a.len(), st.rows, "{}", st.sql);
                    }
                    format!("set {} {:?}", st.sql.split(' ').next().unwrap(), s.changes)
                }
            })
            .collect()
    }

    fn run<'a>(changes: &'a [Change], tables: &[&'a TableInfo]) -> Option<Vec<Step<'a>>> {
        let input: Vec<(&Change, &TableInfo)> = changes
            .iter()
            .map(|ch| {
                let name = match ch {
                    Change::Insert { rel, .. }
                    | Change::Update { rel, .. }
                    | Change::Delete { rel, .. } => &rel.name,
                    _ => "",
                };
                let t = tables
                    .iter()
                    .find(|t| t.qualified == format!("\"public\".\"{name}\""))
                    .copied()
                    .unwrap_or(tables[0]);
                (ch, t)
            })
            .collect();
        plan(&input)
    }

    #[test]
    fn interleaved_transactions_become_one_statement_per_table_and_kind() {
        let (acc, acc_t) = table("acc", &["id", "bal"], 1);
        let (br, br_t) = table("br", &["id", "bal"], 1);
        let (hist, hist_t) = table("hist", &["id", "delta"], 1);
        // pgbench: upsert an account, update a branch, insert history.
        let changes = vec![
            ins(&acc, &["1", "5"]),
            upd(&br, &["3", "5"]),
            ins(&hist, &["100", "5"]),
            upd(&acc, &["7", "2"]),
            upd(&br, &["4", "2"]),
            ins(&hist, &["101", "2"]),
            ins(&acc, &["2", "1"]),
            upd(&br, &["3", "6"]),
            ins(&hist, &["102", "1"]),
        ];
        let steps = run(&changes, &[&acc_t, &br_t, &hist_t]).expect("planned");
        assert_eq!(
            outline(&steps),
            [
                "set INSERT [0, 6]",
                "row UPDATE [3]",
                // Branch 3 updated twice with the same columns: its last version.
                "set UPDATE [7, 4]",
                "set INSERT [2, 5, 8]",
            ]
        );
        let StepStatement::Set(st) = &steps[2].statement else {
            panic!("set");
        };
        // Arrays: the SET columns (bal: the key is not written again), then
        // the key (id).
        assert_eq!(
            st.arrays,
            vec![
                vec![Some("6".into()), Some("2".into())],
                vec![Some("3".into()), Some("4".into())],
            ]
        );
        assert!(st.sql.contains("SET \"bal\" = v.s1 FROM"), "{}", st.sql);
    }

    #[test]
    fn a_rows_changes_keep_their_order() {
        let (t, ti) = table("t", &["id", "x"], 1);
        let changes = vec![
            ins(&t, &["1", "a"]),
            ins(&t, &["2", "a"]),
            upd(&t, &["1", "b"]),
            del(&t, &["1", "<null>"]),
            ins(&t, &["1", "c"]),
            ins(&t, &["3", "a"]),
            upd(&t, &["2", "b"]),
        ];
        let steps = run(&changes, &[&ti]).expect("planned");
        assert_eq!(
            outline(&steps),
            [
                "set INSERT [0, 1]",
                "set UPDATE [2, 6]",
                "row DELETE [3]",
                // Key 1 again, after its delete; key 3 may join it.
                "set INSERT [4, 5]",
            ]
        );
    }

    #[test]
    fn certain_conflicts_and_unplannable_changes_take_the_careful_path() {
        let (t, ti) = table("t", &["id", "x"], 1);
        // Inserted twice, deleted twice: a conflict whatever the target holds.
        assert!(run(&[ins(&t, &["1", "a"]), ins(&t, &["1", "b"])], &[&ti]).is_none());
        assert!(run(
            &[del(&t, &["1", "<null>"]), del(&t, &["1", "<null>"])],
            &[&ti]
        )
        .is_none());
        // No key value, a binary value, a truncate.
        assert!(run(&[upd(&t, &["<null>", "a"])], &[&ti]).is_none());
        let binary = Change::Insert {
            rel: t.clone(),
            new: TupleData {
                columns: vec![v("1"), ColumnValue::Binary(Bytes::from_static(b"\x00"))],
            },
        };
        assert!(run(&[binary], &[&ti]).is_none());
        let truncate = Change::Truncate {
            rels: vec![t.clone()],
            cascade: false,
            restart_identity: false,
        };
        assert!(run(&[truncate], &[&ti]).is_none());
        // A source column the target lacks.
        let (wide, _) = table("t", &["id", "x", "y"], 1);
        assert!(run(&[ins(&wide, &["1", "a", "b"])], &[&ti]).is_none());
    }

    #[test]
    fn unchanged_toast_is_left_out_in_a_statement_of_its_own() {
        let (t, ti) = table("t", &["id", "x", "big"], 1);
        let changes = vec![
            upd(&t, &["1", "a", "<u>"]),
            upd(&t, &["2", "a", "b"]),
            upd(&t, &["3", "a", "<u>"]),
            upd(&t, &["4", "a", "b"]),
        ];
        let steps = run(&changes, &[&ti]).expect("planned");
        assert_eq!(outline(&steps), ["set UPDATE [0, 2]", "set UPDATE [1, 3]"]);
        let StepStatement::Set(st) = &steps[0].statement else {
            panic!("set");
        };
        assert!(!st.sql.contains("\"big\""), "{}", st.sql);
        let StepStatement::Set(st) = &steps[1].statement else {
            panic!("set");
        };
        assert!(st.sql.contains("\"big\" = "), "{}", st.sql);
    }

    #[test]
    fn an_update_of_the_key_is_written_alone_between_both_keys_changes() {
        let (t, ti) = table("t", &["id", "x"], 1);
        let changes = vec![
            upd(&t, &["1", "a"]),
            Change::Update {
                rel: t.clone(),
                old: Some(OldTuple::Key(tup(&["1", "<null>"]))),
                new: tup(&["9", "a"]),
            },
            upd(&t, &["9", "b"]),
            ins(&t, &["1", "new"]),
            upd(&t, &["5", "c"]),
        ];
        let steps = run(&changes, &[&ti]).expect("planned");
        assert_eq!(
            outline(&steps),
            [
                "row UPDATE [0]",
                "row UPDATE [1]",
                // Key 9 after its arrival; key 5 may join it.
                "set UPDATE [2, 4]",
                "row INSERT [3]"
            ]
        );
        // REPLICA IDENTITY FULL with the key unchanged is an ordinary update.
        let full = vec![
            Change::Update {
                rel: t.clone(),
                old: Some(OldTuple::Full(tup(&["1", "a"]))),
                new: tup(&["1", "b"]),
            },
            upd(&t, &["2", "b"]),
        ];
        assert_eq!(
            outline(&run(&full, &[&ti]).expect("planned")),
            ["set UPDATE [0, 1]"]
        );
    }

    #[test]
    fn an_update_of_a_table_of_key_columns_only_writes_the_key() {
        let (t, ti) = table("t", &["id", "k2"], 2);
        let changes = vec![upd(&t, &["1", "a"]), upd(&t, &["2", "b"])];
        let steps = run(&changes, &[&ti]).expect("planned");
        let StepStatement::Set(st) = &steps[0].statement else {
            panic!("set");
        };
        assert!(
            st.sql.contains("SET \"id\" = v.s1, \"k2\" = v.s2 FROM"),
            "{}",
            st.sql
        );
        assert_eq!(st.arrays.len(), 4);
    }

    #[test]
    fn tables_with_replica_triggers_are_barriers() {
        let (t, ti) = table("t", &["id", "x"], 1);
        let (audited, mut ai) = table("audited", &["id", "x"], 1);
        ai.replica_triggers = true;
        let changes = vec![
            ins(&t, &["1", "a"]),
            ins(&t, &["2", "a"]),
            ins(&audited, &["1", "a"]),
            ins(&audited, &["2", "a"]),
            ins(&t, &["3", "a"]),
            ins(&t, &["4", "a"]),
        ];
        let steps = run(&changes, &[&ti, &ai]).expect("planned");
        assert_eq!(
            outline(&steps),
            [
                "set INSERT [0, 1]",
                "row INSERT [2]",
                "row INSERT [3]",
                "set INSERT [4, 5]"
            ]
        );
    }

    #[test]
    fn a_large_group_continues_in_a_new_statement() {
        let (t, ti) = table("t", &["id", "x"], 1);
        let ids: Vec<String> = (0..MAX_SET_ROWS + 3).map(|i| i.to_string()).collect();
        let changes: Vec<Change> = ids.iter().map(|i| ins(&t, &[i, "a"])).collect();
        let steps = run(&changes, &[&ti]).expect("planned");
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].changes.len(), MAX_SET_ROWS);
        assert_eq!(steps[1].changes.len(), 3);
        // The large set by COPY, the small one by INSERT.
        assert!(
            matches!(&steps[0].statement, StepStatement::Copy(st) if st.sql.starts_with("COPY "))
        );
        assert!(
            matches!(&steps[1].statement, StepStatement::Set(st) if st.sql.starts_with("INSERT "))
        );
        let few: Vec<Change> = ids[..COPY_MIN_ROWS - 1]
            .iter()
            .map(|i| ins(&t, &[i, "a"]))
            .collect();
        let steps = run(&few, &[&ti]).expect("planned");
        assert!(matches!(
            &steps[..],
            [Step {
                statement: StepStatement::Set(_),
                ..
            }]
        ));
    }

    // --- The plan against applying every change in order, on a model. ---

    type Row = Vec<Option<String>>;
    /// (table, key values) -> row.
    type State = BTreeMap<(usize, Vec<String>), Row>;

    fn text_of(c: &ColumnValue) -> Option<String> {
        c.as_text().map(str::to_string)
    }

    fn key_values(t: &TableInfo, image: &TupleData) -> Vec<String> {
        t.columns
            .iter()
            .zip(&image.columns)
            .filter(|(c, _)| c.key)
            .map(|(_, v)| text_of(v).expect("key"))
            .collect()
    }

    /// Writes one change into the model as Postgres would: `false` if it
    /// touched no row (or broke the primary key).
    fn write(state: &mut State, ti: usize, t: &TableInfo, ch: &Change) -> bool {
        match ch {
            Change::Insert { new, .. } => {
                let k = (ti, key_values(t, new));
                if state.contains_key(&k) {
                    return false;
                }
                state.insert(k, new.columns.iter().map(text_of).collect());
                true
            }
            Change::Update { old, new, .. } => {
                let by = old.as_ref().map_or(new, |o| o.tuple());
                let Some(mut row) = state.remove(&(ti, key_values(t, by))) else {
                    return false;
                };
                for (i, c) in new.columns.iter().enumerate() {
                    if !c.is_unchanged_toast() {
                        row[i] = text_of(c);
                    }
                }
                let nk: Vec<String> = t
                    .columns
                    .iter()
                    .zip(&row)
                    .filter(|(c, _)| c.key)
                    .map(|(_, v)| v.clone().expect("key"))
                    .collect();
                state.insert((ti, nk), row).is_none()
            }
            Change::Delete { old, .. } => state.remove(&(ti, key_values(t, old.tuple()))).is_some(),
            _ => unreachable!(),
        }
    }

    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u8, u8),
        Update(u8, u8, u8),
        UpdateToast(u8, u8),
        UpdateFull(u8, u8, u8),
        UpdateKey(u8, u8, u8),
        Delete(u8, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let t = 0u8..2;
        let k = 0u8..5;
        let x = 0u8..4;
        prop_oneof![
            (t.clone(), k.clone(), x.clone()).prop_map(|(t, k, x)| Op::Insert(t, k, x)),
            (t.clone(), k.clone(), x.clone()).prop_map(|(t, k, x)| Op::Update(t, k, x)),
            (t.clone(), k.clone()).prop_map(|(t, k)| Op::UpdateToast(t, k)),
            (t.clone(), k.clone(), x.clone()).prop_map(|(t, k, x)| Op::UpdateFull(t, k, x)),
            (t.clone(), k.clone(), k.clone()).prop_map(|(t, k, n)| Op::UpdateKey(t, k, n)),
            (t, k).prop_map(|(t, k)| Op::Delete(t, k)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whenever the plan touches exactly its rows, its result is the
        /// result of applying every change in order, and the other way
        /// round: the plan finds a conflict exactly when the changes in order
        /// would meet one. The changes are what a source sends (an insert of
        /// a new key, an update or delete of an existing one); the target
        /// starts as the source did, but for the rows in `drift`, which it
        /// has and the source has not, or the other way round (conflicts).
        #[test]
        fn the_plan_writes_what_the_changes_in_order_write(
            initial in proptest::collection::btree_set((0usize..2, 0u8..5), 0..6),
            drift in proptest::collection::btree_set((0usize..2, 0u8..5), 0..2),
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let (t0, i0) = table("t", &["id", "x", "big"], 1);
            let (t1, i1) = table("u", &["id", "k2", "x"], 2);
            let rels = [t0, t1];
            let infos = [&i0, &i1];
            let row = |t: usize, k: u8, x: &str| -> Vec<String> {
                match t {
                    0 => vec![k.to_string(), x.to_string(), format!("big{x}")],
                    _ => vec![k.to_string(), format!("k{k}"), x.to_string()],
                }
            };
            let key_img = |t: usize, k: u8| -> TupleData {
                let r = row(t, k, "");
                tup(&[r[0].as_str(), if t == 0 { "<null>" } else { r[1].as_str() }, "<null>"])
            };
            let refs = |r: &[String]| -> TupleData {
                tup(&r.iter().map(String::as_str).collect::<Vec<_>>())
            };
            // The source: which keys exist there, as the changes go.
            let mut source: std::collections::BTreeSet<(usize, u8)> = initial.clone();
            let mut changes = Vec::new();
            for o in &ops {
                let (t, k) = match *o {
                    Op::Insert(t, k, _) | Op::Update(t, k, _) | Op::UpdateToast(t, k)
                    | Op::UpdateFull(t, k, _) | Op::UpdateKey(t, k, _) | Op::Delete(t, k) => (t as usize, k),
                };
                let rel = rels[t].clone();
                let exists = source.contains(&(t, k));
                let ch = match *o {
                    _ if !exists => {
                        source.insert((t, k));
                        Change::Insert { rel, new: refs(&row(t, k, "new")) }
                    }
                    Op::Insert(_, _, x) | Op::Update(_, _, x) => Change::Update { rel, old: None, new: refs(&row(t, k, &x.to_string())) },
                    Op::UpdateToast(..) => {
                        let mut r = row(t, k, "toasted");
                        let last = r.len() - 1;
                        r[last] = "<u>".into();
                        Change::Update { rel, old: None, new: refs(&r) }
                    }
                    Op::UpdateFull(_, _, x) => Change::Update {
                        rel,
                        old: Some(OldTuple::Full(refs(&row(t, k, "old")))),
                        new: refs(&row(t, k, &x.to_string())),
                    },
                    Op::UpdateKey(_, _, n) if n != k && !source.contains(&(t, n)) => {
                        source.remove(&(t, k));
                        source.insert((t, n));
                        Change::Update {
                            rel,
                            old: Some(OldTuple::Key(key_img(t, k))),
                            new: refs(&row(t, n, "moved")),
                        }
                    }
                    Op::UpdateKey(..) => Change::Update { rel, old: None, new: refs(&row(t, k, "same")) },
                    Op::Delete(..) => {
                        source.remove(&(t, k));
                        Change::Delete { rel, old: OldTuple::Key(key_img(t, k)) }
                    }
                };
                changes.push(ch);
            }
            let table_of = |ch: &Change| match ch {
                Change::Insert { rel, .. } | Change::Update { rel, .. } | Change::Delete { rel, .. } => usize::from(rel.name == "u"),
                _ => unreachable!(),
            };
            let mut start = State::new();
            for (t, k) in initial.symmetric_difference(&drift) {
                let r = row(*t, *k, "initial");
                start.insert((*t, key_values(infos[*t], &refs(&r))), r.into_iter().map(Some).collect());
            }
            // In order, one change at a time.
            let mut in_order = start.clone();
            let mut clean = true;
            for ch in &changes {
                let t = table_of(ch);
                clean &= write(&mut in_order, t, infos[t], ch);
            }
            prop_assert!(!drift.is_empty() || clean, "the source's changes fit the source's rows");
            // The plan.
            let input: Vec<(&Change, &TableInfo)> = changes.iter().map(|ch| (ch, infos[table_of(ch)])).collect();
            let Some(steps) = plan(&input) else {
                // Only certain conflicts make the plan give up here.
                prop_assert!(!clean, "a clean batch was not planned");
                return Ok(());
            };
            let mut planned = start.clone();
            let mut exact = true;
            let mut written = 0;
            for step in &steps {
                // A set statement's rows have distinct keys: each is found
                // (or inserted) on its own. (Postgres would count a key
                // given twice once.)
                if matches!(step.statement, StepStatement::Set(_) | StepStatement::Copy(_)) {
                    let keys: std::collections::BTreeSet<_> = step.changes.iter().map(|&i| {
                        let ch = &changes[i];
                        let image = match ch {
                            Change::Insert { new, .. } | Change::Update { old: None, new, .. } => new,
                            Change::Update { old: Some(o), .. } | Change::Delete { old: o, .. } => o.tuple(),
                            _ => unreachable!(),
                        };
                        (table_of(ch), key_values(infos[table_of(ch)], image))
                    }).collect();
                    prop_assert_eq!(keys.len(), step.changes.len(), "a key twice in one set statement");
                }
                let mut touched = 0;
                for &i in &step.changes {
                    let t = table_of(&changes[i]);
                    touched += usize::from(write(&mut planned, t, infos[t], &changes[i]));
                }
                exact &= touched == step.changes.len();
                written += step.changes.len();
            }
            prop_assert!(written <= changes.len());
            prop_assert_eq!(exact, clean, "conflict found by one and not the other");
            if clean {
                prop_assert_eq!(planned, in_order);
            }
        }
    }
}
