//! The topology as a document: the format of topology files (TOML or JSON)
//! and of `ezone topo show --json`; and, one object per key, of the
//! topology in etcd ([`decode_piece`], [`encode_piece`]).
//!
//! Sites and shards are lists here, so that a duplicate is visible (and
//! refused) instead of silently collapsed by a map.
//!
//! # Unknown fields: tolerant when stored, strict when written by hand
//!
//! There are two ways in, on purpose:
//!
//! - **What ezone wrote** (the etcd keys, the file of a file store, the
//!   output of `ezone topo show --json`): a field this version does not
//!   know, at any level (the top, a site, a shard, `routing`, `settings`),
//!   is accepted and kept in [`Extras`], and written back unchanged by
//!   [`TopologyDoc`]'s `Serialize` and [`encode_piece`]. During a rolling
//!   upgrade a newer ezone writes fields that the older routers, replicators
//!   and failover commands still running must read, and must not drop when
//!   they swap a shard or rewrite the file. Paths: [`load_stored_file`],
//!   [`TopologyDoc::parse_stored`], `TopologyDoc`'s `Deserialize`,
//!   [`decode_piece`].
//! - **What an operator wrote** (`ezone topo init -f FILE`, `ezone topo
//!   validate FILE`): an unknown field is an error that names it, where it
//!   is, and the known field it most likely meant. Such a file is typed by
//!   hand, and a misspelt key ignored would silently take the default
//!   instead (`upstream = [...]` for `upstreams`: a site with no
//!   upstreams; `fence_lease = 0` for `fence_lease_ms`: the 10 s lease the
//!   operator meant to turn off); a warning scrolls away, a refusal cannot
//!   be missed. A file that carries a newer ezone's fields is refused the
//!   same way, which is also right: `topo init` replaces the topology, so
//!   such a file is for the ezone that knows those fields. Paths:
//!   [`load_file`], [`TopologyDoc::parse`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::model::{Extra, Extras, RoutingTable, Settings, Shard, Site, Topology};
use crate::validate::{validate, Invalid, Problem};

/// A topology file.
///
/// Its `Serialize` and `Deserialize` keep unknown fields (in `extras`, put
/// back in their objects when written); [`TopologyDoc::parse`] is the
/// strict reading for files written by hand (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologyDoc {
    pub sites: Vec<Site>,
    pub shards: Vec<Shard>,
    pub routing: RoutingTable,
    pub settings: Settings,
    /// The fields this version does not know, by object (a site's by its
    /// name, a shard's by its id: with duplicates, the first one's).
    pub extras: Extras,
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
            extras: t.extras.clone(),
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
        let mut extras = self.extras;
        // Only objects that exist keep unknown fields.
        extras
            .sites
            .retain(|name, e| !e.is_empty() && sites.contains_key(name));
        extras
            .shards
            .retain(|id, e| !e.is_empty() && shards.contains_key(id));
        let t = Topology {
            sites,
            shards,
            routing: self.routing,
            settings: self.settings,
            extras,
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

    /// Parses a document written by hand (`ezone topo init -f`, `topo
    /// validate`); TOML if `path` ends in `.toml`, JSON otherwise. Strict:
    /// an unknown field anywhere is an error naming it (see the [module
    /// docs](self)).
    pub fn parse(path: &str, text: &str) -> Result<TopologyDoc, DocError> {
        let format = Format::of(path);
        // First the syntax and the field names, all unknown ones at once...
        let tree: serde_json::Value = format.read(path, text)?;
        let unknown = unknown_fields(&tree);
        if !unknown.is_empty() {
            return Err(DocError::Parse {
                path: path.to_string(),
                format: format.name(),
                message: format!(
                    "{} unknown field{} (misspelt? or a field of a newer ezone: then write \
                     the topology with that version):\n  - {}",
                    unknown.len(),
                    if unknown.len() == 1 { "" } else { "s" },
                    unknown.join("\n  - ")
                ),
            });
        }
        // ...then the values, with the format's own messages (line and
        // column, the key): every field is known, so nothing is dropped.
        let plain: PlainDoc = format.read(path, text)?;
        Ok(TopologyDoc {
            sites: plain.sites,
            shards: plain.shards,
            routing: plain.routing,
            settings: plain.settings,
            extras: Extras::default(),
        })
    }

    /// Parses a document that ezone wrote (a file store's file, `topo show
    /// --json`); TOML if `path` ends in `.toml`, JSON otherwise. Tolerant:
    /// unknown fields are kept in [`TopologyDoc::extras`].
    pub fn parse_stored(path: &str, text: &str) -> Result<TopologyDoc, DocError> {
        Format::of(path).read(path, text)
    }
}

/// Reads, parses (strictly: [`TopologyDoc::parse`]) and validates a
/// topology file written by hand.
pub fn load_file(path: &Path) -> Result<Topology, DocError> {
    load_with(path, TopologyDoc::parse)
}

/// Reads, parses (tolerantly: [`TopologyDoc::parse_stored`]) and validates
/// a topology file that ezone wrote, as a file store does: fields this
/// version does not know are kept in [`Topology::extras`].
pub fn load_stored_file(path: &Path) -> Result<Topology, DocError> {
    load_with(path, TopologyDoc::parse_stored)
}

fn load_with(
    path: &Path,
    parse: fn(&str, &str) -> Result<TopologyDoc, DocError>,
) -> Result<Topology, DocError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| DocError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&shown, &text)?
        .into_topology()
        .map_err(|invalid| DocError::Invalid {
            path: shown,
            invalid,
        })
}

/// Reads one object of the topology as stored in etcd (a site, a shard,
/// the routing table, the settings): the fields this version knows, and
/// the others, to keep in [`Extras`] and give back to [`encode_piece`].
pub fn decode_piece<T: DeserializeOwned>(json: &[u8]) -> Result<(T, Extra), serde_json::Error> {
    let piece: Piece<T> = serde_json::from_slice(json)?;
    Ok((piece.known, piece.extra))
}

/// Writes one object of the topology as stored in etcd, with `extra` (the
/// fields this version does not know, from [`decode_piece`] of the value it
/// replaces) unchanged beside its own fields.
pub fn encode_piece<T: Serialize>(
    known: &T,
    extra: Option<&Extra>,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&PieceRef { known, extra })
}

/// The two formats of a topology file.
#[derive(Clone, Copy)]
enum Format {
    Toml,
    Json,
}

impl Format {
    fn of(path: &str) -> Format {
        if path.ends_with(".toml") {
            Format::Toml
        } else {
            Format::Json
        }
    }

    fn name(self) -> &'static str {
        match self {
            Format::Toml => "TOML",
            Format::Json => "JSON",
        }
    }

    fn read<T: DeserializeOwned>(self, path: &str, text: &str) -> Result<T, DocError> {
        let parsed = match self {
            Format::Toml => toml::from_str(text).map_err(|e| e.to_string()),
            Format::Json => serde_json::from_str(text).map_err(|e| e.to_string()),
        };
        parsed.map_err(|message| DocError::Parse {
            path: path.to_string(),
            format: self.name(),
            message,
        })
    }
}

/// One object as stored: its known fields, then the rest.
#[derive(Default, Deserialize)]
struct Piece<T> {
    #[serde(flatten)]
    known: T,
    #[serde(flatten)]
    extra: Extra,
}

/// One object to store: its known fields, then the unknown ones kept.
#[derive(Serialize)]
struct PieceRef<'a, T> {
    #[serde(flatten)]
    known: &'a T,
    #[serde(flatten)]
    extra: Option<&'a Extra>,
}

/// The document as read by ezone (tolerant).
#[derive(Deserialize)]
struct Wire {
    #[serde(default)]
    sites: Vec<Piece<Site>>,
    #[serde(default)]
    shards: Vec<Piece<Shard>>,
    #[serde(default)]
    routing: Piece<RoutingTable>,
    #[serde(default)]
    settings: Piece<Settings>,
    #[serde(flatten)]
    extra: Extra,
}

/// The document as written by ezone.
#[derive(Serialize)]
struct WireRef<'a> {
    sites: Vec<PieceRef<'a, Site>>,
    shards: Vec<PieceRef<'a, Shard>>,
    routing: PieceRef<'a, RoutingTable>,
    settings: PieceRef<'a, Settings>,
    #[serde(flatten)]
    extra: &'a Extra,
}

/// The document as written by hand, once no field is unknown.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainDoc {
    #[serde(default)]
    sites: Vec<Site>,
    #[serde(default)]
    shards: Vec<Shard>,
    #[serde(default)]
    routing: RoutingTable,
    #[serde(default)]
    settings: Settings,
}

impl Serialize for TopologyDoc {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = &self.extras;
        WireRef {
            sites: self
                .sites
                .iter()
                .map(|site| PieceRef {
                    known: site,
                    extra: x.site(&site.name),
                })
                .collect(),
            shards: self
                .shards
                .iter()
                .map(|shard| PieceRef {
                    known: shard,
                    extra: x.shard(shard.id),
                })
                .collect(),
            routing: PieceRef {
                known: &self.routing,
                extra: Some(&x.routing),
            },
            settings: PieceRef {
                known: &self.settings,
                extra: Some(&x.settings),
            },
            extra: &x.root,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for TopologyDoc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = Wire::deserialize(d)?;
        let mut extras = Extras {
            root: wire.extra,
            routing: wire.routing.extra,
            settings: wire.settings.extra,
            ..Extras::default()
        };
        let mut sites = Vec::with_capacity(wire.sites.len());
        for Piece { known, extra } in wire.sites {
            if extras.site(&known.name).is_none() {
                extras.set_site(&known.name, extra);
            }
            sites.push(known);
        }
        let mut shards = Vec::with_capacity(wire.shards.len());
        for Piece { known, extra } in wire.shards {
            if extras.shard(known.id).is_none() {
                extras.set_shard(known.id, extra);
            }
            shards.push(known);
        }
        Ok(TopologyDoc {
            sites,
            shards,
            routing: wire.routing.known,
            settings: wire.settings.known,
            extras,
        })
    }
}

/// Every field of a document (parsed to a tree) that this version does not
/// know, each as a sentence naming it, where it is, and the known field it
/// most likely meant.
fn unknown_fields(tree: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    let Value::Object(root) = tree else {
        return out; // not a table: the typed pass says so
    };
    check_fields(
        &mut out,
        "at the top level",
        root,
        field_names::<PlainDoc>(),
    );
    if let Some(Value::Array(sites)) = root.get("sites") {
        for (i, site) in sites.iter().enumerate() {
            if let Value::Object(m) = site {
                let place = match m.get("name").and_then(Value::as_str) {
                    Some(name) => format!("in site {name:?} (sites[{i}])"),
                    None => format!("in sites[{i}]"),
                };
                check_fields(&mut out, &place, m, field_names::<Site>());
            }
        }
    }
    if let Some(Value::Array(shards)) = root.get("shards") {
        for (i, shard) in shards.iter().enumerate() {
            if let Value::Object(m) = shard {
                let place = match m.get("id").and_then(Value::as_u64) {
                    Some(id) => format!("in shard {id} (shards[{i}])"),
                    None => format!("in shards[{i}]"),
                };
                check_fields(&mut out, &place, m, field_names::<Shard>());
            }
        }
    }
    if let Some(Value::Object(m)) = root.get("routing") {
        check_fields(&mut out, "in routing", m, field_names::<RoutingTable>());
    }
    if let Some(Value::Object(m)) = root.get("settings") {
        check_fields(&mut out, "in settings", m, field_names::<Settings>());
    }
    out
}

fn check_fields(
    out: &mut Vec<String>,
    place: &str,
    object: &serde_json::Map<String, serde_json::Value>,
    known: &[&str],
) {
    for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
        let hint = match closest(key, known) {
            Some(near) => format!("did you mean {near:?}?"),
            None => format!("known fields: {}", known.join(", ")),
        };
        out.push(format!("unknown field {key:?} {place}: {hint}"));
    }
}

/// The known field a misspelt `key` most likely meant: within two edits of
/// it (one for a key shorter than 5), or one of them the start of the other
/// (`write_hold` for `write_hold_ms`).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let most = if key.chars().count() < 5 { 1 } else { 2 };
    known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .filter(|(d, k)| {
            *d <= most || (key.len() >= 3 && (k.starts_with(key) || key.starts_with(k)))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(up + 1).min(row[j] + 1);
            diag = up;
        }
    }
    row[b.len()]
}

/// The field names of a struct, as its derived `Deserialize` declares them
/// (so that the strict check cannot drift from the structs).
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::value::Error;
    use serde::de::{Error as _, Visitor};

    struct Capture<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Capture<'_> {
        type Error = Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut fields));
    fields
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
        assert!(
            err.to_string().contains(
                "unknown field \"write_hold\" in settings: did you mean \"write_hold_ms\"?"
            ),
            "{err}"
        );
    }

    #[test]
    fn field_names_come_from_the_structs() {
        assert_eq!(
            field_names::<Site>(),
            ["name", "router", "more_routers", "upstreams", "postgres"]
        );
        assert_eq!(field_names::<Shard>(), ["id", "home", "state", "epoch"]);
        assert_eq!(field_names::<RoutingTable>(), ["cities", "user_shards"]);
        assert_eq!(
            field_names::<Settings>(),
            [
                "default_site",
                "write_hold_ms",
                "fence_lease_ms",
                "clock_skew_ms"
            ]
        );
        assert_eq!(
            field_names::<PlainDoc>(),
            ["sites", "shards", "routing", "settings"]
        );
    }

    #[test]
    fn the_nearest_known_field_is_suggested() {
        let site = field_names::<Site>();
        assert_eq!(closest("upstream", site), Some("upstreams"));
        assert_eq!(closest("postgress", site), Some("postgres"));
        assert_eq!(closest("routers", site), Some("router"));
        assert_eq!(closest("region", site), None);
        assert_eq!(closest("note", site), None);
        assert_eq!(closest("nme", site), Some("name"));
        let settings = field_names::<Settings>();
        assert_eq!(closest("fence_lease", settings), Some("fence_lease_ms"));
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn a_type_error_in_a_file_written_by_hand_keeps_the_format_s_message() {
        let t = starter(&["beijing"], 1);
        let mut text = toml::to_string(&TopologyDoc::from(&t)).unwrap();
        text = text.replace("write_hold_ms = 2000", "write_hold_ms = \"5\"");
        let err = TopologyDoc::parse("t.toml", &text).unwrap_err().to_string();
        assert!(err.contains("write_hold_ms"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn the_first_of_duplicate_sites_keeps_its_unknown_fields() {
        let json = r#"{"sites": [
            {"name": "a", "router": "r:1", "postgres": "p", "zone": 1},
            {"name": "a", "router": "r:2", "postgres": "p", "zone": 2}]}"#;
        let doc: TopologyDoc = serde_json::from_str(json).unwrap();
        assert_eq!(doc.sites.len(), 2);
        assert_eq!(doc.extras.sites["a"]["zone"], 1);
    }
}
