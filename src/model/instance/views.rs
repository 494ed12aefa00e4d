//! What `info instance` answers.

use super::*;

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
    /// The default pool's `backend_tls`, in the shape `create` takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_tls: Option<crate::model::backend_tls::BackendTlsSpec>,
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
    /// Nodes kept booted out of DNS (absent from servers before it existed).
    #[serde(default)]
    pub standby_nodes: u32,
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
    /// Federation routing (issue 18), in the shape `create` takes (with
    /// the defaults filled in). It holds no secret; the mappings are
    /// `info mapping`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<crate::model::federation::FederationSpec>,
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
