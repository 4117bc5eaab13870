//! The ezone router under test: a generated topology file and router config,
//! and the `ezone router --config FILE` process that runs them.
//!
//! The topology is the starter one for a single site, `bench`, whose
//! upstream pool is the bench upstream and whose router address is the
//! router's own listener; the starter maps city `010` to shard 1, homed at
//! the first site, so every request wrk sends (`X-City-Id: 010`) is routed
//! locally to the upstream: the path measured is key extraction, the routing
//! decision, the shard headers and the proxying itself. The file source is
//! used (no etcd), so nothing else runs during the measurement.
//!
//! The router gets `listen.workers` set to the bench's proxy worker count
//! (its data-plane threads), the same number nginx gets as
//! `worker_processes`; its control-plane runtime gets one thread.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ezone_chaos::process::{ChildProcess, ProcessSpec};
use ezone_topology::doc::TopologyDoc;
use ezone_topology::starter::starter;

/// The one site of the bench topology.
pub const SITE: &str = "bench";

/// The topology file's JSON: one site, `router` at `listen`, its upstream
/// pool `[upstream]`. Checked with the topology's own validation.
pub fn topology_json(
    listen: SocketAddr,
    upstream: SocketAddr,
    city: &str,
) -> anyhow::Result<String> {
    let mut t = starter(&[SITE], 1);
    let site = t
        .sites
        .get_mut(SITE)
        .context("the starter topology lacks its own site")?;
    site.router = listen.to_string();
    site.upstreams = vec![upstream.to_string()];
    let doc = TopologyDoc::from(&t);
    // Refuse to bench a topology the router would refuse.
    let checked = doc
        .clone()
        .into_topology()
        .map_err(|e| anyhow::anyhow!("the generated bench topology is invalid: {e}"))?;
    let home = checked
        .city_shard(city)
        .map(|s| s.home.clone())
        .with_context(|| format!("the starter topology does not map city {city:?}"))?;
    anyhow::ensure!(
        home == SITE,
        "city {city:?} is homed at {home:?}, not at the bench site {SITE:?}"
    );
    serde_json::to_string_pretty(&doc).context("serialising the bench topology")
}

/// The router config TOML: listen on `listen`, topology from `topology`,
/// the key from the `X-City-Id` header.
pub fn config_toml(listen: SocketAddr, topology: &Path, workers: u32) -> anyhow::Result<String> {
    // A JSON string is a valid TOML basic string (same escapes).
    let file = serde_json::to_string(&topology.display().to_string())?;
    Ok(format!(
        r#"# Written by `ezone bench router`.
site = "{SITE}"

[listen]
http = "{listen}"
workers = {workers}

[topology]
file = {file}

[[keys]]
source = "header"
name = "x-city-id"
kind = "city"
"#
    ))
}

/// Writes the topology and config into `dir` and starts
/// `ezone_bin router --config DIR/router.toml`.
pub fn spawn(
    ezone_bin: &Path,
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    city: &str,
    workers: u32,
) -> anyhow::Result<ChildProcess> {
    let topology = dir.join("topology.json");
    std::fs::write(&topology, topology_json(listen, upstream, city)?)
        .with_context(|| format!("writing {}", topology.display()))?;
    let config = dir.join("router.toml");
    std::fs::write(&config, config_toml(listen, &topology, workers)?)
        .with_context(|| format!("writing {}", config.display()))?;
    let spec = ProcessSpec::new("ezone router", PathBuf::from(ezone_bin), dir, "router.log")
        .args([
            "router".to_string(),
            "--config".to_string(),
            config.display().to_string(),
        ])
        .env("TOKIO_WORKER_THREADS", "1");
    ChildProcess::spawn(spec).context("starting the ezone router")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_routes_the_bench_city_to_the_upstream() {
        let listen: SocketAddr = "127.0.0.1:8080".parse().expect("addr");
        let upstream: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let json = topology_json(listen, upstream, "010").expect("valid");
        let doc: TopologyDoc = serde_json::from_str(&json).expect("parses back");
        let t = doc.into_topology().expect("valid");
        let site = &t.sites[SITE];
        assert_eq!(site.router, "127.0.0.1:8080");
        assert_eq!(site.upstreams, vec!["127.0.0.1:9000".to_string()]);
        assert_eq!(t.city_shard("010").map(|s| s.home.as_str()), Some(SITE));
        assert!(topology_json(listen, upstream, "no-such-city").is_err());
    }

    #[test]
    fn config_names_the_listener_and_the_file() {
        let text = config_toml(
            "127.0.0.1:8080".parse().expect("addr"),
            Path::new("/tmp/a \"b\"/topology.json"),
            2,
        )
        .expect("renders");
        assert!(text.contains("workers = 2"));
        assert!(text.contains("http = \"127.0.0.1:8080\""));
        assert!(
            text.contains(r#"file = "/tmp/a \"b\"/topology.json""#),
            "{text}"
        );
        assert!(text.contains("name = \"x-city-id\""));
    }
}
