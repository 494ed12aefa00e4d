//! One `GET /events` per running node of an instance with managed pools or
//! a federation, reconnected when it drops. Wakes go to the manager's loop
//! at once; learned federation mappings to `crate::federation`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{lock, Shared, Signal};
use crate::model::wake::NodeEvent;
use crate::model::{InstanceId, NodeId};

/// A node sends a keepalive every few seconds; silence this long means the
/// stream is dead even if the socket is not closed.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Pause between reconnects to a node that is not answering.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);

/// The stream tasks, by node (and whether each follows a managed instance).
#[derive(Default)]
pub(crate) struct Streams {
    tasks: HashMap<NodeId, (JoinHandle<()>, bool)>,
}

/// A node whose stream should be open.
pub(crate) struct StreamTarget {
    pub node: NodeId,
    pub instance: InstanceId,
    pub addr: SocketAddr,
    pub secret: String,
    /// The instance has managed pools (else only its mappings matter).
    pub managed: bool,
}

impl Streams {
    /// Opens a stream to each of `wanted` not yet followed; ends the others.
    /// A stream whose instance gained or lost its managed pools is opened
    /// again (wakes count only for managed instances).
    pub fn sync(&mut self, shared: &Arc<Shared>, wanted: Vec<StreamTarget>) {
        let keep: HashMap<NodeId, bool> = wanted.iter().map(|w| (w.node, w.managed)).collect();
        self.tasks.retain(|id, (task, managed)| {
            let stay = keep.get(id) == Some(managed) && !task.is_finished();
            if !stay {
                task.abort();
            }
            stay
        });
        for w in wanted {
            if !self.tasks.contains_key(&w.node) {
                let (node, managed) = (w.node, w.managed);
                self.tasks
                    .insert(node, (tokio::spawn(follow(shared.clone(), w)), managed));
            }
        }
    }

    pub fn stop_all(&mut self) {
        for (_, (task, _)) in self.tasks.drain() {
            task.abort();
        }
    }
}

/// Follows one node's events until aborted.
async fn follow(shared: Arc<Shared>, t: StreamTarget) {
    loop {
        match shared.admin.events(t.addr, &t.secret).await {
            Ok(mut stream) => loop {
                let next = tokio::time::timeout(SILENCE_LIMIT, stream.next()).await;
                let event = match next {
                    Ok(Some(Ok(e))) => e,
                    Ok(Some(Err(e))) => {
                        tracing::debug!("node {} events: {e}", t.node);
                        break;
                    }
                    Ok(None) | Err(_) => break,
                };
                tracing::debug!("node {}: {event:?}", t.node);
                if !on_event(&shared, &t, event).await {
                    return;
                }
            },
            Err(e) => tracing::debug!("node {} events: {e}", t.node),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
}

/// Hands the event to the loop; `false` once the loop is gone.
async fn on_event(shared: &Arc<Shared>, t: &StreamTarget, event: NodeEvent) -> bool {
    let signal = match event {
        // Stored here, in the stream's order (a removal after a learning
        // stays after it); the push to the other nodes is spawned.
        NodeEvent::MappingLearned(m) => {
            if let Some(sync) = &shared.mappings {
                sync.learned(t.instance, m).await;
            }
            return true;
        }
        NodeEvent::MappingRemoved(key) => {
            if let Some(sync) = &shared.mappings {
                sync.removed(t.instance, key).await;
            }
            return true;
        }
        NodeEvent::Keepalive => return true,
        // An instance followed only for its federation has no managed state.
        NodeEvent::Hello { .. } | NodeEvent::Wake(_) if !t.managed => return true,
        NodeEvent::Wake(demand) => Signal::Wake(t.instance, demand),
        NodeEvent::Hello {
            managed_version, ..
        } => {
            let pushed = lock(&shared.versions).get(&t.instance).copied();
            if managed_version.is_some() && managed_version == pushed {
                return true;
            }
            Signal::Resync(t.instance)
        }
    };
    shared.signals.send(signal).await.is_ok()
}
