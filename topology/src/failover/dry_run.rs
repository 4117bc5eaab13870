//! `ezone failover ... --dry-run`: what a failover would meet if it ran now,
//! changing nothing.
//!
//! Every site involved (each old home, and the target) is probed at once.
//! For a planned plan, each shard whose two sites answered then gets the
//! [`preflight`] a real run makes before freezing it (the marker round trip
//! included); a shard with a site down does not. A forced plan excuses an
//! unreachable lost site (that is what a forced failover is for): only the
//! survivor must answer. The verdict says what a real run would do about
//! what was found.

use std::collections::BTreeSet;
use std::future::Future;

use super::driver::{preflight, Check, Options, SiteOps};
use super::plan::{Mode, Plan};
use crate::model::{ShardId, Topology};

/// What a dry run finds, as it finds it.
#[derive(Debug)]
pub enum DryRunEvent<'a> {
    /// The plan moves nothing: there is no site to check.
    NothingToMove,
    /// A site involved answered its probe, or why not.
    Probed {
        site: &'a str,
        answer: &'a Result<(), String>,
    },
    /// A shard's preflight was not run: `unreachable`, one of its two
    /// sites, did not answer.
    NotRun {
        shard: ShardId,
        unreachable: &'a str,
    },
    /// One of a shard's preflight checks.
    Checked { shard: ShardId, check: &'a Check },
    /// A lost site did not answer, as a lost site may not: a forced
    /// failover goes ahead without it.
    Excused { site: &'a str },
}

/// Why a real run now would not go ahead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DryRunError {
    /// Sites that must answer did not; what a real run would do about it.
    #[error("unreachable: {named}: {what_now}")]
    Unreachable { named: String, what_now: String },
    /// A shard's preflight failed.
    #[error("the preflight failed (see above): a switchover now would be refused")]
    Preflight,
}

/// Dry-runs `plan` against topology `t`: `probe` asks a site's Postgres one
/// thing (`Err`: why it cannot); `sites` and `opts` are what the preflight
/// uses. Each finding goes to `observe` as it is made.
pub async fn dry_run<O, P, F>(
    plan: &Plan,
    t: &Topology,
    sites: &O,
    opts: &Options,
    probe: P,
    observe: &(dyn Fn(DryRunEvent<'_>) + Send + Sync),
) -> Result<(), DryRunError>
where
    O: SiteOps,
    P: Fn(&str) -> F,
    F: Future<Output = Result<(), String>>,
{
    if plan.moves.is_empty() {
        observe(DryRunEvent::NothingToMove);
        return Ok(());
    }
    let lost: BTreeSet<&str> = plan.moves.iter().map(|m| m.from.as_str()).collect();
    let mut involved = lost.clone();
    involved.insert(plan.to.as_str());
    let probes = involved.iter().map(|&name| {
        let answer = probe(name);
        async move { (name, answer.await) }
    });
    let mut unreachable: Vec<(&str, String)> = Vec::new();
    for (name, answer) in futures::future::join_all(probes).await {
        observe(DryRunEvent::Probed {
            site: name,
            answer: &answer,
        });
        if let Err(why) = answer {
            unreachable.push((name, why));
        }
    }
    let down: BTreeSet<&str> = unreachable.iter().map(|(n, _)| *n).collect();
    let mut ok = true;
    if plan.mode == Mode::Planned {
        for mv in &plan.moves {
            let site_down = [mv.from.as_str(), mv.to.as_str()]
                .into_iter()
                .find(|s| down.contains(s));
            if let Some(site) = site_down {
                observe(DryRunEvent::NotRun {
                    shard: mv.shard,
                    unreachable: site,
                });
                continue;
            }
            for check in preflight(sites, t, mv.shard, &mv.from, &mv.to, opts).await {
                ok &= check.ok;
                observe(DryRunEvent::Checked {
                    shard: mv.shard,
                    check: &check,
                });
            }
        }
    }
    if plan.mode == Mode::Forced && !down.contains(plan.to.as_str()) {
        for (name, _) in &unreachable {
            observe(DryRunEvent::Excused { site: name });
        }
        unreachable.clear();
    }
    if !unreachable.is_empty() {
        return Err(refusal(plan, &lost, &unreachable));
    }
    if !ok {
        return Err(DryRunError::Preflight);
    }
    Ok(())
}

/// The sites that did not answer, and what a real run would do.
fn refusal(plan: &Plan, lost: &BTreeSet<&str>, unreachable: &[(&str, String)]) -> DryRunError {
    let named = unreachable
        .iter()
        .map(|(n, why)| format!("{n} ({why})"))
        .collect::<Vec<_>>()
        .join("; ");
    let lost_down: Vec<&str> = unreachable
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| lost.contains(n))
        .collect();
    let what_now = match plan.mode {
        Mode::Planned if !lost_down.is_empty() => format!(
            "a planned switchover now would be refused; if {} is lost, `--force` moves its shards without it \
             (its writes that have not crossed become conflicts)",
            lost_down.join(", ")
        ),
        Mode::Planned => format!(
            "a planned switchover now would be refused: {} must be reachable",
            plan.to
        ),
        Mode::Forced => format!(
            "a forced failover now would fail: {} must be reachable to take the shards",
            plan.to
        ),
    };
    DryRunError::Unreachable { named, what_now }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::failover::driver::tests::{opts, setup, FakeSites};
    use crate::failover::plan::plan_site;
    use crate::store::TopologyStore;

    /// Dry-runs beijing's shards to shanghai with `down` not answering; the
    /// findings as lines, and the verdict.
    async fn run(mode: Mode, down: &[&str]) -> (Vec<String>, Result<(), DryRunError>) {
        let (_d, store) = setup().await;
        let t = store.load().await.unwrap().topology;
        let plan = plan_site(&t, "beijing", "shanghai", mode, &[]).unwrap();
        let sites = FakeSites::new(0);
        let seen = Mutex::new(Vec::new());
        let observe = |e: DryRunEvent<'_>| {
            let line = match e {
                DryRunEvent::NothingToMove => "nothing".to_string(),
                DryRunEvent::Probed { site, answer } => format!("{site} {}", answer.is_ok()),
                DryRunEvent::NotRun { shard, unreachable } => {
                    format!("shard {shard} not run: {unreachable}")
                }
                DryRunEvent::Checked { shard, check } => format!("shard {shard} {}", check.ok),
                DryRunEvent::Excused { site } => format!("{site} excused"),
            };
            seen.lock().unwrap().push(line);
        };
        let probe = |name: &str| {
            let answer = if down.contains(&name) {
                Err("connection refused".to_string())
            } else {
                Ok(())
            };
            async move { answer }
        };
        let verdict = dry_run(&plan, &t, &sites, &opts(), probe, &observe).await;
        (seen.into_inner().unwrap(), verdict)
    }

    #[tokio::test]
    async fn every_site_answering_runs_each_shards_preflight() {
        let (seen, verdict) = run(Mode::Planned, &[]).await;
        assert_eq!(verdict, Ok(()));
        assert_eq!(seen[..2], ["beijing true", "shanghai true"]);
        assert!(seen[2..].iter().all(|l| l.ends_with(" true")), "{seen:?}");
        assert!(seen.len() > 2, "{seen:?}");
    }

    #[tokio::test]
    async fn a_planned_plan_with_a_site_down_runs_no_preflight_and_says_what_now() {
        let (seen, verdict) = run(Mode::Planned, &["beijing"]).await;
        assert!(
            seen.contains(&"shard 1 not run: beijing".to_string()),
            "{seen:?}"
        );
        match verdict {
            Err(DryRunError::Unreachable { named, what_now }) => {
                assert_eq!(named, "beijing (connection refused)");
                assert!(
                    what_now.contains("if beijing is lost, `--force`"),
                    "{what_now}"
                );
            }
            other => panic!("{other:?}"),
        }
        let (_, verdict) = run(Mode::Planned, &["shanghai"]).await;
        match verdict {
            Err(DryRunError::Unreachable { what_now, .. }) => {
                assert!(
                    what_now.contains("shanghai must be reachable"),
                    "{what_now}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_forced_plan_excuses_the_lost_site_but_not_the_survivor() {
        let (seen, verdict) = run(Mode::Forced, &["beijing"]).await;
        assert_eq!(verdict, Ok(()));
        assert_eq!(seen.last().map(String::as_str), Some("beijing excused"));
        // No preflight in a forced failover.
        assert!(!seen.iter().any(|l| l.starts_with("shard ")), "{seen:?}");
        let (_, verdict) = run(Mode::Forced, &["shanghai"]).await;
        match verdict {
            Err(DryRunError::Unreachable { what_now, .. }) => assert!(
                what_now.contains("shanghai must be reachable to take the shards"),
                "{what_now}"
            ),
            other => panic!("{other:?}"),
        }
    }
}
