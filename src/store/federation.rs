//! Federation mappings (issue 18): where resources live (injected through
//! the API or learned by nodes) and token mappings (the local token only
//! as its SHA-256; the remote token in its own 0600 file, see
//! `federation_tokens.rs`). Each instance has a mappings version that
//! grows with every change the nodes would see; nodes report the one in
//! force, and lbd pushes the whole set ([`node_mappings`]) when they are
//! behind.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension};

use super::federation_tokens::{new_secret_id, TokenStore};
use super::StoreError;
use crate::model::federation::{NodeMappings, NodeTokenMapping, ResourceKey, ResourceMapping};
use crate::model::mapping::{
    token_sha256_hex, MappingKind, MappingSource, ResourceMappingView, TokenMappingCreate,
    TokenMappingRef, TokenMappingView, TOKEN_PREFIX_LEN,
};
use crate::model::time::rfc3339_secs;
use crate::model::InstanceId;

/// What a write did: the instance's mappings version after it, and
/// whether what nodes see changed (then the version grew).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappingWrite {
    pub version: u64,
    pub changed: bool,
}

/// A token mapping written: its view, and the secret id of the token file
/// it replaced (to remove once the transaction committed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenWrite {
    pub write: MappingWrite,
    pub view: TokenMappingView,
    pub replaced_secret: Option<String>,
}

pub fn mappings_version(c: &Connection, instance: InstanceId) -> Result<u64, StoreError> {
    let v: Option<i64> = c
        .query_row(
            "SELECT mappings_version FROM instances WHERE id = ?1",
            [instance],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

/// Every instance's mappings version.
pub fn all_mappings_versions(c: &Connection) -> Result<HashMap<InstanceId, u64>, StoreError> {
    let mut stmt = c.prepare("SELECT id, mappings_version FROM instances")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, InstanceId>(0)?,
            r.get::<_, i64>(1)?.max(0) as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn written(
    c: &Connection,
    instance: InstanceId,
    changed: bool,
) -> Result<MappingWrite, StoreError> {
    if changed {
        c.execute(
            "UPDATE instances SET mappings_version = mappings_version + 1 WHERE id = ?1",
            [instance],
        )?;
    }
    Ok(MappingWrite {
        version: mappings_version(c, instance)?,
        changed,
    })
}

/// How many resource and token mappings the instance has (expired ones too).
pub fn count_mappings(c: &Connection, instance: InstanceId) -> Result<(u64, u64), StoreError> {
    let count = |table: &str| -> Result<u64, StoreError> {
        let n: i64 = c.query_row(
            &format!("SELECT COUNT(*) FROM {table} WHERE instance_id = ?1"),
            [instance],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    };
    Ok((count("resource_mappings")?, count("token_mappings")?))
}

// === resource mappings ===

/// Stores where a resource lives. A mapping already stored with the same
/// provider changes nothing (an injected one turning a learned one into
/// an injected one changes its source, not the version). A learned
/// mapping never replaces an injected one: that is the admin's word.
pub fn put_resource_mapping(
    c: &Connection,
    instance: InstanceId,
    m: &ResourceMapping,
    source: MappingSource,
    now: i64,
) -> Result<MappingWrite, StoreError> {
    let existing: Option<(String, MappingSource)> = c
        .query_row(
            "SELECT provider, source FROM resource_mappings
             WHERE instance_id = ?1 AND type = ?2 AND id = ?3",
            params![instance, m.key.resource_type, m.key.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (write, changed) = match existing {
        None => (true, true),
        Some((provider, stored)) if provider == m.provider => (
            stored == MappingSource::Learned && source == MappingSource::Injected,
            false,
        ),
        Some((_, MappingSource::Injected)) if source == MappingSource::Learned => (false, false),
        Some(_) => (true, true),
    };
    if write {
        c.execute(
            "INSERT INTO resource_mappings (instance_id, type, id, provider, source, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (instance_id, type, id) DO UPDATE SET
                provider = excluded.provider, source = excluded.source,
                updated_at = excluded.updated_at",
            params![
                instance,
                m.key.resource_type,
                m.key.id,
                m.provider,
                source,
                now
            ],
        )?;
    }
    written(c, instance, changed)
}

fn resource_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<ResourceMappingView> {
    Ok(ResourceMappingView {
        resource_type: r.get(0)?,
        id: r.get(1)?,
        provider: r.get(2)?,
        source: r.get(3)?,
        updated_at: rfc3339_secs(r.get(4)?),
    })
}

/// One resource mapping as `info` shows it.
pub fn resource_mapping(
    c: &Connection,
    instance: InstanceId,
    key: &ResourceKey,
) -> Result<Option<ResourceMappingView>, StoreError> {
    Ok(c.query_row(
        "SELECT type, id, provider, source, updated_at FROM resource_mappings
         WHERE instance_id = ?1 AND type = ?2 AND id = ?3",
        params![instance, key.resource_type, key.id],
        resource_view,
    )
    .optional()?)
}

/// Removes a resource mapping (whatever its source); `None` when there
/// was none.
pub fn delete_resource_mapping(
    c: &Connection,
    instance: InstanceId,
    key: &ResourceKey,
) -> Result<Option<(ResourceMappingView, MappingWrite)>, StoreError> {
    let Some(view) = resource_mapping(c, instance, key)? else {
        return Ok(None);
    };
    c.execute(
        "DELETE FROM resource_mappings WHERE instance_id = ?1 AND type = ?2 AND id = ?3",
        params![instance, key.resource_type, key.id],
    )?;
    Ok(Some((view, written(c, instance, true)?)))
}

// === token mappings ===

fn token_view(
    sha256: &str,
    local_project: &str,
    provider: &str,
    remote_project: &str,
    expires_at: Option<i64>,
) -> TokenMappingView {
    TokenMappingView {
        local_token_sha256_prefix: sha256.chars().take(TOKEN_PREFIX_LEN).collect(),
        local_project: local_project.to_string(),
        provider: provider.to_string(),
        remote_project: remote_project.to_string(),
        expires_at: expires_at.map(|e| e.max(0) as u64),
    }
}

fn secs(expires_at: Option<u64>) -> Option<i64> {
    expires_at.map(|e| i64::try_from(e).unwrap_or(i64::MAX))
}

/// Stores a token mapping: its remote token into a new 0600 file (before
/// the row naming it), the rest into SQLite. The same mapping again
/// (same remote token, project and expiry) changes nothing. Blocking (a
/// file is written): inside a store transaction, as every write is.
pub fn put_token_mapping(
    c: &Connection,
    tokens: &TokenStore,
    instance: InstanceId,
    t: &TokenMappingCreate,
    now: i64,
) -> Result<TokenWrite, StoreError> {
    let sha256 = token_sha256_hex(&t.local_token);
    let expires_at = secs(t.expires_at);
    let view = token_view(
        &sha256,
        &t.local_project,
        &t.provider,
        &t.remote_project,
        expires_at,
    );
    let existing: Option<(String, Option<i64>, String)> = c
        .query_row(
            "SELECT remote_project, expires_at, secret_id FROM token_mappings
             WHERE instance_id = ?1 AND local_token_sha256 = ?2 AND local_project = ?3
               AND provider = ?4",
            params![instance, sha256, t.local_project, t.provider],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    if let Some((project, expires, secret)) = &existing {
        let same_token = tokens
            .get(instance, secret)
            .is_ok_and(|stored| stored == t.remote_token);
        if *project == t.remote_project && *expires == expires_at && same_token {
            return Ok(TokenWrite {
                write: written(c, instance, false)?,
                view,
                replaced_secret: None,
            });
        }
    }
    let secret = new_secret_id();
    tokens.put(instance, &secret, &t.remote_token)?;
    let stored = c.execute(
        "INSERT INTO token_mappings (instance_id, local_token_sha256, local_project, provider,
                                     remote_project, expires_at, secret_id, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (instance_id, local_token_sha256, local_project, provider) DO UPDATE SET
            remote_project = excluded.remote_project, expires_at = excluded.expires_at,
            secret_id = excluded.secret_id, updated_at = excluded.updated_at",
        params![
            instance,
            sha256,
            t.local_project,
            t.provider,
            t.remote_project,
            expires_at,
            secret,
            now
        ],
    );
    if let Err(e) = stored {
        let _ = tokens.remove(instance, &secret);
        return Err(e.into());
    }
    Ok(TokenWrite {
        write: written(c, instance, true)?,
        view,
        replaced_secret: existing.map(|(_, _, s)| s),
    })
}

/// Removes a token mapping; `None` when there was none. Returns its view
/// and the secret id of its token file, to remove once committed.
pub fn delete_token_mapping(
    c: &Connection,
    instance: InstanceId,
    r: &TokenMappingRef,
) -> Result<Option<(TokenMappingView, String, MappingWrite)>, StoreError> {
    let sha256 = token_sha256_hex(&r.local_token);
    let found: Option<(String, Option<i64>, String)> = c
        .query_row(
            "SELECT remote_project, expires_at, secret_id FROM token_mappings
             WHERE instance_id = ?1 AND local_token_sha256 = ?2 AND local_project = ?3
               AND provider = ?4",
            params![instance, sha256, r.local_project, r.provider],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((remote_project, expires_at, secret)) = found else {
        return Ok(None);
    };
    c.execute(
        "DELETE FROM token_mappings
         WHERE instance_id = ?1 AND local_token_sha256 = ?2 AND local_project = ?3
           AND provider = ?4",
        params![instance, sha256, r.local_project, r.provider],
    )?;
    let view = token_view(
        &sha256,
        &r.local_project,
        &r.provider,
        &remote_project,
        expires_at,
    );
    Ok(Some((view, secret, written(c, instance, true)?)))
}

// === reading them all ===

/// What `info mapping` shows (only `kind`'s when given): no token, and no
/// expired token mapping.
pub fn mappings_info(
    c: &Connection,
    instance: InstanceId,
    kind: Option<MappingKind>,
    now: i64,
) -> Result<(u64, Vec<ResourceMappingView>, Vec<TokenMappingView>), StoreError> {
    let mut resources = Vec::new();
    if kind != Some(MappingKind::Token) {
        let mut stmt = c.prepare(
            "SELECT type, id, provider, source, updated_at FROM resource_mappings
             WHERE instance_id = ?1 ORDER BY type, id",
        )?;
        resources = stmt
            .query_map([instance], resource_view)?
            .collect::<Result<_, _>>()?;
    }
    let mut tokens = Vec::new();
    if kind != Some(MappingKind::Resource) {
        tokens = live_tokens(c, instance, now)?
            .into_iter()
            .map(|t| {
                token_view(
                    &t.sha256,
                    &t.local_project,
                    &t.provider,
                    &t.remote_project,
                    t.expires_at,
                )
            })
            .collect();
    }
    Ok((mappings_version(c, instance)?, resources, tokens))
}

struct TokenRow {
    sha256: String,
    local_project: String,
    provider: String,
    remote_project: String,
    expires_at: Option<i64>,
    secret_id: String,
}

fn live_tokens(
    c: &Connection,
    instance: InstanceId,
    now: i64,
) -> Result<Vec<TokenRow>, StoreError> {
    let mut stmt = c.prepare(
        "SELECT local_token_sha256, local_project, provider, remote_project, expires_at, secret_id
         FROM token_mappings
         WHERE instance_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)
         ORDER BY local_project, provider, local_token_sha256",
    )?;
    let rows = stmt.query_map(params![instance, now], |r| {
        Ok(TokenRow {
            sha256: r.get(0)?,
            local_project: r.get(1)?,
            provider: r.get(2)?,
            remote_project: r.get(3)?,
            expires_at: r.get(4)?,
            secret_id: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every mapping lbd knows for the instance, as its nodes get them
/// (`PUT /mappings`, and the config of a node that starts). Expired token
/// mappings are left out; the remote tokens are read from their files
/// (`tokens`; without it, no token mapping goes). Blocking.
pub fn node_mappings(
    c: &Connection,
    tokens: Option<&TokenStore>,
    instance: InstanceId,
    now: i64,
) -> Result<NodeMappings, StoreError> {
    let mut stmt = c.prepare(
        "SELECT type, id, provider FROM resource_mappings WHERE instance_id = ?1 ORDER BY type, id",
    )?;
    let resources = stmt
        .query_map([instance], |r| {
            Ok(ResourceMapping {
                key: ResourceKey {
                    resource_type: r.get(0)?,
                    id: r.get(1)?,
                },
                provider: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut node_tokens = Vec::new();
    if let Some(store) = tokens {
        for t in live_tokens(c, instance, now)? {
            let remote_token = match store.get(instance, &t.secret_id) {
                Ok(token) => token,
                Err(e) => {
                    // The file names the mapping, never the token.
                    tracing::warn!("instance {instance}: token mapping left out: {e}");
                    continue;
                }
            };
            node_tokens.push(NodeTokenMapping {
                local_token_sha256: t.sha256,
                local_project: t.local_project,
                provider: t.provider,
                remote_token,
                remote_project: t.remote_project,
                expires_at: t.expires_at.map(|e| e.max(0) as u64),
            });
        }
    }
    Ok(NodeMappings {
        version: mappings_version(c, instance)?,
        resources,
        tokens: node_tokens,
    })
}

// === housekeeping ===

/// Removes the mappings that name a provider not in `providers` (all of
/// them for none: the federation is gone). Their token files are left to
/// the sweep ([`TokenStore::remove_unused`]). Whether any went.
pub fn retain_providers(
    c: &Connection,
    instance: InstanceId,
    providers: &[&str],
) -> Result<bool, StoreError> {
    let mut gone = 0;
    for table in ["resource_mappings", "token_mappings"] {
        let mut stmt = c.prepare(&format!(
            "SELECT DISTINCT provider FROM {table} WHERE instance_id = ?1"
        ))?;
        let stored: Vec<String> = stmt
            .query_map([instance], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for p in stored.iter().filter(|p| !providers.contains(&p.as_str())) {
            gone += c.execute(
                &format!("DELETE FROM {table} WHERE instance_id = ?1 AND provider = ?2"),
                params![instance, p],
            )?;
        }
    }
    Ok(written(c, instance, gone > 0)?.changed)
}

/// Deletes every mapping of an instance (its row is going).
pub(super) fn delete_instance_mappings(
    c: &Connection,
    instance: InstanceId,
) -> Result<(), StoreError> {
    c.execute(
        "DELETE FROM resource_mappings WHERE instance_id = ?1",
        [instance],
    )?;
    c.execute(
        "DELETE FROM token_mappings WHERE instance_id = ?1",
        [instance],
    )?;
    Ok(())
}

/// Whether some token mapping has expired (a read, so the sweep writes
/// only when there is something to prune).
pub fn has_expired_tokens(c: &Connection, now: i64) -> Result<bool, StoreError> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM token_mappings WHERE expires_at <= ?1)",
        [now],
        |r| r.get(0),
    )?)
}

/// Deletes the expired token mappings (nodes drop them on their own, so
/// the version stays); their files are left to the sweep.
pub fn prune_expired_tokens(c: &Connection, now: i64) -> Result<usize, StoreError> {
    Ok(c.execute("DELETE FROM token_mappings WHERE expires_at <= ?1", [now])?)
}

/// The secret ids of every token mapping, by instance (for the sweep).
pub fn all_token_secret_ids(
    c: &Connection,
) -> Result<HashMap<InstanceId, HashSet<String>>, StoreError> {
    let mut stmt = c.prepare("SELECT instance_id, secret_id FROM token_mappings")?;
    let mut out: HashMap<InstanceId, HashSet<String>> = HashMap::new();
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, InstanceId>(0)?, r.get::<_, String>(1)?))
    })? {
        let (instance, secret) = row?;
        out.entry(instance).or_default().insert(secret);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "federation_tests.rs"]
mod tests;
