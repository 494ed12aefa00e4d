//! The connection's STARTTLS seam: a session over an in-memory stream is
//! upgraded with a throwaway self-signed certificate, and plaintext the
//! client pipelined after STARTTLS is dropped, not read as commands; and a
//! whole conversation (a real node's config, a real backend socket) that
//! upgrades and then delivers over TLS.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::*;

fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec!["mail.test".to_string()]).unwrap();
    let cert: CertificateDer<'static> = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

#[tokio::test]
async fn starttls_upgrades_the_stream_and_drops_pipelined_plaintext() {
    let (server_tls, client_tls) = configs();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let smtp = Smtp::default();
    let server = tokio::spawn(async move {
        let (_tx, mut stop) = watch::channel(false);
        let mut conn = Conn::new(Box::new(server), &smtp);
        let Input::Line(line) = conn.next(&mut stop).await.unwrap() else {
            panic!("a line")
        };
        assert_eq!(line, b"STARTTLS");
        conn.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
        let mut conn = starttls(conn, Some(server_tls)).await.unwrap();
        // The first line over TLS, not the plaintext NOOP sent before it.
        let Input::Line(line) = conn.next(&mut stop).await.unwrap() else {
            panic!("a line over TLS")
        };
        conn.queue(&Reply::new(250, "2.0.0", "over TLS"));
        conn.flush().await.unwrap();
        line
    });
    let mut client = BufReader::new(client);
    client
        .get_mut()
        .write_all(b"STARTTLS\r\nNOOP injected\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    client.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 2.0.0 Ready to start TLS\r\n");
    let name = ServerName::try_from("mail.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls)
        .connect(name, client.into_inner())
        .await
        .expect("the handshake with the node's certificate");
    let mut tls = BufReader::new(tls);
    tls.get_mut().write_all(b"EHLO c.test\r\n").await.unwrap();
    let mut line = String::new();
    tls.read_line(&mut line).await.unwrap();
    assert_eq!(line, "250 2.0.0 over TLS\r\n");
    assert_eq!(server.await.unwrap(), b"EHLO c.test");
}

#[tokio::test]
async fn without_a_tls_config_starttls_is_an_error_not_a_plaintext_session() {
    let (_client, server) = tokio::io::duplex(1024);
    let conn = Conn::new(Box::new(server), &Smtp::default());
    assert!(starttls(conn, None).await.is_err());
}

/// An HTTP backend on a real socket: answers 200 to everything and sends
/// the body of each POST to the channel.
async fn backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut r = BufReader::new(stream);
                loop {
                    let (mut post, mut length) = (false, 0);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        post |= line.starts_with("POST ");
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    if post {
                        let _ = tx.send(body);
                    }
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if r.get_mut().write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).await.unwrap() > 0,
            "closed after {lines:?}"
        );
        let last = line.as_bytes()[3] == b' ';
        lines.push(line.trim_end().to_string());
        if last {
            return lines;
        }
    }
}

#[tokio::test]
async fn a_conversation_upgrades_with_starttls_then_delivers_over_tls() {
    let (server_tls, client_tls) = configs();
    let (backend, mut bodies) = backend().await;
    let node = Node::new("1".into(), "secret".into(), Vec::new());
    let config: crate::model::NodeConfig = serde_json::from_value(serde_json::json!({
        "version": 1, "traffic_type": "smtp", "listen": "127.0.0.1:0", "algorithm": "round_robin",
        "backends": [{"address": backend.to_string(), "weight": 1}],
        "health_check": {"protocol": "HTTP", "port": 0, "request-path": "/", "criteria":
            {"interval": 5, "timeout": 5, "health-threshold": 2, "unhealth-threshold": 2}},
        "smtp": Smtp::default()}))
    .unwrap();
    node.apply(config).await.unwrap();
    let active = node.active.load_full().unwrap();
    let (client, server) = tokio::io::duplex(64 * 1024);
    let (_stop, stop_rx) = watch::channel(false);
    let session = tokio::spawn(async move {
        let smtp = Smtp::default();
        let conn = Conn::new(Box::new(server), &smtp);
        let peer = "127.0.0.9:4000".parse().unwrap();
        converse(&node, &active, conn, peer, &smtp, Some(server_tls), stop_rx).await
    });
    let mut plain = BufReader::new(client);
    assert!(read_reply(&mut plain).await[0].starts_with("220 "));
    plain.get_mut().write_all(b"EHLO c.test\r\n").await.unwrap();
    let ehlo = read_reply(&mut plain).await;
    assert!(ehlo.iter().any(|l| l[4..] == *"STARTTLS"), "{ehlo:?}");
    // MAIL before the upgrade is fine; the upgrade forgets it.
    plain
        .get_mut()
        .write_all(b"MAIL FROM:<a@x.test>\r\nSTARTTLS\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut plain).await, ["250 2.1.0 Sender OK"]);
    assert_eq!(
        read_reply(&mut plain).await,
        ["220 2.0.0 Ready to start TLS"]
    );
    let name = ServerName::try_from("mail.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls)
        .connect(name, plain.into_inner())
        .await
        .unwrap();
    let mut tls = BufReader::new(tls);
    tls.get_mut()
        .write_all(b"RCPT TO:<b@y.test>\r\nEHLO c.test\r\n")
        .await
        .unwrap();
    assert_eq!(read_reply(&mut tls).await[0], "503 5.5.1 Send MAIL first");
    let ehlo = read_reply(&mut tls).await;
    assert!(!ehlo.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    tls.get_mut()
        .write_all(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n")
        .await
        .unwrap();
    for code in ["250", "250", "354"] {
        assert!(read_reply(&mut tls).await[0].starts_with(code));
    }
    tls.get_mut()
        .write_all(b"Subject: tls\r\n\r\n..\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut tls).await,
        ["250 2.0.0 Message accepted for delivery"]
    );
    assert_eq!(read_reply(&mut tls).await, ["221 2.0.0 Bye"]);
    assert_eq!(bodies.recv().await.unwrap(), b"Subject: tls\r\n\r\n.\r\n");
    session.await.unwrap().unwrap();
}
