//! Instances (load balancers), in the seed's shape: `traffic_type`, `subnet`,
//! `backend.entities`, `backend.health-check`, `backend.auto-scaling`, plus our
//! additions (`port`, `algorithm`, `min_nodes`), never renames.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::backend_tls::{BackendTls, BackendTlsError, BackendTlsSpec};
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

mod backend;
mod federation;
#[cfg(test)]
mod tests;
mod update;
mod views;

pub use backend::*;
pub use federation::{federation_spec, FederationUpdate, NoFederation};
pub use update::*;
pub use views::*;

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
    /// The default pool's members spoken to over TLS. On update: replaces
    /// the stored one; absent keeps it; `"none"` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<BackendTlsSpec>,
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
    /// Nodes kept booted, configured and out of DNS beside the serving ones
    /// (default 0): a failover or scale-out promotes one at once.
    #[serde(default)]
    pub standby_nodes: Option<i64>,
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
    /// Federation routing (issue 18): one endpoint in front of several
    /// providers, each a pool. http and https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::model::federation::FederationSpec>,
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
    /// Booted nodes out of DNS, beside the serving ones (0 in specs before it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub standby_nodes: u32,
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
    /// `backend.backend_tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool_tls: Option<BackendTls>,
    /// TLS termination (`https`): certificates without their keys (lbd
    /// keeps those in files of their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::Tls>,
    /// Federation routing (absent from specs before it, and without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::model::federation::Federation>,
}

fn default_max_nodes() -> u32 {
    DEFAULT_MAX_NODES
}

fn is_zero(n: &u32) -> bool {
    *n == 0
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
    /// `max_nodes` with autoscaling, else `min_nodes`; and its standbys.
    pub fn quota_nodes(&self) -> u32 {
        let serving = if self.auto_scaling {
            self.max_nodes.max(self.min_nodes)
        } else {
            self.min_nodes
        };
        serving + self.standby_nodes
    }

    /// What a node at `address` runs for this spec, as config `version`.
    pub fn node_config(&self, version: u64, address: IpAddr) -> crate::model::NodeConfig {
        // Each pool's protocol resolved here, so a node reads it off its
        // pool: `tuning.backend_protocol` becomes the default pool's.
        let instance_protocol = self.tuning.backend_protocol;
        let mut policy = self.policy.for_node();
        // Providers are pools on the node: health-checked and balanced like
        // any named pool (their names never collide with the pools').
        for (name, provider) in self.federation.iter().flat_map(|f| &f.providers) {
            policy.pools.insert(name.clone(), provider.pool.clone());
        }
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
            backend_tls: self.default_pool_tls.clone(),
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
            // lbd fills the mappings in (issue 18): they are in its store.
            federation: self.federation.clone().map(|federation| {
                crate::model::federation::NodeFederation {
                    federation,
                    mappings: Default::default(),
                }
            }),
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

    /// `backend_tls` wants HTTP members (not tcp) and HTTP/1.1 (not h2c),
    /// for each pool with its protocol resolved.
    fn check_backend_tls(&self) -> Result<(), BackendTlsError> {
        let instance = self.tuning.backend_protocol;
        let default = (
            "backend.backend_tls".to_string(),
            self.default_pool_tls.is_some(),
            upstream::resolve(self.default_pool_protocol, instance),
        );
        let pools = self.policy.pools.iter().map(|(name, p)| {
            (
                format!("pools.{name}.backend_tls"),
                p.backend_tls.is_some(),
                upstream::resolve(p.backend_protocol, instance),
            )
        });
        for (at, tls, protocol) in std::iter::once(default).chain(pools) {
            if !tls {
                continue;
            }
            if self.traffic_type == TrafficType::Tcp {
                return Err(BackendTlsError::NotForTcp { at });
            }
            if protocol == BackendProtocol::H2c {
                return Err(BackendTlsError::WithH2c { at });
            }
        }
        Ok(())
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
        self.check_backend_tls()?;
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
        let federation = self
            .federation
            .as_ref()
            .map(|f| federation::validate_federation(f, self.traffic_type, port, &policy))
            .transpose()?;
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
            standby_nodes: standby_count(self.standby_nodes.unwrap_or(0))?,
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
            default_pool_tls: self
                .backend
                .backend_tls
                .as_ref()
                .map(|t| t.validate("backend.backend_tls"))
                .transpose()?
                .flatten(),
            tls: self
                .tls
                .as_ref()
                .map(|t| t.validate(None, crate::model::tls::unix_now()))
                .transpose()?,
            federation,
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

// === validation helpers ===

fn port(p: i64) -> Result<u16, ValidationError> {
    u16::try_from(p)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ValidationError::InvalidPort(p))
}

/// `standby_nodes`: 0 (none) to `MAX_NODES`.
pub(super) fn standby_count(n: i64) -> Result<u32, ValidationError> {
    if (0..=i64::from(MAX_NODES)).contains(&n) {
        Ok(n as u32)
    } else {
        Err(ValidationError::InvalidScaling(format!(
            "standby_nodes must be 0 to {MAX_NODES}, got {n}"
        )))
    }
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
