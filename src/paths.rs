//! Where lbaas keeps its state by default, shared by `lbd` and `lbctl` so the
//! CLI finds the token the daemon wrote.

use std::path::PathBuf;

/// File name of the admin token inside the state dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// `$LBAAS_STATE_DIR`, else `$XDG_STATE_HOME/lbaas`, else `~/.local/state/lbaas`,
/// else `./lbaas-state` when there is no home.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LBAAS_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(xdg).join("lbaas");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/lbaas"),
        None => PathBuf::from("lbaas-state"),
    }
}
