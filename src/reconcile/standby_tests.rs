//! Standby nodes in the reconciler: booted beside the serving ones and kept
//! out of DNS, promoted when fewer than the target serve, retired when
//! fewer are wanted; a dead standby is replaced rather than failed over.

use super::*;

async fn instance_with_standby(store: &Store, min_nodes: u32, standby: u32) -> InstanceId {
    let request = serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "min_nodes": min_nodes, "standby_nodes": standby,
        "backend": {"entities": ["127.0.0.1:9001"]}
    });
    store_instance(store, request).await
}

async fn set_counts(h: &Harness, id: InstanceId, min_nodes: u32, standby: u32) {
    let mut spec = instance(h, id).await.spec;
    spec.min_nodes = min_nodes;
    spec.max_nodes = spec.max_nodes.max(min_nodes);
    spec.standby_nodes = standby;
    write(h, move |c| store::update_instance_spec(c, id, &spec)).await;
}

fn in_state(nodes: &[store::NodeRow], state: NodeState) -> Vec<store::NodeRow> {
    nodes.iter().filter(|n| n.state == state).cloned().collect()
}

#[tokio::test]
async fn a_standby_boots_beside_the_serving_node_and_stays_out_of_dns() {
    let h = harness();
    let id = instance_with_standby(&h.store, 1, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let (running, standby) = (
        in_state(&nodes, NodeState::Running),
        in_state(&nodes, NodeState::Standby),
    );
    assert_eq!((running.len(), standby.len()), (1, 1), "{nodes:?}");
    assert_eq!(
        standby[0].applied_generation,
        Some(instance(&h, id).await.generation)
    );
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&running[0])]);
    let inst = instance(&h, id).await;
    assert_eq!(inst.provisioning_status, ProvisioningStatus::Active);
    assert_eq!(inst.operating_status, OperatingStatus::Online);
    assert_eq!(
        inst.serving_nodes, 1,
        "a standby takes no share of node limits"
    );
    // Settled: another pass changes nothing.
    h.reconciler.reconcile_once().await.unwrap();
    assert_eq!(node_rows(&h, id).await, nodes);
}

#[tokio::test]
async fn a_failed_node_is_succeeded_by_the_standby_and_a_new_standby_boots() {
    let h = harness();
    let id = instance_with_standby(&h.store, 1, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let (old, standby) = (
        in_state(&nodes, NodeState::Running)[0].clone(),
        in_state(&nodes, NodeState::Standby)[0].clone(),
    );
    h.host.kill(old.id);
    mark(&h, old.id, NodeState::Failed, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let promoted = nodes.iter().find(|n| n.id == standby.id).unwrap();
    assert_eq!(promoted.state, NodeState::Running);
    assert_eq!(
        promoted.pid, standby.pid,
        "the same process, not a new boot"
    );
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&standby)]);
    let fresh = in_state(&nodes, NodeState::Standby);
    assert_eq!(fresh.len(), 1, "{nodes:?}");
    assert!(fresh[0].id != old.id && fresh[0].id != standby.id);
    let events = instance_events(&h, id).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::NodePromoted && e.node_id == Some(standby.id)),
        "{events:?}"
    );
}

#[tokio::test]
async fn targets_move_promote_keep_and_retire_standbys() {
    let h = harness();
    let id = instance_with_standby(&h.store, 1, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let standby = in_state(&node_rows(&h, id).await, NodeState::Standby)[0].clone();

    // Scale-out: the standby serves at once, and a new standby boots.
    set_counts(&h, id, 2, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(in_state(&nodes, NodeState::Running).len(), 2, "{nodes:?}");
    assert!(in_state(&nodes, NodeState::Running)
        .iter()
        .any(|n| n.id == standby.id));
    assert_eq!(in_state(&nodes, NodeState::Standby).len(), 1, "{nodes:?}");
    assert_eq!(h.dns.a_records("web.demo").await.len(), 2);

    // Scale-in and no standby wanted: one serving node and the standby
    // retire; DNS keeps the one left.
    set_counts(&h, id, 1, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let running = in_state(&nodes, NodeState::Running);
    assert_eq!(running.len(), 1, "{nodes:?}");
    assert_eq!(in_state(&nodes, NodeState::Standby).len(), 0, "{nodes:?}");
    assert_eq!(in_state(&nodes, NodeState::Retiring).len(), 2, "{nodes:?}");
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&running[0])]);

    // Two serving and a standby wanted while none is booted: the newest
    // serving node leaves DNS and stays booted as the standby.
    set_counts(&h, id, 2, 0).await;
    h.reconciler.reconcile_once().await.unwrap();
    let two = in_state(&node_rows(&h, id).await, NodeState::Running);
    assert_eq!(two.len(), 2);
    set_counts(&h, id, 1, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let kept = nodes.iter().find(|n| n.id == two[1].id).unwrap();
    assert_eq!(kept.state, NodeState::Standby, "{nodes:?}");
    assert_eq!(kept.pid, two[1].pid);
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&two[0])]);
}

#[tokio::test]
async fn a_standby_whose_process_is_gone_retires_and_is_replaced() {
    let h = harness();
    let id = instance_with_standby(&h.store, 1, 1).await;
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    let running = in_state(&nodes, NodeState::Running)[0].clone();
    let standby = in_state(&nodes, NodeState::Standby)[0].clone();
    h.host.kill(standby.id);
    h.reconciler.reconcile_once().await.unwrap();
    h.reconciler.reconcile_once().await.unwrap();
    let nodes = node_rows(&h, id).await;
    assert_eq!(
        nodes.iter().find(|n| n.id == standby.id).map(|n| n.state),
        Some(NodeState::Retiring)
    );
    let fresh = in_state(&nodes, NodeState::Standby);
    assert_eq!(fresh.len(), 1, "{nodes:?}");
    assert_ne!(fresh[0].id, standby.id);
    assert_eq!(
        nodes.iter().find(|n| n.id == running.id).map(|n| n.state),
        Some(NodeState::Running),
        "the serving node is untouched"
    );
    assert_eq!(h.dns.a_records("web.demo").await, vec![ipv4(&running)]);
}
