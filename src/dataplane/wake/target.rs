//! One managed target on the node: its limits, its wake queue, the demand
//! it reports to lbd and the cold-start figures it shows in `/status`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::demand::{over_target, Throttle};
use super::queue::{Entry, HoldOutcome, Refused, WakeQueue};
use crate::dataplane::stats::now_ms;
use crate::model::managed::NodeManagedPool;
use crate::model::wake::{
    ManagedPoolStats, ManagedTarget, ManagedTargetState, MsHistogram, NodeEvent, WakeDemand,
};

/// Why a held request gets the node's own answer instead of a member's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldError {
    /// `max_requests` held already (503, `Retry-After`).
    Full,
    /// `max_wait_ms` passed (504).
    Timeout(u32),
    /// The backend failed to start (503, `X-Lbaas-Wake-Error`).
    StartFailed(String),
    /// The pool stopped being managed while the request waited (503).
    Gone,
}

#[derive(Default)]
struct Figures {
    cold_starts: u64,
    queue_full: u64,
    wait_timeouts: u64,
    start_failures: u64,
    cold_start_ms: Option<MsHistogram>,
    last_cold_start_ms: Option<u64>,
}

pub struct Target {
    pub pool: String,
    /// The resource of a `per_resource` pool; `None`: the whole pool.
    pub resource: Option<String>,
    max_requests: AtomicU32,
    max_wait_ms: AtomicU32,
    target_in_flight: AtomicU32,
    queue: WakeQueue,
    /// Requests for the target between the wake stage and their response
    /// head, held ones included.
    in_flight: AtomicU32,
    /// Members pushed by the last `PUT /managed`.
    ready: AtomicU32,
    /// The `failures` of the last `PUT /managed`: when it grows, holds fail.
    /// [`FAILURES_UNKNOWN`] until the first push, which only sets it: lbd's
    /// count is the pool's whole history, and a node (or a target) made
    /// after some failures must not fail its first holds for them.
    failures_seen: AtomicU64,
    throttle: Throttle,
    figures: Mutex<Figures>,
    events: broadcast::Sender<NodeEvent>,
}

const FAILURES_UNKNOWN: u64 = u64::MAX;

/// A request counted in the target's in-flight figure while it lives.
pub struct InFlight<'a>(&'a Target);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Target {
    pub fn new(
        pool: String,
        limits: &NodeManagedPool,
        events: broadcast::Sender<NodeEvent>,
    ) -> Target {
        let t = Target {
            pool,
            resource: None,
            max_requests: AtomicU32::new(0),
            max_wait_ms: AtomicU32::new(0),
            target_in_flight: AtomicU32::new(0),
            queue: WakeQueue::default(),
            in_flight: AtomicU32::new(0),
            ready: AtomicU32::new(0),
            failures_seen: AtomicU64::new(FAILURES_UNKNOWN),
            throttle: Throttle::default(),
            figures: Mutex::default(),
            events,
        };
        t.set_limits(limits);
        t
    }

    /// The target of one resource of a `per_resource` pool.
    pub fn for_resource(
        pool: String,
        resource: String,
        limits: &NodeManagedPool,
        events: broadcast::Sender<NodeEvent>,
    ) -> Target {
        Target {
            resource: Some(resource),
            ..Target::new(pool, limits, events)
        }
    }

    /// Nothing holds it, waits in it or is sent through it: a resource
    /// target that may be forgotten to make room for another.
    pub fn is_free(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
            && self.ready.load(Relaxed) == 0
            && self.in_flight.load(Relaxed) == 0
            && self.queue.is_empty()
    }

    pub fn set_limits(&self, limits: &NodeManagedPool) {
        self.max_requests.store(limits.queue.max_requests, Relaxed);
        self.max_wait_ms.store(limits.queue.max_wait_ms, Relaxed);
        self.target_in_flight
            .store(limits.target_in_flight.max(1), Relaxed);
    }

    fn figures(&self) -> std::sync::MutexGuard<'_, Figures> {
        self.figures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a request in flight, and asks for another backend when the
    /// ready ones carry more than `target_in_flight` each.
    pub fn in_flight(&self) -> InFlight<'_> {
        let n = self.in_flight.fetch_add(1, Relaxed) + 1;
        let ready = self.ready.load(Relaxed);
        if ready > 0 && over_target(n, ready, self.target_in_flight.load(Relaxed)) {
            self.demand(false);
        }
        InFlight(self)
    }

    /// Sends a `Wake` if the throttle allows; a send with no subscriber
    /// (lbd not connected) is not an error: the next one will be seen.
    fn demand(&self, urgent: bool) {
        if !self.throttle.due(now_ms(), urgent) {
            return;
        }
        let _ = self.events.send(NodeEvent::Wake(WakeDemand {
            target: ManagedTarget {
                pool: self.pool.clone(),
                resource: self.resource.clone(),
            },
            queued: self.queue.len() as u32,
            in_flight: self.in_flight.load(Relaxed),
            ready: self.ready.load(Relaxed),
        }));
    }

    /// Whether the target has no member to send to.
    pub fn asleep(&self) -> bool {
        self.ready.load(Relaxed) == 0
    }

    /// Waits until a member is ready. `Ok(Some(ms))`: it waited that long
    /// (the cold start to report); `Ok(None)`: a member was ready already.
    pub async fn hold(&self) -> Result<Option<u64>, HoldError> {
        let mut ticket = match self.queue.enter(self.max_requests.load(Relaxed)) {
            Entry::Ready => return Ok(None),
            Entry::Refused(Refused::Full) => {
                self.figures().queue_full += 1;
                return Err(HoldError::Full);
            }
            Entry::Held(ticket) => ticket,
        };
        self.demand(self.queue.len() == 1);
        let started = Instant::now();
        let max_wait = self.max_wait_ms.load(Relaxed);
        let waited = tokio::time::timeout(
            Duration::from_millis(u64::from(max_wait)),
            &mut ticket.outcome,
        )
        .await;
        let outcome = match waited {
            Err(_) => {
                self.figures().wait_timeouts += 1;
                return Err(HoldError::Timeout(max_wait));
            }
            Ok(Err(_)) => HoldOutcome::Gone,
            Ok(Ok(outcome)) => outcome,
        };
        match outcome {
            HoldOutcome::Released => {
                let ms = started.elapsed().as_millis() as u64;
                let mut f = self.figures();
                f.cold_starts += 1;
                f.cold_start_ms
                    .get_or_insert_with(MsHistogram::cold_start)
                    .observe(ms);
                f.last_cold_start_ms = Some(ms);
                Ok(Some(ms))
            }
            HoldOutcome::Failed(reason) => {
                self.figures().start_failures += 1;
                Err(HoldError::StartFailed(reason))
            }
            HoldOutcome::Gone => Err(HoldError::Gone),
        }
    }

    /// The target's part of a `PUT /managed` (`None`: absent, no members),
    /// applied after the balancers with its members are in force.
    pub fn update(&self, state: Option<&ManagedTargetState>) {
        let members = state.map_or(0, |s| s.members.len() as u32);
        let failures = state.map_or(0, |s| s.failures);
        self.ready.store(members, Relaxed);
        let seen = self.failures_seen.swap(failures, Relaxed);
        if seen != FAILURES_UNKNOWN && failures > seen && members == 0 {
            let reason = state
                .and_then(|s| s.last_failure.clone())
                .unwrap_or_else(|| "the backend failed to start".into());
            self.queue.fail_all(HoldOutcome::Failed(reason));
        }
        self.queue.set_ready(members > 0);
    }

    /// Takes in the failures lbd reported so far, without releasing or
    /// failing anything: a target made after them must not fail its first
    /// hold for an old failure.
    pub fn seen_failures(&self, state: Option<&ManagedTargetState>) {
        self.failures_seen
            .store(state.map_or(0, |s| s.failures), Relaxed);
    }

    /// The pool is no longer managed: nothing held may wait for it.
    pub fn retire(&self) {
        self.queue.fail_all(HoldOutcome::Gone);
    }

    pub fn stats(&self) -> ManagedPoolStats {
        let f = self.figures();
        ManagedPoolStats {
            pool: self.pool.clone(),
            resource: self.resource.clone(),
            ready: self.ready.load(Relaxed),
            queued: self.queue.len() as u32,
            cold_starts: f.cold_starts,
            queue_full: f.queue_full,
            wait_timeouts: f.wait_timeouts,
            start_failures: f.start_failures,
            cold_start_ms: f
                .cold_start_ms
                .clone()
                .unwrap_or_else(MsHistogram::cold_start),
            last_cold_start_ms: f.last_cold_start_ms,
        }
    }
}

/// Shared so that the request path holds an `Arc` across configs.
pub type TargetRef = Arc<Target>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::managed::QueueLimits;
    use crate::model::BackendMember;

    fn limits(max_requests: u32, max_wait_ms: u32) -> NodeManagedPool {
        NodeManagedPool {
            queue: QueueLimits {
                max_requests,
                max_wait_ms,
            },
            target_in_flight: 2,
            max: 3,
            per_resource: None,
        }
    }

    fn state(members: usize, failures: u64) -> ManagedTargetState {
        ManagedTargetState {
            target: ManagedTarget {
                pool: "default".into(),
                resource: None,
            },
            members: (0..members)
                .map(|i| BackendMember {
                    address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    weight: 1,
                })
                .collect(),
            starting: 0,
            failures,
            last_failure: Some("exit status 1\r\nlast line".into()),
        }
    }

    fn target(l: NodeManagedPool) -> (Arc<Target>, broadcast::Receiver<NodeEvent>) {
        let (tx, rx) = broadcast::channel(16);
        (Arc::new(Target::new("default".into(), &l, tx)), rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_wakes_lbd_and_is_released_by_a_member() {
        let (t, mut rx) = target(limits(10, 30_000));
        let held = tokio::spawn({
            let t = t.clone();
            async move { t.hold().await }
        });
        let NodeEvent::Wake(d) = rx.recv().await.unwrap() else {
            panic!("a wake")
        };
        assert_eq!((d.queued, d.ready), (1, 0));
        t.update(Some(&state(1, 0)));
        assert!(held.await.unwrap().unwrap().is_some());
        assert_eq!(t.stats().cold_starts, 1);
        assert_eq!(t.hold().await, Ok(None), "awake: no hold");
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_ends_a_hold() {
        let (t, _rx) = target(limits(10, 300));
        assert_eq!(t.hold().await, Err(HoldError::Timeout(300)));
        assert_eq!(t.stats().wait_timeouts, 1);
        assert_eq!(t.stats().queued, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_that_grows_fails_every_hold() {
        let (t, _rx) = target(limits(10, 30_000));
        let holds: Vec<_> = (0..3)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move { t.hold().await })
            })
            .collect();
        while t.stats().queued < 3 {
            tokio::task::yield_now().await;
        }
        t.update(Some(&state(0, 0)));
        assert_eq!(t.stats().queued, 3, "no new failure: still held");
        t.update(Some(&state(0, 1)));
        for h in holds {
            assert!(matches!(h.await.unwrap(), Err(HoldError::StartFailed(_))));
        }
        assert_eq!(t.stats().start_failures, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_push_only_sets_the_failure_baseline() {
        let (t, _rx) = target(limits(10, 30_000));
        let held = tokio::spawn({
            let t = t.clone();
            async move { t.hold().await }
        });
        while t.stats().queued < 1 {
            tokio::task::yield_now().await;
        }
        // A new node learns of 4 old failures: none of them is this hold's.
        t.update(Some(&state(0, 4)));
        assert_eq!(t.stats().queued, 1, "an old failure fails nothing");
        t.update(Some(&state(0, 5)));
        assert!(matches!(
            held.await.unwrap(),
            Err(HoldError::StartFailed(_))
        ));
    }

    #[tokio::test]
    async fn scale_up_demand_is_throttled() {
        let (t, mut rx) = target(limits(10, 30_000));
        t.update(Some(&state(1, 0)));
        let guards: Vec<_> = (0..5).map(|_| t.in_flight()).collect();
        let NodeEvent::Wake(d) = rx.try_recv().unwrap() else {
            panic!("a wake")
        };
        assert_eq!((d.in_flight, d.ready), (3, 1));
        assert!(rx.try_recv().is_err(), "one wake per interval");
        drop(guards);
    }
}
