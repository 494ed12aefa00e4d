//! User rows: a name, a role, the SHA-256 of the user's token (never the
//! token), and quota limits (`NULL`: follow lbd's `--default-quota-*`).

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{instances_of_user, now, StoreError};
use crate::model::user::ADMIN_USER;
use crate::model::{Limit, QuotaSpec, QuotaUsage, Role};

#[derive(Debug, Clone, PartialEq)]
pub struct UserRow {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the token; `None`: the user has no token (yet).
    pub token_hash: Option<Vec<u8>>,
    /// The limits set for this user; absent ones follow lbd's defaults.
    pub quota: QuotaSpec,
    pub created_at: i64,
}

const USER_COLS: &str =
    "name, role, token_hash, max_projects, max_instances, max_nodes, created_at";

fn limit(v: Option<i64>) -> Result<Option<Limit>, StoreError> {
    v.map(|n| Limit::from_wire(n).map_err(|e| StoreError::Corrupt(format!("user quota: {e}"))))
        .transpose()
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<Result<UserRow, StoreError>> {
    let (p, i, n): (Option<i64>, Option<i64>, Option<i64>) = (r.get(3)?, r.get(4)?, r.get(5)?);
    let (name, role, token_hash, created_at) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(6)?);
    Ok((|| {
        Ok(UserRow {
            name,
            role,
            token_hash,
            quota: QuotaSpec {
                max_projects: limit(p)?,
                max_instances: limit(i)?,
                max_nodes: limit(n)?,
            },
            created_at,
        })
    })())
}

fn query_users(
    c: &Connection,
    filter: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<UserRow>, StoreError> {
    let mut stmt = c.prepare(&format!(
        "SELECT {USER_COLS} FROM users {filter} ORDER BY name"
    ))?;
    let rows = stmt.query_map(args, from_row)?;
    rows.map(|r| r?).collect()
}

pub fn insert_user(
    c: &Connection,
    name: &str,
    role: Role,
    quota: QuotaSpec,
    token_hash: &[u8],
) -> Result<UserRow, StoreError> {
    c.execute(
        "INSERT INTO users (name, role, token_hash, max_projects, max_instances, max_nodes, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            name,
            role,
            token_hash,
            quota.max_projects.map(Limit::to_wire),
            quota.max_instances.map(Limit::to_wire),
            quota.max_nodes.map(Limit::to_wire),
            now()
        ],
    )?;
    user_by_name(c, name)?.ok_or_else(|| StoreError::Corrupt("inserted user vanished".into()))
}

/// A member without a token: the owner an admin names for a project before
/// the user exists (seed 003's `"user": "john"`), as the migration makes
/// them. An admin hands out its token with `rotate_token`.
pub fn insert_tokenless_member(c: &Connection, name: &str) -> Result<UserRow, StoreError> {
    c.execute(
        "INSERT INTO users (name, role, token_hash, created_at) VALUES (?1, ?2, NULL, ?3)",
        params![name, Role::Member, now()],
    )?;
    user_by_name(c, name)?.ok_or_else(|| StoreError::Corrupt("inserted user vanished".into()))
}

pub fn user_by_name(c: &Connection, name: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(query_users(c, "WHERE name = ?1", [name])?.pop())
}

/// The user whose token hashes to `hash` (an index lookup; the caller
/// compares the stored hash again in constant time).
pub fn user_by_token_hash(c: &Connection, hash: &[u8]) -> Result<Option<UserRow>, StoreError> {
    Ok(query_users(c, "WHERE token_hash = ?1", [hash])?.pop())
}

pub fn list_users(c: &Connection) -> Result<Vec<UserRow>, StoreError> {
    query_users(c, "", [])
}

pub fn set_user_role(c: &Connection, name: &str, role: Role) -> Result<(), StoreError> {
    c.execute(
        "UPDATE users SET role = ?2 WHERE name = ?1",
        params![name, role],
    )?;
    Ok(())
}

/// Stores the limits `quota` gives; the others keep their value.
pub fn set_user_quota(c: &Connection, name: &str, quota: QuotaSpec) -> Result<(), StoreError> {
    c.execute(
        "UPDATE users SET max_projects = COALESCE(?2, max_projects),
                          max_instances = COALESCE(?3, max_instances),
                          max_nodes = COALESCE(?4, max_nodes) WHERE name = ?1",
        params![
            name,
            quota.max_projects.map(Limit::to_wire),
            quota.max_instances.map(Limit::to_wire),
            quota.max_nodes.map(Limit::to_wire)
        ],
    )?;
    Ok(())
}

pub fn set_user_token_hash(c: &Connection, name: &str, hash: &[u8]) -> Result<(), StoreError> {
    c.execute(
        "UPDATE users SET token_hash = ?2 WHERE name = ?1",
        params![name, hash],
    )?;
    Ok(())
}

pub fn delete_user(c: &Connection, name: &str) -> Result<(), StoreError> {
    c.execute("DELETE FROM users WHERE name = ?1", [name])?;
    Ok(())
}

/// The built-in `admin` user, role admin, with the hash of `admin.token`
/// (so the token of before tenants keeps working, and a replaced
/// `admin.token` takes effect at the next start).
pub fn ensure_admin(c: &Connection, token_hash: &[u8]) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO users (name, role, token_hash, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET role = excluded.role, token_hash = excluded.token_hash",
        params![ADMIN_USER, Role::Admin, token_hash, now()],
    )?;
    Ok(())
}

/// How many projects `user` owns (all of them, also those being deleted).
pub fn count_projects_of(c: &Connection, user: &str) -> Result<u64, StoreError> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM projects WHERE user = ?1",
        [user],
        |r| r.get(0),
    )?;
    Ok(n as u64)
}

/// What `user` uses, as the quota counts it: projects and instances not
/// being deleted, and the nodes those instances may cost.
pub fn user_usage(c: &Connection, user: &str) -> Result<QuotaUsage, StoreError> {
    let projects: i64 = c.query_row(
        "SELECT COUNT(*) FROM projects WHERE user = ?1 AND deleting = 0",
        [user],
        |r| r.get(0),
    )?;
    let instances = instances_of_user(c, user)?;
    Ok(QuotaUsage::count(
        projects as u64,
        instances.iter().map(|i| &i.spec),
    ))
}

/// The nodes `user`'s instances should run now (the autoscaler's targets
/// and the standbys).
pub fn user_target_nodes(c: &Connection, user: &str) -> Result<u64, StoreError> {
    Ok(instances_of_user(c, user)?
        .iter()
        .map(|i| u64::from(i.target_active_nodes()))
        .sum())
}

/// Whether a user row exists (for the admin creating a project for someone).
pub fn user_exists(c: &Connection, name: &str) -> Result<bool, StoreError> {
    Ok(
        c.query_row("SELECT 1 FROM users WHERE name = ?1", [name], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}
