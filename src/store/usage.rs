//! Accounting of managed backends and LB nodes (issue 16): per backend
//! lifetime rows and daily totals per project, instance and pool.
//! (Contract stub: the lbd-side work fills the tables and this query.)

use rusqlite::Connection;

use super::StoreError;
use crate::model::usage::UsageReport;
use crate::model::ProjectId;

/// A project's usage between `since` and `until` (unix ms; `None`: open).
/// `project` is the name the report carries.
pub fn usage_report(
    _c: &Connection,
    _project_id: ProjectId,
    project: &str,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> Result<UsageReport, StoreError> {
    let _ = (since_ms, until_ms);
    Ok(UsageReport {
        project: project.to_string(),
        since: None,
        until: None,
        instances: Vec::new(),
        totals: Default::default(),
    })
}

/// The managed backends of an instance, as the API shows them, oldest first.
/// (Contract stub: filled by the lbd-side work of issue 16.)
pub fn backends_of_instance(
    _c: &Connection,
    _instance_id: crate::model::InstanceId,
) -> Result<Vec<crate::model::managed::ManagedBackendInfo>, StoreError> {
    Ok(Vec::new())
}
