//! Seeded fault schedules: which fault hits which part, when, for how long.
//!
//! A schedule is a pure function of a [`ScheduleSpec`] (seed, duration, the
//! fault kinds switched on, the sites): the same spec gives the same
//! schedule on every machine and every version of this crate's
//! dependencies (the generator is ChaCha8, whose output stream is fixed by
//! its specification, not by the `rand` crate's choice of "standard" RNG).
//! A run prints its schedule first, so a violation found by a seed can be
//! replayed from the seed alone.
//!
//! Rules the generator keeps, so that faults overlap the way field faults
//! do without making a run meaningless:
//! - at most [`ScheduleSpec::max_overlap`] faults are active at once, and a
//!   *resource* (a process, a WAN direction, etcd, the switchover command)
//!   carries at most one fault at a time;
//! - every fault is over before the heal, which comes a quiet period
//!   before the end: the run ends with every part up, every link healed,
//!   and time for the sites to converge;
//! - at most one forced failover per run, and none in the first or last
//!   fifth of the fault window (the lost site needs to have taken writes,
//!   and to come back before the heal).
//!
//! Pure: no I/O, no clock. The executor that applies a schedule to the
//! ensemble is separate.

use std::fmt;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The largest clock skew drawn, in ms: inside the skew bound the chaos
/// ensemble configures (`clock_skew_ms`), where the design promises safety.
pub const CLOCK_SKEW_MAX_MS: u64 = 900;

/// A kind of fault, switched on or off by its name (`--faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a site's router, then a restart.
    KillRouter,
    /// kill -9 of a site's order service, then a restart.
    KillOrders,
    /// kill -9 of a site's replicator, then a restart.
    KillReplicator,
    /// kill -9 of a site's Postgres, then a restart.
    KillPostgres,
    /// kill -9 of one etcd member, then a restart.
    KillEtcdMember,
    /// SIGSTOP of a site's router, then SIGCONT.
    PauseRouter,
    /// SIGSTOP of a site's order service, then SIGCONT.
    PauseOrders,
    /// SIGSTOP of a site's replicator, then SIGCONT.
    PauseReplicator,
    /// SIGSTOP of a site's Postgres, then SIGCONT.
    PausePostgres,
    /// SIGSTOP of one etcd member, then SIGCONT.
    PauseEtcdMember,
    /// The WAN between two sites cut both ways.
    Partition,
    /// The WAN between two sites cut one way.
    PartitionOneWay,
    /// A site's processes cut from etcd (the rest of the WAN up).
    PartitionEtcd,
    /// Extra WAN latency with jitter.
    LatencySpike,
    /// A WAN bandwidth cap.
    Bandwidth,
    /// Every connection over a WAN link reset.
    Reset,
    /// A planned switchover of one shard.
    ShardSwitchover,
    /// A planned switchover of every shard of a site.
    SiteSwitchover,
    /// A planned switchover whose command is killed at a step, then re-run.
    SwitchoverKilled,
    /// A site's Postgres killed, its shards forced over, then its return
    /// and the conflicts resolved.
    ForcedFailover,
    /// With three etcd members: two down (no quorum), then back.
    EtcdQuorumLoss,
    /// A site's processes' clocks skewed (libfaketime) for a while: its
    /// Postgres, order service, router and replicator read a wall clock
    /// `amount` ms off (at most [`CLOCK_SKEW_MAX_MS`]); an odd `amount` puts
    /// the site behind, an even one ahead
    /// ([`crate::clock::signed_skew_ms`]). Monotonic clocks are untouched.
    /// Needs a lab started with `LabSpec::clock_skew`.
    ClockSkew,
}

impl FaultKind {
    /// Every kind, in a fixed order, the order of their declaration (the
    /// generator draws from the kinds switched on in that order, whatever
    /// order they were named in: `--faults a,b` and `--faults b,a` give
    /// the same schedule).
    pub const ALL: [FaultKind; 22] = [
        FaultKind::KillRouter,
        FaultKind::KillOrders,
        FaultKind::KillReplicator,
        FaultKind::KillPostgres,
        FaultKind::KillEtcdMember,
        FaultKind::PauseRouter,
        FaultKind::PauseOrders,
        FaultKind::PauseReplicator,
        FaultKind::PausePostgres,
        FaultKind::PauseEtcdMember,
        FaultKind::Partition,
        FaultKind::PartitionOneWay,
        FaultKind::PartitionEtcd,
        FaultKind::LatencySpike,
        FaultKind::Bandwidth,
        FaultKind::Reset,
        FaultKind::ShardSwitchover,
        FaultKind::SiteSwitchover,
        FaultKind::SwitchoverKilled,
        FaultKind::ForcedFailover,
        FaultKind::EtcdQuorumLoss,
        FaultKind::ClockSkew,
    ];

    /// The name `--faults` takes.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRouter => "kill-router",
            FaultKind::KillOrders => "kill-orders",
            FaultKind::KillReplicator => "kill-replicator",
            FaultKind::KillPostgres => "kill-postgres",
            FaultKind::KillEtcdMember => "kill-etcd-member",
            FaultKind::PauseRouter => "pause-router",
            FaultKind::PauseOrders => "pause-orders",
            FaultKind::PauseReplicator => "pause-replicator",
            FaultKind::PausePostgres => "pause-postgres",
            FaultKind::Partition => "partition",
            FaultKind::PartitionOneWay => "partition-one-way",
            FaultKind::PartitionEtcd => "partition-etcd",
            FaultKind::LatencySpike => "latency",
            FaultKind::Bandwidth => "bandwidth",
            FaultKind::Reset => "reset",
            FaultKind::ShardSwitchover => "shard-switchover",
            FaultKind::SiteSwitchover => "site-switchover",
            FaultKind::SwitchoverKilled => "switchover-killed",
            FaultKind::ForcedFailover => "forced-failover",
            FaultKind::EtcdQuorumLoss => "etcd-quorum-loss",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::PauseEtcdMember => "pause-etcd-member",
        }
    }

    /// A comma-separated list of names (`all` for every kind).
    pub fn parse_list(list: &str) -> Result<Vec<FaultKind>, String> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "all" {
                out.extend(FaultKind::ALL);
                continue;
            }
            match FaultKind::ALL.iter().find(|k| k.name() == name) {
                Some(k) => out.push(*k),
                None => {
                    return Err(format!(
                        "unknown fault kind {name:?}; the kinds are: all, {}",
                        FaultKind::ALL.map(FaultKind::name).join(", ")
                    ))
                }
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no fault kinds: name at least one (or `all`)".into());
        }
        Ok(out)
    }

    /// What the fault occupies while it lasts: two faults on one resource
    /// never overlap.
    fn resource(self, site: &str, other: Option<&str>) -> String {
        let wan = || {
            let (a, b) = match other {
                Some(o) if o < site => (o, site),
                Some(o) => (site, o),
                None => (site, site),
            };
            format!("wan:{a}-{b}")
        };
        match self {
            FaultKind::KillRouter | FaultKind::PauseRouter => format!("router:{site}"),
            FaultKind::KillOrders | FaultKind::PauseOrders => format!("orders:{site}"),
            FaultKind::KillReplicator | FaultKind::PauseReplicator => {
                format!("replicator:{site}")
            }
            FaultKind::KillPostgres | FaultKind::PausePostgres => format!("postgres:{site}"),
            FaultKind::KillEtcdMember | FaultKind::PauseEtcdMember | FaultKind::EtcdQuorumLoss => {
                "etcd".into()
            }
            FaultKind::PartitionEtcd => format!("etcd-path:{site}"),
            FaultKind::Partition
            | FaultKind::PartitionOneWay
            | FaultKind::LatencySpike
            | FaultKind::Bandwidth
            | FaultKind::Reset => wan(),
            // One switchover command at a time; a forced failover takes the
            // whole system's topology for its length.
            FaultKind::ShardSwitchover
            | FaultKind::SiteSwitchover
            | FaultKind::SwitchoverKilled
            | FaultKind::ForcedFailover => "switchover".into(),
            FaultKind::ClockSkew => format!("clock:{site}"),
        }
    }

    /// How long it lasts: (shortest, longest).
    fn span(self) -> (Duration, Duration) {
        let s = Duration::from_millis;
        match self {
            // Killed, then restarted after a while.
            FaultKind::KillRouter
            | FaultKind::KillOrders
            | FaultKind::KillReplicator
            | FaultKind::KillPostgres
            | FaultKind::KillEtcdMember => (s(500), s(4_000)),
            FaultKind::PauseRouter
            | FaultKind::PauseOrders
            | FaultKind::PauseReplicator
            | FaultKind::PausePostgres
            | FaultKind::PauseEtcdMember => (s(300), s(3_000)),
            FaultKind::Partition | FaultKind::PartitionOneWay | FaultKind::PartitionEtcd => {
                (s(1_000), s(8_000))
            }
            FaultKind::LatencySpike | FaultKind::Bandwidth => (s(1_000), s(6_000)),
            FaultKind::Reset => (s(0), s(0)),
            // The command's own length; the slot keeps the resource busy.
            FaultKind::ShardSwitchover | FaultKind::SwitchoverKilled => (s(2_000), s(4_000)),
            FaultKind::SiteSwitchover => (s(3_000), s(6_000)),
            // Postgres down, the forced failover (lease + skew), the return,
            // the repair.
            FaultKind::ForcedFailover => (s(15_000), s(25_000)),
            FaultKind::EtcdQuorumLoss => (s(1_000), s(5_000)),
            FaultKind::ClockSkew => (s(2_000), s(8_000)),
        }
    }

    /// Whether the fault needs a second site (a WAN link).
    fn needs_pair(self) -> bool {
        matches!(
            self,
            FaultKind::Partition
                | FaultKind::PartitionOneWay
                | FaultKind::LatencySpike
                | FaultKind::Bandwidth
                | FaultKind::Reset
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When it starts, from the start of the run.
    pub at: Duration,
    /// How long it lasts (0: a one-off, like a reset).
    pub lasts: Duration,
    pub kind: FaultKind,
    /// The site it hits (for etcd faults: the site whose member, by index).
    pub site: String,
    /// The other end, for a WAN fault (`site -> other` for a one-way cut).
    pub other: Option<String>,
    /// A kind-specific amount, drawn with the fault: extra latency or skew
    /// in ms, a bandwidth cap in KiB/s, the switchover step to kill at, a
    /// shard index.
    pub amount: u64,
}

impl Fault {
    /// When it is over.
    pub fn until(&self) -> Duration {
        self.at + self.lasts
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.3}s +{:>6.3}s  {:<18} ",
            self.at.as_secs_f64(),
            self.lasts.as_secs_f64(),
            self.kind.name(),
        )?;
        // etcd faults hit a member (by index), not a site.
        match self.kind {
            FaultKind::KillEtcdMember | FaultKind::PauseEtcdMember => {
                return write!(f, "member {}", self.amount)
            }
            FaultKind::EtcdQuorumLoss => return write!(f, "all but member {}", self.amount),
            _ => f.write_str(&self.site)?,
        }
        if let Some(o) = &self.other {
            write!(f, " -> {o}")?;
        }
        if self.amount > 0 {
            write!(f, " ({})", self.amount)?;
        }
        Ok(())
    }
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    pub seed: u64,
    /// The whole run, quiet period included.
    pub duration: Duration,
    /// The kinds switched on.
    pub kinds: Vec<FaultKind>,
    /// The sites, in a fixed order (at least one; WAN faults need two).
    pub sites: Vec<String>,
    /// Mean pause between two fault starts.
    pub mean_gap: Duration,
    /// At most this many faults at once.
    pub max_overlap: usize,
    /// From the heal to the end: the sites converge, liveness is checked.
    pub quiet: Duration,
}

impl ScheduleSpec {
    /// The defaults for a run of `duration` with every kind.
    pub fn new(seed: u64, duration: Duration, sites: &[&str]) -> ScheduleSpec {
        ScheduleSpec {
            seed,
            duration,
            kinds: FaultKind::ALL.to_vec(),
            sites: sites.iter().map(|s| s.to_string()).collect(),
            mean_gap: Duration::from_millis(1_500),
            max_overlap: 2,
            quiet: Duration::from_secs(10),
        }
    }

    /// When the heal comes: every fault is over by then.
    pub fn heal_at(&self) -> Duration {
        self.duration.saturating_sub(self.quiet)
    }
}

/// A whole schedule: the faults by start time, then the heal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub spec: ScheduleSpec,
    pub faults: Vec<Fault>,
}

impl Schedule {
    /// The distinct kinds the schedule uses.
    pub fn kinds(&self) -> Vec<FaultKind> {
        let mut k: Vec<FaultKind> = self.faults.iter().map(|f| f.kind).collect();
        k.sort();
        k.dedup();
        k
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "schedule: seed {} duration {:.0}s sites {} kinds {}",
            self.spec.seed,
            self.spec.duration.as_secs_f64(),
            self.spec.sites.join(","),
            self.spec
                .kinds
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(",")
        )?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        writeln!(
            f,
            "  {:>8.3}s          heal: every part up, every link clean; then {:.0}s quiet",
            self.spec.heal_at().as_secs_f64(),
            self.spec.quiet.as_secs_f64()
        )
    }
}

/// The schedule a spec gives: a pure function of it.
pub fn schedule(spec: &ScheduleSpec) -> Schedule {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let heal = spec.heal_at();
    let mut faults: Vec<Fault> = Vec::new();
    let usable: Vec<FaultKind> = spec
        .kinds
        .iter()
        .copied()
        .filter(|k| !k.needs_pair() || spec.sites.len() >= 2)
        .collect::<std::collections::BTreeSet<FaultKind>>()
        .into_iter()
        .collect();
    if usable.is_empty() || spec.sites.is_empty() || heal.is_zero() {
        return Schedule {
            spec: spec.clone(),
            faults,
        };
    }
    let gap_ms = spec.mean_gap.as_millis().max(1) as u64;
    let mut t = Duration::from_millis(rng.gen_range(0..=gap_ms));
    let mut forced = false;
    // A bounded number of draws: a crowded window ends the schedule early
    // rather than looping.
    for _ in 0..10_000 {
        if t >= heal {
            break;
        }
        let kind = usable[rng.gen_range(0..usable.len())];
        let site = spec.sites[rng.gen_range(0..spec.sites.len())].clone();
        let other = if kind.needs_pair() {
            let rest: Vec<&String> = spec.sites.iter().filter(|s| **s != site).collect();
            Some(rest[rng.gen_range(0..rest.len())].clone())
        } else {
            None
        };
        let (lo, hi) = kind.span();
        let lasts =
            Duration::from_millis(rng.gen_range(lo.as_millis() as u64..=hi.as_millis() as u64));
        let amount = match kind {
            FaultKind::LatencySpike => rng.gen_range(50..=400),
            FaultKind::Bandwidth => rng.gen_range(16..=256),
            // Within the ensemble's clock-skew bound (the design's
            // promise holds only inside it: docs/fence.md, "The lease").
            FaultKind::ClockSkew => rng.gen_range(100..=CLOCK_SKEW_MAX_MS),
            // Which member; for a quorum loss, the one left running.
            FaultKind::KillEtcdMember | FaultKind::PauseEtcdMember | FaultKind::EtcdQuorumLoss => {
                rng.gen_range(0..3)
            }
            FaultKind::SwitchoverKilled => rng.gen_range(0..7),
            FaultKind::ShardSwitchover => rng.gen_range(0..64),
            _ => 0,
        };
        let next = Duration::from_millis(rng.gen_range(1..=2 * gap_ms));
        let fault = Fault {
            at: t,
            lasts,
            kind,
            site,
            other,
            amount,
        };
        t += next;
        if !fits(&fault, &faults, spec, heal, forced) {
            continue;
        }
        forced |= kind == FaultKind::ForcedFailover;
        faults.push(fault);
    }
    Schedule {
        spec: spec.clone(),
        faults,
    }
}

/// Whether `f` may join `placed`: over before the heal, its resource free,
/// the overlap bound kept, the forced failover's rules.
fn fits(f: &Fault, placed: &[Fault], spec: &ScheduleSpec, heal: Duration, forced: bool) -> bool {
    if f.until() >= heal {
        return false;
    }
    if f.kind == FaultKind::ForcedFailover {
        let fifth = heal / 5;
        if forced || f.at < fifth || f.until() > heal - fifth {
            return false;
        }
    }
    let overlaps = |g: &Fault| f.at <= g.until() && g.at <= f.until();
    let resource = f.kind.resource(&f.site, f.other.as_deref());
    let active = placed.iter().filter(|g| overlaps(g)).count();
    if active >= spec.max_overlap {
        return false;
    }
    // A forced failover overlaps nothing else of its site's parts.
    let busy = placed.iter().filter(|g| overlaps(g)).any(|g| {
        g.kind.resource(&g.site, g.other.as_deref()) == resource
            || (g.kind == FaultKind::ForcedFailover && g.site == f.site)
            || (f.kind == FaultKind::ForcedFailover && g.site == f.site)
    });
    !busy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> ScheduleSpec {
        ScheduleSpec::new(seed, Duration::from_secs(120), &["beijing", "shanghai"])
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(schedule(&spec(7)), schedule(&spec(7)));
        assert_eq!(
            schedule(&spec(7)).to_string(),
            schedule(&spec(7)).to_string()
        );
        assert_ne!(schedule(&spec(7)).faults, schedule(&spec(8)).faults);
    }

    #[test]
    fn a_seed_gives_a_fixed_schedule_forever() {
        // The generator is ChaCha8 by its specification: a schedule printed
        // today replays tomorrow. Pinned: the first faults of seed 1 (a
        // change here breaks every seed ever reported).
        let s = schedule(&spec(1));
        let head: Vec<String> = s.faults.iter().take(3).map(|f| f.to_string()).collect();
        assert_eq!(
            head,
            [
                "   0.604s + 1.763s  latency            beijing -> shanghai (357)",
                "   2.336s + 1.703s  kill-replicator    beijing",
                "   3.529s + 1.148s  kill-router        beijing",
            ]
        );
        assert!(s.faults.len() >= 20, "{s}");
    }

    #[test]
    fn every_fault_ends_before_the_heal_and_keeps_the_rules() {
        for seed in 0..200 {
            let s = schedule(&spec(seed));
            let heal = s.spec.heal_at();
            let mut forced = 0;
            for (i, f) in s.faults.iter().enumerate() {
                assert!(f.until() < heal, "seed {seed}: {f}");
                if f.kind.needs_pair() {
                    assert!(
                        f.other.is_some() && f.other.as_deref() != Some(&f.site),
                        "{f}"
                    );
                }
                let overlapping: Vec<&Fault> = s
                    .faults
                    .iter()
                    .enumerate()
                    .filter(|(j, g)| *j != i && f.at <= g.until() && g.at <= f.until())
                    .map(|(_, g)| g)
                    .collect();
                let r = f.kind.resource(&f.site, f.other.as_deref());
                for g in &overlapping {
                    assert_ne!(
                        r,
                        g.kind.resource(&g.site, g.other.as_deref()),
                        "seed {seed}: {f} / {g}"
                    );
                }
                forced += usize::from(f.kind == FaultKind::ForcedFailover);
            }
            assert!(forced <= 1, "seed {seed}: {s}");
            // Starts are in order.
            assert!(s.faults.windows(2).all(|w| w[0].at <= w[1].at));
        }
    }

    #[test]
    fn every_kind_is_drawn_across_a_few_seeds() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..20 {
            seen.extend(schedule(&spec(seed)).kinds());
        }
        let missing: Vec<&str> = FaultKind::ALL
            .iter()
            .filter(|k| !seen.contains(k))
            .map(|k| k.name())
            .collect();
        assert!(missing.is_empty(), "never drawn: {missing:?}");
    }

    #[test]
    fn the_order_kinds_are_named_in_does_not_matter() {
        let mut a = spec(9);
        a.kinds = FaultKind::ALL.to_vec();
        let mut b = a.clone();
        b.kinds.reverse();
        assert_eq!(schedule(&a).faults, schedule(&b).faults);
        assert!(FaultKind::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn only_the_kinds_switched_on_are_drawn() {
        let mut s = spec(3);
        s.kinds = FaultKind::parse_list("kill-router,partition").unwrap();
        let got = schedule(&s).kinds();
        assert!(!got.is_empty());
        assert!(got
            .iter()
            .all(|k| [FaultKind::KillRouter, FaultKind::Partition].contains(k)));
        // One site: no WAN faults can be drawn.
        s.sites = vec!["beijing".into()];
        assert!(schedule(&s)
            .faults
            .iter()
            .all(|f| f.kind == FaultKind::KillRouter));
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse_list(k.name()).unwrap(), vec![k]);
        }
        assert_eq!(
            FaultKind::parse_list("all").unwrap().len(),
            FaultKind::ALL.len()
        );
        let e = FaultKind::parse_list("kill-router,nope").unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("kill-router"), "{e}");
        assert!(FaultKind::parse_list(" , ").is_err());
    }

    #[test]
    fn a_printed_schedule_says_everything_needed_to_replay_it() {
        let s = schedule(&spec(42));
        let text = s.to_string();
        assert!(
            text.starts_with("schedule: seed 42 duration 120s sites beijing,shanghai"),
            "{text}"
        );
        assert!(text.contains("heal:"), "{text}");
        assert_eq!(text.lines().count(), s.faults.len() + 2);
    }
}
