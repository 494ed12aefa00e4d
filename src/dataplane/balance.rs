//! Choosing a member. Every algorithm skips members that are draining
//! (weight 0), down (active checks) or ejected (passive health); when none is
//! left it fails open over all weighted members, since refusing everything
//! is worse than trying backends that might be up. With no weighted member
//! at all (every member drained) nothing is picked: the proxies answer 503
//! or close the connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use rand::Rng;

use super::pool::tls::MemberTls;
use super::stats::{now_ms, MemberCounters};
use crate::model::upstream::BackendProtocol;
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
    /// What the members are spoken to in.
    protocol: BackendProtocol,
    /// The pool's `backend_tls`, when its members are reached over TLS.
    tls: Option<Arc<MemberTls>>,
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
        let schedule = smooth_wrr(&schedule_weights(&weights));
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
            protocol: BackendProtocol::Http1,
            tls: None,
        }
    }

    /// The same balancer, reaching its members over `tls` (or in the clear).
    pub fn with_tls(mut self, tls: Option<Arc<MemberTls>>) -> Balancer {
        self.tls = tls;
        self
    }

    pub fn tls(&self) -> Option<&Arc<MemberTls>> {
        self.tls.as_ref()
    }

    /// The same balancer, speaking `protocol` to its members.
    pub fn with_protocol(mut self, protocol: BackendProtocol) -> Balancer {
        self.protocol = protocol;
        self
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn protocol(&self) -> BackendProtocol {
        self.protocol
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
        if len == 0 {
            return None;
        }
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
            .map(|m| {
                let (open_connections, idle_ms) = m.counters.activity();
                MemberStats {
                    address: m.address,
                    state: m.state(now),
                    weight: m.weight,
                    requests: m.counters.requests.load(Relaxed),
                    failures: m.counters.failures.load(Relaxed),
                    active: m.counters.active.load(Relaxed),
                    ejections: m.counters.ejections.load(Relaxed),
                    pool: None,
                    open_connections,
                    idle_ms,
                    resource: None,
                }
            })
            .collect()
    }
}

/// The longest round-robin schedule. The controller's limits (256 members of
/// weight at most 256) never reach it, so a valid config gets its exact
/// weights; the node takes any `u32`, and a schedule as long as the sum of
/// such weights would not fit in memory.
const SCHEDULE_MAX: u64 = 65_536;

/// The weights the schedule is built from: divided by their common divisor
/// (the smooth cycle of k·w is that of w, k times over), then fitted into
/// `SCHEDULE_MAX`.
fn schedule_weights(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0, |g, w| gcd(g, *w)).max(1);
    let reduced: Vec<u32> = weights.iter().map(|w| w / divisor).collect();
    fit(&reduced, SCHEDULE_MAX)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// `weights` unchanged when their sum is at most `budget` (always, within the
/// controller's limits); otherwise scaled down to sum to at most `budget`,
/// every weighted member keeping at least 1 so that scaling never drains one.
fn fit(weights: &[u32], budget: u64) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total <= budget {
        return weights.to_vec();
    }
    let weighted = weights.iter().filter(|w| **w > 0).count() as u64;
    // What is left to share out in proportion once each has its 1.
    let spare = budget.saturating_sub(weighted);
    weights
        .iter()
        .map(|w| match w {
            0 => 0,
            // w ≤ total, so at most 1 + spare: a u32 for SCHEDULE_MAX.
            w => 1 + (u64::from(*w) * spare / total) as u32,
        })
        .collect()
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

/// Maglev's lookup table (Eisenbud et al., NSDI 2016), with weights: the
/// heaviest member claims a slot every round, one of a third of its weight
/// every third round, so slot shares follow the weights within a slot or two
/// whatever their size, and every weighted member claims in the first round.
/// (Claiming a weight's worth of slots in a row each round gave the members
/// first in the last, partial round twice the share of the others: 256
/// members of weight 200 fill 51,200 slots a round.) Empty when no member has
/// a weight: then there is nothing to pick (`pick` answers `None`).
fn maglev_table(names: &[String], weights: &[u32], size: usize) -> Vec<u16> {
    let heaviest = u64::from(weights.iter().copied().max().unwrap_or(0));
    // Without a weighted member no round claims a slot: the loop below would
    // never end.
    if heaviest == 0 {
        return Vec::new();
    }
    let perms: Vec<(u64, u64)> = names
        .iter()
        .map(|n| {
            let offset = fnv1a(n.as_bytes()) % size as u64;
            let skip = fnv1a(format!("{n}#skip").as_bytes()) % (size as u64 - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; names.len()];
    // Member i claims its k-th slot in the first round r with
    // r·weight ≥ k·heaviest: integers, so every node builds the same table.
    // The heaviest claims every round, so there are at most `size` rounds,
    // and r·weight stays below 2^49.
    let mut due = vec![0u64; names.len()];
    let mut table = vec![u16::MAX; size];
    let mut filled = 0;
    let mut round = 0u64;
    loop {
        round += 1;
        for (i, (offset, skip)) in perms.iter().enumerate() {
            let weight = u64::from(weights[i]);
            if weight == 0 || round * weight < due[i] {
                continue;
            }
            due[i] += heaviest;
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
    fn fitted_weights_keep_proportions_and_every_weighted_member() {
        assert_eq!(fit(&[1, 2, 0], 3), [1, 2, 0], "what fits is unchanged");
        let fitted = fit(&[u32::MAX, 1, 0, u32::MAX / 2], 100);
        assert!(fitted.iter().map(|w| u64::from(*w)).sum::<u64>() <= 100);
        assert_eq!((fitted[1], fitted[2]), (1, 0), "{fitted:?}");
        assert!(fitted[0].abs_diff(2 * fitted[3]) <= 2, "{fitted:?}");
        // Weights the controller would refuse, but in a ratio that fits exactly.
        assert_eq!(
            schedule_weights(&[2_000_000_000, 4_000_000_000, 0]),
            [1, 2, 0]
        );
        assert_eq!(schedule_weights(&[6, 4]), [3, 2]);
    }

    /// Builds in a thread so that a build that never ends fails the test
    /// instead of hanging the suite. The slowest build here takes well under
    /// a second unoptimized.
    fn built_within(algorithm: Algorithm, members: &[(u16, u32)]) -> Balancer {
        let backends: Vec<BackendMember> = members
            .iter()
            .map(|(slot, weight)| BackendMember {
                address: SocketAddr::from(([127, 0, 0, 1], 9000 + slot)),
                weight: *weight,
            })
            .collect();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let counters = backends.iter().map(|_| Arc::default()).collect();
            let _ = tx.send(Balancer::new(algorithm, &backends, counters));
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| {
                panic!(
                    "{algorithm:?} over {} members took over 10 s to build",
                    members.len()
                )
            })
    }

    const ALGORITHMS: [Algorithm; 4] = [
        Algorithm::RoundRobin,
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwo,
        Algorithm::ConsistentHash,
    ];

    /// Where `m` is in `b`; panics for a member `b` was not built with.
    fn position(b: &Balancer, m: &Member) -> usize {
        b.members()
            .iter()
            .position(|x| std::ptr::eq(x, m))
            .expect("a member of this balancer")
    }

    /// The tables only name weighted members, each of them at least once.
    fn check_tables(b: &Balancer) {
        let weighted = b.members().iter().filter(|m| m.weight > 0).count();
        assert_eq!(b.schedule.is_empty(), weighted == 0);
        assert!(b.schedule.len() as u64 <= SCHEDULE_MAX);
        assert!(b.schedule.iter().all(|i| b.members()[*i].weight > 0));
        if b.algorithm() == Algorithm::ConsistentHash {
            assert_eq!(b.maglev.is_empty(), weighted == 0);
            let mut owns = vec![false; b.members().len()];
            for i in &b.maglev {
                assert!(
                    b.members()[*i as usize].weight > 0,
                    "a slot of a drained member"
                );
                owns[*i as usize] = true;
            }
            for (m, owns) in b.members().iter().zip(owns) {
                assert!(owns || m.weight == 0, "{} owns no slot", m.address);
            }
        }
    }

    /// What every pick must satisfy, whatever the algorithm and the weights:
    /// a member of this balancer and never one of weight 0; nothing at all
    /// when no member has a weight; a member that is up whenever a weighted
    /// one is; failing open only when none is.
    fn check_picks(b: &Balancer, keys: impl IntoIterator<Item = u64>) {
        let now = now_ms();
        let weighted = b.members().iter().any(|m| m.weight > 0);
        let any_up = b.members().iter().any(|m| m.available(now));
        for key in keys {
            let Some(p) = b.pick(key) else {
                assert!(
                    !weighted,
                    "{:?}: no pick, yet a member has a weight",
                    b.algorithm()
                );
                continue;
            };
            position(b, p.member);
            assert!(
                p.member.weight > 0,
                "{:?} picked a weight-0 member",
                b.algorithm()
            );
            assert_eq!(p.fail_open, !any_up, "{:?}", b.algorithm());
            assert!(
                p.fail_open || p.member.available(now),
                "{:?}",
                b.algorithm()
            );
            if let Some(r) = b.retry_member(p.member) {
                position(b, r);
                assert!(r.available(now) && r.address != p.member.address);
            }
        }
    }

    #[test]
    fn every_weight_vector_builds_promptly_and_picks_sanely() {
        let distinct = |weights: Vec<u32>| -> Vec<(u16, u32)> { (0u16..).zip(weights).collect() };
        let mut one_weighted = vec![0; 256];
        one_weighted[200] = 1;
        // 64, not 256: the fitted schedule costs 65,536 scans of the members.
        let mut one_huge = vec![1; 64];
        one_huge[0] = u32::MAX;
        let cases = [
            // All drained: consistent_hash used to spin forever here.
            distinct(vec![0]),
            distinct(vec![0, 0]),
            distinct(vec![0; 256]),
            distinct(one_weighted),
            distinct(vec![7]),
            distinct(vec![u32::MAX]),
            // The controller's largest config.
            distinct(vec![256; 256]),
            distinct(vec![u32::MAX; 256]),
            distinct(one_huge),
            // One address several times.
            vec![(0, 0), (0, 3), (0, u32::MAX), (1, 1)],
            vec![(0, 0), (0, 0)],
        ];
        for members in &cases {
            for algorithm in ALGORITHMS {
                let b = built_within(algorithm, members);
                check_tables(&b);
                check_picks(&b, (0..64u64).map(|k| fnv1a(&k.to_le_bytes())));
            }
        }
    }

    fn slot_counts(weights: &[u32]) -> Vec<u64> {
        let names: Vec<String> = (0..weights.len())
            .map(|i| format!("10.0.{}.{}:80", i / 250, i % 250))
            .collect();
        let mut counts = vec![0u64; weights.len()];
        for i in maglev_table(&names, weights, MAGLEV_SIZE) {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn maglev_slots_follow_the_weights_at_any_scale() {
        // Within the controller's limits; one slot per member per round gave
        // the first 72 of these 400 slots and the others 200.
        let even = slot_counts(&[200; 256]);
        assert!(even.iter().all(|c| (256..=257).contains(c)), "{even:?}");
        assert_eq!(
            slot_counts(&[7; 4]),
            slot_counts(&[1; 4]),
            "only ratios count"
        );
        let c = slot_counts(&[2, 1, 0, 1]);
        assert_eq!(c[2], 0);
        assert!(
            c[0].abs_diff(2 * c[1]) <= 2 && c[1].abs_diff(c[3]) <= 1,
            "{c:?}"
        );
        let c = slot_counts(&[u32::MAX, 1]);
        assert_eq!(
            c,
            [MAGLEV_SIZE as u64 - 1, 1],
            "the lightest still owns a slot"
        );
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone, Copy)]
        enum Health {
            Up,
            Down,
            Ejected,
        }

        /// Small weights (zeros common enough that all-zero vectors come up
        /// too), the controller's range, all zeros, and now and then weights
        /// only a hand-written `PUT /config` sends. Those vectors are short:
        /// their schedule is fitted to 65,536 turns, each a scan of the
        /// members, and these tests run unoptimized.
        fn weights() -> impl Strategy<Value = Vec<u32>> {
            use prop::collection::vec;
            prop_oneof![
                4 => vec(prop_oneof![1 => Just(0u32), 2 => 1..=4u32], 1..=24),
                3 => vec(prop_oneof![1 => Just(0u32), 3 => 1..=256u32], 1..=24),
                1 => vec(Just(0u32), 1..=24),
                1 => vec(prop_oneof![1 => Just(0u32), 1 => 1..=4u32, 2 => any::<u32>()], 1..=6),
            ]
        }

        fn health() -> impl Strategy<Value = Health> {
            prop_oneof![6 => Just(Health::Up), 1 => Just(Health::Down), 1 => Just(Health::Ejected)]
        }

        /// (address slot, weight, health); slots come from a small range so
        /// that duplicate addresses come up too.
        fn members() -> impl Strategy<Value = Vec<(u16, u32, Health)>> {
            weights().prop_flat_map(|weights| {
                let n = weights.len();
                (
                    prop::collection::vec(0..24u16, n),
                    Just(weights),
                    prop::collection::vec(health(), n),
                )
                    .prop_map(|(slots, weights, health)| {
                        slots
                            .into_iter()
                            .zip(weights)
                            .zip(health)
                            .map(|((s, w), h)| (s, w, h))
                            .collect()
                    })
            })
        }

        proptest! {
            // A build that never ends costs each shrinking step its 10 s
            // deadline (and leaves a thread spinning): bound the shrinking.
            #![proptest_config(ProptestConfig {
                cases: 64,
                max_shrink_time: 30_000,
                ..ProptestConfig::default()
            })]

            #[test]
            fn every_algorithm_picks_only_weighted_members(
                members in members(),
                keys in prop::collection::vec(any::<u64>(), 16),
            ) {
                let config: Vec<(u16, u32)> = members.iter().map(|(s, w, _)| (*s, *w)).collect();
                for algorithm in ALGORITHMS {
                    let b = built_within(algorithm, &config);
                    for (m, (_, _, health)) in b.members().iter().zip(&members) {
                        match health {
                            Health::Up => {}
                            Health::Down => m.counters.healthy.store(false, Ordering::Relaxed),
                            Health::Ejected => m
                                .counters
                                .ejected_until_ms
                                .store(now_ms() + 60_000, Ordering::Relaxed),
                        }
                    }
                    check_tables(&b);
                    check_picks(&b, keys.iter().copied());
                }
            }

            #[test]
            fn maglev_slot_shares_follow_the_weights(weights in weights()) {
                let counts = slot_counts(&weights);
                let total: u128 = weights.iter().map(|w| u128::from(*w)).sum();
                let n = weights.len() as u128;
                for (count, w) in counts.iter().zip(&weights) {
                    let w = u128::from(*w);
                    if w == 0 {
                        prop_assert_eq!(*count, 0);
                        continue;
                    }
                    // count against size·w/total, without dividing: each
                    // member is off by at most 2 slots, which moves the
                    // others' shares by 2n/total of the table.
                    let off = (u128::from(*count) * total).abs_diff(MAGLEV_SIZE as u128 * w);
                    prop_assert!(off <= 2 * (total + n * w), "counts {:?}, weights {:?}", counts, weights);
                }
            }

            #[test]
            fn round_robin_over_one_schedule_follows_the_weights(
                weights in weights(),
            ) {
                let b = built_within(Algorithm::RoundRobin, &(0u16..).zip(weights.iter().copied()).collect::<Vec<_>>());
                let len = b.schedule.len();
                let mut counts = vec![0u64; weights.len()];
                for _ in 0..len {
                    counts[position(&b, b.pick(0).unwrap().member)] += 1;
                }
                let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
                let divisor = weights.iter().fold(0, |g, w| gcd(g, *w));
                // Only weights the controller refuses need fitting.
                let exact = divisor == 0 || total / u64::from(divisor) <= SCHEDULE_MAX;
                let weighted = weights.iter().filter(|w| **w > 0).count() as u128;
                for (count, w) in counts.iter().zip(&weights) {
                    // count/len against w/total, without dividing.
                    let off = (u128::from(*count) * u128::from(total)).abs_diff(u128::from(*w) * len as u128);
                    if exact {
                        prop_assert_eq!(off, 0, "counts {:?}, weights {:?}", counts, weights);
                    } else {
                        // Fitted: each weight is off by at most 1 of `len`
                        // and the sum by the number of weighted members.
                        prop_assert!(off <= (1 + weighted) * u128::from(total), "counts {:?}, weights {:?}", counts, weights);
                    }
                }
            }
        }
    }
}
