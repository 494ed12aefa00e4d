//! Host-name backends against a real lbd and real lb-node processes: the
//! nodes resolve `localhost:PORT` (the system's resolver, which answers
//! localhost itself) and names of a test DNS server (lbd's own zone code,
//! hickory-server, on 127.0.0.1, given to lbd as `--resolver`), follow a
//! name from one address to two and back under load without a failed
//! request, and show a name that does not resolve as down with the reason.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backends::HttpBackend;
use common::{wait_for, Lbd};
use lbaas::dns::{DnsDriver, EmbeddedDns};
use serde_json::{json, Value};

/// The test zone and the TTL of its records.
const ZONE: &str = "names.test";
const TTL_S: u32 = 1;

/// An authoritative DNS server for [`ZONE`] on 127.0.0.1 (UDP and TCP on one
/// port), on its own runtime; stopped on drop.
struct TestDns {
    zone: Arc<EmbeddedDns>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    addr: SocketAddr,
}

impl TestDns {
    fn start() -> TestDns {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let zone = Arc::new(EmbeddedDns::new(ZONE, TTL_S).unwrap());
        let (udp, tcp) = runtime.block_on(async {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let port = udp.local_addr().unwrap().port();
            let tcp = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            (udp, tcp)
        });
        let addr = udp.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = zone.clone();
        runtime.spawn(async move {
            let _ = serving
                .serve(udp, tcp, async {
                    let _ = stopped.await;
                })
                .await;
        });
        TestDns {
            zone,
            runtime: Some(runtime),
            stop: Some(stop),
            addr,
        }
    }

    /// Makes `label.ZONE` answer exactly `addrs`.
    fn set(&self, label: &str, addrs: &[Ipv4Addr]) {
        let runtime = self.runtime.as_ref().unwrap();
        runtime
            .block_on(self.zone.set_a_records(label, addrs))
            .unwrap();
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

/// Project `demo` and an http instance on port 8080 with `entities` (health
/// checks every second); returns its node's listener.
fn instance(lbd: &Lbd, name: &str, entities: Value) -> SocketAddr {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert!(s == 200 || v.to_string().contains("exists"), "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": name, "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": entities, "health-check": {"criteria": {"interval": 1, "timeout": 1}}}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", name);
    format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap()
}

/// The `stats.names` entry of `name` in the instance's first node, once sampled.
fn name_status(lbd: &Lbd, instance: &str, name: &str) -> Option<Value> {
    let info = lbd.instance("demo", instance);
    info["nodes"][0]["stats"]["names"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
}

/// Requests on one kept-alive connection until `stop`: every answer that
/// is not a 200, and every broken connection, is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(node: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut errors = Vec::new();
            let mut conn = None;
            // Bounded: at most 200,000 requests or until told to stop.
            for _ in 0..200_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let c = conn.get_or_insert_with(|| keep_alive(node));
                match get(c) {
                    Ok(200) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(status) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("status {status}"));
                    }
                    Err(e) => {
                        f.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("connection: {e}"));
                        conn = None;
                    }
                }
            }
            errors
        });
        Load {
            stop,
            ok,
            failed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.thread.take().unwrap().join().unwrap();
        assert_eq!(self.failed.load(Ordering::SeqCst), errors.len() as u64);
        (self.ok.load(Ordering::SeqCst), errors)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn keep_alive(node: SocketAddr) -> BufReader<TcpStream> {
    let conn = TcpStream::connect(node).expect("connect to lb-node");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    BufReader::new(conn)
}

/// One GET on a kept-alive connection; the status once the body is read.
fn get(conn: &mut BufReader<TcpStream>) -> std::io::Result<u16> {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line: {line:?}")))?;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h)? == 0 {
            return Err(std::io::Error::other("closed in the head"));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body)?;
    Ok(status)
}

/// Two HTTP backends on one port at two addresses of the slot's range
/// (outside the project subnets lbd hands out first).
fn two_backends(lbd: &Lbd) -> (HttpBackend, HttpBackend, Ipv4Addr, Ipv4Addr) {
    let ip1 = Ipv4Addr::new(127, 100 + lbd.slot.index as u8, 250, 1);
    let ip2 = Ipv4Addr::new(127, 100 + lbd.slot.index as u8, 250, 2);
    let a = HttpBackend::start_on(SocketAddr::new(ip1.into(), 0), "alpha");
    let b = HttpBackend::start_on(SocketAddr::new(ip2.into(), a.addr().port()), "bravo");
    (a, b, ip1, ip2)
}

#[test]
fn a_name_that_changes_is_followed_under_load_without_a_failed_request() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let (alpha, bravo, ip1, ip2) = two_backends(&lbd);
    let port = alpha.addr().port();
    let name = format!("app.{ZONE}:{port}");
    dns.set("app", &[ip1]);
    let node = instance(&lbd, "web", json!([name]));
    let info = lbd.instance("demo", "web");
    assert_eq!(
        info["backend"]["names"],
        json!([{"address": name, "weight": 1}]),
        "{info}"
    );
    assert_eq!(info["backend"]["entities"], json!([]), "{info}");

    let load = Load::start(node);
    wait_for("traffic to alpha", Duration::from_secs(10), || {
        (alpha.hits() >= 20).then_some(())
    });
    assert_eq!(bravo.hits(), 0, "bravo is not in the name yet");

    // One address to two: followed within TTL + 1 s.
    dns.set("app", &[ip1, ip2]);
    let changed = Instant::now();
    wait_for("traffic to bravo", Duration::from_secs(10), || {
        (bravo.hits() > 0).then_some(())
    });
    let followed = changed.elapsed();
    assert!(
        followed <= Duration::from_secs(u64::from(TTL_S) + 1),
        "the second address took {followed:?}"
    );
    let both = wait_for("info shows both members", Duration::from_secs(10), || {
        let n = name_status(&lbd, "web", &name)?;
        (n["addresses"].as_array()?.len() == 2).then_some(n)
    });
    assert_eq!(both["state"], "up", "{both}");

    // And back to one: alpha leaves, and no request fails on the way.
    dns.set("app", &[ip2]);
    wait_for("info shows bravo alone", Duration::from_secs(10), || {
        let n = name_status(&lbd, "web", &name)?;
        (n["addresses"] == json!([format!("{ip2}:{port}")])).then_some(())
    });
    let alpha_before = alpha.hits();
    let bravo_before = bravo.hits();
    wait_for("more traffic to bravo", Duration::from_secs(10), || {
        (bravo.hits() >= bravo_before + 20).then_some(())
    });
    assert_eq!(alpha.hits(), alpha_before, "alpha left the name");
    let (ok, errors) = load.finish();
    eprintln!(
        "second address followed in {followed:?}; {ok} requests, {} failed",
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "{} failed of {}: {errors:?}",
        errors.len(),
        ok + errors.len() as u64
    );
    assert!(ok >= 60, "{ok} requests");
}

#[test]
fn a_name_that_does_not_resolve_is_down_with_the_reason_not_an_error() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let alpha = HttpBackend::start("alpha");
    let missing = format!("missing.{ZONE}:{}", alpha.addr().port());
    // Accepted: DNS may simply be late.
    let node = instance(&lbd, "web", json!([alpha.addr().to_string(), missing]));
    let down = wait_for("the name's status", Duration::from_secs(15), || {
        name_status(&lbd, "web", &missing)
    });
    assert_eq!(down["state"], "down", "{down}");
    assert_eq!(down["addresses"], json!([]), "{down}");
    let reason = down["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("missing.{ZONE} does not resolve")),
        "{down}"
    );
    // The address member serves meanwhile; the node is degraded.
    assert_eq!(common::l7::get(node, "/", &[]).body, "alpha");
    wait_for("the node DEGRADED", Duration::from_secs(15), || {
        (lbd.instance("demo", "web")["nodes"][0]["operating_status"] == "DEGRADED").then_some(())
    });
    // Once the name appears, it is followed.
    let ip = Ipv4Addr::new(127, 0, 0, 1);
    dns.set("missing", &[ip]);
    let up = wait_for("the name resolved", Duration::from_secs(15), || {
        let n = name_status(&lbd, "web", &missing)?;
        (n["state"] == "up").then_some(n)
    });
    assert_eq!(up["addresses"], json!([alpha.addr().to_string()]), "{up}");
    assert!(up.get("error").is_none(), "{up}");
}

#[test]
fn localhost_port_works() {
    // No --resolver: the system's resolver, which answers localhost
    // itself (RFC 6761) and never asks a server.
    let lbd = Lbd::start();
    let alpha = HttpBackend::start("alpha");
    let port = alpha.addr().port();
    // localhost may also be ::1: serve there too when this host has it.
    let has_v6 = std::net::TcpListener::bind(("::1", port)).is_ok();
    let v6 = has_v6.then(|| {
        HttpBackend::start_on(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], port)), "alpha")
    });
    let name = format!("localhost:{port}");
    // Through lbctl, as a person would: `--backend` takes the name as it is.
    lbd.lbctl_ok(&["project", "create", "demo"]);
    lbd.lbctl_ok(&[
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
        &name,
        "--interval",
        "1",
        "--check-timeout",
        "1",
    ]);
    let info = lbd.wait_active("demo", "web");
    assert_eq!(
        info["backend"]["names"],
        json!([{"address": name, "weight": 1}]),
        "{info}"
    );
    let node: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    let shown = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(shown.contains(&name), "{shown}");
    for _ in 0..10 {
        let reply = common::l7::get(node, "/", &[]);
        assert_eq!((reply.status, reply.body.as_str()), (200, "alpha"));
    }
    let status = wait_for("the name's status", Duration::from_secs(15), || {
        name_status(&lbd, "web", &name)
    });
    assert_eq!(status["state"], "up", "{status}");
    let addresses = status["addresses"].as_array().unwrap();
    eprintln!("localhost resolved to {addresses:?} (::1 served: {has_v6})");
    assert!(
        addresses.contains(&json!(format!("127.0.0.1:{port}"))),
        "{status}"
    );
    drop(v6);
}

#[test]
fn a_name_that_points_into_the_control_plane_is_not_used() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let alpha = HttpBackend::start("alpha");
    // lbd refuses its own API as an IP entity; as a name's answer, the node does.
    let api = format!("api.{ZONE}:{}", lbd.api.port());
    dns.set("api", &[Ipv4Addr::LOCALHOST]);
    let node = instance(&lbd, "web", json!([alpha.addr().to_string(), api]));
    let refused = wait_for("the name's status", Duration::from_secs(15), || {
        name_status(&lbd, "web", &api)
    });
    assert_eq!(refused["state"], "down", "{refused}");
    assert_eq!(refused["addresses"], json!([]), "{refused}");
    let error = refused["error"].as_str().unwrap_or_default();
    assert!(error.contains("lbd's own listener"), "{refused}");
    for _ in 0..5 {
        assert_eq!(common::l7::get(node, "/", &[]).body, "alpha");
    }
}

#[test]
fn a_tcp_instance_takes_a_name_too() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let echo = common::backends::EchoBackend::start();
    dns.set("echo", &[Ipv4Addr::LOCALHOST]);
    let name = format!("echo.{ZONE}:{}", echo.addr().port());
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "db", "project": "demo", "traffic_type": "tcp", "port": 9500,
        "backend": {"entities": [name]}}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "db");
    let node: SocketAddr = format!("{}:9500", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    let mut conn = TcpStream::connect(node).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
}

#[test]
fn a_named_pool_takes_a_name_and_follows_it() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let (alpha, bravo, ip1, ip2) = two_backends(&lbd);
    let name = format!("api.{ZONE}:{}", alpha.addr().port());
    dns.set("api", &[ip2]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [alpha.addr().to_string()]},
        "pools": {"api": {"entities": [name],
            "health-check": {"criteria": {"interval": 1, "timeout": 1}}}},
        "rules": [{"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]}}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "web");
    // `info` shows the pool as it was written, so it can be sent again.
    assert_eq!(info["pools"]["api"]["entities"], json!([name]), "{info}");
    let node: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    assert_eq!(common::l7::get(node, "/api/x", &[]).body, "bravo");
    assert_eq!(common::l7::get(node, "/", &[]).body, "alpha");
    let status = wait_for("the pool's name resolved", Duration::from_secs(15), || {
        name_status(&lbd, "web", &name)
    });
    assert_eq!(
        status["addresses"],
        json!([SocketAddr::new(ip2.into(), alpha.addr().port()).to_string()])
    );

    // The pool follows its name: now alpha's address.
    dns.set("api", &[ip1]);
    wait_for(
        "the pool on the new address",
        Duration::from_secs(10),
        || (common::l7::get(node, "/api/x", &[]).body == "alpha").then_some(()),
    );
    drop(bravo);
}

#[test]
fn a_name_that_points_into_the_instances_own_subnet_is_a_loop() {
    let dns = TestDns::start();
    let lbd = Lbd::start_with(&["--resolver", &dns.addr.to_string()]);
    let alpha = HttpBackend::start("alpha");
    let name = format!("loop.{ZONE}:8080");
    dns.set("loop", &[Ipv4Addr::new(127, 0, 0, 1)]);
    let node = instance(&lbd, "web", json!([alpha.addr().to_string(), name]));
    // Another address of the project subnet on the listener port: a
    // replacement or scale-out node could get it.
    let std::net::IpAddr::V4(own) = node.ip() else {
        panic!("{node}")
    };
    let [a, b, c, _] = own.octets();
    let sibling = Ipv4Addr::new(a, b, c, 200);
    dns.set("loop", &[sibling]);
    let refused = wait_for("the loop refused", Duration::from_secs(15), || {
        let n = name_status(&lbd, "web", &name)?;
        n["error"].as_str()?.contains("a loop").then_some(n)
    });
    assert_eq!(refused["state"], "down", "{refused}");
    assert_eq!(refused["addresses"], json!([]), "{refused}");
    for _ in 0..5 {
        assert_eq!(common::l7::get(node, "/", &[]).body, "alpha");
    }
}
