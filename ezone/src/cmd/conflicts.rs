//! `ezone conflicts`: list the replication conflicts recorded at the sites,
//! and resolve them by making every site hold one version of each row (the
//! survivor's or the returning site's). The work is in
//! `ezone_replicator::repair`; this module finds the sites (topology, or
//! `--dsn SITE=DSN`), connects and prints.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use ezone_replicator::repair::{self, ColumnDiff, Conflict, Keep, Repairer, SiteClient, Table};
use ezone_topology::TopologyStore;

use crate::cmd::topo::{parse_site_dsn, StoreArgs};

/// How long connecting to a site's Postgres may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest value shown in a diff before it is cut.
const DIFF_VALUE_CHARS: usize = 40;

/// Where the sites' Postgres are.
#[derive(Debug, Clone, clap::Args)]
pub struct SiteArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// A site's Postgres DSN instead of the topology's (SITE=DSN; repeatable).
    /// Without a topology store, these are the sites.
    #[arg(long = "dsn", value_parser = parse_site_dsn)]
    dsns: Vec<(String, String)>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ConflictsCommand {
    /// List the conflicts recorded at every reachable site (or one), oldest first.
    List {
        #[command(flatten)]
        sites: SiteArgs,
        /// Only this site's conflicts.
        #[arg(long)]
        site: Option<String>,
        /// Resolved ones too.
        #[arg(long)]
        all: bool,
        /// Print a JSON array (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Resolve conflicts recorded at SITE: every site ends up holding the kept version.
    Resolve {
        #[command(flatten)]
        sites: SiteArgs,
        /// The site that recorded the conflicts (the survivor of a forced failover).
        #[arg(long)]
        site: String,
        /// A conflict id (repeatable).
        #[arg(long = "id", required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Every unresolved conflict at SITE.
        #[arg(long)]
        all: bool,
        /// Whose version to keep: the survivor's row as it is now, or the
        /// returning site's (the link's source) as recorded.
        #[arg(long, value_enum)]
        keep: KeepArg,
        /// Say what would be done, write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum KeepArg {
    Survivor,
    Returning,
}

impl From<KeepArg> for Keep {
    fn from(k: KeepArg) -> Keep {
        match k {
            KeepArg::Survivor => Keep::Survivor,
            KeepArg::Returning => Keep::Returning,
        }
    }
}

pub async fn run(c: ConflictsCommand) -> anyhow::Result<()> {
    match c {
        ConflictsCommand::List {
            sites,
            site,
            all,
            json,
        } => list(&sites, site.as_deref(), all, json).await,
        ConflictsCommand::Resolve {
            sites,
            site,
            ids,
            all,
            keep,
            dry_run,
        } => resolve(&sites, &site, ids, all, keep.into(), dry_run).await,
    }
}

/// Site name -> DSN: the topology's sites with `--dsn` overrides, or only
/// the `--dsn` sites when no topology store is given.
async fn site_dsns(args: &SiteArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let overrides: BTreeMap<String, String> = args.dsns.iter().cloned().collect();
    if args.store.etcd.is_empty() && args.store.file.is_none() {
        if overrides.is_empty() {
            bail!("no sites: pass --etcd http://HOST:PORT (or set EZONE_ETCD) or --file PATH for the topology, or --dsn SITE=DSN for each site");
        }
        return Ok(overrides);
    }
    let store = args.store.open().await?;
    let snap = store.load().await.context("loading the topology")?;
    let mut sites: BTreeMap<String, String> = snap
        .topology
        .sites
        .iter()
        .map(|(name, s)| (name.clone(), s.postgres.clone()))
        .collect();
    for (site, dsn) in overrides {
        if !sites.contains_key(&site) {
            bail!(
                "--dsn names site {site:?}, which the topology does not have (its sites: {})",
                names(&sites)
            );
        }
        sites.insert(site, dsn);
    }
    Ok(sites)
}

fn names(sites: &BTreeMap<String, String>) -> String {
    sites.keys().cloned().collect::<Vec<_>>().join(", ")
}

async fn connect(site: &str, dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, ezone_pg::connect(dsn))
        .await
        .map_err(|_| {
            anyhow!(
                "site {site}: Postgres at {} did not answer within {}s",
                super::redact::redact_dsn(dsn),
                CONNECT_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| {
            format!(
                "site {site}: connecting to Postgres at {}",
                super::redact::redact_dsn(dsn)
            )
        })?;
    let site = site.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(site = %site, error = %e, "Site connection ended.");
        }
    });
    Ok(client)
}

/// A conflict with what `list` shows beside it.
struct Listed {
    conflict: Conflict,
    relation: String,
    /// Primary key values in key order, if the table could be read.
    key: Option<Vec<(String, String)>>,
}

async fn list(args: &SiteArgs, only: Option<&str>, all: bool, json: bool) -> anyhow::Result<()> {
    let dsns = site_dsns(args).await?;
    let selected: Vec<(&String, &String)> = match only {
        Some(s) => vec![dsns.get_key_value(s).ok_or_else(|| {
            anyhow!(
                "site {s:?} is not a known site (sites: {}); pass --dsn {s}=DSN",
                names(&dsns)
            )
        })?],
        None => dsns.iter().collect(),
    };
    let n_selected = selected.len();
    let mut listed = Vec::new();
    let mut unreachable = 0;
    for (site, dsn) in selected {
        let client = match connect(site, dsn).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!(
                    "warning: {}; its conflicts are not listed (start its Postgres, or pass --dsn {site}=DSN)",
                    super::redact::describe(&e)
                );
                unreachable += 1;
                continue;
            }
        };
        let conflicts = match repair::list(&client, site, all).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("warning: {e}; its conflicts are not listed");
                unreachable += 1;
                continue;
            }
        };
        let mut tables: HashMap<String, Option<Table>> = HashMap::new();
        for conflict in conflicts {
            if !tables.contains_key(&conflict.relation) {
                let t = repair::load_table(&client, site, &conflict.relation)
                    .await
                    .ok();
                tables.insert(conflict.relation.clone(), t);
            }
            let table = tables.get(&conflict.relation).and_then(Option::as_ref);
            let key = table.and_then(|t| {
                conflict
                    .key_row()
                    .ok()
                    .and_then(|r| repair::key_of(t, &r).ok())
            });
            let relation = match table {
                Some(t) => t.display_name(),
                None => repair::parse_relation(&conflict.relation)
                    .map(|(s, t)| format!("{s}.{t}"))
                    .unwrap_or_else(|_| conflict.relation.clone()),
            };
            listed.push(Listed {
                conflict,
                relation,
                key,
            });
        }
    }
    listed.sort_by(|a, b| {
        (&a.conflict.recorded_at, &a.conflict.site, a.conflict.id).cmp(&(
            &b.conflict.recorded_at,
            &b.conflict.site,
            b.conflict.id,
        ))
    });
    if json {
        let out: Vec<serde_json::Value> = listed.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for l in &listed {
        print_human(l);
    }
    let reached = n_selected - unreachable;
    println!(
        "{} {}conflict{} at {} site{}{}",
        listed.len(),
        if all { "" } else { "unresolved " },
        if listed.len() == 1 { "" } else { "s" },
        reached,
        if reached == 1 { "" } else { "s" },
        if unreachable > 0 {
            format!(" ({unreachable} unreachable: see above)")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn diff_of(c: &Conflict) -> Vec<ColumnDiff> {
    let empty = serde_json::Value::Object(Default::default());
    repair::diff(
        c.remote_row.as_ref().unwrap_or(&empty),
        c.local_row.as_ref().unwrap_or(&empty),
    )
}

fn to_json(l: &Listed) -> serde_json::Value {
    let c = &l.conflict;
    serde_json::json!({
        "site": c.site,
        "id": c.id,
        "recorded_at": c.recorded_at,
        "link": c.link,
        "kind": c.kind,
        // null: recorded before ezone recorded the operation.
        "op": c.op,
        "relation": l.relation,
        "key": l.key.as_ref().map(|k| {
            k.iter()
                .map(|(col, v)| (col.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>()
        }),
        "source_commit_lsn": c.source_commit_lsn,
        "source_commit_time": c.source_commit_time,
        "reason": c.reason,
        "resolution": c.resolution,
        "resolved": c.resolved,
        "remote_row": c.remote_row,
        "local_row": c.local_row,
        "diff": diff_of(c),
    })
}

/// A value as an SQL literal, cut when long: `NULL`, `'it''s'`.
fn shown(v: &Option<String>) -> String {
    match v {
        None => "NULL".to_string(),
        Some(s) => {
            let mut cut: String = s.chars().take(DIFF_VALUE_CHARS).collect();
            if cut.len() < s.len() {
                cut.push('…');
            }
            format!("'{}'", cut.replace('\'', "''"))
        }
    }
}

/// The recorded operation, for the human listing.
fn op_text(op: Option<&str>) -> &str {
    op.unwrap_or("op not recorded")
}

fn print_human(l: &Listed) {
    let c = &l.conflict;
    let key = l
        .key
        .as_ref()
        .map(|k| repair::key_text(k))
        .unwrap_or_else(|| "(key unknown)".to_string());
    println!(
        "#{} at {}  {}  {} ({})  {} {}{}",
        c.id,
        c.site,
        c.link,
        c.kind,
        op_text(c.op.as_deref()),
        l.relation,
        key,
        if c.resolved { "  [resolved]" } else { "" }
    );
    println!(
        "    source commit {} at {} (recorded {})",
        c.source_commit_lsn, c.source_commit_time, c.recorded_at
    );
    println!("    reason: {}", c.reason);
    println!("    resolution: {}", c.resolution);
    let rows = match (&c.local_row, &c.remote_row) {
        (None, None) => " (no row images recorded)",
        (None, Some(_)) => " (no row here)",
        (Some(_), None) => " (no remote image)",
        (Some(_), Some(_)) => "",
    };
    let d = diff_of(c);
    let cols = if d.is_empty() {
        "no differences".to_string()
    } else {
        d.iter()
            .map(|x| format!("{}: {} -> {}", x.column, shown(&x.local), shown(&x.remote)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    println!("    diff (here -> remote){rows}: {cols}");
}

async fn resolve(
    args: &SiteArgs,
    site: &str,
    ids: Vec<i64>,
    all: bool,
    keep: Keep,
    dry_run: bool,
) -> anyhow::Result<()> {
    let dsns = site_dsns(args).await?;
    if !dsns.contains_key(site) {
        bail!(
            "site {site:?} is not a known site (sites: {}); pass --dsn {site}=DSN",
            names(&dsns)
        );
    }
    // Every site takes the kept version: all must be reachable before
    // anything is written.
    let mut clients = Vec::new();
    let mut down = Vec::new();
    for (name, dsn) in &dsns {
        match connect(name, dsn).await {
            Ok(client) => clients.push(SiteClient {
                site: name.clone(),
                client,
            }),
            Err(e) => down.push(super::redact::describe(&e)),
        }
    }
    if !down.is_empty() {
        bail!(
            "nothing resolved: every site takes the kept version, and {} unreachable:\n  {}\nbring it up (or pass --dsn SITE=DSN), then re-run",
            if down.len() == 1 { "one is" } else { "some are" },
            down.join("\n  ")
        );
    }
    let ids = if all {
        let me = clients
            .iter()
            .find(|c| c.site == site)
            .ok_or_else(|| anyhow!("site {site}: not connected"))?;
        repair::list(&me.client, site, false)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect()
    } else {
        ids
    };
    if ids.is_empty() {
        println!("no unresolved conflicts at {site}");
        return Ok(());
    }
    let mut repairer = Repairer::open(clients, dry_run).await?;
    let mut failed = 0;
    for &id in &ids {
        match repairer.resolve(site, id, keep).await {
            Ok(outcome) => println!("{outcome}"),
            Err(e) => {
                failed += 1;
                let msg = e.to_string();
                if msg.starts_with(&format!("conflict {id} ")) {
                    eprintln!("error: {msg}");
                } else {
                    eprintln!("error: conflict {id}: {msg}");
                }
                if e.is_connection() {
                    eprintln!("stopping: a site's connection is gone");
                    break;
                }
            }
        }
    }
    repairer.close().await;
    if dry_run {
        println!("dry run: nothing was written");
    }
    if failed > 0 {
        bail!(
            "{failed} of {} conflicts not resolved (see above); fix the cause and re-run: resolved conflicts are skipped",
            ids.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_dsn_flags_parse() {
        assert_eq!(
            parse_site_dsn("beijing=host=a port=1"),
            Ok(("beijing".to_string(), "host=a port=1".to_string()))
        );
        assert!(parse_site_dsn("beijing").is_err());
        assert!(parse_site_dsn("=host=a").is_err());
    }
}
