//! Logic tests of the reconciler: a real SQLite file and a real (in-memory)
//! DNS zone, with a fake host standing in for node processes and their admin API.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{ReconcileSettings, Reconciler};
use crate::dns::{DnsDriver, EmbeddedDns};
use crate::drivers::compute::{ComputeDriver, ComputeError, NodeObservation, NodeSpec};
use crate::drivers::network::loopback::LoopbackNetwork;
use crate::drivers::node_admin::{NodeAdmin, NodeAdminError};
use crate::model::{InstanceCreate, NodeConfig, NodeState, NodeStatus, ProvisioningStatus};
use crate::store::{self, Store};

/// Fake node processes and their admin APIs in one: a started node answers
/// `/status`; a killed one does not, and loses its config.
#[derive(Default)]
struct FakeHost {
    /// Running nodes by id: (admin address, config version in force).
    running: Mutex<HashMap<i64, (SocketAddr, Option<u64>)>>,
    exited: Mutex<HashMap<i64, String>>,
    starts: AtomicUsize,
    pushes: AtomicUsize,
    /// When set, every config push fails with this message.
    refuse_config: Mutex<Option<String>>,
    /// When set, stopping a node fails with this message.
    refuse_destroy: Mutex<Option<String>>,
    configs: Mutex<Vec<NodeConfig>>,
}

impl FakeHost {
    fn kill(&self, node_id: i64) {
        self.running.lock().unwrap().remove(&node_id);
        self.exited
            .lock()
            .unwrap()
            .insert(node_id, "killed by signal 9".into());
    }
}

impl ComputeDriver for FakeHost {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn ensure_node(&self, spec: &NodeSpec) -> Result<NodeObservation, ComputeError> {
        if let std::collections::hash_map::Entry::Vacant(slot) =
            self.running.lock().unwrap().entry(spec.node_id)
        {
            self.starts.fetch_add(1, Ordering::SeqCst);
            slot.insert((spec.admin_addr, None));
            self.exited.lock().unwrap().remove(&spec.node_id);
        }
        Ok(NodeObservation::Running {
            pid: 1000 + spec.node_id as u32,
        })
    }
    fn observe_node(&self, node_id: i64) -> NodeObservation {
        if self.running.lock().unwrap().contains_key(&node_id) {
            NodeObservation::Running {
                pid: 1000 + node_id as u32,
            }
        } else if let Some(reason) = self.exited.lock().unwrap().get(&node_id) {
            NodeObservation::Exited {
                reason: reason.clone(),
            }
        } else {
            NodeObservation::Absent
        }
    }
    fn destroy_node(&self, node_id: i64) -> Result<(), ComputeError> {
        if let Some(reason) = self.refuse_destroy.lock().unwrap().clone() {
            return Err(ComputeError::Stop { node_id, reason });
        }
        self.running.lock().unwrap().remove(&node_id);
        self.exited.lock().unwrap().remove(&node_id);
        Ok(())
    }
    fn list_nodes(&self) -> Vec<i64> {
        self.running.lock().unwrap().keys().copied().collect()
    }
    fn log_tail(&self, _node_id: i64) -> String {
        String::new()
    }
}

impl NodeAdmin for FakeHost {
    fn status<'a>(
        &'a self,
        addr: SocketAddr,
        _secret: &'a str,
    ) -> crate::dns::BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        Box::pin(async move {
            let running = self.running.lock().unwrap();
            let (_, version) =
                running
                    .values()
                    .find(|(a, _)| *a == addr)
                    .ok_or(NodeAdminError::Unreachable {
                        addr,
                        reason: "connection refused".into(),
                    })?;
            Ok(NodeStatus {
                config_version: *version,
                ..Default::default()
            })
        })
    }
    fn put_config<'a>(
        &'a self,
        addr: SocketAddr,
        _secret: &'a str,
        config: &'a NodeConfig,
    ) -> crate::dns::BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        Box::pin(async move {
            if let Some(message) = self.refuse_config.lock().unwrap().clone() {
                return Err(NodeAdminError::Refused {
                    addr,
                    status: 500,
                    message,
                });
            }
            self.pushes.fetch_add(1, Ordering::SeqCst);
            self.configs.lock().unwrap().push(config.clone());
            let mut running = self.running.lock().unwrap();
            let entry = running
                .values_mut()
                .find(|(a, _)| *a == addr)
                .expect("pushed to a running node");
            entry.1 = Some(config.version);
            Ok(NodeStatus {
                config_version: Some(config.version),
                ..Default::default()
            })
        })
    }
}

struct Harness {
    store: Store,
    host: Arc<FakeHost>,
    dns: Arc<EmbeddedDns>,
    reconciler: Arc<Reconciler>,
    db: std::path::PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
    }
}

fn harness() -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let db = std::env::temp_dir().join(format!(
        "lbaas-reconcile-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let store = Store::open(&db).unwrap();
    let host = Arc::new(FakeHost::default());
    let dns = Arc::new(EmbeddedDns::new("lbaas.internal", 5).unwrap());
    let network = Arc::new(LoopbackNetwork::new("127.0.0.0/8".parse().unwrap(), 16).unwrap());
    let settings = ReconcileSettings {
        node_ready_timeout: std::time::Duration::from_millis(200),
        // Errored objects are retried on every pass here.
        error_retry: std::time::Duration::ZERO,
        ..Default::default()
    };
    let reconciler = Arc::new(Reconciler::new(
        store.clone(),
        host.clone(),
        network,
        dns.clone(),
        host.clone(),
        settings,
    ));
    Harness {
        store,
        host,
        dns,
        reconciler,
        db,
    }
}

/// Stores a project and an instance the way the API handlers do.
fn create_instance(store: &Store, min_nodes: u32) -> i64 {
    let spec: InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080, "min_nodes": min_nodes,
        "backend": {"entities": ["127.0.0.1:9001", "127.0.0.1:9002"]}
    }))
    .unwrap();
    let spec = spec.validate().unwrap();
    store
        .transaction(|tx| {
            let p = store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?;
            Ok::<_, store::StoreError>(store::insert_instance(tx, p.id, &spec)?.id)
        })
        .unwrap()
}

fn instance(h: &Harness, id: i64) -> store::InstanceRow {
    h.store
        .read(|c| store::instance_by_id(c, id))
        .unwrap()
        .unwrap()
}

async fn dns_names(h: &Harness) -> Vec<String> {
    h.dns.names().await
}

#[tokio::test]
async fn create_flow_reaches_active_and_is_idempotent() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    let inst = instance(&h, id);
    assert_eq!(
        inst.provisioning_status,
        ProvisioningStatus::Active,
        "{:?}",
        inst.status_reason
    );
    let nodes = node_rows(&h, id);
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].address.to_string(),
        "127.5.0.2",
        "first address after the gateway"
    );
    assert_eq!(nodes[0].state, NodeState::Running);
    let config = h.host.configs.lock().unwrap()[0].clone();
    assert_eq!(
        (config.version, config.listen.to_string()),
        (1, "127.5.0.2:8080".to_string())
    );
    assert_eq!(config.backends.len(), 2);
    assert_eq!(dns_names(&h).await, vec!["web.demo".to_string()]);

    // A second pass changes nothing.
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(h.host.starts.load(Ordering::SeqCst), 1);
    assert_eq!(h.host.pushes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn update_pushes_a_new_generation_without_restarting() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    let mut spec = instance(&h, id).spec;
    spec.backends.truncate(1);
    h.store
        .read(|c| store::update_instance_spec(c, id, &spec))
        .unwrap();
    assert_eq!(
        instance(&h, id).provisioning_status,
        ProvisioningStatus::PendingUpdate
    );
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(
        instance(&h, id).provisioning_status,
        ProvisioningStatus::Active
    );
    let last = h.host.configs.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.version, last.backends.len()), (2, 1));
    assert_eq!(
        h.host.starts.load(Ordering::SeqCst),
        1,
        "no restart for an update"
    );
}

#[tokio::test]
async fn a_running_node_that_dies_leaves_dns_and_waits_for_failover() {
    let h = harness();
    let id = create_instance(&h.store, 2);
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    h.host.kill(nodes[0].id);
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(
        h.host.starts.load(Ordering::SeqCst),
        2,
        "not restarted in place: the health checker fails it over"
    );
    assert_eq!(
        h.dns.a_records("web.demo").await,
        vec![ipv4(&nodes[1])],
        "only the live node stays in DNS"
    );
    let events = instance_events(&h, id);
    let exited = events
        .iter()
        .find(|e| e.kind == "node_exited")
        .expect("an exit event");
    assert!(exited.message.contains("signal 9"), "{}", exited.message);
    // Recorded once, not on every pass.
    h.reconciler.reconcile_once().await.unwrap();
    let exits = instance_events(&h, id)
        .iter()
        .filter(|e| e.kind == "node_exited")
        .count();
    assert_eq!(exits, 1);
}

#[tokio::test]
async fn a_failed_node_is_replaced_then_deleted_after_the_grace_period() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    let old = node_rows(&h, id)[0].clone();
    h.host.kill(old.id);
    mark(&h, old.id, NodeState::Failed, 0);
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    assert_eq!(nodes.len(), 2, "the failed node stays for its grace period");
    let new = nodes.iter().find(|n| n.id != old.id).unwrap();
    assert_ne!(
        new.address, old.address,
        "the replacement has its own address"
    );
    assert_eq!(new.state, NodeState::Running);
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(new)]);
    let events = instance_events(&h, id);
    assert!(
        events
            .iter()
            .any(|e| e.kind == "failover" && e.message.contains(&old.address.to_string())),
        "{events:?}"
    );
    // Past the grace period, the failed node goes.
    mark(&h, old.id, NodeState::Failed, 61);
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [new.id]);
    assert!(instance_events(&h, id)
        .iter()
        .any(|e| e.kind == "node_deleted"));
}

#[tokio::test]
async fn a_recovered_node_sends_its_replacement_into_retirement() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    let old = node_rows(&h, id)[0].clone();
    mark(&h, old.id, NodeState::Failed, 0);
    h.reconciler.reconcile_once().await.unwrap();
    let replacement = node_rows(&h, id)[1].clone();
    // The health checker saw the old node healthy again.
    mark(&h, old.id, NodeState::Running, 0);
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    let retiring = nodes.iter().find(|n| n.id == replacement.id).unwrap();
    assert_eq!(retiring.state, NodeState::Retiring);
    assert_eq!(
        h.dns.a_records("web.demo").await,
        vec![ipv4(&old)],
        "DNS is restored first"
    );
    // Drained (no connections, past the DNS TTL): deleted.
    mark(&h, replacement.id, NodeState::Retiring, 6);
    h.reconciler.reconcile_once().await.unwrap();
    let ids: Vec<i64> = node_rows(&h, id).iter().map(|n| n.id).collect();
    assert_eq!(ids, [old.id]);
    assert!(!h.host.list_nodes().contains(&replacement.id));
}

#[tokio::test]
async fn desired_nodes_scale_out_and_in_within_min_and_max() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    let mut spec = instance(&h, id).spec;
    spec.auto_scaling = true;
    spec.max_nodes = 2;
    h.store
        .read(|c| store::update_instance_spec(c, id, &spec))
        .unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    h.store
        .read(|c| store::set_desired_nodes(c, id, 5))
        .unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    assert_eq!(nodes.len(), 2, "never past max_nodes");
    assert_eq!(h.dns.a_records("web.demo").await.len(), 2);
    h.store
        .read(|c| store::set_desired_nodes(c, id, 1))
        .unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id);
    assert_eq!(nodes[1].state, NodeState::Retiring, "the newest retires");
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&nodes[0])]);
}

#[tokio::test]
async fn nodes_found_dead_at_start_restart_at_their_own_address() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    let node = node_rows(&h, id)[0].clone();
    h.host.kill(node.id);
    h.reconciler.restart_nodes_found_dead().unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let after = node_rows(&h, id);
    assert_eq!(after.len(), 1);
    assert_eq!(
        (after[0].id, after[0].address, after[0].state),
        (node.id, node.address, NodeState::Running)
    );
    assert_eq!(h.host.starts.load(Ordering::SeqCst), 2);
    assert_eq!(
        h.host.pushes.load(Ordering::SeqCst),
        2,
        "config pushed again"
    );
}

fn node_rows(h: &Harness, instance_id: i64) -> Vec<store::NodeRow> {
    h.store.read(|c| store::list_nodes(c, instance_id)).unwrap()
}

/// The instance's 10 latest events, newest first.
fn instance_events(h: &Harness, instance_id: i64) -> Vec<store::EventRow> {
    h.store
        .read(|c| store::recent_events(c, instance_id, 0, 10))
        .unwrap()
}

/// Sets a node's state as if it changed `ago` seconds ago.
fn mark(h: &Harness, node_id: i64, state: NodeState, ago: i64) {
    let node = h
        .store
        .read(|c| store::node_by_id(c, node_id))
        .unwrap()
        .unwrap();
    h.store
        .read(|c| {
            store::set_node_observed(c, node_id, state, node.pid, node.operating_status)?;
            c.execute(
                "UPDATE nodes SET state_changed_at = ?2 WHERE id = ?1",
                rusqlite::params![node_id, store::now() - ago],
            )?;
            Ok::<_, store::StoreError>(())
        })
        .unwrap();
}

fn ipv4(node: &store::NodeRow) -> Ipv4Addr {
    match node.address {
        std::net::IpAddr::V4(a) => a,
        std::net::IpAddr::V6(_) => panic!("IPv4 nodes only"),
    }
}

#[tokio::test]
async fn a_step_that_keeps_failing_ends_in_error_with_the_reason() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    *h.host.refuse_config.lock().unwrap() = Some("bind 127.5.0.2:8080: Address in use".into());
    for attempt in 1..=3 {
        h.reconciler.reconcile_once().await.unwrap();
        let inst = instance(&h, id);
        let expected = if attempt < 3 {
            ProvisioningStatus::PendingCreate
        } else {
            ProvisioningStatus::Error
        };
        assert_eq!(
            inst.provisioning_status, expected,
            "after attempt {attempt}"
        );
    }
    assert!(instance(&h, id)
        .status_reason
        .unwrap()
        .contains("Address in use"));
}

#[tokio::test]
async fn delete_removes_dns_nodes_and_rows() {
    let h = harness();
    let id = create_instance(&h.store, 2);
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(h.host.list_nodes().len(), 2);
    h.store
        .read(|c| store::set_instance_provisioning(c, id, ProvisioningStatus::PendingDelete, None))
        .unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    assert!(h
        .store
        .read(|c| store::instance_by_id(c, id))
        .unwrap()
        .is_none());
    assert!(h.store.read(store::all_nodes).unwrap().is_empty());
    assert!(h.host.list_nodes().is_empty());
    assert!(dns_names(&h).await.is_empty());
}

#[tokio::test]
async fn a_delete_that_keeps_failing_shows_error_and_is_still_retried() {
    let h = harness();
    let id = create_instance(&h.store, 1);
    h.reconciler.reconcile_once().await.unwrap();
    *h.host.refuse_destroy.lock().unwrap() = Some("permission denied".into());
    h.store
        .read(|c| store::set_instance_provisioning(c, id, ProvisioningStatus::PendingDelete, None))
        .unwrap();
    for _ in 0..3 {
        h.reconciler.reconcile_once().await.unwrap();
    }
    let inst = instance(&h, id);
    assert_eq!(inst.provisioning_status, ProvisioningStatus::Error);
    assert!(inst.deleting, "the delete is still requested");
    let reason = inst.status_reason.unwrap();
    assert!(
        reason.contains("delete") && reason.contains("permission denied"),
        "{reason}"
    );
    assert!(dns_names(&h).await.is_empty(), "out of DNS at once");
    // Another pass must not bring it back to life, and once stopping works it goes.
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(h.host.starts.load(Ordering::SeqCst), 1);
    *h.host.refuse_destroy.lock().unwrap() = None;
    h.reconciler.reconcile_once().await.unwrap();
    assert!(h
        .store
        .read(|c| store::instance_by_id(c, id))
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn orphans_without_rows_are_removed() {
    let h = harness();
    let orphan = NodeSpec {
        node_id: 99,
        admin_addr: "127.9.0.2:9901".parse().unwrap(),
        secret: "x".into(),
        netns: None,
        name: "demo-web".into(),
        prefix_len: 24,
    };
    h.host.ensure_node(&orphan).unwrap();
    h.dns
        .set_a_records("gone.demo", &[Ipv4Addr::new(127, 9, 0, 2)])
        .await
        .unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    assert!(h.host.list_nodes().is_empty());
    assert!(dns_names(&h).await.is_empty());
}

#[tokio::test]
async fn min_nodes_gives_one_address_and_record_each() {
    let h = harness();
    let id = create_instance(&h.store, 3);
    h.reconciler.reconcile_once().await.unwrap();
    let addrs: Vec<String> = node_rows(&h, id)
        .iter()
        .map(|n| n.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.5.0.2", "127.5.0.3", "127.5.0.4"]);
    assert_eq!(
        instance(&h, id).provisioning_status,
        ProvisioningStatus::Active
    );
}
