//! The L7 policy through a real lbd: validation codes that leave the store
//! as it was, secrets that never leave lbd, credentials kept by name,
//! routing through the real lb-node lbd started, live rule updates, and the
//! serving-node count pushed to every node.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{wait_for, Lbd};
use serde_json::{json, Value};

const PASSWORD: &str = "correct-horse-battery";
const API_KEY: &str = "key-0123456789abcdef";

fn create_project(lbd: &Lbd) {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
}

fn create(lbd: &Lbd, info: Value) -> (u16, Value) {
    lbd.api(&json!({"action": "create", "type": "instance", "info": info}))
}

fn update(lbd: &Lbd, name: &str, fields: Value) -> (u16, Value) {
    let mut info = json!({"project": "demo", "name": name});
    for (k, v) in fields.as_object().unwrap() {
        info[k] = v.clone();
    }
    lbd.api(&json!({"action": "update", "type": "instance", "info": info}))
}

fn instance_info(name: &str, backend: &str, extra: Value) -> Value {
    let mut info = json!({"name": name, "project": "demo", "traffic_type": "http", "port": 8080,
                          "backend": {"entities": [backend]}});
    for (k, v) in extra.as_object().unwrap() {
        info[k] = v.clone();
    }
    info
}

/// What the store holds as desired for an instance, as `info` shows it.
fn desired(lbd: &Lbd, name: &str) -> Value {
    let info = lbd.instance("demo", name);
    let keep = [
        "pools",
        "rules",
        "auth",
        "rate_limits",
        "backend",
        "port",
        "updated_at",
    ];
    keep.iter()
        .map(|k| (k.to_string(), info[k].clone()))
        .collect()
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

/// A policy with a pool, a path rule, a rule needing a group and basic auth.
fn policy(pool_member: &str) -> Value {
    json!({
        "pools": {"api": {"entities": [pool_member]}},
        "rules": [
            {"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}},
            {"name": "ops", "match": {"path_prefix": "/ops/"}, "require_groups": ["ops"],
             "action": {"pool": "default"}}
        ],
        "auth": {"mode": "basic", "users": [{"name": "ann", "password": PASSWORD, "groups": ["ops"]}]},
        "rate_limits": [{"name": "ip", "key": "client_ip", "period": 10, "threshold": 1000}]
    })
}

/// Bad policies, each with the code it must get.
fn bad_cases() -> Vec<(Value, &'static str)> {
    let reject = json!({"reject": 403});
    vec![
        (
            json!({"rules": [{"name": "a", "action": {"pool": "nope"}}]}),
            "unknown_pool",
        ),
        (
            json!({"rules": [{"name": "a", "match": {"path_regex": "(unclosed"}, "action": reject}]}),
            "invalid_regex",
        ),
        (
            json!({"rules": [{"name": "a", "match": {"path_prefix": "/x"}}]}),
            "missing_rule_action",
        ),
        (
            json!({"rate_limits": [{"name": "l", "key": "client_ip", "period": 0, "threshold": 5}]}),
            "invalid_rate_limit_period",
        ),
        (
            json!({"rate_limits": [{"name": "l", "key": "client_ip", "period": 10, "threshold": 0}]}),
            "invalid_rate_limit_threshold",
        ),
        (
            json!({"auth": {"mode": "service", "url": "ftp://127.0.0.1/auth"}}),
            "invalid_auth_url",
        ),
        (
            json!({"rules": [{"name": "a", "action": reject}, {"name": "a", "action": reject}]}),
            "duplicate_rule",
        ),
    ]
}

#[test]
fn bad_policies_get_their_own_codes_and_change_nothing() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let (s, v) = create(
        &lbd,
        instance_info("web", "127.0.0.1:9", policy("127.0.0.1:10")),
    );
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("demo", "web");
    let before = desired(&lbd, "web");

    for (fields, expected) in bad_cases() {
        let answer = create(&lbd, instance_info("bad", "127.0.0.1:9", fields.clone()));
        assert_eq!(code(&answer), (422, expected), "create {fields}");
        let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
                                     "info": {"project": "demo", "name": "bad"}}));
        assert_eq!(
            (s, &v["error"]["code"]),
            (404, &json!("instance_not_found"))
        );

        let answer = update(&lbd, "web", fields.clone());
        assert_eq!(code(&answer), (422, expected), "update {fields}");
        assert_eq!(desired(&lbd, "web"), before, "after update {fields}");
    }
    // Cross-checks on the merged result: a rule left naming a removed pool,
    // require_groups left without auth.
    assert_eq!(
        code(&update(&lbd, "web", json!({"pools": {}}))),
        (422, "unknown_pool")
    );
    assert_eq!(
        code(&update(&lbd, "web", json!({"auth": "none"}))),
        (422, "invalid_rule")
    );
    // Policy fields on a tcp instance.
    let mut tcp = instance_info("db", "127.0.0.1:9", json!({"rules": []}));
    tcp["traffic_type"] = json!("tcp");
    assert_eq!(code(&create(&lbd, tcp)), (400, "invalid_field"));
    assert_eq!(desired(&lbd, "web"), before);
}

/// The argon2 hash of the instance's first basic user, from the stored spec.
fn stored_hash(lbd: &Lbd, name: &str) -> String {
    let db = rusqlite::Connection::open_with_flags(
        lbd.state.0.join("lbaas.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let spec: String = db
        .query_row("SELECT spec FROM instances WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .unwrap();
    let spec: Value = serde_json::from_str(&spec).unwrap();
    spec["policy"]["auth"]["users"][0]["hash"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn secrets_never_leave_lbd_and_credentials_are_kept_by_name() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let mut extra = policy("127.0.0.1:10");
    extra["rules"].as_array_mut().unwrap().push(json!({
        "name": "keys", "match": {"path_prefix": "/k/"}, "action": {"pool": "default"},
        "auth": {"mode": "api_key", "keys": [{"name": "ci", "key": API_KEY, "groups": ["ci"]}]}
    }));
    let (s, created) = create(&lbd, instance_info("web", "127.0.0.1:9", extra));
    assert_eq!(s, 200, "{created}");
    let hash = stored_hash(&lbd, "web");
    assert!(hash.starts_with("$argon2id$"), "stored as argon2: {hash}");
    // The hashes live in lbd's database, readable by lbd's user only.
    for file in ["lbaas.db", "lbaas.db-wal"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lbd.state.0.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{file} mode {mode:o}");
    }
    let shown = lbd.wait_active("demo", "web");
    let (_, listed) =
        lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "demo"}}));
    for answer in [created.to_string(), shown.to_string(), listed.to_string()] {
        for secret in [PASSWORD, API_KEY, "$argon2", "\"hash\"", "\"password\""] {
            assert!(!answer.contains(secret), "{secret} shown: {answer}");
        }
    }
    assert_eq!(shown["auth"]["users"][0]["name"], "ann");
    assert_eq!(shown["rules"][2]["auth"]["keys"][0]["name"], "ci");

    // Groups changed without resending the password: the hash stays.
    let users = json!({"mode": "basic", "users": [{"name": "ann", "groups": ["ops", "dev"]}]});
    let (s, v) = update(&lbd, "web", json!({"auth": users}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored_hash(&lbd, "web"), hash);
    let shown = lbd.wait_active("demo", "web");
    assert_eq!(shown["auth"]["users"][0]["groups"], json!(["ops", "dev"]));
    // What info shows, sent back as it is (lbctl's way), keeps everything.
    let fields: Value = ["pools", "rules", "auth", "rate_limits"]
        .iter()
        .map(|k| (k.to_string(), shown[k].clone()))
        .collect();
    let (s, v) = update(&lbd, "web", fields);
    assert_eq!(s, 200, "{v}");
    assert_eq!(stored_hash(&lbd, "web"), hash);
    lbd.wait_active("demo", "web");
    // A new name needs its secret.
    let new_user = json!({"mode": "basic", "users": [{"name": "bob", "groups": ["ops"]}]});
    assert_eq!(
        code(&update(&lbd, "web", json!({"auth": new_user}))),
        (422, "invalid_auth")
    );
    let log = lbd.stderr();
    for secret in [PASSWORD, API_KEY, "$argon2"] {
        assert!(!log.contains(secret), "{secret} in lbd's log");
    }
}

fn node_addr(info: &Value, i: usize) -> SocketAddr {
    let address = info["nodes"][i]["address"]
        .as_str()
        .expect("a node address");
    format!("{address}:8080").parse().unwrap()
}

#[test]
fn a_path_rule_reaches_its_pool_through_the_node_and_changes_live() {
    let (default, api) = (HttpBackend::start("default"), HttpBackend::start("api"));
    let lbd = Lbd::start();
    create_project(&lbd);
    let extra = json!({
        "pools": {"api": {"entities": [api.addr().to_string()]}},
        "rules": [{"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]
    });
    let (s, v) = create(
        &lbd,
        instance_info("web", &default.addr().to_string(), extra),
    );
    assert_eq!(s, 200, "{v}");
    let node = node_addr(&lbd.wait_active("demo", "web"), 0);
    assert_eq!(http_get(node, "/api/users").unwrap(), (200, "api".into()));
    assert_eq!(http_get(node, "/users").unwrap(), (200, "default".into()));

    // Requests keep flowing while the rules change: none fails.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                answers.push(http_get(node, "/api/users").map_err(|e| e.to_string()));
            }
            answers
        })
    };
    let moved =
        json!([{"name": "api", "match": {"path_prefix": "/v2/"}, "action": {"pool": "api"}}]);
    let (s, v) = update(&lbd, "web", json!({"rules": moved}));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("demo", "web");
    wait_for("the new rules", Duration::from_secs(10), || {
        (http_get(node, "/api/users").ok()? == (200, "default".into())).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let answers = load.join().unwrap();
    assert!(!answers.is_empty());
    for a in &answers {
        let (status, body) = a.as_ref().expect("no failed request");
        assert_eq!(*status, 200, "{body}");
        assert!(body == "api" || body == "default", "{body}");
    }
    assert_eq!(http_get(node, "/v2/x").unwrap(), (200, "api".into()));
}

/// The serving-node counts lbd says it pushed to node `id`.
fn pushed_counts(log: &str, id: u64) -> Vec<u32> {
    let prefix = format!("node {id} config version ");
    log.lines()
        .filter_map(|l| l.split_once(&prefix).map(|(_, rest)| rest))
        .filter_map(|rest| rest.split("serving_nodes=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn every_node_gets_the_count_of_serving_nodes() {
    let backend = HttpBackend::start("b");
    let lbd = Lbd::start();
    create_project(&lbd);
    let extra = json!({"min_nodes": 2,
        "rate_limits": [{"name": "ip", "key": "client_ip", "period": 10, "threshold": 10}]});
    let (s, v) = create(
        &lbd,
        instance_info("web", &backend.addr().to_string(), extra),
    );
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "web");
    let ids: Vec<u64> = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{info}");
    for id in &ids {
        assert_eq!(
            pushed_counts(&lbd.stderr(), *id).last(),
            Some(&2),
            "node {id}"
        );
    }
    // Down to one node: the one left gets its new share.
    let (s, v) = update(&lbd, "web", json!({"min_nodes": 1}));
    assert_eq!(s, 200, "{v}");
    wait_for("one serving node", Duration::from_secs(30), || {
        let log = lbd.stderr();
        ids.iter()
            .any(|id| pushed_counts(&log, *id).last() == Some(&1))
            .then_some(())
    });
    // Both nodes still answer meanwhile or after: the node left serves.
    let info = lbd.wait_active("demo", "web");
    let serving = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .position(|n| n["state"] == "running")
        .expect("a running node");
    assert_eq!(http_get(node_addr(&info, serving), "/").unwrap().0, 200);
}

/// `ann:` + [`PASSWORD`], as HTTP Basic.
const BASIC_ANN: &str = "Basic YW5uOmNvcnJlY3QtaG9yc2UtYmF0dGVyeQ==";

#[test]
fn a_user_made_through_lbd_logs_in_at_the_node_and_keeps_the_password_on_update() {
    let backend = HttpBackend::start("b");
    let lbd = Lbd::start();
    create_project(&lbd);
    let extra = json!({
        "auth": {"mode": "basic", "users": [{"name": "ann", "password": PASSWORD, "groups": ["ops"]}]},
        "rules": [{"name": "ops", "match": {"path_prefix": "/ops/"}, "require_groups": ["ops"],
                   "action": {"pool": "default"}}]
    });
    let (s, v) = create(
        &lbd,
        instance_info("web", &backend.addr().to_string(), extra),
    );
    assert_eq!(s, 200, "{v}");
    let node = node_addr(&lbd.wait_active("demo", "web"), 0);
    assert_eq!(common::l7::get(node, "/ops/x", &[]).status, 401);
    let ok = common::l7::get(node, "/ops/x", &[("Authorization", BASIC_ANN)]);
    assert_eq!((ok.status, ok.body.as_str()), (200, "b"));

    // Out of the group, without resending the password: the node still
    // verifies it (the hash was kept) and now refuses the group.
    let users = json!({"mode": "basic", "users": [{"name": "ann", "groups": ["dev"]}]});
    let (s, v) = update(&lbd, "web", json!({"auth": users}));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("demo", "web");
    wait_for(
        "the new groups at the node",
        Duration::from_secs(10),
        || {
            let r = common::l7::get(node, "/ops/x", &[("Authorization", BASIC_ANN)]);
            (r.status == 403).then_some(())
        },
    );
    assert_eq!(
        common::l7::get(node, "/other", &[("Authorization", BASIC_ANN)]).status,
        200
    );
}

/// Requests from one client to `node` until the first 429: how many passed.
fn passed_before_429(node: SocketAddr, most: usize) -> usize {
    (0..most)
        .take_while(|_| common::l7::get(node, "/", &[]).status == 200)
        .count()
}

#[test]
fn node_rate_limits_enforce_the_share_of_the_nodes_serving() {
    let backend = HttpBackend::start("b");
    let lbd = Lbd::start();
    create_project(&lbd);
    let extra = json!({"min_nodes": 2,
        "rate_limits": [{"name": "ip", "key": "client_ip", "period": 3600, "threshold": 6}]});
    let (s, v) = create(
        &lbd,
        instance_info("web", &backend.addr().to_string(), extra),
    );
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "web");
    // 6 per hour over 2 nodes: 3 on each.
    assert_eq!(passed_before_429(node_addr(&info, 0), 10), 3);
    assert_eq!(passed_before_429(node_addr(&info, 1), 10), 3);
}
