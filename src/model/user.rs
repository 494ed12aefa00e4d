//! Tenants: users with a role and a quota, and the token that names them.
//! The wire types of `{"type": "user"}` and `{"type": "whoami"}`; checking
//! a caller's rights against a request lives in the API (`api::auth`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::names::validate_user;
use crate::model::ValidationError;

/// The built-in user whose token is `admin.token` in the state dir.
pub const ADMIN_USER: &str = "admin";

/// What a user may do (Octavia's roles, folded to three).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, on every user's projects.
    Admin,
    /// Creates projects, which it then owns, and instances in them; sees
    /// and changes only its own.
    Member,
    /// Reads every project; writes nothing.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Reader => "reader",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Self::Admin),
            "member" => Some(Self::Member),
            "reader" => Some(Self::Reader),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One quota limit: `-1` on the wire means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Unlimited,
    AtMost(u32),
}

impl Limit {
    /// Whether `used + adding` stays within the limit.
    pub fn allows(self, used: u64, adding: u64) -> bool {
        match self {
            Self::Unlimited => true,
            Self::AtMost(max) => used.saturating_add(adding) <= u64::from(max),
        }
    }

    pub fn from_wire(v: i64) -> Result<Limit, ValidationError> {
        match v {
            -1 => Ok(Self::Unlimited),
            0..=1_000_000 => Ok(Self::AtMost(v as u32)),
            _ => Err(ValidationError::InvalidField(format!(
                "a quota limit must be -1 (unlimited) or 0-1000000, got {v}"
            ))),
        }
    }

    pub fn to_wire(self) -> i64 {
        match self {
            Self::Unlimited => -1,
            Self::AtMost(n) => i64::from(n),
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unlimited => f.write_str("unlimited"),
            Self::AtMost(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(self.to_wire())
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Limit::from_wire(i64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Limit {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Limit".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer", "minimum": -1, "maximum": 1_000_000,
            "description": "-1 means unlimited"
        })
    }
}

/// Which quota a request would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    Projects,
    Instances,
    Nodes,
}

impl QuotaKind {
    /// The field name in `quota`.
    pub fn field(self) -> &'static str {
        match self {
            Self::Projects => "max_projects",
            Self::Instances => "max_instances",
            Self::Nodes => "max_nodes",
        }
    }
}

/// A quota as a request gives it: absent fields keep their value (on
/// create: follow lbd's `--default-quota-*` flags).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_projects: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<Limit>,
    /// Nodes count `min_nodes`, or `max_nodes` with autoscaling: what the
    /// user's instances may cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nodes: Option<Limit>,
}

/// The limits in force for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quota {
    pub max_projects: Limit,
    pub max_instances: Limit,
    pub max_nodes: Limit,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        max_projects: Limit::Unlimited,
        max_instances: Limit::Unlimited,
        max_nodes: Limit::Unlimited,
    };

    /// `spec`'s limits where it sets them, `defaults` elsewhere.
    pub fn with_defaults(spec: QuotaSpec, defaults: Quota) -> Quota {
        Quota {
            max_projects: spec.max_projects.unwrap_or(defaults.max_projects),
            max_instances: spec.max_instances.unwrap_or(defaults.max_instances),
            max_nodes: spec.max_nodes.unwrap_or(defaults.max_nodes),
        }
    }

    pub fn limit(&self, kind: QuotaKind) -> Limit {
        match kind {
            QuotaKind::Projects => self.max_projects,
            QuotaKind::Instances => self.max_instances,
            QuotaKind::Nodes => self.max_nodes,
        }
    }

    /// The first limit that `used` plus `adding` would pass, if any. Only
    /// what is added is judged: a quota lowered under the current use
    /// refuses growth, never what exists.
    pub fn first_exceeded(&self, used: QuotaUsage, adding: QuotaUsage) -> Option<QuotaKind> {
        [QuotaKind::Projects, QuotaKind::Instances, QuotaKind::Nodes]
            .into_iter()
            .find(|&k| adding.used(k) > 0 && !self.limit(k).allows(used.used(k), adding.used(k)))
    }
}

/// What a user's projects use now, counted as the quota counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct QuotaUsage {
    pub projects: u64,
    pub instances: u64,
    pub nodes: u64,
}

impl QuotaUsage {
    /// What `projects` projects holding instances of these specs use.
    pub fn count<'a>(
        projects: u64,
        instances: impl IntoIterator<Item = &'a crate::model::InstanceSpec>,
    ) -> QuotaUsage {
        let mut usage = QuotaUsage {
            projects,
            ..Default::default()
        };
        for spec in instances {
            usage.instances += 1;
            usage.nodes += u64::from(spec.quota_nodes());
        }
        usage
    }

    pub fn used(&self, kind: QuotaKind) -> u64 {
        match kind {
            QuotaKind::Projects => self.projects,
            QuotaKind::Instances => self.instances,
            QuotaKind::Nodes => self.nodes,
        }
    }
}

/// `create user` (admin only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserCreate {
    pub name: String,
    /// Defaults to `member`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
}

impl UserCreate {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_user(&self.name)
    }
}

/// `info user`: one user by name, or the list when `name` is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `update user`: role, quota (fields given replace those stored), or a
/// new token (the old one stops working at once).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rotate_token: bool,
}

impl UserUpdate {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_user(&self.name)
    }
}

/// `delete user`: refused while the user owns projects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserDelete {
    pub name: String,
}

/// A user as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    /// The limits in force (lbd's defaults where none were set).
    pub quota: Quota,
    pub usage: QuotaUsage,
    /// Unix seconds.
    pub created_at: i64,
    /// Whether the user has a token (users created by the migration from
    /// project owners have none until an admin rotates one).
    pub has_token: bool,
    /// Only in the answer to `create`, or to `update` with `rotate_token`:
    /// the one time the token is shown. lbd keeps only its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `info whoami`: who the caller's token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WhoAmI {
    pub user: String,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_minus_one_as_unlimited_and_refuse_other_negatives() {
        let q: QuotaSpec = serde_json::from_str(r#"{"max_projects": -1, "max_nodes": 3}"#).unwrap();
        assert_eq!(q.max_projects, Some(Limit::Unlimited));
        assert_eq!(q.max_nodes, Some(Limit::AtMost(3)));
        assert_eq!(q.max_instances, None);
        assert!(serde_json::from_str::<QuotaSpec>(r#"{"max_projects": -2}"#).is_err());
        assert!(serde_json::from_str::<QuotaSpec>(r#"{"max_project": 1}"#).is_err());
        assert_eq!(serde_json::to_string(&Limit::Unlimited).unwrap(), "-1");
    }

    #[test]
    fn a_limit_allows_up_to_its_value() {
        assert!(Limit::AtMost(2).allows(1, 1));
        assert!(!Limit::AtMost(2).allows(2, 1));
        assert!(!Limit::AtMost(0).allows(0, 1));
        assert!(Limit::Unlimited.allows(u64::MAX, 1));
    }

    #[test]
    fn a_spec_overrides_only_what_it_sets() {
        let defaults = Quota {
            max_projects: Limit::AtMost(5),
            max_instances: Limit::AtMost(10),
            max_nodes: Limit::Unlimited,
        };
        let q = Quota::with_defaults(
            QuotaSpec {
                max_instances: Some(Limit::AtMost(1)),
                ..Default::default()
            },
            defaults,
        );
        assert_eq!(q.max_projects, Limit::AtMost(5));
        assert_eq!(q.max_instances, Limit::AtMost(1));
        assert_eq!(q.max_nodes, Limit::Unlimited);
    }

    #[test]
    fn the_first_exceeded_limit_is_named_and_only_growth_is_judged() {
        let q = Quota {
            max_projects: Limit::AtMost(1),
            max_instances: Limit::AtMost(2),
            max_nodes: Limit::AtMost(4),
        };
        let used = QuotaUsage {
            projects: 1,
            instances: 2,
            nodes: 4,
        };
        let one = |projects, instances, nodes| QuotaUsage {
            projects,
            instances,
            nodes,
        };
        assert_eq!(
            q.first_exceeded(used, one(1, 0, 0)),
            Some(QuotaKind::Projects)
        );
        assert_eq!(
            q.first_exceeded(used, one(0, 1, 1)),
            Some(QuotaKind::Instances)
        );
        assert_eq!(q.first_exceeded(used, one(0, 0, 1)), Some(QuotaKind::Nodes));
        assert_eq!(q.first_exceeded(used, one(0, 0, 0)), None);
        // Over a lowered quota already: nothing added, nothing refused.
        let over = one(5, 5, 9);
        assert_eq!(q.first_exceeded(over, QuotaUsage::default()), None);
        assert_eq!(Quota::UNLIMITED.first_exceeded(over, one(1, 1, 16)), None);
    }

    #[test]
    fn roles_round_trip() {
        for r in [Role::Admin, Role::Member, Role::Reader] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Role>(&json).unwrap(), r);
        }
        assert!(serde_json::from_str::<UserCreate>(r#"{"name":"a","role":"root"}"#).is_err());
    }
}
