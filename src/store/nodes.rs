//! Node rows and the node state machine. A node's `state` changes only
//! through [`move_node`], which checks the move against
//! [`NodeState::can_move_to`] and applies it only if the row is still in the
//! state the caller saw (`UPDATE … WHERE id = ? AND state = ?`). So a caller
//! acting on a stale snapshot (a reconciler pass that read the node before
//! the health checker failed it) changes nothing, and learns so.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, NodeRow, StoreError};
use crate::model::{InstanceId, NodeId, NodeState, OperatingStatus};

const NODE_COLS: &str = "id, instance_id, address, secret, state, pid, operating_status,
     state_changed_at, applied_generation";

/// A new node row, `starting`.
pub fn insert_node(
    c: &Connection,
    instance_id: InstanceId,
    address: &str,
    secret: &str,
) -> Result<NodeRow, StoreError> {
    c.execute(
        "INSERT INTO nodes (instance_id, address, secret, state, operating_status, created_at,
                            state_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            instance_id,
            address,
            secret,
            NodeState::Starting,
            OperatingStatus::Offline,
            now()
        ],
    )?;
    node_by_id(c, NodeId(c.last_insert_rowid()))?
        .ok_or_else(|| StoreError::Corrupt("inserted node vanished".into()))
}

fn query_nodes(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {NODE_COLS} FROM nodes {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map(args, NodeRow::from_row)?;
    rows.map(|r| r?).collect()
}

pub fn list_nodes(c: &Connection, instance_id: InstanceId) -> Result<Vec<NodeRow>, StoreError> {
    query_nodes(c, "WHERE instance_id = ?1", [instance_id])
}

pub fn all_nodes(c: &Connection) -> Result<Vec<NodeRow>, StoreError> {
    query_nodes(c, "", [])
}

pub fn node_by_id(c: &Connection, id: NodeId) -> Result<Option<NodeRow>, StoreError> {
    Ok(query_nodes(c, "WHERE id = ?1", [id])?.pop())
}

/// Moves node `id` from `from` to `to` if it is still in `from`; returns
/// whether it moved. A move the state machine does not allow is an error,
/// whatever the row holds.
pub fn move_node(
    c: &Connection,
    id: NodeId,
    from: NodeState,
    to: NodeState,
) -> Result<bool, StoreError> {
    if !from.can_move_to(to) {
        return Err(StoreError::IllegalTransition { node: id, from, to });
    }
    let changed = c.execute(
        "UPDATE nodes SET state = ?3, state_changed_at = ?4 WHERE id = ?1 AND state = ?2",
        params![id, from, to, now()],
    )?;
    Ok(changed == 1)
}

/// Records the process and operating status observed of a node that is in
/// `state`; nothing happens (and `false` comes back) if it no longer is.
pub fn set_node_process(
    c: &Connection,
    id: NodeId,
    state: NodeState,
    pid: Option<u32>,
    status: OperatingStatus,
) -> Result<bool, StoreError> {
    let changed = c.execute(
        "UPDATE nodes SET pid = ?3, operating_status = ?4 WHERE id = ?1 AND state = ?2",
        params![id, state, pid, status],
    )?;
    Ok(changed == 1)
}

/// The node's operating status (what its last health check said); not a
/// state change.
pub fn set_node_operating(
    c: &Connection,
    id: NodeId,
    status: OperatingStatus,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE nodes SET operating_status = ?2 WHERE id = ?1 AND operating_status IS NOT ?2",
    )?
    .execute(params![id, status])?;
    Ok(())
}

/// The generation of the config the node accepted (`None`: it must be pushed again).
pub fn set_node_applied(
    c: &Connection,
    id: NodeId,
    generation: Option<u64>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE nodes SET applied_generation = ?2 WHERE id = ?1",
        params![id, generation.map(|g| g as i64)],
    )?;
    Ok(())
}

/// Deletes node `id` if it is still in `state` (a failed node that
/// recovered meanwhile stays); returns whether it was deleted.
pub fn delete_node(c: &Connection, id: NodeId, state: NodeState) -> Result<bool, StoreError> {
    // Its running time, for accounting (created_at is in seconds).
    let lived: Option<(InstanceId, i64)> = c
        .query_row(
            "SELECT instance_id, created_at FROM nodes WHERE id = ?1 AND state = ?2",
            params![id, state],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some((instance_id, created_at)) = lived {
        super::usage::add_node_span(c, instance_id, created_at * 1000, super::now_ms())?;
    }
    let deleted = c.execute(
        "DELETE FROM nodes WHERE id = ?1 AND state = ?2",
        params![id, state],
    )?;
    if deleted == 1 {
        c.execute("DELETE FROM samples WHERE node_id = ?1", [id])?;
        c.execute("DELETE FROM node_latest WHERE node_id = ?1", [id])?;
        c.execute("DELETE FROM member_states WHERE node_id = ?1", [id])?;
    }
    Ok(deleted == 1)
}
