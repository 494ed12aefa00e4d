//! LB nodes as real VMs: lbd with the netns network and the libvirt compute
//! driver boots the node image (scripts/build-image.sh) under qemu, sends
//! traffic from the host through the VM to a backend, fails over when the VM
//! is destroyed, and leaves no domain, tap or namespace behind. Needs root, a
//! running libvirtd and the image (`.ci/run` sets all three up); without
//! them the test says which is missing and passes, or fails under CI
//! (`common::require`).
#![cfg(feature = "libvirt")]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::backends::{http_get, HttpBackend};
use common::{is_root, require, wait_for, Lbd};
use serde_json::{json, Value};

fn image_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image")
}

/// Root, a libvirtd that answers, and the node image; each missing one is
/// reported by `require`.
fn prerequisites_present() -> bool {
    let libvirtd = || {
        Command::new("virsh")
            .args(["-c", "qemu:///system", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    require("root (VMs attach to the netns driver's bridges)", is_root())
        && require("a running libvirtd (virtlogd -d; libvirtd -d)", libvirtd())
        && require(
            "the node image (run scripts/build-image.sh)",
            image_dir().join("initramfs.cpio.gz").exists(),
        )
}

fn node_addr(node: &Value) -> SocketAddr {
    format!("{}:8080", node["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

#[test]
fn an_instance_on_vms_serves_fails_over_and_is_removed() {
    if !prerequisites_present() {
        return;
    }
    let image = image_dir();
    let lbd = Lbd::start_with(&[
        "--network",
        "netns",
        "--compute",
        "libvirt",
        "--vm-domain-type",
        "qemu",
        "--vm-image",
        image.to_str().unwrap(),
    ]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "vm"}}));
    assert_eq!(s, 200, "{v}");
    let subnet: ipnet::Ipv4Net = v["info"]["subnet"].as_str().unwrap().parse().unwrap();
    let gateway = subnet.hosts().next().unwrap();
    // On the host, reached from the VMs at the project's gateway address.
    let backend = HttpBackend::start_on("0.0.0.0:0".parse().unwrap(), "b");
    let started = Instant::now();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "vm", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [format!("{gateway}:{}", backend.addr().port())],
                    "health-check": {"criteria": {"interval": 1, "timeout": 1,
                                                  "health-threshold": 2, "unhealth-threshold": 2}}}}}));
    assert_eq!(s, 200, "{v}");
    let info = wait_for("instance ACTIVE on a VM", Duration::from_secs(180), || {
        let info = lbd.instance("vm", "web");
        assert_ne!(
            info["provisioning_status"],
            "ERROR",
            "{info}\n{}",
            lbd.stderr()
        );
        (info["provisioning_status"] == "ACTIVE").then_some(info)
    });
    eprintln!(
        "instance create to ACTIVE on a VM (TCG): {:?}",
        started.elapsed()
    );
    let first = info["nodes"][0].clone();
    let domains = lbd.domains();
    assert_eq!(
        domains,
        vec![format!(
            "{}-vm-web-{}",
            lbd.slot.netns_prefix(),
            first["id"]
        )],
        "virsh list shows the node's domain"
    );
    for _ in 0..3 {
        assert_eq!(
            http_get(node_addr(&first), "/").unwrap(),
            (200, "b".to_string())
        );
    }

    // Kill the VM: the health checker fails it over to a new VM.
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system", "destroy", &domains[0]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let destroyed = Instant::now();
    let second = wait_for("failover to a new VM", Duration::from_secs(180), || {
        let info = lbd.instance("vm", "web");
        info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] != first["id"] && n["state"] == "running")
            .cloned()
    });
    eprintln!(
        "virsh destroy to a new VM serving: {:?}",
        destroyed.elapsed()
    );
    assert_ne!(second["address"], first["address"]);
    assert!(lbd.domains().contains(&format!(
        "{}-vm-web-{}",
        lbd.slot.netns_prefix(),
        second["id"]
    )));
    assert_eq!(http_get(node_addr(&second), "/").unwrap().0, 200);

    // Delete everything: no domain, tap or namespace is left.
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "project",
        "info": {"name": "vm", "force": true}}));
    assert_eq!(s, 200, "{v}");
    let prefix = lbd.slot.netns_prefix();
    wait_for("all removed", Duration::from_secs(60), || {
        let taps = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{prefix}v"))
            });
        let namespaces = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{prefix}-"))
                })
            })
            .unwrap_or(false);
        (lbd.domains().is_empty() && !taps && !namespaces).then_some(())
    });
}
