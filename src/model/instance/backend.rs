//! A pool's members as written (`entities`) and as validated (addresses,
//! host names), and its health check.

use super::*;

/// One backend as a client may write it: `"10.1.0.5:80"`, `"10.1.0.5"` (the
/// listener port), `"http://10.1.0.5:80/"`, `"app.internal:8000"` (a host
/// name, resolved by the nodes), `{"address": "...", "weight": 2}`, or the
/// seed's one-element list of one of these. Read and described by
/// `entity.rs` (its refusal names the field and the forms).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BackendEntity {
    Text(String),
    Object {
        address: String,
        #[serde(default)]
        weight: Option<i64>,
    },
}

/// A validated backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendMember {
    #[schemars(with = "String")]
    pub address: SocketAddr,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HealthProtocol {
    #[serde(rename = "HTTP", alias = "http")]
    Http,
    #[serde(rename = "TCP", alias = "tcp")]
    Tcp,
}

/// The seed's health-check object as a client writes it; absent fields take defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub protocol: Option<HealthProtocol>,
    #[serde(default)]
    pub port: Option<i64>,
    #[serde(default, rename = "request-path")]
    pub request_path: Option<String>,
    /// HTTP statuses that pass: `200-399` (default), one code such as `204`, or
    /// a comma-separated list of both such as `200,301-302`.
    #[serde(default, rename = "expected-codes")]
    pub expected_codes: Option<String>,
    #[serde(default)]
    pub criteria: Option<HealthCriteriaSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCriteriaSpec {
    /// Seconds between checks.
    #[serde(default)]
    pub interval: Option<i64>,
    /// Seconds before a check counts as failed; never above `interval`.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// Consecutive successes to count as up.
    #[serde(default, rename = "health-threshold")]
    pub health_threshold: Option<i64>,
    /// Consecutive failures to count as down.
    #[serde(default, rename = "unhealth-threshold")]
    pub unhealth_threshold: Option<i64>,
}

/// A resolved health check: every field set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthCheck {
    pub protocol: HealthProtocol,
    pub port: u16,
    #[serde(rename = "request-path")]
    pub request_path: String,
    #[serde(rename = "expected-codes", default)]
    #[schemars(with = "String")]
    pub expected_codes: ExpectedCodes,
    pub criteria: HealthCriteria,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HealthCriteria {
    pub interval: u32,
    pub timeout: u32,
    #[serde(rename = "health-threshold")]
    pub health_threshold: u32,
    #[serde(rename = "unhealth-threshold")]
    pub unhealth_threshold: u32,
}

/// The members of a pool that takes addresses only (a federation provider).
pub(crate) fn members(
    entities: &[BackendEntity],
    default_port: u16,
    traffic: TrafficType,
) -> Result<Vec<BackendMember>, ValidationError> {
    let (members, named) = entity_members(entities, default_port, traffic)?;
    if let Some(n) = named.first() {
        return Err(ValidationError::InvalidBackend {
            entity: n.address.to_string(),
            reason: "a federation provider lists IP addresses, not host names".into(),
        });
    }
    Ok(members)
}

/// The address members and the host-name members (resolved by the nodes)
/// of a pool's `entities`.
pub(crate) fn entity_members(
    entities: &[BackendEntity],
    default_port: u16,
    traffic: TrafficType,
) -> Result<(Vec<BackendMember>, Vec<NamedMember>), ValidationError> {
    if entities.is_empty() {
        return Err(ValidationError::InvalidBackend {
            entity: String::new(),
            reason: "at least one backend entity is required".into(),
        });
    }
    if entities.len() > MAX_BACKENDS {
        return Err(ValidationError::InvalidBackend {
            entity: format!("{} entities", entities.len()),
            reason: format!("at most {MAX_BACKENDS} backends"),
        });
    }
    let mut out: Vec<BackendMember> = Vec::with_capacity(entities.len());
    let mut named: Vec<NamedMember> = Vec::new();
    for entity in entities {
        let (address, weight) = match entity {
            BackendEntity::Text(s) => (s, 1),
            BackendEntity::Object { address, weight } => (address, weight.unwrap_or(1)),
        };
        if !(0..=256).contains(&weight) {
            return Err(ValidationError::InvalidBackend {
                entity: address.clone(),
                reason: format!("weight must be 0 to 256, got {weight}"),
            });
        }
        let weight = weight as u32;
        let twice = |entity: String| ValidationError::InvalidBackend {
            entity,
            reason: "listed twice".into(),
        };
        match backend_address(address, default_port, traffic)? {
            Target::Ip(address) => {
                if out.iter().any(|m| m.address == address) {
                    return Err(twice(address.to_string()));
                }
                out.push(BackendMember { address, weight });
            }
            Target::Name(address) => {
                if named.iter().any(|m| m.address == address) {
                    return Err(twice(address.to_string()));
                }
                named.push(NamedMember { address, weight });
            }
        }
    }
    Ok((out, named))
}

/// What an entity's text names: an address, or a host name to resolve.
enum Target {
    Ip(SocketAddr),
    Name(HostPort),
}

/// Parses `IP`, `IP:PORT`, `[V6]:PORT`, `HOST[:PORT]` or, for HTTP,
/// `http://IP-OR-HOST[:PORT][/]`.
fn backend_address(
    s: &str,
    default_port: u16,
    traffic: TrafficType,
) -> Result<Target, ValidationError> {
    let fail = |reason: &str| ValidationError::InvalidBackend {
        entity: s.to_string(),
        reason: reason.to_string(),
    };
    let mut rest = s.trim();
    let mut url_port = None;
    if let Some(r) = rest.strip_prefix("http://") {
        if !traffic.is_http() {
            return Err(fail("an http:// URL needs traffic_type http"));
        }
        rest = r.strip_suffix('/').unwrap_or(r);
        if rest.contains('/') {
            return Err(fail("a backend URL may not have a path"));
        }
        url_port = Some(80);
    } else if rest.contains("://") {
        return Err(fail("only http:// URLs are supported"));
    }
    let addr = if let Ok(sa) = rest.parse::<SocketAddr>() {
        sa
    } else if let Ok(ip) = rest.parse::<IpAddr>() {
        SocketAddr::new(ip, url_port.unwrap_or(default_port))
    } else if let Some(ip) = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<IpAddr>().ok())
    {
        SocketAddr::new(ip, url_port.unwrap_or(default_port))
    } else {
        return host_target(rest, url_port.unwrap_or(default_port)).map_err(fail);
    };
    if addr.port() == 0 {
        return Err(fail("port 0 is not a valid backend port"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(fail("not a unicast address"));
    }
    Ok(Target::Ip(addr))
}

/// `HOST` (on `default_port`) or `HOST:PORT`, a name the nodes resolve.
fn host_target(rest: &str, default_port: u16) -> Result<Target, &'static str> {
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => (
            host,
            port.parse::<u16>()
                .map_err(|_| "the port must be 1-65535")?,
        ),
        None => (rest, default_port),
    };
    HostPort::new(host, port).map(Target::Name)
}

pub(crate) fn health_check(
    spec: Option<&HealthCheckSpec>,
    traffic: TrafficType,
) -> Result<HealthCheck, ValidationError> {
    let default = HealthCheckSpec::default();
    let spec = spec.unwrap_or(&default);
    let protocol = spec.protocol.unwrap_or(match traffic.backend_protocol() {
        TrafficType::Tcp => HealthProtocol::Tcp,
        _ => HealthProtocol::Http,
    });
    // Without an explicit port, each member is checked on its own port; 0 records that.
    let port = match spec.port {
        None => 0,
        Some(p) => port(p)
            .map_err(|_| ValidationError::InvalidHealthCheck(format!("port {p} is not 1-65535")))?,
    };
    let request_path = spec.request_path.clone().unwrap_or_else(|| "/".to_string());
    if !request_path.starts_with('/')
        || request_path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ValidationError::InvalidHealthCheck(format!(
            "request-path {request_path:?} must start with '/' and contain no spaces"
        )));
    }
    let expected_codes = match &spec.expected_codes {
        Some(s) => s.parse()?,
        None => ExpectedCodes::default(),
    };
    let c = spec.criteria.clone().unwrap_or_default();
    let bounded =
        |name: &str, v: Option<i64>, default: u32, max: u32| -> Result<u32, ValidationError> {
            let v = v.unwrap_or(i64::from(default));
            if v < 1 || v > i64::from(max) {
                return Err(ValidationError::InvalidHealthCheck(format!(
                    "{name} must be 1 to {max}, got {v}"
                )));
            }
            Ok(v as u32)
        };
    let interval = bounded("interval", c.interval, 5, 3600)?;
    let timeout = bounded("timeout", c.timeout, interval.min(5), 3600)?;
    if timeout > interval {
        return Err(ValidationError::InvalidHealthCheck(format!(
            "timeout ({timeout}) must not exceed interval ({interval})"
        )));
    }
    Ok(HealthCheck {
        protocol,
        port,
        request_path,
        expected_codes,
        criteria: HealthCriteria {
            interval,
            timeout,
            health_threshold: bounded("health-threshold", c.health_threshold, 2, 100)?,
            unhealth_threshold: bounded("unhealth-threshold", c.unhealth_threshold, 2, 100)?,
        },
    })
}
