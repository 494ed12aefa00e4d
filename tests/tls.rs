//! TLS termination (`traffic_type: https`) against a real lbd, real lb-node
//! processes and real clients: certificates made here (rcgen, a throwaway
//! CA), `lbctl --cert/--key`, `curl --resolve`, `openssl s_client`, and a
//! rustls client for kept-alive connections and the rotation under load.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backends::HttpBackend;
use common::tls::{
    client_config, connect, curl, der_of, get, path, peer_leaf, s_client, subject_cn,
    tools_present, Leaf, Pki,
};
use common::{require, wait_for, Lbd};
use serde_json::{json, Value};

const PORT: u16 = 8443;
const REDIRECT: u16 = 8080;

/// An https instance `web` in project `demo` with certificates for
/// a.test and b.test (a first: the default) and the redirect port.
fn setup(pki: &Pki, backend: &HttpBackend) -> (Lbd, Leaf, Leaf, SocketAddr) {
    let a = pki.leaf("a", "a.test", 2099);
    let b = pki.leaf("b", "b.test", 2099);
    let lbd = Lbd::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let (port, redirect, be) = (
        PORT.to_string(),
        REDIRECT.to_string(),
        backend.addr().to_string(),
    );
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "https",
        "--port",
        &port,
        "--backend",
        &be,
        "--cert",
        path(&a.cert),
        "--key",
        path(&a.key),
        "--cert",
        path(&b.cert),
        "--key",
        path(&b.key),
        "--redirect-http-port",
        &redirect,
    ]);
    let info = lbd.wait_active("demo", "web");
    let node: std::net::IpAddr = info["nodes"][0]["address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (lbd, a, b, SocketAddr::new(node, PORT))
}

#[test]
fn sni_h2_versions_redirect_and_forwarded_headers() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let backend = HttpBackend::start("tls-backend");
    let (lbd, _a, _b, addr) = setup(&pki, &backend);
    let ca = path(&pki.ca_path);
    for name in ["a.test", "b.test"] {
        // curl checks the chain and the name against the CA.
        let resolve = format!("{name}:{PORT}:{}", addr.ip());
        let url = format!("https://{name}:{PORT}/hello");
        let out = curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-w",
            " %{http_code}",
            &url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.ends_with(" 200") && text.contains("tls-backend"),
            "{name}: {text} {out:?}"
        );
        let (ok, text) = s_client(addr, name, &["-CAfile", ca, "-verify_return_error"]);
        assert!(ok, "{text}");
        assert_eq!(
            subject_cn(&text).as_deref(),
            Some(format!("CN={name}").as_str()),
            "{text}"
        );
    }
    // No SNI match: the first certificate.
    let (_, text) = s_client(addr, "other.test", &[]);
    assert_eq!(subject_cn(&text).as_deref(), Some("CN=a.test"), "{text}");
    let seen = backend.seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"), "{seen:?}");
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(PORT.to_string().as_str())
    );

    // ALPN h2, served as HTTP/1.1 to the backend.
    let resolve = format!("a.test:{PORT}:{}", addr.ip());
    let url = format!("https://a.test:{PORT}/h2");
    let http_version = |flag: &str| {
        curl(&[
            flag,
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_version}",
            &url,
        ])
    };
    let out = http_version("--http2");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "{out:?}");
    let out = http_version("--http1.1");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1.1", "{out:?}");

    // TLS 1.1 refused by the server (SECLEVEL=0 so openssl offers it at all); 1.2 taken.
    let (ok, text) = s_client(
        addr,
        "a.test",
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
    );
    assert!(
        !ok && text.contains("no peer certificate available"),
        "{text}"
    );
    let (ok, text) = s_client(addr, "a.test", &["-tls1_2"]);
    assert!(ok && text.contains("TLSv1.2"), "{text}");

    // The plain port: 308 to the https URL, path and query kept.
    let plain = format!("http://{}:{REDIRECT}/x/y?z=1", addr.ip());
    let out = curl(&[
        "-H",
        "Host: a.test",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &plain,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("308 https://a.test:{PORT}/x/y?z=1"),
        "{out:?}"
    );

    // min_version 1.3: TLS 1.2 refused now, 1.3 taken.
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--min-tls-version",
        "1.3",
    ]);
    let (ok, text) = s_client(addr, "a.test", &["-tls1_2"]);
    assert!(!ok, "{text}");
    let (ok, text) = s_client(addr, "a.test", &["-tls1_3"]);
    assert!(ok && text.contains("TLSv1.3"), "{text}");
}

#[test]
fn a_tls_client_over_max_connections_gets_a_503_it_can_read() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let backend = HttpBackend::start("tls-backend");
    let (lbd, _a, _b, addr) = setup(&pki, &backend);
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--max-connections",
        "1",
    ]);
    lbd.wait_active("demo", "web");
    // The one admitted connection, kept open.
    let config = client_config(&pki);
    let mut kept = connect(&config, addr, "a.test").unwrap();
    assert_eq!(get(&mut kept, "a.test").unwrap().0, 200);
    let resolve = format!("a.test:{PORT}:{}", addr.ip());
    let url = format!("https://a.test:{PORT}/over");
    let ca = path(&pki.ca_path);
    for version in ["--http1.1", "--http2"] {
        let out = curl(&[
            version,
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-i",
            "-w",
            " %{http_code}",
            &url,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(
            text.ends_with(" 503") && text.contains("retry-after: 1"),
            "{version}: {text} {out:?}"
        );
        assert!(text.contains("too many connections"), "{text}");
    }
    // The kept connection was not disturbed, and once it goes the next
    // client is admitted.
    assert_eq!(get(&mut kept, "a.test").unwrap().0, 200);
    drop(kept);
    wait_for("a client admitted again", Duration::from_secs(10), || {
        let out = curl(&[
            "--cacert",
            ca,
            "--resolve",
            &resolve,
            "-w",
            " %{http_code}",
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout)
            .ends_with(" 200")
            .then_some(())
    });
}

#[test]
fn a_rotation_under_load_fails_no_request_and_keeps_open_connections() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let backend = HttpBackend::start("tls-backend");
    let (lbd, a, b, addr) = setup(&pki, &backend);
    let config = client_config(&pki);
    let mut kept = connect(&config, addr, "a.test").unwrap();
    assert_eq!(get(&mut kept, "a.test").unwrap().0, 200);
    assert_eq!(peer_leaf(&kept), der_of(&a.cert_pem));

    // New handshakes in a loop, each with one request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Four clients, each a new handshake and one request at a time.
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed, config) =
                (stop.clone(), ok.clone(), failed.clone(), config.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r =
                        connect(&config, addr, "a.test").and_then(|mut t| get(&mut t, "a.test"));
                    match r {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            eprintln!("failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            })
        })
        .collect();
    wait_for("load running", Duration::from_secs(10), || {
        (ok.load(Ordering::SeqCst) > 5).then_some(())
    });
    let a2 = pki.leaf("a2", "a.test", 2098);
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--cert",
        path(&a2.cert),
        "--key",
        path(&a2.key),
        "--cert",
        path(&b.cert),
        "--key",
        path(&b.key),
    ]);
    let new_leaf = der_of(&a2.cert_pem);
    wait_for(
        "the new certificate served",
        Duration::from_secs(20),
        || {
            let t = connect(&config, addr, "a.test").ok()?;
            (peer_leaf(&t) == new_leaf).then_some(())
        },
    );
    let after_rotation = ok.load(Ordering::SeqCst);
    wait_for("load after the rotation", Duration::from_secs(10), || {
        (ok.load(Ordering::SeqCst) > after_rotation + 100).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    for l in load {
        l.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("rotation under load: {ok} handshakes+requests ok, {failed} failed");
    assert_eq!(failed, 0, "ok: {ok}");
    // The connection opened before still serves, with its certificate.
    assert_eq!(get(&mut kept, "a.test").unwrap().0, 200);
    assert_eq!(peer_leaf(&kept), der_of(&a.cert_pem));
}

fn update_code(lbd: &Lbd, tls: Value) -> String {
    let (status, v) = lbd.api(&json!({"action": "update", "type": "instance",
        "info": {"project": "demo", "name": "web", "tls": tls}}));
    assert_eq!(status, 422, "{v}");
    v["error"]["code"].as_str().unwrap().to_string()
}

/// Every file under `dir` that others may read.
fn world_readable(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(world_readable(&p));
        } else if meta.is_file() && meta.mode() & 0o004 != 0 {
            out.push(p);
        }
    }
    out
}

#[test]
fn bad_certificates_are_refused_and_keys_stay_private() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let backend = HttpBackend::start("tls-backend");
    let (lbd, a, b, _) = setup(&pki, &backend);
    let before = lbd.desired_instance("demo", "web");
    let expired = pki.leaf("old", "old.test", 2001);
    let pair =
        |c: &Leaf, k: &Leaf| json!({"certificates": [{"cert": c.cert_pem, "key": k.key_pem}]});
    assert_eq!(update_code(&lbd, pair(&a, &b)), "certificate_key_mismatch");
    assert_eq!(
        update_code(&lbd, pair(&expired, &expired)),
        "certificate_expired"
    );
    assert_eq!(
        update_code(
            &lbd,
            json!({"certificates": [{"cert": "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", "key": a.key_pem}]})
        ),
        "invalid_pem"
    );
    assert_eq!(
        update_code(
            &lbd,
            json!({"certificates": [{"cert": a.cert_pem, "key": "garbage"}]})
        ),
        "invalid_pem"
    );
    assert_eq!(
        update_code(&lbd, json!({"min_version": "1.1"})),
        "invalid_tls_version"
    );
    assert_eq!(
        update_code(
            &lbd,
            json!({"certificates": [{"fingerprint": "00".repeat(32)}]})
        ),
        "unknown_certificate"
    );
    let (status, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "project": "demo", "name": "bare", "traffic_type": "https", "backend": {"entities": [backend.addr().to_string()]}}}));
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (422, Some("missing_tls")),
        "{v}"
    );
    // lbctl refuses an unpaired --cert before sending anything.
    let out = lbd.lbctl(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--cert",
        path(&a.cert),
    ]);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(
        lbd.desired_instance("demo", "web"),
        before,
        "a refused update changed the store"
    );
    let after = lbd.instance("demo", "web");
    let (_, list) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "demo"}}));
    assert_eq!(list["info"].as_array().map(Vec::len), Some(1), "{list}");

    // info shows each certificate's facts, never a key.
    let certs = after["tls"]["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1]["sans"], json!(["b.test"]));
    assert_eq!(certs[0]["subject"], "CN=a.test");
    assert_eq!(certs[0]["fingerprint"].as_str().unwrap().len(), 64);
    assert!(certs[0]["not_after"].as_i64().unwrap() > 4_000_000_000);
    let answers = [
        after.to_string(),
        lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "demo"}}))
            .1
            .to_string(),
        list.to_string(),
        lbd.lbctl_ok(&["-o", "json", "instance", "info", "web", "--project", "demo"]),
        lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]),
        lbd.lbctl_ok(&[
            "instance",
            "cert",
            "list",
            "--instance",
            "web",
            "--project",
            "demo",
        ]),
    ];
    for key in [&a, &b] {
        let marker = key.key_marker();
        for answer in &answers {
            assert!(
                !answer.contains(&marker) && !answer.contains("PRIVATE KEY"),
                "{answer}"
            );
        }
        for file in world_readable(&lbd.state.0) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                !text.contains(&marker),
                "a key in world-readable {}",
                file.display()
            );
        }
    }
    // The keys are in 0600 files of their own.
    let dir = lbd.state.0.join("tls-keys");
    let keys: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    for k in keys {
        assert_eq!(k.metadata().unwrap().mode() & 0o777, 0o600);
    }
    assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
}

#[test]
fn lbctl_cert_add_remove_list_and_self_signed() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let backend = HttpBackend::start("tls-backend");
    let (lbd, _a, _b, addr) = setup(&pki, &backend);
    let target = ["--instance", "web", "--project", "demo"];
    let run = |args: &[&str]| {
        let mut all = vec!["instance", "cert"];
        all.extend_from_slice(args);
        all.extend_from_slice(&target);
        lbd.lbctl_ok(&all)
    };
    run(&["add", "--self-signed"]);
    let list = run(&["list"]);
    assert!(list.contains("web.demo.lbaas.internal"), "{list}");
    assert_eq!(list.lines().count(), 4, "{list}");
    let (_, text) = s_client(addr, "web.demo.lbaas.internal", &[]);
    assert_eq!(
        subject_cn(&text).as_deref(),
        Some("CN=web.demo.lbaas.internal"),
        "{text}"
    );
    run(&["remove", "b.test"]);
    let list = run(&["list"]);
    assert!(
        !list.contains("b.test") && list.contains("a.test"),
        "{list}"
    );
    // b.test now gets the default certificate.
    let (_, text) = s_client(addr, "b.test", &[]);
    assert_eq!(subject_cn(&text).as_deref(), Some("CN=a.test"), "{text}");
    // A certificate that expires within 14 days is warned about.
    let in_3_days = std::time::SystemTime::now() + Duration::from_secs(3 * 86_400 + 3600);
    let soon = pki.leaf_until("soon", "soon.test", in_3_days);
    run(&["add", "--cert", path(&soon.cert), "--key", path(&soon.key)]);
    let info = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(
        info.lines().any(|l| l.starts_with("warning:")
            && l.contains("soon.test")
            && l.contains("expires in 3 days")),
        "{info}"
    );
    let metrics = lbd
        .http
        .get(format!("{}/metrics", lbd.url()))
        .bearer_auth(&lbd.token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lbaas_certificate_expiry_seconds{")
                && l.contains("instance=\"web\"")),
        "{metrics}"
    );
}

/// A netns project `name` on the `nth` /24 of the slot's pool: its
/// namespace and gateway address.
fn netns_project(lbd: &Lbd, name: &str, nth: usize) -> (String, std::net::Ipv4Addr) {
    let pool: ipnet::Ipv4Net = lbd.slot.netns_pool().parse().unwrap();
    let subnet = pool.subnets(24).unwrap().nth(nth).unwrap();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project",
        "info": {"name": name, "subnet": subnet.to_string()}}));
    assert_eq!(s, 200, "{v}");
    let ns = format!("{}-{}", lbd.slot.netns_prefix(), v["info"]["id"]);
    wait_for("project ACTIVE", Duration::from_secs(20), || {
        let (_, v) = lbd.api(&json!({"action": "info", "type": "project", "info": {"name": name}}));
        (v["info"]["provisioning_status"] == "ACTIVE").then_some(())
    });
    (ns, subnet.hosts().next().unwrap())
}

/// Under `--network netns` the keys travel only on the node admin channel:
/// another tenant's namespace cannot reach the node's admin API at all, the
/// host needs the node's secret, and the node serves TLS from its namespace.
#[test]
fn under_netns_the_admin_channel_is_out_of_other_tenants_reach() {
    if !tools_present() || !require("root (for the netns driver)", common::is_root()) {
        return;
    }
    let pki = Pki::new();
    let a = pki.leaf("a", "a.test", 2099);
    let lbd = Lbd::start_with(&["--network", "netns"]);
    let (_, gw_a) = netns_project(&lbd, "alpha", 7);
    let (ns_b, gw_b) = netns_project(&lbd, "beta", 8);
    let backend = HttpBackend::start_on(SocketAddr::new(gw_a.into(), 0), "alpha-backend");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "alpha", "traffic_type": "https", "port": PORT,
        "backend": {"entities": [backend.addr().to_string()]},
        "tls": {"certificates": [{"cert": a.cert_pem, "key": a.key_pem}]}}}));
    assert_eq!(s, 200, "{v}");
    let other = HttpBackend::start_on(SocketAddr::new(gw_b.into(), 0), "beta-backend");
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "web", "project": "beta", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [other.addr().to_string()]}}}));
    assert_eq!(s, 200, "{v}");
    let node = lbd.wait_active("alpha", "web")["nodes"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    lbd.wait_active("beta", "web");

    // From the host, through the namespace: TLS with the right certificate.
    let resolve = format!("a.test:{PORT}:{node}");
    let url = format!("https://a.test:{PORT}/");
    let out = curl(&["--cacert", path(&pki.ca_path), "--resolve", &resolve, &url]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "alpha-backend",
        "{out:?}"
    );
    // The admin API wants the node's own secret, even from the host.
    let admin = format!("http://{node}:9901/status");
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &admin]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "{out:?}");
    // Another tenant's namespace has no route to it at all.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns_b,
            "curl",
            "-sS",
            "--max-time",
            "3",
            &admin,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "beta's namespace reached alpha's node: {out:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unreachable")
            || err.contains("Couldn't connect")
            || err.contains("timed out"),
        "{err}"
    );
}
