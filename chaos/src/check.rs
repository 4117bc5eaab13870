//! The design's invariants, checked in the data (`docs/design.md`, "What
//! the chaos suite checks"):
//!
//! - **No acknowledged write is lost**: every write a client got a 2xx for is
//!   present at every site, with its value ([`lost_writes`]).
//! - **Sites converge**: `public.orders` is identical at every site, compared
//!   by a checksum of the whole table in key order ([`site_checksums`],
//!   [`identical`]).
//! - **No dual writes**: for every shard and fence epoch, the rows were
//!   accepted at one site only, and (given the topology's history) at the
//!   site that was the shard's home at that epoch ([`dual_writes`]).
//!
//! The checks are pure functions over rows ([`OrderRow`]), unit-tested
//! without I/O; [`read_rows`], [`site_checksums`], [`wait_identical`] and
//! [`verify`] read the rows from each site's Postgres.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use ezone_topology::Topology;

/// The replicated table the checks read.
pub const ORDERS_TABLE: &str = "public.orders";
/// How many examples a [`Report`] prints per kind of violation.
const REPORT_EXAMPLES: usize = 10;
/// How many row ids a [`DualWrite`] keeps per site, as examples.
const DUAL_WRITE_IDS: usize = 5;
/// How often [`wait_identical`] compares the sites.
const CONVERGE_POLL: Duration = Duration::from_millis(200);

/// A write a client got a 2xx for, and the value it must have everywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedWrite {
    pub id: String,
    pub city: String,
    pub user_id: String,
    pub item: String,
    pub amount_cents: i64,
    /// The status the row must have (the last acknowledged PATCH); `None`
    /// when only the create was acknowledged, and then status is not checked.
    pub status: Option<String>,
}

impl AckedWrite {
    /// The write acknowledged by an order service's answer to a create: its
    /// row JSON (`{"id","city","user","item","amount_cents",...}`,
    /// docs/orders.md). The status is not checked (a later PATCH may change
    /// it); for an acknowledged PATCH set [`AckedWrite::status`]. `None`
    /// when a field is missing or has the wrong type.
    pub fn from_row_json(row: &serde_json::Value) -> Option<AckedWrite> {
        let text = |k: &str| row.get(k)?.as_str().map(str::to_string);
        Some(AckedWrite {
            id: text("id")?,
            city: text("city")?,
            user_id: text("user")?,
            item: text("item")?,
            amount_cents: row.get("amount_cents")?.as_i64()?,
            status: None,
        })
    }
}

/// One row of `public.orders`, as the checks see it (every column but the
/// key may be NULL in the table, so every column but the key is optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderRow {
    pub id: String,
    pub city: Option<String>,
    pub user_id: Option<String>,
    pub item: Option<String>,
    pub amount_cents: Option<i64>,
    pub status: Option<String>,
    /// The shard the row was written for (the router's `X-Ezone-Shard`).
    pub shard: Option<u32>,
    /// The topology epoch the router routed the write at.
    pub epoch: Option<u64>,
    /// The site whose Postgres accepted the write.
    pub site: Option<String>,
    /// The epoch of the site's fence when the write was accepted.
    pub fence_epoch: Option<u64>,
}

/// Rows per site.
pub type RowsBySite = BTreeMap<String, Vec<OrderRow>>;

/// For each shard, its home site at each epoch (the topology's history).
pub type HomeHistory = BTreeMap<u32, BTreeMap<u64, String>>;

/// An acknowledged write that is not at a site as acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub id: String,
    pub site: String,
    pub problem: LostProblem,
}

/// What is wrong with a [`Lost`] write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostProblem {
    /// No row with the id.
    Missing,
    /// The row is there with another value in `field`.
    Differs {
        field: &'static str,
        expected: String,
        found: String,
    },
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            LostProblem::Missing => write!(f, "order {:?} is missing at {}", self.id, self.site),
            LostProblem::Differs {
                field,
                expected,
                found,
            } => write!(
                f,
                "order {:?} at {} has {field} = {found}, acknowledged as {expected}",
                self.id, self.site
            ),
        }
    }
}

/// A violation of "one site per shard and epoch".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DualWrite {
    /// Rows of one shard and fence epoch were accepted at more than one site.
    ManySites {
        shard: u32,
        epoch: u64,
        /// Site -> some of the ids accepted there (at most 5).
        sites: BTreeMap<String, Vec<String>>,
    },
    /// Rows were accepted at a site that was not the shard's home at that
    /// epoch (`home` is `None` when the history knows no home for it).
    NotHome {
        shard: u32,
        epoch: u64,
        site: String,
        home: Option<String>,
        /// Some of the ids (at most 5).
        ids: Vec<String>,
    },
}

impl fmt::Display for DualWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DualWrite::ManySites {
                shard,
                epoch,
                sites,
            } => {
                write!(f, "shard {shard} epoch {epoch} accepted writes at")?;
                for (i, (site, ids)) in sites.iter().enumerate() {
                    let sep = if i == 0 { " " } else { ", " };
                    write!(f, "{sep}{site} (e.g. {})", ids.join(" "))?;
                }
                Ok(())
            }
            DualWrite::NotHome {
                shard,
                epoch,
                site,
                home,
                ids,
            } => {
                let home = home.as_deref().unwrap_or("unknown to the history");
                write!(
                    f,
                    "shard {shard} epoch {epoch} accepted writes at {site}, but its home then was {home} (e.g. {})",
                    ids.join(" ")
                )
            }
        }
    }
}

/// Every acknowledged write that is not present, with its value, at every
/// site of `rows_by_site`. A write is checked field by field (city, user,
/// item, amount, and status when it was acknowledged).
pub fn lost_writes(acked: &[AckedWrite], rows_by_site: &RowsBySite) -> Vec<Lost> {
    let mut lost = Vec::new();
    for (site, rows) in rows_by_site {
        let by_id: HashMap<&str, &OrderRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        for w in acked {
            let Some(row) = by_id.get(w.id.as_str()) else {
                lost.push(Lost {
                    id: w.id.clone(),
                    site: site.clone(),
                    problem: LostProblem::Missing,
                });
                continue;
            };
            if let Some(problem) = difference(w, row) {
                lost.push(Lost {
                    id: w.id.clone(),
                    site: site.clone(),
                    problem,
                });
            }
        }
    }
    lost
}

/// The first field in which `row` differs from the acknowledged write.
fn difference(w: &AckedWrite, row: &OrderRow) -> Option<LostProblem> {
    let text = |v: &Option<String>| match v {
        Some(s) => format!("{s:?}"),
        None => "NULL".to_string(),
    };
    let mut checks: Vec<(&'static str, String, String)> = vec![
        ("city", text(&Some(w.city.clone())), text(&row.city)),
        (
            "user_id",
            text(&Some(w.user_id.clone())),
            text(&row.user_id),
        ),
        ("item", text(&Some(w.item.clone())), text(&row.item)),
        (
            "amount_cents",
            w.amount_cents.to_string(),
            row.amount_cents
                .map_or_else(|| "NULL".to_string(), |a| a.to_string()),
        ),
    ];
    if let Some(status) = &w.status {
        checks.push(("status", text(&Some(status.clone())), text(&row.status)));
    }
    checks
        .into_iter()
        .find(|(_, expected, found)| expected != found)
        .map(|(field, expected, found)| LostProblem::Differs {
            field,
            expected,
            found,
        })
}

/// Rows accepted at more than one site for one shard and fence epoch, and,
/// given the topology's history, rows accepted at a site that was not the
/// shard's home at that epoch.
///
/// `rows` may hold the rows of every site at once (replicated copies agree
/// on where a row was accepted). Rows without a shard, fence epoch or site
/// cannot be attributed and are not checked.
pub fn dual_writes(rows: &[OrderRow], homes: Option<&HomeHistory>) -> Vec<DualWrite> {
    // (shard, epoch) -> site -> ids
    let mut accepted: BTreeMap<(u32, u64), BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    for r in rows {
        let (Some(shard), Some(epoch), Some(site)) = (r.shard, r.fence_epoch, r.site.as_deref())
        else {
            continue;
        };
        accepted
            .entry((shard, epoch))
            .or_default()
            .entry(site)
            .or_default()
            .insert(r.id.as_str());
    }
    let examples = |ids: &BTreeSet<&str>| -> Vec<String> {
        ids.iter()
            .take(DUAL_WRITE_IDS)
            .map(|s| s.to_string())
            .collect()
    };
    let mut found = Vec::new();
    for ((shard, epoch), sites) in &accepted {
        if sites.len() > 1 {
            found.push(DualWrite::ManySites {
                shard: *shard,
                epoch: *epoch,
                sites: sites
                    .iter()
                    .map(|(s, ids)| (s.to_string(), examples(ids)))
                    .collect(),
            });
        }
        let Some(homes) = homes else { continue };
        let home = homes.get(shard).and_then(|h| h.get(epoch));
        for (site, ids) in sites {
            if home.map(String::as_str) != Some(*site) {
                found.push(DualWrite::NotHome {
                    shard: *shard,
                    epoch: *epoch,
                    site: site.to_string(),
                    home: home.cloned(),
                    ids: examples(ids),
                });
            }
        }
    }
    found
}

/// The home of every shard at its current epoch: a [`HomeHistory`] of one
/// topology (extend it with each topology seen to cover flips).
pub fn homes_of(topology: &Topology) -> HomeHistory {
    let mut h = HomeHistory::new();
    record_homes(&mut h, topology);
    h
}

/// Add `topology`'s shard homes at their epochs to `history`.
pub fn record_homes(history: &mut HomeHistory, topology: &Topology) {
    for s in topology.shards.values() {
        history
            .entry(s.id)
            .or_default()
            .insert(s.epoch, s.home.clone());
    }
}

/// Whether every site has the same checksum (and there is at least one).
pub fn identical(checksums: &BTreeMap<String, String>) -> bool {
    let mut values = checksums.values();
    match values.next() {
        None => false,
        Some(first) => values.all(|v| v == first),
    }
}

/// What the checks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Acknowledged writes checked.
    pub acked: usize,
    /// Rows per site.
    pub rows: BTreeMap<String, usize>,
    /// Must be empty.
    pub lost: Vec<Lost>,
    /// `public.orders` checksum per site: `"<rows>:<md5>"`.
    pub checksums: BTreeMap<String, String>,
    /// Must be empty.
    pub dual_writes: Vec<DualWrite>,
}

impl Report {
    /// The report over rows already read (pure).
    pub fn from_rows(
        acked: &[AckedWrite],
        rows_by_site: &RowsBySite,
        checksums: BTreeMap<String, String>,
        homes: Option<&HomeHistory>,
    ) -> Report {
        let all: Vec<OrderRow> = rows_by_site.values().flatten().cloned().collect();
        Report {
            acked: acked.len(),
            rows: rows_by_site
                .iter()
                .map(|(s, r)| (s.clone(), r.len()))
                .collect(),
            lost: lost_writes(acked, rows_by_site),
            checksums,
            dual_writes: dual_writes(&all, homes),
        }
    }

    /// Whether the sites' checksums agree.
    pub fn identical(&self) -> bool {
        identical(&self.checksums)
    }

    /// Nothing lost, sites identical, no dual writes.
    pub fn is_ok(&self) -> bool {
        self.lost.is_empty() && self.identical() && self.dual_writes.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "writes acked:  {}", self.acked)?;
        writeln!(f, "lost:          {} (must be 0)", self.lost.len())?;
        for l in self.lost.iter().take(REPORT_EXAMPLES) {
            writeln!(f, "  - {l}")?;
        }
        if self.lost.len() > REPORT_EXAMPLES {
            writeln!(f, "  ... and {} more", self.lost.len() - REPORT_EXAMPLES)?;
        }
        let verdict = if self.identical() { "yes" } else { "NO" };
        writeln!(f, "sites identical: {verdict}")?;
        for (site, sum) in &self.checksums {
            let rows = self.rows.get(site).copied().unwrap_or_default();
            writeln!(f, "  {site}: {rows} rows, checksum {sum}")?;
        }
        writeln!(f, "dual writes:   {} (must be 0)", self.dual_writes.len())?;
        for d in self.dual_writes.iter().take(REPORT_EXAMPLES) {
            writeln!(f, "  - {d}")?;
        }
        if self.dual_writes.len() > REPORT_EXAMPLES {
            writeln!(
                f,
                "  ... and {} more",
                self.dual_writes.len() - REPORT_EXAMPLES
            )?;
        }
        write!(
            f,
            "verdict:       {}",
            if self.is_ok() { "OK" } else { "FAILED" }
        )
    }
}

/// A failure to read a site's data (not a failed check: see [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot connect to {site}'s Postgres: {source}; is it running?")]
    Connect {
        site: String,
        #[source]
        source: tokio_postgres::Error,
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
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .map_err(|source| CheckError::Connect {
            site: site.to_string(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "Checker connection ended.");
        }
    });
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

/// Read every site and check everything: the [`Report`].
pub async fn verify(
    dsns: &BTreeMap<String, String>,
    acked: &[AckedWrite],
    homes: Option<&HomeHistory>,
) -> Result<Report, CheckError> {
    let rows = read_all(dsns).await?;
    let sums = site_checksums(dsns).await?;
    Ok(Report::from_rows(acked, &rows, sums, homes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, city: &str, shard: u32, epoch: u64, site: &str) -> OrderRow {
        OrderRow {
            id: id.to_string(),
            city: Some(city.to_string()),
            user_id: Some("u1".to_string()),
            item: Some("tea".to_string()),
            amount_cents: Some(100),
            status: Some("created".to_string()),
            shard: Some(shard),
            epoch: Some(epoch),
            site: Some(site.to_string()),
            fence_epoch: Some(epoch),
        }
    }

    fn acked(id: &str, city: &str) -> AckedWrite {
        AckedWrite {
            id: id.to_string(),
            city: city.to_string(),
            user_id: "u1".to_string(),
            item: "tea".to_string(),
            amount_cents: 100,
            status: None,
        }
    }

    fn both_sites(rows: Vec<OrderRow>) -> RowsBySite {
        [
            ("beijing".to_string(), rows.clone()),
            ("shanghai".to_string(), rows),
        ]
        .into_iter()
        .collect()
    }

    fn clean() -> (Vec<AckedWrite>, RowsBySite) {
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "021", 2, 1, "shanghai"),
        ];
        (vec![acked("a", "010"), acked("b", "021")], both_sites(rows))
    }

    fn history() -> HomeHistory {
        let mut h = HomeHistory::new();
        h.entry(1).or_default().insert(1, "beijing".to_string());
        h.entry(2).or_default().insert(1, "shanghai".to_string());
        h
    }

    #[test]
    fn clean_data_passes() {
        let (acked, rows) = clean();
        assert!(lost_writes(&acked, &rows).is_empty());
        let all: Vec<OrderRow> = rows.values().flatten().cloned().collect();
        assert!(dual_writes(&all, Some(&history())).is_empty());
        let sums: BTreeMap<String, String> = rows
            .keys()
            .map(|s| (s.clone(), "2:abc".to_string()))
            .collect();
        let report = Report::from_rows(&acked, &rows, sums, Some(&history()));
        assert!(report.is_ok(), "{report}");
        let text = report.to_string();
        assert!(text.contains("lost:          0"), "{text}");
        assert!(text.contains("sites identical: yes"), "{text}");
        assert!(text.contains("verdict:       OK"), "{text}");
    }

    #[test]
    fn a_missing_write_is_lost_at_that_site_only() {
        let (acked, mut rows) = clean();
        rows.get_mut("shanghai")
            .expect("site")
            .retain(|r| r.id != "a");
        let lost = lost_writes(&acked, &rows);
        assert_eq!(
            lost,
            vec![Lost {
                id: "a".to_string(),
                site: "shanghai".to_string(),
                problem: LostProblem::Missing,
            }]
        );
        assert_eq!(lost[0].to_string(), "order \"a\" is missing at shanghai");
    }

    #[test]
    fn a_changed_value_is_lost() {
        type Change = fn(&mut OrderRow);
        let cases: Vec<(&str, Change, &str)> = vec![
            ("amount", |r| r.amount_cents = Some(99), "amount_cents"),
            ("item", |r| r.item = None, "item"),
            ("city", |r| r.city = Some("020".to_string()), "city"),
            ("user", |r| r.user_id = Some("u2".to_string()), "user_id"),
        ];
        for (name, change, field) in cases {
            let (acked, mut rows) = clean();
            change(&mut rows.get_mut("beijing").expect("site")[0]);
            let lost = lost_writes(&acked, &rows);
            assert_eq!(lost.len(), 1, "{name}: {lost:?}");
            assert!(
                matches!(&lost[0].problem, LostProblem::Differs { field: f, .. } if *f == field),
                "{name}: {lost:?}"
            );
        }
    }

    #[test]
    fn status_is_checked_only_when_acknowledged() {
        let (mut acked, rows) = clean();
        acked[0].status = Some("created".to_string());
        assert!(lost_writes(&acked, &rows).is_empty());
        acked[0].status = Some("delivered".to_string());
        let lost = lost_writes(&acked, &rows);
        assert_eq!(lost.len(), 2, "at both sites: {lost:?}");
        assert!(lost[0].to_string().contains("status"), "{}", lost[0]);
    }

    #[test]
    fn a_dual_write_is_found() {
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "010", 1, 1, "beijing"),
            row("c", "010", 1, 1, "shanghai"),
        ];
        let found = dual_writes(&rows, None);
        assert_eq!(found.len(), 1, "{found:?}");
        match &found[0] {
            DualWrite::ManySites {
                shard,
                epoch,
                sites,
            } => {
                assert_eq!((*shard, *epoch), (1, 1));
                assert_eq!(sites["beijing"], vec!["a", "b"]);
                assert_eq!(sites["shanghai"], vec!["c"]);
            }
            other => panic!("not a dual write: {other:?}"),
        }
        // With the history, shanghai is also not shard 1's home at epoch 1.
        let found = dual_writes(&rows, Some(&history()));
        assert!(found.iter().any(|d| matches!(
            d,
            DualWrite::NotHome { site, home: Some(h), .. } if site == "shanghai" && h == "beijing"
        )));
        let report = Report::from_rows(&[], &both_sites(rows), BTreeMap::new(), None);
        assert!(!report.is_ok());
        assert!(
            report.to_string().contains(
                "shard 1 epoch 1 accepted writes at beijing (e.g. a b), shanghai (e.g. c)"
            ),
            "{report}"
        );
    }

    #[test]
    fn a_flip_is_not_a_dual_write() {
        // Shard 1 moved from beijing (epoch 1) to shanghai (epoch 3).
        let rows = vec![
            row("a", "010", 1, 1, "beijing"),
            row("b", "010", 1, 3, "shanghai"),
        ];
        let mut h = history();
        h.entry(1).or_default().insert(3, "shanghai".to_string());
        assert!(dual_writes(&rows, Some(&h)).is_empty());
        // A write at an epoch the history does not know is reported.
        let rows = vec![row("a", "010", 1, 2, "beijing")];
        assert!(matches!(
            dual_writes(&rows, Some(&h)).as_slice(),
            [DualWrite::NotHome { home: None, .. }]
        ));
    }

    #[test]
    fn unattributed_rows_are_not_counted() {
        let mut r = row("a", "010", 1, 1, "beijing");
        r.site = None;
        let rows = vec![r, row("b", "010", 1, 1, "shanghai")];
        assert!(dual_writes(&rows, None).is_empty());
    }

    #[test]
    fn identical_needs_agreement_and_a_site() {
        let sums = |v: &[&str]| -> BTreeMap<String, String> {
            v.iter()
                .enumerate()
                .map(|(i, s)| (format!("s{i}"), s.to_string()))
                .collect()
        };
        assert!(identical(&sums(&["1:x", "1:x"])));
        assert!(!identical(&sums(&["1:x", "1:y"])));
        assert!(!identical(&sums(&[])));
        let (acked, rows) = clean();
        let report = Report::from_rows(&acked, &rows, sums(&["2:x", "2:y"]), None);
        assert!(!report.is_ok());
        assert!(report.to_string().contains("sites identical: NO"));
    }

    #[test]
    fn acked_writes_come_from_the_services_row_json() {
        let row = serde_json::json!({
            "id": "a", "city": "010", "user": "u1", "item": "tea", "amount_cents": 100,
            "status": "placed", "shard": 1, "epoch": 1, "site": "beijing", "fence_epoch": 1,
            "created_at": "2024-01-01T00:00:00.000000Z", "updated_at": "2024-01-01T00:00:00.000000Z",
        });
        assert_eq!(AckedWrite::from_row_json(&row), Some(acked("a", "010")));
        assert_eq!(
            AckedWrite::from_row_json(&serde_json::json!({"id": "a"})),
            None
        );
    }

    #[test]
    fn homes_come_from_the_topology() {
        let t = ezone_topology::starter::starter(&["beijing", "shanghai"], 1);
        let h = homes_of(&t);
        assert_eq!(h[&1][&1], "beijing");
        assert_eq!(h[&2][&1], "shanghai");
    }
}
