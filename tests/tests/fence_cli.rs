//! `ezone fence install` and `ezone fence sync` end to end on a real Postgres.

use std::process::Command;

use ezone_chaos::postgres::PgCluster;
use ezone_tests::ezone_bin;
use ezone_topology::doc::TopologyDoc;
use ezone_topology::starter::starter;

#[tokio::test]
async fn install_then_sync_refuses_foreign_writes() {
    let pg = PgCluster::start("beijing").await.expect("pg");
    pg.psql("CREATE TABLE orders (id bigint PRIMARY KEY, city text NOT NULL)")
        .await
        .expect("table");
    let dsn = pg.dsn("ezone");
    let out = Command::new(ezone_bin())
        .args([
            "fence",
            "install",
            "--dsn",
            &dsn,
            "--table",
            "public.orders",
            "--column",
            "city",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("topology.json");
    let doc = TopologyDoc::from(&starter(&["beijing", "shanghai"], 2));
    std::fs::write(&file, serde_json::to_string(&doc).expect("json")).expect("write");
    let out = Command::new(ezone_bin())
        .args([
            "fence", "sync", "--dsn", &dsn, "--site", "beijing", "--file",
        ])
        .arg(&file)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.psql("INSERT INTO orders VALUES (1, '010')")
        .await
        .expect("beijing's own shard");
    let err = pg
        .psql("INSERT INTO orders VALUES (2, '021')")
        .await
        .expect_err("shanghai's shard is fenced here");
    let msg = format!("{err:?}");
    assert!(msg.contains("not writable at this site"), "{msg}");
    assert_eq!(
        pg.psql("SELECT count(*) FROM orders").await.expect("count"),
        "1"
    );
}
