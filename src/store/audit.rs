//! The audit log: one row per API call that wrote or was refused (see
//! `api::audit`), never a token or a request body.

use rusqlite::{params, Connection};

use super::StoreError;
use crate::model::{AuditEntry, AuditQuery};

pub fn add_audit(c: &Connection, e: &AuditEntry) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO audit (ts, user, client, action, type, name, status, code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            e.ts,
            e.user,
            e.client,
            e.action,
            e.object_type,
            e.name,
            e.status,
            e.code
        ],
    )?;
    Ok(())
}

/// Entries matching `q`, newest first.
pub fn query_audit(c: &Connection, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT ts, user, client, action, type, name, status, code FROM audit
         WHERE (?1 IS NULL OR user = ?1) AND (?2 IS NULL OR ts >= ?2)
         ORDER BY ts DESC, id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![q.user, q.since, q.limit()], |r| {
        Ok(AuditEntry {
            ts: r.get(0)?,
            user: r.get(1)?,
            client: r.get(2)?,
            action: r.get(3)?,
            object_type: r.get(4)?,
            name: r.get(5)?,
            status: r.get(6)?,
            code: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
