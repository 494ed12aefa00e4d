//! Managed pools through a real lbd's API (issue 16): every bad input has
//! its own code and leaves the store as it was, env values never leave lbd
//! (info, audit log, lbd's log), and `info usage` answers its shape, checks
//! its window and who may read it.

mod common;

use common::Lbd;
use serde_json::{json, Value};

const SECRET: &str = "s3cret-env-value-42";

fn create_project(lbd: &Lbd, name: &str) {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": name}}));
    assert_eq!(s, 200, "{v}");
}

fn create(lbd: &Lbd, info: Value) -> (u16, Value) {
    lbd.api(&json!({"action": "create", "type": "instance", "info": info}))
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

fn process(command: Value) -> Value {
    json!({"compute": "process", "process": {"command": command}, "port": 8000})
}

/// A managed http instance `name` of project `demo`; `managed` is merged
/// over a valid process pool.
fn managed_instance(name: &str, traffic: &str, managed: Value) -> Value {
    let mut m = process(json!([
        "python3",
        "-m",
        "http.server",
        "{port}",
        "--bind",
        "{address}"
    ]));
    for (k, v) in managed.as_object().unwrap() {
        m[k] = v.clone();
    }
    json!({"name": name, "project": "demo", "traffic_type": traffic, "port": 8080,
           "backend": {"entities": [], "managed": m}})
}

/// The instances of `demo` as `info` shows them, without what the
/// reconciler changes on its own (statuses, nodes, events, samples).
fn instances(lbd: &Lbd) -> Value {
    let (s, v) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let keep = ["name", "backend", "pools", "port", "updated_at"];
    v["info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let kept: serde_json::Map<String, Value> =
                keep.iter().map(|k| (k.to_string(), i[k].clone())).collect();
            Value::Object(kept)
        })
        .collect::<Vec<_>>()
        .into()
}

#[test]
fn each_bad_managed_pool_has_its_own_code_and_changes_nothing() {
    // VM images may come only from here (and /nonexistent is not a dir at all).
    let lbd = Lbd::start_with(&["--backend-image-dir", "/nonexistent"]);
    create_project(&lbd, "demo");
    let (s, v) = create(&lbd, managed_instance("web", "http", json!({})));
    assert_eq!(s, 200, "{v}");
    // Updates of a PENDING_* instance are refused before validation.
    lbd.wait_active("demo", "web");
    let before = instances(&lbd);
    let update = |managed: Value| {
        lbd.api(&json!({"action": "update", "type": "instance", "info": {
            "project": "demo", "name": "web", "backend": {"managed": managed}}}))
    };
    let vm = |kernel: &str| json!({"compute": "vm", "vm": {"kernel": kernel}, "port": 80});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "empty command",
            json!({"process": {"command": []}}),
            "empty_command",
        ),
        (
            "blank program",
            json!({"process": {"command": ["  "]}}),
            "empty_command",
        ),
        (
            "max < min",
            json!({"min": 3, "max": 2}),
            "invalid_managed_scale",
        ),
        ("port 0", json!({"port": 0}), "invalid_port"),
        (
            "unknown placeholder",
            json!({"process": {"command": ["app", "{prot}"]}}),
            "unknown_placeholder",
        ),
        (
            "unknown placeholder in env",
            json!({"process": {"command": ["app"], "env": {"A": "{home}"}}}),
            "unknown_placeholder",
        ),
        ("no template", json!({"process": null}), "missing_template"),
        ("no port", json!({"port": null}), "missing_field"),
    ];
    for (what, managed, want) in &cases {
        // On create (a new name) and on update of the stored instance.
        let a = create(&lbd, managed_instance("new", "http", managed.clone()));
        assert_eq!(code(&a).1, *want, "create with {what}: {}", a.1);
        let full = managed_instance("web", "http", managed.clone())["backend"]["managed"].clone();
        let a = update(full);
        assert_eq!(code(&a).1, *want, "update with {what}: {}", a.1);
        assert_eq!(instances(&lbd), before, "{what} changed the store");
    }
    let a = create(
        &lbd,
        managed_instance("new", "http", vm("/nonexistent/vmlinuz")),
    );
    assert_eq!(code(&a), (422, "kernel_not_found"), "{}", a.1);
    let a = update(vm("/nonexistent/vmlinuz"));
    assert_eq!(code(&a), (422, "kernel_not_found"), "{}", a.1);
    // Outside the image dirs, a file that exists and one that does not get
    // the same answer: lbd's host is not probed.
    for path in [
        "/etc/hostname",
        "/etc/no-such-file",
        "/nonexistent/../etc/hostname",
    ] {
        let a = update(vm(path));
        assert_eq!(code(&a), (422, "vm_image_not_allowed"), "{path}: {}", a.1);
    }
    let per_resource = json!({"per_resource": {"path_segment": 1}});
    let a = create(&lbd, managed_instance("tcp1", "tcp", per_resource));
    assert_eq!(code(&a), (422, "per_resource_needs_http"), "{}", a.1);
    let mut with_entities = managed_instance("new", "http", json!({}));
    with_entities["backend"]["entities"] = json!(["127.0.0.1:9000"]);
    let a = create(&lbd, with_entities);
    assert_eq!(code(&a), (422, "managed_with_entities"), "{}", a.1);
    // A named pool's managed is checked the same way (and its kernel too).
    let mut pool = json!({"name": "new", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9000"]},
        "pools": {"api": {"entities": [], "managed": vm("/nonexistent/api-kernel")}}});
    let a = create(&lbd, pool.clone());
    assert_eq!(code(&a), (422, "kernel_not_found"), "{}", a.1);
    pool["pools"]["api"]["managed"] = process(json!([]));
    let a = create(&lbd, pool);
    assert_eq!(code(&a), (422, "empty_command"), "{}", a.1);
    assert_eq!(instances(&lbd), before, "no refused request left anything");
}

#[test]
fn a_managed_instance_shows_in_info_with_env_values_redacted_everywhere() {
    let lbd = Lbd::start();
    create_project(&lbd, "demo");
    let mut info = managed_instance(
        "web",
        "http",
        json!({"min": 0, "max": 2, "idle_timeout": 60}),
    );
    info["backend"]["managed"]["process"]["env"] =
        json!({"API_TOKEN": SECRET, "MODE": "{instance}"});
    info["pools"] = json!({"api": {"entities": [], "managed": {"compute": "process", "port": 9000,
        "process": {"command": ["app", "{port}"], "env": {"KEY": SECRET}}}}});
    let (s, created) = create(&lbd, info);
    assert_eq!(s, 200, "{created}");
    let shown = lbd.instance("demo", "web");
    let m = &shown["backend"]["managed"];
    assert_eq!(m["compute"], "process");
    assert_eq!(
        m["process"]["command"],
        json!([
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--bind",
            "{address}"
        ])
    );
    assert_eq!((m["min"].clone(), m["max"].clone()), (json!(0), json!(2)));
    assert_eq!(
        (m["idle_timeout"].clone(), m["start_timeout"].clone()),
        (json!(60), json!(30))
    );
    assert_eq!(
        m["queue"],
        json!({"max_requests": 1000, "max_wait_ms": 30000})
    );
    assert_eq!(
        m["process"]["env"],
        json!({"API_TOKEN": "***", "MODE": "***"})
    );
    assert_eq!(
        shown["pools"]["api"]["managed"]["process"]["env"],
        json!({"KEY": "***"})
    );
    assert_eq!(shown["backend"]["entities"], json!([]));
    // Empty lists are left out of the answer.
    assert!(
        shown["backends"].as_array().is_none_or(|b| b.is_empty()),
        "no backend runs before a request: {shown}"
    );
    // Nowhere else either: the create's answer, the project, the audit log, lbd's log.
    let (_, project) =
        lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "demo"}}));
    let (_, audit) = lbd.api(&json!({"action": "info", "type": "audit", "info": {}}));
    for (what, text) in [
        ("the create's answer", created.to_string()),
        ("info instance", shown.to_string()),
        ("info project", project.to_string()),
        ("the audit log", audit.to_string()),
        ("lbd's log", lbd.stderr()),
    ] {
        assert!(!text.contains(SECRET), "{what} shows the env value: {text}");
    }
}

#[test]
fn usage_answers_its_shape_checks_its_window_and_its_reader() {
    let lbd = Lbd::start();
    create_project(&lbd, "demo");
    let usage = |token: &str, info: Value| {
        let body = json!({"action": "info", "type": "usage", "info": info});
        lbd.api_raw(serde_json::to_vec(&body).unwrap(), Some(token))
    };
    let (s, v) = usage(&lbd.token, json!({"project": "demo"}));
    assert_eq!(s, 200, "{v}");
    let report = &v["info"];
    assert_eq!(report["project"], "demo");
    assert_eq!(report["instances"], json!([]));
    for field in [
        "backend_seconds",
        "node_seconds",
        "starts",
        "cold_starts",
        "requests",
    ] {
        assert!(report["totals"][field].is_number(), "{field} in {report}");
    }
    assert!(
        report.get("since").is_none(),
        "an open window is left out: {report}"
    );

    let (s, v) = usage(
        &lbd.token,
        json!({"project": "demo", "since": "2026-12-01", "until": "2026-12-01"}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["since"], "2026-12-01T00:00:00.000Z");
    assert_eq!(v["info"]["until"], "2026-12-01T23:59:59.999Z");
    let (s, v) = usage(
        &lbd.token,
        json!({"project": "demo", "since": "2026-12-01T10:00:00+02:00"}),
    );
    assert_eq!(
        (s, v["info"]["since"].clone()),
        (200, json!("2026-12-01T08:00:00.000Z"))
    );

    for bad in [
        json!({"project": "demo", "since": "yesterday"}),
        json!({"project": "demo", "until": "2026-02-30"}),
        json!({"project": "demo", "since": "2026-12-02", "until": "2026-12-01"}),
    ] {
        let a = usage(&lbd.token, bad.clone());
        assert_eq!(code(&a), (400, "invalid_time"), "{bad}: {}", a.1);
    }
    let a = usage(&lbd.token, json!({"project": "nope"}));
    assert_eq!(code(&a), (404, "project_not_found"));

    // A member reads its own project's usage, not another user's.
    let alice = lbd.add_user("alice", "member");
    let bob = lbd.add_user("bob", "member");
    let body = json!({"action": "create", "type": "project", "info": {"name": "alices"}});
    let (s, v) = lbd.api_raw(serde_json::to_vec(&body).unwrap(), Some(&alice));
    assert_eq!(s, 200, "{v}");
    let (s, v) = usage(&alice, json!({"project": "alices"}));
    assert_eq!(
        (s, v["info"]["project"].clone()),
        (200, json!("alices")),
        "{v}"
    );
    let a = usage(&bob, json!({"project": "alices"}));
    assert_eq!(code(&a), (404, "project_not_found"), "{}", a.1);
    let a = usage(&alice, json!({"project": "demo"}));
    assert_eq!(code(&a), (404, "project_not_found"), "{}", a.1);
}
