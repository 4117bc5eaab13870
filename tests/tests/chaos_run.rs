//! `ezone chaos run` end to end: the whole system under seeded fault
//! schedules, with traffic, judged from the sites' data. Fixed seeds (a
//! failure names its replay line); more seeds, longer, with
//! `EZONE_CHAOS_LONG=1`.

use std::process::Command;

use ezone_tests::ezone_bin;

fn run(seed: u64, duration: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("report dir");
    let out = Command::new(ezone_bin())
        .args(["chaos", "run", "--seed", &seed.to_string()])
        .args(["--duration", duration, "--quiet", "8s", "--rate", "60"])
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
    // The report holds what the run printed, and a history line per order.
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
    (out.status.success(), text)
}

#[test]
fn fixed_seeds_keep_every_invariant() {
    let seeds: Vec<u64> = if std::env::var_os("EZONE_CHAOS_LONG").is_some() {
        (1..=20).collect()
    } else {
        vec![1, 2]
    };
    let duration = if std::env::var_os("EZONE_CHAOS_LONG").is_some() {
        "120s"
    } else {
        "30s"
    };
    for seed in seeds {
        let (ok, text) = run(seed, duration);
        assert!(
            ok && text.contains("run verdict: OK"),
            "seed {seed}:\n{text}"
        );
        assert!(text.contains("replay: ezone chaos run --seed"), "{text}");
    }
}
