//! One error type for the API: each variant has an HTTP status and a stable
//! `error.code`; the message is for humans.

use std::net::SocketAddr;

use axum::http::StatusCode;
use thiserror::Error;

use crate::drivers::network::NetworkError;
use crate::model::{Limit, ProvisioningStatus, QuotaKind, ValidationError};
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ApiError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("too many API calls: retry after {} s", .0.header_seconds())]
    RateLimited(super::rate_limit::RetryAfter),
    #[error("quota exceeded: {} is {limit} and user {user} uses {used}", kind.field())]
    QuotaExceeded {
        kind: QuotaKind,
        limit: Limit,
        user: String,
        used: u64,
    },
    #[error("no user named {0:?}")]
    UserNotFound(String),
    #[error("a user named {0:?} already exists")]
    UserExists(String),
    #[error("user {name:?} still owns {count} project(s); delete them or give them to another user first")]
    UserOwnsProjects { name: String, count: u64 },
    #[error(
        "the built-in admin user cannot be deleted, demoted or changed through the API; \
         to change its token, replace admin.token in lbd's state dir and restart lbd"
    )]
    BuiltinUser,
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("no project named {0:?}")]
    ProjectNotFound(String),
    #[error("no instance named {name:?} in project {project:?}")]
    InstanceNotFound { project: String, name: String },
    #[error("a project named {0:?} already exists")]
    ProjectExists(String),
    #[error("an instance named {name:?} already exists in project {project:?}")]
    InstanceExists { project: String, name: String },
    #[error("project {name:?} still has {count} instance(s); delete them first or use force")]
    ProjectNotEmpty { name: String, count: usize },
    #[error("{what} is {status}; try again when the current change has finished")]
    Pending { what: String, status: &'static str },
    #[error("port {0} is reserved for the LB nodes' admin API")]
    PortReserved(u16),
    #[error("instance subnet {subnet} is not inside project subnet {project_subnet}")]
    SubnetMismatch {
        subnet: String,
        project_subnet: String,
    },
    #[error(
        "backend {backend} is link-local (169.254.0.0/16, fe80::/10): such addresses reach \
         the host's own links and cloud metadata services, not a backend; an operator can \
         allow it with --allow-backend-cidr"
    )]
    BackendLinkLocal { backend: SocketAddr },
    #[error(
        "backend {backend} is lbd's own {what} listener ({listener}): an LB must not forward \
         its clients into the control plane; an operator can allow it with --allow-backend-cidr"
    )]
    BackendIsControlPlane {
        backend: SocketAddr,
        what: &'static str,
        listener: SocketAddr,
    },
    #[error(
        "backend {backend} uses port {port}, the LB nodes' admin API port (--node-admin-port): \
         an LB must not forward its clients to a node's admin API; an operator can allow it \
         with --allow-backend-cidr"
    )]
    BackendIsAdminPort { backend: SocketAddr, port: u16 },
    #[error("backend {backend} is the instance's own listener, a loop: {reason}")]
    BackendLoop { backend: SocketAddr, reason: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("state store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("no such endpoint")]
    NoRoute,
    /// A `mapping` request for an instance without a `federation`.
    #[error("instance {name:?} of project {project:?} has no federation: mappings need one")]
    FederationNotConfigured { project: String, name: String },
    /// `delete mapping` of a mapping the instance does not have.
    #[error("instance {instance:?} has no {what}")]
    MappingNotFound { instance: String, what: String },
    /// An instance holds at most so many mappings of a kind.
    #[error("instance {instance:?} already has {limit} {kind} mappings, the most it keeps")]
    TooManyMappings {
        instance: String,
        kind: &'static str,
        limit: u64,
    },
    /// `info usage`: a `since`/`until` that is not a date or RFC 3339 time,
    /// or a window that ends before it starts.
    #[error("{0}")]
    InvalidTime(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        use ValidationError as V;
        match self {
            Self::Invalid(
                V::MalformedJson(_)
                | V::InvalidEnvelope(_)
                | V::UnknownAction(_)
                | V::UnknownType(_)
                // As documented (docs/API.md): an envelope-level refusal.
                | V::UnsupportedAction { .. }
                | V::MissingField(_)
                | V::UnknownField(_)
                | V::InvalidField(_),
            )
            | Self::InvalidTime(_) => StatusCode::BAD_REQUEST,
            Self::Invalid(_)
            | Self::PortReserved(_)
            | Self::SubnetMismatch { .. }
            | Self::BackendLinkLocal { .. }
            | Self::BackendIsControlPlane { .. }
            | Self::BackendIsAdminPort { .. }
            | Self::BackendLoop { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden(_) | Self::QuotaExceeded { .. } => StatusCode::FORBIDDEN,
            Self::UserNotFound(_) => StatusCode::NOT_FOUND,
            Self::UserExists(_) | Self::UserOwnsProjects { .. } | Self::BuiltinUser => {
                StatusCode::CONFLICT
            }
            Self::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ProjectNotFound(_) | Self::InstanceNotFound { .. } | Self::NoRoute => {
                StatusCode::NOT_FOUND
            }
            Self::ProjectExists(_)
            | Self::InstanceExists { .. }
            | Self::ProjectNotEmpty { .. }
            | Self::Pending { .. }
            | Self::FederationNotConfigured { .. }
            | Self::TooManyMappings { .. } => StatusCode::CONFLICT,
            Self::MappingNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Network(NetworkError::Overlap { .. } | NetworkError::InUse { .. }) => {
                StatusCode::CONFLICT
            }
            Self::Network(NetworkError::Unusable { .. } | NetworkError::Backend { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Network(NetworkError::PoolExhausted { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Network(NetworkError::Setup(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Store(StoreError::Unavailable | StoreError::Sqlite(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(v) => v.code(),
            Self::Unauthorized => "unauthorized",
            Self::RateLimited(_) => "rate_limited",
            Self::Forbidden(_) => "forbidden",
            Self::QuotaExceeded { .. } => "quota_exceeded",
            Self::UserNotFound(_) => "user_not_found",
            Self::UserExists(_) => "user_exists",
            Self::UserOwnsProjects { .. } => "user_owns_projects",
            Self::BuiltinUser => "builtin_user",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::ProjectNotFound(_) => "project_not_found",
            Self::InstanceNotFound { .. } => "instance_not_found",
            Self::ProjectExists(_) => "project_exists",
            Self::InstanceExists { .. } => "instance_exists",
            Self::ProjectNotEmpty { .. } => "project_not_empty",
            Self::Pending { .. } => "object_pending",
            Self::PortReserved(_) => "invalid_port",
            Self::SubnetMismatch { .. } => "subnet_mismatch",
            Self::BackendLinkLocal { .. } => "backend_link_local",
            Self::BackendIsControlPlane { .. } => "backend_is_control_plane",
            Self::BackendIsAdminPort { .. } => "backend_is_admin_port",
            Self::BackendLoop { .. } => "backend_loop",
            Self::Network(NetworkError::Overlap { .. }) => "subnet_overlap",
            Self::Network(NetworkError::InUse { .. }) => "subnet_in_use",
            Self::Network(NetworkError::Unusable { .. }) => "invalid_subnet",
            Self::Network(NetworkError::PoolExhausted { .. }) => "subnet_pool_exhausted",
            Self::Network(NetworkError::Setup(_)) => "network_error",
            Self::Network(NetworkError::Backend { .. }) => "invalid_backend",
            Self::Store(StoreError::Unavailable | StoreError::Sqlite(_)) => "store_unavailable",
            Self::Store(_) => "internal",
            Self::NoRoute => "not_found",
            Self::InvalidTime(_) => "invalid_time",
            Self::FederationNotConfigured { .. } => "federation_not_configured",
            Self::MappingNotFound { .. } => "mapping_not_found",
            Self::TooManyMappings { .. } => "too_many_mappings",
        }
    }

    /// 409 when the object is being changed by the reconciler.
    pub fn check_not_pending(
        what: impl Into<String>,
        status: ProvisioningStatus,
    ) -> Result<(), ApiError> {
        if status.is_pending() {
            return Err(ApiError::Pending {
                what: what.into(),
                status: status.as_str(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = ApiError::from(ValidationError::UnknownField("x".into()));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "unknown_field")
        );
        let e = ApiError::from(ValidationError::InvalidPort(0));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_port")
        );
        let e = ApiError::ProjectNotEmpty {
            name: "d".into(),
            count: 1,
        };
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "project_not_empty")
        );
        assert_eq!(
            ApiError::BodyTooLarge(1).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        let e = ApiError::from(NetworkError::InUse {
            subnet: "127.1.0.0/16".parse().unwrap(),
            reason: "another lbd holds it".into(),
        });
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "subnet_in_use")
        );
        let e = ApiError::QuotaExceeded {
            kind: QuotaKind::Instances,
            limit: Limit::AtMost(2),
            user: "alice".into(),
            used: 2,
        };
        assert_eq!(
            (e.status(), e.code(), e.to_string().as_str()),
            (
                StatusCode::FORBIDDEN,
                "quota_exceeded",
                "quota exceeded: max_instances is 2 and user alice uses 2"
            )
        );
        let e = ApiError::FederationNotConfigured {
            project: "p".into(),
            name: "i".into(),
        };
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::CONFLICT, "federation_not_configured")
        );
        let e = ApiError::MappingNotFound {
            instance: "i".into(),
            what: "resource mapping volumes/v1".into(),
        };
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::NOT_FOUND, "mapping_not_found")
        );
        let e = ApiError::from(ValidationError::Federation(
            crate::model::federation::FederationError::UnknownProvider {
                provider: "sp9".into(),
                known: "sp1".into(),
            },
        ));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "unknown_provider")
        );
        let e = ApiError::from(StoreError::Unavailable);
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        );
    }
}
