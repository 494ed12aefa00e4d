//! The controller keeps LBs serving on its own: failover after a crash or a
//! hang, the circuit breaker, autoscaling, and the monitor log's retention.
//! Real lbd, real lb-node processes, real DNS answered to `dig`; short
//! windows (1 s health checks) so each test runs in seconds. Every wait is on
//! a condition with a deadline.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{dig, signal, wait_for, Lbd};
use serde_json::{json, Value};

/// Health checks every second; two misses fail a node, two passes bring it back.
fn fast_checks() -> Value {
    json!({"protocol": "HTTP", "request-path": "/",
           "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}})
}

/// Health checks a minute apart, three misses to fail a node: missed checks
/// alone would take minutes to fail one, so a failover within seconds can
/// only come from lbd seeing the process end.
fn slow_checks() -> Value {
    json!({"backend": {"health-check": {"protocol": "HTTP", "request-path": "/",
           "criteria": {"interval": 60, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 3}}}})
}

fn create(lbd: &Lbd, project: &str, extra: Value, backend: &HttpBackend) -> Value {
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": project}}));
    let mut info = json!({
        "name": "web", "project": project, "traffic_type": "http", "port": 8090,
        "backend": {"entities": [backend.addr().to_string()], "health-check": fast_checks()}});
    for (k, v) in extra.as_object().unwrap() {
        if k == "backend" {
            for (bk, bv) in v.as_object().unwrap() {
                info["backend"][bk] = bv.clone();
            }
        } else {
            info[k] = v.clone();
        }
    }
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active(project, "web")
}

/// `info instance` with the last hour of the monitor log (not just the last 10 events).
fn instance_log(lbd: &Lbd, project: &str) -> Value {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
        "info": {"project": project, "name": "web", "history": 3600}}));
    assert_eq!(s, 200, "{v}");
    v["info"].clone()
}

fn nodes(info: &Value) -> Vec<Value> {
    info["nodes"].as_array().cloned().unwrap_or_default()
}

fn node_with_id(info: &Value, id: u64) -> Option<Value> {
    nodes(info).into_iter().find(|n| n["id"] == id)
}

fn has_event(info: &Value, kind: &str) -> bool {
    info["events"]
        .as_array()
        .is_some_and(|l| l.iter().any(|e| e["kind"] == kind))
}

fn addr(node: &Value) -> SocketAddr {
    format!("{}:8090", node["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

/// Sends SIGCONT to the pids on drop, so a failing test never leaves a
/// stopped process behind (the Lbd guard then kills it).
struct Continue(Vec<u32>);

impl Drop for Continue {
    fn drop(&mut self) {
        for pid in &self.0 {
            signal(*pid, libc::SIGCONT);
        }
    }
}

#[test]
fn kill_9_fails_over_to_a_new_address_and_the_old_node_goes_after_grace() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--failover-grace", "2"]);
    let info = create(&lbd, "fo", json!({}), &a);
    let old = nodes(&info)[0].clone();
    let name = "web.fo.lbaas.internal";
    assert_eq!(
        dig(lbd.dns, name, false).0,
        vec![old["address"].as_str().unwrap()]
    );

    signal(old["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    let new = wait_for("a replacement serving", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "fo");
        nodes(&info)
            .into_iter()
            .find(|n| n["id"] != old["id"] && n["state"] == "running")
    });
    assert_ne!(new["address"], old["address"]);
    let new_ip = new["address"].as_str().unwrap().to_string();
    wait_for("DNS swapped", Duration::from_secs(10), || {
        (dig(lbd.dns, name, false).0 == vec![new_ip.clone()]).then_some(())
    });
    assert_eq!(http_get(addr(&new), "/").unwrap(), (200, "a".to_string()));

    // Past the grace period the failed node is deleted.
    let info = wait_for("failed node deleted", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "fo");
        (node_with_id(&info, old["id"].as_u64().unwrap()).is_none()
            && has_event(&info, "node_deleted"))
        .then_some(info)
    });
    for kind in ["node_exited", "node_failed", "failover", "node_deleted"] {
        assert!(
            has_event(&info, kind),
            "no {kind} event: {}",
            info["events"]
        );
    }
    // With the failed node gone the instance is whole again (status is
    // refreshed on the next check or pass).
    wait_for("ONLINE again", Duration::from_secs(10), || {
        (instance_log(&lbd, "fo")["operating_status"] == "ONLINE").then_some(())
    });
    let metrics = lbd
        .http
        .get(format!("{}/metrics", lbd.url()))
        .bearer_auth(&lbd.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("lbaas_events_total{kind=\"failover\"} 1"),
        "{metrics}"
    );
    // The same story through lbctl.
    let out = lbd.lbctl_ok(&["instance", "events", "web", "--project", "fo"]);
    let failed_at = out.find("node_failed").expect(&out);
    let failover_at = out.find("failover ").expect(&out);
    assert!(failed_at < failover_at, "oldest first:\n{out}");
    assert!(out.contains(&new_ip), "{out}");
}

/// The events about node `id`, oldest first.
fn node_events(info: &Value, kind: &str, id: &Value) -> Vec<String> {
    events_of(info, kind)
        .into_iter()
        .filter(|e| e["node_id"] == *id)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Kills the instance's only node with SIGKILL and waits for a replacement
/// that serves, and for DNS to name it alone; returns the instance's log.
fn kill_and_wait_for_replacement(lbd: &Lbd, project: &str, old: &Value) -> Value {
    signal(old["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    // Far less than one check interval: only the exit path is this quick.
    let new = wait_for("a replacement serving", Duration::from_secs(20), || {
        let info = instance_log(lbd, project);
        let failed = node_with_id(&info, old["id"].as_u64().unwrap())
            .is_some_and(|n| n["state"] == "failed");
        nodes(&info)
            .into_iter()
            .find(|n| n["id"] != old["id"] && n["state"] == "running")
            .filter(|_| failed)
    });
    let new_ip = new["address"].as_str().unwrap().to_string();
    let name = format!("web.{project}.lbaas.internal");
    wait_for("DNS on the replacement", Duration::from_secs(10), || {
        (dig(lbd.dns, &name, false).0 == vec![new_ip.clone()]).then_some(())
    });
    assert_eq!(http_get(addr(&new), "/").unwrap(), (200, "a".to_string()));
    instance_log(lbd, project)
}

#[test]
fn a_node_that_exits_is_failed_over_at_once_without_waiting_for_missed_checks() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    let info = create(&lbd, "exit", slow_checks(), &a);
    let old = nodes(&info)[0].clone();
    let info = kill_and_wait_for_replacement(&lbd, "exit", &old);
    let exited = node_events(&info, "node_exited", &old["id"]);
    assert_eq!(exited.len(), 1, "one exit, one event: {}", info["events"]);
    assert!(exited[0].contains("killed by signal 9"), "{exited:?}");
    let failed = node_events(&info, "node_failed", &old["id"]);
    assert_eq!(failed.len(), 1, "{}", info["events"]);
    assert!(
        failed[0].contains("without waiting for missed checks"),
        "{failed:?}"
    );
    assert_eq!(events_of(&info, "failover").len(), 1, "{}", info["events"]);
}

#[test]
fn a_node_adopted_by_a_restarted_lbd_is_failed_over_at_once_too() {
    let a = HttpBackend::start("a");
    let mut lbd = Lbd::start();
    let info = create(&lbd, "adopt", slow_checks(), &a);
    let old = nodes(&info)[0].clone();
    // The node is no child of the new lbd: it watches it through a pidfd.
    lbd.restart();
    let info = instance_log(&lbd, "adopt");
    assert_eq!(nodes(&info)[0]["pid"], old["pid"], "adopted, not restarted");
    let info = kill_and_wait_for_replacement(&lbd, "adopt", &old);
    let exited = node_events(&info, "node_exited", &old["id"]);
    assert_eq!(exited.len(), 1, "{}", info["events"]);
    assert!(exited[0].contains("exit status unknown"), "{exited:?}");
    assert_eq!(node_events(&info, "node_failed", &old["id"]).len(), 1);
}

/// The count of `kind` in lbd's `lbaas_events_total` (0 when absent).
fn events_total(lbd: &Lbd, kind: &str) -> u64 {
    let metrics = lbd
        .http
        .get(format!("{}/metrics", lbd.url()))
        .bearer_auth(&lbd.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let prefix = format!("lbaas_events_total{{kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[test]
fn nodes_lbd_stops_itself_are_not_failed_over() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--dns-ttl", "1"]);
    let mut two = slow_checks();
    two["min_nodes"] = json!(2);
    // Scale-in: the newest node retires, and lbd stops its process.
    let info = create(&lbd, "shrink", two.clone(), &a);
    assert_eq!(nodes(&info).len(), 2);
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance",
        "info": {"project": "shrink", "name": "web", "min_nodes": 1}}));
    assert_eq!(s, 200, "{v}");
    wait_for("scaled in", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "shrink");
        (nodes(&info).len() == 1 && has_event(&info, "node_retired")).then_some(())
    });
    // Delete: lbd stops both nodes while their rows are still running.
    let info = create(&lbd, "gone", two, &a);
    let pids: Vec<u32> = nodes(&info)
        .iter()
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "instance",
        "info": {"project": "gone", "name": "web"}}));
    assert_eq!(s, 200, "{v}");
    wait_for("instance deleted", Duration::from_secs(30), || {
        let (s, _) = lbd.api(&json!({"action": "info", "type": "instance",
            "info": {"project": "gone", "name": "web"}}));
        (s == 404 && pids.iter().all(|p| !common::is_lb_node(*p))).then_some(())
    });
    for kind in ["node_exited", "node_failed", "failover"] {
        assert_eq!(events_total(&lbd, kind), 0, "{kind} recorded");
    }
    let info = instance_log(&lbd, "shrink");
    assert_eq!(nodes(&info).len(), 1);
    assert_eq!(nodes(&info)[0]["state"], "running");
}

#[test]
fn a_hung_node_is_failed_over_and_its_recovery_retires_the_replacement() {
    let a = HttpBackend::start("a");
    // The default grace period (60 s): the node recovers well within it.
    let lbd = Lbd::start_with(&["--dns-ttl", "1"]);
    let info = create(&lbd, "hang", json!({}), &a);
    let old = nodes(&info)[0].clone();
    let old_ip = old["address"].as_str().unwrap().to_string();
    let name = "web.hang.lbaas.internal";
    let pid = old["pid"].as_u64().unwrap() as u32;

    // SIGSTOP: the process still exists, the kernel still accepts its
    // connections, but nothing answers.
    signal(pid, libc::SIGSTOP);
    let stopped = Continue(vec![pid]);
    let new = wait_for("a replacement serving", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "hang");
        let failed = node_with_id(&info, old["id"].as_u64().unwrap())
            .is_some_and(|n| n["state"] == "failed");
        let new = nodes(&info)
            .into_iter()
            .find(|n| n["id"] != old["id"] && n["state"] == "running");
        new.filter(|_| failed)
    });
    let new_ip = new["address"].as_str().unwrap().to_string();
    wait_for("DNS on the replacement", Duration::from_secs(10), || {
        (dig(lbd.dns, name, false).0 == vec![new_ip.clone()]).then_some(())
    });
    assert_eq!(http_get(addr(&new), "/").unwrap().0, 200);

    // It comes back before the grace period ends: the replacement retires
    // (out of DNS first, then deleted) and DNS points at the old node again.
    drop(stopped);
    wait_for("DNS restored", Duration::from_secs(30), || {
        (dig(lbd.dns, name, false).0 == vec![old_ip.clone()]).then_some(())
    });
    let info = wait_for("replacement deleted", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "hang");
        (nodes(&info).len() == 1).then_some(info)
    });
    assert_eq!(nodes(&info)[0]["id"], old["id"]);
    assert_eq!(nodes(&info)[0]["state"], "running");
    for kind in [
        "node_failed",
        "failover",
        "node_recovered",
        "node_retiring",
        "node_retired",
    ] {
        assert!(
            has_event(&info, kind),
            "no {kind} event: {}",
            info["events"]
        );
    }
    assert!(
        common::is_lb_node(pid),
        "the old process is the one serving"
    );
    assert_eq!(http_get(addr(&old), "/").unwrap().0, 200);
}

#[test]
fn the_circuit_breaker_pauses_failover_when_most_nodes_fail_at_once() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    let info = create(&lbd, "storm", json!({"min_nodes": 2}), &a);
    let before: Vec<u64> = nodes(&info)
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    let pids: Vec<u32> = nodes(&info)
        .iter()
        .map(|n| n["pid"].as_u64().unwrap() as u32)
        .collect();
    for pid in &pids {
        signal(*pid, libc::SIGSTOP);
    }
    let stopped = Continue(pids.clone());
    let info = wait_for("failover paused", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "storm");
        (has_event(&info, "failover_paused") && info["operating_status"] == "OFFLINE")
            .then_some(info)
    });
    let event = info["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "failover_paused")
        .unwrap();
    assert!(
        event["message"].as_str().unwrap().contains("2 of 2 nodes"),
        "{event}"
    );
    let ids: Vec<u64> = nodes(&info)
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, before, "no replacement was created");
    assert!(!has_event(&info, "failover"), "{}", info["events"]);
    assert!(nodes(&info).iter().all(|n| n["state"] == "running"));

    drop(stopped);
    let info = wait_for("failover resumed", Duration::from_secs(30), || {
        let info = instance_log(&lbd, "storm");
        (has_event(&info, "failover_resumed") && info["operating_status"] == "ONLINE")
            .then_some(info)
    });
    let ids: Vec<u64> = nodes(&info)
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, before, "the same nodes serve again");
}

/// Sends requests to `target` from a thread until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(target: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let _ = http_get(target, "/");
            }
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn events_of(info: &Value, kind: &str) -> Vec<Value> {
    info["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}

#[test]
fn autoscaling_adds_a_node_under_load_and_removes_it_after() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--dns-ttl", "1"]);
    let info = create(
        &lbd,
        "scale",
        json!({"min_nodes": 1, "max_nodes": 2, "backend": {"auto-scaling": true},
               "scaling": {"target_requests_per_s": 20, "target_connections": 0,
                           "scale_out_after": 2, "scale_in_after": 3, "cooldown": 3}}),
        &a,
    );
    assert_eq!(info["desired_nodes"], 1);
    let first = nodes(&info)[0].clone();
    let load = Load::start(addr(&first));
    let info = wait_for("scaled out", Duration::from_secs(60), || {
        let info = instance_log(&lbd, "scale");
        let running = nodes(&info)
            .iter()
            .filter(|n| n["state"] == "running")
            .count();
        (running == 2).then_some(info)
    });
    let out = &events_of(&info, "scale_out")[0];
    assert!(
        out["message"].as_str().unwrap().starts_with("1 -> 2 nodes"),
        "{out}"
    );
    wait_for("both nodes in DNS", Duration::from_secs(10), || {
        (dig(lbd.dns, "web.scale.lbaas.internal", false).0.len() == 2).then_some(())
    });
    // Still loaded past the cooldown and several more samples: max_nodes holds.
    let second = nodes(&info)
        .into_iter()
        .find(|n| n["id"] != first["id"])
        .unwrap();
    wait_for("more samples under load", Duration::from_secs(30), || {
        let n = instance_log(&lbd, "scale")["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["node_id"] == second["id"])
            .count();
        (n >= 6).then_some(())
    });
    let info = instance_log(&lbd, "scale");
    assert_eq!(nodes(&info).len(), 2, "never past max_nodes");
    assert_eq!(events_of(&info, "scale_out").len(), 1);

    drop(load);
    let info = wait_for("scaled back in", Duration::from_secs(60), || {
        let info = instance_log(&lbd, "scale");
        (nodes(&info).len() == 1 && has_event(&info, "node_retired")).then_some(info)
    });
    assert_eq!(nodes(&info)[0]["id"], first["id"], "the newest node goes");
    assert_eq!(info["desired_nodes"], 1, "never under min_nodes");
    let scale_in = &events_of(&info, "scale_in")[0];
    assert!(
        scale_in["message"]
            .as_str()
            .unwrap()
            .starts_with("2 -> 1 nodes"),
        "{scale_in}"
    );
    let gap = scale_in["ts"].as_i64().unwrap() - out["ts"].as_i64().unwrap();
    assert!(gap >= 3, "cooldown respected: {gap} s between actions");
    wait_for("DNS down to one", Duration::from_secs(10), || {
        (dig(lbd.dns, "web.scale.lbaas.internal", false).0
            == vec![first["address"].as_str().unwrap().to_string()])
        .then_some(())
    });
}

#[test]
fn the_monitor_log_is_downsampled_and_pruned_by_the_running_daemon() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--retention-interval", "1", "--events-retention", "3600"]);
    let info = create(&lbd, "log", json!({}), &a);
    let instance_id = info["id"].as_i64().unwrap();
    let node_id = info["nodes"][0]["id"].as_i64().unwrap();
    // Write two hours of old samples and an old event straight into lbd's
    // SQLite file, as if lbd had been running that long.
    let store = lbaas::store::Store::open(&lbd.state.0.join("lbaas.db")).unwrap();
    let now = lbaas::store::now();
    let stats = lbaas::model::NodeStats::default();
    store
        .transaction_blocking(|tx| {
            for k in 0..(2 * 3600 / 5) {
                let sample = lbaas::model::SampleInfo {
                    ts: now - 2 * 3600 - 120 + k * 5,
                    resolution: 0,
                    node_id: lbaas::model::NodeId(node_id),
                    requests_per_s: 10.0,
                    active_connections: 1.0,
                    bytes_in_per_s: 0.0,
                    bytes_out_per_s: 0.0,
                    p50_ms: None,
                    p90_ms: None,
                    p99_ms: None,
                    members_up: 1,
                    members_down: 0,
                };
                lbaas::store::add_sample(tx, lbaas::model::InstanceId(instance_id), &sample, &stats)?;
            }
            tx.execute(
                "INSERT INTO events (ts, instance_id, kind, message) VALUES (?1, ?2, 'node_ready', 'x')",
                rusqlite::params![now - 7200, instance_id],
            )?;
            Ok::<_, lbaas::store::StoreError>(())
        })
        .unwrap();
    let (raw, minutes, _) = wait_for("retention ran", Duration::from_secs(30), || {
        let size = store.read_blocking(lbaas::store::monitor_log_size).unwrap();
        (size.1 > 0).then_some(size)
    });
    // An hour (720 at 5 s) plus the minute being filled and live samples.
    assert!(raw <= 720 + 12 + 60, "raw rows bounded: {raw}");
    assert!(
        (60..=64).contains(&minutes),
        "the older hour as minutes: {minutes}"
    );
    let info = instance_log(&lbd, "log");
    assert!(!has_event(&info, "old"), "the old event was pruned");
    assert!(has_event(&info, "node_ready"), "recent events stay");
}
