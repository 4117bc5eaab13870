//! What changed between two topologies, in words, for `ezone topo watch` and logs.

use crate::model::Topology;

/// One line per change, in a stable order: sites, shards, cities, users, settings.
pub fn diff(prev: &Topology, next: &Topology) -> Vec<String> {
    let mut out = Vec::new();
    for (name, site) in &next.sites {
        match prev.sites.get(name) {
            None => out.push(format!("site {name} added")),
            Some(old) if old != site => out.push(format!("site {name} changed")),
            Some(_) => {}
        }
    }
    for name in prev.sites.keys() {
        if !next.sites.contains_key(name) {
            out.push(format!("site {name} removed"));
        }
    }
    for (id, s) in &next.shards {
        match prev.shards.get(id) {
            None => out.push(format!(
                "shard {id} added: home {}, {}, epoch {}",
                s.home, s.state, s.epoch
            )),
            Some(old) if old != s => {
                let home = if old.home == s.home {
                    s.home.clone()
                } else {
                    format!("{} -> {}", old.home, s.home)
                };
                let state = if old.state == s.state {
                    s.state.to_string()
                } else {
                    format!("{} -> {}", old.state, s.state)
                };
                out.push(format!(
                    "shard {id}: home {home}, {state}, epoch {} -> {}",
                    old.epoch, s.epoch
                ));
            }
            Some(_) => {}
        }
    }
    for id in prev.shards.keys() {
        if !next.shards.contains_key(id) {
            out.push(format!("shard {id} removed"));
        }
    }
    let moved: Vec<String> = next
        .routing
        .cities
        .iter()
        .filter(|(c, s)| prev.routing.cities.get(*c) != Some(s))
        .map(|(c, s)| format!("{c}->{s}"))
        .collect();
    if !moved.is_empty() {
        out.push(format!("cities mapped: {}", moved.join(", ")));
    }
    let gone: Vec<&str> = prev
        .routing
        .cities
        .keys()
        .filter(|c| !next.routing.cities.contains_key(*c))
        .map(String::as_str)
        .collect();
    if !gone.is_empty() {
        out.push(format!("cities unmapped: {}", gone.join(", ")));
    }
    if prev.routing.user_shards != next.routing.user_shards {
        out.push(format!("user shards: {:?}", next.routing.user_shards));
    }
    if prev.settings != next.settings {
        out.push("settings changed".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::starter::starter;
    use crate::ShardState;

    #[test]
    fn describes_a_flip() {
        let a = starter(&["beijing", "shanghai"], 1);
        let mut b = a.clone();
        let s = b.shards.get_mut(&1).unwrap();
        s.home = "shanghai".into();
        s.state = ShardState::Frozen;
        s.epoch = 2;
        assert_eq!(
            diff(&a, &b),
            vec!["shard 1: home beijing -> shanghai, active -> frozen, epoch 1 -> 2"]
        );
        assert!(diff(&a, &a).is_empty());
    }
}
