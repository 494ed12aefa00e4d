//! The libvirt compute driver (`--compute libvirt`, cargo feature
//! `libvirt`): each LB node is a transient VM named
//! `<prefix>-<project>-<instance>-<node id>` that boots the image of
//! `scripts/build-image.sh` directly (kernel + initramfs). The node's address
//! and secret go on the kernel command line; its virtio NIC is a tap that
//! libvirt creates on the host and that is then moved into the project's
//! namespace as a port of its bridge (netns network driver). The serial
//! console goes to `nodes/node-<id>.console.log` in the state dir.

use std::fs;
use std::net::IpAddr;
use std::path::PathBuf;

use virt::connect::Connect;
use virt::domain::Domain;

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
        let driver = LibvirtCompute { settings };
        driver.with_connection(NodeId(0), |_| Ok(()))?;
        Ok(driver)
    }

    fn with_connection<T>(
        &self,
        node_id: NodeId,
        f: impl FnOnce(&Connect) -> Result<T, ComputeError>,
    ) -> Result<T, ComputeError> {
        let mut conn = Connect::open(Some(&self.settings.uri))
            .map_err(|e| start_error(node_id, format!("libvirt {}: {e}", self.settings.uri)))?;
        let result = f(&conn);
        let _ = conn.close();
        result
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

    /// Our running domains by node id.
    fn domains(&self, conn: &Connect) -> Result<Vec<(NodeId, Domain)>, ComputeError> {
        let all = conn
            .list_all_domains(0)
            .map_err(|e| start_error(NodeId(0), format!("listing domains: {e}")))?;
        Ok(all
            .into_iter()
            .filter_map(|d| {
                let name = d.get_name().ok()?;
                Some((self.node_id_of(&name)?, d))
            })
            .collect())
    }

    fn find(&self, conn: &Connect, node_id: NodeId) -> Result<Option<Domain>, ComputeError> {
        Ok(self
            .domains(conn)?
            .into_iter()
            .find(|(id, _)| *id == node_id)
            .map(|(_, d)| d))
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

    fn driver(dir: &Path) -> LibvirtCompute {
        LibvirtCompute::new(VmSettings {
            uri: "test:///default".into(),
            domain_type: DomainType::Test,
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: "/nonexistent/initrd".into(),
            memory_mib: 128,
            vcpus: 1,
            prefix: "ut".into(),
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
        let d = driver(&dir);
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
        let d = driver(&dir);
        // test:///default is per connection: each call sees a fresh host, so
        // only what one connection does can be checked in one go.
        d.with_connection(NodeId(0), |conn| {
            let xml = d.domain_xml(&spec(NodeId(3))).unwrap();
            let dom = Domain::create_xml(conn, &xml, 0).map_err(|e| start_error(NodeId(3), e))?;
            assert!(dom.is_active().unwrap());
            let ours: Vec<NodeId> = d.domains(conn)?.into_iter().map(|(id, _)| id).collect();
            assert_eq!(
                ours,
                vec![NodeId(3)],
                "the test driver's own domain is not ours"
            );
            assert!(d.find(conn, NodeId(3))?.is_some());
            dom.destroy().unwrap();
            assert!(
                d.find(conn, NodeId(3))?.is_none(),
                "a destroyed transient VM is gone"
            );
            Ok(())
        })
        .unwrap();
        let _ = fs::remove_dir_all(dir);
    }
}
