//! The health checker: polls every running (and every failed) LB node's
//! admin status at its instance's health-check interval, from one task and
//! one `JoinSet` of checks. The answer is both the node's heartbeat and its
//! load sample. It decides, and the reconciler then carries out:
//!
//! - failover: a running node that misses `unhealth-threshold` checks in a
//!   row is marked failed (the reconciler creates its replacement, swaps DNS,
//!   and deletes it after the grace period); a failed node that passes
//!   `health-threshold` checks in a row is running again (the reconciler
//!   retires the replacement);
//! - the circuit breaker: with more than a share of all nodes failing at once,
//!   no node is marked failed and an event says why;
//! - autoscaling (see `autoscale.rs`), and the monitor log's retention.

mod autoscale;
mod sample;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::drivers::node_admin::NodeAdmin;
use crate::model::scaling::failover_paused;
use crate::model::{NodeState, NodeStatus, OperatingStatus};
use crate::store::{self, EventSubject, InstanceRow, NodeRow, Retention, Store};
use autoscale::Autoscaler;

/// Knobs of the health checker.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// Port of every node's admin API, on the node's address.
    pub node_admin_port: u16,
    /// The failover circuit breaker trips when more than this share of all
    /// nodes fail at once.
    pub failover_max_share: f64,
    pub retention: Retention,
    /// How often retention runs.
    pub retention_every: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            node_admin_port: 9901,
            failover_max_share: 0.5,
            retention: Retention::default(),
            retention_every: Duration::from_secs(60),
        }
    }
}

/// What the checker remembers of a node between checks.
#[derive(Debug)]
struct NodeHealth {
    successes: u32,
    failures: u32,
    next_due: Instant,
    in_flight: bool,
    /// The previous answer, for rates.
    last: Option<(Instant, crate::model::NodeStats)>,
}

#[derive(Default)]
struct CheckerState {
    nodes: HashMap<i64, NodeHealth>,
    breaker_open: bool,
}

pub struct HealthChecker {
    store: Store,
    admin: Arc<dyn NodeAdmin>,
    /// Wakes the reconciler after a decision.
    wake: Arc<Notify>,
    settings: HealthSettings,
    state: Mutex<CheckerState>,
    autoscaler: Autoscaler,
}

type CheckResult = (i64, Result<NodeStatus, String>);

impl HealthChecker {
    pub fn new(
        store: Store,
        admin: Arc<dyn NodeAdmin>,
        wake: Arc<Notify>,
        settings: HealthSettings,
    ) -> Self {
        HealthChecker {
            autoscaler: Autoscaler::new(store.clone(), wake.clone()),
            store,
            admin,
            wake,
            settings,
            state: Mutex::default(),
        }
    }

    /// Checks nodes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut checks: JoinSet<CheckResult> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(self.settings.retention_every);
        loop {
            tokio::select! {
                Some(done) = checks.join_next() => match done {
                    Ok((node_id, result)) => self.apply(node_id, result),
                    Err(e) => tracing::error!("health check task failed: {e}"),
                },
                _ = tick.tick() => self.schedule(&mut checks),
                _ = retention.tick() => self.apply_retention(),
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Starts a check of every running or failed node that is due.
    fn schedule(&self, checks: &mut JoinSet<CheckResult>) {
        // Every tick reads only the node rows; instance specs (JSON) are read
        // when some node is due, which is at most once per interval.
        let nodes = match self.store.read(store::all_nodes) {
            Ok(n) => n,
            Err(e) => return tracing::warn!("health checker: {e}"),
        };
        let now = Instant::now();
        let due: Vec<NodeRow> = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.nodes.retain(|id, _| {
                nodes.iter().any(|n| {
                    n.id == *id && matches!(n.state, NodeState::Running | NodeState::Failed)
                })
            });
            nodes
                .into_iter()
                .filter(|n| matches!(n.state, NodeState::Running | NodeState::Failed))
                .filter(|n| {
                    state
                        .nodes
                        .get(&n.id)
                        .is_none_or(|h| !h.in_flight && h.next_due <= now)
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let instances: HashMap<i64, InstanceRow> = match self.store.read(store::all_instances) {
            Ok(list) => list.into_iter().map(|i| (i.id, i)).collect(),
            Err(e) => return tracing::warn!("health checker: {e}"),
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for node in due {
            let Some(inst) = instances.get(&node.instance_id) else {
                continue;
            };
            let criteria = &inst.spec.health_check.criteria;
            let health = state.nodes.entry(node.id).or_insert(NodeHealth {
                successes: 0,
                failures: 0,
                next_due: now,
                in_flight: false,
                last: None,
            });
            health.in_flight = true;
            health.next_due = now + Duration::from_secs(u64::from(criteria.interval));
            let timeout = Duration::from_secs(u64::from(criteria.timeout.max(1)));
            let admin_addr = SocketAddr::new(node.address, self.settings.node_admin_port);
            let admin = self.admin.clone();
            let (id, secret) = (node.id, node.secret.clone());
            checks.spawn(async move {
                let answer = tokio::time::timeout(timeout, admin.status(admin_addr, &secret)).await;
                let result = match answer {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
                };
                (id, result)
            });
        }
    }

    /// Applies one check's result to the node's counters and, at a
    /// threshold, to its state.
    fn apply(&self, node_id: i64, result: Result<NodeStatus, String>) {
        let read = self.store.read(|c| {
            let Some(node) = store::node_by_id(c, node_id)? else {
                return Ok(None);
            };
            Ok(store::instance_by_id(c, node.instance_id)?.map(|i| (node, i)))
        });
        let (node, inst) = match read {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => return tracing::warn!("health checker: {e}"),
        };
        let res = match result {
            Ok(status) => {
                let Some((successes, previous)) = self.count_pass(node_id, &status) else {
                    return;
                };
                self.on_answer(&node, &inst, &status, successes, previous)
            }
            Err(reason) => {
                let Some(failures) = self.count_miss(node_id) else {
                    return;
                };
                self.on_miss(&node, &inst, &reason, failures)
            }
        };
        if let Err(e) = res {
            tracing::warn!("node {node_id}: {e}");
        }
        self.check_breaker(&inst);
        if let Err(e) = self
            .store
            .read(|c| store::refresh_instance_operating(c, &inst))
        {
            tracing::warn!("instance {}: {e}", inst.name);
        }
    }

    /// Counts a passed check: consecutive passes, and the previous answer
    /// (for rates). `None` when the node is no longer tracked.
    fn count_pass(
        &self,
        node_id: i64,
        status: &NodeStatus,
    ) -> Option<(u32, Option<(Instant, crate::model::NodeStats)>)> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let health = state.nodes.get_mut(&node_id)?;
        health.in_flight = false;
        health.failures = 0;
        health.successes += 1;
        let previous = health.last.replace((Instant::now(), status.stats.clone()));
        Some((health.successes, previous))
    }

    /// Counts a missed check: consecutive misses.
    fn count_miss(&self, node_id: i64) -> Option<u32> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let health = state.nodes.get_mut(&node_id)?;
        health.in_flight = false;
        health.successes = 0;
        health.failures += 1;
        Some(health.failures)
    }

    fn on_answer(
        &self,
        node: &NodeRow,
        inst: &InstanceRow,
        status: &NodeStatus,
        successes: u32,
        previous: Option<(Instant, crate::model::NodeStats)>,
    ) -> Result<(), store::StoreError> {
        let had_previous = previous.is_some();
        let sample = sample::from_status(node.id, &status.stats, previous);
        self.store
            .read(|c| store::add_sample(c, inst.id, &sample, &status.stats))?;
        let operating = if sample.members_down > 0 {
            OperatingStatus::Degraded
        } else {
            OperatingStatus::Online
        };
        match node.state {
            NodeState::Running => {
                self.store
                    .read(|c| store::set_node_operating(c, node.id, operating))?;
                if status.config_version != node.applied_generation {
                    // The node lost its config (restarted?) or runs an older one.
                    self.store
                        .read(|c| store::set_node_applied(c, node.id, None))?;
                    self.wake.notify_one();
                }
                if had_previous {
                    self.autoscaler.observe(inst, &sample);
                }
            }
            NodeState::Failed if successes >= inst.spec.health_check.criteria.health_threshold => {
                self.store.read(|c| {
                    store::set_node_observed(c, node.id, NodeState::Running, node.pid, operating)?;
                    store::set_node_applied(c, node.id, status.config_version)
                })?;
                self.event(
                    inst,
                    Some(node.id),
                    "node_recovered",
                    &format!(
                        "node {} at {} is healthy again ({successes} checks passed) within the grace \
                         period; its replacement retires",
                        node.id, node.address
                    ),
                );
                self.wake.notify_one();
            }
            _ => {}
        }
        Ok(())
    }

    fn on_miss(
        &self,
        node: &NodeRow,
        inst: &InstanceRow,
        reason: &str,
        failures: u32,
    ) -> Result<(), store::StoreError> {
        let threshold = inst.spec.health_check.criteria.unhealth_threshold;
        tracing::debug!(node = node.id, failures, "health check missed: {reason}");
        if node.state != NodeState::Running || failures < threshold {
            return Ok(());
        }
        self.store
            .read(|c| store::set_node_operating(c, node.id, OperatingStatus::Offline))?;
        if self.breaker_trips(inst) {
            return Ok(());
        }
        self.store.read(|c| {
            store::set_node_observed(
                c,
                node.id,
                NodeState::Failed,
                node.pid,
                OperatingStatus::Offline,
            )
        })?;
        self.event(
            inst,
            Some(node.id),
            "node_failed",
            &format!(
                "node {} at {} missed {failures} health checks in a row (last: {reason}); failing over",
                node.id, node.address
            ),
        );
        self.wake.notify_one();
        Ok(())
    }

    /// Nodes failing now: failed ones awaiting deletion, and running ones
    /// that missed their last check; and all nodes that count.
    fn failing_nodes(&self) -> (usize, usize) {
        let Ok(nodes) = self.store.read(store::all_nodes) else {
            return (0, 0);
        };
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let failing = nodes
            .iter()
            .filter(|n| {
                n.state == NodeState::Failed
                    || (n.state == NodeState::Running
                        && state.nodes.get(&n.id).is_some_and(|h| h.failures > 0))
            })
            .count();
        let total = nodes
            .iter()
            .filter(|n| n.state != NodeState::Retiring)
            .count();
        (failing, total)
    }

    /// Whether failover must pause now; opening the breaker is an event.
    fn breaker_trips(&self, inst: &InstanceRow) -> bool {
        let (failing, total) = self.failing_nodes();
        if !failover_paused(failing, total, self.settings.failover_max_share) {
            return false;
        }
        let newly = !std::mem::replace(
            &mut self
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .breaker_open,
            true,
        );
        if newly {
            self.event(
                inst,
                None,
                "failover_paused",
                &format!(
                    "failover paused: {failing} of {total} nodes are failing at once (more than {:.0}%); \
                     no replacements until fewer fail",
                    self.settings.failover_max_share * 100.0
                ),
            );
        }
        true
    }

    /// Closes the breaker once few enough nodes fail.
    fn check_breaker(&self, inst: &InstanceRow) {
        if !self
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .breaker_open
        {
            return;
        }
        let (failing, total) = self.failing_nodes();
        if failover_paused(failing, total, self.settings.failover_max_share) {
            return;
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .breaker_open = false;
        self.event(
            inst,
            None,
            "failover_resumed",
            &format!("failover resumed: {failing} of {total} nodes failing"),
        );
        self.wake.notify_one();
    }

    fn apply_retention(&self) {
        let keep = self.settings.retention;
        match self
            .store
            .transaction(|tx| store::apply_retention(tx, keep, store::now()))
        {
            Ok(r) if r != store::RetentionReport::default() => {
                tracing::debug!(?r, "monitor log retention")
            }
            Ok(_) => {}
            Err::<_, store::StoreError>(e) => tracing::warn!("monitor log retention: {e}"),
        }
    }

    fn event(&self, inst: &InstanceRow, node_id: Option<i64>, kind: &str, message: &str) {
        event(&self.store, inst, node_id, kind, message);
    }
}

/// Records an event about an instance (and maybe one of its nodes); the
/// monitor log must never stop the checker.
fn event(store: &Store, inst: &InstanceRow, node_id: Option<i64>, kind: &str, message: &str) {
    tracing::info!(kind, instance = %inst.name, "{message}");
    let subject = EventSubject {
        project_id: Some(inst.project_id),
        instance_id: Some(inst.id),
        node_id,
    };
    if let Err(e) = store.read(|c| store::add_event(c, subject, kind, message)) {
        tracing::warn!("cannot record event {kind}: {e}");
    }
}
