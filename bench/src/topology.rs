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

use crate::latency::{histogram, micros, ms};

/// `ezone bench topology`'s options.
#[derive(Debug, clap::Args)]
pub struct TopologyBench {
    /// etcd endpoints; without them the bench starts its own one-member etcd.
    #[arg(long, env = "EZONE_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Key prefix to write under (a starter topology is created there if empty).
    #[arg(long, default_value = "/ezone-bench")]
    pub prefix: String,
    /// How many changes to time.
    #[arg(long, default_value_t = 500)]
    pub changes: u32,
    /// Print one summary line instead of the table.
    #[arg(long)]
    pub quiet_table: bool,
}

/// What `ezone bench topology` measured, each path timed from just before
/// the write (µs).
#[derive(Debug)]
pub struct Report {
    changes: u32,
    endpoints: Vec<String>,
    /// The CAS write acknowledged.
    cas: Histogram<u64>,
    /// A bare etcd watch sees it (the baseline).
    bare: Histogram<u64>,
    /// ezone's watcher serves the snapshot.
    ours: Histogram<u64>,
    /// The watcher's snapshots accepted and refused over the run.
    accepted: u64,
    refused: u64,
}

/// Runs the bench: `b.changes` shard changes, each a real CAS, timed.
pub async fn run(b: &TopologyBench) -> anyhow::Result<Report> {
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

    let mut ours = histogram()?;
    let mut bare = histogram()?;
    let mut cas = histogram()?;
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
    Ok(Report {
        changes: b.changes,
        endpoints,
        cas,
        bare,
        ours,
        accepted: stats.accepted.load(std::sync::atomic::Ordering::Relaxed),
        refused: stats.refused.load(std::sync::atomic::Ordering::Relaxed),
    })
}

impl Report {
    /// One line: the watcher's p50 and p99, and the baseline's p50.
    pub fn summary_line(&self) -> String {
        format!(
            "{} changes: watcher p50 {:.3} ms, p99 {:.3} ms (bare etcd watch p50 {:.3} ms)",
            self.changes,
            ms(self.ours.value_at_quantile(0.5)),
            ms(self.ours.value_at_quantile(0.99)),
            ms(self.bare.value_at_quantile(0.5)),
        )
    }

    /// The table: each path's p50, p99, max and mean, and the ratios.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let row = |name: &str, h: &Histogram<u64>| {
            format!(
                "{name:<34} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max()),
                h.mean() / 1000.0
            )
        };
        let (ours, bare) = (&self.ours, &self.bare);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "topology watch propagation, {} changes, etcd {}",
            self.changes,
            self.endpoints.join(",")
        );
        let _ = writeln!(
            out,
            "{:<34} {:>9} {:>9} {:>9} {:>9}",
            "path (ms, from before the write)", "p50", "p99", "max", "mean"
        );
        let _ = writeln!(out, "{}", row("CAS write acknowledged", &self.cas));
        let _ = writeln!(out, "{}", row("bare etcd watch sees it (baseline)", bare));
        let _ = writeln!(out, "{}", row("ezone watcher serves the snapshot", ours));
        let _ = writeln!(
            out,
            "ratio ezone/bare: p50 {:.2}, p99 {:.2}; snapshots accepted {}, refused {}",
            ours.value_at_quantile(0.5) as f64 / bare.value_at_quantile(0.5).max(1) as f64,
            ours.value_at_quantile(0.99) as f64 / bare.value_at_quantile(0.99).max(1) as f64,
            self.accepted,
            self.refused,
        );
        out
    }
}
