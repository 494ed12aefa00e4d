//! The rate-limit stage as the request pipeline calls it: one
//! `RateLimitStage` per config, asked once per request after auth.
//! (Contract stub: the limits are filled in by the rate limit work.)

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};

use crate::dataplane::pool::ProxyBody;
use crate::dataplane::stats::PolicyCounters;
use crate::model::node::RedisTarget;
use crate::model::policy::Policy;

/// What the limits look at in a request.
pub struct LimitRequest<'a> {
    pub method: &'a Method,
    /// The path without the query, as the client sent it.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub client_ip: IpAddr,
    /// The auth service's `auth_token`, when the auth stage got one.
    pub auth_token: Option<&'a str>,
    /// The request body's length when known (Content-Length).
    pub body_bytes: Option<u64>,
}

/// What the pipeline does next.
pub enum LimitOutcome {
    /// Go on; add these fields (`RateLimit`, `RateLimit-Policy`) to the response.
    Pass {
        headers: Vec<(HeaderName, HeaderValue)>,
    },
    /// Answer the client with this 429.
    Limited(Response<ProxyBody>),
}

/// The rate limits of one config and their counters.
#[derive(Default)]
pub struct RateLimitStage {}

impl RateLimitStage {
    /// `serving_nodes`: how many nodes share a `node`-scope threshold.
    /// `previous`: the stage of the config before, whose counters carry over
    /// for limits that did not change.
    pub fn new(
        _policy: &Policy,
        _serving_nodes: u32,
        _redis: Option<&RedisTarget>,
        _previous: Option<&RateLimitStage>,
    ) -> RateLimitStage {
        RateLimitStage {}
    }

    /// No limit in the policy: the pipeline skips the stage.
    pub fn is_empty(&self) -> bool {
        true
    }

    pub async fn check(&self, _req: &LimitRequest<'_>, _counters: &PolicyCounters) -> LimitOutcome {
        LimitOutcome::Pass {
            headers: Vec::new(),
        }
    }
}
