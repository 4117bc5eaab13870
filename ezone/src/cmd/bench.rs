//! `ezone bench`: the benchmarks of the `ezone-bench` crate, each reported
//! against a baseline run side by side in the same run. This module mounts
//! their options, races the ones that start processes against Ctrl-C, and
//! prints their reports.

use std::future::Future;

use anyhow::{bail, Context};
use ezone_bench::router::upstream;
use ezone_bench::{failover, propagation, replicator, router, topology};

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Topology watch propagation: etcd write -> watcher has the new snapshot.
    Topology(topology::TopologyBench),
    /// Router throughput, latency and CPU: ezone router vs nginx vs direct.
    Router(router::RouterBench),
    /// Topology propagation: etcd write -> a running router routes by it.
    Propagation(propagation::PropagationBench),
    /// Replication: ezone's link vs native logical replication (backlog drain, lag, CPU).
    Replicator(replicator::ReplicatorBench),
    /// Failover: write-hold window per planned switchover and forced failover time, under load.
    Failover(failover::FailoverBench),
    /// The router bench's upstream server, run standalone (started by `bench router`).
    #[command(hide = true)]
    Upstream(upstream::UpstreamArgs),
}

pub async fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Topology(b) => {
            let report = topology::run(&b).await?;
            if b.quiet_table {
                println!("{}", report.summary_line());
            } else {
                print!("{}", report.table());
            }
        }
        BenchCommand::Router(b) => {
            let run = stopped_by_ctrl_c(router::run(&b)).await?;
            if b.json {
                println!("{}", serde_json::to_string_pretty(&run.report)?);
            } else {
                print!("{}", run.report.table());
            }
            if let Some(dir) = &run.kept_dir {
                eprintln!("kept configs, logs and wrk output in {}", dir.display());
            }
            run.report.check()?;
        }
        BenchCommand::Propagation(b) => print!("{}", propagation::run(&b).await?.table()),
        BenchCommand::Replicator(b) => {
            let report = stopped_by_ctrl_c(replicator::run(&b)).await?;
            if b.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
        }
        BenchCommand::Failover(b) => print!("{}", failover::run(&b).await?.table()),
        BenchCommand::Upstream(args) => upstream::serve(args).await?,
    }
    Ok(())
}

/// Runs a bench that starts processes until it ends or Ctrl-C: then it is
/// dropped, and with it the guards that stop every process it started.
async fn stopped_by_ctrl_c<T>(bench: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        r = bench => r,
        r = tokio::signal::ctrl_c() => {
            r.context("listening for Ctrl-C")?;
            bail!("interrupted; every process the bench started has been stopped")
        }
    }
}
