//! TLS of `https` instances in lbctl: the `tls` object `create`/`update`
//! send from the flags (`--cert`/`--key` pairs, `--self-signed` made with
//! rcgen), and `instance cert add|remove|list`, which read the instance and
//! send its certificates back by fingerprint (lbd keeps their keys) with
//! the change made.

use lbaas::model::tls::{CertificateInfo, CertificateSpec, TlsSpec, TlsView};
use lbaas::model::{InstanceInfo, InstanceUpdate};

use super::{instance_info, Answer, Typed};
use crate::args::tls::{CertArgs, CertCmd, TlsArgs};
use crate::args::{InstanceArgs, InstanceCmd, WaitArgs};
use crate::client::ApiClient;

/// A certificate expiring sooner than this gets a warning in `info`.
pub const EXPIRY_WARNING_S: i64 = 14 * 86_400;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("{certs} --cert but {keys} --key: give one --key per --cert, in the same order")]
    Unpaired { certs: usize, keys: usize },
    #[error("no certificate of the instance matches {0:?}")]
    NoMatch(String),
    #[error("{0:?} matches more than one certificate: give its fingerprint")]
    Ambiguous(String),
    #[error("self-signed certificate: {0}")]
    SelfSigned(String),
    #[error("{0} is not an https instance")]
    NotHttps(String),
}

impl CertArgs {
    /// The certificates these flags give, in order (`--self-signed` last).
    pub fn certificates(
        &self,
        name: &str,
        project: &str,
    ) -> Result<Vec<CertificateSpec>, CertError> {
        if self.certs.len() != self.keys.len() {
            return Err(CertError::Unpaired {
                certs: self.certs.len(),
                keys: self.keys.len(),
            });
        }
        let mut out: Vec<CertificateSpec> = self
            .certs
            .iter()
            .zip(&self.keys)
            .map(|(c, k)| pair(c.text.clone(), k.text.clone()))
            .collect();
        if self.self_signed {
            let dns = format!("{name}.{project}.{}", self.zone.trim_end_matches('.'));
            out.push(self_signed(&dns)?);
        }
        Ok(out)
    }
}

fn pair(cert: String, key: String) -> CertificateSpec {
    CertificateSpec {
        cert: Some(cert),
        key: Some(key),
        fingerprint: None,
    }
}

/// A self-signed certificate for `dns` (a year, rcgen's defaults otherwise).
pub fn self_signed(dns: &str) -> Result<CertificateSpec, CertError> {
    let err = |e: rcgen::Error| CertError::SelfSigned(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![dns.to_string()]).map_err(err)?;
    let now = std::time::SystemTime::now();
    params.not_before = now.into();
    params.not_after = (now + std::time::Duration::from_secs(365 * 86_400)).into();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, dns);
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(pair(cert.pem(), key.serialize_pem()))
}

impl TlsArgs {
    /// `tls` for create/update; `None` when no TLS flag was given.
    pub fn spec(&self, name: &str, project: &str) -> Result<Option<TlsSpec>, CertError> {
        let certificates = self.certs.certificates(name, project)?;
        if certificates.is_empty()
            && self.min_tls_version.is_none()
            && self.redirect_http_port.is_none()
        {
            return Ok(None);
        }
        Ok(Some(TlsSpec {
            certificates,
            min_version: self.min_tls_version.clone(),
            redirect_http_port: self.redirect_http_port.map(i64::from),
        }))
    }
}

/// Checks the TLS flags of a create/update before anything is sent.
pub fn check(cmd: &crate::args::Command) -> Result<(), CertError> {
    let certs = match cmd {
        crate::args::Command::Instance(InstanceCmd::Create(a)) => &a.tls.certs,
        crate::args::Command::Instance(InstanceCmd::Update(a)) => &a.tls.certs,
        _ => return Ok(()),
    };
    if certs.certs.len() != certs.keys.len() {
        return Err(CertError::Unpaired {
            certs: certs.certs.len(),
            keys: certs.keys.len(),
        });
    }
    Ok(())
}

/// The stored certificates, by fingerprint (what an update keeps).
fn kept(certs: &[CertificateInfo]) -> Vec<CertificateSpec> {
    certs
        .iter()
        .map(|c| CertificateSpec {
            fingerprint: Some(c.fingerprint.clone()),
            ..Default::default()
        })
        .collect()
}

/// The one certificate `which` names: a fingerprint (or a prefix of 8+ hex
/// digits), a SAN, or the subject.
pub fn find(certs: &[CertificateInfo], which: &str) -> Result<usize, CertError> {
    let w = which.to_ascii_lowercase();
    let hits: Vec<usize> = certs
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            (w.len() >= 8 && c.fingerprint.starts_with(&w))
                || c.sans.iter().any(|s| s.eq_ignore_ascii_case(which))
                || c.subject == which
        })
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => Err(CertError::NoMatch(which.to_string())),
        _ => Err(CertError::Ambiguous(which.to_string())),
    }
}

/// `instance cert ...`; `None` for every other command.
pub fn run(client: &ApiClient, cmd: &InstanceCmd) -> Option<anyhow::Result<Answer>> {
    let InstanceCmd::Cert(cmd) = cmd else {
        return None;
    };
    Some(match cmd {
        CertCmd::List { target } => read(client, target).map(|i| answer(&i)),
        CertCmd::Add(a) => edit(client, &a.target, &a.wait, |tls| {
            let mut certificates = kept(&tls.certificates);
            certificates.extend(
                a.certs
                    .certificates(&a.target.instance, &a.target.project)?,
            );
            Ok(certificates)
        }),
        CertCmd::Remove {
            certificate,
            target,
            wait,
        } => edit(client, target, wait, |tls| {
            let at = find(&tls.certificates, certificate)?;
            let mut certificates = kept(&tls.certificates);
            certificates.remove(at);
            Ok(certificates)
        }),
    })
}

fn read(client: &ApiClient, target: &InstanceArgs) -> anyhow::Result<InstanceInfo> {
    let request = instance_info(&target.project, &target.instance);
    Ok(client.call::<InstanceInfo>(&request)?.value)
}

fn answer(i: &InstanceInfo) -> Answer {
    Answer {
        raw: serde_json::to_value(&i.tls).expect("tls always serializes"),
        typed: Typed::Instance(Box::new(i.clone())),
    }
}

/// info → the new certificate list → update (then wait, unless --no-wait).
fn edit(
    client: &ApiClient,
    target: &InstanceArgs,
    wait: &WaitArgs,
    change: impl FnOnce(&TlsView) -> Result<Vec<CertificateSpec>, CertError>,
) -> anyhow::Result<Answer> {
    let current = read(client, target)?;
    let Some(tls) = &current.tls else {
        return Err(CertError::NotHttps(target.instance.clone()).into());
    };
    let update = InstanceUpdate {
        project: target.project.clone(),
        name: target.instance.clone(),
        tls: Some(TlsSpec {
            certificates: change(tls)?,
            ..Default::default()
        }),
        ..InstanceUpdate::default()
    };
    let request = super::envelope(
        lbaas::model::Action::Update,
        lbaas::model::ObjectType::Instance,
        &update,
    );
    let updated = client.call::<InstanceInfo>(&request)?.value;
    if wait.no_wait {
        return Ok(answer(&updated));
    }
    let done = super::wait_until_active(client, &updated, wait, |_| {})?;
    Ok(answer(&done.value))
}

/// `cert list`: one line per certificate, first (the default) first.
pub fn certs_text(i: &InstanceInfo, now: i64) -> String {
    let Some(tls) = &i.tls else {
        return format!("{} is not an https instance\n", i.name);
    };
    let mut out = String::from("FINGERPRINT       NOT AFTER             NAMES\n");
    for c in &tls.certificates {
        out.push_str(&format!(
            "{:<16}  {}  {}\n",
            &c.fingerprint[..c.fingerprint.len().min(16)],
            lbaas::model::time::rfc3339_secs(c.not_after),
            c.sans.join(",")
        ));
    }
    for w in expiry_warnings(tls, now) {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

/// Certificates that expire within 14 days (or have).
pub fn expiry_warnings(tls: &TlsView, now: i64) -> Vec<String> {
    tls.certificates
        .iter()
        .filter(|c| c.not_after - now < EXPIRY_WARNING_S)
        .map(|c| {
            let days = (c.not_after - now) / 86_400;
            let names = c.sans.join(",");
            if c.not_after <= now {
                format!("certificate {names} ({}) has expired", &c.fingerprint[..16])
            } else {
                format!(
                    "certificate {names} ({}) expires in {days} days, at {}",
                    &c.fingerprint[..16],
                    lbaas::model::time::rfc3339_secs(c.not_after)
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(fp: &str, san: &str, not_after: i64) -> CertificateInfo {
        CertificateInfo {
            subject: format!("CN={san}"),
            sans: vec![san.into()],
            not_after,
            fingerprint: fp.repeat(64 / fp.len()),
        }
    }

    #[test]
    fn a_certificate_is_found_by_fingerprint_prefix_or_name() {
        let certs = [info("ab", "a.example", 0), info("cd", "b.example", 0)];
        assert_eq!(find(&certs, "b.example"), Ok(1));
        assert_eq!(find(&certs, "abababab"), Ok(0));
        assert_eq!(find(&certs, "abab"), Err(CertError::NoMatch("abab".into())));
        assert_eq!(find(&certs, "CN=a.example"), Ok(0));
    }

    #[test]
    fn expiry_within_14_days_warns() {
        let now = 1_000_000_000;
        let tls = TlsView {
            certificates: vec![
                info("ab", "a.example", now + 3 * 86_400),
                info("cd", "b.example", now + 90 * 86_400),
            ],
            min_version: lbaas::model::tls::TlsVersion::V1_2,
            redirect_http_port: None,
        };
        let w = expiry_warnings(&tls, now);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("a.example") && w[0].contains("expires in 3 days"),
            "{w:?}"
        );
    }

    #[test]
    fn self_signed_is_a_pair_for_the_dns_name() {
        let c = self_signed("web.demo.lbaas.internal").unwrap();
        assert!(c.cert.unwrap().contains("BEGIN CERTIFICATE"));
        assert!(c.key.unwrap().contains("PRIVATE KEY"));
    }

    #[test]
    fn unpaired_flags_are_refused() {
        let mut a = CertArgs::default();
        a.certs.push(crate::args::tls::PemFile {
            path: "c".into(),
            text: "x".into(),
        });
        assert_eq!(
            a.certificates("web", "demo").unwrap_err(),
            CertError::Unpaired { certs: 1, keys: 0 }
        );
    }
}
