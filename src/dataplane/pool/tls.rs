//! TLS to the members of a pool with `backend_tls` (re-encryption): a
//! rustls client config per distinct `backend_tls`, built once and kept
//! (`MemberTlsCache`), so a config push does not rebuild it and pooled
//! connections made under it stay usable.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::ring as provider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::model::backend_tls::{ca_certificates, BackendTls};

/// How a pool's members are reached over TLS.
pub struct MemberTls {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<ServerName<'static>>,
    /// Tells pooled connections of different `backend_tls` apart (see `key`).
    pub id: u64,
}

impl std::fmt::Debug for MemberTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberTls").field("id", &self.id).finish()
    }
}

impl MemberTls {
    /// What a pool's connections are keyed by: its `id`, or 0 in the clear.
    pub fn key(tls: Option<&MemberTls>) -> u64 {
        tls.map_or(0, |t| t.id)
    }

    pub fn new(tls: &BackendTls) -> Result<MemberTls, String> {
        let provider = Arc::new(provider::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let mut config = if tls.verify {
            builder
                .with_root_certificates(roots(tls.ca.as_deref())?)
                .with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name = tls
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_string()).map_err(|e| format!("{n:?}: {e}")))
            .transpose()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        tls.hash(&mut hasher);
        Ok(MemberTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            id: hasher.finish() | 1,
        })
    }

    /// The TLS session over `tcp` to `member`, named `server_name` or else
    /// by the member's address.
    pub async fn connect(
        &self,
        member: SocketAddr,
        tcp: TcpStream,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(member.ip().into()));
        self.connector.connect(name, tcp).await
    }
}

/// The pool's `ca`, or the system's roots (read once per process).
fn roots(ca: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in ca_certificates(pem)? {
                store.add(cert).map_err(|e| format!("ca: {e}"))?;
            }
        }
        None => {
            static SYSTEM: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
            let system = SYSTEM.get_or_init(|| rustls_native_certs::load_native_certs().certs);
            store.add_parsable_certificates(system.iter().cloned());
            if store.is_empty() {
                return Err("no system root certificates: give backend_tls.ca".into());
            }
        }
    }
    Ok(store)
}

/// `verify: false`: any certificate is taken, but the handshake's
/// signatures are still checked, so the session is encrypted to whoever
/// holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `MemberTls` of each distinct `backend_tls` seen, kept across configs.
#[derive(Default)]
pub struct MemberTlsCache {
    built: Mutex<HashMap<BackendTls, Arc<MemberTls>>>,
}

impl MemberTlsCache {
    pub fn get(&self, tls: Option<&BackendTls>) -> Result<Option<Arc<MemberTls>>, String> {
        let Some(tls) = tls else {
            return Ok(None);
        };
        let mut built = self.built.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = built.get(tls) {
            return Ok(Some(t.clone()));
        }
        let made = Arc::new(MemberTls::new(tls)?);
        built.insert(tls.clone(), made.clone());
        Ok(Some(made))
    }
}
