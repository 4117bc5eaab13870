//! `ezone chaos sweep`: many seeds, one `ezone chaos run` each (a child
//! process, so that one run's leftovers cannot touch the next), and a
//! summary of the verdicts: seeds run, fault kinds covered, faults
//! injected, writes acknowledged, violations with their replay lines.
//! `make chaos-long` runs it over a hundred seeds of two minutes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// `ezone chaos sweep ...`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Seeds: a range `1-100`, a list `1,5,9`, or both `1-10,42`.
    #[arg(long, default_value = "1-100")]
    seeds: String,
    /// Each run's length, its quiet period included.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    quiet: Duration,
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Fault kinds (default: every kind the injector supports).
    #[arg(long)]
    faults: Option<String>,
    /// Each seed's report goes to DIR/seed-N; the summary to DIR/summary.txt.
    #[arg(long, default_value = "target/chaos-sweep")]
    report: PathBuf,
}

/// The seeds a `--seeds` value names, in order, without repeats.
pub fn parse_seeds(text: &str) -> Result<Vec<u64>, String> {
    let mut out: Vec<u64> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a seed or a range of seeds like 1-100");
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse::<u64>().map_err(|_| bad())?,
                b.trim().parse::<u64>().map_err(|_| bad())?,
            ),
            None => {
                let s = part.parse::<u64>().map_err(|_| bad())?;
                (s, s)
            }
        };
        if lo > hi || hi - lo > 100_000 {
            return Err(bad());
        }
        for s in lo..=hi {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    if out.is_empty() {
        return Err("no seeds: give --seeds like 1-100".into());
    }
    Ok(out)
}

/// One seed's result, from its report's `summary.json`.
#[derive(Debug, Default)]
struct SeedResult {
    ok: bool,
    acked: u64,
    faults: u64,
    /// Faults whose applying or undoing failed (the lab's trouble, not a
    /// violation; listed so that they are looked at).
    not_clean: Vec<String>,
    kinds: Vec<String>,
    violations: Vec<String>,
    replay: String,
}

fn read_summary(dir: &std::path::Path) -> Option<SeedResult> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let strings = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Some(SeedResult {
        ok: v.get("ok")?.as_bool()?,
        acked: v.get("acked").and_then(|x| x.as_u64()).unwrap_or(0),
        faults: v
            .get("faults_applied")
            .and_then(|x| x.as_u64())
            .unwrap_or(0),
        not_clean: strings("faults_not_clean"),
        kinds: strings("kinds"),
        violations: strings("violations"),
        replay: v
            .get("replay")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string(),
    })
}

pub async fn run(a: SweepArgs) -> anyhow::Result<()> {
    let seeds = parse_seeds(&a.seeds).map_err(anyhow::Error::msg)?;
    let exe = std::env::current_exe().context("finding the ezone binary")?;
    std::fs::create_dir_all(&a.report)
        .with_context(|| format!("creating {}", a.report.display()))?;
    let started = Instant::now();
    let mut results: BTreeMap<u64, SeedResult> = BTreeMap::new();
    let mut lines = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let dir = a.report.join(format!("seed-{seed}"));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["chaos", "run", "--seed", &seed.to_string()])
            .arg("--duration")
            .arg(format!("{}s", a.duration.as_secs()))
            .arg("--quiet")
            .arg(format!("{}s", a.quiet.as_secs()))
            .arg("--rate")
            .arg(a.rate.to_string())
            .arg("--report")
            .arg(&dir)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(f) = &a.faults {
            cmd.arg("--faults").arg(f);
        }
        let out = cmd
            .output()
            .await
            .with_context(|| format!("running {}", exe.display()))?;
        let _ = std::fs::write(dir.join("stdout.txt"), &out.stdout);
        let _ = std::fs::write(dir.join("stderr.txt"), &out.stderr);
        let r = read_summary(&dir).unwrap_or_else(|| SeedResult {
            ok: false,
            violations: vec![format!(
                "the run ended ({}) without a summary: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )],
            replay: format!(
                "ezone chaos run --seed {seed} --duration {}s --quiet {}s --rate {}",
                a.duration.as_secs(),
                a.quiet.as_secs(),
                a.rate
            ),
            ..SeedResult::default()
        });
        let line = format!(
            "[{}/{}] seed {seed}: {} ({} faults, {} kinds, {} writes acknowledged) after {:.0}s",
            i + 1,
            seeds.len(),
            if r.ok { "OK" } else { "VIOLATION" },
            r.faults,
            r.kinds.len(),
            r.acked,
            started.elapsed().as_secs_f64()
        );
        println!("{line}");
        for v in &r.violations {
            println!("    {v}");
        }
        for f in &r.not_clean {
            println!("    fault not applied cleanly: {f}");
        }
        lines.push(line);
        results.insert(*seed, r);
    }
    let summary = summarize(&results);
    print!("{summary}");
    std::fs::write(
        a.report.join("summary.txt"),
        format!("{}\n{summary}", lines.join("\n")),
    )?;
    if results.values().all(|r| r.ok) {
        Ok(())
    } else {
        anyhow::bail!(
            "violations under {} seed(s); each replay line is above and in {}",
            results.values().filter(|r| !r.ok).count(),
            a.report.join("summary.txt").display()
        )
    }
}

fn summarize(results: &BTreeMap<u64, SeedResult>) -> String {
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for r in results.values() {
        for k in &r.kinds {
            *kinds.entry(k.as_str()).or_default() += 1;
        }
    }
    let failed: Vec<(&u64, &SeedResult)> = results.iter().filter(|(_, r)| !r.ok).collect();
    let mut s = String::new();
    s.push_str(&format!(
        "summary: {} seeds run, {} OK, {} with violations; {} faults injected; {} writes acknowledged\n",
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        results.values().map(|r| r.faults).sum::<u64>(),
        results.values().map(|r| r.acked).sum::<u64>(),
    ));
    s.push_str(&format!(
        "fault kinds covered: {} ({})\n",
        kinds.len(),
        kinds
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let not_clean: usize = results.values().map(|r| r.not_clean.len()).sum();
    if not_clean > 0 {
        s.push_str(&format!(
            "faults not applied cleanly: {not_clean} (see each seed's faults.txt)\n"
        ));
    }
    for (seed, r) in failed {
        s.push_str(&format!("VIOLATION seed {seed}: replay: {}\n", r.replay));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse() {
        assert_eq!(parse_seeds("1-3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_seeds("5, 1-2,5").unwrap(), vec![5, 1, 2]);
        assert!(parse_seeds("3-1").is_err());
        assert!(parse_seeds("x").is_err());
        assert!(parse_seeds("").is_err());
    }

    #[test]
    fn the_summary_names_every_violation_with_its_replay() {
        let mut m = BTreeMap::new();
        m.insert(
            1,
            SeedResult {
                ok: true,
                acked: 10,
                faults: 3,
                kinds: vec!["kill-router".into()],
                ..SeedResult::default()
            },
        );
        m.insert(
            2,
            SeedResult {
                ok: false,
                acked: 5,
                faults: 2,
                kinds: vec!["kill-router".into(), "partition".into()],
                violations: vec!["lost 1".into()],
                not_clean: vec!["kill-router: restarting".into()],
                replay: "ezone chaos run --seed 2".into(),
            },
        );
        let s = summarize(&m);
        assert!(
            s.contains(
                "2 seeds run, 1 OK, 1 with violations; 5 faults injected; 15 writes acknowledged"
            ),
            "{s}"
        );
        assert!(s.contains("kill-router x2, partition x1"), "{s}");
        assert!(s.contains("faults not applied cleanly: 1"), "{s}");
        assert!(
            s.contains("VIOLATION seed 2: replay: ezone chaos run --seed 2"),
            "{s}"
        );
    }
}
