//! `ezone chaos`: fault injection from the command line.
//!
//! `ezone chaos proxy serve --config FILE` runs a TCP fault proxy (links plus
//! its admin HTTP API) until SIGTERM/SIGINT; the other `proxy` subcommands
//! change a running proxy through that admin API (`--admin ADDR` or
//! `EZONE_PROXY_ADMIN`), so a test script or an operator can add latency,
//! partition and heal links while the system under test runs.
//!
//! `ezone chaos schedule --seed S` prints the fault schedule a seed gives
//! (`ezone_chaos::schedule`); `ezone chaos run --seed S` applies it to the
//! whole system under traffic and checks the invariants (`chaos_run.rs`);
//! `ezone chaos sweep` runs many seeds and summarises (`chaos_sweep.rs`).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ezone_chaos::proxy::api::Directions;
use ezone_chaos::proxy::{AdminClient, FaultProxy, LinkSpec, LinkStatus, ProxyConfig, Toxics};
use ezone_chaos::schedule::{schedule, FaultKind, ScheduleSpec};

#[derive(Debug, clap::Subcommand)]
pub enum ChaosCommand {
    /// The TCP fault proxy: serve links, or change the faults of a running one.
    Proxy(ProxyCommand),
    /// Print the fault schedule a seed gives (a pure function of the seed
    /// and these options: the same ones always print the same schedule).
    Schedule(ScheduleArgs),
    /// Run the whole system under the schedule a seed gives, with order
    /// traffic, and check the invariants in the data afterwards.
    Run(crate::cmd::chaos_run::RunArgs),
    /// Run many seeds (one `chaos run` each) and summarise the verdicts.
    Sweep(crate::cmd::chaos_sweep::SweepArgs),
}

/// `ezone chaos schedule ...`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    #[arg(long)]
    seed: u64,
    /// The whole run, the quiet period at its end included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated (`all`, or names such as
    /// `kill-router,partition`).
    #[arg(long, default_value = "all")]
    faults: String,
    /// The sites, in order.
    #[arg(long, default_value = "beijing,shanghai")]
    sites: String,
    /// From the heal to the end of the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
}

/// `ezone chaos proxy ...`.
#[derive(Debug, clap::Args)]
pub struct ProxyCommand {
    /// The admin API of a running proxy (what `serve` printed as "admin").
    /// Needed by every subcommand but `serve`.
    #[arg(long, env = "EZONE_PROXY_ADMIN", global = true, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    #[command(subcommand)]
    action: ProxyAction,
}

#[derive(Debug, clap::Subcommand)]
enum ProxyAction {
    /// Run a proxy from a JSON config ({"admin": ADDR, "links": [LinkSpec...]});
    /// prints {"admin": ADDR, "links": {NAME: ADDR}} on one line once ready,
    /// then runs until SIGTERM or SIGINT.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List the links, their toxics and counters.
    List {
        /// Print the admin API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a link.
    Add {
        name: String,
        /// Where the link listens (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Where it forwards to.
        #[arg(long, value_name = "ADDR")]
        upstream: SocketAddr,
    },
    /// Change a link's toxics; toxics not named keep their value (unless --clear).
    Set {
        name: String,
        #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
        direction: DirectionArg,
        /// Added one-way delay, e.g. 15ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        latency: Option<Duration>,
        /// Jitter around the latency (never reorders bytes), e.g. 2ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        jitter: Option<Duration>,
        /// Bandwidth cap in bytes per second; 0 removes the cap.
        #[arg(long, value_name = "BYTES_PER_SEC")]
        bandwidth: Option<u64>,
        /// Delay before passing a close on, e.g. 100ms.
        #[arg(long, value_parser = humantime::parse_duration)]
        slow_close: Option<Duration>,
        /// Start from a clean wire (this also heals a partition).
        #[arg(long)]
        clear: bool,
    },
    /// Partition a link: no byte crosses (held, not dropped) until `heal`.
    Partition {
        name: String,
        #[arg(long, value_enum, default_value_t = DirectionArg::Both)]
        direction: DirectionArg,
    },
    /// Clear a link's partition in both directions (other toxics stay).
    Heal { name: String },
    /// Close every open connection of a link abruptly (TCP RST).
    Reset { name: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum DirectionArg {
    Upstream,
    Downstream,
    Both,
}

impl From<DirectionArg> for Directions {
    fn from(d: DirectionArg) -> Self {
        match d {
            DirectionArg::Upstream => Directions::Upstream,
            DirectionArg::Downstream => Directions::Downstream,
            DirectionArg::Both => Directions::Both,
        }
    }
}

pub async fn run(c: ChaosCommand) -> anyhow::Result<()> {
    match c {
        ChaosCommand::Proxy(p) => run_proxy(p).await,
        ChaosCommand::Run(a) => crate::cmd::chaos_run::run(a).await,
        ChaosCommand::Sweep(a) => crate::cmd::chaos_sweep::run(a).await,
        ChaosCommand::Schedule(a) => {
            let kinds = FaultKind::parse_list(&a.faults).map_err(anyhow::Error::msg)?;
            let sites: Vec<&str> = a
                .sites
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            anyhow::ensure!(
                !sites.is_empty(),
                "--sites names no site: give at least one"
            );
            anyhow::ensure!(
                a.quiet < a.duration,
                "--quiet ({:?}) leaves no time for faults in --duration ({:?})",
                a.quiet,
                a.duration
            );
            let mut spec = ScheduleSpec::new(a.seed, a.duration, &sites);
            spec.kinds = kinds;
            spec.quiet = a.quiet;
            print!("{}", schedule(&spec));
            Ok(())
        }
    }
}

async fn run_proxy(p: ProxyCommand) -> anyhow::Result<()> {
    if let ProxyAction::Serve { config } = &p.action {
        return serve(config).await;
    }
    let admin = p.admin.context(
        "no admin address: pass --admin ADDR or set EZONE_PROXY_ADMIN (the \"admin\" address `ezone chaos proxy serve` printed)",
    )?;
    let client = AdminClient::new(admin);
    match p.action {
        ProxyAction::Serve { .. } => unreachable!("handled above"),
        ProxyAction::List { json } => {
            let links = client.links().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&links)?);
            } else {
                print!("{}", table(&links));
            }
        }
        ProxyAction::Add {
            name,
            listen,
            upstream,
        } => {
            let spec = LinkSpec {
                name,
                listen,
                upstream,
                upstream_toxics: Toxics::default(),
                downstream_toxics: Toxics::default(),
            };
            print_link(&client.add_link(&spec).await?);
        }
        ProxyAction::Set {
            name,
            direction,
            latency,
            jitter,
            bandwidth,
            slow_close,
            clear,
        } => {
            let current = client.link(&name).await?;
            let mut last = current.clone();
            for &dir in Directions::from(direction).each() {
                let mut t = if clear {
                    Toxics::default()
                } else {
                    toxics_of(&current, dir).clone()
                };
                if let Some(latency) = latency {
                    t.latency = latency;
                }
                if let Some(jitter) = jitter {
                    t.jitter = jitter;
                }
                if let Some(bandwidth) = bandwidth {
                    t.bandwidth_bytes_per_sec = (bandwidth > 0).then_some(bandwidth);
                }
                if let Some(slow_close) = slow_close {
                    t.slow_close = slow_close;
                }
                last = client.set_toxics(&name, dir.into(), &t).await?;
            }
            print_link(&last);
        }
        ProxyAction::Partition { name, direction } => {
            print_link(&client.partition(&name, direction.into()).await?);
        }
        ProxyAction::Heal { name } => print_link(&client.heal(&name).await?),
        ProxyAction::Reset { name } => print_link(&client.reset(&name).await?),
    }
    Ok(())
}

/// `serve`: start the links and the admin API, say where they are, run until
/// a signal, stop gracefully.
async fn serve(path: &Path) -> anyhow::Result<()> {
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("cannot read the proxy config {}", path.display()))?;
    let config: ProxyConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "invalid proxy config {}: expected JSON such as {{\"admin\": \"127.0.0.1:0\", \"links\": \
             [{{\"name\": \"a->b:pg\", \"listen\": \"127.0.0.1:0\", \"upstream\": \"127.0.0.1:5432\"}}]}}",
            path.display()
        )
    })?;
    let proxy = FaultProxy::new();
    let mut links = BTreeMap::new();
    for spec in config.links {
        let name = spec.name.clone();
        let link = proxy
            .add_link(spec)
            .await
            .with_context(|| format!("cannot start link {name:?}"))?;
        links.insert(name, link.listen_addr().to_string());
    }
    let admin = proxy.serve_admin(config.admin).await?;
    let ready = serde_json::json!({ "admin": admin.to_string(), "links": links });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}").context("cannot write the ready line to stdout")?;
        out.flush().context("cannot flush stdout")?;
    }
    wait_for_stop_signal().await?;
    proxy.shutdown().await;
    Ok(())
}

/// Returns on SIGTERM or SIGINT.
async fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted.context("cannot listen for SIGINT")?,
    }
    Ok(())
}

fn toxics_of(link: &LinkStatus, dir: ezone_chaos::proxy::Direction) -> &Toxics {
    match dir {
        ezone_chaos::proxy::Direction::Upstream => &link.upstream_toxics,
        ezone_chaos::proxy::Direction::Downstream => &link.downstream_toxics,
    }
}

/// One line about a link, after a change.
fn print_link(link: &LinkStatus) {
    println!(
        "{}: {} -> {}; upstream: {}; downstream: {}",
        link.name,
        link.listen,
        link.upstream,
        describe(&link.upstream_toxics),
        describe(&link.downstream_toxics)
    );
}

/// Toxics in a few words: "clean" or "latency=15ms jitter=2ms ...".
fn describe(t: &Toxics) -> String {
    let mut parts = Vec::new();
    if t.blackhole {
        parts.push("PARTITIONED".to_owned());
    }
    if !t.latency.is_zero() {
        parts.push(format!("latency={}", humantime::format_duration(t.latency)));
    }
    if !t.jitter.is_zero() {
        parts.push(format!("jitter={}", humantime::format_duration(t.jitter)));
    }
    if let Some(bw) = t.bandwidth_bytes_per_sec {
        parts.push(format!("bandwidth={bw}B/s"));
    }
    if !t.slow_close.is_zero() {
        parts.push(format!(
            "slow_close={}",
            humantime::format_duration(t.slow_close)
        ));
    }
    if parts.is_empty() {
        "clean".to_owned()
    } else {
        parts.join(" ")
    }
}

/// The `list` table, one row per link.
fn table(links: &[LinkStatus]) -> String {
    let header = [
        "NAME",
        "LISTEN",
        "UPSTREAM",
        "UP TOXICS",
        "DOWN TOXICS",
        "CONNS OPEN/TOTAL",
        "BYTES UP/DOWN",
    ];
    let rows: Vec<[String; 7]> = links
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                l.listen.to_string(),
                l.upstream.to_string(),
                describe(&l.upstream_toxics),
                describe(&l.downstream_toxics),
                format!("{}/{}", l.stats.connections_open, l.stats.connections_total),
                format!("{}/{}", l.stats.bytes_upstream, l.stats.bytes_downstream),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    if links.is_empty() {
        out.push_str(
            "(no links; add one with `ezone chaos proxy add NAME --listen ADDR --upstream ADDR`)\n",
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_every_toxic() {
        assert_eq!(describe(&Toxics::default()), "clean");
        let t = Toxics {
            latency: Duration::from_millis(15),
            jitter: Duration::from_millis(2),
            bandwidth_bytes_per_sec: Some(1000),
            blackhole: true,
            slow_close: Duration::from_millis(100),
        };
        assert_eq!(
            describe(&t),
            "PARTITIONED latency=15ms jitter=2ms bandwidth=1000B/s slow_close=100ms"
        );
    }

    #[test]
    fn cli_parses_the_documented_forms() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            c: ChaosCommand,
        }
        let cli = Cli::try_parse_from([
            "x",
            "proxy",
            "--admin",
            "127.0.0.1:9",
            "set",
            "a->b:pg",
            "--direction",
            "upstream",
            "--latency",
            "15ms",
            "--jitter",
            "2ms",
            "--bandwidth",
            "1000",
            "--slow-close",
            "100ms",
        ])
        .expect("set parses");
        let ChaosCommand::Proxy(p) = cli.c else {
            panic!("a proxy command");
        };
        assert_eq!(p.admin, Some("127.0.0.1:9".parse().expect("an address")));
        assert!(
            matches!(p.action, ProxyAction::Set { latency: Some(l), .. } if l == Duration::from_millis(15))
        );
        let cli = Cli::try_parse_from(["x", "proxy", "partition", "n", "--admin", "127.0.0.1:9"])
            .expect("global --admin");
        let ChaosCommand::Proxy(p) = cli.c else {
            panic!("a proxy command");
        };
        assert!(matches!(
            p.action,
            ProxyAction::Partition {
                direction: DirectionArg::Both,
                ..
            }
        ));
    }
}
