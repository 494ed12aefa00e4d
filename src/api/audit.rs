//! Records API calls in the audit log. One rule decides what is recorded:
//! a call whose action (as far as it could be read) is `create`, `update`
//! or `delete`, whatever its answer but 429, and any call answered 401,
//! 403 or 404 (refused for who the caller is, or an object the caller may
//! not see, which looks like a missing one), reads included. Never a token,
//! never a body: the user the token named, the client's IP, the action,
//! type and name the request gave, the HTTP status and the error code.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::StatusCode;

use super::ApiError;
use crate::model::envelope::EnvelopeHeader;
use crate::model::AuditEntry;
use crate::store::{self, Store};

/// The client's IP, when the server passed it on (`serve` does).
pub fn client(request: &Request) -> String {
    client_ip(request).map_or_else(|| "unknown".to_string(), |ip| ip.to_string())
}

/// The peer's address, as `serve` put it on the request.
pub fn client_ip(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// Whether a call goes to the audit log (the rule of the module doc).
///
/// A call refused by the API's rate limit (429) is not: a flood of them
/// would turn into a flood of store writes, the very thing the limit stops.
pub fn recorded(action: Option<&str>, status: StatusCode) -> bool {
    status != StatusCode::TOO_MANY_REQUESTS
        && (matches!(action, Some("create" | "update" | "delete"))
            || matches!(status.as_u16(), 401 | 403 | 404))
}

/// What one call was, as far as the API read it.
pub struct Call<'a> {
    pub user: Option<&'a str>,
    pub client: String,
    pub header: &'a EnvelopeHeader,
    pub name: Option<&'a str>,
}

/// How long an answer waits for its audit entry to be written. Normally
/// the entry commits well within it (so entries keep the order of the
/// calls); while the store is locked, the answer goes out anyway and the
/// entry follows when it can (or a warning says it could not).
const AUDIT_WAIT: Duration = Duration::from_millis(150);

/// Records `call` with its answer when the rule says so, on its own task;
/// when the store cannot take it, a warning is logged (naming the call,
/// never its token or body).
pub async fn record<T>(store: &Store, call: Call<'_>, result: &Result<T, ApiError>) {
    let (status, code) = match result {
        Ok(_) => (StatusCode::OK, None),
        Err(e) => (e.status(), Some(e.code().to_string())),
    };
    if !recorded(call.header.action.as_deref(), status) {
        return;
    }
    let entry = AuditEntry {
        ts: store::now(),
        user: call.user.map(str::to_string),
        client: call.client,
        action: call.header.action.clone(),
        object_type: call.header.object_type.clone(),
        name: call.name.map(str::to_string),
        status: status.as_u16(),
        code,
    };
    let store = store.clone();
    let written = tokio::spawn(async move {
        let what = format!(
            "{} {} by {}",
            entry.action.as_deref().unwrap_or("-"),
            entry.object_type.as_deref().unwrap_or("-"),
            entry.user.as_deref().unwrap_or("(no valid token)")
        );
        if let Err(e) = store
            .transaction(move |tx| store::add_audit(tx, &entry))
            .await
        {
            tracing::warn!("audit log: cannot record {what}: {e}");
        }
    });
    let _ = tokio::time::timeout(AUDIT_WAIT, written).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_refusals_are_recorded_plain_reads_are_not() {
        assert!(recorded(Some("create"), StatusCode::OK));
        assert!(recorded(Some("delete"), StatusCode::CONFLICT));
        assert!(recorded(Some("update"), StatusCode::BAD_REQUEST));
        assert!(recorded(None, StatusCode::UNAUTHORIZED));
        assert!(recorded(Some("info"), StatusCode::FORBIDDEN));
        assert!(recorded(Some("info"), StatusCode::NOT_FOUND));
        assert!(!recorded(Some("info"), StatusCode::TOO_MANY_REQUESTS));
        assert!(!recorded(Some("create"), StatusCode::TOO_MANY_REQUESTS));
        assert!(!recorded(Some("info"), StatusCode::OK));
        assert!(!recorded(Some("info"), StatusCode::BAD_REQUEST));
    }
}
