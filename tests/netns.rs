//! The `netns` network driver with a real lbd: namespaces, bridge, veth and
//! addresses as designed (checked with `ip -j`), traffic from the host
//! through an LB inside a namespace to a backend on the gateway address, no
//! route out of a namespace, teardown. Needs root; without it each test says
//! so and passes (under CI it fails: `common::require`). Every lbd of a test
//! uses its slot's own names (`t<slot>-<project id>`) and pool
//! (100.(64+slot).0.0/16), and the `Lbd` guard removes whatever is left, also
//! on failure.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{is_root, require, wait_for, Lbd};
use serde_json::{json, Value};

fn skip_unless_root() -> bool {
    !require("root (for the netns driver)", is_root())
}

/// `ip -j [-n NS] ARGS`, parsed.
fn ip_json(netns: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new("ip");
    cmd.arg("-j");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("running ip (install iproute2)");
    if !out.status.success() {
        return json!([]);
    }
    serde_json::from_slice(&out.stdout).unwrap_or(json!([]))
}

fn netns_exists(name: &str) -> bool {
    ip_json(None, &["netns", "list"])
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["name"] == name)
}

fn link<'a>(links: &'a Value, name: &str) -> Option<&'a Value> {
    links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == name)
}

fn addrs_of(netns: Option<&str>, dev: &str) -> Vec<String> {
    let v = ip_json(netns, &["-4", "addr", "show", "dev", dev]);
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

#[test]
fn a_project_namespace_serves_traffic_has_no_way_out_and_is_removed() {
    if skip_unless_root() {
        return;
    }
    let lbd = Lbd::start_with(&["--network", "netns"]);
    let prefix = lbd.slot.netns_prefix();
    let pool: ipnet::Ipv4Net = lbd.slot.netns_pool().parse().unwrap();
    let subnet = pool.subnets(24).unwrap().nth(3).unwrap();
    let gateway = subnet.hosts().next().unwrap();

    let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
        "info": {"name": "net", "subnet": subnet.to_string()}}));
    assert_eq!(s, 200, "{v}");
    let id = v["info"]["id"].as_i64().unwrap();
    let ns = format!("{prefix}-{id}");
    let (host_if, peer_if) = (format!("{prefix}h{id}"), format!("{prefix}n{id}"));
    wait_for("project ACTIVE", Duration::from_secs(20), || {
        let (_, v) =
            lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "net"}}));
        (v["info"]["provisioning_status"] == "ACTIVE").then_some(())
    });

    // As designed: the namespace, its bridge with the veth as a port, the
    // host end with the gateway address.
    assert!(netns_exists(&ns), "namespace {ns} is pinned");
    let inside = ip_json(Some(&ns), &["link", "show"]);
    let bridge = link(&inside, "br0").expect("a bridge in the namespace");
    assert!(bridge["flags"].as_array().unwrap().contains(&json!("UP")));
    let peer = link(&inside, &peer_if).expect("the veth's namespace end");
    assert_eq!(peer["master"], "br0");
    assert!(link(&ip_json(None, &["link", "show"]), &host_if).is_some());
    assert_eq!(addrs_of(None, &host_if), vec![format!("{gateway}/24")]);
    let unreachable = ip_json(None, &["route", "show", "type", "unreachable"]);
    assert!(
        unreachable
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == pool.to_string()),
        "the pool is unreachable from the host: {unreachable}"
    );

    // A backend on the host, on the gateway address; an LB in the namespace.
    let backend = HttpBackend::start_on(SocketAddr::new(gateway.into(), 0), "gw");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "net", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [backend.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("net", "web");
    let node_ip = info["nodes"][0]["address"].as_str().unwrap().to_string();
    assert!(subnet.contains(&node_ip.parse::<std::net::Ipv4Addr>().unwrap()));
    assert_eq!(addrs_of(Some(&ns), "br0"), vec![format!("{node_ip}/24")]);
    let pid = info["nodes"][0]["pid"].as_u64().unwrap();
    let node_ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    let ns_inode = std::fs::metadata(format!("/run/netns/{ns}")).unwrap();
    assert_eq!(
        node_ns.to_string_lossy(),
        format!("net:[{}]", std::os::unix::fs::MetadataExt::ino(&ns_inode)),
        "lb-node runs inside the project namespace"
    );
    let lb: SocketAddr = format!("{node_ip}:8080").parse().unwrap();
    for _ in 0..3 {
        assert_eq!(http_get(lb, "/").unwrap(), (200, "gw".to_string()));
    }

    // No route in the namespace leads out of it: only its own subnet.
    let routes = ip_json(Some(&ns), &["-4", "route", "show", "table", "all"]);
    for r in routes.as_array().unwrap() {
        let dst = r["dst"].as_str().unwrap();
        assert_ne!(dst, "default", "a default route leads out: {r}");
        assert!(r.get("gateway").is_none(), "a route via a gateway: {r}");
        if r["type"] == "local" || r["type"] == "broadcast" || dst.starts_with("127.") {
            continue;
        }
        let net: ipnet::Ipv4Net = if dst.contains('/') {
            dst.parse().unwrap()
        } else {
            format!("{dst}/32").parse().unwrap()
        };
        assert!(subnet.contains(&net), "route outside the subnet: {r}");
    }

    // Teardown: the instance's address goes, then the whole project network.
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "instance",
        "info": {"project": "net", "name": "web"}}));
    assert_eq!(s, 200, "{v}");
    wait_for("node address removed", Duration::from_secs(20), || {
        addrs_of(Some(&ns), "br0").is_empty().then_some(())
    });
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "project", "info": {"name": "net"}}));
    assert_eq!(s, 200, "{v}");
    wait_for("namespace removed", Duration::from_secs(20), || {
        (!netns_exists(&ns) && link(&ip_json(None, &["link", "show"]), &host_if).is_none())
            .then_some(())
    });
}

#[test]
fn subnets_and_backends_the_namespace_cannot_use_are_refused() {
    if skip_unless_root() {
        return;
    }
    let lbd = Lbd::start_with(&["--network", "netns"]);
    let pool: ipnet::Ipv4Net = lbd.slot.netns_pool().parse().unwrap();
    let inside = pool.subnets(24).unwrap().next().unwrap();
    for (subnet, code) in [
        ("10.0.0.0/24".to_string(), "invalid_subnet"),
        ("127.0.0.0/24".to_string(), "invalid_subnet"),
        (format!("{}/30", inside.network()), "invalid_subnet"),
        ("100.64.0.1/24".to_string(), "invalid_subnet"),
        ("not-a-cidr".to_string(), "invalid_subnet"),
    ] {
        let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
            "info": {"name": "bad", "subnet": subnet}}));
        assert_eq!(v["error"]["code"], code, "{subnet}: {v}");
        assert!(s == 422 || s == 400, "{subnet}: {s}");
    }
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
        "info": {"name": "a", "subnet": inside.to_string()}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
        "info": {"name": "b", "subnet": inside.to_string()}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (409, Some("subnet_overlap"))
    );
    // The host's 127.0.0.1 is not reachable from inside a namespace.
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "a", "traffic_type": "http",
        "backend": {"entities": ["127.0.0.1:8080"]}}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_backend")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("gateway"),
        "{v}"
    );
}

#[test]
fn lbd_refuses_netns_without_root_with_a_clear_error() {
    let state = std::env::temp_dir().join(format!("lbaas-noroot-{}", std::process::id()));
    let run = |binary: &std::path::Path| {
        let mut lbd = Command::new(binary);
        if is_root() {
            // Seen from an unprivileged user (nobody), so this runs under CI too.
            use std::os::unix::process::CommandExt;
            lbd.uid(65534).gid(65534);
        }
        lbd.args([
            "--network",
            "netns",
            "--listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .arg("--state-dir")
        .arg(&state)
        .output()
    };
    let built = std::path::Path::new(env!("CARGO_BIN_EXE_lbd"));
    let out = match run(built) {
        Ok(out) => out,
        // The checkout may sit where nobody cannot reach (a 0700 home):
        // run a copy from a directory everyone can read.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let copy = common::TempDir::new("noroot-bin");
            use std::os::unix::fs::PermissionsExt;
            let mode = |m| std::fs::Permissions::from_mode(m);
            std::fs::set_permissions(&copy.0, mode(0o755)).unwrap();
            let lbd = copy.0.join("lbd");
            std::fs::copy(built, &lbd).unwrap();
            std::fs::set_permissions(&lbd, mode(0o755)).unwrap();
            run(&lbd).expect("running a copy of lbd as nobody")
        }
        Err(e) => panic!("running lbd: {e}"),
    };
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(&state);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs root"), "{stderr}");
}

/// The `Name:\tvalue` fields of a /proc status file.
fn proc_status(path: &str) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn nodes_in_a_namespace_drop_root_and_keep_serving() {
    if skip_unless_root() {
        return;
    }
    let lbd = Lbd::start_with(&["--network", "netns"]);
    let pool: ipnet::Ipv4Net = lbd.slot.netns_pool().parse().unwrap();
    let subnet = pool.subnets(24).unwrap().nth(5).unwrap();
    let gateway = subnet.hosts().next().unwrap();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
        "info": {"name": "priv", "subnet": subnet.to_string()}}));
    assert_eq!(s, 200, "{v}");
    // The gateway address exists once the project network is up.
    wait_for("project ACTIVE", Duration::from_secs(20), || {
        let (_, v) =
            lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "priv"}}));
        (v["info"]["provisioning_status"] == "ACTIVE").then_some(())
    });
    let a = HttpBackend::start_on(SocketAddr::new(gateway.into(), 0), "a");
    let b = HttpBackend::start_on(SocketAddr::new(gateway.into(), 0), "b");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "priv", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [a.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("priv", "web");
    let pid = info["nodes"][0]["pid"].as_u64().unwrap();
    let node_ip = info["nodes"][0]["address"].as_str().unwrap().to_string();

    // Every thread of the node (the admin thread and the traffic workers).
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!tasks.is_empty());
    for tid in tasks {
        let status = proc_status(&format!("/proc/{pid}/task/{tid}/status"));
        for key in ["Uid", "Gid"] {
            let ids: Vec<&str> = status[key].split_whitespace().collect();
            assert_eq!(ids.len(), 4, "{key}: {ids:?}");
            assert!(
                ids.iter().all(|id| *id != "0"),
                "thread {tid} {key}: {ids:?}"
            );
        }
        assert_eq!(status["NoNewPrivs"], "1", "thread {tid}");
        for key in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
            assert_eq!(
                u64::from_str_radix(&status[key], 16).unwrap(),
                0,
                "thread {tid} {key}"
            );
        }
    }

    // Still serving, its admin API still answers (the node is ONLINE by its
    // /status) and a config push still applies.
    let lb: SocketAddr = format!("{node_ip}:8080").parse().unwrap();
    assert_eq!(http_get(lb, "/").unwrap(), (200, "a".to_string()));
    wait_for("node ONLINE", Duration::from_secs(20), || {
        let info = lbd.instance("priv", "web");
        (info["nodes"][0]["operating_status"] == "ONLINE").then_some(())
    });
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
        "project": "priv", "name": "web", "backend": {"entities": [b.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    wait_for(
        "traffic to the new backend",
        Duration::from_secs(20),
        || (http_get(lb, "/").ok()? == (200, "b".to_string())).then_some(()),
    );
    assert_eq!(
        lbd.instance("priv", "web")["nodes"][0]["pid"].as_u64(),
        Some(pid),
        "the same process took the new config"
    );
}
