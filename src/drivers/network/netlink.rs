//! Netlink plumbing for the `netns` driver: run rtnetlink requests inside a
//! network namespace, and create or remove named namespaces (as
//! `ip netns add/del` do: a bind mount under /run/netns), all without
//! shelling out. Entering a namespace is per thread (setns), so every call
//! runs on a dedicated short-lived thread with its own small runtime, and
//! the caller's threads never change namespace.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::Handle;

use super::NetworkError;

/// Where named namespaces are pinned, as `ip netns` does.
pub const NETNS_DIR: &str = "/run/netns";

pub fn setup(what: &str, e: impl std::fmt::Display) -> NetworkError {
    NetworkError::Setup(format!("{what}: {e}"))
}

/// Runs `f` with a netlink handle opened inside `netns` (or the host's).
pub fn in_netns<T, F, Fut>(netns: Option<PathBuf>, f: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("lbd-netlink".into())
        .spawn(move || {
            if let Some(path) = &netns {
                enter_netns(path)?;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| setup("netlink runtime", e))?;
            runtime.block_on(async move {
                let (connection, handle, _) =
                    rtnetlink::new_connection().map_err(|e| setup("netlink socket", e))?;
                tokio::spawn(connection);
                f(handle).await
            })
        })
        .map_err(|e| setup("netlink thread", e))?
        .join()
        .map_err(|_| NetworkError::Setup("netlink thread panicked".into()))?
}

/// Moves the calling thread into the namespace pinned at `path`.
fn enter_netns(path: &Path) -> Result<(), NetworkError> {
    let file = File::open(path).map_err(|e| setup(&format!("open {}", path.display()), e))?;
    // SAFETY: setns(2) with a valid open fd; it changes only this thread's
    // namespace, and this thread is ours alone.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(setup(
            &format!("setns {}", path.display()),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Whether `path` is a pinned namespace (a bind mount of an nsfs inode).
fn is_pinned(path: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) on a NUL-terminated path into a zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Creates the namespace `name` under /run/netns unless it exists.
pub fn create_netns(name: &str) -> Result<PathBuf, NetworkError> {
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| setup(NETNS_DIR, e))?;
    let path = Path::new(NETNS_DIR).join(name);
    if is_pinned(&path) {
        return Ok(path);
    }
    // An empty file from an interrupted create is reused as the mount point.
    File::create(&path).map_err(|e| setup(&format!("create {}", path.display()), e))?;
    let target = path.clone();
    std::thread::spawn(move || -> Result<(), NetworkError> {
        // SAFETY: unshare(2) moves only this thread into a new namespace;
        // the thread ends right after pinning it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(setup("unshare", std::io::Error::last_os_error()));
        }
        // SAFETY: gettid(2) has no preconditions.
        let tid = unsafe { libc::gettid() };
        let source = CString::new(format!("/proc/self/task/{tid}/ns/net")).expect("no NUL");
        let dest = CString::new(target.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: mount(2) with NUL-terminated paths we own; a bind mount.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                dest.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(setup(
                "bind-mount the namespace",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    })
    .join()
    .map_err(|_| NetworkError::Setup("namespace thread panicked".into()))??;
    Ok(path)
}

/// Removes the namespace `name`; nothing to do when it is gone.
pub fn delete_netns(name: &str) -> Result<(), NetworkError> {
    let path = Path::new(NETNS_DIR).join(name);
    if is_pinned(&path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
        // SAFETY: umount2(2) with a NUL-terminated path we own.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(setup(
                &format!("unmount {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(setup(&format!("remove {}", path.display()), e)),
    }
}

/// Names of the pinned namespaces.
pub fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The link called `name`, if any.
pub async fn link_by_name(
    handle: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, NetworkError> {
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(|e| setup("list links", e))? {
        let named = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
        if named {
            return Ok(Some(link));
        }
    }
    Ok(None)
}
