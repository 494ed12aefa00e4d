//! lbctl's L7 policy commands against a real lbd: pools, rules (add, list,
//! move, remove), `policy show -o json` and `apply -f` round trips.

mod common;

use common::{Lbd, TempDir};
use serde_json::{json, Value};

const TARGET: [&str; 4] = ["--instance", "web", "--project", "demo"];

fn with_target<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["instance"];
    all.extend_from_slice(args);
    all.extend_from_slice(&TARGET);
    all
}

fn policy_json(lbd: &Lbd) -> Value {
    let out = lbd.lbctl_ok(&with_target(&["-o", "json", "policy", "show"]));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn rule_names(policy: &Value) -> Vec<String> {
    policy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect()
}

fn setup() -> Lbd {
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    lbd.lbctl_ok(&[
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
        "127.0.0.1:9",
    ]);
    lbd
}

#[test]
fn pools_and_rules_are_edited_by_name() {
    let lbd = setup();
    let out = lbd.lbctl_ok(&with_target(&[
        "pool",
        "add",
        "api",
        "--backend",
        "127.0.0.1:10,127.0.0.1:11=2",
        "--algorithm",
        "least_connections",
        "--health-check",
        "http:/healthz",
    ]));
    assert!(
        out.contains("127.0.0.1:11=2") && out.contains("least_connections"),
        "{out}"
    );
    let out = lbd.lbctl_ok(&with_target(&["pool", "list"]));
    assert!(out.lines().next().unwrap().starts_with("POOL"), "{out}");

    let add = |args: &[&str]| lbd.lbctl_ok(&with_target(args));
    add(&[
        "rule",
        "add",
        "api",
        "--path-prefix",
        "/api/",
        "--to",
        "api",
        "--strip-prefix",
    ]);
    add(&[
        "rule",
        "add",
        "old",
        "--path-prefix",
        "/old/",
        "--redirect",
        "https://new.example/",
        "--code",
        "301",
    ]);
    add(&[
        "rule",
        "add",
        "admin",
        "--path-prefix",
        "/admin",
        "--reject",
        "403",
    ]);
    add(&[
        "rule",
        "add",
        "beta",
        "--host",
        "*.example.com",
        "--header",
        "X-Env=beta",
        "--method",
        "GET,HEAD",
        "--to",
        "default",
        "--before",
        "api",
    ]);
    let table = add(&["rule", "list"]);
    assert!(
        table.contains("redirect 301 https://new.example/"),
        "{table}"
    );
    let p = policy_json(&lbd);
    assert_eq!(rule_names(&p), ["beta", "api", "old", "admin"]);
    assert_eq!(p["rules"][1]["action"]["strip_prefix"], true);
    assert_eq!(p["rules"][0]["match"]["header"]["x-env"], "beta");
    assert_eq!(p["pools"]["api"]["algorithm"], "least_connections");

    let info = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(
        info.contains("1 pools, 4 rules, auth none, 0 rate limits"),
        "{info}"
    );

    add(&["rule", "move", "admin", "--before", "beta"]);
    add(&["rule", "move", "beta", "--last"]);
    assert_eq!(
        rule_names(&policy_json(&lbd)),
        ["admin", "api", "old", "beta"]
    );
    add(&["rule", "remove", "old"]);
    assert_eq!(rule_names(&policy_json(&lbd)), ["admin", "api", "beta"]);

    // lbd refuses a pool still in use, with its code; lbctl exits 1.
    let out = lbd.lbctl(&with_target(&["pool", "remove", "api"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown_pool"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // lbctl itself refuses what cannot be done, before sending anything.
    let out = lbd.lbctl(&with_target(&["rule", "remove", "nope"]));
    assert_eq!(out.status.code(), Some(1));
    add(&["rule", "remove", "api"]);
    add(&["pool", "remove", "api"]);
    assert_eq!(policy_json(&lbd)["pools"], json!({}));
}

#[test]
fn policy_show_json_applies_back_as_it_is() {
    let lbd = setup();
    let dir = TempDir::new("policy");
    let file = dir.0.join("policy.json");
    let written = json!({
        "pools": {"api": {"entities": ["127.0.0.1:10"]}},
        "rules": [
            {"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"},
             "require_groups": ["ops"]},
            {"name": "health", "match": {"path_prefix": "/healthz"}, "auth": "none",
             "action": {"respond": {"status": 200, "body": "ok"}}}
        ],
        "auth": {"mode": "basic", "users": [{"name": "ann", "password": "pw-for-ann-1", "groups": ["ops"]}]},
        "rate_limits": [{"name": "ip", "key": "client_ip", "period": 10, "threshold": 100}]
    });
    std::fs::write(&file, written.to_string()).unwrap();
    let path = file.to_str().unwrap();
    lbd.lbctl_ok(&with_target(&["apply", "-f", path]));
    let shown = policy_json(&lbd);
    assert_eq!(rule_names(&shown), ["api", "health"]);
    assert_eq!(shown["auth"]["users"][0]["name"], "ann");
    assert!(!shown.to_string().contains("pw-for-ann-1"), "{shown}");

    // What show prints applies again unchanged (the password kept by name).
    std::fs::write(&file, shown.to_string()).unwrap();
    lbd.lbctl_ok(&with_target(&["apply", "-f", path]));
    assert_eq!(policy_json(&lbd), shown);

    // A file that leaves parts out removes them.
    std::fs::write(&file, json!({"rules": []}).to_string()).unwrap();
    lbd.lbctl_ok(&with_target(&["apply", "-f", path]));
    let empty = policy_json(&lbd);
    assert_eq!(
        empty,
        json!({"pools": {}, "rules": [], "rate_limits": []}),
        "{empty}"
    );
}
