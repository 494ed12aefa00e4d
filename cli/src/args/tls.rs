//! The TLS flags of `instance create|update` (`--cert`/`--key` pairs,
//! `--self-signed`, `--min-tls-version`, `--redirect-http-port`) and the
//! `instance cert add|remove|list` commands. PEM files are read when the
//! flags are parsed; lbd validates what they hold, with its codes.

use std::fmt;

use super::{InstanceArgs, WaitArgs};

/// A PEM file's path and text. `Debug` shows the path only: a key file's
/// text is a secret.
#[derive(Clone, PartialEq)]
pub struct PemFile {
    pub path: String,
    pub text: String,
}

impl fmt::Debug for PemFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PemFile({:?})", self.path)
    }
}

fn pem_file(path: &str) -> Result<PemFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
    Ok(PemFile {
        path: path.to_string(),
        text,
    })
}

/// The certificates to send: `--cert`/`--key` pairs and `--self-signed`.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct CertArgs {
    /// A PEM certificate chain (https); repeat it, each with its --key in
    /// the same order, for one certificate per name (SNI). The first is the default.
    #[arg(long = "cert", value_name = "FILE", value_parser = pem_file)]
    pub certs: Vec<PemFile>,
    /// The PEM private key of the --cert at the same position.
    #[arg(long = "key", value_name = "FILE", value_parser = pem_file)]
    pub keys: Vec<PemFile>,
    /// Also generate a self-signed certificate for the instance's DNS name
    /// NAME.PROJECT.ZONE (for trying it out; clients will not trust it).
    #[arg(long)]
    pub self_signed: bool,
    /// The DNS zone of --self-signed's name (lbd's `--zone`).
    #[arg(long, value_name = "ZONE", default_value = "lbaas.internal")]
    pub zone: String,
}

/// `instance create|update`'s TLS settings.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct TlsArgs {
    #[command(flatten)]
    pub certs: CertArgs,
    /// The oldest TLS version accepted: 1.2 (default) or 1.3.
    #[arg(long, value_name = "VERSION")]
    pub min_tls_version: Option<String>,
    /// Also listen for plain HTTP on this port, answering 308 to https (0: none).
    #[arg(long, value_name = "PORT")]
    pub redirect_http_port: Option<u16>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CertCmd {
    /// Add certificates (served to clients whose SNI matches their names).
    Add(Box<CertAddArgs>),
    /// Remove a certificate, by fingerprint (or its first 8+ hex digits) or by a name it carries.
    Remove {
        certificate: String,
        #[command(flatten)]
        target: InstanceArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List the certificates: names, expiry, fingerprint.
    List {
        #[command(flatten)]
        target: InstanceArgs,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct CertAddArgs {
    #[command(flatten)]
    pub target: InstanceArgs,
    #[command(flatten)]
    pub certs: CertArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}
