//! The L7 policy of an http instance: named pools besides the seed's
//! `backend` (the pool `default`), ordered routing rules, authorization and
//! rate limits. The controller validates and stores it; lb-node enforces
//! it (`dataplane::rules`, `auth`, `rate_limit`).

pub mod auth;
pub mod rate_limit;
pub mod rules;
mod to_spec;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::backend_tls::{BackendTls, BackendTlsError, BackendTlsSpec};
use crate::model::instance::{
    entity_members, health_check, BackendEntity, HealthCheck, HealthCheckSpec,
};
use crate::model::managed::{Managed, ManagedError, ManagedSpec};
use crate::model::sticky::{Sticky, StickySpec};
use crate::model::upstream::BackendProtocol;
use crate::model::{Algorithm, BackendMember, NamedMember, TrafficType, ValidationError};

pub use auth::{Auth, AuthSpec, RuleAuthSpec, SecretHasher};
pub use rate_limit::{RateLimit, RateLimitSpec};
pub use rules::{Rule, RuleAction, RuleSpec};

/// The pool the seed's `backend` is.
pub const DEFAULT_POOL: &str = "default";
pub const MAX_POOLS: usize = 64;
pub const MAX_RULES: usize = 256;
pub const MAX_RATE_LIMITS: usize = 32;

/// A policy that cannot be accepted, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("rule {rule:?} sends to pool {pool:?}, which is not defined (pools: {known})")]
    UnknownPool {
        rule: String,
        pool: String,
        known: String,
    },
    #[error("rule {rule:?}: invalid path_regex: {reason}")]
    InvalidRegex { rule: String, reason: String },
    #[error("rule {0:?} has no action: give one of pool, redirect, reject, respond")]
    MissingRuleAction(String),
    #[error("rule {rule:?}: {reason}")]
    InvalidRule { rule: String, reason: String },
    #[error("rule name {0:?} is used twice")]
    DuplicateRule(String),
    #[error("rate limit name {0:?} is used twice")]
    DuplicateRateLimit(String),
    #[error("invalid pool {pool:?}: {reason}")]
    InvalidPool { pool: String, reason: String },
    #[error("invalid path {0:?}: a path starts with / and holds no spaces, ? or #")]
    InvalidPath(String),
    #[error("invalid method {0:?}: expected an HTTP method such as GET")]
    InvalidMethod(String),
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    #[error("invalid {what} name {name:?}: 1-64 of a-z A-Z 0-9 . _ -")]
    InvalidName { what: &'static str, name: String },
    #[error("invalid auth: {0}")]
    InvalidAuth(String),
    #[error("invalid auth url {0:?}: expected http:// or https:// and a host")]
    InvalidAuthUrl(String),
    #[error("rate limit {limit:?}: period must be 1 to 86400 seconds, got {period}")]
    InvalidPeriod { limit: String, period: i64 },
    #[error("rate limit {limit:?}: threshold must be at least 1, got {threshold}")]
    InvalidThreshold { limit: String, threshold: i64 },
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(String),
    #[error("{0}")]
    NotForTcp(String),
    #[error("pool {pool:?}: {error}")]
    Managed {
        pool: String,
        error: crate::model::managed::ManagedError,
    },
    #[error(transparent)]
    BackendTls(#[from] BackendTlsError),
    #[error("pool {pool:?}: {error}")]
    Sticky {
        pool: String,
        error: crate::model::sticky::StickyError,
    },
}

impl PolicyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownPool { .. } => "unknown_pool",
            Self::InvalidRegex { .. } => "invalid_regex",
            Self::MissingRuleAction(_) => "missing_rule_action",
            Self::InvalidRule { .. } => "invalid_rule",
            Self::DuplicateRule(_) => "duplicate_rule",
            Self::DuplicateRateLimit(_) => "duplicate_rate_limit",
            Self::InvalidPool { .. } => "invalid_pool",
            Self::InvalidPath(_) => "invalid_path",
            Self::InvalidMethod(_) => "invalid_method",
            Self::InvalidHeaderName(_) => "invalid_header_name",
            Self::InvalidName { .. } => "invalid_name",
            Self::InvalidAuth(_) => "invalid_auth",
            Self::InvalidAuthUrl(_) => "invalid_auth_url",
            Self::InvalidPeriod { .. } => "invalid_rate_limit_period",
            Self::InvalidThreshold { .. } => "invalid_rate_limit_threshold",
            Self::InvalidRateLimit(_) => "invalid_rate_limit",
            Self::NotForTcp(_) => "invalid_field",
            Self::Managed { error, .. } => error.code(),
            Self::Sticky { error, .. } => error.code(),
            Self::BackendTls(error) => error.code(),
        }
    }
}

/// One named pool as a client writes it (the seed's backend shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Absent or empty for a managed pool.
    #[serde(default)]
    pub entities: Vec<BackendEntity>,
    #[serde(
        default,
        rename = "health-check",
        skip_serializing_if = "Option::is_none"
    )]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// Members lbd starts on demand and stops when idle (then `entities`
    /// stays empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedSpec>,
    /// Requests of a client keep going to one member: a signed cookie or a
    /// consistent hash (`model::sticky`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<StickySpec>,
    /// `http1` or `h2c`; absent: the instance's `backend_protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
    /// Members spoken to over TLS (`model::backend_tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTlsSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub members: Vec<BackendMember>,
    /// Host-name entities, resolved by the nodes into more `members`
    /// (see `dataplane::names`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_members: Vec<NamedMember>,
    #[serde(rename = "health-check")]
    pub health_check: HealthCheck,
    pub algorithm: Algorithm,
    /// Stored with the instance; a node gets `NodeConfig.managed` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<Managed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
    /// The pool's own; a node's config always has it set (resolved by lbd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTls>,
}

/// The policy fields of an instance as a client writes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<BTreeMap<String, PoolSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimitSpec>>,
}

/// Which auth a rule's requests go through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAuth {
    /// The instance's `auth` (none when it has none).
    #[default]
    Inherit,
    /// `"auth": "none"`: a public path.
    Public,
    Own(Auth),
}

impl RuleAuth {
    fn is_inherit(&self) -> bool {
        *self == RuleAuth::Inherit
    }
}

/// A rule and the auth its requests go through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyRule {
    #[serde(flatten)]
    pub rule: Rule,
    #[serde(default, skip_serializing_if = "RuleAuth::is_inherit")]
    pub auth: RuleAuth,
}

/// A validated policy, as stored and as pushed to the nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pools: BTreeMap<String, Pool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// For requests no rule matched, and rules without their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

impl Policy {
    pub fn is_empty(&self) -> bool {
        self == &Policy::default()
    }

    /// The policy as a node gets it: managed pools without their templates
    /// (commands and environments may hold secrets; the node gets
    /// `NodeConfig.managed` instead).
    pub fn for_node(&self) -> Policy {
        let mut policy = self.clone();
        for pool in policy.pools.values_mut() {
            pool.managed = None;
        }
        policy
    }

    /// The auth that requests matched by rule `rule` (an index into
    /// `rules`; `None`: no rule matched) go through; `None` is public.
    pub fn effective_auth(&self, rule: Option<usize>) -> Option<&Auth> {
        match rule.and_then(|i| self.rules.get(i)).map(|r| &r.auth) {
            None | Some(RuleAuth::Inherit) => self.auth.as_ref(),
            Some(RuleAuth::Public) => None,
            Some(RuleAuth::Own(a)) => Some(a),
        }
    }
}

impl PolicySpec {
    pub fn is_empty(&self) -> bool {
        self == &PolicySpec::default()
    }

    /// Every password and key in the policy, instance auth and rules' own.
    pub fn secrets(&self) -> Vec<&str> {
        let rules = self.rules.iter().flatten();
        let own = rules.filter_map(|r| r.auth.as_ref().and_then(RuleAuthSpec::own));
        self.auth
            .iter()
            .chain(own)
            .flat_map(AuthSpec::secrets)
            .collect()
    }

    /// Validates the whole policy of an instance listening on `port`.
    pub fn validate(
        &self,
        traffic: TrafficType,
        port: u16,
        hasher: &dyn SecretHasher,
    ) -> Result<Policy, PolicyError> {
        self.validate_keeping(traffic, port, hasher, &Policy::default())
    }

    /// Validates as [`Self::validate`]; a user or key given without its
    /// secret keeps its hash from `previous` (the stored policy) when the
    /// same place there (the instance auth, or the same-named rule's own
    /// auth) lists it in the same mode.
    pub fn validate_keeping(
        &self,
        traffic: TrafficType,
        port: u16,
        hasher: &dyn SecretHasher,
        previous: &Policy,
    ) -> Result<Policy, PolicyError> {
        if !traffic.is_http() && !self.is_empty() {
            return Err(PolicyError::NotForTcp(
                "pools, rules, auth and rate_limits need traffic_type http".into(),
            ));
        }
        let pools = self.pools(port)?;
        let auth = self
            .auth
            .as_ref()
            .map(|a| a.validate_keeping(hasher, previous.auth.as_ref()))
            .transpose()?;
        let rules = self.rules(&pools, auth.as_ref(), hasher, previous)?;
        let rate_limits = self.rate_limits()?;
        Ok(Policy {
            pools,
            rules,
            auth,
            rate_limits,
        })
    }

    fn pools(&self, port: u16) -> Result<BTreeMap<String, Pool>, PolicyError> {
        let specs = self.pools.clone().unwrap_or_default();
        if specs.len() > MAX_POOLS {
            return Err(PolicyError::InvalidPool {
                pool: format!("{} pools", specs.len()),
                reason: format!("at most {MAX_POOLS}"),
            });
        }
        let invalid = |pool: &str, e: ValidationError| PolicyError::InvalidPool {
            pool: pool.to_string(),
            reason: e.to_string(),
        };
        let mut out = BTreeMap::new();
        for (name, spec) in specs {
            check_policy_name("pool", &name)?;
            if name == DEFAULT_POOL {
                return Err(PolicyError::InvalidPool {
                    pool: name,
                    reason: "`default` is the instance's `backend`; set it there".into(),
                });
            }
            let (members, named_members) = if spec.managed.is_some() && spec.entities.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                entity_members(&spec.entities, port, TrafficType::Http)
                    .map_err(|e| invalid(&name, e))?
            };
            let health_check = health_check(spec.health_check.as_ref(), TrafficType::Http)
                .map_err(|e| invalid(&name, e))?;
            let managed = spec
                .managed
                .as_ref()
                .map(|m| managed_pool(&name, m, !spec.entities.is_empty()))
                .transpose()?;
            let sticky = match &spec.sticky {
                Some(s) => s
                    .validate(TrafficType::Http)
                    .map_err(|error| PolicyError::Sticky {
                        pool: name.clone(),
                        error,
                    })?,
                None => None,
            };
            let pool = Pool {
                members,
                named_members,
                health_check,
                algorithm: spec.algorithm.unwrap_or_default(),
                managed,
                sticky,
                backend_protocol: spec.backend_protocol,
                backend_tls: spec
                    .backend_tls
                    .as_ref()
                    .map(|t| t.validate(&format!("pools.{name}.backend_tls")))
                    .transpose()?
                    .flatten(),
            };
            out.insert(name, pool);
        }
        Ok(out)
    }

    fn rules(
        &self,
        pools: &BTreeMap<String, Pool>,
        instance_auth: Option<&Auth>,
        hasher: &dyn SecretHasher,
        previous: &Policy,
    ) -> Result<Vec<PolicyRule>, PolicyError> {
        let specs = self.rules.as_deref().unwrap_or_default();
        if specs.len() > MAX_RULES {
            return Err(PolicyError::InvalidRule {
                rule: format!("{} rules", specs.len()),
                reason: format!("at most {MAX_RULES}"),
            });
        }
        let mut seen = std::collections::HashSet::new();
        specs
            .iter()
            .map(|spec| {
                let rule = spec.validate()?;
                if !seen.insert(rule.name.clone()) {
                    return Err(PolicyError::DuplicateRule(rule.name));
                }
                if let RuleAction::Pool { pool, .. } = &rule.action {
                    if pool != DEFAULT_POOL && !pools.contains_key(pool) {
                        let mut known: Vec<&str> = vec![DEFAULT_POOL];
                        known.extend(pools.keys().map(String::as_str));
                        return Err(PolicyError::UnknownPool {
                            rule: rule.name,
                            pool: pool.clone(),
                            known: known.join(", "),
                        });
                    }
                }
                let auth = match &spec.auth {
                    None => RuleAuth::Inherit,
                    Some(RuleAuthSpec::None(_)) => RuleAuth::Public,
                    Some(RuleAuthSpec::Own(a)) => {
                        let stored = previous.rules.iter().find_map(|r| match &r.auth {
                            RuleAuth::Own(a) if r.rule.name == rule.name => Some(a),
                            _ => None,
                        });
                        RuleAuth::Own(a.validate_keeping(hasher, stored)?)
                    }
                };
                let effective = match &auth {
                    RuleAuth::Inherit => instance_auth,
                    RuleAuth::Public => None,
                    RuleAuth::Own(a) => Some(a),
                };
                if !rule.require_groups.is_empty() && effective.is_none() {
                    return Err(PolicyError::InvalidRule {
                        rule: rule.name,
                        reason:
                            "require_groups needs auth (the groups come from the auth decision)"
                                .into(),
                    });
                }
                Ok(PolicyRule { rule, auth })
            })
            .collect()
    }

    fn rate_limits(&self) -> Result<Vec<RateLimit>, PolicyError> {
        let specs = self.rate_limits.as_deref().unwrap_or_default();
        if specs.len() > MAX_RATE_LIMITS {
            return Err(PolicyError::InvalidRateLimit(format!(
                "at most {MAX_RATE_LIMITS} rate limits"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        specs
            .iter()
            .map(|spec| {
                let limit = spec.validate()?;
                if !seen.insert(limit.name.clone()) {
                    return Err(PolicyError::DuplicateRateLimit(limit.name));
                }
                Ok(limit)
            })
            .collect()
    }
}

/// Names of rules, pools, limits, groups and credentials.
pub(crate) fn check_policy_name(what: &'static str, name: &str) -> Result<(), PolicyError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// An HTTP field name (RFC 9110 token).
pub(crate) fn check_header_name(name: &str) -> Result<(), PolicyError> {
    if !name.is_empty() && name.len() <= 256 && name.bytes().all(rules::is_token_byte) {
        Ok(())
    } else {
        Err(PolicyError::InvalidHeaderName(name.to_string()))
    }
}

/// A named pool's `managed`, validated; a managed pool lists no entities.
fn managed_pool(
    pool: &str,
    spec: &ManagedSpec,
    entities_given: bool,
) -> Result<Managed, PolicyError> {
    let error = |error: ManagedError| PolicyError::Managed {
        pool: pool.to_string(),
        error,
    };
    if entities_given {
        return Err(error(ManagedError::EntitiesGiven));
    }
    spec.validate(TrafficType::Http).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Plain;
    impl SecretHasher for Plain {
        fn hash(&self, s: &str) -> String {
            format!("hashed({})", s.len())
        }
    }

    fn policy(json: &str) -> Result<Policy, PolicyError> {
        serde_json::from_str::<PolicySpec>(json)
            .unwrap()
            .validate(TrafficType::Http, 80, &Plain)
    }

    #[test]
    fn rules_reach_named_pools_or_the_default_one() {
        let p = policy(
            r#"{"pools":{"api":{"entities":["10.0.0.1:8080"]}},
                "rules":[{"name":"a","match":{"path_prefix":"/api/"},"action":{"pool":"api"}},
                         {"name":"b","action":{"pool":"default"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            p.pools["api"].members[0].address.to_string(),
            "10.0.0.1:8080"
        );
        assert_eq!(p.rules.len(), 2);
    }

    #[test]
    fn references_and_names_are_checked_across_the_policy() {
        let code = |j: &str| policy(j).unwrap_err().code();
        assert_eq!(
            code(r#"{"rules":[{"name":"a","action":{"pool":"nope"}}]}"#),
            "unknown_pool"
        );
        assert_eq!(
            code(
                r#"{"rules":[{"name":"a","action":{"reject":403}},{"name":"a","action":{"reject":404}}]}"#
            ),
            "duplicate_rule"
        );
        assert_eq!(
            code(r#"{"pools":{"default":{"entities":["10.0.0.1"]}}}"#),
            "invalid_pool"
        );
        assert_eq!(code(r#"{"pools":{"x":{"entities":[]}}}"#), "invalid_pool");
        assert_eq!(
            code(r#"{"rules":[{"name":"a","require_groups":["g"],"action":{"reject":403}}]}"#),
            "invalid_rule"
        );
        let tcp = serde_json::from_str::<PolicySpec>(r#"{"rules":[]}"#)
            .unwrap()
            .validate(TrafficType::Tcp, 80, &Plain)
            .unwrap_err();
        assert_eq!(tcp.code(), "invalid_field");
    }

    #[test]
    fn a_rule_inherits_the_instance_auth_unless_it_says_none() {
        let p = policy(
            r#"{"auth":{"mode":"service","url":"http://127.0.0.1:1/"},
                "rules":[{"name":"public","auth":"none","action":{"pool":"default"}},
                         {"name":"private","require_groups":["g1"],"action":{"pool":"default"}}]}"#,
        )
        .unwrap();
        assert_eq!(p.rules[0].auth, RuleAuth::Public);
        assert_eq!(p.effective_auth(Some(0)), None);
        assert!(matches!(p.effective_auth(Some(1)), Some(Auth::Service(_))));
        assert!(matches!(p.effective_auth(None), Some(Auth::Service(_))));
    }

    #[test]
    fn a_stored_policy_reads_back_as_it_was_written() {
        let p = policy(
            r#"{"pools":{"api":{"entities":["10.0.0.1:8080"],"algorithm":"least_connections"}},
                "rules":[{"name":"r","match":{"host":"*.x.org","header":{"X-A":"*"}},"action":{"redirect":"https://y/","code":308}}],
                "rate_limits":[{"name":"l","key":"client_ip","period":10,"threshold":5}]}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), p);
    }
}
