//! The store against a real SQLite file: the node state machine's guard,
//! and a second connection holding the write lock as another process would.

use std::time::{Duration, Instant};

use super::*;
use crate::model::{EventKind, InstanceSpec, OperatingStatus};

struct TempDb {
    dir: std::path::PathBuf,
}

impl TempDb {
    fn new(name: &str) -> TempDb {
        let dir = std::env::temp_dir().join(format!("lbaas-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDb { dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.join("lbaas.db")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spec() -> InstanceSpec {
    let create: crate::model::InstanceCreate = serde_json::from_value(serde_json::json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:8000"]}
    }))
    .unwrap();
    create.validate(&crate::password::Argon2Hasher).unwrap()
}

/// A store with one project, one instance and one running node.
fn store_with_running_node(db: &TempDb) -> (Store, NodeRow) {
    let store = Store::open(&db.path()).unwrap();
    let node = store
        .transaction_blocking(|tx| {
            let p = insert_project(tx, "demo", "john", "127.1.0.0/16")?;
            let i = insert_instance(tx, p.id, &spec())?;
            let n = insert_node(tx, i.id, "127.1.0.2", "00")?;
            assert!(move_node(
                tx,
                n.id,
                NodeState::Starting,
                NodeState::Running
            )?);
            Ok::<_, StoreError>(node_by_id(tx, n.id)?.unwrap())
        })
        .unwrap();
    (store, node)
}

#[test]
fn a_stale_move_changes_nothing_and_says_so() {
    let db = TempDb::new("stale");
    let (store, stale) = store_with_running_node(&db);
    // The health checker fails the node...
    let failed = store
        .transaction_blocking(|tx| move_node(tx, stale.id, NodeState::Running, NodeState::Failed))
        .unwrap();
    assert!(failed);
    // ...and a reconciler step that read it as running before writes what it saw.
    let (moved, recorded) = store
        .transaction_blocking(|tx| {
            let moved = move_node(tx, stale.id, NodeState::Running, NodeState::Retiring)?;
            let recorded =
                set_node_process(tx, stale.id, stale.state, Some(1), OperatingStatus::Online)?;
            Ok::<_, StoreError>((moved, recorded))
        })
        .unwrap();
    assert_eq!((moved, recorded), (false, false));
    let now = store
        .read_blocking(|c| node_by_id(c, stale.id))
        .unwrap()
        .unwrap();
    assert_eq!(now.state, NodeState::Failed);
    assert_eq!(now.operating_status, OperatingStatus::Offline);
    // A move the state machine does not allow is refused outright.
    let illegal = store
        .transaction_blocking(|tx| move_node(tx, stale.id, NodeState::Failed, NodeState::Retiring));
    assert!(matches!(illegal, Err(StoreError::IllegalTransition { .. })));
    // A guarded delete leaves a node that is no longer in the expected state.
    assert!(!store
        .transaction_blocking(|tx| delete_node(tx, stale.id, NodeState::Retiring))
        .unwrap());
    assert!(store
        .transaction_blocking(|tx| delete_node(tx, stale.id, NodeState::Failed))
        .unwrap());
}

#[test]
fn racing_writers_agree_on_one_outcome() {
    // Many concurrent "fail it" and "retire it" writers on the same running
    // node: exactly one wins, and the node ends in that one's state.
    let db = TempDb::new("race");
    let (store, node) = store_with_running_node(&db);
    let wins: Vec<(NodeState, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                let to = if i % 2 == 0 {
                    NodeState::Failed
                } else {
                    NodeState::Retiring
                };
                s.spawn(move || {
                    let moved = store
                        .transaction_blocking(|tx| move_node(tx, node.id, NodeState::Running, to))
                        .unwrap();
                    (to, moved)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<NodeState> = wins.iter().filter(|(_, m)| *m).map(|(s, _)| *s).collect();
    assert_eq!(winners.len(), 1, "{wins:?}");
    let now = store
        .read_blocking(|c| node_by_id(c, node.id))
        .unwrap()
        .unwrap();
    assert_eq!(now.state, winners[0]);
}

#[test]
fn a_locked_database_refuses_writes_in_time_and_still_reads() {
    let db = TempDb::new("locked");
    let (store, node) = store_with_running_node(&db);
    // Another process's connection takes the write lock and keeps it.
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let started = Instant::now();
    let write = store.transaction_blocking(|tx| {
        add_event(tx, EventSubject::default(), EventKind::NodeReady, "x")
    });
    let waited = started.elapsed();
    assert!(matches!(write, Err(StoreError::Unavailable)), "{write:?}");
    assert!(waited < Duration::from_secs(1), "gave up after {waited:?}");

    // Reads go on under WAL.
    let read = store.read_blocking(|c| node_by_id(c, node.id)).unwrap();
    assert_eq!(read.unwrap().state, NodeState::Running);
    // The reader connection refuses writes, so none slips past the deadline.
    assert!(store
        .read_blocking(|c| add_event(c, EventSubject::default(), EventKind::NodeReady, "x"))
        .is_err());

    other.execute_batch("ROLLBACK").unwrap();
    store
        .transaction_blocking(|tx| {
            add_event(tx, EventSubject::default(), EventKind::NodeReady, "x")
        })
        .expect("writes work again once the lock is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_writes_behind_a_lock_all_give_up_within_the_deadline() {
    let db = TempDb::new("queued");
    let (store, _) = store_with_running_node(&db);
    let other = rusqlite::Connection::open(db.path()).unwrap();
    other.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let started = Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let store = store.clone();
        writes.spawn(async move {
            store
                .transaction(|tx| add_event(tx, EventSubject::default(), EventKind::NodeReady, "x"))
                .await
        });
    }
    while let Some(done) = writes.join_next().await {
        assert!(matches!(done.unwrap(), Err(StoreError::Unavailable)));
    }
    // Twenty writes queued behind one mutex still all answer within about
    // one deadline, not twenty of them.
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "all gave up after {waited:?}"
    );
    other.execute_batch("ROLLBACK").unwrap();
}
