//! Instance steps, in the order of the create flow: node rows (addresses),
//! node processes, node config, DNS, status. Each step looks before it acts,
//! so a pass after a crash redoes only what is missing.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::Rng;

use super::Reconciler;
use crate::dns::instance_label;
use crate::drivers::compute::{NodeObservation, NodeSpec};
use crate::model::allocator::allocate_node_address;
use crate::model::{NodeState, OperatingStatus, ProvisioningStatus};
use crate::store::{self, EventSubject, InstanceRow, NodeRow, StoreError};

impl Reconciler {
    pub(super) async fn reconcile_instance(&self, inst: InstanceRow) {
        if !self.due(&inst) {
            return;
        }
        if inst.deleting {
            if let Err(reason) = self.delete_instance(&inst).await {
                let subject = EventSubject {
                    project_id: Some(inst.project_id),
                    instance_id: Some(inst.id),
                    node_id: None,
                };
                self.record_failure(&inst, subject, format!("delete: {reason}"), 0);
            }
            return;
        }
        let subject = EventSubject {
            project_id: Some(inst.project_id),
            instance_id: Some(inst.id),
            node_id: None,
        };
        self.finish_failed_and_retiring(&inst).await;
        let nodes = match self.ensure_node_rows(&inst) {
            Ok(nodes) => nodes,
            Err(reason) => return self.record_failure(&inst, subject, reason, 0),
        };
        let mut serving = Vec::new();
        let mut errors = Vec::new();
        for node in &nodes {
            match self.ensure_node_serving(&inst, node).await {
                Ok(true) => serving.push(node.address),
                Ok(false) => {}
                Err(reason) => {
                    errors.push(format!("node {} ({}): {reason}", node.id, node.address))
                }
            }
        }
        let v4: Vec<Ipv4Addr> = serving
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect();
        // Only serving nodes are in DNS; with none serving the old records stay,
        // since pointing clients nowhere is no better than a stale address.
        if !v4.is_empty() {
            if let Err(e) = self
                .dns
                .set_a_records(&instance_label(&inst.name, &inst.project_name), &v4)
                .await
            {
                errors.push(format!("DNS: {e}"));
            }
        }
        if errors.is_empty() {
            self.record_success(&inst, subject);
        } else {
            self.record_failure(&inst, subject, errors.join("; "), serving.len());
        }
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

    /// Makes the active (starting or running) nodes match the target: new
    /// rows with fresh addresses for replacements and scale-out; the newest
    /// nodes retire (out of DNS, drain, delete) on scale-in or when a failed
    /// node recovered and its replacement is no longer needed.
    fn ensure_node_rows(&self, inst: &InstanceRow) -> Result<Vec<NodeRow>, String> {
        let project = self
            .store
            .read(|c| store::project_by_id(c, inst.project_id))
            .map_err(|e| e.to_string())?
            .ok_or("the project is gone")?;
        let subnet = inst.spec.subnet.unwrap_or(project.subnet);
        let target = inst.target_nodes() as usize;
        let (active, added, retired, failed) = self
            .store
            .transaction(|tx| {
                let all = store::list_nodes(tx, inst.id)?;
                let failed: Vec<NodeRow> = all
                    .iter()
                    .filter(|n| n.state == NodeState::Failed)
                    .cloned()
                    .collect();
                let mut active: Vec<NodeRow> =
                    all.into_iter().filter(|n| n.state.is_active()).collect();
                let mut taken: HashSet<Ipv4Addr> = store::all_nodes(tx)?
                    .iter()
                    .filter_map(|n| match n.address {
                        IpAddr::V4(a) => Some(a),
                        IpAddr::V6(_) => None,
                    })
                    .collect();
                let mut added = Vec::new();
                while active.len() < target {
                    let Some(addr) = allocate_node_address(&subnet, &taken) else {
                        return Err(StoreError::Corrupt(format!(
                            "subnet {subnet} has no free address for another node"
                        )));
                    };
                    taken.insert(addr);
                    let node = store::insert_node(tx, inst.id, &addr.to_string(), &new_secret())?;
                    added.push(node.clone());
                    active.push(node);
                }
                let mut retired = Vec::new();
                while active.len() > target {
                    let node = active.pop().expect("len > target >= 1");
                    store::set_node_observed(
                        tx,
                        node.id,
                        NodeState::Retiring,
                        node.pid,
                        node.operating_status,
                    )?;
                    retired.push(node);
                }
                Ok((active, added, retired, failed))
            })
            .map_err(|e: StoreError| e.to_string())?;
        let subject = |node_id| EventSubject {
            project_id: Some(inst.project_id),
            instance_id: Some(inst.id),
            node_id: Some(node_id),
        };
        // New nodes while nodes are failed are their replacements, oldest failure first.
        for (i, node) in added.iter().enumerate() {
            if let Some(old) = failed.get(i) {
                self.event(
                    subject(node.id),
                    "failover",
                    &format!(
                        "node {} at {} replaces failed node {} at {}",
                        node.id, node.address, old.id, old.address
                    ),
                );
            }
        }
        for node in &retired {
            self.event(
                subject(node.id),
                "node_retiring",
                &format!(
                    "node {} at {} leaves DNS and drains: {} active nodes, target {target}",
                    node.id,
                    node.address,
                    target + retired.len()
                ),
            );
        }
        Ok(active)
    }

    /// Deletes failed nodes whose grace period is over, and retiring nodes
    /// once drained (out of DNS for at least `drain_min`, then no
    /// connection left or `drain_max` reached).
    async fn finish_failed_and_retiring(&self, inst: &InstanceRow) {
        let Ok(nodes) = self.store.read(|c| store::list_nodes(c, inst.id)) else {
            return;
        };
        let now = store::now();
        for node in nodes {
            let age = Duration::from_secs((now - node.state_changed_at).max(0) as u64);
            let message = match node.state {
                NodeState::Failed if age >= self.settings.failover_grace => format!(
                    "failed node {} at {} deleted: not healthy again within {} s",
                    node.id,
                    node.address,
                    self.settings.failover_grace.as_secs()
                ),
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
                        continue;
                    }
                    format!(
                        "node {} at {} retired after {} s out of DNS ({open} connections left)",
                        node.id,
                        node.address,
                        age.as_secs()
                    )
                }
                _ => continue,
            };
            let compute = self.compute.clone();
            let id = node.id;
            match tokio::task::spawn_blocking(move || compute.destroy_node(id)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!("node {id}: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::error!("node {id}: {e}");
                    continue;
                }
            }
            if let Err(e) = self.store.read(|c| store::delete_node(c, id)) {
                tracing::warn!("node {id}: {e}");
                continue;
            }
            let kind = if node.state == NodeState::Failed {
                "node_deleted"
            } else {
                "node_retired"
            };
            self.event(
                EventSubject {
                    project_id: Some(inst.project_id),
                    instance_id: Some(inst.id),
                    node_id: Some(id),
                },
                kind,
                &message,
            );
        }
    }

    /// Brings one active node to serving the current config. `Ok(true)`: it
    /// serves; `Ok(false)`: a running node whose process is gone, left to the
    /// health checker, which fails it over.
    async fn ensure_node_serving(
        &self,
        inst: &InstanceRow,
        node: &NodeRow,
    ) -> Result<bool, String> {
        let admin = SocketAddr::new(node.address, self.settings.node_admin_port);
        let subject = EventSubject {
            project_id: Some(inst.project_id),
            instance_id: Some(inst.id),
            node_id: Some(node.id),
        };
        let observed = self.compute.observe_node(node.id);
        let pid = match (node.state, observed) {
            (_, NodeObservation::Running { pid }) => pid,
            (NodeState::Running, other) => {
                if node.operating_status != OperatingStatus::Offline {
                    let how = match other {
                        NodeObservation::Exited { reason } => reason,
                        _ => "is gone".to_string(),
                    };
                    self.event(
                        subject,
                        "node_exited",
                        &format!(
                            "node {} at {} {how}; out of DNS until it is failed over",
                            node.id, node.address
                        ),
                    );
                    self.set_node(node, NodeState::Running, None, OperatingStatus::Offline);
                }
                return Ok(false);
            }
            (_, other) => {
                if let NodeObservation::Exited { reason } = &other {
                    self.event(
                        subject,
                        "node_exited",
                        &format!(
                            "node {} at {} {reason} while starting; starting it again",
                            node.id, node.address
                        ),
                    );
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
                let compute = self.compute.clone();
                match tokio::task::spawn_blocking(move || compute.ensure_node(&spec)).await {
                    Ok(Ok(NodeObservation::Running { pid })) => pid,
                    Ok(Ok(other)) => return Err(format!("node did not start: {other:?}")),
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(e) => return Err(format!("start task failed: {e}")),
                }
            }
        };
        if node.state == NodeState::Running && node.applied_generation == Some(inst.generation) {
            return Ok(node.operating_status != OperatingStatus::Offline);
        }
        let status = self.wait_ready(node, admin).await?;
        if status.config_version != Some(inst.generation) {
            let config = inst.spec.node_config(inst.generation, node.address);
            self.nodes
                .put_config(admin, &node.secret, &config)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Err(e) = self
            .store
            .read(|c| store::set_node_applied(c, node.id, Some(inst.generation)))
        {
            return Err(e.to_string());
        }
        if node.state != NodeState::Running {
            self.event(
                subject,
                "node_ready",
                &format!(
                    "node {} serving at {}:{} (pid {pid})",
                    node.id, node.address, inst.spec.port
                ),
            );
            self.set_node(node, NodeState::Running, Some(pid), OperatingStatus::Online);
        } else if node.pid != Some(pid) {
            self.set_node(node, NodeState::Running, Some(pid), node.operating_status);
        }
        Ok(true)
    }

    /// Puts the node's address on the project network before the node binds
    /// it (unless the node brings its own interface, as a VM does); returns
    /// the subnet's prefix length.
    async fn ensure_node_address(&self, inst: &InstanceRow, node: &NodeRow) -> Result<u8, String> {
        let IpAddr::V4(addr) = node.address else {
            return Err("IPv6 node addresses are not supported".into());
        };
        let project = self
            .store
            .read(|c| store::project_by_id(c, inst.project_id))
            .map_err(|e| e.to_string())?
            .ok_or("the project is gone")?;
        let prefix_len = project.subnet.prefix_len();
        if !self.compute.node_address_on_host() {
            return Ok(prefix_len);
        }
        let network = self.network.clone();
        tokio::task::spawn_blocking(move || {
            network.set_node_addresses(project.id, &project.subnet, &[addr], false)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok(prefix_len)
    }

    /// Polls the admin API until it answers, the process dies, or the deadline passes.
    async fn wait_ready(
        &self,
        node: &NodeRow,
        admin: SocketAddr,
    ) -> Result<crate::model::NodeStatus, String> {
        let timeout = self
            .compute
            .ready_timeout()
            .unwrap_or(self.settings.node_ready_timeout);
        let deadline = Instant::now() + timeout;
        loop {
            let last_error = match self.nodes.status(admin, &node.secret).await {
                Ok(status) => return Ok(status),
                Err(e) => e.to_string(),
            };
            if let NodeObservation::Exited { reason } = self.compute.observe_node(node.id) {
                return Err(format!("{reason}; log: {}", self.compute.log_tail(node.id)));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {}s: {last_error}; log: {}",
                    timeout.as_secs(),
                    self.compute.log_tail(node.id)
                ));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// DNS first (no client is sent to a node that is going away), then the
    /// nodes, then the rows. A failed step is retried; after
    /// `attempts_before_error` passes the instance shows ERROR with the
    /// reason, and the delete is still retried.
    async fn delete_instance(&self, inst: &InstanceRow) -> Result<(), String> {
        let subject = EventSubject {
            project_id: Some(inst.project_id),
            instance_id: Some(inst.id),
            node_id: None,
        };
        self.dns
            .set_a_records(&instance_label(&inst.name, &inst.project_name), &[])
            .await
            .map_err(|e| e.to_string())?;
        let nodes = self
            .store
            .read(|c| store::list_nodes(c, inst.id))
            .map_err(|e| e.to_string())?;
        for node in nodes {
            let compute = self.compute.clone();
            tokio::task::spawn_blocking(move || compute.destroy_node(node.id))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        self.store
            .transaction(|tx| store::delete_instance(tx, inst.id))
            .map_err(|e: StoreError| e.to_string())?;
        self.event(
            subject,
            "instance_deleted",
            &format!("instance {}.{} deleted", inst.name, inst.project_name),
        );
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.id);
        Ok(())
    }

    fn record_success(&self, inst: &InstanceRow, subject: EventSubject) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&inst.id);
        let result = self.store.read(|c| {
            if inst.provisioning_status != ProvisioningStatus::Active {
                store::set_instance_provisioning(c, inst.id, ProvisioningStatus::Active, None)?;
            }
            store::refresh_instance_operating(c, inst)
        });
        if let Err(e) = result {
            return tracing::warn!("instance {}: {e}", inst.name);
        }
        let what = match inst.provisioning_status {
            ProvisioningStatus::PendingCreate => "created",
            ProvisioningStatus::PendingUpdate => "updated",
            ProvisioningStatus::Error => "recovered",
            _ => return,
        };
        self.event(
            subject,
            "instance_active",
            &format!(
                "instance {}.{} {what}: ACTIVE",
                inst.name, inst.project_name
            ),
        );
    }

    fn record_failure(
        &self,
        inst: &InstanceRow,
        subject: EventSubject,
        reason: String,
        serving: usize,
    ) {
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
        let result = self.store.read(|c| {
            if give_up {
                store::set_instance_provisioning(
                    c,
                    inst.id,
                    ProvisioningStatus::Error,
                    Some(&reason),
                )?;
            }
            store::set_instance_operating(c, inst.id, operating, Some(&reason))
        });
        if let Err(e) = result {
            tracing::warn!("instance {}: {e}", inst.name);
        }
        if give_up {
            self.event(
                subject,
                "instance_error",
                &format!(
                    "instance {}.{} failed after {attempts} attempts: {reason}",
                    inst.name, inst.project_name
                ),
            );
        } else {
            tracing::warn!(
                "instance {}.{} (attempt {attempts}): {reason}",
                inst.name,
                inst.project_name
            );
        }
    }

    fn set_node(
        &self,
        node: &NodeRow,
        state: NodeState,
        pid: Option<u32>,
        status: OperatingStatus,
    ) {
        if node.state == state && node.pid == pid && node.operating_status == status {
            return;
        }
        if let Err(e) = self
            .store
            .read(|c| store::set_node_observed(c, node.id, state, pid, status))
        {
            tracing::warn!("node {}: {e}", node.id);
        }
    }
}

/// A per-node admin secret: 128 random bits, hex.
fn new_secret() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
