//! Project steps: the project network exists while the project does.

use std::net::{IpAddr, Ipv4Addr};

use super::Reconciler;
use crate::model::managed::ManagedCompute;
use crate::model::{EventKind, ProjectId, ProvisioningStatus};
use crate::store::{self, EventSubject, ProjectRow};

impl Reconciler {
    /// Ensures the network of a live project, and marks a new one ACTIVE.
    pub(super) async fn ensure_project(&self, p: &ProjectRow) {
        if p.deleting {
            return;
        }
        let (id, subnet) = (p.id, p.subnet);
        // From reading the rows to applying them, no backend adds its address.
        let serial = crate::drivers::network::netns::BRIDGE_ADDRESSES
            .lock()
            .await;
        // The node addresses on the project network are exactly those of its node rows.
        let wanted = match self.project_node_addresses(p.id).await {
            // VMs bring their own interfaces: the bridge holds no node
            // address, only those of process backends.
            Ok((_, backends)) if !self.compute.node_address_on_host() => backends,
            Ok((mut nodes, backends)) => {
                nodes.extend(backends);
                nodes
            }
            Err(e) => return tracing::warn!("project {}: {e}", p.name),
        };
        let outcome = self
            .network_call(move |network| {
                network.ensure_project_network(id, &subnet)?;
                network.set_node_addresses(id, &subnet, &wanted, true)
            })
            .await;
        drop(serial);
        let (status, reason, kind, message) = match (&outcome, p.provisioning_status) {
            (Ok(()), ProvisioningStatus::Active) => return,
            // Already shown; one event per failure, not one per pass.
            (Err(e), ProvisioningStatus::Error)
                if p.status_reason.as_deref() == Some(e.to_string().as_str()) =>
            {
                return
            }
            (Ok(()), _) => (
                ProvisioningStatus::Active,
                None,
                EventKind::ProjectReady,
                format!("project {} network {} is ready", p.name, p.subnet),
            ),
            (Err(e), _) => (
                ProvisioningStatus::Error,
                Some(e.to_string()),
                EventKind::ProjectError,
                format!("project {}: {e}", p.name),
            ),
        };
        let subject = EventSubject::project(p.id);
        let written = self
            .store
            .transaction(move |tx| {
                store::set_project_status(tx, id, status, reason.as_deref())?;
                store::add_event(tx, subject, kind, &message)
            })
            .await;
        if let Err(e) = written {
            tracing::warn!("project {}: {e}", p.name);
        }
    }

    /// The addresses of the project's nodes, and of its process backends.
    async fn project_node_addresses(
        &self,
        project_id: ProjectId,
    ) -> Result<(Vec<Ipv4Addr>, Vec<Ipv4Addr>), store::StoreError> {
        self.store
            .read(move |c| {
                let (mut out, mut backends) = (Vec::new(), Vec::new());
                for inst in store::list_instances(c, project_id)? {
                    for node in store::list_nodes(c, inst.id)? {
                        if let IpAddr::V4(a) = node.address {
                            out.push(a);
                        }
                    }
                    // Process backends bind their address on the bridge
                    // too (the driver adds it at start); VMs bring their own.
                    backends.extend(
                        store::backends_of(c, inst.id)?
                            .iter()
                            .filter(|b| b.compute == ManagedCompute::Process)
                            .map(|b| b.address),
                    );
                }
                Ok((out, backends))
            })
            .await
    }

    /// Deletes a project marked for deletion once its instances are gone.
    pub(super) async fn finish_project_delete(&self, p: &ProjectRow) {
        if !p.deleting {
            return;
        }
        let id = p.id;
        match self.store.read(move |c| store::list_instances(c, id)).await {
            Ok(list) if list.is_empty() => {}
            Ok(_) => return,
            Err(e) => return tracing::warn!("project {}: {e}", p.name),
        }
        let removed = self
            .network_call(move |n| n.remove_project_network(id))
            .await;
        if let Err(e) = removed {
            // Shown as ERROR with the reason; the delete stays requested and
            // is tried again on every pass.
            tracing::warn!("project {}: cannot remove its network yet: {e}", p.name);
            let reason = format!("delete: {e}");
            let written = self
                .store
                .transaction(move |c| {
                    store::set_project_status(c, id, ProvisioningStatus::Error, Some(&reason))
                })
                .await;
            if let Err(e) = written {
                tracing::warn!("project {}: {e}", p.name);
            }
            return;
        }
        let message = format!("project {} deleted", p.name);
        let deleted = self
            .store
            .transaction(move |tx| {
                store::delete_project(tx, id)?;
                store::add_event(
                    tx,
                    EventSubject::project(id),
                    EventKind::ProjectDeleted,
                    &message,
                )
            })
            .await;
        if let Err(e) = deleted {
            return tracing::warn!("project {}: {e}", p.name);
        }
        let (network, subnet) = (self.network.clone(), p.subnet);
        let _ = tokio::task::spawn_blocking(move || network.release_subnet(&subnet)).await;
    }

    /// At start-up, before serving: takes the host claims of every stored
    /// project's subnet again (the store is the truth), so no other lbd
    /// allocates them. One that another lbd took while this one was down is
    /// reported here, and its project goes to ERROR on the first pass.
    pub async fn claim_project_subnets(&self) -> Result<(), store::StoreError> {
        let projects = self.store.read(store::list_projects).await?;
        let network = self.network.clone();
        let claimed = tokio::task::spawn_blocking(move || {
            for p in &projects {
                if let Err(e) = network.reclaim_subnet(&p.subnet) {
                    tracing::error!("project {}: {e}", p.name);
                }
            }
        })
        .await;
        if let Err(e) = claimed {
            tracing::error!("claiming the project subnets: {e}");
        }
        Ok(())
    }
}
