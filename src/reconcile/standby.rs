//! The standby moves (`standby_nodes`), each one guarded state move and the
//! event that explains it, inside the caller's transaction: the reconciler
//! promotes on scale-out and retires a dead standby; the health checker
//! promotes in the same transaction as the failover it decides, so a
//! failed node and its successor change together.

use crate::model::{EventKind, InstanceId, NodeState, OperatingStatus};
use crate::store::{self, EventSubject, NodeRow, StoreError};

/// Moves a standby into DNS (running); whether it moved (a stale row moves
/// nothing).
pub(crate) fn promote(
    tx: &rusqlite::Connection,
    standby: &mut NodeRow,
    subject: EventSubject,
    why: &str,
) -> Result<bool, StoreError> {
    if !store::move_node(tx, standby.id, NodeState::Standby, NodeState::Running)? {
        return Ok(false);
    }
    standby.state = NodeState::Running;
    let message = format!(
        "standby node {} at {} enters DNS at once: {why}",
        standby.id, standby.address
    );
    tracing::info!(kind = %EventKind::NodePromoted, "{message}");
    store::add_event(tx, subject, EventKind::NodePromoted, &message)?;
    Ok(true)
}

/// Promotes the instance's oldest answering standby, if it has one, with
/// an event on it (`subject` with its node id); which node it promoted.
pub(crate) fn promote_any(
    tx: &rusqlite::Connection,
    instance: InstanceId,
    subject: EventSubject,
    why: &str,
) -> Result<Option<NodeRow>, StoreError> {
    let standby = store::list_nodes(tx, instance)?
        .into_iter()
        .find(|n| n.state == NodeState::Standby && n.operating_status != OperatingStatus::Offline);
    let Some(mut standby) = standby else {
        return Ok(None);
    };
    let subject = EventSubject {
        node_id: Some(standby.id),
        ..subject
    };
    Ok(promote(tx, &mut standby, subject, why)?.then_some(standby))
}

/// A standby that died or stopped answering retires, with an event of
/// `kind` saying `how`; a new standby boots on the reconciler's next pass.
/// It serves nobody, so there is nothing to fail over.
pub(crate) fn retire(
    tx: &rusqlite::Connection,
    node: &NodeRow,
    subject: EventSubject,
    kind: EventKind,
    how: &str,
) -> Result<bool, StoreError> {
    if !store::move_node(tx, node.id, NodeState::Standby, NodeState::Retiring)? {
        return Ok(false);
    }
    let message = format!(
        "standby node {} at {} {how}; it retires and a new standby boots",
        node.id, node.address
    );
    tracing::info!(kind = %kind, "{message}");
    store::add_event(tx, subject, kind, &message)?;
    Ok(true)
}
