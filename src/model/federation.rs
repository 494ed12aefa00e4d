//! The `federation` of an http or https instance (issue 18, seed 004): one
//! endpoint in front of several providers. Requests for a resource go to the
//! provider its mapping names (found by a parallel search when unknown),
//! list calls are aggregated over every provider, and tokens are mapped to
//! each provider's own. This file holds the wire shapes, their validation
//! and the pure path matching; lb-node does the routing
//! (`dataplane::federation`), lbd stores and shares the mappings.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::instance::{health_check, members, BackendEntity, HealthCheckSpec};
use crate::model::policy::{check_header_name, check_policy_name, Pool, DEFAULT_POOL};
use crate::model::{Algorithm, TrafficType};

pub const MAX_PROVIDERS: usize = 16;
pub const MAX_RESOURCE_PATHS: usize = 32;
pub const MAX_AGGREGATES: usize = 32;
pub const DEFAULT_TOKEN_HEADER: &str = "X-Auth-Token";
pub const DEFAULT_SEARCH_TIMEOUT_MS: u32 = 2000;
pub const DEFAULT_NEGATIVE_TTL_S: u32 = 30;

/// A federation that cannot be accepted, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FederationError {
    #[error("federation needs at least one provider")]
    NoProviders,
    #[error("invalid provider {provider:?}: {reason}")]
    InvalidProvider { provider: String, reason: String },
    #[error("invalid resource path {path:?}: {reason}")]
    InvalidResourcePath { path: String, reason: String },
    #[error("invalid aggregate {path:?}: {reason}")]
    InvalidAggregate { path: String, reason: String },
    #[error("invalid {field}: {reason}")]
    InvalidSetting { field: &'static str, reason: String },
    #[error("federation is for http and https instances, not {0}")]
    NotForTraffic(&'static str),
    #[error("unknown provider {provider:?} (providers: {known})")]
    UnknownProvider { provider: String, known: String },
}

impl FederationError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoProviders | Self::InvalidProvider { .. } => "invalid_provider",
            Self::InvalidResourcePath { .. } => "invalid_resource_path",
            Self::InvalidAggregate { .. } => "invalid_aggregate",
            Self::InvalidSetting { .. } => "invalid_federation",
            Self::NotForTraffic(_) => "federation_needs_http",
            Self::UnknownProvider { .. } => "unknown_provider",
        }
    }
}

// === wire shapes, as clients write them ===

/// `"federation"` on an http/https instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FederationSpec {
    pub providers: BTreeMap<String, ProviderSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<AggregateSpec>,
    /// Default `X-Auth-Token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_header: Option<String>,
    /// Default 2000; 1 to 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_timeout_ms: Option<i64>,
    /// How long a resource no provider has is answered 404 without a new
    /// search. Default 30; 0 (no negative cache) to 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl_s: Option<i64>,
}

/// One provider: a pool (members, health check, algorithm), and where its
/// tokens are exchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub entities: Vec<BackendEntity>,
    #[serde(
        default,
        rename = "health-check",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// `POST {"token", "project"}` → `{"token", "project", "expires_at"?}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
}

/// A list call answered from every provider at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    pub path: String,
    /// Default `GET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The answer's array key; may hold `{type}` (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_key: Option<String>,
    /// Default `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_key: Option<String>,
    /// Default: `id_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sort_key: Option<String>,
}

// === validated, as stored and as pushed to nodes ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Federation {
    pub providers: BTreeMap<String, Provider>,
    pub resource_paths: Vec<PathPattern>,
    pub aggregate: Vec<Aggregate>,
    pub token_header: String,
    pub search_timeout_ms: u32,
    pub negative_ttl_s: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub pool: Pool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    pub path: PathPattern,
    pub method: String,
    pub list_key: String,
    pub id_key: String,
    pub sort_key: String,
}

impl Aggregate {
    /// The array key for a matched path (`{type}` filled in).
    pub fn list_key_for(&self, m: &PathMatch<'_>) -> String {
        match m.resource_type {
            Some(t) => self.list_key.replace("{type}", t),
            None => self.list_key.clone(),
        }
    }
}

impl FederationSpec {
    /// `pool_names`: the instance's named pools, which provider names must
    /// not shadow (providers are pools on the node).
    pub fn validate(
        &self,
        traffic: TrafficType,
        port: u16,
        pool_names: &[&str],
    ) -> Result<Federation, FederationError> {
        if !matches!(traffic, TrafficType::Http | TrafficType::Https) {
            return Err(FederationError::NotForTraffic(traffic.as_str()));
        }
        if self.providers.is_empty() {
            return Err(FederationError::NoProviders);
        }
        if self.providers.len() > MAX_PROVIDERS {
            return Err(FederationError::InvalidProvider {
                provider: format!("{} providers", self.providers.len()),
                reason: format!("at most {MAX_PROVIDERS}"),
            });
        }
        let mut providers = BTreeMap::new();
        for (name, spec) in &self.providers {
            if name == DEFAULT_POOL || pool_names.contains(&name.as_str()) {
                return Err(FederationError::InvalidProvider {
                    provider: name.clone(),
                    reason: "a provider is a pool on the node; this name is taken by a pool".into(),
                });
            }
            providers.insert(name.clone(), spec.validate(name, port)?);
        }
        if self.resource_paths.len() > MAX_RESOURCE_PATHS {
            return Err(FederationError::InvalidResourcePath {
                path: format!("{} paths", self.resource_paths.len()),
                reason: format!("at most {MAX_RESOURCE_PATHS}"),
            });
        }
        let resource_paths = self
            .resource_paths
            .iter()
            .map(|p| PathPattern::parse_resource(p))
            .collect::<Result<_, _>>()?;
        if self.aggregate.len() > MAX_AGGREGATES {
            return Err(FederationError::InvalidAggregate {
                path: format!("{} aggregates", self.aggregate.len()),
                reason: format!("at most {MAX_AGGREGATES}"),
            });
        }
        let aggregate = self
            .aggregate
            .iter()
            .map(AggregateSpec::validate)
            .collect::<Result<_, _>>()?;
        let token_header = self
            .token_header
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_HEADER.to_string());
        check_header_name(&token_header).map_err(|e| FederationError::InvalidSetting {
            field: "token_header",
            reason: e.to_string(),
        })?;
        Ok(Federation {
            providers,
            resource_paths,
            aggregate,
            token_header,
            search_timeout_ms: bounded(
                "search_timeout_ms",
                self.search_timeout_ms,
                DEFAULT_SEARCH_TIMEOUT_MS,
                1..=60_000,
            )?,
            negative_ttl_s: bounded(
                "negative_ttl_s",
                self.negative_ttl_s,
                DEFAULT_NEGATIVE_TTL_S,
                0..=86_400,
            )?,
        })
    }
}

fn bounded(
    field: &'static str,
    value: Option<i64>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, FederationError> {
    let Some(v) = value else { return Ok(default) };
    u32::try_from(v)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| FederationError::InvalidSetting {
            field,
            reason: format!("{v} is not within {}..={}", range.start(), range.end()),
        })
}

impl ProviderSpec {
    fn validate(&self, name: &str, port: u16) -> Result<Provider, FederationError> {
        let invalid = |reason: String| FederationError::InvalidProvider {
            provider: name.to_string(),
            reason,
        };
        check_policy_name("provider", name).map_err(|e| invalid(e.to_string()))?;
        if self.entities.is_empty() {
            return Err(invalid("`entities` must name at least one member".into()));
        }
        let members =
            members(&self.entities, port, TrafficType::Http).map_err(|e| invalid(e.to_string()))?;
        let health_check = health_check(self.health_check.as_ref(), TrafficType::Http)
            .map_err(|e| invalid(e.to_string()))?;
        if let Some(url) = &self.token_url {
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.contains(char::is_whitespace)
            {
                return Err(invalid(format!(
                    "token_url {url:?}: expected an http:// or https:// URL"
                )));
            }
        }
        Ok(Provider {
            pool: Pool {
                members,
                named_members: Vec::new(),
                health_check,
                algorithm: self.algorithm.unwrap_or_default(),
                managed: None,
                sticky: None,
                backend_protocol: None,
                backend_tls: None,
            },
            token_url: self.token_url.clone(),
        })
    }
}

impl AggregateSpec {
    fn validate(&self) -> Result<Aggregate, FederationError> {
        let invalid = |reason: &str| FederationError::InvalidAggregate {
            path: self.path.clone(),
            reason: reason.to_string(),
        };
        let path = PathPattern::parse(&self.path)
            .map_err(|reason| invalid(&reason))?
            .no_id()
            .map_err(&invalid)?;
        let method = self.method.clone().unwrap_or_else(|| "GET".into());
        if !matches!(method.as_str(), "GET" | "HEAD") {
            return Err(invalid("an aggregated list is read with GET or HEAD"));
        }
        let list_key = match self.list_key.as_deref() {
            None | Some("") => return Err(invalid("`list_key` is required")),
            Some(k) => k.to_string(),
        };
        if list_key.contains("{type}") && !path.has(Placeholder::Type) {
            return Err(invalid("`list_key` uses {type} but the path has none"));
        }
        let id_key = self.id_key.clone().unwrap_or_else(|| "id".into());
        let sort_key = self.sort_key.clone().unwrap_or_else(|| id_key.clone());
        if id_key.is_empty() || sort_key.is_empty() {
            return Err(invalid("`id_key` and `sort_key` must not be empty"));
        }
        Ok(Aggregate {
            path,
            method,
            list_key,
            id_key,
            sort_key,
        })
    }
}

// === path patterns ===

/// A placeholder of a path pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Placeholder {
    Project,
    Type,
    Id,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Var(Placeholder),
}

/// `/{project}/{type}/{id}`: `/`-separated segments, each a literal or one
/// of `{project}`, `{type}`, `{id}` (each at most once). Written and stored
/// as its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

/// What a path matched: the placeholders' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMatch<'a> {
    pub project: Option<&'a str>,
    /// `{type}`, or for a resource path without one, the literal segment
    /// before `{id}` (`/v2/{project}/volumes/{id}` → `volumes`).
    pub resource_type: Option<&'a str>,
    pub id: Option<&'a str>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err("a path pattern starts with /".into());
        };
        if text.contains(['?', '#', ' ']) {
            return Err("a path pattern holds no spaces, ? or #".into());
        }
        let mut segments = Vec::new();
        for part in rest.split('/') {
            let segment = match part {
                "{project}" => Segment::Var(Placeholder::Project),
                "{type}" => Segment::Var(Placeholder::Type),
                "{id}" => Segment::Var(Placeholder::Id),
                p if p.contains(['{', '}']) => {
                    return Err(format!(
                        "unknown placeholder {p:?}: use {{project}}, {{type}} or {{id}} as a whole segment"
                    ))
                }
                "" => return Err("empty segment (//, or a trailing /)".into()),
                p => Segment::Literal(p.to_string()),
            };
            if let Segment::Var(v) = segment {
                if segments.contains(&Segment::Var(v)) {
                    return Err(format!("{{{}}} appears twice", v_name(v)));
                }
            }
            segments.push(segment);
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    /// A resource path: it must have `{id}`, and `{type}` or a literal
    /// segment right before `{id}` that names the type.
    pub fn parse_resource(text: &str) -> Result<Self, FederationError> {
        let invalid = |reason: String| FederationError::InvalidResourcePath {
            path: text.to_string(),
            reason,
        };
        let p = Self::parse(text).map_err(invalid)?;
        let Some(at) = p
            .segments
            .iter()
            .position(|s| *s == Segment::Var(Placeholder::Id))
        else {
            return Err(invalid("a resource path needs {id}".into()));
        };
        let typed = p.has(Placeholder::Type)
            || (at > 0 && matches!(p.segments[at - 1], Segment::Literal(_)));
        if !typed {
            return Err(invalid(
                "a resource path needs {type}, or a literal segment before {id}".into(),
            ));
        }
        Ok(p)
    }

    fn no_id(self) -> Result<Self, &'static str> {
        if self.has(Placeholder::Id) {
            Err("an aggregated list path has no {id}")
        } else {
            Ok(self)
        }
    }

    pub fn has(&self, v: Placeholder) -> bool {
        self.segments.contains(&Segment::Var(v))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Matches a request path (without its query), segment by segment.
    pub fn matches<'a>(&self, path: &'a str) -> Option<PathMatch<'a>> {
        let rest = path.strip_prefix('/')?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut m = PathMatch {
            project: None,
            resource_type: None,
            id: None,
        };
        for (i, (segment, part)) in self.segments.iter().zip(&parts).enumerate() {
            match segment {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Var(_) if part.is_empty() => return None,
                Segment::Var(Placeholder::Project) => m.project = Some(part),
                Segment::Var(Placeholder::Type) => m.resource_type = Some(part),
                Segment::Var(Placeholder::Id) => {
                    m.id = Some(part);
                    if m.resource_type.is_none() && !self.has(Placeholder::Type) && i > 0 {
                        m.resource_type = Some(parts[i - 1]);
                    }
                }
            }
        }
        Some(m)
    }

    /// The path with `{project}` replaced (token mapping's remote project).
    pub fn with_project(&self, path: &str, project: &str) -> Option<String> {
        let at = self
            .segments
            .iter()
            .position(|s| *s == Segment::Var(Placeholder::Project))?;
        let rest = path.strip_prefix('/')?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        *parts.get_mut(at)? = project;
        Some(format!("/{}", parts.join("/")))
    }
}

fn v_name(v: Placeholder) -> &'static str {
    match v {
        Placeholder::Project => "project",
        Placeholder::Type => "type",
        Placeholder::Id => "id",
    }
}

impl TryFrom<String> for PathPattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<PathPattern> for String {
    fn from(p: PathPattern) -> String {
        p.text
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

// === mappings ===

/// Which resource: its type (from the path) and id.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct ResourceKey {
    #[serde(rename = "type")]
    pub resource_type: String,
    pub id: String,
}

/// A resource lives on `provider`: learned by a search or an aggregated
/// list, or injected through the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct ResourceMapping {
    #[serde(flatten)]
    pub key: ResourceKey,
    pub provider: String,
}

/// A token mapping as a node holds it. The local token is only its
/// SHA-256 (hex): the node hashes the incoming token to look it up. A
/// secret (the remote token): sent only over the node's admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTokenMapping {
    pub local_token_sha256: String,
    pub local_project: String,
    pub provider: String,
    pub remote_token: String,
    pub remote_project: String,
    /// Unix seconds; absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `PUT /mappings`, and `NodeConfig.federation.mappings`: every mapping
/// lbd knows for the instance, idempotent. The node drops what it learned
/// itself once lbd's set holds it, so a later set without it removes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeMappings {
    /// Grows with every change; the node reports it in
    /// `NodeStatus.mappings_version`.
    pub version: u64,
    #[serde(default)]
    pub resources: Vec<ResourceMapping>,
    #[serde(default)]
    pub tokens: Vec<NodeTokenMapping>,
}

/// `NodeConfig.federation`: the routing and the mappings as of the push,
/// so a new node routes by them before it enters DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeFederation {
    pub federation: Federation,
    #[serde(default)]
    pub mappings: NodeMappings,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> FederationSpec {
        serde_json::from_value(v).unwrap()
    }

    fn seed() -> serde_json::Value {
        json!({
            "providers": {"sp1": {"entities": ["127.0.0.1:8776"], "token_url": "http://127.0.0.1:9/token"},
                          "sp2": {"entities": ["127.0.0.2:8776"]}},
            "resource_paths": ["/{project}/{type}/{id}", "/v2.1/{project}/{type}/{id}"],
            "aggregate": [{"path": "/{project}/{type}", "method": "GET", "list_key": "{type}",
                           "id_key": "id", "sort_key": "id"}],
            "token_header": "X-Auth-Token",
            "search_timeout_ms": 2000,
            "negative_ttl_s": 30
        })
    }

    #[test]
    fn the_issue_example_validates_with_its_defaults() {
        let f = spec(seed()).validate(TrafficType::Http, 80, &[]).unwrap();
        assert_eq!(f.providers.len(), 2);
        assert_eq!(f.resource_paths.len(), 2);
        assert_eq!(f.aggregate[0].list_key, "{type}");
        let minimal = spec(json!({"providers": {"a": {"entities": ["127.0.0.1:1"]}}}))
            .validate(TrafficType::Https, 443, &[])
            .unwrap();
        assert_eq!(minimal.token_header, DEFAULT_TOKEN_HEADER);
        assert_eq!(minimal.search_timeout_ms, DEFAULT_SEARCH_TIMEOUT_MS);
        assert_eq!(minimal.negative_ttl_s, DEFAULT_NEGATIVE_TTL_S);
        let back: Federation = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn bad_federations_get_their_own_codes() {
        let cases: &[(serde_json::Value, &str)] = &[
            (
                json!({"resource_paths": ["/{project}/volumes"]}),
                "invalid_resource_path",
            ),
            (
                json!({"resource_paths": ["/{project}/{id}"]}),
                "invalid_resource_path",
            ),
            (
                json!({"resource_paths": ["/{project}/{kind}/{id}"]}),
                "invalid_resource_path",
            ),
            (
                json!({"resource_paths": ["volumes/{id}"]}),
                "invalid_resource_path",
            ),
            (
                json!({"aggregate": [{"path": "/{project}/volumes"}]}),
                "invalid_aggregate",
            ),
            (
                json!({"aggregate": [{"path": "/{project}/{type}/{id}", "list_key": "x"}]}),
                "invalid_aggregate",
            ),
            (
                json!({"aggregate": [{"path": "/{project}/volumes", "list_key": "{type}"}]}),
                "invalid_aggregate",
            ),
            (
                json!({"aggregate": [{"path": "/{project}/v", "list_key": "v", "method": "POST"}]}),
                "invalid_aggregate",
            ),
            (json!({"providers": {}}), "invalid_provider"),
            (
                json!({"providers": {"sp1": {"entities": []}}}),
                "invalid_provider",
            ),
            (
                json!({"providers": {"default": {"entities": ["127.0.0.1:1"]}}}),
                "invalid_provider",
            ),
            (
                json!({"providers": {"sp1": {"entities": ["127.0.0.1:1"], "token_url": "ftp://x"}}}),
                "invalid_provider",
            ),
            (json!({"search_timeout_ms": 0}), "invalid_federation"),
            (json!({"negative_ttl_s": -1}), "invalid_federation"),
            (json!({"token_header": "bad header"}), "invalid_federation"),
        ];
        for (patch, code) in cases {
            let mut v = seed();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let err = spec(v).validate(TrafficType::Http, 80, &[]).unwrap_err();
            assert_eq!(err.code(), *code, "{patch}: {err}");
        }
        let err = spec(seed())
            .validate(TrafficType::Http, 80, &["sp2"])
            .unwrap_err();
        assert_eq!(err.code(), "invalid_provider", "{err}");
        let err = spec(seed())
            .validate(TrafficType::Tcp, 80, &[])
            .unwrap_err();
        assert_eq!(err.code(), "federation_needs_http");
    }

    #[test]
    fn resource_paths_match_whole_segments_and_name_the_type() {
        let p = PathPattern::parse_resource("/{project}/{type}/{id}").unwrap();
        let m = p.matches("/alice/volumes/v-1").unwrap();
        assert_eq!(
            (m.project, m.resource_type, m.id),
            (Some("alice"), Some("volumes"), Some("v-1"))
        );
        assert!(p.matches("/alice/volumes").is_none());
        assert!(p.matches("/alice/volumes/v-1/extra").is_none());
        assert!(p.matches("/alice//v-1").is_none());
        let literal = PathPattern::parse_resource("/v2/{project}/servers/{id}").unwrap();
        let m = literal.matches("/v2/p/servers/s1").unwrap();
        assert_eq!((m.resource_type, m.id), (Some("servers"), Some("s1")));
        assert!(literal.matches("/v3/p/servers/s1").is_none());
        assert_eq!(
            p.with_project("/alice/volumes/v-1", "remote").as_deref(),
            Some("/remote/volumes/v-1")
        );
        let agg = AggregateSpec {
            path: "/{project}/{type}".into(),
            list_key: Some("{type}".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
        let m = agg.path.matches("/alice/volumes").unwrap();
        assert_eq!(agg.list_key_for(&m), "volumes");
        assert_eq!((agg.method.as_str(), agg.sort_key.as_str()), ("GET", "id"));
    }

    #[test]
    fn a_resource_mapping_is_flat_on_the_wire() {
        let m = ResourceMapping {
            key: ResourceKey {
                resource_type: "volumes".into(),
                id: "v1".into(),
            },
            provider: "sp2".into(),
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v, json!({"type": "volumes", "id": "v1", "provider": "sp2"}));
        assert_eq!(serde_json::from_value::<ResourceMapping>(v).unwrap(), m);
    }
}
