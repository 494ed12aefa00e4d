//! A fake host for logic tests: node processes and their admin APIs in one.
//! A started node answers `/status`; a killed one does not, and loses its
//! config. Failure switches make each driver call fail or hang on demand.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::dns::BoxFuture;
use crate::drivers::compute::{ComputeDriver, ComputeError, NodeObservation, NodeSpec};
use crate::drivers::node_admin::{NodeAdmin, NodeAdminError};
use crate::model::{NodeConfig, NodeId, NodeStatus};

#[derive(Default)]
pub struct FakeHost {
    /// Running nodes by id: (admin address, config version in force).
    running: Mutex<HashMap<NodeId, (SocketAddr, Option<u64>)>>,
    exited: Mutex<HashMap<NodeId, String>>,
    pub starts: AtomicUsize,
    pub pushes: AtomicUsize,
    pub status_calls: AtomicUsize,
    pub configs: Mutex<Vec<NodeConfig>>,
    /// Added to every pid, to simulate a node restarted behind lbd's back.
    pub pid_offset: AtomicU32,
    /// When set, starting a node fails with this message.
    pub refuse_start: Mutex<Option<String>>,
    /// When set, every config push fails with this message.
    pub refuse_config: Mutex<Option<String>>,
    /// When set, stopping a node fails with this message.
    pub refuse_destroy: Mutex<Option<String>>,
    /// When set, `/status` never answers (a SIGSTOPped node).
    pub hang_status: AtomicBool,
}

impl FakeHost {
    /// The node's process dies, as by `kill -9`.
    pub fn kill(&self, node_id: NodeId) {
        self.running.lock().unwrap().remove(&node_id);
        self.exited
            .lock()
            .unwrap()
            .insert(node_id, "killed by signal 9".into());
    }

    fn pid(&self, node_id: NodeId) -> u32 {
        1000 + node_id.0 as u32 + self.pid_offset.load(Ordering::SeqCst)
    }
}

impl ComputeDriver for FakeHost {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn ensure_node(&self, spec: &NodeSpec) -> Result<NodeObservation, ComputeError> {
        if let Some(reason) = self.refuse_start.lock().unwrap().clone() {
            return Err(ComputeError::Start {
                node_id: spec.node_id,
                reason,
            });
        }
        if let std::collections::hash_map::Entry::Vacant(slot) =
            self.running.lock().unwrap().entry(spec.node_id)
        {
            self.starts.fetch_add(1, Ordering::SeqCst);
            slot.insert((spec.admin_addr, None));
            self.exited.lock().unwrap().remove(&spec.node_id);
        }
        Ok(NodeObservation::Running {
            pid: self.pid(spec.node_id),
        })
    }

    fn observe_node(&self, node_id: NodeId) -> NodeObservation {
        if self.running.lock().unwrap().contains_key(&node_id) {
            NodeObservation::Running {
                pid: self.pid(node_id),
            }
        } else if let Some(reason) = self.exited.lock().unwrap().get(&node_id) {
            NodeObservation::Exited {
                reason: reason.clone(),
            }
        } else {
            NodeObservation::Absent
        }
    }

    fn destroy_node(&self, node_id: NodeId) -> Result<(), ComputeError> {
        if let Some(reason) = self.refuse_destroy.lock().unwrap().clone() {
            return Err(ComputeError::Stop { node_id, reason });
        }
        self.running.lock().unwrap().remove(&node_id);
        self.exited.lock().unwrap().remove(&node_id);
        Ok(())
    }

    fn list_nodes(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.running.lock().unwrap().keys().copied().collect();
        ids.sort();
        ids
    }

    fn log_tail(&self, _node_id: NodeId) -> String {
        String::new()
    }
}

impl NodeAdmin for FakeHost {
    fn status<'a>(
        &'a self,
        addr: SocketAddr,
        _secret: &'a str,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        Box::pin(async move {
            self.status_calls.fetch_add(1, Ordering::SeqCst);
            if self.hang_status.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let version = {
                let running = self.running.lock().unwrap();
                running
                    .values()
                    .find(|(a, _)| *a == addr)
                    .map(|(_, v)| *v)
                    .ok_or(NodeAdminError::Unreachable {
                        addr,
                        reason: "connection refused".into(),
                    })?
            };
            Ok(NodeStatus {
                config_version: version,
                ..Default::default()
            })
        })
    }

    fn put_config<'a>(
        &'a self,
        addr: SocketAddr,
        _secret: &'a str,
        config: &'a NodeConfig,
    ) -> BoxFuture<'a, Result<NodeStatus, NodeAdminError>> {
        Box::pin(async move {
            if let Some(message) = self.refuse_config.lock().unwrap().clone() {
                return Err(NodeAdminError::Refused {
                    addr,
                    status: 500,
                    message,
                });
            }
            self.pushes.fetch_add(1, Ordering::SeqCst);
            self.configs.lock().unwrap().push(config.clone());
            let mut running = self.running.lock().unwrap();
            let entry = running
                .values_mut()
                .find(|(a, _)| *a == addr)
                .expect("pushed to a running node");
            entry.1 = Some(config.version);
            Ok(NodeStatus {
                config_version: Some(config.version),
                ..Default::default()
            })
        })
    }
}
