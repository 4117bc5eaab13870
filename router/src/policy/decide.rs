//! The routing decision: key -> shard -> home site -> where to send the
//! request, or hold it, or refuse it. Pure: a topology snapshot and a request
//! head in, a [`Decision`] out; no I/O, no clock.

use ezone_topology::{Shard, ShardId, ShardState, Topology};
use http::{Method, StatusCode};

use crate::policy::extract::Key;

/// What to do when a request has no key, or names a city the table lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackAction {
    /// Route to the default site (`settings.default_site`, else this site).
    DefaultSite,
    /// Refuse with a 4xx naming what is missing.
    Reject,
}

/// The shard a request was routed by, as stamped on the upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRef {
    pub id: ShardId,
    pub epoch: u64,
}

/// Why a request is refused (or routed to a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    MissingKey,
    UnknownCity,
    NoUserShards,
}

impl Fallback {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Fallback::MissingKey => "missing_key",
            Fallback::UnknownCity => "unknown_city",
            Fallback::NoUserShards => "no_user_shards",
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// To `site`'s upstream pool (this router is in `site`).
    Local {
        site: String,
        shard: Option<ShardRef>,
        fallback: Option<Fallback>,
    },
    /// To `site`'s router at `router` (the home is another site).
    Remote {
        site: String,
        router: String,
        shard: Option<ShardRef>,
        fallback: Option<Fallback>,
    },
    /// A write for a frozen shard: hold it until the shard is active again.
    Hold { shard: ShardRef },
    /// Answer the client at once.
    Reject {
        status: StatusCode,
        reason: String,
        fallback: Option<Fallback>,
    },
}

/// Safe methods are never held: they do not change state.
pub fn is_write(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// The inputs that stay fixed for a router.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This router's site.
    pub site: String,
    pub on_missing_key: FallbackAction,
    pub on_unknown_city: FallbackAction,
}

fn to_site(
    t: &Topology,
    policy: &Policy,
    site: &str,
    shard: Option<ShardRef>,
    fallback: Option<Fallback>,
) -> Decision {
    if site == policy.site {
        return Decision::Local {
            site: site.to_string(),
            shard,
            fallback,
        };
    }
    match t.sites.get(site) {
        Some(s) => Decision::Remote {
            site: site.to_string(),
            router: s.router.clone(),
            shard,
            fallback,
        },
        // Validation guarantees homes exist; a default site might not.
        None => Decision::Reject {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: format!("site {site:?} is not in the topology"),
            fallback,
        },
    }
}

fn fallback(
    t: &Topology,
    policy: &Policy,
    action: FallbackAction,
    why: Fallback,
    detail: String,
) -> Decision {
    match action {
        FallbackAction::DefaultSite => {
            let site = t
                .settings
                .default_site
                .clone()
                .unwrap_or_else(|| policy.site.clone());
            to_site(t, policy, &site, None, Some(why))
        }
        FallbackAction::Reject => Decision::Reject {
            status: match why {
                Fallback::MissingKey => StatusCode::BAD_REQUEST,
                Fallback::UnknownCity => StatusCode::NOT_FOUND,
                Fallback::NoUserShards => StatusCode::SERVICE_UNAVAILABLE,
            },
            reason: detail,
            fallback: Some(why),
        },
    }
}

fn shard_decision(t: &Topology, policy: &Policy, shard: &Shard, method: &Method) -> Decision {
    let r = ShardRef {
        id: shard.id,
        epoch: shard.epoch,
    };
    if shard.state == ShardState::Frozen && is_write(method) {
        return Decision::Hold { shard: r };
    }
    to_site(t, policy, &shard.home, Some(r), None)
}

/// Decides where a request goes.
pub fn decide(t: &Topology, policy: &Policy, key: Option<&Key>, method: &Method) -> Decision {
    match key {
        None => fallback(
            t,
            policy,
            policy.on_missing_key,
            Fallback::MissingKey,
            "the request names no city or user: send a city id or user id (see the router's key sources)".into(),
        ),
        Some(Key::City(city)) => match t.city_shard(city) {
            Some(shard) => shard_decision(t, policy, shard, method),
            None => fallback(
                t,
                policy,
                policy.on_unknown_city,
                Fallback::UnknownCity,
                format!("unknown city {city:?}: it is not in the routing table"),
            ),
        },
        Some(Key::User(user)) => match t.user_shard(user) {
            Some(shard) => shard_decision(t, policy, shard, method),
            None => fallback(
                t,
                policy,
                FallbackAction::Reject,
                Fallback::NoUserShards,
                "no shard takes users (routing.user_shards is empty)".into(),
            ),
        },
    }
}

/// Re-decides a held write against a newer topology: `Some` once the shard is
/// active (the request then goes to its possibly new home), `None` while it is
/// still frozen.
pub fn release(t: &Topology, policy: &Policy, shard: ShardId) -> Option<Decision> {
    let s = t.shards.get(&shard)?;
    (s.state == ShardState::Active).then(|| shard_decision(t, policy, s, &Method::POST))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ezone_topology::starter::starter;

    fn policy(site: &str) -> Policy {
        Policy {
            site: site.into(),
            on_missing_key: FallbackAction::DefaultSite,
            on_unknown_city: FallbackAction::Reject,
        }
    }

    #[test]
    fn table() {
        let mut t = starter(&["beijing", "shanghai"], 2);
        // Shard 2 (home shanghai) is frozen for a flip.
        t.shards.get_mut(&2).unwrap().state = ShardState::Frozen;
        t.shards.get_mut(&2).unwrap().epoch = 2;
        let bj = policy("beijing");
        let city = |c: &str| Key::City(c.into());
        // 010 -> shard 1 (beijing), 021 -> shard 2 (shanghai, frozen).
        assert!(matches!(
            decide(&t, &bj, Some(&city("010")), &Method::POST),
            Decision::Local { ref site, shard: Some(ShardRef { id: 1, epoch: 1 }), .. } if site == "beijing"
        ));
        assert!(matches!(
            decide(&t, &bj, Some(&city("021")), &Method::GET),
            Decision::Remote { ref site, shard: Some(ShardRef { id: 2, epoch: 2 }), .. } if site == "shanghai"
        ));
        assert_eq!(
            decide(&t, &bj, Some(&city("021")), &Method::POST),
            Decision::Hold {
                shard: ShardRef { id: 2, epoch: 2 }
            }
        );
        assert!(matches!(
            decide(&t, &bj, Some(&city("9999")), &Method::GET),
            Decision::Reject {
                status: StatusCode::NOT_FOUND,
                ..
            }
        ));
        assert!(matches!(
            decide(&t, &bj, None, &Method::GET),
            Decision::Local {
                fallback: Some(Fallback::MissingKey),
                shard: None,
                ..
            }
        ));
        // A user: "bob" hashes to shard 3 of [1..=4]? Whatever it is, it must
        // agree with the topology's own lookup.
        let u = Key::User("bob".into());
        let want = t.user_shard("bob").unwrap().id;
        match decide(&t, &bj, Some(&u), &Method::GET) {
            Decision::Local { shard: Some(s), .. } | Decision::Remote { shard: Some(s), .. } => {
                assert_eq!(s.id, want)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn default_site_from_settings() {
        let mut t = starter(&["beijing", "shanghai"], 1);
        t.settings.default_site = Some("shanghai".into());
        assert!(matches!(
            decide(&t, &policy("beijing"), None, &Method::GET),
            Decision::Remote { ref site, .. } if site == "shanghai"
        ));
        let reject = Policy {
            on_missing_key: FallbackAction::Reject,
            ..policy("beijing")
        };
        assert!(matches!(
            decide(&t, &reject, None, &Method::GET),
            Decision::Reject {
                status: StatusCode::BAD_REQUEST,
                ..
            }
        ));
    }

    #[test]
    fn release_follows_the_new_home() {
        let mut t = starter(&["beijing", "shanghai"], 1);
        let s = t.shards.get_mut(&1).unwrap();
        s.state = ShardState::Frozen;
        assert_eq!(release(&t, &policy("shanghai"), 1), None);
        let s = t.shards.get_mut(&1).unwrap();
        s.state = ShardState::Active;
        s.home = "shanghai".into();
        s.epoch = 3;
        assert!(matches!(
            release(&t, &policy("shanghai"), 1),
            Some(Decision::Local {
                shard: Some(ShardRef { id: 1, epoch: 3 }),
                ..
            })
        ));
    }

    proptest::proptest! {
        /// Any key and method: a decision, never a panic; a held decision
        /// only for writes to a frozen shard; every forward names a site.
        #[test]
        fn any_input_decides(key in proptest::option::of(("[ -~]{0,20}", proptest::bool::ANY)), m in "[A-Z]{1,8}", frozen in proptest::bool::ANY) {
            let mut t = starter(&["beijing", "shanghai"], 2);
            if frozen {
                for s in t.shards.values_mut() { s.state = ShardState::Frozen; }
            }
            let Ok(method) = Method::from_bytes(m.as_bytes()) else { return Ok(()) };
            let key = key.map(|(k, city)| if city { Key::City(k) } else { Key::User(k) });
            match decide(&t, &policy("beijing"), key.as_ref(), &method) {
                Decision::Hold { .. } => proptest::prop_assert!(frozen && is_write(&method)),
                Decision::Local { site, .. } | Decision::Remote { site, .. } => proptest::prop_assert!(t.sites.contains_key(&site)),
                Decision::Reject { status, .. } => proptest::prop_assert!(status.is_client_error() || status.is_server_error()),
            }
        }
    }
}
