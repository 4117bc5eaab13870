//! A starter topology for the lab, the demo and tests.

use crate::model::{RoutingTable, Settings, Shard, ShardState, Site, Topology, INITIAL_EPOCH};

/// Real Chinese telephone area codes, used as city ids in the lab and demo.
pub const CITY_CODES: [&str; 16] = [
    "010", "021", "020", "0755", "028", "0571", "027", "029", "025", "022", "023", "0731", "0532",
    "0591", "0371", "024",
];

/// `shards_per_site` shards per site, homed round-robin (shard 1 at the first
/// site, shard 2 at the second, ...), the [`CITY_CODES`] spread over them, and
/// every shard taking users. Site addresses are placeholders
/// (`<site>.router:8080`); the lab fills in real ones.
pub fn starter(sites: &[&str], shards_per_site: u32) -> Topology {
    let mut t = Topology {
        settings: Settings::default(),
        routing: RoutingTable::default(),
        ..Topology::default()
    };
    for name in sites {
        t.sites.insert(
            (*name).to_string(),
            Site {
                name: (*name).to_string(),
                router: format!("{name}.router:8080"),
                more_routers: Vec::new(),
                upstreams: vec![format!("{name}.app:9000")],
                postgres: format!("host={name}.db port=5432 user=postgres dbname=ezone"),
            },
        );
    }
    let nshards = sites.len() as u32 * shards_per_site;
    for id in 1..=nshards {
        let home = sites[(id as usize - 1) % sites.len().max(1)].to_string();
        t.shards.insert(
            id,
            Shard {
                id,
                home,
                state: ShardState::Active,
                epoch: INITIAL_EPOCH,
            },
        );
        t.routing.user_shards.push(id);
    }
    if nshards > 0 {
        for (i, city) in CITY_CODES.iter().enumerate() {
            t.routing
                .cities
                .insert((*city).to_string(), (i as u32 % nshards) + 1);
        }
    }
    t
}
