//! The contract between the controller and an LB node's admin API:
//! `PUT /config` takes a [`NodeConfig`], `GET /status` returns a [`NodeStatus`].
//! Both need `Authorization: Bearer <node secret>`.

use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::instance::HealthCheck;
use crate::model::{Algorithm, BackendMember, HashOn, ProxyProtocol, Timeouts, TrafficType};

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
    pub algorithm: Algorithm,
    pub backends: Vec<BackendMember>,
    pub health_check: HealthCheck,
    #[serde(default)]
    pub hash_on: HashOn,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "crate::model::tuning::default_max_connections")]
    pub max_connections: u32,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
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
    /// `up`; `down` (failed its active health checks); `ejected` (passive
    /// health: recent errors); `draining` (weight 0: no new requests).
    pub state: String,
    #[serde(default)]
    pub weight: u32,
    pub requests: u64,
    pub failures: u64,
    pub active: u64,
    /// Times passive health ejected this member.
    #[serde(default)]
    pub ejections: u64,
}
