//! What the model cannot check without I/O or lbd's setup: a managed VM
//! pool needs an lbd that runs VMs, and its kernel and initrd must be files
//! in one of lbd's backend image directories (`--backend-image-dir`). A
//! path outside them is refused before lbd looks at it, so a tenant cannot
//! use the answer to learn which files exist on lbd's host. Run before the
//! write transaction (the files on a blocking thread), so a refused request
//! leaves the store as it was and no file system call runs on the runtime.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::ApiError;
use crate::model::envelope::ApiRequest;
use crate::model::managed::{ManagedCompute, ManagedError, ManagedSpec};
use crate::model::ValidationError;

/// The files a VM template names, kernel first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VmFiles {
    kernel: String,
    initrd: Option<String>,
}

/// Refuses a create or update with managed VM pools (`backend.managed` or
/// any named pool's) when this lbd runs no VMs, or when one names a kernel
/// or initrd that is not a file in `image_dirs`.
/// The files first: a missing kernel is the more specific answer.
pub(super) async fn check(
    req: &ApiRequest,
    runs_vms: bool,
    image_dirs: &Arc<[PathBuf]>,
) -> Result<(), ApiError> {
    let files = vm_files(req);
    if !files.is_empty() {
        let dirs = image_dirs.clone();
        tokio::task::spawn_blocking(move || check_files(&files, &dirs, &HostFiles))
            .await
            .map_err(|e| ApiError::Store(crate::store::StoreError::Worker(e.to_string())))?
            .map_err(|e| ApiError::Invalid(ValidationError::Managed(e)))?;
    }
    if !runs_vms && managed_specs(req).any(|m| m.compute == Some(ManagedCompute::Vm)) {
        return Err(ApiError::Invalid(ValidationError::Managed(
            ManagedError::VmBackendsUnavailable,
        )));
    }
    Ok(())
}

/// Every managed pool a create or update writes.
fn managed_specs(req: &ApiRequest) -> impl Iterator<Item = &ManagedSpec> {
    let (backend, pools) = match req {
        ApiRequest::CreateInstance(r) => (r.backend.managed.as_ref(), r.pools.as_ref()),
        ApiRequest::UpdateInstance(r) => (
            r.backend.as_ref().and_then(|b| b.managed.as_ref()),
            r.pools.as_ref(),
        ),
        _ => (None, None),
    };
    let named = pools
        .into_iter()
        .flat_map(|p| p.values())
        .filter_map(|p| p.managed.as_ref());
    backend.into_iter().chain(named)
}

fn vm_files(req: &ApiRequest) -> Vec<VmFiles> {
    managed_specs(req).filter_map(of_spec).collect()
}

fn of_spec(spec: &ManagedSpec) -> Option<VmFiles> {
    if spec.compute != Some(ManagedCompute::Vm) {
        return None;
    }
    let vm = spec.vm.as_ref()?;
    // An empty kernel is the model's `missing_field`, not a missing file.
    (!vm.kernel.trim().is_empty()).then(|| VmFiles {
        kernel: vm.kernel.clone(),
        initrd: vm.initrd.clone().filter(|i| !i.trim().is_empty()),
    })
}

/// The two questions asked of the host's file system.
trait Files {
    fn is_file(&self, path: &Path) -> bool;
    /// The path with every symlink resolved (`None`: it does not exist).
    fn real(&self, path: &Path) -> Option<PathBuf>;
}

struct HostFiles;

impl Files for HostFiles {
    fn is_file(&self, path: &Path) -> bool {
        path.is_file()
    }
    fn real(&self, path: &Path) -> Option<PathBuf> {
        std::fs::canonicalize(path).ok()
    }
}

fn check_files(files: &[VmFiles], dirs: &[PathBuf], fs: &impl Files) -> Result<(), ManagedError> {
    for f in files {
        check_file("vm.kernel", &f.kernel, dirs, fs)?;
        if let Some(initrd) = &f.initrd {
            check_file("vm.initrd", initrd, dirs, fs)?;
        }
    }
    Ok(())
}

/// `path` must name a file inside one of `dirs`, by its words (absolute, no
/// `..`) before anything is asked of the disk, and once its symlinks are
/// resolved too.
fn check_file(
    field: &'static str,
    path: &str,
    dirs: &[PathBuf],
    fs: &impl Files,
) -> Result<(), ManagedError> {
    let p = Path::new(path);
    let not_allowed = || ManagedError::ImageNotAllowed {
        field,
        path: path.to_string(),
        dirs: dirs.iter().map(|d| d.display().to_string()).collect(),
    };
    let by_words = p.is_absolute()
        && !p.components().any(|c| c == Component::ParentDir)
        && dirs.iter().any(|d| p.starts_with(d));
    if !by_words {
        return Err(not_allowed());
    }
    if !fs.is_file(p) {
        return Err(match field {
            "vm.kernel" => ManagedError::KernelNotFound(path.to_string()),
            _ => ManagedError::Invalid {
                field,
                reason: format!("{path:?} does not exist on the controller's host"),
            },
        });
    }
    let real = fs.real(p).ok_or_else(not_allowed)?;
    if dirs
        .iter()
        .filter_map(|d| fs.real(d))
        .any(|d| real.starts_with(d))
    {
        Ok(())
    } else {
        Err(not_allowed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::envelope::ApiRequest;
    use serde_json::json;

    fn create(managed: serde_json::Value, pools: serde_json::Value) -> ApiRequest {
        let body = json!({"action": "create", "type": "instance", "info": {
            "project": "demo", "name": "web", "traffic_type": "http", "port": 8080,
            "backend": {"entities": [], "managed": managed}, "pools": pools,
        }});
        ApiRequest::parse(body.to_string().as_bytes())
            .1
            .expect("a valid envelope")
    }

    fn vm(kernel: &str, initrd: Option<&str>) -> serde_json::Value {
        json!({"compute": "vm", "vm": {"kernel": kernel, "initrd": initrd}, "port": 80})
    }

    #[test]
    fn kernels_and_initrds_of_every_pool_are_collected() {
        let req = create(
            vm("/k1", Some("/i1")),
            json!({"api": {"entities": [], "managed": vm("/k2", None)},
                   "plain": {"entities": ["127.0.0.1:80"]}}),
        );
        let files = vm_files(&req);
        assert_eq!(
            files,
            vec![
                VmFiles {
                    kernel: "/k1".into(),
                    initrd: Some("/i1".into())
                },
                VmFiles {
                    kernel: "/k2".into(),
                    initrd: None
                },
            ]
        );
        let process = json!({"compute": "process", "process": {"command": ["true"]}, "port": 80});
        assert!(vm_files(&create(process, json!({}))).is_empty());
    }

    /// A file system of a few files and symlinks.
    struct FakeFiles {
        files: Vec<&'static str>,
        links: Vec<(&'static str, &'static str)>,
    }

    impl Files for FakeFiles {
        fn is_file(&self, path: &Path) -> bool {
            self.real(path)
                .is_some_and(|r| self.files.iter().any(|f| Path::new(f) == r))
        }
        fn real(&self, path: &Path) -> Option<PathBuf> {
            let resolved = self
                .links
                .iter()
                .find(|(from, _)| Path::new(from) == path)
                .map_or(path, |(_, to)| Path::new(to));
            let known = self
                .files
                .iter()
                .any(|f| Path::new(f).starts_with(resolved));
            known.then(|| resolved.to_path_buf())
        }
    }

    fn fake() -> FakeFiles {
        FakeFiles {
            files: vec!["/img/k", "/img/i", "/etc/passwd"],
            links: vec![("/img/escape", "/etc/passwd")],
        }
    }

    fn files(kernel: &str, initrd: Option<&str>) -> [VmFiles; 1] {
        [VmFiles {
            kernel: kernel.into(),
            initrd: initrd.map(String::from),
        }]
    }

    #[test]
    fn a_missing_kernel_has_its_own_code_and_a_missing_initrd_is_invalid() {
        let dirs = [PathBuf::from("/img")];
        let fs = fake();
        assert_eq!(
            check_files(&files("/img/k", Some("/img/i")), &dirs, &fs),
            Ok(())
        );
        let e = check_files(&files("/img/nope", None), &dirs, &fs).unwrap_err();
        assert_eq!(e.code(), "kernel_not_found");
        let e = check_files(&files("/img/k", Some("/img/nope")), &dirs, &fs).unwrap_err();
        assert_eq!(e.code(), "invalid_managed");
    }

    #[test]
    fn paths_outside_the_image_dirs_are_refused_whether_or_not_they_exist() {
        let dirs = [PathBuf::from("/img")];
        let fs = fake();
        for path in [
            "/etc/passwd",
            "/etc/nonexistent",
            "/img/../etc/passwd",
            "img/k",
            "/img/escape",
            "/imgx/k",
        ] {
            let e = check_files(&files(path, None), &dirs, &fs).unwrap_err();
            assert_eq!(e.code(), "vm_image_not_allowed", "{path}");
            let e = check_files(&files("/img/k", Some(path)), &dirs, &fs).unwrap_err();
            assert_eq!(e.code(), "vm_image_not_allowed", "initrd {path}");
        }
    }

    fn dirs_of(path: &Path) -> Arc<[PathBuf]> {
        Arc::from(vec![path.parent().unwrap().to_path_buf()])
    }

    #[tokio::test]
    async fn the_real_file_system_is_asked() {
        let exe = std::env::current_exe().unwrap();
        let here = exe.display().to_string();
        let dirs = dirs_of(&exe);
        assert!(check(&create(vm(&here, None), json!({})), true, &dirs)
            .await
            .is_ok());
        let missing = format!("{}/nonexistent-vmlinuz", exe.parent().unwrap().display());
        let e = check(&create(vm(&missing, None), json!({})), true, &dirs)
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("kernel_not_found", 422));
        let e = check(&create(vm("/etc/passwd", None), json!({})), true, &dirs)
            .await
            .unwrap_err();
        assert_eq!(
            (e.code(), e.status().as_u16()),
            ("vm_image_not_allowed", 422)
        );
    }

    #[tokio::test]
    async fn vm_pools_are_refused_by_an_lbd_without_vms() {
        let exe = std::env::current_exe().unwrap();
        let here = exe.display().to_string();
        let dirs = dirs_of(&exe);
        // In a named pool too.
        for req in [
            create(vm(&here, None), json!({})),
            create(
                json!({"compute": "process", "process": {"command": ["true"]}, "port": 80}),
                json!({"api": {"entities": [], "managed": vm(&here, None)}}),
            ),
        ] {
            let e = check(&req, false, &dirs).await.unwrap_err();
            assert_eq!(
                (e.code(), e.status().as_u16()),
                ("vm_backends_unavailable", 422)
            );
        }
        let process = json!({"compute": "process", "process": {"command": ["true"]}, "port": 80});
        assert!(check(&create(process, json!({})), false, &dirs)
            .await
            .is_ok());
    }
}
