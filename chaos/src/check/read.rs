//! Reading the sites: every row of `public.orders` and its checksum, from
//! each site's own Postgres (the I/O side of the checker; the checks
//! themselves are pure).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{identical, HomeHistory, OrderRow, Report, RowsBySite, Writes};

/// How often [`wait_identical`] compares the sites.
const CONVERGE_POLL: Duration = Duration::from_millis(200);

/// A failure to read a site's data (not a failed check: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to {site}'s Postgres: {source}; is it running?")]
    Connect {
        site: String,
        #[source]
        source: ezone_pg::ConnectError,
    },
    #[error("cannot {what} at {site}: {source}")]
    Query {
        site: String,
        what: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("the sites did not converge within {within:?}; last checksums: {last}")]
    NotConverged { within: Duration, last: String },
}

/// A session that renders values the same at every site (UTC, ISO dates),
/// so that row text compares across sites.
async fn connect(site: &str, dsn: &str) -> Result<tokio_postgres::Client, CheckError> {
    let client = ezone_pg::connect_spawned(dsn)
        .await
        .map_err(|source| CheckError::Connect {
            site: site.to_string(),
            source,
        })?;
    client
        .batch_execute(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; \
             SET extra_float_digits = 3",
        )
        .await
        .map_err(|source| CheckError::Query {
            site: site.to_string(),
            what: "set up the session",
            source,
        })?;
    Ok(client)
}

/// Every row of `public.orders` at one site, by id.
pub async fn read_rows(site: &str, dsn: &str) -> Result<Vec<OrderRow>, CheckError> {
    let client = connect(site, dsn).await?;
    let rows = client
        .query(
            "SELECT id::text, city::text, user_id::text, item::text, amount_cents::bigint, \
                    status::text, shard::bigint, epoch::bigint, site::text, fence_epoch::bigint \
             FROM public.orders ORDER BY id COLLATE \"C\"",
            &[],
        )
        .await
        .map_err(|source| CheckError::Query {
            site: site.to_string(),
            what: "read public.orders",
            source,
        })?;
    let unsigned = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(rows
        .iter()
        .map(|r| OrderRow {
            id: r.get(0),
            city: r.get(1),
            user_id: r.get(2),
            item: r.get(3),
            amount_cents: r.get(4),
            status: r.get(5),
            shard: r
                .get::<_, Option<i64>>(6)
                .and_then(|v| u32::try_from(v).ok()),
            epoch: unsigned(r.get(7)),
            site: r.get(8),
            fence_epoch: unsigned(r.get(9)),
        })
        .collect())
}

/// Every site's rows (`dsns`: site -> DSN of its own Postgres).
pub async fn read_all(dsns: &BTreeMap<String, String>) -> Result<RowsBySite, CheckError> {
    let reads = dsns.iter().map(|(site, dsn)| async move {
        read_rows(site, dsn).await.map(|rows| (site.clone(), rows))
    });
    Ok(futures::future::try_join_all(reads)
        .await?
        .into_iter()
        .collect())
}

/// The checksum of `public.orders` at one site: `"<rows>:<md5>"`, the md5
/// over every column of every row (its text form) in key order.
pub async fn checksum(site: &str, dsn: &str) -> Result<String, CheckError> {
    let client = connect(site, dsn).await?;
    let row = client
        .query_one(
            "SELECT count(*)::text || ':' || \
                    coalesce(md5(string_agg(o::text, ',' ORDER BY o.id COLLATE \"C\")), '') \
             FROM public.orders o",
            &[],
        )
        .await
        .map_err(|source| CheckError::Query {
            site: site.to_string(),
            what: "checksum public.orders",
            source,
        })?;
    Ok(row.get(0))
}

/// Every site's checksum of `public.orders`.
pub async fn site_checksums(
    dsns: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, CheckError> {
    let sums = dsns
        .iter()
        .map(|(site, dsn)| async move { checksum(site, dsn).await.map(|c| (site.clone(), c)) });
    Ok(futures::future::try_join_all(sums)
        .await?
        .into_iter()
        .collect())
}

/// Poll until every site has the same checksum; the checksums then.
pub async fn wait_identical(
    dsns: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, CheckError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = site_checksums(dsns).await;
        if let Ok(sums) = &last {
            if identical(sums) {
                return Ok(sums.clone());
            }
        }
        if Instant::now() >= deadline {
            return Err(CheckError::NotConverged {
                within: timeout,
                last: match last {
                    Ok(sums) => format!("{sums:?}"),
                    Err(e) => e.to_string(),
                },
            });
        }
        tokio::time::sleep(CONVERGE_POLL).await;
    }
}

/// Read every site and check everything against what the clients did
/// (acknowledged creates only, or the whole history): the [`Report`].
pub async fn verify<'a>(
    dsns: &BTreeMap<String, String>,
    writes: impl Into<Writes<'a>>,
    homes: Option<&HomeHistory>,
) -> Result<Report, CheckError> {
    let rows = read_all(dsns).await?;
    let sums = site_checksums(dsns).await?;
    Ok(Report::from_rows(writes, &rows, sums, homes))
}
