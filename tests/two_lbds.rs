//! Two lbds on one host with the same loopback pool (on purpose): each takes
//! project ranges the other does not hold, so both data planes serve, and a
//! restarted or killed lbd keeps its ranges.

mod common;

use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{wait_for, Lbd, TempDir};
use ipnet::Ipv4Net;
use serde_json::{json, Value};

fn create_project(lbd: &Lbd, info: Value) -> Ipv4Net {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": info}));
    assert_eq!(s, 200, "{v}");
    v["info"]["subnet"].as_str().unwrap().parse().unwrap()
}

fn overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[test]
fn two_lbds_sharing_a_pool_take_different_subnets_and_both_serve() {
    // Both see the same lock dir, as every lbd on a host does by default.
    let locks = TempDir::new("subnet-locks");
    let locks_dir = locks.0.to_str().unwrap().to_string();
    let env = [("LBAAS_SUBNET_LOCK_DIR", locks_dir.as_str())];
    let mut first = Lbd::start_with_env(&[], &env);
    let pool = first.slot.pool();
    let second = Lbd::start_with_env(&["--subnet-pool", &pool], &env);
    let backends = [HttpBackend::start("first"), HttpBackend::start("second")];

    let mut subnets = Vec::new();
    for (lbd, backend) in [(&first, &backends[0]), (&second, &backends[1])] {
        subnets.push(create_project(lbd, json!({"name": "demo"})));
        let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"entities": [backend.addr().to_string()]}}}));
        assert_eq!(s, 200, "{v}");
    }
    assert!(
        !overlap(&subnets[0], &subnets[1]),
        "both lbds got {} and {}",
        subnets[0],
        subnets[1]
    );
    for (lbd, backend) in [(&first, &backends[0]), (&second, &backends[1])] {
        let info = lbd.wait_active("demo", "web");
        let node = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap());
        let node = node.parse().unwrap();
        let answer = wait_for("a 200 through the node", Duration::from_secs(10), || {
            http_get(node, "/").ok().filter(|(s, _)| *s == 200)
        });
        assert_eq!(answer, (200, backend.name.clone()), "through {node}");
    }

    // A subnet asked for by name that the other lbd holds: 409, nothing stored.
    let (s, v) = second.api(&json!({"action": "create", "type": "project",
        "info": {"name": "taken", "subnet": subnets[0].to_string()}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("subnet_in_use")),
        "{v}"
    );
    let (s, _) =
        second.api(&json!({"action": "info", "type": "project", "info": {"name": "taken"}}));
    assert_eq!(s, 404);

    // A project with no node holds its range by its lock alone; a killed
    // first lbd takes it again at start (its stale lock file does not stop it).
    let empty = create_project(&first, json!({"name": "empty"}));
    first.crash();
    first.start_again();
    let third = create_project(&second, json!({"name": "third"}));
    for s in [&subnets[0], &empty] {
        assert!(!overlap(&third, s), "{third} overlaps {s} of the first lbd");
    }
    let (s, v) = second.api(&json!({"action": "create", "type": "project",
        "info": {"name": "taken", "subnet": empty.to_string()}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("subnet_in_use")),
        "{v}"
    );
    first.wait_active("demo", "web");

    // Deleting the project gives its range back.
    let (s, v) =
        first.api(&json!({"action": "delete", "type": "project", "info": {"name": "empty"}}));
    assert_eq!(s, 200, "{v}");
    wait_for("project empty gone", Duration::from_secs(20), || {
        let (s, _) =
            first.api(&json!({"action": "info", "type": "project", "info": {"name": "empty"}}));
        (s == 404).then_some(())
    });
    let again = create_project(
        &second,
        json!({"name": "taken", "subnet": empty.to_string()}),
    );
    assert_eq!(again, empty);
}
