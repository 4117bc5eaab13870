//! `ezone bench`: benchmarks, each reported against a baseline run side by
//! side in the same run. Numbers are printed, never asserted.
//!
//! `ezone bench topology`: watch propagation, from an etcd write to the
//! moment a [`Watcher`] serves the new validated snapshot, next to the same
//! write observed by a bare etcd watch (no decoding, no validation): the
//! baseline is the floor set by etcd itself.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::WatchOptions;
use ezone_topology::store::layout::Layout;
use ezone_topology::{AnyStore, EtcdStore, ShardState, TopologyStore, Watcher};
use hdrhistogram::Histogram;

mod cpu;
mod ezone_router;
mod failover;
mod nginx;
mod probe;
mod propagation;
mod replbench_consumer;
mod replbench_stats;
mod replbench_workload;
mod replicator;
mod router;
mod upstream;
mod wrk;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Topology watch propagation: etcd write -> watcher has the new snapshot.
    Topology(TopologyBench),
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

#[derive(Debug, clap::Args)]
pub struct TopologyBench {
    /// etcd endpoints; without them the bench starts its own one-member etcd.
    #[arg(long, env = "EZONE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Key prefix to write under (a starter topology is created there if empty).
    #[arg(long, default_value = "/ezone-bench")]
    prefix: String,
    /// How many changes to time.
    #[arg(long, default_value_t = 500)]
    changes: u32,
    /// Print one summary line instead of the table.
    #[arg(long)]
    quiet_table: bool,
}

pub async fn run(c: BenchCommand) -> anyhow::Result<()> {
    match c {
        BenchCommand::Topology(b) => topology(b).await,
        BenchCommand::Router(args) => router::run(args).await,
        BenchCommand::Propagation(args) => propagation::run(args).await,
        BenchCommand::Replicator(args) => replicator::run(args).await,
        BenchCommand::Failover(args) => failover::run(args).await,
        BenchCommand::Upstream(args) => upstream::serve(args).await,
    }
}

async fn topology(b: TopologyBench) -> anyhow::Result<()> {
    // Keep a self-started etcd alive for the whole run.
    let mut _own_etcd = None;
    let endpoints = if b.etcd.is_empty() {
        let cluster = ezone_chaos::etcd::EtcdCluster::start(1)
            .await
            .context("starting an etcd for the bench (or pass --etcd)")?;
        let eps = cluster.client_urls();
        _own_etcd = Some(cluster);
        eps
    } else {
        b.etcd.clone()
    };
    if b.changes == 0 {
        bail!("--changes must be at least 1");
    }
    let store = EtcdStore::connect(&endpoints, &b.prefix).await?;
    let base = match store.load().await {
        Ok(s) => s,
        Err(ezone_topology::StoreError::NotInitialized { .. }) => {
            let t = ezone_topology::starter::starter(&["beijing", "shanghai"], 2);
            store.init(&t, false).await?;
            store.load().await?
        }
        Err(e) => return Err(e.into()),
    };
    let shard_id = *base
        .topology
        .shards
        .keys()
        .next()
        .context("the topology has no shards")?;
    let layout = Layout::new(&b.prefix);
    let key = layout.shard(shard_id);

    // ezone's watcher.
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    watcher
        .wait_for_version(base.version, Duration::from_secs(10))
        .await
        .context("the watcher did not load the topology within 10 s")?;
    // The baseline: a bare etcd watch on the same key.
    let mut raw_client = store.client();
    let mut raw = raw_client
        .watch(key.clone(), Some(WatchOptions::new()))
        .await
        .context("creating the baseline watch")?;
    // The first message confirms the watch was created.
    raw.message().await?;

    let mut ours = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut bare = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut cas = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut shard = base.topology.shards[&shard_id].clone();
    for _ in 0..b.changes {
        // Alternate the measured path: each change is a real CAS (epoch bump,
        // state toggled), timed from just before the write.
        let expected = shard.epoch;
        shard.epoch += 1;
        shard.state = match shard.state {
            ShardState::Active => ShardState::Frozen,
            ShardState::Frozen => ShardState::Active,
        };
        let t0 = Instant::now();
        let version = store.cas_shard(expected, &shard).await?;
        let t_cas = t0.elapsed();
        // Both observers run concurrently; each is timed from t0.
        let ours_fut = async {
            watcher
                .wait_for_version(version, Duration::from_secs(10))
                .await
                .map(|_| t0.elapsed())
        };
        let bare_fut = async {
            loop {
                match raw.message().await {
                    Ok(Some(resp))
                        if resp
                            .events()
                            .iter()
                            .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() >= version)) =>
                    {
                        return Some(t0.elapsed())
                    }
                    Ok(Some(_)) => continue,
                    _ => return None,
                }
            }
        };
        let (o, r) = tokio::join!(ours_fut, bare_fut);
        let o = o.context("the watcher did not publish a change within 10 s")?;
        let r = r.context("the baseline watch ended")?;
        ours.record(micros(o))?;
        bare.record(micros(r))?;
        cas.record(micros(t_cas))?;
    }
    let stats = watcher.stats();
    let row = |name: &str, h: &Histogram<u64>| {
        format!(
            "{name:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            h.mean() / 1000.0
        )
    };
    if b.quiet_table {
        println!(
            "{} changes: watcher p50 {:.3} ms, p99 {:.3} ms (bare etcd watch p50 {:.3} ms)",
            b.changes,
            ms(ours.value_at_quantile(0.5)),
            ms(ours.value_at_quantile(0.99)),
            ms(bare.value_at_quantile(0.5)),
        );
        return Ok(());
    }
    println!(
        "topology watch propagation, {} changes, etcd {}",
        b.changes,
        endpoints.join(",")
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>9}",
        "path (ms, from before the write)", "p50", "p99", "max", "mean"
    );
    println!("{}", row("CAS write acknowledged", &cas));
    println!("{}", row("bare etcd watch sees it (baseline)", &bare));
    println!("{}", row("ezone watcher serves the snapshot", &ours));
    println!(
        "ratio ezone/bare: p50 {:.2}, p99 {:.2}; snapshots accepted {}, refused {}",
        ours.value_at_quantile(0.5) as f64 / bare.value_at_quantile(0.5).max(1) as f64,
        ours.value_at_quantile(0.99) as f64 / bare.value_at_quantile(0.99).max(1) as f64,
        stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        stats.refused.load(std::sync::atomic::Ordering::Relaxed),
    );
    Ok(())
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
