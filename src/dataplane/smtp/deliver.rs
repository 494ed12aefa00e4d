//! A message's way to the backends once `DATA` ended: the rate limit
//! stage, then one POST of the raw message to `smtp.deliver_path` on a
//! member of the pool (the auth service's `upstream` when it named one),
//! with the envelope in `X-Smtp-*` headers. The backend's answer becomes
//! the SMTP reply: 250 only for a 2xx. Also the AUTH decision, asked of
//! the instance's auth stage as an HTTP request with Basic credentials.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request};
use http_body_util::BodyExt;

use super::reply::{self, Reply};
use super::session::{AuthResult, Envelope};
use crate::dataplane::auth::service::AuthProtocol;
use crate::dataplane::auth::AuthOutcome;
use crate::dataplane::balance::{fnv1a, Balancer};
use crate::dataplane::forward::{send_with_retry, ForwardError, Resend, Upstream};
use crate::dataplane::pool::full_body;
use crate::dataplane::rate_limit::{LimitOutcome, LimitRequest};
use crate::dataplane::{ActiveConfig, Node};

pub const MAIL_FROM: HeaderName = HeaderName::from_static("x-smtp-mail-from");
pub const RCPT_TO: HeaderName = HeaderName::from_static("x-smtp-rcpt-to");
pub const HELO: HeaderName = HeaderName::from_static("x-smtp-helo");
pub const CLIENT_IP: HeaderName = HeaderName::from_static("x-smtp-client-ip");
pub const AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");

/// How long the rest of a backend's answer is read for (the connection
/// then goes back to the pool).
const DRAIN: Duration = Duration::from_secs(2);
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What the connection knows of the client.
pub struct Client<'a> {
    pub node: &'a Node,
    pub active: &'a ActiveConfig,
    pub peer: SocketAddr,
    /// The auth service's `upstream` for this client (empty: the pool).
    pub upstream: &'a [SocketAddr],
}

/// A POST to `deliver_path`, as the auth stage and the members see it.
fn head(path: &str) -> request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = Method::POST;
    head.uri = path.parse().unwrap_or_else(|_| http::Uri::from_static("/"));
    head
}

/// AUTH PLAIN/LOGIN through the instance's auth: `basic` users, or the
/// auth service asked with `protocol: "smtp"`. Also the upstream it named.
pub async fn authenticate(
    c: &Client<'_>,
    path: &str,
    user: &str,
    password: &str,
) -> (AuthResult, Vec<SocketAddr>) {
    // Basic credentials split at the first colon: a user name holding one
    // would be read as another user.
    if user.contains(':') {
        return (AuthResult::Refused, Vec::new());
    }
    let mut head = head(path);
    head.extensions.insert(AuthProtocol::Smtp);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    match HeaderValue::from_str(&format!("Basic {basic}")) {
        Ok(v) => drop(head.headers.insert(header::AUTHORIZATION, v)),
        Err(_) => return (AuthResult::Refused, Vec::new()),
    }
    let outcome = Box::pin(c.active.auth.authorize(
        None,
        &mut head,
        c.peer.ip(),
        &c.node.counters.policy,
    ))
    .await;
    match outcome {
        AuthOutcome::Pass(caller) => (
            AuthResult::Granted {
                auth_token: caller.auth_token.map(|t| t.to_string()),
            },
            caller.upstream,
        ),
        AuthOutcome::Respond(r) if r.status().is_server_error() => {
            (AuthResult::Unavailable, Vec::new())
        }
        AuthOutcome::Respond(_) => (AuthResult::Refused, Vec::new()),
    }
}

/// Delivers one message and says what to reply.
pub async fn deliver(c: &Client<'_>, path: &str, env: &Envelope, message: Bytes) -> Reply {
    let counters = &c.node.counters;
    counters.requests_total.fetch_add(1, Relaxed);
    counters.bytes_in.fetch_add(message.len() as u64, Relaxed);
    let head = envelope_head(path, env, c.peer, message.len());
    if !c.active.limits.is_empty() {
        let facts = LimitRequest {
            method: &head.method,
            path: head.uri.path(),
            headers: &HeaderMap::new(),
            client_ip: c.peer.ip(),
            auth_token: env.auth_token.as_deref(),
            body_bytes: Some(message.len() as u64),
        };
        if let LimitOutcome::Limited(_) =
            Box::pin(c.active.limits.check(&facts, &counters.policy)).await
        {
            return reply::rate_limited();
        }
    }
    let upstream_set = (!c.upstream.is_empty())
        .then(|| c.active.upstreams.balancer(c.upstream, &c.active.balancer));
    let balancer = upstream_set.as_deref().unwrap_or(&c.active.balancer);
    let reply = post(c, balancer, head, message).await;
    if reply.code == 421 || reply.code == 451 && reply.enhanced == Some("4.4.1") {
        counters.backend_errors.fetch_add(1, Relaxed);
    }
    reply
}

/// The request head of a message: the envelope in headers.
fn envelope_head(path: &str, env: &Envelope, peer: SocketAddr, len: usize) -> request::Parts {
    let mut head = head(path);
    let h = &mut head.headers;
    let mut set = |name: HeaderName, value: &str| {
        // The parser let only printable ASCII into the envelope.
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    set(MAIL_FROM, &env.mail_from);
    set(RCPT_TO, &env.rcpt_to.join(","));
    set(HELO, &env.helo);
    set(CLIENT_IP, &peer.ip().to_string());
    if let Some(token) = &env.auth_token {
        set(AUTH_TOKEN, token);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("message/rfc822"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    head
}

/// The POST, tried on a second member when the first never answered (the
/// message was surely not taken, and it is still in memory).
async fn post(c: &Client<'_>, balancer: &Balancer, head: request::Parts, message: Bytes) -> Reply {
    let key = fnv1a(c.peer.ip().to_string().as_bytes());
    let Some(mut member) = balancer.pick(key).map(|p| p.member) else {
        return reply::no_backend();
    };
    for attempt in 0..2 {
        let upstream = Upstream::new(head.clone(), c.peer, None, false);
        let body = full_body(message.clone());
        match send_with_retry(&c.active.client, balancer, member, upstream, body).await {
            Ok((resp, _)) => {
                let status = resp.status();
                let drain = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES);
                let _ = tokio::time::timeout(DRAIN, drain.collect()).await;
                return match status.as_u16() {
                    200..=299 => reply::accepted(),
                    500..=599 => reply::backend_refused(),
                    _ => reply::backend_refused_temporarily(),
                };
            }
            Err(failure) => match failure.error {
                ForwardError::Timeout(_) => return reply::backend_timeout(),
                // Refused before it was sent: another member. (A reset
                // kept-alive connection may have delivered it: 451 below,
                // the client retries.)
                ForwardError::Failed {
                    resend: Resend::Elsewhere,
                    reason,
                } => {
                    tracing::debug!("smtp delivery to {}: {reason}", failure.member.address);
                    match balancer.retry_member(failure.member) {
                        Some(other) if attempt == 0 => member = other,
                        _ => return reply::no_backend(),
                    }
                }
                ForwardError::Failed { reason, .. } => {
                    tracing::warn!("smtp delivery to {}: {reason}", failure.member.address);
                    return reply::backend_refused_temporarily();
                }
            },
        }
    }
    reply::no_backend()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_travels_in_headers() {
        let env = Envelope {
            mail_from: "a@x.example".into(),
            rcpt_to: vec!["b@y.example".into(), "c@y.example".into()],
            helo: "client.example".into(),
            auth_token: Some("tok-1".into()),
        };
        let h = envelope_head("/in", &env, "127.0.0.9:4000".parse().unwrap(), 12);
        assert_eq!((h.method.as_str(), h.uri.path()), ("POST", "/in"));
        assert_eq!(h.headers["x-smtp-mail-from"], "a@x.example");
        assert_eq!(h.headers["x-smtp-rcpt-to"], "b@y.example,c@y.example");
        assert_eq!(h.headers["x-smtp-helo"], "client.example");
        assert_eq!(h.headers["x-smtp-client-ip"], "127.0.0.9");
        assert_eq!(h.headers["x-auth-token"], "tok-1");
        assert_eq!(h.headers["content-length"], "12");
        let anonymous = Envelope {
            auth_token: None,
            mail_from: String::new(),
            ..env
        };
        let h = envelope_head("/in", &anonymous, "127.0.0.9:4000".parse().unwrap(), 0);
        assert!(!h.headers.contains_key("x-auth-token"));
        assert_eq!(h.headers["x-smtp-mail-from"], "");
    }
}
