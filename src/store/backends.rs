//! Managed backend rows (issue 16). A backend's `state` changes only through
//! [`move_backend`] (and [`mark_backend_ready`]), guarded like
//! `store::move_node`: the move applies only if the row is still in the
//! state the caller saw, so a stale decision changes nothing. A stopped
//! backend's row is deleted by [`finish_backend`], which keeps its lifetime
//! and adds it to the daily totals in the same transaction.

use std::net::Ipv4Addr;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::usage::{add_span, add_to_day, day_of, UsageKey};
use super::StoreError;
use crate::model::managed::{BackendState, ManagedBackendInfo, ManagedCompute};
use crate::model::{InstanceId, ProjectId};

/// A managed backend as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRow {
    pub id: i64,
    pub instance_id: InstanceId,
    pub project_id: ProjectId,
    pub pool: String,
    pub resource: Option<String>,
    pub state: BackendState,
    pub compute: ManagedCompute,
    pub address: Ipv4Addr,
    pub port: u16,
    pub pid: Option<u32>,
    pub started_at_ms: i64,
    pub ready_at_ms: Option<i64>,
    pub requests: u64,
    /// A held request waited for this backend.
    pub cold: bool,
    pub cold_start_ms: Option<i64>,
    pub last_active_ms: Option<i64>,
    /// The digest of the template it was started from (`None`: a row from
    /// before digests were kept).
    pub template: Option<String>,
}

impl BackendRow {
    pub fn info(&self) -> ManagedBackendInfo {
        ManagedBackendInfo {
            id: self.id,
            pool: self.pool.clone(),
            resource: self.resource.clone(),
            state: self.state,
            compute: self.compute,
            address: format!("{}:{}", self.address, self.port),
            pid: self.pid,
            started_at_ms: self.started_at_ms,
            ready_at_ms: self.ready_at_ms,
            last_active_ms: self.last_active_ms,
            requests: self.requests,
        }
    }

    fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<Self, StoreError>> {
        let state: String = r.get(5)?;
        let compute: String = r.get(6)?;
        let address: String = r.get(7)?;
        let port: i64 = r.get(8)?;
        let requests: i64 = r.get(12)?;
        Ok((|| {
            Ok(BackendRow {
                id: r.get(0)?,
                instance_id: r.get(1)?,
                project_id: r.get(2)?,
                pool: r.get(3)?,
                resource: r.get(4)?,
                state: parse_state(&state)?,
                compute: match compute.as_str() {
                    "process" => ManagedCompute::Process,
                    "vm" => ManagedCompute::Vm,
                    _ => return Err(corrupt("compute", &compute)),
                },
                address: address.parse().map_err(|_| corrupt("address", &address))?,
                port: u16::try_from(port).map_err(|_| corrupt("port", &port.to_string()))?,
                pid: r.get(9)?,
                started_at_ms: r.get(10)?,
                ready_at_ms: r.get(11)?,
                requests: requests.max(0) as u64,
                cold: r.get(13)?,
                cold_start_ms: r.get(14)?,
                last_active_ms: r.get(15)?,
                template: r.get(16)?,
            })
        })())
    }
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("backend {what} {value:?}"))
}

fn parse_state(s: &str) -> Result<BackendState, StoreError> {
    [
        BackendState::Starting,
        BackendState::Ready,
        BackendState::Stopping,
    ]
    .into_iter()
    .find(|st| st.as_str() == s)
    .ok_or_else(|| corrupt("state", s))
}

const BACKEND_COLS: &str = "id, instance_id, project_id, pool, resource, state, compute, address,
     port, pid, started_at_ms, ready_at_ms, requests, cold, cold_start_ms, last_active_ms, template";

fn query_backends(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<BackendRow>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {BACKEND_COLS} FROM backends {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map(args, BackendRow::from_row)?;
    rows.map(|r| r?).collect()
}

/// What a new backend row needs.
#[derive(Debug, Clone)]
pub struct NewBackend<'a> {
    pub instance_id: InstanceId,
    pub project_id: ProjectId,
    pub instance_name: &'a str,
    pub pool: &'a str,
    pub resource: Option<&'a str>,
    pub compute: ManagedCompute,
    pub address: Ipv4Addr,
    pub port: u16,
    pub cold: bool,
    pub started_at_ms: i64,
    /// `decide::template_digest` of its pool.
    pub template: &'a str,
}

/// A new backend row, `starting`; counted as a start (and a cold start) of its day.
pub fn insert_backend(c: &Connection, b: &NewBackend<'_>) -> Result<BackendRow, StoreError> {
    c.execute(
        "INSERT INTO backends (instance_id, project_id, pool, resource, state, compute, address,
                               port, started_at_ms, cold, template)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            b.instance_id,
            b.project_id,
            b.pool,
            b.resource,
            BackendState::Starting.as_str(),
            b.compute.as_str(),
            b.address.to_string(),
            b.port,
            b.started_at_ms,
            b.cold,
            b.template
        ],
    )?;
    let id = c.last_insert_rowid();
    let key = UsageKey {
        project_id: b.project_id,
        instance_id: b.instance_id,
        instance_name: b.instance_name,
        pool: b.pool,
    };
    add_to_day(c, &key, day_of(b.started_at_ms), "starts", 1.0)?;
    if b.cold {
        add_to_day(c, &key, day_of(b.started_at_ms), "cold_starts", 1.0)?;
    }
    backend_by_id(c, id)?.ok_or_else(|| StoreError::Corrupt("inserted backend vanished".into()))
}

pub fn backend_by_id(c: &Connection, id: i64) -> Result<Option<BackendRow>, StoreError> {
    Ok(query_backends(c, "WHERE id = ?1", [id])?.pop())
}

pub fn backends_of(c: &Connection, instance_id: InstanceId) -> Result<Vec<BackendRow>, StoreError> {
    query_backends(c, "WHERE instance_id = ?1", [instance_id])
}

pub fn all_backends(c: &Connection) -> Result<Vec<BackendRow>, StoreError> {
    query_backends(c, "", [])
}

/// Every address a backend holds (node addresses must avoid them, and the other way round).
pub fn backend_addresses(c: &Connection) -> Result<Vec<Ipv4Addr>, StoreError> {
    Ok(all_backends(c)?.into_iter().map(|b| b.address).collect())
}

pub fn set_backend_pid(c: &Connection, id: i64, pid: u32) -> Result<(), StoreError> {
    c.execute(
        "UPDATE backends SET pid = ?2 WHERE id = ?1",
        params![id, pid],
    )?;
    Ok(())
}

/// Moves backend `id` from `from` to `to` if it is still in `from`.
pub fn move_backend(
    c: &Connection,
    id: i64,
    from: BackendState,
    to: BackendState,
) -> Result<bool, StoreError> {
    if !from.can_move_to(to) {
        return Err(StoreError::IllegalBackendTransition {
            backend: id,
            from,
            to,
        });
    }
    let changed = c.execute(
        "UPDATE backends SET state = ?3 WHERE id = ?1 AND state = ?2",
        params![id, from.as_str(), to.as_str()],
    )?;
    Ok(changed == 1)
}

/// `starting` → `ready` at `ready_at_ms`; a cold backend's wait is recorded
/// (and added to its day's cold-start sum).
pub fn mark_backend_ready(
    c: &Connection,
    id: i64,
    instance_name: &str,
    ready_at_ms: i64,
) -> Result<bool, StoreError> {
    if !move_backend(c, id, BackendState::Starting, BackendState::Ready)? {
        return Ok(false);
    }
    let Some(b) = backend_by_id(c, id)? else {
        return Ok(false);
    };
    let cold_ms = b.cold.then(|| (ready_at_ms - b.started_at_ms).max(0));
    c.execute(
        "UPDATE backends SET ready_at_ms = ?2, cold_start_ms = ?3 WHERE id = ?1",
        params![id, ready_at_ms, cold_ms],
    )?;
    if let Some(ms) = cold_ms {
        let key = UsageKey::of(&b, instance_name);
        add_to_day(c, &key, day_of(ready_at_ms), "cold_start_ms_sum", ms as f64)?;
    }
    Ok(true)
}

/// What the nodes reported of a backend: its request count (summed over
/// nodes; only grows here) and when it was last active.
pub fn set_backend_activity(
    c: &Connection,
    id: i64,
    requests: u64,
    last_active_ms: Option<i64>,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE backends SET requests = MAX(requests, ?2),
                last_active_ms = COALESCE(MAX(COALESCE(last_active_ms, 0), ?3), last_active_ms)
         WHERE id = ?1",
        params![id, requests as i64, last_active_ms],
    )?;
    Ok(())
}

/// The backend stopped at `stopped_at_ms`: its row goes, its lifetime stays
/// and its running time and requests join the daily totals. Returns the row
/// as it was (`None` if it was already gone).
pub fn finish_backend(
    c: &Connection,
    id: i64,
    instance_name: &str,
    stopped_at_ms: i64,
    failure: Option<&str>,
) -> Result<Option<BackendRow>, StoreError> {
    let Some(b) = backend_by_id(c, id)? else {
        return Ok(None);
    };
    let stopped = stopped_at_ms.max(b.started_at_ms);
    c.execute(
        "INSERT OR REPLACE INTO backend_lifetimes (backend_id, project_id, instance_id,
             instance_name, pool, resource, address, started_at_ms, ready_at_ms, stopped_at_ms,
             requests, cold, cold_start_ms, failure)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        params![
            b.id,
            b.project_id,
            b.instance_id,
            instance_name,
            b.pool,
            b.resource,
            format!("{}:{}", b.address, b.port),
            b.started_at_ms,
            b.ready_at_ms,
            stopped,
            b.requests as i64,
            b.cold,
            b.cold_start_ms,
            failure
        ],
    )?;
    let key = UsageKey::of(&b, instance_name);
    add_span(c, &key, "backend_seconds", b.started_at_ms, stopped)?;
    add_to_day(c, &key, day_of(stopped), "requests", b.requests as f64)?;
    c.execute("DELETE FROM backends WHERE id = ?1", [id])?;
    Ok(Some(b))
}

/// The pid a backend had when it was last seen (for adoption checks).
pub fn backend_pid(c: &Connection, id: i64) -> Result<Option<u32>, StoreError> {
    Ok(
        c.query_row("SELECT pid FROM backends WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .flatten(),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Store;

    /// A real SQLite file in a directory removed on drop.
    pub(crate) struct TempDb(pub std::path::PathBuf);

    impl Drop for TempDb {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    pub(crate) fn store() -> (TempDb, Store) {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lbaas-backends-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open(&dir.join("lbaas.db")).unwrap();
        (TempDb(dir), store)
    }

    fn new(at: i64, cold: bool) -> NewBackend<'static> {
        NewBackend {
            instance_id: InstanceId(7),
            project_id: ProjectId(3),
            instance_name: "web",
            pool: "default",
            resource: None,
            compute: ManagedCompute::Process,
            address: "127.9.0.254".parse().unwrap(),
            template: "t1",
            port: 8080,
            cold,
            started_at_ms: at,
        }
    }

    #[test]
    fn moves_are_guarded_by_the_state_seen() {
        let (_d, store) = store();
        store
            .transaction_blocking(|tx| {
                let b = insert_backend(tx, &new(1_000, false))?;
                assert_eq!(b.state, BackendState::Starting);
                assert!(move_backend(
                    tx,
                    b.id,
                    BackendState::Starting,
                    BackendState::Stopping
                )?);
                // Stale: it is no longer starting.
                assert!(!mark_backend_ready(tx, b.id, "web", 2_000)?);
                assert!(matches!(
                    move_backend(tx, b.id, BackendState::Stopping, BackendState::Ready),
                    Err(StoreError::IllegalBackendTransition { .. })
                ));
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    #[test]
    fn a_finished_backend_leaves_its_lifetime_and_totals() {
        let (_d, store) = store();
        store
            .transaction_blocking(|tx| {
                let b = insert_backend(tx, &new(10_000, true))?;
                set_backend_pid(tx, b.id, 42)?;
                assert!(mark_backend_ready(tx, b.id, "web", 10_250)?);
                set_backend_activity(tx, b.id, 5, Some(11_000))?;
                set_backend_activity(tx, b.id, 3, None)?;
                let row = backend_by_id(tx, b.id)?.unwrap();
                assert_eq!((row.requests, row.cold_start_ms), (5, Some(250)));
                assert_eq!(row.last_active_ms, Some(11_000));
                finish_backend(tx, b.id, "web", 13_500, None)?;
                assert!(backend_by_id(tx, b.id)?.is_none());
                let (secs, starts, cold, req, ms): (f64, i64, i64, i64, i64) = tx.query_row(
                    "SELECT backend_seconds, starts, cold_starts, requests, cold_start_ms_sum
                     FROM usage_daily",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )?;
                assert_eq!((secs, starts, cold, req, ms), (3.5, 1, 1, 5, 250));
                let kept: i64 =
                    tx.query_row("SELECT COUNT(*) FROM backend_lifetimes", [], |r| r.get(0))?;
                assert_eq!(kept, 1);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }
}
