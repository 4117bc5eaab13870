//! The topology as a document: the format of topology files (TOML or JSON)
//! and of `ezone topo show --json`.
//!
//! Sites and shards are lists here, so that a duplicate is visible (and
//! refused) instead of silently collapsed by a map.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::{RoutingTable, Settings, Shard, Site, Topology};
use crate::validate::{validate, Invalid, Problem};

/// A topology file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyDoc {
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub shards: Vec<Shard>,
    #[serde(default)]
    pub routing: RoutingTable,
    #[serde(default)]
    pub settings: Settings,
}

/// Why a topology file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("topology file {path} is not valid {format}: {message}")]
    Parse {
        path: String,
        format: &'static str,
        message: String,
    },
    #[error("topology file {path}: {invalid}")]
    Invalid { path: String, invalid: Invalid },
}

impl From<&Topology> for TopologyDoc {
    fn from(t: &Topology) -> Self {
        TopologyDoc {
            sites: t.sites.values().cloned().collect(),
            shards: t.shards.values().cloned().collect(),
            routing: t.routing.clone(),
            settings: t.settings.clone(),
        }
    }
}

impl TopologyDoc {
    /// Builds the validated topology, reporting duplicates and every other problem.
    pub fn into_topology(self) -> Result<Topology, Invalid> {
        let mut problems = Vec::new();
        let mut sites = BTreeMap::new();
        let mut dup_sites = BTreeSet::new();
        for site in self.sites {
            match sites.entry(site.name.clone()) {
                Entry::Occupied(_) => {
                    dup_sites.insert(site.name);
                }
                Entry::Vacant(slot) => {
                    slot.insert(site);
                }
            }
        }
        problems.extend(
            dup_sites
                .into_iter()
                .map(|name| Problem::DuplicateSite { name }),
        );
        let mut shards = BTreeMap::new();
        let mut dup_shards = BTreeSet::new();
        for shard in self.shards {
            match shards.entry(shard.id) {
                Entry::Occupied(_) => {
                    dup_shards.insert(shard.id);
                }
                Entry::Vacant(slot) => {
                    slot.insert(shard);
                }
            }
        }
        problems.extend(
            dup_shards
                .into_iter()
                .map(|id| Problem::DuplicateShard { id }),
        );
        let t = Topology {
            sites,
            shards,
            routing: self.routing,
            settings: self.settings,
        };
        if let Err(Invalid(more)) = validate(&t) {
            problems.extend(more);
        }
        if problems.is_empty() {
            Ok(t)
        } else {
            Err(Invalid(problems))
        }
    }

    /// Parses a document; TOML if `path` ends in `.toml`, JSON otherwise.
    pub fn parse(path: &str, text: &str) -> Result<TopologyDoc, DocError> {
        if path.ends_with(".toml") {
            toml::from_str(text).map_err(|e| DocError::Parse {
                path: path.to_string(),
                format: "TOML",
                message: e.to_string(),
            })
        } else {
            serde_json::from_str(text).map_err(|e| DocError::Parse {
                path: path.to_string(),
                format: "JSON",
                message: e.to_string(),
            })
        }
    }
}

/// Reads, parses and validates a topology file.
pub fn load_file(path: &Path) -> Result<Topology, DocError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DocError::Read {
        path: shown.clone(),
        source,
    })?;
    TopologyDoc::parse(&shown, &text)?
        .into_topology()
        .map_err(|invalid| DocError::Invalid {
            path: shown,
            invalid,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::starter::starter;

    #[test]
    fn round_trip_toml_and_json() {
        let t = starter(&["beijing", "shanghai"], 2);
        let doc = TopologyDoc::from(&t);
        let toml_text = toml::to_string(&doc).unwrap();
        let back = TopologyDoc::parse("x.toml", &toml_text)
            .unwrap()
            .into_topology()
            .unwrap();
        assert_eq!(back, t);
        let json = serde_json::to_string_pretty(&doc).unwrap();
        let back = TopologyDoc::parse("x.json", &json)
            .unwrap()
            .into_topology()
            .unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn duplicates_are_refused() {
        let t = starter(&["beijing", "shanghai"], 1);
        let mut doc = TopologyDoc::from(&t);
        doc.sites.push(doc.sites[0].clone());
        doc.shards.push(doc.shards[1].clone());
        let err = doc.into_topology().unwrap_err();
        assert!(err.0.contains(&Problem::DuplicateSite {
            name: "beijing".into()
        }));
        assert!(err.0.contains(&Problem::DuplicateShard { id: 2 }));
    }

    #[test]
    fn a_city_mapped_twice_is_refused_in_json_as_in_toml() {
        let json = r#"{"routing": {"cities": {"010": 1, "021": 2, "010": 2}}}"#;
        let err = TopologyDoc::parse("t.json", json).unwrap_err();
        assert!(err.to_string().contains("\"010\" is mapped twice"), "{err}");
        let toml_text = "[routing.cities]\n\"010\" = 1\n\"010\" = 2\n";
        assert!(TopologyDoc::parse("t.toml", toml_text).is_err());
        let once = r#"{"routing": {"cities": {"010": 1, "021": 2}}}"#;
        TopologyDoc::parse("t.json", once).unwrap();
    }

    #[test]
    fn unknown_field_is_a_parse_error() {
        let err = TopologyDoc::parse("t.toml", "[settings]\nwrite_hold = 5\n").unwrap_err();
        assert!(err.to_string().contains("write_hold"), "{err}");
    }
}
