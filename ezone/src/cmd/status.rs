//! `ezone status`: the deployment at a glance. Sites, shards (home, state,
//! epoch), replication lag per link (from each source's slot), conflicts
//! pending at each site, switchovers in progress and forced failovers on
//! record. `--json` for scripts. A site that cannot be reached is shown as
//! such; it never makes the command fail.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use ezone_replicator::site_ops::{pending_conflicts, pending_for, PendingConflicts};
use ezone_topology::failover::driver::{ForcedRecord, Record};
use ezone_topology::{ShardState, TopologyStore};
use serde::Serialize;

use crate::cmd::topo::StoreArgs;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct SiteStatus {
    name: String,
    router: String,
    reachable: bool,
    error: Option<String>,
    /// Outgoing links (this site is the source): name -> lag.
    links: Vec<LinkStatus>,
    conflicts_pending: Option<i64>,
    writable_shards: Option<i64>,
    /// How long the site's fence lease still holds (ms; negative: lapsed
    /// that long ago, the site refuses writes; none: never granted or no
    /// fence). `i64::MAX` for a lease that never lapses.
    fence_lease_ms: Option<i64>,
    /// Unresolved conflicts by shard (summed per shard below).
    #[serde(skip)]
    pending: Vec<PendingConflicts>,
}

#[derive(Debug, Serialize)]
struct LinkStatus {
    link: String,
    active: bool,
    lag_bytes: Option<i64>,
    retained_wal_bytes: Option<i64>,
}

#[derive(Debug, Serialize)]
struct ShardStatus {
    id: u32,
    home: String,
    state: ShardState,
    epoch: u64,
    cities: usize,
    /// Unresolved conflicts about this shard at every reachable site (a
    /// switchover refuses to move it until they are repaired).
    conflicts_pending: i64,
}

#[derive(Debug, Serialize)]
struct Status {
    store: String,
    version: i64,
    sites: Vec<SiteStatus>,
    shards: Vec<ShardStatus>,
    switchovers_in_progress: Vec<Record>,
    forced_failovers: Vec<ForcedRecord>,
}

async fn site_status(name: &str, router: &str, dsn: &str) -> SiteStatus {
    let mut s = SiteStatus {
        name: name.into(),
        router: router.into(),
        reachable: false,
        error: None,
        links: Vec::new(),
        conflicts_pending: None,
        writable_shards: None,
        fence_lease_ms: None,
        pending: Vec::new(),
    };
    let connected = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_postgres::connect(dsn, tokio_postgres::NoTls),
    )
    .await;
    let client = match connected {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        Ok(Err(e)) => {
            s.error = Some(e.to_string());
            return s;
        }
        Err(_) => {
            s.error = Some("no answer within 3 s".into());
            return s;
        }
    };
    s.reachable = true;
    // Each query stands alone: a missing schema (replicator never ran,
    // fence not installed) leaves that field empty.
    if let Ok(rows) = client
        .query(
            "SELECT slot_name::text, active, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name LIKE 'ezone_to_%' ORDER BY 1",
            &[],
        )
        .await
    {
        for r in rows {
            let slot: String = r.get(0);
            let target = slot.trim_start_matches("ezone_to_").to_string();
            s.links.push(LinkStatus {
                link: format!("{name}->{target}"),
                active: r.get(1),
                lag_bytes: r.get(2),
                retained_wal_bytes: r.get(3),
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
    if let Ok(p) = pending_conflicts(&client).await {
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

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let snap = store.load().await.context("loading the topology")?;
    let t = &snap.topology;
    let mut sites = Vec::new();
    let checks = t
        .sites
        .values()
        .map(|s| site_status(&s.name, &s.router, &s.postgres));
    for s in futures::future::join_all(checks).await {
        sites.push(s);
    }
    let mut cities: BTreeMap<u32, usize> = BTreeMap::new();
    for shard in t.routing.cities.values() {
        *cities.entry(*shard).or_default() += 1;
    }
    let shards = t
        .shards
        .values()
        .map(|s| ShardStatus {
            id: s.id,
            home: s.home.clone(),
            state: s.state,
            epoch: s.epoch,
            cities: cities.get(&s.id).copied().unwrap_or(0),
            conflicts_pending: sites.iter().map(|x| pending_for(&x.pending, s.id)).sum(),
        })
        .collect();
    let switchovers_in_progress = store
        .list_ops("switchover/")
        .await?
        .values()
        .filter_map(|b| serde_json::from_slice::<Record>(b).ok())
        .filter(|r| !r.finished)
        .collect();
    let forced_failovers = store
        .list_ops("forced/")
        .await?
        .values()
        .filter_map(|b| serde_json::from_slice::<ForcedRecord>(b).ok())
        .collect();
    let st = Status {
        store: store.describe(),
        version: snap.version,
        sites,
        shards,
        switchovers_in_progress,
        forced_failovers,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    print_text(&st);
    Ok(())
}

fn print_text(st: &Status) {
    println!("topology: {} (version {})", st.store, st.version);
    println!("\nsites:");
    for s in &st.sites {
        if !s.reachable {
            println!(
                "  {:<12} router {:<22} postgres UNREACHABLE: {}",
                s.name,
                s.router,
                s.error.as_deref().unwrap_or("")
            );
            continue;
        }
        let lease = match s.fence_lease_ms {
            None => "none".to_string(),
            Some(i64::MAX) => "never lapses".to_string(),
            Some(ms) if ms > 0 => format!("{:.1} s left", ms as f64 / 1000.0),
            Some(ms) => format!("LAPSED {:.1} s ago: refusing writes", -ms as f64 / 1000.0),
        };
        println!(
            "  {:<12} router {:<22} conflicts pending {:<6} writable shards {:<4} fence lease {}",
            s.name,
            s.router,
            s.conflicts_pending
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            s.writable_shards
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            lease,
        );
        for l in &s.links {
            println!(
                "      link {:<24} {:<8} lag {:>10} bytes   retained WAL {:>10} bytes",
                l.link,
                if l.active { "active" } else { "INACTIVE" },
                l.lag_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
                l.retained_wal_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    println!("\nshards:");
    println!(
        "  {:>5}  {:<12} {:<7} {:>6}  {:>6}  conflicts",
        "id", "home", "state", "epoch", "cities"
    );
    for s in &st.shards {
        println!(
            "  {:>5}  {:<12} {:<7} {:>6}  {:>6}  {}",
            s.id, s.home, s.state, s.epoch, s.cities, s.conflicts_pending
        );
    }
    if st.switchovers_in_progress.is_empty() {
        println!("\nswitchovers in progress: none");
    } else {
        println!("\nswitchovers in progress:");
        for r in &st.switchovers_in_progress {
            let sw = &r.switchover;
            println!(
                "  shard {} {} -> {} (from epoch {}), step {}, by {}",
                sw.shard,
                sw.from,
                sw.to,
                sw.epoch,
                sw.step_name(),
                r.holder
            );
        }
    }
    for f in &st.forced_failovers {
        println!(
            "\nforced failover {} -> {}: {} shard(s); divergence point {}",
            f.from,
            f.to,
            f.shards.len(),
            f.divergence_lsn.as_deref().unwrap_or("(unknown)")
        );
    }
}
