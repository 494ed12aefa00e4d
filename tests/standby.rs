//! Standby nodes (`standby_nodes`): booted, configured nodes out of DNS that
//! a failover or a scale-out promotes with no boot. Real lbd, real lb-node
//! processes, DNS read with `dig`, requests over real sockets. Every wait is
//! on a condition with a deadline.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{dig, signal, wait_for, Lbd};
use serde_json::{json, Value};

const NAME: &str = "web.sb.lbaas.internal";

fn create(lbd: &Lbd, backend: &HttpBackend, standby: Value) -> (u16, Value) {
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "sb"}}));
    lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "sb", "traffic_type": "http", "port": 8091,
        "standby_nodes": standby,
        "backend": {"entities": [backend.addr().to_string()],
                    "health-check": {"protocol": "HTTP", "request-path": "/",
                        "criteria": {"interval": 1, "timeout": 1,
                                     "health-threshold": 2, "unhealth-threshold": 2}}}}}))
}

fn nodes(info: &Value) -> Vec<Value> {
    info["nodes"].as_array().cloned().unwrap_or_default()
}

fn in_state(info: &Value, state: &str) -> Vec<Value> {
    nodes(info)
        .into_iter()
        .filter(|n| n["state"] == state)
        .collect()
}

/// The instance once it has exactly `running` serving nodes and `standby`
/// standbys (and nothing else).
fn wait_for_roles(lbd: &Lbd, running: usize, standby: usize) -> Value {
    wait_for(
        &format!("{running} running and {standby} standby nodes"),
        Duration::from_secs(30),
        || {
            let info = lbd.instance("sb", "web");
            let counts = (
                in_state(&info, "running").len(),
                in_state(&info, "standby").len(),
                nodes(&info).len(),
            );
            (counts == (running, standby, running + standby)).then_some(info)
        },
    )
}

fn addr(node: &Value) -> SocketAddr {
    format!("{}:8091", node["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

fn ip(node: &Value) -> String {
    node["address"].as_str().unwrap().to_string()
}

/// `lbctl instance update web --project sb FLAG VALUE`.
fn update(lbd: &Lbd, flag: &str, value: &str) {
    lbd.lbctl_ok(&["instance", "update", "web", "--project", "sb", flag, value]);
}

fn events(lbd: &Lbd, kind: &str) -> Vec<Value> {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
        "info": {"project": "sb", "name": "web", "history": 3600}}));
    assert_eq!(s, 200, "{v}");
    v["info"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[test]
fn kill_9_promotes_the_standby_into_dns_and_a_new_standby_boots() {
    let backend = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--failover-grace", "2"]);
    let (s, v) = create(&lbd, &backend, json!(1));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("sb", "web");
    let info = wait_for_roles(&lbd, 1, 1);
    assert_eq!(info["standby_nodes"], 1, "{info}");
    let (running, standby) = (
        in_state(&info, "running")[0].clone(),
        in_state(&info, "standby")[0].clone(),
    );
    // Only the serving node is in DNS; the standby is configured all the
    // same: it answers a request sent to it directly.
    assert_eq!(dig(lbd.dns, NAME, false).0, vec![ip(&running)]);
    assert_eq!(http_get(addr(&standby), "/").unwrap(), (200, "a".into()));
    assert!(!events(&lbd, "node_standby").is_empty());

    signal(running["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    wait_for("DNS on the standby", Duration::from_secs(10), || {
        (dig(lbd.dns, NAME, false).0 == vec![ip(&standby)]).then_some(())
    });
    let info = lbd.instance("sb", "web");
    let promoted = nodes(&info)
        .into_iter()
        .find(|n| n["id"] == standby["id"])
        .expect("the standby is still there");
    assert_eq!(promoted["state"], "running", "{info}");
    // The same process: promoted, not booted.
    assert_eq!(promoted["pid"], standby["pid"], "{info}");
    assert_eq!(http_get(addr(&standby), "/").unwrap(), (200, "a".into()));
    let promotions = events(&lbd, "node_promoted");
    assert_eq!(promotions.len(), 1, "{promotions:?}");
    assert_eq!(promotions[0]["node_id"], standby["id"]);

    // Behind it a new standby boots, and the failed node goes after grace.
    let info = wait_for_roles(&lbd, 1, 1);
    let new_standby = in_state(&info, "standby")[0].clone();
    assert_ne!(new_standby["id"], standby["id"]);
    assert_ne!(new_standby["id"], running["id"]);
    assert_eq!(dig(lbd.dns, NAME, false).0, vec![ip(&standby)]);

    // A standby that dies is replaced, not failed over: DNS stays.
    signal(new_standby["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    let info = wait_for("a third standby", Duration::from_secs(30), || {
        let info = lbd.instance("sb", "web");
        in_state(&info, "standby")
            .into_iter()
            .any(|n| n["id"] != new_standby["id"] && n["id"] != running["id"])
            .then_some(info)
    });
    assert_eq!(in_state(&info, "running").len(), 1, "{info}");
    assert_eq!(dig(lbd.dns, NAME, false).0, vec![ip(&standby)]);
    assert_eq!(events(&lbd, "node_promoted").len(), 1);
}

#[test]
fn standby_nodes_are_validated_and_follow_updates_and_scale_out() {
    let backend = HttpBackend::start("a");
    let lbd = Lbd::start();
    for bad in [json!(-1), json!(17)] {
        let (s, v) = create(&lbd, &backend, bad.clone());
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (422, Some("invalid_auto_scaling")),
            "{bad}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("standby_nodes"),
            "{v}"
        );
    }
    let (s, v) = create(&lbd, &backend, json!("two"));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_field")),
        "{v}"
    );
    let (_, list) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "sb"}}));
    assert_eq!(list["info"], json!([]), "refused creates stored nothing");

    let (s, v) = create(&lbd, &backend, json!(0));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("sb", "web");
    let info = wait_for_roles(&lbd, 1, 0);
    let first = in_state(&info, "running")[0].clone();

    // lbctl adds a standby; a refused update changes nothing.
    let before = lbd.desired_instance("sb", "web");
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance",
        "info": {"project": "sb", "name": "web", "standby_nodes": 99}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_auto_scaling")),
        "{v}"
    );
    assert_eq!(lbd.desired_instance("sb", "web"), before);
    update(&lbd, "--standby-nodes", "1");
    let info = wait_for_roles(&lbd, 1, 1);
    let standby = in_state(&info, "standby")[0].clone();
    assert_eq!(dig(lbd.dns, NAME, false).0, vec![ip(&first)]);
    let shown = lbd.lbctl_ok(&["instance", "info", "web", "--project", "sb"]);
    assert!(shown.contains("1 standby"), "{shown}");
    assert!(shown.contains("standby"), "{shown}");

    // Scale-out promotes the standby (no boot) and boots a new standby.
    update(&lbd, "--min-nodes", "2");
    let info = wait_for_roles(&lbd, 2, 1);
    let running: Vec<Value> = in_state(&info, "running");
    assert!(
        running
            .iter()
            .any(|n| n["id"] == standby["id"] && n["pid"] == standby["pid"]),
        "{info}"
    );
    let mut want = vec![ip(&first), ip(&standby)];
    want.sort();
    wait_for("DNS names both", Duration::from_secs(10), || {
        let mut got = dig(lbd.dns, NAME, false).0;
        got.sort();
        (got == want).then_some(())
    });

    // Scale-in retires a serving node and keeps the standby; then the
    // standby retires when none is wanted.
    update(&lbd, "--min-nodes", "1");
    let info = wait_for_roles(&lbd, 1, 1);
    assert_eq!(dig(lbd.dns, NAME, false).0.len(), 1, "{info}");
    update(&lbd, "--standby-nodes", "0");
    let info = wait_for_roles(&lbd, 1, 0);
    let left = in_state(&info, "running")[0].clone();
    assert_eq!(dig(lbd.dns, NAME, false).0, vec![ip(&left)]);
    assert_eq!(http_get(addr(&left), "/").unwrap(), (200, "a".into()));
}
