//! How a node balances and protects itself: the algorithm, what a consistent
//! hash keys on, timeouts, the connection cap and the PROXY protocol.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::ValidationError;

/// How a node picks a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    /// The member with the fewest requests in flight (weighted).
    LeastConnections,
    /// Two random members, the less loaded wins (weighted).
    PowerOfTwo,
    /// Maglev hashing of `hash_on`: the same key goes to the same member.
    ConsistentHash,
}

/// What `consistent_hash` keys on: `client_ip` or `header:<Name>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub enum HashOn {
    #[default]
    ClientIp,
    /// An HTTP request header (lowercase); falls back to the client IP when absent.
    Header(String),
}

impl TryFrom<String> for HashOn {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s == "client_ip" {
            return Ok(HashOn::ClientIp);
        }
        match s.strip_prefix("header:") {
            Some(h)
                if !h.is_empty()
                    && h.len() <= 64
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Ok(HashOn::Header(h.to_ascii_lowercase()))
            }
            _ => Err(ValidationError::InvalidField(format!(
                "hash_on {s:?}: expected \"client_ip\" or \"header:<Name>\""
            ))),
        }
    }
}

impl From<HashOn> for String {
    fn from(h: HashOn) -> String {
        h.to_string()
    }
}

impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Header(h) => write!(f, "header:{h}"),
        }
    }
}

/// The PROXY protocol header a TCP node sends to backends, so they see the client's address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocol {
    #[default]
    None,
    V1,
    V2,
}

/// Timeouts in milliseconds, as a client may write them; absent ones take defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsSpec {
    /// Connecting to a backend.
    #[serde(default)]
    pub connect_ms: Option<i64>,
    /// From sending the request to the first byte of the response (HTTP).
    #[serde(default)]
    pub first_byte_ms: Option<i64>,
    /// A client connection with nothing to do is closed after this.
    #[serde(default)]
    pub client_idle_ms: Option<i64>,
    /// A pooled backend connection with nothing to do is closed after this.
    #[serde(default)]
    pub backend_idle_ms: Option<i64>,
    /// A new client connection must have sent its first request head by then (HTTP).
    #[serde(default)]
    pub handshake_ms: Option<i64>,
}

/// Resolved timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Timeouts {
    pub connect_ms: u32,
    pub first_byte_ms: u32,
    pub client_idle_ms: u32,
    pub backend_idle_ms: u32,
    /// Protocol detection and the first request head of a client connection
    /// (like nginx's `client_header_timeout`). Added later: absent, the default.
    #[serde(default = "default_handshake_ms")]
    pub handshake_ms: u32,
}

fn default_handshake_ms() -> u32 {
    10_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: 3_000,
            first_byte_ms: 30_000,
            client_idle_ms: 60_000,
            backend_idle_ms: 30_000,
            handshake_ms: default_handshake_ms(),
        }
    }
}

impl TimeoutsSpec {
    /// Fills absent fields from `base` and checks the range (1 ms to 1 hour).
    pub fn resolve(&self, base: Timeouts) -> Result<Timeouts, ValidationError> {
        let pick = |name: &str, v: Option<i64>, d: u32| -> Result<u32, ValidationError> {
            match v {
                None => Ok(d),
                Some(v) if (1..=3_600_000).contains(&v) => Ok(v as u32),
                Some(v) => Err(ValidationError::InvalidField(format!(
                    "timeouts.{name} must be 1 to 3600000 ms, got {v}"
                ))),
            }
        };
        Ok(Timeouts {
            connect_ms: pick("connect_ms", self.connect_ms, base.connect_ms)?,
            first_byte_ms: pick("first_byte_ms", self.first_byte_ms, base.first_byte_ms)?,
            client_idle_ms: pick("client_idle_ms", self.client_idle_ms, base.client_idle_ms)?,
            backend_idle_ms: pick(
                "backend_idle_ms",
                self.backend_idle_ms,
                base.backend_idle_ms,
            )?,
            handshake_ms: pick("handshake_ms", self.handshake_ms, base.handshake_ms)?,
        })
    }
}

/// How an instance's nodes balance and protect themselves: one struct that
/// both the stored [`InstanceSpec`](crate::model::InstanceSpec) and each
/// [`NodeConfig`](crate::model::NodeConfig) embed (flattened, so the fields
/// stay top-level in both), so a new setting reaches the nodes by being
/// added here once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tuning {
    pub algorithm: Algorithm,
    // Added after the first release: stored specs without them take the defaults.
    #[serde(default)]
    pub hash_on: HashOn,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// The most bytes a client's request head (request line and headers) may
    /// take; a longer one is answered 431 and never reaches a backend.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: u32,
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// How members are spoken to: the default pool's and every named pool's
    /// that names none of its own (`backend_protocol`).
    #[serde(
        default,
        skip_serializing_if = "crate::model::upstream::BackendProtocol::is_default"
    )]
    pub backend_protocol: crate::model::upstream::BackendProtocol,
}

/// Connections a node accepts at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
/// The most any node may be told to accept.
pub const MAX_MAX_CONNECTIONS: u32 = 1_000_000;

pub fn default_max_connections() -> u32 {
    DEFAULT_MAX_CONNECTIONS
}

/// A request head's size limit unless told otherwise (64 KiB, as HAProxy's
/// `tune.bufsize` and nginx's `large_client_header_buffers` are in that range).
pub const DEFAULT_MAX_HEADER_BYTES: u32 = 64 * 1024;
/// hyper's read buffer cannot be smaller than 8 KiB.
pub const MIN_MAX_HEADER_BYTES: u32 = 8 * 1024;
/// A head over 1 MiB is an attack, not a request.
pub const MAX_MAX_HEADER_BYTES: u32 = 1024 * 1024;

pub fn default_max_header_bytes() -> u32 {
    DEFAULT_MAX_HEADER_BYTES
}

pub fn max_header_bytes(v: Option<i64>, current: u32) -> Result<u32, ValidationError> {
    match v {
        None => Ok(current),
        Some(v)
            if (i64::from(MIN_MAX_HEADER_BYTES)..=i64::from(MAX_MAX_HEADER_BYTES)).contains(&v) =>
        {
            Ok(v as u32)
        }
        Some(v) => Err(ValidationError::InvalidField(format!(
            "max_header_bytes must be {MIN_MAX_HEADER_BYTES} to {MAX_MAX_HEADER_BYTES}, got {v}"
        ))),
    }
}

pub fn max_connections(v: Option<i64>, current: u32) -> Result<u32, ValidationError> {
    match v {
        None => Ok(current),
        Some(v) if (1..=i64::from(MAX_MAX_CONNECTIONS)).contains(&v) => Ok(v as u32),
        Some(v) => Err(ValidationError::InvalidField(format!(
            "max_connections must be 1 to {MAX_MAX_CONNECTIONS}, got {v}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_on_round_trips() {
        for s in ["client_ip", "header:x-user"] {
            let h: HashOn = serde_json::from_value(serde_json::json!(s)).unwrap();
            assert_eq!(serde_json::to_value(&h).unwrap(), s);
        }
        let h: HashOn = serde_json::from_value(serde_json::json!("header:X-User")).unwrap();
        assert_eq!(h, HashOn::Header("x-user".into()));
        for bad in ["cookie:x", "header:", "header:a b"] {
            assert!(
                serde_json::from_value::<HashOn>(serde_json::json!(bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn timeouts_fill_and_bound() {
        let t = TimeoutsSpec {
            connect_ms: Some(100),
            ..Default::default()
        }
        .resolve(Timeouts::default())
        .unwrap();
        assert_eq!((t.connect_ms, t.first_byte_ms), (100, 30_000));
        assert_eq!(t.handshake_ms, 10_000);
        // Stored before handshake_ms existed: the default.
        let old: Timeouts = serde_json::from_value(serde_json::json!({"connect_ms": 1,
            "first_byte_ms": 2, "client_idle_ms": 3, "backend_idle_ms": 4}))
        .unwrap();
        assert_eq!(old.handshake_ms, 10_000);
        assert!(TimeoutsSpec {
            client_idle_ms: Some(0),
            ..Default::default()
        }
        .resolve(Timeouts::default())
        .is_err());
    }
}
