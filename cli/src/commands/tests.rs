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

/// A `federation` with every field set.
fn federation_all() -> Value {
    json!({
        "providers": {
            "sp1": {"entities": ["10.0.0.5:8776"], "token_url": "http://10.0.0.5:5000/token",
                    "algorithm": "least_connections",
                    "health-check": {"protocol": "HTTP", "request-path": "/healthz"}},
            "sp2": {"entities": [{"address": "10.0.0.6:8776", "weight": 2}]}
        },
        "resource_paths": ["/{project}/{type}/{id}", "/v2.1/{project}/{type}/{id}"],
        "aggregate": [{"path": "/{project}/{type}", "method": "GET", "list_key": "{type}",
                       "id_key": "id", "sort_key": "name"}],
        "token_header": "X-Auth-Token",
        "search_timeout_ms": 2000,
        "negative_ttl_s": 30
    })
}

/// A file holding [`federation_all`], for `--federation` (read as the
/// flags are parsed): a committed fixture, so no test leaves a file.
fn federation_file() -> &'static str {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/federation_all.json"
    )
}

#[test]
fn the_federation_fixture_is_federation_all() {
    let text = std::fs::read_to_string(federation_file()).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v, federation_all());
}

/// A command line that gives every flag of `instance create`.
fn create_all() -> Vec<&'static str> {
    let mut args = CREATE_ALL.to_vec();
    args.extend(["--federation", federation_file()]);
    args
}

/// Every flag of `instance create` but those that read files.
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
    "--standby-nodes",
    "1",
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
    let mut rest = create_all().into_iter().skip(5);
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
        "min_nodes": 2, "max_nodes": 6, "standby_nodes": 1, "scaling": scaling});
    let mut update = json!({"name": "web", "project": "demo", "port": 8080,
        "algorithm": "consistent_hash", "backend": backend,
        "min_nodes": 2, "max_nodes": 6, "standby_nodes": 1, "scaling": scaling});
    // Sent as given whatever the type (lbd refuses `smtp` on a tcp one).
    let smtp = json!({"smtp": {"deliver_path": "/in", "max_message_bytes": 4096,
        "max_recipients": 5, "idle_timeout": 60, "max_line_length": 1024, "max_bad_commands": 3}});
    let federation = json!({"federation": federation_all()});
    for (k, v) in tuning
        .as_object()
        .unwrap()
        .iter()
        .chain(smtp.as_object().unwrap())
        .chain(federation.as_object().unwrap())
    {
        create[k] = v.clone();
        update[k] = v.clone();
    }
    assert_eq!(
        env_of(&create_all()),
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
            create_all(),
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

/// The request `instance mapping ARGS` sends, its token files read from `files`.
fn mapping_of(args: &[&str], files: &[(&str, &str)]) -> Result<Value, mapping::MappingError> {
    let mut all = vec!["instance", "mapping"];
    all.extend_from_slice(args);
    let mut read = |path: &str| {
        files
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    };
    mapping::request(&cli(&all).command, &mut read)
        .expect("a mapping command")
        .map(|r| {
            let list = args.first() == Some(&"list");
            assert_eq!(
                r.shape,
                if list {
                    Shape::Mappings
                } else {
                    Shape::MappingChange
                }
            );
            serde_json::to_value(r.envelope).unwrap()
        })
}

const WEB: &[&str] = &["--instance", "web", "--project", "demo"];

/// `args` (a subcommand and its flags) for the instance web of demo.
fn with_web<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [args, WEB].concat()
}

const ADD_RESOURCE: &[&str] = &[
    "add",
    "--kind",
    "resource",
    "--type",
    "volumes",
    "--id",
    "v1",
    "--provider",
    "sp2",
];
const ADD_TOKEN: &[&str] = &[
    "add",
    "--kind",
    "token",
    "--local-token",
    "LOCAL-SECRET",
    "--local-project",
    "alice",
    "--provider",
    "sp1",
    "--remote-token",
    "REMOTE-SECRET",
    "--remote-project",
    "sp1-alice",
    "--expires-at",
    "1900000000",
];

#[test]
fn mapping_add_sends_a_create_mapping_of_its_kind() {
    assert_eq!(
        mapping_of(&[ADD_RESOURCE, WEB].concat(), &[]).unwrap(),
        json!({"action": "create", "type": "mapping", "info": {
            "project": "demo", "instance": "web", "kind": "resource",
            "type": "volumes", "id": "v1", "provider": "sp2"}})
    );
    assert_eq!(
        mapping_of(&[ADD_TOKEN, WEB].concat(), &[]).unwrap(),
        json!({"action": "create", "type": "mapping", "info": {
            "project": "demo", "instance": "web", "kind": "token",
            "local_token": "LOCAL-SECRET", "local_project": "alice", "provider": "sp1",
            "remote_token": "REMOTE-SECRET", "remote_project": "sp1-alice",
            "expires_at": 1_900_000_000u64}})
    );
}

#[test]
fn mapping_tokens_come_from_files_or_stdin_trimmed() {
    let args = with_web(&[
        "add",
        "--kind",
        "token",
        "--local-token-file",
        "/run/alice.token",
        "--local-project",
        "alice",
        "--provider",
        "sp1",
        "--remote-token-file",
        "-",
        "--remote-project",
        "sp1-alice",
    ]);
    let e = mapping_of(
        &args,
        &[
            ("/run/alice.token", "LOCAL-SECRET\n"),
            ("-", "  REMOTE-SECRET\r\n"),
        ],
    )
    .unwrap();
    assert_eq!(e["info"]["local_token"], "LOCAL-SECRET");
    assert_eq!(e["info"]["remote_token"], "REMOTE-SECRET");
    assert!(e["info"].get("expires_at").is_none());
    // One stdin for two tokens is refused before either is read.
    let both = with_web(&[
        "add",
        "--kind",
        "token",
        "--local-token-file",
        "-",
        "--local-project",
        "alice",
        "--provider",
        "sp1",
        "--remote-token-file",
        "-",
        "--remote-project",
        "sp1-alice",
    ]);
    assert_eq!(
        mapping_of(&both, &[]).unwrap_err(),
        mapping::MappingError::BothStdin
    );
    let missing = mapping_of(&args, &[("-", "R")]).unwrap_err();
    assert!(
        matches!(&missing, mapping::MappingError::Read { flag: "--local-token-file", path, .. } if path == "/run/alice.token"),
        "{missing:?}"
    );
    let empty = mapping_of(&args, &[("/run/alice.token", " \n"), ("-", "R")]).unwrap_err();
    assert_eq!(
        empty.to_string(),
        "--local-token-file /run/alice.token: no token in it"
    );
}

#[test]
fn mapping_list_and_remove_send_info_and_delete() {
    assert_eq!(
        mapping_of(&with_web(&["list"]), &[]).unwrap(),
        json!({"action": "info", "type": "mapping", "info": {"project": "demo", "instance": "web"}})
    );
    assert_eq!(
        mapping_of(&with_web(&["list", "--kind", "token"]), &[]).unwrap()["info"],
        json!({"project": "demo", "instance": "web", "kind": "token"})
    );
    assert_eq!(
        mapping_of(
            &with_web(&["remove", "--kind", "resource", "--type", "volumes", "--id", "v1"]),
            &[]
        )
        .unwrap(),
        json!({"action": "delete", "type": "mapping", "info": {
            "project": "demo", "instance": "web", "kind": "resource", "type": "volumes", "id": "v1"}})
    );
    assert_eq!(
        mapping_of(
            &with_web(&[
                "remove",
                "--kind",
                "token",
                "--local-token-file",
                "t",
                "--local-project",
                "alice",
                "--provider",
                "sp1"
            ]),
            &[("t", "LOCAL-SECRET\n")]
        )
        .unwrap(),
        json!({"action": "delete", "type": "mapping", "info": {
            "project": "demo", "instance": "web", "kind": "token",
            "local_token": "LOCAL-SECRET", "local_project": "alice", "provider": "sp1"}})
    );
}

#[test]
fn mapping_flags_a_kind_lacks_or_does_not_take_are_refused_before_sending() {
    use mapping::MappingError::{Missing, NotForKind};
    let cases: &[(&[&str], mapping::MappingError)] = &[
        (
            &[
                "add",
                "--kind",
                "resource",
                "--type",
                "volumes",
                "--provider",
                "sp2",
            ],
            Missing {
                kind: "resource",
                flag: "--id",
            },
        ),
        (
            &[
                "add",
                "--kind",
                "resource",
                "--id",
                "v1",
                "--provider",
                "sp2",
            ],
            Missing {
                kind: "resource",
                flag: "--type",
            },
        ),
        (
            &[ADD_RESOURCE, &["--remote-project", "x"]].concat(),
            NotForKind {
                kind: "resource",
                flag: "--remote-project",
            },
        ),
        (
            &[ADD_RESOURCE, &["--local-token", "LOCAL-SECRET"]].concat(),
            NotForKind {
                kind: "resource",
                flag: "--local-token",
            },
        ),
        (
            &[ADD_TOKEN, &["--id", "v1"]].concat(),
            NotForKind {
                kind: "token",
                flag: "--id",
            },
        ),
        (
            &ADD_TOKEN[..11],
            Missing {
                kind: "token",
                flag: "--remote-project",
            },
        ),
        (
            &[&ADD_TOKEN[..9], &["--remote-project", "x"]].concat(),
            Missing {
                kind: "token",
                flag: "--remote-token or --remote-token-file",
            },
        ),
        (
            &[
                "add",
                "--kind",
                "token",
                "--provider",
                "sp1",
                "--local-project",
                "a",
                "--remote-project",
                "b",
                "--remote-token",
                "REMOTE-SECRET",
            ],
            Missing {
                kind: "token",
                flag: "--local-token or --local-token-file",
            },
        ),
        (
            &[
                "remove",
                "--kind",
                "token",
                "--local-token",
                "LOCAL-SECRET",
                "--local-project",
                "a",
            ],
            Missing {
                kind: "token",
                flag: "--provider",
            },
        ),
        (
            &[
                "remove",
                "--kind",
                "resource",
                "--type",
                "v",
                "--id",
                "1",
                "--local-project",
                "a",
            ],
            NotForKind {
                kind: "resource",
                flag: "--local-project",
            },
        ),
    ];
    for (args, want) in cases {
        let err = mapping_of(&with_web(args), &[]).unwrap_err();
        assert_eq!(&err, want, "{args:?}");
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }
    assert_eq!(
        Missing {
            kind: "resource",
            flag: "--id"
        }
        .to_string(),
        "--kind resource needs --id"
    );
    // What clap itself refuses (usage, exit 2).
    for bad in [
        &["add", "--kind", "resource", "--type", "v", "--id", "1"][..],
        &[
            "add",
            "--kind",
            "volume",
            "--type",
            "v",
            "--id",
            "1",
            "--provider",
            "p",
        ],
        &["add", "--type", "v", "--id", "1", "--provider", "p"],
        &[ADD_TOKEN, &["--local-token-file", "f"]].concat(),
        &[
            "remove",
            "--kind",
            "resource",
            "--type",
            "v",
            "--id",
            "1",
            "--expires-at",
            "5",
        ],
        &["list", "--kind", "both"],
    ] {
        let mut all = vec!["lbctl", "instance", "mapping"];
        all.extend_from_slice(bad);
        all.extend_from_slice(WEB);
        let err = Cli::try_parse_from(&all).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{bad:?}");
    }
}

/// What lbctl sends, lbd's own checks take: the flag checks and the model's agree.
#[test]
fn every_mapping_request_passes_the_models_validation() {
    let file = [("t", "LOCAL-SECRET")];
    let lines: Vec<Vec<&str>> = vec![
        with_web(ADD_RESOURCE),
        with_web(ADD_TOKEN),
        with_web(&["list"]),
        with_web(&["list", "--kind", "resource"]),
        with_web(&["remove", "--kind", "resource", "--type", "v", "--id", "1"]),
        with_web(&[
            "remove",
            "--kind",
            "resource",
            "--type",
            "v",
            "--id",
            "1",
            "--provider",
            "p",
        ]),
        with_web(&[
            "remove",
            "--kind",
            "token",
            "--local-token-file",
            "t",
            "--local-project",
            "a",
            "--provider",
            "p",
        ]),
    ];
    for args in lines {
        let e = mapping_of(&args, &file).unwrap();
        let request: lbaas::model::mapping::MappingRequest =
            serde_json::from_value(e["info"].clone()).unwrap();
        let ok = match e["action"].as_str().unwrap() {
            "create" => request.validate_create().map(drop),
            "delete" => request.validate_delete().map(drop),
            "info" => request.validate_info().map(drop),
            other => panic!("{other}"),
        };
        assert!(ok.is_ok(), "{args:?}: {ok:?}");
    }
}

/// Every field of `MappingRequest` is set by some `mapping add` line.
#[test]
fn every_field_of_a_mapping_has_a_flag() {
    let schema = schemars::schema_for!(lbaas::model::mapping::MappingRequest).to_value();
    let mut uncovered: Option<Vec<String>> = None;
    for args in [ADD_RESOURCE, ADD_TOKEN] {
        let info = mapping_of(&[args, WEB].concat(), &[]).unwrap()["info"].clone();
        let mut missing = Vec::new();
        unset(&schema, &schema, &info, "info", &mut missing);
        uncovered = Some(match uncovered {
            None => missing,
            Some(before) => before.into_iter().filter(|m| missing.contains(m)).collect(),
        });
    }
    assert_eq!(uncovered.unwrap(), Vec::<String>::new());
}

#[test]
fn mapping_tokens_never_show_in_debug_or_output() {
    let parsed = cli(&[&["instance", "mapping"][..], ADD_TOKEN, WEB].concat());
    let debug = format!("{parsed:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("Secret(***)"), "{debug}");
    let Command::Instance(InstanceCmd::Mapping(cmd)) = &parsed.command else {
        panic!("{parsed:?}")
    };
    assert_eq!(
        mapping::change_text(cmd, Some(7)),
        "added token mapping of project alice -> sp1 project sp1-alice (mappings version 7)\n"
    );
    let remove = cli(&[
        &[
            "instance", "mapping", "remove", "--kind", "resource", "--type", "volumes",
        ][..],
        &["--id", "v1"],
        WEB,
    ]
    .concat());
    let Command::Instance(InstanceCmd::Mapping(cmd)) = &remove.command else {
        panic!("{remove:?}")
    };
    assert_eq!(
        mapping::change_text(cmd, None),
        "removed resource mapping volumes/v1\n"
    );
}

#[test]
fn mapping_list_prints_both_tables_or_the_kind_asked() {
    use lbaas::model::mapping::{
        MappingSource, MappingsInfo, ResourceMappingView, TokenMappingView,
    };
    let info = MappingsInfo {
        project: "demo".into(),
        instance: "web".into(),
        version: 3,
        resources: vec![ResourceMappingView {
            resource_type: "volumes".into(),
            id: "v1".into(),
            provider: "sp2".into(),
            source: MappingSource::Learned,
            updated_at: "2026-12-01T10:00:00Z".into(),
        }],
        tokens: vec![
            TokenMappingView {
                local_token_sha256_prefix: "3f2a9c0d1e4b".into(),
                local_project: "alice".into(),
                provider: "sp1".into(),
                remote_project: "sp1-alice".into(),
                expires_at: Some(100),
            },
            TokenMappingView {
                local_token_sha256_prefix: "0123456789ab".into(),
                local_project: "bob".into(),
                provider: "sp2".into(),
                remote_project: "sp2-bob".into(),
                expires_at: None,
            },
        ],
        nodes: vec![],
    };
    assert_eq!(
        mapping::list_text(&info, None, 1000),
        "mappings of web (version 3)\n\
         TYPE     ID  PROVIDER  SOURCE   UPDATED\n\
         volumes  v1  sp2       learned  2026-12-01T10:00:00Z\n\
         \n\
         LOCAL TOKEN          LOCAL PROJECT  PROVIDER  REMOTE PROJECT  EXPIRES\n\
         sha256:3f2a9c0d1e4b  alice          sp1       sp1-alice       1970-01-01T00:01:40Z (expired)\n\
         sha256:0123456789ab  bob            sp2       sp2-bob         never\n"
    );
    let resources_only =
        mapping::list_text(&info, Some(lbaas::model::mapping::MappingKind::Resource), 0);
    assert!(!resources_only.contains("LOCAL TOKEN"), "{resources_only}");
    let empty = MappingsInfo {
        instance: "web".into(),
        ..Default::default()
    };
    assert_eq!(
        mapping::list_text(&empty, Some(lbaas::model::mapping::MappingKind::Token), 0),
        "mappings of web (version 0)\nno token mappings\n"
    );
}

#[test]
fn no_federation_sends_none_and_excludes_federation() {
    let base = ["instance", "update", "web", "--project", "demo"];
    assert_eq!(
        env_of(&[&base[..], &["--no-federation"]].concat())["info"],
        json!({"project": "demo", "name": "web", "federation": "none"})
    );
    let both = Cli::try_parse_from(["lbctl"].iter().chain(&base).chain(&[
        "--no-federation",
        "--federation",
        federation_file(),
    ]))
    .unwrap_err();
    assert_eq!(both.exit_code(), 2);
    // `create` has no `--no-federation` (no flag is none).
    assert!(Cli::try_parse_from([
        "lbctl",
        "instance",
        "create",
        "web",
        "--project",
        "demo",
        "--type",
        "http",
        "--backend",
        "10.0.0.1:80",
        "--no-federation"
    ])
    .is_err());
    // A file that is not a federation is a usage error naming it.
    let bad = std::env::temp_dir().join(format!(
        "lbctl-test-bad-federation-{}.json",
        std::process::id()
    ));
    std::fs::write(&bad, r#"{"providers": {}, "aggregates": []}"#).unwrap();
    let err = Cli::try_parse_from(
        ["lbctl"]
            .iter()
            .chain(&base)
            .chain(&["--federation", bad.to_str().unwrap()]),
    )
    .unwrap_err();
    std::fs::remove_file(&bad).unwrap();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("aggregates"), "{err}");
}
