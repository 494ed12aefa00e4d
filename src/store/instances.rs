//! Instance rows: the desired spec (JSON), its generation and statuses.

use rusqlite::{params, Connection, OptionalExtension};

use super::{list_nodes, now, InstanceRow, NodeRow, StoreError};
use crate::model::{
    derive_operating_status, InstanceId, InstanceSpec, NodeState, OperatingStatus, ProjectId,
    ProvisioningStatus,
};

const INSTANCE_COLS: &str =
    "i.id, i.project_id, p.name, i.name, i.spec, i.generation, i.provisioning_status,
     i.operating_status, i.status_reason, i.created_at, i.updated_at, i.desired_nodes, i.scaled_at,
     i.deleting, i.serving_nodes";

fn spec_json(spec: &InstanceSpec) -> Result<String, StoreError> {
    serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub fn insert_instance(
    c: &Connection,
    project_id: ProjectId,
    spec: &InstanceSpec,
) -> Result<InstanceRow, StoreError> {
    c.execute(
        "INSERT INTO instances (project_id, name, spec, generation, provisioning_status, operating_status,
                                created_at, updated_at)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?6)",
        params![
            project_id,
            spec.name,
            spec_json(spec)?,
            ProvisioningStatus::PendingCreate,
            OperatingStatus::Offline,
            now()
        ],
    )?;
    instance_by_id(c, InstanceId(c.last_insert_rowid()))?
        .ok_or_else(|| StoreError::Corrupt("inserted instance vanished".into()))
}

fn query_instances(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<InstanceRow>, StoreError> {
    let sql = format!(
        "SELECT {INSTANCE_COLS} FROM instances i JOIN projects p ON p.id = i.project_id {filter} ORDER BY p.name, i.name"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(args, InstanceRow::from_row)?;
    rows.map(|r| r?).collect()
}

pub fn instance_by_id(c: &Connection, id: InstanceId) -> Result<Option<InstanceRow>, StoreError> {
    Ok(query_instances(c, "WHERE i.id = ?1", [id])?.pop())
}

/// Every instance's generation (bumped by every spec change): what a
/// cache of something derived from specs compares against.
pub fn instance_generations(
    c: &Connection,
) -> Result<std::collections::HashMap<InstanceId, u64>, StoreError> {
    let mut stmt = c.prepare_cached("SELECT id, generation FROM instances")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn instance_by_name(
    c: &Connection,
    project_id: ProjectId,
    name: &str,
) -> Result<Option<InstanceRow>, StoreError> {
    Ok(query_instances(
        c,
        "WHERE i.project_id = ?1 AND i.name = ?2",
        params![project_id, name],
    )?
    .pop())
}

pub fn list_instances(
    c: &Connection,
    project_id: ProjectId,
) -> Result<Vec<InstanceRow>, StoreError> {
    query_instances(c, "WHERE i.project_id = ?1", [project_id])
}

pub fn all_instances(c: &Connection) -> Result<Vec<InstanceRow>, StoreError> {
    query_instances(c, "", [])
}

/// The instances of `user`'s projects that are not being deleted: what
/// their quota counts.
pub fn instances_of_user(c: &Connection, user: &str) -> Result<Vec<InstanceRow>, StoreError> {
    query_instances(c, "WHERE p.user = ?1 AND i.deleting = 0", [user])
}

/// Records how many nodes serve the instance. A change of a count already
/// recorded bumps the generation, so the nodes get a config with the new
/// count (their share of `node` rate limits); the first count goes into the
/// first config as it is. Whether anything changed.
pub fn set_serving_nodes(c: &Connection, id: InstanceId, count: u32) -> Result<bool, StoreError> {
    let changed = c.execute(
        "UPDATE instances SET serving_nodes = ?2,
                generation = generation + CASE WHEN serving_nodes = 0 THEN 0 ELSE 1 END
         WHERE id = ?1 AND serving_nodes IS NOT ?2",
        params![id, count],
    )?;
    Ok(changed > 0)
}

/// Stores a new desired spec: the generation goes up, and the nodes get the new config.
pub fn update_instance_spec(
    c: &Connection,
    id: InstanceId,
    spec: &InstanceSpec,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET spec = ?2, generation = generation + 1, provisioning_status = ?3,
                status_reason = NULL, updated_at = ?4 WHERE id = ?1",
        params![
            id,
            spec_json(spec)?,
            ProvisioningStatus::PendingUpdate,
            now()
        ],
    )?;
    Ok(())
}

pub fn set_instance_provisioning(
    c: &Connection,
    id: InstanceId,
    status: ProvisioningStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET provisioning_status = ?2, status_reason = ?3, updated_at = ?4,
                deleting = CASE WHEN ?2 = 'PENDING_DELETE' THEN 1 ELSE deleting END WHERE id = ?1",
        params![id, status, reason, now()],
    )?;
    Ok(())
}

/// Records what the reconciler observed; a no-op write is skipped to keep WAL churn low.
pub fn set_instance_operating(
    c: &Connection,
    id: InstanceId,
    status: OperatingStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "UPDATE instances SET operating_status = ?2, status_reason = ?3
         WHERE id = ?1 AND (operating_status IS NOT ?2 OR status_reason IS NOT ?3)",
    )?
    .execute(params![id, status, reason])?;
    Ok(())
}

/// Sets the instance's `operating_status` from its nodes (see
/// [`derive_operating_status`]); a reason only when not ONLINE.
pub fn refresh_instance_operating(c: &Connection, inst: &InstanceRow) -> Result<(), StoreError> {
    let (status, reason) = derived_operating(c, inst)?;
    set_instance_operating(c, inst.id, status, reason.as_deref())
}

/// Whether the stored `operating_status` (or its reason) differs from what
/// the nodes say now: a read, so that callers that refresh it on every
/// pass or check take the write lock only when there is something to write.
pub fn instance_operating_stale(c: &Connection, inst: &InstanceRow) -> Result<bool, StoreError> {
    let (status, reason) = derived_operating(c, inst)?;
    let stored: Option<(OperatingStatus, Option<String>)> = c
        .query_row(
            "SELECT operating_status, status_reason FROM instances WHERE id = ?1",
            [inst.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(stored.is_some_and(|stored| stored != (status, reason)))
}

fn derived_operating(
    c: &Connection,
    inst: &InstanceRow,
) -> Result<(OperatingStatus, Option<String>), StoreError> {
    Ok(operating_of(inst, &list_nodes(c, inst.id)?))
}

/// The `operating_status` and `status_reason` an instance's rows should
/// hold, given all its node rows.
pub fn operating_of<'a>(
    inst: &InstanceRow,
    nodes: impl IntoIterator<Item = &'a NodeRow>,
) -> (OperatingStatus, Option<String>) {
    let nodes: Vec<(NodeState, OperatingStatus)> = nodes
        .into_iter()
        .map(|n| (n.state, n.operating_status))
        .collect();
    let status = derive_operating_status(&nodes, inst.target_nodes() as usize);
    let reason = (status != OperatingStatus::Online).then(|| operating_reason(&nodes, inst));
    (status, reason)
}

fn operating_reason(nodes: &[(NodeState, OperatingStatus)], inst: &InstanceRow) -> String {
    let serving = nodes
        .iter()
        .filter(|(s, o)| *s == NodeState::Running && *o != OperatingStatus::Offline)
        .count();
    let failed = nodes
        .iter()
        .filter(|(s, _)| *s == NodeState::Failed)
        .count();
    let degraded = nodes
        .iter()
        .filter(|(_, o)| *o == OperatingStatus::Degraded)
        .count();
    format!(
        "{serving} of {} nodes serving, {failed} failed, {degraded} with backend members down",
        inst.target_nodes()
    )
}

/// Records the autoscaler's decision: the new node count and when.
pub fn set_desired_nodes(c: &Connection, id: InstanceId, desired: u32) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET desired_nodes = ?2, scaled_at = ?3 WHERE id = ?1",
        params![id, desired, now()],
    )?;
    Ok(())
}

/// Deletes an instance with its nodes.
pub fn delete_instance(c: &Connection, id: InstanceId) -> Result<(), StoreError> {
    c.execute("DELETE FROM samples WHERE instance_id = ?1", [id])?;
    c.execute(
        "DELETE FROM node_latest WHERE node_id IN (SELECT id FROM nodes WHERE instance_id = ?1)",
        [id],
    )?;
    c.execute("DELETE FROM member_states WHERE instance_id = ?1", [id])?;
    // Their token files go with the instance's directory (the reconciler).
    super::federation::delete_instance_mappings(c, id)?;
    c.execute("DELETE FROM nodes WHERE instance_id = ?1", [id])?;
    c.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    Ok(())
}
