//! The orders table and its install: the table itself, the fence's schema and
//! the fence trigger on the table (keyed by `city`), all idempotent, in one
//! transaction.

use ezone_replicator::fence::{install_table_sql, FenceKey, SCHEMA_SQL};

/// The table, qualified.
pub const TABLE: &str = "public.orders";
/// The shard key column the fence reads.
pub const SHARD_KEY_COLUMN: &str = "city";

/// The orders table. `id` is chosen by the client, so a retried write is
/// idempotent; `shard`/`epoch` are what the router stamped, `site` the site
/// whose service accepted the write and `fence_epoch` the fence row's epoch
/// when it committed.
pub const ORDERS_SQL: &str = "
CREATE TABLE IF NOT EXISTS public.orders (
  id text PRIMARY KEY,
  city text NOT NULL,
  user_id text NOT NULL,
  item text NOT NULL,
  amount_cents bigint NOT NULL,
  status text NOT NULL DEFAULT 'placed',
  shard integer NOT NULL,
  epoch bigint NOT NULL,
  site text NOT NULL,
  fence_epoch bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
";

/// Every column the service reads or writes; an existing table missing one
/// of them is refused at install rather than failing every request later.
pub const COLUMNS: [&str; 12] = [
    "id",
    "city",
    "user_id",
    "item",
    "amount_cents",
    "status",
    "shard",
    "epoch",
    "site",
    "fence_epoch",
    "created_at",
    "updated_at",
];

/// Errors of [`install`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("installing the orders schema: {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error(
        "{TABLE} exists but lacks column(s) {missing:?}; drop or migrate it (it was not created by `ezone orders install`)"
    )]
    Mismatch { missing: Vec<String> },
}

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The table was created now (it did not exist).
    pub created_table: bool,
    /// The fence trigger was already on the table (it is re-created anyway).
    pub had_trigger: bool,
}

impl std::fmt::Display for Installed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TABLE} {}; fence schema ezone_fence installed; fence trigger on {TABLE} ({}, shard key column {SHARD_KEY_COLUMN}, kind city)",
            if self.created_table {
                "created"
            } else {
                "already there"
            },
            if self.had_trigger {
                "re-created"
            } else {
                "created"
            },
        )
    }
}

/// The whole install as one SQL script (one transaction).
pub fn install_sql() -> String {
    format!(
        "BEGIN;\n{ORDERS_SQL}\n{SCHEMA_SQL}\n{}\nCOMMIT;",
        install_table_sql(TABLE, SHARD_KEY_COLUMN, FenceKey::City)
    )
}

/// Creates the orders table, the fence schema and the fence trigger on the
/// table. Idempotent.
pub async fn install(client: &tokio_postgres::Client) -> Result<Installed, SchemaError> {
    let db = |what| move |source| SchemaError::Db { what, source };
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, \
             EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'ezone_fence' AND tgrelid = to_regclass($1))",
            &[&TABLE],
        )
        .await
        .map_err(db("looking for an existing table"))?;
    let existed: bool = row.get(0);
    let had_trigger: bool = row.get(1);
    if existed {
        let rows = client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = 'orders'",
                &[],
            )
            .await
            .map_err(db("reading the existing table's columns"))?;
        let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing: Vec<String> = COLUMNS
            .iter()
            .filter(|c| !have.iter().any(|h| h == *c))
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(SchemaError::Mismatch { missing });
        }
    }
    client
        .batch_execute(&install_sql())
        .await
        .map_err(db("creating the table, the fence schema and the trigger"))?;
    Ok(Installed {
        created_table: !existed,
        had_trigger,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_creates_everything_in_one_transaction() {
        let sql = install_sql();
        assert!(sql.starts_with("BEGIN;") && sql.ends_with("COMMIT;"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS public.orders"));
        assert!(sql.contains("CREATE SCHEMA IF NOT EXISTS ezone_fence"));
        assert!(sql.contains("check('city', 'city')"));
        for c in COLUMNS {
            assert!(ORDERS_SQL.contains(&format!("  {c} ")), "column {c}");
        }
    }

    #[test]
    fn the_report_is_one_line() {
        let s = Installed {
            created_table: true,
            had_trigger: false,
        }
        .to_string();
        assert!(!s.contains('\n') && s.contains("created"));
    }
}
