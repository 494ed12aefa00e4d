//! The node's part of `per_resource` pools that needs its state: a
//! request's resource target (made on its first request, bounded by
//! `max_resources`) and the resource labels of `/status` members. The
//! path rules themselves are pure, in `resource`.

use std::sync::Arc;

use http::Uri;

use super::resource::{self, ResourceRefusal, ResourceRoute};
use super::{locked, StageEntry, Target, TargetRef, Wake, WakeStage};
use crate::dataplane::pools::PoolRef;
use crate::model::policy::DEFAULT_POOL;
use crate::model::wake::ManagedTarget;
use crate::model::MemberStats;

/// A request's wake target, with its resource in a `per_resource` pool.
pub struct Routed {
    pub target: TargetRef,
    pub resource: Option<ResourceRoute>,
}

impl Wake {
    /// The wake target of a request for `pool`: none for a pool that is
    /// not managed; for a `per_resource` pool the resource's (made on its
    /// first request), or why the request is refused.
    pub fn route(
        &self,
        stage: &WakeStage,
        pool: PoolRef,
        uri: &Uri,
        groups: &[String],
    ) -> Result<Option<Routed>, ResourceRefusal> {
        match stage.entry(pool) {
            None => Ok(None),
            Some(StageEntry::Pool(t)) => Ok(Some(Routed {
                target: t.clone(),
                resource: None,
            })),
            Some(StageEntry::PerResource(rs)) => {
                let target = uri.path_and_query().map_or("/", |p| p.as_str());
                let route = resource::route(&rs.routing, target, groups)?;
                let t = self.resource_target(&rs.pool, &route.id, rs.routing.max_resources)?;
                Ok(Some(Routed {
                    target: t,
                    resource: Some(route),
                }))
            }
        }
    }

    /// The target of one resource; past `max` targets of the pool a free
    /// one is forgotten to make room, and with none free the request is
    /// refused (the node's memory stays bounded whatever ids clients send).
    fn resource_target(
        &self,
        pool: &str,
        id: &str,
        max: u32,
    ) -> Result<TargetRef, ResourceRefusal> {
        let key = ManagedTarget {
            pool: pool.to_string(),
            resource: Some(id.to_string()),
        };
        if let Some(t) = self.lock_targets().get(&key) {
            return Ok(t.clone());
        }
        let state = self.pushed().into_iter().find(|s| s.target == key);
        let limits = locked(&self.resource_pools)
            .get(pool)
            .cloned()
            .ok_or(ResourceRefusal::NotFound)?;
        let mut targets = self.lock_targets();
        if let Some(t) = targets.get(&key) {
            return Ok(t.clone());
        }
        let of_pool: Vec<&ManagedTarget> = targets
            .keys()
            .filter(|k| k.pool == pool && k.resource.is_some())
            .collect();
        if of_pool.len() >= max as usize {
            let free = of_pool
                .into_iter()
                .find(|k| targets[*k].is_free())
                .cloned()
                .ok_or(ResourceRefusal::TooMany(max))?;
            targets.remove(&free);
        }
        let t = Arc::new(Target::for_resource(
            pool.to_string(),
            id.to_string(),
            &limits,
            self.events.clone(),
        ));
        // Members come with `settle` (after the config that has them);
        // an old failure must not fail the first hold.
        t.seen_failures(state.as_ref());
        targets.insert(key, t.clone());
        Ok(t)
    }

    /// Marks the members of `per_resource` pools with their resource.
    pub fn label_members(&self, members: &mut [MemberStats]) {
        for s in self.pushed() {
            let Some(r) = &s.target.resource else {
                continue;
            };
            for m in members.iter_mut().filter(|m| {
                m.pool.as_deref().unwrap_or(DEFAULT_POOL) == s.target.pool
                    && s.members.iter().any(|b| b.address == m.address)
            }) {
                m.resource = Some(r.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::pools::NamedPools;
    use crate::model::managed::{NodeManagedPool, NodeResourceRouting, QueueLimits};
    use crate::model::wake::{ManagedMembers, ManagedTargetState};
    use crate::model::{BackendMember, NodeConfig};

    fn node_config() -> NodeConfig {
        let mut c: NodeConfig = serde_json::from_value(serde_json::json!({
            "version": 1, "traffic_type": "http", "listen": "127.0.0.1:0",
            "algorithm": "round_robin", "backends": [],
            "health_check": {"protocol": "TCP", "port": 0, "request-path": "/",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
        }))
        .unwrap();
        c.managed.insert(
            "default".to_string(),
            NodeManagedPool {
                queue: QueueLimits::default(),
                target_in_flight: 10,
                max: 2,
                per_resource: None,
            },
        );
        c
    }

    fn per_resource_config(max_resources: u32) -> NodeConfig {
        let mut c = node_config();
        c.managed.get_mut("default").unwrap().per_resource = Some(NodeResourceRouting {
            path_segment: 1,
            groups_segment: None,
            resources: None,
            max_resources,
        });
        c
    }

    fn resource_state(resource: &str, port: u16) -> ManagedTargetState {
        ManagedTargetState {
            target: ManagedTarget {
                pool: "default".into(),
                resource: Some(resource.into()),
            },
            members: vec![BackendMember {
                address: format!("127.0.0.1:{port}").parse().unwrap(),
                weight: 1,
            }],
            starting: 0,
            failures: 0,
            last_failure: None,
        }
    }

    #[test]
    fn each_resource_has_its_members_its_target_and_its_label() {
        let wake = Wake::default();
        wake.store_members(ManagedMembers {
            version: 1,
            targets: vec![resource_state("r1", 9001), resource_state("r2", 9002)],
        });
        let merged = wake.merge(per_resource_config(10));
        assert_eq!(
            merged.backends.len(),
            2,
            "the pool has every resource's members"
        );
        let registry = crate::dataplane::pools::MemberRegistry::default();
        let stage = wake.stage(
            &merged,
            &crate::dataplane::Balancer::new(merged.tuning.algorithm, &[], Vec::new()),
            &NamedPools::default(),
            &registry,
        );
        assert!(
            stage.target(PoolRef::Default).is_none(),
            "no whole-pool target"
        );
        let r1 = stage.resource_balancer(PoolRef::Default, "r1").unwrap();
        assert_eq!(r1.members()[0].address.port(), 9001);
        assert!(stage.resource_balancer(PoolRef::Default, "r3").is_none());
        wake.settle();
        let mut stats: Vec<_> = wake
            .stats()
            .into_iter()
            .map(|s| (s.resource, s.ready))
            .collect();
        stats.sort();
        assert_eq!(stats, [(Some("r1".into()), 1), (Some("r2".into()), 1)]);

        let uri: Uri = "/r2/a?b".parse().unwrap();
        let routed = wake
            .route(&stage, PoolRef::Default, &uri, &[])
            .unwrap()
            .unwrap();
        assert_eq!(routed.target.resource.as_deref(), Some("r2"));
        assert_eq!(routed.resource.unwrap().target.as_str(), "/a?b");

        let mut members = vec![MemberStats {
            address: "127.0.0.1:9002".parse().unwrap(),
            state: crate::model::MemberState::Up,
            weight: 1,
            requests: 0,
            failures: 0,
            active: 0,
            ejections: 0,
            pool: None,
            open_connections: 0,
            idle_ms: None,
            resource: None,
        }];
        wake.label_members(&mut members);
        assert_eq!(members[0].resource.as_deref(), Some("r2"));
    }

    #[test]
    fn max_resources_bounds_the_targets_and_free_ones_make_room() {
        let wake = Wake::default();
        wake.store_members(ManagedMembers {
            version: 1,
            targets: vec![resource_state("busy", 9001)],
        });
        let merged = wake.merge(per_resource_config(2));
        let registry = crate::dataplane::pools::MemberRegistry::default();
        let stage = wake.stage(
            &merged,
            &crate::dataplane::Balancer::new(merged.tuning.algorithm, &[], Vec::new()),
            &NamedPools::default(),
            &registry,
        );
        wake.settle();
        let route = |path: &str| {
            let uri: Uri = path.parse().unwrap();
            wake.route(&stage, PoolRef::Default, &uri, &[])
                .map(|r| r.unwrap().target)
        };
        let idle = route("/idle/x").unwrap();
        assert!(
            matches!(route("/third/x"), Err(ResourceRefusal::TooMany(2))),
            "idle is in use by a request, busy has a member"
        );
        drop(idle);
        let third = route("/third/x").unwrap();
        assert_eq!(
            third.resource.as_deref(),
            Some("third"),
            "the free target made room"
        );
        assert_eq!(wake.stats().len(), 2);
    }
}
