//! One managed target's wake queue: requests (or TCP connections) held in
//! arrival order while the target has no ready member, released all at
//! once by the `PUT /managed` that brings one, failed at once by the one
//! that reports a start failure, each leaving on its own at `max_wait_ms`.
//! No polling: a held request waits on its own oneshot channel.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// How a hold ended, as the held request sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// A member is ready: send the request.
    Released,
    /// The backend failed to start: answer 503 with this reason.
    Failed(String),
    /// The target went away (its pool is no longer managed).
    Gone,
}

/// Why a request could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max_requests` are held already: 503 with `Retry-After`.
    Full,
}

struct Held {
    id: u64,
    release: oneshot::Sender<HoldOutcome>,
}

#[derive(Default)]
struct Inner {
    held: VecDeque<Held>,
    next_id: u64,
    /// Whether the target has a ready member now (set by `PUT /managed`
    /// under the same lock as the release, so no hold misses a release).
    ready: bool,
}

/// The bounded FIFO of one target.
#[derive(Default)]
pub struct WakeQueue {
    inner: Mutex<Inner>,
}

/// A place in the queue; dropping it (the client went away, the wait timed
/// out) gives the place back.
pub struct Ticket<'a> {
    queue: &'a WakeQueue,
    id: u64,
    pub outcome: oneshot::Receiver<HoldOutcome>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut inner = self.queue.lock();
        if let Some(i) = inner.held.iter().position(|h| h.id == self.id) {
            inner.held.remove(i);
        }
    }
}

/// What `enter` decided.
pub enum Entry<'a> {
    /// A member became ready meanwhile: no need to wait.
    Ready,
    Held(Ticket<'a>),
    Refused(Refused),
}

impl WakeQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds a request unless a member is ready or `max` are held already.
    pub fn enter(&self, max: u32) -> Entry<'_> {
        let mut inner = self.lock();
        if inner.ready {
            return Entry::Ready;
        }
        if inner.held.len() >= max as usize {
            return Entry::Refused(Refused::Full);
        }
        let (release, outcome) = oneshot::channel();
        let id = inner.next_id;
        inner.next_id += 1;
        inner.held.push_back(Held { id, release });
        Entry::Held(Ticket {
            queue: self,
            id,
            outcome,
        })
    }

    /// Requests held now.
    pub fn len(&self) -> usize {
        self.lock().held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records whether a member is ready; with one, releases every held
    /// request in arrival order. Returns how many were released.
    pub fn set_ready(&self, ready: bool) -> usize {
        let mut inner = self.lock();
        inner.ready = ready;
        if !ready {
            return 0;
        }
        Self::release_all(&mut inner, HoldOutcome::Released)
    }

    /// Ends every hold with `outcome` (a start failure, the target gone).
    pub fn fail_all(&self, outcome: HoldOutcome) -> usize {
        Self::release_all(&mut self.lock(), outcome)
    }

    fn release_all(inner: &mut Inner, outcome: HoldOutcome) -> usize {
        let mut n = 0;
        for held in inner.held.drain(..) {
            // A receiver gone is a request that left; nothing to tell it.
            if held.release.send(outcome.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(e: Entry<'_>) -> Ticket<'_> {
        match e {
            Entry::Held(t) => t,
            _ => panic!("not held"),
        }
    }

    #[test]
    fn release_is_in_arrival_order_and_empties_the_queue() {
        let q = WakeQueue::default();
        let mut tickets: Vec<_> = (0..3).map(|_| held(q.enter(10))).collect();
        assert_eq!(q.len(), 3);
        // The order of sends is the order of arrival: check the ids too.
        let ids: Vec<u64> = q.lock().held.iter().map(|h| h.id).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(q.set_ready(true), 3);
        for t in &mut tickets {
            assert_eq!(t.outcome.try_recv().unwrap(), HoldOutcome::Released);
        }
        assert!(q.is_empty());
        assert!(matches!(q.enter(10), Entry::Ready));
    }

    #[test]
    fn a_full_queue_refuses() {
        let q = WakeQueue::default();
        let _a = held(q.enter(2));
        let _b = held(q.enter(2));
        assert!(matches!(q.enter(2), Entry::Refused(Refused::Full)));
    }

    #[test]
    fn a_ticket_dropped_gives_its_place_back() {
        let q = WakeQueue::default();
        let a = held(q.enter(1));
        drop(a);
        assert!(q.is_empty());
        let _b = held(q.enter(1));
    }

    #[test]
    fn a_failure_ends_every_hold_with_its_reason() {
        let q = WakeQueue::default();
        let mut a = held(q.enter(5));
        let mut b = held(q.enter(5));
        assert_eq!(q.fail_all(HoldOutcome::Failed("exit 1".into())), 2);
        for t in [&mut a, &mut b] {
            assert_eq!(
                t.outcome.try_recv().unwrap(),
                HoldOutcome::Failed("exit 1".into())
            );
        }
        assert!(matches!(q.enter(5), Entry::Held(_)), "still not ready");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_times_out_and_leaves_the_queue() {
        let q = WakeQueue::default();
        let mut t = held(q.enter(5));
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(300), &mut t.outcome).await;
        assert!(waited.is_err());
        drop(t);
        assert!(q.is_empty());
    }
}
