//! What a running lab offers, as plain data: printed by `ezone lab up`,
//! stored in the lab's state file, and read by tests and the demo to find
//! etcd, each site's Postgres and the WAN links.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The lab's addresses.
///
/// ```json
/// {"etcd": ["http://127.0.0.1:PORT"],
///  "sites": {"beijing": {"postgres": "host=127.0.0.1 port=P user=postgres dbname=ezone"}},
///  "wan": {"beijing->shanghai": "127.0.0.1:PORT"},
///  "proxy_admin": "127.0.0.1:PORT"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInfo {
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// Each site's own Postgres, reached directly (on the site's LAN).
    pub sites: BTreeMap<String, SiteInfo>,
    /// WAN links by name `a->b`: the address at which site `b` reaches site
    /// `a`'s Postgres, through the fault proxy.
    pub wan: BTreeMap<String, SocketAddr>,
    /// The fault proxy's admin HTTP API.
    pub proxy_admin: SocketAddr,
}

/// One site of a lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteInfo {
    /// libpq DSN of the site's own Postgres.
    pub postgres: String,
}

/// The name of the WAN link by which `from_site` reaches `pg_site`'s
/// Postgres: `"<pg_site>-><from_site>"`.
pub fn link_name(pg_site: &str, from_site: &str) -> String {
    format!("{pg_site}->{from_site}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_has_the_documented_shape() {
        let mut sites = BTreeMap::new();
        sites.insert(
            "beijing".to_string(),
            SiteInfo {
                postgres: "host=127.0.0.1 port=5 user=postgres dbname=ezone".to_string(),
            },
        );
        let mut wan = BTreeMap::new();
        wan.insert(
            link_name("beijing", "shanghai"),
            "127.0.0.1:7".parse().expect("addr"),
        );
        let info = LabInfo {
            etcd: vec!["http://127.0.0.1:1".to_string()],
            sites,
            wan,
            proxy_admin: "127.0.0.1:9".parse().expect("addr"),
        };
        let v = serde_json::to_value(&info).expect("serialize");
        assert_eq!(
            v["sites"]["beijing"]["postgres"],
            "host=127.0.0.1 port=5 user=postgres dbname=ezone"
        );
        assert_eq!(v["wan"]["beijing->shanghai"], "127.0.0.1:7");
        assert_eq!(v["proxy_admin"], "127.0.0.1:9");
        let back: LabInfo = serde_json::from_value(v).expect("deserialize");
        assert_eq!(back, info);
    }
}
