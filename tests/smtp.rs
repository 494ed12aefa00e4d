//! SMTP into HTTP end to end (issue 17 §2): a real lbd makes an smtp
//! instance, its real lb-node speaks SMTP to Python's smtplib and to raw
//! sockets, and each accepted message reaches a real HTTP backend as a
//! POST with the envelope in headers.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::auth_service::AuthService;
use common::mail_sink::MailSink;
use common::{Lbd, TempDir};
use serde_json::{json, Value};

const PORT: u16 = 2525;

/// A message with a line holding a single `.` and one starting with one,
/// CRLF line ends: what the backend must get byte for byte.
const MESSAGE: &[u8] = b"From: ann@sender.test\r\nTo: bob@rcpt.test\r\nSubject: dots\r\n\r\nfirst line\r\n.\r\n..two dots\r\n.leading dot\r\nlast line\r\n";

fn python() -> bool {
    let ok = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    common::require("python3", ok)
}

/// Creates project `demo` (once) and smtp instance `name` with `extra`
/// fields; returns its node's listener.
fn smtp_instance(lbd: &Lbd, name: &str, backend: SocketAddr, extra: Value) -> SocketAddr {
    let (s, v) = lbd.api(&json!({"action": "create", "type": "project", "info": {"name": "demo"}}));
    assert!(s == 200 || v.to_string().contains("exists"), "{v}");
    let mut info = json!({"name": name, "project": "demo", "traffic_type": "smtp", "port": PORT,
                          "backend": {"entities": [backend.to_string()]}});
    for (k, v) in extra.as_object().unwrap() {
        info[k] = v.clone();
    }
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": info}));
    assert_eq!(s, 200, "{v}");
    let info = lbd.wait_active("demo", name);
    let address = info["nodes"][0]["address"].as_str().unwrap();
    format!("{address}:{PORT}").parse().unwrap()
}

/// smtplib sends `message` `count` times; its JSON report.
fn send(
    addr: SocketAddr,
    message: &[u8],
    to: &[&str],
    login: Option<(&str, &str)>,
    count: u32,
) -> Value {
    let dir = TempDir::new("smtp-msg");
    let file = dir.0.join("message.eml");
    std::fs::write(&file, message).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/smtp_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(&file)
        .args(["--from", "ann@sender.test", "--count", &count.to_string()]);
    for t in to {
        cmd.args(["--to", t]);
    }
    if let Some((user, password)) = login {
        cmd.args(["--user", user, "--password", password]);
    }
    let out = cmd.output().expect("running smtp_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "smtp_client.py: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The failing step and its code, or `("", 0)` when everything passed.
fn failure(report: &Value) -> (String, u64) {
    (
        report["failed"].as_str().unwrap_or("").to_string(),
        report["code"].as_u64().unwrap_or(0),
    )
}

/// A raw SMTP connection: the test writes lines and reads reply lines.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let conn = TcpStream::connect(addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        let mut raw = Raw {
            reader: BufReader::new(conn.try_clone().unwrap()),
            writer: conn,
        };
        assert_eq!(raw.reply().0, 220, "banner");
        raw
    }

    fn write(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// One whole reply: its code and its lines' texts (0 at EOF).
    fn reply(&mut self) -> (u16, Vec<String>) {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return (0, lines);
            }
            let code = line[..3].parse().expect("a reply code");
            let last = line.as_bytes()[3] == b' ';
            lines.push(line[4..].trim_end().to_string());
            if last {
                return (code, lines);
            }
        }
    }

    fn codes(&mut self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.reply().0).collect()
    }

    /// Whether the node closed the connection (EOF, nothing more).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

#[test]
fn smtplib_delivers_the_exact_message_and_envelope_without_auth() {
    if !python() {
        return;
    }
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let addr = smtp_instance(
        &lbd,
        "mail",
        sink.addr(),
        json!({"smtp": {"deliver_path": "/in/mail"}}),
    );
    let report = send(
        addr,
        MESSAGE,
        &["bob@rcpt.test", "carol@rcpt.test"],
        None,
        1,
    );
    assert_eq!(failure(&report), (String::new(), 0), "{report}");
    let got = sink.wait_for(1).remove(0);
    assert_eq!(
        (got.method.as_str(), got.path.as_str()),
        ("POST", "/in/mail")
    );
    assert_eq!(got.body, MESSAGE, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.header("x-smtp-mail-from"), Some("ann@sender.test"));
    assert_eq!(
        got.header("x-smtp-rcpt-to"),
        Some("bob@rcpt.test,carol@rcpt.test")
    );
    assert_eq!(got.header("x-smtp-helo"), Some("client.test"));
    assert_eq!(got.header("x-smtp-client-ip"), Some("127.0.0.1"));
    assert_eq!(got.header("x-auth-token"), None);
    // info shows the resolved object, the defaults filled in.
    let info = lbd.instance("demo", "mail");
    assert_eq!(info["traffic_type"], "smtp");
    assert_eq!(info["smtp"]["deliver_path"], "/in/mail");
    assert_eq!(info["smtp"]["max_message_bytes"], 10 * 1024 * 1024);
    assert_eq!(info["smtp"]["idle_timeout"], 300);
    assert!(
        info["url"].as_str().unwrap().starts_with("smtp://"),
        "{info}"
    );
}

#[test]
fn basic_users_log_in_a_bad_password_gets_535_and_the_token_travels() {
    if !python() {
        return;
    }
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let auth = json!({"mode": "basic", "users": [{"name": "ann", "password": "ann-password-1"}]});
    let addr = smtp_instance(&lbd, "mail", sink.addr(), json!({"auth": auth}));
    let bad = send(addr, MESSAGE, &["bob@rcpt.test"], Some(("ann", "wrong")), 1);
    assert_eq!(failure(&bad), ("login".into(), 535), "{bad}");
    // Without logging in, MAIL is refused.
    let anonymous = send(addr, MESSAGE, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&anonymous), ("mail".into(), 530), "{anonymous}");
    let good = send(
        addr,
        MESSAGE,
        &["bob@rcpt.test"],
        Some(("ann", "ann-password-1")),
        1,
    );
    assert_eq!(failure(&good), (String::new(), 0), "{good}");
    assert_eq!(good["replies"][0], json!(["login", 235]));
    let got = sink.wait_for(1);
    assert_eq!(got.len(), 1, "only the logged-in message arrived");
    assert_eq!(got[0].header("x-auth-token"), Some("ann"));
    assert_eq!(got[0].body, MESSAGE);
}

#[test]
fn the_auth_service_is_asked_with_protocol_smtp() {
    if !python() {
        return;
    }
    let Some(service) = AuthService::start() else {
        return;
    };
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let auth = json!({"mode": "service", "url": service.url()});
    let addr = smtp_instance(&lbd, "mail", sink.addr(), json!({"auth": auth}));
    let bad = send(
        addr,
        MESSAGE,
        &["bob@rcpt.test"],
        Some(("alice", "nope")),
        1,
    );
    assert_eq!(failure(&bad), ("login".into(), 535), "{bad}");
    let good = send(
        addr,
        MESSAGE,
        &["bob@rcpt.test"],
        Some(("alice", "wonderland")),
        1,
    );
    assert_eq!(failure(&good), (String::new(), 0), "{good}");
    let last = &service.calls()["last"];
    assert_eq!(last["protocol"], "smtp", "{last}");
    assert_eq!(last["username"], "alice");
    assert_eq!(last["method"], "POST");
    assert_eq!(last["uri"], "/messages");
    assert_eq!(
        sink.wait_for(1)[0].header("x-auth-token"),
        Some("tok-alice")
    );
}

#[test]
fn backend_answers_map_to_250_451_and_554_and_no_backend_to_421() {
    if !python() {
        return;
    }
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let addr = smtp_instance(&lbd, "mail", sink.addr(), json!({}));
    sink.answer(429);
    let r = send(addr, MESSAGE, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&r), ("data".into(), 451), "{r}");
    sink.answer(500);
    let r = send(addr, MESSAGE, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&r), ("data".into(), 554), "{r}");
    sink.answer(202);
    let r = send(addr, MESSAGE, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&r), (String::new(), 0), "{r}");
    assert_eq!(sink.wait_for(3).len(), 3);
    // The backend goes away: the client gets 421, not a dropped connection.
    drop(sink);
    let mut raw = Raw::connect(addr);
    raw.write(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(raw.codes(4), [250, 250, 250, 354]);
    raw.write(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let (code, text) = raw.reply();
    assert_eq!(code, 421, "{text:?}");
    assert!(text[0].starts_with("4.3.2"), "{text:?}");
    assert!(raw.closed());
}

#[test]
fn a_rate_limited_sender_gets_451_per_client_ip_and_per_auth_token() {
    if !python() {
        return;
    }
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let users = json!({"mode": "basic", "users": [
        {"name": "ann", "password": "ann-password-1"},
        {"name": "bob", "password": "bob-password-1"}]});
    let limits = json!([{"name": "per-user", "key": "auth_token", "period": 3600, "threshold": 2}]);
    let addr = smtp_instance(
        &lbd,
        "mail",
        sink.addr(),
        json!({"auth": users, "rate_limits": limits}),
    );
    let ann = send(
        addr,
        MESSAGE,
        &["x@rcpt.test"],
        Some(("ann", "ann-password-1")),
        3,
    );
    assert_eq!(failure(&ann), ("data".into(), 451), "{ann}");
    assert_eq!(
        ann["replies"].as_array().unwrap().len(),
        3,
        "login and two sends: {ann}"
    );
    let bob = send(
        addr,
        MESSAGE,
        &["x@rcpt.test"],
        Some(("bob", "bob-password-1")),
        1,
    );
    assert_eq!(
        failure(&bob),
        (String::new(), 0),
        "another user has his own count: {bob}"
    );
    assert_eq!(sink.wait_for(3).len(), 3);

    let per_ip = json!([{"name": "per-ip", "key": "client_ip", "period": 3600, "threshold": 1}]);
    let addr = smtp_instance(&lbd, "open", sink.addr(), json!({"rate_limits": per_ip}));
    let r = send(addr, MESSAGE, &["x@rcpt.test"], None, 2);
    assert_eq!(failure(&r), ("data".into(), 451), "{r}");
    let mut raw = Raw::connect(addr);
    raw.write(b"HELO c\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(raw.codes(4), [250, 250, 250, 354]);
    raw.write(b"x\r\n.\r\n");
    let (code, text) = raw.reply();
    assert_eq!(
        (code, text[0].starts_with("4.7.1")),
        (451, true),
        "{text:?}"
    );
    assert_eq!(
        sink.deliveries().len(),
        4,
        "limited messages never reach the backend"
    );
}

#[test]
fn an_oversize_message_gets_552_by_size_or_by_data() {
    if !python() {
        return;
    }
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let addr = smtp_instance(
        &lbd,
        "mail",
        sink.addr(),
        json!({"smtp": {"max_message_bytes": 2048}}),
    );
    let big: Vec<u8> = [
        &b"Subject: big\r\n\r\n"[..],
        &b"0123456789abcdef\r\n".repeat(200),
    ]
    .concat();
    // smtplib announces SIZE=, which MAIL FROM refuses.
    let r = send(addr, &big, &["bob@rcpt.test"], None, 1);
    assert_eq!(failure(&r), ("mail".into(), 552), "{r}");
    // Without SIZE, the message is read and refused at its end; the
    // connection goes on.
    let mut raw = Raw::connect(addr);
    raw.write(b"EHLO c\r\n");
    let (code, ehlo) = raw.reply();
    assert_eq!(code, 250);
    assert!(ehlo.contains(&"SIZE 2048".to_string()), "{ehlo:?}");
    raw.write(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(raw.codes(3), [250, 250, 354]);
    raw.write(&big);
    raw.write(b".\r\nNOOP\r\n");
    let (code, text) = raw.reply();
    assert_eq!(
        (code, text[0].as_str()),
        (552, "5.3.4 Message size exceeds fixed maximum message size")
    );
    assert_eq!(raw.codes(1), [250], "NOOP after the refusal");
    assert!(sink.deliveries().is_empty());
}

#[test]
fn pipelined_commands_are_answered_in_order() {
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let addr = smtp_instance(
        &lbd,
        "mail",
        sink.addr(),
        json!({"smtp": {"max_recipients": 2}}),
    );
    let mut raw = Raw::connect(addr);
    raw.write(b"EHLO c.test\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@y.test>\r\nRCPT TO:<d@y.test>\r\nNOOP\r\nDATA\r\n");
    let (code, ehlo) = raw.reply();
    assert_eq!(code, 250);
    for ext in ["PIPELINING", "8BITMIME", "SIZE 10485760"] {
        assert!(ehlo.contains(&ext.to_string()), "{ext}: {ehlo:?}");
    }
    assert!(
        !ehlo.iter().any(|l| l.starts_with("AUTH")),
        "no auth configured: {ehlo:?}"
    );
    assert_eq!(raw.codes(7), [250, 250, 501, 250, 452, 250, 354]);
    raw.write(b"Subject: p\r\n\r\n..\r\n.\r\nRSET\r\nMAIL FROM:<>\r\nQUIT\r\n");
    assert_eq!(raw.codes(4), [250, 250, 250, 221]);
    assert!(raw.closed());
    let got = sink.wait_for(1).remove(0);
    assert_eq!(got.body, b"Subject: p\r\n\r\n.\r\n");
    assert_eq!(got.header("x-smtp-rcpt-to"), Some("b@y.test,c@y.test"));
}

#[test]
fn long_lines_and_bad_commands_are_capped_and_idle_clients_are_closed() {
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let smtp = json!({"max_line_length": 512, "max_bad_commands": 3, "idle_timeout": 1});
    let addr = smtp_instance(&lbd, "mail", sink.addr(), json!({"smtp": smtp}));
    let mut raw = Raw::connect(addr);
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    raw.write(long.as_bytes());
    raw.write(b"FROB\r\nNOOP\r\nMAIL FROM:<a@x.test>\r\n");
    let (code, text) = raw.reply();
    assert_eq!((code, text[0].as_str()), (500, "5.5.6 Line too long"));
    assert_eq!(raw.codes(2), [500, 250]);
    // The third bad command (MAIL before EHLO) closes the connection.
    let (code, text) = raw.reply();
    assert_eq!(code, 421, "{text:?}");
    assert!(raw.closed());
    // A client that says nothing is told so after idle_timeout, and closed.
    let mut idle = Raw::connect(addr);
    let (code, text) = idle.reply();
    assert_eq!(
        (code, text[0].as_str()),
        (421, "4.4.2 Idle timeout, closing connection")
    );
    assert!(idle.closed());
}

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
