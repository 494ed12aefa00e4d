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
        assert!(ProvisioningStatus::PendingUpdate.is_pending());
        assert!(!ProvisioningStatus::Error.is_pending());
    }
}
