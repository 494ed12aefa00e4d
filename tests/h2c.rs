//! `backend_protocol: "h2c"`: members spoken to in HTTP/2 with prior
//! knowledge, whatever the client spoke. Real clients (curl over HTTP/1.1
//! and over h2c, a raw-socket HTTP/1.1 request) go through a real lb-node
//! (alone, and under lbd) to hyper's HTTP/2-only server, which cannot
//! answer HTTP/1.1 at all; active HTTP checks of an h2c pool speak h2c too.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::backends::HttpBackend;
use common::h2c::H2cBackend;
use common::node::{config_with, free_addr, wait_status, LbNode};
use common::{wait_for, Lbd};
use serde_json::{json, Value};

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A raw HTTP/1.1 request on its own connection; the whole answer.
fn raw_get(addr: SocketAddr, host: &str, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text
}

/// `n` concurrent GETs as streams of one h2c connection (the h2 crate's
/// client); their statuses.
fn h2_streams(addr: SocketAddr, n: usize) -> Vec<u16> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let mut responses = Vec::new();
        for i in 0..n {
            let req = http::Request::get(format!("http://{addr}/s/{i}"))
                .body(())
                .unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            responses.push(resp);
            client = client.ready().await.unwrap();
        }
        let mut statuses = Vec::new();
        for resp in responses {
            statuses.push(resp.await.unwrap().status().as_u16());
        }
        statuses
    })
}

/// The states `/status` shows of the default pool's members.
fn member_states(status: &Value) -> Vec<String> {
    status["stats"]["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["pool"].is_null())
        .map(|m| m["state"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn http1_and_h2c_clients_reach_an_h2c_pool_in_http2_over_few_connections() {
    let backend = H2cBackend::start("h2c-backend");
    let node = LbNode::start();
    let listen = free_addr();
    let mut config = config_with(
        1,
        "http",
        listen,
        &[backend.addr()],
        json!({"backend_protocol": "h2c"}),
    );
    // No check during the test: its connections would blur the count below.
    config["health_check"]["criteria"]["interval"] = json!(3600);
    let (s, v) = node.put_config(&config);
    assert_eq!(s, 200, "{v}");

    // A raw HTTP/1.1 client: its Host becomes the member's :authority.
    let answer = raw_get(listen, "web.demo", "/raw");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("h2c-backend"),
        "{answer}"
    );
    let raw = backend.seen().pop().expect("the backend saw the request");
    assert_eq!(raw.version, http::Version::HTTP_2);
    assert_eq!(raw.authority.as_deref(), Some("web.demo"));
    assert_eq!(raw.path, "/raw");
    assert!(raw.headers.get(http::header::HOST).is_none(), "{raw:?}");
    assert_eq!(raw.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(raw.headers["x-forwarded-host"], "web.demo");

    // curl: 20 requests on one kept-alive HTTP/1.1 connection, and one
    // over h2c (curl 7.88 cannot reuse a prior-knowledge connection: it
    // fails the same against hyper's server directly).
    let urls: Vec<String> = (0..20).map(|i| format!("http://{listen}/c/{i}")).collect();
    let mut args: Vec<&str> = vec!["-w", " %{http_version}\n"];
    args.extend(urls.iter().map(String::as_str));
    let http1 = curl(&args);
    assert_eq!(http1.matches("h2c-backend 1.1").count(), 20, "{http1}");
    let h2 = curl(&[
        "--http2-prior-knowledge",
        "-w",
        " %{http_version}",
        &urls[0],
    ]);
    assert_eq!(h2, "h2c-backend 2");
    // 19 concurrent streams of one h2c client connection.
    let statuses = h2_streams(listen, 19);
    assert_eq!(statuses, vec![200; 19]);

    let seen = backend.seen();
    assert_eq!(seen.len(), 41, "{seen:?}");
    assert!(seen.iter().all(|s| s.version == http::Version::HTTP_2));
    assert!(seen[1..]
        .iter()
        .all(|s| s.authority.as_deref() == Some(listen.to_string().as_str())));
    // The member connection is multiplexed and kept: one per node thread
    // at most, not one per request or per client connection.
    let connections = backend.connections();
    assert!(
        (1..=4).contains(&connections),
        "{connections} connections for 41 requests"
    );
}

#[test]
fn active_http_checks_of_an_h2c_pool_speak_h2c() {
    let backend = H2cBackend::start("h2c-checked");
    let node = LbNode::start();
    let listen = free_addr();
    let check = json!({"protocol": "HTTP", "port": 0, "request-path": "/healthz",
        "criteria": {"interval": 1, "timeout": 1, "health-threshold": 1, "unhealth-threshold": 1}});
    let with = |version: u64, protocol: &str| {
        config_with(
            version,
            "http",
            listen,
            &[backend.addr()],
            json!({"backend_protocol": protocol, "health_check": check}),
        )
    };
    let (s, v) = node.put_config(&with(1, "h2c"));
    assert_eq!(s, 200, "{v}");
    wait_for("two h2c health checks", Duration::from_secs(20), || {
        (backend.health_checks() >= 2).then_some(())
    });
    assert_eq!(member_states(&node.status()), ["up"]);

    // The same member checked in HTTP/1.1 fails its checks: the h2c check
    // above passed because it spoke HTTP/2, not because any answer would do.
    let (s, v) = node.put_config(&with(2, "http1"));
    assert_eq!(s, 200, "{v}");
    wait_status(&node, "the member down under HTTP/1.1 checks", |st| {
        member_states(st) == ["down"]
    });
}

#[test]
fn h2c_through_the_api_and_lbctl() {
    let backend = H2cBackend::start("h2c-api");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let be = backend.addr().to_string();
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
        &be,
        "--backend-protocol",
        "h2c",
    ]);
    let info = lbd.wait_active("demo", "web");
    assert_eq!(info["backend_protocol"], "h2c", "{info}");
    let node: std::net::IpAddr = info["nodes"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let answer = raw_get(SocketAddr::new(node, 8080), "web.demo", "/via-lbd");
    assert!(answer.ends_with("h2c-api"), "{answer}");
    assert_eq!(backend.seen()[0].version, http::Version::HTTP_2);
    let shown = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(
        shown
            .lines()
            .any(|l| l.contains("backend proto") && l.contains("h2c")),
        "{shown}"
    );

    // A named pool's own protocol wins over the instance's: an HTTP/1.1
    // member behind a rule of an h2c instance gets HTTP/1.1.
    let h1 = HttpBackend::start("h1-pool");
    let h1_addr = h1.addr().to_string();
    let target = ["--instance", "web", "--project", "demo"];
    let pool_add = [
        &["instance", "pool", "add", "old", "--backend", &h1_addr][..],
        &["--backend-protocol", "http1"],
        &target,
    ]
    .concat();
    lbd.lbctl_ok(&pool_add);
    let rule_add = [
        &[
            "instance",
            "rule",
            "add",
            "old",
            "--path-prefix",
            "/old/",
            "--to",
            "old",
        ][..],
        &target,
    ]
    .concat();
    lbd.lbctl_ok(&rule_add);
    let info = lbd.instance("demo", "web");
    assert_eq!(info["pools"]["old"]["backend_protocol"], "http1", "{info}");
    let front = SocketAddr::new(node, 8080);
    wait_for("the rule in force", Duration::from_secs(20), || {
        raw_get(front, "web.demo", "/old/page")
            .ends_with("h1-pool")
            .then_some(())
    });
    assert!(raw_get(front, "web.demo", "/new").ends_with("h2c-api"));
    let shown = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(shown.contains("h2c (old http1)"), "{shown}");

    // Refusals, each with its code, and the stored instance unchanged.
    let before = lbd.instance("demo", "web");
    let refused = |info: Value, action: &str| {
        let (status, body) = lbd.api(&json!({"action": action, "type": "instance", "info": info}));
        assert_eq!(status, 400, "{body}");
        body["error"]["code"].as_str().unwrap_or("").to_string()
    };
    let tcp = json!({"project": "demo", "name": "raw2", "traffic_type": "tcp", "port": 9001,
        "backend_protocol": "h2c", "backend": {"entities": [be]}});
    assert_eq!(refused(tcp, "create"), "invalid_field");
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "raw",
        "--project",
        "demo",
        "--type",
        "tcp",
        "--port",
        "9000",
        "--backend",
        &be,
    ]);
    let raw_h2c = json!({"project": "demo", "name": "raw", "backend_protocol": "h2c"});
    assert_eq!(refused(raw_h2c, "update"), "invalid_field");
    let h3 = json!({"project": "demo", "name": "web", "backend_protocol": "h3"});
    assert_eq!(refused(h3, "update"), "invalid_field");
    let after = lbd.instance("demo", "web");
    assert_eq!(after["backend_protocol"], before["backend_protocol"]);
    assert_eq!(after["traffic_type"], before["traffic_type"]);
    assert_eq!(lbd.instance("demo", "raw")["backend_protocol"], "http1");
    let (status, body) = lbd.api(&json!({"action": "info", "type": "instance",
        "info": {"project": "demo", "name": "raw2"}}));
    assert_eq!(status, 404, "{body}");
}

#[test]
fn h2_over_tls_reaches_an_h2c_pool_as_http2() {
    use common::tls::{path, Pki};
    if !common::tls::tools_present() {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("web", "web.test", 2099);
    let backend = H2cBackend::start("h2c-tls");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let be = backend.addr().to_string();
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "https",
        "--port",
        "8443",
        "--backend",
        &be,
        "--cert",
        path(&leaf.cert),
        "--key",
        path(&leaf.key),
        "--backend-protocol",
        "h2c",
    ]);
    let info = lbd.wait_active("demo", "web");
    let node = info["nodes"][0]["address"].as_str().unwrap();
    let resolve = format!("web.test:8443:{node}");
    let answer = curl(&[
        "--http2",
        "--cacert",
        path(&pki.ca_path),
        "--resolve",
        &resolve,
        "-w",
        " %{http_version}",
        "https://web.test:8443/secure",
    ]);
    assert_eq!(answer, "h2c-tls 2");
    let seen = backend.seen().pop().expect("the backend saw it");
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.authority.as_deref(), Some("web.test:8443"));
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-port"], "8443");
}

#[test]
fn smtp_messages_reach_an_h2c_pool_as_http2_posts() {
    use common::smtp::{failure, send, smtp_instance, MESSAGE};
    if !common::smtp::python() {
        return;
    }
    let backend = H2cBackend::start("h2c-mail");
    let lbd = Lbd::start();
    let addr = smtp_instance(
        &lbd,
        "mail",
        backend.addr(),
        json!({"backend_protocol": "h2c"}),
    );
    let report = send(addr, MESSAGE, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&report), (String::new(), 0), "{report}");
    let seen = backend.seen().pop().expect("the message was posted");
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.path, "/messages");
    assert_eq!(seen.headers["x-smtp-mail-from"], "ann@sender.test");
    assert_eq!(seen.headers["x-smtp-rcpt-to"], "bob@rcpt.test");
    assert_eq!(&seen.body[..], MESSAGE, "the exact bytes");
}
