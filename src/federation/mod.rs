//! lbd's side of federation mappings (issue 18): sharing them with the
//! nodes. The data plane (`dataplane::federation`) routes by them; the
//! store (`store::federation`) keeps them.
//!
//! - [`MappingSync::push`]: `PUT /mappings` of an instance's whole set to
//!   every running node, in parallel, each bounded by [`PUSH_TIMEOUT`]. The
//!   API calls it after a `create`/`delete mapping` before it answers.
//! - [`MappingSync::learned`] / [`MappingSync::removed`]: what a node
//!   reports on its `GET /events` stream (`managed::events` follows the
//!   streams of federation instances too): stored as `learned`, and when
//!   the version changed, pushed to all the instance's nodes (spawned and
//!   coalesced, so the items of one aggregated list make one push).
//! - [`MappingSync::catch_up`]: the once-a-second pass (from the managed
//!   tick): nodes whose last accepted version is behind the stored one
//!   (a failed push, a node lbd has not pushed to since it started) get
//!   the set again, a failing node at most every few seconds.
//!
//! A node that starts gets the set in its first config
//! (`reconcile::instance`), before it enters DNS.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::drivers::node_admin::NodeAdminClient;
use crate::model::federation::{NodeMappings, ResourceKey, ResourceMapping};
use crate::model::mapping::{validate_learned_key, MappingSource, MAX_RESOURCE_MAPPINGS};
use crate::model::{InstanceId, NodeId};
use crate::store::federation_tokens::TokenStore;
use crate::store::{self, NodeRow, Store, StoreError};

#[cfg(test)]
mod tests;

/// How long one node gets to take a push.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a learned change waits for more before its push goes.
const COALESCE: Duration = Duration::from_millis(20);
/// A node that failed a push is tried again after this, doubling per
/// failure up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// How a push went: how many of the instance's running nodes took it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pushed {
    pub pushed_to: u32,
    pub nodes: u32,
}

/// What lbd knows of one node's mappings.
#[derive(Debug, Clone, Copy, Default)]
struct NodeSync {
    /// The version the node last accepted from lbd.
    accepted: Option<u64>,
    failures: u32,
    retry_at: Option<Instant>,
}

#[derive(Default)]
struct SyncState {
    nodes: HashMap<NodeId, NodeSync>,
    /// One push at a time per instance, so versions reach nodes in order.
    locks: HashMap<InstanceId, Arc<tokio::sync::Mutex<()>>>,
    /// Instances whose coalesced push is scheduled.
    scheduled: HashSet<InstanceId>,
}

pub struct MappingSync {
    store: Store,
    tokens: TokenStore,
    admin: NodeAdminClient,
    admin_port: u16,
    state: Mutex<SyncState>,
    /// A catch-up pass is under way (passes never pile up).
    busy: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MappingSync {
    pub fn new(store: Store, tokens: TokenStore, admin_port: u16) -> Self {
        MappingSync {
            store,
            tokens,
            admin: NodeAdminClient::new(PUSH_TIMEOUT),
            admin_port,
            state: Mutex::default(),
            busy: AtomicBool::new(false),
        }
    }

    /// The version `node` last accepted from this lbd.
    pub fn accepted(&self, node: NodeId) -> Option<u64> {
        lock(&self.state).nodes.get(&node).and_then(|s| s.accepted)
    }

    /// Where the remote tokens are (the API writes them).
    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// Pushes the instance's whole set to every running node now; returns
    /// once each took it, refused it or timed out. A node that did not
    /// take it is tried again by [`MappingSync::catch_up`].
    pub async fn push(&self, instance: InstanceId) -> Pushed {
        self.push_to(instance, false).await
    }

    /// `behind_only`: only the nodes that have not accepted the current
    /// version and whose retry time has come.
    async fn push_to(&self, instance: InstanceId, behind_only: bool) -> Pushed {
        let gate = lock(&self.state).locks.entry(instance).or_default().clone();
        let _in_order = gate.lock().await;
        let tokens = self.tokens.clone();
        let read = self
            .store
            .read(move |c| {
                let nodes = store::list_nodes(c, instance)?;
                let mappings = store::node_mappings(c, Some(&tokens), instance, store::now())?;
                Ok::<_, StoreError>((nodes, mappings))
            })
            .await;
        let (nodes, mappings) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("mappings of instance {instance}: {e}");
                return Pushed::default();
            }
        };
        let running: Vec<&NodeRow> = nodes.iter().filter(|n| n.state.is_configured()).collect();
        let now = Instant::now();
        let targets: Vec<&NodeRow> = {
            let state = lock(&self.state);
            running
                .iter()
                .copied()
                .filter(|n| !behind_only || is_due(state.nodes.get(&n.id), mappings.version, now))
                .collect()
        };
        let results =
            futures_util::future::join_all(targets.iter().map(|n| self.push_node(n, &mappings)))
                .await;
        let mut pushed_to = 0;
        let mut state = lock(&self.state);
        for (node, accepted) in targets.iter().zip(results) {
            let entry = state.nodes.entry(node.id).or_default();
            match accepted {
                Some(v) => {
                    pushed_to += 1;
                    *entry = NodeSync {
                        accepted: Some(v.max(mappings.version)),
                        failures: 0,
                        retry_at: None,
                    };
                }
                None => {
                    entry.failures = entry.failures.saturating_add(1);
                    entry.retry_at = Some(Instant::now() + retry_after(entry.failures));
                }
            }
        }
        Pushed {
            pushed_to,
            nodes: running.len() as u32,
        }
    }

    /// One node's `PUT /mappings`: the version it accepted, or `None`.
    async fn push_node(&self, node: &NodeRow, mappings: &NodeMappings) -> Option<u64> {
        let addr = SocketAddr::new(node.address, self.admin_port);
        let put = self.admin.put_mappings(addr, &node.secret, mappings);
        match tokio::time::timeout(PUSH_TIMEOUT, put).await {
            Ok(Ok(reported)) => Some(reported.unwrap_or(mappings.version)),
            Ok(Err(e)) => {
                // The error names the node, never the body (it holds tokens).
                tracing::debug!("node {}: PUT /mappings: {e}", node.id);
                None
            }
            Err(_) => {
                tracing::debug!("node {}: PUT /mappings timed out", node.id);
                None
            }
        }
    }

    /// A node found where a resource lives: stored as learned; when that
    /// changed the version, every node of the instance gets the new set.
    pub async fn learned(self: &Arc<Self>, instance: InstanceId, m: ResourceMapping) {
        let changed = self
            .store
            .transaction(move |tx| {
                let Some(inst) = store::instance_by_id(tx, instance)? else {
                    return Ok(false);
                };
                if let Err(e) = check_learned(&inst.spec, &m) {
                    tracing::debug!("instance {instance}: learned mapping ignored: {e}");
                    return Ok(false);
                }
                let known = store::resource_mapping(tx, instance, &m.key)?.is_some();
                if !known && store::count_mappings(tx, instance)?.0 >= MAX_RESOURCE_MAPPINGS {
                    tracing::warn!(
                        "instance {instance}: {MAX_RESOURCE_MAPPINGS} resource mappings; \
                         a learned one is not stored"
                    );
                    return Ok(false);
                }
                let now = store::now();
                Ok::<_, StoreError>(
                    store::put_resource_mapping(tx, instance, &m, MappingSource::Learned, now)?
                        .changed,
                )
            })
            .await;
        self.after_change(instance, changed);
    }

    /// A provider answered a `DELETE` of the resource: its mapping goes.
    pub async fn removed(self: &Arc<Self>, instance: InstanceId, key: ResourceKey) {
        let changed = self
            .store
            .transaction(move |tx| {
                if validate_learned_key(&key).is_err() {
                    return Ok(false);
                }
                Ok::<_, StoreError>(store::delete_resource_mapping(tx, instance, &key)?.is_some())
            })
            .await;
        self.after_change(instance, changed);
    }

    fn after_change(self: &Arc<Self>, instance: InstanceId, changed: Result<bool, StoreError>) {
        match changed {
            Ok(true) => self.schedule(instance),
            Ok(false) => {}
            // The node keeps routing by what it learned; it reports it
            // again the next time it learns it.
            Err(e) => tracing::warn!("instance {instance}: a learned mapping: {e}"),
        }
    }

    /// Pushes the instance's set soon, in the background: changes that come
    /// meanwhile go in the same push.
    fn schedule(self: &Arc<Self>, instance: InstanceId) {
        if !lock(&self.state).scheduled.insert(instance) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(COALESCE).await;
            lock(&this.state).scheduled.remove(&instance);
            this.push(instance).await;
        });
    }

    /// The periodic pass: nodes behind the stored version get the set again
    /// (in the background; a pass still under way is not doubled). Nodes
    /// that are gone are forgotten.
    pub fn catch_up(self: &Arc<Self>) {
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.catch_up_once().await;
            this.busy.store(false, Ordering::Release);
        });
    }

    /// One catch-up pass, awaited.
    pub async fn catch_up_once(&self) {
        let read = self
            .store
            .read(|c| {
                Ok::<_, StoreError>((
                    store::all_instances(c)?,
                    store::all_nodes(c)?,
                    store::all_mappings_versions(c)?,
                ))
            })
            .await;
        let (instances, nodes, versions) = match read {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("mappings catch-up: {e}");
                return;
            }
        };
        {
            let mut state = lock(&self.state);
            let alive: HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
            state.nodes.retain(|id, _| alive.contains(id));
            let live: HashSet<InstanceId> = instances.iter().map(|i| i.id).collect();
            state.locks.retain(|id, _| live.contains(id));
        }
        let now = Instant::now();
        let behind: Vec<InstanceId> = instances
            .iter()
            .filter(|i| !i.deleting && i.spec.federation.is_some())
            .filter(|i| {
                let version = versions.get(&i.id).copied().unwrap_or(0);
                let state = lock(&self.state);
                nodes.iter().any(|n| {
                    n.instance_id == i.id
                        && n.state.is_configured()
                        && is_due(state.nodes.get(&n.id), version, now)
                })
            })
            .map(|i| i.id)
            .collect();
        futures_util::future::join_all(behind.into_iter().map(|i| self.push_to(i, true))).await;
    }
}

/// Whether a node should get the set: it has not accepted `version`, and
/// its retry time (after a failure) has come.
fn is_due(sync: Option<&NodeSync>, version: u64, now: Instant) -> bool {
    match sync {
        None => true,
        Some(s) => s.accepted.is_none_or(|a| a < version) && s.retry_at.is_none_or(|t| t <= now),
    }
}

fn retry_after(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(5);
    (FIRST_RETRY * (1u32 << shift)).min(MAX_RETRY)
}

/// A learned mapping is taken for an instance with a federation that has
/// its provider, and a key an injected one could have.
fn check_learned(
    spec: &crate::model::InstanceSpec,
    m: &ResourceMapping,
) -> Result<(), crate::model::ValidationError> {
    validate_learned_key(&m.key)?;
    spec.check_provider(&m.provider)?;
    Ok(())
}
