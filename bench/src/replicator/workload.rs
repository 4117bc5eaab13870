//! The schema and the workload of `ezone bench replicator`, the same for both
//! systems: what the source writes (a pgbench script), what the target has
//! (the same tables, plus the timestamps the bench reads), and how the bench
//! runs pgbench and psql against the lab's clusters.
//!
//! Each transaction changes exactly [`ROWS_PER_TXN`] rows, so row counts are
//! known from pgbench's transaction count: an upsert of one account (an
//! INSERT or an UPDATE, whichever the key needs), an UPDATE of one of
//! [`BRANCHES`] branch rows, and an INSERT into `history` stamped with
//! `clock_timestamp()` at the source, written last so the stamp is taken just
//! before the commit.
//!
//! The target's `history` and `bench_mark` tables carry one column more,
//! `seen_at`, set by a `BEFORE INSERT` trigger enabled `ALWAYS` (so it fires
//! for replayed rows under `session_replication_role = replica`, which both
//! ezone's applier and Postgres' apply worker use). `bench_mark` has it from
//! the start; `history` gets it only for the steady phase, so the backlog
//! drain pays no trigger at all.
//!
//! `bulk` is for the last phase: filled at both sites before replication
//! starts, then updated whole in one transaction.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ezone_chaos::postgres::{PgCluster, PG_USER};
use ezone_chaos::process::{ChildProcess, ProcessSpec};

use super::stats::{parse_pgbench, PgbenchSummary};

/// Replicated tables, as both consumers are told them.
pub const TABLES: &[&str] = &[
    "public.accounts",
    "public.branches",
    "public.history",
    "public.bench_mark",
    "public.bulk",
];
/// Row changes in every workload transaction.
pub const ROWS_PER_TXN: u64 = 3;
/// Branch rows, created at both sites before replication starts.
pub const BRANCHES: u32 = 10;
/// The publication at the source (one per run database).
pub const PUBLICATION: &str = "bench_pub";

/// Tables at both sites (the target adds `seen_at` columns, see module docs).
const TABLES_SQL: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, bid int NOT NULL, balance bigint NOT NULL, filler text NOT NULL);
CREATE TABLE branches (id int PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE history (id bigserial PRIMARY KEY, aid bigint NOT NULL, bid int NOT NULL, delta int NOT NULL, at timestamptz NOT NULL);
CREATE TABLE bench_mark (id int PRIMARY KEY, note text NOT NULL);
CREATE TABLE bulk (id bigint PRIMARY KEY, v text NOT NULL);
";

/// The target's timestamps: `seen_at` set when the applying transaction
/// writes the row (its commit follows at once: the row is the last of its
/// transaction).
const TARGET_EXTRA_SQL: &str = "
ALTER TABLE history ADD COLUMN seen_at timestamptz;
ALTER TABLE bench_mark ADD COLUMN seen_at timestamptz;
CREATE FUNCTION bench_seen() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN NEW.seen_at := clock_timestamp(); RETURN NEW; END $$;
CREATE TRIGGER bench_mark_seen BEFORE INSERT ON bench_mark FOR EACH ROW EXECUTE FUNCTION bench_seen();
ALTER TABLE bench_mark ENABLE ALWAYS TRIGGER bench_mark_seen;
";

/// Turns on `history.seen_at` at the target (before the steady phase).
pub const TARGET_HISTORY_TRIGGER_SQL: &str = "
CREATE TRIGGER history_seen BEFORE INSERT ON history FOR EACH ROW EXECUTE FUNCTION bench_seen();
ALTER TABLE history ENABLE ALWAYS TRIGGER history_seen;
";

/// Lag of every steady-phase transaction, source commit to target apply, in
/// microseconds.
pub const LAG_MICROS_SQL: &str = "SELECT (extract(epoch FROM seen_at - at) * 1000000)::bigint \
     FROM history WHERE seen_at IS NOT NULL";

/// One line that is equal at both sites when they hold the same data: count
/// and md5 of every replicated column of the three workload tables.
pub const CHECKSUM_SQL: &str = "SELECT \
 (SELECT count(*) || ':' || coalesce(md5(string_agg(id || ',' || bid || ',' || balance || ',' || filler, ';' ORDER BY id)), '') FROM accounts) \
 || ' ' || (SELECT count(*) || ':' || coalesce(md5(string_agg(id || ',' || balance, ';' ORDER BY id)), '') FROM branches) \
 || ' ' || (SELECT count(*) || ':' || coalesce(md5(string_agg(id || ',' || aid || ',' || bid || ',' || delta || ',' || extract(epoch FROM at), ';' ORDER BY id)), '') FROM history) \
 || ' ' || (SELECT count(*) || ':' || coalesce(md5(string_agg(id || ',' || v, ';' ORDER BY id)), '') FROM bulk)";

/// Schema at the source: tables, branch rows, the publication.
pub fn source_schema_sql() -> String {
    format!(
        "{TABLES_SQL}\n{}\nCREATE PUBLICATION {PUBLICATION} FOR TABLE {};",
        branches_sql(),
        TABLES.join(", ")
    )
}

/// Schema at the target: the same tables and branch rows, plus timestamps.
pub fn target_schema_sql() -> String {
    format!("{TABLES_SQL}\n{}\n{TARGET_EXTRA_SQL}", branches_sql())
}

fn branches_sql() -> String {
    format!("INSERT INTO branches SELECT g, 0 FROM generate_series(1, {BRANCHES}) g;")
}

/// The pgbench script of one workload transaction over `accounts` keys;
/// without the branch update if `skip_branch` (as pgbench's `-N`): then
/// [`ROWS_PER_TXN`] less one rows a transaction, and no row every
/// transaction touches.
pub fn pgbench_script(accounts: u64, skip_branch: bool) -> String {
    let script = format!(
        "\\set aid random(1, {accounts})
\\set bid random(1, {BRANCHES})
\\set delta random(-5000, 5000)
BEGIN;
INSERT INTO accounts (id, bid, balance, filler) VALUES (:aid, :bid, :delta, repeat('x', 84)) ON CONFLICT (id) DO UPDATE SET balance = accounts.balance + EXCLUDED.balance;
UPDATE branches SET balance = balance + :delta WHERE id = :bid;
INSERT INTO history (aid, bid, delta, at) VALUES (:aid, :bid, :delta, clock_timestamp());
END;
"
    );
    if skip_branch {
        script
            .lines()
            .filter(|l| !l.starts_with("UPDATE branches"))
            .map(|l| format!("{l}\n"))
            .collect()
    } else {
        script
    }
}

/// Row changes a workload transaction makes.
pub fn rows_per_txn(skip_branch: bool) -> u64 {
    if skip_branch {
        ROWS_PER_TXN - 1
    } else {
        ROWS_PER_TXN
    }
}

/// `bulk`'s rows, written at both sites before the consumer's slot exists
/// (so they are not replicated): what the large transaction updates.
pub fn bulk_fill_sql(rows: u64) -> String {
    format!("INSERT INTO bulk SELECT g, 'row ' || g FROM generate_series(1, {rows}) g")
}

/// What the large transaction does to `bulk`'s `rows` rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LargeOp {
    /// Every row updated.
    Update,
    /// As many new rows inserted (a bulk load).
    Insert,
}

/// The large transaction: every `bulk` row updated (or as many new ones
/// inserted), then mark `mark` as its last row (so the mark is applied at
/// the target just before the transaction commits there).
pub fn large_txn_sql(op: LargeOp, rows: u64, mark: u32) -> String {
    let change = match op {
        LargeOp::Update => "UPDATE bulk SET v = v || ' updated'".to_string(),
        LargeOp::Insert => format!(
            "INSERT INTO bulk SELECT g, 'new ' || g FROM generate_series({}, {}) g",
            rows + 1,
            2 * rows
        ),
    };
    format!(
        "BEGIN; {change}; {}; COMMIT",
        mark_sql(mark, "large transaction")
    )
}

/// What the source decoded for `slot` so far: bytes spilled to its disk
/// and bytes streamed before commit (`pg_stat_replication_slots`).
pub fn slot_spill_stream_sql(slot: &str) -> String {
    format!(
        "SELECT spill_bytes || ' ' || stream_bytes FROM pg_stat_replication_slots \
         WHERE slot_name = '{slot}'"
    )
}

/// A mark row at the source: its own transaction, after everything before it.
pub fn mark_sql(id: u32, note: &str) -> String {
    format!("INSERT INTO bench_mark (id, note) VALUES ({id}, '{note}')")
}

/// When mark `id` was applied at the target, µs since the Unix epoch.
pub fn mark_seen_sql(id: u32) -> String {
    format!(
        "SELECT (extract(epoch FROM seen_at) * 1000000)::bigint FROM bench_mark WHERE id = {id}"
    )
}

/// Run `sql` in `db` at `pg` (psql), naming the site in an error.
pub async fn sql(pg: &PgCluster, db: &str, sql: &str) -> anyhow::Result<String> {
    pg.psql_db(db, sql)
        .await
        .with_context(|| format!("at Postgres {} (database {db})", pg.name()))
}

/// How pgbench paces its transactions.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as it can, this many transactions in all (`-t`, per client).
    Count { txns: u64 },
    /// `-R rate -T seconds`.
    Rate { tps: u32, seconds: u64 },
}

/// pgbench with the workload script, against the source.
#[derive(Debug, Clone)]
pub struct Pgbench {
    pub bin: PathBuf,
    /// Where each run's stdout and stderr stay.
    pub dir: PathBuf,
    pub addr: SocketAddr,
    pub script: PathBuf,
    pub clients: u32,
    /// The cluster's TLS files, when it takes TCP only over TLS.
    pub tls: Option<ezone_chaos::postgres::ClientTls>,
}

impl Pgbench {
    /// Runs pgbench against database `db` and reads its summary; its output
    /// stays in `dir` under `name`.
    pub async fn run(&self, name: &str, db: &str, pace: Pace) -> anyhow::Result<PgbenchSummary> {
        let Pgbench {
            bin,
            dir,
            addr,
            script,
            clients,
            tls,
        } = self;
        let clients = *clients;
        let threads = clients.min(2);
        let mut spec = ProcessSpec::new(
            format!("pgbench {name}"),
            bin,
            dir,
            &format!("{name}.pgbench.log"),
        )
        .args([
            "-n",
            "-h",
            &addr.ip().to_string(),
            "-p",
            &addr.port().to_string(),
        ])
        .args([
            "-U",
            PG_USER,
            "-c",
            &clients.to_string(),
            "-j",
            &threads.to_string(),
        ])
        .arg("-f")
        .arg(script)
        .env_remove_prefix("PG");
        for (k, v) in tls.iter().flat_map(|t| t.env()) {
            spec = spec.env(k, v);
        }
        let timeout = match pace {
            Pace::Count { txns } => {
                let per_client = txns.div_ceil(u64::from(clients.max(1)));
                spec = spec.args(["-t", &per_client.to_string()]);
                // Generous: 20 transactions/s would still finish.
                Duration::from_secs(120 + txns / 20)
            }
            Pace::Rate { tps, seconds } => {
                spec = spec.args(["-R", &tps.to_string(), "-T", &seconds.to_string()]);
                Duration::from_secs(seconds + 120)
            }
        };
        let out_path: PathBuf = dir.join(format!("{name}.pgbench.out"));
        spec = spec.arg(db).stdout_file(out_path.clone());
        let p = ChildProcess::spawn(spec).with_context(|| format!("starting {}", bin.display()))?;
        let status = p.wait_exit(timeout).await;
        let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => {}
            Some(s) => bail!(
                "pgbench {name} failed ({s}): {}\n{}",
                p.log_tail(),
                stdout.trim()
            ),
            None => {
                p.kill().context("stopping an overrunning pgbench")?;
                bail!(
                    "pgbench {name} did not finish within {}: {}",
                    humantime::format_duration(timeout),
                    p.log_tail()
                )
            }
        }
        let summary = parse_pgbench(&stdout).with_context(|| {
            format!(
                "pgbench {name} printed no transaction count (its output is in {})",
                out_path.display()
            )
        })?;
        if summary.failed > 0 {
            bail!(
                "pgbench {name}: {} transactions failed; see {}",
                summary.failed,
                p.log_path().display()
            );
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_every_replicated_table() {
        let src = source_schema_sql();
        for t in TABLES {
            let bare = t.trim_start_matches("public.");
            assert!(src.contains(&format!("CREATE TABLE {bare} (")), "{t}");
        }
        assert!(src.contains("CREATE PUBLICATION bench_pub FOR TABLE public.accounts, "));
        // Every script statement is one of the three row changes.
        for skip in [false, true] {
            let script = pgbench_script(1000, skip);
            assert_eq!(
                script
                    .lines()
                    .filter(|l| l.starts_with("INSERT") || l.starts_with("UPDATE"))
                    .count() as u64,
                rows_per_txn(skip)
            );
            assert!(script.contains("random(1, 1000)"));
            assert_eq!(script.contains("UPDATE branches"), !skip);
            assert!(script.ends_with("END;\n"));
        }
    }
}
