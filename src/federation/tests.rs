//! The mappings sync against a real SQLite file and a stand-in node admin
//! API on 127.0.0.1 that records every `PUT /mappings`.

use std::sync::Mutex as StdMutex;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::put;
use axum::Json;

use super::*;
use crate::model::mapping::TokenMappingCreate;
use crate::model::NodeState;

type Received = Arc<StdMutex<Vec<NodeMappings>>>;

/// A node admin API taking `PUT /mappings` with `secret`.
async fn fake_node(addr: std::net::IpAddr, port: u16, secret: &'static str) -> Received {
    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route(
            "/mappings",
            put(
                move |State(seen): State<Received>,
                      headers: HeaderMap,
                      Json(m): Json<NodeMappings>| async move {
                    let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                    if auth != Some(&format!("Bearer {secret}")) {
                        return Err(StatusCode::UNAUTHORIZED);
                    }
                    let version = m.version;
                    seen.lock().unwrap().push(m);
                    Ok(Json(serde_json::json!({"mappings_version": version})))
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind((addr, port)).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    received
}

struct TempState(std::path::PathBuf);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spec() -> crate::model::InstanceSpec {
    let create: crate::model::InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:8000"]},
        "federation": {"providers": {"sp1": {"entities": ["127.0.0.1:9001"]},
                                     "sp2": {"entities": ["127.0.0.1:9002"]}}}
    }))
    .unwrap();
    create.validate(&crate::password::Argon2Hasher).unwrap()
}

fn volume(id: &str, provider: &str) -> ResourceMapping {
    ResourceMapping {
        key: ResourceKey {
            resource_type: "volumes".into(),
            id: id.into(),
        },
        provider: provider.into(),
    }
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn pushes_reach_running_nodes_and_learned_changes_are_shared() {
    let dir = std::env::temp_dir().join(format!("lbaas-fed-sync-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = TempState(dir.clone());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let received = fake_node("127.0.0.1".parse().unwrap(), port, "good-secret").await;
    let store = Store::open(&dir.join("lbaas.db")).unwrap();
    let tokens = TokenStore::open(&dir).unwrap();
    let (instance, alive, dead) = store
        .transaction_blocking(|tx| {
            let p = store::insert_project(tx, "demo", "john", "127.0.0.0/8")?;
            let i = store::insert_instance(tx, p.id, &spec())?;
            let mut ids = Vec::new();
            // 127.0.0.3: nothing listens there; a starting node is not pushed to.
            for (addr, secret) in [
                ("127.0.0.1", "good-secret"),
                ("127.0.0.3", "x"),
                ("127.0.0.4", "y"),
            ] {
                let n = store::insert_node(tx, i.id, addr, secret)?;
                ids.push(n.id);
            }
            for id in &ids[..2] {
                store::move_node(tx, *id, NodeState::Starting, NodeState::Running)?;
            }
            let t = TokenMappingCreate {
                local_token: "local".into(),
                local_project: "alice".into(),
                provider: "sp1".into(),
                remote_token: "remote-secret".into(),
                remote_project: "sp1-alice".into(),
                expires_at: None,
            };
            store::put_token_mapping(tx, &tokens, i.id, &t, 1)?;
            store::put_resource_mapping(
                tx,
                i.id,
                &volume("v1", "sp2"),
                MappingSource::Injected,
                1,
            )?;
            Ok::<_, StoreError>((i.id, ids[0], ids[1]))
        })
        .unwrap();
    let sync = Arc::new(MappingSync::new(store.clone(), tokens.clone(), port));
    let pushed = sync.push(instance).await;
    assert_eq!(
        pushed,
        Pushed {
            pushed_to: 1,
            nodes: 2
        }
    );
    {
        let got = received.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].version, 2);
        assert_eq!(got[0].resources, vec![volume("v1", "sp2")]);
        // The node needs the remote token in clear; the local one only hashed.
        assert_eq!(got[0].tokens[0].remote_token, "remote-secret");
        assert_eq!(
            got[0].tokens[0].local_token_sha256,
            crate::model::mapping::token_sha256_hex("local")
        );
    }
    {
        let state = lock(&sync.state);
        assert_eq!(state.nodes[&alive].accepted, Some(2));
        assert!(
            state.nodes[&dead].retry_at.is_some(),
            "a failed node waits to be tried again"
        );
    }

    // A learned mapping is stored and goes to the nodes; the same again does nothing.
    sync.learned(instance, volume("v2", "sp1")).await;
    wait_for("the learned push", || received.lock().unwrap().len() == 2).await;
    assert_eq!(received.lock().unwrap()[1].version, 3);
    sync.learned(instance, volume("v2", "sp1")).await;
    sync.learned(instance, volume("v3", "sp9")).await;
    let bad_key = ResourceMapping {
        key: ResourceKey {
            resource_type: "volumes".into(),
            id: "a/b".into(),
        },
        provider: "sp1".into(),
    };
    sync.learned(instance, bad_key).await;
    // No wait for an absence: the removal below must be the very next push
    // (the third) and still carry version 4, which a push or a version
    // bump from these three calls would have broken.
    assert_eq!(
        received.lock().unwrap().len(),
        2,
        "nothing changed, nothing pushed"
    );
    let view = store
        .read_blocking(|c| store::resource_mapping(c, instance, &volume("v2", "sp1").key))
        .unwrap()
        .unwrap();
    assert_eq!(view.source, MappingSource::Learned);
    sync.removed(instance, volume("v1", "sp2").key).await;
    wait_for("the removal's push", || received.lock().unwrap().len() == 3).await;
    let last = received.lock().unwrap()[2].clone();
    assert_eq!(
        (last.version, last.resources),
        (4, vec![volume("v2", "sp1")])
    );

    // Caught up: nothing to send to the live node; a restarted lbd (no
    // memory of pushes) sends the current set once.
    sync.catch_up_once().await;
    assert_eq!(received.lock().unwrap().len(), 3);
    let restarted = Arc::new(MappingSync::new(store.clone(), tokens, port));
    restarted.catch_up_once().await;
    assert_eq!(received.lock().unwrap().len(), 4);
    restarted.catch_up_once().await;
    assert_eq!(received.lock().unwrap().len(), 4);
}

#[test]
fn a_failing_node_is_retried_later_and_less_often() {
    assert_eq!(retry_after(1), Duration::from_secs(1));
    assert_eq!(retry_after(2), Duration::from_secs(2));
    assert_eq!(retry_after(20), MAX_RETRY);
    let now = Instant::now();
    assert!(is_due(None, 0, now));
    let accepted = NodeSync {
        accepted: Some(5),
        ..Default::default()
    };
    assert!(!is_due(Some(&accepted), 5, now));
    assert!(
        !is_due(Some(&accepted), 4, now),
        "a node ahead is not pushed back"
    );
    assert!(is_due(Some(&accepted), 6, now));
    let waiting = NodeSync {
        accepted: Some(5),
        failures: 1,
        retry_at: Some(now + Duration::from_secs(1)),
    };
    assert!(!is_due(Some(&waiting), 6, now));
    assert!(is_due(Some(&waiting), 6, now + Duration::from_secs(2)));
}
