//! One request's way through lb-node, stage by stage:
//!
//! ```text
//! accept (Host check, config) → rules → reject? → auth → rate limit
//!   → [federation: resource or list paths, to the providers]
//!   → action: redirect | respond | pool → [wake queue] → [sticky] member
//!   → strip_prefix, header edits → upstream (send_with_retry)
//! ```
//!
//! Each stage is its own module (`rules`, `auth`, `rate_limit`, `actions`,
//! `pools`, `forward`); this file only orders them. A stage whose part of
//! the policy is empty is skipped by an `is_empty()` check, so a config
//! without a policy costs no allocation or lock here.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::actions::{edit_headers, stripped_target, Action};
use super::auth::{AuthOutcome, Caller};
use super::balance::{fnv1a, Balancer, Member};
use super::federation;
use super::forward::{send_with_retry, Upstream};
use super::http::{
    bad_host, client_response, failure_response, idempotent_without_body, short, upgrade_protocol,
};
use super::pool::ProxyBody;
use super::pools::PoolRef;
use super::rate_limit::{LimitOutcome, LimitRequest};
use super::rules::{CompiledRule, RequestFacts};
use super::stats::OpenGuard;
use super::sticky::PoolSticky;
use super::wake;
use super::{ActiveConfig, Node};
use crate::model::{Algorithm, HashOn};

pub(super) async fn route(
    node: &Arc<Node>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    // Stage: accept.
    if let Some(reason) = bad_host(&req) {
        let mut resp = short(StatusCode::BAD_REQUEST, reason);
        // The client is broken; do not wait for its next request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let Some(active) = node.active.load_full() else {
        return short(
            StatusCode::SERVICE_UNAVAILABLE,
            "lb-node: not configured yet\n",
        );
    };
    let upgrade = upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let retryable = upgrade.is_none() && idempotent_without_body(&req);
    let (mut head, body) = req.into_parts();

    // Stage: rules. A reject answers before anything else is asked.
    let matched = match_rule(&active, &head, peer);
    let rule_index = matched.map(|(i, _)| i);
    let rule = matched.map(|(_, r)| r);
    if let Some(reject @ Action::Reject(_)) = rule.map(|r| &r.action) {
        return reject.answer().expect("a reject answers");
    }

    // Stage: auth.
    let caller = match authorize(node, &active, rule_index, &mut head, peer).await {
        AuthOutcome::Pass(caller) => caller,
        AuthOutcome::Respond(resp) => return resp,
    };

    // Stage: rate limit.
    let body_bytes = hyper::body::Body::size_hint(&body).exact();
    let limit_headers = match limit(node, &active, &head, body_bytes, peer, &caller).await {
        LimitOutcome::Pass { headers } => headers,
        LimitOutcome::Limited(resp) => return resp,
    };

    // Stage: federation. A resource or list path of the federation, that
    // no rule took, goes to the providers.
    if let (None, None, Some(fed)) = (rule, &upgrade, active.federation.as_ref()) {
        if let Some(matched) = fed.classify(&head) {
            let req = federation::Federated {
                matched,
                head,
                body,
                peer,
                retryable,
            };
            let mut resp = federation::serve(node, &active, fed, req).await;
            add_limit_fields(&mut resp, limit_headers);
            return resp;
        }
    }

    // Stage: action. Redirect and respond are the node's own answers.
    let pool = match rule.map(|r| &r.action) {
        None => PoolRef::Default,
        Some(Action::Pool { pool, .. }) => *pool,
        Some(answering) => {
            let mut resp = answering.answer().expect("not a pool action");
            add_limit_fields(&mut resp, limit_headers);
            return resp;
        }
    };
    // Stage: wake queue. A request for a managed pool with no member
    // waits here until lbd pushes one (then with the config that has it).
    let routed = match wake_route(node, &active, pool, &head, &caller) {
        Ok(routed) => routed,
        Err(refusal) => return wake::answer::resource_refusal(refusal),
    };
    let target = routed.as_ref().map(|r| r.target.clone());
    let resource = routed.and_then(|r| r.resource);
    let _in_flight = target.as_ref().map(|t| t.in_flight());
    let held = hold(node, &active, target.as_deref(), pool, resource.as_ref()).await;
    let (woken, cold_start) = match held {
        Ok(woken) => woken,
        Err(refused) => return wake::answer::refusal(refused),
    };
    // After a wake the pool is looked up again in the config that has its
    // member (its place may have moved if a new config came meanwhile).
    let (serving, pool) = match woken.as_deref() {
        Some(now) => match now.pools.resolve(target.as_deref().map_or("", |t| &t.pool)) {
            Some(pool) => (now, pool),
            None => return no_member(active.pool(pool)),
        },
        None => (&*active, pool),
    };
    // An auth service's members speak what the pool the rules chose speaks.
    let upstream_set = (!caller.upstream.is_empty()).then(|| {
        serving
            .upstreams
            .balancer(&caller.upstream, serving.pool(pool))
    });
    let balancer = match upstream_set.as_deref() {
        Some(set) => set,
        None => match member_set(serving, pool, resource.as_ref()) {
            Some(b) => b,
            None => {
                node.counters.backend_errors.fetch_add(1, Relaxed);
                return short(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "lb-node: no backend is ready for this resource\n",
                );
            }
        },
    };
    // Stage: sticky. Not for an auth service's `upstream` set.
    let sticky = upstream_set
        .is_none()
        .then(|| serving.sticky.get(pool))
        .flatten();
    let cookie = sticky.and_then(PoolSticky::cookie);
    let pinned = cookie.and_then(|c| c.pinned(&head.headers, balancer));
    let picked = match &pinned {
        Some(p) => Some(p.member),
        None => pick_member(node, serving, balancer, sticky, &head, peer),
    };
    let Some(member) = picked else {
        node.counters.backend_errors.fetch_add(1, Relaxed);
        return no_member(balancer);
    };
    // A managed member is open (not idle) from here to its body's end.
    let open = target
        .is_some()
        .then(|| OpenGuard::new(member.counters.clone()));

    // Stage: toward the backend.
    let mut upstream = toward_backend(rule, head, peer, upgrade, retryable);
    // A per-resource pool's backend gets the path after the resource (and
    // groups) segments, whatever a rule's strip_prefix would have left.
    if let Some(r) = &resource {
        upstream.retarget(r.target.clone());
    }

    // Stage: upstream.
    let mut resp = match send_with_retry(&serving.client, balancer, member, upstream, body.boxed())
        .await
    {
        Ok((resp, served)) => {
            let set_cookie = cookie.and_then(|c| c.set_cookie(balancer, served, pinned.as_ref()));
            let open = match open {
                Some(_) if !std::ptr::eq(served, member) => {
                    Some(OpenGuard::new(served.counters.clone()))
                }
                open => open,
            };
            let mut resp = client_response(node, serving, resp, client_upgrade, open);
            if let Some(v) = set_cookie {
                resp.headers_mut().append(header::SET_COOKIE, v);
            }
            resp
        }
        Err(failure) => failure_response(node, failure),
    };
    add_limit_fields(&mut resp, limit_headers);
    if let Some(ms) = cold_start {
        wake::answer::add_cold_start(&mut resp, ms);
    }
    resp
}

/// Holds a request for a managed pool (or resource) without members until
/// one is pushed: the config that has it and the cold start, or why it was
/// not woken.
async fn hold(
    node: &Node,
    active: &ActiveConfig,
    target: Option<&wake::Target>,
    pool: PoolRef,
    resource: Option<&wake::ResourceRoute>,
) -> Result<(Option<Arc<ActiveConfig>>, Option<u64>), wake::HoldError> {
    let Some(t) = target else {
        return Ok((None, None));
    };
    if member_set(active, pool, resource).is_some_and(|b| !b.members().is_empty()) {
        return Ok((None, None));
    }
    let waited = t.hold().await?;
    Ok((node.active.load_full(), waited))
}

/// The members a request may go to: the pool's, or for a `per_resource`
/// pool its resource's (none while the resource has no ready member).
fn member_set<'a>(
    active: &'a ActiveConfig,
    pool: PoolRef,
    resource: Option<&wake::ResourceRoute>,
) -> Option<&'a Balancer> {
    match resource {
        None => Some(active.pool(pool)),
        Some(r) => active.wake.resource_balancer(pool, &r.id),
    }
}

/// The request's wake target (and resource route); none without managed
/// pools, at the cost of one check, or when an auth service chose the
/// upstream.
fn wake_route(
    node: &Node,
    active: &ActiveConfig,
    pool: PoolRef,
    head: &request::Parts,
    caller: &Caller,
) -> Result<Option<wake::Routed>, wake::ResourceRefusal> {
    if active.wake.is_empty() || !caller.upstream.is_empty() {
        return Ok(None);
    }
    node.wake
        .route(&active.wake, pool, &head.uri, &caller.groups)
}

/// The rate limit fields of this node replace any a backend sent, so a
/// client never sees two `RateLimit` fields that disagree.
fn add_limit_fields(resp: &mut Response<ProxyBody>, fields: Vec<(HeaderName, HeaderValue)>) {
    for (name, value) in fields {
        resp.headers_mut().insert(name, value);
    }
}

/// The first rule the request matches, and its index; none without rules.
fn match_rule<'a>(
    active: &'a ActiveConfig,
    head: &request::Parts,
    peer: SocketAddr,
) -> Option<(usize, &'a CompiledRule)> {
    if active.rules.is_empty() {
        return None;
    }
    active.rules.first_match(&RequestFacts::of(head, peer.ip()))
}

/// The auth stage; without auth anywhere in the policy an anonymous caller
/// (which allocates nothing).
async fn authorize(
    node: &Node,
    active: &ActiveConfig,
    rule_index: Option<usize>,
    head: &mut request::Parts,
    peer: SocketAddr,
) -> AuthOutcome {
    if active.auth.is_empty() {
        return AuthOutcome::Pass(Caller::default());
    }
    // Boxed: the stage's future holds its slow paths (the service call,
    // argon2 off the runtime), several KiB that would otherwise be part of
    // every request's future and moved with it.
    Box::pin(
        active
            .auth
            .authorize(rule_index, head, peer.ip(), &node.counters.policy),
    )
    .await
}

/// The request as the backend gets it: the rule's header edits, and its
/// path without the prefix under `strip_prefix`.
fn toward_backend(
    rule: Option<&CompiledRule>,
    mut head: request::Parts,
    peer: SocketAddr,
    upgrade: Option<HeaderValue>,
    retryable: bool,
) -> Upstream {
    let Some(rule) = rule else {
        return Upstream::new(head, peer, upgrade, retryable);
    };
    edit_headers(&mut head.headers, &rule.set_headers, &rule.remove_headers);
    let target = match &rule.action {
        Action::Pool {
            strip: Some(prefix),
            ..
        } => Some(stripped_target(&head.uri, prefix)),
        _ => None,
    };
    let mut upstream = Upstream::new(head, peer, upgrade, retryable);
    if let Some(target) = target {
        upstream.retarget(target);
    }
    upstream
}

/// The rate limit stage: the fields to add to the response, or the 429.
async fn limit(
    node: &Node,
    active: &ActiveConfig,
    head: &request::Parts,
    body_bytes: Option<u64>,
    peer: SocketAddr,
    caller: &Caller,
) -> LimitOutcome {
    if active.limits.is_empty() {
        // An empty Vec does not allocate.
        return LimitOutcome::Pass {
            headers: Vec::new(),
        };
    }
    let facts = LimitRequest {
        method: &head.method,
        path: head.uri.path(),
        headers: &head.headers,
        client_ip: peer.ip(),
        auth_token: caller.auth_token.as_deref(),
        // Exact from Content-Length (HTTP/1.1 and HTTP/2 alike) or an
        // ended stream; `None` for a chunked or open-ended body.
        body_bytes,
    };
    // Boxed for the same reason as the auth stage (the Redis round trip).
    Box::pin(active.limits.check(&facts, &node.counters.policy)).await
}

/// Nothing to pick is also every member drained on purpose; the reason
/// must not send an operator looking for a missing backend.
fn no_member(balancer: &Balancer) -> Response<ProxyBody> {
    let reason = if balancer.members().is_empty() {
        "lb-node: no backend is configured\n"
    } else {
        "lb-node: every backend has weight 0 (draining)\n"
    };
    short(StatusCode::SERVICE_UNAVAILABLE, reason)
}

/// The member of `balancer` for a request's first attempt; None when no
/// member has weight.
fn pick_member<'a>(
    node: &Node,
    active: &ActiveConfig,
    balancer: &'a Balancer,
    sticky: Option<&PoolSticky>,
    head: &request::Parts,
    peer: SocketAddr,
) -> Option<&'a Member> {
    let key = match balancer.algorithm() {
        Algorithm::ConsistentHash => {
            // A pool's sticky hash keys on its own field, not the instance's.
            let on = sticky.and_then(PoolSticky::hash_on);
            hash_key(
                on.unwrap_or(&active.config.tuning.hash_on),
                &head.headers,
                peer,
            )
        }
        _ => 0,
    };
    let pick = balancer.pick(key)?;
    node.counters.fail_open.store(pick.fail_open, Relaxed);
    Some(pick.member)
}

fn hash_key(on: &HashOn, headers: &HeaderMap, peer: SocketAddr) -> u64 {
    if let HashOn::Header(name) = on {
        if let Some(v) = headers.get(name.as_str()) {
            return fnv1a(v.as_bytes());
        }
    }
    match peer.ip() {
        std::net::IpAddr::V4(ip) => fnv1a(&ip.octets()),
        std::net::IpAddr::V6(ip) => fnv1a(&ip.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_key_is_the_header_when_asked_and_present() {
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        let on = HashOn::Header("x-user".into());
        let by_ip = hash_key(&on, &h, peer);
        assert_eq!(by_ip, hash_key(&HashOn::ClientIp, &h, peer));
        h.insert("x-user", HeaderValue::from_static("alice"));
        assert_eq!(hash_key(&on, &h, peer), fnv1a(b"alice"));
    }

    #[test]
    fn no_member_says_why() {
        let empty = Balancer::new(Algorithm::RoundRobin, &[], Vec::new());
        assert_eq!(no_member(&empty).status(), 503);
    }
}
