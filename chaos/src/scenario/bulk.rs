//! Large transactions during a run: what makes the replicators take the
//! path of transactions streamed before their commit while faults land.
//!
//! With [`EnsembleSpec::bulk`](crate::ensemble::EnsembleSpec::bulk) every
//! site has `public.chaos_bulk`, replicated like the orders, and streams any
//! transaction over 64 kB of changes. The [`BulkWriter`] writes one *batch*
//! every few seconds at a site picked by the seed, straight into its
//! Postgres: one transaction of [`ROWS`] rows, a savepoint whose rows are
//! rolled back, [`ROWS_AFTER`] rows more, then COMMIT (or, one time in four,
//! ROLLBACK). Its log says how each batch ended: committed (COMMIT
//! answered), rolled back (by the writer, or an error before COMMIT), or in
//! doubt (COMMIT sent, no answer). Meanwhile it reads every site every
//! couple of seconds: a batch must never be visible in part (any count
//! other than [`WHOLE`]), and no rolled-back row ever.
//!
//! At the end [`check`] waits until every site holds the same batches and
//! judges them against the log ([`judge`], pure): every committed batch
//! whole at every site, no rolled-back one anywhere, an in-doubt one whole
//! everywhere or nowhere, nothing the writer never wrote.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ensemble::BULK_TABLE as TABLE;

/// Rows a batch writes before its savepoint.
pub const ROWS: i32 = 2_000;
/// Rows written inside the savepoint and rolled back to it (negative `n`).
pub const ROWS_ROLLED_BACK: i32 = 500;
/// Rows written after the rollback to the savepoint.
pub const ROWS_AFTER: i32 = 1_000;
/// The rows of a whole batch.
pub const WHOLE: i64 = (ROWS + ROWS_AFTER) as i64;
/// Each row's payload (so a batch's changes, ~300 kB, are streamed).
const PAYLOAD: usize = 64;
/// How long a batch's statements may take before it is given up.
const BATCH_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a site's read may take while the run goes on.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the sites are read for partial batches.
const OBSERVE_EVERY: Duration = Duration::from_secs(2);

/// How a batch ended, as the writer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// COMMIT answered: the batch must be whole at every site.
    Committed,
    /// Rolled back (by the writer, or failed before COMMIT): nowhere.
    RolledBack,
    /// COMMIT sent and not answered: whole everywhere or nowhere.
    InDoubt(String),
}

/// One batch the writer began.
#[derive(Debug, Clone)]
pub struct Batch {
    pub id: String,
    pub site: String,
    pub fate: Fate,
}

/// What the writer did and saw.
#[derive(Debug, Clone, Default)]
pub struct BulkLog {
    pub batches: Vec<Batch>,
    /// Batches that could not start (the site's Postgres unreachable).
    pub not_started: u64,
    /// What was seen in part while the run went on (site, batch, rows).
    pub partial_seen: Vec<String>,
}

/// The writer and the observer, running.
pub struct BulkWriter {
    stop: watch::Sender<bool>,
    writer: JoinHandle<(Vec<Batch>, u64)>,
    observer: JoinHandle<()>,
    partial: Arc<Mutex<Vec<String>>>,
}

/// Starts writing a batch about every `every` at the sites of `dsns`
/// (picked by `seed`), and reading every site for partial batches.
pub fn start(dsns: BTreeMap<String, String>, seed: u64, every: Duration) -> BulkWriter {
    let (stop, rx) = watch::channel(false);
    let sites: Vec<(String, String)> = dsns.into_iter().collect();
    let partial: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = tokio::spawn(write_batches(sites.clone(), seed, every, rx.clone()));
    let observer = tokio::spawn(observe(sites, partial.clone(), rx));
    BulkWriter {
        stop,
        writer,
        observer,
        partial,
    }
}

impl BulkWriter {
    /// Stops writing (a batch under way finishes) and reading; the log.
    pub async fn stop(self) -> BulkLog {
        let _ = self.stop.send(true);
        let (batches, not_started) = self.writer.await.unwrap_or_default();
        let _ = self.observer.await;
        let partial_seen = self
            .partial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        BulkLog {
            batches,
            not_started,
            partial_seen,
        }
    }
}

async fn write_batches(
    sites: Vec<(String, String)>,
    seed: u64,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> (Vec<Batch>, u64) {
    // Its own stream of numbers: the fault schedule's is not disturbed.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xb01c);
    let mut batches = Vec::new();
    let mut not_started = 0;
    let mut n = 0u64;
    loop {
        let wait = every.mul_f64(rng.gen_range(0.5..1.5));
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return (batches, not_started),
            _ = tokio::time::sleep(wait) => {}
        }
        if sites.is_empty() {
            continue;
        }
        let (site, dsn) = &sites[rng.gen_range(0..sites.len())];
        let commit = rng.gen_range(0..4) != 0;
        n += 1;
        let id = format!("s{seed}-{n}");
        match write_one(dsn, &id, site, commit).await {
            Some(fate) => batches.push(Batch {
                id,
                site: site.clone(),
                fate,
            }),
            None => not_started += 1,
        }
    }
}

/// The batch's statements before its end.
fn batch_sql(id: &str, site: &str) -> String {
    let rows = |from: i32, to: i32| {
        format!(
            "INSERT INTO {TABLE} SELECT '{id}', g, '{site}', repeat('x', {PAYLOAD}) \
             FROM generate_series({from}, {to}) g;"
        )
    };
    format!(
        "BEGIN; {} SAVEPOINT s; {} ROLLBACK TO SAVEPOINT s; {}",
        rows(1, ROWS),
        rows(-ROWS_ROLLED_BACK, -1),
        rows(ROWS + 1, ROWS + ROWS_AFTER)
    )
}

/// Writes one batch; `None` if it could not start (no connection).
async fn write_one(dsn: &str, id: &str, site: &str, commit: bool) -> Option<Fate> {
    let client = tokio::time::timeout(READ_TIMEOUT, ezone_pg::connect_spawned(dsn))
        .await
        .ok()?
        .ok()?;
    let body =
        tokio::time::timeout(BATCH_TIMEOUT, client.batch_execute(&batch_sql(id, site))).await;
    if !matches!(body, Ok(Ok(()))) {
        // Nothing was committed: the session's transaction dies with it.
        return Some(Fate::RolledBack);
    }
    if !commit {
        // Dropping the session would roll back too; say it.
        let _ = tokio::time::timeout(READ_TIMEOUT, client.batch_execute("ROLLBACK")).await;
        return Some(Fate::RolledBack);
    }
    match tokio::time::timeout(BATCH_TIMEOUT, client.batch_execute("COMMIT")).await {
        Ok(Ok(())) => Some(Fate::Committed),
        // The server answered with an error: it did not commit.
        Ok(Err(e)) if e.as_db_error().is_some() => Some(Fate::RolledBack),
        Ok(Err(e)) => Some(Fate::InDoubt(e.to_string())),
        Err(_) => Some(Fate::InDoubt(format!(
            "no answer to COMMIT within {BATCH_TIMEOUT:?}"
        ))),
    }
}

/// The batches at a site that are not whole, or hold a rolled-back row:
/// none must ever be seen.
fn partial_sql() -> String {
    format!(
        "SELECT batch, count(*) || ' rows, ' || count(*) FILTER (WHERE n < 1) || \
         ' of them rolled back' FROM {TABLE} GROUP BY batch HAVING count(*) <> {WHOLE} OR min(n) < 1"
    )
}

async fn observe(
    sites: Vec<(String, String)>,
    partial: Arc<Mutex<Vec<String>>>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    // Each (site, batch) is reported the first time it is seen.
    let mut reported = std::collections::BTreeSet::new();
    loop {
        for (site, dsn) in &sites {
            let read = async {
                let client = ezone_pg::connect_spawned(dsn).await.ok()?;
                client.query(&partial_sql(), &[]).await.ok()
            };
            // A site paused or unreachable is skipped this round.
            if let Ok(Some(rows)) = tokio::time::timeout(READ_TIMEOUT, read).await {
                let mut p = partial.lock().unwrap_or_else(|p| p.into_inner());
                for r in rows {
                    let (batch, what): (String, String) = (r.get(0), r.get(1));
                    if reported.insert((site.clone(), batch.clone())) {
                        p.push(format!(
                            "{:.1}s at {site}: batch {batch}: {what}",
                            started.elapsed().as_secs_f64()
                        ));
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(OBSERVE_EVERY) => {}
        }
    }
}

/// One site's batches: id → (rows, rows with a negative `n`).
pub type SiteBatches = BTreeMap<String, (i64, i64)>;

/// Every batch at one site.
async fn read_site(dsn: &str) -> Result<SiteBatches, String> {
    let client = ezone_pg::connect_spawned(dsn)
        .await
        .map_err(|e| e.to_string())?;
    let rows = client
        .query(
            &format!(
                "SELECT batch, count(*), count(*) FILTER (WHERE n < 1) FROM {TABLE} GROUP BY batch"
            ),
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), (r.get(1), r.get(2))))
        .collect())
}

/// What [`check`] found.
#[derive(Debug, Clone, Default)]
pub struct BulkReport {
    pub committed: usize,
    pub rolled_back: usize,
    pub in_doubt: usize,
    pub not_started: u64,
    pub violations: Vec<String>,
}

impl BulkReport {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for BulkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "large transactions ({WHOLE} rows each, streamed before their commit, a savepoint \
             rolled back in each): {} committed, {} rolled back, {} in doubt, {} not started; \
             every committed one whole at every site and no other: {}",
            self.committed,
            self.rolled_back,
            self.in_doubt,
            self.not_started,
            if self.is_ok() { "yes" } else { "NO" }
        )?;
        for v in self.violations.iter().take(20) {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

/// Waits (up to `within`) until every site holds the same batches, then
/// judges them against `log`.
pub async fn check(dsns: &BTreeMap<String, String>, log: &BulkLog, within: Duration) -> BulkReport {
    let deadline = Instant::now() + within;
    let mut by_site: BTreeMap<String, Result<SiteBatches, String>> = BTreeMap::new();
    loop {
        for (site, dsn) in dsns {
            by_site.insert(site.clone(), read_site(dsn).await);
        }
        let read: Vec<&SiteBatches> = by_site.values().filter_map(|r| r.as_ref().ok()).collect();
        let agree = read.len() == by_site.len() && read.windows(2).all(|w| w[0] == w[1]);
        if agree || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Sites that still differ differ in some batch, which the judge names.
    judge(log, &by_site)
}

/// Judges every site's batches against the writer's log. Pure.
pub fn judge(log: &BulkLog, by_site: &BTreeMap<String, Result<SiteBatches, String>>) -> BulkReport {
    let mut r = BulkReport {
        not_started: log.not_started,
        ..BulkReport::default()
    };
    for p in &log.partial_seen {
        r.violations
            .push(format!("seen in part while the run went on: {p}"));
    }
    for (site, read) in by_site {
        if let Err(e) = read {
            r.violations.push(format!("cannot read {site}: {e}"));
        }
    }
    let sites: Vec<(&String, &SiteBatches)> = by_site
        .iter()
        .filter_map(|(s, b)| b.as_ref().ok().map(|b| (s, b)))
        .collect();
    let mut known = std::collections::BTreeSet::new();
    for b in &log.batches {
        known.insert(b.id.as_str());
        let counts: Vec<(&String, Option<(i64, i64)>)> = sites
            .iter()
            .map(|(s, batches)| (*s, batches.get(&b.id).copied()))
            .collect();
        let whole_everywhere = counts.iter().all(|(_, c)| *c == Some((WHOLE, 0)));
        let nowhere = counts.iter().all(|(_, c)| c.is_none());
        let show = || {
            counts
                .iter()
                .map(|(s, c)| match c {
                    Some((rows, neg)) => format!("{s} {rows} rows ({neg} rolled back)"),
                    None => format!("{s} none"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let site = &b.site;
        let (right, said) = match &b.fate {
            Fate::Committed => {
                r.committed += 1;
                (
                    whole_everywhere,
                    format!("committed at {site}, not whole everywhere"),
                )
            }
            Fate::RolledBack => {
                r.rolled_back += 1;
                (nowhere, format!("rolled back at {site}, yet found"))
            }
            Fate::InDoubt(why) => {
                r.in_doubt += 1;
                (
                    whole_everywhere || nowhere,
                    format!("in doubt at {site} ({why}), in part or at some sites only"),
                )
            }
        };
        if !right {
            r.violations
                .push(format!("batch {} {said}: {}", b.id, show()));
        }
    }
    for (site, batches) in &sites {
        for id in batches.keys() {
            if !known.contains(id.as_str()) {
                r.violations
                    .push(format!("batch {id} at {site}: the writer never wrote it"));
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(batches: &[(&str, Fate)]) -> BulkLog {
        BulkLog {
            batches: batches
                .iter()
                .map(|(id, fate)| Batch {
                    id: id.to_string(),
                    site: "beijing".into(),
                    fate: fate.clone(),
                })
                .collect(),
            ..BulkLog::default()
        }
    }

    fn sites(per_site: &[&[(&str, i64, i64)]]) -> BTreeMap<String, Result<SiteBatches, String>> {
        per_site
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    format!("site{i}"),
                    Ok(b.iter()
                        .map(|(id, n, neg)| (id.to_string(), (*n, *neg)))
                        .collect()),
                )
            })
            .collect()
    }

    #[test]
    fn whole_batches_where_they_belong_pass() {
        let l = log(&[
            ("a", Fate::Committed),
            ("b", Fate::RolledBack),
            ("c", Fate::InDoubt("closed".into())),
            ("d", Fate::InDoubt("closed".into())),
        ]);
        let s = sites(&[
            &[("a", WHOLE, 0), ("c", WHOLE, 0)],
            &[("a", WHOLE, 0), ("c", WHOLE, 0)],
        ]);
        let r = judge(&l, &s);
        assert!(r.is_ok(), "{r}");
        assert_eq!((r.committed, r.rolled_back, r.in_doubt), (1, 1, 2));
    }

    #[test]
    fn every_way_to_be_wrong_is_named() {
        let l = log(&[
            ("missing", Fate::Committed),
            ("partial", Fate::Committed),
            ("savepoint", Fate::Committed),
            ("undead", Fate::RolledBack),
            ("split", Fate::InDoubt("closed".into())),
        ]);
        let s = sites(&[
            &[
                ("missing", WHOLE, 0),
                ("partial", WHOLE, 0),
                ("savepoint", WHOLE, 0),
                ("split", WHOLE, 0),
                ("stray", 5, 0),
            ],
            &[
                ("partial", 2000, 0),
                ("savepoint", WHOLE, 3),
                ("undead", WHOLE, 0),
            ],
        ]);
        let mut l = l;
        l.partial_seen
            .push("1.0s at site1: batch partial 2000 rows".into());
        let r = judge(&l, &s);
        let text = r.to_string();
        for id in [
            "missing",
            "partial",
            "savepoint",
            "undead",
            "split",
            "stray",
            "seen in part",
        ] {
            assert!(text.contains(id), "{id} not named:\n{text}");
        }
        assert_eq!(r.violations.len(), 7, "{text}");
    }

    #[test]
    fn a_batch_has_the_rows_the_constants_say() {
        let sql = batch_sql("s1-1", "beijing");
        assert!(sql.contains("generate_series(1, 2000)"), "{sql}");
        assert!(sql.contains("generate_series(-500, -1)"), "{sql}");
        assert!(sql.contains("generate_series(2001, 3000)"), "{sql}");
    }
}
