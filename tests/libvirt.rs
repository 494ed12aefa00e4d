//! LB nodes as real VMs: lbd with the netns network and the libvirt compute
//! driver boots the node image (scripts/build-image.sh) under qemu, sends
//! traffic from the host through the VM to a backend, fails over when the VM
//! is destroyed, and leaves no domain, tap, namespace or secret disk behind.
//! The node's secret is nowhere another user of the host could read it, and
//! `--vm-domain-type auto` works where KVM does not (it falls back to TCG and
//! says so). Needs root, a running libvirtd and the image (`.ci/run` sets all
//! three up); without them the test says which is missing and passes, or
//! fails under CI (`common::require`).
#![cfg(feature = "libvirt")]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::backends::{http_get, HttpBackend};
use common::{target_dir, vm_prerequisites_present, wait_for, Lbd};
use serde_json::{json, Value};

fn node_addr(node: &Value) -> SocketAddr {
    format!("{}:8080", node["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

fn virsh(args: &[&str]) -> String {
    let out = Command::new("virsh")
        .args(["-c", "qemu:///system"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "virsh {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// lbd on VMs (`domain_type`: the `--vm-domain-type` flag, if any), with a
/// project `vm` and a backend on the host that its VMs reach at the
/// project's gateway address.
fn start(domain_type: Option<&str>) -> (Lbd, HttpBackend, Instant) {
    let image = target_dir("image");
    let mut args = vec![
        "--network",
        "netns",
        "--compute",
        "libvirt",
        "--vm-image",
        image.to_str().unwrap(),
    ];
    if let Some(t) = domain_type {
        args.extend(["--vm-domain-type", t]);
    }
    let started = Instant::now();
    let lbd = Lbd::start_with(&args);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "vm"}}));
    assert_eq!(s, 200, "{v}");
    let backend = HttpBackend::start_on("0.0.0.0:0".parse().unwrap(), "b");
    (lbd, backend, started)
}

/// Creates instance `web` in project `vm` and waits until it is ACTIVE.
fn create_web(lbd: &Lbd, backend: &HttpBackend, wait: Duration) -> Value {
    let checks = json!({"criteria": {"interval": 1, "timeout": 1,
                                     "health-threshold": 2, "unhealth-threshold": 2}});
    create_web_with(lbd, backend, wait, checks, 0)
}

/// `create_web` with these health checks and standby nodes.
fn create_web_with(
    lbd: &Lbd,
    backend: &HttpBackend,
    wait: Duration,
    checks: Value,
    standby_nodes: u32,
) -> Value {
    let (_, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "vm"}}));
    let subnet: ipnet::Ipv4Net = v["info"]["subnet"].as_str().unwrap().parse().unwrap();
    let gateway = subnet.hosts().next().unwrap();
    let started = Instant::now();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "vm", "traffic_type": "http", "port": 8080,
        "standby_nodes": standby_nodes,
        "backend": {"entities": [format!("{gateway}:{}", backend.addr().port())],
                    "health-check": checks}}}));
    assert_eq!(s, 200, "{v}");
    let info = wait_for("instance ACTIVE on a VM", wait, || {
        let info = lbd.instance("vm", "web");
        assert_ne!(
            info["provisioning_status"],
            "ERROR",
            "{info}\n{}",
            lbd.stderr()
        );
        (info["provisioning_status"] == "ACTIVE").then_some(info)
    });
    eprintln!("instance create to ACTIVE on a VM: {:?}", started.elapsed());
    info
}

fn domain_of(lbd: &Lbd, node: &Value) -> String {
    format!("{}-vm-web-{}", lbd.slot.netns_prefix(), node["id"])
}

/// Deletes the project and waits until no domain, tap, namespace or secret
/// disk of this lbd is left.
fn delete_all(lbd: &Lbd) {
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "project",
        "info": {"name": "vm", "force": true}}));
    assert_eq!(s, 200, "{v}");
    let prefix = lbd.slot.netns_prefix();
    let secrets = lbd.vm_secrets.as_ref().unwrap().0.clone();
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
        let disks = std::fs::read_dir(&secrets).unwrap().count();
        (lbd.domains().is_empty() && !taps && !namespaces && disks == 0).then_some(())
    });
}

/// The node's admin secret, from lbd's database (the test runs as root, as
/// lbd does; nobody else may read the file).
fn node_secret(lbd: &Lbd, node: &Value) -> String {
    let db = rusqlite::Connection::open(lbd.state.0.join("lbaas.db")).unwrap();
    db.query_row(
        "SELECT secret FROM nodes WHERE id = ?1",
        [node["id"].as_i64().unwrap()],
        |r| r.get(0),
    )
    .unwrap()
}

/// The secret of a running VM node is in none of the places every user of
/// the host (or every process of the guest) can read, and the node still
/// authenticates with it.
fn assert_secret_hidden(lbd: &Lbd, node: &Value) {
    let secret = node_secret(lbd, node);
    assert!(secret.len() >= 16, "a real secret: {secret:?}");
    let domain = domain_of(lbd, node);

    // qemu's command line: /proc/<pid>/cmdline is world-readable.
    let pid_file = format!("/run/libvirt/qemu/{domain}.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(
        cmdline.contains("qemu-system") && cmdline.contains(&domain),
        "{cmdline}"
    );
    assert!(
        !cmdline.contains(&secret),
        "the secret is on qemu's command line: {cmdline}"
    );

    // The domain XML: `virsh -r dumpxml` works for every user.
    let xml = virsh(&["dumpxml", &domain]);
    assert!(xml.contains("lbaas.node="), "{xml}");
    assert!(
        !xml.contains(&secret),
        "the secret is in the domain XML: {xml}"
    );

    // The guest's /proc/cmdline: the node exposes nothing but its admin API
    // and the listener, so the image's init prints its /proc/cmdline to the
    // serial console at boot, which the driver keeps in the console log.
    // That line is the guest kernel's own view of its command line.
    let console_path = lbd
        .state
        .0
        .join(format!("nodes/node-{}.console.log", node["id"]));
    let console = std::fs::read_to_string(&console_path).unwrap();
    let guest_cmdline = console
        .lines()
        .find_map(|l| l.strip_prefix("lbaas-node: cmdline: "))
        .unwrap_or_else(|| panic!("the guest printed no cmdline:\n{console}"));
    assert!(
        guest_cmdline.contains(&format!("lbaas.node={}", node["id"])),
        "{guest_cmdline}"
    );
    assert!(
        !guest_cmdline.contains(&secret),
        "in the guest's /proc/cmdline: {guest_cmdline}"
    );
    assert!(
        !console.contains(&secret),
        "the secret is in the console log"
    );
    assert!(!lbd.stderr().contains(&secret), "lbd logged the secret");

    // Where it is instead: a disk image only its owner (root, or qemu's
    // user while the VM runs) may read.
    let disk = lbd.vm_secrets.as_ref().unwrap().0.join(format!(
        "{}-node-{}.img",
        lbd.slot.netns_prefix(),
        node["id"]
    ));
    let mode = std::fs::metadata(&disk).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", disk.display());

    // The node authenticates with it (lbd pushed its config with it, too).
    let status = |token: &str| {
        lbd.http
            .get(format!(
                "http://{}:9901/status",
                node["address"].as_str().unwrap()
            ))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(status(&secret), 200);
    assert_eq!(status("00ff"), 401);
}

#[test]
fn an_instance_on_vms_serves_fails_over_and_is_removed() {
    if !vm_prerequisites_present() {
        return;
    }
    let (lbd, backend, _) = start(Some("qemu"));
    let info = create_web(&lbd, &backend, Duration::from_secs(180));
    let first = info["nodes"][0].clone();
    let domains = lbd.domains();
    assert_eq!(
        domains,
        vec![domain_of(&lbd, &first)],
        "virsh list shows the node's domain"
    );
    for _ in 0..3 {
        assert_eq!(
            http_get(node_addr(&first), "/").unwrap(),
            (200, "b".to_string())
        );
    }
    assert_secret_hidden(&lbd, &first);

    // Kill the VM: the health checker fails it over to a new VM.
    virsh(&["destroy", &domains[0]]);
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
    assert!(lbd.domains().contains(&domain_of(&lbd, &second)));
    assert_eq!(http_get(node_addr(&second), "/").unwrap().0, 200);

    delete_all(&lbd);
}

/// A VM destroyed behind lbd's back is reported by libvirt's lifecycle
/// event, so it fails over at once, with checks a minute apart that would
/// take minutes to notice; its standby, booted beforehand, takes over with
/// no boot, and a new standby boots behind it.
#[test]
fn a_destroyed_vm_fails_over_at_once_to_its_standby() {
    if !vm_prerequisites_present() {
        return;
    }
    let (lbd, backend, _) = start(Some("qemu"));
    let slow = json!({"criteria": {"interval": 60, "timeout": 5,
                                   "health-threshold": 2, "unhealth-threshold": 3}});
    create_web_with(&lbd, &backend, Duration::from_secs(240), slow, 1);
    let roles = |info: &Value, state: &str| -> Vec<Value> {
        info["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["state"] == state)
            .cloned()
            .collect()
    };
    let info = wait_for(
        "a running VM and a standby VM",
        Duration::from_secs(240),
        || {
            let info = lbd.instance("vm", "web");
            (roles(&info, "running").len() == 1 && roles(&info, "standby").len() == 1)
                .then_some(info)
        },
    );
    let (running, standby) = (
        roles(&info, "running")[0].clone(),
        roles(&info, "standby")[0].clone(),
    );
    assert_eq!(
        http_get(node_addr(&standby), "/").unwrap(),
        (200, "b".to_string())
    );

    virsh(&["destroy", &domain_of(&lbd, &running)]);
    let destroyed = Instant::now();
    wait_for("the standby promoted", Duration::from_secs(60), || {
        let info = lbd.instance("vm", "web");
        roles(&info, "running")
            .iter()
            .any(|n| n["id"] == standby["id"])
            .then_some(())
    });
    eprintln!(
        "virsh destroy to the standby VM running: {:?}",
        destroyed.elapsed()
    );
    assert_eq!(http_get(node_addr(&standby), "/").unwrap().0, 200);
    let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
        "info": {"project": "vm", "name": "web", "history": 3600}}));
    assert_eq!(s, 200, "{v}");
    let failed: Vec<&Value> = v["info"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "node_failed" && e["node_id"] == running["id"])
        .collect();
    assert_eq!(failed.len(), 1, "{v}");
    let message = failed[0]["message"].as_str().unwrap();
    assert!(
        message.contains("the VM was destroyed") && message.contains("at once"),
        "{message}"
    );
    wait_for("a new standby VM", Duration::from_secs(240), || {
        let info = lbd.instance("vm", "web");
        roles(&info, "standby")
            .iter()
            .any(|n| n["id"] != standby["id"] && n["id"] != running["id"])
            .then_some(())
    });
    delete_all(&lbd);
}

/// `--vm-domain-type auto` (the default) probes KVM in the background: lbd
/// answers at once, the first VM waits for the answer, and where KVM guests
/// do not run (this machine: /dev/kvm opens, a guest never reaches init)
/// VMs run under TCG and `info` says so.
#[test]
fn the_default_domain_type_serves_and_says_when_it_falls_back_to_tcg() {
    if !vm_prerequisites_present() {
        return;
    }
    let (lbd, backend, started) = start(None);
    let health = lbd
        .http
        .get(format!("{}/healthz", lbd.url()))
        .send()
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let up = started.elapsed();
    eprintln!("lbd start to /healthz with the KVM probe running: {up:?}");
    assert!(
        up < Duration::from_secs(15),
        "the probe held up lbd: {up:?}"
    );

    // The probe's deadline (20 s) comes before the VM boots under TCG.
    let info = create_web(&lbd, &backend, Duration::from_secs(240));
    let node = info["nodes"][0].clone();
    assert_eq!(
        http_get(node_addr(&node), "/").unwrap(),
        (200, "b".to_string())
    );
    assert_eq!(
        lbd.domains(),
        vec![domain_of(&lbd, &node)],
        "the probe VM is gone"
    );
    let xml = virsh(&["dumpxml", &domain_of(&lbd, &node)]);
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let warnings = info["warnings"].as_array().cloned().unwrap_or_default();
    let text = lbd.lbctl_ok(&["instance", "info", "web", "--project", "vm"]);
    for line in lbd
        .stderr()
        .lines()
        .filter(|l| l.contains("vm-domain-type auto"))
    {
        eprintln!("lbd: {line}");
    }
    if xml.starts_with("<domain type='kvm'") {
        eprintln!("KVM works here: no fallback");
        assert!(warnings.is_empty(), "{warnings:?}");
    } else {
        assert!(xml.starts_with("<domain type='qemu'"), "{xml}");
        if kvm_opens {
            assert_eq!(warnings.len(), 1, "{info}");
            assert_eq!(warnings[0]["code"], "vm_tcg_fallback");
            let message = warnings[0]["message"].as_str().unwrap();
            assert!(message.contains("TCG"), "{message}");
            assert!(
                text.contains("warning:") && text.contains("vm_tcg_fallback"),
                "{text}"
            );
            assert!(
                lbd.stderr().contains("VMs run under TCG"),
                "{}",
                lbd.stderr()
            );
        } else {
            assert!(
                warnings.is_empty(),
                "no KVM at all is no surprise: {warnings:?}"
            );
        }
    }
    delete_all(&lbd);
}
