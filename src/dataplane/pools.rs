//! The pools a request can be sent to: the default pool (the seed's
//! `backends`, `ActiveConfig::balancer`), the policy's named pools, each with
//! its own algorithm, members and health check, and the member sets an auth
//! service names in its `upstream` answer.
//!
//! Member counters (requests, health, ejection) are kept per (pool, address):
//! a member listed in two pools with different health checks would
//! otherwise have one `healthy` flag written by two checks that disagree, and
//! one pool's passive ejection would take it out of the other. They survive
//! config changes for as long as the pool keeps the member.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use super::balance::Balancer;
use super::pool::tls::{MemberTls, MemberTlsCache};
use super::stats::MemberCounters;
use crate::model::instance::HealthCheck;
use crate::model::policy::{Policy, DEFAULT_POOL};
use crate::model::upstream::{self, BackendProtocol};
use crate::model::{Algorithm, BackendMember, MemberStats};

/// Which pool a rule sends to, resolved once per config (no name lookup on
/// the request path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRef {
    Default,
    /// An index into [`NamedPools`].
    Named(usize),
}

/// One named pool of the policy, ready to pick from.
pub struct NamedPool {
    pub name: String,
    pub balancer: Balancer,
    pub health_check: HealthCheck,
}

/// The policy's pools, in name order.
#[derive(Default)]
pub struct NamedPools {
    pools: Vec<NamedPool>,
}

/// The counters of every member of every pool, kept across configs.
#[derive(Default)]
pub struct MemberRegistry {
    members: Mutex<HashMap<(String, SocketAddr), Arc<MemberCounters>>>,
}

impl MemberRegistry {
    /// The counters of `members` of `pool` (new ones for new members).
    fn counters(&self, pool: &str, members: &[BackendMember]) -> Vec<Arc<MemberCounters>> {
        let mut map = self.members.lock().unwrap_or_else(|p| p.into_inner());
        members
            .iter()
            .map(|m| {
                map.entry((pool.to_string(), m.address))
                    .or_default()
                    .clone()
            })
            .collect()
    }

    /// The balancer of one pool of a config.
    pub fn balancer(
        &self,
        pool: &str,
        algorithm: Algorithm,
        protocol: BackendProtocol,
        members: &[BackendMember],
    ) -> Balancer {
        Balancer::new(algorithm, members, self.counters(pool, members)).with_protocol(protocol)
    }

    /// Forgets members that no pool of `config` has any more.
    pub fn retain(&self, backends: &[BackendMember], policy: &Policy) {
        let mut map = self.members.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(pool, addr), _| {
            let list = if pool == DEFAULT_POOL {
                Some(backends)
            } else {
                policy.pools.get(pool).map(|p| p.members.as_slice())
            };
            list.is_some_and(|l| l.iter().any(|m| m.address == *addr))
        });
    }
}

impl NamedPools {
    /// `protocol`: the instance's, for a pool that names none. Fails only
    /// when a pool's `backend_tls` makes no rustls config.
    pub fn new(
        policy: &Policy,
        protocol: BackendProtocol,
        registry: &MemberRegistry,
        member_tls: &MemberTlsCache,
    ) -> Result<NamedPools, String> {
        let pools = policy
            .pools
            .iter()
            .map(|(name, pool)| {
                let balancer = registry.balancer(
                    name,
                    super::sticky::algorithm(pool.algorithm, pool.sticky.as_ref()),
                    upstream::resolve(pool.backend_protocol, protocol),
                    &pool.members,
                );
                Ok(NamedPool {
                    name: name.clone(),
                    balancer: balancer.with_tls(member_tls.get(pool.backend_tls.as_ref())?),
                    health_check: pool.health_check.clone(),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(NamedPools { pools })
    }

    /// The reference a rule naming `name` resolves to, if the pool exists.
    pub fn resolve(&self, name: &str) -> Option<PoolRef> {
        if name == DEFAULT_POOL {
            return Some(PoolRef::Default);
        }
        self.pools
            .iter()
            .position(|p| p.name == name)
            .map(PoolRef::Named)
    }

    pub fn get(&self, index: usize) -> &NamedPool {
        &self.pools[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &NamedPool> {
        self.pools.iter()
    }

    /// What `/status` shows of the named pools' members, each with its pool.
    pub fn member_stats(&self) -> impl Iterator<Item = MemberStats> + '_ {
        self.pools.iter().flat_map(|p| {
            p.balancer.member_stats().into_iter().map(|mut m| {
                m.pool = Some(p.name.clone());
                m
            })
        })
    }
}

/// The most distinct `upstream` lists kept; past it the oldest state is
/// dropped (the lists come from an auth service: they must not grow the
/// node's memory without bound).
const MAX_UPSTREAM_SETS: usize = 1024;

/// Balancers over the member lists that an auth service's `upstream` names,
/// built once per distinct list and kept across configs, so round robin
/// goes on turning and passive ejection holds from one request to the next.
#[derive(Default)]
pub struct UpstreamSets {
    sets: Mutex<HashMap<Vec<SocketAddr>, Arc<Balancer>>>,
    counters: Mutex<HashMap<SocketAddr, Arc<MemberCounters>>>,
}

impl UpstreamSets {
    /// The balancer over `addrs` (round robin, weight 1 each), reaching
    /// them as `like` (the pool the request was routed to) does.
    pub fn balancer(&self, addrs: &[SocketAddr], like: &Balancer) -> Arc<Balancer> {
        let (protocol, tls) = (like.protocol(), like.tls().cloned());
        let tls_id = |t: Option<&Arc<MemberTls>>| MemberTls::key(t.map(|t| &**t));
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = sets
            .get(addrs)
            .filter(|b| b.protocol() == protocol && tls_id(b.tls()) == tls_id(tls.as_ref()))
        {
            return b.clone();
        }
        if sets.len() >= MAX_UPSTREAM_SETS {
            sets.clear();
        }
        let members: Vec<BackendMember> = addrs
            .iter()
            .map(|a| BackendMember {
                address: *a,
                weight: 1,
            })
            .collect();
        let counters = {
            let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= 4 * MAX_UPSTREAM_SETS {
                // Only members of a request in flight or a kept set stay.
                map.retain(|_, c| Arc::strong_count(c) > 1);
            }
            addrs
                .iter()
                .map(|a| map.entry(*a).or_default().clone())
                .collect()
        };
        let balancer = Arc::new(
            Balancer::new(Algorithm::RoundRobin, &members, counters)
                .with_protocol(protocol)
                .with_tls(tls),
        );
        sets.insert(addrs.to_vec(), balancer.clone());
        balancer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{PolicySpec, SecretHasher};
    use crate::model::TrafficType;
    use std::sync::atomic::Ordering::Relaxed;

    struct NoHash;
    impl SecretHasher for NoHash {
        fn hash(&self, s: &str) -> String {
            s.to_string()
        }
    }

    fn policy(json: &str) -> Policy {
        serde_json::from_str::<PolicySpec>(json)
            .unwrap()
            .validate(TrafficType::Http, 80, &NoHash)
            .unwrap()
    }

    fn member(addr: &str) -> BackendMember {
        BackendMember {
            address: addr.parse().unwrap(),
            weight: 1,
        }
    }

    #[test]
    fn names_resolve_once_and_default_is_the_backend() {
        let p = policy(
            r#"{"pools":{"b":{"entities":["127.0.0.1:2"]},"a":{"entities":["127.0.0.1:1"],"algorithm":"least_connections"}}}"#,
        );
        let pools = NamedPools::new(
            &p,
            BackendProtocol::Http1,
            &MemberRegistry::default(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(pools.resolve("default"), Some(PoolRef::Default));
        let Some(PoolRef::Named(a)) = pools.resolve("a") else {
            panic!("a is a pool")
        };
        assert_eq!(pools.get(a).name, "a");
        assert_eq!(
            pools.get(a).balancer.algorithm(),
            Algorithm::LeastConnections
        );
        assert_eq!(pools.resolve("c"), None);
        let stats: Vec<_> = pools.member_stats().collect();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|m| m.pool.is_some()));
    }

    #[test]
    fn counters_are_per_pool_and_survive_a_new_config() {
        let registry = MemberRegistry::default();
        let shared = [member("127.0.0.1:7")];
        let a = registry.balancer("a", Algorithm::RoundRobin, BackendProtocol::Http1, &shared);
        let b = registry.balancer("b", Algorithm::RoundRobin, BackendProtocol::Http1, &shared);
        a.members()[0].counters.healthy.store(false, Relaxed);
        assert!(
            b.members()[0].counters.healthy.load(Relaxed),
            "pool b's health is its own"
        );
        let again = registry.balancer("a", Algorithm::PowerOfTwo, BackendProtocol::Http1, &shared);
        assert!(Arc::ptr_eq(
            &a.members()[0].counters,
            &again.members()[0].counters
        ));
        // Pool a gone from the config: its members' counters go too.
        registry.retain(
            &[],
            &policy(r#"{"pools":{"b":{"entities":["127.0.0.1:7"]}}}"#),
        );
        let fresh = registry.balancer("a", Algorithm::RoundRobin, BackendProtocol::Http1, &shared);
        assert!(fresh.members()[0].counters.healthy.load(Relaxed));
        let kept = registry.balancer("b", Algorithm::RoundRobin, BackendProtocol::Http1, &shared);
        assert!(Arc::ptr_eq(
            &b.members()[0].counters,
            &kept.members()[0].counters
        ));
    }

    #[test]
    fn an_upstream_list_gets_one_balancer_and_is_bounded() {
        let sets = UpstreamSets::default();
        let plain = Balancer::new(Algorithm::RoundRobin, &[], Vec::new());
        let list: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let first = sets.balancer(&list, &plain);
        assert!(Arc::ptr_eq(&first, &sets.balancer(&list, &plain)));
        let picks: Vec<u16> = (0..4)
            .map(|_| {
                sets.balancer(&list, &plain)
                    .pick(0)
                    .unwrap()
                    .member
                    .address
                    .port()
            })
            .collect();
        assert_eq!(picks, vec![1, 2, 1, 2], "round robin turns across requests");
        for port in 0..(MAX_UPSTREAM_SETS as u16 + 10) {
            sets.balancer(&[SocketAddr::from(([127, 0, 0, 2], port))], &plain);
        }
        assert!(sets.sets.lock().unwrap().len() <= MAX_UPSTREAM_SETS);
    }
}
