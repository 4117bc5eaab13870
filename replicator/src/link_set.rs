//! The links a replicator runs, by name (`source->target`), as the admin
//! endpoints and the metrics read them: shared, and changed while they run
//! (a site added to the topology gets a link, a site removed loses its).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::link::LinkStats;

/// A shared, changeable set of links and their stats. Cloning shares it.
#[derive(Clone, Default)]
pub struct LinkSet(Arc<RwLock<BTreeMap<String, Arc<LinkStats>>>>);

impl LinkSet {
    /// The links now (their stats are live; the set is a copy).
    pub fn snapshot(&self) -> BTreeMap<String, Arc<LinkStats>> {
        // A poisoned lock only means a writer panicked mid-insert: the map
        // itself is still whole.
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn insert(&self, name: String, stats: Arc<LinkStats>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, stats);
    }

    pub fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    pub fn names(&self) -> Vec<String> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

impl From<BTreeMap<String, Arc<LinkStats>>> for LinkSet {
    fn from(m: BTreeMap<String, Arc<LinkStats>>) -> LinkSet {
        LinkSet(Arc::new(RwLock::new(m)))
    }
}

impl std::fmt::Debug for LinkSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
