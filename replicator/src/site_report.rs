//! What one site's Postgres says about ezone there, for `ezone status`: the
//! links leaving it (their slots, lag and retained WAL), its unresolved
//! conflicts, and its fence (the lease left, the shards it may write).
//!
//! Each fact is read on its own: a missing schema (a replicator that never
//! ran, a fence not installed) leaves that fact unknown, not the report.

use serde::Serialize;

use crate::config::SLOT_PREFIX;
use crate::site_ops::{pending_conflicts, PendingConflicts};

/// One link leaving the site, as its source sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkReport {
    /// `source->target`.
    pub link: String,
    /// A replicator streams from the slot now.
    pub active: bool,
    /// WAL not yet confirmed by the link.
    pub lag_bytes: Option<i64>,
    /// WAL the slot keeps.
    pub retained_wal_bytes: Option<i64>,
    /// Seconds behind ([`lag_seconds`]).
    pub lag_seconds: Option<f64>,
}

/// Everything [`read`] found; `None` where that fact could not be read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SiteReport {
    pub links: Vec<LinkReport>,
    /// Unresolved rows of `ezone_replication.conflicts`.
    pub conflicts_pending: Option<i64>,
    /// The same, by shard.
    pub pending: Vec<PendingConflicts>,
    /// Milliseconds the fence's lease has left (`i64::MAX`: for ever).
    pub fence_lease_ms: Option<i64>,
    /// Shards the fence lets this site write.
    pub writable_shards: Option<i64>,
}

/// Reads site `site`'s report on `client`.
pub async fn read(site: &str, client: &tokio_postgres::Client) -> SiteReport {
    let mut s = SiteReport::default();
    if let Ok(rows) = client
        .query(
            "SELECT s.slot_name::text, s.active, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
             extract(epoch FROM r.replay_lag)::float8 \
             FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid \
             WHERE starts_with(s.slot_name::text, $1) ORDER BY 1",
            &[&SLOT_PREFIX],
        )
        .await
    {
        for r in rows {
            let slot: String = r.get(0);
            let target = slot.trim_start_matches(SLOT_PREFIX).to_string();
            let active: bool = r.get(1);
            let lag_bytes: Option<i64> = r.get(2);
            let replay_lag: Option<f64> = r.get(4);
            s.links.push(LinkReport {
                link: format!("{site}->{target}"),
                active,
                lag_bytes,
                retained_wal_bytes: r.get(3),
                lag_seconds: lag_seconds(active, lag_bytes, replay_lag),
            });
        }
    }
    if let Ok(r) = client
        .query_one(
            "SELECT count(*) FROM ezone_replication.conflicts WHERE NOT resolved",
            &[],
        )
        .await
    {
        s.conflicts_pending = Some(r.get(0));
    }
    if let Ok(p) = pending_conflicts(client).await {
        s.pending = p;
    }
    if let Ok(Some(r)) = client
        .query_opt(
            "SELECT CASE WHEN valid_until = 'infinity' THEN 9223372036854775807 \
             ELSE (extract(epoch FROM valid_until - clock_timestamp()) * 1000)::bigint END \
             FROM ezone_fence.lease",
            &[],
        )
        .await
    {
        s.fence_lease_ms = r.get(0);
    }
    if let Ok(r) = client
        .query_one(
            "SELECT count(*) FROM ezone_fence.shards WHERE writable",
            &[],
        )
        .await
    {
        s.writable_shards = Some(r.get(0));
    }
    s
}

/// A link's lag in seconds from what Postgres reports: `replay_lag` when
/// it has one; 0 for a streaming link without one (Postgres clears it once
/// the receiver has caught up and the source is idle) or with no bytes
/// behind; unknown when nothing streams.
pub fn lag_seconds(active: bool, lag_bytes: Option<i64>, replay_lag: Option<f64>) -> Option<f64> {
    match (replay_lag, active) {
        (Some(s), _) if lag_bytes != Some(0) => Some(s.max(0.0)),
        (_, true) => Some(0.0),
        (_, false) if lag_bytes == Some(0) => Some(0.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_seconds_from_what_postgres_reports() {
        assert_eq!(lag_seconds(true, Some(100), Some(1.5)), Some(1.5));
        assert_eq!(lag_seconds(true, Some(100), None), Some(0.0));
        assert_eq!(lag_seconds(true, Some(0), Some(2.0)), Some(0.0));
        assert_eq!(lag_seconds(false, Some(100), None), None);
        assert_eq!(lag_seconds(false, Some(0), None), Some(0.0));
    }
}
