//! Federation at the API (issue 18), against a real lbd (process compute,
//! loopback network) and real providers (`tests/fixtures/
//! federation_provider.py`): an instance's `federation` and its refusals,
//! the `mapping` envelope (create, info, delete) with its answers and
//! codes, the store unchanged by every refusal, ownership and roles, and
//! secrets: remote tokens only in their 0600 files, local tokens only
//! hashed, neither in any answer, the audit log or SQLite. The data
//! plane's routing is tested elsewhere.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::federation::Provider;
use common::{wait_for, Lbd};
use serde_json::{json, Value};

const LOCAL_TOKEN: &str = "LOCAL-TOKEN-alice-4711";
const REMOTE_TOKEN: &str = "REMOTE-TOKEN-sp1-0815";

fn call(lbd: &Lbd, token: &str, body: Value) -> (u16, Value) {
    lbd.api_raw(serde_json::to_vec(&body).unwrap(), Some(token))
}

fn code(answer: &(u16, Value)) -> (u16, &str) {
    (answer.0, answer.1["error"]["code"].as_str().unwrap_or(""))
}

fn mapping(action: &str, info: Value) -> Value {
    let mut full = json!({"project": "demo", "instance": "fed"});
    for (k, v) in info.as_object().unwrap() {
        full[k] = v.clone();
    }
    json!({"action": action, "type": "mapping", "info": full})
}

fn federation(sp1: &Provider, sp2: &Provider) -> Value {
    json!({
        "providers": {"sp1": {"entities": [sp1.addr.to_string()], "token_url": sp1.token_url()},
                      "sp2": {"entities": [sp2.addr.to_string()]}},
        "resource_paths": ["/{project}/{type}/{id}"],
        "aggregate": [{"path": "/{project}/{type}", "list_key": "{type}", "sort_key": "id"}],
        "search_timeout_ms": 1500
    })
}

fn create_instance(name: &str, traffic: &str, port: u16, extra: Value) -> Value {
    let mut info = json!({"name": name, "project": "demo", "traffic_type": traffic,
                          "port": port, "backend": {"entities": ["127.0.0.1:9"]}});
    for (k, v) in extra.as_object().unwrap() {
        info[k] = v.clone();
    }
    json!({"action": "create", "type": "instance", "info": info})
}

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every row lbd keeps of instances and mappings (what a refusal must not
/// change), read from its SQLite file, read-only.
fn dump(lbd: &Lbd) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        lbd.state.0.join("lbaas.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut rows = Vec::new();
    for sql in [
        "SELECT id, name, spec, generation, deleting, mappings_version FROM instances ORDER BY id",
        "SELECT * FROM resource_mappings ORDER BY instance_id, type, id",
        "SELECT * FROM token_mappings ORDER BY instance_id, local_project, provider",
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

/// Whether `needle` is in the database or its WAL (bytes, as written).
fn in_sqlite(lbd: &Lbd, needle: &str) -> bool {
    ["lbaas.db", "lbaas.db-wal"].iter().any(|f| {
        std::fs::read(lbd.state.0.join(f))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
    })
}

fn token_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn mappings_through_the_api_with_secrets_kept_out_of_answers_and_sqlite() {
    let Some(sp1) = Provider::start("sp1", &["a1", "a2"]) else {
        return;
    };
    let Some(sp2) = Provider::start("sp2", &["b1"]) else {
        return;
    };
    let lbd = Lbd::start();
    let admin = lbd.token.clone();
    let (s, v) = call(
        &lbd,
        &admin,
        json!({"action": "create", "type": "project", "info": {"name": "demo"}}),
    );
    assert_eq!(s, 200, "{v}");
    let fed = federation(&sp1, &sp2);
    let (s, v) = call(
        &lbd,
        &admin,
        create_instance("fed", "http", 8080, json!({"federation": fed})),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &lbd,
        &admin,
        create_instance("plain", "http", 8081, json!({})),
    );
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", "fed");
    lbd.wait_active("demo", "plain");
    // `info instance` shows the federation as create takes it, defaults filled in.
    let f = &info["federation"];
    assert_eq!(
        f["providers"]["sp1"]["entities"][0],
        sp1.addr.to_string(),
        "{info}"
    );
    assert_eq!(f["providers"]["sp1"]["token_url"], sp1.token_url());
    assert_eq!(f["resource_paths"], json!(["/{project}/{type}/{id}"]));
    assert_eq!(f["aggregate"][0]["list_key"], "{type}");
    assert_eq!(f["token_header"], "X-Auth-Token");
    assert_eq!(
        (
            f["search_timeout_ms"].as_u64(),
            f["negative_ttl_s"].as_u64()
        ),
        (Some(1500), Some(30))
    );
    assert!(info.get("federation").is_some());
    assert!(lbd.instance("demo", "plain").get("federation").is_none());

    // A resource mapping.
    let (s, v) = call(
        &lbd,
        &admin,
        mapping(
            "create",
            json!({"kind": "resource", "type": "volumes", "id": "b1", "provider": "sp2"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let a = &v["info"];
    assert_eq!(
        (
            a["project"].as_str(),
            a["instance"].as_str(),
            a["kind"].as_str()
        ),
        (Some("demo"), Some("fed"), Some("resource"))
    );
    assert_eq!(a["version"], 1);
    assert_eq!(a["resource"]["type"], "volumes");
    assert_eq!(a["resource"]["id"], "b1");
    assert_eq!(a["resource"]["provider"], "sp2");
    assert_eq!(a["resource"]["source"], "injected");
    assert!(a["resource"]["updated_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a["nodes"], 1, "{a}");
    assert!(a["pushed_to"].as_u64().unwrap() <= 1);
    // The same again changes nothing.
    let (s, v) = call(
        &lbd,
        &admin,
        mapping(
            "create",
            json!({"kind": "resource", "type": "volumes", "id": "b1", "provider": "sp2"}),
        ),
    );
    assert_eq!((s, v["info"]["version"].as_u64()), (200, Some(1)), "{v}");

    // A token mapping: the answer names it by a prefix of its hash, no token.
    let (s, v) = call(
        &lbd,
        &admin,
        mapping(
            "create",
            json!({"kind": "token", "local_token": LOCAL_TOKEN, "local_project": "alice",
            "provider": "sp1", "remote_token": REMOTE_TOKEN, "remote_project": "sp1-alice",
            "expires_at": 4_000_000_000u64}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let a = &v["info"];
    assert_eq!(
        (a["kind"].as_str(), a["version"].as_u64()),
        (Some("token"), Some(2))
    );
    let t = &a["token"];
    assert_eq!(
        t["local_token_sha256_prefix"],
        sha256_hex(LOCAL_TOKEN)[..12]
    );
    assert_eq!(
        (t["local_project"].as_str(), t["provider"].as_str()),
        (Some("alice"), Some("sp1"))
    );
    assert_eq!(
        (t["remote_project"].as_str(), t["expires_at"].as_u64()),
        (Some("sp1-alice"), Some(4_000_000_000))
    );
    let text = v.to_string();
    assert!(
        !text.contains(REMOTE_TOKEN) && !text.contains(LOCAL_TOKEN),
        "{text}"
    );

    // info: both kinds, or one.
    let (s, v) = call(&lbd, &admin, mapping("info", json!({})));
    assert_eq!(s, 200, "{v}");
    let m = &v["info"];
    assert_eq!(m["version"], 2);
    assert_eq!(m["resources"].as_array().unwrap().len(), 1);
    assert_eq!(m["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(
        m["tokens"][0]["local_token_sha256_prefix"],
        sha256_hex(LOCAL_TOKEN)[..12]
    );
    let (_, only) = call(&lbd, &admin, mapping("info", json!({"kind": "resource"})));
    assert_eq!(only["info"]["tokens"], json!([]));
    assert_eq!(only["info"]["resources"][0]["id"], "b1");
    for answer in [
        v.to_string(),
        only.to_string(),
        lbd.instance("demo", "fed").to_string(),
    ] {
        assert!(
            !answer.contains(REMOTE_TOKEN) && !answer.contains(LOCAL_TOKEN),
            "{answer}"
        );
    }

    // Secrets: the remote token only in its 0600 file, the local one only hashed.
    assert!(
        !in_sqlite(&lbd, REMOTE_TOKEN),
        "the remote token is in SQLite"
    );
    assert!(
        !in_sqlite(&lbd, LOCAL_TOKEN),
        "the local token is in SQLite"
    );
    assert!(
        in_sqlite(&lbd, &sha256_hex(LOCAL_TOKEN)),
        "the local token's hash is stored"
    );
    let fed_id = lbd.instance("demo", "fed")["id"].as_i64().unwrap();
    let token_dir = lbd
        .state
        .0
        .join("federation-tokens")
        .join(fed_id.to_string());
    let files = token_files(&token_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let mode = std::fs::metadata(&files[0]).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_to_string(&files[0]).unwrap(), REMOTE_TOKEN);
    assert!(
        !lbd.stderr().contains(REMOTE_TOKEN),
        "a remote token was logged"
    );

    // Bad input, each with its own code, and the store unchanged.
    let before = dump(&lbd);
    let mut bad_fed = federation(&sp1, &sp2);
    bad_fed["resource_paths"] = json!(["/{project}/volumes"]);
    let mut no_list_key = federation(&sp1, &sp2);
    no_list_key["aggregate"] = json!([{"path": "/{project}/volumes"}]);
    let mut into_lbd = federation(&sp1, &sp2);
    into_lbd["providers"]["sp2"]["entities"] = json!([lbd.api.to_string()]);
    let refusals: Vec<(Value, u16, &str)> = vec![
        (
            create_instance("bad", "http", 8082, json!({"federation": bad_fed})),
            422,
            "invalid_resource_path",
        ),
        (
            create_instance("bad", "http", 8082, json!({"federation": no_list_key})),
            422,
            "invalid_aggregate",
        ),
        (
            create_instance(
                "bad",
                "tcp",
                8082,
                json!({"federation": federation(&sp1, &sp2)}),
            ),
            422,
            "federation_needs_http",
        ),
        (
            create_instance("bad", "http", 8082, json!({"federation": into_lbd.clone()})),
            422,
            "backend_is_control_plane",
        ),
        (
            json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "fed",
                "federation": into_lbd}}),
            422,
            "backend_is_control_plane",
        ),
        (
            json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "fed",
                "pools": {"sp1": {"entities": [sp1.addr.to_string()]}}}}),
            422,
            "invalid_provider",
        ),
        (
            mapping(
                "create",
                json!({"kind": "resource", "type": "volumes", "id": "x", "provider": "sp9"}),
            ),
            422,
            "unknown_provider",
        ),
        (
            mapping(
                "create",
                json!({"kind": "token", "local_token": "t", "local_project": "p",
                "provider": "sp9", "remote_token": "r", "remote_project": "q"}),
            ),
            422,
            "unknown_provider",
        ),
        (
            json!({"action": "create", "type": "mapping", "info": {"project": "demo", "instance": "nope",
                "kind": "resource", "type": "volumes", "id": "x", "provider": "sp1"}}),
            404,
            "instance_not_found",
        ),
        (
            json!({"action": "create", "type": "mapping", "info": {"project": "demo", "instance": "plain",
                "kind": "resource", "type": "volumes", "id": "x", "provider": "sp1"}}),
            409,
            "federation_not_configured",
        ),
        (
            json!({"action": "info", "type": "mapping", "info": {"project": "demo", "instance": "plain"}}),
            409,
            "federation_not_configured",
        ),
        (
            mapping(
                "create",
                json!({"kind": "token", "local_token": "t", "local_project": "p",
                    "provider": "sp1", "remote_token": "r", "remote_project": "q", "expires_at": 5}),
            ),
            400,
            "invalid_field",
        ),
        (
            mapping(
                "create",
                json!({"type": "volumes", "id": "x", "provider": "sp1"}),
            ),
            400,
            "missing_field",
        ),
        (
            mapping(
                "create",
                json!({"kind": "resource", "type": "volumes", "id": "a/b", "provider": "sp1"}),
            ),
            400,
            "invalid_field",
        ),
        (
            mapping(
                "create",
                json!({"kind": "resource", "type": "volumes", "id": "x", "provider": "sp1", "remote_token": "r"}),
            ),
            400,
            "invalid_field",
        ),
        (
            mapping("create", json!({"kind": "resource", "typ": "volumes"})),
            400,
            "unknown_field",
        ),
        (
            mapping(
                "delete",
                json!({"kind": "resource", "type": "volumes", "id": "zz"}),
            ),
            404,
            "mapping_not_found",
        ),
        (
            mapping(
                "delete",
                json!({"kind": "resource", "type": "volumes", "id": "b1", "provider": "sp1"}),
            ),
            404,
            "mapping_not_found",
        ),
        (
            mapping(
                "delete",
                json!({"kind": "token", "local_token": "other", "local_project": "alice", "provider": "sp1"}),
            ),
            404,
            "mapping_not_found",
        ),
        (mapping("info", json!({"id": "b1"})), 400, "invalid_field"),
        (
            mapping("update", json!({"kind": "resource"})),
            400,
            "unsupported_action",
        ),
    ];
    for (req, status, expected) in &refusals {
        let got = call(&lbd, &admin, req.clone());
        assert_eq!(code(&got), (*status, *expected), "{req}: {}", got.1);
    }
    assert_eq!(dump(&lbd), before, "a refused request changed the store");
    assert_eq!(token_files(&token_dir).len(), 1);

    // Ownership and roles: another tenant's instance answers like a
    // missing one; a reader lists but does not write.
    let bob = lbd.add_user("bob", "member");
    let reader = lbd.add_user("rita", "reader");
    let inject = mapping(
        "create",
        json!({"kind": "resource", "type": "volumes", "id": "q", "provider": "sp1"}),
    );
    assert_eq!(
        code(&call(&lbd, &bob, inject.clone())),
        (404, "project_not_found")
    );
    assert_eq!(
        code(&call(&lbd, &bob, mapping("info", json!({})))),
        (404, "project_not_found")
    );
    assert_eq!(code(&call(&lbd, &reader, inject)), (403, "forbidden"));
    let (s, listed) = call(&lbd, &reader, mapping("info", json!({})));
    assert_eq!(
        (s, listed["info"]["version"].as_u64()),
        (200, Some(2)),
        "{listed}"
    );
    assert_eq!(dump(&lbd), before);

    // The audit log has the writes, never a token.
    let (s, audit) = call(
        &lbd,
        &admin,
        json!({"action": "info", "type": "audit", "info": {}}),
    );
    assert_eq!(s, 200, "{audit}");
    let entries = audit["info"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e["type"] == "mapping" && e["action"] == "create" && e["status"] == 200),
        "{audit}"
    );
    let audit = audit.to_string();
    assert!(
        !audit.contains(REMOTE_TOKEN) && !audit.contains(LOCAL_TOKEN),
        "{audit}"
    );

    // Deletes: each answers the new version; the token file goes with its mapping.
    let (s, v) = call(
        &lbd,
        &admin,
        mapping(
            "delete",
            json!({"kind": "token", "local_token": LOCAL_TOKEN, "local_project": "alice", "provider": "sp1"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["info"]["version"].as_u64(),
            v["info"]["token"]["provider"].as_str()
        ),
        (Some(3), Some("sp1"))
    );
    assert!(!v.to_string().contains(LOCAL_TOKEN));
    assert!(token_files(&token_dir).is_empty());
    let (s, v) = call(
        &lbd,
        &admin,
        mapping(
            "delete",
            json!({"kind": "resource", "type": "volumes", "id": "b1"}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["info"]["version"].as_u64(),
            v["info"]["resource"]["provider"].as_str()
        ),
        (Some(4), Some("sp2"))
    );
    assert_eq!(v["info"]["nodes"], 1);
    let (_, v) = call(&lbd, &admin, mapping("info", json!({})));
    assert_eq!(
        (
            v["info"]["version"].as_u64(),
            v["info"]["resources"].as_array().map(Vec::len)
        ),
        (Some(4), Some(0))
    );

    // Removing a provider removes its mappings; `"none"` the federation.
    for body in [
        mapping(
            "create",
            json!({"kind": "resource", "type": "volumes", "id": "a1", "provider": "sp1"}),
        ),
        mapping(
            "create",
            json!({"kind": "resource", "type": "volumes", "id": "b1", "provider": "sp2"}),
        ),
    ] {
        assert_eq!(call(&lbd, &admin, body).0, 200);
    }
    let mut only_sp1 = federation(&sp1, &sp2);
    only_sp1["providers"].as_object_mut().unwrap().remove("sp2");
    let (s, v) = call(
        &lbd,
        &admin,
        json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "fed", "federation": only_sp1}}),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(&lbd, &admin, mapping("info", json!({})));
    let ids: Vec<&str> = v["info"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1"], "{v}");
    lbd.wait_active("demo", "fed");
    let (s, v) = call(
        &lbd,
        &admin,
        json!({"action": "update", "type": "instance", "info": {"project": "demo", "name": "fed", "federation": "none"}}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["info"].get("federation").is_none(), "{v}");
    assert_eq!(
        code(&call(&lbd, &admin, mapping("info", json!({})))),
        (409, "federation_not_configured")
    );
}

#[test]
fn deleting_an_instance_deletes_its_mappings_and_token_files() {
    let Some(sp1) = Provider::start("sp1", &["a1"]) else {
        return;
    };
    let Some(sp2) = Provider::start("sp2", &["b1"]) else {
        return;
    };
    let lbd = Lbd::start();
    let admin = lbd.token.clone();
    let (s, v) = call(
        &lbd,
        &admin,
        json!({"action": "create", "type": "project", "info": {"name": "demo"}}),
    );
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &lbd,
        &admin,
        create_instance(
            "fed",
            "https",
            8443,
            json!({"federation": federation(&sp1, &sp2)}),
        ),
    );
    // https without `tls` is refused first: the federation is fine there.
    assert_eq!(code(&(s, v)), (422, "missing_tls"));
    let (s, v) = call(
        &lbd,
        &admin,
        create_instance(
            "fed",
            "http",
            8080,
            json!({"federation": federation(&sp1, &sp2)}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let id = v["info"]["id"].as_i64().unwrap();
    // Mappings may be injected before the instance has nodes.
    for body in [
        mapping(
            "create",
            json!({"kind": "resource", "type": "volumes", "id": "b1", "provider": "sp2"}),
        ),
        mapping(
            "create",
            json!({"kind": "token", "local_token": LOCAL_TOKEN, "local_project": "alice",
            "provider": "sp1", "remote_token": REMOTE_TOKEN, "remote_project": "sp1-alice"}),
        ),
    ] {
        let (s, v) = call(&lbd, &admin, body);
        assert_eq!(s, 200, "{v}");
    }
    lbd.wait_active("demo", "fed");
    let token_dir = lbd.state.0.join("federation-tokens").join(id.to_string());
    assert_eq!(token_files(&token_dir).len(), 1);
    let (s, v) = call(
        &lbd,
        &admin,
        json!({"action": "delete", "type": "instance", "info": {"project": "demo", "name": "fed"}}),
    );
    assert_eq!(s, 200, "{v}");
    wait_for("the instance to go", Duration::from_secs(30), || {
        let (s, _) = call(
            &lbd,
            &admin,
            json!({"action": "info", "type": "instance", "info": {"project": "demo", "name": "fed"}}),
        );
        (s == 404).then_some(())
    });
    assert!(
        !token_dir.exists(),
        "the token files went with the instance"
    );
    let rows = dump(&lbd);
    assert!(rows.is_empty(), "{rows:?}");
}
