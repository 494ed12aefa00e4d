//! Settled instances: those a pass has nothing to do for. A pass runs every
//! second over every instance; at a thousand instances the per-instance
//! steps (store reads and writes, a compute observation each) cost most of
//! lbd's time at rest, so the pass first sorts out, from one read of all
//! rows and one batch of observations, the instances that are already what
//! their rows say, and runs the full steps only for the others.

use std::collections::{HashMap, HashSet};

use crate::drivers::compute::NodeObservation;
use crate::model::{InstanceId, NodeId, NodeState, OperatingStatus, ProvisioningStatus};
use crate::store::{self, InstanceRow, NodeRow};

/// Whether the rows alone say there is nothing to do: the instance is
/// ACTIVE and not being deleted; it has exactly its targets of serving and
/// standby nodes and all of them run, answer (not OFFLINE) and have its
/// current config; its
/// serving-node count and its operating status are up to date. The
/// processes must still be confirmed running ([`confirmed`]).
pub(super) fn rows_settled(inst: &InstanceRow, nodes: &[&NodeRow]) -> bool {
    let serving = inst.target_nodes() as usize;
    let running = nodes
        .iter()
        .filter(|n| n.state == NodeState::Running)
        .count();
    inst.provisioning_status == ProvisioningStatus::Active
        && !inst.deleting
        && nodes.len() == inst.target_active_nodes() as usize
        && running == serving
        && inst.serving_nodes as usize == serving.max(1)
        && nodes.iter().all(|n| {
            n.state.is_configured()
                && n.pid.is_some()
                && n.applied_generation == Some(inst.generation)
                && n.operating_status != OperatingStatus::Offline
        })
        && store::operating_of(inst, nodes.iter().copied())
            == (inst.operating_status, inst.status_reason.clone())
}

/// Whether every node the driver observed runs as the process its row names.
pub(super) fn confirmed(nodes: &[&NodeRow], observed: &HashMap<NodeId, NodeObservation>) -> bool {
    nodes.iter().all(|n| {
        matches!(observed.get(&n.id), Some(NodeObservation::Running { pid }) if Some(*pid) == n.pid)
    })
}

/// The instances whose rows look settled, with their nodes, and the node
/// ids to observe.
pub(super) fn candidates<'a>(
    instances: &'a [InstanceRow],
    nodes: &'a [NodeRow],
) -> (Vec<(&'a InstanceRow, Vec<&'a NodeRow>)>, Vec<NodeId>) {
    let mut by_instance: HashMap<InstanceId, Vec<&NodeRow>> = HashMap::new();
    for n in nodes {
        by_instance.entry(n.instance_id).or_default().push(n);
    }
    let mut found = Vec::new();
    let mut observe = Vec::new();
    for inst in instances {
        let own = by_instance.remove(&inst.id).unwrap_or_default();
        if rows_settled(inst, &own) {
            observe.extend(own.iter().map(|n| n.id));
            found.push((inst, own));
        }
    }
    (found, observe)
}

/// The ids among `candidates` whose processes are confirmed.
pub(super) fn settled_ids(
    candidates: &[(&InstanceRow, Vec<&NodeRow>)],
    observed: &HashMap<NodeId, NodeObservation>,
) -> HashSet<InstanceId> {
    candidates
        .iter()
        .filter(|(_, nodes)| confirmed(nodes, observed))
        .map(|(inst, _)| inst.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProjectId;

    fn instance(generation: u64) -> InstanceRow {
        let create: crate::model::InstanceCreate = serde_json::from_value(serde_json::json!({
            "name": "web", "project": "p", "traffic_type": "http", "port": 8080,
            "backend": {"entities": ["127.0.0.1:9000"]}
        }))
        .expect("a valid request");
        let spec = create
            .validate(&crate::password::Argon2Hasher)
            .expect("a valid spec");
        InstanceRow {
            id: InstanceId(1),
            project_id: ProjectId(1),
            project_name: "p".into(),
            name: "web".into(),
            spec,
            generation,
            provisioning_status: ProvisioningStatus::Active,
            operating_status: OperatingStatus::Online,
            status_reason: None,
            created_at: 0,
            updated_at: 0,
            desired_nodes: None,
            scaled_at: None,
            deleting: false,
            serving_nodes: 1,
        }
    }

    fn node(id: i64, state: NodeState, applied: Option<u64>) -> NodeRow {
        NodeRow {
            id: NodeId(id),
            instance_id: InstanceId(1),
            address: "127.0.0.2".parse().unwrap(),
            secret: "s".into(),
            state,
            pid: Some(100 + id as u32),
            operating_status: OperatingStatus::Online,
            state_changed_at: 0,
            applied_generation: applied,
        }
    }

    #[test]
    fn a_running_node_with_the_current_config_is_settled() {
        let n = node(1, NodeState::Running, Some(3));
        assert!(rows_settled(&instance(3), &[&n]));
    }

    #[test]
    fn anything_left_to_do_is_not_settled() {
        let inst = instance(3);
        let stale = node(1, NodeState::Running, Some(2));
        assert!(!rows_settled(&inst, &[&stale]), "an older config");
        let starting = node(1, NodeState::Starting, None);
        assert!(!rows_settled(&inst, &[&starting]), "a starting node");
        let (a, b) = (
            node(1, NodeState::Running, Some(3)),
            node(2, NodeState::Failed, Some(3)),
        );
        assert!(!rows_settled(&inst, &[&a, &b]), "a failed node to delete");
        assert!(!rows_settled(&inst, &[]), "no node for a target of one");
        let mut offline = node(1, NodeState::Running, Some(3));
        offline.operating_status = OperatingStatus::Offline;
        assert!(!rows_settled(&inst, &[&offline]), "a node out of DNS");
        let mut degraded = node(1, NodeState::Running, Some(3));
        degraded.operating_status = OperatingStatus::Degraded;
        assert!(
            !rows_settled(&inst, &[&degraded]),
            "an operating status to refresh"
        );
        let mut deleting = instance(3);
        deleting.deleting = true;
        assert!(!rows_settled(&deleting, &[&a]), "a delete");
        let mut pending = instance(3);
        pending.provisioning_status = ProvisioningStatus::PendingUpdate;
        assert!(!rows_settled(&pending, &[&a]), "an update");
    }

    #[test]
    fn standbys_are_settled_only_at_their_target_beside_the_serving_ones() {
        let mut inst = instance(3);
        inst.spec.standby_nodes = 1;
        let (a, b) = (
            node(1, NodeState::Running, Some(3)),
            node(2, NodeState::Standby, Some(3)),
        );
        assert!(rows_settled(&inst, &[&a, &b]));
        assert!(!rows_settled(&inst, &[&a]), "a standby to boot");
        let c = node(3, NodeState::Standby, Some(3));
        assert!(!rows_settled(&inst, &[&b, &c]), "a standby to promote");
        let d = node(4, NodeState::Running, Some(3));
        assert!(
            !rows_settled(&inst, &[&a, &d]),
            "a serving node to keep as the standby"
        );
        let stale = node(2, NodeState::Standby, Some(2));
        assert!(
            !rows_settled(&inst, &[&a, &stale]),
            "a standby's old config"
        );
    }

    #[test]
    fn only_the_process_the_row_names_confirms_it() {
        let n = node(1, NodeState::Running, Some(3));
        let seen = |o| HashMap::from([(NodeId(1), o)]);
        assert!(confirmed(
            &[&n],
            &seen(NodeObservation::Running { pid: 101 })
        ));
        assert!(!confirmed(
            &[&n],
            &seen(NodeObservation::Running { pid: 7 })
        ));
        assert!(!confirmed(&[&n], &seen(NodeObservation::Absent)));
        assert!(!confirmed(&[&n], &HashMap::new()));
    }
}
