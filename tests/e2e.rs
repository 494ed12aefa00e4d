//! End to end on the embedded default: the real lbd binary, real lb-node
//! processes on 127.x addresses, real backends, lbctl, and dig.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use common::backends::{http_get, EchoBackend, HttpBackend};
use common::{dig, is_lb_node, wait_for, Lbd};
use serde_json::{json, Value};

fn node_addr(info: &Value, port: u16) -> SocketAddr {
    let address = info["nodes"][0]["address"]
        .as_str()
        .expect("a node address");
    format!("{address}:{port}").parse().unwrap()
}

fn count_bodies(addr: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, body) = http_get(addr, "/").expect("request through the LB");
        assert_eq!(status, 200, "body: {body}");
        *counts.entry(body).or_default() += 1;
    }
    counts
}

#[test]
fn http_walkthrough_with_lbctl_dns_update_and_delete() {
    let (a, b, c) = (
        HttpBackend::start("a"),
        HttpBackend::start("b"),
        HttpBackend::start("c"),
    );
    let lbd = Lbd::start();
    // A project's user must exist (tenants).
    lbd.add_user("john", "member");

    let out = lbd.lbctl_ok(&["project", "create", "demo", "--user", "john"]);
    assert!(out.contains("demo"), "{out}");
    let backends: Vec<String> = [&a, &b, &c].iter().map(|s| s.addr().to_string()).collect();
    let out = lbd.lbctl_ok(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "http",
        "--port",
        "8080",
        "--backend",
        &backends[0],
        "--backend",
        &backends[1],
        "--backend",
        &backends[2],
    ]);
    assert!(
        out.contains("http://web.demo.lbaas.internal:8080/"),
        "create prints the URL: {out}"
    );

    let info = lbd.wait_active("demo", "web");
    assert_eq!(info["operating_status"], "ONLINE");
    let addr = node_addr(&info, 8080);
    assert!(
        out.contains(&addr.ip().to_string()),
        "create prints the node address: {out}"
    );

    // Round robin: every backend gets its turn.
    let counts = count_bodies(addr, 30);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 10),
        "round robin evenly: {counts:?}"
    );
    let seen = a.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    // The instance's DNS name answers the node address, over UDP and TCP.
    let (answers, status) = dig(lbd.dns, "web.demo.lbaas.internal", false);
    assert_eq!(
        (answers, status.as_str()),
        (vec![addr.ip().to_string()], "NOERROR")
    );
    let (answers, _) = dig(lbd.dns, "web.demo.lbaas.internal", true);
    assert_eq!(answers, vec![addr.ip().to_string()]);

    // Update the backends: the node applies them in place, without a restart.
    let pid_before = info["nodes"][0]["pid"].clone();
    let d = HttpBackend::start("d");
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--backend",
        &d.addr().to_string(),
    ]);
    let info = lbd.wait_active("demo", "web");
    assert_eq!(
        info["nodes"][0]["pid"], pid_before,
        "the node was not restarted"
    );
    let counts = count_bodies(addr, 5);
    assert_eq!(counts, HashMap::from([("d".to_string(), 5)]));

    // Lists show it.
    let list = lbd.lbctl_ok(&["instance", "list", "--project", "demo"]);
    assert!(list.contains("web"), "{list}");
    let json_list: Value =
        serde_json::from_str(&lbd.lbctl_ok(&["-o", "json", "project", "list"])).unwrap();
    assert_eq!(json_list[0]["name"], "demo");
    assert_eq!(json_list[0]["user"], "john");

    // Delete: the name goes (NXDOMAIN), the node process goes.
    let pid = info["nodes"][0]["pid"].as_u64().unwrap() as u32;
    lbd.lbctl_ok(&["instance", "delete", "web", "--project", "demo"]);
    wait_for("NXDOMAIN after delete", Duration::from_secs(20), || {
        let (answers, status) = dig(lbd.dns, "web.demo.lbaas.internal", false);
        (answers.is_empty() && status == "NXDOMAIN").then_some(())
    });
    wait_for("node process gone", Duration::from_secs(20), || {
        (!is_lb_node(pid)).then_some(())
    });
    // The row goes last, after DNS and the node.
    wait_for("instance row gone", Duration::from_secs(20), || {
        let (status, v) = lbd.api(
            &json!({"action": "info", "type": "instance", "info": {"project": "demo", "name": "web"}}),
        );
        (status == 404 && v["error"]["code"] == "instance_not_found").then_some(())
    });
    lbd.lbctl_ok(&["project", "delete", "demo"]);
    wait_for("project gone", Duration::from_secs(20), || {
        let (status, _) =
            lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "demo"}}));
        (status == 404).then_some(())
    });
}

#[test]
fn tcp_instance_echoes_with_half_close() {
    use std::io::{Read, Write};
    let echo = EchoBackend::start();
    let lbd = Lbd::start();
    let (s, v) =
        lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "tcpdemo"}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "echo", "project": "tcpdemo", "traffic_type": "tcp", "port": 7000,
        "backend": {"entities": [echo.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["url"], "tcp://echo.tcpdemo.lbaas.internal:7000");
    let info = lbd.wait_active("tcpdemo", "echo");
    let mut conn = std::net::TcpStream::connect(node_addr(&info, 7000)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    conn.write_all(&payload).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    conn.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
}

#[test]
fn restart_adopts_running_nodes_and_recreates_missing_ones() {
    let a = HttpBackend::start("a");
    let mut lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "keep"}}));
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "keep", "traffic_type": "http", "port": 8081,
        "backend": {"entities": [a.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("keep", "web");
    let addr = node_addr(&info, 8081);
    let pid = info["nodes"][0]["pid"].as_u64().unwrap();

    let projects_before = lbd.api(&json!({"action": "info", "type": "project"})).1["info"].clone();

    // A clean restart: everything stored is still there; the node keeps
    // serving and is adopted, not restarted.
    lbd.restart();
    let projects_after = lbd.api(&json!({"action": "info", "type": "project"})).1["info"].clone();
    assert_eq!(projects_after[0]["name"], projects_before[0]["name"]);
    assert_eq!(projects_after[0]["subnet"], projects_before[0]["subnet"]);
    assert_eq!(
        projects_after[0]["instances"][0]["backend"],
        projects_before[0]["instances"][0]["backend"]
    );
    let info = lbd.wait_active("keep", "web");
    assert_eq!(
        info["nodes"][0]["pid"].as_u64().unwrap(),
        pid,
        "adopted, same process"
    );
    assert_eq!(http_get(addr, "/").unwrap(), (200, "a".to_string()));

    // lbd crashes and its node dies with it: the restart re-creates the node.
    lbd.crash();
    for pid in lbd.node_pids() {
        common::signal(pid, libc::SIGKILL);
    }
    wait_for("node dead", Duration::from_secs(10), || {
        http_get(addr, "/").is_err().then_some(())
    });
    lbd.start_again();
    let info = wait_for("node re-created", Duration::from_secs(30), || {
        let info = lbd.instance("keep", "web");
        let new_pid = info["nodes"][0]["pid"].as_u64();
        (info["provisioning_status"] == "ACTIVE" && new_pid.is_some() && new_pid != Some(pid))
            .then_some(info)
    });
    assert_eq!(
        node_addr(&info, 8081),
        addr,
        "same address after re-creation"
    );
    assert_eq!(http_get(addr, "/").unwrap(), (200, "a".to_string()));
    let (answers, _) = dig(lbd.dns, "web.keep.lbaas.internal", false);
    assert_eq!(
        answers,
        vec![addr.ip().to_string()],
        "DNS is rebuilt after restart"
    );
}

#[test]
fn node_stats_are_sampled_into_instance_info() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "stats"}}));
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "stats", "traffic_type": "http", "port": 8084, "algorithm": "least_connections",
        "backend": {"entities": [a.addr().to_string()],
                    "health-check": {"criteria": {"interval": 1, "timeout": 1}}}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("stats", "web");
    let addr = node_addr(&info, 8084);
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap().0, 200);
    }
    let info = wait_for(
        "a sample with the requests",
        Duration::from_secs(20),
        || {
            let info = lbd.instance("stats", "web");
            let n = info["nodes"][0]["stats"]["requests_total"]
                .as_u64()
                .unwrap_or(0);
            (n >= 10).then_some(info)
        },
    );
    let stats = &info["nodes"][0]["stats"];
    assert_eq!(stats["responses"]["2xx"], 10, "{stats}");
    assert_eq!(stats["members"][0]["address"], a.addr().to_string());
    assert!(info["nodes"][0]["sampled_at"].as_i64().unwrap() > 0);
    assert_eq!(info["algorithm"], "least_connections");
}

/// A parsed sample: metric name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// Checks one sample line of the Prometheus text format: `name{l="v",...} value`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let mut key = String::new();
        loop {
            let (_, c) = chars.next().ok_or("unterminated labels")?;
            match c {
                '}' => break,
                ',' => continue,
                '=' => {
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return Err("label value must be quoted".into());
                    }
                    let mut value = String::new();
                    loop {
                        let (_, c) = chars.next().ok_or("unterminated label value")?;
                        match c {
                            '\\' => value.push(chars.next().ok_or("dangling escape")?.1),
                            '"' => break,
                            c => value.push(c),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                c => key.push(c),
            }
        }
        let consumed = chars.peek().map_or(after.len(), |(i, _)| *i);
        rest = &after[consumed..];
    }
    let value: f64 = rest
        .trim()
        .parse()
        .map_err(|_| format!("bad value in {line:?}"))?;
    Ok((name.to_string(), labels, value))
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let a = HttpBackend::start("a");
    let lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "prom"}}));
    lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "prom", "traffic_type": "http", "port": 8085,
        "backend": {"entities": [a.addr().to_string()], "health-check": {"criteria": {"interval": 1, "timeout": 1}}}}}));
    let info = lbd.wait_active("prom", "web");
    let addr = node_addr(&info, 8085);
    for _ in 0..5 {
        assert_eq!(http_get(addr, "/").unwrap().0, 200);
    }
    let url = format!("{}/metrics", lbd.url());
    assert_eq!(
        lbd.http.get(&url).send().unwrap().status(),
        401,
        "metrics need the token"
    );
    let text = wait_for(
        "a sample with the requests",
        Duration::from_secs(20),
        || {
            let resp = lbd.http.get(&url).bearer_auth(&lbd.token).send().unwrap();
            assert_eq!(resp.status(), 200);
            let text = resp.text().unwrap();
            text.lines()
                .filter_map(|l| parse_sample(l).ok())
                .any(|(name, _, v)| name == "lbaas_node_requests_total" && v >= 5.0)
                .then_some(text)
        },
    );
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.insert(parts.next().unwrap().to_string());
            assert!(
                ["gauge", "counter"].contains(&parts.next().unwrap()),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, _, _) = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(typed.contains(&name), "sample before its TYPE line: {line}");
    }
    let samples: Vec<_> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap())
        .collect();
    let instance = samples
        .iter()
        .find(|(n, _, _)| n == "lbaas_instance_info")
        .expect("an instance series");
    assert!(instance
        .1
        .contains(&("instance".to_string(), "web".to_string())));
    assert!(instance
        .1
        .contains(&("provisioning_status".to_string(), "ACTIVE".to_string())));
    let up = samples
        .iter()
        .find(|(n, _, _)| n == "lbaas_member_up")
        .expect("a member series");
    assert_eq!(up.2, 1.0);
    assert!(samples
        .iter()
        .any(|(n, l, _)| n == "lbaas_events_total"
            && l.contains(&("kind".into(), "node_ready".into()))));
}

#[test]
fn an_lbd_restart_does_not_interrupt_traffic_through_its_nodes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let a = HttpBackend::start("a");
    let mut lbd = Lbd::start();
    lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "live"}}));
    lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "live", "traffic_type": "http", "port": 8086,
        "backend": {"entities": [a.addr().to_string()]}}}));
    let info = lbd.wait_active("live", "web");
    let addr = node_addr(&info, 8086);
    let pid = info["nodes"][0]["pid"].as_u64();
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let client = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match http_get(addr, "/") {
                    Ok((200, _)) => drop(ok.fetch_add(1, Ordering::Relaxed)),
                    other => failed.lock().unwrap().push(format!("{other:?}")),
                }
            }
        })
    };
    // A guard so the client thread stops even if an assertion fails.
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop = Stop(stop.clone());
    wait_for("traffic flowing", Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    });
    lbd.restart();
    let after_restart = ok.load(Ordering::Relaxed);
    let info = lbd.wait_active("live", "web");
    wait_for("traffic after the restart", Duration::from_secs(10), || {
        (ok.load(Ordering::Relaxed) > after_restart + 50).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert_eq!(
        info["nodes"][0]["pid"].as_u64(),
        pid,
        "the node was adopted"
    );
    assert!(
        failed.lock().unwrap().is_empty(),
        "requests failed across the restart: {:?}",
        failed.lock().unwrap()
    );
}
