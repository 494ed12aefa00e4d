//! The driver's lifecycle on libvirt's test driver (`test:///default`).

use super::*;
use std::path::Path;

/// test:///default is one host shared by every connection of the
/// process while any is open, so tests running side by side each use
/// their own prefix to see only their own domains.
fn driver(dir: &Path, prefix: &str) -> LibvirtCompute {
    LibvirtCompute::new(VmSettings {
        uri: "test:///default".into(),
        domain_type: DomainTypeSetting::Fixed(DomainType::Test),
        kernel: "/nonexistent/vmlinuz".into(),
        initrd: "/nonexistent/initrd".into(),
        memory_mib: 128,
        vcpus: 1,
        prefix: prefix.into(),
        dir: dir.to_path_buf(),
        secret_dir: dir.join("secrets"),
        warnings: ComputeWarnings::default(),
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
fn xml_names_the_node_and_its_secret_is_on_a_disk() {
    let dir = std::env::temp_dir().join(format!("lbaas-virt-xml-{}", std::process::id()));
    let d = driver(&dir, "ut");
    let disk = d.disks.path(NodeId(7));
    let xml = d
        .domain_xml(&spec(NodeId(7)), DomainType::Test, &disk)
        .unwrap();
    assert!(xml.starts_with("<domain type='test'>"), "{xml}");
    assert!(xml.contains("<name>ut-demo-web-7</name>"), "{xml}");
    assert!(xml.contains("lbaas.ip=100.64.3.2/24 lbaas.node=7</cmdline>"));
    assert!(!xml.contains("00ff"), "the secret is not in the XML: {xml}");
    assert!(xml.contains(&format!("<source file='{}'/>", disk.display())));
    assert!(xml.contains("<target dev='utv7'/>"));
    assert!(xml.contains("<memory unit='MiB'>128</memory>"));
    assert_eq!(d.node_id_of("ut-demo-web-7"), Some(NodeId(7)));
    assert_eq!(d.node_id_of("ut2-demo-web-7"), None, "another lbd's VM");
    assert_eq!(d.node_id_of("ut-kvm-probe"), None, "the probe VM");
    assert_eq!(d.node_id_of("other"), None);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_node_gets_its_secret_disk_until_it_is_destroyed() {
    let dir = std::env::temp_dir().join(format!("lbaas-virt-disk-{}", std::process::id()));
    let d = driver(&dir, "us");
    let node = NodeId(9);
    d.ensure_node(&spec(node)).unwrap();
    let disk = d.disks.path(node);
    assert_eq!(&fs::read(&disk).unwrap()[..5], b"00ff\n");
    let mut bad = spec(NodeId(10));
    bad.secret = "x' onload='".into();
    assert!(d.ensure_node(&bad).is_err(), "only hex secrets");
    assert!(!d.disks.path(NodeId(10)).exists());
    d.destroy_node(node).unwrap();
    assert!(!disk.exists(), "destroying the node removes its disk");
    let _ = fs::remove_dir_all(dir);
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
    let xml = d
        .domain_xml(&spec(node), DomainType::Test, &d.disks.path(node))
        .unwrap();
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
