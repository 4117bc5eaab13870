//! Validation of a topology, alone and as a successor of the previous one.
//!
//! Every problem is reported (not just the first), each naming the thing, the
//! value and what would fix it. A watcher refuses a snapshot with any problem
//! and keeps serving the last good one.

use std::collections::BTreeSet;
use std::fmt;

use crate::model::{Epoch, ShardId, Topology, INITIAL_EPOCH};

/// One thing wrong with a topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the topology has no sites: add at least one [[sites]] entry")]
    NoSites,
    #[error("site name {name:?} is invalid: use 1-64 characters of a-z, 0-9, '-' or '_'")]
    BadSiteName { name: String },
    #[error("site {name:?} is defined more than once: site names must be unique")]
    DuplicateSite { name: String },
    #[error(
        "site stored under key {key:?} calls itself {name:?}: the key and the name must match"
    )]
    SiteKeyMismatch { key: String, name: String },
    #[error("site {site:?} has an empty {field}: set it")]
    EmptySiteField { site: String, field: &'static str },
    #[error("site {site:?}: the postgres DSN's password is `***`, a copy redacted by `ezone topo show`: put the real password back (`ezone topo show --json --reveal-secrets` prints it)")]
    RedactedPassword { site: String },
    #[error("site {site:?}: the postgres DSN is not one every process can use: {why}")]
    BadDsn { site: String, why: String },
    #[error("site {site:?}: the postgres DSN holds a password, and the topology is read by every process at every site (and kept in etcd): remove it, and give each process the password locally: a password file (PGPASSFILE, ~/.pgpass, or passfile=/path in the DSN) or PGPASSWORD in its environment")]
    PasswordInTopology { site: String },
    #[error("site {site:?} lists router {addr} more than once (router and more_routers): list each instance once")]
    DuplicateRouter { site: String, addr: String },
    #[error("shard {id} is defined more than once: shard ids must be unique")]
    DuplicateShard { id: ShardId },
    #[error("shard stored under key {key} calls itself {id}: the key and the id must match")]
    ShardKeyMismatch { key: ShardId, id: ShardId },
    #[error("shard {id} has home {home:?}, which is not a site (sites: {known}): fix the home or add the site")]
    UnknownHome {
        id: ShardId,
        home: String,
        known: String,
    },
    #[error("shard {id} has epoch 0: epochs start at 1")]
    ZeroEpoch { id: ShardId },
    #[error("city {city:?} maps to shard {shard}, which does not exist: add the shard or remap the city")]
    CityToMissingShard { city: String, shard: ShardId },
    #[error("city id {city:?} is invalid: use 1-64 printable ASCII characters without spaces")]
    BadCityId { city: String },
    #[error("user_shards lists shard {shard}, which does not exist: add the shard or remove it from user_shards")]
    UserShardMissing { shard: ShardId },
    #[error("user_shards lists shard {shard} more than once: each shard at most once")]
    UserShardDuplicate { shard: ShardId },
    #[error("user_shards is empty but there are shards: list the shards that user ids hash onto")]
    NoUserShards,
    #[error("settings.default_site is {site:?}, which is not a site: fix it or remove it")]
    UnknownDefaultSite { site: String },
    #[error("settings.write_hold_ms is 0: writes for a frozen shard would fail at once; use at least 1 (default 2000)")]
    ZeroWriteHold,
    #[error("settings.fence_lease_ms is {0}: a lease that short lapses between renewals; use 0 (no lease) or at least 1000 (default 10000)")]
    ShortFenceLease(u64),
    #[error(
        "shard {id}'s epoch went backwards from {from} to {to}: epochs only grow (a stale writer?)"
    )]
    EpochBackwards { id: ShardId, from: Epoch, to: Epoch },
    #[error("shard {id} changed {what} without an epoch bump (still {epoch}): every change of home or state bumps the epoch")]
    ChangeWithoutEpochBump {
        id: ShardId,
        what: &'static str,
        epoch: Epoch,
    },
    #[error("shard {id} was removed: a shard, once created, stays (move it instead)")]
    ShardRemoved { id: ShardId },
}

/// All the problems of a topology that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub Vec<Problem>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid topology ({} problem", self.0.len())?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

fn valid_site_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn valid_city_id(city: &str) -> bool {
    !city.is_empty() && city.len() <= 64 && city.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks a topology on its own.
pub fn validate(t: &Topology) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    if t.sites.is_empty() {
        problems.push(Problem::NoSites);
    }
    for (key, site) in &t.sites {
        if key != &site.name {
            problems.push(Problem::SiteKeyMismatch {
                key: key.clone(),
                name: site.name.clone(),
            });
        }
        if !valid_site_name(&site.name) {
            problems.push(Problem::BadSiteName {
                name: site.name.clone(),
            });
        }
        if site.router.trim().is_empty() || site.more_routers.iter().any(|r| r.trim().is_empty()) {
            problems.push(Problem::EmptySiteField {
                site: site.name.clone(),
                field: "router",
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = site.routers().find(|r| !seen.insert(r.as_str())) {
            problems.push(Problem::DuplicateRouter {
                site: site.name.clone(),
                addr: twice.clone(),
            });
        }
        if site.postgres.trim().is_empty() {
            problems.push(Problem::EmptySiteField {
                site: site.name.clone(),
                field: "postgres",
            });
        }
        if redacted_password(&site.postgres) {
            problems.push(Problem::RedactedPassword {
                site: site.name.clone(),
            });
        }
    }
    let known = t.sites.keys().cloned().collect::<Vec<_>>().join(", ");
    for (key, shard) in &t.shards {
        if *key != shard.id {
            problems.push(Problem::ShardKeyMismatch {
                key: *key,
                id: shard.id,
            });
        }
        if !t.sites.contains_key(&shard.home) {
            problems.push(Problem::UnknownHome {
                id: shard.id,
                home: shard.home.clone(),
                known: known.clone(),
            });
        }
        if shard.epoch < INITIAL_EPOCH {
            problems.push(Problem::ZeroEpoch { id: shard.id });
        }
    }
    for (city, shard) in &t.routing.cities {
        if !valid_city_id(city) {
            problems.push(Problem::BadCityId { city: city.clone() });
        }
        if !t.shards.contains_key(shard) {
            problems.push(Problem::CityToMissingShard {
                city: city.clone(),
                shard: *shard,
            });
        }
    }
    let mut seen = BTreeSet::new();
    for shard in &t.routing.user_shards {
        if !seen.insert(*shard) {
            problems.push(Problem::UserShardDuplicate { shard: *shard });
        }
        if !t.shards.contains_key(shard) {
            problems.push(Problem::UserShardMissing { shard: *shard });
        }
    }
    if t.routing.user_shards.is_empty() && !t.shards.is_empty() {
        problems.push(Problem::NoUserShards);
    }
    if let Some(site) = &t.settings.default_site {
        if !t.sites.contains_key(site) {
            problems.push(Problem::UnknownDefaultSite { site: site.clone() });
        }
    }
    if t.settings.fence_lease_ms != 0 && t.settings.fence_lease_ms < 1_000 {
        problems.push(Problem::ShortFenceLease(t.settings.fence_lease_ms));
    }
    if t.settings.write_hold_ms == 0 {
        problems.push(Problem::ZeroWriteHold);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

/// Checks `next` on its own and as the successor of `prev`: epochs never go
/// backwards, a change of home or state bumps the epoch, shards are not removed.
pub fn validate_transition(prev: &Topology, next: &Topology) -> Result<(), Invalid> {
    let mut problems = match validate(next) {
        Ok(()) => Vec::new(),
        Err(Invalid(p)) => p,
    };
    for (id, old) in &prev.shards {
        let Some(new) = next.shards.get(id) else {
            problems.push(Problem::ShardRemoved { id: *id });
            continue;
        };
        if new.epoch < old.epoch {
            problems.push(Problem::EpochBackwards {
                id: *id,
                from: old.epoch,
                to: new.epoch,
            });
        } else if new.epoch == old.epoch {
            let what = if new.home != old.home {
                Some("home")
            } else if new.state != old.state {
                Some("state")
            } else {
                None
            };
            if let Some(what) = what {
                problems.push(Problem::ChangeWithoutEpochBump {
                    id: *id,
                    what,
                    epoch: new.epoch,
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

/// A DSN whose password is the `***` that `ezone topo show` prints in
/// place of it (keyword form `password=***` or `password='***'`, URI form
/// `user:***@`): written back, every part would fail to log in.
/// What must not be *written* into a topology: a password in a site's DSN
/// (the topology is read by every process at every site, and kept in etcd).
/// Checked where a topology is written from a file (`ezone topo init`,
/// `topo validate`), not on reads: a topology written by an older version
/// keeps working while it is moved out.
///
/// Also checked there: that each site's DSN parses as every process will
/// parse it (its keys, `sslmode`, paired `sslcert`/`sslkey`), reading no
/// file, as the files are each host's.
pub fn secrets(t: &Topology) -> Result<(), Invalid> {
    let mut problems: Vec<Problem> = t
        .sites
        .values()
        .filter_map(|site| {
            ezone_pg::Dsn::check(&site.postgres)
                .err()
                .map(|e| Problem::BadDsn {
                    site: site.name.clone(),
                    why: e.to_string(),
                })
        })
        .collect();
    problems.extend(
        t.sites
            .values()
            .filter(|site| ezone_pg::dsn::names_password(&site.postgres))
            .filter(|site| !redacted_password(&site.postgres))
            .map(|site| Problem::PasswordInTopology {
                site: site.name.clone(),
            }),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

fn redacted_password(dsn: &str) -> bool {
    let d = dsn.replace(' ', "");
    d.contains("password=***") || d.contains("password='***'") || d.contains(":***@")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Shard, ShardState};
    use crate::starter::starter;
    use proptest::prelude::*;

    fn two_sites() -> Topology {
        starter(&["beijing", "shanghai"], 2)
    }

    #[test]
    fn starter_is_valid() {
        validate(&two_sites()).unwrap();
    }

    #[test]
    fn unknown_home_is_named() {
        let mut t = two_sites();
        t.shards.get_mut(&1).unwrap().home = "guangzhou".into();
        let err = validate(&t).unwrap_err();
        assert_eq!(
            err.0,
            vec![Problem::UnknownHome {
                id: 1,
                home: "guangzhou".into(),
                known: "beijing, shanghai".into()
            }]
        );
        assert!(err.to_string().contains("guangzhou"));
    }

    #[test]
    fn a_dsn_that_does_not_parse_is_not_written_into_the_topology() {
        let mut t = two_sites();
        t.sites.get_mut("beijing").unwrap().postgres =
            "host=db user=ezone dbname=ezone sslmode=verify_full".into();
        let e = secrets(&t).unwrap_err();
        assert!(
            matches!(&e.0[..], [Problem::BadDsn { site, why }] if site == "beijing" && why.contains("sslmode")),
            "{e}"
        );
    }

    #[test]
    fn a_password_is_not_written_into_the_topology() {
        for (dsn, refused) in [
            ("host=db user=ezone password=s3cret dbname=ezone", true),
            ("postgresql://ezone:s3cret@db/ezone", true),
            (
                "host=db user=ezone dbname=ezone passfile=/etc/ezone/pgpass",
                false,
            ),
            ("host=db user=ezone dbname=ezone sslmode=verify-full", false),
        ] {
            let mut t = two_sites();
            t.sites.get_mut("beijing").unwrap().postgres = dsn.into();
            validate(&t).expect("a topology with a password still loads (older writers)");
            match secrets(&t) {
                Err(e) if refused => {
                    assert_eq!(
                        e.0,
                        vec![Problem::PasswordInTopology {
                            site: "beijing".into()
                        }]
                    );
                    assert!(e.to_string().contains("PGPASSFILE"), "{e}");
                }
                Ok(()) if !refused => {}
                other => panic!("{dsn}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_redacted_password_is_refused() {
        for dsn in [
            "host=db user=ezone password=*** dbname=ezone",
            "host=db password = '***' dbname=ezone",
            "postgres://ezone:***@db/ezone",
        ] {
            let mut t = two_sites();
            t.sites.get_mut("beijing").unwrap().postgres = dsn.into();
            assert_eq!(
                validate(&t).unwrap_err().0,
                vec![Problem::RedactedPassword {
                    site: "beijing".into()
                }],
                "{dsn}"
            );
        }
        let mut t = two_sites();
        t.sites.get_mut("beijing").unwrap().postgres =
            "host=db user=ezone password=s3cr3t*** dbname=ezone".into();
        validate(&t).unwrap();
    }

    #[test]
    fn a_site_may_list_more_routers_each_once() {
        let mut t = two_sites();
        let bj = t.sites.get_mut("beijing").unwrap();
        bj.more_routers = vec!["10.0.0.2:8080".into(), "10.0.0.3:8080".into()];
        validate(&t).unwrap();
        let bj = t.sites.get_mut("beijing").unwrap();
        assert_eq!(
            bj.routers().collect::<Vec<_>>(),
            ["beijing.router:8080", "10.0.0.2:8080", "10.0.0.3:8080"]
        );
        bj.more_routers.push("beijing.router:8080".into());
        assert_eq!(
            validate(&t).unwrap_err().0,
            vec![Problem::DuplicateRouter {
                site: "beijing".into(),
                addr: "beijing.router:8080".into()
            }]
        );
        let bj = t.sites.get_mut("beijing").unwrap();
        bj.more_routers = vec![" ".into()];
        assert_eq!(
            validate(&t).unwrap_err().0,
            vec![Problem::EmptySiteField {
                site: "beijing".into(),
                field: "router"
            }]
        );
    }

    #[test]
    fn city_to_missing_shard() {
        let mut t = two_sites();
        t.routing.cities.insert("0571".into(), 99);
        assert_eq!(
            validate(&t).unwrap_err().0,
            vec![Problem::CityToMissingShard {
                city: "0571".into(),
                shard: 99
            }]
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let mut t = two_sites();
        t.routing.cities.insert("bad city".into(), 42);
        t.routing.user_shards.push(77);
        t.settings.default_site = Some("nowhere".into());
        let problems = validate(&t).unwrap_err().0;
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn epoch_backwards_is_refused() {
        let prev = two_sites();
        let mut next = prev.clone();
        next.shards.get_mut(&1).unwrap().epoch = 0;
        let p = validate_transition(&prev, &next).unwrap_err().0;
        assert!(p.contains(&Problem::ZeroEpoch { id: 1 }));
        let mut prev2 = prev.clone();
        prev2.shards.get_mut(&1).unwrap().epoch = 5;
        let mut next2 = prev2.clone();
        next2.shards.get_mut(&1).unwrap().epoch = 4;
        assert_eq!(
            validate_transition(&prev2, &next2).unwrap_err().0,
            vec![Problem::EpochBackwards {
                id: 1,
                from: 5,
                to: 4
            }]
        );
    }

    #[test]
    fn home_change_needs_epoch_bump() {
        let prev = two_sites();
        let mut next = prev.clone();
        let s = next.shards.get_mut(&1).unwrap();
        s.home = "shanghai".into();
        assert!(matches!(
            validate_transition(&prev, &next).unwrap_err().0[..],
            [Problem::ChangeWithoutEpochBump {
                id: 1,
                what: "home",
                ..
            }]
        ));
        next.shards.get_mut(&1).unwrap().epoch += 1;
        validate_transition(&prev, &next).unwrap();
    }

    #[test]
    fn removed_shard_is_refused() {
        let prev = two_sites();
        let mut next = prev.clone();
        next.shards.remove(&4);
        next.routing.cities.retain(|_, s| *s != 4);
        next.routing.user_shards.retain(|s| *s != 4);
        assert_eq!(
            validate_transition(&prev, &next).unwrap_err().0,
            vec![Problem::ShardRemoved { id: 4 }]
        );
    }

    fn arb_topology() -> impl Strategy<Value = Topology> {
        let site_names = proptest::collection::btree_set("[a-z]{1,6}", 1..4);
        (site_names, 1usize..8, any::<u64>()).prop_map(|(sites, nshards, seed)| {
            let names: Vec<&str> = sites.iter().map(String::as_str).collect();
            let mut t = starter(&names, 1);
            // Re-home shards pseudo-randomly, still valid.
            for (i, shard) in t.shards.values_mut().enumerate() {
                shard.home = names[(seed as usize + i) % names.len()].to_string();
                shard.epoch = 1 + (seed >> (i % 32)) % 100;
            }
            let _ = nshards;
            t
        })
    }

    #[derive(Debug, Clone)]
    enum Mutation {
        HomeTo(String),
        CityTo(ShardId),
        UserShard(ShardId),
        DropSite,
    }

    fn arb_mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            "[A-Z]{1,5}".prop_map(Mutation::HomeTo),
            (1000u32..2000).prop_map(Mutation::CityTo),
            (1000u32..2000).prop_map(Mutation::UserShard),
            Just(Mutation::DropSite),
        ]
    }

    proptest! {
        /// Generated valid topologies validate, and survive a JSON round trip.
        #[test]
        fn generated_is_valid(t in arb_topology()) {
            prop_assert!(validate(&t).is_ok());
            let json = serde_json::to_string(&t).unwrap();
            let back: Topology = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(back, t);
        }

        /// Any dangling reference is caught, never accepted.
        #[test]
        fn dangling_reference_is_caught(t in arb_topology(), m in arb_mutation()) {
            let mut t = t;
            match m {
                Mutation::HomeTo(h) => { if let Some(s) = t.shards.values_mut().next() { s.home = h; } }
                Mutation::CityTo(s) => { t.routing.cities.insert("9999".into(), s); }
                Mutation::UserShard(s) => t.routing.user_shards.push(s),
                Mutation::DropSite => {
                    let first = t.sites.keys().next().cloned().unwrap();
                    t.sites.remove(&first);
                    // Only invalid if a shard still lives there (or no site is left).
                    if t.sites.is_empty() || t.shards.values().any(|s| s.home == first) {
                        prop_assert!(validate(&t).is_err());
                    }
                    return Ok(());
                }
            }
            prop_assert!(validate(&t).is_err());
        }

        /// A successor whose every shard keeps or grows its epoch, bumping it on
        /// any change, is accepted; shrinking any epoch is refused.
        #[test]
        fn epochs_only_grow(t in arb_topology(), bump in 0u64..3, which in 0usize..8) {
            let mut next = t.clone();
            let n = next.shards.len();
            let shard: &mut Shard = next.shards.values_mut().nth(which % n).unwrap();
            shard.epoch += bump;
            if bump > 0 { shard.state = ShardState::Frozen; }
            prop_assert!(validate_transition(&t, &next).is_ok());
            let shard = next.shards.values_mut().nth(which % n).unwrap();
            shard.epoch = shard.epoch.saturating_sub(bump + 1).max(1);
            let orig = t.shards.values().nth(which % n).unwrap().epoch;
            if shard.epoch < orig {
                prop_assert!(validate_transition(&t, &next).is_err());
            }
        }
    }
}
