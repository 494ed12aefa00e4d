//! The autoscaler: gathers each instance's latest sample per serving node;
//! once every serving node has reported since the last decision, feeds the
//! instance's load to its policy (`model::scaling`) and records the decision
//! as the instance's desired node count, which the reconciler carries out.
//! A scale-out that would take the owner past their `max_nodes` quota
//! (counted as the node targets of all their instances) is not carried
//! out; a `scale_blocked` event says so, once per streak of such decisions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
// tokio's clock, so logic tests can pause and advance it.
use tokio::time::Instant;

use tokio::sync::Notify;

use crate::model::scaling::{Load, ScaleBounds, ScaleDecision, ScalingWindow};
use crate::model::{
    EventKind, InstanceId, Limit, NodeId, NodeState, OperatingStatus, ProvisioningStatus, Quota,
    Role, SampleInfo,
};
use crate::store::{self, EventSubject, InstanceRow, Store, StoreError};

#[derive(Default)]
struct InstanceLoad {
    window: ScalingWindow,
    /// Per node: when its latest sample came, requests/s, active connections.
    latest: HashMap<NodeId, (Instant, f64, f64)>,
    last_decision: Option<Instant>,
    /// A scale-out was blocked by the quota and said so; cleared when the
    /// load no longer asks for one, or one goes through.
    blocked: bool,
}

pub(super) struct Autoscaler {
    store: Store,
    wake: Arc<Notify>,
    instances: Mutex<HashMap<InstanceId, InstanceLoad>>,
    default_quota: Quota,
}

/// What the autoscaler writes for one decision.
enum Outcome {
    Scaled,
    /// Over the owner's node quota: (limit, the owner's node targets now).
    Blocked(Limit, u64),
}

impl Autoscaler {
    pub(super) fn new(store: Store, wake: Arc<Notify>, default_quota: Quota) -> Self {
        Autoscaler {
            store,
            wake,
            instances: Mutex::default(),
            default_quota,
        }
    }

    /// Takes a sample of a running node (one with a rate: not its first).
    pub(super) async fn observe(&self, inst: &InstanceRow, sample: &SampleInfo) {
        if !inst.spec.auto_scaling || inst.provisioning_status != ProvisioningStatus::Active {
            self.instances
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&inst.id);
            return;
        }
        let id = inst.id;
        let serving: Vec<NodeId> = match self.store.read(move |c| store::list_nodes(c, id)).await {
            Ok(nodes) => nodes
                .iter()
                .filter(|n| {
                    n.state == NodeState::Running && n.operating_status != OperatingStatus::Offline
                })
                .map(|n| n.id)
                .collect(),
            Err(e) => return tracing::warn!("autoscaler: {e}"),
        };
        let Some((decision, desired)) = self.decide(inst, sample, &serving) else {
            return;
        };
        let (to, kind, reason) = match decision {
            ScaleDecision::Out { to, reason } => (to, EventKind::ScaleOut, reason),
            ScaleDecision::In { to, reason } => (to, EventKind::ScaleIn, reason),
        };
        let message = format!("{desired} -> {to} nodes: {reason}");
        let subject = EventSubject::instance(inst.project_id, inst.id);
        let (defaults, project) = (self.default_quota, inst.project_id);
        let growth = u64::from(to.saturating_sub(desired));
        let announce_block = !self.is_blocked(id);
        let logged = message.clone();
        let written = self
            .store
            .transaction(move |c| {
                if let Some((limit, used)) = node_quota_blocks(c, project, defaults, growth)? {
                    if announce_block {
                        let why = format!(
                            "{desired} -> {to} nodes blocked: the owner's max_nodes quota is \
                             {limit} and its instances run {used}; {reason}"
                        );
                        store::add_event(c, subject, EventKind::ScaleBlocked, &why)?;
                    }
                    return Ok(Outcome::Blocked(limit, used));
                }
                store::set_desired_nodes(c, id, to)?;
                store::add_event(c, subject, kind, &message)?;
                Ok(Outcome::Scaled)
            })
            .await;
        match written {
            Ok(Outcome::Scaled) => {
                tracing::info!(%kind, instance = %inst.name, "{logged}");
                self.set_blocked(id, false);
                self.wake.notify_one()
            }
            Ok(Outcome::Blocked(limit, used)) => {
                if announce_block {
                    tracing::info!(instance = %inst.name, "scale-out blocked: max_nodes {limit}, {used} in use");
                }
                self.set_blocked(id, true);
            }
            // The next round decides again.
            Err::<_, StoreError>(e) => tracing::warn!("autoscaler: {e}"),
        }
    }

    fn is_blocked(&self, id: InstanceId) -> bool {
        let instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        instances.get(&id).is_some_and(|e| e.blocked)
    }

    fn set_blocked(&self, id: InstanceId, blocked: bool) {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = instances.get_mut(&id) {
            e.blocked = blocked;
        }
    }

    /// Adds the sample to the instance's round; once every serving node has
    /// reported, asks the policy. Returns its decision and the node count it
    /// started from.
    fn decide(
        &self,
        inst: &InstanceRow,
        sample: &SampleInfo,
        serving: &[NodeId],
    ) -> Option<(ScaleDecision, u32)> {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        let entry = instances.entry(inst.id).or_default();
        entry.latest.retain(|id, _| serving.contains(id));
        entry.latest.insert(
            sample.node_id,
            (
                Instant::now(),
                sample.requests_per_s,
                sample.active_connections,
            ),
        );
        // One decision per round: every serving node reported since the last.
        let round_complete = serving.iter().all(|id| {
            entry
                .latest
                .get(id)
                .is_some_and(|(at, _, _)| entry.last_decision.is_none_or(|d| *at > d))
        });
        if serving.is_empty() || !round_complete {
            return None;
        }
        entry.last_decision = Some(Instant::now());
        let load = Load {
            nodes: serving.len() as u32,
            requests_per_s: entry.latest.values().map(|(_, r, _)| r).sum(),
            active_connections: entry.latest.values().map(|(_, _, c)| c).sum(),
        };
        let policy = inst.spec.scaling;
        let bounds = ScaleBounds {
            min_nodes: inst.spec.min_nodes,
            max_nodes: inst.spec.max_nodes,
            desired: inst.target_nodes(),
            cooled_down: inst
                .scaled_at
                .is_none_or(|t| store::now() - t >= i64::from(policy.cooldown)),
        };
        let decision = policy.decide(&mut entry.window, &load, bounds);
        if decision.is_none() && entry.window.over == 0 {
            // The load no longer asks for more: a later block is news again.
            entry.blocked = false;
        }
        Some((decision?, bounds.desired))
    }
}

/// Whether adding `growth` nodes to the project's instances takes its
/// owner past their `max_nodes` quota: the limit and the owner's current
/// node targets when it does. Admins have no quota.
fn node_quota_blocks(
    c: &rusqlite::Connection,
    project: crate::model::ProjectId,
    defaults: Quota,
    growth: u64,
) -> Result<Option<(Limit, u64)>, StoreError> {
    if growth == 0 {
        return Ok(None);
    }
    let Some(owner) = store::project_by_id(c, project)?.map(|p| p.user) else {
        return Ok(None);
    };
    let Some(user) = store::user_by_name(c, &owner)? else {
        return Ok(None);
    };
    if user.role == Role::Admin {
        return Ok(None);
    }
    let limit = Quota::with_defaults(user.quota, defaults).max_nodes;
    let used = store::user_target_nodes(c, &owner)?;
    Ok((!limit.allows(used, growth)).then_some((limit, used)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceCreate, QuotaSpec};

    /// A store with alice's autoscaled instance (1 to 3 nodes, one running)
    /// and her `max_nodes` quota of 1.
    async fn fixture(db: &std::path::Path) -> (Store, InstanceRow, NodeId) {
        let store = Store::open(db).unwrap();
        let create: InstanceCreate = serde_json::from_value(serde_json::json!({
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "min_nodes": 1, "max_nodes": 3,
            "scaling": {"target_requests_per_s": 10, "target_connections": 0,
                        "scale_out_after": 1, "scale_in_after": 100, "cooldown": 1},
            "backend": {"entities": ["127.0.0.1:9001"], "auto-scaling": true}
        }))
        .unwrap();
        let spec = create.validate(&crate::password::Argon2Hasher).unwrap();
        store
            .transaction(move |tx| {
                let quota = QuotaSpec {
                    max_nodes: Some(Limit::AtMost(1)),
                    ..Default::default()
                };
                store::insert_user(tx, "alice", Role::Member, quota, b"h")?;
                let p = store::insert_project(tx, "demo", "alice", "127.5.0.0/16")?;
                let i = store::insert_instance(tx, p.id, &spec)?;
                store::set_instance_provisioning(tx, i.id, ProvisioningStatus::Active, None)?;
                let n = store::insert_node(tx, i.id, "127.5.0.2", "s")?;
                store::move_node(tx, n.id, NodeState::Starting, NodeState::Running)?;
                store::set_node_operating(tx, n.id, OperatingStatus::Online)?;
                Ok::<_, StoreError>((store::instance_by_id(tx, i.id)?.unwrap(), n.id))
            })
            .await
            .map(|(i, n)| (store.clone(), i, n))
            .unwrap()
    }

    fn busy(node_id: NodeId) -> SampleInfo {
        SampleInfo {
            ts: 0,
            resolution: 0,
            node_id,
            requests_per_s: 100.0,
            active_connections: 0.0,
            bytes_in_per_s: 0.0,
            bytes_out_per_s: 0.0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
            members_up: 1,
            members_down: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_node_quota_blocks_scale_out_with_one_event_per_streak() {
        let db = std::env::temp_dir().join(format!("lbaas-autoscale-{}.db", std::process::id()));
        let (store, inst, node) = fixture(&db).await;
        let scaler = Autoscaler::new(store.clone(), Arc::new(Notify::new()), Quota::UNLIMITED);
        for _ in 0..5 {
            tokio::time::advance(std::time::Duration::from_secs(1)).await;
            scaler.observe(&inst, &busy(node)).await;
        }
        let id = inst.id;
        let events = || async {
            store
                .read(move |c| store::recent_events(c, id, 0, 100))
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(events().await, vec![EventKind::ScaleBlocked]);
        let row = store
            .read(move |c| store::instance_by_id(c, id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.target_nodes(), 1, "held at the quota");
        // A raised quota lets the next decision through.
        store
            .transaction(|tx| {
                let q = QuotaSpec {
                    max_nodes: Some(Limit::AtMost(2)),
                    ..Default::default()
                };
                store::set_user_quota(tx, "alice", q)
            })
            .await
            .unwrap();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        scaler.observe(&inst, &busy(node)).await;
        assert_eq!(events().await[0], EventKind::ScaleOut);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
        }
    }
}
