//! The wake stage of managed pools (issue 16): a request for a pool whose
//! members lbd starts on demand, arriving while it has none, is held here
//! (`queue`), lbd is told at once over `GET /events` (`demand`), and the
//! `PUT /managed` that brings a member releases it. The node's side of the
//! contract in `model::wake`.
//!
//! Managed members reach the balancers like configured ones: the node
//! merges the last `PUT /managed` into the last `PUT /config` and prepares
//! that, so health, counters and algorithms are those of any pool. A config
//! without managed pools gets an empty `WakeStage`, which the request path
//! skips with one `is_empty()` check.

pub mod activity;
pub mod answer;
pub mod demand;
pub mod queue;
pub mod target;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::pools::{NamedPools, PoolRef};
use crate::model::managed::NodeManagedPool;
use crate::model::policy::DEFAULT_POOL;
use crate::model::wake::{ManagedMembers, ManagedPoolStats, NodeEvent};
use crate::model::NodeConfig;
pub use target::{HoldError, Target, TargetRef};

/// Events a slow `/events` subscriber may fall behind by before it loses
/// the oldest (a send never waits for a subscriber).
const EVENTS_BUFFER: usize = 1024;

/// The node's managed state, kept across configs.
pub struct Wake {
    events: broadcast::Sender<NodeEvent>,
    targets: Mutex<BTreeMap<String, TargetRef>>,
    /// The last `PUT /managed`.
    members: Mutex<Option<ManagedMembers>>,
    /// Its version + 1 (0: none yet), for `/status` without a lock.
    version: AtomicU64,
}

impl Default for Wake {
    fn default() -> Self {
        Wake {
            events: broadcast::channel(EVENTS_BUFFER).0,
            targets: Mutex::default(),
            members: Mutex::default(),
            version: AtomicU64::new(0),
        }
    }
}

/// The targets of one config, by pool, resolved once per config.
#[derive(Default)]
pub struct WakeStage {
    default: Option<TargetRef>,
    /// By `PoolRef::Named` index.
    named: Vec<Option<TargetRef>>,
}

impl WakeStage {
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.named.is_empty()
    }

    pub fn target(&self, pool: PoolRef) -> Option<&TargetRef> {
        match pool {
            PoolRef::Default => self.default.as_ref(),
            PoolRef::Named(i) => self.named.get(i).and_then(Option::as_ref),
        }
    }
}

impl Wake {
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// The version of the last `PUT /managed` applied.
    pub fn version(&self) -> Option<u64> {
        self.version.load(Relaxed).checked_sub(1)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TargetRef>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a `PUT /managed`; `prepare` and `settle` then apply it.
    pub fn store_members(&self, members: ManagedMembers) {
        self.version
            .store(members.version.saturating_add(1), Relaxed);
        *self.members.lock().unwrap_or_else(|p| p.into_inner()) = Some(members);
    }

    /// The targets of `managed` (kept from the last config where they
    /// were there already, so held requests stay held); targets of pools no
    /// longer managed end their holds.
    fn configure(&self, managed: &BTreeMap<String, NodeManagedPool>) {
        let mut targets = self.lock_targets();
        targets.retain(|pool, t| {
            let keep = managed.contains_key(pool);
            if !keep {
                t.retire();
            }
            keep
        });
        for (pool, limits) in managed {
            match targets.get(pool) {
                Some(t) => t.set_limits(limits),
                None => {
                    let t = Target::new(pool.clone(), limits, self.events.clone());
                    targets.insert(pool.clone(), Arc::new(t));
                }
            }
        }
    }

    /// `config` with the pushed members in its managed pools (which list
    /// none themselves), and the targets set up for it.
    pub fn merge(&self, mut config: NodeConfig) -> NodeConfig {
        self.configure(&config.managed);
        if config.managed.is_empty() {
            return config;
        }
        let pushed = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for pool in config.managed.keys() {
            let members = pushed
                .as_ref()
                .and_then(|m| {
                    m.targets
                        .iter()
                        .find(|t| &t.target.pool == pool && t.target.resource.is_none())
                })
                .map(|t| t.members.clone())
                .unwrap_or_default();
            if pool == DEFAULT_POOL {
                config.backends = members;
            } else if let Some(p) = config.policy.pools.get_mut(pool) {
                p.members = members;
            }
        }
        config
    }

    /// The wake stage of a prepared config.
    pub fn stage(
        &self,
        managed: &BTreeMap<String, NodeManagedPool>,
        pools: &NamedPools,
    ) -> WakeStage {
        if managed.is_empty() {
            return WakeStage::default();
        }
        let targets = self.lock_targets();
        WakeStage {
            default: targets.get(DEFAULT_POOL).cloned(),
            named: pools
                .iter()
                .map(|p| targets.get(&p.name).cloned())
                .collect(),
        }
    }

    /// After a config with the pushed members is in force: tells each
    /// target what it has now, which releases (or fails) its holds.
    pub fn settle(&self) {
        let pushed = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for (pool, t) in self.lock_targets().iter() {
            let state = pushed.as_ref().and_then(|m| {
                m.targets
                    .iter()
                    .find(|s| &s.target.pool == pool && s.target.resource.is_none())
            });
            t.update(state);
        }
    }

    pub fn stats(&self) -> Vec<ManagedPoolStats> {
        self.lock_targets().values().map(|t| t.stats()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::managed::QueueLimits;
    use crate::model::wake::{ManagedTarget, ManagedTargetState};
    use crate::model::BackendMember;

    fn node_config(managed: &[&str]) -> NodeConfig {
        let mut c: NodeConfig = serde_json::from_value(serde_json::json!({
            "version": 1, "traffic_type": "http", "listen": "127.0.0.1:0",
            "algorithm": "round_robin", "backends": [],
            "health_check": {"protocol": "TCP", "port": 0,
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
        }))
        .unwrap();
        for pool in managed {
            c.managed.insert(
                pool.to_string(),
                NodeManagedPool {
                    queue: QueueLimits::default(),
                    target_in_flight: 10,
                    max: 2,
                    per_resource: None,
                },
            );
        }
        c
    }

    #[test]
    fn pushed_members_fill_the_managed_default_pool() {
        let wake = Wake::default();
        assert_eq!(wake.version(), None);
        wake.store_members(ManagedMembers {
            version: 4,
            targets: vec![ManagedTargetState {
                target: ManagedTarget {
                    pool: "default".into(),
                    resource: None,
                },
                members: vec![BackendMember {
                    address: "127.0.0.1:8000".parse().unwrap(),
                    weight: 1,
                }],
                starting: 0,
                failures: 0,
                last_failure: None,
            }],
        });
        assert_eq!(wake.version(), Some(4));
        let merged = wake.merge(node_config(&["default"]));
        assert_eq!(merged.backends.len(), 1);
        assert_eq!(wake.stats().len(), 1);
        let plain = wake.merge(node_config(&[]));
        assert!(plain.backends.is_empty());
        assert!(wake.stats().is_empty(), "a pool no longer managed is gone");
        assert!(wake
            .stage(&plain.managed, &NamedPools::default())
            .is_empty());
    }
}
