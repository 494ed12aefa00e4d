//! Managed backends (issue 16): the `--managed-*` flags as the API's
//! `backend.managed`, and the `project usage` request.

use std::collections::BTreeMap;

use lbaas::model::managed::{
    ManagedCompute, ManagedSpec, PerResourceSpec, ProcessTemplate, QueueSpec, ResourceSpec,
    VmTemplate,
};
use lbaas::model::usage::UsageQuery;
use lbaas::model::{Action, ObjectType, RequestEnvelope};

use crate::args::ManagedArgs;

/// `backend.managed` from the flags; `None` when no template flag was
/// given (clap makes every other managed flag need one).
pub fn spec(args: &ManagedArgs) -> Option<ManagedSpec> {
    let ManagedArgs {
        managed_command,
        managed_port,
        managed_env,
        managed_cwd,
        min,
        max,
        target_in_flight,
        idle_timeout,
        start_timeout,
        queue_max,
        queue_max_wait_ms,
        managed_vm_kernel,
        managed_vm_initrd,
        managed_vm_cmdline,
        managed_vm_memory_mb,
        per_resource_segment,
        per_resource_groups_segment,
        per_resource_max,
        per_resource,
    } = args;
    let (compute, process, vm) = match (managed_command, managed_vm_kernel) {
        (Some(command), _) => (
            ManagedCompute::Process,
            Some(ProcessTemplate {
                command: command.0.clone(),
                env: managed_env.iter().cloned().collect::<BTreeMap<_, _>>(),
                cwd: managed_cwd.clone(),
            }),
            None,
        ),
        (None, Some(kernel)) => (
            ManagedCompute::Vm,
            None,
            Some(VmTemplate {
                kernel: kernel.clone(),
                initrd: managed_vm_initrd.clone(),
                cmdline: managed_vm_cmdline.clone(),
                memory_mb: managed_vm_memory_mb.unwrap_or(128),
                vcpus: 1,
            }),
        ),
        (None, None) => return None,
    };
    let queue = QueueSpec {
        max_requests: queue_max.map(i64::from),
        max_wait_ms: queue_max_wait_ms.map(i64::from),
    };
    Some(ManagedSpec {
        compute: Some(compute),
        process,
        vm,
        port: managed_port.map(i64::from),
        min: min.map(i64::from),
        max: max.map(i64::from),
        target_in_flight: target_in_flight.map(i64::from),
        idle_timeout: idle_timeout.map(i64::from),
        start_timeout: start_timeout.map(i64::from),
        ready: None,
        queue: (queue != QueueSpec::default()).then_some(queue),
        per_resource: per_resource_segment.map(|segment| PerResourceSpec {
            path_segment: i64::from(segment),
            groups_segment: per_resource_groups_segment.map(i64::from),
            resources: (!per_resource.is_empty()).then(|| {
                per_resource
                    .iter()
                    .map(|(id, groups)| {
                        let spec = ResourceSpec {
                            env: BTreeMap::new(),
                            require_groups: groups.clone(),
                        };
                        (id.clone(), spec)
                    })
                    .collect()
            }),
            max_resources: per_resource_max.map(i64::from),
        }),
    })
}

/// `project usage NAME [--since] [--until]`.
pub fn usage_request(name: &str, since: Option<&str>, until: Option<&str>) -> RequestEnvelope {
    super::envelope(
        Action::Info,
        ObjectType::Usage,
        &UsageQuery {
            project: name.to_string(),
            since: since.map(str::to_string),
            until: until.map(str::to_string),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::managed::CommandLine;
    use serde_json::json;

    #[test]
    fn per_resource_flags_make_per_resource() {
        let args = ManagedArgs {
            managed_command: Some(CommandLine(vec!["app".into()])),
            managed_port: Some(8000),
            per_resource_segment: Some(2),
            per_resource_groups_segment: Some(3),
            per_resource_max: Some(5),
            per_resource: vec![("r1".into(), vec!["g1".into()]), ("r2".into(), vec![])],
            ..ManagedArgs::default()
        };
        let v = serde_json::to_value(spec(&args).unwrap()).unwrap();
        assert_eq!(
            v["per_resource"],
            json!({"path_segment": 2, "groups_segment": 3, "max_resources": 5,
                   "resources": {"r1": {"require_groups": ["g1"]}, "r2": {}}})
        );
    }

    #[test]
    fn process_flags_make_a_process_pool() {
        let args = ManagedArgs {
            managed_command: Some(CommandLine(vec!["app".into(), "{port}".into()])),
            managed_port: Some(8000),
            managed_env: vec![("MODE".into(), "prod".into())],
            max: Some(2),
            queue_max: Some(10),
            ..ManagedArgs::default()
        };
        let v = serde_json::to_value(spec(&args).unwrap()).unwrap();
        assert_eq!(v["compute"], "process");
        assert_eq!(
            v["process"],
            json!({"command": ["app", "{port}"], "env": {"MODE": "prod"}})
        );
        assert_eq!(
            (v["port"].clone(), v["max"].clone()),
            (json!(8000), json!(2))
        );
        assert_eq!(v["queue"], json!({"max_requests": 10, "max_wait_ms": null}));
        assert!(v["vm"].is_null() && v["min"].is_null());
    }

    fn parse(args: &[&str]) -> Result<crate::args::Cli, clap::Error> {
        use clap::Parser;
        crate::args::Cli::try_parse_from(["lbctl"].iter().chain(args))
    }

    #[test]
    fn managed_flags_parse_into_backend_managed() {
        let cli = parse(&[
            "instance",
            "create",
            "app",
            "--project",
            "demo",
            "--type",
            "http",
            "--managed-command",
            "python3 -m http.server {port} --bind '{address}'",
            "--managed-port",
            "8000",
            "--managed-env",
            "A=1",
            "--managed-env",
            "B=2",
            "--managed-cwd",
            "/srv",
            "--min",
            "1",
            "--max",
            "3",
            "--target-in-flight",
            "5",
            "--idle-timeout",
            "60",
            "--start-timeout",
            "10",
            "--queue-max",
            "20",
            "--queue-max-wait-ms",
            "500",
            "--min-nodes",
            "2",
        ])
        .unwrap();
        let env = super::super::request(&cli.command).unwrap().envelope;
        let info = &env.info;
        assert_eq!(info["min_nodes"], 2, "--min is not --min-nodes");
        assert!(info["backend"]
            .get("entities")
            .is_none_or(|e| e == &json!([])));
        assert_eq!(
            info["backend"]["managed"],
            json!({"compute": "process", "port": 8000, "min": 1, "max": 3,
                "target_in_flight": 5, "idle_timeout": 60, "start_timeout": 10,
                "queue": {"max_requests": 20, "max_wait_ms": 500},
                "process": {"command": ["python3", "-m", "http.server", "{port}", "--bind", "{address}"],
                            "env": {"A": "1", "B": "2"}, "cwd": "/srv"}})
        );
        // VM flags; a managed flag without a template, or with --backend, is refused.
        let cli = parse(&[
            "instance",
            "update",
            "app",
            "--project",
            "demo",
            "--managed-vm-kernel",
            "/k",
            "--managed-vm-initrd",
            "/i",
            "--managed-vm-cmdline",
            "console=ttyS0",
            "--managed-vm-memory-mb",
            "256",
            "--managed-port",
            "80",
        ])
        .unwrap();
        let env = super::super::request(&cli.command).unwrap().envelope;
        let vm = &env.info["backend"]["managed"]["vm"];
        assert_eq!(vm["memory_mb"], 256);
        assert_eq!(vm["cmdline"], "console=ttyS0");
        assert!(parse(&[
            "instance",
            "update",
            "app",
            "--project",
            "demo",
            "--max",
            "3"
        ])
        .is_err());
        assert!(parse(&[
            "instance",
            "create",
            "app",
            "--project",
            "demo",
            "--type",
            "http",
            "--backend",
            "10.0.0.1:80",
            "--managed-command",
            "app",
        ])
        .is_err());
        assert!(parse(&[
            "instance",
            "create",
            "app",
            "--project",
            "demo",
            "--type",
            "http"
        ])
        .is_err());
    }

    #[test]
    fn vm_flags_make_a_vm_pool_and_no_template_makes_none() {
        let args = ManagedArgs {
            managed_vm_kernel: Some("/k".into()),
            managed_vm_initrd: Some("/i".into()),
            managed_port: Some(80),
            ..ManagedArgs::default()
        };
        let s = spec(&args).unwrap();
        assert_eq!(s.compute, Some(ManagedCompute::Vm));
        let vm = s.vm.unwrap();
        assert_eq!(
            (vm.kernel.as_str(), vm.initrd.as_deref()),
            ("/k", Some("/i"))
        );
        assert!(s.queue.is_none());
        assert_eq!(spec(&ManagedArgs::default()), None);
    }
}
