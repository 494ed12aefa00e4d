//! What the auth stage changes in a request on its way to the backend, and
//! the answers it gives the client itself.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http::{Response, StatusCode};

use super::service::Refusal;
use crate::dataplane::http::short;
use crate::dataplane::pool::{full_body, ProxyBody};

/// Set toward the backend when a request passes because the auth service
/// failed under `failure: allow`.
pub const FAILURE_ALLOWED: HeaderName = HeaderName::from_static("x-auth-failure-mode-allowed");

/// Removes headers only the auth stage may set (the `auth_token` header,
/// [`FAILURE_ALLOWED`]): a client sending them must not be believed by a
/// backend that trusts lb-node.
pub fn strip_reserved(headers: &mut HeaderMap, reserved: &[HeaderName]) {
    for name in reserved {
        headers.remove(name);
    }
}

/// Removes the client's credentials: `Authorization`, and the header a
/// token or key may come in.
pub fn strip_credentials(headers: &mut HeaderMap, other: Option<&HeaderName>) {
    headers.remove(AUTHORIZATION);
    if let Some(h) = other {
        headers.remove(h);
    }
}

/// `failure: deny` and a failed auth service.
pub fn unavailable() -> Response<ProxyBody> {
    let mut resp = short(
        StatusCode::SERVICE_UNAVAILABLE,
        "lb-node: the auth service is unavailable\n",
    );
    resp.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The auth service's 401/403 as the client gets it: status,
/// `WWW-Authenticate`, `Content-Type` and body, nothing else (no framing or
/// hop-by-hop field of the service's answer reaches the client).
pub fn refusal(r: &Refusal) -> Response<ProxyBody> {
    let mut resp = Response::new(full_body(r.body.clone()));
    *resp.status_mut() = r.status;
    if let Some(v) = &r.www_authenticate {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v.clone());
    }
    if let Some(v) = &r.content_type {
        resp.headers_mut().insert(CONTENT_TYPE, v.clone());
    }
    resp
}

/// 401 with a challenge (`Basic realm="…"` for basic auth).
pub fn challenge(challenge: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = short(StatusCode::UNAUTHORIZED, "lb-node: unauthorized\n");
    resp.headers_mut()
        .insert(WWW_AUTHENTICATE, challenge.clone());
    resp
}

/// A caller without every group the rule requires.
pub fn missing_groups() -> Response<ProxyBody> {
    short(
        StatusCode::FORBIDDEN,
        "lb-node: forbidden: the caller lacks a group this path requires\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn reserved_headers_and_credentials_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.insert("x-token", HeaderValue::from_static("t"));
        h.insert("x-auth-token", HeaderValue::from_static("forged"));
        h.insert(FAILURE_ALLOWED, HeaderValue::from_static("true"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        strip_reserved(
            &mut h,
            &[HeaderName::from_static("x-auth-token"), FAILURE_ALLOWED],
        );
        strip_credentials(&mut h, Some(&HeaderName::from_static("x-token")));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-other"));
    }

    #[test]
    fn a_refusal_keeps_its_status_challenge_and_body_only() {
        let r = Refusal {
            status: StatusCode::FORBIDDEN,
            www_authenticate: Some(HeaderValue::from_static("Bearer error=\"x\"")),
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b"{\"error\":\"no\"}"),
        };
        let resp = refusal(&r);
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers().len(), 2);
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer error=\"x\"");
    }
}
