//! TLS termination of an `https` instance (`"tls"`): certificates (PEM
//! chain + key), `min_version`, `redirect_http_port`. Validated here by pure
//! parsing (no I/O): each chain must parse, its key must be the leaf's, and
//! the leaf must not have expired. The validated form keeps the key only in
//! memory (`#[serde(skip)]`): lbd writes it to a 0600 file of its own, so a
//! stored spec and every API answer carry certificates and facts, never keys.

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The most certificates one instance carries.
pub const MAX_CERTIFICATES: usize = 32;

/// `tls` as a client writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// The first one is served to clients whose SNI matches no other.
    #[serde(default)]
    pub certificates: Vec<CertificateSpec>,
    /// `"1.2"` (default) or `"1.3"`: the oldest TLS version accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<String>,
    /// A plain listener on this port answers 308 to the https URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http_port: Option<i64>,
}

/// One certificate: `{"cert": PEM chain, "key": PEM key}`; or, on update,
/// `{"fingerprint": F}` alone to keep the stored certificate (and key)
/// with that SHA-256 fingerprint, since `info` never shows keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn parse(s: &str) -> Result<Self, TlsError> {
        match s {
            "1.2" => Ok(Self::V1_2),
            "1.3" => Ok(Self::V1_3),
            other => Err(TlsError::Version(other.to_string())),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_2 => "1.2",
            Self::V1_3 => "1.3",
        }
    }
}

/// A PEM private key. Never printed; serialized only into a `NodeConfig`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct PrivateKeyPem(pub String);

impl fmt::Debug for PrivateKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKeyPem(***)")
    }
}

/// The keys a validated spec carries, by certificate fingerprint.
pub type InstanceKeys = Vec<(String, PrivateKeyPem)>;

/// What `info` shows of a certificate (never its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CertificateInfo {
    /// The leaf's subject, as `CN=web.example, O=...`.
    pub subject: String,
    /// DNS names (and IP addresses) of the leaf's subjectAltName.
    pub sans: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lowercase hex.
    pub fingerprint: String,
}

/// A validated certificate, as stored: the chain as given and its facts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    pub cert: String,
    #[serde(flatten)]
    pub info: CertificateInfo,
    /// Present only between validation and lbd writing it to its key file.
    #[serde(skip)]
    pub key: Option<PrivateKeyPem>,
}

/// A validated `tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub min_version: TlsVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http_port: Option<u16>,
}

/// `tls` as `info` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TlsView {
    pub certificates: Vec<CertificateInfo>,
    pub min_version: TlsVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http_port: Option<u16>,
}

/// `tls` as a node gets it (over its authenticated admin API only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeTls {
    pub certificates: Vec<NodeCertificate>,
    pub min_version: TlsVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_http_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeCertificate {
    pub cert: String,
    pub key: PrivateKeyPem,
    /// The names SNI is matched against (`*.x` matches one label).
    pub sans: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TlsError {
    #[error("traffic_type https needs `tls` with at least one certificate")]
    Missing,
    #[error("`tls` needs traffic_type https (or smtp, for STARTTLS)")]
    NotHttps,
    #[error("tls.redirect_http_port is for https instances; an smtp instance uses its certificates for STARTTLS only")]
    RedirectNeedsHttps,
    #[error("tls.min_version {0:?}: expected \"1.2\" or \"1.3\"")]
    Version(String),
    #[error("tls.redirect_http_port {0}: expected 1-65535 (0: none), not the listener port")]
    RedirectPort(i64),
    #[error("tls.certificates[{index}]: {reason}")]
    Pem { index: usize, reason: String },
    #[error("tls.certificates[{index}]: the key does not belong to the certificate")]
    KeyMismatch { index: usize },
    #[error("tls.certificates[{index}]: the certificate expired at {not_after} (Unix seconds)")]
    Expired { index: usize, not_after: i64 },
    #[error("tls.certificates[{index}]: no stored certificate has fingerprint {fingerprint:?}")]
    UnknownFingerprint { index: usize, fingerprint: String },
    #[error("tls.certificates[{index}]: give cert and key, or fingerprint alone")]
    Shape { index: usize },
    #[error("tls.certificates[{index}]: the same certificate is listed twice")]
    Duplicate { index: usize },
    #[error("tls: at most {MAX_CERTIFICATES} certificates")]
    TooMany,
}

impl TlsError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "missing_tls",
            Self::NotHttps | Self::RedirectNeedsHttps => "invalid_field",
            Self::Version(_) => "invalid_tls_version",
            Self::RedirectPort(_) => "invalid_port",
            Self::Pem { .. } => "invalid_pem",
            Self::KeyMismatch { .. } => "certificate_key_mismatch",
            Self::Expired { .. } => "certificate_expired",
            Self::UnknownFingerprint { .. } => "unknown_certificate",
            Self::Shape { .. } | Self::Duplicate { .. } | Self::TooMany => "invalid_certificate",
        }
    }
}

impl TlsSpec {
    /// Validates against `previous` (the stored `tls`, whose certificates a
    /// `{"fingerprint"}` entry keeps) at Unix time `now`. On update, what is
    /// left out stays: no `certificates` keeps them all, no
    /// `redirect_http_port` keeps it (`0` removes it).
    pub fn validate(&self, previous: Option<&Tls>, now: i64) -> Result<Tls, TlsError> {
        if let (true, Some(p)) = (self.certificates.is_empty(), previous) {
            let keep = TlsSpec {
                certificates: p.to_spec().certificates,
                ..self.clone()
            };
            return keep.validate(previous, now);
        }
        if self.certificates.is_empty() {
            return Err(TlsError::Missing);
        }
        if self.certificates.len() > MAX_CERTIFICATES {
            return Err(TlsError::TooMany);
        }
        let mut certificates: Vec<Certificate> = Vec::new();
        for (index, c) in self.certificates.iter().enumerate() {
            let cert = match (&c.cert, &c.key, &c.fingerprint) {
                (Some(cert), Some(key), None) => parse_certificate(index, cert, key, now)?,
                (None, None, Some(f)) => previous
                    .and_then(|p| p.certificates.iter().find(|s| s.info.fingerprint == *f))
                    .cloned()
                    .ok_or_else(|| TlsError::UnknownFingerprint {
                        index,
                        fingerprint: f.clone(),
                    })?,
                _ => return Err(TlsError::Shape { index }),
            };
            if certificates
                .iter()
                .any(|c| c.info.fingerprint == cert.info.fingerprint)
            {
                return Err(TlsError::Duplicate { index });
            }
            certificates.push(cert);
        }
        let redirect_http_port = match self.redirect_http_port {
            None => previous.and_then(|p| p.redirect_http_port),
            Some(0) => None,
            Some(p) => Some(u16::try_from(p).map_err(|_| TlsError::RedirectPort(p))?),
        };
        Ok(Tls {
            certificates,
            min_version: match &self.min_version {
                Some(v) => TlsVersion::parse(v)?,
                None => previous.map(|p| p.min_version).unwrap_or_default(),
            },
            redirect_http_port,
        })
    }
}

impl Tls {
    pub fn view(&self) -> TlsView {
        TlsView {
            certificates: self.certificates.iter().map(|c| c.info.clone()).collect(),
            min_version: self.min_version,
            redirect_http_port: self.redirect_http_port,
        }
    }

    /// The keys validation left in memory (new certificates), for lbd to
    /// write to its key files.
    pub fn keys(&self) -> InstanceKeys {
        self.certificates
            .iter()
            .filter_map(|c| Some((c.info.fingerprint.clone(), c.key.clone()?)))
            .collect()
    }

    /// The stored form as an update takes it: every certificate by fingerprint.
    pub fn to_spec(&self) -> TlsSpec {
        TlsSpec {
            certificates: self
                .certificates
                .iter()
                .map(|c| CertificateSpec {
                    fingerprint: Some(c.info.fingerprint.clone()),
                    ..Default::default()
                })
                .collect(),
            min_version: Some(self.min_version.as_str().to_string()),
            redirect_http_port: self.redirect_http_port.map(i64::from),
        }
    }
}

fn pem_error(index: usize, what: &str, e: impl fmt::Display) -> TlsError {
    TlsError::Pem {
        index,
        reason: format!("{what}: {e}"),
    }
}

/// Parses one chain and its key: the chain's first certificate is the leaf.
fn parse_certificate(
    index: usize,
    cert: &str,
    key: &str,
    now: i64,
) -> Result<Certificate, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(index, "cert is not a PEM certificate chain", e))?;
    let Some(leaf) = chain.first() else {
        return Err(pem_error(index, "cert", "no CERTIFICATE block"));
    };
    let der_key = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| pem_error(index, "key is not a PEM private key", e))?;
    let (_, x509) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| pem_error(index, "cert is not an X.509 certificate", e))?;
    let not_after = x509.validity().not_after.timestamp();
    if not_after < now {
        return Err(TlsError::Expired { index, not_after });
    }
    let signing = rustls::crypto::ring::sign::any_supported_type(&der_key)
        .map_err(|e| pem_error(index, "key", e))?;
    // Compares the key's public half with the leaf's subjectPublicKeyInfo.
    rustls::sign::CertifiedKey::new(chain.clone(), signing)
        .keys_match()
        .map_err(|_| TlsError::KeyMismatch { index })?;
    let sans = match x509.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(san_text)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Certificate {
        cert: cert.to_string(),
        info: CertificateInfo {
            subject: x509.subject().to_string(),
            sans,
            not_after,
            fingerprint: hex(&Sha256::digest(leaf.as_ref())),
        },
        key: Some(PrivateKeyPem(key.to_string())),
    })
}

fn san_text(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
        GeneralName::IPAddress(b) => match b.len() {
            4 => Some(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).ok()?).to_string()),
            16 => Some(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).ok()?).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The clock expiry is checked against (reading it is no I/O).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether SNI `name` matches SAN `san` (`*.x.y` matches exactly one label).
pub fn san_matches(san: &str, name: &str) -> bool {
    match san.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail.eq_ignore_ascii_case(rest)),
        None => san.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_for(name: &str, not_after_year: i32) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn spec(pairs: &[(String, String)]) -> TlsSpec {
        TlsSpec {
            certificates: pairs
                .iter()
                .map(|(c, k)| CertificateSpec {
                    cert: Some(c.clone()),
                    key: Some(k.clone()),
                    fingerprint: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_good_pair_gives_its_facts_and_keeps_the_key_out_of_the_stored_form() {
        let (c, k) = cert_for("web.example", 2099);
        let tls = spec(&[(c, k.clone())]).validate(None, NOW).unwrap();
        let info = &tls.certificates[0].info;
        assert_eq!(info.sans, ["web.example"]);
        assert_eq!(info.fingerprint.len(), 64);
        assert!(info.not_after > NOW);
        assert_eq!(tls.min_version, TlsVersion::V1_2);
        let stored = serde_json::to_string(&tls).unwrap();
        assert!(!stored.contains("PRIVATE KEY"), "{stored}");
        let body = k.lines().nth(1).unwrap();
        assert!(!stored.contains(body));
        assert!(!format!("{tls:?}").contains(body));
    }

    #[test]
    fn bad_inputs_have_their_own_codes() {
        let (c1, k1) = cert_for("a.example", 2099);
        let (_, k2) = cert_for("b.example", 2099);
        let (old, old_key) = cert_for("old.example", 2001);
        let code = |s: TlsSpec| s.validate(None, NOW).unwrap_err().code();
        assert_eq!(code(spec(&[(c1.clone(), k2)])), "certificate_key_mismatch");
        assert_eq!(code(spec(&[(old, old_key)])), "certificate_expired");
        assert_eq!(code(spec(&[("garbage".into(), k1.clone())])), "invalid_pem");
        assert_eq!(code(spec(&[(c1.clone(), "nope".into())])), "invalid_pem");
        assert_eq!(code(TlsSpec::default()), "missing_tls");
        let mut s = spec(&[(c1.clone(), k1.clone())]);
        s.min_version = Some("1.1".into());
        assert_eq!(code(s), "invalid_tls_version");
        assert_eq!(
            code(spec(&[(c1.clone(), k1.clone()), (c1, k1)])),
            "invalid_certificate"
        );
    }

    #[test]
    fn a_fingerprint_keeps_the_stored_certificate() {
        let (c, k) = cert_for("a.example", 2099);
        let stored = spec(&[(c, k)]).validate(None, NOW).unwrap();
        let again = stored.to_spec().validate(Some(&stored), NOW).unwrap();
        assert_eq!(again.certificates[0].info, stored.certificates[0].info);
        let e = stored.to_spec().validate(None, NOW).unwrap_err();
        assert_eq!(e.code(), "unknown_certificate");
    }

    #[test]
    fn wildcards_match_one_label() {
        assert!(san_matches("*.example.com", "a.example.com"));
        assert!(!san_matches("*.example.com", "a.b.example.com"));
        assert!(!san_matches("*.example.com", "example.com"));
        assert!(san_matches("Web.Example", "web.example"));
    }
}
