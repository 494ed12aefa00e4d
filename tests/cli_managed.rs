//! `lbctl` with managed backends against a real lbd (issue 16): the
//! `--managed-*` flags make `backend.managed` (the command split like a
//! shell would), `instance backends` and `project usage` read it back.

mod common;

use common::Lbd;
use serde_json::Value;

#[test]
fn managed_command_create_and_update_set_backend_managed() {
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "app",
        "--project",
        "demo",
        "--type",
        "http",
        "--port",
        "8080",
        "--managed-port",
        "8000",
        "--managed-command",
        "python3 -m http.server {port} --bind '{address}'",
        "--managed-env",
        "APP_ENV=prod",
        "--min",
        "0",
        "--max",
        "2",
        "--idle-timeout",
        "60",
        "--queue-max",
        "50",
        "--no-wait",
    ]);
    let info = lbd.instance("demo", "app");
    let m = &info["backend"]["managed"];
    assert_eq!(m["compute"], "process");
    assert_eq!(
        m["process"]["command"],
        serde_json::json!([
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--bind",
            "{address}"
        ])
    );
    assert_eq!(m["process"]["env"]["APP_ENV"], "***");
    assert_eq!(
        (m["port"].as_u64(), m["max"].as_u64()),
        (Some(8000), Some(2))
    );
    assert_eq!(m["idle_timeout"].as_u64(), Some(60));
    assert_eq!(m["queue"]["max_requests"].as_u64(), Some(50));

    // The table lists the managed pool; `backends` says none runs yet.
    let text = lbd.lbctl_ok(&["instance", "info", "app", "--project", "demo"]);
    assert!(text.contains("Managed pools:"), "{text}");
    let pool = text
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        pool.contains("python3 -m http.server {port}") && pool.contains("0-2"),
        "{pool}"
    );
    let text = lbd.lbctl_ok(&["instance", "backends", "app", "--project", "demo"]);
    assert!(text.contains("runs no managed backends"), "{text}");
    let json: Value = serde_json::from_str(&lbd.lbctl_ok(&[
        "instance",
        "backends",
        "app",
        "--project",
        "demo",
        "-o",
        "json",
    ]))
    .unwrap();
    // An empty list is left out of the answer.
    assert!(
        json["backends"].as_array().is_none_or(|b| b.is_empty()),
        "{json}"
    );

    // A refused flag value is the API's code, and a flag without a template is a usage error.
    let out = lbd.lbctl(&[
        "instance",
        "create",
        "bad",
        "--project",
        "demo",
        "--type",
        "http",
        "--managed-port",
        "8000",
        "--managed-command",
        "app {nope}",
        "--no-wait",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_placeholder"));
    let out = lbd.lbctl(&[
        "instance",
        "update",
        "app",
        "--project",
        "demo",
        "--max",
        "3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn per_resource_flags_set_per_resource_and_a_tcp_instance_refuses_them() {
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let create = |name: &str, kind: &str| {
        lbd.lbctl(&[
            "instance",
            "create",
            name,
            "--project",
            "demo",
            "--type",
            kind,
            "--port",
            "8080",
            "--managed-port",
            "8000",
            "--managed-command",
            "app {resource}",
            "--per-resource-segment",
            "2",
            "--per-resource-groups-segment",
            "3",
            "--per-resource-max",
            "5",
            "--per-resource",
            "r1:admins,ops",
            "--per-resource",
            "r2",
            "--no-wait",
        ])
    };
    let out = create("app", "http");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = lbd.instance("demo", "app");
    assert_eq!(
        info["backend"]["managed"]["per_resource"],
        serde_json::json!({"path_segment": 2, "groups_segment": 3, "max_resources": 5,
            "resources": {"r1": {"require_groups": ["admins", "ops"]}, "r2": {}}}),
        "{info}"
    );
    let out = create("tcpapp", "tcp");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("per_resource_needs_http"));
}

#[test]
fn project_usage_prints_the_report_as_json_and_as_a_table() {
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let out = lbd.lbctl_ok(&[
        "project",
        "usage",
        "demo",
        "--since",
        "2026-12-01",
        "-o",
        "json",
    ]);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(report["project"], "demo");
    assert_eq!(report["since"], "2026-12-01T00:00:00.000Z");
    assert_eq!(report["instances"], serde_json::json!([]));
    assert!(report["totals"]["backend_seconds"].is_number(), "{report}");
    let text = lbd.lbctl_ok(&["project", "usage", "demo"]);
    assert!(
        text.starts_with("project demo: from the first record to now"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("TOTAL")), "{text}");
    let out = lbd.lbctl(&["project", "usage", "demo", "--since", "soon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_time"));
}
