//! Tenants against a real lbd with real tokens, in raw JSON: ownership
//! (another tenant's objects answer 404 like missing ones), the reader
//! role, token rotation, quotas (refused creates leave the store as it
//! was; the autoscaler stops at the node quota), tokens kept only as
//! hashes, the audit log, and a database from before tenants.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::backends::{http_get, HttpBackend};
use common::{wait_for, Lbd};
use serde_json::{json, Value};

/// Sends `body` with `token`; returns the HTTP status and the answer.
fn call(lbd: &Lbd, token: &str, body: Value) -> (u16, Value) {
    lbd.api_raw(serde_json::to_vec(&body).unwrap(), Some(token))
}

/// The status and error code of an answer.
fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

fn project(name: &str) -> Value {
    json!({"action": "create", "type": "project", "info": {"name": name}})
}

fn instance(project: &str, name: &str, extra: Value) -> Value {
    let mut info = json!({"name": name, "project": project, "traffic_type": "http",
                          "port": 8080, "backend": {"entities": ["127.0.0.1:9"]}});
    for (k, v) in extra.as_object().unwrap() {
        info[k] = v.clone();
    }
    json!({"action": "create", "type": "instance", "info": info})
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// The desired state as SQLite holds it (what a refused request must not
/// change), read from the file lbd writes, read-only.
fn dump(lbd: &Lbd) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        lbd.state.0.join("lbaas.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut rows = Vec::new();
    for sql in [
        "SELECT id, name, user, subnet, deleting FROM projects ORDER BY id",
        "SELECT id, project_id, name, spec, generation, deleting FROM instances ORDER BY id",
        "SELECT name, role, hex(token_hash), max_projects, max_instances, max_nodes FROM users ORDER BY name",
    ] {
        let mut stmt = db.prepare(sql).unwrap();
        let n = stmt.column_count();
        let got = stmt
            .query_map([], |r| {
                let cols: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(cols.join("|"))
            })
            .unwrap();
        rows.extend(got.map(Result::unwrap));
    }
    rows
}

/// One request over a plain socket: the status line and the raw answer.
fn raw_http(addr: SocketAddr, token: &str, body: &str) -> (String, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "POST /api HTTP/1.1\r\nHost: lbd\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let status = text.lines().next().unwrap_or("").to_string();
    (status, text)
}

/// An error answer with the object's name replaced, to compare two 404s.
fn anonymous(answer: &(u16, Value), name: &str) -> String {
    answer.1.to_string().replace(name, "NAME")
}

#[test]
fn members_see_and_change_only_their_own_and_others_look_missing() {
    let backend = HttpBackend::start("alice-backend");
    let lbd = Lbd::start();
    let alice = lbd.add_user("alice", "member");
    let bob = lbd.add_user("bob", "member");
    let (s, v) = call(&lbd, &alice, project("ap"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["user"], "alice", "a member owns what it creates");
    let web = instance(
        "ap",
        "web",
        json!({"backend": {"entities": [backend.addr().to_string()]}}),
    );
    let (s, v) = call(&lbd, &alice, web);
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("ap", "web");
    let node: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    assert_eq!(http_get(node, "/").unwrap().0, 200);
    assert_eq!(code(&call(&lbd, &bob, project("bp"))).0, 200);
    let before = dump(&lbd);

    // Every read and write of bob on alice's objects looks like a missing object.
    let on =
        |action: &str, ty: &str, info: Value| json!({"action": action, "type": ty, "info": info});
    let probes = [
        (
            on("info", "project", json!({"name": "ap"})),
            on("info", "project", json!({"name": "zz"})),
            "ap",
        ),
        (
            on("update", "project", json!({"name": "ap"})),
            on("update", "project", json!({"name": "zz"})),
            "ap",
        ),
        (
            on("delete", "project", json!({"name": "ap", "force": true})),
            on("delete", "project", json!({"name": "zz", "force": true})),
            "ap",
        ),
        (
            on("info", "instance", json!({"project": "ap", "name": "web"})),
            on("info", "instance", json!({"project": "zz", "name": "web"})),
            "ap",
        ),
        (
            on("info", "instance", json!({"project": "ap"})),
            on("info", "instance", json!({"project": "zz"})),
            "ap",
        ),
        (
            on(
                "update",
                "instance",
                json!({"project": "ap", "name": "web", "max_connections": 5}),
            ),
            on(
                "update",
                "instance",
                json!({"project": "zz", "name": "web", "max_connections": 5}),
            ),
            "ap",
        ),
        (
            on(
                "delete",
                "instance",
                json!({"project": "ap", "name": "web"}),
            ),
            on(
                "delete",
                "instance",
                json!({"project": "zz", "name": "web"}),
            ),
            "ap",
        ),
        (
            instance("ap", "evil", json!({})),
            instance("zz", "evil", json!({})),
            "ap",
        ),
    ];
    for (theirs, missing, name) in &probes {
        let got = call(&lbd, &bob, theirs.clone());
        assert_eq!(
            code(&got),
            (404, "project_not_found"),
            "{theirs}: {}",
            got.1
        );
        let absent = call(&lbd, &bob, missing.clone());
        assert_eq!(
            anonymous(&got, name),
            anonymous(&absent, "zz"),
            "another tenant's object must answer exactly like a missing one"
        );
    }
    // Over a raw socket too: the same 404, nothing about the owner.
    let body = on("info", "instance", json!({"project": "ap", "name": "web"})).to_string();
    let (status, text) = raw_http(lbd.api, &bob, &body);
    assert!(status.starts_with("HTTP/1.1 404"), "{text}");
    assert!(!text.contains("alice"), "{text}");

    let (s, v) = call(&lbd, &bob, on("info", "project", json!({})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(names(&v["info"]), ["bp"], "bob's list shows only bob's");
    let (_, v) = call(&lbd, &alice, on("info", "project", json!({})));
    assert_eq!(names(&v["info"]), ["ap"]);
    let (_, v) = lbd.api(&on("info", "project", json!({})));
    assert_eq!(names(&v["info"]), ["ap", "bp"], "the admin sees everything");
    // A member creates only for itself; only an admin gives a project away.
    let for_alice =
        json!({"action": "create", "type": "project", "info": {"name": "x", "user": "alice"}});
    assert_eq!(code(&call(&lbd, &bob, for_alice)), (403, "forbidden"));
    let give = on("update", "project", json!({"name": "bp", "user": "alice"}));
    assert_eq!(code(&call(&lbd, &bob, give)), (403, "forbidden"));
    // Members do not manage users or read the audit log.
    assert_eq!(
        code(&call(&lbd, &bob, on("info", "user", json!({})))),
        (403, "forbidden")
    );
    assert_eq!(
        code(&call(&lbd, &bob, on("info", "audit", json!({})))),
        (403, "forbidden")
    );

    assert_eq!(dump(&lbd), before, "bob changed something");
    let info = lbd.instance("ap", "web");
    assert_eq!(info["provisioning_status"], "ACTIVE");
    assert_eq!(
        http_get(node, "/").unwrap().0,
        200,
        "alice's instance serves on"
    );
    // Alice can still change her own.
    let (s, v) = call(
        &lbd,
        &alice,
        on(
            "update",
            "instance",
            json!({"project": "ap", "name": "web", "max_connections": 50}),
        ),
    );
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_reader_reads_everything_and_writes_nothing() {
    let lbd = Lbd::start();
    let alice = lbd.add_user("alice", "member");
    let reader = lbd.add_user("olga", "reader");
    assert_eq!(code(&call(&lbd, &alice, project("ap"))).0, 200);
    assert_eq!(
        code(&call(&lbd, &alice, instance("ap", "web", json!({})))).0,
        200
    );
    let before = dump(&lbd);

    let (s, v) = call(&lbd, &reader, json!({"action": "info", "type": "project"}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(names(&v["info"]), ["ap"]);
    let (s, v) = call(
        &lbd,
        &reader,
        json!({"action": "info", "type": "instance", "info": {"project": "ap", "name": "web"}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(&lbd, &reader, json!({"action": "info", "type": "whoami"}));
    assert_eq!(
        (s, v["info"].clone()),
        (200, json!({"user": "olga", "role": "reader"}))
    );

    let writes = [
        project("rp"),
        json!({"action": "update", "type": "project", "info": {"name": "ap"}}),
        json!({"action": "delete", "type": "project", "info": {"name": "ap", "force": true}}),
        instance("ap", "web2", json!({})),
        json!({"action": "update", "type": "instance", "info": {"project": "ap", "name": "web", "max_connections": 5}}),
        json!({"action": "delete", "type": "instance", "info": {"project": "ap", "name": "web"}}),
        // Even on objects that do not exist: the role answers first.
        json!({"action": "delete", "type": "instance", "info": {"project": "nope", "name": "web"}}),
        json!({"action": "create", "type": "user", "info": {"name": "eve"}}),
        json!({"action": "info", "type": "user", "info": {}}),
        json!({"action": "info", "type": "audit", "info": {}}),
    ];
    for w in &writes {
        let got = call(&lbd, &reader, w.clone());
        assert_eq!(code(&got), (403, "forbidden"), "{w}: {}", got.1);
    }
    assert_eq!(dump(&lbd), before, "a reader changed the store");
    // Readers may read /metrics (they see every project anyway); members may not.
    let metrics = |token: &str| {
        lbd.http
            .get(format!("{}/metrics", lbd.url()))
            .bearer_auth(token)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(metrics(&reader), 200);
    assert_eq!(metrics(&alice), 403);
    assert_eq!(metrics(&lbd.token), 200);
}

#[test]
fn a_rotated_token_is_refused_at_once_and_the_builtin_admin_stays() {
    let lbd = Lbd::start();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "user",
        "info": {"name": "alice", "role": "member", "quota": {"max_projects": 3}}}));
    assert_eq!(s, 200, "{v}");
    let old = v["info"]["token"].as_str().unwrap().to_string();
    assert_eq!(old.len(), 64, "256 bits as hex");
    assert_eq!(v["info"]["has_token"], true);
    assert_eq!(v["info"]["quota"]["max_projects"], 3);
    assert_eq!(v["info"]["quota"]["max_nodes"], -1, "lbd's default");
    // Shown once: info never carries it.
    let (_, v) = lbd.api(&json!({"action": "info", "type": "user", "info": {"name": "alice"}}));
    assert!(v["info"].get("token").is_none(), "{v}");
    let whoami = json!({"action": "info", "type": "whoami"});
    let (s, v) = call(&lbd, &old, whoami.clone());
    assert_eq!(
        (s, v["info"].clone()),
        (200, json!({"user": "alice", "role": "member"}))
    );

    let (s, v) = lbd.api(&json!({"action": "update", "type": "user",
        "info": {"name": "alice", "rotate_token": true}}));
    assert_eq!(s, 200, "{v}");
    let new = v["info"]["token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert_eq!(
        code(&call(&lbd, &old, whoami.clone())),
        (401, "unauthorized")
    );
    assert_eq!(call(&lbd, &new, whoami.clone()).1["info"]["user"], "alice");

    // The built-in admin: today's admin.token, not deletable, not rotatable.
    assert_eq!(
        call(&lbd, &lbd.token, whoami).1["info"],
        json!({"user": "admin", "role": "admin"})
    );
    for change in [
        json!({"action": "update", "type": "user", "info": {"name": "admin", "rotate_token": true}}),
        json!({"action": "update", "type": "user", "info": {"name": "admin", "role": "reader"}}),
        json!({"action": "delete", "type": "user", "info": {"name": "admin"}}),
    ] {
        let got = lbd.api(&change);
        assert_eq!(code(&got), (409, "builtin_user"), "{change}");
        assert!(got.1["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin.token"));
    }
    // A user who owns projects stays until they are gone.
    assert_eq!(code(&call(&lbd, &new, project("ap"))).0, 200);
    let delete = json!({"action": "delete", "type": "user", "info": {"name": "alice"}});
    assert_eq!(code(&lbd.api(&delete)), (409, "user_owns_projects"));
    let dup = json!({"action": "create", "type": "user", "info": {"name": "alice"}});
    assert_eq!(code(&lbd.api(&dup)), (409, "user_exists"));
    // Seed 003's `"user": "john"`: an admin naming a user who does not
    // exist yet makes them a member without a token.
    let for_john =
        json!({"action": "create", "type": "project", "info": {"name": "gp", "user": "john"}});
    assert_eq!(code(&lbd.api(&for_john)).0, 200);
    let (s, john) = lbd.api(&json!({"action": "info", "type": "user", "info": {"name": "john"}}));
    assert_eq!(s, 200, "{john}");
    assert_eq!(john["info"]["role"], "member");
    assert_eq!(john["info"]["has_token"], false);
    assert_eq!(john["info"]["usage"]["projects"], 1);
    let (s, v) = lbd.api(&json!({"action": "delete", "type": "project", "info": {"name": "ap"}}));
    assert_eq!(s, 200, "{v}");
    wait_for("alice's project gone", Duration::from_secs(20), || {
        (code(&lbd.api(&json!({"action": "info", "type": "project", "info": {"name": "ap"}}))).0
            == 404)
            .then_some(())
    });
    assert_eq!(lbd.api(&delete).0, 200);
    assert_eq!(
        code(&call(
            &lbd,
            &new,
            json!({"action": "info", "type": "whoami"})
        ))
        .0,
        401
    );
}

#[test]
fn every_quota_refuses_the_create_that_would_exceed_it_and_changes_nothing() {
    let lbd = Lbd::start_with(&["--default-quota-projects", "1"]);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "user",
        "info": {"name": "alice", "quota": {"max_instances": 2, "max_nodes": 3}}}));
    assert_eq!(s, 200, "{v}");
    let alice = v["info"]["token"].as_str().unwrap().to_string();
    assert_eq!(v["info"]["role"], "member", "the default role");
    assert_eq!(
        v["info"]["quota"]["max_projects"], 1,
        "--default-quota-projects"
    );
    assert_eq!(code(&call(&lbd, &alice, project("p1"))).0, 200);
    assert_eq!(
        code(&call(
            &lbd,
            &alice,
            instance("p1", "a", json!({"min_nodes": 1}))
        ))
        .0,
        200
    );

    let refused = |token: &str, body: Value, message: &str| {
        let before = dump(&lbd);
        let got = call(&lbd, token, body.clone());
        assert_eq!(code(&got), (403, "quota_exceeded"), "{body}: {}", got.1);
        assert_eq!(got.1["error"]["message"], message);
        assert_eq!(
            dump(&lbd),
            before,
            "a refused create changed the store: {body}"
        );
    };
    refused(
        &alice,
        project("p2"),
        "quota exceeded: max_projects is 1 and user alice uses 1",
    );
    // The owner's quota counts, also when an admin creates for them.
    let for_alice =
        json!({"action": "create", "type": "project", "info": {"name": "p2", "user": "alice"}});
    refused(
        &lbd.token,
        for_alice,
        "quota exceeded: max_projects is 1 and user alice uses 1",
    );
    refused(
        &alice,
        instance("p1", "b", json!({"min_nodes": 3})),
        "quota exceeded: max_nodes is 3 and user alice uses 1",
    );
    // With autoscaling an instance costs max_nodes.
    refused(
        &alice,
        instance(
            "p1",
            "b",
            json!({"min_nodes": 1, "max_nodes": 3, "backend": {"entities": ["127.0.0.1:9"], "auto-scaling": true}}),
        ),
        "quota exceeded: max_nodes is 3 and user alice uses 1",
    );
    assert_eq!(
        code(&call(
            &lbd,
            &alice,
            instance("p1", "b", json!({"min_nodes": 2}))
        ))
        .0,
        200
    );
    refused(
        &alice,
        instance("p1", "c", json!({})),
        "quota exceeded: max_instances is 2 and user alice uses 2",
    );
    // An update that grows an instance is judged too, once it settled.
    lbd.wait_active("p1", "a");
    let before = dump(&lbd);
    let grow = json!({"action": "update", "type": "instance", "info": {"project": "p1", "name": "a", "min_nodes": 2}});
    let got = call(&lbd, &alice, grow);
    assert_eq!(code(&got), (403, "quota_exceeded"), "{}", got.1);
    assert_eq!(
        got.1["error"]["message"],
        "quota exceeded: max_nodes is 3 and user alice uses 3"
    );
    assert_eq!(dump(&lbd), before);
    // The admin has no quota; usage shows in info user.
    let (_, v) = lbd.api(&json!({"action": "info", "type": "user", "info": {"name": "alice"}}));
    assert_eq!(
        v["info"]["usage"],
        json!({"projects": 1, "instances": 2, "nodes": 3})
    );
    for name in ["q1", "q2"] {
        assert_eq!(lbd.api(&project(name)).0, 200);
    }
    // Raising the quota lets the create through.
    let raise = json!({"action": "update", "type": "user", "info": {"name": "alice", "quota": {"max_instances": -1}}});
    let (s, v) = lbd.api(&raise);
    assert_eq!(
        (s, v["info"]["quota"]["max_instances"].clone()),
        (200, json!(-1)),
        "{v}"
    );
    assert_eq!(v["info"]["quota"]["max_nodes"], 3, "other limits kept");
    refused(
        &alice,
        instance("p1", "c", json!({})),
        "quota exceeded: max_nodes is 3 and user alice uses 3",
    );
}

#[test]
fn autoscaling_stops_at_the_node_quota_with_a_scale_blocked_event() {
    let backend = HttpBackend::start("a");
    let lbd = Lbd::start_with(&["--dns-ttl", "1"]);
    let alice = lbd.add_user("alice", "member");
    assert_eq!(code(&call(&lbd, &alice, project("sc"))).0, 200);
    let checks = json!({"protocol": "HTTP", "request-path": "/",
        "criteria": {"interval": 1, "timeout": 1, "health-threshold": 2, "unhealth-threshold": 2}});
    let (s, v) = call(
        &lbd,
        &alice,
        instance(
            "sc",
            "web",
            json!({"min_nodes": 1, "max_nodes": 4,
                   "backend": {"entities": [backend.addr().to_string()], "auto-scaling": true, "health-check": checks},
                   "scaling": {"target_requests_per_s": 20, "target_connections": 0,
                               "scale_out_after": 2, "scale_in_after": 1000, "cooldown": 1}}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("sc", "web");
    // Lowered after the create: the autoscaler is what must hold the line.
    let (s, v) = lbd.api(&json!({"action": "update", "type": "user",
        "info": {"name": "alice", "quota": {"max_nodes": 2}}}));
    assert_eq!(s, 200, "{v}");
    let first: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let load = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = http_get(first, "/");
        }
    });
    let log = || {
        let (s, v) = lbd.api(&json!({"action": "info", "type": "instance",
            "info": {"project": "sc", "name": "web", "history": 3600}}));
        assert_eq!(s, 200, "{v}");
        v["info"].clone()
    };
    let events = |info: &Value, kind: &str| {
        info["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .count()
    };
    let info = wait_for("a scale_blocked event", Duration::from_secs(90), || {
        let info = log();
        (events(&info, "scale_blocked") > 0).then_some(info)
    });
    // Keep loading a few more rounds: no more nodes, no event spam.
    let samples = |info: &Value| info["samples"].as_array().unwrap().len();
    let seen = samples(&info);
    let later = wait_for("more samples under load", Duration::from_secs(30), || {
        let info = log();
        (samples(&info) >= seen + 8).then_some(info)
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    assert_eq!(
        later["desired_nodes"], 2,
        "stopped at the quota, not max_nodes: {later}"
    );
    assert_eq!(events(&later, "scale_out"), 1, "{later}");
    assert_eq!(
        events(&later, "scale_blocked"),
        1,
        "one event per streak: {later}"
    );
    assert!(later["nodes"].as_array().unwrap().len() <= 2);
    let blocked = later["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "scale_blocked")
        .unwrap()
        .clone();
    assert!(
        blocked["message"]
            .as_str()
            .unwrap()
            .contains("max_nodes quota is 2"),
        "{blocked}"
    );
}

/// Whether `needle` occurs in the file (absent files hold nothing).
fn file_holds(path: &Path, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_database_holds_no_token_in_clear() {
    let lbd = Lbd::start();
    let alice = lbd.add_user("alice", "member");
    let (_, v) = lbd.api(&json!({"action": "update", "type": "user", "info": {"name": "alice", "rotate_token": true}}));
    let rotated = v["info"]["token"].as_str().unwrap().to_string();
    assert_eq!(code(&call(&lbd, &rotated, project("ap"))).0, 200);
    assert_eq!(code(&call(&lbd, &alice, project("bp"))).0, 401);
    let dir = &lbd.state.0;
    let files = ["lbaas.db", "lbaas.db-wal", "lbaas.db-shm", "lbd.stderr"].map(|f| dir.join(f));
    assert!(files[0].exists());
    let hash = stored_admin_hash(&lbd);
    assert_ne!(hash, hex_bytes(&lbd.token), "a hash, not the token's bytes");
    for token in [&alice, &rotated, &lbd.token] {
        for f in &files {
            assert!(
                !file_holds(f, token.as_bytes()),
                "{} holds a token",
                f.display()
            );
            assert!(
                !file_holds(f, &hex_bytes(token)),
                "{} holds a token's bytes",
                f.display()
            );
        }
    }
}

/// What lbd stores of the admin token: 32 bytes (its SHA-256).
fn stored_admin_hash(lbd: &Lbd) -> Vec<u8> {
    let db = rusqlite::Connection::open_with_flags(
        lbd.state.0.join("lbaas.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let hash: Vec<u8> = db
        .query_row(
            "SELECT token_hash FROM users WHERE name = 'admin'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hash.len(), 32);
    hash
}

#[test]
fn the_audit_log_names_creates_quota_refusals_and_404s_with_their_users() {
    let lbd = Lbd::start();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "user",
        "info": {"name": "alice", "quota": {"max_projects": 1}}}));
    assert_eq!(s, 200, "{v}");
    let alice = v["info"]["token"].as_str().unwrap().to_string();
    let bob = lbd.add_user("bob", "member");
    assert_eq!(code(&call(&lbd, &alice, project("p1"))).0, 200);
    assert_eq!(
        code(&call(&lbd, &alice, project("p2"))),
        (403, "quota_exceeded")
    );
    let peek = json!({"action": "info", "type": "project", "info": {"name": "p1"}});
    assert_eq!(code(&call(&lbd, &bob, peek)), (404, "project_not_found"));
    assert_eq!(
        code(&call(&lbd, "not-a-token", project("p3"))),
        (401, "unauthorized")
    );
    // A plain read is not recorded.
    assert_eq!(
        call(&lbd, &alice, json!({"action": "info", "type": "project"})).0,
        200
    );

    let query = |info: Value| {
        let (s, v) = lbd.api(&json!({"action": "info", "type": "audit", "info": info}));
        assert_eq!(s, 200, "{v}");
        v["info"].as_array().unwrap().clone()
    };
    // Entries are written beside the answer: wait for the last one.
    let all = wait_for("the audit entries", Duration::from_secs(10), || {
        let all = query(json!({}));
        (all.len() >= 6).then_some(all)
    });
    let brief: Vec<Value> = all
        .iter()
        .map(|e| {
            json!([
                e["user"],
                e["action"],
                e["type"],
                e["name"],
                e["status"],
                e["code"]
            ])
        })
        .collect();
    // Newest first.
    assert_eq!(
        brief,
        vec![
            json!([null, null, null, null, 401, "unauthorized"]),
            json!(["bob", "info", "project", "p1", 404, "project_not_found"]),
            json!(["alice", "create", "project", "p2", 403, "quota_exceeded"]),
            json!(["alice", "create", "project", "p1", 200, null]),
            json!(["admin", "create", "user", "bob", 200, null]),
            json!(["admin", "create", "user", "alice", 200, null]),
        ]
    );
    for e in &all {
        assert_eq!(e["client"], "127.0.0.1", "{e}");
        assert!(e["ts"].as_i64().unwrap() > 1_600_000_000);
        let text = e.to_string();
        for secret in [&alice, &bob, &lbd.token] {
            assert!(
                !text.contains(secret.as_str()),
                "a token in the audit log: {text}"
            );
        }
    }
    let alices = query(json!({"user": "alice"}));
    assert_eq!(alices.len(), 2);
    assert!(alices.iter().all(|e| e["user"] == "alice"));
    assert_eq!(query(json!({"limit": 2})).len(), 2);
    assert_eq!(query(json!({"since": 4_000_000_000i64})).len(), 0);
    let bad = json!({"action": "info", "type": "audit", "info": {"limit": 0}});
    assert_eq!(code(&lbd.api(&bad)), (400, "invalid_field"));
}

#[test]
fn a_database_from_before_tenants_opens_and_keeps_working() {
    let backend = HttpBackend::start("old");
    let mut lbd = Lbd::start();
    for p in ["jp", "ap"] {
        assert_eq!(lbd.api(&project(p)).0, 200);
    }
    let web = instance(
        "jp",
        "web",
        json!({"backend": {"entities": [backend.addr().to_string()]}}),
    );
    assert_eq!(lbd.api(&web).0, 200);
    let info = lbd.wait_active("jp", "web");
    let node: SocketAddr = format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
        .parse()
        .unwrap();
    assert_eq!(lbd.stop().map(|s| s.success()), Some(true));
    // Back to schema 6: what an lbd from before tenants left (migrations 7
    // to 12 only add), with a project owned by john, who was only a label then.
    {
        let db = rusqlite::Connection::open(lbd.state.0.join("lbaas.db")).unwrap();
        db.execute_batch(
            "DROP TABLE users; DROP TABLE audit; DROP INDEX projects_by_user;
             DROP TABLE backends; DROP TABLE backend_lifetimes; DROP TABLE usage_daily;
             ALTER TABLE instances DROP COLUMN serving_nodes;
             DROP TABLE resource_mappings; DROP TABLE token_mappings;
             ALTER TABLE instances DROP COLUMN mappings_version;
             DROP INDEX nodes_by_instance;
             UPDATE projects SET user = 'john' WHERE name = 'jp';
             PRAGMA user_version = 6;",
        )
        .unwrap();
    }
    lbd.start_again();
    let (s, v) = lbd.api(&json!({"action": "info", "type": "user"}));
    assert_eq!(s, 200, "{v}");
    let users: Vec<Value> = v["info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| json!([u["name"], u["role"], u["has_token"]]))
        .collect();
    assert_eq!(
        users,
        vec![
            json!(["admin", "admin", true]),
            json!(["john", "member", false])
        ]
    );
    let (_, v) = lbd.api(&json!({"action": "info", "type": "project"}));
    let owners: Vec<Value> = v["info"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| json!([p["name"], p["user"]]))
        .collect();
    assert_eq!(owners, vec![json!(["ap", "admin"]), json!(["jp", "john"])]);
    assert_eq!(
        lbd.wait_active("jp", "web")["provisioning_status"],
        "ACTIVE"
    );
    assert_eq!(
        http_get(node, "/").unwrap().0,
        200,
        "john's instance serves on"
    );
    // John gets a token and sees his own project only.
    let (s, v) = lbd.api(&json!({"action": "update", "type": "user", "info": {"name": "john", "rotate_token": true}}));
    assert_eq!(s, 200, "{v}");
    let john = v["info"]["token"].as_str().unwrap().to_string();
    let (_, v) = call(&lbd, &john, json!({"action": "info", "type": "project"}));
    assert_eq!(names(&v["info"]), ["jp"]);
    assert_eq!(v["info"][0]["instances"][0]["name"], "web");
}

#[test]
fn concurrent_creates_cannot_both_pass_the_quota() {
    let lbd = Lbd::start();
    let (s, v) = lbd.api(&json!({"action": "create", "type": "user",
        "info": {"name": "alice", "quota": {"max_projects": 1}}}));
    assert_eq!(s, 200, "{v}");
    let alice = v["info"]["token"].as_str().unwrap().to_string();
    let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|k| {
                let (lbd, alice) = (&lbd, &alice);
                scope.spawn(move || {
                    let got = call(lbd, alice, project(&format!("c{k}")));
                    let (s, c) = code(&got);
                    (s, c.to_string())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let created = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(created, 1, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|(s, c)| *s == 200 || (*s == 403 && c == "quota_exceeded")),
        "{statuses:?}"
    );
    let (_, v) = lbd.api(&json!({"action": "info", "type": "user", "info": {"name": "alice"}}));
    assert_eq!(v["info"]["usage"]["projects"], 1);
}
