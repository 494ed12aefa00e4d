//! The auth stage as the request pipeline calls it: one `AuthStage` per
//! config, asked once per request with the index of the rule that matched.
//! (Contract stub: the decisions are filled in by the auth work.)

use std::net::{IpAddr, SocketAddr};

use http::request;
use http::Response;

use crate::dataplane::pool::ProxyBody;
use crate::dataplane::stats::PolicyCounters;
use crate::model::policy::Policy;

/// Who the caller is, once the auth stage let it through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The auth service's `auth_token` (also the `auth_token` rate limit key).
    pub auth_token: Option<String>,
    pub groups: Vec<String>,
    /// The auth service's `upstream`: where to send instead of the pool.
    pub upstream: Vec<SocketAddr>,
}

/// What the pipeline does next.
pub enum AuthOutcome {
    /// Go on; the request head was edited for the backend already.
    Pass(Caller),
    /// Answer the client with this (401/403 as the service said, 403 for
    /// missing groups, 503 when the service failed under `failure: deny`).
    Respond(Response<ProxyBody>),
}

/// The auth objects of one config, their decision caches and clients.
#[derive(Default)]
pub struct AuthStage {}

impl AuthStage {
    /// `previous`: the stage of the config before; its caches carry over
    /// for auth objects that did not change.
    pub fn new(_policy: &Policy, _previous: Option<&AuthStage>) -> AuthStage {
        AuthStage {}
    }

    /// No auth anywhere in the policy: the pipeline skips the stage.
    pub fn is_empty(&self) -> bool {
        true
    }

    /// Decides about a request that rule `rule` (an index into the policy's
    /// rules; `None`: no rule matched) matched. It checks the rule's
    /// `require_groups` too. On `Pass`, `head` was made ready for the
    /// backend: credentials removed unless `pass_credentials`, the
    /// `auth_token` header set, `X-Auth-Failure-Mode-Allowed` when it applies.
    pub async fn authorize(
        &self,
        _rule: Option<usize>,
        _head: &mut request::Parts,
        _client_ip: IpAddr,
        _counters: &PolicyCounters,
    ) -> AuthOutcome {
        AuthOutcome::Pass(Caller::default())
    }
}
