//! Counters of one link (bytes each way, connections), shared lock-free by
//! the link's connection tasks, and their serializable snapshot.
//!
//! Bytes are counted when written to the receiving side, so they measure what
//! crossed the link: during a partition the counters of that direction stand
//! still.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::config::Direction;

/// A snapshot of one link's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Bytes delivered client -> upstream since the link was added.
    pub bytes_upstream: u64,
    /// Bytes delivered upstream -> client since the link was added.
    pub bytes_downstream: u64,
    /// Connections accepted since the link was added.
    pub connections_total: u64,
    /// Connections accepted and not yet closed (including ones held by a partition).
    pub connections_open: u64,
}

/// The live counters behind [`LinkStats`].
#[derive(Debug, Default)]
pub(crate) struct LinkCounters {
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    connections_total: AtomicU64,
    connections_open: AtomicU64,
}

impl LinkCounters {
    pub(crate) fn bytes(&self, dir: Direction) -> &AtomicU64 {
        match dir {
            Direction::Upstream => &self.bytes_upstream,
            Direction::Downstream => &self.bytes_downstream,
        }
    }

    /// Counts a new connection as open until the guard is dropped.
    pub(crate) fn open_connection(&self) -> OpenConnection<'_> {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection { counters: self }
    }

    pub(crate) fn snapshot(&self) -> LinkStats {
        LinkStats {
            bytes_upstream: self.bytes_upstream.load(Ordering::Relaxed),
            bytes_downstream: self.bytes_downstream.load(Ordering::Relaxed),
            connections_total: self.connections_total.load(Ordering::Relaxed),
            connections_open: self.connections_open.load(Ordering::Relaxed),
        }
    }
}

/// Decrements `connections_open` when the connection task ends, however it ends.
pub(crate) struct OpenConnection<'a> {
    counters: &'a LinkCounters,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.counters
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}
