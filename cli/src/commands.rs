//! What each command sends (a [`RequestEnvelope`] built from the model's
//! request types), what it reads back, and how `create`/`update` wait for
//! the load balancer. Users and whoami are in `users.rs`, the audit log in
//! `audit.rs`.

use std::time::{Duration, Instant};

use lbaas::model::instance::{BackendSpec, HealthCriteriaSpec};
use lbaas::model::tuning::TimeoutsSpec;
use lbaas::model::{
    Action, AuditEntry, HealthCheckSpec, InstanceCreate, InstanceDelete, InstanceInfo, InstanceRef,
    InstanceUpdate, ObjectType, ProjectCreate, ProjectDelete, ProjectInfo, ProjectRef,
    ProjectUpdate, ProvisioningStatus, RequestEnvelope, ScalingSpec, UserInfo, WhoAmI,
};
use serde::Serialize;
use serde_json::Value;

use crate::args::{
    BackendArg, Command, CreateArgs, HealthArgs, InstanceCmd, ProjectCmd, ScalingArgs, SmtpArgs,
    TuningArgs, UpdateArgs, WaitArgs,
};
use crate::client::{ApiClient, ClientError, Reply};

/// What an answer's `info` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Project,
    Projects,
    Instance,
    Instances,
    User,
    Users,
    WhoAmI,
    Audit,
    Usage,
    /// An instance's federation mappings (`instance mapping list`).
    Mappings,
    /// What `instance mapping add|remove` answer: read for its `version` only.
    MappingChange,
    /// Whatever it is, only shown by `-o json`/`-o yaml`.
    Done,
}

/// A command's request and the shape of its answer.
#[derive(Debug, Clone)]
pub struct Request {
    pub envelope: RequestEnvelope,
    pub shape: Shape,
}

/// An answer, read into the model's types.
#[derive(Debug, Clone)]
pub enum Typed {
    Project(Box<ProjectInfo>),
    Projects(Vec<ProjectInfo>),
    Instance(Box<InstanceInfo>),
    Instances(Vec<InstanceInfo>),
    User(Box<UserInfo>),
    Users(Vec<UserInfo>),
    WhoAmI(WhoAmI),
    Audit(Vec<AuditEntry>),
    Usage(Box<lbaas::model::usage::UsageReport>),
    /// An instance's L7 policy (the policy commands).
    Policy(Box<lbaas::model::policy::PolicySpec>),
    Mappings(Box<lbaas::model::mapping::MappingsInfo>),
    /// The mappings version after an `add` or `remove`, when lbd says it.
    MappingChange(Option<u64>),
    Done,
}

/// An answer: typed for tables, and as lbd sent it for `-o json`/`-o yaml`.
pub struct Answer {
    pub typed: Typed,
    pub raw: Value,
}

impl From<Reply<InstanceInfo>> for Answer {
    fn from(r: Reply<InstanceInfo>) -> Answer {
        Answer {
            typed: Typed::Instance(Box::new(r.value)),
            raw: r.raw,
        }
    }
}

/// Sends a request and reads the answer into the shape it has.
pub fn send(client: &ApiClient, request: &Request) -> Result<Answer, ClientError> {
    fn read<T: serde::de::DeserializeOwned>(
        client: &ApiClient,
        envelope: &RequestEnvelope,
        typed: impl FnOnce(T) -> Typed,
    ) -> Result<Answer, ClientError> {
        let reply = client.call::<T>(envelope)?;
        Ok(Answer {
            typed: typed(reply.value),
            raw: reply.raw,
        })
    }
    let e = &request.envelope;
    match request.shape {
        Shape::Project => read(client, e, |p| Typed::Project(Box::new(p))),
        Shape::Projects => read(client, e, Typed::Projects),
        Shape::Instance => read(client, e, |i| Typed::Instance(Box::new(i))),
        Shape::Instances => read(client, e, Typed::Instances),
        Shape::User => read(client, e, |u| Typed::User(Box::new(u))),
        Shape::Users => read(client, e, Typed::Users),
        Shape::WhoAmI => read(client, e, Typed::WhoAmI),
        Shape::Audit => read(client, e, Typed::Audit),
        Shape::Usage => read(client, e, |u| Typed::Usage(Box::new(u))),
        Shape::Mappings => read(client, e, |m| Typed::Mappings(Box::new(m))),
        Shape::MappingChange => read(client, e, |v: Value| {
            Typed::MappingChange(v.get("version").and_then(Value::as_u64))
        }),
        Shape::Done => read(client, e, |_: Value| Typed::Done),
    }
}

/// An envelope's `info` from a request type. Unset fields are left out
/// rather than sent as null (the API reads both as absent): requests stay
/// as small as lbctl always sent them, also for the nested specs
/// (`scaling`, `timeouts`) whose types write their unset fields as null.
fn info(request: &impl Serialize) -> Value {
    fn prune(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k, prune(v)))
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(prune).collect()),
            other => other,
        }
    }
    prune(serde_json::to_value(request).expect("a request always serializes"))
}

fn envelope(action: Action, object_type: ObjectType, request: &impl Serialize) -> RequestEnvelope {
    RequestEnvelope {
        action,
        object_type,
        info: info(request),
    }
}

/// The request a command sends (`raw`, `top`, `completions` and the policy
/// commands, see `policy::run`, send none of their own; `instance mapping`'s
/// may read token files, see `mapping::request`).
pub fn request(cmd: &Command) -> Option<Request> {
    let (envelope, shape) = match cmd {
        Command::Raw { .. } | Command::Top { .. } | Command::Completions { .. } => return None,
        Command::Project(p) => project_request(p),
        Command::Instance(i) => instance_request(i)?,
        Command::User(u) => users::request(u),
        Command::Whoami => users::whoami(),
        Command::Audit(a) => audit::request(a, unix_now()),
    };
    Some(Request { envelope, shape })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The request that lists every project with its instances (also `lbctl top`'s).
pub fn list_projects() -> RequestEnvelope {
    envelope(
        Action::Info,
        ObjectType::Project,
        &ProjectRef { name: None },
    )
}

/// The request for one instance's info.
pub fn instance_info(project: &str, name: &str) -> RequestEnvelope {
    envelope(
        Action::Info,
        ObjectType::Instance,
        &InstanceRef {
            project: project.to_string(),
            name: Some(name.to_string()),
            history: None,
        },
    )
}

fn project_request(cmd: &ProjectCmd) -> (RequestEnvelope, Shape) {
    use {Action as A, ObjectType::Project as P};
    match cmd {
        ProjectCmd::Create { name, user, subnet } => (
            envelope(
                A::Create,
                P,
                &ProjectCreate {
                    name: name.clone(),
                    user: user.clone(),
                    subnet: subnet.clone(),
                    object_type: None,
                    instances: None,
                },
            ),
            Shape::Project,
        ),
        ProjectCmd::List => (list_projects(), Shape::Projects),
        ProjectCmd::Info { name } => (
            envelope(
                A::Info,
                P,
                &ProjectRef {
                    name: Some(name.clone()),
                },
            ),
            Shape::Project,
        ),
        ProjectCmd::Usage { name, since, until } => (
            managed::usage_request(name, since.as_deref(), until.as_deref()),
            Shape::Usage,
        ),
        ProjectCmd::Update { name, user } => (
            envelope(
                A::Update,
                P,
                &ProjectUpdate {
                    name: name.clone(),
                    user: Some(user.clone()),
                },
            ),
            Shape::Project,
        ),
        ProjectCmd::Delete { name, force } => (
            envelope(
                A::Delete,
                P,
                &ProjectDelete {
                    name: name.clone(),
                    force: *force,
                },
            ),
            Shape::Project,
        ),
    }
}

fn instance_request(cmd: &InstanceCmd) -> Option<(RequestEnvelope, Shape)> {
    use {Action as A, ObjectType::Instance as I};
    Some(match cmd {
        InstanceCmd::Pool(_)
        | InstanceCmd::Rule(_)
        | InstanceCmd::Policy(_)
        | InstanceCmd::Apply(_)
        | InstanceCmd::Cert(_)
        | InstanceCmd::Mapping(_) => return None,
        InstanceCmd::Create(args) => (
            envelope(A::Create, I, &instance_create(args)),
            Shape::Instance,
        ),
        InstanceCmd::Update(args) => (
            envelope(A::Update, I, &instance_update(args)),
            Shape::Instance,
        ),
        InstanceCmd::List { project } => (
            envelope(
                A::Info,
                I,
                &InstanceRef {
                    project: project.clone(),
                    name: None,
                    history: None,
                },
            ),
            Shape::Instances,
        ),
        InstanceCmd::Info { name, project } | InstanceCmd::Backends { name, project } => {
            (instance_info(project, name), Shape::Instance)
        }
        InstanceCmd::Events {
            name,
            project,
            minutes,
        } => (
            envelope(
                A::Info,
                I,
                &InstanceRef {
                    project: project.clone(),
                    name: Some(name.clone()),
                    history: Some(i64::from(*minutes) * 60),
                },
            ),
            Shape::Instance,
        ),
        InstanceCmd::Delete { name, project } => (
            envelope(
                A::Delete,
                I,
                &InstanceDelete {
                    project: project.clone(),
                    name: name.clone(),
                },
            ),
            Shape::Instance,
        ),
    })
}

/// `instance create`'s request. Fields are spelled out (no `..`) on both
/// sides, so a field added to the model or a flag added to the arguments
/// does not compile until it is mapped.
pub fn instance_create(args: &CreateArgs) -> InstanceCreate {
    let CreateArgs {
        name,
        project,
        traffic_type,
        port,
        subnet,
        backends,
        algorithm,
        health,
        scaling,
        tuning,
        managed,
        sticky,
        backend_tls,
        smtp,
        tls,
        federation,
        wait: _,
    } = args;
    InstanceCreate {
        name: name.clone(),
        project: project.clone(),
        traffic_type: *traffic_type,
        port: port.map(i64::from),
        algorithm: *algorithm,
        subnet: subnet.clone(),
        backend: BackendSpec {
            entities: entities(backends),
            health_check: health_check(health),
            auto_scaling: auto_scaling(scaling),
            managed: managed::spec(managed),
            sticky: sticky.spec(),
            // `--backend-protocol` is the instance's (`tuning`).
            backend_protocol: None,
            backend_tls: backend_tls.spec(),
        },
        min_nodes: scaling.min_nodes.map(i64::from),
        max_nodes: scaling.max_nodes.map(i64::from),
        standby_nodes: scaling.standby_nodes.map(i64::from),
        scaling: scaling_spec(scaling),
        hash_on: tuning.hash_on.clone(),
        timeouts: timeouts(tuning),
        max_connections: tuning.max_connections.map(i64::from),
        max_header_bytes: tuning.max_header_bytes.map(i64::from),
        proxy_protocol: tuning.proxy_protocol,
        backend_protocol: tuning.backend_protocol,
        // Set later by the policy commands (`pool`, `rule`, `apply`).
        pools: None,
        rules: None,
        auth: None,
        rate_limits: None,
        smtp: smtp_spec(smtp),
        // The envelope's `type` already says instance.
        object_type: None,
        // Unpaired flags are refused before (`tls::check`).
        tls: tls.spec(name, project).unwrap_or_default(),
        federation: federation.clone(),
    }
}

/// `instance update`'s request: only what was given.
pub fn instance_update(args: &UpdateArgs) -> InstanceUpdate {
    let UpdateArgs {
        name,
        project,
        port,
        backends,
        algorithm,
        health,
        scaling,
        tuning,
        managed,
        sticky,
        backend_tls,
        smtp,
        tls,
        federation,
        wait: _,
    } = args;
    let backend = BackendSpec {
        entities: entities(backends),
        health_check: health_check(health),
        auto_scaling: auto_scaling(scaling),
        managed: managed::spec(managed),
        sticky: sticky.spec(),
        backend_protocol: None,
        backend_tls: backend_tls.spec(),
    };
    InstanceUpdate {
        project: project.clone(),
        name: name.clone(),
        port: port.map(i64::from),
        algorithm: *algorithm,
        backend: (backend != BackendSpec::default()).then_some(backend),
        min_nodes: scaling.min_nodes.map(i64::from),
        max_nodes: scaling.max_nodes.map(i64::from),
        standby_nodes: scaling.standby_nodes.map(i64::from),
        scaling: scaling_spec(scaling),
        hash_on: tuning.hash_on.clone(),
        timeouts: timeouts(tuning),
        max_connections: tuning.max_connections.map(i64::from),
        max_header_bytes: tuning.max_header_bytes.map(i64::from),
        proxy_protocol: tuning.proxy_protocol,
        backend_protocol: tuning.backend_protocol,
        // The policy commands (`pool`, `rule`, `apply`) send these.
        pools: None,
        rules: None,
        auth: None,
        rate_limits: None,
        smtp: smtp_spec(smtp),
        // Unpaired flags are refused before (`tls::check`).
        tls: tls.spec(name, project).unwrap_or_default(),
        federation: federation.spec(),
    }
}

/// The `--smtp-*` flags that were given, as the `smtp` object.
fn smtp_spec(a: &SmtpArgs) -> Option<lbaas::model::smtp::SmtpSpec> {
    given(lbaas::model::smtp::SmtpSpec {
        deliver_path: a.smtp_deliver_path.clone(),
        max_message_bytes: a
            .smtp_max_message_bytes
            .map(|n| n.min(i64::MAX as u64) as i64),
        max_recipients: a.smtp_max_recipients.map(i64::from),
        idle_timeout: a.smtp_idle_timeout.map(i64::from),
        max_line_length: a.smtp_max_line_length.map(i64::from),
        max_bad_commands: a.smtp_max_bad_commands.map(i64::from),
    })
}

fn entities(backends: &[BackendArg]) -> Vec<lbaas::model::BackendEntity> {
    backends.iter().filter_map(|b| b.0.clone()).collect()
}

/// `Some` when `spec` is not all unset, so an object no flag filled is not sent.
fn given<T: Default + PartialEq>(spec: T) -> Option<T> {
    (spec != T::default()).then_some(spec)
}

/// The health-check flags that were given, as the seed's `backend.health-check`.
fn health_check(h: &HealthArgs) -> Option<HealthCheckSpec> {
    let check = h.health_check.as_ref();
    given(HealthCheckSpec {
        protocol: check.map(|c| c.protocol),
        port: check.and_then(|c| c.port).map(i64::from),
        request_path: check.and_then(|c| c.path.clone()),
        expected_codes: h.expected_codes.clone(),
        criteria: given(HealthCriteriaSpec {
            interval: h.interval.map(i64::from),
            timeout: h.check_timeout.map(i64::from),
            health_threshold: h.healthy_threshold.map(i64::from),
            unhealth_threshold: h.unhealthy_threshold.map(i64::from),
        }),
    })
}

fn auto_scaling(a: &ScalingArgs) -> Option<bool> {
    a.auto_scaling.or(a.autoscale.then_some(true))
}

fn scaling_spec(a: &ScalingArgs) -> Option<ScalingSpec> {
    given(ScalingSpec {
        target_requests_per_s: a.target_rps.map(i64::from),
        target_connections: a.target_connections.map(i64::from),
        scale_out_after: a.scale_out_after.map(i64::from),
        scale_in_after: a.scale_in_after.map(i64::from),
        low_water_percent: a.low_water_percent.map(i64::from),
        cooldown: a.cooldown.map(i64::from),
    })
}

fn timeouts(t: &TuningArgs) -> Option<TimeoutsSpec> {
    given(TimeoutsSpec {
        connect_ms: t.connect_timeout_ms.map(i64::from),
        first_byte_ms: t.first_byte_timeout_ms.map(i64::from),
        client_idle_ms: t.client_idle_timeout_ms.map(i64::from),
        backend_idle_ms: t.backend_idle_timeout_ms.map(i64::from),
        handshake_ms: t.handshake_timeout_ms.map(i64::from),
    })
}

/// The wait settings of a command that changes a load balancer, if it should wait.
pub fn wait_args(cmd: &Command) -> Option<&WaitArgs> {
    match cmd {
        Command::Instance(InstanceCmd::Create(args)) if !args.wait.no_wait => Some(&args.wait),
        Command::Instance(InstanceCmd::Update(args)) if !args.wait.no_wait => Some(&args.wait),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("instance {name} failed: {reason}")]
    Failed { name: String, reason: String },
    #[error("instance {name} is still {status} after {secs}s")]
    Timeout {
        name: String,
        status: String,
        secs: u64,
    },
}

/// Polls `info` until the instance is ACTIVE (returns it) or ERROR.
pub fn wait_until_active(
    client: &ApiClient,
    instance: &InstanceInfo,
    wait: &WaitArgs,
    mut on_tick: impl FnMut(ProvisioningStatus),
) -> Result<Reply<InstanceInfo>, WaitError> {
    let name = instance.name.clone();
    let request = instance_info(&instance.project, &instance.name);
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    loop {
        let current = client.call::<InstanceInfo>(&request)?;
        let status = current.value.provisioning_status;
        match status {
            ProvisioningStatus::Active => return Ok(current),
            ProvisioningStatus::Error => {
                let reason = current
                    .value
                    .status_reason
                    .unwrap_or_else(|| "no reason given".to_string());
                return Err(WaitError::Failed { name, reason });
            }
            _ => on_tick(status),
        }
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout {
                name,
                status: status.as_str().to_string(),
                secs: wait.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub mod audit;
pub mod managed;
pub mod mapping;
pub mod policy;
pub mod tls;
pub mod users;

#[cfg(test)]
mod tests;
