//! Instances (load balancers), in the seed's shape: `traffic_type`, `subnet`,
//! `backend.entities`, `backend.health-check`, `backend.auto-scaling`, plus our
//! additions (`port`, `algorithm`, `min_nodes`), never renames.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::names::validate_name;
use crate::model::policy::{
    AuthSpec, PolicySpec, PoolSpec, RateLimitSpec, RuleAuthSpec, RuleSpec, SecretHasher,
};
use crate::model::project::{check_type_tag, parse_subnet};
use crate::model::scaling::{ScalingPolicy, ScalingSpec};
use crate::model::tuning::{
    max_connections, max_header_bytes, Algorithm, HashOn, ProxyProtocol, Timeouts, TimeoutsSpec,
    Tuning, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
};
use crate::model::upstream::{self, BackendProtocol};
use crate::model::{
    ExpectedCodes, HostPort, NamedMember, OperatingStatus, ProvisioningStatus, ValidationError,
};

/// Most nodes one instance may ask for.
pub const MAX_NODES: u32 = 16;
/// `max_nodes` when not given.
pub const DEFAULT_MAX_NODES: u32 = 4;
/// Most backends one instance may list.
pub const MAX_BACKENDS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrafficType {
    /// HTTP/1.1 and h2c: the L7 pipeline (rules, auth, rate limits).
    Http,
    /// TCP relayed as is.
    Tcp,
    /// HTTP behind TLS termination (`tls`): everything `http` takes, too.
    Https,
    /// SMTP from clients, each message POSTed to HTTP backends (`smtp`).
    Smtp,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Https => "https",
            Self::Smtp => "smtp",
        }
    }

    /// The protocol the backends speak: HTTP behind https (TLS ends at the
    /// node) and behind smtp (each message is POSTed).
    pub fn backend_protocol(self) -> TrafficType {
        match self {
            Self::Smtp | Self::Https => Self::Http,
            t => t,
        }
    }

    /// Whether requests are HTTP (the L7 pipeline, policy, sticky, ...).
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }
}

/// One backend as a client may write it: `"10.1.0.5:80"`, `"10.1.0.5"` (the
/// listener port), `"http://10.1.0.5:80/"`, `"app.internal:8000"` (a host
/// name, resolved by the nodes), `{"address": "...", "weight": 2}`, or the
/// seed's one-element list of one of these. Read and described by
/// `entity.rs` (its refusal names the field and the forms).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BackendEntity {
    Text(String),
    Object {
        address: String,
        #[serde(default)]
        weight: Option<i64>,
    },
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendMember {
    #[schemars(with = "String")]
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HealthProtocol {
    #[serde(rename = "HTTP", alias = "http")]
    Http,
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
}

/// The seed's health-check object as a client writes it; absent fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub protocol: Option<HealthProtocol>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default, rename = "request-path")]
    pub request_path: Option<String>,
    /// HTTP statuses that pass: `200-399` (default), one code such as `204`, or
    /// a comma-separated list of both such as `200,301-302`.
    #[serde(default, rename = "expected-codes")]
    pub expected_codes: Option<String>,
    #[serde(default)]
    pub criteria: Option<HealthCriteriaSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCriteriaSpec {
    /// Seconds between checks.
    #[serde(default)]
    pub interval: Option<i64>,
    /// Seconds before a check counts as failed; never above `interval`.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Consecutive successes to count as up.
    #[serde(default, rename = "health-threshold")]
    pub health_threshold: Option<i64>,
    /// Consecutive failures to count as down.
    #[serde(default, rename = "unhealth-threshold")]
    pub unhealth_threshold: Option<i64>,
}

/// A resolved health check: every field set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    pub port: u16,
    #[serde(rename = "request-path")]
    pub request_path: String,
    #[serde(rename = "expected-codes", default)]
    #[schemars(with = "String")]
    pub expected_codes: ExpectedCodes,
    pub criteria: HealthCriteria,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthCriteria {
    pub interval: u32,
    pub timeout: u32,
    #[serde(rename = "health-threshold")]
    pub health_threshold: u32,
    #[serde(rename = "unhealth-threshold")]
    pub unhealth_threshold: u32,
}

/// The seed's `backend` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    // An update without entities keeps the stored ones, so clients leave an
    // empty list out; the schema still documents the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("default" = []))]
    pub entities: Vec<BackendEntity>,
    #[serde(default, rename = "health-check")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default, rename = "auto-scaling")]
    pub auto_scaling: Option<bool>,
    /// The default pool's members are started by lbd on demand (then
    /// `entities` stays empty). On update: replaces the stored one; giving
    /// `entities` instead makes the pool a plain one again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<crate::model::managed::ManagedSpec>,
    /// Sticky routing of the default pool: `{"cookie": NAME, "ttl": S}`,
    /// `{"hash": "client_ip" | "header:X"}`, or `"none"`. On update:
    /// replaces the stored one; absent keeps it; `"none"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::model::sticky::StickySpec>,
    /// The default pool's `http1` or `h2c`, over the instance's
    /// `backend_protocol`. On update: absent keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
}

/// `create instance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceCreate {
    /// A DNS label: `[a-z0-9-]{1,63}`.
    pub name: String,
    /// The project's name.
    pub project: String,
    pub traffic_type: TrafficType,
    /// The listener port; defaults to 80 for `http`, required for `tcp`.
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// Where the nodes get their addresses: inside the project's subnet.
    #[serde(default)]
    pub subnet: Option<String>,
    pub backend: BackendSpec,
    /// How many LB nodes serve the instance (default 1); with auto-scaling, the fewest.
    #[serde(default)]
    pub min_nodes: Option<i64>,
    /// With auto-scaling, the most LB nodes (default 4, at least `min_nodes`).
    #[serde(default)]
    pub max_nodes: Option<i64>,
    /// Autoscaling targets, windows and cooldown (used when `backend.auto-scaling` is true).
    #[serde(default)]
    pub scaling: Option<ScalingSpec>,
    /// What `consistent_hash` keys on: `client_ip` (default) or `header:<Name>`.
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    /// Client connections one node serves at once; more are refused politely.
    #[serde(default)]
    pub max_connections: Option<i64>,
    /// The most bytes of an HTTP request head (default 65536); more get 431.
    #[serde(default)]
    pub max_header_bytes: Option<i64>,
    /// PROXY protocol header towards backends (`tcp` only): `none`, `v1`, `v2`.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// How members are spoken to: `http1` (default) or `h2c` (HTTP/2 with
    /// prior knowledge). Every pool that names none of its own; http,
    /// https and smtp only.
    #[serde(default)]
    pub backend_protocol: Option<BackendProtocol>,
    /// Named pools besides `backend` (the pool `default`); http only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<BTreeMap<String, PoolSpec>>,
    /// Routing rules, in order; the first match wins. http only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    /// Authorization of requests no rule overrides. http only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// http only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    /// smtp only: delivery and the conversation's limits (defaults when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::SmtpSpec>,
    /// Accepted as in the seed's instance shape; must be `instance`.
    #[serde(default, rename = "type")]
    pub object_type: Option<String>,
    /// TLS termination; required with (and only for) `traffic_type: https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::TlsSpec>,
}

/// A validated instance: what is stored and what the reconciler works towards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub name: String,
    pub traffic_type: TrafficType,
    pub port: u16,
    /// What the nodes get as is; flattened, as stored specs have these fields
    /// at the top level.
    #[serde(flatten)]
    pub tuning: Tuning,
    pub subnet: Option<Ipv4Net>,
    pub backends: Vec<BackendMember>,
    /// Host-name entities of the default pool: each node resolves them and
    /// makes each A/AAAA answer a member (absent from specs before them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_backends: Vec<NamedMember>,
    pub health_check: HealthCheck,
    pub auto_scaling: bool,
    pub min_nodes: u32,
    // Added after the first release: stored specs without them take the defaults.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
    #[serde(default)]
    pub scaling: ScalingPolicy,
    /// Pools, rules, auth, rate limits (http only).
    #[serde(
        default,
        skip_serializing_if = "crate::model::policy::Policy::is_empty"
    )]
    pub policy: crate::model::policy::Policy,
    /// The default pool (`backend`) is managed: lbd starts its members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<crate::model::managed::Managed>,
    /// The default pool's sticky routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::model::sticky::Sticky>,
    /// Set exactly for smtp instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::Smtp>,
    /// `backend.backend_protocol`: the default pool's own, over
    /// `tuning.backend_protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool_protocol: Option<BackendProtocol>,
    /// TLS termination (`https`): certificates without their keys (lbd
    /// keeps those in files of their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::Tls>,
}

fn default_max_nodes() -> u32 {
    DEFAULT_MAX_NODES
}

impl InstanceSpec {
    /// How many nodes should serve, given the autoscaler's wish `desired`.
    pub fn target_nodes(&self, desired: u32) -> u32 {
        if self.auto_scaling {
            desired.clamp(self.min_nodes, self.max_nodes.max(self.min_nodes))
        } else {
            self.min_nodes
        }
    }

    /// What the instance may cost in nodes, as the quota counts it:
    /// `max_nodes` with autoscaling, else `min_nodes`.
    pub fn quota_nodes(&self) -> u32 {
        if self.auto_scaling {
            self.max_nodes.max(self.min_nodes)
        } else {
            self.min_nodes
        }
    }

    /// What a node at `address` runs for this spec, as config `version`.
    pub fn node_config(&self, version: u64, address: IpAddr) -> crate::model::NodeConfig {
        // Each pool's protocol resolved here, so a node reads it off its
        // pool: `tuning.backend_protocol` becomes the default pool's.
        let instance_protocol = self.tuning.backend_protocol;
        let mut policy = self.policy.for_node();
        for pool in policy.pools.values_mut() {
            pool.backend_protocol =
                Some(upstream::resolve(pool.backend_protocol, instance_protocol));
        }
        let mut tuning = self.tuning.clone();
        tuning.backend_protocol = upstream::resolve(self.default_pool_protocol, instance_protocol);
        crate::model::NodeConfig {
            version,
            traffic_type: self.traffic_type,
            listen: SocketAddr::new(address, self.port),
            backends: self.backends.clone(),
            named_backends: self.named_backends.clone(),
            // lbd fills them in (`reconcile`): its `--resolver`, its listeners.
            resolver: None,
            name_guard: None,
            health_check: self.health_check.clone(),
            tuning,
            policy,
            serving_nodes: 1,
            redis: None,
            managed: self
                .managed_pools()
                .map(|(pool, m)| (pool.to_string(), m.for_node()))
                .collect(),
            sticky: self.sticky.clone(),
            // lbd fills it in (`reconcile`): it is derived from its secret.
            sticky_key: None,
            smtp: self.smtp.clone(),
            // lbd fills it in: the keys are in its key files, not the spec.
            tls: None,
            // lbd fills it in (issue 18): the mappings are in its store.
            federation: None,
        }
    }

    /// Whether a pool of the instance pins clients with a cookie (its
    /// nodes then need the instance's cookie key).
    pub fn has_sticky_cookie(&self) -> bool {
        let cookie = |s: &Option<crate::model::sticky::Sticky>| {
            matches!(s, Some(crate::model::sticky::Sticky::Cookie { .. }))
        };
        cookie(&self.sticky) || self.policy.pools.values().any(|p| cookie(&p.sticky))
    }

    /// Every managed pool of the instance, by pool name (`default` for
    /// `backend`).
    pub fn managed_pools(&self) -> impl Iterator<Item = (&str, &crate::model::managed::Managed)> {
        let default = self
            .managed
            .as_ref()
            .map(|m| (crate::model::policy::DEFAULT_POOL, m));
        let named = self
            .policy
            .pools
            .iter()
            .filter_map(|(name, pool)| pool.managed.as_ref().map(|m| (name.as_str(), m)));
        default.into_iter().chain(named)
    }

    /// Checks the rules that tie fields together, after create or update.
    fn check_combination(&self) -> Result<(), ValidationError> {
        let t = &self.tuning;
        if t.proxy_protocol != ProxyProtocol::None && self.traffic_type != TrafficType::Tcp {
            return Err(ValidationError::InvalidField(
                "proxy_protocol needs traffic_type tcp".into(),
            ));
        }
        let h2c = [t.backend_protocol]
            .into_iter()
            .chain(self.default_pool_protocol)
            .any(|p| p == BackendProtocol::H2c);
        if h2c && self.traffic_type == TrafficType::Tcp {
            return Err(ValidationError::InvalidField(
                "backend_protocol h2c needs traffic_type http, https or smtp (tcp is relayed as is)"
                    .into(),
            ));
        }
        if matches!(t.hash_on, HashOn::Header(_)) && !self.traffic_type.is_http() {
            return Err(ValidationError::InvalidField(
                "hash_on header:<Name> needs traffic_type http".into(),
            ));
        }
        if self.max_nodes < self.min_nodes {
            return Err(ValidationError::InvalidScaling(format!(
                "max_nodes ({}) must be at least min_nodes ({})",
                self.max_nodes, self.min_nodes
            )));
        }
        if t.hash_on != HashOn::ClientIp && t.algorithm != Algorithm::ConsistentHash {
            return Err(ValidationError::InvalidField(
                "hash_on needs algorithm consistent_hash".into(),
            ));
        }
        self.check_tls()
    }

    /// `tls` goes with `https`, and its redirect port is not the listener's.
    fn check_tls(&self) -> Result<(), ValidationError> {
        use crate::model::tls::TlsError;
        match (&self.tls, self.traffic_type) {
            (None, TrafficType::Https) => Err(TlsError::Missing.into()),
            (Some(_), t) if !matches!(t, TrafficType::Https | TrafficType::Smtp) => {
                Err(TlsError::NotHttps.into())
            }
            (Some(tls), TrafficType::Smtp) if tls.redirect_http_port.is_some() => {
                Err(TlsError::RedirectNeedsHttps.into())
            }
            (Some(tls), _) if tls.redirect_http_port == Some(self.port) => {
                Err(TlsError::RedirectPort(i64::from(self.port)).into())
            }
            _ => Ok(()),
        }
    }
}

impl InstanceCreate {
    /// The policy fields, as one spec.
    pub fn policy_spec(&self) -> PolicySpec {
        PolicySpec {
            pools: self.pools.clone(),
            rules: self.rules.clone(),
            auth: self.auth.clone(),
            rate_limits: self.rate_limits.clone(),
        }
    }

    /// `hasher` turns the policy's passwords and keys into what is stored.
    pub fn validate(self, hasher: &dyn SecretHasher) -> Result<InstanceSpec, ValidationError> {
        validate_name(&self.name)?;
        validate_name(&self.project)?;
        check_type_tag(self.object_type.as_deref(), "instance")?;
        let port = match (self.port, self.traffic_type) {
            (Some(p), _) => port(p)?,
            (None, TrafficType::Http) => 80,
            (None, TrafficType::Smtp) => 25,
            (None, TrafficType::Https) => 443,
            (None, TrafficType::Tcp) => return Err(ValidationError::MissingField("port".into())),
        };
        let backend_traffic = self.traffic_type.backend_protocol();
        let subnet = self.subnet.as_deref().map(parse_subnet).transpose()?;
        let (backends, named_backends) =
            if self.backend.managed.is_some() && self.backend.entities.is_empty() {
                Default::default()
            } else {
                entity_members(&self.backend.entities, port, backend_traffic)?
            };
        let health_check = health_check(self.backend.health_check.as_ref(), backend_traffic)?;
        let managed = default_managed(
            self.backend.managed.as_ref(),
            backends.len() + named_backends.len(),
            self.traffic_type,
        )?;
        let policy = self.policy_spec().validate(backend_traffic, port, hasher)?;
        let smtp = crate::model::smtp::for_instance(
            self.traffic_type,
            self.smtp.as_ref(),
            None,
            &policy,
            managed.is_some(),
        )?;
        let spec = InstanceSpec {
            name: self.name,
            traffic_type: self.traffic_type,
            port,
            subnet,
            backends,
            named_backends,
            health_check,
            auto_scaling: self.backend.auto_scaling.unwrap_or(false),
            min_nodes: node_count("min_nodes", self.min_nodes)?,
            max_nodes: match self.max_nodes {
                Some(n) => node_count("max_nodes", Some(n))?,
                // Unset, it is at least min_nodes, so min_nodes alone never errs.
                None => DEFAULT_MAX_NODES.max(node_count("min_nodes", self.min_nodes)?),
            },
            scaling: self
                .scaling
                .unwrap_or_default()
                .resolve(ScalingPolicy::default())?,
            tuning: Tuning {
                algorithm: self.algorithm.unwrap_or_default(),
                hash_on: self.hash_on.unwrap_or_default(),
                timeouts: self
                    .timeouts
                    .unwrap_or_default()
                    .resolve(Timeouts::default())?,
                max_connections: max_connections(self.max_connections, DEFAULT_MAX_CONNECTIONS)?,
                max_header_bytes: max_header_bytes(
                    self.max_header_bytes,
                    DEFAULT_MAX_HEADER_BYTES,
                )?,
                proxy_protocol: self.proxy_protocol.unwrap_or_default(),
                backend_protocol: self.backend_protocol.unwrap_or_default(),
            },
            policy,
            managed,
            sticky: sticky(self.backend.sticky.as_ref(), self.traffic_type)?,
            smtp,
            default_pool_protocol: self.backend.backend_protocol,
            tls: self
                .tls
                .as_ref()
                .map(|t| t.validate(None, crate::model::tls::unix_now()))
                .transpose()?,
        };
        spec.check_combination()?;
        Ok(spec)
    }
}

/// The default pool's `sticky`, validated (`"none"` and absent: none).
fn sticky(
    spec: Option<&crate::model::sticky::StickySpec>,
    traffic: TrafficType,
) -> Result<Option<crate::model::sticky::Sticky>, ValidationError> {
    Ok(spec.map(|s| s.validate(traffic)).transpose()?.flatten())
}

/// The default pool's `managed`, validated; a managed pool lists no entities.
fn default_managed(
    spec: Option<&crate::model::managed::ManagedSpec>,
    entities: usize,
    traffic: TrafficType,
) -> Result<Option<crate::model::managed::Managed>, ValidationError> {
    let Some(spec) = spec else { return Ok(None) };
    if entities > 0 {
        return Err(crate::model::managed::ManagedError::EntitiesGiven.into());
    }
    Ok(Some(spec.validate(traffic)?))
}

/// `info instance` (and the list of a project's instances when `name` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceRef {
    pub project: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Seconds of the monitor log to return: with it, `events` and `samples`
    /// hold everything of the last `history` seconds (newest first, at most
    /// 1000 each) instead of the few most recent.
    #[serde(default)]
    pub history: Option<i64>,
}

/// `delete instance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceDelete {
    pub project: String,
    pub name: String,
}

/// `update instance`: every field but the names is optional; what is given replaces
/// what was stored, and the nodes apply it in place.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstanceUpdate {
    pub project: String,
    pub name: String,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    #[serde(default)]
    pub backend: Option<BackendSpec>,
    #[serde(default)]
    pub min_nodes: Option<i64>,
    #[serde(default)]
    pub max_nodes: Option<i64>,
    /// Given fields replace the stored ones; absent ones stay.
    #[serde(default)]
    pub scaling: Option<ScalingSpec>,
    #[serde(default)]
    pub hash_on: Option<HashOn>,
    /// Given fields replace the stored ones; absent ones stay.
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub max_header_bytes: Option<i64>,
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Replaces the stored one; pools that name their own keep theirs.
    #[serde(default)]
    pub backend_protocol: Option<BackendProtocol>,
    /// Replaces all named pools (`{}`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pools: Option<BTreeMap<String, PoolSpec>>,
    /// Replaces all rules (`[]`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<RuleSpec>>,
    /// Replaces the instance auth; `"none"` removes it. A user or key
    /// given without its secret keeps the stored one of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RuleAuthSpec>,
    /// Replaces all rate limits (`[]`: none left).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    /// smtp only: given fields replace the stored ones; absent ones stay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::SmtpSpec>,
    /// Replaces the stored `tls`; a certificate given as `{"fingerprint"}`
    /// keeps the stored one (and its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::TlsSpec>,
}

impl InstanceUpdate {
    /// Whether the update touches the L7 policy.
    pub fn has_policy(&self) -> bool {
        self.pools.is_some()
            || self.rules.is_some()
            || self.auth.is_some()
            || self.rate_limits.is_some()
    }

    /// The passwords and keys this update carries.
    pub fn secrets(&self) -> Vec<&str> {
        let rules = self.rules.iter().flatten();
        let own = rules.filter_map(|r| r.auth.as_ref().and_then(RuleAuthSpec::own));
        let auth = self.auth.as_ref().and_then(RuleAuthSpec::own);
        auth.into_iter()
            .chain(own)
            .flat_map(AuthSpec::secrets)
            .collect()
    }

    /// The stored policy with the given fields replaced, as a spec.
    fn merged_policy(&self, current: &crate::model::policy::Policy) -> PolicySpec {
        let mut spec = current.to_spec();
        if let Some(p) = &self.pools {
            spec.pools = Some(p.clone());
        }
        if let Some(r) = &self.rules {
            spec.rules = Some(r.clone());
        }
        if let Some(a) = &self.auth {
            spec.auth = a.own().cloned();
        }
        if let Some(l) = &self.rate_limits {
            spec.rate_limits = Some(l.clone());
        }
        spec
    }

    /// The spec after this update, validated as a whole (the policy too:
    /// rules against the pools and the auth they end up with).
    pub fn apply_to(
        &self,
        current: &InstanceSpec,
        hasher: &dyn SecretHasher,
    ) -> Result<InstanceSpec, ValidationError> {
        validate_name(&self.name)?;
        validate_name(&self.project)?;
        let mut next = current.clone();
        let backend_traffic = next.traffic_type.backend_protocol();
        if let Some(p) = self.port {
            next.port = port(p)?;
        }
        if let Some(a) = self.algorithm {
            next.tuning.algorithm = a;
        }
        if let Some(n) = self.min_nodes {
            next.min_nodes = node_count("min_nodes", Some(n))?;
        }
        if let Some(n) = self.max_nodes {
            next.max_nodes = node_count("max_nodes", Some(n))?;
        }
        if let Some(sc) = &self.scaling {
            next.scaling = sc.resolve(next.scaling)?;
        }
        let tuning = &mut next.tuning;
        if let Some(h) = &self.hash_on {
            tuning.hash_on = h.clone();
        }
        if let Some(t) = &self.timeouts {
            tuning.timeouts = t.resolve(tuning.timeouts)?;
        }
        tuning.max_connections = max_connections(self.max_connections, tuning.max_connections)?;
        tuning.max_header_bytes = max_header_bytes(self.max_header_bytes, tuning.max_header_bytes)?;
        if let Some(p) = self.proxy_protocol {
            tuning.proxy_protocol = p;
        }
        if let Some(p) = self.backend_protocol {
            tuning.backend_protocol = p;
        }
        if let Some(backend) = &self.backend {
            // An update that names no entities keeps the current ones.
            if !backend.entities.is_empty() {
                (next.backends, next.named_backends) =
                    entity_members(&backend.entities, next.port, backend_traffic)?;
            }
            if let Some(hc) = &backend.health_check {
                next.health_check = health_check(Some(hc), backend_traffic)?;
            }
            if let Some(a) = backend.auto_scaling {
                next.auto_scaling = a;
            }
            if backend.managed.is_some() {
                // Managed without entities: the pool's members are lbd's now.
                if backend.entities.is_empty() {
                    next.backends.clear();
                    next.named_backends.clear();
                }
                next.managed = default_managed(
                    backend.managed.as_ref(),
                    next.backends.len() + next.named_backends.len(),
                    next.traffic_type,
                )?;
            } else if !backend.entities.is_empty() {
                next.managed = None;
            }
            if backend.sticky.is_some() {
                next.sticky = sticky(backend.sticky.as_ref(), next.traffic_type)?;
            }
            if backend.backend_protocol.is_some() {
                next.default_pool_protocol = backend.backend_protocol;
            }
        }
        // Revalidated even when untouched: pools carry the listener port
        // as their members' default.
        if self.has_policy() || self.port.is_some() {
            next.policy = self.merged_policy(&current.policy).validate_keeping(
                backend_traffic,
                next.port,
                hasher,
                &current.policy,
            )?;
        }
        next.smtp = crate::model::smtp::for_instance(
            next.traffic_type,
            self.smtp.as_ref(),
            current.smtp.as_ref(),
            &next.policy,
            next.managed.is_some(),
        )?;
        if let Some(tls) = &self.tls {
            let now = crate::model::tls::unix_now();
            next.tls = Some(tls.validate(current.tls.as_ref(), now)?);
        }
        next.check_combination()?;
        Ok(next)
    }
}

/// An LB node as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeInfo {
    pub id: crate::model::NodeId,
    pub name: String,
    pub address: String,
    /// `starting`, `running`, `failed` (missed its health checks; replaced,
    /// deleted after the grace period) or `retiring` (out of DNS, draining).
    pub state: crate::model::NodeState,
    #[serde(default)]
    pub pid: Option<u32>,
    pub operating_status: OperatingStatus,
    /// The node's latest stats sample, and when it was taken (Unix seconds).
    #[serde(default)]
    pub stats: Option<crate::model::NodeStats>,
    #[serde(default)]
    pub sampled_at: Option<i64>,
}

/// The resolved `backend` object as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BackendView {
    pub entities: Vec<BackendMember>,
    /// Host-name entities (`HOST:PORT`), which the nodes resolve; each
    /// node's `stats.names` shows what they resolved to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NamedMember>,
    #[serde(rename = "health-check")]
    pub health_check: HealthCheck,
    #[serde(rename = "auto-scaling")]
    pub auto_scaling: bool,
    /// As given, with `process.env` values shown as `"***"` (they may be secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<crate::model::managed::ManagedSpec>,
    /// The default pool's sticky routing, in the shape `create` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::model::sticky::StickySpec>,
    /// The default pool's own protocol, when it names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_protocol: Option<BackendProtocol>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceInfo {
    pub id: crate::model::InstanceId,
    #[serde(rename = "type")]
    pub object_type: String,
    pub name: String,
    pub project: String,
    pub traffic_type: TrafficType,
    pub port: u16,
    pub algorithm: Algorithm,
    /// The subnet the nodes' addresses come from.
    pub subnet: String,
    pub backend: BackendView,
    pub min_nodes: u32,
    pub max_nodes: u32,
    pub scaling: ScalingPolicy,
    /// The node count the autoscaler asks for now (`min_nodes` without auto-scaling).
    pub desired_nodes: u32,
    pub hash_on: HashOn,
    pub timeouts: Timeouts,
    pub max_connections: u32,
    // Absent from servers before it existed.
    #[serde(default = "crate::model::tuning::default_max_header_bytes")]
    pub max_header_bytes: u32,
    pub proxy_protocol: ProxyProtocol,
    /// How members are spoken to, unless a pool names its own (absent
    /// from servers before it existed).
    #[serde(default)]
    pub backend_protocol: BackendProtocol,
    /// The L7 policy in the shapes `create`/`update` take, so it can be sent
    /// again; users and keys by name and groups only (never a secret or a
    /// hash). Absent from servers before it existed.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolSpec>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// smtp instances: the resolved `smtp` object, in the shape `create` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::SmtpSpec>,
    /// `<instance>.<project>.<zone>`, served by lbd's DNS server.
    pub dns_name: String,
    /// TLS termination (`https`): each certificate's facts, never a key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::TlsView>,
    /// `http://<dns_name>:<port>/`, `https://<dns_name>:<port>/`,
    /// `tcp://<dns_name>:<port>` or `smtp://<dns_name>:<port>`.
    pub url: String,
    pub provisioning_status: ProvisioningStatus,
    pub operating_status: OperatingStatus,
    /// Why the instance is in ERROR or not ONLINE, when known.
    #[serde(default)]
    pub status_reason: Option<String>,
    pub nodes: Vec<NodeInfo>,
    /// The most recent events (newest first): node starts, failovers, scaling, errors.
    #[serde(default)]
    pub events: Vec<EventInfo>,
    /// The most recent load samples of the instance's nodes (newest first).
    #[serde(default)]
    pub samples: Vec<SampleInfo>,
    /// Conditions of the host that affect this instance's nodes (e.g. VMs
    /// emulated because KVM does not work); absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<crate::model::Warning>,
    /// The managed backends lbd runs for the instance's managed pools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<crate::model::managed::ManagedBackendInfo>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of the monitor log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventInfo {
    /// Unix seconds.
    pub ts: i64,
    pub kind: crate::model::EventKind,
    pub message: String,
    #[serde(default)]
    pub node_id: Option<crate::model::NodeId>,
}

/// One load sample of one node: raw (one health-check interval) or, once
/// older than the raw retention, a 1-minute average (`resolution` 60).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SampleInfo {
    /// Unix seconds (the start of the minute for averages).
    pub ts: i64,
    /// Seconds a sample covers: 0 for a raw sample, 60 for a 1-minute average.
    pub resolution: u32,
    pub node_id: crate::model::NodeId,
    pub requests_per_s: f64,
    pub active_connections: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    #[serde(default)]
    pub p50_ms: Option<f64>,
    #[serde(default)]
    pub p90_ms: Option<f64>,
    #[serde(default)]
    pub p99_ms: Option<f64>,
    pub members_up: u32,
    pub members_down: u32,
}

// === validation helpers ===

fn port(p: i64) -> Result<u16, ValidationError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ValidationError::InvalidPort(p))
}

fn node_count(field: &str, n: Option<i64>) -> Result<u32, ValidationError> {
    let n = n.unwrap_or(1);
    if (1..=i64::from(MAX_NODES)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(ValidationError::InvalidScaling(format!(
            "{field} must be 1 to {MAX_NODES}, got {n}"
        )))
    }
}

/// The members of a pool that takes addresses only (a federation provider).
pub(crate) fn members(
    entities: &[BackendEntity],
    default_port: u16,
    traffic: TrafficType,
) -> Result<Vec<BackendMember>, ValidationError> {
    let (members, named) = entity_members(entities, default_port, traffic)?;
    if let Some(n) = named.first() {
        return Err(ValidationError::InvalidBackend {
            entity: n.address.to_string(),
            reason: "a federation provider lists IP addresses, not host names".into(),
        });
    }
    Ok(members)
}

/// The address members and the host-name members (resolved by the nodes)
/// of a pool's `entities`.
pub(crate) fn entity_members(
    entities: &[BackendEntity],
    default_port: u16,
    traffic: TrafficType,
) -> Result<(Vec<BackendMember>, Vec<NamedMember>), ValidationError> {
    if entities.is_empty() {
        return Err(ValidationError::InvalidBackend {
            entity: String::new(),
            reason: "at least one backend entity is required".into(),
        });
    }
    if entities.len() > MAX_BACKENDS {
        return Err(ValidationError::InvalidBackend {
            entity: format!("{} entities", entities.len()),
            reason: format!("at most {MAX_BACKENDS} backends"),
        });
    }
    let mut out: Vec<BackendMember> = Vec::with_capacity(entities.len());
    let mut named: Vec<NamedMember> = Vec::new();
    for entity in entities {
        let (address, weight) = match entity {
            BackendEntity::Text(s) => (s, 1),
            BackendEntity::Object { address, weight } => (address, weight.unwrap_or(1)),
        };
        if !(0..=256).contains(&weight) {
            return Err(ValidationError::InvalidBackend {
                entity: address.clone(),
                reason: format!("weight must be 0 to 256, got {weight}"),
            });
        }
        let weight = weight as u32;
        let twice = |entity: String| ValidationError::InvalidBackend {
            entity,
            reason: "listed twice".into(),
        };
        match backend_address(address, default_port, traffic)? {
            Target::Ip(address) => {
                if out.iter().any(|m| m.address == address) {
                    return Err(twice(address.to_string()));
                }
                out.push(BackendMember { address, weight });
            }
            Target::Name(address) => {
                if named.iter().any(|m| m.address == address) {
                    return Err(twice(address.to_string()));
                }
                named.push(NamedMember { address, weight });
            }
        }
    }
    Ok((out, named))
}

/// What an entity's text names: an address, or a host name to resolve.
enum Target {
    Ip(SocketAddr),
    Name(HostPort),
}

/// Parses `IP`, `IP:PORT`, `[V6]:PORT`, `HOST[:PORT]` or, for HTTP,
/// `http://IP-OR-HOST[:PORT][/]`.
fn backend_address(
    s: &str,
    default_port: u16,
    traffic: TrafficType,
) -> Result<Target, ValidationError> {
    let fail = |reason: &str| ValidationError::InvalidBackend {
        entity: s.to_string(),
        reason: reason.to_string(),
    };
    let mut rest = s.trim();
    let mut url_port = None;
    if let Some(r) = rest.strip_prefix("http://") {
        if !traffic.is_http() {
            return Err(fail("an http:// URL needs traffic_type http"));
        }
        rest = r.strip_suffix('/').unwrap_or(r);
        if rest.contains('/') {
            return Err(fail("a backend URL may not have a path"));
        }
        url_port = Some(80);
    } else if rest.contains("://") {
        return Err(fail("only http:// URLs are supported"));
    }
    let addr = if let Ok(sa) = rest.parse::<SocketAddr>() {
        sa
    } else if let Ok(ip) = rest.parse::<IpAddr>() {
        SocketAddr::new(ip, url_port.unwrap_or(default_port))
    } else if let Some(ip) = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
    {
        SocketAddr::new(ip, url_port.unwrap_or(default_port))
    } else {
        return host_target(rest, url_port.unwrap_or(default_port)).map_err(fail);
    };
    if addr.port() == 0 {
        return Err(fail("port 0 is not a valid backend port"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(fail("not a unicast address"));
    }
    Ok(Target::Ip(addr))
}

/// `HOST` (on `default_port`) or `HOST:PORT`, a name the nodes resolve.
fn host_target(rest: &str, default_port: u16) -> Result<Target, &'static str> {
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| "the port must be 1-65535")?,
        ),
        None => (rest, default_port),
    };
    HostPort::new(host, port).map(Target::Name)
}

pub(crate) fn health_check(
    spec: Option<&HealthCheckSpec>,
    traffic: TrafficType,
) -> Result<HealthCheck, ValidationError> {
    let default = HealthCheckSpec::default();
    let spec = spec.unwrap_or(&default);
    let protocol = spec.protocol.unwrap_or(match traffic.backend_protocol() {
        TrafficType::Tcp => HealthProtocol::Tcp,
        _ => HealthProtocol::Http,
    });
    // Without an explicit port, each member is checked on its own port; 0 records that.
    let port = match spec.port {
        None => 0,
        Some(p) => port(p)
            .map_err(|_| ValidationError::InvalidHealthCheck(format!("port {p} is not 1-65535")))?,
    };
    let request_path = spec.request_path.clone().unwrap_or_else(|| "/".to_string());
    if !request_path.starts_with('/')
        || request_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ValidationError::InvalidHealthCheck(format!(
            "request-path {request_path:?} must start with '/' and contain no spaces"
        )));
    }
    let expected_codes = match &spec.expected_codes {
        Some(s) => s.parse()?,
        None => ExpectedCodes::default(),
    };
    let c = spec.criteria.clone().unwrap_or_default();
    let bounded =
        |name: &str, v: Option<i64>, default: u32, max: u32| -> Result<u32, ValidationError> {
            let v = v.unwrap_or(i64::from(default));
            if v < 1 || v > i64::from(max) {
                return Err(ValidationError::InvalidHealthCheck(format!(
                    "{name} must be 1 to {max}, got {v}"
                )));
            }
            Ok(v as u32)
        };
    let interval = bounded("interval", c.interval, 5, 3600)?;
    let timeout = bounded("timeout", c.timeout, interval.min(5), 3600)?;
    if timeout > interval {
        return Err(ValidationError::InvalidHealthCheck(format!(
            "timeout ({timeout}) must not exceed interval ({interval})"
        )));
    }
    Ok(HealthCheck {
        protocol,
        port,
        request_path,
        expected_codes,
        criteria: HealthCriteria {
            interval,
            timeout,
            health_threshold: bounded("health-threshold", c.health_threshold, 2, 100)?,
            unhealth_threshold: bounded("unhealth-threshold", c.unhealth_threshold, 2, 100)?,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Tagged;
    impl SecretHasher for Tagged {
        fn hash(&self, s: &str) -> String {
            format!("hash-of-{}", s.len())
        }
    }

    fn create(v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
        serde_json::from_value::<InstanceCreate>(v)
            .map_err(|e| ValidationError::from_serde(&e))?
            .validate(&Tagged)
    }

    fn update(spec: &InstanceSpec, v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
        let mut v = v;
        v["project"] = json!("demo");
        v["name"] = json!("web");
        serde_json::from_value::<InstanceUpdate>(v)
            .unwrap()
            .apply_to(spec, &Tagged)
    }

    fn base() -> serde_json::Value {
        json!({"name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
               "backend": {"entities": ["127.0.0.1:9001"]}})
    }

    #[test]
    fn seed_shape_is_accepted() {
        let spec = create(json!({
            "type": "instance", "name": "web", "project": "demo", "traffic_type": "http",
            "subnet": "127.1.0.0/24",
            "backend": {
                "entities": ["127.0.0.1:9001", "127.0.0.2", "http://127.0.0.3:81/", {"address": "127.0.0.4:82", "weight": 3}],
                "health-check": {"protocol": "HTTP", "port": 80, "request-path": "/",
                    "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
                "auto-scaling": true
            }
        }))
        .unwrap();
        assert_eq!(spec.port, 80);
        let addrs: Vec<String> = spec
            .backends
            .iter()
            .map(|m| m.address.to_string())
            .collect();
        assert_eq!(
            addrs,
            [
                "127.0.0.1:9001",
                "127.0.0.2:80",
                "127.0.0.3:81",
                "127.0.0.4:82"
            ]
        );
        assert_eq!(spec.backends[3].weight, 3);
        assert!(spec.auto_scaling);
        assert_eq!(spec.subnet.unwrap().to_string(), "127.1.0.0/24");
    }

    #[test]
    fn host_names_and_the_seed_lists_are_entities() {
        let spec = create(json!({
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"entities": [["10.0.0.1:80"], ["http://app:8000"], "App.Internal:8000",
                "localhost", {"address": "db.internal:5432", "weight": 3}, "http://10.0.0.2/"]}
        }))
        .unwrap();
        let addrs: Vec<String> = spec
            .backends
            .iter()
            .map(|m| m.address.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
        let names: Vec<(String, u32)> = spec
            .named_backends
            .iter()
            .map(|m| (m.address.to_string(), m.weight))
            .collect();
        assert_eq!(
            names,
            [
                ("app:8000".to_string(), 1),
                ("app.internal:8000".to_string(), 1),
                ("localhost:8080".to_string(), 1),
                ("db.internal:5432".to_string(), 3)
            ]
        );
        let node = spec.node_config(1, "127.0.0.1".parse().unwrap());
        assert_eq!(node.named_backends, spec.named_backends);
        // A stored spec without names reads as before, and one with them round-trips.
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            serde_json::from_value::<InstanceSpec>(stored).unwrap(),
            spec
        );
        let plain = serde_json::to_value(create(base()).unwrap()).unwrap();
        assert!(plain.get("named_backends").is_none(), "{plain}");
        // An update with entities replaces both kinds.
        let next = update(&spec, json!({"backend": {"entities": ["10.0.0.9:80"]}})).unwrap();
        assert!(next.named_backends.is_empty());
        let err = create(json!({
            "name": "web", "project": "demo", "traffic_type": "tcp", "port": 8080,
            "backend": {"entities": ["http://app:8000"]}
        }))
        .unwrap_err();
        assert_eq!(err.code(), "invalid_backend");
    }

    #[test]
    fn health_check_defaults() {
        let hc = create(base()).unwrap().health_check;
        assert_eq!(hc.protocol, HealthProtocol::Http);
        assert_eq!((hc.criteria.interval, hc.criteria.timeout), (5, 5));
        assert_eq!(
            (hc.criteria.health_threshold, hc.criteria.unhealth_threshold),
            (2, 2)
        );
    }

    #[test]
    fn refuses_bad_fields() {
        let cases = [
            (json!({"port": 0}), "invalid_port"),
            (json!({"port": 65536}), "invalid_port"),
            (json!({"port": "80"}), "invalid_field"),
            (json!({"name": "Web"}), "invalid_name"),
            (json!({"traffic_type": "udp"}), "invalid_field"),
            (json!({"subnet": "10.0.0.0/33"}), "invalid_subnet"),
            (json!({"backend": {"entities": []}}), "invalid_backend"),
            (
                json!({"backend": {"entities": ["example..com:80"]}}),
                "invalid_backend",
            ),
            (
                json!({"backend": {"entities": ["app:80", "APP:80"]}}),
                "invalid_backend",
            ),
            (json!({"backend": {"entities": [7]}}), "invalid_field"),
            (
                json!({"backend": {"entities": ["127.0.0.1:99999"]}}),
                "invalid_backend",
            ),
            (
                json!({"backend": {"entities": ["127.0.0.1:80", "127.0.0.1:80"]}}),
                "invalid_backend",
            ),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "healthcheck": {}}}),
                "unknown_field",
            ),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"criteria": {"interval": 1, "timeout": 2}}}}),
                "invalid_health_check",
            ),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"request-path": "x"}}}),
                "invalid_health_check",
            ),
            (json!({"min_nodes": 0}), "invalid_auto_scaling"),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": "399-200"}}}),
                "invalid_health_check",
            ),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": "200,abc"}}}),
                "invalid_health_check",
            ),
            (
                json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": 200}}}),
                "invalid_field",
            ),
            (json!({"proxy_protocol": "v2"}), "invalid_field"),
            (json!({"hash_on": "header:x-user"}), "invalid_field"),
            (
                json!({"algorithm": "consistent_hash", "hash_on": "cookie"}),
                "invalid_field",
            ),
            (json!({"algorithm": "fastest"}), "invalid_field"),
            (json!({"timeouts": {"connect_ms": 0}}), "invalid_field"),
            (json!({"timeouts": {"connect": 5}}), "unknown_field"),
            (json!({"max_connections": 0}), "invalid_field"),
            (json!({"max_header_bytes": 100}), "invalid_field"),
            (json!({"max_header_bytes": 2_000_000}), "invalid_field"),
            (json!({"colour": "red"}), "unknown_field"),
        ];
        for (patch, code) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert_eq!(create(v.clone()).unwrap_err().code(), code, "{v}");
        }
    }

    #[test]
    fn expected_codes_are_parsed_once_and_kept_as_written() {
        let mut v = base();
        v["backend"]["health-check"] = json!({"expected-codes": "200, 301-302"});
        let spec = create(v).unwrap();
        let codes = &spec.health_check.expected_codes;
        assert!(codes.contains(200) && codes.contains(302) && !codes.contains(204));
        // Stored and pushed to nodes as the same string, and read back to the same value.
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["health_check"]["expected-codes"], "200, 301-302");
        let back: InstanceSpec = serde_json::from_value(stored).unwrap();
        assert_eq!(back, spec);
        let node = serde_json::to_value(spec.node_config(1, "127.0.0.1".parse().unwrap())).unwrap();
        assert_eq!(node["health_check"]["expected-codes"], "200, 301-302");
        // Absent, it is the default range.
        assert_eq!(
            create(base()).unwrap().health_check.expected_codes.as_str(),
            "200-399"
        );
    }

    #[test]
    fn a_stored_spec_keeps_its_shape_and_old_ones_still_read() {
        let mut v = base();
        v["algorithm"] = json!("consistent_hash");
        v["hash_on"] = json!("header:x-user");
        v["max_connections"] = json!(77);
        let spec = create(v).unwrap();
        let stored = serde_json::to_value(&spec).unwrap();
        assert_eq!(stored["algorithm"], "consistent_hash");
        assert_eq!(stored["hash_on"], "header:x-user");
        assert_eq!(stored["max_connections"], 77);
        assert!(stored.get("tuning").is_none(), "{stored}");
        assert_eq!(
            serde_json::from_value::<InstanceSpec>(stored).unwrap(),
            spec
        );
        // A spec stored by the first release: none of the later fields.
        let old = json!({
            "name": "web", "traffic_type": "http", "port": 80, "algorithm": "round_robin",
            "subnet": null, "backends": [{"address": "127.0.0.1:9001", "weight": 1}],
            "health_check": {"protocol": "HTTP", "port": 0, "request-path": "/",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
            "auto_scaling": false, "min_nodes": 1
        });
        let old: InstanceSpec = serde_json::from_value(old).unwrap();
        assert_eq!(old.tuning.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(old.tuning.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(old.tuning.hash_on, HashOn::ClientIp);
        assert_eq!(old.max_nodes, DEFAULT_MAX_NODES);
        assert_eq!(old.health_check.expected_codes.as_str(), "200-399");
    }

    #[test]
    fn a_node_config_carries_the_tuning_as_is() {
        let mut v = base();
        v["traffic_type"] = json!("tcp");
        v["proxy_protocol"] = json!("v2");
        v["timeouts"] = json!({"connect_ms": 250});
        let spec = create(v).unwrap();
        let c = spec.node_config(9, "127.0.0.5".parse().unwrap());
        assert_eq!(c.tuning, spec.tuning);
        assert_eq!(c.tuning.proxy_protocol, ProxyProtocol::V2);
        assert_eq!(c.tuning.timeouts.connect_ms, 250);
        assert_eq!(
            (c.version, c.listen.to_string()),
            (9, "127.0.0.5:8080".into())
        );
    }

    #[test]
    fn tcp_needs_a_port() {
        let mut v = base();
        v["traffic_type"] = json!("tcp");
        v.as_object_mut().unwrap().remove("port");
        assert_eq!(create(v).unwrap_err().code(), "missing_field");
    }

    #[test]
    fn update_replaces_only_given_fields() {
        let spec = create(base()).unwrap();
        let upd: InstanceUpdate = serde_json::from_value(json!({
            "project": "demo", "name": "web", "backend": {"entities": ["127.0.0.1:9002", "127.0.0.1:9003"]}
        }))
        .unwrap();
        let next = upd.apply_to(&spec, &Tagged).unwrap();
        assert_eq!(next.backends.len(), 2);
        assert_eq!(next.port, 8080);
        assert_eq!(next.health_check, spec.health_check);
        let bad: InstanceUpdate =
            serde_json::from_value(json!({"project": "demo", "name": "web", "port": 70000}))
                .unwrap();
        assert_eq!(
            bad.apply_to(&spec, &Tagged).unwrap_err().code(),
            "invalid_port"
        );
    }

    fn with_policy() -> InstanceSpec {
        let mut v = base();
        v["pools"] = json!({"api": {"entities": ["127.0.0.1:9101"]}});
        v["rules"] = json!([
            {"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}},
            {"name": "ops", "require_groups": ["ops"], "match": {"path_prefix": "/ops/"},
             "action": {"pool": "default"}}
        ]);
        v["auth"] = json!({"mode": "basic", "users": [{"name": "ann", "password": "pw-123456", "groups": ["ops"]}]});
        v["rate_limits"] =
            json!([{"name": "ip", "key": "client_ip", "period": 10, "threshold": 5}]);
        create(v).unwrap()
    }

    #[test]
    fn create_validates_the_policy_with_its_own_codes() {
        let spec = with_policy();
        assert_eq!(spec.policy.pools.len(), 1);
        assert_eq!(spec.policy.rules.len(), 2);
        let cases = [
            (
                json!({"rules": [{"name": "a", "action": {"pool": "nope"}}]}),
                "unknown_pool",
            ),
            (json!({"rules": [{"name": "a"}]}), "missing_rule_action"),
            (
                json!({"rate_limits": [{"name": "a", "key": "client_ip", "period": 0, "threshold": 1}]}),
                "invalid_rate_limit_period",
            ),
            (
                json!({"auth": {"mode": "service", "url": "ftp://x/"}}),
                "invalid_auth_url",
            ),
        ];
        for (patch, code) in cases {
            let mut v = base();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            assert_eq!(create(v.clone()).unwrap_err().code(), code, "{v}");
        }
        let mut tcp = base();
        tcp["traffic_type"] = json!("tcp");
        tcp["rules"] = json!([]);
        assert_eq!(create(tcp).unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn an_update_replaces_given_policy_fields_and_checks_the_result() {
        let spec = with_policy();
        // Absent fields stay; a given one replaces.
        let next = update(&spec, json!({"rate_limits": []})).unwrap();
        assert!(next.policy.rate_limits.is_empty());
        assert_eq!(next.policy.rules, spec.policy.rules);
        assert_eq!(next.policy.auth, spec.policy.auth);
        // A rule left naming a removed pool.
        let e = update(&spec, json!({"pools": {}})).unwrap_err();
        assert_eq!(e.code(), "unknown_pool");
        // require_groups left without auth.
        let e = update(&spec, json!({"auth": "none"})).unwrap_err();
        assert_eq!(e.code(), "invalid_rule");
        let next = update(&spec, json!({"auth": "none", "rules": []})).unwrap();
        assert!(next.policy.auth.is_none() && next.policy.rules.is_empty());
        // A tcp instance takes no policy field.
        let mut tcp = base();
        tcp["traffic_type"] = json!("tcp");
        let tcp = create(tcp).unwrap();
        assert_eq!(
            update(&tcp, json!({"rules": []})).unwrap_err().code(),
            "invalid_field"
        );
    }

    #[test]
    fn an_smtp_instance_always_has_its_smtp_object_and_http_backends() {
        let mut v = base();
        v["traffic_type"] = json!("smtp");
        v.as_object_mut().unwrap().remove("port");
        v["backend"]["entities"] = json!(["http://127.0.0.1:9001/"]);
        let spec = create(v.clone()).unwrap();
        assert_eq!(spec.port, 25);
        assert_eq!(spec.smtp, Some(crate::model::smtp::Smtp::default()));
        assert_eq!(spec.health_check.protocol, HealthProtocol::Http);
        let node = spec.node_config(1, "127.0.0.5".parse().unwrap());
        assert_eq!(node.smtp, spec.smtp);
        // An update names some fields; the others stay.
        let next = update(&spec, json!({"smtp": {"max_recipients": 3}})).unwrap();
        let smtp = next.smtp.unwrap();
        assert_eq!((smtp.max_recipients, smtp.idle_timeout), (3, 300));
        // Not on another type, and not with what smtp does not take.
        assert_eq!(
            update(&create(base()).unwrap(), json!({"smtp": {}}))
                .unwrap_err()
                .code(),
            "smtp_not_allowed"
        );
        let mut pools = v.clone();
        pools["pools"] = json!({"api": {"entities": ["127.0.0.1:9101"]}});
        assert_eq!(create(pools).unwrap_err().code(), "invalid_field");
        let mut sticky = v;
        sticky["backend"]["sticky"] = json!({"cookie": "c"});
        assert_eq!(create(sticky).unwrap_err().code(), "invalid_sticky");
    }

    #[test]
    fn an_update_keeps_credentials_by_name_without_their_secrets() {
        let spec = with_policy();
        let stored_hash = |s: &InstanceSpec| match &s.policy.auth {
            Some(crate::model::policy::Auth::Basic { users, .. }) => {
                (users[0].hash.clone(), users[0].groups.clone())
            }
            other => panic!("{other:?}"),
        };
        let next = update(
            &spec,
            json!({"auth": {"mode": "basic", "users": [{"name": "ann", "groups": ["ops", "dev"]}]}}),
        )
        .unwrap();
        assert_eq!(stored_hash(&next).0, stored_hash(&spec).0);
        assert_eq!(stored_hash(&next).1, ["ops", "dev"]);
        let e = update(
            &spec,
            json!({"auth": {"mode": "basic", "users": [{"name": "bob"}]}}),
        )
        .unwrap_err();
        assert_eq!(e.code(), "invalid_auth");
        // What info shows, sent back as is, changes nothing.
        let shown = spec.policy.to_spec();
        let v = json!({"pools": shown.pools, "rules": shown.rules, "auth": shown.auth,
                       "rate_limits": shown.rate_limits});
        assert_eq!(update(&spec, v).unwrap(), spec);
    }
}
