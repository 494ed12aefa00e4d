//! Another process holds the write lock of lbd's SQLite file (`BEGIN
//! EXCLUSIVE` on a real second connection): writes answer 503
//! `store_unavailable` in time, reads and DNS go on, the health checker
//! keeps its failover decision in memory, and everything catches up once
//! the lock is gone, without a restart. Real lbd, lb-node, backend and `dig`.

mod common;

use std::time::{Duration, Instant};

use common::backends::{http_get, HttpBackend};
use common::{dig, signal, wait_for, Lbd};
use serde_json::{json, Value};

/// The lock of "another process": rolled back on drop, also when the test fails.
struct WriteLock(rusqlite::Connection);

impl WriteLock {
    fn take(lbd: &Lbd) -> WriteLock {
        let conn = rusqlite::Connection::open(lbd.state.0.join("lbaas.db")).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        WriteLock(conn)
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("ROLLBACK");
    }
}

fn nodes(lbd: &Lbd) -> Vec<Value> {
    lbd.instance("lk", "web")["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn a_locked_database_refuses_writes_fast_and_stops_nothing_else() {
    let backend = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--failover-grace", "60"]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "lk"}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "lk", "traffic_type": "http", "port": 8091,
        "backend": {"entities": [backend.addr().to_string()], "health-check": {
            "protocol": "HTTP", "request-path": "/",
            "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}}}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("lk", "web");
    let old = info["nodes"][0].clone();
    let old_ip = old["address"].as_str().unwrap().to_string();
    let name = "web.lk.lbaas.internal";

    let lock = WriteLock::take(&lbd);

    // Every kind of write answers 503 store_unavailable within 1 s.
    let writes = [
        json!({"action": "create", "type": "project", "info": {"name": "other"}}),
        json!({"action": "update", "type": "project", "info": {"name": "lk", "user": "bob"}}),
        json!({"action": "update", "type": "instance", "info": {"project": "lk", "name": "web", "port": 8092}}),
        json!({"action": "delete", "type": "instance", "info": {"project": "lk", "name": "web"}}),
    ];
    for body in &writes {
        let started = Instant::now();
        let (s, v) = lbd.api(body);
        let took = started.elapsed();
        assert_eq!(s, 503, "{body}: {v}");
        assert_eq!(v["error"]["code"], "store_unavailable", "{v}");
        assert!(took < Duration::from_secs(1), "{body} took {took:?}");
    }
    // Reads go on (WAL), and show nothing of the refused writes.
    let (s, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {}}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"].as_array().unwrap().len(), 1);
    assert_eq!(lbd.instance("lk", "web")["port"], 8091);
    // DNS answers, and traffic flows.
    assert_eq!(dig(lbd.dns, name, false).0, vec![old_ip.clone()]);
    let node_addr = format!("{old_ip}:8091").parse().unwrap();
    assert_eq!(http_get(node_addr, "/").unwrap(), (200, "a".to_string()));

    // The node dies while the store is locked: the health checker still
    // probes, decides, and keeps the decision.
    signal(old["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    wait_for(
        "the failover decision kept in memory",
        Duration::from_secs(30),
        || {
            lbd.stderr()
                .contains("failover decision; kept until the store can be written")
                .then_some(())
        },
    );
    // Still answering DNS while locked.
    assert_eq!(dig(lbd.dns, name, false).1, "NOERROR");

    drop(lock);

    // Everything catches up without a restart: the node is failed, a
    // replacement at a new address serves and is in DNS.
    let new = wait_for("a replacement serving", Duration::from_secs(30), || {
        nodes(&lbd)
            .into_iter()
            .find(|n| n["id"] != old["id"] && n["state"] == "running")
    });
    let new_ip = new["address"].as_str().unwrap().to_string();
    assert_ne!(new_ip, old_ip);
    wait_for("DNS swapped", Duration::from_secs(10), || {
        (dig(lbd.dns, name, false).0 == vec![new_ip.clone()]).then_some(())
    });
    let failed = nodes(&lbd)
        .into_iter()
        .find(|n| n["id"] == old["id"])
        .expect("the failed node stays for its grace period");
    assert_eq!(failed["state"], "failed");
    let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
        "info": {"project": "lk", "name": "web", "history": 3600}}));
    assert_eq!(s, 200);
    let kinds: Vec<&str> = v["info"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"node_failed"), "{kinds:?}");
    assert!(kinds.contains(&"failover"), "{kinds:?}");
    // And writes are accepted again.
    let (s, v) = lbd.api(&writes[0]);
    assert_eq!(s, 200, "{v}");
}
