//! How a node's admin secret reaches its VM: a small raw disk image per
//! node, attached read-only as the VM's only virtio disk (`/dev/vda`), whose
//! first line is the hex secret (the image's init reads it). So the secret
//! is in no kernel command line (qemu's `/proc/<pid>/cmdline` is readable
//! by every user on the host, and so is `virsh dumpxml` on a read-only
//! connection), only in a file of mode 0600.
//!
//! Why not the state dir: it is 0700 and qemu runs as its own user
//! (`libvirt-qemu` on Debian), which must open the file itself. libvirt's
//! dynamic ownership (the default) hands the file to that user while the VM
//! runs (chown, the mode stays 0600), so the directory only has to be
//! passable: it is made 0711 (others may not list it, and can open nothing
//! in it). Why not fw_cfg: the guest finds fw_cfg through ACPI, which these
//! direct-kernel VMs do not have, and a disk needs only `virtio_blk`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::drivers::compute::ComputeError;
use crate::model::NodeId;

/// Size of each image: the secret, a newline, zeros. Large enough that the
/// guest kernel's partition scan reads only zeros rather than past the end
/// of a one-sector disk (it complains about that on the console).
pub const DISK_BYTES: usize = 64 * 1024;

/// The directory of this lbd's secret disks; files are named by VM prefix
/// and node id, so lbds sharing the directory never meet.
#[derive(Debug, Clone)]
pub struct SecretDisks {
    dir: PathBuf,
    prefix: String,
}

fn error(node_id: NodeId, reason: impl std::fmt::Display) -> ComputeError {
    ComputeError::Start {
        node_id,
        reason: reason.to_string(),
    }
}

impl SecretDisks {
    /// Makes `dir` (0711) unless it exists, and refuses one that another
    /// user owns or others may write (they could swap a disk), or a symlink.
    pub fn open(dir: &Path, prefix: &str) -> Result<Self, ComputeError> {
        let bad = |reason: String| error(NodeId(0), format!("{}: {reason}", dir.display()));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(|e| bad(format!("creating the VM secret dir: {e}")))?;
        let meta = fs::symlink_metadata(dir).map_err(|e| bad(e.to_string()))?;
        if !meta.is_dir() {
            return Err(bad("the VM secret dir is not a directory".into()));
        }
        // SAFETY: geteuid(2) has no preconditions.
        #[allow(unsafe_code)]
        let euid = unsafe { libc::geteuid() };
        if meta.uid() != euid || meta.mode() & 0o022 != 0 {
            return Err(bad(format!(
                "the VM secret dir must be owned by uid {euid} and writable only by it \
                 (owner {}, mode {:04o}); use --vm-secret-dir",
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o711))
            .map_err(|e| bad(e.to_string()))?;
        Ok(SecretDisks {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
        })
    }

    pub fn path(&self, node_id: NodeId) -> PathBuf {
        self.dir.join(format!("{}-node-{node_id}.img", self.prefix))
    }

    /// Writes the node's disk afresh (mode 0600, never readable by others,
    /// not even for a moment) and returns its path.
    pub fn write(&self, node_id: NodeId, secret: &str) -> Result<PathBuf, ComputeError> {
        if secret.is_empty() || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error(node_id, "the node secret must be hex"));
        }
        if secret.len() >= DISK_BYTES {
            return Err(error(node_id, "the node secret is too long"));
        }
        let path = self.path(node_id);
        // A file left by an earlier VM may have another owner and mode now.
        self.remove(node_id);
        let mut image = vec![0u8; DISK_BYTES];
        image[..secret.len()].copy_from_slice(secret.as_bytes());
        image[secret.len()] = b'\n';
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| error(node_id, format!("writing {}: {e}", path.display())))?;
        file.write_all(&image)
            .map_err(|e| error(node_id, format!("writing {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Removes the node's disk; nothing to do when it is gone.
    pub fn remove(&self, node_id: NodeId) {
        let path = self.path(node_id);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lbaas-secret-disk-{tag}-{}", std::process::id()))
    }

    #[test]
    fn a_disk_holds_the_secret_on_its_first_line_and_only_its_owner_reads_it() {
        let d = dir("write");
        let disks = SecretDisks::open(&d, "ut").unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o711);
        let path = disks.write(NodeId(7), "00ff").unwrap();
        assert_eq!(path, d.join("ut-node-7.img"));
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), DISK_BYTES);
        assert_eq!(&bytes[..5], b"00ff\n");
        assert!(bytes[5..].iter().all(|b| *b == 0));
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        // Written again over a file someone made readable: still 0600.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        disks.write(NodeId(7), "abcd").unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(disks.write(NodeId(8), "x' onload='").is_err(), "only hex");
        assert!(disks.write(NodeId(8), "").is_err());
        disks.remove(NodeId(7));
        disks.remove(NodeId(7));
        assert!(!path.exists());
        let _ = fs::remove_dir_all(d);
    }

    #[test]
    fn a_dir_others_may_write_is_refused() {
        let d = dir("open");
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(SecretDisks::open(&d, "ut").is_err());
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        SecretDisks::open(&d, "ut").unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o777, 0o711);
        let _ = fs::remove_dir_all(d);
    }
}
