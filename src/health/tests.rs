//! Logic tests of the health checker on tokio's paused clock: a real SQLite
//! file, the shared fake host for node admin APIs, and the checker's own
//! steps (schedule, apply, write pending decisions) driven one round at a
//! time, so every interval and timeout is exact and no test sleeps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;

use super::{CheckResult, HealthChecker, HealthSettings};
use crate::drivers::compute::{ComputeDriver, NodeSpec};
use crate::drivers::fake::FakeHost;
use crate::model::{EventKind, InstanceCreate, NodeState};
use crate::store::{self, InstanceRow, NodeRow, Store, StoreError};

struct Fixture {
    store: Store,
    host: Arc<FakeHost>,
    checker: Arc<HealthChecker>,
    checks: JoinSet<CheckResult>,
    inst: InstanceRow,
    nodes: Vec<NodeRow>,
    db: std::path::PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.db.display()));
        }
    }
}

const ADMIN_PORT: u16 = 9901;

/// One instance (checks every 1 s, timeout 1 s, two passes or misses flip a
/// node) with `n` running nodes whose admin APIs answer.
async fn fixture(n: usize) -> Fixture {
    static N: AtomicUsize = AtomicUsize::new(0);
    let db = std::env::temp_dir().join(format!(
        "lbaas-health-{}-{}.db",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let store = Store::open(&db).unwrap();
    let create: InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080, "min_nodes": n,
        "backend": {"entities": ["127.0.0.1:9001"], "health-check": {"protocol": "TCP",
            "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}}}
    }))
    .unwrap();
    let spec = create.validate(&crate::password::Argon2Hasher).unwrap();
    let (inst, nodes) = store
        .transaction(move |tx| {
            let p = store::insert_project(tx, "demo", "admin", "127.5.0.0/16")?;
            let i = store::insert_instance(tx, p.id, &spec)?;
            let mut nodes = Vec::new();
            for k in 0..n {
                let node = store::insert_node(tx, i.id, &format!("127.5.0.{}", k + 2), "s")?;
                store::move_node(tx, node.id, NodeState::Starting, NodeState::Running)?;
                nodes.push(store::node_by_id(tx, node.id)?.unwrap());
            }
            Ok::<_, StoreError>((i, nodes))
        })
        .await
        .unwrap();
    let host = Arc::new(FakeHost::default());
    for node in &nodes {
        host.ensure_node(&NodeSpec {
            node_id: node.id,
            admin_addr: SocketAddr::new(node.address, ADMIN_PORT),
            secret: "s".into(),
            netns: None,
            name: "demo-web".into(),
            prefix_len: 16,
        })
        .unwrap();
    }
    let checker = Arc::new(HealthChecker::new(
        store.clone(),
        host.clone(),
        Arc::new(Notify::new()),
        HealthSettings {
            node_admin_port: ADMIN_PORT,
            ..Default::default()
        },
    ));
    Fixture {
        store,
        host,
        checker,
        checks: JoinSet::new(),
        inst,
        nodes,
        db,
    }
}

impl Fixture {
    /// One tick of the checker: pending decisions, then every due check,
    /// run to its end (a hung node runs into its timeout on the paused
    /// clock), then its result applied. Returns how many checks ran.
    async fn round(&mut self) -> usize {
        self.checker.write_pending().await;
        self.checker.schedule(&mut self.checks).await;
        let mut results = Vec::new();
        while let Some(done) = self.checks.join_next().await {
            results.push(done.unwrap());
        }
        let ran = results.len();
        self.checker.apply(results).await;
        ran
    }

    /// Rounds one interval apart.
    async fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            tokio::time::advance(Duration::from_secs(1)).await;
            self.round().await;
        }
    }

    async fn state(&self, k: usize) -> NodeState {
        let id = self.nodes[k].id;
        self.store
            .read(move |c| store::node_by_id(c, id))
            .await
            .unwrap()
            .unwrap()
            .state
    }

    async fn events(&self) -> Vec<EventKind> {
        let id = self.inst.id;
        self.store
            .read(move |c| store::recent_events(c, id, 0, 100))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_is_failed_at_the_unhealth_threshold_not_before() {
    let mut f = fixture(2).await;
    assert_eq!(f.round().await, 2);
    f.host.kill(f.nodes[0].id);
    f.rounds(1).await;
    assert_eq!(
        f.state(0).await,
        NodeState::Running,
        "one miss is not enough"
    );
    f.rounds(1).await;
    assert_eq!(f.state(0).await, NodeState::Failed);
    assert_eq!(f.state(1).await, NodeState::Running);
    let failed = f.events().await;
    assert_eq!(
        failed
            .iter()
            .filter(|k| **k == EventKind::NodeFailed)
            .count(),
        1
    );
    // Further misses of a failed node decide nothing new.
    f.rounds(3).await;
    assert_eq!(
        f.events()
            .await
            .iter()
            .filter(|k| **k == EventKind::NodeFailed)
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn checks_run_at_the_interval_and_no_sooner() {
    let mut f = fixture(1).await;
    assert_eq!(f.round().await, 1);
    assert_eq!(f.round().await, 0, "not due again within the interval");
    tokio::time::advance(Duration::from_millis(900)).await;
    assert_eq!(f.round().await, 0);
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(f.round().await, 1);
    assert_eq!(f.host.status_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn hung_nodes_time_out_and_the_breaker_holds_when_all_fail() {
    let mut f = fixture(2).await;
    f.round().await;
    // Both answer nothing now, as SIGSTOPped processes would.
    f.host.hang_status.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    f.rounds(2).await;
    // Each round waited for the 1 s timeout of the checks on the paused clock.
    assert!(started.elapsed() >= Duration::from_secs(3));
    // Two of two failing: the circuit breaker holds failover back.
    assert_eq!(f.state(0).await, NodeState::Running);
    assert_eq!(f.state(1).await, NodeState::Running);
    assert!(f.events().await.contains(&EventKind::FailoverPaused));
}

#[tokio::test(start_paused = true)]
async fn a_failed_node_that_passes_again_recovers() {
    let mut f = fixture(1).await;
    f.round().await;
    f.host.kill(f.nodes[0].id);
    f.rounds(2).await;
    assert_eq!(f.state(0).await, NodeState::Failed);
    // It comes back (same address): two passes bring it back.
    f.host
        .ensure_node(&NodeSpec {
            node_id: f.nodes[0].id,
            admin_addr: SocketAddr::new(f.nodes[0].address, ADMIN_PORT),
            secret: "s".into(),
            netns: None,
            name: "demo-web".into(),
            prefix_len: 16,
        })
        .unwrap();
    f.rounds(1).await;
    assert_eq!(f.state(0).await, NodeState::Failed);
    f.rounds(1).await;
    assert_eq!(f.state(0).await, NodeState::Running);
    assert!(f.events().await.contains(&EventKind::NodeRecovered));
}

#[tokio::test(start_paused = true)]
async fn a_failover_decided_while_the_store_is_locked_is_written_later() {
    let mut f = fixture(2).await;
    f.round().await;
    f.host.kill(f.nodes[0].id);
    let other = rusqlite::Connection::open(&f.db).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    f.rounds(2).await;
    assert_eq!(f.checker.pending_decisions(), 1, "kept in memory");
    // Checks went on while locked.
    assert!(f.host.status_calls.load(Ordering::SeqCst) >= 5);
    other.execute_batch("ROLLBACK").unwrap();
    f.rounds(1).await;
    assert_eq!(f.checker.pending_decisions(), 0);
    assert_eq!(f.state(0).await, NodeState::Failed);
    assert!(f.events().await.contains(&EventKind::NodeFailed));
}

/// The report the process driver's reaper sends when node `k` ends by itself.
fn exit_of(f: &Fixture, k: usize) -> crate::drivers::compute::NodeExit {
    f.host.kill(f.nodes[k].id);
    crate::drivers::compute::NodeExit {
        node_id: f.nodes[k].id,
        pid: 4000 + k as u32,
        reason: "killed by signal 9".into(),
    }
}

fn count(events: &[EventKind], kind: EventKind) -> usize {
    events.iter().filter(|k| **k == kind).count()
}

#[tokio::test(start_paused = true)]
async fn a_node_whose_process_exits_is_failed_at_once_without_missed_checks() {
    let mut f = fixture(2).await;
    f.round().await;
    let exit = exit_of(&f, 0);
    f.checker.on_exits(vec![exit.clone()]).await;
    // No round ran since: not one check was missed.
    assert_eq!(f.state(0).await, NodeState::Failed);
    assert_eq!(f.state(1).await, NodeState::Running);
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeExited), 1, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeFailed), 1, "{events:?}");
    // A second report of the same end, and the missed checks that follow,
    // decide nothing new.
    f.checker.on_exits(vec![exit]).await;
    f.rounds(3).await;
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeExited), 1, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeFailed), 1, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn an_exit_report_about_no_running_node_of_ours_changes_nothing() {
    let mut f = fixture(3).await;
    f.round().await;
    let (a, b) = (f.nodes[0].id, f.nodes[1].id);
    f.store
        .transaction(move |tx| {
            // Node 0 runs as pid 77 now: a report about another pid is old.
            store::set_node_process(
                tx,
                a,
                NodeState::Running,
                Some(77),
                crate::model::OperatingStatus::Online,
            )?;
            // Node 1 retires: lbd stops it itself.
            store::move_node(tx, b, NodeState::Running, NodeState::Retiring)
        })
        .await
        .unwrap();
    let stale = exit_of(&f, 0);
    let retiring = exit_of(&f, 1);
    let gone = crate::drivers::compute::NodeExit {
        node_id: crate::model::NodeId(9999),
        pid: 1,
        reason: "exited with code 0".into(),
    };
    f.checker.on_exits(vec![stale, retiring, gone]).await;
    assert_eq!(f.state(0).await, NodeState::Running);
    assert_eq!(f.state(1).await, NodeState::Retiring);
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeExited), 0, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeFailed), 0, "{events:?}");
    assert!(f.checker.state().exited.is_empty(), "nothing held");
}

#[tokio::test(start_paused = true)]
async fn nodes_that_exit_together_trip_the_breaker_and_fail_once_it_allows() {
    let mut f = fixture(5).await;
    f.round().await;
    // Three of five end at once: more than half, so failover pauses.
    let exits = vec![exit_of(&f, 0), exit_of(&f, 1), exit_of(&f, 2)];
    f.checker.on_exits(exits).await;
    for k in 0..3 {
        assert_eq!(f.state(k).await, NodeState::Running, "node {k} held");
    }
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::FailoverPaused), 1, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeExited), 3, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeFailed), 0, "{events:?}");
    // Held exits are tried again each tick, and still held.
    f.checker.retry_exits().await;
    assert_eq!(f.state(0).await, NodeState::Running);
    // One of them goes (deleted meanwhile): two of four fail, which the
    // breaker allows, so the held ones are failed over on the next tick.
    let id = f.nodes[2].id;
    f.store
        .transaction(move |tx| store::delete_node(tx, id, NodeState::Running))
        .await
        .unwrap();
    f.round().await;
    f.checker.retry_exits().await;
    assert_eq!(f.state(0).await, NodeState::Failed);
    assert_eq!(f.state(1).await, NodeState::Failed);
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeFailed), 2, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeExited), 3, "{events:?}");
    assert_eq!(count(&events, EventKind::FailoverResumed), 1, "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn a_node_that_ends_while_starting_is_failed_if_a_pass_marks_it_running_after() {
    let f = fixture(3).await;
    let (a, b) = (f.nodes[0].id, f.nodes[1].id);
    let online = crate::model::OperatingStatus::Online;
    f.store
        .transaction(move |tx| {
            for id in [a, b] {
                store::delete_node(tx, id, NodeState::Running)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    // Two starting nodes (fresh rows) whose processes end at once.
    let inst = f.inst.id;
    let (c, d) = f
        .store
        .transaction(move |tx| {
            let c = store::insert_node(tx, inst, "127.5.0.20", "s")?.id;
            let d = store::insert_node(tx, inst, "127.5.0.21", "s")?.id;
            Ok::<_, StoreError>((c, d))
        })
        .await
        .unwrap();
    let report = |node_id, pid| crate::drivers::compute::NodeExit {
        node_id,
        pid,
        reason: "exited with code 1".into(),
    };
    f.checker
        .on_exits(vec![report(c, 500), report(d, 600)])
        .await;
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeFailed), 0, "{events:?}");
    assert_eq!(f.checker.state().exited.len(), 2, "kept while starting");
    // A pass that saw them answer marks them running: `c` as the process
    // that ended, `d` as a new one the reconciler started since.
    f.store
        .transaction(move |tx| {
            for (id, pid) in [(c, 500), (d, 601)] {
                store::move_node(tx, id, NodeState::Starting, NodeState::Running)?;
                store::set_node_process(tx, id, NodeState::Running, Some(pid), online)?;
            }
            Ok::<_, StoreError>(())
        })
        .await
        .unwrap();
    // (No check round: the fake host runs no process for these rows, so
    // their checks would miss and count for the breaker.)
    f.checker.retry_exits().await;
    let state = |id| {
        let store = f.store.clone();
        async move {
            store
                .read(move |c| store::node_by_id(c, id))
                .await
                .unwrap()
                .unwrap()
                .state
        }
    };
    assert_eq!(state(c).await, NodeState::Failed);
    assert_eq!(state(d).await, NodeState::Running);
    assert!(f.checker.state().exited.is_empty());
}

/// Makes node `k` a standby, as the reconciler does for a ready node
/// beyond the serving target.
async fn make_standby(f: &Fixture, k: usize) {
    let id = f.nodes[k].id;
    f.store
        .transaction(move |tx| store::move_node(tx, id, NodeState::Running, NodeState::Standby))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failover_promotes_the_standby_in_the_same_decision() {
    let mut f = fixture(4).await;
    make_standby(&f, 2).await;
    make_standby(&f, 3).await;
    f.round().await;
    // An exit: the oldest standby takes over at once.
    f.checker.on_exits(vec![exit_of(&f, 0)]).await;
    assert_eq!(f.state(0).await, NodeState::Failed);
    assert_eq!(f.state(2).await, NodeState::Running, "promoted at once");
    assert_eq!(f.state(3).await, NodeState::Standby);
    assert_eq!(count(&f.events().await, EventKind::NodePromoted), 1);
    // Missed checks of a serving node promote the next one.
    f.host.kill(f.nodes[1].id);
    f.rounds(2).await;
    assert_eq!(f.state(1).await, NodeState::Failed);
    assert_eq!(f.state(3).await, NodeState::Running);
    assert_eq!(count(&f.events().await, EventKind::NodePromoted), 2);
}

#[tokio::test(start_paused = true)]
async fn a_standby_that_misses_its_checks_or_exits_retires_without_a_failover() {
    let mut f = fixture(3).await;
    make_standby(&f, 1).await;
    make_standby(&f, 2).await;
    f.round().await;
    f.host.kill(f.nodes[1].id);
    f.rounds(2).await;
    assert_eq!(f.state(1).await, NodeState::Retiring);
    f.checker.on_exits(vec![exit_of(&f, 2)]).await;
    assert_eq!(f.state(2).await, NodeState::Retiring);
    assert_eq!(
        f.state(0).await,
        NodeState::Running,
        "the serving node is untouched"
    );
    let events = f.events().await;
    assert_eq!(count(&events, EventKind::NodeFailed), 1, "{events:?}");
    assert_eq!(count(&events, EventKind::NodeExited), 1, "{events:?}");
    assert_eq!(count(&events, EventKind::NodePromoted), 0, "{events:?}");
}
