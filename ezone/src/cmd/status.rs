//! `ezone status`: the deployment at a glance. Sites (Postgres reachable,
//! router ready when its admin address is given), shards (home, state,
//! epoch), replication lag per link in bytes (from each source's slot) and
//! seconds (the walsender's `replay_lag`), conflicts pending at each site,
//! switchovers in progress and open forced failovers. `--json` for scripts;
//! `--watch` redraws it every `--interval`. A site that cannot be reached
//! is shown as such; it never makes the command fail.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::{anyhow, Context};
use ezone_replicator::site_ops::{pending_for, PendingConflicts};
use ezone_topology::failover::driver::{now_ms, ForcedRecord, Record};
use ezone_topology::failover::operations::when;
use ezone_topology::{AnyStore, ShardState, TopologyStore};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cmd::topo::StoreArgs;

/// How long a router's admin `/readyz` may take to answer.
const READYZ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of tables (with --watch: one JSON object a line,
    /// each interval).
    #[arg(long)]
    pub json: bool,
    /// Keep showing it: redraw every --interval until Ctrl-C (on a
    /// terminal the screen is cleared; otherwise each view follows a
    /// separator line).
    #[arg(long)]
    pub watch: bool,
    /// How often --watch redraws.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// A site's router admin address (SITE=HOST:PORT; repeatable): its
    /// `/readyz` says whether the router is ready. The topology does not
    /// hold it: without this, router readiness is not shown.
    #[arg(long = "router-admin", value_parser = crate::cmd::topo::parse_site_dsn)]
    pub router_admin: Vec<(String, String)>,
    /// A site's replicator admin address (SITE=HOST:PORT; repeatable): its
    /// `/readyz` says whether every link into the site streams, and names
    /// a link that does not and why (a stopped link's error included).
    #[arg(long = "replicator-admin", value_parser = crate::cmd::topo::parse_site_dsn)]
    pub replicator_admin: Vec<(String, String)>,
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
    /// The router's admin `/readyz` answered 200 (none: its admin address
    /// was not given).
    router_ready: Option<bool>,
    /// Why it is not ready (the status or the error).
    router_error: Option<String>,
    /// The replicator's admin `/readyz` answered 200 (none: its admin
    /// address was not given).
    replicator_ready: Option<bool>,
    /// Why not: the links that are not ready and why, or the error.
    replicator_error: Option<String>,
    /// Unresolved conflicts by shard (summed per shard below).
    #[serde(skip)]
    pending: Vec<PendingConflicts>,
}

/// An outgoing link, as its source sees it.
type LinkStatus = ezone_replicator::site_report::LinkReport;

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
        router_ready: None,
        router_error: None,
        replicator_ready: None,
        replicator_error: None,
        pending: Vec::new(),
    };
    let client = match super::pg::connect(dsn, Duration::from_secs(3)).await {
        Ok(c) => c,
        Err(e) => {
            s.error = Some(e);
            return s;
        }
    };
    s.reachable = true;
    let report = ezone_replicator::site_report::read(name, &client).await;
    s.links = report.links;
    s.conflicts_pending = report.conflicts_pending;
    s.pending = report.pending;
    s.fence_lease_ms = report.fence_lease_ms;
    s.writable_shards = report.writable_shards;
    s
}

/// `GET /readyz` at an admin address (a router's or a replicator's): ready
/// (200), or why not (the answer's reasons, one per line after the first,
/// joined; or the connection's error).
async fn admin_ready(addr: &str) -> Result<(), String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(
                format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| format!("send: {e}"))?;
        // Connection: close: the answer ends at EOF (bounded, in case).
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        while answer.len() < 64 * 1024 {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let line = head.lines().next().unwrap_or("").trim().to_string();
        match line.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            Some(code) => {
                // The first body line is the summary ("not ready: 1 of 2
                // links"); the rest name what is not ready and why.
                let why: Vec<&str> = body
                    .lines()
                    .skip(1)
                    .map(str::trim)
                    .filter(|l| {
                        !l.is_empty() && !l.ends_with(": streaming") && !l.contains(": streaming,")
                    })
                    .collect();
                if why.is_empty() {
                    Err(format!("/readyz answered {code}"))
                } else {
                    Err(format!("/readyz answered {code}: {}", why.join("; ")))
                }
            }
            None => Err(format!("not an HTTP answer: {line:?}")),
        }
    };
    match tokio::time::timeout(READYZ_TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {READYZ_TIMEOUT:?}")),
    }
}

/// Whether the admin endpoint at `addr` (if given) is ready, and why not.
async fn readiness(addr: Option<&String>) -> (Option<bool>, Option<String>) {
    match addr {
        None => (None, None),
        Some(a) => match admin_ready(a).await {
            Ok(()) => (Some(true), None),
            Err(e) => (Some(false), Some(e)),
        },
    }
}

/// ` PART ready` or ` PART NOT READY (why)` after a site's line; nothing
/// when the part's admin address was not given.
fn ready_note(part: &str, ready: Option<bool>, why: &Option<String>) -> String {
    match ready {
        None => String::new(),
        Some(true) => format!("   {part} ready"),
        Some(false) => format!("   {part} NOT READY ({})", why.as_deref().unwrap_or("")),
    }
}

/// The admin addresses given on the command line, by site.
struct Admins {
    routers: HashMap<String, String>,
    replicators: HashMap<String, String>,
}

/// Everything `status` shows, read now.
async fn collect(store: &AnyStore, admins: &Admins) -> anyhow::Result<Status> {
    let snap = store.load().await.context("loading the topology")?;
    let t = &snap.topology;
    let checks = t.sites.values().map(|s| async move {
        let (mut st, router, replicator) = tokio::join!(
            site_status(&s.name, &s.router, &s.postgres),
            readiness(admins.routers.get(&s.name)),
            readiness(admins.replicators.get(&s.name)),
        );
        (st.router_ready, st.router_error) = router;
        (st.replicator_ready, st.replicator_error) = replicator;
        st
    });
    let sites = futures::future::join_all(checks).await;
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
    // Closed ones (`ezone failover close-forced`) are history only.
    let forced_failovers = store
        .list_ops("forced/")
        .await?
        .values()
        .filter_map(|b| serde_json::from_slice::<ForcedRecord>(b).ok())
        .filter(|r| r.closed_at_ms.is_none())
        .collect();
    Ok(Status {
        store: store.describe(),
        version: snap.version,
        sites,
        shards,
        switchovers_in_progress,
        forced_failovers,
    })
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    // A DSN in a message never shows its password.
    run_inner(args)
        .await
        .map_err(|e| anyhow!(super::redact::describe(&e)))
}

async fn run_inner(args: StatusArgs) -> anyhow::Result<()> {
    let store = args.store.open().await?;
    let admins = Admins {
        routers: args.router_admin.iter().cloned().collect(),
        replicators: args.replicator_admin.iter().cloned().collect(),
    };
    if args.watch {
        return watch(&store, &admins, &args).await;
    }
    let st = collect(&store, &admins).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    print!("{}", render_text(&st, now_ms()));
    Ok(())
}

/// `--watch`: the view every interval until Ctrl-C. On a terminal each
/// view replaces the last (ANSI clear screen); otherwise (a pipe, a file)
/// each follows a separator line. A view that cannot be read (etcd down)
/// says why and the watch goes on.
async fn watch(store: &AnyStore, admins: &Admins, args: &StatusArgs) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    let interval = args.interval.max(Duration::from_millis(100));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let collected = tokio::select! {
            st = collect(store, admins) => st,
            _ = &mut ctrl_c => return Ok(()),
        };
        let now = now_ms();
        let body = match (&collected, args.json) {
            (Ok(st), true) => format!("{}\n", serde_json::to_string(st)?),
            (Ok(st), false) => render_text(st, now),
            (Err(e), true) => format!(
                "{}\n",
                serde_json::json!({ "error": super::redact::describe(e), "at_ms": now })
            ),
            (Err(e), false) => format!("cannot read the status: {}\n", super::redact::describe(e)),
        };
        let frame = if args.json {
            body
        } else if tty {
            format!(
                "\x1b[H\x1b[2J{}  (every {}; Ctrl-C to quit)\n\n{body}",
                when(now),
                humantime::format_duration(interval)
            )
        } else {
            format!("--- {} ---\n{body}", when(now))
        };
        let mut out = std::io::stdout().lock();
        // A closed pipe ends the watch, like Ctrl-C.
        if out
            .write_all(frame.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(out);
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => return Ok(()),
        }
    }
}

fn or_dash(v: Option<i64>) -> String {
    v.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
}

/// The text view (`now_ms`: for how long a switchover has been at its step).
fn render_text(st: &Status, now_ms: u64) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "topology: {} (version {})", st.store, st.version);
    let _ = writeln!(o, "\nsites:");
    for s in &st.sites {
        let ready = ready_note("router", s.router_ready, &s.router_error)
            + &ready_note("replicator", s.replicator_ready, &s.replicator_error);
        if !s.reachable {
            let _ = writeln!(
                o,
                "  {:<12} router {:<22} postgres UNREACHABLE: {}{ready}",
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
        let _ = writeln!(
            o,
            "  {:<12} router {:<22} conflicts pending {:<6} writable shards {:<4} fence lease {}{ready}",
            s.name,
            s.router,
            or_dash(s.conflicts_pending),
            or_dash(s.writable_shards),
            lease,
        );
        for l in &s.links {
            let _ = writeln!(
                o,
                "      link {:<24} {:<8} lag {:>10} bytes   retained WAL {:>10} bytes   lag {:>8} s",
                l.link,
                if l.active { "active" } else { "INACTIVE" },
                or_dash(l.lag_bytes),
                or_dash(l.retained_wal_bytes),
                l.lag_seconds
                    .map(|x| format!("{x:.3}"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
    }
    let _ = writeln!(o, "\nshards:");
    let _ = writeln!(
        o,
        "  {:>5}  {:<12} {:<7} {:>6}  {:>6}  conflicts",
        "id", "home", "state", "epoch", "cities"
    );
    for s in &st.shards {
        let _ = writeln!(
            o,
            "  {:>5}  {:<12} {:<7} {:>6}  {:>6}  {}",
            s.id, s.home, s.state, s.epoch, s.cities, s.conflicts_pending
        );
    }
    if st.switchovers_in_progress.is_empty() {
        let _ = writeln!(o, "\nswitchovers in progress: none");
    } else {
        let _ = writeln!(o, "\nswitchovers in progress:");
        for r in &st.switchovers_in_progress {
            let sw = &r.switchover;
            let since = r
                .history
                .last()
                .map(|m| {
                    format!(
                        " (for {:.1} s)",
                        now_ms.saturating_sub(m.at_ms) as f64 / 1000.0
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "  shard {} {} -> {} (from epoch {}), step {}, by {}{since}",
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
        let state = if f.opened {
            format!(
                "; open: close it with `ezone failover close-forced {}` once its conflicts are repaired",
                f.from
            )
        } else {
            format!(
                "; IN PROGRESS: {} takes the shards at {}",
                f.to,
                when(f.opens_at_ms)
            )
        };
        let _ = writeln!(
            o,
            "\nforced failover {} -> {}: {} shard(s); divergence point {}{state}",
            f.from,
            f.to,
            f.shards.len(),
            f.divergence_lsn.as_deref().unwrap_or("(unknown)")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Status {
        Status {
            store: "file x".into(),
            version: 7,
            sites: vec![SiteStatus {
                name: "beijing".into(),
                router: "127.0.0.1:1".into(),
                reachable: true,
                error: None,
                links: vec![LinkStatus {
                    link: "beijing->shanghai".into(),
                    active: true,
                    lag_bytes: Some(120),
                    retained_wal_bytes: Some(4096),
                    lag_seconds: Some(0.25),
                }],
                conflicts_pending: Some(0),
                writable_shards: Some(2),
                fence_lease_ms: Some(9_000),
                router_ready: None,
                router_error: None,
                replicator_ready: None,
                replicator_error: None,
                pending: Vec::new(),
            }],
            shards: Vec::new(),
            switchovers_in_progress: Vec::new(),
            forced_failovers: Vec::new(),
        }
    }

    #[test]
    fn the_text_view_keeps_its_columns_and_adds_lag_seconds() {
        let mut st = sample();
        let text = render_text(&st, 0);
        assert!(text.contains(
            "      link beijing->shanghai        active   lag        120 bytes   retained WAL       4096 bytes   lag    0.250 s\n"
        ), "{text}");
        assert!(text.contains("fence lease 9.0 s left\n"), "{text}");
        assert!(text.contains("switchovers in progress: none"), "{text}");
        st.sites[0].router_ready = Some(false);
        st.sites[0].router_error = Some("connect: refused".into());
        let text = render_text(&st, 0);
        assert!(
            text.contains("fence lease 9.0 s left   router NOT READY (connect: refused)\n"),
            "{text}"
        );
        st.sites[0].replicator_ready = Some(false);
        st.sites[0].replicator_error =
            Some("/readyz answered 503: shanghai->beijing: stopped for good".into());
        let text = render_text(&st, 0);
        assert!(
            text.contains(
                "router NOT READY (connect: refused)   replicator NOT READY (/readyz answered 503: shanghai->beijing: stopped for good)\n"
            ),
            "{text}"
        );
    }
}
