//! The `netns` network driver (needs root): each project gets a Linux network
//! namespace `<prefix>-<project id>` (pinned under /run/netns, so
//! `ip netns list` shows it) holding a bridge `br0`; a veth pair joins it to
//! the host, where `<prefix>h<id>` takes the subnet's first address (the
//! gateway), so the host reaches every address of the subnet. Each LB node's
//! address lives on the bridge, and its `lb-node` process runs inside the
//! namespace (VMs will attach a tap to the same bridge).
//!
//! Nothing leaves the machine: a namespace has only its connected subnet
//! route (no default route), and the host gets an `unreachable` route for the
//! whole pool, so an address of a deleted or not-yet-created project can
//! never be routed out through the uplink. Backends on the host are reached
//! at the gateway address (a service listening on 0.0.0.0 or on it).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::claims::{SocketCheck, SubnetClaims};
use super::netlink::{self, in_netns, link_by_name, setup};
use super::{NetworkDriver, NetworkError};
use crate::model::ProjectId;

const BRIDGE: &str = "br0";

pub struct NetnsNetwork {
    pool: Ipv4Net,
    prefix: u8,
    /// Start of every namespace and host interface name this lbd owns.
    names: String,
    /// Project subnets claimed on the host, so two lbds whose pools overlap
    /// never give one subnet to two veths.
    claims: SubnetClaims,
}

impl NetnsNetwork {
    /// Checks privileges and the pool, and installs the pool's `unreachable` route.
    pub fn new(
        pool: Ipv4Net,
        prefix: u8,
        names: &str,
        claims: SubnetClaims,
    ) -> Result<Self, NetworkError> {
        // SAFETY: geteuid(2) has no preconditions.
        #[allow(unsafe_code)]
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(NetworkError::Setup(
                "--network netns needs root (network namespaces, bridges and veths need \
                 CAP_SYS_ADMIN and CAP_NET_ADMIN); use --network loopback without it"
                    .into(),
            ));
        }
        if names.is_empty()
            || names.len() > 6
            || !names
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetworkError::Setup(format!(
                "netns name prefix {names:?} must be 1 to 6 lowercase letters or digits \
                 (interface names are limited to 15 characters)"
            )));
        }
        if prefix < pool.prefix_len() || prefix > 29 {
            return Err(NetworkError::Unusable {
                subnet: pool,
                reason: format!(
                    "project prefix /{prefix} must be between /{} and /29",
                    pool.prefix_len()
                ),
            });
        }
        let driver = NetnsNetwork {
            pool,
            prefix,
            names: names.to_string(),
            claims,
        };
        driver.guard_pool()?;
        Ok(driver)
    }

    fn ns_name(&self, project_id: ProjectId) -> String {
        format!("{}-{project_id}", self.names)
    }

    fn ns_path(&self, project_id: ProjectId) -> PathBuf {
        PathBuf::from(netlink::NETNS_DIR).join(self.ns_name(project_id))
    }

    fn host_if(&self, project_id: ProjectId) -> String {
        format!("{}h{project_id}", self.names)
    }

    fn peer_if(&self, project_id: ProjectId) -> String {
        format!("{}n{project_id}", self.names)
    }

    /// Refuses a pool that overlaps a host route (other than ours), then
    /// routes the whole pool to `unreachable` in the host namespace.
    fn guard_pool(&self) -> Result<(), NetworkError> {
        let pool = self.pool;
        let prefix_names = self.names.clone();
        in_netns(None, move |handle| async move {
            let names = link_names(&handle).await?;
            let mut routes = handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let main_table = RouteMessageBuilder::<Ipv4Addr>::new().build().header.table;
            let mut guarded = false;
            while let Some(route) = routes.try_next().await.map_err(|e| setup("routes", e))? {
                if route.header.table != main_table {
                    continue;
                }
                if route.header.kind == RouteType::Unreachable
                    && route.header.destination_prefix_length == pool.prefix_len()
                    && route.attributes.iter().any(|a| {
                        matches!(a, RouteAttribute::Destination(RouteAddress::Inet(d))
                            if *d == pool.network())
                    })
                {
                    guarded = true;
                }
                if route.header.kind != RouteType::Unicast {
                    continue;
                }
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut oif = None;
                for a in &route.attributes {
                    match a {
                        RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = *d,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                let Ok(net) = Ipv4Net::new(dst, route.header.destination_prefix_length) else {
                    continue;
                };
                let on_ours = oif
                    .and_then(|i| names.iter().find(|(idx, _)| *idx == i))
                    .is_some_and(|(_, n)| is_own_host_link(n, &prefix_names));
                if net.prefix_len() > 0
                    && !on_ours
                    && crate::model::allocator::overlaps(&net, &pool)
                {
                    return Err(NetworkError::Unusable {
                        subnet: pool,
                        reason: format!("overlaps the host route to {net}"),
                    });
                }
            }
            // Another lbd with the same pool may have put it there: leave it
            // (no lbd removes it, so it never goes while one still needs it).
            if guarded {
                return Ok(());
            }
            let unreachable = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(pool.network(), pool.prefix_len())
                .kind(RouteType::Unreachable)
                .build();
            match handle.route().add(unreachable).execute().await {
                Ok(()) => Ok(()),
                // Added by an lbd starting at the same moment.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
                Err(e) => Err(setup(&format!("unreachable route for {pool}"), e)),
            }
        })
    }
}

/// Whether `link` is a host veth end of the lbd whose names start with
/// `prefix`: exactly `<prefix>h<project id>`. With prefix `a`, `ah1h2` is the
/// veth of an lbd with prefix `ah1`, whose routes are not ours to ignore.
fn is_own_host_link(link: &str, prefix: &str) -> bool {
    link.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('h'))
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

/// (index, name) of every link.
async fn link_names(handle: &Handle) -> Result<Vec<(u32, String)>, NetworkError> {
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(|e| setup("links", e))? {
        for a in &link.attributes {
            if let LinkAttribute::IfName(n) = a {
                out.push((link.header.index, n.clone()));
            }
        }
    }
    Ok(out)
}

/// The IPv4 addresses on link `index`, with their messages (to delete them).
async fn addresses(
    handle: &Handle,
    index: u32,
) -> Result<Vec<(Ipv4Addr, AddressMessage)>, NetworkError> {
    let mut out = Vec::new();
    let mut list = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = list.try_next().await.map_err(|e| setup("addresses", e))? {
        let addr = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        if let Some(a) = addr {
            out.push((a, msg));
        }
    }
    Ok(out)
}

async fn set_up(handle: &Handle, index: u32) -> Result<(), NetworkError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| setup("link up", e))
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    link_by_name(handle, name)
        .await?
        .map(|l| l.header.index)
        .ok_or_else(|| NetworkError::Setup(format!("link {name} is missing")))
}

impl NetworkDriver for NetnsNetwork {
    fn name(&self) -> &'static str {
        "netns"
    }

    fn pool(&self) -> (Ipv4Net, u8) {
        (self.pool, self.prefix)
    }

    fn check_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        if !self.pool.contains(subnet) {
            return Err(NetworkError::Unusable {
                subnet: *subnet,
                reason: format!(
                    "the netns driver serves subnets inside its pool {} (--subnet-pool), \
                     which the host routes nowhere else",
                    self.pool
                ),
            });
        }
        if subnet.prefix_len() > 29 {
            return Err(NetworkError::Unusable {
                subnet: *subnet,
                reason: "a project subnet needs room for a gateway and nodes: /29 or larger".into(),
            });
        }
        Ok(())
    }

    fn reserved(&self) -> Vec<Ipv4Net> {
        Vec::new()
    }

    fn check_backend(&self, backend: SocketAddr) -> Result<(), NetworkError> {
        if backend.ip().is_loopback() {
            return Err(NetworkError::Backend {
                backend,
                reason: "inside a project namespace 127.0.0.0/8 is the namespace's own \
                         loopback; reach a service on the host at the project's gateway \
                         address (the subnet's first address)"
                    .into(),
            });
        }
        Ok(())
    }

    fn claim_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        self.claims.claim_new(*subnet, SocketCheck::Ignore)
    }

    fn claim_free_subnet(
        &self,
        candidates: &mut dyn Iterator<Item = Ipv4Net>,
    ) -> Result<Option<Ipv4Net>, NetworkError> {
        self.claims.claim_first(candidates, SocketCheck::Ignore)
    }

    fn reclaim_subnet(&self, subnet: &Ipv4Net) -> Result<(), NetworkError> {
        self.claims.reclaim(*subnet)
    }

    fn release_subnet(&self, subnet: &Ipv4Net) {
        self.claims.release(subnet)
    }

    fn ensure_project_network(
        &self,
        project_id: ProjectId,
        subnet: &Ipv4Net,
    ) -> Result<(), NetworkError> {
        self.claims.reclaim(*subnet)?;
        let ns = netlink::create_netns(&self.ns_name(project_id))?;
        let (host_if, peer_if) = (self.host_if(project_id), self.peer_if(project_id));
        let gateway = gateway(subnet)?;
        let prefix = subnet.prefix_len();
        let ns_fd = std::fs::File::open(&ns).map_err(|e| setup("open namespace", e))?;
        // Host side: the veth pair, the gateway address, the peer moved into the namespace.
        {
            let (host_if, peer_if) = (host_if.clone(), peer_if.clone());
            in_netns(None, move |handle| async move {
                use std::os::fd::AsRawFd;
                if link_by_name(&handle, &host_if).await?.is_none() {
                    // A peer left in the host by an interrupted create goes first.
                    if let Some(stale) = link_by_name(&handle, &peer_if).await? {
                        handle
                            .link()
                            .del(stale.header.index)
                            .execute()
                            .await
                            .map_err(|e| setup("delete stale veth", e))?;
                    }
                    handle
                        .link()
                        .add(LinkVeth::new(&host_if, &peer_if).build())
                        .execute()
                        .await
                        .map_err(|e| setup(&format!("create veth {host_if}"), e))?;
                }
                move_to_netns(&handle, &peer_if, ns_fd.as_raw_fd()).await?;
                let index = index_of(&handle, &host_if).await?;
                if !addresses(&handle, index)
                    .await?
                    .iter()
                    .any(|(a, _)| *a == gateway)
                {
                    handle
                        .address()
                        .add(index, IpAddr::V4(gateway), prefix)
                        .execute()
                        .await
                        .map_err(|e| setup(&format!("gateway address on {host_if}"), e))?;
                }
                set_up(&handle, index).await
            })?;
        }
        // Namespace side: lo, the bridge, the peer as a bridge port.
        in_netns(Some(ns), move |handle| async move {
            set_up(&handle, index_of(&handle, "lo").await?).await?;
            if link_by_name(&handle, BRIDGE).await?.is_none() {
                handle
                    .link()
                    .add(LinkBridge::new(BRIDGE).build())
                    .execute()
                    .await
                    .map_err(|e| setup("create the bridge", e))?;
            }
            let bridge = index_of(&handle, BRIDGE).await?;
            // Node addresses share the bridge; removing the first one must
            // not take the others with it (Linux deletes secondaries with
            // their primary unless told to promote them).
            std::fs::write(
                format!("/proc/sys/net/ipv4/conf/{BRIDGE}/promote_secondaries"),
                "1",
            )
            .map_err(|e| setup("promote_secondaries on the bridge", e))?;
            set_up(&handle, bridge).await?;
            join_bridge(&handle, &peer_if).await
        })
    }

    fn remove_project_network(&self, project_id: ProjectId) -> Result<(), NetworkError> {
        let host_if = self.host_if(project_id);
        in_netns(None, move |handle| async move {
            if let Some(link) = link_by_name(&handle, &host_if).await? {
                // Deleting one end of a veth pair deletes both.
                handle
                    .link()
                    .del(link.header.index)
                    .execute()
                    .await
                    .map_err(|e| setup(&format!("delete {host_if}"), e))?;
            }
            Ok(())
        })?;
        netlink::delete_netns(&self.ns_name(project_id))
    }

    fn project_networks(&self) -> Vec<ProjectId> {
        let start = format!("{}-", self.names);
        netlink::list_netns()
            .iter()
            .filter_map(|n| n.strip_prefix(&start)?.parse().ok())
            .collect()
    }

    fn node_netns(&self, project_id: ProjectId) -> Option<PathBuf> {
        Some(self.ns_path(project_id))
    }

    fn set_node_addresses(
        &self,
        project_id: ProjectId,
        subnet: &Ipv4Net,
        wanted: &[Ipv4Addr],
        exact: bool,
    ) -> Result<(), NetworkError> {
        let ns = self.ns_path(project_id);
        if !ns.exists() {
            return Err(NetworkError::Setup(format!(
                "namespace {} does not exist yet",
                ns.display()
            )));
        }
        let wanted = wanted.to_vec();
        let prefix = subnet.prefix_len();
        in_netns(Some(ns), move |handle| async move {
            let bridge = index_of(&handle, BRIDGE).await?;
            let present = addresses(&handle, bridge).await?;
            for addr in &wanted {
                if !present.iter().any(|(a, _)| a == addr) {
                    handle
                        .address()
                        .add(bridge, IpAddr::V4(*addr), prefix)
                        .execute()
                        .await
                        .map_err(|e| setup(&format!("address {addr}"), e))?;
                }
            }
            if exact {
                for (addr, msg) in present {
                    if !wanted.contains(&addr) {
                        handle
                            .address()
                            .del(msg)
                            .execute()
                            .await
                            .map_err(|e| setup(&format!("remove address {addr}"), e))?;
                    }
                }
            }
            Ok(())
        })
    }
}

fn gateway(subnet: &Ipv4Net) -> Result<Ipv4Addr, NetworkError> {
    subnet.hosts().next().ok_or(NetworkError::Unusable {
        subnet: *subnet,
        reason: "no host addresses".into(),
    })
}

/// Held while the reconciler reads which addresses a project's bridge
/// should hold and applies them (`reconcile/project.rs`), and while a
/// backend's address is added. A backend's row is written before its
/// address is added, so an exact pass that read the store before the row
/// existed cannot remove the address added after it.
pub static BRIDGE_ADDRESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Puts `addr/prefix_len` on the bridge of the namespace pinned at `netns`
/// (nothing to do when it is there): a process backend binds its own address
/// there, as a node's lb-node does. The reconciler's exact pass keeps it
/// while the backend's row lives (`reconcile/project.rs`) and removes it
/// after.
pub fn add_bridge_address(
    netns: &std::path::Path,
    addr: Ipv4Addr,
    prefix_len: u8,
) -> Result<(), NetworkError> {
    // Called on a blocking thread (the backend driver's start).
    let _serial = BRIDGE_ADDRESSES.blocking_lock();
    in_netns(Some(netns.to_path_buf()), move |handle| async move {
        let bridge = index_of(&handle, BRIDGE).await?;
        if addresses(&handle, bridge)
            .await?
            .iter()
            .any(|(a, _)| *a == addr)
        {
            return Ok(());
        }
        handle
            .address()
            .add(bridge, IpAddr::V4(addr), prefix_len)
            .execute()
            .await
            .map_err(|e| setup(&format!("address {addr}"), e))
    })
}

/// Moves the host link `link` (a VM's tap) into the namespace pinned at
/// `netns` and makes it a port of the project bridge, up.
pub fn attach_to_bridge(link: &str, netns: &std::path::Path) -> Result<(), NetworkError> {
    let ns_fd = std::fs::File::open(netns).map_err(|e| setup("open namespace", e))?;
    let name = link.to_string();
    in_netns(None, move |handle| async move {
        use std::os::fd::AsRawFd;
        move_to_netns(&handle, &name, ns_fd.as_raw_fd()).await
    })?;
    let name = link.to_string();
    in_netns(Some(netns.to_path_buf()), move |handle| async move {
        join_bridge(&handle, &name).await
    })
}

/// Moves link `name`, if it is in this namespace, into the namespace `ns_fd`
/// (nothing to do when it already moved).
async fn move_to_netns(handle: &Handle, name: &str, ns_fd: i32) -> Result<(), NetworkError> {
    let Some(link) = link_by_name(handle, name).await? else {
        return Ok(());
    };
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(link.header.index)
                .setns_by_fd(ns_fd)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| setup(&format!("move {name} into the namespace"), e))
}

/// Makes link `name` a port of the bridge, up.
async fn join_bridge(handle: &Handle, name: &str) -> Result<(), NetworkError> {
    let bridge = index_of(handle, BRIDGE).await?;
    let index = index_of(handle, name).await?;
    handle
        .link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(bridge)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| setup(&format!("attach {name} to the bridge"), e))
}

#[cfg(test)]
mod tests {
    use super::is_own_host_link;

    #[test]
    fn host_links_of_other_prefixes_are_not_ours() {
        assert!(is_own_host_link("lbaash3", "lbaas"));
        assert!(is_own_host_link("ah12", "a"));
        for (link, prefix) in [
            ("ah1h2", "a"), // prefix ah1, project 2
            ("ahh2", "a"),  // prefix ah
            ("an2", "a"),   // our namespace end, never on the host
            ("ah", "a"),    // no id
            ("lbaas-3", "lbaas"),
            ("t1h2", "t"), // prefix t1
            ("eth0", "e"),
        ] {
            assert!(
                !is_own_host_link(link, prefix),
                "{link} with prefix {prefix}"
            );
        }
    }
}
