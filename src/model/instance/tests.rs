use super::*;
use serde_json::json;

struct Tagged;
impl SecretHasher for Tagged {
    fn hash(&self, s: &str) -> String {
        format!("hash-of-{}", s.len())
    }
}

fn create(v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
    serde_json::from_value::<InstanceCreate>(v)
        .map_err(|e| ValidationError::from_serde(&e))?
        .validate(&Tagged)
}

fn update(spec: &InstanceSpec, v: serde_json::Value) -> Result<InstanceSpec, ValidationError> {
    let mut v = v;
    v["project"] = json!("demo");
    v["name"] = json!("web");
    serde_json::from_value::<InstanceUpdate>(v)
        .unwrap()
        .apply_to(spec, &Tagged)
}

fn base() -> serde_json::Value {
    json!({"name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
           "backend": {"entities": ["127.0.0.1:9001"]}})
}

#[test]
fn seed_shape_is_accepted() {
    let spec = create(json!({
        "type": "instance", "name": "web", "project": "demo", "traffic_type": "http",
        "subnet": "127.1.0.0/24",
        "backend": {
            "entities": ["127.0.0.1:9001", "127.0.0.2", "http://127.0.0.3:81/", {"address": "127.0.0.4:82", "weight": 3}],
            "health-check": {"protocol": "HTTP", "port": 80, "request-path": "/",
                "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
            "auto-scaling": true
        }
    }))
    .unwrap();
    assert_eq!(spec.port, 80);
    let addrs: Vec<String> = spec
        .backends
        .iter()
        .map(|m| m.address.to_string())
        .collect();
    assert_eq!(
        addrs,
        [
            "127.0.0.1:9001",
            "127.0.0.2:80",
            "127.0.0.3:81",
            "127.0.0.4:82"
        ]
    );
    assert_eq!(spec.backends[3].weight, 3);
    assert!(spec.auto_scaling);
    assert_eq!(spec.subnet.unwrap().to_string(), "127.1.0.0/24");
}

#[test]
fn host_names_and_the_seed_lists_are_entities() {
    let spec = create(json!({
        "name": "web", "project": "demo", "traffic_type": "http", "port": 8080,
        "backend": {"entities": [["10.0.0.1:80"], ["http://app:8000"], "App.Internal:8000",
            "localhost", {"address": "db.internal:5432", "weight": 3}, "http://10.0.0.2/"]}
    }))
    .unwrap();
    let addrs: Vec<String> = spec
        .backends
        .iter()
        .map(|m| m.address.to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:80", "10.0.0.2:80"]);
    let names: Vec<(String, u32)> = spec
        .named_backends
        .iter()
        .map(|m| (m.address.to_string(), m.weight))
        .collect();
    assert_eq!(
        names,
        [
            ("app:8000".to_string(), 1),
            ("app.internal:8000".to_string(), 1),
            ("localhost:8080".to_string(), 1),
            ("db.internal:5432".to_string(), 3)
        ]
    );
    let node = spec.node_config(1, "127.0.0.1".parse().unwrap());
    assert_eq!(node.named_backends, spec.named_backends);
    // A stored spec without names reads as before, and one with them round-trips.
    let stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        serde_json::from_value::<InstanceSpec>(stored).unwrap(),
        spec
    );
    let plain = serde_json::to_value(create(base()).unwrap()).unwrap();
    assert!(plain.get("named_backends").is_none(), "{plain}");
    // An update with entities replaces both kinds.
    let next = update(&spec, json!({"backend": {"entities": ["10.0.0.9:80"]}})).unwrap();
    assert!(next.named_backends.is_empty());
    let err = create(json!({
        "name": "web", "project": "demo", "traffic_type": "tcp", "port": 8080,
        "backend": {"entities": ["http://app:8000"]}
    }))
    .unwrap_err();
    assert_eq!(err.code(), "invalid_backend");
}

#[test]
fn health_check_defaults() {
    let hc = create(base()).unwrap().health_check;
    assert_eq!(hc.protocol, HealthProtocol::Http);
    assert_eq!((hc.criteria.interval, hc.criteria.timeout), (5, 5));
    assert_eq!(
        (hc.criteria.health_threshold, hc.criteria.unhealth_threshold),
        (2, 2)
    );
}

#[test]
fn refuses_bad_fields() {
    let cases = [
        (json!({"port": 0}), "invalid_port"),
        (json!({"port": 65536}), "invalid_port"),
        (json!({"port": "80"}), "invalid_field"),
        (json!({"name": "Web"}), "invalid_name"),
        (json!({"traffic_type": "udp"}), "invalid_field"),
        (json!({"subnet": "10.0.0.0/33"}), "invalid_subnet"),
        (json!({"backend": {"entities": []}}), "invalid_backend"),
        (
            json!({"backend": {"entities": ["example..com:80"]}}),
            "invalid_backend",
        ),
        (
            json!({"backend": {"entities": ["app:80", "APP:80"]}}),
            "invalid_backend",
        ),
        (json!({"backend": {"entities": [7]}}), "invalid_field"),
        (
            json!({"backend": {"entities": ["127.0.0.1:99999"]}}),
            "invalid_backend",
        ),
        (
            json!({"backend": {"entities": ["127.0.0.1:80", "127.0.0.1:80"]}}),
            "invalid_backend",
        ),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "healthcheck": {}}}),
            "unknown_field",
        ),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"criteria": {"interval": 1, "timeout": 2}}}}),
            "invalid_health_check",
        ),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"request-path": "x"}}}),
            "invalid_health_check",
        ),
        (json!({"min_nodes": 0}), "invalid_auto_scaling"),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": "399-200"}}}),
            "invalid_health_check",
        ),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": "200,abc"}}}),
            "invalid_health_check",
        ),
        (
            json!({"backend": {"entities": ["1.2.3.4"], "health-check": {"expected-codes": 200}}}),
            "invalid_field",
        ),
        (json!({"proxy_protocol": "v2"}), "invalid_field"),
        (json!({"hash_on": "header:x-user"}), "invalid_field"),
        (
            json!({"algorithm": "consistent_hash", "hash_on": "cookie"}),
            "invalid_field",
        ),
        (json!({"algorithm": "fastest"}), "invalid_field"),
        (json!({"timeouts": {"connect_ms": 0}}), "invalid_field"),
        (json!({"timeouts": {"connect": 5}}), "unknown_field"),
        (json!({"max_connections": 0}), "invalid_field"),
        (json!({"max_header_bytes": 100}), "invalid_field"),
        (json!({"max_header_bytes": 2_000_000}), "invalid_field"),
        (json!({"colour": "red"}), "unknown_field"),
    ];
    for (patch, code) in cases {
        let mut v = base();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        assert_eq!(create(v.clone()).unwrap_err().code(), code, "{v}");
    }
}

#[test]
fn expected_codes_are_parsed_once_and_kept_as_written() {
    let mut v = base();
    v["backend"]["health-check"] = json!({"expected-codes": "200, 301-302"});
    let spec = create(v).unwrap();
    let codes = &spec.health_check.expected_codes;
    assert!(codes.contains(200) && codes.contains(302) && !codes.contains(204));
    // Stored and pushed to nodes as the same string, and read back to the same value.
    let stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(stored["health_check"]["expected-codes"], "200, 301-302");
    let back: InstanceSpec = serde_json::from_value(stored).unwrap();
    assert_eq!(back, spec);
    let node = serde_json::to_value(spec.node_config(1, "127.0.0.1".parse().unwrap())).unwrap();
    assert_eq!(node["health_check"]["expected-codes"], "200, 301-302");
    // Absent, it is the default range.
    assert_eq!(
        create(base()).unwrap().health_check.expected_codes.as_str(),
        "200-399"
    );
}

#[test]
fn a_stored_spec_keeps_its_shape_and_old_ones_still_read() {
    let mut v = base();
    v["algorithm"] = json!("consistent_hash");
    v["hash_on"] = json!("header:x-user");
    v["max_connections"] = json!(77);
    let spec = create(v).unwrap();
    let stored = serde_json::to_value(&spec).unwrap();
    assert_eq!(stored["algorithm"], "consistent_hash");
    assert_eq!(stored["hash_on"], "header:x-user");
    assert_eq!(stored["max_connections"], 77);
    assert!(stored.get("tuning").is_none(), "{stored}");
    assert_eq!(
        serde_json::from_value::<InstanceSpec>(stored).unwrap(),
        spec
    );
    // A spec stored by the first release: none of the later fields.
    let old = json!({
        "name": "web", "traffic_type": "http", "port": 80, "algorithm": "round_robin",
        "subnet": null, "backends": [{"address": "127.0.0.1:9001", "weight": 1}],
        "health_check": {"protocol": "HTTP", "port": 0, "request-path": "/",
            "criteria": {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
        "auto_scaling": false, "min_nodes": 1
    });
    let old: InstanceSpec = serde_json::from_value(old).unwrap();
    assert_eq!(old.tuning.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(old.tuning.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    assert_eq!(old.tuning.hash_on, HashOn::ClientIp);
    assert_eq!(old.max_nodes, DEFAULT_MAX_NODES);
    assert_eq!(old.health_check.expected_codes.as_str(), "200-399");
}

#[test]
fn a_node_config_carries_the_tuning_as_is() {
    let mut v = base();
    v["traffic_type"] = json!("tcp");
    v["proxy_protocol"] = json!("v2");
    v["timeouts"] = json!({"connect_ms": 250});
    let spec = create(v).unwrap();
    let c = spec.node_config(9, "127.0.0.5".parse().unwrap());
    assert_eq!(c.tuning, spec.tuning);
    assert_eq!(c.tuning.proxy_protocol, ProxyProtocol::V2);
    assert_eq!(c.tuning.timeouts.connect_ms, 250);
    assert_eq!(
        (c.version, c.listen.to_string()),
        (9, "127.0.0.5:8080".into())
    );
}

#[test]
fn tcp_needs_a_port() {
    let mut v = base();
    v["traffic_type"] = json!("tcp");
    v.as_object_mut().unwrap().remove("port");
    assert_eq!(create(v).unwrap_err().code(), "missing_field");
}

#[test]
fn update_replaces_only_given_fields() {
    let spec = create(base()).unwrap();
    let upd: InstanceUpdate = serde_json::from_value(json!({
        "project": "demo", "name": "web", "backend": {"entities": ["127.0.0.1:9002", "127.0.0.1:9003"]}
    }))
    .unwrap();
    let next = upd.apply_to(&spec, &Tagged).unwrap();
    assert_eq!(next.backends.len(), 2);
    assert_eq!(next.port, 8080);
    assert_eq!(next.health_check, spec.health_check);
    let bad: InstanceUpdate =
        serde_json::from_value(json!({"project": "demo", "name": "web", "port": 70000})).unwrap();
    assert_eq!(
        bad.apply_to(&spec, &Tagged).unwrap_err().code(),
        "invalid_port"
    );
}

fn with_policy() -> InstanceSpec {
    let mut v = base();
    v["pools"] = json!({"api": {"entities": ["127.0.0.1:9101"]}});
    v["rules"] = json!([
        {"name": "api", "match": {"path_prefix": "/api/"}, "action": {"pool": "api"}},
        {"name": "ops", "require_groups": ["ops"], "match": {"path_prefix": "/ops/"},
         "action": {"pool": "default"}}
    ]);
    v["auth"] = json!({"mode": "basic", "users": [{"name": "ann", "password": "pw-123456", "groups": ["ops"]}]});
    v["rate_limits"] = json!([{"name": "ip", "key": "client_ip", "period": 10, "threshold": 5}]);
    create(v).unwrap()
}

#[test]
fn create_validates_the_policy_with_its_own_codes() {
    let spec = with_policy();
    assert_eq!(spec.policy.pools.len(), 1);
    assert_eq!(spec.policy.rules.len(), 2);
    let cases = [
        (
            json!({"rules": [{"name": "a", "action": {"pool": "nope"}}]}),
            "unknown_pool",
        ),
        (json!({"rules": [{"name": "a"}]}), "missing_rule_action"),
        (
            json!({"rate_limits": [{"name": "a", "key": "client_ip", "period": 0, "threshold": 1}]}),
            "invalid_rate_limit_period",
        ),
        (
            json!({"auth": {"mode": "service", "url": "ftp://x/"}}),
            "invalid_auth_url",
        ),
    ];
    for (patch, code) in cases {
        let mut v = base();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        assert_eq!(create(v.clone()).unwrap_err().code(), code, "{v}");
    }
    let mut tcp = base();
    tcp["traffic_type"] = json!("tcp");
    tcp["rules"] = json!([]);
    assert_eq!(create(tcp).unwrap_err().code(), "invalid_field");
}

#[test]
fn an_update_replaces_given_policy_fields_and_checks_the_result() {
    let spec = with_policy();
    // Absent fields stay; a given one replaces.
    let next = update(&spec, json!({"rate_limits": []})).unwrap();
    assert!(next.policy.rate_limits.is_empty());
    assert_eq!(next.policy.rules, spec.policy.rules);
    assert_eq!(next.policy.auth, spec.policy.auth);
    // A rule left naming a removed pool.
    let e = update(&spec, json!({"pools": {}})).unwrap_err();
    assert_eq!(e.code(), "unknown_pool");
    // require_groups left without auth.
    let e = update(&spec, json!({"auth": "none"})).unwrap_err();
    assert_eq!(e.code(), "invalid_rule");
    let next = update(&spec, json!({"auth": "none", "rules": []})).unwrap();
    assert!(next.policy.auth.is_none() && next.policy.rules.is_empty());
    // A tcp instance takes no policy field.
    let mut tcp = base();
    tcp["traffic_type"] = json!("tcp");
    let tcp = create(tcp).unwrap();
    assert_eq!(
        update(&tcp, json!({"rules": []})).unwrap_err().code(),
        "invalid_field"
    );
}

#[test]
fn an_smtp_instance_always_has_its_smtp_object_and_http_backends() {
    let mut v = base();
    v["traffic_type"] = json!("smtp");
    v.as_object_mut().unwrap().remove("port");
    v["backend"]["entities"] = json!(["http://127.0.0.1:9001/"]);
    let spec = create(v.clone()).unwrap();
    assert_eq!(spec.port, 25);
    assert_eq!(spec.smtp, Some(crate::model::smtp::Smtp::default()));
    assert_eq!(spec.health_check.protocol, HealthProtocol::Http);
    let node = spec.node_config(1, "127.0.0.5".parse().unwrap());
    assert_eq!(node.smtp, spec.smtp);
    // An update names some fields; the others stay.
    let next = update(&spec, json!({"smtp": {"max_recipients": 3}})).unwrap();
    let smtp = next.smtp.unwrap();
    assert_eq!((smtp.max_recipients, smtp.idle_timeout), (3, 300));
    // Not on another type, and not with what smtp does not take.
    assert_eq!(
        update(&create(base()).unwrap(), json!({"smtp": {}}))
            .unwrap_err()
            .code(),
        "smtp_not_allowed"
    );
    let mut pools = v.clone();
    pools["pools"] = json!({"api": {"entities": ["127.0.0.1:9101"]}});
    assert_eq!(create(pools).unwrap_err().code(), "invalid_field");
    let mut sticky = v;
    sticky["backend"]["sticky"] = json!({"cookie": "c"});
    assert_eq!(create(sticky).unwrap_err().code(), "invalid_sticky");
}

#[test]
fn an_update_keeps_credentials_by_name_without_their_secrets() {
    let spec = with_policy();
    let stored_hash = |s: &InstanceSpec| match &s.policy.auth {
        Some(crate::model::policy::Auth::Basic { users, .. }) => {
            (users[0].hash.clone(), users[0].groups.clone())
        }
        other => panic!("{other:?}"),
    };
    let next = update(
        &spec,
        json!({"auth": {"mode": "basic", "users": [{"name": "ann", "groups": ["ops", "dev"]}]}}),
    )
    .unwrap();
    assert_eq!(stored_hash(&next).0, stored_hash(&spec).0);
    assert_eq!(stored_hash(&next).1, ["ops", "dev"]);
    let e = update(
        &spec,
        json!({"auth": {"mode": "basic", "users": [{"name": "bob"}]}}),
    )
    .unwrap_err();
    assert_eq!(e.code(), "invalid_auth");
    // What info shows, sent back as is, changes nothing.
    let shown = spec.policy.to_spec();
    let v = json!({"pools": shown.pools, "rules": shown.rules, "auth": shown.auth,
                   "rate_limits": shown.rate_limits});
    assert_eq!(update(&spec, v).unwrap(), spec);
}

#[test]
fn standby_nodes_default_to_none_are_bounded_and_cost_quota() {
    let spec = create(base()).unwrap();
    assert_eq!(spec.standby_nodes, 0);
    // Absent from the stored JSON while 0, so older specs read the same.
    assert!(serde_json::to_value(&spec)
        .unwrap()
        .get("standby_nodes")
        .is_none());
    let mut with = base();
    with["standby_nodes"] = json!(2);
    with["min_nodes"] = json!(3);
    let spec = create(with).unwrap();
    assert_eq!((spec.standby_nodes, spec.quota_nodes()), (2, 5));
    for bad in [-1, 17] {
        let mut v = base();
        v["standby_nodes"] = json!(bad);
        assert_eq!(create(v).unwrap_err().code(), "invalid_auto_scaling");
        assert_eq!(
            update(&spec, json!({"standby_nodes": bad}))
                .unwrap_err()
                .code(),
            "invalid_auto_scaling"
        );
    }
    let fewer = update(&spec, json!({"standby_nodes": 0})).unwrap();
    assert_eq!((fewer.standby_nodes, fewer.min_nodes), (0, 3));
    let kept = update(&spec, json!({"min_nodes": 1})).unwrap();
    assert_eq!(kept.standby_nodes, 2, "absent keeps it");
}
