//! Repairing recorded replication conflicts (`ezone conflicts list/resolve`).
//!
//! After a forced failover, the returning site's unreplicated tail arrives
//! at the survivor as rows in `ezone_replication.conflicts` (see
//! [`crate::apply`]): recorded, not applied. The operator then decides, per
//! conflict, which version every site holds:
//!
//! - **survivor**: the row as the survivor (the site that recorded the
//!   conflict) holds it *now*, read by primary key; no row there means the
//!   row is deleted everywhere;
//! - **returning**: the version in the conflict's `remote_row` (the image the
//!   returning site, the link's source, sent); the version of a conflict
//!   whose recorded `op` is `delete` (and of every `delete_missing` one) is
//!   "no row": the row is deleted, by key, everywhere.
//!
//! ```text
//!  survivor S                                    every other site X
//!  BEGIN; SET LOCAL session_replication_role = replica
//!  SELECT conflict ... FOR UPDATE   (resolved? -> no-op)
//!  survivor: SELECT row FOR UPDATE  (the version, locked until COMMIT)
//!  returning: upsert/delete row
//!                                  ──────────▶  BEGIN; SET LOCAL ... = replica
//!                                               upsert/delete row; COMMIT
//!  UPDATE conflict SET resolved = true, resolution = '...'
//!  COMMIT
//! ```
//!
//! Why each piece:
//! - **`session_replication_role = replica`**: the database fence (see
//!   [`crate::fence`]) would refuse the write at a site that does not own
//!   the row's shard, and ordinary triggers already fired where the row was
//!   first written. Needs a superuser, as the replicator's applies do.
//! - **A replication origin session (`ezone_repair`)** on every connection:
//!   the repair transactions carry an origin, so the links skip them (loop
//!   prevention, see [`crate::link`]). Without it, a repair write at the
//!   returning site would travel back to the survivor as a new conflict.
//!   An origin is held by one session at a time, so two repairs against one
//!   site cannot run at once (the second fails with SQLSTATE 55006).
//! - **Order**: other sites commit before the survivor, whose transaction
//!   holds the conflict row (and, for `survivor`, the row itself) locked,
//!   and marks the conflict resolved in the same commit as its own write.
//!   A failure anywhere leaves the conflict unresolved; every write sets the
//!   row to one fixed version, so re-running is safe.
//! - **Idempotent**: a resolved conflict is reported and left alone.
//!
//! Values are written as text cast to each site's column type
//! (`$n::text::type`), as the replicator's applies are. `jsonb_populate_record`
//! is not used: it keeps a JSON string as a JSON *string* for a `jsonb`
//! column, so the replicator's text-valued `remote_row` (`"j": "{\"a\": 1}"`)
//! would land as `"{\"a\": 1}"`, not as the object.
//!
//! The record's `op` (the incoming change: `insert`, `update` or `delete`,
//! see [`crate::conflict::Op`]) is what tells a DELETE from an insert: under
//! `REPLICA IDENTITY FULL` a DELETE's image is the whole old row, the shape
//! of an insert's new row. Records written before ezone recorded the op
//! have a NULL one, and are decided as they were then: a `foreign_shard`
//! image that holds only the key (every other column null, as a DELETE with
//! the default replica identity sends) is refused for `returning` (decide it
//! by hand), and any other image is taken as the row's version, so an old
//! record of a DELETE under `REPLICA IDENTITY FULL` would bring the row back.
//!
//! The pure parts (SQL built from a table's shape and a row, the choice of
//! version, the row diff for display) are unit-tested below; the I/O is
//! [`list`], [`load_table`] and [`Repairer`].

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, GenericClient, Row};

use crate::conflict::{Kind, Op};
use crate::sql::{quote_ident, Statement};

/// The replication origin repair transactions carry (the links skip them).
pub const REPAIR_ORIGIN: &str = "ezone_repair";
/// What [`crate::sql::image_json`] writes for an unchanged TOASTed value the
/// source did not send.
pub const UNCHANGED_TOAST: &str = "(unchanged toast)";
/// How long a repair waits for a lock (a row or conflict another
/// transaction holds) before giving up.
pub const LOCK_TIMEOUT: &str = "10s";
/// Resolution recorded for `--keep survivor`.
pub const RESOLUTION_SURVIVOR: &str = "kept survivor by operator";
/// Resolution recorded for `--keep returning`.
pub const RESOLUTION_RETURNING: &str = "took returning by operator";

/// A row as column -> text value (`None` = SQL NULL), the form of the
/// replicator's `remote_row`.
pub type TextRow = BTreeMap<String, Option<String>>;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// A row or name that does not fit (pure checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("{table} has no primary key: ezone repairs only tables with a primary key; add one")]
    NoPrimaryKey { table: String },
    #[error("{table}: the row image has no value for key column {column:?}, so the row cannot be found; repair it by hand")]
    KeyMissing { table: String, column: String },
    #[error("{table} has no column {column:?} (schema drift between sites): add the column, then re-run")]
    UnknownColumn { table: String, column: String },
    #[error("the row image is not a JSON object: {0}")]
    NotAnObject(String),
    #[error("relation {0:?} is not schema.table")]
    BadRelation(String),
    #[error("link {0:?} is not source->target")]
    BadLink(String),
}

/// Why no version can be chosen for a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Undecidable {
    #[error("no row image from the returning site is recorded, so there is no returning version to take: use --keep survivor, or repair the row by hand")]
    NoRemoteRow,
    #[error("the returning site's image holds only the row's key (as a DELETE sends it) and the record, written by an ezone that did not record the operation, does not say whether the change was a delete: check the row at the returning site and repair it by hand, or use --keep survivor")]
    KeyOnlyImage,
    #[error("the recorded operation is not insert, update or delete (a record from a newer ezone?): resolve it with a matching ezone, or use --keep survivor")]
    UnknownOp,
}

/// What went wrong repairing; every message names the site and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("site {site}: {what}: {detail}{hint}", hint = db_hint(.code.as_deref()))]
    Db {
        site: String,
        what: String,
        detail: String,
        /// SQLSTATE; `None` when the connection failed.
        code: Option<String>,
    },
    #[error("site {site}: table {relation} does not exist: create it with the same shape as at the other sites, then re-run")]
    NoTable { site: String, relation: String },
    #[error("site {site}: {source}")]
    Row {
        site: String,
        #[source]
        source: RowError,
    },
    #[error("conflict {id} does not exist at site {site}: see `ezone conflicts list --site {site} --all`")]
    NotFound { site: String, id: i64 },
    #[error("conflict {id} at site {site} was recorded by link {link}, which does not end at {site}: the site names disagree with the topology; check --site and the replicator's `site`")]
    WrongSite { site: String, id: i64, link: String },
    #[error("conflict {id}: site {returning} (the source of link {link}) is not among the sites to repair: add it to the topology, or pass --dsn {returning}=DSN")]
    UnknownSite {
        id: i64,
        link: String,
        returning: String,
    },
    #[error("site {site} is not among the sites to repair: add it to the topology, or pass --dsn {site}=DSN")]
    NoSuchSite { site: String },
    #[error("conflict {id} at site {site}: {source}")]
    Undecidable {
        site: String,
        id: i64,
        #[source]
        source: Undecidable,
    },
    #[error("conflict {id}: column {column:?} of the returning version was not sent (unchanged TOAST) and site {site} has no row to keep it from: use --keep survivor, or copy the row by hand")]
    ToastRowMissing {
        id: i64,
        site: String,
        column: String,
    },
}

impl RepairError {
    /// The connection to a site is gone (or was never there): later
    /// conflicts would fail the same way.
    pub fn is_connection(&self) -> bool {
        match self {
            RepairError::Db { code, .. } => match code.as_deref() {
                None => true,
                Some(c) => {
                    crate::pg_error::Kind::of_code(c) == crate::pg_error::Kind::ConnectionLost
                }
            },
            _ => false,
        }
    }
}

fn db_hint(code: Option<&str>) -> &'static str {
    match code {
        None => " (connection failed: check that the site's Postgres is up and reachable, then re-run; resolved conflicts are skipped)",
        Some("42501") => " (needs a superuser: session_replication_role and replication origins require one)",
        Some("55006") => " (the ezone_repair replication origin is in use: another `ezone conflicts resolve` is running against this site; let it finish)",
        Some("55P03") => " (a lock wait timed out: another transaction holds the row or the conflict; re-run)",
        Some(c) if c.starts_with("23") => " (a constraint refused the row at this site: fix the data by hand, then re-run)",
        Some(c) if c.starts_with("22") => " (a value does not fit the column's type at this site: compare the table's shape at the sites)",
        Some(c) if crate::pg_error::Kind::of_code(c) == crate::pg_error::Kind::ConnectionLost => " (connection lost: check the site's Postgres, then re-run; resolved conflicts are skipped)",
        Some(_) => "",
    }
}

fn db(site: &str, what: &str, e: tokio_postgres::Error) -> RepairError {
    let (detail, code) = match e.as_db_error() {
        Some(d) => (
            format!("{} ({})", d.message(), d.code().code()),
            Some(d.code().code().to_string()),
        ),
        None => (e.to_string(), None),
    };
    RepairError::Db {
        site: site.to_string(),
        what: what.to_string(),
        detail,
        code,
    }
}

// ---------------------------------------------------------------------------
// Pure: names, shapes, statements
// ---------------------------------------------------------------------------

/// Splits a link name `source->target`.
pub fn parse_link(link: &str) -> Result<(&str, &str), RowError> {
    match link.split_once("->") {
        Some((s, t)) if !s.is_empty() && !t.is_empty() => Ok((s, t)),
        _ => Err(RowError::BadLink(link.to_string())),
    }
}

/// Splits a relation name into schema and table. Accepts the replicator's
/// quoted form (`"public"."orders"`, with `""` escapes) and plain
/// `public.orders`; unquoted parts fold to lower case, as in SQL.
pub fn parse_relation(s: &str) -> Result<(String, String), RowError> {
    let bad = || RowError::BadRelation(s.to_string());
    let mut parts = Vec::new();
    let mut chars = s.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                    None => return Err(bad()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                if c == '"' {
                    return Err(bad());
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        if part.is_empty() {
            return Err(bad());
        }
        parts.push(part);
        match chars.next() {
            None => break,
            Some('.') => continue,
            Some(_) => return Err(bad()),
        }
    }
    match <[String; 2]>::try_from(parts) {
        Ok([schema, table]) => Ok((schema, table)),
        Err(_) => Err(bad()),
    }
}

/// A table's shape at one site, from its catalog ([`crate::catalog`]).
pub use crate::catalog::{Column, Table};

/// Why a table cannot be repaired by key.
trait NoKey {
    fn no_key(&self) -> RowError;
}

impl NoKey for Table {
    fn no_key(&self) -> RowError {
        RowError::NoPrimaryKey {
            table: self.display_name(),
        }
    }
}

/// A row image (`remote_row` or `local_row`) as text values: strings as
/// they are, JSON null as NULL, anything else (numbers, objects: the
/// `to_jsonb` form of `local_row`) as its JSON text, which the column
/// types' input functions read back.
pub fn text_row(v: &serde_json::Value) -> Result<TextRow, RowError> {
    let obj = v
        .as_object()
        .ok_or_else(|| RowError::NotAnObject(truncate(&v.to_string(), 60)))?;
    Ok(obj
        .iter()
        .map(|(k, v)| {
            let t = match v {
                serde_json::Value::Null => None,
                serde_json::Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            };
            (k.clone(), t)
        })
        .collect())
}

/// The row's primary key values, in key order.
pub fn key_of(table: &Table, row: &TextRow) -> Result<Vec<(String, String)>, RowError> {
    let cols = table.key_columns();
    if cols.is_empty() {
        return Err(table.no_key());
    }
    cols.into_iter()
        .map(|c| match row.get(&c.name) {
            Some(Some(v)) if v != UNCHANGED_TOAST => Ok((c.name.clone(), v.clone())),
            _ => Err(RowError::KeyMissing {
                table: table.display_name(),
                column: c.name.clone(),
            }),
        })
        .collect()
}

/// `id=o-77` / `a=1, b=x`, for messages.
pub fn key_text(key: &[(String, String)]) -> String {
    key.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn key_where(table: &Table, key: &[(String, String)], params: &mut Vec<Option<String>>) -> String {
    key.iter()
        .map(|(name, v)| {
            let ty = table
                .columns
                .iter()
                .find(|c| &c.name == name)
                .map(|c| c.type_name.as_str())
                .unwrap_or("text");
            params.push(Some(v.clone()));
            format!("{} = ${}::text::{ty}", quote_ident(name), params.len())
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `SELECT "c1"::text, ... FROM t WHERE key` (every column as text, in
/// column order; `FOR UPDATE` when `lock`).
pub fn select_sql(table: &Table, key: &[(String, String)], lock: bool) -> Statement {
    let mut params = Vec::new();
    let cols = table
        .columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let cond = key_where(table, key, &mut params);
    Statement {
        sql: format!(
            "SELECT {cols} FROM {} WHERE {cond}{}",
            table.qualified(),
            if lock { " FOR UPDATE" } else { "" }
        ),
        params,
    }
}

/// `DELETE FROM t WHERE key`.
pub fn delete_sql(table: &Table, key: &[(String, String)]) -> Statement {
    let mut params = Vec::new();
    let cond = key_where(table, key, &mut params);
    Statement {
        sql: format!("DELETE FROM {} WHERE {cond}", table.qualified()),
        params,
    }
}

/// A statement that writes one version of a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowWrite {
    pub statement: Statement,
    /// The statement is an UPDATE (the version lacks an unchanged-TOAST
    /// value, kept from the row in place): it must touch exactly one row.
    pub must_exist: bool,
    /// Columns left out because their value was not sent (unchanged TOAST).
    pub kept_columns: Vec<String>,
}

/// The statement that makes `table` hold `row`:
/// `INSERT INTO t (cols) OVERRIDING SYSTEM VALUE VALUES ($n::text::type, ...)
/// ON CONFLICT (key) DO UPDATE SET col = excluded.col, ...` over the row's
/// columns in the table's column order. Generated columns are left to
/// Postgres; table columns the row lacks keep their value (or default). A
/// value not sent (unchanged TOAST) makes it an UPDATE of the other columns
/// that must find the row.
pub fn upsert_sql(table: &Table, row: &TextRow) -> Result<RowWrite, RowError> {
    let key = key_of(table, row)?;
    for name in row.keys() {
        if !table.columns.iter().any(|c| &c.name == name) {
            return Err(RowError::UnknownColumn {
                table: table.display_name(),
                column: name.clone(),
            });
        }
    }
    let mut kept_columns = Vec::new();
    let mut present = Vec::new();
    for c in &table.columns {
        let Some(v) = row.get(&c.name) else { continue };
        if c.generated {
            continue;
        }
        if v.as_deref() == Some(UNCHANGED_TOAST) {
            kept_columns.push(c.name.clone());
            continue;
        }
        present.push((c, v.clone()));
    }
    let mut params = Vec::new();
    if !kept_columns.is_empty() {
        let sets = present
            .iter()
            .filter(|(c, _)| c.key.is_none())
            .map(|(c, v)| {
                params.push(v.clone());
                format!(
                    "{} = ${}::text::{}",
                    quote_ident(&c.name),
                    params.len(),
                    c.type_name
                )
            })
            .collect::<Vec<_>>();
        let cond = key_where(table, &key, &mut params);
        // Nothing else to set: touch the key to learn whether the row exists.
        let sets = if sets.is_empty() {
            let (k, _) = &key[0];
            format!("{0} = {0}", quote_ident(k))
        } else {
            sets.join(", ")
        };
        return Ok(RowWrite {
            statement: Statement {
                sql: format!("UPDATE {} SET {sets} WHERE {cond}", table.qualified()),
                params,
            },
            must_exist: true,
            kept_columns,
        });
    }
    let mut names = Vec::new();
    let mut values = Vec::new();
    for (c, v) in &present {
        params.push(v.clone());
        names.push(quote_ident(&c.name));
        values.push(format!("${}::text::{}", params.len(), c.type_name));
    }
    let conflict_cols = key
        .iter()
        .map(|(k, _)| quote_ident(k))
        .collect::<Vec<_>>()
        .join(", ");
    let sets = present
        .iter()
        .filter(|(c, _)| c.key.is_none())
        .map(|(c, _)| format!("{0} = excluded.{0}", quote_ident(&c.name)))
        .collect::<Vec<_>>();
    let action = if sets.is_empty() {
        "DO NOTHING".to_string()
    } else {
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    Ok(RowWrite {
        statement: Statement {
            sql: format!(
                "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({}) ON CONFLICT ({conflict_cols}) {action}",
                table.qualified(),
                names.join(", "),
                values.join(", ")
            ),
            params,
        },
        must_exist: false,
        kept_columns,
    })
}

// ---------------------------------------------------------------------------
// Pure: choosing the version
// ---------------------------------------------------------------------------

/// Whose version every site ends up holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The site that recorded the conflict (the one that took over).
    Survivor,
    /// The link's source (the site that came back).
    Returning,
}

impl Keep {
    /// As recorded in `ezone_replication.conflicts.resolution`.
    pub fn resolution(self) -> &'static str {
        match self {
            Keep::Survivor => RESOLUTION_SURVIVOR,
            Keep::Returning => RESOLUTION_RETURNING,
        }
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Keep::Survivor => "survivor",
            Keep::Returning => "returning",
        })
    }
}

/// The version of a row to hold everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    Row(TextRow),
    /// No row: delete it everywhere.
    Absent,
}

/// Chooses the version: for `Survivor`, the survivor's row now (`None`:
/// absent); for `Returning`, no row when the returning site deleted it (the
/// recorded `op` is `delete`, or the conflict is a `delete_missing` one),
/// else the recorded remote image.
///
/// `op` is the record's `op` column. NULL (`None`: a record written before
/// ezone recorded the operation) falls back to what was done then: a
/// `foreign_shard` image holding only the key (every other column null) is
/// undecidable, as it may be a delete's; any other image is taken as the
/// row's version, even if it was a delete's old row (`REPLICA IDENTITY
/// FULL`), which the record cannot tell. With a recorded `insert` or
/// `update` the image is the new row whatever it holds. An op this version
/// does not know is undecidable.
pub fn choose(
    keep: Keep,
    kind: &str,
    op: Option<&str>,
    table: &Table,
    remote: Option<&TextRow>,
    survivor_now: Option<TextRow>,
) -> Result<Version, Undecidable> {
    match keep {
        Keep::Survivor => Ok(survivor_now.map_or(Version::Absent, Version::Row)),
        Keep::Returning => {
            let op = op
                .map(|s| Op::parse(s).ok_or(Undecidable::UnknownOp))
                .transpose()?;
            if kind == Kind::DeleteMissing.as_str() || op == Some(Op::Delete) {
                return Ok(Version::Absent);
            }
            let remote = remote.ok_or(Undecidable::NoRemoteRow)?;
            // NULL op (an older record): the change may have been a delete.
            if op.is_none() && kind == Kind::ForeignShard.as_str() && key_only(table, remote) {
                return Err(Undecidable::KeyOnlyImage);
            }
            Ok(Version::Row(remote.clone()))
        }
    }
}

/// The image has key values and nothing else (and the table has non-key
/// columns): the shape of a DELETE's old key.
fn key_only(table: &Table, row: &TextRow) -> bool {
    let mut non_key = table
        .columns
        .iter()
        .filter(|c| c.key.is_none() && !c.generated)
        .peekable();
    non_key.peek().is_some() && non_key.all(|c| matches!(row.get(&c.name), None | Some(None)))
}

// ---------------------------------------------------------------------------
// Pure: the diff shown by `list`
// ---------------------------------------------------------------------------

/// One column whose value differs between the recorded versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ColumnDiff {
    pub column: String,
    /// At the site that recorded the conflict (`None`: NULL or no column).
    pub local: Option<String>,
    /// In the returning site's image.
    pub remote: Option<String>,
}

/// Columns whose values differ between `remote_row` (text values) and
/// `local_row` (`to_jsonb` of the row: native JSON types). Values are
/// compared as the same Postgres value where the two forms differ only in
/// spelling (numbers, booleans, timestamps in another zone or format, JSON
/// spacing, one-dimensional arrays). A value the source did not send
/// (unchanged TOAST) is not compared.
pub fn diff(remote: &serde_json::Value, local: &serde_json::Value) -> Vec<ColumnDiff> {
    let empty = serde_json::Map::new();
    let r = remote.as_object().unwrap_or(&empty);
    let l = local.as_object().unwrap_or(&empty);
    let mut cols: Vec<&String> = r.keys().chain(l.keys()).collect();
    cols.sort();
    cols.dedup();
    let null = serde_json::Value::Null;
    let mut out = Vec::new();
    for col in cols {
        let rv = r.get(col).unwrap_or(&null);
        let lv = l.get(col).unwrap_or(&null);
        let rtext = json_text(rv);
        if rtext.as_deref() == Some(UNCHANGED_TOAST) {
            continue;
        }
        if !same_value(rtext.as_deref(), lv) {
            out.push(ColumnDiff {
                column: col.clone(),
                local: json_text(lv),
                remote: rtext,
            });
        }
    }
    out
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A text value (Postgres output) and a `to_jsonb` value: the same value?
pub fn same_value(text: Option<&str>, json: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    let Some(t) = text else {
        return json.is_null();
    };
    match json {
        V::Null => false,
        V::String(s) => {
            t == s || matches!((timestamp(t), timestamp(s)), (Some(a), Some(b)) if a == b)
        }
        V::Bool(b) => matches!((t, b), ("t" | "true", true) | ("f" | "false", false)),
        V::Number(n) => {
            t == n.to_string()
                || matches!((t.parse::<f64>(), n.as_f64()), (Ok(a), Some(b)) if a == b)
        }
        V::Array(items) => {
            if serde_json::from_str::<V>(t).ok().as_ref() == Some(json) {
                return true;
            }
            match pg_array(t) {
                Some(elems) => {
                    elems.len() == items.len()
                        && elems
                            .iter()
                            .zip(items)
                            .all(|(e, j)| same_value(e.as_deref(), j))
                }
                None => false,
            }
        }
        V::Object(_) => serde_json::from_str::<V>(t).ok().as_ref() == Some(json),
    }
}

/// A timestamp as (microseconds, has a zone offset): `2026-11-25 13:01:02.5+08`
/// and `2026-11-25T05:01:02.5+00:00` are the same instant.
fn timestamp(s: &str) -> Option<(i128, bool)> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut i = 19;
    let mut micros: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        if end == start || end - start > 6 {
            return None;
        }
        micros = num(start..end)? * 10i64.pow(6 - (end - start) as u32);
        i = end;
    }
    let mut offset: Option<i64> = None;
    match b.get(i) {
        None => {}
        Some(b'Z') if i + 1 == b.len() => offset = Some(0),
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &s[i + 1..];
            let mut secs = 0i64;
            for (n, part) in rest.split(':').enumerate() {
                if n > 2 || part.len() != 2 || !part.bytes().all(|c| c.is_ascii_digit()) {
                    return None;
                }
                let v: i64 = part.parse().ok()?;
                secs += v * [3600, 60, 1][n];
            }
            offset = Some(if sign == b'-' { -secs } else { secs });
        }
        _ => return None,
    }
    let days = days_from_civil(y, mo, d);
    let local = ((days * 86_400 + h * 3600 + mi * 60 + sec) as i128) * 1_000_000 + micros as i128;
    Some((
        local - offset.unwrap_or(0) as i128 * 1_000_000,
        offset.is_some(),
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The elements of a one-dimensional Postgres array literal (`{1,NULL,"a b"}`);
/// `None` for anything else (nested arrays, bounds decorations).
fn pg_array(s: &str) -> Option<Vec<Option<String>>> {
    let inner = s.strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut e = String::new();
            loop {
                match chars.next()? {
                    '\\' => e.push(chars.next()?),
                    '"' => break,
                    c => e.push(c),
                }
            }
            out.push(Some(e));
        } else {
            let mut e = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '{' || c == '"' {
                    return None;
                }
                e.push(c);
                chars.next();
            }
            out.push(if e == "NULL" { None } else { Some(e) });
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max).collect();
    t.push('…');
    t
}

// ---------------------------------------------------------------------------
// I/O: reading conflicts and shapes
// ---------------------------------------------------------------------------

/// One recorded conflict, as read from a site.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Conflict {
    pub id: i64,
    /// The site whose `ezone_replication.conflicts` holds it (the link's
    /// target: the survivor, after a forced failover).
    pub site: String,
    /// UTC, RFC 3339.
    pub recorded_at: String,
    /// `source->target`.
    pub link: String,
    pub kind: String,
    /// The incoming change's operation (`insert`, `update`, `delete`);
    /// `None` for a record written before ezone recorded it.
    pub op: Option<String>,
    /// As recorded (`"schema"."table"`).
    pub relation: String,
    pub source_commit_lsn: String,
    /// UTC, RFC 3339.
    pub source_commit_time: String,
    /// The source's row image: column -> text value or null.
    pub remote_row: Option<serde_json::Value>,
    /// The target's row when the conflict was recorded (`to_jsonb`), its
    /// top-level numbers as strings of their exact digits.
    pub local_row: Option<serde_json::Value>,
    pub reason: String,
    pub resolution: String,
    pub resolved: bool,
}

impl Conflict {
    /// The site the change came from: the link's source (the returning
    /// site after a forced failover).
    pub fn returning_site(&self) -> Result<&str, RowError> {
        parse_link(&self.link).map(|(s, _)| s)
    }

    /// The row image that locates the row: the remote image, else the
    /// local one.
    pub fn key_row(&self) -> Result<TextRow, RowError> {
        match self.remote_row.as_ref().or(self.local_row.as_ref()) {
            Some(v) => text_row(v),
            None => Ok(TextRow::new()),
        }
    }
}

const UTC: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;
/// `local_row` with its top-level numbers as strings of their exact digits
/// (`numeric` values do not survive a trip through `f64`).
const EXACT_LOCAL: &str = "CASE WHEN jsonb_typeof(local_row) = 'object' THEN \
     coalesce((SELECT jsonb_object_agg(key, CASE WHEN jsonb_typeof(value) = 'number' \
     THEN to_jsonb(value #>> '{}') ELSE value END) FROM jsonb_each(local_row)), '{}') \
     ELSE local_row END";

/// The conflicts table's columns, as [`conflict_from`] reads them. `op` is
/// read from the row's JSON rather than by name: a site whose table was made
/// by an older ezone, and whose replicator has not been upgraded yet (the
/// applier adds the column), has no `op` column, and its records read as
/// NULL op, as their rows would after the upgrade.
fn conflict_select() -> String {
    format!(
        "SELECT id, to_char(recorded_at AT TIME ZONE 'UTC', {UTC}), link, kind, relation, \
         source_commit_lsn::text, to_char(source_commit_time AT TIME ZONE 'UTC', {UTC}), \
         remote_row::text, {EXACT_LOCAL}::text, reason, resolution, resolved, \
         to_jsonb(c) ->> 'op' \
         FROM ezone_replication.conflicts c"
    )
}

fn conflict_from(site: &str, r: &Row) -> Result<Conflict, tokio_postgres::Error> {
    let json = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
    Ok(Conflict {
        id: r.try_get(0)?,
        site: site.to_string(),
        recorded_at: r.try_get(1)?,
        link: r.try_get(2)?,
        kind: r.try_get(3)?,
        op: r.try_get(12)?,
        relation: r.try_get(4)?,
        source_commit_lsn: r.try_get(5)?,
        source_commit_time: r.try_get(6)?,
        remote_row: json(r.try_get(7)?),
        local_row: json(r.try_get(8)?),
        reason: r.try_get(9)?,
        resolution: r.try_get(10)?,
        resolved: r.try_get(11)?,
    })
}

/// The conflicts recorded at `site`, oldest first: unresolved ones, or all
/// with `all`. A site without the `ezone_replication` schema (no link has
/// applied there) has none.
pub async fn list(client: &Client, site: &str, all: bool) -> Result<Vec<Conflict>, RepairError> {
    let sql = format!(
        "{} WHERE $1::boolean OR NOT resolved ORDER BY id",
        conflict_select()
    );
    let rows = match client.query(sql.as_str(), &[&all]).await {
        Ok(rows) => rows,
        Err(e) if missing_schema(&e) => return Ok(Vec::new()),
        Err(e) => return Err(db(site, "reading ezone_replication.conflicts", e)),
    };
    rows.iter()
        .map(|r| conflict_from(site, r).map_err(|e| db(site, "reading a conflict row", e)))
        .collect()
}

fn missing_schema(e: &tokio_postgres::Error) -> bool {
    matches!(e.code().map(|c| c.code()), Some("42P01") | Some("3F000"))
}

async fn fetch<C: GenericClient + Sync>(
    c: &C,
    site: &str,
    id: i64,
    lock: bool,
) -> Result<Option<Conflict>, RepairError> {
    let sql = format!(
        "{} WHERE id = $1{}",
        conflict_select(),
        if lock { " FOR UPDATE" } else { "" }
    );
    let row = match c.query_opt(sql.as_str(), &[&id]).await {
        Ok(r) => r,
        Err(e) if missing_schema(&e) => None,
        Err(e) => return Err(db(site, &format!("reading conflict {id}"), e)),
    };
    row.map(|r| conflict_from(site, &r).map_err(|e| db(site, "reading a conflict row", e)))
        .transpose()
}

/// The shape of `relation` (as recorded: see [`parse_relation`]) at `site`.
pub async fn load_table<C: GenericClient + Sync>(
    c: &C,
    site: &str,
    relation: &str,
) -> Result<Table, RepairError> {
    let (schema, name) = parse_relation(relation).map_err(|source| RepairError::Row {
        site: site.to_string(),
        source,
    })?;
    let table = crate::catalog::load(c, &schema, &name)
        .await
        .map_err(|e| db(site, &format!("reading the shape of {schema}.{name}"), e))?
        .ok_or_else(|| RepairError::NoTable {
            site: site.to_string(),
            relation: format!("{schema}.{name}"),
        })?;
    if table.key_columns().is_empty() {
        return Err(RepairError::Row {
            site: site.to_string(),
            source: table.no_key(),
        });
    }
    Ok(table)
}

fn params(st: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    st.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// The row with `key` at a site, every column as text.
async fn read_row<C: GenericClient + Sync>(
    c: &C,
    site: &str,
    table: &Table,
    key: &[(String, String)],
    lock: bool,
) -> Result<Option<TextRow>, RepairError> {
    let st = select_sql(table, key, lock);
    let what = || format!("reading {} {} ", table.display_name(), key_text(key));
    let row = c
        .query_opt(st.sql.as_str(), &params(&st))
        .await
        .map_err(|e| db(site, &what(), e))?;
    let Some(row) = row else { return Ok(None) };
    let mut out = TextRow::new();
    for (i, col) in table.columns.iter().enumerate() {
        let v: Option<String> = row.try_get(i).map_err(|e| db(site, &what(), e))?;
        out.insert(col.name.clone(), v);
    }
    Ok(Some(out))
}

// ---------------------------------------------------------------------------
// I/O: resolving
// ---------------------------------------------------------------------------

/// A site's name and a connection to its Postgres (as a superuser).
pub struct SiteClient {
    pub site: String,
    pub client: Client,
}

/// What resolving one conflict did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Resolved before: nothing was done.
    AlreadyResolved {
        id: i64,
        relation: String,
        key: String,
        resolution: String,
    },
    Resolved {
        id: i64,
        relation: String,
        key: String,
        keep: Keep,
        /// Whether the kept version is "no row" (deleted everywhere).
        deleted: bool,
        /// Where the version is now held: the survivor first.
        sites: Vec<String>,
        /// Nothing was written (`--dry-run`).
        dry_run: bool,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::AlreadyResolved {
                id,
                relation,
                key,
                resolution,
            } => write!(
                f,
                "conflict {id} {relation} {key}: already resolved ({resolution}); nothing to do"
            ),
            Outcome::Resolved {
                id,
                relation,
                key,
                keep,
                deleted,
                sites,
                dry_run,
            } => {
                let verb = match (keep, dry_run) {
                    (Keep::Survivor, false) => "kept survivor",
                    (Keep::Returning, false) => "took returning",
                    (Keep::Survivor, true) => "would keep survivor",
                    (Keep::Returning, true) => "would take returning",
                };
                let what = if *deleted { " (no row: deleted)" } else { "" };
                write!(
                    f,
                    "conflict {id} {relation} {key}: {verb}{what} at {}",
                    sites.join(", ")
                )
            }
        }
    }
}

/// Resolves conflicts across a set of sites (every site must be reachable:
/// each takes the chosen version). Holds the [`REPAIR_ORIGIN`] session on
/// each connection from [`Repairer::open`] to [`Repairer::close`]; one
/// repairer per site at a time.
pub struct Repairer {
    sites: Vec<SiteClient>,
    dry_run: bool,
    tables: HashMap<(String, String), Table>,
}

impl Repairer {
    /// Prepares every connection: a lock timeout and, unless `dry_run`, the
    /// repair origin (created if missing) set up for the session.
    pub async fn open(sites: Vec<SiteClient>, dry_run: bool) -> Result<Repairer, RepairError> {
        for s in &sites {
            s.client
                .batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
                .await
                .map_err(|e| db(&s.site, "SET lock_timeout", e))?;
            if dry_run {
                continue;
            }
            s.client
                .execute(
                    "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS \
                     (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
                    &[&REPAIR_ORIGIN],
                )
                .await
                .map_err(|e| db(&s.site, "creating the ezone_repair replication origin", e))?;
            s.client
                .execute(
                    "SELECT pg_replication_origin_session_setup($1)",
                    &[&REPAIR_ORIGIN],
                )
                .await
                .map_err(|e| {
                    db(
                        &s.site,
                        "setting up the ezone_repair replication origin session",
                        e,
                    )
                })?;
        }
        Ok(Repairer {
            sites,
            dry_run,
            tables: HashMap::new(),
        })
    }

    /// Releases the origin sessions (closing the connections would too).
    pub async fn close(self) {
        if self.dry_run {
            return;
        }
        for s in &self.sites {
            if let Err(e) = s
                .client
                .batch_execute("SELECT pg_replication_origin_session_reset()")
                .await
            {
                tracing::debug!(site = %s.site, error = %e, "Resetting the repair origin session failed.");
            }
        }
    }

    /// Resolves conflict `id` recorded at `survivor`: every site ends up
    /// holding the `keep` version of its row, and the conflict is marked
    /// resolved at `survivor` in the same commit as the survivor's write.
    /// An already resolved conflict is left alone.
    pub async fn resolve(
        &mut self,
        survivor: &str,
        id: i64,
        keep: Keep,
    ) -> Result<Outcome, RepairError> {
        let Repairer {
            sites,
            dry_run,
            tables,
        } = self;
        let dry_run = *dry_run;
        let (mut mine, mut others): (Vec<&mut SiteClient>, Vec<&mut SiteClient>) =
            sites.iter_mut().partition(|s| s.site == survivor);
        let me = mine.pop().ok_or_else(|| RepairError::NoSuchSite {
            site: survivor.to_string(),
        })?;
        others.sort_by(|a, b| a.site.cmp(&b.site));
        let tx = me
            .client
            .transaction()
            .await
            .map_err(|e| db(survivor, "BEGIN", e))?;
        tx.batch_execute("SET LOCAL session_replication_role = replica")
            .await
            .map_err(|e| db(survivor, "SET LOCAL session_replication_role = replica", e))?;
        let conflict =
            fetch(&tx, survivor, id, !dry_run)
                .await?
                .ok_or_else(|| RepairError::NotFound {
                    site: survivor.to_string(),
                    id,
                })?;
        let row_err = |site: &str| {
            let site = site.to_string();
            move |source| RepairError::Row { site, source }
        };
        if conflict.resolved {
            // Named as well as can be: the table may be gone by now.
            let key = match cached(tables, &tx, survivor, &conflict.relation).await {
                Ok(t) => conflict
                    .key_row()
                    .ok()
                    .and_then(|r| key_of(&t, &r).ok())
                    .map(|k| key_text(&k)),
                Err(_) => None,
            };
            return Ok(Outcome::AlreadyResolved {
                id,
                relation: parse_relation(&conflict.relation)
                    .map(|(s, t)| format!("{s}.{t}"))
                    .unwrap_or(conflict.relation.clone()),
                key: key.unwrap_or_else(|| "(key unknown)".to_string()),
                resolution: conflict.resolution,
            });
        }
        let (returning, target) = parse_link(&conflict.link).map_err(row_err(survivor))?;
        if target != survivor {
            return Err(RepairError::WrongSite {
                site: survivor.to_string(),
                id,
                link: conflict.link.clone(),
            });
        }
        if !others.iter().any(|s| s.site == returning) {
            return Err(RepairError::UnknownSite {
                id,
                link: conflict.link.clone(),
                returning: returning.to_string(),
            });
        }
        let s_table = cached(tables, &tx, survivor, &conflict.relation).await?;
        let key_row = conflict.key_row().map_err(row_err(survivor))?;
        let key = key_of(&s_table, &key_row).map_err(row_err(survivor))?;
        let relation = s_table.display_name();
        let key_display = key_text(&key);
        let remote = conflict
            .remote_row
            .as_ref()
            .map(text_row)
            .transpose()
            .map_err(row_err(survivor))?;
        let survivor_now = match keep {
            Keep::Survivor => read_row(&tx, survivor, &s_table, &key, !dry_run).await?,
            Keep::Returning => None,
        };
        let version = choose(
            keep,
            &conflict.kind,
            conflict.op.as_deref(),
            &s_table,
            remote.as_ref(),
            survivor_now,
        )
        .map_err(|source| RepairError::Undecidable {
            site: survivor.to_string(),
            id,
            source,
        })?;
        let mut held = vec![survivor.to_string()];
        held.extend(others.iter().map(|s| s.site.clone()));
        let outcome = Outcome::Resolved {
            id,
            relation,
            key: key_display,
            keep,
            deleted: version == Version::Absent,
            sites: held,
            dry_run,
        };
        if dry_run {
            // Check the version fits every site's table before saying so.
            for o in others.iter() {
                let t = cached(tables, &o.client, &o.site, &conflict.relation).await?;
                if let Version::Row(r) = &version {
                    upsert_sql(&t, r).map_err(row_err(&o.site))?;
                }
            }
            return Ok(outcome);
        }
        if keep == Keep::Returning {
            write(&tx, survivor, id, &s_table, &version, &key_row).await?;
        }
        for o in others.iter_mut() {
            let t = cached(tables, &o.client, &o.site, &conflict.relation).await?;
            let otx = o
                .client
                .transaction()
                .await
                .map_err(|e| db(&o.site, "BEGIN", e))?;
            otx.batch_execute("SET LOCAL session_replication_role = replica")
                .await
                .map_err(|e| db(&o.site, "SET LOCAL session_replication_role = replica", e))?;
            write(&otx, &o.site, id, &t, &version, &key_row).await?;
            otx.commit()
                .await
                .map_err(|e| db(&o.site, &format!("COMMIT (conflict {id})"), e))?;
        }
        tx.execute(
            "UPDATE ezone_replication.conflicts SET resolved = true, resolution = $2 WHERE id = $1",
            &[&id, &keep.resolution()],
        )
        .await
        .map_err(|e| db(survivor, &format!("marking conflict {id} resolved"), e))?;
        tx.commit()
            .await
            .map_err(|e| db(survivor, &format!("COMMIT (conflict {id})"), e))?;
        tracing::info!(site = %survivor, id, keep = %keep, "Conflict resolved.");
        Ok(outcome)
    }
}

async fn cached<C: GenericClient + Sync>(
    tables: &mut HashMap<(String, String), Table>,
    c: &C,
    site: &str,
    relation: &str,
) -> Result<Table, RepairError> {
    let k = (site.to_string(), relation.to_string());
    if let Some(t) = tables.get(&k) {
        return Ok(t.clone());
    }
    let t = load_table(c, site, relation).await?;
    tables.insert(k, t.clone());
    Ok(t)
}

/// Makes `site` hold `version` of the row `key_row` locates.
async fn write<C: GenericClient + Sync>(
    c: &C,
    site: &str,
    id: i64,
    table: &Table,
    version: &Version,
    key_row: &TextRow,
) -> Result<(), RepairError> {
    let row_err = |source| RepairError::Row {
        site: site.to_string(),
        source,
    };
    match version {
        Version::Absent => {
            let key = key_of(table, key_row).map_err(row_err)?;
            let st = delete_sql(table, &key);
            c.execute(st.sql.as_str(), &params(&st))
                .await
                .map_err(|e| {
                    db(
                        site,
                        &format!("deleting {} {}", table.display_name(), key_text(&key)),
                        e,
                    )
                })?;
        }
        Version::Row(row) => {
            let w = upsert_sql(table, row).map_err(row_err)?;
            let n = c
                .execute(w.statement.sql.as_str(), &params(&w.statement))
                .await
                .map_err(|e| db(site, &format!("writing {}", table.display_name()), e))?;
            if w.must_exist && n == 0 {
                return Err(RepairError::ToastRowMissing {
                    id,
                    site: site.to_string(),
                    column: w.kept_columns.join(", "),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn col(name: &str, ty: &str, key: Option<usize>) -> Column {
        Column {
            name: name.into(),
            type_name: ty.into(),
            key,
            generated: false,
        }
    }

    /// Key (tenant, id) declared in the opposite order to the columns.
    fn table() -> Table {
        Table {
            schema: "public".into(),
            name: "Order\"s".into(),
            columns: vec![
                col("id", "bigint", Some(1)),
                col("tenant", "text", Some(0)),
                col("note", "text", None),
                col("meta", "jsonb", None),
                Column {
                    generated: true,
                    ..col("total", "numeric", None)
                },
            ],
        }
    }

    fn row(pairs: &[(&str, Option<&str>)]) -> TextRow {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    /// Order 7 of tenant t (the test table's key), with `rest`.
    fn order7(rest: &[(&str, Option<&str>)]) -> TextRow {
        let mut pairs = vec![("id", Some("7")), ("tenant", Some("t"))];
        pairs.extend_from_slice(rest);
        row(&pairs)
    }

    #[test]
    fn relations_parse_quoted_and_plain() {
        let ok = |s: &str, a: &str, b: &str| {
            assert_eq!(parse_relation(s), Ok((a.to_string(), b.to_string())), "{s}")
        };
        ok("\"public\".\"orders\"", "public", "orders");
        ok("public.orders", "public", "orders");
        ok("Public.Orders", "public", "orders");
        ok("\"My.Schema\".\"we\"\"ird\"", "My.Schema", "we\"ird");
        for bad in [
            "orders",
            "a.b.c",
            "\"a\".",
            ".b",
            "\"a\"x.b",
            "\"unterminated",
        ] {
            assert!(parse_relation(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn links_split_into_source_and_target() {
        assert_eq!(parse_link("beijing->shanghai"), Ok(("beijing", "shanghai")));
        assert!(parse_link("beijing").is_err());
        assert!(parse_link("->shanghai").is_err());
    }

    #[test]
    fn key_is_in_key_order_and_required() {
        let t = table();
        let r = row(&[("id", Some("7")), ("tenant", Some("t1")), ("note", None)]);
        assert_eq!(
            key_of(&t, &r),
            Ok(vec![
                ("tenant".to_string(), "t1".to_string()),
                ("id".to_string(), "7".to_string())
            ])
        );
        assert_eq!(key_text(&key_of(&t, &r).unwrap()), "tenant=t1, id=7");
        let missing = row(&[("id", Some("7")), ("tenant", None)]);
        assert!(matches!(
            key_of(&t, &missing),
            Err(RowError::KeyMissing { column, .. }) if column == "tenant"
        ));
        let mut nokey = t.clone();
        for c in &mut nokey.columns {
            c.key = None;
        }
        assert!(matches!(
            key_of(&nokey, &r),
            Err(RowError::NoPrimaryKey { .. })
        ));
    }

    #[test]
    fn upsert_quotes_casts_and_skips_generated() {
        let t = table();
        let r = row(&[
            ("id", Some("7")),
            ("tenant", Some("t1")),
            ("note", None),
            ("meta", Some("{\"a\": 1}")),
            ("total", Some("3")),
        ]);
        let w = upsert_sql(&t, &r).unwrap();
        assert_eq!(
            w.statement.sql,
            "INSERT INTO \"public\".\"Order\"\"s\" (\"id\", \"tenant\", \"note\", \"meta\") OVERRIDING SYSTEM VALUE \
             VALUES ($1::text::bigint, $2::text::text, $3::text::text, $4::text::jsonb) \
             ON CONFLICT (\"tenant\", \"id\") DO UPDATE SET \"note\" = excluded.\"note\", \"meta\" = excluded.\"meta\""
        );
        assert_eq!(
            w.statement.params,
            vec![
                Some("7".into()),
                Some("t1".into()),
                None,
                Some("{\"a\": 1}".into())
            ]
        );
        assert!(!w.must_exist);
    }

    #[test]
    fn upsert_of_a_key_only_table_does_nothing_on_conflict() {
        let t = Table {
            schema: "s".into(),
            name: "t".into(),
            columns: vec![col("a", "int", Some(0))],
        };
        let w = upsert_sql(&t, &row(&[("a", Some("1"))])).unwrap();
        assert!(
            w.statement.sql.ends_with("ON CONFLICT (\"a\") DO NOTHING"),
            "{}",
            w.statement.sql
        );
    }

    #[test]
    fn upsert_refuses_unknown_columns() {
        let r = order7(&[("colour", Some("red"))]);
        assert!(matches!(
            upsert_sql(&table(), &r),
            Err(RowError::UnknownColumn { column, .. }) if column == "colour"
        ));
    }

    #[test]
    fn unchanged_toast_becomes_an_update_that_must_find_the_row() {
        let r = row(&[
            ("id", Some("7")),
            ("tenant", Some("t1")),
            ("note", Some("new")),
            ("meta", Some(UNCHANGED_TOAST)),
        ]);
        let w = upsert_sql(&table(), &r).unwrap();
        assert_eq!(
            w.statement.sql,
            "UPDATE \"public\".\"Order\"\"s\" SET \"note\" = $1::text::text WHERE \"tenant\" = $2::text::text AND \"id\" = $3::text::bigint"
        );
        assert!(w.must_exist);
        assert_eq!(w.kept_columns, vec!["meta".to_string()]);
    }

    #[test]
    fn select_and_delete_use_the_key_in_key_order() {
        let t = table();
        let key = vec![
            ("tenant".to_string(), "t1".to_string()),
            ("id".to_string(), "7".to_string()),
        ];
        let s = select_sql(&t, &key, true);
        assert_eq!(
            s.sql,
            "SELECT \"id\"::text, \"tenant\"::text, \"note\"::text, \"meta\"::text, \"total\"::text \
             FROM \"public\".\"Order\"\"s\" WHERE \"tenant\" = $1::text::text AND \"id\" = $2::text::bigint FOR UPDATE"
        );
        let d = delete_sql(&t, &key);
        assert_eq!(
            d.sql,
            "DELETE FROM \"public\".\"Order\"\"s\" WHERE \"tenant\" = $1::text::text AND \"id\" = $2::text::bigint"
        );
        assert_eq!(d.params, vec![Some("t1".into()), Some("7".into())]);
    }

    #[test]
    fn version_choice() {
        let t = table();
        let remote = order7(&[("note", Some("theirs"))]);
        let ours = order7(&[("note", Some("ours"))]);
        let key_only = order7(&[("note", None), ("meta", None)]);
        use Keep::*;
        type Case<'a> = (
            Keep,
            &'a str,
            Option<&'a TextRow>,
            Option<TextRow>,
            Result<Version, Undecidable>,
        );
        let cases: Vec<Case> = vec![
            // The survivor's row now, whatever was recorded.
            (
                Survivor,
                "foreign_shard",
                Some(&remote),
                Some(ours.clone()),
                Ok(Version::Row(ours.clone())),
            ),
            (
                Survivor,
                "insert_exists",
                Some(&remote),
                None,
                Ok(Version::Absent),
            ),
            (
                Survivor,
                "delete_missing",
                Some(&key_only),
                None,
                Ok(Version::Absent),
            ),
            (
                Survivor,
                "foreign_shard",
                None,
                Some(ours.clone()),
                Ok(Version::Row(ours.clone())),
            ),
            // The recorded image; a delete is no row.
            (
                Returning,
                "foreign_shard",
                Some(&remote),
                Some(ours.clone()),
                Ok(Version::Row(remote.clone())),
            ),
            (
                Returning,
                "insert_exists",
                Some(&remote),
                None,
                Ok(Version::Row(remote.clone())),
            ),
            (
                Returning,
                "update_missing",
                Some(&remote),
                None,
                Ok(Version::Row(remote.clone())),
            ),
            (
                Returning,
                "delete_missing",
                Some(&key_only),
                None,
                Ok(Version::Absent),
            ),
            (
                Returning,
                "foreign_shard",
                None,
                None,
                Err(Undecidable::NoRemoteRow),
            ),
            // A key-only foreign image could be a delete: not guessed.
            (
                Returning,
                "foreign_shard",
                Some(&key_only),
                None,
                Err(Undecidable::KeyOnlyImage),
            ),
        ];
        // Records without an op (written before it was recorded): decided
        // by the kind and the image alone.
        for (keep, kind, remote, now, want) in cases {
            assert_eq!(
                choose(keep, kind, None, &t, remote, now),
                want,
                "{keep} {kind}"
            );
        }
        assert_eq!(Survivor.resolution(), "kept survivor by operator");
        assert_eq!(Returning.resolution(), "took returning by operator");
    }

    #[test]
    fn the_recorded_op_tells_a_delete_from_an_insert() {
        let t = table();
        // A DELETE's old row under REPLICA IDENTITY FULL: a whole row, the
        // shape of an insert's new row.
        let full = order7(&[("note", Some("theirs")), ("meta", Some("{}"))]);
        let key_only = order7(&[("note", None), ("meta", None)]);
        let ours = order7(&[("note", Some("ours"))]);
        use Keep::*;
        type Case<'a> = (
            Keep,
            &'a str,
            Option<&'a str>,
            Option<&'a TextRow>,
            Option<TextRow>,
            Result<Version, Undecidable>,
        );
        let cases: Vec<Case> = vec![
            // A delete is no row, whichever image it sent.
            (
                Returning,
                "foreign_shard",
                Some("delete"),
                Some(&full),
                Some(ours.clone()),
                Ok(Version::Absent),
            ),
            (
                Returning,
                "foreign_shard",
                Some("delete"),
                Some(&key_only),
                None,
                Ok(Version::Absent),
            ),
            (
                Returning,
                "delete_missing",
                Some("delete"),
                Some(&key_only),
                None,
                Ok(Version::Absent),
            ),
            // Without the op, the same full image is taken as the row (the
            // behaviour before the op was recorded)...
            (
                Returning,
                "foreign_shard",
                None,
                Some(&full),
                Some(ours.clone()),
                Ok(Version::Row(full.clone())),
            ),
            // ...and a key-only one is refused.
            (
                Returning,
                "foreign_shard",
                None,
                Some(&key_only),
                None,
                Err(Undecidable::KeyOnlyImage),
            ),
            // An insert or update is its new row, even one whose other
            // columns are all null.
            (
                Returning,
                "foreign_shard",
                Some("insert"),
                Some(&full),
                None,
                Ok(Version::Row(full.clone())),
            ),
            (
                Returning,
                "foreign_shard",
                Some("update"),
                Some(&key_only),
                Some(ours.clone()),
                Ok(Version::Row(key_only.clone())),
            ),
            (
                Returning,
                "insert_exists",
                Some("insert"),
                Some(&full),
                Some(ours.clone()),
                Ok(Version::Row(full.clone())),
            ),
            (
                Returning,
                "update_missing",
                Some("update"),
                Some(&full),
                None,
                Ok(Version::Row(full.clone())),
            ),
            (
                Returning,
                "foreign_shard",
                Some("insert"),
                None,
                None,
                Err(Undecidable::NoRemoteRow),
            ),
            // An op this version does not know is not guessed.
            (
                Returning,
                "foreign_shard",
                Some("truncate"),
                Some(&full),
                None,
                Err(Undecidable::UnknownOp),
            ),
            // The survivor's row now, whatever the op.
            (
                Survivor,
                "foreign_shard",
                Some("delete"),
                Some(&full),
                Some(ours.clone()),
                Ok(Version::Row(ours.clone())),
            ),
            (
                Survivor,
                "foreign_shard",
                Some("insert"),
                Some(&full),
                None,
                Ok(Version::Absent),
            ),
        ];
        for (keep, kind, op, remote, now, want) in cases {
            assert_eq!(
                choose(keep, kind, op, &t, remote, now),
                want,
                "{keep} {kind} {op:?}"
            );
        }
    }

    #[test]
    fn text_rows_from_either_image() {
        let remote = json!({"id": "7", "note": null, "n": "1.50"});
        assert_eq!(
            text_row(&remote).unwrap(),
            row(&[("id", Some("7")), ("note", None), ("n", Some("1.50"))])
        );
        // local_row is to_jsonb: native numbers and objects as JSON text.
        let local = json!({"id": 7, "meta": {"a": 1}, "ok": true});
        assert_eq!(
            text_row(&local).unwrap(),
            row(&[
                ("id", Some("7")),
                ("meta", Some("{\"a\":1}")),
                ("ok", Some("true"))
            ])
        );
        assert!(text_row(&json!([1])).is_err());
    }

    #[test]
    fn diff_compares_values_not_spellings() {
        let remote = json!({
            "id": "7", "n": "1.50", "ok": "t", "at": "2026-11-25 13:01:02.5+08",
            "meta": "{\"a\": [1, 2]}", "tags": "{a,NULL,\"b c\"}", "ints": "{1,2}",
            "bytes": "\\x00ff", "big": UNCHANGED_TOAST, "note": "theirs", "gone": null
        });
        let local = json!({
            "id": 7, "n": 1.5, "ok": true, "at": "2026-11-25T05:01:02.5+00:00",
            "meta": {"a": [1, 2]}, "tags": ["a", null, "b c"], "ints": [1, 2],
            "bytes": "\\x00ff", "big": "whatever", "note": "ours", "gone": "here"
        });
        assert_eq!(
            diff(&remote, &local),
            vec![
                ColumnDiff {
                    column: "gone".into(),
                    local: Some("here".into()),
                    remote: None
                },
                ColumnDiff {
                    column: "note".into(),
                    local: Some("ours".into()),
                    remote: Some("theirs".into())
                },
            ]
        );
    }

    #[test]
    fn timestamps_compare_as_instants() {
        assert_eq!(
            timestamp("2026-11-25 13:01:02.123456+08"),
            timestamp("2026-11-25T05:01:02.123456+00:00")
        );
        assert_eq!(timestamp("1970-01-01 00:00:01Z"), Some((1_000_000, true)));
        assert_eq!(
            timestamp("2000-03-01 00:00:00-05:30"),
            Some((951_868_800_000_000 + 19_800_000_000, true))
        );
        // Without a zone: compared as written.
        assert_eq!(timestamp("2026-01-02 03:04:05").map(|t| t.1), Some(false));
        assert_ne!(
            timestamp("2026-01-02 03:04:05"),
            timestamp("2026-01-02 03:04:05+00")
        );
        for bad in [
            "2026-11-25",
            "hello world, this is",
            "2026-11-25 13:01:02.1234567",
            "2026-11-25 13:01:02+8",
        ] {
            assert_eq!(timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn outcome_messages_say_what_was_done() {
        let o = Outcome::Resolved {
            id: 12,
            relation: "public.orders".into(),
            key: "id=o-77".into(),
            keep: Keep::Survivor,
            deleted: false,
            sites: vec!["beijing".into(), "shanghai".into()],
            dry_run: false,
        };
        assert_eq!(
            o.to_string(),
            "conflict 12 public.orders id=o-77: kept survivor at beijing, shanghai"
        );
        let e = RepairError::Db {
            site: "beijing".into(),
            what: "x".into(),
            detail: "d".into(),
            code: Some("55006".into()),
        };
        assert!(
            e.to_string().contains("another `ezone conflicts resolve`"),
            "{e}"
        );
        assert!(!e.is_connection());
    }
}
