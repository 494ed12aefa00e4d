//! The sticky stage, at member pick: a pool's `sticky` keeps a client on
//! one member.
//!
//! - Cookie: the value is `base64url(id ‖ expires ‖ mac)`: `id` is 8 bytes
//!   of `HMAC(key, "member:" ‖ address)` (the address is not readable from
//!   it), `expires` 4 bytes of Unix seconds, `mac` the first 12 bytes of
//!   `HMAC(key, "cookie:" ‖ id ‖ expires)`. The key is the instance's, so
//!   every node of the instance takes every other's cookies. A cookie that
//!   does not verify, has expired, or names a member that is gone or not up
//!   is ignored: the balancer picks, and the response names the member that
//!   served (after a retry too). A good cookie is set again only once half
//!   its ttl has passed (a sliding lifetime without a header per response).
//! - Hash: the pool is balanced by consistent hash of the given key, for
//!   that pool only.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::Sha256;

use super::balance::{Balancer, Member};
use super::pools::{NamedPools, PoolRef};
use crate::model::sticky::{Sticky, StickyKey};
use crate::model::{Algorithm, HashOn, NodeConfig};

type HmacSha256 = Hmac<Sha256>;

const ID_LEN: usize = 8;
const EXPIRES_LEN: usize = 4;
const MAC_LEN: usize = 12;
const VALUE_LEN: usize = ID_LEN + EXPIRES_LEN + MAC_LEN;

type MemberId = [u8; ID_LEN];

/// The algorithm a pool is balanced with: the consistent hash under a
/// sticky hash, else the configured one.
pub fn algorithm(configured: Algorithm, sticky: Option<&Sticky>) -> Algorithm {
    match sticky {
        Some(Sticky::Hash(_)) => Algorithm::ConsistentHash,
        _ => configured,
    }
}

/// The sticky routing of every pool of a config; empty without any.
#[derive(Default)]
pub struct StickyStage {
    default: Option<PoolSticky>,
    /// By named pool index (`PoolRef::Named`).
    named: Vec<Option<PoolSticky>>,
}

/// One pool's sticky routing.
pub enum PoolSticky {
    Cookie(CookieSticky),
    Hash(HashOn),
}

impl StickyStage {
    /// A cookie form without the instance's key (an lbd without one) is
    /// left out: the pool is balanced as usual.
    pub fn new(config: &NodeConfig, default: &Balancer, pools: &NamedPools) -> StickyStage {
        let key = config.sticky_key.as_ref();
        let build = |sticky: Option<&Sticky>, balancer: &Balancer| match sticky? {
            Sticky::Hash(on) => Some(PoolSticky::Hash(on.clone())),
            Sticky::Cookie { name, ttl_s } => Some(PoolSticky::Cookie(CookieSticky::new(
                name, *ttl_s, key?, balancer,
            ))),
        };
        StickyStage {
            default: build(config.sticky.as_ref(), default),
            named: pools
                .iter()
                .map(|p| {
                    let sticky = config
                        .policy
                        .pools
                        .get(&p.name)
                        .and_then(|s| s.sticky.as_ref());
                    build(sticky, &p.balancer)
                })
                .collect(),
        }
    }

    pub fn get(&self, pool: PoolRef) -> Option<&PoolSticky> {
        match pool {
            PoolRef::Default => self.default.as_ref(),
            PoolRef::Named(i) => self.named.get(i).and_then(Option::as_ref),
        }
    }
}

impl PoolSticky {
    /// What a sticky hash keys on, replacing the instance's `hash_on`.
    pub fn hash_on(&self) -> Option<&HashOn> {
        match self {
            PoolSticky::Hash(on) => Some(on),
            PoolSticky::Cookie(_) => None,
        }
    }

    pub fn cookie(&self) -> Option<&CookieSticky> {
        match self {
            PoolSticky::Cookie(c) => Some(c),
            PoolSticky::Hash(_) => None,
        }
    }
}

/// The cookie form of one pool, with its members' ids computed once per config.
pub struct CookieSticky {
    name: String,
    ttl_s: u32,
    key: [u8; 32],
    /// By index into the balancer's members.
    ids: Vec<MemberId>,
}

/// The member a good cookie names, and when the cookie expires.
pub struct Pinned<'a> {
    pub member: &'a Member,
    expires: u32,
}

impl CookieSticky {
    fn new(name: &str, ttl_s: u32, key: &StickyKey, balancer: &Balancer) -> CookieSticky {
        let key = *key.bytes();
        let ids = balancer
            .members()
            .iter()
            .map(|m| member_id(&key, m))
            .collect();
        CookieSticky {
            name: name.to_string(),
            ttl_s,
            key,
            ids,
        }
    }

    /// The member the request's cookie names, if the cookie is good and the
    /// member is in `balancer` and up.
    pub fn pinned<'a>(&self, headers: &HeaderMap, balancer: &'a Balancer) -> Option<Pinned<'a>> {
        let now = now_s();
        let now_ms = u64::from(now) * 1000;
        cookie_values(headers, &self.name)
            .filter_map(|v| self.decode(v, now))
            .find_map(|(id, expires)| {
                let i = self.ids.iter().position(|m| *m == id)?;
                let member = balancer.members().get(i)?;
                member
                    .available(now_ms)
                    .then_some(Pinned { member, expires })
            })
    }

    /// The `Set-Cookie` for a response `served` answered, unless the
    /// request's cookie already named it and is less than half used.
    pub fn set_cookie(
        &self,
        balancer: &Balancer,
        served: &Member,
        pinned: Option<&Pinned<'_>>,
    ) -> Option<HeaderValue> {
        let now = now_s();
        let fresh = pinned.is_some_and(|p| {
            p.member.address == served.address && p.expires.saturating_sub(now) > self.ttl_s / 2
        });
        if fresh {
            return None;
        }
        let i = balancer
            .members()
            .iter()
            .position(|m| m.address == served.address)?;
        let value = self.encode(self.ids.get(i)?, now.saturating_add(self.ttl_s));
        let header = format!(
            "{}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
            self.name, self.ttl_s
        );
        HeaderValue::from_str(&header).ok()
    }

    fn mac(&self, id: &MemberId, expires: u32) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"cookie:");
        mac.update(id);
        mac.update(&expires.to_be_bytes());
        mac
    }

    fn encode(&self, id: &MemberId, expires: u32) -> String {
        let tag = self.mac(id, expires).finalize().into_bytes();
        let mut raw = [0u8; VALUE_LEN];
        raw[..ID_LEN].copy_from_slice(id);
        raw[ID_LEN..ID_LEN + EXPIRES_LEN].copy_from_slice(&expires.to_be_bytes());
        raw[ID_LEN + EXPIRES_LEN..].copy_from_slice(&tag[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The member id and expiry of a value this pool's key signed, not yet expired.
    fn decode(&self, value: &str, now: u32) -> Option<(MemberId, u32)> {
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        if raw.len() != VALUE_LEN {
            return None;
        }
        let id: MemberId = raw[..ID_LEN].try_into().ok()?;
        let expires = u32::from_be_bytes(raw[ID_LEN..ID_LEN + EXPIRES_LEN].try_into().ok()?);
        // Constant time: a forger learns nothing from how fast it fails.
        self.mac(&id, expires)
            .verify_truncated_left(&raw[ID_LEN + EXPIRES_LEN..])
            .ok()?;
        (expires > now).then_some((id, expires))
    }
}

fn member_id(key: &[u8; 32], member: &Member) -> MemberId {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"member:");
    mac.update(member.address.to_string().as_bytes());
    let tag = mac.finalize().into_bytes();
    tag[..ID_LEN].try_into().expect("a SHA-256 tag is longer")
}

/// The values of every cookie named `name` in the request's `Cookie` fields.
fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then(|| v.trim_matches('"'))
        })
}

fn now_s() -> u32 {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    u32::try_from(s).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;

    use super::*;
    use crate::model::BackendMember;

    fn balancer(ports: &[u16]) -> Balancer {
        let members: Vec<BackendMember> = ports
            .iter()
            .map(|p| BackendMember {
                address: format!("127.0.0.1:{p}").parse().unwrap(),
                weight: 1,
            })
            .collect();
        let counters = members.iter().map(|_| Arc::default()).collect();
        Balancer::new(Algorithm::RoundRobin, &members, counters)
    }

    fn sticky(key: u8, b: &Balancer) -> CookieSticky {
        CookieSticky::new("lb", 3600, &StickyKey::new([key; 32]), b)
    }

    fn with_cookie(set: &HeaderValue) -> HeaderMap {
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_string();
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("other=1; {pair}")).unwrap(),
        );
        h
    }

    #[test]
    fn a_set_cookie_pins_its_member_and_is_not_set_again_while_fresh() {
        let b = balancer(&[1, 2, 3]);
        let s = sticky(7, &b);
        let set = s.set_cookie(&b, &b.members()[1], None).unwrap();
        let text = set.to_str().unwrap();
        assert!(text.starts_with("lb="), "{text}");
        assert!(text.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"));
        assert!(!text.contains("127.0.0.1"), "the address is not in clear");
        let pinned = s.pinned(&with_cookie(&set), &b).unwrap();
        assert_eq!(pinned.member.address.port(), 2);
        assert!(s.set_cookie(&b, &b.members()[1], Some(&pinned)).is_none());
        // Another member served (a retry): the cookie names that one.
        let moved = s.set_cookie(&b, &b.members()[2], Some(&pinned)).unwrap();
        let again = s.pinned(&with_cookie(&moved), &b).unwrap();
        assert_eq!(again.member.address.port(), 3);
    }

    #[test]
    fn tampered_foreign_expired_and_gone_cookies_are_ignored() {
        let b = balancer(&[1, 2]);
        let s = sticky(7, &b);
        let value = s.encode(&s.ids[0], now_s() + 100);
        let mut bytes = URL_SAFE_NO_PAD.decode(&value).unwrap();
        bytes[0] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(&bytes);
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_str(&format!("lb={v}")).unwrap());
            h
        };
        assert!(s.pinned(&header(&value), &b).is_some());
        assert!(s.pinned(&header(&tampered), &b).is_none());
        assert!(s.pinned(&header("garbage"), &b).is_none());
        let foreign = sticky(8, &b);
        assert!(foreign.pinned(&header(&value), &b).is_none(), "another key");
        let expired = s.encode(&s.ids[0], now_s() - 1);
        assert!(s.pinned(&header(&expired), &b).is_none());
        // The member left the pool (a stopped managed backend).
        let smaller = balancer(&[2]);
        let s2 = sticky(7, &smaller);
        assert!(s2.pinned(&header(&value), &smaller).is_none());
        // The member is down.
        b.members()[0].counters.healthy.store(false, Relaxed);
        assert!(s.pinned(&header(&value), &b).is_none());
    }

    #[test]
    fn a_half_used_cookie_is_refreshed() {
        let b = balancer(&[1]);
        let s = sticky(1, &b);
        let value = s.encode(&s.ids[0], now_s() + 100);
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("lb={value}")).unwrap(),
        );
        let pinned = s.pinned(&h, &b).unwrap();
        assert!(s.set_cookie(&b, &b.members()[0], Some(&pinned)).is_some());
    }

    #[test]
    fn a_sticky_hash_balances_by_consistent_hash() {
        let hash = Sticky::Hash(HashOn::ClientIp);
        assert_eq!(
            algorithm(Algorithm::RoundRobin, Some(&hash)),
            Algorithm::ConsistentHash
        );
        let cookie = Sticky::Cookie {
            name: "c".into(),
            ttl_s: 1,
        };
        assert_eq!(
            algorithm(Algorithm::PowerOfTwo, Some(&cookie)),
            Algorithm::PowerOfTwo
        );
        assert_eq!(
            algorithm(Algorithm::RoundRobin, None),
            Algorithm::RoundRobin
        );
    }
}
