//! What the model cannot check without I/O or lbd's setup: a managed VM
//! pool needs an lbd that runs VMs, and its kernel and initrd must exist on
//! lbd's host. Run before the write transaction (the files on a blocking
//! thread), so a refused request leaves the store as it was and no file
//! system call runs on the runtime.

use std::path::Path;

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
/// or initrd that is not a file here.
/// The files first: a missing kernel is the more specific answer.
pub(super) async fn check(req: &ApiRequest, runs_vms: bool) -> Result<(), ApiError> {
    let files = vm_files(req);
    if !files.is_empty() {
        tokio::task::spawn_blocking(move || check_files(&files, |p| Path::new(p).is_file()))
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

fn check_files(files: &[VmFiles], exists: impl Fn(&str) -> bool) -> Result<(), ManagedError> {
    for f in files {
        if !exists(&f.kernel) {
            return Err(ManagedError::KernelNotFound(f.kernel.clone()));
        }
        if let Some(initrd) = f.initrd.as_ref().filter(|i| !exists(i)) {
            return Err(ManagedError::Invalid {
                field: "vm.initrd",
                reason: format!("{initrd:?} does not exist on the controller's host"),
            });
        }
    }
    Ok(())
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

    #[test]
    fn a_missing_kernel_has_its_own_code_and_a_missing_initrd_is_invalid() {
        let files = [VmFiles {
            kernel: "/boot/k".into(),
            initrd: Some("/boot/i".into()),
        }];
        assert_eq!(check_files(&files, |_| true), Ok(()));
        let e = check_files(&files, |p| p != "/boot/k").unwrap_err();
        assert_eq!(e.code(), "kernel_not_found");
        let e = check_files(&files, |p| p != "/boot/i").unwrap_err();
        assert_eq!(e.code(), "invalid_managed");
    }

    #[tokio::test]
    async fn the_real_file_system_is_asked() {
        let here = std::env::current_exe().unwrap().display().to_string();
        assert!(check(&create(vm(&here, None), json!({})), true)
            .await
            .is_ok());
        let e = check(&create(vm("/nonexistent/vmlinuz", None), json!({})), true)
            .await
            .unwrap_err();
        assert_eq!((e.code(), e.status().as_u16()), ("kernel_not_found", 422));
    }

    #[tokio::test]
    async fn vm_pools_are_refused_by_an_lbd_without_vms() {
        let here = std::env::current_exe().unwrap().display().to_string();
        // In a named pool too.
        for req in [
            create(vm(&here, None), json!({})),
            create(
                json!({"compute": "process", "process": {"command": ["true"]}, "port": 80}),
                json!({"api": {"entities": [], "managed": vm(&here, None)}}),
            ),
        ] {
            let e = check(&req, false).await.unwrap_err();
            assert_eq!(
                (e.code(), e.status().as_u16()),
                ("vm_backends_unavailable", 422)
            );
        }
        let process = json!({"compute": "process", "process": {"command": ["true"]}, "port": 80});
        assert!(check(&create(process, json!({})), false).await.is_ok());
    }
}
