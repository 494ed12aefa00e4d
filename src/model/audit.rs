//! The audit log's wire types: `{"action": "info", "type": "audit"}`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::names::validate_user;
use crate::model::ValidationError;

/// How many entries an audit query answers when it says nothing.
pub const DEFAULT_AUDIT_LIMIT: u32 = 100;
/// The most entries one query answers.
pub const MAX_AUDIT_LIMIT: u32 = 10_000;

/// `info audit` (admin only): newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this user's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only entries at or after this time (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<i64>,
    /// At most this many entries (default 100, at most 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

impl AuditQuery {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(user) = &self.user {
            validate_user(user)?;
        }
        match self.limit {
            Some(0) => Err(ValidationError::InvalidField(
                "`limit` must be at least 1".into(),
            )),
            Some(n) if n > MAX_AUDIT_LIMIT => Err(ValidationError::InvalidField(format!(
                "`limit` must be at most {MAX_AUDIT_LIMIT}, got {n}"
            ))),
            _ => Ok(()),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_AUDIT_LIMIT)
    }
}

/// One API call as the audit log keeps it: never a token, never a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    /// Unix seconds.
    pub ts: i64,
    /// The caller's user, or null when no valid token was given.
    pub user: Option<String>,
    /// The client's address (IP, without port).
    pub client: String,
    /// As the request said it, when it could be read.
    pub action: Option<String>,
    #[serde(rename = "type")]
    pub object_type: Option<String>,
    /// The object's name, when the request named one.
    pub name: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The error code of the answer, or null on success.
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_to_100_and_is_bounded() {
        assert_eq!(AuditQuery::default().limit(), 100);
        assert!(AuditQuery {
            limit: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(AuditQuery {
            limit: Some(10_001),
            ..Default::default()
        }
        .validate()
        .is_err());
        assert!(serde_json::from_str::<AuditQuery>(r#"{"users":"a"}"#).is_err());
    }
}
