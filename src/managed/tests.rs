//! The manager against a real store, real backend processes (python's
//! http.server) and a stand-in node admin API on 127.0.0.1 that streams a
//! wake and records what lbd pushes (the real node is tested end to end in
//! tests/managed.rs).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, put};
use axum::Router;
use serde_json::json;
use tokio::sync::watch;

use super::{Manager, ManagerSettings};
use crate::drivers::backend::process::ProcessBackends;
use crate::drivers::network::claims::SubnetClaims;
use crate::drivers::network::loopback::LoopbackNetwork;
use crate::drivers::node_admin::NodeAdminClient;
use crate::model::wake::ManagedMembers;
use crate::model::{NodeState, ProjectId};
use crate::store::{self, Store, StoreError};

static WOKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[derive(Clone, Default)]
struct FakeNode {
    pushed: Arc<Mutex<Vec<ManagedMembers>>>,
    /// `idle_ms` the status reports for every member.
    idle_ms: Arc<Mutex<u64>>,
}

impl FakeNode {
    fn last(&self) -> Option<ManagedMembers> {
        self.pushed.lock().unwrap().last().cloned()
    }

    async fn serve(&self) -> SocketAddr {
        let wake = concat!(
            r#"{"kind":"hello","node_id":"1","managed_version":null}"#,
            "\n",
            r#"{"kind":"wake","pool":"default","queued":1,"in_flight":1,"ready":0}"#,
            "\n"
        );
        let (pushed, status_of, idle) = (self.clone(), self.clone(), self.idle_ms.clone());
        let app = Router::new()
            .route(
                "/events",
                get(move || async move {
                    // One wake in all: a reconnect (15 s without a keepalive,
                    // which this stand-in does not send) only says hello.
                    let text = if WOKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        &wake[..wake.find('\n').unwrap() + 1]
                    } else {
                        wake
                    };
                    let lines = futures_util::stream::iter([Ok::<_, std::io::Error>(
                        bytes::Bytes::from_static(text.as_bytes()),
                    )]);
                    let open =
                        futures_util::StreamExt::chain(lines, futures_util::stream::pending());
                    axum::body::Body::from_stream(open)
                }),
            )
            .route(
                "/managed",
                put(
                    move |axum::Json(m): axum::Json<ManagedMembers>| async move {
                        pushed.pushed.lock().unwrap().push(m);
                        axum::Json(json!({}))
                    },
                ),
            )
            .route(
                "/status",
                get(move || async move {
                    let last = status_of.last();
                    let members: Vec<_> = last
                        .iter()
                        .flat_map(|m| m.targets.iter().flat_map(|t| t.members.iter()))
                        .map(|b| {
                            json!({"address": b.address.to_string(), "state": "up",
                            "requests": 1, "failures": 0, "active": 0,
                            "open_connections": 0, "idle_ms": *idle.lock().unwrap()})
                        })
                        .collect();
                    axum::Json(
                        json!({"node_id": "1", "config_version": 1, "listening": null,
                        "error": null, "managed_version": last.map(|m| m.version),
                        "stats": {"requests_total": 0, "active_connections": 0,
                            "connections_total": 0, "bytes_in": 0, "bytes_out": 0,
                            "backend_errors": 0, "members": members}}),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }
}

async fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Ends every backend process left in `dir` when the test ends, passed or not.
struct Reaper(Arc<ProcessBackends>);

impl Drop for Reaper {
    fn drop(&mut self) {
        use crate::drivers::backend::BackendDriver;
        for (id, pid) in self.0.live() {
            self.0.kill_orphan(id, pid);
        }
    }
}

fn setup(store: &Store) -> ProjectId {
    let subnet: ipnet::Ipv4Net = format!(
        "127.{}.{}.0/24",
        200 + std::process::id() % 50,
        std::process::id() % 250
    )
    .parse()
    .unwrap();
    // The first backend takes the subnet's top host: a port free there now.
    let top = crate::managed::decide::backend_address(&subnet, &Default::default()).unwrap();
    let port = std::net::TcpListener::bind((top, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let create: crate::model::InstanceCreate = serde_json::from_value(json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9"]}
    }))
    .unwrap();
    let mut spec = create.validate(&crate::password::Argon2Hasher).unwrap();
    let managed: crate::model::managed::ManagedSpec = serde_json::from_value(json!({
        "compute": "process", "port": port,
        "idle_timeout": 1,
        "process": {"command": ["python3", "-m", "http.server", "{port}", "--bind", "{address}"]}
    }))
    .unwrap();
    spec.managed = Some(managed.validate(spec.traffic_type).unwrap());
    let subnet = subnet.to_string();
    store
        .transaction_blocking(|tx| {
            let p = store::insert_project(tx, "demo", "admin", &subnet)?;
            let i = store::insert_instance(tx, p.id, &spec)?;
            let n = store::insert_node(tx, i.id, "127.0.0.1", "s3cret")?;
            store::move_node(tx, n.id, NodeState::Starting, NodeState::Running)?;
            Ok::<_, StoreError>(p.id)
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_starts_a_backend_that_is_pushed_ready_then_stopped_when_idle() {
    let (dir, store) = crate::store::backends::tests::store();
    let project = setup(&store);
    let node = FakeNode::default();
    *node.idle_ms.lock().unwrap() = 0;
    let admin = node.serve().await;
    let claims = SubnetClaims::open(Some(&dir.0.join("claims"))).unwrap();
    let network =
        Arc::new(LoopbackNetwork::new("127.0.0.0/8".parse().unwrap(), 24, claims).unwrap());
    let driver = Arc::new(ProcessBackends::new(dir.0.join("backends"), None).unwrap());
    let _reaper = Reaper(driver.clone());
    let manager = Manager::new(
        store.clone(),
        driver,
        NodeAdminClient::new(Duration::from_secs(5)),
        network,
        ManagerSettings {
            node_admin_port: admin.port(),
            lifetime_retention_s: 3600,
            replace_drain: Duration::from_secs(1),
        },
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(manager.run(stop_rx));

    let member = wait_until("a ready member pushed", || {
        node.last()
            .and_then(|m| m.targets.first().and_then(|t| t.members.first().cloned()))
    })
    .await;
    // The member is the real http.server, serving.
    let conn = tokio::net::TcpStream::connect(member.address).await;
    assert!(conn.is_ok(), "{member:?}");
    let pid = store
        .read_blocking(store::all_backends)
        .unwrap()
        .first()
        .and_then(|b| b.pid)
        .expect("a pid");

    // Now the node reports it idle past idle_timeout: removed, then stopped.
    *node.idle_ms.lock().unwrap() = 5_000;
    wait_until("the member removed", || {
        node.last()
            .filter(|m| m.targets.iter().all(|t| t.members.is_empty()))
    })
    .await;
    wait_until("the process gone", || {
        (!std::path::Path::new(&format!("/proc/{pid}/environ")).exists()
            || std::fs::read(format!("/proc/{pid}/environ")).map_or(true, |e| e.is_empty()))
        .then_some(())
    })
    .await;
    wait_until("the row gone", || {
        store
            .read_blocking(store::all_backends)
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let usage = store
        .read_blocking(|c| store::usage_report(c, project, "demo", None, None))
        .unwrap();
    let pool = &usage.instances[0].pools[0];
    assert_eq!((pool.figures.starts, pool.figures.cold_starts), (1, 1));
    assert!(pool.figures.backend_seconds > 0.0);
    let _ = stop_tx.send(true);
    run.await.unwrap();
}
