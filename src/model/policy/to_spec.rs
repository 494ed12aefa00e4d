//! A stored policy back in the shapes clients write (`info`): what `info`
//! shows can be sent again as it is. Credentials come back by name and
//! groups only; validation then keeps their stored hashes by name.

use crate::model::managed::Managed;
use std::collections::BTreeMap;

use super::auth::{CredentialSpec, NoAuth};
use super::rules::{ActionSpec, HeaderEdits, HostMatch, Match, MatchSpec, OneOrMany, RespondSpec};
use super::{
    Auth, AuthSpec, Policy, PolicySpec, Pool, PoolSpec, RateLimit, RateLimitSpec, Rule, RuleAction,
    RuleAuth, RuleAuthSpec, RuleSpec,
};
use crate::model::instance::{HealthCheck, HealthCheckSpec, HealthCriteriaSpec};
use crate::model::policy::auth::{AuthMode, Credential};
use crate::model::{BackendEntity, BackendMember, NamedMember};

impl Policy {
    /// Each part is `None` when empty, so a policy-free instance has an
    /// empty spec.
    pub fn to_spec(&self) -> PolicySpec {
        PolicySpec {
            pools: (!self.pools.is_empty()).then(|| {
                self.pools
                    .iter()
                    .map(|(name, p)| (name.clone(), p.to_spec()))
                    .collect()
            }),
            rules: (!self.rules.is_empty())
                .then(|| self.rules.iter().map(|r| r.rule.to_spec(&r.auth)).collect()),
            auth: self.auth.as_ref().map(Auth::to_spec),
            rate_limits: (!self.rate_limits.is_empty())
                .then(|| self.rate_limits.iter().map(RateLimit::to_spec).collect()),
        }
    }
}

impl Pool {
    pub fn to_spec(&self) -> PoolSpec {
        PoolSpec {
            entities: entities(&self.members)
                .into_iter()
                .chain(self.named_members.iter().map(named_entity))
                .collect(),
            health_check: Some(health_check_spec(&self.health_check)),
            algorithm: Some(self.algorithm),
            managed: self.managed.as_ref().map(Managed::to_spec),
            sticky: self
                .sticky
                .as_ref()
                .map(crate::model::sticky::Sticky::to_spec),
            backend_protocol: self.backend_protocol,
            backend_tls: self.backend_tls.as_ref().map(|t| t.to_spec()),
        }
    }
}

/// Members as entities with an explicit port (and a weight when not 1).
pub fn entities(members: &[BackendMember]) -> Vec<BackendEntity> {
    members
        .iter()
        .map(|m| entity(m.address.to_string(), m.weight))
        .collect()
}

/// A host-name member as the entity it was written as.
pub fn named_entity(m: &NamedMember) -> BackendEntity {
    entity(m.address.to_string(), m.weight)
}

fn entity(address: String, weight: u32) -> BackendEntity {
    match weight {
        1 => BackendEntity::Text(address),
        w => BackendEntity::Object {
            address,
            weight: Some(i64::from(w)),
        },
    }
}

pub fn health_check_spec(h: &HealthCheck) -> HealthCheckSpec {
    HealthCheckSpec {
        protocol: Some(h.protocol),
        // 0 records "each member on its own port".
        port: (h.port != 0).then_some(i64::from(h.port)),
        request_path: Some(h.request_path.clone()),
        expected_codes: Some(h.expected_codes.as_str().to_string()),
        criteria: Some(HealthCriteriaSpec {
            interval: Some(i64::from(h.criteria.interval)),
            timeout: Some(i64::from(h.criteria.timeout)),
            health_threshold: Some(i64::from(h.criteria.health_threshold)),
            unhealth_threshold: Some(i64::from(h.criteria.unhealth_threshold)),
        }),
    }
}

impl Rule {
    pub fn to_spec(&self, auth: &RuleAuth) -> RuleSpec {
        RuleSpec {
            name: self.name.clone(),
            matches: self.matches.to_spec(),
            action: Some(action_spec(&self.action, &self.headers)),
            auth: match auth {
                RuleAuth::Inherit => None,
                RuleAuth::Public => Some(RuleAuthSpec::None(NoAuth::None)),
                RuleAuth::Own(a) => Some(RuleAuthSpec::Own(Box::new(a.to_spec()))),
            },
            require_groups: (!self.require_groups.is_empty()).then(|| self.require_groups.clone()),
        }
    }
}

impl Match {
    pub fn to_spec(&self) -> MatchSpec {
        let pairs = |list: &[(String, Option<String>)]| {
            (!list.is_empty()).then(|| {
                list.iter()
                    .map(|(k, v)| (k.clone(), v.clone().unwrap_or_else(|| "*".into())))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        MatchSpec {
            host: self.host.as_ref().map(|h| match h {
                HostMatch::Exact(h) => h.clone(),
                HostMatch::Suffix(s) => format!("*.{s}"),
            }),
            path_prefix: self.path_prefix.clone(),
            path_regex: self.path_regex.clone(),
            method: (!self.method.is_empty()).then(|| self.method.clone()),
            header: pairs(&self.header),
            cookie: pairs(&self.cookie),
            source_cidr: (!self.source_cidr.is_empty())
                .then(|| OneOrMany::Many(self.source_cidr.iter().map(|c| c.to_string()).collect())),
        }
    }
}

fn action_spec(action: &RuleAction, headers: &HeaderEdits) -> ActionSpec {
    let mut spec = ActionSpec {
        set_headers: (!headers.set.is_empty()).then(|| headers.set.iter().cloned().collect()),
        remove_headers: (!headers.remove.is_empty()).then(|| headers.remove.clone()),
        ..ActionSpec::default()
    };
    match action {
        RuleAction::Pool { pool, strip_prefix } => {
            spec.pool = Some(pool.clone());
            spec.strip_prefix = strip_prefix.then_some(true);
        }
        RuleAction::Redirect { location, code } => {
            spec.redirect = Some(location.clone());
            spec.code = Some(*code);
        }
        RuleAction::Reject { status } => spec.reject = Some(*status),
        RuleAction::Respond {
            status,
            body,
            content_type,
        } => {
            spec.respond = Some(RespondSpec {
                status: *status,
                body: body.clone(),
                content_type: content_type.clone(),
            })
        }
    }
    spec
}

impl Auth {
    /// Users and keys by name and groups: no secret, no hash.
    pub fn to_spec(&self) -> AuthSpec {
        let names = |list: &[Credential]| {
            Some(
                list.iter()
                    .map(|c| CredentialSpec {
                        name: c.name.clone(),
                        password: None,
                        key: None,
                        groups: c.groups.clone(),
                    })
                    .collect(),
            )
        };
        match self {
            Auth::Service(s) => AuthSpec {
                mode: Some(AuthMode::Service),
                url: Some(s.url.clone()),
                timeout_ms: Some(i64::from(s.timeout_ms)),
                token_header: s.token_header.clone(),
                auth_token_header: Some(s.auth_token_header.clone()),
                pass_credentials: Some(s.pass_credentials),
                cache_ttl_s: Some(i64::from(s.cache_ttl_s)),
                negative_ttl_s: Some(i64::from(s.negative_ttl_s)),
                cache_key: Some(s.cache_key.clone()),
                failure: Some(s.failure),
                stale_on_error_s: Some(i64::from(s.stale_on_error_s)),
                ..AuthSpec::default()
            },
            Auth::Basic { realm, users } => AuthSpec {
                mode: Some(AuthMode::Basic),
                realm: Some(realm.clone()),
                users: names(users),
                ..AuthSpec::default()
            },
            Auth::ApiKey { header, keys } => AuthSpec {
                mode: Some(AuthMode::ApiKey),
                header: Some(header.clone()),
                keys: names(keys),
                ..AuthSpec::default()
            },
        }
    }
}

impl RateLimit {
    pub fn to_spec(&self) -> RateLimitSpec {
        RateLimitSpec {
            name: self.name.clone(),
            key: String::from(self.key.clone()),
            method: (!self.method.is_empty()).then(|| self.method.clone()),
            path_prefix: self.path_prefix.clone(),
            period: i64::from(self.period),
            threshold: self.threshold as i64,
            burst: Some(self.burst as i64),
            unit: Some(self.unit),
            scope: Some(self.scope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::SecretHasher;
    use crate::model::TrafficType;

    struct Counting;
    impl SecretHasher for Counting {
        fn hash(&self, s: &str) -> String {
            format!("h{}", s.len())
        }
    }

    const FULL: &str = r#"{
        "pools": {"api": {"entities": ["10.0.0.1:8080", {"address": "10.0.0.2", "weight": 3}],
                          "health-check": {"request-path": "/healthz", "port": 9000},
                          "algorithm": "least_connections"},
                  "web": {"entities": ["10.0.1.1"]}},
        "auth": {"mode": "service", "url": "https://auth.example/check", "cache_key": ["credentials"],
                 "failure": "allow", "token_header": "X-Token"},
        "rules": [
            {"name": "api", "match": {"host": "*.Example.com", "path_prefix": "/api/", "method": ["get"],
                                      "header": {"X-Env": "beta", "X-Any": "*"}, "cookie": {"s": "*"},
                                      "source_cidr": "10.1.2.3/8"},
             "action": {"pool": "api", "strip_prefix": true, "set_headers": {"X-A": "1"},
                        "remove_headers": ["Cookie"]},
             "require_groups": ["ops"]},
            {"name": "old", "match": {"path_regex": "^/old/.*$"},
             "action": {"redirect": "https://new.example/", "code": 308}, "auth": "none"},
            {"name": "deny", "match": {"path_prefix": "/admin"}, "action": {"reject": 403},
             "auth": {"mode": "basic", "realm": "ops", "users": [{"name": "ann", "password": "secret-pw", "groups": ["g"]}]}},
            {"name": "keys", "match": {"path_prefix": "/k"}, "action": {"pool": "default"},
             "auth": {"mode": "api_key", "header": "X-Key", "keys": [{"name": "ci", "key": "k-12345678"}]}},
            {"name": "hi", "action": {"respond": {"status": 200, "body": "hi"}}}
        ],
        "rate_limits": [{"name": "ip", "key": "client_ip", "period": 10, "threshold": 5},
                        {"name": "user", "key": "header:X-User", "method": ["post"], "path_prefix": "/api/",
                         "period": 60, "threshold": 1000, "burst": 10, "unit": "bytes", "scope": "global"}]
    }"#;

    fn validate(spec: &PolicySpec, previous: &Policy) -> Policy {
        spec.validate_keeping(TrafficType::Http, 80, &Counting, previous)
            .unwrap()
    }

    #[test]
    fn spec_validate_to_spec_validate_round_trips() {
        let spec: PolicySpec = serde_json::from_str(FULL).unwrap();
        let first = validate(&spec, &Policy::default());
        let shown = first.to_spec();
        // Sent back as shown, credentials without secrets keep their hashes.
        let again = validate(&shown, &first);
        assert_eq!(again, first);
        assert_eq!(again.to_spec(), shown);
        // And through JSON, as lbctl sends it.
        let wire: PolicySpec =
            serde_json::from_str(&serde_json::to_string(&shown).unwrap()).unwrap();
        assert_eq!(validate(&wire, &first), first);
    }

    #[test]
    fn the_shown_spec_carries_no_secret_and_no_hash() {
        let spec: PolicySpec = serde_json::from_str(FULL).unwrap();
        let policy = validate(&spec, &Policy::default());
        let json = serde_json::to_string(&policy.to_spec()).unwrap();
        for secret in ["secret-pw", "k-12345678", "h9", "h10", "hash", "password"] {
            assert!(!json.contains(secret), "{secret} in {json}");
        }
        // Users and keys by name and groups only.
        assert!(
            json.contains(r#""users":[{"name":"ann","groups":["g"]}]"#),
            "{json}"
        );
        assert!(
            json.contains(r#""keys":[{"name":"ci","groups":[]}]"#),
            "{json}"
        );
    }

    #[test]
    fn an_empty_policy_has_an_empty_spec() {
        assert!(Policy::default().to_spec().is_empty());
    }
}
