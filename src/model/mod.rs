//! The domain model: the API's wire types, their validation, and the views the
//! API returns. No I/O here, so the CLI and the TUI can share these types
//! without pulling in the daemon.

pub mod allocator;
pub mod audit;
pub mod backend_tls;
pub mod entity;
pub mod envelope;
pub mod error;
pub mod event;
pub mod expected_codes;
pub mod federation;
pub mod ids;
pub mod instance;
pub mod managed;
pub mod mapping;
pub mod names;
pub mod node;
pub mod policy;
pub mod project;
pub mod scaling;
pub mod schemas;
pub mod smtp;
pub mod status;
pub mod sticky;
pub mod threshold;
pub mod time;
pub mod tls;
pub mod tuning;
pub mod upstream;
pub mod usage;
pub mod user;
pub mod wake;
pub mod warning;

pub use audit::{AuditEntry, AuditQuery};
pub use entity::{HostPort, NameGuard, NamedMember, OwnNodes};
pub use envelope::{
    Action, ErrorBody, ObjectType, RequestEnvelope, ResponseEnvelope, ResponseStatus,
};
pub use error::ValidationError;
pub use event::EventKind;
pub use expected_codes::ExpectedCodes;
pub use ids::{InstanceId, NodeId, ProjectId};
pub use instance::{
    BackendEntity, BackendMember, EventInfo, HealthCheckSpec, HealthCriteria, HealthProtocol,
    InstanceCreate, InstanceDelete, InstanceInfo, InstanceRef, InstanceSpec, InstanceUpdate,
    NodeInfo, SampleInfo, TrafficType,
};
pub use node::{MemberState, MemberStats, NodeConfig, NodeStats, NodeStatus};
pub use project::{
    ProjectCreate, ProjectDelete, ProjectInfo, ProjectRef, ProjectSpec, ProjectUpdate,
};
pub use scaling::{ScalingPolicy, ScalingSpec};
pub use status::{derive_operating_status, NodeState, OperatingStatus, ProvisioningStatus};
pub use threshold::HealthStreak;
pub use tuning::{Algorithm, HashOn, ProxyProtocol, Timeouts, Tuning};
pub use user::{
    Limit, Quota, QuotaKind, QuotaSpec, QuotaUsage, Role, UserCreate, UserDelete, UserInfo,
    UserRef, UserUpdate, WhoAmI,
};
pub use warning::{Warning, WarningCode};
