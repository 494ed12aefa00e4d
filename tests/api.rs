//! The action API's contract against a real lbd: every class of bad input
//! gets its status and stable code and leaves the store exactly as it was.

mod common;

use common::{desired_part, Lbd};
use serde_json::{json, Value};

/// Everything the API can show of the store, to compare before and after.
fn snapshot(lbd: &Lbd) -> Value {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "project"}));
    assert_eq!(s, 200, "{v}");
    let mut projects = v["info"].clone();
    // Observed fields move on their own; the desired state must not.
    for p in projects.as_array_mut().unwrap() {
        for i in p["instances"].as_array_mut().unwrap() {
            *i = desired_part(i.take());
        }
    }
    projects
}

#[test]
fn bad_input_gets_a_code_and_changes_nothing() {
    let lbd = Lbd::start();
    // A project's user must exist (tenants): the admin makes john first.
    lbd.add_user("john", "member");
    let (s, v) = lbd.api(
        &json!({"action": "create", "type": "project", "info": {"name": "demo", "user": "john"}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) =
        lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "other"}}));
    assert_eq!(s, 200, "{v}");
    let taken_subnet = v["info"]["subnet"].clone();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9"]}}}));
    assert_eq!(s, 200, "{v}");
    // Settled first, so that nothing is PENDING (which would answer 409 instead).
    lbd.wait_active("demo", "web");
    let before = snapshot(&lbd);

    let inst = |extra: Value| {
        let mut info = json!({"name": "web2", "project": "demo", "traffic_type": "http", "port": 8080,
                              "backend": {"entities": ["127.0.0.1:9"]}});
        for (k, v) in extra.as_object().unwrap() {
            info[k] = v.clone();
        }
        json!({"action": "create", "type": "instance", "info": info}).to_string()
    };
    let cases: Vec<(String, u16, &str)> = vec![
        ("{not json".into(), 400, "malformed_json"),
        ("[]".into(), 400, "invalid_envelope"),
        (json!({"type": "project", "info": {}}).to_string(), 400, "missing_field"),
        (json!({"action": "explode", "type": "project", "info": {}}).to_string(), 400, "unknown_action"),
        (json!({"action": "create", "type": "vm", "info": {}}).to_string(), 400, "unknown_type"),
        (json!({"action": "create", "type": "project", "info": {}}).to_string(), 400, "missing_field"),
        (json!({"action": "create", "type": "project", "info": {"name": 7}}).to_string(), 400, "invalid_field"),
        (json!({"action": "create", "type": "project", "info": {"name": "x", "sbnet": "10.0.0.0/8"}}).to_string(), 400, "unknown_field"),
        (json!({"action": "create", "type": "project", "info": {"name": "Bad_Name"}}).to_string(), 422, "invalid_name"),
        (json!({"action": "create", "type": "project", "info": {"name": "x", "subnet": "127.9.0.1/24"}}).to_string(), 422, "invalid_subnet"),
        (json!({"action": "create", "type": "project", "info": {"name": "x", "subnet": "10.0.0.0/24"}}).to_string(), 422, "invalid_subnet"),
        (json!({"action": "create", "type": "project", "info": {"name": "x", "subnet": taken_subnet}}).to_string(), 409, "subnet_overlap"),
        (json!({"action": "create", "type": "project", "info": {"name": "demo"}}).to_string(), 409, "project_exists"),
        (json!({"action": "info", "type": "project", "info": {"name": "nope"}}).to_string(), 404, "project_not_found"),
        (json!({"action": "delete", "type": "project", "info": {"name": "demo"}}).to_string(), 409, "project_not_empty"),
        (inst(json!({"name": "web"})), 409, "instance_exists"),
        (inst(json!({"project": "nope"})), 404, "project_not_found"),
        (inst(json!({"port": 70000})), 422, "invalid_port"),
        (inst(json!({"port": 9901})), 422, "invalid_port"),
        (inst(json!({"traffic_type": "udp"})), 400, "invalid_field"),
        (inst(json!({"backend": {"entities": ["300.1.1.1:80"]}})), 422, "invalid_backend"),
        (inst(json!({"backend": {"entities": []}})), 422, "invalid_backend"),
        (inst(json!({"backend": {"entities": ["127.0.0.1:9"], "helth-check": {}}})), 400, "unknown_field"),
        (inst(json!({"subnet": "10.9.0.0/24"})), 422, "subnet_mismatch"),
        (json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "nope"}}).to_string(), 404, "instance_not_found"),
        (json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "web", "traffic_type": "tcp"}}).to_string(), 400, "unknown_field"),
        (json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "web", "port": 0}}).to_string(), 422, "invalid_port"),
        (json!({"action": "delete", "type": "instance", "info": {"project": "demo"}}).to_string(), 400, "missing_field"),
    ];
    for (body, status, code) in &cases {
        let (s, v) = lbd.api_raw(body.clone().into_bytes(), Some(&lbd.token));
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap_or("")),
            (*status, *code),
            "{body}: {v}"
        );
        assert_eq!(v["status"], "fail");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }

    // Too large: 413, before anything is parsed.
    let big = format!(
        "{{\"action\":\"create\",\"type\":\"project\",\"info\":{{\"name\":\"{}\"}}}}",
        "a".repeat(2 << 20)
    );
    let (s, v) = lbd.api_raw(big.into_bytes(), Some(&lbd.token));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );

    // No token, wrong token: 401, nothing done.
    let create =
        json!({"action": "create", "type": "project", "info": {"name": "sneaky"}}).to_string();
    for token in [None, Some("wrong")] {
        let (s, v) = lbd.api_raw(create.clone().into_bytes(), token);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
    }
    assert_eq!(snapshot(&lbd), before, "refused requests changed the store");

    // /healthz needs no token.
    let resp = lbd
        .http
        .get(format!("{}/healthz", lbd.url()))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[test]
fn get_with_a_json_body_works_as_the_seed_says() {
    let lbd = Lbd::start();
    lbd.add_user("john", "member");
    let resp = lbd
        .http
        .get(format!("{}/api", lbd.url()))
        .bearer_auth(&lbd.token)
        .body(json!({"action": "create", "type": "project", "info": {"name": "example", "user": "john"}}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().unwrap();
    assert_eq!(v["status"], "successful");
    assert_eq!(v["action"], "create");
    assert_eq!(v["type"], "project");
    assert_eq!(v["info"]["name"], "example");
    assert!(v["info"]["id"].as_i64().unwrap() >= 1);
    assert_eq!(v["info"]["instances"], json!([]));
}

#[test]
fn project_delete_with_instances_needs_force() {
    let lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "full"}}));
    lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "full", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9"]}}}));
    lbd.wait_active("full", "web");
    let out = lbd.lbctl(&["project", "delete", "full"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("project_not_empty"));
    lbd.lbctl_ok(&["project", "delete", "full", "--force"]);
    common::wait_for(
        "project and nodes gone",
        std::time::Duration::from_secs(20),
        || {
            let (s, _) =
                lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "full"}}));
            (s == 404 && lbd.node_pids().is_empty()).then_some(())
        },
    );
}

#[test]
fn allocated_subnets_do_not_overlap() {
    let lbd = Lbd::start();
    let mut subnets = Vec::new();
    for name in ["p1", "p2", "p3"] {
        let (s, v) =
            lbd.api(&json!({"action": "create", "type": "project", "info": {"name": name}}));
        assert_eq!(s, 200, "{v}");
        subnets.push(
            v["info"]["subnet"]
                .as_str()
                .unwrap()
                .parse::<ipnet::Ipv4Net>()
                .unwrap(),
        );
    }
    for (i, a) in subnets.iter().enumerate() {
        assert!(lbd
            .slot
            .pool()
            .parse::<ipnet::Ipv4Net>()
            .unwrap()
            .contains(a));
        for b in &subnets[i + 1..] {
            assert!(
                !a.contains(&b.network()) && !b.contains(&a.network()),
                "{a} overlaps {b}"
            );
        }
    }
}

#[test]
fn backends_into_the_control_plane_or_back_into_the_instance_are_refused() {
    let lbd = Lbd::start();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let subnet: ipnet::Ipv4Net = v["info"]["subnet"].as_str().unwrap().parse().unwrap();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9"]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "web");
    let node = info["nodes"][0]["address"].as_str().unwrap().to_string();
    let spare = std::net::Ipv4Addr::from(u32::from(subnet.network()) + 77);
    let before = snapshot(&lbd);

    let cases = [
        ("169.254.169.254:80".to_string(), "backend_link_local"),
        ("[fe80::1]:80".to_string(), "backend_link_local"),
        (lbd.api.to_string(), "backend_is_control_plane"),
        (lbd.dns.to_string(), "backend_is_control_plane"),
        ("127.0.0.1:9901".to_string(), "backend_is_admin_port"),
        ("10.1.2.3:9901".to_string(), "backend_is_admin_port"),
        (format!("{node}:8080"), "backend_loop"),
        (format!("{spare}:8080"), "backend_loop"),
    ];
    for (backend, code) in &cases {
        // A good backend first: one bad entity is enough to refuse them all.
        let entities = json!(["127.0.0.1:9", backend]);
        let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
            "name": "web2", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"entities": entities}}}));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some(*code)),
            "create with {backend}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(backend.trim_start_matches('[').split(']').next().unwrap()),
            "{v}"
        );
        let (s, v) = lbd.api(
            &json!({"action": "info", "type": "instance", "info": {"project": "demo", "name": "web2"}}),
        );
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (404, Some("instance_not_found")),
            "{v}"
        );

        let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
            "project": "demo", "name": "web", "backend": {"entities": entities}}}));
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some(*code)),
            "update with {backend}: {v}"
        );
    }
    // Moving the listener onto a backend's port makes that backend a loop too.
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
        "project": "demo", "name": "web", "port": 8081,
        "backend": {"entities": [format!("{spare}:8081")]}}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("backend_loop")),
        "{v}"
    );

    assert_eq!(snapshot(&lbd), before, "refused backends changed the store");
    assert_eq!(lbd.instance("demo", "web")["provisioning_status"], "ACTIVE");
}
