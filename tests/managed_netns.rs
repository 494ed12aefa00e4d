//! Process-managed backends under `--network netns`: the backend gets an
//! address from the project subnet and binds it inside the project
//! namespace, so lbd puts that address on the namespace's bridge when the
//! backend starts (and its reconciler takes it off once the backend's row
//! is gone). A held request wakes the python backend and is served 200 from
//! the host, through the lb-node in the namespace; the address is on `br0`
//! while the backend runs and leaves after the idle stop. Needs root (else
//! it says so and passes; under CI it fails: `common::require`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::managed::{
    alive, backend_pids, backends, get, header, managed_instance, Reaper, Script,
};
use common::{is_root, require, wait_for, Lbd};
use serde_json::{json, Value};

/// The IPv4 addresses on `br0` of namespace `ns` (`ip -j -n NS addr show br0`).
fn bridge_addresses(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-j", "-n", ns, "addr", "show", "br0"])
        .output()
        .expect("running ip (install iproute2)");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["family"] == "inet")
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .collect()
}

/// The namespace of project `demo` (`<slot prefix>-<project id>`).
fn project_netns(lbd: &Lbd) -> String {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    format!("{}-{}", lbd.slot.netns_prefix(), v["info"]["id"])
}

#[test]
fn a_process_backend_binds_its_own_address_in_the_project_namespace_and_serves() {
    if !require("root (for the netns driver)", is_root()) {
        return;
    }
    let script = Script::write();
    let lbd = Lbd::start_with(&["--network", "netns"]);
    let _reaper = Reaper::new(&lbd);
    let managed = json!({"compute": "process", "port": 8000, "min": 0, "max": 1,
                         "idle_timeout": 3, "start_timeout": 20,
                         "process": {"command": script.command()}});
    let lb = managed_instance(&lbd, "web", managed);
    let ns = project_netns(&lbd);
    assert!(
        backend_pids(&lbd).is_empty(),
        "min 0: nothing before traffic"
    );

    // From the host, through the lb-node in the namespace: held, woken, served.
    let (status, headers, body) = get(lb, "/");
    assert_eq!(status, 200, "{headers:?} {body}\nlbd: {}", lbd.stderr());
    assert!(
        header(&headers, "x-lbaas-cold-start").is_some(),
        "{headers:?}"
    );
    let listed = backends(&lbd, "web");
    assert_eq!(listed.len(), 1, "{listed:?}");
    // `address:port`
    let address = listed[0]["address"].as_str().unwrap();
    let address = address.split(':').next().unwrap().to_string();
    let pid = listed[0]["pid"].as_u64().unwrap() as u32;
    assert!(body.contains(&format!("pid {pid}")), "{body}");
    assert!(
        bridge_addresses(&ns).contains(&address),
        "{address} on br0 of {ns}: {:?}",
        bridge_addresses(&ns)
    );
    // Several reconcile passes later it is still there (the exact pass keeps it).
    let (status, _, _) = get(lb, "/");
    assert_eq!(status, 200);

    // Idle stop: the process goes, then its address leaves the bridge.
    wait_for("the idle backend to stop", Duration::from_secs(30), || {
        (!alive(pid)).then_some(())
    });
    wait_for(
        "the backend's address to leave br0",
        Duration::from_secs(30),
        || (!bridge_addresses(&ns).contains(&address)).then_some(()),
    );
    // The node's own address stays.
    assert!(
        bridge_addresses(&ns).contains(&lb.ip().to_string()),
        "{:?}",
        bridge_addresses(&ns)
    );
}
