//! `ezone chaos schedule`: the same seed and options print the same
//! schedule, in another process, every time; only the kinds asked for.

use std::process::Command;

use ezone_tests::ezone_bin;

fn schedule(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(ezone_bin())
        .args(["chaos", "schedule"])
        .args(args)
        .output()
        .expect("run ezone chaos schedule");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_seed_prints_the_same_schedule_every_time() {
    let (ok, a, err) = schedule(&["--seed", "5", "--duration", "60s"]);
    assert!(ok, "{err}");
    let (_, b, _) = schedule(&["--seed", "5", "--duration", "60s"]);
    assert_eq!(a, b);
    assert!(a.starts_with("schedule: seed 5 duration 60s"), "{a}");
    assert!(a.lines().count() > 5, "{a}");
    let (_, c, _) = schedule(&["--seed", "6", "--duration", "60s"]);
    assert_ne!(a, c);
    let (ok, only, err) = schedule(&["--seed", "5", "--faults", "kill-router,partition"]);
    assert!(ok, "{err}");
    for line in only.lines().skip(1).filter(|l| !l.contains("heal:")) {
        assert!(
            line.contains("kill-router") || line.contains("partition"),
            "{line}"
        );
    }
    let (ok, _, err) = schedule(&["--seed", "5", "--faults", "nope"]);
    assert!(!ok);
    assert!(
        err.contains("unknown fault kind") && err.contains("kill-router"),
        "{err}"
    );
}
