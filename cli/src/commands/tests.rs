//! Command lines to requests: the seed's field names, only what was given,
//! and a flag for every field of the API (checked against its schema).

use clap::Parser;
use serde_json::json;

use super::*;
use crate::args::Cli;
use lbaas::model::{UserCreate, UserUpdate};

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("lbctl").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The envelope a command line sends, as JSON.
fn env_of(args: &[&str]) -> Value {
    serde_json::to_value(request(&cli(args).command).unwrap().envelope).unwrap()
}

#[test]
fn project_commands() {
    assert_eq!(
        env_of(&[
            "project",
            "create",
            "demo",
            "--user",
            "john",
            "--subnet",
            "127.5.0.0/16"
        ]),
        json!({"action": "create", "type": "project", "info": {"name": "demo", "user": "john", "subnet": "127.5.0.0/16"}})
    );
    assert_eq!(
        env_of(&["project", "list"]),
        json!({"action": "info", "type": "project", "info": {}})
    );
    assert_eq!(
        env_of(&["project", "info", "demo"])["info"],
        json!({"name": "demo"})
    );
    assert_eq!(
        env_of(&["project", "update", "demo", "--user", "ann"])["info"],
        json!({"name": "demo", "user": "ann"})
    );
    assert_eq!(
        env_of(&["project", "delete", "demo", "--force"])["info"],
        json!({"name": "demo", "force": true})
    );
}

#[test]
fn health_and_autoscale_flags_map_to_the_seed_fields() {
    let e = env_of(&[
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "http",
        "--backend",
        "10.0.0.1:80",
        "--health-check",
        "http:8081:/healthz",
        "--interval",
        "2",
        "--check-timeout",
        "1",
        "--healthy-threshold",
        "3",
        "--unhealthy-threshold",
        "4",
        "--autoscale",
        "--min-nodes",
        "2",
        "--max-nodes",
        "6",
    ]);
    assert_eq!(
        e["info"]["backend"],
        json!({"entities": ["10.0.0.1:80"], "auto-scaling": true, "health-check": {
            "protocol": "HTTP", "port": 8081, "request-path": "/healthz",
            "criteria": {"interval": 2, "timeout": 1, "health-threshold": 3, "unhealth-threshold": 4}}})
    );
    assert_eq!(
        (
            e["info"]["min_nodes"].clone(),
            e["info"]["max_nodes"].clone()
        ),
        (json!(2), json!(6))
    );
    let t = env_of(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--health-check",
        "tcp",
    ]);
    assert_eq!(
        t["info"],
        json!({"project": "demo", "name": "web", "backend": {"health-check": {"protocol": "TCP"}}})
    );
    for bad in ["http:healthz", "udp", "http:x:/a"] {
        assert!(
            crate::args::Cli::try_parse_from([
                "lbctl",
                "instance",
                "update",
                "web",
                "--project",
                "p",
                "--health-check",
                bad,
            ])
            .is_err(),
            "{bad}"
        );
    }
}

#[test]
fn instance_commands_with_repeated_and_comma_backends() {
    let e = env_of(&[
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
        "10.0.0.1:80,10.0.0.2:80",
        "--backend",
        "10.0.0.3:80",
    ]);
    assert_eq!(
        e,
        json!({"action": "create", "type": "instance", "info": {
            "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
            "backend": {"entities": ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]}}})
    );
    assert_eq!(
        env_of(&["instance", "list", "--project", "demo"])["info"],
        json!({"project": "demo"})
    );
    let a = env_of(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--algorithm",
        "least-connections",
    ]);
    assert_eq!(
        a["info"],
        json!({"project": "demo", "name": "web", "algorithm": "least_connections"})
    );
    let u = env_of(&[
        "instance",
        "update",
        "web",
        "--project",
        "demo",
        "--backend",
        "10.0.0.9:80",
    ]);
    assert_eq!(
        u["info"],
        json!({"project": "demo", "name": "web", "backend": {"entities": ["10.0.0.9:80"]}})
    );
    let d = env_of(&["instance", "delete", "web", "--project", "demo"]);
    assert_eq!(
        (d["action"].as_str(), d["info"]["name"].as_str()),
        (Some("delete"), Some("web"))
    );
}

#[test]
fn create_requires_a_backend_and_a_type() {
    assert!(Cli::try_parse_from([
        "lbctl",
        "instance",
        "create",
        "web",
        "--project",
        "p",
        "--type",
        "http"
    ])
    .is_err());
    assert!(Cli::try_parse_from([
        "lbctl",
        "instance",
        "create",
        "web",
        "--project",
        "p",
        "--backend",
        "1.2.3.4:80"
    ])
    .is_err());
    assert!(Cli::try_parse_from([
        "lbctl",
        "instance",
        "create",
        "web",
        "--project",
        "p",
        "--type",
        "udp",
        "--backend",
        "x"
    ])
    .is_err());
}

/// A command line that gives every flag of `instance create`.
const CREATE_ALL: &[&str] = &[
    "instance",
    "create",
    "web",
    "--project",
    "demo",
    "--type",
    "tcp",
    "--port",
    "8080",
    "--subnet",
    "127.1.0.0/24",
    "--backend",
    "10.0.0.1:80, 10.0.0.2:80=2,",
    "--algorithm",
    "consistent_hash",
    "--health-check",
    "http:8081:/healthz",
    "--expected-codes",
    "200-299",
    "--interval",
    "2",
    "--check-timeout",
    "1",
    "--healthy-threshold",
    "3",
    "--unhealthy-threshold",
    "4",
    "--auto-scaling",
    "true",
    "--min-nodes",
    "2",
    "--max-nodes",
    "6",
    "--target-rps",
    "500",
    "--target-connections",
    "100",
    "--scale-out-after",
    "2",
    "--scale-in-after",
    "10",
    "--low-water-percent",
    "40",
    "--cooldown",
    "30",
    "--hash-on",
    "header:X-User",
    "--connect-timeout-ms",
    "1000",
    "--first-byte-timeout-ms",
    "2000",
    "--client-idle-timeout-ms",
    "3000",
    "--backend-idle-timeout-ms",
    "4000",
    "--handshake-timeout-ms",
    "5000",
    "--max-connections",
    "500",
    "--max-header-bytes",
    "32768",
    "--proxy-protocol",
    "v1",
    "--backend-protocol",
    "h2c",
    "--backend-server-name",
    "app.internal",
    "--sticky-cookie",
    "pin",
    "--sticky-ttl",
    "60",
    "--smtp-deliver-path",
    "/in",
    "--smtp-max-message-bytes",
    "4096",
    "--smtp-max-recipients",
    "5",
    "--smtp-idle-timeout",
    "60",
    "--smtp-max-line-length",
    "1024",
    "--smtp-max-bad-commands",
    "3",
];

/// The same for `instance update` (which has no type or subnet: they are fixed).
fn update_all() -> Vec<&'static str> {
    let mut args = vec!["instance", "update", "web", "--project", "demo"];
    let mut rest = CREATE_ALL[5..].iter().copied();
    while let Some(flag) = rest.next() {
        let value = rest.next().unwrap();
        if !["--type", "--subnet"].contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args
}

#[test]
fn every_flag_lands_in_its_field() {
    let scaling = json!({"target_requests_per_s": 500, "target_connections": 100,
        "scale_out_after": 2, "scale_in_after": 10, "low_water_percent": 40, "cooldown": 30});
    let backend = json!({
        "entities": ["10.0.0.1:80", {"address": "10.0.0.2:80", "weight": 2}],
        "health-check": {"protocol": "HTTP", "port": 8081, "request-path": "/healthz",
            "expected-codes": "200-299",
            "criteria": {"interval": 2, "timeout": 1, "health-threshold": 3, "unhealth-threshold": 4}},
        "auto-scaling": true, "sticky": {"cookie": "pin", "ttl": 60},
        "backend_tls": {"verify": true, "server_name": "app.internal"}});
    let tuning = json!({"hash_on": "header:x-user", "max_connections": 500, "proxy_protocol": "v1",
        "max_header_bytes": 32768, "backend_protocol": "h2c",
        "timeouts": {"connect_ms": 1000, "first_byte_ms": 2000, "client_idle_ms": 3000,
            "backend_idle_ms": 4000, "handshake_ms": 5000}});
    let mut create = json!({"name": "web", "project": "demo", "traffic_type": "tcp", "port": 8080,
        "subnet": "127.1.0.0/24", "algorithm": "consistent_hash", "backend": backend,
        "min_nodes": 2, "max_nodes": 6, "scaling": scaling});
    let mut update = json!({"name": "web", "project": "demo", "port": 8080,
        "algorithm": "consistent_hash", "backend": backend,
        "min_nodes": 2, "max_nodes": 6, "scaling": scaling});
    // Sent as given whatever the type (lbd refuses `smtp` on a tcp one).
    let smtp = json!({"smtp": {"deliver_path": "/in", "max_message_bytes": 4096,
        "max_recipients": 5, "idle_timeout": 60, "max_line_length": 1024, "max_bad_commands": 3}});
    for (k, v) in tuning
        .as_object()
        .unwrap()
        .iter()
        .chain(smtp.as_object().unwrap())
    {
        create[k] = v.clone();
        update[k] = v.clone();
    }
    assert_eq!(
        env_of(CREATE_ALL),
        json!({"action": "create", "type": "instance", "info": create})
    );
    assert_eq!(
        env_of(&update_all()),
        json!({"action": "update", "type": "instance", "info": update})
    );
}

#[test]
fn tuning_flags_alone_send_only_themselves() {
    let base = ["instance", "update", "web", "--project", "demo"];
    let info = |extra: &[&str]| env_of(&[&base[..], extra].concat())["info"].clone();
    assert_eq!(
        info(&["--connect-timeout-ms", "500"]),
        json!({"project": "demo", "name": "web", "timeouts": {"connect_ms": 500}})
    );
    assert_eq!(
        info(&["--cooldown", "60"]),
        json!({"project": "demo", "name": "web", "scaling": {"cooldown": 60}})
    );
    assert_eq!(
        info(&["--hash-on", "client_ip", "--proxy-protocol", "none"]),
        json!({"project": "demo", "name": "web", "hash_on": "client_ip", "proxy_protocol": "none"})
    );
    assert_eq!(
        info(&["--backend", "10.0.0.9:80=0"]),
        json!({"project": "demo", "name": "web", "backend": {"entities": [{"address": "10.0.0.9:80", "weight": 0}]}})
    );
    // Values the model refuses are usage errors, before anything is sent.
    for bad in [
        &["--hash-on", "cookie:x"][..],
        &["--proxy-protocol", "v3"],
        &["--algorithm", "fastest"],
        &["--backend", "10.0.0.1:80=heavy"],
        &["--max-connections", "-1"],
    ] {
        let err = Cli::try_parse_from(["lbctl"].iter().chain(&base).chain(bad)).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}");
    }
}

#[test]
fn enum_flags_take_every_model_value_in_its_json_spelling() {
    let values =
        crate::args::enum_values(&schemars::schema_for!(lbaas::model::Algorithm).to_value());
    assert_eq!(values.len(), 4, "{values:?}");
    assert!(values.iter().all(|(_, help)| help.is_some()), "{values:?}");
    for (value, _) in &values {
        let e = env_of(&[
            "instance",
            "update",
            "web",
            "--project",
            "p",
            "--algorithm",
            value,
        ]);
        assert_eq!(e["info"]["algorithm"], json!(value));
        // The dashed spelling lbctl always took still works.
        let dashed = value.replace('_', "-");
        let e = env_of(&[
            "instance",
            "update",
            "web",
            "--project",
            "p",
            "--algorithm",
            &dashed,
        ]);
        assert_eq!(e["info"]["algorithm"], json!(value));
    }
    let protocols =
        crate::args::enum_values(&schemars::schema_for!(lbaas::model::ProxyProtocol).to_value());
    let names: Vec<&str> = protocols.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(names, ["none", "v1", "v2"]);
}

/// Where `value` leaves a property of `schema` unset: every property,
/// recursively through objects, and, inside arrays, every shape an item
/// may take (a backend as text and as an object).
fn unset(schema: &Value, root: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    let Some(shape) = shapes(schema, root).into_iter().find(|s| is_kind(s, value)) else {
        out.push(format!("{path} (got {value})"));
        return;
    };
    if let Some(props) = shape.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let here = format!("{path}.{name}");
            match value.get(name) {
                Some(v) => unset(prop, root, v, &here, out),
                None => out.push(here),
            }
        }
    }
    if let (Some(items), Some(elements)) = (shape.get("items"), value.as_array()) {
        for item in shapes(items, root) {
            let here = format!("{path}[{}]", item["type"]);
            match elements.iter().find(|e| is_kind(item, e)) {
                Some(e) => unset(item, root, e, &here, out),
                None => out.push(here),
            }
        }
    }
}

/// The shapes a value of `schema` may take, `$ref`s resolved, null (an
/// unset `Option`) left out.
fn shapes<'a>(schema: &'a Value, root: &'a Value) -> Vec<&'a Value> {
    let schema = match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => root
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("no {r} in the schema")),
        None => schema,
    };
    match schema.get("anyOf").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .flat_map(|s| shapes(s, root))
            .filter(|s| s["type"] != "null")
            .collect(),
        None => vec![schema],
    }
}

/// Whether `value` is of one of the JSON types `schema` names (any, when it names none).
fn is_kind(schema: &Value, value: &Value) -> bool {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    match &schema["type"] {
        Value::String(t) => t == kind || (t == "number" && kind == "integer"),
        Value::Array(ts) => ts.iter().any(|t| t == kind),
        _ => true,
    }
}

/// Every flag of `user create` and `user update`.
const USER_CREATE_ALL: &[&str] = &[
    "user",
    "create",
    "alice",
    "--role",
    "reader",
    "--max-projects",
    "2",
    "--max-instances",
    "-1",
    "--max-nodes",
    "0",
];
const USER_UPDATE_ALL: &[&str] = &[
    "user",
    "update",
    "alice",
    "--role",
    "admin",
    "--max-projects",
    "-1",
    "--max-instances",
    "3",
    "--max-nodes",
    "4",
];

/// Fails when a field of the API (in its published schema) has no lbctl
/// flag: the command lines above give every flag there is, so a field they
/// leave unset is one no flag can set.
#[test]
fn every_field_of_the_api_has_a_flag() {
    // The seed's `"type": "instance"` inside the object: a tag the envelope
    // already carries, not a setting.
    // The seed's `type` tag, and its one-element-list form of an entity
    // (`[["10.0.0.1:80"]]`, the same as the entity): for pasted JSON, not flags.
    const TAGS: &[&str] = &["info.type", "info.backend.entities[\"array\"]"];
    // The L7 policy is not set by `create`/`update` flags but by the policy
    // commands: `pool`, `rule` and `apply -f` (which sends all four; see
    // `policy::tests::apply_sends_all_four_fields_and_removes_what_the_file_leaves_out`).
    const POLICY: &[&str] = &["info.pools", "info.rules", "info.auth", "info.rate_limits"];
    // `backend.managed` comes from the `--managed-*` flags, which exclude
    // `--backend` (see `managed::tests::managed_flags_parse_into_backend_managed`).
    const MANAGED: &[&str] = &["info.backend.managed"];
    // `--sticky-hash` excludes `--sticky-cookie`, which the lines above
    // give (see `args::sticky::tests::flags_make_the_spec`).
    const STICKY: &[&str] = &["info.backend.sticky.hash"];
    // `tls` comes from `--cert`/`--key` (files read as the flags are
    // parsed), `--self-signed`, `--min-tls-version` and
    // `--redirect-http-port`; `tests/tls.rs` runs them against a real lbd.
    const TLS: &[&str] = &["info.tls"];
    // The default pool's own protocol: lbctl's `--backend-protocol` sets
    // the instance's, which the default pool takes; named pools set their
    // own with `pool add --backend-protocol`.
    const DEFAULT_POOL_PROTOCOL: &[&str] = &["info.backend.backend_protocol"];
    // `--backend-ca` reads a file as the flags are parsed (no file here);
    // `tests/backend_tls.rs` gives it to a real lbd.
    const BACKEND_CA: &[&str] = &["info.backend.backend_tls.ca"];
    for (args, schema) in [
        (
            CREATE_ALL.to_vec(),
            schemars::schema_for!(InstanceCreate).to_value(),
        ),
        (
            update_all(),
            schemars::schema_for!(InstanceUpdate).to_value(),
        ),
        (
            USER_CREATE_ALL.to_vec(),
            schemars::schema_for!(UserCreate).to_value(),
        ),
        // `rotate_token` is the `rotate-token` subcommand, not a flag of `update`.
        (
            USER_UPDATE_ALL.to_vec(),
            schemars::schema_for!(UserUpdate).to_value(),
        ),
    ] {
        let mut info = env_of(&args)["info"].clone();
        if args[..2] == ["user", "update"] {
            info["rotate_token"] =
                env_of(&["user", "rotate-token", "alice"])["info"]["rotate_token"].clone();
        }
        let mut missing = Vec::new();
        unset(&schema, &schema, &info, "info", &mut missing);
        missing.retain(|m| {
            !TAGS.contains(&m.as_str())
                && !POLICY.contains(&m.as_str())
                && !MANAGED.contains(&m.as_str())
                && !STICKY.contains(&m.as_str())
                && !TLS.contains(&m.as_str())
                && !DEFAULT_POOL_PROTOCOL.contains(&m.as_str())
                && !BACKEND_CA.contains(&m.as_str())
        });
        assert!(
            missing.is_empty(),
            "{} has no flag for {missing:?}",
            args[..2].join(" ")
        );
    }
}

#[test]
fn answers_are_read_into_the_shape_of_the_command() {
    let shape = |args: &[&str]| request(&cli(args).command).unwrap().shape;
    assert_eq!(shape(&["project", "list"]), Shape::Projects);
    assert_eq!(shape(&["project", "info", "demo"]), Shape::Project);
    assert_eq!(
        shape(&["instance", "list", "--project", "demo"]),
        Shape::Instances
    );
    assert_eq!(
        shape(&["instance", "events", "web", "--project", "demo"]),
        Shape::Instance
    );
    assert_eq!(
        env_of(&[
            "instance",
            "events",
            "web",
            "--project",
            "demo",
            "--minutes",
            "5"
        ])["info"],
        json!({"project": "demo", "name": "web", "history": 300})
    );
    assert!(request(&cli(&["top"]).command).is_none());
}

/// The rule `rule add ARGS` would add.
fn rule_of(args: &[&str]) -> Value {
    let mut all = vec![
        "instance",
        "rule",
        "add",
        "r",
        "--instance",
        "web",
        "--project",
        "demo",
    ];
    all.extend_from_slice(args);
    match cli(&all).command {
        Command::Instance(InstanceCmd::Rule(crate::args::RuleCmd::Add(a))) => {
            serde_json::to_value(policy::rule_spec(&a)).unwrap()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_field_of_a_rule_has_a_flag_of_rule_add() {
    let matches = [
        "--host",
        "*.example.com",
        "--path-prefix",
        "/api/",
        "--path-regex",
        "^/api/v[0-9]+/",
        "--method",
        "GET,POST",
        "--header",
        "X-Env=beta",
        "--cookie",
        "s=*",
        "--source-cidr",
        "10.0.0.0/8",
        "--set-header",
        "X-A=1",
        "--remove-header",
        "Cookie",
        "--public",
        "--require-group",
        "ops",
    ];
    // One action per rule: a field is uncovered only if no action's rule has it.
    let actions: [&[&str]; 4] = [
        &["--to", "api", "--strip-prefix"],
        &["--redirect", "https://x.example/", "--code", "301"],
        &["--reject", "403"],
        &[
            "--respond-status",
            "200",
            "--respond-body",
            "hi",
            "--respond-content-type",
            "text/plain",
        ],
    ];
    let schema = schemars::schema_for!(lbaas::model::policy::RuleSpec).to_value();
    let mut uncovered: Option<Vec<String>> = None;
    for action in actions {
        let rule = rule_of(&[&matches[..], action].concat());
        let mut missing = Vec::new();
        unset(&schema, &schema, &rule, "rule", &mut missing);
        uncovered = Some(match uncovered {
            None => missing,
            Some(before) => before.into_iter().filter(|m| missing.contains(m)).collect(),
        });
    }
    // A rule's own auth object is set with `apply -f`; `--public` is its "none".
    let uncovered: Vec<String> = uncovered
        .unwrap()
        .into_iter()
        .filter(|m| !m.starts_with("rule.auth"))
        .collect();
    assert!(
        uncovered.is_empty(),
        "rule add has no flag for {uncovered:?}"
    );
    let rule = rule_of(&["--path-prefix", "/api/", "--to", "api", "--strip-prefix"]);
    assert_eq!(
        rule,
        json!({"name": "r", "match": {"path_prefix": "/api/"},
               "action": {"pool": "api", "strip_prefix": true}})
    );
}
