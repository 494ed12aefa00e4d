//! The `mapping` envelope type (issue 18): federation mappings injected
//! ahead of time, listed, or removed by admins and the instance's owner.
//! A resource mapping names where a resource lives; a token mapping maps
//! a local token and project to a provider's own. The wire shape is one
//! flat object (`kind` says which fields apply); [`MappingRequest::validate`]
//! turns it into the typed [`Mapping`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::federation::{ResourceKey, ResourceMapping};
use crate::model::ValidationError;

/// The longest id, type, project, provider or token a mapping holds.
pub const MAX_MAPPING_FIELD: usize = 512;
/// The most resource mappings one instance keeps (injected and learned):
/// past it, learned ones are not stored and injections are refused.
pub const MAX_RESOURCE_MAPPINGS: u64 = 100_000;
/// The most token mappings one instance keeps.
pub const MAX_TOKEN_MAPPINGS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MappingKind {
    Resource,
    Token,
}

impl MappingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resource => "resource",
            Self::Token => "token",
        }
    }
}

/// `info` of `create`, `info` and `delete` `mapping`, as written.
/// - create resource: `type`, `id`, `provider`;
/// - create token: `local_token`, `local_project`, `provider`,
///   `remote_token`, `remote_project`, `expires_at`?;
/// - delete resource: `type`, `id`; delete token: `local_token`,
///   `local_project`, `provider`;
/// - info: `kind`? (both kinds without it).
///
/// `Debug` shows no token (see below): requests may be logged.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MappingRequest {
    pub project: String,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MappingKind>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A secret: stored only as its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_project: Option<String>,
    /// A secret: kept in lbd's 0600 secrets file, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_project: Option<String>,
    /// Unix seconds; absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// A token mapping to inject (`Debug` shows no token).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenMappingCreate {
    pub local_token: String,
    pub local_project: String,
    pub provider: String,
    pub remote_token: String,
    pub remote_project: String,
    pub expires_at: Option<u64>,
}

/// Which token mapping: by its local token, project and provider
/// (`Debug` shows no token).
#[derive(Clone, PartialEq, Eq)]
pub struct TokenMappingRef {
    pub local_token: String,
    pub local_project: String,
    pub provider: String,
}

/// A validated `create mapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingCreate {
    Resource(ResourceMapping),
    Token(TokenMappingCreate),
}

/// A validated `delete mapping`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MappingDelete {
    Resource(ResourceKey),
    Token(TokenMappingRef),
}

/// What `Debug` shows of a token: whether there is one.
fn redacted(t: &Option<String>) -> &'static str {
    match t {
        Some(_) => "Some(\"***\")",
        None => "None",
    }
}

impl std::fmt::Debug for MappingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappingRequest")
            .field("project", &self.project)
            .field("instance", &self.instance)
            .field("kind", &self.kind)
            .field("resource_type", &self.resource_type)
            .field("id", &self.id)
            .field("provider", &self.provider)
            .field(
                "local_token",
                &format_args!("{}", redacted(&self.local_token)),
            )
            .field("local_project", &self.local_project)
            .field(
                "remote_token",
                &format_args!("{}", redacted(&self.remote_token)),
            )
            .field("remote_project", &self.remote_project)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for TokenMappingCreate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMappingCreate")
            .field("local_token", &format_args!("***"))
            .field("local_project", &self.local_project)
            .field("provider", &self.provider)
            .field("remote_token", &format_args!("***"))
            .field("remote_project", &self.remote_project)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl std::fmt::Debug for TokenMappingRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMappingRef")
            .field("local_token", &format_args!("***"))
            .field("local_project", &self.local_project)
            .field("provider", &self.provider)
            .finish()
    }
}

/// The SHA-256 of a local token as stored and as nodes look it up:
/// lowercase hex.
pub fn token_sha256_hex(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// How many hex digits of a local token's SHA-256 `info` shows.
pub const TOKEN_PREFIX_LEN: usize = 12;

/// Checks a mapping a node reports (`MappingLearned`, `MappingRemoved`)
/// as an injected one is checked: one path segment each, bounded.
pub fn validate_learned_key(key: &ResourceKey) -> Result<(), ValidationError> {
    for (name, v) in [("type", &key.resource_type), ("id", &key.id)] {
        field(name, v)?;
        if v.contains('/') {
            return Err(ValidationError::InvalidField(format!(
                "`{name}` is one path segment: no /"
            )));
        }
    }
    Ok(())
}

impl MappingCreate {
    pub fn provider(&self) -> &str {
        match self {
            Self::Resource(m) => &m.provider,
            Self::Token(t) => &t.provider,
        }
    }
}

impl MappingRequest {
    pub fn validate_create(&self) -> Result<MappingCreate, ValidationError> {
        match self.need_kind()? {
            MappingKind::Resource => {
                self.only(MappingKind::Resource, &[])?;
                Ok(MappingCreate::Resource(ResourceMapping {
                    key: self.resource_key()?,
                    provider: need("provider", &self.provider)?,
                }))
            }
            MappingKind::Token => {
                self.only(MappingKind::Token, &[])?;
                Ok(MappingCreate::Token(TokenMappingCreate {
                    local_token: need("local_token", &self.local_token)?,
                    local_project: need("local_project", &self.local_project)?,
                    provider: need("provider", &self.provider)?,
                    remote_token: need("remote_token", &self.remote_token)?,
                    remote_project: need("remote_project", &self.remote_project)?,
                    expires_at: self.expires_at,
                }))
            }
        }
    }

    pub fn validate_delete(&self) -> Result<MappingDelete, ValidationError> {
        match self.need_kind()? {
            MappingKind::Resource => {
                // The provider may be named; the key alone says which.
                self.only(MappingKind::Resource, &[])?;
                if let Some(p) = &self.provider {
                    field("provider", p)?;
                }
                Ok(MappingDelete::Resource(self.resource_key()?))
            }
            MappingKind::Token => {
                self.only(
                    MappingKind::Token,
                    &["remote_token", "remote_project", "expires_at"],
                )?;
                Ok(MappingDelete::Token(TokenMappingRef {
                    local_token: need("local_token", &self.local_token)?,
                    local_project: need("local_project", &self.local_project)?,
                    provider: need("provider", &self.provider)?,
                }))
            }
        }
    }

    /// `info`: only `project`, `instance` and `kind`.
    pub fn validate_info(&self) -> Result<Option<MappingKind>, ValidationError> {
        let bare = MappingRequest {
            project: self.project.clone(),
            instance: self.instance.clone(),
            kind: self.kind,
            ..Default::default()
        };
        if *self != bare {
            return Err(ValidationError::InvalidField(
                "`info mapping` takes `project`, `instance` and `kind` only".into(),
            ));
        }
        Ok(self.kind)
    }

    fn need_kind(&self) -> Result<MappingKind, ValidationError> {
        self.kind
            .ok_or_else(|| ValidationError::MissingField("kind (\"resource\" or \"token\")".into()))
    }

    fn resource_key(&self) -> Result<ResourceKey, ValidationError> {
        let key = ResourceKey {
            resource_type: need("type", &self.resource_type)?,
            id: need("id", &self.id)?,
        };
        validate_learned_key(&key)?;
        Ok(key)
    }

    /// Refuses the fields of the other kind (and `extra` of this one).
    fn only(&self, kind: MappingKind, extra: &[&str]) -> Result<(), ValidationError> {
        let resource_only = [
            ("type", self.resource_type.is_some()),
            ("id", self.id.is_some()),
        ];
        let token_only = [
            ("local_token", self.local_token.is_some()),
            ("local_project", self.local_project.is_some()),
            ("remote_token", self.remote_token.is_some()),
            ("remote_project", self.remote_project.is_some()),
            ("expires_at", self.expires_at.is_some()),
        ];
        let foreign = match kind {
            MappingKind::Resource => &token_only[..],
            MappingKind::Token => &resource_only[..],
        };
        let mine = match kind {
            MappingKind::Resource => &resource_only[..],
            MappingKind::Token => &token_only[..],
        };
        let refused = foreign
            .iter()
            .chain(mine.iter().filter(|(n, _)| extra.contains(n)))
            .find(|(_, set)| *set);
        match refused {
            Some((name, _)) => Err(ValidationError::InvalidField(format!(
                "`{name}` does not apply here (kind {})",
                kind.as_str()
            ))),
            None => Ok(()),
        }
    }
}

fn need(name: &str, v: &Option<String>) -> Result<String, ValidationError> {
    let v = v
        .as_deref()
        .ok_or_else(|| ValidationError::MissingField(name.to_string()))?;
    field(name, v)?;
    Ok(v.to_string())
}

fn field(name: &str, v: &str) -> Result<(), ValidationError> {
    if v.is_empty() || v.len() > MAX_MAPPING_FIELD || v.chars().any(char::is_control) {
        return Err(ValidationError::InvalidField(format!(
            "`{name}` must be 1 to {MAX_MAPPING_FIELD} characters without control characters"
        )));
    }
    Ok(())
}

/// Where a resource mapping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MappingSource {
    /// Through the API (`create mapping`).
    Injected,
    /// A node found it (a search's winner or an aggregated list's item).
    Learned,
}

impl MappingSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Learned => "learned",
        }
    }

    pub fn parse(s: &str) -> Option<MappingSource> {
        match s {
            "injected" => Some(Self::Injected),
            "learned" => Some(Self::Learned),
            _ => None,
        }
    }
}

/// A resource mapping as `info mapping` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResourceMappingView {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
    pub provider: String,
    pub source: MappingSource,
    /// RFC 3339.
    pub updated_at: String,
}

/// A token mapping as `info mapping` shows it: no token, only the first
/// 12 hex digits of the local token's SHA-256, to tell mappings apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenMappingView {
    pub local_token_sha256_prefix: String,
    pub local_project: String,
    pub provider: String,
    pub remote_project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// What `info mapping` answers (and `create`/`delete` echo: the version).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MappingsInfo {
    pub project: String,
    pub instance: String,
    /// The instance's mappings version (grows with every change); nodes
    /// report the one in force.
    pub version: u64,
    #[serde(default)]
    pub resources: Vec<ResourceMappingView>,
    #[serde(default)]
    pub tokens: Vec<TokenMappingView>,
    /// The instance's running nodes, each with the version it last
    /// accepted from lbd (`info` only): a node at `version` routes by
    /// every mapping listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeMappingsVersion>,
}

/// One node's mappings, as lbd last pushed them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NodeMappingsVersion {
    pub node_id: crate::model::NodeId,
    #[schemars(with = "String")]
    pub address: std::net::IpAddr,
    /// `None` until the node took a push or a config from this lbd.
    pub mappings_version: Option<u64>,
}

/// What `create mapping` and `delete mapping` answer: the mapping created
/// (or removed; never a token), the instance's mappings version after the
/// change, and how many of its running nodes took the new set before the
/// answer (the others catch up within seconds). Reads as a
/// [`MappingsInfo`] too (`project`, `instance`, `version`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MappingChange {
    pub project: String,
    pub instance: String,
    pub kind: MappingKind,
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<ResourceMappingView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenMappingView>,
    /// Running nodes that accepted `PUT /mappings` before the answer.
    pub pushed_to: u32,
    /// The instance's running nodes.
    pub nodes: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> MappingRequest {
        let mut base = json!({"project": "p", "instance": "i"});
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn each_kind_takes_its_own_fields() {
        let r = req(json!({"kind": "resource", "type": "volumes", "id": "v1", "provider": "sp2"}));
        assert!(
            matches!(r.validate_create(), Ok(MappingCreate::Resource(m)) if m.provider == "sp2")
        );
        let t = req(
            json!({"kind": "token", "local_token": "a", "local_project": "alice",
            "provider": "sp1", "remote_token": "b", "remote_project": "x", "expires_at": 5}),
        );
        assert!(
            matches!(t.validate_create(), Ok(MappingCreate::Token(m)) if m.expires_at == Some(5))
        );
        let mixed = req(
            json!({"kind": "resource", "type": "v", "id": "1", "provider": "sp1",
            "remote_token": "b"}),
        );
        assert!(mixed.validate_create().is_err());
        assert!(req(json!({"type": "v", "id": "1", "provider": "sp1"}))
            .validate_create()
            .is_err());
        assert!(
            req(json!({"kind": "resource", "type": "v", "id": "a/b", "provider": "s"}))
                .validate_create()
                .is_err()
        );
        assert!(
            req(json!({"kind": "resource", "type": "v", "id": "", "provider": "s"}))
                .validate_create()
                .is_err()
        );
    }

    #[test]
    fn delete_and_info_need_less() {
        let d = req(json!({"kind": "resource", "type": "volumes", "id": "v1"}));
        assert!(matches!(
            d.validate_delete(),
            Ok(MappingDelete::Resource(_))
        ));
        let d = req(
            json!({"kind": "token", "local_token": "a", "local_project": "p", "provider": "s",
            "remote_token": "x"}),
        );
        assert!(d.validate_delete().is_err());
        assert_eq!(req(json!({})).validate_info().unwrap(), None);
        assert!(req(json!({"id": "x"})).validate_info().is_err());
    }

    #[test]
    fn debug_shows_no_token_and_hashes_are_lowercase_hex() {
        let t = req(
            json!({"kind": "token", "local_token": "local-secret", "local_project": "alice",
            "provider": "sp1", "remote_token": "remote-secret", "remote_project": "x"}),
        );
        let shown = format!("{t:?} {:?}", t.validate_create().unwrap());
        assert!(
            !shown.contains("local-secret") && !shown.contains("remote-secret"),
            "{shown}"
        );
        assert!(shown.contains("alice"), "{shown}");
        let h = token_sha256_hex("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let long = ResourceKey {
            resource_type: "v".into(),
            id: "x".repeat(MAX_MAPPING_FIELD + 1),
        };
        assert!(validate_learned_key(&long).is_err());
    }
}
