//! Counters of a node and of each member: relaxed atomics, read by `/status`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::model::NodeStats;

#[derive(Default)]
pub struct NodeCounters {
    pub requests_total: AtomicU64,
    pub active_connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub backend_errors: AtomicU64,
}

impl NodeCounters {
    pub fn snapshot(&self) -> NodeStats {
        NodeStats {
            requests_total: self.requests_total.load(Relaxed),
            active_connections: self.active_connections.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            backend_errors: self.backend_errors.load(Relaxed),
            members: Vec::new(),
        }
    }

    /// Counts a client connection for as long as the guard lives.
    pub fn connection(&self) -> ConnectionGuard<'_> {
        self.connections_total.fetch_add(1, Relaxed);
        self.active_connections.fetch_add(1, Relaxed);
        ConnectionGuard(&self.active_connections)
    }
}

pub struct ConnectionGuard<'a>(&'a AtomicU64);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[derive(Default)]
pub struct MemberCounters {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub active: AtomicU64,
}
