//! The health checker's decisions about a node's state. Each is written as
//! one transaction: the guarded state move and the event that explains it.
//! A decision overtaken by another change (the node is no longer in the
//! state it was decided from) changes nothing.

use std::fmt;

use crate::model::{EventKind, NodeId, NodeState, OperatingStatus};
use crate::reconcile::standby;
use crate::store::{self, EventSubject, NodeRow, Store, StoreError};

#[derive(Debug, Clone)]
pub(super) enum Decision {
    /// Running → failed: it missed `failures` checks in a row.
    Fail {
        node: NodeRow,
        subject: EventSubject,
        failures: u32,
        reason: String,
    },
    /// Running → failed at once: its process ended by itself (the compute
    /// driver saw it), so there is nothing to wait for.
    Exit {
        node: NodeRow,
        subject: EventSubject,
        /// How it ended ("killed by signal 9").
        reason: String,
    },
    /// Standby → retiring: a standby missed its checks or its process
    /// ended (`how`); it serves nobody, so a new one boots instead of a
    /// failover.
    StandbyLost {
        node: NodeRow,
        subject: EventSubject,
        /// `node_failed` (missed checks) or `node_exited`.
        kind: EventKind,
        how: String,
    },
    /// Failed → running: it passed `successes` checks within the grace period.
    Recover {
        node: NodeRow,
        subject: EventSubject,
        successes: u32,
        config_version: Option<u64>,
        operating: OperatingStatus,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Fail { .. } | Decision::Exit { .. } => f.write_str("failover decision"),
            Decision::StandbyLost { .. } => f.write_str("standby replacement decision"),
            Decision::Recover { .. } => f.write_str("recovery decision"),
        }
    }
}

impl Decision {
    pub(super) fn node_id(&self) -> NodeId {
        match self {
            Decision::Fail { node, .. }
            | Decision::Exit { node, .. }
            | Decision::StandbyLost { node, .. }
            | Decision::Recover { node, .. } => node.id,
        }
    }

    /// Writes the decision; `Ok(false)` if the node was no longer in the
    /// state it was decided from (nothing changed).
    pub(super) async fn write(self, store: &Store) -> Result<bool, StoreError> {
        store.transaction(move |tx| self.apply(tx)).await
    }

    fn apply(self, tx: &rusqlite::Connection) -> Result<bool, StoreError> {
        match self {
            Decision::Fail {
                node,
                subject,
                failures,
                reason,
            } => {
                if !store::move_node(tx, node.id, NodeState::Running, NodeState::Failed)? {
                    return Ok(false);
                }
                let offline = OperatingStatus::Offline;
                store::set_node_process(tx, node.id, NodeState::Failed, node.pid, offline)?;
                let message = format!(
                    "node {} at {} missed {failures} health checks in a row (last: {reason}); failing over",
                    node.id, node.address
                );
                tracing::info!(kind = %EventKind::NodeFailed, "{message}");
                store::add_event(tx, subject, EventKind::NodeFailed, &message)?;
                promote_successor(tx, &node, subject)?;
                Ok(true)
            }
            Decision::Exit {
                node,
                subject,
                reason,
            } => {
                note_exit(tx, &node, subject, &reason)?;
                if !store::move_node(tx, node.id, NodeState::Running, NodeState::Failed)? {
                    return Ok(false);
                }
                let offline = OperatingStatus::Offline;
                store::set_node_process(tx, node.id, NodeState::Failed, None, offline)?;
                let message = format!(
                    "node {} at {} {reason}: its process is gone; failing over at once, \
                     without waiting for missed checks",
                    node.id, node.address
                );
                tracing::info!(kind = %EventKind::NodeFailed, "{message}");
                store::add_event(tx, subject, EventKind::NodeFailed, &message)?;
                promote_successor(tx, &node, subject)?;
                Ok(true)
            }
            Decision::StandbyLost {
                node,
                subject,
                kind,
                how,
            } => standby::retire(tx, &node, subject, kind, &how),
            Decision::Recover {
                node,
                subject,
                successes,
                config_version,
                operating,
            } => {
                if !store::move_node(tx, node.id, NodeState::Failed, NodeState::Running)? {
                    return Ok(false);
                }
                store::set_node_process(tx, node.id, NodeState::Running, node.pid, operating)?;
                store::set_node_applied(tx, node.id, config_version)?;
                let message = format!(
                    "node {} at {} is healthy again ({successes} checks passed) within the grace \
                     period; its replacement retires",
                    node.id, node.address
                );
                tracing::info!(kind = %EventKind::NodeRecovered, "{message}");
                store::add_event(tx, subject, EventKind::NodeRecovered, &message)?;
                Ok(true)
            }
        }
    }
}

/// A failed node's successor in DNS, in the failover's transaction: a
/// standby if the instance keeps one (the reconciler boots a new standby,
/// or a replacement when there was none).
fn promote_successor(
    tx: &rusqlite::Connection,
    failed: &NodeRow,
    subject: EventSubject,
) -> Result<(), StoreError> {
    let why = format!("node {} failed", failed.id);
    standby::promote_any(tx, failed.instance_id, subject, &why)?;
    Ok(())
}

/// Records that a running node's process ended (`node_exited`) and takes it
/// offline, unless that is known already: the reconciler records the same
/// when its pass finds the process gone first (the same condition as there,
/// so one exit is one event). Whether it recorded it now.
pub(super) fn note_exit(
    tx: &rusqlite::Connection,
    node: &NodeRow,
    subject: EventSubject,
    reason: &str,
) -> Result<bool, StoreError> {
    let Some(now) = store::node_by_id(tx, node.id)? else {
        return Ok(false);
    };
    if now.state != NodeState::Running || now.operating_status == OperatingStatus::Offline {
        return Ok(false);
    }
    if !store::set_node_process(
        tx,
        node.id,
        NodeState::Running,
        None,
        OperatingStatus::Offline,
    )? {
        return Ok(false);
    }
    let message = format!("node {} at {} {reason}", node.id, node.address);
    tracing::info!(kind = %EventKind::NodeExited, "{message}");
    store::add_event(tx, subject, EventKind::NodeExited, &message)?;
    Ok(true)
}
