//! TLS private keys, kept beside the store rather than in it: one file per
//! certificate, `<state dir>/tls-keys/<sha256 fingerprint>.key`, mode 0600
//! in a 0700 directory, so the spec in SQLite (and every `info`) carries
//! the certificate and its facts only. Named by the leaf's fingerprint: the
//! same certificate always has the same key, so writing it again is a no-op.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::model::tls::{InstanceKeys, PrivateKeyPem};
use crate::store::StoreError;

/// Directory of the key files inside the state dir.
pub const TLS_KEYS_DIR: &str = "tls-keys";

#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::KeyFile(format!("{}: {e}", path.display()))
}

impl KeyStore {
    /// Opens (making it, 0700) the key directory of `state_dir`.
    pub fn open(state_dir: &Path) -> Result<KeyStore, StoreError> {
        let dir = state_dir.join(TLS_KEYS_DIR);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io_error(&dir, e))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(&dir, e))?;
        Ok(KeyStore { dir })
    }

    fn path(&self, fingerprint: &str) -> Result<PathBuf, StoreError> {
        // A fingerprint names a file: only 64 lowercase hex digits do.
        let ok = fingerprint.len() == 64
            && fingerprint
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(StoreError::KeyFile(format!(
                "not a fingerprint: {fingerprint:?}"
            )));
        }
        Ok(self.dir.join(format!("{fingerprint}.key")))
    }

    /// Writes every key `keys` carries (blocking: call off the runtime).
    pub fn put_all(&self, keys: &InstanceKeys) -> Result<(), StoreError> {
        for (fingerprint, key) in keys {
            self.put(fingerprint, key)?;
        }
        Ok(())
    }

    /// Writes one key, atomically (a temporary 0600 file renamed in place).
    pub fn put(&self, fingerprint: &str, key: &PrivateKeyPem) -> Result<(), StoreError> {
        let path = self.path(fingerprint)?;
        let tmp = path.with_extension(format!("key.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(key.0.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error(&path, e)
        })
    }

    /// Reads the key of the certificate with `fingerprint` (blocking).
    pub fn get(&self, fingerprint: &str) -> Result<PrivateKeyPem, StoreError> {
        let path = self.path(fingerprint)?;
        fs::read_to_string(&path)
            .map(PrivateKeyPem)
            .map_err(|e| io_error(&path, e))
    }
}

impl KeyStore {
    /// Removes the key files no certificate in `used` (fingerprints) needs
    /// any more, once older than `grace` (a key is written just before the
    /// spec naming it commits). Returns the fingerprints removed.
    pub fn remove_unused(
        &self,
        used: &std::collections::HashSet<String>,
        grace: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(fingerprint) = name.strip_suffix(".key") else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace);
            if !used.contains(fingerprint) && old && fs::remove_file(entry.path()).is_ok() {
                removed.push(fingerprint.to_string());
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_0600_files_named_by_fingerprint() {
        let dir = std::env::temp_dir().join(format!("lbaas-keys-{}", std::process::id()));
        let store = KeyStore::open(&dir).unwrap();
        let f = "a".repeat(64);
        store.put(&f, &PrivateKeyPem("secret".into())).unwrap();
        let path = dir.join(TLS_KEYS_DIR).join(format!("{f}.key"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let d = fs::metadata(dir.join(TLS_KEYS_DIR)).unwrap();
        assert_eq!(d.permissions().mode() & 0o777, 0o700);
        assert_eq!(store.get(&f).unwrap().0, "secret");
        assert!(store.get("../x").is_err());
        let g = "b".repeat(64);
        store.put(&g, &PrivateKeyPem("other".into())).unwrap();
        let used = std::collections::HashSet::from([f.clone()]);
        let hour = std::time::Duration::from_secs(3600);
        assert!(store.remove_unused(&used, hour).unwrap().is_empty());
        let removed = store
            .remove_unused(&used, std::time::Duration::ZERO)
            .unwrap();
        assert_eq!(removed, vec![g.clone()]);
        assert!(store.get(&g).is_err() && store.get(&f).is_ok());
        fs::remove_dir_all(&dir).unwrap();
    }
}
