//! The auth stage as the request pipeline calls it: one `AuthStage` per
//! config, asked once per request with the index of the rule that matched.
//! It picks the auth object that applies (`Policy::effective_auth`), asks
//! it, checks the rule's `require_groups`, and counts the outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http::header::HeaderName;
use http::request;
use http::{Response, StatusCode};

use super::groups;
use super::headers::{self, FAILURE_ALLOWED};
use super::secrets::SecretAuthorizer;
use super::service_auth::ServiceAuthorizer;
use crate::dataplane::pool::ProxyBody;
use crate::dataplane::stats::PolicyCounters;
use crate::model::policy::{Auth, Policy};

/// Who the caller is, once the auth stage let it through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The auth service's `auth_token` (also the `auth_token` rate limit
    /// key); for `basic` and `api_key`, the user's or key's name.
    pub auth_token: Option<Arc<str>>,
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

/// What one auth object decided about a request.
pub(super) enum Decision {
    Granted(Caller),
    /// 401/403: the caller is refused.
    Refused(Response<ProxyBody>),
    /// 503: no decision could be had (`failure: deny`).
    Unavailable(Response<ProxyBody>),
    /// No decision could be had and `failure: allow` lets it pass.
    FailureAllowed,
}

// One per auth object, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Authorizer {
    Service(ServiceAuthorizer),
    Secrets(SecretAuthorizer),
}

impl Authorizer {
    fn new(auth: &Auth) -> Authorizer {
        match auth {
            Auth::Service(s) => Authorizer::Service(ServiceAuthorizer::new(s)),
            Auth::Basic { realm, users } => {
                Authorizer::Secrets(SecretAuthorizer::basic(realm, users))
            }
            Auth::ApiKey { header, keys } => {
                Authorizer::Secrets(SecretAuthorizer::api_key(header, keys))
            }
        }
    }
}

/// An auth object of the policy with its decision cache and client; kept
/// by the next config's stage while the object is unchanged.
struct Object {
    auth: Auth,
    authorizer: Authorizer,
}

/// How a rule's requests are authorized.
struct RuleAuthz {
    /// Index into `objects`; `None`: a public path.
    object: Option<usize>,
    require_groups: Vec<String>,
}

/// The auth objects of one config, their decision caches and clients.
#[derive(Default)]
pub struct AuthStage {
    objects: Vec<Arc<Object>>,
    /// For requests no rule matched.
    instance: Option<usize>,
    rules: Vec<RuleAuthz>,
    /// Headers only the stage sets; removed from every client request.
    reserved: Vec<HeaderName>,
}

impl AuthStage {
    /// `previous`: the stage of the config before; its caches carry over
    /// for auth objects that did not change.
    pub fn new(policy: &Policy, previous: Option<&AuthStage>) -> AuthStage {
        let mut stage = AuthStage::default();
        stage.instance = policy.auth.as_ref().map(|a| stage.object(a, previous));
        for (i, rule) in policy.rules.iter().enumerate() {
            let object = policy
                .effective_auth(Some(i))
                .map(|a| stage.object(a, previous));
            stage.rules.push(RuleAuthz {
                object,
                require_groups: rule.rule.require_groups.clone(),
            });
        }
        if !stage.objects.is_empty() {
            stage.reserved.push(FAILURE_ALLOWED);
            for o in &stage.objects {
                if let Authorizer::Service(s) = &o.authorizer {
                    if !stage.reserved.contains(s.auth_token_header()) {
                        stage.reserved.push(s.auth_token_header().clone());
                    }
                }
            }
        }
        stage
    }

    /// The index of `auth` among this stage's objects: one already made
    /// for an equal object, the previous stage's, or a new one.
    fn object(&mut self, auth: &Auth, previous: Option<&AuthStage>) -> usize {
        if let Some(i) = self.objects.iter().position(|o| o.auth == *auth) {
            return i;
        }
        let kept = previous.and_then(|p| p.objects.iter().find(|o| o.auth == *auth));
        let object = kept.cloned().unwrap_or_else(|| {
            Arc::new(Object {
                auth: auth.clone(),
                authorizer: Authorizer::new(auth),
            })
        });
        self.objects.push(object);
        self.objects.len() - 1
    }

    /// No auth anywhere in the policy: the pipeline skips the stage.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Decides about a request that rule `rule` (an index into the policy's
    /// rules; `None`: no rule matched) matched. It checks the rule's
    /// `require_groups` too. On `Pass`, `head` was made ready for the
    /// backend: credentials removed unless `pass_credentials`, the
    /// `auth_token` header set, `X-Auth-Failure-Mode-Allowed` when it applies.
    pub async fn authorize(
        &self,
        rule: Option<usize>,
        head: &mut request::Parts,
        client_ip: IpAddr,
        counters: &PolicyCounters,
    ) -> AuthOutcome {
        let rule = rule.and_then(|i| self.rules.get(i));
        let object = match rule {
            Some(r) => r.object,
            None => self.instance,
        };
        let Some(object) = object.and_then(|i| self.objects.get(i)) else {
            headers::strip_reserved(&mut head.headers, &self.reserved);
            return AuthOutcome::Pass(Caller::default());
        };
        let decision = match &object.authorizer {
            Authorizer::Service(s) => s.decide(head, client_ip, &self.reserved, counters).await,
            Authorizer::Secrets(s) => s.decide(head, &self.reserved, counters).await,
        };
        let required = rule.map_or(&[][..], |r| &r.require_groups[..]);
        outcome(decision, required, counters)
    }
}

/// The pipeline's outcome of a decision, counted.
fn outcome(decision: Decision, required: &[String], counters: &PolicyCounters) -> AuthOutcome {
    match decision {
        Decision::Granted(caller) if groups::has_all(required, &caller.groups) => {
            counters.auth_allowed.fetch_add(1, Relaxed);
            AuthOutcome::Pass(caller)
        }
        Decision::Granted(_) => {
            counters.auth_denied.fetch_add(1, Relaxed);
            AuthOutcome::Respond(headers::missing_groups())
        }
        Decision::Refused(resp) => {
            counters.auth_denied.fetch_add(1, Relaxed);
            AuthOutcome::Respond(resp)
        }
        Decision::Unavailable(resp) => AuthOutcome::Respond(resp),
        // Without a decision there are no groups: a rule that requires
        // some cannot be let through, and the caller is not to blame.
        Decision::FailureAllowed if !required.is_empty() => {
            AuthOutcome::Respond(crate::dataplane::http::short(
                StatusCode::SERVICE_UNAVAILABLE,
                "lb-node: the auth service is unavailable and this path requires groups\n",
            ))
        }
        Decision::FailureAllowed => {
            counters.auth_failure_allowed.fetch_add(1, Relaxed);
            AuthOutcome::Pass(Caller::default())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::PolicySpec;
    use crate::model::TrafficType;
    use crate::password::Argon2Hasher;

    fn policy(json: &str) -> Policy {
        serde_json::from_str::<PolicySpec>(json)
            .unwrap()
            .validate(TrafficType::Http, 80, &Argon2Hasher)
            .unwrap()
    }

    fn head(pairs: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri("/");
        for (n, v) in pairs {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    // "ann:ann-password", "bob:bob-password"
    const ANN: &str = "Basic YW5uOmFubi1wYXNzd29yZA==";
    const BOB: &str = "Basic Ym9iOmJvYi1wYXNzd29yZA==";

    const GROUPS: &str = r#"{"auth":{"mode":"basic","realm":"r","users":[
            {"name":"ann","password":"ann-password","groups":["admins","ops"]},
            {"name":"bob","password":"bob-password","groups":["ops"]}]},
        "rules":[{"name":"public","auth":"none","action":{"pool":"default"}},
                 {"name":"admin","require_groups":["admins"],"action":{"pool":"default"}},
                 {"name":"keys","auth":{"mode":"api_key","keys":[{"name":"k","key":"key-0123456789"}]},
                  "action":{"pool":"default"}}]}"#;

    async fn status(stage: &AuthStage, rule: Option<usize>, pairs: &[(&str, &str)]) -> u16 {
        let c = PolicyCounters::default();
        let mut h = head(pairs);
        match stage
            .authorize(rule, &mut h, [127, 0, 0, 1].into(), &c)
            .await
        {
            AuthOutcome::Pass(_) => 200,
            AuthOutcome::Respond(r) => r.status().as_u16(),
        }
    }

    #[tokio::test]
    async fn each_rule_goes_through_its_auth_and_its_required_groups() {
        let stage = AuthStage::new(&policy(GROUPS), None);
        let auth = |v| [("authorization", v)];
        // No rule matched: the instance's basic auth.
        assert_eq!(status(&stage, None, &[]).await, 401);
        assert_eq!(status(&stage, None, &auth(BOB)).await, 200);
        // A public rule needs nothing.
        assert_eq!(status(&stage, Some(0), &[]).await, 200);
        // require_groups: ann is an admin, bob is not.
        assert_eq!(status(&stage, Some(1), &auth(ANN)).await, 200);
        assert_eq!(status(&stage, Some(1), &auth(BOB)).await, 403);
        assert_eq!(status(&stage, Some(1), &[]).await, 401);
        // A rule's own auth replaces the instance's.
        assert_eq!(status(&stage, Some(2), &auth(ANN)).await, 401);
        assert_eq!(
            status(&stage, Some(2), &[("x-api-key", "key-0123456789")]).await,
            200
        );
    }

    #[tokio::test]
    async fn forged_stage_headers_never_reach_the_backend() {
        let p = policy(
            r#"{"auth":{"mode":"service","url":"http://127.0.0.1:1/","failure":"allow"},
                "rules":[{"name":"public","auth":"none","action":{"pool":"default"}}]}"#,
        );
        let stage = AuthStage::new(&p, None);
        let c = PolicyCounters::default();
        let mut h = head(&[
            ("x-auth-token", "forged"),
            ("x-auth-failure-mode-allowed", "true"),
        ]);
        let AuthOutcome::Pass(_) = stage
            .authorize(Some(0), &mut h, [127, 0, 0, 1].into(), &c)
            .await
        else {
            panic!()
        };
        assert!(h.headers.is_empty(), "{:?}", h.headers);
    }

    #[tokio::test]
    async fn failure_allowed_still_refuses_a_path_that_requires_groups() {
        let p = policy(
            r#"{"auth":{"mode":"service","url":"http://127.0.0.1:1/","failure":"allow"},
                "rules":[{"name":"admin","require_groups":["admins"],"action":{"pool":"default"}}]}"#,
        );
        let stage = AuthStage::new(&p, None);
        assert_eq!(status(&stage, Some(0), &[]).await, 503);
        assert_eq!(status(&stage, None, &[]).await, 200);
    }

    #[test]
    fn unchanged_auth_objects_keep_their_caches_across_configs() {
        let service = |url: &str| {
            policy(&format!(
                r#"{{"auth":{{"mode":"service","url":"{url}"}},
                    "rules":[{{"name":"r","action":{{"pool":"default"}}}}]}}"#
            ))
        };
        let first = AuthStage::new(&service("http://127.0.0.1:1/a"), None);
        // The rule inherits: one object for both.
        assert_eq!(first.objects.len(), 1);
        let same = AuthStage::new(&service("http://127.0.0.1:1/a"), Some(&first));
        assert!(Arc::ptr_eq(&first.objects[0], &same.objects[0]));
        let changed = AuthStage::new(&service("http://127.0.0.1:1/b"), Some(&same));
        assert!(!Arc::ptr_eq(&same.objects[0], &changed.objects[0]));
        assert!(AuthStage::new(&Policy::default(), Some(&changed)).is_empty());
    }
}
