//! `ezone lab up` / `status` / `down` end to end with the built binary:
//! `up` prints the lab's addresses and leaves real processes running after
//! it exits (with the starter topology in etcd and the WAN proxy in front of
//! each Postgres); a second `up` refuses; `down` stops everything, nothing is
//! left, and a second `down` is a no-op.
//!
//! Needs `cargo build -p ezone` first (see `ezone_tests::ezone_bin`).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use ezone_chaos::lab::{LabInfo, LabState};

use ezone_chaos::process::pid_alive;
use ezone_tests::ezone_bin;

/// Run `ezone ARGS...` to completion (at most 90 s).
async fn ezone(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(ezone_bin())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .unwrap_or_else(|_| panic!("`ezone {}` did not finish within 90s", args.join(" ")))
        .expect("run ezone")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `ezone lab down` on drop, so a failing test leaves no lab behind.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(ezone_bin())
            .args(["lab", "down", "--dir"])
            .arg(&self.0)
            .stdout(Stdio::null())
            .status();
    }
}

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("temp path is UTF-8")
}

#[tokio::test]
async fn lab_up_status_down_end_to_end() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lab");
    let _guard = DownOnDrop(dir.clone());
    let d = dir_arg(&dir);

    let out = ezone(&[
        "lab",
        "up",
        "--sites",
        "beijing,shanghai",
        "--dir",
        d,
        "--wan-rtt",
        "20ms",
    ])
    .await;
    assert!(
        out.status.success(),
        "lab up failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let info: LabInfo = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "lab up printed no LabInfo JSON ({e}): {}",
            text(&out.stdout)
        )
    });
    assert_eq!(info.etcd.len(), 1);
    assert_eq!(
        info.sites.keys().collect::<Vec<_>>(),
        ["beijing", "shanghai"]
    );
    assert!(info.sites["beijing"]
        .postgres
        .starts_with("host=127.0.0.1 port="));
    assert!(
        info.sites["beijing"]
            .postgres
            .contains(" user=postgres dbname=ezone sslmode=verify-full sslrootcert="),
        "{}",
        info.sites["beijing"].postgres
    );
    assert_eq!(
        info.wan.keys().collect::<Vec<_>>(),
        ["beijing->shanghai", "shanghai->beijing"]
    );

    // The processes outlive the command that started them.
    let state = LabState::load(&dir)
        .expect("read lab.json")
        .expect("lab.json exists");
    assert_eq!(state.info, info);
    assert_eq!(
        state.processes.len(),
        4,
        "proxy, 2 postmasters, 1 etcd: {:?}",
        state.processes
    );
    for p in &state.processes {
        assert!(
            p.record.is_alive(),
            "{} (pid {}) is not running",
            p.record.name,
            p.record.pid
        );
    }

    // The WAN link beijing->shanghai is beijing's Postgres.
    let beijing_port = info.sites["beijing"]
        .postgres
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .expect("port in dsn")
        .to_string();
    // Over TLS with the lab's client certificate, as every client of it.
    let wan = info.wan["beijing->shanghai"];
    let wan_dsn = info.sites["beijing"].postgres.replace(
        &format!("port={beijing_port}"),
        &format!("port={}", wan.port()),
    );
    let client = ezone_pg::connect_spawned(&wan_dsn)
        .await
        .expect("connect through the WAN link");
    let through_wan: String = client
        .query_one("SHOW port", &[])
        .await
        .expect("query through the WAN link")
        .get(0);
    assert_eq!(through_wan, beijing_port);

    // The starter topology was written into etcd.
    let keys = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &info.etcd[0],
            "get",
            "--prefix",
            "--keys-only",
            "/ezone/",
        ])
        .output()
        .await
        .expect("run etcdctl");
    assert!(
        text(&keys.stdout).contains("/ezone/shards/"),
        "no topology in etcd: {}{}",
        text(&keys.stdout),
        text(&keys.stderr)
    );

    // A second `up` on the same directory refuses and says how to stop.
    let again = ezone(&["lab", "up", "--dir", d]).await;
    assert!(!again.status.success(), "a second lab up must refuse");
    let err = text(&again.stderr);
    assert!(
        err.contains("already running") && err.contains("ezone lab down"),
        "{err}"
    );

    let status = ezone(&["lab", "status", "--dir", d]).await;
    assert!(status.status.success());
    assert_eq!(
        text(&status.stdout).matches(" running ").count(),
        4,
        "{}",
        text(&status.stdout)
    );

    // `down` stops everything and removes what `up` created.
    let down = ezone(&["lab", "down", "--dir", d]).await;
    assert!(
        down.status.success(),
        "lab down failed: {}",
        text(&down.stderr)
    );
    assert!(
        text(&down.stdout).contains("is down"),
        "{}",
        text(&down.stdout)
    );
    for p in &state.processes {
        assert!(
            !pid_alive(p.record.pid, p.record.start_time),
            "{} (pid {}) survived lab down",
            p.record.name,
            p.record.pid
        );
    }
    assert!(
        !dir.exists(),
        "{} still exists after lab down",
        dir.display()
    );

    // A second `down` has nothing to do.
    let down = ezone(&["lab", "down", "--dir", d]).await;
    assert!(down.status.success());
    assert!(
        text(&down.stdout).contains("nothing is running"),
        "{}",
        text(&down.stdout)
    );
}

#[tokio::test]
async fn lab_up_refuses_a_bad_spec_before_starting_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("lab");
    let _guard = DownOnDrop(dir.clone());
    let out = ezone(&["lab", "up", "--dir", dir_arg(&dir), "--etcd-members", "2"]).await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("etcd_members") && err.contains("use 1 or 3"),
        "{err}"
    );
    assert!(
        !dir.exists(),
        "a refused lab must not create {}",
        dir.display()
    );
}
