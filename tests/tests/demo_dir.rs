//! `ezone demo --dir DIR` end to end with the built binary: while it runs,
//! `DIR/lab.json` records the demo and every process it started, which
//! `ezone lab status` lists and `ezone lab down` stops (also after the demo
//! was killed with SIGKILL, and while it waits under `--keep`); whatever way
//! it ends, the logs and data stay in DIR and nothing keeps running; a
//! second demo on the same DIR is refused with what to do.
//!
//! Needs `cargo build -p ezone` first (see `ezone_tests::ezone_bin`), etcd
//! and Postgres 15.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ezone_chaos::lab::{LabState, Role};
use ezone_tests::{eventually, ezone_bin};
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a demo may take to come up (and a short one to finish).
const DEMO_TIMEOUT: Duration = Duration::from_secs(180);
/// The shortest demo: one round, one second of traffic between steps.
const SHORT: &[&str] = &["--rounds", "1", "--pause", "1s", "--rate", "50"];

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn dir_arg(dir: &Path) -> &str {
    dir.to_str().expect("temp path is UTF-8")
}

/// Run `ezone ARGS...` to completion.
async fn ezone(args: &[&str], within: Duration) -> Output {
    let run = tokio::process::Command::new(ezone_bin())
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(within, run)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`ezone {}` did not finish within {within:?}",
                args.join(" ")
            )
        })
        .expect("run ezone")
}

/// Runs `ezone lab down` on drop, so a failing test leaves nothing running.
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

/// A demo running in the background (SIGKILLed when dropped), its stdout
/// collected as it comes, its stderr in a file.
struct Demo {
    child: tokio::process::Child,
    out: Arc<Mutex<String>>,
    stderr: PathBuf,
}

impl Demo {
    fn start(dir: &Path, extra: &[&str]) -> Demo {
        let stderr = dir.with_extension("stderr");
        let mut child = tokio::process::Command::new(ezone_bin())
            .args(["demo", "--dir", dir_arg(dir)])
            .args(SHORT)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ezone demo");
        let out: Arc<Mutex<String>> = Arc::default();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&out);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut s = sink.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Demo { child, out, stderr }
    }

    fn output(&self) -> String {
        self.out.lock().expect("lock").clone()
    }

    /// What it printed so far, both streams, for a failure message.
    fn printed(&self) -> String {
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        format!("stdout:\n{}\nstderr:\n{err}", self.output())
    }

    /// Wait until its stdout holds `needle` (panics if it exits first).
    async fn wait_for(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + DEMO_TIMEOUT;
        loop {
            if self.output().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the demo exited ({status}) before printing {needle:?}\n{}",
                    self.printed()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the demo did not print {needle:?} within {DEMO_TIMEOUT:?}\n{}",
                self.printed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the demo runs")
    }
}

/// `lab.json` as the demo wrote it once everything was up: the demo first,
/// then each site's router, order service and replicator, both
/// postmasters and etcd, all running.
fn recorded(dir: &Path, demo_pid: u32) -> LabState {
    let state = LabState::load(dir)
        .expect("read lab.json")
        .expect("the running demo records lab.json");
    assert!(state.keep_files, "a demo keeps its files");
    assert!(state.entries.is_empty(), "nothing for `down` to remove");
    let mut roles: Vec<(Role, Option<&str>)> = state
        .processes
        .iter()
        .map(|p| (p.role, p.site.as_deref()))
        .collect();
    assert_eq!(roles.remove(0), (Role::Demo, None), "the demo is first");
    assert_eq!(state.processes[0].record.pid, demo_pid);
    for site in ["beijing", "shanghai"] {
        for role in [Role::Router, Role::Orders, Role::Replicator, Role::Postgres] {
            assert!(
                roles.contains(&(role, Some(site))),
                "no {role:?} of {site} in {roles:?}"
            );
        }
    }
    assert!(roles.contains(&(Role::Etcd, None)), "no etcd in {roles:?}");
    assert_eq!(roles.len(), 9, "{roles:?}");
    for p in &state.processes {
        assert!(
            p.record.is_alive(),
            "{} (pid {}) is not running",
            p.record.name,
            p.record.pid
        );
    }
    state
}

/// Every recorded process is gone (zombies count as gone).
async fn assert_all_gone(state: &LabState) {
    eventually(
        "every recorded process gone",
        Duration::from_secs(15),
        || async {
            let alive: Vec<String> = state
                .alive()
                .iter()
                .map(|p| format!("{} (pid {})", p.record.name, p.record.pid))
                .collect();
            alive.is_empty().then_some(())
        },
    )
    .await;
}

/// The logs (and data) the demo leaves behind.
fn assert_files_kept(dir: &Path) {
    for f in [
        "ensemble/beijing/router.log",
        "ensemble/beijing/orders.log",
        "ensemble/shanghai/replicator.log",
        "ensemble/shanghai/router.toml",
        "pg-beijing/postgres.log",
        "pg-shanghai/postgres.log",
        "etcd/etcd0/etcd.log",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{f} was not kept in {}",
            dir.display()
        );
    }
    for d in ["pg-beijing/data", "etcd/etcd0/data"] {
        assert!(dir.join(d).is_dir(), "{d} was not kept");
    }
}

/// `lab status` lists what `lab.json` records, all running.
async fn assert_status_lists(dir: &Path, state: &LabState) {
    let out = ezone(
        &["lab", "status", "--dir", dir_arg(dir), "--json"],
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "lab status: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("lab status --json ({e}): {}", text(&out.stdout)));
    let listed = v["processes"].as_array().expect("a process list");
    assert_eq!(listed.len(), state.processes.len(), "{v}");
    for (p, l) in state.processes.iter().zip(listed) {
        assert_eq!(l["pid"], p.record.pid, "{l}");
        assert_eq!(l["running"], true, "{l}");
    }
    assert_eq!(listed[0]["role"], "demo");

    let out = ezone(
        &["lab", "status", "--dir", dir_arg(dir)],
        Duration::from_secs(30),
    )
    .await;
    let shown = text(&out.stdout);
    for name in [
        "ezone demo",
        "router beijing",
        "replicator shanghai",
        "etcd member",
    ] {
        assert!(
            shown.contains(name),
            "lab status does not list {name}:\n{shown}"
        );
    }
}

/// `lab down` on a directory with no lab.json: nothing running.
async fn assert_nothing_recorded(dir: &Path) {
    let out = ezone(
        &["lab", "down", "--dir", dir_arg(dir)],
        Duration::from_secs(30),
    )
    .await;
    assert!(out.status.success(), "lab down: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("nothing is running"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn a_killed_demo_is_stopped_by_lab_down_and_keeps_its_logs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let _down = DownOnDrop(dir.clone());
    // `--keep`: it still runs whenever the test gets to kill it.
    let mut demo = Demo::start(&dir, &["--keep"]);
    demo.wait_for("(up in").await;
    let state = recorded(&dir, demo.pid());
    assert_status_lists(&dir, &state).await;

    demo.child.start_kill().expect("SIGKILL the demo");
    let status = demo.child.wait().await.expect("reap the demo");
    assert!(!status.success(), "SIGKILLed: {status}");

    let out = ezone(
        &["lab", "down", "--dir", dir_arg(&dir)],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        out.status.success(),
        "lab down failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(said.contains("router beijing"), "{said}");
    assert!(said.contains("kept in"), "{said}");
    assert_all_gone(&state).await;
    assert!(!LabState::path(&dir).exists(), "lab.json removed");
    assert_files_kept(&dir);
    assert_nothing_recorded(&dir).await;
    assert_files_kept(&dir);
}

#[tokio::test]
async fn a_finished_demo_keeps_its_logs_and_a_second_one_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let _down = DownOnDrop(dir.clone());
    let mut args = vec!["demo", "--dir", dir_arg(&dir)];
    args.extend(SHORT);
    let out = ezone(&args, DEMO_TIMEOUT).await;
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(stdout.contains("demo OK"), "{stdout}");
    // The closing lines say where the logs are.
    let tail: Vec<&str> = stdout.lines().rev().take(20).collect();
    let postgres_log = dir.join("pg-beijing/postgres.log");
    assert!(
        tail.iter()
            .any(|l| l.contains(postgres_log.to_str().expect("UTF-8"))),
        "the last lines do not name {}:\n{stdout}",
        postgres_log.display()
    );
    assert!(
        !LabState::path(&dir).exists(),
        "lab.json removed at the end"
    );
    assert_files_kept(&dir);
    assert_nothing_recorded(&dir).await;
    assert_files_kept(&dir);

    let again = ezone(&args, Duration::from_secs(60)).await;
    assert!(
        !again.status.success(),
        "a second demo on the same dir must fail"
    );
    let err = text(&again.stderr);
    assert!(err.contains("not empty"), "{err}");
    assert!(err.contains("pick another --dir"), "{err}");
    assert!(err.contains(dir_arg(&dir)), "{err}");
    assert_files_kept(&dir);
}

#[tokio::test]
async fn lab_down_stops_a_demo_kept_running() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let _down = DownOnDrop(dir.clone());
    let mut demo = Demo::start(&dir, &["--keep"]);
    demo.wait_for("everything is still running").await;
    let state = recorded(&dir, demo.pid());

    // The demo is stopped first (SIGTERM) and stops the rest itself.
    let out = ezone(
        &["lab", "down", "--dir", dir_arg(&dir)],
        Duration::from_secs(60),
    )
    .await;
    assert!(
        out.status.success(),
        "lab down failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("ezone demo: stopped"),
        "{}",
        text(&out.stdout)
    );
    let status = tokio::time::timeout(Duration::from_secs(30), demo.child.wait())
        .await
        .expect("the demo exits")
        .expect("reap the demo");
    // Give the reader the last lines.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(status.success(), "{status}\n{}", demo.printed());
    assert!(demo.output().contains("demo OK"), "{}", demo.printed());
    assert_all_gone(&state).await;
    assert!(!LabState::path(&dir).exists(), "lab.json removed");
    assert_files_kept(&dir);
    assert_nothing_recorded(&dir).await;
}
