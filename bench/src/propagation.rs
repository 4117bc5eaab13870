//! `ezone bench propagation`: how long from an etcd write (a shard moved to
//! another site, by compare-and-swap) until a running router routes by it.
//!
//! Side by side in one run: the CAS acknowledgement, a bare [`Watcher`] in
//! the same process (the topology layer alone), and a real router (the same
//! [`RunningRouter`] as `ezone router`) probed with requests in a tight loop
//! until the answer comes from the new home. The router's site `a` has
//! upstream A; site `b`'s router address points straight at upstream B, so a
//! request for a shard homed at `b` is answered by B.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use ezone_router::config::RouterConfig;
use ezone_router::server::RunningRouter;
use ezone_topology::{AnyStore, EtcdStore, Shard, ShardState, TopologyStore, Watcher};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::latency::{histogram, micros, ms};

/// `ezone bench propagation`'s options.
#[derive(Debug, clap::Args)]
pub struct PropagationBench {
    /// How many moves to time.
    #[arg(long, default_value_t = 200)]
    pub changes: u32,
}

/// What `ezone bench propagation` measured, each path timed from just
/// before the etcd write (µs).
#[derive(Debug)]
pub struct Report {
    changes: u32,
    /// The CAS write acknowledged.
    cas: Histogram<u64>,
    /// A bare watcher has the snapshot.
    watched: Histogram<u64>,
    /// The router routes by it (probed).
    routed: Histogram<u64>,
}

/// A one-line HTTP server answering its name, until the process ends.
async fn named_upstream(name: &'static str) -> anyhow::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        name.as_bytes(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Runs the bench: `b.changes` moves of one shard between two sites, each
/// timed until the router follows it.
pub async fn run(b: &PropagationBench) -> anyhow::Result<Report> {
    if b.changes == 0 {
        bail!("--changes must be at least 1");
    }
    let etcd = ezone_chaos::etcd::EtcdCluster::start(1)
        .await
        .context("starting an etcd for the bench")?;
    let endpoints = etcd.client_urls();
    let (a, bb) = (named_upstream("A").await?, named_upstream("B").await?);
    let port = ezone_chaos::ports::free_port().context("a free port")?;
    let mut t = ezone_topology::starter::starter(&["a", "b"], 1);
    if let Some(s) = t.sites.get_mut("a") {
        s.router = format!("127.0.0.1:{port}");
        s.upstreams = vec![a.to_string()];
    }
    if let Some(s) = t.sites.get_mut("b") {
        s.router = bb.to_string();
        s.upstreams = vec![bb.to_string()];
    }
    let store = EtcdStore::connect(&endpoints, "/ezone").await?;
    store.init(&t, false).await?;
    let cfg = RouterConfig::from_toml(&format!(
        "site = \"a\"\n[listen]\nhttp = \"127.0.0.1:{port}\"\nworkers = 1\n[topology]\netcd = [\"{}\"]\n[routing]\npeer_secret = \"ezone-bench-peer-secret\"\n",
        endpoints[0]
    ))?;
    let router = RunningRouter::start(cfg).await?;
    let http = router.http.context("the router has no http listener")?;
    let watcher = Watcher::start(AnyStore::Etcd(Box::new(store.clone())));
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let answer = |client: Client<_, Full<Bytes>>| async move {
        let req = hyper::Request::get(format!("http://{http}/"))
            .header("x-city-id", "010")
            .body(Full::new(Bytes::new()))
            .ok()?;
        let resp = client.request(req).await.ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        Some(body)
    };
    // Wait until the router serves the initial topology.
    let ready = Instant::now();
    while answer(client.clone()).await.as_deref() != Some(&b"A"[..]) {
        if ready.elapsed() > Duration::from_secs(10) {
            bail!("the router did not route by the initial topology within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cas = histogram()?;
    let mut watched = histogram()?;
    let mut routed = histogram()?;
    let mut home = "a";
    for _ in 0..b.changes {
        let cur = store.load().await?.topology.shards[&1].clone();
        home = if home == "a" { "b" } else { "a" };
        let want: &[u8] = if home == "a" { b"A" } else { b"B" };
        let next = Shard {
            id: 1,
            home: home.to_string(),
            state: ShardState::Active,
            epoch: cur.epoch + 1,
        };
        let t0 = Instant::now();
        let version = store.cas_shard(cur.epoch, &next).await?;
        let t_cas = t0.elapsed();
        let w = async {
            watcher
                .wait_for_version(version, Duration::from_secs(10))
                .await
                .map(|_| t0.elapsed())
        };
        let r = async {
            loop {
                if answer(client.clone()).await.as_deref() == Some(want) {
                    return Some(t0.elapsed());
                }
                if t0.elapsed() > Duration::from_secs(10) {
                    return None;
                }
            }
        };
        let (w, r) = tokio::join!(w, r);
        cas.record(micros(t_cas))?;
        watched.record(micros(
            w.context("the watcher did not see a change within 10 s")?,
        ))?;
        routed.record(micros(
            r.context("the router did not follow a change within 10 s")?,
        ))?;
    }
    router.shutdown().await;
    Ok(Report {
        changes: b.changes,
        cas,
        watched,
        routed,
    })
}

impl Report {
    /// The table: each path's p50, p99 and max.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "topology propagation to a router, {} moves of one shard between two sites",
            self.changes
        );
        let _ = writeln!(
            out,
            "{:<40} {:>9} {:>9} {:>9}",
            "from before the etcd write (ms)", "p50", "p99", "max"
        );
        for (name, h) in [
            ("CAS write acknowledged", &self.cas),
            ("bare watcher has the snapshot", &self.watched),
            ("router routes by it (probed)", &self.routed),
        ] {
            let _ = writeln!(
                out,
                "{name:<40} {:>9.3} {:>9.3} {:>9.3}",
                ms(h.value_at_quantile(0.5)),
                ms(h.value_at_quantile(0.99)),
                ms(h.max())
            );
        }
        out
    }
}
