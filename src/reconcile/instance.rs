//! Instance steps, in the order of the create flow: node rows (addresses),
//! node processes, node config, DNS, status. Each step looks before it acts,
//! so a pass after a crash redoes only what is missing. Node state changes go
//! through the store's guarded [`store::move_node`], so a step acting on a
//! snapshot that the health checker has overtaken changes nothing.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::node_rows::{roles_settled, sync_node_rows};
use super::{standby, ReconcileError, Reconciler};
use crate::dns::instance_label;
use crate::drivers::compute::{NodeObservation, NodeSpec};
use crate::model::{EventKind, NodeState, NodeStatus, OperatingStatus, ProvisioningStatus};
use crate::store::{self, EventSubject, InstanceRow, NodeRow, StoreError};

impl Reconciler {
    pub(super) async fn reconcile_instance(&self, inst: InstanceRow) {
        if !self.due(&inst) {
            return;
        }
        if inst.deleting {
            if let Err(e) = self.delete_instance(&inst).await {
                self.record_failure(&inst, format!("delete: {e}"), &e, 0)
                    .await;
            }
            return;
        }
        self.finish_failed_and_retiring(&inst).await;
        let nodes = match self.ensure_node_rows(&inst).await {
            Ok(nodes) => nodes,
            Err(e) => return self.record_failure(&inst, e.to_string(), &e, 0).await,
        };
        let serving_or_starting = nodes
            .iter()
            .filter(|n| n.state != NodeState::Standby)
            .count()
            .min(inst.target_nodes() as usize);
        let inst = match self.count_serving_nodes(inst, serving_or_starting).await {
            Ok(inst) => inst,
            Err((inst, e)) => return self.record_failure(&inst, e.to_string(), &e, 0).await,
        };
        let mut serving = Vec::new();
        let mut errors = Vec::new();
        let (configured, starting): (Vec<&NodeRow>, Vec<&NodeRow>) =
            nodes.iter().partition(|n| n.state.is_configured());
        self.serve_each(&inst, &configured, &mut serving, &mut errors)
            .await;
        if !starting.is_empty() {
            // What serves already is in DNS before a new node is waited for:
            // a promoted standby serves at once, not once the standby
            // behind it has booted.
            if let Err(e) = self.publish_dns(&inst, &serving).await {
                errors.push(e.into());
            }
            self.serve_each(&inst, &starting, &mut serving, &mut errors)
                .await;
        }
        if let Err(e) = self.publish_dns(&inst, &serving).await {
            errors.push(e.into());
        }
        if errors.is_empty() {
            self.record_success(&inst).await;
        } else {
            let e = ReconcileError::Several(errors);
            self.record_failure(&inst, e.to_string(), &e, serving.len())
                .await;
        }
    }

    /// [`Self::ensure_node_serving`] for each of `nodes`: the addresses
    /// that serve go to `serving`, failures to `errors`.
    async fn serve_each(
        &self,
        inst: &InstanceRow,
        nodes: &[&NodeRow],
        serving: &mut Vec<IpAddr>,
        errors: &mut Vec<ReconcileError>,
    ) {
        for node in nodes {
            match self.ensure_node_serving(inst, node).await {
                Ok(true) => serving.push(node.address),
                Ok(false) => {}
                Err(e) => errors.push(ReconcileError::Node {
                    id: node.id,
                    addr: node.address,
                    source: Box::new(e),
                }),
            }
        }
    }

    /// Names the serving nodes' addresses in DNS (a no-op when the zone has
    /// them already). Only serving nodes are in DNS; with none serving the
    /// old records stay, since pointing clients nowhere is no better than a
    /// stale address.
    pub(super) async fn publish_dns(
        &self,
        inst: &InstanceRow,
        serving: &[IpAddr],
    ) -> Result<(), crate::dns::DnsError> {
        let v4: Vec<Ipv4Addr> = serving
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        if v4.is_empty() {
            return Ok(());
        }
        self.dns
            .set_a_records(&instance_label(&inst.name, &inst.project_name), &v4)
            .await
    }

    /// Records the count of active nodes that serve or are about to (not
    /// the standbys, and at most the serving target) as the instance's
    /// serving nodes, so a replacement or a standby's boot does not change
    /// it. A change bumps the generation (see [`store::set_serving_nodes`]);
    /// the row comes back as it is now.
    async fn count_serving_nodes(
        &self,
        inst: InstanceRow,
        active: usize,
    ) -> Result<InstanceRow, (InstanceRow, ReconcileError)> {
        let count = u32::try_from(active).unwrap_or(u32::MAX).max(1);
        if inst.serving_nodes == count {
            return Ok(inst);
        }
        let id = inst.id;
        let read = self
            .store
            .transaction(move |tx| {
                store::set_serving_nodes(tx, id, count)?;
                store::instance_by_id(tx, id)
            })
            .await;
        match read {
            Ok(Some(row)) => Ok(row),
            // Deleted meanwhile: the next pass sees it.
            Ok(None) => Ok(inst),
            Err(e) => Err((inst, e.into())),
        }
    }

    /// The `tls` a node of `inst` gets: the certificates with their keys,
    /// read from lbd's key files off the runtime.
    async fn node_tls(
        &self,
        inst: &InstanceRow,
    ) -> Result<Option<crate::model::tls::NodeTls>, ReconcileError> {
        let (Some(tls), Some(keys)) = (inst.spec.tls.clone(), self.settings.tls_keys.clone())
        else {
            return Ok(None);
        };
        let read = tokio::task::spawn_blocking(move || {
            let certificates = tls
                .certificates
                .iter()
                .map(|c| {
                    Ok(crate::model::tls::NodeCertificate {
                        cert: c.cert.clone(),
                        key: keys.get(&c.info.fingerprint)?,
                        sans: c.info.sans.clone(),
                    })
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
            Ok::<_, crate::store::StoreError>(crate::model::tls::NodeTls {
                certificates,
                min_version: tls.min_version,
                redirect_http_port: tls.redirect_http_port,
            })
        });
        match read.await {
            Ok(r) => Ok(Some(r?)),
            Err(e) => Err(ReconcileError::Task {
                task: "tls keys",
                reason: e.to_string(),
            }),
        }
    }

    /// Every federation mapping lbd knows for `inst` now, remote tokens
    /// read from their files off the runtime: a node starting (a failover
    /// replacement too) routes by them before it enters DNS.
    async fn node_mappings(
        &self,
        inst: &InstanceRow,
    ) -> Result<crate::model::federation::NodeMappings, ReconcileError> {
        let (id, tokens) = (inst.id, self.settings.federation_tokens.clone());
        Ok(self
            .store
            .read(move |c| store::node_mappings(c, tokens.as_ref(), id, store::now()))
            .await?)
    }

    /// A name that resolves to one of the instance's own nodes would loop:
    /// the name guard gets the project subnet and the listener port, which
    /// lbd refuses for IP entities (`backend_guard`).
    async fn guard_own_nodes(
        &self,
        inst: &InstanceRow,
        config: &mut crate::model::NodeConfig,
    ) -> Result<(), ReconcileError> {
        let Some(guard) = config.name_guard.as_mut() else {
            return Ok(());
        };
        let project_id = inst.project_id;
        let project = self
            .store
            .read(move |c| store::project_by_id(c, project_id))
            .await?
            .ok_or(ReconcileError::ProjectGone)?;
        guard.own_nodes = Some(crate::model::OwnNodes {
            subnet: project.subnet,
            port: inst.spec.port,
        });
        Ok(())
    }

    /// What a node of `inst` at `address` runs now.
    fn node_config(&self, inst: &InstanceRow, address: IpAddr) -> crate::model::NodeConfig {
        let mut config = inst.spec.node_config(inst.generation, address);
        config.serving_nodes = inst.serving_nodes.max(1);
        if config.host_names().next().is_some() {
            config.resolver = self.settings.resolver;
            config.name_guard = self.settings.name_guard.clone();
        }
        // Each instance counts under its own keys in a shared Redis.
        config.redis = self
            .settings
            .redis
            .clone()
            .map(|r| crate::model::node::RedisTarget {
                key_prefix: inst.id.to_string(),
                ..r
            });
        if inst.spec.has_sticky_cookie() {
            config.sticky_key = self
                .settings
                .sticky_secret
                .as_ref()
                .map(|s| s.instance_key(inst.id));
        }
        config
    }

    /// Errored instances are retried on a slow cadence instead of every pass.
    fn due(&self, inst: &InstanceRow) -> bool {
        if inst.provisioning_status != ProvisioningStatus::Error {
            return true;
        }
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures
            .get(&inst.id)
            .is_none_or(|(_, last)| last.elapsed() >= self.settings.error_retry)
    }

    /// Makes the active (starting, running, standby) nodes match the
    /// targets: standbys promoted on scale-out; new rows with fresh
    /// addresses for replacements, scale-out and standbys; the newest nodes
    /// retire (out of DNS, drain, delete) on scale-in or when a failed node
    /// recovered and its replacement is no longer needed. One transaction,
    /// with its events.
    pub(super) async fn ensure_node_rows(
        &self,
        inst: &InstanceRow,
    ) -> Result<Vec<NodeRow>, ReconcileError> {
        // The settled case, on every pass: a read, no write lock.
        let (id, target) = (inst.id, inst.target_active_nodes() as usize);
        let nodes = self.store.read(move |c| store::list_nodes(c, id)).await?;
        let active: Vec<NodeRow> = nodes.into_iter().filter(|n| n.state.is_active()).collect();
        if active.len() == target && roles_settled(inst, &active) {
            return Ok(active);
        }
        let project_id = inst.project_id;
        let project = self
            .store
            .read(move |c| store::project_by_id(c, project_id))
            .await?
            .ok_or(ReconcileError::ProjectGone)?;
        let subnet = inst.spec.subnet.unwrap_or(project.subnet);
        let inst = inst.clone();
        let change = self
            .store
            .transaction(move |tx| sync_node_rows(tx, &inst, subnet))
            .await?;
        Ok(change.active)
    }

    /// Deletes failed nodes whose grace period is over, and retiring nodes
    /// once drained (out of DNS for at least `drain_min`, then no
    /// connection left or `drain_max` reached). The row goes first, guarded
    /// by its state (a failed node that just recovered stays); a node whose
    /// row is gone is stopped here, or else as an orphan on a later pass.
    async fn finish_failed_and_retiring(&self, inst: &InstanceRow) {
        let id = inst.id;
        let Ok(nodes) = self.store.read(move |c| store::list_nodes(c, id)).await else {
            return;
        };
        let now = store::now();
        for node in nodes {
            let age = Duration::from_secs((now - node.state_changed_at).max(0) as u64);
            let Some((kind, message)) = self.finished(&node, age).await else {
                continue;
            };
            let subject = EventSubject::node(inst.project_id, inst.id, node.id);
            let (node_id, state) = (node.id, node.state);
            let deleted = self
                .store
                .transaction(move |tx| {
                    let deleted = store::delete_node(tx, node_id, state)?;
                    if deleted {
                        store::add_event(tx, subject, kind, &message)?;
                    }
                    Ok::<_, StoreError>(deleted)
                })
                .await;
            match deleted {
                Ok(true) => {
                    if let Err(e) = self.compute.destroy_node(node_id).await {
                        tracing::warn!("node {node_id}: {e}; it is removed as an orphan later");
                    }
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("node {node_id}: {e}"),
            }
        }
    }

    /// Whether a failed or retiring node is done with, and the event that says so.
    async fn finished(&self, node: &NodeRow, age: Duration) -> Option<(EventKind, String)> {
        match node.state {
            NodeState::Failed if age >= self.settings.failover_grace => Some((
                EventKind::NodeDeleted,
                format!(
                    "failed node {} at {} deleted: not healthy again within {} s",
                    node.id,
                    node.address,
                    self.settings.failover_grace.as_secs()
                ),
            )),
            NodeState::Retiring if age >= self.settings.drain_min => {
                let admin = SocketAddr::new(node.address, self.settings.node_admin_port);
                let open = tokio::time::timeout(
                    Duration::from_secs(1),
                    self.nodes.status(admin, &node.secret),
                )
                .await
                .ok()
                .and_then(Result::ok)
                .map_or(0, |s| s.stats.active_connections);
                if open > 0 && age < self.settings.drain_max {
                    return None;
                }
                Some((
                    EventKind::NodeRetired,
                    format!(
                        "node {} at {} retired after {} s out of DNS ({open} connections left)",
                        node.id,
                        node.address,
                        age.as_secs()
                    ),
                ))
            }
            _ => None,
        }
    }

    /// Brings one active node to serving the current config. `Ok(true)`: it
    /// serves; `Ok(false)`: a running node whose process is gone, left to the
    /// health checker, which fails it over.
    pub(super) async fn ensure_node_serving(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
    ) -> Result<bool, ReconcileError> {
        let admin = SocketAddr::new(node.address, self.settings.node_admin_port);
        let Some(pid) = self.ensure_node_process(inst, node, admin).await? else {
            return Ok(false);
        };
        if node.applied_generation == Some(inst.generation) {
            match node.state {
                NodeState::Running => return Ok(node.operating_status != OperatingStatus::Offline),
                NodeState::Standby => return Ok(false),
                _ => {}
            }
        }
        let status = self.wait_ready(node, admin).await?;
        if status.config_version != Some(inst.generation) {
            let mut config = self.node_config(inst, node.address);
            config.tls = self.node_tls(inst).await?;
            if let Some(federation) = config.federation.as_mut() {
                federation.mappings = self.node_mappings(inst).await?;
            }
            self.guard_own_nodes(inst, &mut config).await?;
            self.nodes.put_config(admin, &node.secret, &config).await?;
            // Operators (and tests) see which share of the node-scope limits
            // each node got; the config itself carries hashes, so it is not logged.
            tracing::info!(
                "node {} config version {} pushed: serving_nodes={} rules={} rate_limits={}",
                node.id,
                config.version,
                config.serving_nodes,
                config.policy.rules.len(),
                config.policy.rate_limits.len()
            );
        }
        let (id, generation) = (node.id, inst.generation);
        self.store
            .transaction(move |c| store::set_node_applied(c, id, Some(generation)))
            .await?;
        self.mark_serving(inst, node, pid).await
    }

    /// The node's process: the pid it runs as, starting it if needed.
    /// `None`: a running node whose process is gone (out of DNS until the
    /// health checker fails it over).
    async fn ensure_node_process(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
        admin: SocketAddr,
    ) -> Result<Option<u32>, ReconcileError> {
        let subject = EventSubject::node(inst.project_id, inst.id, node.id);
        match (node.state, self.compute.observe_node(node.id).await?) {
            (_, NodeObservation::Running { pid }) => Ok(Some(pid)),
            (NodeState::Standby, other) => {
                self.replace_standby(inst, node, other).await?;
                Ok(None)
            }
            (NodeState::Running, other) => {
                if node.operating_status != OperatingStatus::Offline {
                    let how = match other {
                        NodeObservation::Exited { reason } => reason,
                        _ => "is gone".to_string(),
                    };
                    let message = format!(
                        "node {} at {} {how}; out of DNS until it is failed over",
                        node.id, node.address
                    );
                    let id = node.id;
                    self.store
                        .transaction(move |tx| {
                            let offline = OperatingStatus::Offline;
                            if store::set_node_process(tx, id, NodeState::Running, None, offline)? {
                                store::add_event(tx, subject, EventKind::NodeExited, &message)?;
                            }
                            Ok::<_, StoreError>(())
                        })
                        .await?;
                }
                Ok(None)
            }
            (_, other) => {
                if let NodeObservation::Exited { reason } = &other {
                    self.event(
                        subject,
                        EventKind::NodeExited,
                        format!(
                            "node {} at {} {reason} while starting; starting it again",
                            node.id, node.address
                        ),
                    )
                    .await;
                }
                let prefix_len = self.ensure_node_address(inst, node).await?;
                let spec = NodeSpec {
                    node_id: node.id,
                    admin_addr: admin,
                    secret: node.secret.clone(),
                    netns: self.network.node_netns(inst.project_id),
                    name: format!("{}-{}", inst.project_name, inst.name),
                    prefix_len,
                };
                match self.compute.ensure_node(spec).await? {
                    NodeObservation::Running { pid } => Ok(Some(pid)),
                    other => Err(ReconcileError::NotStarted(other)),
                }
            }
        }
    }

    /// Records that the node is ready: a starting node becomes running, or
    /// a standby if the serving target is met already; a running or standby
    /// one gets its current pid. Whether it serves (belongs in DNS).
    async fn mark_serving(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
        pid: u32,
    ) -> Result<bool, ReconcileError> {
        let (id, state, status) = (node.id, node.state, node.operating_status);
        if node.pid == Some(pid) && node.state.is_configured() {
            return Ok(state == NodeState::Running);
        }
        let subject = EventSubject::node(inst.project_id, inst.id, node.id);
        let (instance_id, serving_target) = (inst.id, inst.target_nodes() as usize);
        let at = format!("{}:{} (pid {pid})", node.address, inst.spec.port);
        let now = self
            .store
            .transaction(move |tx| {
                if state.is_configured() {
                    let kept = store::set_node_process(tx, id, state, Some(pid), status)?;
                    return Ok(kept.then_some(state));
                }
                let running = store::list_nodes(tx, instance_id)?
                    .iter()
                    .filter(|n| n.state == NodeState::Running)
                    .count();
                let (to, kind, message) = if running < serving_target {
                    let message = format!("node {id} serving at {at}");
                    (NodeState::Running, EventKind::NodeReady, message)
                } else {
                    let message = format!("node {id} ready at {at} as a standby, out of DNS");
                    (NodeState::Standby, EventKind::NodeStandby, message)
                };
                if !store::move_node(tx, id, state, to)? {
                    return Ok(None);
                }
                store::set_node_process(tx, id, to, Some(pid), OperatingStatus::Online)?;
                store::add_event(tx, subject, kind, &message)?;
                Ok::<_, StoreError>(Some(to))
            })
            .await?;
        match now {
            Some(now) => {
                self.nodes_serving.notify_one();
                Ok(now == NodeState::Running)
            }
            None => {
                tracing::info!("node {id} changed state meanwhile; left as it is now");
                Ok(false)
            }
        }
    }

    /// A standby whose process is gone retires (a new one boots on the next
    /// pass): it serves nobody, so there is nothing to fail over, and a
    /// fresh node is as quick as a restart in place.
    async fn replace_standby(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
        observed: NodeObservation,
    ) -> Result<(), ReconcileError> {
        let how = match observed {
            NodeObservation::Exited { reason } => reason,
            _ => "is gone".to_string(),
        };
        let subject = EventSubject::node(inst.project_id, inst.id, node.id);
        let node = node.clone();
        self.store
            .transaction(move |tx| standby::retire(tx, &node, subject, EventKind::NodeExited, &how))
            .await?;
        Ok(())
    }

    /// Puts the node's address on the project network before the node binds
    /// it (unless the node brings its own interface, as a VM does); returns
    /// the subnet's prefix length.
    async fn ensure_node_address(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
    ) -> Result<u8, ReconcileError> {
        let IpAddr::V4(addr) = node.address else {
            return Err(ReconcileError::Ipv6Unsupported);
        };
        let project_id = inst.project_id;
        let project = self
            .store
            .read(move |c| store::project_by_id(c, project_id))
            .await?
            .ok_or(ReconcileError::ProjectGone)?;
        let prefix_len = project.subnet.prefix_len();
        if !self.compute.node_address_on_host() {
            return Ok(prefix_len);
        }
        self.network_call(move |n| {
            n.set_node_addresses(project.id, &project.subnet, &[addr], false)
        })
        .await?;
        Ok(prefix_len)
    }

    /// Polls the admin API until it answers, the process dies, or the deadline passes.
    async fn wait_ready(
        &self,
        node: &NodeRow,
        admin: SocketAddr,
    ) -> Result<NodeStatus, ReconcileError> {
        let timeout = self
            .compute
            .ready_timeout()
            .unwrap_or(self.settings.node_ready_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.nodes.status(admin, &node.secret).await {
                Ok(status) => return Ok(status),
                Err(e) => e,
            };
            if let NodeObservation::Exited { reason } = self.compute.observe_node(node.id).await? {
                let log = self.compute.log_tail(node.id).await;
                return Err(ReconcileError::NodeExited { reason, log });
            }
            if Instant::now() >= deadline {
                return Err(ReconcileError::NotReady {
                    secs: timeout.as_secs(),
                    last_error,
                    log: self.compute.log_tail(node.id).await,
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// DNS first (no client is sent to a node that is going away), then the
    /// nodes, then the rows. A failed step is retried; after
    /// `attempts_before_error` passes the instance shows ERROR with the
    /// reason, and the delete is still retried.
    async fn delete_instance(&self, inst: &InstanceRow) -> Result<(), ReconcileError> {
        self.dns
            .set_a_records(&instance_label(&inst.name, &inst.project_name), &[])
            .await?;
        let id = inst.id;
        let nodes = self.store.read(move |c| store::list_nodes(c, id)).await?;
        for node in nodes {
            self.compute.destroy_node(node.id).await?;
        }
        let subject = EventSubject::instance(inst.project_id, inst.id);
        let message = format!("instance {}.{} deleted", inst.name, inst.project_name);
        self.store
            .transaction(move |tx| {
                store::delete_instance(tx, id)?;
                store::add_event(tx, subject, EventKind::InstanceDeleted, &message)
            })
            .await?;
        // Its mappings went with the row; their remote tokens go now (or
        // else with the sweep of unused token files).
        if let Some(tokens) = self.settings.federation_tokens.clone() {
            let removed = tokio::task::spawn_blocking(move || tokens.remove_instance(id)).await;
            if let Ok(Err(e)) = removed {
                tracing::warn!("instance {id}: federation token files: {e}");
            }
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.id);
        Ok(())
    }

    async fn record_success(&self, inst: &InstanceRow) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.id);
        let what = match inst.provisioning_status {
            ProvisioningStatus::PendingCreate => Some("created"),
            ProvisioningStatus::PendingUpdate => Some("updated"),
            ProvisioningStatus::Error => Some("recovered"),
            _ => None,
        };
        let message = what.map(|what| {
            format!(
                "instance {}.{} {what}: ACTIVE",
                inst.name, inst.project_name
            )
        });
        // A settled instance (every pass, each second): nothing to write
        // unless its operating status moved.
        if what.is_none() && inst.provisioning_status == ProvisioningStatus::Active {
            if let Err(e) = self.store.refresh_instance_operating(inst).await {
                tracing::warn!("instance {}: {e}", inst.name);
            }
            return;
        }
        let row = inst.clone();
        let result = self
            .store
            .transaction(move |c| {
                if row.provisioning_status != ProvisioningStatus::Active {
                    store::set_instance_provisioning(c, row.id, ProvisioningStatus::Active, None)?;
                }
                store::refresh_instance_operating(c, &row)?;
                if let Some(message) = message {
                    let subject = EventSubject::instance(row.project_id, row.id);
                    store::add_event(c, subject, EventKind::InstanceActive, &message)?;
                }
                Ok::<_, StoreError>(())
            })
            .await;
        if let Err(e) = result {
            tracing::warn!("instance {}: {e}", inst.name);
        }
    }

    /// Counts a failed pass; after `attempts_before_error` of them a pending
    /// instance goes to ERROR with `reason`. A locked store is no fault of
    /// the instance and is not counted.
    async fn record_failure(
        &self,
        inst: &InstanceRow,
        reason: String,
        error: &ReconcileError,
        serving: usize,
    ) {
        if error.is_store_unavailable() {
            return tracing::warn!("instance {}.{}: {reason}", inst.name, inst.project_name);
        }
        let attempts = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let entry = failures.entry(inst.id).or_insert((0, Instant::now()));
            entry.0 += 1;
            entry.1 = Instant::now();
            entry.0
        };
        let operating = if serving > 0 {
            OperatingStatus::Degraded
        } else {
            OperatingStatus::Offline
        };
        let give_up = inst.provisioning_status.is_pending()
            && attempts >= self.settings.attempts_before_error;
        if !give_up {
            tracing::warn!(
                "instance {}.{} (attempt {attempts}): {reason}",
                inst.name,
                inst.project_name
            );
        }
        let message = format!(
            "instance {}.{} failed after {attempts} attempts: {reason}",
            inst.name, inst.project_name
        );
        let (id, subject) = (inst.id, EventSubject::instance(inst.project_id, inst.id));
        let result = self
            .store
            .transaction(move |c| {
                if give_up {
                    let error = ProvisioningStatus::Error;
                    store::set_instance_provisioning(c, id, error, Some(&reason))?;
                    store::add_event(c, subject, EventKind::InstanceError, &message)?;
                }
                store::set_instance_operating(c, id, operating, Some(&reason))
            })
            .await;
        if let Err(e) = result {
            tracing::warn!("instance {}: {e}", inst.name);
        }
    }
}
