//! The connection's STARTTLS seam: a session over an in-memory stream is
//! upgraded with a throwaway self-signed certificate, and plaintext the
//! client pipelined after STARTTLS is dropped, not read as commands.

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
