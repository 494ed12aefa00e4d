//! Subnet claims shared by every lbd on the host, so two lbds with the same
//! pool never hand out the same range (two projects on 127.1.0.0/24 would
//! both want 127.1.0.2:9901).
//!
//! A claim is a file `<dir>/<a.b.c.d>-<prefix>.lock` that this lbd holds
//! `flock`ed while it has a project in that range. The kernel drops the lock
//! when the process dies, however it dies (`kill -9` included), so a file
//! nobody holds is stale and never blocks; whoever finds one removes it.
//! Ranges may differ in size between lbds (`--subnet-prefix`), so a new
//! claim is checked against every held file that overlaps it, not just its
//! own name. Claims are made and removed under an exclusive lock on
//! `<dir>/.dir.lock`, so two lbds claiming at once see each other, and a
//! file is never removed between another lbd opening and locking it.
//!
//! The store is the truth for this lbd's own projects: it re-takes their
//! claims at start, and its own claims never block it.

use std::collections::HashMap;
use std::fs::{self, File, TryLockError};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;

use super::NetworkError;
use crate::model::allocator::overlaps;

/// Where claims live unless `--subnet-lock-dir` says otherwise; every lbd
/// on the host must use the same directory to see the others.
pub const DEFAULT_DIR: &str = "/run/lbaas/subnets";
const DIR_LOCK: &str = ".dir.lock";
/// How long a claim waits for another lbd's scan of the directory.
const DIR_LOCK_WAIT: Duration = Duration::from_secs(1);

pub struct SubnetClaims {
    dir: PathBuf,
    /// This lbd's claims: the locked files, kept open (closing one drops its lock).
    held: Mutex<HashMap<Ipv4Net, File>>,
}

/// Whether a new claim also refuses a range in which a socket is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketCheck {
    /// Loopback: the host's sockets are the nodes' sockets, so a listener
    /// in the range is a node of an lbd that is not running right now (its
    /// nodes outlive it and it dropped its locks) or another program.
    Refuse,
    /// netns: nodes listen inside namespaces the host's socket tables do not show.
    Ignore,
}

impl SubnetClaims {
    /// Uses `dir`, or the first usable of /run/lbaas/subnets,
    /// `$XDG_RUNTIME_DIR/lbaas/subnets` and `/tmp/lbaas-<uid>/subnets`.
    pub fn open(dir: Option<&Path>) -> Result<Self, NetworkError> {
        if let Some(dir) = dir {
            return Self::open_in(dir.to_path_buf());
        }
        let mut tried = Vec::new();
        for dir in default_dirs() {
            match Self::open_in(dir.clone()) {
                Ok(claims) => return Ok(claims),
                Err(e) => tried.push(e.to_string()),
            }
        }
        Err(NetworkError::Setup(format!(
            "no usable subnet lock dir (set --subnet-lock-dir): {}",
            tried.join("; ")
        )))
    }

    fn open_in(dir: PathBuf) -> Result<Self, NetworkError> {
        let fail = |what: &str, e: std::io::Error| {
            NetworkError::Setup(format!("subnet lock dir {}: {what}: {e}", dir.display()))
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| fail("create", e))?;
        // Proves the dir is writable now rather than at the first claim.
        lock_file(&dir.join(DIR_LOCK)).map_err(|e| fail("open the dir lock", e))?;
        Ok(SubnetClaims {
            dir,
            held: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Claims `subnet`, asked for by a user, for a new project: refused
    /// with [`NetworkError::InUse`] when another lbd holds a range that
    /// overlaps it (or, with [`SocketCheck::Refuse`], a socket is bound in it).
    pub fn claim_new(&self, subnet: Ipv4Net, sockets: SocketCheck) -> Result<(), NetworkError> {
        let mut held = self.held();
        if held.contains_key(&subnet) {
            return Ok(());
        }
        self.with_dir_lock(|| {
            let view = self.host_view(&held, sockets)?;
            if let Some(reason) = view.conflict(&subnet) {
                return Err(NetworkError::InUse { subnet, reason });
            }
            self.take(&mut held, subnet)
        })
    }

    /// Claims the first of `candidates` that no other lbd holds (and, with
    /// [`SocketCheck::Refuse`], with no socket bound in it); `None` when
    /// every one is taken.
    pub fn claim_first(
        &self,
        candidates: &mut dyn Iterator<Item = Ipv4Net>,
        sockets: SocketCheck,
    ) -> Result<Option<Ipv4Net>, NetworkError> {
        let mut held = self.held();
        self.with_dir_lock(|| {
            let view = self.host_view(&held, sockets)?;
            for subnet in candidates {
                if view.conflict(&subnet).is_none() {
                    return self.take(&mut held, subnet).map(|()| Some(subnet));
                }
            }
            Ok(None)
        })
    }

    /// Takes the claim of a stored project again (at start, and on every
    /// pass, where it costs a map lookup): refused only when another lbd
    /// holds an overlapping range. No socket check: its own nodes may serve.
    pub fn reclaim(&self, subnet: Ipv4Net) -> Result<(), NetworkError> {
        let mut held = self.held();
        if held.contains_key(&subnet) {
            return Ok(());
        }
        self.with_dir_lock(|| {
            let view = self.host_view(&held, SocketCheck::Ignore)?;
            if let Some(reason) = view.conflict(&subnet) {
                return Err(NetworkError::InUse { subnet, reason });
            }
            self.take(&mut held, subnet)
        })
    }

    /// Gives a claim back (its project is gone, or was never stored).
    pub fn release(&self, subnet: &Ipv4Net) {
        let mut held = self.held();
        let Some(file) = held.remove(subnet) else {
            return;
        };
        let removed = self.with_dir_lock(|| {
            fs::remove_file(self.path_of(subnet))
                .map_err(|e| NetworkError::Setup(format!("remove the claim of {subnet}: {e}")))
        });
        // A file left behind is stale once `file` closes, and harmless.
        if let Err(e) = removed {
            tracing::warn!("{e}");
        }
        drop(file);
    }

    /// This lbd's claims.
    pub fn held_subnets(&self) -> Vec<Ipv4Net> {
        let mut out: Vec<_> = self.held().keys().copied().collect();
        out.sort();
        out
    }

    fn held(&self) -> MutexGuard<'_, HashMap<Ipv4Net, File>> {
        // The map stays consistent through a panic: it is only inserted into
        // and removed from.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, subnet: &Ipv4Net) -> PathBuf {
        self.dir
            .join(format!("{}-{}.lock", subnet.network(), subnet.prefix_len()))
    }

    /// Runs `f` holding the dir lock. Holders keep it for one directory
    /// scan, so waiting long means a stuck process: give up rather than
    /// hold the API's store transaction.
    fn with_dir_lock<T>(
        &self,
        f: impl FnOnce() -> Result<T, NetworkError>,
    ) -> Result<T, NetworkError> {
        let path = self.dir.join(DIR_LOCK);
        let fail = |e: &dyn std::fmt::Display| {
            NetworkError::Setup(format!("lock {}: {e}", path.display()))
        };
        let lock = lock_file(&path).map_err(|e| fail(&e))?;
        let deadline = Instant::now() + DIR_LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(fail(&format!(
                        "held by another process for over {DIR_LOCK_WAIT:?}"
                    )))
                }
                Err(TryLockError::Error(e)) => return Err(fail(&e)),
            }
        }
        let out = f();
        drop(lock);
        out
    }

    /// What the other lbds hold, and the bound sockets; removes stale files.
    /// Call with the dir lock held.
    fn host_view(
        &self,
        held: &HashMap<Ipv4Net, File>,
        sockets: SocketCheck,
    ) -> Result<HostView, NetworkError> {
        let mut others = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            NetworkError::Setup(format!("read subnet lock dir {}: {e}", self.dir.display()))
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(subnet) = name.to_str().and_then(parse_name) else {
                continue;
            };
            if held.contains_key(&subnet) {
                continue;
            }
            let path = entry.path();
            let Ok(mut file) = File::open(&path) else {
                // Unreadable (another user's, say): count it as held.
                others.push((subnet, String::new()));
                continue;
            };
            match file.try_lock() {
                Ok(()) => {
                    // Nobody holds it: its lbd is gone. No one can be
                    // between opening and locking it while we hold the dir lock.
                    let _ = fs::remove_file(&path);
                }
                Err(TryLockError::WouldBlock) => {
                    let mut owner = String::new();
                    let _ = file.read_to_string(&mut owner);
                    others.push((subnet, owner.trim().to_string()));
                }
                Err(TryLockError::Error(_)) => others.push((subnet, String::new())),
            }
        }
        let bound = match sockets {
            SocketCheck::Refuse => bound_addresses(),
            SocketCheck::Ignore => Vec::new(),
        };
        Ok(HostView {
            dir: self.dir.clone(),
            others,
            bound,
        })
    }

    /// Creates and locks the claim file of `subnet`. Call with the dir lock held.
    fn take(&self, held: &mut HashMap<Ipv4Net, File>, subnet: Ipv4Net) -> Result<(), NetworkError> {
        let path = self.path_of(&subnet);
        let fail = |e: std::io::Error| {
            NetworkError::Setup(format!("claim {subnet} ({}): {e}", path.display()))
        };
        let mut file = lock_file(&path).map_err(fail)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(NetworkError::InUse {
                    subnet,
                    reason: format!("another lbd holds {}", path.display()),
                })
            }
            Err(TryLockError::Error(e)) => return Err(fail(e)),
        }
        // Who holds it, for the other lbds' messages.
        file.set_len(0).map_err(fail)?;
        writeln!(file, "lbd pid {}", std::process::id()).map_err(fail)?;
        held.insert(subnet, file);
        Ok(())
    }
}

struct HostView {
    dir: PathBuf,
    /// Ranges other lbds hold, with what their files say about the holder.
    others: Vec<(Ipv4Net, String)>,
    bound: Vec<std::net::SocketAddr>,
}

impl HostView {
    /// Why `subnet` cannot be claimed, if it cannot.
    fn conflict(&self, subnet: &Ipv4Net) -> Option<String> {
        if let Some((other, owner)) = self.others.iter().find(|(o, _)| overlaps(o, subnet)) {
            let owner = if owner.is_empty() {
                "another lbd".to_string()
            } else {
                format!("another lbd ({owner})")
            };
            return Some(format!(
                "{owner} on this host holds {other} (see {})",
                self.dir.display()
            ));
        }
        let bound = self.bound.iter().find(|a| match a.ip() {
            std::net::IpAddr::V4(v4) => subnet.contains(&v4),
            std::net::IpAddr::V6(_) => false,
        })?;
        Some(format!(
            "{bound} is bound on this host (a node of an lbd that is not running, or another \
             program)"
        ))
    }
}

fn default_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(DEFAULT_DIR)];
    if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        dirs.push(PathBuf::from(runtime).join("lbaas/subnets"));
    }
    // SAFETY: getuid(2) has no preconditions.
    #[allow(unsafe_code)]
    let uid = unsafe { libc::getuid() };
    let tmp = std::env::temp_dir().join(format!("lbaas-{uid}"));
    // Somebody else's directory in /tmp must not decide what we see.
    let ours = fs::symlink_metadata(&tmp).map_or(true, |m| m.is_dir() && m.uid() == uid);
    if ours {
        dirs.push(tmp.join("subnets"));
    }
    dirs
}

/// Opens (creating) a file to lock, readable by other lbds for the holder's line.
fn lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
}

/// `127.1.0.0-24.lock` → 127.1.0.0/24.
fn parse_name(name: &str) -> Option<Ipv4Net> {
    let (addr, prefix) = name.strip_suffix(".lock")?.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, prefix.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// Every IPv4 address with a TCP listener or a bound UDP socket in this
/// network namespace, from /proc/net (IPv4-mapped IPv6 sockets included).
fn bound_addresses() -> Vec<std::net::SocketAddr> {
    let mut out = Vec::new();
    for (file, tcp) in [
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
    ] {
        if let Ok(text) = fs::read_to_string(file) {
            out.extend(parse_proc_net(&text, tcp));
        }
    }
    out
}

/// The bound local addresses of one /proc/net/{tcp,udp}[6] table: for TCP
/// only listeners (connections come and go, and TIME_WAIT lingers).
fn parse_proc_net(text: &str, tcp: bool) -> Vec<std::net::SocketAddr> {
    const TCP_LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 || (tcp && cols[3] != TCP_LISTEN) {
                return None;
            }
            let (addr, port) = cols[1].split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = proc_net_ipv4(addr)?;
            (!ip.is_unspecified()).then(|| std::net::SocketAddr::new(ip.into(), port))
        })
        .collect()
}

/// /proc/net prints each 32-bit word of an address as the kernel holds it
/// (network byte order) read as a host integer.
fn proc_net_ipv4(hex: &str) -> Option<Ipv4Addr> {
    let word = |s: &str| u32::from_str_radix(s, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => word(hex).map(Ipv4Addr::from),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(&hex[i * 8..i * 8 + 8])?);
            }
            std::net::Ipv6Addr::from(bytes).to_ipv4_mapped()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "lbaas-claims-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&path);
            Dir(path)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    /// Two lbds in one process: each `SubnetClaims` opens its own files, and
    /// flock locks of different open files conflict even within a process.
    fn two(dir: &Dir) -> (SubnetClaims, SubnetClaims) {
        (
            SubnetClaims::open(Some(&dir.0)).unwrap(),
            SubnetClaims::open(Some(&dir.0)).unwrap(),
        )
    }

    #[test]
    fn a_range_held_by_one_lbd_is_skipped_by_the_other() {
        let dir = Dir::new();
        let (a, b) = two(&dir);
        let pool = net("127.100.0.0/16");
        let first = a
            .claim_first(&mut pool.subnets(24).unwrap(), SocketCheck::Ignore)
            .unwrap();
        assert_eq!(first, Some(net("127.100.0.0/24")));
        let second = b
            .claim_first(&mut pool.subnets(24).unwrap(), SocketCheck::Ignore)
            .unwrap();
        assert_eq!(second, Some(net("127.100.1.0/24")));
        assert!(dir.0.join("127.100.0.0-24.lock").exists());
        assert_eq!(a.held_subnets(), vec![net("127.100.0.0/24")]);
    }

    #[test]
    fn overlapping_ranges_of_other_sizes_conflict() {
        let dir = Dir::new();
        let (a, b) = two(&dir);
        a.claim_new(net("127.100.0.0/16"), SocketCheck::Ignore)
            .unwrap();
        let err = b
            .claim_new(net("127.100.5.0/24"), SocketCheck::Ignore)
            .unwrap_err();
        let NetworkError::InUse { subnet, reason } = &err else {
            panic!("{err}");
        };
        assert_eq!(*subnet, net("127.100.5.0/24"));
        assert!(reason.contains("127.100.0.0/16"), "{reason}");
        assert!(
            reason.contains(&format!("lbd pid {}", std::process::id())),
            "{reason}"
        );
        // And the other way round; a range beside it is free.
        assert!(b
            .claim_new(net("127.0.0.0/8"), SocketCheck::Ignore)
            .is_err());
        b.claim_new(net("127.101.0.0/16"), SocketCheck::Ignore)
            .unwrap();
        let none = b
            .claim_first(
                &mut net("127.100.0.0/16").subnets(24).unwrap(),
                SocketCheck::Ignore,
            )
            .unwrap();
        assert_eq!(none, None);
    }

    #[test]
    fn own_claims_never_block_and_reclaim_is_idempotent() {
        let dir = Dir::new();
        let a = SubnetClaims::open(Some(&dir.0)).unwrap();
        a.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
        a.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
        a.reclaim(net("127.100.0.0/24")).unwrap();
        // Overlap among its own projects is the store's business (subnet_overlap).
        a.claim_new(net("127.100.0.0/16"), SocketCheck::Ignore)
            .unwrap();
        assert_eq!(a.held_subnets().len(), 2);
    }

    #[test]
    fn a_dead_lbds_files_are_stale_and_removed() {
        let dir = Dir::new();
        let (a, b) = two(&dir);
        a.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
        // As `kill -9`: the kernel drops the lock, the file stays.
        drop(a);
        assert!(dir.0.join("127.100.0.0-24.lock").exists());
        b.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
        // A restarted lbd takes its stored projects' claims again, unless
        // another took them while it was away.
        let restarted = SubnetClaims::open(Some(&dir.0)).unwrap();
        let err = restarted.reclaim(net("127.100.0.0/24")).unwrap_err();
        assert!(matches!(err, NetworkError::InUse { .. }), "{err}");
        restarted.reclaim(net("127.100.1.0/24")).unwrap();
    }

    #[test]
    fn a_stuck_dir_lock_fails_the_claim_instead_of_hanging() {
        let dir = Dir::new();
        let a = SubnetClaims::open(Some(&dir.0)).unwrap();
        let stuck = lock_file(&dir.0.join(DIR_LOCK)).unwrap();
        stuck.lock().unwrap();
        let err = a
            .claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap_err();
        assert!(err.to_string().contains("held by another process"), "{err}");
        drop(stuck);
        a.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
    }

    #[test]
    fn release_gives_the_range_back() {
        let dir = Dir::new();
        let (a, b) = two(&dir);
        a.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
        a.release(&net("127.100.0.0/24"));
        a.release(&net("127.100.0.0/24"));
        assert!(!dir.0.join("127.100.0.0-24.lock").exists());
        assert!(a.held_subnets().is_empty());
        b.claim_new(net("127.100.0.0/24"), SocketCheck::Ignore)
            .unwrap();
    }

    #[test]
    fn a_bound_socket_makes_a_new_range_in_use() {
        let dir = Dir::new();
        let a = SubnetClaims::open(Some(&dir.0)).unwrap();
        let tcp = TcpListener::bind("127.100.7.2:0").unwrap();
        let udp = UdpSocket::bind("127.100.8.2:0").unwrap();
        for (subnet, socket) in [
            ("127.100.7.0/24", tcp.local_addr().unwrap()),
            ("127.100.8.0/24", udp.local_addr().unwrap()),
        ] {
            let err = a.claim_new(net(subnet), SocketCheck::Refuse).unwrap_err();
            assert!(err.to_string().contains(&socket.to_string()), "{err}");
        }
        let got = a
            .claim_first(
                &mut ["127.100.7.0/24", "127.100.8.0/24", "127.100.9.0/24"]
                    .into_iter()
                    .map(net),
                SocketCheck::Refuse,
            )
            .unwrap();
        assert_eq!(got, Some(net("127.100.9.0/24")));
        // A stored project's own nodes are bound in its range.
        a.reclaim(net("127.100.7.0/24")).unwrap();
        a.claim_new(net("127.100.8.0/24"), SocketCheck::Ignore)
            .unwrap();
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_tables_parse() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                   0: 0200647F:26AD 00000000:0000 0A 00000000:00000000\n\
                   1: 0200647F:1F90 0100007F:C350 01 00000000:00000000\n\
                   2: 00000000:0016 00000000:0000 0A 00000000:00000000\n";
        assert_eq!(
            parse_proc_net(tcp, true),
            vec!["127.100.0.2:9901".parse().unwrap()],
            "listeners only, no wildcard"
        );
        let tcp6 = "  sl  local_address remote_address st\n\
                    0: 0000000000000000FFFF00000300647F:1F90 00000000000000000000000000000000:0000 0A\n\
                    1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A\n";
        assert_eq!(
            parse_proc_net(tcp6, true),
            vec!["127.100.0.3:8080".parse().unwrap()],
            "v4-mapped only"
        );
        let udp = "  sl  local_address rem_address   st\n\
                   0: 0400647F:14E9 00000000:0000 07\n";
        assert_eq!(
            parse_proc_net(udp, false),
            vec!["127.100.0.4:5353".parse().unwrap()]
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name("127.1.0.0-16.lock"), Some(net("127.1.0.0/16")));
        assert_eq!(parse_name("127.1.0.5-16.lock"), None, "host bits");
        assert_eq!(parse_name(".dir.lock"), None);
        assert_eq!(parse_name("127.1.0.0-33.lock"), None);
        let dir = Dir::new();
        let a = SubnetClaims::open(Some(&dir.0)).unwrap();
        let s = net("100.64.3.0/24");
        assert_eq!(
            parse_name(a.path_of(&s).file_name().unwrap().to_str().unwrap()),
            Some(s)
        );
    }
}
