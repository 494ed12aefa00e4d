//! What the monitor log records: one closed set of event kinds, stored and
//! shown as snake_case text.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

macro_rules! event_kinds {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// The kind of a monitor-log event.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum EventKind {
            $($(#[$doc])* #[serde(rename = $text)] $variant,)*
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $text,)*
                }
            }
        }
    };
}

event_kinds! {
    /// A project was accepted by the API.
    ProjectCreated => "project_created",
    /// A project's network is ready and the project ACTIVE.
    ProjectReady => "project_ready",
    /// A project's network could not be set up.
    ProjectError => "project_error",
    ProjectDeleted => "project_deleted",
    /// An instance was accepted by the API.
    InstanceCreated => "instance_created",
    /// An instance's new spec was accepted by the API.
    InstanceUpdated => "instance_updated",
    /// An instance reached ACTIVE (created, updated or recovered).
    InstanceActive => "instance_active",
    /// An instance gave up after repeated failures and shows ERROR.
    InstanceError => "instance_error",
    InstanceDeleted => "instance_deleted",
    /// A node answers its admin API and serves the current config.
    NodeReady => "node_ready",
    /// A node is booted and runs the current config, out of DNS, as a
    /// standby (`standby_nodes`).
    NodeStandby => "node_standby",
    /// A standby entered DNS: failover or scale-out, with no boot.
    NodePromoted => "node_promoted",
    /// A node's process or VM ended.
    NodeExited => "node_exited",
    /// A node missed its health checks and is failed over.
    NodeFailed => "node_failed",
    /// A failed node passed its health checks again within the grace period.
    NodeRecovered => "node_recovered",
    /// A new node replaces a failed one.
    Failover => "failover",
    /// A failed node was deleted after the grace period.
    NodeDeleted => "node_deleted",
    /// A node left DNS to drain (scale-in, or a replacement no longer needed).
    NodeRetiring => "node_retiring",
    NodeRetired => "node_retired",
    /// The circuit breaker opened: too many nodes failing at once.
    FailoverPaused => "failover_paused",
    FailoverResumed => "failover_resumed",
    ScaleOut => "scale_out",
    ScaleIn => "scale_in",
    /// The autoscaler would scale out, but the owner's `max_nodes` quota
    /// is reached (recorded once per streak of such decisions).
    ScaleBlocked => "scale_blocked",
    /// A resource without a row (a node, a project network) was removed.
    OrphanRemoved => "orphan_removed",
    /// lbd started a managed backend (a wake, a scale-up or `min`).
    BackendStarting => "backend_starting",
    /// A managed backend passed `ready` and was pushed to the nodes.
    BackendReady => "backend_ready",
    /// A managed backend exited or missed `start_timeout` before it was
    /// ready; the message carries the last lines it wrote.
    BackendStartFailed => "backend_start_failed",
    /// A managed backend was stopped (idle, scale-down or instance deleted).
    BackendStopped => "backend_stopped",
    /// A ready managed backend's process or VM ended by itself.
    BackendExited => "backend_exited",
}

impl EventKind {
    pub fn parse(s: &str) -> Option<EventKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Something went wrong (shown in red by `lbctl top`).
    pub fn is_trouble(self) -> bool {
        use EventKind::*;
        matches!(
            self,
            InstanceError | ProjectError | NodeExited | NodeFailed | FailoverPaused
        )
    }

    /// The autoscaler acted.
    pub fn is_scaling(self) -> bool {
        matches!(
            self,
            EventKind::ScaleOut | EventKind::ScaleIn | EventKind::ScaleBlocked
        )
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_as_text_and_json() {
        for &kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
        assert_eq!(EventKind::parse("no_such_kind"), None);
    }
}
