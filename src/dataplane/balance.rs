//! Choosing a member. Every algorithm skips members that are draining
//! (weight 0), down (active checks) or ejected (passive health); when none is
//! left it fails open over all weighted members, since refusing everything
//! is worse than trying backends that might be up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rand::Rng;

use super::stats::{now_ms, MemberCounters};
use crate::model::{Algorithm, BackendMember, MemberState, MemberStats};

pub struct Member {
    pub address: SocketAddr,
    /// `address` as a URI authority, built once rather than per request.
    pub authority: http::uri::Authority,
    pub weight: u32,
    pub counters: Arc<MemberCounters>,
}

impl Member {
    /// Whether new requests may go to this member now.
    pub fn available(&self, now_ms: u64) -> bool {
        self.state(now_ms) == MemberState::Up
    }

    fn load(&self) -> u64 {
        self.counters.active.load(Relaxed)
    }

    /// `self` is less loaded than `other` relative to their weights.
    fn lighter_than(&self, other: &Member) -> bool {
        self.load() * u64::from(other.weight) < other.load() * u64::from(self.weight)
    }

    /// What `/status` reports; only `Up` members get new requests.
    pub fn state(&self, now_ms: u64) -> MemberState {
        if self.weight == 0 {
            MemberState::Draining
        } else if !self.counters.healthy.load(Relaxed) {
            MemberState::Down
        } else if self.counters.ejected_until_ms.load(Relaxed) > now_ms {
            MemberState::Ejected
        } else {
            MemberState::Up
        }
    }
}

/// The member chosen for a request, and whether it was chosen by failing open.
pub struct Pick<'a> {
    pub member: &'a Member,
    pub fail_open: bool,
}

pub struct Balancer {
    algorithm: Algorithm,
    members: Vec<Member>,
    /// Member indexes in smooth-WRR order; weight-0 members never appear.
    schedule: Vec<usize>,
    /// The Maglev lookup table (consistent_hash only).
    maglev: Vec<u16>,
    next: AtomicUsize,
}

/// Maglev table size: a prime well above the member count (at most 256).
const MAGLEV_SIZE: usize = 65_537;

impl Balancer {
    pub fn new(
        algorithm: Algorithm,
        backends: &[BackendMember],
        counters: Vec<Arc<MemberCounters>>,
    ) -> Balancer {
        let members: Vec<Member> = backends
            .iter()
            .zip(counters)
            .map(|(b, counters)| Member {
                address: b.address,
                authority: http::uri::Authority::try_from(b.address.to_string())
                    .expect("a socket address is an authority"),
                weight: b.weight,
                counters,
            })
            .collect();
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let schedule = smooth_wrr(&weights);
        let maglev = if algorithm == Algorithm::ConsistentHash {
            let names: Vec<String> = members.iter().map(|m| m.address.to_string()).collect();
            maglev_table(&names, &weights, MAGLEV_SIZE)
        } else {
            Vec::new()
        };
        Balancer {
            algorithm,
            members,
            schedule,
            maglev,
            next: AtomicUsize::new(0),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Picks a member for a request; `key` is the hash key (consistent_hash only).
    pub fn pick(&self, key: u64) -> Option<Pick<'_>> {
        if self.schedule.is_empty() {
            return None;
        }
        let now = now_ms();
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => self.round_robin(now),
            Algorithm::LeastConnections => self.least_loaded(now),
            Algorithm::PowerOfTwo => self.power_of_two(now),
            Algorithm::ConsistentHash => self.hashed(key, now),
        };
        match chosen {
            Some(member) => Some(Pick {
                member,
                fail_open: false,
            }),
            None => {
                let n = self.next.fetch_add(1, Relaxed);
                Some(Pick {
                    member: &self.members[self.schedule[n % self.schedule.len()]],
                    fail_open: true,
                })
            }
        }
    }

    /// Another available member than `failed`, for a retry.
    pub fn retry_member(&self, failed: &Member) -> Option<&Member> {
        let now = now_ms();
        let n = self.next.fetch_add(1, Relaxed);
        let len = self.members.len();
        (0..len)
            .map(|i| &self.members[(n + i) % len])
            .find(|m| m.address != failed.address && m.available(now))
    }

    fn round_robin(&self, now: u64) -> Option<&Member> {
        let n = self.next.fetch_add(1, Relaxed);
        let len = self.schedule.len();
        (0..len)
            .map(|i| &self.members[self.schedule[(n + i) % len]])
            .find(|m| m.available(now))
    }

    fn least_loaded(&self, now: u64) -> Option<&Member> {
        // Start the scan at a rotating offset so ties spread out.
        let n = self.next.fetch_add(1, Relaxed);
        let len = self.members.len();
        let mut best: Option<&Member> = None;
        for i in 0..len {
            let m = &self.members[(n + i) % len];
            if m.available(now) && best.is_none_or(|b| m.lighter_than(b)) {
                best = Some(m);
            }
        }
        best
    }

    fn power_of_two(&self, now: u64) -> Option<&Member> {
        let len = self.members.len();
        let mut rng = rand::rng();
        let mut sample = || {
            (0..4)
                .map(|_| &self.members[rng.random_range(0..len)])
                .find(|m| m.available(now))
        };
        match (sample(), sample()) {
            (Some(a), Some(b)) => Some(if b.lighter_than(a) { b } else { a }),
            (Some(a), None) | (None, Some(a)) => Some(a),
            // Most members are out: fall back to a full scan.
            (None, None) => self.least_loaded(now),
        }
    }

    fn hashed(&self, key: u64, now: u64) -> Option<&Member> {
        let len = self.maglev.len();
        let start = (key % len as u64) as usize;
        // An unavailable owner: walk the table, so the same key still lands on
        // the same fallback and other keys keep their members.
        (0..len)
            .map(|i| &self.members[self.maglev[(start + i) % len] as usize])
            .find(|m| m.available(now))
    }

    pub fn member_stats(&self) -> Vec<MemberStats> {
        let now = now_ms();
        self.members
            .iter()
            .map(|m| MemberStats {
                address: m.address,
                state: m.state(now),
                weight: m.weight,
                requests: m.counters.requests.load(Relaxed),
                failures: m.counters.failures.load(Relaxed),
                active: m.counters.active.load(Relaxed),
                ejections: m.counters.ejections.load(Relaxed),
            })
            .collect()
    }
}

/// nginx's smooth weighted round robin, run once over a full cycle: with
/// weights 5,1,1 it yields a a b a c a a rather than a a a a a b c.
fn smooth_wrr(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = None;
        for (i, w) in weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            current[i] += i64::from(*w);
            if best.is_none_or(|b: usize| current[i] > current[b]) {
                best = Some(i);
            }
        }
        let b = best.expect("total > 0 means some weight > 0");
        current[b] -= total;
        out.push(b);
    }
    out
}

/// FNV-1a: small, fast and the same in every process, so every node of an
/// instance maps a key to the same member.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Maglev's lookup table (Eisenbud et al., NSDI 2016), with weights: each
/// round, a member claims as many slots as its weight.
fn maglev_table(names: &[String], weights: &[u32], size: usize) -> Vec<u16> {
    let perms: Vec<(u64, u64)> = names
        .iter()
        .map(|n| {
            let offset = fnv1a(n.as_bytes()) % size as u64;
            let skip = fnv1a(format!("{n}#skip").as_bytes()) % (size as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    let mut table = vec![u16::MAX; size];
    let mut filled = 0;
    while filled < size {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            for _ in 0..weights[i] {
                let mut slot = ((offset + next[i] * skip) % size as u64) as usize;
                while table[slot] != u16::MAX {
                    next[i] += 1;
                    slot = ((offset + next[i] * skip) % size as u64) as usize;
                }
                table[slot] = i as u16;
                next[i] += 1;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn balancer(algorithm: Algorithm, weights: &[u32]) -> Balancer {
        let backends: Vec<BackendMember> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendMember {
                address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: *w,
            })
            .collect();
        let counters = backends.iter().map(|_| Arc::default()).collect();
        Balancer::new(algorithm, &backends, counters)
    }

    fn index(m: &Member) -> usize {
        (m.address.port() - 9000) as usize
    }

    fn counts(b: &Balancer, n: usize, key: impl Fn(usize) -> u64) -> Vec<usize> {
        let mut counts = vec![0; b.members().len()];
        for i in 0..n {
            counts[index(b.pick(key(i)).unwrap().member)] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_and_skips_zero() {
        let b = balancer(Algorithm::RoundRobin, &[1, 2, 0]);
        assert_eq!(counts(&b, 300, |_| 0), vec![100, 200, 0]);
    }

    #[test]
    fn smooth_order_interleaves() {
        assert_eq!(smooth_wrr(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[1, 1, 1]), vec![0, 1, 2]);
        assert!(smooth_wrr(&[0, 0]).is_empty());
    }

    #[test]
    fn least_connections_prefers_the_idle_member() {
        let b = balancer(Algorithm::LeastConnections, &[1, 1, 1]);
        b.members()[0].counters.active.store(5, Ordering::Relaxed);
        b.members()[1].counters.active.store(1, Ordering::Relaxed);
        for _ in 0..10 {
            assert_eq!(index(b.pick(0).unwrap().member), 2);
        }
        // Weights scale the load: 4 in flight on weight 4 beats 2 on weight 1.
        let w = balancer(Algorithm::LeastConnections, &[4, 1]);
        w.members()[0].counters.active.store(4, Ordering::Relaxed);
        w.members()[1].counters.active.store(2, Ordering::Relaxed);
        assert_eq!(index(w.pick(0).unwrap().member), 0);
    }

    #[test]
    fn power_of_two_spreads_evenly_when_idle() {
        let b = balancer(Algorithm::PowerOfTwo, &[1, 1, 1, 1]);
        let c = counts(&b, 4000, |_| 0);
        // Each member gets about a quarter; 6 sigma of a binomial(4000, 1/4) is ~165.
        assert!(c.iter().all(|n| (835..=1165).contains(n)), "{c:?}");
    }

    #[test]
    fn power_of_two_avoids_the_loaded_member() {
        let b = balancer(Algorithm::PowerOfTwo, &[1, 1]);
        b.members()[0].counters.active.store(10, Ordering::Relaxed);
        let c = counts(&b, 1000, |_| 0);
        // Member 0 only wins when both samples land on it (1 in 4).
        assert!(c[0] < 350, "{c:?}");
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let b = balancer(Algorithm::ConsistentHash, &[1, 1, 1, 1]);
        let keys: Vec<u64> = (0..2000u64).map(|k| fnv1a(&k.to_le_bytes())).collect();
        let first: Vec<usize> = keys
            .iter()
            .map(|k| index(b.pick(*k).unwrap().member))
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| index(b.pick(*k).unwrap().member))
            .collect();
        assert_eq!(first, again, "same key, same member");
        let mut per = [0; 4];
        for i in &first {
            per[*i] += 1;
        }
        assert!(
            per.iter().all(|n| (350..=650).contains(n)),
            "balanced: {per:?}"
        );
        // Member 3 goes down: only its keys move.
        b.members()[3]
            .counters
            .healthy
            .store(false, Ordering::Relaxed);
        let after: Vec<usize> = keys
            .iter()
            .map(|k| index(b.pick(*k).unwrap().member))
            .collect();
        for (f, a) in first.iter().zip(&after) {
            if *f != 3 {
                assert_eq!(f, a, "a key of a healthy member moved");
            } else {
                assert_ne!(*a, 3);
            }
        }
    }

    #[test]
    fn down_and_ejected_members_are_skipped_and_all_down_fails_open() {
        let b = balancer(Algorithm::RoundRobin, &[1, 1, 1]);
        b.members()[0]
            .counters
            .healthy
            .store(false, Ordering::Relaxed);
        b.members()[1]
            .counters
            .ejected_until_ms
            .store(now_ms() + 60_000, Ordering::Relaxed);
        for _ in 0..6 {
            let p = b.pick(0).unwrap();
            assert_eq!((index(p.member), p.fail_open), (2, false));
        }
        b.members()[2]
            .counters
            .healthy
            .store(false, Ordering::Relaxed);
        let seen: std::collections::HashSet<usize> = (0..6)
            .map(|_| b.pick(0).unwrap())
            .map(|p| {
                assert!(p.fail_open);
                index(p.member)
            })
            .collect();
        assert_eq!(seen.len(), 3, "fail open spreads over all members");
    }

    #[test]
    fn member_stats_report_each_state() {
        let b = balancer(Algorithm::RoundRobin, &[1, 1, 1, 0]);
        b.members()[1]
            .counters
            .healthy
            .store(false, Ordering::Relaxed);
        b.members()[2]
            .counters
            .ejected_until_ms
            .store(now_ms() + 60_000, Ordering::Relaxed);
        let states: Vec<MemberState> = b.member_stats().iter().map(|m| m.state).collect();
        assert_eq!(
            states,
            [
                MemberState::Up,
                MemberState::Down,
                MemberState::Ejected,
                MemberState::Draining
            ]
        );
        // Draining wins over down: a weight-0 member gets nothing either way.
        b.members()[3]
            .counters
            .healthy
            .store(false, Ordering::Relaxed);
        assert_eq!(b.member_stats()[3].state, MemberState::Draining);
    }

    #[test]
    fn retry_goes_elsewhere() {
        let b = balancer(Algorithm::RoundRobin, &[1, 1, 0]);
        let first = b.pick(0).unwrap().member;
        let other = b.retry_member(first).unwrap();
        assert_ne!(other.address, first.address);
        assert_eq!(other.weight, 1, "never a draining member");
        assert!(balancer(Algorithm::RoundRobin, &[0, 0]).pick(0).is_none());
    }
}
