//! Accounting (seed 002): what a project's managed backends and LB nodes
//! ran, read with `{"action": "info", "type": "usage", "info": {"project": ...}}`
//! and `lbctl project usage`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `info usage`. `since` and `until` are dates (`2026-12-01`, whole UTC
/// days) or RFC 3339 times; absent: from the first record, up to now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// The counted quantities; the same fields per pool, per instance and in total.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageFigures {
    /// Running time of managed backends, start to stop, in seconds.
    pub backend_seconds: f64,
    /// Running time of LB nodes, in seconds.
    pub node_seconds: f64,
    /// Managed backends started.
    pub starts: u64,
    /// Starts that a held request waited for.
    pub cold_starts: u64,
    /// Requests served by managed backends.
    pub requests: u64,
    /// Mean wait of held requests, in ms; `None` without cold starts.
    pub cold_start_ms_mean: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PoolUsage {
    pub pool: String,
    #[serde(flatten)]
    pub figures: UsageFigures,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InstanceUsage {
    pub instance: String,
    #[serde(flatten)]
    pub figures: UsageFigures,
    pub pools: Vec<PoolUsage>,
}

/// The answer to `info usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UsageReport {
    pub project: String,
    /// The window as resolved (RFC 3339), absent when open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    pub instances: Vec<InstanceUsage>,
    pub totals: UsageFigures,
}
