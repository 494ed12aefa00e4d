//! The contract between the controller and an LB node's admin API:
//! `PUT /config` takes a [`NodeConfig`], `GET /status` returns a [`NodeStatus`].
//! Both need `Authorization: Bearer <node secret>`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::instance::HealthCheck;
use crate::model::{BackendMember, TrafficType, Tuning};

/// Everything a node needs to serve an instance. Applying it is idempotent;
/// a node reports the `version` it runs so the controller knows when to push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub version: u64,
    pub traffic_type: TrafficType,
    /// Where the node's listener binds (the node address and the instance port).
    #[schemars(with = "String")]
    pub listen: SocketAddr,
    /// Flattened (top-level fields) and where `algorithm` always was, so the
    /// wire format and the schema are those of before.
    #[serde(flatten)]
    pub tuning: Tuning,
    pub backends: Vec<BackendMember>,
    /// Host names of the default pool: the node resolves each and adds
    /// every A/AAAA answer to `backends`, again at the record's TTL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_backends: Vec<crate::model::NamedMember>,
    /// The DNS server (`IP:PORT`, lbd's `--resolver`) that resolves
    /// `named_backends`; absent: the system's (`/etc/resolv.conf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub resolver: Option<SocketAddr>,
    /// What the node refuses among the addresses `named_backends` resolve
    /// to (lbd's own listeners, the admin port), as lbd does for IPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_guard: Option<crate::model::NameGuard>,
    pub health_check: HealthCheck,
    /// Pools, rules, auth and rate limits (http only); absent: none.
    #[serde(
        default,
        skip_serializing_if = "crate::model::policy::Policy::is_empty"
    )]
    pub policy: crate::model::policy::Policy,
    /// How many nodes serve the instance now: a `node`-scope rate limit
    /// allows `threshold / serving_nodes` on each (pushed when it changes).
    #[serde(default = "one")]
    pub serving_nodes: u32,
    /// Where `global`-scope rate limits keep their counters (lbd's `--redis-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTarget>,
    /// The managed pools, by pool name (`default`: the `backend`). Their
    /// members are not in `backends` or the policy's pools: lbd pushes
    /// them with `PUT /managed` as backends become ready.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub managed: BTreeMap<String, crate::model::managed::NodeManagedPool>,
    /// The default pool's sticky routing (named pools carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::model::sticky::Sticky>,
    /// The instance's cookie signing key, present when a pool has a sticky
    /// cookie. A secret: a NodeConfig is never logged or shown as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_key: Option<crate::model::sticky::StickyKey>,
    /// The SMTP conversation of an smtp instance (delivery path, limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp: Option<crate::model::smtp::Smtp>,
    /// The default pool's members spoken to over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<crate::model::backend_tls::BackendTls>,
    /// TLS termination (`https`): certificates with their keys. A secret,
    /// like `sticky_key`: sent only over the node's authenticated admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::model::tls::NodeTls>,
    /// Federation routing (issue 18) with every mapping lbd knows as of
    /// the push; later mappings come with `PUT /mappings`. Holds remote
    /// tokens: a secret, like `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::model::federation::NodeFederation>,
}

impl NodeConfig {
    /// Every host-name member the node resolves: the default pool's
    /// (`named_backends`) and the named pools' (`named_members`).
    pub fn host_names(&self) -> impl Iterator<Item = &crate::model::NamedMember> {
        let pools = self.policy.pools.values();
        self.named_backends
            .iter()
            .chain(pools.flat_map(|p| p.named_members.iter()))
    }
}

fn one() -> u32 {
    1
}

/// The Redis that `global` rate limits count in, and how long a node waits
/// for it before it falls back to its `node` share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisTarget {
    /// `redis://host:port[/db]`.
    pub url: String,
    pub timeout_ms: u32,
    /// Namespaces the counters (lbd sends the instance id), so instances
    /// with limits of the same name never share them.
    #[serde(default)]
    pub key_prefix: String,
}

/// A node's answer to `GET /status` (and to a successful `PUT /config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeStatus {
    pub node_id: String,
    /// The version of the config in force; `None` before the first push.
    pub config_version: Option<u64>,
    /// The address the listener is bound to, once it is.
    #[schemars(with = "Option<String>")]
    pub listening: Option<SocketAddr>,
    /// The last configuration error, if the last push failed.
    pub error: Option<String>,
    pub stats: NodeStats,
    /// The version of the last `PUT /managed` applied; `None` before any.
    #[serde(default)]
    pub managed_version: Option<u64>,
    /// The version of the federation mappings in force (from the config or
    /// the last `PUT /mappings`); `None` without federation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mappings_version: Option<u64>,
}

/// Counters since the node started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeStats {
    /// HTTP requests answered (any status), or TCP connections proxied.
    pub requests_total: u64,
    pub active_connections: u64,
    pub connections_total: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests or connections that no backend could take (answered 502/503/504 for HTTP).
    pub backend_errors: u64,
    /// Connections refused because the node was at `max_connections`.
    #[serde(default)]
    pub refused_connections: u64,
    /// HTTP responses by status class.
    #[serde(default)]
    pub responses: StatusClasses,
    /// Request latency (to the end of the response head) over the last minute.
    #[serde(default)]
    pub latency_ms: Percentiles,
    /// True when every member is down and traffic goes to all of them anyway.
    #[serde(default)]
    pub fail_open: bool,
    pub members: Vec<MemberStats>,
    /// What the L7 policy stages decided (absent from older nodes).
    #[serde(default)]
    pub policy: PolicyStats,
    /// Managed pools: the wake queue and cold starts, per pool (and resource).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed: Vec<crate::model::wake::ManagedPoolStats>,
    /// Host-name backends: what each resolved to, or why it did not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameStatus>,
}

/// One host-name backend as the node resolved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NameStatus {
    /// `HOST:PORT`, as in `backend.names`.
    pub name: String,
    /// `up`: it resolved, its members are in `members`; `down`: it did not
    /// (yet), and it has no members.
    pub state: MemberState,
    /// The members it resolved to (each an entry of `members`).
    #[schemars(with = "Vec<String>")]
    pub addresses: Vec<SocketAddr>,
    /// Why the last resolution failed: the name has no addresses (NXDOMAIN,
    /// no A/AAAA records; it then has no members), or the DNS server failed
    /// (it then keeps the members of its last answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds until the next resolution (the answer's TTL, 1 to 300).
    pub next_resolve_s: u32,
}

/// Outcomes of the auth and rate limit stages, since the node started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PolicyStats {
    /// Requests the auth stage let through (a fresh or joined call).
    pub auth_allowed: u64,
    /// Requests refused: 401/403 from the service, bad credentials, missing groups.
    pub auth_denied: u64,
    /// Auth service failures (unreachable, timeout, 5xx, unreadable answer).
    pub auth_error: u64,
    /// Requests decided from the decision cache.
    pub auth_cached: u64,
    /// Requests let through on a stale decision while the service failed.
    pub auth_stale: u64,
    /// Requests let through by `failure: allow` while the service failed.
    pub auth_failure_allowed: u64,
    /// Requests answered 429.
    pub rate_limited: u64,
    /// Checks that fell back to the node share because Redis failed.
    pub rate_limit_store_down: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusClasses {
    #[serde(rename = "1xx")]
    pub c1xx: u64,
    #[serde(rename = "2xx")]
    pub c2xx: u64,
    #[serde(rename = "3xx")]
    pub c3xx: u64,
    #[serde(rename = "4xx")]
    pub c4xx: u64,
    #[serde(rename = "5xx")]
    pub c5xx: u64,
}

/// Latency percentiles in milliseconds; `count` samples over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MemberStats {
    #[schemars(with = "String")]
    pub address: SocketAddr,
    pub state: MemberState,
    #[serde(default)]
    pub weight: u32,
    pub requests: u64,
    pub failures: u64,
    pub active: u64,
    /// Times passive health ejected this member.
    #[serde(default)]
    pub ejections: u64,
    /// The named pool of the policy the member belongs to; absent: the
    /// default pool (the instance's `backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Client connections, streams, WebSockets and TCP tunnels open to
    /// this member now (a long download counts until its last byte).
    #[serde(default)]
    pub open_connections: u64,
    /// Milliseconds since the member last had a request in flight or an
    /// open connection (0 while it has); `None`: never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// The resource of a `per_resource` managed pool the member serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// Whether a member takes new requests, and if not, why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Takes new requests.
    Up,
    /// Failed its active health checks.
    Down,
    /// Passive health: recent errors.
    Ejected,
    /// Weight 0: no new requests.
    Draining,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Ejected => "ejected",
            Self::Draining => "draining",
        }
    }

    /// Down or ejected: unavailable against its configuration (draining is on purpose).
    pub fn is_failing(self) -> bool {
        matches!(self, Self::Down | Self::Ejected)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config_json() -> serde_json::Value {
        json!({
            "version": 1, "traffic_type": "http", "listen": "127.0.0.1:8080",
            "algorithm": "round_robin",
            "backends": [{"address": "127.0.0.1:9001", "weight": 1}],
            "health_check": {"protocol": "HTTP", "port": 0, "request-path": "/",
                "expected-codes": "200,204",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}}
        })
    }

    #[test]
    fn tuning_is_flat_and_unknown_fields_are_still_refused() {
        let c: NodeConfig = serde_json::from_value(config_json()).unwrap();
        assert_eq!(
            c.tuning.max_connections, 10_000,
            "defaults apply inside the flatten"
        );
        let v = serde_json::to_value(&c).unwrap();
        for key in [
            "algorithm",
            "hash_on",
            "timeouts",
            "max_connections",
            "proxy_protocol",
        ] {
            assert!(v.get(key).is_some(), "{key} is top-level: {v}");
        }
        assert!(v.get("tuning").is_none());
        assert_eq!(serde_json::from_value::<NodeConfig>(v).unwrap(), c);
        for (key, value) in [
            ("colour", json!("red")),
            ("tuning", json!({})),
            ("max_conections", json!(5)),
        ] {
            let mut bad = config_json();
            bad[key] = value;
            let err = serde_json::from_value::<NodeConfig>(bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("unknown field `{key}`")),
                "{key}: {err}"
            );
        }
        let mut bad = config_json();
        bad["max_connections"] = json!("many");
        assert!(serde_json::from_value::<NodeConfig>(bad).is_err());
        let mut missing = config_json();
        missing.as_object_mut().unwrap().remove("algorithm");
        let err = serde_json::from_value::<NodeConfig>(missing).unwrap_err();
        assert!(
            err.to_string().contains("missing field `algorithm`"),
            "{err}"
        );
    }

    #[test]
    fn a_node_config_parses_expected_codes_on_arrival() {
        let c: NodeConfig = serde_json::from_value(config_json()).unwrap();
        assert!(c.health_check.expected_codes.contains(204));
        assert!(!c.health_check.expected_codes.contains(201));
        let mut bad = config_json();
        bad["health_check"]["expected-codes"] = json!("2xx");
        let err = serde_json::from_value::<NodeConfig>(bad).unwrap_err();
        assert!(err.to_string().contains("expected-codes \"2xx\""), "{err}");
    }

    #[test]
    fn member_state_is_the_lowercase_word_on_the_wire() {
        for (state, word) in [
            (MemberState::Up, "up"),
            (MemberState::Down, "down"),
            (MemberState::Ejected, "ejected"),
            (MemberState::Draining, "draining"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), word);
            assert_eq!(state.as_str(), word);
            assert_eq!(state.to_string(), word);
            let back: MemberState = serde_json::from_value(serde_json::json!(word)).unwrap();
            assert_eq!(back, state);
        }
        assert!(serde_json::from_value::<MemberState>(serde_json::json!("Up")).is_err());
        assert!(MemberState::Ejected.is_failing() && !MemberState::Draining.is_failing());
    }
}
