//! The autoscaler: gathers each instance's latest sample per serving node;
//! once every serving node has reported since the last decision, feeds the
//! instance's load to its policy (`model::scaling`) and records the decision
//! as the instance's desired node count, which the reconciler carries out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
// tokio's clock, so logic tests can pause and advance it.
use tokio::time::Instant;

use tokio::sync::Notify;

use crate::model::scaling::{Load, ScaleBounds, ScaleDecision, ScalingWindow};
use crate::model::{
    EventKind, InstanceId, NodeId, NodeState, OperatingStatus, ProvisioningStatus, SampleInfo,
};
use crate::store::{self, EventSubject, InstanceRow, Store, StoreError};

#[derive(Default)]
struct InstanceLoad {
    window: ScalingWindow,
    /// Per node: when its latest sample came, requests/s, active connections.
    latest: HashMap<NodeId, (Instant, f64, f64)>,
    last_decision: Option<Instant>,
}

pub(super) struct Autoscaler {
    store: Store,
    wake: Arc<Notify>,
    instances: Mutex<HashMap<InstanceId, InstanceLoad>>,
}

impl Autoscaler {
    pub(super) fn new(store: Store, wake: Arc<Notify>) -> Self {
        Autoscaler {
            store,
            wake,
            instances: Mutex::default(),
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
        tracing::info!(%kind, instance = %inst.name, "{message}");
        let subject = EventSubject::instance(inst.project_id, inst.id);
        let written = self
            .store
            .transaction(move |c| {
                store::set_desired_nodes(c, id, to)?;
                store::add_event(c, subject, kind, &message)
            })
            .await;
        match written {
            Ok(()) => self.wake.notify_one(),
            // The next round decides again.
            Err::<(), StoreError>(e) => tracing::warn!("autoscaler: {e}"),
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
        let decision = policy.decide(&mut entry.window, &load, bounds)?;
        Some((decision, bounds.desired))
    }
}
