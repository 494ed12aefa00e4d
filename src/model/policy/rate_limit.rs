//! Rate limits of an http instance (seed 001's `limits` table): GCRA over
//! `threshold` requests or bytes per `period` seconds, per key.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{check_header_name, check_policy_name, PolicyError};

/// The longest period a limit may have: a day.
pub const MAX_PERIOD_S: i64 = 86_400;

/// What a limit counts per.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
pub enum LimitKey {
    ClientIp,
    /// The token the auth service returned (`auth_token`).
    AuthToken,
    Header(String),
    Cookie(String),
}

impl TryFrom<String> for LimitKey {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Self, PolicyError> {
        let bad = || {
            PolicyError::InvalidRateLimit(format!(
                "key {s:?}: expected client_ip, auth_token, header:<Name> or cookie:<Name>"
            ))
        };
        match s.as_str() {
            "client_ip" => Ok(Self::ClientIp),
            "auth_token" => Ok(Self::AuthToken),
            _ => {
                if let Some(name) = s.strip_prefix("header:") {
                    check_header_name(name).map_err(|_| bad())?;
                    Ok(Self::Header(name.to_ascii_lowercase()))
                } else if let Some(name) = s.strip_prefix("cookie:") {
                    check_header_name(name).map_err(|_| bad())?;
                    Ok(Self::Cookie(name.to_string()))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl From<LimitKey> for String {
    fn from(k: LimitKey) -> String {
        match k {
            LimitKey::ClientIp => "client_ip".into(),
            LimitKey::AuthToken => "auth_token".into(),
            LimitKey::Header(n) => format!("header:{n}"),
            LimitKey::Cookie(n) => format!("cookie:{n}"),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitUnit {
    #[default]
    Requests,
    /// Request body bytes (vulcan's `data_size`).
    Bytes,
}

/// Where the counters live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// Each node enforces `threshold / serving nodes` (an approximation).
    #[default]
    Node,
    /// Counters in lbd's Redis (`--redis-url`), shared by all nodes.
    Global,
}

/// One rate limit as a client writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub name: String,
    pub key: String,
    /// Only requests with one of these methods count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Seconds (1-86400).
    pub period: i64,
    /// Requests (or bytes) per period, at least 1.
    pub threshold: i64,
    /// How much may be used at once; defaults to the whole threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<LimitUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<LimitScope>,
}

/// A validated rate limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub name: String,
    pub key: LimitKey,
    /// Upper case; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    pub period: u32,
    pub threshold: u64,
    pub burst: u64,
    pub unit: LimitUnit,
    pub scope: LimitScope,
}

impl RateLimitSpec {
    pub fn validate(&self) -> Result<RateLimit, PolicyError> {
        check_policy_name("rate limit", &self.name)?;
        let key = LimitKey::try_from(self.key.clone())?;
        if !(1..=MAX_PERIOD_S).contains(&self.period) {
            return Err(PolicyError::InvalidPeriod {
                limit: self.name.clone(),
                period: self.period,
            });
        }
        if self.threshold < 1 {
            return Err(PolicyError::InvalidThreshold {
                limit: self.name.clone(),
                threshold: self.threshold,
            });
        }
        let burst = match self.burst {
            None => self.threshold,
            Some(b) if b >= 1 => b,
            Some(b) => {
                return Err(PolicyError::InvalidRateLimit(format!(
                    "{}: burst must be at least 1, got {b}",
                    self.name
                )))
            }
        };
        let method = super::rules::methods(self.method.as_deref().unwrap_or_default())?;
        if let Some(p) = &self.path_prefix {
            super::rules::check_path(p)?;
        }
        Ok(RateLimit {
            name: self.name.clone(),
            key,
            method,
            path_prefix: self.path_prefix.clone(),
            period: self.period as u32,
            threshold: self.threshold as u64,
            burst: burst as u64,
            unit: self.unit.unwrap_or_default(),
            scope: self.scope.unwrap_or_default(),
        })
    }
}

impl RateLimit {
    /// The threshold one of `nodes` serving nodes enforces under `node`
    /// scope: an even share, at least 1.
    pub fn node_share(&self, nodes: u32) -> u64 {
        (self.threshold / u64::from(nodes.max(1))).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> RateLimitSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn burst_defaults_to_the_threshold_and_keys_parse() {
        let l = spec(r#"{"name":"api","key":"header:X-User","period":10,"threshold":5}"#)
            .validate()
            .unwrap();
        assert_eq!(l.burst, 5);
        assert_eq!(l.key, LimitKey::Header("x-user".into()));
        assert_eq!(l.scope, LimitScope::Node);
        assert_eq!(l.unit, LimitUnit::Requests);
    }

    #[test]
    fn zero_period_and_zero_threshold_have_their_own_codes() {
        let e = spec(r#"{"name":"a","key":"client_ip","period":0,"threshold":5}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.code(), "invalid_rate_limit_period");
        let e = spec(r#"{"name":"a","key":"client_ip","period":5,"threshold":0}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.code(), "invalid_rate_limit_threshold");
        let e = spec(r#"{"name":"a","key":"ip","period":5,"threshold":1}"#)
            .validate()
            .unwrap_err();
        assert_eq!(e.code(), "invalid_rate_limit");
    }

    #[test]
    fn the_node_share_splits_the_threshold() {
        let l = spec(r#"{"name":"a","key":"client_ip","period":10,"threshold":5}"#)
            .validate()
            .unwrap();
        assert_eq!(l.node_share(2), 2);
        assert_eq!(l.node_share(10), 1);
        assert_eq!(l.node_share(0), 5);
    }
}
