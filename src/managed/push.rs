//! `PUT /managed`: an instance's whole managed state (ready members,
//! starting counts, start failures) to every running node, version bumped.
//! Whole and idempotent, so a node that missed a push, or restarted, is
//! brought up to date by the next one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::decide::{self, resource_fits};
use super::lifecycle::{is_of, targets_of};
use super::{lock, Failures, Shared};
use crate::model::instance::BackendMember;
use crate::model::managed::BackendState;
use crate::model::wake::{ManagedMembers, ManagedTarget, ManagedTargetState};
use crate::model::{InstanceId, InstanceSpec};
use crate::store::{self, BackendRow, NodeRow, StoreError};

/// Pushes in the background (the caller does not wait for the nodes).
pub(crate) fn spawn_push(shared: &Arc<Shared>, instance: InstanceId) {
    let shared = shared.clone();
    tokio::spawn(async move { push(&shared, instance).await });
}

/// Pushes now; returns once every running node answered (or failed to).
pub(crate) async fn push(shared: &Arc<Shared>, instance: InstanceId) {
    let gate = lock(&shared.push_locks)
        .entry(instance)
        .or_default()
        .clone();
    let _one_at_a_time = gate.lock().await;
    let read = shared
        .store
        .read(move |c| {
            let Some(inst) = store::instance_by_id(c, instance)? else {
                return Ok(None);
            };
            let nodes = store::list_nodes(c, instance)?;
            Ok::<_, StoreError>(Some((inst, nodes, store::backends_of(c, instance)?)))
        })
        .await;
    let (inst, nodes, backends) = match read {
        Ok(Some(found)) => found,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!("managed push for instance {instance}: {e}");
            return;
        }
    };
    let version = {
        let mut versions = lock(&shared.versions);
        let last = versions.get(&instance).copied().unwrap_or(0);
        let v = (last + 1).max(crate::store::now_ms().max(0) as u64);
        versions.insert(instance, v);
        v
    };
    let members = managed_members(
        &inst.spec,
        &backends,
        &shared.failures_of(instance),
        version,
    );
    let pushes = configured(&nodes).map(|node| {
        let addr = SocketAddr::new(node.address, shared.settings.node_admin_port);
        let (admin, members) = (&shared.admin, &members);
        async move {
            if let Err(e) = admin.put_managed(addr, &node.secret, members).await {
                tracing::warn!("node {}: PUT /managed: {e}", node.id);
            }
        }
    });
    futures_util::future::join_all(pushes).await;
}

/// The nodes that serve or stand by to (and so hold managed members).
pub(crate) fn configured(nodes: &[NodeRow]) -> impl Iterator<Item = &NodeRow> {
    nodes.iter().filter(|n| n.state.is_configured())
}

/// The state of every managed target of `spec`: pools without backends
/// are listed too (with their failures), so a node releases nothing it
/// should not; a `per_resource` pool has a target per resource that has
/// backends or failures, and none for the pool as a whole.
pub(crate) fn managed_members(
    spec: &InstanceSpec,
    backends: &[BackendRow],
    failures: &[(ManagedTarget, Failures)],
    version: u64,
) -> ManagedMembers {
    let mut targets = Vec::new();
    for (pool, m) in spec.managed_pools() {
        let mut of_pool: Vec<ManagedTarget> = match m.per_resource {
            None => vec![ManagedTarget {
                pool: pool.to_string(),
                resource: None,
            }],
            Some(_) => targets_of(backends, pool, false),
        };
        for (t, _) in failures.iter().filter(|(t, _)| t.pool == pool) {
            if !of_pool.contains(t) && resource_fits(m, t.resource.as_deref()) {
                of_pool.push(t.clone());
            }
        }
        let current = decide::template_digest(m);
        targets.extend(
            of_pool
                .into_iter()
                .map(|t| target_state(t, backends, failures, &current)),
        );
    }
    ManagedMembers { version, targets }
}

/// A target's members are its ready backends; once one runs the current
/// template, those still on an old one get no new requests (they drain,
/// and `tick::replace_stale` stops them).
fn target_state(
    target: ManagedTarget,
    backends: &[BackendRow],
    failures: &[(ManagedTarget, Failures)],
    current: &str,
) -> ManagedTargetState {
    let of_target = || backends.iter().filter(|b| is_of(b, &target));
    let fresh = |b: &BackendRow| decide::is_current(b.template.as_deref(), current);
    let any_fresh_ready = of_target().any(|b| b.state == BackendState::Ready && fresh(b));
    let failed = failures
        .iter()
        .find(|(t, _)| *t == target)
        .map(|(_, f)| f.clone())
        .unwrap_or_default();
    ManagedTargetState {
        members: of_target()
            .filter(|b| b.state == BackendState::Ready && (fresh(b) || !any_fresh_ready))
            .map(|b| BackendMember {
                address: SocketAddr::new(IpAddr::V4(b.address), b.port),
                weight: 1,
            })
            .collect(),
        starting: of_target()
            .filter(|b| b.state == BackendState::Starting)
            .count() as u32,
        failures: failed.count,
        last_failure: failed.last,
        target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::managed::ManagedCompute;
    use crate::model::ProjectId;

    fn spec() -> InstanceSpec {
        let create: crate::model::InstanceCreate = serde_json::from_value(serde_json::json!({
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"entities": ["127.0.0.1:9"]}
        }))
        .unwrap();
        let mut spec = create.validate(&crate::password::Argon2Hasher).unwrap();
        let managed: crate::model::managed::ManagedSpec =
            serde_json::from_value(serde_json::json!({
                "compute": "process", "port": 8000,
                "process": {"command": ["python3", "-m", "http.server", "{port}"],
                            "env": {"SECRET": "do-not-leak"}}
            }))
            .unwrap();
        spec.managed = Some(managed.validate(spec.traffic_type).unwrap());
        spec
    }

    fn row(id: i64, state: BackendState) -> BackendRow {
        BackendRow {
            id,
            instance_id: InstanceId(1),
            project_id: ProjectId(1),
            pool: "default".into(),
            resource: None,
            state,
            compute: ManagedCompute::Process,
            address: format!("127.9.0.{id}").parse().unwrap(),
            port: 8000,
            pid: Some(10),
            started_at_ms: 0,
            ready_at_ms: None,
            requests: 0,
            cold: false,
            cold_start_ms: None,
            last_active_ms: None,
            template: None,
        }
    }

    #[test]
    fn only_ready_backends_are_members_and_failures_ride_along() {
        let backends = [
            row(2, BackendState::Ready),
            row(3, BackendState::Starting),
            row(4, BackendState::Stopping),
        ];
        let target = ManagedTarget {
            pool: "default".into(),
            resource: None,
        };
        let failures = [(
            target.clone(),
            Failures {
                count: 2,
                last: Some("exited with code 1".into()),
            },
        )];
        let m = managed_members(&spec(), &backends, &failures, 7);
        assert_eq!(m.version, 7);
        assert_eq!(m.targets.len(), 1);
        let t = &m.targets[0];
        assert_eq!(t.target, target);
        assert_eq!(t.members.len(), 1);
        assert_eq!(t.members[0].address.to_string(), "127.9.0.2:8000");
        assert_eq!((t.starting, t.failures), (1, 2));
        // The template's environment never goes to a node.
        assert!(!serde_json::to_string(&m).unwrap().contains("do-not-leak"));
    }

    #[test]
    fn a_per_resource_pool_has_a_target_per_resource() {
        let mut spec = spec();
        let managed = spec.managed.as_mut().unwrap();
        managed.per_resource = Some(crate::model::managed::PerResource {
            path_segment: 2,
            groups_segment: None,
            resources: None,
            max_resources: 10,
        });
        let of = |id, r: &str, state| BackendRow {
            resource: Some(r.to_string()),
            ..row(id, state)
        };
        let backends = [
            of(2, "r1", BackendState::Ready),
            of(3, "r2", BackendState::Starting),
            of(4, "r1", BackendState::Ready),
        ];
        let failed = ManagedTarget {
            pool: "default".into(),
            resource: Some("r3".into()),
        };
        let failures = [(
            failed.clone(),
            Failures {
                count: 1,
                last: None,
            },
        )];
        let m = managed_members(&spec, &backends, &failures, 1);
        let by: Vec<(Option<&str>, usize, u32, u64)> = m
            .targets
            .iter()
            .map(|t| {
                (
                    t.target.resource.as_deref(),
                    t.members.len(),
                    t.starting,
                    t.failures,
                )
            })
            .collect();
        assert_eq!(
            by,
            [
                (Some("r1"), 2, 0, 0),
                (Some("r2"), 0, 1, 0),
                (Some("r3"), 0, 0, 1)
            ]
        );
    }
}
