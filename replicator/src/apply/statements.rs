//! The statements an applier runs, prepared once per connection: the
//! statement cache (all parameters text, or `text[]` for set statements:
//! see [`crate::sql`]) and the planner settings set statements run with.

use std::collections::HashMap;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Client;

use crate::sql::{SetStatement, Statement};

/// Planner settings for set statements (see [`crate::plan`]), set for a
/// run of them and reset after it, within the apply transaction.
///
/// A set statement joins the `unnest` of its arrays to the table by the
/// primary key. Left to the planner, that join becomes a hash join over a
/// sequential scan of the whole table when the table is empty or never
/// analyzed at the first execution, and the prepared statement keeps that
/// plan while the table grows (with autovacuum off, for ever). So: one
/// generic plan per statement, which takes the arrays for 10 rows (no
/// planning per execution), and no hash or merge joins: a nested loop of
/// primary-key index lookups. Reset after the run, so that user code (a
/// trigger enabled `ALWAYS` on a table written row by row) plans with the
/// target's own settings. Sequential scans are not disabled: a disabled
/// scan that is still needed somewhere costs 10^10, which sends every such
/// statement through JIT compilation.
pub const SET_PLANNER_SQL: &str = "SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off";

/// Back to the session's settings after a run of set statements.
pub const RESET_PLANNER_SQL: &str = "SET LOCAL plan_cache_mode TO DEFAULT; \
     SET LOCAL enable_hashjoin TO DEFAULT; SET LOCAL enable_mergejoin TO DEFAULT";

/// How many distinct prepared statements an applier keeps.
pub const MAX_CACHED_STATEMENTS: usize = 1000;

/// Executes a statement, preparing it once per connection (all parameters
/// are text: see [`crate::sql`]).
pub(super) async fn exec(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &Statement,
) -> Result<u64, tokio_postgres::Error> {
    let prepared = prepare(tx, cache, st).await?;
    tx.execute(&prepared, &params(st)).await
}

/// The prepared form of `st` on this connection, preparing it on first use.
pub(super) async fn prepare(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &Statement,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    prepare_typed(tx, cache, &st.sql, Type::TEXT, st.params.len()).await
}

/// As [`prepare`], for a set statement (every parameter `text[]`).
pub(super) async fn prepare_set(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    st: &SetStatement<'_>,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    prepare_typed(tx, cache, &st.sql, Type::TEXT_ARRAY, st.arrays.len()).await
}

/// As [`prepare`], for a `COPY ... FROM STDIN` (no parameters).
pub(super) async fn prepare_copy(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    prepare_typed(tx, cache, sql, Type::TEXT, 0).await
}

async fn prepare_typed(
    tx: &Client,
    cache: &mut HashMap<String, tokio_postgres::Statement>,
    sql: &str,
    ty: Type,
    n: usize,
) -> Result<tokio_postgres::Statement, tokio_postgres::Error> {
    if let Some(p) = cache.get(sql) {
        return Ok(p.clone());
    }
    let p = tx.prepare_typed(sql, &vec![ty; n]).await?;
    cache.insert(sql.to_string(), p.clone());
    Ok(p)
}

pub(super) fn params(st: &Statement) -> Vec<&(dyn ToSql + Sync)> {
    st.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}
