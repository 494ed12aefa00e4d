//! VM backends (`compute: vm`, cargo feature `libvirt`): each managed
//! backend is a transient libvirt domain `<vm-prefix>-bk<backend id>` that
//! boots the template's kernel (and initrd) directly, on the project's
//! bridge like an LB-node VM: its NIC is a tap `<vm-prefix>b<id>` that
//! libvirt creates on the host and that then joins the namespace's `br0`.
//! It shares the LB-node driver's libvirt connection and domain type (the
//! KVM probe), and its XML code (`compute::libvirt::domain_xml`).
//!
//! Names cannot collide with nodes: a node domain is
//! `<prefix>-<project>-<instance>-<node id>` (at least three dashes, ending
//! in `-<digits>`), a backend's has one dash and ends in `bk<digits>`; and
//! prefixes hold no dash, so no other lbd's parser takes one for its own.
//!
//! The guest learns its address from the kernel command line: lbd appends
//! `lbaas.ip=<address>/<prefix> lbaas.port=<port>` to the template's
//! (`scripts/build-backend-image.sh` builds an image whose init reads them).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::{BackendDriver, BackendError, BackendLaunch, BackendObservation};
use crate::drivers::compute::libvirt::{backend_xml, BackendDomain, Boot, LibvirtCompute};
use crate::drivers::compute::ComputeError;
use crate::model::managed::{BackendTemplate, Placeholders, VmTemplate};
use crate::model::NodeId;

/// How long a VM gets between the ACPI shutdown and its destruction.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How much of its console a start failure quotes.
const TAIL_BYTES: u64 = 2048;

pub struct VmBackends {
    libvirt: Arc<LibvirtCompute>,
    /// Where console logs go.
    dir: PathBuf,
}

/// The guest's kernel command line: the serial console first (its log is
/// the backend's output), the template's with placeholders filled, then
/// lbd's address and port.
pub fn cmdline(template: &VmTemplate, launch: &BackendLaunch) -> String {
    let address = launch.address.to_string();
    let fill = Placeholders {
        address: &address,
        port: launch.port,
        resource: launch.resource.as_deref().unwrap_or(""),
        instance: &launch.instance,
    };
    let own = template
        .cmdline
        .as_deref()
        .map(|c| fill.fill(c))
        .unwrap_or_default();
    let mut line = String::from("console=ttyS0");
    if !own.trim().is_empty() {
        line.push(' ');
        line.push_str(own.trim());
    }
    line.push_str(&format!(
        " lbaas.ip={}/{} lbaas.port={}",
        launch.address, launch.prefix_len, launch.port
    ));
    line
}

/// The backend id of one of `prefix`'s backend domains, from its name.
fn id_of(prefix: &str, name: &str) -> Option<i64> {
    let digits = name.strip_prefix(prefix)?.strip_prefix("-bk")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn start_error(id: i64, e: impl std::fmt::Display) -> BackendError {
    BackendError::Start {
        id,
        reason: e.to_string(),
    }
}

/// A running domain's id stands in for a pid (as for node VMs).
fn domain_pid(d: &Domain) -> u32 {
    d.get_id().unwrap_or(0)
}

impl VmBackends {
    /// `dir` holds the console logs.
    pub fn new(libvirt: Arc<LibvirtCompute>, dir: PathBuf) -> std::io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(VmBackends { libvirt, dir })
    }

    fn name(&self, id: i64) -> String {
        format!("{}-bk{id}", self.libvirt.prefix())
    }

    fn tap(&self, id: i64) -> String {
        format!("{}b{id}", self.libvirt.prefix())
    }

    fn console(&self, id: i64) -> PathBuf {
        self.dir.join(format!("vm-{id}.console.log"))
    }

    fn lookup(&self, conn: &Connect, id: i64) -> Result<Option<Domain>, ComputeError> {
        let name = self.name(id);
        match Domain::lookup_by_name(conn, &name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(ComputeError::Start {
                node_id: NodeId(0),
                reason: format!("looking up {name}: {e}"),
            }),
        }
    }

    fn create(
        &self,
        conn: &Connect,
        launch: &BackendLaunch,
        t: &VmTemplate,
    ) -> Result<Domain, ComputeError> {
        let id = launch.id;
        if let Some(d) = self.lookup(conn, id)? {
            if d.is_active().unwrap_or(false) {
                return Ok(d);
            }
            if d.is_persistent().unwrap_or(false) {
                let _ = d.undefine();
            }
        }
        let _ = fs::remove_file(self.console(id));
        let boot = Boot {
            domain_type: self.libvirt.domain_type()?,
            kernel: Path::new(&t.kernel),
            initrd: t.initrd.as_deref().map(Path::new),
            memory_mib: t.memory_mb,
            vcpus: t.vcpus,
        };
        let xml = backend_xml(
            &boot,
            &BackendDomain {
                name: &self.name(id),
                cmdline: &cmdline(t, launch),
                tap: &self.tap(id),
                ip: launch.address,
                console: &self.console(id),
            },
        );
        Domain::create_xml(conn, &xml, 0).map_err(|e| ComputeError::Start {
            node_id: NodeId(0),
            reason: format!("creating the VM: {e}"),
        })
    }

    /// ACPI shutdown, then destroy once the grace is over; undefines a
    /// persistent domain. Nothing to do when there is none.
    fn shut_down(&self, id: i64) -> Result<(), BackendError> {
        self.libvirt
            .with_connection(NodeId(0), |conn| {
                let Some(d) = self.lookup(conn, id)? else {
                    return Ok(());
                };
                // A transient domain that powered off is gone: its handle
                // then errs, which is "not active".
                let active = |d: &Domain| d.is_active().unwrap_or(false);
                if active(&d) {
                    let _ = d.shutdown();
                    let deadline = Instant::now() + STOP_GRACE;
                    while active(&d) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if active(&d) {
                        d.destroy().map_err(|e| ComputeError::Stop {
                            node_id: NodeId(0),
                            reason: e.to_string(),
                        })?;
                    }
                }
                if d.is_persistent().unwrap_or(false) {
                    let _ = d.undefine();
                }
                Ok(())
            })
            .map_err(|e| BackendError::Stop {
                id,
                reason: e.to_string(),
            })
    }
}

impl BackendDriver for VmBackends {
    fn start(&self, launch: &BackendLaunch) -> Result<u32, BackendError> {
        let id = launch.id;
        let BackendTemplate::Vm(t) = &launch.template else {
            return Err(BackendError::Unsupported {
                id,
                what: "process",
            });
        };
        // Without the project's bridge the VM's NIC would lead nowhere.
        let Some(netns) = &launch.netns else {
            return Err(start_error(
                id,
                "VM backends need --network netns (they join the project's bridge)",
            ));
        };
        let domain = self
            .libvirt
            .with_connection(NodeId(0), |conn| self.create(conn, launch, t))
            .map_err(|e| start_error(id, e))?;
        if let Err(e) = crate::drivers::network::netns::attach_to_bridge(&self.tap(id), netns) {
            let _ = domain.destroy();
            return Err(start_error(id, e));
        }
        Ok(domain_pid(&domain))
    }

    fn observe(&self, id: i64) -> BackendObservation {
        let found = self.libvirt.with_connection(NodeId(0), |conn| {
            Ok(self
                .lookup(conn, id)?
                .filter(|d| d.is_active().unwrap_or(false))
                .map(|d| domain_pid(&d)))
        });
        match found {
            Ok(Some(pid)) => BackendObservation::Running { pid },
            Ok(None) if self.console(id).exists() => BackendObservation::Exited {
                reason: "the VM is gone (shut down, destroyed or crashed)".into(),
            },
            Ok(None) => BackendObservation::Absent,
            // libvirt unreachable: say nothing changed rather than stop a backend.
            Err(e) => {
                tracing::warn!("libvirt: {e}");
                BackendObservation::Running { pid: 0 }
            }
        }
    }

    fn stop(&self, id: i64) -> Result<(), BackendError> {
        self.shut_down(id)?;
        match fs::remove_file(self.console(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn live(&self) -> Vec<(i64, u32)> {
        let prefix = self.libvirt.prefix().to_string();
        let mut found = self
            .libvirt
            .with_connection(NodeId(0), |conn| {
                let all = conn.list_all_domains(0).map_err(|e| ComputeError::Start {
                    node_id: NodeId(0),
                    reason: format!("listing domains: {e}"),
                })?;
                Ok(all
                    .into_iter()
                    .filter(|d| d.is_active().unwrap_or(false))
                    .filter_map(|d| Some((id_of(&prefix, &d.get_name().ok()?)?, domain_pid(&d))))
                    .collect::<Vec<_>>())
            })
            .unwrap_or_default();
        found.sort_unstable();
        found
    }

    fn kill_orphan(&self, id: i64, _pid: u32) {
        if let Err(e) = self.stop(id) {
            tracing::warn!("orphan VM backend {id}: {e}");
        }
    }

    fn output_tail(&self, id: i64) -> String {
        super::process::tail(&self.console(id), TAIL_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(cmdline: Option<&str>) -> (VmTemplate, BackendLaunch) {
        let t = VmTemplate {
            kernel: "/k".into(),
            initrd: None,
            cmdline: cmdline.map(str::to_string),
            memory_mb: 128,
            vcpus: 1,
        };
        let l = BackendLaunch {
            id: 4,
            instance: "web".into(),
            address: "100.64.3.9".parse().unwrap(),
            port: 8000,
            prefix_len: 24,
            resource: Some("r1".into()),
            template: BackendTemplate::Vm(t.clone()),
            netns: None,
        };
        (t, l)
    }

    #[test]
    fn the_cmdline_has_the_console_the_filled_template_and_the_address() {
        let (t, l) = launch(Some(" app.res={resource} app.on={address}:{port} "));
        assert_eq!(
            cmdline(&t, &l),
            "console=ttyS0 app.res=r1 app.on=100.64.3.9:8000 \
             lbaas.ip=100.64.3.9/24 lbaas.port=8000"
        );
        let (t, l) = launch(None);
        assert_eq!(
            cmdline(&t, &l),
            "console=ttyS0 lbaas.ip=100.64.3.9/24 lbaas.port=8000"
        );
    }

    /// On libvirt's test driver (boots nothing): a domain of a backend's
    /// name is found live, observed running, stopped (the test driver's
    /// shutdown is immediate) and then absent; a node's domain is not ours.
    #[test]
    fn backend_domains_are_found_observed_and_stopped() {
        use crate::drivers::compute::libvirt::{DomainType, DomainTypeSetting, VmSettings};
        use crate::drivers::compute::ComputeWarnings;
        let dir = std::env::temp_dir().join(format!("lbaas-vmbk-{}", std::process::id()));
        let libvirt = Arc::new(
            LibvirtCompute::new(VmSettings {
                uri: "test:///default".into(),
                domain_type: DomainTypeSetting::Fixed(DomainType::Test),
                kernel: "/nonexistent/vmlinuz".into(),
                initrd: "/nonexistent/initrd".into(),
                memory_mib: 128,
                vcpus: 1,
                prefix: "utvmb".into(),
                dir: dir.join("nodes"),
                secret_dir: dir.join("secrets"),
                warnings: ComputeWarnings::default(),
            })
            .unwrap(),
        );
        let d = VmBackends::new(libvirt.clone(), dir.join("backends")).unwrap();
        let boot = Boot {
            domain_type: DomainType::Test,
            kernel: Path::new("/nonexistent/vmlinuz"),
            initrd: None,
            memory_mib: 128,
            vcpus: 1,
        };
        // The test driver keeps its domains while any connection is open:
        // one held here keeps them between the driver's calls.
        let mut conn = Connect::open(Some("test:///default")).unwrap();
        for name in ["utvmb-bk7", "utvmb-demo-web-8"] {
            let xml = backend_xml(
                &boot,
                &BackendDomain {
                    name,
                    cmdline: "console=ttyS0",
                    tap: "utvmbb7",
                    ip: "100.64.3.7".parse().unwrap(),
                    console: &dir.join("c.log"),
                },
            );
            Domain::create_xml(&conn, &xml, 0).unwrap();
        }
        let live = d.live();
        assert_eq!(live.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![7]);
        assert!(matches!(d.observe(7), BackendObservation::Running { .. }));
        assert_eq!(d.observe(9), BackendObservation::Absent);
        d.stop(7).unwrap();
        assert_eq!(d.observe(7), BackendObservation::Absent);
        assert!(d.live().is_empty());
        if let Ok(node) = Domain::lookup_by_name(&conn, "utvmb-demo-web-8") {
            let _ = node.destroy();
        }
        let _ = conn.close();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_backend_names_of_this_prefix_are_ours() {
        assert_eq!(id_of("lbaas", "lbaas-bk12"), Some(12));
        // A node domain, another prefix, a probe, junk after the digits.
        assert_eq!(id_of("lbaas", "lbaas-demo-web-12"), None);
        assert_eq!(id_of("lbaas", "lbaasx-bk12"), None);
        assert_eq!(id_of("lbaas", "lbaas-kvm-probe"), None);
        assert_eq!(id_of("lbaas", "lbaas-bk12-x"), None);
        assert_eq!(id_of("lbaas", "lbaas-bk"), None);
    }
}
