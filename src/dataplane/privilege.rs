//! Dropping root for good (`lb-node --run-as USER`): under `--network netns`
//! lb-node starts as root (lbd joins it to the project's namespace), but it
//! parses untrusted traffic, so once its admin socket is bound and its files
//! are open it becomes USER, sets `no_new_privs` and keeps no capability at
//! all (effective, permitted, inheritable, ambient). Data listeners are
//! bound later (on each `PUT /config`) without privilege, so an instance
//! port under 1024 fails to bind under netns (the bind error is reported);
//! keeping CAP_NET_BIND_SERVICE would break "no capabilities" for that.
//!
//! Must run before any other thread exists: `no_new_privs` and capability
//! sets are per thread, and threads started later inherit them.

#![allow(unsafe_code)]

use std::ffi::CString;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    #[error("refusing to run as {0:?}: it is root (uid 0 or gid 0)")]
    Root(String),
    #[error("{call}: {source}")]
    Call {
        call: &'static str,
        source: std::io::Error,
    },
}

/// A user to become: its uid and primary gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl RunAs {
    /// A user name from the passwd database, or a numeric uid (whose gid is
    /// then the passwd entry's, or the same number if it has none).
    pub fn resolve(user: &str) -> Result<RunAs, PrivilegeError> {
        let found = lookup(user)
            .or_else(|| {
                let uid: libc::uid_t = user.parse().ok()?;
                Some(lookup_uid(uid).unwrap_or(RunAs { uid, gid: uid }))
            })
            .ok_or_else(|| PrivilegeError::UnknownUser(user.to_string()))?;
        if found.uid == 0 || found.gid == 0 {
            return Err(PrivilegeError::Root(user.to_string()));
        }
        Ok(found)
    }
}

fn call(name: &'static str, rc: libc::c_int) -> Result<(), PrivilegeError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Call {
            call: name,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Looks `name` up with getpwnam_r.
fn lookup(name: &str) -> Option<RunAs> {
    let name = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: every pointer is to memory we own for the call's duration; the
    // result is read only from `pw` when `found` is non-null.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwnam_r(
            name.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut found,
        );
        (rc == 0 && !found.is_null()).then_some(RunAs {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// Looks `uid` up with getpwuid_r.
fn lookup_uid(uid: libc::uid_t) -> Option<RunAs> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: as in `lookup`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found);
        (rc == 0 && !found.is_null()).then_some(RunAs {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        })
    }
}

/// The kernel's capability header and data (`<linux/capability.h>`), v3: two
/// 32-bit words per set.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Becomes `who` for good: no supplementary groups, gid then uid (real,
/// effective and saved), `no_new_privs`, and every capability set empty.
pub fn drop_to(who: RunAs) -> Result<(), PrivilegeError> {
    // SAFETY: plain syscalls with valid arguments; the structs passed to
    // capset live on this stack frame for the call.
    unsafe {
        call("setgroups", libc::setgroups(1, &who.gid))?;
        call("setresgid", libc::setresgid(who.gid, who.gid, who.gid))?;
        // Leaving uid 0 clears the effective, permitted and ambient sets
        // (no SECBIT_KEEP_CAPS is set); the inheritable set stays, so it is
        // cleared below too.
        call("setresuid", libc::setresuid(who.uid, who.uid, who.uid))?;
        call(
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        call(
            "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
        )?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        let rc = libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int;
        call("capset", rc)?;
        // Not trusting the above: a process still able to become root again
        // must not serve.
        if libc::setresuid(0, 0, 0) == 0 || libc::geteuid() == 0 || libc::getegid() == 0 {
            return Err(PrivilegeError::Root(format!(
                "uid {} after the drop",
                libc::geteuid()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_names_and_uids_and_refuses_root() {
        assert!(matches!(
            RunAs::resolve("root"),
            Err(PrivilegeError::Root(_))
        ));
        assert!(matches!(RunAs::resolve("0"), Err(PrivilegeError::Root(_))));
        assert!(matches!(
            RunAs::resolve("no-such-user-here"),
            Err(PrivilegeError::UnknownUser(_))
        ));
        assert_eq!(
            RunAs::resolve("4242").unwrap(),
            lookup_uid(4242).unwrap_or(RunAs {
                uid: 4242,
                gid: 4242
            })
        );
        if let Some(nobody) = lookup("nobody") {
            assert_eq!(RunAs::resolve("nobody").unwrap(), nobody);
        }
    }
}
