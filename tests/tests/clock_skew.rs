//! The `clock-skew` fault's mechanism end to end (chaos/src/clock.rs): a lab
//! started with clock skew on runs its Postgres under libfaketime, reading
//! the site's offset file; changing the offset moves `SELECT now()` at that
//! site by as much, at run time, and back at `+0`. A process started the way
//! the ensemble starts the site's order service, router and replicator
//! (`SiteClock::apply` on its `ProcessSpec`) sees the same wall clock, while
//! its monotonic clock does not jump.
//!
//! Needs libfaketime (`apt-get install faketime libfaketime`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ezone_chaos::clock::{self, SiteClock};
use ezone_chaos::lab::{Lab, LabSpec};
use ezone_chaos::postgres::PgCluster;
use ezone_chaos::process::{ChildProcess, ProcessSpec};
use ezone_tests::eventually;

/// Set in the probe child (this test binary, run again): see [`clock_probe`].
const PROBE_ENV: &str = "EZONE_CLOCK_PROBE";
/// How far a measured skew may be from the offset (psql's start-up, the
/// probe's 100 ms period, a busy machine).
const TOLERANCE_MS: i64 = 400;
/// How long a new offset may take to show (libfaketime re-reads its file at
/// most once a second, [`clock::APPLY_WITHIN`]), with slack for a busy
/// machine.
const SHOWS_WITHIN: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// `now()` at the site's Postgres minus the test's clock (at the midpoint of
/// the query), in ms.
async fn pg_skew(pg: &PgCluster) -> i64 {
    let before = now_ms();
    let out = pg
        .psql("SELECT (extract(epoch FROM now()) * 1000)::bigint")
        .await
        .expect("SELECT now()");
    let after = now_ms();
    let db: i64 = out.trim().parse().expect("a number of ms");
    db - (before + after) / 2
}

/// The probe's last line: (its wall clock, its monotonic ms since start).
fn probe_last(out: &Path) -> Option<(i64, i64)> {
    let text = std::fs::read_to_string(out).ok()?;
    // Complete lines only: the probe may be writing the next one.
    let complete = &text[..text.rfind('\n')?];
    let line = complete.lines().rev().find(|l| l.starts_with("probe "))?;
    let mut f = line.split_whitespace().skip(1);
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Every monotonic reading the probe printed.
fn probe_monotonic(out: &Path) -> Vec<i64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect()
}

/// The probe's wall clock minus the test's, in ms (its last line is at most
/// one period old).
fn probe_skew(out: &Path) -> Option<i64> {
    let (wall, _) = probe_last(out)?;
    Some(wall - now_ms())
}

/// Waits until both the site's Postgres and the probe read `offset_ms` off
/// the test's clock.
async fn both_show(pg: &PgCluster, out: &Path, offset_ms: i64) {
    let pg_seen = eventually(
        &format!("Postgres's now() to be {offset_ms} ms off"),
        SHOWS_WITHIN,
        || async {
            let s = pg_skew(pg).await;
            ((s - offset_ms).abs() <= TOLERANCE_MS).then_some(s)
        },
    )
    .await;
    let probe_seen = eventually(
        &format!("the probe's wall clock to be {offset_ms} ms off"),
        SHOWS_WITHIN,
        || async { probe_skew(out).filter(|s| (s - offset_ms).abs() <= TOLERANCE_MS) },
    )
    .await;
    eprintln!("offset {offset_ms} ms: Postgres {pg_seen} ms, probe {probe_seen} ms");
}

#[tokio::test]
async fn site_offset_moves_postgres_and_site_processes_wall_clock() {
    assert!(
        !LabSpec::default().clock_skew,
        "clock skew must be opt-in: no other lab may run under libfaketime"
    );
    let mut spec = LabSpec::new(&["beijing"]);
    spec.clock_skew = true;
    let lab = Lab::start(spec).await.expect("lab with clock skew");
    let clock: SiteClock = lab.clock("beijing").expect("beijing's clock").clone();
    assert_eq!(clock.file(), lab.dir().join("clock-beijing"));
    assert_eq!(clock.offset().expect("read back"), 0);
    assert!(lab.clock("shanghai").is_err(), "no such site");
    let pg = lab.postgres("beijing").expect("beijing's Postgres");

    // A long-running process started as the ensemble starts a site's
    // processes (`Service::spawn`: a ProcessSpec, the site clock applied,
    // `ChildProcess::spawn`): this test binary again, running the probe.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("probe.out");
    let probe_spec = ProcessSpec::new(
        "clock probe",
        std::env::current_exe().expect("test binary"),
        dir.path(),
        "probe.log",
    )
    .args(["--exact", "clock_probe", "--ignored", "--nocapture"])
    .args(["--test-threads", "1"])
    .env(PROBE_ENV, "1")
    .stdout_file(out.clone());
    let probe = ChildProcess::spawn(probe_spec.clock(Some(&clock))).expect("spawn the probe");
    eventually("the probe's first line", SHOWS_WITHIN, || async {
        probe_last(&out)
    })
    .await;

    both_show(pg, &out, 0).await;

    clock.set_offset(5_000).expect("skew +5 s");
    assert_eq!(clock.offset().expect("read back"), 5_000);
    assert_eq!(
        std::fs::read_to_string(clock.file()).expect("offset file"),
        "+5.000\n"
    );
    both_show(pg, &out, 5_000).await;

    clock.set_offset(-3_000).expect("skew -3 s");
    both_show(pg, &out, -3_000).await;

    clock.reset().expect("back to +0");
    assert_eq!(clock.offset().expect("read back"), 0);
    both_show(pg, &out, 0).await;

    // The monotonic clock never jumped: the probe's readings only move
    // forward, one period at a time (the wall clock went +5 s, then -8 s).
    let mono = probe_monotonic(&out);
    assert!(mono.len() > 10, "too few probe lines: {mono:?}");
    for w in mono.windows(2) {
        let step = w[1] - w[0];
        assert!(
            (0..2_000).contains(&step),
            "the probe's monotonic clock jumped by {step} ms: {mono:?}"
        );
    }

    // Killed (no destructor runs): libfaketime's /dev/shm leftovers for its
    // pid are removed by the lab.
    let pid = probe.pid();
    probe.kill().expect("kill the probe");
    for name in [
        format!("/dev/shm/sem.faketime_sem_{pid}"),
        format!("/dev/shm/faketime_shm_{pid}"),
    ] {
        assert!(!Path::new(&name).exists(), "{name} left behind");
    }
    drop(probe);

    let lab_dir = lab.dir().to_path_buf();
    lab.teardown().await.expect("teardown");
    assert!(!lab_dir.join("clock-beijing").exists());
}

/// The child of the test above: prints its wall clock (ms since the epoch)
/// and its monotonic ms since start every 100 ms, for at most a minute.
/// Does nothing when run as a test of its own.
#[test]
#[ignore = "a child process of site_offset_moves_postgres_and_site_processes_wall_clock"]
fn clock_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        println!("probe {} {}", now_ms(), start.elapsed().as_millis());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_library_is_installed() {
    let lib = clock::find_libfaketime().unwrap_or_else(|e| panic!("{e}"));
    assert!(lib.is_file(), "{}", lib.display());
}
