//! `ezone topo` end to end: the real binary against a real etcd (and a file).

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ezone_chaos::etcd::EtcdCluster;
use ezone_tests::ezone_bin;
use ezone_topology::doc::TopologyDoc;
use ezone_topology::starter::starter;
use ezone_topology::{EtcdStore, ShardState, TopologyStore};

fn ezone(args: &[&str]) -> Output {
    Command::new(ezone_bin())
        .args(args)
        .env_remove("EZONE_ETCD")
        .output()
        .expect("run ezone")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write_starter(dir: &std::path::Path, name: &str) -> String {
    let doc = TopologyDoc::from(&starter(&["beijing", "shanghai"], 2));
    let path = dir.join(name);
    let body = if name.ends_with(".toml") {
        toml_text(&doc)
    } else {
        serde_json::to_string_pretty(&doc).expect("json")
    };
    std::fs::write(&path, body).expect("write");
    path.display().to_string()
}

fn toml_text(doc: &TopologyDoc) -> String {
    // Round-trip through JSON -> the binary validates TOML files itself; here we
    // only need a valid TOML rendering, which `ezone topo show --json` cannot give.
    let mut s = String::new();
    for site in &doc.sites {
        s.push_str(&format!(
            "[[sites]]\nname = {:?}\nrouter = {:?}\nupstreams = {:?}\npostgres = {:?}\n\n",
            site.name, site.router, site.upstreams, site.postgres
        ));
    }
    for shard in &doc.shards {
        s.push_str(&format!(
            "[[shards]]\nid = {}\nhome = {:?}\nstate = \"{}\"\nepoch = {}\n\n",
            shard.id, shard.home, shard.state, shard.epoch
        ));
    }
    s.push_str(&format!(
        "[routing]\nuser_shards = {:?}\n\n[routing.cities]\n",
        doc.routing.user_shards
    ));
    for (c, id) in &doc.routing.cities {
        s.push_str(&format!("{c:?} = {id}\n"));
    }
    s
}

#[test]
fn validate_says_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write_starter(dir.path(), "good.toml");
    let out = ezone(&["topo", "validate", &good]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("is valid"));

    let bad = dir.path().join("bad.toml");
    let body = std::fs::read_to_string(&good).expect("read").replacen(
        "home = \"beijing\"",
        "home = \"guangzhou\"",
        1,
    );
    std::fs::write(&bad, body).expect("write");
    let out = ezone(&["topo", "validate", &bad.display().to_string()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("guangzhou") && err.contains("not a site"),
        "{err}"
    );
}

#[test]
fn no_store_names_the_fix() {
    let out = ezone(&["topo", "show"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--etcd"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn file_store_show() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_starter(dir.path(), "t.json");
    let out = ezone(&["topo", "show", "--file", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.contains("SHARD") && table.contains("shanghai"),
        "{table}"
    );
}

#[tokio::test]
async fn init_show_and_watch_against_etcd() {
    let etcd = EtcdCluster::start(1).await.expect("etcd");
    let eps = etcd.client_urls().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_starter(dir.path(), "t.toml");

    let out = ezone(&["topo", "init", "--etcd", &eps, "-f", &file]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = ezone(&["topo", "init", "--etcd", &eps, "-f", &file]);
    assert!(!out.status.success(), "a second init must be refused");
    assert!(
        text(&out.stderr).contains("--force"),
        "{}",
        text(&out.stderr)
    );
    let out = ezone(&["topo", "init", "--etcd", &eps, "-f", &file, "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = ezone(&["topo", "show", "--etcd", &eps, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: TopologyDoc = serde_json::from_slice(&out.stdout).expect("show --json parses");
    assert_eq!(
        doc.into_topology().expect("valid"),
        starter(&["beijing", "shanghai"], 2)
    );
    let out = ezone(&["topo", "show", "--etcd", &eps]);
    let table = text(&out.stdout);
    assert!(
        table.contains("topology version") && table.contains("0755"),
        "{table}"
    );

    // watch prints the first version, then each change as it arrives.
    let mut watch = Command::new(ezone_bin())
        .args(["topo", "watch", "--etcd", &eps])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("first line");
    assert!(first.starts_with("version "), "{first}");

    let store = EtcdStore::connect(&etcd.client_urls(), "/ezone")
        .await
        .expect("connect");
    let mut s3 = store.load().await.expect("load").topology.shards[&3].clone();
    s3.state = ShardState::Frozen;
    s3.epoch += 1;
    let v = store.cas_shard(s3.epoch - 1, &s3).await.expect("cas");
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("change line");
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        line.contains(&format!("version {v}"))
            && line.contains("shard 3")
            && line.contains("frozen"),
        "{line}"
    );
}
