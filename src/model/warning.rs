//! Conditions of the host that do not stop lbd but change what its nodes
//! get (e.g. VMs emulated because KVM does not work), shown with each
//! instance so an operator sees them where the slowness shows.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a [`Warning`] is about; stable, for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarningCode {
    /// `--vm-domain-type auto`: /dev/kvm opens but a KVM guest did not
    /// reach init, so VMs run under TCG (emulation, much slower).
    VmTcgFallback,
}

impl WarningCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VmTcgFallback => "vm_tcg_fallback",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Warning {
    pub code: WarningCode,
    /// For people: what happened and what to do about it.
    pub message: String,
}
