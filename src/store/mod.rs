//! The desired state, in SQLite (WAL). Every write is one transaction that
//! commits before the API answers, so a crash never leaves half a change.
//!
//! Queries are short and local, so they run inline on the async threads behind
//! one mutex; SQLite allows a single writer anyway.

mod counters;
mod migrations;
mod monitor;
mod rows;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use thiserror::Error;

use crate::model::{
    derive_operating_status, InstanceSpec, NodeState, OperatingStatus, ProvisioningStatus,
};
pub use counters::{count_event, event_counts};
pub use monitor::{
    add_event, add_sample, apply_retention, latest_node_sample, monitor_log_size, recent_events,
    recent_samples, EventSubject, Retention, RetentionReport,
};
pub use rows::{EventRow, InstanceRow, NodeRow, ProjectRow};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database schema version {found} is newer than this lbd understands ({known})")]
    TooNew { found: i64, known: i64 },
}

/// A handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open
        // (rusqlite rolls back on drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` in one transaction: all of it commits, or none of it.
    pub fn transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        f(&self.lock())
    }
}

// === projects ===

pub fn insert_project(
    tx: &Connection,
    name: &str,
    user: &str,
    subnet: &str,
) -> Result<ProjectRow, StoreError> {
    let t = now();
    tx.execute(
        "INSERT INTO projects (name, user, subnet, provisioning_status, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
        params![
            name,
            user,
            subnet,
            ProvisioningStatus::PendingCreate.as_str(),
            t
        ],
    )?;
    project_by_id(tx, tx.last_insert_rowid())?
        .ok_or_else(|| StoreError::Corrupt("inserted project vanished".into()))
}

const PROJECT_COLS: &str =
    "id, name, user, subnet, provisioning_status, status_reason, created_at, deleting";

pub fn project_by_name(c: &Connection, name: &str) -> Result<Option<ProjectRow>, StoreError> {
    c.query_row(
        &format!("SELECT {PROJECT_COLS} FROM projects WHERE name = ?1"),
        [name],
        ProjectRow::from_row,
    )
    .optional()?
    .transpose()
}

pub fn project_by_id(c: &Connection, id: i64) -> Result<Option<ProjectRow>, StoreError> {
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

pub fn set_project_user(c: &Connection, id: i64, user: &str) -> Result<(), StoreError> {
    c.execute(
        "UPDATE projects SET user = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, user, now()],
    )?;
    Ok(())
}

pub fn set_project_status(
    c: &Connection,
    id: i64,
    status: ProvisioningStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE projects SET provisioning_status = ?2, status_reason = ?3, updated_at = ?4,
                deleting = CASE WHEN ?2 = 'PENDING_DELETE' THEN 1 ELSE deleting END WHERE id = ?1",
        params![id, status.as_str(), reason, now()],
    )?;
    Ok(())
}

pub fn delete_project(c: &Connection, id: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM projects WHERE id = ?1", [id])?;
    Ok(())
}

// === instances ===

const INSTANCE_COLS: &str =
    "i.id, i.project_id, p.name, i.name, i.spec, i.generation, i.provisioning_status,
     i.operating_status, i.status_reason, i.created_at, i.updated_at, i.desired_nodes, i.scaled_at,
     i.deleting";

pub fn insert_instance(
    c: &Connection,
    project_id: i64,
    spec: &InstanceSpec,
) -> Result<InstanceRow, StoreError> {
    let t = now();
    let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute(
        "INSERT INTO instances (project_id, name, spec, generation, provisioning_status, operating_status,
                                created_at, updated_at)
         VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?6)",
        params![
            project_id,
            spec.name,
            json,
            ProvisioningStatus::PendingCreate.as_str(),
            OperatingStatus::Offline.as_str(),
            t
        ],
    )?;
    instance_by_id(c, c.last_insert_rowid())?
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
    let mut stmt = c.prepare(&sql)?;
    let rows = stmt.query_map(args, InstanceRow::from_row)?;
    rows.map(|r| r?).collect()
}

pub fn instance_by_id(c: &Connection, id: i64) -> Result<Option<InstanceRow>, StoreError> {
    Ok(query_instances(c, "WHERE i.id = ?1", [id])?.pop())
}

pub fn instance_by_name(
    c: &Connection,
    project_id: i64,
    name: &str,
) -> Result<Option<InstanceRow>, StoreError> {
    Ok(query_instances(
        c,
        "WHERE i.project_id = ?1 AND i.name = ?2",
        params![project_id, name],
    )?
    .pop())
}

pub fn list_instances(c: &Connection, project_id: i64) -> Result<Vec<InstanceRow>, StoreError> {
    query_instances(c, "WHERE i.project_id = ?1", [project_id])
}

pub fn all_instances(c: &Connection) -> Result<Vec<InstanceRow>, StoreError> {
    query_instances(c, "", [])
}

/// Stores a new desired spec: the generation goes up, and the nodes get the new config.
pub fn update_instance_spec(
    c: &Connection,
    id: i64,
    spec: &InstanceSpec,
) -> Result<(), StoreError> {
    let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute(
        "UPDATE instances SET spec = ?2, generation = generation + 1, provisioning_status = ?3,
                status_reason = NULL, updated_at = ?4 WHERE id = ?1",
        params![id, json, ProvisioningStatus::PendingUpdate.as_str(), now()],
    )?;
    Ok(())
}

pub fn set_instance_provisioning(
    c: &Connection,
    id: i64,
    status: ProvisioningStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET provisioning_status = ?2, status_reason = ?3, updated_at = ?4,
                deleting = CASE WHEN ?2 = 'PENDING_DELETE' THEN 1 ELSE deleting END WHERE id = ?1",
        params![id, status.as_str(), reason, now()],
    )?;
    Ok(())
}

/// Records what the reconciler observed; a no-op write is skipped to keep WAL churn low.
pub fn set_instance_operating(
    c: &Connection,
    id: i64,
    status: OperatingStatus,
    reason: Option<&str>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET operating_status = ?2, status_reason = ?3
         WHERE id = ?1 AND (operating_status IS NOT ?2 OR status_reason IS NOT ?3)",
        params![id, status.as_str(), reason],
    )?;
    Ok(())
}

/// Sets the instance's `operating_status` from its nodes (see
/// [`derive_operating_status`]); a reason only when not ONLINE.
pub fn refresh_instance_operating(c: &Connection, inst: &InstanceRow) -> Result<(), StoreError> {
    let nodes: Vec<(NodeState, OperatingStatus)> = list_nodes(c, inst.id)?
        .iter()
        .map(|n| (n.state, n.operating_status))
        .collect();
    let status = derive_operating_status(&nodes, inst.target_nodes() as usize);
    let reason = match status {
        OperatingStatus::Online => None,
        _ => {
            let count = |s: NodeState| nodes.iter().filter(|(n, _)| *n == s).count();
            let degraded = nodes
                .iter()
                .filter(|(_, o)| *o == OperatingStatus::Degraded)
                .count();
            Some(format!(
                "{} of {} nodes serving, {} failed, {} with backend members down",
                nodes
                    .iter()
                    .filter(|(s, o)| *s == NodeState::Running && *o != OperatingStatus::Offline)
                    .count(),
                inst.target_nodes(),
                count(NodeState::Failed),
                degraded
            ))
        }
    };
    set_instance_operating(c, inst.id, status, reason.as_deref())
}

/// Records the autoscaler's decision: the new node count and when.
pub fn set_desired_nodes(c: &Connection, id: i64, desired: u32) -> Result<(), StoreError> {
    c.execute(
        "UPDATE instances SET desired_nodes = ?2, scaled_at = ?3 WHERE id = ?1",
        params![id, desired, now()],
    )?;
    Ok(())
}

/// Deletes an instance with its nodes.
pub fn delete_instance(c: &Connection, id: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM samples WHERE instance_id = ?1", [id])?;
    c.execute("DELETE FROM nodes WHERE instance_id = ?1", [id])?;
    c.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    Ok(())
}

// === nodes ===

const NODE_COLS: &str = "id, instance_id, address, secret, state, pid, operating_status,
     state_changed_at, applied_generation";

pub fn insert_node(
    c: &Connection,
    instance_id: i64,
    address: &str,
    secret: &str,
) -> Result<NodeRow, StoreError> {
    c.execute(
        "INSERT INTO nodes (instance_id, address, secret, state, operating_status, created_at,
                            state_changed_at)
         VALUES (?1, ?2, ?3, 'starting', ?4, ?5, ?5)",
        params![
            instance_id,
            address,
            secret,
            OperatingStatus::Offline.as_str(),
            now()
        ],
    )?;
    let id = c.last_insert_rowid();
    c.query_row(
        &format!("SELECT {NODE_COLS} FROM nodes WHERE id = ?1"),
        [id],
        NodeRow::from_row,
    )?
}

fn query_nodes(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<NodeRow>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {NODE_COLS} FROM nodes {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map(args, NodeRow::from_row)?;
    rows.map(|r| r?).collect()
}

pub fn list_nodes(c: &Connection, instance_id: i64) -> Result<Vec<NodeRow>, StoreError> {
    query_nodes(c, "WHERE instance_id = ?1", [instance_id])
}

pub fn all_nodes(c: &Connection) -> Result<Vec<NodeRow>, StoreError> {
    query_nodes(c, "", [])
}

pub fn node_by_id(c: &Connection, id: i64) -> Result<Option<NodeRow>, StoreError> {
    Ok(query_nodes(c, "WHERE id = ?1", [id])?.pop())
}

/// Records what was observed of a node; `state_changed_at` moves only when
/// the state does.
pub fn set_node_observed(
    c: &Connection,
    id: i64,
    state: NodeState,
    pid: Option<u32>,
    status: OperatingStatus,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE nodes SET state_changed_at = CASE WHEN state = ?2 THEN state_changed_at ELSE ?5 END,
                state = ?2, pid = ?3, operating_status = ?4 WHERE id = ?1",
        params![id, state.as_str(), pid, status.as_str(), now()],
    )?;
    Ok(())
}

pub fn set_node_operating(
    c: &Connection,
    id: i64,
    status: OperatingStatus,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE nodes SET operating_status = ?2 WHERE id = ?1 AND operating_status IS NOT ?2",
        params![id, status.as_str()],
    )?;
    Ok(())
}

/// The generation of the config the node accepted (`None`: it must be pushed again).
pub fn set_node_applied(
    c: &Connection,
    id: i64,
    generation: Option<u64>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE nodes SET applied_generation = ?2 WHERE id = ?1",
        params![id, generation.map(|g| g as i64)],
    )?;
    Ok(())
}

pub fn delete_node(c: &Connection, id: i64) -> Result<(), StoreError> {
    c.execute("DELETE FROM samples WHERE node_id = ?1", [id])?;
    c.execute("DELETE FROM nodes WHERE id = ?1", [id])?;
    Ok(())
}
