//! How a topology is laid out as keys under a prefix (etcd), so that one
//! shard can be changed by compare-and-swap without rewriting the rest:
//!
//! ```text
//! {prefix}/sites/{name}   Site JSON
//! {prefix}/shards/{id}    Shard JSON (id in decimal)
//! {prefix}/routing        RoutingTable JSON
//! {prefix}/settings       Settings JSON (written last by init: its presence
//!                         means "initialized")
//! {prefix}/locks/{name}   operator locks (leased; not part of the topology)
//! {prefix}/ops/...        reserved for operation state (not part of the topology)
//! ```

use std::collections::BTreeMap;

use crate::model::{RoutingTable, Settings, Shard, ShardId, Site, Topology};
use crate::store::StoreError;
use crate::validate::validate;

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/ezone";

/// Key builder for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Normalised: starts with '/', no trailing '/'.
    prefix: String,
}

/// A key under the prefix, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    Site(String),
    Shard(ShardId),
    Routing,
    Settings,
    /// Locks and operation state: under the prefix but not the topology.
    Reserved,
    Unknown,
}

impl Layout {
    pub fn new(prefix: &str) -> Layout {
        let trimmed = prefix.trim_matches('/');
        Layout {
            prefix: format!("/{trimmed}"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The prefix with a trailing '/', for range reads and watches (so that
    /// `/ezone` does not also match `/ezone2`).
    pub fn dir(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn site(&self, name: &str) -> String {
        format!("{}/sites/{name}", self.prefix)
    }
    pub fn sites_dir(&self) -> String {
        format!("{}/sites/", self.prefix)
    }
    pub fn shard(&self, id: ShardId) -> String {
        format!("{}/shards/{id}", self.prefix)
    }
    pub fn shards_dir(&self) -> String {
        format!("{}/shards/", self.prefix)
    }
    pub fn routing(&self) -> String {
        format!("{}/routing", self.prefix)
    }
    pub fn settings(&self) -> String {
        format!("{}/settings", self.prefix)
    }
    pub fn lock(&self, name: &str) -> String {
        format!("{}/locks/{name}", self.prefix)
    }
    /// An operation record (`switchover/7`, `forced/beijing`).
    pub fn op(&self, name: &str) -> String {
        format!("{}/ops/{name}", self.prefix)
    }
    pub fn ops_dir(&self) -> String {
        format!("{}/ops/", self.prefix)
    }

    pub fn classify(&self, key: &str) -> KeyKind {
        let Some(rest) = key
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return KeyKind::Unknown;
        };
        if let Some(name) = rest.strip_prefix("sites/") {
            return KeyKind::Site(name.to_string());
        }
        if let Some(text) = rest.strip_prefix("shards/") {
            // Only the canonical decimal spelling (`7`, not `007`) is a shard key.
            return match text.parse::<ShardId>() {
                Ok(id) if id.to_string() == text => KeyKind::Shard(id),
                _ => KeyKind::Unknown,
            };
        }
        match rest {
            "routing" => KeyKind::Routing,
            "settings" => KeyKind::Settings,
            _ if rest.starts_with("locks/") || rest.starts_with("ops/") => KeyKind::Reserved,
            _ => KeyKind::Unknown,
        }
    }

    /// The key-value pairs of a whole topology.
    pub fn encode(&self, t: &Topology) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for site in t.sites.values() {
            out.push((
                self.site(&site.name),
                to_json(site, t.extras.site(&site.name)),
            ));
        }
        for shard in t.shards.values() {
            out.push((
                self.shard(shard.id),
                to_json(shard, t.extras.shard(shard.id)),
            ));
        }
        out.push((self.routing(), to_json(&t.routing, Some(&t.extras.routing))));
        out.push((
            self.settings(),
            to_json(&t.settings, Some(&t.extras.settings)),
        ));
        out
    }

    /// Builds and validates a topology from the raw keys under the prefix.
    /// `Ok(None)` means nothing is initialised there (no settings key).
    pub fn assemble(
        &self,
        store: &str,
        raw: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Option<Topology>, StoreError> {
        let mut t = Topology::default();
        let mut routing: Option<RoutingTable> = None;
        let mut settings: Option<Settings> = None;
        for (key, value) in raw {
            match self.classify(key) {
                KeyKind::Site(name) => {
                    let (site, extra): (Site, _) = from_json(store, key, "site", value)?;
                    t.extras.set_site(&name, extra);
                    t.sites.insert(name, site);
                }
                KeyKind::Shard(id) => {
                    let (shard, extra): (Shard, _) = from_json(store, key, "shard", value)?;
                    t.extras.set_shard(id, extra);
                    t.shards.insert(id, shard);
                }
                KeyKind::Routing => {
                    let (r, extra) = from_json(store, key, "routing table", value)?;
                    t.extras.routing = extra;
                    routing = Some(r);
                }
                KeyKind::Settings => {
                    let (s, extra) = from_json(store, key, "settings", value)?;
                    t.extras.settings = extra;
                    settings = Some(s);
                }
                KeyKind::Reserved => {}
                KeyKind::Unknown => {
                    return Err(StoreError::UnknownKey {
                        store: store.to_string(),
                        key: key.clone(),
                    })
                }
            }
        }
        let Some(settings) = settings else {
            return Ok(None);
        };
        t.settings = settings;
        t.routing = routing.unwrap_or_default();
        validate(&t).map_err(StoreError::Invalid)?;
        Ok(Some(t))
    }
}

fn to_json<T: serde::Serialize>(v: &T, extra: Option<&crate::model::Extra>) -> Vec<u8> {
    crate::doc::encode_piece(v, extra).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned>(
    store: &str,
    key: &str,
    what: &'static str,
    value: &[u8],
) -> Result<(T, crate::model::Extra), StoreError> {
    crate::doc::decode_piece(value).map_err(|e| StoreError::Corrupt {
        store: store.to_string(),
        key: key.to_string(),
        what,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::starter::starter;

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(Layout::new("ezone/").prefix(), "/ezone");
        assert_eq!(Layout::new("/a/b").dir(), "/a/b/");
    }

    #[test]
    fn encode_assemble_round_trip() {
        let l = Layout::new("/ezone");
        let t = starter(&["beijing", "shanghai"], 2);
        let raw: BTreeMap<String, Vec<u8>> = l.encode(&t).into_iter().collect();
        assert_eq!(l.assemble("test", &raw).unwrap(), Some(t));
    }

    #[test]
    fn classify_keys() {
        let l = Layout::new("/ezone");
        assert_eq!(l.classify("/ezone/shards/12"), KeyKind::Shard(12));
        assert_eq!(l.classify("/ezone/shards/012"), KeyKind::Unknown);
        assert_eq!(l.classify("/ezone/locks/x"), KeyKind::Reserved);
        assert_eq!(
            l.classify("/ezone/sites/beijing"),
            KeyKind::Site("beijing".into())
        );
        assert_eq!(l.classify("/ezone2/routing"), KeyKind::Unknown);
        assert_eq!(l.classify("/ezone/other"), KeyKind::Unknown);
    }

    #[test]
    fn uninitialised_is_none_and_corrupt_is_named() {
        let l = Layout::new("/ezone");
        assert_eq!(l.assemble("t", &BTreeMap::new()).unwrap(), None);
        let mut raw = BTreeMap::new();
        raw.insert("/ezone/shards/1".to_string(), b"{not json".to_vec());
        let err = l.assemble("t", &raw).unwrap_err();
        assert!(err.to_string().contains("/ezone/shards/1"), "{err}");
    }
}
