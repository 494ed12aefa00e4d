//! `backend_tls`: nodes speak TLS to the members (re-encryption). A real
//! HTTPS-only backend (rustls, a test CA's leaf for app.test) behind a real
//! lbd and lb-node: a request gets through only over TLS, checked against
//! the CA and the name; a wrong CA is a 502 unless `verify` is off; health
//! checks go over TLS too; `"none"` goes back to plain TCP. Bad input is
//! refused with its code and the stored instance unchanged.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::{path, Pki};
use common::tls_backend::TlsBackend;
use common::{wait_for, Lbd};
use serde_json::{json, Value};

fn node_of(info: &Value, port: u16) -> SocketAddr {
    let ip = info["nodes"][0]["address"].as_str().unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

/// `update instance` through the API; its status and body.
fn update(lbd: &Lbd, info: Value) -> (u16, Value) {
    lbd.api(&json!({"action": "update", "type": "instance", "info": info}))
}

/// Waits until GET / on `node` answers `status`.
fn wait_answer(node: SocketAddr, status: u16) -> common::l7::Reply {
    wait_for(
        &format!("GET / answered {status}"),
        Duration::from_secs(20),
        || {
            let reply = common::l7::get(node, "/", &[]);
            (reply.status == status).then_some(reply)
        },
    )
}

#[test]
fn members_are_reached_over_tls_checked_against_the_ca_and_name() {
    let pki = Pki::new();
    let other = Pki::new();
    let leaf = pki.leaf("app", "app.test", 2099);
    let backend = TlsBackend::start("tls-app", &leaf);
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
        "--backend-ca",
        path(&pki.ca_path),
        "--backend-server-name",
        "app.test",
        "--interval",
        "1",
        "--check-timeout",
        "1",
    ]);
    let info = lbd.wait_active("demo", "web");
    let node = node_of(&info, 8080);
    let shown = &info["backend"]["backend_tls"];
    assert_eq!(shown["verify"], true, "{info}");
    assert_eq!(shown["server_name"], "app.test");
    assert!(shown["ca"].as_str().unwrap().contains("BEGIN CERTIFICATE"));

    let reply = common::l7::get(node, "/", &[]);
    assert_eq!((reply.status, reply.body.as_str()), (200, "tls-app"));
    assert!(backend.requests() >= 1);
    // Health checks reach the member over TLS as well (it speaks nothing else).
    wait_for(
        "two health checks over TLS",
        Duration::from_secs(20),
        || (backend.health_checks() >= 2).then_some(()),
    );

    // Another CA: the member's certificate is refused, the client gets a 502.
    let wrong_ca = std::fs::read_to_string(&other.ca_path).unwrap();
    let (s, v) = update(
        &lbd,
        json!({"project": "demo", "name": "web",
        "backend": {"backend_tls": {"ca": wrong_ca, "server_name": "app.test"}}}),
    );
    assert_eq!(s, 200, "{v}");
    let refused = wait_answer(node, 502);
    assert!(!refused.body.contains("tls-app"), "{}", refused.body);
    // The right CA but another name: refused too.
    let right_ca = std::fs::read_to_string(&pki.ca_path).unwrap();
    let (s, v) = update(
        &lbd,
        json!({"project": "demo", "name": "web",
        "backend": {"backend_tls": {"ca": right_ca, "server_name": "other.test"}}}),
    );
    assert_eq!(s, 200, "{v}");
    wait_for("the new name in force", Duration::from_secs(20), || {
        let i = lbd.instance("demo", "web");
        (i["backend"]["backend_tls"]["server_name"] == "other.test"
            && i["provisioning_status"] == "ACTIVE")
            .then_some(())
    });
    assert_eq!(common::l7::get(node, "/", &[]).status, 502);
    // verify off: any certificate, still encrypted.
    let (s, v) = update(
        &lbd,
        json!({"project": "demo", "name": "web",
        "backend": {"backend_tls": {"verify": false, "ca": wrong_ca}}}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(wait_answer(node, 200).body, "tls-app");
    // "none" (lbctl --no-backend-tls): plain TCP again, which this member refuses.
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--no-backend-tls",
    ]);
    assert!(lbd.instance("demo", "web")["backend"]
        .get("backend_tls")
        .is_none());
    wait_answer(node, 502);
}

#[test]
fn a_named_pool_takes_backend_tls_and_bad_input_is_refused() {
    let pki = Pki::new();
    let leaf = pki.leaf("app", "app.test", 2099);
    let backend = TlsBackend::start("tls-pool", &leaf);
    let plain = common::backends::HttpBackend::start("plain");
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let (be, pl) = (backend.addr().to_string(), plain.addr().to_string());
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
        &pl,
    ]);
    let target = ["--instance", "web", "--project", "demo"];
    let pool_add = [
        &["instance", "pool", "add", "secure", "--backend", &be][..],
        &[
            "--backend-ca",
            path(&pki.ca_path),
            "--backend-server-name",
            "app.test",
        ],
        &target,
    ]
    .concat();
    lbd.lbctl_ok(&pool_add);
    let rule_add = [
        &[
            "instance",
            "rule",
            "add",
            "secure",
            "--path-prefix",
            "/s/",
            "--to",
            "secure",
        ][..],
        &target,
    ]
    .concat();
    lbd.lbctl_ok(&rule_add);
    let info = lbd.wait_active("demo", "web");
    assert_eq!(
        info["pools"]["secure"]["backend_tls"]["server_name"], "app.test",
        "{info}"
    );
    let node = node_of(&info, 8080);
    assert_eq!(common::l7::get(node, "/s/x", &[]).body, "tls-pool");
    assert_eq!(common::l7::get(node, "/", &[]).body, "plain");

    let before = lbd.instance("demo", "web");
    let code = |(s, v): (u16, Value)| {
        assert!(s >= 400, "{v}");
        v["error"]["code"].as_str().unwrap_or("").to_string()
    };
    let bad_pem = json!({"project": "demo", "name": "web",
        "backend": {"backend_tls": {"ca": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"}}});
    assert_eq!(code(update(&lbd, bad_pem)), "invalid_pem");
    let h2c = json!({"project": "demo", "name": "web", "backend_protocol": "h2c",
        "backend": {"backend_tls": {"verify": false}}});
    assert_eq!(code(update(&lbd, h2c)), "invalid_field");
    let typo =
        json!({"project": "demo", "name": "web", "backend": {"backend_tls": {"verfy": false}}});
    assert_eq!(code(update(&lbd, typo)), "unknown_field");
    let tcp = json!({"project": "demo", "name": "raw", "traffic_type": "tcp", "port": 9000,
        "backend": {"entities": [pl], "backend_tls": {"verify": false}}});
    assert_eq!(
        code(lbd.api(&json!({"action": "create", "type": "instance", "info": tcp}))),
        "invalid_field"
    );
    let after = lbd.instance("demo", "web");
    assert_eq!(after["backend"], before["backend"]);
    assert_eq!(after["pools"], before["pools"]);
    assert_eq!(after["backend_protocol"], before["backend_protocol"]);
}
