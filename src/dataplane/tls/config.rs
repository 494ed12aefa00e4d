//! The rustls server config of an `https` node, built once per pushed `tls`:
//! the certificates (SNI picks the one whose SAN matches; the first is the
//! default), ALPN `h2` and `http/1.1`, and the oldest version allowed
//! (TLS 1.1 and older are never offered: rustls has none).

use std::sync::Arc;

use rustls::crypto::ring as provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::model::tls::{san_matches, NodeTls, TlsVersion};

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("tls.certificates[{index}]: {reason}")]
    Certificate { index: usize, reason: String },
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("tls: no certificate")]
    Empty,
}

/// Chooses a certificate by SNI. A client without SNI, or naming no SAN,
/// gets the first one.
#[derive(Debug)]
pub struct SniResolver {
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    fn pick(&self, name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let matched = name.and_then(|n| {
            // Exact names first: `a.x` beats `*.x`.
            let exact = self
                .certs
                .iter()
                .find(|(sans, _)| sans.iter().any(|s| s.eq_ignore_ascii_case(n)));
            exact.or_else(|| {
                self.certs
                    .iter()
                    .find(|(sans, _)| sans.iter().any(|s| san_matches(s, n)))
            })
        });
        matched.or_else(|| self.certs.first()).map(|(_, k)| k)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name()).cloned()
    }
}

/// The server config for `tls` (CPU only: parses the PEM it was sent).
pub fn build(tls: &NodeTls) -> Result<Arc<ServerConfig>, TlsConfigError> {
    if tls.certificates.is_empty() {
        return Err(TlsConfigError::Empty);
    }
    let certs = tls
        .certificates
        .iter()
        .enumerate()
        .map(|(index, c)| {
            let bad = |reason: String| TlsConfigError::Certificate { index, reason };
            let chain = CertificateDer::pem_slice_iter(c.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(format!("cert: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(c.key.0.as_bytes())
                .map_err(|e| bad(format!("key: {e}")))?;
            let key = provider::sign::any_supported_type(&key).map_err(|e| bad(e.to_string()))?;
            Ok((c.sans.clone(), Arc::new(CertifiedKey::new(chain, key))))
        })
        .collect::<Result<Vec<_>, TlsConfigError>>()?;
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider::default_provider()))
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tls::{NodeCertificate, PrivateKeyPem};

    fn cert(names: &[&str]) -> NodeCertificate {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        NodeCertificate {
            cert: c.pem(),
            key: PrivateKeyPem(key.serialize_pem()),
            sans: names,
        }
    }

    fn resolver(tls: &NodeTls) -> SniResolver {
        let certs = tls
            .certificates
            .iter()
            .map(|c| {
                let chain = CertificateDer::pem_slice_iter(c.cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_slice(c.key.0.as_bytes()).unwrap();
                let key = provider::sign::any_supported_type(&key).unwrap();
                (c.sans.clone(), Arc::new(CertifiedKey::new(chain, key)))
            })
            .collect();
        SniResolver { certs }
    }

    #[test]
    fn sni_picks_the_matching_certificate_and_defaults_to_the_first() {
        let tls = NodeTls {
            certificates: vec![
                cert(&["a.example"]),
                cert(&["*.b.example"]),
                cert(&["x.b.example"]),
            ],
            min_version: TlsVersion::V1_2,
            redirect_http_port: None,
        };
        assert!(build(&tls).is_ok());
        let r = resolver(&tls);
        let leaf = |n: Option<&str>| r.pick(n).unwrap().cert[0].clone();
        let own = |i: usize| r.certs[i].1.cert[0].clone();
        assert_eq!(leaf(Some("a.example")), own(0));
        assert_eq!(leaf(Some("y.b.example")), own(1));
        assert_eq!(leaf(Some("X.B.example")), own(2));
        assert_eq!(leaf(Some("other.example")), own(0));
        assert_eq!(leaf(None), own(0));
    }
}
