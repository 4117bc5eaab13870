//! The topology model: sites, shards, the routing table and settings.
//!
//! These are plain values with no I/O. A [`Topology`] is what a store loads and
//! what a watcher publishes, always after [`crate::validate`] accepted it.
//!
//! # Unknown fields
//!
//! None of these types refuses a field it does not know: a newer ezone may
//! add fields to the topology in etcd while older readers still run (a
//! rolling upgrade), and those must keep reading it. What an older version
//! does not know it must not lose either: a read-modify-write (a shard's
//! compare-and-swap, `ezone topo` commands, a file store's rewrite) writes
//! the newer fields back unchanged. They are kept in [`Topology::extras`]
//! (an [`Extras`]: one map per site, per shard, for the routing table, the
//! settings and the top level), beside the structs rather than inside them,
//! so that code building a [`Shard`] or a [`Site`] with a struct literal
//! needs no change and a shard swapped in by compare-and-swap keeps the
//! unknown fields its id had. [`crate::doc`] reads and writes them (the
//! file document, and [`crate::doc::decode_piece`] /
//! [`crate::doc::encode_piece`] for one etcd key), and says why files an
//! operator writes by hand are still checked strictly.
//!
//! Deserialising one of these structs alone (`serde_json::from_slice::<Shard>`)
//! accepts and *drops* unknown fields: to keep them, go through [`crate::doc`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A shard id: a small integer, stable for the life of the deployment.
pub type ShardId = u32;

/// The fencing token of a shard. It only grows: every change of home or state
/// bumps it by compare-and-swap.
pub type Epoch = u64;

/// The first epoch a shard has.
pub const INITIAL_EPOCH: Epoch = 1;

/// A data center: where a shard can be homed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Its name (`beijing`, `shanghai`, ...). In etcd it is also the key.
    pub name: String,
    /// `host:port` of this site's edge router, where other sites' routers
    /// forward requests for shards homed here.
    pub router: String,
    /// More instances of the site's edge router (`host:port`), besides
    /// `router`: other sites' routers spread their forwarded requests over
    /// all of them, health-checked like upstreams, so one router down does
    /// not cut the site off. Empty (the default): `router` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_routers: Vec<String>,
    /// `host:port` of each instance of the site's upstream service.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// libpq-style connection string of the site's Postgres.
    pub postgres: String,
}

impl Site {
    /// Every address of the site's edge routers: `router`, then
    /// `more_routers`.
    pub fn routers(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.router).chain(&self.more_routers)
    }
}

/// Whether a shard takes writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Reads and writes go to the home site.
    Active,
    /// A flip is in progress: writes are held, reads go to the home site.
    Frozen,
}

impl std::fmt::Display for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ShardState::Active => "active",
            ShardState::Frozen => "frozen",
        })
    }
}

/// One shard: its home site, state and epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub id: ShardId,
    pub home: String,
    pub state: ShardState,
    pub epoch: Epoch,
}

/// How keys map to shards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutingTable {
    /// City id -> shard. City ids are opaque strings (`"010"`, `"021"`, ...).
    /// A city given twice is refused when read (JSON would otherwise keep
    /// the last silently; TOML refuses it on its own).
    #[serde(default, deserialize_with = "unique_cities")]
    pub cities: BTreeMap<String, ShardId>,
    /// The shards that user ids hash onto, in order. The position matters: see
    /// [`crate::hash::user_shard`]. Appending a shard moves only about 1/n of
    /// the users (jump consistent hash); reordering moves many.
    #[serde(default)]
    pub user_shards: Vec<ShardId>,
}

/// Reads the city map, refusing a city that appears twice.
fn unique_cities<'de, D>(d: D) -> Result<BTreeMap<String, ShardId>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, ShardId>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map of city ids to shard ids")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((city, shard)) = m.next_entry::<String, ShardId>()? {
                if let Some(first) = out.insert(city.clone(), shard) {
                    return Err(serde::de::Error::custom(format!(
                        "city {city:?} is mapped twice (to shard {first} and to shard {shard}): keep one"
                    )));
                }
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// Deployment-wide settings that every part reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Where a request with no shard key goes. `None` means "the local site".
    #[serde(default)]
    pub default_site: Option<String>,
    /// How long a router holds a write for a frozen shard before it answers
    /// 503 with `Retry-After`.
    #[serde(default = "Settings::default_write_hold_ms")]
    pub write_hold_ms: u64,
    /// How long a site's database fence accepts writes after its replicator
    /// last renewed the fence's lease from a quorum read of the topology:
    /// a site cut off from etcd stops accepting writes by itself within
    /// this. 0 turns the lease off (the fence never lapses: development
    /// only).
    #[serde(default = "Settings::default_fence_lease_ms")]
    pub fence_lease_ms: u64,
    /// The most the clocks of the parts may disagree by (the fence's
    /// database, its replicator, the failover command): a forced failover
    /// opens the survivor `fence_lease_ms + clock_skew_ms` after it took
    /// the shards.
    #[serde(default = "Settings::default_clock_skew_ms")]
    pub clock_skew_ms: u64,
}

impl Settings {
    /// The design's default write-hold deadline: 2 s.
    pub const DEFAULT_WRITE_HOLD_MS: u64 = 2_000;
    /// The fence lease: 10 s (renewed every third of it).
    pub const DEFAULT_FENCE_LEASE_MS: u64 = 10_000;
    /// The clock-skew bound: 1 s (NTP keeps hosts within milliseconds).
    pub const DEFAULT_CLOCK_SKEW_MS: u64 = 1_000;

    fn default_write_hold_ms() -> u64 {
        Self::DEFAULT_WRITE_HOLD_MS
    }
    fn default_fence_lease_ms() -> u64 {
        Self::DEFAULT_FENCE_LEASE_MS
    }
    fn default_clock_skew_ms() -> u64 {
        Self::DEFAULT_CLOCK_SKEW_MS
    }

    /// How often a fence's lease is renewed: a third of it, between 200 ms
    /// and 5 s (5 s without a lease: the reconcile's own pace).
    pub fn fence_renew_every(&self) -> std::time::Duration {
        use std::time::Duration;
        match self.fence_lease_ms {
            0 => Duration::from_secs(5),
            ms => (Duration::from_millis(ms) / 3)
                .clamp(Duration::from_millis(200), Duration::from_secs(5)),
        }
    }

    /// How long after taking a lost site's shards a forced failover waits
    /// before the survivor accepts them: the lost site's lease must have
    /// lapsed, whatever its clock says.
    pub fn fence_lapse(&self) -> std::time::Duration {
        if self.fence_lease_ms == 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_millis(self.fence_lease_ms + self.clock_skew_ms)
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_site: None,
            write_hold_ms: Self::DEFAULT_WRITE_HOLD_MS,
            fence_lease_ms: Self::DEFAULT_FENCE_LEASE_MS,
            clock_skew_ms: Self::DEFAULT_CLOCK_SKEW_MS,
        }
    }
}

/// The fields of one object of the stored topology (a site, a shard, the
/// routing table, the settings or the top level) that this version of
/// ezone does not know, by name, with their values as read.
pub type Extra = BTreeMap<String, serde_json::Value>;

/// Every field of a stored topology that this version does not know, kept
/// to be written back unchanged (see the [module docs](self)).
///
/// Only objects that had such fields have an entry. A key is never the name
/// of a field this version knows (they are read into the structs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    /// Beside `sites`, `shards`, `routing`, `settings`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub root: Extra,
    /// Per site, by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sites: BTreeMap<String, Extra>,
    /// Per shard, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<ShardId, Extra>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routing: Extra,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: Extra,
}

impl Extras {
    /// No unknown field anywhere.
    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
            && self.sites.values().all(BTreeMap::is_empty)
            && self.shards.values().all(BTreeMap::is_empty)
            && self.routing.is_empty()
            && self.settings.is_empty()
    }

    /// The unknown fields of site `name`, if it has any.
    pub fn site(&self, name: &str) -> Option<&Extra> {
        self.sites.get(name).filter(|e| !e.is_empty())
    }

    /// The unknown fields of shard `id`, if it has any.
    pub fn shard(&self, id: ShardId) -> Option<&Extra> {
        self.shards.get(&id).filter(|e| !e.is_empty())
    }

    /// Keeps the unknown fields of site `name` (nothing if there are none).
    pub fn set_site(&mut self, name: &str, extra: Extra) {
        if extra.is_empty() {
            self.sites.remove(name);
        } else {
            self.sites.insert(name.to_string(), extra);
        }
    }

    /// Keeps the unknown fields of shard `id` (nothing if there are none).
    pub fn set_shard(&mut self, id: ShardId, extra: Extra) {
        if extra.is_empty() {
            self.shards.remove(&id);
        } else {
            self.shards.insert(id, extra);
        }
    }
}

/// The whole topology: what a snapshot holds.
///
/// Maps are ordered so that serialisation and display are deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub sites: BTreeMap<String, Site>,
    pub shards: BTreeMap<ShardId, Shard>,
    #[serde(default)]
    pub routing: RoutingTable,
    #[serde(default)]
    pub settings: Settings,
    /// The fields a newer ezone wrote that this version does not know,
    /// written back unchanged (see the [module docs](self)). A shard or
    /// site replaced by a struct literal keeps its entry here.
    #[serde(default, skip_serializing_if = "Extras::is_empty")]
    pub extras: Extras,
}

impl Topology {
    /// The shard a city maps to, if the routing table knows the city.
    pub fn city_shard(&self, city: &str) -> Option<&Shard> {
        self.routing
            .cities
            .get(city)
            .and_then(|id| self.shards.get(id))
    }

    /// The shard a user id hashes to (`None` only if no shard takes users).
    pub fn user_shard(&self, user: &str) -> Option<&Shard> {
        crate::hash::user_shard(user, &self.routing.user_shards).and_then(|id| self.shards.get(&id))
    }

    /// The home site of a shard.
    pub fn home_of(&self, shard: &Shard) -> Option<&Site> {
        self.sites.get(&shard.home)
    }
}
