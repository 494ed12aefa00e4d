//! lbd's managed backends (issue 16): it starts a pool's backends when a
//! node asks for them (a `Wake` on the node's `GET /events` stream) and
//! stops them when the nodes report them idle.
//!
//! - [`decide`]: the pure decisions (start on wake, top up `min`, idle victims, addresses);
//! - [`ready`]: the `ready` check of a starting backend;
//! - [`events`]: one `GET /events` per running node of a managed or
//!   federation instance (the latter's learned mappings go to
//!   `crate::federation`);
//! - [`lifecycle`]: start → ready (or failed) → stopped, each step recorded and pushed;
//! - [`push`]: `PUT /managed` of an instance's whole state to its nodes;
//! - [`tick`]: the once-a-second pass (streams, idle, `min`, exits, re-push);
//! - [`adopt`]: what a restarted lbd finds (rows, live processes, orphans).

mod adopt;
pub mod decide;
mod events;
mod lifecycle;
mod push;
pub mod ready;
mod tick;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use crate::drivers::backend::BackendDriver;
use crate::drivers::network::NetworkDriver;
use crate::drivers::node_admin::NodeAdminClient;
use crate::model::wake::{ManagedTarget, WakeDemand};
use crate::model::InstanceId;
use crate::store::Store;

/// What the node streams tell the manager's loop.
#[derive(Debug)]
pub(crate) enum Signal {
    Wake(InstanceId, WakeDemand),
    /// A node (re)connected with a managed version other than the last pushed.
    Resync(InstanceId),
}

/// A target's start failures since this lbd started (only grows).
#[derive(Debug, Clone, Default)]
pub(crate) struct Failures {
    pub count: u64,
    pub last: Option<String>,
}

pub struct ManagerSettings {
    pub node_admin_port: u16,
    /// How long backend lifetime rows are kept (the monitor log's event retention).
    pub lifetime_retention_s: i64,
    /// How long a backend on a changed template keeps its open requests
    /// after its replacement serves (`--drain-timeout`).
    pub replace_drain: Duration,
}

/// The state shared by the loop and the tasks it spawns.
pub(crate) struct Shared {
    pub store: Store,
    pub driver: Arc<dyn BackendDriver>,
    pub admin: NodeAdminClient,
    pub network: Arc<dyn NetworkDriver>,
    pub settings: ManagerSettings,
    pub failures: Mutex<HashMap<(InstanceId, ManagedTarget), Failures>>,
    /// Backends on a changed template, and when their replacement first
    /// served (they drain from then; see `tick::replace_stale`).
    pub replaced_at: Mutex<HashMap<i64, i64>>,
    /// The managed version last pushed per instance.
    pub versions: Mutex<HashMap<InstanceId, u64>>,
    /// One push at a time per instance, so versions reach nodes in order.
    pub push_locks: Mutex<HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>>,
    pub signals: mpsc::Sender<Signal>,
    /// Federation mappings: what nodes learn goes there; each tick catches
    /// lagging nodes up (`None` in tests that need no federation).
    pub mappings: Option<Arc<crate::federation::MappingSync>>,
    /// A pass's node work is under way (see `tick`).
    pub busy: AtomicBool,
    pub ticks: AtomicU64,
}

impl Shared {
    pub fn failures_of(&self, instance: InstanceId) -> Vec<(ManagedTarget, Failures)> {
        lock(&self.failures)
            .iter()
            .filter(|((i, _), _)| *i == instance)
            .map(|((_, t), f)| (t.clone(), f.clone()))
            .collect()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Manager {
    shared: Arc<Shared>,
    signals: mpsc::Receiver<Signal>,
    /// Notified when a node starts serving, so its events stream opens at
    /// once instead of at the next tick: a request held on a new node
    /// (just created, or a failover's replacement) wakes without waiting.
    nodes_serving: Arc<Notify>,
}

impl Manager {
    pub fn new(
        store: Store,
        driver: Arc<dyn BackendDriver>,
        admin: NodeAdminClient,
        network: Arc<dyn NetworkDriver>,
        settings: ManagerSettings,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        Manager {
            shared: Arc::new(Shared {
                store,
                driver,
                admin,
                network,
                settings,
                failures: Mutex::default(),
                replaced_at: Mutex::default(),
                versions: Mutex::default(),
                push_locks: Mutex::default(),
                signals: tx,
                mappings: None,
                busy: AtomicBool::new(false),
                ticks: AtomicU64::new(0),
            }),
            signals: rx,
            nodes_serving: Arc::new(Notify::new()),
        }
    }

    /// Follows the event streams of federation instances too, storing
    /// and sharing what their nodes learn (issue 18).
    pub fn with_mappings(mut self, mappings: Arc<crate::federation::MappingSync>) -> Self {
        Arc::get_mut(&mut self.shared)
            .expect("set before the manager runs")
            .mappings = Some(mappings);
        self
    }

    /// Ticks also when `serving` is notified (the reconciler's signal).
    pub fn with_nodes_serving(mut self, serving: Arc<Notify>) -> Self {
        self.nodes_serving = serving;
        self
    }

    /// Adopts what a previous lbd left, then serves wakes and ticks until
    /// `stop` turns true. Backends keep running after it returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        adopt::adopt(&self.shared).await;
        let mut streams = events::Streams::default();
        let mut every_second = tokio::time::interval(Duration::from_secs(1));
        every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // The select only picks (a watch::Ref must not live across an await).
            let next = tokio::select! {
                _ = stop.wait_for(|s| *s) => None,
                Some(signal) = self.signals.recv() => Some(Some(signal)),
                _ = every_second.tick() => Some(None),
                _ = self.nodes_serving.notified() => Some(None),
            };
            match next {
                None => break,
                Some(Some(Signal::Wake(instance, demand))) => {
                    lifecycle::on_wake(&self.shared, instance, demand).await
                }
                Some(Some(Signal::Resync(instance))) => push::spawn_push(&self.shared, instance),
                Some(None) => tick::tick(&self.shared, &mut streams).await,
            }
        }
        streams.stop_all();
    }
}
