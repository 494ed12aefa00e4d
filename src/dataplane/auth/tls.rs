//! TLS for `https://` auth services: the roots lb-node trusts and the
//! rustls client configuration built from them, once per process.
//!
//! Trust is the platform's roots (`rustls-native-certs`, which honours
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`, so an operator can point lb-node, or lbd
//! whose environment it inherits, at a private CA) plus the PEM file of
//! `--auth-ca-file`. Certificate and host name verification are always on:
//! there is deliberately no switch to skip them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};
use thiserror::Error;

/// The configuration every `AuthClient` of this process shares.
static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();

#[derive(Debug, Error)]
pub enum TlsSetupError {
    #[error("reading the auth CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("the auth CA file {0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("the auth CA file {path}: a certificate is unusable: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS client configuration: {0}")]
    Config(rustls::Error),
    #[error("the auth services' TLS roots were already loaded")]
    AlreadyLoaded,
}

/// Loads the roots (platform's plus `ca_file`) and keeps the configuration
/// for the process. lb-node calls it at start-up, before any runtime, so
/// the files are read once and never on the event loop.
pub fn init(ca_file: Option<&Path>) -> Result<(), TlsSetupError> {
    let config = build(ca_file)?;
    CONFIG
        .set(Arc::new(config))
        .map_err(|_| TlsSetupError::AlreadyLoaded)
}

/// The process's configuration. Without `init` (library use, unit tests) the
/// platform's roots are loaded here on first use, once.
pub fn client_config() -> Arc<ClientConfig> {
    CONFIG
        .get_or_init(|| {
            // Without an extra file the only failure left is rustls refusing
            // the protocol versions, which the ring provider always has.
            Arc::new(build(None).expect("a TLS client configuration without a CA file"))
        })
        .clone()
}

fn build(ca_file: Option<&Path>) -> Result<ClientConfig, TlsSetupError> {
    let mut roots = platform_roots();
    if let Some(path) = ca_file {
        add_pem_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no trusted roots for https auth services (set SSL_CERT_FILE or --auth-ca-file): \
             every https call will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // No ALPN here: hyper-rustls sets it for the HTTP versions it enables
    // (and refuses a configuration that already has some).
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The platform's roots; unreadable entries are logged and skipped (a
/// broken system bundle must not stop the node, only https calls).
fn platform_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("loading the platform's TLS roots: {e}");
    }
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!("{ignored} of the platform's TLS roots are unusable and ignored");
    }
    tracing::debug!("{added} platform TLS roots for https auth services");
    roots
}

/// Adds every certificate of the PEM file at `path`: all or an error, so a
/// mistyped file stops the node at start instead of failing calls later.
fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsSetupError::CaFile {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate(path.to_path_buf()));
    }
    for cert in certs {
        roots
            .add(cert)
            .map_err(|source| TlsSetupError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempFile(PathBuf);
    impl TempFile {
        fn new(tag: &str, contents: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "lbaas-tls-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u64>()
            ));
            std::fs::write(&path, contents).unwrap();
            TempFile(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_ca_file_adds_its_certificates_to_the_roots() {
        let file = TempFile::new("ca", &format!("{}{}", ca_pem(), ca_pem()));
        let mut roots = RootCertStore::empty();
        add_pem_file(&mut roots, &file.0).unwrap();
        assert_eq!(roots.len(), 2);
        assert!(build(Some(&file.0)).is_ok());
    }

    #[test]
    fn a_ca_file_without_certificates_or_missing_is_an_error() {
        let empty = TempFile::new("empty", "not a certificate\n");
        let mut roots = RootCertStore::empty();
        assert!(matches!(
            add_pem_file(&mut roots, &empty.0),
            Err(TlsSetupError::NoCertificate(_))
        ));
        let missing = empty.0.with_extension("missing");
        assert!(matches!(
            add_pem_file(&mut roots, &missing),
            Err(TlsSetupError::CaFile { .. })
        ));
    }

    #[test]
    fn every_client_shares_the_process_configuration() {
        assert!(Arc::ptr_eq(&client_config(), &client_config()));
        assert!(client_config().alpn_protocols.is_empty());
        // An AuthClient wraps it (hyper-rustls refuses ALPN set beforehand).
        let _ = super::super::service::AuthClient::default();
    }
}
