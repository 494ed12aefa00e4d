//! The node-row step of an instance's pass, inside one transaction: the
//! active nodes (starting, running, standby) made to match the serving and
//! standby targets, with the events that explain each move. Pure store
//! work: no process, network or DNS call.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use rand::Rng;

use super::{standby, ReconcileError};
use crate::model::allocator::allocate_node_address;
use crate::model::{EventKind, NodeState};
use crate::store::{self, EventSubject, InstanceRow, NodeRow, StoreError};

/// What one pass changed in an instance's node rows.
pub(super) struct NodeRowsChange {
    pub(super) active: Vec<NodeRow>,
}

/// The node-row step inside its transaction (see
/// [`Reconciler::ensure_node_rows`]), in four moves, each a no-op when the
/// counts are right: standbys promoted while fewer than the target serve;
/// serving nodes beyond it kept as standbys while standbys are short; new
/// rows up to the active target; and, above it, the newest of the nodes
/// least worth keeping retired (starting, then a standby or a serving node
/// beyond its target, then any).
pub(super) fn sync_node_rows(
    tx: &rusqlite::Connection,
    inst: &InstanceRow,
    subnet: ipnet::Ipv4Net,
) -> Result<NodeRowsChange, ReconcileError> {
    let (serving_target, standby_target) = (
        inst.target_nodes() as usize,
        inst.spec.standby_nodes as usize,
    );
    let target = serving_target + standby_target;
    let all = store::list_nodes(tx, inst.id)?;
    let failed: Vec<NodeRow> = all
        .iter()
        .filter(|n| n.state == NodeState::Failed)
        .cloned()
        .collect();
    let mut active: Vec<NodeRow> = all.into_iter().filter(|n| n.state.is_active()).collect();
    let subject = |node_id| EventSubject::node(inst.project_id, inst.id, node_id);
    let count = |nodes: &[NodeRow], state| nodes.iter().filter(|n| n.state == state).count();
    while count(&active, NodeState::Running) < serving_target {
        let Some(standby) = active.iter_mut().find(|n| n.state == NodeState::Standby) else {
            break;
        };
        if !standby::promote(tx, standby, subject(standby.id), "the serving target grew")? {
            break;
        }
    }
    while count(&active, NodeState::Running) > serving_target
        && count(&active, NodeState::Standby) < standby_target
    {
        let Some(newest) = active
            .iter_mut()
            .rev()
            .find(|n| n.state == NodeState::Running)
        else {
            break;
        };
        if !store::move_node(tx, newest.id, NodeState::Running, NodeState::Standby)? {
            break;
        }
        newest.state = NodeState::Standby;
        let message = format!(
            "node {} at {} leaves DNS and stays booted as a standby: target {serving_target} serving",
            newest.id, newest.address
        );
        tracing::info!(kind = %EventKind::NodeStandby, "{message}");
        store::add_event(tx, subject(newest.id), EventKind::NodeStandby, &message)?;
    }
    // Every node's address, read only when one is to be allocated: this
    // runs for every instance on every pass.
    let mut taken = if active.len() < target {
        taken_addresses(tx)?
    } else {
        HashSet::new()
    };
    let mut added = 0;
    while active.len() < target {
        let addr =
            allocate_node_address(&subnet, &taken).ok_or(ReconcileError::SubnetFull(subnet))?;
        taken.insert(addr);
        let node = store::insert_node(tx, inst.id, &addr.to_string(), &new_secret())?;
        // New nodes while nodes are failed are their replacements, oldest failure first.
        if let Some(old) = failed.get(added) {
            let message = format!(
                "node {} at {} replaces failed node {} at {}",
                node.id, node.address, old.id, old.address
            );
            tracing::info!(kind = %EventKind::Failover, "{message}");
            store::add_event(tx, subject(node.id), EventKind::Failover, &message)?;
        }
        added += 1;
        active.push(node);
    }
    let before = active.len();
    while active.len() > target {
        let standbys = count(&active, NodeState::Standby);
        let running = count(&active, NodeState::Running);
        let pick = |n: &NodeRow| match n.state {
            NodeState::Starting => 0,
            NodeState::Standby if standbys > standby_target => 1,
            NodeState::Running if running > serving_target => 1,
            _ => 2,
        };
        let worst = (0..active.len())
            .rev()
            .min_by_key(|&i| pick(&active[i]))
            .expect("len > target >= 1");
        let node = active.remove(worst);
        if store::move_node(tx, node.id, node.state, NodeState::Retiring)? {
            let message = format!(
                "node {} at {} leaves DNS and drains: {before} active nodes, target {target}",
                node.id, node.address,
            );
            tracing::info!(kind = %EventKind::NodeRetiring, "{message}");
            store::add_event(tx, subject(node.id), EventKind::NodeRetiring, &message)?;
        }
    }
    Ok(NodeRowsChange { active })
}

/// Whether no standby waits while fewer than the target serve, and no
/// serving node beyond the target is missing as a standby.
pub(super) fn roles_settled(inst: &InstanceRow, active: &[NodeRow]) -> bool {
    let count = |state| active.iter().filter(|n| n.state == state).count();
    let (running, standby) = (count(NodeState::Running), count(NodeState::Standby));
    let (serving_target, standby_target) = (
        inst.target_nodes() as usize,
        inst.spec.standby_nodes as usize,
    );
    let promote = running < serving_target && standby > 0;
    let keep_as_standby = running > serving_target && standby < standby_target;
    !promote && !keep_as_standby
}

/// The addresses new nodes must not take: every node's, and managed
/// backends' (they take addresses of the same subnet, from the top down).
fn taken_addresses(tx: &rusqlite::Connection) -> Result<HashSet<Ipv4Addr>, StoreError> {
    let mut taken: HashSet<Ipv4Addr> = store::all_nodes(tx)?
        .iter()
        .filter_map(|n| match n.address {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        })
        .collect();
    taken.extend(store::backend_addresses(tx)?);
    Ok(taken)
}

/// A per-node admin secret: 128 random bits, hex.
fn new_secret() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
