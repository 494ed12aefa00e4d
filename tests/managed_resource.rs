//! Per-resource managed backends (seed 000) through a real lbd, its real
//! lb-node and real python backends: each resource id of the path gets its
//! own process, started with `{resource}` and its env; the backend sees the
//! path after the resource and groups segments; groups come from the
//! instance's auth (never the URL's groups segment); unknown resources get
//! 404; idle stop and `max_resources` apply per resource; a restarted lbd
//! adopts each resource's backend; a named pool behind a rule works alike.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::managed::{alive, backend_pids, backends, header, Reaper};
use common::{wait_for, Lbd, TempDir};
use serde_json::{json, Value};

/// Answers every GET with what it was started as and what it was asked:
/// `resource=<argv> who=<$WHO> path=<path> pid=<pid>`. (No braces: lbd
/// fills `{...}` placeholders in commands.)
const ECHO_PY: &str = r#"
import os, sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = ("resource=%s who=%s path=%s pid=%d\n" % (
            sys.argv[3], os.environ.get("WHO", "-"), self.path, os.getpid())).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H)
print("listening", flush=True)
server.serve_forever()
"#;

struct Echo {
    _dir: TempDir,
    path: PathBuf,
}

impl Echo {
    fn write() -> Echo {
        let dir = TempDir::new("managed-resource");
        let path = dir.0.join("echo.py");
        fs::write(&path, ECHO_PY).unwrap();
        Echo { _dir: dir, path }
    }

    fn command(&self) -> Value {
        json!([
            "python3",
            self.path.to_str().unwrap(),
            "{address}",
            "{port}",
            "{resource}"
        ])
    }
}

const KEY_G1: &str = "key-with-group-g1";
const KEY_OTHER: &str = "key-with-group-other";

/// Project `demo` and an http instance `name` whose default pool is
/// per-resource managed, behind api_key auth (one key in g1, one not).
fn instance(lbd: &Lbd, name: &str, managed: Value) -> SocketAddr {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert!(s == 200 || v.to_string().contains("exists"), "{v}");
    let auth = json!({"mode": "api_key", "keys": [
        {"name": "in-g1", "key": KEY_G1, "groups": ["g1"]},
        {"name": "other", "key": KEY_OTHER, "groups": ["other"]}]});
    let info = json!({"name": name, "project": "demo", "traffic_type": "http", "port": 8080,
                      "backend": {"managed": managed}, "auth": auth});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", name);
    let address = info["nodes"][0]["address"]
        .as_str()
        .expect("a node address");
    format!("{address}:8080").parse().unwrap()
}

fn managed(echo: &Echo, per_resource: Value, idle_timeout: u32) -> Value {
    json!({"compute": "process", "port": 8000, "min": 0, "max": 1,
           "idle_timeout": idle_timeout, "start_timeout": 20,
           "process": {"command": echo.command(), "env": {"WHO": "template"}},
           "per_resource": per_resource})
}

/// One GET with an API key on a fresh connection: (status, headers, body).
fn get(addr: SocketAddr, path: &str, key: &str) -> (u16, Vec<(String, String)>, String) {
    let reply = common::l7::get(addr, path, &[("X-Api-Key", key)]);
    (reply.status, reply.headers, reply.body)
}

/// The `key=value` fields of an echo answer.
fn field<'a>(body: &'a str, key: &str) -> &'a str {
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {body:?}"))
}

fn pid_of(body: &str) -> u32 {
    field(body, "pid").parse().unwrap()
}

#[test]
fn each_resource_gets_its_own_process_and_groups_come_from_auth_only() {
    let echo = Echo::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let per_resource = json!({"path_segment": 2, "groups_segment": 3, "resources": {
        "r1": {"env": {"WHO": "one-{resource}"}, "require_groups": ["g1"]},
        "r2": {}}});
    let lb = instance(&lbd, "res", managed(&echo, per_resource, 60));
    assert!(backend_pids(&lbd).is_empty(), "nothing runs before traffic");

    let (status, headers, r1) = get(lb, "/smart_proxy/r1/g1,g2/rest/of/path?q=1", KEY_G1);
    assert_eq!(status, 200, "{headers:?} {r1}\n{}", lbd.stderr());
    assert!(
        header(&headers, "x-lbaas-cold-start").is_some(),
        "{headers:?}"
    );
    assert_eq!(field(&r1, "resource"), "r1");
    assert_eq!(
        field(&r1, "who"),
        "one-r1",
        "the resource's env, placeholders filled"
    );
    assert_eq!(field(&r1, "path"), "/rest/of/path?q=1");

    let (status, _, r2) = get(lb, "/smart_proxy/r2/x/y", KEY_OTHER);
    assert_eq!(status, 200, "{r2}");
    assert_eq!(field(&r2, "resource"), "r2");
    assert_eq!(field(&r2, "who"), "template");
    assert_eq!(field(&r2, "path"), "/y");
    assert_ne!(pid_of(&r1), pid_of(&r2), "one process per resource");
    let mut pids = vec![pid_of(&r1), pid_of(&r2)];
    pids.sort_unstable();
    assert_eq!(backend_pids(&lbd), pids);

    // Warm: the same process, no cold start.
    let (status, headers, again) = get(lb, "/smart_proxy/r1/-/", KEY_G1);
    assert_eq!(status, 200);
    assert!(header(&headers, "x-lbaas-cold-start").is_none());
    assert_eq!((pid_of(&again), field(&again, "path")), (pid_of(&r1), "/"));

    // The URL's groups segment names g1, but the caller's key is not in g1.
    let (status, _, body) = get(lb, "/smart_proxy/r1/g1/rest", KEY_OTHER);
    assert_eq!(status, 403, "{body}");
    // Unknown and malformed resources: 404, and nothing starts for them.
    for path in ["/smart_proxy/r3/g/x", "/smart_proxy/R1/g/x", "/smart_proxy"] {
        let (status, _, body) = get(lb, path, KEY_G1);
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(backend_pids(&lbd).len(), 2);

    let listed = backends(&lbd, "res");
    let mut resources: Vec<&str> = listed
        .iter()
        .filter_map(|b| b["resource"].as_str())
        .collect();
    resources.sort_unstable();
    assert_eq!(resources, ["r1", "r2"], "{listed:?}");
}

#[test]
fn idle_stop_and_max_resources_apply_per_resource() {
    let echo = Echo::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    // Any id, at most 2 resources with backends at once.
    let per_resource = json!({"path_segment": 1, "max_resources": 2});
    let lb = instance(&lbd, "idle", managed(&echo, per_resource, 3));

    let (status, _, a) = get(lb, "/aa/x", KEY_OTHER);
    assert_eq!(status, 200, "{a}\n{}", lbd.stderr());
    let (status, _, b) = get(lb, "/bb/x", KEY_OTHER);
    assert_eq!(status, 200, "{b}");
    let (pa, pb) = (pid_of(&a), pid_of(&b));
    assert_eq!(field(&a, "path"), "/x");

    // A third resource while both have backends: refused with a reason.
    let (status, headers, body) = get(lb, "/cc/x", KEY_OTHER);
    assert_eq!(status, 503, "{headers:?} {body}");
    assert!(body.contains("max_resources"), "{body}");

    // bb keeps traffic; aa idles out on its own.
    wait_for(
        "aa to stop while bb is busy",
        Duration::from_secs(40),
        || {
            let (status, _, body) = get(lb, "/bb/keep", KEY_OTHER);
            assert_eq!((status, pid_of(&body)), (200, pb), "bb keeps its process");
            (!alive(pa)).then_some(())
        },
    );
    assert!(alive(pb), "the busy resource's backend runs on");

    // Room again: cc gets its own backend once aa's row has gone.
    let c = wait_for("cc to be served", Duration::from_secs(20), || {
        let (status, _, body) = get(lb, "/cc/x", KEY_OTHER);
        (status == 200).then_some(body)
    });
    assert_eq!(field(&c, "resource"), "cc");
    assert!(pid_of(&c) != pa && pid_of(&c) != pb);
}

#[test]
fn a_restarted_lbd_adopts_each_resources_backend_with_its_resource() {
    let echo = Echo::write();
    let mut lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let per_resource = json!({"path_segment": 1});
    let lb = instance(&lbd, "adopt", managed(&echo, per_resource, 60));
    let (_, _, a) = get(lb, "/aa/", KEY_OTHER);
    let (_, _, b) = get(lb, "/bb/", KEY_OTHER);
    let (pa, pb) = (pid_of(&a), pid_of(&b));

    lbd.crash();
    lbd.start_again();
    let listed = wait_for(
        "both backends listed again",
        Duration::from_secs(20),
        || {
            let b = backends(&lbd, "adopt");
            (b.len() == 2 && b.iter().all(|b| b["state"] == "ready")).then_some(b)
        },
    );
    for (pid, resource) in [(pa, "aa"), (pb, "bb")] {
        assert!(
            listed
                .iter()
                .any(|b| b["pid"] == pid && b["resource"] == resource),
            "{listed:?}"
        );
        let (status, _, body) = get(lb, &format!("/{resource}/"), KEY_OTHER);
        assert_eq!((status, pid_of(&body)), (200, pid), "{body}");
    }
    let mut pids = vec![pa, pb];
    pids.sort_unstable();
    assert_eq!(backend_pids(&lbd), pids, "no duplicate, no orphan");
}

#[test]
fn a_named_pool_can_be_per_resource_behind_a_rule() {
    let echo = Echo::write();
    let lbd = Lbd::start();
    let _reaper = Reaper::new(&lbd);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let pool = json!({"entities": [],
        "managed": managed(&echo, json!({"path_segment": 2, "groups_segment": 3}), 60)});
    let info = json!({"name": "named", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": ["127.0.0.1:9"]},
        "pools": {"models": pool},
        "rules": [{"name": "models", "match": {"path_prefix": "/models/"},
                   "action": {"pool": "models"}}]});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "named");
    let address = info["nodes"][0]["address"]
        .as_str()
        .expect("a node address");
    let lb: SocketAddr = format!("{address}:8080").parse().unwrap();

    let (status, headers, body) = get(lb, "/models/m-1/any/predict?x=1", "");
    assert_eq!(status, 200, "{headers:?} {body}\n{}", lbd.stderr());
    assert_eq!(field(&body, "resource"), "m-1");
    assert_eq!(field(&body, "path"), "/predict?x=1");
    let listed = backends(&lbd, "named");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (&listed[0]["pool"], &listed[0]["resource"]),
        (&json!("models"), &json!("m-1"))
    );
}
