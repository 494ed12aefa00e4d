//! SMTP into HTTP end to end (issue 17 §2): a real lbd makes an smtp
//! instance, its real lb-node speaks SMTP to Python's smtplib and to raw
//! sockets, and each accepted message reaches a real HTTP backend as a
//! POST with the envelope in headers.

mod common;

use common::auth_service::AuthService;
use common::smtp::{failure, python, send, smtp_instance, MailSink, Raw, MESSAGE};
use common::Lbd;
use serde_json::json;

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
