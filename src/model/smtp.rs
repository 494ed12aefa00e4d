//! The `smtp` object of an smtp instance (issue 17 §2, seed 001's "the
//! request is transformed into HTTP"): where each accepted message is
//! POSTed, and the limits of the SMTP conversation. Validated here, spoken
//! by lb-node (`dataplane::smtp`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::policy::{Auth, Policy};
use crate::model::TrafficType;

/// `deliver_path` when not given.
pub const DEFAULT_DELIVER_PATH: &str = "/messages";
/// 10 MiB: the usual size of a mail relay's limit.
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 10 * 1024 * 1024;
/// The most a node holds of one message in memory.
pub const MAX_MESSAGE_BYTES: u64 = 64 * 1024 * 1024;
/// RFC 5321 §4.5.3.1.8 asks for at least 100.
pub const DEFAULT_MAX_RECIPIENTS: u32 = 100;
pub const MAX_RECIPIENTS: u32 = 10_000;
/// RFC 5321 §4.5.3.2.7: a server waits at least 5 minutes for a command.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 300;
pub const MAX_IDLE_TIMEOUT_S: u32 = 3600;
/// RFC 5321 §4.5.3.1.4: 512 octets with the CRLF; AUTH lines (RFC 4954 §4)
/// may be longer, so the default leaves room for them.
pub const DEFAULT_MAX_LINE_LENGTH: u32 = 4096;
pub const MIN_MAX_LINE_LENGTH: u32 = 512;
pub const MAX_MAX_LINE_LENGTH: u32 = 65_536;
/// Unknown or malformed commands before the node closes the connection.
pub const DEFAULT_MAX_BAD_COMMANDS: u32 = 10;
pub const MAX_MAX_BAD_COMMANDS: u32 = 1000;

/// `smtp` as a client writes it; absent fields take defaults (on update:
/// keep the stored ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmtpSpec {
    /// The path each message is POSTed to on the backends (default `/messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_path: Option<String>,
    /// The largest message accepted (default 10485760, at most 67108864);
    /// more gets `552 5.3.4`. Advertised as `SIZE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<i64>,
    /// `RCPT TO` accepted per message (default 100); more get `452 4.5.3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_recipients: Option<i64>,
    /// Seconds the node waits for a command or data (default 300, RFC 5321 §4.5.3.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<i64>,
    /// The longest command line, CRLF included (default 4096, 512 to 65536).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_line_length: Option<i64>,
    /// Bad commands (unknown, malformed, out of sequence, too long) before
    /// the node answers `421` and closes (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bad_commands: Option<i64>,
}

/// A validated `smtp` object: every field set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Smtp {
    pub deliver_path: String,
    pub max_message_bytes: u64,
    pub max_recipients: u32,
    pub idle_timeout: u32,
    pub max_line_length: u32,
    pub max_bad_commands: u32,
}

impl Default for Smtp {
    fn default() -> Smtp {
        Smtp {
            deliver_path: DEFAULT_DELIVER_PATH.into(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_recipients: DEFAULT_MAX_RECIPIENTS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT_S,
            max_line_length: DEFAULT_MAX_LINE_LENGTH,
            max_bad_commands: DEFAULT_MAX_BAD_COMMANDS,
        }
    }
}

/// An `smtp` object that cannot be accepted, each with its own code.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SmtpError {
    #[error("`smtp` needs traffic_type smtp")]
    NotSmtp,
    #[error("invalid smtp.deliver_path {0:?}: a path starts with / and holds no spaces, control characters or #")]
    InvalidDeliverPath(String),
    #[error("invalid smtp.{field}: must be {min} to {max}, got {value}")]
    OutOfRange {
        field: &'static str,
        min: u64,
        max: u64,
        value: i64,
    },
    #[error("{0} needs traffic_type http (an smtp instance takes auth and rate_limits)")]
    NotForSmtp(&'static str),
    #[error("an smtp instance takes auth mode service or basic (AUTH PLAIN/LOGIN carry a user and a password)")]
    AuthMode,
}

impl SmtpError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotSmtp => "smtp_not_allowed",
            Self::InvalidDeliverPath(_) => "invalid_smtp_deliver_path",
            Self::OutOfRange { .. } => "invalid_smtp_limit",
            Self::NotForSmtp(_) => "invalid_field",
            Self::AuthMode => "invalid_smtp_auth",
        }
    }
}

impl SmtpSpec {
    /// The object with the given fields over `current` (the defaults on create).
    pub fn resolve(&self, current: &Smtp) -> Result<Smtp, SmtpError> {
        let deliver_path = match &self.deliver_path {
            Some(p) => deliver_path(p)?,
            None => current.deliver_path.clone(),
        };
        let limit = |field, v: Option<i64>, cur: u64, min: u64, max: u64| match v {
            None => Ok(cur),
            Some(value) if value >= 0 && (min..=max).contains(&(value as u64)) => Ok(value as u64),
            Some(value) => Err(SmtpError::OutOfRange {
                field,
                min,
                max,
                value,
            }),
        };
        let small = |field, v, cur: u32, min, max: u32| {
            limit(field, v, u64::from(cur), min, u64::from(max)).map(|n| n as u32)
        };
        Ok(Smtp {
            deliver_path,
            max_message_bytes: limit(
                "max_message_bytes",
                self.max_message_bytes,
                current.max_message_bytes,
                1024,
                MAX_MESSAGE_BYTES,
            )?,
            max_recipients: small(
                "max_recipients",
                self.max_recipients,
                current.max_recipients,
                1,
                MAX_RECIPIENTS,
            )?,
            idle_timeout: small(
                "idle_timeout",
                self.idle_timeout,
                current.idle_timeout,
                1,
                MAX_IDLE_TIMEOUT_S,
            )?,
            max_line_length: small(
                "max_line_length",
                self.max_line_length,
                current.max_line_length,
                u64::from(MIN_MAX_LINE_LENGTH),
                MAX_MAX_LINE_LENGTH,
            )?,
            max_bad_commands: small(
                "max_bad_commands",
                self.max_bad_commands,
                current.max_bad_commands,
                1,
                MAX_MAX_BAD_COMMANDS,
            )?,
        })
    }
}

impl Smtp {
    /// The object as `create` takes it (what `info` shows).
    pub fn to_spec(&self) -> SmtpSpec {
        SmtpSpec {
            deliver_path: Some(self.deliver_path.clone()),
            max_message_bytes: Some(self.max_message_bytes as i64),
            max_recipients: Some(i64::from(self.max_recipients)),
            idle_timeout: Some(i64::from(self.idle_timeout)),
            max_line_length: Some(i64::from(self.max_line_length)),
            max_bad_commands: Some(i64::from(self.max_bad_commands)),
        }
    }
}

/// The `smtp` of an instance of `traffic`: resolved over `current` (the
/// stored one; the defaults when none) for smtp, refused when given for
/// any other type. An smtp instance's policy may hold auth (`service` or
/// `basic`) and rate limits, no pools or rules; its pool is not managed.
pub fn for_instance(
    traffic: TrafficType,
    spec: Option<&SmtpSpec>,
    current: Option<&Smtp>,
    policy: &Policy,
    managed: bool,
) -> Result<Option<Smtp>, SmtpError> {
    if traffic != TrafficType::Smtp {
        return match spec {
            Some(_) => Err(SmtpError::NotSmtp),
            None => Ok(None),
        };
    }
    if !policy.pools.is_empty() {
        return Err(SmtpError::NotForSmtp("pools"));
    }
    if !policy.rules.is_empty() {
        return Err(SmtpError::NotForSmtp("rules"));
    }
    if managed {
        return Err(SmtpError::NotForSmtp("backend.managed"));
    }
    if matches!(policy.auth, Some(Auth::ApiKey { .. })) {
        return Err(SmtpError::AuthMode);
    }
    let default = Smtp::default();
    let current = current.unwrap_or(&default);
    spec.map_or_else(|| Ok(current.clone()), |s| s.resolve(current))
        .map(Some)
}

/// An origin-form path of printable ASCII (a query is allowed: the
/// backend may want one).
fn deliver_path(p: &str) -> Result<String, SmtpError> {
    let ok = p.starts_with('/')
        && p.len() <= 1024
        && p.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
    if ok {
        Ok(p.to_string())
    } else {
        Err(SmtpError::InvalidDeliverPath(p.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolve(v: serde_json::Value) -> Result<Smtp, SmtpError> {
        serde_json::from_value::<SmtpSpec>(v)
            .unwrap()
            .resolve(&Smtp::default())
    }

    #[test]
    fn absent_fields_take_the_defaults() {
        let s = resolve(json!({})).unwrap();
        assert_eq!(s, Smtp::default());
        assert_eq!(s.deliver_path, "/messages");
        assert_eq!(s.idle_timeout, 300);
        let s = resolve(json!({"deliver_path": "/in?x=1", "max_recipients": 3})).unwrap();
        assert_eq!((s.deliver_path.as_str(), s.max_recipients), ("/in?x=1", 3));
        // What info shows reads back as the same object.
        assert_eq!(s.to_spec().resolve(&Smtp::default()).unwrap(), s);
    }

    #[test]
    fn bad_values_have_their_own_codes() {
        let code = |v| resolve(v).unwrap_err().code();
        assert_eq!(
            code(json!({"deliver_path": "messages"})),
            "invalid_smtp_deliver_path"
        );
        assert_eq!(
            code(json!({"deliver_path": "/a b"})),
            "invalid_smtp_deliver_path"
        );
        assert_eq!(
            code(json!({"deliver_path": "/é"})),
            "invalid_smtp_deliver_path"
        );
        assert_eq!(code(json!({"max_recipients": 0})), "invalid_smtp_limit");
        assert_eq!(code(json!({"max_message_bytes": -1})), "invalid_smtp_limit");
        assert_eq!(
            code(json!({"max_message_bytes": 1_000_000_000})),
            "invalid_smtp_limit"
        );
        assert_eq!(code(json!({"idle_timeout": 0})), "invalid_smtp_limit");
        assert_eq!(code(json!({"max_line_length": 100})), "invalid_smtp_limit");
        assert_eq!(code(json!({"max_bad_commands": 0})), "invalid_smtp_limit");
        assert!(serde_json::from_value::<SmtpSpec>(json!({"path": "/x"})).is_err());
    }

    #[test]
    fn an_update_keeps_what_it_does_not_name() {
        let current = resolve(json!({"max_recipients": 7, "idle_timeout": 20})).unwrap();
        let next = SmtpSpec {
            idle_timeout: Some(60),
            ..Default::default()
        }
        .resolve(&current)
        .unwrap();
        assert_eq!((next.max_recipients, next.idle_timeout), (7, 60));
    }
}
