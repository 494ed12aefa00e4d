//! `lbctl audit`: its request, and the log as a table.

use lbaas::model::{Action, AuditEntry, AuditQuery, ObjectType, RequestEnvelope};

use super::{envelope, Shape};
use crate::args::AuditArgs;
use crate::output::{datetime, table};

/// The request; `now` (unix seconds) turns `--minutes` into lbd's `since`.
pub fn request(args: &AuditArgs, now: i64) -> (RequestEnvelope, Shape) {
    let AuditArgs {
        user,
        minutes,
        limit,
    } = args;
    let query = AuditQuery {
        user: user.clone(),
        since: minutes.map(|m| now - i64::from(m) * 60),
        limit: *limit,
    };
    (
        envelope(Action::Info, ObjectType::Audit, &query),
        Shape::Audit,
    )
}

/// The entries as lbd sends them, newest first; `-` where a field is unknown.
pub fn text(entries: &[AuditEntry]) -> String {
    if entries.is_empty() {
        return "no audit entries\n".into();
    }
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            vec![
                datetime(e.ts),
                dash(&e.user),
                e.client.clone(),
                dash(&e.action),
                dash(&e.object_type),
                dash(&e.name),
                e.status.to_string(),
                dash(&e.code),
            ]
        })
        .collect();
    table(
        &[
            "TIME", "USER", "CLIENT", "ACTION", "TYPE", "NAME", "STATUS", "CODE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minutes_become_since() {
        let args = AuditArgs {
            user: Some("alice".into()),
            minutes: Some(5),
            limit: Some(20),
        };
        let (e, shape) = request(&args, 10_000);
        assert_eq!(shape, Shape::Audit);
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            json!({"action": "info", "type": "audit",
                   "info": {"user": "alice", "since": 9_700, "limit": 20}})
        );
        let none = AuditArgs {
            user: None,
            minutes: None,
            limit: None,
        };
        assert_eq!(
            serde_json::to_value(request(&none, 10_000).0).unwrap()["info"],
            json!({})
        );
    }

    #[test]
    fn the_table_shows_every_field() {
        let entries: Vec<AuditEntry> = serde_json::from_value(json!([
            {"ts": 3_600, "user": "alice", "client": "127.0.0.1", "action": "create",
             "type": "project", "name": "p1", "status": 403, "code": "quota_exceeded"},
            {"ts": 60, "user": null, "client": "10.0.0.9", "action": null,
             "type": null, "name": null, "status": 401, "code": "unauthorized"}
        ]))
        .unwrap();
        let out = text(&entries);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "TIME                  USER   CLIENT     ACTION  TYPE     NAME  STATUS  CODE"
        );
        assert_eq!(
            lines[1],
            "1970-01-01T01:00:00Z  alice  127.0.0.1  create  project  p1    403     quota_exceeded"
        );
        assert_eq!(
            lines[2],
            "1970-01-01T00:01:00Z  -      10.0.0.9   -       -        -     401     unauthorized"
        );
        assert_eq!(text(&[]), "no audit entries\n");
    }
}
