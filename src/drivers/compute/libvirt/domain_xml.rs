//! The domain XML of a node VM and of the KVM probe VM. Every value that
//! reaches the XML is validated (names, hex secrets) or escaped.

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::config::VmDomainType;

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
}

/// Whether /dev/kvm can be opened for writing: needed for `kvm`, though not
/// enough (under nested virtualisation it opens and guests never run).
pub fn kvm_device_opens() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// What `--vm-domain-type` asks for: one type, or `Auto` (probed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainTypeSetting {
    Auto,
    Fixed(DomainType),
}

impl From<VmDomainType> for DomainTypeSetting {
    fn from(choice: VmDomainType) -> Self {
        match choice {
            VmDomainType::Auto => Self::Auto,
            VmDomainType::Kvm => Self::Fixed(DomainType::Kvm),
            VmDomainType::Qemu => Self::Fixed(DomainType::Qemu),
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

fn path(p: &Path) -> String {
    xml_escape(&p.to_string_lossy())
}

/// What every VM of this lbd boots.
pub struct Boot<'a> {
    pub domain_type: DomainType,
    pub kernel: &'a Path,
    /// A kernel with everything built in boots without one (VM backends).
    pub initrd: Option<&'a Path>,
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// One node VM. The secret is not here: it is on the disk at `secret_disk`
/// (read-only for the guest), so it is in neither the XML nor qemu's
/// command line nor the guest's `/proc/cmdline`.
pub struct NodeDomain<'a> {
    pub name: &'a str,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub node_id: crate::model::NodeId,
    pub tap: &'a str,
    pub console: &'a Path,
    pub secret_disk: &'a Path,
}

pub fn node_xml(boot: &Boot<'_>, node: &NodeDomain<'_>) -> String {
    let cmdline = format!(
        "console=ttyS0 quiet lbaas.ip={}/{} lbaas.node={}",
        node.ip, node.prefix_len, node.node_id
    );
    let devices = format!(
        "    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='ethernet'>
      <target dev='{tap}'/>
      <model type='virtio'/>
    </interface>
",
        disk = path(node.secret_disk),
        tap = xml_escape(node.tap),
    );
    domain(boot, node.name, &cmdline, &devices, node.console)
}

/// One managed backend VM (issue 16): the template's kernel and command
/// line, and a NIC like a node's (a tap that joins the project's bridge).
/// No disk: a backend's template holds nothing secret.
pub struct BackendDomain<'a> {
    pub name: &'a str,
    /// The template's command line, placeholders filled, with lbd's
    /// `lbaas.ip=`/`lbaas.port=` already appended.
    pub cmdline: &'a str,
    pub tap: &'a str,
    /// The NIC's MAC, from the backend's address: a new VM on an address an
    /// old one had answers ARP with the same MAC, so the nodes' neighbour
    /// entries stay right (a random MAC would leave them pointing at the
    /// destroyed VM until they expire).
    pub ip: Ipv4Addr,
    pub console: &'a Path,
}

/// `52:54:00` (qemu's prefix) and the address's last three octets: unique
/// on one project bridge (a subnet is at most a /8 of the pool).
pub fn backend_mac(ip: Ipv4Addr) -> String {
    let [_, b, c, d] = ip.octets();
    format!("52:54:00:{b:02x}:{c:02x}:{d:02x}")
}

pub fn backend_xml(boot: &Boot<'_>, backend: &BackendDomain<'_>) -> String {
    let devices = format!(
        "    <interface type='ethernet'>
      <mac address='{mac}'/>
      <target dev='{tap}'/>
      <model type='virtio'/>
    </interface>
",
        mac = backend_mac(backend.ip),
        tap = xml_escape(backend.tap),
    );
    domain(
        boot,
        backend.name,
        backend.cmdline,
        &devices,
        backend.console,
    )
}

/// The probe VM: the node image with `lbaas.probe`, on which the image's
/// init prints that it runs and halts; no disk, no NIC.
pub fn probe_xml(boot: &Boot<'_>, name: &str, console: &Path) -> String {
    domain(boot, name, "console=ttyS0 quiet lbaas.probe", "", console)
}

fn domain(boot: &Boot<'_>, name: &str, cmdline: &str, devices: &str, console: &Path) -> String {
    format!(
        "<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>{kernel}</kernel>
{initrd}    <cmdline>{cmdline}</cmdline>
  </os>
  <on_crash>destroy</on_crash>
  <devices>
{devices}    <serial type='file'>
      <source path='{console}'/>
      <target port='0'/>
    </serial>
  </devices>
</domain>
",
        domain_type = boot.domain_type.as_str(),
        name = xml_escape(name),
        memory = boot.memory_mib,
        vcpus = boot.vcpus,
        kernel = path(boot.kernel),
        initrd = boot
            .initrd
            .map(|i| format!("    <initrd>{}</initrd>\n", path(i)))
            .unwrap_or_default(),
        cmdline = xml_escape(cmdline),
        console = path(console),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeId;

    fn boot() -> Boot<'static> {
        Boot {
            domain_type: DomainType::Qemu,
            kernel: Path::new("/img/vmlinuz"),
            initrd: Some(Path::new("/img/initramfs.cpio.gz")),
            memory_mib: 128,
            vcpus: 1,
        }
    }

    #[test]
    fn node_xml_has_the_disk_and_no_secret_argument() {
        let xml = node_xml(
            &boot(),
            &NodeDomain {
                name: "ut-demo-web-7",
                ip: "100.64.3.2".parse().unwrap(),
                prefix_len: 24,
                node_id: NodeId(7),
                tap: "utv7",
                console: Path::new("/s/node-7.console.log"),
                secret_disk: Path::new("/run/x/ut-7.img"),
            },
        );
        assert!(xml.starts_with("<domain type='qemu'>"), "{xml}");
        assert!(
            xml.contains(
                "<cmdline>console=ttyS0 quiet lbaas.ip=100.64.3.2/24 lbaas.node=7</cmdline>"
            ),
            "{xml}"
        );
        assert!(!xml.contains("secret="), "{xml}");
        assert!(xml.contains("<source file='/run/x/ut-7.img'/>"), "{xml}");
        assert!(xml.contains("<readonly/>"), "{xml}");
        assert!(xml.contains("<target dev='utv7'/>"));
    }

    #[test]
    fn probe_xml_boots_the_image_in_probe_mode() {
        let mut b = boot();
        b.domain_type = DomainType::Kvm;
        let xml = probe_xml(&b, "ut-kvm-probe", Path::new("/s/probe.log"));
        assert!(xml.starts_with("<domain type='kvm'>"), "{xml}");
        assert!(xml.contains("lbaas.probe"), "{xml}");
        assert!(
            !xml.contains("<disk") && !xml.contains("<interface"),
            "{xml}"
        );
    }

    #[test]
    fn backend_xml_has_a_nic_no_disk_and_the_escaped_cmdline() {
        let mut b = boot();
        b.initrd = None;
        let xml = backend_xml(
            &b,
            &BackendDomain {
                name: "ut-bk9",
                cmdline: "console=ttyS0 app=<x> lbaas.ip=100.64.3.9/24",
                tap: "utb9",
                ip: "100.64.3.9".parse().unwrap(),
                console: Path::new("/s/vm-9.console.log"),
            },
        );
        assert!(xml.contains("<name>ut-bk9</name>"), "{xml}");
        assert!(
            xml.contains("app=&lt;x&gt; lbaas.ip=100.64.3.9/24"),
            "{xml}"
        );
        assert!(xml.contains("<target dev='utb9'/>"), "{xml}");
        assert!(xml.contains("<mac address='52:54:00:40:03:09'/>"), "{xml}");
        assert!(!xml.contains("<initrd>") && !xml.contains("<disk"), "{xml}");
    }

    #[test]
    fn escapes_and_settings() {
        assert_eq!(xml_escape("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
        assert_eq!(
            DomainTypeSetting::from(VmDomainType::Kvm),
            DomainTypeSetting::Fixed(DomainType::Kvm)
        );
        assert_eq!(
            DomainTypeSetting::from(VmDomainType::Qemu),
            DomainTypeSetting::Fixed(DomainType::Qemu)
        );
        assert_eq!(
            DomainTypeSetting::from(VmDomainType::Auto),
            DomainTypeSetting::Auto
        );
    }
}
