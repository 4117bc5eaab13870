//! No secret in any output, config or etcd: the whole system runs with
//! Postgres requiring a password (SCRAM over TLS) that each process reads
//! from a password file (the DSNs name the file), through traffic, a
//! planned switchover, a site's Postgres killed and back (so connection
//! errors are logged with their causes), and the operator commands an
//! operator runs (status, topology, history, conflicts, a dry run against
//! the dead site). Then every file under the lab (every log, every config,
//! the lab's state) but the password file itself, every command's output,
//! and every key and value in etcd are searched for the password: it must
//! appear nowhere. Not searched: the Postgres and etcd data directories
//! (Postgres keeps the password's SCRAM verifier, never the password; etcd's
//! keys are read through etcdctl instead).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ezone_chaos::ensemble::{Ensemble, EnsembleSpec, Part};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_tests::ezone_bin;
use ezone_tests::router::orders_through_every_router;

/// Runs `ezone ARGS --etcd ...`: its exit code, and its stdout and stderr
/// together (failures must not leak either).
async fn ezone(ens: &Ensemble, args: &[&str]) -> (i32, String) {
    let out = ezone_tests::ezone_against(
        &ens.etcd_cli_args(),
        args,
        "debug,h2=info,tower=info,hyper_util=info,tokio_postgres=info",
    )
    .await;
    let text = format!(
        "$ ezone {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Every file under `dir`, but the ones that hold the secret by design.
fn searched_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            // Postgres's and etcd's data directories.
            if name == "data" || name.ends_with(".etcd") || name == "member" {
                continue;
            }
            searched_files(&path, out);
        } else if kind.is_file() && name != "pgpass" {
            out.push(path);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_any_log_or_output() {
    let password = format!("ez-S3cr3t-{:016x}", rand_u64());
    let root = tempfile_dir();
    let lab = Lab::start(LabSpec {
        pg_password: Some(password.clone()),
        dir: Some(root.clone()),
        keep_files: true,
        ..LabSpec::default()
    })
    .await
    .expect("lab");
    let mut spec = EnsembleSpec::new(ezone_bin());
    // As talkative as an operator debugging would make it.
    spec.log_filter = "debug,h2=info,hyper=info,tower=info,tonic=info".to_string();
    let ens = Ensemble::start(lab, spec).await.expect("ensemble");
    let dsn = ens.dsn("beijing").expect("dsn");
    assert!(!dsn.contains(&password), "{dsn}");
    let passfile = dsn
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("passfile="))
        .expect("the DSNs name a password file");
    assert!(
        std::fs::read_to_string(passfile)
            .expect("the password file")
            .contains(&password),
        "the processes read the password from {passfile} (else this test proves nothing)"
    );
    let etcdctl = ens.lab().etcdctl_args();
    let mut outputs = String::new();

    // Traffic through both routers for a city of each site.
    orders_through_every_router(&ens, "secret").await;

    // A planned switchover and the operator's views.
    let store = ens.store().await.expect("store");
    use ezone_topology::TopologyStore;
    let t0 = store.load().await.expect("load").topology;
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = t0.routing.cities[&city].to_string();
    let (code, out) = ezone(&ens, &["failover", "shard", &shard, "--to", "shanghai"]).await;
    assert_eq!(code, 0, "{out}");
    outputs += &out;
    for args in [
        &["status"][..],
        &["topo", "show"],
        &["topo", "show", "--json"],
        &["failover", "history"],
        &["conflicts", "list", "--site", "shanghai"],
    ] {
        let (code, out) = ezone(&ens, args).await;
        assert_eq!(code, 0, "{out}");
        if args[0] == "topo" {
            assert!(out.contains("passfile="), "the DSN is shown: {out}");
        }
        outputs += &out;
    }

    // Shanghai's Postgres dies: connection errors everywhere, each logged
    // and printed with its cause.
    ens.kill("shanghai", Part::Postgres).expect("kill");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for args in [
        &["status"][..],
        &[
            "failover",
            "site",
            "beijing",
            "--to",
            "shanghai",
            "--dry-run",
        ],
        &["conflicts", "list", "--site", "shanghai"],
    ] {
        let (code, out) = ezone(&ens, args).await;
        // Each names the site it could not reach.
        assert!(
            out.contains("shanghai") && out.len() > args.join(" ").len() + 20,
            "exit {code}: {out}"
        );
        outputs += &out;
    }
    ens.restart("shanghai", Part::Postgres)
        .await
        .expect("restart");
    ens.wait_converged(Duration::from_secs(60))
        .await
        .expect("converged after the restart");
    outputs += &ezone(&ens, &["status"]).await.1;
    // Everything in etcd, read by etcd's own client.
    let dump = tokio::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(&etcdctl)
        .args(["get", "", "--prefix"])
        .output()
        .await
        .expect("etcdctl");
    assert!(dump.status.success(), "{dump:?}");
    let etcd_text = String::from_utf8_lossy(&dump.stdout).into_owned();
    assert!(
        etcd_text.contains("passfile="),
        "the topology's DSNs are in the dump: {etcd_text}"
    );
    ens.teardown().await.expect("teardown");

    eprintln!("{outputs}");
    // Every command's output, then every log file.
    let mut hits: Vec<String> = outputs
        .lines()
        .filter(|l| l.contains(&password))
        .map(|l| format!("command output: {l}"))
        .chain(
            etcd_text
                .lines()
                .filter(|l| l.contains(&password))
                .map(|l| format!("etcd: {l}")),
        )
        .collect();
    let mut files = Vec::new();
    searched_files(&root, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("replicator.log")),
        "the processes' logs are searched: {files:?}"
    );
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for l in text.lines().filter(|l| l.contains(&password)) {
            hits.push(format!("{}: {l}", f.display()));
        }
    }
    let searched = files.len();
    let _ = std::fs::remove_dir_all(&root);
    assert!(
        hits.is_empty(),
        "the password appears {} time(s) in {searched} files and the command outputs:\n{}",
        hits.len(),
        hits.join("\n")
    );
}

/// A fresh directory for the lab (kept after teardown for the search,
/// removed by the test).
fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ezone-secrets-{:016x}", rand_u64()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}
