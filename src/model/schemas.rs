//! JSON Schemas of the API, generated from the Rust types. `schemas/*.json`
//! holds them for readers and other tools; a test fails when they drift.

use schemars::schema_for;
use serde_json::Value;

use crate::model::instance::HealthCheckSpec;
use crate::model::{
    AuditEntry, AuditQuery, InstanceCreate, InstanceInfo, InstanceUpdate, NodeConfig, NodeStatus,
    ProjectCreate, ProjectInfo, RequestEnvelope, ResponseEnvelope, UserCreate, UserInfo,
    UserUpdate, WhoAmI,
};

/// Every published schema, by file name (under `schemas/`).
pub fn all() -> Vec<(&'static str, Value)> {
    fn v(s: schemars::Schema) -> Value {
        s.to_value()
    }
    vec![
        ("envelope.request.json", v(schema_for!(RequestEnvelope))),
        ("envelope.response.json", v(schema_for!(ResponseEnvelope))),
        ("project.create.json", v(schema_for!(ProjectCreate))),
        ("project.info.json", v(schema_for!(ProjectInfo))),
        ("instance.create.json", v(schema_for!(InstanceCreate))),
        ("instance.update.json", v(schema_for!(InstanceUpdate))),
        ("instance.info.json", v(schema_for!(InstanceInfo))),
        ("health-check.json", v(schema_for!(HealthCheckSpec))),
        ("node.config.json", v(schema_for!(NodeConfig))),
        ("node.status.json", v(schema_for!(NodeStatus))),
        ("user.create.json", v(schema_for!(UserCreate))),
        ("user.update.json", v(schema_for!(UserUpdate))),
        ("user.info.json", v(schema_for!(UserInfo))),
        ("whoami.json", v(schema_for!(WhoAmI))),
        ("audit.query.json", v(schema_for!(AuditQuery))),
        ("audit.entry.json", v(schema_for!(AuditEntry))),
        (
            "usage.query.json",
            v(schema_for!(crate::model::usage::UsageQuery)),
        ),
        (
            "usage.report.json",
            v(schema_for!(crate::model::usage::UsageReport)),
        ),
        (
            "mapping.request.json",
            v(schema_for!(crate::model::mapping::MappingRequest)),
        ),
        (
            "mapping.info.json",
            v(schema_for!(crate::model::mapping::MappingsInfo)),
        ),
        (
            "mapping.change.json",
            v(schema_for!(crate::model::mapping::MappingChange)),
        ),
    ]
}
