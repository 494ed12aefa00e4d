//! STARTTLS on smtp instances (issue 17 §2): an smtp instance with `tls`
//! offers STARTTLS with its certificate; Python's smtplib upgrades
//! (verifying the certificate against the test CA), logs in and sends; the
//! backend gets the exact message; AUTH waits for STARTTLS (538 before
//! it). Without `tls` STARTTLS is not offered,
//! and `redirect_http_port` is refused on smtp.

mod common;

use common::smtp::{failure, python, send_over, smtp_instance, MailSink, Raw, MESSAGE};
use common::tls::{tools_present, Pki};
use common::Lbd;
use serde_json::{json, Value};

/// One command on a raw connection: its reply's code and lines.
fn command(raw: &mut Raw, line: &str) -> (u16, Vec<String>) {
    raw.write(format!("{line}\r\n").as_bytes());
    raw.reply()
}

fn instances(lbd: &Lbd) -> Value {
    let (s, v) =
        lbd.api(&json!({"action": "info", "type": "instance", "info": {"project": "demo"}}));
    assert_eq!(s, 200, "{v}");
    v
}

#[test]
fn smtplib_upgrades_with_starttls_logs_in_and_delivers() {
    if !python() || !tools_present() {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("mail", "mail.test", 2100);
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let auth = json!({"mode": "basic", "users": [{"name": "ann", "password": "ann-password-1"}]});
    let tls = json!({"certificates": [{"cert": leaf.cert_pem, "key": leaf.key_pem}]});
    let addr = smtp_instance(&lbd, "mail", sink.addr(), json!({"auth": auth, "tls": tls}));

    // The EHLO answer offers it.
    let mut raw = Raw::connect(addr);
    let (_, ehlo) = command(&mut raw, "EHLO client.test");
    assert!(ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    // With TLS there, credentials wait for it (RFC 4954 §6).
    assert!(!ehlo.iter().any(|l| l.starts_with("AUTH")), "{ehlo:?}");
    let (code, lines) = command(&mut raw, "AUTH PLAIN AGFubgBhbm4tcGFzc3dvcmQtMQ==");
    assert_eq!(code, 538, "{lines:?}");
    command(&mut raw, "QUIT");

    let report = send_over(
        addr,
        MESSAGE,
        &["bob@rcpt.test"],
        Some(("ann", "ann-password-1")),
        1,
        Some((&pki.ca_path, "mail.test")),
    );
    assert_eq!(failure(&report), (String::new(), 0), "{report}");
    assert_eq!(report["replies"][0][0], "starttls");
    assert_eq!(report["replies"][0][1], 220);
    let version = report["replies"][0][2].as_str().unwrap_or("");
    assert!(version == "TLSv1.2" || version == "TLSv1.3", "{report}");
    assert_eq!(report["replies"][1], json!(["login", 235]));
    let got = sink.wait_for(1).remove(0);
    assert_eq!(got.body, MESSAGE);
    assert_eq!(got.header("x-auth-token"), Some("ann"));

    // A certificate the client does not trust for that name fails the upgrade.
    let wrong_name = send_over(
        addr,
        MESSAGE,
        &["bob@rcpt.test"],
        None,
        1,
        Some((&pki.ca_path, "other.test")),
    );
    assert_eq!(failure(&wrong_name), ("starttls".into(), 0), "{wrong_name}");
    assert!(
        wrong_name["error"]
            .as_str()
            .unwrap_or("")
            .contains("other.test"),
        "{wrong_name}"
    );
    // The key is in no answer.
    let info = lbd.instance("demo", "mail");
    assert!(!info.to_string().contains(&leaf.key_marker()));
    assert_eq!(info["tls"]["certificates"][0]["sans"], json!(["mail.test"]));
}

#[test]
fn without_tls_starttls_is_not_offered_and_a_redirect_port_is_refused() {
    if !tools_present() {
        return;
    }
    let pki = Pki::new();
    let leaf = pki.leaf("mail", "mail.test", 2100);
    let lbd = Lbd::start();
    let sink = MailSink::start();
    let addr = smtp_instance(&lbd, "plain", sink.addr(), json!({}));
    let mut raw = Raw::connect(addr);
    let (_, ehlo) = command(&mut raw, "EHLO client.test");
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    let (code, lines) = command(&mut raw, "STARTTLS");
    assert!((500..600).contains(&code), "{code} {lines:?}");
    command(&mut raw, "QUIT");

    let before = instances(&lbd);
    let (s, v) = lbd.api(&json!({"action": "create", "type": "instance", "info": {
        "name": "redir", "project": "demo", "traffic_type": "smtp", "port": 2526,
        "backend": {"entities": [sink.addr().to_string()]},
        "tls": {"certificates": [{"cert": leaf.cert_pem, "key": leaf.key_pem}],
                "redirect_http_port": 8081}}}));
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (422, Some("invalid_field")),
        "{v}"
    );
    assert_eq!(instances(&lbd), before, "the store is unchanged");
}
