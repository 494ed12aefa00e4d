//! The `backend_tls` flags (re-encryption to the members), on `instance
//! create|update` for the default pool and on `instance pool add` for a
//! named one. The CA file is read when the flags are parsed; lbd validates
//! what it holds, with its codes.

use lbaas::model::backend_tls::{BackendTlsRule, BackendTlsSpec, NoBackendTls};

fn ca_file(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

/// TLS from the nodes to the pool's members.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct BackendTlsArgs {
    /// Speak TLS to the backends, checking their certificates against the
    /// system's roots (or --backend-ca).
    #[arg(long, conflicts_with = "no_backend_tls")]
    pub backend_tls: bool,
    /// A PEM CA file the backends' certificates must chain to (implies --backend-tls).
    #[arg(long, value_name = "FILE", value_parser = ca_file, conflicts_with = "no_backend_tls")]
    pub backend_ca: Option<String>,
    /// The name checked in the backends' certificates and sent as SNI
    /// [default: each backend's IP address] (implies --backend-tls).
    #[arg(long, value_name = "NAME", conflicts_with = "no_backend_tls")]
    pub backend_server_name: Option<String>,
    /// Encrypt, but take any backend certificate (self-signed backends; implies --backend-tls).
    #[arg(long, conflicts_with = "no_backend_tls")]
    pub backend_tls_no_verify: bool,
    /// Plain TCP to the backends (on update: removes backend TLS).
    #[arg(long)]
    pub no_backend_tls: bool,
}

impl BackendTlsArgs {
    /// `backend_tls`; `None` when no such flag was given.
    pub fn spec(&self) -> Option<BackendTlsSpec> {
        if self.no_backend_tls {
            return Some(BackendTlsSpec::Off(NoBackendTls::None));
        }
        let on = self.backend_tls
            || self.backend_ca.is_some()
            || self.backend_server_name.is_some()
            || self.backend_tls_no_verify;
        on.then(|| {
            BackendTlsSpec::On(BackendTlsRule {
                verify: Some(!self.backend_tls_no_verify),
                ca: self.backend_ca.clone(),
                server_name: self.backend_server_name.clone(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_the_spec() {
        assert_eq!(BackendTlsArgs::default().spec(), None);
        let off = BackendTlsArgs {
            no_backend_tls: true,
            ..Default::default()
        };
        assert_eq!(off.spec(), Some(BackendTlsSpec::Off(NoBackendTls::None)));
        let named = BackendTlsArgs {
            backend_server_name: Some("app.internal".into()),
            ..Default::default()
        };
        assert_eq!(
            named.spec(),
            Some(BackendTlsSpec::On(BackendTlsRule {
                verify: Some(true),
                ca: None,
                server_name: Some("app.internal".into()),
            }))
        );
        let any = BackendTlsArgs {
            backend_tls_no_verify: true,
            ..Default::default()
        };
        assert!(matches!(any.spec(), Some(BackendTlsSpec::On(r)) if r.verify == Some(false)));
    }
}
