//! `backend_tls` of a pool: members spoken to over TLS (re-encryption),
//! checked against the pool's own CA, the system's roots, or not at all.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// At most this many CA certificates in one `ca`.
const MAX_CA_CERTIFICATES: usize = 64;

/// `backend_tls` as a client writes it: `"none"` (plain; on update it
/// removes the stored one) or the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum BackendTlsSpec {
    Off(NoBackendTls),
    On(BackendTlsRule),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoBackendTls {
    None,
}

/// The object form of `backend_tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendTlsRule {
    /// Check the member's certificate (default true). `false` still
    /// encrypts, but takes any certificate: for self-signed members only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<bool>,
    /// PEM CA certificates the member's chain must end in; absent: the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The name sent as SNI and checked against the certificate; absent:
    /// the member's IP address (an IP SAN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

// By hand rather than `untagged`: a typo inside the object should be
// `unknown_field`, not "did not match any variant".
impl<'de> Deserialize<'de> for BackendTlsSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "none" => Ok(Self::Off(NoBackendTls::None)),
            v @ serde_json::Value::Object(_) => BackendTlsRule::deserialize(v)
                .map(Self::On)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "backend_tls: expected \"none\" or an object, got {other}"
            ))),
        }
    }
}

/// A validated `backend_tls`, as stored and as a node gets it (a CA is
/// public: nothing here is a secret).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    pub verify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BackendTlsError {
    #[error("{at}.ca: {reason}")]
    Ca { at: String, reason: String },
    #[error("{at}.server_name {name:?}: not a DNS name or IP address")]
    ServerName { at: String, name: String },
    #[error("{at}: backend_tls needs traffic_type http, https or smtp (tcp is relayed as is)")]
    NotForTcp { at: String },
    #[error(
        "{at}: backend_tls speaks HTTP/1.1 over TLS, and h2c is HTTP/2 in the clear: not both"
    )]
    WithH2c { at: String },
}

impl BackendTlsError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Ca { .. } => "invalid_pem",
            Self::ServerName { .. } | Self::NotForTcp { .. } | Self::WithH2c { .. } => {
                "invalid_field"
            }
        }
    }
}

impl BackendTlsSpec {
    /// The stored form (`None` for `"none"`). `at`: where it was written
    /// (`backend.backend_tls`, `pools.api.backend_tls`), for the error.
    pub fn validate(&self, at: &str) -> Result<Option<BackendTls>, BackendTlsError> {
        let rule = match self {
            Self::Off(NoBackendTls::None) => return Ok(None),
            Self::On(rule) => rule,
        };
        if let Some(ca) = &rule.ca {
            ca_certificates(ca).map_err(|reason| BackendTlsError::Ca {
                at: at.to_string(),
                reason,
            })?;
        }
        if let Some(name) = &rule.server_name {
            if ServerName::try_from(name.as_str()).is_err() {
                return Err(BackendTlsError::ServerName {
                    at: at.to_string(),
                    name: name.clone(),
                });
            }
        }
        Ok(Some(BackendTls {
            verify: rule.verify.unwrap_or(true),
            ca: rule.ca.clone(),
            server_name: rule.server_name.clone(),
        }))
    }
}

impl BackendTls {
    pub fn to_spec(&self) -> BackendTlsSpec {
        BackendTlsSpec::On(BackendTlsRule {
            verify: Some(self.verify),
            ca: self.ca.clone(),
            server_name: self.server_name.clone(),
        })
    }
}

/// The certificates of a PEM `ca`: at least one, each a parsable X.509
/// certificate.
pub fn ca_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    if certs.len() > MAX_CA_CERTIFICATES {
        return Err(format!("at most {MAX_CA_CERTIFICATES} certificates"));
    }
    for (i, der) in certs.iter().enumerate() {
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate {i}: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn spec(json: serde_json::Value) -> BackendTlsSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_ca_must_be_pem_certificates() {
        let ok = spec(serde_json::json!({"ca": ca_pem()}))
            .validate("pools.api.backend_tls")
            .unwrap()
            .unwrap();
        assert!(ok.verify, "verify defaults to true");
        assert_eq!(ok.to_spec().validate("x").unwrap(), Some(ok.clone()));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        for bad in ["", "hello", bad_base64] {
            let err = spec(serde_json::json!({ "ca": bad }))
                .validate("pools.api.backend_tls")
                .unwrap_err();
            assert_eq!(err.code(), "invalid_pem", "{bad:?}: {err}");
            assert!(
                err.to_string().starts_with("pools.api.backend_tls.ca"),
                "{err}"
            );
        }
    }

    #[test]
    fn none_removes_and_typos_are_unknown_fields() {
        assert_eq!(spec(serde_json::json!("none")).validate("b").unwrap(), None);
        let err = serde_json::from_value::<BackendTlsSpec>(serde_json::json!({"verfy": true}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `verfy`"), "{err}");
        assert!(serde_json::from_value::<BackendTlsSpec>(serde_json::json!(true)).is_err());
    }

    #[test]
    fn a_server_name_is_a_dns_name_or_an_ip() {
        let named = |name: &str| spec(serde_json::json!({ "server_name": name })).validate("b");
        assert!(named("app.internal").is_ok());
        assert!(named("10.0.0.5").is_ok());
        assert_eq!(named("not a name").unwrap_err().code(), "invalid_field");
    }
}
