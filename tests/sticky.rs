//! Sticky routing (issue 16, seed 002) through a real lbd, its real
//! lb-node and real backend processes (python): the signed cookie pins a
//! client to the backend that served it and fails over when that backend
//! is killed; a tampered cookie is ignored; the hash form pins by header;
//! a process-managed pool pins the same way; every bad `sticky` has its
//! own code and leaves the store unchanged; lbctl's flags set it.

mod common;

use std::collections::HashSet;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::l7::{get, Reply};
use common::managed::{alive, backends, http_instance, Reaper, Script};
use common::{ready_line, wait_for, Lbd, TempDir};
use serde_json::{json, Value};

/// A backend that answers every GET with its name (body and `X-Backend`)
/// and prints `listening` once bound.
const NAMED_PY: &str = r#"
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

NAME = sys.argv[3].encode()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("X-Backend", sys.argv[3])
        self.send_header("Content-Length", str(len(NAME)))
        self.end_headers()
        self.wfile.write(NAME)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("listening", flush=True)
server.serve_forever()
"#;

/// One python backend process, killed by its PID when dropped.
struct Backend {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Backend {
    fn start(name: &str) -> Backend {
        let dir = TempDir::new("sticky-backend");
        let script = dir.0.join("named.py");
        fs::write(&script, NAMED_PY).unwrap();
        // A free port: bind, read it, let go (the backend binds it next).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["127.0.0.1", &port.to_string(), name])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().unwrap();
        let mut backend = Backend {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _dir: dir,
        };
        if ready_line(stdout, Duration::from_secs(20)).is_none() {
            backend.kill();
            panic!("backend {name} did not start");
        }
        backend
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn create_project(lbd: &Lbd) {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
}

/// The `name=value` pair a response's `Set-Cookie` for `name` carries.
fn set_cookie(reply: &Reply, name: &str) -> Option<String> {
    reply
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .filter_map(|(_, v)| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")))
        .map(str::to_string)
}

fn ok(reply: Reply) -> Reply {
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

#[test]
fn the_cookie_pins_a_client_and_fails_over_when_its_backend_dies() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let mut pair = [Backend::start("a"), Backend::start("b")];
    let entities: Vec<String> = pair.iter().map(|b| b.addr.to_string()).collect();
    let node = http_instance(
        &lbd,
        "web",
        json!({"entities": entities, "sticky": {"cookie": "lbaas_sticky", "ttl": 600}}),
    );
    let first = ok(get(node, "/", &[]));
    let set = first
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.clone())
        .expect("the first response sets the cookie");
    assert!(
        set.ends_with("; Path=/; Max-Age=600; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    assert!(
        !set.contains("127.0.0.1"),
        "the cookie hides the address: {set}"
    );
    let cookie = set_cookie(&first, "lbaas_sticky").unwrap();
    let pinned = first.body.clone();
    for _ in 0..20 {
        let r = ok(get(node, "/", &[("Cookie", &cookie)]));
        assert_eq!(r.body, pinned, "a good cookie keeps its backend");
        assert!(
            set_cookie(&r, "lbaas_sticky").is_none(),
            "a fresh cookie is not set again"
        );
    }
    let without: HashSet<String> = (0..20).map(|_| ok(get(node, "/", &[])).body).collect();
    assert_eq!(
        without.len(),
        2,
        "without the cookie both backends serve: {without:?}"
    );

    // Tampered: one character of the value changed. Ignored, and replaced.
    let (name, value) = cookie.split_once('=').unwrap();
    let flipped = if value.starts_with('A') { 'B' } else { 'A' };
    let tampered = format!("{name}={flipped}{}", &value[1..]);
    let replaced: Vec<Reply> = (0..6)
        .map(|_| ok(get(node, "/", &[("Cookie", &tampered)])))
        .collect();
    assert!(replaced
        .iter()
        .all(|r| set_cookie(r, "lbaas_sticky").is_some()));
    let bodies: HashSet<&str> = replaced.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(
        bodies.len(),
        2,
        "a tampered cookie pins nothing: {bodies:?}"
    );

    // The pinned backend dies: the next request with its cookie is served
    // by the other, and the cookie now names that one.
    let dead = usize::from(pinned != "a");
    pair[dead].kill();
    let moved = ok(get(node, "/", &[("Cookie", &cookie)]));
    assert_ne!(moved.body, pinned);
    let renamed = set_cookie(&moved, "lbaas_sticky").expect("a cookie for the new backend");
    assert_ne!(renamed, cookie);
    for _ in 0..10 {
        let r = ok(get(node, "/", &[("Cookie", &renamed)]));
        assert_eq!(r.body, moved.body);
    }
}

#[test]
fn a_named_pools_cookie_is_good_on_every_node_and_after_an_lbd_restart() {
    let mut lbd = Lbd::start();
    create_project(&lbd);
    let pair = [Backend::start("a"), Backend::start("b")];
    let entities: Vec<String> = pair.iter().map(|b| b.addr.to_string()).collect();
    let info = json!({"name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "min_nodes": 2, "backend": {"entities": entities},
        "pools": {"api": {"entities": entities, "sticky": {"cookie": "api_pin"}}},
        "rules": [{"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}}]});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let nodes: Vec<SocketAddr> = wait_for("two running nodes", Duration::from_secs(60), || {
        let info = lbd.wait_active("demo", "web");
        let running: Vec<SocketAddr> = info["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "running")
            .filter_map(|n| format!("{}:8080", n["address"].as_str()?).parse().ok())
            .collect();
        (running.len() == 2).then_some(running)
    });
    assert_eq!(
        lbd.instance("demo", "web")["pools"]["api"]["sticky"],
        json!({"cookie": "api_pin", "ttl": 3600})
    );
    // The default pool is not sticky: no cookie there.
    assert!(set_cookie(&ok(get(nodes[0], "/", &[])), "api_pin").is_none());
    let first = ok(get(nodes[0], "/api/x", &[]));
    let cookie = set_cookie(&first, "api_pin").expect("the api pool sets its cookie");
    for node in &nodes {
        for _ in 0..5 {
            let r = ok(get(*node, "/api/x", &[("Cookie", &cookie)]));
            assert_eq!(
                r.body, first.body,
                "node {node} takes the other node's cookie"
            );
        }
    }
    // A restarted lbd derives the same key: after it pushes a new config
    // (a changed health check), the cookie still pins.
    lbd.restart();
    let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
        "project": "demo", "name": "web",
        "backend": {"health-check": {"criteria": {"interval": 2}}}}}));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("demo", "web");
    for node in &nodes {
        for _ in 0..5 {
            let r = ok(get(*node, "/api/x", &[("Cookie", &cookie)]));
            assert_eq!(r.body, first.body, "after the restart, on {node}");
        }
    }
}

#[test]
fn the_hash_form_pins_by_header() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let pair = [Backend::start("a"), Backend::start("b")];
    let entities: Vec<String> = pair.iter().map(|b| b.addr.to_string()).collect();
    let node = http_instance(
        &lbd,
        "web",
        json!({"entities": entities, "sticky": {"hash": "header:X-User"}}),
    );
    let mut seen = HashSet::new();
    for user in 0..20 {
        let user = format!("user-{user}");
        let first = ok(get(node, "/", &[("X-User", &user)])).body;
        for _ in 0..5 {
            let r = ok(get(node, "/", &[("X-User", &user)]));
            assert_eq!(r.body, first, "{user} keeps its backend");
            assert!(set_cookie(&r, "lbaas_sticky").is_none());
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "users spread over both backends");
}

#[test]
fn a_managed_pool_pins_its_started_backends() {
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let script = Script::write();
    create_project(&lbd);
    let managed = json!({"compute": "process", "process": {"command": script.command()},
                         "port": 8000, "min": 2, "max": 2});
    let node = http_instance(
        &lbd,
        "app",
        json!({"managed": managed, "sticky": {"cookie": "app_pin"}}),
    );
    wait_for("two ready backends", Duration::from_secs(60), || {
        let ready = backends(&lbd, "app")
            .iter()
            .filter(|b| b["state"] == "ready")
            .count();
        (ready == 2).then_some(())
    });
    // Both pushed to the node: requests without the cookie reach both.
    wait_for("both backends serving", Duration::from_secs(30), || {
        let bodies: HashSet<String> = (0..6)
            .map(|_| get(node, "/", &[]))
            .filter(|r| r.status == 200)
            .map(|r| r.body)
            .collect();
        (bodies.len() == 2).then_some(())
    });
    let first = ok(get(node, "/", &[]));
    let cookie = set_cookie(&first, "app_pin").expect("a managed pool sets the cookie");
    assert!(first
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("set-cookie") && v.contains("Max-Age=3600")));
    for _ in 0..20 {
        assert_eq!(ok(get(node, "/", &[("Cookie", &cookie)])).body, first.body);
    }
    // Its backend dies: the cookie fails over (whether lbd has taken the
    // dead one off the node yet or the node retried on the other), and
    // the client is pinned again: to the backend the new cookie names, or,
    // when lbd's replacement took the dead one's address (the cookie names
    // an address) and served, to that replacement with the old cookie.
    let pid: u32 = first
        .body
        .trim()
        .strip_prefix("pid ")
        .unwrap()
        .parse()
        .unwrap();
    common::signal(pid, libc::SIGKILL);
    // Until lbd has seen the exit: the node's pooled keep-alive connection
    // to a process killed a moment ago answers a reset, which the node does
    // not retry (that is the retry rule's business, not stickiness').
    wait_for(
        "lbd to see the backend gone",
        Duration::from_secs(30),
        || {
            let listed = backends(&lbd, "app")
                .iter()
                .any(|b| b["pid"].as_u64() == Some(u64::from(pid)));
            (!alive(pid) && !listed).then_some(())
        },
    );
    let moved = ok(get(node, "/", &[("Cookie", &cookie)]));
    assert_ne!(moved.body, first.body);
    let now = set_cookie(&moved, "app_pin").unwrap_or(cookie);
    for _ in 0..10 {
        assert_eq!(ok(get(node, "/", &[("Cookie", &now)])).body, moved.body);
    }
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

/// The instances of `demo` as `info` shows them, without what the
/// reconciler changes on its own.
fn stored(lbd: &Lbd) -> Value {
    let (s, v) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let keep = ["name", "backend", "pools", "updated_at"];
    v["info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| keep.iter().map(|k| (k.to_string(), i[k].clone())).collect())
        .map(Value::Object)
        .collect::<Vec<_>>()
        .into()
}

#[test]
fn each_bad_sticky_has_its_own_code_and_changes_nothing() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let backend = json!({"entities": ["127.0.0.1:9"]});
    let info = json!({"name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
                      "backend": backend});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    lbd.wait_active("demo", "web");
    let before = stored(&lbd);
    let long = "c".repeat(65);
    let bad = [
        (
            json!({"cookie": "a", "hash": "client_ip"}),
            "invalid_sticky",
        ),
        (json!({}), "invalid_sticky"),
        (json!({"hash": "client_ip", "ttl": 60}), "invalid_sticky"),
        (json!({"cookie": "bad name"}), "invalid_sticky_cookie"),
        (json!({"cookie": "a;b"}), "invalid_sticky_cookie"),
        (json!({"cookie": long}), "invalid_sticky_cookie"),
        (json!({"cookie": "a", "ttl": 0}), "invalid_sticky_ttl"),
        (
            json!({"cookie": "a", "ttl": 31_536_001}),
            "invalid_sticky_ttl",
        ),
        (json!({"hash": "cookie:x"}), "invalid_sticky_hash"),
    ];
    for (sticky, want) in &bad {
        let update = lbd.api(&json!({"action": "update", "type": "instance", "info": {
            "project": "demo", "name": "web", "backend": {"sticky": sticky}}}));
        assert_eq!(
            code(&update),
            (422, *want),
            "backend.sticky {sticky}: {:?}",
            update.1
        );
        let pool = lbd.api(&json!({"action": "update", "type": "instance", "info": {
            "project": "demo", "name": "web",
            "pools": {"api": {"entities": ["127.0.0.1:9"], "sticky": sticky}}}}));
        assert_eq!(
            code(&pool),
            (422, *want),
            "pools.api.sticky {sticky}: {:?}",
            pool.1
        );
        let info = json!({"name": "other", "project": "demo", "traffic_type": "http",
                          "backend": {"entities": ["127.0.0.1:9"], "sticky": sticky}});
        let create = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
        assert_eq!(
            code(&create),
            (422, *want),
            "create {sticky}: {:?}",
            create.1
        );
        assert_eq!(stored(&lbd), before, "{sticky} changed the store");
    }
    let typo = lbd.api(&json!({"action": "update", "type": "instance", "info": {
        "project": "demo", "name": "web", "backend": {"sticky": {"cokie": "a"}}}}));
    assert_eq!(code(&typo), (400, "unknown_field"), "{:?}", typo.1);
    let tcp = json!({"name": "tcp", "project": "demo", "traffic_type": "tcp", "port": 9000,
                     "backend": {"entities": ["127.0.0.1:9"], "sticky": {"hash": "client_ip"}}});
    let create = lbd.api(&json!({"action": "create", "type": "instance", "info": tcp}));
    assert_eq!(code(&create), (422, "invalid_sticky"), "{:?}", create.1);
    assert_eq!(stored(&lbd), before);
}

#[test]
fn updates_replace_keep_and_remove_and_lbctl_sets_it() {
    let lbd = Lbd::start();
    create_project(&lbd);
    let info = json!({"name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
                      "backend": {"entities": ["127.0.0.1:9"], "sticky": {"cookie": "s"}}});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let shown = lbd.wait_active("demo", "web");
    assert_eq!(
        shown["backend"]["sticky"],
        json!({"cookie": "s", "ttl": 3600})
    );
    let text = shown.to_string();
    let secret = fs::read_to_string(lbd.state.0.join("sticky.secret")).unwrap();
    assert!(!text.contains(secret.trim()), "the secret is not shown");
    let mode = fs::metadata(lbd.state.0.join("sticky.secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let update = |backend: Value| {
        let (s, v) = lbd.api(&json!({"action": "update", "type": "instance", "info": {
            "project": "demo", "name": "web", "backend": backend}}));
        assert_eq!(s, 200, "{v}");
        lbd.wait_active("demo", "web")["backend"]["sticky"].clone()
    };
    // Absent keeps; given replaces; "none" removes.
    assert_eq!(
        update(json!({"entities": ["127.0.0.1:10"]})),
        json!({"cookie": "s", "ttl": 3600})
    );
    assert_eq!(
        update(json!({"sticky": {"hash": "client_ip"}})),
        json!({"hash": "client_ip"})
    );
    assert_eq!(update(json!({"sticky": "none"})), Value::Null);

    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--sticky-cookie",
        "pin",
        "--sticky-ttl",
        "120",
    ]);
    let shown = lbd.wait_active("demo", "web");
    assert_eq!(
        shown["backend"]["sticky"],
        json!({"cookie": "pin", "ttl": 120})
    );
    let out = lbd.lbctl_ok(&["instance", "info", "web", "--project", "demo"]);
    assert!(out.contains("cookie pin (ttl 120s)"), "{out}");
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--no-sticky",
    ]);
    assert_eq!(
        lbd.wait_active("demo", "web")["backend"]["sticky"],
        Value::Null
    );
    let refused = lbd.lbctl(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--sticky-cookie",
        "a",
        "--sticky-hash",
        "client_ip",
    ]);
    assert!(!refused.status.success(), "clap refuses both forms");
    let named = lbd.lbctl(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--sticky-hash",
        "header:bad header",
    ]);
    assert!(!named.status.success());
    let stderr = String::from_utf8_lossy(&named.stderr);
    assert!(stderr.contains("invalid_sticky_hash"), "{stderr}");
}
