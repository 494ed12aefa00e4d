//! Octavia-style status split: what the control plane is doing to an object
//! (`provisioning_status`) and whether it serves (`operating_status`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProvisioningStatus {
    PendingCreate,
    PendingUpdate,
    PendingDelete,
    Active,
    Error,
}

impl ProvisioningStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingCreate => "PENDING_CREATE",
            Self::PendingUpdate => "PENDING_UPDATE",
            Self::PendingDelete => "PENDING_DELETE",
            Self::Active => "ACTIVE",
            Self::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::PendingCreate,
            Self::PendingUpdate,
            Self::PendingDelete,
            Self::Active,
            Self::Error,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Writes to an object in a `PENDING_*` state are refused (409) until the
    /// reconciler has finished with it.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            Self::PendingCreate | Self::PendingUpdate | Self::PendingDelete
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperatingStatus {
    Online,
    Degraded,
    Offline,
    NoMonitor,
}

impl OperatingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "ONLINE",
            Self::Degraded => "DEGRADED",
            Self::Offline => "OFFLINE",
            Self::NoMonitor => "NO_MONITOR",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Online, Self::Degraded, Self::Offline, Self::NoMonitor]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// Where an LB node is in its life. Stored as lowercase text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Created or being (re)started; not in DNS yet.
    Starting,
    /// Serving and in DNS; the health checker polls it.
    Running,
    /// Booted, configured and checked, but out of DNS (`standby_nodes`):
    /// on failover or scale-out it is promoted to running at once, so no
    /// boot stands between a failure and its replacement.
    Standby,
    /// Missed `unhealth-threshold` checks: out of DNS, replaced; deleted after
    /// the grace period unless it recovers first.
    Failed,
    /// Out of DNS and draining before it is deleted (scale-in, or a
    /// replacement no longer needed).
    Retiring,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Standby => "standby",
            Self::Failed => "failed",
            Self::Retiring => "retiring",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Starting,
            Self::Running,
            Self::Standby,
            Self::Failed,
            Self::Retiring,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }

    /// Counts towards the instance's node target, standbys included (a
    /// failed or retiring node does not).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Starting | Self::Running | Self::Standby)
    }

    /// Runs the instance's current config and gets every push that goes
    /// with it (managed members, mappings): a running node, and a standby,
    /// which must be ready to serve the moment it is promoted.
    pub fn is_configured(self) -> bool {
        matches!(self, Self::Running | Self::Standby)
    }

    /// The node state machine: the only moves the store lets anyone make
    /// (see the table in docs/ARCHITECTURE.md). A node leaves the machine
    /// by its row being deleted: from `failed` after the grace period, from
    /// `retiring` once drained, or with its instance.
    pub fn can_move_to(self, to: NodeState) -> bool {
        use NodeState::*;
        matches!(
            (self, to),
            // The reconciler: the node answers and runs the current config.
            (Starting, Running)
            // The reconciler: scale-in, or a replacement no longer needed.
            | (Starting | Running, Retiring)
            // lbd found the node dead at start-up: start it again in place.
            | (Running, Starting)
            // The health checker: missed `unhealth-threshold` checks.
            | (Running, Failed)
            // The health checker: passed `health-threshold` checks within grace.
            | (Failed, Running)
            // The reconciler: a ready node beyond the serving target waits
            // booted; or scale-in keeps a serving node as the standby.
            | (Starting | Running, Standby)
            // Failover (the health checker) or scale-out (the reconciler).
            | (Standby, Running)
            // Fewer standbys wanted, or the standby itself failed.
            | (Standby, Retiring)
        )
    }
}

/// An instance's `operating_status` from its nodes: OFFLINE with none
/// serving; DEGRADED with fewer serving than `target`, a failed node, or a
/// node with backend members down; else ONLINE.
pub fn derive_operating_status(
    nodes: &[(NodeState, OperatingStatus)],
    target: usize,
) -> OperatingStatus {
    let serving: Vec<OperatingStatus> = nodes
        .iter()
        .filter(|(state, op)| {
            *state == NodeState::Running
                && matches!(op, OperatingStatus::Online | OperatingStatus::Degraded)
        })
        .map(|(_, op)| *op)
        .collect();
    let failed = nodes.iter().any(|(s, _)| *s == NodeState::Failed);
    if serving.is_empty() {
        OperatingStatus::Offline
    } else if failed || serving.len() < target || serving.contains(&OperatingStatus::Degraded) {
        OperatingStatus::Degraded
    } else {
        OperatingStatus::Online
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_strings() {
        for s in [
            "PENDING_CREATE",
            "PENDING_UPDATE",
            "PENDING_DELETE",
            "ACTIVE",
            "ERROR",
        ] {
            let p = ProvisioningStatus::parse(s).unwrap();
            assert_eq!(p.as_str(), s);
            assert_eq!(serde_json::to_value(p).unwrap(), s);
        }
        for s in ["ONLINE", "DEGRADED", "OFFLINE", "NO_MONITOR"] {
            assert_eq!(OperatingStatus::parse(s).unwrap().as_str(), s);
        }
        for s in ["starting", "running", "standby", "failed", "retiring"] {
            assert_eq!(NodeState::parse(s).unwrap().as_str(), s);
        }
        assert!(ProvisioningStatus::PendingUpdate.is_pending());
        assert!(!ProvisioningStatus::Error.is_pending());
    }

    #[test]
    fn node_state_machine_allows_only_its_moves() {
        use NodeState::*;
        let all = [Starting, Running, Standby, Failed, Retiring];
        let allowed: Vec<(NodeState, NodeState)> = all
            .iter()
            .flat_map(|&a| all.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.can_move_to(b))
            .collect();
        assert_eq!(
            allowed,
            [
                (Starting, Running),
                (Starting, Standby),
                (Starting, Retiring),
                (Running, Starting),
                (Running, Standby),
                (Running, Failed),
                (Running, Retiring),
                (Standby, Running),
                (Standby, Retiring),
                (Failed, Running),
            ]
        );
        // Nothing comes back from retiring, and a failed node is never retired.
        assert!(!Retiring.can_move_to(Running));
        assert!(!Failed.can_move_to(Retiring));
        // A failed node never becomes the standby: it might be the hung one.
        assert!(!Failed.can_move_to(Standby));
    }

    #[test]
    fn operating_status_from_nodes() {
        use NodeState::*;
        use OperatingStatus::*;
        assert_eq!(derive_operating_status(&[(Running, Online)], 1), Online);
        assert_eq!(derive_operating_status(&[(Running, Degraded)], 1), Degraded);
        assert_eq!(derive_operating_status(&[(Running, Online)], 2), Degraded);
        assert_eq!(
            derive_operating_status(&[(Failed, Offline), (Running, Online)], 1),
            Degraded
        );
        assert_eq!(derive_operating_status(&[(Failed, Offline)], 1), Offline);
        assert_eq!(derive_operating_status(&[(Starting, Offline)], 1), Offline);
        assert_eq!(derive_operating_status(&[], 1), Offline);
        // A standby serves nobody until promoted.
        assert_eq!(derive_operating_status(&[(Standby, Online)], 1), Offline);
        assert_eq!(
            derive_operating_status(&[(Running, Online), (Standby, Online)], 1),
            Online
        );
    }
}
