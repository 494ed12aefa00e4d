//! Token mapping: the client's token and project become the chosen
//! provider's own. Injected mappings (from lbd) come first; otherwise the
//! provider's `token_url` is asked once per (token, project) and the
//! answer kept until it expires. Without a `token_url` the token passes
//! unchanged. Tokens are secrets: they are never logged, and the cache is
//! keyed by the token's SHA-256.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::mappings::Mappings;
use crate::dataplane::auth::service::AuthClient;

/// How long an exchanged token without `expires_at` is kept.
const DEFAULT_EXCHANGED_TTL_S: u64 = 3600;
/// The exchanged tokens kept at most; past it the expired go, then all.
const MAX_EXCHANGED: usize = 50_000;
/// The most a token exchange may take.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// Which mapping: the local token's SHA-256 (lowercase hex), the local
/// project and the provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub token_sha256: String,
    pub local_project: String,
    pub provider: String,
}

impl TokenKey {
    pub fn new(token: &str, local_project: &str, provider: &str) -> Self {
        TokenKey {
            token_sha256: sha256_hex(token),
            local_project: local_project.to_string(),
            provider: provider.to_string(),
        }
    }
}

pub fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The provider's token and project for a client's.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteToken {
    pub token: String,
    pub project: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl std::fmt::Debug for RemoteToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteToken")
            .field("token", &"<secret>")
            .field("project", &self.project)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl RemoteToken {
    pub fn valid_at(&self, now_unix: u64) -> bool {
        self.expires_at.is_none_or(|e| now_unix < e)
    }
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Serialize)]
struct ExchangeQuery<'a> {
    token: &'a str,
    project: &'a str,
}

/// One slot per key: concurrent requests with the same token wait for
/// one exchange instead of each making their own.
type Slot = Arc<tokio::sync::Mutex<Option<RemoteToken>>>;

/// The exchanged tokens of this node, kept across configs.
#[derive(Default)]
pub struct TokenExchange {
    slots: Mutex<HashMap<TokenKey, Slot>>,
    client: std::sync::OnceLock<AuthClient>,
}

impl TokenExchange {
    fn slot(&self, key: &TokenKey, now_unix: u64) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.len() >= MAX_EXCHANGED && !slots.contains_key(key) {
            slots.retain(|_, s| {
                s.try_lock()
                    .map_or(true, |t| t.as_ref().is_some_and(|t| t.valid_at(now_unix)))
            });
            if slots.len() >= MAX_EXCHANGED {
                slots.clear();
            }
        }
        slots.entry(key.clone()).or_default().clone()
    }

    /// The remote token for `token` and `project` at `provider`: injected,
    /// cached, or asked of `token_url`. `Ok(None)`: pass it unchanged.
    pub async fn remote(
        &self,
        mappings: &Mappings,
        provider: &str,
        token_url: Option<&Uri>,
        token: &str,
        project: &str,
    ) -> Result<Option<RemoteToken>, String> {
        let key = TokenKey::new(token, project, provider);
        let now = now_unix();
        if let Some(injected) = mappings.injected_token(&key, now) {
            return Ok(Some(injected));
        }
        let Some(url) = token_url else {
            return Ok(None);
        };
        let slot = self.slot(&key, now);
        let mut held = slot.lock().await;
        if let Some(t) = held.as_ref().filter(|t| t.valid_at(now_unix())) {
            return Ok(Some(t.clone()));
        }
        let fresh = self.exchange(url, token, project).await?;
        *held = Some(fresh.clone());
        Ok(Some(fresh))
    }

    async fn exchange(&self, url: &Uri, token: &str, project: &str) -> Result<RemoteToken, String> {
        let client = self.client.get_or_init(AuthClient::default);
        let body = serde_json::to_vec(&ExchangeQuery { token, project })
            .expect("a token query always serializes");
        let (status, _, answer) = client
            .post_json(url, body, EXCHANGE_DEADLINE)
            .await
            .map_err(|e| format!("token exchange at {url}: {e}"))?;
        if !status.is_success() {
            return Err(format!("token exchange at {url} answered {status}"));
        }
        parse_exchange(&answer, now_unix()).map_err(|e| format!("token exchange at {url}: {e}"))
    }
}

/// Reads `{"token", "project", "expires_at"?}`; without `expires_at` the
/// answer is kept for an hour. The error never quotes the answer.
fn parse_exchange(answer: &[u8], now_unix: u64) -> Result<RemoteToken, String> {
    let mut t: RemoteToken = serde_json::from_slice(answer).map_err(|e| {
        format!(
            "unreadable answer ({:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    if t.token.is_empty() || t.token.contains(['\r', '\n']) {
        return Err("the answer's token is empty or not a header value".into());
    }
    t.expires_at = Some(t.expires_at.unwrap_or(now_unix + DEFAULT_EXCHANGED_TTL_S));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_answer_is_read_and_gets_a_lifetime() {
        let t = parse_exchange(br#"{"token":"r","project":"p"}"#, 10).unwrap();
        assert_eq!(t.expires_at, Some(10 + DEFAULT_EXCHANGED_TTL_S));
        assert!(t.valid_at(11) && !t.valid_at(10 + DEFAULT_EXCHANGED_TTL_S));
        let t = parse_exchange(br#"{"token":"r","project":"p","expires_at":50}"#, 10).unwrap();
        assert_eq!(t.expires_at, Some(50));
        let err = parse_exchange(br#"{"token":"secret-xyz"}"#, 10).unwrap_err();
        assert!(!err.contains("secret-xyz"), "{err}");
        assert!(parse_exchange(br#"{"token":"a\nb","project":"p"}"#, 10).is_err());
    }

    #[test]
    fn keys_hold_the_hash_not_the_token() {
        let k = TokenKey::new("tok", "alice", "sp1");
        assert_eq!(k.token_sha256.len(), 64);
        assert!(!format!("{k:?}").contains("\"tok\""));
        let r = RemoteToken {
            token: "hidden".into(),
            project: "p".into(),
            expires_at: None,
        };
        assert!(!format!("{r:?}").contains("hidden"));
    }

    #[tokio::test]
    async fn without_a_token_url_or_mapping_the_token_passes() {
        let x = TokenExchange::default();
        let m = Mappings::default();
        assert_eq!(x.remote(&m, "sp1", None, "t", "p").await.unwrap(), None);
    }
}
