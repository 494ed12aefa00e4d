//! DNS: every instance is `<instance>.<project>.<zone>`, with one A record per
//! serving node. The [`DnsDriver`] trait is what the reconciler sees; the
//! embedded implementation is lbd's own authoritative server ([`zone`]).

pub mod zone;

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;

use thiserror::Error;

pub use zone::EmbeddedDns;

#[derive(Debug, Error)]
pub enum DnsError {
    #[error("invalid DNS name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("DNS server: {0}")]
    Server(String),
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A DNS zone the reconciler can write to. Names are relative to the zone
/// (`web.demo`), so drivers for other servers need no change in the caller.
pub trait DnsDriver: Send + Sync {
    /// Makes `name` answer exactly `addrs`; an empty list removes the name (NXDOMAIN).
    fn set_a_records<'a>(
        &'a self,
        name: &'a str,
        addrs: &'a [Ipv4Addr],
    ) -> BoxFuture<'a, Result<(), DnsError>>;
    /// Every relative name that has A records, to find orphans.
    fn names(&self) -> BoxFuture<'_, Vec<String>>;
}

/// The zone-relative name of an instance.
pub fn instance_label(instance: &str, project: &str) -> String {
    format!("{instance}.{project}")
}
