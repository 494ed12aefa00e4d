//! The libvirt compute driver (`--compute libvirt`, cargo feature
//! `libvirt`): each LB node is a transient VM named
//! `<prefix>-<project>-<instance>-<node id>` that boots the image of
//! `scripts/build-image.sh` directly (kernel + initramfs). The node's address
//! and secret go on the kernel command line; its virtio NIC is a tap that
//! libvirt creates on the host and that is then moved into the project's
//! namespace as a port of its bridge (netns network driver). The serial
//! console goes to `nodes/node-<id>.console.log` in the state dir.

use std::collections::HashMap;
use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;
#[cfg(test)]
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use super::{ComputeDriver, ComputeError, NodeObservation, NodeSpec};
use crate::config::VmDomainType;
use crate::model::NodeId;

/// The `type` of a libvirt domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    Kvm,
    /// Emulation (TCG).
    Qemu,
    /// libvirt's test driver (`test:///default`), which boots nothing.
    Test,
}

impl DomainType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Qemu => "qemu",
            Self::Test => "test",
        }
    }

    /// `kvm` when /dev/kvm can be opened for writing, else `qemu` (TCG).
    pub fn detect() -> Self {
        let kvm = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if kvm {
            Self::Kvm
        } else {
            Self::Qemu
        }
    }
}

impl From<VmDomainType> for DomainType {
    fn from(choice: VmDomainType) -> Self {
        match choice {
            VmDomainType::Auto => Self::detect(),
            VmDomainType::Kvm => Self::Kvm,
            VmDomainType::Qemu => Self::Qemu,
        }
    }
}

/// What every VM gets.
#[derive(Debug, Clone)]
pub struct VmSettings {
    /// libvirt connection URI, e.g. `qemu:///system`.
    pub uri: String,
    pub domain_type: DomainType,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// Start of every domain and tap name this lbd owns (1 to 6 characters).
    pub prefix: String,
    /// Where console logs go.
    pub dir: PathBuf,
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

impl LibvirtCompute {
    /// Checks the settings and that libvirt answers.
    pub fn new(settings: VmSettings) -> Result<Self, ComputeError> {
        let bad = |reason: String| ComputeError::Start {
            node_id: NodeId(0),
            reason,
        };
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
        if settings.domain_type != DomainType::Test {
            for f in [&settings.kernel, &settings.initrd] {
                if !f.exists() {
                    return Err(bad(format!(
                        "{} is missing: build the node image with scripts/build-image.sh",
                        f.display()
                    )));
                }
            }
        }
        fs::create_dir_all(&settings.dir)?;
        // Errors come back as results; libvirt's default handler would also
        // print each one to stderr.
        virt::error::clear_error_callback();
        let driver = LibvirtCompute {
            settings,
            conn: Mutex::new(None),
            opens: AtomicU64::new(0),
            names: Mutex::new(HashMap::new()),
            #[cfg(test)]
            severed: AtomicBool::new(false),
        };
        driver.with_connection(NodeId(0), |_| Ok(()))?;
        Ok(driver)
    }

    /// Runs `f` on the shared connection. A call that fails because the
    /// connection dropped under it (libvirtd restarted) runs once more on a
    /// fresh one; other failures are not retried, so a VM that cannot be
    /// created is not tried twice.
    fn with_connection<T>(
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
        let rest = domain_name.strip_prefix(&format!("{}-", self.settings.prefix))?;
        rest.rsplit('-').next()?.parse().ok()
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

    /// The domain XML of a node; every value is validated or escaped.
    pub fn domain_xml(&self, spec: &NodeSpec) -> Result<String, ComputeError> {
        let IpAddr::V4(ip) = spec.admin_addr.ip() else {
            return Err(start_error(spec.node_id, "VM nodes need an IPv4 address"));
        };
        if !spec.secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(start_error(spec.node_id, "the node secret must be hex"));
        }
        let s = &self.settings;
        let cmdline = format!(
            "console=ttyS0 quiet lbaas.ip={ip}/{} lbaas.node={} lbaas.secret={}",
            spec.prefix_len, spec.node_id, spec.secret
        );
        Ok(format!(
            "<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='ethernet'>
      <target dev='{tap}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
",
            domain_type = s.domain_type.as_str(),
            name = xml_escape(&self.domain_name(spec)),
            memory = s.memory_mib,
            vcpus = s.vcpus,
            kernel = xml_escape(&s.kernel.to_string_lossy()),
            initrd = xml_escape(&s.initrd.to_string_lossy()),
            cmdline = xml_escape(&cmdline),
            tap = xml_escape(&self.tap_name(spec.node_id)),
            console = xml_escape(&self.console_log(spec.node_id).to_string_lossy()),
        ))
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

/// Escapes text for XML content and single-quoted attributes.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
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
                        pid: domain_pid(&d),
                    });
                }
                if d.is_persistent().unwrap_or(false) {
                    let _ = d.undefine();
                }
            }
            let _ = fs::remove_file(self.console_log(spec.node_id));
            let xml = self.domain_xml(spec)?;
            let domain = Domain::create_xml(conn, &xml, 0)
                .map_err(|e| start_error(spec.node_id, format!("creating the VM: {e}")))?;
            if let Some(netns) = &spec.netns {
                if let Err(e) = crate::drivers::network::netns::attach_to_bridge(
                    &self.tap_name(spec.node_id),
                    netns,
                ) {
                    let _ = domain.destroy();
                    return Err(start_error(spec.node_id, e));
                }
            }
            Ok(NodeObservation::Running {
                pid: domain_pid(&domain),
            })
        })
    }

    fn observe_node(&self, node_id: NodeId) -> NodeObservation {
        let found = self.with_connection(node_id, |conn| {
            Ok(self
                .find(conn, node_id)?
                .filter(|d| d.is_active().unwrap_or(false))
                .map(|d| domain_pid(&d)))
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// test:///default is one host shared by every connection of the
    /// process while any is open, so tests running side by side each use
    /// their own prefix to see only their own domains.
    fn driver(dir: &Path, prefix: &str) -> LibvirtCompute {
        LibvirtCompute::new(VmSettings {
            uri: "test:///default".into(),
            domain_type: DomainType::Test,
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: "/nonexistent/initrd".into(),
            memory_mib: 128,
            vcpus: 1,
            prefix: prefix.into(),
            dir: dir.to_path_buf(),
        })
        .unwrap()
    }

    fn spec(node_id: NodeId) -> NodeSpec {
        NodeSpec {
            node_id,
            admin_addr: "100.64.3.2:9901".parse().unwrap(),
            secret: "00ff".into(),
            netns: None,
            name: "demo-web".into(),
            prefix_len: 24,
        }
    }

    #[test]
    fn xml_names_the_node_and_escapes() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-xml-{}", std::process::id()));
        let d = driver(&dir, "ut");
        let xml = d.domain_xml(&spec(NodeId(7))).unwrap();
        assert!(xml.starts_with("<domain type='test'>"), "{xml}");
        assert!(xml.contains("<name>ut-demo-web-7</name>"), "{xml}");
        assert!(xml.contains("lbaas.ip=100.64.3.2/24 lbaas.node=7 lbaas.secret=00ff"));
        assert!(xml.contains("<target dev='utv7'/>"));
        assert!(xml.contains("<memory unit='MiB'>128</memory>"));
        assert_eq!(xml_escape("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
        let mut bad = spec(NodeId(7));
        bad.secret = "x' onload='".into();
        assert!(
            d.domain_xml(&bad).is_err(),
            "only hex secrets reach the XML"
        );
        assert_eq!(d.node_id_of("ut-demo-web-7"), Some(NodeId(7)));
        assert_eq!(d.node_id_of("ut2-demo-web-7"), None, "another lbd's VM");
        assert_eq!(d.node_id_of("other"), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn domain_type_from_the_flag() {
        assert_eq!(DomainType::from(VmDomainType::Kvm), DomainType::Kvm);
        assert_eq!(DomainType::from(VmDomainType::Qemu), DomainType::Qemu);
        let auto = DomainType::from(VmDomainType::Auto);
        assert_eq!(auto, DomainType::detect());
        assert_ne!(
            auto,
            DomainType::Test,
            "auto picks a domain type that boots"
        );
        assert_eq!(DomainType::Qemu.as_str(), "qemu");
    }

    #[test]
    fn lifecycle_on_the_libvirt_test_driver() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-life-{}", std::process::id()));
        let d = driver(&dir, "ul");
        let node = NodeId(3);
        assert_eq!(d.observe_node(node), NodeObservation::Absent);
        assert!(matches!(
            d.ensure_node(&spec(node)).unwrap(),
            NodeObservation::Running { .. }
        ));
        assert!(matches!(
            d.observe_node(node),
            NodeObservation::Running { .. }
        ));
        assert_eq!(
            d.list_nodes(),
            vec![node],
            "the test driver's own domain is not ours"
        );
        d.destroy_node(node).unwrap();
        assert_eq!(
            d.observe_node(node),
            NodeObservation::Absent,
            "a destroyed transient VM is gone"
        );
        assert!(d.list_nodes().is_empty());
        assert_eq!(d.opens(), 1);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_domain_lbd_did_not_start_is_found_by_its_prefix() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-adopt-{}", std::process::id()));
        let d = driver(&dir, "ua");
        let node = NodeId(4);
        // Created behind the driver's back, as by the lbd before a restart.
        let xml = d.domain_xml(&spec(node)).unwrap();
        d.with_connection(node, |conn| {
            Domain::create_xml(conn, &xml, 0).map_err(|e| start_error(node, e))?;
            Ok(())
        })
        .unwrap();
        assert!(d.names().is_empty());
        assert!(matches!(
            d.observe_node(node),
            NodeObservation::Running { .. }
        ));
        assert_eq!(
            d.names().get(&node).map(String::as_str),
            Some("ua-demo-web-4")
        );
        d.with_connection(node, |conn| {
            let dom = Domain::lookup_by_name(conn, "ua-demo-web-4").unwrap();
            dom.destroy().unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(d.observe_node(node), NodeObservation::Absent);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn one_connection_serves_every_call() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-one-{}", std::process::id()));
        let d = driver(&dir, "uo");
        assert_eq!(d.opens(), 1, "new() checks that libvirt answers");
        for _ in 0..3 {
            d.ensure_node(&spec(NodeId(5))).unwrap();
            d.observe_node(NodeId(5));
            d.list_nodes();
            d.destroy_node(NodeId(5)).unwrap();
        }
        assert_eq!(d.opens(), 1);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_dropped_connection_is_replaced() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-drop-{}", std::process::id()));
        let d = driver(&dir, "ur");
        d.sever();
        assert_eq!(d.observe_node(NodeId(6)), NodeObservation::Absent);
        assert_eq!(d.opens(), 2, "a dead connection is not used");
        d.list_nodes();
        assert_eq!(d.opens(), 2, "the new connection is kept");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_call_the_connection_drops_under_runs_once_more() {
        let dir = std::env::temp_dir().join(format!("lbaas-virt-retry-{}", std::process::id()));
        let d = driver(&dir, "uc");
        let calls = std::sync::atomic::AtomicU32::new(0);
        let dropping = |_: &Connect| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                d.sever();
                return Err(start_error(NodeId(0), "connection reset"));
            }
            Ok("answer")
        };
        assert_eq!(d.with_connection(NodeId(0), dropping).unwrap(), "answer");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(d.opens(), 2);

        calls.store(0, Ordering::SeqCst);
        let failing = |_: &Connect| -> Result<(), ComputeError> {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(start_error(NodeId(0), "bad XML"))
        };
        assert!(d.with_connection(NodeId(0), failing).is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a failure on a live connection is not retried"
        );
        assert_eq!(d.opens(), 2);
        let _ = fs::remove_dir_all(dir);
    }
}
