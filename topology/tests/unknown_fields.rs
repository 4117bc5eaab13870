//! Rolling upgrades: a topology written by a newer ezone, with fields this
//! version does not know, is read, and a read-modify-write keeps those
//! fields; a file an operator wrote by hand is still checked strictly.

use ezone_topology::doc::{decode_piece, encode_piece, load_file, load_stored_file, TopologyDoc};
use ezone_topology::starter::starter;
use ezone_topology::{RoutingTable, Settings, Shard, ShardState, Site, Topology};
use serde_json::{json, Value};

/// What a newer ezone might have written: a new field at every level.
fn newer_json() -> Value {
    json!({
        "format": 2,
        "regions": {"north": ["beijing"]},
        "sites": [
            {"name": "beijing", "router": "bj:8080", "upstreams": ["bj.app:9000"],
             "postgres": "host=bj", "zone": "north-1", "weight": 0.5, "note": null},
            {"name": "shanghai", "router": "sh:8080", "upstreams": [], "postgres": "host=sh"}
        ],
        "shards": [
            {"id": 1, "home": "beijing", "state": "active", "epoch": 3,
             "drain": {"since_ms": 1_700_000_000_000u64, "reason": "maintenance"},
             "labels": ["a", "b"]},
            {"id": 2, "home": "shanghai", "state": "active", "epoch": 1}
        ],
        "routing": {"cities": {"010": 1, "021": 2}, "user_shards": [1, 2],
                    "tenants": {"acme": 2}},
        "settings": {"default_site": null, "write_hold_ms": 2000, "fence_lease_ms": 10000,
                     "clock_skew_ms": 1000, "read_hold_ms": 500}
    })
}

/// The same in TOML (which has no null).
const NEWER_TOML: &str = r#"
format = 2

[regions]
north = ["beijing"]

[[sites]]
name = "beijing"
router = "bj:8080"
upstreams = ["bj.app:9000"]
postgres = "host=bj"
zone = "north-1"
weight = 0.5

[[sites]]
name = "shanghai"
router = "sh:8080"
upstreams = []
postgres = "host=sh"

[[shards]]
id = 1
home = "beijing"
state = "active"
epoch = 3
labels = ["a", "b"]

[shards.drain]
since_ms = 1700000000000
reason = "maintenance"

[[shards]]
id = 2
home = "shanghai"
state = "active"
epoch = 1

[routing]
user_shards = [1, 2]
tenants = { acme = 2 }

[routing.cities]
"010" = 1
"021" = 2

[settings]
write_hold_ms = 2000
fence_lease_ms = 10000
clock_skew_ms = 1000
read_hold_ms = 500
"#;

/// What the failover driver does: a new shard from a struct literal,
/// swapped in for the old one.
fn bump_epoch(t: &Topology, id: u32) -> Topology {
    let cur = &t.shards[&id];
    let next = Shard {
        id,
        home: cur.home.clone(),
        state: ShardState::Frozen,
        epoch: cur.epoch + 1,
    };
    let mut t = t.clone();
    t.shards.insert(id, next);
    t
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn unknown_fields_at_every_level_are_read_and_kept() {
    let text = serde_json::to_string_pretty(&newer_json()).unwrap();
    let t = TopologyDoc::parse_stored("t.json", &text)
        .unwrap()
        .into_topology()
        .unwrap();
    assert_eq!(t.sites.len(), 2);
    assert_eq!(t.shards[&1].epoch, 3);
    assert_eq!(t.routing.cities["021"], 2);
    assert_eq!(t.settings.write_hold_ms, 2000);
    let x = &t.extras;
    assert_eq!(x.root["format"], 2);
    assert_eq!(x.root["regions"], json!({"north": ["beijing"]}));
    assert_eq!(x.sites["beijing"]["zone"], "north-1");
    assert_eq!(x.sites["beijing"]["weight"], 0.5);
    assert_eq!(x.sites["beijing"]["note"], Value::Null);
    assert!(x.site("shanghai").is_none());
    assert_eq!(x.shards[&1]["labels"], json!(["a", "b"]));
    assert!(x.shard(2).is_none());
    assert_eq!(x.routing["tenants"], json!({"acme": 2}));
    assert_eq!(x.settings["read_hold_ms"], 500);
    // Nothing known leaks into the unknown.
    assert!(!x.shards[&1].contains_key("epoch"));

    // The TOML form reads the same.
    let dir = tempfile::tempdir().unwrap();
    let from_toml = load_stored_file(&write(&dir, "t.toml", NEWER_TOML)).unwrap();
    let mut no_null = t.clone();
    no_null
        .extras
        .sites
        .get_mut("beijing")
        .unwrap()
        .remove("note");
    assert_eq!(from_toml, no_null);
}

#[test]
fn a_json_read_modify_write_keeps_every_unknown_field() {
    let original = newer_json();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "t.json",
        &serde_json::to_string_pretty(&original).unwrap(),
    );
    let t = load_stored_file(&path).unwrap();
    let next = bump_epoch(&t, 1);
    // Saved as the file store saves it.
    let saved = serde_json::to_string_pretty(&TopologyDoc::from(&next)).unwrap();
    let mut want = original;
    want["shards"][0]["epoch"] = json!(4);
    want["shards"][0]["state"] = json!("frozen");
    assert_eq!(serde_json::from_str::<Value>(&saved).unwrap(), want);
    // And it reads back to the same topology.
    let back = TopologyDoc::parse_stored("t.json", &saved)
        .unwrap()
        .into_topology()
        .unwrap();
    assert_eq!(back, next);
}

#[test]
fn a_toml_read_modify_write_keeps_every_unknown_field() {
    let dir = tempfile::tempdir().unwrap();
    let t = load_stored_file(&write(&dir, "t.toml", NEWER_TOML)).unwrap();
    let next = bump_epoch(&t, 1);
    let saved = toml::to_string_pretty(&TopologyDoc::from(&next)).unwrap();
    let mut want: Value = toml::from_str(NEWER_TOML).unwrap();
    want["shards"][0]["epoch"] = json!(4);
    want["shards"][0]["state"] = json!("frozen");
    let got: Value = toml::from_str(&saved).unwrap();
    assert_eq!(got, want, "{saved}");
}

#[test]
fn an_etcd_shard_swap_keeps_the_shard_s_unknown_fields() {
    let stored = json!({"id": 1, "home": "beijing", "state": "active", "epoch": 3,
                        "drain": {"since_ms": 1_700_000_000_000u64}, "weight": 0.25});
    let bytes = serde_json::to_vec(&stored).unwrap();
    let (cur, extra): (Shard, _) = decode_piece(&bytes).unwrap();
    assert_eq!(cur.epoch, 3);
    assert_eq!(extra.len(), 2);
    let next = Shard {
        id: 1,
        home: "shanghai".into(),
        state: ShardState::Active,
        epoch: cur.epoch + 1,
    };
    let written = encode_piece(&next, Some(&extra)).unwrap();
    let mut want = stored;
    want["home"] = json!("shanghai");
    want["epoch"] = json!(4);
    assert_eq!(serde_json::from_slice::<Value>(&written).unwrap(), want);

    // Without unknown fields, a piece is written as before.
    let plain = encode_piece(&next, None).unwrap();
    assert_eq!(plain, serde_json::to_vec(&next).unwrap());

    // The other pieces.
    let (site, extra): (Site, _) =
        decode_piece(br#"{"name":"a","router":"r:1","postgres":"p","zone":"z"}"#).unwrap();
    assert_eq!(
        (site.name.as_str(), extra["zone"].as_str()),
        ("a", Some("z"))
    );
    let (routing, extra): (RoutingTable, _) =
        decode_piece(br#"{"cities":{"010":1},"user_shards":[1],"tenants":{}}"#).unwrap();
    assert_eq!((routing.user_shards, extra.len()), (vec![1], 1));
    let (settings, extra): (Settings, _) =
        decode_piece(br#"{"write_hold_ms":7,"read_hold_ms":5}"#).unwrap();
    assert_eq!((settings.write_hold_ms, extra.len()), (7, 1));
    // Still refused: a city mapped twice, a wrong type.
    assert!(decode_piece::<RoutingTable>(br#"{"cities":{"010":1,"010":2}}"#).is_err());
    assert!(decode_piece::<Shard>(br#"{"id":1,"home":"a","state":"gone","epoch":1}"#).is_err());
}

#[test]
fn a_shard_replaced_in_a_topology_keeps_its_unknown_fields() {
    let mut t = starter(&["beijing", "shanghai"], 1);
    let mut extra = ezone_topology::model::Extra::new();
    extra.insert("drain".into(), json!(true));
    t.extras.set_shard(1, extra.clone());
    let next = bump_epoch(&t, 1);
    assert_eq!(next.extras.shard(1), Some(&extra));
    // The topology's own serde keeps them too.
    let text = serde_json::to_string(&next).unwrap();
    assert_eq!(serde_json::from_str::<Topology>(&text).unwrap(), next);
    // And without any, the topology's JSON is as before.
    let plain = starter(&["beijing"], 1);
    assert!(!serde_json::to_string(&plain).unwrap().contains("extras"));
}

#[test]
fn topo_show_json_reads_back_with_its_unknown_fields() {
    let t = TopologyDoc::parse_stored("t.json", &newer_json().to_string())
        .unwrap()
        .into_topology()
        .unwrap();
    let shown = serde_json::to_string_pretty(&TopologyDoc::from(&t)).unwrap();
    let doc: TopologyDoc = serde_json::from_str(&shown).unwrap();
    assert_eq!(doc.into_topology().unwrap(), t);
}

#[test]
fn a_typo_in_a_file_written_by_hand_is_refused_by_name() {
    let text = r#"
[[sites]]
name = "beijing"
router = "10.0.1.10:8080"
upstream = ["10.0.1.21:9000"]
postgres = "host=10.0.1.30"

[[shards]]
id = 1
home = "beijing"
state = "active"
epoch = 1

[routing]
user_shards = [1]

[settings]
fence_lease = 0
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "t.toml", text);
    let err = load_file(&path).unwrap_err().to_string();
    assert!(
        err.contains(
            "unknown field \"upstream\" in site \"beijing\" (sites[0]): did you mean \"upstreams\"?"
        ),
        "{err}"
    );
    assert!(
        err.contains("unknown field \"fence_lease\" in settings: did you mean \"fence_lease_ms\"?"),
        "{err}"
    );
    // The tolerant reading would have taken it (and kept the typo).
    let t = load_stored_file(&path).unwrap();
    assert!(t.sites["beijing"].upstreams.is_empty());
    assert_eq!(
        t.extras.sites["beijing"]["upstream"],
        json!(["10.0.1.21:9000"])
    );

    // JSON, at the top level and in a shard.
    let json = r#"{"site": [], "shards": [{"id": 1, "home": "a", "state": "active", "epoch": 1, "epock": 2}]}"#;
    let err = TopologyDoc::parse("t.json", json).unwrap_err().to_string();
    assert!(
        err.contains("unknown field \"site\" at the top level: did you mean \"sites\"?"),
        "{err}"
    );
    assert!(
        err.contains("unknown field \"epock\" in shard 1 (shards[0]): did you mean \"epoch\"?"),
        "{err}"
    );
}

#[test]
fn a_newer_ezone_s_file_given_to_topo_init_is_refused_with_a_reason() {
    let err = TopologyDoc::parse("t.json", &newer_json().to_string())
        .unwrap_err()
        .to_string();
    for key in [
        "format",
        "regions",
        "zone",
        "weight",
        "note",
        "drain",
        "labels",
        "tenants",
        "read_hold_ms",
    ] {
        assert!(
            err.contains(&format!("unknown field {key:?}")),
            "{key}: {err}"
        );
    }
    assert!(err.contains("known fields: name, router"), "{err}");
    assert!(
        err.contains("9 unknown fields (misspelt? or a field of a newer ezone"),
        "{err}"
    );
}

#[test]
fn files_written_by_hand_without_unknown_fields_load_as_before() {
    let t = starter(&["beijing", "shanghai"], 2);
    let dir = tempfile::tempdir().unwrap();
    let doc = TopologyDoc::from(&t);
    let toml_path = write(&dir, "t.toml", &toml::to_string_pretty(&doc).unwrap());
    assert_eq!(load_file(&toml_path).unwrap(), t);
    let json_path = write(&dir, "t.json", &serde_json::to_string(&doc).unwrap());
    assert_eq!(load_file(&json_path).unwrap(), t);
    assert!(load_stored_file(&json_path).unwrap().extras.is_empty());
}
#[tokio::test]
async fn a_file_store_swap_keeps_a_newer_writers_fields() {
    use ezone_topology::{FileStore, TopologyStore};
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "t.json",
        &serde_json::to_string_pretty(&newer_json()).unwrap(),
    );
    let store = FileStore::new(&path);
    let snap = store.load().await.unwrap();
    let cur = snap.topology.shards[&1].clone();
    let next = Shard {
        id: 1,
        home: "shanghai".into(),
        state: ShardState::Active,
        epoch: cur.epoch + 1,
    };
    store.cas_shard(cur.epoch, &next).await.unwrap();
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut want = newer_json();
    want["shards"][0]["home"] = json!("shanghai");
    want["shards"][0]["epoch"] = json!(4);
    assert_eq!(got, want);
}

#[test]
fn the_etcd_key_layout_round_trips_a_newer_writers_fields() {
    use ezone_topology::store::layout::Layout;
    let t = TopologyDoc::parse_stored("t.json", &newer_json().to_string())
        .unwrap()
        .into_topology()
        .unwrap();
    let l = Layout::new("/ezone");
    let raw: std::collections::BTreeMap<String, Vec<u8>> = l.encode(&t).into_iter().collect();
    let back = l.assemble("t", &raw).unwrap().unwrap();
    let mut no_root = t.clone();
    no_root.extras.root.clear();
    assert_eq!(back, no_root);
    let s1: Value = serde_json::from_slice(&raw["/ezone/shards/1"]).unwrap();
    assert_eq!(s1["labels"], json!(["a", "b"]));
}
