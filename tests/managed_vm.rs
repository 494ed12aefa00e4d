//! Managed VM backends (`compute: vm`): lbd with the netns network and the
//! libvirt compute driver (its LB node is a VM too) boots one libvirt
//! domain per backend from the test backend image
//! (scripts/build-backend-image.sh: busybox httpd on the port lbd passes on
//! the kernel command line), on the project's bridge. The first request is
//! held while the VM boots and is served 200 with `X-Lbaas-Cold-Start`;
//! idle stop destroys the domain (checked with virsh); the next request
//! boots a new one. Needs root, a running libvirtd and both images (`.ci/run`
//! sets them up); without them the test says which is missing and passes,
//! or fails under CI (`common::require`). The `Lbd` guard destroys every
//! domain of the test's prefix, also on failure.
//!
//! Also, without libvirt: an lbd that runs no VMs refuses a `compute: vm`
//! pool with `vm_backends_unavailable` and stores nothing.

mod common;

use common::{target_dir, Lbd};
use serde_json::{json, Value};

fn vm_template() -> Value {
    let image = target_dir("backend-image");
    json!({"kernel": image.join("vmlinuz"), "initrd": image.join("initramfs.cpio.gz"),
           "cmdline": "quiet app.body=vm-of-{instance}", "memory_mb": 128, "vcpus": 1})
}

/// A `compute: vm` managed pool: one backend at most, idle after 3 s. The
/// start timeout and queue wait are generous: TCG on a loaded host.
fn managed_vm() -> Value {
    json!({"compute": "vm", "port": 8000, "min": 0, "max": 1, "idle_timeout": 3,
           "start_timeout": 120, "queue": {"max_requests": 10, "max_wait_ms": 150000},
           "vm": vm_template()})
}

#[test]
fn an_lbd_without_vms_refuses_a_vm_pool_and_stores_nothing() {
    // Files that exist, so the kernel check passes whether or not the image is built.
    let here = std::env::current_exe().unwrap();
    let vm_pool = || {
        let mut m = managed_vm();
        m["vm"] = json!({"kernel": here, "initrd": here});
        m
    };
    let dir = here.parent().unwrap().display().to_string();
    let lbd = Lbd::start_with(&["--backend-image-dir", &dir]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    for (name, info) in [
        ("web", json!({"backend": {"managed": vm_pool()}})),
        (
            "api",
            json!({"backend": {"entities": ["127.0.0.1:9"]},
                   "pools": {"vms": {"managed": vm_pool()}}}),
        ),
    ] {
        let mut body = json!({"name": name, "project": "demo", "traffic_type": "http",
                              "port": 8080});
        for (k, v) in info.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": body}));
        assert_eq!(s, 422, "{v}");
        assert_eq!(v["error"]["code"], "vm_backends_unavailable", "{v}");
        let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
                                     "info": {"project": "demo", "name": name}}));
        assert_eq!(s, 404, "nothing stored: {v}");
    }
}

/// The VM half: needs lbd built with the `libvirt` feature.
#[cfg(feature = "libvirt")]
mod on_libvirt {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Duration;

    use common::managed::{backends, events_of, get, header};
    use common::{require, vm_prerequisites_present, wait_for};

    /// What every VM test needs, and the backend image.
    fn prerequisites_present() -> bool {
        vm_prerequisites_present()
            && require(
                "the backend image (run scripts/build-backend-image.sh)",
                target_dir("backend-image")
                    .join("initramfs.cpio.gz")
                    .exists(),
            )
    }

    /// This lbd's running backend domains (`<prefix>-bk<id>`).
    fn backend_domains(lbd: &Lbd) -> Vec<String> {
        let prefix = format!("{}-bk", lbd.slot.netns_prefix());
        lbd.domains()
            .into_iter()
            .filter(|d| d.starts_with(&prefix))
            .collect()
    }

    /// Waits until `web` is ACTIVE (its node a VM, booting under TCG takes
    /// a while); on failure shows the instance, lbd's log and the console.
    fn active_on_a_vm(lbd: &Lbd) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        loop {
            let info = lbd.instance("demo", "web");
            if info["provisioning_status"] == "ACTIVE" {
                return info;
            }
            if info["provisioning_status"] == "ERROR" || std::time::Instant::now() > deadline {
                let consoles: Vec<String> = std::fs::read_dir(lbd.state.0.join("nodes"))
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect();
                panic!(
                    "web not ACTIVE on a VM node: {info}\nlbd: {}\nconsoles: {consoles:?}",
                    lbd.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A cold request: held while the VM boots, then served by its httpd.
    fn cold_request(lbd: &Lbd, lb: SocketAddr) -> u64 {
        let (status, headers, body) = get(lb, "/");
        assert_eq!(
            status,
            200,
            "{headers:?} {body}\nevents: {:?}\nlbd: {}",
            events_of(lbd, "web", "backend_start_failed"),
            lbd.stderr()
        );
        assert_eq!(body.trim(), "vm-of-web", "the VM's own page");
        header(&headers, "x-lbaas-cold-start")
            .expect("X-Lbaas-Cold-Start on a held request")
            .parse()
            .unwrap()
    }

    #[test]
    fn a_vm_backend_boots_on_the_first_request_and_idle_stop_destroys_it() {
        if !prerequisites_present() {
            return;
        }
        let image = target_dir("image");
        let mut lbd = Lbd::start_with(&[
            "--network",
            "netns",
            "--compute",
            "libvirt",
            "--vm-image",
            image.to_str().unwrap(),
            // No KVM probe: its 20 s would come first, and TCG boots in seconds.
            "--vm-domain-type",
            "qemu",
        ]);
        let (s, v) =
            lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
        assert_eq!(s, 200, "{v}");
        let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"managed": managed_vm()}}}));
        assert_eq!(s, 200, "{v}");
        // The LB node is a VM: booting it under TCG takes a while.
        let info = active_on_a_vm(&lbd);
        let lb: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
            .parse()
            .unwrap();
        assert!(
            backend_domains(&lbd).is_empty(),
            "min 0: no VM before traffic"
        );

        let cold = cold_request(&lbd, lb);
        eprintln!("first request served after a {cold} ms cold start");
        let listed = backends(&lbd, "web");
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (&listed[0]["state"], &listed[0]["compute"]),
            (&json!("ready"), &json!("vm"))
        );
        let domain = format!("{}-bk{}", lbd.slot.netns_prefix(), listed[0]["id"]);
        assert_eq!(backend_domains(&lbd), vec![domain.clone()]);
        // Warm: not held.
        let (status, headers, _) = get(lb, "/");
        assert_eq!(status, 200);
        assert!(
            header(&headers, "x-lbaas-cold-start").is_none(),
            "{headers:?}"
        );

        // kill -9 of lbd: the VM keeps running; the next lbd adopts it (its
        // row and a live domain of that name) instead of booting another,
        // and is the one that stops it.
        lbd.crash();
        assert_eq!(backend_domains(&lbd), vec![domain.clone()]);
        lbd.start_again();
        let (status, _, body) = get(lb, "/");
        assert_eq!((status, body.trim()), (200, "vm-of-web"));

        // Idle for 3 s: taken off the node, shut down, destroyed after the grace.
        wait_for(
            "the idle VM to be destroyed",
            Duration::from_secs(60),
            || (!lbd.domains().contains(&domain)).then_some(()),
        );
        wait_for("the backend row to go", Duration::from_secs(10), || {
            backends(&lbd, "web").is_empty().then_some(())
        });
        assert!(!events_of(&lbd, "web", "backend_stopped").is_empty());
        let log = lbd.stderr();
        let id = &listed[0]["id"];
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("backend {id} at")) && l.contains("adopted")),
            "the restarted lbd adopted backend {id}: {log}"
        );

        // The next request boots a new VM.
        cold_request(&lbd, lb);
        let again = backends(&lbd, "web");
        assert_eq!(again.len(), 1, "{again:?}");
        assert_ne!(again[0]["id"], listed[0]["id"]);
        assert_eq!(backend_domains(&lbd).len(), 1);
    }
}
