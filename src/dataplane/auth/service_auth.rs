//! `auth.mode: service` for one auth object: the decision cache in front
//! of the auth service, the hard deadline, the failure mode, and the
//! request made ready for the backend.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use http::{request, Uri};

use super::cache::{CacheKey, CachePolicy, DecisionCache, Source, DEFAULT_CACHE_ENTRIES};
use super::headers::{self, FAILURE_ALLOWED};
use super::key::KeyHasher;
use super::service::{
    AuthCallError, AuthClient, AuthProtocol, AuthQuery, Credentials, Refusal, Verdict,
};
use super::stage::{Caller, Decision};
use crate::dataplane::log_limit;
use crate::dataplane::stats::PolicyCounters;
use crate::model::policy::auth::{CacheKeyPart, FailureMode, ServiceAuth};

/// A decision as cached: cheap to clone for every request that uses it.
#[derive(Debug)]
enum Answer {
    Allow { token: HeaderValue, caller: Caller },
    Refuse(Refusal),
}

pub struct ServiceAuthorizer {
    config: ServiceAuth,
    /// `None`: the URL did not parse; every call fails (and the failure
    /// mode applies), which the validation in the API should prevent.
    url: Option<Uri>,
    /// What the log may say about the service: no query string.
    url_for_log: String,
    token_header: Option<HeaderName>,
    auth_token_header: HeaderName,
    cache: DecisionCache<Arc<Answer>>,
    keys: KeyHasher,
    client: AuthClient,
}

impl ServiceAuthorizer {
    pub fn new(config: &ServiceAuth) -> ServiceAuthorizer {
        let url = config.url.parse::<Uri>().ok();
        let url_for_log = url.as_ref().map_or_else(
            || "(unparsable url)".to_string(),
            |u| {
                format!(
                    "{}://{}{}",
                    u.scheme_str().unwrap_or("http"),
                    u.authority().map_or("", |a| a.as_str()),
                    u.path()
                )
            },
        );
        let header = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
        ServiceAuthorizer {
            url,
            url_for_log,
            token_header: config.token_header.as_deref().and_then(header),
            auth_token_header: header(&config.auth_token_header)
                .unwrap_or(HeaderName::from_static("x-auth-token")),
            cache: DecisionCache::new(CachePolicy {
                positive: secs(config.cache_ttl_s),
                negative: secs(config.negative_ttl_s),
                stale_on_error: secs(config.stale_on_error_s),
                max_entries: DEFAULT_CACHE_ENTRIES,
            }),
            keys: KeyHasher::random(),
            client: AuthClient::default(),
            config: config.clone(),
        }
    }

    /// The header the `auth_token` goes in: no client may send it.
    pub fn auth_token_header(&self) -> &HeaderName {
        &self.auth_token_header
    }

    pub async fn decide(
        &self,
        head: &mut request::Parts,
        client_ip: IpAddr,
        reserved: &[HeaderName],
        counters: &PolicyCounters,
    ) -> Decision {
        let creds = Credentials::from_headers(
            &head.headers,
            self.token_header.as_ref().map(HeaderName::as_str),
        );
        let uri = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let query = AuthQuery {
            username: creds.username.as_deref(),
            password: creds.password.as_deref(),
            token: creds.token.as_deref(),
            uri,
            protocol: head
                .extensions
                .get::<AuthProtocol>()
                .copied()
                .unwrap_or_default()
                .as_str(),
            method: head.method.as_str(),
            length: head
                .headers
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            client_ip,
        };
        let key = self.cache_key(&query);
        let deadline = Duration::from_millis(u64::from(self.config.timeout_ms));
        // The call inside has the same deadline; this one also bounds
        // a request that joined a call whose owner went away.
        let found = match self.cache.fresh(key) {
            Some(found) => Some(found),
            None => tokio::time::timeout(
                deadline,
                self.cache.get_or_call(key, || self.call(&query, deadline)),
            )
            .await
            .unwrap_or_else(|_| self.cache.stale(key)),
        };
        headers::strip_reserved(&mut head.headers, reserved);
        match found {
            Some((answer, _, source)) => {
                match source {
                    Source::Called => {}
                    Source::Cached => {
                        counters.auth_cached.fetch_add(1, Relaxed);
                    }
                    Source::Stale => {
                        counters.auth_error.fetch_add(1, Relaxed);
                        counters.auth_stale.fetch_add(1, Relaxed);
                    }
                }
                self.answered(&answer, head)
            }
            None => {
                counters.auth_error.fetch_add(1, Relaxed);
                self.failed(head)
            }
        }
    }

    /// The cache key: the inputs `cache_key` names, in a fixed order.
    fn cache_key(&self, q: &AuthQuery<'_>) -> CacheKey {
        let has = |p| self.config.cache_key.contains(&p);
        let credentials = has(CacheKeyPart::Credentials);
        // As 16 bytes on the stack (an IPv4 address as its mapped form).
        let ip = match q.client_ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        }
        .octets();
        self.keys.key(&[
            included(credentials, q.username),
            included(credentials, q.password),
            included(credentials, q.token),
            has(CacheKeyPart::Method).then_some(q.method.as_bytes()),
            has(CacheKeyPart::Uri).then_some(q.uri.as_bytes()),
            has(CacheKeyPart::ClientIp).then_some(ip.as_slice()),
        ])
    }

    /// One call to the service; its error is logged here, once per call
    /// (and at most once a second), never with the request's credentials.
    async fn call(
        &self,
        query: &AuthQuery<'_>,
        deadline: Duration,
    ) -> Result<(Arc<Answer>, bool), ()> {
        let result = match &self.url {
            Some(url) => self.client.ask(url, query, deadline).await,
            None => Err(AuthCallError::Unreachable("the url does not parse".into())),
        };
        let answer = result.and_then(|verdict| match verdict {
            Verdict::Allow(grant) => {
                let token = HeaderValue::from_str(&grant.auth_token).map_err(|_| {
                    AuthCallError::BadAnswer("auth_token is not a valid header value".into())
                })?;
                let caller = Caller {
                    auth_token: Some(grant.auth_token.into()),
                    groups: grant.groups,
                    upstream: grant.upstream,
                };
                Ok((Arc::new(Answer::Allow { token, caller }), true))
            }
            Verdict::Refuse(r) => Ok((Arc::new(Answer::Refuse(r)), false)),
        });
        answer.map_err(|e| {
            if let Some(left_out) = log_limit::allow("auth service", &self.url_for_log) {
                tracing::warn!(left_out, "auth service {}: {e}", self.url_for_log);
            }
        })
    }

    fn answered(&self, answer: &Answer, head: &mut request::Parts) -> Decision {
        match answer {
            Answer::Allow { token, caller } => {
                self.strip_credentials(head);
                head.headers
                    .insert(self.auth_token_header.clone(), token.clone());
                Decision::Granted(caller.clone())
            }
            Answer::Refuse(r) => Decision::Refused(headers::refusal(r)),
        }
    }

    fn failed(&self, head: &mut request::Parts) -> Decision {
        match self.config.failure {
            FailureMode::Deny => Decision::Unavailable(headers::unavailable()),
            FailureMode::Allow => {
                self.strip_credentials(head);
                head.headers
                    .insert(FAILURE_ALLOWED, HeaderValue::from_static("true"));
                Decision::FailureAllowed
            }
        }
    }

    fn strip_credentials(&self, head: &mut request::Parts) {
        if !self.config.pass_credentials {
            headers::strip_credentials(&mut head.headers, self.token_header.as_ref());
        }
    }
}

fn included(include: bool, v: Option<&str>) -> Option<&[u8]> {
    v.filter(|_| include).map(str::as_bytes)
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{Auth, AuthSpec};

    struct Plain;
    impl crate::model::policy::SecretHasher for Plain {
        fn hash(&self, s: &str) -> String {
            s.to_string()
        }
    }

    fn authorizer(json: &str) -> ServiceAuthorizer {
        let spec: AuthSpec = serde_json::from_str(json).unwrap();
        let Auth::Service(s) = spec.validate(&Plain).unwrap() else {
            panic!()
        };
        ServiceAuthorizer::new(&s)
    }

    fn query<'a>(token: &'a str, uri: &'a str, ip: &str) -> AuthQuery<'a> {
        AuthQuery {
            username: None,
            password: None,
            token: Some(token),
            uri,
            protocol: "http",
            method: "GET",
            length: None,
            client_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn the_cache_key_holds_only_the_inputs_cache_key_names() {
        let all = authorizer(r#"{"mode":"service","url":"http://127.0.0.1:1/"}"#);
        let k = |a: &ServiceAuthorizer, t, u, ip| a.cache_key(&query(t, u, ip));
        assert_eq!(
            k(&all, "t", "/a", "127.0.0.1"),
            k(&all, "t", "/a", "127.0.0.1")
        );
        assert_ne!(
            k(&all, "t", "/a", "127.0.0.1"),
            k(&all, "t", "/b", "127.0.0.1")
        );
        assert_ne!(
            k(&all, "t", "/a", "127.0.0.1"),
            k(&all, "t", "/a", "127.0.0.2")
        );
        let creds = authorizer(
            r#"{"mode":"service","url":"http://127.0.0.1:1/","cache_key":["credentials"]}"#,
        );
        assert_eq!(
            k(&creds, "t", "/a", "127.0.0.1"),
            k(&creds, "t", "/b", "127.0.0.2")
        );
        assert_ne!(
            k(&creds, "t", "/a", "127.0.0.1"),
            k(&creds, "u", "/a", "127.0.0.1")
        );
    }

    fn head(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri("/x?y=1");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[tokio::test]
    async fn a_dead_service_denies_or_allows_by_the_failure_mode() {
        // Port 1 on loopback: nothing listens, the connection is refused.
        let counters = PolicyCounters::default();
        let reserved = [HeaderName::from_static("x-auth-token"), FAILURE_ALLOWED];
        let deny = authorizer(r#"{"mode":"service","url":"http://127.0.0.1:1/"}"#);
        let mut h = head(&[("authorization", "Bearer t"), ("x-auth-token", "forged")]);
        let d = deny.decide(&mut h, [127, 0, 0, 1].into(), &reserved, &counters);
        let Decision::Unavailable(resp) = d.await else {
            panic!("deny answers 503")
        };
        assert_eq!(resp.status(), 503);
        let allow =
            authorizer(r#"{"mode":"service","url":"http://127.0.0.1:1/","failure":"allow"}"#);
        let mut h = head(&[("authorization", "Bearer t"), ("x-auth-token", "forged")]);
        let d = allow.decide(&mut h, [127, 0, 0, 1].into(), &reserved, &counters);
        assert!(matches!(d.await, Decision::FailureAllowed));
        assert_eq!(h.headers[FAILURE_ALLOWED], "true");
        assert!(!h.headers.contains_key("x-auth-token"), "forged token kept");
        assert!(!h.headers.contains_key("authorization"));
        assert_eq!(counters.auth_error.load(Relaxed), 2);
    }

    #[tokio::test]
    async fn a_silent_service_fails_within_the_timeout() {
        // Accepts, reads, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let a = authorizer(&format!(
            r#"{{"mode":"service","url":"http://{addr}/","timeout_ms":150}}"#
        ));
        let counters = PolicyCounters::default();
        let start = tokio::time::Instant::now();
        let mut h = head(&[]);
        let d = a
            .decide(&mut h, [127, 0, 0, 1].into(), &[], &counters)
            .await;
        assert!(matches!(d, Decision::Unavailable(_)));
        assert!(start.elapsed() < Duration::from_millis(1000), "hung");
        hold.abort();
    }
}
