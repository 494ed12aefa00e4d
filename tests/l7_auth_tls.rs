//! `https://` auth services (issue 15) against real processes: a throwaway
//! CA and server certificates made here (rcgen), the Python auth service
//! over TLS (`tests/fixtures/auth_service.py --tls-cert/--tls-key`), a real
//! lb-node and HTTP backends recording what they saw.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::Duration;

use common::auth_service::{header, request, AuthService};
use common::backends::HttpBackend;
use common::node::{config_with, free_addr, LbNode};
use common::{wait_for, TempDir};
use lbaas::model::policy::PolicySpec;
use lbaas::model::TrafficType;
use lbaas::password::Argon2Hasher;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{json, Value};

/// A CA and a server certificate it signed, as PEM files in a directory
/// removed on drop (the key written 0600).
struct Pki {
    dir: TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    /// A fresh CA, and a server certificate for `names` (IP addresses or
    /// DNS names) signed by it.
    fn new(tag: &str, names: &[&str]) -> Pki {
        let dir = TempDir::new(tag);
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "lbaas test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let pki = Pki {
            ca: dir.0.join("ca.pem"),
            cert: dir.0.join("server.pem"),
            key: dir.0.join("server.key"),
            dir,
        };
        write(&pki.ca, &ca.pem(), 0o644);
        write(&pki.cert, &server.pem(), 0o644);
        write(&pki.key, &server_key.serialize_pem(), 0o600);
        pki
    }

    fn ca_file(&self) -> &str {
        self.ca.to_str().unwrap()
    }
}

/// Written with its mode from the start: a key is never readable by others.
fn write(path: &std::path::Path, contents: &str, mode: u32) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .unwrap();
    f.write_all(contents.as_bytes()).unwrap();
}

/// An lb-node serving `listen` in front of `backend`.
struct Proxy {
    node: LbNode,
    listen: SocketAddr,
}

impl Proxy {
    fn start(node_args: &[&str], backend: &HttpBackend, policy: Value) -> Proxy {
        let proxy = Proxy {
            node: LbNode::start_with(node_args),
            listen: free_addr(),
        };
        proxy.configure(1, backend, policy);
        wait_for("the listener", Duration::from_secs(10), || {
            std::net::TcpStream::connect(proxy.listen).ok()
        });
        proxy
    }

    /// Pushes config `version` with `policy`, validated and hashed as lbd would.
    fn configure(&self, version: u64, backend: &HttpBackend, policy: Value) {
        let spec: PolicySpec = serde_json::from_value(policy).unwrap();
        let policy = spec
            .validate(TrafficType::Http, 80, &Argon2Hasher)
            .expect("a valid policy");
        let config = config_with(
            version,
            "http",
            self.listen,
            &[backend.addr()],
            json!({"policy": serde_json::to_value(&policy).unwrap()}),
        );
        let (status, answer) = self.node.put_config(&config);
        assert_eq!(status, 200, "{answer}");
    }

    fn get(&self, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
        request(self.listen, "GET", "/x", headers)
    }

    fn policy_stats(&self) -> Value {
        self.node.status()["stats"]["policy"].clone()
    }
}

/// Service auth at `url`; a deadline generous for debug builds (it covers
/// the TLS handshake too).
fn policy(url: &str, failure: &str) -> Value {
    json!({"auth": {"mode": "service", "url": url, "failure": failure, "timeout_ms": 3000}})
}

fn last_seen(backend: &HttpBackend) -> common::backends::Seen {
    backend
        .seen
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a request")
}

#[test]
fn a_trusted_https_auth_service_grants_and_refuses() {
    let pki = Pki::new("auth-tls-ok", &["127.0.0.1", "localhost"]);
    let Some(service) = AuthService::start_tls(&pki.cert, &pki.key) else {
        return;
    };
    assert!(service.url().starts_with("https://127.0.0.1:"));
    let backend = HttpBackend::start("app");
    let proxy = Proxy::start(
        &["--auth-ca-file", pki.ca_file()],
        &backend,
        policy(&service.url(), "deny"),
    );

    let (status, _, body) = proxy.get(&[("Authorization", "Bearer ok-1")]);
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(last_seen(&backend).header("x-auth-token"), Some("tok-ok-1"));
    assert_eq!(service.calls()["last"]["token"], "ok-1");

    let (status, headers, _) = proxy.get(&[]);
    assert_eq!(status, 401, "no credentials");
    assert_eq!(
        header(&headers, "www-authenticate"),
        Some("Bearer realm=\"test\"")
    );
    let (status, _, body) = proxy.get(&[("Authorization", "Bearer wrong")]);
    assert_eq!(status, 403);
    assert_eq!(body, "forbidden by the test auth service\n");
    assert_eq!(backend.hits(), 1, "a refused request reached the backend");

    // By host name as well: the certificate names "localhost" too.
    let by_name = service.url().replace("127.0.0.1", "localhost");
    proxy.configure(2, &backend, policy(&by_name, "deny"));
    let (status, _, _) = proxy.get(&[("Authorization", "Bearer ok-2")]);
    assert_eq!(status, 200);
    assert_eq!(last_seen(&backend).header("x-auth-token"), Some("tok-ok-2"));
    assert_eq!(service.total(), 4);
    let stats = proxy.policy_stats();
    assert_eq!(stats["auth_error"], 0, "{stats}");
}

/// A bad certificate fails the call before any query is sent: the service
/// counts nothing, the failure mode answers.
fn assert_refused_certificate(proxy: &Proxy, backend: &HttpBackend, service: &AuthService) {
    let (status, headers, body) = proxy.get(&[("Authorization", "Bearer ok-1")]);
    assert_eq!(status, 503, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert_eq!(backend.hits(), 0, "the backend saw a request");
    assert_eq!(service.total(), 0, "a query went to an untrusted server");
    let stats = proxy.policy_stats();
    assert_eq!(stats["auth_error"], 1, "{stats}");
}

#[test]
fn an_auth_service_certificate_from_an_untrusted_ca_is_a_failure() {
    let pki = Pki::new("auth-tls-untrusted", &["127.0.0.1"]);
    let Some(service) = AuthService::start_tls(&pki.cert, &pki.key) else {
        return;
    };
    let backend = HttpBackend::start("app");
    // Not given the CA: only the platform's roots, which do not have it.
    let proxy = Proxy::start(&[], &backend, policy(&service.url(), "deny"));
    assert_refused_certificate(&proxy, &backend, &service);

    // `failure: allow` passes, marked, without an auth token.
    proxy.configure(2, &backend, policy(&service.url(), "allow"));
    let (status, _, body) = proxy.get(&[("Authorization", "Bearer ok-1")]);
    assert_eq!((status, body.as_str()), (200, "app"));
    let seen = last_seen(&backend);
    assert_eq!(seen.header("x-auth-failure-mode-allowed"), Some("true"));
    assert_eq!(seen.header("x-auth-token"), None);
    assert_eq!(service.total(), 0);
}

#[test]
fn an_auth_service_certificate_for_another_host_is_a_failure() {
    let pki = Pki::new("auth-tls-wrong-name", &["auth.other.example"]);
    let Some(service) = AuthService::start_tls(&pki.cert, &pki.key) else {
        return;
    };
    let backend = HttpBackend::start("app");
    let log = pki.dir.0.join("node.log");
    // The CA is trusted; the certificate does not name 127.0.0.1.
    let proxy = Proxy::start(
        &[
            "--auth-ca-file",
            pki.ca_file(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        &backend,
        policy(&service.url(), "deny"),
    );
    assert_refused_certificate(&proxy, &backend, &service);
    // Logged as a TLS failure, without the client's token.
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = read();
        if text.contains("TLS handshake failed") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no TLS failure in the log: {text}"
        );
        std::thread::sleep(Duration::from_millis(25));
    };
    assert!(text.contains("certificate"), "{text}");
    assert!(!text.contains("ok-1"), "the token was logged: {text}");
}

/// A child process killed (by PID) and reaped on drop.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn lb_node_refuses_to_start_with_an_unusable_ca_file() {
    let dir = TempDir::new("auth-tls-bad-ca");
    let not_pem = dir.0.join("ca.pem");
    write(&not_pem, "not a certificate\n", 0o644);
    for path in [not_pem.clone(), dir.0.join("missing.pem")] {
        let mut child = Reaped(
            std::process::Command::new(env!("CARGO_BIN_EXE_lb-node"))
                .args(["--node-id", "7", "--admin-listen", "127.0.0.1:0"])
                .arg("--auth-ca-file")
                .arg(&path)
                .env("LB_NODE_SECRET", "s3cret-for-tests")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // It exits at once; a node that started anyway is killed by the guard.
        let status = wait_for("lb-node to exit", Duration::from_secs(20), || {
            child.0.try_wait().unwrap()
        });
        assert!(!status.success(), "started with {}", path.display());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("auth CA file"), "{stderr}");
    }
}
