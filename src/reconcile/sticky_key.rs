//! The keys that sign sticky cookies. A cookie set by one node must be
//! good on every node of its instance (failover, scale-out), and after an
//! lbd restart, so the key is derived per instance from one secret of this
//! lbd kept in the state dir (`sticky.secret`, mode 0600):
//! `HMAC-SHA256(secret, "lbaas sticky cookie v1:" ‖ instance id)`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::model::sticky::StickyKey;
use crate::model::InstanceId;

/// File name of the secret inside the state dir.
pub const STICKY_SECRET_FILE: &str = "sticky.secret";

/// This lbd's secret the instances' cookie keys come from.
#[derive(Clone)]
pub struct StickySecret([u8; 32]);

impl fmt::Debug for StickySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StickySecret(***)")
    }
}

impl StickySecret {
    /// Reads the secret of `state_dir`, writing a new one on first start;
    /// a file group or others can read is refused (its keys would be
    /// forgeable cookies).
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(STICKY_SECRET_FILE);
        match fs::metadata(&path) {
            Ok(meta) => {
                let mode = meta.permissions().mode() & 0o777;
                anyhow::ensure!(
                    mode & 0o077 == 0,
                    "{} has mode {mode:04o}: group or others can read the sticky cookie secret; \
                     run `chmod 600 {}` or remove it (cookies already set then stop pinning)",
                    path.display(),
                    path.display()
                );
                let text = fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let key = StickyKey::try_from(text.trim().to_string())
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Ok(StickySecret(*key.bytes()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let bytes: [u8; 32] = rand::rng().random();
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("creating {}", path.display()))?;
                writeln!(f, "{}", String::from(StickyKey::new(bytes)))?;
                Ok(StickySecret(bytes))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The cookie key of instance `id`.
    pub fn instance_key(&self, id: InstanceId) -> StickyKey {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(b"lbaas sticky cookie v1:");
        mac.update(id.to_string().as_bytes());
        StickyKey::new(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_survives_a_restart_is_private_and_keys_differ_per_instance() {
        struct Dir(std::path::PathBuf);
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(&self.0);
            }
        }
        let dir = Dir(std::env::temp_dir().join(format!("lbaas-sticky-{}", std::process::id())));
        fs::create_dir_all(&dir.0).unwrap();
        let first = StickySecret::load_or_create(&dir.0).unwrap();
        let path = dir.0.join(STICKY_SECRET_FILE);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = StickySecret::load_or_create(&dir.0).unwrap();
        let (a, b) = (InstanceId(1), InstanceId(2));
        assert_eq!(first.instance_key(a), again.instance_key(a));
        assert_ne!(first.instance_key(a), first.instance_key(b));
        assert!(!format!("{first:?}").contains(&String::from(first.instance_key(a))));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(StickySecret::load_or_create(&dir.0).is_err());
    }
}
