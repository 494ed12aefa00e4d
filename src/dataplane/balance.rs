//! Choosing a member: smooth weighted round robin, precomputed into a
//! schedule at config time so a pick is one atomic increment.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use super::stats::MemberCounters;
use crate::model::{BackendMember, MemberStats};

pub struct Member {
    pub address: SocketAddr,
    pub weight: u32,
    pub counters: Arc<MemberCounters>,
}

pub struct Balancer {
    members: Vec<Member>,
    /// Member indexes in smooth-WRR order; weight-0 members never appear.
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(backends: &[BackendMember], counters: Vec<Arc<MemberCounters>>) -> Balancer {
        let members: Vec<Member> = backends
            .iter()
            .zip(counters)
            .map(|(b, counters)| Member {
                address: b.address,
                weight: b.weight,
                counters,
            })
            .collect();
        let schedule = smooth_wrr(&members.iter().map(|m| m.weight).collect::<Vec<_>>());
        Balancer {
            members,
            schedule,
            next: AtomicUsize::new(0),
        }
    }

    /// The members in the order to try them for one request: the scheduled
    /// one first, then the others (for retries), skipping weight 0.
    pub fn pick(&self) -> Option<&Member> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Relaxed);
        Some(&self.members[self.schedule[n % self.schedule.len()]])
    }

    /// The members after `first` in list order, for a retry elsewhere.
    pub fn others<'a>(&'a self, first: &'a Member) -> impl Iterator<Item = &'a Member> + 'a {
        self.members
            .iter()
            .filter(move |m| m.weight > 0 && m.address != first.address)
    }

    pub fn member_stats(&self) -> Vec<MemberStats> {
        self.members
            .iter()
            .map(|m| MemberStats {
                address: m.address,
                state: if m.weight == 0 {
                    "draining".into()
                } else {
                    "up".into()
                },
                requests: m.counters.requests.load(Relaxed),
                failures: m.counters.failures.load(Relaxed),
                active: m.counters.active.load(Relaxed),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(weights: &[u32]) -> Balancer {
        let backends: Vec<BackendMember> = weights
            .iter()
            .enumerate()
            .map(|(i, w)| BackendMember {
                address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                weight: *w,
            })
            .collect();
        let counters = backends.iter().map(|_| Arc::default()).collect();
        Balancer::new(&backends, counters)
    }

    #[test]
    fn weights_give_proportions_and_zero_is_never_picked() {
        let b = balancer(&[1, 2, 0]);
        let mut counts = [0; 3];
        for _ in 0..300 {
            let m = b.pick().unwrap();
            counts[(m.address.port() - 9000) as usize] += 1;
        }
        assert_eq!(counts, [100, 200, 0]);
    }

    #[test]
    fn smooth_order_interleaves() {
        assert_eq!(smooth_wrr(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wrr(&[1, 1, 1]), vec![0, 1, 2]);
        assert!(smooth_wrr(&[0, 0]).is_empty());
    }

    #[test]
    fn all_drained_picks_nothing() {
        assert!(balancer(&[0, 0]).pick().is_none());
        let b = balancer(&[1, 0, 1]);
        let first = b.pick().unwrap();
        assert_eq!(b.others(first).count(), 1);
    }
}
