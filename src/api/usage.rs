//! `{"action": "info", "type": "usage"}`: a project's accounting (issue 16).
//! The window's bounds are parsed here, once, into unix milliseconds.

use serde_json::Value;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::model::time::{parse_time, rfc3339_ms as rfc3339, Bound};
use crate::model::usage::UsageQuery;
use crate::store;

pub(super) async fn usage_info(
    state: &AppState,
    caller: &Caller,
    q: UsageQuery,
) -> Result<Value, ApiError> {
    let (since_ms, until_ms) = window(q.since.as_deref(), q.until.as_deref())?;
    let who = caller.clone();
    let mut report = state
        .store
        .read(move |c| {
            // Members see only their own projects: another's answers as missing.
            let p = super::handlers::project(c, &who, &q.project)?;
            Ok::<_, ApiError>(store::usage_report(c, p.id, &p.name, since_ms, until_ms)?)
        })
        .await?;
    // The window as resolved, whatever the store filled in.
    report.since = since_ms.map(rfc3339);
    report.until = until_ms.map(rfc3339);
    Ok(serde_json::to_value(report).unwrap_or(Value::Null))
}

/// `since` and `until` in unix ms; `since` after `until` is refused.
fn window(
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let since_ms = since.map(|s| parse_bound(s, Bound::Since)).transpose()?;
    let until_ms = until.map(|s| parse_bound(s, Bound::Until)).transpose()?;
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if s > u {
            return Err(ApiError::InvalidTime(format!(
                "since ({}) is after until ({})",
                rfc3339(s),
                rfc3339(u)
            )));
        }
    }
    Ok((since_ms, until_ms))
}

fn parse_bound(text: &str, bound: Bound) -> Result<i64, ApiError> {
    let field = match bound {
        Bound::Since => "since",
        Bound::Until => "until",
    };
    parse_time(text.trim(), bound).ok_or_else(|| {
        ApiError::InvalidTime(format!(
            "{field} {text:?} is not a date (2026-12-01) or an RFC 3339 time (2026-12-01T10:00:00Z)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::time::DAY_MS;

    const DEC_1: i64 = 1_796_083_200_000; // 2026-12-01T00:00:00Z

    #[test]
    fn the_window_must_not_end_before_it_starts() {
        assert_eq!(
            window(Some("2026-12-01"), Some("2026-12-01")).unwrap(),
            (Some(DEC_1), Some(DEC_1 + DAY_MS - 1))
        );
        let e = window(Some("2026-12-02"), Some("2026-12-01")).unwrap_err();
        assert_eq!(e.code(), "invalid_time");
        let e = window(Some("soon"), None).unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("invalid_time", 400));
        assert_eq!(window(None, None).unwrap(), (None, None));
    }
}
