//! Sticky routing of a pool (`backend.sticky`, `pools.<name>.sticky`):
//! a signed cookie naming the member that served, or a consistent hash of
//! the client IP or a header. Validated here; lb-node applies it
//! (`dataplane::sticky`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::{HashOn, TrafficType};

/// The cookie's lifetime when `ttl` is left out.
pub const DEFAULT_TTL_S: u32 = 3600;
/// The longest cookie lifetime: a year.
pub const MAX_TTL_S: u32 = 365 * 24 * 3600;
/// The longest cookie name.
pub const MAX_COOKIE_NAME: usize = 64;

/// `sticky` as a client writes it: `"none"` (no stickiness; on update it
/// removes the stored one) or one of the two forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StickySpec {
    Off(NoSticky),
    On(StickyRule),
}

// By hand rather than `untagged`: an untagged enum answers any mistake with
// "did not match any variant", while a typo inside the object should be
// `unknown_field` like everywhere else.
impl<'de> Deserialize<'de> for StickySpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) if s == "none" => Ok(StickySpec::Off(NoSticky::None)),
            v @ serde_json::Value::Object(_) => StickyRule::deserialize(v)
                .map(StickySpec::On)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "sticky: expected \"none\" or an object, got {other}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoSticky {
    None,
}

/// `{"cookie": NAME, "ttl": SECONDS?}` or `{"hash": "client_ip" | "header:X"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StickyRule {
    /// The cookie's name (an RFC 6265 token, at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    /// The cookie's lifetime in seconds, 1 to 31536000; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
    /// What the consistent hash keys on: `client_ip` or `header:<Name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// A validated `sticky`, as stored and as a node gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Sticky {
    /// The node sets a signed cookie naming the member that served.
    Cookie { name: String, ttl_s: u32 },
    /// The pool picks by consistent hash of this key.
    Hash(HashOn),
}

/// A `sticky` that cannot be accepted, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StickyError {
    #[error("sticky: give either cookie or hash, not both")]
    Both,
    #[error("sticky: give cookie (with an optional ttl) or hash")]
    Neither,
    #[error("sticky: ttl goes with cookie, not hash")]
    TtlWithoutCookie,
    #[error(
        "sticky.cookie {0:?}: a cookie name is 1-{MAX_COOKIE_NAME} characters of an RFC 6265 token (letters, digits, !#$%&'*+-.^_`|~)"
    )]
    CookieName(String),
    #[error("sticky.ttl {0}: expected 1 to {MAX_TTL_S} seconds")]
    Ttl(i64),
    #[error("sticky.hash {0:?}: expected \"client_ip\" or \"header:<Name>\"")]
    Hash(String),
    #[error("sticky needs traffic_type http")]
    NotHttp,
}

impl StickyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Both | Self::Neither | Self::TtlWithoutCookie | Self::NotHttp => "invalid_sticky",
            Self::CookieName(_) => "invalid_sticky_cookie",
            Self::Ttl(_) => "invalid_sticky_ttl",
            Self::Hash(_) => "invalid_sticky_hash",
        }
    }
}

impl StickySpec {
    /// The stored form; `None` for `"none"`.
    pub fn validate(&self, traffic: TrafficType) -> Result<Option<Sticky>, StickyError> {
        let rule = match self {
            StickySpec::Off(NoSticky::None) => return Ok(None),
            StickySpec::On(rule) => rule,
        };
        if !traffic.is_http() {
            return Err(StickyError::NotHttp);
        }
        let sticky = match (&rule.cookie, &rule.hash) {
            (Some(_), Some(_)) => return Err(StickyError::Both),
            (None, None) => return Err(StickyError::Neither),
            (Some(name), None) => Sticky::Cookie {
                name: cookie_name(name)?,
                ttl_s: ttl(rule.ttl)?,
            },
            (None, Some(_)) if rule.ttl.is_some() => return Err(StickyError::TtlWithoutCookie),
            (None, Some(on)) => Sticky::Hash(
                HashOn::try_from(on.clone()).map_err(|_| StickyError::Hash(on.clone()))?,
            ),
        };
        Ok(Some(sticky))
    }
}

fn cookie_name(name: &str) -> Result<String, StickyError> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if (1..=MAX_COOKIE_NAME).contains(&name.len()) && name.bytes().all(token) {
        Ok(name.to_string())
    } else {
        Err(StickyError::CookieName(name.to_string()))
    }
}

fn ttl(ttl: Option<i64>) -> Result<u32, StickyError> {
    match ttl {
        None => Ok(DEFAULT_TTL_S),
        Some(t) if (1..=i64::from(MAX_TTL_S)).contains(&t) => Ok(t as u32),
        Some(t) => Err(StickyError::Ttl(t)),
    }
}

impl Sticky {
    /// The shape `create`/`update` take, so it can be sent again.
    pub fn to_spec(&self) -> StickySpec {
        StickySpec::On(match self {
            Sticky::Cookie { name, ttl_s } => StickyRule {
                cookie: Some(name.clone()),
                ttl: Some(i64::from(*ttl_s)),
                hash: None,
            },
            Sticky::Hash(on) => StickyRule {
                hash: Some(on.to_string()),
                ..Default::default()
            },
        })
    }
}

/// The instance's key that signs sticky cookies (32 bytes, hex on the
/// wire). One per instance, not per node, so a cookie one node set is
/// good on the others. Never printed: `Debug` shows `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "String", into = "String")]
#[schemars(with = "String")]
pub struct StickyKey([u8; 32]);

impl StickyKey {
    pub fn new(bytes: [u8; 32]) -> Self {
        StickyKey(bytes)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StickyKey(***)")
    }
}

impl TryFrom<String> for StickyKey {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let bad = || "sticky_key: expected 64 hex digits".to_string();
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(StickyKey(out))
    }
}

impl From<StickyKey> for String {
    fn from(k: StickyKey) -> String {
        k.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Option<Sticky>, StickyError> {
        serde_json::from_str::<StickySpec>(json)
            .unwrap()
            .validate(TrafficType::Http)
    }

    #[test]
    fn the_two_forms_and_none() {
        assert_eq!(
            parse(r#"{"cookie":"lbaas_sticky","ttl":60}"#),
            Ok(Some(Sticky::Cookie {
                name: "lbaas_sticky".into(),
                ttl_s: 60
            }))
        );
        assert_eq!(
            parse(r#"{"cookie":"s"}"#),
            Ok(Some(Sticky::Cookie {
                name: "s".into(),
                ttl_s: DEFAULT_TTL_S
            }))
        );
        assert_eq!(
            parse(r#"{"hash":"header:X-User"}"#),
            Ok(Some(Sticky::Hash(HashOn::Header("x-user".into()))))
        );
        assert_eq!(parse(r#""none""#), Ok(None));
    }

    #[test]
    fn bad_input_has_its_own_code() {
        let code = |json: &str| parse(json).unwrap_err().code();
        assert_eq!(
            code(r#"{"cookie":"a","hash":"client_ip"}"#),
            "invalid_sticky"
        );
        assert_eq!(code(r#"{}"#), "invalid_sticky");
        assert_eq!(code(r#"{"hash":"client_ip","ttl":5}"#), "invalid_sticky");
        assert_eq!(code(r#"{"cookie":"a b"}"#), "invalid_sticky_cookie");
        assert_eq!(code(r#"{"cookie":"a;b"}"#), "invalid_sticky_cookie");
        assert_eq!(code(r#"{"cookie":""}"#), "invalid_sticky_cookie");
        let long = format!(r#"{{"cookie":"{}"}}"#, "a".repeat(65));
        assert_eq!(code(&long), "invalid_sticky_cookie");
        assert_eq!(code(r#"{"cookie":"a","ttl":0}"#), "invalid_sticky_ttl");
        assert_eq!(
            code(r#"{"cookie":"a","ttl":31536001}"#),
            "invalid_sticky_ttl"
        );
        assert_eq!(code(r#"{"hash":"cookie:x"}"#), "invalid_sticky_hash");
        let tcp = serde_json::from_str::<StickySpec>(r#"{"hash":"client_ip"}"#).unwrap();
        assert_eq!(tcp.validate(TrafficType::Tcp), Err(StickyError::NotHttp));
    }

    #[test]
    fn a_typo_is_an_unknown_field_and_a_wrong_shape_says_what_is_expected() {
        let err = serde_json::from_str::<StickySpec>(r#"{"cokie":"a"}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `cokie`"),
            "{err}"
        );
        let err = serde_json::from_str::<StickySpec>("true").unwrap_err();
        assert!(err.to_string().contains("\"none\" or an object"), "{err}");
    }

    #[test]
    fn to_spec_round_trips() {
        for s in [
            Sticky::Cookie {
                name: "c".into(),
                ttl_s: 9,
            },
            Sticky::Hash(HashOn::ClientIp),
        ] {
            assert_eq!(s.to_spec().validate(TrafficType::Http), Ok(Some(s)));
        }
    }

    #[test]
    fn the_key_is_hex_on_the_wire_and_never_debug_printed() {
        let key = StickyKey::new([0xab; 32]);
        let wire = serde_json::to_string(&key).unwrap();
        assert_eq!(wire, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<StickyKey>(&wire).unwrap(), key);
        assert!(!format!("{key:?}").contains("ab"));
        assert!(serde_json::from_str::<StickyKey>("\"abc\"").is_err());
    }
}
