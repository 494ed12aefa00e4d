//! Backends that would point an LB node back into the control plane.
//!
//! An LB node forwards whatever its clients send to its backends, so a
//! backend on lbd's own API or DNS listener, on a node's admin API, on a
//! link-local address (cloud metadata services live there) or on the
//! instance's own listener turns the LB into a way in, or into a loop. The
//! API refuses such backends on `create` and `update instance`, each with its
//! own code. Operators who really mean one list it in `--allow-backend-cidr`;
//! that never lifts the loop check, which is a mistake in every setup.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use ipnet::{IpNet, Ipv4Net};

use super::ApiError;
use crate::model::allocator::gateway;

/// Whether an address belongs to this host.
pub type IsLocal = dyn Fn(IpAddr) -> bool + Send + Sync;

/// lbd's control-plane endpoints, and what an operator allowed anyway.
pub struct BackendGuard {
    /// lbd's own bound listeners and what each serves ("API", "DNS").
    listeners: Vec<(SocketAddr, &'static str)>,
    node_admin_port: u16,
    allowed: Vec<IpNet>,
    /// Decides which addresses a wildcard listener (0.0.0.0, ::) answers on.
    is_local: Box<IsLocal>,
}

/// The listener a backend must not loop back to: the instance's port on
/// its nodes' addresses, present and future.
pub struct OwnListener<'a> {
    pub port: u16,
    /// The project's subnet; every node of the instance gets an address from it.
    pub subnet: Ipv4Net,
    /// The addresses its nodes have now.
    pub nodes: &'a [IpAddr],
}

impl BackendGuard {
    /// `api` and `dns` are the addresses lbd actually bound (after port 0 was resolved).
    pub fn new(
        api: SocketAddr,
        dns: SocketAddr,
        node_admin_port: u16,
        allowed: Vec<IpNet>,
    ) -> Self {
        Self::with_locality(
            api,
            dns,
            node_admin_port,
            allowed,
            Box::new(is_host_address),
        )
    }

    /// [`BackendGuard::new`] with another idea of which addresses are local (tests).
    pub fn with_locality(
        api: SocketAddr,
        dns: SocketAddr,
        node_admin_port: u16,
        allowed: Vec<IpNet>,
        is_local: Box<IsLocal>,
    ) -> Self {
        BackendGuard {
            listeners: vec![(api, "API"), (dns, "DNS")],
            node_admin_port,
            allowed,
            is_local,
        }
    }

    /// Refuses `backend` if it points into the control plane or at `own`.
    pub fn check(&self, backend: SocketAddr, own: &OwnListener<'_>) -> Result<(), ApiError> {
        // `::ffff:a.b.c.d` reaches a.b.c.d: judge it as that.
        let backend = SocketAddr::new(backend.ip().to_canonical(), backend.port());
        let ip = backend.ip();
        if !self.allowed.iter().any(|net| net.contains(&ip)) {
            if is_link_local(ip) {
                return Err(ApiError::BackendLinkLocal { backend });
            }
            if let Some((listener, what)) = self
                .listeners
                .iter()
                .find(|(l, _)| self.answers_on(*l, backend))
            {
                return Err(ApiError::BackendIsControlPlane {
                    backend,
                    what,
                    listener: *listener,
                });
            }
            if backend.port() == self.node_admin_port {
                return Err(ApiError::BackendIsAdminPort {
                    backend,
                    port: self.node_admin_port,
                });
            }
        }
        if backend.port() == own.port {
            if own.nodes.iter().any(|n| n.to_canonical() == ip) {
                return Err(ApiError::BackendLoop {
                    backend,
                    reason: format!(
                        "{ip} is one of its nodes, and {} its listener port",
                        own.port
                    ),
                });
            }
            // Any address of the subnet may become a node's (a replacement,
            // a scale-out), except the gateway, which nodes never get: under
            // netns it is the host, where backends of the project live.
            if let IpAddr::V4(v4) = ip {
                if own.subnet.contains(&v4) && v4 != gateway(&own.subnet) {
                    return Err(ApiError::BackendLoop {
                        backend,
                        reason: format!(
                            "{ip} is inside the project subnet {}, where its nodes listen on \
                             port {}",
                            own.subnet, own.port
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether a connection to `backend` reaches `listener`.
    fn answers_on(&self, listener: SocketAddr, backend: SocketAddr) -> bool {
        if listener.port() != backend.port() {
            return false;
        }
        let (l, b) = (listener.ip().to_canonical(), backend.ip());
        if l == b {
            return true;
        }
        // A wildcard bind answers on every local address of its family; on
        // Linux a `::` bind also takes IPv4 (net.ipv6.bindv6only is 0 by default).
        let family_matches = match l {
            IpAddr::V4(v4) => v4.is_unspecified() && b.is_ipv4(),
            IpAddr::V6(v6) => v6.is_unspecified(),
        };
        family_matches && (self.is_local)(b)
    }
}

/// 169.254.0.0/16 and fe80::/10.
fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind
/// only to those (all of 127.0.0.0/8 included), which is exactly what a
/// wildcard listener answers on.
pub(crate) fn is_host_address(ip: IpAddr) -> bool {
    if ip.is_loopback() {
        return true;
    }
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// lbd on 127.0.0.1:7070 (API) and 127.0.0.1:5353 (DNS), admin port 9901;
    /// 10.0.0.5 is the host's only other address.
    fn guard(api: &str, dns: &str, allowed: &[&str]) -> BackendGuard {
        BackendGuard::with_locality(
            sa(api),
            sa(dns),
            9901,
            allowed.iter().map(|a| a.parse().unwrap()).collect(),
            Box::new(|ip: IpAddr| ip.is_loopback() || ip == "10.0.0.5".parse::<IpAddr>().unwrap()),
        )
    }

    fn own(nodes: &[IpAddr]) -> OwnListener<'_> {
        OwnListener {
            port: 8080,
            subnet: "127.1.0.0/24".parse().unwrap(),
            nodes,
        }
    }

    fn code(g: &BackendGuard, backend: &str) -> &'static str {
        match g.check(sa(backend), &own(&[])) {
            Ok(()) => "ok",
            Err(e) => {
                assert_eq!(e.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
                e.code()
            }
        }
    }

    #[test]
    fn link_local_is_refused() {
        let g = guard("127.0.0.1:7070", "127.0.0.1:5353", &[]);
        for b in [
            "169.254.169.254:80",
            "169.254.0.1:443",
            "[fe80::1]:80",
            "[febf::1]:80",
            "[::ffff:169.254.1.1]:80",
        ] {
            assert_eq!(code(&g, b), "backend_link_local", "{b}");
        }
        for b in ["169.253.255.255:80", "169.255.0.1:80", "[fec0::1]:80"] {
            assert_eq!(code(&g, b), "ok", "{b}");
        }
    }

    #[test]
    fn lbd_listeners_are_refused() {
        let g = guard("127.0.0.1:7070", "127.0.0.1:5353", &[]);
        assert_eq!(code(&g, "127.0.0.1:7070"), "backend_is_control_plane");
        assert_eq!(code(&g, "127.0.0.1:5353"), "backend_is_control_plane");
        assert_eq!(
            code(&g, "[::ffff:127.0.0.1]:7070"),
            "backend_is_control_plane"
        );
        // Another address or another port is not lbd.
        assert_eq!(code(&g, "127.0.0.2:7070"), "ok");
        assert_eq!(code(&g, "10.0.0.5:7070"), "ok");
        assert_eq!(code(&g, "127.0.0.1:7071"), "ok");
        let err = g.check(sa("127.0.0.1:5353"), &own(&[])).unwrap_err();
        assert!(err.to_string().contains("DNS"), "{err}");
    }

    #[test]
    fn wildcard_listeners_cover_every_local_address() {
        let g = guard("0.0.0.0:7070", "[::]:5353", &[]);
        for b in ["127.0.0.1:7070", "127.9.9.9:7070", "10.0.0.5:7070"] {
            assert_eq!(code(&g, b), "backend_is_control_plane", "{b}");
        }
        assert_eq!(code(&g, "10.0.0.6:7070"), "ok", "not this host");
        assert_eq!(code(&g, "[::1]:7070"), "ok", "a 0.0.0.0 bind takes no IPv6");
        // `::` takes IPv6 and IPv4.
        for b in ["[::1]:5353", "127.0.0.1:5353", "10.0.0.5:5353"] {
            assert_eq!(code(&g, b), "backend_is_control_plane", "{b}");
        }
        assert_eq!(code(&g, "10.0.0.6:5353"), "ok");
    }

    #[test]
    fn the_admin_port_is_refused_on_any_address() {
        let g = guard("127.0.0.1:7070", "127.0.0.1:5353", &[]);
        for b in ["127.1.0.2:9901", "10.0.0.9:9901", "[2001:db8::1]:9901"] {
            assert_eq!(code(&g, b), "backend_is_admin_port", "{b}");
        }
        assert_eq!(code(&g, "10.0.0.9:9902"), "ok");
    }

    #[test]
    fn the_instances_own_listener_is_a_loop() {
        let g = guard("127.0.0.1:7070", "127.0.0.1:5353", &[]);
        let nodes: Vec<IpAddr> = vec!["127.1.0.2".parse().unwrap()];
        let check = |b: &str| g.check(sa(b), &own(&nodes)).map_err(|e| e.code());
        assert_eq!(check("127.1.0.2:8080"), Err("backend_loop"), "a node");
        assert_eq!(
            check("127.1.0.77:8080"),
            Err("backend_loop"),
            "a future node"
        );
        assert_eq!(check("[::ffff:127.1.0.3]:8080"), Err("backend_loop"));
        assert_eq!(check("127.1.0.2:8081"), Ok(()), "another port of a node");
        assert_eq!(check("127.1.1.2:8080"), Ok(()), "outside the subnet");
        assert_eq!(
            check("127.1.0.1:8080"),
            Ok(()),
            "the gateway is never a node"
        );
        // A node outside the subnet (an older allocation) is still the listener.
        let elsewhere: Vec<IpAddr> = vec!["127.2.0.9".parse().unwrap()];
        assert_eq!(
            g.check(sa("127.2.0.9:8080"), &own(&elsewhere))
                .map_err(|e| e.code()),
            Err("backend_loop")
        );
    }

    #[test]
    fn allowed_cidrs_lift_every_check_but_the_loop() {
        let g = guard(
            "0.0.0.0:7070",
            "127.0.0.1:5353",
            &["169.254.0.0/16", "127.0.0.0/8", "fe80::/10"],
        );
        for b in [
            "169.254.169.254:80",
            "[fe80::1]:80",
            "127.0.0.1:7070",
            "127.0.0.1:5353",
            "127.3.0.2:9901",
        ] {
            assert_eq!(code(&g, b), "ok", "{b}");
        }
        // Outside the allowed CIDRs the checks still apply.
        assert_eq!(code(&g, "10.0.0.5:7070"), "backend_is_control_plane");
        assert_eq!(code(&g, "10.0.0.9:9901"), "backend_is_admin_port");
        // The loop check is never lifted.
        assert_eq!(code(&g, "127.1.0.9:8080"), "backend_loop");
    }

    #[test]
    fn host_addresses_are_what_the_kernel_binds() {
        assert!(is_host_address("127.0.0.1".parse().unwrap()));
        assert!(is_host_address("127.200.3.4".parse().unwrap()));
        // TEST-NET-3 is never assigned to a host.
        assert!(!is_host_address("203.0.113.77".parse().unwrap()));
    }
}
