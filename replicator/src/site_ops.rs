//! The failover driver's view of the sites' databases
//! ([`ezone_topology::failover::driver::SiteOps`]) on real Postgres: fences
//! through [`crate::fence::reconcile`], switchover markers through
//! `pg_logical_emit_message` (applied markers land in
//! `ezone_replication.markers` at the target, see [`crate::apply`]), and the
//! divergence point from the link's replication origin.
//!
//! One connection per site, opened on first use and replaced after an
//! error, so a switchover does not pay a connection per step.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ezone_topology::failover::driver::{LinkState, SiteError, SiteOps};
use ezone_topology::{Site, Topology};
use tokio::sync::Mutex;

use crate::config::origin_name;

/// The logical message prefix of switchover markers.
pub const MARKER_PREFIX: &str = "ezone.switchover";

/// Unresolved conflicts at a site about one shard (`None`: recorded without
/// a shard, by a table without a shard key or an ezone older than the
/// column), and whether they are `foreign_shard` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingConflicts {
    pub shard: Option<u32>,
    pub foreign: bool,
    pub count: i64,
}

/// How many unresolved conflicts stand in the way of moving `shard`: its
/// own, and `foreign_shard` ones recorded without a shard (they are about
/// some shard, and which one cannot be told: counted against every one).
pub fn pending_for(pending: &[PendingConflicts], shard: u32) -> i64 {
    pending
        .iter()
        .filter(|p| p.shard == Some(shard) || (p.shard.is_none() && p.foreign))
        .map(|p| p.count)
        .sum()
}

/// Reads a site's unresolved conflicts by shard. A site whose applier never
/// ran has no conflicts table: nothing is pending.
pub async fn pending_conflicts(
    c: &tokio_postgres::Client,
) -> Result<Vec<PendingConflicts>, tokio_postgres::Error> {
    let row = c
        .query_one(
            "SELECT to_regclass('ezone_replication.conflicts') IS NOT NULL, \
             EXISTS (SELECT 1 FROM pg_attribute WHERE attname = 'shard' AND NOT attisdropped \
                     AND attrelid = to_regclass('ezone_replication.conflicts'))",
            &[],
        )
        .await?;
    let (table, column): (bool, bool) = (row.get(0), row.get(1));
    if !table {
        return Ok(Vec::new());
    }
    let sql = if column {
        "SELECT shard, kind = 'foreign_shard', count(*) FROM ezone_replication.conflicts \
         WHERE NOT resolved GROUP BY 1, 2"
    } else {
        "SELECT NULL::integer, kind = 'foreign_shard', count(*) FROM ezone_replication.conflicts \
         WHERE NOT resolved GROUP BY 1, 2"
    };
    Ok(c.query(sql, &[])
        .await?
        .iter()
        .map(|r| PendingConflicts {
            shard: r
                .get::<_, Option<i32>>(0)
                .and_then(|s| u32::try_from(s).ok()),
            foreign: r.get(1),
            count: r.get(2),
        })
        .collect())
}

/// How long connecting to a site may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one statement may take (closing a fence waits for in-flight
/// writes of the shard; those are short in an OLTP service).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

type Conn = Arc<Mutex<Option<tokio_postgres::Client>>>;

/// Sites' Postgres, reached by the DSN in the topology (or an override).
#[derive(Default)]
pub struct PgSites {
    conns: std::sync::Mutex<HashMap<String, Conn>>,
    /// Per-site DSN overrides (`--dsn site=...`), else the topology's.
    overrides: HashMap<String, String>,
}

impl PgSites {
    pub fn new(overrides: HashMap<String, String>) -> PgSites {
        PgSites {
            conns: Default::default(),
            overrides,
        }
    }

    fn dsn(&self, site: &Site) -> String {
        self.overrides
            .get(&site.name)
            .cloned()
            .unwrap_or_else(|| site.postgres.clone())
    }

    fn slot(&self, site: &str) -> Conn {
        let mut m = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(site.to_string()).or_default().clone()
    }

    /// Runs `f` on the site's connection, connecting first if needed; drops
    /// the connection after an error so the next call starts afresh.
    async fn with<T, F>(&self, site: &Site, what: &str, f: F) -> Result<T, SiteError>
    where
        F: for<'c> FnOnce(
            &'c mut tokio_postgres::Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let slot = self.slot(&site.name);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            let dsn = self.dsn(site);
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, ezone_pg::connect(&dsn)).await;
            let (client, conn) = match connected {
                Ok(Ok(c)) => c,
                Ok(Err(ezone_pg::ConnectError::Postgres(e))) => {
                    return Err(classify(&site.name, "connecting", &e))
                }
                Ok(Err(e @ ezone_pg::ConnectError::Dsn(_))) => {
                    return Err(SiteError {
                        site: site.name.clone(),
                        what: "connecting".into(),
                        detail: e.to_string(),
                        retryable: false,
                    })
                }
                Err(_) => {
                    return Err(SiteError {
                        site: site.name.clone(),
                        what: "connecting".into(),
                        detail: format!("no answer within {CONNECT_TIMEOUT:?} (is it up?)"),
                        retryable: true,
                    })
                }
            };
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %crate::chain(&e), "site connection ended");
                }
            });
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else {
            return Err(SiteError {
                site: site.name.clone(),
                what: what.into(),
                detail: "no connection".into(),
                retryable: true,
            });
        };
        match tokio::time::timeout(STATEMENT_TIMEOUT, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                *guard = None;
                Err(classify(&site.name, what, &e))
            }
            Err(_) => {
                *guard = None;
                Err(SiteError {
                    site: site.name.clone(),
                    what: what.into(),
                    detail: format!("no answer within {STATEMENT_TIMEOUT:?}"),
                    retryable: true,
                })
            }
        }
    }
}

/// A database error is definite (a SQL-level refusal: permissions, a missing
/// schema) unless its SQLSTATE says the server is going away or the
/// transaction lost a race; anything without a SQLSTATE is the connection.
fn classify(site: &str, what: &str, e: &tokio_postgres::Error) -> SiteError {
    let retryable = crate::pg_error::Kind::of(e).transient_or(false);
    let detail = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => crate::chain(e),
    };
    SiteError {
        site: site.into(),
        what: what.into(),
        detail,
        retryable,
    }
}

impl SiteOps for PgSites {
    async fn sync_fence(&self, site: &Site, t: &Topology) -> Result<(), SiteError> {
        let name = site.name.clone();
        let t = t.clone();
        self.with(site, "reconciling the fence", move |c| {
            Box::pin(async move {
                crate::fence::reconcile(c, &name, &t, &name)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.source)
            })
        })
        .await
    }

    async fn open_fence_ahead(&self, site: &Site, shard: u32, epoch: u64) -> Result<(), SiteError> {
        let home = site.name.clone();
        self.with(site, "opening the fence ahead of the flip", move |c| {
            Box::pin(async move {
                // Monotonic like every fence write: never over a later epoch.
                c.execute(
                    "INSERT INTO ezone_fence.shards AS s (shard, writable, epoch, home) \
                     VALUES ($1, true, $2, $3) \
                     ON CONFLICT (shard) DO UPDATE SET writable = true, epoch = excluded.epoch, \
                     home = excluded.home, updated_at = now() \
                     WHERE s.epoch <= excluded.epoch",
                    &[&(shard as i32), &(epoch as i64), &home],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn emit_marker(&self, site: &Site, token: &str) -> Result<String, SiteError> {
        let token = token.to_string();
        self.with(site, "emitting the switchover marker", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT pg_logical_emit_message(true, $1, $2)::text",
                        &[&MARKER_PREFIX, &token],
                    )
                    .await?;
                Ok(row.get::<_, String>(0))
            })
        })
        .await
    }

    async fn marker_applied(&self, site: &Site, token: &str) -> Result<bool, SiteError> {
        let token = token.to_string();
        self.with(site, "looking for the applied marker", move |c| {
            Box::pin(async move {
                // Before the link's first apply the table may not exist yet:
                // that is "not applied", not an error.
                let row = c
                    .query_one(
                        "SELECT to_regclass('ezone_replication.markers') IS NOT NULL",
                        &[],
                    )
                    .await?;
                if !row.get::<_, bool>(0) {
                    return Ok(false);
                }
                let row = c
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM ezone_replication.markers \
                         WHERE prefix = $1 AND content = convert_to($2, 'UTF8'))",
                        &[&MARKER_PREFIX, &token],
                    )
                    .await?;
                Ok(row.get::<_, bool>(0))
            })
        })
        .await
    }

    async fn link_state(&self, source: &Site, target: &str) -> Result<LinkState, SiteError> {
        let slot = crate::config::slot_name(target);
        self.with(source, "reading the link's slot", move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        "SELECT s.active, \
                         (extract(epoch FROM now() - r.reply_time) * 1000)::bigint \
                         FROM pg_replication_slots s \
                         LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
                         WHERE s.slot_name = $1",
                        &[&slot],
                    )
                    .await?;
                Ok(match row {
                    None => LinkState::default(),
                    Some(r) => LinkState {
                        slot: true,
                        active: r.get(0),
                        last_reply: r
                            .get::<_, Option<i64>>(1)
                            .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                    },
                })
            })
        })
        .await
    }

    async fn pending_conflicts(&self, site: &Site, shard: u32) -> Result<u64, SiteError> {
        self.with(site, "counting unresolved conflicts", move |c| {
            Box::pin(async move {
                let pending = pending_conflicts(c).await?;
                Ok(pending_for(&pending, shard).max(0) as u64)
            })
        })
        .await
    }

    async fn applied_from(&self, site: &Site, from: &str) -> Result<Option<String>, SiteError> {
        let origin = origin_name(from);
        self.with(site, "reading the link's origin progress", move |c| {
            Box::pin(async move {
                let row = c
                    .query_opt(
                        // The furthest of the link's lanes (`lanes.rs`).
                        &format!(
                            "SELECT max(remote_lsn)::text FROM pg_replication_origin_status \
                             WHERE external_id IN ({})",
                            crate::config::LINK_ORIGINS_SQL
                        ),
                        &[&origin],
                    )
                    .await?;
                Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
            })
        })
        .await
    }
}
