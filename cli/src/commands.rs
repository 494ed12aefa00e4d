//! What each command sends, and how `create`/`update` wait for the load balancer.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::args::{
    Command, HealthArgs, InstanceCmd, ProjectCmd, ScalingArgs, TrafficType, WaitArgs,
};
use crate::client::{ApiClient, ClientError};

/// The envelope a command sends (`raw` sends its input instead).
pub fn envelope(cmd: &Command) -> Option<Value> {
    let (action, kind, info) = match cmd {
        Command::Raw { .. } | Command::Top { .. } | Command::Completions { .. } => return None,
        Command::Project(p) => match p {
            ProjectCmd::Create { name, user, subnet } => {
                let mut info = json!({ "name": name });
                if let Some(u) = user {
                    info["user"] = json!(u);
                }
                if let Some(s) = subnet {
                    info["subnet"] = json!(s);
                }
                ("create", "project", info)
            }
            ProjectCmd::List => ("info", "project", json!({})),
            ProjectCmd::Info { name } => ("info", "project", json!({ "name": name })),
            ProjectCmd::Update { name, user } => {
                ("update", "project", json!({ "name": name, "user": user }))
            }
            ProjectCmd::Delete { name, force } => {
                ("delete", "project", json!({ "name": name, "force": force }))
            }
        },
        Command::Instance(i) => match i {
            InstanceCmd::Create {
                name,
                project,
                traffic_type,
                port,
                backends,
                algorithm,
                health,
                scaling,
                ..
            } => {
                let mut info = json!({
                    "name": name,
                    "project": project,
                    "traffic_type": match traffic_type { TrafficType::Http => "http", TrafficType::Tcp => "tcp" },
                    "backend": { "entities": trimmed(backends) },
                });
                if let Some(p) = port {
                    info["port"] = json!(p);
                }
                if let Some(a) = algorithm {
                    info["algorithm"] = json!(a.as_str());
                }
                add_health(&mut info, health);
                add_scaling(&mut info, scaling);
                ("create", "instance", info)
            }
            InstanceCmd::List { project } => ("info", "instance", json!({ "project": project })),
            InstanceCmd::Info { name, project } => (
                "info",
                "instance",
                json!({ "project": project, "name": name }),
            ),
            InstanceCmd::Update {
                name,
                project,
                port,
                backends,
                algorithm,
                health,
                scaling,
                ..
            } => {
                let mut info = json!({ "project": project, "name": name });
                if let Some(p) = port {
                    info["port"] = json!(p);
                }
                if !backends.is_empty() {
                    info["backend"] = json!({ "entities": trimmed(backends) });
                }
                if let Some(a) = algorithm {
                    info["algorithm"] = json!(a.as_str());
                }
                add_health(&mut info, health);
                add_scaling(&mut info, scaling);
                ("update", "instance", info)
            }
            InstanceCmd::Events {
                name,
                project,
                minutes,
            } => (
                "info",
                "instance",
                json!({ "project": project, "name": name, "history": u64::from(*minutes) * 60 }),
            ),
            InstanceCmd::Delete { name, project } => (
                "delete",
                "instance",
                json!({ "project": project, "name": name }),
            ),
        },
    };
    Some(json!({ "action": action, "type": kind, "info": info }))
}

/// Puts the health-check flags that were given into `backend.health-check`.
fn add_health(info: &mut Value, h: &HealthArgs) {
    let mut check = serde_json::Map::new();
    if let Some(spec) = &h.health_check {
        check.insert("protocol".into(), json!(spec.protocol));
        if let Some(port) = spec.port {
            check.insert("port".into(), json!(port));
        }
        if let Some(path) = &spec.path {
            check.insert("request-path".into(), json!(path));
        }
    }
    if let Some(criteria) = given(&[
        ("interval", h.interval),
        ("timeout", h.check_timeout),
        ("health-threshold", h.healthy_threshold),
        ("unhealth-threshold", h.unhealthy_threshold),
    ]) {
        check.insert("criteria".into(), criteria);
    }
    if !check.is_empty() {
        set_backend_field(info, "health-check", Value::Object(check));
    }
}

/// Puts the node-count and autoscaling flags that were given into `info`.
fn add_scaling(info: &mut Value, a: &ScalingArgs) {
    if let Some(n) = a.min_nodes {
        info["min_nodes"] = json!(n);
    }
    if let Some(n) = a.max_nodes {
        info["max_nodes"] = json!(n);
    }
    if let Some(on) = a.auto_scaling.or(a.autoscale.then_some(true)) {
        set_backend_field(info, "auto-scaling", json!(on));
    }
    if let Some(scaling) = given(&[
        ("target_requests_per_s", a.target_rps),
        ("target_connections", a.target_connections),
        ("cooldown", a.cooldown),
    ]) {
        info["scaling"] = scaling;
    }
}

/// The flags that were given, as an object; `None` when none was.
fn given(fields: &[(&str, Option<u32>)]) -> Option<Value> {
    let map: serde_json::Map<String, Value> = fields
        .iter()
        .filter_map(|(key, v)| v.map(|v| ((*key).to_string(), json!(v))))
        .collect();
    (!map.is_empty()).then_some(Value::Object(map))
}

/// Sets `info.backend.<key>`, creating `backend` when the command gave no entities.
fn set_backend_field(info: &mut Value, key: &str, value: Value) {
    if info.get("backend").is_none() {
        info["backend"] = json!({});
    }
    info["backend"][key] = value;
}

fn trimmed(list: &[String]) -> Vec<&str> {
    list.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The wait settings of a command that changes a load balancer, if it should wait.
pub fn wait_args(cmd: &Command) -> Option<&WaitArgs> {
    match cmd {
        Command::Instance(InstanceCmd::Create { wait, .. } | InstanceCmd::Update { wait, .. })
            if !wait.no_wait =>
        {
            Some(wait)
        }
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
    info: &Value,
    wait: &WaitArgs,
    mut on_tick: impl FnMut(&str),
) -> Result<Value, WaitError> {
    let name = info["name"].as_str().unwrap_or_default().to_string();
    let project = info["project"].as_str().unwrap_or_default().to_string();
    let deadline = Instant::now() + Duration::from_secs(wait.timeout);
    loop {
        let current = client.call(&json!({"action": "info", "type": "instance", "info": {"project": project, "name": name}}))?;
        let status = current["provisioning_status"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        match status.as_str() {
            "ACTIVE" => return Ok(current),
            "ERROR" => {
                let reason = current["status_reason"]
                    .as_str()
                    .unwrap_or("no reason given")
                    .to_string();
                return Err(WaitError::Failed { name, reason });
            }
            _ => on_tick(&status),
        }
        if Instant::now() >= deadline {
            return Err(WaitError::Timeout {
                name,
                status,
                secs: wait.timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn env_of(args: &[&str]) -> Value {
        let cli =
            Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied())).unwrap();
        envelope(&cli.command).unwrap()
    }

    #[test]
    fn project_commands() {
        assert_eq!(
            env_of(&[
                "project",
                "create",
                "demo",
                "--user",
                "john",
                "--subnet",
                "127.5.0.0/16"
            ]),
            json!({"action": "create", "type": "project", "info": {"name": "demo", "user": "john", "subnet": "127.5.0.0/16"}})
        );
        assert_eq!(
            env_of(&["project", "list"]),
            json!({"action": "info", "type": "project", "info": {}})
        );
        assert_eq!(
            env_of(&["project", "info", "demo"])["info"],
            json!({"name": "demo"})
        );
        assert_eq!(
            env_of(&["project", "update", "demo", "--user", "ann"])["info"],
            json!({"name": "demo", "user": "ann"})
        );
        assert_eq!(
            env_of(&["project", "delete", "demo", "--force"])["info"],
            json!({"name": "demo", "force": true})
        );
    }

    #[test]
    fn health_and_autoscale_flags_map_to_the_seed_fields() {
        let e = env_of(&[
            "instance",
            "create",
            "web",
            "--project",
            "demo",
            "--type",
            "http",
            "--backend",
            "10.0.0.1:80",
            "--health-check",
            "http:8081:/healthz",
            "--interval",
            "2",
            "--check-timeout",
            "1",
            "--healthy-threshold",
            "3",
            "--unhealthy-threshold",
            "4",
            "--autoscale",
            "--min-nodes",
            "2",
            "--max-nodes",
            "6",
        ]);
        assert_eq!(
            e["info"]["backend"],
            json!({"entities": ["10.0.0.1:80"], "auto-scaling": true, "health-check": {
                "protocol": "HTTP", "port": 8081, "request-path": "/healthz",
                "criteria": {"interval": 2, "timeout": 1, "health-threshold": 3, "unhealth-threshold": 4}}})
        );
        assert_eq!(
            (
                e["info"]["min_nodes"].clone(),
                e["info"]["max_nodes"].clone()
            ),
            (json!(2), json!(6))
        );
        let t = env_of(&[
            "instance",
            "update",
            "web",
            "--project",
            "demo",
            "--health-check",
            "tcp",
        ]);
        assert_eq!(
            t["info"],
            json!({"project": "demo", "name": "web", "backend": {"health-check": {"protocol": "TCP"}}})
        );
        for bad in ["http:healthz", "udp", "http:x:/a"] {
            assert!(
                crate::args::Cli::try_parse_from([
                    "lbctl",
                    "instance",
                    "update",
                    "web",
                    "--project",
                    "p",
                    "--health-check",
                    bad,
                ])
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn instance_commands_with_repeated_and_comma_backends() {
        let e = env_of(&[
            "instance",
            "create",
            "web",
            "--project",
            "demo",
            "--type",
            "http",
            "--port",
            "8080",
            "--backend",
            "10.0.0.1:80,10.0.0.2:80",
            "--backend",
            "10.0.0.3:80",
        ]);
        assert_eq!(
            e,
            json!({"action": "create", "type": "instance", "info": {
                "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
                "backend": {"entities": ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]}}})
        );
        assert_eq!(
            env_of(&["instance", "list", "--project", "demo"])["info"],
            json!({"project": "demo"})
        );
        let a = env_of(&[
            "instance",
            "update",
            "web",
            "--project",
            "demo",
            "--algorithm",
            "least-connections",
        ]);
        assert_eq!(
            a["info"],
            json!({"project": "demo", "name": "web", "algorithm": "least_connections"})
        );
        let u = env_of(&[
            "instance",
            "update",
            "web",
            "--project",
            "demo",
            "--backend",
            "10.0.0.9:80",
        ]);
        assert_eq!(
            u["info"],
            json!({"project": "demo", "name": "web", "backend": {"entities": ["10.0.0.9:80"]}})
        );
        let d = env_of(&["instance", "delete", "web", "--project", "demo"]);
        assert_eq!(
            (d["action"].as_str(), d["info"]["name"].as_str()),
            (Some("delete"), Some("web"))
        );
    }

    #[test]
    fn create_requires_a_backend_and_a_type() {
        assert!(Cli::try_parse_from([
            "lbctl",
            "instance",
            "create",
            "web",
            "--project",
            "p",
            "--type",
            "http"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "lbctl",
            "instance",
            "create",
            "web",
            "--project",
            "p",
            "--backend",
            "1.2.3.4:80"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "lbctl",
            "instance",
            "create",
            "web",
            "--project",
            "p",
            "--type",
            "udp",
            "--backend",
            "x"
        ])
        .is_err());
    }
}
