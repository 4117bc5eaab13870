//! The TOML config of each process of a site: the order service
//! (`ezone orders serve`), the router (`docs/router.md`) and the replicator
//! (`docs/replicator.md`).
//!
//! Each is first written with port 0 everywhere (no port races at start);
//! once the process reports its bound addresses, the file is rewritten with
//! them, so a restart binds the same ports and the topology stays right.
//!
//! These hold lab DSNs (trust authentication on loopback, no passwords),
//! which is why plain `Serialize` is fine here.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::EnsembleError;

/// The replicated table.
pub(crate) const ORDERS_TABLE: &str = "public.orders";
/// The header that carries the city, and its key kind.
pub(crate) const CITY_HEADER: &str = "x-city-id";

/// `HOST:0`: any port on a site's (or the WAN's) address.
pub(crate) fn any_port(host: IpAddr) -> SocketAddr {
    SocketAddr::new(host, 0)
}

/// `orders.toml`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OrdersToml {
    pub site: String,
    pub listen: SocketAddr,
    pub postgres: String,
    pub pool_size: usize,
}

/// `router.toml`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouterToml {
    pub site: String,
    pub listen: RouterListen,
    pub admin: Admin,
    pub topology: Topology,
    pub keys: Vec<KeySource>,
    pub routing: Routing,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_tls: Option<PeerTls>,
}

/// How a router proves it is one to its peers.
#[derive(Debug, Clone)]
pub(crate) enum PeerTrust {
    /// `routing.peer_secret`, shared by every router.
    Secret(String),
    /// `[peer_tls]`: this router's certificate (naming its site) and the CA.
    Tls(PeerTls),
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PeerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RouterListen {
    pub http: SocketAddr,
    /// Other sites' routers only, over mutual TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Admin {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Topology {
    pub etcd: Vec<String>,
    pub prefix: String,
    /// etcd over TLS, when the lab's etcd takes only that.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_tls: Option<ezone_topology::store::EtcdTls>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct KeySource {
    pub source: &'static str,
    pub name: &'static str,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Routing {
    pub on_missing_key: &'static str,
    pub on_unknown_city: &'static str,
    /// The same for every router of the ensemble (`routing.peer_secret`),
    /// when the routers do not use peer TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_secret: Option<String>,
}

/// `replicator.toml`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReplicatorToml {
    pub site: String,
    pub tables: Vec<String>,
    /// The sources stream large transactions before their commit.
    pub streaming: bool,
    /// `"auto"` or a count, as the replicator reads it; left out: its
    /// default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_workers: Option<String>,
    pub fence: bool,
    pub topology: Topology,
    pub sources: BTreeMap<String, Source>,
    pub admin: Admin,
    pub shard_keys: BTreeMap<String, ShardKey>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Source {
    pub dsn: String,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ShardKey {
    pub column: &'static str,
    pub kind: &'static str,
}

impl OrdersToml {
    pub(crate) fn new(site: &str, host: IpAddr, postgres: String, pool_size: usize) -> Self {
        OrdersToml {
            site: site.to_string(),
            listen: any_port(host),
            postgres,
            pool_size,
        }
    }
}

impl RouterToml {
    /// Header `x-city-id` (a city), no key -> this site, unknown city -> 404;
    /// `peer_secret` shared by the ensemble's routers, or peer TLS.
    pub(crate) fn new(site: &str, host: IpAddr, topology: Topology, trust: &PeerTrust) -> Self {
        let (peer, peer_secret, peer_tls) = match trust {
            PeerTrust::Secret(s) => (None, Some(s.clone()), None),
            PeerTrust::Tls(t) => (Some(any_port(host)), None, Some(t.clone())),
        };
        RouterToml {
            site: site.to_string(),
            peer_tls,
            listen: RouterListen {
                http: any_port(host),
                peer,
            },
            admin: Admin {
                listen: any_port(host),
            },
            topology,
            keys: vec![KeySource {
                source: "header",
                name: CITY_HEADER,
                kind: "city",
            }],
            routing: Routing {
                on_missing_key: "default_site",
                on_unknown_city: "reject",
                peer_secret,
            },
        }
    }
}

impl ReplicatorToml {
    /// Replicate `public.orders` (shard key: the city) from every source,
    /// and keep this site's fence in line with the topology.
    pub(crate) fn new(
        site: &str,
        host: IpAddr,
        topology: Topology,
        sources: BTreeMap<String, Source>,
    ) -> Self {
        let mut shard_keys = BTreeMap::new();
        shard_keys.insert(
            ORDERS_TABLE.to_string(),
            ShardKey {
                column: "city",
                kind: "city",
            },
        );
        ReplicatorToml {
            site: site.to_string(),
            tables: vec![ORDERS_TABLE.to_string()],
            streaming: false,
            apply_workers: None,
            fence: true,
            topology,
            sources,
            admin: Admin {
                listen: any_port(host),
            },
            shard_keys,
        }
    }
}

/// Write `value` as TOML to `path`.
pub(crate) fn write(path: &Path, value: &impl Serialize) -> Result<(), EnsembleError> {
    let text = toml::to_string(value).map_err(|e| EnsembleError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::write(path, text).map_err(|source| EnsembleError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn topo() -> Topology {
        Topology {
            etcd: vec!["http://127.0.0.1:2379".to_string()],
            prefix: "/ezone".to_string(),
            etcd_tls: None,
        }
    }

    #[test]
    fn router_config_has_the_documented_shape() {
        let text = toml::to_string(&RouterToml::new(
            "beijing",
            LOCAL,
            topo(),
            &PeerTrust::Secret("0123456789abcdef".into()),
        ))
        .expect("toml");
        let v: toml::Value = toml::from_str(&text).expect("parses back");
        assert_eq!(v["site"].as_str(), Some("beijing"));
        assert_eq!(v["listen"]["http"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(v["admin"]["listen"].as_str(), Some("127.0.0.1:0"));
        assert_eq!(v["keys"][0]["name"].as_str(), Some("x-city-id"));
        assert_eq!(v["keys"][0]["kind"].as_str(), Some("city"));
        assert_eq!(v["topology"]["prefix"].as_str(), Some("/ezone"));
        assert_eq!(
            v["routing"]["peer_secret"].as_str(),
            Some("0123456789abcdef")
        );
        // What the router itself accepts.
        ezone_router::config::RouterConfig::from_toml(&text).expect("a valid router config");
    }

    #[test]
    fn a_router_with_peer_tls_has_a_peer_listener_and_no_secret() {
        let trust = PeerTrust::Tls(PeerTls {
            cert_file: "/certs/peer-beijing.pem".into(),
            key_file: "/certs/peer-beijing.key".into(),
            ca_file: "/certs/ca.pem".into(),
        });
        let text =
            toml::to_string(&RouterToml::new("beijing", LOCAL, topo(), &trust)).expect("toml");
        let v: toml::Value = toml::from_str(&text).expect("parses back");
        assert_eq!(v["listen"]["peer"].as_str(), Some("127.0.0.1:0"));
        assert!(v["routing"].get("peer_secret").is_none(), "{text}");
        assert_eq!(
            v["peer_tls"]["ca_file"].as_str(),
            Some("/certs/ca.pem"),
            "{text}"
        );
        ezone_router::config::RouterConfig::from_toml(&text).expect("a valid router config");
    }

    #[test]
    fn replicator_config_has_the_documented_shape() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "shanghai".to_string(),
            Source {
                dsn: "host=127.0.0.1 port=5 user=postgres dbname=ezone".to_string(),
            },
        );
        let text =
            toml::to_string(&ReplicatorToml::new("beijing", LOCAL, topo(), sources)).expect("toml");
        let v: toml::Value = toml::from_str(&text).expect("parses back");
        assert_eq!(v["fence"].as_bool(), Some(true));
        assert_eq!(v["tables"][0].as_str(), Some("public.orders"));
        assert!(v["sources"]["shanghai"]["dsn"]
            .as_str()
            .is_some_and(|d| d.contains("port=5")));
        assert_eq!(
            v["shard_keys"]["public.orders"]["column"].as_str(),
            Some("city")
        );
        assert_eq!(
            v["topology"]["etcd"][0].as_str(),
            Some("http://127.0.0.1:2379")
        );
    }

    #[test]
    fn orders_config_has_the_documented_shape() {
        let text = toml::to_string(&OrdersToml::new("beijing", LOCAL, "host=x".to_string(), 8))
            .expect("toml");
        let v: toml::Value = toml::from_str(&text).expect("parses back");
        assert_eq!(v["pool_size"].as_integer(), Some(8));
        assert_eq!(v["listen"].as_str(), Some("127.0.0.1:0"));
    }
}
