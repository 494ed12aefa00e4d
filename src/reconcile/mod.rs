//! The reconciler: closes the gap between the desired state in SQLite and the
//! actual state (node processes, project networks, DNS records).
//!
//! It takes no input: each pass reads the store, observes the drivers and
//! applies idempotent steps, so the same code serves start-up after a crash,
//! an API change (the handlers only write the store and wake it) and a node
//! that died. It runs on a timer and whenever woken; wake-ups coalesce.

mod error;
mod instance;
mod node_rows;
mod project;
mod settled;
pub(crate) mod standby;
pub mod sticky_key;

pub use error::ReconcileError;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::dns::{instance_label, DnsDriver};
use crate::drivers::compute::{Compute, ComputeDriver, NodeObservation};
use crate::drivers::network::NetworkDriver;
use crate::drivers::node_admin::NodeAdmin;
use crate::model::{EventKind, InstanceId, NodeId, NodeState, OperatingStatus, ProjectId};
use crate::store::{self, EventSubject, Store};

/// Knobs of the reconciler.
#[derive(Debug, Clone)]
pub struct ReconcileSettings {
    /// Port of every node's admin API, on the node's address.
    pub node_admin_port: u16,
    /// How long a started node may take to answer its admin API.
    pub node_ready_timeout: Duration,
    /// Failed passes before a `PENDING_*` instance goes to `ERROR`.
    pub attempts_before_error: u32,
    /// How often an `ERROR` instance is tried again.
    pub error_retry: Duration,
    /// Time between passes when nothing wakes the reconciler.
    pub period: Duration,
    /// How long a failed node may take to recover before it is deleted (its
    /// replacement serves meanwhile).
    pub failover_grace: Duration,
    /// A retiring node stays out of DNS at least this long before it is
    /// stopped (the DNS TTL: clients may still hold its address).
    pub drain_min: Duration,
    /// A retiring node is stopped after this even with connections open.
    pub drain_max: Duration,
    /// Where nodes count `global` rate limits (`--redis-url`).
    pub redis: Option<crate::model::node::RedisTarget>,
    /// Where the instances' sticky cookie keys come from; without it a
    /// cookie-sticky pool is balanced as if it were not sticky.
    pub sticky_secret: Option<sticky_key::StickySecret>,
    /// Where `https` instances' private keys are (`store::tls_keys`).
    pub tls_keys: Option<crate::store::tls_keys::KeyStore>,
    /// Where federation token mappings' remote tokens are
    /// (`store::federation_tokens`); without it nodes get no token mapping.
    pub federation_tokens: Option<crate::store::federation_tokens::TokenStore>,
    /// The DNS server nodes resolve host-name backends with (`--resolver`).
    pub resolver: Option<std::net::SocketAddr>,
    /// What nodes refuse among the addresses host names resolve to.
    pub name_guard: Option<crate::model::NameGuard>,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        ReconcileSettings {
            node_admin_port: 9901,
            node_ready_timeout: Duration::from_secs(10),
            attempts_before_error: 3,
            error_retry: Duration::from_secs(30),
            period: Duration::from_secs(1),
            failover_grace: Duration::from_secs(60),
            drain_min: Duration::from_secs(5),
            redis: None,
            sticky_secret: None,
            tls_keys: None,
            federation_tokens: None,
            resolver: None,
            name_guard: None,
            drain_max: Duration::from_secs(30),
        }
    }
}

pub struct Reconciler {
    store: Store,
    compute: Compute,
    network: Arc<dyn NetworkDriver>,
    dns: Arc<dyn DnsDriver>,
    nodes: Arc<dyn NodeAdmin>,
    settings: ReconcileSettings,
    /// Consecutive failed passes per instance, and when an errored one may be retried.
    failures: Mutex<HashMap<InstanceId, (u32, Instant)>>,
    /// Notified when a node becomes running (the managed backends' manager
    /// follows running nodes' events).
    nodes_serving: Arc<Notify>,
}

/// What a pass saw of the instances, for the orphan sweep at its end.
struct Seen {
    /// Every instance's DNS name.
    labels: HashSet<String>,
    /// The certificates (by fingerprint) whose key files are in use.
    tls_fingerprints: HashSet<String>,
}

impl Seen {
    fn of(instances: &[store::InstanceRow]) -> Self {
        Seen {
            labels: instances
                .iter()
                .map(|i| instance_label(&i.name, &i.project_name))
                .collect(),
            tls_fingerprints: instances
                .iter()
                .filter_map(|i| i.spec.tls.as_ref())
                .flat_map(|t| t.certificates.iter().map(|c| c.info.fingerprint.clone()))
                .collect(),
        }
    }
}

impl Reconciler {
    /// `nodes` talks to the nodes' admin APIs (the daemon shares its client
    /// with the health checker; logic tests pass a fake).
    pub fn new(
        store: Store,
        compute: Arc<dyn ComputeDriver>,
        network: Arc<dyn NetworkDriver>,
        dns: Arc<dyn DnsDriver>,
        nodes: Arc<dyn NodeAdmin>,
        settings: ReconcileSettings,
    ) -> Self {
        Reconciler {
            store,
            compute: Compute::new(compute),
            network,
            dns,
            nodes,
            settings,
            failures: Mutex::default(),
            nodes_serving: Arc::new(Notify::new()),
        }
    }

    /// Notified each time a node becomes running.
    pub fn nodes_serving(&self) -> Arc<Notify> {
        self.nodes_serving.clone()
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.reconcile_once().await {
                tracing::warn!("reconcile pass failed: {e}");
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.settings.period) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
        }
    }

    /// One pass over everything: projects, then instances (concurrently), then
    /// project deletions and orphans.
    pub async fn reconcile_once(self: &Arc<Self>) -> Result<(), store::StoreError> {
        let projects = self.store.read(store::list_projects).await?;
        for p in &projects {
            self.ensure_project(p).await;
        }
        let instances = self.store.read(store::all_instances).await?;
        // What the orphan sweep keeps, from this read: a name or key file
        // made during the pass is not swept (no record of it exists yet, and
        // key files have their own grace).
        let seen = Seen::of(&instances);
        let settled = self.settled(&instances).await;
        let mut tasks = tokio::task::JoinSet::new();
        for inst in instances {
            if settled.contains(&inst.id) {
                continue;
            }
            let this = self.clone();
            tasks.spawn(async move { this.reconcile_instance(inst).await });
        }
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res {
                tracing::error!("instance reconcile task panicked: {e}");
            }
        }
        for p in &projects {
            self.finish_project_delete(p).await;
        }
        self.remove_orphans(&seen).await
    }

    /// The instances this pass has nothing to do for (`settled.rs`), from
    /// one read of all node rows and one batch of observations; their DNS
    /// records are made right here (in memory, a no-op when they are).
    async fn settled(&self, instances: &[store::InstanceRow]) -> HashSet<InstanceId> {
        let Ok(nodes) = self.store.read(store::all_nodes).await else {
            return HashSet::new();
        };
        let (candidates, observe) = settled::candidates(instances, &nodes);
        if candidates.is_empty() {
            return HashSet::new();
        }
        let observed: HashMap<NodeId, NodeObservation> =
            match self.compute.observe_nodes(observe).await {
                Ok(list) => list.into_iter().collect(),
                Err(e) => {
                    tracing::warn!("cannot observe nodes: {e}");
                    return HashSet::new();
                }
            };
        let mut ids = settled::settled_ids(&candidates, &observed);
        for (inst, nodes) in &candidates {
            if !ids.contains(&inst.id) {
                continue;
            }
            let serving: Vec<std::net::IpAddr> = nodes
                .iter()
                .filter(|n| n.state == NodeState::Running)
                .map(|n| n.address)
                .collect();
            if let Err(e) = self.publish_dns(inst, &serving).await {
                tracing::warn!("instance {}: {e}", inst.name);
                ids.remove(&inst.id);
            }
        }
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| !ids.contains(id));
        ids
    }

    /// At start-up: a node stored as running whose process is gone died
    /// while lbd was not watching (e.g. the host rebooted). It is started
    /// again at its own address, like a first start, instead of failed over.
    pub async fn restart_nodes_found_dead(&self) -> Result<(), store::StoreError> {
        for node in self.store.read(store::all_nodes).await? {
            if node.state != NodeState::Running {
                continue;
            }
            if let Ok(NodeObservation::Running { .. }) = self.compute.observe_node(node.id).await {
                continue;
            }
            let message = format!(
                "node {} at {} was not running when lbd started; starting it again",
                node.id, node.address
            );
            let id = node.id;
            self.store
                .transaction(move |tx| {
                    if !store::move_node(tx, id, NodeState::Running, NodeState::Starting)? {
                        return Ok(());
                    }
                    store::set_node_process(
                        tx,
                        id,
                        NodeState::Starting,
                        None,
                        OperatingStatus::Offline,
                    )?;
                    store::set_node_applied(tx, id, None)?;
                    let project_id =
                        store::instance_by_id(tx, node.instance_id)?.map(|i| i.project_id);
                    let subject = EventSubject {
                        project_id,
                        instance_id: Some(node.instance_id),
                        node_id: Some(id),
                    };
                    tracing::info!(kind = %EventKind::NodeExited, "{message}");
                    store::add_event(tx, subject, EventKind::NodeExited, &message)
                })
                .await?;
        }
        Ok(())
    }

    /// Resources with no row are removed: node processes whose node row is
    /// gone (e.g. lbd died between deleting the row and stopping the node),
    /// and DNS names of no instance.
    /// Deletes the key files of certificates no instance carries any more
    /// (removed, rotated, or their instance deleted), off the runtime.
    async fn remove_unused_tls_keys(&self, used: &HashSet<String>) {
        let Some(keys) = self.settings.tls_keys.clone() else {
            return;
        };
        let used = used.clone();
        // A key is written just before the spec naming it commits.
        let grace = Duration::from_secs(60);
        match tokio::task::spawn_blocking(move || keys.remove_unused(&used, grace)).await {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!("removed {} unused tls key file(s)", removed.len())
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("tls key files: {e}"),
            Err(e) => tracing::warn!("tls key files: {e}"),
        }
    }

    /// Prunes expired token mappings, then deletes the token files no
    /// mapping names any more (removed, replaced, pruned, or their instance
    /// deleted), off the runtime.
    async fn remove_unused_token_files(&self) {
        let Some(tokens) = self.settings.federation_tokens.clone() else {
            return;
        };
        let now = store::now();
        if let Ok(true) = self
            .store
            .read(move |c| store::has_expired_tokens(c, now))
            .await
        {
            let pruned = self
                .store
                .transaction(move |tx| store::prune_expired_tokens(tx, now))
                .await;
            if let Err(e) = pruned {
                tracing::warn!("expired token mappings: {e}");
            }
        }
        let used = match self.store.read(store::all_token_secret_ids).await {
            Ok(used) => used,
            Err(e) => return tracing::warn!("federation token files: {e}"),
        };
        // A token file is written just before the mapping naming it commits.
        let grace = Duration::from_secs(60);
        match tokio::task::spawn_blocking(move || tokens.remove_unused(&used, grace)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("removed {n} unused federation token file(s)"),
            Ok(Err(e)) => tracing::warn!("federation token files: {e}"),
            Err(e) => tracing::warn!("federation token files: {e}"),
        }
    }

    async fn remove_orphans(&self, seen: &Seen) -> Result<(), store::StoreError> {
        let known: HashSet<NodeId> = self
            .store
            .read(store::all_nodes)
            .await?
            .iter()
            .map(|n| n.id)
            .collect();
        let running = match self.compute.list_nodes().await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("cannot list nodes: {e}");
                Vec::new()
            }
        };
        for node_id in running {
            if !known.contains(&node_id) {
                let subject = EventSubject {
                    node_id: Some(node_id),
                    ..Default::default()
                };
                let removed = self.compute.destroy_node(node_id).await;
                self.orphan_removed(subject, format!("node {node_id}"), removed)
                    .await;
            }
        }
        let projects: HashSet<ProjectId> = self
            .store
            .read(store::list_projects)
            .await?
            .iter()
            .map(|p| p.id)
            .collect();
        for project_id in self.network.project_networks() {
            if projects.contains(&project_id) {
                continue;
            }
            let removed = self
                .network_call(move |n| n.remove_project_network(project_id))
                .await;
            self.orphan_removed(
                EventSubject::project(project_id),
                format!("network of project {project_id}"),
                removed,
            )
            .await;
        }
        self.remove_unused_tls_keys(&seen.tls_fingerprints).await;
        self.remove_unused_token_files().await;
        for name in self.dns.names().await {
            if !seen.labels.contains(&name) {
                if let Err(e) = self.dns.set_a_records(&name, &[]).await {
                    tracing::warn!("orphan DNS name {name}: {e}");
                }
            }
        }
        Ok(())
    }

    /// Runs a network driver call on a blocking thread (netlink and
    /// namespace setup block), like [`Compute`] does for compute calls.
    async fn network_call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn NetworkDriver) -> Result<T, crate::drivers::network::NetworkError>
            + Send
            + 'static,
    ) -> Result<T, ReconcileError> {
        let network = self.network.clone();
        tokio::task::spawn_blocking(move || call(network.as_ref()))
            .await
            .map_err(|e| ReconcileError::Task {
                task: "network",
                reason: e.to_string(),
            })?
            .map_err(ReconcileError::from)
    }

    /// Records the outcome of removing `what`, a resource with no row.
    async fn orphan_removed<E: std::fmt::Display>(
        &self,
        subject: EventSubject,
        what: String,
        removed: Result<(), E>,
    ) {
        match removed {
            Ok(()) => {
                self.event(
                    subject,
                    EventKind::OrphanRemoved,
                    format!("{what} had no row and was removed"),
                )
                .await
            }
            Err(e) => tracing::warn!("orphan {what}: {e}"),
        }
    }

    async fn event(&self, subject: EventSubject, kind: EventKind, message: String) {
        tracing::info!(%kind, "{message}");
        self.store.record_event(subject, kind, message).await;
    }
}

#[cfg(test)]
mod tests;
