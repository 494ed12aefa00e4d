//! `{"action": "info", "type": "usage"}`: a project's accounting (issue 16).

use serde_json::Value;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::model::usage::UsageQuery;
use crate::store;

pub(super) async fn usage_info(
    state: &AppState,
    caller: &Caller,
    q: UsageQuery,
) -> Result<Value, ApiError> {
    let who = caller.clone();
    // Contract stub: `since`/`until` parsing (dates or RFC 3339, each bad
    // value with its own code) comes with the API work of issue 16.
    let report = state
        .store
        .read(move |c| {
            let p = super::handlers::project(c, &who, &q.project)?;
            Ok::<_, ApiError>(store::usage_report(c, p.id, &p.name, None, None)?)
        })
        .await?;
    Ok(serde_json::to_value(report).unwrap_or(Value::Null))
}
