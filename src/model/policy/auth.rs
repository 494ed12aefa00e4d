//! Authorization of an http instance: by an auth service (seed 001), by
//! HTTP Basic users or by API keys, each naming the caller's groups.
//! Passwords and keys are hashed by the controller before they are stored
//! ([`SecretHasher`]); the node verifies against the hash.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{check_header_name, check_policy_name, PolicyError};

pub const DEFAULT_AUTH_TIMEOUT_MS: u32 = 200;
pub const DEFAULT_CACHE_TTL_S: u32 = 30;
pub const DEFAULT_NEGATIVE_TTL_S: u32 = 5;
pub const DEFAULT_AUTH_TOKEN_HEADER: &str = "x-auth-token";
/// The most users or keys one auth object lists.
pub const MAX_CREDENTIALS: usize = 1024;
/// The most passwords and keys one request may carry: each costs an argon2
/// hash (tens of ms of CPU) before validation, so this bounds the work one
/// request can ask for.
pub const MAX_SECRETS_PER_REQUEST: usize = 1024;

/// Turns a password or key into what is stored (argon2 in lbd); injected
/// so the model stays free of slow work and I/O.
pub trait SecretHasher {
    fn hash(&self, secret: &str) -> String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    Service,
    Basic,
    ApiKey,
}

/// What a failing auth service means for the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// 503 within `timeout_ms`.
    #[default]
    Deny,
    /// Passes, with `X-Auth-Failure-Mode-Allowed: true`.
    Allow,
}

/// An input of an auth decision, which can be left out of the cache key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum CacheKeyPart {
    Credentials,
    Method,
    Uri,
    ClientIp,
}

/// A Basic user or an API key as a client writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub name: String,
    /// The password (`basic`); never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The key (`api_key`); never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `auth` as a client writes it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthSpec {
    pub mode: Option<AuthMode>,
    // service
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// Where the client's token is, besides `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_header: Option<String>,
    /// The header carrying the service's `auth_token` upstream (`X-Auth-Token`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_token_header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub negative_ttl_s: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<Vec<CacheKeyPart>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_on_error_s: Option<i64>,
    // basic
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<CredentialSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    // api_key
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<CredentialSpec>>,
}

/// A rule's `auth`: `"none"` (a public path) or its own auth object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RuleAuthSpec {
    None(NoAuth),
    Own(Box<AuthSpec>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NoAuth {
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceAuth {
    pub url: String,
    pub timeout_ms: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_header: Option<String>,
    pub auth_token_header: String,
    pub pass_credentials: bool,
    pub cache_ttl_s: u32,
    pub negative_ttl_s: u32,
    pub cache_key: Vec<CacheKeyPart>,
    pub failure: FailureMode,
    pub stale_on_error_s: u32,
}

/// A stored credential: the hash only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub name: String,
    pub hash: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// A validated auth object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Auth {
    Service(ServiceAuth),
    Basic {
        realm: String,
        users: Vec<Credential>,
    },
    ApiKey {
        header: String,
        keys: Vec<Credential>,
    },
}

impl AuthSpec {
    pub fn validate(&self, hasher: &dyn SecretHasher) -> Result<Auth, PolicyError> {
        self.validate_keeping(hasher, None)
    }

    /// Validates, keeping the stored hash of each user or key given without
    /// its secret whose name `previous` (the auth stored at the same place)
    /// lists in the same mode: so a client can send back what `info` shows,
    /// and change groups without resending secrets.
    pub fn validate_keeping(
        &self,
        hasher: &dyn SecretHasher,
        previous: Option<&Auth>,
    ) -> Result<Auth, PolicyError> {
        let mode = self
            .mode
            .ok_or_else(|| invalid("`mode` is service, basic or api_key"))?;
        let given = |present: bool, field: &str, modes: &str| {
            if present {
                Err(invalid(&format!("`{field}` goes with mode {modes}")))
            } else {
                Ok(())
            }
        };
        let service_fields = self.url.is_some()
            || self.timeout_ms.is_some()
            || self.token_header.is_some()
            || self.auth_token_header.is_some()
            || self.pass_credentials.is_some()
            || self.cache_ttl_s.is_some()
            || self.negative_ttl_s.is_some()
            || self.cache_key.is_some()
            || self.failure.is_some()
            || self.stale_on_error_s.is_some();
        match mode {
            AuthMode::Service => {
                given(
                    self.users.is_some() || self.realm.is_some(),
                    "users/realm",
                    "basic",
                )?;
                given(
                    self.keys.is_some() || self.header.is_some(),
                    "keys/header",
                    "api_key",
                )?;
                Ok(Auth::Service(self.service()?))
            }
            AuthMode::Basic => {
                given(service_fields, "url and the cache settings", "service")?;
                given(
                    self.keys.is_some() || self.header.is_some(),
                    "keys/header",
                    "api_key",
                )?;
                let realm = self.realm.clone().unwrap_or_else(|| "lbaas".into());
                if realm
                    .bytes()
                    .any(|b| b == b'"' || b == b'\\' || b.is_ascii_control())
                {
                    return Err(invalid(
                        "realm may not hold quotes, backslashes or control characters",
                    ));
                }
                let kept = match previous {
                    Some(Auth::Basic { users, .. }) => users.as_slice(),
                    _ => &[],
                };
                let users = credentials(self.users.as_deref(), Secret::Password, hasher, kept)?;
                Ok(Auth::Basic { realm, users })
            }
            AuthMode::ApiKey => {
                given(service_fields, "url and the cache settings", "service")?;
                given(
                    self.users.is_some() || self.realm.is_some(),
                    "users/realm",
                    "basic",
                )?;
                let header = self.header.clone().unwrap_or_else(|| "x-api-key".into());
                check_header_name(&header)?;
                let kept = match previous {
                    Some(Auth::ApiKey { keys, .. }) => keys.as_slice(),
                    _ => &[],
                };
                let keys = credentials(self.keys.as_deref(), Secret::Key, hasher, kept)?;
                Ok(Auth::ApiKey {
                    header: header.to_ascii_lowercase(),
                    keys,
                })
            }
        }
    }

    fn service(&self) -> Result<ServiceAuth, PolicyError> {
        let url = self
            .url
            .clone()
            .ok_or_else(|| invalid("mode service needs `url`"))?;
        check_auth_url(&url)?;
        let seconds = |v: Option<i64>, default: u32, field: &str| match v {
            None => Ok(default),
            Some(s @ 0..=86_400) => Ok(s as u32),
            Some(s) => Err(invalid(&format!("`{field}` is 0-86400 seconds, got {s}"))),
        };
        let timeout_ms = match self.timeout_ms {
            None => DEFAULT_AUTH_TIMEOUT_MS,
            Some(ms @ 1..=60_000) => ms as u32,
            Some(ms) => return Err(invalid(&format!("`timeout_ms` is 1-60000, got {ms}"))),
        };
        for h in self.token_header.iter().chain(&self.auth_token_header) {
            check_header_name(h)?;
        }
        let mut cache_key = self.cache_key.clone().unwrap_or_else(|| {
            vec![
                CacheKeyPart::Credentials,
                CacheKeyPart::Method,
                CacheKeyPart::Uri,
                CacheKeyPart::ClientIp,
            ]
        });
        cache_key.sort();
        cache_key.dedup();
        Ok(ServiceAuth {
            url,
            timeout_ms,
            token_header: self.token_header.as_ref().map(|h| h.to_ascii_lowercase()),
            auth_token_header: self
                .auth_token_header
                .as_ref()
                .map_or(DEFAULT_AUTH_TOKEN_HEADER.into(), |h| h.to_ascii_lowercase()),
            pass_credentials: self.pass_credentials.unwrap_or(false),
            cache_ttl_s: seconds(self.cache_ttl_s, DEFAULT_CACHE_TTL_S, "cache_ttl_s")?,
            negative_ttl_s: seconds(
                self.negative_ttl_s,
                DEFAULT_NEGATIVE_TTL_S,
                "negative_ttl_s",
            )?,
            cache_key,
            failure: self.failure.unwrap_or_default(),
            stale_on_error_s: seconds(self.stale_on_error_s, 0, "stale_on_error_s")?,
        })
    }
}

impl AuthSpec {
    /// The passwords and keys this object carries, to be hashed before
    /// validation (hashing is slow; see `password.rs`).
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        let users = self
            .users
            .iter()
            .flatten()
            .filter_map(|c| c.password.as_deref());
        let keys = self.keys.iter().flatten().filter_map(|c| c.key.as_deref());
        users.chain(keys)
    }
}

impl RuleAuthSpec {
    pub fn own(&self) -> Option<&AuthSpec> {
        match self {
            Self::None(_) => None,
            Self::Own(a) => Some(a),
        }
    }
}

#[derive(Clone, Copy)]
enum Secret {
    Password,
    Key,
}

fn credentials(
    list: Option<&[CredentialSpec]>,
    secret: Secret,
    hasher: &dyn SecretHasher,
    kept: &[Credential],
) -> Result<Vec<Credential>, PolicyError> {
    let (field, what) = match secret {
        Secret::Password => ("users", "password"),
        Secret::Key => ("keys", "key"),
    };
    let list = list
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid(&format!("`{field}` lists at least one entry")))?;
    if list.len() > MAX_CREDENTIALS {
        return Err(invalid(&format!(
            "`{field}` lists at most {MAX_CREDENTIALS} entries"
        )));
    }
    let mut seen = std::collections::HashSet::new();
    list.iter()
        .map(|c| {
            check_policy_name("user", &c.name)?;
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(&format!("{field}: {:?} is listed twice", c.name)));
            }
            let (value, other) = match secret {
                Secret::Password => (&c.password, &c.key),
                Secret::Key => (&c.key, &c.password),
            };
            if other.is_some() {
                return Err(invalid(&format!(
                    "{field}: {:?} takes a {what} only",
                    c.name
                )));
            }
            for g in &c.groups {
                check_policy_name("group", g)?;
            }
            let stored = kept.iter().find(|k| k.name == c.name);
            let hash = match (value.as_deref(), stored) {
                (None, Some(stored)) => stored.hash.clone(),
                (Some(v), _) if v.len() >= 8 => hasher.hash(v),
                _ => {
                    return Err(invalid(&format!(
                        "{field}: {:?} needs a {what} of at least 8 characters",
                        c.name
                    )))
                }
            };
            Ok(Credential {
                name: c.name.clone(),
                hash,
                groups: c.groups.clone(),
            })
        })
        .collect()
}

fn check_auth_url(url: &str) -> Result<(), PolicyError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| PolicyError::InvalidAuthUrl(url.to_string()))?;
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty()
        || url.bytes().any(|b| b.is_ascii_control() || b == b' ')
        || host.contains('@')
    {
        return Err(PolicyError::InvalidAuthUrl(url.to_string()));
    }
    Ok(())
}

fn invalid(reason: &str) -> PolicyError {
    PolicyError::InvalidAuth(reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reverse;
    impl SecretHasher for Reverse {
        fn hash(&self, s: &str) -> String {
            format!("h:{}", s.chars().rev().collect::<String>())
        }
    }

    fn auth(json: &str) -> Result<Auth, PolicyError> {
        serde_json::from_str::<AuthSpec>(json)
            .unwrap()
            .validate(&Reverse)
    }

    #[test]
    fn service_auth_takes_the_defaults() {
        let Auth::Service(s) =
            auth(r#"{"mode":"service","url":"http://127.0.0.1:9/auth"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.timeout_ms, 200);
        assert_eq!(s.cache_ttl_s, 30);
        assert_eq!(s.negative_ttl_s, 5);
        assert_eq!(s.failure, FailureMode::Deny);
        assert_eq!(s.auth_token_header, "x-auth-token");
        assert_eq!(s.cache_key.len(), 4);
    }

    #[test]
    fn only_http_urls_and_fields_of_the_mode_are_accepted() {
        let code = |j: &str| auth(j).unwrap_err().code();
        assert_eq!(
            code(r#"{"mode":"service","url":"ftp://x/"}"#),
            "invalid_auth_url"
        );
        assert_eq!(
            code(r#"{"mode":"service","url":"http:///x"}"#),
            "invalid_auth_url"
        );
        assert_eq!(code(r#"{"mode":"service"}"#), "invalid_auth");
        assert_eq!(
            code(r#"{"mode":"basic","url":"http://x/","users":[]}"#),
            "invalid_auth"
        );
        assert_eq!(
            code(r#"{"mode":"basic","users":[{"name":"a","password":"short"}]}"#),
            "invalid_auth"
        );
        assert_eq!(
            code(r#"{"mode":"service","url":"http://x/","timeout_ms":0}"#),
            "invalid_auth"
        );
    }

    #[test]
    fn passwords_and_keys_are_stored_hashed_only() {
        let a = auth(
            r#"{"mode":"basic","users":[{"name":"ann","password":"secret-pw","groups":["ops"]}]}"#,
        )
        .unwrap();
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("secret-pw"), "{json}");
        assert!(json.contains("h:wp-terces"), "{json}");
        let k = auth(r#"{"mode":"api_key","keys":[{"name":"ci","key":"k-123456789"}]}"#).unwrap();
        assert!(!serde_json::to_string(&k).unwrap().contains("k-123456789"));
    }

    #[test]
    fn a_credential_without_its_secret_keeps_the_stored_hash_by_name() {
        let stored = auth(
            r#"{"mode":"basic","users":[{"name":"ann","password":"secret-pw"},{"name":"bob","password":"bobs-pass"}]}"#,
        )
        .unwrap();
        let spec: AuthSpec = serde_json::from_str(
            r#"{"mode":"basic","users":[{"name":"ann","groups":["ops"]},{"name":"bob","password":"new-password"}]}"#,
        )
        .unwrap();
        let Auth::Basic { users, .. } = spec.validate_keeping(&Reverse, Some(&stored)).unwrap()
        else {
            panic!()
        };
        assert_eq!(users[0].hash, "h:wp-terces");
        assert_eq!(users[0].groups, ["ops"]);
        assert_eq!(users[1].hash, "h:drowssap-wen");
        // A new name, or another mode at that place, needs its secret.
        let new: AuthSpec =
            serde_json::from_str(r#"{"mode":"basic","users":[{"name":"cid"}]}"#).unwrap();
        assert_eq!(
            new.validate_keeping(&Reverse, Some(&stored))
                .unwrap_err()
                .code(),
            "invalid_auth"
        );
        let keys: AuthSpec =
            serde_json::from_str(r#"{"mode":"api_key","keys":[{"name":"ann"}]}"#).unwrap();
        assert_eq!(
            keys.validate_keeping(&Reverse, Some(&stored))
                .unwrap_err()
                .code(),
            "invalid_auth"
        );
        assert_eq!(spec.secrets().collect::<Vec<_>>(), ["new-password"]);
    }

    #[test]
    fn a_rule_may_say_none() {
        let r: RuleAuthSpec = serde_json::from_str(r#""none""#).unwrap();
        assert_eq!(r, RuleAuthSpec::None(NoAuth::None));
        assert!(serde_json::from_str::<RuleAuthSpec>(r#""nobody""#).is_err());
    }
}
