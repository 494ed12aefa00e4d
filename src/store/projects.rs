//! Project rows.

use rusqlite::{params, Connection, OptionalExtension};

use super::{now, ProjectRow, StoreError};
use crate::model::{ProjectId, ProvisioningStatus};

const PROJECT_COLS: &str =
    "id, name, user, subnet, provisioning_status, status_reason, created_at, deleting";

pub fn insert_project(
    c: &Connection,
    name: &str,
    user: &str,
    subnet: &str,
) -> Result<ProjectRow, StoreError> {
    let t = now();
    c.execute(
        "INSERT INTO projects (name, user, subnet, provisioning_status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![name, user, subnet, ProvisioningStatus::PendingCreate, t],
    )?;
    project_by_id(c, ProjectId(c.last_insert_rowid()))?
        .ok_or_else(|| StoreError::Corrupt("inserted project vanished".into()))
}

pub fn project_by_name(c: &Connection, name: &str) -> Result<Option<ProjectRow>, StoreError> {
    c.query_row(
        &format!("SELECT {PROJECT_COLS} FROM projects WHERE name = ?1"),
        [name],
        ProjectRow::from_row,
    )
    .optional()?
    .transpose()
}

pub fn project_by_id(c: &Connection, id: ProjectId) -> Result<Option<ProjectRow>, StoreError> {
    c.query_row(
        &format!("SELECT {PROJECT_COLS} FROM projects WHERE id = ?1"),
        [id],
        ProjectRow::from_row,
    )
    .optional()?
    .transpose()
}

pub fn list_projects(c: &Connection) -> Result<Vec<ProjectRow>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {PROJECT_COLS} FROM projects ORDER BY name"
    ))?;
    let rows = stmt.query_map([], ProjectRow::from_row)?;
    rows.map(|r| r?).collect()
}

pub fn set_project_user(c: &Connection, id: ProjectId, user: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE projects SET user = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, user, now()],
    )?;
    Ok(())
}

pub fn set_project_status(
    c: &Connection,
    id: ProjectId,
    status: ProvisioningStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE projects SET provisioning_status = ?2, status_reason = ?3, updated_at = ?4,
                deleting = CASE WHEN ?2 = 'PENDING_DELETE' THEN 1 ELSE deleting END WHERE id = ?1",
        params![id, status, reason, now()],
    )?;
    Ok(())
}

pub fn delete_project(c: &Connection, id: ProjectId) -> Result<(), StoreError> {
    c.execute("DELETE FROM projects WHERE id = ?1", [id])?;
    Ok(())
}
