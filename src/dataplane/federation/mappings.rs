//! The node's federation mappings, kept across configs: lbd's set (from
//! the config or `PUT /mappings`), what this node learned since (until
//! lbd's set holds it), the misses, and the injected token mappings. All
//! lookups are in memory: no request waits on lbd.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::model::federation::{NodeMappings, ResourceKey};

use super::tokens::{RemoteToken, TokenKey};

/// Where a resource's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The provider named by a mapping.
    Mapped(String),
    /// No provider had it, within `negative_ttl_s`.
    Missing,
    /// Never seen (or the miss expired): search.
    Unknown,
}

/// The misses kept at most; past it the oldest half goes (a scan of ids
/// that do not exist must not grow the node without bound).
const MAX_MISSES: usize = 100_000;

#[derive(Default)]
struct Table {
    pushed: HashMap<ResourceKey, String>,
    learned: HashMap<ResourceKey, String>,
    misses: HashMap<ResourceKey, Instant>,
    tokens: HashMap<TokenKey, RemoteToken>,
}

#[derive(Default)]
pub struct Mappings {
    table: RwLock<Table>,
    /// The version in force + 1 (0: none yet), for `/status` without a lock.
    version: AtomicU64,
}

impl Mappings {
    /// Takes lbd's whole set, unless it is older than the one in force
    /// (two pushes may cross). What this node learned and lbd's set now
    /// holds is dropped from the learned overlay, so a later set without
    /// it removes it. `false`: an older set, ignored.
    pub fn apply(&self, m: &NodeMappings) -> bool {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        let current = self.version.load(Relaxed);
        if current > 0 && m.version < current - 1 {
            return false;
        }
        t.pushed = m
            .resources
            .iter()
            .map(|r| (r.key.clone(), r.provider.clone()))
            .collect();
        let Table {
            pushed,
            learned,
            misses,
            ..
        } = &mut *t;
        learned.retain(|k, p| pushed.get(k) != Some(p));
        misses.retain(|k, _| !pushed.contains_key(k));
        t.tokens = m
            .tokens
            .iter()
            .map(|tm| {
                (
                    TokenKey {
                        token_sha256: tm.local_token_sha256.to_ascii_lowercase(),
                        local_project: tm.local_project.clone(),
                        provider: tm.provider.clone(),
                    },
                    RemoteToken {
                        token: tm.remote_token.clone(),
                        project: tm.remote_project.clone(),
                        expires_at: tm.expires_at,
                    },
                )
            })
            .collect();
        self.version.store(m.version + 1, Relaxed);
        true
    }

    pub fn version(&self) -> Option<u64> {
        self.version.load(Relaxed).checked_sub(1)
    }

    pub fn lookup(&self, key: &ResourceKey, now: Instant) -> Lookup {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = t.learned.get(key).or_else(|| t.pushed.get(key)) {
            return Lookup::Mapped(p.clone());
        }
        match t.misses.get(key) {
            Some(until) if *until > now => Lookup::Missing,
            _ => Lookup::Unknown,
        }
    }

    /// Records where a resource lives; `true` when that is news (so lbd
    /// is told once, not on every list that shows it again).
    pub fn learn(&self, key: &ResourceKey, provider: &str) -> bool {
        {
            let t = self.table.read().unwrap_or_else(|p| p.into_inner());
            let known = t.learned.get(key).or_else(|| t.pushed.get(key));
            if known.map(String::as_str) == Some(provider) {
                return false;
            }
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        t.misses.remove(key);
        t.learned.insert(key.clone(), provider.to_string());
        true
    }

    /// A provider deleted the resource: no mapping routes it any more.
    pub fn forget(&self, key: &ResourceKey) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        t.learned.remove(key);
        t.pushed.remove(key);
    }

    /// No provider had it: answered 404 without a search for `ttl`.
    pub fn miss(&self, key: &ResourceKey, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        if t.misses.len() >= MAX_MISSES {
            t.misses.retain(|_, until| *until > now);
            if t.misses.len() >= MAX_MISSES {
                t.misses.clear();
            }
        }
        t.misses.insert(key.clone(), now + ttl);
    }

    /// An injected token mapping, if one is in force (not expired).
    pub fn injected_token(&self, key: &TokenKey, now_unix: u64) -> Option<RemoteToken> {
        let t = self.table.read().unwrap_or_else(|p| p.into_inner());
        t.tokens.get(key).filter(|r| r.valid_at(now_unix)).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::federation::{NodeTokenMapping, ResourceMapping};

    fn key(id: &str) -> ResourceKey {
        ResourceKey {
            resource_type: "volumes".into(),
            id: id.into(),
        }
    }

    fn set(version: u64, mapped: &[(&str, &str)]) -> NodeMappings {
        NodeMappings {
            version,
            resources: mapped
                .iter()
                .map(|(id, p)| ResourceMapping {
                    key: key(id),
                    provider: p.to_string(),
                })
                .collect(),
            tokens: vec![],
        }
    }

    #[test]
    fn a_learned_mapping_stays_until_lbd_has_it_then_follows_lbd() {
        let m = Mappings::default();
        let now = Instant::now();
        assert_eq!(m.lookup(&key("v1"), now), Lookup::Unknown);
        assert!(m.learn(&key("v1"), "sp2"));
        assert!(!m.learn(&key("v1"), "sp2"), "known: not news");
        assert!(m.apply(&set(1, &[])));
        assert_eq!(m.lookup(&key("v1"), now), Lookup::Mapped("sp2".into()));
        assert!(m.apply(&set(2, &[("v1", "sp2")])));
        assert!(m.apply(&set(3, &[])));
        assert_eq!(m.lookup(&key("v1"), now), Lookup::Unknown);
        assert!(
            !m.apply(&set(2, &[("v1", "sp2")])),
            "an older set is ignored"
        );
        assert_eq!(m.version(), Some(3));
    }

    #[test]
    fn misses_expire_and_a_mapping_clears_them() {
        let m = Mappings::default();
        let now = Instant::now();
        m.miss(&key("x"), Duration::from_secs(30), now);
        assert_eq!(m.lookup(&key("x"), now), Lookup::Missing);
        assert_eq!(
            m.lookup(&key("x"), now + Duration::from_secs(31)),
            Lookup::Unknown
        );
        m.miss(&key("x"), Duration::ZERO, now);
        m.learn(&key("x"), "sp1");
        assert_eq!(m.lookup(&key("x"), now), Lookup::Mapped("sp1".into()));
        m.forget(&key("x"));
        assert_eq!(m.lookup(&key("x"), now), Lookup::Unknown);
    }

    #[test]
    fn injected_tokens_are_found_by_hash_and_expire() {
        let m = Mappings::default();
        m.apply(&NodeMappings {
            version: 1,
            resources: vec![],
            tokens: vec![NodeTokenMapping {
                local_token_sha256: "AB".into(),
                local_project: "alice".into(),
                provider: "sp1".into(),
                remote_token: "r".into(),
                remote_project: "rp".into(),
                expires_at: Some(100),
            }],
        });
        let k = TokenKey {
            token_sha256: "ab".into(),
            local_project: "alice".into(),
            provider: "sp1".into(),
        };
        assert_eq!(m.injected_token(&k, 99).unwrap().project, "rp");
        assert!(m.injected_token(&k, 100).is_none());
    }
}
