//! Projects: a name, an owner, and a subnet that holds its LB nodes.

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::names::{validate_name, validate_user};
use crate::model::{InstanceInfo, ProvisioningStatus, ValidationError};

/// The user a project belongs to when the request names none.
pub const DEFAULT_USER: &str = "admin";

/// `create project`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectCreate {
    /// A DNS label: `[a-z0-9-]{1,63}`.
    pub name: String,
    /// The owner, an existing user; defaults to the caller (a member may
    /// name only itself).
    #[serde(default)]
    pub user: Option<String>,
    /// An IPv4 CIDR; allocated from the daemon's pool when absent.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Accepted as in the seed's project shape; must be `project`.
    #[serde(default, rename = "type")]
    pub object_type: Option<String>,
    /// Accepted as in the seed's project shape, empty only: instances are
    /// created separately (`create instance` with `"project"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<serde_json::Value>>,
}

/// A validated project request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSpec {
    pub name: String,
    pub user: String,
    pub subnet: Option<Ipv4Net>,
}

impl ProjectCreate {
    pub fn validate(self) -> Result<ProjectSpec, ValidationError> {
        validate_name(&self.name)?;
        check_type_tag(self.object_type.as_deref(), "project")?;
        if self.instances.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ValidationError::InstancesInProject(self.name));
        }
        let user = self.user.unwrap_or_else(|| DEFAULT_USER.to_string());
        validate_user(&user)?;
        let subnet = self.subnet.as_deref().map(parse_subnet).transpose()?;
        Ok(ProjectSpec {
            name: self.name,
            user,
            subnet,
        })
    }
}

/// `info project` (and the project list when `name` is absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectRef {
    #[serde(default)]
    pub name: Option<String>,
}

/// `update project`: only the owner can change; the subnet is fixed once created.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectUpdate {
    pub name: String,
    #[serde(default)]
    pub user: Option<String>,
}

impl ProjectUpdate {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(&self.name)?;
        if let Some(user) = &self.user {
            validate_user(user)?;
        }
        Ok(())
    }
}

/// `delete project`; `force` deletes its instances too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectDelete {
    pub name: String,
    #[serde(default)]
    pub force: bool,
}

/// A project as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProjectInfo {
    pub id: crate::model::ProjectId,
    #[serde(rename = "type")]
    pub object_type: String,
    pub name: String,
    pub user: String,
    pub subnet: String,
    pub provisioning_status: ProvisioningStatus,
    #[serde(default)]
    pub status_reason: Option<String>,
    pub instances: Vec<InstanceInfo>,
    /// Unix seconds.
    pub created_at: i64,
}

/// Parses an IPv4 CIDR whose host bits are zero, with room for nodes (/30 at most).
pub fn parse_subnet(s: &str) -> Result<Ipv4Net, ValidationError> {
    let fail = |reason: String| ValidationError::InvalidSubnet {
        subnet: s.to_string(),
        reason,
    };
    let net: Ipv4Net = s
        .parse()
        .map_err(|_| fail("expected an IPv4 CIDR such as 10.1.0.0/24".into()))?;
    if net.network() != net.addr() {
        return Err(fail(format!(
            "host bits are set; did you mean {}?",
            net.trunc()
        )));
    }
    if net.prefix_len() > 30 {
        return Err(fail(
            "the prefix must be /30 or shorter to hold a node".into(),
        ));
    }
    Ok(net)
}

/// The seed puts `"type": "project"` inside the object; accept it, but only with the right value.
pub(crate) fn check_type_tag(tag: Option<&str>, expected: &str) -> Result<(), ValidationError> {
    match tag {
        Some(t) if t != expected => Err(ValidationError::InvalidField(format!(
            "`info.type` is {t:?}, expected {expected:?}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert_eq!(
            parse_subnet("10.1.0.0/24").unwrap().to_string(),
            "10.1.0.0/24"
        );
        for bad in [
            "10.1.0.1/24",
            "10.1.0.0",
            "10.1.0.0/33",
            "banana",
            "10.1.0.0/31",
            "::1/128",
        ] {
            assert_eq!(
                parse_subnet(bad).unwrap_err().code(),
                "invalid_subnet",
                "{bad}"
            );
        }
    }

    #[test]
    fn create_defaults_user() {
        let p = ProjectCreate {
            name: "demo".into(),
            user: None,
            subnet: None,
            object_type: None,
            instances: None,
        };
        assert_eq!(p.validate().unwrap().user, DEFAULT_USER);
    }

    #[test]
    fn type_tag_must_match() {
        let p = ProjectCreate {
            name: "demo".into(),
            user: None,
            subnet: None,
            object_type: Some("instance".into()),
            instances: None,
        };
        assert_eq!(p.validate().unwrap_err().code(), "invalid_field");
    }

    #[test]
    fn the_seed_instances_list_must_be_empty() {
        let seed = |instances: serde_json::Value| {
            serde_json::from_value::<ProjectCreate>(serde_json::json!({
                "type": "project", "user": "john", "name": "johns-project", "instances": instances
            }))
            .unwrap()
            .validate()
        };
        assert_eq!(seed(serde_json::json!([])).unwrap().name, "johns-project");
        let err = seed(serde_json::json!([{"name": "web"}])).unwrap_err();
        assert_eq!(err.code(), "instances_created_separately");
        assert!(err.to_string().contains("create instance"), "{err}");
    }
}
