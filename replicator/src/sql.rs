//! SQL for applying row changes at the target, built from a source
//! [`Relation`], the tuple images, and the target table's shape.
//!
//! Values arrive in pgoutput's text format, so every value is a text
//! parameter cast to the target column's type (`$1::text::integer`): Postgres
//! converts through the type's input function, exactly as `COPY` would, and
//! user-defined types (enums, domains) resolve by the *target's* catalog
//! (their oids differ between sites). An unchanged TOASTed value ('u') is
//! left out of an UPDATE's SET list — writing it as NULL would destroy it.
//!
//! The fast path also writes many rows of one table in one *set statement*
//! ([`insert_set_sql`], [`update_set_sql`], [`delete_set_sql`]): each column
//! is one `text[]` parameter holding that column's value for every row, the
//! rows come from `unnest` of those arrays, and every value is cast to the
//! target column's type just as above (`unnest($1::text[])::integer`: the
//! same text to type conversion as `$1::text::integer`). The statement text
//! depends only on the table and the set of columns, never on the number of
//! rows: it is prepared once per connection and there is no bind-parameter
//! limit to chunk for.
//!
//! Pure: no I/O. The target's shape ([`TableInfo`]) is read by the apply side.

use std::borrow::Cow;

use crate::pgoutput::{ColumnValue, OldTuple, Relation, TupleData};

/// A target table as the apply side needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// `"schema"."table"`, quoted.
    pub qualified: String,
    pub columns: Vec<ColumnInfo>,
    /// Triggers or rules at the target fire for replayed rows (enabled
    /// `ALWAYS` or `REPLICA`): the fast path writes this table's changes one
    /// statement per row, in source order, never grouped (see
    /// [`crate::plan`]), so such a trigger sees what it would see without
    /// ezone's grouping.
    pub replica_triggers: bool,
    /// Changes of this table are applied only once every earlier batch of
    /// the link has committed, never beside one ([`crate::lanes`]): a
    /// unique index beyond the key lets changes of different rows wait on
    /// each other, and a replica trigger may read or write any row.
    pub serial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    pub name: String,
    /// `format_type(atttypid, atttypmod)` at the target.
    pub type_name: String,
    /// Part of the primary key.
    pub key: bool,
}

/// A statement and its text parameters (`None` = SQL NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Option<String>>,
}

/// The source relation does not fit the target table: the link must stop
/// (schema drift), never guess.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("schema drift on {table}: source column {column:?} does not exist at the target; add it there (or drop it at the source), then restart the link")]
    MissingColumn { table: String, column: String },
    #[error("schema drift on {table}: the source sent {got} values for {want} columns")]
    Arity {
        table: String,
        got: usize,
        want: usize,
    },
    #[error("{table} has no primary key at the target: ezone replicates only tables with a primary key; add one")]
    NoPrimaryKey { table: String },
    #[error("{table}: key column {column:?} has no value in the change (unchanged TOAST or missing): cannot find the row")]
    KeyValueMissing { table: String, column: String },
    #[error("{table}: column {column:?} arrived in binary format; ezone requests text format")]
    Binary { table: String, column: String },
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `"schema"."table"` for a source relation.
pub fn qualified(rel: &Relation) -> String {
    format!("{}.{}", quote_ident(&rel.namespace), quote_ident(&rel.name))
}

/// Maps each source column (by position) to the target column (by name).
fn mapping<'t>(rel: &Relation, t: &'t TableInfo) -> Result<Vec<&'t ColumnInfo>, ShapeError> {
    rel.columns
        .iter()
        .map(|c| {
            t.columns
                .iter()
                .find(|tc| tc.name == c.name)
                .ok_or_else(|| ShapeError::MissingColumn {
                    table: t.qualified.clone(),
                    column: c.name.clone(),
                })
        })
        .collect()
}

fn text(t: &TableInfo, col: &ColumnInfo, v: &ColumnValue) -> Result<Option<String>, ShapeError> {
    match v {
        ColumnValue::Null => Ok(None),
        ColumnValue::Text(b) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
        ColumnValue::Binary(_) => Err(ShapeError::Binary {
            table: t.qualified.clone(),
            column: col.name.clone(),
        }),
        // Callers filter these out before asking for a value.
        ColumnValue::UnchangedToast => Ok(None),
    }
}

fn check_arity(t: &TableInfo, rel: &Relation, tuple: &TupleData) -> Result<(), ShapeError> {
    if tuple.columns.len() != rel.columns.len() {
        return Err(ShapeError::Arity {
            table: t.qualified.clone(),
            got: tuple.columns.len(),
            want: rel.columns.len(),
        });
    }
    Ok(())
}

/// `WHERE key = $n AND ...` from a row image (old key, old row, or new row).
fn where_key(
    t: &TableInfo,
    cols: &[&ColumnInfo],
    image: &TupleData,
    params: &mut Vec<Option<String>>,
) -> Result<String, ShapeError> {
    let mut parts = Vec::new();
    for (col, v) in cols.iter().zip(&image.columns) {
        if !col.key {
            continue;
        }
        if v.is_unchanged_toast() || v.is_null() {
            return Err(ShapeError::KeyValueMissing {
                table: t.qualified.clone(),
                column: col.name.clone(),
            });
        }
        params.push(text(t, col, v)?);
        parts.push(format!(
            "{} = ${}::text::{}",
            quote_ident(&col.name),
            params.len(),
            col.type_name
        ));
    }
    if parts.is_empty() {
        return Err(ShapeError::NoPrimaryKey {
            table: t.qualified.clone(),
        });
    }
    Ok(parts.join(" AND "))
}

/// Appends `v` to `out` as an SQL literal of type `unknown`: `NULL`, or an
/// escape string `E'...'` with every backslash and quote doubled, so the
/// server reads back exactly `v` whatever `standard_conforming_strings`
/// says (a plain `'...'` reads backslashes differently when it is off).
/// Safe in a UTF-8 session: no byte of a multi-byte UTF-8 character is a
/// quote or a backslash. `false` (and `out` unchanged) if `v` holds a NUL,
/// which a query message cannot carry (it ends the message's text) and no
/// Postgres text value holds: the caller sends it as a parameter instead.
pub fn push_literal(out: &mut String, v: Option<&str>) -> bool {
    let Some(v) = v else {
        out.push_str("NULL");
        return true;
    };
    if v.contains('\0') {
        return false;
    }
    out.reserve(v.len() + 3);
    out.push_str("E'");
    // Each quote and backslash written twice (both ASCII: `i` is on a
    // character boundary).
    let mut rest = v;
    while let Some(i) = rest.find(['\'', '\\']) {
        out.push_str(&rest[..=i]);
        out.push_str(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
    out.push('\'');
    true
}

/// `INSERT ... ON CONFLICT DO NOTHING`: a row that already exists is a
/// conflict for the caller to record (0 rows affected), never an overwrite.
/// `OVERRIDING SYSTEM VALUE`: an identity column `GENERATED ALWAYS` takes
/// the source's value, as it would from native replication (without it
/// Postgres refuses the value; on a table without one it changes nothing).
pub fn insert(t: &TableInfo, rel: &Relation, new: &TupleData) -> Result<Statement, ShapeError> {
    check_arity(t, rel, new)?;
    let cols = mapping(rel, t)?;
    let mut names = Vec::new();
    let mut values = Vec::new();
    let mut params = Vec::new();
    for (col, v) in cols.iter().zip(&new.columns) {
        if v.is_unchanged_toast() {
            continue;
        }
        params.push(text(t, col, v)?);
        names.push(quote_ident(&col.name));
        values.push(format!("${}::text::{}", params.len(), col.type_name));
    }
    Ok(Statement {
        sql: format!(
            "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT DO NOTHING",
            t.qualified,
            names.join(", "),
            values.join(", ")
        ),
        params,
    })
}

/// `UPDATE ... SET changed columns WHERE key`: unchanged TOASTed columns are
/// left out. The row is found by the old key if the key changed, else by the
/// new row's key. A key column the update does not change is not written
/// again (the WHERE already holds its value), unless it is all there is to
/// write: an identity key `GENERATED ALWAYS` can only be set to DEFAULT.
pub fn update(
    t: &TableInfo,
    rel: &Relation,
    old: Option<&OldTuple>,
    new: &TupleData,
) -> Result<Statement, ShapeError> {
    check_arity(t, rel, new)?;
    let cols = mapping(rel, t)?;
    let image = match old {
        Some(o) => {
            check_arity(t, rel, o.tuple())?;
            o.tuple()
        }
        None => new,
    };
    // Written: a value sent, and for a key column, a new one.
    let unchanged_key =
        |i: usize, col: &ColumnInfo, v: &ColumnValue| col.key && image.columns.get(i) == Some(v);
    let written = |i: usize, col: &ColumnInfo, v: &ColumnValue| {
        !(v.is_unchanged_toast() || unchanged_key(i, col, v))
    };
    let only_key = !cols
        .iter()
        .zip(&new.columns)
        .enumerate()
        .any(|(i, (col, v))| written(i, col, v));
    let mut params = Vec::new();
    let mut sets = Vec::new();
    for (i, (col, v)) in cols.iter().zip(&new.columns).enumerate() {
        let keep = written(i, col, v) || (only_key && col.key);
        if !keep {
            continue;
        }
        params.push(text(t, col, v)?);
        sets.push(format!(
            "{} = ${}::text::{}",
            quote_ident(&col.name),
            params.len(),
            col.type_name
        ));
    }
    let cond = where_key(t, &cols, image, &mut params)?;
    Ok(Statement {
        sql: format!(
            "UPDATE {} SET {} WHERE {}",
            t.qualified,
            sets.join(", "),
            cond
        ),
        params,
    })
}

/// `DELETE ... WHERE key`.
pub fn delete(t: &TableInfo, rel: &Relation, old: &OldTuple) -> Result<Statement, ShapeError> {
    check_arity(t, rel, old.tuple())?;
    let cols = mapping(rel, t)?;
    let mut params = Vec::new();
    let cond = where_key(t, &cols, old.tuple(), &mut params)?;
    Ok(Statement {
        sql: format!("DELETE FROM {} WHERE {}", t.qualified, cond),
        params,
    })
}

/// A statement over many rows of one table (see the module docs): one text
/// array per `$n`, each with one element per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetStatement<'a> {
    pub sql: String,
    /// `arrays[n - 1]` is `$n`: one value per row (`None` = SQL NULL).
    pub arrays: Vec<Vec<Option<Cow<'a, str>>>>,
    /// Rows the statement must touch, every one of them: fewer is a conflict.
    pub rows: usize,
}

/// `unnest($n::text[])::<type>`: array `$n`'s values, one per row, cast to
/// the target column's type. Several of them in one select list run in
/// lockstep (the arrays have one length), as a `ProjectSet`: the rows are
/// streamed, not collected first as `FROM unnest(a, b)` would.
fn unnest_cast(t: &TableInfo, n: usize, col: usize) -> String {
    format!("unnest(${n}::text[])::{}", t.columns[col].type_name)
}

/// `(SELECT unnest($first::text[])::<type> AS k1, ...) AS v` for the key
/// columns, and `r.key = v.k1 AND ...`, to find the rows by.
fn key_rows(t: &TableInfo, key: &[usize], first: usize, before: &[String]) -> (String, String) {
    let mut cols = before.to_vec();
    let mut join = Vec::new();
    for (i, &k) in key.iter().enumerate() {
        cols.push(format!("{} AS k{}", unnest_cast(t, first + i, k), i + 1));
        join.push(format!(
            "r.{} = v.k{}",
            quote_ident(&t.columns[k].name),
            i + 1
        ));
    }
    (
        format!("(SELECT {}) AS v", cols.join(", ")),
        join.join(" AND "),
    )
}

/// Many rows of [`insert`]: `INSERT INTO t (cols) SELECT
/// unnest($1::text[])::type, ... ON CONFLICT DO NOTHING`. `cols` are
/// indexes into `t.columns`, in the order of the arrays. A row that exists
/// is skipped, so the statement inserts fewer rows than it was given: the
/// fast path sees a conflict by the count, rolls back and takes the careful
/// path, which records it. Without `ON CONFLICT` the same row would fail
/// the statement with a unique violation: the same outcome, but an error in
/// the target's log for every conflict, and the pipelined statements after
/// it refused too.
pub fn insert_set_sql(t: &TableInfo, cols: &[usize]) -> String {
    let names: Vec<String> = cols
        .iter()
        .map(|&c| quote_ident(&t.columns[c].name))
        .collect();
    let values: Vec<String> = cols
        .iter()
        .enumerate()
        .map(|(i, &c)| unnest_cast(t, i + 1, c))
        .collect();
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {} ON CONFLICT DO NOTHING",
        t.qualified,
        names.join(", "),
        values.join(", ")
    )
}

/// Many rows of [`insert`] by `COPY t (cols) FROM STDIN` (text format, rows
/// from [`push_copy_row`]): for an insert set of at least
/// [`crate::plan::COPY_MIN_ROWS`] rows, which Postgres then writes in
/// multi-row batches (a 500,000-row insert cost the target half the CPU of
/// [`insert_set_sql`]'s, docs/bench/replicator.md). A row that exists fails the
/// COPY with a unique violation (COPY has no `ON CONFLICT`): the batch goes
/// the careful way as it would after the set's short count, with one error
/// in the target's log. Identity columns take the source's values, as
/// [`insert`]'s `OVERRIDING SYSTEM VALUE` has them.
pub fn copy_sql(t: &TableInfo, cols: &[usize]) -> String {
    let names: Vec<String> = cols
        .iter()
        .map(|&c| quote_ident(&t.columns[c].name))
        .collect();
    format!("COPY {} ({}) FROM STDIN", t.qualified, names.join(", "))
}

/// Appends row `row` of the column arrays `arrays` to `out` in COPY's text
/// format: values split by tabs, the row ended by a newline, NULL as `\N`,
/// and a backslash, tab, newline or carriage return in a value escaped
/// with a backslash, so that COPY hands the type's input function exactly
/// the text pgoutput sent.
pub fn push_copy_row(out: &mut Vec<u8>, arrays: &[Vec<Option<Cow<'_, str>>>], row: usize) {
    for (i, a) in arrays.iter().enumerate() {
        if i > 0 {
            out.push(b'\t');
        }
        match a.get(row).and_then(|v| v.as_deref()) {
            None => out.extend_from_slice(b"\\N"),
            Some(v) => {
                for &b in v.as_bytes() {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b => out.push(b),
                    }
                }
            }
        }
    }
    out.push(b'\n');
}

/// Many rows of [`update`] by an unchanged key: `UPDATE t AS r SET col =
/// v.s1, ... FROM (SELECT unnest($1::text[])::type AS s1, ...) AS v WHERE
/// r.key = v.k1`. The arrays are `set` (indexes into `t.columns`) then
/// `key`. Every row's key must be distinct: the count is the rows found, and
/// a missing one is a conflict.
pub fn update_set_sql(t: &TableInfo, set: &[usize], key: &[usize]) -> String {
    let values: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} AS s{}", unnest_cast(t, i + 1, c), i + 1))
        .collect();
    let sets: Vec<String> = set
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("{} = v.s{}", quote_ident(&t.columns[c].name), i + 1))
        .collect();
    let (rows, join) = key_rows(t, key, set.len() + 1, &values);
    format!(
        "UPDATE {} AS r SET {} FROM {rows} WHERE {join}",
        t.qualified,
        sets.join(", ")
    )
}

/// Many rows of [`delete`]: `DELETE FROM t AS r USING (SELECT
/// unnest($1::text[])::type AS k1) AS v WHERE r.key = v.k1`. Every row's key
/// must be distinct.
pub fn delete_set_sql(t: &TableInfo, key: &[usize]) -> String {
    let (rows, join) = key_rows(t, key, 1, &[]);
    format!("DELETE FROM {} AS r USING {rows} WHERE {join}", t.qualified)
}

/// `SELECT <expr> FROM table r WHERE key` for the row a change is about.
fn select_by_key(
    t: &TableInfo,
    rel: &Relation,
    image: &TupleData,
    expr: &str,
) -> Result<Statement, ShapeError> {
    let cols = mapping(rel, t)?;
    let mut params = Vec::new();
    let cond = where_key(t, &cols, image, &mut params)?;
    Ok(Statement {
        sql: format!("SELECT {expr} FROM {} r WHERE {}", t.qualified, cond),
        params,
    })
}

/// The target's current row as JSON text, for a conflict record.
pub fn select_row(
    t: &TableInfo,
    rel: &Relation,
    image: &TupleData,
) -> Result<Statement, ShapeError> {
    select_by_key(t, rel, image, "to_jsonb(r)::text")
}

/// When the target's row was last written (`pg_xact_commit_timestamp`; needs
/// `track_commit_timestamp = on`, NULL otherwise), for last-writer-wins.
pub fn select_commit_time(
    t: &TableInfo,
    rel: &Relation,
    image: &TupleData,
) -> Result<Statement, ShapeError> {
    select_by_key(t, rel, image, "pg_xact_commit_timestamp(r.xmin)")
}

/// A row image as JSON text (column name -> text value or null; unchanged
/// TOAST as the string `"(unchanged toast)"`), for conflict records.
pub fn image_json(rel: &Relation, image: &TupleData) -> String {
    let mut m = serde_json::Map::new();
    for (c, v) in rel.columns.iter().zip(&image.columns) {
        let val = match v {
            ColumnValue::Null => serde_json::Value::Null,
            ColumnValue::UnchangedToast => serde_json::Value::String("(unchanged toast)".into()),
            ColumnValue::Text(b) | ColumnValue::Binary(b) => {
                serde_json::Value::String(String::from_utf8_lossy(b).into_owned())
            }
        };
        m.insert(c.name.clone(), val);
    }
    serde_json::Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{RelationColumn, ReplicaIdentity};
    use bytes::Bytes;

    #[test]
    fn a_literal_doubles_quotes_and_backslashes_and_refuses_a_nul() {
        let mut out = String::from("x ");
        assert!(push_literal(&mut out, Some(r"a'b\c''")));
        assert!(push_literal(&mut out, None));
        assert!(push_literal(&mut out, Some("")));
        assert_eq!(out, r"x E'a''b\\c'''''NULLE''");
        assert!(!push_literal(&mut out, Some("a\0b")));
        assert_eq!(out, r"x E'a''b\\c'''''NULLE''", "unchanged");
    }

    fn rel() -> Relation {
        Relation {
            oid: 16384,
            namespace: "public".into(),
            name: "orders".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                RelationColumn {
                    flags: 1,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                RelationColumn {
                    flags: 0,
                    name: "note".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
                RelationColumn {
                    flags: 0,
                    name: "big".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        }
    }

    fn table() -> TableInfo {
        TableInfo {
            qualified: "\"public\".\"orders\"".into(),
            columns: vec![
                ColumnInfo {
                    name: "id".into(),
                    type_name: "bigint".into(),
                    key: true,
                },
                ColumnInfo {
                    name: "note".into(),
                    type_name: "text".into(),
                    key: false,
                },
                ColumnInfo {
                    name: "big".into(),
                    type_name: "text".into(),
                    key: false,
                },
                ColumnInfo {
                    name: "extra".into(),
                    type_name: "integer".into(),
                    key: false,
                },
            ],
            replica_triggers: false,
            serial: false,
        }
    }

    fn t(s: &str) -> ColumnValue {
        ColumnValue::Text(Bytes::from(s.to_string()))
    }

    #[test]
    fn insert_casts_text_params() {
        let st = insert(
            &table(),
            &rel(),
            &TupleData {
                columns: vec![t("7"), ColumnValue::Null, t("x")],
            },
        )
        .unwrap();
        assert_eq!(
            st.sql,
            "INSERT INTO \"public\".\"orders\" (\"id\", \"note\", \"big\") OVERRIDING SYSTEM VALUE VALUES ($1::text::bigint, $2::text::text, $3::text::text) ON CONFLICT DO NOTHING"
        );
        assert_eq!(st.params, vec![Some("7".into()), None, Some("x".into())]);
    }

    #[test]
    fn update_leaves_unchanged_toast_out() {
        let new = TupleData {
            columns: vec![t("7"), t("hi"), ColumnValue::UnchangedToast],
        };
        let st = update(&table(), &rel(), None, &new).unwrap();
        // The key is not written again: the WHERE holds it.
        assert_eq!(
            st.sql,
            "UPDATE \"public\".\"orders\" SET \"note\" = $1::text::text WHERE \"id\" = $2::text::bigint"
        );
        assert_eq!(st.params, vec![Some("hi".into()), Some("7".into())]);
        // Nothing but the key to write: the key, so the row must be found.
        let new = TupleData {
            columns: vec![
                t("7"),
                ColumnValue::UnchangedToast,
                ColumnValue::UnchangedToast,
            ],
        };
        let st = update(&table(), &rel(), None, &new).unwrap();
        assert_eq!(
            st.sql,
            "UPDATE \"public\".\"orders\" SET \"id\" = $1::text::bigint WHERE \"id\" = $2::text::bigint"
        );
    }

    #[test]
    fn copy_rows_escape_what_copy_would_read_otherwise() {
        let t = table();
        assert_eq!(
            copy_sql(&t, &[0, 2]),
            "COPY \"public\".\"orders\" (\"id\", \"big\") FROM STDIN"
        );
        let arrays: Vec<Vec<Option<Cow<'_, str>>>> = vec![
            vec![Some("1".into()), Some("2".into())],
            vec![Some("a\tb\\c\nd\re \\N".into()), None],
        ];
        let mut out = Vec::new();
        push_copy_row(&mut out, &arrays, 0);
        push_copy_row(&mut out, &arrays, 1);
        assert_eq!(out, b"1\ta\\tb\\\\c\\nd\\re \\\\N\n2\t\\N\n".to_vec());
    }

    #[test]
    fn update_with_changed_key_uses_the_old_key() {
        let old = OldTuple::Key(TupleData {
            columns: vec![t("6"), ColumnValue::Null, ColumnValue::Null],
        });
        let new = TupleData {
            columns: vec![t("7"), t("a"), t("b")],
        };
        let st = update(&table(), &rel(), Some(&old), &new).unwrap();
        assert!(
            st.sql.ends_with("WHERE \"id\" = $4::text::bigint"),
            "{}",
            st.sql
        );
        assert_eq!(st.params[3], Some("6".into()));
    }

    #[test]
    fn drift_and_missing_keys_are_errors() {
        let mut r = rel();
        r.columns.push(RelationColumn {
            flags: 0,
            name: "new_col".into(),
            type_oid: 25,
            type_modifier: -1,
        });
        let tup = TupleData {
            columns: vec![t("1"), t("2"), t("3"), t("4")],
        };
        assert!(matches!(
            insert(&table(), &r, &tup),
            Err(ShapeError::MissingColumn { .. })
        ));
        let short = TupleData {
            columns: vec![t("1")],
        };
        assert!(matches!(
            insert(&table(), &rel(), &short),
            Err(ShapeError::Arity { .. })
        ));
        let mut nokey = table();
        for c in &mut nokey.columns {
            c.key = false;
        }
        let old = OldTuple::Key(TupleData {
            columns: vec![t("1"), ColumnValue::Null, ColumnValue::Null],
        });
        assert!(matches!(
            delete(&nokey, &rel(), &old),
            Err(ShapeError::NoPrimaryKey { .. })
        ));
    }

    #[test]
    fn set_statements_unnest_text_arrays_and_cast_by_the_target() {
        let t = table();
        assert_eq!(
            insert_set_sql(&t, &[0, 1, 2]),
            "INSERT INTO \"public\".\"orders\" (\"id\", \"note\", \"big\") \
             OVERRIDING SYSTEM VALUE SELECT unnest($1::text[])::bigint, unnest($2::text[])::text, unnest($3::text[])::text \
             ON CONFLICT DO NOTHING"
        );
        // The set columns' arrays first, then the key's.
        assert_eq!(
            update_set_sql(&t, &[1, 2], &[0]),
            "UPDATE \"public\".\"orders\" AS r SET \"note\" = v.s1, \"big\" = v.s2 \
             FROM (SELECT unnest($1::text[])::text AS s1, unnest($2::text[])::text AS s2, \
             unnest($3::text[])::bigint AS k1) AS v WHERE r.\"id\" = v.k1"
        );
        assert_eq!(
            delete_set_sql(&t, &[0]),
            "DELETE FROM \"public\".\"orders\" AS r \
             USING (SELECT unnest($1::text[])::bigint AS k1) AS v WHERE r.\"id\" = v.k1"
        );
    }

    #[test]
    fn set_statements_join_every_key_column() {
        let mut t = table();
        t.columns[1].key = true;
        assert_eq!(
            delete_set_sql(&t, &[0, 1]),
            "DELETE FROM \"public\".\"orders\" AS r \
             USING (SELECT unnest($1::text[])::bigint AS k1, unnest($2::text[])::text AS k2) AS v \
             WHERE r.\"id\" = v.k1 AND r.\"note\" = v.k2"
        );
        assert!(update_set_sql(&t, &[2], &[0, 1]).ends_with(
            "SET \"big\" = v.s1 FROM (SELECT unnest($1::text[])::text AS s1, \
             unnest($2::text[])::bigint AS k1, unnest($3::text[])::text AS k2) AS v \
             WHERE r.\"id\" = v.k1 AND r.\"note\" = v.k2"
        ));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
