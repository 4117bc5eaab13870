//! `ezone`: the one binary. Each subcommand lives in its own module under `cmd/`.

use clap::{Parser, Subcommand};

mod cmd;
mod logging;

/// ezone: multi-data-center routing and replication.
/// `--version`: says whether failpoints are compiled in (the tests that
/// need them check).
const VERSION: &str = if cfg!(feature = "failpoints") {
    concat!(env!("CARGO_PKG_VERSION"), " (failpoints)")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Debug, Parser)]
#[command(name = "ezone", version = VERSION, about, propagate_version = true)]
struct Cli {
    /// Log lines on stderr: text, or json (one object a line). Which lines:
    /// RUST_LOG, or EZONE_LOG (RUST_LOG wins when both are set), default
    /// `warn`.
    #[arg(
        long,
        global = true,
        value_enum,
        env = logging::FORMAT_ENV,
        default_value_t = logging::LogFormat::Text
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the edge router.
    Router(cmd::router::RouterArgs),
    /// Run the replicator for one site (links from every other site).
    Replicator(cmd::replicator::ReplicatorArgs),
    /// Move shards to another site: planned (zero loss) or --force.
    #[command(subcommand)]
    Failover(cmd::failover::FailoverCommand),
    /// The whole system on this machine: traffic, switchovers, a verification report.
    Demo(cmd::demo::DemoArgs),
    /// Sites, shards, lag, conflicts pending and switchovers in progress.
    Status(cmd::status::StatusArgs),
    /// Replication conflicts: list them, resolve them (after a forced failover).
    #[command(subcommand)]
    Conflicts(cmd::conflicts::ConflictsCommand),
    /// The database fence: install it on a table, reconcile it from the topology.
    #[command(subcommand)]
    Fence(cmd::fence::FenceCommand),
    /// Read, write, validate and watch the topology (etcd or a file).
    #[command(subcommand)]
    Topo(cmd::topo::TopoCommand),
    /// The local multi-site lab: real etcd and Postgres on loopback.
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Fault injection: the TCP fault proxy.
    #[command(subcommand)]
    Chaos(cmd::chaos::ChaosCommand),
    /// The sample order service: install its table, run it.
    #[command(subcommand)]
    Orders(cmd::orders::OrdersCommand),
    /// Benchmarks, each against a baseline run side by side.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // The replicator sizes its runtime by its config (`worker_threads`,
    // one by default: see its docs), so its config is read first;
    // everything else takes one thread a core.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let replicator_cfg = match &cli.command {
        Command::Replicator(args) => Some(cmd::replicator::load(args)),
        _ => None,
    };
    if let Some(Ok(cfg)) = &replicator_cfg {
        builder.worker_threads(cfg.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Router(c) => cmd::router::run(c).await,
            Command::Replicator(_) => {
                let Some(cfg) = replicator_cfg else {
                    unreachable!("the replicator's config is read above for this command");
                };
                cmd::replicator::run(cfg?).await
            }
            Command::Failover(c) => cmd::failover::run(c).await,
            Command::Status(c) => cmd::status::run(c).await,
            Command::Demo(c) => cmd::demo::run(c).await,
            Command::Conflicts(c) => cmd::conflicts::run(c).await,
            Command::Fence(c) => cmd::fence::run(c).await,
            Command::Topo(c) => cmd::topo::run(c).await,
            Command::Lab(c) => cmd::lab::run(c).await,
            Command::Chaos(c) => cmd::chaos::run(c).await,
            Command::Orders(c) => cmd::orders::run(c).await,
            Command::Bench(c) => cmd::bench::run(c).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cmd::redact::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
