//! A table's facts from a site's catalog, read one way for every part that
//! needs them: the applier (which columns, which form the key, whether
//! triggers fire for replayed rows) and the repair (which columns, in key
//! order, which are generated).

use tokio_postgres::GenericClient;

use crate::sql::quote_ident;

/// A table's shape at one site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
    /// In column (attnum) order.
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// `format_type(atttypid, atttypmod)` at this site.
    pub type_name: String,
    /// Position in the primary key (0-based), if part of it.
    pub key: Option<usize>,
    /// A generated column: computed by Postgres, never written.
    pub generated: bool,
}

impl Table {
    /// `"schema"."table"`, quoted.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.table`, for messages.
    pub fn display_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// The primary key columns, in key order.
    pub fn key_columns(&self) -> Vec<&Column> {
        let mut k: Vec<&Column> = self.columns.iter().filter(|c| c.key.is_some()).collect();
        k.sort_by_key(|c| c.key);
        k
    }
}

/// The shape of table `schema.name` (a plain or partitioned table), `None`
/// when there is no such table.
pub async fn load<C: GenericClient + Sync>(
    c: &C,
    schema: &str,
    name: &str,
) -> Result<Option<Table>, tokio_postgres::Error> {
    let rows = c
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    a.attgenerated <> '', array_position(i.indkey::int2[], a.attnum) \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
            &[&schema, &name],
        )
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let columns = rows
        .iter()
        .map(|r| {
            Ok(Column {
                name: r.try_get(0)?,
                type_name: r.try_get(1)?,
                generated: r.try_get(2)?,
                key: r
                    .try_get::<_, Option<i32>>(3)?
                    .and_then(|p| usize::try_from(p).ok()),
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(Some(Table {
        schema: schema.to_owned(),
        name: name.to_owned(),
        columns,
    }))
}

/// Whether the table has a unique index (or an exclusion constraint)
/// beside its primary key: two changes of different rows can then wait on
/// each other at the target.
pub async fn unique_beyond_key<C: GenericClient + Sync>(
    c: &C,
    qualified: &str,
) -> Result<bool, tokio_postgres::Error> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = $1::text::regclass \
                AND indisunique AND NOT indisprimary) \
             OR EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = $1::text::regclass \
                AND contype = 'x')",
        &[&qualified],
    )
    .await?
    .try_get(0)
}

/// Whether triggers (of the table or a partition) or rules fire for
/// replayed rows at this site (enabled `ALWAYS` or `REPLICA`).
pub async fn replica_triggers<C: GenericClient + Sync>(
    c: &C,
    qualified: &str,
) -> Result<bool, tokio_postgres::Error> {
    c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgenabled IN ('A', 'R') \
                AND (tgrelid = $1::text::regclass \
                  OR tgrelid IN (SELECT relid FROM pg_partition_tree($1::text::regclass)))) \
             OR EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_enabled IN ('A', 'R') \
                AND rulename <> '_RETURN' AND ev_class = $1::text::regclass)",
        &[&qualified],
    )
    .await?
    .try_get(0)
}
