//! The libvirt compute driver (`--compute libvirt`, cargo feature
//! `libvirt`): each LB node is a transient VM named
//! `<prefix>-<project>-<instance>-<node id>` that boots the image of
//! `scripts/build-image.sh` directly (kernel + initramfs). The node's address
//! goes on the kernel command line, its secret on a read-only disk
//! (`secret_disk.rs`: never on a command line); its virtio NIC is a tap that
//! libvirt creates on the host and that is then moved into the project's
//! namespace as a port of its bridge (netns network driver). The serial
//! console goes to `nodes/node-<id>.console.log` in the state dir. With
//! `--vm-domain-type auto` the domain type comes from a KVM probe
//! (`probe.rs`).

mod domain_xml;
mod events;
mod probe;
mod secret_disk;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::{ComputeDriver, ComputeError, ComputeWarnings, ExitSink, NodeObservation, NodeSpec};
use crate::model::NodeId;
pub(crate) use domain_xml::{backend_xml, BackendDomain, Boot};
pub use domain_xml::{kvm_device_opens, xml_escape, DomainType, DomainTypeSetting};
pub use probe::{decide, Decision, KvmHost, KVM_PROBE_DEADLINE};
use probe::{DomainTypeCell, LibvirtKvmHost};
use secret_disk::SecretDisks;

/// How long a node's creation waits for the KVM probe: its deadline, plus
/// time to create and destroy the probe VM.
const PROBE_WAIT: Duration = Duration::from_secs(KVM_PROBE_DEADLINE.as_secs() + 30);

/// What every VM gets.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// libvirt connection URI, e.g. `qemu:///system`.
    pub uri: String,
    pub domain_type: DomainTypeSetting,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Start of every domain and tap name this lbd owns (1 to 6 characters).
    pub prefix: String,
    /// Where console logs go.
    pub dir: PathBuf,
    /// Where secret disks go (see `secret_disk.rs`).
    pub secret_dir: PathBuf,
    /// Where the KVM probe reports a fallback to TCG.
    pub warnings: ComputeWarnings,
}

pub struct LibvirtCompute {
    settings: VmSettings,
    /// The one connection every call shares, opened lazily. Each call takes
    /// its own reference (`Connect::clone`), so calls still run side by side
    /// as they did with a connection each.
    conn: Mutex<Option<Connect>>,
    /// Connections opened so far: past the first, each is a reconnect.
    opens: AtomicU64,
    /// Domain names of our nodes by id. `observe_node` only gets the id, and
    /// the name also holds project and instance; knowing it lets a lookup by
    /// name replace listing every domain on each observation.
    names: Mutex<HashMap<NodeId, String>>,
    disks: SecretDisks,
    domain_type: Arc<DomainTypeCell>,
    /// The VMs known to run our nodes, for the lifecycle events
    /// (`events.rs`), and the thread that receives those.
    watched: Arc<events::Watched>,
    events: Mutex<Option<events::EventThread>>,
    /// The KVM probe's thread while it may run, and how to stop it.
    probe: Mutex<Option<JoinHandle<()>>>,
    probe_cancel: Arc<AtomicBool>,
    /// Makes the kept connection report itself dead, as a remote one does
    /// once libvirtd goes away (the test driver's never does).
    #[cfg(test)]
    severed: AtomicBool,
}

fn start_error(node_id: NodeId, reason: impl std::fmt::Display) -> ComputeError {
    ComputeError::Start {
        node_id,
        reason: reason.to_string(),
    }
}

/// The prefix is a name part, and the image must exist to boot.
fn check_settings(settings: &VmSettings) -> Result<(), ComputeError> {
    let bad = |reason: String| start_error(NodeId(0), reason);
    if settings.prefix.is_empty()
        || settings.prefix.len() > 6
        || !settings
            .prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(bad(format!(
            "VM name prefix {:?} must be 1 to 6 lowercase letters or digits",
            settings.prefix
        )));
    }
    if settings.domain_type != DomainTypeSetting::Fixed(DomainType::Test) {
        for f in [&settings.kernel, &settings.initrd] {
            if !f.exists() {
                return Err(bad(format!(
                    "{} is missing: build the node image with scripts/build-image.sh",
                    f.display()
                )));
            }
        }
    }
    Ok(())
}

/// The domain type when it needs no probe: forced, or no /dev/kvm.
fn initial_domain_type(setting: DomainTypeSetting) -> DomainTypeCell {
    match setting {
        DomainTypeSetting::Fixed(t) => DomainTypeCell::ready(t),
        DomainTypeSetting::Auto if !kvm_device_opens() => {
            tracing::info!("--vm-domain-type auto: /dev/kvm does not open; VMs run under TCG");
            DomainTypeCell::ready(DomainType::Qemu)
        }
        DomainTypeSetting::Auto => DomainTypeCell::probing(),
    }
}

impl LibvirtCompute {
    /// Checks the settings and that libvirt answers; starts the KVM probe
    /// when the domain type depends on it.
    pub fn new(settings: VmSettings) -> Result<Self, ComputeError> {
        check_settings(&settings)?;
        fs::create_dir_all(&settings.dir)?;
        let disks = SecretDisks::open(&settings.secret_dir, &settings.prefix)?;
        // Errors come back as results; libvirt's default handler would also
        // print each one to stderr.
        virt::error::clear_error_callback();
        let domain_type = initial_domain_type(settings.domain_type);
        let driver = LibvirtCompute {
            settings,
            conn: Mutex::new(None),
            opens: AtomicU64::new(0),
            names: Mutex::new(HashMap::new()),
            disks,
            domain_type: Arc::new(domain_type),
            watched: Arc::default(),
            events: Mutex::new(None),
            probe: Mutex::new(None),
            probe_cancel: Arc::new(AtomicBool::new(false)),
            #[cfg(test)]
            severed: AtomicBool::new(false),
        };
        driver.with_connection(NodeId(0), |_| Ok(()))?;
        if driver.domain_type.wait(Duration::ZERO).is_err() {
            driver.start_probe()?;
        }
        Ok(driver)
    }

    /// Starts the KVM probe in the background: lbd serves meanwhile, and the
    /// first node waits for its answer.
    fn start_probe(&self) -> Result<(), ComputeError> {
        let s = &self.settings;
        let host = LibvirtKvmHost {
            uri: s.uri.clone(),
            kernel: s.kernel.clone(),
            initrd: s.initrd.clone(),
            memory_mib: s.memory_mib,
            name: format!("{}-kvm-probe", s.prefix),
            console: s.dir.join("kvm-probe.console.log"),
            cancel: self.probe_cancel.clone(),
        };
        tracing::info!(
            "--vm-domain-type auto: /dev/kvm opens; checking that a KVM guest boots (at most {} s)",
            KVM_PROBE_DEADLINE.as_secs()
        );
        let thread = probe::spawn(host, self.domain_type.clone(), s.warnings.clone())?;
        *self.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread);
        Ok(())
    }

    /// Runs `f` on the shared connection. A call that fails because the
    /// connection dropped under it (libvirtd restarted) runs once more on a
    /// fresh one; other failures are not retried, so a VM that cannot be
    /// created is not tried twice.
    pub(crate) fn with_connection<T>(
        &self,
        node_id: NodeId,
        f: impl Fn(&Connect) -> Result<T, ComputeError>,
    ) -> Result<T, ComputeError> {
        let mut conn = self.connection(node_id)?;
        let result = f(&conn);
        if result.is_ok() || self.alive(&conn) {
            let _ = conn.close();
            return result;
        }
        self.drop_connection(&conn);
        let _ = conn.close();
        let mut conn = self.connection(node_id)?;
        let result = f(&conn);
        let _ = conn.close();
        result
    }

    /// The domain type every VM of this lbd gets (waits for the KVM probe).
    /// Managed backend VMs (`drivers::backend::vm`) share it.
    pub(crate) fn domain_type(&self) -> Result<DomainType, ComputeError> {
        self.domain_type
            .wait(PROBE_WAIT)
            .map_err(|e| start_error(NodeId(0), e))
    }

    /// Start of every domain and tap name of this lbd.
    pub(crate) fn prefix(&self) -> &str {
        &self.settings.prefix
    }

    fn slot(&self) -> MutexGuard<'_, Option<Connect>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A reference to the kept connection (the caller closes it), opening a
    /// new one when there is none or the kept one is dead.
    fn connection(&self, node_id: NodeId) -> Result<Connect, ComputeError> {
        // Held while opening, so concurrent calls wait for one reconnect
        // instead of each opening their own.
        let mut slot = self.slot();
        if let Some(conn) = slot.as_ref() {
            if self.alive(conn) {
                return Ok(conn.clone());
            }
        }
        if let Some(mut dead) = slot.take() {
            let _ = dead.close();
        }
        let uri = &self.settings.uri;
        let conn = Connect::open(Some(uri))
            .map_err(|e| start_error(node_id, format!("libvirt {uri}: {e}")))?;
        #[cfg(test)]
        self.severed.store(false, Ordering::SeqCst);
        if self.opens.fetch_add(1, Ordering::SeqCst) > 0 {
            tracing::warn!("libvirt {uri}: the connection was lost; reconnected");
        }
        let shared = conn.clone();
        *slot = Some(conn);
        Ok(shared)
    }

    /// Forgets the kept connection if it is still `dead` (another call may
    /// already have replaced it).
    fn drop_connection(&self, dead: &Connect) {
        let mut slot = self.slot();
        if slot.as_ref().is_some_and(|c| c.as_ptr() == dead.as_ptr()) {
            if let Some(mut conn) = slot.take() {
                let _ = conn.close();
            }
        }
    }

    fn alive(&self, conn: &Connect) -> bool {
        #[cfg(test)]
        if self.severed.load(Ordering::SeqCst) {
            return false;
        }
        conn.is_alive().unwrap_or(false)
    }

    #[cfg(test)]
    fn opens(&self) -> u64 {
        self.opens.load(Ordering::SeqCst)
    }

    /// Stands for libvirtd going away: from now on the kept connection
    /// reports itself dead.
    #[cfg(test)]
    fn sever(&self) {
        self.severed.store(true, Ordering::SeqCst);
    }

    fn names(&self) -> MutexGuard<'_, HashMap<NodeId, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn domain_name(&self, spec: &NodeSpec) -> String {
        format!("{}-{}-{}", self.settings.prefix, spec.name, spec.node_id)
    }

    fn tap_name(&self, node_id: NodeId) -> String {
        format!("{}v{node_id}", self.settings.prefix)
    }

    fn console_log(&self, node_id: NodeId) -> PathBuf {
        self.settings
            .dir
            .join(format!("node-{node_id}.console.log"))
    }

    /// The node id of a domain of ours, from its name.
    fn node_id_of(&self, domain_name: &str) -> Option<NodeId> {
        node_id_of(&self.settings.prefix, domain_name)
    }

    /// The "pid" of a running domain of `node_id`, remembered with the
    /// domain's UUID so its lifecycle events can be matched to it.
    fn note_running(&self, node_id: NodeId, d: &Domain) -> u32 {
        let pid = domain_pid(d);
        if let Ok(uuid) = d.get_uuid_string() {
            self.watched.running(node_id, uuid, pid);
        }
        pid
    }

    /// Our domains by node id; their names are remembered for [`Self::find`].
    fn domains(&self, conn: &Connect) -> Result<Vec<(NodeId, Domain)>, ComputeError> {
        let all = conn
            .list_all_domains(0)
            .map_err(|e| start_error(NodeId(0), format!("listing domains: {e}")))?;
        let mut names = self.names();
        Ok(all
            .into_iter()
            .filter_map(|d| {
                let name = d.get_name().ok()?;
                let id = self.node_id_of(&name)?;
                names.insert(id, name);
                Some((id, d))
            })
            .collect())
    }

    fn find(&self, conn: &Connect, node_id: NodeId) -> Result<Option<Domain>, ComputeError> {
        let known = self.names().get(&node_id).cloned();
        let Some(name) = known else {
            // Not started by this lbd process (it restarted, or this is a
            // new node): a listing finds it by the name prefix, if it exists.
            return Ok(self
                .domains(conn)?
                .into_iter()
                .find(|(id, _)| *id == node_id)
                .map(|(_, d)| d));
        };
        // A node id always names the same domain, so a missing one is gone.
        match Domain::lookup_by_name(conn, &name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(start_error(node_id, format!("looking up {name}: {e}"))),
        }
    }

    /// The domain XML of a node, whose secret is on the disk at `disk`.
    pub fn domain_xml(
        &self,
        spec: &NodeSpec,
        domain_type: DomainType,
        disk: &std::path::Path,
    ) -> Result<String, ComputeError> {
        let IpAddr::V4(ip) = spec.admin_addr.ip() else {
            return Err(start_error(spec.node_id, "VM nodes need an IPv4 address"));
        };
        let s = &self.settings;
        let boot = domain_xml::Boot {
            domain_type,
            kernel: &s.kernel,
            initrd: Some(&s.initrd),
            memory_mib: s.memory_mib,
            vcpus: s.vcpus,
        };
        Ok(domain_xml::node_xml(
            &boot,
            &domain_xml::NodeDomain {
                name: &self.domain_name(spec),
                ip,
                prefix_len: spec.prefix_len,
                node_id: spec.node_id,
                tap: &self.tap_name(spec.node_id),
                console: &self.console_log(spec.node_id),
                secret_disk: disk,
            },
        ))
    }

    /// Writes the node's secret disk and creates its VM; the disk goes
    /// again when the VM cannot be made.
    fn create_vm(&self, conn: &Connect, spec: &NodeSpec) -> Result<Domain, ComputeError> {
        let domain_type = self
            .domain_type
            .wait(PROBE_WAIT)
            .map_err(|e| start_error(spec.node_id, e))?;
        let disk = self.disks.write(spec.node_id, &spec.secret)?;
        let created = self.domain_xml(spec, domain_type, &disk).and_then(|xml| {
            Domain::create_xml(conn, &xml, 0)
                .map_err(|e| start_error(spec.node_id, format!("creating the VM: {e}")))
        });
        if created.is_err() {
            self.disks.remove(spec.node_id);
        }
        created
    }
}

impl Drop for LibvirtCompute {
    fn drop(&mut self) {
        // `Connect` has no `Drop` of its own: without this the connection
        // stays open until the process exits.
        if let Some(mut conn) = self.slot().take() {
            let _ = conn.close();
        }
    }
}

/// The node id of a domain named by a driver with `prefix`.
fn node_id_of(prefix: &str, domain_name: &str) -> Option<NodeId> {
    let rest = domain_name.strip_prefix(&format!("{prefix}-"))?;
    rest.rsplit('-').next()?.parse().ok()
}

fn domain_pid(d: &Domain) -> u32 {
    // A running domain's id stands in for a pid (NodeObservation's shape).
    d.get_id().unwrap_or(0)
}

impl ComputeDriver for LibvirtCompute {
    fn name(&self) -> &'static str {
        "libvirt"
    }

    fn ensure_node(&self, spec: &NodeSpec) -> Result<NodeObservation, ComputeError> {
        self.names().insert(spec.node_id, self.domain_name(spec));
        self.with_connection(spec.node_id, |conn| {
            if let Some(d) = self.find(conn, spec.node_id)? {
                if d.is_active().unwrap_or(false) {
                    return Ok(NodeObservation::Running {
                        pid: self.note_running(spec.node_id, &d),
                    });
                }
                if d.is_persistent().unwrap_or(false) {
                    let _ = d.undefine();
                }
            }
            let _ = fs::remove_file(self.console_log(spec.node_id));
            let domain = self.create_vm(conn, spec)?;
            if let Some(netns) = &spec.netns {
                if let Err(e) = crate::drivers::network::netns::attach_to_bridge(
                    &self.tap_name(spec.node_id),
                    netns,
                ) {
                    let _ = domain.destroy();
                    self.disks.remove(spec.node_id);
                    return Err(start_error(spec.node_id, e));
                }
            }
            Ok(NodeObservation::Running {
                pid: self.note_running(spec.node_id, &domain),
            })
        })
    }

    fn observe_node(&self, node_id: NodeId) -> NodeObservation {
        let found = self.with_connection(node_id, |conn| {
            Ok(self
                .find(conn, node_id)?
                .filter(|d| d.is_active().unwrap_or(false))
                .map(|d| self.note_running(node_id, &d)))
        });
        match found {
            Ok(Some(pid)) => NodeObservation::Running { pid },
            Ok(None) if self.console_log(node_id).exists() => NodeObservation::Exited {
                reason: "the VM is gone (destroyed or crashed)".into(),
            },
            Ok(None) => NodeObservation::Absent,
            // libvirt unreachable: say nothing changed rather than fail a node over.
            Err(e) => {
                tracing::warn!("libvirt: {e}");
                NodeObservation::Running { pid: 0 }
            }
        }
    }

    fn destroy_node(&self, node_id: NodeId) -> Result<(), ComputeError> {
        // Its end is lbd's doing, not one to report.
        self.watched.stopping(node_id);
        self.with_connection(node_id, |conn| {
            if let Some(d) = self.find(conn, node_id)? {
                if d.is_active().unwrap_or(false) {
                    d.destroy().map_err(|e| ComputeError::Stop {
                        node_id,
                        reason: e.to_string(),
                    })?;
                }
                // Transient domains vanish when destroyed; a defined one is undefined.
                if d.is_persistent().unwrap_or(false) {
                    let _ = d.undefine();
                }
            }
            Ok(())
        })?;
        self.names().remove(&node_id);
        let _ = fs::remove_file(self.console_log(node_id));
        self.disks.remove(node_id);
        Ok(())
    }

    fn list_nodes(&self) -> Vec<NodeId> {
        self.with_connection(NodeId(0), |conn| {
            Ok(self.domains(conn)?.into_iter().map(|(id, _)| id).collect())
        })
        .unwrap_or_default()
    }

    fn log_tail(&self, node_id: NodeId) -> String {
        super::process::tail(&self.console_log(node_id), 2048)
    }

    fn node_address_on_host(&self) -> bool {
        false
    }

    fn ready_timeout(&self) -> Option<std::time::Duration> {
        // Seconds under TCG on an idle host; far more on a loaded one.
        Some(std::time::Duration::from_secs(120))
    }

    /// Lifecycle events (`events.rs`): a VM that stops or crashes by
    /// itself is reported the moment libvirt says so.
    fn report_exits(&self, sink: ExitSink) {
        let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        if events.is_some() {
            return;
        }
        let s = &self.settings;
        match events::EventThread::spawn(
            s.uri.clone(),
            s.prefix.clone(),
            self.watched.clone(),
            sink,
        ) {
            Ok(thread) => *events = Some(thread),
            Err(e) => tracing::warn!("libvirt events: {e}; missed checks find ended VMs"),
        }
    }

    fn shutdown(&self) {
        let events = self
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(events) = events {
            events.stop();
        }
        self.probe_cancel.store(true, Ordering::SeqCst);
        self.domain_type.stop();
        let thread = self
            .probe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The probe destroys its VM before it ends.
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}
