//! Waiting until the ensemble is really up, by looking where it matters:
//!
//! - a router is ready when its admin `/readyz` answers 200 (a valid
//!   topology is loaded);
//! - a replication link `a->b` runs when its slot at `a` (`ezone_to_<b>`,
//!   `docs/replicator.md`) exists and is active (a walsender streams it);
//! - a site's fence is reconciled when `ezone_fence.shards` holds a row per
//!   shard and its lease is granted (the replicator does both on start,
//!   `fence = true`).
//!
//! Each wait polls with a deadline and reports the last thing it saw.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::error::EnsembleError;
use super::http;

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(100);

/// Poll `check` until it gives `Ok(Some)`; `Ok(None)` and `Err(last)` are
/// "not yet" (the error is kept for the timeout message).
pub(crate) async fn poll<T, F, Fut>(
    what: String,
    timeout: Duration,
    mut check: F,
) -> Result<T, EnsembleError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = "nothing yet".to_string();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(EnsembleError::NotReady {
                what,
                within: timeout,
                last,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Until the router's admin `/readyz` answers 200.
pub(crate) async fn router(
    site: &str,
    admin: SocketAddr,
    timeout: Duration,
) -> Result<(), EnsembleError> {
    poll(
        format!("{site}'s router ready (GET http://{admin}/readyz)"),
        timeout,
        || async move {
            match http::get(admin, "/readyz").await? {
                (200, _) => Ok(Some(())),
                (status, body) => Err(format!("{status} {}", body.trim())),
            }
        },
    )
    .await
}

/// The slot of link `source->target` at the source (as the replicator
/// names it: `ezone_to_<target>`, `-` as `_`).
pub(crate) fn slot_name(target: &str) -> String {
    format!("ezone_to_{}", target.replace('-', "_"))
}

/// Run one query returning one `bigint` at `dsn`.
async fn count(
    dsn: &str,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i64, String> {
    let (client, conn) = ezone_pg::connect(dsn)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let driver = tokio::spawn(conn);
    let out = client
        .query_one(sql, params)
        .await
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| e.to_string());
    drop(client);
    let _ = driver.await;
    out
}

/// Until every link `source->target` (every ordered pair of `dsns`' sites)
/// has an active slot at its source.
pub(crate) async fn links(
    dsns: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), EnsembleError> {
    for (source, dsn) in dsns {
        let targets: Vec<String> = dsns
            .keys()
            .filter(|t| *t != source)
            .map(|t| slot_name(t))
            .collect();
        let want = targets.len() as i64;
        poll(
            format!("replication links out of {source} streaming (active slots {targets:?} at {source})"),
            timeout,
            || {
                let targets = targets.clone();
                async move {
                    let active = count(
                        dsn,
                        "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name = ANY($1)",
                        &[&targets],
                    )
                    .await?;
                    if active == want {
                        Ok(Some(()))
                    } else {
                        Err(format!("{active} of {want} slots active"))
                    }
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Until `site`'s fence has a row for each of `shards` shards.
pub(crate) async fn fence(
    site: &str,
    dsn: &str,
    shards: usize,
    timeout: Duration,
) -> Result<(), EnsembleError> {
    let want = shards as i64;
    poll(
        format!("{site}'s fence reconciled ({shards} rows in ezone_fence.shards)"),
        timeout,
        || async move {
            let rows = count(dsn, "SELECT count(*) FROM ezone_fence.shards", &[]).await?;
            if rows < want {
                return Err(format!("{rows} rows"));
            }
            // And its lease granted: until then the site refuses writes.
            let leased = count(
                dsn,
                "SELECT count(*) FROM ezone_fence.lease WHERE valid_until > clock_timestamp()",
                &[],
            )
            .await?;
            if leased == 1 {
                Ok(Some(()))
            } else {
                Err("its lease not granted yet".to_string())
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_match_the_replicators() {
        assert_eq!(slot_name("shanghai"), "ezone_to_shanghai");
        assert_eq!(slot_name("new-york"), "ezone_to_new_york");
    }

    #[tokio::test(start_paused = true)]
    async fn poll_reports_the_last_thing_seen() {
        let err = poll::<(), _, _>("a thing".to_string(), Duration::from_secs(1), || async {
            Err("not yet".to_string())
        })
        .await
        .expect_err("times out");
        let text = err.to_string();
        assert!(
            text.contains("a thing") && text.contains("not yet"),
            "{text}"
        );
    }
}
