//! The replicator's configuration: one TOML file (`ezone replicator --config
//! replicator.toml`), with named defaults and a `validate()` whose errors name
//! the field and the fix. Not `Serialize`: source DSNs may hold passwords.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

pub mod defaults {
    use std::time::Duration;
    pub const PUBLICATION: &str = "ezone_pub";
    /// How long a switchover record must stand still, its command's lock
    /// lapsed, before a replicator finishes or rolls it back. Longer than a
    /// re-run by hand right after a crash takes to grab the lock.
    pub const ABANDONED_SWITCHOVER_AFTER: Duration = Duration::from_secs(3);
    /// How long a link stopped by a definite error (schema drift, a
    /// missing publication, bad credentials) waits before it tries again,
    /// in case an operator fixed the cause: long enough not to flood the
    /// log with the same error, short enough that a fix is picked up
    /// without restarting the process.
    pub const STOPPED_LINK_RETRY: Duration = Duration::from_secs(60);
    /// A source transaction whose changes, decoded, take more memory than
    /// this is applied as it arrives, in chunks inside one open target
    /// transaction, instead of being held whole (see `link`'s module docs):
    /// a link's memory stays bounded whatever size the source's
    /// transactions are. 16 MiB is about 65,000 changes of a small row.
    /// A transaction held whole is also applied whole, and the statements
    /// that apply it take about twice what it does: measured (2026-12-04),
    /// a 200,000-row UPDATE held whole (estimated 48 MiB) raised the peak
    /// memory by 140 MiB, so the peak is about 3x this per link. At 64 MiB
    /// (the earlier default) a 2,000,000-row UPDATE took the replicator to
    /// 215 MB.
    pub const LARGE_TRANSACTION_BYTES: usize = 16 * 1024 * 1024;
    /// Target connections each link applies over (`apply_workers`): batches
    /// that touch disjoint rows run side by side, and commit in source order
    /// (`lanes.rs`). `auto` by default: a link starts with one lane and adds
    /// one while batches wait for a lane with rows nothing in flight touches
    /// and the lane added raises the rows applied a second
    /// (`lanes/sizing.rs`), up to [`AUTO_APPLY_WORKERS_MAX`] or a quarter of
    /// the target's free connections. A fixed count was the only choice
    /// before 2026-12-05, with one lane the default: measured on 2026-12-04
    /// with `ezone bench replicator` (pgbench's TPC-B-like writes, whose
    /// every transaction updates a hot branch row), two lanes drained a
    /// backlog at 0.40x native against 0.52x with one, since such batches
    /// always meet and only got smaller; `auto` stays at one lane there.
    pub const APPLY_WORKERS: super::ApplyWorkers = super::ApplyWorkers::Auto;
    /// The most lanes `auto` opens for one link.
    pub const AUTO_APPLY_WORKERS_MAX: usize = 8;
    /// `auto` opens at most this share of the target's free connections
    /// (`max_connections` less the reserved ones and those in use when the
    /// link starts) for one link: the applications need the rest.
    pub const AUTO_SHARE_OF_FREE_CONNECTIONS: usize = 4;
    /// The most `apply_workers` accepted.
    pub const MAX_APPLY_WORKERS: usize = 32;
    /// Threads of the replicator process's async runtime
    /// (`worker_threads`). The replicator mostly waits for Postgres, which
    /// does the work in its own processes; with one thread, a message on a
    /// link's stream wakes one thread, not a second one for the task it
    /// hands the message to. `ezone bench replicator` (2026-12-04, 2 cores,
    /// TLS, 150k rows, alternated): the replicator's CPU in the drain 0.79 /
    /// 0.81 s with one thread against 1.29 / 1.08 s with two, the drain
    /// 1.10x / 1.27x native against 0.93x / 1.16x. Raise it for a site with
    /// many busy links.
    pub const WORKER_THREADS: usize = 1;
    /// The most `worker_threads` accepted.
    pub const MAX_WORKER_THREADS: usize = 64;
    /// The least `large_transaction_bytes` accepted.
    pub const MIN_LARGE_TRANSACTION_BYTES: usize = 64 * 1024;
    /// Ask each source to stream transactions that outgrow its
    /// `logical_decoding_work_mem` before their commit (`streaming`). Off
    /// by default: measured with `ezone bench replicator --large-rows
    /// 2000000` (2026-12-04, 2 cores, TLS), a 2,000,000-row UPDATE was
    /// applied at the target 14.2 s after the source's commit without
    /// streaming (the link applies it while the source sends it) and 20.9 s
    /// with it (the link applies it from its spool once the commit
    /// arrives, and the stream was still catching up with the source);
    /// native logical replication took 17.6 / 17.8 s. On, the source does
    /// not spill the transaction to its own disk (311 MB there without
    /// streaming): the replicator's host keeps it instead.
    pub const STREAMING: bool = false;

    /// Where streamed transactions wait for their commit (`spool_dir`):
    /// the system's temporary directory (`TMPDIR`, else `/tmp`).
    pub fn spool_dir() -> std::path::PathBuf {
        std::env::temp_dir()
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatorConfig {
    /// This replicator's site: it applies every other site's changes into
    /// this site's Postgres (one link per other site).
    pub site: String,
    /// Tables to replicate, `schema.table` (each needs a primary key).
    pub tables: Vec<String>,
    /// The publication created at each source.
    #[serde(default = "d_publication")]
    pub publication: String,
    pub topology: TopologySource,
    /// Per source site: how to reach its Postgres from here, when not the
    /// topology's `postgres` DSN (e.g. through a WAN proxy).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceOverride>,
    /// This site's Postgres, when not the topology's DSN.
    #[serde(default)]
    pub target_dsn: Option<String>,
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Keep this site's database fence in line with the topology (on start
    /// and on every change). Needs `ezone fence install` on the tables.
    #[serde(default)]
    pub fence: bool,
    /// How conflicts are resolved (`owner_wins` or `last_writer_wins`).
    #[serde(default)]
    pub conflict_policy: crate::conflict::Policy,
    /// The shard key column of each table (`"schema.table" = { column =
    /// "city", kind = "city" }`): a change for a shard homed at another site
    /// than the one it was written at is a conflict.
    #[serde(default)]
    pub shard_keys: BTreeMap<String, crate::conflict::ShardKey>,
    /// Finish or roll back switchovers whose command died (their lock
    /// lapsed and their record stood still this long); `"0s"` turns it
    /// off. Every site's replicator does it; the shard lock picks one.
    #[serde(default = "d_abandoned", with = "humantime_serde")]
    pub abandoned_switchover_after: std::time::Duration,
    /// A link stopped by a definite error tries again after this long (the
    /// other links go on meanwhile); `"0s"`: it stays stopped until the
    /// process restarts.
    #[serde(default = "d_stopped_retry", with = "humantime_serde")]
    pub stopped_link_retry: std::time::Duration,
    /// A source transaction bigger than this (its decoded changes, in
    /// bytes) is applied as it arrives instead of held whole in memory
    /// ([`defaults::LARGE_TRANSACTION_BYTES`]).
    #[serde(default = "d_large_transaction_bytes")]
    pub large_transaction_bytes: usize,
    /// Have each source stream a transaction larger than its
    /// `logical_decoding_work_mem` before its commit (protocol version 2,
    /// Postgres 14 and later), kept in `spool_dir` until it commits
    /// ([`defaults::STREAMING`]).
    #[serde(default = "d_streaming")]
    pub streaming: bool,
    /// The directory streamed transactions wait in (in unnamed files,
    /// gone with the process) ([`defaults::spool_dir`]).
    #[serde(default)]
    pub spool_dir: Option<std::path::PathBuf>,
    /// Target connections each link applies over: `"auto"` or a count
    /// ([`defaults::APPLY_WORKERS`]); 1 applies one batch at a time.
    #[serde(default = "d_apply_workers")]
    pub apply_workers: ApplyWorkers,
    /// Threads of the process's async runtime
    /// ([`defaults::WORKER_THREADS`]).
    #[serde(default = "d_worker_threads")]
    pub worker_threads: usize,
}

fn d_streaming() -> bool {
    defaults::STREAMING
}

fn d_worker_threads() -> usize {
    defaults::WORKER_THREADS
}

fn d_apply_workers() -> ApplyWorkers {
    defaults::APPLY_WORKERS
}

fn d_large_transaction_bytes() -> usize {
    defaults::LARGE_TRANSACTION_BYTES
}

fn d_abandoned() -> std::time::Duration {
    defaults::ABANDONED_SWITCHOVER_AFTER
}

fn d_stopped_retry() -> std::time::Duration {
    defaults::STOPPED_LINK_RETRY
}

fn d_publication() -> String {
    defaults::PUBLICATION.to_string()
}

/// The `[topology]` table: etcd (with TLS and a user) or a file.
pub use ezone_topology::store::TopologySource;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceOverride {
    pub dsn: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `/metrics` and `/healthz`.
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replicator config: {field}: {problem}")]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

fn err(field: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `field` must be 1 to `max`.
fn one_to(
    field: &str,
    value: usize,
    max: usize,
    default: impl std::fmt::Display,
    what: &str,
) -> Result<(), ConfigError> {
    if value == 0 || value > max {
        return Err(err(
            field,
            format!("{value} is not between 1 and {max}: {what} (the default is {default})"),
        ));
    }
    Ok(())
}

/// How many target connections (lanes) a link applies over
/// ([`defaults::APPLY_WORKERS`]): in the file, `"auto"` or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawApplyWorkers")]
pub enum ApplyWorkers {
    /// One lane to start, more while they pay (`lanes/sizing.rs`).
    Auto,
    /// Always this many.
    Fixed(usize),
}

impl std::fmt::Display for ApplyWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyWorkers::Auto => f.write_str("auto"),
            ApplyWorkers::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl std::str::FromStr for ApplyWorkers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(ApplyWorkers::Auto);
        }
        s.trim()
            .parse::<usize>()
            .map(ApplyWorkers::Fixed)
            .map_err(|_| format!("{s:?} is neither \"auto\" nor a count of target connections"))
    }
}

/// As in the file: `"auto"` or the count (for reports).
impl serde::Serialize for ApplyWorkers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApplyWorkers::Auto => s.serialize_str("auto"),
            ApplyWorkers::Fixed(n) => s.serialize_u64(*n as u64),
        }
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawApplyWorkers {
    Count(i64),
    Word(String),
    /// Anything else, refused by name.
    Other(toml::Value),
}

impl TryFrom<RawApplyWorkers> for ApplyWorkers {
    type Error = String;
    fn try_from(raw: RawApplyWorkers) -> Result<Self, Self::Error> {
        match raw {
            // Zero and too many are `validate`'s to refuse, with the range.
            RawApplyWorkers::Count(n) => usize::try_from(n)
                .map(ApplyWorkers::Fixed)
                .map_err(|_| format!("apply_workers = {n}: give \"auto\" or a count from 1")),
            RawApplyWorkers::Word(w) => w.parse(),
            RawApplyWorkers::Other(v) => Err(format!(
                "apply_workers = {v}: give \"auto\" or a count of target connections"
            )),
        }
    }
}

impl ReplicatorConfig {
    /// The spool directory of each link when `streaming` is on, else `None`
    /// ([`crate::link::LinkConfig::streaming`]).
    pub fn link_streaming(&self) -> Option<std::path::PathBuf> {
        self.streaming
            .then(|| self.spool_dir.clone().unwrap_or_else(defaults::spool_dir))
    }

    pub fn from_toml(text: &str) -> Result<ReplicatorConfig, ConfigError> {
        let c: ReplicatorConfig = toml::from_str(text).map_err(|e| err("(file)", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.site.trim().is_empty() {
            return Err(err("site", "empty: set this replicator's site"));
        }
        if self.tables.is_empty() {
            return Err(err("tables", "no tables: list the tables to replicate"));
        }
        if let ApplyWorkers::Fixed(n) = self.apply_workers {
            one_to(
                "apply_workers",
                n,
                defaults::MAX_APPLY_WORKERS,
                "\"auto\"",
                "the target connections each link applies over",
            )?;
        }
        one_to(
            "worker_threads",
            self.worker_threads,
            defaults::MAX_WORKER_THREADS,
            defaults::WORKER_THREADS,
            "the threads of the replicator's runtime",
        )?;
        if self.large_transaction_bytes < defaults::MIN_LARGE_TRANSACTION_BYTES {
            return Err(err(
                "large_transaction_bytes",
                format!(
                    "{} is below the least, {}: a transaction that size is small enough to hold \
                     (the default is {})",
                    self.large_transaction_bytes,
                    defaults::MIN_LARGE_TRANSACTION_BYTES,
                    defaults::LARGE_TRANSACTION_BYTES
                ),
            ));
        }
        if let Some(dir) = &self.spool_dir {
            if !dir.is_absolute() {
                return Err(err(
                    "spool_dir",
                    format!(
                        "{} is not an absolute path: give the directory from the root",
                        dir.display()
                    ),
                ));
            }
            if !dir.is_dir() {
                return Err(err(
                    "spool_dir",
                    format!(
                        "{} is not a directory here: create it (writable by the replicator) or \
                         leave spool_dir out for the system's temporary directory",
                        dir.display()
                    ),
                ));
            }
        }
        for (i, t) in self.tables.iter().enumerate() {
            let ok = !t.is_empty()
                && t.split('.').count() <= 2
                && t.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !ok {
                return Err(err(
                    &format!("tables[{i}]"),
                    format!("{t:?} is not `schema.table` or `table` (letters, digits, _)"),
                ));
            }
        }
        for table in self.shard_keys.keys() {
            if !self.tables.contains(table) {
                return Err(err(
                    &format!("shard_keys.{table:?}"),
                    "not one of `tables`: use the same `schema.table` spelling",
                ));
            }
        }
        if self.publication.is_empty()
            || !self
                .publication
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err("publication", "use letters, digits and _"));
        }
        match (self.topology.etcd.is_empty(), &self.topology.file) {
            (true, None) => Err(err(
                "topology",
                "no source: set topology.etcd or topology.file",
            )),
            (false, Some(_)) => Err(err(
                "topology",
                "set either topology.etcd or topology.file, not both",
            )),
            // etcd's TLS files and password are read, and refused with the
            // file and the fix, when the replicator connects.
            _ => Ok(()),
        }
    }
}

/// What every ezone slot's name starts with (`ezone status` lists them by it).
pub const SLOT_PREFIX: &str = "ezone_to_";

/// Names of a link's objects, derived so that every site agrees.
pub fn slot_name(target_site: &str) -> String {
    format!("{SLOT_PREFIX}{}", target_site.replace('-', "_"))
}

/// The replication origin at the target for changes from `source_site`.
pub fn origin_name(source_site: &str) -> String {
    format!("ezone_from_{source_site}")
}

/// The origin of lane `lane` of a link whose origin is `origin` (see
/// `lanes.rs`): lane 0 is the link's own, lane `i` is `<origin>#<i>`.
pub fn lane_origin(origin: &str, lane: usize) -> String {
    if lane == 0 {
        origin.to_string()
    } else {
        format!("{origin}#{lane}")
    }
}

/// The link's origin a lane's origin belongs to ([`lane_origin`] undone).
pub fn link_origin(lane_origin: &str) -> &str {
    lane_origin
        .split_once('#')
        .map_or(lane_origin, |(link, _)| link)
}

/// SQL: the names (`roname`) of every origin of the link whose origin is
/// `$1`, its lanes' included. The link's progress is the furthest of them.
pub const LINK_ORIGINS_SQL: &str =
    "SELECT roname FROM pg_replication_origin WHERE roname = $1 OR starts_with(roname, $1 || '#')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lanes_origin_names_its_link() {
        assert_eq!(lane_origin("ezone_from_beijing", 0), "ezone_from_beijing");
        assert_eq!(lane_origin("ezone_from_beijing", 3), "ezone_from_beijing#3");
        for lane in 0..4 {
            assert_eq!(
                link_origin(&lane_origin("ezone_from_beijing", lane)),
                "ezone_from_beijing"
            );
        }
    }

    const MIN: &str =
        "site = \"shanghai\"\ntables = [\"public.orders\"]\n[topology]\nfile = \"t.toml\"\n";

    #[test]
    fn minimal_and_errors() {
        let c = ReplicatorConfig::from_toml(MIN).unwrap();
        assert_eq!(c.publication, "ezone_pub");
        let e = ReplicatorConfig::from_toml(&MIN.replace("public.orders", "a;drop")).unwrap_err();
        assert_eq!(e.field, "tables[0]");
        let e = ReplicatorConfig::from_toml(&MIN.replace("file = \"t.toml\"", "")).unwrap_err();
        assert_eq!(e.field, "topology");
        assert_eq!(slot_name("new-york"), "ezone_to_new_york");
    }

    #[test]
    fn worker_threads_default_to_one_and_are_bounded() {
        let c = ReplicatorConfig::from_toml(MIN).unwrap();
        assert_eq!(c.worker_threads, 1);
        let at = |n: &str| {
            ReplicatorConfig::from_toml(
                &MIN.replace("[topology]", &format!("worker_threads = {n}\n[topology]")),
            )
        };
        assert_eq!(at("4").unwrap().worker_threads, 4);
        for bad in ["0", "65"] {
            let e = at(bad).unwrap_err();
            assert_eq!(e.field, "worker_threads", "{bad}");
            assert!(e.problem.contains("between 1 and 64"), "{}", e.problem);
        }
    }

    #[test]
    fn apply_workers_are_auto_unless_counted() {
        let c = ReplicatorConfig::from_toml(MIN).unwrap();
        assert_eq!(c.apply_workers, ApplyWorkers::Auto);
        let at = |v: &str| {
            ReplicatorConfig::from_toml(
                &MIN.replace("[topology]", &format!("apply_workers = {v}\n[topology]")),
            )
        };
        assert_eq!(at("\"auto\"").unwrap().apply_workers, ApplyWorkers::Auto);
        assert_eq!(at("\"AUTO\"").unwrap().apply_workers, ApplyWorkers::Auto);
        assert_eq!(at("4").unwrap().apply_workers, ApplyWorkers::Fixed(4));
        for bad in ["0", "33"] {
            let e = at(bad).unwrap_err();
            assert_eq!(e.field, "apply_workers", "{bad}");
            assert!(e.problem.contains("between 1 and 32"), "{}", e.problem);
            assert!(e.problem.contains("\"auto\""), "{}", e.problem);
        }
        for bad in ["-1", "\"many\"", "1.5"] {
            let e = at(bad).unwrap_err();
            assert!(e.problem.contains("auto"), "{bad}: {}", e.problem);
        }
        assert_eq!("3".parse(), Ok(ApplyWorkers::Fixed(3)));
        assert_eq!(ApplyWorkers::Auto.to_string(), "auto");
    }

    #[test]
    fn streaming_is_off_unless_asked_for_and_spools_in_the_temporary_directory() {
        let c = ReplicatorConfig::from_toml(MIN).unwrap();
        assert_eq!(c.link_streaming(), None, "off by default");
        let with = |line: &str| {
            ReplicatorConfig::from_toml(&MIN.replace("[topology]", &format!("{line}\n[topology]")))
        };
        assert_eq!(
            with("streaming = true").unwrap().link_streaming(),
            Some(std::env::temp_dir())
        );
        let dir = std::env::temp_dir();
        let c = with(&format!(
            "streaming = true\nspool_dir = {:?}",
            dir.display().to_string()
        ))
        .unwrap();
        assert_eq!(c.link_streaming(), Some(dir));
        for (bad, why) in [
            ("spool_dir = \"spool\"", "absolute"),
            ("spool_dir = \"/no/such/ezone/spool\"", "not a directory"),
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.field, "spool_dir", "{bad}");
            assert!(e.problem.contains(why), "{}", e.problem);
        }
    }

    /// The example in docs/replicator.md is a valid config (the docs cannot drift).
    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("../../docs/replicator.md");
        let start = doc.find("## Config").expect("a Config section");
        let block = &doc[start..];
        let toml_start = block.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let toml_end = block[toml_start..].find("```").expect("end of block") + toml_start;
        ReplicatorConfig::from_toml(&block[toml_start..toml_end]).unwrap();
    }
}
