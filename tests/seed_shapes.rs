//! Seed 003's literal JSON blocks, pasted as people will paste them (its
//! trailing commas and `["a"/"b"]` alternatives included), with only
//! names, addresses and the one alternative chosen filled in, against a
//! real lbd: each creates what it describes or is refused readably, and a
//! refusal leaves the store as it was.

mod common;

use common::backends::HttpBackend;
use common::Lbd;
use serde_json::{json, Value};

/// The seed's request template, as written.
const REQUEST: &str = r#"{
    "action": ["create"/"info"/"update"/"delete"],
    "type": ["project"/"instance"],
    "info": {
        "name": "example"
    }
}"#;

/// The seed's response template, as written.
const RESPONSE: &str = r#"{
    "status": ["successful"/"fail"],
    "action": "create",
    "type": "project",
    "info": {
        "name": "example",
        "id": 1,
    }
}"#;

/// The seed's project, as written.
const PROJECT: &str = r#"{
    "type": "project",
    "user": "john",
    "name": "john's project",
    "instances": [],
}"#;

/// The seed's instance, as written.
const INSTANCE: &str = r#"{
    "type": "instance",
    "traffic_type": ["tcp"/"http"],
    "subnet": "1.1.1.0/24",
    "backend": {
        "entities": [
            ["ip"/"url"], ...
        ],
        "health-check": {},
        "auto-scaling": true,
    }
}"#;

/// The seed's health check, as written.
const HEALTH_CHECK: &str = r#"{
    "protocol": ["HTTP"/"TCP"],
    "port": 80,
    "request-path": "/",
    "criteria": {
        "interval": 5,
        "timeout": 5,
        "health-threshold": 2,
        "unhealth-threshold": 2
    }
}"#;

/// `block` with each `(from, to)` filled in; every `from` must be there.
fn fill(block: &str, fills: &[(&str, &str)]) -> String {
    let mut out = block.to_string();
    for (from, to) in fills {
        assert!(out.contains(from), "{from:?} is not in {block}");
        out = out.replacen(from, to, 1);
    }
    out
}

/// A request envelope around `info`, as text (so its commas stay as written).
fn envelope(action: &str, object_type: &str, info: &str) -> Vec<u8> {
    format!(r#"{{"action": "{action}", "type": "{object_type}", "info": {info}}}"#).into_bytes()
}

fn projects(lbd: &Lbd) -> Value {
    let (s, v) = lbd.api(&json!({"action": "info", "type": "project"}));
    assert_eq!(s, 200, "{v}");
    let mut list = v["info"].clone();
    for p in list.as_array_mut().unwrap() {
        for i in p["instances"].as_array_mut().unwrap() {
            *i = json!({"name": i["name"], "backend": i["backend"], "health": i["backend"]["health-check"]});
        }
    }
    list
}

fn refused(lbd: &Lbd, body: Vec<u8>, code: &str) -> String {
    let (s, v) = lbd.api_raw(body, Some(&lbd.token));
    assert_eq!(v["status"], "fail", "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!((400..500).contains(&s), "{s} {v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn the_request_and_response_templates() {
    let lbd = Lbd::start();
    // Each alternative of the template, chosen as a string.
    let create = fill(
        REQUEST,
        &[
            (r#"["create"/"info"/"update"/"delete"]"#, r#""create""#),
            (r#"["project"/"instance"]"#, r#""project""#),
        ],
    );
    let (s, v) = lbd.api_raw(create.into_bytes(), Some(&lbd.token));
    assert_eq!(s, 200, "{v}");
    // The answer has the shape of the seed's response block.
    let response = fill(RESPONSE, &[(r#"["successful"/"fail"]"#, r#""successful""#)]);
    let expected: Value = json5ish(&response);
    for key in ["status", "action", "type"] {
        assert_eq!(v[key], expected[key], "{key}: {v}");
    }
    assert_eq!(v["info"]["name"], expected["info"]["name"]);
    assert!(v["info"]["id"].is_i64(), "{v}");
    let info = fill(
        REQUEST,
        &[
            (r#"["create"/"info"/"update"/"delete"]"#, r#""info""#),
            (r#"["project"/"instance"]"#, r#""project""#),
        ],
    );
    let (s, v) = lbd.api_raw(info.into_bytes(), Some(&lbd.token));
    assert_eq!((s, &v["info"]["name"]), (200, &json!("example")), "{v}");
    let before = projects(&lbd);
    // The alternative kept in its list is refused with what to write.
    let listed = fill(
        REQUEST,
        &[
            (r#"["create"/"info"/"update"/"delete"]"#, r#"["create"]"#),
            (r#"["project"/"instance"]"#, r#""project""#),
        ],
    );
    let message = refused(&lbd, listed.into_bytes(), "invalid_field");
    assert!(
        message.contains(r#""create""#) && message.contains("one of them"),
        "{message}"
    );
    let listed = fill(
        REQUEST,
        &[
            (r#"["create"/"info"/"update"/"delete"]"#, r#""create""#),
            (r#"["project"/"instance"]"#, r#"["project"]"#),
        ],
    );
    let message = refused(&lbd, listed.into_bytes(), "invalid_field");
    assert!(message.contains(r#""instance""#), "{message}");
    assert_eq!(projects(&lbd), before);
    let delete = fill(
        REQUEST,
        &[
            (r#"["create"/"info"/"update"/"delete"]"#, r#""delete""#),
            (r#"["project"/"instance"]"#, r#""project""#),
        ],
    );
    let (s, v) = lbd.api_raw(delete.into_bytes(), Some(&lbd.token));
    assert_eq!(s, 200, "{v}");
}

/// The seed's response block read the way the API reads requests (its
/// trailing comma forgiven), by sending it as a request's `info`.
fn json5ish(text: &str) -> Value {
    // Only the request parser forgives commas; the test reads the block by
    // dropping them the same simple way (none is inside a string here).
    let cleaned = text.replace(",\n    }", "\n    }");
    serde_json::from_str(&cleaned).unwrap_or_else(|e| panic!("{e}: {cleaned}"))
}

#[test]
fn the_project_block() {
    let lbd = Lbd::start();
    lbd.add_user("john", "member");
    let before = projects(&lbd);
    // As written: the name is not a DNS label; the refusal says what would be.
    let message = refused(&lbd, envelope("create", "project", PROJECT), "invalid_name");
    assert!(message.contains(r#"try "johns-project""#), "{message}");
    // Instances in the project are refused: they are created separately.
    let with_instances = fill(
        PROJECT,
        &[
            ("john's project", "johns-project"),
            (
                r#""instances": []"#,
                r#""instances": [{"type": "instance", "traffic_type": "http"}]"#,
            ),
        ],
    );
    let message = refused(
        &lbd,
        envelope("create", "project", &with_instances),
        "instances_created_separately",
    );
    assert!(
        message.contains("created separately") && message.contains("create instance"),
        "{message}"
    );
    assert_eq!(projects(&lbd), before, "refusals change nothing");
    // The name filled in: created, owned by john, with no instances.
    let named = fill(PROJECT, &[("john's project", "johns-project")]);
    let (s, v) = lbd.api_raw(envelope("create", "project", &named), Some(&lbd.token));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["info"]["type"], "project");
    assert_eq!(v["info"]["user"], "john");
    assert_eq!(v["info"]["instances"], json!([]));
}

#[test]
fn the_instance_and_health_check_blocks() {
    let lbd = Lbd::start();
    let (a, b) = (HttpBackend::start("alpha"), HttpBackend::start("bravo"));
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert_eq!(s, 200, "{v}");
    let subnet = v["info"]["subnet"].as_str().unwrap().to_string();
    let before = projects(&lbd);
    let named = |block: &str| {
        // The seed's instance has no name or project: they are the names to fill in.
        block.replacen(
            '{',
            r#"{"name": "web", "project": "demo", "port": 8080,"#,
            1,
        )
    };
    let entities = format!(r#"["{}"], ["http://{}"]"#, a.addr(), b.addr());
    let port = a.addr().port().to_string();
    let health = fill(
        HEALTH_CHECK,
        &[(r#"["HTTP"/"TCP"]"#, r#""HTTP""#), ("80", &port)],
    );
    let instance = |traffic: &str, health: &str| {
        named(&fill(
            INSTANCE,
            &[
                (r#"["tcp"/"http"]"#, traffic),
                ("1.1.1.0/24", &subnet),
                (r#"["ip"/"url"], ..."#, &entities),
                (
                    r#""health-check": {}"#,
                    &format!(r#""health-check": {health}"#),
                ),
            ],
        ))
    };
    // An entity that is none of the forms: the refusal names the field and them.
    let bad = instance(r#""http""#, "{}").replace(&format!(r#"["{}"]"#, a.addr()), "[7]");
    let message = refused(&lbd, envelope("create", "instance", &bad), "invalid_field");
    assert!(
        message.contains("`entities`") && message.contains("HOST:PORT"),
        "{message}"
    );
    assert!(!message.contains("untagged"), "{message}");
    let pair = instance(r#""http""#, "{}").replace(
        &format!(r#"["{}"], ["#, a.addr()),
        &format!(r#"["{}", "#, a.addr()),
    );
    let message = refused(&lbd, envelope("create", "instance", &pair), "invalid_field");
    assert!(message.contains("exactly one entity"), "{message}");
    // The alternative kept as a list is refused, naming the field.
    let listed = instance(r#"["http"]"#, "{}");
    let message = refused(
        &lbd,
        envelope("create", "instance", &listed),
        "invalid_field",
    );
    assert!(message.contains("one of them"), "{message}");
    assert_eq!(projects(&lbd), before, "refusals change nothing");

    // With `"health-check": {}` as written, and with the seed's health check block.
    let (s, v) = lbd.api_raw(
        envelope("create", "instance", &instance(r#""http""#, "{}")),
        Some(&lbd.token),
    );
    assert_eq!(s, 200, "{v}");
    let web2 = instance(r#""http""#, &health).replacen(r#""name": "web""#, r#""name": "web2""#, 1);
    let (s, v) = lbd.api_raw(envelope("create", "instance", &web2), Some(&lbd.token));
    assert_eq!(s, 200, "{v}");
    let hc = &v["info"]["backend"]["health-check"];
    assert_eq!(hc["protocol"], "HTTP");
    assert_eq!(hc["port"], a.addr().port());
    assert_eq!(
        hc["criteria"],
        json!({"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2})
    );
    for name in ["web", "web2"] {
        let info = lbd.wait_active("demo", name);
        let members: Vec<&str> = info["backend"]["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            members,
            [a.addr().to_string(), b.addr().to_string()],
            "{info}"
        );
        assert_eq!(info["backend"]["auto-scaling"], true);
        let node: std::net::SocketAddr =
            format!("{}:8080", info["nodes"][0]["address"].as_str().unwrap())
                .parse()
                .unwrap();
        let bodies: Vec<String> = (0..4)
            .map(|_| common::l7::get(node, "/", &[]).body)
            .collect();
        assert!(
            bodies.iter().any(|b| b.contains("alpha"))
                && bodies.iter().any(|b| b.contains("bravo")),
            "{bodies:?}"
        );
    }
}
