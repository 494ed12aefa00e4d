//! The action envelope of seed 003: `{"action", "type", "info"}` in,
//! `{"status", "action", "type", "info" | "error"}` out, and its parsing into
//! one closed enum of requests ([`ApiRequest`]) that the API handles in one place.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::mapping::MappingRequest;
use crate::model::{
    AuditQuery, InstanceCreate, InstanceDelete, InstanceRef, InstanceUpdate, ProjectCreate,
    ProjectDelete, ProjectRef, ProjectUpdate, UserCreate, UserDelete, UserRef, UserUpdate,
    ValidationError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Info,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Info => "info",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    Project,
    Instance,
    /// Tenants (admin only).
    User,
    /// The audit log (admin only, `info` only).
    Audit,
    /// Who the caller's token names (`info` only).
    Whoami,
    /// A project's accounting (`info` only).
    Usage,
    /// A federation mapping of an instance (issue 18): `create`, `info`
    /// (the instance's mappings) and `delete`.
    Mapping,
}

impl ObjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Project => "project",
            Self::Instance => "instance",
            Self::User => "user",
            Self::Audit => "audit",
            Self::Whoami => "whoami",
            Self::Usage => "usage",
            Self::Mapping => "mapping",
        }
    }
}

/// What a client sends to `/api`. `info` depends on `action` and `type`:
/// see `schemas/` for each shape. An `info` action without a `name` lists
/// (projects, or the instances of `info.project`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestEnvelope {
    pub action: Action,
    #[serde(rename = "type")]
    pub object_type: ObjectType,
    #[serde(default)]
    pub info: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResponseStatus {
    Successful,
    Fail,
}

/// What `/api` answers, on success and on failure alike.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ResponseEnvelope {
    pub status: ResponseStatus,
    /// The request's action, echoed when it could be read.
    pub action: Option<String>,
    /// The request's type, echoed when it could be read.
    #[serde(rename = "type")]
    pub object_type: Option<String>,
    /// The object (or list) on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Why the request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A failure: a stable `code` to match on and a message for humans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

/// Every request the API understands.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    CreateProject(ProjectCreate),
    /// `name: None` lists all projects.
    ProjectInfo(ProjectRef),
    UpdateProject(ProjectUpdate),
    DeleteProject(ProjectDelete),
    // Boxed: with the L7 policy fields they dwarf the other requests.
    CreateInstance(Box<InstanceCreate>),
    /// `name: None` lists the instances of the project.
    InstanceInfo(InstanceRef),
    UpdateInstance(Box<InstanceUpdate>),
    DeleteInstance(InstanceDelete),
    CreateUser(UserCreate),
    /// `name: None` lists all users.
    UserInfo(UserRef),
    UpdateUser(UserUpdate),
    DeleteUser(UserDelete),
    AuditInfo(AuditQuery),
    WhoAmI,
    UsageInfo(crate::model::usage::UsageQuery),
    /// `create mapping`: validated by the handler (`validate_create`).
    CreateMapping(MappingRequest),
    /// `info mapping`: the instance's mappings.
    MappingInfo(MappingRequest),
    DeleteMapping(MappingRequest),
}

impl ApiRequest {
    /// Whether the request changes state (reads are `info`).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Self::ProjectInfo(_)
                | Self::InstanceInfo(_)
                | Self::UserInfo(_)
                | Self::AuditInfo(_)
                | Self::WhoAmI
                | Self::UsageInfo(_)
                | Self::MappingInfo(_)
        )
    }

    /// The name of the object the request is about, for the audit log.
    pub fn object_name(&self) -> Option<&str> {
        match self {
            Self::CreateProject(r) => Some(&r.name),
            Self::ProjectInfo(r) => r.name.as_deref(),
            Self::UpdateProject(r) => Some(&r.name),
            Self::DeleteProject(r) => Some(&r.name),
            Self::CreateInstance(r) => Some(&r.name),
            Self::InstanceInfo(r) => r.name.as_deref(),
            Self::UpdateInstance(r) => Some(&r.name),
            Self::DeleteInstance(r) => Some(&r.name),
            Self::CreateUser(r) => Some(&r.name),
            Self::UserInfo(r) => r.name.as_deref(),
            Self::UpdateUser(r) => Some(&r.name),
            Self::DeleteUser(r) => Some(&r.name),
            Self::UsageInfo(r) => Some(&r.project),
            // The instance: never a token (the audit log records this name).
            Self::CreateMapping(r) | Self::MappingInfo(r) | Self::DeleteMapping(r) => {
                Some(&r.instance)
            }
            Self::AuditInfo(_) | Self::WhoAmI => None,
        }
    }
}

/// The action and type as far as they could be read, for echoing in an error answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EnvelopeHeader {
    pub action: Option<String>,
    pub object_type: Option<String>,
}

impl ApiRequest {
    /// Parses a request body. On failure the header still carries what could
    /// be read of `action` and `type`, so the error answer can echo them.
    pub fn parse(body: &[u8]) -> (EnvelopeHeader, Result<ApiRequest, ValidationError>) {
        let value: Value = match parse_json(body) {
            Ok(v) => v,
            Err(e) => {
                return (
                    EnvelopeHeader::default(),
                    Err(ValidationError::MalformedJson(e.to_string())),
                )
            }
        };
        let Value::Object(mut obj) = value else {
            return (
                EnvelopeHeader::default(),
                Err(ValidationError::InvalidEnvelope(
                    "the body must be a JSON object".into(),
                )),
            );
        };
        let header = EnvelopeHeader {
            action: obj
                .get("action")
                .and_then(Value::as_str)
                .map(str::to_string),
            object_type: obj.get("type").and_then(Value::as_str).map(str::to_string),
        };
        let result = (|| {
            if let Some(extra) = obj
                .keys()
                .find(|k| !["action", "type", "info"].contains(&k.as_str()))
            {
                return Err(ValidationError::UnknownField(extra.clone()));
            }
            let action = match obj.get("action") {
                None => return Err(ValidationError::MissingField("action".into())),
                Some(Value::String(s)) => parse_action(s)?,
                Some(_) => return Err(ValidationError::InvalidField(
                    "`action` must be a string: \"create\", \"info\", \"update\" or \"delete\" \
                         (the seed's [\"create\"/\"info\"/...] means one of them)"
                        .into(),
                )),
            };
            let object_type = match obj.get("type") {
                None => return Err(ValidationError::MissingField("type".into())),
                Some(Value::String(s)) => parse_type(s)?,
                Some(_) => {
                    return Err(ValidationError::InvalidField(
                        "`type` must be a string such as \"project\" or \"instance\" \
                         (the seed's [\"project\"/\"instance\"] means one of them)"
                            .into(),
                    ))
                }
            };
            let info = match obj.remove("info") {
                None | Some(Value::Null) => Value::Object(Default::default()),
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return Err(ValidationError::InvalidField(
                        "`info` must be an object".into(),
                    ))
                }
            };
            Self::from_parts(action, object_type, info)
        })();
        (header, result)
    }

    fn from_parts(
        action: Action,
        object_type: ObjectType,
        info: Value,
    ) -> Result<Self, ValidationError> {
        use {Action as A, ObjectType as T};
        Ok(match (action, object_type) {
            (A::Create, T::Project) => Self::CreateProject(typed(info)?),
            (A::Info, T::Project) => Self::ProjectInfo(typed(info)?),
            (A::Update, T::Project) => Self::UpdateProject(typed(info)?),
            (A::Delete, T::Project) => Self::DeleteProject(typed(info)?),
            (A::Create, T::Instance) => Self::CreateInstance(Box::new(typed(info)?)),
            (A::Info, T::Instance) => Self::InstanceInfo(typed(info)?),
            (A::Update, T::Instance) => Self::UpdateInstance(Box::new(typed(info)?)),
            (A::Delete, T::Instance) => Self::DeleteInstance(typed(info)?),
            (A::Create, T::User) => Self::CreateUser(typed(info)?),
            (A::Info, T::User) => Self::UserInfo(typed(info)?),
            (A::Update, T::User) => Self::UpdateUser(typed(info)?),
            (A::Delete, T::User) => Self::DeleteUser(typed(info)?),
            (A::Info, T::Audit) => Self::AuditInfo(typed(info)?),
            (A::Info, T::Usage) => Self::UsageInfo(typed(info)?),
            (A::Info, T::Whoami) => {
                typed::<Empty>(info)?;
                Self::WhoAmI
            }
            (A::Create, T::Mapping) => Self::CreateMapping(typed(info)?),
            (A::Info, T::Mapping) => Self::MappingInfo(typed(info)?),
            (A::Delete, T::Mapping) => Self::DeleteMapping(typed(info)?),
            (
                action @ (A::Create | A::Update | A::Delete),
                object_type @ (T::Audit | T::Whoami | T::Usage),
            ) => {
                return Err(ValidationError::UnsupportedAction {
                    action: action.as_str(),
                    object_type: object_type.as_str(),
                    takes: "`info`",
                })
            }
            (A::Update, T::Mapping) => {
                return Err(ValidationError::UnsupportedAction {
                    action: "update",
                    object_type: "mapping",
                    takes: "`create`, `info` and `delete` (delete and create again to change one)",
                })
            }
        })
    }
}

/// An `info` that takes no fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// JSON, with the seed's trailing commas (`"instances": [],` before `}`)
/// forgiven: people paste its examples as they are.
fn parse_json(body: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice(body).or_else(|e| {
        if e.to_string().starts_with("trailing comma") {
            serde_json::from_slice(&without_trailing_commas(body)).map_err(|_| e)
        } else {
            Err(e)
        }
    })
}

/// `body` without the commas that only whitespace separates from a `}` or
/// `]`; strings are left as they are.
fn without_trailing_commas(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = body[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            if matches!(next, Some(b'}' | b']')) {
                continue;
            }
        }
        out.push(b);
    }
    out
}

fn parse_action(s: &str) -> Result<Action, ValidationError> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| ValidationError::UnknownAction(s.into()))
}

fn parse_type(s: &str) -> Result<ObjectType, ValidationError> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| ValidationError::UnknownType(s.into()))
}

fn typed<T: DeserializeOwned>(info: Value) -> Result<T, ValidationError> {
    serde_json::from_value(info).map_err(|e| ValidationError::from_serde(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(body: &str) -> String {
        ApiRequest::parse(body.as_bytes())
            .1
            .unwrap_err()
            .code()
            .to_string()
    }

    #[test]
    fn parses_seed_example() {
        let (h, r) =
            ApiRequest::parse(br#"{"action":"create","type":"project","info":{"name":"example"}}"#);
        assert_eq!(h.action.as_deref(), Some("create"));
        match r.unwrap() {
            ApiRequest::CreateProject(p) => assert_eq!(p.name, "example"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_seed_trailing_commas_are_forgiven() {
        let body = b"{\"action\": \"create\", \"type\": \"project\",\n \"info\": {\"name\": \"a\", \"instances\": [],\n},\n}";
        match ApiRequest::parse(body).1.unwrap() {
            ApiRequest::CreateProject(p) => assert_eq!(p.name, "a"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            without_trailing_commas(br#"{"a": "x,}", "b": [1, 2 , ],}"#),
            br#"{"a": "x,}", "b": [1, 2  ]}"#
        );
        assert_eq!(
            without_trailing_commas(br#"{"a": "q\",]"}"#),
            br#"{"a": "q\",]"}"#
        );
        // Other mistakes are still malformed JSON.
        assert_eq!(
            code(r#"{"action": "create",, "type": "project"}"#),
            "malformed_json"
        );
        assert_eq!(code("{,}"), "malformed_json");
    }

    #[test]
    fn info_without_name_is_a_list() {
        let (_, r) = ApiRequest::parse(br#"{"action":"info","type":"project"}"#);
        assert_eq!(
            r.unwrap(),
            ApiRequest::ProjectInfo(ProjectRef { name: None })
        );
    }

    #[test]
    fn classifies_bad_envelopes() {
        assert_eq!(code("{not json"), "malformed_json");
        assert_eq!(code("[1]"), "invalid_envelope");
        assert_eq!(code(r#"{"type":"project"}"#), "missing_field");
        assert_eq!(
            code(r#"{"action":"explode","type":"project"}"#),
            "unknown_action"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"cluster"}"#),
            "unknown_type"
        );
        assert_eq!(code(r#"{"action":7,"type":"project"}"#), "invalid_field");
        assert_eq!(
            code(r#"{"action":"delete","type":"audit"}"#),
            "unsupported_action"
        );
        assert_eq!(
            code(r#"{"action":"update","type":"mapping","info":{}}"#),
            "unsupported_action"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"mapping","info":{"project":"p"}}"#),
            "missing_field"
        );
        assert_eq!(
            code(
                r#"{"action":"info","type":"mapping","info":{"project":"p","instance":"i","x":1}}"#
            ),
            "unknown_field"
        );
        assert_eq!(
            code(r#"{"action":"info","type":"whoami","info":{"x":1}}"#),
            "unknown_field"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"project","inf":{}}"#),
            "unknown_field"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"project","info":{}}"#),
            "missing_field"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"project","info":{"name":"a","usr":"x"}}"#),
            "unknown_field"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"project","info":{"name":5}}"#),
            "invalid_field"
        );
        assert_eq!(
            code(r#"{"action":"create","type":"project","info":[]}"#),
            "invalid_field"
        );
    }
}
