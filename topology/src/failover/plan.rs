//! What a failover command will do, decided from the topology alone (pure):
//! which shards move, from where, at which epoch, and what is refused. This
//! is what `--dry-run` prints and what the driver then executes.

use std::collections::BTreeSet;
use std::fmt;

use super::Switchover;
use crate::model::{Epoch, ShardId, ShardState, Topology};

/// Parses a shard list as an operator types it: `7`, `1,2,3`, `5-8`,
/// `1,4-6`. Order and duplicates do not matter.
pub fn parse_shard_list(text: &str) -> Result<BTreeSet<ShardId>, String> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a shard id or range: write e.g. 7, 1,2,3 or 5-8");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: ShardId = a.trim().parse().map_err(|_| bad())?;
                let b: ShardId = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(format!("range {part:?} runs backwards: write {b}-{a}"));
                }
                if b - a > 100_000 {
                    return Err(format!("range {part:?} is too large"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    if out.is_empty() {
        return Err("no shards given: write e.g. 7, 1,2,3 or 5-8".into());
    }
    Ok(out)
}

/// One shard's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub shard: ShardId,
    pub from: String,
    pub to: String,
    pub epoch: Epoch,
    pub state: ShardState,
}

/// A shard the command will leave alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub shard: ShardId,
    pub reason: String,
}

/// Planned (zero loss) or forced (the old home is gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Planned,
    Forced,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    pub to: String,
    pub moves: Vec<Move>,
    pub skips: Vec<Skip>,
}

/// Why no plan can be made at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("site {site:?} is not in the topology (sites: {known}); check the name")]
    UnknownSite { site: String, known: String },
    #[error("shard {0} is not in the topology; `ezone status` lists the shards")]
    UnknownShard(ShardId),
    #[error("site {0:?} is both the source and the target: nothing to do")]
    SameSite(String),
}

fn known_site(t: &Topology, site: &str) -> Result<(), PlanError> {
    if t.sites.contains_key(site) {
        Ok(())
    } else {
        Err(PlanError::UnknownSite {
            site: site.into(),
            known: t.sites.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

/// The plan for moving `shards` to `to`.
///
/// A shard already home at `to` and active is skipped, unless `unfinished`
/// (the switchovers whose records are not finished) has one for it: a
/// crash after the flip but before the new home's fence opened leaves
/// exactly that, and the re-run must finish it. A frozen shard is planned
/// anyway: the driver resumes its switchover from the record (or refuses,
/// naming the holder).
pub fn plan_shards(
    t: &Topology,
    shards: &BTreeSet<ShardId>,
    to: &str,
    mode: Mode,
    unfinished: &[Switchover],
) -> Result<Plan, PlanError> {
    known_site(t, to)?;
    let mut plan = Plan {
        mode,
        to: to.into(),
        moves: Vec::new(),
        skips: Vec::new(),
    };
    for id in shards {
        let s = t.shards.get(id).ok_or(PlanError::UnknownShard(*id))?;
        let pending = unfinished.iter().any(|u| u.shard == *id);
        if s.home == to && s.state == ShardState::Active && !pending {
            plan.skips.push(Skip {
                shard: *id,
                reason: format!("already home at {to}, active"),
            });
            continue;
        }
        plan.moves.push(Move {
            shard: *id,
            from: s.home.clone(),
            to: to.into(),
            epoch: s.epoch,
            state: s.state,
        });
    }
    Ok(plan)
}

/// The plan for moving every shard homed at `from` to `to` (and finishing
/// unfinished switchovers from `from` to `to`).
pub fn plan_site(
    t: &Topology,
    from: &str,
    to: &str,
    mode: Mode,
    unfinished: &[Switchover],
) -> Result<Plan, PlanError> {
    known_site(t, from)?;
    known_site(t, to)?;
    if from == to {
        return Err(PlanError::SameSite(from.into()));
    }
    let mut shards: BTreeSet<ShardId> = t
        .shards
        .values()
        .filter(|s| s.home == from)
        .map(|s| s.id)
        .collect();
    shards.extend(
        unfinished
            .iter()
            .filter(|u| u.from == from && u.to == to)
            .map(|u| u.shard),
    );
    if shards.is_empty() {
        return Ok(Plan {
            mode,
            to: to.into(),
            moves: Vec::new(),
            skips: Vec::new(),
        });
    }
    plan_shards(t, &shards, to, mode, unfinished)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.mode {
            Mode::Planned => "planned switchover (zero loss)",
            Mode::Forced => "FORCED failover (the old home is not consulted)",
        };
        writeln!(f, "{kind}: {} shard(s) to {}", self.moves.len(), self.to)?;
        for m in &self.moves {
            match self.mode {
                Mode::Planned => writeln!(
                    f,
                    "  shard {:>4}: {} -> {}  freeze (epoch {}), fence {}, marker {}->{} applied, flip (epoch {}), open {}",
                    m.shard,
                    m.from,
                    m.to,
                    m.epoch + 1,
                    m.from,
                    m.from,
                    m.to,
                    m.epoch + 2,
                    m.to
                )?,
                Mode::Forced => writeln!(
                    f,
                    "  shard {:>4}: {} -> {}  home {} active (epoch {}), open {}; {}'s unreplicated writes become conflicts",
                    m.shard, m.from, m.to, m.to, m.epoch + 1, m.to, m.from
                )?,
            }
            if m.state == ShardState::Frozen {
                writeln!(
                    f,
                    "              (frozen now: a switchover may be in progress; it is resumed from its record)"
                )?;
            }
        }
        for s in &self.skips {
            writeln!(f, "  shard {:>4}: skipped: {}", s.shard, s.reason)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::starter::starter;

    #[test]
    fn shard_lists() {
        let got = parse_shard_list("1, 4-6,2,5").unwrap();
        assert_eq!(got.into_iter().collect::<Vec<_>>(), vec![1, 2, 4, 5, 6]);
        assert!(parse_shard_list("").is_err());
        assert!(parse_shard_list("6-4").unwrap_err().contains("4-6"));
        assert!(parse_shard_list("x").unwrap_err().contains("\"x\""));
        assert!(parse_shard_list("1-999999999").is_err());
    }

    #[test]
    fn a_site_plan_moves_its_shards_and_skips_none_else() {
        let t = starter(&["beijing", "shanghai"], 2);
        let p = plan_site(&t, "beijing", "shanghai", Mode::Planned, &[]).unwrap();
        assert!(!p.moves.is_empty());
        assert!(p
            .moves
            .iter()
            .all(|m| m.from == "beijing" && m.to == "shanghai"));
        let homed = t.shards.values().filter(|s| s.home == "beijing").count();
        assert_eq!(p.moves.len(), homed);
        let text = p.to_string();
        assert!(text.contains("planned switchover"), "{text}");
    }

    #[test]
    fn shards_already_there_are_skipped_and_unknowns_refused() {
        let t = starter(&["beijing", "shanghai"], 1);
        let all: BTreeSet<ShardId> = t.shards.keys().copied().collect();
        let p = plan_shards(&t, &all, "shanghai", Mode::Planned, &[]).unwrap();
        assert_eq!(p.moves.len() + p.skips.len(), all.len());
        assert!(p.skips.iter().all(|s| s.reason.contains("already")));
        let err = plan_shards(&t, &[999].into(), "shanghai", Mode::Planned, &[]).unwrap_err();
        assert_eq!(err, PlanError::UnknownShard(999));
        let err = plan_site(&t, "beijing", "tokyo", Mode::Forced, &[]).unwrap_err();
        assert!(err.to_string().contains("beijing, shanghai"), "{err}");
        assert!(plan_site(&t, "beijing", "beijing", Mode::Forced, &[]).is_err());
    }

    #[test]
    fn an_unfinished_switchover_is_planned_even_when_the_shard_looks_done() {
        let mut t = starter(&["beijing", "shanghai"], 1);
        let id = *t.shards.keys().next().unwrap();
        let from = t.shards[&id].home.clone();
        let to = if from == "beijing" {
            "shanghai"
        } else {
            "beijing"
        };
        // The flip landed, the new home's fence is not open yet.
        t.shards.get_mut(&id).unwrap().home = to.into();
        let crashed = vec![Switchover::new(id, &from, to, 1)];
        let p = plan_shards(&t, &[id].into(), to, Mode::Planned, &crashed).unwrap();
        assert_eq!(p.moves.len(), 1);
        let p = plan_shards(&t, &[id].into(), to, Mode::Planned, &[]).unwrap();
        assert!(p.moves.is_empty());
        let p = plan_site(&t, &from, to, Mode::Planned, &crashed).unwrap();
        assert!(p.moves.iter().any(|m| m.shard == id));
    }
}
