//! What `ezone demo` and `ezone bench failover` share: the whole system on
//! this machine (the chaos crate's ensemble on a lab), order traffic through
//! the routers, planned switchovers driven in-process by the same driver the
//! `ezone failover` command uses, and a live traffic line.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ezone_chaos::check;
use ezone_chaos::ensemble::{Ensemble, EnsembleSpec};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_orders::workload::{self, History, ProgressHandle, Workload, WorkloadSpec};
use ezone_replicator::site_ops::PgSites;
use ezone_topology::failover::driver::{switch_shard, Options, Outcome, Progress};
use ezone_topology::failover::plan::Move;
use ezone_topology::{ShardId, TopologyStore};
use tokio::sync::watch;

/// Starts a lab (etcd, Postgres per site, 30 ms WAN) and the ensemble on it.
pub async fn start(
    sites: &[&str],
    shards_per_site: u32,
    wan_rtt: Duration,
    dir: Option<PathBuf>,
) -> anyhow::Result<Ensemble> {
    start_with(sites, shards_per_site, wan_rtt, dir, |_| {}).await
}

/// As [`start`], with the ensemble's spec adjusted by `tweak` first.
pub async fn start_with(
    sites: &[&str],
    shards_per_site: u32,
    wan_rtt: Duration,
    dir: Option<PathBuf>,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> anyhow::Result<Ensemble> {
    let mut spec = LabSpec::new(sites);
    spec.wan_rtt = wan_rtt;
    spec.dir = dir;
    start_on(spec, shards_per_site, tweak).await
}

/// As [`start_with`], on a lab of `spec` (e.g. three etcd members).
pub async fn start_on(
    spec: LabSpec,
    shards_per_site: u32,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> anyhow::Result<Ensemble> {
    let lab = Lab::start(spec).await.context("starting the lab")?;
    ensemble_on(lab, shards_per_site, tweak).await
}

/// The ensemble (this binary's routers, order services and replicators) on
/// a started `lab`, which it then owns; [`start_on`]'s second half.
pub async fn ensemble_on(
    lab: Lab,
    shards_per_site: u32,
    tweak: impl FnOnce(&mut EnsembleSpec),
) -> anyhow::Result<Ensemble> {
    let exe = std::env::current_exe().context("finding the ezone binary")?;
    let mut es = EnsembleSpec::new(exe);
    es.shards_per_site = shards_per_site;
    es.log_filter = "warn".into();
    tweak(&mut es);
    Ensemble::start(lab, es)
        .await
        .context("starting routers, order services and replicators")
}

/// Order traffic for every city, spread over every site's router.
pub fn traffic(ens: &Ensemble, prefix: &str, rate: u32) -> anyhow::Result<Workload> {
    traffic_with(ens, prefix, rate, |_| {})
}

/// As [`traffic`], with the workload's spec adjusted by `tweak` first
/// (e.g. status PATCHes of the orders acknowledged).
pub fn traffic_with(
    ens: &Ensemble,
    prefix: &str,
    rate: u32,
    tweak: impl FnOnce(&mut WorkloadSpec),
) -> anyhow::Result<Workload> {
    let mut targets = Vec::new();
    for s in ens.sites() {
        targets.push(ens.router_http(&s)?);
    }
    let mut spec = WorkloadSpec {
        targets,
        cities: ens.cities().into_iter().map(|(c, _)| c).collect(),
        rate_per_sec: rate,
        id_prefix: prefix.into(),
        ..WorkloadSpec::default()
    };
    tweak(&mut spec);
    Ok(Workload::start(spec)?)
}

/// Prints a traffic line every second until dropped (aborted).
pub fn live_line(p: ProgressHandle, start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = p.get();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = p.get();
            eprintln!(
                "[{:>8.3}s] traffic: {:>5} orders/s acked, total sent {} acked {} failed {} retried {} in flight {}",
                start.elapsed().as_secs_f64(),
                now.acked.saturating_sub(last.acked),
                now.sent,
                now.acked,
                now.failed,
                now.retried,
                now.in_flight
            );
            last = now;
        }
    })
}

/// Worst replication lag seen per link while sampling.
#[derive(Debug, Clone, Copy, Default)]
pub struct LagSeen {
    pub max_seconds: f64,
    pub max_bytes: f64,
    pub samples: u64,
}

/// Samples every replicator's `/metrics` (lag seconds and bytes per link)
/// twice a second; the shared map holds the worst seen per link.
pub fn lag_sampler(
    ens: &Ensemble,
) -> (
    Arc<Mutex<BTreeMap<String, LagSeen>>>,
    tokio::task::JoinHandle<()>,
) {
    let admins: Vec<std::net::SocketAddr> = ens
        .sites()
        .iter()
        .filter_map(|s| ens.replicator_admin(s).ok())
        .collect();
    let seen: Arc<Mutex<BTreeMap<String, LagSeen>>> = Arc::default();
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        loop {
            for a in &admins {
                let Ok(uri) = format!("http://{a}/metrics").parse::<hyper::Uri>() else {
                    continue;
                };
                let Ok(Ok(resp)) =
                    tokio::time::timeout(Duration::from_secs(1), client.get(uri)).await
                else {
                    continue;
                };
                let Ok(body) = http_body_util::BodyExt::collect(resp.into_body()).await else {
                    continue;
                };
                let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                let mut m = seen.lock().unwrap_or_else(|p| p.into_inner());
                for line in text.lines() {
                    let Some((name_labels, value)) = line.rsplit_once(' ') else {
                        continue;
                    };
                    let Ok(v) = value.parse::<f64>() else {
                        continue;
                    };
                    let Some(link) = name_labels
                        .split("link=\"")
                        .nth(1)
                        .and_then(|r| r.split('"').next())
                    else {
                        continue;
                    };
                    let e = m.entry(link.to_string()).or_default();
                    if name_labels.starts_with("ezone_replicator_lag_seconds") {
                        e.max_seconds = e.max_seconds.max(v);
                        e.samples += 1;
                    } else if name_labels.starts_with("ezone_replicator_lag_bytes") {
                        e.max_bytes = e.max_bytes.max(v);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    (out, task)
}

/// The whole history (creates and PATCHes, their times and what came of
/// them) as the checker's requests: what `verify` needs to judge
/// unexpected rows and final statuses too.
pub fn ops(h: &History) -> Vec<check::Op> {
    h.outcomes.iter().map(op).collect()
}

/// One outcome as the checker's request: acknowledged (and whether an
/// attempt of unknown fate may still land), in doubt, or refused for good.
fn op(o: &workload::Outcome) -> check::Op {
    let kind = match &o.op {
        workload::Op::Create {
            user,
            item,
            amount_cents,
        } => check::OpKind::Create {
            user: user.clone(),
            item: item.clone(),
            amount_cents: *amount_cents,
        },
        workload::Op::Patch { status } => check::OpKind::Patch {
            status: status.clone(),
        },
    };
    let result = if o.acked {
        check::OpResult::Acked {
            may_land_later: o.unanswered > 0,
        }
    } else if o.in_doubt() {
        check::OpResult::InDoubt
    } else {
        check::OpResult::Refused
    };
    check::Op {
        id: o.id.clone(),
        city: o.city.clone(),
        kind,
        invoke: o.started,
        complete: o.finished(),
        result,
    }
}

/// Moves one shard to `to`, planned, with the operator command's driver.
pub async fn switch(
    ens: &Ensemble,
    sites: &PgSites,
    shard: ShardId,
    to: &str,
    observe: &(dyn Fn(Progress) + Send + Sync),
) -> anyhow::Result<(Outcome, Duration)> {
    let store = ens.store().await?;
    let snap = store.load().await?;
    let cur = snap
        .topology
        .shards
        .get(&shard)
        .with_context(|| format!("shard {shard} is not in the topology"))?;
    let mv = Move {
        shard,
        from: cur.home.clone(),
        to: to.into(),
        epoch: cur.epoch,
        state: cur.state,
    };
    let opts = Options::new(&format!("ezone demo pid {}", std::process::id()));
    let (_keep, abort) = watch::channel(false);
    let started = Instant::now();
    let out = switch_shard(&store, sites, &mv, &opts, abort, observe).await?;
    Ok((out, started.elapsed()))
}

/// A site connector with no DSN overrides (the topology's DSNs).
pub fn pg_sites() -> PgSites {
    PgSites::new(HashMap::new())
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}
