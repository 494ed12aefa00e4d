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
pub mod per_resource;
pub mod queue;
pub mod resource;
pub mod target;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::balance::Balancer;
use super::pools::{MemberRegistry, NamedPools, PoolRef};
use crate::model::managed::{NodeManagedPool, NodeResourceRouting};
use crate::model::policy::DEFAULT_POOL;
use crate::model::wake::{
    ManagedMembers, ManagedPoolStats, ManagedTarget, ManagedTargetState, NodeEvent,
};
use crate::model::{BackendMember, NodeConfig};
pub use per_resource::Routed;
pub use resource::{ResourceRefusal, ResourceRoute};
pub use target::{HoldError, Target, TargetRef};

/// Events a slow `/events` subscriber may fall behind by before it loses
/// the oldest (a send never waits for a subscriber).
const EVENTS_BUFFER: usize = 1024;

/// The node's managed state, kept across configs.
pub struct Wake {
    events: broadcast::Sender<NodeEvent>,
    /// Whole-pool targets (`resource: None`) and the resource targets of
    /// `per_resource` pools, made on a resource's first request.
    targets: Mutex<BTreeMap<ManagedTarget, TargetRef>>,
    /// The `per_resource` pools of the config in force, by name: what a
    /// resource target made on the request path is limited by.
    resource_pools: Mutex<BTreeMap<String, NodeManagedPool>>,
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
            resource_pools: Mutex::default(),
            members: Mutex::default(),
            version: AtomicU64::new(0),
        }
    }
}

/// A managed pool's part of the wake stage.
pub enum StageEntry {
    /// One target for the whole pool.
    Pool(TargetRef),
    /// A target per resource, found from the request's path.
    PerResource(ResourceStage),
}

/// A `per_resource` pool in one config: how to find the resource, and
/// each resource's ready members to pick from (their counters are the
/// pool's, so health checks and `/status` see them as pool members).
pub struct ResourceStage {
    pub pool: String,
    pub routing: NodeResourceRouting,
    balancers: HashMap<String, Balancer>,
}

/// The targets of one config, by pool, resolved once per config.
#[derive(Default)]
pub struct WakeStage {
    default: Option<StageEntry>,
    /// By `PoolRef::Named` index.
    named: Vec<Option<StageEntry>>,
}

impl WakeStage {
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.named.is_empty()
    }

    pub fn entry(&self, pool: PoolRef) -> Option<&StageEntry> {
        match pool {
            PoolRef::Default => self.default.as_ref(),
            PoolRef::Named(i) => self.named.get(i).and_then(Option::as_ref),
        }
    }

    /// The target of a whole managed pool (none for a `per_resource` one).
    pub fn target(&self, pool: PoolRef) -> Option<&TargetRef> {
        match self.entry(pool)? {
            StageEntry::Pool(t) => Some(t),
            StageEntry::PerResource(_) => None,
        }
    }

    /// The ready members of one resource of a `per_resource` pool.
    pub fn resource_balancer(&self, pool: PoolRef, resource: &str) -> Option<&Balancer> {
        match self.entry(pool)? {
            StageEntry::PerResource(r) => r.balancers.get(resource),
            StageEntry::Pool(_) => None,
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wake {
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Sends an event to lbd's `/events` stream (if one is open; an event
    /// nobody hears is dropped: lbd catches up from the next config).
    pub fn emit(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// The version of the last `PUT /managed` applied.
    pub fn version(&self) -> Option<u64> {
        self.version.load(Relaxed).checked_sub(1)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, BTreeMap<ManagedTarget, TargetRef>> {
        locked(&self.targets)
    }

    /// The pushed target states (a copy: the members lock is never held
    /// with the targets lock).
    fn pushed(&self) -> Vec<ManagedTargetState> {
        locked(&self.members)
            .as_ref()
            .map(|m| m.targets.clone())
            .unwrap_or_default()
    }

    /// Stores a `PUT /managed`; `prepare` and `settle` then apply it.
    pub fn store_members(&self, members: ManagedMembers) {
        self.version
            .store(members.version.saturating_add(1), Relaxed);
        *locked(&self.members) = Some(members);
    }

    /// The targets of `managed` (kept from the last config where they
    /// were there already, so held requests stay held); targets of pools no
    /// longer managed, or of resources no longer allowed, end their holds.
    fn configure(&self, managed: &BTreeMap<String, NodeManagedPool>) {
        *locked(&self.resource_pools) = managed
            .iter()
            .filter(|(_, m)| m.per_resource.is_some())
            .map(|(p, m)| (p.clone(), m.clone()))
            .collect();
        let mut targets = self.lock_targets();
        targets.retain(|key, t| {
            let keep = managed
                .get(&key.pool)
                .is_some_and(|m| wanted(m.per_resource.as_ref(), key.resource.as_deref()));
            if !keep {
                t.retire();
            }
            keep
        });
        for (pool, limits) in managed {
            for (_, t) in targets.iter().filter(|(k, _)| &k.pool == pool) {
                t.set_limits(limits);
            }
            if limits.per_resource.is_none() {
                let key = ManagedTarget {
                    pool: pool.clone(),
                    resource: None,
                };
                targets.entry(key).or_insert_with(|| {
                    Arc::new(Target::new(pool.clone(), limits, self.events.clone()))
                });
            }
        }
    }

    /// `config` with the pushed members in its managed pools (which list
    /// none themselves): a `per_resource` pool gets the members of all its
    /// resources (health checks and counters are the pool's), and the
    /// targets set up for it.
    pub fn merge(&self, mut config: NodeConfig) -> NodeConfig {
        self.configure(&config.managed);
        if config.managed.is_empty() {
            return config;
        }
        let pushed = self.pushed();
        for (pool, m) in &config.managed {
            let per_resource = m.per_resource.is_some();
            let mut members: Vec<BackendMember> = Vec::new();
            for s in pushed
                .iter()
                .filter(|s| &s.target.pool == pool && s.target.resource.is_some() == per_resource)
            {
                for b in &s.members {
                    if !members.iter().any(|m| m.address == b.address) {
                        members.push(b.clone());
                    }
                }
            }
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
        config: &NodeConfig,
        default: &Balancer,
        pools: &NamedPools,
        registry: &MemberRegistry,
    ) -> WakeStage {
        if config.managed.is_empty() {
            return WakeStage::default();
        }
        let pushed = self.pushed();
        let targets = self.lock_targets();
        // A pool's per-resource balancers reach members as the pool does.
        let entry = |name: &str, like: &Balancer| -> Option<StageEntry> {
            let (algorithm, protocol) = (like.algorithm(), like.protocol());
            let m = config.managed.get(name)?;
            let Some(routing) = &m.per_resource else {
                let key = ManagedTarget {
                    pool: name.to_string(),
                    resource: None,
                };
                return targets.get(&key).cloned().map(StageEntry::Pool);
            };
            let balancers = pushed
                .iter()
                .filter(|s| s.target.pool == name && !s.members.is_empty())
                .filter_map(|s| {
                    let r = s.target.resource.clone()?;
                    Some((
                        r,
                        registry
                            .balancer(name, algorithm, protocol, &s.members)
                            .with_tls(like.tls().cloned()),
                    ))
                })
                .collect();
            Some(StageEntry::PerResource(ResourceStage {
                pool: name.to_string(),
                routing: routing.clone(),
                balancers,
            }))
        };
        WakeStage {
            default: entry(DEFAULT_POOL, default),
            named: pools.iter().map(|p| entry(&p.name, &p.balancer)).collect(),
        }
    }

    /// After a config with the pushed members is in force: tells each
    /// target what it has now, which releases (or fails) its holds.
    /// Resources lbd runs backends for get their target here, so `/status`
    /// shows them whichever node woke them.
    pub fn settle(&self) {
        let pushed = self.pushed();
        let pools = locked(&self.resource_pools).clone();
        let mut targets = self.lock_targets();
        for s in &pushed {
            let (Some(r), Some(limits)) = (&s.target.resource, pools.get(&s.target.pool)) else {
                continue;
            };
            if s.members.is_empty() && s.starting == 0 {
                continue;
            }
            if !wanted(limits.per_resource.as_ref(), Some(r)) {
                continue;
            }
            targets.entry(s.target.clone()).or_insert_with(|| {
                Arc::new(Target::for_resource(
                    s.target.pool.clone(),
                    r.clone(),
                    limits,
                    self.events.clone(),
                ))
            });
        }
        for (key, t) in targets.iter() {
            t.update(pushed.iter().find(|s| s.target == *key));
        }
    }

    pub fn stats(&self) -> Vec<ManagedPoolStats> {
        self.lock_targets().values().map(|t| t.stats()).collect()
    }
}

/// Whether a target of `resource` belongs to a pool routed by `routing`:
/// a whole-pool target to a pool without `per_resource`, a resource
/// target to one with it that allows the id.
fn wanted(routing: Option<&NodeResourceRouting>, resource: Option<&str>) -> bool {
    match (routing, resource) {
        (None, None) => true,
        (Some(r), Some(id)) => r.resources.as_ref().is_none_or(|l| l.contains_key(id)),
        _ => false,
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
            "health_check": {"protocol": "TCP", "port": 0, "request-path": "/",
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
        let registry = crate::dataplane::pools::MemberRegistry::default();
        assert!(wake
            .stage(
                &plain,
                &Balancer::new(plain.tuning.algorithm, &[], Vec::new()),
                &NamedPools::default(),
                &registry
            )
            .is_empty());
    }

    #[test]
    fn a_managed_named_pool_gets_its_members_and_its_target() {
        let wake = Wake::default();
        let mut config = node_config(&["api"]);
        let pool: crate::model::policy::Pool = serde_json::from_value(serde_json::json!({
            "members": [], "algorithm": "round_robin",
            "health-check": {"protocol": "TCP", "port": 0, "request-path": "/",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
        }))
        .unwrap();
        config.policy.pools.insert("api".into(), pool);
        wake.store_members(ManagedMembers {
            version: 1,
            targets: vec![ManagedTargetState {
                target: ManagedTarget {
                    pool: "api".into(),
                    resource: None,
                },
                members: vec![BackendMember {
                    address: "127.0.0.1:8001".parse().unwrap(),
                    weight: 1,
                }],
                starting: 0,
                failures: 0,
                last_failure: None,
            }],
        });
        let merged = wake.merge(config);
        assert_eq!(merged.policy.pools["api"].members.len(), 1);
        assert!(
            merged.backends.is_empty(),
            "the default pool is not managed"
        );
        let registry = crate::dataplane::pools::MemberRegistry::default();
        let pools = NamedPools::new(
            &merged.policy,
            Default::default(),
            &registry,
            &Default::default(),
        )
        .unwrap();
        let stage = wake.stage(
            &merged,
            &Balancer::new(merged.tuning.algorithm, &[], Vec::new()),
            &pools,
            &registry,
        );
        let api = pools.resolve("api").unwrap();
        assert_eq!(stage.target(api).map(|t| t.pool.as_str()), Some("api"));
        assert!(stage.target(PoolRef::Default).is_none());
        wake.settle();
        assert_eq!(wake.stats()[0].ready, 1);
    }
}
