//! The remote tokens of federation token mappings (issue 18), kept beside
//! the store rather than in it, as TLS keys are (`tls_keys.rs`): one file
//! per mapping, `<state dir>/federation-tokens/<instance id>/<secret id>.token`,
//! mode 0600 in 0700 directories. SQLite holds the mapping and the random
//! `secret_id` naming its file, never the token; `info` never shows one.
//!
//! A changed token gets a new file (a new secret id) written before the row
//! pointing at it commits; the old file goes after the commit. A file no
//! row names (a write that did not commit, a removal that failed) is
//! removed by [`TokenStore::remove_unused`] once older than its grace.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::Rng;

use crate::model::InstanceId;
use crate::store::StoreError;

/// Directory of the token files inside the state dir.
pub const FEDERATION_TOKENS_DIR: &str = "federation-tokens";

#[derive(Debug, Clone)]
pub struct TokenStore {
    dir: PathBuf,
}

fn io_error(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::TokenFile(format!("{}: {e}", path.display()))
}

fn private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_error(dir, e))
}

/// A new secret id: 128 random bits, hex.
pub fn new_secret_id() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenStore {
    /// Opens (making it, 0700) the token directory of `state_dir`.
    pub fn open(state_dir: &Path) -> Result<TokenStore, StoreError> {
        let dir = state_dir.join(FEDERATION_TOKENS_DIR);
        private_dir(&dir)?;
        Ok(TokenStore { dir })
    }

    fn instance_dir(&self, instance: InstanceId) -> PathBuf {
        self.dir.join(instance.0.to_string())
    }

    fn path(&self, instance: InstanceId, secret_id: &str) -> Result<PathBuf, StoreError> {
        // A secret id names a file: only 32 lowercase hex digits do.
        let ok = secret_id.len() == 32
            && secret_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(StoreError::TokenFile(format!(
                "not a token secret id: {secret_id:?}"
            )));
        }
        Ok(self
            .instance_dir(instance)
            .join(format!("{secret_id}.token")))
    }

    /// Writes one remote token, atomically (a temporary 0600 file renamed
    /// in place). Blocking: call off the runtime.
    pub fn put(
        &self,
        instance: InstanceId,
        secret_id: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let path = self.path(instance, secret_id)?;
        private_dir(&self.instance_dir(instance))?;
        let tmp = path.with_extension(format!("token.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(token.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_error(&path, e)
        })
    }

    /// Reads one remote token (blocking).
    pub fn get(&self, instance: InstanceId, secret_id: &str) -> Result<String, StoreError> {
        let path = self.path(instance, secret_id)?;
        fs::read_to_string(&path).map_err(|e| io_error(&path, e))
    }

    /// Removes one token file; a missing one is not an error (blocking).
    pub fn remove(&self, instance: InstanceId, secret_id: &str) -> Result<(), StoreError> {
        let path = self.path(instance, secret_id)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&path, e)),
            _ => Ok(()),
        }
    }

    /// Removes every token file of an instance (deleted, or its federation
    /// removed); a missing directory is not an error (blocking).
    pub fn remove_instance(&self, instance: InstanceId) -> Result<(), StoreError> {
        let dir = self.instance_dir(instance);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&dir, e)),
            _ => Ok(()),
        }
    }

    /// Removes the token files no row names (`used`: secret ids by
    /// instance), once older than `grace` (a file is written just before
    /// the row naming it commits), and the directories of instances with
    /// no row left and no file. Returns how many files went.
    pub fn remove_unused(
        &self,
        used: &HashMap<InstanceId, HashSet<String>>,
        grace: std::time::Duration,
    ) -> Result<usize, StoreError> {
        let old = |p: &Path| {
            fs::metadata(p)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace)
        };
        let mut removed = 0;
        let instances = fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        for dir in instances.flatten() {
            let Some(instance) = dir
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i64>().ok())
                .map(InstanceId)
            else {
                continue;
            };
            let none = HashSet::new();
            let wanted = used.get(&instance).unwrap_or(&none);
            let Ok(files) = fs::read_dir(dir.path()) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                // `.token` files, and temporaries a crash left.
                let id = name.split('.').next().unwrap_or_default();
                if !wanted.contains(id) && old(&file.path()) && fs::remove_file(file.path()).is_ok()
                {
                    removed += 1;
                }
            }
            if wanted.is_empty() {
                // Only once empty: a file still in its grace stays.
                let _ = fs::remove_dir(dir.path());
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_0600_files_in_0700_dirs_and_unused_ones_go() {
        let dir = std::env::temp_dir().join(format!("lbaas-token-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = TokenStore::open(&dir).unwrap();
        let (a, b) = (new_secret_id(), new_secret_id());
        assert_ne!(a, b);
        store.put(InstanceId(3), &a, "remote-a").unwrap();
        store.put(InstanceId(3), &b, "remote-b").unwrap();
        let root = dir.join(FEDERATION_TOKENS_DIR);
        let file = root.join("3").join(format!("{a}.token"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("3")), 0o700);
        assert_eq!(store.get(InstanceId(3), &a).unwrap(), "remote-a");
        assert!(store.get(InstanceId(3), "../../x").is_err());
        let used = HashMap::from([(InstanceId(3), HashSet::from([a.clone()]))]);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(store.remove_unused(&used, hour).unwrap(), 0);
        let zero = std::time::Duration::ZERO;
        assert_eq!(store.remove_unused(&used, zero).unwrap(), 1);
        assert!(store.get(InstanceId(3), &b).is_err());
        assert!(store.get(InstanceId(3), &a).is_ok());
        store.remove(InstanceId(3), &a).unwrap();
        store.remove(InstanceId(3), &a).unwrap();
        store.put(InstanceId(4), &a, "x").unwrap();
        store.remove_instance(InstanceId(4)).unwrap();
        assert!(!root.join("4").exists());
        store.remove_instance(InstanceId(4)).unwrap();
        assert_eq!(store.remove_unused(&HashMap::new(), zero).unwrap(), 0);
        assert!(!root.join("3").exists(), "an empty dir of no instance goes");
        fs::remove_dir_all(&dir).unwrap();
    }
}
