//! Managed backends (seeds 000 and 002): a pool whose members lbd itself
//! starts on demand and stops when idle. The wire shape (`ManagedSpec`, as a
//! client writes it under `backend.managed` or `pools.<name>.managed`) and
//! the validated one (`Managed`, what is stored), plus what a node is told
//! of a managed pool (`NodeManagedPool`: no command, no environment, which
//! may hold secrets). No I/O here: a VM kernel path that does not exist is
//! checked by the API (`api::managed_check`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::instance::{HealthProtocol, TrafficType};
use crate::model::ExpectedCodes;

pub const DEFAULT_MAX: u32 = 1;
pub const DEFAULT_TARGET_IN_FLIGHT: u32 = 100;
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 300;
pub const DEFAULT_START_TIMEOUT_S: u32 = 30;
pub const DEFAULT_QUEUE_MAX_REQUESTS: u32 = 1000;
pub const DEFAULT_QUEUE_MAX_WAIT_MS: u32 = 30_000;
pub const DEFAULT_MAX_RESOURCES: u32 = 100;
/// The most backends one managed pool may run (per resource).
pub const MAX_BACKENDS: u32 = 64;
/// What `{...}` may name in a command, env value, cwd or VM cmdline.
pub const PLACEHOLDERS: [&str; 4] = ["address", "port", "resource", "instance"];

/// A managed pool that cannot be accepted, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManagedError {
    #[error("managed.{0} is required")]
    Missing(&'static str),
    #[error("managed.process.command is empty: give the program and its arguments")]
    EmptyCommand,
    #[error("managed: max ({max}) must be at least min ({min}), and max at most {MAX_BACKENDS}")]
    InvalidScale { min: i64, max: i64 },
    #[error("managed.port must be 1-65535, got {0}")]
    InvalidPort(i64),
    #[error("managed: unknown placeholder {{{name}}} in {field}; known: {{address}}, {{port}}, {{resource}}, {{instance}}")]
    UnknownPlaceholder { field: String, name: String },
    #[error("managed.per_resource needs traffic_type http")]
    PerResourceNeedsHttp,
    #[error("managed.vm.kernel {0:?} does not exist on the controller's host")]
    KernelNotFound(String),
    #[error("managed.{field} {path:?} is not in one of the controller's backend image directories ({}); put the image there (its operator sets them with --backend-image-dir)", dirs.join(", "))]
    ImageNotAllowed {
        field: &'static str,
        path: String,
        dirs: Vec<String>,
    },
    #[error("managed: compute vm needs an lbd that runs VMs (--compute libvirt, built with the libvirt feature); use compute process here")]
    VmBackendsUnavailable,
    #[error("managed: compute {compute} needs managed.{compute} (its template)")]
    MissingTemplate { compute: &'static str },
    #[error("managed: a managed pool has no entities: lbd starts its members")]
    EntitiesGiven,
    #[error("invalid managed.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ManagedError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_field",
            Self::EmptyCommand => "empty_command",
            Self::InvalidScale { .. } => "invalid_managed_scale",
            Self::InvalidPort(_) => "invalid_port",
            Self::UnknownPlaceholder { .. } => "unknown_placeholder",
            Self::PerResourceNeedsHttp => "per_resource_needs_http",
            Self::KernelNotFound(_) => "kernel_not_found",
            Self::ImageNotAllowed { .. } => "vm_image_not_allowed",
            Self::VmBackendsUnavailable => "vm_backends_unavailable",
            Self::MissingTemplate { .. } => "missing_template",
            Self::EntitiesGiven => "managed_with_entities",
            Self::Invalid { .. } => "invalid_managed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManagedCompute {
    Process,
    Vm,
}

impl ManagedCompute {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Vm => "vm",
        }
    }
}

/// `managed.process`: what lbd runs for each backend.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProcessTemplate {
    /// The program and its arguments; placeholders are filled per backend.
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// `managed.vm`: a direct-kernel-boot VM per backend (libvirt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VmTemplate {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u32,
    #[serde(default = "one")]
    pub vcpus: u32,
}

fn default_memory_mb() -> u32 {
    128
}

fn one() -> u32 {
    1
}

/// `managed.ready` as written: the seed's health-check fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadySpec {
    #[serde(default)]
    pub protocol: Option<HealthProtocol>,
    #[serde(default, rename = "request-path")]
    pub request_path: Option<String>,
    #[serde(default, rename = "expected-codes")]
    pub expected_codes: Option<String>,
}

/// When a started backend counts as ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", tag = "protocol")]
pub enum ReadyCheck {
    /// A TCP connect to the backend's port succeeds (the default).
    Tcp,
    /// A GET of `request_path` answers one of `expected_codes`.
    Http {
        request_path: String,
        #[schemars(with = "String")]
        expected_codes: ExpectedCodes,
    },
}

/// `managed.queue`: how many requests a node holds for a pool with no
/// ready member, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    pub max_requests: u32,
    pub max_wait_ms: u32,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_requests: DEFAULT_QUEUE_MAX_REQUESTS,
            max_wait_ms: DEFAULT_QUEUE_MAX_WAIT_MS,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    #[serde(default)]
    pub max_requests: Option<i64>,
    #[serde(default)]
    pub max_wait_ms: Option<i64>,
}

/// One known resource of `per_resource.resources`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_groups: Vec<String>,
}

/// `managed.per_resource` (seed 000): a backend per resource id taken
/// from a path segment (1-based, the first segment after `/` is 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerResourceSpec {
    pub path_segment: i64,
    #[serde(default)]
    pub groups_segment: Option<i64>,
    #[serde(default)]
    pub resources: Option<BTreeMap<String, ResourceSpec>>,
    #[serde(default)]
    pub max_resources: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PerResource {
    pub path_segment: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_segment: Option<u16>,
    /// `None`: any id matching `[a-z0-9-]{1,63}`, up to `max_resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, ResourceSpec>>,
    pub max_resources: u32,
}

/// `managed` as a client writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedSpec {
    #[serde(default)]
    pub compute: Option<ManagedCompute>,
    #[serde(default)]
    pub process: Option<ProcessTemplate>,
    #[serde(default)]
    pub vm: Option<VmTemplate>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub target_in_flight: Option<i64>,
    /// Seconds without a request in flight and without an open connection.
    #[serde(default)]
    pub idle_timeout: Option<i64>,
    /// Seconds a started backend has to pass `ready`.
    #[serde(default)]
    pub start_timeout: Option<i64>,
    #[serde(default)]
    pub ready: Option<ReadySpec>,
    #[serde(default)]
    pub queue: Option<QueueSpec>,
    #[serde(default)]
    pub per_resource: Option<PerResourceSpec>,
}

/// What a backend runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendTemplate {
    Process(ProcessTemplate),
    Vm(VmTemplate),
}

impl BackendTemplate {
    pub fn compute(&self) -> ManagedCompute {
        match self {
            Self::Process(_) => ManagedCompute::Process,
            Self::Vm(_) => ManagedCompute::Vm,
        }
    }
}

/// A validated managed pool, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Managed {
    pub template: BackendTemplate,
    pub port: u16,
    pub min: u32,
    pub max: u32,
    pub target_in_flight: u32,
    pub idle_timeout_s: u32,
    pub start_timeout_s: u32,
    pub ready: ReadyCheck,
    pub queue: QueueLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_resource: Option<PerResource>,
}

/// What a node is told of a managed pool (pushed in `NodeConfig.managed`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeManagedPool {
    pub queue: QueueLimits,
    /// Held requests count as in flight: with more than this times the
    /// ready members in flight, the node asks lbd for another backend.
    pub target_in_flight: u32,
    pub max: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_resource: Option<NodeResourceRouting>,
}

/// The node's part of `per_resource`: how to find the resource id and the
/// groups a resource requires (no environments).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeResourceRouting {
    pub path_segment: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_segment: Option<u16>,
    /// `None`: any valid id (lbd enforces `max_resources`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<BTreeMap<String, Vec<String>>>,
    pub max_resources: u32,
}

impl Managed {
    pub fn for_node(&self) -> NodeManagedPool {
        NodeManagedPool {
            queue: self.queue,
            target_in_flight: self.target_in_flight,
            max: self.max,
            per_resource: self.per_resource.as_ref().map(|p| NodeResourceRouting {
                path_segment: p.path_segment,
                groups_segment: p.groups_segment,
                resources: p.resources.as_ref().map(|r| {
                    r.iter()
                        .map(|(id, spec)| (id.clone(), spec.require_groups.clone()))
                        .collect()
                }),
                max_resources: p.max_resources,
            }),
        }
    }

    pub fn to_spec(&self) -> ManagedSpec {
        let (process, vm) = match &self.template {
            BackendTemplate::Process(p) => (Some(p.clone()), None),
            BackendTemplate::Vm(v) => (None, Some(v.clone())),
        };
        ManagedSpec {
            compute: Some(self.template.compute()),
            process,
            vm,
            port: Some(i64::from(self.port)),
            min: Some(i64::from(self.min)),
            max: Some(i64::from(self.max)),
            target_in_flight: Some(i64::from(self.target_in_flight)),
            idle_timeout: Some(i64::from(self.idle_timeout_s)),
            start_timeout: Some(i64::from(self.start_timeout_s)),
            ready: Some(match &self.ready {
                ReadyCheck::Tcp => ReadySpec {
                    protocol: Some(HealthProtocol::Tcp),
                    ..ReadySpec::default()
                },
                ReadyCheck::Http {
                    request_path,
                    expected_codes,
                } => ReadySpec {
                    protocol: Some(HealthProtocol::Http),
                    request_path: Some(request_path.clone()),
                    expected_codes: Some(expected_codes.to_string()),
                },
            }),
            queue: Some(QueueSpec {
                max_requests: Some(i64::from(self.queue.max_requests)),
                max_wait_ms: Some(i64::from(self.queue.max_wait_ms)),
            }),
            per_resource: self.per_resource.as_ref().map(|p| PerResourceSpec {
                path_segment: i64::from(p.path_segment),
                groups_segment: p.groups_segment.map(i64::from),
                resources: p.resources.clone(),
                max_resources: Some(i64::from(p.max_resources)),
            }),
        }
    }
}

/// A managed backend's state machine (its row in lbd's store):
/// `starting` → `ready` → `stopping` → (row deleted); `starting` →
/// `stopping` when it fails to start or is no longer wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    Starting,
    Ready,
    Stopping,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Stopping => "stopping",
        }
    }

    pub fn can_move_to(self, to: BackendState) -> bool {
        use BackendState::*;
        matches!(
            (self, to),
            (Starting, Ready) | (Starting, Stopping) | (Ready, Stopping)
        )
    }
}

/// A managed backend as `info instance` (and `lbctl instance backends`) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ManagedBackendInfo {
    pub id: i64,
    pub pool: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub state: BackendState,
    pub compute: ManagedCompute,
    /// `address:port` the backend serves on.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Unix ms.
    pub started_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_ms: Option<i64>,
    /// Unix ms of the last request or open connection any node reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_ms: Option<i64>,
    /// Requests served, as the nodes counted them.
    #[serde(default)]
    pub requests: u64,
}

/// The text with placeholders filled, per backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholders<'a> {
    pub address: &'a str,
    pub port: u16,
    pub resource: &'a str,
    pub instance: &'a str,
}

impl Placeholders<'_> {
    /// `text` with every `{name}` filled (validation made sure there are
    /// only known names; `{{` and `}}` stand for a literal brace).
    pub fn fill(&self, text: &str) -> String {
        let port = self.port.to_string();
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") || tail.starts_with("}}") {
                out.push_str(&tail[..1]);
                rest = &tail[2..];
                continue;
            }
            let value = PLACEHOLDERS.iter().find_map(|name| {
                let token = format!("{{{name}}}");
                tail.starts_with(&token).then(|| {
                    let v = match *name {
                        "address" => self.address,
                        "port" => &port,
                        "resource" => self.resource,
                        _ => self.instance,
                    };
                    (v.to_string(), token.len())
                })
            });
            match value {
                Some((v, len)) => {
                    out.push_str(&v);
                    rest = &tail[len..];
                }
                None => {
                    out.push_str(&tail[..1]);
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Every `{name}` in `text` that is not a known placeholder.
fn unknown_placeholders(text: &str) -> Option<String> {
    let mut rest = text;
    while let Some(i) = rest.find('{') {
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            rest = after;
            continue;
        }
        let end = tail.find('}').unwrap_or(tail.len());
        let name = &tail[1..end];
        if !PLACEHOLDERS.contains(&name) {
            return Some(name.to_string());
        }
        rest = &tail[end..];
    }
    None
}

fn check_placeholders(field: &str, text: &str) -> Result<(), ManagedError> {
    match unknown_placeholders(text) {
        Some(name) => Err(ManagedError::UnknownPlaceholder {
            field: field.to_string(),
            name,
        }),
        None => Ok(()),
    }
}

fn bounded(
    field: &'static str,
    v: Option<i64>,
    default: u32,
    lo: i64,
    hi: i64,
) -> Result<u32, ManagedError> {
    match v {
        None => Ok(default),
        Some(n) if (lo..=hi).contains(&n) => Ok(n as u32),
        Some(n) => Err(ManagedError::Invalid {
            field,
            reason: format!("must be {lo}-{hi}, got {n}"),
        }),
    }
}

impl ManagedSpec {
    /// Validates a managed pool of an instance of `traffic` type.
    pub fn validate(&self, traffic: TrafficType) -> Result<Managed, ManagedError> {
        let compute = self.compute.ok_or(ManagedError::Missing("compute"))?;
        let template = match compute {
            ManagedCompute::Process => {
                let p = self
                    .process
                    .clone()
                    .ok_or(ManagedError::MissingTemplate { compute: "process" })?;
                if p.command.is_empty() || p.command[0].trim().is_empty() {
                    return Err(ManagedError::EmptyCommand);
                }
                for (i, arg) in p.command.iter().enumerate() {
                    check_placeholders(&format!("process.command[{i}]"), arg)?;
                }
                for (k, v) in &p.env {
                    if k.is_empty() || k.contains(['=', '\0']) {
                        return Err(ManagedError::Invalid {
                            field: "process.env",
                            reason: format!("{k:?} is not a variable name"),
                        });
                    }
                    check_placeholders(&format!("process.env.{k}"), v)?;
                }
                if let Some(cwd) = &p.cwd {
                    check_placeholders("process.cwd", cwd)?;
                }
                BackendTemplate::Process(p)
            }
            ManagedCompute::Vm => {
                let v = self
                    .vm
                    .clone()
                    .ok_or(ManagedError::MissingTemplate { compute: "vm" })?;
                if v.kernel.trim().is_empty() {
                    return Err(ManagedError::Missing("vm.kernel"));
                }
                if let Some(c) = &v.cmdline {
                    check_placeholders("vm.cmdline", c)?;
                }
                if !(16..=65536).contains(&v.memory_mb) || !(1..=64).contains(&v.vcpus) {
                    return Err(ManagedError::Invalid {
                        field: "vm",
                        reason: "memory_mb must be 16-65536 and vcpus 1-64".into(),
                    });
                }
                BackendTemplate::Vm(v)
            }
        };
        let port = match self.port {
            None => return Err(ManagedError::Missing("port")),
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => return Err(ManagedError::InvalidPort(p)),
        };
        let min = self.min.unwrap_or(0);
        let max = self.max.unwrap_or(i64::from(DEFAULT_MAX).max(min));
        if min < 0 || max < 1 || max < min || max > i64::from(MAX_BACKENDS) {
            return Err(ManagedError::InvalidScale { min, max });
        }
        let ready = match &self.ready {
            None => ReadyCheck::Tcp,
            Some(r) => match r.protocol.unwrap_or(HealthProtocol::Tcp) {
                HealthProtocol::Tcp => ReadyCheck::Tcp,
                HealthProtocol::Http => {
                    let path = r.request_path.clone().unwrap_or_else(|| "/".into());
                    if !path.starts_with('/') || path.contains(char::is_whitespace) {
                        return Err(ManagedError::Invalid {
                            field: "ready.request-path",
                            reason: format!("{path:?} is not a path"),
                        });
                    }
                    let codes = r.expected_codes.as_deref().unwrap_or("200-399");
                    let expected_codes =
                        codes.parse().map_err(|e: crate::model::ValidationError| {
                            ManagedError::Invalid {
                                field: "ready.expected-codes",
                                reason: e.to_string(),
                            }
                        })?;
                    ReadyCheck::Http {
                        request_path: path,
                        expected_codes,
                    }
                }
            },
        };
        let queue = self.queue.clone().unwrap_or_default();
        let per_resource = match &self.per_resource {
            None => None,
            Some(_) if traffic != TrafficType::Http => {
                return Err(ManagedError::PerResourceNeedsHttp)
            }
            Some(p) => Some(per_resource(p)?),
        };
        Ok(Managed {
            template,
            port,
            min: min as u32,
            max: max as u32,
            target_in_flight: bounded(
                "target_in_flight",
                self.target_in_flight,
                DEFAULT_TARGET_IN_FLIGHT,
                1,
                1_000_000,
            )?,
            idle_timeout_s: bounded(
                "idle_timeout",
                self.idle_timeout,
                DEFAULT_IDLE_TIMEOUT_S,
                1,
                30 * 86_400,
            )?,
            start_timeout_s: bounded(
                "start_timeout",
                self.start_timeout,
                DEFAULT_START_TIMEOUT_S,
                1,
                3600,
            )?,
            ready,
            queue: QueueLimits {
                max_requests: bounded(
                    "queue.max_requests",
                    queue.max_requests,
                    DEFAULT_QUEUE_MAX_REQUESTS,
                    0,
                    1_000_000,
                )?,
                max_wait_ms: bounded(
                    "queue.max_wait_ms",
                    queue.max_wait_ms,
                    DEFAULT_QUEUE_MAX_WAIT_MS,
                    1,
                    3_600_000,
                )?,
            },
            per_resource,
        })
    }
}

fn per_resource(p: &PerResourceSpec) -> Result<PerResource, ManagedError> {
    let segment = |field, v: i64| {
        u16::try_from(v)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or(ManagedError::Invalid {
                field,
                reason: format!("a path segment is 1-64, got {v}"),
            })
    };
    let path_segment = segment("per_resource.path_segment", p.path_segment)?;
    let groups_segment = p
        .groups_segment
        .map(|g| segment("per_resource.groups_segment", g))
        .transpose()?;
    if groups_segment == Some(path_segment) {
        return Err(ManagedError::Invalid {
            field: "per_resource.groups_segment",
            reason: "must differ from path_segment".into(),
        });
    }
    if let Some(resources) = &p.resources {
        for (id, spec) in resources {
            if !is_resource_id(id) {
                return Err(ManagedError::Invalid {
                    field: "per_resource.resources",
                    reason: format!("{id:?} is not a resource id ([a-z0-9-]{{1,63}})"),
                });
            }
            for v in spec.env.values() {
                check_placeholders(&format!("per_resource.resources.{id}.env"), v)?;
            }
        }
    }
    Ok(PerResource {
        path_segment,
        groups_segment,
        resources: p.resources.clone(),
        max_resources: bounded(
            "per_resource.max_resources",
            p.max_resources,
            DEFAULT_MAX_RESOURCES,
            1,
            10_000,
        )?,
    })
}

/// `[a-z0-9-]{1,63}`.
pub fn is_resource_id(id: &str) -> bool {
    (1..=63).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(command: &[&str]) -> ManagedSpec {
        ManagedSpec {
            compute: Some(ManagedCompute::Process),
            process: Some(ProcessTemplate {
                command: command.iter().map(|s| s.to_string()).collect(),
                ..ProcessTemplate::default()
            }),
            port: Some(8000),
            ..ManagedSpec::default()
        }
    }

    #[test]
    fn defaults_follow_the_issue() {
        let m = process(&["python3", "-m", "http.server", "{port}"])
            .validate(TrafficType::Http)
            .unwrap();
        assert_eq!((m.min, m.max), (0, 1));
        assert_eq!(m.target_in_flight, 100);
        assert_eq!((m.idle_timeout_s, m.start_timeout_s), (300, 30));
        assert_eq!(m.ready, ReadyCheck::Tcp);
        assert_eq!(m.queue, QueueLimits::default());
        assert_eq!(m.to_spec().validate(TrafficType::Http).unwrap(), m);
    }

    #[test]
    fn bad_input_has_its_own_code() {
        let code = |s: ManagedSpec, t| s.validate(t).unwrap_err().code();
        assert_eq!(code(process(&[]), TrafficType::Http), "empty_command");
        let mut s = process(&["x"]);
        s.min = Some(3);
        s.max = Some(2);
        assert_eq!(code(s, TrafficType::Http), "invalid_managed_scale");
        let mut s = process(&["x"]);
        s.port = Some(0);
        assert_eq!(code(s, TrafficType::Http), "invalid_port");
        assert_eq!(
            code(process(&["x", "{adress}"]), TrafficType::Http),
            "unknown_placeholder"
        );
        let mut s = process(&["x"]);
        s.per_resource = Some(PerResourceSpec {
            path_segment: 2,
            groups_segment: None,
            resources: None,
            max_resources: None,
        });
        assert_eq!(code(s, TrafficType::Tcp), "per_resource_needs_http");
    }

    #[test]
    fn placeholders_fill_and_braces_escape() {
        let p = Placeholders {
            address: "10.0.0.5",
            port: 8000,
            resource: "r1",
            instance: "web",
        };
        assert_eq!(
            p.fill("--bind {address}:{port} {resource}/{instance} {{x}}"),
            "--bind 10.0.0.5:8000 r1/web {x}"
        );
        assert_eq!(unknown_placeholders("{{literal}} {port}"), None);
        assert_eq!(unknown_placeholders("{nope}").as_deref(), Some("nope"));
    }
}
