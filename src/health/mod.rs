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
//! - failover at once: a running node whose process the compute driver saw
//!   end by itself (its reaper, [`NodeExit`]) is marked failed as soon as
//!   that is reported, without waiting for missed checks, which stay the
//!   detector for hung nodes;
//! - the circuit breaker: with more than a share of all nodes failing at once,
//!   no node is marked failed and an event says why;
//! - autoscaling (see `autoscale.rs`), and the monitor log's retention.
//!
//! Each decision (`decision.rs`) is one transaction: the guarded state move
//! and its event. While the store cannot be written (another process holds
//! its lock), checks go on, decisions wait in memory and are written as soon
//! as it can be; a lost load sample is acceptable, a lost failover is not.

mod autoscale;
mod batch;
mod decision;
mod sample;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock, so logic tests can pause and advance it.
use tokio::time::Instant;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::drivers::compute::NodeExit;
use crate::drivers::node_admin::NodeAdmin;
use crate::model::scaling::failover_paused;
use crate::model::{
    EventKind, HealthCriteria, HealthStreak, InstanceId, NodeId, NodeState, NodeStats, NodeStatus,
    OperatingStatus,
};
use crate::store::{self, EventSubject, InstanceRow, NodeRow, Retention, Store, StoreError};
use autoscale::Autoscaler;
use batch::{rows_of, SampleWrite};
use decision::Decision;

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
    /// The quota of users whose own limits do not say: the autoscaler
    /// never takes a user past `max_nodes`.
    pub default_quota: crate::model::Quota,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            node_admin_port: 9901,
            failover_max_share: 0.5,
            retention: Retention::default(),
            retention_every: Duration::from_secs(60),
            default_quota: crate::model::Quota::UNLIMITED,
        }
    }
}

/// What the checker remembers of a node between checks.
#[derive(Debug)]
struct NodeHealth {
    streak: HealthStreak,
    next_due: Instant,
    in_flight: bool,
    /// The previous answer, for rates.
    last: Option<(Instant, NodeStats)>,
}

#[derive(Default)]
struct CheckerState {
    nodes: HashMap<NodeId, NodeHealth>,
    breaker_open: bool,
    /// Decisions the store could not take yet (it was locked), newest per node.
    pending: HashMap<NodeId, Decision>,
    /// Nodes whose process ended and that are not failed yet: running ones
    /// the breaker holds (they count as failing), and starting ones that a
    /// pass may still mark running. Tried again every tick.
    exited: HashMap<NodeId, NodeExit>,
    /// Each instance's health-check criteria, with the generation they were
    /// read at.
    criteria: HashMap<InstanceId, (u64, HealthCriteria)>,
}

pub struct HealthChecker {
    store: Store,
    admin: Arc<dyn NodeAdmin>,
    /// Wakes the reconciler after a decision.
    wake: Arc<Notify>,
    settings: HealthSettings,
    state: Mutex<CheckerState>,
    autoscaler: Autoscaler,
    /// The compute driver's exit reports, taken by `run`.
    exits: Mutex<Option<mpsc::UnboundedReceiver<NodeExit>>>,
}

type CheckResult = (NodeId, Result<NodeStatus, String>);

/// Why the checker's loop woke up.
enum Wakeup {
    Checked(Box<Result<CheckResult, tokio::task::JoinError>>),
    /// Nodes whose process ended, all that were reported by now.
    Exited(Vec<NodeExit>),
    Tick,
    Retention,
}

impl HealthChecker {
    pub fn new(
        store: Store,
        admin: Arc<dyn NodeAdmin>,
        wake: Arc<Notify>,
        settings: HealthSettings,
    ) -> Self {
        HealthChecker {
            autoscaler: Autoscaler::new(store.clone(), wake.clone(), settings.default_quota),
            store,
            admin,
            wake,
            settings,
            state: Mutex::default(),
            exits: Mutex::default(),
        }
    }

    /// Fails over the nodes reported here at once (the compute driver's
    /// [`crate::drivers::compute::ComputeDriver::report_exits`]).
    pub fn with_exits(self, exits: mpsc::UnboundedReceiver<NodeExit>) -> Self {
        *self.exits.lock().unwrap_or_else(|p| p.into_inner()) = Some(exits);
        self
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CheckerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks nodes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut checks: JoinSet<CheckResult> = JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retention = tokio::time::interval(self.settings.retention_every);
        let mut exits = self.exits.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Results wait here for the next tick (at most 100 ms): one read and
        // one transaction for all of them instead of a few per check.
        let mut finished: Vec<CheckResult> = Vec::new();
        loop {
            let wakeup = tokio::select! {
                Some(done) = checks.join_next() => Wakeup::Checked(Box::new(done)),
                Some(batch) = next_exits(&mut exits) => Wakeup::Exited(batch),
                _ = tick.tick() => Wakeup::Tick,
                _ = retention.tick() => Wakeup::Retention,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match wakeup {
                Wakeup::Checked(done) => match *done {
                    Ok(result) => finished.push(result),
                    Err(e) => tracing::error!("health check task failed: {e}"),
                },
                Wakeup::Exited(batch) => self.on_exits(batch).await,
                Wakeup::Tick => {
                    self.apply(std::mem::take(&mut finished)).await;
                    self.write_pending().await;
                    self.retry_exits().await;
                    self.schedule(&mut checks).await;
                }
                Wakeup::Retention => self.apply_retention().await,
            }
        }
    }

    /// Decisions still waiting for the store (for tests and `lbd`'s log).
    pub fn pending_decisions(&self) -> usize {
        self.state().pending.len()
    }

    /// Starts a check of every running or failed node that is due.
    async fn schedule(&self, checks: &mut JoinSet<CheckResult>) {
        // Every tick reads only the node rows; instance specs (JSON) are read
        // when some node is due, which is at most once per interval.
        let nodes = match self.store.read(store::all_nodes).await {
            Ok(n) => n,
            Err(e) => return tracing::warn!("health checker: {e}"),
        };
        let due = self.due_nodes(nodes, Instant::now());
        if due.is_empty() {
            return;
        }
        if let Err(e) = self.refresh_criteria(&due).await {
            return tracing::warn!("health checker: {e}");
        }
        let now = Instant::now();
        let mut state = self.state();
        for node in due {
            let Some((_, criteria)) = state.criteria.get(&node.instance_id).cloned() else {
                continue;
            };
            let criteria = &criteria;
            let health = state.nodes.entry(node.id).or_insert(NodeHealth {
                streak: HealthStreak::default(),
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

    /// Brings the cached health-check criteria of the due nodes' instances
    /// up to date: one read of every instance's generation, and the spec
    /// only of those that changed (a spec is JSON, and this runs every tick).
    async fn refresh_criteria(&self, due: &[NodeRow]) -> Result<(), StoreError> {
        let known: HashMap<InstanceId, u64> = self
            .state()
            .criteria
            .iter()
            .map(|(id, (generation, _))| (*id, *generation))
            .collect();
        let wanted: std::collections::HashSet<InstanceId> =
            due.iter().map(|n| n.instance_id).collect();
        let (generations, fresh) = self
            .store
            .read(move |c| {
                let generations = store::instance_generations(c)?;
                let mut fresh = Vec::new();
                for id in wanted {
                    let Some(&generation) = generations.get(&id) else {
                        continue;
                    };
                    if known.get(&id) == Some(&generation) {
                        continue;
                    }
                    if let Some(inst) = store::instance_by_id(c, id)? {
                        // The row's own generation: the spec read is that one.
                        fresh.push((id, inst.generation, inst.spec.health_check.criteria));
                    }
                }
                Ok::<_, StoreError>((generations, fresh))
            })
            .await?;
        let mut state = self.state();
        state.criteria.retain(|id, _| generations.contains_key(id));
        for (id, generation, criteria) in fresh {
            state.criteria.insert(id, (generation, criteria));
        }
        Ok(())
    }

    /// The running and failed nodes whose next check is due; forgets nodes
    /// that are gone or no longer checked.
    fn due_nodes(&self, nodes: Vec<NodeRow>, now: Instant) -> Vec<NodeRow> {
        let checked = |s: &NodeState| {
            matches!(
                s,
                NodeState::Running | NodeState::Standby | NodeState::Failed
            )
        };
        let states: HashMap<NodeId, NodeState> = nodes.iter().map(|n| (n.id, n.state)).collect();
        let mut state = self.state();
        state
            .nodes
            .retain(|id, _| states.get(id).is_some_and(checked));
        state.exited.retain(|id, _| {
            states.get(id).is_some_and(|s| {
                matches!(
                    s,
                    NodeState::Running | NodeState::Starting | NodeState::Standby
                )
            })
        });
        nodes
            .into_iter()
            .filter(|n| checked(&n.state))
            .filter(|n| {
                state
                    .nodes
                    .get(&n.id)
                    .is_none_or(|h| !h.in_flight && h.next_due <= now)
            })
            .collect()
    }

    /// Applies check results to the nodes' counters and, at a threshold, to
    /// their states: one read of their rows, the counters and decisions,
    /// then one transaction for every running node's sample and every
    /// instance's operating status.
    async fn apply(&self, results: Vec<CheckResult>) {
        if results.is_empty() {
            return;
        }
        let ids: Vec<NodeId> = results.iter().map(|(id, _)| *id).collect();
        let rows = match self.store.read(move |c| rows_of(c, ids)).await {
            Ok(rows) => rows,
            Err(e) => {
                // Unknown now; the nodes are checked again at their next interval.
                for (id, _) in &results {
                    self.forget_check(*id);
                }
                return tracing::warn!("health checker: {e}");
            }
        };
        let mut samples = Vec::new();
        let mut touched: HashMap<InstanceId, &InstanceRow> = HashMap::new();
        for (node_id, result) in results {
            let Some((node, inst)) = rows.node(node_id) else {
                continue;
            };
            let res = match result {
                Ok(status) => {
                    let Some((successes, previous)) = self.count_pass(node_id, &status) else {
                        continue;
                    };
                    self.on_answer(node, inst, status, successes, previous, &mut samples)
                        .await
                }
                Err(reason) => {
                    let Some(failures) = self.count_miss(node_id) else {
                        continue;
                    };
                    self.on_miss(node, inst, &reason, failures).await
                }
            };
            if let Err(e) = res {
                tracing::warn!("node {node_id}: {e}");
            }
            touched.insert(inst.id, inst);
        }
        let instances: Vec<InstanceRow> = touched.values().map(|i| (*i).clone()).collect();
        self.record_samples(samples, instances).await;
        for inst in touched.values() {
            self.check_breaker(inst).await;
        }
    }

    fn forget_check(&self, node_id: NodeId) {
        if let Some(h) = self.state().nodes.get_mut(&node_id) {
            h.in_flight = false;
        }
    }

    /// Counts a passed check: consecutive passes, and the previous answer
    /// (for rates). `None` when the node is no longer tracked.
    fn count_pass(
        &self,
        node_id: NodeId,
        status: &NodeStatus,
    ) -> Option<(u32, Option<(Instant, NodeStats)>)> {
        let mut state = self.state();
        let health = state.nodes.get_mut(&node_id)?;
        health.in_flight = false;
        let passes = health.streak.pass();
        let previous = health.last.replace((Instant::now(), status.stats.clone()));
        Some((passes, previous))
    }

    /// Counts a missed check: consecutive misses.
    fn count_miss(&self, node_id: NodeId) -> Option<u32> {
        let mut state = self.state();
        let health = state.nodes.get_mut(&node_id)?;
        health.in_flight = false;
        Some(health.streak.miss())
    }

    async fn on_answer(
        &self,
        node: &NodeRow,
        inst: &InstanceRow,
        status: NodeStatus,
        successes: u32,
        previous: Option<(Instant, NodeStats)>,
        samples: &mut Vec<SampleWrite>,
    ) -> Result<(), StoreError> {
        let had_previous = previous.is_some();
        let sample = sample::from_status(node.id, &status.stats, previous);
        let operating = if sample.members_down > 0 {
            OperatingStatus::Degraded
        } else {
            OperatingStatus::Online
        };
        match node.state {
            NodeState::Running => {
                if had_previous {
                    self.autoscaler.observe(inst, &sample).await;
                }
                samples.push(SampleWrite {
                    node_id: node.id,
                    instance_id: inst.id,
                    // The node lost its config (restarted?) or runs an older one.
                    stale_config: status.config_version != node.applied_generation,
                    sample,
                    stats: status.stats,
                    operating,
                });
            }
            // Out of DNS, so no sample; its status says whether it may be
            // promoted (written only when it changes).
            NodeState::Standby if node.operating_status != operating => {
                let id = node.id;
                self.store
                    .transaction(move |c| store::set_node_operating(c, id, operating))
                    .await?;
            }
            NodeState::Failed if successes >= inst.spec.health_check.criteria.health_threshold => {
                self.decide(Decision::Recover {
                    node: node.clone(),
                    subject: EventSubject::node(inst.project_id, inst.id, node.id),
                    successes,
                    config_version: status.config_version,
                    operating,
                })
                .await;
            }
            _ => {}
        }
        Ok(())
    }

    /// Running nodes' samples and operating statuses, and then the
    /// instances' operating statuses, in one transaction. Losing them while
    /// the store is locked is acceptable: the next check brings fresh ones.
    async fn record_samples(&self, samples: Vec<SampleWrite>, instances: Vec<InstanceRow>) {
        let stale = samples.iter().any(|s| s.stale_config);
        let written = self
            .store
            .transaction(move |c| batch::write(c, &samples, &instances))
            .await;
        match written {
            Ok(()) if stale => self.wake.notify_one(),
            Ok(()) => {}
            Err(e) => tracing::debug!("samples not recorded: {e}"),
        }
    }

    async fn on_miss(
        &self,
        node: &NodeRow,
        inst: &InstanceRow,
        reason: &str,
        failures: u32,
    ) -> Result<(), StoreError> {
        let threshold = inst.spec.health_check.criteria.unhealth_threshold;
        tracing::debug!(node = %node.id, failures, "health check missed: {reason}");
        if failures < threshold {
            return Ok(());
        }
        if node.state == NodeState::Standby {
            self.decide(Decision::StandbyLost {
                node: node.clone(),
                subject: EventSubject::node(inst.project_id, inst.id, node.id),
                kind: EventKind::NodeFailed,
                how: format!("missed {failures} health checks in a row (last: {reason})"),
            })
            .await;
            return Ok(());
        }
        if node.state != NodeState::Running {
            return Ok(());
        }
        let id = node.id;
        let offline = self
            .store
            .transaction(move |c| store::set_node_operating(c, id, OperatingStatus::Offline))
            .await;
        if let Err(e) = offline {
            tracing::debug!("node {id}: {e}");
        }
        if self.breaker_trips(inst).await {
            return Ok(());
        }
        self.decide(Decision::Fail {
            node: node.clone(),
            subject: EventSubject::node(inst.project_id, inst.id, node.id),
            failures,
            reason: reason.to_string(),
        })
        .await;
        Ok(())
    }

    /// Nodes whose process ended by itself: each is failed over at once, as
    /// a node at its unhealth threshold would be, with the same breaker.
    /// All of a batch count as failing before the first is decided, so
    /// nodes that end together trip the breaker together.
    async fn on_exits(&self, batch: Vec<NodeExit>) {
        {
            let mut state = self.state();
            for exit in &batch {
                state.exited.insert(exit.node_id, exit.clone());
            }
        }
        for exit in batch {
            self.on_exit(exit).await;
        }
    }

    /// Exits the breaker held back (or that could not be read): tried again.
    async fn retry_exits(&self) {
        let held: Vec<NodeExit> = self.state().exited.values().cloned().collect();
        for exit in held {
            self.on_exit(exit).await;
        }
    }

    /// One node whose process ended: failed over now, unless it is not a
    /// running node of ours any more (lbd retired or deleted it, or the
    /// report is about an earlier process), or the breaker holds failover.
    /// A starting node is the reconciler's (it starts it again), but a pass
    /// that saw it answer just before it ended may still mark it running:
    /// the report is kept until then (this process: failed over) or until
    /// it runs as another process.
    async fn on_exit(&self, exit: NodeExit) {
        let node_id = exit.node_id;
        let read = self
            .store
            .read(move |c| {
                let Some(node) = store::node_by_id(c, node_id)? else {
                    return Ok(None);
                };
                Ok::<_, StoreError>(store::instance_by_id(c, node.instance_id)?.map(|i| (node, i)))
            })
            .await;
        let (node, inst) = match read {
            Ok(Some(found)) => found,
            Ok(None) => {
                self.state().exited.remove(&node_id);
                return;
            }
            // Kept in `exited`: tried again on the next tick.
            Err(e) => return tracing::warn!("health checker: node {node_id} exited: {e}"),
        };
        let ours = is_about(&exit, &node);
        if node.state == NodeState::Starting && !inst.deleting && ours {
            return;
        }
        if node.state == NodeState::Standby && !inst.deleting && ours {
            self.state().exited.remove(&node_id);
            let subject = EventSubject::node(inst.project_id, inst.id, node.id);
            let lost = Decision::StandbyLost {
                node,
                subject,
                kind: EventKind::NodeExited,
                how: exit.reason,
            };
            return self.decide(lost).await;
        }
        if node.state != NodeState::Running || inst.deleting || !ours {
            tracing::debug!(node = %node_id, state = ?node.state, "exit report not acted on");
            self.state().exited.remove(&node_id);
            return;
        }
        let subject = EventSubject::node(inst.project_id, inst.id, node.id);
        if self.breaker_trips(&inst).await {
            // Not failed over while paused; out of DNS now, and the exit
            // is in the log. Tried again every tick (the breaker may close).
            let (row, reason) = (node.clone(), format!("{}; failover is paused", exit.reason));
            let noted = self
                .store
                .transaction(move |tx| decision::note_exit(tx, &row, subject, &reason))
                .await;
            if let Ok(true) = noted {
                self.wake.notify_one();
            }
            return;
        }
        self.state().exited.remove(&node_id);
        self.decide(Decision::Exit {
            node,
            subject,
            reason: exit.reason,
        })
        .await;
        self.check_breaker(&inst).await;
        if let Err(e) = self.store.refresh_instance_operating(&inst).await {
            tracing::debug!("instance {}: {e}", inst.name);
        }
    }

    /// Writes a decision, or keeps it for later if the store is locked.
    async fn decide(&self, decision: Decision) {
        let id = decision.node_id();
        match decision.clone().write(&self.store).await {
            Ok(applied) => {
                self.state().pending.remove(&id);
                if applied {
                    self.wake.notify_one();
                }
            }
            Err(e) if e.is_unavailable() => {
                tracing::warn!(
                    "node {id}: {}; kept until the store can be written",
                    decision
                );
                self.state().pending.insert(id, decision);
            }
            Err(e) => tracing::warn!("node {id}: {decision} not recorded: {e}"),
        }
    }

    /// Retries the decisions the store could not take before.
    async fn write_pending(&self) {
        let pending: Vec<Decision> = self.state().pending.values().cloned().collect();
        for decision in pending {
            match decision.clone().write(&self.store).await {
                Ok(applied) => {
                    tracing::info!("node {}: {decision} recorded late", decision.node_id());
                    self.state().pending.remove(&decision.node_id());
                    if applied {
                        self.wake.notify_one();
                    }
                }
                // Still locked: the others would fail the same way.
                Err(e) if e.is_unavailable() => return,
                Err(e) => {
                    tracing::warn!("node {}: {decision} dropped: {e}", decision.node_id());
                    self.state().pending.remove(&decision.node_id());
                }
            }
        }
    }

    /// Nodes failing now: failed ones awaiting deletion, and running ones
    /// that missed their last check; and all nodes that count.
    async fn failing_nodes(&self) -> (usize, usize) {
        let Ok(nodes) = self.store.read(store::all_nodes).await else {
            return (0, 0);
        };
        let state = self.state();
        let failing = nodes
            .iter()
            .filter(|n| {
                n.state == NodeState::Failed
                    || state.pending.contains_key(&n.id)
                    || (n.state == NodeState::Running
                        && (state.exited.get(&n.id).is_some_and(|e| is_about(e, n))
                            || state
                                .nodes
                                .get(&n.id)
                                .is_some_and(|h| h.streak.consecutive_misses() > 0)))
            })
            .count();
        let total = nodes
            .iter()
            .filter(|n| n.state != NodeState::Retiring)
            .count();
        (failing, total)
    }

    /// Whether failover must pause now; opening the breaker is an event.
    async fn breaker_trips(&self, inst: &InstanceRow) -> bool {
        let (failing, total) = self.failing_nodes().await;
        if !failover_paused(failing, total, self.settings.failover_max_share) {
            return false;
        }
        let newly = !std::mem::replace(&mut self.state().breaker_open, true);
        if newly {
            let message = format!(
                "failover paused: {failing} of {total} nodes are failing at once (more than {:.0}%); \
                 no replacements until fewer fail",
                self.settings.failover_max_share * 100.0
            );
            self.event(inst, EventKind::FailoverPaused, message).await;
        }
        true
    }

    /// Closes the breaker once few enough nodes fail.
    async fn check_breaker(&self, inst: &InstanceRow) {
        if !self.state().breaker_open {
            return;
        }
        let (failing, total) = self.failing_nodes().await;
        if failover_paused(failing, total, self.settings.failover_max_share) {
            return;
        }
        self.state().breaker_open = false;
        let message = format!("failover resumed: {failing} of {total} nodes failing");
        self.event(inst, EventKind::FailoverResumed, message).await;
        self.wake.notify_one();
    }

    async fn apply_retention(&self) {
        let keep = self.settings.retention;
        match self
            .store
            .transaction(move |tx| store::apply_retention(tx, keep, store::now()))
            .await
        {
            Ok(r) if r != store::RetentionReport::default() => {
                tracing::debug!(?r, "monitor log retention")
            }
            Ok(_) => {}
            Err::<_, StoreError>(e) => tracing::warn!("monitor log retention: {e}"),
        }
    }

    /// Records an event about an instance; the monitor log must never stop
    /// the checker.
    async fn event(&self, inst: &InstanceRow, kind: EventKind, message: String) {
        tracing::info!(%kind, instance = %inst.name, "{message}");
        let subject = EventSubject::instance(inst.project_id, inst.id);
        self.store.record_event(subject, kind, message).await;
    }
}

/// Whether an exit report is about the node's current process. A running
/// row without a pid: the reconciler found the process gone already. Any
/// other pid: the report is about an older process, and does not count.
fn is_about(exit: &NodeExit, node: &NodeRow) -> bool {
    node.pid.is_none_or(|pid| pid == exit.pid)
}

/// The next exit reports: every one waiting now, so nodes that end together
/// are seen together. Never ready without a receiver.
async fn next_exits(
    exits: &mut Option<mpsc::UnboundedReceiver<NodeExit>>,
) -> Option<Vec<NodeExit>> {
    let Some(rx) = exits.as_mut() else {
        return std::future::pending().await;
    };
    let Some(first) = rx.recv().await else {
        // The driver is gone (lbd is stopping): nothing more will come.
        *exits = None;
        return None;
    };
    let mut batch = vec![first];
    while let Ok(more) = rx.try_recv() {
        batch.push(more);
    }
    Some(batch)
}

#[cfg(test)]
mod tests;
