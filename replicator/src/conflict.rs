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

use std::time::SystemTime;

use ezone_topology::{ShardId, Topology};
use serde::Deserialize;

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
}
