//! The ensemble's topology and the WAN in front of each router.
//!
//! A site's `router` address in the topology is where *other* sites' routers
//! reach it, so it crosses the WAN: a fault-proxy link `router:<site>` in
//! front of the router, with the lab's WAN latency (half the round trip each
//! way), added to the lab's proxy next to its Postgres links (`a->b`). One
//! link per router is enough: the topology has one router address per site.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ezone_topology::starter::starter;
use ezone_topology::{EtcdStore, Topology, TopologyStore};

use super::config::any_port;
use super::error::EnsembleError;
use crate::lab::Lab;
use crate::proxy::{LinkHandle, LinkSpec, Toxics};

/// The etcd prefix the ensemble's topology lives under.
pub const TOPOLOGY_PREFIX: &str = "/ezone";

/// The name of the WAN link in front of `site`'s router.
pub fn router_link_name(site: &str) -> String {
    format!("router:{site}")
}

/// The name of the link between `site`'s replicator and etcd member
/// `member` (see [`crate::ensemble::EnsembleSpec::replicator_etcd_links`]):
/// `etcd:<site>` for the first member, `etcd:<site>#<i>` for the others.
pub fn etcd_link_name(site: &str) -> String {
    etcd_member_link_name(site, 0)
}

/// As [`etcd_link_name`], for member `member` (0-based).
pub fn etcd_member_link_name(site: &str, member: usize) -> String {
    if member == 0 {
        format!("etcd:{site}")
    } else {
        format!("etcd:{site}#{member}")
    }
}

/// Add a link per etcd member, `etcd:<site>[#i]`, to the lab's proxy, each
/// forwarding to its member with no fault on it; returns the URLs to reach
/// etcd through (the replicator's client balances over them, as it would
/// over a real cluster's members).
pub(crate) async fn add_etcd_links(lab: &Lab, site: &str) -> Result<Vec<String>, EnsembleError> {
    let mut urls = Vec::new();
    for (member, url) in lab.etcd().client_urls().into_iter().enumerate() {
        let (scheme, address) = url.split_once("://").unwrap_or(("http", url.as_str()));
        let upstream: SocketAddr = address.parse().map_err(|_| EnsembleError::InvalidSpec {
            field: "replicator_etcd_links",
            value: url.clone(),
            why: "the lab's etcd client URL is not http(s)://IP:PORT".to_string(),
        })?;
        let spec = LinkSpec {
            name: etcd_member_link_name(site, member),
            listen: any_port(lab.hosts().wan().addr),
            upstream,
            upstream_toxics: Toxics::default(),
            downstream_toxics: Toxics::default(),
        };
        let listen = match lab.proxy() {
            Some(proxy) => proxy.add_link(spec).await?.listen_addr(),
            None => lab.admin_client().add_link(&spec).await?.listen,
        };
        // TLS passes through the proxy: etcd's certificate names the WAN
        // address the link listens on (127.0.0.1 on loopback).
        urls.push(format!("{scheme}://{listen}"));
    }
    Ok(urls)
}

/// Every etcd link of `site`'s replicator that the lab's proxy has.
pub fn etcd_links(lab: &Lab, site: &str) -> Vec<LinkHandle> {
    let Some(proxy) = lab.proxy() else {
        return Vec::new();
    };
    (0..lab.etcd().members().len())
        .filter_map(|m| proxy.link(&etcd_member_link_name(site, m)))
        .collect()
}

/// A WAN link in front of a router.
#[derive(Debug, Clone)]
pub(crate) struct RouterLink {
    /// Where other sites reach the router (the topology's `router`).
    pub listen: SocketAddr,
    /// The in-process proxy's handle (`None` when the proxy is a process:
    /// use the lab's admin client with [`router_link_name`]).
    pub handle: Option<LinkHandle>,
}

/// Add the link `router:<site>` to the lab's proxy, forwarding to `router`.
pub(crate) async fn add_router_link(
    lab: &Lab,
    site: &str,
    router: SocketAddr,
) -> Result<RouterLink, EnsembleError> {
    let one_way = Toxics {
        latency: lab.wan_rtt() / 2,
        ..Toxics::default()
    };
    let spec = LinkSpec {
        name: router_link_name(site),
        listen: any_port(lab.hosts().wan().addr),
        upstream: router,
        upstream_toxics: one_way.clone(),
        downstream_toxics: one_way,
    };
    match lab.proxy() {
        Some(proxy) => {
            let handle = proxy.add_link(spec).await?;
            Ok(RouterLink {
                listen: handle.listen_addr(),
                handle: Some(handle),
            })
        }
        None => {
            let status = lab.admin_client().add_link(&spec).await?;
            Ok(RouterLink {
                listen: status.listen,
                handle: None,
            })
        }
    }
}

/// What the topology says about one site.
#[derive(Debug, Clone)]
pub(crate) struct SiteAddrs {
    /// The router as reached across the WAN.
    pub router: SocketAddr,
    /// The site's order service(s).
    pub upstreams: Vec<SocketAddr>,
    /// The site's own Postgres, directly.
    pub postgres: String,
}

/// The starter topology (`shards_per_site` shards per site, homed round
/// robin, the starter's cities) with the sites' real addresses.
pub(crate) fn build(
    sites: &[String],
    shards_per_site: u32,
    addrs: &BTreeMap<String, SiteAddrs>,
) -> Topology {
    let names: Vec<&str> = sites.iter().map(String::as_str).collect();
    let mut t = starter(&names, shards_per_site);
    for (name, site) in t.sites.iter_mut() {
        if let Some(a) = addrs.get(name) {
            site.router = a.router.to_string();
            site.upstreams = a.upstreams.iter().map(|u| u.to_string()).collect();
            site.postgres = a.postgres.clone();
        }
    }
    t
}

/// Write `topology` to etcd, replacing whatever is there.
pub(crate) async fn write(
    etcd: &ezone_topology::store::EtcdOptions,
    topology: &Topology,
) -> Result<(), EnsembleError> {
    let store = EtcdStore::connect_with(etcd, TOPOLOGY_PREFIX).await?;
    store.init(topology, true).await?;
    Ok(())
}

/// A connection to the ensemble's topology store.
pub(crate) async fn store(
    etcd: &ezone_topology::store::EtcdOptions,
) -> Result<EtcdStore, EnsembleError> {
    Ok(EtcdStore::connect_with(etcd, TOPOLOGY_PREFIX).await?)
}

/// Every city of the routing table and its shard.
pub(crate) fn cities(t: &Topology) -> Vec<(String, u32)> {
    t.routing
        .cities
        .iter()
        .map(|(c, s)| (c.clone(), *s))
        .collect()
}
