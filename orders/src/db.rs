//! The service's Postgres side: a pool of tokio-postgres connections and the
//! three operations (place an order, change its status, read it), each
//! classified on failure by what the caller should do.
//!
//! **Why every write reads the fence row first.** A write runs in one
//! transaction that starts with `SELECT epoch FROM ezone_fence.shards WHERE
//! shard = $1 FOR SHARE`. The fence trigger takes the same share lock, and
//! closing a fence (an UPDATE of that row) waits for every holder, so the
//! epoch read here is the one in force when the write commits: it is stamped
//! on the row as `fence_epoch`. The same statement maps the row's city through
//! the fence's city table; if that gives another shard than the router
//! stamped, the router's topology and the fence's disagree (a routing table
//! change in flight) and the write is refused as retryable rather than
//! stamped with the wrong shard.
//!
//! **Idempotence.** The client chooses the order id. `INSERT ... ON CONFLICT
//! (id) DO NOTHING`; when the row was there already, the stored values are
//! compared with the request's: equal is a retry of a write that committed
//! (its answer was lost), different is a conflict. A retry after a lost
//! COMMIT answer is therefore always safe.
//!
//! **Timeouts.** `statement_timeout` is set on every connection; a server
//! that stops answering altogether (paused, partitioned) is caught by a
//! client-side deadline a little longer than it, after which the connection
//! is thrown away rather than returned to the pool.

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::{Deserialize, Serialize};

use crate::config::OrdersConfig;

/// Extra time the client-side deadline gives a statement over the server's
/// `statement_timeout`.
pub const CLIENT_DEADLINE_MARGIN: Duration = Duration::from_secs(1);
/// The longest a new connection may take to establish.
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a recycle check may take.
pub const RECYCLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The columns of an [`Order`], in its field order, timestamps as RFC 3339 UTC.
const ROW: &str =
    "id, city, user_id, item, amount_cents, status, shard, epoch, site, fence_epoch, \
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";

/// The fence row of the stamped shard (share-locked) and the shard the city
/// maps to by the fence's city table.
const FENCE_SQL: &str = "SELECT s.epoch, ezone_fence.shard_of('city', $2) \
    FROM ezone_fence.shards s WHERE s.shard = $1 FOR SHARE OF s";

/// A stored order, as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub city: String,
    pub user: String,
    pub item: String,
    pub amount_cents: i64,
    pub status: String,
    pub shard: i32,
    pub epoch: i64,
    pub site: String,
    pub fence_epoch: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl Order {
    fn from_row(r: &tokio_postgres::Row) -> Result<Order, tokio_postgres::Error> {
        Ok(Order {
            id: r.try_get(0)?,
            city: r.try_get(1)?,
            user: r.try_get(2)?,
            item: r.try_get(3)?,
            amount_cents: r.try_get(4)?,
            status: r.try_get(5)?,
            shard: r.try_get(6)?,
            epoch: r.try_get(7)?,
            site: r.try_get(8)?,
            fence_epoch: r.try_get(9)?,
            created_at: r.try_get(10)?,
            updated_at: r.try_get(11)?,
        })
    }

    /// True if `o` asks for what this order holds (a retry of the same write).
    pub fn same_request(&self, o: &NewOrder) -> bool {
        self.city == o.city
            && self.user == o.user
            && self.item == o.item
            && self.amount_cents == o.amount_cents
    }
}

/// A new order, validated (see `http.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub id: String,
    pub city: String,
    pub user: String,
    pub item: String,
    pub amount_cents: i64,
}

/// What the router stamped on the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub shard: i32,
    pub epoch: i64,
}

/// What [`Db::place`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Written now.
    Created(Order),
    /// Already there with the same values: a retry.
    Existing(Order),
    /// Already there with other values.
    Conflict(Order),
}

/// What [`Db::set_status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Updated {
    Updated(Order),
    Missing,
    /// The order belongs to another city than the request named.
    OtherCity(Order),
}

/// A failed database operation, classified by what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The fence refused the write (`EZ001`): this site does not own the
    /// shard now, or it is frozen for a move. Retry through the router.
    #[error("fenced: {detail}")]
    Fenced { detail: String },
    /// The router's shard and the fence's city map disagree. Retry.
    #[error("shard mismatch: {detail}")]
    ShardMismatch { detail: String },
    /// The city maps to no shard (`EZ002`). Not retryable.
    #[error("unmapped city: {detail}")]
    Unmapped { detail: String },
    /// Connection, pool, timeout, shutdown or serialization trouble: the
    /// write may or may not have committed; retrying the same id is safe.
    #[error("database unavailable: {detail}")]
    Unavailable { detail: String },
    /// Anything else: a bug or a schema problem. Not retryable.
    #[error("database error: {detail}")]
    Internal { detail: String },
}

impl DbError {
    /// A short, bounded label (metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            DbError::Fenced { .. } => "fenced",
            DbError::ShardMismatch { .. } => "shard_mismatch",
            DbError::Unmapped { .. } => "unmapped",
            DbError::Unavailable { .. } => "unavailable",
            DbError::Internal { .. } => "internal",
        }
    }
}

/// Classifies an error Postgres reported by its SQLSTATE (pure).
pub fn classify_sqlstate(code: &str, message: &str) -> DbError {
    use ezone_replicator::pg_error::{FenceRefusal, Kind};
    let detail = message.to_string();
    match Kind::of_code(code) {
        Kind::Fence(FenceRefusal::NotWritable) => DbError::Fenced { detail },
        Kind::Fence(FenceRefusal::Unmapped) => DbError::Unmapped { detail },
        // Everything a retry can cure (ezone_replicator::pg_error's table):
        // the connection, a statement timeout, a lost race, a short
        // resource, a read-only standby, and the site's fence lease lapsed
        // (its replicator cannot read the topology): nothing committed;
        // retry, here once renewed or at the shard's new home.
        kind if kind.transient_or(false) => DbError::Unavailable { detail },
        _ => DbError::Internal {
            detail: format!("{message} (SQLSTATE {code})"),
        },
    }
}

/// Classifies a tokio-postgres error: a server error by SQLSTATE, anything
/// else (closed connection, I/O) as unavailable.
pub fn classify(e: &tokio_postgres::Error) -> DbError {
    match e.as_db_error() {
        Some(db) => classify_sqlstate(db.code().code(), db.message()),
        None => DbError::Unavailable {
            detail: ezone_replicator::chain(e),
        },
    }
}

fn pool_error(e: PoolError) -> DbError {
    match e {
        PoolError::Backend(e) => match e.as_db_error() {
            // The server refused the connection (bad password, no such
            // database): an operator must act, but the service itself is
            // still unavailable for this request.
            Some(db) => DbError::Unavailable {
                detail: format!(
                    "cannot connect: {} (SQLSTATE {})",
                    db.message(),
                    db.code().code()
                ),
            },
            None => DbError::Unavailable {
                detail: format!("cannot connect: {}", ezone_replicator::chain(&e)),
            },
        },
        other => DbError::Unavailable {
            detail: ezone_replicator::chain(&other),
        },
    }
}

/// The pool and what every write stamps.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    site: String,
    deadline: Duration,
}

impl Db {
    /// Builds the pool (connections are made on first use, so the service
    /// starts even while its Postgres is down).
    pub fn new(cfg: &OrdersConfig) -> Result<Db, crate::config::ConfigError> {
        let dsn = cfg.pg_config()?;
        let tls = ezone_pg::Tls::new(dsn.tls());
        if let Some(e) = tls.error() {
            return Err(crate::config::ConfigError::Invalid {
                field: "postgres",
                value: cfg.redacted_postgres(),
                problem: e.to_string(),
                fix: "name readable PEM files in sslrootcert, sslcert and sslkey",
            });
        }
        let mut pg = dsn.config().clone();
        let options = format!(
            "{} -c statement_timeout={}",
            pg.get_options().unwrap_or(""),
            cfg.statement_timeout_ms
        );
        pg.options(options.trim());
        pg.application_name(format!("ezone-orders-{}", cfg.site));
        let connect_timeout = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(MAX_CONNECT_TIMEOUT)
            .min(MAX_CONNECT_TIMEOUT);
        pg.connect_timeout(connect_timeout);
        let deadline = cfg.statement_timeout() + CLIENT_DEADLINE_MARGIN;
        let mgr = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(deadline))
            .create_timeout(Some(connect_timeout + CLIENT_DEADLINE_MARGIN))
            .recycle_timeout(Some(RECYCLE_TIMEOUT))
            .build()
            .map_err(|e| crate::config::ConfigError::Invalid {
                field: "pool_size",
                value: cfg.pool_size.to_string(),
                problem: e.to_string(),
                fix: "set pool_size between 1 and 256",
            })?;
        Ok(Db {
            pool,
            site: cfg.site.clone(),
            deadline,
        })
    }

    /// The site stamped on written rows.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// Connections open now, and how many are idle.
    pub fn pool_status(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }

    /// Runs `SELECT 1` on a pooled connection (the start-up check, whose
    /// failure is not fatal, and `/readyz`).
    pub async fn ping(&self) -> Result<(), DbError> {
        let client = self.client().await?;
        let r = tokio::time::timeout(self.deadline, async {
            client
                .simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, r)
    }

    /// Closes the pool: idle connections are dropped, in-use ones when returned.
    pub fn close(&self) {
        self.pool.close();
    }

    async fn client(&self) -> Result<Object, DbError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// The result of an operation run on `client` under the client-side
    /// deadline. On timeout the connection is discarded (its state is
    /// unknown); one that an error closed is dropped by the pool at recycle.
    fn settle<T>(
        &self,
        client: Object,
        r: Result<Result<T, DbError>, tokio::time::error::Elapsed>,
    ) -> Result<T, DbError> {
        match r {
            Ok(r) => r,
            Err(_) => {
                drop(Object::take(client));
                Err(DbError::Unavailable {
                    detail: format!("no answer from Postgres within {:?}", self.deadline),
                })
            }
        }
    }

    /// Places an order in one transaction: the fence row read `FOR SHARE`,
    /// `INSERT ... ON CONFLICT (id) DO NOTHING`, and if the id was taken, the
    /// stored row compared. Returns only after COMMIT returned.
    pub async fn place(&self, o: &NewOrder, stamp: Stamp) -> Result<Placed, DbError> {
        let mut client = self.client().await?;
        let r =
            tokio::time::timeout(self.deadline, place_tx(&mut client, &self.site, o, stamp)).await;
        self.settle(client, r)
    }

    /// Sets an order's status (and re-stamps shard, epoch, site and fence
    /// epoch) in one transaction that reads the fence row first.
    pub async fn set_status(
        &self,
        id: &str,
        city: &str,
        status: &str,
        stamp: Stamp,
    ) -> Result<Updated, DbError> {
        let mut client = self.client().await?;
        let r = tokio::time::timeout(
            self.deadline,
            update_tx(&mut client, &self.site, id, city, status, stamp),
        )
        .await;
        self.settle(client, r)
    }

    /// Reads an order.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, DbError> {
        let client = self.client().await?;
        let r = tokio::time::timeout(self.deadline, async {
            let stmt = client
                .prepare_cached(&format!("SELECT {ROW} FROM public.orders WHERE id = $1"))
                .await
                .map_err(|e| classify(&e))?;
            let row = client
                .query_opt(&stmt, &[&id])
                .await
                .map_err(|e| classify(&e))?;
            row.map(|r| Order::from_row(&r))
                .transpose()
                .map_err(|e| classify(&e))
        })
        .await;
        self.settle(client, r)
    }
}

/// Reads the stamped shard's fence epoch `FOR SHARE` and checks that the
/// city maps to that shard (see the module docs).
async fn fence_epoch(
    tx: &deadpool_postgres::Transaction<'_>,
    city: &str,
    stamp: Stamp,
) -> Result<i64, DbError> {
    let stmt = tx
        .prepare_cached(FENCE_SQL)
        .await
        .map_err(|e| classify(&e))?;
    let row = tx
        .query_opt(&stmt, &[&stamp.shard, &city])
        .await
        .map_err(|e| classify(&e))?;
    let Some(row) = row else {
        return Err(DbError::Fenced {
            detail: format!(
                "shard {} has no fence row at this site (run `ezone fence sync` for this site)",
                stamp.shard
            ),
        });
    };
    let epoch: i64 = row.try_get(0).map_err(|e| classify(&e))?;
    let mapped: Option<i32> = row.try_get(1).map_err(|e| classify(&e))?;
    match mapped {
        Some(m) if m != stamp.shard => Err(DbError::ShardMismatch {
            detail: format!(
                "the router stamped shard {} but this site's fence maps city {city:?} to shard {m}",
                stamp.shard
            ),
        }),
        // Unmapped: the fence trigger raises EZ002 on the write itself.
        _ => Ok(epoch),
    }
}

async fn place_tx(
    client: &mut Object,
    site: &str,
    o: &NewOrder,
    stamp: Stamp,
) -> Result<Placed, DbError> {
    let c = |e: tokio_postgres::Error| classify(&e);
    let tx = client.transaction().await.map_err(c)?;
    let fence = fence_epoch(&tx, &o.city, stamp).await?;
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO public.orders (id, city, user_id, item, amount_cents, shard, epoch, site, fence_epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING {ROW}"
        ))
        .await
        .map_err(c)?;
    let select = tx
        .prepare_cached(&format!("SELECT {ROW} FROM public.orders WHERE id = $1"))
        .await
        .map_err(c)?;
    // A row that existed at the INSERT can be gone at the SELECT (deleted
    // in between); then the INSERT is tried again.
    for _ in 0..3 {
        let row = tx
            .query_opt(
                &insert,
                &[
                    &o.id,
                    &o.city,
                    &o.user,
                    &o.item,
                    &o.amount_cents,
                    &stamp.shard,
                    &stamp.epoch,
                    &site,
                    &fence,
                ],
            )
            .await
            .map_err(c)?;
        let placed = match row {
            Some(r) => Placed::Created(Order::from_row(&r).map_err(c)?),
            None => match tx.query_opt(&select, &[&o.id]).await.map_err(c)? {
                None => continue,
                Some(r) => {
                    let existing = Order::from_row(&r).map_err(c)?;
                    if existing.same_request(o) {
                        Placed::Existing(existing)
                    } else {
                        Placed::Conflict(existing)
                    }
                }
            },
        };
        tx.commit().await.map_err(c)?;
        return Ok(placed);
    }
    Err(DbError::Unavailable {
        detail: format!("order {:?} kept appearing and vanishing; retry", o.id),
    })
}

async fn update_tx(
    client: &mut Object,
    site: &str,
    id: &str,
    city: &str,
    status: &str,
    stamp: Stamp,
) -> Result<Updated, DbError> {
    let c = |e: tokio_postgres::Error| classify(&e);
    let tx = client.transaction().await.map_err(c)?;
    let fence = fence_epoch(&tx, city, stamp).await?;
    let update = tx
        .prepare_cached(&format!(
            "UPDATE public.orders SET status = $3, updated_at = now(), shard = $4, epoch = $5, \
             site = $6, fence_epoch = $7 WHERE id = $1 AND city = $2 RETURNING {ROW}"
        ))
        .await
        .map_err(c)?;
    let row = tx
        .query_opt(
            &update,
            &[
                &id,
                &city,
                &status,
                &stamp.shard,
                &stamp.epoch,
                &site,
                &fence,
            ],
        )
        .await
        .map_err(c)?;
    let out = match row {
        Some(r) => Updated::Updated(Order::from_row(&r).map_err(c)?),
        None => {
            let select = tx
                .prepare_cached(&format!("SELECT {ROW} FROM public.orders WHERE id = $1"))
                .await
                .map_err(c)?;
            match tx.query_opt(&select, &[&id]).await.map_err(c)? {
                Some(r) => Updated::OtherCity(Order::from_row(&r).map_err(c)?),
                None => Updated::Missing,
            }
        }
    };
    tx.commit().await.map_err(c)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified_by_what_to_do() {
        let cases: &[(&str, &str)] = &[
            ("EZ001", "fenced"),
            ("EZ002", "unmapped"),
            ("EZ003", "unavailable"),
            ("57014", "unavailable"),
            ("40001", "unavailable"),
            ("40P01", "unavailable"),
            ("57P01", "unavailable"),
            ("57P03", "unavailable"),
            ("08006", "unavailable"),
            ("53300", "unavailable"),
            ("25006", "unavailable"),
            ("23505", "internal"),
            ("42P01", "internal"),
            ("XX000", "internal"),
        ];
        for (code, want) in cases {
            assert_eq!(classify_sqlstate(code, "m").kind(), *want, "{code}");
        }
    }

    #[test]
    fn the_fence_message_is_kept() {
        let e = classify_sqlstate("EZ001", "ezone fence: shard 2 is not writable at this site");
        assert_eq!(
            e,
            DbError::Fenced {
                detail: "ezone fence: shard 2 is not writable at this site".into()
            }
        );
        let e = classify_sqlstate("42P01", "relation \"orders\" does not exist");
        assert!(e.to_string().contains("42P01"), "{e}");
    }

    #[test]
    fn a_retry_matches_on_the_request_fields_only() {
        let o = NewOrder {
            id: "a".into(),
            city: "010".into(),
            user: "u".into(),
            item: "i".into(),
            amount_cents: 5,
        };
        let mut stored = Order {
            id: "a".into(),
            city: "010".into(),
            user: "u".into(),
            item: "i".into(),
            amount_cents: 5,
            status: "shipped".into(),
            shard: 1,
            epoch: 9,
            site: "beijing".into(),
            fence_epoch: 9,
            created_at: String::new(),
            updated_at: String::new(),
        };
        assert!(stored.same_request(&o));
        stored.amount_cents = 6;
        assert!(!stored.same_request(&o));
    }
}
