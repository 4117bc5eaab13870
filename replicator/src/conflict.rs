//! Conflict rules: which shard a row belongs to, who owns it, and what a
//! named policy does about a conflict. Pure: the topology and the row values
//! in, a decision out.
//!
//! A table takes part in ownership checks when the replicator config names
//! its *shard key column* (a city id or a user id, as the router extracts
//! them): the row's shard is the topology's routing of that value, and its
//! owner is that shard's home.
//!
//! Policies:
//! - `owner_wins` (default): a change from a site that does not own the row's
//!   shard is recorded and not applied; when a row already exists, the owner's
//!   version is the one kept.
//! - `last_writer_wins`: the version with the later commit time is kept; on a
//!   tie, the site whose name sorts first wins (deterministic at every site).
//!
//! Either way the conflict is recorded with both versions: nothing is
//! silently overwritten or dropped.
//!
//! [`decide`] is the whole of what the careful path does with a row change
//! (`crate::apply`'s `careful.rs` only reads and writes what it says):
//!
//! ```text
//!  change ── decide(Unwritten) ── foreign, owner_wins ──▶ record foreign_shard, skip
//!               │                 foreign, last_writer_wins ▶ record foreign_shard, write
//!               ▼ write
//!  written ── decide(Touched) ──▶ applied
//!          └─ decide(Untouched) ─ insert: the key exists ─▶ record insert_exists,
//!                                   overwrite or keep (policy; commit times, site names)
//!                                 update, delete: no row ─▶ record *_missing, not applied
//! ```

use std::borrow::Cow;
use std::time::SystemTime;

use ezone_topology::{ShardId, Topology};
use serde::Deserialize;

use crate::ownership::Verdict;

/// What a table's shard key column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    City,
    User,
}

/// A table's shard key: the column and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardKey {
    pub column: String,
    pub kind: KeyKind,
}

/// A named conflict policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    #[default]
    OwnerWins,
    LastWriterWins,
}

/// What to do with the source's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    ApplySource,
    KeepTarget,
}

impl Resolution {
    /// As recorded in `ezone_replication.conflicts.resolution`.
    pub fn as_str(self, policy: Policy) -> &'static str {
        match (policy, self) {
            (Policy::OwnerWins, Resolution::ApplySource) => "owner_wins:applied_source",
            (Policy::OwnerWins, Resolution::KeepTarget) => "owner_wins:kept_target",
            (Policy::LastWriterWins, Resolution::ApplySource) => "last_writer_wins:applied_source",
            (Policy::LastWriterWins, Resolution::KeepTarget) => "last_writer_wins:kept_target",
        }
    }
}

/// The operation of the incoming change a conflict is about, as recorded in
/// `ezone_replication.conflicts.op`. Only row changes are recorded as
/// conflicts (a truncate or a message never is), so these are all the kinds.
///
/// The `kind` of a conflict says what went wrong (`foreign_shard`,
/// `insert_exists`, ...); the op says what the source did. Repair needs the
/// latter: a DELETE under `REPLICA IDENTITY FULL` sends the whole old row,
/// which otherwise looks like an insert's new row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// As recorded in `ezone_replication.conflicts.op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
        }
    }

    /// The recorded text back (`None` for anything else).
    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "insert" => Some(Op::Insert),
            "update" => Some(Op::Update),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shard a row's key value maps to.
pub fn shard_of(t: &Topology, key: &ShardKey, value: &str) -> Option<ShardId> {
    match key.kind {
        KeyKind::City => t.city_shard(value).map(|s| s.id),
        KeyKind::User => t.user_shard(value).map(|s| s.id),
    }
}

/// The home site of the shard a row's key value maps to.
pub fn owner<'t>(t: &'t Topology, key: &ShardKey, value: &str) -> Option<&'t str> {
    let id = shard_of(t, key, value)?;
    t.shards.get(&id).map(|s| s.home.as_str())
}

/// The ownership verdict on a change, as the conflict rules need it.
///
/// Decided from the verdict itself ([`crate::ownership::judge`]), never by
/// comparing the source's name with the shard's home now: a site's own
/// tail from before it lost a shard in a forced failover is foreign even
/// when the shard has since come back to it (its home is the source again,
/// but the survivor never had those writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    /// The source may write the row's shard under the change's epoch.
    Owner,
    /// It may not: the change is a conflict.
    Foreign,
    /// Not judged (the table has no shard key, the key maps to no shard,
    /// or the applier has no topology).
    Unjudged,
}

impl Right {
    /// The conflict rules' reading of a verdict (`None`: not judged). The
    /// verdict decides, not the name of the home it carries.
    pub fn of(verdict: Option<&Verdict>) -> Right {
        match verdict {
            Some(Verdict::Owner) => Right::Owner,
            Some(Verdict::Foreign { .. }) => Right::Foreign,
            // judge() answers the other two only to be asked again.
            Some(Verdict::AwaitView { .. } | Verdict::NeedHistory) | None => Right::Unjudged,
        }
    }
}

/// A change the source made with `right`: `None` applies it as usual, else
/// it is a conflict, resolved as returned.
pub fn resolve_foreign(policy: Policy, right: Right) -> Option<Resolution> {
    match right {
        Right::Foreign => Some(match policy {
            Policy::OwnerWins => Resolution::KeepTarget,
            // Timestamps decide existing rows; a change to a foreign shard
            // with no competing version is applied, and recorded.
            Policy::LastWriterWins => Resolution::ApplySource,
        }),
        Right::Owner | Right::Unjudged => None,
    }
}

/// The source inserts a row that exists at the target.
pub fn resolve_exists(
    policy: Policy,
    source_site: &str,
    target_site: &str,
    right: Right,
    source_commit: SystemTime,
    target_commit: Option<SystemTime>,
) -> Resolution {
    match policy {
        Policy::OwnerWins => {
            if right == Right::Owner {
                Resolution::ApplySource
            } else {
                Resolution::KeepTarget
            }
        }
        Policy::LastWriterWins => match target_commit {
            // Unknown target time (track_commit_timestamp off): keep what
            // is there, and say so in the record.
            None => Resolution::KeepTarget,
            Some(t) if source_commit > t => Resolution::ApplySource,
            Some(t) if source_commit < t => Resolution::KeepTarget,
            Some(_) => {
                if source_site < target_site {
                    Resolution::ApplySource
                } else {
                    Resolution::KeepTarget
                }
            }
        },
    }
}

/// What went wrong, as recorded in `ezone_replication.conflicts.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The source did not own the row's shard under the change's epoch.
    ForeignShard,
    /// An insert whose key exists at the target.
    InsertExists,
    /// An update whose row is missing at the target.
    UpdateMissing,
    /// A delete whose row is missing at the target.
    DeleteMissing,
}

impl Kind {
    /// As recorded in `ezone_replication.conflicts.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ForeignShard => "foreign_shard",
            Kind::InsertExists => "insert_exists",
            Kind::UpdateMissing => "update_missing",
            Kind::DeleteMissing => "delete_missing",
        }
    }

    /// As recorded in `ezone_replication.conflicts.reason`: fixed for a
    /// row that exists or is missing; for a foreign shard, the ownership
    /// verdict's (which epoch, which failover), or failing that the source.
    pub fn reason<'v>(self, verdict: Option<&'v Verdict>, source_site: &str) -> Cow<'v, str> {
        match self {
            Kind::ForeignShard => match verdict {
                Some(Verdict::Foreign { reason, .. }) => Cow::Borrowed(reason),
                // Right::of says Foreign only for a foreign verdict.
                _ => Cow::Owned(format!(
                    "the change was made at {source_site}, which did not own the row's shard"
                )),
            },
            Kind::InsertExists => "a row with this key already exists at the target".into(),
            Kind::UpdateMissing => "the row to update does not exist at the target".into(),
            Kind::DeleteMissing => "the row to delete does not exist at the target".into(),
        }
    }
}

/// The resolution recorded for an update or delete whose row is missing:
/// there is nothing to keep or overwrite, so the change is not applied.
pub const NOT_APPLIED: &str = "recorded:not_applied";

/// An incoming row change and who may make it: what [`decide`] rules on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    pub policy: Policy,
    pub op: Op,
    /// The ownership verdict's reading ([`Right::of`]).
    pub right: Right,
    pub source_site: &'a str,
    pub target_site: &'a str,
    /// The source transaction's commit time.
    pub source_commit: SystemTime,
}

impl Facts<'_> {
    /// Whether [`decide`] needs the target row's commit time for
    /// [`Found::Untouched`]: only `last_writer_wins` compares times, and
    /// only an existing row (an insert's) has one.
    pub fn wants_target_commit(&self) -> bool {
        self.policy == Policy::LastWriterWins && self.op == Op::Insert
    }
}

/// What the careful path knows of the target's row when it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// The change is not written yet: ownership is decided first.
    Unwritten,
    /// The change was written and touched its row.
    Touched,
    /// The change touched no row: an insert's key exists, an update's or a
    /// delete's row is missing. `target_commit`: the existing row's commit
    /// time, when known and asked for ([`Facts::wants_target_commit`]).
    Untouched { target_commit: Option<SystemTime> },
}

/// What to do with the change next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Write it as it came.
    Write,
    /// It is applied: a row written.
    Applied,
    /// Leave the target as it is: the change is not applied.
    Skip,
    /// Write the source's version over the existing row (an insert whose
    /// key exists, as an update).
    Overwrite,
}

/// A conflict to record: its kind and the resolution taken, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict {
    pub kind: Kind,
    pub resolution: &'static str,
}

/// What [`decide`] says: the conflict to record, if any, and what next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub record: Option<Conflict>,
    pub then: Then,
}

/// The conflict rules for one row change, given what is known of the
/// target's row (see the module docs' diagram). Asked with
/// [`Found::Unwritten`] before the change is written (ownership: a foreign
/// change is recorded whatever else happens, and written only under
/// `last_writer_wins`), then with what the write found. The fast path takes
/// a batch only when this asks for nothing but writes and applied rows.
pub fn decide(f: &Facts<'_>, found: Found) -> Decision {
    let conflict = |kind, resolution| Some(Conflict { kind, resolution });
    match found {
        Found::Unwritten => match resolve_foreign(f.policy, f.right) {
            None => Decision {
                record: None,
                then: Then::Write,
            },
            Some(res) => Decision {
                record: conflict(Kind::ForeignShard, res.as_str(f.policy)),
                then: match res {
                    Resolution::ApplySource => Then::Write,
                    Resolution::KeepTarget => Then::Skip,
                },
            },
        },
        Found::Touched => Decision {
            record: None,
            then: Then::Applied,
        },
        Found::Untouched { target_commit } => match f.op {
            Op::Insert => {
                let res = resolve_exists(
                    f.policy,
                    f.source_site,
                    f.target_site,
                    f.right,
                    f.source_commit,
                    target_commit,
                );
                Decision {
                    record: conflict(Kind::InsertExists, res.as_str(f.policy)),
                    then: match res {
                        Resolution::ApplySource => Then::Overwrite,
                        Resolution::KeepTarget => Then::Skip,
                    },
                }
            }
            Op::Update => Decision {
                record: conflict(Kind::UpdateMissing, NOT_APPLIED),
                then: Then::Skip,
            },
            Op::Delete => Decision {
                record: conflict(Kind::DeleteMissing, NOT_APPLIED),
                then: Then::Skip,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::starter::starter;
    use std::time::Duration;

    #[test]
    fn owner_of_a_city_and_a_user() {
        let t = starter(&["beijing", "shanghai"], 2);
        let city = ShardKey {
            column: "city".into(),
            kind: KeyKind::City,
        };
        assert_eq!(owner(&t, &city, "010"), Some("beijing"));
        assert_eq!(owner(&t, &city, "021"), Some("shanghai"));
        assert_eq!(owner(&t, &city, "nowhere"), None);
        let user = ShardKey {
            column: "uid".into(),
            kind: KeyKind::User,
        };
        let home = t.user_shard("alice").map(|s| s.home.clone());
        assert_eq!(owner(&t, &user, "alice").map(str::to_string), home);
    }

    #[test]
    fn ops_round_trip_through_their_recorded_text() {
        for op in [Op::Insert, Op::Update, Op::Delete] {
            assert_eq!(Op::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!(Op::Delete.as_str(), "delete");
        assert_eq!(Op::parse("truncate"), None);
        assert_eq!(Op::parse("DELETE"), None);
        assert_eq!(Op::parse(""), None);
    }

    #[test]
    fn foreign_changes() {
        assert_eq!(
            resolve_foreign(Policy::OwnerWins, Right::Foreign),
            Some(Resolution::KeepTarget)
        );
        assert_eq!(resolve_foreign(Policy::OwnerWins, Right::Owner), None);
        assert_eq!(resolve_foreign(Policy::OwnerWins, Right::Unjudged), None);
        assert_eq!(
            resolve_foreign(Policy::LastWriterWins, Right::Foreign),
            Some(Resolution::ApplySource)
        );
        assert_eq!(resolve_foreign(Policy::LastWriterWins, Right::Owner), None);
    }

    #[test]
    fn existing_rows() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(1);
        use Resolution::*;
        let cases = [
            (
                Policy::OwnerWins,
                "beijing",
                "shanghai",
                Right::Owner,
                t0,
                Some(t1),
                ApplySource,
            ),
            (
                Policy::OwnerWins,
                "beijing",
                "shanghai",
                Right::Foreign,
                t1,
                Some(t0),
                KeepTarget,
            ),
            (
                Policy::OwnerWins,
                "beijing",
                "shanghai",
                Right::Unjudged,
                t1,
                Some(t0),
                KeepTarget,
            ),
            (
                Policy::LastWriterWins,
                "beijing",
                "shanghai",
                Right::Unjudged,
                t1,
                Some(t0),
                ApplySource,
            ),
            (
                Policy::LastWriterWins,
                "beijing",
                "shanghai",
                Right::Unjudged,
                t0,
                Some(t1),
                KeepTarget,
            ),
            (
                Policy::LastWriterWins,
                "beijing",
                "shanghai",
                Right::Unjudged,
                t0,
                Some(t0),
                ApplySource,
            ),
            (
                Policy::LastWriterWins,
                "shanghai",
                "beijing",
                Right::Unjudged,
                t0,
                Some(t0),
                KeepTarget,
            ),
            (
                Policy::LastWriterWins,
                "beijing",
                "shanghai",
                Right::Unjudged,
                t1,
                None,
                KeepTarget,
            ),
        ];
        for (p, s, tg, o, sc, tc, want) in cases {
            assert_eq!(
                resolve_exists(p, s, tg, o, sc, tc),
                want,
                "{p:?} {s} {tg} {o:?}"
            );
        }
    }

    /// The clocks of an insert that found its key, as `last_writer_wins`
    /// sees them.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Clock {
        /// The target row's commit time is not known.
        Unknown,
        SourceLater,
        SourceEarlier,
        /// The same commit time; whether the source's name sorts first.
        Tie {
            source_first: bool,
        },
    }

    /// What a row of the table matches on the target's row.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Seen {
        Unwritten,
        Touched,
        /// Untouched, with these clocks (`None`: any).
        Untouched(Option<Clock>),
    }

    type Want = (Option<(&'static str, &'static str)>, Then);

    /// A rule: policy, op, right (`None`: any), what the write found, and
    /// what is recorded (kind, resolution) and done.
    type Rule = (Option<Policy>, Option<Op>, Option<Right>, Seen, Want);

    /// Every rule, one row each.
    #[rustfmt::skip]
    fn table() -> Vec<Rule> {
        use Clock::*;
        use Policy::*;
        use Right::*;
        use Then::*;
        let (ow, lww) = (Some(OwnerWins), Some(LastWriterWins));
        let (ins, upd, del) = (Some(Op::Insert), Some(Op::Update), Some(Op::Delete));
        let any = Seen::Untouched(None);
        let at = |c| Seen::Untouched(Some(c));
        vec![
            // Ownership, before anything is written.
            (ow,   None, Some(Foreign),  Seen::Unwritten, (Some(("foreign_shard", "owner_wins:kept_target")), Skip)),
            (lww,  None, Some(Foreign),  Seen::Unwritten, (Some(("foreign_shard", "last_writer_wins:applied_source")), Write)),
            (None, None, Some(Owner),    Seen::Unwritten, (None, Write)),
            (None, None, Some(Unjudged), Seen::Unwritten, (None, Write)),
            // The write touched its row.
            (None, None, None,           Seen::Touched,   (None, Applied)),
            // No row to update or delete: recorded, whoever owns it.
            (None, upd,  None,           any,             (Some(("update_missing", "recorded:not_applied")), Skip)),
            (None, del,  None,           any,             (Some(("delete_missing", "recorded:not_applied")), Skip)),
            // The key exists: owner_wins keeps the target's but for the owner.
            (ow,   ins,  Some(Owner),    any,             (Some(("insert_exists", "owner_wins:applied_source")), Overwrite)),
            (ow,   ins,  Some(Foreign),  any,             (Some(("insert_exists", "owner_wins:kept_target")), Skip)),
            (ow,   ins,  Some(Unjudged), any,             (Some(("insert_exists", "owner_wins:kept_target")), Skip)),
            // last_writer_wins: the later commit, whoever owns it; a tie to
            // the site whose name sorts first; an unknown time keeps the row.
            (lww,  ins,  None,           at(SourceLater),   (Some(("insert_exists", "last_writer_wins:applied_source")), Overwrite)),
            (lww,  ins,  None,           at(SourceEarlier), (Some(("insert_exists", "last_writer_wins:kept_target")), Skip)),
            (lww,  ins,  None,           at(Unknown),       (Some(("insert_exists", "last_writer_wins:kept_target")), Skip)),
            (lww,  ins,  None,           at(Tie { source_first: true }),  (Some(("insert_exists", "last_writer_wins:applied_source")), Overwrite)),
            (lww,  ins,  None,           at(Tie { source_first: false }), (Some(("insert_exists", "last_writer_wins:kept_target")), Skip)),
        ]
    }

    #[test]
    fn every_change_is_decided_by_exactly_one_rule_of_the_table() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(1);
        let table = table();
        let mut used = vec![0usize; table.len()];
        let mut cases = 0;
        for policy in [Policy::OwnerWins, Policy::LastWriterWins] {
            for op in [Op::Insert, Op::Update, Op::Delete] {
                for right in [Right::Owner, Right::Foreign, Right::Unjudged] {
                    for (source, target) in [("beijing", "shanghai"), ("shanghai", "beijing")] {
                        let mut found = vec![
                            (Found::Unwritten, Seen::Unwritten),
                            (Found::Touched, Seen::Touched),
                        ];
                        for (target_commit, clock) in [
                            (None, Clock::Unknown),
                            (Some(t0), Clock::SourceLater),
                            (Some(t1 + Duration::from_secs(1)), Clock::SourceEarlier),
                            (
                                Some(t1),
                                Clock::Tie {
                                    source_first: source < target,
                                },
                            ),
                        ] {
                            found.push((
                                Found::Untouched { target_commit },
                                Seen::Untouched(Some(clock)),
                            ));
                        }
                        for (found, seen) in found {
                            let facts = Facts {
                                policy,
                                op,
                                right,
                                source_site: source,
                                target_site: target,
                                source_commit: t1,
                            };
                            let rules: Vec<usize> = (0..table.len())
                                .filter(|&i| {
                                    let (p, o, r, s, _) = table[i];
                                    p.is_none_or(|p| p == policy)
                                        && o.is_none_or(|o| o == op)
                                        && r.is_none_or(|r| r == right)
                                        && match (s, seen) {
                                            (Seen::Untouched(None), Seen::Untouched(_)) => true,
                                            (s, seen) => s == seen,
                                        }
                                })
                                .collect();
                            let case =
                                format!("{policy:?} {op} {right:?} {source}->{target} {seen:?}");
                            assert_eq!(rules.len(), 1, "{case}: rules {rules:?}");
                            used[rules[0]] += 1;
                            let (record, then) = table[rules[0]].4;
                            let got = decide(&facts, found);
                            assert_eq!(
                                got.record.map(|c| (c.kind.as_str(), c.resolution)),
                                record,
                                "{case}"
                            );
                            assert_eq!(got.then, then, "{case}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 3 * 3 * 2 * 6);
        assert!(
            used.iter().all(|&n| n > 0),
            "a rule no case reaches: {used:?}"
        );
    }

    #[test]
    fn only_last_writer_wins_reads_an_existing_rows_commit_time() {
        for policy in [Policy::OwnerWins, Policy::LastWriterWins] {
            for op in [Op::Insert, Op::Update, Op::Delete] {
                let facts = Facts {
                    policy,
                    op,
                    right: Right::Unjudged,
                    source_site: "beijing",
                    target_site: "shanghai",
                    source_commit: SystemTime::UNIX_EPOCH,
                };
                assert_eq!(
                    facts.wants_target_commit(),
                    policy == Policy::LastWriterWins && op == Op::Insert,
                    "{policy:?} {op}"
                );
            }
        }
    }

    #[test]
    fn reasons_are_recorded_as_before() {
        let foreign = Verdict::Foreign {
            home: "shanghai".into(),
            reason: "lost in the forced failover at epoch 7".into(),
        };
        assert_eq!(
            Kind::ForeignShard.reason(Some(&foreign), "beijing"),
            "lost in the forced failover at epoch 7"
        );
        assert_eq!(
            Kind::ForeignShard.reason(None, "beijing"),
            "the change was made at beijing, which did not own the row's shard"
        );
        assert_eq!(
            Kind::InsertExists.reason(None, "beijing"),
            "a row with this key already exists at the target"
        );
        assert_eq!(
            Kind::UpdateMissing.reason(None, "beijing"),
            "the row to update does not exist at the target"
        );
        assert_eq!(
            Kind::DeleteMissing.reason(Some(&foreign), "beijing"),
            "the row to delete does not exist at the target"
        );
    }

    #[test]
    fn a_verdict_is_read_by_its_variant() {
        let foreign = Verdict::Foreign {
            home: "beijing".into(),
            reason: String::new(),
        };
        assert_eq!(Right::of(Some(&Verdict::Owner)), Right::Owner);
        // Even when the home it names is the source itself.
        assert_eq!(Right::of(Some(&foreign)), Right::Foreign);
        assert_eq!(Right::of(Some(&Verdict::NeedHistory)), Right::Unjudged);
        assert_eq!(
            Right::of(Some(&Verdict::AwaitView { epoch: 3 })),
            Right::Unjudged
        );
        assert_eq!(Right::of(None), Right::Unjudged);
    }
}
