//! The member side of the HTTP proxy: a client request made into the
//! request members get (hop-by-hop headers out, `X-Forwarded-*` and `Via`
//! in, HTTP/1.1 in origin form), sent over the pool with the first-byte
//! timeout, and sent once more to another member when the retry rule allows.
//! What the client gets back is `http.rs`'s business.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;

use super::balance::{Balancer, Member};
use super::health::record_outcome;
use super::pool::tls::MemberTls;
use super::pool::{BackendPool, ProxyBody, SendError};
use crate::model::upstream::BackendProtocol;
use crate::model::Timeouts;

/// How to reach the members: connection pooling and timeouts.
#[derive(Clone)]
pub struct BackendClient {
    pool: BackendPool,
    first_byte: Duration,
}

impl BackendClient {
    /// `source`: the node's own address, which backend connections leave from.
    pub fn new(timeouts: &Timeouts, source: std::net::IpAddr) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        BackendClient {
            pool: BackendPool::new(
                ms(timeouts.connect_ms),
                ms(timeouts.backend_idle_ms),
                source,
            ),
            first_byte: ms(timeouts.first_byte_ms),
        }
    }
}

// === The request as members get it ===

/// A client request made ready for members, once per request; each attempt
/// then only needs its member's address filled in (`address_to`).
pub(super) struct Upstream {
    head: request::Parts,
    /// The origin-form target (`/path?query`) that every attempt sends.
    target: PathAndQuery,
    /// Kept apart from `head` for the log lines after `head` is sent.
    method: Method,
    /// A second copy of the head, only for a request that may be sent twice.
    spare: Option<request::Parts>,
    /// The client asked to switch protocols: HTTP/1.1 to the member, whatever
    /// the pool's protocol, since an HTTP/2 stream cannot be upgraded.
    upgrade: bool,
}

impl Upstream {
    /// `upgrade`: the protocol the client asked to switch to, asked of the
    /// member again since `Upgrade` is hop-by-hop. `retryable`: the request
    /// can be sent twice (no body, idempotent, not an upgrade).
    pub(super) fn new(
        mut head: request::Parts,
        peer: SocketAddr,
        upgrade: Option<HeaderValue>,
        retryable: bool,
    ) -> Self {
        let upgrading = upgrade.is_some();
        let authority = head.headers.get(header::HOST).cloned().or_else(|| {
            head.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        strip_hop_by_hop(&mut head.headers);
        if let Some(protocol) = upgrade {
            head.headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            head.headers.insert(header::UPGRADE, protocol);
        }
        let tls = head.extensions.get::<super::tls::Terminated>().copied();
        add_forwarded(&mut head.headers, peer, authority.as_ref(), head.version);
        if let Some(tls) = tls {
            // Decrypted here: the member learns the client's scheme and port.
            head.headers
                .insert("x-forwarded-proto", HeaderValue::from_static("https"));
            head.headers
                .insert("x-forwarded-port", HeaderValue::from(tls.port));
        }
        if let Some(host) = authority {
            // HTTP/2 clients send :authority, not Host; members speak HTTP/1.1.
            head.headers.insert(header::HOST, host);
        }
        let target = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        head.version = http::Version::HTTP_11;
        let method = head.method.clone();
        let spare = retryable.then(|| head.clone());
        Upstream {
            head,
            target,
            method,
            spare,
            upgrade: upgrading,
        }
    }

    /// Sends every attempt to `target` instead of the client's (a rule's
    /// `strip_prefix`).
    pub(super) fn retarget(&mut self, target: PathAndQuery) {
        self.target = target;
    }
}

/// Points a head at one member in `protocol`. For HTTP/1.1 the target goes
/// in origin form, since the member is the connection's peer, and a request
/// that named no host gets the member's, since HTTP/1.1 requires one. For
/// h2c the host becomes `:authority` (RFC 9113 §8.3.1), so the URI is
/// absolute and `Host` goes.
fn address_to(
    head: &mut request::Parts,
    target: &PathAndQuery,
    member: &Authority,
    protocol: BackendProtocol,
) {
    match protocol {
        BackendProtocol::Http1 => {
            head.uri = Uri::from(target.clone());
            head.version = http::Version::HTTP_11;
            if !head.headers.contains_key(header::HOST) {
                if let Ok(host) = HeaderValue::from_str(member.as_str()) {
                    head.headers.insert(header::HOST, host);
                }
            }
        }
        BackendProtocol::H2c => {
            let authority = head
                .headers
                .remove(header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| member.clone());
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(http::uri::Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = Some(target.clone());
            head.uri = Uri::from_parts(parts).expect("scheme, authority and path make a URI");
            head.version = http::Version::HTTP_2;
        }
    }
}

/// Headers that describe one hop (RFC 9110 §7.6.1) and must not be forwarded,
/// including any that `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

fn add_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: Option<&HeaderValue>,
    version: http::Version,
) {
    let client = peer.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client}"),
        None => client,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = host {
        if !headers.contains_key("x-forwarded-host") {
            headers.insert("x-forwarded-host", host.clone());
        }
    }
    let hop = if version == http::Version::HTTP_2 {
        "2 lb-node"
    } else {
        "1.1 lb-node"
    };
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {hop}"),
        None => hop.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, v);
    }
}

// === Sending, with the retry rule ===

pub(super) enum ForwardError {
    Timeout(Duration),
    Failed { resend: Resend, reason: String },
}

/// Where a failed attempt may be sent again (if the request may be sent twice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resend {
    /// The member may have acted on it.
    Never,
    /// The member refused or dropped the connection before any response
    /// byte: another member.
    Elsewhere,
    /// A kept-alive connection went stale under it: another member, or the
    /// same one on a new connection.
    Anywhere,
}

impl ForwardError {
    /// The retry rule's half about the failure: only a member that never
    /// answered surely did not act on the request (one that timed out may
    /// have). Some((reason, for the log), where) when it allows a retry.
    fn retry(&self) -> Option<(&str, Resend)> {
        match self {
            ForwardError::Failed { resend, reason } if *resend != Resend::Never => {
                Some((reason, *resend))
            }
            _ => None,
        }
    }
}

/// Why no member's response reaches the client: the last member tried, and
/// what the log line about the request needs.
pub(super) struct Failure<'a> {
    pub member: &'a Member,
    pub error: ForwardError,
    pub method: Method,
    pub target: PathAndQuery,
}

/// Sends `upstream` to `member` of `balancer` (the request's pool), and on
/// a failure the retry rule allows (`retry_reason`, and a spare head) once
/// more to another member of it. Every attempt's outcome counts for the
/// member's passive health in that pool. The member that answered comes
/// with its response.
pub(super) async fn send_with_retry<'a>(
    client: &BackendClient,
    balancer: &'a Balancer,
    mut member: &'a Member,
    upstream: Upstream,
    body: ProxyBody,
) -> Result<(Response<Incoming>, &'a Member), Failure<'a>> {
    let Upstream {
        head,
        target,
        method,
        mut spare,
        upgrade,
    } = upstream;
    let protocol = if upgrade {
        BackendProtocol::Http1
    } else {
        balancer.protocol()
    };
    let mut attempt = (head, body);
    let mut fresh = false;
    loop {
        let (mut head, body) = attempt;
        address_to(&mut head, &target, &member.authority, protocol);
        let req = Request::from_parts(head, body);
        let tls = balancer.tls().map(|t| &**t);
        let error = match forward(client, member, req, fresh, protocol, tls).await {
            Ok(resp) => {
                record_outcome(balancer, member, resp.status().as_u16() < 500);
                return Ok((resp, member));
            }
            Err(error) => error,
        };
        let retry = error.retry();
        // A stale connection says nothing of the member's health.
        if !matches!(retry, Some((_, Resend::Anywhere))) {
            record_outcome(balancer, member, false);
        }
        if let Some((reason, resend)) = retry {
            let other = balancer
                .retry_member(member)
                .or((resend == Resend::Anywhere).then_some(member));
            if let (Some(head), Some(other)) = (spare.take(), other) {
                tracing::debug!(
                    "{method} {target}: retrying on {} after: {reason}",
                    other.address
                );
                member = other;
                fresh = true;
                attempt = (head, Empty::new().map_err(|e| match e {}).boxed());
                continue;
            }
        }
        return Err(Failure {
            member,
            error,
            method,
            target,
        });
    }
}

/// One attempt on one member (on a new connection if `fresh`), counted in
/// the member's stats.
async fn forward(
    client: &BackendClient,
    member: &Member,
    req: Request<ProxyBody>,
    fresh: bool,
    protocol: BackendProtocol,
    tls: Option<&MemberTls>,
) -> Result<Response<Incoming>, ForwardError> {
    let c = &member.counters;
    c.requests.fetch_add(1, Relaxed);
    c.active.fetch_add(1, Relaxed);
    let result = tokio::time::timeout(
        client.first_byte,
        client.pool.send(member.address, req, fresh, protocol, tls),
    )
    .await;
    c.active.fetch_sub(1, Relaxed);
    let (resend, reason) = match result {
        Ok(Ok(resp)) => {
            if resp.status().is_server_error() {
                c.failures.fetch_add(1, Relaxed);
            }
            return Ok(resp);
        }
        Ok(Err(SendError::Unanswered(reason))) => (Resend::Elsewhere, reason),
        Ok(Err(SendError::Stale(reason))) => (Resend::Anywhere, reason),
        Ok(Err(SendError::Failed(reason))) => (Resend::Never, reason),
        Err(_) => {
            c.failures.fetch_add(1, Relaxed);
            return Err(ForwardError::Timeout(client.first_byte));
        }
    };
    c.failures.fetch_add(1, Relaxed);
    Err(ForwardError::Failed { resend, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_named_ones() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("web"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::HOST));
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::VIA, HeaderValue::from_static("1.0 edge"));
        let host = HeaderValue::from_static("web.demo");
        add_forwarded(
            &mut h,
            "127.0.0.9:5555".parse().unwrap(),
            Some(&host),
            http::Version::HTTP_11,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "web.demo");
        assert_eq!(h[header::VIA], "1.0 edge, 1.1 lb-node");
    }

    fn head(req: request::Builder) -> request::Parts {
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn an_h2_request_becomes_http11_with_host_and_forwarded_headers() {
        let h2 = head(
            Request::builder()
                .version(http::Version::HTTP_2)
                .uri("http://web.demo/a?b=1")
                .header(header::TE, "trailers"),
        );
        let up = Upstream::new(h2, "127.0.0.9:5555".parse().unwrap(), None, true);
        assert_eq!(up.head.version, http::Version::HTTP_11);
        assert_eq!(up.target, "/a?b=1");
        assert_eq!(up.head.headers[header::HOST], "web.demo");
        assert_eq!(up.head.headers["x-forwarded-host"], "web.demo");
        assert_eq!(up.head.headers[header::VIA], "2 lb-node");
        assert!(!up.head.headers.contains_key(header::TE));
        assert!(up.spare.is_some(), "a retryable request keeps a spare head");
    }

    #[test]
    fn a_retargeted_request_sends_the_new_target_on_every_attempt() {
        let req = head(
            Request::builder()
                .uri("/api/users?x=1")
                .header(header::HOST, "web"),
        );
        let mut up = Upstream::new(req, "127.0.0.9:5555".parse().unwrap(), None, true);
        up.retarget(PathAndQuery::from_static("/users?x=1"));
        assert_eq!(up.target, "/users?x=1");
    }

    #[test]
    fn an_upgrade_is_asked_of_the_member_again_and_not_kept_for_a_retry() {
        let ws = head(
            Request::builder()
                .uri("/chat")
                .header(header::HOST, "web.demo")
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket"),
        );
        let protocol = HeaderValue::from_static("websocket");
        let up = Upstream::new(ws, "127.0.0.9:5555".parse().unwrap(), Some(protocol), false);
        assert_eq!(up.head.headers[header::CONNECTION], "upgrade");
        assert_eq!(up.head.headers[header::UPGRADE], "websocket");
        assert!(up.spare.is_none());
    }

    #[test]
    fn each_attempt_goes_in_origin_form_with_a_host() {
        let member: Authority = "127.0.0.1:9001".parse().unwrap();
        let target = PathAndQuery::from_static("/a?b=1");
        let mut bare = head(Request::builder().uri("http://ignored/x"));
        bare.headers.remove(header::HOST);
        address_to(&mut bare, &target, &member, BackendProtocol::Http1);
        assert_eq!(bare.uri, "/a?b=1");
        assert_eq!(bare.headers[header::HOST], "127.0.0.1:9001");

        let mut named = head(Request::builder().uri("/").header(header::HOST, "web.demo"));
        address_to(&mut named, &target, &member, BackendProtocol::Http1);
        assert_eq!(
            named.headers[header::HOST],
            "web.demo",
            "the client's host stays"
        );
    }

    #[test]
    fn an_h2c_attempt_carries_the_host_as_its_authority() {
        let member: Authority = "127.0.0.1:9001".parse().unwrap();
        let target = PathAndQuery::from_static("/a?b=1");
        let mut named = head(Request::builder().uri("/").header(header::HOST, "web.demo"));
        address_to(&mut named, &target, &member, BackendProtocol::H2c);
        assert_eq!(named.uri, "http://web.demo/a?b=1");
        assert_eq!(named.version, http::Version::HTTP_2);
        assert!(!named.headers.contains_key(header::HOST));

        let mut bare = head(Request::builder().uri("/"));
        bare.headers.remove(header::HOST);
        address_to(&mut bare, &target, &member, BackendProtocol::H2c);
        assert_eq!(
            bare.uri, "http://127.0.0.1:9001/a?b=1",
            "the member's when none"
        );
    }

    #[test]
    fn an_upgrade_stays_on_http11_even_to_an_h2c_pool() {
        let ws = head(
            Request::builder()
                .uri("/chat")
                .header(header::HOST, "web.demo")
                .header(header::UPGRADE, "websocket"),
        );
        let protocol = HeaderValue::from_static("websocket");
        let up = Upstream::new(ws, "127.0.0.9:5555".parse().unwrap(), Some(protocol), false);
        assert!(up.upgrade);
        let plain = head(Request::builder().uri("/").header(header::HOST, "web"));
        assert!(!Upstream::new(plain, "127.0.0.9:5555".parse().unwrap(), None, true).upgrade);
    }

    #[test]
    fn only_an_unanswered_failure_may_be_retried() {
        let failed = |resend| ForwardError::Failed {
            resend,
            reason: "connection refused".into(),
        };
        assert_eq!(
            failed(Resend::Elsewhere).retry(),
            Some(("connection refused", Resend::Elsewhere))
        );
        assert_eq!(
            failed(Resend::Anywhere).retry(),
            Some(("connection refused", Resend::Anywhere))
        );
        assert_eq!(
            failed(Resend::Never).retry(),
            None,
            "the member may have acted on it"
        );
        assert_eq!(ForwardError::Timeout(Duration::from_secs(1)).retry(), None);
    }
}
