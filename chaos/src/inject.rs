//! Applies a [`Schedule`]'s faults to a running [`Ensemble`]: each one at
//! its time, undone when it ends (a killed part restarted, a paused one
//! resumed, a link healed and its latency restored, a switchover command
//! waited for), then the heal, which leaves every part up and every link
//! clean whatever happened.
//!
//! One task walks the timeline: each fault is applied at its time, and its
//! undo runs from its end concurrently with the rest (an undo that waits,
//! such as a part restarted while another fault holds its etcd path, holds
//! back no other fault); nothing here
//! decides anything about correctness: the checker reads the sites
//! afterwards. What was applied, when, and how it went is returned for the
//! report. Kinds that need parts the lab does not have yet
//! ([`supported`]) are refused up front, naming what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::ensemble::{etcd_links, Ensemble, Part};
use crate::forced::{self, ForcedRecord, ForcedRun};
use crate::lab::link_name;
use crate::proxy::{Direction, LinkHandle, Toxics};
use crate::schedule::{Fault, FaultKind, Schedule};

/// Whether the injector can apply `kind` on this lab, and if not, why.
pub fn supported(kind: FaultKind) -> Result<(), &'static str> {
    match kind {
        // Needs a lab started with clock skew on (libfaketime around the
        // site's processes); `begin` refuses it on a lab without.
        FaultKind::ClockSkew => Ok(()),
        _ => Ok(()),
    }
}

/// The kinds [`supported`] accepts.
pub fn supported_kinds() -> Vec<FaultKind> {
    FaultKind::ALL
        .into_iter()
        .filter(|k| supported(*k).is_ok())
        .collect()
}

/// One fault as it went.
#[derive(Debug, Clone)]
pub struct Applied {
    pub fault: Fault,
    /// When it was applied and undone, from the run's start (they drift
    /// from the schedule when an action, such as a restart, takes time).
    pub started: Duration,
    pub ended: Duration,
    /// What happened: `Ok` with a note, or the error of applying or
    /// undoing it (reported; the run goes on).
    pub outcome: Result<String, String>,
    /// For a forced failover: what the checker needs to judge it.
    pub forced: Option<ForcedRecord>,
}

/// An undo as it ended: the fault's index, how it went, a forced
/// failover's record, when.
type Undone = (
    usize,
    Result<String, String>,
    Option<ForcedRecord>,
    Duration,
);

/// What undoing a fault takes.
enum Undo {
    Nothing,
    Restart(String, Part),
    Resume(String, Part),
    Heal(Vec<LinkHandle>),
    Restore(Vec<(LinkHandle, Toxics, Toxics)>),
    /// A switchover command running; with a re-run (its arguments) when it
    /// was killed on purpose.
    Command(tokio::process::Child, Option<Vec<String>>),
    /// etcd members killed (restart them) or paused (resume them).
    EtcdRestart(Vec<usize>),
    EtcdResume(usize),
    /// A forced failover's first phase, running.
    Forced(Box<ForcedRun>),
    /// A site's clock skewed: back to `+0`.
    Unskew(String),
}

/// How often an undo tries to start a killed part again.
const RESTART_TRIES: u32 = 3;

/// The steps a switchover command can be killed at (failpoints).
const STEPS: [&str; 7] = ezone_topology::failover::Switchover::FORWARD_STEPS;

/// Applies `schedule` to `ens` from `start` on; returns every fault as it
/// went, once all are undone (at or after the schedule's heal time).
pub async fn apply(
    ens: &Ensemble,
    schedule: &Schedule,
    ezone_bin: &Path,
    start: Instant,
    note: &(dyn Fn(String) + Send + Sync),
) -> Vec<Applied> {
    // (time, end?, index): ends before starts at the same instant.
    let mut events: Vec<(Duration, bool, usize)> = Vec::new();
    for (i, f) in schedule.faults.iter().enumerate() {
        events.push((f.at, false, i));
        events.push((f.until(), true, i));
    }
    events.sort_by_key(|(t, is_start, i)| (*t, *is_start, *i));
    let mut undo: Vec<Option<Undo>> = (0..schedule.faults.len()).map(|_| None).collect();
    let mut out: Vec<Option<Applied>> = vec![None; schedule.faults.len()];
    // Undos run concurrently with the timeline: one that waits (a part
    // restarted while another fault holds what it needs, such as its etcd
    // path) must not hold back the faults after it, nor the undo of the
    // fault it waits for.
    let mut undoing = FuturesUnordered::new();
    let finish = |out: &mut Vec<Option<Applied>>, done: Undone| {
        let (i, r, rec, now) = done;
        note(format!(
            "{:>8.3}s  undo   {}",
            now.as_secs_f64(),
            schedule.faults[i]
        ));
        if let Some(a) = out[i].as_mut() {
            a.ended = now;
            a.forced = rec;
            match (&mut a.outcome, r) {
                (Ok(text), Ok(more)) if !more.is_empty() => {
                    text.push_str("; ");
                    text.push_str(&more);
                }
                (Ok(_), Err(e)) => a.outcome = Err(e),
                _ => {}
            }
        }
    };
    for (at, is_end, i) in events {
        let due = tokio::time::sleep_until(start + at);
        tokio::pin!(due);
        loop {
            tokio::select! {
                () = &mut due => break,
                Some(done) = undoing.next(), if !undoing.is_empty() => finish(&mut out, done),
            }
        }
        let fault = &schedule.faults[i];
        if !is_end {
            let now = start.elapsed();
            note(format!("{:>8.3}s  apply  {fault}", now.as_secs_f64()));
            let (u, outcome) = match begin(ens, fault, ezone_bin, start).await {
                Ok((u, text)) => (Some(u), Ok(text)),
                Err(e) => (None, Err(e)),
            };
            undo[i] = u;
            out[i] = Some(Applied {
                fault: fault.clone(),
                started: now,
                ended: now,
                outcome,
                forced: None,
            });
        } else {
            let u = undo[i].take();
            undoing.push(async move {
                let (r, rec) = match u {
                    Some(Undo::Forced(run)) => {
                        let rec = forced::end(ens, ezone_bin, *run, start).await;
                        (Ok(rec.notes.join("; ")), Some(rec))
                    }
                    Some(u) => (end(ens, u, ezone_bin).await, None),
                    None => (Ok(String::new()), None),
                };
                (i, r, rec, start.elapsed())
            });
        }
    }
    while let Some(done) = undoing.next().await {
        finish(&mut out, done);
    }
    out.into_iter().flatten().collect()
}

/// Every part up and every link clean: what the heal leaves, whatever the
/// faults did (they undo themselves; this is the safety net).
pub async fn heal(ens: &Ensemble) -> Vec<String> {
    let mut problems = Vec::new();
    let base = base_toxics(ens);
    for link in all_links(ens) {
        link.heal();
        link.set_toxics(Direction::Upstream, base.clone());
        link.set_toxics(Direction::Downstream, base.clone());
    }
    for (i, m) in ens.lab().etcd().members().iter().enumerate() {
        let _ = m.resume();
        if !m.is_running() {
            if let Err(e) = ens.lab().etcd().restart_member(i).await {
                problems.push(format!("restarting etcd member {i}: {e}"));
            }
        }
    }
    for site in ens.sites() {
        for l in etcd_links(ens.lab(), &site) {
            l.heal();
            l.set_toxics(Direction::Upstream, Toxics::default());
            l.set_toxics(Direction::Downstream, Toxics::default());
        }
        for part in [Part::Postgres, Part::Orders, Part::Router, Part::Replicator] {
            // A paused process resumes; one that is not running (it exited,
            // or its restart failed) says so by failing to resume: start
            // it again.
            if ens.resume(&site, part).is_err() {
                if let Err(e) = ens.restart(&site, part).await {
                    problems.push(format!("restarting {part} at {site} in the heal: {e}"));
                }
            }
        }
    }
    for (site, clock) in ens.lab().clocks() {
        if let Err(e) = clock.reset() {
            problems.push(format!("resetting the clock at {site}: {e}"));
        }
    }
    if let Err(e) = ens.wait_ready().await {
        problems.push(format!("after the heal, not everything is ready: {e}"));
    }
    problems
}

/// The WAN's latency each way when no fault is on: half the lab's RTT.
fn base_toxics(ens: &Ensemble) -> Toxics {
    Toxics {
        latency: ens.lab().wan_rtt() / 2,
        ..Toxics::default()
    }
}

/// Every WAN link between two sites: the Postgres links both ways and
/// the links in front of both routers.
fn pair_links(ens: &Ensemble, a: &str, b: &str) -> Vec<LinkHandle> {
    let mut out: Vec<LinkHandle> = [link_name(a, b), link_name(b, a)]
        .iter()
        .filter_map(|n| ens.lab().link(n))
        .collect();
    for site in [a, b] {
        if let Ok(Some(l)) = ens.router_link(site) {
            out.push(l);
        }
    }
    out
}

fn all_links(ens: &Ensemble) -> Vec<LinkHandle> {
    let sites = ens.sites();
    let mut out = Vec::new();
    for (i, a) in sites.iter().enumerate() {
        for b in &sites[i + 1..] {
            out.extend(pair_links(ens, a, b));
        }
    }
    out
}

fn part_of(kind: FaultKind) -> Option<Part> {
    match kind {
        FaultKind::KillRouter | FaultKind::PauseRouter => Some(Part::Router),
        FaultKind::KillOrders | FaultKind::PauseOrders => Some(Part::Orders),
        FaultKind::KillReplicator | FaultKind::PauseReplicator => Some(Part::Replicator),
        FaultKind::KillPostgres | FaultKind::PausePostgres => Some(Part::Postgres),
        _ => None,
    }
}

/// `ezone failover ARGS --etcd ...` started, not waited for.
fn failover_command(
    ens: &Ensemble,
    ezone_bin: &Path,
    args: &[String],
    failpoint: Option<&str>,
) -> Result<tokio::process::Child, String> {
    let mut cmd = tokio::process::Command::new(PathBuf::from(ezone_bin));
    cmd.arg("failover")
        .args(args)
        .args(ens.etcd_cli_args())
        .arg("--lock-ttl")
        .arg("1s")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(fp) = failpoint {
        cmd.env("FAILPOINTS", fp);
    }
    cmd.spawn()
        .map_err(|e| format!("cannot run {}: {e}", ezone_bin.display()))
}

async fn begin(
    ens: &Ensemble,
    f: &Fault,
    ezone_bin: &Path,
    start: Instant,
) -> Result<(Undo, String), String> {
    supported(f.kind).map_err(|why| format!("{}: {why}", f.kind))?;
    let other = || {
        f.other
            .clone()
            .ok_or_else(|| format!("{}: no other site", f.kind))
    };
    match f.kind {
        FaultKind::KillRouter
        | FaultKind::KillOrders
        | FaultKind::KillReplicator
        | FaultKind::KillPostgres => {
            let part = part_of(f.kind).unwrap_or(Part::Router);
            ens.kill(&f.site, part).map_err(|e| e.to_string())?;
            Ok((Undo::Restart(f.site.clone(), part), String::new()))
        }
        FaultKind::PauseRouter
        | FaultKind::PauseOrders
        | FaultKind::PauseReplicator
        | FaultKind::PausePostgres => {
            let part = part_of(f.kind).unwrap_or(Part::Router);
            ens.pause(&f.site, part).map_err(|e| e.to_string())?;
            Ok((Undo::Resume(f.site.clone(), part), String::new()))
        }
        FaultKind::Partition => {
            let links = pair_links(ens, &f.site, &other()?);
            for l in &links {
                l.partition();
            }
            Ok((Undo::Heal(links), String::new()))
        }
        FaultKind::PartitionOneWay => {
            // Bytes from `site` to `other` stop: `site`'s WAL to `other`'s
            // replicator, and `site`'s router's answers to `other`'s.
            let o = other()?;
            let mut links = Vec::new();
            if let Some(l) = ens.lab().link(&link_name(&f.site, &o)) {
                l.partition_one_way(Direction::Downstream);
                links.push(l);
            }
            if let Ok(Some(l)) = ens.router_link(&f.site) {
                l.partition_one_way(Direction::Downstream);
                links.push(l);
            }
            Ok((Undo::Heal(links), String::new()))
        }
        FaultKind::PartitionEtcd => {
            let links = etcd_links(ens.lab(), &f.site);
            if links.is_empty() {
                return Err("partition-etcd needs the ensemble's replicator_etcd_links".into());
            }
            for l in &links {
                l.partition();
            }
            Ok((Undo::Heal(links), String::new()))
        }
        FaultKind::KillEtcdMember | FaultKind::PauseEtcdMember | FaultKind::EtcdQuorumLoss => {
            let members = ens.lab().etcd().members();
            if members.len() < 3 {
                return Err(format!(
                    "{} needs a lab with three etcd members (it has {})",
                    f.kind,
                    members.len()
                ));
            }
            let pick = f.amount as usize % members.len();
            match f.kind {
                FaultKind::KillEtcdMember => {
                    members[pick].kill().map_err(|e| e.to_string())?;
                    Ok((Undo::EtcdRestart(vec![pick]), String::new()))
                }
                FaultKind::PauseEtcdMember => {
                    members[pick].pause().map_err(|e| e.to_string())?;
                    Ok((Undo::EtcdResume(pick), String::new()))
                }
                _ => {
                    // Every member but `pick` down: no quorum.
                    let down: Vec<usize> = (0..members.len()).filter(|i| *i != pick).collect();
                    for i in &down {
                        members[*i].kill().map_err(|e| e.to_string())?;
                    }
                    Ok((
                        Undo::EtcdRestart(down.clone()),
                        format!("members {down:?} down, {pick} left"),
                    ))
                }
            }
        }
        FaultKind::ForcedFailover => {
            let survivor = ens
                .sites()
                .into_iter()
                .find(|s| *s != f.site)
                .ok_or("one site only")?;
            let run = forced::begin(ens, ezone_bin, &f.site, &survivor, start)?;
            Ok((
                Undo::Forced(Box::new(run)),
                format!("{} lost, forced to {survivor}", f.site),
            ))
        }
        FaultKind::LatencySpike | FaultKind::Bandwidth => {
            let mut saved = Vec::new();
            for l in pair_links(ens, &f.site, &other()?) {
                let (up, down) = (
                    l.toxics(Direction::Upstream),
                    l.toxics(Direction::Downstream),
                );
                let change = |t: &Toxics| {
                    let mut t = t.clone();
                    if f.kind == FaultKind::LatencySpike {
                        t.latency += Duration::from_millis(f.amount);
                        t.jitter = Duration::from_millis(f.amount / 4);
                    } else {
                        t.bandwidth_bytes_per_sec = Some(f.amount.max(1) * 1024);
                    }
                    t
                };
                l.set_toxics(Direction::Upstream, change(&up));
                l.set_toxics(Direction::Downstream, change(&down));
                saved.push((l, up, down));
            }
            Ok((Undo::Restore(saved), String::new()))
        }
        FaultKind::Reset => {
            for l in pair_links(ens, &f.site, &other()?) {
                l.reset();
            }
            Ok((Undo::Nothing, String::new()))
        }
        FaultKind::ShardSwitchover | FaultKind::SwitchoverKilled => {
            let store = ens.store().await.map_err(|e| e.to_string())?;
            let t = ezone_topology::TopologyStore::load(&store)
                .await
                .map_err(|e| e.to_string())?
                .topology;
            let ids: Vec<&ezone_topology::Shard> = t.shards.values().collect();
            let shard = ids
                .get(f.amount as usize % ids.len().max(1))
                .ok_or("no shards")?;
            let to = t
                .sites
                .keys()
                .find(|s| **s != shard.home)
                .ok_or("one site only")?
                .clone();
            let args = vec![
                "shard".to_string(),
                shard.id.to_string(),
                "--to".into(),
                to.clone(),
            ];
            if f.kind == FaultKind::SwitchoverKilled {
                let step = STEPS[f.amount as usize % STEPS.len()];
                let child = failover_command(
                    ens,
                    ezone_bin,
                    &args,
                    Some(&format!("switchover.{step}=return")),
                )?;
                Ok((
                    Undo::Command(child, Some(args)),
                    format!("shard {} -> {to}, killed at {step}", shard.id),
                ))
            } else {
                let child = failover_command(ens, ezone_bin, &args, None)?;
                Ok((
                    Undo::Command(child, None),
                    format!("shard {} -> {to}", shard.id),
                ))
            }
        }
        FaultKind::SiteSwitchover => {
            let to = ens
                .sites()
                .into_iter()
                .find(|s| *s != f.site)
                .ok_or("one site only")?;
            let args = vec![
                "site".to_string(),
                f.site.clone(),
                "--to".into(),
                to.clone(),
            ];
            let child = failover_command(ens, ezone_bin, &args, None)?;
            Ok((Undo::Command(child, None), format!("{} -> {to}", f.site)))
        }
        FaultKind::ClockSkew => {
            // Odd amount: the site's clock runs behind; even: ahead.
            let clock = ens.lab().clock(&f.site).map_err(|e| e.to_string())?;
            let skew = crate::clock::signed_skew_ms(f.amount);
            clock.set_offset(skew).map_err(|e| e.to_string())?;
            Ok((
                Undo::Unskew(f.site.clone()),
                format!("{} {}", f.site, crate::clock::offset_spec(skew)),
            ))
        }
    }
}

async fn end(ens: &Ensemble, undo: Undo, ezone_bin: &Path) -> Result<String, String> {
    match undo {
        Undo::Nothing => Ok(String::new()),
        Undo::Restart(site, part) => {
            // A part may fail to start while another fault holds what it
            // needs (etcd, its Postgres): try again, as a supervisor would.
            let mut tries = 0;
            loop {
                tries += 1;
                match ens.restart(&site, part).await {
                    Ok(()) if tries == 1 => return Ok(String::new()),
                    Ok(()) => return Ok(format!("started on try {tries}")),
                    Err(e) if tries >= RESTART_TRIES => {
                        return Err(format!("restarting {part} at {site} ({tries} tries): {e}"))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
        }
        Undo::Resume(site, part) => ens
            .resume(&site, part)
            .map(|()| String::new())
            .map_err(|e| format!("resuming {part} at {site}: {e}")),
        Undo::Heal(links) => {
            for l in links {
                l.heal();
            }
            Ok(String::new())
        }
        Undo::Restore(saved) => {
            for (l, up, down) in saved {
                l.set_toxics(Direction::Upstream, up);
                l.set_toxics(Direction::Downstream, down);
            }
            Ok(String::new())
        }
        Undo::EtcdRestart(members) => {
            // Start them all before waiting: a member alone may not become
            // healthy without a quorum.
            let etcd = ens.lab().etcd();
            for i in &members {
                if let Some(m) = etcd.members().get(*i) {
                    m.restart()
                        .map_err(|e| format!("restarting etcd member {i}: {e}"))?;
                }
            }
            for i in &members {
                if let Some(m) = etcd.members().get(*i) {
                    m.wait_healthy(Duration::from_secs(30))
                        .await
                        .map_err(|e| format!("etcd member {i} after its restart: {e}"))?;
                }
            }
            Ok(String::new())
        }
        Undo::EtcdResume(i) => match ens.lab().etcd().members().get(i) {
            Some(m) => m
                .resume()
                .map(|()| String::new())
                .map_err(|e| format!("resuming etcd member {i}: {e}")),
            None => Ok(String::new()),
        },
        Undo::Forced(_) => Ok(String::new()),
        Undo::Unskew(site) => ens
            .lab()
            .clock(&site)
            .and_then(|c| c.reset())
            .map(|()| String::new())
            .map_err(|e| format!("resetting the clock at {site}: {e}")),
        Undo::Command(child, rerun) => {
            // A switchover ends on its own (done, rolled back, refused by
            // its preflight): each is an acceptable answer under faults.
            let code = wait_for(child).await;
            let mut text = format!("exit {code}");
            if let Some(args) = rerun {
                let again = failover_command(ens, ezone_bin, &args, None)?;
                text.push_str(&format!(", re-run exit {}", wait_for(again).await));
            }
            Ok(text)
        }
    }
}

/// The command's exit code (-1: killed, or still running after a minute).
async fn wait_for(child: tokio::process::Child) -> i32 {
    match tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await {
        Ok(Ok(out)) => out.status.code().unwrap_or(-1),
        _ => -1,
    }
}
