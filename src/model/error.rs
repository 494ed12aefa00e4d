//! Validation errors: what is wrong with a request, before anything is stored.

use thiserror::Error;

use crate::model::policy::PolicyError;

/// A request that cannot be accepted as written. Each variant has a stable
/// code (see [`ValidationError::code`]) that clients can match on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    /// The request body is not JSON.
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The envelope is not an object with `action`, `type` and `info`.
    #[error("invalid envelope: {0}")]
    InvalidEnvelope(String),
    #[error("unknown action {0:?}: expected one of create, info, update, delete")]
    UnknownAction(String),
    #[error(
        "unknown type {0:?}: expected project, instance, mapping, user, audit, usage or whoami"
    )]
    UnknownType(String),
    #[error("`{action}` is not an action of type `{object_type}`: it takes {takes}")]
    UnsupportedAction {
        action: &'static str,
        object_type: &'static str,
        /// The actions it takes, for the message.
        takes: &'static str,
    },
    #[error("missing field `{0}`")]
    MissingField(String),
    #[error("unknown field `{0}`")]
    UnknownField(String),
    /// A field is present but has the wrong JSON type or an unknown value.
    #[error("invalid field: {0}")]
    InvalidField(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// `create project` with a non-empty `instances` (the seed's shape).
    #[error(
        "`instances` of project {0:?} must be empty: instances are created separately, \
         each with `create instance` and `\"project\": {0:?}`, once the project exists"
    )]
    InstancesInProject(String),
    #[error("invalid address {0:?}: expected an IP address")]
    InvalidAddress(String),
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet { subnet: String, reason: String },
    #[error("invalid port {0}: expected 1-65535")]
    InvalidPort(i64),
    #[error("invalid backend {entity:?}: {reason}")]
    InvalidBackend { entity: String, reason: String },
    #[error("invalid health check: {0}")]
    InvalidHealthCheck(String),
    #[error("invalid auto-scaling settings: {0}")]
    InvalidScaling(String),
    /// An L7 policy (pools, rules, auth, rate limits) that cannot be
    /// accepted; its code is the policy error's own.
    #[error(transparent)]
    Policy(PolicyError),
    /// A managed pool (`backend.managed`, `pools.<name>.managed`) that
    /// cannot be accepted; its code is the managed error's own.
    #[error(transparent)]
    Managed(crate::model::managed::ManagedError),
    /// A `sticky` that cannot be accepted; its code is the sticky error's own.
    #[error(transparent)]
    Sticky(crate::model::sticky::StickyError),
    /// An `smtp` object (or a field an smtp instance does not take); its
    /// code is the smtp error's own.
    #[error(transparent)]
    Smtp(crate::model::smtp::SmtpError),
    /// A `tls` that cannot be accepted; its code is the TLS error's own.
    #[error(transparent)]
    Tls(crate::model::tls::TlsError),
    /// A `backend_tls` that cannot be accepted; its code is its error's own.
    #[error(transparent)]
    BackendTls(#[from] crate::model::backend_tls::BackendTlsError),
    /// A `federation` (or a mapping naming a provider it does not have);
    /// its code is the federation error's own.
    #[error(transparent)]
    Federation(#[from] crate::model::federation::FederationError),
}

impl From<crate::model::tls::TlsError> for ValidationError {
    fn from(e: crate::model::tls::TlsError) -> Self {
        Self::Tls(e)
    }
}

impl From<crate::model::smtp::SmtpError> for ValidationError {
    fn from(e: crate::model::smtp::SmtpError) -> Self {
        match e {
            // A field the traffic type does not take, as `NotForTcp`.
            e @ crate::model::smtp::SmtpError::NotForSmtp(_) => Self::InvalidField(e.to_string()),
            e => Self::Smtp(e),
        }
    }
}

impl From<crate::model::sticky::StickyError> for ValidationError {
    fn from(e: crate::model::sticky::StickyError) -> Self {
        Self::Sticky(e)
    }
}

impl From<crate::model::managed::ManagedError> for ValidationError {
    fn from(e: crate::model::managed::ManagedError) -> Self {
        Self::Managed(e)
    }
}

impl From<PolicyError> for ValidationError {
    fn from(e: PolicyError) -> Self {
        match e {
            // A field the traffic type does not take, like `proxy_protocol` on http.
            PolicyError::NotForTcp(reason) => Self::InvalidField(reason),
            e => Self::Policy(e),
        }
    }
}

impl ValidationError {
    /// The stable machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidEnvelope(_) => "invalid_envelope",
            Self::UnknownAction(_) => "unknown_action",
            Self::UnknownType(_) => "unknown_type",
            Self::UnsupportedAction { .. } => "unsupported_action",
            Self::MissingField(_) => "missing_field",
            Self::UnknownField(_) => "unknown_field",
            Self::InvalidField(_) => "invalid_field",
            Self::InvalidName { .. } => "invalid_name",
            Self::InstancesInProject(_) => "instances_created_separately",
            Self::InvalidAddress(_) => "invalid_address",
            Self::InvalidSubnet { .. } => "invalid_subnet",
            Self::InvalidPort(_) => "invalid_port",
            Self::InvalidBackend { .. } => "invalid_backend",
            Self::InvalidHealthCheck(_) => "invalid_health_check",
            Self::InvalidScaling(_) => "invalid_auto_scaling",
            Self::Policy(e) => e.code(),
            Self::Managed(e) => e.code(),
            Self::Sticky(e) => e.code(),
            Self::Smtp(e) => e.code(),
            Self::Tls(e) => e.code(),
            Self::BackendTls(e) => e.code(),
            Self::Federation(e) => e.code(),
        }
    }

    /// Classifies a serde_json error on a typed `info` into missing, unknown or
    /// wrongly typed field, so that a typo gets `unknown_field`, not a generic error.
    pub fn from_serde(err: &serde_json::Error) -> Self {
        let msg = err.to_string();
        // serde's messages are stable in shape: "missing field `x`", "unknown field `x`, expected ...".
        let quoted = || msg.split('`').nth(1).unwrap_or_default().to_string();
        if msg.starts_with("missing field") {
            Self::MissingField(quoted())
        } else if msg.starts_with("unknown field") {
            Self::UnknownField(quoted())
        } else if msg.starts_with("invalid type: sequence") {
            // The seed writes alternatives as `["tcp"/"http"]`.
            Self::InvalidField(format!(
                "{msg} (a list where one value goes: the seed's [\"a\"/\"b\"] means one of \
                 them, written alone, like \"http\")"
            ))
        } else {
            Self::InvalidField(msg)
        }
    }
}
