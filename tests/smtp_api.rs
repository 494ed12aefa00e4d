//! SMTP instances at the API and in lbctl (issue 17 §2): the `smtp`
//! object's refusals with their codes (the store unchanged), and the
//! `--smtp-*` flags, against a real lbd.

mod common;

use common::smtp::{smtp_instance, MailSink};
use common::Lbd;
use serde_json::{json, Value};

fn instances(lbd: &Lbd) -> Value {
    let (s, v) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn bad_smtp_input_is_refused_with_its_code_and_the_store_is_unchanged() {
    let lbd = Lbd::start();
    let sink = MailSink::start();
    smtp_instance(
        &lbd,
        "mail",
        sink.addr(),
        json!({"smtp": {"max_recipients": 7}}),
    );
    let before = instances(&lbd);
    let backend = sink.addr().to_string();
    let create = |traffic: &str, extra: Value| {
        let mut info = json!({"name": "bad", "project": "demo", "traffic_type": traffic,
                              "port": 2600, "backend": {"entities": [backend]}});
        for (k, v) in extra.as_object().unwrap() {
            info[k] = v.clone();
        }
        lbd.api(&json!({"action": "create", "type": "instance", "info": info}))
    };
    let cases = [
        ("http", json!({"smtp": {}}), 422, "smtp_not_allowed"),
        (
            "smtp",
            json!({"smtp": {"max_recipients": 0}}),
            422,
            "invalid_smtp_limit",
        ),
        (
            "smtp",
            json!({"smtp": {"idle_timeout": 100000}}),
            422,
            "invalid_smtp_limit",
        ),
        (
            "smtp",
            json!({"smtp": {"deliver_path": "in"}}),
            422,
            "invalid_smtp_deliver_path",
        ),
        (
            "smtp",
            json!({"smtp": {"deliver": "/in"}}),
            400,
            "unknown_field",
        ),
        (
            "smtp",
            json!({"rules": [{"name": "r", "action": {"reject": 403}}]}),
            400,
            "invalid_field",
        ),
        (
            "smtp",
            json!({"auth": {"mode": "api_key", "keys": [{"name": "k", "key": "key-0123456789"}]}}),
            422,
            "invalid_smtp_auth",
        ),
    ];
    for (traffic, extra, status, code) in cases {
        let (s, v) = create(traffic, extra.clone());
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{extra}: {v}"
        );
    }
    let update = |smtp: Value| {
        lbd.api(&json!({"action": "update", "type": "instance",
                        "info": {"project": "demo", "name": "mail", "smtp": smtp}}))
    };
    let (s, v) = update(json!({"deliver_path": "/a b"}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_smtp_deliver_path")),
        "{v}"
    );
    let (s, v) = update(json!({"max_line_length": 10}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_smtp_limit")),
        "{v}"
    );
    let strip = |mut v: Value| {
        for i in v["info"].as_array_mut().into_iter().flatten() {
            for volatile in [
                "nodes",
                "events",
                "samples",
                "operating_status",
                "updated_at",
            ] {
                i.as_object_mut().unwrap().remove(volatile);
            }
        }
        v
    };
    assert_eq!(
        strip(instances(&lbd)),
        strip(before),
        "the store is unchanged"
    );
    // A good update replaces only what it names.
    let (s, v) = update(json!({"idle_timeout": 60}));
    assert_eq!(s, 200, "{v}");
    let smtp = &lbd.instance("demo", "mail")["smtp"];
    assert_eq!(
        (
            smtp["idle_timeout"].as_u64(),
            smtp["max_recipients"].as_u64()
        ),
        (Some(60), Some(7))
    );
}

#[test]
fn lbctl_creates_and_updates_an_smtp_instance_with_its_flags() {
    let lbd = Lbd::start();
    let sink = MailSink::start();
    lbd.lbctl_ok(&["project", "create", "demo"]);
    let backend = sink.addr().to_string();
    lbd.lbctl_ok(&[
        "instance",
        "create",
        "mail",
        "--project",
        "demo",
        "--type",
        "smtp",
        "--port",
        "2525",
        "--backend",
        &backend,
        "--smtp-deliver-path",
        "/in",
        "--smtp-max-recipients",
        "5",
        "--smtp-max-message-bytes",
        "4096",
    ]);
    let smtp = &lbd.instance("demo", "mail")["smtp"];
    assert_eq!(smtp["deliver_path"], "/in");
    assert_eq!(
        (
            smtp["max_recipients"].as_u64(),
            smtp["max_message_bytes"].as_u64()
        ),
        (Some(5), Some(4096))
    );
    let table = lbd.lbctl_ok(&["instance", "info", "mail", "--project", "demo"]);
    assert!(table.contains("POST /in, 4096 bytes, 5 rcpt"), "{table}");
    lbd.lbctl_ok(&[
        "instance",
        "update",
        "mail",
        "--project",
        "demo",
        "--smtp-idle-timeout",
        "30",
    ]);
    lbd.wait_active("demo", "mail");
    let smtp = &lbd.instance("demo", "mail")["smtp"];
    assert_eq!(
        (
            smtp["idle_timeout"].as_u64(),
            smtp["max_recipients"].as_u64()
        ),
        (Some(30), Some(5))
    );
    // A bad value is lbd's refusal, with its code.
    let out = lbd.lbctl(&[
        "instance",
        "update",
        "mail",
        "--project",
        "demo",
        "--smtp-max-line-length",
        "10",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_smtp_limit"),
        "{out:?}"
    );
}
