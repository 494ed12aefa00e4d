//! The wake contract between lbd and its nodes, for managed pools.
//!
//! ```text
//! node ──GET /events (NDJSON, held open by lbd)──▶ lbd   NodeEvent::Wake: "pool p has
//!                                                        requests and too few members"
//! lbd ──PUT /managed (ManagedMembers)──────────▶ node   the ready members of every
//!                                                        managed pool, and start failures
//! ```
//!
//! Both need `Authorization: Bearer <node secret>` on the node's admin API.
//! The events stream is how a node pushes: lbd keeps one `GET /events` open
//! per running node (it reaches nodes' admin APIs in every network mode),
//! and the node writes a line the moment a request is held. Nothing waits
//! for a health poll.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::BackendMember;

/// Response headers of the wake path.
pub const COLD_START_HEADER: &str = "x-lbaas-cold-start";
pub const WAKE_ERROR_HEADER: &str = "x-lbaas-wake-error";

/// Which managed member set: a pool, or one resource of a `per_resource` pool.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ManagedTarget {
    /// The pool name (`default`: the instance's `backend`).
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// One line of `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// First line of every stream: who is talking, and what it runs.
    Hello {
        node_id: String,
        managed_version: Option<u64>,
    },
    /// Demand for a managed target: sent at once when a request is held
    /// for a target with no ready member, and whenever in-flight requests
    /// (held ones included) exceed `target_in_flight` × ready members
    /// (at most every 100 ms per target while that lasts).
    Wake(WakeDemand),
    /// Sent every few seconds on an idle stream, so lbd sees it is alive.
    Keepalive,
    /// Federation: the node found where a resource lives (a search's
    /// winner, or an item of an aggregated list). lbd stores it and sends
    /// it to the instance's other nodes.
    MappingLearned(crate::model::federation::ResourceMapping),
    /// Federation: a provider answered a `DELETE` of the resource with
    /// 2xx, so its mapping goes.
    MappingRemoved(crate::model::federation::ResourceKey),
}

// No deny_unknown_fields: serde does not combine it with flatten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WakeDemand {
    #[serde(flatten)]
    pub target: ManagedTarget,
    /// Requests (or TCP connections) held in the queue now.
    pub queued: u32,
    /// Requests in flight to the target's members plus the held ones.
    pub in_flight: u32,
    /// Members the node has for the target now.
    pub ready: u32,
}

/// `PUT /managed`: the whole managed state of the instance, idempotent.
/// A target absent from `targets` has no members.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedMembers {
    /// Grows with every change; the node reports it as `managed_version`.
    pub version: u64,
    pub targets: Vec<ManagedTargetState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManagedTargetState {
    #[serde(flatten)]
    pub target: ManagedTarget,
    /// Ready backends: the node sends to these (and releases its queue).
    pub members: Vec<BackendMember>,
    /// Backends being started now.
    #[serde(default)]
    pub starting: u32,
    /// Start failures of this target since lbd started counting (it only
    /// grows). When it grows, every request the node holds for the target
    /// gets 503 with `X-Lbaas-Wake-Error: <last_failure>` at once.
    #[serde(default)]
    pub failures: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

/// A histogram of milliseconds with fixed upper bounds (Prometheus style:
/// `counts[i]` counts samples `<= bounds_ms[i]`, not cumulative; the last
/// count is for samples above every bound).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MsHistogram {
    pub bounds_ms: Vec<u64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum_ms: u64,
}

/// The bounds of the cold-start histogram.
pub const COLD_START_BOUNDS_MS: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000,
];

impl MsHistogram {
    pub fn cold_start() -> MsHistogram {
        MsHistogram {
            bounds_ms: COLD_START_BOUNDS_MS.to_vec(),
            counts: vec![0; COLD_START_BOUNDS_MS.len() + 1],
            count: 0,
            sum_ms: 0,
        }
    }

    pub fn observe(&mut self, ms: u64) {
        let i = self
            .bounds_ms
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(self.bounds_ms.len());
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.count += 1;
        self.sum_ms += ms;
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms as f64 / self.count as f64)
    }
}

/// A node's view of one managed target (in `NodeStats.managed`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManagedPoolStats {
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Members the node sends to now.
    pub ready: u32,
    /// Held now.
    pub queued: u32,
    /// Requests (or connections) that were held and then served.
    pub cold_starts: u64,
    /// Answered 503 because the queue was full.
    pub queue_full: u64,
    /// Answered 504 after `max_wait_ms`.
    pub wait_timeouts: u64,
    /// Answered 503 because the backend failed to start.
    pub start_failures: u64,
    /// How long held requests waited.
    pub cold_start_ms: MsHistogram,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cold_start_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = MsHistogram::cold_start();
        h.observe(5);
        h.observe(10);
        h.observe(11);
        h.observe(1_000_000);
        assert_eq!(h.counts[0], 2);
        assert_eq!(h.counts[1], 1);
        assert_eq!(*h.counts.last().unwrap(), 1);
        assert_eq!(h.count, 4);
    }

    #[test]
    fn events_are_tagged_lines() {
        let e = NodeEvent::Wake(WakeDemand {
            target: ManagedTarget {
                pool: "default".into(),
                resource: None,
            },
            queued: 3,
            in_flight: 3,
            ready: 0,
        });
        let line = serde_json::to_string(&e).unwrap();
        assert_eq!(
            line,
            r#"{"kind":"wake","pool":"default","queued":3,"in_flight":3,"ready":0}"#
        );
        assert_eq!(serde_json::from_str::<NodeEvent>(&line).unwrap(), e);
    }
}
