//! TLS test helpers: a throwaway CA (rcgen) and leaf certificates as PEM
//! files, the real clients (`curl`, `openssl s_client`) and a rustls client
//! for kept-alive connections (`tests/tls.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{require, TempDir};

/// A throwaway CA; leaf certificates it signs are PEM files in `dir`.
pub struct Pki {
    pub dir: TempDir,
    pub ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_path: PathBuf,
}

/// A leaf certificate and its key, as files and as text.
#[derive(Clone)]
pub struct Leaf {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// The key's first base64 line: what must never show up anywhere.
    pub fn key_marker(&self) -> String {
        self.key_pem.lines().nth(1).unwrap().to_string()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = TempDir::new("tls-pki");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "lbaas tls test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.0.join("ca.pem");
        write(&ca_path, &ca.pem(), 0o644);
        Pki { dir, ca, ca_path }
    }

    /// A leaf for `name` valid until about the start of year `until` (from 2000).
    pub fn leaf(&self, file: &str, name: &str, until: u64) -> Leaf {
        let secs = (until - 1970) * 31_557_600;
        self.leaf_until(
            file,
            name,
            std::time::UNIX_EPOCH + Duration::from_secs(secs),
        )
    }

    pub fn leaf_until(&self, file: &str, name: &str, not_after: std::time::SystemTime) -> Leaf {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = not_after.into();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.0.join(format!("{file}.pem")),
            key: self.dir.0.join(format!("{file}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write(&leaf.cert, &leaf.cert_pem, 0o644);
        write(&leaf.key, &leaf.key_pem, 0o600);
        leaf
    }
}

pub fn write(path: &Path, text: &str, mode: u32) {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

pub fn tools_present() -> bool {
    let has = |t: &str| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    require("curl and openssl", has("curl") && has("openssl"))
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap()
}

/// `openssl s_client` to `addr` with SNI `name`, plus `extra` flags.
pub fn s_client(addr: SocketAddr, name: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub fn subject_cn(text: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with("subject="))
        .map(|l| l.trim_start_matches("subject=").replace(' ', ""))
}

/// A rustls client trusting the test CA.
pub fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

pub fn connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<Tls> {
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let conn =
        rustls::ClientConnection::new(config.clone(), server).map_err(std::io::Error::other)?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock)?;
    }
    Ok(tls)
}

/// The served leaf's DER, as the client saw it.
pub fn peer_leaf(tls: &Tls) -> Vec<u8> {
    tls.conn.peer_certificates().unwrap()[0].as_ref().to_vec()
}

/// One kept-alive GET: the status and body.
pub fn get(tls: &mut Tls, host: &str) -> std::io::Result<(u16, String)> {
    write!(tls, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    tls.flush()?;
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}
