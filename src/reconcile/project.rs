//! Project steps: the project network exists while the project does.

use std::net::{IpAddr, Ipv4Addr};

use super::Reconciler;
use crate::model::ProvisioningStatus;
use crate::store::{self, EventSubject, ProjectRow};

impl Reconciler {
    /// Ensures the network of a live project, and marks a new one ACTIVE.
    pub(super) async fn ensure_project(&self, p: &ProjectRow) {
        if p.deleting {
            return;
        }
        let network = self.network.clone();
        let (id, subnet) = (p.id, p.subnet);
        // The node addresses on the project network are exactly those of its node rows.
        let wanted = match self.project_node_addresses(p.id) {
            // VMs bring their own interfaces: the bridge holds no node address.
            Ok(_) if !self.compute.node_address_on_host() => Vec::new(),
            Ok(w) => w,
            Err(e) => return tracing::warn!("project {}: {e}", p.name),
        };
        let result = tokio::task::spawn_blocking(move || {
            network.ensure_project_network(id, &subnet)?;
            network.set_node_addresses(id, &subnet, &wanted, true)
        })
        .await;
        let subject = EventSubject {
            project_id: Some(p.id),
            ..Default::default()
        };
        let outcome = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(format!("network task failed: {e}")),
        };
        let next = match (&outcome, p.provisioning_status) {
            (Ok(()), ProvisioningStatus::Active) => return,
            (Ok(()), _) => (ProvisioningStatus::Active, None),
            (Err(reason), _) => (ProvisioningStatus::Error, Some(reason.as_str())),
        };
        if let Err(e) = self
            .store
            .read(|c| store::set_project_status(c, p.id, next.0, next.1))
        {
            tracing::warn!("project {}: {e}", p.name);
            return;
        }
        match outcome {
            Ok(()) => self.event(
                subject,
                "project_ready",
                &format!("project {} network {} is ready", p.name, p.subnet),
            ),
            Err(reason) => self.event(
                subject,
                "project_error",
                &format!("project {}: {reason}", p.name),
            ),
        }
    }

    fn project_node_addresses(&self, project_id: i64) -> Result<Vec<Ipv4Addr>, store::StoreError> {
        self.store.read(|c| {
            let mut out = Vec::new();
            for inst in store::list_instances(c, project_id)? {
                for node in store::list_nodes(c, inst.id)? {
                    if let IpAddr::V4(a) = node.address {
                        out.push(a);
                    }
                }
            }
            Ok(out)
        })
    }

    /// Deletes a project marked for deletion once its instances are gone.
    pub(super) async fn finish_project_delete(&self, p: &ProjectRow) {
        if !p.deleting {
            return;
        }
        match self.store.read(|c| store::list_instances(c, p.id)) {
            Ok(list) if list.is_empty() => {}
            Ok(_) => return,
            Err(e) => return tracing::warn!("project {}: {e}", p.name),
        }
        let network = self.network.clone();
        let id = p.id;
        let removed =
            match tokio::task::spawn_blocking(move || network.remove_project_network(id)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
        if let Err(e) = removed {
            // Shown as ERROR with the reason; the delete stays requested and
            // is tried again on every pass.
            tracing::warn!("project {}: cannot remove its network yet: {e}", p.name);
            let reason = format!("delete: {e}");
            if let Err(e) = self.store.read(|c| {
                store::set_project_status(c, p.id, ProvisioningStatus::Error, Some(&reason))
            }) {
                tracing::warn!("project {}: {e}", p.name);
            }
            return;
        }
        let subject = EventSubject {
            project_id: Some(p.id),
            ..Default::default()
        };
        match self.store.transaction(|tx| store::delete_project(tx, p.id)) {
            Ok(()) => self.event(
                subject,
                "project_deleted",
                &format!("project {} deleted", p.name),
            ),
            Err::<(), store::StoreError>(e) => tracing::warn!("project {}: {e}", p.name),
        }
    }
}
