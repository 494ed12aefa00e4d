//! `auth.mode: basic` and `auth.mode: api_key` for one auth object: the
//! client's password or key checked against the argon2 hashes the
//! controller stored. Verification is slow on purpose, so it runs on
//! `spawn_blocking` (never on the runtime), a node-wide semaphore bounds
//! how many run at once (each takes 19 MiB), and its outcome is cached
//! under a keyed hash of what the client sent: a kept-alive client pays
//! argon2 once, not per request.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::request;
use tokio::sync::Semaphore;

use super::cache::{CachePolicy, DecisionCache, Source};
use super::headers;
use super::key::KeyHasher;
use super::service::Credentials;
use super::stage::{Caller, Decision};
use crate::dataplane::stats::PolicyCounters;
use crate::model::policy::auth::Credential;

/// Verifications running at once on the whole node.
static VERIFICATIONS: Semaphore = Semaphore::const_new(4);

/// How long outcomes are kept. Credentials cannot change under a config
/// (a changed hash is another auth object with a fresh cache), so these
/// only turn the memory over.
const VERIFIED_TTL: Duration = Duration::from_secs(600);
const REFUSED_TTL: Duration = Duration::from_secs(60);
const MAX_VERIFIED: usize = 10_000;

enum Kind {
    /// `WWW-Authenticate: Basic realm="<realm>"`.
    Basic { challenge: HeaderValue },
    ApiKey {
        header: HeaderName,
        challenge: HeaderValue,
    },
}

pub struct SecretAuthorizer {
    kind: Kind,
    credentials: Arc<[Credential]>,
    /// The index of the credential that matched, or `None`.
    verified: DecisionCache<Option<usize>>,
    keys: KeyHasher,
}

impl SecretAuthorizer {
    pub fn basic(realm: &str, users: &[Credential]) -> SecretAuthorizer {
        let challenge = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
            .unwrap_or(HeaderValue::from_static("Basic realm=\"lbaas\""));
        SecretAuthorizer::new(Kind::Basic { challenge }, users)
    }

    pub fn api_key(header: &str, keys: &[Credential]) -> SecretAuthorizer {
        let header = HeaderName::from_bytes(header.as_bytes())
            .unwrap_or(HeaderName::from_static("x-api-key"));
        let challenge = HeaderValue::from_str(&format!("ApiKey header=\"{header}\""))
            .unwrap_or(HeaderValue::from_static("ApiKey"));
        SecretAuthorizer::new(Kind::ApiKey { header, challenge }, keys)
    }

    fn new(kind: Kind, credentials: &[Credential]) -> SecretAuthorizer {
        SecretAuthorizer {
            kind,
            credentials: credentials.into(),
            verified: DecisionCache::new(CachePolicy {
                positive: VERIFIED_TTL,
                negative: REFUSED_TTL,
                stale_on_error: Duration::ZERO,
                max_entries: MAX_VERIFIED,
            }),
            keys: KeyHasher::random(),
        }
    }

    pub async fn decide(
        &self,
        head: &mut request::Parts,
        reserved: &[HeaderName],
        counters: &PolicyCounters,
    ) -> Decision {
        let Some(presented) = self.presented(head) else {
            return Decision::Refused(headers::challenge(self.challenge()));
        };
        let key = match &presented {
            Presented::User { name, password } => self
                .keys
                .key(&[Some(name.as_bytes()), Some(password.as_bytes())]),
            Presented::Key(k) => self.keys.key(&[Some(k.as_bytes())]),
        };
        let found = self
            .verified
            .get_or_call(key, || self.verify(presented))
            .await;
        let Some((matched, _, source)) = found else {
            // The blocking verification itself failed (a panic): nobody is let in.
            return Decision::Unavailable(headers::unavailable());
        };
        if source == Source::Cached {
            counters.auth_cached.fetch_add(1, Relaxed);
        }
        let Some(entry) = matched.and_then(|i| self.credentials.get(i)) else {
            return Decision::Refused(headers::challenge(self.challenge()));
        };
        headers::strip_reserved(&mut head.headers, reserved);
        match &self.kind {
            Kind::Basic { .. } => headers::strip_credentials(&mut head.headers, None),
            Kind::ApiKey { header, .. } => {
                head.headers.remove(header);
            }
        }
        Decision::Granted(Caller {
            auth_token: Some(entry.name.as_str().into()),
            groups: entry.groups.clone(),
            upstream: Vec::new(),
        })
    }

    fn challenge(&self) -> &HeaderValue {
        match &self.kind {
            Kind::Basic { challenge } | Kind::ApiKey { challenge, .. } => challenge,
        }
    }

    fn presented(&self, head: &request::Parts) -> Option<Presented> {
        match &self.kind {
            Kind::Basic { .. } => {
                let c = Credentials::from_headers(&head.headers, None);
                Some(Presented::User {
                    name: c.username?,
                    password: c.password?,
                })
            }
            Kind::ApiKey { header, .. } => head
                .headers
                .get(header)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(|v| Presented::Key(v.to_string())),
        }
    }

    /// Which credential `presented` matches, verified off the runtime.
    async fn verify(&self, presented: Presented) -> Result<(Option<usize>, bool), ()> {
        let credentials = self.credentials.clone();
        let _permit = VERIFICATIONS.acquire().await.map_err(drop)?;
        let matched = tokio::task::spawn_blocking(move || matching(&credentials, &presented))
            .await
            .map_err(drop)?;
        Ok((matched, matched.is_some()))
    }
}

/// What the client sent.
enum Presented {
    User { name: String, password: String },
    Key(String),
}

/// Blocking: argon2 verification. An unknown user is still verified
/// (against another user's hash, the result thrown away) so that the
/// answer's timing does not tell which user names exist.
fn matching(credentials: &[Credential], presented: &Presented) -> Option<usize> {
    match presented {
        Presented::User { name, password } => {
            match credentials.iter().position(|c| c.name == *name) {
                Some(i) => crate::password::verify(&credentials[i].hash, password).then_some(i),
                None => {
                    if let Some(c) = credentials.first() {
                        let _ = crate::password::verify(&c.hash, password);
                    }
                    None
                }
            }
        }
        // Salted hashes cannot be looked up: each key is tried in turn. The
        // cache makes that a once-per-key cost.
        Presented::Key(key) => credentials
            .iter()
            .position(|c| crate::password::verify(&c.hash, key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::SecretHasher;
    use crate::password::Argon2Hasher;
    use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};

    fn cred(name: &str, secret: &str, groups: &[&str]) -> Credential {
        Credential {
            name: name.into(),
            hash: Argon2Hasher.hash(secret),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn head(pairs: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::builder().uri("/");
        for (n, v) in pairs {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn basic(user: &str, pass: &str) -> String {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        format!("Basic {b}")
    }

    #[tokio::test]
    async fn basic_users_are_verified_once_then_served_from_the_cache() {
        let a = SecretAuthorizer::basic("shop", &[cred("ann", "ann-password", &["ops"])]);
        let counters = PolicyCounters::default();
        for round in 0..2 {
            let mut h = head(&[("authorization", &basic("ann", "ann-password"))]);
            let Decision::Granted(c) = a.decide(&mut h, &[], &counters).await else {
                panic!("ann is let in")
            };
            assert_eq!(c.groups, ["ops"]);
            assert_eq!(c.auth_token.as_deref(), Some("ann"));
            assert!(!h.headers.contains_key(AUTHORIZATION), "password forwarded");
            assert_eq!(counters.auth_cached.load(Relaxed), round);
        }
        for bad in [basic("ann", "wrong-password"), basic("bob", "ann-password")] {
            let mut h = head(&[("authorization", &bad)]);
            let Decision::Refused(r) = a.decide(&mut h, &[], &counters).await else {
                panic!("refused")
            };
            assert_eq!(r.status(), 401);
            assert_eq!(r.headers()[WWW_AUTHENTICATE], "Basic realm=\"shop\"");
        }
        let mut h = head(&[]);
        assert!(matches!(
            a.decide(&mut h, &[], &counters).await,
            Decision::Refused(_)
        ));
    }

    #[tokio::test]
    async fn api_keys_name_their_entry_and_are_removed_toward_the_backend() {
        let a = SecretAuthorizer::api_key(
            "x-api-key",
            &[
                cred("ci", "key-of-ci-0001", &["deploy"]),
                cred("ro", "key-of-ro-0002", &[]),
            ],
        );
        let counters = PolicyCounters::default();
        let mut h = head(&[("x-api-key", "key-of-ro-0002")]);
        let Decision::Granted(c) = a.decide(&mut h, &[], &counters).await else {
            panic!()
        };
        assert_eq!(c.auth_token.as_deref(), Some("ro"));
        assert!(!h.headers.contains_key("x-api-key"));
        for pairs in [vec![("x-api-key", "not-a-key-at-all")], vec![]] {
            let mut h = head(&pairs);
            let Decision::Refused(r) = a.decide(&mut h, &[], &counters).await else {
                panic!()
            };
            assert_eq!(r.status(), 401);
        }
    }
}
