//! File descriptors: lb-node raises its soft `RLIMIT_NOFILE` to the hard
//! limit at start, and caps `max_connections` to what that limit allows, so
//! a client over the limit gets the polite refusal instead of the node
//! hitting EMFILE (which stalls accept and fails member connections).
#![allow(unsafe_code)]

/// A relayed TCP connection can take 6 fds: client socket, member socket
/// and a pipe (two fds) per splice direction.
pub const FDS_PER_CONNECTION: u64 = 6;
/// Kept aside for listeners, the admin API, health checks, log files and
/// the runtime's own fds.
pub const RESERVED_FDS: u64 = 64;

fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some(lim)
}

/// Raises the soft limit to the hard one; returns the soft limit in force
/// afterwards (None if it cannot be read).
pub fn raise_to_hard() -> Option<u64> {
    let mut lim = get()?;
    if lim.rlim_cur < lim.rlim_max {
        let before = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            tracing::warn!(
                "cannot raise RLIMIT_NOFILE from {before} to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
    get().map(|l| l.rlim_cur)
}

/// The most client connections `soft_limit` fds carry.
pub fn connection_cap(soft_limit: u64) -> u64 {
    (soft_limit.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_six_fds_a_connection() {
        assert_eq!(connection_cap(1024), 160);
        assert_eq!(connection_cap(10), 1);
        assert!(raise_to_hard().is_some());
    }
}
