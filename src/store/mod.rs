//! The desired state, in SQLite (WAL). Every write is one transaction that
//! commits before the API answers, so a crash never leaves half a change.
//!
//! No statement runs on the async runtime: [`Store::read`] and
//! [`Store::transaction`] hand their closure to a blocking thread. There are
//! two connections: one writer (SQLite allows one anyway) and one reader
//! that is `query_only`. In WAL mode readers never wait for a writer, so
//! while another process holds the write lock, reads go on, and a write
//! gives up at its deadline with [`StoreError::Unavailable`] instead of
//! stalling its caller.

mod audit;
pub(crate) mod backends;
mod counters;
mod federation;
pub mod federation_tokens;
mod instances;
mod migrations;
mod monitor;
mod nodes;
mod projects;
mod rows;
mod sql_types;
pub mod tls_keys;
mod usage;
mod users;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, Transaction, TransactionBehavior};
use thiserror::Error;

use crate::model::{NodeId, NodeState};
pub use audit::{add_audit, query_audit};
pub use backends::{
    all_backends, backend_addresses, backend_by_id, backend_pid, backends_of, finish_backend,
    insert_backend, mark_backend_ready, move_backend, set_backend_activity, set_backend_pid,
    BackendRow, NewBackend,
};
pub use counters::{count_event, event_counts};
pub use federation::{
    all_mappings_versions, all_token_secret_ids, count_mappings, delete_resource_mapping,
    delete_token_mapping, has_expired_tokens, mappings_info, mappings_version, node_mappings,
    prune_expired_tokens, put_resource_mapping, put_token_mapping, resource_mapping,
    retain_providers, MappingWrite, TokenWrite,
};
pub use instances::{
    all_instances, delete_instance, insert_instance, instance_by_id, instance_by_name,
    instance_generations, instance_operating_stale, instances_of_user, list_instances,
    operating_of, refresh_instance_operating, set_desired_nodes, set_instance_operating,
    set_instance_provisioning, set_serving_nodes, update_instance_spec,
};
pub use monitor::{
    add_event, add_sample, apply_retention, latest_node_sample, member_state_changes,
    monitor_log_size, recent_events, recent_samples, EventSubject, Retention, RetentionReport,
};
pub use nodes::{
    all_nodes, delete_node, insert_node, list_nodes, move_node, node_by_id, set_node_applied,
    set_node_operating, set_node_process,
};
pub use projects::{
    delete_project, insert_project, list_projects, project_by_id, project_by_name,
    set_project_status, set_project_user,
};
pub use rows::{EventRow, InstanceRow, NodeRow, ProjectRow};
pub use usage::{backends_of_instance, prune_usage, usage_report};
pub use users::{
    count_projects_of, delete_user, ensure_admin, insert_tokenless_member, insert_user, list_users,
    set_user_quota, set_user_role, set_user_token_hash, user_by_name, user_by_token_hash,
    user_exists, user_target_nodes, user_usage, UserRow,
};

#[derive(Debug, Error)]
pub enum StoreError {
    /// Another process holds the database's write lock (or it is otherwise
    /// busy) past the write deadline. Nothing was written; try again.
    #[error("the state database is locked or busy; nothing was written, try again")]
    Unavailable,
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database schema version {found} is newer than this lbd understands ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("node {node} cannot move from {} to {}", from.as_str(), to.as_str())]
    IllegalTransition {
        node: NodeId,
        from: NodeState,
        to: NodeState,
    },
    #[error("backend {backend} cannot move from {} to {}", from.as_str(), to.as_str())]
    IllegalBackendTransition {
        backend: i64,
        from: crate::model::managed::BackendState,
        to: crate::model::managed::BackendState,
    },
    /// A TLS key file (`tls_keys.rs`) could not be written or read.
    #[error("tls key file: {0}")]
    KeyFile(String),
    /// A federation token file (`federation_tokens.rs`) could not be
    /// written or read (the message names the file, never the token).
    #[error("federation token file: {0}")]
    TokenFile(String),
    #[error("the store's worker thread failed: {0}")]
    Worker(String),
    #[error("state database file {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable,
            _ => StoreError::Sqlite(e),
        }
    }
}

impl StoreError {
    /// The database is locked or busy: a passing condition, not a fault of
    /// the object being worked on.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable)
    }
}

/// How long a write may wait for the database (for the lock of another
/// process, and behind this process's other writes) before it gives up with
/// [`StoreError::Unavailable`]. The API promises an answer within 1 s.
pub const DEFAULT_WRITE_DEADLINE: Duration = Duration::from_millis(500);
/// How long a read waits on a busy database (rare under WAL).
const READ_BUSY_TIMEOUT: Duration = Duration::from_millis(500);

/// A handle on the state database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Connections>,
}

struct Connections {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    write_deadline: Duration,
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Unix milliseconds (backend lifetimes and accounting need sub-second times).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(READ_BUSY_TIMEOUT)?;
    // The health checker and the reconciler run the same few statements
    // thousands of times a second at scale: parse each once.
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// The database and its WAL files hold node secrets: only the owner may
/// read them. SQLite creates `-wal` and `-shm` with the database file's
/// mode, so creating that one 0600 first covers all three; files left by
/// an older lbd are closed here too.
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| StoreError::File {
        path: path.display().to_string(),
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        }
    }
    Ok(())
}

fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    // A panic while holding the lock cannot leave a transaction open
    // (rusqlite rolls back on drop), so the connection is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to
    /// date. Blocking: call it at start-up, before serving.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with_deadline(path, DEFAULT_WRITE_DEADLINE)
    }

    pub fn open_with_deadline(path: &Path, write_deadline: Duration) -> Result<Store, StoreError> {
        make_private(path)?;
        let mut writer = open_connection(path)?;
        writer.busy_timeout(Duration::from_secs(5))?;
        migrations::migrate(&mut writer)?;
        let reader = open_connection(path)?;
        // Reads go through this connection; a write slipped in by mistake fails loudly.
        reader.pragma_update(None, "query_only", true)?;
        Ok(Store {
            inner: Arc::new(Connections {
                writer: Mutex::new(writer),
                reader: Mutex::new(reader),
                write_deadline,
            }),
        })
    }

    /// Runs `f` in one write transaction on a blocking thread: all of it
    /// commits, or none of it. Gives up with [`StoreError::Unavailable`]
    /// once the write deadline has passed.
    pub async fn transaction<T, E>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let deadline = Instant::now() + self.inner.write_deadline;
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.write_until(deadline, f)).await {
            Ok(out) => out,
            Err(e) => Err(StoreError::Worker(e.to_string()).into()),
        }
    }

    /// Runs read-only `f` on a blocking thread.
    pub async fn read<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.read_blocking(f)).await {
            Ok(out) => out,
            Err(e) => Err(StoreError::Worker(e.to_string()).into()),
        }
    }

    /// Records one event in its own transaction. The monitor log must never
    /// stop its caller (reconciler, health checker), so a failure to write
    /// it is only logged.
    pub async fn record_event(
        &self,
        subject: EventSubject,
        kind: crate::model::EventKind,
        message: String,
    ) {
        if let Err(e) = self
            .transaction(move |c| add_event(c, subject, kind, &message))
            .await
        {
            tracing::warn!("cannot record event {kind}: {e}");
        }
    }

    /// Brings an instance's `operating_status` up to date with its nodes.
    /// Called after every health check and reconcile pass, so it reads
    /// first and takes the write lock only when the status changed.
    pub async fn refresh_instance_operating(&self, inst: &InstanceRow) -> Result<(), StoreError> {
        let row = inst.clone();
        if !self
            .read(move |c| instance_operating_stale(c, &row))
            .await?
        {
            return Ok(());
        }
        let row = inst.clone();
        self.transaction(move |c| refresh_instance_operating(c, &row))
            .await
    }

    /// [`Store::transaction`] for synchronous callers (start-up, tools,
    /// tests). Never call it from async code.
    pub fn transaction_blocking<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.write_until(Instant::now() + self.inner.write_deadline, f)
    }

    /// [`Store::read`] for synchronous callers. Never call it from async code.
    pub fn read_blocking<T, E>(&self, f: impl FnOnce(&Connection) -> Result<T, E>) -> Result<T, E> {
        f(&lock(&self.inner.reader))
    }

    fn write_until<T, E: From<StoreError>>(
        &self,
        deadline: Instant,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut conn = lock(&self.inner.writer);
        // Waiting for the mutex counts against the deadline too: writes
        // queued behind one stuck on another process's lock give up in time.
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(StoreError::Unavailable.into());
        }
        conn.busy_timeout(left).map_err(StoreError::from)?;
        // IMMEDIATE takes the write lock at BEGIN, where the busy timeout
        // applies; a deferred transaction could fail later without waiting.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let out = f(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
