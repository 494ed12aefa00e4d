//! Logic tests of the reconciler: a real SQLite file and a real (in-memory)
//! DNS zone, with a fake host standing in for node processes and their admin API.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{ReconcileSettings, Reconciler};
use crate::dns::{DnsDriver, EmbeddedDns};
use crate::drivers::compute::{ComputeDriver, NodeSpec};
use crate::drivers::fake::FakeHost;
use crate::drivers::network::claims::SubnetClaims;
use crate::drivers::network::loopback::LoopbackNetwork;
use crate::model::{
    EventKind, InstanceCreate, InstanceId, NodeId, NodeState, OperatingStatus, ProvisioningStatus,
};
use crate::store::{self, Store, StoreError};

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
        let _ = std::fs::remove_dir_all(self.db.with_extension("claims"));
    }
}

fn harness() -> Harness {
    harness_with(|_| {})
}

fn harness_with(adjust: impl FnOnce(&mut ReconcileSettings)) -> Harness {
    static N: AtomicUsize = AtomicUsize::new(0);
    let db = std::env::temp_dir().join(format!(
        "lbaas-reconcile-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let store = Store::open(&db).unwrap();
    let host = Arc::new(FakeHost::default());
    let dns = Arc::new(EmbeddedDns::new("lbaas.internal", 5).unwrap());
    let claims = SubnetClaims::open(Some(&db.with_extension("claims"))).unwrap();
    let network =
        Arc::new(LoopbackNetwork::new("127.0.0.0/8".parse().unwrap(), 16, claims).unwrap());
    let mut settings = ReconcileSettings {
        node_ready_timeout: std::time::Duration::from_millis(200),
        // Errored objects are retried on every pass here.
        error_retry: std::time::Duration::ZERO,
        ..Default::default()
    };
    adjust(&mut settings);
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
async fn create_instance(store: &Store, min_nodes: u32) -> InstanceId {
    store_instance(
        store,
        serde_json::json!({
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080, "min_nodes": min_nodes,
            "backend": {"entities": ["127.0.0.1:9001", "127.0.0.1:9002"]}
        }),
    )
    .await
}

/// Stores project `demo` and the instance of this `create` request.
async fn store_instance(store: &Store, request: serde_json::Value) -> InstanceId {
    let spec: InstanceCreate = serde_json::from_value(request).unwrap();
    let spec = spec.validate(&crate::password::Argon2Hasher).unwrap();
    store
        .transaction(move |tx| {
            let p = store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?;
            Ok::<_, StoreError>(store::insert_instance(tx, p.id, &spec)?.id)
        })
        .await
        .unwrap()
}

async fn instance(h: &Harness, id: InstanceId) -> store::InstanceRow {
    h.store
        .read(move |c| store::instance_by_id(c, id))
        .await
        .unwrap()
        .unwrap()
}

/// A write of the test's own, as the API or the health checker would make it.
async fn write(
    h: &Harness,
    f: impl FnOnce(&rusqlite::Connection) -> Result<(), StoreError> + Send + 'static,
) {
    h.store.transaction(move |tx| f(tx)).await.unwrap()
}

async fn dns_names(h: &Harness) -> Vec<String> {
    h.dns.names().await
}

#[tokio::test]
async fn create_flow_reaches_active_and_is_idempotent() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let inst = instance(&h, id).await;
    assert_eq!(
        inst.provisioning_status,
        ProvisioningStatus::Active,
        "{:?}",
        inst.status_reason
    );
    let nodes = node_rows(&h, id).await;
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
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let mut spec = instance(&h, id).await.spec;
    spec.backends.truncate(1);
    write(&h, move |c| store::update_instance_spec(c, id, &spec)).await;
    assert_eq!(
        instance(&h, id).await.provisioning_status,
        ProvisioningStatus::PendingUpdate
    );
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(
        instance(&h, id).await.provisioning_status,
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
async fn nodes_get_the_serving_node_count_again_when_it_changes() {
    let h = harness();
    let id = create_instance(&h.store, 2).await;
    h.reconciler.reconcile_once().await.unwrap();
    let pushed: Vec<(u64, u32)> = h
        .host
        .configs
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.version, c.serving_nodes))
        .collect();
    // Counted before the first push: no second round for the count.
    assert_eq!(pushed, [(1, 2), (1, 2)]);
    let mut spec = instance(&h, id).await.spec;
    spec.min_nodes = 1;
    write(&h, move |c| store::update_instance_spec(c, id, &spec)).await;
    h.reconciler.reconcile_once().await.unwrap();
    let inst = instance(&h, id).await;
    assert_eq!((inst.generation, inst.serving_nodes), (3, 1));
    let last = h.host.configs.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.version, last.serving_nodes), (3, 1));
    let pushes = h.host.pushes.load(Ordering::SeqCst);
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(h.host.pushes.load(Ordering::SeqCst), pushes, "settled");
}

#[tokio::test]
async fn nodes_get_lbd_s_redis_for_global_limits() {
    let redis = crate::model::node::RedisTarget {
        url: "redis://127.0.0.1:6379".into(),
        timeout_ms: 7,
        key_prefix: String::new(),
    };
    let target = redis.clone();
    let h = harness_with(move |s| s.redis = Some(target));
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let config = h.host.configs.lock().unwrap()[0].clone();
    // The instance's own key prefix, so instances never share counters.
    let expected = crate::model::node::RedisTarget {
        key_prefix: id.to_string(),
        ..redis
    };
    assert_eq!(config.redis, Some(expected));
}

#[tokio::test]
async fn a_running_node_that_dies_leaves_dns_and_waits_for_failover() {
    let h = harness();
    let id = create_instance(&h.store, 2).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
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
    let events = instance_events(&h, id).await;
    let exited = events
        .iter()
        .find(|e| e.kind == EventKind::NodeExited)
        .expect("an exit event");
    assert!(exited.message.contains("signal 9"), "{}", exited.message);
    // Recorded once, not on every pass.
    h.reconciler.reconcile_once().await.unwrap();
    let exits = instance_events(&h, id)
        .await
        .iter()
        .filter(|e| e.kind == EventKind::NodeExited)
        .count();
    assert_eq!(exits, 1);
}

#[tokio::test]
async fn a_failed_node_is_replaced_then_deleted_after_the_grace_period() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let old = node_rows(&h, id).await[0].clone();
    h.host.kill(old.id);
    mark(&h, old.id, NodeState::Failed, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(nodes.len(), 2, "the failed node stays for its grace period");
    let new = nodes.iter().find(|n| n.id != old.id).unwrap();
    assert_ne!(
        new.address, old.address,
        "the replacement has its own address"
    );
    assert_eq!(new.state, NodeState::Running);
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(new)]);
    let events = instance_events(&h, id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Failover && e.message.contains(&old.address.to_string())),
        "{events:?}"
    );
    // Past the grace period, the failed node goes.
    mark(&h, old.id, NodeState::Failed, 61).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [new.id]);
    assert!(instance_events(&h, id)
        .await
        .iter()
        .any(|e| e.kind == EventKind::NodeDeleted));
}

#[tokio::test]
async fn a_recovered_node_sends_its_replacement_into_retirement() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let old = node_rows(&h, id).await[0].clone();
    mark(&h, old.id, NodeState::Failed, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let replacement = node_rows(&h, id).await[1].clone();
    // The health checker saw the old node healthy again.
    mark(&h, old.id, NodeState::Running, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let retiring = nodes.iter().find(|n| n.id == replacement.id).unwrap();
    assert_eq!(retiring.state, NodeState::Retiring);
    assert_eq!(
        h.dns.a_records("web.demo").await,
        vec![ipv4(&old)],
        "DNS is restored first"
    );
    // Drained (no connections, past the DNS TTL): deleted.
    mark(&h, replacement.id, NodeState::Retiring, 6).await;
    h.reconciler.reconcile_once().await.unwrap();
    let ids: Vec<NodeId> = node_rows(&h, id).await.iter().map(|n| n.id).collect();
    assert_eq!(ids, [old.id]);
    assert!(!h.host.list_nodes().contains(&replacement.id));
}

#[tokio::test]
async fn desired_nodes_scale_out_and_in_within_min_and_max() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    let mut spec = instance(&h, id).await.spec;
    spec.auto_scaling = true;
    spec.max_nodes = 2;
    write(&h, move |c| store::update_instance_spec(c, id, &spec)).await;
    h.reconciler.reconcile_once().await.unwrap();
    write(&h, move |c| store::set_desired_nodes(c, id, 5)).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(nodes.len(), 2, "never past max_nodes");
    assert_eq!(h.dns.a_records("web.demo").await.len(), 2);
    write(&h, move |c| store::set_desired_nodes(c, id, 1)).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(nodes[1].state, NodeState::Retiring, "the newest retires");
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&nodes[0])]);
}

#[tokio::test]
async fn nodes_found_dead_at_start_restart_at_their_own_address() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let node = node_rows(&h, id).await[0].clone();
    h.host.kill(node.id);
    h.reconciler.restart_nodes_found_dead().await.unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let after = node_rows(&h, id).await;
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

async fn node_rows(h: &Harness, instance_id: InstanceId) -> Vec<store::NodeRow> {
    h.store
        .read(move |c| store::list_nodes(c, instance_id))
        .await
        .unwrap()
}

/// The instance's 10 latest events, newest first.
async fn instance_events(h: &Harness, instance_id: InstanceId) -> Vec<store::EventRow> {
    h.store
        .read(move |c| store::recent_events(c, instance_id, 0, 10))
        .await
        .unwrap()
}

/// Moves a node to `state` (through the state machine, as the health
/// checker would) as if that happened `ago` seconds ago.
async fn mark(h: &Harness, node_id: NodeId, state: NodeState, ago: i64) {
    write(h, move |c| {
        let node = store::node_by_id(c, node_id)?.unwrap();
        if node.state != state {
            assert!(store::move_node(c, node_id, node.state, state)?);
        }
        c.execute(
            "UPDATE nodes SET state_changed_at = ?2 WHERE id = ?1",
            rusqlite::params![node_id, store::now() - ago],
        )?;
        Ok(())
    })
    .await;
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
    let id = create_instance(&h.store, 1).await;
    *h.host.refuse_config.lock().unwrap() = Some("bind 127.5.0.2:8080: Address in use".into());
    for attempt in 1..=3 {
        h.reconciler.reconcile_once().await.unwrap();
        let inst = instance(&h, id).await;
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
        .await
        .status_reason
        .unwrap()
        .contains("Address in use"));
}

#[tokio::test]
async fn delete_removes_dns_nodes_and_rows() {
    let h = harness();
    let id = create_instance(&h.store, 2).await;
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(h.host.list_nodes().len(), 2);
    write(&h, move |c| {
        store::set_instance_provisioning(c, id, ProvisioningStatus::PendingDelete, None)
    })
    .await;
    h.reconciler.reconcile_once().await.unwrap();
    assert!(h
        .store
        .read(move |c| store::instance_by_id(c, id))
        .await
        .unwrap()
        .is_none());
    assert!(h.store.read(store::all_nodes).await.unwrap().is_empty());
    assert!(h.host.list_nodes().is_empty());
    assert!(dns_names(&h).await.is_empty());
}

#[tokio::test]
async fn a_delete_that_keeps_failing_shows_error_and_is_still_retried() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    *h.host.refuse_destroy.lock().unwrap() = Some("permission denied".into());
    write(&h, move |c| {
        store::set_instance_provisioning(c, id, ProvisioningStatus::PendingDelete, None)
    })
    .await;
    for _ in 0..3 {
        h.reconciler.reconcile_once().await.unwrap();
    }
    let inst = instance(&h, id).await;
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
        .read(move |c| store::instance_by_id(c, id))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn orphans_without_rows_are_removed() {
    let h = harness();
    let orphan = NodeSpec {
        node_id: NodeId(99),
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
    let id = create_instance(&h.store, 3).await;
    h.reconciler.reconcile_once().await.unwrap();
    let addrs: Vec<String> = node_rows(&h, id)
        .await
        .iter()
        .map(|n| n.address.to_string())
        .collect();
    assert_eq!(addrs, ["127.5.0.2", "127.5.0.3", "127.5.0.4"]);
    assert_eq!(
        instance(&h, id).await.provisioning_status,
        ProvisioningStatus::Active
    );
}

#[tokio::test]
async fn a_stale_reconciler_write_cannot_undo_a_failover() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let mut stale = node_rows(&h, id).await[0].clone();
    assert_eq!(stale.state, NodeState::Running);
    // The snapshot says the config must be pushed again (the node restarted).
    stale.applied_generation = None;
    // The health checker fails the node after the reconciler read it...
    mark(&h, stale.id, NodeState::Failed, 0).await;
    // ...and the reconciler, acting on its snapshot, sees the process with
    // a new pid and records it. Without the guard this wrote `running`.
    h.host.pid_offset.store(7, Ordering::SeqCst);
    let inst = instance(&h, id).await;
    let serving = h
        .reconciler
        .ensure_node_serving(&inst, &stale)
        .await
        .unwrap();
    assert!(!serving, "a node failed meanwhile is not reported serving");
    let now = h
        .store
        .read(move |c| store::node_by_id(c, stale.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.state, NodeState::Failed, "the failover holds");
    assert_eq!(now.pid, stale.pid, "nothing of the stale write landed");
}

#[tokio::test]
async fn a_node_retired_while_starting_is_not_brought_back() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    // Rows exist, nothing started yet: the snapshot says `starting`.
    let inst = instance(&h, id).await;
    let starting = h.reconciler.ensure_node_rows(&inst).await.unwrap()[0].clone();
    assert_eq!(starting.state, NodeState::Starting);
    // Scale-in retires it before the start finishes.
    mark(&h, starting.id, NodeState::Retiring, 0).await;
    let serving = h
        .reconciler
        .ensure_node_serving(&inst, &starting)
        .await
        .unwrap();
    assert!(!serving);
    let now = node_rows(&h, id).await;
    assert_eq!(now[0].state, NodeState::Retiring);
    assert!(instance_events(&h, id)
        .await
        .iter()
        .all(|e| e.kind != EventKind::NodeReady));
}

#[tokio::test]
async fn a_locked_store_is_not_counted_as_a_failure_of_the_instance() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    let other = rusqlite::Connection::open(&h.db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    // Far more passes than attempts_before_error, all against the lock.
    for _ in 0..5 {
        h.reconciler.reconcile_once().await.unwrap();
    }
    let inst = instance(&h, id).await;
    assert_eq!(inst.provisioning_status, ProvisioningStatus::PendingCreate);
    other.execute_batch("ROLLBACK").unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let inst = instance(&h, id).await;
    assert_eq!(
        inst.provisioning_status,
        ProvisioningStatus::Active,
        "{:?}",
        inst.status_reason
    );
    assert_eq!(
        node_rows(&h, id).await[0].operating_status,
        OperatingStatus::Online
    );
}

#[tokio::test]
async fn a_node_that_fails_to_start_ends_in_error_with_the_reason() {
    let h = harness();
    let id = create_instance(&h.store, 1).await;
    *h.host.refuse_start.lock().unwrap() = Some("no such binary".into());
    for _ in 0..3 {
        h.reconciler.reconcile_once().await.unwrap();
    }
    let inst = instance(&h, id).await;
    assert_eq!(inst.provisioning_status, ProvisioningStatus::Error);
    assert!(inst.status_reason.unwrap().contains("no such binary"));
}

#[path = "federation_tests.rs"]
mod federation;

#[path = "standby_tests.rs"]
mod standby;
