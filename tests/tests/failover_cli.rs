//! The operator's side of `ezone failover` and `ezone status` end to end on
//! the whole system (etcd, two Postgres sites, routers, replicators: one
//! ensemble shared by the checks): `failover history`, the forced
//! failover's confirmation, `--dry-run` against an unreachable site,
//! `status --watch`, a forced failover closed with `close-forced` (and its
//! refusals); and `fence install` keeping a DSN's password out of its
//! errors.

use std::process::Stdio;
use std::time::Duration;

use ezone_chaos::ensemble::{Ensemble, EnsembleSpec, Part};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_tests::ezone_bin;
use ezone_topology::TopologyStore;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `ezone ARGS --etcd ...` with stdin not a terminal.
async fn ezone(ens: &Ensemble, args: &[&str]) -> Out {
    let out = ezone_tests::ezone_against(&ens.etcd_cli_args(), args, "warn").await;
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_close_forced_confirmation_dry_run_and_watch() {
    let lab = Lab::start(LabSpec::default()).await.expect("lab");
    let ens = Ensemble::start(lab, EnsembleSpec::new(ezone_bin()))
        .await
        .expect("ensemble");
    let store = ens.store().await.expect("store");
    let t0 = store.load().await.expect("load").topology;

    // Nothing forced yet: nothing to close.
    let o = ezone(&ens, &["failover", "close-forced", "beijing"]).await;
    assert_ne!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("no forced failover of beijing"),
        "{}",
        o.stderr
    );

    // --force from a script without --yes: refused, nothing changed.
    let o = ezone(
        &ens,
        &["failover", "site", "beijing", "--to", "shanghai", "--force"],
    )
    .await;
    assert_ne!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr.contains("--yes") && o.stderr.contains("nothing changed"),
        "{}",
        o.stderr
    );
    assert_eq!(store.load().await.expect("load").topology, t0);
    assert!(store
        .read_op("forced/beijing")
        .await
        .expect("read")
        .is_none());

    // A planned switchover, then the history lists it with its steps.
    let city = ens.city_homed_at("beijing").expect("a beijing city");
    let shard = t0.routing.cities[&city];
    let s = shard.to_string();
    let o = ezone(&ens, &["failover", "shard", &s, "--to", "shanghai"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = ezone(&ens, &["failover", "history", "--json", "--limit", "5"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let ops: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    let op = ops
        .as_array()
        .expect("array")
        .iter()
        .find(|op| op["shards"] == serde_json::json!([shard]))
        .unwrap_or_else(|| panic!("shard {shard} in {ops:#}"));
    assert_eq!(op["kind"], "planned", "{op:#}");
    assert_eq!(op["from"], "beijing", "{op:#}");
    assert_eq!(op["to"], "shanghai", "{op:#}");
    assert_eq!(op["outcome"], "done", "{op:#}");
    assert!(op["hold_ms"].as_u64().is_some(), "{op:#}");
    let steps: Vec<&str> = op["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        steps,
        [
            "start",
            "frozen",
            "fenced",
            "catching_up",
            "opening",
            "flipping",
            "done"
        ],
        "{op:#}"
    );
    assert!(
        op["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["took_ms"].is_u64()),
        "every step's duration is recorded: {op:#}"
    );
    let o = ezone(&ens, &["failover", "history"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains(&format!(
            "planned  shard {shard}  beijing -> shanghai  done"
        )),
        "{}",
        o.stdout
    );

    // --dry-run with shanghai's Postgres unreachable (a DSN with a password
    // that must never be printed): planned, it fails naming the site and
    // why; forced away from shanghai, an unreachable lost site is the case
    // a forced failover is for, so it succeeds and says so; forced *to*
    // shanghai, the survivor must answer.
    const DEAD: &str =
        "shanghai=host=127.0.0.1 port=1 user=ezone dbname=ezone password=sekrit connect_timeout=2";
    let cases: [(&[&str], bool, &[&str]); 3] = [
        (
            &["shanghai", "--to", "beijing"],
            false,
            &[
                "shanghai: Postgres NOT reachable",
                "unreachable: shanghai (",
            ],
        ),
        (
            &["shanghai", "--to", "beijing", "--force"],
            true,
            &["shanghai: unreachable, as a lost site may be"],
        ),
        (
            &["beijing", "--to", "shanghai", "--force"],
            false,
            &["shanghai must be reachable to take the shards"],
        ),
    ];
    for (args, ok, said) in cases {
        let mut argv = vec!["failover", "site"];
        argv.extend_from_slice(args);
        argv.extend_from_slice(&["--dry-run", "--dsn", DEAD]);
        let o = ezone(&ens, &argv).await;
        assert_eq!(o.code == 0, ok, "{argv:?}: {}", o.stderr);
        for line in said.iter().chain(&["dry run: nothing changed"]) {
            assert!(
                o.stderr.contains(line),
                "{argv:?}: {line:?} in {}",
                o.stderr
            );
        }
        assert!(!o.stderr.contains("sekrit"), "{}", o.stderr);
    }

    // status: lag in seconds beside the bytes.
    let o = ezone(&ens, &["status", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    for site in v["sites"].as_array().expect("sites") {
        let link = &site["links"][0];
        assert!(link["lag_seconds"].is_f64(), "{site:#}");
    }

    // status --watch, not on a terminal: a separator and the whole view each
    // interval; Ctrl-C ends it cleanly.
    let admin = ens.router_admin("beijing").expect("admin").to_string();
    let child = tokio::process::Command::new(ezone_bin())
        .args(["status", "--watch", "--interval", "1s", "--router-admin"])
        .arg(format!("beijing={admin}"))
        .args(ens.etcd_cli_args())
        .env("EZONE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn status --watch");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().expect("pid") as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits after Ctrl-C")
        .expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = stdout.lines().filter(|l| l.starts_with("--- ")).count();
    assert!(frames >= 2, "{frames} frames: {stdout}");
    assert!(!stdout.contains('\x1b'), "no ANSI when not a terminal");
    assert_eq!(
        stdout.matches("switchovers in progress: none").count(),
        frames,
        "{stdout}"
    );
    assert!(stdout.contains("router ready"), "{stdout}");

    // A forced failover with --yes; its record stays open (status shows
    // it) until close-forced, which refuses while beijing cannot be
    // reached (its conflicts cannot be counted) and closes it once it is
    // back with none pending. The site-level steps are not "shard 0".
    ens.kill("beijing", Part::Postgres).expect("kill");
    let o = ezone(
        &ens,
        &[
            "failover", "site", "beijing", "--to", "shanghai", "--force", "--yes",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("beijing -> shanghai:   ok open shanghai's fence")
            && !o.stderr.contains("shard 0"),
        "{}",
        o.stderr
    );
    let o = ezone(&ens, &["failover", "close-forced", "beijing"]).await;
    assert_ne!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stderr
            .contains("the conflicts at beijing cannot be counted")
            && o.stderr.contains("nothing closed"),
        "{}",
        o.stderr
    );
    let o = ezone(&ens, &["status"]).await;
    assert!(o.stdout.contains("close-forced beijing"), "{}", o.stdout);
    ens.restart("beijing", Part::Postgres)
        .await
        .expect("restart");
    let o = ezone(&ens, &["failover", "close-forced", "beijing"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = ezone(&ens, &["status"]).await;
    assert!(!o.stdout.contains("forced failover"), "{}", o.stdout);
    let o = ezone(&ens, &["failover", "history", "--limit", "1"]).await;
    assert!(
        o.stdout.contains("FORCED   site beijing") && o.stdout.contains("    closed "),
        "{}",
        o.stdout
    );
    ens.teardown().await.expect("teardown");
}

#[test]
fn fence_install_errors_carry_no_password() {
    for dsn in [
        "host=127.0.0.1 port=1 user=ezone password=sekrit dbname=ezone connect_timeout=2",
        "postgres://ezone:sekrit@127.0.0.1:1/ezone?connect_timeout=2",
    ] {
        let out = std::process::Command::new(ezone_bin())
            .args([
                "fence",
                "install",
                "--dsn",
                dsn,
                "--table",
                "public.orders",
                "--column",
                "city",
            ])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("connecting to"), "{err}");
        assert!(!err.contains("sekrit"), "{err}");
        assert!(err.contains("***"), "{err}");
    }
}
