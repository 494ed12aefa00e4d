//! Federation routing (issue 18) end to end: a real lbd and lb-node in
//! front of three mini block-storage providers (`tests/fixtures/
//! federation_provider.py`, each its own process logging its calls). A
//! volume is found by one parallel search and then routed straight, on
//! every node and after a failover; lists are merged and walked with
//! markers; tokens are mapped; injected mappings route without a search;
//! and the seed's Alice example is replayed through two instances.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::federation::{Call, Provider};
use common::l7::{send, Reply};
use common::{signal, wait_for, Lbd};
use serde_json::{json, Value};

fn providers_json(list: &[(&Provider, Option<String>)]) -> Value {
    let mut m = serde_json::Map::new();
    for (p, token_url) in list {
        let mut v = json!({"entities": [p.addr.to_string()],
            "health-check": {"protocol": "HTTP", "request-path": "/healthz",
                             "criteria": {"interval": 1, "timeout": 1}}});
        if let Some(u) = token_url {
            v["token_url"] = json!(u);
        }
        m.insert(p.name.clone(), v);
    }
    Value::Object(m)
}

/// Creates project `demo` (once) and an http instance on port 8080 whose
/// federation is `federation`; its running nodes' traffic addresses.
fn instance(lbd: &Lbd, name: &str, federation: Value, min_nodes: u32) -> Vec<SocketAddr> {
    let _ = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    let first = federation["providers"]
        .as_object()
        .and_then(|m| m.values().next())
        .map(|p| p["entities"].clone())
        .unwrap();
    let info = json!({"name": name, "project": "demo", "traffic_type": "http", "port": 8080,
        "min_nodes": min_nodes, "backend": {"entities": first}, "federation": federation});
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    running_nodes(lbd, name, min_nodes as usize)
}

fn running_nodes(lbd: &Lbd, name: &str, count: usize) -> Vec<SocketAddr> {
    wait_for("running nodes", Duration::from_secs(60), || {
        let info = lbd.wait_active("demo", name);
        let running: Vec<SocketAddr> = info["nodes"]
            .as_array()?
            .iter()
            .filter(|n| n["state"] == "running")
            .filter_map(|n| format!("{}:8080", n["address"].as_str()?).parse().ok())
            .collect();
        (running.len() == count).then_some(running)
    })
}

fn mappings(lbd: &Lbd, instance: &str) -> Value {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "mapping",
        "info": {"project": "demo", "instance": instance}}));
    assert_eq!(s, 200, "{v}");
    v["info"].clone()
}

/// Waits until lbd has stored `type`/`id` → `provider`.
fn wait_stored(lbd: &Lbd, instance: &str, id: &str, provider: &str) {
    wait_for(
        &format!("lbd stores {id} → {provider}"),
        Duration::from_secs(10),
        || {
            let m = mappings(lbd, instance);
            m["resources"]
                .as_array()?
                .iter()
                .any(|r| r["id"] == id && r["provider"] == provider)
                .then_some(())
        },
    );
}

/// Waits until every running node took lbd's current set of mappings.
fn wait_nodes_current(lbd: &Lbd, instance: &str) {
    wait_for(
        "every node has the mappings",
        Duration::from_secs(10),
        || {
            let m = mappings(lbd, instance);
            let version = m["version"].as_u64()?;
            let nodes = m["nodes"].as_array()?;
            (!nodes.is_empty()
                && nodes
                    .iter()
                    .all(|n| n["mappings_version"].as_u64().is_some_and(|v| v >= version)))
            .then_some(())
        },
    );
}

fn get(node: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(node, "GET", path, headers)
}

/// The calls a provider got for `path` (the query aside).
fn calls_to(p: &Provider, path: &str) -> Vec<Call> {
    p.calls()
        .into_iter()
        .filter(|c| c.path.split('?').next() == Some(path))
        .collect()
}

/// Writes `request` as it is on a fresh connection; the whole answer.
fn raw(node: SocketAddr, request: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(node).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

fn json_body(r: &Reply) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

fn basic_federation(all: &[&Provider], timeout_ms: u64) -> Value {
    json!({
        "providers": providers_json(&all.iter().map(|p| (*p, None)).collect::<Vec<_>>()),
        "resource_paths": ["/{project}/{type}/{id}"],
        "aggregate": [{"path": "/{project}/{type}", "list_key": "{type}"}],
        "search_timeout_ms": timeout_ms,
        "negative_ttl_s": 30
    })
}

#[test]
fn a_volume_is_found_by_one_parallel_search_then_routed_straight_on_every_node_and_after_failover()
{
    let slow = ["--delay-ms", "300"];
    let Some(sp1) = Provider::start_with("sp1", &["v-a"], &slow) else {
        return;
    };
    let sp2 = Provider::start_with("sp2", &["v-b"], &slow).unwrap();
    let sp3 = Provider::start_with("sp3", &["v-c"], &slow).unwrap();
    let lbd = Lbd::start_with(&["--failover-grace", "2"]);
    let nodes = instance(&lbd, "fed", basic_federation(&[&sp1, &sp2, &sp3], 5000), 2);

    let path = "/alice/volumes/v-b";
    let r = get(nodes[0], path, &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(json_body(&r)["volume"]["provider"], "sp2");
    assert_eq!(r.header("x-federation-provider"), Some("sp2"));
    // One round: each provider was asked once, and the calls overlapped.
    let rounds: Vec<Call> = [&sp1, &sp2, &sp3]
        .iter()
        .map(|p| {
            let c = calls_to(p, path);
            assert_eq!(c.len(), 1, "{}: {c:?}", p.name);
            c[0].clone()
        })
        .collect();
    let latest_start = rounds.iter().map(|c| c.start).fold(f64::MIN, f64::max);
    let earliest_end = rounds.iter().map(|c| c.end).fold(f64::MAX, f64::min);
    assert!(
        latest_start < earliest_end,
        "the search was not parallel: {rounds:?}"
    );

    // The second GET, on the same node, goes to sp2 only.
    assert_eq!(get(nodes[0], path, &[]).status, 200);
    assert_eq!(calls_to(&sp1, path).len(), 1);
    assert_eq!(calls_to(&sp3, path).len(), 1);
    assert_eq!(calls_to(&sp2, path).len(), 2);

    // lbd stored it and pushed it: the other node routes straight too.
    wait_stored(&lbd, "fed", "v-b", "sp2");
    let m = mappings(&lbd, "fed");
    let row = m["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "v-b")
        .unwrap()
        .clone();
    assert_eq!(
        (row["type"].as_str(), row["source"].as_str()),
        (Some("volumes"), Some("learned"))
    );
    wait_nodes_current(&lbd, "fed");
    assert_eq!(get(nodes[1], path, &[]).status, 200);
    assert_eq!(calls_to(&sp1, path).len(), 1, "node 2 searched");
    assert_eq!(calls_to(&sp3, path).len(), 1, "node 2 searched");

    // A failover's replacement routes straight to sp2 from its first config.
    let info = lbd.instance("demo", "fed");
    let victim = info["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["state"] == "running")
        .unwrap()
        .clone();
    signal(victim["pid"].as_u64().unwrap() as u32, libc::SIGKILL);
    let replacement = wait_for("a replacement serving", Duration::from_secs(60), || {
        let info = lbd.instance("demo", "fed");
        info["nodes"]
            .as_array()?
            .iter()
            .find(|n| {
                n["state"] == "running"
                    && n["id"] != victim["id"]
                    && !nodes
                        .iter()
                        .any(|a| a.ip().to_string() == n["address"].as_str().unwrap_or(""))
            })
            .and_then(|n| {
                format!("{}:8080", n["address"].as_str()?)
                    .parse::<SocketAddr>()
                    .ok()
            })
    });
    let r = wait_for("the replacement answers", Duration::from_secs(20), || {
        let r = get(replacement, path, &[]);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.header("x-federation-provider"), Some("sp2"));
    assert_eq!(calls_to(&sp1, path).len(), 1, "the replacement searched");
    assert_eq!(calls_to(&sp3, path).len(), 1, "the replacement searched");

    // A DELETE that sp2 answers 2xx removes the mapping, in lbd too.
    let r = send(replacement, "DELETE", path, &[]);
    assert_eq!(r.status, 204, "{r:?}");
    wait_for("the mapping removed", Duration::from_secs(10), || {
        let m = mappings(&lbd, "fed");
        (!m["resources"].as_array()?.iter().any(|r| r["id"] == "v-b")).then_some(())
    });
}

#[test]
fn lists_merge_sorted_walk_with_markers_and_a_stopped_provider_is_partial() {
    let Some(sp1) = Provider::start("sp1", &["a1", "c1", "e1"]) else {
        return;
    };
    let sp2 = Provider::start("sp2", &["b2", "d2"]).unwrap();
    let mut sp3 = Provider::start("sp3", &["a3", "f3", "g3"]).unwrap();
    let lbd = Lbd::start();
    let node = instance(
        &lbd,
        "lists",
        basic_federation(&[&sp1, &sp2, &sp3], 2000),
        1,
    )[0];

    let r = get(node, "/alice/volumes", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let body = json_body(&r);
    let ids: Vec<&str> = body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a1", "a3", "b2", "c1", "d2", "e1", "f3", "g3"]);
    assert!(body.get("next_marker").is_none(), "{body}");

    // limit=2 walks all of them, no duplicates, no provider asked for all.
    let mut walked = Vec::new();
    let mut target = "/alice/volumes?limit=2".to_string();
    for _ in 0..10 {
        let r = get(node, &target, &[]);
        assert_eq!(r.status, 200, "{r:?}");
        let page = json_body(&r);
        let items = page["volumes"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        walked.extend(items.iter().map(|v| v["id"].as_str().unwrap().to_string()));
        match page["next_marker"].as_str() {
            Some(m) => target = format!("/alice/volumes?limit=2&marker={m}"),
            None => break,
        }
    }
    assert_eq!(walked, ids);
    for p in [&sp1, &sp2, &sp3] {
        for c in calls_to(p, "/alice/volumes") {
            if c.path.contains("limit") {
                assert!(c.path.contains("limit=3"), "{} got {}", p.name, c.path);
            }
        }
    }
    // Every listed volume became a mapping: a GET goes straight to its home.
    let before = calls_to(&sp1, "/alice/volumes/f3").len();
    let r = get(node, "/alice/volumes/f3", &[]);
    assert_eq!(r.header("x-federation-provider"), Some("sp3"), "{r:?}");
    assert_eq!(calls_to(&sp1, "/alice/volumes/f3").len(), before);

    sp3.kill();
    let r = get(node, "/alice/volumes", &[]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-federation-partial"), Some("sp3"), "{r:?}");
    let ids: Vec<String> = json_body(&r)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["a1", "b2", "c1", "d2", "e1"]);
}

#[test]
fn tokens_map_per_provider_and_the_exchange_is_asked_once_until_expiry() {
    let Some(sp1) = Provider::start_with("sp1", &["v1"], &["--token-ttl", "2"]) else {
        return;
    };
    let sp2 = Provider::start("sp2", &[]).unwrap();
    let lbd = Lbd::start();
    let federation = json!({
        "providers": providers_json(&[(&sp1, Some(sp1.token_url())), (&sp2, None)]),
        "resource_paths": ["/{project}/{type}/{id}"],
    });
    let node = instance(&lbd, "tok", federation, 1)[0];
    let token = [("X-Auth-Token", "alice-token")];

    let r = get(node, "/alice/volumes/v1", &token);
    assert_eq!(r.status, 200, "{r:?}");
    // sp1 got its own token, and its own project in the path.
    let c = calls_to(&sp1, "/sp1-alice/volumes/v1");
    assert_eq!(c.len(), 1, "{:?}", sp1.calls());
    assert_eq!(c[0].token.as_deref(), Some("sp1-alice-token"));
    // sp2 has no token_url: the token and path pass unchanged.
    let c = calls_to(&sp2, "/alice/volumes/v1");
    assert_eq!(c.len(), 1, "{:?}", sp2.calls());
    assert_eq!(c[0].token.as_deref(), Some("alice-token"));

    for _ in 0..3 {
        assert_eq!(get(node, "/alice/volumes/v1", &token).status, 200);
    }
    assert_eq!(calls_to(&sp1, "/token").len(), 1, "asked once per token");
    // Another token is exchanged on its own.
    assert_eq!(
        get(node, "/alice/volumes/v1", &[("X-Auth-Token", "bob")]).status,
        200
    );
    assert_eq!(calls_to(&sp1, "/token").len(), 2);
    // Past `expires_at` (2 s) the token is exchanged again.
    wait_for(
        "a new exchange after expiry",
        Duration::from_secs(10),
        || {
            assert_eq!(get(node, "/alice/volumes/v1", &token).status, 200);
            (calls_to(&sp1, "/token").len() == 3).then_some(())
        },
    );
}

#[test]
fn injected_mappings_route_without_a_search_unknown_is_404_and_silence_is_504() {
    let Some(sp1) = Provider::start("sp1", &[]) else {
        return;
    };
    let sp2 = Provider::start("sp2", &["v9"]).unwrap();
    let slow = Provider::start_with("slow", &[], &["--delay-ms", "3000"]).unwrap();
    let lbd = Lbd::start();
    let node = instance(&lbd, "inj", basic_federation(&[&sp1, &sp2], 2000), 1)[0];

    // Injected through lbctl: the GET goes to sp2 only.
    lbd.lbctl_ok(&[
        "instance",
        "mapping",
        "add",
        "--project",
        "demo",
        "--instance",
        "inj",
        "--kind",
        "resource",
        "--type",
        "volumes",
        "--id",
        "v9",
        "--provider",
        "sp2",
    ]);
    let listed = lbd.lbctl_ok(&[
        "instance",
        "mapping",
        "list",
        "--project",
        "demo",
        "--instance",
        "inj",
    ]);
    assert!(listed.contains("v9") && listed.contains("sp2"), "{listed}");
    let r = get(node, "/alice/volumes/v9", &[]);
    assert_eq!(
        (r.status, r.header("x-federation-provider")),
        (200, Some("sp2")),
        "{r:?}"
    );
    assert!(
        calls_to(&sp1, "/alice/volumes/v9").is_empty(),
        "sp1 was searched"
    );

    // Unknown: every provider says 404, and the miss is kept.
    let r = get(node, "/alice/volumes/nowhere", &[]);
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(get(node, "/alice/volumes/nowhere", &[]).status, 404);
    assert_eq!(
        calls_to(&sp1, "/alice/volumes/nowhere").len(),
        1,
        "the miss was not cached"
    );

    // A provider that cannot be reached, with the rest 404: 502 naming it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut with_dead = basic_federation(&[&sp1, &sp2], 2000);
    with_dead["providers"]["gone"] = json!({"entities": [dead.to_string()]});
    with_dead["negative_ttl_s"] = json!(0);
    let node2 = instance(&lbd, "dead", with_dead, 1)[0];
    let r = get(node2, "/alice/volumes/other", &[]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-federation-failed"), Some("gone"), "{r:?}");

    // A provider that does not answer within search_timeout_ms: 504.
    let node3 = instance(&lbd, "slow", basic_federation(&[&sp1, &slow], 500), 1)[0];
    let started = std::time::Instant::now();
    let r = get(node3, "/alice/volumes/late", &[]);
    assert_eq!(r.status, 504, "{r:?}");
    assert_eq!(r.header("x-federation-failed"), Some("slow"), "{r:?}");
    // Behaviour, with a wide margin: the node did not wait for the 3 s answer.
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
}

/// Seed 004's token injection use case. Alice holds a token of the IDP, a
/// server VM1 on SP1 (compute) and a volume BS1 on SP2 (block storage).
/// The IDP's instance finds both by searching and maps her token to each
/// provider's; then it injects into SP1's own instance (in front of the
/// Cinders) what SP1's Nova will need: her SP1 token and project mapped
/// to SP2's, and `volumes, BS1 → sp2`. SP1's Nova then reaches BS1 through
/// SP1's instance with no search, with SP2's token and project.
#[test]
fn the_alice_example_of_seed_004() {
    let Some(sp1) = Provider::start_with("sp1", &[], &["--servers", "VM1"]) else {
        return;
    };
    let sp2 = Provider::start("sp2", &["BS1"]).unwrap();
    let lbd = Lbd::start();
    let idp = json!({
        "providers": providers_json(&[(&sp1, Some(sp1.token_url())), (&sp2, Some(sp2.token_url()))]),
        "resource_paths": ["/v2.1/{project}/{type}/{id}",
                           "/v2.1/{project}/{type}/{id}/os-volume_attachments",
                           "/v3/{project}/{type}/{id}"],
    });
    let idp_node = instance(&lbd, "idp", idp, 1)[0];
    let alice = [("X-Auth-Token", "alice_token")];

    // Alice looks at BS1 through the IDP: found on SP2, with SP2's token.
    let r = get(idp_node, "/v3/alice_project_id/volumes/BS1", &alice);
    assert_eq!(
        (r.status, r.header("x-federation-provider")),
        (200, Some("sp2")),
        "{r:?}"
    );
    let c = calls_to(&sp2, "/v3/sp2-alice_project_id/volumes/BS1");
    assert_eq!(c[0].token.as_deref(), Some("sp2-alice_token"));

    // Her attach call goes to SP1's Nova (VM1 lives there) with SP1's token.
    let attach = r#"{"volumeAttachment": {"volumeId": "BS1", "device": "/dev/vdd"}}"#;
    let r = raw(
        idp_node,
        &format!(
            "PUT /v2.1/alice_project_id/servers/VM1/os-volume_attachments HTTP/1.1\r\nHost: idp\r\n\
             X-Auth-Token: alice_token\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{attach}",
            attach.len()
        ),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("/dev/vdd"),
        "the body reached SP1 unchanged: {r}"
    );
    let put: Vec<Call> = sp1
        .calls()
        .into_iter()
        .filter(|c| c.method == "PUT")
        .collect();
    assert_eq!(put.len(), 1, "{put:?}");
    assert_eq!(
        put[0].path,
        "/v2.1/sp1-alice_project_id/servers/VM1/os-volume_attachments"
    );
    assert_eq!(put[0].token.as_deref(), Some("sp1-alice_token"));

    // SP1's instance, in front of the block storage of SP1 and SP2.
    let cinder1 = Provider::start("sp1", &[]).unwrap();
    let sp1_proxy = json!({
        "providers": providers_json(&[(&cinder1, None), (&sp2, None)]),
        "resource_paths": ["/v3/{project}/{type}/{id}"],
    });
    let sp1_node = instance(&lbd, "sp1-cinder", sp1_proxy, 1)[0];
    // The IDP injects the two mappings SP1's Nova will need.
    for info in [
        json!({"kind": "token", "local_token": "sp1-alice_token",
               "local_project": "sp1-alice_project_id", "provider": "sp2",
               "remote_token": "sp2-alice_token", "remote_project": "sp2-alice_project_id"}),
        json!({"kind": "resource", "type": "volumes", "id": "BS1", "provider": "sp2"}),
    ] {
        let mut info = info;
        info["project"] = json!("demo");
        info["instance"] = json!("sp1-cinder");
        let (s, v) = lbd.api(&json!({"action": "create", "type": "mapping", "info": info}));
        assert_eq!(s, 200, "{v}");
        assert!(
            !v.to_string().contains("sp2-alice_token"),
            "a remote token shown: {v}"
        );
    }
    // SP1's Nova reads BS1 with its own token: straight to SP2, mapped.
    let before = sp2.calls().len();
    let r = get(
        sp1_node,
        "/v3/sp1-alice_project_id/volumes/BS1",
        &[("X-Auth-Token", "sp1-alice_token")],
    );
    assert_eq!(
        (r.status, r.header("x-federation-provider")),
        (200, Some("sp2")),
        "{r:?}"
    );
    assert!(cinder1.calls().is_empty(), "SP1's Cinder was searched");
    let calls = sp2.calls();
    assert_eq!(calls.len(), before + 1);
    let last = calls.last().unwrap();
    assert_eq!(last.path, "/v3/sp2-alice_project_id/volumes/BS1");
    assert_eq!(last.token.as_deref(), Some("sp2-alice_token"));
    assert!(
        !mappings(&lbd, "sp1-cinder")
            .to_string()
            .contains("sp2-alice_token"),
        "info shows no remote token"
    );
}
