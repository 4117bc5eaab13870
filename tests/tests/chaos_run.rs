//! `ezone chaos run` end to end: the whole system under seeded fault
//! schedules, with traffic, judged from the sites' data. The quick profile:
//! three fixed seeds that between them draw every fault kind (at 60 s and
//! an 8 s quiet period: checked by `the_fixed_seeds_draw_every_kind`), and
//! one seed drawn per run and printed (`EZONE_CHAOS_SEED` pins it). Each
//! run also writes large transactions, streamed before their commit, and
//! must have committed some. A
//! failure prints the run's report, whose last line is the replay command.
//! Many seeds, longer: `make chaos-long` (`ezone chaos sweep`).

use std::collections::BTreeSet;
use std::process::Command;

use ezone_tests::ezone_bin;

const DURATION: &str = "60s";
const QUIET: &str = "8s";
/// Between them these draw every fault kind (see the test below).
const FIXED_SEEDS: [u64; 3] = [1, 2, 5];

fn run(seed: u64, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("report dir");
    let out = Command::new(ezone_bin())
        .args(["chaos", "run", "--seed", &seed.to_string()])
        .args(["--duration", DURATION, "--quiet", QUIET, "--rate", "60"])
        .args(extra)
        .arg("--report")
        .arg(dir.path())
        .env("EZONE_LOG", "warn")
        .output()
        .expect("run ezone chaos run");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The report: a history line per request, the verdict, the picture.
    let history = std::fs::read_to_string(dir.path().join("history.jsonl")).unwrap_or_default();
    assert!(
        history.lines().count() > 100,
        "seed {seed}: a history was written\n{text}"
    );
    for line in history.lines().take(5) {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(
            v["invoke_ms"].is_number() && v["status"].is_number(),
            "{line}"
        );
    }
    let svg = std::fs::read_to_string(dir.path().join("timeline.svg")).unwrap_or_default();
    assert!(svg.contains("<svg"), "seed {seed}: a timeline was drawn");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json")).unwrap_or_default(),
    )
    .expect("summary.json");
    assert_eq!(summary["seed"], seed);
    (out.status.success(), text)
}

fn assert_ok(seed: u64) {
    assert_ok_with(seed, &[]);
}

fn assert_ok_with(seed: u64, extra: &[&str]) {
    let (ok, text) = run(seed, extra);
    assert!(
        ok && text.contains("run verdict: OK"),
        "seed {seed}:\n{text}"
    );
    assert!(text.contains("replay: ezone chaos run --seed"), "{text}");
    let replay = text
        .lines()
        .find(|l| l.starts_with("replay: "))
        .unwrap_or_default();
    assert!(
        replay.ends_with(&extra.join(" ")),
        "the replay line repeats {extra:?}: {replay}"
    );
    // Large transactions were streamed under the faults, not only planned.
    let committed = text
        .lines()
        .find_map(|l| l.strip_prefix("large transactions ("))
        .and_then(|l| l.split("): ").nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse::<u32>().ok());
    assert!(
        committed.is_some_and(|n| n > 0),
        "seed {seed}: no large transaction committed during the run\n{text}"
    );
}

#[test]
fn seed_1_keeps_every_invariant() {
    assert_ok(FIXED_SEEDS[0]);
}

#[test]
fn seed_2_keeps_every_invariant() {
    assert_ok(FIXED_SEEDS[1]);
}

/// With four apply lanes on every link, under kills, partitions and
/// failovers: a backlog (after a partition, a killed replicator) drains
/// over several lanes, commits in source order. The default, `auto`, keeps
/// one lane on this lab's targets, each beside its replicator.
#[test]
fn seed_5_keeps_every_invariant_on_four_lanes() {
    assert_ok_with(FIXED_SEEDS[2], &["--apply-workers", "4"]);
}

/// A new seed every run: over many CI runs the quick profile explores
/// schedules nobody picked. The seed is printed (and in the failure).
#[test]
fn a_seed_drawn_for_this_run_keeps_every_invariant() {
    let seed = match std::env::var("EZONE_CHAOS_SEED") {
        Ok(s) => s.parse().expect("EZONE_CHAOS_SEED is a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            // Away from the fixed seeds' small numbers.
            1_000 + (nanos % 1_000_000) as u64
        }
    };
    eprintln!("chaos seed drawn for this run: {seed} (EZONE_CHAOS_SEED={seed} replays it)");
    assert_ok(seed);
}

#[test]
fn the_fixed_seeds_draw_every_kind() {
    let mut seen = BTreeSet::new();
    let mut all = BTreeSet::new();
    for seed in FIXED_SEEDS {
        let out = Command::new(ezone_bin())
            .args(["chaos", "schedule", "--seed", &seed.to_string()])
            .args(["--duration", DURATION, "--quiet", QUIET])
            .output()
            .expect("ezone chaos schedule");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let head = lines.next().unwrap_or_default();
        let kinds = head.split(" kinds ").nth(1).unwrap_or_default();
        all.extend(kinds.split(',').map(str::to_string));
        for l in lines {
            for k in &all {
                if l.split_whitespace().any(|w| w == k) {
                    seen.insert(k.clone());
                }
            }
        }
    }
    let missing: Vec<&String> = all.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "never drawn by {FIXED_SEEDS:?}: {missing:?}"
    );
}

/// The suite can fail: with a bug planted in every replicator (a failpoint
/// that drops an applied batch as if it had been applied), a run must end
/// in a violation that names lost orders, and say how to replay it.
#[test]
fn a_replicator_that_drops_transactions_is_caught() {
    ezone_tests::require_failpoints();
    let dir = tempfile::tempdir().expect("report dir");
    let out = Command::new(ezone_bin())
        .args(["chaos", "run", "--seed", "1", "--faults", "kill-router"])
        .args(["--duration", "25s", "--quiet", "6s", "--rate", "60"])
        // They never will: no need to wait the usual minute.
        .args(["--converge-within", "5s"])
        .arg("--report")
        .arg(dir.path())
        .env("EZONE_LOG", "warn")
        .env("FAILPOINTS", "apply.drop_batch=5%return")
        .output()
        .expect("run ezone chaos run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("run verdict: VIOLATION (seed 1)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("is missing at") && stdout.contains("sites identical: NO"),
        "{stdout}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("replay: ezone chaos run --seed 1 "),
        "the last line says how to replay: {last}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("summary.json")).unwrap_or_default(),
    )
    .expect("summary.json");
    assert_eq!(summary["ok"], false);
}
